//! The identifiers of an image's disks and filesystems: [`Guid`]s, the partition type GUIDs
//! imgspec writes, and ids derived from the image's seed.
//!
//! No id here is random: [`derive_guid`] is a blake3 keyed hash of a label with the image's
//! seed (in the spirit of systemd-repart), so the same inputs give the same bytes. `plan` derives
//! every id of an image here; `format` writes them; nothing here does I/O.

use std::fmt;
use std::str::FromStr;

/// A GUID/UUID. The bytes are in RFC 4122 order, the order of its text form
/// (`00112233-4455-6677-8899-aabbccddeeff` is `[0x00, 0x11, …, 0xff]`); GPT stores the first
/// three fields little-endian, see [`Guid::to_disk`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Guid(pub [u8; 16]);

/// EFI System Partition.
pub const ESP: Guid = Guid::from_fields(
    0xC12A_7328,
    0xF81F,
    0x11D2,
    [0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E, 0xC9, 0x3B],
);
/// Root partition for x86-64 (Discoverable Partitions Specification).
pub const ROOT_X86_64: Guid = Guid::from_fields(
    0x4F68_BCE3,
    0xE8CD,
    0x4DB1,
    [0x96, 0xE7, 0xFB, 0xCA, 0xF9, 0x84, 0xB7, 0x09],
);
/// Root partition for 64-bit ARM (AArch64, Discoverable Partitions Specification).
pub const ROOT_ARM64: Guid = Guid::from_fields(
    0xB921_B045,
    0x1DF0,
    0x41C3,
    [0xAF, 0x44, 0x4C, 0x6F, 0x28, 0x0D, 0x3F, 0xAE],
);
/// BIOS boot partition (GRUB's core.img on GPT disks booted by a BIOS).
pub const BIOS_BOOT: Guid = Guid::from_fields(
    0x2168_6148,
    0x6449,
    0x6E6F,
    [0x74, 0x4E, 0x65, 0x65, 0x64, 0x45, 0x46, 0x49],
);
/// Generic Linux data.
pub const LINUX_DATA: Guid = Guid::from_fields(
    0x0FC6_3DAF,
    0x8483,
    0x4772,
    [0x8E, 0x79, 0x3D, 0x69, 0xD8, 0x47, 0x7D, 0xE4],
);
/// Linux swap.
pub const SWAP: Guid = Guid::from_fields(
    0x0657_FD6D,
    0xA4AB,
    0x43C4,
    [0x84, 0xE5, 0x09, 0x33, 0xC8, 0x4B, 0x4F, 0x4F],
);

impl Guid {
    pub const NIL: Guid = Guid([0; 16]);

    /// A GUID from its text-form fields: `aaaaaaaa-bbbb-cccc-dddd-dddddddddddd`.
    pub const fn from_fields(a: u32, b: u16, c: u16, d: [u8; 8]) -> Guid {
        let a = a.to_be_bytes();
        let b = b.to_be_bytes();
        let c = c.to_be_bytes();
        Guid([
            a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5],
            d[6], d[7],
        ])
    }

    /// The on-disk (GPT, "mixed-endian") encoding: the first three fields byte-swapped.
    pub fn to_disk(&self) -> [u8; 16] {
        let mut b = self.0;
        b[0..4].reverse();
        b[4..6].reverse();
        b[6..8].reverse();
        b
    }

    /// The inverse of [`Guid::to_disk`].
    pub fn from_disk(bytes: [u8; 16]) -> Guid {
        // The swap is its own inverse.
        Guid(Guid(bytes).to_disk())
    }
}

impl fmt::Display for Guid {
    /// Lower-case RFC 4122 text form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Guid({self})")
    }
}

/// Text that is not a GUID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not a GUID (expected xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)")]
pub struct BadGuid {
    pub text: String,
}

impl FromStr for Guid {
    type Err = BadGuid;

    /// Parses `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, either case.
    fn from_str(s: &str) -> Result<Guid, BadGuid> {
        let bad = || BadGuid {
            text: s.to_string(),
        };
        let b = s.as_bytes();
        if b.len() != 36 || [8, 13, 18, 23].iter().any(|&i| b[i] != b'-') {
            return Err(bad());
        }
        let hex: Vec<u8> = b.iter().copied().filter(|&c| c != b'-').collect();
        if hex.len() != 32 {
            return Err(bad());
        }
        let mut out = [0u8; 16];
        for (o, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
            let hi = (pair[0] as char).to_digit(16).ok_or_else(bad)?;
            let lo = (pair[1] as char).to_digit(16).ok_or_else(bad)?;
            *o = (hi * 16 + lo) as u8;
        }
        Ok(Guid(out))
    }
}

/// The first 16 bytes of the blake3 keyed hash of `label` under `seed`.
///
/// Like systemd-repart's HMAC of a label with the machine id: one seed per image, one label per
/// id ("disk", "partition:root", "ext4-uuid:root", …), so ids are stable and never collide
/// across roles. Callers choose distinct labels for distinct ids.
pub fn derive_bytes16(seed: &[u8; 32], label: &str) -> [u8; 16] {
    let hash = blake3::keyed_hash(seed, label.as_bytes());
    let mut out = [0u8; 16];
    out.copy_from_slice(&hash.as_bytes()[..16]);
    out
}

/// A version-4 (random-looking), RFC 4122-variant GUID derived from `seed` and `label`.
pub fn derive_guid(seed: &[u8; 32], label: &str) -> Guid {
    let mut b = derive_bytes16(seed, label);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    Guid(b)
}

/// A 32-bit id (a FAT volume id) derived from `seed` and `label`.
pub fn derive_u32(seed: &[u8; 32], label: &str) -> u32 {
    let b = derive_bytes16(seed, label);
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: [u8; 32] = [7; 32];

    #[test]
    fn guid_text_and_disk_forms() {
        assert_eq!(ESP.to_string(), "c12a7328-f81f-11d2-ba4b-00a0c93ec93b");
        let parsed: Guid = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B".parse().unwrap();
        assert_eq!(parsed, ESP);
        assert_eq!(
            ESP.to_disk(),
            [
                0x28, 0x73, 0x2A, 0xC1, 0x1F, 0xF8, 0xD2, 0x11, 0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E,
                0xC9, 0x3B
            ]
        );
        assert_eq!(Guid::from_disk(ESP.to_disk()), ESP);
        for (g, s) in [
            (ROOT_X86_64, "4f68bce3-e8cd-4db1-96e7-fbcaf984b709"),
            (BIOS_BOOT, "21686148-6449-6e6f-744e-656564454649"),
            (LINUX_DATA, "0fc63daf-8483-4772-8e79-3d69d8477de4"),
            (SWAP, "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f"),
        ] {
            assert_eq!(g.to_string(), s);
            assert_eq!(s.parse::<Guid>().unwrap(), g);
        }
        for bad in [
            "",
            "c12a7328f81f11d2ba4b00a0c93ec93b",
            "c12a7328-f81f-11d2-ba4b-00a0c93ec93g",
            "c12a7328-f81f-11d2-ba4b00-a0c93ec93b",
            "{12a7328-f81f-11d2-ba4b-00a0c93ec93b}",
        ] {
            assert!(matches!(bad.parse::<Guid>(), Err(BadGuid { .. })));
        }
    }

    #[test]
    fn derived_ids_are_stable_v4_and_distinct() {
        let a = derive_guid(&SEED, "disk");
        assert_eq!(a, derive_guid(&SEED, "disk"));
        assert_ne!(a, derive_guid(&SEED, "partition:root"));
        assert_ne!(a, derive_guid(&[8; 32], "disk"));
        assert_eq!(a.0[6] >> 4, 4, "version 4");
        assert_eq!(a.0[8] >> 6, 0b10, "RFC 4122 variant");
        assert_eq!(derive_u32(&SEED, "x"), derive_u32(&SEED, "x"));
        assert_ne!(derive_u32(&SEED, "x"), derive_u32(&SEED, "y"));
        let b = derive_bytes16(&SEED, "x");
        assert_eq!(derive_u32(&SEED, "x").to_le_bytes(), b[..4]);
    }
}
