//! Images of another architecture than the host's (`base "debian" architecture="arm64"` on
//! x86-64): every program of the image (mmdebstrap's maintainer scripts, apt, `run`, GRUB's
//! `grub-mkimage`) runs under QEMU's user-mode emulator, which the kernel starts by itself for
//! the image's executables through a `binfmt_misc` entry.
//!
//! The entry must have the `F` flag (Debian's `qemu-user-static`/`qemu-user-binfmt` register it
//! so): the kernel then opens the emulator when the entry is registered, and starts it for a
//! program inside a chroot or a sandbox whose root has no emulator in it. Nothing of the
//! emulator is copied into an image.
//!
//! Key: the emulator's version becomes a part of the key of every step of a foreign image that
//! runs the image's programs (base, packages, run, user, element, bootloader); the steps of a
//! native image are hashed as before.

use std::path::Path;

use crate::tools::Tool;

/// An architecture this host can build images of by emulation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Emulator {
    /// Debian's name of the architecture (`arm64`).
    pub arch: &'static str,
    /// The `binfmt_misc` entry Debian's packages register (`qemu-aarch64`).
    pub binfmt: &'static str,
    /// The emulator; its version goes into the keys.
    pub tool: Tool,
}

pub const QEMU_AARCH64: Tool = Tool {
    program: "qemu-aarch64-static",
    package: "qemu-user-static",
    version_args: Some(&["--version"]),
    install_hint: Some("on Debian 12 from bookworm-backports, like qemu-system-x86"),
};

const EMULATORS: &[Emulator] = &[Emulator {
    arch: "arm64",
    binfmt: "qemu-aarch64",
    tool: QEMU_AARCH64,
}];

/// Debian's name of the host's architecture.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "i386",
        "riscv64" => "riscv64",
        "powerpc64" => "ppc64el",
        "s390x" => "s390x",
        other => other,
    }
}

/// Whether `arch` is another architecture than the host's.
pub fn is_foreign(arch: &str) -> bool {
    arch != host_arch()
}

/// The emulator of a foreign architecture: `None` for the host's own, `Err` for one this host
/// has no emulator for.
pub fn emulator(arch: &str) -> Result<Option<&'static Emulator>, String> {
    if !is_foreign(arch) {
        return Ok(None);
    }
    EMULATORS
        .iter()
        .find(|e| e.arch == arch)
        .map(Some)
        .ok_or_else(|| {
            format!(
                "imgspec builds `{arch}` images only on a `{arch}` host; on this `{}` host it \
                 emulates {}",
                host_arch(),
                EMULATORS
                    .iter()
                    .map(|e| format!("`{}`", e.arch))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

/// What keeps the kernel from starting `e` for the image's programs, and the fix, or `None`
/// when it will. Reads `binfmt_misc` under `proc_binfmt` (`/proc/sys/fs/binfmt_misc`).
pub fn binfmt_problem(e: &Emulator, proc_binfmt: &Path) -> Option<(String, String)> {
    let entry = proc_binfmt.join(e.binfmt);
    let register = format!(
        "apt-get install qemu-user-static binfmt-support (it registers `{0}`); or, with the \
         package installed: /usr/lib/systemd/systemd-binfmt /usr/lib/binfmt.d/{0}.conf \
         (update-binfmts --enable {0} with Debian 12's own qemu-user-static)",
        e.binfmt
    );
    if !proc_binfmt.join("status").exists() {
        return Some((
            format!(
                "the binfmt_misc filesystem is not mounted at {}",
                proc_binfmt.display()
            ),
            format!(
                "mount it: mount -t binfmt_misc binfmt_misc {}; then, if `{}` is not \
                 registered: {register}",
                proc_binfmt.display(),
                e.binfmt
            ),
        ));
    }
    let Ok(text) = std::fs::read_to_string(&entry) else {
        return Some((
            format!(
                "no binfmt_misc entry `{}` for {} programs",
                e.binfmt, e.arch
            ),
            register,
        ));
    };
    if !text.lines().any(|l| l.trim() == "enabled") {
        return Some((
            format!("the binfmt_misc entry `{}` is disabled", e.binfmt),
            format!("enable it: echo 1 > {}", entry.display()),
        ));
    }
    let flags = text
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .unwrap_or("")
        .trim();
    if !flags.contains('F') {
        return Some((
            format!(
                "the binfmt_misc entry `{}` has no `F` flag (flags `{flags}`): the kernel would \
                 look for its emulator inside the image",
                e.binfmt
            ),
            format!(
                "register it with the F flag (Debian's qemu-user-static does): echo -1 > {} \
                 and then {register}",
                entry.display()
            ),
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(dir: &Path, text: &str) {
        std::fs::write(dir.join("status"), "enabled\n").unwrap();
        std::fs::write(dir.join("qemu-aarch64"), text).unwrap();
    }

    #[test]
    fn binfmt_entries_are_checked_for_what_a_chroot_needs() {
        let e = emulator("arm64").unwrap().unwrap();
        let d = tempfile::tempdir().unwrap();
        let (why, fix) = binfmt_problem(e, d.path()).unwrap();
        assert!(why.contains("not mounted"), "{why}");
        assert!(fix.contains("mount -t binfmt_misc binfmt_misc"), "{fix}");
        std::fs::write(d.path().join("status"), "enabled\n").unwrap();
        let (why, fix) = binfmt_problem(e, d.path()).unwrap();
        assert!(why.contains("no binfmt_misc entry `qemu-aarch64`"), "{why}");
        assert!(fix.contains("qemu-user-static"), "{fix}");
        entry(
            d.path(),
            "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: PO\n",
        );
        let (why, _) = binfmt_problem(e, d.path()).unwrap();
        assert!(why.contains("no `F` flag"), "{why}");
        entry(d.path(), "disabled\nflags: POF\n");
        assert!(binfmt_problem(e, d.path()).unwrap().0.contains("disabled"));
        entry(
            d.path(),
            "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: POF\noffset 0\n",
        );
        assert_eq!(binfmt_problem(e, d.path()), None);
    }

    #[test]
    fn only_foreign_architectures_with_an_emulator_are_emulated() {
        assert_eq!(emulator(host_arch()).unwrap(), None);
        if host_arch() == "amd64" {
            assert_eq!(emulator("arm64").unwrap().unwrap().binfmt, "qemu-aarch64");
            let e = emulator("riscv64").unwrap_err();
            assert!(e.contains("`arm64`"), "{e}");
        }
    }
}
