//! The real thing: every Debian image of specs/ built in one run from an empty cache with
//! mmdebstrap from the host's mirror, each booted under QEMU in the way it is meant to boot
//! (UEFI, BIOS, both, partition image with its kernel), a test image whose own unit checks DHCP,
//! the user and growroot from inside, then everything again from the cache.
//! Minutes, network and root: ignored by plain `cargo test`, run by `--include-ignored` (CI).

use crate::common::{sha256, Run, Workspace};

fn copy_specs(w: &Workspace) {
    let status = std::process::Command::new("cp")
        .args(["-r", concat!(env!("CARGO_MANIFEST_DIR"), "/specs")])
        .arg(w.path("specs"))
        .status()
        .unwrap();
    assert!(status.success());
    let status = std::process::Command::new("cp")
        .args([
            "-r",
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/vm-checks"),
        ])
        .arg(w.path("specs/vm-checks"))
        .status()
        .unwrap();
    assert!(status.success());
    // The variants are built unlocked here, so that they share their layers; the locked
    // default image has its own tests (repro.rs: the committed sums, reprotest).
    let _ = std::fs::remove_file(w.path("specs/debian-efi.kdl.lock"));
}

/// The image whose unit prints IMGSPEC-CHECK lines at boot.
const CHECKS: &str = r#"
import "debian-common.kdl"

image "debian-checks" extends="debian-common" {
    user "ops" groups="sudo" sudo=#true ssh-key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIImgspecTestKeyOnlyForTestsXXXXXXXXXXXXXXXX imgspec-test@example"
    element "growroot"
    files "vm-checks/"
    bootloader "grub-efi"
    disk table="gpt" size="2GiB" {
        partition "esp" type="esp" size="200MiB" format="vfat" mount="/boot/efi"
        partition "root" type="root" format="ext4" mount="/"
    }
    output "qcow2"
}
"#;

const IMAGES: &[&str] = &[
    "debian-efi",
    "debian-bios",
    "debian-hybrid",
    "debian-partition",
    "debian-checks",
];

fn build(w: &Workspace) -> Run {
    w.run(&[
        "build",
        "specs/debian-efi.kdl",
        "specs/debian-bios.kdl",
        "specs/debian-hybrid.kdl",
        "specs/debian-partition.kdl",
        "specs/checks.kdl",
    ])
}

#[track_caller]
fn boot(w: &Workspace, args: &[&str], expect: &str) -> String {
    let mut all = vec!["boot", "--timeout", "900"];
    all.extend_from_slice(args);
    let r = w.run(&all);
    assert_eq!(r.code, 0, "boot {args:?} failed:\n{}", r.stderr);
    assert!(r.stderr.contains(expect), "boot {args:?}:\n{}", r.stderr);
    r.stderr
}

fn outputs(w: &Workspace) -> Vec<(String, String)> {
    let mut v = Vec::new();
    for i in IMAGES {
        for e in std::fs::read_dir(w.path(&format!("out/{i}"))).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            if !name.starts_with('.') {
                v.push((format!("{i}/{name}"), sha256(&p)));
            }
        }
    }
    v.sort();
    v
}

#[test]
#[ignore = "builds and boots real Debian images: minutes, root and the host's apt mirror"]
fn debian_images_build_boot_and_rebuild_from_cache() {
    let w = Workspace::new();
    copy_specs(&w);
    w.write("specs/checks.kdl", CHECKS);

    // One run: shared layers once, every image's outputs with their checksums.
    let r = build(&w).ok();
    eprintln!("{}", r.stderr);
    assert_eq!(
        r.stderr.matches("built    base debian").count(),
        1,
        "{}",
        r.stderr
    );
    // The bootable variants share their layers up to the bootloader.
    let plan: serde_json::Value = serde_json::from_str(
        &w.run(&[
            "--json",
            "plan",
            "specs/debian-efi.kdl",
            "specs/debian-bios.kdl",
            "specs/debian-hybrid.kdl",
        ])
        .ok()
        .stdout,
    )
    .unwrap();
    let layer_keys = |i: usize| -> Vec<String> {
        plan["images"][i]["steps"]
            .as_array()
            .unwrap()
            .iter()
            .take_while(|s| s["kind"] != "bootloader")
            .map(|s| s["key"].as_str().unwrap().to_string())
            .collect()
    };
    // base, packages, the dhcp-all-interfaces element and the files layer.
    assert_eq!(layer_keys(0).len(), 4, "{plan}");
    assert_eq!(layer_keys(0), layer_keys(1));
    assert_eq!(layer_keys(0), layer_keys(2));
    for (image, files) in [
        ("debian-efi", &["debian-efi.qcow2", "debian-efi.raw"][..]),
        ("debian-bios", &["debian-bios.qcow2"]),
        ("debian-hybrid", &["debian-hybrid.qcow2"]),
        (
            "debian-partition",
            &[
                "debian-partition.qcow2",
                "debian-partition.vmlinuz",
                "debian-partition.initrd",
            ],
        ),
        ("debian-checks", &["debian-checks.qcow2"]),
    ] {
        let sums = std::fs::read_to_string(w.path(&format!("out/{image}/SHA256SUMS"))).unwrap();
        for f in files {
            let p = w.path(&format!("out/{image}/{f}"));
            assert!(
                sums.contains(&format!("{}  {f}", sha256(&p))),
                "{image}: {sums}"
            );
        }
    }

    // The partition table is one that the standard tools accept.
    let dump = std::process::Command::new("sfdisk")
        .arg("--dump")
        .arg(w.path("out/debian-efi/debian-efi.raw"))
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
    // A partition image has no partition table: it is an ext4 filesystem.
    let info = std::process::Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(w.path("out/debian-partition/debian-partition.qcow2"))
        .arg(w.path("partition.raw"))
        .status()
        .unwrap();
    assert!(info.success());
    let fs = std::process::Command::new("dumpe2fs")
        .arg("-h")
        .arg(w.path("partition.raw"))
        .output()
        .unwrap();
    assert!(
        fs.status.success(),
        "not ext4: {}",
        String::from_utf8_lossy(&fs.stderr)
    );
    std::fs::remove_file(w.path("partition.raw")).unwrap();

    // Every way of booting reaches a login prompt.
    boot(&w, &["out/debian-efi/debian-efi.qcow2"], "`login:` after");
    // The firmware comes from the partition table: SeaBIOS for a BIOS-only disk, UEFI for a
    // hybrid one.
    let b = boot(&w, &["out/debian-bios/debian-bios.qcow2"], "`login:` after");
    assert!(b.contains("BIOS boot partition: SeaBIOS"), "{b}");
    let h = boot(
        &w,
        &["out/debian-hybrid/debian-hybrid.qcow2"],
        "`login:` after",
    );
    assert!(h.contains("hybrid disk"), "{h}");
    boot(
        &w,
        &[
            "--firmware",
            "bios",
            "out/debian-hybrid/debian-hybrid.qcow2",
        ],
        "`login:` after",
    );
    let p = boot(
        &w,
        &["out/debian-partition/debian-partition.qcow2"],
        "`login:` after",
    );
    assert!(p.contains("partition image, kernel"), "{p}");

    // Inside the test image: DHCP, the user and its key, growroot on a disk grown to 3 GiB.
    std::fs::copy(
        w.path("out/debian-checks/debian-checks.qcow2"),
        w.path("grown.qcow2"),
    )
    .unwrap();
    let st = std::process::Command::new("qemu-img")
        .args(["resize", "-q"])
        .arg(w.path("grown.qcow2"))
        .arg("3G")
        .status()
        .unwrap();
    assert!(st.success());
    let console = boot(
        &w,
        &["--expect", "IMGSPEC-CHECKS-END", "grown.qcow2"],
        "IMGSPEC-CHECKS-END",
    );
    for check in ["dhcp", "user", "growroot"] {
        assert!(
            console.contains(&format!("IMGSPEC-CHECK {check} ok")),
            "{check}:\n{console}"
        );
    }
    assert!(console.contains("IMGSPEC-CHECKS-PASSED"), "{console}");
    std::fs::remove_file(w.path("grown.qcow2")).unwrap();

    // Again: every step from the cache, the same bytes, outputs restored when deleted.
    let before = outputs(&w);
    std::fs::remove_file(w.path("out/debian-efi/debian-efi.qcow2")).unwrap();
    let r = build(&w).ok();
    assert!(
        r.stderr.lines().any(|l| l.starts_with("0 steps built")),
        "{}",
        r.stderr
    );
    assert_eq!(outputs(&w), before);
    // What follows needs none of these outputs: the disk they take is given back now, so that
    // the test fits on a machine with little free space (CI has run out of it here).
    std::fs::remove_dir_all(w.path("out")).unwrap();

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

    // The users' guide's third route, with `specs/from-vm.kdl`: a disk laid out as a default
    // CentOS 8 install leaves it (GPT, an ESP, `/boot` on xfs, LVM with root on xfs and swap)
    // holding the Debian system just built with one RPM-managed package beside dpkg's, as
    // VMware writes it (vmdk) and as VirtualBox does (vdi). From each: imported with
    // libguestfs, made again into Ironic's partition set and a whole UEFI disk (the initramfs
    // made generic by `dracut-regenerate`); the SBOM lists both databases. The vmdk's images
    // are booted, the vdi's are the same bytes; a second build from an empty cache gives the
    // same bytes.
    if !imgspec::tools::test_requires(&[
        "libguestfs-tools",
        "linux-image-amd64",
        "libguestfs-xfs",
        "rpm",
    ]) {
        return;
    }
    w.write(
        "specs/debian-tree.kdl",
        "import \"debian-common.kdl\"\nimage \"debian-tree\" extends=\"debian-common\" {\n    output \"tar\"\n}\n",
    );
    w.run(&["build", "specs/debian-tree.kdl"]).ok();
    std::fs::rename(
        w.path("out/debian-tree/debian-tree.tar"),
        w.path("base.tar"),
    )
    .unwrap();
    // The imported disk's builds need nothing of the Debian build's cache or outputs.
    std::fs::remove_dir_all(w.path("cache")).unwrap();
    std::fs::remove_dir_all(w.path("out")).unwrap();
    crate::import::add_rpm_managed_package(&w, "base.tar", crate::import::RpmDb::Sqlite);
    crate::import::make_centos_like_disk_of(&w, "2400M", "");
    std::fs::remove_file(w.path("base.tar")).unwrap();
    std::fs::create_dir_all(w.path("specs/vm")).unwrap();
    let spec = std::fs::read_to_string(w.path("specs/from-vm.kdl")).unwrap();
    let mut sums = Vec::new();
    for format in ["vmdk", "vdi"] {
        let disk = format!("specs/vm/hand-installed.{format}");
        crate::import::qemu_img(
            w.dir.path(),
            &["convert", "-O", format, "vm/disk.raw", &disk],
        );
        if format == "vdi" {
            std::fs::remove_file(w.path("vm/disk.raw")).unwrap();
        }
        w.write(
            &format!("specs/from-{format}.kdl"),
            &spec.replace(
                "vm/hand-installed.qcow2",
                &format!("vm/hand-installed.{format}"),
            ),
        );
        w.run(&["build", &format!("specs/from-{format}.kdl")]).ok();
        // Booted once: the vdi's images are checked below to be the vmdk's, byte for byte.
        if format == "vmdk" {
            let p = boot(&w, &["out/from-vm/from-vm.qcow2"], "`login:` after");
            assert!(p.contains("partition image, kernel"), "{format}: {p}");
            let d = boot(
                &w,
                &["out/from-vm-disk/from-vm-disk.qcow2"],
                "`login:` after",
            );
            assert!(d.contains("EFI system partition: UEFI"), "{format}: {d}");
        }
        let sbom = std::fs::read_to_string(w.path("out/from-vm/from-vm.spdx.json")).unwrap();
        for purl in [
            "pkg:rpm/debian/imgspec-hello@1.2-3.el9?arch=noarch&distro=debian-12&epoch=2",
            "pkg:deb/debian/linux-image-amd64@",
        ] {
            assert!(sbom.contains(purl), "{format}: {purl} is not in the SBOM");
        }
        sums.push(
            ["from-vm", "from-vm-disk"]
                .map(|i| std::fs::read_to_string(w.path(&format!("out/{i}/SHA256SUMS"))).unwrap()),
        );
        if format == "vmdk" {
            std::fs::remove_file(w.path(&disk)).unwrap();
        }
    }
    // The same disk in two formats is the same system: the same bytes out (but the build
    // manifests, which name their spec files and the disks' digests).
    let images = |s: &[String; 2]| {
        s.iter()
            .flat_map(|t| t.lines().filter(|l| !l.ends_with(".manifest.json")))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        images(&sums[0]),
        images(&sums[1]),
        "the vmdk and the vdi gave different images"
    );
    // The second build from an empty cache: the first cache is not needed again.
    std::fs::remove_dir_all(w.path("cache")).unwrap();
    let r = w.run_with_cache(
        "cache-again",
        &["build", "specs/from-vdi.kdl", "--out-dir", "out-again"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    for (n, i) in ["from-vm", "from-vm-disk"].iter().enumerate() {
        let again = std::fs::read_to_string(w.path(&format!("out-again/{i}/SHA256SUMS"))).unwrap();
        assert_eq!(
            sums[1][n], again,
            "{i}: a second build from an empty cache differs"
        );
    }
}

#[test]
#[ignore = "builds and boots real Debian images: minutes, root and the host's apt mirror"]
fn secure_boot_image_boots_with_secure_boot_enforced_and_the_unsigned_one_is_refused() {
    if !imgspec::tools::test_requires(&["ovmf", "qemu-system-x86"]) {
        return;
    }
    let w = Workspace::new();
    copy_specs(&w);
    // `hybrid` signed too: shim and the signed GRUB on the ESP, GRUB's i386-pc core for BIOS.
    w.write(
        "specs/debian-hybrid-secureboot.kdl",
        r#"import "debian-common.kdl"
image "debian-hybrid-secureboot" extends="debian-common" {
    bootloader "hybrid" secure-boot=#true cmdline="console=tty0 console=ttyS0,115200"
    disk table="gpt" size="2GiB" {
        partition "bios" type="bios-boot" size="1MiB"
        partition "esp" type="esp" size="200MiB" format="vfat" mount="/boot/efi"
        partition "root" type="root" format="ext4" mount="/"
    }
    output "qcow2"
}
"#,
    );
    let r = w
        .run(&[
            "build",
            "specs/debian-efi.kdl",
            "specs/debian-efi-secureboot.kdl",
            "specs/debian-hybrid-secureboot.kdl",
        ])
        .ok();
    eprintln!("{}", r.stderr);
    // The signed variant shares every layer of the unsigned one, then installs shim and the
    // signed GRUB in a set of its own.
    assert_eq!(r.stderr.matches("built    base debian").count(), 1);
    assert!(
        r.stderr.contains("built    packages secure-boot"),
        "{}",
        r.stderr
    );
    let sbom = std::fs::read_to_string(
        w.path("out/debian-efi-secureboot/debian-efi-secureboot.spdx.json"),
    )
    .unwrap();
    for p in ["\"shim-signed\"", "\"grub-efi-amd64-signed\""] {
        assert!(sbom.contains(p), "{p} not in the SBOM");
    }

    // Under OVMF with Secure Boot enforced and Microsoft's keys: shim, GRUB and the kernel
    // are all checked, and the kernel says so.
    let console = boot(
        &w,
        &[
            "--secure-boot",
            "out/debian-efi-secureboot/debian-efi-secureboot.qcow2",
        ],
        "`login:` after",
    );
    assert!(console.contains("Secure Boot enforced"), "{console}");
    assert!(
        console.contains("secureboot: Secure boot enabled"),
        "{console}"
    );

    // The signed hybrid disk: the same chain under Secure Boot, and legacy BIOS still boots it.
    let console = boot(
        &w,
        &[
            "--secure-boot",
            "out/debian-hybrid-secureboot/debian-hybrid-secureboot.qcow2",
        ],
        "`login:` after",
    );
    assert!(
        console.contains("secureboot: Secure boot enabled"),
        "{console}"
    );
    boot(
        &w,
        &[
            "--firmware",
            "bios",
            "out/debian-hybrid-secureboot/debian-hybrid-secureboot.qcow2",
        ],
        "`login:` after",
    );

    // The same firmware refuses the unsigned image: its GRUB is made by grub-mkimage and signed
    // by nobody.
    let r = w.run(&[
        "boot",
        "--secure-boot",
        "--timeout",
        "600",
        "out/debian-efi/debian-efi.qcow2",
    ]);
    eprintln!("{}", r.stderr);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("Access Denied"), "{}", r.stderr);
    assert!(r.stderr.contains("Secure Boot"), "{}", r.stderr);
}

/// The one arm64 boot of the suite (slow under TCG): the image is built on this x86-64 host with
/// every program of it under qemu-user emulation, and boots under qemu-system-aarch64 with AAVMF.
/// A cold arm64 build takes about 18 minutes on 2 cores (the package layer's `mkinitramfs`
/// under qemu-user is most of it), so CI builds and boots it once; the second build from an
/// empty cache that proves cross builds reproducible is only with
/// `cargo test --features arm64-tests -- --include-ignored arm64`.
#[test]
#[ignore = "builds an arm64 Debian image under emulation and boots it under TCG: about 20 minutes, root and the host's apt mirror"]
fn arm64_image_builds_under_emulation_and_boots_under_aavmf() {
    if !imgspec::tools::test_requires(&["qemu-user-static", "qemu-system-arm", "qemu-efi-aarch64"])
    {
        return;
    }
    let w = Workspace::new();
    copy_specs(&w);
    let t = std::time::Instant::now();
    let r = w.run(&["build", "specs/debian-arm64-efi.kdl"]).ok();
    eprintln!("{}\narm64 build: {:.0?}", r.stderr, t.elapsed());
    // The disk and its partition set share every layer.
    assert_eq!(r.stderr.matches("built    base debian").count(), 1);

    // The root partition is typed as an arm64 root, beside the ESP.
    let raw = w.path("arm64.raw");
    let st = std::process::Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(w.path("out/debian-arm64-efi/debian-arm64-efi.qcow2"))
        .arg(&raw)
        .status()
        .unwrap();
    assert!(st.success());
    let dump = std::process::Command::new("sfdisk")
        .arg("--dump")
        .arg(&raw)
        .output()
        .unwrap();
    let dump = String::from_utf8_lossy(&dump.stdout);
    assert!(
        dump.contains("B921B045-1DF0-41C3-AF44-4C6F280D3FAE"),
        "arm64 root type: {dump}"
    );
    assert!(
        dump.contains("C12A7328-F81F-11D2-BA4B-00A0C93EC93B"),
        "ESP: {dump}"
    );
    // GRUB's arm64-efi image at the removable-media path of arm64, on the ESP.
    let esp_offset = 1u64 << 20;
    let listing = std::process::Command::new("mdir")
        .args(["-b", "-i"])
        .arg(format!("{}@@{esp_offset}", raw.display()))
        .arg("::/EFI/BOOT")
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(listing.contains("BOOTAA64.EFI"), "{listing}");
    std::fs::remove_file(&raw).unwrap();
    // The partition set's kernel is an arm64 one.
    assert_eq!(
        imgspec::boot::kernel_arch(
            &w.path("out/debian-arm64-partition/debian-arm64-partition.vmlinuz")
        ),
        Some(imgspec::boot::Arch::Aarch64)
    );
    let sbom =
        std::fs::read_to_string(w.path("out/debian-arm64-efi/debian-arm64-efi.spdx.json")).unwrap();
    assert!(
        sbom.contains("pkg:deb/debian/linux-image-arm64@"),
        "no arm64 kernel in the SBOM"
    );
    assert!(sbom.contains("arch=arm64"), "no arm64 package in the SBOM");

    // `imgspec boot` picks the machine from the root partition's type.
    let t = std::time::Instant::now();
    let console = boot(
        &w,
        &["out/debian-arm64-efi/debian-arm64-efi.qcow2"],
        "`login:` after",
    );
    eprintln!("arm64 boot: {:.0?}", t.elapsed());
    assert!(
        console.contains("qemu-system-aarch64 -machine virt"),
        "{console}"
    );
    assert!(console.contains("ttyAMA0"), "{console}");

    // Cross builds are reproducible too: a second build from an empty cache gives the same
    // bytes in every output file of both images (another 18 minutes: not in CI).
    if !cfg!(feature = "arm64-tests") {
        return;
    }
    let t = std::time::Instant::now();
    let r = w.run_with_cache(
        "cache-b",
        &["build", "specs/debian-arm64-efi.kdl", "--out-dir", "out-b"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    eprintln!("second arm64 build: {:.0?}", t.elapsed());
    for image in ["debian-arm64-efi", "debian-arm64-partition"] {
        let sums = |out: &str| {
            std::fs::read_to_string(w.path(&format!("{out}/{image}/SHA256SUMS"))).unwrap()
        };
        assert_eq!(sums("out"), sums("out-b"), "{image}: the two builds differ");
    }
}
