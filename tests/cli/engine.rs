//! The engine end to end, with no network: `base "tar"`, `files`, `run`, `output "tar"`.

use crate::common::{sha256, Http, Workspace};

const SPEC: &str = r#"
image "mini" {
    base "tar" path="rootfs.tar"
    files "overlay/" dest="/"
    run "echo built > /etc/built-by-run && chmod 600 /etc/built-by-run"
    output "tar"
}
"#;

fn mini() -> Workspace {
    let w = Workspace::new();
    w.rootfs_tar("rootfs.tar");
    w.write("mini.kdl", SPEC);
    w.write("overlay/etc/motd", "hello\n");
    w.write("overlay/usr/share/doc/mini/README", "doc\n");
    w
}

fn tar_list(w: &Workspace, tar: &str) -> String {
    let out = std::process::Command::new("tar")
        .args(["-tvf"])
        .arg(w.path(tar))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn builds_a_tar_image_and_the_second_build_is_all_cached() {
    let w = mini();
    let r = w.run(&["build", "mini.kdl"]).ok();
    assert!(
        r.stderr.contains("6 steps built, 0 cached, 0 failed"),
        "{}",
        r.stderr
    );
    let listing = tar_list(&w, "out/mini/mini.tar");
    assert!(
        listing.contains("./etc/motd") || listing.contains("etc/motd"),
        "{listing}"
    );
    assert!(
        listing.contains("-rw------- 0/0") && listing.contains("etc/built-by-run"),
        "{listing}"
    );
    // Merged /usr: the overlay's usr/share lands in the real usr, not beside the link.
    assert!(listing.contains("usr/share/doc/mini/README"), "{listing}");
    let sums = std::fs::read_to_string(w.path("out/mini/SHA256SUMS")).unwrap();
    assert!(
        sums.contains(&format!(
            "{}  mini.tar\n",
            sha256(&w.path("out/mini/mini.tar"))
        )),
        "{sums}"
    );
    assert_eq!(sums.lines().count(), 3, "{sums}");

    let r = w.run(&["build", "mini.kdl"]).ok();
    assert!(
        r.stderr.contains("0 steps built, 6 cached, 0 failed"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("(unchanged)"), "{}", r.stderr);
}

#[test]
fn two_empty_caches_give_identical_bytes() {
    let w = mini();
    w.run_with_cache("cache-a", &["build", "mini.kdl", "--out-dir", "out-a"])
        .ok();
    w.run_with_cache("cache-b", &["build", "mini.kdl", "--out-dir", "out-b"])
        .ok();
    // Every output file, the SBOM and the manifest included, and SHA256SUMS listing them.
    let sums = std::fs::read_to_string(w.path("out-a/mini/SHA256SUMS")).unwrap();
    for f in ["mini.tar", "mini.spdx.json", "mini.manifest.json"] {
        assert!(sums.contains(&format!("  {f}\n")), "{sums}");
        assert_eq!(
            sha256(&w.path(&format!("out-a/mini/{f}"))),
            sha256(&w.path(&format!("out-b/mini/{f}"))),
            "{f}"
        );
    }
    assert_eq!(
        std::fs::read(w.path("out-a/mini/SHA256SUMS")).unwrap(),
        std::fs::read(w.path("out-b/mini/SHA256SUMS")).unwrap()
    );
}

#[test]
fn sbom_and_manifest_describe_the_build() {
    let w = mini();
    w.run(&["build", "mini.kdl"]).ok();
    let read = |f: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(w.path(&format!("out/mini/{f}"))).unwrap()).unwrap()
    };
    let sbom = read("mini.spdx.json");
    assert_eq!(sbom["spdxVersion"], "SPDX-2.3");
    assert_eq!(sbom["packages"][0]["name"], "mini.tar");
    assert_eq!(
        sbom["packages"][0]["checksums"][0]["checksumValue"],
        sha256(&w.path("out/mini/mini.tar"))
    );
    let m = read("mini.manifest.json");
    assert_eq!(m["image"], "mini");
    assert_eq!(m["spec"][0]["file"], "mini.kdl");
    let steps = m["steps"].as_array().unwrap();
    let names: Vec<&str> = steps.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["base", "files#1", "run#1", "output:tar", "sbom"]);
    assert!(steps.iter().all(|s| s["key"].as_str().unwrap().len() == 64));
    assert_eq!(
        m["outputs"]["mini.tar"]["sha256"],
        sha256(&w.path("out/mini/mini.tar"))
    );
    // Another spec built alongside does not change the image's manifest.
    w.write(
        "other.kdl",
        "image \"o\" {\n    base \"tar\" path=\"rootfs.tar\"\n    output \"tar\"\n}\n",
    );
    w.run(&["build", "mini.kdl", "other.kdl", "--out-dir", "out-both"])
        .ok();
    let sums = std::fs::read_to_string(w.path("out-both/o/SHA256SUMS")).unwrap();
    assert!(
        sums.contains("  o.tar\n") && sums.contains("  o.manifest.json\n"),
        "{sums}"
    );
    assert_eq!(
        sha256(&w.path("out-both/mini/mini.tar")),
        sha256(&w.path("out/mini/mini.tar"))
    );
    assert_eq!(
        std::fs::read(w.path("out-both/mini/mini.manifest.json")).unwrap(),
        std::fs::read(w.path("out/mini/mini.manifest.json")).unwrap()
    );
    // No build path in either document.
    let text = std::fs::read_to_string(w.path("out/mini/mini.manifest.json")).unwrap()
        + &std::fs::read_to_string(w.path("out/mini/mini.spdx.json")).unwrap();
    let dir = w.dir.path().to_string_lossy().into_owned();
    assert!(!text.contains(&dir), "the build folder leaked: {text}");
}

#[test]
fn verify_passes_for_a_deterministic_spec_and_against_its_sums() {
    let w = mini();
    let r = w.run(&["verify", "mini.kdl"]).ok();
    assert!(r.stderr.contains("all 6 steps identical"), "{}", r.stderr);
    // The scratch store is gone afterwards.
    let left: Vec<_> = std::fs::read_dir(w.path("cache"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("verify-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");

    w.run(&["build", "mini.kdl"]).ok();
    let r = w
        .run(&["verify", "mini.kdl", "--against", "out/mini/SHA256SUMS"])
        .ok();
    assert!(r.stderr.contains("all 3 files identical"), "{}", r.stderr);
    // A published build with other bytes.
    let sums = std::fs::read_to_string(w.path("out/mini/SHA256SUMS")).unwrap();
    let tar_sum = sha256(&w.path("out/mini/mini.tar"));
    w.write(
        "published/SHA256SUMS",
        &sums.replace(&tar_sum, &"0".repeat(64)),
    );
    let r = w.run(&["verify", "mini.kdl", "--against", "published/SHA256SUMS"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("DIFFERENT"), "{}", r.stderr);
    assert!(r.stderr.contains("1 of 3 files differ"), "{}", r.stderr);
}

#[test]
fn verify_names_the_step_and_file_that_are_not_reproducible() {
    let w = mini();
    w.write(
        "clock.kdl",
        r#"
image "clock" {
    base "tar" path="rootfs.tar"
    run "date +%s%N > /etc/built-at"
    output "tar"
}
"#,
    );
    let r = w.run(&["verify", "clock.kdl"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let first = r
        .stderr
        .lines()
        .find(|l| l.starts_with("first difference"))
        .unwrap_or_else(|| panic!("{}", r.stderr));
    assert!(
        first.contains("run `date +%s%N > /etc/built-at`"),
        "{first}"
    );
    assert!(r.stderr.contains("~ /etc/built-at"), "{}", r.stderr);
    // The text diff of the file.
    assert!(r.stderr.contains("--- cached/etc/built-at"), "{}", r.stderr);
    assert!(
        r.stderr.lines().any(|l| {
            let l = l.trim_start();
            l.len() > 1 && l.starts_with('+') && l[1..].chars().all(|c| c.is_ascii_digit())
        }),
        "{}",
        r.stderr
    );
    // The base is reproducible; the run step and what follows are not.
    let row = |label: &str| {
        r.stderr
            .lines()
            .find(|l| l.starts_with("clock") && l.contains(label))
            .unwrap_or_else(|| panic!("{label}: {}", r.stderr))
            .to_string()
    };
    assert!(row("base").ends_with("identical"), "{}", r.stderr);
    assert!(row("run").ends_with("DIFFERENT"), "{}", r.stderr);
}

const CLOCK_SPEC: &str = r#"
image "clock" {
    base "tar" path="rootfs.tar"
    files "overlay/" dest="/"
    run "date +%s%N > /etc/built-at"
    output "tar"
}
"#;

/// Another machine published a build of the same spec whose `run` step wrote other bytes:
/// verify names that step from the published manifest before it rebuilds anything, for a
/// published folder and for the same files over HTTP, and diffoscope compares the pair.
#[test]
fn verify_against_a_published_build_names_the_first_differing_step_before_rebuilding() {
    let w = mini();
    w.write("clock.kdl", CLOCK_SPEC);
    // The publisher's build, in its own cache.
    w.run_with_cache(
        "cache-pub",
        &["build", "clock.kdl", "--out-dir", "published"],
    )
    .ok();
    let check = |r: &crate::common::Run| {
        assert_eq!(r.code, 1, "{}", r.stderr);
        let lines: Vec<&str> = r.stderr.lines().collect();
        let named = lines
            .iter()
            .position(|l| {
                l.contains("the first step whose output differs from the published manifest")
            })
            .unwrap_or_else(|| panic!("no step named:\n{}", r.stderr));
        assert!(
            lines[named].contains("step `run `date +%s%N > /etc/built-at``"),
            "{}",
            lines[named]
        );
        let rebuild = lines
            .iter()
            .position(|l| l.starts_with("verify: rebuilding every step"))
            .unwrap();
        assert!(named < rebuild, "named after the rebuild:\n{}", r.stderr);
        assert!(r.stderr.contains("clock.tar"), "{}", r.stderr);
        assert!(!r.stderr.contains("its key differs"), "{}", r.stderr);
    };
    // The published folder: the manifest is found beside SHA256SUMS.
    let r = w.run(&[
        "verify",
        "clock.kdl",
        "--against",
        "published/clock/SHA256SUMS",
        "--diffoscope",
    ]);
    check(&r);
    assert!(
        r.stderr.contains("1 of 3 files differ") || r.stderr.contains("files differ"),
        "{}",
        r.stderr
    );
    let report = r
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("verify: diffoscope's report: `"))
        .and_then(|l| l.strip_suffix('`'))
        .unwrap_or_else(|| panic!("no diffoscope report:\n{}", r.stderr));
    assert!(
        r.stderr.contains("diffoscope on published clock.tar"),
        "{}",
        r.stderr
    );
    let text = std::fs::read_to_string(report).unwrap();
    assert!(text.contains("etc/built-at"), "{text}");

    // The same over HTTP, both documents given.
    let http = Http::serve(&w.path("published/clock"));
    let base = format!("http://127.0.0.1:{}", http.1);
    let r = w.run(&[
        "verify",
        "clock.kdl",
        "--against",
        &format!("{base}/SHA256SUMS"),
        "--against",
        &format!("{base}/clock.manifest.json"),
    ]);
    check(&r);
    // A manifest that is not the one the sums list is refused.
    w.write(
        "forged/clock.manifest.json",
        &std::fs::read_to_string(w.path("published/clock/clock.manifest.json"))
            .unwrap()
            .replace("clock.tar", "clock.tar "),
    );
    let r = w.run(&[
        "verify",
        "clock.kdl",
        "--against",
        &format!("{base}/SHA256SUMS"),
        "--against",
        "forged/clock.manifest.json",
    ]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("forged/clock.manifest.json` is not the manifest"),
        "{}",
        r.stderr
    );
    // A URL that answers 404 is a usage error naming it.
    let r = w.run(&[
        "verify",
        "clock.kdl",
        "--against",
        &format!("{base}/nothing"),
    ]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("HTTP 404"), "{}", r.stderr);
}

/// Without a published build, `--diffoscope` compares the first differing step's trees.
#[test]
fn verify_diffoscope_compares_the_first_differing_step_trees() {
    let w = mini();
    w.write("clock.kdl", CLOCK_SPEC);
    let r = w.run(&["verify", "clock.kdl", "--diffoscope"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("diffoscope on the trees of step `run `date +%s%N > /etc/built-at``"),
        "{}",
        r.stderr
    );
    let report = r
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("verify: diffoscope's report: `"))
        .and_then(|l| l.strip_suffix('`'))
        .unwrap_or_else(|| panic!("no diffoscope report:\n{}", r.stderr));
    assert!(
        report.starts_with(&*w.path("cache/logs").to_string_lossy()),
        "{report}"
    );
    let text = std::fs::read_to_string(report).unwrap();
    assert!(text.contains("etc/built-at"), "{text}");
}

/// Under another group (`sudo -g`, a CI runner's groups), the files of the image are still
/// owned by root: those a command in the image creates and those imgspec itself writes into
/// the chroot's tree (the `locale` element's `/etc/locale.gen` and `/etc/default/locale`).
#[test]
fn the_callers_group_does_not_reach_the_image() {
    let w = Workspace::new();
    w.rootfs_tar_with(
        "rootfs.tar",
        &[],
        &[
            ("usr/sbin/locale-gen", "#!/bin/sh\nexit 0\n", 0o755),
            // The element implies the `locales` package: an apt that has nothing to do.
            ("usr/bin/apt-get", "#!/bin/sh\nexit 0\n", 0o755),
            ("etc/locale.gen", "# fr_FR.UTF-8 UTF-8\n", 0o644),
        ],
    );
    w.write(
        "g.kdl",
        r#"
image "g" {
    base "tar" path="rootfs.tar"
    element "locale" lang="fr_FR.UTF-8"
    run "mkdir -p /srv && echo x > /srv/by-run"
    output "tar"
}
"#,
    );
    let out = std::process::Command::new("setpriv")
        .args(["--regid=65534", "--groups=4,24", "--"])
        .arg(env!("CARGO_BIN_EXE_imgspec"))
        .args(["build", "g.kdl"])
        .current_dir(w.dir.path())
        .env("IMGSPEC_CACHE_DIR", w.path("cache"))
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listing = tar_list(&w, "out/g/g.tar");
    for f in ["etc/default/locale", "etc/locale.gen", "srv/by-run"] {
        let line = listing
            .lines()
            .find(|l| l.ends_with(f))
            .unwrap_or_else(|| panic!("{f} missing:\n{listing}"));
        assert!(line.contains(" 0/0 "), "{f} not owned by root:root: {line}");
    }
    assert!(!listing.contains("65534"), "{listing}");
}

#[test]
fn changing_one_overlay_file_rebuilds_only_what_follows_and_plan_says_why() {
    let w = mini();
    w.run(&["build", "mini.kdl"]).ok();
    w.write("overlay/etc/motd", "changed\n");
    let plan = w.run(&["plan", "mini.kdl"]).ok().stdout;
    let line = |label: &str| {
        plan.lines()
            .find(|l| l.trim_start().starts_with(label))
            .unwrap_or_else(|| panic!("no `{label}` in\n{plan}"))
            .to_string()
    };
    assert!(line("base tar").contains("cached"), "{plan}");
    assert!(
        line("files overlay/").contains("file `etc/motd` changed"),
        "{plan}"
    );
    assert!(line("run").contains("input `files#1` changed"), "{plan}");
    let json: serde_json::Value =
        serde_json::from_str(&w.run(&["--json", "plan", "mini.kdl"]).ok().stdout).unwrap();
    let steps = json["images"][0]["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 6);
    assert_eq!(steps[0]["cached"], true);
    assert_eq!(steps[1]["cached"], false);

    let r = w.run(&["build", "mini.kdl"]).ok();
    assert!(r.stderr.contains("5 steps built, 1 cached"), "{}", r.stderr);
}

#[test]
fn changing_one_run_command_rebuilds_from_there_with_the_bytes_of_a_cold_build() {
    let changed = SPEC.replace("echo built >", "echo rebuilt >");
    let w = mini();
    w.run(&["build", "mini.kdl"]).ok();
    w.write("mini.kdl", &changed);
    let plan = w.run(&["plan", "mini.kdl"]).ok().stdout;
    let line = |label: &str| {
        plan.lines()
            .find(|l| l.trim_start().starts_with(label))
            .unwrap_or_else(|| panic!("no `{label}` in\n{plan}"))
            .to_string()
    };
    assert!(line("base tar").contains("cached"), "{plan}");
    assert!(line("files overlay/").contains("cached"), "{plan}");
    assert!(
        line("run").contains("param `command`: `echo built >")
            && line("run").contains("→ `echo rebuilt >"),
        "{plan}"
    );
    let r = w.run(&["build", "mini.kdl"]).ok();
    // Base and files are cached; the run step and everything after it are built.
    assert!(r.stderr.contains("steps built, 2 cached"), "{}", r.stderr);
    assert!(
        r.stderr.contains("built    run `echo rebuilt"),
        "{}",
        r.stderr
    );
    // The chroot step's import took the unchanged files from its export without reading
    // them: the result is still byte for byte what a cold build of the new spec gives.
    let cold = mini();
    cold.write("mini.kdl", &changed);
    cold.run(&["build", "mini.kdl"]).ok();
    assert_eq!(
        sha256(&w.path("out/mini/mini.tar")),
        sha256(&cold.path("out/mini/mini.tar"))
    );
}

/// Every entry of `dir`, sorted, with its inode and mtime.
fn listing(dir: &std::path::Path) -> Vec<(String, u64, i64, i64)> {
    use std::os::unix::fs::MetadataExt;
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                m.ino(),
                m.mtime(),
                m.mtime_nsec(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn the_output_folder_holds_only_the_artifacts_and_a_no_op_build_touches_nothing() {
    let w = mini();
    // An older imgspec kept its state in the folder: it goes.
    w.write("out/mini/.imgspec-state.json", "{}");
    w.run(&["build", "mini.kdl"]).ok();
    let names = |l: &[(String, u64, i64, i64)]| l.iter().map(|e| e.0.clone()).collect::<Vec<_>>();
    let first = listing(&w.path("out/mini"));
    assert_eq!(
        names(&first),
        [
            "SHA256SUMS",
            "mini.manifest.json",
            "mini.spdx.json",
            "mini.tar"
        ]
    );
    // The state is in the cache.
    let states: Vec<_> = std::fs::read_dir(w.path("cache/outputs-v1"))
        .unwrap()
        .collect();
    assert_eq!(states.len(), 1);
    let r = w.run(&["build", "mini.kdl"]).ok();
    assert!(r.stderr.contains("(unchanged)"), "{}", r.stderr);
    assert_eq!(
        listing(&w.path("out/mini")),
        first,
        "a no-op build rewrote a file"
    );
    // The same folder reached through another path is the same folder.
    std::os::unix::fs::symlink(w.path("out"), w.path("out-link")).unwrap();
    w.run(&["build", "mini.kdl", "--out-dir", "out-link"]).ok();
    assert_eq!(listing(&w.path("out/mini")), first);
}

#[test]
fn a_deleted_output_is_restored_without_rebuilding() {
    let w = mini();
    w.run(&["build", "mini.kdl"]).ok();
    let before = sha256(&w.path("out/mini/mini.tar"));
    std::fs::remove_file(w.path("out/mini/mini.tar")).unwrap();
    let r = w.run(&["build", "mini.kdl"]).ok();
    assert!(r.stderr.contains("0 steps built, 6 cached"), "{}", r.stderr);
    assert_eq!(sha256(&w.path("out/mini/mini.tar")), before);
}

/// The log of the newest step of `kind` under the workspace's `cache/logs/`.
fn newest_log(w: &Workspace, kind: &str) -> String {
    let mut logs: Vec<(std::time::SystemTime, std::path::PathBuf)> =
        std::fs::read_dir(w.path("cache/logs"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().ends_with(&format!("-{kind}.log")))
            .map(|p| (std::fs::metadata(&p).unwrap().modified().unwrap(), p))
            .collect();
    logs.sort();
    std::fs::read_to_string(&logs.last().expect("a log").1).unwrap()
}

#[test]
fn a_rebuild_starts_its_chroot_step_from_the_tree_the_last_build_kept() {
    let w = mini();
    // Enough files that a changed one is a small part of the tree.
    for i in 0..40 {
        w.write(
            &format!("overlay/usr/share/doc/mini/f{i}"),
            &format!("{i}\n"),
        );
    }
    w.run(&["build", "mini.kdl"]).ok();
    assert!(
        !newest_log(&w, "run").contains("a kept copy"),
        "nothing kept yet: exported"
    );
    let du = w.run(&["cache", "du"]).ok().stdout;
    assert!(du.contains("1 materialised trees kept"), "{du}");

    w.write("overlay/etc/motd", "hello again\n");
    w.run(&["build", "mini.kdl"]).ok();
    let log = newest_log(&w, "run");
    assert!(log.contains("a kept copy, patched from"), "{log}");
    // What an export would have given: the same bytes as a build from an empty cache.
    w.run_with_cache(
        "cache-cold",
        &["build", "mini.kdl", "--out-dir", "out-cold"],
    )
    .ok();
    assert_eq!(
        sha256(&w.path("out/mini/mini.tar")),
        sha256(&w.path("out-cold/mini/mini.tar"))
    );

    let gc = w.run(&["cache", "gc", "mini.kdl"]).ok().stdout;
    assert!(gc.contains("removed 1 materialised trees"), "{gc}");
    let du = w.run(&["cache", "du"]).ok().stdout;
    assert!(!du.contains("materialised"), "{du}");
}

#[test]
fn a_failing_step_names_itself_keeps_its_log_and_stores_nothing() {
    let w = mini();
    w.write(
        "mini.kdl",
        &SPEC.replace(
            "run \"echo built",
            "run \"echo going wrong >&2; exit 3\"\n    run \"echo built",
        ),
    );
    let r = w.run(&["build", "mini.kdl"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("step `run `echo going wrong >&2; exit 3`` failed"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("going wrong"),
        "the log's tail is shown: {}",
        r.stderr
    );
    let log = r
        .stderr
        .lines()
        .find_map(|l| l.trim().strip_prefix("log: "))
        .expect("a log path")
        .to_string();
    assert!(std::fs::read_to_string(&log)
        .unwrap()
        .contains("going wrong"));
    // Steps before it are stored; it and what follows are not.
    let ls = w.run(&["cache", "ls"]).ok().stdout;
    assert!(ls.contains("base-tar") && ls.contains("files"), "{ls}");
    assert!(!ls.contains("run "), "{ls}");
    assert!(!w.path("out/mini/mini.tar").exists());
    // Nothing half-written under the store's tmp/.
    let tmp: Vec<_> = std::fs::read_dir(w.path("cache/tmp")).unwrap().collect();
    assert!(tmp.is_empty(), "{tmp:?}");
}

#[test]
fn variants_share_their_common_layers() {
    let w = mini();
    w.write(
        "variants.kdl",
        r#"
template "common" {
    base "tar" path="rootfs.tar"
    files "overlay/"
}
image "one" extends="common" {
    run "echo one > /etc/variant"
    output "tar"
}
image "two" extends="common" {
    run "echo two > /etc/variant"
    output "tar"
}
"#,
    );
    let r = w.run(&["build", "variants.kdl"]).ok();
    // base + files once, then a run, an output, an SBOM and a manifest for each image.
    assert!(
        r.stderr.contains("10 steps built, 0 cached"),
        "{}",
        r.stderr
    );
    // Each image has its own layer on the shared ones.
    for (img, text) in [("one", "one\n"), ("two", "two\n")] {
        let tar = w.path(&format!("out/{img}/{img}.tar"));
        let out = std::process::Command::new("tar")
            .arg("-xOf")
            .arg(&tar)
            .arg("./etc/variant")
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), text, "{img}");
        assert!(tar_list(&w, &format!("out/{img}/{img}.tar")).contains("etc/motd"));
        let sums = std::fs::read_to_string(w.path(&format!("out/{img}/SHA256SUMS"))).unwrap();
        assert!(sums.contains(&format!("  {img}.tar\n")), "{sums}");
    }
}

#[test]
fn check_reports_spec_errors_with_exit_code_2() {
    let w = mini();
    w.write(
        "bad.kdl",
        "image \"x\" {\n    base \"tar\" path=\"rootfs.tar\"\n    outptu \"tar\"\n}\n",
    );
    let r = w.run(&["check", "bad.kdl"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("outptu"), "{}", r.stderr);
    assert!(
        r.stderr.contains("help: did you mean `output`?"),
        "did-you-mean: {}",
        r.stderr
    );
    w.run(&["check", "mini.kdl"]).ok();
}

#[test]
fn cache_commands() {
    let w = mini();
    w.run(&["build", "mini.kdl"]).ok();
    let du = w.run(&["cache", "du"]).ok().stdout;
    assert!(du.contains("6 step results"), "{du}");
    let v = w.run(&["cache", "verify"]).ok().stdout;
    assert!(v.contains("0 corrupt"), "{v}");
    // Keep only what another spec needs: everything of mini goes.
    w.write(
        "other.kdl",
        "image \"o\" {\n    base \"tar\" path=\"rootfs.tar\"\n    output \"tar\"\n}\n",
    );
    let gc = w.run(&["cache", "gc", "other.kdl"]).ok().stdout;
    assert!(gc.contains("removed 5 step results"), "{gc}");
    let r = w.run(&["build", "mini.kdl"]).ok();
    assert!(r.stderr.contains("5 steps built, 1 cached"), "{}", r.stderr);
}

#[test]
fn a_missing_host_tool_stops_the_build_with_the_install_line() {
    let w = mini();
    w.write(
        "deb.kdl",
        "image \"d\" {\n    base \"debian\" suite=\"bookworm\"\n    output \"tar\"\n}\n",
    );
    let r = std::process::Command::new(env!("CARGO_BIN_EXE_imgspec"))
        .args(["build", "deb.kdl"])
        .current_dir(w.dir.path())
        .env("IMGSPEC_CACHE_DIR", w.path("cache"))
        .env("PATH", w.path("empty-path"))
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("missing host tools: `mmdebstrap`"),
        "{stderr}"
    );
    assert!(stderr.contains("apt-get install mmdebstrap"), "{stderr}");
    assert!(!w.path("out").exists());
}

/// Unmounts the test's tmpfs even when an assertion fails.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_fails_the_step_and_leaves_the_store_as_it_was() {
    let w = mini();
    // 40 MiB of incompressible data in the overlay; the cache gets a 24 MiB tmpfs.
    let mut data = vec![0u8; 40 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::write(w.path("overlay/big.bin"), data).unwrap();
    let cache = w.path("small-cache");
    std::fs::create_dir(&cache).unwrap();
    let st = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=24m", "tmpfs"])
        .arg(&cache)
        .status()
        .unwrap();
    assert!(st.success(), "mounting a tmpfs for the test needs root");
    let _m = Mounted(cache.clone());
    let r = w.run_with_cache("small-cache", &["build", "mini.kdl"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("step `files overlay/` failed"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("No space left on device"), "{}", r.stderr);
    let v = w
        .run_with_cache("small-cache", &["cache", "verify"])
        .ok()
        .stdout;
    assert!(v.contains("0 corrupt"), "{v}");
    let ls = w
        .run_with_cache("small-cache", &["cache", "ls"])
        .ok()
        .stdout;
    assert!(ls.contains("base-tar") && !ls.contains("files"), "{ls}");
    let tmp: Vec<_> = std::fs::read_dir(cache.join("tmp")).unwrap().collect();
    assert!(tmp.is_empty(), "{tmp:?}");
}

#[test]
fn an_overlay_directory_goes_through_the_images_directory_link() {
    let w = Workspace::new();
    // The tiny root filesystem is merged-/usr: `bin -> usr/bin`.
    w.rootfs_tar("rootfs.tar");
    w.write(
        "merged.kdl",
        r#"
image "merged" {
    base "tar" path="rootfs.tar"
    files "overlay/"
    run "/bin/sh -c 'cat /bin/hello > /etc/hello-seen'"
    output "tar"
}
"#,
    );
    w.write("overlay/bin/hello", "#!/bin/sh\necho hello\n");
    w.run(&["build", "merged.kdl"]).ok();
    let dir = w.path("x");
    std::fs::create_dir(&dir).unwrap();
    let st = std::process::Command::new("tar")
        .arg("-xf")
        .arg(w.path("out/merged/merged.tar"))
        .arg("-C")
        .arg(&dir)
        .status()
        .unwrap();
    assert!(st.success());
    let bin = std::fs::symlink_metadata(dir.join("bin")).unwrap();
    assert!(bin.file_type().is_symlink(), "bin is no longer a link");
    assert_eq!(
        std::fs::read_link(dir.join("bin")).unwrap(),
        std::path::Path::new("usr/bin")
    );
    assert!(dir.join("usr/bin/hello").is_file());
    assert!(dir.join("usr/bin/sh").is_file(), "usr/bin lost its files");
    assert_eq!(
        std::fs::read_to_string(dir.join("etc/hello-seen")).unwrap(),
        "#!/bin/sh\necho hello\n"
    );
}

/// The manifest's `outputs` are the files of `out/IMAGE/`, each with its SHA-256; the
/// intermediate `fs.img` and `disk.raw` are only in their steps' output digests.
#[test]
fn the_manifest_lists_the_delivered_files_each_with_its_sha256() {
    let w = Workspace::new();
    w.rootfs_tar("rootfs.tar");
    w.write(
        "disk.kdl",
        "image \"d\" {\n    base \"tar\" path=\"rootfs.tar\"\n    disk size=\"16MiB\" {\n        partition \"root\" type=\"root\" format=\"ext4\" mount=\"/\"\n    }\n    output \"raw\"\n}\n",
    );
    w.run(&["build", "disk.kdl"]).ok();
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(w.path("out/d/d.manifest.json")).unwrap()).unwrap();
    let outputs = m["outputs"].as_object().unwrap();
    let names: Vec<&str> = outputs.keys().map(String::as_str).collect();
    assert_eq!(names, ["d.raw", "d.spdx.json"], "{m:#}");
    for (name, o) in outputs {
        assert_eq!(
            o["sha256"],
            sha256(&w.path(&format!("out/d/{name}"))),
            "{name}"
        );
    }
}
