//! The sandbox of commands run in the image (issue 13): each escape attempt is a `run` step of
//! a test image on the engine tests' tiny root filesystem (no network), and the HOST is checked
//! afterwards; killing imgspec during a `run` leaves no process of the step behind.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{processes_where, Workspace};

/// A static probe for what the image must not be able to do, compiled on the host.
const PROBE_C: &str = r#"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

static void report(const char *what, long r) {
    printf("%s: %s\n", what, r == 0 ? "ok" : strerror(errno));
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "escape") == 0) {
        /* The classic double chroot: chroot into a subfolder, climb, chroot again. */
        mkdir("/d", 0755);
        report("chroot /d", chroot("/d"));
        for (int i = 0; i < 64; i++) chdir("..");
        report("chroot .", chroot("."));
        int fd = open(argv[2], O_CREAT | O_WRONLY | O_TRUNC, 0644);
        report("write", fd < 0 ? -1 : 0);
        if (fd >= 0) { write(fd, "escaped\n", 8); close(fd); }
        return 0;
    }
    report("mknod block", mknod("/tmp/sda", S_IFBLK | 0600, makedev(8, 0)));
    report("mknod char", mknod("/tmp/mem", S_IFCHR | 0600, makedev(1, 1)));
    report("mount", mount("none", "/tmp", "tmpfs", 0, NULL));
    report("init_module", syscall(SYS_init_module, NULL, 0, ""));
    report("finit_module", syscall(SYS_finit_module, 0, "", 0));
    report("sethostname", sethostname("evil", 4));
    report("reboot", reboot(RB_POWER_OFF));
    report("mknod fifo", mknod("/tmp/fifo", S_IFIFO | 0600, 0));
    return 0;
}
"#;

/// A unique word for this test's host-side traces.
fn unique(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{what}-{}-{nanos}", std::process::id())
}

/// The workspace's tiny root filesystem with `uname` and the probe in `overlay/usr/bin`.
fn workspace_with_probe() -> Workspace {
    let w = Workspace::new();
    w.rootfs_tar_with("rootfs.tar", &["uname", "sleep"], &[]);
    w.write("probe.c", PROBE_C);
    std::fs::create_dir_all(w.path("overlay/usr/bin")).unwrap();
    let out = Command::new("gcc")
        .args(["-static", "-O1", "-o"])
        .arg(w.path("overlay/usr/bin/probe"))
        .arg(w.path("probe.c"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "gcc -static: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    w
}

/// Extracts `out/IMAGE/IMAGE.tar` into `extract/` and returns that folder.
fn extract(w: &Workspace, image: &str) -> std::path::PathBuf {
    let dir = w.path("extract");
    std::fs::create_dir_all(&dir).unwrap();
    let st = Command::new("tar")
        .arg("-xf")
        .arg(w.path(&format!("out/{image}/{image}.tar")))
        .arg("-C")
        .arg(&dir)
        .status()
        .unwrap();
    assert!(st.success());
    dir
}

fn read(dir: &Path, rel: &str) -> String {
    std::fs::read_to_string(dir.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn host_domainname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/domainname").unwrap()
}

#[test]
fn escape_attempts_from_run_steps_do_not_reach_the_host() {
    let w = workspace_with_probe();
    let dev_probe = format!("/dev/{}", unique("probe"));
    let tmp_escape = format!("/tmp/{}", unique("escape"));
    let domain_before = host_domainname();
    let evil = unique("evil");
    w.write(
        "esc.kdl",
        &format!(
            r#"
image "esc" {{
    base "tar" path="rootfs.tar"
    files "overlay/"
    run "echo x > {dev_probe} && echo written > /etc/r-dev; ls /dev > /etc/r-devlist"
    run "echo {evil} > /proc/sys/kernel/domainname; echo $? > /etc/r-domain; cat /proc/sys/kernel/domainname >> /etc/r-domain"
    run "probe escape {tmp_escape} > /etc/r-escape"
    run "probe > /etc/r-probe; uname -n > /etc/r-hostname; cat /proc/sys/kernel/hostname >> /etc/r-hostname"
    run "cat /proc/self/status > /etc/r-status; env > /etc/r-env; ls /proc/self/fd > /etc/r-fds; ls /proc > /etc/r-proc"
    output "tar"
}}
"#
        ),
    );
    // A descriptor the caller leaks (no close-on-exec) must not reach the step's command.
    let mut fds = [0; 2];
    // SAFETY: pipe writes two descriptors into the array it is given.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let r = w.run(&["build", "esc.kdl"]);
    // SAFETY: closing the two descriptors made above.
    unsafe {
        libc::close(fds[0]);
        libc::close(fds[1]);
    }
    r.ok();
    let root = extract(&w, "esc");

    // `/dev` of the step is its own: the write works there and reaches neither the host nor
    // the image.
    assert!(!Path::new(&dev_probe).exists(), "{dev_probe} on the host");
    assert_eq!(read(&root, "etc/r-dev"), "written\n");
    let devs: Vec<String> = read(&root, "etc/r-devlist")
        .lines()
        .map(String::from)
        .collect();
    for d in ["null", "zero", "full", "random", "urandom", "tty", "pts"] {
        assert!(devs.iter().any(|x| x == d), "/dev lacks {d}: {devs:?}");
    }
    for d in ["sda", "vda", "mem", "kmsg", "loop0"] {
        assert!(!devs.iter().any(|x| x == d), "/dev has {d}: {devs:?}");
    }
    assert!(
        !root.join("dev").exists() || std::fs::read_dir(root.join("dev")).unwrap().count() == 0,
        "the step's /dev reached the image"
    );

    // /proc/sys is read-only (exit status 2 of the failed redirection), the domain name unchanged
    // inside and on the host.
    let domain = read(&root, "etc/r-domain");
    assert!(domain.starts_with("2\n"), "{domain}");
    assert!(!domain.contains(&evil), "{domain}");
    assert_eq!(host_domainname(), domain_before);

    // The double chroot works (chroot is allowed) and lands in the image's own /tmp.
    let esc = read(&root, "etc/r-escape");
    assert_eq!(esc, "chroot /d: ok\nchroot .: ok\nwrite: ok\n", "{esc}");
    assert!(!Path::new(&tmp_escape).exists(), "{tmp_escape} on the host");
    assert_eq!(read(&root, tmp_escape.trim_start_matches('/')), "escaped\n");

    // Devices, mounts, modules, the host name and reboot are refused.
    let probe = read(&root, "etc/r-probe");
    for line in [
        "mknod block: Operation not permitted",
        "mknod char: Operation not permitted",
        "mount: Operation not permitted",
        "sethostname: Operation not permitted",
        "reboot: Operation not permitted",
        "mknod fifo: ok",
    ] {
        assert!(probe.lines().any(|l| l == line), "{line:?} not in\n{probe}");
    }
    // Without CAP_SYS_MODULE (checked below in the bounding set) the kernel refuses; a kernel
    // built without modules has no such calls at all.
    for call in ["init_module", "finit_module"] {
        assert!(
            [
                format!("{call}: Operation not permitted"),
                format!("{call}: Function not implemented"),
            ]
            .iter()
            .any(|l| probe.lines().any(|p| p == l)),
            "{call} not refused:\n{probe}"
        );
    }
    assert_eq!(read(&root, "etc/r-hostname"), "imgspec\nimgspec\n");

    // Only the capabilities dpkg needs, for `cat`, a program the shell executed as root: with
    // no_new_privs, no exec gives back a capability (bwrap leaves the bounding set as it is).
    let status = read(&root, "etc/r-status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {name} in {status}"))
            .to_string()
    };
    // CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID SETPCAP SYS_CHROOT AUDIT_WRITE SETFCAP
    let caps = format!("{:016x}", 0b1_1111_1011u64 | 1 << 18 | 1 << 29 | 1 << 31);
    assert_eq!(field("CapEff:"), caps, "{status}");
    assert_eq!(field("CapPrm:"), caps, "{status}");
    assert_eq!(field("NoNewPrivs:"), "1", "{status}");
    // A process of its own PID namespace: PID 1 is bwrap's reaper, the shell a low number.
    let proc_pids: Vec<u32> = read(&root, "etc/r-proc")
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect();
    assert!(
        proc_pids.len() < 10,
        "host processes visible: {proc_pids:?}"
    );

    // The fixed environment only, and the standard descriptors only (3 is `ls`'s own).
    let env = read(&root, "etc/r-env");
    let names: Vec<&str> = env.lines().filter_map(|l| l.split('=').next()).collect();
    for n in &names {
        assert!(
            [
                "PATH",
                "HOME",
                "LC_ALL",
                "LANG",
                "DEBIAN_FRONTEND",
                "DEBCONF_NONINTERACTIVE_SEEN",
                "SOURCE_DATE_EPOCH",
                "PWD",
            ]
            .contains(n),
            "host variable {n} in the image: {env}"
        );
    }
    assert_eq!(read(&root, "etc/r-fds"), "0\n1\n2\n3\n");
}

/// Processes whose command line contains `word`, with their pids.
fn processes_with(word: &str) -> Vec<(u32, String)> {
    processes_where(|a| a.contains(word))
        .into_iter()
        .map(|p| (p.pid, p.args.join(" ")))
        .collect()
}

/// Waits until `cond` holds, for at most `limit`.
fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// Starts a build whose `run` step sleeps in the foreground, in the background and in a
/// daemonised grandchild, kills imgspec with `signal` once all three run, and checks that none
/// of them is left.
fn kill_during_run(signal: i32) -> Option<i32> {
    let w = Workspace::new();
    w.rootfs_tar_with("rootfs.tar", &["sleep"], &[]);
    // A unique duration marks this test's sleeps in the host's process list.
    let d = format!("1000.{}{}", std::process::id(), signal);
    w.write(
        "long.kdl",
        &format!(
            r#"
image "long" {{
    base "tar" path="rootfs.tar"
    run "sleep {d}1 & (sleep {d}2 &); sleep {d}3"
    output "tar"
}}
"#
        ),
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_imgspec"))
        .args(["build", "long.kdl"])
        .current_dir(w.dir.path())
        .env("IMGSPEC_CACHE_DIR", w.path("cache"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let sleeps = || {
        processes_with(&d)
            .into_iter()
            .filter(|(_, c)| c.starts_with("sleep "))
            .count()
    };
    let started = wait_for(Duration::from_secs(60), || sleeps() == 3);
    let before = processes_with(&d);
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(child.id() as i32, signal) };
    // imgspec must exit: with the step's processes left running it would wait for them.
    let mut status = None;
    let exited = wait_for(Duration::from_secs(30), || {
        status = status.or_else(|| child.try_wait().unwrap());
        status.is_some()
    });
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
    }
    let gone = wait_for(Duration::from_secs(20), || processes_with(&d).is_empty());
    let left = processes_with(&d);
    for (pid, _) in &left {
        // SAFETY: as above; the test's own leftovers only.
        unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
    }
    assert!(started, "the step's three sleeps never ran: {before:?}");
    assert!(exited, "imgspec did not exit after signal {signal}");
    assert!(
        gone,
        "processes of the step left after imgspec died: {left:?}"
    );
    status.and_then(|s| s.code())
}

#[test]
fn sigkill_of_imgspec_during_a_run_leaves_no_process_of_the_step() {
    kill_during_run(libc::SIGKILL);
}

#[test]
fn sigterm_of_imgspec_during_a_run_stops_every_process_of_the_step() {
    let code = kill_during_run(libc::SIGTERM);
    assert_eq!(code, Some(130), "SIGTERM is an interrupted build");
}

#[test]
fn what_the_host_lends_a_step_follows_the_images_links_inside_the_image_only() {
    let w = Workspace::new();
    w.rootfs_tar_with("rootfs.tar", &["ln", "mv"], &[]);
    let host_dir = format!("/tmp/{}", unique("lent"));
    // The first step makes /etc a link to a folder that, seen from the host, is the host's;
    // the next step gets the host's resolv.conf lent at /etc/resolv.conf.
    w.write(
        "links.kdl",
        &format!(
            r#"
image "links" {{
    base "tar" path="rootfs.tar"
    run "mv /etc /etc.real && mkdir -p {host_dir} && ln -s {host_dir} /etc"
    run "ls /etc/ > /etc.real/seen"
    output "tar"
}}
"#
        ),
    );
    w.run(&["build", "links.kdl"]).ok();
    assert!(
        !Path::new(&host_dir).exists(),
        "{host_dir} made on the host"
    );
    let root = extract(&w, "links");
    // The lent file was where the image's link points, inside the image, and taken back.
    assert_eq!(read(&root, "etc.real/seen"), "resolv.conf\n");
    assert!(!root
        .join(host_dir.trim_start_matches('/'))
        .join("resolv.conf")
        .exists());
}
