//! The golden test: the keys of a fixed spec are pinned. A change to how anything is hashed
//! fails here first, instead of silently sending every user's cache cold. When the change is
//! meant, bump the version of the step kind (or `key::FORMAT_VERSION`) and update the keys.

use std::path::{Path, PathBuf};

use super::*;
use crate::spec::model::*;
use crate::tools::{Tool, ToolError};

struct FixedFacts;

impl Facts for FixedFacts {
    fn tool_version(&self, tool: &Tool) -> Result<String, ToolError> {
        Ok(format!("{} 1.0", tool.program))
    }
    fn file_digest(&self, path: &Path) -> Result<String, std::io::Error> {
        Ok(blake3::hash(path.to_string_lossy().as_bytes())
            .to_hex()
            .to_string())
    }
}

fn image(name: &str) -> Image {
    Image {
        name: name.into(),
        file: PathBuf::from("/specs/golden.kdl"),
        epoch: DEFAULT_EPOCH,
        epoch_given: false,
        layers: vec![
            Layer::Base(Base::Debian(Debian {
                distro: "debian".into(),
                suite: "bookworm".into(),
                variant: "minbase".into(),
                mirror: None,
                components: vec!["main".into()],
                architecture: "amd64".into(),
                keyring: None,
            })),
            Layer::Packages(Packages {
                name: "system".into(),
                packages: vec!["linux-image-amd64".into(), "systemd-sysv".into()],
            }),
            Layer::Run(Run {
                command: "systemctl enable ssh".into(),
            }),
        ],
        bootloader: Some(Bootloader {
            kind: BootloaderKind::GrubEfi,
            cmdline: DEFAULT_CMDLINE.into(),
            secure_boot: false,
        }),
        disk: Some(Disk {
            table: TableKind::Gpt,
            size: 2 << 30,
            partitions: vec![
                Partition {
                    name: "esp".into(),
                    ptype: PartitionType::Esp,
                    size: Some(200 << 20),
                    format: Some(FsFormat::Vfat),
                    mount: Some("/boot/efi".into()),
                },
                Partition {
                    name: "root".into(),
                    ptype: PartitionType::Root,
                    size: None,
                    format: Some(FsFormat::Ext4),
                    mount: Some("/".into()),
                },
            ],
        }),
        outputs: vec![OutputFormat::Raw, OutputFormat::Qcow2 { compressed: false }],
    }
}

fn keys(plan: &Plan) -> Vec<(String, String)> {
    plan.steps
        .iter()
        .map(|s| (s.label.clone(), s.key.short()))
        .collect()
}

#[test]
fn golden_keys_of_a_fixed_spec() {
    let spec = Spec {
        images: vec![image("golden")],
        sources: vec![],
    };
    let plan = plan(&spec, &FixedFacts).unwrap();
    let got = keys(&plan);
    let want: Vec<(String, String)> = GOLDEN
        .iter()
        .map(|(l, k)| (l.to_string(), k.to_string()))
        .collect();
    assert_eq!(got, want, "step keys changed: see the module doc");
}

const GOLDEN: &[(&str, &str)] = &[
    ("base debian bookworm minbase", "35b3f0bb162c"),
    ("packages system", "44795ac2fcc8"),
    ("run `systemctl enable ssh`", "11befcda7919"),
    ("bootloader grub-efi", "f412de9884ef"),
    ("filesystem esp vfat", "afb1f07d237d"),
    ("filesystem root ext4", "79df2fb070f5"),
    ("disk gpt 2GiB", "4b645f5ed21e"),
    ("output raw", "ea559c2fe1ac"),
    ("output qcow2", "096a4adaec65"),
    ("sbom", "1ef801565805"),
    ("manifest", "e66a36db6716"),
];

/// A fixed lock of the golden image: one package in the base, one in the package set.
fn golden_lock(udev_version: &str) -> crate::lockfile::Lock {
    use crate::lockfile::{Lock, LockSet, LockedDeb};
    let deb = |name: &str, version: &str, sha: char| LockedDeb {
        name: name.into(),
        arch: "amd64".into(),
        version: version.into(),
        sha256: sha.to_string().repeat(64),
        size: 1000,
        suite: "bookworm".into(),
        priority: "required".into(),
        filename: format!("pool/main/{name}_{version}_amd64.deb"),
    };
    Lock {
        epoch: None,
        image_epochs: Default::default(),
        sets: vec![
            LockSet {
                step: "base".into(),
                images: vec!["golden".into()],
                request: "debian bookworm minbase amd64 main".into(),
                debs: vec![deb("apt", "2.6.1", 'a')],
                origin: Some(("golden.kdl.lock".into(), "ab".repeat(32))),
            },
            LockSet {
                step: "packages:system".into(),
                images: vec!["golden".into()],
                request: "grub-common grub-efi-amd64-bin grub-pc-bin grub2-common \
                          linux-image-amd64 systemd-sysv"
                    .into(),
                debs: vec![deb("udev", udev_version, 'b')],
                origin: Some(("golden.kdl.lock".into(), "ab".repeat(32))),
            },
        ],
    }
}

/// With a lock, the steps that install packages hash their set's digest: pinned here.
#[test]
fn golden_keys_with_a_lock() {
    let spec = Spec {
        images: vec![image("golden")],
        sources: vec![],
    };
    let lock = golden_lock("252.38-1~deb12u1");
    let plan = plan_locked(&spec, &FixedFacts, Some(&lock)).unwrap();
    let got = keys(&plan);
    assert_eq!(
        got[0],
        ("base debian bookworm minbase".into(), "d6ec3f8a4ece".into())
    );
    assert_eq!(got[1], ("packages system".into(), "c1ad27d67750".into()));
    assert!(plan.steps[0]
        .parts
        .iter()
        .any(|p| p.class == "file" && p.name == "lock"));
    // Unlocked keys differ from locked ones.
    assert_ne!(got[0].1, GOLDEN[0].1);
    // The SBOM gets the pinned checksums, the manifest the lock file.
    for s in &plan.steps {
        match &s.action {
            Action::Sbom(m) => assert_eq!(
                m.deb_sha256.get("udev:amd64:252.38-1~deb12u1"),
                Some(&"b".repeat(64))
            ),
            Action::Manifest(m) => assert_eq!(
                m.lock,
                Some(("golden.kdl.lock".to_string(), "ab".repeat(32)))
            ),
            _ => {}
        }
    }
}

#[test]
fn a_changed_lock_changes_the_steps_it_governs_and_what_follows() {
    let spec = Spec {
        images: vec![image("golden")],
        sources: vec![],
    };
    let a = keys(&plan_locked(&spec, &FixedFacts, Some(&golden_lock("252.38-1~deb12u1"))).unwrap());
    let b = keys(&plan_locked(&spec, &FixedFacts, Some(&golden_lock("252.39-1~deb12u1"))).unwrap());
    assert_eq!(a[0], b[0], "the base's set did not change");
    assert!(a[1..].iter().zip(&b[1..]).all(|(x, y)| x.1 != y.1));
}

#[test]
fn images_a_lock_does_not_name_stay_unlocked() {
    let spec = Spec {
        images: vec![image("golden")],
        sources: vec![],
    };
    let mut lock = golden_lock("1");
    for s in &mut lock.sets {
        s.images = vec!["other".into()];
    }
    let plan = plan_locked(&spec, &FixedFacts, Some(&lock)).unwrap();
    assert_eq!(plan.steps[0].key.short(), GOLDEN[0].1);
    assert_eq!(plan.steps[1].key.short(), GOLDEN[1].1);
}

#[test]
fn a_stale_or_incomplete_lock_is_refused() {
    let spec = Spec {
        images: vec![image("golden")],
        sources: vec![],
    };
    let mut lock = golden_lock("1");
    lock.sets[1].request = "linux-image-amd64".into();
    let e = plan_locked(&spec, &FixedFacts, Some(&lock)).unwrap_err();
    assert!(
        e.to_string().starts_with(
            "the lock file does not fit step `packages:system` of image `golden`: it was locked \
             for `linux-image-amd64`, the spec now asks for `grub-common"
        ),
        "{e}"
    );
    lock.sets.remove(1);
    let e = plan_locked(&spec, &FixedFacts, Some(&lock)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "the lock file does not fit step `packages:system` of image `golden`: the lock has no \
         set for it"
    );
}

#[test]
fn a_changed_spec_file_changes_only_the_manifest() {
    let source = |name: &str, digest: &str| crate::spec::model::SpecSource {
        name: name.into(),
        blake3: digest.into(),
        path: PathBuf::from(format!("/specs/{name}")),
        imports: vec![],
    };
    let with = |digest: &str, other: &str| Spec {
        images: vec![image("golden")],
        sources: vec![source("golden.kdl", digest), source("other.kdl", other)],
    };
    // A spec built alongside (not imported) is not part of the image: nothing changes.
    assert_eq!(
        keys(&plan(&with("aa", "x"), &FixedFacts).unwrap()),
        keys(&plan(&with("aa", "y"), &FixedFacts).unwrap())
    );
    let a = keys(&plan(&with("aa", "x"), &FixedFacts).unwrap());
    let b = keys(&plan(&with("bb", "x"), &FixedFacts).unwrap());
    let changed: Vec<&str> = a
        .iter()
        .zip(&b)
        .filter(|(x, y)| x.1 != y.1)
        .map(|(x, _)| x.0.as_str())
        .collect();
    assert_eq!(changed, ["manifest"]);
}

#[test]
fn variants_share_layers_and_differ_after() {
    let mut other = image("other");
    other.layers.push(Layer::Run(Run {
        command: "echo other".into(),
    }));
    let spec = Spec {
        images: vec![image("golden"), other],
        sources: vec![],
    };
    let plan = plan(&spec, &FixedFacts).unwrap();
    let a = &plan.images[0].steps;
    let b = &plan.images[1].steps;
    // base, packages and the first run are shared; everything after differs.
    assert_eq!(a[..3], b[..3]);
    assert!(a[3..].iter().all(|s| !b.contains(s)));
    assert_eq!(plan.steps[a[0]].uses.len(), 2);
}

#[test]
fn bootloader_packages_join_the_first_package_set() {
    let spec = Spec {
        images: vec![image("golden")],
        sources: vec![],
    };
    let plan = plan(&spec, &FixedFacts).unwrap();
    let Action::Packages(p) = &plan.steps[1].action else {
        panic!("step 1 is not packages")
    };
    assert_eq!(
        p.packages,
        [
            "grub-common",
            "grub-efi-amd64-bin",
            "grub-pc-bin",
            "grub2-common",
            "linux-image-amd64",
            "systemd-sysv"
        ]
    );
}

#[test]
fn a_changed_tool_version_changes_only_the_steps_that_run_it() {
    struct NewMke2fs;
    impl Facts for NewMke2fs {
        fn tool_version(&self, tool: &Tool) -> Result<String, ToolError> {
            let v = if tool.program == "mke2fs" {
                "2.0"
            } else {
                "1.0"
            };
            Ok(format!("{} {v}", tool.program))
        }
        fn file_digest(&self, path: &Path) -> Result<String, std::io::Error> {
            FixedFacts.file_digest(path)
        }
    }
    let spec = Spec {
        images: vec![image("golden")],
        sources: vec![],
    };
    let a = keys(&plan(&spec, &FixedFacts).unwrap());
    let b = keys(&plan(&spec, &NewMke2fs).unwrap());
    let changed: Vec<&str> = a
        .iter()
        .zip(&b)
        .filter(|(x, y)| x.1 != y.1)
        .map(|(x, _)| x.0.as_str())
        .collect();
    assert_eq!(
        changed,
        [
            "filesystem root ext4",
            "disk gpt 2GiB",
            "output raw",
            "output qcow2",
            "sbom",
            "manifest"
        ]
    );
}

#[test]
fn compressed_qcow2_has_its_own_key_and_leaves_the_others_alone() {
    let mut img = image("golden");
    img.outputs = vec![OutputFormat::Qcow2 { compressed: true }];
    let plan = plan(
        &Spec {
            images: vec![img],
            sources: vec![],
        },
        &FixedFacts,
    )
    .unwrap();
    let out = plan
        .steps
        .iter()
        .find(|s| s.label == "output qcow2")
        .unwrap();
    assert_eq!(out.label, "output qcow2");
    assert_ne!(out.key.short(), "096a4adaec65");
    assert!(out.parts.iter().any(|p| p.name == "compress"));
    // Everything before the output is the same as in the golden plan.
    assert_eq!(plan.steps[0].key.short(), GOLDEN[0].1);
    assert_eq!(plan.steps[6].key.short(), GOLDEN[6].1);
}

#[test]
fn a_lock_gives_its_epoch_to_images_whose_spec_gives_none() {
    let mut lock = golden_lock("252.38-1~deb12u1");
    lock.epoch = Some(1_762_593_055);
    let spec = |given: bool| Spec {
        images: vec![Image {
            epoch_given: given,
            ..image("golden")
        }],
        sources: vec![],
    };
    let unlocked = plan(&spec(false), &FixedFacts).unwrap();
    let locked = plan_locked(&spec(false), &FixedFacts, Some(&lock)).unwrap();
    assert!(locked.steps.iter().all(|s| s.epoch == 1_762_593_055));
    assert!(unlocked.steps.iter().all(|s| s.epoch == DEFAULT_EPOCH));
    // The spec's own epoch wins.
    let given = plan_locked(&spec(true), &FixedFacts, Some(&lock)).unwrap();
    assert!(given.steps.iter().all(|s| s.epoch == DEFAULT_EPOCH));
}

#[test]
fn new_disk_formats_and_zstd_leave_the_keys_of_the_other_outputs_alone() {
    let mut img = image("golden");
    img.outputs = vec![
        OutputFormat::Raw,
        OutputFormat::Qcow2 { compressed: false },
        OutputFormat::Vmdk,
        OutputFormat::Vdi,
        OutputFormat::Vhdx,
        OutputFormat::Vhd,
    ];
    let p = plan(
        &Spec {
            images: vec![img],
            sources: vec![],
        },
        &FixedFacts,
    )
    .unwrap();
    let got = keys(&p);
    // Every step of the golden plan up to its outputs keeps its key.
    for (label, key) in &GOLDEN[..9] {
        assert!(
            got.iter().any(|(l, k)| l == label && k == key),
            "{label} changed: {got:?}"
        );
    }
    let labels: Vec<&str> = got.iter().map(|(l, _)| l.as_str()).collect();
    for l in ["output vmdk", "output vdi", "output vhdx", "output vhd"] {
        assert!(labels.contains(&l), "{labels:?}");
    }
    let mut ks: Vec<&str> = got.iter().map(|(_, k)| k.as_str()).collect();
    ks.sort();
    ks.dedup();
    assert_eq!(ks.len(), got.len(), "two steps share a key: {got:?}");

    let mut img = image("golden");
    img.outputs = vec![OutputFormat::Qcow2Zstd];
    let z = plan(
        &Spec {
            images: vec![img],
            sources: vec![],
        },
        &FixedFacts,
    )
    .unwrap();
    let out = z.steps.iter().find(|s| s.label == "output qcow2").unwrap();
    assert_ne!(out.key.short(), "096a4adaec65");
    assert!(out
        .parts
        .iter()
        .any(|p| p.name == "compress" && p.value.contains("zstd")));
}

#[test]
fn secure_boot_adds_a_last_package_set_and_a_key_part_and_leaves_the_rest_alone() {
    let mut signed = image("golden");
    signed.bootloader.as_mut().unwrap().secure_boot = true;
    let plain = keys(
        &plan(
            &Spec {
                images: vec![image("golden")],
                sources: vec![],
            },
            &FixedFacts,
        )
        .unwrap(),
    );
    let p = plan(
        &Spec {
            images: vec![signed],
            sources: vec![],
        },
        &FixedFacts,
    )
    .unwrap();
    let got = keys(&p);
    // base, packages and run are the unsigned image's; then the signed packages' own set.
    assert_eq!(got[..3], plain[..3]);
    assert_eq!(got[3].0, "packages secure-boot");
    let Action::Packages(set) = &p.steps[3].action else {
        panic!("{:?}", p.steps[3].action)
    };
    assert_eq!(set.packages, ["grub-efi-amd64-signed", "shim-signed"]);
    assert_eq!(p.steps[3].inputs, [2]);
    assert_eq!(got[4].0, "bootloader grub-efi secure-boot");
    assert!(p.steps[4]
        .parts
        .iter()
        .any(|k| k.name == "secure-boot" && k.value == "true"));
    // The unsigned image's bootloader has no such part (its key is the golden one).
    let unsigned = plan(
        &Spec {
            images: vec![image("golden")],
            sources: vec![],
        },
        &FixedFacts,
    )
    .unwrap();
    assert!(!unsigned.steps[3]
        .parts
        .iter()
        .any(|k| k.name == "secure-boot"));
}

#[test]
fn a_foreign_image_hashes_the_emulator_in_the_steps_that_run_its_programs() {
    if crate::foreign::host_arch() != "amd64" {
        return;
    }
    let mut arm = image("arm");
    for l in &mut arm.layers {
        match l {
            Layer::Base(Base::Debian(d)) => d.architecture = "arm64".into(),
            Layer::Packages(p) => p.packages = vec!["linux-image-arm64".into()],
            _ => {}
        }
    }
    let p = plan(
        &Spec {
            images: vec![arm],
            sources: vec![],
        },
        &FixedFacts,
    )
    .unwrap();
    let emulator = |s: &Step| {
        s.parts
            .iter()
            .any(|k| k.class == "tool" && k.name == "qemu-aarch64-static")
    };
    for s in &p.steps {
        // The manifest names every tool of the image's keys, the emulator with them.
        let runs = matches!(
            s.action,
            Action::Bootstrap(_)
                | Action::Packages(_)
                | Action::Run(_)
                | Action::Bootloader(_)
                | Action::Manifest(_)
        );
        assert_eq!(emulator(s), runs, "{}", s.label);
    }
    // arm64's GRUB packages, its GRUB target and its root partition type.
    let Action::Packages(set) = &p.steps[1].action else {
        panic!()
    };
    assert!(set.packages.contains(&"grub-efi-arm64-bin".to_string()));
    assert!(!set
        .packages
        .iter()
        .any(|p| p == "grub-pc-bin" || p == "grub-efi-amd64-bin"));
    let Some(Action::Bootloader(b)) = p
        .steps
        .iter()
        .map(|s| &s.action)
        .find(|a| matches!(a, Action::Bootloader(_)))
    else {
        panic!()
    };
    assert_eq!(b.arch, crate::steps::bootloader::EfiArch::Arm64);
    let Some(Action::Disk(d)) = p
        .steps
        .iter()
        .map(|s| &s.action)
        .find(|a| matches!(a, Action::Disk(_)))
    else {
        panic!()
    };
    assert_eq!(d.layout.partitions[1].type_guid, crate::ids::ROOT_ARM64);
    // A native image has none of it: the golden keys.
    let native = plan(
        &Spec {
            images: vec![image("golden")],
            sources: vec![],
        },
        &FixedFacts,
    )
    .unwrap();
    assert!(!native.steps.iter().any(emulator));
}

/// The label, key parts (class and name) and short key of the base step of an image whose
/// base is `disk`.
fn imported_base(disk: DiskImage) -> (String, Vec<String>, String) {
    let mut img = image("imported");
    img.layers = vec![Layer::Base(Base::Image(disk))];
    img.bootloader = None;
    img.disk = None;
    img.outputs = vec![OutputFormat::Tar];
    let spec = Spec {
        images: vec![img],
        sources: vec![],
    };
    let plan = plan(&spec, &FixedFacts).unwrap();
    let base = &plan.steps[0];
    let parts = base
        .parts
        .iter()
        .map(|p| format!("{} {}", p.class, p.name))
        .collect();
    (base.label.clone(), parts, base.key.short())
}

/// `base "image"`'s key: the disk's digest, `root`, the cleanings kept, libguestfs' and
/// qemu-img's versions. Pinned like the rest.
#[test]
fn golden_key_of_an_imported_disk() {
    let (label, parts, key) = imported_base(DiskImage {
        source: DiskSource::Path(PathBuf::from("/vm/centos8.qcow2")),
        root: Some("/dev/cl/root".into()),
        keep: vec!["logs".into()],
    });
    assert_eq!(label, "base image centos8.qcow2");
    assert_eq!(
        parts,
        [
            "param epoch",
            "file disk",
            "param root",
            "param keep",
            "tool guestfish",
            "tool qemu-img"
        ]
    );
    assert_eq!(key, "59edb0c42fad");
}

/// `base "image" url=`: the published SHA-256 in place of the file's digest; the URL itself is
/// not in the key (a moved image rebuilds nothing).
#[test]
fn golden_key_of_a_disk_by_url() {
    let (label, parts, key) = imported_base(DiskImage {
        source: DiskSource::Url {
            url: "https://cloud.example/images/generic.qcow2".into(),
            sha256: "ab".repeat(32),
        },
        root: None,
        keep: vec![],
    });
    assert_eq!(label, "base image generic.qcow2");
    assert_eq!(
        parts,
        [
            "param epoch",
            "param disk-sha256",
            "param root",
            "param keep",
            "tool guestfish",
            "tool qemu-img"
        ]
    );
    assert_eq!(key, "dff12446e507");
}

/// `specs/fedora-cloud.kdl` cannot be built here (Fedora's servers are not reachable): what it
/// would run is pinned instead. Each step's label and key, in order; the disk named by its
/// published SHA-256; the bootloader's packages (Debian's names in the key, installed under
/// Fedora's by dnf).
#[test]
fn the_fedora_cloud_spec_plans_these_steps() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("specs/fedora-cloud.kdl");
    let spec = crate::spec::load(&[file]).unwrap();
    let plan = plan(&spec, &FixedFacts).unwrap();
    let steps: Vec<String> = plan
        .steps
        .iter()
        .map(|s| format!("{} {}", s.key.short(), s.label))
        .collect();
    let want = [
        "2a0f1b0364db base image Fedora-Cloud-Base-Generic-41-1.4.x86_64.qcow2",
        "04570ee806ac element dracut-regenerate",
        "b5bfcf9226f2 fstab",
        "e3c6bb6478eb filesystem root ext4",
        "569fab19d1d5 output partition",
        "546a09eb056f sbom",
        "fdebdb695f2e manifest",
        "daa2f489678b packages bootloader",
        "0e4a2de3a3ac element dracut-regenerate",
        "929001cfc050 bootloader grub-efi",
        "217a9d7ed94b filesystem esp vfat",
        "2b39e8db0bcf filesystem root ext4",
        "d7169c6e3abc disk gpt 5GiB",
        "17060ced1fd0 output qcow2",
        "2f43733ce9f3 sbom",
        "f153f1904d16 manifest",
    ];
    if steps != want {
        for s in &steps {
            eprintln!("        \"{s}\",");
        }
    }
    let base = &plan.steps[0];
    let Action::ImageBase(b) = &base.action else {
        panic!("{:?}", base.label);
    };
    assert_eq!(
        b.source,
        DiskSource::Url {
            url: "https://archives.fedoraproject.org/pub/archive/fedora/linux/releases/41/Cloud/x86_64/images/Fedora-Cloud-Base-Generic-41-1.4.x86_64.qcow2".into(),
            sha256: "6205ae0c524b4d1816dbd3573ce29b5c44ed26c9fbc874fbe48c41c89dd0bac2".into(),
        }
    );
    let packages: Vec<&Vec<String>> = plan
        .steps
        .iter()
        .filter_map(|s| match &s.action {
            Action::Packages(p) => Some(&p.packages),
            _ => None,
        })
        .collect();
    let grub: Vec<String> = [
        "grub-common",
        "grub-efi-amd64-bin",
        "grub-pc-bin",
        "grub2-common",
    ]
    .map(String::from)
    .into();
    assert_eq!(packages, [&grub]);
    assert_eq!(steps, want);
}
