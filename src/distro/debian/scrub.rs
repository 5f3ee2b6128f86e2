//! What Debian's package tools leave in a tree that two builds would not agree on, removed
//! after the rules of every tree ([`crate::steps::scrub`]):
//!
//! - apt's two download folders, `/var/cache/apt/archives/partial` and
//!   `/var/lib/apt/lists/partial`, are owned by `_apt` (its uid in the tree's `/etc/passwd`,
//!   else root), group root, mode 0700, as apt itself leaves them when it can drop privileges:
//!   whether it could depended on who may read the build's temp folder.
//! - apt's lists and caches and the `*-old` backups of dpkg and debconf are removed.

use imgspec_cache::Store;

use crate::steps::scrub::{scrub as scrub_tree, After};
use crate::steps::tree::Tree;
use crate::steps::StepError;

/// Every tree's rules, then Debian's.
pub fn scrub(tree: &mut Tree, store: &Store, epoch: i64, after: After) -> Result<(), StepError> {
    scrub_tree(tree, store, epoch, after)?;
    scrub_apt(tree, store)
}

/// Debian's rules (see the module doc).
pub fn scrub_apt(tree: &mut Tree, store: &Store) -> Result<(), StepError> {
    normalise_apt_partial(tree, store)?;
    tree.remove_children("var/lib/apt/lists", |n| n != "partial" && n != "lock");
    tree.remove_children("var/cache/apt", |n| n.ends_with(".bin"));
    tree.remove_children("var/cache/apt/archives", |n| n.ends_with(".deb"));
    tree.remove_children("var/cache/debconf", |n| n.ends_with("-old"));
    tree.remove_children("var/lib/dpkg", |n| n.ends_with("-old"));
    Ok(())
}

/// apt's download folders, as a sandboxed apt leaves them (see the module doc).
pub const APT_PARTIAL: [&str; 2] = [
    "var/cache/apt/archives/partial",
    "var/lib/apt/lists/partial",
];

fn normalise_apt_partial(tree: &mut Tree, store: &Store) -> Result<(), StepError> {
    if !APT_PARTIAL.iter().any(|p| tree.entries.contains_key(*p)) {
        return Ok(());
    }
    let passwd = tree.read(store, "etc/passwd")?.unwrap_or_default();
    let uid = apt_uid(&String::from_utf8_lossy(&passwd)).unwrap_or(0);
    for p in APT_PARTIAL {
        if let Some(e) = tree.entries.get_mut(p) {
            if matches!(e.kind, imgspec_cache::EntryKind::Dir) {
                (e.uid, e.gid, e.mode) = (uid, 0, 0o700);
            }
        }
    }
    Ok(())
}

/// The uid of `_apt` in an `/etc/passwd`.
fn apt_uid(passwd: &str) -> Option<u32> {
    passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == "_apt").then_some(())?;
        f.nth(1)?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use imgspec_cache::{Entry, EntryKind, TreeManifest};

    fn dir(path: &str, uid: u32, mode: u32) -> Entry {
        Entry {
            path: path.into(),
            kind: EntryKind::Dir,
            mode,
            uid,
            gid: 0,
            mtime: 7,
            xattrs: Default::default(),
        }
    }

    #[test]
    fn apt_uid_from_passwd() {
        let p =
            "root:x:0:0:root:/root:/bin/bash\n_apt:x:42:65534::/nonexistent:/usr/sbin/nologin\n";
        assert_eq!(apt_uid(p), Some(42));
        assert_eq!(apt_uid("root:x:0:0::/root:/bin/sh\n"), None);
        assert_eq!(apt_uid("_apt:x:notanumber:0::/:/bin/false\n"), None);
    }

    /// A sandboxed and an unsandboxed apt leave different owners; the scrubbed trees agree.
    #[test]
    fn apt_partial_folders_do_not_depend_on_the_sandbox() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(d.path()).unwrap();
        let tree_with = |uid: u32, mode: u32| {
            let mut entries = vec![dir("", 0, 0o755)];
            for p in [
                "etc",
                "var",
                "var/cache",
                "var/cache/apt",
                "var/cache/apt/archives",
            ] {
                entries.push(dir(p, 0, 0o755));
            }
            for p in ["var/lib", "var/lib/apt", "var/lib/apt/lists"] {
                entries.push(dir(p, 0, 0o755));
            }
            entries.push(dir("var/cache/apt/archives/partial", uid, mode));
            entries.push(dir("var/lib/apt/lists/partial", uid, mode));
            entries.sort_by(|a, b| a.path.cmp(&b.path));
            let mut t = Tree::new(TreeManifest { entries });
            t.put_file(
                &store,
                "etc/passwd",
                b"root:x:0:0:root:/root:/bin/sh\n_apt:x:42:65534::/nonexistent:/usr/sbin/nologin\n",
                0o644,
                7,
            )
            .unwrap();
            scrub(&mut t, &store, 7, After::Bootstrap).unwrap();
            t.into_manifest()
        };
        let sandboxed = tree_with(42, 0o700);
        let as_root = tree_with(0, 0o700);
        let odd = tree_with(0, 0o755);
        assert_eq!(sandboxed, as_root);
        assert_eq!(sandboxed, odd);
        let e = sandboxed
            .entries
            .iter()
            .find(|e| e.path == "var/lib/apt/lists/partial")
            .unwrap();
        assert_eq!((e.uid, e.gid, e.mode), (42, 0, 0o700));
    }
}
