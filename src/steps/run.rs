//! `run "command"`: runs a shell command inside the image root.
//!
//! Makes: the input tree as the command leaves it (host DNS lent for the command's duration,
//! then taken back; mtimes clamped to the image epoch). The command runs in the sandbox of
//! [`super::chroot`] with the host's network. Needs root.
//!
//! Key: input tree key; the command text.

use imgspec_cache::StepOutput;

use super::chroot::Session;
use super::{StepContext, StepError};
use crate::key::KeyBuilder;

pub const VERSION: u32 = 1;

#[derive(Clone, Debug)]
pub struct RunStep {
    pub command: String,
}

impl RunStep {
    pub fn hash(&self, k: &mut KeyBuilder) -> Result<(), super::FactError> {
        k.param("command", &self.command);
        Ok(())
    }

    pub fn run(&self, ctx: &StepContext) -> Result<StepOutput, StepError> {
        let mut s = Session::open(ctx, 0, "`run` chroots into the image")?;
        s.with_network()?;
        s.run(ctx, &self.command)?;
        let m = s.close_and_keep(ctx)?;
        ctx.tree_output(&m)
    }
}
