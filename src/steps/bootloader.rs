//! `bootloader "grub-efi"`: makes the image boot from its disk.
//!
//! Makes: the input tree plus
//! - `/etc/fstab` naming every filesystem of the disk by UUID,
//! - `/boot/grub/grub.cfg`: one entry booting the image's kernel (`/vmlinuz` resolved to the
//!   real file) with `root=UUID=...` and the spec's command line, on serial and VGA consoles,
//! - `/boot/efi/EFI/BOOT/BOOTX64.EFI`: GRUB's EFI image, made by the image's own `grub-mkimage`
//!   (from `grub-efi-amd64-bin`, which the plan adds to the image's packages) with an embedded
//!   config that finds the root filesystem by UUID and reads its grub.cfg. The EFI fallback
//!   path needs no NVRAM entry.
//!
//! Needs root (grub-mkimage runs in a chroot of the image, so GRUB matches the distribution).
//!
//! Key: input tree key; bootloader kind; command line; root filesystem UUID; fstab lines.

use imgspec_cache::StepOutput;

use super::chroot::Session;
use super::tree::Tree;
use super::{FactError, StepContext, StepError};
use crate::plan::key::KeyBuilder;
use crate::spec::model::BootloaderKind;

pub const VERSION: u32 = 1;

/// GRUB modules built into the EFI image.
const EFI_MODULES: &[&str] = &[
    "part_gpt",
    "part_msdos",
    "fat",
    "ext2",
    "normal",
    "linux",
    "search",
    "search_fs_uuid",
    "configfile",
    "echo",
    "test",
    "serial",
    "terminal",
    "gzio",
    "efi_gop",
    "all_video",
    "boot",
];

/// One `/etc/fstab` line.
#[derive(Clone, Debug)]
pub struct Mount {
    /// `UUID=...`
    pub source: String,
    pub target: String,
    pub fstype: String,
    pub options: String,
    pub pass: u8,
}

#[derive(Clone, Debug)]
pub struct BootloaderStep {
    pub kind: BootloaderKind,
    pub cmdline: String,
    /// UUID of the root filesystem.
    pub root_uuid: String,
    pub mounts: Vec<Mount>,
}

impl BootloaderStep {
    pub fn hash(&self, k: &mut KeyBuilder) -> Result<(), FactError> {
        k.param("kind", kind_name(self.kind))
            .param("cmdline", &self.cmdline)
            .param("root-uuid", &self.root_uuid)
            .param("fstab", &self.fstab());
        Ok(())
    }

    pub fn fstab(&self) -> String {
        let mut s = String::from("# written by imgspec\n");
        for m in &self.mounts {
            s.push_str(&format!(
                "{} {} {} {} 0 {}\n",
                m.source, m.target, m.fstype, m.options, m.pass
            ));
        }
        s
    }

    pub fn grub_cfg(&self, kernel: &str, initrd: Option<&str>) -> String {
        let mut s = format!(
            "# written by imgspec\n\
             set default=0\n\
             set timeout=1\n\
             serial --unit=0 --speed=115200\n\
             terminal_input serial console\n\
             terminal_output serial console\n\
             search --no-floppy --fs-uuid --set=root {uuid}\n\
             menuentry 'Linux' {{\n\
             \tlinux /{kernel} root=UUID={uuid} ro {cmdline}\n",
            uuid = self.root_uuid,
            cmdline = self.cmdline,
        );
        if let Some(i) = initrd {
            s.push_str(&format!("\tinitrd /{i}\n"));
        }
        s.push_str("}\n");
        s
    }

    fn early_cfg(&self) -> String {
        format!(
            "search --no-floppy --fs-uuid --set=root {}\nset prefix=($root)/boot/grub\nconfigfile $prefix/grub.cfg\n",
            self.root_uuid
        )
    }

    pub fn run(&self, ctx: &StepContext) -> Result<StepOutput, StepError> {
        let (_, m) = ctx.input_tree(0)?;
        let tree = Tree::new(m);
        let kernel = kernel_path(&tree, "vmlinuz")?.ok_or_else(|| {
            StepError::Invalid(
                "the image has no kernel (`/vmlinuz`): add `linux-image-amd64` to a packages set"
                    .into(),
            )
        })?;
        let initrd = kernel_path(&tree, "initrd.img")?;
        let s = Session::open(ctx, 0, "grub-mkimage runs in a chroot of the image")?;
        let write = |rel: &str, text: &str| -> Result<(), StepError> {
            let p = s.root.join(rel);
            if let Some(d) = p.parent() {
                std::fs::create_dir_all(d).map_err(StepError::io(d))?;
            }
            std::fs::write(&p, text).map_err(StepError::io(&p))
        };
        write("etc/fstab", &self.fstab())?;
        write(
            "boot/grub/grub.cfg",
            &self.grub_cfg(&kernel, initrd.as_deref()),
        )?;
        if matches!(self.kind, BootloaderKind::GrubEfi | BootloaderKind::Hybrid) {
            write("tmp/imgspec-early.cfg", &self.early_cfg())?;
            let script = format!(
                "set -e\n\
                 command -v grub-mkimage >/dev/null || {{ echo 'the image has no grub-mkimage (grub-efi-amd64-bin)' >&2; exit 1; }}\n\
                 mkdir -p /boot/efi/EFI/BOOT\n\
                 grub-mkimage -O x86_64-efi -p /boot/grub -c /tmp/imgspec-early.cfg -o /boot/efi/EFI/BOOT/BOOTX64.EFI {}\n\
                 rm -f /tmp/imgspec-early.cfg\n",
                EFI_MODULES.join(" ")
            );
            s.run(ctx, &script)?;
        }
        let m = s.close(ctx)?;
        ctx.tree_output(&m)
    }
}

/// The real file behind a top-level kernel link (`vmlinuz` → `boot/vmlinuz-6.1.0-28-amd64`).
fn kernel_path(tree: &Tree, link: &str) -> Result<Option<String>, StepError> {
    for candidate in [link.to_string(), format!("boot/{link}")] {
        let p = tree.resolve(&candidate, true)?;
        if matches!(
            tree.entries.get(&p).map(|e| &e.kind),
            Some(imgspec_cache::EntryKind::File { .. })
        ) {
            return Ok(Some(p));
        }
    }
    Ok(None)
}

pub fn kind_name(k: BootloaderKind) -> &'static str {
    match k {
        BootloaderKind::GrubEfi => "grub-efi",
        BootloaderKind::GrubBios => "grub-bios",
        BootloaderKind::Hybrid => "hybrid",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grub_cfg_boots_the_root_by_uuid() {
        let b = BootloaderStep {
            kind: BootloaderKind::GrubEfi,
            cmdline: "console=ttyS0".into(),
            root_uuid: "1111-2222".into(),
            mounts: vec![],
        };
        let cfg = b.grub_cfg("boot/vmlinuz-6.1", Some("boot/initrd.img-6.1"));
        assert!(cfg.contains("search --no-floppy --fs-uuid --set=root 1111-2222\n"));
        assert!(cfg.contains("linux /boot/vmlinuz-6.1 root=UUID=1111-2222 ro console=ttyS0\n"));
        assert!(cfg.contains("initrd /boot/initrd.img-6.1\n"));
    }
}
