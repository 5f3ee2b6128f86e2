//! Running commands inside an image tree: materialise the tree in scratch space, run the
//! command under `chroot` in a private mount and PID namespace (`unshare`), with `/dev` and
//! `/proc` mounted only inside that namespace, then import the result. The import reads only
//! the files the command changed: the others still have the inode, size, mtime and ctime the
//! export left them with, and keep the digest they were exported from
//! ([`imgspec_cache::Checkout`]). A step whose output is exactly the imported tree (`run`,
//! `element`, `bootloader`) keeps the folder for the session ([`Session::close_and_keep`],
//! [`imgspec_cache::Store::keep_tree`]): a next chroot step of the build whose input is that
//! tree starts from it instead of exporting the tree again.
//!
//! What the host lends the command (`/etc/resolv.conf` for the network, a `policy-rc.d` that
//! keeps services from starting) is put in before and taken out after, so it never reaches the
//! stored tree.

use std::path::{Path, PathBuf};

use imgspec_cache::{Checkout, Manifest};

use super::{is_root, StepContext, StepError};
use crate::runner::Cmd;

/// Environment of every command run in the image: nothing of the host's.
const CHROOT_ENV: &[&str] = &[
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME=/root",
    "LC_ALL=C.UTF-8",
    "LANG=C.UTF-8",
    "DEBIAN_FRONTEND=noninteractive",
    "DEBCONF_NONINTERACTIVE_SEEN=true",
];

/// The script `unshare` runs: mounts in the new namespace only, then chroot.
const ENTER: &str = r#"set -e
root="$1"; script="$2"; shift 2
mount --rbind /dev "$root/dev"
mount -t proc proc "$root/proc"
exec chroot "$root" /usr/bin/env -i "$@" /bin/sh -c "$script"
"#;

pub struct Session {
    pub root: PathBuf,
    checkout: Checkout,
    created: Vec<PathBuf>,
    resolv: Option<Option<Vec<u8>>>,
    policy: bool,
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
            Some(c) => c,
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
        };
        for d in ["dev", "proc"] {
            let p = s.root.join(d);
            if !p.exists() {
                std::fs::create_dir(&p).map_err(StepError::io(&p))?;
                s.created.push(p);
            }
        }
        Ok(s)
    }

    /// Lends the host's DNS configuration to the image until [`Session::close`].
    pub fn with_network(&mut self) -> Result<(), StepError> {
        let p = self.root.join("etc/resolv.conf");
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
        Ok(())
    }

    /// Keeps package installs from starting services until [`Session::close`].
    pub fn without_services(&mut self) -> Result<(), StepError> {
        let p = self.root.join("usr/sbin/policy-rc.d");
        if !p.exists() {
            write_exec(&p, b"#!/bin/sh\nexit 101\n")?;
            self.policy = true;
        }
        Ok(())
    }

    /// Runs `script` with `/bin/sh -c` inside the image.
    pub fn run(&self, ctx: &StepContext, script: &str) -> Result<(), StepError> {
        let mut cmd = Cmd::new("unshare")
            .args([
                "--mount",
                "--pid",
                "--fork",
                "--kill-child",
                "--propagation",
                "private",
            ])
            .args(["--", "/bin/sh", "-c", ENTER, "imgspec-chroot"])
            .arg(self.root.as_os_str())
            .arg(script)
            .args(CHROOT_ENV.iter().copied())
            .arg(format!("SOURCE_DATE_EPOCH={}", ctx.epoch));
        cmd = cmd.cwd(&ctx.work);
        ctx.runner.run(&cmd, &ctx.log)?;
        Ok(())
    }

    /// Like [`Session::close`], for a step whose output is exactly the imported tree: the
    /// folder is kept for a next chroot step of this build that starts from that tree.
    pub fn close_and_keep(self, ctx: &StepContext) -> Result<Manifest, StepError> {
        let root = self.root.clone();
        let m = self.close(ctx)?;
        // Best effort: a folder that cannot be kept only costs the next step an export.
        let _ = ctx.store.keep_tree(&root, &m);
        Ok(m)
    }

    /// Takes back what was lent and imports the tree.
    pub fn close(self, ctx: &StepContext) -> Result<Manifest, StepError> {
        if let Some(old) = &self.resolv {
            let p = self.root.join("etc/resolv.conf");
            let _ = std::fs::remove_file(&p);
            if let Some(bytes) = old {
                std::fs::write(&p, bytes).map_err(StepError::io(&p))?;
            }
        }
        if self.policy {
            let p = self.root.join("usr/sbin/policy-rc.d");
            std::fs::remove_file(&p).map_err(StepError::io(&p))?;
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
