//! Trees: manifests (canonical form, validation, storage), import from and export to a
//! directory, and the difference between two trees.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::{
    sys, BlobDigest, Entry, EntryKind, ImportOptions, Result, Store, StoreError, TreeChange,
    TreeDigest, TreeManifest,
};

/// The parent of a manifest path: `a/b` → `a`, `a` → `` (the root), the root → none.
pub(crate) fn parent(path: &str) -> Option<&str> {
    if path.is_empty() {
        None
    } else {
        Some(path.rsplit_once('/').map_or("", |(p, _)| p))
    }
}

/// Why `path` is not a normal manifest path (relative, `/`-separated, no empty, `.` or `..`
/// component, no NUL), or `None` if it is one.
pub(crate) fn path_problem(path: &str) -> Option<&'static str> {
    if path.is_empty() {
        return None;
    }
    if path.contains('\0') {
        return Some("path contains a NUL byte");
    }
    if path.starts_with('/') {
        return Some("path is absolute");
    }
    for c in path.split('/') {
        match c {
            "" => return Some("path has an empty component"),
            "." => return Some("path has a `.` component"),
            ".." => return Some("path has a `..` component"),
            _ => {}
        }
    }
    None
}

impl TreeManifest {
    /// Puts the entries in canonical order: by path, in byte order (parents before children).
    pub fn canonicalize(&mut self) {
        self.entries.sort_by(|a, b| a.path.cmp(&b.path));
    }

    pub fn is_sorted(&self) -> bool {
        self.entries.windows(2).all(|w| w[0].path < w[1].path)
    }

    /// Checks that the manifest describes a tree that can be materialised: canonical order
    /// without duplicates, normal relative paths, a directory as the root and as every
    /// ancestor that is listed, hard links to an earlier regular file, permission bits only.
    pub fn validate(&self) -> Result<()> {
        let mut kinds: HashMap<&str, &EntryKind> = HashMap::with_capacity(self.entries.len());
        let mut prev: Option<&str> = None;
        for e in &self.entries {
            let bad = |reason: &str| StoreError::bad_entry(&e.path, reason);
            if let Some(problem) = path_problem(&e.path) {
                return Err(bad(problem));
            }
            if prev.is_some_and(|p| p >= e.path.as_str()) {
                return Err(bad(
                    "entries are not sorted by path, or a path is listed twice",
                ));
            }
            prev = Some(&e.path);
            if e.path.is_empty() && e.kind != EntryKind::Dir {
                return Err(bad("the root must be a directory"));
            }
            let mut ancestor = parent(&e.path);
            while let Some(a) = ancestor {
                if let Some(k) = kinds.get(a) {
                    if **k != EntryKind::Dir {
                        return Err(bad(&format!("ancestor `{a}` is not a directory")));
                    }
                    break;
                }
                ancestor = parent(a);
            }
            if e.mode & !0o7777 != 0 {
                return Err(bad(&format!("mode {:o} has bits beyond 07777", e.mode)));
            }
            match &e.kind {
                EntryKind::Hardlink { target } => match kinds.get(target.as_str()) {
                    Some(EntryKind::File { .. }) => {}
                    _ => {
                        return Err(bad(&format!(
                            "hard link target `{target}` is not an earlier regular file"
                        )))
                    }
                },
                EntryKind::Symlink { target } if target.is_empty() || target.contains('\0') => {
                    return Err(bad("symlink target is empty or contains NUL"));
                }
                _ => {}
            }
            if let Some(name) = e.xattrs.keys().find(|n| n.is_empty() || n.contains('\0')) {
                return Err(bad(&format!("bad xattr name `{name}`")));
            }
            kinds.insert(&e.path, &e.kind);
        }
        Ok(())
    }

    /// The canonical encoding: `serde_json` of the manifest, entries in canonical order.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let m: Cow<'_, TreeManifest> = if self.is_sorted() {
            Cow::Borrowed(self)
        } else {
            let mut m = self.clone();
            m.canonicalize();
            Cow::Owned(m)
        };
        serde_json::to_vec(&*m).expect("a manifest always encodes")
    }

    /// The digest `Store::put_manifest` gives this manifest.
    pub fn digest(&self) -> TreeDigest {
        TreeDigest::from_hash(blake3::hash(&self.canonical_bytes()))
    }

    /// The entry at `path` (`""` is the root), if any; the manifest must be sorted.
    pub fn get(&self, path: &str) -> Option<&Entry> {
        self.entries
            .binary_search_by(|e| e.path.as_str().cmp(path))
            .ok()
            .map(|i| &self.entries[i])
    }

    /// The digests of the file contents the manifest names (with repeats).
    pub fn file_blobs(&self) -> impl Iterator<Item = BlobDigest> + '_ {
        self.entries.iter().filter_map(|e| match e.kind {
            EntryKind::File { digest, .. } => Some(digest),
            _ => None,
        })
    }
}

/// Path-by-path changes from `a` to `b`, sorted by path.
pub fn diff(a: &TreeManifest, b: &TreeManifest) -> Vec<TreeChange> {
    let am: BTreeMap<&str, &Entry> = a.entries.iter().map(|e| (e.path.as_str(), e)).collect();
    let bm: BTreeMap<&str, &Entry> = b.entries.iter().map(|e| (e.path.as_str(), e)).collect();
    let paths: std::collections::BTreeSet<&str> = am.keys().chain(bm.keys()).copied().collect();
    paths
        .into_iter()
        .filter_map(|p| match (am.get(p), bm.get(p)) {
            (Some(o), Some(n)) if o != n => Some(TreeChange::Changed {
                old: (*o).clone(),
                new: (*n).clone(),
            }),
            (Some(_), Some(_)) => None,
            (Some(o), None) => Some(TreeChange::Removed((*o).clone())),
            (None, Some(n)) => Some(TreeChange::Added((*n).clone())),
            (None, None) => None,
        })
        .collect()
}

/// The threads that store the files of an imported tree. A new blob waits on its `fsync` more
/// than it computes, so more threads than cores keep the disk busy and let the filesystem
/// batch concurrent syncs into one journal commit (halves a cold import of 50k files).
fn io_pool() -> &'static rayon::ThreadPool {
    static POOL: std::sync::OnceLock<rayon::ThreadPool> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        rayon::ThreadPoolBuilder::new()
            .num_threads((cores * 4).clamp(4, 32))
            .thread_name(|i| format!("imgspec-store-io-{i}"))
            .build()
            .expect("spawn the store's I/O threads")
    })
}

/// What [`Store::export_dir_stamped`] wrote: for each regular file, the inode's identity and
/// times right after the export, and the blob it holds. [`Store::import_dir_since`] takes a
/// file whose inode still has exactly these (same device and inode, size, mtime and ctime to
/// the nanosecond) as unchanged and does not read it again.
///
/// ctime is the witness: the kernel sets it to the current time on every change of content
/// or metadata, and nothing but a change of the system clock can set it back. The export
/// waits until the clock has moved past the newest ctime it recorded, so even a change made
/// in the same clock tick as the export shows.
#[derive(Debug, Default)]
pub struct Checkout {
    files: HashMap<String, (Stamp, BlobDigest)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(m: &fs::Metadata) -> Stamp {
        Stamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }
}

impl Checkout {
    /// Regular files recorded.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// The content of `rel` as exported, if `meta` shows its inode untouched since.
    fn unchanged(&self, rel: &str, meta: &fs::Metadata) -> Option<BlobDigest> {
        let (stamp, digest) = self.files.get(rel)?;
        (*stamp == Stamp::of(meta)).then_some(*digest)
    }
}

/// One filesystem object found by the walk of `import_dir`.
struct Found {
    rel: String,
    abs: PathBuf,
    meta: fs::Metadata,
}

fn join_rel(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}/{name}")
    }
}

pub(crate) fn clamp(mtime: i64, opts: &ImportOptions) -> i64 {
    opts.clamp_mtime.map_or(mtime, |c| mtime.min(c))
}

impl Store {
    /// Stores `m` as a blob (entries put in canonical order first) and returns its digest.
    pub fn put_manifest(&self, m: &TreeManifest) -> Result<TreeDigest> {
        let m: Cow<'_, TreeManifest> = if m.is_sorted() {
            Cow::Borrowed(m)
        } else {
            let mut m = m.clone();
            m.canonicalize();
            Cow::Owned(m)
        };
        m.validate()?;
        let r = self.put_bytes(&m.canonical_bytes())?;
        Ok(TreeDigest(r.digest.0))
    }

    /// The manifest with digest `d`, checked against it.
    pub fn get_manifest(&self, d: &TreeDigest) -> Result<TreeManifest> {
        let bytes = self.read_blob(&BlobDigest::from(*d))?;
        serde_json::from_slice(&bytes)
            .map_err(|source| StoreError::BadManifest { digest: *d, source })
    }

    /// Imports the tree under `dir` (which itself becomes the root entry), storing every file's
    /// content. Symlinks are not followed, other filesystems mounted below `dir` are not
    /// entered (their mount points are kept as directories), sockets are skipped, and files
    /// that share an inode become hard links to the first of their paths.
    pub fn import_dir(&self, dir: &Path, opts: &ImportOptions) -> Result<TreeManifest> {
        self.import_dir_since(dir, opts, &Checkout::default())
    }

    /// Like [`Store::import_dir`], for a tree that [`Store::export_dir_stamped`] wrote: the
    /// regular files still as exported (see [`Checkout`]) are taken from `since` without
    /// reading them; only what changed is hashed and stored.
    pub fn import_dir_since(
        &self,
        dir: &Path,
        opts: &ImportOptions,
        since: &Checkout,
    ) -> Result<TreeManifest> {
        let root_meta = fs::metadata(dir).map_err(StoreError::io(dir))?;
        if !root_meta.is_dir() {
            return Err(StoreError::bad_entry(
                dir.display().to_string(),
                "not a directory",
            ));
        }
        let dev = root_meta.dev();
        let mut found = vec![Found {
            rel: String::new(),
            abs: dir.to_path_buf(),
            meta: root_meta,
        }];
        let mut stack = vec![(String::new(), dir.to_path_buf())];
        while let Some((rel, abs)) = stack.pop() {
            for ent in fs::read_dir(&abs).map_err(StoreError::io(&abs))? {
                let ent = ent.map_err(StoreError::io(&abs))?;
                let name = ent.file_name();
                let Some(name) = name.to_str() else {
                    return Err(StoreError::bad_entry(
                        join_rel(&rel, &name.to_string_lossy()),
                        "path is not UTF-8",
                    ));
                };
                let child_rel = join_rel(&rel, name);
                let child_abs = ent.path();
                let meta = fs::symlink_metadata(&child_abs).map_err(StoreError::io(&child_abs))?;
                if meta.file_type().is_socket() {
                    continue;
                }
                if meta.is_dir() && meta.dev() == dev {
                    stack.push((child_rel.clone(), child_abs.clone()));
                }
                found.push(Found {
                    rel: child_rel,
                    abs: child_abs,
                    meta,
                });
            }
        }
        found.sort_by(|a, b| a.rel.cmp(&b.rel));

        // The first path (in manifest order) of an inode holds the content; the others link.
        let mut first_of: HashMap<(u64, u64), &str> = HashMap::new();
        let links: Vec<Option<String>> = found
            .iter()
            .map(|f| {
                if !(f.meta.is_file() && f.meta.nlink() > 1) {
                    return None;
                }
                match first_of.entry((f.meta.dev(), f.meta.ino())) {
                    std::collections::hash_map::Entry::Occupied(o) => Some(o.get().to_string()),
                    std::collections::hash_map::Entry::Vacant(v) => {
                        v.insert(&f.rel);
                        None
                    }
                }
            })
            .collect();

        let entries = io_pool().install(|| {
            found
                .par_iter()
                .zip(links.par_iter())
                .map(|(f, link)| self.import_entry(f, link.as_deref(), opts, since))
                .collect::<Result<Vec<Entry>>>()
        })?;
        let m = TreeManifest { entries };
        m.validate()?;
        Ok(m)
    }

    fn import_entry(
        &self,
        f: &Found,
        link: Option<&str>,
        opts: &ImportOptions,
        since: &Checkout,
    ) -> Result<Entry> {
        let ft = f.meta.file_type();
        let kind = if ft.is_dir() {
            EntryKind::Dir
        } else if ft.is_symlink() {
            let target = fs::read_link(&f.abs).map_err(StoreError::io(&f.abs))?;
            let Some(target) = target.to_str() else {
                return Err(StoreError::bad_entry(&f.rel, "symlink target is not UTF-8"));
            };
            EntryKind::Symlink {
                target: target.to_string(),
            }
        } else if ft.is_file() {
            match link {
                Some(target) => EntryKind::Hardlink {
                    target: target.to_string(),
                },
                None => match since.unchanged(&f.rel, &f.meta) {
                    Some(digest) => EntryKind::File {
                        digest,
                        size: f.meta.size(),
                    },
                    None => {
                        let r = self.put_file_nofollow(&f.abs)?;
                        EntryKind::File {
                            digest: r.digest,
                            size: r.size,
                        }
                    }
                },
            }
        } else if ft.is_fifo() {
            EntryKind::Fifo
        } else if ft.is_char_device() || ft.is_block_device() {
            let (major, minor) = sys::dev_major_minor(f.meta.rdev());
            if ft.is_char_device() {
                EntryKind::Char { major, minor }
            } else {
                EntryKind::Block { major, minor }
            }
        } else {
            return Err(StoreError::bad_entry(&f.rel, "unsupported file type"));
        };
        let mut xattrs = BTreeMap::new();
        for (name, value) in sys::list_xattrs(&f.abs).map_err(StoreError::io(&f.abs))? {
            let name = String::from_utf8(name)
                .map_err(|_| StoreError::bad_entry(&f.rel, "xattr name is not UTF-8"))?;
            xattrs.insert(name, value);
        }
        Ok(Entry {
            path: f.rel.clone(),
            kind,
            mode: f.meta.mode() & 0o7777,
            uid: f.meta.uid(),
            gid: f.meta.gid(),
            mtime: clamp(f.meta.mtime(), opts),
            xattrs,
        })
    }

    /// Materialises `m` in `dest`, an existing empty directory (which takes the root entry's
    /// metadata). Owners and xattrs are applied when running as root. Without root, owners
    /// and device nodes are skipped and only `user.*` xattrs are set, all silently: the
    /// caller that needs them exact must run as root.
    pub fn export_dir(&self, m: &TreeManifest, dest: &Path) -> Result<()> {
        self.export_dir_inner(m, dest)
    }

    /// Like [`Store::export_dir`], and returns the [`Checkout`] that lets
    /// [`Store::import_dir_since`] skip the files nobody changed. Returns once the clock has
    /// moved past the last change the export made.
    pub fn export_dir_stamped(&self, m: &TreeManifest, dest: &Path) -> Result<Checkout> {
        self.export_dir_inner(m, dest)?;
        self.stamp(m, dest)
    }

    /// The [`Checkout`] of `dest`, a folder that holds exactly `m`.
    pub(crate) fn stamp(&self, m: &TreeManifest, dest: &Path) -> Result<Checkout> {
        let at = |rel: &str| {
            if rel.is_empty() {
                dest.to_path_buf()
            } else {
                dest.join(rel)
            }
        };
        let files = m
            .entries
            .par_iter()
            .filter_map(|e| match &e.kind {
                EntryKind::File { digest, .. } => Some((e, *digest)),
                _ => None,
            })
            .map(|(e, digest)| {
                let p = at(&e.path);
                let meta = fs::symlink_metadata(&p).map_err(StoreError::io(&p))?;
                Ok((e.path.clone(), (Stamp::of(&meta), digest)))
            })
            .collect::<Result<HashMap<_, _>>>()?;
        let newest = files.values().map(|(s, _)| s.ctime).max().unwrap_or((0, 0));
        self.wait_past(newest)?;
        Ok(Checkout { files })
    }

    /// Waits until a change made now would get a ctime after `t` (the kernel stamps ctimes
    /// with a clock that ticks every few milliseconds), by touching a probe file.
    fn wait_past(&self, t: (i64, i64)) -> Result<()> {
        let probe = tempfile::Builder::new()
            .prefix("clock-")
            .tempfile_in(&self.session)
            .map_err(StoreError::io(&self.session))?;
        for _ in 0..1000 {
            probe
                .as_file()
                .set_permissions(fs::Permissions::from_mode(0o600))
                .map_err(StoreError::io(probe.path()))?;
            let m = probe
                .as_file()
                .metadata()
                .map_err(StoreError::io(probe.path()))?;
            if (m.ctime(), m.ctime_nsec()) > t {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        Err(StoreError::Io {
            path: probe.path().to_path_buf(),
            source: std::io::Error::other("the clock did not move past the export's last change"),
        })
    }

    fn export_dir_inner(&self, m: &TreeManifest, dest: &Path) -> Result<()> {
        m.validate()?;
        if fs::read_dir(dest)
            .map_err(StoreError::io(dest))?
            .next()
            .is_some()
        {
            return Err(StoreError::Io {
                path: dest.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::DirectoryNotEmpty,
                    "export destination is not empty",
                ),
            });
        }
        let listed: HashSet<&str> = m.entries.iter().map(|e| e.path.as_str()).collect();
        let all: Vec<&Entry> = m.entries.iter().collect();
        self.export_entries(&all, &listed, dest)
    }

    /// Writes `entries` (in manifest order, none of them there yet but the root) below `dest`
    /// with their content and metadata, as [`Store::export_dir`] does for a whole tree.
    /// `listed` is every path of the tree they belong to: a parent it lacks is created.
    pub(crate) fn export_entries(
        &self,
        entries: &[&Entry],
        listed: &HashSet<&str>,
        dest: &Path,
    ) -> Result<()> {
        let root = sys::is_root();
        let at = |rel: &str| at(dest, rel);
        let mut skipped: HashSet<&str> = HashSet::new();
        let mut files = Vec::new();
        let mut links = Vec::new();

        // Structure first: directories, special files, then file contents in parallel.
        for e in entries {
            let p = at(&e.path);
            if let Some(dir) = parent(&e.path).filter(|d| !listed.contains(d)) {
                let dir = at(dir);
                fs::create_dir_all(&dir).map_err(StoreError::io(&dir))?;
            }
            match &e.kind {
                EntryKind::Dir if e.path.is_empty() => {}
                EntryKind::Dir => fs::create_dir(&p).map_err(StoreError::io(&p))?,
                EntryKind::File { digest, .. } => files.push((digest, p)),
                EntryKind::Symlink { target } => {
                    std::os::unix::fs::symlink(target, &p).map_err(StoreError::io(&p))?
                }
                EntryKind::Hardlink { target } => links.push((at(target), p)),
                EntryKind::Char { major, minor } | EntryKind::Block { major, minor } => {
                    let block = matches!(e.kind, EntryKind::Block { .. });
                    match sys::mknod(&p, block, *major, *minor) {
                        Ok(()) => {}
                        Err(err) if !root && err.kind() == std::io::ErrorKind::PermissionDenied => {
                            skipped.insert(&e.path);
                        }
                        Err(err) => {
                            return Err(StoreError::Io {
                                path: p,
                                source: err,
                            })
                        }
                    }
                }
                EntryKind::Fifo => sys::mkfifo(&p).map_err(StoreError::io(&p))?,
            }
        }
        // Decompression is CPU work with no sync per file: the global pool, one thread a core.
        files.par_iter().try_for_each(|(digest, p)| -> Result<()> {
            let f = fs::File::options()
                .write(true)
                .create_new(true)
                .open(p)
                .map_err(StoreError::io(p))?;
            self.write_sparse(digest, &f, p)?;
            Ok(())
        })?;
        for (target, p) in links {
            fs::hard_link(&target, &p).map_err(StoreError::io(&p))?;
        }

        // Then metadata, each kind over the whole tree in the order that keeps it: owners
        // (which clear setuid bits and capabilities), modes, xattrs, mtimes; directories last
        // and deepest first, so filling them in does not bump their mtime again.
        let own: Vec<&Entry> = entries
            .iter()
            .copied()
            .filter(|e| !matches!(e.kind, EntryKind::Hardlink { .. }))
            .filter(|e| !skipped.contains(e.path.as_str()))
            .collect();
        if root {
            for e in &own {
                let p = at(&e.path);
                std::os::unix::fs::lchown(&p, Some(e.uid), Some(e.gid))
                    .map_err(StoreError::io(&p))?;
            }
        }
        for e in own
            .iter()
            .filter(|e| !matches!(e.kind, EntryKind::Dir | EntryKind::Symlink { .. }))
        {
            let p = at(&e.path);
            fs::set_permissions(&p, fs::Permissions::from_mode(e.mode))
                .map_err(StoreError::io(&p))?;
        }
        for e in &own {
            let p = at(&e.path);
            for (name, value) in &e.xattrs {
                if root {
                    sys::set_xattr(&p, name, value).map_err(StoreError::io(&p))?;
                } else if name.starts_with("user.") {
                    // The one namespace a user may set; best effort, like owners.
                    let _ = sys::set_xattr(&p, name, value);
                }
            }
        }
        for e in own.iter().filter(|e| e.kind != EntryKind::Dir) {
            let p = at(&e.path);
            sys::set_times_nofollow(&p, e.mtime).map_err(StoreError::io(&p))?;
        }
        for e in own.iter().rev().filter(|e| e.kind == EntryKind::Dir) {
            let p = at(&e.path);
            fs::set_permissions(&p, fs::Permissions::from_mode(e.mode))
                .map_err(StoreError::io(&p))?;
            sys::set_times_nofollow(&p, e.mtime).map_err(StoreError::io(&p))?;
        }
        Ok(())
    }
}

/// Where manifest path `rel` of a tree materialised at `dest` is.
pub(crate) fn at(dest: &Path, rel: &str) -> PathBuf {
    if rel.is_empty() {
        dest.to_path_buf()
    } else {
        dest.join(rel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, kind: EntryKind) -> Entry {
        Entry {
            path: path.into(),
            kind,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 0,
            xattrs: BTreeMap::new(),
        }
    }

    fn file(path: &str, byte: u8) -> Entry {
        entry(
            path,
            EntryKind::File {
                digest: BlobDigest([byte; 32]),
                size: 1,
            },
        )
    }

    #[test]
    fn import_since_an_export_reads_only_what_changed() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let src = dir.path().join("src");
        fs::create_dir_all(src.join("etc")).unwrap();
        for name in ["etc/a", "etc/b", "etc/c", "etc/d"] {
            fs::write(src.join(name), format!("{name} content")).unwrap();
        }
        let m = store.import_dir(&src, &ImportOptions::default()).unwrap();
        let root = dir.path().join("root");
        fs::create_dir(&root).unwrap();
        let mut checkout = store.export_dir_stamped(&m, &root).unwrap();
        assert_eq!(checkout.len(), 4);
        // A file nobody touched is taken from the checkout without being read: give the
        // checkout a digest the file does not have and it comes back.
        let planted = BlobDigest([7; 32]);
        checkout.files.get_mut("etc/a").unwrap().1 = planted;
        // The same size and mtime, new content, right after the export: ctime shows it.
        let b = root.join("etc/b");
        let mtime = fs::metadata(&b).unwrap().mtime();
        let mut f = fs::OpenOptions::new().write(true).open(&b).unwrap();
        f.write_all(b"etc/b CONTENT").unwrap();
        drop(f);
        crate::sys::set_times_nofollow(&b, mtime).unwrap();
        // Replaced by another file (new inode); a new file.
        fs::remove_file(root.join("etc/c")).unwrap();
        fs::write(root.join("etc/c"), "etc/c content").unwrap();
        fs::write(root.join("etc/new"), "new").unwrap();
        let back = store
            .import_dir_since(&root, &ImportOptions::default(), &checkout)
            .unwrap();
        let digest = |path: &str| match &back.get(path).unwrap().kind {
            EntryKind::File { digest, .. } => *digest,
            k => panic!("{path}: {k:?}"),
        };
        let hash = |b: &[u8]| BlobDigest::from_hash(blake3::hash(b));
        assert_eq!(digest("etc/a"), planted, "untouched: not read");
        assert_eq!(
            digest("etc/b"),
            hash(b"etc/b CONTENT"),
            "edited in place: read"
        );
        assert_eq!(digest("etc/c"), hash(b"etc/c content"), "replaced: read");
        assert_eq!(digest("etc/d"), hash(b"etc/d content"));
        assert_eq!(digest("etc/new"), hash(b"new"));
        assert!(store.has_blob(&hash(b"etc/b CONTENT")));
    }

    #[test]
    fn canonical_order_is_byte_order_with_parents_first() {
        let mut m = TreeManifest {
            entries: vec![
                file("a/b", 1),
                entry("a", EntryKind::Dir),
                file("a-b", 2),
                entry("", EntryKind::Dir),
            ],
        };
        assert!(!m.is_sorted());
        let digest = m.digest();
        m.canonicalize();
        let paths: Vec<&str> = m.entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["", "a", "a-b", "a/b"]);
        assert_eq!(
            m.digest(),
            digest,
            "the digest does not depend on the order given"
        );
        m.validate().unwrap();
        assert_eq!(m.get("a-b").unwrap().path, "a-b");
        assert!(m.get("b").is_none());
    }

    #[test]
    fn validation_rejects_what_cannot_be_materialised() {
        let bad = [
            vec![file("a", 1), file("a", 2)],
            vec![file("../a", 1)],
            vec![file("/a", 1)],
            vec![file("a//b", 1)],
            vec![file("", 1)],
            vec![
                entry(
                    "a",
                    EntryKind::Symlink {
                        target: "/etc".into(),
                    },
                ),
                file("a/b", 1),
            ],
            vec![file("a", 1), file("a/b/c", 1)],
            vec![
                entry("a", EntryKind::Hardlink { target: "b".into() }),
                file("b", 1),
            ],
            vec![
                entry("a", EntryKind::Dir),
                entry("b", EntryKind::Hardlink { target: "a".into() }),
            ],
            vec![Entry {
                mode: 0o100644,
                ..file("a", 1)
            }],
        ];
        for entries in bad {
            let m = TreeManifest {
                entries: entries.clone(),
            };
            assert!(
                matches!(m.validate(), Err(StoreError::BadEntry { .. })),
                "accepted {entries:?}"
            );
        }
        let good = TreeManifest {
            entries: vec![
                file("a", 1),
                entry("b", EntryKind::Hardlink { target: "a".into() }),
                file("c/d", 1),
            ],
        };
        good.validate().unwrap();
    }

    #[test]
    fn diff_lists_changes_by_path() {
        let a = TreeManifest {
            entries: vec![
                entry("", EntryKind::Dir),
                file("a", 1),
                file("b", 2),
                file("c", 3),
            ],
        };
        let b = TreeManifest {
            entries: vec![
                entry("", EntryKind::Dir),
                file("a", 1),
                file("b", 9),
                file("d", 4),
            ],
        };
        assert_eq!(
            diff(&a, &b),
            vec![
                TreeChange::Changed {
                    old: file("b", 2),
                    new: file("b", 9)
                },
                TreeChange::Removed(file("c", 3)),
                TreeChange::Added(file("d", 4)),
            ]
        );
        assert!(diff(&a, &a).is_empty());
    }
}
