//! apt inside the image: what a `packages` layer of a Debian-family image does.
//!
//! Makes: the input tree after `apt-get update` and `apt-get install --no-install-recommends`,
//! with apt's lists, caches and logs removed and host leaks scrubbed ([`super::scrub`]). The
//! host's DNS configuration is lent for the download and taken back. Needs root.
//!
//! Unlocked, the `.deb` files apt downloaded are taken out of the tree before it is imported
//! and recorded with what apt's lists say of them ([`super::apt::harvest`]), for `imgspec
//! lock`. Locked, apt's only source is a flat repository of exactly the step's locked files,
//! put at `/tmp/imgspec-lock` in the tree for the install and removed before the import (the
//! image's own sources are left alone, so they still name the real archive).

use imgspec_cache::StepOutput;

use super::apt;
use super::scrub::scrub;
use crate::distro::{record_installed, Locked};
use crate::steps::chroot::Session;
use crate::steps::scrub::After;
use crate::steps::tree::Tree;
use crate::steps::{StepContext, StepError};

/// Where a locked install's repository is, inside the image tree during the step.
const REPO_IN_TREE: &str = "tmp/imgspec-lock";

/// What every install runs with, beyond the package list ([`APT_ENV`], [`DPKG_UNSAFE_IO`]):
/// - `INITRD=No` (in apt's environment, so in every maintainer script's): the kernel's own
///   hook (`/etc/kernel/postinst.d/initramfs-tools`, `…/dracut`) makes no initramfs (and
///   `linux-update-symlinks` no `/initrd.img` links). Debian makes one there and makes it again
///   when the `update-initramfs` trigger runs at the end of the same install; the last one is
///   what the image keeps. Here only that last one is made: by the trigger, which also makes
///   the links (the build log shows `Generating` once, then the links), or, for a kernel no
///   trigger runs for (initramfs-tools installed by an earlier layer), by
///   [`INITRAMFS_AFTER`], after everything is configured, as the trigger would have. The
///   committed `specs/debian-efi.SHA256SUMS` prove it the same bytes as before.
/// - dpkg's `--force-unsafe-io`: no fsync per unpacked file. The tree is scratch until it is
///   hashed into the store, which syncs what it keeps; a crash loses the step, never the cache.
const APT_ENV: &str = "INITRD=No";
/// See [`APT_ENV`].
const DPKG_UNSAFE_IO: &str = "-o DPkg::Options::=--force-unsafe-io";

/// The kernels there were before the install (see [`INITRAMFS_AFTER`]).
const KERNELS_BEFORE: &str = "imgspec_kernels=$(echo $(ls /lib/modules 2>/dev/null))";

/// After the install: each kernel it added that has no initramfs gets it from the hook
/// `INITRD=No` held back.
const INITRAMFS_AFTER: &str = r#"for m in /lib/modules/*/; do
    [ -d "$m" ] || continue
    k=$(basename "$m")
    case " $imgspec_kernels " in *" $k "*) continue ;; esac
    [ -e "/boot/vmlinuz-$k" ] && [ ! -e "/boot/initrd.img-$k" ] || continue
    for h in initramfs-tools dracut; do
        if [ -x "/etc/kernel/postinst.d/$h" ]; then
            "/etc/kernel/postinst.d/$h" "$k" "/boot/vmlinuz-$k"
            break
        fi
    done
    # The `/initrd.img` links the kernel's postinst left out under INITRD=No.
    if [ -e "/boot/initrd.img-$k" ] && command -v linux-update-symlinks >/dev/null; then
        linux-update-symlinks install "$k" "/boot/vmlinuz-$k"
    fi
done"#;

/// The script run inside the image. Unlocked, the downloaded files stay in apt's cache
/// for [`apt::harvest`]; locked, apt reads only the repository at [`REPO_IN_TREE`].
pub fn script(packages: &[String], locked: Option<&Locked>) -> String {
    let pkgs = packages.join(" ");
    let (o, clean) = match locked {
        None => (String::new(), ""),
        Some(_) => (
            format!(
                " -o Dir::Etc::SourceList=/{REPO_IN_TREE}/sources.list \
                 -o Dir::Etc::SourceParts=/{REPO_IN_TREE}/sources.list.d"
            ),
            "\napt-get clean",
        ),
    };
    format!(
        "set -e\n{KERNELS_BEFORE}\napt-get{o} update -q\n\
         {APT_ENV} apt-get{o} {DPKG_UNSAFE_IO} install -y -q --no-install-recommends {pkgs}{clean}\n\
         {INITRAMFS_AFTER}\n"
    )
}

/// Installs `packages` into the input tree.
pub fn install(
    ctx: &StepContext,
    packages: &[String],
    locked: Option<&Locked>,
) -> Result<StepOutput, StepError> {
    let mut s = Session::open(ctx, 0, "apt installs packages in a chroot")?;
    let repo = s.path(REPO_IN_TREE)?;
    match &locked {
        None => s.with_network()?,
        Some(l) => {
            apt::write_repo(ctx, &l.debs, &repo, "imgspec-lock")?;
            let parts = repo.join("sources.list.d");
            std::fs::create_dir_all(&parts).map_err(StepError::io(&parts))?;
            let list = repo.join("sources.list");
            let line = format!("deb [trusted=yes] file:/{REPO_IN_TREE} ./\n");
            std::fs::write(&list, line).map_err(StepError::io(&list))?;
        }
    }
    s.without_services()?;
    s.run(ctx, &script(packages, locked))
        .map_err(|e| apt_error(e, packages))?;
    // Paths resolved again: the install may have changed the image's links.
    let lists = s.path("var/lib/apt/lists")?;
    let archive_date = apt::archive_date(&lists);
    let installed = match &locked {
        None => apt::harvest(ctx, &s.path("var/cache/apt/archives")?, &lists)?,
        Some(l) => {
            let repo = s.path(REPO_IN_TREE)?;
            std::fs::remove_dir_all(&repo).map_err(StepError::io(&repo))?;
            l.debs.clone()
        }
    };
    let m = s.close(ctx)?;
    let mut tree = Tree::new(m);
    if let Some(l) = &locked {
        apt::check_installed(ctx, &tree, &l.debs)?;
    }
    scrub(&mut tree, ctx.store, ctx.epoch, After::Packages)?;
    let mut output = ctx.tree_output(&tree.into_manifest())?;
    let archive_date = archive_date.filter(|_| locked.is_none());
    record_installed(&mut output, &installed, archive_date);
    Ok(output)
}

/// Turns apt's failure into a message that names the packages apt could not find.
fn apt_error(e: StepError, packages: &[String]) -> StepError {
    let StepError::Run(crate::runner::RunError::Failed { tail, .. }) = &e else {
        return e;
    };
    let unknown: Vec<&str> = tail
        .iter()
        .filter_map(|l| l.strip_prefix("E: Unable to locate package "))
        .map(str::trim)
        .filter(|p| packages.iter().any(|q| q == p))
        .collect();
    if unknown.is_empty() {
        let errors: Vec<&str> = tail
            .iter()
            .filter(|l| l.starts_with("E: "))
            .map(String::as_str)
            .collect();
        if errors.is_empty() {
            return e;
        }
        return StepError::Invalid(format!("apt failed:\n    {}", errors.join("\n    ")));
    }
    StepError::Invalid(format!(
        "apt cannot find package{} {} in the archive",
        if unknown.len() > 1 { "s" } else { "" },
        unknown
            .iter()
            .map(|p| format!("`{p}`"))
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::RunError;

    /// Both scripts are shell that `sh -n` reads.
    #[test]
    fn scripts_parse() {
        let locked = Locked {
            digest: String::new(),
            debs: vec![],
        };
        for script in [
            script(&["udev".into()], None),
            script(&["udev".into()], Some(&locked)),
        ] {
            let out = std::process::Command::new("/bin/sh")
                .args(["-n", "-c", &script])
                .output()
                .unwrap();
            assert!(out.status.success(), "{script}\n{out:?}");
        }
    }

    #[test]
    fn names_the_missing_package() {
        let e = StepError::Run(RunError::Failed {
            program: "bwrap".into(),
            status: "exit status: 100".into(),
            tail: vec![
                "Reading package lists...".into(),
                "E: Unable to locate package no-such-pkg".into(),
            ],
        });
        let msg = apt_error(e, &["no-such-pkg".into(), "udev".into()]).to_string();
        assert_eq!(msg, "apt cannot find package `no-such-pkg` in the archive");
    }
}
