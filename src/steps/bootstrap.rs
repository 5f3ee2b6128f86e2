//! `base "debian"|"ubuntu"|…`: the first layer of an image's root filesystem, made by the
//! bootstrapper of the base's distribution family ([`crate::distro::Family::bootstrap`]; Debian:
//! mmdebstrap, [`crate::distro::debian::bootstrap`]).
//!
//! Kind, version and key parts are the family's (`base-debian`: see ARCHITECTURE.md's key
//! table); with a lock file the family hashes the digest of the step's locked packages
//! ([`crate::lockfile::LockSet::digest`]).

use imgspec_cache::StepOutput;

use super::{FactError, Facts, StepContext, StepError};
use crate::distro::{Family, Locked};
use crate::key::KeyBuilder;
use crate::spec::model::Debian;

#[derive(Clone, Debug)]
pub struct Bootstrap {
    /// The base's distribution family.
    pub family: &'static dyn Family,
    pub spec: Debian,
    /// The lock file's packages for this step, when there is a lock.
    pub locked: Option<Locked>,
}

impl Bootstrap {
    pub fn hash(&self, k: &mut KeyBuilder, facts: &dyn Facts) -> Result<(), FactError> {
        self.family
            .hash_bootstrap(&self.spec, self.locked.as_ref(), k, facts)
    }

    pub fn run(&self, ctx: &StepContext) -> Result<StepOutput, StepError> {
        self.family.bootstrap(ctx, &self.spec, self.locked.as_ref())
    }
}
