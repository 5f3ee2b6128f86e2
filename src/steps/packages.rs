//! `packages "NAME" pkg...`: installs packages with apt inside the image tree.
//!
//! Makes: the input tree after `apt-get update` and `apt-get install --no-install-recommends`,
//! with apt's lists, caches and logs removed and host leaks scrubbed ([`super::scrub`]). The
//! host's DNS configuration is lent for the download and taken back. Needs root.
//!
//! The stored layer is the whole resulting tree's manifest; its files are blobs shared with the
//! input layer, so what a layer costs in the store is what it added.
//!
//! Key: input tree key; the set's name; the sorted package list. The archive's state is not
//! hashed (a lock file pins it; see the changelog).

use imgspec_cache::StepOutput;

use super::chroot::Session;
use super::scrub::{scrub, After};
use super::tree::Tree;
use super::{FactError, StepContext, StepError};
use crate::plan::key::KeyBuilder;

pub const VERSION: u32 = 2;

#[derive(Clone, Debug)]
pub struct PackagesStep {
    pub name: String,
    /// Sorted, deduplicated.
    pub packages: Vec<String>,
}

impl PackagesStep {
    pub fn hash(&self, k: &mut KeyBuilder) -> Result<(), FactError> {
        k.param("name", &self.name)
            .param("packages", &self.packages.join(" "));
        Ok(())
    }

    /// The script run inside the image.
    pub fn script(&self) -> String {
        format!(
            "apt-get update -q && apt-get install -y -q --no-install-recommends {} && apt-get clean",
            self.packages.join(" ")
        )
    }

    pub fn run(&self, ctx: &StepContext) -> Result<StepOutput, StepError> {
        let mut s = Session::open(ctx, 0, "apt installs packages in a chroot")?;
        s.with_network()?;
        s.without_services()?;
        s.run(ctx, &self.script())
            .map_err(|e| apt_error(e, &self.packages))?;
        let m = s.close(ctx)?;
        let mut tree = Tree::new(m);
        scrub(&mut tree, ctx.store, ctx.epoch, After::Packages)?;
        ctx.tree_output(&tree.into_manifest())
    }
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

    #[test]
    fn names_the_missing_package() {
        let e = StepError::Run(RunError::Failed {
            program: "unshare".into(),
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
