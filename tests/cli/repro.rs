//! Reproducibility across environments: the default spec built twice from two empty caches,
//! the second time under another host name (`unshare --uts`), umask, `TMPDIR`, working
//! directory and spec folder, gives the same bytes in every output file.
//! Minutes, network and root: ignored by plain `cargo test`, run by `--include-ignored` (CI).

use std::process::Command;

use crate::common::{sha256, Workspace};

fn copy_specs(w: &Workspace, to: &str) {
    std::fs::create_dir_all(w.path(to)).unwrap();
    let status = Command::new("cp")
        .args(["-r", concat!(env!("CARGO_MANIFEST_DIR"), "/specs")])
        .arg(w.path(to))
        .status()
        .unwrap();
    assert!(status.success());
}

/// Every file of `dir` (sorted) with its SHA-256.
fn files(dir: &std::path::Path) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                sha256(&p),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
#[ignore = "builds a real Debian image twice: minutes, root and the host's apt mirror"]
fn the_default_spec_gives_the_same_bytes_in_another_environment() {
    let w = Workspace::new();
    copy_specs(&w, "a");
    copy_specs(&w, "somewhere/else/entirely");
    for d in ["tmp-b", "cwd-b"] {
        std::fs::create_dir_all(w.path(d)).unwrap();
    }

    // A: plain, from the workspace.
    let a = w.run_with_cache(
        "cache-a",
        &["build", "a/specs/debian-efi.kdl", "--out-dir", "out-a"],
    );
    assert_eq!(a.code, 0, "{}", a.stderr);

    // B: another host name, umask, TMPDIR, working directory and spec folder.
    let script = format!(
        "hostname imgspec-elsewhere && umask 077 && cd '{cwd}' && \
         TMPDIR='{tmp}' exec '{bin}' build '{spec}' --out-dir '{out}'",
        cwd = w.path("cwd-b").display(),
        tmp = w.path("tmp-b").display(),
        bin = env!("CARGO_BIN_EXE_imgspec"),
        spec = w
            .path("somewhere/else/entirely/specs/debian-efi.kdl")
            .display(),
        out = w.path("out-b").display(),
    );
    let b = Command::new("unshare")
        .args(["--uts", "--", "sh", "-c", &script])
        .env("IMGSPEC_CACHE_DIR", w.path("cache-b"))
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&b.stderr);
    assert!(b.status.success(), "{stderr}");

    let fa = files(&w.path("out-a/debian-efi"));
    let fb = files(&w.path("out-b/debian-efi"));
    // The table, for people: on stderr, and in the target's tmp folder (`.ci/run` prints it).
    let mut table = String::from(
        "per output file, build A vs build B (other host name, umask, TMPDIR, cwd, folder):\n",
    );
    for ((name, sa), (_, sb)) in fa.iter().zip(&fb) {
        table.push_str(&format!(
            "  {name:<28} {sa}  {}\n",
            if sa == sb { "identical" } else { "DIFFERENT" }
        ));
    }
    eprint!("{table}");
    let _ = std::fs::write(
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("repro-sums.txt"),
        &table,
    );
    let names = |v: &[(String, String)]| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(&fa), names(&fb));
    for want in [
        "debian-efi.qcow2",
        "debian-efi.raw",
        "debian-efi.spdx.json",
        "debian-efi.manifest.json",
        "SHA256SUMS",
    ] {
        assert!(names(&fa).iter().any(|n| n == want), "{want}: {fa:?}");
    }
    assert_eq!(fa, fb, "the two builds differ");

    // The SBOM lists the image's real packages.
    let sbom: serde_json::Value = serde_json::from_slice(
        &std::fs::read(w.path("out-a/debian-efi/debian-efi.spdx.json")).unwrap(),
    )
    .unwrap();
    let packages = sbom["packages"].as_array().unwrap();
    for p in [
        "linux-image-amd64",
        "systemd",
        "grub-efi-amd64-bin",
        "openssh-server",
    ] {
        assert!(
            packages.iter().any(|x| x["name"] == p),
            "{p} missing from the SBOM"
        );
    }
    assert!(packages.len() > 100, "{} packages", packages.len());
    // The manifest names the spec and the file it imports, by name only.
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(w.path("out-a/debian-efi/debian-efi.manifest.json")).unwrap(),
    )
    .unwrap();
    let files: Vec<&str> = manifest["spec"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["file"].as_str().unwrap())
        .collect();
    assert_eq!(files, ["debian-efi.kdl", "debian-common.kdl"], "{manifest}");
}
