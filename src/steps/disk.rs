//! `disk`: the whole disk as a raw file: a GPT written by imgspec (protective MBR, both headers
//! and partition arrays, CRCs) with each partition's filesystem image copied in at its 1 MiB
//! aligned offset, sparse where the content is zeros. The filesystem this build has just made
//! in place in a disk-sized file (the largest ext4 one: [`crate::format::ext4::Place`]) is not
//! copied: that file becomes the disk, and the rest is written around it (if it holds data
//! outside its partition, which a new disk would not, it is not used). Another fresh one is
//! copied from its plain file; cached ones are decompressed from the store straight into the
//! disk file (no copy of each in between). The disk is read once to both store it and take
//! its SHA-256.
//!
//! For legacy BIOS boot (`grub-bios`, `hybrid`), GRUB's `core.img` and `boot.img` (files of the
//! bootloader step, its last input) then go into the BIOS boot partition and the protective MBR,
//! patched to point at each other ([`crate::format::biosboot`]).
//!
//! Makes: `disk.raw`, with its SHA-256 in the metadata (`sha256`).
//!
//! Key: the filesystem steps' keys (inputs, in partition order), then the bootloader step's key
//! for BIOS boot; disk size; disk GUID; for every partition its name, type GUID, GUID, first and
//! last LBA; for BIOS boot only, `bios`: the index of the BIOS boot partition (absent otherwise,
//! so UEFI-only disks keep their keys).

use imgspec_cache::StepOutput;

use super::put_with_sha256;
use super::{FactError, StepContext, StepError};
use crate::ids::Guid;
use crate::key::KeyBuilder;
use crate::layout::Layout;

pub const VERSION: u32 = 1;

#[derive(Clone, Debug)]
pub struct DiskStep {
    pub layout: Layout,
    pub disk_guid: Guid,
    /// For each partition of the layout: the index of the input whose `fs.img` fills it.
    pub contents: Vec<Option<usize>>,
    /// Legacy BIOS boot: where GRUB's core image goes and which input made it.
    pub bios: Option<BiosBoot>,
}

/// GRUB for BIOS on the disk: `core.img` in a BIOS boot partition, `boot.img` in the MBR.
#[derive(Clone, Debug)]
pub struct BiosBoot {
    /// Index in the layout of the BIOS boot partition.
    pub partition: usize,
    /// Index of the input (the bootloader step) whose files `core.img` and `boot.img` to use.
    pub input: usize,
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
        if let Some(b) = &self.bios {
            k.param("bios", &format!("partition {}", b.partition));
        }
        Ok(())
    }

    pub fn run(&self, ctx: &StepContext) -> Result<StepOutput, StepError> {
        // Which blob fills which partition, checked against its size before anything is written.
        let mut fills = Vec::new();
        for (n, c) in self.contents.iter().enumerate() {
            let Some(i) = c else { continue };
            let r = ctx
                .inputs
                .get(*i)
                .and_then(|o| o.files.get("fs.img"))
                .ok_or(StepError::Internal("a filesystem input has no fs.img"))?;
            let p = &self.layout.partitions[n];
            if r.size > p.size_bytes {
                return Err(too_large(&p.name, r.size, p.size_bytes));
            }
            fills.push((n, p, r));
        }
        let raw = ctx.work.join("disk.raw");
        // A filesystem this build has just made in a disk-sized file at its partition's offset
        // is taken as the disk: its bytes stay where they are. Another one this build has made
        // is copied from its plain file (its data extents only); one from the cache is
        // decompressed into place.
        let mut in_place = None;
        let mut plain: Vec<Option<std::path::PathBuf>> = vec![None; self.layout.partitions.len()];
        let mut packed = Vec::new();
        for (n, p, r) in fills {
            if in_place.is_none()
                && r.size == p.size_bytes
                && ctx.store.take_fresh_range(&r.digest, p.offset_bytes, &raw)
            {
                in_place = Some((n, p, r));
                continue;
            }
            match ctx.store.fresh_file(&r.digest) {
                Some(f) => plain[n] = Some(f),
                None => packed.push((p, r)),
            }
        }
        let contents: Vec<Option<&std::path::Path>> = plain.iter().map(|f| f.as_deref()).collect();
        let around = match in_place {
            Some((n, p, r)) => {
                let gpt = crate::format::gpt::write_disk_around(
                    &raw,
                    &self.layout,
                    self.disk_guid,
                    &contents,
                    n,
                )?;
                if gpt {
                    ctx.note(&format!(
                        "partition `{}`: its filesystem was made in place in this file, not \
                         copied",
                        p.name
                    ));
                } else {
                    ctx.note(&format!(
                        "partition `{}`: the file its filesystem was made in is not as a new \
                         disk would be; written from its blob instead",
                        p.name
                    ));
                    // Into a new file: a thread may still be storing the blob from this one.
                    std::fs::remove_file(&raw).map_err(StepError::io(&raw))?;
                    packed.push((p, r));
                }
                gpt
            }
            None => false,
        };
        if !around {
            crate::format::gpt::write_disk(&raw, &self.layout, self.disk_guid, &contents)?;
        }
        {
            let disk = std::fs::OpenOptions::new()
                .write(true)
                .open(&raw)
                .map_err(StepError::io(&raw))?;
            for (p, r) in packed {
                // One that decodes to more than its partition (its record said otherwise)
                // fails as damaged before a byte past the partition is written.
                ctx.store.blob_into_file_at(
                    &r.digest,
                    &disk,
                    &raw,
                    p.offset_bytes,
                    p.size_bytes,
                )?;
            }
        }
        if let Some(b) = &self.bios {
            let file = |name: &str| -> Result<Vec<u8>, StepError> {
                let r = ctx
                    .inputs
                    .get(b.input)
                    .and_then(|o| o.files.get(name))
                    .ok_or(StepError::Internal(
                        "the bootloader input has no core.img or boot.img",
                    ))?;
                Ok(ctx.store.read_blob(&r.digest)?)
            };
            let (boot, core) = (file("boot.img")?, file("core.img")?);
            crate::format::biosboot::install(&raw, &self.layout, b.partition, &boot, &core)?;
        }
        let (r, sha) = put_with_sha256(ctx, &raw)?;
        let mut out = StepOutput::default();
        out.files.insert("disk.raw".into(), r);
        out.meta.insert("sha256".into(), sha);
        Ok(out)
    }
}

fn too_large(partition: &str, size: u64, capacity: u64) -> StepError {
    StepError::Invalid(format!(
        "the filesystem image of partition `{partition}` is {size} bytes, more than the \
         partition's {capacity}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(bios: Option<BiosBoot>) -> DiskStep {
        let part = |name: &str, type_guid, size| crate::layout::PartitionSpec {
            name: name.into(),
            type_guid,
            size,
            guid: crate::ids::derive_guid(&[1; 32], name),
            attributes: 0,
        };
        DiskStep {
            layout: crate::layout::layout(
                64 * crate::layout::MIB,
                &[
                    part("bios", crate::ids::BIOS_BOOT, Some(crate::layout::MIB)),
                    part("root", crate::ids::ROOT_X86_64, None),
                ],
            )
            .unwrap(),
            disk_guid: crate::ids::derive_guid(&[1; 32], "disk"),
            contents: vec![None, Some(0)],
            bios,
        }
    }

    fn key(s: &DiskStep) -> (imgspec_cache::StepKey, Vec<crate::key::KeyPart>) {
        let mut k = KeyBuilder::new("disk", VERSION);
        s.hash(&mut k).unwrap();
        k.finish()
    }

    #[test]
    fn bios_boot_is_in_the_key_only_when_asked_for() {
        let (plain, parts) = key(&step(None));
        assert!(parts.iter().all(|p| p.name != "bios"), "{parts:?}");
        let bios = step(Some(BiosBoot {
            partition: 0,
            input: 1,
        }));
        let (with_bios, parts) = key(&bios);
        assert_ne!(plain, with_bios);
        let p = parts.iter().find(|p| p.name == "bios").unwrap();
        assert_eq!(p.value, "partition 0");
    }
}
