//! The remote cache and bundles on the command line: `--remote`, `--remote-write`, the config
//! file, credentials from the environment, and `cache push/pull/export/import`.
//!
//! Where the remote comes from, first found wins: `--remote URL`, `IMGSPEC_REMOTE`, then
//! `remote "URL"` in the config file (`$XDG_CONFIG_HOME/imgspec/config.kdl`, by default
//! `~/.config/imgspec/config.kdl`). Uploads happen with `--remote-write` or `remote-write #true`
//! in the config file. Credentials: `IMGSPEC_REMOTE_TOKEN` (bearer), else
//! `IMGSPEC_REMOTE_USER`/`IMGSPEC_REMOTE_PASSWORD` (basic), else `user:password@` in the URL.
//! A URL is only ever shown without its user information.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use imgspec_cache::{Credentials, Remote, StepKey, Store};

use super::{error_chain, human_bytes, missing_tools, need_specs, plan_error, CliError, HostFacts};
use crate::plan::Plan;
use crate::spec;

/// The global flags of the remote cache.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct RemoteArgs {
    /// Remote cache URL (plain HTTP GET/HEAD/PUT, e.g. nginx with WebDAV PUT)
    /// [default: `remote` in $XDG_CONFIG_HOME/imgspec/config.kdl]
    #[arg(long, global = true, env = "IMGSPEC_REMOTE", value_name = "URL")]
    pub remote: Option<String>,
    /// Upload the steps this build makes to the remote cache (for CI)
    #[arg(long, global = true)]
    pub remote_write: bool,
}

/// What the config file says.
#[derive(Debug, Default, PartialEq)]
struct Config {
    remote: Option<String>,
    remote_write: Option<bool>,
}

fn config_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("imgspec").join("config.kdl"))
}

fn parse_config(text: &str, path: &Path) -> Result<Config, CliError> {
    let bad = |what: String| CliError::Usage {
        message: format!("config file `{}`: {what}", path.display()),
        help: Some("it may hold `remote \"http://host/path\"` and `remote-write #true`".into()),
    };
    let doc = kdl::KdlDocument::parse(text).map_err(|e| bad(format!("not valid KDL: {e}")))?;
    let mut config = Config::default();
    for node in doc.nodes() {
        let name = node.name().value();
        let args: Vec<&kdl::KdlValue> = node
            .entries()
            .iter()
            .filter(|e| e.name().is_none())
            .map(|e| e.value())
            .collect();
        match (name, args.as_slice()) {
            ("remote", [kdl::KdlValue::String(s)]) => config.remote = Some(s.clone()),
            ("remote-write", [kdl::KdlValue::Bool(b)]) => config.remote_write = Some(*b),
            ("remote", _) => return Err(bad("`remote` takes one string, the URL".into())),
            ("remote-write", _) => return Err(bad("`remote-write` takes #true or #false".into())),
            (other, _) => return Err(bad(format!("unknown setting `{other}`"))),
        }
    }
    Ok(config)
}

fn read_config() -> Result<Config, CliError> {
    let Some(path) = config_path() else {
        return Ok(Config::default());
    };
    let text = crate::spec::read_bounded(&path, 1 << 20).and_then(|bytes| {
        String::from_utf8(bytes)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    });
    match text {
        Ok(text) => parse_config(&text, &path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
        // Another user's config (`sudo -u` with root's HOME, say) is not ours to read: go on
        // without it, and say so once.
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            eprintln!(
                "warning: the config file `{}` is not readable ({}): going on without it",
                path.display(),
                e.kind()
            );
            Ok(Config::default())
        }
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::InvalidInput
                    | std::io::ErrorKind::InvalidData
                    | std::io::ErrorKind::FileTooLarge
            ) =>
        {
            Err(CliError::Usage {
                message: format!("config file `{}`: {e}", path.display()),
                help: Some(
                    "it is a small KDL text file that may hold `remote \"http://host/path\"` and `remote-write #true`"
                        .into(),
                ),
            })
        }
        Err(e) => Err(CliError::Environment {
            message: format!("cannot read the config file `{}`: {e}", path.display()),
            help: None,
        }),
    }
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn credentials() -> Credentials {
    if let Some(token) = env_nonempty("IMGSPEC_REMOTE_TOKEN") {
        return Credentials::Bearer(token);
    }
    match env_nonempty("IMGSPEC_REMOTE_USER") {
        Some(user) => Credentials::Basic {
            user,
            password: std::env::var("IMGSPEC_REMOTE_PASSWORD").unwrap_or_default(),
        },
        None => Credentials::None,
    }
}

/// The remote cache the flags, environment and config file name, and whether to write to it.
pub fn open(args: &RemoteArgs) -> Result<Option<(Remote, bool)>, CliError> {
    let config = read_config()?;
    let url = args.remote.clone().or(config.remote);
    let write = args.remote_write || config.remote_write.unwrap_or(false);
    let Some(url) = url else {
        if args.remote_write {
            return Err(CliError::Usage {
                message: "--remote-write needs a remote cache".into(),
                help: Some(
                    "give --remote URL, set IMGSPEC_REMOTE, or write `remote \"URL\"` in the \
                     config file"
                        .into(),
                ),
            });
        }
        return Ok(None);
    };
    let help = || Some("a remote cache URL looks like http://host:port/path".into());
    // A URL the HTTP client cannot parse would fail every request, each a warning only.
    if let Err(e) = url.parse::<ureq::http::Uri>() {
        return Err(CliError::Usage {
            message: format!(
                "bad remote cache URL `{}`: {}",
                imgspec_cache::remote::redact_url(&url),
                e
            ),
            help: help(),
        });
    }
    let remote = Remote::new(&url, credentials()).map_err(|e| CliError::Usage {
        message: error_chain(&e),
        help: help(),
    })?;
    Ok(Some((remote, write)))
}

fn require(args: &RemoteArgs, what: &str) -> Result<Remote, CliError> {
    match open(args)? {
        Some((r, _)) => Ok(r),
        None => Err(CliError::Usage {
            message: format!("`cache {what}` needs a remote cache"),
            help: Some(
                "give --remote URL, set IMGSPEC_REMOTE, or write `remote \"URL\"` in the config \
                 file"
                    .into(),
            ),
        }),
    }
}

fn unavailable(remote: &Remote, e: &imgspec_cache::RemoteError) -> CliError {
    CliError::Environment {
        message: error_chain(e),
        help: Some(format!(
            "check that {} is up and that the credentials (IMGSPEC_REMOTE_USER/PASSWORD or \
             IMGSPEC_REMOTE_TOKEN) are right",
            remote.url()
        )),
    }
}

/// The plan of `specs`, with the keys a build would use.
fn plan_of(store: &Store, specs: &[PathBuf]) -> Result<Plan, CliError> {
    need_specs(specs)?;
    let spec = spec::load(specs)?;
    let facts = HostFacts::new(store);
    let plan = crate::plan::plan(&spec, &facts).map_err(plan_error)?;
    let missing = facts
        .missing
        .into_inner()
        .unwrap_or_else(|e| e.into_inner());
    if !missing.is_empty() {
        return Err(missing_tools(&missing));
    }
    Ok(plan)
}

/// Each step of the plan once: (key, label).
fn steps(plan: &Plan) -> Vec<(StepKey, String)> {
    let mut seen = BTreeSet::new();
    plan.steps
        .iter()
        .filter(|s| seen.insert(s.key))
        .map(|s| (s.key, s.label.clone()))
        .collect()
}

fn report(json: bool, value: serde_json::Value, text: String) {
    if json {
        println!("{value}");
    } else {
        eprintln!("{text}");
    }
}

/// `doctor`: whether the configured remote cache answers, and to whom.
pub fn doctor(args: &RemoteArgs) -> Result<(), CliError> {
    let Some((remote, write)) = open(args)? else {
        println!("remote cache: none configured");
        return Ok(());
    };
    let mode = if write { "read-write" } else { "read-only" };
    match remote.probe() {
        Ok(()) => println!("remote cache: {} answers ({mode})", remote.url()),
        Err(e) => println!(
            "remote cache: {} UNAVAILABLE ({mode}): builds go on with the local cache only
  {}",
            remote.url(),
            error_chain(&e)
        ),
    }
    Ok(())
}

/// `cache push`: the results of every step of the specs that the local cache holds, to the
/// remote; what the remote has is skipped.
pub fn push(
    store: &Store,
    specs: &[PathBuf],
    args: &RemoteArgs,
    json: bool,
) -> Result<(), CliError> {
    let remote = require(args, "push")?;
    let plan = plan_of(store, specs)?;
    let steps = steps(&plan);
    enum Done {
        Pushed(imgspec_cache::remote::PushStats),
        NotLocal(String),
    }
    // One step after the other (each step's blobs go in parallel): steps share blobs, and two
    // steps at once would both find a shared blob missing and both send it.
    let results: Vec<Result<Done, imgspec_cache::RemoteError>> = steps
        .iter()
        .map(|(key, label)| match store.lookup(key) {
            Ok(Some(rec)) => remote
                .push_step(store, key, &rec.kind, &rec.name, &rec.output)
                .map(Done::Pushed),
            _ => Ok(Done::NotLocal(label.clone())),
        })
        .collect();
    let (mut pushed, mut there, mut blobs, mut bytes) = (0, 0, 0, 0u64);
    let mut not_local = Vec::new();
    for r in results {
        match r {
            Ok(Done::Pushed(s)) if s.already_there => there += 1,
            Ok(Done::Pushed(s)) => {
                pushed += 1;
                blobs += s.blobs_sent;
                bytes += s.bytes_sent;
            }
            Ok(Done::NotLocal(l)) => not_local.push(l),
            Err(e) if e.is_unavailable() => return Err(unavailable(&remote, &e)),
            Err(e) => return Err(CliError::Internal(error_chain(&e))),
        }
    }
    let mut text = format!(
        "pushed {pushed} step results ({blobs} blobs, {}) to {}; {there} already there",
        human_bytes(bytes),
        remote.url()
    );
    if !not_local.is_empty() {
        text.push_str(&format!(
            "\n{} steps are not in the local cache (build them first): {}",
            not_local.len(),
            not_local.join(", ")
        ));
    }
    report(
        json,
        serde_json::json!({"pushed": pushed, "already_there": there, "blobs": blobs,
            "bytes": bytes, "not_local": not_local}),
        text,
    );
    Ok(())
}

/// `cache pull`: the results of every step of the specs that the remote holds, into the local
/// cache, each checked; what is local already is skipped.
pub fn pull(
    store: &Store,
    specs: &[PathBuf],
    args: &RemoteArgs,
    json: bool,
) -> Result<(), CliError> {
    let remote = require(args, "pull")?;
    let plan = plan_of(store, specs)?;
    let steps = steps(&plan);
    enum Done {
        Local,
        Pulled,
        NotThere(String),
    }
    // One step after the other, each step's blobs in parallel (as for push).
    let results: Vec<(String, Result<Done, imgspec_cache::RemoteError>)> = steps
        .iter()
        .map(|(key, label)| {
            let r = match store.lookup(key) {
                Ok(Some(_)) => Ok(Done::Local),
                _ => remote.fetch_step(store, key).map(|r| match r {
                    Some(_) => Done::Pulled,
                    None => Done::NotThere(label.clone()),
                }),
            };
            (label.clone(), r)
        })
        .collect();
    let (mut pulled, mut local) = (0, 0);
    let mut not_there = Vec::new();
    let mut refused = Vec::new();
    for (label, r) in results {
        match r {
            Ok(Done::Local) => local += 1,
            Ok(Done::Pulled) => pulled += 1,
            Ok(Done::NotThere(l)) => not_there.push(l),
            Err(e) if e.is_unavailable() => return Err(unavailable(&remote, &e)),
            Err(e) => refused.push(format!("{label}: {}", error_chain(&e))),
        }
    }
    let (down, _) = remote.traffic();
    let mut text = format!(
        "pulled {pulled} step results ({} downloaded) from {}; {local} already local",
        human_bytes(down),
        remote.url()
    );
    if !not_there.is_empty() {
        text.push_str(&format!(
            "\n{} steps are not on the remote: {}",
            not_there.len(),
            not_there.join(", ")
        ));
    }
    report(
        json,
        serde_json::json!({"pulled": pulled, "already_local": local, "bytes": down,
            "not_on_remote": not_there, "refused": refused}),
        text,
    );
    if !refused.is_empty() {
        return Err(CliError::BuildFailed(format!(
            "the remote's results of these steps were refused (nothing of them was kept):\n  {}",
            refused.join("\n  ")
        )));
    }
    Ok(())
}

/// `cache export`: a bundle of every step result of the specs the local cache holds.
pub fn export(store: &Store, specs: &[PathBuf], out: &Path, json: bool) -> Result<(), CliError> {
    let plan = plan_of(store, specs)?;
    let mut keys = Vec::new();
    let mut not_local = Vec::new();
    for (key, label) in steps(&plan) {
        match store.lookup(&key) {
            Ok(Some(_)) => keys.push(key),
            _ => not_local.push(label),
        }
    }
    if keys.is_empty() {
        return Err(CliError::Usage {
            message: "nothing of these specs is in the local cache".into(),
            help: Some("build them first: `imgspec build SPEC`".into()),
        });
    }
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let io_err = |e: std::io::Error| CliError::Environment {
        message: format!("cannot write the bundle `{}`: {e}", out.display()),
        help: None,
    };
    // Written beside the target and renamed: a failed export leaves no half bundle.
    let mut tmp = tempfile::Builder::new()
        .prefix(".imgspec-bundle-")
        .tempfile_in(dir)
        .map_err(io_err)?;
    let stats = store
        .export_bundle(&keys, tmp.as_file_mut())
        .map_err(|e| CliError::Internal(error_chain(&e)))?;
    tmp.as_file().sync_all().map_err(io_err)?;
    tmp.persist(out).map_err(|e| io_err(e.error))?;
    let mut text = format!(
        "exported {} step results ({} blobs, {}) to {}",
        stats.records,
        stats.blobs,
        human_bytes(stats.bytes),
        out.display()
    );
    if !not_local.is_empty() {
        text.push_str(&format!(
            "\n{} steps are not in the local cache and were left out: {}",
            not_local.len(),
            not_local.join(", ")
        ));
    }
    report(
        json,
        serde_json::json!({"records": stats.records, "blobs": stats.blobs,
            "bytes": stats.bytes, "not_local": not_local}),
        text,
    );
    Ok(())
}

/// `cache import`: a bundle into the local cache, every blob checked, all records or none.
pub fn import(store: &Store, bundle: &Path, json: bool) -> Result<(), CliError> {
    let file = std::fs::File::open(bundle).map_err(|e| CliError::Usage {
        message: format!("cannot open the bundle `{}`: {e}", bundle.display()),
        help: None,
    })?;
    let mut r = std::io::BufReader::new(file);
    let stats = store.import_bundle(&mut r).map_err(|e| CliError::Usage {
        message: format!("bundle `{}` refused: {}", bundle.display(), error_chain(&e)),
        help: Some(
            "nothing from it was recorded; make it again with `imgspec cache export`".into(),
        ),
    })?;
    report(
        json,
        serde_json::json!({"records": stats.records, "blobs": stats.blobs, "bytes": stats.bytes}),
        format!(
            "imported {} step results ({} blobs, {}) from {}",
            stats.records,
            stats.blobs,
            human_bytes(stats.bytes),
            bundle.display()
        ),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_file_names_a_remote_and_whether_to_write() {
        let p = Path::new("config.kdl");
        let c = parse_config("remote \"http://h:8080/c\"\nremote-write #true\n", p).unwrap();
        assert_eq!(
            c,
            Config {
                remote: Some("http://h:8080/c".into()),
                remote_write: Some(true)
            }
        );
        assert_eq!(parse_config("", p).unwrap(), Config::default());
        for bad in [
            "remote 1",
            "remote-write \"yes\"",
            "cache-dir \"/x\"",
            "remote {",
        ] {
            assert!(parse_config(bad, p).is_err(), "{bad}");
        }
    }
}
