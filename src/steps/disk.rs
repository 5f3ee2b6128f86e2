//! `disk`: the whole disk as a raw file: a GPT written by imgspec (protective MBR, both headers
//! and partition arrays, CRCs) with each partition's filesystem image copied in at its 1 MiB
//! aligned offset, sparse where the content is zeros.
//!
//! Makes: `disk.raw`, with its SHA-256 in the metadata (`sha256`).
//!
//! Key: the filesystem steps' keys (inputs, in partition order); disk size; disk GUID; for every
//! partition its name, type GUID, GUID, first and last LBA.

use imgspec_cache::StepOutput;

use super::output::sha256_file;
use super::{FactError, StepContext, StepError};
use crate::format::gpt::{Guid, Layout};
use crate::plan::key::KeyBuilder;

pub const VERSION: u32 = 1;

#[derive(Clone, Debug)]
pub struct DiskStep {
    pub layout: Layout,
    pub disk_guid: Guid,
    /// For each partition of the layout: the index of the input whose `fs.img` fills it.
    pub contents: Vec<Option<usize>>,
}

impl DiskStep {
    pub fn hash(&self, k: &mut KeyBuilder) -> Result<(), FactError> {
        k.param("size", &self.layout.disk_size.to_string())
            .param("disk-guid", &self.disk_guid.to_string());
        for p in &self.layout.partitions {
            k.param(
                &format!("partition {}", p.name),
                &format!("{} {} {} {}", p.type_guid, p.guid, p.first_lba, p.last_lba),
            );
        }
        Ok(())
    }

    pub fn run(&self, ctx: &StepContext) -> Result<StepOutput, StepError> {
        let mut files = Vec::new();
        for (n, c) in self.contents.iter().enumerate() {
            match c {
                Some(i) => {
                    let r = ctx
                        .inputs
                        .get(*i)
                        .and_then(|o| o.files.get("fs.img"))
                        .ok_or(StepError::Internal("a filesystem input has no fs.img"))?;
                    let p = ctx.work.join(format!("part{n}.img"));
                    ctx.store.blob_to_file(&r.digest, &p)?;
                    files.push(Some(p));
                }
                None => files.push(None),
            }
        }
        let raw = ctx.work.join("disk.raw");
        let contents: Vec<Option<&std::path::Path>> = files.iter().map(|f| f.as_deref()).collect();
        crate::format::gpt::write_disk(&raw, &self.layout, self.disk_guid, &contents)?;
        for f in files.into_iter().flatten() {
            let _ = std::fs::remove_file(f);
        }
        let sha = sha256_file(&raw)?;
        let r = ctx.store.put_file(&raw)?;
        let mut out = StepOutput::default();
        out.files.insert("disk.raw".into(), r);
        out.meta.insert("sha256".into(), sha);
        Ok(out)
    }
}
