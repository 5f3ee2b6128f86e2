//! `element "NAME" [param=value ...]`: runs one of the built-in elements of [`crate::element`]
//! (where each is defined, its parameters read when the spec is read, and what it writes said)
//! on the input tree.
//!
//! Makes: the input tree with the element's edits. An element that only edits files is applied
//! to the tree's manifest in memory ([`TreeImage`]): no chroot, no root needed. One that runs a
//! command in the image (`locale` for a locale glibc does not have built in) is applied to a
//! chroot of the tree ([`Session`]), so it needs root.
//!
//! The packages an element needs are not installed here: the plan adds them to the image's
//! first package set (or to a set of their own right after the base when the first set comes
//! after the element), so that they are installed by apt with the rest, and images that differ
//! only in later layers share that layer.
//!
//! Key: input tree key; `element` (the name); `element-version` (the element's own version,
//! [`crate::element::Definition::version`], bumped when what that element writes changes, so
//! that changing one element does not send the others' layers cold); then `param:NAME` for
//! each parameter given, sorted by name, as written (an integer as its decimal text). A default
//! written out gives another key (and the same tree).

use imgspec_cache::{EntryKind, StepOutput, Store};

use super::chroot::Session;
use super::tree::Tree;
use super::{FactError, StepContext, StepError};
use crate::element::{Configured, Failure, ImageTree};
use crate::key::KeyBuilder;
use crate::tools::Tool;

/// Version of the `element` kind (the key's layout); each element has its own as well.
pub const VERSION: u32 = 1;

#[derive(Clone, Debug)]
pub struct ElementStep {
    pub element: Configured,
}

impl ElementStep {
    pub fn hash(&self, k: &mut KeyBuilder) -> Result<(), FactError> {
        k.param("element", self.element.name()).param(
            "element-version",
            &self.element.definition.version.to_string(),
        );
        for (name, value) in &self.element.params {
            k.param(&format!("param:{name}"), value);
        }
        Ok(())
    }

    /// Only elements that run a command in the image chroot.
    pub fn needs_root(&self) -> bool {
        self.element.element().chroot().is_some()
    }

    pub fn tools(&self) -> Vec<Tool> {
        if self.needs_root() {
            super::chroot::TOOLS.to_vec()
        } else {
            vec![]
        }
    }

    /// For people: `element hostname name=web1`.
    pub fn label(&self) -> String {
        let mut s = format!("element {}", self.element.name());
        for (k, v) in &self.element.params {
            s.push_str(&format!(" {k}={v}"));
        }
        s
    }

    pub fn run(&self, ctx: &StepContext) -> Result<StepOutput, StepError> {
        let name = self.element.name();
        let element = self.element.element();
        let (_, m) = ctx.input_tree(0)?;
        let mut tree = Tree::new(m);
        match element.chroot() {
            Some(why) => {
                let mut image = ChrootImage {
                    ctx,
                    tree: &tree,
                    why,
                    session: None,
                    pending: Vec::new(),
                };
                element.apply(&mut image).map_err(|e| step_error(e, name))?;
                let s = match image.session.take() {
                    Some(s) => s,
                    None => image.open().map_err(|e| step_error(e, name))?,
                };
                let m = s.close_and_keep(ctx).map_err(|e| in_element(e, name))?;
                ctx.tree_output(&m)
            }
            None => {
                element
                    .apply(&mut TreeImage::new(&mut tree, ctx.store, ctx.epoch))
                    .map_err(|e| step_error(e, name))?;
                ctx.tree_output(&tree.into_manifest())
            }
        }
    }
}

/// The step's error for an element's failure: the tree's own error as it was, or the image's
/// problem; an invalid input is said to be the element's.
fn step_error(f: Failure, name: &str) -> StepError {
    let e = match f {
        Failure::Image(m) => StepError::Invalid(m),
        Failure::Tree(e) => match e.downcast::<StepError>() {
            Ok(e) => *e,
            Err(e) => StepError::Invalid(e.to_string()),
        },
    };
    in_element(e, name)
}

fn in_element(e: StepError, name: &str) -> StepError {
    match e {
        StepError::Invalid(m) => StepError::Invalid(format!("element `{name}`: {m}")),
        e => e,
    }
}

fn tree_failure(e: StepError) -> Failure {
    Failure::Tree(Box::new(e))
}

/// The image of an element that only edits files: the tree's manifest, edited in memory (new
/// files stored as blobs), every entry written owned by root at `epoch`.
pub struct TreeImage<'a> {
    tree: &'a mut Tree,
    store: &'a Store,
    epoch: i64,
}

impl<'a> TreeImage<'a> {
    pub fn new(tree: &'a mut Tree, store: &'a Store, epoch: i64) -> Self {
        TreeImage { tree, store, epoch }
    }
}

/// Reads of the input tree, for both images.
fn read(tree: &Tree, store: &Store, path: &str) -> Result<Option<Vec<u8>>, Failure> {
    tree.read(store, path).map_err(tree_failure)
}

fn is_file(tree: &Tree, path: &str) -> bool {
    tree.resolve(path, true).is_ok_and(|p| {
        matches!(
            tree.entries.get(&p).map(|e| &e.kind),
            Some(EntryKind::File { .. } | EntryKind::Hardlink { .. })
        )
    })
}

fn mode(tree: &Tree, path: &str) -> Option<u32> {
    tree.resolve(path, true)
        .ok()
        .and_then(|p| tree.entries.get(&p).map(|e| e.mode))
}

impl ImageTree for TreeImage<'_> {
    fn read(&self, path: &str) -> Result<Option<Vec<u8>>, Failure> {
        read(self.tree, self.store, path)
    }

    fn is_file(&self, path: &str) -> bool {
        is_file(self.tree, path)
    }

    fn mode(&self, path: &str) -> Option<u32> {
        mode(self.tree, path)
    }

    fn write(&mut self, path: &str, content: &[u8], mode: u32) -> Result<(), Failure> {
        self.tree
            .put_file(self.store, path, content, mode, self.epoch)
            .map_err(tree_failure)
    }

    fn symlink(&mut self, path: &str, target: &str) -> Result<(), Failure> {
        self.tree
            .put_symlink(path, target, self.epoch)
            .map_err(tree_failure)
    }

    fn run(&mut self, _: &str) -> Result<(), Failure> {
        Err(tree_failure(StepError::Internal(
            "an element that does not say it needs a chroot ran a command",
        )))
    }
}

/// The image of an element that runs a command in it: reads see the input tree; writes wait
/// until the chroot is opened (at the first command, or at the end), then go into it; the
/// result is the chroot's tree, imported (owners and mtimes as the import sets them). A file
/// is written where the path's last link points (as `locale` has always written
/// `/etc/locale.gen`), a link replaces what is at the path.
struct ChrootImage<'a, 'c> {
    ctx: &'a StepContext<'c>,
    tree: &'a Tree,
    why: &'static str,
    session: Option<Session>,
    /// What to write when the chroot opens.
    pending: Vec<Pending>,
}

/// A write waiting for the chroot, its path already resolved in the tree.
enum Pending {
    /// Path, content, mode.
    File(String, Vec<u8>, u32),
    /// Path, target.
    Link(String, String),
}

impl ChrootImage<'_, '_> {
    /// Materialises the input tree and writes what is pending into it.
    fn open(&mut self) -> Result<Session, Failure> {
        let s = Session::open(self.ctx, 0, self.why).map_err(tree_failure)?;
        for p in std::mem::take(&mut self.pending) {
            match p {
                Pending::File(rel, content, mode) => write_into(&s, &rel, &content, mode),
                Pending::Link(rel, target) => link_into(&s, &rel, &target),
            }
            .map_err(tree_failure)?;
        }
        Ok(s)
    }
}

/// Replaces the file at `rel` (already resolved in the tree) of the chroot's root.
fn write_into(s: &Session, rel: &str, content: &[u8], mode: u32) -> Result<(), StepError> {
    use std::os::unix::fs::PermissionsExt;
    let p = s.root.join(rel);
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).map_err(StepError::io(d))?;
    }
    let _ = std::fs::remove_file(&p);
    std::fs::write(&p, content).map_err(StepError::io(&p))?;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).map_err(StepError::io(&p))
}

/// Replaces what is at `rel` (already resolved in the tree) of the chroot's root with a link.
fn link_into(s: &Session, rel: &str, target: &str) -> Result<(), StepError> {
    let p = s.root.join(rel);
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).map_err(StepError::io(d))?;
    }
    let _ = std::fs::remove_file(&p);
    std::os::unix::fs::symlink(target, &p).map_err(StepError::io(&p))
}

impl ImageTree for ChrootImage<'_, '_> {
    fn read(&self, path: &str) -> Result<Option<Vec<u8>>, Failure> {
        read(self.tree, self.ctx.store, path)
    }

    fn is_file(&self, path: &str) -> bool {
        is_file(self.tree, path)
    }

    fn mode(&self, path: &str) -> Option<u32> {
        mode(self.tree, path)
    }

    fn write(&mut self, path: &str, content: &[u8], mode: u32) -> Result<(), Failure> {
        let rel = self.tree.resolve(path, true).map_err(tree_failure)?;
        match &self.session {
            Some(s) => write_into(s, &rel, content, mode).map_err(tree_failure),
            None => {
                self.pending
                    .push(Pending::File(rel, content.to_vec(), mode));
                Ok(())
            }
        }
    }

    fn symlink(&mut self, path: &str, target: &str) -> Result<(), Failure> {
        let rel = self.tree.resolve(path, false).map_err(tree_failure)?;
        match &self.session {
            Some(s) => link_into(s, &rel, target).map_err(tree_failure),
            None => {
                self.pending.push(Pending::Link(rel, target.to_string()));
                Ok(())
            }
        }
    }

    fn run(&mut self, script: &str) -> Result<(), Failure> {
        let s = match self.session.take() {
            Some(s) => s,
            None => self.open()?,
        };
        let ran = s.run(self.ctx, script).map_err(tree_failure);
        self.session = Some(s);
        ran
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_has_name_version_and_sorted_params() {
        let e = ElementStep {
            element: Configured::new(
                "serial-console",
                [("speed", "9600"), ("port", "ttyS1")]
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .into(),
            )
            .unwrap(),
        };
        let mut k = KeyBuilder::new("element", VERSION);
        e.hash(&mut k).unwrap();
        let parts: Vec<(String, String)> = k
            .finish()
            .1
            .into_iter()
            .map(|p| (p.name, p.value))
            .collect();
        assert_eq!(
            parts,
            [
                ("element".to_string(), "serial-console".to_string()),
                ("element-version".into(), "1".into()),
                ("param:port".into(), "ttyS1".into()),
                ("param:speed".into(), "9600".into()),
            ]
        );
        assert_eq!(e.label(), "element serial-console port=ttyS1 speed=9600");
    }
}
