//! `packages "NAME" pkg...`: installs packages with the package manager of the image's
//! distribution family inside the image tree ([`crate::distro::Family::install`]; Debian: apt,
//! [`crate::distro::debian::install`]). Needs root.
//!
//! The stored layer is the whole resulting tree's manifest; its files are blobs shared with the
//! input layer, so what a layer costs in the store is what it added.
//!
//! Key: input tree key; the set's name; the sorted package list; with a lock file, the digest
//! of the step's locked packages ([`crate::lockfile::LockSet::digest`]). The archive's state is not
//! hashed: without a lock, what apt installs is what the archive had at the first build. The
//! family is not hashed: the input tree's key already says which base the tree grew from.

use imgspec_cache::StepOutput;

use super::{FactError, StepContext, StepError};
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
        self.family
            .install(ctx, &self.packages, self.locked.as_ref())
    }
}
