//! `fstab`: `/etc/fstab` for an image that has a disk but no bootloader (a partition image set),
//! naming every filesystem of the disk by UUID, as the bootloader step does for bootable disks.
//!
//! Makes: the input tree with `/etc/fstab` replaced. Edits the tree in memory: no chroot, no
//! root.
//!
//! Key: input tree key; the fstab text.

use imgspec_cache::StepOutput;

use super::mounts::{fstab_text, Mount};
use super::tree::Tree;
use super::{FactError, StepContext, StepError};
use crate::key::KeyBuilder;

pub const VERSION: u32 = 1;

#[derive(Clone, Debug)]
pub struct FstabStep {
    pub mounts: Vec<Mount>,
}

impl FstabStep {
    pub fn hash(&self, k: &mut KeyBuilder) -> Result<(), FactError> {
        k.param("fstab", &fstab_text(&self.mounts));
        Ok(())
    }

    pub fn run(&self, ctx: &StepContext) -> Result<StepOutput, StepError> {
        let (_, m) = ctx.input_tree(0)?;
        let mut tree = Tree::new(m);
        tree.put_file(
            ctx.store,
            "etc/fstab",
            fstab_text(&self.mounts).as_bytes(),
            0o644,
            ctx.epoch,
        )?;
        ctx.tree_output(&tree.into_manifest())
    }
}
