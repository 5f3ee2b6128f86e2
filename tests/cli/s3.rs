//! The S3 remote against a real distributed object store: a three-node Garage cluster on
//! loopback (replication factor 3), its bucket and key made with Garage's own CLI. No network
//! beyond loopback: the specs are built from host binaries.

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
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

/// Steps of SPEC: base, files, run, output, SBOM, manifest.
const STEPS: usize = 6;
pub(crate) const BUCKET: &str = "imgspec";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn garage_bin() -> Option<PathBuf> {
    if !imgspec::tools::test_requires(&["garage"]) {
        return None;
    }
    imgspec::tools::which("garage")
}

/// One node of the cluster.
struct Node {
    config: PathBuf,
    s3_port: u16,
    child: Option<Child>,
}

/// Three Garage nodes with a bucket and a read-write key; killed on drop.
pub(crate) struct Garage {
    bin: PathBuf,
    _dir: tempfile::TempDir,
    nodes: Vec<Node>,
    pub(crate) key_id: String,
    pub(crate) secret: String,
}

impl Garage {
    pub(crate) fn start() -> Option<Garage> {
        let bin = garage_bin()?;
        let dir = tempfile::tempdir().unwrap();
        let secret: String = (0..32)
            .map(|i| format!("{:02x}", (i * 37 + 11) as u8))
            .collect();
        let mut nodes = Vec::new();
        for n in 0..3 {
            let d = dir.path().join(format!("node{n}"));
            std::fs::create_dir_all(d.join("meta")).unwrap();
            std::fs::create_dir_all(d.join("data")).unwrap();
            // A port found free may be taken by another test's connection before the server
            // binds it: a server that exits at once is started again on other ports.
            let mut tries = 0;
            let node = loop {
                tries += 1;
                let (rpc, s3, admin) = (free_port(), free_port(), free_port());
                let config = d.join("garage.toml");
                std::fs::write(
                    &config,
                    format!(
                        "metadata_dir = \"{d}/meta\"\n\
                         data_dir = \"{d}/data\"\n\
                         db_engine = \"sqlite\"\n\
                         replication_factor = 3\n\
                         rpc_bind_addr = \"127.0.0.1:{rpc}\"\n\
                         rpc_public_addr = \"127.0.0.1:{rpc}\"\n\
                         rpc_secret = \"{secret}\"\n\
                         [s3_api]\n\
                         s3_region = \"garage\"\n\
                         api_bind_addr = \"127.0.0.1:{s3}\"\n\
                         root_domain = \".s3.garage.localhost\"\n\
                         [admin]\n\
                         api_bind_addr = \"127.0.0.1:{admin}\"\n",
                        d = d.display()
                    ),
                )
                .unwrap();
                let log_path = d.join("server.log");
                let log = std::fs::File::create(&log_path).unwrap();
                let mut child = Command::new(&bin)
                    .arg("-c")
                    .arg(&config)
                    .arg("server")
                    .env("RUST_LOG", "garage=warn")
                    .stdin(Stdio::null())
                    .stdout(log.try_clone().unwrap())
                    .stderr(log)
                    .spawn()
                    .unwrap();
                // Listening on both ports, or gone.
                let t = Instant::now();
                let exited = loop {
                    if [rpc, s3]
                        .iter()
                        .all(|p| TcpStream::connect(("127.0.0.1", *p)).is_ok())
                    {
                        break false;
                    }
                    if child.try_wait().unwrap().is_some() {
                        break true;
                    }
                    assert!(
                        t.elapsed() < Duration::from_secs(180),
                        "garage node {n} not listening after 180 s: {}",
                        std::fs::read_to_string(&log_path).unwrap_or_default()
                    );
                    std::thread::sleep(Duration::from_millis(100));
                };
                if !exited {
                    break Node {
                        config,
                        s3_port: s3,
                        child: Some(child),
                    };
                }
                assert!(
                    tries < 5,
                    "garage node {n} exited at start, five times: {}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            };
            nodes.push(node);
        }
        let mut g = Garage {
            bin,
            _dir: dir,
            nodes,
            key_id: String::new(),
            secret: String::new(),
        };
        // Node ids (`ID@ADDR`), once each node answers its CLI.
        let ids: Vec<String> = (0..3)
            .map(|n| {
                let t = Instant::now();
                loop {
                    let o = g.cli_on(n, &["node", "id", "-q"]);
                    if o.status.success() {
                        break String::from_utf8_lossy(&o.stdout).trim().to_string();
                    }
                    assert!(
                        t.elapsed() < Duration::from_secs(60),
                        "garage node {n} did not start: {}",
                        String::from_utf8_lossy(&o.stderr)
                    );
                    std::thread::sleep(Duration::from_millis(200));
                }
            })
            .collect();
        for id in &ids[1..] {
            let t = Instant::now();
            while !g.cli_on(0, &["node", "connect", id]).status.success() {
                assert!(
                    t.elapsed() < Duration::from_secs(30),
                    "garage node connect {id}"
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        for id in &ids {
            let short = &id[..16];
            g.cli(&["layout", "assign", "-z", "dc1", "-c", "1G", short]);
        }
        g.cli(&["layout", "apply", "--version", "1"]);
        g.cli(&["bucket", "create", BUCKET]);
        let key = g.cli(&["key", "create", "imgspec-ci"]);
        let field = |names: &[&str]| {
            key.lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    names
                        .contains(&k.trim().to_ascii_lowercase().as_str())
                        .then(|| v.trim().to_string())
                })
                .unwrap_or_else(|| panic!("no {names:?} in `garage key create`:\n{key}"))
        };
        g.key_id = field(&["key id", "key_id"]);
        g.secret = field(&["secret key", "secret_key", "secret access key"]);
        g.cli(&[
            "bucket",
            "allow",
            "--read",
            "--write",
            "--owner",
            BUCKET,
            "--key",
            "imgspec-ci",
        ]);
        // The S3 API of node 0 answers.
        let t = Instant::now();
        while TcpStream::connect(("127.0.0.1", g.nodes[0].s3_port)).is_err() {
            assert!(t.elapsed() < Duration::from_secs(30), "S3 API not up");
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(g)
    }

    fn cli_on(&self, n: usize, args: &[&str]) -> std::process::Output {
        Command::new(&self.bin)
            .arg("-c")
            .arg(&self.nodes[n].config)
            .args(args)
            .output()
            .unwrap()
    }

    /// A CLI command on node 0 that must succeed; its output.
    fn cli(&self, args: &[&str]) -> String {
        let o = self.cli_on(0, args);
        assert!(
            o.status.success(),
            "garage {args:?}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    pub(crate) fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.nodes[0].s3_port)
    }

    pub(crate) fn kill(&mut self, n: usize) {
        if let Some(mut c) = self.nodes[n].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The environment of an imgspec that uses this cluster with the right key.
    pub(crate) fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID".into(), self.key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY".into(), self.secret.clone()),
        ]
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        for n in 0..self.nodes.len() {
            self.kill(n);
        }
    }
}

fn mini(g: &Garage, prefix: &str) -> Workspace {
    let w = Workspace::new();
    w.rootfs_tar_with("rootfs.tar", &["sleep"], &[]);
    w.write("mini.kdl", SPEC);
    w.write("overlay/etc/motd", "hello\n");
    w.write(
        "config/imgspec/config.kdl",
        &format!(
            "remote \"s3://{BUCKET}/{prefix}\" endpoint=\"{}\" region=\"garage\"\n",
            g.endpoint()
        ),
    );
    w
}

fn imgspec_cmd(w: &Workspace, cache: &str, args: &[&str], env: &[(String, String)]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_imgspec"));
    c.args(args)
        .current_dir(w.dir.path())
        .env("IMGSPEC_CACHE_DIR", w.path(cache))
        .env("XDG_CONFIG_HOME", w.path("config"))
        .env("HOME", w.path("home"))
        .env("NO_COLOR", "1");
    for v in [
        "IMGSPEC_REMOTE",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_ENDPOINT_URL",
        "AWS_REGION",
        "http_proxy",
        "HTTP_PROXY",
    ] {
        c.env_remove(v);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

fn imgspec(w: &Workspace, cache: &str, args: &[&str], env: &[(String, String)]) -> Run {
    imgspec_cmd(w, cache, args, env).output().unwrap().into()
}

#[test]
fn a_garage_cluster_shares_the_cache_survives_a_node_and_refuses_bad_objects() {
    let Some(mut g) = Garage::start() else { return };
    let w = mini(&g, "team");
    let env = g.env();

    // CI builds and uploads; one node is killed while the build runs (after the first upload):
    // the writes still reach a quorum of two.
    let mut child = imgspec_cmd(
        &w,
        "cache-a",
        &["build", "mini.kdl", "--out-dir", "out-a", "--remote-write"],
        &env,
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut log = String::new();
    loop {
        let mut line = String::new();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "no upload:\n{log}"
        );
        log.push_str(&line);
        if line.contains("uploaded ") {
            break;
        }
    }
    g.kill(2);
    std::io::Read::read_to_string(&mut stderr, &mut log).unwrap();
    assert!(child.wait().unwrap().success(), "{log}");
    assert_eq!(log.matches("uploaded ").count(), STEPS, "{log}");
    assert!(!log.contains("WARNING"), "{log}");

    // A developer with an empty cache: every step from S3 (two nodes of three), same bytes.
    let b = imgspec(
        &w,
        "cache-b",
        &["build", "mini.kdl", "--out-dir", "out-b"],
        &env,
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
    // The key's secret is nowhere: output, logs, the cache.
    assert!(!b.stderr.contains(&g.secret) && !log.contains(&g.secret));
    assert!(files_containing(&w.path("cache-a"), &g.secret).is_empty());
    assert!(files_containing(&w.path("cache-b"), &g.secret).is_empty());

    // Wrong credentials: one warning, the build goes on here.
    let bad = vec![
        ("AWS_ACCESS_KEY_ID".to_string(), g.key_id.clone()),
        ("AWS_SECRET_ACCESS_KEY".to_string(), "0".repeat(64)),
    ];
    let r = imgspec(
        &w,
        "cache-c",
        &["build", "mini.kdl", "--out-dir", "out-c"],
        &bad,
    )
    .ok();
    assert_eq!(r.stderr.matches("WARNING").count(), 1, "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!("{STEPS} steps built, 0 cached")),
        "{}",
        r.stderr
    );

    // Two nodes down: no quorum; the build goes on locally and says so once.
    g.kill(1);
    let r = imgspec(
        &w,
        "cache-d",
        &["build", "mini.kdl", "--out-dir", "out-d"],
        &env,
    )
    .ok();
    assert_eq!(r.stderr.matches("WARNING").count(), 1, "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!("{STEPS} steps built, 0 cached")),
        "{}",
        r.stderr
    );
}

#[test]
fn concurrent_writers_leave_a_consistent_bucket_and_corrupt_objects_are_rebuilt() {
    let Some(g) = Garage::start() else { return };
    let w = mini(&g, "ci");
    let env = g.env();
    // Two CI machines build the same spec and push at once.
    for cache in ["cache-1", "cache-2"] {
        imgspec(&w, cache, &["build", "mini.kdl"], &[]).ok();
    }
    let pushes: Vec<Child> = ["cache-1", "cache-2"]
        .iter()
        .map(|c| {
            imgspec_cmd(&w, c, &["cache", "push", "mini.kdl"], &env)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for p in pushes {
        let r: Run = p.wait_with_output().unwrap().into();
        r.ok();
    }
    let r = imgspec(
        &w,
        "cache-e",
        &["build", "mini.kdl", "--out-dir", "out-e"],
        &env,
    )
    .ok();
    assert!(
        r.stderr.contains(&format!("0 steps built, {STEPS} cached")),
        "{}",
        r.stderr
    );
    let v = imgspec(&w, "cache-e", &["cache", "verify"], &[]).ok();
    assert!(v.stdout.contains(" 0 corrupt"), "{}", v.stdout);

    // A corrupted blob, written straight into the bucket over the S3 API: refused, reported,
    // the step built here.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    use object_store::ObjectStoreExt;
    let s3 = object_store::aws::AmazonS3Builder::new()
        .with_bucket_name(BUCKET)
        .with_endpoint(g.endpoint())
        .with_allow_http(true)
        .with_region("garage")
        .with_access_key_id(&g.key_id)
        .with_secret_access_key(&g.secret)
        .build()
        .unwrap();
    // The output's blob: the tar of the output step (the largest object of the bucket).
    let objects: Vec<object_store::ObjectMeta> = rt.block_on(async {
        use futures_util::TryStreamExt;
        object_store::ObjectStore::list(&s3, Some(&"ci/cas-v1".into()))
            .try_collect()
            .await
            .unwrap()
    });
    let biggest = objects.iter().max_by_key(|o| o.size).unwrap();
    rt.block_on(s3.put(&biggest.location, b"not a zstd frame".to_vec().into()))
        .unwrap();
    let r = imgspec(
        &w,
        "cache-f",
        &["build", "mini.kdl", "--out-dir", "out-f"],
        &env,
    )
    .ok();
    assert!(r.stderr.contains("refused"), "{}", r.stderr);
    assert!(r.stderr.contains("steps built"), "{}", r.stderr);
    assert!(!r.stderr.contains("0 steps built"), "{}", r.stderr);
    assert_eq!(
        sha256(&w.path("out-e/mini/mini.tar")),
        sha256(&w.path("out-f/mini/mini.tar"))
    );
    let v = imgspec(&w, "cache-f", &["cache", "verify"], &[]).ok();
    assert!(v.stdout.contains(" 0 corrupt"), "{}", v.stdout);
}
