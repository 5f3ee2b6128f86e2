//! Running commands inside an image tree: materialise the tree in scratch space, run the
//! command in a bubblewrap sandbox (`bwrap`) whose root is that tree, then import the result.
//! The import reads only the files the command changed: the others still have the inode, size,
//! mtime and ctime the export left them with, and keep the digest they were exported from
//! ([`imgspec_cache::Checkout`]). A step whose output is exactly the imported tree (`run`,
//! `element`, `bootloader`) keeps the folder in the store ([`Session::close_and_keep`],
//! [`imgspec_cache::Store::keep_tree`]): a next chroot step, of this build or a later one,
//! starts from it (patched, when its input is another tree close to it) instead of exporting
//! the tree again; its log says which.
//!
//! The sandbox ([`sandbox_args`]): the tree bound as `/` of a private mount namespace through
//! `pivot_root`, the host's root unmounted (so a double `chroot` has nothing above `/` to
//! reach); the tree bound `nodev`, so a device node in it opens nothing; a fresh `/dev` (null,
//! zero, full, random, urandom, tty, a private devpts); `/proc` of a new PID namespace with
//! `/proc/sys` read-only; new UTS (host name [`HOSTNAME`]), IPC and cgroup namespaces; no
//! network namespace of the host unless the step downloads ([`Session::with_network`]); a new
//! session (no terminal to push input into); the fixed environment [`CHROOT_ENV`]; and only the
//! capabilities of [`CAPS`]. Every process of the step dies with it: `--die-with-parent` kills
//! the namespace's PID 1 when bwrap or imgspec dies (SIGKILL included), and the kernel then
//! kills every other process of the namespace.
//!
//! What the host lends the command (`/etc/resolv.conf` for the network, a `policy-rc.d` that
//! keeps services from starting) is put in before and taken out after, so it never reaches the
//! stored tree; those host-side writes resolve the image's own symlinks confined to its root
//! ([`confined`]), so a link in the image cannot send them to the host.

use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

use imgspec_cache::{Checkout, Taken, TreeManifest};

use super::{is_root, StepContext, StepError};
use crate::runner::Cmd;
use crate::tools::{Tool, BWRAP};

/// Environment of every command run in the image: nothing of the host's.
const CHROOT_ENV: &[(&str, &str)] = &[
    (
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ),
    ("HOME", "/root"),
    ("LC_ALL", "C.UTF-8"),
    ("LANG", "C.UTF-8"),
    ("DEBIAN_FRONTEND", "noninteractive"),
    ("DEBCONF_NONINTERACTIVE_SEEN", "true"),
];

/// The host name every command in the image sees: the same on every machine, so nothing of the
/// host's name reaches a tree.
/// What a step that runs programs of the image needs on the host: the sandbox.
pub const TOOLS: &[Tool] = &[BWRAP];

pub const HOSTNAME: &str = "imgspec";

/// The capabilities a command in the image keeps; every other one is dropped (bwrap run by root
/// leaves the bounding set as it is, but it sets no_new_privs, so no exec, of a set-id program
/// or one with file capabilities, gives one back). What dpkg, maintainer scripts and `useradd`
/// need:
/// - `CHOWN`, `FOWNER`, `FSETID`, `DAC_OVERRIDE`: own, chmod and write files of any owner and
///   mode, keep set-id bits (dpkg unpacking, `dpkg-statoverride`, `/etc/shadow`);
/// - `SETUID`, `SETGID`: change user (apt's `_apt` download sandbox, `su`, `runuser`);
/// - `SETFCAP`: file capabilities (`setcap cap_net_raw+ep /bin/ping` in iputils-ping's
///   postinst); `SETPCAP`: lets a program drop capabilities of its own;
/// - `KILL`: signal processes of other users (only those of the step: PID namespace);
/// - `SYS_CHROOT`: a chroot inside the image (it cannot leave the image: there is nothing of
///   the host above its `/`); `AUDIT_WRITE`: PAM (`su`, `sudo`) logs through audit.
///
/// Not kept, among others: `SYS_ADMIN` (mount, namespaces' setup, sethostname), `SYS_MODULE`,
/// `SYS_RAWIO`, `SYS_PTRACE`, `SYS_BOOT`, `SYS_TIME`, `NET_ADMIN`, `MAC_ADMIN`; `MKNOD` (a
/// device node of the host's disk); `DAC_READ_SEARCH` (`open_by_handle_at` reaches any file
/// of the filesystem the tree is on, the known container escape); `NET_RAW` and
/// `NET_BIND_SERVICE` (steps with the network share the host's: no raw packets, no taking its
/// privileged ports).
pub const CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_SETFCAP",
    "CAP_SYS_CHROOT",
    "CAP_AUDIT_WRITE",
];

/// bwrap's options (before `--`) for a command in the tree at `root`.
pub fn sandbox_args(root: &Path, network: bool, epoch: i64) -> Vec<OsString> {
    let mut a: Vec<OsString> = vec!["--bind".into(), root.into(), "/".into()];
    let mut push = |xs: &[&str]| a.extend(xs.iter().map(OsString::from));
    push(&["--dev", "/dev", "--proc", "/proc"]);
    // bwrap covers /proc/sys only when its unprivileged setup finds it writable, which it does
    // not for root without a user namespace: /proc/sys is bound read-only here. A sysctl
    // answers for the namespaces of the process that reads it, so the host's /proc/sys
    // read-only is what the step's own would be.
    push(&["--ro-bind", "/proc/sys", "/proc/sys"]);
    push(&[
        "--ro-bind-try",
        "/proc/sysrq-trigger",
        "/proc/sysrq-trigger",
    ]);
    push(&[
        "--unshare-pid",
        "--unshare-uts",
        "--unshare-ipc",
        "--unshare-cgroup-try",
    ]);
    if !network {
        push(&["--unshare-net"]);
    }
    push(&["--hostname", HOSTNAME, "--die-with-parent", "--new-session"]);
    push(&["--chdir", "/", "--clearenv"]);
    for (k, v) in CHROOT_ENV {
        push(&["--setenv", k, v]);
    }
    push(&["--setenv", "SOURCE_DATE_EPOCH", &epoch.to_string()]);
    push(&["--cap-drop", "ALL"]);
    for c in CAPS {
        push(&["--cap-add", c]);
    }
    a
}

/// The host path of `rel` in the image at `root`, resolved through the image's own symlinks as
/// a process inside it would see them: absolute targets restart at `root` and `..` stops
/// there, so the path never leaves `root`. The last component is followed too when
/// `follow_last`. For writes the host makes into the tree: nothing runs in it then, so what is
/// resolved is what is written.
pub fn confined(root: &Path, rel: &str, follow_last: bool) -> Result<PathBuf, StepError> {
    let mut todo: Vec<PathBuf> = parts(Path::new(rel));
    todo.reverse();
    let mut done = PathBuf::new();
    let mut hops = 0;
    while let Some(c) = todo.pop() {
        if c.as_os_str() == ".." {
            done.pop();
            continue;
        }
        let here = done.join(&c);
        let full = root.join(&here);
        let is_link = std::fs::symlink_metadata(&full).is_ok_and(|m| m.file_type().is_symlink());
        if !is_link || (todo.is_empty() && !follow_last) {
            done = here;
            continue;
        }
        hops += 1;
        if hops > 40 {
            return Err(StepError::Invalid(format!(
                "too many levels of symbolic links resolving `/{rel}` in the image"
            )));
        }
        let target = std::fs::read_link(&full).map_err(StepError::io(&full))?;
        if target.is_absolute() {
            done = PathBuf::new();
        }
        let mut more = parts(&target);
        more.reverse();
        todo.extend(more);
    }
    Ok(root.join(done))
}

/// The normal and `..` components of a path (`/` and `.` dropped).
fn parts(p: &Path) -> Vec<PathBuf> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(PathBuf::from(n)),
            Component::ParentDir => Some(PathBuf::from("..")),
            _ => None,
        })
        .collect()
}

pub struct Session {
    pub root: PathBuf,
    checkout: Checkout,
    created: Vec<PathBuf>,
    /// What `etc/resolv.conf` held before the host's was lent.
    resolv: Option<Option<Vec<u8>>>,
    /// Whether `usr/sbin/policy-rc.d` was put in.
    policy: bool,
    /// Whether commands share the host's network (else a namespace with only loopback).
    network: bool,
}

impl Session {
    /// Materialises input `i`'s tree at `<work>/root`.
    pub fn open(ctx: &StepContext, i: usize, why: &'static str) -> Result<Session, StepError> {
        if !is_root() {
            return Err(StepError::NeedsRoot(why));
        }
        let (d, m) = ctx.input_tree(i)?;
        let root = ctx.work.join("root");
        // The tree an earlier chroot step of this build left, or a fresh export.
        let checkout = match ctx.store.take_tree(&d, &m, &root)? {
            Some((c, taken)) => {
                let how = match taken {
                    Taken::Exact => "as kept".to_string(),
                    Taken::Patched { from, changes } => {
                        format!("patched from {} ({changes} entries differ)", from.short())
                    }
                };
                ctx.note(&format!("the tree {}: a kept copy, {how}", d.short()));
                c
            }
            None => {
                std::fs::create_dir(&root).map_err(StepError::io(&root))?;
                ctx.store.export_dir_stamped(&m, &root)?
            }
        };
        let mut s = Session {
            root,
            checkout,
            created: Vec::new(),
            resolv: None,
            policy: false,
            network: false,
        };
        // bwrap's mount points; whatever the image has there (a link included) is left alone:
        // bwrap mounts inside its own namespace.
        for d in ["dev", "proc"] {
            let p = s.root.join(d);
            if std::fs::symlink_metadata(&p).is_err() {
                std::fs::create_dir(&p).map_err(StepError::io(&p))?;
                s.created.push(p);
            }
        }
        Ok(s)
    }

    /// The host path of `rel` in the tree, through the image's own links ([`confined`]).
    pub fn path(&self, rel: &str) -> Result<PathBuf, StepError> {
        confined(&self.root, rel, true)
    }

    /// Gives the commands the host's network, and lends the host's DNS configuration to the
    /// image until [`Session::close`].
    pub fn with_network(&mut self) -> Result<(), StepError> {
        let p = confined(&self.root, "etc/resolv.conf", false)?;
        let old = match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_file() => Some(std::fs::read(&p).map_err(StepError::io(&p))?),
            _ => None,
        };
        let _ = std::fs::remove_file(&p);
        let host = std::fs::read("/etc/resolv.conf").unwrap_or_default();
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(StepError::io(parent))?;
        }
        std::fs::write(&p, host).map_err(StepError::io(&p))?;
        self.resolv = Some(old);
        self.network = true;
        Ok(())
    }

    /// Keeps package installs from starting services until [`Session::close`].
    pub fn without_services(&mut self) -> Result<(), StepError> {
        let p = confined(&self.root, "usr/sbin/policy-rc.d", false)?;
        if std::fs::symlink_metadata(&p).is_err() {
            write_exec(&p, b"#!/bin/sh\nexit 101\n")?;
            self.policy = true;
        }
        Ok(())
    }

    /// Runs `script` with `/bin/sh -c` inside the image, in the sandbox.
    pub fn run(&self, ctx: &StepContext, script: &str) -> Result<(), StepError> {
        let cmd = Cmd::new("bwrap")
            .args(sandbox_args(&self.root, self.network, ctx.epoch))
            .args(["--", "/bin/sh", "-c", script])
            .cwd(&ctx.work);
        ctx.runner.run(&cmd, &ctx.log)?;
        Ok(())
    }

    /// Like [`Session::close`], for a step whose output is exactly the imported tree: the
    /// folder is kept for a next chroot step of this build that starts from that tree.
    pub fn close_and_keep(self, ctx: &StepContext) -> Result<TreeManifest, StepError> {
        let root = self.root.clone();
        let m = self.close(ctx)?;
        // Best effort: a folder that cannot be kept only costs the next step an export.
        let _ = ctx.store.keep_tree(&root, &m);
        Ok(m)
    }

    /// Takes back what was lent and imports the tree. Paths are resolved again: the command
    /// may have changed the image's links.
    pub fn close(self, ctx: &StepContext) -> Result<TreeManifest, StepError> {
        if let Some(old) = &self.resolv {
            let p = confined(&self.root, "etc/resolv.conf", false)?;
            let _ = std::fs::remove_file(&p);
            if let Some(bytes) = old {
                std::fs::write(&p, bytes).map_err(StepError::io(&p))?;
            }
        }
        if self.policy {
            let p = confined(&self.root, "usr/sbin/policy-rc.d", false)?;
            let _ = std::fs::remove_file(&p);
        }
        for p in &self.created {
            let _ = std::fs::remove_dir(p);
        }
        Ok(ctx
            .store
            .import_dir_since(&self.root, &ctx.import_options(), &self.checkout)?)
    }
}

fn write_exec(p: &Path, content: &[u8]) -> Result<(), StepError> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).map_err(StepError::io(parent))?;
    }
    std::fs::write(p, content).map_err(StepError::io(p))?;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).map_err(StepError::io(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(network: bool) -> Vec<String> {
        sandbox_args(Path::new("/w/root"), network, 7)
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn the_network_is_the_hosts_only_when_asked() {
        assert!(args(false).iter().any(|a| a == "--unshare-net"));
        assert!(!args(true).iter().any(|a| a == "--unshare-net"));
    }

    #[test]
    fn sandbox_drops_every_capability_but_the_listed_ones() {
        let a = args(true).join(" ");
        assert!(
            a.starts_with("--bind /w/root / --dev /dev --proc /proc "),
            "{a}"
        );
        assert!(a.contains("--ro-bind /proc/sys /proc/sys"), "{a}");
        assert!(
            a.contains("--hostname imgspec --die-with-parent --new-session"),
            "{a}"
        );
        assert!(a.contains("--clearenv"), "{a}");
        assert!(a.contains("--setenv SOURCE_DATE_EPOCH 7"), "{a}");
        let drop = a.find("--cap-drop ALL").unwrap();
        assert!(a[drop..].contains("--cap-add CAP_CHOWN"), "{a}");
        for never in [
            "SYS_ADMIN",
            "SYS_MODULE",
            "SYS_RAWIO",
            "SYS_PTRACE",
            "MKNOD",
            "DAC_READ_SEARCH",
        ] {
            assert!(!a.contains(never), "{never} in {a}");
        }
    }

    #[test]
    fn confined_paths_never_leave_the_root() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::create_dir_all(root.join("usr/sbin")).unwrap();
        std::os::unix::fs::symlink("/", root.join("up")).unwrap();
        std::os::unix::fs::symlink("../../../../etc", root.join("usr/etc")).unwrap();
        std::os::unix::fs::symlink("/usr/sbin", root.join("sbin")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("usr/sbin/link")).unwrap();
        assert_eq!(
            confined(root, "up/etc/x", false).unwrap(),
            root.join("etc/x")
        );
        assert_eq!(
            confined(root, "usr/etc/x", false).unwrap(),
            root.join("etc/x")
        );
        assert_eq!(
            confined(root, "sbin/p", false).unwrap(),
            root.join("usr/sbin/p")
        );
        assert_eq!(
            confined(root, "sbin/link", false).unwrap(),
            root.join("usr/sbin/link")
        );
        assert_eq!(
            confined(root, "sbin/link", true).unwrap(),
            root.join("etc/passwd")
        );
        std::os::unix::fs::symlink("loop", root.join("loop")).unwrap();
        assert!(confined(root, "loop/x", false).is_err());
    }
}
