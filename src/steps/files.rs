//! `files "overlay/" dest="/"`: copies a folder of the spec's into the image tree.
//!
//! Makes: the input tree with the folder's content laid at `dest` (modes kept, owned by root,
//! mtimes clamped to the image epoch), paths resolved through the image's own symlinks so that
//! nothing lands outside the image root; a directory of the folder over a link to a directory
//! in the image (`bin/` over `bin -> usr/bin`) goes through the link and keeps it.
//!
//! Key: input tree key; `dest`; for every entry of the folder, in path order, a `file` part
//! named by its relative path whose value is its type, mode and content digest (or link target).
//! The folder's own location is not hashed: moving the spec elsewhere keeps the cache.

use std::path::{Path, PathBuf};

use imgspec_cache::StepOutput;

use super::tree::Tree;
use super::{FactError, Facts, StepContext, StepError};
use crate::key::KeyBuilder;

/// 2: an overlay directory goes through the image's link to a directory instead of replacing
/// it (`bin/hello` over `bin -> usr/bin`), which changes the result of such overlays.
pub const VERSION: u32 = 2;

#[derive(Clone, Debug)]
pub struct FilesStep {
    pub source: PathBuf,
    pub dest: String,
}

impl FilesStep {
    pub fn hash(&self, k: &mut KeyBuilder, facts: &dyn Facts) -> Result<(), FactError> {
        k.param("dest", &self.dest);
        for (rel, desc) in describe_dir(&self.source, facts)? {
            k.file(&rel, &desc);
        }
        Ok(())
    }

    pub fn run(&self, ctx: &StepContext) -> Result<StepOutput, StepError> {
        let (_, base) = ctx.input_tree(0)?;
        let overlay = ctx.store.import_dir(&self.source, &ctx.import_options())?;
        let mut tree = Tree::new(base);
        tree.overlay(overlay, &self.dest)?;
        ctx.tree_output(&tree.into_manifest())
    }
}

/// Every entry below `dir` (not following symlinks), sorted by relative path, with a
/// description of what it is: `dir 755`, `file 644 <digest>`, `link -> target`.
pub fn describe_dir(dir: &Path, facts: &dyn Facts) -> Result<Vec<(String, String)>, FactError> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let full = dir.join(&rel);
        let io = |source| FactError::Io {
            path: full.clone(),
            source,
        };
        for entry in std::fs::read_dir(&full).map_err(io)? {
            let entry = entry.map_err(io)?;
            let path = entry.path();
            let rel = rel.join(entry.file_name());
            let meta = std::fs::symlink_metadata(&path).map_err(|source| FactError::Io {
                path: path.clone(),
                source,
            })?;
            let mode = meta.permissions().mode() & 0o7777;
            let ft = meta.file_type();
            let desc = if ft.is_dir() {
                stack.push(rel.clone());
                format!("dir {mode:o}")
            } else if ft.is_symlink() {
                let t = std::fs::read_link(&path).map_err(|source| FactError::Io {
                    path: path.clone(),
                    source,
                })?;
                format!("link -> {}", t.display())
            } else if ft.is_file() {
                let d = super::file_digest(facts, &path)?;
                format!("file {mode:o} {d}")
            } else if ft.is_fifo() {
                format!("fifo {mode:o}")
            } else {
                format!("special {mode:o}")
            };
            out.push((rel.to_string_lossy().into_owned(), desc));
        }
    }
    out.sort();
    Ok(out)
}
