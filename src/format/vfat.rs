//! FAT filesystem images (EFI system partitions) made by `mkfs.vfat` and filled with mtools from
//! a directory tree.
//!
//! [`mkfs_vfat`] creates a sparse plain file of the requested size, formats it, then copies the
//! tree into it without mounting anything. What makes the result deterministic (each point
//! measured with dosfstools 4.2 and mtools 4.0.32):
//!
//! - **FAT type by size** ([`fat_bits`]): FAT32 from 33 MiB (with 512-byte clusters that is the
//!   first size with the 65525 clusters FAT32 needs; 32 MiB gets mkfs.fat's "less than suggested
//!   minimum" warning), FAT16 from 9 MiB (smaller sizes cannot reach FAT16's 4085 clusters and
//!   mkfs.fat refuses), FAT12 below, down to 1 MiB. UEFI firmware reads all three; use at least
//!   33 MiB for an ESP.
//! - **mkfs.vfat** is run as `--invariant -i VOLID`, in that order: `--invariant` sets the volume
//!   id to 1234ABCD *and* fixes the creation time of the volume-label entry (mkfs.fat 4.2 does
//!   not read `SOURCE_DATE_EPOCH`; without `--invariant` the label entry gets the current local
//!   time), and the `-i` that follows overrides the id again (options are applied in order).
//!   `-S 512` pins the sector size.
//! - **mtools** stamps files and directories with the current time unless `SOURCE_DATE_EPOCH`
//!   is set, and converts it to *local* time (measured: `TZ=America/New_York` changes bytes), so
//!   it runs with `SOURCE_DATE_EPOCH` and `TZ=UTC`. The epoch is clamped to what FAT can hold,
//!   1980-01-01..2107-12-31 (epoch 0 would otherwise wrap to 2098). `mcopy -m` is *not* used:
//!   it would copy the host files' mtimes into the image; every timestamp is the epoch instead.
//! - **Order.** `mcopy -s` walks host directories in readdir order (measured: the same tree
//!   created in two orders gives two different images), so imgspec walks the tree itself in
//!   sorted byte order: one `mmd` creates every directory (parents first), then one `mcopy` per
//!   directory copies its files in sorted order. Symbolic links and special files cannot be
//!   represented and are refused, as are names that differ only in case.
//! - `MTOOLS_SKIP_CHECK=1` (the image has no partition table), and `MTOOLS_NO_VFAT=0` /
//!   `MTOOLS_NAME_NUMERIC_TAIL=1` so a user's mtools configuration cannot change what is
//!   written.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::{create_sparse, FormatError};
use crate::runner::{Cmd, Runner};

const MIB: u64 = 1 << 20;
/// 1980-01-01T00:00:00Z, the earliest FAT timestamp.
pub const FAT_EPOCH_MIN: i64 = 315_532_800;
/// 2107-12-31T23:59:59Z, the latest FAT timestamp.
pub const FAT_EPOCH_MAX: i64 = 4_354_819_199;
/// Paths per mmd/mcopy invocation, to stay far below the argument-size limit.
const ARGS_PER_CALL: usize = 200;

/// The FAT type (12, 16 or 32) used for a filesystem of `size` bytes.
pub fn fat_bits(size: u64) -> Result<u8, FormatError> {
    let bad = |reason: &str| FormatError::FatSize {
        size,
        reason: reason.to_string(),
    };
    if size % 512 != 0 {
        return Err(bad("not a multiple of the 512-byte sector"));
    }
    Ok(match size {
        s if s < MIB => return Err(bad("smaller than 1 MiB")),
        s if s < 9 * MIB => 12,
        s if s < 33 * MIB => 16,
        _ => 32,
    })
}

/// The label as mkfs.vfat gets it: upper-cased ASCII, at most 11 characters.
fn fat_label(label: &str) -> Result<String, FormatError> {
    let bad = |reason: String| FormatError::FatLabel {
        label: label.to_string(),
        reason,
    };
    if label.len() > 11 {
        return Err(bad(format!(
            "{} characters, FAT labels hold at most 11",
            label.len()
        )));
    }
    if let Some(c) = label
        .chars()
        .find(|c| !c.is_ascii() || c.is_ascii_control() || "*?.,;:/\\|+=<>[]\"".contains(*c))
    {
        return Err(bad(format!("the character {c:?} is not allowed")));
    }
    if label.starts_with(' ') {
        return Err(bad("it starts with a space".into()));
    }
    Ok(label.to_ascii_uppercase())
}

/// The tree to copy: directories (parents first) and, per directory, its files; all sorted.
#[derive(Debug, Default, PartialEq, Eq)]
struct Tree {
    /// FAT paths of directories, e.g. `::/EFI`, `::/EFI/BOOT`.
    dirs: Vec<String>,
    /// FAT directory (`::/EFI/BOOT/`) and the host files that go into it.
    files: Vec<(String, Vec<PathBuf>)>,
}

fn walk(host: &Path, fat: &str, tree: &mut Tree) -> Result<(), FormatError> {
    let mut entries: Vec<(OsString, PathBuf)> = std::fs::read_dir(host)
        .map_err(FormatError::io("read the directory", host))?
        .map(|e| {
            e.map(|e| (e.file_name(), e.path()))
                .map_err(FormatError::io("read the directory", host))
        })
        .collect::<Result<_, _>>()?;
    entries.sort();
    let mut seen: HashMap<String, PathBuf> = HashMap::new();
    let mut files = Vec::new();
    let mut subdirs = Vec::new();
    for (name, path) in entries {
        let Some(name) = name.to_str() else {
            return Err(FormatError::FatUnsupported {
                path,
                kind: "file whose name is not UTF-8",
            });
        };
        if let Some(first) = seen.insert(name.to_lowercase(), path.clone()) {
            return Err(FormatError::FatNameClash {
                first,
                second: path,
            });
        }
        let meta = std::fs::symlink_metadata(&path).map_err(FormatError::io("stat", &path))?;
        let ft = meta.file_type();
        if ft.is_dir() {
            subdirs.push((format!("{fat}/{name}"), path));
        } else if ft.is_file() {
            files.push(path);
        } else {
            let kind = if ft.is_symlink() {
                "symbolic link"
            } else {
                "special file"
            };
            return Err(FormatError::FatUnsupported { path, kind });
        }
    }
    if !files.is_empty() {
        tree.files.push((format!("{fat}/"), files));
    }
    for (fat_dir, path) in subdirs {
        tree.dirs.push(fat_dir.clone());
        walk(&path, &fat_dir, tree)?;
    }
    Ok(())
}

/// Makes the FAT image `out` (created or truncated, `size` bytes, sparse) holding the tree
/// `source_dir`, with the given volume id and label (empty for none); every timestamp in it is
/// `epoch` (clamped to FAT's 1980..2107 range).
#[allow(clippy::too_many_arguments)]
pub fn mkfs_vfat(
    runner: &dyn Runner,
    log: &Path,
    source_dir: &Path,
    out: &Path,
    size: u64,
    volume_id: u32,
    label: &str,
    epoch: i64,
) -> Result<(), FormatError> {
    let bits = fat_bits(size)?;
    let label = fat_label(label)?;
    if !source_dir.is_dir() {
        return Err(FormatError::BadSource {
            path: source_dir.to_path_buf(),
        });
    }
    let mut tree = Tree::default();
    walk(source_dir, "::", &mut tree)?;

    create_sparse(out, size)?;
    let result = fill(runner, log, out, &tree, bits, volume_id, &label, epoch);
    if result.is_err() {
        let _ = std::fs::remove_file(out);
    }
    result
}

#[allow(clippy::too_many_arguments)]
fn fill(
    runner: &dyn Runner,
    log: &Path,
    out: &Path,
    tree: &Tree,
    bits: u8,
    volume_id: u32,
    label: &str,
    epoch: i64,
) -> Result<(), FormatError> {
    let run = |tool: &'static str, cmd: Cmd| {
        runner.run(&cmd, log).map_err(|source| FormatError::Tool {
            tool,
            out: out.to_path_buf(),
            source,
        })
    };
    let mut mkfs = Cmd::new("mkfs.vfat")
        .args(["-F", &bits.to_string(), "-S", "512", "--invariant", "-i"])
        .arg(format!("{volume_id:08X}"));
    if !label.is_empty() {
        mkfs = mkfs.arg("-n").arg(label);
    }
    run("mkfs.vfat", mkfs.arg(out))?;

    let epoch = epoch.clamp(FAT_EPOCH_MIN, FAT_EPOCH_MAX).to_string();
    let mtools = |program: &str| {
        Cmd::new(program)
            .arg("-i")
            .arg(out)
            .env("MTOOLS_SKIP_CHECK", "1")
            .env("MTOOLS_NO_VFAT", "0")
            .env("MTOOLS_NAME_NUMERIC_TAIL", "1")
            .env("SOURCE_DATE_EPOCH", &epoch)
            .env("TZ", "UTC")
    };
    for dirs in tree.dirs.chunks(ARGS_PER_CALL) {
        run("mmd", mtools("mmd").args(dirs))?;
    }
    for (fat_dir, files) in &tree.files {
        for chunk in files.chunks(ARGS_PER_CALL) {
            let cmd = mtools("mcopy").args(["-p", "-Q"]).args(chunk).arg(fat_dir);
            run("mcopy", cmd)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::{HostRunner, RecordingRunner};

    const EPOCH: i64 = 1_700_000_000;

    fn sample_tree(root: &Path) {
        std::fs::create_dir_all(root.join("EFI/BOOT")).unwrap();
        std::fs::create_dir_all(root.join("EFI/debian")).unwrap();
        std::fs::write(
            root.join("EFI/BOOT/BOOTX64.EFI"),
            b"MZ not really a PE\0\x01\x02",
        )
        .unwrap();
        std::fs::write(root.join("EFI/debian/grub.cfg"), "search --fs-uuid x\n").unwrap();
        std::fs::write(root.join("EFI/debian/grubx64.efi"), b"MZ grub").unwrap();
        std::fs::write(root.join("startup.nsh"), "fs0:\\EFI\\BOOT\\BOOTX64.EFI\n").unwrap();
    }

    #[test]
    fn fat_type_by_size() {
        assert_eq!(fat_bits(MIB).unwrap(), 12);
        assert_eq!(fat_bits(9 * MIB - 512).unwrap(), 12);
        assert_eq!(fat_bits(9 * MIB).unwrap(), 16);
        assert_eq!(fat_bits(33 * MIB - 512).unwrap(), 16);
        assert_eq!(fat_bits(33 * MIB).unwrap(), 32);
        assert_eq!(fat_bits(200 * MIB).unwrap(), 32);
        assert!(matches!(
            fat_bits(MIB - 512),
            Err(FormatError::FatSize { .. })
        ));
        assert!(matches!(
            fat_bits(MIB + 1),
            Err(FormatError::FatSize { .. })
        ));
    }

    #[test]
    fn labels_are_checked_and_upper_cased() {
        assert_eq!(fat_label("esp").unwrap(), "ESP");
        assert_eq!(fat_label("").unwrap(), "");
        assert_eq!(fat_label("EFI SYSTEM").unwrap(), "EFI SYSTEM");
        for bad in ["TWELVE_CHARS", "A.B", "é", " X", "A*"] {
            assert!(
                matches!(fat_label(bad), Err(FormatError::FatLabel { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn commands_are_pinned_and_sorted() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("esp");
        sample_tree(&src);
        let out = dir.path().join("esp.img");
        let runner = RecordingRunner::default();
        mkfs_vfat(
            &runner,
            &dir.path().join("log"),
            &src,
            &out,
            64 * MIB,
            0xDEAD_BEEF,
            "esp",
            EPOCH,
        )
        .unwrap();
        let o = out.display();
        let s = src.display();
        assert_eq!(
            runner.lines(),
            [
                format!("mkfs.vfat -F 32 -S 512 --invariant -i DEADBEEF -n ESP {o}"),
                format!("mmd -i {o} ::/EFI ::/EFI/BOOT ::/EFI/debian"),
                format!("mcopy -i {o} -p -Q {s}/startup.nsh ::/"),
                format!("mcopy -i {o} -p -Q {s}/EFI/BOOT/BOOTX64.EFI ::/EFI/BOOT/"),
                format!(
                    "mcopy -i {o} -p -Q {s}/EFI/debian/grub.cfg {s}/EFI/debian/grubx64.efi \
                     ::/EFI/debian/"
                ),
            ]
        );
        let calls = runner.calls.lock().unwrap();
        assert!(calls[0].env.is_empty());
        for c in &calls[1..] {
            let env: Vec<String> = c
                .env
                .iter()
                .map(|(k, v)| format!("{}={}", k.to_string_lossy(), v.to_string_lossy()))
                .collect();
            assert_eq!(
                env,
                [
                    "MTOOLS_SKIP_CHECK=1",
                    "MTOOLS_NO_VFAT=0",
                    "MTOOLS_NAME_NUMERIC_TAIL=1",
                    "SOURCE_DATE_EPOCH=1700000000",
                    "TZ=UTC"
                ]
            );
        }
        assert_eq!(std::fs::metadata(&out).unwrap().len(), 64 * MIB);
    }

    #[test]
    fn small_sizes_and_old_epochs() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("empty");
        std::fs::create_dir(&src).unwrap();
        let out = dir.path().join("small.img");
        let runner = RecordingRunner::default();
        mkfs_vfat(
            &runner,
            &dir.path().join("log"),
            &src,
            &out,
            4 * MIB,
            1,
            "",
            0,
        )
        .unwrap();
        // No label, FAT12, nothing to copy.
        assert_eq!(
            runner.lines(),
            [format!(
                "mkfs.vfat -F 12 -S 512 --invariant -i 00000001 {}",
                out.display()
            )]
        );
        std::fs::write(src.join("f"), "x").unwrap();
        let runner = RecordingRunner::default();
        mkfs_vfat(
            &runner,
            &dir.path().join("log"),
            &src,
            &out,
            16 * MIB,
            1,
            "",
            0,
        )
        .unwrap();
        let calls = runner.calls.lock().unwrap();
        assert!(calls[0].display().starts_with("mkfs.vfat -F 16 "));
        assert!(calls[1]
            .env
            .contains(&("SOURCE_DATE_EPOCH".into(), "315532800".into())));
    }

    #[test]
    fn unrepresentable_trees_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let out = dir.path().join("x.img");
        let src = dir.path().join("links");
        std::fs::create_dir(&src).unwrap();
        std::os::unix::fs::symlink("target", src.join("link")).unwrap();
        let runner = RecordingRunner::default();
        let err = mkfs_vfat(&runner, &log, &src, &out, 64 * MIB, 1, "", EPOCH).unwrap_err();
        assert!(
            matches!(
                &err,
                FormatError::FatUnsupported {
                    kind: "symbolic link",
                    ..
                }
            ),
            "{err}"
        );
        let src = dir.path().join("case");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("Boot"), "").unwrap();
        std::fs::write(src.join("BOOT"), "").unwrap();
        let err = mkfs_vfat(&runner, &log, &src, &out, 64 * MIB, 1, "", EPOCH).unwrap_err();
        assert!(matches!(err, FormatError::FatNameClash { .. }), "{err}");
        assert!(runner.calls.lock().unwrap().is_empty());
        assert!(!out.exists());
    }

    fn host(dir: &Path, program: &str, args: &[&str], env: &[(&str, &str)]) -> String {
        let mut cmd = Cmd::new(program).args(args);
        for (k, v) in env {
            cmd = cmd.env(k, v);
        }
        let out = HostRunner
            .output(&cmd, &dir.join("tools.log"))
            .unwrap_or_else(|e| panic!("{program} {args:?}: {e}"));
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn host_mkfs_is_clean_listed_and_reproducible() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("esp");
        sample_tree(&src);
        let log = dir.path().join("log");
        let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
        mkfs_vfat(
            &HostRunner,
            &log,
            &src,
            &a,
            64 * MIB,
            0xDEAD_BEEF,
            "esp",
            EPOCH,
        )
        .unwrap();
        // A changed mtime in the source must not change the image.
        std::fs::File::options()
            .append(true)
            .open(src.join("startup.nsh"))
            .unwrap()
            .set_modified(std::time::SystemTime::now())
            .unwrap();
        mkfs_vfat(
            &HostRunner,
            &log,
            &src,
            &b,
            64 * MIB,
            0xDEAD_BEEF,
            "esp",
            EPOCH,
        )
        .unwrap();
        assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap());

        let img = a.to_str().unwrap();
        let fsck = host(dir.path(), "fsck.vfat", &["-n", img], &[]);
        assert!(fsck.contains("files"), "{fsck}");
        let mtools = [("MTOOLS_SKIP_CHECK", "1"), ("TZ", "UTC")];
        let listing = host(dir.path(), "mdir", &["-i", img, "::/EFI/BOOT"], &mtools);
        assert!(listing.contains("BOOTX64  EFI"), "{listing}");
        assert!(listing.contains("2023-11-14"), "{listing}");
        assert!(
            listing.contains("Volume Serial Number is DEAD-BEEF"),
            "{listing}"
        );
        let info = host(dir.path(), "minfo", &["-i", img, "::"], &mtools);
        assert!(info.contains("disk label=\"ESP        \""), "{info}");
        assert!(info.contains("disk type=\"FAT32"), "{info}");
        let copied = dir.path().join("copied.efi");
        host(
            dir.path(),
            "mcopy",
            &[
                "-i",
                img,
                "::/EFI/BOOT/BOOTX64.EFI",
                copied.to_str().unwrap(),
            ],
            &mtools,
        );
        assert_eq!(
            std::fs::read(&copied).unwrap(),
            std::fs::read(src.join("EFI/BOOT/BOOTX64.EFI")).unwrap()
        );
    }

    #[test]
    fn host_small_fat_types_are_clean() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("esp");
        sample_tree(&src);
        let log = dir.path().join("log");
        for (size, kind) in [(2 * MIB, "FAT12"), (9 * MIB, "FAT16"), (33 * MIB, "FAT32")] {
            let img = dir.path().join(format!("{size}.img"));
            mkfs_vfat(&HostRunner, &log, &src, &img, size, 7, "", EPOCH).unwrap();
            let img = img.to_str().unwrap();
            host(dir.path(), "fsck.vfat", &["-n", img], &[]);
            let info = host(
                dir.path(),
                "minfo",
                &["-i", img, "::"],
                &[("MTOOLS_SKIP_CHECK", "1")],
            );
            assert!(
                info.contains(&format!("disk type=\"{kind}")),
                "{size}: {info}"
            );
        }
    }
}
