//! The SQLite step index: step records, the last build of each image's steps, and the
//! file-digest cache of `hash_file_cached`.

use std::collections::BTreeSet;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::{
    sys, BlobDigest, DropReason, Dropped, IndexReset, Result, StepKey, StepOutput, StepRecord,
    Store, StoreError, INDEX_FILE,
};

/// Lock file beside the index, held while a damaged index is set aside, so that two processes
/// that both find it damaged replace it once. Never removed.
pub const INDEX_RESET_LOCK: &str = "index-v1.sqlite.lock";

/// Schema migrations, append-only: entry `i` takes the schema from version `i` to `i + 1`.
/// Never edit or reorder an entry once released; add a new one.
pub(crate) const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    "CREATE TABLE steps (
         key       TEXT PRIMARY KEY NOT NULL,
         kind      TEXT NOT NULL,
         name      TEXT NOT NULL,
         output    TEXT NOT NULL,
         size      INTEGER NOT NULL,
         created   INTEGER NOT NULL,
         last_used INTEGER NOT NULL
     );
     CREATE INDEX steps_last_used ON steps (last_used);
     CREATE TABLE last_build (
         image   TEXT NOT NULL,
         step    TEXT NOT NULL,
         key     TEXT NOT NULL,
         explain TEXT NOT NULL,
         PRIMARY KEY (image, step)
     );
     CREATE TABLE file_digests (
         path     BLOB PRIMARY KEY NOT NULL,
         size     INTEGER NOT NULL,
         mtime_ns INTEGER NOT NULL,
         ino      INTEGER NOT NULL,
         dev      INTEGER NOT NULL,
         digest   TEXT NOT NULL
     );",
];

/// How long a writer waits for another process's transaction before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(60);

pub(crate) fn open(path: &Path) -> Result<Connection> {
    let mut conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    retry_busy(|| {
        // WAL: readers never block the writer, so several processes can share the store.
        let _mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        Ok(())
    })?;
    // In WAL mode NORMAL loses at most the last commits on power loss, never consistency; a
    // lost record is a cache miss.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    retry_busy(|| migrate(&mut conn, path))?;
    Ok(conn)
}

/// What SQLite said when the index turned out damaged: corrupt pages, or not a database.
fn damage(e: &StoreError) -> Option<String> {
    match e {
        StoreError::Sqlite(rusqlite::Error::SqliteFailure(f, msg))
            if matches!(
                f.code,
                rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase
            ) =>
        {
            Some(msg.clone().unwrap_or_else(|| f.to_string()))
        }
        _ => None,
    }
}

/// Runs `PRAGMA quick_check` or `integrity_check`: `None` when the index is sound, else the
/// first problems SQLite lists.
fn check(conn: &Connection, pragma: &str) -> Result<Option<String>> {
    let mut stmt = conn.prepare(&format!("PRAGMA {pragma}(5)"))?;
    let rows: Vec<String> = stmt
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(match rows.as_slice() {
        [one] if one == "ok" => None,
        _ => Some(rows.join("; ")),
    })
}

/// Opens the index and checks it: `Ok(Err(problem))` when it is damaged.
fn open_and_check(path: &Path, pragma: &str) -> Result<std::result::Result<Connection, String>> {
    let checked = open(path).and_then(|conn| Ok((check(&conn, pragma)?, conn)));
    match checked {
        Ok((None, conn)) => Ok(Ok(conn)),
        Ok((Some(problem), _)) => Ok(Err(problem)),
        Err(e) => match damage(&e) {
            Some(problem) => Ok(Err(problem)),
            None => Err(e),
        },
    }
}

/// Opens the index of the store at `root`, checking its pages (`PRAGMA quick_check`, a few
/// milliseconds). A damaged index is set aside and replaced by a new one, so one bad page
/// cannot make every build fail: the blobs stay, the step records are lost.
pub(crate) fn open_checked(root: &Path) -> Result<(Connection, Option<IndexReset>)> {
    let path = root.join(INDEX_FILE);
    match open_and_check(&path, "quick_check")? {
        Ok(conn) => Ok((conn, None)),
        Err(problem) => set_aside(root, problem, "quick_check"),
    }
}

/// Renames the damaged index (with its WAL) to `index-v1.sqlite.corrupt-<unix time>` and opens
/// a new one, under [`INDEX_RESET_LOCK`]; the caller must hold no connection to it. When
/// another process replaced it while this one waited for the lock, its new index is used.
pub(crate) fn set_aside(
    root: &Path,
    problem: String,
    pragma: &str,
) -> Result<(Connection, Option<IndexReset>)> {
    let path = root.join(INDEX_FILE);
    let lock_path = root.join(INDEX_RESET_LOCK);
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(StoreError::io(&lock_path))?;
    sys::lock_exclusive(&lock).map_err(StoreError::io(&lock_path))?;
    if let Ok(conn) = open_and_check(&path, pragma)? {
        return Ok((conn, None));
    }
    let stamp = now();
    let name = |n: u32| match n {
        0 => format!("{INDEX_FILE}.corrupt-{stamp}"),
        n => format!("{INDEX_FILE}.corrupt-{stamp}-{n}"),
    };
    let mut n = 0;
    while root.join(name(n)).exists() {
        n += 1;
    }
    let aside = root.join(name(n));
    let renamed = |from: &Path, to: &Path| match std::fs::rename(from, to) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(StoreError::io(from)(e)),
        _ => Ok(()),
    };
    renamed(&path, &aside)?;
    // The WAL goes with it (SQLite finds it by that name), the shared-memory index goes.
    let with = |p: &Path, suffix: &str| {
        let mut s = p.as_os_str().to_owned();
        s.push(suffix);
        std::path::PathBuf::from(s)
    };
    renamed(&with(&path, "-wal"), &with(&aside, "-wal"))?;
    let _ = std::fs::remove_file(with(&path, "-shm"));
    let conn = open(&path)?;
    Ok((
        conn,
        Some(IndexReset {
            set_aside: aside,
            problem,
        }),
    ))
}

/// Retries `f` while the database is busy. The busy timeout covers most waits, but SQLite
/// answers "busy" at once, without waiting, where waiting could deadlock: two processes that
/// create one new store together both reach the switch to WAL or the first migration.
fn retry_busy<T>(mut f: impl FnMut() -> Result<T>) -> Result<T> {
    let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
    let mut pause = Duration::from_millis(2);
    loop {
        match f() {
            Err(StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)))
                if matches!(
                    e.code,
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                ) && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            other => return other,
        }
    }
}

/// Applies the migrations this index lacks, all in one exclusive transaction.
pub(crate) fn migrate(conn: &mut Connection, path: &Path) -> Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Exclusive)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let supported = MIGRATIONS.len() as i64;
    if version > supported {
        return Err(StoreError::IndexTooNew {
            path: path.to_path_buf(),
            found: version,
            supported,
        });
    }
    for sql in &MIGRATIONS[version as usize..] {
        tx.execute_batch(sql)?;
    }
    if version < supported {
        tx.pragma_update(None, "user_version", supported)?;
    }
    tx.commit()?;
    Ok(())
}

pub(crate) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A step row as stored, before its output is parsed.
struct Row {
    key: String,
    kind: String,
    name: String,
    output: String,
    size: i64,
    created: i64,
    last_used: i64,
}

const ROW_COLUMNS: &str = "key, kind, name, output, size, created, last_used";

impl Row {
    fn from_sql(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
        Ok(Row {
            key: r.get(0)?,
            kind: r.get(1)?,
            name: r.get(2)?,
            output: r.get(3)?,
            size: r.get(4)?,
            created: r.get(5)?,
            last_used: r.get(6)?,
        })
    }

    fn parse(self) -> Result<StepRecord> {
        let key = StepKey::parse_hex(&self.key).ok_or_else(|| StoreError::BadRecord {
            key: self.key.clone(),
            source: serde::de::Error::custom("key is not a digest"),
        })?;
        let output =
            serde_json::from_str(&self.output).map_err(|source| StoreError::BadRecord {
                key: self.key.clone(),
                source,
            })?;
        Ok(StepRecord {
            key,
            kind: self.kind,
            name: self.name,
            output,
            size: self.size as u64,
            created: self.created,
            last_used: self.last_used,
        })
    }
}

/// Every record, most recently used first, and the keys of rows that do not parse (a damaged
/// index; nothing can use them, so callers that write drop them).
pub(crate) fn all_records(conn: &Connection) -> Result<(Vec<StepRecord>, Vec<String>)> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {ROW_COLUMNS} FROM steps ORDER BY last_used DESC, key"
    ))?;
    let rows = stmt
        .query_map([], Row::from_sql)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut records = Vec::with_capacity(rows.len());
    let mut bad = Vec::new();
    for row in rows {
        let key = row.key.clone();
        match row.parse() {
            Ok(r) => records.push(r),
            Err(e) if e.is_corrupt() => bad.push(key),
            Err(e) => return Err(e),
        }
    }
    Ok((records, bad))
}

impl Store {
    /// Every blob a step output references: the tree's manifest, each file the manifest names,
    /// each named file. Fails with `MissingBlob` when the manifest itself is not there.
    pub fn output_blobs(&self, output: &StepOutput) -> Result<BTreeSet<BlobDigest>> {
        let mut blobs = BTreeSet::new();
        if let Some(tree) = &output.tree {
            blobs.insert(BlobDigest(tree.0));
            let m = self.get_manifest(tree)?;
            blobs.extend(m.file_blobs());
        }
        blobs.extend(output.files.values().map(|f| f.digest));
        Ok(blobs)
    }

    /// A blob of `blobs` that is not in the store, if any. Checked in parallel: a root
    /// filesystem references tens of thousands of blobs, and a no-op build looks up every step.
    pub(crate) fn first_missing(&self, blobs: &BTreeSet<BlobDigest>) -> Option<BlobDigest> {
        use rayon::prelude::*;
        let blobs: Vec<&BlobDigest> = blobs.iter().collect();
        blobs
            .par_iter()
            .find_any(|d| !self.has_blob(d))
            .map(|d| **d)
    }

    /// Sum of on-disk sizes of `blobs`; `MissingBlob` names the first that is not there.
    pub(crate) fn blobs_size(&self, blobs: &BTreeSet<BlobDigest>) -> Result<u64> {
        let mut size = 0;
        for d in blobs {
            let path = self.blob_path(d);
            match std::fs::metadata(&path) {
                Ok(m) => size += m.len(),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(StoreError::MissingBlob(*d))
                }
                Err(source) => return Err(StoreError::Io { path, source }),
            }
        }
        Ok(size)
    }

    /// The record of `key`, its `last_used` set to now; `None` when there is none or when a blob
    /// it references has gone or is damaged (the record is then dropped).
    pub fn lookup(&self, key: &StepKey) -> Result<Option<StepRecord>> {
        Ok(self.lookup_or_drop(key)?.0)
    }

    /// Like [`Store::lookup`], and says which record it dropped and why. A manifest found
    /// corrupt is deleted too, so that the step's rebuild can store it again.
    pub fn lookup_or_drop(&self, key: &StepKey) -> Result<(Option<StepRecord>, Option<Dropped>)> {
        let row = self
            .conn()
            .query_row(
                &format!("SELECT {ROW_COLUMNS} FROM steps WHERE key = ?1"),
                [key.to_hex()],
                Row::from_sql,
            )
            .optional()?;
        let Some(row) = row else {
            return Ok((None, None));
        };
        let output_json = row.output.clone();
        match self.complete_record(row)? {
            Ok(mut rec) => {
                let now = now();
                self.conn().execute(
                    "UPDATE steps SET last_used = ?2 WHERE key = ?1",
                    params![key.to_hex(), now],
                )?;
                rec.last_used = now;
                Ok((Some(rec), None))
            }
            Err(dropped) => {
                // Drop it, unless another process re-recorded the key in between.
                let n = self.conn().execute(
                    "DELETE FROM steps WHERE key = ?1 AND output = ?2",
                    params![key.to_hex(), output_json],
                )?;
                Ok((None, (n > 0).then_some(dropped)))
            }
        }
    }

    /// Whether `key` has a record whose blobs are all there, without touching anything (no
    /// `last_used`, no drop): for a plan that only looks.
    pub fn has_complete_record(&self, key: &StepKey) -> Result<bool> {
        let row = self
            .conn()
            .query_row(
                &format!("SELECT {ROW_COLUMNS} FROM steps WHERE key = ?1"),
                [key.to_hex()],
                Row::from_sql,
            )
            .optional()?;
        let Some(row) = row else { return Ok(false) };
        let complete = row.parse().and_then(|rec| {
            let blobs = self.output_blobs(&rec.output)?;
            Ok(self.first_missing(&blobs).is_none())
        });
        match complete {
            Ok(c) => Ok(c),
            Err(e) if matches!(e, StoreError::MissingBlob(_)) || e.is_corrupt() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The parsed record if it and every blob it references are there; what is wrong if
    /// something is missing or corrupt (a corrupt manifest is deleted).
    fn complete_record(&self, row: Row) -> Result<std::result::Result<StepRecord, Dropped>> {
        let (key, kind, name) = (row.key.clone(), row.kind.clone(), row.name.clone());
        let dropped = |reason, blob| Dropped {
            key: key.clone(),
            kind: kind.clone(),
            name: name.clone(),
            reason,
            blob,
        };
        let rec = match row.parse() {
            Ok(rec) => rec,
            Err(e) if e.is_corrupt() => return Ok(Err(dropped(DropReason::Unparsable, None))),
            Err(e) => return Err(e),
        };
        let checked =
            self.output_blobs(&rec.output)
                .and_then(|blobs| match self.first_missing(&blobs) {
                    Some(d) => Err(StoreError::MissingBlob(d)),
                    None => Ok(()),
                });
        match checked {
            Ok(()) => Ok(Ok(rec)),
            Err(StoreError::MissingBlob(d)) => Ok(Err(dropped(DropReason::MissingBlob, Some(d)))),
            Err(e) if e.is_corrupt() => {
                let d = e.damaged_blob();
                if let Some(d) = d {
                    self.discard_damaged_blob(&d)?;
                }
                Ok(Err(dropped(DropReason::CorruptBlob, d)))
            }
            Err(e) => Err(e),
        }
    }

    /// Drops the record of `key` if it still says `output` (another process may have recorded
    /// the step anew meanwhile): for a result found damaged while it was being used. True if
    /// a record was dropped.
    pub fn drop_record(&self, key: &StepKey, output: &StepOutput) -> Result<bool> {
        let json = serde_json::to_string(output).expect("a step output always encodes");
        let n = self.conn().execute(
            "DELETE FROM steps WHERE key = ?1 AND output = ?2",
            params![key.to_hex(), json],
        )?;
        Ok(n > 0)
    }

    /// Whether `output` references blob `d`: as its tree's manifest, a file of that tree, or
    /// one of its named files. A manifest that cannot be read counts only as itself.
    pub fn references_blob(&self, output: &StepOutput, d: &BlobDigest) -> bool {
        if output.files.values().any(|f| f.digest == *d) {
            return true;
        }
        let Some(tree) = &output.tree else {
            return false;
        };
        if tree.0 == d.0 {
            return true;
        }
        self.get_manifest(tree)
            .is_ok_and(|m| m.file_blobs().any(|b| b == *d))
    }

    /// Checks blob `d` again and deletes it if its content is wrong, so that the step that
    /// made it can store it anew (storing content whose blob is "already there" writes
    /// nothing). True when the blob is now absent: it was damaged, or missing already. A
    /// good copy (a concurrent writer may have put one back) is kept.
    pub fn discard_damaged_blob(&self, d: &BlobDigest) -> Result<bool> {
        let path = self.blob_path(d);
        let good = self.check_blob_file(d, &path)?;
        Ok(!good || std::fs::symlink_metadata(&path).is_err())
    }

    /// Runs SQLite's full `PRAGMA integrity_check` on the index; a damaged index is set aside
    /// and replaced by a new one, as [`Store::open`] does after its quicker check.
    pub fn check_index(&self) -> Result<Option<IndexReset>> {
        let mut conn = self.conn();
        let problem = match check(&conn, "integrity_check") {
            Ok(None) => return Ok(None),
            Ok(Some(p)) => p,
            Err(e) => damage(&e).ok_or(e)?,
        };
        // Close our connection to the damaged file before it is renamed: closing it later
        // would checkpoint into, and delete, the WAL of the new index by name.
        drop(std::mem::replace(&mut *conn, Connection::open_in_memory()?));
        let (fresh, reset) = set_aside(&self.root, problem, "integrity_check")?;
        *conn = fresh;
        Ok(reset)
    }

    /// Records that step `key` produced `output`. Fails with `MissingBlob` unless every blob the
    /// output references is in the store, so the index never points at missing data.
    pub fn record(&self, key: &StepKey, kind: &str, name: &str, output: &StepOutput) -> Result<()> {
        self.record_all(&[(*key, kind, name, output)])
    }

    /// Records several steps at once: all of them or, if one references a missing blob, none.
    pub fn record_all(&self, records: &[(StepKey, &str, &str, &StepOutput)]) -> Result<()> {
        let mut rows = Vec::with_capacity(records.len());
        for (key, kind, name, output) in records {
            let blobs = self.output_blobs(output)?;
            for f in output.files.values() {
                self.wait_pending(&f.digest)?;
            }
            let json = serde_json::to_string(output).expect("a step output always encodes");
            rows.push((key, kind, name, json, blobs));
        }
        let now = now();
        let mut conn = self.conn();
        // The existence check and the insert share one write transaction, the kind `gc` holds
        // while it sweeps: a sweep cannot delete a blob between the two.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for (key, kind, name, json, blobs) in rows {
            let size = self.blobs_size(&blobs)?;
            tx.execute(
                "INSERT INTO steps (key, kind, name, output, size, created, last_used)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)
                 ON CONFLICT (key) DO UPDATE SET kind = excluded.kind, name = excluded.name,
                     output = excluded.output, size = excluded.size,
                     last_used = excluded.last_used",
                params![key.to_hex(), kind, name, json, size as i64, now],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Every record, most recently used first.
    pub fn list(&self) -> Result<Vec<StepRecord>> {
        Ok(all_records(&self.conn())?.0)
    }

    /// The key and explanation last recorded for `step` of `image`.
    pub fn last_build(&self, image: &str, step: &str) -> Result<Option<(StepKey, String)>> {
        let row: Option<(String, String)> = self
            .conn()
            .query_row(
                "SELECT key, explain FROM last_build WHERE image = ?1 AND step = ?2",
                params![image, step],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        Ok(row.and_then(|(key, explain)| StepKey::parse_hex(&key).map(|k| (k, explain))))
    }

    /// Remembers that `step` of `image` was last built with `key`; `explain` is the caller's
    /// opaque JSON saying what went into the key, so a later build can say why it changed.
    pub fn set_last_build(
        &self,
        image: &str,
        step: &str,
        key: &StepKey,
        explain: &str,
    ) -> Result<()> {
        self.conn().execute(
            "INSERT INTO last_build (image, step, key, explain) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (image, step) DO UPDATE SET key = excluded.key, explain = excluded.explain",
            params![image, step, key.to_hex(), explain],
        )?;
        Ok(())
    }

    /// The BLAKE3 of the file's content (the digest its blob would have), re-read only when its
    /// size, mtime or inode changed since the last call. The content is not stored.
    pub fn hash_file_cached(&self, path: &Path) -> Result<BlobDigest> {
        let abs = std::fs::canonicalize(path).map_err(StoreError::io(path))?;
        let meta = std::fs::metadata(&abs).map_err(StoreError::io(&abs))?;
        let key = abs.as_os_str().as_bytes();
        let mtime_ns = meta.mtime() * 1_000_000_000 + meta.mtime_nsec();
        let (size, ino, dev) = (meta.len() as i64, meta.ino() as i64, meta.dev() as i64);
        let cached: Option<String> = self
            .conn()
            .query_row(
                "SELECT digest FROM file_digests
                 WHERE path = ?1 AND size = ?2 AND mtime_ns = ?3 AND ino = ?4 AND dev = ?5",
                params![key, size, mtime_ns, ino, dev],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(d) = cached.as_deref().and_then(BlobDigest::parse_hex) {
            return Ok(d);
        }
        let mut file = std::fs::File::open(&abs).map_err(StoreError::io(&abs))?;
        let mut h = blake3::Hasher::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf).map_err(StoreError::io(&abs))?;
            if n == 0 {
                break;
            }
            h.update_rayon(&buf[..n]);
        }
        let digest = BlobDigest::from_hash(h.finalize());
        // A file modified within the same second as its mtime could change again without
        // changing size or mtime: only remember digests of files that have settled.
        let settled = meta.mtime() < now() - 1;
        let after = std::fs::metadata(&abs).map_err(StoreError::io(&abs))?;
        let unchanged = after.len() == meta.len()
            && after.mtime() == meta.mtime()
            && after.mtime_nsec() == meta.mtime_nsec();
        if settled && unchanged {
            self.conn().execute(
                "INSERT INTO file_digests (path, size, mtime_ns, ino, dev, digest)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (path) DO UPDATE SET size = excluded.size,
                     mtime_ns = excluded.mtime_ns, ino = excluded.ino, dev = excluded.dev,
                     digest = excluded.digest",
                params![key, size, mtime_ns, ino, dev, digest.to_hex()],
            )?;
        }
        Ok(digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user_version(conn: &Connection) -> i64 {
        conn.query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn migrating_twice_is_harmless() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.sqlite");
        let mut conn = open(&path).unwrap();
        assert_eq!(user_version(&conn), MIGRATIONS.len() as i64);
        conn.execute(
            "INSERT INTO last_build (image, step, key, explain) VALUES ('i', 's', 'k', '{}')",
            [],
        )
        .unwrap();
        // Again on the same connection, and from a second one: nothing re-runs, nothing is lost.
        migrate(&mut conn, &path).unwrap();
        let conn2 = open(&path).unwrap();
        assert_eq!(user_version(&conn2), MIGRATIONS.len() as i64);
        let n: i64 = conn2
            .query_row("SELECT count(*) FROM last_build", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
        let mode: String = conn2
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn an_index_from_a_newer_imgspec_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.sqlite");
        let conn = open(&path).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        match open(&path) {
            Err(StoreError::IndexTooNew { found: 99, .. }) => {}
            other => panic!("expected IndexTooNew, got {:?}", other.map(|_| ())),
        }
    }
}
