//! The test workspace: a temporary folder with its own cache, spec files written into it, and
//! the real `imgspec` binary run inside it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub struct Workspace {
    pub dir: tempfile::TempDir,
    /// When the test made it: its drop appends the test's time to [`TIMES`].
    started: std::time::Instant,
}

/// Where every test that used a [`Workspace`] appends how long it took (`.ci/run` prints the
/// file sorted, so that CI's log says where its time went).
const TIMES: &str = concat!(env!("CARGO_TARGET_TMPDIR"), "/test-times.txt");

impl Drop for Workspace {
    fn drop(&mut self) {
        use std::io::Write;
        let name = std::thread::current().name().unwrap_or("?").to_string();
        let failed = if std::thread::panicking() {
            " (failed)"
        } else {
            ""
        };
        let line = format!(
            "{:8.1} s  {name}{failed}\n",
            self.started.elapsed().as_secs_f64()
        );
        // One write of one short line to a file opened for appending: lines of tests that end
        // at once do not interleave.
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(TIMES)
        {
            let _ = f.write_all(line.as_bytes());
        }
    }
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    #[track_caller]
    pub fn ok(self) -> Self {
        assert_eq!(
            self.code, 0,
            "imgspec failed\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Workspace {
    pub fn new() -> Self {
        Workspace {
            dir: tempfile::tempdir().unwrap(),
            started: std::time::Instant::now(),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn write(&self, rel: &str, content: &str) {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    /// Runs `imgspec ARGS` in the workspace with the cache at `cache`.
    pub fn run_with_cache(&self, cache: &str, args: &[&str]) -> Run {
        Command::new(env!("CARGO_BIN_EXE_imgspec"))
            .args(args)
            .current_dir(self.dir.path())
            .env("IMGSPEC_CACHE_DIR", self.path(cache))
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
            .into()
    }

    pub fn run(&self, args: &[&str]) -> Run {
        self.run_with_cache("cache", args)
    }

    /// A tiny root filesystem tarball made of this host's `sh`, `env` and a few coreutils with
    /// their libraries: enough for `run` steps to chroot into, with no network.
    pub fn rootfs_tar(&self, rel: &str) {
        self.rootfs_tar_with(rel, &[], &[]);
    }

    /// [`Workspace::rootfs_tar`] with more of the host's programs (and their libraries) in
    /// `/usr/bin`, and more files: (path in the image, content, mode).
    pub fn rootfs_tar_with(&self, rel: &str, extra_bins: &[&str], files: &[(&str, &str, u32)]) {
        let root = self.path("rootfs-src");
        for d in ["usr/bin", "usr/lib", "usr/lib64", "etc", "tmp"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        for (link, target) in [
            ("bin", "usr/bin"),
            ("lib", "usr/lib"),
            ("lib64", "usr/lib64"),
        ] {
            std::os::unix::fs::symlink(target, root.join(link)).unwrap();
        }
        let bins = [
            "sh", "env", "cat", "date", "echo", "mkdir", "touch", "rm", "ls", "chmod",
        ];
        for b in bins.iter().chain(extra_bins) {
            let src = which(b);
            copy_into(&root, &src, &format!("usr/bin/{b}"));
            for lib in libs_of(&src) {
                let rel = usr_path(&lib);
                if !root.join(&rel).exists() {
                    copy_into(&root, &lib, &rel);
                }
            }
        }
        std::fs::write(root.join("etc/os-release"), "ID=fixture\n").unwrap();
        for (path, content, mode) in files {
            use std::os::unix::fs::PermissionsExt;
            let p = root.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, content).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode)).unwrap();
        }
        let out = Command::new("tar")
            .args([
                "--sort=name",
                "--owner=0",
                "--group=0",
                "--numeric-owner",
                "--mtime=@0",
            ])
            .arg("-C")
            .arg(&root)
            .arg("-cf")
            .arg(self.path(rel))
            .arg(".")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}

fn which(b: &str) -> PathBuf {
    for d in ["/usr/bin", "/bin", "/usr/sbin", "/sbin"] {
        let p = Path::new(d).join(b);
        if p.exists() {
            return std::fs::canonicalize(p).unwrap();
        }
    }
    panic!("host has no `{b}`")
}

/// `/lib/x86_64-linux-gnu/libc.so.6` → `usr/lib/x86_64-linux-gnu/libc.so.6`.
fn usr_path(p: &Path) -> String {
    let s = p.to_string_lossy();
    let s = s.trim_start_matches('/');
    if s.starts_with("usr/") {
        s.to_string()
    } else {
        format!("usr/{s}")
    }
}

fn libs_of(bin: &Path) -> Vec<PathBuf> {
    let out = Command::new("ldd").arg(bin).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let w = l.split_whitespace().find(|w| w.starts_with('/'))?;
            Some(PathBuf::from(w))
        })
        .collect()
}

fn copy_into(root: &Path, src: &Path, rel: &str) {
    let dst = root.join(rel);
    std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
    std::fs::copy(std::fs::canonicalize(src).unwrap(), &dst).unwrap();
}

pub fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// Every file under `dir` whose bytes contain `needle`.
pub fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file() {
                let bytes = std::fs::read(&p).unwrap_or_default();
                if bytes
                    .windows(needle.len())
                    .any(|win| win == needle.as_bytes())
                {
                    hits.push(p);
                }
            }
        }
    }
    hits
}

/// A python3 `http.server` on a free loopback port, serving `dir`; stopped when dropped.
pub struct Http(std::process::Child, pub u16);

impl Http {
    pub fn serve(dir: &std::path::Path) -> Http {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new("python3")
            .args(["-m", "http.server", "--bind", "127.0.0.1"])
            .arg(port.to_string())
            .arg("--directory")
            .arg(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 (scripts/install-deps installs it with reprotest)");
        let t = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(t.elapsed().as_secs() < 10, "http.server did not start");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Http(child, port)
    }
}

impl Drop for Http {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A process of this machine, as `/proc` shows it.
#[derive(Debug)]
pub struct Process {
    pub pid: u32,
    /// Its arguments (`argv`), empty for a zombie.
    pub args: Vec<String>,
}

impl Process {
    /// Its state letter and parent, read again now (`None` once it is gone); for messages.
    pub fn state(&self) -> Option<String> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).ok()?;
        // `pid (comm) S ppid …`: the name may hold spaces and parentheses, the last `)` ends it.
        let rest = &stat[stat.rfind(')')? + 2..];
        let mut f = rest.split(' ');
        Some(format!("state {} parent {}", f.next()?, f.next()?))
    }

    /// Whether it still runs: neither gone nor a zombie (whose arguments are empty), nor
    /// replaced by another process with its pid (whose arguments differ).
    pub fn alive(&self) -> bool {
        std::fs::read(format!("/proc/{}/cmdline", self.pid)).is_ok_and(|c| args_of(&c) == self.args)
    }
}

/// The processes (this one aside) one of whose arguments `matches`.
pub fn processes_where(matches: impl Fn(&str) -> bool) -> Vec<Process> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args = args_of(&cmdline);
        if args.iter().any(|a| matches(a)) {
            out.push(Process { pid, args });
        }
    }
    out
}

/// The arguments in a `/proc/PID/cmdline`.
fn args_of(cmdline: &[u8]) -> Vec<String> {
    cmdline
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}
