//! The remote cache against a real nginx (WebDAV PUT on loopback, started here with its own
//! config and root), and bundles. No network: the specs are built from host binaries.

use std::io::{BufRead, BufReader, Read};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{files_containing, sha256, Run, Workspace};

const SPEC: &str = r#"
image "mini" {
    base "tar" path="rootfs.tar"
    files "overlay/" dest="/"
    run "echo built > /etc/built-by-run"
    output "tar"
}
"#;

/// Steps of SPEC: base, files, run, output, and the SBOM and manifest every build writes.
const STEPS: usize = 6;

const USER: &str = "ci-robot";
const SECRET: &str = "s3cret-Pa55word";

fn mini() -> Workspace {
    let w = Workspace::new();
    w.rootfs_tar("rootfs.tar");
    w.write("mini.kdl", SPEC);
    w.write("overlay/etc/motd", "hello\n");
    w
}

/// How the test server answers.
#[derive(Clone, Copy)]
enum Answer {
    /// WebDAV GET/HEAD/PUT.
    Serve,
    /// The same behind basic auth.
    BasicAuth,
    /// This HTTP status for every request (403, 500, 503…).
    Status(u16),
}

/// nginx serving a temp root with WebDAV PUT, optionally behind basic auth; killed on drop.
pub(crate) struct Nginx {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Nginx {
    /// `None` when nginx is not installed here: under CI that fails the test instead, naming
    /// the package (`scripts/install-deps` installs it).
    pub(crate) fn start(basic_auth: bool) -> Option<Nginx> {
        let auth = if basic_auth {
            Answer::BasicAuth
        } else {
            Answer::Serve
        };
        Nginx::start_answering(auth)
    }

    /// nginx that answers every request with `answer`.
    fn start_answering(answer: Answer) -> Option<Nginx> {
        if !imgspec::tools::test_requires(&["nginx"]) {
            return None;
        }
        let bin = Path::new("/usr/sbin/nginx");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("root")).unwrap();
        std::fs::create_dir_all(d.join("body")).unwrap();
        let port = free_port();
        let auth = match answer {
            Answer::BasicAuth => {
                std::fs::write(d.join("htpasswd"), format!("{USER}:{{PLAIN}}{SECRET}\n")).unwrap();
                format!(
                    "auth_basic \"imgspec\"; auth_basic_user_file {}/htpasswd;",
                    d.display()
                )
            }
            Answer::Status(code) => format!("return {code};"),
            Answer::Serve => String::new(),
        };
        let conf = format!(
            "daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/body;
    fastcgi_temp_path {d}/body;
    uwsgi_temp_path {d}/body;
    scgi_temp_path {d}/body;
    server {{
        listen 127.0.0.1:{port};
        root {d}/root;
        client_max_body_size 0;
        location / {{
            dav_methods PUT;
            create_full_put_path on;
            dav_access user:rw group:r all:r;
            {auth}
        }}
    }}
}}
",
            d = d.display()
        );
        std::fs::write(d.join("nginx.conf"), conf).unwrap();
        let child = Command::new(bin)
            .arg("-p")
            .arg(d)
            .arg("-c")
            .arg(d.join("nginx.conf"))
            .arg("-e")
            .arg(d.join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let n = Nginx {
            child: Some(child),
            dir,
            port,
        };
        let t = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "nginx did not start: {}",
                std::fs::read_to_string(n.dir.path().join("error.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(n)
    }

    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}/imgspec-cache", self.port)
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root/imgspec-cache")
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `imgspec ARGS` with the cache at `cache`, extra environment, and a config home of its own
/// (no config file unless the test writes one).
fn imgspec(w: &Workspace, cache: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
    imgspec_cmd(w, cache, args, env).output().unwrap().into()
}

fn imgspec_cmd(w: &Workspace, cache: &str, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_imgspec"));
    c.args(args)
        .current_dir(w.dir.path())
        .env("IMGSPEC_CACHE_DIR", w.path(cache))
        .env("XDG_CONFIG_HOME", w.path("config"))
        .env("NO_COLOR", "1");
    for v in [
        "IMGSPEC_REMOTE",
        "IMGSPEC_REMOTE_USER",
        "IMGSPEC_REMOTE_PASSWORD",
        "IMGSPEC_REMOTE_TOKEN",
        "http_proxy",
        "HTTP_PROXY",
        "all_proxy",
        "ALL_PROXY",
    ] {
        c.env_remove(v);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

fn all(r: &Run) -> String {
    format!("{}\n{}", r.stdout, r.stderr)
}

/// The step records on the server: (kind, JSON).
fn server_records(n: &Nginx) -> Vec<(String, serde_json::Value)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(n.root().join("ac-v1")).unwrap().flatten() {
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap();
        out.push((v["kind"].as_str().unwrap().to_string(), v));
    }
    out
}

fn record_of<'a>(recs: &'a [(String, serde_json::Value)], kind: &str) -> &'a serde_json::Value {
    &recs
        .iter()
        .find(|(k, _)| k == kind)
        .unwrap_or_else(|| panic!("no `{kind}` record on the server"))
        .1
}

#[test]
fn a_warm_remote_fills_an_empty_cache_with_identical_bytes_and_keeps_credentials_secret() {
    let Some(n) = Nginx::start(true) else { return };
    let w = mini();
    let creds = [
        ("IMGSPEC_REMOTE_USER", USER),
        ("IMGSPEC_REMOTE_PASSWORD", SECRET),
    ];
    let url = n.url();

    // CI: builds and uploads.
    let mut args = vec!["build", "mini.kdl", "--out-dir", "out-a"];
    args.extend(["--remote", url.as_str(), "--remote-write"]);
    let a = imgspec(&w, "cache-a", &args, &creds).ok();
    assert!(
        a.stderr.contains(&format!("{STEPS} steps built, 0 cached")),
        "{}",
        a.stderr
    );
    assert_eq!(a.stderr.matches("uploaded ").count(), STEPS, "{}", a.stderr);
    assert_eq!(server_records(&n).len(), STEPS);

    // A developer with an empty cache, the remote from the config file: nothing is built.
    w.write(
        "config/imgspec/config.kdl",
        &format!("remote \"{}\"\n", n.url()),
    );
    let b = imgspec(
        &w,
        "cache-b",
        &["build", "mini.kdl", "--out-dir", "out-b"],
        &creds,
    )
    .ok();
    assert!(
        b.stderr.contains(&format!("0 steps built, {STEPS} cached")),
        "{}",
        b.stderr
    );
    assert!(
        b.stderr.contains("fetched  output tar") && b.stderr.contains("fetched from the remote"),
        "{}",
        b.stderr
    );
    assert!(
        !b.stderr.contains("uploaded"),
        "read-only by default: {}",
        b.stderr
    );
    assert_eq!(
        sha256(&w.path("out-a/mini/mini.tar")),
        sha256(&w.path("out-b/mini/mini.tar"))
    );
    // The fetched result is a local hit from now on, even without the remote.
    std::fs::remove_file(w.path("config/imgspec/config.kdl")).unwrap();
    let again = imgspec(
        &w,
        "cache-b",
        &["build", "mini.kdl", "--out-dir", "out-b"],
        &[],
    )
    .ok();
    assert!(
        again
            .stderr
            .contains(&format!("0 steps built, {STEPS} cached")),
        "{}",
        again.stderr
    );

    // Credentials in the URL, JSON events: a remote hit says so; the secret is nowhere.
    let in_url = n
        .url()
        .replace("http://", &format!("http://{USER}:{SECRET}@"));
    let c = imgspec(
        &w,
        "cache-c",
        &[
            "build",
            "mini.kdl",
            "--out-dir",
            "out-c",
            "--json",
            "--remote",
            &in_url,
        ],
        &[],
    )
    .ok();
    assert!(
        c.stdout.contains(r#""event":"step-cached""#) && c.stdout.contains(r#""source":"remote""#),
        "{}",
        c.stdout
    );
    // Wrong credentials: the server refuses, the build goes on locally and says so once,
    // without the secret.
    let bad = n
        .url()
        .replace("http://", &format!("http://{USER}:wrong-{SECRET}@"));
    let d = imgspec(
        &w,
        "cache-d",
        &["build", "mini.kdl", "--out-dir", "out-d", "--remote", &bad],
        &[],
    )
    .ok();
    assert_eq!(
        d.stderr.matches("is unavailable").count(),
        1,
        "{}",
        d.stderr
    );
    assert!(d.stderr.contains("HTTP 401"), "{}", d.stderr);
    assert!(
        d.stderr.contains(&format!("{STEPS} steps built")),
        "{}",
        d.stderr
    );

    let doc = imgspec(
        &w,
        "cache-d",
        &["doctor", "mini.kdl", "--remote", &url],
        &creds,
    );
    assert!(doc.stdout.contains("answers (read-only)"), "{}", doc.stdout);
    let doc_bad = imgspec(
        &w,
        "cache-d",
        &["doctor", "mini.kdl", "--remote", &bad],
        &[],
    );
    assert!(doc_bad.stdout.contains("HTTP 401"), "{}", doc_bad.stdout);
    for r in [&a, &b, &c, &d, &doc, &doc_bad] {
        assert!(!all(r).contains(SECRET), "secret printed: {}", all(r));
    }
    let leaks = files_containing(w.dir.path(), SECRET);
    assert!(leaks.is_empty(), "the secret is in {leaks:?}");
    let leaks = files_containing(&n.root(), SECRET);
    assert!(leaks.is_empty(), "the secret is on the server in {leaks:?}");
}

#[test]
fn a_corrupt_remote_object_is_refused_reported_once_and_the_step_rebuilt() {
    let Some(n) = Nginx::start(false) else { return };
    let w = mini();
    let url = n.url();
    imgspec(
        &w,
        "cache-a",
        &[
            "build",
            "mini.kdl",
            "--out-dir",
            "out-a",
            "--remote",
            &url,
            "--remote-write",
        ],
        &[],
    )
    .ok();
    let recs = server_records(&n);
    // The output step's tarball: cut in half (truncated). The run step's tree manifest:
    // another blob's valid bytes (wrong content).
    let tar_blob = record_of(&recs, "output")["output"]["files"]
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let run_tree = record_of(&recs, "run")["output"]["tree"]
        .as_str()
        .unwrap()
        .to_string();
    let files_tree = record_of(&recs, "files")["output"]["tree"]
        .as_str()
        .unwrap()
        .to_string();
    let tar_path = n.root().join("cas-v1").join(&tar_blob);
    let bytes = std::fs::read(&tar_path).unwrap();
    std::fs::write(&tar_path, &bytes[..bytes.len() / 2]).unwrap();
    std::fs::copy(
        n.root().join("cas-v1").join(&files_tree),
        n.root().join("cas-v1").join(&run_tree),
    )
    .unwrap();

    let b = imgspec(
        &w,
        "cache-b",
        &["build", "mini.kdl", "--out-dir", "out-b", "--remote", &url],
        &[],
    )
    .ok();
    for (object, label) in [(&tar_blob, "output tar"), (&run_tree, "run ")] {
        let lines: Vec<&str> = b
            .stderr
            .lines()
            .filter(|l| l.contains("refused"))
            .filter(|l| l.contains(label))
            .collect();
        assert_eq!(lines.len(), 1, "{label}: {}", b.stderr);
        assert_eq!(
            b.stderr.matches(&format!("cas-v1/{object}")).count(),
            1,
            "{}",
            b.stderr
        );
    }
    // The two refused steps are built here; the files step below them, and the SBOM and
    // manifest (whose own blobs are intact), came from the remote.
    assert!(
        b.stderr
            .contains(&format!("2 steps built, {} cached", STEPS - 2)),
        "{}",
        b.stderr
    );
    assert!(
        b.stderr.contains("fetched  files overlay/")
            && b.stderr.contains("(3 fetched from the remote cache)"),
        "{}",
        b.stderr
    );
    assert_eq!(
        sha256(&w.path("out-a/mini/mini.tar")),
        sha256(&w.path("out-b/mini/mini.tar"))
    );
    // Nothing wrong entered the store.
    let v = imgspec(&w, "cache-b", &["cache", "verify"], &[]).ok();
    assert!(v.stdout.contains(" 0 corrupt"), "{}", v.stdout);
}

#[test]
fn an_unreachable_remote_does_not_fail_the_build_and_is_reported_once() {
    let w = mini();
    let url = format!("http://127.0.0.1:{}/c", free_port());
    let r = imgspec(
        &w,
        "cache",
        &["build", "mini.kdl", "--remote", &url, "--remote-write"],
        &[],
    )
    .ok();
    assert_eq!(
        r.stderr.matches("is unavailable").count(),
        1,
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains(&format!("{STEPS} steps built")),
        "{}",
        r.stderr
    );
    let doc = imgspec(&w, "cache", &["doctor", "mini.kdl", "--remote", &url], &[]);
    assert!(
        doc.stdout
            .contains(&format!("remote cache: {url} UNAVAILABLE")),
        "{}",
        doc.stdout
    );
    // `cache push` cannot go on locally: it fails, saying where.
    let p = imgspec(
        &w,
        "cache",
        &["cache", "push", "mini.kdl", "--remote", &url],
        &[],
    );
    assert_eq!(p.code, 3, "{}", p.stderr);
    assert!(p.stderr.contains(&url), "{}", p.stderr);
}

#[test]
fn the_server_killed_mid_build_does_not_fail_it() {
    let Some(mut n) = Nginx::start(false) else {
        return;
    };
    let w = Workspace::new();
    w.rootfs_tar_with("rootfs.tar", &["sleep"], &[]);
    w.write(
        "mini.kdl",
        &SPEC.replace("echo built >", "sleep 3 && echo built >"),
    );
    w.write("overlay/etc/motd", "hello\n");
    let url = n.url();
    let mut child = imgspec_cmd(
        &w,
        "cache",
        &["build", "mini.kdl", "--remote", &url, "--remote-write"],
        &[],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    // Kill the server once it holds a first upload, while the run step sleeps.
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut log = String::new();
    loop {
        let mut line = String::new();
        let n_read = stderr.read_line(&mut line).unwrap();
        assert!(n_read > 0, "the build ended before any upload:\n{log}");
        log.push_str(&line);
        if line.contains("uploaded ") {
            break;
        }
    }
    let before_kill = server_records(&n).len();
    assert!(before_kill >= 1, "{log}");
    n.kill();
    stderr.read_to_string(&mut log).unwrap();
    let status = child.wait().unwrap();
    let r = Run {
        code: status.code().unwrap_or(-1),
        stdout: String::new(),
        stderr: log,
    };
    let r = r.ok();
    assert!(
        r.stderr.contains(&format!("{STEPS} steps built")),
        "{}",
        r.stderr
    );
    assert_eq!(
        r.stderr.matches("is unavailable").count(),
        1,
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.matches("uploaded ").count() < STEPS,
        "everything was uploaded before the kill: {}",
        r.stderr
    );
    assert!(w.path("out/mini/mini.tar").exists());
}

#[test]
fn push_then_pull_moves_what_a_spec_needs() {
    let Some(n) = Nginx::start(false) else { return };
    let w = mini();
    let url = n.url();
    imgspec(&w, "cache-a", &["build", "mini.kdl"], &[]).ok();
    let p = imgspec(
        &w,
        "cache-a",
        &["cache", "push", "mini.kdl", "--remote", &url],
        &[],
    )
    .ok();
    assert!(
        p.stderr.contains(&format!("pushed {STEPS} step results")),
        "{}",
        p.stderr
    );
    let p = imgspec(
        &w,
        "cache-a",
        &["cache", "push", "mini.kdl", "--remote", &url],
        &[],
    )
    .ok();
    assert!(
        p.stderr.contains("pushed 0 step results")
            && p.stderr.contains(&format!("{STEPS} already there")),
        "{}",
        p.stderr
    );
    let q = imgspec(
        &w,
        "cache-b",
        &["cache", "pull", "mini.kdl", "--remote", &url],
        &[],
    )
    .ok();
    assert!(
        q.stderr.contains(&format!("pulled {STEPS} step results")),
        "{}",
        q.stderr
    );
    let b = imgspec(
        &w,
        "cache-b",
        &["build", "mini.kdl", "--out-dir", "out-b"],
        &[],
    )
    .ok();
    assert!(
        b.stderr.contains(&format!("0 steps built, {STEPS} cached")),
        "{}",
        b.stderr
    );
    assert_eq!(
        sha256(&w.path("out/mini/mini.tar")),
        sha256(&w.path("out-b/mini/mini.tar"))
    );
}

#[test]
fn export_then_import_is_all_cache_hits_and_a_bad_bundle_is_refused() {
    let w = mini();
    imgspec(&w, "cache-a", &["build", "mini.kdl"], &[]).ok();
    let e = imgspec(
        &w,
        "cache-a",
        &["cache", "export", "mini.kdl", "-o", "bundle.tar.zst"],
        &[],
    )
    .ok();
    assert!(
        e.stderr.contains(&format!("exported {STEPS} step results")),
        "{}",
        e.stderr
    );
    // Deterministic: the same cache gives the same bundle.
    imgspec(
        &w,
        "cache-a",
        &["cache", "export", "mini.kdl", "-o", "again.tar.zst"],
        &[],
    )
    .ok();
    assert_eq!(
        sha256(&w.path("bundle.tar.zst")),
        sha256(&w.path("again.tar.zst"))
    );

    let bundle = std::fs::read(w.path("bundle.tar.zst")).unwrap();
    let mut flipped = bundle.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0xff;
    for (name, bytes) in [
        ("cut.tar.zst", &bundle[..bundle.len() * 2 / 3]),
        ("flipped.tar.zst", &flipped[..]),
    ] {
        std::fs::write(w.path(name), bytes).unwrap();
        let cache = format!("cache-{name}");
        let r = imgspec(&w, &cache, &["cache", "import", name], &[]);
        assert_eq!(r.code, 2, "{name}: {}", r.stderr);
        assert!(r.stderr.contains("refused"), "{name}: {}", r.stderr);
        assert!(
            r.stderr.contains("nothing from it was recorded"),
            "{}",
            r.stderr
        );
        let ls = imgspec(&w, &cache, &["cache", "ls"], &[]).ok();
        assert_eq!(ls.stdout, "", "{name}: half imported");
    }

    let i = imgspec(&w, "cache-b", &["cache", "import", "bundle.tar.zst"], &[]).ok();
    assert!(
        i.stderr.contains(&format!("imported {STEPS} step results")),
        "{}",
        i.stderr
    );
    let b = imgspec(
        &w,
        "cache-b",
        &["build", "mini.kdl", "--out-dir", "out-b"],
        &[],
    )
    .ok();
    assert!(
        b.stderr.contains(&format!("0 steps built, {STEPS} cached")),
        "{}",
        b.stderr
    );
    assert_eq!(
        sha256(&w.path("out/mini/mini.tar")),
        sha256(&w.path("out-b/mini/mini.tar"))
    );
}

#[test]
fn a_developer_without_root_builds_from_a_warm_remote() {
    let Some(n) = Nginx::start(false) else { return };
    let w = mini();
    let url = n.url();
    imgspec(
        &w,
        "cache-a",
        &["build", "mini.kdl", "--remote", &url, "--remote-write"],
        &[],
    )
    .ok();
    // The same workspace as user `nobody`: the run step would need root, but its result (and
    // the output's) is on the remote, so nothing needs root.
    use std::os::unix::fs::PermissionsExt;
    let open = |p: &Path, mode: u32| {
        std::fs::create_dir_all(p).unwrap();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    open(w.dir.path(), 0o755);
    open(&w.path("cache-b"), 0o777);
    open(&w.path("out-b"), 0o777);
    let c = imgspec_cmd(
        &w,
        "cache-b",
        &["build", "mini.kdl", "--out-dir", "out-b", "--remote", &url],
        &[],
    );
    let mut setpriv = Command::new("setpriv");
    setpriv
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(c.get_program())
        .args(c.get_args())
        .current_dir(w.dir.path());
    for (k, v) in c.get_envs() {
        match v {
            Some(v) => setpriv.env(k, v),
            None => setpriv.env_remove(k),
        };
    }
    let r: Run = setpriv.output().unwrap().into();
    let r = r.ok();
    assert!(
        r.stderr.contains(&format!("0 steps built, {STEPS} cached")),
        "{}",
        r.stderr
    );
    assert_eq!(
        sha256(&w.path("out/mini/mini.tar")),
        sha256(&w.path("out-b/mini/mini.tar"))
    );
}

/// The remote from `IMGSPEC_REMOTE`, and uploads turned on by the config file's
/// `remote-write`.
#[test]
fn the_remote_comes_from_the_environment_and_the_config_file_turns_uploads_on() {
    let Some(n) = Nginx::start(false) else { return };
    let w = mini();
    let url = n.url();
    // CI's config: remote and remote-write; no flag on the command line.
    w.write(
        "config/imgspec/config.kdl",
        &format!("remote \"{url}\"\nremote-write #true\n"),
    );
    let a = imgspec(
        &w,
        "cache-a",
        &["build", "mini.kdl", "--out-dir", "out-a"],
        &[],
    )
    .ok();
    assert_eq!(a.stderr.matches("uploaded ").count(), STEPS, "{}", a.stderr);
    assert_eq!(server_records(&n).len(), STEPS);
    // `remote-write #false` in the file: read only.
    w.write(
        "config/imgspec/config.kdl",
        &format!("remote \"{url}\"\nremote-write #false\n"),
    );
    w.write("overlay/etc/motd", "changed\n");
    let c = imgspec(
        &w,
        "cache-a",
        &["build", "mini.kdl", "--out-dir", "out-c"],
        &[],
    )
    .ok();
    assert!(!c.stderr.contains("uploaded"), "{}", c.stderr);
    assert_eq!(server_records(&n).len(), STEPS);
    w.write("overlay/etc/motd", "hello\n");

    // A developer: no config file, the remote from the environment, an empty cache.
    std::fs::remove_file(w.path("config/imgspec/config.kdl")).unwrap();
    let b = imgspec(
        &w,
        "cache-b",
        &["build", "mini.kdl", "--out-dir", "out-b"],
        &[("IMGSPEC_REMOTE", url.as_str())],
    )
    .ok();
    assert!(
        b.stderr.contains(&format!("0 steps built, {STEPS} cached")),
        "{}",
        b.stderr
    );
    assert!(b.stderr.contains("fetched "), "{}", b.stderr);
    assert_eq!(
        sha256(&w.path("out-a/mini/mini.tar")),
        sha256(&w.path("out-b/mini/mini.tar"))
    );
}

/// A remote that refuses (403) or fails (500, 503) does not fail the build: one warning, the
/// steps are built here.
#[test]
fn a_refusing_or_failing_remote_lets_the_build_go_on() {
    for code in [403, 500, 503] {
        let Some(n) = Nginx::start_answering(Answer::Status(code)) else {
            return;
        };
        let w = mini();
        let url = n.url();
        let r = imgspec(
            &w,
            "cache",
            &["build", "mini.kdl", "--remote", &url, "--remote-write"],
            &[],
        )
        .ok();
        assert!(
            r.stderr
                .contains(&format!("{STEPS} steps built, 0 cached, 0 failed")),
            "HTTP {code}: {}",
            r.stderr
        );
        assert_eq!(
            r.stderr.matches("WARNING").count(),
            1,
            "HTTP {code}: {}",
            r.stderr
        );
        assert!(
            r.stderr.contains(&code.to_string()),
            "HTTP {code}: {}",
            r.stderr
        );
        assert!(w.path("out/mini/mini.tar").exists());
    }
}

/// `imgspec ARGS` on a terminal (a pseudo-terminal from util-linux's `script`): what a person
/// sees on stderr.
fn on_a_terminal(w: &Workspace, cache: &str, args: &[&str]) -> String {
    let mut line = format!("'{}'", env!("CARGO_BIN_EXE_imgspec"));
    for a in args {
        line.push_str(&format!(" '{a}'"));
    }
    let out = imgspec_cmd(w, cache, &[], &[])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("IMGSPEC_CACHE_DIR", w.path(cache))
        .env("XDG_CONFIG_HOME", w.path("config"))
        .env("TERM", "xterm")
        .env("NO_COLOR", "1")
        .output_of_script(&line);
    assert!(out.status.success(), "{line}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

trait ScriptExt {
    fn output_of_script(&mut self, line: &str) -> std::process::Output;
}

impl ScriptExt for Command {
    /// Runs `line` under `script -qec` with this command's environment and folder.
    fn output_of_script(&mut self, line: &str) -> std::process::Output {
        let mut c = Command::new("script");
        c.args(["-qec", line, "/dev/null"]);
        if let Some(d) = self.get_current_dir() {
            c.current_dir(d);
        }
        c.env_clear();
        for (k, v) in self.get_envs() {
            if let Some(v) = v {
                c.env(k, v);
            }
        }
        c.output().unwrap()
    }
}

#[test]
fn long_transfers_show_bytes_and_rate_on_a_terminal_and_nothing_when_piped() {
    let Some(nginx) = Nginx::start(false) else {
        return;
    };
    let w = mini();
    let url = nginx.url();
    imgspec(&w, "cache-a", &["build", "mini.kdl"], &[]).ok();

    // Piped: the summary lines only, no bar.
    let e = imgspec(
        &w,
        "cache-a",
        &["cache", "export", "mini.kdl", "-o", "piped.tar.zst"],
        &[],
    )
    .ok();
    assert!(!e.stderr.contains("exporting"), "{}", e.stderr);
    assert!(!e.stderr.contains("/s"), "{}", e.stderr);

    // On a terminal: each transfer's bar, with bytes and rate; the time left where the total
    // is known (a bundle read back).
    let tty = on_a_terminal(
        &w,
        "cache-a",
        &["cache", "export", "mini.kdl", "-o", "b.tar.zst"],
    );
    assert!(tty.contains("exporting b.tar.zst"), "{tty}");
    assert!(tty.contains("B/s"), "{tty}");
    let tty = on_a_terminal(&w, "cache-b", &["cache", "import", "b.tar.zst"]);
    assert!(tty.contains("importing b.tar.zst"), "{tty}");
    assert!(tty.contains("B/s") && tty.contains("eta"), "{tty}");
    let tty = on_a_terminal(
        &w,
        "cache-a",
        &[
            "cache",
            "push",
            "mini.kdl",
            "--remote",
            &url,
            "--remote-write",
        ],
    );
    assert!(tty.contains(&format!("pushing to {url}")), "{tty}");
    assert!(tty.contains("B/s"), "{tty}");
    let tty = on_a_terminal(
        &w,
        "cache-c",
        &["cache", "pull", "mini.kdl", "--remote", &url],
    );
    assert!(tty.contains(&format!("pulling from {url}")), "{tty}");
    assert!(tty.contains("B/s"), "{tty}");
    // Piped, the same pull into another cache says nothing but its summary.
    let p = imgspec(
        &w,
        "cache-d",
        &["cache", "pull", "mini.kdl", "--remote", &url],
        &[],
    )
    .ok();
    assert!(!p.stderr.contains("pulling from"), "{}", p.stderr);
}
