//! Writers of on-disk formats, each working on plain files (no mounts, no loop devices).
//!
//! Three principles hold for every writer here:
//!
//! - **Plain files only.** A filesystem or a disk is a regular file that imgspec creates itself,
//!   sparse, and fills through `mkfs.ext4 -d`, `mkfs.vfat` + mtools, `qemu-img`, or its own code
//!   (the GPT in [`gpt`]). Nothing is mounted, no loop device is attached, no root is needed.
//! - **Deterministic.** The same inputs give the same bytes: every external tool is run with its
//!   configuration pinned (no host config file, no default that moved between versions matters),
//!   with `SOURCE_DATE_EPOCH` (and the tool's own fake-time knob) for every timestamp, `TZ=UTC`
//!   where a tool writes local time, and directory trees are copied in sorted order.
//! - **Every id is derived from a seed.** Disk and partition GUIDs, filesystem UUIDs, hash seeds
//!   and FAT volume ids are never random: [`crate::ids::derive_guid`], [`crate::ids::derive_u32`] and
//!   [`crate::ids::derive_bytes16`] compute them from the image's 32-byte seed and a label.
//!
//! External programs run only through the [`crate::runner::Runner`] the caller hands in.

pub mod biosboot;
pub mod ext4;
pub mod gpt;
pub mod qcow2;
pub mod vdisk;
pub mod vfat;

use std::path::PathBuf;

use crate::runner::RunError;

/// Everything that can go wrong while writing a disk, a filesystem or an image format.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("could not {action} `{path}`")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{tool} failed while making `{out}`")]
    Tool {
        tool: &'static str,
        out: PathBuf,
        #[source]
        source: RunError,
    },

    #[error("could not ask `{tool}` for its version")]
    Version {
        tool: &'static str,
        #[source]
        source: RunError,
    },

    #[error("could not read a version number from `{tool}` output: {output:?}")]
    VersionParse { tool: &'static str, output: String },

    #[error(
        "the host's e2fsprogs is {found}, imgspec needs mke2fs {need} or newer (reproducible \
         `mkfs.ext4 -d`, tar input); on Debian 12 install it with \
         `apt-get install -t bookworm-backports e2fsprogs`"
    )]
    E2fsprogsTooOld { found: String, need: &'static str },

    #[error(
        "mkfs.ext4 cannot read the tar file `{source_tar}`: libarchive is missing; install it with \
         `apt-get install libarchive13` (Debian 12; `libarchive13t64` on newer releases)"
    )]
    NoLibarchive {
        source_tar: PathBuf,
        #[source]
        source: RunError,
    },

    #[error(transparent)]
    Layout(#[from] crate::layout::LayoutError),

    #[error("{got} content entries given for {expected} partitions")]
    ContentCount { expected: usize, got: usize },

    #[error(
        "`{path}` is {size} bytes, larger than partition `{partition}` ({capacity} bytes) by \
         {} bytes", .size - .capacity
    )]
    ContentTooLarge {
        path: PathBuf,
        partition: String,
        size: u64,
        capacity: u64,
    },

    #[error("MBR boot code is {len} bytes, at most 440 fit before the partition table")]
    BootCodeTooLarge { len: usize },

    #[error("`{path}` does not start with an MBR (no 0x55AA signature)")]
    NotAnMbr { path: PathBuf },

    #[error("partition `{partition}` cannot hold GRUB's core image: {reason}")]
    NotBiosBoot { partition: String, reason: String },

    #[error("GRUB's boot.img cannot be used: {reason}")]
    BootImage { reason: String },

    #[error("GRUB's core.img cannot be used: {reason}")]
    CoreImage { reason: String },

    #[error(
        "GRUB's core.img is {size} bytes, larger than the BIOS boot partition `{partition}` \
         ({capacity} bytes); make the partition bigger (1 MiB is the usual size)"
    )]
    CoreTooLarge {
        size: u64,
        partition: String,
        capacity: u64,
    },

    #[error(
        "GRUB's core.img is {size} bytes, GRUB's BIOS loader reads at most {max} bytes; build \
         it with fewer modules"
    )]
    CoreTooLargeToLoad { size: u64, max: u64 },

    #[error("invalid ext4 parameters for `{out}`: {reason}")]
    Ext4Params { out: PathBuf, reason: String },

    #[error(
        "`{path}` is not laid out as this imgspec expects ({reason}): its identifiers cannot be \
         made reproducible; this qemu-img is not supported for this format, use qcow2 or raw"
    )]
    VDisk { path: PathBuf, reason: String },

    #[error("the source `{path}` is neither a directory nor a .tar file")]
    BadSource { path: PathBuf },

    #[error("invalid FAT size {size} bytes: {reason}")]
    FatSize { size: u64, reason: String },

    #[error("invalid FAT label `{label}`: {reason}")]
    FatLabel { label: String, reason: String },

    #[error("`{path}` cannot be copied to a FAT filesystem: it is a {kind}")]
    FatUnsupported { path: PathBuf, kind: &'static str },

    #[error("`{first}` and `{second}` differ only in case, FAT cannot hold both in one directory")]
    FatNameClash { first: PathBuf, second: PathBuf },
}

impl FormatError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| FormatError::Io {
            action,
            path,
            source,
        }
    }
}

/// Creates (or truncates) `path` and makes it a sparse, all-zero file of `size` bytes.
pub(crate) fn create_sparse(
    path: &std::path::Path,
    size: u64,
) -> Result<std::fs::File, FormatError> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(FormatError::io("create", path))?;
    f.set_len(size)
        .map_err(FormatError::io("set the size of", path))?;
    Ok(f)
}

/// Parses the first `N.N[.N]` found in a tool's version output into numbers.
pub(crate) fn parse_version(text: &str) -> Option<Vec<u64>> {
    text.split(|c: char| c.is_whitespace() || c == '(' || c == ')' || c == ',')
        .find_map(|word| {
            let nums: Vec<u64> = word
                .split('.')
                .map_while(|part| {
                    let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
                    digits.parse().ok()
                })
                .collect();
            (nums.len() >= 2 && word.starts_with(|c: char| c.is_ascii_digit())).then_some(nums)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::{Cmd, HostRunner, Runner};
    use std::path::Path;

    /// The writers compose: a FAT ESP and an ext4 root written into a GPT disk, converted to
    /// qcow2; every step twice, every output identical, the partitions readable in place.
    #[test]
    fn host_whole_disk_is_reproducible() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let esp_tree = dir.path().join("esp");
        std::fs::create_dir_all(esp_tree.join("EFI/BOOT")).unwrap();
        std::fs::write(esp_tree.join("EFI/BOOT/BOOTX64.EFI"), b"MZ").unwrap();
        let root_tree = dir.path().join("root");
        std::fs::create_dir_all(root_tree.join("etc")).unwrap();
        std::fs::write(root_tree.join("etc/hostname"), "box\n").unwrap();
        let seed = [9u8; 32];
        let mib = crate::layout::MIB;

        let build = |tag: &str| -> (Vec<u8>, Vec<u8>) {
            let esp = dir.path().join(format!("esp-{tag}.img"));
            let root = dir.path().join(format!("root-{tag}.img"));
            let disk = dir.path().join(format!("disk-{tag}.raw"));
            let qcow = dir.path().join(format!("disk-{tag}.qcow2"));
            let id = crate::ids::derive_u32(&seed, "vfat-volume-id:esp");
            vfat::mkfs_vfat(
                &HostRunner,
                &log,
                &esp_tree,
                &esp,
                9 * mib,
                id,
                "ESP",
                1_700_000_000,
            )
            .unwrap();
            let p = ext4::Ext4Params {
                size: 16 * mib,
                uuid: crate::ids::derive_guid(&seed, "ext4-uuid:root"),
                hash_seed: crate::ids::derive_guid(&seed, "ext4-hash-seed:root"),
                label: "root".into(),
                epoch: 1_700_000_000,
            };
            ext4::mkfs_ext4(&HostRunner, &log, &root_tree, &root, &p).unwrap();
            let parts = [
                crate::layout::PartitionSpec {
                    name: "esp".into(),
                    type_guid: crate::ids::ESP,
                    size: Some(9 * mib),
                    guid: crate::ids::derive_guid(&seed, "partition:esp"),
                    attributes: 0,
                },
                crate::layout::PartitionSpec {
                    name: "root".into(),
                    type_guid: crate::ids::ROOT_X86_64,
                    size: None,
                    guid: crate::ids::derive_guid(&seed, "partition:root"),
                    attributes: 0,
                },
            ];
            let layout = crate::layout::layout(32 * mib, &parts).unwrap();
            let disk_guid = crate::ids::derive_guid(&seed, "disk");
            gpt::write_disk(&disk, &layout, disk_guid, &[Some(&esp), Some(&root)]).unwrap();
            // Each partition holds exactly its image, zero-padded.
            let bytes = std::fs::read(&disk).unwrap();
            for (img, placed) in [
                (&esp, &layout.partitions[0]),
                (&root, &layout.partitions[1]),
            ] {
                let want = std::fs::read(img).unwrap();
                let at = placed.offset_bytes as usize;
                assert!(bytes[at..at + want.len()] == want[..], "{}", placed.name);
                let end = at + placed.size_bytes as usize;
                assert!(bytes[at + want.len()..end].iter().all(|&b| b == 0));
            }
            qcow2::convert(&HostRunner, &log, &disk, &qcow, qcow2::Compression::Zlib).unwrap();
            let listing = host(
                &log,
                Cmd::new("mdir")
                    .arg("-i")
                    .arg(format!("{}@@1M", disk.display()))
                    .arg("::/EFI/BOOT")
                    .env("MTOOLS_SKIP_CHECK", "1"),
            );
            assert!(listing.contains("BOOTX64  EFI"), "{listing}");
            (bytes, std::fs::read(&qcow).unwrap())
        };
        let (disk_a, qcow_a) = build("a");
        let (disk_b, qcow_b) = build("b");
        assert!(disk_a == disk_b, "raw disks differ");
        assert!(qcow_a == qcow_b, "qcow2 images differ");
    }

    fn host(log: &Path, cmd: Cmd) -> String {
        let out = HostRunner
            .output(&cmd, log)
            .unwrap_or_else(|e| panic!("{}: {e}", cmd.display()));
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn parses_versions() {
        assert_eq!(
            parse_version("mke2fs 1.47.2 (1-Jan-2025)\n\tUsing EXT2FS Library version 1.47.2"),
            Some(vec![1, 47, 2])
        );
        assert_eq!(
            parse_version("qemu-img version 10.0.2 (Debian 1:10.0.2+ds-2)"),
            Some(vec![10, 0, 2])
        );
        assert_eq!(
            parse_version("mke2fs 1.46.6-rc1 (1-Feb-2023)"),
            Some(vec![1, 46, 6])
        );
        assert_eq!(parse_version("no digits here"), None);
    }
}
