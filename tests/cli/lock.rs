//! Lock files: `imgspec lock` on a real Debian spec (mmdebstrap from the host's mirror), a
//! build from the lock into an empty cache installs exactly the locked versions, a version that
//! exists nowhere stops the build before any step, and the locked build gives the same bytes
//! again from a cache that has the `.deb` files with no network at all (the mirror "moved on").
//! The real-image test is ignored by plain `cargo test` (minutes, root, the host's mirror); the
//! error paths at the end need neither.

use std::collections::BTreeSet;
use std::process::Command;

use crate::common::{sha256, Run, Workspace};

const SPEC: &str = r#"
image "locktest" {
    base "debian" suite="bookworm" variant="minbase"
    packages "extra" less
    output "tar"
}
"#;

/// (name, version, architecture) of every `deb` line of a lock file.
fn locked(text: &str) -> BTreeSet<(String, String, String)> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim().strip_prefix("deb \"")?;
            let (name, rest) = l.split_once('"')?;
            let rest = rest.trim_start().strip_prefix('"')?;
            let (version, rest) = rest.split_once('"')?;
            let arch = rest.split("arch=\"").nth(1)?.split('"').next()?;
            Some((name.into(), version.into(), arch.into()))
        })
        .collect()
}

/// (name, version, architecture) of every package installed in the image tarball.
fn installed(w: &Workspace, tar: &str) -> BTreeSet<(String, String, String)> {
    let dir = w.path(&format!("{tar}.d"));
    std::fs::create_dir_all(&dir).unwrap();
    let st = Command::new("tar")
        .arg("-xf")
        .arg(w.path(tar))
        .arg("-C")
        .arg(&dir)
        .status()
        .unwrap();
    assert!(st.success());
    let out = Command::new("dpkg-query")
        .arg(format!("--admindir={}/var/lib/dpkg", dir.display()))
        .args(["-W", "-f", "${Package} ${Version} ${Architecture}\\n"])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut it = l.split(' ');
            Some((it.next()?.into(), it.next()?.into(), it.next()?.into()))
        })
        .collect()
}

#[test]
#[ignore = "builds a real Debian root filesystem: minutes, root and the host's apt mirror"]
fn locked_builds_install_the_lock_and_need_no_mirror_once_cached() {
    let w = Workspace::new();
    w.write("spec.kdl", SPEC);

    // Resolve: a lock beside the spec, sorted, with the package set's package in it.
    let r = w.run_with_cache("cache-lock", &["lock", "spec.kdl"]).ok();
    eprintln!("{}", r.stderr);
    let text = std::fs::read_to_string(w.path("spec.kdl.lock")).unwrap();
    let lock = locked(&text);
    assert!(lock.len() > 50, "{text}");
    assert!(lock.iter().any(|(n, _, _)| n == "less"), "{text}");
    assert!(text.contains("set \"base\" images=\"locktest\""), "{text}");
    assert!(
        text.contains("set \"packages:extra\" images=\"locktest\""),
        "{text}"
    );
    let names: Vec<&str> = text
        .split("set \"packages:extra\"")
        .next()
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("deb \""))
        .collect();
    assert!(names.windows(2).all(|p| p[0] <= p[1]), "sorted: {names:?}");
    // The lock's epoch: the archive's date when the packages were resolved (after bookworm's
    // release, the default epoch of a spec without one).
    let epoch: i64 = text
        .lines()
        .find_map(|l| l.strip_prefix("epoch "))
        .unwrap_or_else(|| panic!("no epoch: {text}"))
        .parse()
        .unwrap();
    assert!(epoch > 1_686_355_200, "{epoch}");
    // Again, from the cache: the same lock, at once.
    std::fs::remove_file(w.path("spec.kdl.lock")).unwrap();
    let r = w.run_with_cache("cache-lock", &["lock", "spec.kdl"]).ok();
    assert!(!r.stderr.contains("started"), "{}", r.stderr);
    assert_eq!(
        std::fs::read_to_string(w.path("spec.kdl.lock")).unwrap(),
        text
    );

    // Build from the lock into an empty cache: the files come from the mirror by their lock
    // entries, and the image has exactly the locked versions.
    let r = w.run_with_cache("cache-a", &["build", "spec.kdl"]).ok();
    eprintln!("{}", r.stderr);
    assert!(r.stderr.contains("fetching"), "{}", r.stderr);
    assert_eq!(installed(&w, "out/locktest/locktest.tar"), lock);
    let tree = w.path("out/locktest/locktest.tar.d");
    let sources = std::fs::read_to_string(tree.join("etc/apt/sources.list")).unwrap();
    assert!(sources.starts_with("deb http"), "{sources}");
    assert!(
        !sources.contains("trusted") && !sources.contains("copy:"),
        "{sources}"
    );
    assert_eq!(std::fs::read_dir(tree.join("tmp")).unwrap().count(), 0);
    let first = sha256(&w.path("out/locktest/locktest.tar"));
    // The SBOM carries the locked checksums, the manifest names the lock.
    let less_sha = text
        .lines()
        .find(|l| l.trim().starts_with("deb \"less\""))
        .and_then(|l| l.split("sha256=\"").nth(1))
        .map(|s| s[..64].to_string())
        .unwrap();
    let sbom = std::fs::read_to_string(w.path("out/locktest/locktest.spdx.json")).unwrap();
    assert!(sbom.contains(&less_sha), "{sbom}");
    let manifest = std::fs::read_to_string(w.path("out/locktest/locktest.manifest.json")).unwrap();
    assert!(manifest.contains("spec.kdl.lock"), "{manifest}");
    let m: serde_json::Value = serde_json::from_str(&manifest).unwrap();
    assert_eq!(m["epoch"], epoch, "the image takes the lock's epoch");

    // Every verb computes the keys a locked build uses: plan says all cached, and push, pull,
    // export, gc and verify find every step.
    let steps = 5; // base, packages, output, SBOM, manifest
    let plan = w
        .run_with_cache("cache-a", &["plan", "spec.kdl"])
        .ok()
        .stdout;
    assert!(!plan.contains("to build"), "{plan}");
    if let Some(n) = crate::remote::Nginx::start(false) {
        let url = n.url();
        let p = w
            .run_with_cache("cache-a", &["cache", "push", "spec.kdl", "--remote", &url])
            .ok();
        assert!(
            p.stderr.contains(&format!("pushed {steps} step results"))
                && !p.stderr.contains("not in the local"),
            "{}{}",
            p.stdout,
            p.stderr
        );
        let p = w
            .run_with_cache(
                "cache-pull",
                &["cache", "pull", "spec.kdl", "--remote", &url],
            )
            .ok();
        assert!(
            p.stderr.contains(&format!("pulled {steps} step results")),
            "{}",
            p.stdout
        );
        let b = w
            .run_with_cache(
                "cache-pull",
                &["build", "spec.kdl", "--out-dir", "out-pull"],
            )
            .ok();
        assert!(b.stderr.contains("0 steps built"), "{}", b.stderr);
        assert_eq!(sha256(&w.path("out-pull/locktest/locktest.tar")), first);
    }
    let e = w.run_with_cache(
        "cache-a",
        &["cache", "export", "spec.kdl", "-o", "locked.tar.zst"],
    );
    let e = e.ok();
    assert!(
        e.stderr.contains(&format!("exported {steps} step results")),
        "{}{}",
        e.stdout,
        e.stderr
    );
    let gc = w
        .run_with_cache("cache-a", &["cache", "gc", "spec.kdl"])
        .ok()
        .stdout;
    assert!(gc.contains("removed 0 step results"), "{gc}");
    assert!(gc.contains("removed 0 .deb files"), "{gc}");

    // A version that exists nowhere: the build stops before any step and names the package.
    let less = text
        .lines()
        .find(|l| l.trim().starts_with("deb \"less\""))
        .unwrap();
    let sha = less.split("sha256=\"").nth(1).unwrap()[..64].to_string();
    let version = less.split('"').nth(3).unwrap().to_string();
    let bad = less
        .replace(&version, "999.0-nowhere")
        .replace(&sha, &"0".repeat(64));
    std::fs::write(w.path("spec.kdl.lock"), text.replace(less, &bad)).unwrap();
    let r = w.run_with_cache("cache-a", &["--json", "build", "spec.kdl"]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("`less` 999.0-nowhere (amd64) of step `packages extra`"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("HTTP 404"), "{}", r.stderr);
    assert!(!r.stdout.contains("step-started"), "{}", r.stdout);

    // The mirror moved on (here: no network at all) but a cache has the files: the same bytes.
    std::fs::write(w.path("spec.kdl.lock"), &text).unwrap();
    std::fs::create_dir_all(w.path("cache-b")).unwrap();
    let st = Command::new("cp")
        .arg("-a")
        .arg(w.path("cache-a/debs-v1"))
        .arg(w.path("cache-b/debs-v1"))
        .status()
        .unwrap();
    assert!(st.success());
    let r: Run = Command::new("unshare")
        .arg("--net")
        .arg(env!("CARGO_BIN_EXE_imgspec"))
        .args(["build", "spec.kdl", "--out-dir", "out-offline"])
        .current_dir(w.path(""))
        .env("IMGSPEC_CACHE_DIR", w.path("cache-b"))
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
        .into();
    let r = r.ok();
    eprintln!("{}", r.stderr);
    assert!(r.stderr.contains("0 cached, 0 failed"), "{}", r.stderr);
    assert!(!r.stderr.contains("fetching"), "{}", r.stderr);
    assert_eq!(sha256(&w.path("out-offline/locktest/locktest.tar")), first);

    // `lock --update PKG` through the command line: everything is resolved again from the
    // mirror, only `less` may take a new version, the rest stays pinned, and a build with the
    // result proves apt can install it. The mirror has not moved since the lock was written
    // minutes ago: nothing changes, and the file is left as it was.
    let r = w
        .run_with_cache("cache-lock", &["lock", "spec.kdl", "--update", "less"])
        .ok();
    eprintln!("{}", r.stderr);
    assert!(
        r.stderr.contains("0 packages of the lock change"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("up to date:"), "{}", r.stderr);
    assert_eq!(
        std::fs::read_to_string(w.path("spec.kdl.lock")).unwrap(),
        text
    );
}

#[test]
fn a_broken_lock_is_refused_with_its_line() {
    let w = Workspace::new();
    w.rootfs_tar("rootfs.tar");
    w.write(
        "mini.kdl",
        "image \"mini\" {\n    base \"tar\" path=\"rootfs.tar\"\n    output \"tar\"\n}\n",
    );
    w.write(
        "mini.kdl.lock",
        "version 1\nset \"base\" images=\"mini\" request=\"x\" {\n    deb \"apt\" \"2.6.1\" arch=\"amd64\"\n}\n",
    );
    let r = w.run(&["plan", "mini.kdl"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("mini.kdl.lock:3: `deb \"apt\"` needs `sha256=`"),
        "{}",
        r.stderr
    );
    // A spec that installs no packages has nothing to lock.
    std::fs::remove_file(w.path("mini.kdl.lock")).unwrap();
    let r = w.run(&["lock", "mini.kdl"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("installs no packages"), "{}", r.stderr);
}

#[test]
fn cache_gc_by_spec_drops_debs_nothing_needs() {
    let w = Workspace::new();
    w.rootfs_tar("rootfs.tar");
    w.write(
        "mini.kdl",
        "image \"mini\" {\n    base \"tar\" path=\"rootfs.tar\"\n    output \"tar\"\n}\n",
    );
    w.run(&["build", "mini.kdl"]).ok();
    let sha = "ab".repeat(32);
    w.write(&format!("cache/debs-v1/ab/{sha}.deb"), "not needed");
    w.write(&format!("cache/debs-v1/ab/{sha}.control"), "Package: x\n");
    // (`--max-size` evicting results and leaving `.deb` files alone: claims.rs.)
    let r = w.run(&["cache", "gc", "mini.kdl"]).ok();
    assert!(r.stdout.contains("removed 1 .deb files"), "{}", r.stdout);
    assert!(!w.path(&format!("cache/debs-v1/ab/{sha}.deb")).exists());
    assert!(!w.path(&format!("cache/debs-v1/ab/{sha}.control")).exists());
}
