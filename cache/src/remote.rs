//! The remote cache: blobs and step records shared through a [`Backend`] that moves named
//! objects: plain HTTP ([`crate::http`], e.g. nginx with WebDAV `PUT`) or an S3 bucket
//! ([`crate::s3`]). What is moved, and every check of what arrives, is here, the same for every
//! backend.
//!
//! # Layout on the server
//!
//! ```text
//! URL/cas-v1/<blake3 hex>    a blob exactly as the local store keeps it under blobs-v1/ (the
//!                            zstd encoding of the bytes whose BLAKE3 is the name): nothing is
//!                            recompressed on the way up or down
//! URL/ac-v1/<step key hex>   a step record: JSON {"format":1,"key","kind","name","output"}
//! ```
//!
//! A record is uploaded only after every blob it references, so a reader that finds a record
//! finds its blobs. A record cannot be checked against a digest (its name is the step's key,
//! not a hash of its content), but everything it points at is: every blob fetched is
//! decompressed and hashed before it enters the local store ([`Store::adopt_compressed`]), and
//! the record is recorded locally only once all of them are in. A wrong or truncated object is
//! refused ([`RemoteError::Bad`]) and the caller builds the step itself (or asks the next
//! tier, [`crate::tiers`]).
//!
//! Downloads and uploads of one step's blobs run in parallel on a small pool of their own. The
//! first time the backend says the place cannot be used ([`Trouble::Down`]) the remote is
//! marked down: every later call fails at once, and [`Remote::down_notice`] hands the reason
//! out exactly once, so the user is told once.
//!
//! The URL kept and shown ([`Remote::url`]) has no user information, and no error carries a
//! credential.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::backend::{Backend, Trouble};
use crate::{BlobDigest, StepKey, StepOutput, StepRecord, Store, StoreError};

/// Folder of blobs on the server.
pub const CAS_DIR: &str = "cas-v1";
/// Folder of step records on the server.
pub const AC_DIR: &str = "ac-v1";
/// Version of the record encoding, inside each record.
pub const RECORD_FORMAT: u32 = 1;
/// Requests at once for one step's blobs.
const PARALLEL: usize = 8;
/// A step record larger than this is not a record.
const MAX_RECORD: u64 = 16 << 20;

/// The path of a blob on the server, relative to its URL.
pub fn blob_object(d: &BlobDigest) -> String {
    format!("{CAS_DIR}/{}", d.to_hex())
}

/// The path of a step record on the server, relative to its URL.
pub fn record_object(k: &StepKey) -> String {
    format!("{AC_DIR}/{}", k.to_hex())
}

/// A step record as it travels: on a server under `ac-v1/`, and in bundles.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedRecord {
    pub format: u32,
    pub key: StepKey,
    pub kind: String,
    pub name: String,
    pub output: StepOutput,
}

impl SharedRecord {
    pub fn new(key: StepKey, kind: &str, name: &str, output: &StepOutput) -> SharedRecord {
        SharedRecord {
            format: RECORD_FORMAT,
            key,
            kind: kind.into(),
            name: name.into(),
            output: output.clone(),
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a record always encodes")
    }

    /// Parses a record that claims to be the one of `key`; `Err` says what is wrong with it.
    pub fn parse(bytes: &[u8], key: &StepKey) -> Result<SharedRecord, String> {
        let rec: SharedRecord =
            serde_json::from_slice(bytes).map_err(|e| format!("not a step record: {e}"))?;
        if rec.format != RECORD_FORMAT {
            return Err(format!(
                "record format {} (this imgspec reads {RECORD_FORMAT})",
                rec.format
            ));
        }
        if rec.key != *key {
            return Err(format!("it is the record of another step ({})", rec.key));
        }
        Ok(rec)
    }
}
pub use crate::http::Credentials;

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("`{url}` is not a remote cache URL: {reason}")]
    BadUrl { url: String, reason: String },
    /// The server cannot be reached or answers with a status it should not: the remote is down
    /// for the rest of this process.
    #[error("the remote cache `{url}` is unavailable: {reason}")]
    Unavailable { url: String, reason: String },
    /// An object the server served is wrong: refused, nothing of it was kept.
    #[error("remote object `{object}` refused: {reason}")]
    Bad { object: String, reason: String },
    /// A record names a blob the server does not have.
    #[error("remote object `{object}` is missing (a record there references it)")]
    Missing { object: String },
    #[error("local cache error")]
    Store(#[from] StoreError),
}

impl RemoteError {
    /// The server is out of reach, as opposed to one of its objects being wrong.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, RemoteError::Unavailable { .. })
    }
}

type Result<T, E = RemoteError> = std::result::Result<T, E>;

/// A remote cache: one [`Backend`] that moves the objects, and everything that is the same for
/// every backend (which objects, the checks, down-once, the transfer pool, the counters).
pub struct Remote {
    /// What to show: the URL without user information or a trailing `/`.
    shown: String,
    backend: Box<dyn Backend>,
    pool: rayon::ThreadPool,
    down: Mutex<Option<String>>,
    noticed: AtomicBool,
    bytes_down: AtomicU64,
    bytes_up: AtomicU64,
}

/// `url` without user information (`http://user:secret@host/x` → `http://host/x`): the only
/// form of a remote URL that may be shown.
pub fn redact_url(url: &str) -> String {
    match crate::http::split_userinfo(url) {
        Some((scheme, _, rest)) => format!("{scheme}://{rest}"),
        None => url.to_string(),
    }
}

/// What `push_step` did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PushStats {
    /// The record was already on the server: nothing was sent.
    pub already_there: bool,
    pub blobs_sent: usize,
    pub bytes_sent: u64,
}

impl Remote {
    /// A remote at `url` (`http://` or `https://`), over plain HTTP. User information in the URL
    /// is taken out and used as basic credentials unless `creds` gives others.
    pub fn new(url: &str, creds: Credentials) -> Result<Remote> {
        let http = crate::http::Http::new(url, creds).map_err(|reason| RemoteError::BadUrl {
            url: redact_url(url),
            reason,
        })?;
        Remote::with_backend(http.base.clone(), Box::new(http))
    }

    /// A remote in an S3 bucket (AWS or a self-hosted S3-compatible store): the same objects
    /// and checks as over HTTP, moved by [`crate::s3`].
    pub fn new_s3(cfg: &crate::s3::S3Config) -> Result<Remote> {
        let s3 = crate::s3::S3::new(cfg).map_err(|reason| RemoteError::BadUrl {
            url: cfg.shown(),
            reason,
        })?;
        Remote::with_backend(cfg.shown(), Box::new(s3))
    }

    /// A remote whose objects `backend` moves, shown as `shown` (which must hold no secret).
    pub fn with_backend(shown: String, backend: Box<dyn Backend>) -> Result<Remote> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(PARALLEL)
            .thread_name(|i| format!("imgspec-remote-{i}"))
            .build()
            .map_err(|e| RemoteError::Unavailable {
                url: shown.clone(),
                reason: format!("cannot start the transfer threads: {e}"),
            })?;
        Ok(Remote {
            shown,
            backend,
            pool,
            down: Mutex::new(None),
            noticed: AtomicBool::new(false),
            bytes_down: AtomicU64::new(0),
            bytes_up: AtomicU64::new(0),
        })
    }

    fn trouble(&self, t: Trouble, object: &str) -> RemoteError {
        match t {
            Trouble::Down(reason) => self.unavailable(reason),
            Trouble::TooLarge => RemoteError::Bad {
                object: object.into(),
                reason: format!("larger than {MAX_RECORD} bytes"),
            },
            Trouble::Local(e) => RemoteError::Store(StoreError::io("<download>")(e)),
        }
    }

    /// The URL, without credentials: the only form to show.
    pub fn url(&self) -> &str {
        &self.shown
    }

    /// Compressed bytes downloaded and uploaded so far.
    pub fn traffic(&self) -> (u64, u64) {
        (
            self.bytes_down.load(Ordering::Relaxed),
            self.bytes_up.load(Ordering::Relaxed),
        )
    }

    /// Why the remote is down, the first time this is asked after it went down; `None` after
    /// that, and while it is up. Tell the user when this says something.
    pub fn down_notice(&self) -> Option<String> {
        let down = self.down.lock().unwrap_or_else(|e| e.into_inner());
        let reason = down.clone()?;
        (!self.noticed.swap(true, Ordering::SeqCst)).then_some(reason)
    }

    pub fn is_down(&self) -> bool {
        self.down
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    fn unavailable(&self, reason: String) -> RemoteError {
        let mut down = self.down.lock().unwrap_or_else(|e| e.into_inner());
        let reason = down.get_or_insert(reason).clone();
        RemoteError::Unavailable {
            url: self.shown.clone(),
            reason,
        }
    }

    fn check_up(&self) -> Result<()> {
        match &*self.down.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(reason) => Err(RemoteError::Unavailable {
                url: self.shown.clone(),
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Whether the server answers us: a `HEAD` of a record no step has (all zeros) must say
    /// 404, not 401/403/5xx or nothing.
    pub fn probe(&self) -> Result<()> {
        self.exists(&record_object(&StepKey([0; 32]))).map(drop)
    }

    /// Whether the server has `object`.
    pub fn exists(&self, object: &str) -> Result<bool> {
        self.check_up()?;
        self.backend
            .exists(object)
            .map_err(|t| self.trouble(t, object))
    }

    /// Whether the server has the record of step `key` (its blobs are not looked at).
    pub fn has_step(&self, key: &StepKey) -> Result<bool> {
        self.exists(&record_object(key))
    }

    /// The bytes of a small object, `None` if the server does not have it.
    pub fn get_small(&self, object: &str) -> Result<Option<Vec<u8>>> {
        self.check_up()?;
        self.backend
            .get_small(object, MAX_RECORD, &self.bytes_down)
            .map_err(|t| self.trouble(t, object))
    }

    /// Downloads `object` into `file`, resuming after a broken transfer where the backend can;
    /// `false` if the server does not have it. `file` holds the whole object on success.
    pub fn get_to_file(&self, object: &str, file: &mut File) -> Result<bool> {
        self.check_up()?;
        self.backend
            .get_to_file(object, file, &self.bytes_down)
            .map_err(|t| self.trouble(t, object))
    }

    /// Uploads `len` bytes from `open()` as `object`.
    fn put(
        &self,
        object: &str,
        mut open: impl FnMut() -> io::Result<Box<dyn Read + Send>>,
        len: u64,
    ) -> Result<()> {
        self.check_up()?;
        self.backend
            .put(object, &mut open, len, &self.bytes_up)
            .map_err(|t| self.trouble(t, object))
    }

    /// Fetches blob `d` into the store unless it is there; `true` if it was downloaded.
    pub fn fetch_blob(&self, store: &Store, d: &BlobDigest) -> Result<bool> {
        if store.has_blob(d) {
            return Ok(false);
        }
        let object = blob_object(d);
        let mut tmp = store.incoming_file()?;
        if !self.get_to_file(&object, tmp.as_file_mut())? {
            return Err(RemoteError::Missing { object });
        }
        match store.adopt_compressed(d, tmp) {
            Ok(_) => Ok(true),
            Err(e) if e.is_corrupt() => Err(RemoteError::Bad {
                object,
                reason: crate::error_chain(&e).to_string(),
            }),
            Err(e) => Err(e.into()),
        }
    }

    fn fetch_blobs(&self, store: &Store, blobs: &BTreeSet<BlobDigest>) -> Result<()> {
        let blobs: Vec<&BlobDigest> = blobs.iter().collect();
        self.pool.install(|| {
            blobs
                .par_iter()
                .try_for_each(|d| self.fetch_blob(store, d).map(drop))
        })
    }

    /// Fetches the record of step `key` and every blob it references into the store and records
    /// it there; `None` if the server has no record of that step. Nothing is recorded unless
    /// every blob arrived whole and matched its digest.
    pub fn fetch_step(&self, store: &Store, key: &StepKey) -> Result<Option<StepRecord>> {
        self.check_up()?;
        let object = record_object(key);
        let Some(bytes) = self.get_small(&object)? else {
            return Ok(None);
        };
        let rec = SharedRecord::parse(&bytes, key).map_err(|reason| RemoteError::Bad {
            object: object.clone(),
            reason,
        })?;
        // The manifest first: it names the tree's other blobs.
        if let Some(tree) = rec.output.tree {
            self.fetch_blob(store, &tree.into())?;
        }
        let blobs = store.output_blobs(&rec.output).map_err(|e| match e {
            e if e.is_corrupt() => RemoteError::Bad {
                object: object.clone(),
                reason: crate::error_chain(&e).to_string(),
            },
            e => e.into(),
        })?;
        self.fetch_blobs(store, &blobs)?;
        store.record(key, &rec.kind, &rec.name, &rec.output)?;
        Ok(store.lookup(key)?)
    }

    /// Uploads the result of step `key` (its blobs, then its record) unless the server has its
    /// record already. Blobs the server has are not sent again.
    pub fn push_step(
        &self,
        store: &Store,
        key: &StepKey,
        kind: &str,
        name: &str,
        output: &StepOutput,
    ) -> Result<PushStats> {
        let object = record_object(key);
        if self.exists(&object)? {
            return Ok(PushStats {
                already_there: true,
                ..PushStats::default()
            });
        }
        let blobs: Vec<BlobDigest> = store.output_blobs(output)?.into_iter().collect();
        let sent: Vec<Option<u64>> = self.pool.install(|| {
            blobs
                .par_iter()
                .map(|d| self.push_blob(store, d))
                .collect::<Result<Vec<_>>>()
        })?;
        let json = SharedRecord::new(*key, kind, name, output).to_json();
        let len = json.len() as u64;
        self.put(
            &object,
            || Ok(Box::new(io::Cursor::new(json.clone())) as Box<dyn Read + Send>),
            len,
        )?;
        Ok(PushStats {
            already_there: false,
            blobs_sent: sent.iter().flatten().count(),
            bytes_sent: sent.iter().flatten().sum(),
        })
    }

    /// Uploads blob `d` as the store keeps it unless the server has it; the bytes sent.
    fn push_blob(&self, store: &Store, d: &BlobDigest) -> Result<Option<u64>> {
        let object = blob_object(d);
        if self.exists(&object)? {
            return Ok(None);
        }
        store.wait_pending(d)?;
        let path = store.blob_path(d);
        let len = std::fs::metadata(&path)
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => StoreError::MissingBlob(*d),
                _ => StoreError::Io {
                    path: path.clone(),
                    source: e,
                },
            })?
            .len();
        self.put(
            &object,
            || Ok(Box::new(File::open(&path)?) as Box<dyn Read + Send>),
            len,
        )?;
        Ok(Some(len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_are_named_by_digest_under_versioned_folders() {
        let d = BlobDigest::from_hash(blake3::hash(b"x"));
        assert_eq!(blob_object(&d), format!("cas-v1/{}", d.to_hex()));
        let k = StepKey::from_hash(blake3::hash(b"k"));
        assert_eq!(record_object(&k), format!("ac-v1/{}", k.to_hex()));
    }

    #[test]
    fn credentials_are_never_shown() {
        assert_eq!(
            redact_url("http://ci:s3cret@cache.example:8080/imgspec/"),
            "http://cache.example:8080/imgspec/"
        );
        assert_eq!(redact_url("http://h/a@b"), "http://h/a@b");
        let r = Remote::new("https://ci:p%40ss@h:1/x/", Credentials::None).unwrap();
        assert_eq!(r.url(), "https://h:1/x");
        let e = Remote::new("ftp://u:secret@h", Credentials::None)
            .err()
            .unwrap();
        assert!(!e.to_string().contains("secret"), "{e}");
    }

    #[test]
    fn a_record_is_accepted_only_for_its_own_key() {
        let k = StepKey::from_hash(blake3::hash(b"k"));
        let rec = SharedRecord::new(k, "files", "files etc", &StepOutput::default());
        assert_eq!(SharedRecord::parse(&rec.to_json(), &k).unwrap(), rec);
        let other = StepKey::from_hash(blake3::hash(b"other"));
        assert!(SharedRecord::parse(&rec.to_json(), &other)
            .unwrap_err()
            .contains("another step"));
        assert!(SharedRecord::parse(b"{\"format\":1", &k).is_err());
        let mut newer = rec.clone();
        newer.format = 2;
        assert!(SharedRecord::parse(&newer.to_json(), &k).is_err());
    }

    /// Reads one request's head; returns it.
    fn read_head(s: &mut std::net::TcpStream) -> String {
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if s.read(&mut b).unwrap() == 0 {
                break;
            }
            head.push(b[0]);
        }
        String::from_utf8_lossy(&head).into_owned()
    }

    #[test]
    fn a_broken_download_resumes_with_range_into_the_same_file() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let a = Store::open(&dir.path().join("a")).unwrap();
        // Incompressible content, so the compressed blob is large enough to cut.
        let data: Vec<u8> = (0..200_000u32)
            .flat_map(|i| blake3::hash(&i.to_le_bytes()).as_bytes()[..4].to_vec())
            .collect();
        let r = a.put_bytes(&data).unwrap();
        let blob = std::fs::read(a.blob_path(&r.digest)).unwrap();
        let n = blob.len();
        let half = n / 2;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let mut heads = Vec::new();
            // First request: promise everything, send half, hang up.
            let (mut s, _) = listener.accept().unwrap();
            heads.push(read_head(&mut s));
            write!(s, "HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n").unwrap();
            s.write_all(&blob[..half]).unwrap();
            drop(s);
            // Second: the rest, as asked.
            let (mut s, _) = listener.accept().unwrap();
            let head = read_head(&mut s);
            heads.push(head.clone());
            let from: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("range: bytes=")
                        .map(String::from)
                })
                .and_then(|v| v.trim_end_matches('-').parse().ok())
                .unwrap_or(0);
            write!(
                s,
                "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {from}-{}/{n}\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n",
                n - 1,
                n - from
            )
            .unwrap();
            s.write_all(&blob[from..]).unwrap();
            heads
        });
        let b = Store::open(&dir.path().join("b")).unwrap();
        let remote = Remote::new(&format!("http://127.0.0.1:{port}"), Credentials::None).unwrap();
        assert!(remote.fetch_blob(&b, &r.digest).unwrap());
        assert_eq!(b.read_blob(&r.digest).unwrap(), data);
        let heads = server.join().unwrap();
        assert!(
            !heads[0].to_ascii_lowercase().contains("range:"),
            "{}",
            heads[0]
        );
        assert!(
            heads[1]
                .to_ascii_lowercase()
                .contains(&format!("range: bytes={half}-")),
            "{}",
            heads[1]
        );
        // Nothing was downloaded twice.
        assert_eq!(remote.traffic().0, n as u64);
    }

    #[test]
    fn an_unreachable_remote_is_down_and_says_so_once() {
        // A port nothing listens on: bind, learn the port, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let r = Remote::new(&format!("http://127.0.0.1:{port}/c"), Credentials::None).unwrap();
        let k = StepKey::from_hash(blake3::hash(b"k"));
        assert!(r.fetch_step(&store, &k).unwrap_err().is_unavailable());
        assert!(r.is_down());
        assert!(r.down_notice().is_some());
        assert!(r.fetch_step(&store, &k).unwrap_err().is_unavailable());
        assert_eq!(r.down_notice(), None);
    }
}
