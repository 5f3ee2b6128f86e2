//! qcow2 images converted by `qemu-img` from a raw disk or filesystem file.
//!
//! [`convert`] runs `qemu-img convert -f raw -O qcow2` with every creation option pinned
//! ([`CREATE_OPTIONS`]: compat 1.1, 64 KiB clusters, 16-bit refcounts, no lazy refcounts, no
//! preallocation, no extended L2, zlib or zstd compression), so a qemu whose defaults move does not
//! silently change the bytes, and `-S 4k` pins the zero-detection granularity that keeps the
//! image sparse. It never passes `-W` (out-of-order writes): with in-order writes the cluster
//! allocation, and so the file, is the same on every run, with or without `-c` (measured with
//! qemu-img 10.0.2: two conversions of a 64 MiB raw give identical bytes, compressed or not).
//! A qcow2 holds no timestamps or random ids. zstd clusters (`compression_type=zstd`, an
//! incompatible-feature bit in the header) are read by QEMU 5.1 and newer only.

use std::path::Path;

use super::{parse_version, FormatError};
use crate::runner::{Cmd, Runner};

/// The `-o` creation options given to every conversion (zstd ones end in `zstd` instead).
pub const CREATE_OPTIONS: &str = "compat=1.1,cluster_size=65536,refcount_bits=16,\
                                  lazy_refcounts=off,preallocation=off,extended_l2=off,\
                                  compression_type=zlib";

/// How the clusters of a qcow2 are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    /// `-c` with `compression_type=zlib`: what every qemu reads.
    Zlib,
    /// `-c` with `compression_type=zstd`: QEMU 5.1 or newer.
    Zstd,
}

/// The `qemu-img convert` command line.
fn convert_cmd(raw: &Path, out: &Path, compression: Compression) -> Cmd {
    let mut cmd = Cmd::new("qemu-img").args(["convert", "-q", "-f", "raw", "-O", "qcow2"]);
    if compression != Compression::None {
        cmd = cmd.arg("-c");
    }
    let options = match compression {
        Compression::Zstd => {
            CREATE_OPTIONS.replace("compression_type=zlib", "compression_type=zstd")
        }
        _ => CREATE_OPTIONS.to_string(),
    };
    cmd.arg("-o")
        .arg(options)
        .args(["-S", "4k"])
        .arg(raw)
        .arg(out)
}

/// Converts the raw image `raw` into the qcow2 `out` (replaced if it exists), its clusters
/// stored as `compression` says.
pub fn convert(
    runner: &dyn Runner,
    log: &Path,
    raw: &Path,
    out: &Path,
    compression: Compression,
) -> Result<(), FormatError> {
    if !raw.is_file() {
        return Err(FormatError::BadSource {
            path: raw.to_path_buf(),
        });
    }
    runner
        .run(&convert_cmd(raw, out, compression), log)
        .map_err(|source| {
            let _ = std::fs::remove_file(out);
            FormatError::Tool {
                tool: "qemu-img",
                out: out.to_path_buf(),
                source,
            }
        })
}

/// The host's qemu-img version, e.g. `10.0.2`.
pub fn qemu_img_version(runner: &dyn Runner, log: &Path) -> Result<String, FormatError> {
    let out = runner
        .output(&Cmd::new("qemu-img").arg("--version"), log)
        .map_err(|source| FormatError::Version {
            tool: "qemu-img",
            source,
        })?;
    let text = String::from_utf8_lossy(&out);
    let first = text.lines().next().unwrap_or("");
    parse_version(first)
        .map(|v| v.iter().map(u64::to_string).collect::<Vec<_>>().join("."))
        .ok_or_else(|| FormatError::VersionParse {
            tool: "qemu-img",
            output: text.trim().to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::{HostRunner, RecordingRunner};
    use std::os::unix::fs::FileExt;

    #[test]
    fn command_lines_are_pinned() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("disk.raw");
        std::fs::write(&raw, [0u8; 512]).unwrap();
        let out = dir.path().join("disk.qcow2");
        let runner = RecordingRunner::default();
        let log = dir.path().join("log");
        convert(&runner, &log, &raw, &out, Compression::None).unwrap();
        convert(&runner, &log, &raw, &out, Compression::Zlib).unwrap();
        convert(&runner, &log, &raw, &out, Compression::Zstd).unwrap();
        let (r, o) = (raw.display(), out.display());
        let opts = "compat=1.1,cluster_size=65536,refcount_bits=16,lazy_refcounts=off,\
                    preallocation=off,extended_l2=off,compression_type=zlib";
        assert_eq!(
            runner.lines(),
            [
                format!("qemu-img convert -q -f raw -O qcow2 -o {opts} -S 4k {r} {o}"),
                format!("qemu-img convert -q -f raw -O qcow2 -c -o {opts} -S 4k {r} {o}"),
                format!(
                    "qemu-img convert -q -f raw -O qcow2 -c -o {} -S 4k {r} {o}",
                    opts.replace("=zlib", "=zstd")
                ),
            ]
        );
        assert!(matches!(
            convert(
                &runner,
                &log,
                &dir.path().join("missing"),
                &out,
                Compression::None
            ),
            Err(FormatError::BadSource { .. })
        ));
    }

    #[test]
    fn version_is_parsed() {
        let dir = tempfile::tempdir().unwrap();
        let runner = RecordingRunner {
            stdout: b"qemu-img version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)\n\
                      Copyright (c) 2003-2025 Fabrice Bellard and the QEMU Project developers\n"
                .to_vec(),
            ..Default::default()
        };
        let v = qemu_img_version(&runner, &dir.path().join("log")).unwrap();
        assert_eq!(v, "10.0.2");
        assert_eq!(runner.lines(), ["qemu-img --version"]);
    }

    #[test]
    fn host_conversion_is_reproducible_and_identical_to_raw() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let raw = dir.path().join("disk.raw");
        let f = std::fs::File::create(&raw).unwrap();
        f.set_len(16 << 20).unwrap();
        f.write_all_at(&[0xA5; 70_000], 1 << 20).unwrap();
        let text: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
        f.write_all_at(&text, 9 << 20).unwrap();
        drop(f);
        qemu_img_version(&HostRunner, &log).unwrap();
        for compress in [Compression::None, Compression::Zlib, Compression::Zstd] {
            let (a, b) = (dir.path().join("a.qcow2"), dir.path().join("b.qcow2"));
            convert(&HostRunner, &log, &raw, &a, compress).unwrap();
            convert(&HostRunner, &log, &raw, &b, compress).unwrap();
            assert!(
                std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(),
                "{compress:?}"
            );
            let cmp = HostRunner
                .output(
                    &Cmd::new("qemu-img")
                        .args(["compare", "-f", "raw", "-F", "qcow2"])
                        .arg(&raw)
                        .arg(&a),
                    &log,
                )
                .expect("qemu-img compare");
            assert!(
                String::from_utf8_lossy(&cmp).contains("Images are identical"),
                "{compress:?}"
            );
            let size = std::fs::metadata(&a).unwrap().len();
            assert!(size < 4 << 20, "{size} bytes: not sparse");
        }
    }
}
