//! The remote cache: blobs and step records shared over plain HTTP, GET/HEAD/PUT of
//! content-addressed objects, as served by nginx with WebDAV `PUT` (or any server that stores
//! what is PUT and serves it back), or in an S3 bucket ([`crate::s3`] moves the bytes; the
//! checks here are the same for both).
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
//! refused ([`RemoteError::Bad`]) and the caller builds the step itself.
//!
//! Downloads and uploads of one step's blobs run in parallel on a small pool of their own. A
//! download that breaks off is retried with `Range` from where it stopped, into the same temp
//! file. The first time the server cannot be reached (or answers with an unexpected status)
//! the remote is marked down: every later call fails at once, and [`Remote::down_notice`]
//! hands the reason out exactly once, so the user is told once.
//!
//! Credentials (basic or bearer) go into an `Authorization` header only. The URL kept and
//! shown ([`Remote::url`]) has no user information, and no error carries a header.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::{BlobDigest, StepKey, StepOutput, StepRecord, Store, StoreError};

/// Folder of blobs on the server.
pub const CAS_DIR: &str = "cas-v1";
/// Folder of step records on the server.
pub const AC_DIR: &str = "ac-v1";
/// Version of the record encoding, inside each record.
pub const RECORD_FORMAT: u32 = 1;
/// Requests at once for one step's blobs.
const PARALLEL: usize = 8;
/// Attempts of one request before the server counts as unreachable.
const ATTEMPTS: u32 = 3;
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

/// Who we are to the server.
#[derive(Clone, Default)]
pub enum Credentials {
    #[default]
    None,
    Basic {
        user: String,
        password: String,
    },
    Bearer(String),
}

// Never print a secret, not even in a debug dump.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Credentials::None => "None",
            Credentials::Basic { .. } => "Basic(<redacted>)",
            Credentials::Bearer(_) => "Bearer(<redacted>)",
        })
    }
}

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

/// A remote cache at one URL.
pub struct Remote {
    /// Scheme, host, port and path, without user information or a trailing `/`.
    base: String,
    /// The `Authorization` header value, if any. Never shown.
    auth: Option<String>,
    agent: ureq::Agent,
    pool: rayon::ThreadPool,
    down: Mutex<Option<String>>,
    noticed: AtomicBool,
    bytes_down: AtomicU64,
    bytes_up: AtomicU64,
    /// The S3 transport, for an `s3://` remote; plain HTTP otherwise.
    s3: Option<crate::s3::S3>,
}

/// `url` without user information (`http://user:secret@host/x` → `http://host/x`): the only
/// form of a remote URL that may be shown.
pub fn redact_url(url: &str) -> String {
    match split_userinfo(url) {
        Some((scheme, _, rest)) => format!("{scheme}://{rest}"),
        None => url.to_string(),
    }
}

/// `scheme://user:pass@rest` → (scheme, Some("user:pass"), rest); no `://` → None.
fn split_userinfo(url: &str) -> Option<(&str, Option<&str>, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => Some((scheme, Some(&rest[..at]), &rest[at + 1..])),
        None => Some((scheme, None, rest)),
    }
}

/// `%XX` escapes of user information in a URL.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(hex, 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= c.len() {
                out.push(T[(n >> shift & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A transport error that says the server cannot be reached at all.
fn unreachable(e: &ureq::Error) -> bool {
    match e {
        ureq::Error::HostNotFound | ureq::Error::ConnectionFailed | ureq::Error::Timeout(_) => true,
        ureq::Error::Io(io) => matches!(
            io.kind(),
            io::ErrorKind::ConnectionRefused
                | io::ErrorKind::HostUnreachable
                | io::ErrorKind::NetworkUnreachable
                | io::ErrorKind::TimedOut
        ),
        _ => false,
    }
}

/// An error and its sources on one line.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(&format!(": {c}"));
        cur = c.source();
    }
    s
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
    /// A remote at `url` (`http://` or `https://`). User information in the URL is taken out
    /// and used as basic credentials unless `creds` gives others.
    pub fn new(url: &str, creds: Credentials) -> Result<Remote> {
        let shown = redact_url(url);
        let bad = |reason: &str| RemoteError::BadUrl {
            url: shown.clone(),
            reason: reason.into(),
        };
        let (scheme, userinfo, rest) = split_userinfo(url).ok_or_else(|| bad("no `http://`"))?;
        if scheme != "http" && scheme != "https" {
            return Err(bad("only http:// and https:// are supported"));
        }
        if rest.is_empty() || rest.starts_with('/') {
            return Err(bad("no host"));
        }
        let creds = match (creds, userinfo) {
            (Credentials::None, Some(ui)) => {
                let (u, p) = ui.split_once(':').unwrap_or((ui, ""));
                Credentials::Basic {
                    user: percent_decode(u),
                    password: percent_decode(p),
                }
            }
            (c, _) => c,
        };
        let auth = match creds {
            Credentials::None => None,
            Credentials::Basic { user, password } => Some(format!(
                "Basic {}",
                base64(format!("{user}:{password}").as_bytes())
            )),
            Credentials::Bearer(t) => Some(format!("Bearer {t}")),
        };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(5)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .timeout_per_read(Some(Duration::from_secs(60)))
            .timeout_per_write(Some(Duration::from_secs(60)))
            .max_idle_connections_per_host(PARALLEL)
            .build()
            .into();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(PARALLEL)
            .thread_name(|i| format!("imgspec-remote-{i}"))
            .build()
            .map_err(|e| RemoteError::Unavailable {
                url: shown.clone(),
                reason: format!("cannot start the transfer threads: {e}"),
            })?;
        Ok(Remote {
            base: format!("{scheme}://{}", rest.trim_end_matches('/')),
            auth,
            agent,
            pool,
            down: Mutex::new(None),
            noticed: AtomicBool::new(false),
            bytes_down: AtomicU64::new(0),
            bytes_up: AtomicU64::new(0),
            s3: None,
        })
    }

    /// A remote in an S3 bucket (AWS or a self-hosted S3-compatible store): the same objects
    /// and checks as over HTTP, moved by [`crate::s3`].
    pub fn new_s3(cfg: &crate::s3::S3Config) -> Result<Remote> {
        let shown = cfg.shown();
        let s3 = crate::s3::S3::new(cfg).map_err(|reason| RemoteError::BadUrl {
            url: shown.clone(),
            reason,
        })?;
        let mut r = Remote::new("http://s3.invalid", Credentials::None)?;
        r.base = shown;
        r.s3 = Some(s3);
        Ok(r)
    }

    fn s3_trouble(&self, t: crate::s3::Trouble, object: &str) -> RemoteError {
        match t {
            crate::s3::Trouble::Down(reason) => self.unavailable(reason),
            crate::s3::Trouble::TooLarge => RemoteError::Bad {
                object: object.into(),
                reason: format!("larger than {MAX_RECORD} bytes"),
            },
            crate::s3::Trouble::Local(e) => RemoteError::Store(StoreError::io("<download>")(e)),
        }
    }

    /// The URL, without credentials: the only form to show.
    pub fn url(&self) -> &str {
        &self.base
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
            url: self.base.clone(),
            reason,
        }
    }

    fn check_up(&self) -> Result<()> {
        match &*self.down.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(reason) => Err(RemoteError::Unavailable {
                url: self.base.clone(),
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    fn object_url(&self, object: &str) -> String {
        format!("{}/{object}", self.base)
    }

    fn with_auth<B>(&self, rb: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.auth {
            Some(a) => rb.header("Authorization", a),
            None => rb,
        }
    }

    fn status_error(&self, object: &str, status: u16, what: &str) -> RemoteError {
        let hint = match status {
            401 | 403 => {
                " (check IMGSPEC_REMOTE_USER/IMGSPEC_REMOTE_PASSWORD or IMGSPEC_REMOTE_TOKEN)"
            }
            405 => " (does the server accept PUT? nginx needs `dav_methods PUT`)",
            _ => "",
        };
        self.unavailable(format!("{what} `{object}` answered HTTP {status}{hint}"))
    }

    /// Runs `f` up to [`ATTEMPTS`] times while it fails with a transport error.
    fn retry<T>(&self, mut f: impl FnMut() -> Result<T, ureq::Error>) -> Result<T> {
        let mut attempt = 1;
        loop {
            self.check_up()?;
            match f() {
                Ok(v) => return Ok(v),
                // Nobody there (no such host, nothing listening, no answer to connect): the
                // next attempt would wait as long again. Anything after connecting is retried.
                Err(e) if attempt < ATTEMPTS && !unreachable(&e) => {
                    std::thread::sleep(Duration::from_millis(100 << attempt));
                    attempt += 1;
                }
                Err(e) => return Err(self.unavailable(e.to_string())),
            }
        }
    }

    /// Whether the server answers us: a `HEAD` of a record no step has (all zeros) must say
    /// 404, not 401/403/5xx or nothing.
    pub fn probe(&self) -> Result<()> {
        self.exists(&record_object(&StepKey([0; 32]))).map(drop)
    }

    /// Whether the server has `object`.
    pub fn exists(&self, object: &str) -> Result<bool> {
        if let Some(s3) = &self.s3 {
            self.check_up()?;
            return s3.exists(object).map_err(|t| self.s3_trouble(t, object));
        }
        let url = self.object_url(object);
        let resp = self.retry(|| self.with_auth(self.agent.head(&url)).call())?;
        match resp.status().as_u16() {
            200..=299 => Ok(true),
            404 | 410 => Ok(false),
            s => Err(self.status_error(object, s, "HEAD")),
        }
    }

    /// The bytes of a small object, `None` if the server does not have it.
    pub fn get_small(&self, object: &str) -> Result<Option<Vec<u8>>> {
        if let Some(s3) = &self.s3 {
            self.check_up()?;
            return s3
                .get_small(object, MAX_RECORD, &self.bytes_down)
                .map_err(|t| self.s3_trouble(t, object));
        }
        let url = self.object_url(object);
        let mut attempt = 1;
        loop {
            let mut resp = self.retry(|| self.with_auth(self.agent.get(&url)).call())?;
            match resp.status().as_u16() {
                200 => {}
                404 | 410 => return Ok(None),
                s => return Err(self.status_error(object, s, "GET")),
            }
            match resp
                .body_mut()
                .with_config()
                .limit(MAX_RECORD)
                .read_to_vec()
            {
                Ok(v) => {
                    self.bytes_down.fetch_add(v.len() as u64, Ordering::Relaxed);
                    return Ok(Some(v));
                }
                Err(ureq::Error::BodyExceedsLimit(_)) => {
                    return Err(RemoteError::Bad {
                        object: object.into(),
                        reason: format!("larger than {MAX_RECORD} bytes"),
                    })
                }
                Err(_) if attempt < ATTEMPTS => attempt += 1,
                Err(e) => return Err(self.unavailable(format!("GET `{object}`: {e}"))),
            }
        }
    }

    /// Downloads `object` into `file`, resuming with `Range` after a broken transfer; `false`
    /// if the server does not have it. `file` holds the whole object on success.
    pub fn get_to_file(&self, object: &str, file: &mut File) -> Result<bool> {
        if let Some(s3) = &self.s3 {
            self.check_up()?;
            return s3
                .get_to_file(object, file, &self.bytes_down)
                .map_err(|t| self.s3_trouble(t, object));
        }
        let url = self.object_url(object);
        let local = |e: io::Error| RemoteError::Store(StoreError::io("<download>")(e));
        let mut broken = 0;
        loop {
            let have = file.seek(SeekFrom::End(0)).map_err(local)?;
            let mut resp = self.retry(|| {
                let rb = self.with_auth(self.agent.get(&url));
                if have > 0 {
                    rb.header("Range", format!("bytes={have}-")).call()
                } else {
                    rb.call()
                }
            })?;
            match resp.status().as_u16() {
                200 => {
                    // The whole object (a server that ignores Range): start over.
                    file.set_len(0).map_err(local)?;
                    file.seek(SeekFrom::Start(0)).map_err(local)?;
                }
                206 => {
                    let from = resp
                        .headers()
                        .get("content-range")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.strip_prefix("bytes "))
                        .and_then(|v| v.split('-').next())
                        .and_then(|v| v.parse::<u64>().ok());
                    if from != Some(have) {
                        file.set_len(0).map_err(local)?;
                        broken += 1;
                        if broken >= ATTEMPTS {
                            return Err(self.unavailable(format!(
                                "GET `{object}`: the server answers ranges it was not asked for"
                            )));
                        }
                        continue;
                    }
                }
                // Asked for bytes past the end: what we have is all there is.
                416 if have > 0 => return Ok(true),
                404 | 410 => return Ok(false),
                s => return Err(self.status_error(object, s, "GET")),
            }
            let start = file.stream_position().map_err(local)?;
            let mut body = resp.body_mut().as_reader();
            let copied = io::copy(&mut body, file);
            let end = file.seek(SeekFrom::End(0)).map_err(local)?;
            self.bytes_down.fetch_add(end - start, Ordering::Relaxed);
            match copied {
                Ok(_) => return Ok(true),
                Err(e) => {
                    broken += 1;
                    if broken >= ATTEMPTS {
                        return Err(self.unavailable(format!("GET `{object}` broke off: {e}")));
                    }
                    // Keep what arrived; the next request asks for the rest.
                    std::thread::sleep(Duration::from_millis(100 << broken));
                }
            }
        }
    }

    /// Uploads `len` bytes from `open()` as `object`.
    fn put(
        &self,
        object: &str,
        mut open: impl FnMut() -> io::Result<Box<dyn Read + Send>>,
        len: u64,
    ) -> Result<()> {
        if let Some(s3) = &self.s3 {
            self.check_up()?;
            let reader = open().map_err(|e| RemoteError::Store(StoreError::io(object)(e)))?;
            return s3
                .put(object, reader, len, &self.bytes_up)
                .map_err(|t| self.s3_trouble(t, object));
        }
        let url = self.object_url(object);
        let resp = self.retry(|| {
            let mut r = open().map_err(ureq::Error::Io)?;
            let body = ureq::SendBody::from_reader(&mut r);
            self.with_auth(self.agent.put(&url))
                .header("Content-Length", len.to_string())
                .send(body)
        })?;
        match resp.status().as_u16() {
            200..=299 => {
                self.bytes_up.fetch_add(len, Ordering::Relaxed);
                Ok(())
            }
            s => Err(self.status_error(object, s, "PUT")),
        }
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
                reason: error_chain(&e),
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
                reason: error_chain(&e),
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
    fn credentials_leave_the_url_and_are_never_shown() {
        assert_eq!(
            redact_url("http://ci:s3cret@cache.example:8080/imgspec/"),
            "http://cache.example:8080/imgspec/"
        );
        assert_eq!(redact_url("http://h/a@b"), "http://h/a@b");
        let r = Remote::new("https://ci:p%40ss@h:1/x/", Credentials::None).unwrap();
        assert_eq!(r.url(), "https://h:1/x");
        assert_eq!(r.auth.as_deref(), Some("Basic Y2k6cEBzcw=="));
        let r = Remote::new("http://u:p@h", Credentials::Bearer("tok".into())).unwrap();
        assert_eq!(r.url(), "http://h");
        assert_eq!(r.auth.as_deref(), Some("Bearer tok"));
        let dbg = format!("{:?}", Credentials::Bearer("tok".into()));
        assert!(!dbg.contains("tok"), "{dbg}");
        let e = Remote::new("ftp://u:secret@h", Credentials::None)
            .err()
            .unwrap();
        assert!(!e.to_string().contains("secret"), "{e}");
    }

    #[test]
    fn base64_matches_the_rfc_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
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
