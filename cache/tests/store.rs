//! The store, end to end on a real filesystem: what goes in comes out, bit for bit, and what is
//! damaged or missing is never handed out.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use imgspec_cache::*;

fn is_root() -> bool {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn set_xattr(p: &Path, name: &str, value: &[u8]) {
    let (p, n) = (cstr(p), CString::new(name).unwrap());
    // SAFETY: NUL-terminated strings and a buffer valid for its length.
    let r = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(r, 0, "setxattr {name}: {}", std::io::Error::last_os_error());
}

fn get_xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let (p, n) = (cstr(p), CString::new(name).unwrap());
    let mut buf = vec![0u8; 4096];
    // SAFETY: NUL-terminated strings and a buffer valid for its length.
    let r = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (r >= 0).then(|| buf[..r as usize].to_vec())
}

fn mkfifo(p: &Path) {
    // SAFETY: NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(cstr(p).as_ptr(), 0o640) }, 0);
}

fn set_mtime(p: &Path, secs: i64) {
    let t = libc::timespec {
        tv_sec: secs,
        tv_nsec: 0,
    };
    // SAFETY: NUL-terminated path and two timespecs.
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            cstr(p).as_ptr(),
            [t, t].as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(r, 0);
}

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("store")).unwrap();
    (dir, store)
}

fn key(n: u8) -> StepKey {
    StepKey::from_hash(blake3::hash(&[n]))
}

fn files_output(refs: &[(&str, &FileRef)]) -> StepOutput {
    StepOutput {
        files: refs
            .iter()
            .map(|(n, r)| (n.to_string(), (*r).clone()))
            .collect(),
        ..Default::default()
    }
}

/// Overwrites a blob's file (blobs are read-only) with `bytes`.
fn overwrite_blob(store: &Store, d: &BlobDigest, bytes: &[u8]) {
    let path = store.blob_path(d);
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&path, bytes).unwrap();
}

/// Replaces a blob's file with a well-formed blob of other content.
fn corrupt(store: &Store, d: &BlobDigest) {
    overwrite_blob(
        store,
        d,
        &zstd::encode_all(&b"not what was stored"[..], 3).unwrap(),
    );
}

/// A tree with one of everything a root filesystem holds.
fn sample_tree(root: &Path) {
    fs::create_dir_all(root.join("etc/ssh")).unwrap();
    fs::create_dir_all(root.join("usr/bin")).unwrap();
    fs::create_dir_all(root.join("empty")).unwrap();
    fs::write(root.join("etc/hostname"), "imgspec\n").unwrap();
    fs::write(root.join("etc/ssh/sshd_config"), "PermitRootLogin no\n").unwrap();
    fs::write(root.join("usr/bin/tool"), "#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(root.join("usr/bin/tool"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(root.join("usr/bin/su"), vec![7u8; 300_000]).unwrap();
    fs::set_permissions(root.join("usr/bin/su"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::hard_link(root.join("usr/bin/tool"), root.join("usr/bin/tool-again")).unwrap();
    std::os::unix::fs::symlink("../etc/hostname", root.join("usr/hostname-link")).unwrap();
    mkfifo(&root.join("etc/initctl"));
    set_xattr(
        &root.join("etc/hostname"),
        "user.imgspec",
        b"\x00binary\xff",
    );
    if is_root() {
        let null = cstr(&root.join("null"));
        // SAFETY: NUL-terminated path.
        assert_eq!(
            unsafe { libc::mknod(null.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) },
            0
        );
        std::os::unix::fs::lchown(root.join("etc/ssh"), Some(1000), Some(1001)).unwrap();
    }
    set_mtime(&root.join("etc/hostname"), 1_000_000_000);
    set_mtime(&root.join("usr"), 1_200_000_000);
    set_mtime(&root.join("usr/hostname-link"), 1_100_000_000);
}

#[test]
fn bytes_round_trip_and_layout() {
    let (_d, store) = store();
    let root = store.root().to_path_buf();
    assert!(fs::read_to_string(root.join("CACHEDIR.TAG"))
        .unwrap()
        .starts_with("Signature: 8a477f597d28d172789f06886806bc55"));
    assert!(root.join("index-v1.sqlite").is_file());

    let r = store.put_bytes(b"hello").unwrap();
    assert_eq!(r.digest, BlobDigest::from_hash(blake3::hash(b"hello")));
    assert_eq!(r.size, 5);
    let hex = r.digest.to_hex();
    let on_disk = root.join("blobs-v1").join(&hex[..2]).join(&hex[2..]);
    assert_eq!(store.blob_path(&r.digest), on_disk);
    assert_eq!(
        fs::metadata(&on_disk).unwrap().mode() & 0o777,
        0o444,
        "blobs are read-only"
    );
    assert_eq!(
        zstd::decode_all(&fs::read(&on_disk).unwrap()[..]).unwrap(),
        b"hello"
    );
    assert_eq!(store.read_blob(&r.digest).unwrap(), b"hello");
    assert_eq!(
        store.put_bytes(b"hello").unwrap(),
        r,
        "storing twice is success"
    );

    // Large and streamed: the multithreaded compressor, unknown length.
    let big: Vec<u8> = (0..5_000_000u32).map(|i| (i % 251) as u8).collect();
    let r2 = store.put_reader(&mut &big[..]).unwrap();
    assert_eq!(r2.digest, BlobDigest::from_hash(blake3::hash(&big)));
    assert_eq!(store.read_blob(&r2.digest).unwrap(), big);
    let mut streamed = Vec::new();
    store
        .open_blob(&r2.digest)
        .unwrap()
        .read_to_end(&mut streamed)
        .unwrap();
    assert_eq!(streamed, big);

    let src = store.tmp_dir("test-").unwrap();
    assert!(src.path().starts_with(root.join("tmp")));
    fs::write(src.path().join("f"), &big).unwrap();
    assert_eq!(store.put_file(&src.path().join("f")).unwrap(), r2);

    let empty = store.put_bytes(b"").unwrap();
    assert_eq!(store.read_blob(&empty.digest).unwrap(), b"");
    let missing = BlobDigest([9; 32]);
    assert!(!store.has_blob(&missing));
    assert!(matches!(store.read_blob(&missing), Err(StoreError::MissingBlob(d)) if d == missing));

    // Nothing is left behind in tmp/ but the session's lock.
    drop(src);
    let session: Vec<_> = fs::read_dir(root.join("tmp"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(session.len(), 1);
    let left: Vec<_> = fs::read_dir(&session[0])
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, [".lock"]);
}

#[test]
fn directory_tree_round_trips() {
    let (d, store) = store();
    let src = d.path().join("src");
    sample_tree(&src);
    let m = store.import_dir(&src, &ImportOptions::default()).unwrap();
    m.validate().unwrap();

    let get = |p: &str| m.get(p).unwrap_or_else(|| panic!("no entry {p}"));
    assert_eq!(get("").kind, EntryKind::Dir);
    assert_eq!(get("etc/initctl").kind, EntryKind::Fifo);
    assert_eq!(get("etc/initctl").mode, 0o640);
    assert_eq!(
        get("usr/hostname-link").kind,
        EntryKind::Symlink {
            target: "../etc/hostname".into()
        }
    );
    assert_eq!(get("usr/hostname-link").mtime, 1_100_000_000);
    assert!(matches!(
        get("usr/bin/tool").kind,
        EntryKind::File { size: 18, .. }
    ));
    assert_eq!(get("usr/bin/tool").mode, 0o755);
    assert_eq!(
        get("usr/bin/tool-again").kind,
        EntryKind::Hardlink {
            target: "usr/bin/tool".into()
        }
    );
    assert_eq!(get("usr/bin/su").mode, 0o4755);
    assert_eq!(
        get("etc/hostname").xattrs.get("user.imgspec").unwrap(),
        b"\x00binary\xff"
    );
    assert_eq!(get("etc/hostname").mtime, 1_000_000_000);
    if is_root() {
        assert_eq!(get("null").kind, EntryKind::Char { major: 1, minor: 3 });
        assert_eq!((get("etc/ssh").uid, get("etc/ssh").gid), (1000, 1001));
    }

    let digest = store.put_manifest(&m).unwrap();
    assert_eq!(digest, m.digest());
    assert_eq!(store.get_manifest(&digest).unwrap(), m);

    let out = d.path().join("out");
    fs::create_dir(&out).unwrap();
    store.export_dir(&m, &out).unwrap();
    let again = store.import_dir(&out, &ImportOptions::default()).unwrap();
    assert_eq!(
        diff(&m, &again),
        vec![],
        "export then import changes nothing"
    );
    assert_eq!(again, m);

    // What a person would check by hand on the exported tree.
    assert_eq!(
        fs::read_to_string(out.join("etc/hostname")).unwrap(),
        "imgspec\n"
    );
    assert_eq!(
        fs::metadata(out.join("usr/bin/su")).unwrap().mode() & 0o7777,
        0o4755
    );
    assert_eq!(
        fs::metadata(out.join("usr/bin/tool")).unwrap().ino(),
        fs::metadata(out.join("usr/bin/tool-again")).unwrap().ino()
    );
    assert_eq!(
        fs::read_link(out.join("usr/hostname-link")).unwrap(),
        Path::new("../etc/hostname")
    );
    assert!(fs::symlink_metadata(out.join("etc/initctl"))
        .unwrap()
        .file_type()
        .is_fifo_like());
    assert_eq!(
        fs::metadata(out.join("usr")).unwrap().mtime(),
        1_200_000_000
    );
    assert_eq!(
        get_xattr(&out.join("etc/hostname"), "user.imgspec").unwrap(),
        b"\x00binary\xff"
    );

    // Exporting needs an empty destination.
    assert!(store.export_dir(&m, &out).is_err());
}

trait FifoLike {
    fn is_fifo_like(&self) -> bool;
}
impl FifoLike for fs::FileType {
    fn is_fifo_like(&self) -> bool {
        std::os::unix::fs::FileTypeExt::is_fifo(self)
    }
}

#[test]
fn import_clamps_mtimes_and_refuses_non_utf8_names() {
    let (d, store) = store();
    let src = d.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("new"), "x").unwrap();
    set_mtime(&src.join("new"), 2_000_000_000);
    let m = store
        .import_dir(
            &src,
            &ImportOptions {
                clamp_mtime: Some(1_500_000_000),
            },
        )
        .unwrap();
    assert_eq!(m.get("new").unwrap().mtime, 1_500_000_000);

    let bad = std::ffi::OsStr::from_bytes(b"caf\xe9");
    fs::write(src.join(bad), "x").unwrap();
    match store.import_dir(&src, &ImportOptions::default()) {
        Err(StoreError::BadEntry { reason, .. }) => assert!(reason.contains("UTF-8"), "{reason}"),
        other => panic!("expected BadEntry, got {other:?}"),
    }
}

#[test]
fn a_corrupt_blob_is_never_handed_out() {
    let (d, store) = store();
    let content = b"the real content".repeat(1000);
    let r = store.put_bytes(&content).unwrap();
    let other = store.put_bytes(b"unrelated").unwrap();
    store
        .record(&key(1), "files", "one", &files_output(&[("f", &r)]))
        .unwrap();
    store
        .record(&key(2), "files", "two", &files_output(&[("g", &other)]))
        .unwrap();
    corrupt(&store, &r.digest);

    match store.read_blob(&r.digest) {
        Err(StoreError::Corrupt { digest, actual }) => {
            assert_eq!(digest, r.digest);
            assert_eq!(
                actual,
                BlobDigest::from_hash(blake3::hash(b"not what was stored"))
            );
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    let dest = d.path().join("out.img");
    let err = store.blob_to_file(&r.digest, &dest).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    assert!(!dest.exists(), "nothing appears at the destination");
    assert_eq!(
        fs::read_dir(d.path()).unwrap().count(),
        1,
        "no temp file left beside it"
    );

    // Bytes that are not zstd at all.
    overwrite_blob(&store, &other.digest, b"garbage");
    let err = store.read_blob(&other.digest).unwrap_err();
    assert!(
        matches!(err, StoreError::Undecodable { .. }) && err.is_corrupt(),
        "{err:?}"
    );

    let report = store.verify().unwrap();
    assert_eq!(report.blobs_checked, 2);
    let mut corrupt_found = report.corrupt.clone();
    corrupt_found.sort();
    let mut expected = vec![r.digest, other.digest];
    expected.sort();
    assert_eq!(corrupt_found, expected);
    let mut dropped: Vec<(&str, DropReason)> = report
        .dropped
        .iter()
        .map(|d| (d.name.as_str(), d.reason))
        .collect();
    dropped.sort_by_key(|d| d.0);
    assert_eq!(
        dropped,
        [
            ("one", DropReason::CorruptBlob),
            ("two", DropReason::CorruptBlob)
        ]
    );
    assert!(report.missing.is_empty(), "{:?}", report.missing);
    assert!(!store.has_blob(&r.digest), "a corrupt blob is deleted");
    assert_eq!(store.lookup(&key(1)).unwrap(), None);
    assert!(store.list().unwrap().is_empty());

    // Storing the content again heals the store.
    assert_eq!(store.put_bytes(&content).unwrap(), r);
    assert_eq!(store.read_blob(&r.digest).unwrap(), content);
    let clean = store.verify().unwrap();
    assert!(clean.corrupt.is_empty() && clean.dropped.is_empty());
}

#[test]
fn a_corrupt_file_blob_fails_an_export() {
    let (d, store) = store();
    let src = d.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("f"), "content").unwrap();
    let m = store.import_dir(&src, &ImportOptions::default()).unwrap();
    let EntryKind::File { digest, .. } = m.get("f").unwrap().kind else {
        panic!()
    };
    corrupt(&store, &digest);
    let out = d.path().join("out");
    fs::create_dir(&out).unwrap();
    assert!(store.export_dir(&m, &out).unwrap_err().is_corrupt());
    let err = store.export_tar(&m, &mut Vec::new(), None).unwrap_err();
    assert!(err.is_corrupt(), "{err:?}");
    // The damaged blob is found wherever the error travelled: as is, or inside the
    // `io::Error` of a reader (whose `source` skips what it wraps).
    assert_eq!(err.damaged_blob(), Some(digest));
    let mut buf = Vec::new();
    let read = store.open_blob(&digest).unwrap().read_to_end(&mut buf);
    let io_err = std::io::Error::other(read.unwrap_err());
    assert_eq!(damaged_blob(&io_err), Some(digest));
    let wrapped = StoreError::Io {
        path: "pipe".into(),
        source: io_err,
    };
    assert_eq!(wrapped.damaged_blob(), Some(digest));
    assert_eq!(damaged_blob(&wrapped), Some(digest));
    assert_eq!(damaged_blob(&std::io::Error::other("unrelated")), None);
}

#[test]
fn tar_export_is_deterministic_and_imports_back() {
    let (d, store) = store();
    let src = d.path().join("src");
    sample_tree(&src);
    // A name too long for ustar, and a deep one that needs the prefix field.
    let long = "l".repeat(150);
    fs::write(src.join("etc").join(&long), "long").unwrap();
    let deep = src.join("usr").join("d".repeat(90)).join("e".repeat(60));
    fs::create_dir_all(&deep).unwrap();
    fs::write(deep.join("f"), "deep").unwrap();
    std::os::unix::fs::symlink("t".repeat(120), src.join("long-link")).unwrap();
    let m = store.import_dir(&src, &ImportOptions::default()).unwrap();

    let mut a = Vec::new();
    store.export_tar(&m, &mut a, None).unwrap();
    let mut b = Vec::new();
    store.export_tar(&m, &mut b, None).unwrap();
    assert_eq!(a, b, "the same manifest gives the same bytes");

    let back = store
        .import_tar(&mut &a[..], &ImportOptions::default())
        .unwrap();
    assert_eq!(diff(&m, &back), vec![]);
    assert_eq!(back, m);

    // The clamp is applied, and only it changes the bytes.
    let mut c = Vec::new();
    store.export_tar(&m, &mut c, Some(1_050_000_000)).unwrap();
    assert_ne!(a, c);
    let clamped = store
        .import_tar(&mut &c[..], &ImportOptions::default())
        .unwrap();
    assert!(clamped.entries.iter().all(|e| e.mtime <= 1_050_000_000));
    assert_eq!(clamped.get("etc/hostname").unwrap().mtime, 1_000_000_000);

    // GNU tar reads the archive as the same tree.
    if Command::new("tar").arg("--version").output().is_ok() {
        let tarball = d.path().join("t.tar");
        fs::write(&tarball, &a).unwrap();
        let listing = Command::new("tar")
            .arg("-tvf")
            .arg(&tarball)
            .output()
            .unwrap();
        assert!(
            listing.status.success(),
            "{}",
            String::from_utf8_lossy(&listing.stderr)
        );
        let listing = String::from_utf8(listing.stdout).unwrap();
        assert!(listing.contains(&format!("./etc/{long}")), "{listing}");
        assert!(
            listing.contains("./usr/bin/tool-again link to ./usr/bin/tool"),
            "{listing}"
        );
        if is_root() {
            let x = d.path().join("x");
            fs::create_dir(&x).unwrap();
            let st = Command::new("tar")
                .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf"])
                .arg(&tarball)
                .arg("-C")
                .arg(&x)
                .status()
                .unwrap();
            assert!(st.success());
            let extracted = store.import_dir(&x, &ImportOptions::default()).unwrap();
            // GNU tar restores the root's mtime and mode only with `.` listed; compare the rest.
            assert_eq!(
                diff(&m, &extracted)
                    .into_iter()
                    .filter(
                        |c| !matches!(c, TreeChange::Changed { new, .. } if new.path.is_empty())
                    )
                    .count(),
                0
            );
        }
    }
}

/// A GNU-format archive as other tools write it: `./` names, GNU long names, hard links,
/// implied parents, PAX xattrs.
#[test]
fn gnu_tar_import() {
    let (_d, store) = store();
    let mut b = tar::Builder::new(Vec::new());
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o700);
    dir.set_uid(0);
    dir.set_gid(0);
    dir.set_mtime(0);
    dir.set_size(0);
    b.append_data(&mut dir, "./", &[][..]).unwrap();
    let mut f = tar::Header::new_gnu();
    f.set_mode(0o600);
    f.set_uid(5);
    f.set_gid(0);
    f.set_mtime(1234);
    f.set_size(4);
    let long = format!("./a/{}/file", "x".repeat(120));
    b.append_data(&mut f, &long, &b"data"[..]).unwrap();
    b.append_pax_extensions([("SCHILY.xattr.user.k", &b"v"[..])])
        .unwrap();
    let mut f2 = f.clone();
    b.append_data(&mut f2, "./z/x", &b"data"[..]).unwrap();
    let mut l = tar::Header::new_gnu();
    l.set_entry_type(tar::EntryType::Link);
    l.set_mode(0o644);
    l.set_uid(0);
    l.set_gid(0);
    l.set_mtime(0);
    l.set_size(0);
    b.append_link(&mut l, "./b/link", "./z/x").unwrap();
    let mut dev = tar::Header::new_gnu();
    dev.set_entry_type(tar::EntryType::Block);
    dev.set_mode(0o660);
    dev.set_uid(0);
    dev.set_gid(6);
    dev.set_mtime(0);
    dev.set_device_major(8).unwrap();
    dev.set_device_minor(1).unwrap();
    dev.set_size(0);
    b.append_data(&mut dev, "dev/sda1", &[][..]).unwrap();
    let bytes = b.into_inner().unwrap();

    let m = store
        .import_tar(&mut &bytes[..], &ImportOptions::default())
        .unwrap();
    let paths: Vec<&str> = m.entries.iter().map(|e| e.path.as_str()).collect();
    let long_path = &long[2..];
    let long_dir = long_path.strip_suffix("/file").unwrap();
    assert_eq!(
        paths,
        ["", "a", long_dir, long_path, "b", "b/link", "dev", "dev/sda1", "z", "z/x"]
    );
    assert_eq!(m.get("").unwrap().mode, 0o700);
    let implied = m.get("a").unwrap();
    assert_eq!(
        (implied.kind.clone(), implied.mode, implied.uid),
        (EntryKind::Dir, 0o755, 0)
    );
    let file = m.get(long_path).unwrap();
    assert_eq!((file.mode, file.uid, file.mtime), (0o600, 5, 1234));
    assert!(file.xattrs.is_empty());
    // The link comes first in manifest order, so it holds the content and z/x links to it.
    assert!(matches!(
        m.get("b/link").unwrap().kind,
        EntryKind::File { size: 4, .. }
    ));
    assert_eq!(
        m.get("z/x").unwrap().kind,
        EntryKind::Hardlink {
            target: "b/link".into()
        }
    );
    assert_eq!(m.get("z/x").unwrap().xattrs.get("user.k").unwrap(), b"v");
    assert_eq!(
        m.get("dev/sda1").unwrap().kind,
        EntryKind::Block { major: 8, minor: 1 }
    );
}

#[test]
fn tar_import_refuses_escapes() {
    let (_d, store) = store();
    for name in ["../etc/passwd", "a/../../b"] {
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        // Bypass the builder's own checks: write the name bytes directly.
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_cksum();
        let mut b = tar::Builder::new(Vec::new());
        b.append(&h, &b"x"[..]).unwrap();
        let bytes = b.into_inner().unwrap();
        let err = store
            .import_tar(&mut &bytes[..], &ImportOptions::default())
            .unwrap_err();
        assert!(
            matches!(err, StoreError::BadEntry { .. }),
            "{name}: {err:?}"
        );
    }
    let mut h = tar::Header::new_gnu();
    h.set_size(1);
    h.as_old_mut().name[..4].copy_from_slice(b"/etc");
    h.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    b.append(&h, &b"x"[..]).unwrap();
    let bytes = b.into_inner().unwrap();
    assert!(matches!(
        store.import_tar(&mut &bytes[..], &ImportOptions::default()),
        Err(StoreError::BadEntry { .. })
    ));
}

#[test]
fn reopening_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let r = {
        let store = Store::open(dir.path()).unwrap();
        let r = store.put_bytes(b"kept").unwrap();
        store
            .record(&key(1), "files", "kept", &files_output(&[("f", &r)]))
            .unwrap();
        store
            .set_last_build("img", "files", &key(1), "{\"why\":1}")
            .unwrap();
        r
    };
    let store = Store::open(dir.path()).unwrap();
    let rec = store.lookup(&key(1)).unwrap().unwrap();
    assert_eq!(rec.output.files["f"], r);
    assert_eq!((rec.kind.as_str(), rec.name.as_str()), ("files", "kept"));
    assert_eq!(
        store.last_build("img", "files").unwrap(),
        Some((key(1), "{\"why\":1}".to_string()))
    );
    assert_eq!(store.last_build("img", "other").unwrap(), None);
}

#[test]
fn record_refuses_outputs_whose_blobs_are_missing() {
    let (_d, store) = store();
    let present = store.put_bytes(b"present").unwrap();
    let absent = FileRef {
        digest: BlobDigest::from_hash(blake3::hash(b"absent")),
        size: 6,
    };
    let err = store.record(
        &key(1),
        "k",
        "n",
        &files_output(&[("a", &present), ("b", &absent)]),
    );
    assert!(matches!(err, Err(StoreError::MissingBlob(d)) if d == absent.digest));

    let unstored_tree = TreeDigest([3; 32]);
    let out = StepOutput {
        tree: Some(unstored_tree),
        ..Default::default()
    };
    assert!(matches!(
        store.record(&key(2), "k", "n", &out),
        Err(StoreError::MissingBlob(_))
    ));

    // A stored manifest naming a file that is not stored.
    let m = TreeManifest {
        entries: vec![Entry {
            path: "f".into(),
            kind: EntryKind::File {
                digest: absent.digest,
                size: 6,
            },
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 0,
            xattrs: BTreeMap::new(),
        }],
    };
    let tree = store.put_manifest(&m).unwrap();
    let out = StepOutput {
        tree: Some(tree),
        ..Default::default()
    };
    assert!(
        matches!(store.record(&key(3), "k", "n", &out), Err(StoreError::MissingBlob(d)) if d == absent.digest)
    );
    assert!(store.list().unwrap().is_empty(), "nothing was recorded");

    // Once the blob is there the same output is accepted, and its size counted once.
    store.put_bytes(b"absent").unwrap();
    store.record(&key(3), "k", "n", &out).unwrap();
    let rec = store.lookup(&key(3)).unwrap().unwrap();
    let on_disk = |d: BlobDigest| fs::metadata(store.blob_path(&d)).unwrap().len();
    assert_eq!(
        rec.size,
        on_disk(BlobDigest::from(tree)) + on_disk(absent.digest)
    );
}

#[test]
fn lookup_drops_a_record_whose_blob_vanished() {
    let (_d, store) = store();
    let r = store.put_bytes(b"soon gone").unwrap();
    store
        .record(&key(1), "k", "n", &files_output(&[("f", &r)]))
        .unwrap();
    assert!(store.lookup(&key(1)).unwrap().is_some());
    fs::remove_file(store.blob_path(&r.digest)).unwrap();
    assert_eq!(store.lookup(&key(1)).unwrap(), None);
    assert!(store.list().unwrap().is_empty(), "the record was dropped");
}

#[test]
fn gc_keeps_what_is_referenced_and_frees_the_rest() {
    let (d, store) = store();
    let shared = store.put_bytes(b"shared").unwrap();
    let only_a = store.put_bytes(b"only a").unwrap();
    let only_b = store.put_bytes(b"only b").unwrap();
    let loose = store.put_bytes(b"never recorded").unwrap();
    let src = d.path().join("tree");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("in-tree"), "in a tree").unwrap();
    let m = store.import_dir(&src, &ImportOptions::default()).unwrap();
    let tree = store.put_manifest(&m).unwrap();
    let EntryKind::File {
        digest: in_tree, ..
    } = m.get("in-tree").unwrap().kind
    else {
        panic!()
    };

    let out_a = StepOutput {
        tree: Some(tree),
        ..files_output(&[("s", &shared), ("a", &only_a)])
    };
    store.record(&key(1), "k", "a", &out_a).unwrap();
    store
        .record(
            &key(2),
            "k",
            "b",
            &files_output(&[("s", &shared), ("b", &only_b)]),
        )
        .unwrap();
    store.set_last_build("img", "a", &key(1), "{}").unwrap();
    store.set_last_build("img", "b", &key(2), "{}").unwrap();
    assert_eq!(store.usage().unwrap().blobs, 6);

    let freed_size = fs::metadata(store.blob_path(&only_b.digest)).unwrap().len()
        + fs::metadata(store.blob_path(&loose.digest)).unwrap().len();
    let report = store.gc(&GcPolicy::Keep(vec![key(1)])).unwrap();
    assert_eq!((report.records_removed, report.blobs_removed), (1, 2));
    assert_eq!(report.bytes_freed, freed_size);
    for kept in [
        shared.digest,
        only_a.digest,
        in_tree,
        BlobDigest::from(tree),
    ] {
        assert!(store.has_blob(&kept), "{kept:?} is still referenced");
    }
    assert!(!store.has_blob(&only_b.digest) && !store.has_blob(&loose.digest));
    assert!(store.lookup(&key(1)).unwrap().is_some());
    assert!(store.lookup(&key(2)).unwrap().is_none());
    assert!(store.last_build("img", "a").unwrap().is_some());
    assert!(
        store.last_build("img", "b").unwrap().is_none(),
        "its key is gone"
    );
    let usage = store.usage().unwrap();
    assert_eq!((usage.records, usage.blobs), (1, 4));

    // Nothing is old enough yet; then everything is.
    assert_eq!(
        store
            .gc(&GcPolicy::OlderThan(3600))
            .unwrap()
            .records_removed,
        0
    );
    let report = store.gc(&GcPolicy::OlderThan(-1)).unwrap();
    assert_eq!((report.records_removed, report.blobs_removed), (1, 4));
    assert_eq!(store.usage().unwrap().bytes, 0);
}

#[test]
fn gc_max_bytes_drops_least_recently_used_first() {
    let (_d, store) = store();
    // Incompressible content so sizes on disk are predictable.
    let blob = |seed: u8| {
        let mut data = vec![0u8; 100_000];
        let mut x = blake3::hash(&[seed]);
        for chunk in data.chunks_mut(32) {
            chunk.copy_from_slice(&x.as_bytes()[..chunk.len()]);
            x = blake3::hash(x.as_bytes());
        }
        store.put_bytes(&data).unwrap()
    };
    let (old, mid, new) = (blob(1), blob(2), blob(3));
    store
        .record(&key(1), "k", "old", &files_output(&[("f", &old)]))
        .unwrap();
    store
        .record(&key(2), "k", "mid", &files_output(&[("f", &mid)]))
        .unwrap();
    store
        .record(&key(3), "k", "new", &files_output(&[("f", &new)]))
        .unwrap();
    // Make the order of use explicit: the clock has one-second resolution.
    let conn = rusqlite::Connection::open(store.root().join("index-v1.sqlite")).unwrap();
    for (k, t) in [(1, 100), (2, 200), (3, 300)] {
        conn.execute(
            "UPDATE steps SET last_used = ?1 WHERE key = ?2",
            rusqlite::params![t, key(k).to_hex()],
        )
        .unwrap();
    }
    let listed: Vec<String> = store.list().unwrap().into_iter().map(|r| r.name).collect();
    assert_eq!(listed, ["new", "mid", "old"]);

    let size = |r: &FileRef| fs::metadata(store.blob_path(&r.digest)).unwrap().len();
    let budget = size(&mid) + size(&new) + 10;
    let report = store.gc(&GcPolicy::MaxBytes(budget)).unwrap();
    assert_eq!((report.records_removed, report.blobs_removed), (1, 1));
    assert!(!store.has_blob(&old.digest));
    assert!(store.has_blob(&mid.digest) && store.has_blob(&new.digest));
    assert!(store.usage().unwrap().bytes <= budget);

    store.gc(&GcPolicy::MaxBytes(0)).unwrap();
    assert_eq!(store.usage().unwrap().records, 0);
}

#[test]
fn gc_cleans_the_index() {
    let (d, store) = store();
    let conn = rusqlite::Connection::open(store.root().join("index-v1.sqlite")).unwrap();
    conn.execute(
        "INSERT INTO steps (key, kind, name, output, size, created, last_used)
         VALUES ('not-a-key', 'k', 'damaged', '{', 0, 0, 0)",
        [],
    )
    .unwrap();
    assert!(
        store.list().unwrap().is_empty(),
        "an unparsable row is never handed out"
    );
    let f = d.path().join("overlay-file");
    fs::write(&f, "x").unwrap();
    set_mtime(&f, 1_000_000_000);
    store.hash_file_cached(&f).unwrap();
    let cached = || -> i64 {
        conn.query_row("SELECT count(*) FROM file_digests", [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(cached(), 1);
    assert_eq!(
        store
            .gc(&GcPolicy::OlderThan(3600))
            .unwrap()
            .records_removed,
        1,
        "the damaged row"
    );
    assert_eq!(cached(), 1, "the file still exists");
    fs::remove_file(&f).unwrap();
    store.gc(&GcPolicy::OlderThan(3600)).unwrap();
    assert_eq!(cached(), 0, "the digest of a deleted file is forgotten");
    let rows: i64 = conn
        .query_row("SELECT count(*) FROM steps", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 0);
}

#[test]
fn sparse_blob_to_file_of_mostly_zeros() {
    let (d, store) = store();
    let mut data = vec![0u8; 64 << 20];
    data[0] = 1;
    data[10 << 20] = 2;
    data[(64 << 20) - 1] = 3;
    let src = d.path().join("disk.raw");
    fs::write(&src, &data).unwrap();
    let r = store.put_file(&src).unwrap();
    assert_eq!(r.size, 64 << 20);
    assert!(
        fs::metadata(store.blob_path(&r.digest)).unwrap().len() < 1 << 20,
        "zeros compress"
    );

    let dest = d.path().join("out/disk.raw");
    fs::create_dir(dest.parent().unwrap()).unwrap();
    store.blob_to_file(&r.digest, &dest).unwrap();
    let meta = fs::metadata(&dest).unwrap();
    assert_eq!(meta.len(), 64 << 20);
    assert_eq!(meta.mode() & 0o7777, 0o644);
    assert!(
        meta.blocks() * 512 <= 1 << 20,
        "allocated {} bytes",
        meta.blocks() * 512
    );
    assert!(fs::read(&dest).unwrap() == data);

    // Replacing an existing file works too.
    store
        .blob_to_file(&store.put_bytes(b"small").unwrap().digest, &dest)
        .unwrap();
    assert_eq!(fs::read(&dest).unwrap(), b"small");
}

#[test]
fn two_stores_on_one_root_from_two_threads() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("shared");
    let start = std::sync::Barrier::new(2);
    std::thread::scope(|s| {
        for t in 0..2u8 {
            let (root, start) = (&root, &start);
            s.spawn(move || {
                // Both create and migrate the same new store at once.
                start.wait();
                let store = Store::open(root).unwrap();
                for i in 0..40u8 {
                    let shared = store.put_bytes(b"both threads store this").unwrap();
                    let own = store.put_bytes(&[t, i]).unwrap();
                    let k = key(t * 100 + i);
                    let out = files_output(&[("s", &shared), ("o", &own)]);
                    store.record(&k, "k", &format!("{t}-{i}"), &out).unwrap();
                    assert!(store.lookup(&k).unwrap().is_some());
                    store
                        .set_last_build("img", &format!("{t}-{i}"), &k, "{}")
                        .unwrap();
                    // The other thread's records, as far as it got.
                    let other = key((1 - t) * 100 + i);
                    if let Some(rec) = store.lookup(&other).unwrap() {
                        let o = store.read_blob(&rec.output.files["o"].digest).unwrap();
                        assert_eq!(o, [1 - t, i]);
                    }
                }
            });
        }
    });
    let store = Store::open(&root).unwrap();
    assert_eq!(store.list().unwrap().len(), 80);
    for t in 0..2u8 {
        for i in 0..40u8 {
            let rec = store
                .lookup(&key(t * 100 + i))
                .unwrap()
                .expect("every record");
            assert_eq!(
                store.read_blob(&rec.output.files["o"].digest).unwrap(),
                [t, i]
            );
        }
    }
    assert_eq!(store.verify().unwrap().dropped.len(), 0);
}

#[test]
fn hash_file_cached_follows_changes() {
    let (d, store) = store();
    let f = d.path().join("overlay.conf");
    fs::write(&f, "one").unwrap();
    set_mtime(&f, 1_000_000_000);
    assert_eq!(
        store.hash_file_cached(&f).unwrap(),
        BlobDigest::from_hash(blake3::hash(b"one"))
    );
    assert!(
        !store.has_blob(&BlobDigest::from_hash(blake3::hash(b"one"))),
        "nothing is stored"
    );
    assert_eq!(
        store.hash_file_cached(&f).unwrap(),
        BlobDigest::from_hash(blake3::hash(b"one"))
    );
    fs::write(&f, "two!").unwrap();
    set_mtime(&f, 1_000_000_000);
    assert_eq!(
        store.hash_file_cached(&f).unwrap(),
        BlobDigest::from_hash(blake3::hash(b"two!"))
    );
    // Same size, same mtime, new inode (written elsewhere and renamed over it).
    let g = d.path().join("new");
    fs::write(&g, "two?").unwrap();
    set_mtime(&g, 1_000_000_000);
    fs::rename(&g, &f).unwrap();
    assert_eq!(
        store.hash_file_cached(&f).unwrap(),
        BlobDigest::from_hash(blake3::hash(b"two?"))
    );
}

#[test]
fn stale_temp_files_are_removed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let live = Store::open(dir.path()).unwrap();
    let scratch = live.tmp_dir("step-").unwrap();
    fs::write(scratch.path().join("work"), "in use").unwrap();
    drop(Store::open(dir.path()).unwrap());
    assert!(
        scratch.path().join("work").exists(),
        "a live store's scratch dir survives"
    );

    // A session whose process died (its lock is free), a loose old file, a loose new one.
    let tmp = dir.path().join("tmp");
    fs::create_dir_all(tmp.join("session-dead")).unwrap();
    fs::write(tmp.join("session-dead/.lock"), "").unwrap();
    fs::write(tmp.join("session-dead/blob-half"), "half").unwrap();
    fs::write(tmp.join("old"), "").unwrap();
    set_mtime(&tmp.join("old"), 1_000_000_000);
    fs::write(tmp.join("recent"), "").unwrap();
    drop(Store::open(dir.path()).unwrap());
    assert!(!tmp.join("session-dead").exists());
    assert!(!tmp.join("old").exists());
    assert!(tmp.join("recent").exists());
    assert!(scratch.path().join("work").exists());
}

#[test]
fn diff_of_two_imports() {
    let (d, store) = store();
    let src = d.path().join("src");
    sample_tree(&src);
    let before = store.import_dir(&src, &ImportOptions::default()).unwrap();
    fs::write(src.join("etc/hostname"), "other\n").unwrap();
    set_mtime(&src.join("etc/hostname"), 1_000_000_000);
    fs::remove_file(src.join("usr/hostname-link")).unwrap();
    fs::write(src.join("etc/motd"), "hi").unwrap();
    let opts = ImportOptions {
        clamp_mtime: Some(1_300_000_000),
    };
    let before = TreeManifest {
        entries: before
            .entries
            .into_iter()
            .map(|e| Entry {
                mtime: e.mtime.min(1_300_000_000),
                ..e
            })
            .collect(),
    };
    let after = store.import_dir(&src, &opts).unwrap();
    let changed: Vec<(String, &str)> = diff(&before, &after)
        .iter()
        .map(|c| match c {
            TreeChange::Added(e) => (e.path.clone(), "added"),
            TreeChange::Removed(e) => (e.path.clone(), "removed"),
            TreeChange::Changed { new, .. } => (new.path.clone(), "changed"),
        })
        .collect();
    let expected = [
        ("etc/hostname", "changed"),
        ("etc/motd", "added"),
        ("usr", "changed"),
        ("usr/hostname-link", "removed"),
    ];
    assert_eq!(changed, expected.map(|(p, c)| (p.to_string(), c)));
}

#[test]
fn put_reader_streams_from_a_pipe() {
    let (_d, store) = store();
    let mut child = Command::new("sh")
        .args(["-c", "head -c 3000000 /dev/zero | tr '\\0' 'a'"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let r = store.put_reader(child.stdout.as_mut().unwrap()).unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(r.size, 3_000_000);
    assert_eq!(
        r.digest,
        BlobDigest::from_hash(blake3::hash(&vec![b'a'; 3_000_000]))
    );
}

/// A reader that fails after some bytes, like a pipe whose writer died.
struct FailingReader(usize);
impl Read for FailingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.0 == 0 {
            return Err(std::io::Error::other("writer died"));
        }
        let n = buf.len().min(self.0);
        buf[..n].fill(b'z');
        self.0 -= n;
        Ok(n)
    }
}

#[test]
fn a_failed_write_leaves_no_blob_and_no_temp_file() {
    let (_d, store) = store();
    assert!(store.put_reader(&mut FailingReader(3_000_000)).is_err());
    assert_eq!(store.usage().unwrap().blobs, 0, "no blob, whole or partial");
    let root = store.root().to_path_buf();
    let sessions: Vec<_> = fs::read_dir(root.join("tmp"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let left: Vec<_> = fs::read_dir(&sessions[0])
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, [".lock"]);
}

#[test]
fn a_dropped_store_removes_its_session_folder_with_what_it_kept() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    // A plain copy nobody took (`fresh/`) and a scratch dir of a step that is done.
    let big = dir.path().join("big");
    fs::write(&big, vec![7u8; 1 << 20]).unwrap();
    store.put_file_keep(&big, &mut |_| {}).unwrap();
    drop(store.tmp_dir("step-").unwrap());
    let sessions = || -> Vec<_> {
        fs::read_dir(dir.path().join("tmp"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect()
    };
    assert_eq!(sessions().len(), 1);
    drop(store);
    assert!(sessions().is_empty(), "{:?}", sessions());
}

#[test]
fn lock_files_nobody_holds_are_removed_and_a_held_one_stays() {
    let (_d, store) = store();
    let held = match store.claim_step(&key(1), &mut || {}, &|| false).unwrap() {
        Claim::Held { lock, .. } => lock,
        Claim::GaveUp => panic!("nobody else holds it"),
    };
    // What a killed build leaves: the file, its flock gone with the process.
    let locks = store.root().join(LOCKS_DIR);
    fs::write(locks.join(key(2).to_hex()), "").unwrap();
    // Another open file of the store (another build) sweeps.
    let other = Store::open(store.root()).unwrap();
    assert!(!locks.join(key(2).to_hex()).exists());
    assert!(locks.join(key(1).to_hex()).exists(), "a held lock stays");
    fs::write(locks.join(key(3).to_hex()), "").unwrap();
    assert_eq!(
        other
            .gc(&GcPolicy::OlderThan(1 << 40))
            .unwrap()
            .locks_removed,
        1
    );
    assert!(locks.join(key(1).to_hex()).exists());
    // The holder is not disturbed: a second claim still waits for it.
    let mut waited = false;
    let claim = other
        .claim_step(&key(1), &mut || waited = true, &|| true)
        .unwrap();
    assert!(matches!(claim, Claim::GaveUp) && waited);
    drop(held);
    assert_eq!(fs::read_dir(&locks).unwrap().count(), 0);
}

#[test]
fn a_damaged_index_is_set_aside_once_and_the_blobs_stay() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let blob = {
        let store = Store::open(&root).unwrap();
        let r = store.put_bytes(b"kept across the reset").unwrap();
        for i in 0..200u8 {
            store
                .record(
                    &key(i),
                    "files",
                    &format!("step {i}"),
                    &files_output(&[("f", &r)]),
                )
                .unwrap();
        }
        r
    };
    let index = root.join(INDEX_FILE);
    let mut bytes = fs::read(&index).unwrap();
    let mid = (bytes.len() / 2) & !4095;
    bytes[mid..mid + 4096].fill(0xa5);
    fs::write(&index, bytes).unwrap();

    let store = Store::open(&root).unwrap();
    let reset = store.index_reset().expect("the damage is found at open");
    assert!(reset.set_aside.exists(), "{reset:?}");
    assert!(reset
        .set_aside
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with("index-v1.sqlite.corrupt-"));
    assert!(store.list().unwrap().is_empty(), "records are lost");
    assert_eq!(
        store.read_blob(&blob.digest).unwrap(),
        b"kept across the reset"
    );
    store
        .record(&key(1), "files", "again", &files_output(&[("f", &blob)]))
        .unwrap();
    drop(store);
    // The new index is sound: nothing is set aside again.
    let store = Store::open(&root).unwrap();
    assert!(store.index_reset().is_none());
    assert!(store.lookup(&key(1)).unwrap().is_some());
    assert!(store.check_index().unwrap().is_none());
}

#[test]
fn a_lookup_drops_a_record_whose_manifest_is_corrupt_and_says_so() {
    let (d, store) = store();
    let src = d.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), "content").unwrap();
    let m = store.import_dir(&src, &ImportOptions::default()).unwrap();
    let tree = store.put_manifest(&m).unwrap();
    let out = StepOutput {
        tree: Some(tree),
        ..Default::default()
    };
    store.record(&key(1), "files", "tree", &out).unwrap();
    corrupt(&store, &BlobDigest::from(tree));
    assert!(!store.has_complete_record(&key(1)).unwrap());
    let (hit, dropped) = store.lookup_or_drop(&key(1)).unwrap();
    assert!(hit.is_none());
    let dropped = dropped.expect("a drop is reported");
    assert_eq!(
        (dropped.name.as_str(), dropped.reason, dropped.blob),
        (
            "tree",
            DropReason::CorruptBlob,
            Some(BlobDigest::from(tree))
        )
    );
    // The corrupt manifest is gone, so storing the tree again really writes it.
    assert!(!store.has_blob(&BlobDigest::from(tree)));
    assert_eq!(store.put_manifest(&m).unwrap(), tree);
    store.get_manifest(&tree).unwrap();
    assert_eq!(store.lookup_or_drop(&key(1)).unwrap(), (None, None));
}
