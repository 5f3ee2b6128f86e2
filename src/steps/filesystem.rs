//! `filesystem`: one partition's filesystem image, written into a plain file without mounting.
//!
//! Makes: `fs.img`, of exactly the partition's size:
//! - ext4 (the root, or any Linux mount): the image tree with the other partitions' mount points
//!   left as empty folders, exported as a deterministic tarball streamed into `mkfs.ext4 -d -`
//!   while it is written (so owners, modes and device nodes need no root); UUID and directory
//!   hash seed derived from the disk seed, every timestamp the image epoch.
//! - vfat (the ESP): the tree below the mount point, copied with mtools; volume id derived from
//!   the disk seed.
//!
//! An ext4 filesystem the disk step will take whole (the disk's largest, `place`) is made in
//! place: in a file of the disk's size, at its partition's offset (`mkfs.ext4 -E offset=`),
//! and stored as that range of the file; the disk step then takes the file as the disk and
//! copies nothing. Same bytes as in a file of its own, so `place` is not in the key.
//!
//! Key: input tree key; format; size; mount point; excluded mount points; UUID, hash seed or
//! volume id; label; versions of mke2fs, or of mkfs.vfat and mcopy.

use std::io::Write;

use imgspec_cache::{StepOutput, TreeManifest};

use super::{FactError, Facts, StepContext, StepError};
use crate::ids::Guid;
use crate::key::KeyBuilder;
use crate::spec::model::FsFormat;
use crate::tools::{Tool, MCOPY, MKE2FS, MKFS_VFAT};

pub const VERSION: u32 = 1;

#[derive(Clone, Debug)]
pub struct FilesystemStep {
    pub format: FsFormat,
    pub size: u64,
    /// Absolute mount point in the image.
    pub mount: String,
    /// Mount points of other partitions below this one: left empty here.
    pub excludes: Vec<String>,
    pub uuid: Guid,
    pub hash_seed: Guid,
    pub volume_id: u32,
    pub label: String,
    /// ext4 only: made at this offset of a disk-sized file (not in the key: the same bytes).
    pub place: Option<crate::format::ext4::Place>,
}

impl FilesystemStep {
    pub fn tools(&self) -> Vec<Tool> {
        match self.format {
            FsFormat::Ext4 => vec![MKE2FS],
            FsFormat::Vfat => vec![MKFS_VFAT, MCOPY],
        }
    }

    pub fn hash(&self, k: &mut KeyBuilder, facts: &dyn Facts) -> Result<(), FactError> {
        k.param("format", format_name(self.format))
            .param("size", &self.size.to_string())
            .param("mount", &self.mount)
            .param("excludes", &self.excludes.join(" "))
            .param("label", &self.label);
        match self.format {
            FsFormat::Ext4 => {
                k.param("uuid", &self.uuid.to_string())
                    .param("hash-seed", &self.hash_seed.to_string());
            }
            FsFormat::Vfat => {
                k.param("volume-id", &format!("{:08X}", self.volume_id));
            }
        }
        for t in self.tools() {
            k.tool(t.program, &facts.tool_version(&t)?);
        }
        Ok(())
    }

    /// The part of the image tree this filesystem holds, re-rooted at the mount point.
    pub fn select(&self, m: TreeManifest) -> TreeManifest {
        let mount = self.mount.trim_matches('/');
        let excluded = |p: &str| {
            self.excludes.iter().any(|x| {
                let x = x.trim_matches('/');
                p.strip_prefix(x).is_some_and(|r| r.starts_with('/'))
            })
        };
        let entries = m
            .entries
            .into_iter()
            .filter(|e| !excluded(&e.path))
            .filter_map(|mut e| {
                if mount.is_empty() {
                    return Some(e);
                }
                let rel = if e.path == mount {
                    String::new()
                } else {
                    e.path.strip_prefix(mount)?.strip_prefix('/')?.to_string()
                };
                e.path = rel;
                Some(e)
            })
            .collect();
        TreeManifest { entries }
    }

    pub fn run(&self, ctx: &StepContext) -> Result<StepOutput, StepError> {
        let (_, m) = ctx.input_tree(0)?;
        let sub = self.select(m);
        let img = ctx.work.join("fs.img");
        match self.format {
            FsFormat::Ext4 => {
                let p = crate::format::ext4::Ext4Params {
                    size: self.size,
                    uuid: self.uuid,
                    hash_seed: self.hash_seed,
                    label: self.label.clone(),
                    epoch: ctx.epoch,
                };
                // The tarball streams into mkfs.ext4 as it is written: the export (blobs
                // decompressed) and mkfs run at once, and no copy of the tree is written.
                let mut unread: Option<imgspec_cache::StoreError> = None;
                let mut feed = |pipe: &mut dyn Write| -> std::io::Result<()> {
                    let mut w = std::io::BufWriter::with_capacity(1 << 20, pipe);
                    match ctx.store.export_tar(&sub, &mut w, Some(ctx.epoch)) {
                        Ok(()) => w.flush(),
                        Err(e) => {
                            let why = e.to_string();
                            unread = Some(e);
                            Err(std::io::Error::other(why))
                        }
                    }
                };
                let made = crate::format::ext4::mkfs_ext4_fed(
                    ctx.runner, &ctx.log, &img, &p, self.place, &mut feed,
                );
                // A damaged blob is the step's failure whatever mkfs made of the cut stream
                // (the build heals it); a write refused by a mkfs that died is mkfs's.
                match unread {
                    Some(e) if imgspec_cache::damaged_blob(&e).is_some() || made.is_ok() => {
                        return Err(e.into())
                    }
                    _ => made?,
                }
            }
            FsFormat::Vfat => {
                let dir = ctx.work.join("tree");
                std::fs::create_dir(&dir).map_err(StepError::io(&dir))?;
                ctx.store.export_dir(&sub, &dir)?;
                crate::format::vfat::mkfs_vfat(
                    ctx.runner,
                    &ctx.log,
                    &dir,
                    &img,
                    self.size,
                    self.volume_id,
                    &self.label,
                    ctx.epoch,
                )?;
            }
        }
        // Kept as a plain file too: the disk step of this build copies it from there (or takes
        // the disk-sized file it was made in).
        let r = match (self.format, self.place) {
            (FsFormat::Ext4, Some(pl)) => {
                ctx.store
                    .put_range_keep_later(&img, pl.offset, self.size, &mut |_| {})?
            }
            _ => ctx.store.put_file_keep_later(&img, &mut |_| {})?,
        };
        let mut out = StepOutput::default();
        out.files.insert("fs.img".into(), r);
        Ok(out)
    }
}

pub fn format_name(f: FsFormat) -> &'static str {
    match f {
        FsFormat::Ext4 => "ext4",
        FsFormat::Vfat => "vfat",
    }
}

/// How `/etc/fstab` and the kernel command line name a filesystem.
pub fn vfat_uuid(volume_id: u32) -> String {
    format!("{:04X}-{:04X}", volume_id >> 16, volume_id & 0xffff)
}
