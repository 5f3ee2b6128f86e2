//! `packages "NAME" pkg...`: installs packages with the package manager of the image's
//! distribution family inside the image tree ([`crate::distro::Family::install`]; Debian: apt,
//! [`crate::distro::debian::install`]). Needs root.
//!
//! An image without a distribution bootstrap (`base "image"`, `base "tar"`) has the package
//! manager its tree has, chosen when the step runs ([`crate::distro::rpm::manager_of`]: the
//! tree's os-release, else its programs): apt through the Debian family, or dnf
//! ([`crate::distro::rpm::install`], which installs the plan's Debian names under their
//! RPM-family ones, [`crate::distro::rpm::names`]). A tree with neither fails the step.
//!
//! The stored layer is the whole resulting tree's manifest; its files are blobs shared with the
//! input layer, so what a layer costs in the store is what it added.
//!
//! Key: input tree key; the set's name; the sorted package list; with a lock file, the digest
//! of the step's locked packages ([`crate::lockfile::LockSet::digest`]). The archive's state is not
//! hashed: without a lock, what apt installs is what the archive had at the first build. The
//! family and the package manager chosen from the tree are not hashed: the input tree's key
//! already says which base the tree grew from, and the tree decides the choice.

use imgspec_cache::StepOutput;

use super::{FactError, StepContext, StepError};
use crate::distro::rpm::{self, Manager};
use crate::distro::{Family, Locked};
use crate::key::KeyBuilder;

pub const VERSION: u32 = 3;

#[derive(Clone, Debug)]
pub struct PackagesStep {
    pub name: String,
    /// Sorted, deduplicated.
    pub packages: Vec<String>,
    /// The lock file's packages for this step, when there is a lock.
    pub locked: Option<Locked>,
    /// The image's distribution family: its package manager installs the packages.
    pub family: &'static dyn Family,
    /// The image has no distribution bootstrap: the package manager is the tree's own
    /// ([`rpm::manager_of`]), chosen when the step runs. Not hashed (the input key fixes the
    /// tree).
    pub from_tree: bool,
}

impl PackagesStep {
    pub fn hash(&self, k: &mut KeyBuilder) -> Result<(), FactError> {
        k.param("name", &self.name)
            .param("packages", &self.packages.join(" "));
        if let Some(l) = &self.locked {
            k.file("lock", &l.digest);
        }
        Ok(())
    }

    pub fn run(&self, ctx: &StepContext) -> Result<StepOutput, StepError> {
        if self.from_tree {
            let (_, m) = ctx.input_tree(0)?;
            let tree = crate::steps::tree::Tree::new(m);
            if let Manager::Dnf(dnf) = rpm::manager_in(&tree, ctx.store)? {
                return rpm::install::install(ctx, dnf, &self.packages, self.locked.as_ref());
            }
        }
        self.family
            .install(ctx, &self.packages, self.locked.as_ref())
    }
}
