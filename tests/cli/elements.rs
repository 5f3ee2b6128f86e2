//! `element` and `user` layers end to end with no network: the tiny root filesystem of
//! `common.rs` plus this host's `useradd` (the real one, run in the chroot), a stand-in
//! `apt-get` that records what it is asked to install and lays what the package would
//! (`/fake-debs/PKG/`) into the image, and a stand-in `locale-gen`. What the real Debian packages
//! do with these files is checked by the ignored test at the end (network, minutes).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::common::{sha256, Workspace};

const FAKE_APT: &str = r#"#!/bin/sh
# Stand-in for apt-get: records the packages it is asked to install, and lays what each would
# install (/fake-debs/PKG/) into the image.
set -e
while [ "$1" = -o ]; do shift 2; done
case "$1" in
    update|clean) exit 0 ;;
    install) shift ;;
    *) echo "fake apt-get: unexpected $1" >&2; exit 100 ;;
esac
mkdir -p /var/lib/fake-apt
for a in "$@"; do
    case "$a" in -*) continue ;; esac
    echo "$a" >> /var/lib/fake-apt/installed
    if [ -d "/fake-debs/$a" ]; then cp -R "/fake-debs/$a/." /; fi
done
"#;

const FAKE_LOCALE_GEN: &str = r#"#!/bin/sh
# Stand-in for locales' locale-gen: "compiles" the enabled lines of /etc/locale.gen.
set -e
mkdir -p /usr/lib/locale
grep -v '^#' /etc/locale.gen | grep . > /usr/lib/locale/locale-archive
"#;

const LOCALE_GEN: &str = "\
# This file lists locales that you wish to have built.
# en_US.UTF-8 UTF-8
# fr_FR.UTF-8 UTF-8
";

const LOGIN_DEFS: &str = "\
UID_MIN 1000
UID_MAX 60000
GID_MIN 1000
GID_MAX 60000
PASS_MAX_DAYS 99999
PASS_MIN_DAYS 0
PASS_WARN_AGE 7
HOME_MODE 0700
USERGROUPS_ENAB yes
";

const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIImgspecTestKey ops@example";
const HASH: &str = "$6$saltsalt$0123456789abcdefghijklmnopqrstuvwxyzABCDEF";

const SPEC: &str = r#"
image "el" {
    base "tar" path="rootfs.tar"
    element "dhcp-all-interfaces"
    element "serial-console" port="ttyS1" speed="57600"
    element "timezone" zone="Europe/Paris"
    element "locale" lang="fr_FR.UTF-8"
    element "cloud-init" datasources="ConfigDrive NoCloud"
    element "growroot"
    element "grub2"
    user "ops" groups="adm" ssh-key="KEY" sudo=#true shell="/bin/sh"
    user "dev" password-hash="HASH" shell="/bin/sh"
    element "hostname" name="web1.example.org"
    output "tar"
}
"#;

/// base, the implied package set, 8 elements, 2 users, the output, the SBOM and the manifest.
const STEPS: usize = 15;

/// A workspace whose `rootfs.tar` can run `useradd`, a stand-in apt and locale-gen.
fn workspace() -> Workspace {
    let w = Workspace::new();
    w.rootfs_tar_with(
        "rootfs.tar",
        &["useradd", "cp", "grep"],
        &[
            ("usr/bin/apt-get", FAKE_APT, 0o755),
            ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n", 0o644),
            ("etc/group", "root:x:0:\nadm:x:4:\nusers:x:100:\n", 0o644),
            ("etc/shadow", "root:*:19000:0:99999:7:::\n", 0o640),
            ("etc/gshadow", "root:*::\nadm:*::\nusers:*::\n", 0o640),
            ("etc/login.defs", LOGIN_DEFS, 0o644),
            ("etc/skel/.profile", "# skel\n", 0o644),
            (
                "usr/lib/systemd/system/serial-getty@.service",
                "[Unit]\nDescription=Serial Getty on %I\n",
                0o644,
            ),
            (
                "fake-debs/tzdata/usr/share/zoneinfo/Europe/Paris",
                "TZif2\n",
                0o644,
            ),
            ("fake-debs/locales/etc/locale.gen", LOCALE_GEN, 0o644),
            (
                "fake-debs/locales/usr/sbin/locale-gen",
                FAKE_LOCALE_GEN,
                0o755,
            ),
            (
                "fake-debs/cloud-init/etc/cloud/cloud.cfg",
                "# cloud.cfg\n",
                0o644,
            ),
        ],
    );
    w.write("el.kdl", &SPEC.replace("KEY", KEY).replace("HASH", HASH));
    w
}

/// Extracts a tar as root, keeping owners and modes.
fn extract(w: &Workspace, tar: &str, dir: &str) -> PathBuf {
    let dest = w.path(dir);
    std::fs::create_dir_all(&dest).unwrap();
    let out = std::process::Command::new("tar")
        .args(["--numeric-owner", "--same-owner", "-xpf"])
        .arg(w.path(tar))
        .arg("-C")
        .arg(&dest)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dest
}

fn read(root: &Path, rel: &str) -> String {
    std::fs::read_to_string(root.join(rel)).unwrap_or_else(|e| panic!("/{rel}: {e}"))
}

/// (mode, uid, gid) of a path, not following a last symlink.
fn meta(root: &Path, rel: &str) -> (u32, u32, u32) {
    let m = std::fs::symlink_metadata(root.join(rel)).unwrap_or_else(|e| panic!("/{rel}: {e}"));
    (m.permissions().mode() & 0o7777, m.uid(), m.gid())
}

fn link(root: &Path, rel: &str) -> String {
    std::fs::read_link(root.join(rel))
        .unwrap_or_else(|e| panic!("/{rel} is not a link: {e}"))
        .to_string_lossy()
        .into_owned()
}

#[test]
fn elements_and_users_write_their_files_and_rebuild_from_cache() {
    let w = workspace();
    let r = w.run(&["build", "el.kdl"]).ok();
    assert!(
        r.stderr
            .contains(&format!("{STEPS} steps built, 0 cached, 0 failed")),
        "{}",
        r.stderr
    );
    let root = extract(&w, "out/el/el.tar", "x");

    // The plan put every package the layers need in one set after the base, sorted.
    assert_eq!(
        read(&root, "var/lib/fake-apt/installed"),
        "cloud-guest-utils\ncloud-init\ngrub-common\ngrub-efi-amd64-bin\ngrub-pc-bin\n\
         grub2-common\nifupdown\nisc-dhcp-client\nlocales\npasswd\nsudo\ntzdata\n"
    );

    // dhcp-all-interfaces
    let dhcp = read(&root, "etc/network/interfaces.d/imgspec-dhcp");
    for l in [
        "auto /en*=eth",
        "allow-hotplug /eth*=eth",
        "iface eth inet dhcp",
    ] {
        assert!(dhcp.lines().any(|x| x == l), "{l}: {dhcp}");
    }
    assert_eq!(
        meta(&root, "etc/network/interfaces.d/imgspec-dhcp"),
        (0o644, 0, 0)
    );
    assert!(read(&root, "etc/network/interfaces")
        .lines()
        .any(|l| l == "source /etc/network/interfaces.d/*"));

    // serial-console
    assert_eq!(
        link(
            &root,
            "etc/systemd/system/getty.target.wants/serial-getty@ttyS1.service"
        ),
        "/lib/systemd/system/serial-getty@.service"
    );
    assert!(read(
        &root,
        "etc/systemd/system/serial-getty@ttyS1.service.d/imgspec-speed.conf"
    )
    .contains(" 57600 - $TERM\n"));

    // timezone
    assert_eq!(
        link(&root, "etc/localtime"),
        "/usr/share/zoneinfo/Europe/Paris"
    );
    assert_eq!(read(&root, "etc/timezone"), "Europe/Paris\n");

    // locale: the line enabled before locale-gen ran in the image.
    assert_eq!(
        read(&root, "etc/locale.gen"),
        LOCALE_GEN.replace("# fr_FR", "fr_FR")
    );
    assert_eq!(
        read(&root, "usr/lib/locale/locale-archive"),
        "fr_FR.UTF-8 UTF-8\n"
    );
    assert!(read(&root, "etc/default/locale").ends_with("\nLANG=fr_FR.UTF-8\n"));

    // cloud-init
    assert!(
        read(&root, "etc/cloud/cloud.cfg.d/91-imgspec-datasources.cfg")
            .ends_with("\ndatasource_list: [ ConfigDrive, NoCloud, None ]\n")
    );

    // growroot
    assert_eq!(
        meta(&root, "usr/local/sbin/imgspec-growroot"),
        (0o755, 0, 0)
    );
    assert!(read(&root, "usr/local/sbin/imgspec-growroot").contains("growpart \"$disk\" \"$part\""));
    assert_eq!(
        link(
            &root,
            "etc/systemd/system/sysinit.target.wants/imgspec-growroot.service"
        ),
        "/etc/systemd/system/imgspec-growroot.service"
    );
    assert!(read(&root, "etc/systemd/system/imgspec-growroot.service")
        .contains("ExecStart=/usr/local/sbin/imgspec-growroot\n"));

    // grub2
    assert!(read(&root, "etc/default/grub")
        .contains("\nGRUB_CMDLINE_LINUX=\"console=tty0 console=ttyS0,115200\"\n"));

    // users: the first free ids, the distribution's login.defs, the epoch's day in shadow.
    let passwd = read(&root, "etc/passwd");
    assert!(
        passwd.contains("\nops:x:1000:1000::/home/ops:/bin/sh\n"),
        "{passwd}"
    );
    assert!(
        passwd.contains("\ndev:x:1001:1001::/home/dev:/bin/sh\n"),
        "{passwd}"
    );
    let group = read(&root, "etc/group");
    assert!(group.contains("\nadm:x:4:ops\n"), "{group}");
    assert!(group.contains("\nops:x:1000:\n"), "{group}");
    let shadow = read(&root, "etc/shadow");
    assert!(shadow.contains("\nops:!:19518:0:99999:7:::\n"), "{shadow}");
    assert!(
        shadow.contains(&format!("\ndev:{HASH}:19518:0:99999:7:::\n")),
        "{shadow}"
    );
    assert_eq!(meta(&root, "etc/shadow"), (0o640, 0, 0));
    assert_eq!(meta(&root, "home/ops"), (0o700, 1000, 1000));
    assert_eq!(meta(&root, "home/ops/.profile").1, 1000, "skel copied");
    assert_eq!(meta(&root, "home/ops/.ssh"), (0o700, 1000, 1000));
    assert_eq!(
        meta(&root, "home/ops/.ssh/authorized_keys"),
        (0o600, 1000, 1000)
    );
    assert_eq!(
        read(&root, "home/ops/.ssh/authorized_keys"),
        format!("{KEY}\n")
    );
    assert_eq!(meta(&root, "etc/sudoers.d/ops"), (0o440, 0, 0));
    assert!(read(&root, "etc/sudoers.d/ops").ends_with("\nops ALL=(ALL:ALL) NOPASSWD: ALL\n"));
    assert!(!root.join("home/dev/.ssh").exists());
    assert!(!root.join("etc/sudoers.d/dev").exists());

    // hostname
    assert_eq!(read(&root, "etc/hostname"), "web1.example.org\n");
    assert!(read(&root, "etc/hosts")
        .lines()
        .any(|l| l == "127.0.1.1\tweb1.example.org web1"));

    // Again: everything from the cache.
    let r = w.run(&["build", "el.kdl"]).ok();
    assert!(
        r.stderr
            .contains(&format!("0 steps built, {STEPS} cached, 0 failed")),
        "{}",
        r.stderr
    );

    // A changed parameter rebuilds that element and what follows, and `plan` says why.
    w.write(
        "el.kdl",
        &SPEC
            .replace("KEY", KEY)
            .replace("HASH", HASH)
            .replace("web1.example.org", "web2"),
    );
    let plan = w.run(&["plan", "el.kdl"]).ok().stdout;
    let line = plan
        .lines()
        .find(|l| l.trim_start().starts_with("element hostname"))
        .unwrap_or_else(|| panic!("{plan}"));
    assert!(
        line.contains("param `param:name`: `web1.example.org` → `web2`"),
        "{plan}"
    );
    let r = w.run(&["build", "el.kdl"]).ok();
    assert!(
        r.stderr
            .contains(&format!("4 steps built, {} cached", STEPS - 4)),
        "{}",
        r.stderr
    );
}

#[test]
fn two_cold_builds_of_elements_and_users_give_the_same_tar() {
    let w = workspace();
    w.run_with_cache("cache-a", &["build", "el.kdl", "--out-dir", "out-a"])
        .ok();
    w.run_with_cache("cache-b", &["build", "el.kdl", "--out-dir", "out-b"])
        .ok();
    assert_eq!(
        sha256(&w.path("out-a/el/el.tar")),
        sha256(&w.path("out-b/el/el.tar"))
    );
}

#[test]
fn a_missing_group_zone_or_locale_fails_its_step_by_name() {
    let w = workspace();
    let cases = [
        (
            "user \"ops\" groups=\"adm wheel\" shell=\"/bin/sh\"",
            "step `user ops` failed",
            "user `ops`: group `wheel` does not exist in the image",
        ),
        (
            "user \"ops\"",
            "step `user ops` failed",
            "user `ops`: shell `/bin/bash` does not exist in the image",
        ),
        (
            "element \"timezone\" zone=\"Mars/Olympus\"",
            "step `element timezone zone=Mars/Olympus` failed",
            "time zone `Mars/Olympus` does not exist in the image",
        ),
        (
            "element \"locale\" lang=\"xx_YY.UTF-8\"",
            "step `element locale lang=xx_YY.UTF-8` failed",
            "locale `xx_YY.UTF-8` is not listed in the image's /etc/locale.gen",
        ),
    ];
    for (i, (layer, step, why)) in cases.iter().enumerate() {
        let spec = format!("bad{i}.kdl");
        w.write(
            &spec,
            &format!(
                "image \"bad{i}\" {{\n    base \"tar\" path=\"rootfs.tar\"\n    {layer}\n    output \"tar\"\n}}\n"
            ),
        );
        let r = w.run(&["build", &spec]);
        assert_eq!(r.code, 1, "{layer}: {}", r.stderr);
        assert!(r.stderr.contains(step), "{layer}: {}", r.stderr);
        assert!(r.stderr.contains(why), "{layer}: {}", r.stderr);
        assert!(!w.path(&format!("out/bad{i}/bad{i}.tar")).exists());
    }
}

/// A parameter value no image could take is refused by `check`, at its span, before the base
/// and the package set that would come before the element are built (it used to fail the
/// element's step, after them).
#[test]
fn bad_element_parameters_are_refused_by_check_before_anything_is_built() {
    let w = workspace();
    let bad = SPEC
        .replace("speed=\"57600\"", "speed=\"fast\"")
        .replace("zone=\"Europe/Paris\"", "zone=\"../../etc/passwd\"")
        .replace("lang=\"fr_FR.UTF-8\"", "lang=\"fr FR\"")
        .replace(
            "datasources=\"ConfigDrive NoCloud\"",
            "datasources=\"None\"",
        )
        .replace("name=\"web1.example.org\"", "name=\"web_1\"")
        .replace("KEY", KEY)
        .replace("HASH", HASH);
    assert_ne!(bad, SPEC.replace("KEY", KEY).replace("HASH", HASH));
    w.write("bad.kdl", &bad);
    for command in ["check", "build"] {
        let r = w.run(&[command, "bad.kdl"]);
        assert_eq!(r.code, 2, "{command}: {}", r.stderr);
        assert_eq!(
            r.stderr.matches("spec::bad-element-param").count(),
            5,
            "{command}: {}",
            r.stderr
        );
        for why in [
            "`speed` of element `serial-console`: `fast` is not a baud rate",
            "`zone` of element `timezone`: `../../etc/passwd` is not a time zone name",
            "`lang` of element `locale`: `fr FR` is not a locale name",
            "`datasources` of element `cloud-init`: `None` names no datasource",
            "`name` of element `hostname`: `web_1` is not a host name",
        ] {
            assert!(r.stderr.contains(why), "{command}: {why}: {}", r.stderr);
        }
    }
    assert!(!w.path("out/el").exists());
    assert!(
        !w.path("cache/blobs-v1").exists()
            || std::fs::read_dir(w.path("cache/blobs-v1"))
                .unwrap()
                .next()
                .is_none(),
        "something was built"
    );
}

/// `imgspec` for the password of `ops` in the Debian test (`openssl passwd -6 -salt imgspecsalt`).
const DEBIAN_HASH: &str =
    "$6$imgspecsalt$eZjSHVKQ3MxyqoHoxkY.s4mkWdQSgOQUS8kk4UYF/92HLHWi5iHdZ5D9vcyC/ofvXAk/01WLLKJyzKDzNLLT40";

const DEBIAN_SPEC: &str = r#"
image "el-debian" {
    base "debian" suite="bookworm" variant="minbase"
    packages "system" linux-image-amd64 systemd-sysv udev openssh-server
    element "dhcp-all-interfaces"
    element "growroot"
    element "serial-console"
    element "timezone" zone="Europe/Paris"
    element "locale" lang="fr_FR.UTF-8"
    user "ops" groups="sudo adm" ssh-key="KEY" sudo=#true password-hash="HASH"
    element "hostname" name="el-debian.example.org"
    bootloader "grub-efi" cmdline="console=tty0 console=ttyS0,115200"
    disk table="gpt" size="2GiB" {
        partition "esp" type="esp" size="200MiB" format="vfat" mount="/boot/efi"
        partition "root" type="root" format="ext4" mount="/"
    }
    output "qcow2" "tar"
}
image "el-cloud" {
    base "debian" suite="bookworm" variant="minbase"
    element "cloud-init"
    element "grub2"
    output "tar"
}
"#;

/// Runs `sh -c SCRIPT` chrooted in an extracted image; its standard output.
fn in_image(root: &Path, script: &str) -> String {
    let out = std::process::Command::new("chroot")
        .arg(root)
        .args(["/bin/sh", "-c", script])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A VM on the serial console: what it printed, and a way to type.
struct Console {
    child: std::process::Child,
    input: std::process::ChildStdin,
    rx: std::sync::mpsc::Receiver<Vec<u8>>,
    seen: String,
}

impl Drop for Console {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Console {
    fn start(args: &[String]) -> Console {
        use std::io::Read;
        let mut child = std::process::Command::new("qemu-system-x86_64")
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("qemu-system-x86_64");
        let input = child.stdin.take().unwrap();
        let mut out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Console {
            child,
            input,
            rx,
            seen: String::new(),
        }
    }

    /// Waits for one of `pats`; returns the text before it (the text after stays for the next
    /// wait), or None on timeout or when QEMU exits.
    fn expect(&mut self, pats: &[&str], secs: u64) -> Option<String> {
        let end = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            if let Some((at, len)) = pats
                .iter()
                .filter_map(|p| self.seen.find(p).map(|i| (i, p.len())))
                .min()
            {
                let before = self.seen[..at].to_string();
                self.seen.drain(..at + len);
                return Some(before);
            }
            let left = end.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return None;
            }
            match self
                .rx
                .recv_timeout(left.min(std::time::Duration::from_secs(1)))
            {
                Ok(b) => {
                    let text = String::from_utf8_lossy(&b).replace('\r', "");
                    eprint!("{text}");
                    self.seen.push_str(&text);
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(_) => return None,
            }
        }
    }

    fn send(&mut self, s: &str) {
        use std::io::Write;
        self.input.write_all(s.as_bytes()).unwrap();
        self.input.flush().unwrap();
    }
}

fn qemu_args(overlay: &Path, vars: &Path, kvm: bool) -> Vec<String> {
    let (accel, cpu) = if kvm { ("kvm", "host") } else { ("tcg", "max") };
    [
        "-accel",
        accel,
        "-machine",
        "q35",
        "-cpu",
        cpu,
        "-smp",
        "2",
        "-m",
        "1024",
        "-display",
        "none",
        "-monitor",
        "none",
        "-serial",
        "stdio",
        "-no-reboot",
        "-nic",
        "user,model=virtio-net-pci",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        "-drive".into(),
        format!("file={},if=virtio,format=qcow2", overlay.display()),
        "-drive".into(),
        "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd".into(),
        "-drive".into(),
        format!("if=pflash,format=raw,unit=1,file={}", vars.display()),
    ])
    .collect()
}

#[test]
#[ignore = "builds and boots a real Debian image with elements and a user: minutes, root and the host's apt mirror"]
fn debian_elements_and_user_work_in_a_booted_image() {
    let w = Workspace::new();
    w.write(
        "el.kdl",
        &DEBIAN_SPEC.replace("KEY", KEY).replace("HASH", DEBIAN_HASH),
    );
    let r = w.run(&["build", "el.kdl"]).ok();
    eprintln!("{}", r.stderr);

    // The tree, with Debian's own packages and tools.
    let root = extract(&w, "out/el-debian/el-debian.tar", "x");
    assert!(read(&root, "etc/network/interfaces")
        .lines()
        .any(|l| l.trim() == "source /etc/network/interfaces.d/*"));
    assert!(read(&root, "etc/passwd").contains("\nops:x:1000:1000::/home/ops:/bin/bash\n"));
    assert!(read(&root, "etc/shadow").contains(&format!("\nops:{DEBIAN_HASH}:19518:")));
    assert!(read(&root, "etc/group").contains("\nsudo:x:27:ops\n"));
    assert_eq!(meta(&root, "home/ops/.ssh"), (0o700, 1000, 1000));
    assert_eq!(
        meta(&root, "home/ops/.ssh/authorized_keys"),
        (0o600, 1000, 1000)
    );
    assert_eq!(meta(&root, "etc/sudoers.d/ops"), (0o440, 0, 0));
    assert!(in_image(&root, "visudo -cf /etc/sudoers.d/ops").contains("parsed OK"));
    assert!(root.join("usr/lib/locale/locale-archive").is_file());
    assert!(read(&root, "etc/locale.gen")
        .lines()
        .any(|l| l == "fr_FR.UTF-8 UTF-8"));
    for l in [
        "etc/localtime",
        "etc/systemd/system/getty.target.wants/serial-getty@ttyS0.service",
        "etc/systemd/system/sysinit.target.wants/imgspec-growroot.service",
    ] {
        // The links point at files the image has.
        let t = link(&root, l);
        assert!(root.join(t.trim_start_matches('/')).is_file(), "{l} → {t}");
    }
    assert!(in_image(&root, "command -v growpart").contains("growpart"));

    let cloud = extract(&w, "out/el-cloud/el-cloud.tar", "y");
    assert_eq!(
        in_image(
            &cloud,
            "python3 -c \"import yaml; print(yaml.safe_load(open('/etc/cloud/cloud.cfg.d/91-imgspec-datasources.cfg'))['datasource_list'])\""
        ),
        "['ConfigDrive', 'OpenStack', 'None']\n"
    );
    assert!(cloud.join("usr/bin/cloud-init").is_file());
    for p in [
        "usr/lib/grub/i386-pc/modinfo.sh",
        "usr/lib/grub/x86_64-efi/modinfo.sh",
        "usr/sbin/grub-install",
        "usr/sbin/grub-mkconfig",
    ] {
        assert!(cloud.join(p).is_file(), "{p}");
    }
    // grub-mkconfig sources /etc/default/grub; GRUB itself is not installed anywhere.
    assert_eq!(
        in_image(
            &cloud,
            ". /etc/default/grub && echo \"$GRUB_CMDLINE_LINUX\""
        ),
        "console=tty0 console=ttyS0,115200\n"
    );
    assert!(!cloud.join("boot/grub").exists());

    // Boot on a disk twice the image's size; log in on the serial console.
    let overlay = w.path("overlay.qcow2");
    let st = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(w.path("out/el-debian/el-debian.qcow2"))
        .arg(&overlay)
        .arg("4G")
        .status()
        .unwrap();
    assert!(st.success());
    let vars = w.path("vars.fd");
    std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars).unwrap();
    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    let mut vm = Console::start(&qemu_args(&overlay, &vars, kvm));
    let mut up = vm.expect(&["login: "], if kvm { 300 } else { 1200 });
    if up.is_none() && kvm && vm.seen.is_empty() {
        // A /dev/kvm that opens but cannot run a guest: software emulation.
        drop(vm);
        std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars).unwrap();
        vm = Console::start(&qemu_args(&overlay, &vars, false));
        up = vm.expect(&["login: "], 1200);
    }
    let boot = up.expect("no login prompt on the serial console");
    assert!(
        boot.contains("el-debian.example.org"),
        "the hostname is in the banner"
    );
    assert!(
        boot.contains("CHANGED: partition=2"),
        "growpart grew the root partition"
    );
    vm.send("ops\n");
    vm.expect(&["Mot de passe", "Password"], 120)
        .expect("password prompt");
    vm.send("imgspec\n");
    vm.expect(&["$ "], 300).expect("shell prompt");
    vm.send(
        "echo MARK-$((6*6)); hostname; cat /etc/timezone; date +%Z; locale 2>&1; \
         ip -4 -o addr show scope global; findmnt -bno SIZE /; \
         sudo -n true && echo SUDO-OK; echo MARK-$((6*7))\n",
    );
    vm.expect(&["MARK-36\n"], 300).expect("command output");
    let out = vm.expect(&["MARK-42\n"], 300).expect("command output");
    vm.send("sudo -n poweroff\n");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "el-debian.example.org", "{out}");
    assert_eq!(lines[1], "Europe/Paris", "{out}");
    assert!(["CET", "CEST"].contains(&lines[2]), "{out}");
    assert!(out.contains("LANG=fr_FR.UTF-8\n"), "{out}");
    assert!(
        !out.contains("Cannot set"),
        "the locale is generated: {out}"
    );
    assert!(
        out.lines()
            .any(|l| l.contains(": en") && l.contains("inet 10.0.2.15/24")),
        "DHCP on the en* NIC: {out}"
    );
    let size: u64 = out
        .lines()
        .find_map(|l| l.trim().parse().ok())
        .expect("root filesystem size");
    assert!(
        size > 3 << 30,
        "the root filesystem grew to the 4 GiB disk: {size}"
    );
    assert!(out.contains("SUDO-OK"), "{out}");
    drop(vm);

    // Again: all from the cache.
    let r = w.run(&["build", "el.kdl"]).ok();
    assert!(
        r.stderr.contains("0 steps built, 23 cached, 0 failed"),
        "{}",
        r.stderr
    );
}
