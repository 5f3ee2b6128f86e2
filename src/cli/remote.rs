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

use super::progress::{polled, Bar, Counting};
use super::{error_chain, human_bytes, need_specs, CliError};
use crate::plan::Plan;

/// The global flags of the remote cache.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct RemoteArgs {
    /// Remote cache: http(s)://HOST/PATH (GET/HEAD/PUT, e.g. nginx with WebDAV PUT) or
    /// s3://BUCKET/PREFIX (AWS S3 or a self-hosted S3 store)
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
    /// Settings of an `s3://` remote: `endpoint=`, `region=`, `path-style=` on `remote`.
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
            ("remote", [kdl::KdlValue::String(s)]) => {
                config.remote = Some(s.clone());
                for e in node.entries().iter().filter(|e| e.name().is_some()) {
                    let key = e.name().map(|n| n.value()).unwrap_or_default();
                    match (key, e.value()) {
                        ("endpoint", kdl::KdlValue::String(v)) => {
                            config.s3.endpoint = Some(v.clone())
                        }
                        ("region", kdl::KdlValue::String(v)) => config.s3.region = Some(v.clone()),
                        ("path-style", kdl::KdlValue::Bool(b)) => config.s3.path_style = Some(*b),
                        _ => {
                            return Err(bad(format!(
                                "`remote` takes `endpoint=\"URL\"`, `region=\"NAME\"` and \
                                 `path-style=#true` (for s3:// remotes), not `{key}=`"
                            )))
                        }
                    }
                }
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
    let help =
        || Some("a remote cache URL looks like http://host:port/path or s3://bucket/prefix".into());
    // A URL the HTTP client cannot parse would fail every request, each a warning only.
    if !url.starts_with("s3://") {
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
    }
    let remote = if url.starts_with("s3://") {
        Remote::new_s3(&s3_config(&url, &config.s3)?)
    } else {
        Remote::new(&url, credentials())
    }
    .map_err(|e| CliError::Usage {
        message: error_chain(&e),
        help: help(),
    })?;
    Ok(Some((remote, write)))
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

/// The plan of `specs`, with the keys a build would use: their locks included, exactly as
/// `build` plans them.
fn plan_of(store: &Store, specs: &[PathBuf]) -> Result<Plan, CliError> {
    need_specs(specs)?;
    let (spec, lock) = crate::build::load(specs)?;
    Ok(crate::build::plan_of(store, &spec, lock.as_ref())?)
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
    let bar = Bar::new(&format!("pushing to {}", remote.url()), None, json);
    let results: Vec<Result<Done, imgspec_cache::RemoteError>> = polled(
        &bar,
        || remote.traffic().1,
        || {
            steps
                .iter()
                .map(|(key, label)| match store.lookup(key) {
                    Ok(Some(rec)) => remote
                        .push_step(store, key, &rec.kind, &rec.name, &rec.output)
                        .map(Done::Pushed),
                    _ => Ok(Done::NotLocal(label.clone())),
                })
                .collect()
        },
    );
    drop(bar);
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
    let bar = Bar::new(&format!("pulling from {}", remote.url()), None, json);
    let results: Vec<(String, Result<Done, imgspec_cache::RemoteError>)> = polled(
        &bar,
        || remote.traffic().0,
        || {
            steps
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
                .collect()
        },
    );
    drop(bar);
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
    let bar = Bar::new(&format!("exporting {}", out.display()), None, json);
    let stats = store
        .export_bundle(
            &keys,
            &mut Counting {
                inner: tmp.as_file_mut(),
                bar: &bar,
            },
        )
        .map_err(|e| CliError::Internal(error_chain(&e)))?;
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
                remote_write: Some(true),
                s3: S3Settings::default(),
            }
        );
        let c = parse_config(
            "remote \"s3://b/team\" endpoint=\"http://127.0.0.1:3900\" region=\"garage\" path-style=#true\n",
            p,
        )
        .unwrap();
        assert_eq!(c.remote.as_deref(), Some("s3://b/team"));
        assert_eq!(
            c.s3,
            S3Settings {
                endpoint: Some("http://127.0.0.1:3900".into()),
                region: Some("garage".into()),
                path_style: Some(true),
            }
        );
        assert!(parse_config("remote \"s3://b\" colour=\"red\"", p).is_err());
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
