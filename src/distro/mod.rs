//! Distribution families: everything imgspec knows about one kind of package manager, archive
//! and installed-package database lives in one folder (`debian/`), behind [`Family`].
//!
//! The plan asks an image's family ([`family_of`]) for the bootstrap step of its base, the
//! package manager of its `packages` layers and the packages its bootloader needs; the lock
//! asks it where locked files come from and where the cache keeps them. A family is one value
//! implementing [`Family`], registered in [`FAMILIES`]; its distributions (`debian`, `ubuntu`)
//! are configurations of it ([`Distro`]).
//!
//! The SBOM does not ask the family: it reads every package database the final tree has,
//! whatever its family, since an image imported from a disk can hold both (dpkg's, in
//! [`debian::dpkg`]; the RPM database, [`rpmdb`], shared by every RPM-based family).
//!
//! What a family may not change: the key of a step it makes (kind, version, parts) is written
//! down in ARCHITECTURE.md; the family itself is not hashed (a step's input key already says
//! which base its tree grew from).

pub mod debian;
pub mod rpm;
pub mod rpmdb;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use imgspec_cache::StepOutput;

use crate::key::KeyBuilder;
use crate::lockfile::{LockSet, LockedDeb};
use crate::spec::model::{Base, BootloaderKind, Debian as BaseSpec, Image, Layer};
use crate::steps::{FactError, Facts, StepContext, StepError};
use crate::tools::Tool;

/// Every distribution family imgspec knows. A new family is one folder and one line here.
pub static FAMILIES: &[&dyn Family] = &[&debian::DEBIAN];

/// One distribution of a family, as `base "NAME"` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Distro {
    /// `base "NAME"`: `debian`, `ubuntu`.
    pub name: &'static str,
    /// The usage line diagnostics show: `base "debian" suite="bookworm" […]`.
    pub usage: &'static str,
    /// The archive areas when the spec gives no `components`.
    pub default_components: &'static str,
}

/// A distribution family: its bootstrapper, the package manager inside the image, its package
/// database, the store of its locked package files.
pub trait Family: std::fmt::Debug + Send + Sync {
    /// `debian`.
    fn name(&self) -> &'static str;
    /// The distributions of the family (`base "NAME"`).
    fn distros(&self) -> &'static [Distro];

    /// The bootstrap step's kind in keys (`base-debian`) and its version.
    fn bootstrap_kind(&self) -> (&'static str, u32);
    /// Host tools the bootstrap runs.
    fn bootstrap_tools(&self) -> Vec<Tool>;
    /// The bootstrap's own key parts (the plan adds the epoch first).
    fn hash_bootstrap(
        &self,
        base: &BaseSpec,
        locked: Option<&Locked>,
        k: &mut KeyBuilder,
        facts: &dyn Facts,
    ) -> Result<(), FactError>;
    /// Makes the first tree of an image; records what it installed ([`record_installed`]).
    fn bootstrap(
        &self,
        ctx: &StepContext,
        base: &BaseSpec,
        locked: Option<&Locked>,
    ) -> Result<StepOutput, StepError>;

    /// Installs `packages` (sorted) with the package manager inside the input tree; records
    /// what it installed ([`record_installed`]).
    fn install(
        &self,
        ctx: &StepContext,
        packages: &[String],
        locked: Option<&Locked>,
    ) -> Result<StepOutput, StepError>;
    /// Packages the bootloader step needs in an image of architecture `arch` (the
    /// distribution's name of it, as in `base "debian" architecture=`).
    fn boot_packages(&self, kind: BootloaderKind, arch: &str) -> &'static [&'static str];
    /// What `secure-boot=#true` adds, in a package set of its own after every other layer (so
    /// a Secure Boot variant shares all the layers of its unsigned sibling): a shim signed by
    /// Microsoft and a GRUB signed by the distribution.
    fn secure_boot_packages(&self) -> &'static [&'static str];

    /// Suite → archive URI of the base's sources: a locked file is fetched from
    /// `URI/FILENAME`.
    fn mirrors(&self, base: &BaseSpec) -> Result<BTreeMap<String, String>, String>;
    /// The cache's folder of the family's locked package files (`debs-v1`): a scratch store
    /// (`imgspec verify`) shares it with the cache.
    fn locked_dir(&self) -> &'static str;
    /// Whether the cache at `cache_root` has the locked file of SHA-256 `sha256`.
    fn has_locked(&self, cache_root: &Path, sha256: &str) -> bool;
    /// Downloads `url` into the cache's locked files, checking its SHA-256 and trying again
    /// while the failure may pass; `done` hears the bytes as they come.
    fn fetch_locked(
        &self,
        cache_root: &Path,
        url: &str,
        sha256: &str,
        done: &dyn Fn(u64),
    ) -> Result<(), FetchFailure>;
    /// Removes the locked files whose SHA-256 is not in `keep`: how many, and their bytes.
    fn gc_locked(&self, cache_root: &Path, keep: &BTreeSet<String>) -> (usize, u64);
}

/// Why a locked file is not in the cache after [`Family::fetch_locked`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchFailure {
    /// The mirror does not have it (or has other bytes under its name): it has moved on.
    Gone(String),
    /// The mirror could not be reached, tries and all: the network, not the lock.
    Unreachable(String),
    /// The cache could not be written (a full disk, permissions).
    Local(String),
}

/// The family of `base "NAME"`.
pub fn family(distro: &str) -> Option<&'static dyn Family> {
    FAMILIES
        .iter()
        .copied()
        .find(|f| f.distros().iter().any(|d| d.name == distro))
}

/// The family of an image: its base's; a `base "tar"` image is taken as Debian (its `packages`
/// layers run apt), as it always was.
pub fn family_of(image: &Image) -> &'static dyn Family {
    match image.layers.first() {
        Some(Layer::Base(Base::Debian(d))) => family_of_base(d),
        _ => &debian::DEBIAN,
    }
}

/// The family of a distribution base (the spec accepts only registered distributions).
pub fn family_of_base(base: &BaseSpec) -> &'static dyn Family {
    family(&base.distro).unwrap_or(&debian::DEBIAN)
}

/// A step's locked packages, with the digest its key hashes.
#[derive(Clone, Debug)]
pub struct Locked {
    pub digest: String,
    pub debs: Vec<LockedDeb>,
}

impl Locked {
    pub fn of(set: &LockSet) -> Locked {
        Locked {
            digest: set.digest(),
            debs: set.debs.clone(),
        }
    }
}

/// An installed package, as the SBOM lists it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Installed {
    pub name: String,
    pub version: String,
    pub arch: String,
    pub source: Option<String>,
}

/// The key of a step output's `meta` that holds the `deb` lines of what the step installed
/// (the lock file's entries; `imgspec lock` reads them).
pub const DEBS_META: &str = "debs";
/// Step output metadata: the newest date of the archive's indexes the package manager read, in
/// seconds since the epoch. `imgspec lock` takes it as the lock's epoch.
pub const ARCHIVE_DATE_META: &str = "archive-date";

/// Records in a step's output what it installed (`debs`) and, when it resolved from the
/// archive rather than from a lock, the archive's date.
pub fn record_installed(
    output: &mut StepOutput,
    installed: &[LockedDeb],
    archive_date: Option<i64>,
) {
    output
        .meta
        .insert(DEBS_META.into(), crate::lockfile::render_debs(installed));
    if let Some(d) = archive_date {
        output.meta.insert(ARCHIVE_DATE_META.into(), d.to_string());
    }
}
