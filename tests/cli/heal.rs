//! A cache that heals and outputs that are whole, and builds on one cache at once: damaged
//! blobs and a damaged index are misses, not failures; lock files and session folders do not
//! pile up; N builds of one spec build every step once. No network: a `base "tar"` image.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::common::{sha256, Run, Workspace};

/// Every step kind that needs no network: a tree (base, files, run), an `/etc/fstab`, a
/// filesystem, a disk, two outputs, the SBOM and the manifest.
const SPEC: &str = r#"
image "heal" {
    base "tar" path="rootfs.tar"
    files "overlay/" dest="/"
    run "echo built > /etc/built-by-run"
    disk table="gpt" size="64MiB" {
        partition "root" type="root" format="ext4" mount="/"
    }
    output "raw" "tar"
}
"#;

const FILES: [&str; 4] = [
    "heal.raw",
    "heal.tar",
    "heal.spdx.json",
    "heal.manifest.json",
];

fn workspace() -> Workspace {
    let w = Workspace::new();
    w.rootfs_tar("rootfs.tar");
    w.write("heal.kdl", SPEC);
    w.write("overlay/etc/motd", "hello\n");
    w
}

/// The steps of the plan: label → key (hex).
fn plan_keys(w: &Workspace, cache: &str) -> BTreeMap<String, String> {
    let json: serde_json::Value = serde_json::from_str(
        &w.run_with_cache(cache, &["--json", "plan", "heal.kdl"])
            .ok()
            .stdout,
    )
    .unwrap();
    json["images"][0]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["label"].as_str().unwrap().to_string(),
                s["key"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The cached records: kind → output (from `cache ls --json`).
fn records(w: &Workspace, cache: &str) -> Vec<serde_json::Value> {
    let ls = w
        .run_with_cache(cache, &["--json", "cache", "ls"])
        .ok()
        .stdout;
    serde_json::from_str::<Vec<serde_json::Value>>(&ls).unwrap()
}

fn blob_path(w: &Workspace, cache: &str, digest: &str) -> PathBuf {
    w.path(&format!(
        "{cache}/blobs-v1/{}/{}",
        &digest[..2],
        &digest[2..]
    ))
}

/// Rewrites a stored blob (blobs are read-only).
fn damage(path: &Path, f: impl FnOnce(&mut Vec<u8>)) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut bytes = std::fs::read(path).unwrap();
    f(&mut bytes);
    std::fs::write(path, bytes).unwrap();
}

/// The digest of `path`'s content blob in the tree of the record of `kind`.
fn tree_file_blob(w: &Workspace, cache: &str, kind: &str, path: &str) -> String {
    let rec = records(w, cache)
        .into_iter()
        .find(|r| r["kind"] == kind)
        .unwrap();
    let tree = rec["output"]["tree"].as_str().unwrap().to_string();
    let stored = std::fs::read(blob_path(w, cache, &tree)).unwrap();
    let m: serde_json::Value =
        serde_json::from_slice(&zstd::decode_all(&stored[..]).unwrap()).unwrap();
    m["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == path)
        .unwrap()["kind"]["digest"]
        .as_str()
        .unwrap()
        .to_string()
}

fn assert_same_outputs(w: &Workspace, a: &str, b: &str) {
    for f in FILES.iter().chain(&["SHA256SUMS"]) {
        assert_eq!(
            sha256(&w.path(&format!("{a}/heal/{f}"))),
            sha256(&w.path(&format!("{b}/heal/{f}"))),
            "{f}"
        );
    }
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn a_flipped_and_a_truncated_blob_heal_within_the_build() {
    let w = workspace();
    w.run_with_cache("clean", &["build", "heal.kdl", "--out-dir", "out-clean"])
        .ok();
    w.run(&["build", "heal.kdl"]).ok();

    // A flipped byte in the tar output's blob: zstd keeps no checksum, BLAKE3 sees it.
    let tar = records(&w, "cache")
        .into_iter()
        .find(|r| r["name"] == "output tar")
        .unwrap()["output"]["files"]["heal.tar"]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    damage(&blob_path(&w, "cache", &tar), |b| {
        let i = b.len() / 2;
        b[i] ^= 0x40;
    });
    // A truncated blob shared by every tree: the image's `/usr/bin/sh`.
    let sh = tree_file_blob(&w, "cache", "run", "usr/bin/sh");
    damage(&blob_path(&w, "cache", &sh), |b| b.truncate(b.len() / 2));
    std::fs::remove_dir_all(w.path("out")).unwrap();
    // The cache's links to the deleted outputs would give them back without reading a blob;
    // without them (as for an out/ on another filesystem) the restore reads the blobs.
    std::fs::remove_dir_all(w.path("cache/linked-v1")).unwrap();

    let r = w.run(&["build", "heal.kdl"]).ok();
    // Said once per damaged result, naming the step and the blob: the tar output (found when
    // out/ was written), the final tree (found by the tar output that read it), and the
    // layers below, whose lookups then find the blob gone.
    let said = |label: &str, blob: &str| {
        r.stderr
            .lines()
            .filter(|l| {
                l.contains(&format!(
                    "] WARNING  {label}: its cached result is damaged (blob {}",
                    &blob[..12]
                ))
            })
            .count()
    };
    assert_eq!(said("output tar", &tar), 1, "{}", r.stderr);
    // That flip still decodes (zstd has no checksum here): only the BLAKE3 check saw it.
    assert!(
        r.stderr
            .contains(&format!("blob `{tar}` is corrupt: its content hashes to")),
        "{}",
        r.stderr
    );
    // The truncation does not decode.
    assert!(
        r.stderr
            .contains(&format!("blob `{sh}` is corrupt: it does not decompress")),
        "{}",
        r.stderr
    );
    for label in [
        "fstab",
        "run `echo built > /etc/built-by-run`",
        "files overlay/",
        "base tar rootfs.tar",
    ] {
        assert_eq!(said(label, &sh), 1, "{label}: {}", r.stderr);
    }
    assert_eq!(
        r.stderr.matches("its cached result is damaged").count(),
        5,
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("built    output tar"), "{}", r.stderr);
    assert!(
        r.stderr.contains("built    run `echo built"),
        "{}",
        r.stderr
    );
    // The output folder is whole and what a clean cache gives.
    assert_eq!(
        entries(&w.path("out/heal")),
        [
            "SHA256SUMS",
            "heal.manifest.json",
            "heal.raw",
            "heal.spdx.json",
            "heal.tar"
        ]
    );
    assert_same_outputs(&w, "out", "out-clean");
    // Nothing damaged is left, and the next build is all cached.
    let v = w.run(&["cache", "verify"]).ok().stdout;
    assert!(
        v.contains("0 corrupt (removed), 0 missing, 0 step results dropped"),
        "{v}"
    );
    let r = w.run(&["build", "heal.kdl"]).ok();
    assert!(r.stderr.contains("0 steps built"), "{}", r.stderr);
}

#[test]
fn a_blob_damaged_under_a_step_being_built_heals_its_inputs() {
    let w = workspace();
    w.run(&["build", "heal.kdl"]).ok();
    // The overlay changes: base is a cache hit, and the files step reads its manifest.
    let base = records(&w, "cache")
        .into_iter()
        .find(|r| r["kind"] == "base-tar")
        .unwrap()["output"]["tree"]
        .as_str()
        .unwrap()
        .to_string();
    damage(&blob_path(&w, "cache", &base), |b| {
        let i = b.len() / 2;
        b[i] ^= 0x01;
    });
    w.write("overlay/etc/motd", "changed\n");
    let r = w.run(&["build", "heal.kdl"]).ok();
    assert!(
        r.stderr.contains(&format!(
            "base tar rootfs.tar: its cached result is damaged (blob {}",
            &base[..12]
        )),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("built    base tar rootfs.tar"),
        "{}",
        r.stderr
    );
    let fresh = workspace();
    fresh.write("overlay/etc/motd", "changed\n");
    fresh.run(&["build", "heal.kdl"]).ok();
    for f in FILES {
        assert_eq!(
            sha256(&w.path(&format!("out/heal/{f}"))),
            sha256(&fresh.path(&format!("out/heal/{f}"))),
            "{f}"
        );
    }
}

#[test]
fn a_failed_output_folder_keeps_the_old_one_whole_and_no_staging_is_left() {
    let w = workspace();
    w.run(&["build", "heal.kdl"]).ok();
    let before: Vec<String> = FILES
        .iter()
        .map(|f| sha256(&w.path(&format!("out/heal/{f}"))))
        .collect();
    // What a build killed while it filled the new folder leaves: a staging folder nobody
    // holds. The next build that writes the folder removes it.
    std::fs::create_dir(w.path("out/.heal.tmp-dead00")).unwrap();
    w.write("out/.heal.tmp-dead00/heal.raw", "half");
    w.write("overlay/etc/motd", "changed\n");
    w.run(&["build", "heal.kdl"]).ok();
    assert_eq!(entries(&w.path("out")), ["heal"]);
    let after: Vec<String> = FILES
        .iter()
        .map(|f| sha256(&w.path(&format!("out/heal/{f}"))))
        .collect();
    assert_ne!(before, after);
    let sums = std::fs::read_to_string(w.path("out/heal/SHA256SUMS")).unwrap();
    for f in ["heal.raw", "heal.tar"] {
        assert!(
            sums.contains(&format!(
                "{}  {f}\n",
                sha256(&w.path(&format!("out/heal/{f}")))
            )),
            "{sums}"
        );
    }
    // A no-op build touches nothing.
    let r = w.run(&["build", "heal.kdl"]).ok();
    assert_eq!(
        r.stderr.matches("(unchanged)").count(),
        FILES.len(),
        "{}",
        r.stderr
    );
}

#[test]
fn garbage_in_the_index_sets_it_aside_and_the_build_goes_on() {
    let w = workspace();
    w.run(&["build", "heal.kdl"]).ok();
    let index = w.path("cache/index-v1.sqlite");
    let garbage = |path: &Path| {
        let mut bytes = std::fs::read(path).unwrap();
        assert!(bytes.len() >= 3 * 4096, "{} bytes", bytes.len());
        // A whole page in the middle of the file: the steps table's rows.
        let mid = (bytes.len() / 2) & !4095;
        let mut x: u32 = 0x1234_5678;
        for b in &mut bytes[mid..mid + 4096] {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *b = x as u8;
        }
        std::fs::write(path, bytes).unwrap();
    };
    garbage(&index);
    let r = w.run(&["build", "heal.kdl"]).ok();
    let notices = r.stderr.matches("the cache index was damaged").count();
    assert_eq!(notices, 1, "{}", r.stderr);
    let aside: Vec<String> = entries(&w.path("cache"))
        .into_iter()
        .filter(|n| n.starts_with("index-v1.sqlite.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert!(r.stderr.contains(&aside[0]), "{}", r.stderr);
    // The blobs were kept; the records were not, so the steps ran again, to the same bytes.
    assert!(r.stderr.contains("10 steps built"), "{}", r.stderr);
    let r = w.run(&["build", "heal.kdl"]).ok();
    assert!(r.stderr.contains("0 steps built"), "{}", r.stderr);

    // `cache verify` on a damaged index says so and fails.
    garbage(&index);
    let v = w.run(&["cache", "verify"]);
    assert_eq!(v.code, 1, "{}\n{}", v.stdout, v.stderr);
    assert!(
        format!("{}{}", v.stdout, v.stderr).contains("the cache index was damaged"),
        "{}\n{}",
        v.stdout,
        v.stderr
    );
    let v = w.run(&["cache", "verify"]).ok();
    assert!(v.stdout.contains("0 corrupt"), "{}", v.stdout);
}

#[test]
fn cache_verify_names_the_dropped_steps_and_the_missing_blobs() {
    let w = workspace();
    w.run(&["build", "heal.kdl"]).ok();
    let recs = records(&w, "cache");
    let file_of = |name: &str, file: &str| {
        recs.iter().find(|r| r["name"] == name).unwrap()["output"]["files"][file]["digest"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let raw = file_of("output raw", "heal.raw");
    let sbom = file_of("sbom", "heal.spdx.json");
    damage(&blob_path(&w, "cache", &sbom), |b| b.truncate(b.len() - 3));
    // The disk's blob is the raw output's too: two records lose it.
    std::fs::remove_file(blob_path(&w, "cache", &raw)).unwrap();
    let v = w.run(&["cache", "verify"]);
    assert_eq!(v.code, 1, "{}", v.stdout);
    assert!(
        v.stdout.contains(&format!("  corrupt: {sbom}")),
        "{}",
        v.stdout
    );
    assert!(
        v.stdout.contains(&format!("  missing: {raw}")),
        "{}",
        v.stdout
    );
    for line in [
        "dropped: sbom `sbom`",
        "dropped: output `output raw`",
        "dropped: disk `disk gpt 64MiB`",
    ] {
        assert!(v.stdout.contains(line), "{line}: {}", v.stdout);
    }
    assert!(v.stdout.contains("3 step results dropped"), "{}", v.stdout);
    // Only those are built again: the disk from the cached filesystem's blob this time, not
    // around the filesystem made in place in it, and byte for byte the same.
    let sum = sha256(&w.path("out/heal/heal.raw"));
    let in_place = "partition `root`: its filesystem was made in place in this file, not copied";
    assert!(disk_log(&w).contains(in_place), "{}", disk_log(&w));
    // (The cache's link would give the raw output back without the disk step's file.)
    std::fs::remove_dir_all(w.path("out")).unwrap();
    let _ = std::fs::remove_dir_all(w.path("cache/linked-v1"));
    let r = w.run(&["build", "heal.kdl"]).ok();
    assert!(r.stderr.contains("3 steps built"), "{}", r.stderr);
    assert_eq!(sha256(&w.path("out/heal/heal.raw")), sum);
    assert!(!disk_log(&w).contains(in_place), "{}", disk_log(&w));
    let again = records(&w, "cache");
    let rec = again.iter().find(|r| r["name"] == "output raw").unwrap();
    assert_eq!(rec["output"]["files"]["heal.raw"]["digest"], raw.as_str());
}

/// The log of the disk step (`cache/logs/KEY-disk.log`; the disk step's key is the same for
/// every build of `heal.kdl` as it is).
fn disk_log(w: &Workspace) -> String {
    let key = &plan_keys(w, "cache")["disk gpt 64MiB"];
    std::fs::read_to_string(w.path(&format!("cache/logs/{}-disk.log", &key[..12]))).unwrap()
}

/// The inodes of the cache's links to output files (`linked-v1/`).
fn linked_inodes(w: &Workspace) -> Vec<u64> {
    use std::os::unix::fs::MetadataExt;
    let Ok(rd) = std::fs::read_dir(w.path("cache/linked-v1")) else {
        return Vec::new();
    };
    let mut v: Vec<u64> = rd.map(|e| e.unwrap().metadata().unwrap().ino()).collect();
    v.sort();
    v
}

#[test]
fn a_deleted_output_comes_back_from_the_cache_s_link_and_one_written_to_from_its_blob() {
    use std::os::unix::fs::{FileExt, MetadataExt};
    let w = workspace();
    w.run(&["build", "heal.kdl"]).ok();
    let raw = w.path("out/heal/heal.raw");
    let sum = sha256(&raw);
    let ino = std::fs::metadata(&raw).unwrap().ino();
    assert!(
        linked_inodes(&w).contains(&ino),
        "the cache links the raw disk: {:?}",
        linked_inodes(&w)
    );
    let linked = linked_inodes(&w).len();
    let du = w.run(&["cache", "du"]).ok().stdout;
    assert!(du.contains("links to output files"), "{du}");

    // Deleted: linked back, the very inode, nothing built.
    std::fs::remove_file(&raw).unwrap();
    let r = w.run(&["build", "heal.kdl"]).ok();
    assert!(r.stderr.contains("0 steps built"), "{}", r.stderr);
    let m = std::fs::metadata(&raw).unwrap();
    assert_eq!(
        (m.ino(), m.nlink()),
        (ino, 2),
        "one inode, out/ and the cache"
    );
    assert_eq!(sha256(&raw), sum);

    // Written to in place (a VM booted from it): the link no longer stands for the blob, and
    // the build writes the disk again from the blob, as a new file.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let f = std::fs::OpenOptions::new().write(true).open(&raw).unwrap();
    f.write_at(b"booted", 1 << 20).unwrap();
    drop(f);
    std::fs::remove_file(&raw).unwrap();
    let r = w.run(&["build", "heal.kdl"]).ok();
    assert!(r.stderr.contains("0 steps built"), "{}", r.stderr);
    assert_eq!(sha256(&raw), sum, "the blob's bytes, not the link's");
    // (The new file may get the freed inode's number: the names tell the links apart.)
    let now = std::fs::metadata(&raw).unwrap().ino();
    assert!(linked_inodes(&w).contains(&now), "the new file is linked");
    assert_eq!(linked_inodes(&w).len(), linked, "the stale link is gone");

    // Moved away: the restored file is a copy, not a second name of the moved one.
    let moved = w.path("moved.raw");
    std::fs::rename(&raw, &moved).unwrap();
    w.run(&["build", "heal.kdl"]).ok();
    assert_eq!(sha256(&raw), sum);
    assert_ne!(
        std::fs::metadata(&raw).unwrap().ino(),
        std::fs::metadata(&moved).unwrap().ino()
    );
    let v = w.run(&["cache", "verify"]).ok().stdout;
    assert!(
        v.contains("output files the cache links to restore them: 0 removed"),
        "{v}"
    );

    // Replaced by a new build: the store lets go of the old file's link (else it would keep a
    // whole disk per rebuild until gc).
    let old = std::fs::metadata(&raw).unwrap().ino();
    w.write("overlay/etc/motd", "changed\n");
    w.run(&["build", "heal.kdl"]).ok();
    assert_ne!(sha256(&raw), sum, "a new disk");
    let links = linked_inodes(&w);
    let now = std::fs::metadata(&raw).unwrap().ino();
    assert!(links.contains(&now), "the new disk is linked: {links:?}");
    assert!(
        !links.contains(&old),
        "the replaced disk's link is gone: {links:?}"
    );
    assert_eq!(links.len(), linked, "{links:?}");

    // Once no output folder has them, gc removes them.
    std::fs::remove_dir_all(w.path("out")).unwrap();
    std::fs::remove_file(&moved).unwrap();
    let g = w.run(&["cache", "gc", "heal.kdl"]).ok().stdout;
    assert!(
        g.contains("copies of deleted output files kept to restore them"),
        "{g}"
    );
    assert_eq!(linked_inodes(&w), Vec::<u64>::new());
}

#[test]
fn stale_lock_files_are_removed_and_session_folders_do_not_stay() {
    let w = workspace();
    w.run(&["build", "heal.kdl"]).ok();
    // A successful build leaves nothing under tmp/ (its kept trees and plain copies included).
    assert_eq!(entries(&w.path("cache/tmp")), Vec::<String>::new());
    let keys = plan_keys(&w, "cache");
    // What a build killed during a step leaves: the step's lock file, held by nobody (the
    // kernel drops a dead process's flock), and its session folder with a free lock.
    let lock = |label: &str| w.path(&format!("cache/locks/{}", keys[label]));
    std::fs::write(lock("disk gpt 64MiB"), "").unwrap();
    std::fs::create_dir_all(w.path("cache/tmp/session-dead00/disk-x")).unwrap();
    w.write("cache/tmp/session-dead00/.lock", "");
    w.write("cache/tmp/session-dead00/disk-x/disk.raw", "half a disk");
    w.run(&["cache", "gc", "--older-than-days", "3650"]).ok();
    assert_eq!(entries(&w.path("cache/locks")), Vec::<String>::new());
    assert_eq!(entries(&w.path("cache/tmp")), Vec::<String>::new());

    // The next build removes them too, and is not blocked by them.
    std::fs::write(lock("disk gpt 64MiB"), "").unwrap();
    std::fs::write(lock("fstab"), "").unwrap();
    w.write("overlay/etc/motd", "changed\n");
    let r = w.run(&["build", "heal.kdl"]).ok();
    assert!(r.stderr.contains("built    disk gpt 64MiB"), "{}", r.stderr);
    assert_eq!(entries(&w.path("cache/locks")), Vec::<String>::new());
    assert_eq!(entries(&w.path("cache/tmp")), Vec::<String>::new());
}

/// `imgspec --json build` with its own output folder, its events read as they come.
fn spawn_build(w: &Workspace, out: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_imgspec"))
        .args(["--json", "build", "heal.kdl", "--out-dir", out])
        .current_dir(w.dir.path())
        .env("IMGSPEC_CACHE_DIR", w.path("cache"))
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The events of a finished build, and its result.
fn events(r: &Run) -> Vec<serde_json::Value> {
    r.stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn count(evs: &[serde_json::Value], event: &str, key: &str) -> usize {
    evs.iter()
        .filter(|e| e["event"] == event && e["key"] == key)
        .count()
}

#[test]
fn concurrent_builds_on_one_empty_cache_build_every_step_once() {
    const N: usize = 6;
    let w = workspace();
    let keys = plan_keys(&w, "cache");
    assert_eq!(keys.len(), 10, "{keys:?}");
    let children: Vec<Child> = (0..N)
        .map(|i| spawn_build(&w, &format!("out-{i}")))
        .collect();
    let runs: Vec<Run> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap().into())
        .collect();
    let all: Vec<serde_json::Value> = runs.iter().flat_map(events).collect();
    let mut report = Vec::new();
    for r in &runs {
        assert_eq!(r.code, 0, "{}", r.stderr);
    }
    for (label, key) in &keys {
        let built = count(&all, "step-finished", key);
        report.push(format!("{label}: built {built}"));
        assert_eq!(built, 1, "`{label}` was built {built} times");
    }
    eprintln!("{N} concurrent builds: {}", report.join(", "));
    for i in 1..N {
        assert_same_outputs(&w, "out-0", &format!("out-{i}"));
    }
    assert_eq!(entries(&w.path("cache/locks")), Vec::<String>::new());
    assert_eq!(entries(&w.path("cache/tmp")), Vec::<String>::new());
}

#[test]
fn two_builds_wait_for_a_step_another_holds_and_take_its_result() {
    let w = workspace();
    let keys = plan_keys(&w, "cache");
    let run_key = keys["run `echo built > /etc/built-by-run`"].clone();
    // This test holds the run step's lock, as a third build would while building it: both
    // builds must wait for it, deterministically.
    std::fs::create_dir_all(w.path("cache/locks")).unwrap();
    let held = std::fs::File::create(w.path(&format!("cache/locks/{run_key}"))).unwrap();
    assert!(imgspec_cache::try_lock_exclusive(&held).unwrap());
    let mut children: Vec<Child> = ["out-a", "out-b"]
        .iter()
        .map(|o| spawn_build(&w, o))
        .collect();
    let (tx, rx) = std::sync::mpsc::channel();
    let readers: Vec<_> = children
        .iter_mut()
        .map(|c| {
            let stdout = c.stdout.take().unwrap();
            let tx = tx.clone();
            let run_key = run_key.clone();
            std::thread::spawn(move || {
                let mut lines = Vec::new();
                for line in std::io::BufReader::new(stdout).lines() {
                    let line = line.unwrap();
                    if line.contains("\"step-waiting\"") && line.contains(&run_key) {
                        let _ = tx.send(());
                    }
                    lines.push(line);
                }
                lines.join("\n")
            })
        })
        .collect();
    for _ in 0..2 {
        // A guard against a hang, not a timing: both say `waiting` as soon as they get there.
        rx.recv_timeout(std::time::Duration::from_secs(300))
            .expect("both builds wait for the held lock");
    }
    drop(held);
    let mut runs = Vec::new();
    for (c, reader) in children.into_iter().zip(readers) {
        let out = c.wait_with_output().unwrap();
        let mut r: Run = out.into();
        r.stdout = reader.join().unwrap();
        runs.push(r);
    }
    let all: Vec<serde_json::Value> = runs.iter().flat_map(events).collect();
    for r in &runs {
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert_eq!(
            count(&events(r), "step-waiting", &run_key),
            1,
            "{}",
            r.stdout
        );
    }
    assert_eq!(count(&all, "step-finished", &run_key), 1);
    assert_eq!(count(&all, "step-cached", &run_key), 1);
    assert_same_outputs(&w, "out-a", "out-b");
    assert_eq!(entries(&w.path("cache/locks")), Vec::<String>::new());
    let r = w.run(&["build", "heal.kdl", "--out-dir", "out-c"]).ok();
    assert!(r.stderr.contains("0 steps built"), "{}", r.stderr);
}
