//! What the README promises about the command line, one test per claim, with no network: the
//! sample diagnostic, `-j N`, `--image NAME`, `verify --keep`, `cache gc --max-size` and
//! `--older-than-days`, a `.tar.zst` base, `compress=#true` end to end, `doctor`'s install
//! line, and an interrupted build (exit 130, nothing half-written).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{processes_where, sha256, Process, Workspace};

const VARIANTS: &str = r#"
template "common" {
    base "tar" path="rootfs.tar"
}
image "one" extends="common" {
    run "echo one > /etc/variant"
    output "tar"
}
image "two" extends="common" {
    run "echo two > /etc/variant"
    output "tar"
}
"#;

fn variants() -> Workspace {
    let w = Workspace::new();
    w.rootfs_tar("rootfs.tar");
    w.write("variants.kdl", VARIANTS);
    w
}

/// The README's sample diagnostic is what `check` prints, character for character.
#[test]
fn the_readme_sample_diagnostic_is_what_check_prints() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let sample = readme
        .split("a help line, all at once:\n\n```\n")
        .nth(1)
        .and_then(|s| s.split("\n```").next())
        .expect("README has the sample diagnostic");
    let w = Workspace::new();
    w.rootfs_tar("rootfs.tar");
    w.write(
        "bad.kdl",
        "image \"x\" {\n    base \"tar\" path=\"rootfs.tar\"\n    outptu \"tar\"\n    output \"tar\"\n}\n",
    );
    let r = w.run(&["check", "bad.kdl"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    let printed: Vec<&str> = r.stderr.lines().map(str::trim_end).collect();
    let printed = printed.join("\n");
    assert!(
        printed.contains(sample),
        "README sample:\n{sample}\n--- check printed:\n{printed}"
    );
}

/// `(started, finished)` step events of a `--json` build, in order.
fn step_events(stdout: &str) -> Vec<(String, String)> {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|e| {
            let ev = e["event"].as_str()?.to_string();
            let label = e["label"].as_str()?.to_string();
            Some((ev, label))
        })
        .collect()
}

/// Most steps running at once, from the events.
fn most_at_once(events: &[(String, String)]) -> usize {
    let (mut now, mut most) = (0usize, 0usize);
    for (ev, _) in events {
        match ev.as_str() {
            "step-started" => {
                now += 1;
                most = most.max(now);
            }
            "step-finished" | "step-failed" => now = now.saturating_sub(1),
            _ => {}
        }
    }
    most
}

#[test]
fn jobs_bounds_how_many_steps_run_at_once() {
    let w = Workspace::new();
    w.rootfs_tar_with("rootfs.tar", &["sleep"], &[]);
    // Two independent slow steps: with two workers they overlap, with one they cannot.
    w.write(
        "slow.kdl",
        &VARIANTS
            .replace("echo one", "sleep 1; echo one")
            .replace("echo two", "sleep 1; echo two"),
    );
    let r = w
        .run_with_cache("cache-1", &["--json", "build", "slow.kdl", "-j", "1"])
        .ok();
    let one = step_events(&r.stdout);
    assert!(
        one.iter().filter(|(e, _)| e == "step-started").count() >= 4,
        "{}",
        r.stdout
    );
    assert_eq!(most_at_once(&one), 1, "{}", r.stdout);
    let r = w
        .run_with_cache("cache-2", &["--json", "build", "slow.kdl", "--jobs", "2"])
        .ok();
    assert_eq!(most_at_once(&step_events(&r.stdout)), 2, "{}", r.stdout);
}

#[test]
fn image_builds_only_the_named_image() {
    let w = variants();
    let r = w.run(&["build", "variants.kdl", "--image", "two"]).ok();
    assert!(w.path("out/two/two.tar").exists(), "{}", r.stderr);
    assert!(!w.path("out/one").exists(), "{}", r.stderr);
    // base, run, output, SBOM and manifest of `two` only.
    assert!(r.stderr.contains("5 steps built, 0 cached"), "{}", r.stderr);
    let r = w.run(&["build", "variants.kdl", "--image", "three"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("three"), "{}", r.stderr);
}

#[test]
fn verify_keep_keeps_the_scratch_store() {
    let w = variants();
    let r = w
        .run(&["verify", "variants.kdl", "--image", "one", "--keep"])
        .ok();
    let kept = r
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("verify: scratch store kept at `"))
        .and_then(|l| l.strip_suffix('`'))
        .unwrap_or_else(|| panic!("{}", r.stderr));
    let kept = std::path::Path::new(kept);
    assert!(kept.join("index-v1.sqlite").exists(), "{}", kept.display());
    // Without --keep it is removed.
    let r = w.run(&["verify", "variants.kdl", "--image", "one"]).ok();
    assert!(!r.stderr.contains("scratch store kept"), "{}", r.stderr);
}

/// Makes every step record of `cache` look last used `days` ago.
fn age_records(w: &Workspace, cache: &str, days: i64) {
    let db = rusqlite::Connection::open(w.path(&format!("{cache}/index-v1.sqlite"))).unwrap();
    let n = db
        .execute(
            "UPDATE steps SET last_used = last_used - ?1",
            [days * 86_400],
        )
        .unwrap();
    assert!(n > 0);
}

#[test]
fn cache_gc_by_age_and_by_size_evicts_step_results() {
    let w = variants();
    w.run(&["build", "variants.kdl"]).ok();
    // Nothing is older than a day yet.
    let gc = w
        .run(&["cache", "gc", "--older-than-days", "1"])
        .ok()
        .stdout;
    assert!(gc.contains("removed 0 step results"), "{gc}");
    age_records(&w, "cache", 3);
    let gc = w
        .run(&["cache", "gc", "--older-than-days", "2"])
        .ok()
        .stdout;
    assert!(gc.contains("removed 9 step results"), "{gc}");
    let r = w.run(&["build", "variants.kdl"]).ok();
    assert!(r.stderr.contains("9 steps built, 0 cached"), "{}", r.stderr);

    // By size: a cache over the limit loses its least recently used results until it fits; a
    // `.deb` of the deb store is never collected that way (it may be the only copy left).
    let sha = "ab".repeat(32);
    w.write(&format!("cache/debs-v1/ab/{sha}.deb"), "a locked package");
    let gc = w.run(&["cache", "gc", "--max-size", "1KiB"]).ok().stdout;
    let removed: usize = gc
        .split("removed ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{gc}"));
    assert!(removed > 0, "{gc}");
    assert!(w.path(&format!("cache/debs-v1/ab/{sha}.deb")).exists());
    let du = w.run(&["cache", "du"]).ok().stdout;
    assert!(!du.contains(" 9 step results"), "{du}");
}

#[test]
fn a_zstd_compressed_tarball_is_a_base() {
    let w = Workspace::new();
    w.rootfs_tar("rootfs.tar");
    let tar = std::fs::read(w.path("rootfs.tar")).unwrap();
    std::fs::write(
        w.path("rootfs.tar.zst"),
        zstd::encode_all(tar.as_slice(), 3).unwrap(),
    )
    .unwrap();
    let spec = |path: &str| {
        format!("image \"z\" {{\n    base \"tar\" path=\"{path}\"\n    run \"echo z > /etc/z\"\n    output \"tar\"\n}}\n")
    };
    w.write("plain.kdl", &spec("rootfs.tar"));
    w.write("zst.kdl", &spec("rootfs.tar.zst"));
    w.run_with_cache("cache-a", &["build", "zst.kdl", "--out-dir", "out-zst"])
        .ok();
    w.run_with_cache("cache-b", &["build", "plain.kdl", "--out-dir", "out-plain"])
        .ok();
    // The same tree whichever way it came.
    assert_eq!(
        sha256(&w.path("out-zst/z/z.tar")),
        sha256(&w.path("out-plain/z/z.tar"))
    );
    // Not a zstd frame: a clear error naming the file.
    std::fs::write(w.path("rootfs.tar.zst"), b"this is not zstd").unwrap();
    let r = w.run_with_cache("cache-c", &["build", "zst.kdl"]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("rootfs.tar.zst"), "{}", r.stderr);
}

#[test]
fn compressed_qcow2_holds_the_same_disk_in_compressed_clusters() {
    let w = Workspace::new();
    w.rootfs_tar("rootfs.tar");
    let spec = |compress: &str| {
        format!(
            r#"image "d" {{
    base "tar" path="rootfs.tar"
    disk table="gpt" size="64MiB" {{
        partition "root" type="root" format="ext4" mount="/"
    }}
    output "qcow2"{compress} "raw"
}}
"#
        )
    };
    w.write("plain.kdl", &spec(""));
    w.write("zlib.kdl", &spec(" compress=#true"));
    w.run(&["build", "plain.kdl", "--out-dir", "out-plain"])
        .ok();
    w.run(&["build", "zlib.kdl", "--out-dir", "out-zlib"]).ok();
    let qemu_img = |args: &[&str]| {
        let o = Command::new("qemu-img").args(args).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let zlib = w.path("out-zlib/d/d.qcow2");
    let plain = w.path("out-plain/d/d.qcow2");
    let check = qemu_img(&["check", zlib.to_str().unwrap()]);
    let compressed: f64 = check
        .split("% compressed clusters")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{check}"));
    assert!(compressed > 0.0, "{check}");
    assert!(
        !qemu_img(&["check", plain.to_str().unwrap()]).contains("compressed clusters")
            || qemu_img(&["check", plain.to_str().unwrap()]).contains("0.00% compressed")
    );
    // The same disk as the raw output, in fewer bytes; and the raw disk is the same either way.
    qemu_img(&[
        "compare",
        zlib.to_str().unwrap(),
        w.path("out-zlib/d/d.raw").to_str().unwrap(),
    ]);
    assert_eq!(
        sha256(&w.path("out-zlib/d/d.raw")),
        sha256(&w.path("out-plain/d/d.raw"))
    );
    let size = |p: &std::path::Path| std::fs::metadata(p).unwrap().len();
    assert!(
        size(&zlib) < size(&plain),
        "{} vs {}",
        size(&zlib),
        size(&plain)
    );
}

#[test]
fn doctor_prints_the_install_line_for_what_is_missing() {
    let w = Workspace::new();
    w.write(
        "deb.kdl",
        "image \"d\" {\n    base \"debian\" suite=\"bookworm\"\n    output \"tar\"\n}\n",
    );
    let r: crate::common::Run = Command::new(env!("CARGO_BIN_EXE_imgspec"))
        .args(["doctor", "deb.kdl"])
        .current_dir(w.dir.path())
        .env("IMGSPEC_CACHE_DIR", w.path("cache"))
        .env("PATH", w.path("empty-path"))
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
        .into();
    assert_eq!(r.code, 3, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("mmdebstrap") && r.stdout.contains("MISSING"),
        "{}",
        r.stdout
    );
    assert!(
        r.stderr.contains("apt-get install mmdebstrap"),
        "{}",
        r.stderr
    );
    // With the tools there, every one is found.
    let r = w.run(&["doctor", "deb.kdl"]).ok();
    assert!(r.stdout.contains("all host tools found"), "{}", r.stdout);
}

#[test]
fn an_interrupted_build_exits_130_and_leaves_nothing_half_written() {
    let w = Workspace::new();
    w.rootfs_tar_with("rootfs.tar", &["sleep"], &[]);
    // A unique argument, to find the step's processes: the sleep itself (`sleep NAP`) and
    // the sandbox and shell that run it (`sleep NAP` as one argument).
    let nap = format!(
        "{}.{:06}",
        600 + std::process::id() % 300,
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_micros()
    );
    let command = format!("sleep {nap}");
    let step_processes = || processes_where(|a| a == nap || a == command);
    w.write(
        "slow.kdl",
        &format!(
            "image \"slow\" {{\n    base \"tar\" path=\"rootfs.tar\"\n    run \"sleep {nap}\"\n    output \"tar\"\n}}\n"
        ),
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_imgspec"))
        .args(["--json", "build", "slow.kdl"])
        .current_dir(w.dir.path())
        .env("IMGSPEC_CACHE_DIR", w.path("cache"))
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait for the run step to start (its event), then Ctrl-C.
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    loop {
        let line = lines
            .next()
            .expect("the build ended before its run step")
            .unwrap();
        if line.contains("\"step-started\"") && line.contains("sleep") {
            break;
        }
    }
    let t = Instant::now();
    let running = loop {
        let found = step_processes();
        if found
            .iter()
            .any(|p| p.args.first().is_some_and(|a| a == "sleep"))
        {
            break found;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the step's sleep never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let status = ctrl_c(
        &mut child,
        Duration::from_secs(60),
        "Ctrl-C did not stop the build",
    );
    assert_eq!(status.code(), Some(130));
    // Nothing half-written: no output folder, no record of the step, no process left.
    assert!(!w.path("out/slow").exists());
    // The very processes that ran (a later one with the same pid is not theirs: it would
    // not have the argument).
    let t = Instant::now();
    loop {
        let left: Vec<&Process> = running.iter().filter(|p| p.alive()).collect();
        if left.is_empty() {
            break;
        }
        if t.elapsed() > Duration::from_secs(30) {
            let what: Vec<String> = left
                .iter()
                .map(|p| format!("{} ({:?}): {}", p.pid, p.state(), p.args.join(" ")))
                .collect();
            panic!("step processes alive 30 s after exit 130: {what:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let plan = w.run(&["plan", "slow.kdl"]).ok().stdout;
    let run_line = plan
        .lines()
        .find(|l| l.contains("sleep"))
        .unwrap_or_else(|| panic!("{plan}"));
    assert!(!run_line.contains("cached"), "{plan}");
    let locks = w.path("cache/locks");
    if locks.exists() {
        assert_eq!(
            std::fs::read_dir(&locks).unwrap().count(),
            0,
            "lock files left"
        );
    }
}

/// Sends `child` a Ctrl-C (SIGINT) and waits for it to exit, failing with `why` (and killing
/// it) after `within`.
fn ctrl_c(
    child: &mut std::process::Child,
    within: Duration,
    why: &str,
) -> std::process::ExitStatus {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let t = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if t.elapsed() > within {
            // Not left running after the test.
            let _ = child.kill();
            let _ = child.wait();
            panic!("{why}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts `imgspec ARGS` in `w` (stderr to a file, returned) and waits until `reached`, for at
/// most a minute; fails if the build ends first.
fn build_until(
    w: &Workspace,
    args: &[&str],
    reached: impl Fn() -> bool,
    what: &str,
) -> (std::process::Child, std::path::PathBuf) {
    let log = w.path("build.stderr");
    let mut child = Command::new(env!("CARGO_BIN_EXE_imgspec"))
        .args(args)
        .current_dir(w.dir.path())
        .env("IMGSPEC_CACHE_DIR", w.path("cache"))
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        // A file, not a pipe nobody reads while it runs.
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while !reached() {
        if let Some(s) = child.try_wait().unwrap() {
            let err = std::fs::read_to_string(&log).unwrap();
            panic!("the build ended ({s}) before {what}:\n{err}");
        }
        if t.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("not within a minute: {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, log)
}

/// A server on the loopback that reads each request and gives the connection, on a thread of
/// its own, to `answer` with a shared counter. Returns its port and the counter.
fn loopback_server(
    answer: impl Fn(&mut std::net::TcpStream, &AtomicUsize) + Send + Sync + 'static,
) -> (u16, Arc<AtomicUsize>) {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let counter = Arc::new(AtomicUsize::new(0));
    let count = counter.clone();
    let answer = Arc::new(answer);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let (count, answer) = (count.clone(), answer.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf);
                answer(&mut conn, &count);
            });
        }
    });
    (port, counter)
}

/// A mirror that answers every request after `delay`, with a 404, and counts the requests.
fn slow_mirror(delay: Duration) -> (u16, Arc<AtomicUsize>) {
    loopback_server(move |conn, count| {
        use std::io::Write;
        count.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(delay);
        let _ = conn
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    })
}

#[test]
fn ctrl_c_while_locked_packages_download_stops_the_fetch() {
    let w = Workspace::new();
    let status = Command::new("cp")
        .args(["-r", concat!(env!("CARGO_MANIFEST_DIR"), "/specs")])
        .arg(w.dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    // The locked spec's 96 base files, from a mirror that takes 2 s a file: 48 s of fetching
    // four at a time, unless Ctrl-C stops it.
    let (port, served) = slow_mirror(Duration::from_secs(2));
    let common = w.path("specs/debian-common.kdl");
    let text = std::fs::read_to_string(&common).unwrap();
    let pinned = text.replace(
        "base \"debian\" suite=\"bookworm\" variant=\"minbase\"",
        &format!(
            "base \"debian\" suite=\"bookworm\" variant=\"minbase\" mirror=\"http://127.0.0.1:{port}/debian\""
        ),
    );
    assert_ne!(
        pinned, text,
        "the base line of specs/debian-common.kdl moved"
    );
    std::fs::write(&common, pinned).unwrap();
    let (mut child, log) = build_until(
        &w,
        &["--json", "build", "specs/debian-efi.kdl"],
        || served.load(Ordering::SeqCst) > 0,
        "it fetched anything",
    );
    let status = ctrl_c(
        &mut child,
        Duration::from_secs(20),
        "Ctrl-C did not stop the fetch within 20 s (all of it takes 48 s)",
    );
    let err = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(130), "{err}");
    // The downloads on the way finished; none started after the Ctrl-C but those.
    let asked = served.load(Ordering::SeqCst);
    assert!(asked <= 12, "{asked} files asked for after Ctrl-C:\n{err}");
    assert!(!w.path("out/debian-efi").exists());
}

/// A server whose one file (`/disk.qcow2`, said to be 1 GiB) comes 64 KiB every 50 ms: 13
/// minutes for the whole. Returns its port and how many chunks it has sent.
fn trickle_server() -> (u16, Arc<AtomicUsize>) {
    loopback_server(|conn, count| {
        use std::io::Write;
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            1u64 << 30
        );
        if conn.write_all(head.as_bytes()).is_err() {
            return;
        }
        let chunk = vec![0u8; 64 << 10];
        while conn.write_all(&chunk).is_ok() {
            count.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(50));
        }
    })
}

#[test]
fn ctrl_c_during_a_disk_download_stops_it_and_leaves_no_part_file() {
    let w = Workspace::new();
    let (port, sent) = trickle_server();
    w.write(
        "cloud.kdl",
        &format!(
            "image \"cloud\" {{\n    base \"image\" url=\"http://127.0.0.1:{port}/disk.qcow2\" sha256=\"{}\"\n    output \"tar\"\n}}\n",
            "ab".repeat(32)
        ),
    );
    let (mut child, log) = build_until(
        &w,
        &["build", "cloud.kdl"],
        || sent.load(Ordering::SeqCst) >= 4,
        "the download was under way",
    );
    let status = ctrl_c(
        &mut child,
        Duration::from_secs(20),
        "Ctrl-C did not stop the download within 20 s (all of it takes 13 minutes)",
    );
    let err = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(!w.path("out/cloud").exists());
    // Neither the disk nor a piece of it is left in the cache.
    let left: Vec<_> = std::fs::read_dir(w.path("cache/images-v1"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left in the cache: {left:?}");
}
