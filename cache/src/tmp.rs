//! The store's `tmp/`: one session dir per open `Store`, and removal of what dead processes left.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::{sys, Result, StoreError};

const SESSION_PREFIX: &str = "session-";
const LOCK_FILE: &str = ".lock";
/// Entries of `tmp/` that belong to no session are removed once they are this old.
const STALE_AFTER: Duration = Duration::from_secs(3600);

const CACHEDIR_TAG: &str = "Signature: 8a477f597d28d172789f06886806bc55\n\
# This file is a cache directory tag created by imgspec.\n\
# For information about cache directory tags see https://bford.info/cachedir/\n";

pub(crate) fn write_cachedir_tag(root: &Path) -> Result<()> {
    let path = root.join("CACHEDIR.TAG");
    if path.exists() {
        return Ok(());
    }
    // Readable by all, as any other file of the store (a NamedTempFile is created 0600).
    let mut f = tempfile::Builder::new()
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .tempfile_in(root)
        .map_err(StoreError::io(root))?;
    f.write_all(CACHEDIR_TAG.as_bytes())
        .map_err(StoreError::io(f.path()))?;
    f.as_file().sync_all().map_err(StoreError::io(f.path()))?;
    f.persist(&path).map_err(|e| StoreError::Io {
        path,
        source: e.error,
    })?;
    Ok(())
}

/// Makes this process's session dir, its lock held, under a name other sessions recognise.
///
/// The dir is prepared under a temp name and renamed once its lock is held, so no other
/// process can ever see a `session-*` dir whose lock is free while its owner lives.
pub(crate) fn new_session(tmp: &Path) -> Result<(PathBuf, File)> {
    let staging = tempfile::Builder::new()
        .prefix("new-")
        .tempdir_in(tmp)
        .map_err(StoreError::io(tmp))?;
    let lock_path = staging.path().join(LOCK_FILE);
    let lock = File::create(&lock_path).map_err(StoreError::io(&lock_path))?;
    if !sys::try_lock_exclusive(&lock).map_err(StoreError::io(&lock_path))? {
        return Err(StoreError::Io {
            path: lock_path,
            source: std::io::Error::other("a fresh session lock is already held"),
        });
    }
    let name = staging
        .path()
        .file_name()
        .expect("temp dir has a name")
        .to_string_lossy();
    let session = tmp.join(format!(
        "{SESSION_PREFIX}{}",
        name.trim_start_matches("new-")
    ));
    fs::rename(staging.path(), &session).map_err(StoreError::io(&session))?;
    let _ = staging.keep(); // now lives under the session name
    Ok((session, lock))
}

/// Called when a `Store` drops: removes its session dir with everything in it (plain copies
/// nobody took, kept trees, the scratch dirs of steps), the lock last, so that no other
/// process can take the dir for a dead one while it is being emptied. Whatever resists (a
/// `TempDir` that outlives its store and is being written) is removed by a later open once
/// it is an hour old.
pub(crate) fn end_session(session: &Path) {
    if let Ok(dir) = fs::read_dir(session) {
        for entry in dir.flatten() {
            if entry.file_name() != LOCK_FILE {
                remove_any(&entry.path());
            }
        }
    }
    let _ = fs::remove_file(session.join(LOCK_FILE));
    let _ = fs::remove_dir(session);
}

/// Removes session dirs whose owner is gone and any other entry older than [`STALE_AFTER`].
/// Best effort: a failure here must not stop the store from opening.
pub(crate) fn remove_stale(tmp: &Path) {
    let Ok(dir) = fs::read_dir(tmp) else { return };
    for entry in dir.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if name.to_string_lossy().starts_with(SESSION_PREFIX) {
            if session_is_dead(&path) {
                remove_any(&path);
            }
            continue;
        }
        if older_than(&path, STALE_AFTER) {
            remove_any(&path);
        }
    }
}

fn session_is_dead(session: &Path) -> bool {
    match File::open(session.join(LOCK_FILE)) {
        // Getting the lock proves no live store holds it. It is released again when `f` drops;
        // a second cleaner may then try to remove the same dir, which is harmless.
        Ok(f) => sys::try_lock_exclusive(&f).unwrap_or(false),
        // Only a store that was dropped removes its lock file; what it left behind (a `TempDir`
        // that outlived it) gets the same hour as a loose entry.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => older_than(session, STALE_AFTER),
        Err(_) => false,
    }
}

fn older_than(path: &Path, age: Duration) -> bool {
    fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        .map(|t| SystemTime::now().duration_since(t).unwrap_or_default() > age)
        .unwrap_or(false)
}

fn remove_any(path: &Path) {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            let _ = fs::remove_dir_all(path);
        }
        Ok(_) => {
            let _ = fs::remove_file(path);
        }
        Err(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_cachedir_tag_is_readable_by_all() {
        let dir = tempfile::tempdir().unwrap();
        super::write_cachedir_tag(dir.path()).unwrap();
        let meta = std::fs::metadata(dir.path().join("CACHEDIR.TAG")).unwrap();
        // The process umask may take bits away, never add: 0644 under the usual 022.
        assert_eq!(meta.permissions().mode() & 0o444, 0o444);
    }
}
