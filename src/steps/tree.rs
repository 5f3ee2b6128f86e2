//! Editing a tree manifest in memory: put files, remove paths, resolve paths through the tree's
//! own symlinks (confined to the tree root, as a chroot would), and merge an overlay.

use std::collections::BTreeMap;

use imgspec_cache::{Entry, EntryKind, Store, TreeManifest};

use super::StepError;

/// A manifest as a map from path to entry, for editing.
pub struct Tree {
    pub entries: BTreeMap<String, Entry>,
}

const MAX_LINKS: usize = 40;

impl Tree {
    pub fn new(m: TreeManifest) -> Self {
        Tree {
            entries: m.entries.into_iter().map(|e| (e.path.clone(), e)).collect(),
        }
    }

    pub fn into_manifest(self) -> TreeManifest {
        // BTreeMap order is byte order of the path, which puts parents before children.
        TreeManifest {
            entries: self.entries.into_values().collect(),
        }
    }

    /// Resolves `path` (relative, `/`-separated) through the tree's symlinks, never leaving the
    /// root: absolute targets restart at the root and `..` stops there. The last component is
    /// resolved too when `follow_last` is set.
    pub fn resolve(&self, path: &str, follow_last: bool) -> Result<String, StepError> {
        let mut todo: Vec<String> = components(path).rev().map(String::from).collect();
        let mut done: Vec<String> = Vec::new();
        let mut hops = 0;
        while let Some(c) = todo.pop() {
            match c.as_str() {
                "." => continue,
                ".." => {
                    done.pop();
                    continue;
                }
                _ => {}
            }
            done.push(c);
            let is_last = todo.is_empty();
            let here = done.join("/");
            if let Some(Entry {
                kind: EntryKind::Symlink { target },
                ..
            }) = self.entries.get(&here)
            {
                if is_last && !follow_last {
                    break;
                }
                hops += 1;
                if hops > MAX_LINKS {
                    return Err(StepError::Invalid(format!(
                        "too many levels of symbolic links resolving `/{path}` in the image"
                    )));
                }
                done.pop();
                if target.starts_with('/') {
                    done.clear();
                }
                todo.extend(components(target).rev().map(String::from));
            }
        }
        Ok(done.join("/"))
    }

    /// Creates the missing parent directories of `path` (mode 0755, root).
    pub fn ensure_parents(&mut self, path: &str, mtime: i64) {
        let mut p = String::new();
        let parts: Vec<&str> = components(path).collect();
        for c in &parts[..parts.len().saturating_sub(1)] {
            if !p.is_empty() {
                p.push('/');
            }
            p.push_str(c);
            self.entries
                .entry(p.clone())
                .or_insert_with(|| dir_entry(&p, mtime));
        }
        self.entries
            .entry(String::new())
            .or_insert_with(|| dir_entry("", mtime));
    }

    /// Writes a regular file (content stored as a blob), replacing what was there.
    pub fn put_file(
        &mut self,
        store: &Store,
        path: &str,
        content: &[u8],
        mode: u32,
        mtime: i64,
    ) -> Result<(), StepError> {
        let path = self.resolve(path, false)?;
        let r = store.put_bytes(content)?;
        self.ensure_parents(&path, mtime);
        self.entries.insert(
            path.clone(),
            Entry {
                path,
                kind: EntryKind::File {
                    digest: r.digest,
                    size: r.size,
                },
                mode,
                uid: 0,
                gid: 0,
                mtime,
                xattrs: BTreeMap::new(),
            },
        );
        Ok(())
    }

    pub fn put_symlink(&mut self, path: &str, target: &str, mtime: i64) -> Result<(), StepError> {
        let path = self.resolve(path, false)?;
        self.ensure_parents(&path, mtime);
        self.entries.insert(
            path.clone(),
            Entry {
                path,
                kind: EntryKind::Symlink {
                    target: target.into(),
                },
                mode: 0o777,
                uid: 0,
                gid: 0,
                mtime,
                xattrs: BTreeMap::new(),
            },
        );
        Ok(())
    }

    /// Removes `path` and everything below it. Returns whether anything was removed.
    pub fn remove(&mut self, path: &str) -> bool {
        let prefix = format!("{path}/");
        let before = self.entries.len();
        self.entries
            .retain(|p, _| p != path && !p.starts_with(&prefix));
        before != self.entries.len()
    }

    /// Removes every entry directly inside directory `dir` whose name satisfies `pred` (and
    /// everything below those).
    pub fn remove_children(&mut self, dir: &str, pred: impl Fn(&str) -> bool) {
        let prefix = format!("{dir}/");
        let doomed: Vec<String> = self
            .entries
            .keys()
            .filter_map(|p| p.strip_prefix(&prefix))
            .filter(|rest| !rest.contains('/') && pred(rest))
            .map(|rest| format!("{prefix}{rest}"))
            .collect();
        for p in doomed {
            self.remove(&p);
        }
    }

    /// The content of a regular file of the tree.
    pub fn read(&self, store: &Store, path: &str) -> Result<Option<Vec<u8>>, StepError> {
        let path = self.resolve(path, true)?;
        match self.entries.get(&path) {
            Some(Entry {
                kind: EntryKind::File { digest, .. },
                ..
            }) => Ok(Some(store.read_blob(digest)?)),
            _ => Ok(None),
        }
    }

    /// Lays `overlay` (a tree whose root is the overlay folder) at `dest` in this tree. Paths
    /// are resolved through this tree's symlinks (confined to its root), so that `lib/x` lands
    /// in `usr/lib/x` on a merged-/usr system and an overlay directory `bin/` keeps the image's
    /// `bin -> usr/bin`; existing directories keep their metadata; overlay entries are owned
    /// by root.
    pub fn overlay(&mut self, overlay: TreeManifest, dest: &str) -> Result<(), StepError> {
        let dest = dest.trim_matches('/');
        // Hard links in the overlay point at overlay paths: map them to where they landed.
        let mut landed: BTreeMap<String, String> = BTreeMap::new();
        for mut e in overlay.entries {
            let rel = if e.path.is_empty() {
                dest.to_string()
            } else if dest.is_empty() {
                e.path.clone()
            } else {
                format!("{dest}/{}", e.path)
            };
            if rel.is_empty() {
                continue; // the image root itself keeps its metadata
            }
            let target = self.resolve(&rel, false)?;
            if let Some(existing) = self.entries.get(&target) {
                match (&existing.kind, &e.kind) {
                    // A directory of the overlay goes through the image's link to a directory
                    // (`bin -> usr/bin` on merged /usr), as `tar --keep-directory-symlink`
                    // does; the link stays.
                    (EntryKind::Symlink { .. }, EntryKind::Dir) => {
                        let through = self.resolve(&rel, true)?;
                        if matches!(
                            self.entries.get(&through).map(|x| &x.kind),
                            Some(EntryKind::Dir)
                        ) {
                            landed.insert(e.path.clone(), through);
                            continue;
                        }
                    }
                    (EntryKind::Dir, EntryKind::Dir) => {
                        landed.insert(e.path.clone(), target);
                        continue;
                    }
                    (EntryKind::Dir, _) => {
                        return Err(StepError::Invalid(format!(
                            "`/{rel}` is a directory in the image and cannot be replaced by a \
                             file of the overlay"
                        )))
                    }
                    _ => {}
                }
            }
            if let EntryKind::Hardlink { target: t } = &e.kind {
                let t = landed.get(t).cloned().unwrap_or_else(|| t.clone());
                e.kind = EntryKind::Hardlink { target: t };
            }
            self.ensure_parents(&target, e.mtime);
            landed.insert(e.path.clone(), target.clone());
            e.path = target.clone();
            e.uid = 0;
            e.gid = 0;
            self.entries.insert(target, e);
        }
        Ok(())
    }
}

fn components(path: &str) -> impl DoubleEndedIterator<Item = &str> {
    path.split('/').filter(|c| !c.is_empty())
}

fn dir_entry(path: &str, mtime: i64) -> Entry {
    Entry {
        path: path.to_string(),
        kind: EntryKind::Dir,
        mode: 0o755,
        uid: 0,
        gid: 0,
        mtime,
        xattrs: BTreeMap::new(),
    }
}

/// The real file behind a top-level kernel link (`vmlinuz` → `boot/vmlinuz-6.1.0-28-amd64`).
pub fn kernel_path(tree: &Tree, link: &str) -> Result<Option<String>, StepError> {
    for candidate in [link.to_string(), format!("boot/{link}")] {
        let p = tree.resolve(&candidate, true)?;
        if matches!(
            tree.entries.get(&p).map(|e| &e.kind),
            Some(imgspec_cache::EntryKind::File { .. })
        ) {
            return Ok(Some(p));
        }
    }
    Ok(None)
}

/// The kernel and initrd an image boots: the top-level links Debian's kernel packages keep
/// (`/vmlinuz`, `/initrd.img`, or the same under `/boot`), else the newest
/// `/boot/vmlinuz-VERSION` (as RPM-family systems have them: no links, a rescue kernel
/// beside them, which is never taken) with its `/boot/initramfs-VERSION.img` (dracut's name)
/// or `/boot/initrd.img-VERSION`.
pub fn boot_files(tree: &Tree) -> Result<Option<(String, Option<String>)>, StepError> {
    if let Some(kernel) = kernel_path(tree, "vmlinuz")? {
        return Ok(Some((kernel, kernel_path(tree, "initrd.img")?)));
    }
    let is_file = |p: &str| {
        matches!(
            tree.entries.get(p).map(|e| &e.kind),
            Some(EntryKind::File { .. })
        )
    };
    let newest = tree
        .entries
        .keys()
        .filter_map(|p| p.strip_prefix("boot/vmlinuz-"))
        .filter(|v| !v.contains('/') && !v.contains("rescue"))
        .filter(|v| is_file(&format!("boot/vmlinuz-{v}")))
        .max_by(|a, b| version_cmp(a, b));
    let Some(v) = newest else {
        return Ok(None);
    };
    let initrd = [
        format!("boot/initramfs-{v}.img"),
        format!("boot/initrd.img-{v}"),
    ]
    .into_iter()
    .find(|p| is_file(p));
    Ok(Some((format!("boot/vmlinuz-{v}"), initrd)))
}

/// Kernel versions compared as people read them: runs of digits as numbers, the rest as text
/// (`6.10.0` after `6.9.12`).
fn version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn runs(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let b = s.as_bytes();
        for i in 1..=b.len() {
            if i == b.len() || b[i].is_ascii_digit() != b[start].is_ascii_digit() {
                out.push((b[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    let (ra, rb) = (runs(a), runs(b));
    for (x, y) in ra.iter().zip(rb.iter()) {
        let o = match (x, y) {
            ((true, x), (true, y)) => {
                let (x, y) = (x.trim_start_matches('0'), y.trim_start_matches('0'));
                x.len().cmp(&y.len()).then_with(|| x.cmp(y))
            }
            ((_, x), (_, y)) => x.cmp(y),
        };
        if o != std::cmp::Ordering::Equal {
            return o;
        }
    }
    ra.len().cmp(&rb.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(p: &str, t: &str) -> Entry {
        Entry {
            path: p.into(),
            kind: EntryKind::Symlink { target: t.into() },
            mode: 0o777,
            uid: 0,
            gid: 0,
            mtime: 0,
            xattrs: BTreeMap::new(),
        }
    }

    fn tree(entries: Vec<Entry>) -> Tree {
        Tree::new(TreeManifest { entries })
    }

    #[test]
    fn resolves_merged_usr_links() {
        let t = tree(vec![
            dir_entry("", 0),
            dir_entry("usr", 0),
            link("lib", "usr/lib"),
        ]);
        assert_eq!(t.resolve("lib/x", false).unwrap(), "usr/lib/x");
        assert_eq!(t.resolve("lib", false).unwrap(), "lib");
        assert_eq!(t.resolve("lib", true).unwrap(), "usr/lib");
    }

    #[test]
    fn symlinks_cannot_escape_the_root() {
        let t = tree(vec![
            link("up", "../../../.."),
            link("abs", "/etc"),
            dir_entry("etc", 0),
        ]);
        assert_eq!(t.resolve("up/etc/passwd", false).unwrap(), "etc/passwd");
        assert_eq!(t.resolve("abs/passwd", false).unwrap(), "etc/passwd");
    }

    #[test]
    fn link_loops_are_an_error() {
        let t = tree(vec![link("a", "b"), link("b", "a")]);
        assert!(t.resolve("a/x", false).is_err());
    }

    #[test]
    fn overlay_dirs_go_through_the_images_directory_links() {
        let mut t = tree(vec![
            dir_entry("", 0),
            dir_entry("usr", 0),
            dir_entry("usr/bin", 0),
            link("bin", "usr/bin"),
            link("abs", "/usr"),
            link("dangling", "nowhere"),
        ]);
        let mut hello = link("bin/hello", "x");
        hello.kind = EntryKind::File {
            digest: imgspec_cache::BlobDigest([0; 32]),
            size: 0,
        };
        let mut deep = hello.clone();
        deep.path = "abs/bin/deep".into();
        let mut in_dangling = hello.clone();
        in_dangling.path = "dangling/f".into();
        t.overlay(
            TreeManifest {
                entries: vec![
                    dir_entry("", 0),
                    dir_entry("abs", 0),
                    dir_entry("abs/bin", 0),
                    dir_entry("bin", 0),
                    deep,
                    hello,
                    dir_entry("dangling", 0),
                    in_dangling,
                ],
            },
            "/",
        )
        .unwrap();
        assert!(matches!(t.entries["bin"].kind, EntryKind::Symlink { .. }));
        assert!(matches!(t.entries["abs"].kind, EntryKind::Symlink { .. }));
        assert!(t.entries.contains_key("usr/bin/hello"));
        assert!(t.entries.contains_key("usr/bin/deep"));
        assert!(!t.entries.contains_key("bin/hello"));
        // A link to no directory is replaced, as tar does.
        assert!(matches!(t.entries["dangling"].kind, EntryKind::Dir));
        assert!(t.entries.contains_key("dangling/f"));
    }

    #[test]
    fn overlay_keeps_existing_dirs_and_refuses_to_replace_one() {
        let mut etc = dir_entry("etc", 0);
        etc.mode = 0o750;
        let mut t = tree(vec![dir_entry("", 0), etc]);
        let mut odir = dir_entry("etc", 5);
        odir.mode = 0o700;
        t.overlay(
            TreeManifest {
                entries: vec![dir_entry("", 0), odir],
            },
            "/",
        )
        .unwrap();
        assert_eq!(t.entries["etc"].mode, 0o750);
        let file = Entry {
            path: "etc".into(),
            kind: EntryKind::Fifo,
            mode: 0o644,
            uid: 1000,
            gid: 1000,
            mtime: 0,
            xattrs: BTreeMap::new(),
        };
        assert!(t
            .overlay(
                TreeManifest {
                    entries: vec![file]
                },
                "/"
            )
            .is_err());
    }

    #[test]
    fn boot_files_of_a_system_without_kernel_links() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(d.path()).unwrap();
        let mut t = tree(vec![dir_entry("", 0), dir_entry("boot", 0)]);
        assert_eq!(boot_files(&t).unwrap(), None);
        for v in [
            "6.9.12-200.fc40.x86_64",
            "6.10.3-200.fc40.x86_64",
            "0-rescue-0123abcd",
        ] {
            t.put_file(&store, &format!("boot/vmlinuz-{v}"), b"k", 0o755, 0)
                .unwrap();
            t.put_file(&store, &format!("boot/initramfs-{v}.img"), b"i", 0o600, 0)
                .unwrap();
        }
        assert_eq!(
            boot_files(&t).unwrap(),
            Some((
                "boot/vmlinuz-6.10.3-200.fc40.x86_64".into(),
                Some("boot/initramfs-6.10.3-200.fc40.x86_64.img".into())
            ))
        );
        // Debian's links win.
        t.put_file(&store, "boot/vmlinuz-6.1.0-28-amd64", b"k", 0o644, 0)
            .unwrap();
        t.entries.insert(
            "vmlinuz".into(),
            link("vmlinuz", "boot/vmlinuz-6.1.0-28-amd64"),
        );
        assert_eq!(
            boot_files(&t).unwrap(),
            Some(("boot/vmlinuz-6.1.0-28-amd64".into(), None))
        );
    }
}
