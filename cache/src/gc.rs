//! Garbage collection, verification and usage of the store.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use rusqlite::{params, TransactionBehavior};

use crate::index::{all_records, now};
use crate::{
    BlobDigest, DropReason, Dropped, GcPolicy, GcReport, Result, StepKey, StepOutput, StepRecord,
    Store, StoreError, Usage, VerifyReport,
};

/// The blobs a record references; `None` when they cannot be known (its manifest is gone).
type Refs = Option<BTreeSet<BlobDigest>>;

/// Forgets the cached digests of files that no longer exist.
fn prune_file_digests(conn: &rusqlite::Connection) -> Result<()> {
    let paths: Vec<Vec<u8>> = conn
        .prepare("SELECT path FROM file_digests")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for p in paths {
        if fs::symlink_metadata(Path::new(std::ffi::OsStr::from_bytes(&p))).is_err() {
            conn.execute("DELETE FROM file_digests WHERE path = ?1", params![p])?;
        }
    }
    Ok(())
}

/// A blob file found under `blobs-v1/`.
struct BlobFile {
    digest: BlobDigest,
    path: PathBuf,
    size: u64,
}

impl Store {
    /// Every blob file in the store. Files whose names are not digests are left alone.
    fn blob_files(&self) -> Result<Vec<BlobFile>> {
        let mut out = Vec::new();
        for shard in fs::read_dir(&self.blobs).map_err(StoreError::io(&self.blobs))? {
            let shard = shard.map_err(StoreError::io(&self.blobs))?;
            let shard_name = shard.file_name();
            let Some(prefix) = shard_name.to_str().filter(|s| s.len() == 2) else {
                continue;
            };
            if !shard
                .file_type()
                .map_err(StoreError::io(shard.path()))?
                .is_dir()
            {
                continue;
            }
            let dir = shard.path();
            for f in fs::read_dir(&dir).map_err(StoreError::io(&dir))? {
                let f = f.map_err(StoreError::io(&dir))?;
                let name = f.file_name();
                let Some(digest) = name
                    .to_str()
                    .and_then(|rest| BlobDigest::parse_hex(&format!("{prefix}{rest}")))
                else {
                    continue;
                };
                let meta = match f.metadata() {
                    Ok(m) => m,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue, // removed meanwhile
                    Err(e) => {
                        return Err(StoreError::Io {
                            path: f.path(),
                            source: e,
                        })
                    }
                };
                if meta.is_file() {
                    out.push(BlobFile {
                        digest,
                        path: f.path(),
                        size: meta.len(),
                    });
                }
            }
        }
        Ok(out)
    }

    /// The blobs each record references, or `None` for a record whose manifest is missing or
    /// corrupt (such a record can never be used again). `known` holds references worked out
    /// before, reused for records whose output has not changed since.
    fn references(
        &self,
        records: &[StepRecord],
        known: &HashMap<StepKey, (StepOutput, Refs)>,
    ) -> Result<Vec<Refs>> {
        records
            .par_iter()
            .map(|r| {
                if let Some((_, refs)) = known.get(&r.key).filter(|(o, _)| *o == r.output) {
                    return Ok(refs.clone());
                }
                match self.output_blobs(&r.output) {
                    Ok(b) => Ok(Some(b)),
                    Err(e) if matches!(e, StoreError::MissingBlob(_)) || e.is_corrupt() => Ok(None),
                    Err(e) => Err(e),
                }
            })
            .collect()
    }

    /// Removes the records `policy` does not keep (and records whose manifest is gone), then
    /// every blob no remaining record references and every `last_build` row whose key is gone.
    pub fn gc(&self, policy: &GcPolicy) -> Result<GcReport> {
        let mut report = GcReport::default();
        let mut conn = self.conn();

        // Phase 1: choose and delete records.
        let mut known = HashMap::new();
        {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let (records, unparsable) = all_records(&tx)?; // most recently used first
            let refs = self.references(&records, &known)?;
            let mut remove: HashSet<usize> = refs
                .iter()
                .enumerate()
                .filter(|(_, r)| r.is_none())
                .map(|(i, _)| i)
                .collect();
            match policy {
                GcPolicy::Keep(keys) => {
                    let keep: HashSet<_> = keys.iter().collect();
                    remove.extend((0..records.len()).filter(|&i| !keep.contains(&records[i].key)));
                }
                GcPolicy::OlderThan(secs) => {
                    let cutoff = now() - secs;
                    remove.extend((0..records.len()).filter(|&i| records[i].last_used < cutoff));
                }
                GcPolicy::MaxBytes(max) => {
                    // Bytes of the blobs still referenced; drop the least recently used record
                    // until they fit, each blob counted once however many records share it.
                    let mut users: HashMap<BlobDigest, usize> = HashMap::new();
                    for (i, r) in refs.iter().enumerate() {
                        if let Some(blobs) = r.as_ref().filter(|_| !remove.contains(&i)) {
                            for b in blobs {
                                *users.entry(*b).or_default() += 1;
                            }
                        }
                    }
                    let size_of =
                        |d: &BlobDigest| fs::metadata(self.blob_path(d)).map_or(0, |m| m.len());
                    let mut total: u64 = users.keys().map(size_of).sum();
                    for i in (0..records.len()).rev() {
                        if total <= *max {
                            break;
                        }
                        let Some(blobs) = refs[i].as_ref().filter(|_| !remove.contains(&i)) else {
                            continue;
                        };
                        for b in blobs {
                            let n = users.get_mut(b).expect("counted above");
                            *n -= 1;
                            if *n == 0 {
                                total -= size_of(b);
                            }
                        }
                        remove.insert(i);
                    }
                }
            }
            for &i in &remove {
                tx.execute(
                    "DELETE FROM steps WHERE key = ?1",
                    params![records[i].key.to_hex()],
                )?;
            }
            for key in &unparsable {
                tx.execute("DELETE FROM steps WHERE key = ?1", params![key])?;
            }
            tx.execute(
                "DELETE FROM last_build WHERE key NOT IN (SELECT key FROM steps)",
                [],
            )?;
            prune_file_digests(&tx)?;
            tx.commit()?;
            report.records_removed = remove.len() + unparsable.len();
            for (i, (r, refs)) in records.into_iter().zip(refs).enumerate() {
                if !remove.contains(&i) {
                    known.insert(r.key, (r.output, refs));
                }
            }
        }

        // Phase 2: mark from the records that remain, sweep the rest. The write lock is held
        // (and nothing written) so that no `record` can land between the mark and the sweep.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let (records, _) = all_records(&tx)?;
        let mut live: HashSet<BlobDigest> = HashSet::new();
        for r in self.references(&records, &known)? {
            // A record that lost its manifest since phase 1 keeps nothing alive: lookup will
            // drop it.
            live.extend(r.into_iter().flatten());
        }
        for b in self.blob_files()? {
            if live.contains(&b.digest) {
                continue;
            }
            match fs::remove_file(&b.path) {
                Ok(()) => {
                    report.blobs_removed += 1;
                    report.bytes_freed += b.size;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(StoreError::Io {
                        path: b.path,
                        source: e,
                    })
                }
            }
        }
        drop(tx); // rolls back: nothing was written
        drop(conn);
        report.locks_removed = self.remove_stale_locks()?;
        Ok(report)
    }

    /// Checks the index (`PRAGMA integrity_check`; a damaged one is set aside for a new one),
    /// re-hashes every blob, deletes the corrupt ones, and drops the records that referenced a
    /// corrupt or missing blob, naming each.
    pub fn verify(&self) -> Result<VerifyReport> {
        let index_reset = self.check_index()?;
        let blobs = self.blob_files()?;
        let checked: Vec<Option<BlobDigest>> = blobs
            .par_iter()
            .map(|b| match self.check_blob_file(&b.digest, &b.path) {
                Ok(true) => Ok(None),
                Ok(false) => Ok(Some(b.digest)),
                Err(e) => Err(e),
            })
            .collect::<Result<_>>()?;
        let corrupt: Vec<BlobDigest> = checked.into_iter().flatten().collect();
        let corrupt_set: HashSet<_> = corrupt.iter().collect();

        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let (records, unparsable) = all_records(&tx)?;
        let mut dropped = Vec::new();
        for key in &unparsable {
            let (kind, name): (String, String) = tx.query_row(
                "SELECT kind, name FROM steps WHERE key = ?1",
                params![key],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            tx.execute("DELETE FROM steps WHERE key = ?1", params![key])?;
            dropped.push(Dropped {
                key: key.clone(),
                kind,
                name,
                reason: DropReason::Unparsable,
                blob: None,
            });
        }
        let mut missing = BTreeSet::new();
        for r in &records {
            // The first blob that is gone: a corrupt one (deleted above) or one that was
            // never there.
            let gone = match self.output_blobs(&r.output) {
                Ok(blobs) => blobs.into_iter().find(|b| !self.has_blob(b)),
                Err(StoreError::MissingBlob(d)) => Some(d),
                Err(e) if e.is_corrupt() => e.damaged_blob(),
                Err(e) => return Err(e),
            };
            let Some(d) = gone else { continue };
            let reason = if corrupt_set.contains(&d) {
                DropReason::CorruptBlob
            } else {
                missing.insert(d);
                DropReason::MissingBlob
            };
            tx.execute("DELETE FROM steps WHERE key = ?1", params![r.key.to_hex()])?;
            dropped.push(Dropped {
                key: r.key.to_hex(),
                kind: r.kind.clone(),
                name: r.name.clone(),
                reason,
                blob: Some(d),
            });
        }
        tx.commit()?;
        let (linked_checked, linked_removed) = self.verify_linked();
        Ok(VerifyReport {
            blobs_checked: blobs.len(),
            corrupt,
            missing: missing.into_iter().collect(),
            dropped,
            index_reset,
            linked_checked,
            linked_removed,
        })
    }

    /// Whether the blob file at `path` decompresses to content with digest `d`; a corrupt file
    /// is deleted (unless a writer replaced it meanwhile).
    pub(crate) fn check_blob_file(&self, d: &BlobDigest, path: &Path) -> Result<bool> {
        let ino = match fs::metadata(path) {
            Ok(m) => m.ino(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(true),
            Err(e) => {
                return Err(StoreError::Io {
                    path: path.to_path_buf(),
                    source: e,
                })
            }
        };
        let mut r = match self.open_blob(d) {
            Ok(r) => r,
            Err(StoreError::MissingBlob(_)) => return Ok(true),
            Err(e) => return Err(e),
        };
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match r.read_checked(&mut buf) {
                Ok(0) => return Ok(true),
                Ok(_) => {}
                Err(e) if e.is_corrupt() => break,
                Err(e) => return Err(e),
            }
        }
        // Only delete the very file that failed: a concurrent put may have renamed a good copy
        // into place since.
        if fs::metadata(path).is_ok_and(|m| m.ino() == ino) {
            fs::remove_file(path).map_err(StoreError::io(path))?;
        }
        Ok(false)
    }

    /// Records, blobs and the bytes the blobs take on disk.
    pub fn usage(&self) -> Result<Usage> {
        let records: i64 = self
            .conn()
            .query_row("SELECT count(*) FROM steps", [], |r| r.get(0))?;
        let blobs = self.blob_files()?;
        Ok(Usage {
            records: records as usize,
            blobs: blobs.len(),
            bytes: blobs.iter().map(|b| b.size).sum(),
        })
    }
}
