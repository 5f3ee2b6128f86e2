//! Legacy BIOS boot for GPT disks: GRUB's `boot.img` in the protective MBR and its `core.img`
//! in the BIOS boot partition, written into the plain disk file the way `grub-bios-setup` would.
//!
//! `grub-bios-setup` cannot work on a plain file (it must guess the device holding the GRUB
//! directory, and a file is no device), so [`install`] does what it does on a GPT disk whose
//! BIOS boot partition receives the core image (GRUB's `util/setup.c`, embedding case), with
//! the offsets of `include/grub/i386/pc/boot.h`:
//!
//! - **The core image** (made by `grub-mkimage -O i386-pc`) is written at the start of the BIOS
//!   boot partition (GPT type 21686148-6449-6E6F-744E-656564454649), zero-padded to whole
//!   sectors. Its first sector is `diskboot.img` (`grub-core/boot/i386/pc/diskboot.S`), which
//!   loads the rest of the image from a block list at the end of that sector, read downwards
//!   until an entry of length 0: each 12-byte entry is a little-endian `u64` start sector, a
//!   `u16` sector count and a `u16` real-mode load segment. The core image lies in one piece, so
//!   one entry is patched at 0x1F4: start = the partition's first LBA + 1, count = the core
//!   image's sectors after the first, segment 0x820 (GRUB loads `diskboot.img` at segment 0x800
//!   and the rest right after it, 0x20 paragraphs further), and the entry below it (0x1E8) is
//!   zeroed as the terminator. `util/setup.c` embeds at most (0x78000 − 0x9000) / 512 = 888
//!   sectors (from the kernel's link address up to 0x78000), so a larger core image is refused
//!   too.
//! - **The MBR** is `boot.img` (`grub-core/boot/i386/pc/boot.S`) with the disk's own sector
//!   merged in: the BIOS parameter block area 0x03..0x5A is kept from the disk (boot.S only uses
//!   it as scratch space), the kernel sector at 0x5C (`u64`) is set to the partition's first
//!   LBA, the boot drive at 0x64 to 0xFF (use the drive the BIOS booted from), the two bytes at
//!   0x66 (a jump over the drive check) become NOPs as for any hard disk (so a BIOS that passes
//!   a bogus drive number gets 0x80), and 0x1B8..0x200 — the disk signature, the protective
//!   partition table and 0x55AA — stay exactly as the GPT writer left them.
//!
//! No Reed-Solomon redundancy is added (`grub-bios-setup --no-rs-codes`): the core image's
//! redundancy field stays 0, which GRUB's startup code reads as "none". Pure file I/O, no tool
//! runs; the same inputs give the same bytes. Call it after [`super::gpt::write_disk`].

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::FormatError;
use crate::layout::LayoutError;
use crate::layout::{Layout, SECTOR};

const SECTOR_BYTES: usize = SECTOR as usize;

/// Start of the BIOS parameter block kept from the disk's own first sector.
const BPB_START: usize = 0x03;
/// End (exclusive) of the BIOS parameter block.
const BPB_END: usize = 0x5A;
/// boot.img: LBA (`u64`, little-endian) of the core image's first sector.
pub const KERNEL_SECTOR: usize = 0x5C;
/// boot.img: BIOS drive to read from; 0xFF means the drive the BIOS booted.
pub const BOOT_DRIVE: usize = 0x64;
/// boot.img: a two-byte jump that skips the drive-number check; NOPs on hard disks.
pub const DRIVE_CHECK: usize = 0x66;
/// First byte of the MBR kept from the disk: disk signature (0x1B8), 2 reserved bytes,
/// partition table (0x1BE..0x1FE) and the 0x55AA signature.
pub const KEEP_FROM: usize = 0x1B8;

/// Size of one block list entry: start `u64`, length `u16`, segment `u16`.
const LIST_ENTRY: usize = 12;
/// diskboot.img: offset of the first (topmost) block list entry.
pub const BLOCKLIST: usize = SECTOR_BYTES - LIST_ENTRY;
/// Real-mode segment where diskboot.img itself is loaded (0x8000).
const KERNEL_SEG: u16 = 0x800;
/// Segment where the rest of the core image goes: right after diskboot.img.
pub const CORE_SEGMENT: u16 = KERNEL_SEG + (SECTOR_BYTES as u16 >> 4);
/// The most sectors `grub-bios-setup` embeds: from the kernel's link address 0x9000 up to
/// 0x78000.
pub const MAX_CORE_SECTORS: u64 = (0x78000 - 0x9000) / SECTOR;

/// Installs GRUB for BIOS boot into the GPT disk `disk` (written from `layout`): `core_img` at
/// the start of partition `bios_part` (a BIOS boot partition), `boot_img` in the MBR pointing at
/// it. Checks everything before writing anything.
pub fn install(
    disk: &Path,
    layout: &Layout,
    bios_part: usize,
    boot_img: &[u8],
    core_img: &[u8],
) -> Result<(), FormatError> {
    let part = bios_partition(layout, bios_part)?;
    let core = patch_core(core_img, part)?;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)
        .map_err(FormatError::io("open", disk))?;
    let size = f
        .metadata()
        .map_err(FormatError::io("read the size of", disk))?
        .len();
    if size != layout.disk_size {
        return Err(LayoutError::DiskSize {
            size,
            reason: format!(
                "`{}` is not the disk of this layout ({} bytes)",
                disk.display(),
                layout.disk_size
            ),
        }
        .into());
    }
    let old = read_mbr(&f, disk)?;
    let mbr = patch_mbr(boot_img, &old, part.first_lba)?;
    f.write_all_at(&core, part.offset_bytes)
        .map_err(FormatError::io("write GRUB's core image into", disk))?;
    f.write_all_at(&mbr, 0)
        .map_err(FormatError::io("write the MBR of", disk))
}

/// Partition `i` of `layout`, if it is a BIOS boot partition.
fn bios_partition(layout: &Layout, i: usize) -> Result<&crate::layout::Placed, FormatError> {
    let p = layout
        .partitions
        .get(i)
        .ok_or_else(|| FormatError::NotBiosBoot {
            partition: format!("#{i}"),
            reason: format!("the disk has {} partitions", layout.partitions.len()),
        })?;
    if p.type_guid != crate::ids::BIOS_BOOT {
        return Err(FormatError::NotBiosBoot {
            partition: p.name.clone(),
            reason: format!(
                "its type is {}, not BIOS boot ({})",
                p.type_guid,
                crate::ids::BIOS_BOOT
            ),
        });
    }
    Ok(p)
}

/// The disk's first sector, which must be an MBR.
fn read_mbr(f: &File, path: &Path) -> Result<[u8; SECTOR_BYTES], FormatError> {
    let mut old = [0u8; SECTOR_BYTES];
    match f.read_exact_at(&mut old, 0) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(FormatError::NotAnMbr {
                path: path.to_path_buf(),
            })
        }
        Err(e) => return Err(FormatError::io("read the MBR of", path)(e)),
    }
    if old[510..] != [0x55, 0xAA] {
        return Err(FormatError::NotAnMbr {
            path: path.to_path_buf(),
        });
    }
    Ok(old)
}

/// A copy of `core_img`, padded to whole sectors, with its block list saying that the sectors
/// after the first follow it in partition `part` (pure).
pub fn patch_core(core_img: &[u8], part: &crate::layout::Placed) -> Result<Vec<u8>, FormatError> {
    let size = core_img.len() as u64;
    if core_img.len() <= SECTOR_BYTES {
        return Err(FormatError::CoreImage {
            reason: format!("it is {size} bytes, GRUB's is diskboot.img (one sector) and more"),
        });
    }
    let top = &core_img[BLOCKLIST..SECTOR_BYTES];
    if u16::from_le_bytes([top[10], top[11]]) != CORE_SEGMENT {
        return Err(FormatError::CoreImage {
            reason: format!(
                "its first sector has no block list loading at segment {CORE_SEGMENT:#x} (not \
                 made by `grub-mkimage -O i386-pc`?)"
            ),
        });
    }
    if size > part.size_bytes {
        return Err(FormatError::CoreTooLarge {
            size,
            partition: part.name.clone(),
            capacity: part.size_bytes,
        });
    }
    let sectors = size.div_ceil(SECTOR);
    if sectors > MAX_CORE_SECTORS {
        return Err(FormatError::CoreTooLargeToLoad {
            size,
            max: MAX_CORE_SECTORS * SECTOR,
        });
    }
    let mut core = core_img.to_vec();
    core.resize((sectors * SECTOR) as usize, 0);
    let rest = u16::try_from(sectors - 1).expect("at most MAX_CORE_SECTORS");
    let entry = &mut core[BLOCKLIST..SECTOR_BYTES];
    entry[0..8].copy_from_slice(&(part.first_lba + 1).to_le_bytes());
    entry[8..10].copy_from_slice(&rest.to_le_bytes());
    entry[10..12].copy_from_slice(&CORE_SEGMENT.to_le_bytes());
    core[BLOCKLIST - LIST_ENTRY..BLOCKLIST].fill(0);
    Ok(core)
}

/// The MBR: `boot_img` pointing at the core image at `core_lba`, with the BIOS parameter block,
/// disk signature, partition table and boot signature of `old` (pure).
pub fn patch_mbr(
    boot_img: &[u8],
    old: &[u8; SECTOR_BYTES],
    core_lba: u64,
) -> Result<[u8; SECTOR_BYTES], FormatError> {
    let mut m: [u8; SECTOR_BYTES] = boot_img.try_into().map_err(|_| FormatError::BootImage {
        reason: format!("it is {} bytes, not one 512-byte sector", boot_img.len()),
    })?;
    // boot.S starts with a short jump over the BPB; the drive check is a short jump or, once
    // installed, two NOPs.
    let drive_check = [m[DRIVE_CHECK], m[DRIVE_CHECK + 1]];
    if m[0] != 0xEB || !(drive_check[0] == 0xEB || drive_check == [0x90, 0x90]) {
        return Err(FormatError::BootImage {
            reason: "it does not look like GRUB's i386-pc boot.img (no jump at 0x00 and 0x66)"
                .into(),
        });
    }
    m[BPB_START..BPB_END].copy_from_slice(&old[BPB_START..BPB_END]);
    m[KERNEL_SECTOR..KERNEL_SECTOR + 8].copy_from_slice(&core_lba.to_le_bytes());
    m[BOOT_DRIVE] = 0xFF;
    m[DRIVE_CHECK..DRIVE_CHECK + 2].copy_from_slice(&[0x90, 0x90]);
    m[KEEP_FROM..].copy_from_slice(&old[KEEP_FROM..]);
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{derive_guid, Guid};
    use crate::layout::{PartitionSpec, MIB};

    const SEED: [u8; 32] = [5; 32];

    fn spec(name: &str, type_guid: Guid, size: Option<u64>) -> PartitionSpec {
        PartitionSpec {
            name: name.into(),
            type_guid,
            size,
            guid: derive_guid(&SEED, name),
            attributes: 0,
        }
    }

    /// A boot.img shaped like GRUB's: jumps at 0x00 and 0x66, code everywhere else.
    fn fake_boot() -> Vec<u8> {
        let mut b = vec![0xCC; 512];
        b[0] = 0xEB;
        b[DRIVE_CHECK] = 0xEB;
        b[DRIVE_CHECK + 1] = 0x05;
        b
    }

    /// A core.img shaped like grub-mkimage's: diskboot's default block list, then `len` bytes.
    fn fake_core(len: usize) -> Vec<u8> {
        let mut c: Vec<u8> = (0..len).map(|i| (i % 251) as u8 | 1).collect();
        c[BLOCKLIST - LIST_ENTRY..BLOCKLIST].fill(0);
        c[BLOCKLIST..BLOCKLIST + 8].copy_from_slice(&2u64.to_le_bytes());
        let n = (len.div_ceil(512) - 1) as u16;
        c[BLOCKLIST + 8..BLOCKLIST + 10].copy_from_slice(&n.to_le_bytes());
        c[BLOCKLIST + 10..512].copy_from_slice(&0x820u16.to_le_bytes());
        c
    }

    fn bios_layout() -> Layout {
        crate::layout::layout(
            16 * MIB,
            &[
                spec("bios", crate::ids::BIOS_BOOT, Some(MIB)),
                spec("root", crate::ids::ROOT_X86_64, None),
            ],
        )
        .unwrap()
    }

    #[test]
    fn core_block_list_points_after_its_first_sector() {
        let l = bios_layout();
        let part = &l.partitions[0];
        let core = fake_core(3 * 512 + 100);
        let patched = patch_core(&core, part).unwrap();
        assert_eq!(patched.len(), 4 * 512, "padded to whole sectors");
        assert_eq!(
            &patched[..BLOCKLIST - LIST_ENTRY],
            &core[..BLOCKLIST - LIST_ENTRY]
        );
        assert_eq!(&patched[512..core.len()], &core[512..]);
        assert!(patched[core.len()..].iter().all(|&b| b == 0));
        // 0x1F4: start u64, 0x1FC: length u16, 0x1FE: segment u16.
        assert_eq!(BLOCKLIST, 0x1F4);
        assert_eq!(&patched[0x1F4..0x1FC], &2049u64.to_le_bytes());
        assert_eq!(&patched[0x1FC..0x1FE], &3u16.to_le_bytes());
        assert_eq!(&patched[0x1FE..0x200], &[0x20, 0x08]);
        assert!(patched[0x1E8..0x1F4].iter().all(|&b| b == 0), "terminator");
        assert_eq!(patch_core(&core, part).unwrap(), patched, "deterministic");
    }

    #[test]
    fn mbr_gets_the_core_sector_and_keeps_the_table() {
        let boot = fake_boot();
        let mut old = [0u8; 512];
        for (i, b) in old.iter_mut().enumerate() {
            *b = (i % 7) as u8 + 0x10;
        }
        old[510] = 0x55;
        old[511] = 0xAA;
        let m = patch_mbr(&boot, &old, 0x0102_0304_0506).unwrap();
        assert_eq!(m[0], 0xEB);
        assert_eq!(&m[0x03..0x5A], &old[0x03..0x5A], "BPB area from the disk");
        assert_eq!(&m[0x5A..0x5C], &boot[0x5A..0x5C]);
        assert_eq!(&m[0x5C..0x64], &0x0102_0304_0506u64.to_le_bytes());
        assert_eq!(m[0x64], 0xFF);
        assert_eq!(m[0x65], boot[0x65]);
        assert_eq!(&m[0x66..0x68], &[0x90, 0x90]);
        assert_eq!(&m[0x68..0x1B8], &boot[0x68..0x1B8]);
        assert_eq!(
            &m[0x1B8..],
            &old[0x1B8..],
            "signature, partition table, 0x55AA"
        );
        // Installing twice gives the same sector.
        assert_eq!(patch_mbr(&m, &m, 0x0102_0304_0506).unwrap(), m);
    }

    #[test]
    fn bad_images_are_refused() {
        let l = bios_layout();
        let part = &l.partitions[0];
        let old = [0u8; 512];
        assert!(matches!(
            patch_mbr(&[0xEB; 511], &old, 1),
            Err(FormatError::BootImage { .. })
        ));
        assert!(matches!(
            patch_mbr(&[0u8; 512], &old, 1),
            Err(FormatError::BootImage { .. })
        ));
        assert!(matches!(
            patch_core(&[0u8; 512], part),
            Err(FormatError::CoreImage { .. })
        ));
        assert!(matches!(
            patch_core(&[0u8; 4096], part),
            Err(FormatError::CoreImage { .. })
        ));
    }

    #[test]
    fn core_larger_than_the_partition_is_refused() {
        // A 1 MiB partition but GRUB's 888-sector limit: refused for that first.
        let l = bios_layout();
        let err = patch_core(&fake_core(889 * 512), &l.partitions[0]).unwrap_err();
        assert!(
            matches!(err, FormatError::CoreTooLargeToLoad { size, max }
                if size == 889 * 512 && max == 888 * 512),
            "{err}"
        );
        assert!(patch_core(&fake_core(888 * 512), &l.partitions[0]).is_ok());
        // A partition smaller than the core image (only possible with a hand-made layout).
        let mut small = l.partitions[0].clone();
        small.size_bytes = 64 * 512;
        let err = patch_core(&fake_core(64 * 512 + 1), &small).unwrap_err();
        assert!(
            matches!(&err, FormatError::CoreTooLarge { size, capacity, .. }
                if *size == 64 * 512 + 1 && *capacity == 64 * 512),
            "{err}"
        );
        let text = err.to_string();
        assert!(
            text.contains("32769 bytes") && text.contains("32768 bytes"),
            "{text}"
        );
    }

    #[test]
    fn install_writes_both_sectors_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("disk.raw");
        let l = bios_layout();
        crate::format::gpt::write_disk(&disk, &l, derive_guid(&SEED, "disk"), &[None, None])
            .unwrap();
        let before = std::fs::read(&disk).unwrap();
        let core = fake_core(5000);
        install(&disk, &l, 0, &fake_boot(), &core).unwrap();
        let after = std::fs::read(&disk).unwrap();
        let at = l.partitions[0].offset_bytes as usize;
        assert_eq!(
            after[..512],
            patch_mbr(&fake_boot(), &before[..512].try_into().unwrap(), 2048).unwrap()
        );
        assert_eq!(&after[0x5C..0x64], &2048u64.to_le_bytes());
        assert_eq!(&after[0x1B8..512], &before[0x1B8..512]);
        let patched = patch_core(&core, &l.partitions[0]).unwrap();
        assert_eq!(&after[at..at + patched.len()], &patched[..]);
        assert_eq!(&after[512..at], &before[512..at], "GPT untouched");
        assert_eq!(&after[at + patched.len()..], &before[at + patched.len()..]);
        // Again: same bytes.
        install(&disk, &l, 0, &fake_boot(), &core).unwrap();
        assert!(std::fs::read(&disk).unwrap() == after);
        // Wrong partition, wrong disk.
        assert!(matches!(
            install(&disk, &l, 1, &fake_boot(), &core),
            Err(FormatError::NotBiosBoot { .. })
        ));
        assert!(matches!(
            install(&disk, &l, 2, &fake_boot(), &core),
            Err(FormatError::NotBiosBoot { .. })
        ));
        let other = dir.path().join("zero.raw");
        File::create(&other).unwrap().set_len(16 * MIB).unwrap();
        assert!(matches!(
            install(&other, &l, 0, &fake_boot(), &core),
            Err(FormatError::NotAnMbr { .. })
        ));
        assert!(std::fs::read(&other).unwrap().iter().all(|&b| b == 0));
    }
}

/// Real boots in QEMU (TCG) of disks made here, with the host's GRUB: no Debian image needed.
#[cfg(test)]
mod boot_tests {
    use std::io::Read;
    use std::path::PathBuf;
    use std::process::{Child, Command, Stdio};
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::format::{ext4, vfat};
    use crate::ids::{derive_guid, derive_u32, Guid};
    use crate::layout::{PartitionSpec, MIB};
    use crate::runner::{Cmd, HostRunner, Runner};

    const SEED: [u8; 32] = [11; 32];
    const EPOCH: i64 = 1_700_000_000;
    const BIOS_MARK: &str = "imgspec-mark: core.img from the BIOS boot partition";
    const EFI_MARK: &str = "imgspec-mark: BOOTX64.EFI from the ESP";
    const ROOT_MARK: &str = "imgspec-mark: grub.cfg from the ext4 root";
    const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
    const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
    const TIMEOUT: Duration = Duration::from_secs(60);

    /// The embedded config of both GRUB images: serial console, a marker, then the root's
    /// grub.cfg found by filesystem UUID (as the bootloader step's early config does).
    fn early_cfg(mark: &str, root_uuid: Guid) -> String {
        format!(
            "serial --unit=0 --speed=115200\n\
             terminal_input serial\n\
             terminal_output serial\n\
             echo '{mark}'\n\
             search --no-floppy --fs-uuid --set=root {root_uuid}\n\
             set prefix=($root)/boot/grub\n\
             configfile $prefix/grub.cfg\n"
        )
    }

    fn grub_mkimage(dir: &Path, target: &str, cfg: &str, modules: &[&str]) -> Vec<u8> {
        let cfg_path = dir.join(format!("early-{target}.cfg"));
        std::fs::write(&cfg_path, cfg).unwrap();
        let out = dir.join(format!("grub-{target}.img"));
        let cmd = Cmd::new("grub-mkimage")
            .args(["-O", target, "-d", &format!("/usr/lib/grub/{target}")])
            .args(["-p", "/boot/grub", "-c"])
            .arg(cfg_path.as_os_str())
            .arg("-o")
            .arg(out.as_os_str())
            .args(modules.iter().copied());
        HostRunner
            .run(&cmd, &dir.join("tools.log"))
            .unwrap_or_else(|e| panic!("{}: {e}", cmd.display()));
        std::fs::read(out).unwrap()
    }

    /// A GPT disk: `bios` (1 MiB), optionally `esp` (FAT, 4 MiB, `BOOTX64.EFI`), then an ext4
    /// `root` whose grub.cfg prints [`ROOT_MARK`] and halts; GRUB for BIOS installed.
    fn make_disk(dir: &Path, with_esp: bool) -> PathBuf {
        let log = dir.join("tools.log");
        let root_uuid = derive_guid(&SEED, "ext4-uuid:root");
        let tree = dir.join("root-tree");
        std::fs::create_dir_all(tree.join("boot/grub")).unwrap();
        std::fs::write(
            tree.join("boot/grub/grub.cfg"),
            format!("echo '{ROOT_MARK}'\nhalt\n"),
        )
        .unwrap();
        let root = dir.join("root.img");
        let params = ext4::Ext4Params {
            size: 8 * MIB,
            uuid: root_uuid,
            hash_seed: derive_guid(&SEED, "ext4-hash-seed:root"),
            label: "root".into(),
            epoch: EPOCH,
        };
        ext4::mkfs_ext4(&HostRunner, &log, &tree, &root, &params).unwrap();

        let part = |name: &str, type_guid, size| PartitionSpec {
            name: name.into(),
            type_guid,
            size,
            guid: derive_guid(&SEED, &format!("partition:{name}")),
            attributes: 0,
        };
        let mut parts = vec![part("bios", crate::ids::BIOS_BOOT, Some(MIB))];
        let mut contents = vec![None];
        let esp = dir.join("esp.img");
        if with_esp {
            let efi = grub_mkimage(
                dir,
                "x86_64-efi",
                &early_cfg(EFI_MARK, root_uuid),
                &[
                    "part_gpt",
                    "fat",
                    "ext2",
                    "search",
                    "search_fs_uuid",
                    "normal",
                    "configfile",
                    "echo",
                    "serial",
                    "terminal",
                    "halt",
                    "test",
                ],
            );
            let esp_tree = dir.join("esp-tree");
            std::fs::create_dir_all(esp_tree.join("EFI/BOOT")).unwrap();
            std::fs::write(esp_tree.join("EFI/BOOT/BOOTX64.EFI"), efi).unwrap();
            let id = derive_u32(&SEED, "vfat-volume-id:esp");
            vfat::mkfs_vfat(
                &HostRunner,
                &log,
                &esp_tree,
                &esp,
                4 * MIB,
                id,
                "ESP",
                EPOCH,
            )
            .unwrap();
            parts.push(part("esp", crate::ids::ESP, Some(4 * MIB)));
            contents.push(Some(esp.as_path()));
        }
        parts.push(part("root", crate::ids::ROOT_X86_64, None));
        contents.push(Some(root.as_path()));
        let disk_size = (parts.len() as u64 - 1) * 4 * MIB + 8 * MIB + 3 * MIB;
        let layout = crate::layout::layout(disk_size, &parts).unwrap();
        let disk = dir.join("disk.raw");
        crate::format::gpt::write_disk(&disk, &layout, derive_guid(&SEED, "disk"), &contents)
            .unwrap();

        let core = grub_mkimage(
            dir,
            "i386-pc",
            &early_cfg(BIOS_MARK, root_uuid),
            &[
                "biosdisk",
                "part_gpt",
                "ext2",
                "search",
                "search_fs_uuid",
                "normal",
                "configfile",
                "echo",
                "serial",
                "terminal",
                "halt",
                "test",
            ],
        );
        let boot = std::fs::read("/usr/lib/grub/i386-pc/boot.img").unwrap();
        install(&disk, &layout, 0, &boot, &core).unwrap();
        disk
    }

    /// Kills QEMU however the test ends.
    struct Vm(Child);

    impl Drop for Vm {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// Boots `disk` (SeaBIOS, or OVMF with a private variable store when `uefi`) until every
    /// marker is on the serial console; the console text so far otherwise.
    fn boot(dir: &Path, disk: &Path, uefi: bool, marks: &[&str]) -> Result<String, String> {
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args([
            "-accel", "tcg", "-m", "256", "-display", "none", "-nic", "none",
        ])
        .args(["-serial", "stdio", "-monitor", "none", "-no-reboot"])
        .arg("-drive")
        .arg(format!("file={},format=raw", disk.display()));
        if uefi {
            let vars = dir.join("OVMF_VARS.fd");
            std::fs::copy(OVMF_VARS, &vars).expect("OVMF installed?");
            cmd.arg("-drive")
                .arg(format!(
                    "if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"
                ))
                .arg("-drive")
                .arg(format!(
                    "if=pflash,format=raw,unit=1,file={}",
                    vars.display()
                ));
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut vm = Vm(cmd.spawn().expect("qemu-system-x86 installed?"));
        let mut out = vm.0.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + TIMEOUT;
        let mut console = Vec::new();
        loop {
            let text = String::from_utf8_lossy(&console).into_owned();
            if marks.iter().all(|m| text.contains(m)) {
                return Ok(text);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(chunk) => console.extend(chunk),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(format!("timed out after {TIMEOUT:?}; console:\n{text}"))
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(format!("QEMU exited; console:\n{text}"))
                }
            }
        }
    }

    /// What these tests take from the host: GRUB's tools and modules, QEMU and OVMF.
    fn host_has_grub_and_qemu() -> bool {
        crate::tools::test_requires(&[
            "grub-common",
            "grub-pc-bin",
            "grub-efi-amd64-bin",
            "qemu-system-x86",
            "ovmf",
        ])
    }

    #[test]
    fn host_grub_bios_disk_boots_under_seabios() {
        if !host_has_grub_and_qemu() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let disk = make_disk(dir.path(), false);
        if let Err(e) = boot(dir.path(), &disk, false, &[BIOS_MARK, ROOT_MARK]) {
            panic!("SeaBIOS did not boot GRUB from the BIOS boot partition: {e}");
        }
    }

    #[test]
    fn host_hybrid_disk_boots_under_seabios_and_ovmf() {
        if !host_has_grub_and_qemu() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let disk = make_disk(dir.path(), true);
        // The same disk under both firmwares, one after the other (QEMU locks the file).
        if let Err(e) = boot(dir.path(), &disk, false, &[BIOS_MARK, ROOT_MARK]) {
            panic!("SeaBIOS did not boot the hybrid disk: {e}");
        }
        if let Err(e) = boot(dir.path(), &disk, true, &[EFI_MARK, ROOT_MARK]) {
            panic!("OVMF did not boot the hybrid disk: {e}");
        }
    }

    /// `imgspec boot`'s own path: the firmware picked from the table, then QEMU watched until
    /// the root's grub.cfg speaks.
    #[test]
    fn imgspec_boot_picks_seabios_for_a_bios_only_disk() {
        let dir = tempfile::tempdir().unwrap();
        let disk = make_disk(dir.path(), false);
        let (firmware, why) = crate::boot::detect_firmware(&disk).unwrap();
        assert_eq!(firmware, crate::boot::Firmware::Bios, "{why}");
        let o = crate::boot::BootOptions {
            accel: crate::boot::Accel::Tcg,
            arch: crate::boot::Arch::X86_64,
            secure_boot: false,
            image: disk,
            firmware,
            timeout: TIMEOUT,
            kernel: None,
            memory_mib: 256,
            expect: ROOT_MARK.into(),
        };
        let mut console = Vec::new();
        if let Err(e) = crate::boot::boot(&o, &mut |l| console.push(l.to_string())) {
            panic!("{e}:\n{}", console.join("\n"));
        }
        assert!(console.iter().any(|l| l.contains(BIOS_MARK)), "{console:?}");
    }

    /// A disk with nothing bootable on it, forced under each firmware: the boot stops at the
    /// firmware's own "nothing to boot" line, not at the timeout (an hour here).
    #[test]
    fn a_disk_with_nothing_to_boot_fails_at_the_firmwares_word() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("empty.raw");
        std::fs::write(&disk, vec![0u8; 4 << 20]).unwrap();
        assert!(matches!(
            crate::boot::detect_firmware(&disk),
            Err(crate::boot::BootError::NotBootable { .. })
        ));
        // As raw data it is refused before QEMU starts; as a qcow2 (a disk image whatever it
        // holds) it reaches the firmware, which must say it found nothing to boot.
        assert!(matches!(
            crate::boot::inspect(&disk, false),
            Err(crate::boot::BootError::NotAnImage { .. })
        ));
        let qcow2 = dir.path().join("empty.qcow2");
        let st = std::process::Command::new("qemu-img")
            .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
            .arg(&disk)
            .arg(&qcow2)
            .status()
            .unwrap();
        assert!(st.success());
        let disk = qcow2;
        for (firmware, name) in [
            (crate::boot::Firmware::Bios, "SeaBIOS"),
            (crate::boot::Firmware::Uefi, "OVMF"),
        ] {
            let o = crate::boot::BootOptions {
                accel: crate::boot::Accel::Tcg,
                arch: crate::boot::Arch::X86_64,
                secure_boot: false,
                image: disk.clone(),
                firmware,
                timeout: Duration::from_secs(3600),
                kernel: None,
                memory_mib: 256,
                expect: "login:".into(),
            };
            match crate::boot::boot(&o, &mut |_| {}) {
                Err(crate::boot::BootError::NothingToBoot { firmware, line, .. }) => {
                    assert_eq!(firmware, name, "{line}");
                }
                other => panic!("{name}: {other:?}"),
            }
        }
    }
}
