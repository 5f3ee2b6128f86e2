//! Puts a build's output files in `out/IMAGE/`, with `SHA256SUMS` beside them, all or nothing.
//!
//! `out/IMAGE/` holds only the artifacts and `SHA256SUMS`: what users checksum and publish as a
//! folder. The build's own state lives in the cache (`outputs-v1/<BLAKE3 of the folder's
//! absolute path>.json`): the digest, size, mtime and inode of each file imgspec wrote there
//! (a `.imgspec-state.json` an older imgspec left in the folder goes with the next rewrite).
//! When every file's metadata still matches, the folder is left
//! alone (a no-op build reads no output file). Otherwise the new folder is made beside it, as
//! `out/.IMAGE.tmp-XXXXXX` (flock-ed while it is filled): files that are still right are hard
//! links to the old ones, a file an output step of this very build has just written is moved
//! there from the store's session folder (`Store::take_fresh_file`: no decompression, no
//! copy), one the store still holds a link to (an output deleted since: `Store::restore_linked`)
//! is linked or copied back from there, the others are restored from the store (in parallel: a
//! raw disk and its qcow2 decompress on different cores); every file and the folder are synced, and then it is
//! swapped with the old folder in one `renameat2(RENAME_EXCHANGE)` and the old one removed. A
//! failure or a kill at any point leaves the old `out/IMAGE/` whole (or none), never half of
//! a new one; a later build removes a staging folder whose owner is gone. Once the folder is
//! in place, the store takes a hard link to each of its large files (`Store::link_output`), and
//! lets go of its links to the files the new folder replaced (`Store::unlink_output`).

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use imgspec_cache::{BlobDigest, StepOutput, Store, StoreError};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// The cache's folder of output-folder states.
const STATE_DIR: &str = "outputs-v1";

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("I/O error on `{path}`")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl OutputError {
    /// The blob of the store found damaged or missing while it was restored, if that is why
    /// this failed.
    pub fn damaged_blob(&self) -> Option<BlobDigest> {
        match self {
            OutputError::Store(e) => e.damaged_blob(),
            OutputError::Io { .. } => None,
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> OutputError + '_ {
    move |source| OutputError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct FileState {
    digest: Option<BlobDigest>,
    size: u64,
    mtime_ns: i128,
    ino: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    files: BTreeMap<String, FileState>,
}

/// One file of `out/IMAGE/`.
#[derive(Debug, Serialize)]
pub struct Written {
    pub path: PathBuf,
    pub sha256: Option<String>,
    /// False when the file already held the right bytes.
    pub written: bool,
}

fn file_state(path: &Path, digest: Option<BlobDigest>) -> Option<FileState> {
    let m = std::fs::symlink_metadata(path).ok()?;
    Some(FileState {
        digest,
        size: m.size(),
        mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
        ino: m.ino(),
    })
}

/// Writes the files of `outputs` (the output steps' results) as the folder `dir`, replacing
/// what was there as a whole.
pub fn materialise(
    store: &Store,
    outputs: &[&StepOutput],
    dir: &Path,
) -> Result<Vec<Written>, OutputError> {
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = dir
        .file_name()
        .ok_or_else(|| OutputError::Io {
            path: dir.to_path_buf(),
            source: std::io::Error::other("the output folder has no name"),
        })?
        .to_string_lossy()
        .into_owned();
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    remove_dead_staging(parent, &name);
    let state_path = state_path(store, parent, &name)?;
    let old: State = std::fs::read(&state_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let files: Vec<(&String, &imgspec_cache::FileRef, &StepOutput)> = outputs
        .iter()
        .flat_map(|o| o.files.iter().map(move |(n, r)| (n, r, *o)))
        .collect();
    let fresh: Vec<bool> = files
        .iter()
        .map(|(name, r, _)| {
            let current = file_state(&dir.join(name), Some(r.digest));
            current.is_some() && current == old.files.get(*name).cloned()
        })
        .collect();
    let mut sums: Vec<String> = files
        .iter()
        .filter_map(|(name, _, o)| {
            let s = o.meta.get(&format!("sha256:{name}"))?;
            Some(format!("{s}  {name}\n"))
        })
        .collect();
    sums.sort();
    let sums = sums.concat();
    let written = |fresh: &[bool]| -> Vec<Written> {
        files
            .iter()
            .zip(fresh)
            .map(|((name, _, o), &fresh)| Written {
                path: dir.join(name),
                sha256: o.meta.get(&format!("sha256:{name}")).cloned(),
                written: !fresh,
            })
            .collect()
    };
    // Nothing to do: every file as this imgspec left it, and no other output in the state.
    let same_names =
        old.files.len() == files.len() && files.iter().all(|(n, _, _)| old.files.contains_key(*n));
    let sums_path = dir.join("SHA256SUMS");
    if same_names
        && fresh.iter().all(|&f| f)
        && std::fs::read_to_string(&sums_path).ok().as_deref() == Some(sums.as_str())
    {
        link_into_store(store, &files, dir, &old);
        return Ok(written(&fresh));
    }

    let staging = Staging::new(parent, &name)?;
    files
        .par_iter()
        .zip(&fresh)
        .try_for_each(|((name, r, _), &fresh)| {
            let path = staging.path.join(name);
            // Still right: the same inode goes on (its state stays true); else a file this
            // build has just made is moved here, and one from the cache is restored.
            if fresh && std::fs::hard_link(dir.join(name), &path).is_ok() {
                return Ok(());
            }
            if store.take_fresh_file(&r.digest, &path) || store.restore_linked(&r.digest, &path) {
                return Ok(());
            }
            store.blob_to_file(&r.digest, &path)
        })?;
    let mut new = State::default();
    for (name, r, _) in &files {
        let path = staging.path.join(name);
        let st = file_state(&path, Some(r.digest)).ok_or_else(|| OutputError::Io {
            path: path.clone(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })?;
        new.files.insert((*name).clone(), st);
    }
    write_synced(&staging.path.join("SHA256SUMS"), sums.as_bytes())?;
    sync_dir(&staging.path)?;
    staging.swap_into(dir)?;
    sync_dir(parent)?;
    // The old folder goes now, and with it the store's links to the files it replaced.
    drop(staging);
    for (name, st) in &old.files {
        let Some(d) = st.digest else { continue };
        if new.files.get(name).is_some_and(|n| n.ino == st.ino) {
            continue;
        }
        store.unlink_output(&d, (st.ino, st.size, st.mtime_ns));
    }
    // After the swap: a state that is lost or stale only costs the next build a rewrite.
    let bytes = serde_json::to_vec_pretty(&new).unwrap_or_default();
    if let Some(d) = state_path.parent() {
        std::fs::create_dir_all(d).map_err(io(d))?;
    }
    let tmp = state_path.with_extension("imgspec-tmp");
    std::fs::write(&tmp, &bytes).map_err(io(&tmp))?;
    std::fs::rename(&tmp, &state_path).map_err(io(&state_path))?;
    link_into_store(store, &files, dir, &new);
    Ok(written(&fresh))
}

/// Lets the store take a hard link to each large file of the folder `dir` that is still as
/// `state` says (each held its blob's bytes then: checked or written in staging, or matched
/// the state), so that one deleted later comes back without a decompression
/// (`Store::restore_linked`).
fn link_into_store(
    store: &Store,
    files: &[(&String, &imgspec_cache::FileRef, &StepOutput)],
    dir: &Path,
    state: &State,
) {
    for (name, r, _) in files {
        let Some(st) = state
            .files
            .get(*name)
            .filter(|st| st.digest == Some(r.digest))
        else {
            continue;
        };
        store.link_output(&r.digest, &dir.join(name), (st.ino, st.size, st.mtime_ns));
    }
}

/// Where the cache keeps the state of the output folder `parent/name`: by the BLAKE3 of its
/// absolute path.
fn state_path(store: &Store, parent: &Path, name: &str) -> Result<PathBuf, OutputError> {
    let abs = std::fs::canonicalize(parent)
        .map_err(io(parent))?
        .join(name);
    let key = blake3::hash(abs.as_os_str().as_encoded_bytes());
    Ok(store
        .root()
        .join(STATE_DIR)
        .join(format!("{}.json", key.to_hex())))
}

const STAGING_NEW: &str = ".new-";
const STAGING_TMP: &str = ".tmp-";

/// The new `out/IMAGE/` while it is filled: `out/.IMAGE.tmp-XXXXXX`, its folder flock-ed by
/// this process (so a later build can tell a dead build's from a live one's), removed on drop
/// (after the swap, that is the old folder).
struct Staging {
    path: PathBuf,
    _lock: std::fs::File,
}

impl Staging {
    fn new(parent: &Path, name: &str) -> Result<Staging, OutputError> {
        // Made and locked under another name first: nobody sees a `.tmp-` folder unlocked.
        let made = tempfile::Builder::new()
            .prefix(&format!(".{name}{STAGING_NEW}"))
            .tempdir_in(parent)
            .map_err(io(parent))?;
        let lock = std::fs::File::open(made.path()).map_err(io(made.path()))?;
        imgspec_cache::try_lock_exclusive(&lock).map_err(io(made.path()))?;
        let suffix = made
            .path()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let suffix = suffix.rsplit(STAGING_NEW).next().unwrap_or_default();
        let path = parent.join(format!(".{name}{STAGING_TMP}{suffix}"));
        std::fs::rename(made.path(), &path).map_err(io(&path))?;
        let _ = made.keep();
        Ok(Staging { path, _lock: lock })
    }

    /// Puts this folder at `dir`: swapped with the old one in one step when there is one (the
    /// old one then lies here and goes on drop), else renamed.
    fn swap_into(&self, dir: &Path) -> Result<(), OutputError> {
        if std::fs::symlink_metadata(dir).is_err() {
            return std::fs::rename(&self.path, dir).map_err(io(dir));
        }
        match exchange(&self.path, dir) {
            Ok(()) => Ok(()),
            // A filesystem without RENAME_EXCHANGE: the old folder aside, then the new one in.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) => {
                let aside = self.path.with_extension("old");
                std::fs::rename(dir, &aside).map_err(io(dir))?;
                std::fs::rename(&self.path, dir).map_err(io(dir))?;
                std::fs::rename(&aside, &self.path).map_err(io(&aside))
            }
            Err(e) => Err(io(dir)(e)),
        }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Swaps two paths atomically (`renameat2` with `RENAME_EXCHANGE`).
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
    };
    let (a, b) = (c(a)?, c(b)?);
    // SAFETY: two NUL-terminated paths that live across the call.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Removes the staging folders of `name` that a killed build left: a `.tmp-` folder whose
/// lock is free, and a `.new-` one (never locked yet) older than an hour.
fn remove_dead_staging(parent: &Path, name: &str) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    let (tmp, new) = (
        format!(".{name}{STAGING_TMP}"),
        format!(".{name}{STAGING_NEW}"),
    );
    for e in entries.flatten() {
        let file_name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        let dead = if file_name.starts_with(&tmp) {
            std::fs::File::open(&path)
                .and_then(|f| imgspec_cache::try_lock_exclusive(&f))
                .unwrap_or(false)
        } else if file_name.starts_with(&new) {
            std::fs::symlink_metadata(&path)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().unwrap_or_default().as_secs() > 3600)
        } else {
            false
        };
        if dead {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), OutputError> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).map_err(io(path))?;
    f.write_all(bytes).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

fn sync_dir(dir: &Path) -> Result<(), OutputError> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io(dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use imgspec_cache::FileRef;

    fn output(store: &Store, name: &str, content: &[u8]) -> (StepOutput, FileRef) {
        let r = store.put_bytes(content).unwrap();
        let mut o = StepOutput::default();
        o.files.insert(name.into(), r.clone());
        o.meta
            .insert(format!("sha256:{name}"), format!("sum-of-{name}"));
        (o, r)
    }

    fn listing(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_failure_leaves_the_old_folder_whole_and_no_staging_behind() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(&tmp.path().join("cache")).unwrap();
        let out = tmp.path().join("out");
        let dir = out.join("img");
        let (a, _) = output(&store, "img.raw", b"first disk");
        let (b, _) = output(&store, "img.tar", b"first tree");
        materialise(&store, &[&a, &b], &dir).unwrap();
        let before = listing(&dir);
        assert_eq!(
            before.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            ["SHA256SUMS", "img.raw", "img.tar"]
        );

        // The next build's tar blob is damaged: the raw file would be written, the tar not.
        let (a2, _) = output(&store, "img.raw", b"second disk");
        let (b2, r2) = output(&store, "img.tar", b"second tree");
        let path = store.blob_path(&r2.digest);
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, zstd::encode_all(&b"other bytes"[..], 3).unwrap()).unwrap();
        let err = materialise(&store, &[&a2, &b2], &dir).unwrap_err();
        assert_eq!(err.damaged_blob(), Some(r2.digest), "{err:?}");
        assert_eq!(listing(&dir), before, "the old folder is untouched");
        let names: Vec<_> = std::fs::read_dir(&out)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, ["img"], "no staging folder is left");

        // Repaired: the new folder replaces the old one as a whole.
        std::fs::remove_file(&path).unwrap();
        store.put_bytes(b"second tree").unwrap();
        let w = materialise(&store, &[&a2, &b2], &dir).unwrap();
        assert!(w.iter().all(|w| w.written));
        let after = listing(&dir);
        assert!(after.contains(&("img.raw".into(), b"second disk".to_vec())));
        assert!(after.contains(&("img.tar".into(), b"second tree".to_vec())));
        // And a build with nothing changed touches nothing.
        let w = materialise(&store, &[&a2, &b2], &dir).unwrap();
        assert!(w.iter().all(|w| !w.written));
    }
}
