//! `packages` on an RPM-family tree: dnf inside the image, from a repository made here.
//!
//! No RPM mirror is reachable where imgspec is tested, so the RPM-family tree is a Debian
//! minbase with Debian's `dnf` and `rpm` in it (built by imgspec from the host's mirror and
//! written out as a tarball), whose os-release says it is like Fedora (`ID_LIKE="fedora"`) and
//! whose rpm keeps its database where Fedora's does (`/var/lib/rpm`). apt-get stays in it on
//! purpose: the tree has both programs, so the os-release, not the programs, must decide.
//! The package is a noarch RPM built here with the host's `rpmbuild`, in a repository made
//! with `createrepo_c` and served over HTTP; the image's own `/etc/yum.repos.d` names it.
//! Root, the network (the host's Debian mirror) and minutes: run by `--include-ignored`.

use crate::common::{Http, Workspace};
use std::process::Command;

const RPM_SPEC: &str = "\
Name: imgspec-hello
Version: 1.0
Release: 1
Summary: A file for the tests of imgspec
License: MIT
BuildArch: noarch
%description
One file, to find in the image.
%install
mkdir -p %{buildroot}/usr/share/imgspec-hello
echo 'hello from an rpm' > %{buildroot}/usr/share/imgspec-hello/greeting
%files
/usr/share/imgspec-hello/greeting
";

/// GRUB split as Fedora splits it (`grub2-tools` with `grub2-mkimage`, the modules of each
/// firmware apart), made of the host's Debian GRUB: what the plan's bootloader set becomes on
/// an RPM-family image ([`imgspec::distro::rpm::names`]), for the bootloader to find
/// `grub2-mkimage` and not `grub-mkimage`. No automatic requirements: the tree's libraries are
/// dpkg's, which rpm does not know.
const GRUB_SPEC: &str = "\
Name: grub2
Version: 2.06
Release: 1
Summary: The host's GRUB as Fedora packages it
License: GPLv3+
BuildArch: noarch
%description
The host's GRUB.
%package tools
Summary: grub2-mkimage
AutoReqProv: no
%description tools
grub2-mkimage.
%package common
Summary: common
AutoReqProv: no
%description common
Common files.
%package efi-x64-modules
Summary: x86_64-efi modules
AutoReqProv: no
%description efi-x64-modules
Modules.
%package pc-modules
Summary: i386-pc modules
AutoReqProv: no
%description pc-modules
Modules.
%install
mkdir -p %{buildroot}/usr/bin %{buildroot}/usr/lib/grub %{buildroot}/usr/share/grub2-test
cp /usr/bin/grub-mkimage %{buildroot}/usr/bin/grub2-mkimage
cp -r /usr/lib/grub/x86_64-efi /usr/lib/grub/i386-pc %{buildroot}/usr/lib/grub/
echo test > %{buildroot}/usr/share/grub2-test/README
%files tools
/usr/bin/grub2-mkimage
%files common
/usr/share/grub2-test/README
%files efi-x64-modules
/usr/lib/grub/x86_64-efi
%files pc-modules
/usr/lib/grub/i386-pc
";

/// The Debian tree that passes for an RPM-family one (with the libraries the host's
/// `grub-mkimage` links to, which minbase lacks).
const TREE_SPEC: &str = r#"
image "rpmish" {
    base "debian" suite="bookworm" variant="minbase"
    packages "rpm-tools" dnf rpm libdevmapper1.02.1
    files "rpmish/"
    output "tar"
}
"#;

/// The tar output of image `name`, extracted into `NAME-root/` of the workspace.
fn untar(w: &Workspace, name: &str) -> std::path::PathBuf {
    let root = w.path(&format!("{name}-root"));
    std::fs::create_dir(&root).unwrap();
    run(Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-xf")
        .arg(w.path(&format!("out/{name}/{name}.tar"))));
    root
}

/// A diagnostic as one line: miette's frame and wrapping taken out.
fn flat(stderr: &str) -> String {
    stderr
        .replace(['│', '×'], " ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[track_caller]
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A repository at `repo/` of noarch RPMs ([`RPM_SPEC`], [`GRUB_SPEC`]), made with rpmbuild
/// and createrepo_c.
fn make_repo(w: &Workspace) {
    std::fs::create_dir_all(w.path("repo")).unwrap();
    for (name, spec) in [("hello", RPM_SPEC), ("grub2", GRUB_SPEC)] {
        let file = format!("rpmbuild/SPECS/{name}.spec");
        w.write(&file, spec);
        run(Command::new("rpmbuild")
            .arg("--define")
            .arg(format!("_topdir {}", w.path("rpmbuild").display()))
            .args(["--define", "_build_id_links none"])
            .args(["--define", "__os_install_post %{nil}"])
            .args(["--define", "_binaries_in_noarch_packages_terminate_build 0"])
            .arg("-bb")
            .arg(w.path(&file)));
    }
    for e in std::fs::read_dir(w.path("rpmbuild/RPMS/noarch")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, w.path("repo").join(p.file_name().unwrap())).unwrap();
    }
    run(Command::new("createrepo_c").arg(w.path("repo")));
}

#[test]
#[ignore = "root, network (the host's Debian mirror) and minutes: mmdebstrap, apt and dnf in chroots"]
fn packages_install_with_dnf_on_an_rpm_family_tree() {
    if !imgspec::tools::test_requires(&["rpm", "createrepo-c"]) {
        return;
    }
    let w = Workspace::new();
    make_repo(&w);
    let http = Http::serve(&w.path("repo"));

    // The tree: Debian with dnf, rpm's database where Fedora keeps it, a Fedora-like
    // os-release (Debian's /etc/os-release links to it).
    w.write("rpmish.kdl", TREE_SPEC);
    w.write(
        "rpmish/usr/lib/os-release",
        "NAME=\"imgspec test\"\nID=imgspec-rpmish\nID_LIKE=\"fedora\"\nVERSION_ID=1\n",
    );
    w.write("rpmish/etc/rpm/macros", "%_dbpath /var/lib/rpm\n");
    w.run(&["build", "rpmish.kdl"]).ok();

    let repo = format!(
        "[imgspec-test]\nname=imgspec test\nbaseurl=http://127.0.0.1:{}/\ngpgcheck=0\n",
        http.1
    );
    w.write("repo-conf/etc/yum.repos.d/test.repo", &repo);
    w.write(
        "hello.kdl",
        r#"
image "hello-rpm" {
    base "tar" path="out/rpmish/rpmish.tar"
    files "repo-conf/"
    packages "hello" imgspec-hello
    output "tar"
}
"#,
    );
    let r = w.run(&["build", "hello.kdl"]).ok();
    assert!(r.stderr.contains("packages hello"), "{}", r.stderr);

    let root = untar(&w, "hello-rpm");
    assert_eq!(
        std::fs::read_to_string(root.join("usr/share/imgspec-hello/greeting")).unwrap(),
        "hello from an rpm\n"
    );
    // The tree's rpm database lists it (read by the host's rpm, at the tree's dbpath).
    let q = run(Command::new("rpm").arg("--root").arg(&root).args([
        "--dbpath",
        "/var/lib/rpm",
        "-q",
        "imgspec-hello",
    ]));
    assert_eq!(q.trim(), "imgspec-hello-1.0-1.noarch");
    // Apt did not run: its lists stay empty; dnf's caches are gone; nothing of the host's.
    let cache: Vec<_> = std::fs::read_dir(root.join("var/cache/dnf"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(cache.is_empty(), "dnf's cache left: {cache:?}");
    assert!(!root.join("etc/resolv.conf").exists());
    assert!(
        !root.join("var/log/dnf.log").exists(),
        "dnf's logs reached the image"
    );

    // Reproducible: rebuilt from nothing (rpm's install times are the epoch; dnf's history
    // is set to it), every step gives the same bytes.
    w.run(&["verify", "hello.kdl"]).ok();

    // A package the repository does not have, and a Debian name the plan would add, mapped to
    // its RPM-family name: dnf's failure names both, the second with the name it was asked as.
    w.write(
        "missing.kdl",
        r#"
image "missing" {
    base "tar" path="out/rpmish/rpmish.tar"
    files "repo-conf/"
    packages "more" no-such-rpm cloud-guest-utils
    output "tar"
}
"#,
    );
    let r = w.run(&["build", "missing.kdl"]);
    assert_ne!(r.code, 0, "{}", r.stderr);
    assert!(
        flat(&r.stderr).contains(
            "dnf cannot find packages `cloud-utils-growpart` (for `cloud-guest-utils`), \
             `no-such-rpm` in the image's repositories"
        ),
        "{}",
        r.stderr
    );

    // GRUB from the image: the plan's bootloader set (Debian names, in the image's first
    // package set) installs as Fedora's packages, and the bootloader makes both firmwares'
    // images with the image's grub2-mkimage (the tree has no grub-mkimage). The kernel is a
    // stand-in file: nothing boots here.
    w.write("kernel/vmlinuz", "not a kernel\n");
    w.write(
        "grub2.kdl",
        r#"
image "grub2-rpm" {
    base "tar" path="out/rpmish/rpmish.tar"
    files "repo-conf/"
    files "kernel/"
    packages "hello" imgspec-hello
    bootloader "hybrid"
    disk table="gpt" size="2GiB" {
        partition "bios" type="bios-boot" size="1MiB"
        partition "esp" type="esp" size="200MiB" format="vfat" mount="/boot/efi"
        partition "root" type="root" format="ext4" mount="/"
    }
    output "tar"
}
"#,
    );
    w.run(&["build", "grub2.kdl"]).ok();
    let groot = untar(&w, "grub2-rpm");
    let q = run(Command::new("rpm").arg("--root").arg(&groot).args([
        "--dbpath",
        "/var/lib/rpm",
        "-qa",
        "--qf",
        "%{NAME}\n",
    ]));
    let mut installed: Vec<&str> = q.lines().collect();
    installed.sort();
    assert_eq!(
        installed,
        [
            "grub2-common",
            "grub2-efi-x64-modules",
            "grub2-pc-modules",
            "grub2-tools",
            "imgspec-hello"
        ]
    );
    assert!(!groot.join("usr/bin/grub-mkimage").exists());
    let efi = std::fs::read(groot.join("boot/efi/EFI/BOOT/BOOTX64.EFI")).unwrap();
    assert_eq!(&efi[..2], b"MZ", "BOOTX64.EFI is not a PE image");
    let cfg = std::fs::read_to_string(groot.join("boot/grub/grub.cfg")).unwrap();
    assert!(cfg.contains("linux /vmlinuz root=UUID="), "{cfg}");

    // The same tree with a Debian os-release: apt installs the bootloader's set under its
    // Debian names, and the image's grub-mkimage makes the EFI image (the tree decides).
    w.write(
        "debian-release/usr/lib/os-release",
        "ID=debian\nVERSION_ID=12\n",
    );
    w.write(
        "grub-deb.kdl",
        r#"
image "grub-deb" {
    base "tar" path="out/rpmish/rpmish.tar"
    files "debian-release/"
    files "kernel/"
    packages "extra" less
    bootloader "grub-efi"
    disk table="gpt" size="2GiB" {
        partition "esp" type="esp" size="200MiB" format="vfat" mount="/boot/efi"
        partition "root" type="root" format="ext4" mount="/"
    }
    output "tar"
}
"#,
    );
    w.run(&["build", "grub-deb.kdl"]).ok();
    let droot = untar(&w, "grub-deb");
    let status = std::fs::read_to_string(droot.join("var/lib/dpkg/status")).unwrap();
    for p in ["grub-common", "grub-efi-amd64-bin", "grub-pc-bin", "less"] {
        assert!(
            status.contains(&format!("Package: {p}\n")),
            "dpkg has no {p}"
        );
    }
    assert!(droot.join("usr/bin/grub-mkimage").exists());
    let efi = std::fs::read(droot.join("boot/efi/EFI/BOOT/BOOTX64.EFI")).unwrap();
    assert_eq!(&efi[..2], b"MZ", "BOOTX64.EFI is not a PE image");

    // A dnf set cannot be locked yet, and the lock says so (writing nothing).
    let r = w.run(&["lock", "hello.kdl"]);
    assert_ne!(r.code, 0, "{}", r.stderr);
    assert!(
        flat(&r.stderr).contains(
            "`packages hello` installs with dnf (the image is of the RPM family): imgspec \
             cannot lock dnf package sets yet"
        ),
        "{}",
        r.stderr
    );
    assert!(!w.path("hello.kdl.lock").exists());
}
