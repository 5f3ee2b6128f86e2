//! `base "image"`: disks laid out as a hand-installed VM leaves them, made here with libguestfs
//! (GPT, an ESP, `/boot` on xfs, LVM with root on xfs and swap), written out as vmdk and vdi,
//! imported back; and the disks that must be refused.

use std::path::Path;
use std::process::Command;

use crate::common::{sha256, Http, Workspace};

/// Runs a guestfish script in `dir` (the appliance under TCG, as on this kind of machine).
pub(crate) fn guestfish(dir: &Path, script: &str) {
    let file = dir.join("script.fish");
    std::fs::write(&file, script).unwrap();
    let out = Command::new("guestfish")
        .current_dir(dir)
        .env("LIBGUESTFS_BACKEND", "direct")
        .env("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg")
        .arg("-f")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "guestfish failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub(crate) fn qemu_img(dir: &Path, args: &[&str]) {
    let out = Command::new("qemu-img")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The files of a hand-used system that generalising must take away, and what it keeps.
const LEFTOVERS: &[(&str, &str, u32)] = &[
    ("etc/machine-id", "0123456789abcdef0123456789abcdef\n", 0o444),
    ("etc/hostname", "handmade\n", 0o644),
    ("etc/ssh/sshd_config", "#\n", 0o644),
    ("etc/ssh/ssh_host_ed25519_key", "SECRET\n", 0o600),
    ("var/log/syslog", "a log line\n", 0o640),
    ("root/.bash_history", "ls\n", 0o600),
    ("home/ops/.bash_history", "ls\n", 0o600),
    ("tmp/junk", "j", 0o644),
    ("var/lib/dhcp/dhclient.eth0.leases", "lease\n", 0o644),
    ("etc/udev/rules.d/70-persistent-net.rules", "# MACs\n", 0o644),
    ("var/lib/cloud/instances/i-1/boot-finished", "1\n", 0o644),
    ("boot/vmlinuz-6.1.0-test", "KERNEL", 0o644),
    ("boot/initrd.img-6.1.0-test", "INITRD", 0o644),
    ("etc/os-release", "ID=debian\nVERSION_ID=\"12\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\n", 0o644),
];

/// dpkg's record of one installed package, so that the SBOM has a dpkg package beside the RPM.
const DPKG_STATUS: (&str, &str, u32) = (
    "var/lib/dpkg/status",
    "Package: base-files\nStatus: install ok installed\nArchitecture: amd64\nVersion: 12.4+deb12u5\n\n",
    0o644,
);

/// The format of the RPM database [`add_rpm_managed_package`] leaves.
#[derive(PartialEq)]
pub(crate) enum RpmDb {
    /// `/var/lib/rpm/rpmdb.sqlite`, as EL 9 keeps it (and as the host's rpm writes it).
    Sqlite,
    /// `/var/lib/rpm/Packages`, the Berkeley DB hash of EL 7 and 8.
    BerkeleyDb,
}

/// Builds a tiny noarch RPM with the host's rpmbuild and installs it with the host's rpm into a
/// folder, its database in `/var/lib/rpm` as `db`, then appends that folder to the tar `rel`: a
/// Debian system with one RPM-managed package.
pub(crate) fn add_rpm_managed_package(w: &Workspace, rel: &str, db: RpmDb) {
    let run = |cmd: &mut Command| {
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{cmd:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    w.write(
        "rpm/hello.spec",
        "Name: imgspec-hello\nEpoch: 2\nVersion: 1.2\nRelease: 3.el9\nSummary: a test\n\
         License: MIT\nBuildArch: noarch\n%description\nA test.\n%install\n\
         mkdir -p %{buildroot}/usr/share/imgspec-hello\n\
         echo hello > %{buildroot}/usr/share/imgspec-hello/hello\n\
         %files\n/usr/share/imgspec-hello/hello\n",
    );
    let top = w.path("rpm/top");
    run(Command::new("rpmbuild")
        .arg("--define")
        .arg(format!("_topdir {}", top.display()))
        .arg("--define")
        .arg(format!("_tmppath {}", w.path("rpm").display()))
        .args(["-bb", "--quiet"])
        .arg(w.path("rpm/hello.spec")));
    let root = w.path("rpm/root");
    std::fs::create_dir_all(&root).unwrap();
    run(Command::new("rpm")
        .arg(format!("--root={}", root.display()))
        .args(["--dbpath=/var/lib/rpm", "--nodeps", "-i"])
        .arg(top.join("RPMS/noarch/imgspec-hello-1.2-3.el9.noarch.rpm")));
    let rpmdb = root.join("var/lib/rpm");
    assert!(rpmdb.join("rpmdb.sqlite").is_file());
    if db == RpmDb::BerkeleyDb {
        // Debian's rpm cannot write Berkeley DB: the same headers go into a hash database made
        // with Berkeley DB's own db_load, keyed as rpm keys them (the header number, native
        // byte order; key 0 holds the last number given).
        let conn = rusqlite::Connection::open(rpmdb.join("rpmdb.sqlite")).unwrap();
        let mut dump = String::from("VERSION=3\nformat=bytevalue\ntype=hash\nHEADER=END\n");
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let mut stmt = conn.prepare("SELECT hnum, blob FROM Packages").unwrap();
        let rows: Vec<(u32, Vec<u8>)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let last = rows.iter().map(|r| r.0).max().unwrap();
        dump += &format!(
            " {}\n {}\n",
            hex(&0u32.to_ne_bytes()),
            hex(&last.to_ne_bytes())
        );
        for (n, blob) in &rows {
            dump += &format!(" {}\n {}\n", hex(&n.to_ne_bytes()), hex(blob));
        }
        dump += "DATA=END\n";
        drop(stmt);
        drop(conn);
        for e in std::fs::read_dir(&rpmdb).unwrap() {
            std::fs::remove_file(e.unwrap().path()).unwrap();
        }
        w.write("rpm/Packages.dump", &dump);
        run(Command::new("db5.3_load")
            .arg("-f")
            .arg(w.path("rpm/Packages.dump"))
            .arg(rpmdb.join("Packages")));
    }
    run(Command::new("tar")
        .args(["--owner=0", "--group=0", "--numeric-owner", "--mtime=@0"])
        .arg("-C")
        .arg(&root)
        .arg("-rf")
        .arg(w.path(rel))
        .args(["./usr/share/imgspec-hello", "./var/lib/rpm"]));
}

/// The guestfish lines that fill a mounted root with what a tar cannot carry through
/// `rootfs_tar_with`: an owner, a setuid mode, a hard link, a symlink, a device node, xattrs
/// (an SELinux label among them).
const SPECIALS: &str = "\
write /usr/bin/suid \"x\"
chown 1000 1000 /usr/bin/suid
chmod 04755 /usr/bin/suid
ln /usr/bin/suid /usr/bin/hard
ln-s suid /usr/bin/soft
mkdir-p /dev
mknod-c 0666 1 3 /dev/null
write /etc/labelled \"l\"
setxattr user.test hello 5 /etc/labelled
setxattr security.selinux system_u:object_r:etc_t:s0 26 /etc/labelled
ln-s boot/vmlinuz-6.1.0-test /vmlinuz
ln-s boot/initrd.img-6.1.0-test /initrd.img
";

/// `vm/disk.raw`: the layout a default CentOS 8 install leaves (GPT; ESP, vfat; `/boot`, xfs;
/// LVM volume group `cl` with `root` on xfs and `swap`), holding `base.tar` and [`SPECIALS`],
/// the guest's `/etc/fstab` naming all of it.
fn make_centos_like_disk(w: &Workspace) {
    make_centos_like_disk_of(w, "1200M", SPECIALS);
}

/// [`make_centos_like_disk`] of `size` (its root volume takes what the rest leaves), with the
/// guestfish lines `specials` run last.
pub(crate) fn make_centos_like_disk_of(w: &Workspace, size: &str, specials: &str) {
    std::fs::create_dir_all(w.path("vm")).unwrap();
    // The last line names a disk the VM had and the disk file does not: it must not stop the
    // import.
    let fstab = "/dev/mapper/cl-root / xfs defaults 0 0\\n/dev/sda2 /boot xfs defaults 0 0\\n\
                 /dev/sda1 /boot/efi vfat umask=0077 0 2\\n/dev/mapper/cl-swap none swap defaults 0 0\\n\
                 /dev/sdb1 /data xfs defaults 0 0\\n";
    let script = format!(
        "sparse vm/disk.raw {size}
run
part-init /dev/sda gpt
part-add /dev/sda p 2048 67583
part-add /dev/sda p 67584 723967
part-add /dev/sda p 723968 -34
part-set-gpt-type /dev/sda 1 C12A7328-F81F-11D2-BA4B-00A0C93EC93B
mkfs vfat /dev/sda1
mkfs xfs /dev/sda2
pvcreate /dev/sda3
vgcreate cl /dev/sda3
lvcreate swap cl 64
lvcreate-free root cl 100
mkswap /dev/cl/swap
mkfs xfs /dev/cl/root
mount /dev/cl/root /
mkdir /boot
mount /dev/sda2 /boot
mkdir /boot/efi
mount /dev/sda1 /boot/efi
tar-in base.tar /
write /etc/fstab \"{fstab}\"
write /boot/efi/on-the-esp \"esp\"
{specials}"
    );
    guestfish(w.dir.path(), &script);
}

/// (type, mode, uid, link target, xattrs) of each entry of a tar, by path without `./`.
type Listing = std::collections::BTreeMap<
    String,
    (
        tar::EntryType,
        u32,
        u64,
        Option<String>,
        Vec<(String, Vec<u8>)>,
        Vec<u8>,
    ),
>;

fn listing(tar_path: &Path) -> Listing {
    let mut a = tar::Archive::new(std::fs::File::open(tar_path).unwrap());
    let mut out = Listing::new();
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().to_string_lossy().into_owned();
        let path = path
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_string();
        let h = e.header().clone();
        let xattrs = e
            .pax_extensions()
            .unwrap()
            .map(|exts| {
                exts.flatten()
                    .filter_map(|x| {
                        let k = x.key().ok()?.strip_prefix("SCHILY.xattr.")?.to_string();
                        Some((k, x.value_bytes().to_vec()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let link = e
            .link_name()
            .unwrap()
            .map(|l| l.to_string_lossy().into_owned());
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data).unwrap();
        out.insert(
            path,
            (
                h.entry_type(),
                h.mode().unwrap() & 0o7777,
                h.uid().unwrap(),
                link,
                xattrs,
                data,
            ),
        );
    }
    out
}

/// A `base "tar"` tree like the one the disk test imports (fast, without libguestfs): a dpkg
/// status, a CentOS 8 os-release and one RPM in a database of format `db`.
fn tree_with_an_rpm(db: RpmDb) -> Workspace {
    let w = Workspace::new();
    w.rootfs_tar_with(
        "rootfs.tar",
        &[],
        &[
            DPKG_STATUS,
            ("etc/os-release", "ID=\"centos\"\nVERSION_ID=\"8\"\n", 0o644),
        ],
    );
    add_rpm_managed_package(&w, "rootfs.tar", db);
    w.write(
        "t.kdl",
        "image \"t\" {\n    base \"tar\" path=\"rootfs.tar\"\n    output \"tar\"\n}\n",
    );
    w
}

/// Builds `t.kdl` and checks that its SBOM lists dpkg's package and the RPM, each with its purl.
fn assert_the_sbom_lists_both(w: &Workspace) {
    w.run(&["build", "t.kdl", "--out-dir", "out"]).ok();
    let sbom: serde_json::Value =
        serde_json::from_slice(&std::fs::read(w.path("out/t/t.spdx.json")).unwrap()).unwrap();
    let listed: Vec<(&str, &str, &str)> = sbom["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["primaryPackagePurpose"] == "LIBRARY")
        .map(|p| {
            (
                p["name"].as_str().unwrap(),
                p["versionInfo"].as_str().unwrap(),
                p["externalRefs"][0]["referenceLocator"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            (
                "base-files",
                "12.4+deb12u5",
                "pkg:deb/centos/base-files@12.4+deb12u5?arch=amd64&distro=centos-8"
            ),
            (
                "imgspec-hello",
                "2:1.2-3.el9",
                "pkg:rpm/centos/imgspec-hello@1.2-3.el9?arch=noarch&distro=centos-8&epoch=2"
            ),
        ],
        "{sbom:#}"
    );
    let rpm = &sbom["packages"][2];
    assert_eq!(
        rpm["sourceInfo"],
        "built from the source RPM imgspec-hello-1.2-3.el9.src.rpm"
    );
}

/// The SBOM reads an RPM database wherever the tree came from, on a host with `rpm`; on one
/// without it, the step fails naming the package.
#[test]
fn the_sbom_lists_the_rpm_database_beside_dpkg_and_needs_the_host_rpm_for_it() {
    if !imgspec::tools::test_requires(&["rpm"]) {
        return;
    }
    let w = tree_with_an_rpm(RpmDb::Sqlite);
    // Without the host's rpm (every other program of /usr/bin on PATH): a clear error.
    let bin = w.path("no-rpm-bin");
    std::fs::create_dir_all(&bin).unwrap();
    for e in std::fs::read_dir("/usr/bin").unwrap() {
        let e = e.unwrap();
        if e.file_name() != "rpm" {
            std::os::unix::fs::symlink(e.path(), bin.join(e.file_name())).unwrap();
        }
    }
    let out = Command::new(env!("CARGO_BIN_EXE_imgspec"))
        .args(["build", "t.kdl", "--out-dir", "out"])
        .current_dir(w.dir.path())
        .env("IMGSPEC_CACHE_DIR", w.path("cache-without-rpm"))
        .env("NO_COLOR", "1")
        .env("PATH", &bin)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains("/var/lib/rpm")
            && stderr.contains("Debian package `rpm`"),
        "{stderr}"
    );
    assert_the_sbom_lists_both(&w);
}

/// EL 7 and 8 keep the RPM database in Berkeley DB (`/var/lib/rpm/Packages`): the host's rpm
/// reads it with its read-only `bdb_ro` backend.
#[test]
fn the_sbom_reads_an_el8_berkeley_db_rpm_database() {
    if !imgspec::tools::test_requires(&["rpm", "db5.3-util"]) {
        return;
    }
    let w = tree_with_an_rpm(RpmDb::BerkeleyDb);
    assert_the_sbom_lists_both(&w);
}

#[test]
#[ignore = "libguestfs' appliance boots under TCG: a few minutes in all; root"]
fn a_hand_installed_disk_becomes_a_generalised_reproducible_image() {
    if !imgspec::tools::test_requires(&["libguestfs-tools", "linux-image-amd64", "libguestfs-xfs"])
    {
        return;
    }
    if !imgspec::tools::test_requires(&["rpm"]) {
        return;
    }
    let w = Workspace::new();
    let files: Vec<_> = LEFTOVERS.iter().copied().chain([DPKG_STATUS]).collect();
    w.rootfs_tar_with("base.tar", &[], &files);
    add_rpm_managed_package(&w, "base.tar", RpmDb::Sqlite);
    make_centos_like_disk(&w);
    qemu_img(
        w.dir.path(),
        &["convert", "-O", "vmdk", "vm/disk.raw", "vm/disk.vmdk"],
    );
    qemu_img(
        w.dir.path(),
        &["convert", "-O", "vdi", "vm/disk.raw", "vm/disk.vdi"],
    );
    std::fs::remove_file(w.path("vm/disk.raw")).unwrap();
    // The vmdk published, as a cloud image is: by URL, with its SHA-256.
    let http = Http::serve(&w.path("vm"));
    let url = format!("http://127.0.0.1:{}/disk.vmdk", http.1);
    let vmdk_sha = sha256(&w.path("vm/disk.vmdk"));
    w.write(
        "from-vm.kdl",
        &(r#"
image "from-vmdk" {
    base "image" path="vm/disk.vmdk"
    run "echo imported > /etc/after-import"
    output "tar"
}
image "from-vdi" {
    base "image" path="vm/disk.vdi" keep="logs hostname"
    disk table="gpt" size="256MiB" {
        partition "root" type="root" format="ext4" mount="/"
    }
    output "tar" "partition"
}
"#
        .to_string()
            + &format!(
                "image \"from-url\" {{\n    base \"image\" url=\"{url}\" sha256=\"{vmdk_sha}\" keep=\"logs hostname\"\n    output \"tar\"\n}}\n"
            )),
    );
    let doctor = w.run(&["doctor", "from-vm.kdl"]).ok();
    assert!(
        doctor.stdout.contains("libguestfs: the appliance starts"),
        "{}",
        doctor.stdout
    );
    w.run(&["build", "from-vm.kdl", "--out-dir", "out"]).ok();

    let t = listing(&w.path("out/from-vmdk/from-vmdk.tar"));
    let get = |p: &str| {
        t.get(p)
            .unwrap_or_else(|| panic!("`{p}` is not in the imported tree: {:?}", t.keys()))
    };
    // Exact: owners, modes, hard links, symlinks, device nodes, xattrs with the SELinux label.
    let suid = get("usr/bin/suid");
    let hard = get("usr/bin/hard");
    let (file, link) = if suid.0 == tar::EntryType::Regular {
        (suid, hard)
    } else {
        (hard, suid)
    };
    assert_eq!((file.1, file.2), (0o4755, 1000), "setuid file of uid 1000");
    assert_eq!(
        link.0,
        tar::EntryType::Link,
        "the other name is a hard link"
    );
    assert_eq!(get("usr/bin/soft").3.as_deref(), Some("suid"));
    assert_eq!(get("dev/null").0, tar::EntryType::Char);
    let xattrs = &get("etc/labelled").4;
    assert!(
        xattrs.contains(&("user.test".into(), b"hello".to_vec()))
            && xattrs.contains(&(
                "security.selinux".into(),
                b"system_u:object_r:etc_t:s0".to_vec()
            )),
        "xattrs: {xattrs:?}"
    );
    // Assembled from the guest's fstab: /boot (xfs) and /boot/efi (vfat) are in the tree.
    assert_eq!(get("boot/vmlinuz-6.1.0-test").5, b"KERNEL");
    assert_eq!(get("boot/efi/on-the-esp").5, b"esp");
    // Generalised.
    assert_eq!(get("etc/machine-id").5, b"");
    assert_eq!(get("etc/hostname").5, b"localhost\n");
    for gone in [
        "etc/ssh/ssh_host_ed25519_key",
        "var/log/syslog",
        "root/.bash_history",
        "home/ops/.bash_history",
        "tmp/junk",
        "var/lib/dhcp/dhclient.eth0.leases",
        "etc/udev/rules.d/70-persistent-net.rules",
        "var/lib/cloud/instances",
    ] {
        assert!(!t.contains_key(gone), "`{gone}` was not cleaned away");
    }
    assert!(t.contains_key("etc/systemd/system/imgspec-ssh-keygen.service"));
    // The layers after the base apply.
    assert_eq!(get("etc/after-import").5, b"imported\n");
    // The SBOM lists dpkg's package and the RPM database's, each with its purl.
    assert!(t.contains_key("var/lib/rpm/rpmdb.sqlite"));
    let sbom: serde_json::Value = serde_json::from_slice(
        &std::fs::read(w.path("out/from-vmdk/from-vmdk.spdx.json")).unwrap(),
    )
    .unwrap();
    let purls: Vec<&str> = sbom["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["externalRefs"][0]["referenceLocator"].as_str())
        .collect();
    assert_eq!(
        purls,
        [
            "pkg:deb/debian/base-files@12.4+deb12u5?arch=amd64&distro=debian-12",
            "pkg:rpm/debian/imgspec-hello@1.2-3.el9?arch=noarch&distro=debian-12&epoch=2",
        ],
        "{sbom:#}"
    );

    // `keep=` keeps; the partition set takes the image's own kernel and initrd.
    let v = listing(&w.path("out/from-vdi/from-vdi.tar"));
    assert_eq!(v["var/log/syslog"].5, b"a log line\n");
    assert_eq!(v["etc/hostname"].5, b"handmade\n");
    assert!(!v.contains_key("root/.bash_history"));
    let set = w.path("out/from-vdi");
    assert_eq!(
        std::fs::read(set.join("from-vdi.vmlinuz")).unwrap(),
        b"KERNEL"
    );
    assert_eq!(
        std::fs::read(set.join("from-vdi.initrd")).unwrap(),
        b"INITRD"
    );
    assert!(set.join("from-vdi.qcow2").is_file());
    // The guest's fstab is rewritten for the filesystem imgspec makes (by its new UUID).
    let fstab = String::from_utf8_lossy(&v["etc/fstab"].5).into_owned();
    assert!(
        fstab.starts_with("# written by imgspec")
            && fstab.contains("UUID=")
            && !fstab.contains("cl-root"),
        "{fstab}"
    );
    // The same disk by URL (as vmdk) and from a file (as vdi), the same cleanings: the same tree
    // (but the fstab of `from-vdi`'s disk).
    let u = listing(&w.path("out/from-url/from-url.tar"));
    let differ: Vec<(&String, Option<&_>, Option<&_>)> = u
        .keys()
        .chain(v.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|p| *p != "etc/fstab" && u.get(*p) != v.get(*p))
        .map(|p| (p, u.get(p), v.get(p)))
        .collect();
    assert!(
        differ.is_empty(),
        "the downloaded vmdk and the vdi gave other trees: {differ:?}"
    );

    // Touching the disks changes nothing: no step runs (the digest is taken again, once, and is
    // the same).
    let sums = |dir: &str| {
        ["from-vmdk", "from-vdi", "from-url"]
            .map(|i| std::fs::read_to_string(w.path(&format!("{dir}/{i}/SHA256SUMS"))).unwrap())
    };
    let first = sums("out");
    for d in ["vm/disk.vmdk", "vm/disk.vdi"] {
        let f = std::fs::File::options()
            .write(true)
            .open(w.path(d))
            .unwrap();
        f.set_modified(std::time::SystemTime::now()).unwrap();
    }
    let again = w.run(&["build", "from-vm.kdl", "--out-dir", "out"]).ok();
    assert!(
        again.stderr.contains("0 steps built"),
        "a touched disk rebuilt:\n{}",
        again.stderr
    );
    // A change above the base (the vmdk image's `run` command) rebuilds what follows it, never
    // the import.
    let spec = std::fs::read_to_string(w.path("from-vm.kdl")).unwrap();
    w.write(
        "from-vm.kdl",
        &spec.replace("echo imported >", "echo imported again >"),
    );
    let t = std::time::Instant::now();
    let changed = w.run(&["build", "from-vm.kdl", "--out-dir", "out"]).ok();
    eprintln!(
        "rebuild after a change above the base: {:.1?}\n{}",
        t.elapsed(),
        changed.stderr
    );
    assert!(
        !changed.stderr.contains("built    base image"),
        "the import ran again:\n{}",
        changed.stderr
    );
    assert!(
        changed.stderr.contains("built    run"),
        "{}",
        changed.stderr
    );
    w.write("from-vm.kdl", &spec);
    // From an empty cache: the same bytes.
    w.run_with_cache("cache2", &["build", "from-vm.kdl", "--out-dir", "out2"])
        .ok();
    assert_eq!(first, sums("out2"), "two imports gave other bytes");
}

#[test]
#[ignore = "libguestfs' appliance boots under TCG: a few minutes in all; root"]
fn disks_that_must_not_be_read_are_refused_with_the_reason() {
    if !imgspec::tools::test_requires(&[
        "libguestfs-tools",
        "linux-image-amd64",
        "libguestfs-xfs",
        "cryptsetup-bin",
    ]) {
        return;
    }
    let w = Workspace::new();
    w.rootfs_tar_with("base.tar", &[], LEFTOVERS);
    std::fs::create_dir_all(w.path("vm")).unwrap();
    // Two systems on one disk, each root naming itself in its fstab.
    guestfish(
        w.dir.path(),
        "sparse vm/two.raw 256M
run
part-init /dev/sda gpt
part-add /dev/sda p 2048 262143
part-add /dev/sda p 262144 -34
mkfs ext4 /dev/sda1
mkfs ext4 /dev/sda2
mount /dev/sda1 /
tar-in base.tar /
write /etc/fstab \"/dev/sda1 / ext4 defaults 0 1\\n\"
umount /
mount /dev/sda2 /
tar-in base.tar /
write /etc/fstab \"/dev/sda2 / ext4 defaults 0 1\\n\"
write /etc/second \"2\"
",
    );
    let d = w.dir.path();
    qemu_img(d, &["convert", "-O", "qcow2", "vm/two.raw", "vm/two.qcow2"]);
    // An encrypted install: the ESP and `/boot` in the clear, the root in a LUKS2 volume (made
    // by the host's cryptsetup in a plain file, then written into the partition).
    let luks = w.path("vm/luks.img");
    std::fs::write(w.path("vm/key"), "secret").unwrap();
    std::fs::File::create(&luks)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    let out = Command::new("cryptsetup")
        .args([
            "luksFormat",
            "--batch-mode",
            "--type",
            "luks2",
            "--pbkdf",
            "pbkdf2",
        ])
        .args(["--pbkdf-force-iterations", "1000"])
        .arg(&luks)
        .arg(w.path("vm/key"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    guestfish(
        d,
        "sparse vm/encrypted.raw 128M
run
part-init /dev/sda gpt
part-add /dev/sda p 2048 67583
part-add /dev/sda p 67584 133119
part-add /dev/sda p 133120 -34
part-set-gpt-type /dev/sda 1 C12A7328-F81F-11D2-BA4B-00A0C93EC93B
mkfs vfat /dev/sda1
mkfs ext4 /dev/sda2
mount /dev/sda2 /
write /vmlinuz-6.1.0-test \"KERNEL\"
umount /
upload vm/luks.img /dev/sda3
",
    );
    // A qcow2 over a backing file, one whose data is in another file, a format not taken, a
    // file that is no disk, and a qcow2 cut short.
    qemu_img(
        d,
        &[
            "create",
            "-f",
            "qcow2",
            "-F",
            "raw",
            "-b",
            "two.raw",
            "vm/backed.qcow2",
        ],
    );
    qemu_img(
        d,
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "data_file=vm/data.raw",
            "vm/external.qcow2",
            "64M",
        ],
    );
    qemu_img(d, &["create", "-f", "qed", "vm/disk.qed", "64M"]);
    w.write("vm/notes.txt", "this is not a disk\n");
    let whole = std::fs::read(w.path("vm/two.qcow2")).unwrap();
    std::fs::write(w.path("vm/cut.qcow2"), &whole[..whole.len() / 3]).unwrap();

    let http = Http::serve(&w.path("vm"));
    let wrong_sha = format!(
        r#"url="http://127.0.0.1:{}/two.qcow2" sha256="{}""#,
        http.1,
        "0".repeat(64)
    );
    let cases: &[(&str, &str, &str)] = &[
        ("wrong-sha", &wrong_sha, "is not the file asked for"),
        ("backed", r#"path="vm/backed.qcow2""#, "has a backing file"),
        (
            "external",
            r#"path="vm/external.qcow2""#,
            "its data is in another file",
        ),
        ("qed", r#"path="vm/disk.qed""#, "it is a `qed` image"),
        (
            "text",
            r#"path="vm/notes.txt""#,
            "no operating system found",
        ),
        ("cut", r#"path="vm/cut.qcow2""#, "base image cut.qcow2"),
        ("two", r#"path="vm/two.qcow2""#, "holds 2 operating systems"),
        (
            "encrypted",
            r#"path="vm/encrypted.raw""#,
            "has an encrypted (LUKS) volume",
        ),
        (
            "wrong-root",
            r#"path="vm/two.qcow2" root="/dev/sdz9""#,
            "`root=\"/dev/sdz9\"` is not an operating system's root",
        ),
    ];
    let mut spec = String::new();
    for (name, props, _) in cases {
        spec +=
            &format!("image \"{name}\" {{\n    base \"image\" {props}\n    output \"tar\"\n}}\n");
    }
    spec += "image \"chosen\" {\n    base \"image\" path=\"vm/two.qcow2\" root=\"/dev/sda2\"\n    output \"tar\"\n}\n";
    w.write("bad.kdl", &spec);
    let r = w.run(&["build", "bad.kdl", "--out-dir", "out"]);
    assert_ne!(r.code, 0);
    let text = r.stderr.replace("\n  │ ", " ").replace('\n', " ");
    for (name, _, why) in cases {
        assert!(
            text.contains(why),
            "image `{name}`: no `{why}` in:\n{}",
            r.stderr
        );
        assert!(
            !w.path(&format!("out/{name}")).exists(),
            "image `{name}` left an output folder"
        );
    }
    // `root=` chooses among the systems.
    let chosen = listing(&w.path("out/chosen/chosen.tar"));
    assert_eq!(chosen["etc/second"].5, b"2");
}

/// The layout Fedora's installer and cloud images use, on an MBR disk: `/boot` on ext4, and one
/// btrfs filesystem holding the subvolumes `root` and `home`, which the guest's fstab mounts
/// with `subvol=`. Both subvolumes and `/boot` come out, and nothing of the top level beside
/// them.
#[test]
#[ignore = "libguestfs' appliance boots under TCG: a few minutes in all; root"]
fn an_mbr_disk_with_btrfs_subvolumes_is_imported_as_its_fstab_says() {
    if !imgspec::tools::test_requires(&["libguestfs-tools", "linux-image-amd64"]) {
        return;
    }
    let w = Workspace::new();
    w.rootfs_tar_with("base.tar", &[], LEFTOVERS);
    std::fs::create_dir_all(w.path("vm")).unwrap();
    guestfish(
        w.dir.path(),
        "sparse vm/fedora.raw 512M
run
part-init /dev/sda mbr
part-add /dev/sda p 2048 264191
part-add /dev/sda p 264192 -1
mkfs ext4 /dev/sda1
mkfs btrfs /dev/sda2
mount /dev/sda2 /
btrfs-subvolume-create /root
btrfs-subvolume-create /home
write /top-level-only \"not in any subvolume the guest mounts\"
umount /
mount-options subvol=root /dev/sda2 /
mkdir /home
mount-options subvol=home /dev/sda2 /home
mkdir /boot
mount /dev/sda1 /boot
tar-in base.tar /
write /etc/fstab \"/dev/sda2 / btrfs subvol=root,compress=zstd:1 0 0\\n/dev/sda1 /boot ext4 defaults 1 2\\n/dev/sda2 /home btrfs subvol=home,compress=zstd:1 0 0\\n\"
write /etc/os-release \"NAME=Fedora Linux\\nID=fedora\\nVERSION_ID=41\\nPRETTY_NAME=Fedora Linux 41\\n\"
mkdir-p /home/ops
write /home/ops/notes \"mine\"
",
    );
    w.write(
        "fedora.kdl",
        "image \"fedora-like\" {\n    base \"image\" path=\"vm/fedora.raw\"\n    output \"tar\"\n}\n",
    );
    w.run(&["build", "fedora.kdl", "--out-dir", "out"]).ok();
    let t = listing(&w.path("out/fedora-like/fedora-like.tar"));
    for p in [
        "home/ops/notes",
        "boot/vmlinuz-6.1.0-test",
        "etc/fstab",
        "usr/bin/env",
    ] {
        assert!(t.contains_key(p), "`{p}` is not in the imported tree");
    }
    assert!(
        !t.contains_key("top-level-only") && !t.contains_key("root/etc/fstab"),
        "the btrfs top level came out: {:?}",
        t.keys().take(20).collect::<Vec<_>>()
    );
}
