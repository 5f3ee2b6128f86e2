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
    /// change any result (chroot, unshare), so it is not part of keys.
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
pub const UNSHARE: Tool = Tool {
    program: "unshare",
    package: "util-linux",
    version_args: None,
    install_hint: None,
};
pub const CHROOT: Tool = Tool {
    program: "chroot",
    package: "coreutils",
    version_args: None,
    install_hint: None,
};
pub const QEMU_SYSTEM: Tool = Tool {
    program: "qemu-system-x86_64",
    package: "qemu-system-x86",
    version_args: None,
    install_hint: None,
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
    fn install_line_dedups_packages() {
        assert_eq!(
            install_line(&[MKFS_VFAT, MCOPY, MKFS_VFAT]),
            "apt-get install dosfstools mtools"
        );
    }
}
