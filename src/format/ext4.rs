//! ext4 filesystem images made by `mkfs.ext4 -d` from a directory tree or a tar file.
//!
//! [`mkfs_ext4`] creates a sparse plain file of the requested size and runs the host's mke2fs on
//! it with everything that could vary pinned:
//!
//! - **Configuration.** A private `mke2fs.conf` (see [`mke2fs_conf`]) is written to a temporary
//!   directory and named by `MKE2FS_CONFIG`, and `-T default` bypasses the size-based usage
//!   types, so the host's `/etc/mke2fs.conf` never matters: 4096-byte blocks, 256-byte inodes,
//!   one inode per 16 KiB, 5% reserved, half_md4 directory hashes, and the feature set
//!   [`FEATURES`].
//! - **Features.** `has_journal ext_attr resize_inode dir_index filetype extent 64bit flex_bg
//!   sparse_super large_file huge_file dir_nlink extra_isize metadata_csum`: what GRUB 2.06 can
//!   read (it checks only the incompat set: filetype, extent, flex_bg, 64bit; `metadata_csum` is
//!   ro-compat, so GRUB ignores it; checked with Debian 12's `grub-fstest` 2.06) and that
//!   e2fsprogs 1.46 knows. Left out on purpose: `metadata_csum_seed` (incompat; upstream GRUB
//!   before 2.12 refuses the filesystem, Debian 12's 2.06 carries a backport that reads it),
//!   `orphan_file` (e2fsprogs before 1.47, e.g. Ubuntu 22.04's, refuses to check it),
//!   `large_dir`, `inline_data`, `casefold`, `encrypt`.
//! - **Ids and times.** `-U` and `-E hash_seed=` come from the caller (derived from the image
//!   seed), `root_owner=0:0` makes the root directory independent of who runs the build, and
//!   `SOURCE_DATE_EPOCH` / `E2FSPROGS_FAKE_TIME` fix the superblock times and clamp every
//!   inode's times. Clamp, not replace (measured with 1.47.2): a source time after the epoch
//!   becomes the epoch, an earlier one is kept, atime included. So the source's times are part
//!   of the input: from a directory, reading a file can move its atime and so the image; a tar
//!   file (its times are in its bytes) or a tree whose times are all at or after the epoch
//!   gives the same bytes every time.
//!   mke2fs 1.47.2 sorts directory entries, so the source's readdir order does not matter
//!   (measured: two trees created in opposite orders give identical images).
//! - **Zeroing.** `assume_storage_prezeroed=1` (the file was just created, all holes): same
//!   bytes as `lazy_itable_init=0` (inode tables marked zeroed), but the image stays sparse
//!   (measured: 200 KiB instead of 4.8 MiB allocated for 32 MiB). `nodiscard` because there is
//!   nothing to discard in a new file.
//!
//! e2fsprogs 1.47.1 or newer is required ([`MIN_E2FSPROGS`]): older versions cannot read tar
//! files and do not make reproducible images; Debian 12 has it in bookworm-backports. Reading a
//! tar file also needs libarchive (`libarchive13`), which mke2fs loads at run time.

use std::path::{Path, PathBuf};

use super::{create_sparse, parse_version, FormatError};
use crate::ids::Guid;
use crate::runner::{Cmd, RunError, Runner};

/// The oldest e2fsprogs whose `mkfs.ext4 -d` takes tar files and gives reproducible images.
pub const MIN_E2FSPROGS: &str = "1.47.1";
/// Filesystem block size.
pub const BLOCK_SIZE: u64 = 4096;
/// The ext4 feature set (see the module documentation for why each is in or out).
pub const FEATURES: &str = "has_journal,ext_attr,resize_inode,dir_index,filetype,extent,64bit,\
                            flex_bg,sparse_super,large_file,huge_file,dir_nlink,extra_isize,\
                            metadata_csum";

/// What the filesystem looks like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ext4Params {
    /// Bytes; a multiple of [`BLOCK_SIZE`].
    pub size: u64,
    /// Filesystem UUID (`-U`).
    pub uuid: Guid,
    /// Directory hash seed (`-E hash_seed=`).
    pub hash_seed: Guid,
    /// Volume label, at most 16 bytes; empty for none.
    pub label: String,
    /// Every timestamp in the filesystem (seconds since 1970, not negative).
    pub epoch: i64,
}

/// Where in a larger file the filesystem is made (`-E offset=`): the disk file, so that the
/// disk step finds it in place and copies nothing. The filesystem's bytes are the same as in a
/// file of its own (mke2fs writes nothing outside `[offset, offset + size)`; measured with
/// 1.47: the range compares equal and the rest stays holes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Place {
    /// Bytes before the filesystem; a multiple of [`BLOCK_SIZE`].
    pub offset: u64,
    /// The whole file's length, at least `offset` + the filesystem's size.
    pub file_len: u64,
}

/// The private `mke2fs.conf` that replaces the host's.
pub fn mke2fs_conf() -> String {
    format!(
        "[defaults]\n\
         \tbase_features = {FEATURES}\n\
         \tdefault_mntopts = acl,user_xattr\n\
         \tenable_periodic_fsck = 0\n\
         \tblocksize = {BLOCK_SIZE}\n\
         \tinode_size = 256\n\
         \tinode_ratio = 16384\n\
         \treserved_ratio = 5.0\n\
         \thash_alg = half_md4\n\
         \tflex_bg_size = 16\n\
         \n\
         [fs_types]\n\
         \text4 = {{\n\
         \t\tfeatures = {FEATURES}\n\
         \t}}\n\
         \tdefault = {{\n\
         \t\tblocksize = {BLOCK_SIZE}\n\
         \t}}\n"
    )
}

/// The host's e2fsprogs version, e.g. `1.47.2` (from `mke2fs -V`, which prints on stderr).
pub fn mke2fs_version(runner: &dyn Runner, log: &Path) -> Result<String, FormatError> {
    let cmd = Cmd::new("sh").args(["-c", "exec mke2fs -V 2>&1"]);
    let out = runner
        .output(&cmd, log)
        .map_err(|source| FormatError::Version {
            tool: "mke2fs",
            source,
        })?;
    let text = String::from_utf8_lossy(&out);
    let first = text.lines().find(|l| l.contains("mke2fs")).unwrap_or("");
    match parse_version(first) {
        Some(v) => Ok(v.iter().map(u64::to_string).collect::<Vec<_>>().join(".")),
        None => Err(FormatError::VersionParse {
            tool: "mke2fs",
            output: text.trim().to_string(),
        }),
    }
}

/// Fails, naming the package to install, when `version` is older than [`MIN_E2FSPROGS`].
pub fn check_mke2fs_version(version: &str) -> Result<(), FormatError> {
    let too_old = || FormatError::E2fsprogsTooOld {
        found: version.to_string(),
        need: MIN_E2FSPROGS,
    };
    let have = parse_version(version).ok_or_else(too_old)?;
    let need = parse_version(MIN_E2FSPROGS).expect("constant version");
    if have < need {
        return Err(too_old());
    }
    Ok(())
}

fn check_params(
    source: Option<&Path>,
    out: &Path,
    p: &Ext4Params,
    place: Option<Place>,
) -> Result<(), FormatError> {
    let bad = |reason: String| FormatError::Ext4Params {
        out: out.to_path_buf(),
        reason,
    };
    if let Some(pl) = place {
        let fits = pl
            .offset
            .checked_add(p.size)
            .is_some_and(|e| e <= pl.file_len);
        if pl.offset % BLOCK_SIZE != 0 || !fits {
            return Err(bad(format!(
                "offset {} is not a multiple of the {BLOCK_SIZE}-byte block, or the {}-byte \
                 filesystem does not fit in the {}-byte file from there",
                pl.offset, p.size, pl.file_len
            )));
        }
    }
    if p.size == 0 || p.size % BLOCK_SIZE != 0 {
        return Err(bad(format!(
            "size {} is not a positive multiple of the {BLOCK_SIZE}-byte block",
            p.size
        )));
    }
    if p.label.len() > 16 {
        return Err(bad(format!(
            "label `{}` is {} bytes, ext4 labels hold at most 16",
            p.label,
            p.label.len()
        )));
    }
    if p.label.contains('\0') {
        return Err(bad("the label contains a NUL character".into()));
    }
    if p.epoch < 0 {
        return Err(bad(format!("epoch {} is before 1970", p.epoch)));
    }
    let Some(source) = source else { return Ok(()) };
    match std::fs::metadata(source) {
        Ok(m) if m.is_dir() || m.is_file() => Ok(()),
        _ => Err(FormatError::BadSource {
            path: source.to_path_buf(),
        }),
    }
}

/// The `mkfs.ext4` command line for `out` (the config file at `conf`); the source is `-`, a tar
/// stream on standard input, when `None`.
fn mkfs_cmd(
    source: Option<&Path>,
    out: &Path,
    p: &Ext4Params,
    place: Option<Place>,
    conf: &Path,
) -> Cmd {
    let offset = place.map_or(String::new(), |pl| format!(",offset={}", pl.offset));
    let mut cmd = Cmd::new("mkfs.ext4")
        .args(["-q", "-F", "-T", "default", "-b", "4096", "-I", "256"])
        .arg("-U")
        .arg(p.uuid.to_string())
        .arg("-E")
        .arg(format!(
            "hash_seed={},root_owner=0:0,nodiscard,assume_storage_prezeroed=1{offset}",
            p.hash_seed
        ));
    if !p.label.is_empty() {
        cmd = cmd.arg("-L").arg(&p.label);
    }
    cmd = cmd.arg("-d").arg(source.unwrap_or(Path::new("-"))).arg(out);
    if place.is_some() {
        // In a larger file the size is not the file's: given in blocks.
        cmd = cmd.arg((p.size / BLOCK_SIZE).to_string());
    }
    cmd.env("MKE2FS_CONFIG", conf)
        .env("SOURCE_DATE_EPOCH", p.epoch.to_string())
        .env("E2FSPROGS_FAKE_TIME", p.epoch.to_string())
}

/// Makes the ext4 image `out` (created or truncated, `p.size` bytes, sparse) holding the tree
/// `source`: a directory, or a tar file (which needs libarchive on the host).
pub fn mkfs_ext4(
    runner: &dyn Runner,
    log: &Path,
    source: &Path,
    out: &Path,
    p: &Ext4Params,
) -> Result<(), FormatError> {
    check_params(Some(source), out, p, None)?;
    mkfs(runner, log, Some(source), out, p, None, None).map_err(|e| match e {
        Failure::Format(e) => e,
        Failure::Run(err) => mkfs_error(source, out, err),
    })
}

/// Like [`mkfs_ext4`], from the tar stream `feed` writes (`mkfs.ext4 -d -`), while it reads it:
/// the same image as from that tar file, with no file in between. With `place`, `out` is made
/// `place.file_len` bytes long and the filesystem goes at `place.offset` (the rest stays holes).
pub fn mkfs_ext4_fed(
    runner: &dyn Runner,
    log: &Path,
    out: &Path,
    p: &Ext4Params,
    place: Option<Place>,
    feed: crate::runner::Feed<'_>,
) -> Result<(), FormatError> {
    check_params(None, out, p, place)?;
    mkfs(runner, log, None, out, p, place, Some(feed)).map_err(|e| match e {
        Failure::Format(e) => e,
        Failure::Run(err) => mkfs_error(Path::new("-"), out, err),
    })
}

enum Failure {
    Format(FormatError),
    Run(RunError),
}

fn mkfs(
    runner: &dyn Runner,
    log: &Path,
    source: Option<&Path>,
    out: &Path,
    p: &Ext4Params,
    place: Option<Place>,
    feed: Option<crate::runner::Feed<'_>>,
) -> Result<(), Failure> {
    check_mke2fs_version(&mke2fs_version(runner, log).map_err(Failure::Format)?)
        .map_err(Failure::Format)?;
    let confdir = tempfile::Builder::new()
        .prefix("imgspec-mke2fs-")
        .tempdir()
        .map_err(|e| {
            Failure::Format(FormatError::io("create a temporary directory for", out)(e))
        })?;
    let conf: PathBuf = confdir.path().join("mke2fs.conf");
    std::fs::write(&conf, mke2fs_conf())
        .map_err(|e| Failure::Format(FormatError::io("write", &conf)(e)))?;
    create_sparse(out, place.map_or(p.size, |pl| pl.file_len)).map_err(Failure::Format)?;
    let cmd = mkfs_cmd(source, out, p, place, &conf);
    let result = match feed {
        Some(feed) => runner.run_fed(&cmd, log, feed),
        None => runner.run(&cmd, log),
    };
    result.map_err(|err| {
        let _ = std::fs::remove_file(out);
        Failure::Run(err)
    })
}

fn mkfs_error(source: &Path, out: &Path, err: RunError) -> FormatError {
    let libarchive = matches!(&err, RunError::Failed { tail, .. }
        if tail.iter().any(|l| l.contains("libarchive")));
    if libarchive {
        FormatError::NoLibarchive {
            source_tar: source.to_path_buf(),
            source: err,
        }
    } else {
        FormatError::Tool {
            tool: "mkfs.ext4",
            out: out.to_path_buf(),
            source: err,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::derive_guid;
    use crate::runner::{HostRunner, RecordingRunner};
    use std::os::unix::fs::PermissionsExt;

    fn params() -> Ext4Params {
        let seed = [3u8; 32];
        Ext4Params {
            size: 32 << 20,
            uuid: derive_guid(&seed, "ext4-uuid:root"),
            hash_seed: derive_guid(&seed, "ext4-hash-seed:root"),
            label: "root".into(),
            epoch: 1_700_000_000,
        }
    }

    #[test]
    fn command_line_is_pinned() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("tree");
        std::fs::create_dir(&src).unwrap();
        let out = dir.path().join("root.ext4");
        let runner = RecordingRunner {
            stdout: b"mke2fs 1.47.2 (1-Jan-2025)\n\tUsing EXT2FS Library version 1.47.2\n".to_vec(),
            ..Default::default()
        };
        let p = params();
        mkfs_ext4(&runner, &dir.path().join("log"), &src, &out, &p).unwrap();
        let calls = runner.calls.lock().unwrap().clone();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].display(), "sh -c 'exec mke2fs -V 2>&1'");
        let want = format!(
            "mkfs.ext4 -q -F -T default -b 4096 -I 256 -U {} -E hash_seed={},root_owner=0:0,\
             nodiscard,assume_storage_prezeroed=1 -L root -d {} {}",
            p.uuid,
            p.hash_seed,
            src.display(),
            out.display()
        );
        assert_eq!(calls[1].display(), want);
        let env: Vec<(String, String)> = calls[1]
            .env
            .iter()
            .map(|(k, v)| (k.to_string_lossy().into(), v.to_string_lossy().into()))
            .collect();
        let keys: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            ["MKE2FS_CONFIG", "SOURCE_DATE_EPOCH", "E2FSPROGS_FAKE_TIME"]
        );
        assert!(env[0].1.ends_with("/mke2fs.conf"));
        assert_eq!(env[1].1, "1700000000");
        assert_eq!(env[2].1, "1700000000");
        // The image file was created sparse at the requested size.
        assert_eq!(std::fs::metadata(&out).unwrap().len(), 32 << 20);
    }

    #[test]
    fn conf_pins_sizes_and_features() {
        let conf = mke2fs_conf();
        for line in [
            "blocksize = 4096",
            "inode_size = 256",
            "inode_ratio = 16384",
            "default = {",
        ] {
            assert!(conf.contains(line), "{line} missing in\n{conf}");
        }
        for forbidden in [
            "metadata_csum_seed",
            "orphan_file",
            "inline_data",
            "large_dir",
        ] {
            assert!(!FEATURES.contains(forbidden));
        }
    }

    #[test]
    fn old_e2fsprogs_is_refused_with_the_install_line() {
        assert!(check_mke2fs_version("1.47.1").is_ok());
        assert!(check_mke2fs_version("1.47.2").is_ok());
        assert!(check_mke2fs_version("1.48.0").is_ok());
        let err = check_mke2fs_version("1.47.0").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("1.47.0") && msg.contains("1.47.1"), "{msg}");
        assert!(msg.contains("bookworm-backports"), "{msg}");
        assert!(check_mke2fs_version("1.46.6").is_err());

        let dir = tempfile::tempdir().unwrap();
        let runner = RecordingRunner {
            stdout: b"mke2fs 1.46.6 (1-Feb-2023)\n".to_vec(),
            ..Default::default()
        };
        let err = mkfs_ext4(
            &runner,
            &dir.path().join("log"),
            dir.path(),
            &dir.path().join("x.ext4"),
            &params(),
        )
        .unwrap_err();
        assert!(matches!(err, FormatError::E2fsprogsTooOld { .. }), "{err}");
    }

    #[test]
    fn bad_parameters_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let runner = RecordingRunner::default();
        let out = dir.path().join("x.ext4");
        let log = dir.path().join("log");
        let mut p = params();
        p.size = 4097;
        assert!(matches!(
            mkfs_ext4(&runner, &log, dir.path(), &out, &p),
            Err(FormatError::Ext4Params { .. })
        ));
        let mut p = params();
        p.label = "a-label-that-is-too-long".into();
        assert!(matches!(
            mkfs_ext4(&runner, &log, dir.path(), &out, &p),
            Err(FormatError::Ext4Params { .. })
        ));
        assert!(matches!(
            mkfs_ext4(&runner, &log, &dir.path().join("missing"), &out, &params()),
            Err(FormatError::BadSource { .. })
        ));
        assert!(runner.calls.lock().unwrap().is_empty());
    }

    #[test]
    fn missing_libarchive_is_named() {
        let err = mkfs_error(
            Path::new("/x/root.tar"),
            Path::new("/x/root.ext4"),
            RunError::Failed {
                program: "mkfs.ext4".into(),
                status: "exit status: 1".into(),
                tail: vec![
                    "__populate_fs_from_tar: you need libarchive to be able to process tarballs"
                        .into(),
                ],
            },
        );
        assert!(err.to_string().contains("libarchive13"), "{err}");
    }

    fn host(dir: &Path, program: &str, args: &[&str]) -> String {
        let out = HostRunner
            .output(&Cmd::new(program).args(args), &dir.join("tools.log"))
            .unwrap_or_else(|e| panic!("{program} {args:?}: {e}"));
        String::from_utf8_lossy(&out).into_owned()
    }

    fn sample_tree(root: &Path) {
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("file"), "hello ext4\n").unwrap();
        std::fs::write(root.join("sub/inner"), "inner\n").unwrap();
        std::fs::write(root.join("run.sh"), "#!/bin/sh\necho hi\n").unwrap();
        std::fs::set_permissions(root.join("run.sh"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        std::fs::set_permissions(root.join("file"), std::fs::Permissions::from_mode(0o640))
            .unwrap();
        std::os::unix::fs::symlink("file", root.join("link")).unwrap();
    }

    fn sha(path: &Path) -> blake3::Hash {
        blake3::hash(&std::fs::read(path).unwrap())
    }

    fn check_image(dir: &Path, img: &Path, p: &Ext4Params) {
        let img_s = img.to_str().unwrap();
        // e2fsck exits 0 only when the filesystem is clean; HostRunner fails otherwise.
        host(dir, "e2fsck", &["-fn", img_s]);
        let stat = host(dir, "debugfs", &["-R", "stat /file", img_s]);
        assert!(stat.contains("Mode:  0640"), "{stat}");
        assert!(stat.contains("Size: 11"), "{stat}");
        let cat = host(dir, "debugfs", &["-R", "cat /file", img_s]);
        assert_eq!(cat, "hello ext4\n");
        let stat = host(dir, "debugfs", &["-R", "stat /run.sh", img_s]);
        assert!(stat.contains("Mode:  0755"), "{stat}");
        let stat = host(dir, "debugfs", &["-R", "stat /link", img_s]);
        assert!(stat.contains("Type: symlink"), "{stat}");
        assert!(stat.contains("Fast link dest: \"file\""), "{stat}");
        let cat = host(dir, "debugfs", &["-R", "cat /sub/inner", img_s]);
        assert_eq!(cat, "inner\n");
        let head = host(dir, "dumpe2fs", &["-h", img_s]);
        assert!(
            head.contains(&format!("Filesystem UUID:          {}", p.uuid)),
            "{head}"
        );
        assert!(head.contains("Filesystem volume name:   root"), "{head}");
        assert!(
            head.contains(&format!("Directory Hash Seed:      {}", p.hash_seed)),
            "{head}"
        );
        let features = head
            .lines()
            .find(|l| l.starts_with("Filesystem features:"))
            .unwrap();
        let mut got: Vec<&str> = features.split_whitespace().skip(2).collect();
        let mut want: Vec<&str> = FEATURES.split(',').collect();
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!(got, want);
    }

    #[test]
    fn host_mkfs_from_directory_is_clean_and_reproducible() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("tree");
        sample_tree(&src);
        let log = dir.path().join("log");
        let p = params();
        let (a, b) = (dir.path().join("a.ext4"), dir.path().join("b.ext4"));
        mkfs_ext4(&HostRunner, &log, &src, &a, &p).unwrap();
        // A source time after the epoch is clamped to it: touching a file changes nothing.
        std::fs::File::options()
            .append(true)
            .open(src.join("sub/inner"))
            .unwrap()
            .set_modified(std::time::SystemTime::now())
            .unwrap();
        mkfs_ext4(&HostRunner, &log, &src, &b, &p).unwrap();
        check_image(dir.path(), &a, &p);
        assert_eq!(sha(&a), sha(&b));
        // GRUB (grub-common's grub-fstest, the same ext2 driver as the boot loader) reads it.
        let grub = host(
            dir.path(),
            "grub-fstest",
            &[a.to_str().unwrap(), "cat", "/sub/inner"],
        );
        assert_eq!(grub, "inner\n");
    }

    #[test]
    fn host_mkfs_from_tar_is_clean_and_reproducible() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("tree");
        sample_tree(&src);
        let tar = dir.path().join("tree.tar");
        host(
            dir.path(),
            "tar",
            &[
                "--sort=name",
                "--owner=0",
                "--group=0",
                "--numeric-owner",
                "--mtime=@1700000000",
                "-C",
                src.to_str().unwrap(),
                "-cf",
                tar.to_str().unwrap(),
                ".",
            ],
        );
        let log = dir.path().join("log");
        let p = params();
        let (a, b) = (dir.path().join("a.ext4"), dir.path().join("b.ext4"));
        mkfs_ext4(&HostRunner, &log, &tar, &a, &p).unwrap();
        mkfs_ext4(&HostRunner, &log, &tar, &b, &p).unwrap();
        check_image(dir.path(), &a, &p);
        assert_eq!(sha(&a), sha(&b));

        // The same tar streamed in while mkfs reads it gives the same image.
        let c = dir.path().join("c.ext4");
        let bytes = std::fs::read(&tar).unwrap();
        mkfs_ext4_fed(&HostRunner, &log, &c, &p, None, &mut |w| {
            w.write_all(&bytes)
        })
        .unwrap();
        assert_eq!(sha(&a), sha(&c));
        // Made at an offset of a larger file (a disk): the same bytes there, holes around.
        let d = dir.path().join("disk");
        let place = Place {
            offset: 3 << 20,
            file_len: p.size + (5 << 20),
        };
        mkfs_ext4_fed(&HostRunner, &log, &d, &p, Some(place), &mut |w| {
            w.write_all(&bytes)
        })
        .unwrap();
        let disk = std::fs::read(&d).unwrap();
        assert_eq!(disk.len() as u64, place.file_len);
        let range = place.offset as usize..(place.offset + p.size) as usize;
        assert!(disk[range.clone()] == std::fs::read(&a).unwrap()[..]);
        assert!(disk[..range.start]
            .iter()
            .chain(&disk[range.end..])
            .all(|&b| b == 0));
        let bad = Place {
            offset: 3 << 20,
            file_len: p.size,
        };
        assert!(matches!(
            mkfs_ext4_fed(&HostRunner, &log, &d, &p, Some(bad), &mut |w| w
                .write_all(&bytes)),
            Err(FormatError::Ext4Params { .. })
        ));
        // A stream cut short with an error fails even where mkfs took what came.
        let cut = mkfs_ext4_fed(&HostRunner, &log, &c, &p, None, &mut |w| {
            w.write_all(&bytes[..bytes.len() / 2])?;
            Err(std::io::Error::other("the tree could not be read"))
        });
        assert!(cut.is_err());
        assert!(!c.exists(), "no half-made image left");
    }

    #[test]
    fn host_version_is_new_enough() {
        let dir = tempfile::tempdir().unwrap();
        let v = mke2fs_version(&HostRunner, &dir.path().join("log")).unwrap();
        check_mke2fs_version(&v).unwrap();
    }
}
