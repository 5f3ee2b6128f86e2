//! What a remote cache's backend does: move named objects to and from one place, and nothing
//! else. [`crate::Remote`] is the only caller; it decides which objects to move
//! (`cas-v1/<blake3>`, `ac-v1/<key>`), checks every byte that arrives before anything enters
//! the local store, keeps the "down once, said once" state and the traffic counters. A backend
//! never sees the store, so no backend can let an unchecked byte in.
//!
//! Backends today: [`crate::http`] (plain HTTP GET/HEAD/PUT, e.g. nginx with WebDAV `PUT`) and
//! [`crate::s3`] (S3 and S3-compatible stores through `object_store`). A new one is one file
//! implementing [`Backend`], handed to [`crate::Remote::with_backend`].

use std::fs::File;
use std::io::{self, Read};
use std::sync::atomic::AtomicU64;

/// Why a backend call failed.
#[derive(Debug)]
pub enum Trouble {
    /// The place cannot be used: unreachable, refusing us, failing, answering nonsense. The
    /// remote is then down for the rest of the process (said once). The text says what was
    /// asked and what came back, with a hint where one helps; it must never hold a secret.
    Down(String),
    /// Larger than the caller's limit (`get_small`).
    TooLarge,
    /// The local file being written or read.
    Local(io::Error),
}

/// Opens the bytes to upload; called again when a backend retries.
pub type Opener<'a> = &'a mut dyn FnMut() -> io::Result<Box<dyn Read + Send>>;

/// Moves objects by name (a path relative to the remote's root, such as `cas-v1/1f2e…`). Every
/// call blocks; the remote calls them from its own pool of threads, several at once.
pub trait Backend: Send + Sync {
    /// Whether the place has `object`.
    fn exists(&self, object: &str) -> Result<bool, Trouble>;

    /// The whole of a small object (a step record), `None` if the place does not have it;
    /// [`Trouble::TooLarge`] past `limit` bytes. Adds the bytes received to `received`.
    fn get_small(
        &self,
        object: &str,
        limit: u64,
        received: &AtomicU64,
    ) -> Result<Option<Vec<u8>>, Trouble>;

    /// Downloads `object` into `file` (empty, or holding the start of the object from an
    /// earlier broken attempt), resuming where a broken transfer stopped when the place allows
    /// it; `false` if it does not have the object. On success `file` holds the whole object.
    /// Adds the bytes received to `received`.
    fn get_to_file(
        &self,
        object: &str,
        file: &mut File,
        received: &AtomicU64,
    ) -> Result<bool, Trouble>;

    /// Uploads the `len` bytes `open` gives as `object`, replacing nothing that matters (objects
    /// are named by their content or their step's key: two writers write the same bytes).
    /// Adds the bytes sent to `sent` once they are stored.
    fn put(&self, object: &str, open: Opener, len: u64, sent: &AtomicU64) -> Result<(), Trouble>;
}
