//! Puts a build's output files in `out/IMAGE/`, with `SHA256SUMS` beside them.
//!
//! `out/IMAGE/` holds only the artifacts and `SHA256SUMS`: what users checksum and publish as a
//! folder. The build's own state lives in the cache (`outputs-v1/<BLAKE3 of the folder's
//! absolute path>.json`): the digest, size, mtime and inode of each file imgspec wrote there. A
//! file whose metadata still matches is left alone (a no-op build reads no output file and
//! writes nothing); a missing or touched one is restored from the store, which costs about one
//! file copy. A `.imgspec-state.json` an older imgspec left in the folder is removed. Files are written to a temporary name and renamed into place,
//! all of them at once (a raw disk and its qcow2 decompress on different cores). A file that
//! an output step of this very build has just written is moved here from the store's
//! session folder instead (`Store::take_fresh_file`): no decompression, no copy.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use imgspec_cache::{BlobDigest, StepOutput, Store, StoreError};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// The state file older versions kept in the output folder itself.
const OLD_STATE: &str = ".imgspec-state.json";
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

/// Writes the files of `outputs` (the output steps' results) into `dir`.
pub fn materialise(
    store: &Store,
    outputs: &[&StepOutput],
    dir: &Path,
) -> Result<Vec<Written>, OutputError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let state_path = state_path(store, dir)?;
    let old: State = std::fs::read(&state_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let legacy = dir.join(OLD_STATE);
    if legacy.exists() {
        std::fs::remove_file(&legacy).map_err(io(&legacy))?;
    }
    let mut new = State::default();
    let mut written = Vec::new();
    let mut sums = Vec::new();
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
    files
        .par_iter()
        .zip(&fresh)
        .filter(|(_, fresh)| !**fresh)
        .try_for_each(|((name, r, _), _)| {
            // A file this build has just made is moved here; one from the cache is restored.
            let path = dir.join(name);
            if store.take_fresh_file(&r.digest, &path) {
                return Ok(());
            }
            store.blob_to_file(&r.digest, &path)
        })?;
    for ((name, r, o), &fresh) in files.into_iter().zip(&fresh) {
        {
            let path = dir.join(name);
            let st = file_state(&path, Some(r.digest)).ok_or_else(|| OutputError::Io {
                path: path.clone(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            })?;
            new.files.insert(name.clone(), st);
            let sha = o.meta.get(&format!("sha256:{name}")).cloned();
            if let Some(s) = &sha {
                sums.push(format!("{s}  {name}\n"));
            }
            written.push(Written {
                path,
                sha256: sha,
                written: !fresh,
            });
        }
    }
    // Files this directory had from an earlier build that are no longer outputs.
    for name in old.files.keys() {
        if !new.files.contains_key(name) && name != "SHA256SUMS" {
            let _ = std::fs::remove_file(dir.join(name));
        }
    }
    sums.sort();
    let sums_path = dir.join("SHA256SUMS");
    let text = sums.concat();
    if std::fs::read_to_string(&sums_path).ok().as_deref() != Some(text.as_str()) {
        write_atomic(&sums_path, text.as_bytes())?;
    }
    let bytes = serde_json::to_vec_pretty(&new).unwrap_or_default();
    if std::fs::read(&state_path).ok().as_deref() != Some(bytes.as_slice()) {
        let parent = state_path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(io(parent))?;
        write_atomic(&state_path, &bytes)?;
    }
    Ok(written)
}

/// Where the cache keeps the state of output folder `dir` (which exists): keyed by its
/// absolute, symlink-free path, so two folders never share a state and the same folder reached
/// another way finds its own.
fn state_path(store: &Store, dir: &Path) -> Result<PathBuf, OutputError> {
    let abs = std::fs::canonicalize(dir).map_err(io(dir))?;
    let key = blake3::hash(abs.as_os_str().as_encoded_bytes());
    Ok(store
        .root()
        .join(STATE_DIR)
        .join(format!("{}.json", key.to_hex())))
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), OutputError> {
    let tmp = path.with_extension("imgspec-tmp");
    std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}
