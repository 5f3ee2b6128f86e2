//! What the package-installing steps (`base "debian"`, `packages`) share about lock files
//! ([`crate::lockfile`]):
//!
//! - Unlocked, a step records what apt really downloaded ([`harvest`]): each `.deb` is moved
//!   into the cache's deb store by SHA-256, its name, version and architecture read with
//!   `dpkg-deb -f`, its suite, archive `Filename` and priority found in apt's lists of the same
//!   run. The result goes into the step's output as `deb` lines under
//!   [`crate::distro::DEBS_META`]; `imgspec
//!   lock` writes them into the lock file. Nothing of this reaches the image tree (the files
//!   are taken out before it is imported; lists and caches are scrubbed).
//! - Locked, a step installs from a flat repository of exactly its locked files ([`write_repo`]),
//!   which apt trusts because the `Packages` index carries each file's SHA-256 from the lock.

//!
//! What apt and dpkg may see of the host is pinned here ([`APT_PINNED`], [`pinned_env`]).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::archive;
use super::debstore::{DebError, DebStore};
use crate::lockfile::LockedDeb;
use crate::runner::Cmd;
use crate::steps::{StepContext, StepError};

/// apt options of every bootstrap. apt drops privileges to `_apt` for downloads only when
/// `_apt` can reach the download folder, which depends on who may read the caller's temp
/// folder and the cache's parents (a cache under `/root` never can): apt is told to stay root,
/// always, and the folders' owner is normalised in the tree ([`crate::steps::scrub`]).
pub const APT_PINNED: &[&str] = &["APT::Sandbox::User \"root\""];
/// Where mmdebstrap writes the `--aptopt` lines in the image (removed by a customize hook).
pub const MMDEBSTRAP_APT_CONF: &str = "etc/apt/apt.conf.d/99mmdebstrap";

/// The environment of mmdebstrap and, through it, apt, dpkg and the maintainer scripts,
/// beyond `PATH` and the proxy variables ([`crate::runner::PASSED_THROUGH`]): the C locale, UTC,
/// root's home, and temp files in the step's scratch folder `scratch` (inside the cache, removed
/// with the step) instead of the caller's `TMPDIR`.
pub fn pinned_env(scratch: &Path, epoch: i64) -> Vec<(String, String)> {
    [
        ("LC_ALL", "C.UTF-8".to_string()),
        ("LANG", "C.UTF-8".to_string()),
        ("TZ", "UTC".to_string()),
        ("HOME", "/root".to_string()),
        ("TMPDIR", scratch.display().to_string()),
        ("DEBIAN_FRONTEND", "noninteractive".to_string()),
        ("DEBCONF_NONINTERACTIVE_SEEN", "true".to_string()),
        ("SOURCE_DATE_EPOCH", epoch.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// The newest `Date:` among the `*Release` files of an apt lists folder.
pub fn archive_date(lists_dir: &Path) -> Option<i64> {
    let rd = std::fs::read_dir(lists_dir).ok()?;
    rd.filter_map(|e| e.ok())
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n.ends_with("_InRelease") || n.ends_with("_Release")
        })
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("Date:"))
                .and_then(|d| parse_release_date(d.trim()))
        })
        .max()
}

/// `Sat, 08 Nov 2025 09:10:55 UTC` (the `Date:` of a Release file) in seconds since the epoch.
pub fn parse_release_date(s: &str) -> Option<i64> {
    let s = s.split_once(',').map_or(s, |(_, rest)| rest).trim();
    let mut it = s.split_whitespace();
    let day: i64 = it.next()?.parse().ok()?;
    let month = match it.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: i64 = it.next()?.parse().ok()?;
    let mut hms = it.next()?.split(':').map(|p| p.parse::<i64>().ok());
    let (h, m, sec) = (hms.next()??, hms.next()??, hms.next()??);
    if !matches!(it.next(), None | Some("UTC" | "GMT" | "+0000")) {
        return None;
    }
    // Howard Hinnant's days_from_civil.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + m * 60 + sec)
}

fn deb_error(e: DebError) -> StepError {
    StepError::Invalid(crate::exec::error_lines(&e))
}

pub fn deb_store(ctx: &StepContext) -> DebStore {
    DebStore::new(ctx.store.root())
}

/// The control fields of the stored `.deb` `sha256`, read once with `dpkg-deb -f` and kept.
fn control(ctx: &StepContext, store: &DebStore, sha256: &str) -> Result<String, StepError> {
    let path = store.control_path(sha256);
    if let Ok(text) = std::fs::read_to_string(&path) {
        return Ok(text);
    }
    let tmp = ctx.work.join(format!("{sha256}.control"));
    let cmd = Cmd::new("dpkg-deb")
        .arg("-f")
        .arg(store.path(sha256).as_os_str())
        .stdout_file(&tmp);
    ctx.runner.run(&cmd, &ctx.log)?;
    let text = std::fs::read_to_string(&tmp).map_err(StepError::io(&tmp))?;
    // Kept beside the file (write then rename: never half a control file).
    let _ = std::fs::rename(&tmp, &path);
    Ok(text)
}

/// Records the `.deb` files apt left in `debs_dir`, with what `lists_dir` says of them; moves
/// them into the deb store. Returns the `deb` lines, sorted.
pub fn harvest(
    ctx: &StepContext,
    debs_dir: &Path,
    lists_dir: &Path,
) -> Result<Vec<LockedDeb>, StepError> {
    let store = deb_store(ctx);
    let mut files: Vec<PathBuf> = match std::fs::read_dir(debs_dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "deb"))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(StepError::io(debs_dir)(e)),
    };
    files.sort();
    let mut stored = Vec::new();
    for f in &files {
        let (sha, size) = store.put(f).map_err(deb_error)?;
        std::fs::remove_file(f).map_err(StepError::io(f))?;
        let c = control(ctx, &store, &sha)?;
        let get = |n| archive::field(&c, n).unwrap_or_default().to_string();
        stored.push((
            get("Package"),
            get("Version"),
            get("Architecture"),
            sha,
            size,
        ));
    }
    let wanted: BTreeSet<String> = stored.iter().map(|s| s.0.clone()).collect();
    let index = archive::read_lists(lists_dir, &wanted).map_err(deb_error)?;
    let mut out = Vec::new();
    for (name, version, arch, sha256, size) in stored {
        let entries = index
            .get(&(name.clone(), version.clone(), arch.clone()))
            .map(Vec::as_slice)
            .unwrap_or_default();
        // The suite whose index has this very file (the same version can be in two suites).
        let Some(e) = entries
            .iter()
            .find(|e| e.sha256.eq_ignore_ascii_case(&sha256))
        else {
            return Err(StepError::Invalid(format!(
                "apt downloaded `{name}` {version} ({arch}) but no index of the archive lists \
                 that file (SHA-256 {sha256}): cannot lock it"
            )));
        };
        out.push(LockedDeb {
            name,
            arch,
            version,
            sha256,
            size,
            suite: e.suite.clone(),
            priority: e.priority.clone(),
            filename: e.filename.clone(),
        });
    }
    out.sort();
    Ok(out)
}

/// Writes a flat apt repository of `debs` at `dir` (`pool/<sha256>.deb` hard-linked from the
/// deb store, `Packages`, and a `Release` naming it `suite`: mmdebstrap picks the essential and
/// required packages of its suite argument by archive and codename). Every file must be in the
/// store (the build's pre-flight fetched the missing ones).
pub fn write_repo(
    ctx: &StepContext,
    debs: &[LockedDeb],
    dir: &Path,
    suite: &str,
) -> Result<(), StepError> {
    let store = deb_store(ctx);
    let pool = dir.join("pool");
    std::fs::create_dir_all(&pool).map_err(StepError::io(&pool))?;
    let mut with_control = Vec::new();
    for d in debs {
        let src = store.path(&d.sha256);
        if !src.is_file() {
            return Err(StepError::Invalid(format!(
                "locked package `{}` {} ({}) is not in the cache (`{}`)",
                d.name,
                d.version,
                d.arch,
                src.display()
            )));
        }
        let dest = pool.join(format!("{}.deb", d.sha256));
        if std::fs::hard_link(&src, &dest).is_err() {
            std::fs::copy(&src, &dest).map_err(StepError::io(&dest))?;
        }
        with_control.push((d.clone(), control(ctx, &store, &d.sha256)?));
    }
    let p = dir.join("Packages");
    let index = archive::packages_index(&with_control);
    std::fs::write(&p, &index).map_err(StepError::io(&p))?;
    let r = dir.join("Release");
    std::fs::write(&r, archive::release(suite, index.as_bytes())).map_err(StepError::io(&r))?;
    Ok(())
}

/// Checks that a locked step's tree has every locked package installed at its locked version
/// and architecture (`var/lib/dpkg/status`): a repository apt did not take, or a package it
/// left out, fails the step instead of storing a tree that is not what the lock says.
pub fn check_installed(
    ctx: &StepContext,
    tree: &crate::steps::tree::Tree,
    debs: &[LockedDeb],
) -> Result<(), StepError> {
    let status = tree
        .read(ctx.store, "var/lib/dpkg/status")?
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let installed = archive::installed(&status);
    let wrong: Vec<String> = debs
        .iter()
        .filter(|d| installed.get(&(d.name.clone(), d.arch.clone())) != Some(&d.version))
        .map(|d| {
            let got = installed
                .get(&(d.name.clone(), d.arch.clone()))
                .map_or("not installed".to_string(), |v| format!("{v} installed"));
            format!("`{}` {} ({}): {got}", d.name, d.version, d.arch)
        })
        .collect();
    if wrong.is_empty() {
        return Ok(());
    }
    Err(StepError::Invalid(format!(
        "the image does not have the locked versions of {} package{}:\n    {}",
        wrong.len(),
        if wrong.len() == 1 { "" } else { "s" },
        wrong.join("\n    ")
    )))
}

#[cfg(test)]
mod date_tests {
    use super::parse_release_date;

    #[test]
    fn release_dates() {
        assert_eq!(
            parse_release_date("Sat, 08 Nov 2025 09:10:55 UTC"),
            Some(1_762_593_055)
        );
        assert_eq!(parse_release_date("Thu, 01 Jan 1970 00:00:00 UTC"), Some(0));
        assert_eq!(
            parse_release_date("Sat, 10 Jun 2023 00:00:00 UTC"),
            Some(1_686_355_200)
        );
        assert_eq!(parse_release_date("Sat, 08 Nov 2025 09:10:55 CET"), None);
        assert_eq!(parse_release_date("yesterday"), None);
    }
}
