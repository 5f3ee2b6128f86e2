//! `bootloader "grub-efi"|"grub-bios"|"hybrid"`: makes the image boot from its disk.
//!
//! Makes: the input tree plus
//! - `/etc/fstab` naming every filesystem of the disk by UUID,
//! - `/boot/grub/grub.cfg`: one entry booting the image's kernel (`/vmlinuz` resolved to the
//!   real file, else the newest `/boot/vmlinuz-VERSION` with its initramfs, as RPM-family
//!   systems have them: [`boot_files`]) with `root=UUID=...` and the spec's command line, on serial and VGA consoles,
//! - `grub-efi`, `hybrid`: `/boot/efi/EFI/BOOT/BOOTX64.EFI`, GRUB's EFI image, made by the
//!   image's own `grub-mkimage` (from `grub-efi-amd64-bin`, which the plan adds to the image's
//!   packages) with an embedded config that finds the root filesystem by UUID and reads its
//!   grub.cfg. The EFI fallback path needs no NVRAM entry. An arm64 image gets
//!   `BOOTAA64.EFI` (`arm64-efi`, from `grub-efi-arm64-bin`), made by its `grub-mkimage` under
//!   emulation ([`crate::foreign`]), and a grub.cfg without PC serial lines.
//! - with `secure-boot=#true`, instead: Debian's Microsoft-signed shim as `BOOTX64.EFI`, its
//!   Debian-signed GRUB as `EFI/BOOT/grubx64.efi` and MokManager beside them
//!   ([`SECURE_BOOT_FILES`], from `shim-signed` and `grub-efi-amd64-signed`, which the plan
//!   installs in a package set of their own), and `/boot/efi/EFI/debian/grub.cfg`, where the
//!   signed GRUB's built-in prefix points, with the same lines as the embedded config. GRUB
//!   then checks the kernel's signature through shim: Debian's kernel is signed.
//!
//! and, for `grub-bios` and `hybrid`, two files next to the tree (not in it), which the disk
//! step writes into the BIOS boot partition and the MBR (see [`crate::format::biosboot`]):
//! - `core.img`: GRUB's i386-pc core image, made by the image's own `grub-mkimage -O i386-pc`
//!   (from `grub-pc-bin`) with the same embedded config as the EFI image and the modules that
//!   read a GPT disk through the BIOS and an ext4 root ([`BIOS_MODULES`]),
//! - `boot.img`: the image's own `/usr/lib/grub/i386-pc/boot.img`, unpatched.
//!
//! GRUB is the image's own: `grub-mkimage` (Debian family), or `grub2-mkimage` where the image
//! has it and not `grub-mkimage` (RPM family: Fedora, EL, from `grub2-tools`; the modules are
//! under the same `/usr/lib/grub/x86_64-efi` and `/usr/lib/grub/i386-pc`, from
//! `grub2-efi-x64-modules` and `grub2-pc-modules`). A missing piece is named by the package of
//! the image's family that has it ([`crate::distro::rpm::names`]). Secure Boot's files are
//! Debian's: an RPM-family image with `secure-boot=#true` is refused.
//!
//! Needs root (grub-mkimage runs in a chroot of the image, so GRUB matches the distribution).
//!
//! Key: input tree key; bootloader kind; `secure-boot` (only when on); the GRUB target
//! (`efi-arch`, only when not x86-64); command line; root filesystem UUID; fstab lines.

use std::path::PathBuf;

use imgspec_cache::StepOutput;

use super::chroot::Session;
use super::mounts::{fstab_text, Mount};
use super::tree::{boot_files, Tree};
use super::{FactError, StepContext, StepError};
use crate::key::KeyBuilder;
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

/// GRUB modules built into the arm64 EFI image: as [`EFI_MODULES`], without the serial and
/// video drivers (the firmware's console is the serial port).
const EFI_MODULES_ARM64: &[&str] = &[
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
    "terminal",
    "gzio",
    "boot",
];

/// The architecture of GRUB's EFI image, from the image's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EfiArch {
    X86_64,
    Arm64,
}

impl EfiArch {
    /// From Debian's architecture name: `arm64`, else x86-64 (the spec checks that only
    /// `amd64` and `arm64` images have a bootloader).
    pub fn of(debian_arch: &str) -> Self {
        if debian_arch == "arm64" {
            EfiArch::Arm64
        } else {
            EfiArch::X86_64
        }
    }
    pub fn grub_target(self) -> &'static str {
        match self {
            EfiArch::X86_64 => "x86_64-efi",
            EfiArch::Arm64 => "arm64-efi",
        }
    }
    /// The removable-media file name the firmware starts.
    pub fn loader(self) -> &'static str {
        match self {
            EfiArch::X86_64 => "BOOTX64.EFI",
            EfiArch::Arm64 => "BOOTAA64.EFI",
        }
    }
    fn grub_package(self) -> &'static str {
        match self {
            EfiArch::X86_64 => "grub-efi-amd64-bin",
            EfiArch::Arm64 => "grub-efi-arm64-bin",
        }
    }
    /// The package of GRUB's tools (`grub-mkimage`).
    fn tools_package(self) -> &'static str {
        "grub-common"
    }
    fn kernel_package(self) -> &'static str {
        match self {
            EfiArch::X86_64 => "linux-image-amd64",
            EfiArch::Arm64 => "linux-image-arm64",
        }
    }
    fn modules(self) -> &'static [&'static str] {
        match self {
            EfiArch::X86_64 => EFI_MODULES,
            EfiArch::Arm64 => EFI_MODULES_ARM64,
        }
    }
}

/// GRUB modules built into the BIOS core image: `biosdisk` reads disks through INT 13h.
pub const BIOS_MODULES: &[&str] = &[
    "biosdisk",
    "part_gpt",
    "part_msdos",
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
    "boot",
];

/// The EFI binaries of a Secure Boot image, copied from the image's own packages (the plan adds
/// `shim-signed` and `grub-efi-amd64-signed`): (file in the image, where on the ESP). The
/// firmware starts shim at the fallback path; shim starts `grubx64.efi` from its own folder
/// (and MokManager when a key enrolment is pending). Shim's fallback `fbx64.efi` is left out
/// on purpose: beside shim it would write NVRAM entries and reset the machine.
pub const SECURE_BOOT_FILES: &[(&str, &str)] = &[
    ("/usr/lib/shim/shimx64.efi.signed", "EFI/BOOT/BOOTX64.EFI"),
    (
        "/usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed",
        "EFI/BOOT/grubx64.efi",
    ),
    ("/usr/lib/shim/mmx64.efi.signed", "EFI/BOOT/mmx64.efi"),
];

/// Where Debian's signed GRUB reads its configuration: its built-in prefix `/EFI/debian` on the
/// partition it was started from (the ESP, mounted at `/boot/efi`).
const SIGNED_GRUB_CFG: &str = "boot/efi/EFI/debian/grub.cfg";

/// Copies the signed binaries onto the ESP, inside the image's chroot.
fn secure_boot_script() -> String {
    let mut s = String::from("set -e\nmkdir -p /boot/efi/EFI/BOOT\n");
    for (from, to) in SECURE_BOOT_FILES {
        s.push_str(&format!(
            "test -f {from} || {{ echo 'the image has no {from} (shim-signed, grub-efi-amd64-signed)' >&2; exit 1; }}\n\
             cp {from} /boot/efi/{to}\n"
        ));
    }
    s
}

/// Where the BIOS images are made inside the image root, removed before the tree is imported.
const BIOS_OUT: &str = ".imgspec-bios";

/// The image's family, as far as GRUB's package names go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Names {
    Debian,
    Rpm,
}

impl Names {
    /// RPM where the tree's package manager is dnf ([`crate::distro::rpm::manager_of`]); a
    /// tree with no package manager imgspec knows is named as Debian's.
    fn of(tree: &Tree, store: &imgspec_cache::Store) -> Names {
        use crate::distro::rpm::{manager_in, Manager};
        match manager_in(tree, store) {
            Ok(Manager::Dnf(_)) => Names::Rpm,
            _ => Names::Debian,
        }
    }

    /// The family's name of Debian's package `deb` (joined with `, ` when it is several).
    fn package(self, deb: &str) -> String {
        match self {
            Names::Debian => deb.to_string(),
            Names::Rpm => crate::distro::rpm::names::rpm_names(&[deb.to_string()])
                .map(|v| v.join(", "))
                .unwrap_or_else(|_| deb.to_string()),
        }
    }

    /// The package of the image's kernel.
    fn kernel(self, arch: EfiArch) -> &'static str {
        match self {
            Names::Debian => arch.kernel_package(),
            Names::Rpm => "kernel-core",
        }
    }
}

/// The shell lines that set `$mk` to the image's `grub-mkimage` (or `grub2-mkimage`) and check
/// that GRUB's modules for `target` are there, naming the missing package.
fn mkimage_check(target: &str, tools: &str, modules: &str) -> String {
    format!(
        "if command -v grub-mkimage >/dev/null; then mk=grub-mkimage\n\
         elif command -v grub2-mkimage >/dev/null; then mk=grub2-mkimage\n\
         else echo 'the image has no grub-mkimage nor grub2-mkimage ({tools})' >&2; exit 1; fi\n\
         test -f /usr/lib/grub/{target}/moddep.lst || {{ echo 'the image has no GRUB modules for {target} in /usr/lib/grub/{target} ({modules})' >&2; exit 1; }}\n"
    )
}

#[derive(Clone, Debug)]
pub struct BootloaderStep {
    pub kind: BootloaderKind,
    /// The EFI side is Debian's signed shim and GRUB ([`SECURE_BOOT_FILES`]), not a GRUB image
    /// made here (which no firmware with Secure Boot on would start).
    pub secure_boot: bool,
    /// Which GRUB EFI image: the image's architecture.
    pub arch: EfiArch,
    pub cmdline: String,
    /// UUID of the root filesystem.
    pub root_uuid: String,
    pub mounts: Vec<Mount>,
}

impl BootloaderStep {
    pub fn hash(&self, k: &mut KeyBuilder) -> Result<(), FactError> {
        k.param("kind", kind_name(self.kind));
        // Only when on: the keys of every image without it stay what they were.
        if self.secure_boot {
            k.param("secure-boot", "true");
        }
        if self.arch != EfiArch::X86_64 {
            k.param("efi-arch", self.arch.grub_target());
        }
        k.param("cmdline", &self.cmdline)
            .param("root-uuid", &self.root_uuid)
            .param("fstab", &self.fstab());
        Ok(())
    }

    pub fn fstab(&self) -> String {
        fstab_text(&self.mounts)
    }

    pub fn grub_cfg(&self, kernel: &str, initrd: Option<&str>) -> String {
        // arm64: the firmware's console is the serial port (the EFI console GRUB writes to);
        // GRUB's `serial` names PC serial ports.
        let serial = match self.arch {
            EfiArch::X86_64 => {
                "serial --unit=0 --speed=115200\n\
                 terminal_input serial console\n\
                 terminal_output serial console\n"
            }
            EfiArch::Arm64 => "",
        };
        let mut s = format!(
            "# written by imgspec\n\
             set default=0\n\
             set timeout=1\n\
             {serial}\
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
        let names = Names::of(&tree, ctx.store);
        // `/vmlinuz` (Debian), else the newest `/boot/vmlinuz-VERSION` (RPM family).
        let (kernel, initrd) = boot_files(&tree)?.ok_or_else(|| {
            StepError::Invalid(format!(
                "the image has no kernel (`/vmlinuz` nor `/boot/vmlinuz-VERSION`): add `{}` to \
                 a packages set",
                names.kernel(self.arch)
            ))
        })?;
        if self.secure_boot && names == Names::Rpm {
            return Err(StepError::Invalid(
                "`secure-boot=#true` takes Debian's signed shim and GRUB; on an RPM-family \
                 image (dnf) it is not supported yet: leave it off"
                    .into(),
            ));
        }
        let s = Session::open(ctx, 0, "grub-mkimage runs in a chroot of the image")?;
        let write = |rel: &str, text: &str| -> Result<(), StepError> {
            let p = s.path(rel)?;
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
        let efi = matches!(self.kind, BootloaderKind::GrubEfi | BootloaderKind::Hybrid);
        if efi && self.secure_boot {
            // The signed GRUB cannot carry our configuration: its prefix is built in
            // (`/EFI/debian` on the partition it was started from), and the configuration
            // there finds the root filesystem by UUID, as `grub-install --uefi-secure-boot`
            // writes it.
            write(SIGNED_GRUB_CFG, &self.early_cfg())?;
            s.run(ctx, &secure_boot_script())?;
        } else if efi {
            write("tmp/imgspec-early.cfg", &self.early_cfg())?;
            let a = self.arch;
            let script = format!(
                "set -e\n\
                 {check}\
                 mkdir -p /boot/efi/EFI/BOOT\n\
                 \"$mk\" -O {target} -d /usr/lib/grub/{target} -p /boot/grub -c /tmp/imgspec-early.cfg -o /boot/efi/EFI/BOOT/{loader} {modules}\n\
                 rm -f /tmp/imgspec-early.cfg\n",
                check = mkimage_check(
                    a.grub_target(),
                    &names.package(a.tools_package()),
                    &names.package(a.grub_package())
                ),
                target = a.grub_target(),
                loader = a.loader(),
                modules = a.modules().join(" "),
            );
            s.run(ctx, &script)?;
        }
        let bios = if matches!(self.kind, BootloaderKind::GrubBios | BootloaderKind::Hybrid) {
            Some(self.make_bios_images(ctx, &s, names)?)
        } else {
            None
        };
        let m = s.close_and_keep(ctx)?;
        let mut out = ctx.tree_output(&m)?;
        if let Some((core, boot)) = bios {
            out.files
                .insert("core.img".into(), ctx.store.put_file(&core)?);
            out.files
                .insert("boot.img".into(), ctx.store.put_file(&boot)?);
            let _ = std::fs::remove_file(core);
            let _ = std::fs::remove_file(boot);
        }
        Ok(out)
    }

    /// Runs the image's `grub-mkimage -O i386-pc` and takes `core.img` and `boot.img` out of
    /// the tree into the step's scratch space: (core, boot).
    fn make_bios_images(
        &self,
        ctx: &StepContext,
        s: &Session,
        names: Names,
    ) -> Result<(PathBuf, PathBuf), StepError> {
        // A fresh folder at the top of the root: `create_dir` fails rather than follow a
        // symlink the image might have there.
        let dir = s.root.join(BIOS_OUT);
        std::fs::create_dir(&dir).map_err(StepError::io(&dir))?;
        let cfg = dir.join("early.cfg");
        std::fs::write(&cfg, self.early_cfg()).map_err(StepError::io(&cfg))?;
        let pc = names.package("grub-pc-bin");
        let script = format!(
            "set -e\n\
             {check}\
             test -f /usr/lib/grub/i386-pc/boot.img || {{ echo 'the image has no /usr/lib/grub/i386-pc/boot.img ({pc})' >&2; exit 1; }}\n\
             \"$mk\" -O i386-pc -d /usr/lib/grub/i386-pc -p /boot/grub -c /{BIOS_OUT}/early.cfg -o /{BIOS_OUT}/core.img {}\n\
             cp /usr/lib/grub/i386-pc/boot.img /{BIOS_OUT}/boot.img\n",
            BIOS_MODULES.join(" "),
            check = mkimage_check("i386-pc", &names.package("grub-common"), &pc),
        );
        let take = |name: &str| -> Result<PathBuf, StepError> {
            // The command may have put a link there: take only from the folder made above.
            let is_dir = std::fs::symlink_metadata(&dir).is_ok_and(|m| m.file_type().is_dir());
            if !is_dir {
                return Err(StepError::Invalid(format!(
                    "`/{BIOS_OUT}` made in the image is no longer a directory"
                )));
            }
            let from = dir.join(name);
            let meta = std::fs::symlink_metadata(&from).map_err(StepError::io(&from))?;
            if !meta.file_type().is_file() {
                return Err(StepError::Invalid(format!(
                    "`/{BIOS_OUT}/{name}` made in the image is not a regular file"
                )));
            }
            let to = ctx.work.join(name);
            std::fs::rename(&from, &to).map_err(StepError::io(&from))?;
            Ok(to)
        };
        let made = s
            .run(ctx, &script)
            .and_then(|()| Ok((take("core.img")?, take("boot.img")?)));
        let cleaned = std::fs::remove_dir_all(&dir).map_err(StepError::io(&dir));
        let made = made?;
        cleaned?;
        Ok(made)
    }
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
            secure_boot: false,
            arch: EfiArch::X86_64,
            cmdline: "console=ttyS0".into(),
            root_uuid: "1111-2222".into(),
            mounts: vec![],
        };
        let cfg = b.grub_cfg("boot/vmlinuz-6.1", Some("boot/initrd.img-6.1"));
        assert!(cfg.contains("search --no-floppy --fs-uuid --set=root 1111-2222\n"));
        assert!(cfg.contains("linux /boot/vmlinuz-6.1 root=UUID=1111-2222 ro console=ttyS0\n"));
        assert!(cfg.contains("initrd /boot/initrd.img-6.1\n"));
    }

    #[test]
    fn missing_grub_is_named_by_the_images_family() {
        assert_eq!(
            Names::Debian.package("grub-efi-amd64-bin"),
            "grub-efi-amd64-bin"
        );
        assert_eq!(
            Names::Rpm.package("grub-efi-amd64-bin"),
            "grub2-efi-x64-modules"
        );
        assert_eq!(Names::Rpm.package("grub-pc-bin"), "grub2-pc-modules");
        assert_eq!(Names::Rpm.package("grub-common"), "grub2-tools");
        assert_eq!(
            Names::Rpm.package(EfiArch::Arm64.grub_package()),
            "grub2-efi-aa64-modules"
        );
        assert_eq!(Names::Rpm.kernel(EfiArch::X86_64), "kernel-core");
        assert_eq!(Names::Debian.kernel(EfiArch::X86_64), "linux-image-amd64");
    }

    /// The check picks `grub-mkimage`, else `grub2-mkimage`, run by a real shell over a PATH
    /// that has one, the other or neither.
    #[test]
    fn the_images_own_mkimage_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        let check = mkimage_check("x86_64-efi", "grub2-tools", "grub2-efi-x64-modules");
        // The modules' test is about the image; here only the program's choice is run.
        let pick = check.lines().take(3).collect::<Vec<_>>().join("\n");
        let run = |bins: &[&str]| {
            let bin = dir.path().join(bins.join("+"));
            std::fs::create_dir_all(&bin).unwrap();
            for b in bins {
                let p = bin.join(b);
                std::fs::write(&p, "#!/bin/sh\n").unwrap();
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
            let out = std::process::Command::new("/bin/sh")
                .arg("-c")
                .arg(format!("{pick}\necho \"$mk\""))
                .env("PATH", &bin)
                .output()
                .unwrap();
            (
                String::from_utf8_lossy(&out.stdout).trim().to_string(),
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            )
        };
        assert_eq!(run(&["grub-mkimage", "grub2-mkimage"]).0, "grub-mkimage");
        assert_eq!(run(&["grub2-mkimage"]).0, "grub2-mkimage");
        let (out, err) = run(&["true"]);
        assert_eq!(out, "");
        assert_eq!(
            err,
            "the image has no grub-mkimage nor grub2-mkimage (grub2-tools)"
        );
    }
}
