//! `output`: the files a user takes away, written to `out/IMAGE/` by the CLI.
//!
//! - `tar`: the final root filesystem as a deterministic tarball (entries in path order, numeric
//!   owners, mtimes clamped to the image epoch). Input: the last tree layer.
//! - `raw`: the disk step's `disk.raw` under the image's name (no bytes copied in the store).
//! - `qcow2`: `qemu-img convert` of the disk (deterministic: no timestamps in qcow2); its
//!   clusters zlib-compressed with `compress=#true`, zstd-compressed with `compress="zstd"`.
//! - `vmdk`, `vdi`, `vhdx`, `vhd`: `qemu-img convert` of the disk with pinned options, the ids
//!   and timestamps qemu-img writes set from the raw disk's digest and the image epoch
//!   ([`crate::format::vdisk`]).
//! - `partition`: Ironic's partition image set. Inputs: the root filesystem step and the final
//!   tree. `NAME.qcow2` is the root filesystem alone (no partition table), `NAME.vmlinuz` and
//!   `NAME.initrd` are the kernel and initramfs that the image's `/vmlinuz` and `/initrd.img`
//!   point at (their blobs are referenced, not copied).
//!
//! Every output records the SHA-256 of each of its files in the step output's metadata
//! (`sha256:FILE`), so that `SHA256SUMS` is written without reading the files again.
//!
//! Key: input key; format; file name; `compress` (`zlib` or `zstd`) only for a compressed
//! qcow2; the qemu-img version for the formats it writes.

use std::io::Write;
use std::path::Path;

use imgspec_cache::StepOutput;
use sha2::{Digest, Sha256};

use super::{put_with_sha256, FactError, Facts, StepContext, StepError};
use crate::key::KeyBuilder;
use crate::spec::model::OutputFormat;
use crate::tools::Tool;

pub const VERSION: u32 = 1;

#[derive(Clone, Debug)]
pub struct OutputStep {
    pub format: OutputFormat,
    /// `NAME.tar`, `NAME.qcow2`, ...
    pub file_name: String,
}

impl OutputStep {
    pub fn tools(&self) -> Vec<Tool> {
        match self.format {
            OutputFormat::Tar | OutputFormat::Raw => vec![],
            _ => vec![crate::tools::QEMU_IMG],
        }
    }

    pub fn hash(&self, k: &mut KeyBuilder, facts: &dyn Facts) -> Result<(), FactError> {
        k.param("format", format_name(self.format))
            .param("file", &self.file_name);
        // Only when asked: the keys of uncompressed outputs stay as they were.
        match self.format {
            OutputFormat::Qcow2 { compressed: true } => {
                k.param("compress", "zlib");
            }
            OutputFormat::Qcow2Zstd => {
                k.param("compress", "zstd");
            }
            _ => {}
        }
        for t in self.tools() {
            k.tool(t.program, &facts.tool_version(&t)?);
        }
        Ok(())
    }

    pub fn run(&self, ctx: &StepContext) -> Result<StepOutput, StepError> {
        let path = ctx.work.join(&self.file_name);
        match self.format {
            OutputFormat::Tar => {
                let (_, m) = ctx.input_tree(0)?;
                let f = std::fs::File::create(&path).map_err(StepError::io(&path))?;
                let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
                ctx.store.export_tar(&m, &mut w, Some(ctx.epoch))?;
                w.flush().map_err(StepError::io(&path))?;
            }
            OutputFormat::Raw => {
                // The disk step's file under the output's name: no bytes move.
                let disk = ctx
                    .inputs
                    .first()
                    .ok_or(StepError::Internal("raw output without a disk"))?;
                let r = disk
                    .files
                    .get("disk.raw")
                    .ok_or(StepError::Internal("the disk step has no disk.raw"))?;
                let sha = disk
                    .meta
                    .get("sha256")
                    .ok_or(StepError::Internal("the disk step has no sha256"))?;
                let mut out = StepOutput::default();
                out.files.insert(self.file_name.clone(), r.clone());
                out.meta
                    .insert(format!("sha256:{}", self.file_name), sha.clone());
                return Ok(out);
            }
            OutputFormat::Partition => return self.partition(ctx, &path),
            whole => {
                let disk = ctx
                    .inputs
                    .first()
                    .ok_or(StepError::Internal("a disk output without a disk"))?;
                let r = disk
                    .files
                    .get("disk.raw")
                    .ok_or(StepError::Internal("the disk step has no disk.raw"))?;
                let convert = |raw: &Path| -> Result<(), crate::format::FormatError> {
                    use crate::format::qcow2::{self, Compression};
                    use crate::format::vdisk::{self, VDisk};
                    let q = |c| qcow2::convert(ctx.runner, &ctx.log, raw, &path, c);
                    let v = |k| {
                        let seed = &r.digest.0;
                        vdisk::convert(ctx.runner, &ctx.log, raw, &path, k, seed, ctx.epoch)
                    };
                    match whole {
                        OutputFormat::Qcow2 { compressed: false } => q(Compression::None),
                        OutputFormat::Qcow2 { compressed: true } => q(Compression::Zlib),
                        OutputFormat::Qcow2Zstd => q(Compression::Zstd),
                        OutputFormat::Vmdk => v(VDisk::Vmdk),
                        OutputFormat::Vdi => v(VDisk::Vdi),
                        OutputFormat::Vhdx => v(VDisk::Vhdx),
                        OutputFormat::Vhd => v(VDisk::Vhd),
                        OutputFormat::Tar | OutputFormat::Raw | OutputFormat::Partition => {
                            unreachable!("handled above")
                        }
                    }
                };
                // The disk this build has just made, or the cached one decompressed.
                match ctx.store.fresh_file(&r.digest) {
                    Some(raw) => convert(&raw)?,
                    None => {
                        let raw = ctx.work.join("disk.raw");
                        ctx.store.blob_to_scratch(&r.digest, &raw)?;
                        convert(&raw)?;
                        let _ = std::fs::remove_file(&raw);
                    }
                }
            }
        }
        let mut out = StepOutput::default();
        self.add_file(ctx, &mut out, &self.file_name, &path)?;
        Ok(out)
    }

    /// Stores `path` as the output file `name`, with its SHA-256.
    fn add_file(
        &self,
        ctx: &StepContext,
        out: &mut StepOutput,
        name: &str,
        path: &Path,
    ) -> Result<(), StepError> {
        let (r, sha) = put_with_sha256(ctx, path)?;
        out.files.insert(name.to_string(), r);
        out.meta.insert(format!("sha256:{name}"), sha);
        Ok(())
    }

    fn partition(&self, ctx: &StepContext, qcow2: &Path) -> Result<StepOutput, StepError> {
        let fs = ctx
            .inputs
            .first()
            .and_then(|o| o.files.get("fs.img"))
            .ok_or(StepError::Internal(
                "partition output without a root filesystem",
            ))?;
        match ctx.store.fresh_file(&fs.digest) {
            Some(img) => crate::format::qcow2::convert(
                ctx.runner,
                &ctx.log,
                &img,
                qcow2,
                crate::format::qcow2::Compression::None,
            )?,
            None => {
                let img = ctx.work.join("root.img");
                ctx.store.blob_to_scratch(&fs.digest, &img)?;
                crate::format::qcow2::convert(
                    ctx.runner,
                    &ctx.log,
                    &img,
                    qcow2,
                    crate::format::qcow2::Compression::None,
                )?;
                let _ = std::fs::remove_file(&img);
            }
        }
        let mut out = StepOutput::default();
        self.add_file(ctx, &mut out, &self.file_name, qcow2)?;
        let (_, m) = ctx.input_tree(1)?;
        let tree = super::tree::Tree::new(m);
        let stem = self.file_name.trim_end_matches(".qcow2");
        let (kernel, initrd) = super::tree::boot_files(&tree)?.ok_or_else(|| {
            StepError::Invalid(
                "the image has no kernel (`/vmlinuz`, `/boot/vmlinuz-VERSION`): a partition \
                 image needs a kernel package"
                    .into(),
            )
        })?;
        let initrd = initrd.ok_or_else(|| {
            StepError::Invalid(format!(
                "the image has no initrd for its kernel `/{kernel}` (`/initrd.img`, \
                 `/boot/initramfs-VERSION.img`): a partition image needs one"
            ))
        })?;
        for (path, ext) in [(kernel, "vmlinuz"), (initrd, "initrd")] {
            let Some(imgspec_cache::Entry {
                kind: imgspec_cache::EntryKind::File { digest, size },
                ..
            }) = tree.entries.get(&path)
            else {
                return Err(StepError::Internal("kernel_path returned a non-file"));
            };
            let bytes = ctx.store.read_blob(digest)?;
            let name = format!("{stem}.{ext}");
            out.meta.insert(
                format!("sha256:{name}"),
                format!("{:x}", Sha256::digest(&bytes)),
            );
            out.files.insert(
                name,
                imgspec_cache::FileRef {
                    digest: *digest,
                    size: *size,
                },
            );
        }
        Ok(out)
    }
}

pub fn format_name(f: OutputFormat) -> &'static str {
    f.name()
}
