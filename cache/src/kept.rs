//! Materialised trees kept between chroot steps, and between builds: `trees-v1/`.
//!
//! A step that runs commands in the image needs its input tree as a real folder, and exporting
//! one from the blobs costs seconds (a Debian system: 25k inodes, 600 MB decompressed; most of
//! it the host filesystem allocating inodes). So the folder a chroot step leaves, which holds
//! exactly the tree it imported, is kept in the store ([`Store::keep_tree`]), and the next step
//! that needs a tree takes it ([`Store::take_tree`]): the one of its own input tree when there
//! is one (the next step of the same build), otherwise the kept tree closest to it, patched by
//! the difference of the two manifests (the next build, after one file changed above it). Only
//! when none is close enough is the tree exported again.
//!
//! ```text
//! trees-v1/                  mode 0700: a tree holds the image's set-id programs and devices
//!   <tree digest>/           one kept tree; at most KEPT_TREES, the oldest removed first
//!     root/                  the tree, exactly as `export_dir` would write it, times included
//!     manifest               its manifest's canonical bytes (their BLAKE3 is the folder's name)
//!     stamps                 what each entry's inode showed once kept (see below)
//! ```
//!
//! Why a kept tree can be trusted: nothing writes below `trees-v1/` but the rename that puts a
//! whole folder there, and a folder is taken by renaming it away, so two builds never take the
//! same one. Against anything else (a person, a crash of the disk): `stamps` holds, for every
//! entry in manifest order, its inode, size, mode, owner, mtime and ctime right after it was
//! kept. The kernel sets an inode's ctime to the current time on every change of its content or
//! metadata, and a directory's on every entry added or removed, and nothing but the system
//! clock can set it back; so a tree whose stamps all still match is the tree its manifest
//! says. The root's own ctime is not compared (each rename of the folder sets it). A tree that
//! fails the check is removed, never used.
//!
//! A patch (`Patch`) removes what the new manifest does not have, writes what it has anew, and
//! sets again the metadata of the directories whose entries changed, as an export would. It
//! declines (and the tree is exported instead) where it could not give exactly what an export
//! gives: hard links among the changes, a directory whose xattrs changed, an entry to make in
//! a folder with a default ACL (it would inherit it), or more than half of the entries changed (exporting is then as
//! quick).

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::tree::{at, parent};
use crate::{
    sys, Checkout, Entry, EntryKind, Result, Store, StoreError, TreeChange, TreeDigest,
    TreeManifest,
};

/// The folder of kept trees, under the store's root.
pub const KEPT_DIR: &str = "trees-v1";
/// Kept trees at most; the oldest is removed first. Two: a build's chroot steps hand one on,
/// and two images built at once each keep theirs.
pub const KEPT_TREES: usize = 2;

/// The xattr of a folder's default ACL, which what is made in it inherits.
const DEFAULT_ACL: &str = "system.posix_acl_default";

const STAMPS_MAGIC: &[u8; 16] = b"imgspec-kept-v1\n";

/// How [`Store::take_tree`] got the tree it materialised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Taken {
    /// The kept tree of this very manifest.
    Exact,
    /// The kept tree of another manifest, patched: `changes` entries differed.
    Patched { from: TreeDigest, changes: usize },
}

/// One entry's inode as kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mark {
    ino: u64,
    size: u64,
    mode: u32,
    owner: (u32, u32),
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Mark {
    fn of(m: &fs::Metadata, is_root: bool) -> Mark {
        Mark {
            ino: m.ino(),
            size: if m.is_dir() { 0 } else { m.size() },
            mode: m.mode(),
            owner: (m.uid(), m.gid()),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: if is_root {
                (0, 0)
            } else {
                (m.ctime(), m.ctime_nsec())
            },
        }
    }

    const BYTES: usize = 8 * 8;

    fn encode(&self, out: &mut Vec<u8>) {
        for v in [
            self.ino as i64,
            self.size as i64,
            i64::from(self.mode),
            (i64::from(self.owner.0) << 32) | i64::from(self.owner.1),
            self.mtime.0,
            self.mtime.1,
            self.ctime.0,
            self.ctime.1,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
}

/// The stamps of the tree at `root`, which holds exactly `m`: device, then each entry's mark.
fn stamps(root: &Path, m: &TreeManifest) -> Result<Vec<u8>> {
    let dev = fs::symlink_metadata(root)
        .map_err(StoreError::io(root))?
        .dev();
    let marks = m
        .entries
        .par_iter()
        .map(|e| {
            let p = at(root, &e.path);
            let meta = fs::symlink_metadata(&p).map_err(StoreError::io(&p))?;
            Ok(Mark::of(&meta, e.path.is_empty()))
        })
        .collect::<Result<Vec<Mark>>>()?;
    let mut out = Vec::with_capacity(32 + marks.len() * Mark::BYTES);
    out.extend_from_slice(STAMPS_MAGIC);
    out.extend_from_slice(&dev.to_le_bytes());
    out.extend_from_slice(&(marks.len() as u64).to_le_bytes());
    for mk in &marks {
        mk.encode(&mut out);
    }
    Ok(out)
}

/// Whether the tree at `root` still is what `recorded` (its stamps when kept) says.
fn still_as_kept(root: &Path, m: &TreeManifest, recorded: &[u8]) -> bool {
    let header = STAMPS_MAGIC.len() + 16;
    if recorded.len() != header + m.entries.len() * Mark::BYTES
        || &recorded[..STAMPS_MAGIC.len()] != STAMPS_MAGIC
    {
        return false;
    }
    let Ok(now) = stamps(root, m) else {
        return false;
    };
    now == recorded
}

/// The changes that turn a materialised `from` into `to`, when a patch can give exactly what
/// an export of `to` gives.
struct Patch<'a> {
    /// Paths to remove, deepest first.
    remove: Vec<String>,
    /// Entries of `to` to write anew, in manifest order.
    create: Vec<&'a Entry>,
    /// Directories of `to` whose metadata is set again (changed, or an entry of theirs was),
    /// in manifest order.
    redo: Vec<&'a Entry>,
    changes: usize,
}

impl<'a> Patch<'a> {
    fn plan(from: &TreeManifest, to: &'a TreeManifest) -> Option<Patch<'a>> {
        let changes = crate::diff(from, to);
        if changes.len() * 2 > to.entries.len() {
            return None;
        }
        // Paths that are, or are the target of, a hard link: a new inode would split them.
        let linked: HashSet<&str> = from
            .entries
            .iter()
            .chain(&to.entries)
            .filter_map(|e| match &e.kind {
                EntryKind::Hardlink { target } => Some([e.path.as_str(), target.as_str()]),
                _ => None,
            })
            .flatten()
            .collect();
        let dir_of_to = |p: &str| to.get(p).filter(|e| e.kind == EntryKind::Dir);
        let mut patch = Patch {
            remove: Vec::new(),
            create: Vec::new(),
            redo: Vec::new(),
            changes: changes.len(),
        };
        let mut touched: Vec<String> = Vec::new();
        for c in &changes {
            let path = match c {
                TreeChange::Added(e) | TreeChange::Removed(e) => &e.path,
                TreeChange::Changed { new, .. } => &new.path,
            };
            if linked.contains(path.as_str()) {
                return None;
            }
            match c {
                TreeChange::Changed { old, new }
                    if old.kind == EntryKind::Dir && new.kind == EntryKind::Dir =>
                {
                    if old.xattrs != new.xattrs {
                        return None;
                    }
                    patch.redo.push(dir_of_to(&new.path)?);
                }
                TreeChange::Changed { .. } => {
                    patch.remove.push(path.clone());
                    patch.create.push(to.get(path)?);
                    touched.push(path.clone());
                }
                TreeChange::Removed(_) => {
                    patch.remove.push(path.clone());
                    touched.push(path.clone());
                }
                TreeChange::Added(_) => {
                    patch.create.push(to.get(path)?);
                    touched.push(path.clone());
                }
            }
        }
        for p in &touched {
            let Some(dir) = parent(p) else { continue };
            match dir_of_to(dir) {
                // What is made in a folder with a default ACL inherits it, where an export
                // (which sets xattrs after making everything) gives none.
                Some(d) if d.xattrs.contains_key(DEFAULT_ACL) && to.get(p).is_some() => {
                    return None
                }
                Some(d) => patch.redo.push(d),
                // Every new entry's parent is a listed directory of `to` (an export would
                // create an unlisted one with other metadata); a removed one's may be gone.
                None if to.get(p).is_some() => return None,
                None => {}
            }
        }
        patch.remove.sort_unstable_by(|a, b| b.cmp(a));
        patch.redo.sort_by(|a, b| a.path.cmp(&b.path));
        patch.redo.dedup_by(|a, b| a.path == b.path);
        Some(patch)
    }

    fn apply(&self, store: &Store, to: &TreeManifest, dest: &Path) -> Result<()> {
        for rel in &self.remove {
            let p = at(dest, rel);
            let gone = match fs::symlink_metadata(&p) {
                Ok(m) if m.is_dir() => fs::remove_dir_all(&p),
                Ok(_) => fs::remove_file(&p),
                Err(e) => Err(e),
            };
            match gone {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::Io { path: p, source: e }),
            }
        }
        let listed: HashSet<&str> = to.entries.iter().map(|e| e.path.as_str()).collect();
        store.export_entries(&self.create, &listed, dest)?;
        let root = sys::is_root();
        for e in self.redo.iter().rev() {
            let p = at(dest, &e.path);
            if root {
                std::os::unix::fs::lchown(&p, Some(e.uid), Some(e.gid))
                    .map_err(StoreError::io(&p))?;
            }
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&p, fs::Permissions::from_mode(e.mode))
                .map_err(StoreError::io(&p))?;
            sys::set_times_nofollow(&p, e.mtime).map_err(StoreError::io(&p))?;
        }
        Ok(())
    }
}

/// A folder's name under `trees-v1/` as the digest it stands for.
fn digest_of_name(name: &std::ffi::OsStr) -> Option<TreeDigest> {
    let s = name.to_str()?;
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    TreeDigest::parse_hex(s)
}

/// Removes `dir` on a thread of its own: a kept tree is tens of thousands of inodes, and
/// nobody waits for them to go. What is left when the process ends goes with its session.
fn remove_later(dir: PathBuf) {
    let spawned = std::thread::Builder::new()
        .name("imgspec-kept-rm".into())
        .spawn({
            let dir = dir.clone();
            move || {
                let _ = fs::remove_dir_all(dir);
            }
        });
    if spawned.is_err() {
        let _ = fs::remove_dir_all(dir);
    }
}

impl Store {
    fn kept_dir(&self) -> PathBuf {
        self.root.join(KEPT_DIR)
    }

    /// The kept trees, oldest first.
    fn kept(&self) -> Vec<(TreeDigest, PathBuf)> {
        let Ok(rd) = fs::read_dir(self.kept_dir()) else {
            return Vec::new();
        };
        let mut v: Vec<(std::time::SystemTime, TreeDigest, PathBuf)> = rd
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let d = digest_of_name(&e.file_name())?;
                let t = e.metadata().ok()?.modified().ok()?;
                Some((t, d, e.path()))
            })
            .collect();
        v.sort();
        v.into_iter().map(|(_, d, p)| (d, p)).collect()
    }

    /// A unique new name in this session's folder.
    fn session_name(&self, what: &str) -> PathBuf {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        self.session
            .join(format!("{what}-{}", N.fetch_add(1, Ordering::Relaxed)))
    }

    /// Keeps `dir`, a folder just imported as `m`, for [`Store::take_tree`]: the next chroot
    /// step, of this build or a later one, starts from it instead of exporting its tree. First
    /// it is made exactly what `export_dir` would write: every time set to the manifest's (the
    /// import clamped mtimes, the disk still has the command's). A folder holding anything the
    /// manifest does not list (a socket, another filesystem's content) is not kept, nor is one
    /// when not running as root (an export then skips owners). Returns whether it was taken:
    /// `dir` is gone if so. At most [`KEPT_TREES`] are kept, the oldest removed first.
    pub fn keep_tree(&self, dir: &Path, m: &TreeManifest) -> Result<bool> {
        if !sys::is_root() {
            return Ok(false);
        }
        let d = self.put_manifest(m)?;
        let kept_dir = self.kept_dir();
        if kept_dir.join(d.to_hex()).exists() {
            return Ok(false);
        }
        // Everything on disk is listed (the import walked the same folder, so listed
        // entries are all there unless something raced it).
        let listed: HashSet<&str> = m.entries.iter().map(|e| e.path.as_str()).collect();
        let dev = fs::symlink_metadata(dir)
            .map_err(StoreError::io(dir))?
            .dev();
        let mut count = 1;
        let mut stack = vec![(String::new(), dir.to_path_buf())];
        while let Some((rel, abs)) = stack.pop() {
            for ent in fs::read_dir(&abs).map_err(StoreError::io(&abs))? {
                let ent = ent.map_err(StoreError::io(&abs))?;
                let Some(name) = ent.file_name().to_str().map(str::to_string) else {
                    return Ok(false);
                };
                let child = if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                };
                if !listed.contains(child.as_str()) {
                    return Ok(false);
                }
                let meta = ent.metadata().map_err(StoreError::io(&ent.path()))?;
                if meta.is_dir() {
                    if meta.dev() != dev {
                        return Ok(false);
                    }
                    stack.push((child, ent.path()));
                }
                count += 1;
            }
        }
        if count != m.entries.len() {
            return Ok(false);
        }
        m.entries
            .par_iter()
            .filter(|e| !matches!(e.kind, EntryKind::Hardlink { .. }))
            .try_for_each(|e| -> Result<()> {
                let p = at(dir, &e.path);
                let meta = fs::symlink_metadata(&p).map_err(StoreError::io(&p))?;
                let exact = (
                    meta.mtime(),
                    meta.mtime_nsec(),
                    meta.atime(),
                    meta.atime_nsec(),
                ) == (e.mtime, 0, e.mtime, 0);
                if !exact {
                    sys::set_times_nofollow(&p, e.mtime).map_err(StoreError::io(&p))?;
                }
                Ok(())
            })?;

        // Filled beside, in the session, and put in place by one rename.
        let staging = self.session_name("keep");
        fs::create_dir(&staging).map_err(StoreError::io(&staging))?;
        let root = staging.join("root");
        fs::rename(dir, &root).map_err(StoreError::io(dir))?;
        let written = (|| -> Result<()> {
            let mp = staging.join("manifest");
            fs::write(&mp, m.canonical_bytes()).map_err(StoreError::io(&mp))?;
            let sp = staging.join("stamps");
            fs::write(&sp, stamps(&root, m)?).map_err(StoreError::io(&sp))?;
            private_dir(&kept_dir)?;
            Ok(())
        })();
        if written.is_err() {
            remove_later(staging);
            return written.map(|()| true);
        }
        let mut kept = self.kept();
        while kept.len() >= KEPT_TREES {
            let (_, old) = kept.remove(0);
            let gone = self.session_name("evicted");
            if fs::rename(&old, &gone).is_ok() {
                remove_later(gone);
            }
        }
        if fs::rename(&staging, kept_dir.join(d.to_hex())).is_err() {
            // Another build kept the same tree in the meantime.
            remove_later(staging);
        }
        Ok(true)
    }

    /// Materialises `m` (digest `d`) at `dest`, which must not exist, from a kept tree (see
    /// [`Store::keep_tree`]): its own, or the closest one patched. Returns the [`Checkout`] of
    /// `dest` and how it was got, or `None` (and `dest` absent) when no kept tree would do:
    /// the caller exports then.
    pub fn take_tree(
        &self,
        d: &TreeDigest,
        m: &TreeManifest,
        dest: &Path,
    ) -> Result<Option<(Checkout, Taken)>> {
        if !sys::is_root() {
            return Ok(None);
        }
        let kept = self.kept();
        if let Some((_, p)) = kept.iter().find(|(k, _)| k == d) {
            if let Some(staging) = self.take_checked(p, m) {
                fs::rename(staging.join("root"), dest).map_err(StoreError::io(dest))?;
                remove_later(staging);
                return Ok(Some((self.stamp(m, dest)?, Taken::Exact)));
            }
        }
        // The closest other one (the newest among equals), read without taking it.
        // The patch borrows only `m`: it is planned once, here.
        let mut best: Option<(Patch<'_>, TreeDigest, &PathBuf, TreeManifest)> = None;
        for (k, p) in kept.iter().rev().filter(|(k, _)| k != d) {
            let Some(from) = read_manifest(p, k) else {
                continue;
            };
            let Some(patch) = Patch::plan(&from, m) else {
                continue;
            };
            if best.as_ref().is_none_or(|b| patch.changes < b.0.changes) {
                best = Some((patch, *k, p, from));
            }
        }
        let Some((patch, from_d, p, from)) = best else {
            return Ok(None);
        };
        let changes = patch.changes;
        let Some(staging) = self.take_checked(p, &from) else {
            return Ok(None);
        };
        fs::rename(staging.join("root"), dest).map_err(StoreError::io(dest))?;
        remove_later(staging);
        if patch.apply(self, m, dest).is_err() {
            // An export writes what the patch could not (and says why, if it cannot either).
            let _ = fs::remove_dir_all(dest);
            return Ok(None);
        }
        Ok(Some((
            self.stamp(m, dest)?,
            Taken::Patched {
                from: from_d,
                changes,
            },
        )))
    }

    /// Renames the kept tree at `p` into this session and checks it holds `m` as kept: the
    /// session folder holding it, or `None` if another build took it first or it is not as
    /// kept (then it is removed).
    fn take_checked(&self, p: &Path, m: &TreeManifest) -> Option<PathBuf> {
        let staging = self.session_name("taken");
        fs::rename(p, &staging).ok()?;
        let ok = p.file_name().and_then(digest_of_name) == Some(m.digest())
            && fs::read(staging.join("stamps"))
                .is_ok_and(|s| still_as_kept(&staging.join("root"), m, &s));
        if ok {
            Some(staging)
        } else {
            remove_later(staging);
            None
        }
    }

    /// The kept trees and the bytes they take on disk (allocated blocks; hard links once).
    pub fn kept_usage(&self) -> (usize, u64) {
        let kept = self.kept();
        let mut seen = HashSet::new();
        let mut bytes = 0u64;
        for (_, p) in &kept {
            let mut stack = vec![p.clone()];
            while let Some(d) = stack.pop() {
                let Ok(rd) = fs::read_dir(&d) else { continue };
                for e in rd.filter_map(|e| e.ok()) {
                    let Ok(m) = e.metadata() else { continue };
                    if m.is_dir() {
                        stack.push(e.path());
                    }
                    if seen.insert((m.dev(), m.ino())) {
                        bytes += m.blocks() * 512;
                    }
                }
            }
        }
        (kept.len(), bytes)
    }

    /// Removes every kept tree (they are made again by the next chroot step); returns how
    /// many.
    pub fn drop_kept_trees(&self) -> usize {
        let mut n = 0;
        for (_, p) in self.kept() {
            let gone = self.session_name("dropped");
            if fs::rename(&p, &gone).is_ok() {
                let _ = fs::remove_dir_all(&gone);
                n += 1;
            }
        }
        n
    }
}

/// Creates `dir` readable by its owner only, or makes it so. A kept tree holds the image's
/// set-id programs and device nodes: nobody but root may reach them (the session folders an
/// export goes to are 0700 likewise).
fn private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let m = fs::metadata(dir).map_err(StoreError::io(dir))?;
            if m.permissions().mode() & 0o7777 != 0o700 {
                fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                    .map_err(StoreError::io(dir))?;
            }
            Ok(())
        }
        Err(e) => Err(StoreError::Io {
            path: dir.to_path_buf(),
            source: e,
        }),
    }
}

/// The manifest kept beside the tree in `dir`, if it is the one of digest `d`.
fn read_manifest(dir: &Path, d: &TreeDigest) -> Option<TreeManifest> {
    let bytes = fs::read(dir.join("manifest")).ok()?;
    if TreeDigest::from_hash(blake3::hash(&bytes)) != *d {
        return None;
    }
    let m: TreeManifest = serde_json::from_slice(&bytes).ok()?;
    m.validate().ok()?;
    Some(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ImportOptions;
    use std::os::unix::fs::PermissionsExt;

    const OPTS: ImportOptions = ImportOptions {
        clamp_mtime: Some(1_000_000_000),
    };

    /// Every entry of the trees at `a` and `b` has the same metadata (mtimes included; not
    /// atimes, which a tree does not have and reading a folder moves) and content.
    fn assert_same_folders(a: &Path, b: &Path, m: &TreeManifest) {
        for e in &m.entries {
            let (x, y) = (
                fs::symlink_metadata(at(a, &e.path)).unwrap(),
                fs::symlink_metadata(at(b, &e.path)).unwrap(),
            );
            let meta = |m: &fs::Metadata| {
                (
                    m.mode(),
                    m.uid(),
                    m.gid(),
                    m.mtime(),
                    m.mtime_nsec(),
                    if m.is_dir() { 0 } else { m.size() },
                )
            };
            assert_eq!(meta(&x), meta(&y), "{}", e.path);
            if x.is_file() {
                assert_eq!(
                    fs::read(at(a, &e.path)).unwrap(),
                    fs::read(at(b, &e.path)).unwrap(),
                    "{}",
                    e.path
                );
            }
        }
    }

    fn tree(dir: &Path) {
        fs::create_dir_all(dir.join("etc/sub")).unwrap();
        fs::create_dir_all(dir.join("var/lib")).unwrap();
        fs::write(dir.join("etc/a"), "a").unwrap();
        fs::write(dir.join("etc/motd"), "hello").unwrap();
        fs::write(dir.join("etc/sub/x"), "x").unwrap();
        fs::write(dir.join("var/lib/y"), "y").unwrap();
        std::os::unix::fs::symlink("a", dir.join("etc/l")).unwrap();
    }

    /// Kept trees are for root, who exports owners: true when the test can run. Not root,
    /// it fails under `CI=true` (CI runs as root, and a test skipped there proves nothing)
    /// and says it is skipped otherwise.
    fn as_root(test: &str) -> bool {
        if sys::is_root() {
            return true;
        }
        assert!(
            std::env::var_os("CI").is_none(),
            "{test} needs root, and CI runs as root"
        );
        eprintln!("{test}: skipped, needs root");
        false
    }

    #[test]
    fn a_kept_tree_is_taken_once_with_the_times_an_export_gives() {
        if !as_root("a_kept_tree_is_taken_once_with_the_times_an_export_gives") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let root = dir.path().join("root");
        tree(&root);
        let m = store.import_dir(&root, &OPTS).unwrap();
        assert!(store.keep_tree(&root, &m).unwrap());
        assert!(!root.exists(), "moved into the store");
        assert_eq!(store.kept_usage().0, 1);
        let kept_dir = dir.path().join(KEPT_DIR_IN_TEST);
        assert_eq!(
            fs::metadata(&kept_dir).unwrap().mode() & 0o7777,
            0o700,
            "the image's set-id programs are out of other users' reach"
        );
        let d = store.put_manifest(&m).unwrap();
        // Another store (a later build) takes it.
        let later = Store::open(&dir.path().join("store")).unwrap();
        let dest = dir.path().join("dest");
        let (checkout, taken) = later.take_tree(&d, &m, &dest).unwrap().unwrap();
        assert_eq!(taken, Taken::Exact);
        assert_eq!(checkout.len(), 4);
        let fresh = dir.path().join("fresh");
        fs::create_dir(&fresh).unwrap();
        store.export_dir(&m, &fresh).unwrap();
        assert_same_folders(&dest, &fresh, &m);
        assert_eq!(store.import_dir(&dest, &OPTS).unwrap(), m);
        assert!(later
            .take_tree(&d, &m, &dir.path().join("again"))
            .unwrap()
            .is_none());

        // A folder with something the manifest does not list is not kept.
        let m2 = store.import_dir(&dest, &OPTS).unwrap();
        fs::write(dest.join("etc/unlisted"), "x").unwrap();
        assert!(!store.keep_tree(&dest, &m2).unwrap());
        assert!(dest.exists());
    }

    #[test]
    fn a_kept_tree_is_patched_into_what_an_export_of_the_next_tree_gives() {
        if !as_root("a_kept_tree_is_patched_into_what_an_export_of_the_next_tree_gives") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let root = dir.path().join("root");
        tree(&root);
        // Enough unchanged entries that a patch is worth it.
        for i in 0..20 {
            fs::write(root.join(format!("var/lib/f{i}")), format!("{i}")).unwrap();
        }
        let m = store.import_dir(&root, &OPTS).unwrap();

        // The next tree: a file changed, one removed, a folder removed, one added with a
        // file, a link retargeted, a file turned into a folder, a mode and an owner changed.
        let next = dir.path().join("next");
        fs::create_dir(&next).unwrap();
        store.export_dir(&m, &next).unwrap();
        fs::write(next.join("etc/motd"), "hello again").unwrap();
        fs::remove_file(next.join("etc/a")).unwrap();
        fs::remove_dir_all(next.join("etc/sub")).unwrap();
        fs::create_dir(next.join("opt")).unwrap();
        fs::write(next.join("opt/new"), "new").unwrap();
        fs::remove_file(next.join("etc/l")).unwrap();
        std::os::unix::fs::symlink("motd", next.join("etc/l")).unwrap();
        fs::remove_file(next.join("var/lib/f3")).unwrap();
        fs::create_dir(next.join("var/lib/f3")).unwrap();
        fs::write(next.join("var/lib/f3/inner"), "inner").unwrap();
        fs::set_permissions(next.join("var/lib/f4"), fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::lchown(next.join("var/lib/f5"), Some(7), Some(8)).unwrap();
        let m2 = store.import_dir(&next, &OPTS).unwrap();
        let d2 = store.put_manifest(&m2).unwrap();

        assert!(store.keep_tree(&root, &m).unwrap());
        let dest = dir.path().join("dest");
        let (checkout, taken) = store.take_tree(&d2, &m2, &dest).unwrap().unwrap();
        assert!(
            matches!(taken, Taken::Patched { changes, .. } if changes > 5),
            "{taken:?}"
        );
        assert_eq!(checkout.len(), m2.file_blobs().count());
        let fresh = dir.path().join("fresh");
        fs::create_dir(&fresh).unwrap();
        store.export_dir(&m2, &fresh).unwrap();
        assert_same_folders(&dest, &fresh, &m2);
        assert_eq!(store.import_dir(&dest, &OPTS).unwrap(), m2);
        assert!(!dest.join("etc/sub").exists());
        assert_eq!(store.kept_usage().0, 0, "taken");
    }

    #[test]
    fn a_kept_tree_changed_after_it_was_kept_is_never_used() {
        if !as_root("a_kept_tree_changed_after_it_was_kept_is_never_used") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let d_and_m = |root: &Path| {
            let m = store.import_dir(root, &OPTS).unwrap();
            (store.put_manifest(&m).unwrap(), m)
        };
        type Tamper = (&'static str, fn(&Path));
        let tamper: [Tamper; 4] = [
            ("content, same size and mtime", |r| {
                let p = r.join("etc/motd");
                fs::write(&p, "HELLO").unwrap();
                sys::set_times_nofollow(&p, 1_000_000_000).unwrap();
            }),
            ("an entry added", |r| {
                fs::write(r.join("etc/extra"), "").unwrap()
            }),
            ("an entry removed", |r| {
                fs::remove_file(r.join("var/lib/y")).unwrap()
            }),
            ("a mode", |r| {
                fs::set_permissions(r.join("etc/a"), fs::Permissions::from_mode(0o777)).unwrap()
            }),
        ];
        for (what, f) in tamper {
            let root = dir.path().join("root");
            tree(&root);
            let (d, m) = d_and_m(&root);
            assert!(store.keep_tree(&root, &m).unwrap());
            f(&dir
                .path()
                .join(KEPT_DIR_IN_TEST)
                .join(d.to_hex())
                .join("root"));
            let dest = dir.path().join("dest");
            assert!(
                store.take_tree(&d, &m, &dest).unwrap().is_none(),
                "{what}: used"
            );
            assert!(!dest.exists(), "{what}");
            assert_eq!(store.kept_usage().0, 0, "{what}: removed");
        }
    }

    const KEPT_DIR_IN_TEST: &str = concat!("store/", "trees-v1");

    #[test]
    fn at_most_the_newest_kept_trees_stay_and_gc_removes_them() {
        if !as_root("at_most_the_newest_kept_trees_stay_and_gc_removes_them") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let mut digests = Vec::new();
        for i in 0..KEPT_TREES + 1 {
            let root = dir.path().join(format!("root{i}"));
            tree(&root);
            fs::write(root.join("etc/n"), format!("{i}")).unwrap();
            let m = store.import_dir(&root, &OPTS).unwrap();
            digests.push(store.put_manifest(&m).unwrap());
            assert!(store.keep_tree(&root, &m).unwrap());
            // Kept trees are ordered by their folders' times: a tick apart.
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let kept: Vec<TreeDigest> = store.kept().into_iter().map(|(d, _)| d).collect();
        assert_eq!(kept, digests[1..], "the oldest went first");
        assert_eq!(store.drop_kept_trees(), KEPT_TREES);
        assert_eq!(store.kept_usage(), (0, 0));
    }
}
