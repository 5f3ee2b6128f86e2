//! dnf inside the image: what a `packages` layer does on an RPM-family tree (an imported disk
//! or a tarball whose os-release or programs say so, [`super::manager_of`]).
//!
//! Makes: the input tree after `dnf -y install` of the set's packages under their RPM-family
//! names ([`super::names`]), without weak dependencies (`install_weak_deps=False`, as apt's
//! `--no-install-recommends`) and without documentation (`tsflags=nodocs`), then `dnf clean
//! all`; dnf's caches (`/var/cache/dnf`, `/var/cache/libdnf5`, `/var/cache/yum`) are removed
//! and every tree's scrub rules applied ([`crate::steps::scrub`]). The repositories are the
//! image's own (`/etc/yum.repos.d`); the host's DNS configuration is lent for the download and
//! taken back. Needs root.
//!
//! Reproducible: rpm (4.18 and later) records `SOURCE_DATE_EPOCH`, which the sandbox sets to
//! the build's epoch, as the install time in its database; dnf's own history
//! (`/var/lib/dnf/history.sqlite`, dnf5's `/usr/lib/sysimage/libdnf5/transaction_history.sqlite`)
//! records the wall clock, so its transactions' times are set to the epoch afterwards and the
//! database is left without its write-ahead log ([`HISTORY_PY`], by the image's python3: dnf 4
//! is written in it; an image without python3 keeps dnf's times).
//!
//! Not locked: `imgspec lock` cannot pin a dnf set yet (the step records [`super::MANAGER_META`]
//! and no `.deb` lines, and the lock refuses it), and a lock that pins the set (made while the
//! tree was a Debian one) is refused here.

use imgspec_cache::StepOutput;

use super::names::{debian_name_of, rpm_names};
use super::MANAGER_META;
use crate::distro::Locked;
use crate::steps::chroot::Session;
use crate::steps::scrub::{scrub, After};
use crate::steps::tree::Tree;
use crate::steps::{StepContext, StepError};

/// dnf's caches, emptied after the install (what `dnf clean all` leaves of them too).
pub const CACHES: &[&str] = &["var/cache/dnf", "var/cache/libdnf5", "var/cache/yum"];

/// Where [`HISTORY_PY`] is put in the tree for the step (`/tmp`'s content never reaches it).
const HISTORY_PY_IN_TREE: &str = "tmp/imgspec-dnf-history.py";

/// Sets the times of dnf's history to the build's epoch, and takes the database out of WAL
/// mode so that no `-wal`/`-shm` file is left beside it. A history of another layout is left as
/// it is, with a line in the step's log (`imgspec verify` then shows the difference).
pub const HISTORY_PY: &str = r#"import os, sqlite3, sys
epoch = int(os.environ["SOURCE_DATE_EPOCH"])
for db in ("/var/lib/dnf/history.sqlite",
           "/usr/lib/sysimage/libdnf5/transaction_history.sqlite"):
    if not os.path.isfile(db):
        continue
    try:
        c = sqlite3.connect(db)
        c.execute("UPDATE trans SET dt_begin = ?, dt_end = ?", (epoch, epoch))
        c.commit()
        c.execute("PRAGMA journal_mode=DELETE")
        c.close()
    except sqlite3.Error as e:
        print(f"imgspec: dnf's history {db} keeps its times: {e}", file=sys.stderr)
"#;

/// The script run inside the image: `dnf` is the program ([`super::DNF_PROGRAMS`]).
pub fn script(dnf: &str, rpms: &[String]) -> String {
    format!(
        "{dnf} -y install --setopt=install_weak_deps=False --setopt=tsflags=nodocs {} && \
         {dnf} clean all && \
         if command -v python3 >/dev/null; then python3 /{HISTORY_PY_IN_TREE}; fi",
        rpms.join(" ")
    )
}

/// Installs `packages` (Debian or RPM names) into the input tree with its `dnf`.
pub fn install(
    ctx: &StepContext,
    dnf: &'static str,
    packages: &[String],
    locked: Option<&Locked>,
) -> Result<StepOutput, StepError> {
    if locked.is_some() {
        return Err(StepError::Invalid(
            "the lock pins `.deb` files for this set, but the image installs its packages with \
             dnf: imgspec cannot lock dnf sets yet; remove the image's sets from the lock file \
             (or the lock file) and build unlocked"
                .into(),
        ));
    }
    let rpms = rpm_names(packages).map_err(|none| {
        StepError::Invalid(format!(
            "{} ha{} no RPM-family package: {} cannot install on this image (dnf)",
            none.iter()
                .map(|p| format!("`{p}`"))
                .collect::<Vec<_>>()
                .join(", "),
            if none.len() > 1 { "ve" } else { "s" },
            if none.len() > 1 { "they" } else { "it" },
        ))
    })?;
    let mut s = Session::open(ctx, 0, "dnf installs packages in a chroot")?;
    s.with_network()?;
    s.without_services()?;
    let py = s.path(HISTORY_PY_IN_TREE)?;
    if let Some(d) = py.parent() {
        std::fs::create_dir_all(d).map_err(StepError::io(d))?;
    }
    std::fs::write(&py, HISTORY_PY).map_err(StepError::io(&py))?;
    s.run(ctx, &script(dnf, &rpms))
        .map_err(|e| dnf_error(e, &rpms, packages))?;
    let m = s.close(ctx)?;
    let mut tree = Tree::new(m);
    for c in CACHES {
        tree.remove_children(c, |_| true);
    }
    scrub(&mut tree, ctx.store, ctx.epoch, After::Packages)?;
    let mut output = ctx.tree_output(&tree.into_manifest())?;
    output.meta.insert(MANAGER_META.into(), dnf.into());
    Ok(output)
}

/// Turns dnf's failure into a message that names the packages it could not find (with the
/// Debian name a package was asked for under, when it was mapped).
fn dnf_error(e: StepError, rpms: &[String], asked: &[String]) -> StepError {
    let StepError::Run(crate::runner::RunError::Failed { tail, .. }) = &e else {
        return e;
    };
    let mut unknown: Vec<String> = tail
        .iter()
        .filter_map(|l| {
            // dnf 4 and dnf5: `No match for argument: P`; yum: `No package P available.`
            l.trim()
                .strip_prefix("No match for argument: ")
                .or_else(|| {
                    l.trim()
                        .strip_prefix("No package ")
                        .and_then(|r| r.strip_suffix(" available."))
                })
                .map(str::trim)
        })
        .filter(|p| rpms.iter().any(|q| q == p))
        .map(|p| match debian_name_of(p, asked) {
            Some(deb) => format!("`{p}` (for `{deb}`)"),
            None => format!("`{p}`"),
        })
        .collect();
    unknown.dedup();
    if unknown.is_empty() {
        let errors: Vec<&str> = tail
            .iter()
            .map(|l| l.trim())
            .filter(|l| l.starts_with("Error:") || l.starts_with("Problem"))
            .collect();
        if errors.is_empty() {
            return e;
        }
        return StepError::Invalid(format!("dnf failed:\n    {}", errors.join("\n    ")));
    }
    StepError::Invalid(format!(
        "dnf cannot find package{} {} in the image's repositories (`/etc/yum.repos.d`)",
        if unknown.len() > 1 { "s" } else { "" },
        unknown.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::RunError;

    fn failed(tail: &[&str]) -> StepError {
        StepError::Run(RunError::Failed {
            program: "bwrap".into(),
            status: "exit status: 1".into(),
            tail: tail.iter().map(|s| s.to_string()).collect(),
        })
    }

    #[test]
    fn names_the_missing_package_and_what_it_was_asked_as() {
        let asked = vec!["cloud-guest-utils".to_string(), "no-such".to_string()];
        let rpms = rpm_names(&asked).unwrap();
        let e = failed(&[
            "Last metadata expiration check: 0:00:01 ago.",
            "No match for argument: cloud-utils-growpart",
            "No match for argument: no-such",
            "Error: Unable to find a match: cloud-utils-growpart no-such",
        ]);
        assert_eq!(
            dnf_error(e, &rpms, &asked).to_string(),
            "dnf cannot find packages `cloud-utils-growpart` (for `cloud-guest-utils`), \
             `no-such` in the image's repositories (`/etc/yum.repos.d`)"
        );
        let e = failed(&["No package no-such available.", "Error: Nothing to do"]);
        assert_eq!(
            dnf_error(e, &rpms, &asked).to_string(),
            "dnf cannot find package `no-such` in the image's repositories (`/etc/yum.repos.d`)"
        );
    }

    #[test]
    fn other_failures_keep_dnfs_error_lines() {
        let e = failed(&[
            "Errors during downloading metadata for repository 'test':",
            "Error: Failed to download metadata for repo 'test'",
        ]);
        assert_eq!(
            dnf_error(e, &["x".into()], &["x".into()]).to_string(),
            "dnf failed:\n    Error: Failed to download metadata for repo 'test'"
        );
    }

    #[test]
    fn the_script_installs_without_weak_deps_and_docs() {
        assert_eq!(
            script("dnf", &["a".into(), "b".into()]),
            "dnf -y install --setopt=install_weak_deps=False --setopt=tsflags=nodocs a b && \
             dnf clean all && \
             if command -v python3 >/dev/null; then python3 /tmp/imgspec-dnf-history.py; fi"
        );
    }
}
