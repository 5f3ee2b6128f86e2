//! The content-addressed store of imgspec: blobs by digest, trees as manifests over blobs, and
//! an SQLite index of step records that point at them.
//!
//! # Layout on disk
//!
//! ```text
//! ROOT/                      the directory given to `Store::open`, created if missing
//!   CACHEDIR.TAG             standard cache-directory tag, so backup tools skip the store
//!   blobs-v1/ab/cdef…        one file per blob; `ab` is the first two hex digits of the BLAKE3
//!                            of the blob's *uncompressed* bytes and `cdef…` the other 62; the
//!                            file holds those bytes zstd-compressed (level 3; level 1 for
//!                            blobs from 32 MiB, disk and filesystem images)
//!   index-v1.sqlite          the step index (WAL mode, so `-wal` and `-shm` files beside it):
//!                              steps(key, kind, name, output, size, created, last_used)
//!                              last_build(image, step, key, explain)
//!                              file_digests(path, size, mtime_ns, ino, dev, digest)
//!   index-v1.sqlite.lock     flock-ed while a damaged index is set aside (never removed)
//!   index-v1.sqlite.corrupt-<unix time>
//!                            a damaged index `open` set aside (`PRAGMA quick_check` failed)
//!   outputs-v1/<blake3>.json written by imgspec, not this crate: the state of an output
//!                            folder (what a build wrote there), by its absolute path
//!   locks/<key hex>          flock-ed by the process building that step; removed when it is
//!                            done (see `claim`); one nobody holds (a killed build's) is
//!                            removed by the next `Store::open` and by `gc`
//!   linked-v1/<digest>-<inode>-<size>-<mtime ns>
//!                            a hard link to an output file that holds that blob's bytes,
//!                            named by its stamp; a deleted output comes back from here (see
//!                            `linked`); `gc` removes those no output folder links
//!   trees-v1/<tree digest>/  at most two materialised trees chroot steps left (`keep_tree`):
//!                              `root/`, `manifest`, `stamps`; taken whole by the next one that
//!                              starts from that tree or one close to it (see `kept`)
//!   tmp/                     temporary files and scratch dirs, on the store's filesystem
//!     session-XXXXXX/        one per open `Store`, holding its temp blobs and `tmp_dir`s;
//!       fresh/ab…              plain copies of large blobs this session stored from files
//!                              (`put_file_keep`, `put_file_keep_later`), handed to the next
//!                              step of the same build and moved to the output folder, never
//!                              read by another session; `put_file_keep_later` writes the
//!                              blob from it on a thread of its own (a pending blob: `record`
//!                              and reads wait for it, the session's end too)
//!       fresh/ab…@OFFSET       a blob that is a range of a larger file (a filesystem made in
//!                              place in a disk: `put_range_keep_later`), taken whole by one
//!                              step (`take_fresh_range`), which writes only outside the range
//!       .lock                  flock-ed while that `Store` lives; the folder is removed
//!                              whole when it drops; a session whose lock is free (a killed
//!                              build's), and any other entry older than an hour, is removed
//!                              by the next `Store::open`
//! ```
//!
//! The `-v1` in each name is the version of that part's encoding: a change gets a new name, so
//! an old store is ignored rather than misread. Schema changes inside the index are append-only
//! migrations tracked by `PRAGMA user_version`.
//!
//! # The store never lies
//!
//! **Architecture Invariant:** a file under `blobs-v1/` is either absent or complete, and a step
//! record only points at blobs that exist.
//!
//! - A blob is written into a temp file under `tmp/`, hashed while it streams, `fsync`ed, made
//!   read-only, and only then renamed to its digest's name. Rename is atomic, and a blob that
//!   is already there is success: same digest, same bytes.
//! - Every read re-hashes what it decompresses and fails with [`StoreError::Corrupt`] instead of
//!   returning wrong bytes; `blob_to_file` checks the digest before renaming its temp file into
//!   place. [`damaged_blob`] finds the blob in any error chain, so that a build can treat it as
//!   a miss: [`Store::discard_damaged_blob`] deletes it (storing the same content again would
//!   otherwise keep the bad copy) and [`Store::drop_record`] the records that hold it.
//! - An index that fails `PRAGMA quick_check` at open (or `integrity_check` in `verify`) is
//!   renamed aside and replaced by a new one; [`Store::index_reset`] says so.
//! - `record` checks that every referenced blob exists (the tree's manifest, every file the
//!   manifest names, every [`FileRef`]) inside the same SQLite write transaction that `gc` holds
//!   while it sweeps, so a sweep cannot slip between the check and the insert. `lookup` drops a
//!   record whose blobs have gone (deleted by hand, lost in a crash) and reports a miss.
//! - Killing the process at any point leaves at worst a temp file (removed by a later open) or
//!   a blob no record references (removed by `gc`).
//! - `gc` and `verify` only ever delete a record before (or together with) the blobs it needs.
//!   A `gc` running while another build stores blobs it has not recorded yet may sweep them;
//!   that build's `record` then fails with `MissingBlob` rather than point at nothing.
//!
//! # Trees
//!
//! A filesystem tree is a [`TreeManifest`]: a list of [`Entry`]s sorted by path in byte order (so
//! parents come before children), the root itself being the path `""`. Each entry records the
//! kind (directory, regular file with the digest and size of its content blob, symlink and its
//! target, hard link to an earlier file entry of the same tree, character or block device with
//! its major/minor, fifo), the permission bits (including setuid/setgid/sticky), numeric
//! uid/gid, mtime in seconds, and extended attributes. Nothing else is kept: no atime/ctime, no
//! inode numbers, no user or group names, no sockets.
//!
//! A manifest is stored as a blob holding its canonical encoding, the `serde_json` encoding of
//! the sorted struct; its [`TreeDigest`] is that blob's digest. Equal trees therefore have equal
//! digests, and a tree costs one small blob beyond the file contents it shares with every other
//! tree.
//!
//! # Code map
//!
//! - `blob`: put, read, `blob_to_file`, `adopt_compressed` (a blob that arrives compressed, from
//!   a remote or a bundle, checked before it is renamed in); the only writer of `blobs-v1/`.
//! - `tree`: manifest order and validation, `import_dir`, `export_dir`, `diff`.
//! - `tarball`: `import_tar` (GNU and PAX) and the deterministic PAX `export_tar`.
//! - `index`: the SQLite schema and its migrations, `record`, `lookup`, `last_build`,
//!   `hash_file_cached`.
//! - `gc`: `gc`, `verify`, `usage`.
//! - `remote`: the remote cache (`cas-v1/`, `ac-v1/` on the server), fetch and push of a step
//!   with its blobs, every check of what arrives; see its module doc for the layout and the
//!   checks. It moves the objects through a `backend::Backend`: `http` (GET/HEAD/PUT) or
//!   `s3` (`object_store`).
//! - `tiers`: the ordered list of remotes after the local store, each read-only or
//!   read-write: lookup in order, what a hit fills, where a built step goes.
//! - `bundle`: `export_bundle`/`import_bundle`, a `.tar.zst` of records and blobs for offline
//!   sharing; every blob checked on import, all records or none.
//! - `linked`: hard links to output files, by digest and stamp, that give a deleted output
//!   back without decompressing its blob.
//! - `tmp`: session dirs under `tmp/` and removal of what dead processes left.
//! - `claim`: per-step locks across processes (build a shared step once).
//! - `sys`: the libc calls std lacks (xattrs, mknod, utimensat, flock); all the `unsafe`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub mod backend;
mod blob;
mod bundle;
mod claim;
mod gc;
mod http;
mod index;
mod kept;
mod linked;
pub mod remote;
pub mod s3;
mod sys;
mod tarball;
pub mod tiers;
mod tmp;
mod tree;

pub use blob::{is_zero, start_file_writeback, BlobReader};
pub use bundle::BundleStats;
pub use claim::{Claim, StepClaim, LOCKS_DIR};
pub use kept::{Taken, KEPT_DIR, KEPT_TREES};
pub use linked::LINKED_DIR;
pub use remote::{Credentials, Remote, RemoteError};
pub use sys::try_lock_exclusive;
pub use tiers::{Mode, Tier, Tiers};
pub use tree::{diff, Checkout};

/// Name of the blob directory under the root; bump the version when the blob encoding changes.
pub const BLOBS_DIR: &str = "blobs-v1";
/// Name of the SQLite index under the root.
pub const INDEX_FILE: &str = "index-v1.sqlite";
/// Name of the temp directory under the root.
pub const TMP_DIR: &str = "tmp";

macro_rules! digest_type {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            pub fn from_hash(h: blake3::Hash) -> Self {
                Self(*h.as_bytes())
            }
            pub fn to_hex(&self) -> String {
                blake3::Hash::from_bytes(self.0).to_hex().to_string()
            }
            /// The first 12 hex digits, for people.
            pub fn short(&self) -> String {
                self.to_hex()[..12].to_string()
            }
            pub fn parse_hex(s: &str) -> Option<Self> {
                blake3::Hash::from_hex(s).ok().map(Self::from_hash)
            }
        }
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.to_hex())
            }
        }
        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }
        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_hex())
            }
        }
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse_hex(&s).ok_or_else(|| serde::de::Error::custom("bad digest"))
            }
        }
    };
}

digest_type!(
    /// BLAKE3 of a blob's uncompressed bytes.
    BlobDigest
);
digest_type!(
    /// BLAKE3 of a tree manifest's canonical encoding (the manifest is stored as that blob).
    TreeDigest
);
digest_type!(
    /// A step's key: BLAKE3 over the plan's written-down encoding of everything that can change
    /// the step's result. Opaque to the store.
    StepKey
);

/// Everything that can go wrong in the store. Each variant carries the path or digest concerned.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("I/O error on `{path}`")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cache index error")]
    Sqlite(#[from] rusqlite::Error),
    #[error("blob `{digest}` is corrupt: its content hashes to `{actual}`")]
    Corrupt {
        digest: BlobDigest,
        actual: BlobDigest,
    },
    #[error("blob `{0}` is not in the store")]
    MissingBlob(BlobDigest),
    #[error("bad tree entry `{path}`: {reason}")]
    BadEntry { path: String, reason: String },
    #[error("bad manifest `{digest}`")]
    BadManifest {
        digest: TreeDigest,
        #[source]
        source: serde_json::Error,
    },
    #[error("blob `{digest}` is corrupt: it does not decompress")]
    Undecodable {
        digest: BlobDigest,
        #[source]
        source: std::io::Error,
    },
    #[error("step record `{key}` in the index does not parse")]
    BadRecord {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("bad bundle: entry `{entry}`: {reason}")]
    BadBundle { entry: String, reason: String },
    #[error("the cache index `{path}` has schema version {found}, newer than the {supported} this imgspec knows")]
    IndexTooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
}

impl StoreError {
    /// True when stored data failed its check (bad digest, undecodable blob, unparsable
    /// manifest or record): the data is wrong, not merely absent or unreachable.
    pub fn is_corrupt(&self) -> bool {
        matches!(
            self,
            StoreError::Corrupt { .. }
                | StoreError::Undecodable { .. }
                | StoreError::BadManifest { .. }
                | StoreError::BadRecord { .. }
        )
    }

    /// The blob this error found damaged or missing: content that does not match its digest,
    /// does not decompress, a manifest that does not parse, or a blob that is not there. A
    /// build treats such a blob as a cache miss of the step that produced it.
    pub fn damaged_blob(&self) -> Option<BlobDigest> {
        match self {
            StoreError::Corrupt { digest, .. } | StoreError::Undecodable { digest, .. } => {
                Some(*digest)
            }
            StoreError::MissingBlob(d) => Some(*d),
            StoreError::BadManifest { digest, .. } => Some(BlobDigest(digest.0)),
            // A read that failed inside a stream (a tar export reading a blob) carries the
            // store's own error inside the `io::Error`.
            StoreError::Io { source, .. } => damaged_in_io(source),
            _ => None,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> StoreError {
        let path = path.into();
        move |source| StoreError::Io { path, source }
    }

    pub(crate) fn bad_entry(path: impl Into<String>, reason: impl Into<String>) -> StoreError {
        StoreError::BadEntry {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

fn damaged_in_io(e: &std::io::Error) -> Option<BlobDigest> {
    let inner = e.get_ref()?;
    if let Some(s) = inner.downcast_ref::<StoreError>() {
        return s.damaged_blob();
    }
    inner
        .downcast_ref::<std::io::Error>()
        .and_then(damaged_in_io)
}

/// The damaged or missing blob somewhere in `err`'s chain of sources (see
/// [`StoreError::damaged_blob`]), looking inside `io::Error`s too, whose `source` skips the
/// error they wrap.
pub fn damaged_blob(err: &(dyn std::error::Error + 'static)) -> Option<BlobDigest> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(s) = e.downcast_ref::<StoreError>() {
            if let Some(d) = s.damaged_blob() {
                return Some(d);
            }
        }
        if let Some(d) = e.downcast_ref::<std::io::Error>().and_then(damaged_in_io) {
            return Some(d);
        }
        cur = e.source();
    }
    None
}

/// An error and its sources, the one walk of `source()` in imgspec: `{}` puts them on one line
/// (`a: b: c`), `{:#}` one per line (`a` then `  caused by: b`, …).
pub fn error_chain<'a>(e: &'a (dyn std::error::Error + 'a)) -> ErrorChain<'a> {
    ErrorChain(e)
}

/// See [`error_chain`].
pub struct ErrorChain<'a>(&'a (dyn std::error::Error + 'a));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sep = if f.alternate() {
            "\n  caused by: "
        } else {
            ": "
        };
        write!(f, "{}", self.0)?;
        let mut cur = self.0.source();
        while let Some(c) = cur {
            write!(f, "{sep}{c}")?;
            cur = c.source();
        }
        Ok(())
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// One entry of a tree manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Relative to the tree root, `/`-separated, no leading `/`; the root itself is `""`.
    pub path: String,
    pub kind: EntryKind,
    /// Permission bits including setuid/setgid/sticky (no file-type bits).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Seconds since the epoch, clamped at import time when asked.
    pub mtime: i64,
    /// Extended attributes by name (`security.capability`, `user.*`, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum EntryKind {
    Dir,
    File {
        digest: BlobDigest,
        size: u64,
    },
    Symlink {
        target: String,
    },
    /// A hard link to an earlier `File` entry of the same tree.
    Hardlink {
        target: String,
    },
    Char {
        major: u32,
        minor: u32,
    },
    Block {
        major: u32,
        minor: u32,
    },
    Fifo,
}

/// A filesystem tree: entries sorted by path (byte order), parents before children.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeManifest {
    pub entries: Vec<Entry>,
}

/// What a step produced: a tree, named files, and small metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepOutput {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tree: Option<TreeDigest>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, FileRef>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub meta: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRef {
    pub digest: BlobDigest,
    pub size: u64,
}

/// A row of the step index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    pub key: StepKey,
    pub kind: String,
    pub name: String,
    pub output: StepOutput,
    /// Bytes on disk (compressed) of the blobs this record references, counted once per record.
    pub size: u64,
    pub created: i64,
    pub last_used: i64,
}

#[derive(Clone, Debug, Default)]
pub struct ImportOptions {
    /// Clamp every mtime to at most this value (SOURCE_DATE_EPOCH).
    pub clamp_mtime: Option<i64>,
}

pub enum GcPolicy {
    /// Keep only the records with these keys (and every blob they reference).
    Keep(Vec<StepKey>),
    /// Drop records not used for this many seconds.
    OlderThan(i64),
    /// Drop least-recently-used records until the store is at most this many bytes.
    MaxBytes(u64),
}

#[derive(Debug, Default)]
pub struct GcReport {
    pub records_removed: usize,
    pub blobs_removed: usize,
    pub bytes_freed: u64,
    /// Lock files under `locks/` that no process held (left by a killed build).
    pub locks_removed: usize,
}

/// Why a step record was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DropReason {
    /// A blob it references failed its check (and was deleted).
    CorruptBlob,
    /// A blob it references is not in the store.
    MissingBlob,
    /// The row itself does not parse.
    Unparsable,
}

impl std::fmt::Display for DropReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DropReason::CorruptBlob => "a blob it references is corrupt",
            DropReason::MissingBlob => "a blob it references is missing",
            DropReason::Unparsable => "its record does not parse",
        })
    }
}

/// A step record the store dropped because it could no longer be used.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Dropped {
    /// The key as stored (hex; an unparsable row may not hold a digest).
    pub key: String,
    pub kind: String,
    pub name: String,
    pub reason: DropReason,
    /// The blob concerned, when known.
    pub blob: Option<BlobDigest>,
}

#[derive(Debug, Default)]
pub struct VerifyReport {
    pub blobs_checked: usize,
    /// Blobs whose content did not match their digest (or did not decompress); deleted.
    pub corrupt: Vec<BlobDigest>,
    /// Blobs some record referenced that were not in the store at all.
    pub missing: Vec<BlobDigest>,
    /// Records dropped because a blob they reference was corrupt or missing, or because they
    /// did not parse.
    pub dropped: Vec<Dropped>,
    /// The index failed `PRAGMA integrity_check` and was set aside for a new one.
    pub index_reset: Option<IndexReset>,
    /// Output files linked into the store (`linked-v1/`) that were hashed, and those removed
    /// because their bytes were not their blob's or they had changed since they were linked.
    pub linked_checked: usize,
    pub linked_removed: usize,
}

/// The index was damaged (it failed SQLite's check, or does not open as a database): it was
/// renamed aside and a new, empty one made. Blobs stay; step records are lost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexReset {
    /// Where the damaged index now is (`index-v1.sqlite.corrupt-<unix time>`).
    pub set_aside: PathBuf,
    /// What SQLite said about it.
    pub problem: String,
}

#[derive(Debug, Default)]
pub struct Usage {
    pub records: usize,
    pub blobs: usize,
    pub bytes: u64,
}

/// The local store. `Sync`: one `Store` is shared by every worker thread, and several `Store`s
/// (threads or processes) may share one root.
pub struct Store {
    root: PathBuf,
    blobs: PathBuf,
    /// This instance's session dir under `tmp/`: temp blobs and `tmp_dir`s go here.
    session: PathBuf,
    /// The open `.lock` of the session dir, flock-ed for the life of the store.
    _session_lock: std::fs::File,
    db: std::sync::Mutex<rusqlite::Connection>,
    /// Set when `open` found the index damaged and replaced it.
    index_reset: Option<IndexReset>,
    /// Blobs a thread of this session is still writing (`put_file_keep_later`).
    pending: std::sync::Arc<blob::PendingBlobs>,
}

// The executor shares one store across rayon workers.
const _: () = {
    const fn assert_sync_send<T: Sync + Send>() {}
    assert_sync_send::<Store>();
};

impl Store {
    /// Opens the store at `root`, creating it (and migrating its index) as needed, and removes
    /// stale temp files left by dead processes.
    pub fn open(root: &Path) -> Result<Store> {
        std::fs::create_dir_all(root).map_err(StoreError::io(root))?;
        let root = std::path::absolute(root).map_err(StoreError::io(root))?;
        let blobs = root.join(BLOBS_DIR);
        std::fs::create_dir_all(&blobs).map_err(StoreError::io(&blobs))?;
        let tmp = root.join(TMP_DIR);
        std::fs::create_dir_all(&tmp).map_err(StoreError::io(&tmp))?;
        tmp::write_cachedir_tag(&root)?;
        tmp::remove_stale(&tmp);
        let (session, session_lock) = tmp::new_session(&tmp)?;
        let (db, index_reset) = index::open_checked(&root)?;
        let store = Store {
            root,
            blobs,
            session,
            _session_lock: session_lock,
            db: std::sync::Mutex::new(db),
            index_reset,
            pending: Default::default(),
        };
        // Best effort: a lock file a killed build left behind blocks nobody, but is litter.
        let _ = store.remove_stale_locks();
        Ok(store)
    }

    /// The damaged index `open` set aside (and replaced by a new one), if it did.
    pub fn index_reset(&self) -> Option<&IndexReset> {
        self.index_reset.as_ref()
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A scratch directory inside the store's `tmp/`: on the store's filesystem, so files made
    /// there can be renamed into the store or into another scratch dir. Removed on drop, or by
    /// a later `Store::open` if the process dies. Drop it before the `Store` it came from.
    pub fn tmp_dir(&self, prefix: &str) -> Result<tempfile::TempDir> {
        tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(&self.session)
            .map_err(StoreError::io(&self.session))
    }

    pub(crate) fn conn(&self) -> std::sync::MutexGuard<'_, rusqlite::Connection> {
        // A panic while holding the lock rolled back its transaction on unwind: the connection
        // is still usable.
        self.db.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.wait_all_pending();
        tmp::end_session(&self.session);
    }
}

/// Differences between two trees, path by path.
#[derive(Debug, PartialEq, Eq)]
pub enum TreeChange {
    Added(Entry),
    Removed(Entry),
    Changed { old: Entry, new: Entry },
}

// A tree's digest is the digest of the blob holding its manifest.
impl From<TreeDigest> for BlobDigest {
    fn from(t: TreeDigest) -> BlobDigest {
        BlobDigest(t.0)
    }
}

#[cfg(test)]
mod error_chain_tests {
    #[derive(Debug, thiserror::Error)]
    #[error("fetching `x`")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn one_line_and_one_cause_per_line() {
        let e = Outer(std::io::Error::other("connection reset"));
        assert_eq!(
            super::error_chain(&e).to_string(),
            "fetching `x`: connection reset"
        );
        assert_eq!(
            format!("{:#}", super::error_chain(&e)),
            "fetching `x`\n  caused by: connection reset"
        );
    }
}
