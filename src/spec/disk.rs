//! The `disk` node: its partitions, and the checks that need the whole layout — names and
//! mount points unique, one root, filesystems that suit each partition type, and the
//! partitions fitting on the disk.
//!
//! The layout rule (the disk step lays partitions out the same way): the first partition
//! starts at 1 MiB, each partition's size is rounded up to a whole MiB, the last MiB of the
//! disk is left for the backup GPT, and at most one partition has no size: it takes what is
//! left, rounded down to a whole MiB, which must be at least 1 MiB.

use kdl::KdlNode;
use miette::SourceSpan;

use super::error::SpecError;
use super::format_size;
use super::model::{Disk, FsFormat, Partition, PartitionType, TableKind};
use super::read::{children, Cx, Scalar, Shape, Spanned};
use super::values::absolute_path;

const MIB: u64 = 1 << 20;
const SECTOR: u64 = 512;
const MAX_PARTITIONS: usize = crate::layout::MAX_PARTITIONS;

const DISK: Shape<'static> = Shape {
    usage: "disk [table=\"gpt\"] size=\"2GiB\" { partition … }",
    max_args: 0,
    props: &["table", "size"],
    repeatable: &[],
    children: true,
};
const PARTITION: Shape<'static> = Shape {
    usage: "partition \"NAME\" type=\"root\" [size=\"200MiB\"] [format=\"ext4\"] [mount=\"/\"]",
    max_args: 1,
    props: &["type", "size", "format", "mount"],
    repeatable: &[],
    children: false,
};

/// A partition as read, with the spans the disk-wide checks point at.
struct Read {
    name: Spanned<String>,
    ptype: PartitionType,
    size: Option<u64>,
    size_span: Option<SourceSpan>,
    format: Option<Spanned<FsFormat>>,
    mount: Option<Spanned<String>>,
}

pub(crate) fn read_disk(cx: &mut Cx<'_>, node: &KdlNode) -> Option<Disk> {
    cx.check_shape(node, &DISK);
    let table = match cx.prop::<String>(node, "table") {
        Some(table) => cx.choice(&table, "partition table", &[("gpt", TableKind::Gpt)]),
        None => Some(TableKind::Gpt),
    };
    let size_help = "give the size of the whole disk, e.g. `disk size=\"2GiB\" { … }`";
    let size = cx
        .required_prop::<Scalar>(node, "size", size_help)
        .and_then(|size| Some((cx.size(size.clone())?, size.span)))
        .filter(|&(size, span)| whole_sectors(cx, size, span));

    let mut partitions = Vec::new();
    let mut all_read = true;
    for child in children(node) {
        if child.name().value() != "partition" {
            cx.unknown_node(child, "in `disk`", &["partition"]);
            continue;
        }
        match cx.clean(|cx| read_partition(cx, child)) {
            Some(partition) => partitions.push(partition),
            None => all_read = false,
        }
    }

    check_unique(cx, &partitions);
    if partitions.len() > MAX_PARTITIONS {
        let extra = &partitions[MAX_PARTITIONS];
        cx.bad_value(
            extra.name.span,
            format!(
                "a GPT disk holds at most {MAX_PARTITIONS} partitions, this one has {}",
                partitions.len()
            ),
            "one too many",
            "remove partitions: the partition table has room for 128 entries",
        );
        return None;
    }
    if !all_read {
        return None;
    }
    if !partitions
        .iter()
        .any(|p| p.mount.as_ref().is_some_and(|m| m.value == "/"))
    {
        cx.report(SpecError::MissingRoot {
            src: cx.src(),
            span: node.name().span(),
        });
    }
    let (size, size_span) = size?;
    check_fits(cx, &partitions, size, size_span);
    Some(Disk {
        table: table?,
        size,
        partitions: partitions
            .into_iter()
            .map(|p| Partition {
                name: p.name.value,
                ptype: p.ptype,
                size: p.size.map(round_up_mib),
                format: p.format.map(|f| f.value),
                mount: p.mount.map(|m| m.value),
            })
            .collect(),
    })
}

fn read_partition(cx: &mut Cx<'_>, node: &KdlNode) -> Option<Read> {
    cx.check_shape(node, &PARTITION);
    let name = cx.arg::<String>(node, &PARTITION, 0, "a name")?;
    if name.value.is_empty() || name.value.encode_utf16().count() > 36 {
        cx.bad_value(
            name.span,
            format!("partition name `{}` is empty or too long", name.value),
            "not a GPT partition name",
            "a GPT partition name has 1 to 36 characters",
        );
    } else if name.value.chars().any(char::is_control) {
        cx.bad_value(
            name.span,
            format!(
                "partition name `{}` has a control character",
                name.value.escape_debug()
            ),
            "not a GPT partition name",
            "a GPT partition name is printable text: letters, digits, `-`, `_`",
        );
    }
    let types = [
        ("esp", PartitionType::Esp),
        ("root", PartitionType::Root),
        ("bios-boot", PartitionType::BiosBoot),
        ("linux", PartitionType::Linux),
        ("swap", PartitionType::Swap),
    ];
    let type_help = format!("write it as `{}`", PARTITION.usage);
    let ptype = cx.required_prop::<String>(node, "type", type_help);
    let ptype_span = ptype.as_ref().map(|t| t.span);
    let ptype = ptype.and_then(|t| cx.choice(&t, "partition type", &types));
    let size_prop = cx.prop::<Scalar>(node, "size");
    let size_span = size_prop.as_ref().map(|s| s.span);
    let size = size_prop.and_then(|s| cx.size(s));
    let format = cx.prop::<String>(node, "format").and_then(|f| {
        let formats = [("ext4", FsFormat::Ext4), ("vfat", FsFormat::Vfat)];
        let value = cx.choice(&f, "filesystem", &formats)?;
        Some(Spanned {
            value,
            span: f.span,
        })
    });
    let mount = match cx.prop::<String>(node, "mount") {
        Some(mount) => Some(Spanned {
            value: absolute_path(cx, &mount, "mount", "/srv")?,
            span: mount.span,
        }),
        None => None,
    };
    let (ptype, ptype_span) = (ptype?, ptype_span?);

    let mut bad = |span: SourceSpan, message: String, label: &str, help: String| {
        cx.report(SpecError::BadPartition {
            src: cx.src(),
            span,
            message,
            label: label.to_string(),
            help,
        })
    };
    let n = &name.value;
    match ptype {
        PartitionType::Esp => match &format {
            Some(f) if f.value == FsFormat::Vfat => {}
            Some(f) => bad(
                f.span,
                format!("the `esp` partition `{n}` must be formatted `vfat`"),
                "not vfat",
                "write `format=\"vfat\"`: firmware reads the EFI system partition as FAT"
                    .to_string(),
            ),
            None => bad(
                ptype_span,
                format!("the `esp` partition `{n}` has no `format`"),
                "needs `format=\"vfat\"`",
                "add `format=\"vfat\"`: firmware reads the EFI system partition as FAT".to_string(),
            ),
        },
        PartitionType::BiosBoot | PartitionType::Swap => {
            let kind = if ptype == PartitionType::Swap {
                "swap"
            } else {
                "bios-boot"
            };
            let spans = [
                ("format", format.as_ref().map(|f| f.span)),
                ("mount", mount.as_ref().map(|m| m.span)),
            ];
            for (key, span) in spans {
                if let Some(span) = span {
                    bad(
                        span,
                        format!(
                            "a `{kind}` partition has no filesystem to {}",
                            if key == "mount" { "mount" } else { "format" }
                        ),
                        "not for this partition type",
                        format!("remove `{key}` from partition `{n}`"),
                    );
                }
            }
        }
        PartitionType::Root | PartitionType::Linux => {
            if let (Some(mount), None) = (&mount, &format) {
                bad(
                    mount.span,
                    format!("partition `{n}` is mounted but has no `format`"),
                    "no filesystem to mount",
                    "add `format=\"ext4\"` to the partition".to_string(),
                );
            }
        }
    }
    Some(Read {
        name,
        ptype,
        size,
        size_span,
        format,
        mount,
    })
}

/// Partition names, mount points and the one partition without a size: each at most once.
fn check_unique(cx: &mut Cx<'_>, partitions: &[Read]) {
    for (i, p) in partitions.iter().enumerate() {
        let earlier = &partitions[..i];
        if let Some(first) = earlier.iter().find(|q| q.name.value == p.name.value) {
            cx.report(SpecError::DuplicatePartition {
                src: cx.src(),
                first: first.name.span,
                second: p.name.span,
                name: p.name.value.clone(),
            });
        }
        if let Some(mount) = &p.mount {
            let same = |q: &&Read| q.mount.as_ref().is_some_and(|m| m.value == mount.value);
            if let Some(first) = earlier.iter().find(same) {
                cx.report(SpecError::DuplicateMount {
                    src: cx.src(),
                    first: first.mount.as_ref().map_or(first.name.span, |m| m.span),
                    second: mount.span,
                    mount: mount.value.clone(),
                });
            }
        }
        if p.size.is_none() {
            if let Some(first) = earlier.iter().find(|q| q.size.is_none()) {
                cx.report(SpecError::UnsizedPartition {
                    src: cx.src(),
                    first: first.name.span,
                    second: p.name.span,
                    name: p.name.value.clone(),
                });
            }
        }
    }
}

/// Whether a disk of `size` bytes is a whole number of 512-byte sectors (else reported, with the
/// nearest sizes that are).
fn whole_sectors(cx: &mut Cx<'_>, size: u64, span: SourceSpan) -> bool {
    if size % SECTOR == 0 {
        return true;
    }
    let below = size / SECTOR * SECTOR;
    let nearest = match below.checked_add(SECTOR) {
        Some(above) if below > 0 => format!("`{below}B` or `{above}B`"),
        Some(above) => format!("`{above}B`"),
        None => format!("`{below}B`"),
    };
    let mib = size / MIB;
    let in_mib = match mib {
        0 => "`1MiB`".to_string(),
        _ => format!("`{mib}MiB` or `{}MiB`", mib + 1),
    };
    cx.bad_value(
        span,
        format!("a disk of `{size}` bytes is not a whole number of {SECTOR}-byte sectors"),
        "not a multiple of 512 bytes",
        &format!("the nearest sizes that are: {nearest}; or whole MiB, which always are: {in_mib}"),
    );
    false
}

/// The partitions fit on a disk of `size` bytes (see the module doc for the layout rule).
fn check_fits(cx: &mut Cx<'_>, partitions: &[Read], size: u64, size_span: SourceSpan) {
    let usable = size.saturating_sub(2 * MIB) / MIB * MIB;
    if let Some((p, span)) = partitions
        .iter()
        .find_map(|p| Some((p, p.size_span?)).filter(|(p, _)| p.size > Some(size)))
    {
        cx.report(SpecError::LayoutTooBig {
            src: cx.src(),
            span,
            message: format!(
                "partition `{}` is larger than its disk of `{}`",
                p.name.value,
                format_size(size)
            ),
            label: "larger than the disk".to_string(),
            help: format!(
                "give it at most `{}` (the first and the last MiB of the disk hold the partition table), or make the disk larger",
                format_size(usable)
            ),
        });
        return;
    }
    let sized: u64 = partitions
        .iter()
        .filter_map(|p| p.size)
        .map(round_up_mib)
        .fold(0, u64::saturating_add);
    let rest = partitions.iter().find(|p| p.size.is_none());
    let needed = sized.saturating_add(if rest.is_some() { MIB } else { 0 });
    if needed <= usable {
        return;
    }
    let over = needed - usable;
    let (message, help) = match rest {
        Some(rest) if sized <= usable => (
            format!("no room is left for partition `{}`: the disk is `{}` too small", rest.name.value, format_size(over)),
            format!("make the disk at least `{}`, or shrink the other partitions (`{}` takes the rest and needs at least `1MiB`; the first and the last MiB of the disk hold the partition table)", format_size(needed.saturating_add(2 * MIB)), rest.name.value),
        ),
        _ => (
            format!("the partitions overflow the disk by `{}`", format_size(over)),
            format!("make the disk at least `{}`, or shrink the partitions (sizes are rounded up to whole MiB; the first and the last MiB of the disk hold the partition table)", format_size(needed.saturating_add(2 * MIB))),
        ),
    };
    cx.report(SpecError::LayoutTooBig {
        src: cx.src(),
        span: size_span,
        message,
        label: format!(
            "`{}` for partitions, `{}` needed",
            format_size(usable),
            format_size(needed)
        ),
        help,
    });
}

/// `bytes` rounded up to a whole MiB (at most `u64::MAX`: such a size never fits a disk).
fn round_up_mib(bytes: u64) -> u64 {
    bytes.div_ceil(MIB).saturating_mul(MIB)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_sizes_round_up_to_mib() {
        assert_eq!(round_up_mib(1), MIB);
        assert_eq!(round_up_mib(MIB), MIB);
        assert_eq!(round_up_mib(MIB + 1), 2 * MIB);
        assert_eq!(round_up_mib(u64::MAX), u64::MAX);
    }
}
