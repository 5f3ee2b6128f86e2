//! VMware, VirtualBox and Hyper-V disks (`vmdk`, `vdi`, `vhdx`, `vhd`) converted by `qemu-img`
//! from a raw disk, made reproducible.
//!
//! [`convert`] runs `qemu-img convert -f raw -O FORMAT -o OPTIONS -S 4k` with every creation
//! option pinned ([`VDisk::options`]), in order (no `-W`). qemu-img then writes a random id
//! or the clock into each of these formats; measured with qemu-img 10.0.2, two conversions of
//! one raw disk differ in exactly these fields, which [`convert`] then sets from a `seed` (the
//! raw disk's digest: the same disk gets the same ids, another disk other ids) and the image
//! epoch:
//!
//! - vmdk (monolithicSparse): the descriptor's `CID=` (a random 32-bit number, printed without
//!   leading zeros: always written here as 8 hex digits). The descriptor also
//!   names the file itself (`RW … SPARSE "NAME.vmdk"`), so the output's name is part of it.
//! - vdi: the image and last-snapshot UUIDs of the header (0x188, 0x198).
//! - vhdx: both headers' sequence numbers (random at creation: 1 and 2 here, the current one
//!   staying the current one), file-write and data-write GUIDs and CRC-32C, the GUID and
//!   CRC-32C, the log (qemu logs its metadata updates with random log GUIDs; the headers' log
//!   GUID is zero, so the log is empty and is zeroed here), and the virtual disk id
//!   (`Page83Data` metadata item).
//! - vhd (`vpc`, dynamic, `force_size=on` so the size is the raw disk's, not a CHS rounding):
//!   both copies of the footer's timestamp (seconds since 2000: the image epoch), UUID and
//!   checksum.
//!
//! A file whose fields are not where this module expects them (another qemu-img) fails the
//! conversion with [`FormatError::VDisk`] rather than giving bytes that differ between builds.

use std::path::Path;

use super::FormatError;
use crate::ids::Guid;
use crate::runner::{Cmd, Runner};

/// A disk format qemu-img writes and this module makes reproducible.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VDisk {
    Vmdk,
    Vdi,
    Vhdx,
    Vhd,
}

impl VDisk {
    /// qemu-img's name of the format.
    pub fn qemu_name(self) -> &'static str {
        match self {
            VDisk::Vmdk => "vmdk",
            VDisk::Vdi => "vdi",
            VDisk::Vhdx => "vhdx",
            VDisk::Vhd => "vpc",
        }
    }

    /// The pinned `-o` creation options.
    pub fn options(self) -> &'static str {
        match self {
            VDisk::Vmdk => {
                "subformat=monolithicSparse,adapter_type=ide,hwversion=4,toolsversion=2147483647,\
                 compat6=off,zeroed_grain=off,preallocation=off"
            }
            VDisk::Vdi => "static=off,preallocation=off",
            VDisk::Vhdx => {
                "subformat=dynamic,block_size=1048576,log_size=1048576,block_state_zero=on,\
                 preallocation=off"
            }
            VDisk::Vhd => "subformat=dynamic,force_size=on,preallocation=off",
        }
    }
}

fn convert_cmd(kind: VDisk, raw: &Path, out: &Path) -> Cmd {
    Cmd::new("qemu-img")
        .args(["convert", "-q", "-f", "raw", "-O", kind.qemu_name()])
        .args(["-o", kind.options(), "-S", "4k"])
        .arg(raw)
        .arg(out)
}

/// Converts the raw disk `raw` into `out` (replaced if it exists) and sets the identifiers and
/// timestamps qemu-img put into it from `seed` and `epoch` (SOURCE_DATE_EPOCH).
pub fn convert(
    runner: &dyn Runner,
    log: &Path,
    raw: &Path,
    out: &Path,
    kind: VDisk,
    seed: &[u8; 32],
    epoch: i64,
) -> Result<(), FormatError> {
    if !raw.is_file() {
        return Err(FormatError::BadSource {
            path: raw.to_path_buf(),
        });
    }
    let fail = |e| {
        let _ = std::fs::remove_file(out);
        e
    };
    runner
        .run(&convert_cmd(kind, raw, out), log)
        .map_err(|source| FormatError::Tool {
            tool: "qemu-img",
            out: out.to_path_buf(),
            source,
        })
        .map_err(fail)?;
    fix_ids(out, kind, seed, epoch).map_err(fail)
}

/// The identifier `what` of the disk with `seed`: a version-4 (random-looking) GUID derived
/// as the disk's own GUIDs are ([`crate::ids::derive_guid`]), in the mixed-endian order these formats
/// store GUIDs in.
fn derived_id(seed: &[u8; 32], what: &str) -> [u8; 16] {
    crate::ids::derive_guid(seed, &format!("vdisk:{what}")).to_disk()
}

/// A file opened for reading and patching fields in place.
struct Patch<'a> {
    path: &'a Path,
    file: std::fs::File,
    len: u64,
}

impl<'a> Patch<'a> {
    fn open(path: &'a Path) -> Result<Self, FormatError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(FormatError::io("open", path))?;
        let len = file
            .metadata()
            .map_err(FormatError::io("read the size of", path))?
            .len();
        Ok(Patch { path, file, len })
    }

    fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, FormatError> {
        use std::os::unix::fs::FileExt;
        if offset + len as u64 > self.len {
            return Err(self.bad(format!("{len} bytes at {offset:#x} are past its end")));
        }
        let mut buf = vec![0u8; len];
        self.file
            .read_exact_at(&mut buf, offset)
            .map_err(FormatError::io("read", self.path))?;
        Ok(buf)
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), FormatError> {
        use std::os::unix::fs::FileExt;
        self.file
            .write_all_at(data, offset)
            .map_err(FormatError::io("write", self.path))
    }

    fn bad(&self, reason: String) -> FormatError {
        FormatError::VDisk {
            path: self.path.to_path_buf(),
            reason,
        }
    }

    fn expect(&self, offset: u64, magic: &[u8], what: &str) -> Result<(), FormatError> {
        if self.read(offset, magic.len())? != magic {
            return Err(self.bad(format!("no {what} at {offset:#x}")));
        }
        Ok(())
    }
}

fn fix_ids(path: &Path, kind: VDisk, seed: &[u8; 32], epoch: i64) -> Result<(), FormatError> {
    let p = Patch::open(path)?;
    match kind {
        VDisk::Vmdk => fix_vmdk(&p, seed)?,
        VDisk::Vdi => fix_vdi(&p, seed)?,
        VDisk::Vhdx => fix_vhdx(&p, seed)?,
        VDisk::Vhd => fix_vhd(&p, seed, epoch)?,
    }
    p.file.sync_all().map_err(FormatError::io("sync", p.path))
}

/// The embedded descriptor's `CID=xxxxxxxx`.
fn fix_vmdk(p: &Patch, seed: &[u8; 32]) -> Result<(), FormatError> {
    p.expect(0, b"KDMV", "VMDK sparse header")?;
    let header = p.read(0, 512)?;
    let u64_at = |o: usize| u64::from_le_bytes(header[o..o + 8].try_into().unwrap());
    let (desc_sector, desc_sectors) = (u64_at(28), u64_at(36));
    if desc_sector == 0 || desc_sectors == 0 || desc_sectors > 2048 {
        return Err(p.bad("no embedded descriptor".into()));
    }
    let base = desc_sector * 512;
    let desc = p.read(base, (desc_sectors * 512) as usize)?;
    let text_len = desc.iter().position(|&b| b == 0).unwrap_or(desc.len());
    let at = desc[..text_len]
        .windows(5)
        .position(|w| w == b"\nCID=")
        .ok_or_else(|| p.bad("no CID= in the descriptor".into()))?
        + 5;
    // qemu prints the CID without leading zeros: 1 to 8 hex digits, then the line's end.
    let digits = desc[at..text_len]
        .iter()
        .take_while(|b| b.is_ascii_hexdigit())
        .count();
    if !(1..=8).contains(&digits) || desc.get(at + digits) != Some(&b'\n') {
        return Err(p.bad("the descriptor's CID is not a 32-bit hex number".into()));
    }
    // A CID of ffffffff means "no parent": never derive that one.
    let cid = format!(
        "{:08x}",
        crate::ids::derive_u32(seed, "vdisk:vmdk cid").min(0xffff_fffe)
    );
    let mut text = desc[..at].to_vec();
    text.extend_from_slice(cid.as_bytes());
    text.extend_from_slice(&desc[at + digits..text_len]);
    if text.len() > desc.len() {
        return Err(p.bad("the descriptor has no room for the CID".into()));
    }
    text.resize(desc.len(), 0);
    p.write(base, &text)
}

/// The header's image and last-snapshot UUIDs.
fn fix_vdi(p: &Patch, seed: &[u8; 32]) -> Result<(), FormatError> {
    p.expect(0x40, &0xbeda_107fu32.to_le_bytes(), "VDI signature")?;
    // uuid_link and uuid_parent stay zero (no snapshots, no parent).
    if p.read(0x1a8, 32)?.iter().any(|&b| b != 0) {
        return Err(p.bad("a VDI with a link or parent UUID".into()));
    }
    p.write(0x188, &derived_id(seed, "vdi image"))?;
    p.write(0x198, &derived_id(seed, "vdi last snapshot"))
}

/// CRC-32C (Castagnoli), as VHDX checksums its headers, region tables and log entries.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Sets the little-endian CRC-32C at `at` over `data` (with that field zero).
fn set_crc32c(data: &mut [u8], at: usize) {
    data[at..at + 4].fill(0);
    let crc = crc32c(data);
    data[at..at + 4].copy_from_slice(&crc.to_le_bytes());
}

/// The VHDX metadata region's GUID in the region table, as stored.
fn vhdx_metadata_region() -> [u8; 16] {
    Guid::from_fields(
        0x8b7c_a206,
        0x4790,
        0x4b9a,
        [0xb8, 0xfe, 0x57, 0x5f, 0x05, 0x0f, 0x88, 0x6e],
    )
    .to_disk()
}

/// The `Page83Data` (virtual disk id) metadata item's GUID, as stored.
fn vhdx_page83() -> [u8; 16] {
    Guid::from_fields(
        0xbeca_12ab,
        0xb2e6,
        0x4523,
        [0x93, 0xef, 0xc3, 0x09, 0xe0, 0x00, 0xc7, 0x46],
    )
    .to_disk()
}

fn fix_vhdx(p: &Patch, seed: &[u8; 32]) -> Result<(), FormatError> {
    p.expect(0, b"vhdxfile", "VHDX file identifier")?;
    let file_write = derived_id(seed, "vhdx file write");
    let data_write = derived_id(seed, "vhdx data write");
    let mut headers = Vec::new();
    for at in [0x1_0000u64, 0x2_0000] {
        p.expect(at, b"head", "VHDX header")?;
        let h = p.read(at, 4096)?;
        if h[48..64].iter().any(|&b| b != 0) {
            return Err(p.bad(format!("the header at {at:#x} has an active log")));
        }
        headers.push((at, h));
    }
    // qemu starts the sequence numbers at a random value; the current header is the one with
    // the higher number: keep which one that is, from 1 and 2.
    let seq = |h: &[u8]| u64::from_le_bytes(h[8..16].try_into().unwrap());
    let first_is_current = seq(&headers[0].1) > seq(&headers[1].1);
    let mut log = None;
    for (i, (at, mut h)) in headers.into_iter().enumerate() {
        let current = (i == 0) == first_is_current;
        h[8..16].copy_from_slice(&(if current { 2u64 } else { 1 }).to_le_bytes());
        h[16..32].copy_from_slice(&file_write);
        h[32..48].copy_from_slice(&data_write);
        set_crc32c(&mut h, 4);
        p.write(at, &h)?;
        let log_length = u64::from(u32::from_le_bytes(h[68..72].try_into().unwrap()));
        log = Some((
            u64::from_le_bytes(h[72..80].try_into().unwrap()),
            log_length,
        ));
    }
    // The log entries qemu wrote while converting (metadata updates, each with a random log
    // GUID, wrapping round the circular log) are stale: both headers' log GUID is zero, so the
    // log is empty and never replayed. An empty log holds nothing: zero it.
    if let Some((start, length)) = log {
        if start < 0x10_0000 || length == 0 || length % (1 << 20) != 0 || start + length > p.len {
            return Err(p.bad(format!("a log of {length} bytes at {start:#x}")));
        }
        let zeros = vec![0u8; 1 << 20];
        let mut at = start;
        while at < start + length {
            p.write(at, &zeros)?;
            at += 1 << 20;
        }
    }
    // The virtual disk id: the Page83Data item of the metadata region.
    p.expect(0x3_0000, b"regi", "VHDX region table")?;
    let table = p.read(0x3_0000, 64 * 1024)?;
    let count = u32::from_le_bytes(table[8..12].try_into().unwrap()) as usize;
    let meta = (0..count.min(2047))
        .map(|i| &table[16 + 32 * i..16 + 32 * (i + 1)])
        .find(|e| e[..16] == vhdx_metadata_region())
        .map(|e| u64::from_le_bytes(e[16..24].try_into().unwrap()))
        .ok_or_else(|| p.bad("no metadata region".into()))?;
    p.expect(meta, b"metadata", "VHDX metadata table")?;
    let mt = p.read(meta, 64 * 1024)?;
    let items = u16::from_le_bytes(mt[10..12].try_into().unwrap()) as usize;
    let page83 = (0..items.min(2047))
        .map(|i| &mt[32 + 32 * i..32 + 32 * (i + 1)])
        .find(|e| e[..16] == vhdx_page83())
        .ok_or_else(|| p.bad("no Page83Data metadata item".into()))?;
    let offset = u32::from_le_bytes(page83[16..20].try_into().unwrap()) as u64;
    let length = u32::from_le_bytes(page83[20..24].try_into().unwrap());
    if length != 16 {
        return Err(p.bad(format!("a Page83Data item of {length} bytes")));
    }
    p.write(meta + offset, &derived_id(seed, "vhdx virtual disk id"))
}

/// Seconds from the Unix epoch to 2000-01-01, where VHD timestamps start.
const VHD_EPOCH: i64 = 946_684_800;

/// Both copies of the footer (the first sector and the last one of a dynamic VHD).
fn fix_vhd(p: &Patch, seed: &[u8; 32], epoch: i64) -> Result<(), FormatError> {
    if p.len < 1024 {
        return Err(p.bad("shorter than two footers".into()));
    }
    let uuid = derived_id(seed, "vhd unique id");
    let stamp = u32::try_from((epoch - VHD_EPOCH).max(0)).unwrap_or(u32::MAX);
    for at in [0, p.len - 512] {
        p.expect(at, b"conectix", "VHD footer")?;
        let mut f = p.read(at, 512)?;
        f[24..28].copy_from_slice(&stamp.to_be_bytes());
        f[68..84].copy_from_slice(&uuid);
        f[64..68].fill(0);
        let sum: u32 = f.iter().map(|&b| u32::from(b)).sum();
        f[64..68].copy_from_slice(&(!sum).to_be_bytes());
        p.write(at, &f)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::HostRunner;

    #[test]
    fn crc32c_matches_the_known_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn command_lines_are_pinned() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("disk.raw");
        std::fs::write(&raw, [0u8; 512]).unwrap();
        let out = dir.path().join("out");
        let lines: Vec<String> = [VDisk::Vmdk, VDisk::Vdi, VDisk::Vhdx, VDisk::Vhd]
            .into_iter()
            .map(|kind| convert_cmd(kind, &raw, &out).display())
            .collect();
        let (r, o) = (raw.display(), out.display());
        assert_eq!(
            lines,
            [
                format!(
                    "qemu-img convert -q -f raw -O vmdk -o subformat=monolithicSparse,\
                     adapter_type=ide,hwversion=4,toolsversion=2147483647,compat6=off,\
                     zeroed_grain=off,preallocation=off -S 4k {r} {o}"
                ),
                format!(
                    "qemu-img convert -q -f raw -O vdi -o static=off,preallocation=off -S 4k {r} {o}"
                ),
                format!(
                    "qemu-img convert -q -f raw -O vhdx -o subformat=dynamic,block_size=1048576,\
                     log_size=1048576,block_state_zero=on,preallocation=off -S 4k {r} {o}"
                ),
                format!(
                    "qemu-img convert -q -f raw -O vpc -o subformat=dynamic,force_size=on,\
                     preallocation=off -S 4k {r} {o}"
                ),
            ]
        );
    }

    #[test]
    fn a_file_that_is_not_what_qemu_img_writes_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x");
        std::fs::write(&f, vec![0u8; 1 << 20]).unwrap();
        for kind in [VDisk::Vmdk, VDisk::Vdi, VDisk::Vhdx, VDisk::Vhd] {
            let e = fix_ids(&f, kind, &[1; 32], 0).unwrap_err();
            assert!(matches!(e, FormatError::VDisk { .. }), "{kind:?}: {e}");
        }
        std::fs::write(&f, b"KDMV").unwrap();
        assert!(matches!(
            fix_ids(&f, VDisk::Vmdk, &[1; 32], 0),
            Err(FormatError::VDisk { .. })
        ));
    }

    /// A raw disk of 16 MiB with data in two places.
    fn raw_disk(dir: &Path) -> std::path::PathBuf {
        use std::os::unix::fs::FileExt;
        let raw = dir.join("disk.raw");
        let f = std::fs::File::create(&raw).unwrap();
        f.set_len(16 << 20).unwrap();
        f.write_all_at(&[0xA5; 70_000], 1 << 20).unwrap();
        let text: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
        f.write_all_at(&text, 9 << 20).unwrap();
        raw
    }

    /// Two conversions, the second with the clock three days later (libfaketime), give the same
    /// bytes; the disk reads back as the raw one; another seed gives other ids.
    #[test]
    fn host_conversions_at_different_times_are_identical() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let raw = raw_disk(dir.path());
        for kind in [VDisk::Vmdk, VDisk::Vdi, VDisk::Vhdx, VDisk::Vhd] {
            let ext = kind.qemu_name();
            let (da, db) = (dir.path().join("a"), dir.path().join("b"));
            std::fs::create_dir_all(&da).unwrap();
            std::fs::create_dir_all(&db).unwrap();
            let (a, b) = (da.join(format!("d.{ext}")), db.join(format!("d.{ext}")));
            convert(&HostRunner, &log, &raw, &a, kind, &[7; 32], 1_700_000_000).unwrap();
            // The same conversion three days later by the clock qemu-img sees.
            let later = std::process::Command::new("faketime")
                .args([
                    "-f", "+3d", "qemu-img", "convert", "-q", "-f", "raw", "-O", ext,
                ])
                .args(["-o", kind.options(), "-S", "4k"])
                .arg(&raw)
                .arg(&b)
                .status()
                .expect("faketime (apt-get install faketime)");
            assert!(later.success());
            let before = std::fs::read(&b).unwrap();
            assert_ne!(
                std::fs::read(&a).unwrap(),
                before,
                "{kind:?}: qemu-img alone is reproducible now: drop the fix-up"
            );
            fix_ids(&b, kind, &[7; 32], 1_700_000_000).unwrap();
            let (x, y) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
            let differ: Vec<String> = (0..x.len().min(y.len()))
                .filter(|&i| x[i] != y[i])
                .take(40)
                .map(|i| format!("{i:#x}"))
                .collect();
            assert!(x == y, "{kind:?}: two conversions differ at {differ:?}");
            // qemu-img checks what it can (it has no check for vpc), and reads the size back.
            if kind != VDisk::Vhd {
                let check = std::process::Command::new("qemu-img")
                    .args(["check", "-q", "-f", ext])
                    .arg(&a)
                    .output()
                    .unwrap();
                assert!(
                    check.status.success(),
                    "{kind:?}: qemu-img check: {}",
                    String::from_utf8_lossy(&check.stderr)
                );
            }
            let info = std::process::Command::new("qemu-img")
                .args(["info", "--output=json"])
                .arg(&a)
                .output()
                .unwrap();
            let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
            assert_eq!(info["format"], ext, "{kind:?}: {info}");
            assert_eq!(info["virtual-size"], 16 << 20, "{kind:?}: {info}");
            let cmp = std::process::Command::new("qemu-img")
                .args(["compare", "-f", "raw", "-F", ext])
                .arg(&raw)
                .arg(&a)
                .output()
                .unwrap();
            assert!(
                String::from_utf8_lossy(&cmp.stdout).contains("Images are identical"),
                "{kind:?}: {}",
                String::from_utf8_lossy(&cmp.stdout)
            );
            let dc = dir.path().join("c");
            std::fs::create_dir_all(&dc).unwrap();
            let other = dc.join(format!("d.{ext}"));
            convert(
                &HostRunner,
                &log,
                &raw,
                &other,
                kind,
                &[8; 32],
                1_700_000_000,
            )
            .unwrap();
            let (x, y) = (std::fs::read(&a).unwrap(), std::fs::read(&other).unwrap());
            assert_ne!(x, y, "{kind:?}: the seed must change the ids");
        }
    }
}
