//! Lock files: the exact packages of every package set of a spec, so that a build installs
//! exactly those versions, from the cache when the mirror has moved on.
//!
//! `imgspec lock SPEC` writes `SPEC.lock` beside the spec (`debian-efi.kdl.lock`). It is KDL,
//! one set per step that installs packages (the `base "debian"` bootstrap and each `packages`
//! layer), one package per line, sorted by name and architecture:
//!
//! ```kdl
//! version 1
//! set "packages:system" images="debian-efi" request="linux-image-amd64 systemd-sysv" {
//!     deb "udev" "252.38-1~deb12u1" arch="amd64" sha256="…" size=1714848 suite="bookworm" priority="important" filename="pool/main/s/systemd/udev_252.38-1~deb12u1_amd64.deb"
//! }
//! ```
//!
//! - `set`: the step's name in its images (`base`, `packages:NAME`), the images that share it,
//!   and what the spec asked for (the base's parameters or the package list): a set whose
//!   request differs from the spec is stale and the build refuses it.
//! - `deb`: name, version, architecture, the SHA-256 and size of the `.deb`, the suite it came
//!   from, the archive's priority (mmdebstrap's variants choose packages by priority) and the
//!   archive-relative `Filename`: with the suite's mirror it is where to fetch the file again.
//!
//! The files themselves are kept in the cache by SHA-256, beside the step store, by the
//! image's distribution family ([`crate::distro::Family::has_locked`]; Debian's `.deb` store is
//! [`crate::distro::debian::debstore`]): a locked image stays buildable from the cache after
//! the mirror has moved on. A locked step installs from a repository made of exactly its
//! locked files ([`crate::distro::debian::apt::write_repo`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The format version written on the first line; a newer one is refused.
pub const LOCK_VERSION: i128 = 1;

/// One locked `.deb`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct LockedDeb {
    pub name: String,
    pub arch: String,
    pub version: String,
    /// Hex SHA-256 of the `.deb` file.
    pub sha256: String,
    pub size: u64,
    /// The suite whose index named it (`bookworm`, `bookworm-security`).
    pub suite: String,
    /// The archive's priority (may differ from the one in the package's own control file).
    pub priority: String,
    /// Archive-relative path (`pool/main/…`).
    pub filename: String,
}

/// The packages one step installs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockSet {
    /// The step's name in its images: `base`, `packages:NAME`.
    pub step: String,
    /// Images that share the step, sorted.
    pub images: Vec<String>,
    /// What the spec asked for; see [`base_request`] and [`packages_request`].
    pub request: String,
    /// Sorted by name, architecture.
    pub debs: Vec<LockedDeb>,
    /// The lock file it was read from: its file name and BLAKE3 (for the build manifest).
    pub origin: Option<(String, String)>,
}

impl LockSet {
    /// BLAKE3 (hex) of the set's packages: what a locked step's key hashes.
    pub fn digest(&self) -> String {
        let mut text = String::new();
        for d in &self.debs {
            text.push_str(&render_deb(d));
            text.push('\n');
        }
        blake3::hash(text.as_bytes()).to_hex().to_string()
    }
}

/// A whole lock file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lock {
    /// The epoch of the images the lock pins whose spec gives none: the newest `Date:` of the
    /// archive's Release files when the packages were resolved.
    pub epoch: Option<i64>,
    /// Sorted by step name, then images.
    pub sets: Vec<LockSet>,
    /// When several specs' locks are merged ([`Lock::extend`]): each image's lock epoch.
    pub image_epochs: BTreeMap<String, i64>,
}

impl Lock {
    /// The set of step `step` in image `image`.
    pub fn set_for(&self, image: &str, step: &str) -> Option<&LockSet> {
        self.sets
            .iter()
            .find(|s| s.step == step && s.images.iter().any(|i| i == image))
    }

    /// Every `.deb` of `image`'s sets: `name:arch:version` → SHA-256 (for the SBOM).
    pub fn deb_sha256(&self, image: &str) -> BTreeMap<String, String> {
        self.sets
            .iter()
            .filter(|s| s.images.iter().any(|i| i == image))
            .flat_map(|s| &s.debs)
            .map(|d| {
                (
                    format!("{}:{}:{}", d.name, d.arch, d.version),
                    d.sha256.clone(),
                )
            })
            .collect()
    }

    /// The lock file `image`'s sets were read from: its name and BLAKE3.
    pub fn origin(&self, image: &str) -> Option<(String, String)> {
        self.sets
            .iter()
            .filter(|s| s.images.iter().any(|i| i == image))
            .find_map(|s| s.origin.clone())
    }

    /// Whether any set belongs to `image` (an image of a spec without a lock has none).
    pub fn has_image(&self, image: &str) -> bool {
        self.sets
            .iter()
            .any(|s| s.images.iter().any(|i| i == image))
    }

    pub fn sort(&mut self) {
        for s in &mut self.sets {
            s.images.sort();
            s.images.dedup();
            s.debs.sort();
            s.debs.dedup();
        }
        self.sets
            .sort_by(|a, b| (&a.step, &a.images).cmp(&(&b.step, &b.images)));
    }

    /// The epoch of the lock that pins `image`, if it has one.
    pub fn epoch_of(&self, image: &str) -> Option<i64> {
        self.image_epochs
            .get(image)
            .copied()
            .or_else(|| self.epoch.filter(|_| self.has_image(image)))
    }

    /// Merges another spec's lock (a build of several specs).
    pub fn extend(&mut self, other: Lock) {
        if let Some(e) = other.epoch {
            for i in other.sets.iter().flat_map(|s| &s.images) {
                self.image_epochs.insert(i.clone(), e);
            }
        }
        self.image_epochs.extend(other.image_epochs);
        self.sets.extend(other.sets);
        self.sort();
    }

    /// The lock file's text: deterministic, one package per line.
    pub fn render(&self) -> String {
        let mut out = String::from(
            "// imgspec lock file: the exact packages of each package set, written by \
             `imgspec lock`.\n// Refresh with `imgspec lock --update SPEC`; keep it beside \
             the spec, under version control.\n",
        );
        out.push_str(&format!("version {LOCK_VERSION}\n"));
        if let Some(e) = self.epoch {
            out.push_str(&format!(
                "// SOURCE_DATE_EPOCH of the images whose spec gives no `epoch`: the archive's \
                 date\nepoch {e}\n"
            ));
        }
        for s in &self.sets {
            out.push_str(&format!(
                "set {} images={} request={} {{\n",
                quote(&s.step),
                quote(&s.images.join(" ")),
                quote(&s.request)
            ));
            for d in &s.debs {
                out.push_str("    ");
                out.push_str(&render_deb(d));
                out.push('\n');
            }
            out.push_str("}\n");
        }
        out
    }

    /// Reads a lock file's text; `path` is for messages.
    pub fn parse(path: &Path, text: &str) -> Result<Lock, LockError> {
        let doc = kdl::KdlDocument::parse(text).map_err(|e| {
            let d = e.diagnostics.first();
            let offset = d.map_or(0, |d| d.span.offset());
            let msg = d
                .and_then(|d| d.message.clone())
                .unwrap_or_else(|| "invalid KDL".into());
            LockError::at(path, text, offset, format!("not valid KDL: {msg}"))
        })?;
        let bad = |node_offset: usize, msg: String| LockError::at(path, text, node_offset, msg);
        let mut lock = Lock::default();
        let mut version = None;
        for node in doc.nodes() {
            let at = node.span().offset();
            match node.name().value() {
                "version" => {
                    let v = node.entry(0).and_then(|e| e.value().as_integer());
                    match v {
                        Some(LOCK_VERSION) => version = Some(LOCK_VERSION),
                        Some(v) => {
                            return Err(bad(
                                at,
                                format!(
                                    "lock format version {v} is not known to this imgspec \
                                     (it reads version {LOCK_VERSION})"
                                ),
                            ))
                        }
                        None => return Err(bad(at, "`version` needs a number".into())),
                    }
                }
                "epoch" => match node.entry(0).and_then(|e| e.value().as_integer()) {
                    Some(e) => lock.epoch = i64::try_from(e).ok(),
                    None => return Err(bad(at, "`epoch` needs a number (seconds)".into())),
                },
                "set" => {
                    let step = string_arg(node, 0)
                        .ok_or_else(|| bad(at, "`set` needs the step's name".into()))?;
                    let images = string_prop(node, "images")
                        .ok_or_else(|| bad(at, "`set` needs `images=`".into()))?
                        .split_whitespace()
                        .map(String::from)
                        .collect();
                    let request = string_prop(node, "request")
                        .ok_or_else(|| bad(at, "`set` needs `request=`".into()))?;
                    let mut debs = Vec::new();
                    for d in node.children().map(|c| c.nodes()).unwrap_or_default() {
                        let at = d.span().offset();
                        if d.name().value() != "deb" {
                            return Err(bad(
                                at,
                                format!("unknown node `{}` in a set", d.name().value()),
                            ));
                        }
                        debs.push(parse_deb(d).map_err(|m| bad(at, m))?);
                    }
                    lock.sets.push(LockSet {
                        step,
                        images,
                        request,
                        debs,
                        origin: None,
                    });
                }
                other => return Err(bad(at, format!("unknown node `{other}` in a lock file"))),
            }
        }
        if version.is_none() {
            return Err(LockError::at(
                path,
                text,
                0,
                "the lock file has no `version` line".into(),
            ));
        }
        lock.sort();
        Ok(lock)
    }

    /// Reads `path`; `Ok(None)` when there is no such file. A lock must be a regular file of
    /// at most 64 MiB of UTF-8 text (a lock of a thousand packages is a few hundred KiB).
    pub fn load(path: &Path) -> Result<Option<Lock>, LockError> {
        let text = crate::spec::read_bounded(path, 64 << 20).and_then(|bytes| {
            String::from_utf8(bytes)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
        });
        match text {
            Ok(text) => {
                let mut lock = Lock::parse(path, &text)?;
                let name = path
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned();
                let digest = blake3::hash(text.as_bytes()).to_hex().to_string();
                for s in &mut lock.sets {
                    s.origin = Some((name.clone(), digest.clone()));
                }
                Ok(Some(lock))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(LockError::Io {
                path: path.to_path_buf(),
                source,
            }),
        }
    }
}

/// The lock file of a spec file: `SPEC.lock` beside it.
pub fn lock_path(spec: &Path) -> PathBuf {
    let mut s = spec.as_os_str().to_os_string();
    s.push(".lock");
    PathBuf::from(s)
}

/// What a `base "debian"` step asks for, as recorded in its set.
pub fn base_request(d: &crate::spec::model::Debian) -> String {
    format!(
        "{} {} {} {} {}",
        d.distro,
        d.suite,
        d.variant,
        d.architecture,
        d.components.join(",")
    )
}

/// What a `packages` step asks for: its sorted package list.
pub fn packages_request(packages: &[String]) -> String {
    packages.join(" ")
}

fn render_deb(d: &LockedDeb) -> String {
    format!(
        "deb {} {} arch={} sha256={} size={} suite={} priority={} filename={}",
        quote(&d.name),
        quote(&d.version),
        quote(&d.arch),
        quote(&d.sha256),
        d.size,
        quote(&d.suite),
        quote(&d.priority),
        quote(&d.filename)
    )
}

/// Lines of `deb` nodes (a step's record of what it installed) back into packages.
pub fn parse_debs(text: &str) -> Result<Vec<LockedDeb>, String> {
    let doc = kdl::KdlDocument::parse(text).map_err(|e| e.to_string())?;
    doc.nodes().iter().map(parse_deb).collect()
}

/// `deb` lines of packages, as a step records them in its output.
pub fn render_debs(debs: &[LockedDeb]) -> String {
    debs.iter().map(|d| render_deb(d) + "\n").collect()
}

fn parse_deb(node: &kdl::KdlNode) -> Result<LockedDeb, String> {
    let name = string_arg(node, 0).ok_or("`deb` needs the package name")?;
    let version = string_arg(node, 1)
        .ok_or_else(|| format!("`deb \"{name}\"` needs the version as second argument"))?;
    let field = |key: &str| {
        string_prop(node, key).ok_or_else(|| format!("`deb \"{name}\"` needs `{key}=`"))
    };
    let sha256 = field("sha256")?;
    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "`deb \"{name}\"`: `sha256=` must be 64 hex digits, not `{sha256}`"
        ));
    }
    let size = node
        .get("size")
        .and_then(|v| v.as_integer())
        .and_then(|n| u64::try_from(n).ok())
        .ok_or_else(|| format!("`deb \"{name}\"` needs `size=` (a number of bytes)"))?;
    Ok(LockedDeb {
        arch: field("arch")?,
        sha256: sha256.to_ascii_lowercase(),
        size,
        suite: field("suite")?,
        priority: string_prop(node, "priority").unwrap_or_default(),
        filename: field("filename")?,
        name,
        version,
    })
}

fn string_arg(node: &kdl::KdlNode, i: usize) -> Option<String> {
    node.entries()
        .iter()
        .filter(|e| e.name().is_none())
        .nth(i)
        .and_then(|e| e.value().as_string())
        .map(String::from)
}

fn string_prop(node: &kdl::KdlNode, key: &str) -> Option<String> {
    node.get(key).and_then(|v| v.as_string()).map(String::from)
}

/// A KDL string literal.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A lock file that cannot be read: the message names the file and the line.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{}:{line}: {message}", path.display())]
    Bad {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("cannot read `{}`", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl LockError {
    fn at(path: &Path, text: &str, offset: usize, message: String) -> LockError {
        let offset = offset.min(text.len());
        let line = text.as_bytes()[..offset]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1;
        LockError::Bad {
            path: path.to_path_buf(),
            line,
            message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deb(name: &str, version: &str) -> LockedDeb {
        LockedDeb {
            name: name.into(),
            arch: "amd64".into(),
            version: version.into(),
            sha256: format!("{:064x}", name.len()),
            size: 1234,
            suite: "bookworm".into(),
            priority: "optional".into(),
            filename: format!("pool/main/{}/{name}/{name}_{version}_amd64.deb", &name[..1]),
        }
    }

    fn lock() -> Lock {
        let mut l = Lock {
            epoch: Some(1_762_593_055),
            image_epochs: Default::default(),
            sets: vec![
                LockSet {
                    step: "packages:system".into(),
                    images: vec!["b".into(), "a".into()],
                    request: "udev systemd-sysv".into(),
                    debs: vec![
                        deb("udev", "252.38-1~deb12u1"),
                        deb("libc6", "2.36-9+deb12u10"),
                    ],
                    origin: None,
                },
                LockSet {
                    step: "base".into(),
                    images: vec!["a".into()],
                    request: "debian bookworm minbase amd64 main".into(),
                    debs: vec![deb("zlib1g", "1:1.2.13.dfsg-1"), deb("apt", "2.6.1")],
                    origin: None,
                },
            ],
        };
        l.sort();
        l
    }

    #[test]
    fn merged_locks_keep_each_images_epoch() {
        let mut all = Lock::default();
        let mut one = lock();
        one.epoch = Some(10);
        all.extend(one);
        assert_eq!(all.epoch_of("a"), Some(10));
        assert_eq!(all.epoch_of("b"), Some(10));
        assert_eq!(all.epoch_of("not-locked"), None);
    }

    #[test]
    fn round_trip_is_sorted_and_stable() {
        let l = lock();
        let text = l.render();
        let back = Lock::parse(Path::new("x.lock"), &text).unwrap();
        assert_eq!(back, l);
        assert_eq!(back.render(), text);
        // Sets by step name, packages by name, one package per line.
        let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with("//")).collect();
        assert_eq!(lines[0], "version 1");
        assert_eq!(lines[1], "epoch 1762593055");
        let lines = &lines[1..];
        assert!(lines[1].starts_with("set \"base\" images=\"a\""));
        assert!(lines[2].trim_start().starts_with("deb \"apt\" \"2.6.1\""));
        assert!(lines[3]
            .trim_start()
            .starts_with("deb \"zlib1g\" \"1:1.2.13.dfsg-1\""));
        assert!(lines[5].starts_with("set \"packages:system\" images=\"a b\""));
        assert!(lines[6].trim_start().starts_with("deb \"libc6\""));
        assert_eq!(l.set_for("b", "packages:system").unwrap().debs.len(), 2);
        assert!(l.set_for("b", "base").is_none());
    }

    #[test]
    fn a_bad_lock_names_the_line() {
        let mut text = lock().render();
        text = text.replacen(" size=1234", "", 2);
        let e = Lock::parse(Path::new("specs/x.kdl.lock"), &text).unwrap_err();
        assert_eq!(
            e.to_string(),
            "specs/x.kdl.lock:7: `deb \"apt\"` needs `size=` (a number of bytes)"
        );
        let e = Lock::parse(Path::new("l"), "version 1\nset \"base\" {\n").unwrap_err();
        assert!(e.to_string().starts_with("l:"), "{e}");
        let e = Lock::parse(Path::new("l"), "version 7\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "l:1: lock format version 7 is not known to this imgspec (it reads version 1)"
        );
        let e = Lock::parse(Path::new("l"), "version 1\nsett \"x\"\n").unwrap_err();
        assert_eq!(e.to_string(), "l:2: unknown node `sett` in a lock file");
    }

    #[test]
    fn digest_follows_the_packages_only() {
        let l = lock();
        let a = l.sets[1].clone();
        let mut b = a.clone();
        b.images.push("c".into());
        assert_eq!(a.digest(), b.digest());
        b.debs[0].version = "252.39-1~deb12u1".into();
        assert_ne!(a.digest(), b.digest());
    }
}
