//! Bad input and usage: each refused at once with exit code 2 (or worked around with a
//! warning), never a hang, a crash or a machine loaded for minutes.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::Command;

use crate::common::{Run, Workspace};

/// A spec that needs no tool, no network and no root.
fn tar_spec(w: &Workspace) {
    w.write("r.tar", "");
    w.write(
        "t.kdl",
        "image \"t\" {\n    base \"tar\" path=\"r.tar\"\n    output \"tar\"\n}\n",
    );
}

#[test]
fn boot_of_a_file_that_is_no_disk_image_stops_at_once() {
    let w = Workspace::new();
    w.write("notes.txt", "not a disk\n");
    // The old behaviour was to start QEMU and wait for the whole timeout (exit 1).
    let r = w.run(&["boot", "notes.txt", "--timeout", "60", "--accel", "tcg"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("`notes.txt`") && r.stderr.contains("partition table"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("booting"), "{}", r.stderr);
    // A direct kernel boot wants a root filesystem.
    w.write("k.vmlinuz", "");
    w.write("k.initrd", "");
    std::fs::write(w.path("k.raw"), vec![0u8; 4096]).unwrap();
    let r = w.run(&["boot", "k.raw", "--timeout", "60"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("no ext4 root filesystem"), "{}", r.stderr);
}

#[test]
fn a_malformed_remote_url_is_a_usage_error() {
    let w = Workspace::new();
    tar_spec(&w);
    for url in ["http://[::1", "ftp://cache/x", "http://"] {
        let r = w.run(&["build", "t.kdl", "--remote", url]);
        assert_eq!(r.code, 2, "{url}: {}", r.stderr);
        assert!(r.stderr.contains("remote cache URL"), "{url}: {}", r.stderr);
        assert!(!w.path("out").exists(), "{url}: built anyway");
    }
}

#[test]
fn jobs_is_bounded() {
    let w = Workspace::new();
    tar_spec(&w);
    for jobs in ["0", "257", "100000"] {
        let r = w.run(&["build", "t.kdl", "--jobs", jobs]);
        assert_eq!(r.code, 2, "--jobs {jobs}: {}", r.stderr);
        assert!(r.stderr.contains("not in 1..=256"), "{}", r.stderr);
    }
    w.run(&["build", "t.kdl", "--jobs", "256"]).ok();
}

/// `imgspec doctor SPEC` as the unprivileged user `nobody`, with HOME at `home`.
fn doctor_as_nobody(w: &Workspace, home: &str) -> Run {
    Command::new(env!("CARGO_BIN_EXE_imgspec"))
        .args(["doctor", "t.kdl"])
        .current_dir(w.dir.path())
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("HOME", w.path(home))
        .env("IMGSPEC_CACHE_DIR", w.path("shared-cache"))
        .env("NO_COLOR", "1")
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap()
        .into()
}

/// Another user's config file (HOME pointing at root's home under `sudo -u`, say) is not ours
/// to read: a warning, and the command goes on. A readable but malformed one is exit 2.
#[test]
fn an_unreadable_config_file_is_skipped_with_a_warning() {
    let w = Workspace::new();
    tar_spec(&w);
    let open = |p: &str, mode| {
        std::fs::set_permissions(w.path(p), std::fs::Permissions::from_mode(mode)).unwrap()
    };
    w.write(
        "root-home/.config/imgspec/config.kdl",
        "remote \"http://cache/x\"\n",
    );
    std::fs::create_dir(w.path("shared-cache")).unwrap();
    for p in ["", "t.kdl", "r.tar", "root-home"] {
        open(p, 0o755);
    }
    open("shared-cache", 0o777);
    open("root-home/.config", 0o700);
    let r = doctor_as_nobody(&w, "root-home");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("is not readable") && r.stderr.contains("going on without it"),
        "{}",
        r.stderr
    );
    assert!(r.stdout.contains("none configured"), "{}", r.stdout);

    w.write("root-home/.config/imgspec/config.kdl", "remote 12\n");
    let r: Run = Command::new(env!("CARGO_BIN_EXE_imgspec"))
        .args(["doctor", "t.kdl"])
        .current_dir(w.dir.path())
        .env("HOME", w.path("root-home"))
        .env_remove("XDG_CONFIG_HOME")
        .env("IMGSPEC_CACHE_DIR", w.path("cache"))
        .output()
        .unwrap()
        .into();
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("config file"), "{}", r.stderr);
}

/// `plan` needs neither root nor a cache it can write: as `nobody` with HOME at a folder it
/// cannot write, it warns and shows every step as to build.
#[test]
fn plan_runs_unprivileged_without_a_writable_cache() {
    let w = Workspace::new();
    tar_spec(&w);
    std::fs::create_dir(w.path("root-home")).unwrap();
    for p in ["", "t.kdl", "r.tar"] {
        std::fs::set_permissions(w.path(p), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(w.path("root-home"), std::fs::Permissions::from_mode(0o700)).unwrap();
    let r: Run = Command::new(env!("CARGO_BIN_EXE_imgspec"))
        .args(["plan", "t.kdl"])
        .current_dir(w.dir.path())
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("HOME", w.path("root-home"))
        .env("NO_COLOR", "1")
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap()
        .into();
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("planning without it"), "{}", r.stderr);
    assert!(
        r.stdout.contains("base tar") && r.stdout.contains("build"),
        "{}",
        r.stdout
    );
}

/// `imgspec ARGS` in the workspace, killed after a minute: a hang fails the test instead of
/// holding it forever.
fn run_or_kill(w: &Workspace, args: &[&str], env: &[(&str, &std::path::Path)]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_imgspec"));
    cmd.args(args)
        .current_dir(w.dir.path())
        .env("IMGSPEC_CACHE_DIR", w.path("cache"))
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    match rx.recv_timeout(std::time::Duration::from_secs(60)) {
        Ok(out) => out.unwrap().into(),
        Err(_) => {
            // SAFETY: kill(2) on our own child, not reaped yet.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("`imgspec {}` hung", args.join(" "));
        }
    }
}

fn mkfifo(path: &std::path::Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
}

/// A lock file or a config file that is a FIFO is refused at once (it was waited on forever).
#[test]
fn a_fifo_for_a_lock_or_config_file_is_refused_not_waited_on() {
    let w = Workspace::new();
    tar_spec(&w);
    mkfifo(&w.path("t.kdl.lock"));
    let r = run_or_kill(&w, &["plan", "t.kdl"], &[]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("regular file"), "{}", r.stderr);
    std::fs::remove_file(w.path("t.kdl.lock")).unwrap();

    std::fs::create_dir_all(w.path("config/imgspec")).unwrap();
    mkfifo(&w.path("config/imgspec/config.kdl"));
    let r = run_or_kill(
        &w,
        &["doctor", "t.kdl"],
        &[("XDG_CONFIG_HOME", &w.path("config"))],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("config file") && r.stderr.contains("regular file"),
        "{}",
        r.stderr
    );
}

/// With stderr closed early (`imgspec check bad.kdl 2>&1 | head -1`), the exit code is still
/// the spec's 2, not a panic's 101.
#[test]
fn a_closed_stderr_keeps_the_exit_code() {
    let w = Workspace::new();
    w.write("bad.kdl", &"outptu \"tar\"\n".repeat(40));
    let mut child = Command::new(env!("CARGO_BIN_EXE_imgspec"))
        .args(["check", "bad.kdl"])
        .current_dir(w.dir.path())
        .env("IMGSPEC_CACHE_DIR", w.path("cache"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stderr.take());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(2), "{status:?}");
}
