//! The Debian family's bootstrap (kind `base-debian`, see [`crate::steps::bootstrap`]):
//!
//! - `base "debian"|"ubuntu" suite=... variant=...` runs mmdebstrap (tar output, root mode,
//!   SOURCE_DATE_EPOCH set, standard input from /dev/null) and imports its tarball, with host
//!   leaks scrubbed ([`crate::steps::scrub`]). The mirror is the spec's `mirror`, else the host's apt
//!   sources for the Debian archive (with the suite's `-updates` and `-security` companions).
//!   Key: distro, suite, variant, architecture, components, the spec's mirror when given (the
//!   host's mirror is not hashed: any mirror of the archive serves the same packages), the
//!   keyring's digest when given, mmdebstrap's version, and with a lock file the digest of the
//!   step's locked packages ([`crate::lockfile::LockSet::digest`]).
//! - Unlocked, mmdebstrap keeps the `.deb` files it downloaded and apt's lists (copied out by
//!   customize hooks, never into the tree): the step records them for `imgspec lock`
//!   ([`super::apt::harvest`]).
//! - Locked, mmdebstrap's only mirror is a flat repository of exactly the locked files
//!   (`copy://`, `[trusted=yes]`: the SHA-256 of each file in the generated index replaces the
//!   archive's signature); the image's `/etc/apt/sources.list` is then written as an unlocked
//!   build writes it, naming the real archive.
//! - Not in the sandbox of [`crate::steps::chroot`]: mmdebstrap's root mode runs the maintainer
//!   scripts of the essential set in its own `chroot` on the host, with the host's `/dev`
//!   nodes and `/proc`. Running it inside bwrap would need `CAP_SYS_ADMIN` for the mounts root
//!   mode makes (which would also let a script remount the host's read-only `/` writable), and
//!   `--mode=unshare` (documented to give bit-identical tarballs) needs subordinate ids for
//!   root and still chroots without `pivot_root` (an escaped script is then an unprivileged
//!   user of the host, not nobody).

use std::collections::BTreeMap;
use std::path::Path;

use imgspec_cache::StepOutput;

use super::apt;
use super::scrub::scrub;
use crate::distro::{record_installed, Locked};
use crate::key::KeyBuilder;
use crate::runner::Cmd;
use crate::steps::scrub::After;
use crate::steps::tree::Tree;
use crate::steps::{FactError, Facts, StepContext, StepError};
use crate::tools::MMDEBSTRAP;

pub const DEBIAN_VERSION: u32 = 2;

#[derive(Clone, Debug)]
pub struct DebianBase {
    pub spec: crate::spec::model::Debian,
    /// The lock file's packages for this step, when there is a lock.
    pub locked: Option<Locked>,
}

impl DebianBase {
    pub fn hash(&self, k: &mut KeyBuilder, facts: &dyn Facts) -> Result<(), FactError> {
        let s = &self.spec;
        k.param("distro", &s.distro)
            .param("suite", &s.suite)
            .param("variant", &s.variant)
            .param("architecture", &s.architecture)
            .param("components", &s.components.join(" "));
        if let Some(m) = &s.mirror {
            k.param("mirror", m);
        }
        if let Some(kr) = &s.keyring {
            let d = crate::steps::file_digest(facts, kr)?;
            k.file("keyring", &d);
        }
        k.tool("mmdebstrap", &facts.tool_version(&MMDEBSTRAP)?);
        if let Some(l) = &self.locked {
            k.file("lock", &l.digest);
        }
        Ok(())
    }

    /// The mmdebstrap command line that makes `out` (in the step's scratch folder, where
    /// mmdebstrap also makes its temporary root: never in the caller's `TMPDIR`).
    /// `hooks` are extra options before the suite (the customize hooks that keep what apt
    /// downloaded). apt's sandbox user and the environment are pinned ([`apt::APT_PINNED`],
    /// [`apt::pinned_env`]).
    pub fn command(&self, out: &Path, epoch: i64, sources: &[String], hooks: &[String]) -> Cmd {
        let s = &self.spec;
        let scratch = out.parent().unwrap_or(Path::new("/"));
        let mut cmd = Cmd::new("mmdebstrap")
            .arg(format!("--variant={}", s.variant))
            .arg("--mode=root")
            .arg("--format=tar")
            .arg(format!("--architectures={}", s.architecture))
            .arg(format!("--components={}", s.components.join(",")))
            .args(apt::APT_PINNED.iter().map(|o| format!("--aptopt={o}")))
            // mmdebstrap writes the --aptopt lines into the image too: they are the build's
            // business, not the image's.
            .arg(format!(
                "--customize-hook=rm -f \"$1\"/{}",
                apt::MMDEBSTRAP_APT_CONF
            ));
        if let Some(kr) = &s.keyring {
            cmd = cmd.arg(format!("--keyring={}", kr.display()));
        }
        cmd = cmd
            .args(hooks.iter().map(String::as_str))
            .arg(&s.suite)
            .arg(out.as_os_str())
            .args(sources.iter().map(String::as_str));
        for (k, v) in apt::pinned_env(scratch, epoch) {
            cmd = cmd.env(k, v);
        }
        cmd
    }

    /// The sources lines: the spec's mirror, else the host's.
    pub fn sources(&self) -> Result<Vec<String>, StepError> {
        let s = &self.spec;
        let comps = s.components.join(" ");
        if let Some(m) = &s.mirror {
            return Ok(vec![format!("deb {m} {} {comps}", s.suite)]);
        }
        let host = super::host::apt_sources(&s.distro).map_err(|e| {
            StepError::Invalid(format!(
                "{e}: give `mirror=` with an archive of `{}` in the spec",
                s.distro
            ))
        })?;
        Ok(host.lines_for(&s.suite, &comps))
    }

    /// Suite → archive URI, from the sources the base uses (the spec's mirror, else the host's
    /// apt sources): where a locked `.deb` is fetched from.
    pub fn mirrors(&self) -> Result<BTreeMap<String, String>, String> {
        let lines = self
            .sources()
            .map(|l| l.join("\n"))
            .map_err(|e| e.to_string())?;
        let mut out = BTreeMap::new();
        for s in super::host::parse_one_line(&lines) {
            for suite in s.suites {
                out.entry(suite)
                    .or_insert_with(|| s.uri.trim_end_matches('/').to_string());
            }
        }
        Ok(out)
    }

    /// The customize hooks of an unlocked bootstrap: the downloaded files (kept in the cache by
    /// `--skip=essential/unlink`) and apt's lists, copied out to `debs` and `lists`.
    pub fn keep_hooks(debs: &Path, lists: &Path) -> Vec<String> {
        vec![
            "--skip=essential/unlink".into(),
            format!(
                "--customize-hook=sync-out /var/cache/apt/archives {}",
                debs.display()
            ),
            format!(
                "--customize-hook=sync-out /var/lib/apt/lists {}",
                lists.display()
            ),
        ]
    }

    pub fn run(&self, ctx: &StepContext) -> Result<StepOutput, StepError> {
        let out = ctx.work.join("base.tar");
        let real = self.sources()?;
        let debs = ctx.work.join("debs");
        let lists = ctx.work.join("lists");
        let cmd = match &self.locked {
            None => {
                for d in [&debs, &lists] {
                    std::fs::create_dir(d).map_err(StepError::io(d))?;
                }
                self.command(&out, ctx.epoch, &real, &Self::keep_hooks(&debs, &lists))
            }
            Some(l) => {
                let repo = ctx.work.join("repo");
                apt::write_repo(ctx, &l.debs, &repo, &self.spec.suite)?;
                let local = format!("deb [trusted=yes] copy://{} ./", repo.display());
                self.command(&out, ctx.epoch, &[local], &[])
            }
        };
        ctx.runner.run(&cmd, &ctx.log)?;
        let f = std::fs::File::open(&out).map_err(StepError::io(&out))?;
        let mut r = std::io::BufReader::with_capacity(1 << 20, f);
        let m = ctx.store.import_tar(&mut r, &ctx.import_options())?;
        let mut tree = Tree::new(m);
        scrub(&mut tree, ctx.store, ctx.epoch, After::Bootstrap)?;
        let archive_date = apt::archive_date(&lists);
        let installed = match &self.locked {
            None => apt::harvest(ctx, &debs, &lists)?,
            Some(l) => {
                apt::check_installed(ctx, &tree, &l.debs)?;
                // As mmdebstrap writes it from the real mirrors.
                let text: String = real.iter().map(|l| format!("{l}\n")).collect();
                tree.put_file(
                    ctx.store,
                    "etc/apt/sources.list",
                    text.as_bytes(),
                    0o644,
                    ctx.epoch,
                )?;
                l.debs.clone()
            }
        };
        let mut output = ctx.tree_output(&tree.into_manifest())?;
        let archive_date = archive_date.filter(|_| self.locked.is_none());
        record_installed(&mut output, &installed, archive_date);
        Ok(output)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::model::{Base, Layer};
    use std::path::PathBuf;

    fn base_of(spec: &str) -> DebianBase {
        let spec = crate::spec::load(&[PathBuf::from(spec)]).unwrap();
        match &spec.images[0].layers[0] {
            Layer::Base(Base::Debian(d)) => DebianBase {
                spec: d.clone(),
                locked: None,
            },
            other => panic!("not a distribution base: {other:?}"),
        }
    }

    /// specs/ubuntu-efi.kdl cannot be built here (no Ubuntu archive): its mmdebstrap command
    /// line is checked instead, with the sources an Ubuntu host would give.
    #[test]
    fn ubuntu_efi_mmdebstrap_command_line() {
        let b = base_of("specs/ubuntu-efi.kdl");
        let sources = ["deb http://mirror.example/ubuntu noble main universe".to_string()];
        let cmd = b.command(Path::new("/w/base.tar"), 1_686_355_200, &sources, &[]);
        assert_eq!(
            cmd.display(),
            "mmdebstrap --variant=minbase --mode=root --format=tar --architectures=amd64 \
             --components=main,universe '--aptopt=APT::Sandbox::User \"root\"' \
             '--customize-hook=rm -f \"$1\"/etc/apt/apt.conf.d/99mmdebstrap' \
             --keyring=/usr/share/keyrings/ubuntu-archive-keyring.gpg \
             noble /w/base.tar 'deb http://mirror.example/ubuntu noble main universe'"
        );
        assert!(cmd
            .env
            .contains(&("SOURCE_DATE_EPOCH".into(), "1686355200".into())));
        assert_eq!(cmd.stdin, None, "standard input is /dev/null");
    }

    #[test]
    fn debian_efi_mmdebstrap_command_line() {
        let b = base_of("specs/debian-efi.kdl");
        let sources = ["deb http://mirror.example/debian bookworm main".to_string()];
        let hooks = DebianBase::keep_hooks(Path::new("/w/debs"), Path::new("/w/lists"));
        let cmd = b.command(Path::new("/w/base.tar"), 1, &sources, &hooks);
        assert_eq!(
            cmd.display(),
            "mmdebstrap --variant=minbase --mode=root --format=tar --architectures=amd64 \
             --components=main '--aptopt=APT::Sandbox::User \"root\"' \
             '--customize-hook=rm -f \"$1\"/etc/apt/apt.conf.d/99mmdebstrap' \
             --skip=essential/unlink \
             '--customize-hook=sync-out /var/cache/apt/archives /w/debs' \
             '--customize-hook=sync-out /var/lib/apt/lists /w/lists' \
             bookworm /w/base.tar 'deb http://mirror.example/debian bookworm main'"
        );
    }

    /// Nothing of the caller's environment chooses what mmdebstrap, apt and the maintainer
    /// scripts see: the runner starts every program from an empty environment, and the
    /// command pins the rest, its temp folder in the step's own scratch space.
    #[test]
    fn mmdebstrap_environment_is_pinned() {
        let b = base_of("specs/debian-efi.kdl");
        let cmd = b.command(Path::new("/cache/tmp/s/base-x/base.tar"), 5, &[], &[]);
        let env = crate::runner::program_env(&cmd, |k| match k {
            "PATH" => Some("/usr/sbin:/usr/bin".into()),
            "http_proxy" => Some("http://proxy:3128".into()),
            // Set by the caller; none of them may arrive.
            "TMPDIR" | "LANG" | "LC_ALL" | "TZ" | "APT_CONFIG" | "HOME" => {
                Some("host value".into())
            }
            _ => None,
        });
        let env: Vec<(String, String)> = env
            .into_iter()
            .map(|(k, v)| (k.into_string().unwrap(), v.into_string().unwrap()))
            .collect();
        let get = |k: &str| {
            let v: Vec<&str> = env
                .iter()
                .filter(|e| e.0 == k)
                .map(|e| e.1.as_str())
                .collect();
            assert!(v.len() <= 1, "{k} twice: {env:?}");
            v.first().copied()
        };
        assert_eq!(get("PATH"), Some("/usr/sbin:/usr/bin"));
        assert_eq!(get("http_proxy"), Some("http://proxy:3128"));
        assert_eq!(get("TMPDIR"), Some("/cache/tmp/s/base-x"));
        assert_eq!(get("LC_ALL"), Some("C.UTF-8"));
        assert_eq!(get("LANG"), Some("C.UTF-8"));
        assert_eq!(get("LANGUAGE"), None);
        assert_eq!(get("TZ"), Some("UTC"));
        assert_eq!(get("HOME"), Some("/root"));
        assert_eq!(get("APT_CONFIG"), None);
        assert_eq!(get("SOURCE_DATE_EPOCH"), Some("5"));
        assert_eq!(
            env.len(),
            super::apt::pinned_env(Path::new("/"), 0).len() + 2,
            "{env:?}"
        );
        assert!(cmd
            .args
            .contains(&"--aptopt=APT::Sandbox::User \"root\"".into()));
    }
}
