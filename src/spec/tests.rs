//! Tests of the spec front-end as a whole: the valid fixtures load into the expected model, and
//! each invalid fixture fails with the codes its first line announces (`// expect: spec::…`)
//! and renders to the reviewed snapshot of the same name (`snapshots/<fixture>.snap`).

use std::path::{Path, PathBuf};

use super::model::*;
use super::{format_size, load, parse_size, render};

const VALID: &str = "tests/fixtures/spec/valid";
const INVALID: &str = "tests/fixtures/spec/invalid";

fn fixture(folder: &str, name: &str) -> PathBuf {
    Path::new(folder).join(name)
}

fn canonical(folder: &str, name: &str) -> PathBuf {
    fixture(folder, name).canonicalize().unwrap()
}

fn image<'s>(spec: &'s Spec, name: &str) -> &'s Image {
    spec.images
        .iter()
        .find(|i| i.name == name)
        .unwrap_or_else(|| panic!("no image `{name}`"))
}

#[test]
fn parse_size_reads_binary_and_decimal_units() {
    assert_eq!(parse_size("2GiB"), Ok(2 << 30));
    assert_eq!(parse_size("200MiB"), Ok(200 << 20));
    assert_eq!(parse_size("512KiB"), Ok(512 << 10));
    assert_eq!(parse_size("1TiB"), Ok(1 << 40));
    assert_eq!(parse_size("4096"), Ok(4096));
    assert_eq!(parse_size("512B"), Ok(512));
    assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
    assert_eq!(parse_size("500MB"), Ok(500_000_000));
    assert_eq!(parse_size("1KB"), Ok(1_000));
}

#[test]
fn parse_size_rejects_everything_else() {
    for bad in [
        "",
        "0",
        "0GiB",
        "GiB",
        "-1GiB",
        "2.5GiB",
        "2 GiB",
        "2gib",
        "2GIB",
        "2Gi",
        "2TB",
        "2KiB ",
        " 2KiB",
        "1e3",
        "99999999999999999999",
        "17179869184GiB",
    ] {
        assert!(parse_size(bad).is_err(), "`{bad}` should be refused");
    }
    assert_eq!(
        parse_size("2gib").unwrap_err(),
        "unit `gib` is written `GiB`"
    );
    assert_eq!(
        parse_size("0").unwrap_err(),
        "a size must be greater than zero"
    );
    assert_eq!(parse_size("20000000000TiB").unwrap_err(), "too large");
    // The exact value a fraction stands for may itself not fit.
    assert!(parse_size("18446744073.9GB").is_err());
    assert!(parse_size("18446744073709551615.0B").is_err());
}

#[test]
fn parse_size_explains_fractions_exactly() {
    assert_eq!(
        parse_size("1.5GiB").unwrap_err(),
        "fractions are not allowed: write `1536MiB`"
    );
    assert_eq!(
        parse_size("2.5GB").unwrap_err(),
        "fractions are not allowed: write `2500MB`"
    );
    assert_eq!(
        parse_size("1.1KiB").unwrap_err(),
        "fractions are not allowed: use a smaller unit"
    );
}

#[test]
fn sizes_print_in_the_largest_exact_unit() {
    assert_eq!(format_size(2 << 30), "2GiB");
    assert_eq!(format_size(2050 << 20), "2050MiB");
    assert_eq!(format_size(4097), "4097B");
    assert_eq!(format_size(0), "0B");
}

#[test]
fn tar_based_image_loads() {
    let spec = load(&[fixture(VALID, "tar-rootfs.kdl")]).unwrap();
    let expected = Image {
        name: "rootfs".to_string(),
        file: canonical(VALID, "tar-rootfs.kdl"),
        epoch: DEFAULT_EPOCH,
        epoch_given: false,
        layers: vec![
            Layer::Base(Base::Tar {
                path: canonical(VALID, "rootfs.tar"),
            }),
            Layer::Files(Files {
                source: canonical(VALID, "overlay"),
                source_text: "overlay".to_string(),
                dest: "/".to_string(),
            }),
            Layer::Run(Run {
                command: "echo hello > /etc/hello".to_string(),
            }),
        ],
        bootloader: None,
        disk: None,
        outputs: vec![OutputFormat::Tar],
    };
    assert_eq!(spec.images, vec![expected]);
}

/// `debian-efi` extends the template `debian-base` of an imported file; `debian-bios` extends
/// `debian-efi` and replaces its bootloader, disk and outputs.
#[test]
fn inheritance_puts_parent_layers_first_and_replaces_single_nodes() {
    let spec = load(&[fixture(VALID, "debian-efi.kdl")]).unwrap();
    let names: Vec<&str> = spec.images.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(
        names,
        ["debian-efi", "debian-bios"],
        "templates are not built"
    );

    let efi = image(&spec, "debian-efi");
    assert_eq!(efi.file, canonical(VALID, "debian-efi.kdl"));
    assert_eq!(efi.epoch, 1_700_000_000, "inherited from the template");
    let base = Layer::Base(Base::Debian(Debian {
        distro: "debian".to_string(),
        suite: "bookworm".to_string(),
        variant: "minbase".to_string(),
        mirror: None,
        components: vec!["main".to_string(), "contrib".to_string()],
        architecture: "amd64".to_string(),
        keyring: None,
    }));
    let packages = Layer::Packages(Packages {
        name: "system".to_string(),
        packages: [
            "linux-image-amd64",
            "openssh-server",
            "systemd-sysv",
            "udev",
        ]
        .map(String::from)
        .to_vec(),
    });
    let user = Layer::User(User {
        name: "ops".to_string(),
        groups: vec!["sudo".to_string(), "adm".to_string()],
        ssh_keys: vec![
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKey1 ops@laptop".to_string(),
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKey2 ops@ci".to_string(),
        ],
        password_hash: None,
        sudo: true,
        shell: "/bin/bash".to_string(),
    });
    let own = vec![
        Layer::Element(Element::new("dhcp-all-interfaces", Default::default()).unwrap()),
        Layer::Element(
            Element::new(
                "hostname",
                [("name".to_string(), "node1".to_string())].into(),
            )
            .unwrap(),
        ),
        Layer::Files(Files {
            source: canonical(VALID, "overlay"),
            source_text: "overlay/".to_string(),
            dest: "/".to_string(),
        }),
        Layer::Run(Run {
            command: "systemctl enable ssh".to_string(),
        }),
    ];
    let mut layers = vec![base, packages, user];
    layers.extend(own);
    assert_eq!(efi.layers, layers);
    assert_eq!(
        efi.bootloader,
        Some(Bootloader {
            kind: BootloaderKind::GrubEfi,
            cmdline: DEFAULT_CMDLINE.to_string(),
            secure_boot: false,
        })
    );
    assert_eq!(
        efi.disk,
        Some(Disk {
            table: TableKind::Gpt,
            size: 2 << 30,
            partitions: vec![
                Partition {
                    name: "esp".to_string(),
                    ptype: PartitionType::Esp,
                    size: Some(200 << 20),
                    format: Some(FsFormat::Vfat),
                    mount: Some("/boot/efi".to_string()),
                },
                Partition {
                    name: "root".to_string(),
                    ptype: PartitionType::Root,
                    size: None,
                    format: Some(FsFormat::Ext4),
                    mount: Some("/".to_string()),
                },
            ],
        })
    );
    assert_eq!(
        efi.outputs,
        [OutputFormat::Raw, OutputFormat::Qcow2 { compressed: false }],
        "sorted, deduplicated"
    );

    let bios = image(&spec, "debian-bios");
    layers.push(Layer::Run(Run {
        command: "echo bios > /etc/variant".to_string(),
    }));
    assert_eq!(bios.layers, layers, "the parent's layers, then its own");
    assert_eq!(bios.epoch, 1_700_000_000);
    let bootloader = bios.bootloader.as_ref().unwrap();
    assert_eq!(bootloader.kind, BootloaderKind::GrubBios);
    assert_eq!(bootloader.cmdline, "console=ttyS0");
    let disk = bios.disk.as_ref().unwrap();
    let sizes: Vec<Option<u64>> = disk.partitions.iter().map(|p| p.size).collect();
    assert_eq!(
        sizes,
        [Some(1 << 20), Some(1431 << 20)],
        "1500MB rounds up to 1431MiB"
    );
    assert_eq!(bios.outputs, [OutputFormat::Qcow2 { compressed: false }]);
}

#[test]
fn a_file_imported_by_two_routes_is_read_once() {
    let spec = load(&[fixture(VALID, "all.kdl"), fixture(VALID, "debian-efi.kdl")]).unwrap();
    let names: Vec<&str> = spec.images.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "ubuntu-efi",
            "ubuntu-tar",
            "debian-efi",
            "debian-bios",
            "rootfs"
        ]
    );
    let ubuntu = image(&spec, "ubuntu-efi");
    assert_eq!(
        ubuntu.epoch, 1_720_000_000,
        "the child's epoch replaces the parent's"
    );
    assert_eq!(ubuntu.layers, image(&spec, "debian-efi").layers);
    let Layer::Base(Base::Debian(base)) = &image(&spec, "ubuntu-tar").layers[0] else {
        panic!("not a debian-like base");
    };
    assert_eq!(base.distro, "ubuntu");
    assert_eq!(base.components, ["main", "universe"]);
    assert_eq!(base.variant, "apt");
    assert_eq!(
        base.mirror.as_deref(),
        Some("http://ubuntu-mirror.example/ubuntu")
    );
}

#[test]
fn every_valid_fixture_loads() {
    for path in kdl_files(VALID) {
        if let Err(e) = load(std::slice::from_ref(&path)) {
            panic!("{}:\n{}", path.display(), render(&e, 100));
        }
    }
}

#[test]
fn a_missing_spec_file_is_reported_without_source() {
    let err = load(&[fixture(INVALID, "no-such-spec.kdl")]).unwrap_err();
    assert_eq!(err.len(), 1);
    let text = render(&err, 100);
    assert!(
        text.contains("cannot read `tests/fixtures/spec/invalid/no-such-spec.kdl`"),
        "{text}"
    );
}

/// Every invalid fixture fails with the codes of its `// expect:` line, in that order, and
/// renders as its snapshot.
#[test]
fn invalid_fixtures_render_as_reviewed() {
    let fixtures = kdl_files(INVALID);
    assert!(
        fixtures.len() >= 15,
        "only {} invalid fixtures",
        fixtures.len()
    );
    for path in fixtures {
        let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned();
        let expected: Vec<&str> = text
            .lines()
            .next()
            .and_then(|line| line.strip_prefix("// expect:"))
            .unwrap_or_else(|| panic!("{} lacks an `// expect:` first line", path.display()))
            .split_whitespace()
            .collect();
        let err = match load(std::slice::from_ref(&path)) {
            Ok(_) => panic!("{} loaded without error", path.display()),
            Err(err) => err,
        };
        let rendered = render(&err, 100);
        let codes: Vec<String> = err
            .iter()
            .map(|p| miette::Diagnostic::code(p).unwrap().to_string())
            .collect();
        assert_eq!(codes, expected, "{}:\n{rendered}", path.display());
        let name = path.file_stem().unwrap().to_str().unwrap().to_string();
        insta::with_settings!({ prepend_module_to_snapshot => false, omit_expression => true }, {
            insta::assert_snapshot!(name, rendered);
        });
    }
}

/// The `.kdl` files directly in `folder`, sorted.
fn kdl_files(folder: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(folder)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "kdl"))
        .collect();
    files.sort();
    files
}

#[test]
fn compress_applies_to_qcow2_outputs() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("c.kdl"),
        "image \"c\" {\n    base \"debian\" suite=\"bookworm\"\n    packages \"k\" linux-image-amd64\n    disk size=\"2GiB\" {\n        partition \"root\" type=\"root\" format=\"ext4\" mount=\"/\"\n    }\n    output \"raw\" \"qcow2\" compress=#true\n}\n",
    )
    .unwrap();
    let spec = crate::spec::load(&[dir.path().join("c.kdl")]).unwrap();
    assert_eq!(
        spec.images[0].outputs,
        [OutputFormat::Raw, OutputFormat::Qcow2 { compressed: true }]
    );
}

#[test]
fn compress_names_zlib_or_zstd_and_new_disk_formats_parse() {
    let dir = tempfile::tempdir().unwrap();
    let spec = |outputs: &str| {
        format!(
            "image \"c\" {{\n    base \"debian\" suite=\"bookworm\"\n    packages \"k\" linux-image-amd64\n    disk size=\"2GiB\" {{\n        partition \"root\" type=\"root\" format=\"ext4\" mount=\"/\"\n    }}\n    output {outputs}\n}}\n"
        )
    };
    let load = |outputs: &str| {
        std::fs::write(dir.path().join("c.kdl"), spec(outputs)).unwrap();
        crate::spec::load(&[dir.path().join("c.kdl")])
            .unwrap()
            .images[0]
            .outputs
            .clone()
    };
    assert_eq!(
        load("\"qcow2\" compress=\"zstd\""),
        [OutputFormat::Qcow2Zstd]
    );
    assert_eq!(
        load("\"qcow2\" compress=\"zlib\""),
        [OutputFormat::Qcow2 { compressed: true }]
    );
    assert_eq!(
        load("\"qcow2\" compress=#false"),
        [OutputFormat::Qcow2 { compressed: false }]
    );
    assert_eq!(
        load("\"vhd\" \"vmdk\" \"vhdx\" \"vdi\" \"raw\""),
        [
            OutputFormat::Raw,
            OutputFormat::Vmdk,
            OutputFormat::Vdi,
            OutputFormat::Vhdx,
            OutputFormat::Vhd
        ]
    );
}

/// A spec of `text` in a fresh folder, and the folder (kept while the spec is used).
fn spec_file(name: &str, text: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

/// miette's renderer panics on a label past column 65,535: a long line is shown as a window
/// around the span, with the true line and column in the header.
#[test]
fn a_problem_far_along_a_long_line_renders_as_a_window() {
    let long = format!(
        "image \"x\" {{ base \"tar\" path=\"r.tar\"; {} outptu \"tar\" }}\n",
        "run \"a\"; ".repeat(9000)
    );
    let column = long.find("outptu").unwrap() + 1;
    let (_dir, path) = spec_file("long.kdl", long.as_bytes());
    let err = load(&[path]).unwrap_err();
    let text = render(&err, 100);
    assert!(text.contains(&format!("long.kdl:1:{column}]")), "{text}");
    assert!(text.contains("outptu \"tar\""), "{text}");
    assert!(text.len() < 4000, "{} bytes rendered", text.len());
    // A span that itself is longer than the window renders too.
    let name = "a".repeat(70_000);
    let (_dir, path) = spec_file("name.kdl", format!("{name} \"x\"\n").as_bytes());
    let err = load(&[path]).unwrap_err();
    render(&err, 100);
}

#[test]
fn a_file_that_is_not_utf8_is_reported_at_its_first_bad_byte() {
    let (_dir, path) = spec_file("latin1.kdl", b"image \"x\" {\n  run \"caf\xe9\"\n}\n");
    let err = load(&[path]).unwrap_err();
    assert_eq!(err.len(), 1);
    let text = render(&err, 100);
    assert!(
        text.contains("byte `0xE9` at line 2, column 11 (offset 22)"),
        "{text}"
    );
    assert!(text.contains("latin1.kdl:2:11]"), "{text}");
    assert!(!text.contains("import"), "{text}");
}

#[test]
fn spec_files_must_be_regular_files_of_bounded_size() {
    let (dir, big) = spec_file(
        "big.kdl",
        &vec![b' '; super::source::MAX_SPEC_BYTES as usize + 1],
    );
    let fifo = dir.path().join("fifo.kdl");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    std::fs::write(dir.path().join("imports.kdl"), "import \"fifo.kdl\"\n").unwrap();
    // Neither the FIFO nor the device is waited on or read.
    let err = load(&[
        dir.path().join("imports.kdl"),
        PathBuf::from("/dev/zero"),
        big,
    ])
    .unwrap_err();
    let text = render(&err, 200);
    let codes: Vec<String> = err
        .iter()
        .map(|p| miette::Diagnostic::code(p).unwrap().to_string())
        .collect();
    assert_eq!(codes, ["spec::unreadable"; 3], "{text}");
    assert!(
        text.contains("cannot read `/dev/zero`: it is not a regular file"),
        "{text}"
    );
    assert!(
        text.contains("fifo.kdl`: it is not a regular file"),
        "{text}"
    );
    assert!(text.contains("big.kdl`: it is larger than 1MiB"), "{text}");
    assert!(
        !text.contains("an import is relative"),
        "no import help for a file named on the command line:\n{text}"
    );
}

/// An import that leaves the folder of the spec file given on the command line is refused
/// before it is read (through a symlink too), and nothing of the file is shown.
#[test]
fn imports_stay_in_the_folder_of_the_spec_file() {
    let (dir, path) = spec_file("a.kdl", b"import \"sub/b.kdl\"\nimport \"link.kdl\"\n");
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    // `sub/b.kdl` may climb back to the spec's folder, not above it.
    std::fs::write(
        dir.path().join("sub/b.kdl"),
        "import \"../c.kdl\"\nimport \"../../outside.kdl\"\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("c.kdl"), "template \"c\" { }\n").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", dir.path().join("link.kdl")).unwrap();
    let err = load(&[path]).unwrap_err();
    let text = render(&err, 200);
    let codes: Vec<String> = err
        .iter()
        .map(|p| miette::Diagnostic::code(p).unwrap().to_string())
        .collect();
    assert_eq!(codes, ["spec::import-escape"; 2], "{text}");
    assert!(!text.contains("root:"), "{text}");
}

/// What the GPT writer refuses is refused by `check` already, so that `plan` never meets it.
#[test]
fn disks_the_partition_table_cannot_hold_are_refused() {
    let disk = |partitions: &str| {
        format!("image \"x\" {{\n  base \"tar\" path=\"r.tar\"\n  disk size=\"2GiB\" {{\n{partitions}  }}\n  output \"raw\"\n}}\n")
    };
    let mut many = String::from(
        "    partition \"root\" type=\"root\" format=\"ext4\" mount=\"/\" size=\"1MiB\"\n",
    );
    for i in 0..128 {
        many.push_str(&format!(
            "    partition \"p{i}\" type=\"linux\" size=\"1MiB\"\n"
        ));
    }
    let control = "    partition \"a\\u{0}b\" type=\"root\" format=\"ext4\" mount=\"/\"\n";
    for (text, expect) in [
        (disk(&many), "at most 128 partitions, this one has 129"),
        (disk(control), "has a control character"),
    ] {
        let (dir, path) = spec_file("x.kdl", text.as_bytes());
        std::fs::write(dir.path().join("r.tar"), b"").unwrap();
        let err = load(&[path]).unwrap_err();
        let rendered = render(&err, 200);
        assert!(rendered.contains(expect), "{rendered}");
    }
}

/// `keyring` may name any file of the host, and planning hashes it: one as large as
/// `/proc/kcore` is refused by its size.
#[test]
fn a_keyring_of_unbounded_size_is_refused() {
    let (dir, path) = spec_file(
        "k.kdl",
        b"image \"k\" {\n  base \"debian\" suite=\"bookworm\" keyring=\"huge.gpg\"\n  output \"tar\"\n}\n",
    );
    // Sparse: as `/proc/kcore`, it claims far more than it holds on disk.
    let huge = std::fs::File::create(dir.path().join("huge.gpg")).unwrap();
    huge.set_len(1 << 40).unwrap();
    let err = load(&[path]).unwrap_err();
    let text = render(&err, 200);
    assert!(text.contains("is larger than 16MiB"), "{text}");
}

#[test]
fn secure_boot_and_arm64_take_only_the_bootloaders_they_can_boot() {
    let spec = |arch: &str, boot: &str| {
        format!(
            "image \"i\" {{\n    base \"debian\" suite=\"bookworm\" architecture=\"{arch}\"\n    packages \"k\" linux-image-{arch}\n    bootloader {boot}\n    disk size=\"2GiB\" {{\n        partition \"bios\" type=\"bios-boot\" size=\"1MiB\"\n        partition \"esp\" type=\"esp\" size=\"200MiB\" format=\"vfat\" mount=\"/boot/efi\"\n        partition \"root\" type=\"root\" format=\"ext4\" mount=\"/\"\n    }}\n    output \"qcow2\"\n}}\n"
        )
    };
    let check = |arch: &str, boot: &str| {
        let (_dir, path) = spec_file("i.kdl", spec(arch, boot).as_bytes());
        load(&[path]).map(|s| s.images[0].bootloader.clone().unwrap())
    };
    let b = check("amd64", "\"grub-efi\" secure-boot=#true").unwrap();
    assert!(b.secure_boot);
    assert!(
        check("amd64", "\"hybrid\" secure-boot=#true")
            .unwrap()
            .secure_boot
    );
    assert!(
        !check("amd64", "\"grub-efi\" secure-boot=#false")
            .unwrap()
            .secure_boot
    );
    assert!(!check("arm64", "\"grub-efi\"").unwrap().secure_boot);
    for (arch, boot, says) in [
        (
            "amd64",
            "\"grub-bios\" secure-boot=#true",
            "Secure Boot is a UEFI feature",
        ),
        (
            "amd64",
            "\"grub-efi\" secure-boot=\"yes\"",
            "must be a boolean",
        ),
        ("arm64", "\"hybrid\"", "arm64 machines boot UEFI only"),
        ("arm64", "\"grub-bios\"", "arm64 machines boot UEFI only"),
        (
            "arm64",
            "\"grub-efi\" secure-boot=#true",
            "for `amd64` images only",
        ),
        ("riscv64", "\"grub-efi\"", "not `riscv64`"),
    ] {
        let err = check(arch, boot).unwrap_err();
        let rendered = render(&err, 100);
        assert!(rendered.contains(says), "{arch} {boot}:\n{rendered}");
        assert!(rendered.contains("help:"), "{rendered}");
    }
}
