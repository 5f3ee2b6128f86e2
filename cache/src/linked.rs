//! Output files linked into the store: `linked-v1/`.
//!
//! When imgspec has put a large output file in `out/IMAGE/`, the store takes a hard link to it
//! here, named by the blob's digest and the file's stamp: `<digest>_<inode>_<size>_<mtime ns>`.
//! While the output file is there, that costs no byte (one inode, two names). A later build
//! that finds the output deleted gets it back from here without decompressing or hashing the
//! blob: linked back when nothing but the store holds the inode, copied (sparse, like
//! `cp --sparse=auto`) when another name does (a file moved away from `out/`, which must not
//! change with the new one).
//!
//! Why an entry can be trusted without reading it: it is a name of the very inode that held
//! the blob's bytes when the output folder was made (moved there from the session that hashed
//! it, or written by `blob_to_file` after its digest matched). Whatever writes to that inode
//! since (a VM booted from the raw disk in `out/`) changes its mtime, and a truncation or
//! another file in its place changes its size or inode: the entry's name no longer describes
//! it, and it is removed rather than used. What this does not see is a write that sets the
//! mtime back by hand; the output folder's own no-op check (digest, size, mtime, inode) trusts
//! the same stamp. The blob stays the truth: an entry is a shortcut to it, never instead of
//! it (one whose blob has gone is removed by `gc`).
//!
//! **Invariant:** nothing under `linked-v1/` is ever written; entries are only made by `link`
//! (atomic: the name appears whole or not at all) and removed.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::{BlobDigest, Store};

/// The store's folder of linked output files.
pub const LINKED_DIR: &str = "linked-v1";
/// Files from this size on are linked: below it, decompressing the blob costs next to nothing.
const LINK_FROM: u64 = 1 << 20;

/// One entry of `linked-v1/`, as its name describes it.
struct Entry {
    path: PathBuf,
    digest: BlobDigest,
    stamp: Stamp,
}

/// What an entry's name says of its inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    size: u64,
    mtime_ns: i128,
}

impl Stamp {
    fn of(m: &fs::Metadata) -> Stamp {
        Stamp {
            ino: m.ino(),
            size: m.size(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        }
    }
}

fn entry_name(d: &BlobDigest, s: &Stamp) -> String {
    format!("{}_{}_{}_{}", d.to_hex(), s.ino, s.size, s.mtime_ns)
}

fn parse_name(name: &str) -> Option<(BlobDigest, Stamp)> {
    let mut parts = name.split('_');
    let digest = BlobDigest::parse_hex(parts.next()?)?;
    let stamp = Stamp {
        ino: parts.next()?.parse().ok()?,
        size: parts.next()?.parse().ok()?,
        mtime_ns: parts.next()?.parse().ok()?,
    };
    parts.next().is_none().then_some((digest, stamp))
}

/// Whether `m` is a file only this process's user can change: a file a user owns (an output
/// `chown`ed to boot it without root) could be rewritten and its mtime set back, and a link
/// to it would hand those bytes to every folder that uses the cache.
fn only_ours(m: &fs::Metadata) -> bool {
    m.is_file() && m.uid() == crate::sys::euid() && m.mode() & 0o022 == 0
}

impl Entry {
    /// The entry's metadata if its inode is still what its name says (a regular file only
    /// this process's user can change).
    fn still_valid(&self) -> Option<fs::Metadata> {
        let m = fs::symlink_metadata(&self.path).ok()?;
        (only_ours(&m) && Stamp::of(&m) == self.stamp).then_some(m)
    }
}

impl Store {
    fn linked_dir(&self) -> PathBuf {
        self.root.join(LINKED_DIR)
    }

    /// Every entry of `linked-v1/` (names that are not entries are left alone).
    fn linked_entries(&self) -> Vec<Entry> {
        let Ok(rd) = fs::read_dir(self.linked_dir()) else {
            return Vec::new();
        };
        rd.flatten()
            .filter_map(|e| {
                let (digest, stamp) = parse_name(e.file_name().to_str()?)?;
                Some(Entry {
                    path: e.path(),
                    digest,
                    stamp,
                })
            })
            .collect()
    }

    /// Takes a hard link to `path`, an output file that holds blob `d`'s bytes and that
    /// nothing writes to, so that [`Store::restore_linked`] can give it back once it is
    /// deleted. Only for a file whose content is known to be `d` (written from the blob, or
    /// hashed as it was stored) while its inode, size and mtime were `known`: a file that
    /// shows others now (written to since) is not linked, nor one on another filesystem, a
    /// small one, or one another user could change. Other entries of `d` are removed: one per
    /// blob. Best effort: a failure only costs the next restore its decompression.
    pub fn link_output(&self, d: &BlobDigest, path: &Path, known: (u64, u64, i128)) {
        let Ok(m) = fs::symlink_metadata(path) else {
            return;
        };
        let (ino, size, mtime_ns) = known;
        if !only_ours(&m)
            || m.len() < LINK_FROM
            || Stamp::of(&m)
                != (Stamp {
                    ino,
                    size,
                    mtime_ns,
                })
        {
            return;
        }
        let name = entry_name(d, &Stamp::of(&m));
        let dir = self.linked_dir();
        let target = dir.join(&name);
        if fs::symlink_metadata(&target).is_ok() {
            return; // this very inode, unchanged (its stamp is the name)
        }
        if fs::create_dir_all(&dir).is_err() || fs::hard_link(path, &target).is_err() {
            return;
        }
        for e in self.linked_entries() {
            if e.digest == *d && e.path != target {
                let _ = fs::remove_file(&e.path);
            }
        }
    }

    /// Forgets the link to an output file that its folder no longer has (replaced by a newer
    /// build's), named by the digest and the stamp it had there, unless another name still
    /// holds the inode (a file moved away from `out/`, which a restore then copies): else every
    /// replaced output's bytes would stay in the store until `gc`.
    pub fn unlink_output(&self, d: &BlobDigest, known: (u64, u64, i128)) {
        let (ino, size, mtime_ns) = known;
        let name = entry_name(
            d,
            &Stamp {
                ino,
                size,
                mtime_ns,
            },
        );
        let path = self.linked_dir().join(name);
        if fs::symlink_metadata(&path).is_ok_and(|m| m.nlink() == 1) {
            let _ = fs::remove_file(&path);
        }
    }

    /// Writes blob `d` to the new file `dest` from its linked output file, if there is one
    /// still as it was linked: a hard link when only the store holds that inode, else a sparse
    /// copy, synced. True if `dest` now holds the blob's bytes; false (and no `dest`) if there
    /// is no such entry, or it could not be used; a stale entry is removed.
    pub fn restore_linked(&self, d: &BlobDigest, dest: &Path) -> bool {
        for e in self.linked_entries() {
            if e.digest != *d {
                continue;
            }
            let Some(m) = e.still_valid() else {
                let _ = fs::remove_file(&e.path);
                continue;
            };
            if m.nlink() == 1 && fs::hard_link(&e.path, dest).is_ok() {
                return true;
            }
            // Another name shares the inode (a file moved out of `out/`): copied, and the copy
            // kept only if nothing wrote to the inode meanwhile.
            match copy_sparse(&e.path, dest, m.len()) {
                Ok(()) if e.still_valid().is_some() => return true,
                _ => {
                    let _ = fs::remove_file(dest);
                }
            }
        }
        false
    }

    /// Linked output files, and the bytes of those only the store holds (allocated blocks):
    /// the others share their inode with an output folder and cost nothing more.
    pub fn linked_usage(&self) -> (usize, u64) {
        let entries = self.linked_entries();
        let sole = entries
            .iter()
            .filter_map(|e| fs::symlink_metadata(&e.path).ok())
            .filter(|m| m.nlink() == 1)
            .map(|m| m.blocks() * 512)
            .sum();
        (entries.len(), sole)
    }

    /// Removes the entries no output folder links any more (their bytes are held by the store
    /// alone), those no longer as they were linked, and those whose blob has gone. Returns how
    /// many, and the bytes freed.
    pub fn drop_unlinked_outputs(&self) -> (usize, u64) {
        let mut n = 0;
        let mut freed = 0;
        for e in self.linked_entries() {
            let keep = e
                .still_valid()
                .filter(|m| m.nlink() > 1 && self.has_blob(&e.digest));
            if keep.is_some() {
                continue;
            }
            let sole = fs::symlink_metadata(&e.path)
                .ok()
                .filter(|m| m.nlink() == 1)
                .map_or(0, |m| m.blocks() * 512);
            if fs::remove_file(&e.path).is_ok() {
                n += 1;
                freed += sole;
            }
        }
        (n, freed)
    }

    /// Hashes every linked output file that is still as it was linked, and removes those whose
    /// bytes are not their blob's (and the stale ones). Returns how many were checked and how
    /// many removed.
    pub(crate) fn verify_linked(&self) -> (usize, usize) {
        use rayon::prelude::*;
        let entries = self.linked_entries();
        let removed = entries
            .par_iter()
            .filter(|e| {
                let right = e.still_valid().is_some()
                    && crate::blob::digest_of_file(&e.path).is_ok_and(|got| got == e.digest);
                !right && fs::remove_file(&e.path).is_ok()
            })
            .count();
        (entries.len(), removed)
    }
}

/// Copies the file `src` (`len` bytes) to the new file `dest`, mode 0644: its data regions
/// with `copy_file_range` (in the kernel, no bytes through user space), its holes left holes;
/// then synced.
fn copy_sparse(src: &Path, dest: &Path, len: u64) -> io::Result<()> {
    let from = File::open(src)?;
    let to = File::options()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(dest)?;
    let mut pos = 0;
    while pos < len {
        let Some(data) = crate::sys::seek_data(&from, pos)? else {
            break; // a hole to the end
        };
        let end = crate::sys::seek_hole(&from, data)?.min(len);
        let mut at = data;
        while at < end {
            let n = crate::sys::copy_range(&from, &to, at, end - at)?;
            if n == 0 {
                return Err(io::Error::other("the file shrank while it was copied"));
            }
            at += n;
        }
        pos = end;
    }
    to.set_len(len)?;
    to.set_permissions(fs::Permissions::from_mode(0o644))?;
    to.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("cache")).unwrap();
        (dir, store)
    }

    /// A 3 MiB file: data, a 1 MiB hole, data; and its blob.
    fn output(store: &Store, path: &Path) -> BlobDigest {
        use std::os::unix::fs::FileExt;
        let f = File::create(path).unwrap();
        f.write_at(&[7u8; 1 << 20], 0).unwrap();
        f.write_at(&[9u8; 1 << 20], 2 << 20).unwrap();
        f.sync_all().unwrap();
        store.put_file(path).unwrap().digest
    }

    fn stamp(path: &Path) -> (u64, u64, i128) {
        let s = Stamp::of(&fs::symlink_metadata(path).unwrap());
        (s.ino, s.size, s.mtime_ns)
    }

    fn entries(store: &Store) -> usize {
        store.linked_entries().len()
    }

    #[test]
    fn a_deleted_output_comes_back_linked_and_a_moved_one_copied() {
        let (dir, store) = store();
        let out = dir.path().join("disk.raw");
        let d = output(&store, &out);
        let bytes = fs::read(&out).unwrap();
        store.link_output(&d, &out, stamp(&out));
        store.link_output(&d, &out, stamp(&out));
        assert_eq!(entries(&store), 1, "one entry, however often linked");
        assert_eq!(
            store.linked_usage(),
            (1, 0),
            "shared with the output: no byte more"
        );

        fs::remove_file(&out).unwrap();
        assert!(store.linked_usage().1 > 0, "now held by the store alone");
        assert!(store.restore_linked(&d, &out));
        assert_eq!(fs::read(&out).unwrap(), bytes);
        let entry = &store.linked_entries()[0].path;
        assert_eq!(
            fs::metadata(&out).unwrap().ino(),
            fs::metadata(entry).unwrap().ino(),
            "linked back"
        );

        // Moved away: the restored file must not share the moved file's inode.
        let moved = dir.path().join("moved.raw");
        fs::rename(&out, &moved).unwrap();
        assert!(store.restore_linked(&d, &out));
        assert_eq!(fs::read(&out).unwrap(), bytes);
        let m = fs::metadata(&out).unwrap();
        assert_ne!(m.ino(), fs::metadata(&moved).unwrap().ino(), "copied");
        assert!(m.blocks() * 512 < m.len(), "the copy keeps the hole");
        assert!(
            !store.restore_linked(
                &BlobDigest::from_hash(blake3::hash(b"other")),
                &dir.path().join("x")
            ),
            "no entry for another blob"
        );
    }

    #[test]
    fn an_output_written_in_place_is_never_given_back() {
        let (dir, store) = store();
        let out = dir.path().join("disk.raw");
        let d = output(&store, &out);
        store.link_output(&d, &out, stamp(&out));
        // A VM booted from it writes to it: its mtime moves on.
        std::thread::sleep(std::time::Duration::from_millis(20));
        {
            use std::os::unix::fs::FileExt;
            let f = fs::OpenOptions::new().write(true).open(&out).unwrap();
            f.write_at(b"boot", 0).unwrap();
        }
        fs::remove_file(&out).unwrap();
        assert!(
            !store.restore_linked(&d, &out),
            "the stamp no longer matches"
        );
        assert!(!out.exists());
        assert_eq!(entries(&store), 0, "the stale entry is removed");
    }

    #[test]
    fn gc_drops_what_no_output_links_and_verify_what_does_not_match() {
        let (dir, store) = store();
        let out = dir.path().join("disk.raw");
        let d = output(&store, &out);
        store.link_output(&d, &out, stamp(&out));
        assert_eq!(store.drop_unlinked_outputs().0, 0, "still an output's");
        assert_eq!(store.verify_linked(), (1, 0));
        fs::remove_file(&out).unwrap();
        let (n, freed) = store.drop_unlinked_outputs();
        assert_eq!(n, 1);
        assert!(freed >= 2 << 20, "{freed}");

        // An entry whose bytes are not its blob's (a name made by hand) goes at verify.
        let other = dir.path().join("other.raw");
        output(&store, &other);
        fs::write(&other, vec![1u8; 2 << 20]).unwrap();
        store.link_output(&d, &other, stamp(&other));
        assert_eq!(store.verify_linked(), (1, 1));
        assert_eq!(entries(&store), 0);
    }

    #[test]
    fn a_file_another_user_could_change_is_not_linked() {
        if !crate::sys::is_root() {
            eprintln!("skipped: chown needs root");
            return;
        }
        let (dir, store) = store();
        let out = dir.path().join("disk.raw");
        let d = output(&store, &out);
        std::os::unix::fs::chown(&out, Some(4242), None).unwrap();
        store.link_output(&d, &out, stamp(&out));
        assert_eq!(entries(&store), 0, "owned by another user");
        std::os::unix::fs::chown(&out, Some(0), None).unwrap();
        fs::set_permissions(&out, fs::Permissions::from_mode(0o666)).unwrap();
        store.link_output(&d, &out, stamp(&out));
        assert_eq!(entries(&store), 0, "writable by others");
        fs::set_permissions(&out, fs::Permissions::from_mode(0o644)).unwrap();
        let before = stamp(&out);
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::OpenOptions::new()
            .write(true)
            .open(&out)
            .unwrap()
            .write_all_at(b"x", 0)
            .unwrap();
        store.link_output(&d, &out, before);
        assert_eq!(entries(&store), 0, "written to since it was known");
        store.link_output(&d, &out, stamp(&out));
        assert_eq!(entries(&store), 1);
    }

    #[test]
    fn a_replaced_output_s_link_goes_unless_another_name_holds_it() {
        let (dir, store) = store();
        let out = dir.path().join("disk.raw");
        let d = output(&store, &out);
        let st = stamp(&out);
        store.link_output(&d, &out, st);
        assert_eq!(entries(&store), 1);
        // Moved away (another name holds the inode): kept, a restore copies from it.
        let moved = dir.path().join("moved.raw");
        fs::rename(&out, &moved).unwrap();
        store.unlink_output(&d, st);
        assert_eq!(entries(&store), 1, "another name still holds it");
        // Only the store holds it: gone.
        fs::remove_file(&moved).unwrap();
        store.unlink_output(&d, st);
        assert_eq!(entries(&store), 0);
    }

    #[test]
    fn names_parse_back_and_others_are_not_entries() {
        let d = BlobDigest::from_hash(blake3::hash(b"x"));
        let s = Stamp {
            ino: 12,
            size: 3,
            mtime_ns: 1_700_000_000_123_456_789,
        };
        assert_eq!(parse_name(&entry_name(&d, &s)), Some((d, s)));
        assert_eq!(parse_name("README"), None);
        assert_eq!(parse_name(&format!("{}_1_2", d.to_hex())), None);
        assert_eq!(parse_name(&format!("{}_1_2_3_4", d.to_hex())), None);
        let before_1970 = Stamp { mtime_ns: -5, ..s };
        assert_eq!(
            parse_name(&entry_name(&d, &before_1970)),
            Some((d, before_1970))
        );
    }
}
