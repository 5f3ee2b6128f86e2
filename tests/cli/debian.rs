//! The real thing: specs/debian-efi.kdl built from an empty cache with mmdebstrap from the
//! host's mirror, booted under QEMU (UEFI) to a login prompt, built again from the cache.
//! Minutes, network and root: ignored by plain `cargo test`, run by `--include-ignored` (CI).

use crate::common::{sha256, Workspace};

fn copy_specs(w: &Workspace) {
    let status = std::process::Command::new("cp")
        .args(["-r", concat!(env!("CARGO_MANIFEST_DIR"), "/specs")])
        .arg(w.path("specs"))
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
#[ignore = "builds and boots a real Debian image: minutes, root and the host's apt mirror"]
fn debian_efi_builds_boots_and_rebuilds_from_cache() {
    let w = Workspace::new();
    copy_specs(&w);
    let r = w.run(&["build", "specs/debian-efi.kdl"]).ok();
    eprintln!("{}", r.stderr);
    let qcow2 = w.path("out/debian-efi/debian-efi.qcow2");
    let raw = w.path("out/debian-efi/debian-efi.raw");
    assert!(qcow2.exists() && raw.exists());
    let sums = std::fs::read_to_string(w.path("out/debian-efi/SHA256SUMS")).unwrap();
    assert!(
        sums.contains(&format!("{}  debian-efi.qcow2", sha256(&qcow2))),
        "{sums}"
    );
    assert!(
        sums.contains(&format!("{}  debian-efi.raw", sha256(&raw))),
        "{sums}"
    );

    // The partition table is one that the standard tools accept.
    let dump = std::process::Command::new("sfdisk")
        .arg("--dump")
        .arg(&raw)
        .output()
        .unwrap();
    let dump = String::from_utf8_lossy(&dump.stdout);
    assert!(dump.contains("label: gpt"), "{dump}");
    assert!(
        dump.contains("C12A7328-F81F-11D2-BA4B-00A0C93EC93B"),
        "ESP type: {dump}"
    );
    assert!(
        dump.contains("4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"),
        "root type: {dump}"
    );

    let boot = w.run(&[
        "boot",
        "out/debian-efi/debian-efi.qcow2",
        "--timeout",
        "900",
    ]);
    assert_eq!(boot.code, 0, "no login prompt:\n{}", boot.stderr);
    assert!(
        boot.stderr.contains("login prompt after"),
        "{}",
        boot.stderr
    );

    // Second build: every step from the cache, the same bytes.
    let before = (sha256(&qcow2), sha256(&raw));
    std::fs::remove_file(&qcow2).unwrap();
    let r = w.run(&["build", "specs/debian-efi.kdl"]).ok();
    assert!(r.stderr.contains(" 0 steps built"), "{}", r.stderr);
    assert!(r.stderr.contains("0 failed"), "{}", r.stderr);
    assert_eq!((sha256(&qcow2), sha256(&raw)), before);

    // A package that does not exist fails its step, by name, and stores nothing.
    w.write(
        "specs/broken.kdl",
        "image \"broken\" {\n    base \"debian\" suite=\"bookworm\" variant=\"minbase\"\n    packages \"extra\" no-such-package-imgspec\n    output \"tar\"\n}\n",
    );
    let r = w.run(&["build", "specs/broken.kdl"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("apt cannot find package `no-such-package-imgspec`"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("step `packages extra` failed"),
        "{}",
        r.stderr
    );

    // A suite that does not exist fails the base step with mmdebstrap's reason.
    w.write(
        "specs/nosuite.kdl",
        "image \"nosuite\" {\n    base \"debian\" suite=\"no-such-suite\"\n    output \"tar\"\n}\n",
    );
    let r = w.run(&["build", "specs/nosuite.kdl"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("step `base debian no-such-suite minbase` failed"),
        "{}",
        r.stderr
    );
}
