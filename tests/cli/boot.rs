//! `imgspec boot` on disks with nothing to boot: refused from the partition table, or stopped at
//! the firmware's own words when the firmware is forced (the timeout is an hour here).

use crate::common::Workspace;

#[test]
fn boot_refuses_a_disk_with_no_boot_partition_and_stops_at_seabios_word() {
    let w = Workspace::new();
    std::fs::write(w.path("empty.raw"), vec![0u8; 4 << 20]).unwrap();
    let r = w.run(&["boot", "empty.raw", "--accel", "tcg", "--timeout", "3600"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("has nothing a firmware can boot") && r.stderr.contains("--kernel"),
        "{}",
        r.stderr
    );
    // Raw data with no partition table is refused before QEMU even when the firmware is
    // forced; the same zeros as a qcow2 reach SeaBIOS, which must say it found nothing.
    let r = w.run(&["boot", "empty.raw", "--firmware", "bios", "--accel", "tcg"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("is not a bootable image"), "{}", r.stderr);
    let st = std::process::Command::new("qemu-img")
        .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
        .arg(w.path("empty.raw"))
        .arg(w.path("empty.qcow2"))
        .status()
        .unwrap();
    assert!(st.success());
    let r = w.run(&[
        "boot",
        "empty.qcow2",
        "--firmware",
        "bios",
        "--accel",
        "tcg",
        "--timeout",
        "3600",
        "-q",
    ]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("SeaBIOS found nothing to boot on the disk")
            && r.stderr.contains("Boot failed: not a bootable"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("--firmware uefi"), "{}", r.stderr);
}
