//! The one way imgspec runs external programs.
//!
//! Steps and format writers describe a [`Cmd`] and hand it to a [`Runner`]. The real runner
//! ([`HostRunner`]) runs it with its output appended to the step's log file; the recording runner
//! ([`RecordingRunner`]) only remembers the command line, so tests can check exactly what would
//! run without running it.

use std::ffi::OsString;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;

/// A command line, its environment and where its standard streams go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cmd {
    pub program: OsString,
    pub args: Vec<OsString>,
    /// The whole environment beyond [`PASSED_THROUGH`]: nothing else of imgspec's own
    /// environment reaches the program.
    pub env: Vec<(OsString, OsString)>,
    pub cwd: Option<PathBuf>,
    /// Standard input from this file; `/dev/null` when None.
    pub stdin: Option<PathBuf>,
    /// Standard output to this file instead of the log.
    pub stdout: Option<PathBuf>,
}

impl Cmd {
    pub fn new(program: impl Into<OsString>) -> Self {
        Cmd {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            cwd: None,
            stdin: None,
            stdout: None,
        }
    }
    pub fn arg(mut self, a: impl Into<OsString>) -> Self {
        self.args.push(a.into());
        self
    }
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }
    pub fn env(mut self, k: impl Into<OsString>, v: impl Into<OsString>) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }
    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }
    pub fn stdin_file(mut self, f: impl Into<PathBuf>) -> Self {
        self.stdin = Some(f.into());
        self
    }
    pub fn stdout_file(mut self, f: impl Into<PathBuf>) -> Self {
        self.stdout = Some(f.into());
        self
    }

    /// The command line as a shell would show it, for logs and messages.
    pub fn display(&self) -> String {
        std::iter::once(&self.program)
            .chain(&self.args)
            .map(|a| shell_quote(&a.to_string_lossy()))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("could not start `{program}`{}", missing_hint(.program, .source))]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{program}` failed ({status}){}", tail_text(.tail))]
    Failed {
        program: String,
        status: String,
        /// The last lines of the log, for the error message.
        tail: Vec<String>,
    },
    #[error("I/O error on `{path}`")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// For a program that is not installed: which package provides it.
fn missing_hint(program: &str, e: &std::io::Error) -> String {
    match (e.kind(), crate::tools::package_of(program)) {
        (std::io::ErrorKind::NotFound, Some(p)) => {
            format!(": not installed (Debian package `{p}`; scripts/install-deps installs it)")
        }
        _ => String::new(),
    }
}

fn tail_text(tail: &[String]) -> String {
    if tail.is_empty() {
        String::new()
    } else {
        format!(":\n    {}", tail.join("\n    "))
    }
}

/// Runs commands. `Sync` so that every worker thread can share one.
pub trait Runner: Send + Sync {
    /// Runs `cmd` to completion, appending its output to `log`. Fails when it exits non-zero.
    fn run(&self, cmd: &Cmd, log: &Path) -> Result<(), RunError>;

    /// Runs `cmd` and returns its standard output (stderr goes to the log).
    fn output(&self, cmd: &Cmd, log: &Path) -> Result<Vec<u8>, RunError>;

    /// Runs `cmd` (its `stdin` is not used) with its standard input written by `feed` on this
    /// thread while it runs, then closed; output to the log as [`Runner::run`]. Fails when it
    /// exits non-zero, else when `feed` failed (a program that exits before reading it all
    /// makes `feed` fail with a broken pipe: its own exit status decides).
    fn run_fed(&self, cmd: &Cmd, log: &Path, feed: Feed<'_>) -> Result<(), RunError>;
}

/// Asks for a 1 MiB pipe buffer (the default is 64 KiB): a program fed a GiB-sized stream
/// (`mkfs.ext4 -d -`) then wakes its feeder sixteen times less often. A refusal (a lower
/// `fs.pipe-max-size`) leaves the pipe as it was, which only costs that saving.
fn widen_pipe(pipe: &impl std::os::fd::AsRawFd) {
    // SAFETY: fcntl on a descriptor the caller owns; F_SETPIPE_SZ only resizes its buffer.
    unsafe {
        libc::fcntl(pipe.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20);
    }
}

/// What writes a program's standard input for [`Runner::run_fed`].
pub type Feed<'a> = &'a mut dyn FnMut(&mut dyn std::io::Write) -> std::io::Result<()>;

/// Runs commands on this machine, each in an environment of its own: `PATH`, the proxy
/// variables (they choose a way to the mirror, never what it serves), `LC_ALL=C.UTF-8`,
/// `TZ=UTC`, then the [`Cmd`]'s own variables. The caller's locale, time zone, `TMPDIR`, `HOME`,
/// `APT_CONFIG`, `MTOOLSRC`, `MKE2FS_*` and whatever else it has never reach a program.
pub struct HostRunner;

/// The variables of imgspec's own environment a program gets (when set).
pub const PASSED_THROUGH: &[&str] = &[
    "PATH",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "all_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
];

/// What every program gets before its [`Cmd`]'s own variables (which may override them).
pub const BASE_ENV: &[(&str, &str)] = &[("LC_ALL", "C.UTF-8"), ("TZ", "UTC")];

/// As root, a program runs with group root and no supplementary group, whatever imgspec was
/// started with (`sudo -g`, a CI runner's groups): a file that a maintainer script or a `run`
/// command creates gets its creator's group. imgspec itself keeps its groups (a spec folder on
/// a FUSE mount may be readable only with them).
fn pin_groups(c: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: geteuid is always safe to call.
    if unsafe { libc::geteuid() } != 0 {
        return;
    }
    // SAFETY: between fork and exec only async-signal-safe calls (setgroups, setgid).
    unsafe {
        c.pre_exec(|| {
            if libc::setgroups(0, std::ptr::null()) != 0 || libc::setgid(0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The environment a program started by [`HostRunner`] gets, given imgspec's own.
pub fn program_env(cmd: &Cmd, own: impl Fn(&str) -> Option<OsString>) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = PASSED_THROUGH
        .iter()
        .filter_map(|k| own(k).map(|v| (OsString::from(k), v)))
        .collect();
    env.extend(BASE_ENV.iter().map(|(k, v)| (k.into(), v.into())));
    for (k, v) in &cmd.env {
        env.retain(|(k2, _)| k2 != k);
        env.push((k.clone(), v.clone()));
    }
    env
}

/// Process ids of the children running now, so that [`terminate_all`] can stop them; and
/// whether it was called (a child registered afterwards is stopped at once: a child can start
/// its own children before its parent thread registers it, and a Ctrl-C in that gap must not
/// leave it running).
static CHILDREN: Mutex<Children> = Mutex::new(Children {
    pids: Vec::new(),
    terminating: false,
});

struct Children {
    pids: Vec<u32>,
    terminating: bool,
}

fn sigterm(pid: u32) {
    // SAFETY: kill has no memory-safety preconditions; a stale pid at worst gets ESRCH.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGTERM);
    }
}

/// Set once [`terminate_all`] was called: work done in imgspec itself (a download) reads it
/// between chunks and stops too.
static STOPPING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether the build is being stopped (Ctrl-C or SIGTERM): a long loop of imgspec's own
/// (a download) gives up when it is.
pub fn stopping() -> bool {
    STOPPING.load(std::sync::atomic::Ordering::SeqCst)
}

/// Asks every running child to stop (SIGTERM). Called by the CLI on Ctrl-C or SIGTERM: the
/// steps then fail, clean their scratch space, and nothing is recorded.
pub fn terminate_all() {
    STOPPING.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut c = CHILDREN.lock().unwrap_or_else(|e| e.into_inner());
    c.terminating = true;
    for &pid in &c.pids {
        sigterm(pid);
    }
}

/// Runs a started child to completion while it is registered in [`CHILDREN`].
fn tracked<T>(
    child: std::io::Result<std::process::Child>,
    program: &str,
    wait: impl FnOnce(std::process::Child) -> std::io::Result<T>,
) -> Result<T, RunError> {
    let child = child.map_err(|source| RunError::Spawn {
        program: program.to_string(),
        source,
    })?;
    let pid = child.id();
    {
        let mut c = CHILDREN.lock().unwrap_or_else(|e| e.into_inner());
        c.pids.push(pid);
        if c.terminating {
            sigterm(pid);
        }
    }
    let r = wait(child);
    CHILDREN
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .pids
        .retain(|&p| p != pid);
    r.map_err(|source| RunError::Spawn {
        program: program.to_string(),
        source,
    })
}

impl HostRunner {
    fn command(cmd: &Cmd, log: &Path) -> Result<(std::process::Command, File), RunError> {
        let io = |source| RunError::Io {
            path: log.to_path_buf(),
            source,
        };
        let mut logf = File::options()
            .create(true)
            .append(true)
            .open(log)
            .map_err(io)?;
        writeln!(logf, "$ {}", cmd.display()).map_err(io)?;
        let mut c = std::process::Command::new(&cmd.program);
        c.args(&cmd.args);
        c.env_clear();
        // The one place below `cli` that reads the environment: what a program may inherit.
        c.envs(program_env(cmd, |k| std::env::var_os(k)));
        pin_groups(&mut c);
        if let Some(d) = &cmd.cwd {
            c.current_dir(d);
        }
        let stdin = match &cmd.stdin {
            Some(p) => Stdio::from(File::open(p).map_err(|source| RunError::Io {
                path: p.clone(),
                source,
            })?),
            None => Stdio::null(),
        };
        c.stdin(stdin);
        c.stderr(logf.try_clone().map_err(io)?);
        Ok((c, logf))
    }

    fn finish(cmd: &Cmd, log: &Path, status: std::process::ExitStatus) -> Result<(), RunError> {
        if status.success() {
            return Ok(());
        }
        Err(RunError::Failed {
            program: cmd.program.to_string_lossy().into_owned(),
            status: status.to_string(),
            tail: log_tail(log, 12),
        })
    }
}

impl Runner for HostRunner {
    fn run(&self, cmd: &Cmd, log: &Path) -> Result<(), RunError> {
        let (mut c, logf) = Self::command(cmd, log)?;
        match &cmd.stdout {
            Some(p) => {
                let f = File::create(p).map_err(|source| RunError::Io {
                    path: p.clone(),
                    source,
                })?;
                c.stdout(f);
            }
            None => {
                c.stdout(logf.try_clone().map_err(|source| RunError::Io {
                    path: log.to_path_buf(),
                    source,
                })?);
            }
        }
        let program = cmd.program.to_string_lossy();
        let status = tracked(c.spawn(), &program, |mut ch| ch.wait())?;
        Self::finish(cmd, log, status)
    }

    fn run_fed(&self, cmd: &Cmd, log: &Path, feed: Feed<'_>) -> Result<(), RunError> {
        let plain = Cmd {
            stdin: None,
            ..cmd.clone()
        };
        let (mut c, logf) = Self::command(&plain, log)?;
        let io = |source| RunError::Io {
            path: log.to_path_buf(),
            source,
        };
        c.stdout(logf.try_clone().map_err(io)?);
        c.stdin(Stdio::piped());
        let program = cmd.program.to_string_lossy();
        let (status, fed) = tracked(c.spawn(), &program, |mut ch| {
            let fed = match ch.stdin.take() {
                Some(mut pipe) => {
                    widen_pipe(&pipe);
                    feed(&mut pipe)
                }
                None => Err(std::io::Error::other("no pipe to the program's input")),
            };
            Ok((ch.wait()?, fed))
        })?;
        Self::finish(cmd, log, status)?;
        fed.map_err(io)
    }

    fn output(&self, cmd: &Cmd, log: &Path) -> Result<Vec<u8>, RunError> {
        let (mut c, _logf) = Self::command(cmd, log)?;
        c.stdout(Stdio::piped());
        let program = cmd.program.to_string_lossy();
        let out = tracked(c.spawn(), &program, |ch| ch.wait_with_output())?;
        Self::finish(cmd, log, out.status)?;
        Ok(out.stdout)
    }
}

/// The last `n` lines of a log file (empty when it cannot be read).
pub fn log_tail(log: &Path, n: usize) -> Vec<String> {
    let Ok(f) = File::open(log) else {
        return Vec::new();
    };
    let lines: Vec<String> = BufReader::new(f).lines().map_while(Result::ok).collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

/// Remembers every command instead of running it; `output` answers with `stdout`.
#[derive(Default)]
pub struct RecordingRunner {
    pub calls: Mutex<Vec<Cmd>>,
    pub stdout: Vec<u8>,
}

impl RecordingRunner {
    pub fn lines(&self) -> Vec<String> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .map(Cmd::display)
            .collect()
    }
}

impl Runner for RecordingRunner {
    fn run(&self, cmd: &Cmd, _log: &Path) -> Result<(), RunError> {
        self.calls.lock().unwrap().push(cmd.clone());
        Ok(())
    }
    fn output(&self, cmd: &Cmd, _log: &Path) -> Result<Vec<u8>, RunError> {
        self.calls.lock().unwrap().push(cmd.clone());
        Ok(self.stdout.clone())
    }
    fn run_fed(&self, cmd: &Cmd, log: &Path, feed: Feed<'_>) -> Result<(), RunError> {
        self.calls.lock().unwrap().push(cmd.clone());
        feed(&mut std::io::sink()).map_err(|source| RunError::Io {
            path: log.to_path_buf(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_program_that_is_not_installed_names_its_package() {
        let e = RunError::Spawn {
            program: "sgdisk".into(),
            source: std::io::ErrorKind::NotFound.into(),
        };
        assert_eq!(
            e.to_string(),
            "could not start `sgdisk`: not installed (Debian package `gdisk`; \
             scripts/install-deps installs it)"
        );
        let other = RunError::Spawn {
            program: "sgdisk".into(),
            source: std::io::ErrorKind::PermissionDenied.into(),
        };
        assert_eq!(other.to_string(), "could not start `sgdisk`");
    }

    #[test]
    fn a_missing_program_is_reported_when_run() {
        let dir = tempfile::tempdir().unwrap();
        let err = HostRunner
            .run(
                &Cmd::new("imgspec-no-such-program"),
                &dir.path().join("log"),
            )
            .unwrap_err();
        assert!(matches!(err, RunError::Spawn { .. }), "{err}");
    }
}
