//! The Debian family: Debian and Ubuntu (two configurations of it, [`DISTROS`]), built with
//! mmdebstrap ([`bootstrap`]) and apt inside the image ([`install`], [`apt`]), locked `.deb`
//! files kept in the cache ([`debstore`]), the archive's formats ([`archive`]), the host's apt
//! sources as the default mirror ([`host`]), Debian's scrub rules ([`scrub`]) and dpkg's
//! database for the SBOM ([`dpkg`]).

pub mod apt;
pub mod archive;
pub mod bootstrap;
pub mod debstore;
pub mod dpkg;
pub mod host;
pub mod install;
pub mod scrub;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use imgspec_cache::StepOutput;

use super::{Distro, Family, FetchFailure, Locked};
use crate::fetch::FetchError;
use crate::key::KeyBuilder;
use crate::spec::model::{BootloaderKind, Debian as BaseSpec};
use crate::steps::{FactError, Facts, StepContext, StepError};
use crate::tools::Tool;
use bootstrap::DebianBase;
use debstore::DebStore;

/// The Debian family, as [`super::FAMILIES`] registers it.
#[derive(Debug)]
pub struct DebianFamily;

pub static DEBIAN: DebianFamily = DebianFamily;

/// Debian and Ubuntu: the same tools; Ubuntu's archive has other default components.
pub const DISTROS: &[Distro] = &[
    Distro {
        name: "debian",
        usage: "base \"debian\" suite=\"bookworm\" [variant=\"minbase\"] [mirror=\"URL\"] [components=\"main\"] [architecture=\"amd64\"] [keyring=\"PATH\"]",
        default_components: "main",
    },
    Distro {
        name: "ubuntu",
        usage: "base \"ubuntu\" suite=\"noble\" [mirror=\"URL\"] [variant=\"minbase\"] [components=\"main universe\"] [architecture=\"amd64\"] [keyring=\"PATH\"]",
        default_components: "main universe",
    },
];

/// GRUB's packages: both firmwares' modules and the tools (`grub-install`, `grub-mkconfig`)
/// that Ironic runs inside the image. The bootloader step needs them; `element "grub2"` installs
/// the same set (the list is the element's: elements import nothing of the crate), so that
/// BIOS, UEFI and partition-image variants of one image share their package layers.
pub const GRUB_PACKAGES: &[&str] = crate::element::grub2::PACKAGES;

/// GRUB for an arm64 image: UEFI only (`arm64-efi`).
pub const GRUB_PACKAGES_ARM64: &[&str] = &["grub-common", "grub-efi-arm64-bin", "grub2-common"];

/// What `secure-boot=#true` adds: Debian's shim signed by Microsoft (with MokManager) and GRUB
/// signed by Debian.
pub const SECURE_BOOT_PACKAGES: &[&str] = &["grub-efi-amd64-signed", "shim-signed"];

fn base(spec: &BaseSpec, locked: Option<&Locked>) -> DebianBase {
    DebianBase {
        spec: spec.clone(),
        locked: locked.cloned(),
    }
}

impl Family for DebianFamily {
    fn name(&self) -> &'static str {
        "debian"
    }

    fn distros(&self) -> &'static [Distro] {
        DISTROS
    }

    fn bootstrap_kind(&self) -> (&'static str, u32) {
        ("base-debian", bootstrap::DEBIAN_VERSION)
    }

    fn bootstrap_tools(&self) -> Vec<Tool> {
        vec![crate::tools::MMDEBSTRAP]
    }

    fn hash_bootstrap(
        &self,
        spec: &BaseSpec,
        locked: Option<&Locked>,
        k: &mut KeyBuilder,
        facts: &dyn Facts,
    ) -> Result<(), FactError> {
        base(spec, locked).hash(k, facts)
    }

    fn bootstrap(
        &self,
        ctx: &StepContext,
        spec: &BaseSpec,
        locked: Option<&Locked>,
    ) -> Result<StepOutput, StepError> {
        base(spec, locked).run(ctx)
    }

    fn install(
        &self,
        ctx: &StepContext,
        packages: &[String],
        locked: Option<&Locked>,
    ) -> Result<StepOutput, StepError> {
        install::install(ctx, packages, locked)
    }

    fn boot_packages(&self, _kind: BootloaderKind, arch: &str) -> &'static [&'static str] {
        match arch {
            // UEFI only (`arm64-efi`).
            "arm64" => GRUB_PACKAGES_ARM64,
            _ => GRUB_PACKAGES,
        }
    }

    fn secure_boot_packages(&self) -> &'static [&'static str] {
        SECURE_BOOT_PACKAGES
    }

    fn mirrors(&self, spec: &BaseSpec) -> Result<BTreeMap<String, String>, String> {
        base(spec, None).mirrors()
    }

    fn locked_dir(&self) -> &'static str {
        debstore::DEBS_DIR
    }

    fn has_locked(&self, cache_root: &Path, sha256: &str) -> bool {
        DebStore::new(cache_root).has(sha256)
    }

    fn fetch_locked(
        &self,
        cache_root: &Path,
        url: &str,
        sha256: &str,
        done: &dyn Fn(u64),
    ) -> Result<(), FetchFailure> {
        DebStore::new(cache_root)
            .fetch(url, sha256, done)
            .map_err(|e| {
                let why = crate::exec::error_lines(&e);
                match e {
                    debstore::DebError::Fetch(FetchError::Unreachable { .. }) => {
                        FetchFailure::Unreachable(why)
                    }
                    debstore::DebError::Io { .. }
                    | debstore::DebError::Fetch(
                        FetchError::Io { .. } | FetchError::Stopped { .. },
                    ) => FetchFailure::Local(why),
                    debstore::DebError::Fetch(
                        FetchError::Gone { .. } | FetchError::Mismatch { .. },
                    ) => FetchFailure::Gone(why),
                }
            })
    }

    fn gc_locked(&self, cache_root: &Path, keep: &BTreeSet<String>) -> (usize, u64) {
        DebStore::new(cache_root).gc(keep)
    }
}
