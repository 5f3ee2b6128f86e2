//! The local repository of locked `.deb` files: the cache's `debs-v1/` folder ([`DEBS_DIR`],
//! the one place that names it), files by SHA-256, fetched from the mirror ([`crate::fetch`]) when a
//! locked build lacks them, removed by `cache gc SPEC…` when no lock or step result names them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The cache's folder of locked `.deb` files (layout version 1).
pub const DEBS_DIR: &str = "debs-v1";

/// The `.deb` files of locked packages, in the cache by SHA-256:
/// `<cache>/debs-v1/<first two hex digits>/<sha256>.deb`, each with its control fields
/// (`dpkg-deb -f`) beside it as `<sha256>.control`.
pub struct DebStore {
    dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum DebError {
    #[error("I/O error on `{}`", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A locked file could not be fetched.
    #[error(transparent)]
    Fetch(#[from] crate::fetch::FetchError),
}

pub(super) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DebError + '_ {
    move |source| DebError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl DebStore {
    /// The deb store of the cache at `cache_root`.
    pub fn new(cache_root: &Path) -> DebStore {
        DebStore {
            dir: cache_root.join(DEBS_DIR),
        }
    }

    pub fn path(&self, sha256: &str) -> PathBuf {
        self.dir
            .join(&sha256[..2.min(sha256.len())])
            .join(format!("{sha256}.deb"))
    }

    pub fn control_path(&self, sha256: &str) -> PathBuf {
        self.path(sha256).with_extension("control")
    }

    pub fn has(&self, sha256: &str) -> bool {
        self.path(sha256).is_file()
    }

    /// Moves (or copies) `src` into the store; returns its SHA-256 and size.
    pub fn put(&self, src: &Path) -> Result<(String, u64), DebError> {
        let (sha, size) = sha256_file(src)?;
        let dest = self.path(&sha);
        if dest.is_file() {
            return Ok((sha, size));
        }
        let parent = dest.parent().expect("a deb path has a parent");
        std::fs::create_dir_all(parent).map_err(io(parent))?;
        let tmp = parent.join(format!(".{sha}.{}.tmp", std::process::id()));
        if std::fs::hard_link(src, &tmp).is_err() {
            std::fs::copy(src, &tmp).map_err(io(&tmp))?;
        }
        std::fs::rename(&tmp, &dest).map_err(io(&dest))?;
        Ok((sha, size))
    }

    /// Downloads `url` into the store, checking that its SHA-256 is `sha256` and trying again
    /// while the failure may pass ([`crate::fetch`]); `done` hears the bytes as they come.
    pub fn fetch(&self, url: &str, sha256: &str, done: &dyn Fn(u64)) -> Result<(), DebError> {
        Ok(crate::fetch::fetch(url, sha256, &self.path(sha256), done)?)
    }
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn sha256_file(path: &Path) -> Result<(String, u64), DebError> {
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let mut h = Sha256::new();
    let n = std::io::copy(&mut f, &mut h).map_err(io(path))?;
    Ok((hex(&h.finalize()), n))
}

impl DebStore {
    /// Removes the `.deb` files (and their control fields) whose SHA-256 is not in `keep`.
    /// Returns how many files went and their bytes.
    pub fn gc(&self, keep: &BTreeSet<String>) -> (usize, u64) {
        let (mut n, mut bytes) = (0, 0);
        let Ok(shards) = std::fs::read_dir(&self.dir) else {
            return (0, 0);
        };
        for shard in shards.flatten() {
            let Ok(files) = std::fs::read_dir(shard.path()) else {
                continue;
            };
            for f in files.flatten() {
                let p = f.path();
                if p.extension().is_none_or(|e| e != "deb") {
                    continue;
                }
                let sha = p
                    .file_stem()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned();
                if keep.contains(&sha) {
                    continue;
                }
                let size = f.metadata().map(|m| m.len()).unwrap_or(0);
                if std::fs::remove_file(&p).is_ok() {
                    let _ = std::fs::remove_file(p.with_extension("control"));
                    n += 1;
                    bytes += size;
                }
            }
        }
        (n, bytes)
    }
}
