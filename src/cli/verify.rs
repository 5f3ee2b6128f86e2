//! `imgspec verify`: proves a spec builds bit for bit.
//!
//! The spec is first built as usual (so the cache holds a result for every step), then every
//! step is built again in a scratch store that starts empty, so nothing is taken from the
//! cache. Each step's output digest (BLAKE3 of its output's canonical JSON: tree digest, file
//! digests, metadata) is compared with the cached one. For the first step that differs, the
//! files that differ are listed (path, size, mode, digest) with a unified diff of text files.
//! `--against SHA256SUMS` compares the rebuilt output files with a published build instead.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use imgspec_cache::{EntryKind, Manifest, StepOutput, Store, TreeChange};
use serde::Serialize;

use super::{open_store, reporter, step_name, CliError, Context};
use crate::exec::{Executor, Outcome};
use crate::plan::{Plan, StepId};
use crate::runner::HostRunner;
use crate::steps::meta::output_digest;

/// Files listed for the first differing step, at most.
const MAX_FILES: usize = 40;
/// Lines of unified diff shown per file, at most.
const MAX_DIFF_LINES: usize = 80;
/// Text files larger than this are not diffed.
const MAX_DIFF_BYTES: usize = 256 * 1024;

pub struct VerifyOptions {
    pub jobs: usize,
    pub images: Vec<String>,
    pub against: Option<PathBuf>,
    pub keep: bool,
    pub json: bool,
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

pub fn verify(ctx: &Context, o: &VerifyOptions) -> Result<(), CliError> {
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

    // 1. The reference: the cache's results, built where missing (not with --against).
    let reference = if o.against.is_none() {
        say(
            o.json,
            "verify: the cached build (steps missing from the cache are built)",
        );
        let exec = Executor {
            store: &ctx.store,
            runner: &HostRunner,
            reporter: rep.as_ref(),
            jobs: o.jobs.max(1),
            cancel: &cancel,
            // A verification rebuilds here; it never fetches or uploads.
            remote: None,
            remote_write: false,
            fresh: &[],
        };
        let mut out = exec.run(&plan, &targets);
        check(&plan, &out)?;
        // The top-down cut skipped the inputs of cached steps: look every step up.
        for img in &images {
            for &id in &img.steps {
                if let std::collections::btree_map::Entry::Vacant(e) = out.outputs.entry(id) {
                    if let Ok(Some(rec)) = ctx.store.lookup(&plan.steps[id].key) {
                        e.insert(rec.output);
                    }
                }
            }
        }
        Some(out)
    } else {
        None
    };

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
    let debs = ctx.store.root().join("debs-v1");
    let _ = std::fs::create_dir_all(&debs);
    let _ = std::os::unix::fs::symlink(&debs, scratch_dir.path().join("debs-v1"));
    say(
        o.json,
        &format!(
            "verify: rebuilding every step in the empty scratch store `{}`",
            scratch_dir.path().display()
        ),
    );
    let exec = Executor {
        store: &scratch,
        runner: &HostRunner,
        reporter: rep.as_ref(),
        jobs: o.jobs.max(1),
        cancel: &cancel,
        // A verification rebuilds here; it never fetches or uploads.
        remote: None,
        remote_write: false,
        fresh: &[],
    };
    let rebuilt = exec.run(&plan, &targets);
    let result = check(&plan, &rebuilt).and_then(|()| match (&reference, &o.against) {
        (Some(reference), _) => {
            compare_steps(ctx, &scratch, &plan, &images, reference, &rebuilt, o.json)
        }
        (None, Some(sums)) => compare_sums(&images, &rebuilt, sums, o.json),
        (None, None) => unreachable!("either a reference build or --against"),
    });
    drop(scratch);
    // A failed rebuild's log lives in the scratch store: keep it for the user to read.
    if o.keep || !rebuilt.ok() {
        let kept = scratch_dir.keep();
        eprintln!("verify: scratch store kept at `{}`", kept.display());
    }
    result
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
    Err(CliError::BuildFailed(super::failures(plan, out).join("\n")))
}

fn short(d: &Option<String>) -> String {
    d.as_deref()
        .map_or("-".into(), |d| d[..12.min(d.len())].to_string())
}

fn compare_steps(
    ctx: &Context,
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
        let load = |s: &Store, o: &StepOutput| -> Option<Manifest> {
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

/// Reads a `SHA256SUMS` file: file name → digest.
fn read_sums(path: &Path) -> Result<BTreeMap<String, String>, CliError> {
    let text = std::fs::read_to_string(path).map_err(|e| CliError::Usage {
        message: format!("cannot read `{}`: {e}", path.display()),
        help: Some("give the SHA256SUMS of a published build: out/IMAGE/SHA256SUMS".into()),
    })?;
    let mut sums = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let Some((sha, name)) = line.split_once(char::is_whitespace) else {
            return Err(CliError::Usage {
                message: format!("`{}` line {}: not `SHA256  FILE`", path.display(), n + 1),
                help: None,
            });
        };
        let name = name.trim_start().trim_start_matches('*');
        sums.insert(name.to_string(), sha.to_lowercase());
    }
    Ok(sums)
}

fn compare_sums(
    images: &[&crate::plan::ImagePlan],
    rebuilt: &Outcome,
    sums_path: &Path,
    json: bool,
) -> Result<(), CliError> {
    let expected = read_sums(sums_path)?;
    let mut got = BTreeMap::new();
    for img in images {
        for id in &img.outputs {
            let Some(o) = rebuilt.outputs.get(id) else {
                continue;
            };
            for name in o.files.keys() {
                got.insert(name.clone(), o.meta.get(&format!("sha256:{name}")).cloned());
            }
        }
    }
    let mut verdicts = Vec::new();
    for (name, sha) in &expected {
        let rebuilt = got.get(name).cloned().flatten();
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
            message: format!("`{}` lists no files", sums_path.display()),
            help: None,
        });
    }
    if bad == 0 {
        say(
            json,
            &format!(
                "verify: all {} files identical to `{}`",
                verdicts.len(),
                sums_path.display()
            ),
        );
        Ok(())
    } else {
        Err(CliError::BuildFailed(format!(
            "not reproducible: {bad} of {} files differ from `{}`",
            verdicts.len(),
            sums_path.display()
        )))
    }
}
