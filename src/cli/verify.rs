//! `imgspec verify`: proves a spec builds bit for bit.
//!
//! The spec is first built as usual (so the cache holds a result for every step), then every
//! step is built again in a scratch store that starts empty, so nothing is taken from the
//! cache. Each step's output digest (BLAKE3 of its output's canonical JSON: tree digest, file
//! digests, metadata) is compared with the cached one. For the first step that differs, the
//! files that differ are listed (path, size, mode, digest) with a unified diff of text files.
//!
//! `--against` takes a published build instead (files or http(s) URLs): its `SHA256SUMS` and
//! its `IMAGE.manifest.json` (given, or found beside the sums). The local build (the cache,
//! built where missing) is compared with it first: when a file differs, the first step whose
//! output digest differs from the manifest's is named before anything is rebuilt. The
//! rebuilt output files are then compared with the published sums.
//!
//! `--diffoscope` runs diffoscope on the first differing pair: a published output file beside
//! a local `SHA256SUMS` and its rebuilt twin, else the first step whose cached and rebuilt
//! outputs differ (its differing file, or both trees as tarballs). The report is kept under
//! the cache's `logs/`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use imgspec_cache::{EntryKind, StepOutput, Store, TreeChange, TreeManifest};
use serde::Serialize;

use super::{open_store, reporter, step_name, CliError};
use crate::build::{RunOptions, Session};
use crate::exec::Outcome;
use crate::plan::{Plan, StepId};
use crate::steps::document::output_digest;

/// Files listed for the first differing step, at most.
const MAX_FILES: usize = 40;
/// Lines of unified diff shown per file, at most.
const MAX_DIFF_LINES: usize = 80;
/// Text files larger than this are not diffed.
const MAX_DIFF_BYTES: usize = 256 * 1024;

pub struct VerifyOptions {
    pub jobs: usize,
    pub images: Vec<String>,
    /// A published build's `SHA256SUMS` and manifests: paths or http(s) URLs.
    pub against: Vec<String>,
    pub diffoscope: bool,
    pub keep: bool,
    pub json: bool,
}

/// What a published build says of itself.
#[derive(Default)]
struct Published {
    /// Output file name → SHA-256, from `SHA256SUMS` (or a manifest's outputs).
    sums: BTreeMap<String, String>,
    /// Image → step name → (step key, output digest), from `IMAGE.manifest.json`.
    steps: BTreeMap<String, BTreeMap<String, (String, String)>>,
    /// Where the sums came from, for messages.
    label: String,
    /// The local folder of the published `SHA256SUMS`, whose files diffoscope can read.
    dir: Option<PathBuf>,
}

fn is_url(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://")
}

/// The bytes of a file or an http(s) URL.
fn fetch(src: &str) -> Result<Vec<u8>, String> {
    if !is_url(src) {
        return std::fs::read(src).map_err(|e| e.to_string());
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(std::time::Duration::from_secs(20)))
        .timeout_recv_body(Some(std::time::Duration::from_secs(120)))
        .build()
        .into();
    let resp = agent.get(src).call().map_err(|e| match e {
        ureq::Error::StatusCode(c) => format!("HTTP {c}"),
        other => other.to_string(),
    })?;
    resp.into_body()
        .with_config()
        .limit(64 << 20)
        .read_to_vec()
        .map_err(|e| e.to_string())
}

/// `IMAGE.manifest.json` beside `sums` (a path or a URL).
fn beside(sums: &str, name: &str) -> String {
    match sums.rfind('/') {
        Some(i) => format!("{}/{name}", &sums[..i]),
        None => name.to_string(),
    }
}

/// A manifest document: its image and steps, and its outputs' SHA-256.
type ParsedManifest = (
    String,
    BTreeMap<String, (String, String)>,
    BTreeMap<String, String>,
);

fn parse_manifest(bytes: &[u8]) -> Option<ParsedManifest> {
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let image = v.get("image")?.as_str()?.to_string();
    let steps = v
        .get("steps")?
        .as_array()?
        .iter()
        .filter_map(|s| {
            Some((
                s.get("name")?.as_str()?.to_string(),
                (
                    s.get("key")?.as_str()?.to_string(),
                    s.get("output")?.as_str()?.to_string(),
                ),
            ))
        })
        .collect();
    let outputs = v
        .get("outputs")
        .and_then(|o| o.as_object())
        .map(|o| {
            o.iter()
                .filter_map(|(n, f)| Some((n.clone(), f.get("sha256")?.as_str()?.to_lowercase())))
                .collect()
        })
        .unwrap_or_default();
    Some((image, steps, outputs))
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Reads every `--against` source; finds each image's manifest beside the sums when none was
/// given. A manifest that `SHA256SUMS` lists must have the listed checksum.
fn load_published(against: &[String], images: &[&str], json: bool) -> Result<Published, CliError> {
    let mut p = Published::default();
    let mut sums_sources = Vec::new();
    let mut manifests = Vec::new();
    for src in against {
        let bytes = fetch(src).map_err(|e| CliError::Usage {
            message: format!("cannot read `{src}`: {e}"),
            help: Some(
                "give a published build's SHA256SUMS and IMAGE.manifest.json, as files or \
                 http(s) URLs"
                    .into(),
            ),
        })?;
        if let Some(m) = parse_manifest(&bytes) {
            manifests.push((src.clone(), bytes, m));
            continue;
        }
        let text = String::from_utf8_lossy(&bytes);
        for (name, sha) in parse_sums(&text, src)? {
            p.sums.insert(name, sha);
        }
        sums_sources.push(src.clone());
        if !is_url(src) && p.dir.is_none() {
            p.dir = Path::new(src).parent().map(Path::to_path_buf);
        }
    }
    if manifests.is_empty() {
        for src in &sums_sources {
            for img in images {
                let name = format!("{img}.manifest.json");
                if !p.sums.contains_key(&name) {
                    continue;
                }
                let url = beside(src, &name);
                if let Ok(bytes) = fetch(&url) {
                    if let Some(m) = parse_manifest(&bytes) {
                        say(json, &format!("verify: the published manifest `{url}`"));
                        manifests.push((url, bytes, m));
                    }
                }
            }
        }
    }
    for (src, bytes, (image, steps, outputs)) in manifests {
        let name = format!("{image}.manifest.json");
        if let Some(want) = p.sums.get(&name) {
            if *want != sha256_hex(&bytes) {
                return Err(CliError::Usage {
                    message: format!(
                        "`{src}` is not the manifest that the published SHA256SUMS lists"
                    ),
                    help: Some("give the SHA256SUMS and the manifest of one build".into()),
                });
            }
        }
        for (n, sha) in outputs {
            p.sums.entry(n).or_insert(sha);
        }
        p.steps.insert(image, steps);
        sums_sources.push(src);
    }
    p.label = sums_sources.join(", ");
    Ok(p)
}

#[derive(Serialize)]
struct StepVerdict {
    image: String,
    step: String,
    label: String,
    key: String,
    cached: Option<String>,
    rebuilt: Option<String>,
    identical: bool,
}

#[derive(Serialize)]
struct FileVerdict {
    file: String,
    expected: Option<String>,
    rebuilt: Option<String>,
    identical: bool,
}

pub fn verify(ctx: &Session, o: &VerifyOptions) -> Result<(), CliError> {
    let plan = ctx.plan()?;
    let images: Vec<_> = plan
        .images
        .iter()
        .filter(|i| o.images.is_empty() || o.images.contains(&i.name))
        .collect();
    if images.is_empty() {
        return Err(CliError::Usage {
            message: format!("no image {} in the specs", o.images.join(", ")),
            help: None,
        });
    }
    let targets: Vec<StepId> = images.iter().flat_map(|i| i.outputs.clone()).collect();
    let cancel = super::interrupt_flag();
    let rep = reporter(o.json);

    if o.diffoscope && crate::tools::which("diffoscope").is_none() {
        return Err(CliError::Environment {
            message: "`--diffoscope` needs diffoscope, which is not installed".into(),
            help: Some("apt-get install diffoscope-minimal".into()),
        });
    }
    let names: Vec<&str> = images.iter().map(|i| i.name.as_str()).collect();
    let published = if o.against.is_empty() {
        None
    } else {
        Some(load_published(&o.against, &names, o.json)?)
    };

    // 1. The reference: the cache's results, built where missing.
    say(
        o.json,
        "verify: the cached build (steps missing from the cache are built)",
    );
    // A verification rebuilds here; it never fetches or uploads.
    let none = imgspec_cache::Tiers::none();
    let run = RunOptions {
        jobs: o.jobs,
        reporter: rep.as_ref(),
        cancel: &cancel,
        fresh: &[],
        tiers: &none,
    };
    let mut reference = crate::build::executor(&ctx.store, &run).run(&plan, &targets);
    check(&plan, &reference)?;
    // The top-down cut skipped the inputs of cached steps: look every step up.
    for img in &images {
        for &id in &img.steps {
            if let std::collections::btree_map::Entry::Vacant(e) = reference.outputs.entry(id) {
                if let Ok(Some(rec)) = ctx.store.lookup(&plan.steps[id].key) {
                    e.insert(rec.output);
                }
            }
        }
    }
    // With a published build: where the local build already differs from it, before any
    // rebuild.
    if let Some(p) = &published {
        compare_published(&plan, &images, &reference, p, o.json);
    }

    // 2. Everything again in an empty scratch store.
    let scratch_dir = tempfile::Builder::new()
        .prefix("verify-")
        .tempdir_in(ctx.store.root())
        .map_err(|e| CliError::Environment {
            message: format!(
                "cannot make a scratch store in `{}`: {e}",
                ctx.store.root().display()
            ),
            help: None,
        })?;
    let scratch = open_store(scratch_dir.path())?;
    // Locked `.deb` files are inputs, like the mirror, not step results: the scratch store
    // reads (and adds to) the cache's.
    for family in crate::distro::FAMILIES {
        let debs = ctx.store.root().join(family.locked_dir());
        let _ = std::fs::create_dir_all(&debs);
        let _ = std::os::unix::fs::symlink(&debs, scratch_dir.path().join(family.locked_dir()));
    }
    say(
        o.json,
        &format!(
            "verify: rebuilding every step in the empty scratch store `{}`",
            scratch_dir.path().display()
        ),
    );
    let rebuilt = crate::build::executor(&scratch, &run).run(&plan, &targets);
    let result = check(&plan, &rebuilt).and_then(|()| match &published {
        None => compare_steps(ctx, &scratch, &plan, &images, &reference, &rebuilt, o.json),
        Some(p) => compare_sums(&images, &rebuilt, p, o.json),
    });
    if o.diffoscope && rebuilt.ok() && result.is_err() {
        let pair = published
            .as_ref()
            .and_then(|p| published_pair(&scratch, &images, &rebuilt, p))
            .or_else(|| step_pair(ctx, &scratch, &plan, &images, &reference, &rebuilt));
        match pair {
            Some(pair) => run_diffoscope(ctx, pair, o.json),
            None => say(
                o.json,
                "verify: no differing pair of files or trees for diffoscope",
            ),
        }
    }
    drop(scratch);
    // A failed rebuild's log lives in the scratch store: keep it for the user to read.
    if o.keep || !rebuilt.ok() {
        let kept = scratch_dir.keep();
        eprintln!("verify: scratch store kept at `{}`", kept.display());
    }
    result
}

/// Compares the local build with a published one: output files by SHA-256, then (when a
/// file differs and the manifest is there) the first step whose output digest differs.
fn compare_published(
    plan: &Plan,
    images: &[&crate::plan::ImagePlan],
    local: &Outcome,
    p: &Published,
    json: bool,
) {
    let files = output_sums(images, local);
    let differing: Vec<&String> = p
        .sums
        .iter()
        .filter(|(n, sha)| files.get(*n).map(String::as_str) != Some(sha.as_str()))
        .map(|(n, _)| n)
        .collect();
    if differing.is_empty() {
        say(
            json,
            &format!(
                "verify: the local build has the published bytes ({} files)",
                p.sums.len()
            ),
        );
        return;
    }
    let mut first = None;
    'images: for img in images {
        let Some(steps) = p.steps.get(&img.name) else {
            continue;
        };
        for &id in &img.steps {
            let name = step_name(plan, id, &img.name);
            let (Some((key, theirs)), Some(ours)) =
                (steps.get(&name), local.outputs.get(&id).map(output_digest))
            else {
                continue;
            };
            if *theirs != ours {
                first = Some((img.name.clone(), id, key.clone(), theirs.clone(), ours));
                break 'images;
            }
        }
    }
    if json {
        println!(
            "{}",
            serde_json::json!({
                "event": "verify-published",
                "differing-files": differing,
                "first-differing-step": first.as_ref().map(|(image, id, key, theirs, ours)| serde_json::json!({
                    "image": image,
                    "step": plan.steps[*id].label,
                    "same-key": *key == plan.steps[*id].key.to_hex(),
                    "published": theirs,
                    "local": ours,
                })),
            })
        );
        return;
    }
    eprintln!(
        "verify: {} of {} published files differ from the local build: {}",
        differing.len(),
        p.sums.len(),
        differing
            .iter()
            .map(|n| n.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    match first {
        Some((image, id, key, theirs, ours)) => {
            eprintln!(
                "verify: the first step whose output differs from the published manifest: \
                 image `{image}`, step `{}` (published {}, local {})",
                plan.steps[id].label,
                &theirs[..12.min(theirs.len())],
                &ours[..12.min(ours.len())]
            );
            if key != plan.steps[id].key.to_hex() {
                eprintln!(
                    "verify: its key differs too: the published build had other inputs (spec, \
                     lock or tool versions), not only other bytes"
                );
            }
        }
        None if p.steps.is_empty() => eprintln!(
            "verify: no published manifest, so no step is named (give IMAGE.manifest.json with \
             --against)"
        ),
        None => eprintln!("verify: every step the published manifest lists has the local output"),
    }
}

/// The output files of `images` in `out`: name → SHA-256 (the manifest and SBOM included).
fn output_sums(images: &[&crate::plan::ImagePlan], out: &Outcome) -> BTreeMap<String, String> {
    let mut got = BTreeMap::new();
    for img in images {
        for id in &img.outputs {
            let Some(o) = out.outputs.get(id) else {
                continue;
            };
            for name in o.files.keys() {
                if let Some(sha) = o.meta.get(&format!("sha256:{name}")) {
                    got.insert(name.clone(), sha.clone());
                }
            }
        }
    }
    got
}

/// Two things to compare with diffoscope: (label, path) each, in a folder removed afterwards.
struct Pair {
    what: String,
    a: PathBuf,
    b: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

/// The first published output file (beside a local SHA256SUMS) that differs from its rebuilt
/// twin, and that twin.
fn published_pair(
    scratch: &Store,
    images: &[&crate::plan::ImagePlan],
    rebuilt: &Outcome,
    p: &Published,
) -> Option<Pair> {
    let dir = p.dir.as_ref()?;
    let got = output_sums(images, rebuilt);
    // The artifacts first: the SBOM and the manifest differ only because they list them.
    let is_meta = |n: &str| n.ends_with(".spdx.json") || n.ends_with(".manifest.json");
    let mut differing: Vec<&String> = p
        .sums
        .iter()
        .filter(|(n, sha)| dir.join(n).is_file() && got.get(*n).is_some_and(|g| g != *sha))
        .map(|(n, _)| n)
        .collect();
    differing.sort_by_key(|n| is_meta(n));
    let name = *differing.first()?;
    let tmp = tempfile::Builder::new()
        .prefix("verify-diffoscope-")
        .tempdir_in(scratch.root())
        .ok()?;
    let r = images
        .iter()
        .flat_map(|i| i.outputs.iter())
        .filter_map(|id| rebuilt.outputs.get(id))
        .find_map(|o| o.files.get(name))?;
    let b = tmp.path().join("rebuilt").join(name);
    std::fs::create_dir_all(b.parent()?).ok()?;
    scratch.blob_to_file(&r.digest, &b).ok()?;
    Some(Pair {
        what: format!("published {name} and the rebuilt one"),
        a: dir.join(name),
        b,
        _dir: Some(tmp),
    })
}

/// The first step whose cached and rebuilt outputs differ: its first differing file, else
/// both trees as tarballs.
fn step_pair(
    ctx: &Session,
    scratch: &Store,
    plan: &Plan,
    images: &[&crate::plan::ImagePlan],
    reference: &Outcome,
    rebuilt: &Outcome,
) -> Option<Pair> {
    let (id, a, b) = images.iter().flat_map(|i| i.steps.iter()).find_map(|&id| {
        let (a, b) = (reference.outputs.get(&id)?, rebuilt.outputs.get(&id)?);
        (output_digest(a) != output_digest(b)).then_some((id, a, b))
    })?;
    let tmp = tempfile::Builder::new()
        .prefix("verify-diffoscope-")
        .tempdir_in(scratch.root())
        .ok()?;
    let label = &plan.steps[id].label;
    for d in ["cached", "rebuilt"] {
        std::fs::create_dir_all(tmp.path().join(d)).ok()?;
    }
    if let Some((name, fa, fb)) = a
        .files
        .iter()
        .find_map(|(n, fa)| b.files.get(n).filter(|fb| *fb != fa).map(|fb| (n, fa, fb)))
    {
        let (pa, pb) = (
            tmp.path().join("cached").join(name),
            tmp.path().join("rebuilt").join(name),
        );
        ctx.store.blob_to_file(&fa.digest, &pa).ok()?;
        scratch.blob_to_file(&fb.digest, &pb).ok()?;
        return Some(Pair {
            what: format!("{name} of step `{label}`, cached and rebuilt"),
            a: pa,
            b: pb,
            _dir: Some(tmp),
        });
    }
    let (ta, tb) = (a.tree.as_ref()?, b.tree.as_ref()?);
    let (ma, mb) = (
        ctx.store.get_manifest(ta).ok()?,
        scratch.get_manifest(tb).ok()?,
    );
    let (pa, pb) = (
        tmp.path().join("cached").join("tree.tar"),
        tmp.path().join("rebuilt").join("tree.tar"),
    );
    for (store, m, p) in [(&ctx.store, &ma, &pa), (scratch, &mb, &pb)] {
        let mut f = std::io::BufWriter::new(std::fs::File::create(p).ok()?);
        store.export_tar(m, &mut f, None).ok()?;
        std::io::Write::flush(&mut f).ok()?;
    }
    Some(Pair {
        what: format!("the trees of step `{label}`, cached and rebuilt"),
        a: pa,
        b: pb,
        _dir: Some(tmp),
    })
}

/// Runs diffoscope on `pair`; its text report is kept in the cache's `logs/`.
fn run_diffoscope(ctx: &Session, pair: Pair, json: bool) {
    let logs = ctx.store.root().join("logs");
    let _ = std::fs::create_dir_all(&logs);
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let report = logs.join(format!("verify-diffoscope-{stamp}.txt"));
    say(json, &format!("verify: diffoscope on {}", pair.what));
    let status = std::process::Command::new("diffoscope")
        .arg("--no-progress")
        .arg("--text")
        .arg(&report)
        .arg(&pair.a)
        .arg(&pair.b)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .status();
    match status {
        // 0: no difference, 1: differences (the report has them).
        Ok(s) if matches!(s.code(), Some(0 | 1)) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"event": "verify-diffoscope", "compared": pair.what,
                        "report": report})
                );
            } else {
                eprintln!("verify: diffoscope's report: `{}`", report.display());
            }
        }
        Ok(s) => eprintln!(
            "verify: diffoscope failed ({s}); see `{}`",
            report.display()
        ),
        Err(e) => eprintln!("verify: cannot run diffoscope: {e}"),
    }
}

fn say(json: bool, line: &str) {
    if !json {
        eprintln!("{line}");
    }
}

fn check(plan: &Plan, out: &Outcome) -> Result<(), CliError> {
    if out.interrupted {
        return Err(CliError::Interrupted);
    }
    if out.ok() {
        return Ok(());
    }
    Err(CliError::BuildFailed(
        crate::build::run::failures(plan, out).join("\n"),
    ))
}

fn short(d: &Option<String>) -> String {
    d.as_deref()
        .map_or("-".into(), |d| d[..12.min(d.len())].to_string())
}

fn compare_steps(
    ctx: &Session,
    scratch: &Store,
    plan: &Plan,
    images: &[&crate::plan::ImagePlan],
    reference: &Outcome,
    rebuilt: &Outcome,
    json: bool,
) -> Result<(), CliError> {
    let mut verdicts = Vec::new();
    let mut first_diff: Option<(String, StepId)> = None;
    for img in images {
        for &id in &img.steps {
            let cached = reference.outputs.get(&id).map(output_digest);
            let again = rebuilt.outputs.get(&id).map(output_digest);
            let identical = cached.is_some() && cached == again;
            if !identical && first_diff.is_none() {
                first_diff = Some((img.name.clone(), id));
            }
            verdicts.push(StepVerdict {
                image: img.name.clone(),
                step: step_name(plan, id, &img.name),
                label: plan.steps[id].label.clone(),
                key: plan.steps[id].key.to_hex(),
                cached,
                rebuilt: again,
                identical,
            });
        }
    }
    let differing = verdicts.iter().filter(|v| !v.identical).count();
    let mut details = Vec::new();
    if let Some((_, id)) = first_diff {
        if let (Some(a), Some(b)) = (reference.outputs.get(&id), rebuilt.outputs.get(&id)) {
            details = describe(&ctx.store, scratch, a, b);
        }
    }
    if json {
        let doc = serde_json::json!({
            "event": "verify-finished",
            "steps": verdicts,
            "identical": differing == 0,
            "first-difference": first_diff.as_ref().map(|(image, id)| serde_json::json!({
                "image": image,
                "step": plan.steps[*id].label,
                "details": details,
            })),
        });
        println!("{doc}");
    } else {
        eprintln!();
        eprintln!(
            "{:<14} {:<40} {:<12} {:<12} result",
            "image", "step", "cached", "rebuilt"
        );
        for v in &verdicts {
            eprintln!(
                "{:<14} {:<40} {:<12} {:<12} {}",
                v.image,
                truncate(&v.label, 40),
                short(&v.cached),
                short(&v.rebuilt),
                if v.identical {
                    "identical"
                } else {
                    "DIFFERENT"
                }
            );
        }
        if let Some((image, id)) = &first_diff {
            eprintln!();
            eprintln!(
                "first difference: image `{image}`, step `{}`:",
                plan.steps[*id].label
            );
            for d in &details {
                eprintln!("{d}");
            }
        }
    }
    if differing == 0 {
        say(
            json,
            &format!("verify: all {} steps identical", verdicts.len()),
        );
        Ok(())
    } else {
        Err(CliError::BuildFailed(format!(
            "not reproducible: {differing} of {} steps differ; the first is `{}`",
            verdicts.len(),
            first_diff.map_or(String::new(), |(_, id)| plan.steps[id].label.clone())
        )))
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('…');
        t
    }
}

/// What differs between two outputs of one step: tree entries, files, metadata.
fn describe(a_store: &Store, b_store: &Store, a: &StepOutput, b: &StepOutput) -> Vec<String> {
    let mut out = Vec::new();
    if a.tree != b.tree {
        let load = |s: &Store, o: &StepOutput| -> Option<TreeManifest> {
            o.tree.as_ref().and_then(|t| s.get_manifest(t).ok())
        };
        match (load(a_store, a), load(b_store, b)) {
            (Some(ma), Some(mb)) => {
                let changes = imgspec_cache::diff(&ma, &mb);
                out.push(format!("  tree: {} paths differ", changes.len()));
                for c in changes.iter().take(MAX_FILES) {
                    out.extend(describe_change(a_store, b_store, c));
                }
                if changes.len() > MAX_FILES {
                    out.push(format!("  … and {} more", changes.len() - MAX_FILES));
                }
            }
            _ => out.push("  tree: the manifests cannot be read".into()),
        }
    }
    let names: std::collections::BTreeSet<&String> = a.files.keys().chain(b.files.keys()).collect();
    for name in names {
        let (fa, fb) = (a.files.get(name), b.files.get(name));
        if fa != fb {
            let show = |f: Option<&imgspec_cache::FileRef>| {
                f.map_or("absent".to_string(), |f| {
                    format!("{} bytes, blake3 {}", f.size, f.digest)
                })
            };
            out.push(format!(
                "  file {name}:\n    cached:  {}\n    rebuilt: {}",
                show(fa),
                show(fb)
            ));
            if let (Some(fa), Some(fb)) = (fa, fb) {
                out.extend(text_diff(a_store, b_store, name, &fa.digest, &fb.digest));
            }
        }
    }
    let keys: std::collections::BTreeSet<&String> = a.meta.keys().chain(b.meta.keys()).collect();
    for k in keys {
        if a.meta.get(k) != b.meta.get(k) {
            out.push(format!(
                "  meta {k}: {} → {}",
                a.meta.get(k).map_or("absent", String::as_str),
                b.meta.get(k).map_or("absent", String::as_str)
            ));
        }
    }
    out
}

fn entry_line(e: &imgspec_cache::Entry) -> String {
    let what = match &e.kind {
        EntryKind::File { digest, size } => {
            format!("file, {size} bytes, blake3 {}", digest.short())
        }
        EntryKind::Dir => "directory".into(),
        EntryKind::Symlink { target } => format!("symlink → {target}"),
        EntryKind::Hardlink { target } => format!("hard link → {target}"),
        EntryKind::Char { major, minor } => format!("char device {major}:{minor}"),
        EntryKind::Block { major, minor } => format!("block device {major}:{minor}"),
        EntryKind::Fifo => "fifo".into(),
    };
    format!(
        "{what}, mode {:04o}, {}:{}, mtime {}",
        e.mode, e.uid, e.gid, e.mtime
    )
}

fn describe_change(a_store: &Store, b_store: &Store, c: &TreeChange) -> Vec<String> {
    match c {
        TreeChange::Added(e) => vec![format!("  + /{}: {}", e.path, entry_line(e))],
        TreeChange::Removed(e) => vec![format!("  - /{}: {}", e.path, entry_line(e))],
        TreeChange::Changed { old, new } => {
            let mut v = vec![format!(
                "  ~ /{}:\n      cached:  {}\n      rebuilt: {}",
                new.path,
                entry_line(old),
                entry_line(new)
            )];
            if let (EntryKind::File { digest: da, .. }, EntryKind::File { digest: db, .. }) =
                (&old.kind, &new.kind)
            {
                if da != db {
                    v.extend(text_diff(a_store, b_store, &new.path, da, db));
                }
            }
            v
        }
    }
}

/// A unified diff of two blobs when both are small UTF-8 text.
fn text_diff(
    a_store: &Store,
    b_store: &Store,
    name: &str,
    a: &imgspec_cache::BlobDigest,
    b: &imgspec_cache::BlobDigest,
) -> Vec<String> {
    let read = |s: &Store, d| s.read_blob(d).ok().filter(|v| v.len() <= MAX_DIFF_BYTES);
    let (Some(ba), Some(bb)) = (read(a_store, a), read(b_store, b)) else {
        return vec![];
    };
    let (Ok(ta), Ok(tb)) = (std::str::from_utf8(&ba), std::str::from_utf8(&bb)) else {
        return vec!["      (binary content)".into()];
    };
    let diff = similar::TextDiff::from_lines(ta, tb);
    let text = diff
        .unified_diff()
        .context_radius(3)
        .header(&format!("cached/{name}"), &format!("rebuilt/{name}"))
        .to_string();
    let lines: Vec<&str> = text.lines().collect();
    let mut out: Vec<String> = lines
        .iter()
        .take(MAX_DIFF_LINES)
        .map(|l| format!("      {l}"))
        .collect();
    if lines.len() > MAX_DIFF_LINES {
        out.push(format!(
            "      … {} more lines",
            lines.len() - MAX_DIFF_LINES
        ));
    }
    out
}

/// Reads a `SHA256SUMS` text (from `src`): file name → digest.
fn parse_sums(text: &str, src: &str) -> Result<BTreeMap<String, String>, CliError> {
    let mut sums = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = || CliError::Usage {
            message: format!("`{src}` line {}: not `SHA256  FILE`", n + 1),
            help: Some(
                "give the SHA256SUMS or the IMAGE.manifest.json of a published build".into(),
            ),
        };
        let Some((sha, name)) = line.split_once(char::is_whitespace) else {
            return Err(bad());
        };
        if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let name = name.trim_start().trim_start_matches('*');
        sums.insert(name.to_string(), sha.to_lowercase());
    }
    Ok(sums)
}

fn compare_sums(
    images: &[&crate::plan::ImagePlan],
    rebuilt: &Outcome,
    p: &Published,
    json: bool,
) -> Result<(), CliError> {
    let expected = &p.sums;
    let got = output_sums(images, rebuilt);
    let mut verdicts = Vec::new();
    for (name, sha) in expected {
        let rebuilt = got.get(name).cloned();
        verdicts.push(FileVerdict {
            file: name.clone(),
            identical: rebuilt.as_deref() == Some(sha.as_str()),
            expected: Some(sha.clone()),
            rebuilt,
        });
    }
    if json {
        println!(
            "{}",
            serde_json::json!({"event": "verify-finished", "files": verdicts,
                "identical": verdicts.iter().all(|v| v.identical)})
        );
    } else {
        eprintln!();
        eprintln!(
            "{:<40} {:<12} {:<12} result",
            "file", "published", "rebuilt"
        );
        for v in &verdicts {
            eprintln!(
                "{:<40} {:<12} {:<12} {}",
                truncate(&v.file, 40),
                short(&v.expected),
                short(&v.rebuilt),
                if v.identical {
                    "identical"
                } else if v.rebuilt.is_none() {
                    "NOT BUILT"
                } else {
                    "DIFFERENT"
                }
            );
        }
    }
    let bad = verdicts.iter().filter(|v| !v.identical).count();
    if verdicts.is_empty() {
        return Err(CliError::Usage {
            message: format!("`{}` lists no files", p.label),
            help: None,
        });
    }
    if bad == 0 {
        say(
            json,
            &format!(
                "verify: all {} files identical to `{}`",
                verdicts.len(),
                p.label
            ),
        );
        Ok(())
    } else {
        Err(CliError::BuildFailed(format!(
            "not reproducible: {bad} of {} files differ from `{}`",
            verdicts.len(),
            p.label
        )))
    }
}
