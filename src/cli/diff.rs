//! `imgspec diff OLD NEW`: what changed between two builds of an image, as a release manager
//! asks it. OLD and NEW are output folders (`out/IMAGE/`) or their `IMAGE.spdx.json` /
//! `IMAGE.manifest.json` files (the other one is looked for beside). Packages come from the
//! SBOMs (added, removed, changed with both versions); files from the final trees, when both
//! manifests' final tree steps are in the local cache (added, removed, changed with sizes).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use imgspec_cache::{EntryKind, Store, TreeChange};
use serde::Serialize;

use super::{internal, CliError};

/// The step kinds whose result is a tree: the last of them in a manifest is the final tree.
const TREE_KINDS: &[&str] = &[
    "base-tar",
    "base-debian",
    "packages",
    "files",
    "run",
    "user",
    "element",
    "bootloader",
    "fstab",
];

/// One build: its SBOM and build manifest, when found.
struct Side {
    shown: String,
    sbom: Option<PathBuf>,
    manifest: Option<PathBuf>,
}

fn usage(message: String, help: &str) -> CliError {
    CliError::Usage {
        message,
        help: Some(help.into()),
    }
}

const HELP: &str = "give two output folders (`out/IMAGE/`) or two `IMAGE.spdx.json` / \
                    `IMAGE.manifest.json` files, e.g. `imgspec diff old/debian-efi \
                    out/debian-efi`";

fn side(p: &Path) -> Result<Side, CliError> {
    let shown = p.display().to_string();
    let name = |s: &Path| s.file_name().map(|n| n.to_string_lossy().into_owned());
    let (sbom, manifest) = if p.is_dir() {
        let mut found = (Vec::new(), Vec::new());
        let entries =
            std::fs::read_dir(p).map_err(|e| usage(format!("cannot read `{shown}`: {e}"), HELP))?;
        for e in entries.flatten() {
            let f = e.path();
            match name(&f) {
                Some(n) if n.ends_with(".spdx.json") => found.0.push(f),
                Some(n) if n.ends_with(".manifest.json") => found.1.push(f),
                _ => {}
            }
        }
        found.0.sort();
        found.1.sort();
        if found.0.len() > 1 || found.1.len() > 1 {
            return Err(usage(
                format!("`{shown}` holds the files of several images"),
                "name the image's own files, e.g. `out/IMAGE/IMAGE.spdx.json`",
            ));
        }
        (found.0.pop(), found.1.pop())
    } else if !p.exists() {
        return Err(usage(format!("`{shown}` does not exist"), HELP));
    } else {
        let n = name(p).unwrap_or_default();
        let beside = |from: &str, to: &str| {
            let q = p.with_file_name(format!("{}{to}", n.trim_end_matches(from)));
            q.is_file().then_some(q)
        };
        if n.ends_with(".spdx.json") {
            (
                Some(p.to_path_buf()),
                beside(".spdx.json", ".manifest.json"),
            )
        } else if n.ends_with(".manifest.json") {
            (
                beside(".manifest.json", ".spdx.json"),
                Some(p.to_path_buf()),
            )
        } else {
            return Err(usage(
                format!("`{shown}` is neither an SBOM (`.spdx.json`) nor a build manifest"),
                HELP,
            ));
        }
    };
    if sbom.is_none() && manifest.is_none() {
        return Err(usage(
            format!("`{shown}` has no IMAGE.spdx.json or IMAGE.manifest.json"),
            HELP,
        ));
    }
    Ok(Side {
        shown,
        sbom,
        manifest,
    })
}

fn read_json(p: &Path) -> Result<serde_json::Value, CliError> {
    let text = std::fs::read_to_string(p)
        .map_err(|e| usage(format!("cannot read `{}`: {e}", p.display()), HELP))?;
    serde_json::from_str(&text).map_err(|e| {
        usage(
            format!("`{}` is not JSON: {e}", p.display()),
            "give files imgspec wrote (IMAGE.spdx.json, IMAGE.manifest.json)",
        )
    })
}

/// The packages of an SBOM by name and architecture, as their package manager writes them
/// (dpkg's `apt:amd64`, RPM's `bash.x86_64`): their version (the versions of an RPM installed
/// in several, `kernel-core`, joined by `, `).
fn packages(sbom: &Path) -> Result<BTreeMap<String, String>, CliError> {
    let v = read_json(sbom)?;
    let list = v["packages"].as_array().ok_or_else(|| {
        usage(
            format!("`{}` is not an SPDX document (no packages)", sbom.display()),
            "give the IMAGE.spdx.json that imgspec wrote",
        )
    })?;
    Ok(listed_packages(list))
}

fn listed_packages(list: &[serde_json::Value]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for p in list {
        let id = p["SPDXID"].as_str().unwrap_or_default();
        let rpm = id.starts_with("SPDXRef-RpmPackage-");
        if !rpm && !id.starts_with("SPDXRef-Package-") {
            continue; // the output files
        }
        let name = p["name"].as_str().unwrap_or_default();
        let arch = p["externalRefs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["referenceLocator"].as_str())
            .find_map(|purl| purl.split("arch=").nth(1))
            .map(|a| a.split('&').next().unwrap_or(a).to_string());
        let key = match (arch, rpm) {
            (Some(a), false) => format!("{name}:{a}"),
            (Some(a), true) => format!("{name}.{a}"),
            (None, _) => name.to_string(),
        };
        let version = p["versionInfo"].as_str().unwrap_or("").to_string();
        out.entry(key)
            .and_modify(|v: &mut String| *v = format!("{v}, {version}"))
            .or_insert(version);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packages_of_both_databases_each_in_its_own_notation() {
        let p = |id: &str, name: &str, version: &str, purl: &str| {
            serde_json::json!({
                "SPDXID": id, "name": name, "versionInfo": version,
                "externalRefs": [{"referenceLocator": purl}],
            })
        };
        let list = [
            p("SPDXRef-File-a.raw", "a.raw", "", ""),
            p(
                "SPDXRef-Package-bash-amd64",
                "bash",
                "5.2-1",
                "pkg:deb/debian/bash@5.2-1?arch=amd64",
            ),
            p(
                "SPDXRef-RpmPackage-bash-5.1-6.el9-x86_64",
                "bash",
                "5.1-6.el9",
                "pkg:rpm/rocky/bash@5.1-6.el9?arch=x86_64&distro=rocky-9",
            ),
            p(
                "SPDXRef-RpmPackage-k-1-1-x86_64",
                "k",
                "1-1",
                "pkg:rpm/rocky/k@1-1?arch=x86_64",
            ),
            p(
                "SPDXRef-RpmPackage-k-2-1-x86_64",
                "k",
                "2-1",
                "pkg:rpm/rocky/k@2-1?arch=x86_64",
            ),
        ];
        let got = listed_packages(&list);
        let want: BTreeMap<String, String> = [
            ("bash.x86_64", "5.1-6.el9"),
            ("bash:amd64", "5.2-1"),
            ("k.x86_64", "1-1, 2-1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(got, want);
    }
}

/// The final tree of a build manifest, when its step is in the cache.
fn final_tree(
    store: &Store,
    manifest: &Path,
) -> Result<Option<imgspec_cache::TreeManifest>, CliError> {
    let v = read_json(manifest)?;
    let Some(key) = v["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| TREE_KINDS.contains(&s["kind"].as_str().unwrap_or_default()))
        .filter_map(|s| s["key"].as_str())
        .next_back()
    else {
        return Ok(None);
    };
    let Some(key) = imgspec_cache::StepKey::parse_hex(key) else {
        return Ok(None);
    };
    let Some(tree) = store
        .lookup(&key)
        .ok()
        .flatten()
        .and_then(|r| r.output.tree)
    else {
        return Ok(None);
    };
    store.get_manifest(&tree).map(Some).map_err(internal)
}

#[derive(Serialize, Default)]
struct PackageDiff {
    added: Vec<(String, String)>,
    removed: Vec<(String, String)>,
    /// name, old version, new version
    changed: Vec<(String, String, String)>,
}

#[derive(Serialize)]
struct FileChange {
    path: String,
    /// `added`, `removed`, `changed`
    change: &'static str,
    old_size: Option<u64>,
    new_size: Option<u64>,
    /// What changed for a changed entry: `content`, `mode`, `owner`, `type`, `target`, `mtime`.
    what: Vec<&'static str>,
}

fn size(e: &imgspec_cache::Entry) -> Option<u64> {
    match e.kind {
        EntryKind::File { size, .. } => Some(size),
        _ => None,
    }
}

fn file_changes(changes: Vec<TreeChange>) -> Vec<FileChange> {
    changes
        .into_iter()
        .map(|c| match c {
            TreeChange::Added(n) => FileChange {
                old_size: None,
                new_size: size(&n),
                path: n.path,
                change: "added",
                what: vec![],
            },
            TreeChange::Removed(o) => FileChange {
                old_size: size(&o),
                new_size: None,
                path: o.path,
                change: "removed",
                what: vec![],
            },
            TreeChange::Changed { old, new } => {
                let mut what = Vec::new();
                if std::mem::discriminant(&old.kind) != std::mem::discriminant(&new.kind) {
                    what.push("type");
                } else if old.kind != new.kind {
                    what.push(match old.kind {
                        EntryKind::Symlink { .. } | EntryKind::Hardlink { .. } => "target",
                        _ => "content",
                    });
                }
                if old.mode != new.mode {
                    what.push("mode");
                }
                if (old.uid, old.gid) != (new.uid, new.gid) {
                    what.push("owner");
                }
                if old.mtime != new.mtime {
                    what.push("mtime");
                }
                if what.is_empty() {
                    what.push("attributes");
                }
                FileChange {
                    old_size: size(&old),
                    new_size: size(&new),
                    path: new.path,
                    change: "changed",
                    what,
                }
            }
        })
        .collect()
}

fn human(n: Option<u64>) -> String {
    n.map_or_else(|| "-".into(), super::human_bytes)
}

pub fn diff(cache_dir: &Path, old: &Path, new: &Path, json: bool) -> Result<(), CliError> {
    let (a, b) = (side(old)?, side(new)?);
    // Packages, when both sides have an SBOM.
    let packages = match (&a.sbom, &b.sbom) {
        (Some(x), Some(y)) => {
            let (pa, pb) = (packages(x)?, packages(y)?);
            let mut d = PackageDiff::default();
            for (k, v) in &pa {
                match pb.get(k) {
                    None => d.removed.push((k.clone(), v.clone())),
                    Some(w) if w != v => d.changed.push((k.clone(), v.clone(), w.clone())),
                    Some(_) => {}
                }
            }
            for (k, v) in &pb {
                if !pa.contains_key(k) {
                    d.added.push((k.clone(), v.clone()));
                }
            }
            Some(d)
        }
        _ => None,
    };
    // Files, when both final trees are in the local cache.
    let mut why_no_files = None;
    let files = match (&a.manifest, &b.manifest) {
        (Some(x), Some(y)) => {
            let store = Store::open(cache_dir).map_err(internal)?;
            match (final_tree(&store, x)?, final_tree(&store, y)?) {
                (Some(ta), Some(tb)) => Some(file_changes(imgspec_cache::diff(&ta, &tb))),
                _ => {
                    why_no_files = Some(format!(
                        "files: not compared, a final tree is not in the cache at `{}`",
                        cache_dir.display()
                    ));
                    None
                }
            }
        }
        _ => {
            why_no_files = Some("files: not compared, a build manifest is missing".into());
            None
        }
    };
    if json {
        let doc = serde_json::json!({
            "old": a.shown,
            "new": b.shown,
            "packages": packages,
            "files": files,
        });
        println!("{}", serde_json::to_string_pretty(&doc).map_err(internal)?);
        return Ok(());
    }
    println!("{} → {}", a.shown, b.shown);
    match &packages {
        None => println!("packages: not compared, an SBOM (IMAGE.spdx.json) is missing"),
        Some(d) => {
            println!(
                "packages: {} added, {} removed, {} changed",
                d.added.len(),
                d.removed.len(),
                d.changed.len()
            );
            for (k, v) in &d.added {
                println!("  + {k} {v}");
            }
            for (k, v) in &d.removed {
                println!("  - {k} {v}");
            }
            for (k, v, w) in &d.changed {
                println!("  ~ {k} {v} → {w}");
            }
        }
    }
    match (&files, why_no_files) {
        (Some(f), _) => {
            let count = |c: &str| f.iter().filter(|x| x.change == c).count();
            println!(
                "files: {} added, {} removed, {} changed",
                count("added"),
                count("removed"),
                count("changed")
            );
            for c in f {
                let path = format!("/{}", c.path);
                match c.change {
                    "added" => println!("  + {path} ({})", human(c.new_size)),
                    "removed" => println!("  - {path} ({})", human(c.old_size)),
                    _ => println!(
                        "  ~ {path} ({}: {} → {})",
                        c.what.join(", "),
                        human(c.old_size),
                        human(c.new_size)
                    ),
                }
            }
        }
        (None, Some(why)) => println!("{why}"),
        (None, None) => {}
    }
    Ok(())
}
