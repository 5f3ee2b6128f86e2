//! `base "tar" path=...`: imports a root filesystem tarball (`.tar` or `.tar.zst`) as it is, as
//! the first layer of an image's root filesystem.
//!
//! Key: the tarball's content digest.

use std::io::Read;
use std::path::PathBuf;

use imgspec_cache::StepOutput;

use super::{FactError, Facts, StepContext, StepError};
use crate::key::KeyBuilder;

pub const VERSION: u32 = 1;

#[derive(Clone, Debug)]
pub struct TarBase {
    pub path: PathBuf,
}

impl TarBase {
    pub fn hash(&self, k: &mut KeyBuilder, facts: &dyn Facts) -> Result<(), FactError> {
        let d = super::file_digest(facts, &self.path)?;
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
