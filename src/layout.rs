//! Where the partitions of a GPT disk go: pure arithmetic, no I/O. [`layout`] places the
//! partitions (1 MiB-aligned starts, whole-MiB sizes, the first and the last MiB of the disk kept
//! for the partition tables); `plan` computes the layout of every disk step (so a spec whose
//! partitions do not fit fails before anything runs), and `format::gpt` writes it.

use crate::ids::Guid;

/// Logical sector size of the disks written here.
pub const SECTOR: u64 = 512;
/// Alignment and size granularity of partitions.
pub const MIB: u64 = 1 << 20;
/// Number of entries in the partition array.
pub const MAX_PARTITIONS: usize = 128;
/// Longest partition name, in UTF-16 code units.
pub(crate) const NAME_UNITS: usize = 36;

/// Partitions that cannot be placed on the disk asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("invalid disk size {size} bytes: {reason}")]
    DiskSize { size: u64, reason: String },

    #[error("{count} partitions given, a GPT here holds at most {max}")]
    TooManyPartitions { count: usize, max: usize },

    #[error("partition name `{name}`: {reason}")]
    PartitionName { name: String, reason: String },

    #[error("partition `{name}` has size 0")]
    ZeroSize { name: String },

    #[error(
        "partitions `{first}` and `{second}` both ask for the rest of the disk; at most one may \
         leave out its size"
    )]
    SeveralRestOfDisk { first: String, second: String },

    #[error(
        "the partitions do not fit on a disk of {disk_size} bytes: they need {needed} bytes, \
         {available} are usable (1 MiB at each end is kept for the partition tables), \
         {short_by} bytes short"
    )]
    DoesNotFit {
        disk_size: u64,
        needed: u64,
        available: u64,
        short_by: u64,
    },
}

/// One partition as asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionSpec {
    /// GPT partition name (at most 36 UTF-16 code units).
    pub name: String,
    pub type_guid: Guid,
    /// Bytes, rounded up to whole MiB; `None` takes the rest of the disk (at most one).
    pub size: Option<u64>,
    /// The partition's unique GUID.
    pub guid: Guid,
    /// GPT attribute bits (bit 0 required, bit 2 legacy BIOS bootable, …).
    pub attributes: u64,
}

/// One partition placed on the disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placed {
    pub name: String,
    pub first_lba: u64,
    /// Inclusive, as in the GPT entry.
    pub last_lba: u64,
    pub offset_bytes: u64,
    pub size_bytes: u64,
    pub guid: Guid,
    pub type_guid: Guid,
    pub attributes: u64,
}

/// Where every partition goes on a disk of `disk_size` bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub disk_size: u64,
    pub partitions: Vec<Placed>,
}

/// The byte range `[start, end)` partitions may use on a disk of `disk_size` bytes: from 1 MiB to
/// 1 MiB before the last whole MiB (the first MiB holds the MBR and primary GPT, the last one
/// the backup GPT).
pub(crate) fn partition_area(disk_size: u64) -> Result<(u64, u64), LayoutError> {
    if disk_size % SECTOR != 0 {
        return Err(LayoutError::DiskSize {
            size: disk_size,
            reason: format!("not a multiple of the {SECTOR}-byte sector"),
        });
    }
    let end = (disk_size / MIB * MIB).saturating_sub(MIB);
    if end < MIB {
        return Err(LayoutError::DiskSize {
            size: disk_size,
            reason: "smaller than the 2 MiB the partition tables need".into(),
        });
    }
    Ok((MIB, end))
}

pub(crate) fn check_name(name: &str) -> Result<(), LayoutError> {
    let units = name.encode_utf16().count();
    let reason = if units > NAME_UNITS {
        format!("{units} UTF-16 code units, a GPT name holds at most {NAME_UNITS}")
    } else if name.contains('\0') {
        "contains a NUL character".to_string()
    } else {
        return Ok(());
    };
    Err(LayoutError::PartitionName {
        name: name.to_string(),
        reason,
    })
}

/// Places `parts` in order on a disk of `disk_size` bytes (pure).
///
/// The first partition starts at 1 MiB, each size is rounded up to whole MiB so every start is
/// 1 MiB-aligned, the last MiB of the disk stays free for the backup GPT, and the one partition
/// without a size (if any) gets what is left (at least 1 MiB). Fails, saying by how many bytes,
/// when the partitions do not fit.
pub fn layout(disk_size: u64, parts: &[PartitionSpec]) -> Result<Layout, LayoutError> {
    let (start, end) = partition_area(disk_size)?;
    if parts.len() > MAX_PARTITIONS {
        return Err(LayoutError::TooManyPartitions {
            count: parts.len(),
            max: MAX_PARTITIONS,
        });
    }
    let mut rest: Option<&PartitionSpec> = None;
    let mut fixed: u64 = 0;
    for p in parts {
        check_name(&p.name)?;
        match p.size {
            Some(0) => {
                return Err(LayoutError::ZeroSize {
                    name: p.name.clone(),
                })
            }
            Some(s) => fixed = fixed.saturating_add(s.div_ceil(MIB).saturating_mul(MIB)),
            None => {
                if let Some(first) = rest {
                    return Err(LayoutError::SeveralRestOfDisk {
                        first: first.name.clone(),
                        second: p.name.clone(),
                    });
                }
                rest = Some(p);
            }
        }
    }
    let available = end - start;
    let needed = fixed.saturating_add(if rest.is_some() { MIB } else { 0 });
    if needed > available {
        return Err(LayoutError::DoesNotFit {
            disk_size,
            needed,
            available,
            short_by: needed - available,
        });
    }
    let mut offset = start;
    let partitions = parts
        .iter()
        .map(|p| {
            let size = match p.size {
                Some(s) => s.div_ceil(MIB) * MIB,
                None => available - fixed,
            };
            let placed = Placed {
                name: p.name.clone(),
                first_lba: offset / SECTOR,
                last_lba: (offset + size) / SECTOR - 1,
                offset_bytes: offset,
                size_bytes: size,
                guid: p.guid,
                type_guid: p.type_guid,
                attributes: p.attributes,
            };
            offset += size;
            placed
        })
        .collect();
    Ok(Layout {
        disk_size,
        partitions,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::ids::{derive_guid, ESP, LINUX_DATA, ROOT_X86_64, SWAP};

    pub(crate) const SEED: [u8; 32] = [7; 32];

    /// A partition of the tests (here and in `format::gpt`): its GUID derived from its name.
    pub(crate) fn part(name: &str, type_guid: Guid, size: Option<u64>) -> PartitionSpec {
        PartitionSpec {
            name: name.into(),
            type_guid,
            size,
            guid: derive_guid(&SEED, &format!("partition:{name}")),
            attributes: 0,
        }
    }

    #[test]
    fn layout_places_aligned_partitions() {
        let l = layout(
            64 * MIB,
            &[
                part("esp", ESP, Some(10 * MIB + 1)),
                part("root", ROOT_X86_64, None),
            ],
        )
        .unwrap();
        assert_eq!(l.disk_size, 64 * MIB);
        let esp = &l.partitions[0];
        assert_eq!(
            (
                esp.offset_bytes,
                esp.size_bytes,
                esp.first_lba,
                esp.last_lba
            ),
            (MIB, 11 * MIB, 2048, 2048 + 11 * 2048 - 1)
        );
        let root = &l.partitions[1];
        assert_eq!(root.offset_bytes, 12 * MIB);
        // Rest of disk: up to the last MiB.
        assert_eq!(root.size_bytes, 64 * MIB - 12 * MIB - MIB);
        assert_eq!(root.last_lba, (63 * MIB) / SECTOR - 1);
        assert_eq!(root.type_guid, ROOT_X86_64);
    }

    #[test]
    fn layout_rest_of_disk_in_the_middle() {
        let l = layout(
            32 * MIB,
            &[
                part("a", LINUX_DATA, Some(MIB)),
                part("b", LINUX_DATA, None),
                part("c", SWAP, Some(2 * MIB)),
            ],
        )
        .unwrap();
        let sizes: Vec<u64> = l.partitions.iter().map(|p| p.size_bytes / MIB).collect();
        let offsets: Vec<u64> = l.partitions.iter().map(|p| p.offset_bytes / MIB).collect();
        assert_eq!(sizes, [1, 27, 2]);
        assert_eq!(offsets, [1, 2, 29]);
    }

    #[test]
    fn layout_reports_overflow_by_how_much() {
        let err = layout(
            64 * MIB,
            &[
                part("esp", ESP, Some(40 * MIB)),
                part("root", LINUX_DATA, Some(30 * MIB)),
            ],
        )
        .unwrap_err();
        match err {
            LayoutError::DoesNotFit {
                needed,
                available,
                short_by,
                ..
            } => {
                assert_eq!((needed, available, short_by), (70 * MIB, 62 * MIB, 8 * MIB));
            }
            other => panic!("{other}"),
        }
        // Exactly full fits; the rest-of-disk partition then needs one more MiB.
        let full = [part("a", LINUX_DATA, Some(62 * MIB))];
        assert!(layout(64 * MIB, &full).is_ok());
        let err = layout(64 * MIB, &[full[0].clone(), part("b", LINUX_DATA, None)]).unwrap_err();
        assert!(
            matches!(err, LayoutError::DoesNotFit { short_by, .. } if short_by == MIB),
            "{err}"
        );
        assert!(err.to_string().contains("1048576 bytes short"), "{err}");
    }

    #[test]
    fn layout_rejects_bad_input() {
        let two_rest = [part("a", LINUX_DATA, None), part("b", LINUX_DATA, None)];
        assert!(matches!(
            layout(64 * MIB, &two_rest),
            Err(LayoutError::SeveralRestOfDisk { .. })
        ));
        assert!(matches!(
            layout(64 * MIB, &[part("a", LINUX_DATA, Some(0))]),
            Err(LayoutError::ZeroSize { .. })
        ));
        assert!(matches!(
            layout(64 * MIB, &[part(&"n".repeat(37), LINUX_DATA, Some(MIB))]),
            Err(LayoutError::PartitionName { .. })
        ));
        assert!(matches!(
            layout(64 * MIB + 1, &[]),
            Err(LayoutError::DiskSize { .. })
        ));
        assert!(matches!(
            layout(MIB, &[]),
            Err(LayoutError::DiskSize { .. })
        ));
        let many: Vec<_> = (0..129)
            .map(|i| part(&format!("p{i}"), LINUX_DATA, Some(MIB)))
            .collect();
        assert!(matches!(
            layout(1024 * MIB, &many),
            Err(LayoutError::TooManyPartitions { .. })
        ));
    }
}
