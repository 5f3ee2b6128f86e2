//! Per-step locks across processes: two builds sharing one store build a shared step once.
//!
//! A step's lock is an exclusive `flock` on `ROOT/locks/<key hex>`. The holder builds and
//! records the step, then deletes the file and closes it. A process that finds the lock taken
//! waits, then looks the key up again: by then the step is usually recorded and is a cache hit.
//!
//! Deleting the file on release keeps `locks/` empty at rest, but a waiter may have opened the
//! old file before it was deleted; it would then "hold" a lock on an inode nobody else can
//! find. So after taking the lock, the holder checks that the path still names the inode it
//! locked, and starts over when it does not.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Duration;

use crate::{sys, Result, StepKey, Store, StoreError};

/// Name of the lock directory under the root.
pub const LOCKS_DIR: &str = "locks";

/// How often a waiter tries again (and checks whether it should give up).
const POLL: Duration = Duration::from_millis(100);

/// An exclusive claim on building one step. Released (and its file removed) on drop.
#[derive(Debug)]
pub struct StepClaim {
    path: PathBuf,
    _file: File,
}

/// How taking a step lock went.
#[derive(Debug)]
pub enum Claim {
    /// The lock is ours; `waited` is true when another holder had it first.
    Held { lock: StepClaim, waited: bool },
    /// `give_up` said stop while the lock was still taken.
    GaveUp,
}

impl Store {
    /// Takes the lock of `key`, waiting while another process (or thread) holds it. `on_wait`
    /// is called once, when the lock is found taken; `give_up` is polled while waiting.
    pub fn claim_step(
        &self,
        key: &StepKey,
        on_wait: &mut dyn FnMut(),
        give_up: &dyn Fn() -> bool,
    ) -> Result<Claim> {
        let dir = self.root().join(LOCKS_DIR);
        fs::create_dir_all(&dir).map_err(StoreError::io(&dir))?;
        let path = dir.join(key.to_hex());
        let mut waited = false;
        loop {
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(StoreError::io(&path))?;
            if sys::try_lock_exclusive(&file).map_err(StoreError::io(&path))? {
                let ours = file.metadata().map_err(StoreError::io(&path))?;
                match fs::metadata(&path) {
                    Ok(m) if m.ino() == ours.ino() && m.dev() == ours.dev() => {
                        return Ok(Claim::Held {
                            lock: StepClaim { path, _file: file },
                            waited,
                        });
                    }
                    // The holder we waited for removed the file: lock the new one.
                    _ => continue,
                }
            }
            if !waited {
                waited = true;
                on_wait();
            }
            if give_up() {
                return Ok(Claim::GaveUp);
            }
            std::thread::sleep(POLL);
        }
    }
}

impl Store {
    /// Removes the lock files nobody holds: what a killed build left (the kernel releases a
    /// dead process's `flock`, so such a file never blocks, but it stays). Each is removed
    /// while this process holds its lock, so a builder that opened the same file meanwhile
    /// sees it gone (the inode check in `claim_step`) and locks a new one. Returns how many.
    pub fn remove_stale_locks(&self) -> Result<usize> {
        let dir = self.root().join(LOCKS_DIR);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(StoreError::io(&dir)(e)),
        };
        let mut removed = 0;
        for entry in entries {
            let path = entry.map_err(StoreError::io(&dir))?.path();
            let Ok(file) = File::open(&path) else {
                continue; // removed meanwhile, or not ours to open
            };
            if !sys::try_lock_exclusive(&file).map_err(StoreError::io(&path))? {
                continue; // a build holds it
            }
            let ours = file.metadata().map_err(StoreError::io(&path))?;
            let same = fs::symlink_metadata(&path)
                .is_ok_and(|m| m.ino() == ours.ino() && m.dev() == ours.dev() && m.is_file());
            if same && fs::remove_file(&path).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }
}

impl Drop for StepClaim {
    fn drop(&mut self) {
        // Remove while still holding the lock; waiters on this inode then see it is gone.
        let _ = fs::remove_file(&self.path);
    }
}
