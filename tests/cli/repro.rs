//! Reproducibility across environments.
//!
//! - The default spec built twice from two empty caches, the second time under another host
//!   name (`unshare --uts`), umask, `TMPDIR`, working directory and spec folder, gives the same
//!   bytes in every output file, and those are the committed `specs/debian-efi.SHA256SUMS`
//!   (minutes, network and root: `--include-ignored`).
//! - Debian's `reprotest` (the reproducible-builds project's own tool) builds a network-free
//!   spec twice with every variation this machine supports, and `imgspec verify` runs inside
//!   each build, so a leak between layers fails too (default run); and the locked
//!   `specs/debian-efi.kdl` the same way (`--include-ignored`).
//! - The Secure Boot image built twice from two empty caches and spec folders gives the same
//!   bytes (`--include-ignored`; the arm64 images are checked so in `debian.rs`, beside their
//!   boot, to build them under emulation twice rather than three times).

use std::process::Command;

use std::path::Path;

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
#[ignore = "builds the locked default image twice: minutes, root and the host's apt mirror"]
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
    if a.code != 0 {
        locked_build_failed(&a.stderr);
    }

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
    if fa != fb {
        let steps = manifest_steps_that_differ(
            &w.path("out-a/debian-efi/debian-efi.manifest.json"),
            &w.path("out-b/debian-efi/debian-efi.manifest.json"),
        );
        panic!("the two builds differ\n{table}{steps}");
    }

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

    // And they are the bytes of the day the lock was written.
    has_the_committed_sums(&w.path("out-a/debian-efi/SHA256SUMS"));
}

/// A spec with every kind of step that needs no network: a tarball base, a folder of files
/// (many entries, for the file-order variation), a `run` command that creates files (their
/// owner and group, for the user and group variation), an ext4 and a FAT filesystem (mke2fs
/// and mtools: the clock, the time zone), a GPT disk, and tar, raw and qcow2 outputs.
const REPROTEST_SPEC: &str = r#"
image "mini" {
    base "tar" path="rootfs.tar"
    files "overlay/"
    run "mkdir -p /srv/made && echo built > /srv/made/by-run && chmod 600 /srv/made/by-run && touch /srv/made/empty && ls /srv/data > /srv/made/listing"
    disk table="gpt" size="64MiB" {
        partition "esp" type="esp" size="16MiB" format="vfat" mount="/boot/efi"
        partition "root" type="root" format="ext4" mount="/"
    }
    output "tar" "raw" "qcow2"
}
"#;

/// reprotest's variations (`+all` is these), with what each needs on this machine: None when
/// it can be applied, else why not.
fn variations() -> Vec<(&'static str, Option<String>)> {
    let has = |p: &str| {
        ["/usr/bin", "/bin", "/usr/sbin", "/sbin"]
            .iter()
            .any(|d| Path::new(d).join(p).exists())
    };
    let need = |progs: &[&str], pkg: &str| -> Option<String> {
        let missing: Vec<&str> = progs.iter().copied().filter(|p| !has(p)).collect();
        (!missing.is_empty())
            .then(|| format!("{} missing (apt-get install {pkg})", missing.join(", ")))
    };
    let fuse = if !Path::new("/dev/fuse").exists() {
        Some("no /dev/fuse: disorderfs needs FUSE".to_string())
    } else {
        need(&["disorderfs", "fusermount"], "disorderfs")
    };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    vec![
        ("environment", None),
        ("build_path", None),
        ("kernel", need(&["setarch"], "util-linux")),
        ("aslr", need(&["setarch"], "util-linux")),
        (
            "num_cpus",
            (cpus < 2).then(|| format!("{cpus} CPU: nothing to vary")),
        ),
        ("time", need(&["faketime"], "faketime")),
        ("user_group", need(&["sudo"], "sudo")),
        ("fileordering", fuse),
        ("domain_host", need(&["sudo", "unshare", "nsenter"], "sudo")),
        ("home", None),
        ("locales", None),
        ("exec_path", None),
        ("timezone", None),
        ("umask", None),
    ]
}

/// Runs reprotest on `src` with `build` as the build command and every variation this machine
/// supports (the others named on stderr; under `CI=true` none may be missing). The user and
/// group variation runs the second build as root with group `nogroup` (imgspec needs root:
/// the supplementary groups and the primary group are what vary), the host name variation
/// uses sudo with unshare. Returns reprotest's output; panics unless it says reproducible.
fn reprotest(
    src: &Path,
    build: &str,
    artifacts: &str,
    store: &Path,
    exclude: &[(&str, &str)],
) -> String {
    assert!(
        Path::new("/usr/bin/reprotest").exists(),
        "reprotest is missing: apt-get install reprotest (scripts/install-deps installs it)"
    );
    let vars: Vec<(&str, Option<String>)> = variations()
        .into_iter()
        .map(|(v, why)| {
            let ex = exclude
                .iter()
                .find(|(e, _)| *e == v)
                .map(|(_, w)| w.to_string());
            (v, why.or(ex))
        })
        .collect();
    let excluded: Vec<&str> = exclude.iter().map(|(v, _)| *v).collect();
    let skipped: Vec<String> = vars
        .iter()
        .filter_map(|(v, why)| why.as_ref().map(|w| format!("{v}: {w}")))
        .collect();
    if !skipped.is_empty() {
        eprintln!(
            "reprotest: variations this machine cannot apply:\n  {}",
            skipped.join("\n  ")
        );
        let missing: Vec<&String> = skipped
            .iter()
            .filter(|s| !excluded.iter().any(|e| s.starts_with(&format!("{e}:"))))
            .collect();
        assert!(
            missing.is_empty() || std::env::var("CI").as_deref() != Ok("true"),
            "CI must apply every variation: {missing:?}"
        );
    }
    let mut spec: Vec<String> = vec!["-all".into()];
    spec.extend(
        vars.iter()
            .filter(|(_, w)| w.is_none())
            .map(|(v, _)| format!("+{v}")),
    );
    let applied: Vec<&str> = vars
        .iter()
        .filter(|(_, w)| w.is_none())
        .map(|(v, _)| *v)
        .collect();
    // reprotest runs `sudo -h localhost …`, which Debian 12's sudo refuses ("a remote host may
    // only be specified when listing privileges") unless the machine's own name cannot be
    // resolved: on a machine with a proper name every sudo-based variation failed. The build
    // runs on this very host, so a `sudo` first on PATH drops the option and runs the real one.
    let shim = tempfile::tempdir().unwrap();
    let sudo = shim.path().join("sudo");
    std::fs::write(
        &sudo,
        "#!/bin/sh
if [ \"$1\" = -h ]; then shift 2; fi
exec /usr/bin/sudo \"$@\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&sudo, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        shim.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new("reprotest");
    cmd.env("PATH", path)
        .args(["--verbosity", "1", "--min-cpus", "1"])
        .arg(format!("--variations={}", spec.join(",")));
    if applied.contains(&"user_group") {
        cmd.arg("--vary=user_group.available+=root:nogroup");
    }
    if applied.contains(&"domain_host") {
        cmd.arg("--vary=domain_host.use_sudo=1");
    }
    let out = cmd
        .arg("--store-dir")
        .arg(store)
        .args(["-c", build])
        .arg(src)
        .arg(artifacts)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success() && stdout.contains("Reproduction successful"),
        "reprotest: not reproducible (status {})\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    // The second build varies each of them (reprotest's INFO line at verbosity 1), and those
    // that log their value did apply it.
    let experiment = stderr
        .lines()
        .find(|l| l.contains("build \"experiment-1\":"))
        .unwrap_or_else(|| panic!("no experiment build in reprotest's log:\n{stderr}"));
    for v in &applied {
        assert!(
            experiment.contains(&format!("vary {v}")),
            "{v} not varied: {experiment}"
        );
    }
    for (v, line) in [
        ("kernel", "KERNEL variation"),
        ("num_cpus", "NUM_CPUS variation"),
        ("time", "FAKETIME variation"),
        ("fileordering", "DISORDERFS variation"),
        ("domain_host", "DOMAIN_HOST variation"),
        ("locales", "LOCALE variation"),
        ("umask", "UMASK variation"),
    ] {
        if applied.contains(&v) {
            assert!(stderr.contains(line), "{v} was not applied:\n{stderr}");
        }
    }
    // `imgspec verify` ran inside both builds and passed.
    assert_eq!(
        stderr.matches("verify: all ").count(),
        2,
        "verify did not pass in both builds:\n{stderr}"
    );
    let table = format!(
        "reprotest: {} variations applied ({}), reproducible; not applied: {}\n",
        applied.len(),
        applied.join(", "),
        if skipped.is_empty() {
            "none".to_string()
        } else {
            skipped.join("; ")
        }
    );
    eprint!("{table}");
    let _ = std::fs::write(
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "reprotest-{}.txt",
            src.file_name().unwrap().to_string_lossy()
        )),
        format!("{table}{stdout}"),
    );
    stdout
}

/// The build command reprotest runs in its copy of the source folder: a build into an empty
/// cache of its own (a `mktemp -d` folder, mode 0700, outside the folder that the file-order
/// variation mounts through FUSE), then `imgspec verify` in the same cache.
/// With `debs`, the cache's `.deb` store is that shared folder (locked packages are inputs,
/// like the mirror: fetched once for both builds).
fn build_command(specs: &str, debs: Option<&Path>) -> String {
    let link = debs.map_or(String::new(), |d| {
        format!("ln -s '{}' \"$cache/debs-v1\"; ", d.display())
    });
    format!(
        "set -e; cache=$(mktemp -d); trap 'rm -rf \"$cache\"' EXIT; {link}\
         '{bin}' --cache-dir \"$cache\" build {specs} --out-dir out; \
         '{bin}' --cache-dir \"$cache\" verify {specs}",
        bin = env!("CARGO_BIN_EXE_imgspec"),
    )
}

#[test]
fn reprotest_finds_nothing_of_the_host_in_a_network_free_build() {
    let w = Workspace::new();
    w.write("src/mini.kdl", REPROTEST_SPEC);
    w.rootfs_tar("src/rootfs.tar");
    w.write("src/overlay/etc/motd", "hello\n");
    for i in 0..40 {
        w.write(&format!("src/overlay/srv/data/f{i}"), &format!("{i}\n"));
        w.write(
            &format!("src/overlay/boot/efi/EFI/imgspec/e{i}.txt"),
            &format!("e{i}\n"),
        );
    }
    let out = reprotest(
        &w.path("src"),
        &build_command("mini.kdl", None),
        "out/mini/*",
        &w.path("reprotest-store"),
        &[],
    );
    for f in [
        "SHA256SUMS",
        "mini.tar",
        "mini.raw",
        "mini.qcow2",
        "mini.manifest.json",
    ] {
        assert!(
            out.contains(&format!("./out/mini/{f}\n")),
            "{f} not compared:\n{out}"
        );
    }
}

#[test]
#[ignore = "builds the locked specs/debian-efi.kdl twice under reprotest: minutes, root and the host's apt mirror"]
fn reprotest_finds_nothing_of_the_host_in_the_locked_default_image() {
    let w = Workspace::new();
    copy_specs(&w, "src");
    let specs = w.path("src/specs");
    assert!(
        specs.join("debian-efi.kdl.lock").exists(),
        "specs/debian-efi.kdl.lock is missing: `imgspec lock specs/debian-efi.kdl` writes it"
    );
    std::fs::create_dir_all(w.path("debs")).unwrap();
    let out = reprotest(
        &specs,
        &build_command("debian-efi.kdl", Some(&w.path("debs"))),
        "out/debian-efi/*",
        &w.path("reprotest-store"),
        // reprotest varies the kernel with `setarch --uname-2.6`, and libc6's preinst
        // refuses to install on a kernel older than 3.2.
        &[(
            "kernel",
            "setarch --uname-2.6 makes libc6's preinst refuse the kernel (it needs >= 3.2)",
        )],
    );
    for f in [
        "SHA256SUMS",
        "debian-efi.qcow2",
        "debian-efi.raw",
        "debian-efi.manifest.json",
    ] {
        assert!(
            out.contains(&format!("./out/debian-efi/{f}\n")),
            "{f} not compared:\n{out}"
        );
    }
}

/// The committed sums of the locked default image: what every build of
/// `specs/debian-efi.kdl` with `specs/debian-efi.kdl.lock` must give, on any machine, any day.
const COMMITTED_SUMS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/specs/debian-efi.SHA256SUMS");

/// How to move the lock and the sums on, as one reviewable change.
const REFRESH: &str = "refresh the lock and the sums together, as one reviewable change: \
    `imgspec lock specs/debian-efi.kdl --update && imgspec build specs/debian-efi.kdl && \
    cp out/debian-efi/SHA256SUMS specs/debian-efi.SHA256SUMS && \
    cp out/debian-efi/debian-efi.manifest.json specs/`, then commit \
    specs/debian-efi.kdl.lock, specs/debian-efi.SHA256SUMS and specs/debian-efi.manifest.json";

/// Fails the test for a build of the locked default spec that failed. When the mirror dropped
/// a locked package (superseded security updates are removed), it says exactly which, and how
/// to move on; it never passes.
fn locked_build_failed(stderr: &str) -> ! {
    if stderr.contains("neither in the cache nor on the mirror") {
        let gone: Vec<&str> = stderr
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with('`') && l.contains(" of step `"))
            .collect();
        panic!(
            "the mirror no longer has {} locked package(s):\n  {}\n{REFRESH}",
            gone.len(),
            gone.join("\n  ")
        );
    }
    panic!("the locked build failed:\n{stderr}");
}

/// Checks that `sums`, the `SHA256SUMS` of a build of the locked default spec from an empty
/// cache, are the committed ones.
fn has_the_committed_sums(sums: &Path) {
    let expected = std::fs::read_to_string(COMMITTED_SUMS)
        .unwrap_or_else(|e| panic!("{COMMITTED_SUMS}: {e}; {REFRESH}"));
    let got = std::fs::read_to_string(sums).unwrap();
    let lines = |t: &str| -> Vec<String> { t.lines().map(str::to_string).collect() };
    let differ: Vec<String> = lines(&expected)
        .into_iter()
        .filter(|l| !got.lines().any(|g| g == l))
        .collect();
    let table = format!("committed sums vs this build:\n{got}");
    let _ = std::fs::write(
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("committed-sums.txt"),
        &table,
    );
    assert!(
        differ.is_empty() && lines(&expected).len() == lines(&got).len(),
        "today's bytes are not those of the day the lock was written:\n  committed: {differ:?}\n  \
         this build:\n{got}\n`imgspec verify specs/debian-efi.kdl --against \
         specs/debian-efi.SHA256SUMS` names the first step that differs (from the committed \
         manifest beside the sums); if the tool versions changed on purpose, {REFRESH}"
    );
    eprintln!(
        "the locked default image has the committed sums ({} files)",
        lines(&got).len()
    );
}

/// Builds `spec` (a file of `specs/`) from two empty caches, the second from another folder
/// and working directory, and compares every output file of each of `images`.
fn two_cold_builds_agree(spec: &str, images: &[&str]) {
    let w = Workspace::new();
    copy_specs(&w, "a");
    copy_specs(&w, "elsewhere/b");
    let mut runs = Vec::new();
    for (cache, folder, out) in [
        ("cache-a", "a", "out-a"),
        ("cache-b", "elsewhere/b", "out-b"),
    ] {
        let t = std::time::Instant::now();
        let r = w.run_with_cache(
            cache,
            &["build", &format!("{folder}/specs/{spec}"), "--out-dir", out],
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
        runs.push(t.elapsed());
    }
    let mut table = format!("{spec}: two builds from empty caches ({runs:.0?}):\n");
    for image in images {
        let fa = files(&w.path(&format!("out-a/{image}")));
        let fb = files(&w.path(&format!("out-b/{image}")));
        assert!(fa.len() >= 4, "{image}: {fa:?}");
        for ((name, sa), (_, sb)) in fa.iter().zip(&fb) {
            table.push_str(&format!(
                "  {image}/{name:<36} {sa}  {}\n",
                if sa == sb { "identical" } else { "DIFFERENT" }
            ));
        }
        if fa != fb {
            let steps = manifest_steps_that_differ(
                &w.path(&format!("out-a/{image}/{image}.manifest.json")),
                &w.path(&format!("out-b/{image}/{image}.manifest.json")),
            );
            panic!("{image}: the two builds differ\n{table}{steps}");
        }
    }
    eprint!("{table}");
}

#[test]
#[ignore = "builds the Secure Boot image twice from empty caches: minutes, root and the host's apt mirror"]
fn the_secure_boot_image_gives_the_same_bytes_from_two_empty_caches() {
    two_cold_builds_agree("debian-efi-secureboot.kdl", &["debian-efi-secureboot"]);
}

/// The steps whose key or output differs between two build manifests, for a message (both
/// manifests are kept in the target's tmp folder too, for a look afterwards).
fn manifest_steps_that_differ(a: &Path, b: &Path) -> String {
    let read = |p: &Path| -> serde_json::Value {
        std::fs::read(p)
            .ok()
            .and_then(|t| serde_json::from_slice(&t).ok())
            .unwrap_or_default()
    };
    let (ma, mb) = (read(a), read(b));
    for (m, side) in [(&ma, "a"), (&mb, "b")] {
        let _ = std::fs::write(
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("differing-manifest-{side}.json")),
            serde_json::to_vec_pretty(m).unwrap_or_default(),
        );
    }
    let steps = |m: &serde_json::Value| m["steps"].as_array().cloned().unwrap_or_default();
    let mut out = String::from("steps of the build manifests that differ:\n");
    for (sa, sb) in steps(&ma).iter().zip(steps(&mb).iter()) {
        if sa != sb {
            out.push_str(&format!("  a: {sa}\n  b: {sb}\n"));
        }
    }
    for key in ["tools", "spec", "lock", "epoch"] {
        if ma[key] != mb[key] {
            out.push_str(&format!("  {key}: {} / {}\n", ma[key], mb[key]));
        }
    }
    out
}
