//! The filesystems of an image's disk as its `/etc/fstab` names them, by UUID: shared by the
//! steps that write it (`bootloader` for a bootable disk, `fstab` for a partition image set).

/// One `/etc/fstab` line.
#[derive(Clone, Debug)]
pub struct Mount {
    /// `UUID=...`
    pub source: String,
    pub target: String,
    pub fstype: String,
    pub options: String,
    pub pass: u8,
}

/// The text of `/etc/fstab` for these mounts.
pub fn fstab_text(mounts: &[Mount]) -> String {
    let mut s = String::from("# written by imgspec\n");
    for m in mounts {
        s.push_str(&format!(
            "{} {} {} {} 0 {}\n",
            m.source, m.target, m.fstype, m.options, m.pass
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_mount() {
        let m = Mount {
            source: "UUID=1234".into(),
            target: "/".into(),
            fstype: "ext4".into(),
            options: "errors=remount-ro".into(),
            pass: 1,
        };
        assert_eq!(
            fstab_text(&[m]),
            "# written by imgspec\nUUID=1234 / ext4 errors=remount-ro 0 1\n"
        );
    }
}
