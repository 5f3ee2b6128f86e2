//! Tiers: the local cache, then several remote caches in order, each read-only or read-write,
//! against real servers (two nginx with WebDAV PUT; nginx and a three-node Garage cluster). A
//! hit in a later tier fills the local cache and the read-write tiers before it; a read-only
//! tier is never written; a tier that is down is said once and the next one still serves.

use std::process::Command;

use crate::common::{sha256, Run, Workspace};
use crate::remote::{free_port, server_records, Nginx};
use crate::s3::{Garage, BUCKET};

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

fn mini() -> Workspace {
    let w = Workspace::new();
    w.rootfs_tar("rootfs.tar");
    w.write("mini.kdl", SPEC);
    w.write("overlay/etc/motd", "hello\n");
    w
}

/// `imgspec ARGS` with the cache at `cache`, a config home of its own (the test writes its
/// `config.kdl`), no remote or credentials from the caller's environment, and `env`.
fn imgspec(w: &Workspace, cache: &str, args: &[&str], env: &[(String, String)]) -> Run {
    let mut c = Command::new(env!("CARGO_BIN_EXE_imgspec"));
    c.args(args)
        .current_dir(w.dir.path())
        .env("IMGSPEC_CACHE_DIR", w.path(cache))
        .env("XDG_CONFIG_HOME", w.path("config"))
        .env("HOME", w.path("home"))
        .env("NO_COLOR", "1");
    for v in [
        "IMGSPEC_REMOTE",
        "IMGSPEC_REMOTE_USER",
        "IMGSPEC_REMOTE_PASSWORD",
        "IMGSPEC_REMOTE_TOKEN",
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
    c.output().unwrap().into()
}

fn config(w: &Workspace, text: &str) {
    w.write("config/imgspec/config.kdl", text);
}

/// The lines of a build's progress, without their `[hh:mm:ss] ` time.
fn events(r: &Run) -> impl Iterator<Item = &str> {
    r.stderr.lines().map(|l| match l.strip_prefix('[') {
        Some(rest) => rest.split_once("] ").map_or(l, |(_, line)| line),
        None => l,
    })
}

/// The step labels a build says it fetched from `remote`.
fn fetched_from(r: &Run, remote: &str) -> Vec<String> {
    let tail = format!(" (from the remote cache {remote})");
    events(r)
        .filter_map(|l| l.strip_prefix("fetched  ")?.strip_suffix(&tail))
        .map(String::from)
        .collect()
}

/// The step labels a build says it uploaded to `remote`.
fn uploaded_to(r: &Run, remote: &str) -> Vec<String> {
    let mid = format!(" to {remote} (");
    events(r)
        .filter_map(|l| Some(l.strip_prefix("uploaded ")?.split_once(&mid)?.0.to_string()))
        .collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// Names and contents of every object under an nginx remote's root: what a write would change.
fn objects(n: &Nginx) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for dir in ["ac-v1", "cas-v1"] {
        let Ok(rd) = std::fs::read_dir(n.root().join(dir)) else {
            continue;
        };
        for e in rd.flatten() {
            out.push((format!("{dir}/{:?}", e.file_name()), sha256(&e.path())));
        }
    }
    out.sort();
    out
}

#[test]
fn a_later_tier_fills_the_earlier_read_write_ones_and_a_read_only_tier_is_never_written() {
    let (Some(near), Some(far)) = (Nginx::start(false), Nginx::start(false)) else {
        return;
    };
    let w = mini();
    let (near_url, far_url) = (near.url(), far.url());
    // CI filled the far cache.
    let a = imgspec(
        &w,
        "cache-a",
        &[
            "build",
            "mini.kdl",
            "--out-dir",
            "out-a",
            "--remote",
            &far_url,
            "--remote-write",
        ],
        &[],
    )
    .ok();
    assert_eq!(uploaded_to(&a, &far_url).len(), STEPS, "{}", a.stderr);
    let far_before = objects(&far);

    // Tiers [near read-write, far read-only], an empty local cache: every hit comes from far,
    // and fills the local cache and near; far is not written.
    config(
        &w,
        &format!("remote \"{near_url}\" write=#true\nremote \"{far_url}\" write=#false\n"),
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
    let fetched = fetched_from(&b, &far_url);
    assert!(!fetched.is_empty(), "{}", b.stderr);
    assert!(fetched_from(&b, &near_url).is_empty(), "{}", b.stderr);
    assert_eq!(
        sorted(uploaded_to(&b, &near_url)),
        sorted(fetched.clone()),
        "{}",
        b.stderr
    );
    assert!(uploaded_to(&b, &far_url).is_empty(), "{}", b.stderr);
    assert_eq!(server_records(&near).len(), fetched.len());
    assert_eq!(objects(&far), far_before, "the read-only tier was written");
    assert_eq!(
        sha256(&w.path("out-a/mini/mini.tar")),
        sha256(&w.path("out-b/mini/mini.tar"))
    );
    // The local cache was filled: the same build with no remote at all is all hits.
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
    // near was filled whole: a build from near alone needs nothing from far.
    let c = imgspec(
        &w,
        "cache-c",
        &[
            "build",
            "mini.kdl",
            "--out-dir",
            "out-c",
            "--remote",
            &near_url,
        ],
        &[],
    )
    .ok();
    assert!(
        c.stderr.contains(&format!("0 steps built, {STEPS} cached")),
        "{}",
        c.stderr
    );
    assert_eq!(sorted(fetched_from(&c, &near_url)), sorted(fetched));

    // A step built here goes to the read-write tier only, even with --remote-write (far says
    // write=#false).
    config(
        &w,
        &format!("remote \"{near_url}\" write=#true\nremote \"{far_url}\" write=#false\n"),
    );
    w.write("overlay/etc/motd", "changed\n");
    let d = imgspec(
        &w,
        "cache-b",
        &["build", "mini.kdl", "--out-dir", "out-d", "--remote-write"],
        &[],
    )
    .ok();
    let built = events(&d).filter(|l| l.starts_with("built    ")).count();
    assert!(built > 0, "{}", d.stderr);
    // What was built, and what came from far (the base: the local cache holds only the steps
    // the first build fetched, top-down), goes to near.
    assert_eq!(
        uploaded_to(&d, &near_url).len(),
        built + fetched_from(&d, &far_url).len(),
        "{}",
        d.stderr
    );
    assert!(uploaded_to(&d, &far_url).is_empty(), "{}", d.stderr);
    assert_eq!(objects(&far), far_before, "the read-only tier was written");
    w.write("overlay/etc/motd", "hello\n");

    // `--remote` twice: the tiers in that order, both read-only without --remote-write; the
    // first is down (nothing listens there): said once, and the second still serves every hit.
    let dead = format!("http://127.0.0.1:{}/c", free_port());
    std::fs::remove_file(w.path("config/imgspec/config.kdl")).unwrap();
    let e = imgspec(
        &w,
        "cache-e",
        &[
            "build",
            "mini.kdl",
            "--out-dir",
            "out-e",
            "--remote",
            &dead,
            "--remote",
            &far_url,
        ],
        &[],
    )
    .ok();
    assert!(
        e.stderr.contains(&format!("0 steps built, {STEPS} cached")),
        "{}",
        e.stderr
    );
    assert_eq!(e.stderr.matches("WARNING").count(), 1, "{}", e.stderr);
    assert!(
        e.stderr.contains(&format!("{dead} is unavailable")),
        "{}",
        e.stderr
    );
    assert!(!fetched_from(&e, &far_url).is_empty(), "{}", e.stderr);
    assert!(!e.stderr.contains("uploaded"), "{}", e.stderr);
    assert_eq!(objects(&far), far_before, "a read-only tier was written");

    // doctor lists each tier, in order, with its mode.
    config(
        &w,
        &format!("remote \"{dead}\"\nremote \"{far_url}\" write=#true\n"),
    );
    let doc = imgspec(&w, "cache-e", &["doctor", "mini.kdl"], &[]);
    assert!(
        doc.stdout
            .contains(&format!("remote cache 1/2: {dead} UNAVAILABLE (read-only)")),
        "{}",
        doc.stdout
    );
    assert!(
        doc.stdout
            .contains(&format!("remote cache 2/2: {far_url} answers (read-write)")),
        "{}",
        doc.stdout
    );
}

#[test]
fn pull_takes_each_step_from_the_first_tier_that_has_it_and_push_skips_read_only_tiers() {
    let (Some(near), Some(far)) = (Nginx::start(false), Nginx::start(false)) else {
        return;
    };
    let w = mini();
    let (near_url, far_url) = (near.url(), far.url());
    imgspec(&w, "cache-a", &["build", "mini.kdl"], &[]).ok();
    // push: to every tier but the one marked read-only.
    config(
        &w,
        &format!("remote \"{near_url}\" write=#false\nremote \"{far_url}\"\n"),
    );
    let p = imgspec(&w, "cache-a", &["cache", "push", "mini.kdl"], &[]).ok();
    assert!(
        p.stderr.contains(&format!("pushed {STEPS} step results")) && p.stderr.contains(&far_url),
        "{}",
        p.stderr
    );
    assert!(!p.stderr.contains(&near_url), "{}", p.stderr);
    assert!(
        !near.root().join("ac-v1").exists(),
        "a read-only tier was pushed to"
    );
    assert_eq!(server_records(&far).len(), STEPS);
    // pull with [near read-write, far]: every step from far, and near filled.
    config(
        &w,
        &format!("remote \"{near_url}\" write=#true\nremote \"{far_url}\"\n"),
    );
    let q = imgspec(&w, "cache-b", &["cache", "pull", "mini.kdl"], &[]).ok();
    assert!(
        q.stderr.contains(&format!("pulled {STEPS} step results"))
            && q.stderr
                .contains(&format!("0 from {near_url}, {STEPS} from {far_url}")),
        "{}",
        q.stderr
    );
    assert!(
        q.stderr
            .contains(&format!("filled {near_url} with {STEPS} step results")),
        "{}",
        q.stderr
    );
    assert_eq!(server_records(&near).len(), STEPS);
    // Now near has everything: a second pull takes it all from near.
    let r = imgspec(&w, "cache-c", &["cache", "pull", "mini.kdl"], &[]).ok();
    assert!(
        r.stderr
            .contains(&format!("{STEPS} from {near_url}, 0 from {far_url}")),
        "{}",
        r.stderr
    );
    let b = imgspec(
        &w,
        "cache-c",
        &["build", "mini.kdl", "--out-dir", "out-c"],
        &[],
    )
    .ok();
    assert!(
        b.stderr.contains(&format!("0 steps built, {STEPS} cached")),
        "{}",
        b.stderr
    );
}

/// The number of step records under `prefix/ac-v1/` in the Garage bucket.
fn bucket_records(g: &Garage, prefix: &str) -> usize {
    use futures_util::TryStreamExt;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let s3 = object_store::aws::AmazonS3Builder::new()
        .with_bucket_name(BUCKET)
        .with_endpoint(g.endpoint())
        .with_allow_http(true)
        .with_region("garage")
        .with_access_key_id(&g.key_id)
        .with_secret_access_key(&g.secret)
        .build()
        .unwrap();
    let listed: Vec<object_store::ObjectMeta> = rt.block_on(async {
        object_store::ObjectStore::list(&s3, Some(&format!("{prefix}/ac-v1").into()))
            .try_collect()
            .await
            .unwrap()
    });
    listed.len()
}

#[test]
fn nginx_then_garage_a_hit_in_garage_fills_the_local_cache_and_nginx_if_writable() {
    let Some(g) = Garage::start() else { return };
    let Some(mut n) = Nginx::start(false) else {
        return;
    };
    let w = mini();
    let env = g.env();
    let s3 = format!("s3://{BUCKET}/tiers");
    let s3_node = |write: &str| {
        format!(
            "remote \"{s3}\" endpoint=\"{}\" region=\"garage\"{write}\n",
            g.endpoint()
        )
    };
    let shown = format!("{s3} (at {})", g.endpoint());
    let url = n.url();

    // CI filled Garage.
    config(&w, &s3_node(" write=#true"));
    let a = imgspec(
        &w,
        "cache-a",
        &["build", "mini.kdl", "--out-dir", "out-a"],
        &env,
    )
    .ok();
    assert_eq!(uploaded_to(&a, &shown).len(), STEPS, "{}", a.stderr);
    assert_eq!(bucket_records(&g, "tiers"), STEPS);

    // [nginx read-only, Garage read-write]: the hits come from Garage (nginx has nothing) and
    // fill the local cache only: nginx is read-only, Garage had them.
    config(
        &w,
        &format!("remote \"{url}\"\n{}", s3_node(" write=#true")),
    );
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
    assert!(!fetched_from(&b, &shown).is_empty(), "{}", b.stderr);
    assert!(!b.stderr.contains("uploaded"), "{}", b.stderr);
    assert!(!n.root().join("ac-v1").exists(), "nginx is read-only");
    assert_eq!(
        sha256(&w.path("out-a/mini/mini.tar")),
        sha256(&w.path("out-b/mini/mini.tar"))
    );
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

    // A change built with the same tiers goes to Garage, never to nginx.
    config(
        &w,
        &format!("remote \"{url}\"\n{}", s3_node(" write=#true")),
    );
    w.write("overlay/etc/motd", "changed\n");
    let c = imgspec(
        &w,
        "cache-b",
        &["build", "mini.kdl", "--out-dir", "out-c"],
        &env,
    )
    .ok();
    assert!(!uploaded_to(&c, &shown).is_empty(), "{}", c.stderr);
    assert!(uploaded_to(&c, &url).is_empty(), "{}", c.stderr);
    assert!(!n.root().join("ac-v1").exists(), "nginx is read-only");
    assert!(bucket_records(&g, "tiers") > STEPS);
    w.write("overlay/etc/motd", "hello\n");

    // [nginx read-write, Garage read-only]: a hit in Garage is uploaded to nginx too; nginx
    // alone then serves the whole build.
    config(
        &w,
        &format!("remote \"{url}\" write=#true\n{}", s3_node("")),
    );
    let before = bucket_records(&g, "tiers");
    let d = imgspec(
        &w,
        "cache-d",
        &["build", "mini.kdl", "--out-dir", "out-d"],
        &env,
    )
    .ok();
    let fetched = fetched_from(&d, &shown);
    assert!(!fetched.is_empty(), "{}", d.stderr);
    assert_eq!(
        sorted(uploaded_to(&d, &url)),
        sorted(fetched),
        "{}",
        d.stderr
    );
    assert_eq!(bucket_records(&g, "tiers"), before);
    let e = imgspec(
        &w,
        "cache-e",
        &["build", "mini.kdl", "--out-dir", "out-e", "--remote", &url],
        &[],
    )
    .ok();
    assert!(
        e.stderr.contains(&format!("0 steps built, {STEPS} cached")),
        "{}",
        e.stderr
    );

    // nginx down: said once, and Garage still serves every hit.
    n.kill();
    config(
        &w,
        &format!("remote \"{url}\" write=#true\n{}", s3_node("")),
    );
    let f = imgspec(
        &w,
        "cache-f",
        &["build", "mini.kdl", "--out-dir", "out-f"],
        &env,
    )
    .ok();
    assert!(
        f.stderr.contains(&format!("0 steps built, {STEPS} cached")),
        "{}",
        f.stderr
    );
    assert_eq!(f.stderr.matches("WARNING").count(), 1, "{}", f.stderr);
    assert!(
        f.stderr.contains(&format!("{url} is unavailable")),
        "{}",
        f.stderr
    );
    assert!(!fetched_from(&f, &shown).is_empty(), "{}", f.stderr);
    assert_eq!(
        sha256(&w.path("out-a/mini/mini.tar")),
        sha256(&w.path("out-f/mini/mini.tar"))
    );
}
