//! Blobs: content by BLAKE3 digest, zstd-compressed on disk, written atomically, verified on
//! every read.

use std::fs::{self, File};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::{BlobDigest, FileRef, Result, Store, StoreError};

/// zstd level of blobs: fast, and zeros (most of a disk image) cost almost nothing.
const ZSTD_LEVEL: i32 = 3;
/// zstd level of large blobs (filesystem and disk images): level 1 compresses a 2 GiB disk
/// image in 60% of level 3's CPU time for 10% more bytes (measured with zstd 1.5 on
/// debian-efi.raw: 2.2 s vs 3.6 s, 252 MB vs 227 MB). The level is not part of the encoding's
/// contract: any zstd stream decodes, and the digest is of the uncompressed bytes.
const ZSTD_LEVEL_LARGE: i32 = 1;
/// Streaming chunk: a multiple of [`HOLE_BLOCK`], large enough for rayon-parallel hashing.
const CHUNK: usize = 1 << 20;
/// Contents up to this size are read into memory in one go.
const SMALL: u64 = 256 << 10;
/// Contents from this size on are compressed by several zstd worker threads.
const MULTITHREAD_FROM: u64 = 32 << 20;
/// `blob_to_file` leaves aligned all-zero blocks of this size as holes.
const HOLE_BLOCK: usize = 4096;
/// Blobs stored in at least this many (compressed) bytes are decompressed on a thread of their
/// own while the caller's thread hashes and writes what it decompressed: two cores, not one.
const PIPELINE_FROM: u64 = 4 << 20;
/// The folder of a session's plain copies of blobs it stored from files.
const FRESH_DIR: &str = "fresh";
/// Decompressed chunks in flight between that thread and the writer.
const PIPELINE_DEPTH: usize = 4;

/// Sees every byte a blob is stored from (for a second digest of the same read).
type Tap<'a> = &'a mut dyn FnMut(&[u8]);

/// The blobs whose digest is known and whose file a thread of this session is still writing
/// ([`Store::put_file_keep_later`]): `None` while it works, then how it went.
#[derive(Default)]
pub(crate) struct PendingBlobs {
    state: std::sync::Mutex<
        std::collections::HashMap<BlobDigest, Option<std::result::Result<(), String>>>,
    >,
    changed: std::sync::Condvar,
}

impl PendingBlobs {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<
        '_,
        std::collections::HashMap<BlobDigest, Option<std::result::Result<(), String>>>,
    > {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks `d` pending (its blob is not in the store); false if a thread is writing it
    /// already. One written earlier in this session and removed since (a heal, a `gc`), or
    /// whose write failed, is written again.
    fn start(&self, d: BlobDigest) -> bool {
        let mut state = self.lock();
        if matches!(state.get(&d), Some(None)) {
            return false;
        }
        state.insert(d, None);
        true
    }

    fn finish(&self, d: BlobDigest, outcome: std::result::Result<(), String>) {
        self.lock().insert(d, Some(outcome));
        self.changed.notify_all();
    }

    fn busy(&self, d: &BlobDigest) -> bool {
        matches!(self.lock().get(d), Some(None))
    }

    /// Waits until `d` (whose blob file is `path`) is not pending; the failure of its write.
    fn wait(&self, d: &BlobDigest, path: &Path) -> Result<()> {
        let mut state = self.lock();
        loop {
            match state.get(d) {
                Some(None) => {
                    state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
                }
                Some(Some(Err(why))) => {
                    return Err(StoreError::Io {
                        path: path.to_path_buf(),
                        source: io::Error::other(format!(
                            "storing this blob on a thread of its own failed: {why}"
                        )),
                    })
                }
                Some(Some(Ok(()))) | None => return Ok(()),
            }
        }
    }

    fn wait_all(&self) {
        let mut state = self.lock();
        while state.values().any(Option::is_none) {
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Hashes one chunk, spreading very large ones over rayon's threads. Streams hash 1 MiB chunks
/// on the calling thread: one AVX2/AVX-512 core hashes several GB/s, faster than zstd runs
/// beside it, and rayon's idle spinning would take CPU from the compression threads.
fn hash_update(h: &mut blake3::Hasher, data: &[u8]) {
    if data.len() >= 16 << 20 {
        h.update_rayon(data);
    } else {
        h.update(data);
    }
}

/// A file read to a fixed length, its holes (`SEEK_HOLE`) handed out as zeros without asking
/// the kernel: a disk image is mostly holes, and reading them costs the kernel a zeroed page
/// and a copy each.
struct SparseFile {
    file: File,
    /// Where in the file the bytes read start: positions below are relative to it.
    base: u64,
    pos: u64,
    len: u64,
    /// The current region `[pos, end)` and whether it is a hole.
    end: u64,
    hole: bool,
}

impl SparseFile {
    fn new(file: File, len: u64) -> SparseFile {
        SparseFile::range(file, 0, len)
    }

    /// The `len` bytes of `file` from `base` on.
    fn range(file: File, base: u64, len: u64) -> SparseFile {
        SparseFile {
            file,
            base,
            pos: 0,
            len,
            end: 0,
            hole: false,
        }
    }

    /// The region that starts at `pos`: a hole up to the next data, or data up to the next
    /// hole; all data when the filesystem cannot tell.
    fn region(&self) -> (u64, bool) {
        use std::os::fd::AsRawFd;
        let fd = self.file.as_raw_fd();
        let Some(at) = self
            .base
            .checked_add(self.pos)
            .and_then(|a| libc::off_t::try_from(a).ok())
        else {
            return (self.len, false);
        };
        // SAFETY: lseek on a descriptor we own; it only moves the file offset, which this
        // reader does not use (it reads with `read_at`).
        let data = unsafe { libc::lseek(fd, at, libc::SEEK_DATA) };
        if data < 0 {
            return if io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO) {
                (self.len, true) // nothing but a hole to the end
            } else {
                (self.len, false)
            };
        }
        let data = (data as u64).saturating_sub(self.base);
        if data > self.pos {
            return (data.min(self.len), true);
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, at, libc::SEEK_HOLE) };
        if hole < 0 {
            return (self.len, false);
        }
        (
            (hole as u64)
                .saturating_sub(self.base)
                .clamp(self.pos + 1, self.len),
            false,
        )
    }
}

impl Read for SparseFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.len || buf.is_empty() {
            return Ok(0);
        }
        if self.pos >= self.end {
            (self.end, self.hole) = self.region();
        }
        let n = buf
            .len()
            .min(usize::try_from(self.end - self.pos).unwrap_or(usize::MAX));
        let n = if self.hole {
            buf[..n].fill(0);
            n
        } else {
            self.file.read_at(&mut buf[..n], self.base + self.pos)?
        };
        if n == 0 {
            return Err(io::Error::other("file shrank while it was being stored"));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// The digest of the file at `path` as a blob of it would have, its holes hashed as zeros
/// without being read.
pub(crate) fn digest_of_file(path: &Path) -> io::Result<BlobDigest> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    Ok(hash_all(&mut SparseFile::new(file, len), &mut |_| {})?.0)
}

/// The name of a plain copy of blob `d` in a session's `fresh/`: its digest, and `@OFFSET` for
/// a range of a larger file (`None` for a whole file).
fn fresh_name(d: &BlobDigest, range_at: Option<u64>) -> String {
    match range_at {
        None => d.to_hex(),
        Some(offset) => format!("{}@{offset}", d.to_hex()),
    }
}

/// Where the blob `d` lives under the blob folder `blobs`: `ab/cdef…`.
fn blob_path_in(blobs: &Path, d: &BlobDigest) -> PathBuf {
    let hex = d.to_hex();
    blobs.join(&hex[..2]).join(&hex[2..])
}

/// The one place a blob is written: into a temp file of the session folder `session`, hashed
/// while it streams, synced, then renamed to its digest's name under `blobs`. `tap` sees every
/// byte read. A free function (not a method) so that a thread of its own can run it
/// ([`Store::put_file_keep_later`]).
fn write_blob_in(
    session: &Path,
    blobs: &Path,
    r: &mut dyn Read,
    size_hint: Option<u64>,
    what: &Path,
    mut tap: Option<Tap<'_>>,
) -> Result<FileRef> {
    let tmp = tempfile::Builder::new()
        .prefix("blob-")
        .tempfile_in(session)
        .map_err(StoreError::io(session))?;
    let tmp_path = tmp.path().to_path_buf();
    let mut buf = vec![0u8; CHUNK];
    // The first chunk tells a small input from a large one when the size is unknown.
    let mut n = read_full(r, &mut buf).map_err(StoreError::io(what))?;
    let large = match size_hint {
        Some(s) => s >= MULTITHREAD_FROM,
        None => n == CHUNK,
    };
    let level = if large { ZSTD_LEVEL_LARGE } else { ZSTD_LEVEL };
    // A large blob's file is handed to the disk as it grows, so the sync below waits for
    // the tail only.
    let sink = WritingBack {
        file: tmp.as_file(),
        written: 0,
        flushed: 0,
        on: large,
    };
    let mut enc = zstd::Encoder::new(sink, level).map_err(StoreError::io(&tmp_path))?;
    if large {
        enc.multithread(zstd_threads())
            .map_err(StoreError::io(&tmp_path))?;
    }
    if let Some(s) = size_hint {
        enc.set_pledged_src_size(Some(s))
            .map_err(StoreError::io(&tmp_path))?;
    }
    let mut h = blake3::Hasher::new();
    let mut size = 0u64;
    while n > 0 {
        hash_update(&mut h, &buf[..n]);
        if let Some(t) = tap.as_mut() {
            t(&buf[..n]);
        }
        enc.write_all(&buf[..n])
            .map_err(StoreError::io(&tmp_path))?;
        size += n as u64;
        n = read_full(r, &mut buf).map_err(StoreError::io(what))?;
    }
    if size_hint.is_some_and(|s| s != size) {
        // The file changed size while we read it; what we read is consistent, but zstd
        // was promised another length.
        return Err(StoreError::Io {
            path: what.to_path_buf(),
            source: io::Error::other("file changed size while it was being stored"),
        });
    }
    enc.finish().map_err(StoreError::io(&tmp_path))?;
    // Blobs are immutable: read-only, so a slip of a tool cannot edit one in place.
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(0o444))
        .map_err(StoreError::io(&tmp_path))?;
    tmp.as_file()
        .sync_all()
        .map_err(StoreError::io(&tmp_path))?;
    let digest = BlobDigest::from_hash(h.finalize());
    let target = blob_path_in(blobs, &digest);
    let shard = target.parent().expect("blob path has a shard dir");
    fs::create_dir_all(shard).map_err(StoreError::io(shard))?;
    // Rename is atomic; if the blob is already there it holds the same bytes, and replacing
    // it is as good as keeping it (and heals one that was damaged).
    tmp.persist(&target).map_err(|e| StoreError::Io {
        path: target.clone(),
        source: e.error,
    })?;
    Ok(FileRef { digest, size })
}

/// Reads `r` to its end: the BLAKE3 of what it read and how many bytes, each chunk handed to
/// `tap` too.
fn hash_all(r: &mut dyn Read, tap: &mut dyn FnMut(&[u8])) -> io::Result<(BlobDigest, u64)> {
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let n = read_full(r, &mut buf)?;
        if n == 0 {
            return Ok((BlobDigest::from_hash(h.finalize()), total));
        }
        hash_update(&mut h, &buf[..n]);
        tap(&buf[..n]);
        total += n as u64;
    }
}

/// Reads until `buf` is full or the input ends; returns how much was read.
pub(crate) fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn zstd_threads() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

impl Store {
    /// Where the blob with digest `d` lives: `blobs-v1/ab/cdef…`.
    pub fn blob_path(&self, d: &BlobDigest) -> PathBuf {
        blob_path_in(&self.blobs, d)
    }

    pub fn has_blob(&self, d: &BlobDigest) -> bool {
        self.blob_path(d).is_file()
    }

    /// Stores the file at `path` (following a symlink), streaming: files of several GiB are
    /// fine. A file whose content is already stored is only hashed.
    pub fn put_file(&self, path: &Path) -> Result<FileRef> {
        let file = File::open(path).map_err(StoreError::io(path))?;
        self.put_open_file(file, path)
    }

    /// Like `put_file`, but refuses to follow a symlink at `path` (a tree walk saw a regular
    /// file there; if it was swapped since, fail rather than store something else).
    pub(crate) fn put_file_nofollow(&self, path: &Path) -> Result<FileRef> {
        let file = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(StoreError::io(path))?;
        self.put_open_file(file, path)
    }

    /// Like `put_file`, and hands every byte of the file to `tap` on the way (for a second
    /// digest, say the SHA-256 of an output), so the file is read once for both. A large file
    /// is hashed and compressed in that same single pass.
    pub fn put_file_tap(&self, path: &Path, tap: &mut dyn FnMut(&[u8])) -> Result<FileRef> {
        let mut file = File::open(path).map_err(StoreError::io(path))?;
        let size = file.metadata().map_err(StoreError::io(path))?.len();
        if size <= SMALL {
            let mut data = Vec::with_capacity(size as usize);
            file.read_to_end(&mut data).map_err(StoreError::io(path))?;
            tap(&data);
            return self.put_bytes(&data);
        }
        self.write_blob(
            &mut SparseFile::new(file, size),
            Some(size),
            path,
            Some(tap),
        )
    }

    /// Like [`Store::put_file_tap`], then keeps the file itself (moved, not copied) as this
    /// session's plain copy of the blob, read-only, for [`Store::fresh_file`]: the next step
    /// of the same build reads it instead of decompressing the blob, and the build's output
    /// directory gets it by a rename. `path` is gone afterwards (unless the move failed, which
    /// only costs that saving). Only for a file nothing writes to any more.
    pub fn put_file_keep(&self, path: &Path, tap: &mut dyn FnMut(&[u8])) -> Result<FileRef> {
        let r = self.put_file_tap(path, tap)?;
        if r.size >= SMALL {
            let fresh = self.session.join(FRESH_DIR);
            let kept = fs::create_dir_all(&fresh)
                .and_then(|()| fs::set_permissions(path, fs::Permissions::from_mode(0o444)))
                .and_then(|()| fs::rename(path, fresh.join(r.digest.to_hex())));
            drop(kept); // no plain copy: readers decompress the blob, as they would anyway
        }
        Ok(r)
    }

    /// Like [`Store::put_file_keep`] for a large file, but what this thread does is only read
    /// it once for its digest (and `tap`) and move it to this session's plain copies: its
    /// blob is compressed and written on a thread of its own, while the caller goes on (the
    /// next step of the build reads the plain copy). Until that thread is done, the blob is
    /// pending: [`Store::record`] and every read of it wait for it, and a failure to write it
    /// is theirs; [`Store::is_pending`] tells. A file under 32 MiB, or one that cannot be
    /// moved, is stored at once.
    pub fn put_file_keep_later(&self, path: &Path, tap: &mut dyn FnMut(&[u8])) -> Result<FileRef> {
        let size = fs::metadata(path).map_err(StoreError::io(path))?.len();
        if size < MULTITHREAD_FROM {
            return self.put_file_keep(path, tap);
        }
        self.put_range_keep_later(path, 0, size, tap)
    }

    /// Like [`Store::put_file_keep_later`] for the `size` bytes of the file `path` from
    /// `offset` on (a filesystem made in place in a disk file), whatever their size (always
    /// compressed on a thread of its own): the blob holds those bytes, and unless they are the
    /// whole file the plain copy is a range of it, which [`Store::take_fresh_range`] hands to
    /// the one step that may fill the rest of it.
    pub fn put_range_keep_later(
        &self,
        path: &Path,
        offset: u64,
        size: u64,
        tap: &mut dyn FnMut(&[u8]),
    ) -> Result<FileRef> {
        let file = File::open(path).map_err(StoreError::io(path))?;
        let file_len = file.metadata().map_err(StoreError::io(path))?.len();
        if offset.checked_add(size).is_none_or(|e| e > file_len) {
            return Err(StoreError::Io {
                path: path.to_path_buf(),
                source: io::Error::other(format!(
                    "{size} bytes from {offset} on do not fit in its {file_len}"
                )),
            });
        }
        let reader = file.try_clone().map_err(StoreError::io(path))?;
        let (digest, read) = hash_all(&mut SparseFile::range(reader, offset, size), tap)
            .map_err(StoreError::io(path))?;
        if read != size {
            return Err(StoreError::Io {
                path: path.to_path_buf(),
                source: io::Error::other("file changed size while it was being stored"),
            });
        }
        let r = FileRef { digest, size };
        let fresh_dir = self.session.join(FRESH_DIR);
        let whole = offset == 0 && size == file_len;
        let fresh = fresh_dir.join(fresh_name(&r.digest, (!whole).then_some(offset)));
        let kept = fs::create_dir_all(&fresh_dir)
            .and_then(|()| fs::set_permissions(path, fs::Permissions::from_mode(0o444)))
            .and_then(|()| fs::rename(path, &fresh));
        if kept.is_err() {
            // No plain copy to hand on: stored now, as `put_file` would.
            let w = write_blob_in(
                &self.session,
                &self.blobs,
                &mut SparseFile::range(file, offset, size),
                Some(size),
                path,
                None,
            )?;
            return Ok(w);
        }
        if self.has_blob(&r.digest) || !self.pending.start(r.digest) {
            return Ok(r); // already stored, or being stored by another step of this session
        }
        let (session, blobs, pending, digest) = (
            self.session.clone(),
            self.blobs.clone(),
            self.pending.clone(),
            r.digest,
        );
        // The open file is handed over, not its name: the plain copy may move on meanwhile
        // (into the output folder) without changing what is read.
        let store = move || {
            // Whatever happens here, the waiters hear of it: a panic is a failure too.
            let written = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                write_blob_in(
                    &session,
                    &blobs,
                    &mut SparseFile::range(file, offset, size),
                    Some(size),
                    &fresh,
                    None,
                )
            }));
            let outcome = match written {
                Ok(Ok(w)) if w.digest == digest => Ok(()),
                Ok(Ok(w)) => Err(format!(
                    "the file changed after it was hashed: its content now hashes to `{}`",
                    w.digest
                )),
                Ok(Err(e)) => Err(format!("{:#}", crate::error_chain(&e))),
                Err(_) => Err("the thread writing it panicked".into()),
            };
            pending.finish(digest, outcome);
        };
        if let Err(e) = std::thread::Builder::new()
            .name("imgspec-store".into())
            .spawn(store)
        {
            self.pending
                .finish(r.digest, Err(format!("no thread to store it on: {e}")));
        }
        Ok(r)
    }

    /// Whether a blob `output` references is still being written by a thread of this session
    /// (see [`Store::put_file_keep_later`]).
    pub fn is_pending(&self, output: &crate::StepOutput) -> bool {
        output.files.values().any(|f| self.pending.busy(&f.digest))
    }

    /// Waits until blob `d` is no longer pending; the error of the thread that failed to
    /// write it, if one did.
    pub(crate) fn wait_pending(&self, d: &BlobDigest) -> Result<()> {
        self.pending.wait(d, &self.blob_path(d))
    }

    /// Waits for every blob this session is still writing (before the session's folder goes).
    pub(crate) fn wait_all_pending(&self) {
        self.pending.wait_all();
    }

    /// This session's plain copy of blob `d`, if this `Store` stored it from a file with
    /// [`Store::put_file_keep`]. Its content was hashed from that very file, which lives in
    /// this session's private folder and is read-only: read it, never write it. Not re-hashed
    /// (an exception to "every read re-hashes" that holds only within one session, like
    /// bytes kept in memory).
    pub fn fresh_file(&self, d: &BlobDigest) -> Option<PathBuf> {
        let p = self.session.join(FRESH_DIR).join(d.to_hex());
        p.is_file().then_some(p)
    }

    /// Moves this session's plain copy of blob `d` to `dest` (mode 0644) if there is one and
    /// `dest` is on the same filesystem: true if it did. A second call for `d` finds nothing.
    pub fn take_fresh_file(&self, d: &BlobDigest, dest: &Path) -> bool {
        let Some(p) = self.fresh_file(d) else {
            return false;
        };
        // As durable as `blob_to_file`: synced before it takes the name.
        let synced = File::open(&p).and_then(|f| f.sync_all());
        if synced.is_err() || fs::rename(&p, dest).is_err() {
            return false;
        }
        let _ = fs::set_permissions(dest, fs::Permissions::from_mode(0o644));
        true
    }

    /// Moves this session's plain copy of blob `d` that is the range from `offset` on of a
    /// larger file (made by [`Store::put_range_keep_later`]) to `dest`, writable: the caller
    /// owns that file now and may write outside the range, never inside it (a thread may
    /// still be reading the range to store the blob). True if it did; one caller gets it, the
    /// others (and readers of `d`) use the blob.
    pub fn take_fresh_range(&self, d: &BlobDigest, offset: u64, dest: &Path) -> bool {
        let p = self
            .session
            .join(FRESH_DIR)
            .join(fresh_name(d, Some(offset)));
        // Writable for its new owner first: a file it could not open would be no use.
        p.is_file()
            && fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).is_ok()
            && fs::rename(&p, dest).is_ok()
    }

    fn put_open_file(&self, mut file: File, path: &Path) -> Result<FileRef> {
        let size = file.metadata().map_err(StoreError::io(path))?.len();
        if size <= SMALL {
            let mut data = Vec::with_capacity(size as usize);
            file.read_to_end(&mut data).map_err(StoreError::io(path))?;
            return self.put_bytes(&data);
        }
        if size >= MULTITHREAD_FROM {
            // A large file is almost always new (a filesystem or disk a step just wrote):
            // hash and compress it in one pass instead of hashing it first.
            return self.write_blob(&mut SparseFile::new(file, size), Some(size), path, None);
        }
        // Hash first: storing a file whose content is already there costs one read.
        let (digest, total) = hash_all(&mut file, &mut |_| {}).map_err(StoreError::io(path))?;
        if self.has_blob(&digest) {
            return Ok(FileRef {
                digest,
                size: total,
            });
        }
        file.rewind().map_err(StoreError::io(path))?;
        self.write_blob(&mut file, Some(size), path, None)
    }

    pub fn put_bytes(&self, data: &[u8]) -> Result<FileRef> {
        let mut h = blake3::Hasher::new();
        hash_update(&mut h, data);
        let digest = BlobDigest::from_hash(h.finalize());
        let size = data.len() as u64;
        if self.has_blob(&digest) {
            return Ok(FileRef { digest, size });
        }
        self.write_blob(&mut &data[..], Some(size), Path::new("<bytes>"), None)
    }

    /// Stores everything `r` yields, streaming.
    pub fn put_reader(&self, r: &mut dyn Read) -> Result<FileRef> {
        self.write_blob(r, None, Path::new("<reader>"), None)
    }

    /// The one place a blob is written: see [`write_blob_in`].
    fn write_blob(
        &self,
        r: &mut dyn Read,
        size_hint: Option<u64>,
        what: &Path,
        tap: Option<Tap<'_>>,
    ) -> Result<FileRef> {
        write_blob_in(&self.session, &self.blobs, r, size_hint, what, tap)
    }

    /// An empty temp file in this session's dir (on the store's filesystem), for a blob that
    /// arrives already compressed: fill it, then hand it to [`Store::adopt_compressed`].
    pub(crate) fn incoming_file(&self) -> Result<tempfile::NamedTempFile> {
        tempfile::Builder::new()
            .prefix("incoming-")
            .tempfile_in(&self.session)
            .map_err(StoreError::io(&self.session))
    }

    /// Adopts `tmp`, a blob as another store keeps it (the zstd encoding of its bytes, from a
    /// remote cache or a bundle): decompresses it to check that it hashes to `d`, then renames
    /// the compressed file itself into place, so nothing is recompressed. A file that does not
    /// decompress (truncated, not zstd, trailing garbage) or hashes to another digest is
    /// refused with [`StoreError::Undecodable`] or [`StoreError::Corrupt`] and removed.
    pub(crate) fn adopt_compressed(
        &self,
        d: &BlobDigest,
        tmp: tempfile::NamedTempFile,
    ) -> Result<FileRef> {
        let path = tmp.path().to_path_buf();
        let file = File::open(&path).map_err(StoreError::io(&path))?;
        let mut dec = zstd::Decoder::new(file).map_err(StoreError::io(&path))?;
        let mut h = blake3::Hasher::new();
        let mut buf = vec![0u8; CHUNK];
        let mut size = 0u64;
        loop {
            let n = read_full(&mut dec, &mut buf)
                .map_err(|source| StoreError::Undecodable { digest: *d, source })?;
            if n == 0 {
                break;
            }
            hash_update(&mut h, &buf[..n]);
            size += n as u64;
        }
        let actual = BlobDigest::from_hash(h.finalize());
        if actual != *d {
            return Err(StoreError::Corrupt { digest: *d, actual });
        }
        let f = tmp.as_file();
        f.set_permissions(fs::Permissions::from_mode(0o444))
            .map_err(StoreError::io(&path))?;
        f.sync_all().map_err(StoreError::io(&path))?;
        let target = self.blob_path(d);
        let shard = target.parent().expect("blob path has a shard dir");
        fs::create_dir_all(shard).map_err(StoreError::io(shard))?;
        tmp.persist(&target).map_err(|e| StoreError::Io {
            path: target.clone(),
            source: e.error,
        })?;
        Ok(FileRef { digest: *d, size })
    }

    /// A reader of the blob's uncompressed bytes that checks the digest when it reaches the end:
    /// the final `read` fails (with a [`StoreError`] inside the `io::Error`) if the content was
    /// wrong. Data read before the end is not yet trusted.
    pub fn open_blob(&self, d: &BlobDigest) -> Result<BlobReader> {
        self.pending.wait(d, &self.blob_path(d))?;
        let path = self.blob_path(d);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::MissingBlob(*d))
            }
            Err(e) => return Err(StoreError::Io { path, source: e }),
        };
        let decoder = zstd::Decoder::new(file).map_err(StoreError::io(&path))?;
        Ok(BlobReader {
            digest: *d,
            decoder,
            hasher: blake3::Hasher::new(),
            size: 0,
            done: false,
        })
    }

    /// The blob's bytes, checked against its digest.
    pub fn read_blob(&self, d: &BlobDigest) -> Result<Vec<u8>> {
        let mut r = self.open_blob(d)?;
        let mut out = Vec::new();
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = r.read_checked(&mut buf)?;
            if n == 0 {
                return Ok(out);
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    /// Writes the blob to `dest` (replacing it atomically), mode 0644, with aligned zero blocks
    /// left as holes. `dest` appears only once its content has matched the digest.
    pub fn blob_to_file(&self, d: &BlobDigest, dest: &Path) -> Result<()> {
        let dir = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let tmp = tempfile::Builder::new()
            .prefix(".imgspec-")
            .tempfile_in(dir)
            .map_err(StoreError::io(dir))?;
        let f = tmp.as_file();
        // The file is synced below: its writeback starts while it is written (see
        // `start_writeback`), so that sync waits for the last chunks only.
        let n = self.decode_into(d, f, tmp.path(), 0, u64::MAX, true)?;
        f.set_len(n).map_err(StoreError::io(tmp.path()))?;
        f.set_permissions(fs::Permissions::from_mode(0o644))
            .map_err(StoreError::io(tmp.path()))?;
        f.sync_all().map_err(StoreError::io(tmp.path()))?;
        tmp.persist(dest).map_err(|e| StoreError::Io {
            path: dest.to_path_buf(),
            source: e.error,
        })?;
        Ok(())
    }

    /// Writes blob `d` to the new file `dest` (which must not exist), sparse, without the
    /// temp file, rename and `fsync` of [`Store::blob_to_file`]: for a step's scratch files,
    /// which nobody reads after a crash. On a digest mismatch `dest` is removed.
    pub fn blob_to_scratch(&self, d: &BlobDigest, dest: &Path) -> Result<u64> {
        let f = fs::File::options()
            .write(true)
            .create_new(true)
            .open(dest)
            .map_err(StoreError::io(dest))?;
        match self.write_sparse(d, &f, dest) {
            Ok(n) => Ok(n),
            Err(e) => {
                let _ = fs::remove_file(dest);
                Err(e)
            }
        }
    }

    /// Decompresses blob `d` into the empty file `f`, seeking over aligned zero blocks so they
    /// stay holes, and fails if the content does not match the digest.
    pub(crate) fn write_sparse(&self, d: &BlobDigest, f: &File, path: &Path) -> Result<u64> {
        let n = self.blob_into_file_at(d, f, path, 0, u64::MAX)?;
        // Trailing holes: extend to the full length without writing.
        f.set_len(n).map_err(StoreError::io(path))?;
        Ok(n)
    }

    /// Decompresses blob `d` into `f` from byte `offset` on (a multiple of 4 KiB, in a region
    /// that reads as zeros: a new file, or holes), writing only the 4 KiB blocks that are not
    /// all zeros, and returns the blob's length. Fails if the content does not match the
    /// digest; what was written is then garbage the caller must throw away. Never writes
    /// more than `limit` bytes: a blob longer than that (damaged, or not the one its record
    /// says) fails as undecodable before a byte past `offset + limit` is written (the disk
    /// step's next partition may be a range another thread is still reading). Large blobs are
    /// decompressed on a second thread while this one hashes and writes.
    pub fn blob_into_file_at(
        &self,
        d: &BlobDigest,
        f: &File,
        path: &Path,
        offset: u64,
        limit: u64,
    ) -> Result<u64> {
        self.decode_into(d, f, path, offset, limit, false)
    }

    /// [`Store::blob_into_file_at`], and with `writeback` the kernel is asked to start writing
    /// each chunk to disk as soon as it is written (for a file the caller then syncs).
    fn decode_into(
        &self,
        d: &BlobDigest,
        f: &File,
        path: &Path,
        offset: u64,
        limit: u64,
        writeback: bool,
    ) -> Result<u64> {
        let stored = self.blob_path(d);
        self.pending.wait(d, &stored)?;
        let stored_len = match fs::metadata(&stored) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::MissingBlob(*d))
            }
            Err(e) => return Err(StoreError::io(&stored)(e)),
        };
        if stored_len < PIPELINE_FROM {
            return self.write_sparse_serial(d, f, path, offset, limit);
        }
        let file = File::open(&stored).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => StoreError::MissingBlob(*d),
            _ => StoreError::io(&stored)(e),
        })?;
        let mut decoder = zstd::Decoder::new(file).map_err(StoreError::io(&stored))?;
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(PIPELINE_DEPTH);
        let (back_tx, back_rx) = std::sync::mpsc::channel::<Vec<u8>>();
        std::thread::scope(|scope| {
            let reader = scope.spawn(move || -> io::Result<()> {
                loop {
                    let mut buf = back_rx.try_recv().unwrap_or_default();
                    buf.resize(CHUNK, 0);
                    let n = read_full(&mut decoder, &mut buf)?;
                    if n == 0 {
                        return Ok(());
                    }
                    buf.truncate(n);
                    if tx.send(buf).is_err() {
                        return Ok(()); // the writer stopped on an error of its own
                    }
                }
            });
            let mut h = blake3::Hasher::new();
            let mut pos = 0u64;
            let mut flushed = 0u64;
            let mut written = Ok(());
            while let Ok(buf) = rx.recv() {
                if pos + buf.len() as u64 > limit {
                    drop(rx);
                    let _ = reader.join();
                    return Err(too_long(d, limit));
                }
                hash_update(&mut h, &buf);
                // Chunks are full but the last, so every block starts 4 KiB-aligned.
                written = write_non_zero_runs(f, &buf, offset + pos);
                if written.is_err() {
                    break;
                }
                pos += buf.len() as u64;
                if writeback {
                    flushed = start_writeback(f, offset + flushed, offset + pos) - offset;
                }
                let _ = back_tx.send(buf);
            }
            drop(rx);
            let read = reader
                .join()
                .expect("the decompression thread does not panic");
            written.map_err(StoreError::io(path))?;
            read.map_err(|source| StoreError::Undecodable { digest: *d, source })?;
            let actual = BlobDigest::from_hash(h.finalize());
            if actual != *d {
                return Err(StoreError::Corrupt { digest: *d, actual });
            }
            Ok(pos)
        })
    }

    fn write_sparse_serial(
        &self,
        d: &BlobDigest,
        f: &File,
        path: &Path,
        offset: u64,
        limit: u64,
    ) -> Result<u64> {
        let mut r = self.open_blob(d)?;
        let mut buf = vec![0u8; CHUNK];
        let mut pos = 0u64;
        loop {
            // Fill whole chunks so every block starts at a multiple of HOLE_BLOCK.
            let mut n = 0;
            while n < buf.len() {
                let k = r.read_checked(&mut buf[n..])?;
                if k == 0 {
                    break;
                }
                n += k;
            }
            if n == 0 {
                break;
            }
            if pos + n as u64 > limit {
                return Err(too_long(d, limit));
            }
            write_non_zero_runs(f, &buf[..n], offset + pos).map_err(StoreError::io(path))?;
            pos += n as u64;
        }
        // `read_checked` has seen the end, so the digest matched.
        Ok(pos)
    }
}

/// A blob that decodes to more than the `limit` bytes it was to fill: damaged for the caller.
fn too_long(d: &BlobDigest, limit: u64) -> StoreError {
    StoreError::Undecodable {
        digest: *d,
        source: io::Error::other(format!(
            "it decodes to more than the {limit} bytes it was to fill"
        )),
    }
}

/// Writeback is started in batches of this many bytes.
const WRITEBACK_BATCH: u64 = 8 << 20;

/// Asks the kernel to start writing `[from, to)` of `f` to disk, without waiting, once it is at
/// least [`WRITEBACK_BATCH`] long; returns where the range not yet handed over starts. A file
/// that is synced when complete then waits only for what is still in flight: the disk writes
/// while the blob decompresses (GNU `cp` writes to the page cache only and never syncs; a
/// restore that must be durable pays the disk either way, this way beside the CPU work).
/// A hint: an error here shows again at the `fsync` that follows.
fn start_writeback(f: &File, from: u64, to: u64) -> u64 {
    use std::os::fd::AsRawFd;
    if to - from < WRITEBACK_BATCH {
        return from;
    }
    let (Ok(start), Ok(len)) = (
        libc::off64_t::try_from(from),
        libc::off64_t::try_from(to - from),
    ) else {
        return to;
    };
    // SAFETY: sync_file_range on a descriptor we hold; it reads no memory of ours.
    unsafe {
        libc::sync_file_range(f.as_raw_fd(), start, len, libc::SYNC_FILE_RANGE_WRITE);
    }
    to
}

/// A file written front to back whose writeback (with `on`) starts every
/// [`WRITEBACK_BATCH`] bytes, as [`start_writeback`] says.
struct WritingBack<'a> {
    file: &'a File,
    written: u64,
    flushed: u64,
    on: bool,
}

impl Write for WritingBack<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        if self.on {
            self.flushed = start_writeback(self.file, self.flushed, self.written);
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Asks the kernel to start writing the file at `path` to disk now, without waiting: for a
/// file that will be synced later (a build's output, synced when it moves into the output
/// directory), so that sync finds its data on the way and the disk works while the CPU does.
/// A hint: an error here shows again at the `fsync`.
pub fn start_file_writeback(path: &Path) {
    use std::os::fd::AsRawFd;
    let Ok(f) = File::open(path) else { return };
    // SAFETY: sync_file_range on a descriptor we hold; it reads no memory of ours.
    unsafe {
        libc::sync_file_range(f.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// Whether `bytes` are all zeros: one `memcmp` against a zero block per [`HOLE_BLOCK`],
/// vectorised by libc, where a byte-by-byte `all` took a quarter of a restore's CPU. For the
/// blocks a restore leaves as holes, and for the chunks a reader of a sparse file can tell
/// apart as holes (the SHA-256 beside a store).
pub fn is_zero(bytes: &[u8]) -> bool {
    static ZEROS: [u8; HOLE_BLOCK] = [0; HOLE_BLOCK];
    bytes.chunks(HOLE_BLOCK).all(|b| b == &ZEROS[..b.len()])
}

/// Writes the runs of `data` (which starts at file offset `offset`, a multiple of HOLE_BLOCK)
/// that are not all-zero blocks.
fn write_non_zero_runs(f: &File, data: &[u8], offset: u64) -> io::Result<()> {
    let mut run_start: Option<usize> = None;
    let mut pos = 0;
    for block in data.chunks(HOLE_BLOCK) {
        let zero = is_zero(block);
        match (zero, run_start) {
            (false, None) => run_start = Some(pos),
            (true, Some(s)) => {
                f.write_all_at(&data[s..pos], offset + s as u64)?;
                run_start = None;
            }
            _ => {}
        }
        pos += block.len();
    }
    if let Some(s) = run_start {
        f.write_all_at(&data[s..], offset + s as u64)?;
    }
    Ok(())
}

/// The uncompressed bytes of one blob; see [`Store::open_blob`].
pub struct BlobReader {
    digest: BlobDigest,
    decoder: zstd::Decoder<'static, io::BufReader<File>>,
    hasher: blake3::Hasher,
    size: u64,
    done: bool,
}

impl BlobReader {
    pub fn digest(&self) -> &BlobDigest {
        &self.digest
    }

    /// Bytes read so far.
    pub fn bytes_read(&self) -> u64 {
        self.size
    }

    /// Like `read`, with the store's own error: `Corrupt` or `Undecodable` at the end when
    /// the content does not match its digest.
    pub fn read_checked(&mut self, buf: &mut [u8]) -> Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        let n = loop {
            match self.decoder.read(buf) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(StoreError::Undecodable {
                        digest: self.digest,
                        source,
                    });
                }
            }
        };
        if n == 0 {
            let actual = BlobDigest::from_hash(self.hasher.finalize());
            if actual != self.digest {
                return Err(StoreError::Corrupt {
                    digest: self.digest,
                    actual,
                });
            }
            self.done = true;
            return Ok(0);
        }
        hash_update(&mut self.hasher, &buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
}

impl Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_checked(buf).map_err(|e| match e {
            StoreError::Io { source, .. } => source,
            other => io::Error::new(io::ErrorKind::InvalidData, other),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn is_zero_tells_a_single_non_zero_byte_at_any_length() {
        assert!(is_zero(&[]));
        assert!(is_zero(&[0; HOLE_BLOCK]));
        assert!(is_zero(&vec![0; 3 * HOLE_BLOCK + 5]));
        for (len, at) in [
            (HOLE_BLOCK, 0),
            (HOLE_BLOCK, HOLE_BLOCK - 1),
            (1 << 20, 777_777),
        ] {
            let mut b = vec![0u8; len];
            b[at] = 1;
            assert!(!is_zero(&b), "a 1 at {at} of {len}");
        }
        let mut tail = vec![0u8; 2 * HOLE_BLOCK + 1];
        *tail.last_mut().unwrap() = 1;
        assert!(!is_zero(&tail), "a 1 in a short last block");
    }

    /// Bytes zstd cannot shrink: the blob's stored file is as large as its content.
    fn noise(seed: &[u8], len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        blake3::Hasher::new()
            .update(seed)
            .finalize_xof()
            .fill(&mut out);
        out
    }

    #[test]
    fn a_large_blob_decompresses_on_two_threads_to_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        // Noise, a run of zeros that must stay a hole, noise: stored above PIPELINE_FROM, and
        // longer than a few writeback batches.
        let mut data = noise(b"a", 3 << 20);
        data.extend(vec![0u8; 20 << 20]);
        data.extend(noise(b"b", (9 << 20) + 123));
        let r = store.put_bytes(&data).unwrap();
        assert!(fs::metadata(store.blob_path(&r.digest)).unwrap().len() >= PIPELINE_FROM);
        let dest = dir.path().join("out");
        store.blob_to_file(&r.digest, &dest).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), data);
        // Sparse: the zeros are not allocated (12 MiB of noise, a block for the tail).
        let allocated = fs::metadata(&dest).unwrap().blocks() * 512;
        assert!(
            allocated <= (12 << 20) + (64 << 10),
            "allocated {allocated}"
        );

        // Into a larger file at an offset: the bytes around it stay as they were.
        let disk = dir.path().join("disk");
        let f = File::create(&disk).unwrap();
        f.set_len(16 << 20).unwrap();
        let n = store
            .blob_into_file_at(&r.digest, &f, &disk, 1 << 20, u64::MAX)
            .unwrap();
        assert_eq!(n, data.len() as u64);
        let back = fs::read(&disk).unwrap();
        assert!(back[..1 << 20].iter().all(|&b| b == 0));
        assert_eq!(&back[1 << 20..(1 << 20) + data.len()], &data[..]);
        assert!(back[(1 << 20) + data.len()..].iter().all(|&b| b == 0));

        // A blob longer than the room it is given fails before writing past it, on both
        // paths (two threads for this one, one thread for a small one).
        let small = store.put_bytes(&noise(b"s", 3 << 20)).unwrap();
        for (d, room) in [(r.digest, 8u64 << 20), (small.digest, 2 << 20)] {
            let f = File::create(&disk).unwrap();
            f.set_len(64 << 20).unwrap();
            let e = store
                .blob_into_file_at(&d, &f, &disk, 1 << 20, room)
                .unwrap_err();
            assert_eq!(e.damaged_blob(), Some(d), "{e}");
            let back = fs::read(&disk).unwrap();
            assert!(back[(1 << 20) + room as usize..].iter().all(|&b| b == 0));
        }
    }

    #[test]
    fn a_corrupt_large_blob_is_refused_by_the_two_thread_path() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let data = noise(b"c", 6 << 20);
        let r = store.put_bytes(&data).unwrap();
        // Another content's valid zstd under this digest's name.
        let other = zstd::encode_all(&noise(b"d", 6 << 20)[..], 1).unwrap();
        let path = store.blob_path(&r.digest);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(&path, other).unwrap();
        let dest = dir.path().join("out");
        let err = store.blob_to_file(&r.digest, &dest).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
        assert!(!dest.exists(), "no output for a corrupt blob");
        let err = store
            .blob_to_scratch(&r.digest, &dir.path().join("scratch"))
            .unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
        assert!(!dir.path().join("scratch").exists());
        // Truncated: does not decompress.
        let whole = fs::read(&path).unwrap();
        fs::write(&path, &whole[..whole.len() / 2]).unwrap();
        let err = store.blob_to_file(&r.digest, &dest).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Undecodable { .. } | StoreError::Corrupt { .. }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn the_tap_sees_every_byte_of_small_and_large_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        for len in [
            10usize,
            (SMALL as usize) + 1,
            (MULTITHREAD_FROM as usize) + 5,
        ] {
            let data = noise(&len.to_le_bytes(), len);
            let p = dir.path().join(format!("f{len}"));
            fs::write(&p, &data).unwrap();
            let mut seen = Vec::new();
            let r = store
                .put_file_tap(&p, &mut |b| seen.extend_from_slice(b))
                .unwrap();
            assert_eq!(seen, data);
            assert_eq!(r.digest, BlobDigest::from_hash(blake3::hash(&data)));
            assert_eq!(store.read_blob(&r.digest).unwrap(), data);
        }
    }

    #[test]
    fn a_file_stored_later_is_read_and_recorded_only_once_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("cache")).unwrap();
        let path = dir.path().join("disk.raw");
        let mut data = noise(b"later", 40 << 20);
        data[8 << 20..16 << 20].fill(0);
        fs::write(&path, &data).unwrap();
        let mut tapped = 0usize;
        let r = store
            .put_file_keep_later(&path, &mut |b| tapped += b.len())
            .unwrap();
        assert_eq!(tapped, data.len(), "the tap saw every byte");
        assert_eq!(r.digest, BlobDigest::from_hash(blake3::hash(&data)));
        assert!(!path.exists(), "moved to the session's plain copies");
        assert_eq!(
            fs::read(store.fresh_file(&r.digest).unwrap()).unwrap(),
            data
        );
        // A read waits for the thread that writes the blob.
        assert_eq!(store.read_blob(&r.digest).unwrap(), data);
        assert!(store.has_blob(&r.digest));
        let mut out = crate::StepOutput::default();
        out.files.insert("disk.raw".into(), r.clone());
        assert!(!store.is_pending(&out));
        let key = crate::StepKey::from_hash(blake3::hash(b"step"));
        store.record(&key, "disk", "disk", &out).unwrap();
        assert!(store.lookup(&key).unwrap().is_some());

        // Stored again later (another step made the same bytes): nothing is written twice.
        fs::write(&path, &data).unwrap();
        let again = store.put_file_keep_later(&path, &mut |_| {}).unwrap();
        assert_eq!(again, r);
        assert!(!store.is_pending(&out));
    }

    #[test]
    fn a_range_of_a_file_is_stored_and_its_file_handed_to_one_taker() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("cache")).unwrap();
        let path = dir.path().join("disk.raw");
        let (offset, len) = (3u64 << 20, 36u64 << 20);
        let mut range = noise(b"range", len as usize);
        range[4 << 20..12 << 20].fill(0);
        let f = File::create(&path).unwrap();
        f.set_len(offset + len + (2 << 20)).unwrap();
        f.write_all_at(&range[..4 << 20], offset).unwrap();
        f.write_all_at(&range[12 << 20..], offset + (12 << 20))
            .unwrap();
        // Data right before and right after the range, in the blocks around its ends.
        f.write_all_at(b"outside", 1 << 20).unwrap();
        f.write_all_at(&[0xEE; 4096], offset - 4096).unwrap();
        f.write_all_at(&[0xEE; 4096], offset + len).unwrap();
        drop(f);
        let r = store
            .put_range_keep_later(&path, offset, len, &mut |_| {})
            .unwrap();
        assert_eq!(r.digest, BlobDigest::from_hash(blake3::hash(&range)));
        assert_eq!(r.size, len);
        assert!(
            store.fresh_file(&r.digest).is_none(),
            "not a plain copy of the blob"
        );
        let taken = dir.path().join("taken.raw");
        assert!(!store.take_fresh_range(&r.digest, offset + 4096, &taken));
        assert!(store.take_fresh_range(&r.digest, offset, &taken));
        assert!(!store.take_fresh_range(&r.digest, offset, &dir.path().join("b")));
        // The taker writes outside the range while the blob may still be written from it.
        let f = fs::OpenOptions::new().write(true).open(&taken).unwrap();
        f.write_all_at(b"mine", 0).unwrap();
        drop(f);
        assert_eq!(store.read_blob(&r.digest).unwrap(), range);
        // A range past the end is refused.
        assert!(store
            .put_range_keep_later(&taken, offset, 40 << 20, &mut |_| {})
            .is_err());
    }

    #[test]
    fn a_dropped_store_waits_for_the_blobs_it_is_writing() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("cache");
        let path = dir.path().join("fs.img");
        let data = noise(b"drop", 48 << 20);
        fs::write(&path, &data).unwrap();
        let d = {
            let store = Store::open(&root).unwrap();
            store
                .put_file_keep_later(&path, &mut |_| {})
                .unwrap()
                .digest
        };
        let store = Store::open(&root).unwrap();
        assert_eq!(
            store.read_blob(&d).unwrap(),
            data,
            "whole, under its digest"
        );
    }

    #[test]
    fn a_kept_file_is_handed_on_once_within_the_session() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let data = noise(b"kept", (SMALL as usize) * 2);
        let p = dir.path().join("disk.raw");
        fs::write(&p, &data).unwrap();
        let r = store.put_file_keep(&p, &mut |_| {}).unwrap();
        assert!(!p.exists(), "moved, not copied");
        assert_eq!(store.read_blob(&r.digest).unwrap(), data, "and stored");
        let fresh = store.fresh_file(&r.digest).unwrap();
        assert_eq!(fs::read(&fresh).unwrap(), data);
        let dest = dir.path().join("out.raw");
        assert!(store.take_fresh_file(&r.digest, &dest));
        assert_eq!(fs::read(&dest).unwrap(), data);
        assert_eq!(fs::metadata(&dest).unwrap().mode() & 0o777, 0o644);
        assert!(store.fresh_file(&r.digest).is_none());
        assert!(!store.take_fresh_file(&r.digest, &dir.path().join("again")));
        // Another session of the same store has no plain copies.
        let other = Store::open(&dir.path().join("store")).unwrap();
        let r2 = store.put_bytes(&noise(b"other", 1 << 20)).unwrap();
        assert!(other.fresh_file(&r2.digest).is_none());
        assert!(
            store.fresh_file(&r2.digest).is_none(),
            "put_bytes keeps nothing"
        );
    }

    fn incoming(store: &Store, bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut tmp = store.incoming_file().unwrap();
        tmp.write_all(bytes).unwrap();
        tmp
    }

    #[test]
    fn a_compressed_blob_is_adopted_as_is_only_when_it_matches_its_digest() {
        let dir = tempfile::tempdir().unwrap();
        let a = Store::open(&dir.path().join("a")).unwrap();
        let b = Store::open(&dir.path().join("b")).unwrap();
        let data = b"some content worth sharing\n".repeat(1000);
        let r = a.put_bytes(&data).unwrap();
        let compressed = fs::read(a.blob_path(&r.digest)).unwrap();

        // The right bytes: adopted byte for byte, no recompression.
        let got = b
            .adopt_compressed(&r.digest, incoming(&b, &compressed))
            .unwrap();
        assert_eq!(got, r);
        assert_eq!(fs::read(b.blob_path(&r.digest)).unwrap(), compressed);
        assert_eq!(b.read_blob(&r.digest).unwrap(), data);

        // Another blob's bytes under this digest: refused, nothing lands.
        let other = a.put_bytes(b"other").unwrap();
        let other_bytes = fs::read(a.blob_path(&other.digest)).unwrap();
        let c = Store::open(&dir.path().join("c")).unwrap();
        let e = c
            .adopt_compressed(&r.digest, incoming(&c, &other_bytes))
            .unwrap_err();
        assert!(matches!(e, StoreError::Corrupt { .. }), "{e:?}");
        // Truncated, and with trailing garbage: refused as undecodable.
        let e = c
            .adopt_compressed(&r.digest, incoming(&c, &compressed[..compressed.len() / 2]))
            .unwrap_err();
        assert!(e.is_corrupt(), "{e:?}");
        let mut garbage = compressed.clone();
        garbage.extend_from_slice(b"garbage");
        let e = c
            .adopt_compressed(&r.digest, incoming(&c, &garbage))
            .unwrap_err();
        assert!(e.is_corrupt(), "{e:?}");
        assert!(!c.has_blob(&r.digest));
    }

    #[test]
    fn a_sparse_file_reads_as_its_bytes_holes_included() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sparse");
        let f = File::create(&p).unwrap();
        let len = 40u64 << 20;
        f.set_len(len).unwrap();
        f.write_all_at(&noise(b"x", 3 << 20), 5 << 20).unwrap();
        f.write_all_at(b"tail", len - 4).unwrap();
        drop(f);
        let want = fs::read(&p).unwrap();
        let mut got = Vec::new();
        SparseFile::new(File::open(&p).unwrap(), len)
            .read_to_end(&mut got)
            .unwrap();
        assert_eq!(got, want);
        let store = Store::open(&dir.path().join("store")).unwrap();
        let r = store.put_file(&p).unwrap();
        assert_eq!(r.digest, BlobDigest::from_hash(blake3::hash(&want)));
        assert_eq!(store.read_blob(&r.digest).unwrap(), want);
    }

    #[test]
    fn only_non_zero_blocks_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let f = File::create(&path).unwrap();
        let mut data = vec![0u8; 16 * HOLE_BLOCK];
        data[HOLE_BLOCK + 7] = 1; // block 1
        data[2 * HOLE_BLOCK] = 2; // block 2, same run
        data[10 * HOLE_BLOCK + HOLE_BLOCK - 1] = 3; // block 10
        write_non_zero_runs(&f, &data, 0).unwrap();
        f.set_len(data.len() as u64).unwrap();
        assert_eq!(fs::read(&path).unwrap(), data);
    }
}
