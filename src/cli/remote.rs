//! The remote caches and bundles on the command line: `--remote`, `--remote-write`, the config
//! file, credentials from the environment, and `cache push/pull/export/import`.
//!
//! Tiers: the local cache first, then the remote caches in the order they are named, each
//! read-only or read-write ([`tiers`]; the executor asks them in order, see
//! `imgspec_cache::tiers`). Where they come from, first found wins: `--remote URL` (repeat it
//! for several), `IMGSPEC_REMOTE` (one URL), then the `remote "URL"` nodes of the config file
//! (`$XDG_CONFIG_HOME/imgspec/config.kdl`, by default `~/.config/imgspec/config.kdl`). A remote
//! is read-write when its own `write=#true` says so, else when `--remote-write` or
//! `remote-write #true` is given (and not `write=#false`). Credentials: `IMGSPEC_REMOTE_TOKEN`
//! (bearer), else `IMGSPEC_REMOTE_USER`/`IMGSPEC_REMOTE_PASSWORD` (basic), else
//! `user:password@` in the URL; AWS's own chain for `s3://`. A URL is only ever shown without
//! its user information.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use imgspec_cache::{Credentials, Mode, Remote, Store, Tier, Tiers};

use super::progress::{polled, Bar, Counting};
use super::{error_lines, human_bytes, need_specs, CliError};
use crate::plan::Plan;

/// The global flags of the remote caches.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct RemoteArgs {
    /// Remote cache: http(s)://HOST/PATH (GET/HEAD/PUT, e.g. nginx with WebDAV PUT) or
    /// s3://BUCKET/PREFIX (AWS S3 or a self-hosted S3 store). Repeat for several: they are
    /// asked in order after the local cache
    /// [default: the `remote` nodes of $XDG_CONFIG_HOME/imgspec/config.kdl]
    #[arg(long, global = true, env = "IMGSPEC_REMOTE", value_name = "URL")]
    pub remote: Vec<String>,
    /// Upload the steps this build makes to the remote caches (for CI); a remote the config
    /// file marks `write=#false` stays read-only
    #[arg(long, global = true)]
    pub remote_write: bool,
}

/// What the config file says.
#[derive(Debug, Default, PartialEq)]
struct Config {
    /// The `remote` nodes, in order.
    remotes: Vec<RemoteConfig>,
    /// `remote-write`: whether remotes that do not say `write=` are written.
    remote_write: Option<bool>,
}

/// One `remote` node: `remote "URL" [write=#true|#false] [endpoint=… region=… path-style=…]`.
#[derive(Debug, Default, PartialEq, Clone)]
struct RemoteConfig {
    url: String,
    /// `write=`: this remote's own mode, whatever `remote-write` and `--remote-write` say.
    write: Option<bool>,
    /// Settings of an `s3://` remote: `endpoint=`, `region=`, `path-style=`.
    s3: S3Settings,
}

/// Where an S3 bucket is, beyond its name: for a self-hosted store, its endpoint.
#[derive(Debug, Default, PartialEq, Clone)]
struct S3Settings {
    endpoint: Option<String>,
    region: Option<String>,
    path_style: Option<bool>,
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
        help: Some(
            "it may hold `remote \"http://host/path\"` nodes (one per remote cache, asked in \
             order; `write=#true` on those CI writes to) and `remote-write #true`"
                .into(),
        ),
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
            ("remote", [kdl::KdlValue::String(s)]) => {
                if config.remotes.iter().any(|r| r.url == *s) {
                    return Err(bad(format!(
                        "the remote `{}` is named twice",
                        imgspec_cache::remote::redact_url(s)
                    )));
                }
                let mut r = RemoteConfig {
                    url: s.clone(),
                    ..RemoteConfig::default()
                };
                for e in node.entries().iter().filter(|e| e.name().is_some()) {
                    let key = e.name().map(|n| n.value()).unwrap_or_default();
                    match (key, e.value()) {
                        ("write", kdl::KdlValue::Bool(b)) => r.write = Some(*b),
                        ("endpoint", kdl::KdlValue::String(v)) => r.s3.endpoint = Some(v.clone()),
                        ("region", kdl::KdlValue::String(v)) => r.s3.region = Some(v.clone()),
                        ("path-style", kdl::KdlValue::Bool(b)) => r.s3.path_style = Some(*b),
                        _ => {
                            return Err(bad(format!(
                                "`remote` takes `write=#true|#false`, and `endpoint=\"URL\"`, \
                                 `region=\"NAME\"` and `path-style=#true` (for s3:// remotes), \
                                 not `{key}=`"
                            )))
                        }
                    }
                }
                if node.children().is_some() {
                    return Err(bad("`remote` takes no block".into()));
                }
                config.remotes.push(r);
            }
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

/// A remote as the flags, environment or config file name it, opened.
struct Opened {
    remote: Remote,
    /// Its own `write=` in the config file.
    write: Option<bool>,
}

/// The remotes the flags, environment and config file name, in order, and whether those that
/// do not say `write=` are read-write.
fn open_all(args: &RemoteArgs) -> Result<(Vec<Opened>, bool), CliError> {
    let config = read_config()?;
    let write = args.remote_write || config.remote_write.unwrap_or(false);
    let named: Vec<RemoteConfig> = if args.remote.is_empty() {
        config.remotes.clone()
    } else {
        // URLs from the command line or the environment: each takes the S3 settings the config
        // file gives the same URL, else those of its first remote (one `remote` with its
        // `endpoint=` serves `--remote s3://…` as it always did).
        args.remote
            .iter()
            .map(|url| {
                let from = config
                    .remotes
                    .iter()
                    .find(|r| r.url == *url)
                    .or(config.remotes.first());
                RemoteConfig {
                    url: url.clone(),
                    write: None,
                    s3: from.map(|r| r.s3.clone()).unwrap_or_default(),
                }
            })
            .collect()
    };
    if named.is_empty() && args.remote_write {
        return Err(CliError::Usage {
            message: "--remote-write needs a remote cache".into(),
            help: Some(
                "give --remote URL, set IMGSPEC_REMOTE, or write `remote \"URL\"` in the \
                 config file"
                    .into(),
            ),
        });
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for r in named {
        if !seen.insert(r.url.clone()) {
            return Err(CliError::Usage {
                message: format!(
                    "the remote cache `{}` is named twice",
                    imgspec_cache::remote::redact_url(&r.url)
                ),
                help: Some("name each remote cache once; they are asked in order".into()),
            });
        }
        out.push(Opened {
            remote: open_one(&r)?,
            write: r.write,
        });
    }
    Ok((out, write))
}

/// One remote: the backend its URL's scheme names. A new backend is one more arm here.
fn open_one(r: &RemoteConfig) -> Result<Remote, CliError> {
    let url = &r.url;
    let help =
        || Some("a remote cache URL looks like http://host:port/path or s3://bucket/prefix".into());
    // A URL the HTTP client cannot parse would fail every request, each a warning only.
    if !url.starts_with("s3://") {
        if let Err(e) = url.parse::<ureq::http::Uri>() {
            return Err(CliError::Usage {
                message: format!(
                    "bad remote cache URL `{}`: {}",
                    imgspec_cache::remote::redact_url(url),
                    e
                ),
                help: help(),
            });
        }
    }
    if url.starts_with("s3://") {
        Remote::new_s3(&s3_config(url, &r.s3)?)
    } else {
        Remote::new(url, credentials())
    }
    .map_err(|e| CliError::Usage {
        message: error_lines(&e),
        help: help(),
    })
}

/// The tiers of a build: the remote caches the flags, environment and config file name, in
/// order, each read-only or read-write. Empty when none is named (the local cache only).
pub fn tiers(args: &RemoteArgs) -> Result<Tiers, CliError> {
    let (opened, write) = open_all(args)?;
    Ok(to_tiers(opened, write))
}

/// Each remote read-write when its own `write=` says so, else when `write`.
fn to_tiers(opened: Vec<Opened>, write: bool) -> Tiers {
    Tiers::new(
        opened
            .into_iter()
            .map(|o| Tier {
                mode: if o.write.unwrap_or(write) {
                    Mode::ReadWrite
                } else {
                    Mode::ReadOnly
                },
                remote: o.remote,
            })
            .collect(),
    )
}

/// An `s3://BUCKET/PREFIX` remote with the config file's settings, then the standard AWS
/// environment (`AWS_ENDPOINT_URL_S3`/`AWS_ENDPOINT_URL`, `AWS_REGION`/`AWS_DEFAULT_REGION`,
/// `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN`), then the profile
/// (`AWS_PROFILE`, else `default`) of the shared files `~/.aws/credentials` and
/// `~/.aws/config` (`AWS_SHARED_CREDENTIALS_FILE`, `AWS_CONFIG_FILE`). Without keys the S3
/// client asks the instance metadata service.
fn s3_config(url: &str, settings: &S3Settings) -> Result<imgspec_cache::s3::S3Config, CliError> {
    let rest = url.strip_prefix("s3://").unwrap_or(url);
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() || bucket.contains('@') || bucket.contains(':') {
        return Err(CliError::Usage {
            message: format!("`{}` names no bucket", imgspec_cache::remote::redact_url(url)),
            help: Some("write s3://BUCKET/PREFIX; credentials come from the AWS environment or profile, never the URL".into()),
        });
    }
    let profile_name = env_nonempty("AWS_PROFILE").unwrap_or_else(|| "default".into());
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let file = |var: &str, rel: &str| {
        env_nonempty(var)
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join(rel))
    };
    let creds = read_ini(
        &file("AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials"),
        &profile_name,
    );
    let conf_section = if profile_name == "default" {
        "default".to_string()
    } else {
        format!("profile {profile_name}")
    };
    let conf = read_ini(&file("AWS_CONFIG_FILE", ".aws/config"), &conf_section);
    let pick = |env: &[&str], ini: &[(&std::collections::BTreeMap<String, String>, &str)]| {
        env.iter()
            .find_map(|v| env_nonempty(v))
            .or_else(|| ini.iter().find_map(|(m, k)| m.get(*k).cloned()))
    };
    let (access_key_id, secret_access_key, session_token) = match env_nonempty("AWS_ACCESS_KEY_ID")
    {
        Some(id) => (
            Some(id),
            env_nonempty("AWS_SECRET_ACCESS_KEY"),
            env_nonempty("AWS_SESSION_TOKEN"),
        ),
        None => (
            pick(
                &[],
                &[(&creds, "aws_access_key_id"), (&conf, "aws_access_key_id")],
            ),
            pick(
                &[],
                &[
                    (&creds, "aws_secret_access_key"),
                    (&conf, "aws_secret_access_key"),
                ],
            ),
            pick(
                &[],
                &[(&creds, "aws_session_token"), (&conf, "aws_session_token")],
            ),
        ),
    };
    let endpoint = settings.endpoint.clone().or_else(|| {
        pick(
            &["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"],
            &[(&conf, "endpoint_url")],
        )
    });
    let region = settings
        .region
        .clone()
        .or_else(|| pick(&["AWS_REGION", "AWS_DEFAULT_REGION"], &[(&conf, "region")]));
    // Self-hosted stores take path-style requests; AWS prefers virtual-hosted ones.
    let virtual_hosted = !settings.path_style.unwrap_or(endpoint.is_some());
    Ok(imgspec_cache::s3::S3Config {
        bucket: bucket.to_string(),
        prefix: prefix.trim_matches('/').to_string(),
        endpoint,
        region,
        virtual_hosted,
        access_key_id,
        secret_access_key,
        session_token,
    })
}

/// The `key = value` lines of section `[section]` of an INI file (the AWS shared files).
fn read_ini(path: &Path, section: &str) -> std::collections::BTreeMap<String, String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    parse_ini(&text, section)
}

fn parse_ini(text: &str, section: &str) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    let mut inside = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = name.trim() == section;
            continue;
        }
        if inside {
            if let Some((k, v)) = line.split_once('=') {
                out.insert(k.trim().to_string(), v.trim().to_string());
            }
        }
    }
    out
}

fn require(args: &RemoteArgs, what: &str) -> Result<(Vec<Opened>, bool), CliError> {
    let (opened, write) = open_all(args)?;
    if opened.is_empty() {
        return Err(CliError::Usage {
            message: format!("`cache {what}` needs a remote cache"),
            help: Some(
                "give --remote URL, set IMGSPEC_REMOTE, or write `remote \"URL\"` in the config \
                 file"
                    .into(),
            ),
        });
    }
    Ok((opened, write))
}

fn unavailable(remote: &Remote, e: &imgspec_cache::RemoteError) -> CliError {
    CliError::Environment {
        message: error_lines(e),
        help: Some(format!(
            "check that {} is up and that the credentials (IMGSPEC_REMOTE_USER/PASSWORD or \
             IMGSPEC_REMOTE_TOKEN) are right",
            remote.url()
        )),
    }
}

/// The plan of `specs`, with the keys a build would use: their locks included, exactly as
/// `build` plans them.
fn plan_of(store: &Store, specs: &[PathBuf]) -> Result<Plan, CliError> {
    need_specs(specs)?;
    let (spec, lock) = crate::build::load(specs)?;
    Ok(crate::build::plan_of(store, &spec, lock.as_ref())?)
}

fn report(json: bool, value: serde_json::Value, text: String) {
    if json {
        println!("{value}");
    } else {
        eprintln!("{text}");
    }
}

/// `doctor`: whether each configured remote cache answers, and whether builds write to it.
pub fn doctor(args: &RemoteArgs) -> Result<(), CliError> {
    let tiers = tiers(args)?;
    if tiers.is_empty() {
        println!("remote cache: none configured");
        return Ok(());
    }
    for (i, t) in tiers.iter().enumerate() {
        let mode = match t.mode {
            Mode::ReadWrite => "read-write",
            Mode::ReadOnly => "read-only",
        };
        let which = match tiers.len() {
            1 => String::new(),
            n => format!(" {}/{n}", i + 1),
        };
        match t.remote.probe() {
            Ok(()) => println!("remote cache{which}: {} answers ({mode})", t.remote.url()),
            Err(e) => println!(
                "remote cache{which}: {} UNAVAILABLE ({mode}): builds go on without it
  {}",
                t.remote.url(),
                error_lines(&e)
            ),
        }
    }
    Ok(())
}

/// What `cache push` sent to one remote.
#[derive(Default)]
struct Pushed {
    pushed: usize,
    there: usize,
    blobs: usize,
    bytes: u64,
}

/// `cache push`: the results of every step of the specs that the local cache holds, to every
/// remote cache but those the config file marks `write=#false` (a push is an explicit request
/// to write: a remote that says nothing is written, as `cache push --remote URL` always did);
/// what a remote has is skipped. A remote that cannot be reached fails the command (exit 3)
/// once the others are done.
pub fn push(
    store: &Store,
    specs: &[PathBuf],
    args: &RemoteArgs,
    json: bool,
) -> Result<(), CliError> {
    let (opened, _) = require(args, "push")?;
    let targets: Vec<&Remote> = opened
        .iter()
        .filter(|o| o.write != Some(false))
        .map(|o| &o.remote)
        .collect();
    if targets.is_empty() {
        return Err(CliError::Usage {
            message: "every remote cache is read-only (`write=#false` in the config file)".into(),
            help: Some("name the one to push to: `imgspec cache push SPEC --remote URL`".into()),
        });
    }
    let plan = plan_of(store, specs)?;
    let mut local = Vec::new();
    let mut not_local = Vec::new();
    for (key, label) in crate::build::unique_steps(&plan) {
        match store.lookup(&key) {
            Ok(Some(rec)) => local.push((key, rec)),
            _ => not_local.push(label),
        }
    }
    let mut lines = Vec::new();
    let mut per_remote = Vec::new();
    let mut total = Pushed::default();
    let mut down = None;
    for remote in targets {
        // One step after the other (each step's blobs go in parallel): steps share blobs, and
        // two steps at once would both find a shared blob missing and both send it.
        let mut p = Pushed::default();
        let bar = Bar::new(&format!("pushing to {}", remote.url()), None, json);
        let sent = polled(
            &bar,
            || remote.traffic().1,
            || {
                for (key, rec) in &local {
                    match remote.push_step(store, key, &rec.kind, &rec.name, &rec.output) {
                        Ok(s) if s.already_there => p.there += 1,
                        Ok(s) => {
                            p.pushed += 1;
                            p.blobs += s.blobs_sent;
                            p.bytes += s.bytes_sent;
                        }
                        Err(e) if e.is_unavailable() => {
                            down.get_or_insert(unavailable(remote, &e));
                            break;
                        }
                        Err(e) => return Err(CliError::Internal(error_lines(&e))),
                    }
                }
                Ok(())
            },
        );
        drop(bar);
        sent?;
        if remote.is_down() {
            continue;
        }
        lines.push(format!(
            "pushed {} step results ({} blobs, {}) to {}; {} already there",
            p.pushed,
            p.blobs,
            human_bytes(p.bytes),
            remote.url(),
            p.there
        ));
        per_remote.push(
            serde_json::json!({"remote": remote.url(), "pushed": p.pushed,
            "already_there": p.there, "blobs": p.blobs, "bytes": p.bytes}),
        );
        total.pushed += p.pushed;
        total.there += p.there;
        total.blobs += p.blobs;
        total.bytes += p.bytes;
    }
    if lines.is_empty() {
        if let Some(e) = down.take() {
            return Err(e);
        }
    }
    let mut text = lines.join("\n");
    if !not_local.is_empty() {
        text.push_str(&format!(
            "\n{} steps are not in the local cache (build them first): {}",
            not_local.len(),
            not_local.join(", ")
        ));
    }
    report(
        json,
        serde_json::json!({"pushed": total.pushed, "already_there": total.there,
            "blobs": total.blobs, "bytes": total.bytes, "not_local": not_local,
            "remotes": per_remote}),
        text,
    );
    match down {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// `cache pull`: the results of every step of the specs that a remote holds, into the local
/// cache, each checked; what is local already is skipped. The remotes are asked in order, as a
/// build asks them, and a result found in one is also uploaded to the read-write remotes before
/// it (as a build fills them). A remote that cannot be reached is skipped with a warning; when
/// none can, the command fails (exit 3).
pub fn pull(
    store: &Store,
    specs: &[PathBuf],
    args: &RemoteArgs,
    json: bool,
) -> Result<(), CliError> {
    let (opened, write) = require(args, "pull")?;
    let tiers = to_tiers(opened, write);
    let plan = plan_of(store, specs)?;
    let steps = crate::build::unique_steps(&plan);
    let mut pulled = vec![0usize; tiers.len()];
    let mut filled = vec![0usize; tiers.len()];
    let mut local = 0;
    let mut not_there = Vec::new();
    let mut refused = Vec::new();
    let mut warnings = Vec::new();
    let mut first_down: Option<CliError> = None;
    // One step after the other, each step's blobs in parallel (as for push).
    let shown: Vec<&str> = tiers.iter().map(|t| t.remote.url()).collect();
    let bar = Bar::new(&format!("pulling from {}", shown.join(", ")), None, json);
    let fetched = polled(
        &bar,
        || tiers.iter().map(|t| t.remote.traffic().0).sum(),
        || -> Result<(), CliError> {
            for (key, label) in &steps {
                if let Ok(Some(_)) = store.lookup(key) {
                    local += 1;
                    continue;
                }
                let mut bad = Vec::new();
                let hit = tiers.fetch_step(store, key, &mut |t, e| {
                    let remote = tiers.remote(t);
                    if e.is_unavailable() {
                        if let Some(why) = remote.down_notice() {
                            warnings.push(format!(
                        "warning: the remote cache {} is unavailable; going on without it ({why})",
                        remote.url()
                    ));
                            first_down.get_or_insert(unavailable(remote, e));
                        }
                    } else {
                        bad.push(format!("{label}: {}: {}", remote.url(), error_lines(e)));
                    }
                });
                match hit {
                    Some(hit) => {
                        pulled[hit.tier] += 1;
                        for w in bad {
                            warnings.push(format!("warning: refused, then found further on: {w}"));
                        }
                        let rec = &hit.record;
                        for t in tiers.fill_targets(hit.tier) {
                            let remote = tiers.remote(t);
                            match remote.push_step(store, key, &rec.kind, &rec.name, &rec.output) {
                                Ok(s) if !s.already_there => filled[t] += 1,
                                Ok(_) => {}
                                Err(e) if e.is_unavailable() => {
                                    if let Some(why) = remote.down_notice() {
                                        warnings.push(format!(
                                    "warning: the remote cache {} is unavailable; going on \
                                     without it ({why})",
                                    remote.url()
                                ));
                                    }
                                }
                                Err(e) => return Err(CliError::Internal(error_lines(&e))),
                            }
                        }
                    }
                    None if bad.is_empty() => not_there.push(label.clone()),
                    None => refused.extend(bad),
                }
            }
            Ok(())
        },
    );
    drop(bar);
    fetched?;
    for w in &warnings {
        eprintln!("{w}");
    }
    if tiers.iter().all(|t| t.remote.is_down()) {
        if let Some(e) = first_down {
            return Err(e);
        }
    }
    let down: u64 = tiers.iter().map(|t| t.remote.traffic().0).sum();
    let total: usize = pulled.iter().sum();
    let mut text = if tiers.len() == 1 {
        format!(
            "pulled {total} step results ({} downloaded) from {}; {local} already local",
            human_bytes(down),
            tiers.remote(0).url()
        )
    } else {
        let from: Vec<String> = tiers
            .iter()
            .zip(&pulled)
            .map(|(t, n)| format!("{n} from {}", t.remote.url()))
            .collect();
        format!(
            "pulled {total} step results ({} downloaded): {}; {local} already local",
            human_bytes(down),
            from.join(", ")
        )
    };
    for (t, n) in tiers.iter().zip(&filled) {
        if *n > 0 {
            text.push_str(&format!(
                "\nfilled {} with {n} step results found further on",
                t.remote.url()
            ));
        }
    }
    if !not_there.is_empty() {
        text.push_str(&format!(
            "\n{} steps are not on the remote: {}",
            not_there.len(),
            not_there.join(", ")
        ));
    }
    let per_remote: Vec<serde_json::Value> = tiers
        .iter()
        .enumerate()
        .map(|(i, t)| {
            serde_json::json!({"remote": t.remote.url(), "pulled": pulled[i], "filled": filled[i],
                "bytes": t.remote.traffic().0})
        })
        .collect();
    report(
        json,
        serde_json::json!({"pulled": total, "already_local": local, "bytes": down,
            "not_on_remote": not_there, "refused": refused, "remotes": per_remote}),
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
    for (key, label) in crate::build::unique_steps(&plan) {
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
    let bar = Bar::new(&format!("exporting {}", out.display()), None, json);
    let stats = store
        .export_bundle(
            &keys,
            &mut Counting {
                inner: tmp.as_file_mut(),
                bar: &bar,
            },
        )
        .map_err(|e| CliError::Internal(error_lines(&e)))?;
    drop(bar);
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
    let total = file.metadata().ok().map(|m| m.len());
    let bar = Bar::new(&format!("importing {}", bundle.display()), total, json);
    let mut r = std::io::BufReader::new(Counting {
        inner: file,
        bar: &bar,
    });
    let stats = store.import_bundle(&mut r);
    drop(bar);
    let stats = stats.map_err(|e| CliError::Usage {
        message: format!("bundle `{}` refused: {}", bundle.display(), error_lines(&e)),
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
    fn the_config_file_names_remotes_in_order_and_whether_to_write() {
        let p = Path::new("config.kdl");
        let c = parse_config("remote \"http://h:8080/c\"\nremote-write #true\n", p).unwrap();
        assert_eq!(
            c,
            Config {
                remotes: vec![RemoteConfig {
                    url: "http://h:8080/c".into(),
                    ..RemoteConfig::default()
                }],
                remote_write: Some(true),
            }
        );
        let c = parse_config(
            "remote \"s3://b/team\" endpoint=\"http://127.0.0.1:3900\" region=\"garage\" path-style=#true\n",
            p,
        )
        .unwrap();
        assert_eq!(c.remotes[0].url, "s3://b/team");
        assert_eq!(
            c.remotes[0].s3,
            S3Settings {
                endpoint: Some("http://127.0.0.1:3900".into()),
                region: Some("garage".into()),
                path_style: Some(true),
            }
        );
        // Tiers: in order, each with its own mode.
        let c = parse_config(
            "remote \"http://lan/c\"\nremote \"s3://b/ci\" write=#true endpoint=\"http://g:3900\"\nremote \"http://far/c\" write=#false\n",
            p,
        )
        .unwrap();
        let got: Vec<(&str, Option<bool>)> = c
            .remotes
            .iter()
            .map(|r| (r.url.as_str(), r.write))
            .collect();
        assert_eq!(
            got,
            [
                ("http://lan/c", None),
                ("s3://b/ci", Some(true)),
                ("http://far/c", Some(false))
            ]
        );
        assert_eq!(c.remotes[1].s3.endpoint.as_deref(), Some("http://g:3900"));
        assert!(parse_config("remote \"s3://b\" colour=\"red\"", p).is_err());
        assert_eq!(parse_config("", p).unwrap(), Config::default());
        for bad in [
            "remote 1",
            "remote-write \"yes\"",
            "cache-dir \"/x\"",
            "remote {",
            "remote \"http://h/c\" write=\"yes\"",
            "remote \"http://h/c\"\nremote \"http://h/c\"",
            "remote \"http://h/c\" { write #true; }",
        ] {
            assert!(parse_config(bad, p).is_err(), "{bad}");
        }
    }

    #[test]
    fn aws_shared_files_give_a_profile_s_keys() {
        let text = "[default]\naws_access_key_id = A\n# c\n[ci]\naws_access_key_id=B\naws_secret_access_key = S\n";
        assert_eq!(
            parse_ini(text, "default").get("aws_access_key_id").unwrap(),
            "A"
        );
        let ci = parse_ini(text, "ci");
        assert_eq!(ci.get("aws_access_key_id").unwrap(), "B");
        assert_eq!(ci.get("aws_secret_access_key").unwrap(), "S");
        assert!(parse_ini(text, "other").is_empty());
    }
}
