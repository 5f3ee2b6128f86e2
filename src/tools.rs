//! Host tools: which program each step needs, the Debian package that provides it, and its
//! version (which goes into the keys of the steps that run it).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// A program on the host that some step runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tool {
    /// The program's name, looked up on PATH.
    pub program: &'static str,
    /// The Debian/Ubuntu package that provides it.
    pub package: &'static str,
    /// Arguments that make it print its version on stdout or stderr; None: its version does not
    /// change any result (bwrap), so it is not part of keys.
    pub version_args: Option<&'static [&'static str]>,
    /// Extra words for `apt-get install`, e.g. `-t bookworm-backports`.
    pub install_hint: Option<&'static str>,
}

pub const MMDEBSTRAP: Tool = Tool {
    program: "mmdebstrap",
    package: "mmdebstrap",
    version_args: Some(&["--version"]),
    install_hint: None,
};
pub const MKE2FS: Tool = Tool {
    program: "mke2fs",
    package: "e2fsprogs",
    version_args: Some(&["-V"]),
    install_hint: Some("e2fsprogs 1.47.1 or newer: on Debian 12 from bookworm-backports"),
};
pub const MKFS_VFAT: Tool = Tool {
    program: "mkfs.vfat",
    package: "dosfstools",
    version_args: Some(&["--help"]),
    install_hint: None,
};
pub const MCOPY: Tool = Tool {
    program: "mcopy",
    package: "mtools",
    version_args: Some(&["--version"]),
    install_hint: None,
};
pub const QEMU_IMG: Tool = Tool {
    program: "qemu-img",
    package: "qemu-utils",
    version_args: Some(&["--version"]),
    install_hint: None,
};
/// `base "image"`: libguestfs reads the disk in its own small VM (its appliance is made from
/// the host's kernel and packages).
pub const GUESTFISH: Tool = Tool {
    program: "guestfish",
    package: "libguestfs-tools",
    version_args: Some(&["--version"]),
    install_hint: None,
};
/// The SBOM of a tree that has an RPM database reads it with the host's rpm
/// ([`crate::distro::rpmdb`]); its version is in no key (the output is the headers' tags).
pub const RPM: Tool = Tool {
    program: "rpm",
    package: "rpm",
    version_args: Some(&["--version"]),
    install_hint: None,
};
/// The sandbox of every step that runs a command in the image ([`crate::steps::chroot`]).
pub const BWRAP: Tool = Tool {
    program: "bwrap",
    package: "bubblewrap",
    version_args: None,
    install_hint: None,
};
pub const QEMU_SYSTEM: Tool = Tool {
    program: "qemu-system-x86_64",
    package: "qemu-system-x86",
    version_args: None,
    install_hint: None,
};

/// `imgspec boot` of an arm64 image.
pub const QEMU_SYSTEM_AARCH64: Tool = Tool {
    program: "qemu-system-aarch64",
    package: "qemu-system-arm",
    version_args: None,
    install_hint: Some("on Debian 12 from bookworm-backports, like qemu-system-x86"),
};

/// Finds `program` on PATH (and in the sbin directories, which a non-root PATH may lack).
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(program))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The first line that mentions a version number in a program's `--version`-style output.
fn version_line(text: &str) -> Option<String> {
    text.lines()
        .find(|l| l.chars().any(|c| c.is_ascii_digit()) && l.contains('.'))
        .map(|l| l.trim().to_string())
}

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("host tool `{program}` is missing")]
    Missing { program: String, package: String },
    #[error("could not read the version of `{program}`")]
    Version {
        program: String,
        #[source]
        source: std::io::Error,
    },
}

/// Looks tools up and reads their versions once per process; versions are also remembered in a
/// small file keyed by the program's path, size and mtime, so that a no-op build does not start
/// a Perl interpreter to ask mmdebstrap its version.
pub struct ToolBox {
    memo: Mutex<BTreeMap<&'static str, String>>,
    /// `path|size|mtime` → version, persisted at `file`.
    disk: Mutex<BTreeMap<String, String>>,
    file: Option<PathBuf>,
}

impl ToolBox {
    pub fn new(cache_file: Option<PathBuf>) -> Self {
        let disk = cache_file
            .as_deref()
            .and_then(|f| std::fs::read(f).ok())
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        ToolBox {
            memo: Mutex::default(),
            disk: Mutex::new(disk),
            file: cache_file,
        }
    }

    /// The tool's version line, or an error naming the package when it is missing.
    pub fn version(&self, tool: &Tool) -> Result<String, ToolError> {
        if let Some(v) = self.memo.lock().unwrap().get(tool.program) {
            return Ok(v.clone());
        }
        let path = which(tool.program).ok_or_else(|| ToolError::Missing {
            program: tool.program.into(),
            package: tool.package.into(),
        })?;
        let Some(args) = tool.version_args else {
            return Ok(String::new());
        };
        let meta = path.metadata().map_err(|source| ToolError::Version {
            program: tool.program.into(),
            source,
        })?;
        let id = {
            use std::os::unix::fs::MetadataExt;
            format!("{}|{}|{}", path.display(), meta.size(), meta.mtime())
        };
        let known = self.disk.lock().unwrap().get(&id).cloned();
        let version = match known {
            Some(v) => v,
            None => {
                // In the environment every program gets (`HostRunner`): the caller's locale
                // cannot translate the version line that goes into keys and the manifest.
                let probe = crate::runner::Cmd::new(path.as_os_str());
                let out = Command::new(&path)
                    .args(args)
                    .env_clear()
                    .envs(crate::runner::program_env(&probe, |k| std::env::var_os(k)))
                    .output()
                    .map_err(|source| ToolError::Version {
                        program: tool.program.into(),
                        source,
                    })?;
                let text = format!(
                    "{}\n{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                let v = version_line(&text).unwrap_or_else(|| "unknown".into());
                self.remember(id, &v);
                v
            }
        };
        self.memo
            .lock()
            .unwrap()
            .insert(tool.program, version.clone());
        Ok(version)
    }

    fn remember(&self, id: String, version: &str) {
        let mut disk = self.disk.lock().unwrap();
        disk.insert(id, version.to_string());
        if let Some(f) = &self.file {
            // Best effort: a lost write only costs asking the tool again next time.
            if let Ok(bytes) = serde_json::to_vec_pretty(&*disk) {
                let tmp = f.with_extension("tmp");
                if std::fs::write(&tmp, bytes).is_ok() {
                    let _ = std::fs::rename(&tmp, f);
                }
            }
        }
    }
}

/// The exact install line for the missing tools.
pub fn install_line(missing: &[Tool]) -> String {
    let mut pkgs: Vec<&str> = missing.iter().map(|t| t.package).collect();
    pkgs.sort_unstable();
    pkgs.dedup();
    format!("apt-get install {}", pkgs.join(" "))
}

/// The tools above, for the package a missing program comes from.
const STEP_TOOLS: &[Tool] = &[
    MMDEBSTRAP,
    MKE2FS,
    MKFS_VFAT,
    MCOPY,
    QEMU_IMG,
    GUESTFISH,
    RPM,
    BWRAP,
    QEMU_SYSTEM,
    QEMU_SYSTEM_AARCH64,
    crate::foreign::QEMU_AARCH64,
];

/// What the tests use from the host beyond the steps' own tools: a program on PATH or a file,
/// and the Debian package that provides it. `scripts/install-deps` installs every package named
/// here and in the step tools (a unit test reads the script to check).
#[derive(Clone, Copy, Debug)]
pub struct HostDep {
    /// A program name (looked up like [`which`]) or an absolute path of a file.
    pub need: &'static str,
    pub package: &'static str,
}

impl HostDep {
    pub const fn new(need: &'static str, package: &'static str) -> Self {
        HostDep { need, package }
    }
    pub fn present(&self) -> bool {
        if self.need.starts_with('/') {
            Path::new(self.need).exists()
        } else {
            which(self.need).is_some()
        }
    }
}

/// The host dependencies of the test suite.
pub const TEST_DEPS: &[HostDep] = &[
    HostDep::new("grub-mkimage", "grub-common"),
    HostDep::new("/usr/lib/grub/i386-pc/moddep.lst", "grub-pc-bin"),
    HostDep::new("/usr/lib/grub/x86_64-efi/moddep.lst", "grub-efi-amd64-bin"),
    HostDep::new("qemu-system-x86_64", "qemu-system-x86"),
    HostDep::new("/usr/share/OVMF/OVMF_CODE_4M.fd", "ovmf"),
    // Secure Boot enforced, Microsoft's keys enrolled (the same package).
    HostDep::new("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd", "ovmf"),
    HostDep::new("/usr/share/OVMF/OVMF_VARS_4M.ms.fd", "ovmf"),
    // arm64 images: the emulator, and the arm64 VM with its firmware.
    HostDep::new("qemu-aarch64-static", "qemu-user-static"),
    HostDep::new("qemu-system-aarch64", "qemu-system-arm"),
    HostDep::new("/usr/share/AAVMF/AAVMF_CODE.fd", "qemu-efi-aarch64"),
    // `base "image"`: libguestfs, the kernel its appliance boots, and xfs in the appliance.
    HostDep::new("guestfish", "libguestfs-tools"),
    HostDep::new("/usr/share/doc/linux-image-amd64", "linux-image-amd64"),
    HostDep::new(
        "/usr/lib/x86_64-linux-gnu/guestfs/supermin.d/packages-xfs",
        "libguestfs-xfs",
    ),
    // The import test builds an RPM and installs it into the tree it makes a disk of.
    HostDep::new("rpmbuild", "rpm"),
    // ... and makes an EL 8-style Berkeley DB rpmdb of it with Berkeley DB's own db_load.
    HostDep::new("db5.3_load", "db5.3-util"),
    // ... and makes the LUKS volume of an encrypted install the import must refuse.
    HostDep::new("cryptsetup", "cryptsetup-bin"),
    HostDep::new("/usr/sbin/nginx", "nginx"),
    // `packages` with dnf (tests/cli/dnf.rs): the repository of the RPMs it builds with rpmbuild.
    HostDep::new("createrepo_c", "createrepo-c"),
    HostDep::new("sfdisk", "fdisk"),
    HostDep::new("sgdisk", "gdisk"),
    HostDep::new("e2fsck", "e2fsprogs"),
    HostDep::new("fsck.vfat", "dosfstools"),
    HostDep::new("mdir", "mtools"),
    HostDep::new("dot", "graphviz"),
    HostDep::new("groff", "groff-base"),
    HostDep::new("faketime", "faketime"),
    // Ironic's format inspector, from PyPI into the venv install-deps makes.
    HostDep::new("/opt/imgspec-oslo/bin/python", "oslo.utils"),
    // The S3 tests' object store, built from crates.io into ~/.cargo/bin.
    HostDep::new("garage", "garage"),
];

/// The Debian package of a host program the steps or the tests run, when it is one of ours.
pub fn package_of(program: &str) -> Option<&'static str> {
    let name = Path::new(program).file_name()?.to_str()?;
    STEP_TOOLS
        .iter()
        .find(|t| t.program == name)
        .map(|t| t.package)
        .or_else(|| {
            TEST_DEPS
                .iter()
                .find(|d| Path::new(d.need).file_name().and_then(|f| f.to_str()) == Some(name))
                .map(|d| d.package)
        })
}

/// For tests: whether every dependency in `deps` is on this host. A missing one fails the test
/// under CI (`CI` set and not `false`), naming its package: a green run means the test ran.
/// Elsewhere the test says what is missing and is skipped (the caller returns).
/// `packages` are names of [`TEST_DEPS`] entries.
#[doc(hidden)]
#[track_caller]
pub fn test_requires(packages: &[&str]) -> bool {
    // Every entry of each package (ovmf has three files).
    let deps: Vec<&HostDep> = packages
        .iter()
        .flat_map(|p| {
            let of: Vec<&HostDep> = TEST_DEPS.iter().filter(|d| d.package == *p).collect();
            assert!(!of.is_empty(), "`{p}` is not in TEST_DEPS");
            of
        })
        .collect();
    let missing: Vec<&HostDep> = deps.into_iter().filter(|d| !d.present()).collect();
    if missing.is_empty() {
        return true;
    }
    let what = missing
        .iter()
        .map(|d| format!("`{}` (Debian package `{}`)", d.need, d.package))
        .collect::<Vec<_>>()
        .join(", ");
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false");
    if ci {
        panic!("missing host dependency: {what}; scripts/install-deps must install it");
    }
    eprintln!("SKIPPED (not under CI): missing host dependency {what}; run scripts/install-deps");
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_line_picks_the_numbered_line() {
        assert_eq!(
            version_line("mke2fs 1.47.2 (1-Jan-2025)\n\tUsing EXT2FS Library version 1.47.2\n"),
            Some("mke2fs 1.47.2 (1-Jan-2025)".into())
        );
        assert_eq!(version_line("no version here"), None);
    }

    #[test]
    fn a_missing_program_names_its_package() {
        assert_eq!(package_of("mkfs.vfat"), Some("dosfstools"));
        assert_eq!(package_of("/usr/bin/sgdisk"), Some("gdisk"));
        assert_eq!(package_of("nginx"), Some("nginx"));
        assert_eq!(package_of("rpm"), Some("rpm"));
        assert_eq!(package_of("no-such-tool"), None);
    }

    /// Every package a step or a test needs is installed by `scripts/install-deps` (what a
    /// fresh machine has), apart from Debian's essential packages, which every machine has.
    #[test]
    fn install_deps_installs_every_package_the_tools_and_tests_use() {
        const ESSENTIAL: &[&str] = &["coreutils", "util-linux"];
        let script = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install-deps"),
        )
        .unwrap();
        // The words of the script outside comments.
        let words: std::collections::BTreeSet<&str> = script
            .lines()
            .map(|l| l.split('#').next().unwrap_or(""))
            .flat_map(|l| l.split(|c: char| c.is_whitespace() || c == '"' || c == '\''))
            .collect();
        let packages = STEP_TOOLS
            .iter()
            .map(|t| t.package)
            .chain(TEST_DEPS.iter().map(|d| d.package));
        for p in packages {
            assert!(
                ESSENTIAL.contains(&p) || words.contains(p),
                "scripts/install-deps does not install `{p}`"
            );
        }
    }

    #[test]
    fn install_line_dedups_packages() {
        assert_eq!(
            install_line(&[MKFS_VFAT, MCOPY, MKFS_VFAT]),
            "apt-get install dosfstools mtools"
        );
    }
}
