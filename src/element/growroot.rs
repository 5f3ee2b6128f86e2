//! `element "growroot"` (DIB's `growroot`): the root partition and filesystem grow to the end of
//! the disk at every boot. No parameters; needs `cloud-guest-utils` (growpart; pulls `fdisk`,
//! `e2fsprogs`).
//!
//! Writes `/usr/local/sbin/imgspec-growroot` (0755): finds the partition of `/` from `findmnt`
//! (major:minor → sysfs), `growpart DISK N` (`NOCHANGE` is success), then `resize2fs`
//! (`xfs_growfs`, `btrfs filesystem resize` for those); and
//! `/etc/systemd/system/imgspec-growroot.service` (oneshot, after `local-fs.target`, before
//! `sysinit.target`) enabled in `sysinit.target.wants`. Idempotent.

use super::{Definition, Element, Failure, ImageTree, Params, Parsed};

pub static DEFINITION: Definition = Definition {
    name: "growroot",
    version: 1,
    params: &[],
    parse,
};

fn parse(_: &Params<'_>) -> Parsed {
    Ok(Box::new(Growroot))
}

#[derive(Debug)]
struct Growroot;

impl Element for Growroot {
    fn packages(&self) -> Vec<&'static str> {
        vec!["cloud-guest-utils"]
    }

    fn apply(&self, image: &mut dyn ImageTree) -> Result<(), Failure> {
        image.write(SCRIPT, SCRIPT_TEXT.as_bytes(), 0o755)?;
        image.write(UNIT, UNIT_TEXT.as_bytes(), 0o644)?;
        image.symlink(
            "etc/systemd/system/sysinit.target.wants/imgspec-growroot.service",
            &format!("/{UNIT}"),
        )
    }
}

const SCRIPT: &str = "usr/local/sbin/imgspec-growroot";
const SCRIPT_TEXT: &str = r#"#!/bin/sh
# Written by imgspec (element "growroot"): grows the partition that holds / to the end of its
# disk, then the filesystem to the end of the partition. Run at every boot by
# imgspec-growroot.service; when there is nothing to grow, nothing changes.
set -eu
majmin=$(findmnt --noheadings --nofsroot --output MAJ:MIN --mountpoint / | head -n 1 | tr -d ' ')
sys=$(readlink -f "/sys/dev/block/$majmin")
if [ ! -f "$sys/partition" ]; then
    echo "growroot: / is not on a partition ($sys): nothing to grow"
    exit 0
fi
part=$(cat "$sys/partition")
disk=/dev/$(basename "$(dirname "$sys")")
dev=/dev/$(basename "$sys")
rc=0
out=$(growpart "$disk" "$part" 2>&1) || rc=$?
echo "$out"
case "$rc:$out" in
    0:*) ;;
    1:NOCHANGE*) ;;
    *) echo "growroot: growpart $disk $part failed ($rc)" >&2; exit 1 ;;
esac
fstype=$(findmnt --noheadings --output FSTYPE --mountpoint / | head -n 1 | tr -d ' ')
case "$fstype" in
    ext2|ext3|ext4) resize2fs "$dev" ;;
    xfs) xfs_growfs / ;;
    btrfs) btrfs filesystem resize max / ;;
    *) echo "growroot: cannot grow a $fstype filesystem" ;;
esac
"#;

const UNIT: &str = "etc/systemd/system/imgspec-growroot.service";
const UNIT_TEXT: &str = "\
[Unit]
Description=Grow the root partition and filesystem to the disk (imgspec growroot)
DefaultDependencies=no
After=systemd-remount-fs.service local-fs.target
Before=sysinit.target shutdown.target
Conflicts=shutdown.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/imgspec-growroot
StandardOutput=journal+console

[Install]
WantedBy=sysinit.target
";

#[cfg(test)]
mod tests {
    use imgspec_cache::EntryKind;

    use super::super::tests::{run, text, tree};
    use super::*;

    #[test]
    fn growroot_installs_an_enabled_early_unit() {
        let mut t = tree(&[]);
        run("growroot", &[], &mut t).unwrap();
        assert_eq!(t.tree.entries[SCRIPT].mode, 0o755);
        assert_eq!(
            t.tree.entries["etc/systemd/system/sysinit.target.wants/imgspec-growroot.service"].kind,
            EntryKind::Symlink {
                target: "/etc/systemd/system/imgspec-growroot.service".into()
            }
        );
        let unit = text(&t, UNIT);
        assert!(unit.contains("ExecStart=/usr/local/sbin/imgspec-growroot\n"));
        assert!(unit.contains("Before=sysinit.target"));
        assert!(unit.contains("DefaultDependencies=no"));
    }

    /// The growroot script is valid shell.
    #[test]
    fn growroot_script_parses() {
        let st = std::process::Command::new("sh")
            .args(["-n", "-c", SCRIPT_TEXT])
            .status()
            .unwrap();
        assert!(st.success());
    }
}
