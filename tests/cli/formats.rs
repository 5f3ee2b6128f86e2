//! Whole-disk output formats, built from a tiny disk with no network and checked with the tools
//! that will read them: `qemu-img check`/`info`/`compare` and Ironic's format inspector
//! (`oslo.utils`' `imageutils.format_inspector`, the code Ironic runs on every image).

use std::path::PathBuf;
use std::process::Command;

use crate::common::Workspace;

const SPEC: &str = r#"
template "small" {
    base "tar" path="rootfs.tar"
    files "overlay/"
    disk table="gpt" size="64MiB" {
        partition "root" type="root" format="ext4" mount="/"
    }
}
image "fmt" extends="small" {
    output "raw" "qcow2" "vmdk" "vdi" "vhdx" "vhd"
}
image "fmtz" extends="small" {
    output "raw" "qcow2" compress="zstd"
}
image "fmtc" extends="small" {
    output "raw" "qcow2" compress=#true
}
"#;

/// The Python that has oslo.utils (scripts/install-deps makes the venv).
fn oslo_python() -> PathBuf {
    let p = std::env::var_os("IMGSPEC_OSLO_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/imgspec-oslo/bin/python"));
    assert!(
        p.exists(),
        "no `{}`: run scripts/install-deps (a venv with oslo.utils from PyPI), or set \
         IMGSPEC_OSLO_PYTHON to a python that has it",
        p.display()
    );
    p
}

/// What Ironic's format inspector says of `path`: the format it detected, the virtual size,
/// and `safe` or the reason the safety check failed.
fn inspect(path: &std::path::Path) -> (String, u64, String) {
    let script = r#"
import sys
from oslo_utils.imageutils import format_inspector as fi
i = fi.detect_file_format(sys.argv[1])
try:
    i.safety_check()
    verdict = "safe"
except fi.SafetyCheckFailed as e:
    verdict = "unsafe: %s" % e
print(i.NAME, i.virtual_size, verdict)
"#;
    let out = Command::new(oslo_python())
        .args(["-c", script])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "format inspector: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut w = text.trim().splitn(3, ' ');
    (
        w.next().unwrap().to_string(),
        w.next().unwrap().parse().unwrap(),
        w.next().unwrap().to_string(),
    )
}

fn qemu_img(args: &[&str], file: &std::path::Path) -> (bool, String) {
    let out = Command::new("qemu-img")
        .args(args)
        .arg(file)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn every_disk_format_is_read_back_by_qemu_img_and_passes_ironics_inspector() {
    let w = Workspace::new();
    w.rootfs_tar("rootfs.tar");
    w.write("overlay/etc/motd", "formats\n");
    w.write("f.kdl", SPEC);
    w.run(&["build", "f.kdl"]).ok();
    let cases = [
        ("out/fmt/fmt.qcow2", "qcow2", "qcow2"),
        ("out/fmt/fmt.vmdk", "vmdk", "vmdk"),
        ("out/fmt/fmt.vdi", "vdi", "vdi"),
        ("out/fmt/fmt.vhdx", "vhdx", "vhdx"),
        ("out/fmt/fmt.vhd", "vpc", "vhd"),
        ("out/fmtz/fmtz.qcow2", "qcow2", "qcow2"),
        ("out/fmtc/fmtc.qcow2", "qcow2", "qcow2"),
    ];
    for (file, qemu, ironic) in cases {
        let path = w.path(file);
        // Each image's own raw disk (the disk identifiers are derived from the image's name).
        let raw = path.with_extension("raw");
        if qemu != "vpc" {
            let (ok, text) = qemu_img(&["check", "-f", qemu], &path);
            assert!(ok && text.contains("No errors"), "{file}: {text}");
        }
        let (ok, info) = qemu_img(&["info", "--output=json", "-f", qemu], &path);
        assert!(ok, "{file}: {info}");
        let info: serde_json::Value = serde_json::from_str(&info).unwrap();
        assert_eq!(info["virtual-size"], 64 << 20, "{file}: {info}");
        let cmp = Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", qemu])
            .arg(&raw)
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&cmp.stdout).contains("Images are identical"),
            "{file}: {}",
            String::from_utf8_lossy(&cmp.stdout)
        );
        let (name, size, verdict) = inspect(&path);
        assert_eq!(
            (name.as_str(), verdict.as_str()),
            (ironic, "safe"),
            "{file}"
        );
        assert_eq!(size, 64 << 20, "{file}");
    }
    // The raw disk is what Ironic calls raw: its inspector sees the GPT and finds it safe.
    let (name, _, verdict) = inspect(&w.path("out/fmt/fmt.raw"));
    assert_eq!((name.as_str(), verdict.as_str()), ("gpt", "safe"));
    // zstd and zlib clusters: qemu-img says which.
    for (file, kind) in [
        ("out/fmtz/fmtz.qcow2", "zstd"),
        ("out/fmtc/fmtc.qcow2", "zlib"),
    ] {
        let (_, info) = qemu_img(&["info", "--output=json"], &w.path(file));
        let info: serde_json::Value = serde_json::from_str(&info).unwrap();
        assert_eq!(
            info["format-specific"]["data"]["compression-type"], kind,
            "{file}: {info}"
        );
    }
    let (_, info) = qemu_img(&["info", "--output=json"], &w.path("out/fmt/fmt.vmdk"));
    assert!(info.contains("monolithicSparse"), "{info}");
}

#[test]
fn two_empty_caches_give_the_same_bytes_in_every_format() {
    let w = Workspace::new();
    w.rootfs_tar("rootfs.tar");
    w.write("overlay/etc/motd", "formats\n");
    w.write("f.kdl", SPEC);
    w.run_with_cache("cache-a", &["build", "f.kdl", "--out-dir", "out-a"])
        .ok();
    w.run_with_cache("cache-b", &["build", "f.kdl", "--out-dir", "out-b"])
        .ok();
    for img in ["fmt", "fmtz", "fmtc"] {
        let a = std::fs::read_to_string(w.path(&format!("out-a/{img}/SHA256SUMS"))).unwrap();
        let b = std::fs::read_to_string(w.path(&format!("out-b/{img}/SHA256SUMS"))).unwrap();
        assert_eq!(a, b, "{img}");
    }
    let sums = std::fs::read_to_string(w.path("out-a/fmt/SHA256SUMS")).unwrap();
    for f in ["fmt.vmdk", "fmt.vdi", "fmt.vhdx", "fmt.vhd"] {
        assert!(sums.contains(f), "{sums}");
    }
}
