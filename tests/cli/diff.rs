//! `imgspec diff`: two real builds of one image, packages from their SBOMs, files from the
//! cache.

use crate::common::Workspace;

const SPEC: &str = r#"
image "d" {
    base "tar" path="rootfs.tar"
    files "overlay/"
    output "tar"
}
"#;

fn status(pkgs: &[(&str, &str)]) -> String {
    pkgs.iter()
        .map(|(name, version)| {
            format!(
                "Package: {name}\nStatus: install ok installed\nPriority: optional\n\
                 Architecture: amd64\nVersion: {version}\nDescription: {name}\n\n"
            )
        })
        .collect()
}

/// Builds image `d` with these packages and overlay files into `out`.
fn build(w: &Workspace, out: &str, pkgs: &[(&str, &str)], files: &[(&str, &str)]) {
    let st = status(pkgs);
    let _ = std::fs::remove_dir_all(w.path("overlay"));
    for (p, c) in files {
        w.write(&format!("overlay/{p}"), c);
    }
    let _ = std::fs::remove_file(w.path("rootfs.tar"));
    w.rootfs_tar_with("rootfs.tar", &[], &[("var/lib/dpkg/status", &st, 0o644)]);
    w.run(&["build", "d.kdl", "--out-dir", out]).ok();
}

#[test]
fn diff_names_packages_and_files_that_changed() {
    let w = Workspace::new();
    w.write("d.kdl", SPEC);
    build(
        &w,
        "old",
        &[("alpha", "1.0"), ("beta", "2.0")],
        &[("etc/motd", "one\n"), ("etc/gone", "x\n")],
    );
    build(
        &w,
        "new",
        &[("alpha", "1.1"), ("gamma", "3.0")],
        &[("etc/motd", "one, two\n"), ("etc/new", "hello\n")],
    );
    let r = w.run(&["diff", "old/d", "new/d"]).ok();
    let out = r.stdout;
    for want in [
        "packages: 1 added, 1 removed, 1 changed",
        "  + gamma:amd64 3.0",
        "  - beta:amd64 2.0",
        "  ~ alpha:amd64 1.0 → 1.1",
        "  + /etc/new (6 B)",
        "  - /etc/gone (2 B)",
        "  ~ /etc/motd (content: 4 B → 9 B)",
    ] {
        assert!(out.contains(want), "no `{want}` in\n{out}");
    }
    // The dpkg status file itself changed too; nothing else did.
    assert!(out.contains("/var/lib/dpkg/status (content"), "{out}");
    assert!(
        out.contains("files: 1 added, 1 removed, 2 changed"),
        "{out}"
    );

    // The same from the SBOM files alone (the manifests are found beside them), and as JSON.
    let j = w
        .run(&["diff", "--json", "old/d/d.spdx.json", "new/d/d.spdx.json"])
        .ok()
        .stdout;
    let v: serde_json::Value = serde_json::from_str(&j).unwrap();
    assert_eq!(
        v["packages"]["changed"][0],
        serde_json::json!(["alpha:amd64", "1.0", "1.1"])
    );
    assert_eq!(v["files"].as_array().unwrap().len(), 4, "{j}");

    // Without the cache, packages only, and it says why.
    let r = w
        .run_with_cache("other-cache", &["diff", "old/d", "new/d"])
        .ok();
    assert!(r.stdout.contains("packages: 1 added"), "{}", r.stdout);
    assert!(r.stdout.contains("files: not compared"), "{}", r.stdout);

    // Bad input: exit 2 with a help line.
    let r = w.run(&["diff", "old/d", "nowhere"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("`nowhere` does not exist"),
        "{}",
        r.stderr
    );
    let r = w.run(&["diff", "old/d", "d.kdl"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
}
