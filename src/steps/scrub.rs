//! Removes what a package manager or bootstrapper leaks of the build host and the build time
//! from a tree, so that two builds give the same tree and no image carries a host's identity.
//! These are the rules of every Linux tree; each distribution family adds its package
//! manager's after them (Debian's: [`crate::distro::debian::scrub`]).
//!
//! - SSH host keys are removed; an `imgspec-ssh-keygen.service` unit that the image carries
//!   creates new ones at first boot.
//! - `/etc/hostname` becomes `localhost` after a bootstrap (mmdebstrap copies the host's);
//!   later layers leave it alone, so that `element "hostname"` survives package layers.
//! - `/etc/resolv.conf` is removed (DHCP writes it).
//! - `/etc/machine-id` is left empty (systemd fills it at first boot), the D-Bus copy removed.
//! - Logs under `/var/log`, the ldconfig aux cache and `/tmp`'s content are removed.

use super::tree::Tree;
use super::StepError;
use imgspec_cache::Store;

const KEYGEN_UNIT: &str = "etc/systemd/system/imgspec-ssh-keygen.service";
const KEYGEN_UNIT_TEXT: &str = "\
[Unit]
Description=Generate SSH host keys at first boot (imgspec)
Before=ssh.service
ConditionPathExistsGlob=!/etc/ssh/ssh_host_*_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=multi-user.target
";

/// Removes the SSH host keys; where the tree has an SSH server, adds the unit that makes new
/// ones at first boot.
pub fn ssh_host_keys(tree: &mut Tree, store: &Store, epoch: i64) -> Result<(), StepError> {
    tree.remove_children("etc/ssh", |n| n.starts_with("ssh_host_"));
    if tree.entries.contains_key("etc/ssh/sshd_config") {
        tree.put_file(
            store,
            KEYGEN_UNIT,
            KEYGEN_UNIT_TEXT.as_bytes(),
            0o644,
            epoch,
        )?;
        tree.put_symlink(
            "etc/systemd/system/multi-user.target.wants/imgspec-ssh-keygen.service",
            "/etc/systemd/system/imgspec-ssh-keygen.service",
            epoch,
        )?;
    }
    Ok(())
}

/// Where the tree comes from: a bootstrap copies some of the host's identity, a package layer
/// on top of an image does not.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum After {
    Bootstrap,
    Packages,
}

pub fn scrub(tree: &mut Tree, store: &Store, epoch: i64, after: After) -> Result<(), StepError> {
    ssh_host_keys(tree, store, epoch)?;
    if after == After::Bootstrap && tree.entries.contains_key("etc/hostname") {
        tree.put_file(store, "etc/hostname", b"localhost\n", 0o644, epoch)?;
    }
    tree.remove("etc/resolv.conf");
    if tree.entries.contains_key("etc/machine-id") {
        tree.put_file(store, "etc/machine-id", b"", 0o444, epoch)?;
    }
    tree.remove("var/lib/dbus/machine-id");
    tree.remove("var/cache/ldconfig/aux-cache");
    // Logs: files go, directories stay (packages expect their log folders).
    let logs: Vec<String> = tree
        .entries
        .iter()
        .filter(|(p, e)| {
            p.starts_with("var/log/") && !matches!(e.kind, imgspec_cache::EntryKind::Dir)
        })
        .map(|(p, _)| p.clone())
        .collect();
    for p in logs {
        tree.remove(&p);
    }
    tree.remove_children("tmp", |_| true);
    Ok(())
}
