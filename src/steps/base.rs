//! `base`: the first layer of an image's root filesystem.
//!
//! - `base "tar" path=...` imports a root filesystem tarball (`.tar` or `.tar.zst`) as it is.
//!   Key: the tarball's content digest.
//! - `base "debian"|"ubuntu" suite=... variant=...` runs mmdebstrap (tar output, root mode,
//!   SOURCE_DATE_EPOCH set, standard input from /dev/null) and imports its tarball, with host
//!   leaks scrubbed ([`super::scrub`]). The mirror is the spec's `mirror`, else the host's apt
//!   sources for the Debian archive (with the suite's `-updates` and `-security` companions).
//!   Key: distro, suite, variant, architecture, components, the spec's mirror when given (the
//!   host's mirror is not hashed: any mirror of the archive serves the same packages), the
//!   keyring's digest when given, and mmdebstrap's version.

use std::io::Read;
use std::path::{Path, PathBuf};

use imgspec_cache::StepOutput;

use super::scrub::{scrub, After};
use super::tree::Tree;
use super::{FactError, Facts, StepContext, StepError};
use crate::plan::key::KeyBuilder;
use crate::runner::Cmd;
use crate::tools::MMDEBSTRAP;

pub const TAR_VERSION: u32 = 1;
pub const DEBIAN_VERSION: u32 = 1;

#[derive(Clone, Debug)]
pub struct TarBase {
    pub path: PathBuf,
}

impl TarBase {
    pub fn hash(&self, k: &mut KeyBuilder, facts: &dyn Facts) -> Result<(), FactError> {
        let d = facts
            .file_digest(&self.path)
            .map_err(|source| FactError::Io {
                path: self.path.clone(),
                source,
            })?;
        k.file("tarball", &d);
        Ok(())
    }

    pub fn run(&self, ctx: &StepContext) -> Result<StepOutput, StepError> {
        let f = std::fs::File::open(&self.path).map_err(StepError::io(&self.path))?;
        let mut reader: Box<dyn Read> = if self.path.extension().is_some_and(|e| e == "zst") {
            Box::new(zstd::Decoder::new(f).map_err(StepError::io(&self.path))?)
        } else {
            Box::new(std::io::BufReader::new(f))
        };
        let m = ctx.store.import_tar(&mut reader, &ctx.import_options())?;
        ctx.tree_output(&m)
    }
}

#[derive(Clone, Debug)]
pub struct DebianBase {
    pub spec: crate::spec::model::Debian,
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
            let d = facts.file_digest(kr).map_err(|source| FactError::Io {
                path: kr.clone(),
                source,
            })?;
            k.file("keyring", &d);
        }
        k.tool("mmdebstrap", &facts.tool_version(&MMDEBSTRAP)?);
        Ok(())
    }

    /// The mmdebstrap command line that makes `out`.
    pub fn command(&self, out: &Path, epoch: i64, sources: &[String]) -> Cmd {
        let s = &self.spec;
        let mut cmd = Cmd::new("mmdebstrap")
            .arg(format!("--variant={}", s.variant))
            .arg("--mode=root")
            .arg("--format=tar")
            .arg(format!("--architectures={}", s.architecture))
            .arg(format!("--components={}", s.components.join(",")));
        if let Some(kr) = &s.keyring {
            cmd = cmd.arg(format!("--keyring={}", kr.display()));
        }
        cmd.arg(&s.suite)
            .arg(out.as_os_str())
            .args(sources.iter().map(String::as_str))
            .env("SOURCE_DATE_EPOCH", epoch.to_string())
    }

    /// The sources lines: the spec's mirror, else the host's.
    pub fn sources(&self) -> Result<Vec<String>, StepError> {
        let s = &self.spec;
        let comps = s.components.join(" ");
        if let Some(m) = &s.mirror {
            return Ok(vec![format!("deb {m} {} {comps}", s.suite)]);
        }
        let host = crate::host::apt_sources(&s.distro).map_err(|e| {
            StepError::Invalid(format!(
                "{e}: give `mirror=` with an archive of `{}` in the spec",
                s.distro
            ))
        })?;
        Ok(host.lines_for(&s.suite, &comps))
    }

    pub fn run(&self, ctx: &StepContext) -> Result<StepOutput, StepError> {
        let out = ctx.work.join("base.tar");
        let cmd = self.command(&out, ctx.epoch, &self.sources()?);
        ctx.runner.run(&cmd, &ctx.log)?;
        let f = std::fs::File::open(&out).map_err(StepError::io(&out))?;
        let mut r = std::io::BufReader::with_capacity(1 << 20, f);
        let m = ctx.store.import_tar(&mut r, &ctx.import_options())?;
        let mut tree = Tree::new(m);
        scrub(&mut tree, ctx.store, ctx.epoch, After::Bootstrap)?;
        ctx.tree_output(&tree.into_manifest())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::model::{Base, Layer};

    fn base_of(spec: &str) -> DebianBase {
        let spec = crate::spec::load(&[PathBuf::from(spec)]).unwrap();
        match &spec.images[0].layers[0] {
            Layer::Base(Base::Debian(d)) => DebianBase { spec: d.clone() },
            other => panic!("not a distribution base: {other:?}"),
        }
    }

    /// specs/ubuntu-efi.kdl cannot be built here (no Ubuntu archive): its mmdebstrap command
    /// line is checked instead, with the sources an Ubuntu host would give.
    #[test]
    fn ubuntu_efi_mmdebstrap_command_line() {
        let b = base_of("specs/ubuntu-efi.kdl");
        let sources = ["deb http://mirror.example/ubuntu noble main universe".to_string()];
        let cmd = b.command(Path::new("/w/base.tar"), 1_686_355_200, &sources);
        assert_eq!(
            cmd.display(),
            "mmdebstrap --variant=minbase --mode=root --format=tar --architectures=amd64 \
             --components=main,universe \
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
        let cmd = b.command(Path::new("/w/base.tar"), 1, &sources);
        assert_eq!(
            cmd.display(),
            "mmdebstrap --variant=minbase --mode=root --format=tar --architectures=amd64 \
             --components=main bookworm /w/base.tar 'deb http://mirror.example/debian bookworm main'"
        );
    }
}
