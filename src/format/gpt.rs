//! GPT disks written by imgspec itself, from a list of partitions and their content files.
//!
//! `crate::layout` places the partitions (pure arithmetic), and [`write_disk`] turns its
//! [`Layout`] into a sparse raw disk file: protective MBR, primary GPT header at LBA 1
//! with its 128-entry array at LBA 2, the backup array and header in the last 33 sectors, all
//! CRC32s filled in, then each partition's content file (a filesystem image) copied to its
//! offset, skipping holes and all-zero 4 KiB blocks so the disk stays sparse.
//! [`write_disk_around`] does the same in a disk-sized file that already holds one partition's
//! filesystem at its offset (made there), after checking that it holds nothing else.
//! [`write_mbr_boot_code`] patches the MBR boot code area afterwards for BIOS boot.
//!
//! No id here is random: every [`Guid`] written comes from `crate::ids` (derived from the
//! image's seed), so the same inputs give the same bytes. Sectors are 512 bytes.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::{create_sparse, FormatError};
use crate::ids::Guid;
use crate::layout::{
    check_name, partition_area, Layout, LayoutError, MAX_PARTITIONS, NAME_UNITS, SECTOR,
};

const ENTRY_SIZE: usize = 128;
const ARRAY_BYTES: usize = MAX_PARTITIONS * ENTRY_SIZE;
const ARRAY_SECTORS: u64 = ARRAY_BYTES as u64 / SECTOR;
const HEADER_SIZE: usize = 92;
/// First LBA a partition may use: after the MBR, the header and the 32-sector array.
const FIRST_USABLE_LBA: u64 = 2 + ARRAY_SECTORS;
/// Block size of the zero-skipping copy.
const ZERO_BLOCK: usize = 4096;

/// The 16 KiB partition entry array.
fn entry_array(layout: &Layout) -> Vec<u8> {
    let mut array = vec![0u8; ARRAY_BYTES];
    for (p, e) in layout
        .partitions
        .iter()
        .zip(array.chunks_exact_mut(ENTRY_SIZE))
    {
        e[0..16].copy_from_slice(&p.type_guid.to_disk());
        e[16..32].copy_from_slice(&p.guid.to_disk());
        e[32..40].copy_from_slice(&p.first_lba.to_le_bytes());
        e[40..48].copy_from_slice(&p.last_lba.to_le_bytes());
        e[48..56].copy_from_slice(&p.attributes.to_le_bytes());
        for (i, unit) in p.name.encode_utf16().take(NAME_UNITS).enumerate() {
            e[56 + 2 * i..58 + 2 * i].copy_from_slice(&unit.to_le_bytes());
        }
    }
    array
}

/// One GPT header sector.
fn header(
    my_lba: u64,
    alternate_lba: u64,
    entries_lba: u64,
    last_usable: u64,
    disk_guid: Guid,
    array_crc: u32,
) -> [u8; SECTOR as usize] {
    let mut h = [0u8; SECTOR as usize];
    h[0..8].copy_from_slice(b"EFI PART");
    h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
    h[12..16].copy_from_slice(&(HEADER_SIZE as u32).to_le_bytes());
    // 16..20: header CRC32, computed below over the header with this field zero.
    h[24..32].copy_from_slice(&my_lba.to_le_bytes());
    h[32..40].copy_from_slice(&alternate_lba.to_le_bytes());
    h[40..48].copy_from_slice(&FIRST_USABLE_LBA.to_le_bytes());
    h[48..56].copy_from_slice(&last_usable.to_le_bytes());
    h[56..72].copy_from_slice(&disk_guid.to_disk());
    h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
    h[80..84].copy_from_slice(&(MAX_PARTITIONS as u32).to_le_bytes());
    h[84..88].copy_from_slice(&(ENTRY_SIZE as u32).to_le_bytes());
    h[88..92].copy_from_slice(&array_crc.to_le_bytes());
    let crc = crc32fast::hash(&h[..HEADER_SIZE]);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    h
}

/// The protective MBR: no boot code, one 0xEE partition from LBA 1 over the whole disk.
fn protective_mbr(total_sectors: u64) -> [u8; SECTOR as usize] {
    let mut m = [0u8; SECTOR as usize];
    let e = &mut m[446..462];
    e[0] = 0x00; // not active
    e[1..4].copy_from_slice(&[0x00, 0x02, 0x00]); // CHS of LBA 1
    e[4] = 0xEE;
    e[5..8].copy_from_slice(&[0xFF, 0xFF, 0xFF]); // CHS "beyond addressable"
    e[8..12].copy_from_slice(&1u32.to_le_bytes());
    let size = (total_sectors - 1).min(u64::from(u32::MAX)) as u32;
    e[12..16].copy_from_slice(&size.to_le_bytes());
    m[510] = 0x55;
    m[511] = 0xAA;
    m
}

/// Writes the disk `out` (created or truncated, sparse) from `layout`: protective MBR, both GPTs,
/// and `contents[i]` (a file no larger than partition `i`) copied into partition `i`.
pub fn write_disk(
    out: &Path,
    layout: &Layout,
    disk_guid: Guid,
    contents: &[Option<&Path>],
) -> Result<(), FormatError> {
    write_disk_with(out, layout, disk_guid, contents, None).map(|_| ())
}

/// Like [`write_disk`], around partition `in_place`, whose content the existing file `out`
/// already holds at its offset (a filesystem made there): the rest is written as
/// [`write_disk`] would, so the disk has the same bytes. False (and `out` untouched) if `out`
/// is not the disk's size or holds data outside that partition, which a new disk would not.
pub fn write_disk_around(
    out: &Path,
    layout: &Layout,
    disk_guid: Guid,
    contents: &[Option<&Path>],
    in_place: usize,
) -> Result<bool, FormatError> {
    write_disk_with(out, layout, disk_guid, contents, Some(in_place))
}

fn write_disk_with(
    out: &Path,
    layout: &Layout,
    disk_guid: Guid,
    contents: &[Option<&Path>],
    in_place: Option<usize>,
) -> Result<bool, FormatError> {
    let (start, end) = partition_area(layout.disk_size)?;
    if contents.len() != layout.partitions.len() {
        return Err(FormatError::ContentCount {
            expected: layout.partitions.len(),
            got: contents.len(),
        });
    }
    if layout.partitions.len() > MAX_PARTITIONS {
        return Err(LayoutError::TooManyPartitions {
            count: layout.partitions.len(),
            max: MAX_PARTITIONS,
        }
        .into());
    }
    for p in &layout.partitions {
        check_name(&p.name)?;
        let inside = p.offset_bytes >= start
            && p.size_bytes > 0
            && p.offset_bytes
                .checked_add(p.size_bytes)
                .is_some_and(|e| e <= end)
            && p.first_lba == p.offset_bytes / SECTOR
            && p.last_lba == (p.offset_bytes + p.size_bytes) / SECTOR - 1;
        if !inside {
            return Err(LayoutError::DiskSize {
                size: layout.disk_size,
                reason: format!("partition `{}` lies outside the usable area", p.name),
            }
            .into());
        }
    }
    // Check every content file before creating anything.
    let mut sources = Vec::new();
    for (p, c) in layout.partitions.iter().zip(contents) {
        let Some(path) = c else { continue };
        let f = File::open(path).map_err(FormatError::io("open", *path))?;
        let size = f
            .metadata()
            .map_err(FormatError::io("read the size of", *path))?
            .len();
        if size > p.size_bytes {
            return Err(FormatError::ContentTooLarge {
                path: path.to_path_buf(),
                partition: p.name.clone(),
                size,
                capacity: p.size_bytes,
            });
        }
        sources.push((f, *path, p.offset_bytes, size));
    }

    let total = layout.disk_size / SECTOR;
    let array = entry_array(layout);
    let array_crc = crc32fast::hash(&array);
    let last_usable = total - FIRST_USABLE_LBA;
    let backup_array_lba = total - 1 - ARRAY_SECTORS;
    let primary = header(1, total - 1, 2, last_usable, disk_guid, array_crc);
    let backup = header(
        total - 1,
        1,
        backup_array_lba,
        last_usable,
        disk_guid,
        array_crc,
    );

    let disk = match in_place {
        None => create_sparse(out, layout.disk_size)?,
        Some(n) => {
            let p = layout
                .partitions
                .get(n)
                .filter(|_| contents.get(n).is_some_and(|c| c.is_none()))
                .ok_or(FormatError::ContentCount {
                    expected: layout.partitions.len(),
                    got: contents.len(),
                })?;
            // A file that cannot be opened or read is not used, as one with data outside.
            let Ok(f) = std::fs::OpenOptions::new().read(true).write(true).open(out) else {
                return Ok(false);
            };
            let Ok(len) = f.metadata().map(|m| m.len()) else {
                return Ok(false);
            };
            let range = (p.offset_bytes, p.offset_bytes + p.size_bytes);
            let outside = data_ranges(&f, len)
                .into_iter()
                .any(|(a, b)| a < range.0 || b > range.1);
            if len != layout.disk_size || outside {
                return Ok(false);
            }
            f
        }
    };
    let write = |bytes: &[u8], lba: u64| {
        disk.write_all_at(bytes, lba * SECTOR)
            .map_err(FormatError::io("write the partition table of", out))
    };
    write(&protective_mbr(total), 0)?;
    write(&primary, 1)?;
    write(&array, 2)?;
    write(&array, backup_array_lba)?;
    write(&backup, total - 1)?;
    for (src, path, offset, size) in sources {
        copy_sparse(&src, path, size, &disk, out, offset)?;
    }
    Ok(true)
}

/// Puts `code` (at most 440 bytes, zero-padded) into the MBR boot code area of the disk `out`,
/// leaving the disk signature, the partition table and the 0x55AA signature untouched.
pub fn write_mbr_boot_code(out: &Path, code: &[u8]) -> Result<(), FormatError> {
    if code.len() > 440 {
        return Err(FormatError::BootCodeTooLarge { len: code.len() });
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(out)
        .map_err(FormatError::io("open", out))?;
    let mut sig = [0u8; 2];
    match f.read_exact_at(&mut sig, 510) {
        Ok(()) if sig == [0x55, 0xAA] => {}
        Ok(()) => {
            return Err(FormatError::NotAnMbr {
                path: out.to_path_buf(),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(FormatError::NotAnMbr {
                path: out.to_path_buf(),
            })
        }
        Err(e) => return Err(FormatError::io("read the MBR of", out)(e)),
    }
    let mut area = [0u8; 440];
    area[..code.len()].copy_from_slice(code);
    f.write_all_at(&area, 0)
        .map_err(FormatError::io("write the MBR boot code of", out))
}

/// The byte ranges of `f` (of length `len`) that may hold data, from `SEEK_DATA`/`SEEK_HOLE`;
/// the whole file when the filesystem cannot tell.
fn data_ranges(f: &File, len: u64) -> Vec<(u64, u64)> {
    use std::os::fd::AsRawFd;
    let fd = f.as_raw_fd();
    let whole = vec![(0, len)];
    let mut ranges = Vec::new();
    let mut pos: u64 = 0;
    while pos < len {
        let Ok(at) = libc::off_t::try_from(pos) else {
            return whole;
        };
        // SAFETY: lseek on a file descriptor we own; it only moves the file offset.
        let data = unsafe { libc::lseek(fd, at, libc::SEEK_DATA) };
        if data < 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ENXIO) {
                break; // no data after `pos`
            }
            return whole;
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        if hole < 0 {
            return whole;
        }
        let (data, hole) = (data as u64, (hole as u64).min(len));
        if hole <= data {
            break;
        }
        ranges.push((data, hole));
        pos = hole;
    }
    ranges
}

fn is_zero(block: &[u8]) -> bool {
    let mut chunks = block.chunks_exact(16);
    chunks.all(|c| u128::from_ne_bytes(c.try_into().unwrap()) == 0)
        && chunks.remainder().iter().all(|&b| b == 0)
}

/// Copies `size` bytes of `src` to `dst` at `offset`, writing only the 4 KiB blocks that are not
/// all zero (`dst` is new, or holes where it is written: its unwritten bytes read as zero and
/// stay holes).
fn copy_sparse(
    src: &File,
    src_path: &Path,
    size: u64,
    dst: &File,
    dst_path: &Path,
    offset: u64,
) -> Result<(), FormatError> {
    const BUF: usize = 1 << 20;
    let mut buf = vec![0u8; BUF];
    let write_at = |bytes: &[u8], at: u64| {
        dst.write_all_at(bytes, offset + at)
            .map_err(FormatError::io("write", dst_path))
    };
    for (mut pos, end) in data_ranges(src, size) {
        while pos < end {
            let n = (end - pos).min(BUF as u64) as usize;
            src.read_exact_at(&mut buf[..n], pos)
                .map_err(FormatError::io("read", src_path))?;
            // Write each run of non-zero blocks in one call.
            let mut run: Option<usize> = None;
            let mut i = 0;
            while i < n {
                let j = (i + ZERO_BLOCK).min(n);
                if !is_zero(&buf[i..j]) {
                    run.get_or_insert(i);
                } else if let Some(s) = run.take() {
                    write_at(&buf[s..i], pos + s as u64)?;
                }
                i = j;
            }
            if let Some(s) = run {
                write_at(&buf[s..n], pos + s as u64)?;
            }
            pos += n as u64;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{derive_guid, BIOS_BOOT, ESP, ROOT_X86_64};
    use crate::layout::tests::{part, SEED};
    use crate::layout::{layout, MIB};
    use crate::runner::{Cmd, HostRunner, Runner};

    /// Writes a 64 MiB disk with an 8 MiB "esp" and a rest-of-disk "root", both with content.
    fn write_sample(dir: &Path, out: &Path) -> Layout {
        let esp = dir.join("esp.img");
        let root = dir.join("root.img");
        let mut esp_bytes = vec![0u8; 3 * MIB as usize];
        esp_bytes[..4].copy_from_slice(b"ESP!");
        esp_bytes[2 * MIB as usize + 5] = 0x42;
        std::fs::write(&esp, &esp_bytes).unwrap();
        let f = File::create(&root).unwrap();
        f.set_len(20 * MIB).unwrap();
        f.write_all_at(b"ROOT", 10 * MIB).unwrap();
        let l = layout(
            64 * MIB,
            &[
                part("esp", ESP, Some(8 * MIB)),
                part("root", ROOT_X86_64, None),
            ],
        )
        .unwrap();
        write_disk(
            out,
            &l,
            derive_guid(&SEED, "disk"),
            &[Some(&esp), Some(&root)],
        )
        .unwrap();
        l
    }

    #[test]
    fn a_disk_written_around_a_filesystem_in_place_is_the_same_as_one_written_whole() {
        let dir = tempfile::tempdir().unwrap();
        let whole = dir.path().join("whole.raw");
        let l = write_sample(dir.path(), &whole);
        let esp = dir.path().join("esp.img");
        let guid = derive_guid(&SEED, "disk");
        // The root's content made in place in a disk-sized file (as `mkfs -E offset=` does).
        let root = &l.partitions[1];
        let placed = dir.path().join("placed.raw");
        let f = File::create(&placed).unwrap();
        f.set_len(l.disk_size).unwrap();
        f.write_all_at(b"ROOT", root.offset_bytes + 10 * MIB)
            .unwrap();
        drop(f);
        assert!(write_disk_around(&placed, &l, guid, &[Some(&esp), None], 1).unwrap());
        assert!(std::fs::read(&placed).unwrap() == std::fs::read(&whole).unwrap());

        // A file with data outside that partition, or of another size, is not used.
        let other = dir.path().join("other.raw");
        let f = File::create(&other).unwrap();
        f.set_len(l.disk_size).unwrap();
        f.write_all_at(b"x", 40 * 512).unwrap();
        drop(f);
        let before = std::fs::read(&other).unwrap();
        assert!(!write_disk_around(&other, &l, guid, &[Some(&esp), None], 1).unwrap());
        assert!(std::fs::read(&other).unwrap() == before, "left untouched");
        let short = dir.path().join("short.raw");
        File::create(&short)
            .unwrap()
            .set_len(l.disk_size - MIB)
            .unwrap();
        assert!(!write_disk_around(&short, &l, guid, &[Some(&esp), None], 1).unwrap());
        // The partition in place must not also have a content file.
        assert!(write_disk_around(&placed, &l, guid, &[Some(&esp), Some(&esp)], 1).is_err());
    }

    #[test]
    fn written_disk_has_valid_headers_and_content() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("disk.raw");
        let l = write_sample(dir.path(), &out);
        let bytes = std::fs::read(&out).unwrap();
        assert_eq!(bytes.len() as u64, 64 * MIB);
        let total = 64 * MIB / SECTOR;
        assert_eq!(&bytes[510..512], &[0x55, 0xAA]);
        assert_eq!(bytes[446 + 4], 0xEE);
        for (hdr_lba, array_lba) in [(1, 2), (total - 1, total - 33)] {
            let h = &bytes[(hdr_lba * SECTOR) as usize..][..512];
            assert_eq!(&h[..8], b"EFI PART");
            let mut copy = h[..92].to_vec();
            copy[16..20].fill(0);
            assert_eq!(
                crc32fast::hash(&copy).to_le_bytes(),
                h[16..20],
                "header CRC at LBA {hdr_lba}"
            );
            assert_eq!(u64::from_le_bytes(h[72..80].try_into().unwrap()), array_lba);
            let array = &bytes[(array_lba * SECTOR) as usize..][..ARRAY_BYTES];
            assert_eq!(crc32fast::hash(array).to_le_bytes(), h[88..92]);
            assert_eq!(&array[0..16], &ESP.to_disk());
            // "esp" in UTF-16LE.
            assert_eq!(&array[56..62], &[b'e', 0, b's', 0, b'p', 0]);
        }
        let esp = l.partitions[0].offset_bytes as usize;
        assert_eq!(&bytes[esp..esp + 4], b"ESP!");
        assert_eq!(bytes[esp + 2 * MIB as usize + 5], 0x42);
        let root = l.partitions[1].offset_bytes as usize;
        assert_eq!(&bytes[root + 10 * MIB as usize..][..4], b"ROOT");
    }

    #[test]
    fn written_disk_is_reproducible_and_sparse() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.raw"), dir.path().join("b.raw"));
        write_sample(dir.path(), &a);
        write_sample(dir.path(), &b);
        assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap());
        // 64 MiB apparent; only the tables and a few content blocks allocated.
        let blocks = std::fs::metadata(&a).unwrap().blocks();
        assert!(
            blocks * 512 < 512 * 1024,
            "{} bytes allocated",
            blocks * 512
        );
    }

    #[test]
    fn content_larger_than_partition_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.img");
        File::create(&big).unwrap().set_len(2 * MIB + 1).unwrap();
        let l = layout(16 * MIB, &[part("esp", ESP, Some(2 * MIB))]).unwrap();
        let out = dir.path().join("disk.raw");
        let err = write_disk(&out, &l, Guid::NIL, &[Some(&big)]).unwrap_err();
        assert!(
            matches!(&err, FormatError::ContentTooLarge { path, .. } if path == &big),
            "{err}"
        );
        assert!(err.to_string().contains("by 1 bytes"), "{err}");
        assert!(!out.exists(), "nothing written on error");
        assert!(matches!(
            write_disk(&out, &l, Guid::NIL, &[]),
            Err(FormatError::ContentCount { .. })
        ));
    }

    #[test]
    fn protective_mbr_is_capped() {
        let small = protective_mbr(131_072);
        assert_eq!(
            &small[446 + 8..446 + 16],
            &[1, 0, 0, 0, 0xFF, 0xFF, 0x01, 0x00]
        );
        let huge = protective_mbr(1 << 40);
        assert_eq!(&huge[446 + 12..446 + 16], &[0xFF; 4]);
        assert_eq!(&huge[510..], &[0x55, 0xAA]);
    }

    #[test]
    fn mbr_boot_code_keeps_the_table() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("disk.raw");
        let l = layout(8 * MIB, &[part("bios", BIOS_BOOT, Some(MIB))]).unwrap();
        write_disk(&out, &l, Guid::NIL, &[None]).unwrap();
        let before = std::fs::read(&out).unwrap();
        write_mbr_boot_code(&out, &[0xEB; 440]).unwrap();
        let after = std::fs::read(&out).unwrap();
        assert_eq!(&after[..440], &[0xEB; 440][..]);
        assert_eq!(&after[440..], &before[440..]);
        write_mbr_boot_code(&out, &[0x90; 10]).unwrap();
        let again = std::fs::read(&out).unwrap();
        assert_eq!(&again[..10], &[0x90; 10]);
        assert!(again[10..440].iter().all(|&b| b == 0));
        assert!(matches!(
            write_mbr_boot_code(&out, &[0; 441]),
            Err(FormatError::BootCodeTooLarge { len: 441 })
        ));
        let not_disk = dir.path().join("zero");
        File::create(&not_disk).unwrap().set_len(4096).unwrap();
        assert!(matches!(
            write_mbr_boot_code(&not_disk, &[0; 4]),
            Err(FormatError::NotAnMbr { .. })
        ));
    }

    fn host(dir: &Path, program: &str, args: &[&str]) -> String {
        let log = dir.join("tools.log");
        let out = HostRunner
            .output(&Cmd::new(program).args(args), &log)
            .unwrap_or_else(|e| panic!("{program}: {e} (is it installed?)"));
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn host_tools_accept_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("disk.raw");
        let l = write_sample(dir.path(), &out);
        let disk = out.to_str().unwrap();

        let dump = host(dir.path(), "sfdisk", &["--dump", disk]);
        assert!(dump.contains("label: gpt"), "{dump}");
        let disk_guid = derive_guid(&SEED, "disk").to_string().to_uppercase();
        assert!(dump.contains(&format!("label-id: {disk_guid}")), "{dump}");
        assert!(dump.contains("first-lba: 34"), "{dump}");
        assert!(
            dump.contains(&format!("last-lba: {}", 64 * MIB / SECTOR - 34)),
            "{dump}"
        );
        let lines: Vec<&str> = dump.lines().filter(|l| l.contains("start=")).collect();
        assert_eq!(lines.len(), 2, "{dump}");
        for (line, p) in lines.iter().zip(&l.partitions) {
            let fields: Vec<String> = line
                .split_once(':')
                .unwrap()
                .1
                .split(',')
                .map(|f| f.split_whitespace().collect::<Vec<_>>().join(""))
                .collect();
            let want = [
                format!("start={}", p.first_lba),
                format!("size={}", p.size_bytes / SECTOR),
                format!("type={}", p.type_guid.to_string().to_uppercase()),
                format!("uuid={}", p.guid.to_string().to_uppercase()),
                format!("name=\"{}\"", p.name),
            ];
            assert_eq!(fields, want, "{line}");
        }

        let verify = host(dir.path(), "sgdisk", &["-v", disk]);
        assert!(verify.contains("No problems found"), "{verify}");
    }
}
