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
//! The `.deb` files themselves are kept in the cache by SHA-256 ([`DebStore`]), beside the
//! step store: a locked image stays buildable from the cache after the mirror has moved on.
//! A locked step installs from a flat repository made of exactly its locked files
//! ([`write_repo`]), with a `Packages` index generated from each file's control fields.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

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

/// The `.deb` files of locked packages, in the cache by SHA-256:
/// `<cache>/debs-v1/<first two hex digits>/<sha256>.deb`, each with its control fields
/// (`dpkg-deb -f`) beside it as `<sha256>.control`.
pub struct DebStore {
    dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum DebError {
    #[error("I/O error on `{}`", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{url}`: {reason}")]
    Fetch { url: String, reason: String },
    #[error("`{url}` is not the locked file: SHA-256 `{got}`, the lock says `{want}`")]
    Mismatch {
        url: String,
        got: String,
        want: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DebError + '_ {
    move |source| DebError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl DebStore {
    /// The deb store of the cache at `cache_root`.
    pub fn new(cache_root: &Path) -> DebStore {
        DebStore {
            dir: cache_root.join("debs-v1"),
        }
    }

    pub fn path(&self, sha256: &str) -> PathBuf {
        self.dir
            .join(&sha256[..2.min(sha256.len())])
            .join(format!("{sha256}.deb"))
    }

    pub fn control_path(&self, sha256: &str) -> PathBuf {
        self.path(sha256).with_extension("control")
    }

    pub fn has(&self, sha256: &str) -> bool {
        self.path(sha256).is_file()
    }

    /// Moves (or copies) `src` into the store; returns its SHA-256 and size.
    pub fn put(&self, src: &Path) -> Result<(String, u64), DebError> {
        let (sha, size) = sha256_file(src)?;
        let dest = self.path(&sha);
        if dest.is_file() {
            return Ok((sha, size));
        }
        let parent = dest.parent().expect("a deb path has a parent");
        std::fs::create_dir_all(parent).map_err(io(parent))?;
        let tmp = parent.join(format!(".{sha}.{}.tmp", std::process::id()));
        if std::fs::hard_link(src, &tmp).is_err() {
            std::fs::copy(src, &tmp).map_err(io(&tmp))?;
        }
        std::fs::rename(&tmp, &dest).map_err(io(&dest))?;
        Ok((sha, size))
    }

    /// Downloads `url` into the store, checking that its SHA-256 is `sha256`; `done` hears the
    /// bytes as they come.
    pub fn fetch(&self, url: &str, sha256: &str, done: &dyn Fn(u64)) -> Result<(), DebError> {
        let dest = self.path(sha256);
        let parent = dest.parent().expect("a deb path has a parent");
        std::fs::create_dir_all(parent).map_err(io(parent))?;
        let tmp = parent.join(format!(".{sha256}.{}.part", std::process::id()));
        let result = (|| {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .timeout_connect(Some(std::time::Duration::from_secs(20)))
                .timeout_recv_body(Some(std::time::Duration::from_secs(600)))
                .build()
                .into();
            let resp = agent.get(url).call().map_err(|e| DebError::Fetch {
                url: url.into(),
                reason: match e {
                    ureq::Error::StatusCode(c) => format!("HTTP {c}"),
                    other => other.to_string(),
                },
            })?;
            let mut body = resp.into_body().into_reader();
            let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
            let mut h = Sha256::new();
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = body.read(&mut buf).map_err(|e| DebError::Fetch {
                    url: url.into(),
                    reason: e.to_string(),
                })?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
                f.write_all(&buf[..n]).map_err(io(&tmp))?;
                done(n as u64);
            }
            f.sync_all().map_err(io(&tmp))?;
            let got = hex(&h.finalize());
            if got != sha256 {
                return Err(DebError::Mismatch {
                    url: url.into(),
                    got,
                    want: sha256.into(),
                });
            }
            std::fs::rename(&tmp, &dest).map_err(io(&dest))
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn sha256_file(path: &Path) -> Result<(String, u64), DebError> {
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let mut h = Sha256::new();
    let n = std::io::copy(&mut f, &mut h).map_err(io(path))?;
    Ok((hex(&h.finalize()), n))
}

/// One stanza of an apt `Packages` index, as far as a lock needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    pub suite: String,
    pub filename: String,
    pub priority: String,
    pub sha256: String,
}

/// The suite of an apt lists file name
/// (`deb.example_debian_dists_bookworm-updates_main_binary-amd64_Packages` → `bookworm-updates`).
pub fn suite_of_list(file_name: &str) -> Option<&str> {
    let rest = &file_name[file_name.find("_dists_")? + "_dists_".len()..];
    rest.split('_').next().filter(|s| !s.is_empty())
}

/// The value of field `name` in a deb822 stanza (first line only).
pub fn field<'a>(stanza: &'a str, name: &str) -> Option<&'a str> {
    stanza.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (!k.starts_with([' ', '\t']) && k.eq_ignore_ascii_case(name)).then(|| v.trim())
    })
}

/// (name, version, architecture) → where the archive has that package.
pub type Index = BTreeMap<(String, String, String), Vec<IndexEntry>>;

/// Reads apt's `*_Packages` lists in `lists_dir`, keeping the stanzas of `wanted` packages.
pub fn read_lists(lists_dir: &Path, wanted: &BTreeSet<String>) -> Result<Index, DebError> {
    let mut out: BTreeMap<_, Vec<IndexEntry>> = BTreeMap::new();
    let mut files: Vec<PathBuf> = match std::fs::read_dir(lists_dir) {
        Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(source) => {
            return Err(DebError::Io {
                path: lists_dir.into(),
                source,
            })
        }
    };
    files.sort();
    for f in files {
        let name = f
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if !name.ends_with("_Packages") {
            continue;
        }
        let Some(suite) = suite_of_list(&name) else {
            continue;
        };
        let text = std::fs::read_to_string(&f).map_err(io(&f))?;
        for stanza in text.split("\n\n") {
            let Some(pkg) = field(stanza, "Package") else {
                continue;
            };
            if !wanted.contains(pkg) {
                continue;
            }
            let get = |n| field(stanza, n).unwrap_or_default().to_string();
            out.entry((pkg.to_string(), get("Version"), get("Architecture")))
                .or_default()
                .push(IndexEntry {
                    suite: suite.to_string(),
                    filename: get("Filename"),
                    priority: get("Priority"),
                    sha256: get("SHA256"),
                });
        }
    }
    Ok(out)
}

/// The stanza of a locked package in a generated `Packages` index: its control fields, the
/// archive's priority, then where the file is in the repository, its size and SHA-256 (apt
/// checks it when it takes the file).
pub fn packages_stanza(control: &str, d: &LockedDeb, filename: &str) -> String {
    let mut out = String::new();
    let mut skip = false;
    for line in control.trim_end().lines() {
        let cont = line.starts_with([' ', '\t']);
        if !cont {
            let key = line.split(':').next().unwrap_or("");
            let archive_field = ["Filename", "Size", "MD5sum", "SHA1", "SHA256", "SHA512"]
                .iter()
                .any(|k| k.eq_ignore_ascii_case(key));
            skip =
                archive_field || (key.eq_ignore_ascii_case("Priority") && !d.priority.is_empty());
        }
        if !skip {
            out.push_str(line);
            out.push('\n');
        }
    }
    if !d.priority.is_empty() {
        out.push_str(&format!("Priority: {}\n", d.priority));
    }
    out.push_str(&format!(
        "Filename: {filename}\nSize: {}\nSHA256: {}\n",
        d.size, d.sha256
    ));
    out
}

/// The `Release` file of a flat repository whose only index is `Packages`: unsigned (the
/// repository is `[trusted=yes]`: the index's SHA-256 of each file is the pin), with a fixed
/// date so that nothing of the build time gets in.
pub fn release(suite: &str, packages: &[u8]) -> String {
    let sha = hex(&Sha256::digest(packages));
    format!(
        "Origin: imgspec\nLabel: imgspec lock\nSuite: {suite}\nCodename: {suite}\n\
         Date: Sat, 10 Jun 2023 00:00:00 UTC\nArchitectures: all amd64 arm64 armel armhf i386 \
         mips64el ppc64el riscv64 s390x\nSHA256:\n {sha} {} Packages\n",
        packages.len()
    )
}

/// (name, architecture) → version of each installed package of a dpkg `status` file.
pub fn installed(status: &str) -> BTreeMap<(String, String), String> {
    status
        .split("\n\n")
        .filter(|s| field(s, "Status").is_some_and(|v| v.ends_with(" installed")))
        .filter_map(|s| {
            Some((
                (
                    field(s, "Package")?.to_string(),
                    field(s, "Architecture")?.to_string(),
                ),
                field(s, "Version")?.to_string(),
            ))
        })
        .collect()
}

/// The `Packages` index of a flat repository holding `debs` as `pool/<sha256>.deb`, given each
/// package's control fields.
pub fn packages_index(debs: &[(LockedDeb, String)]) -> String {
    let mut sorted: Vec<&(LockedDeb, String)> = debs.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    sorted
        .iter()
        .map(|(d, control)| packages_stanza(control, d, &format!("pool/{}.deb", d.sha256)))
        .collect::<Vec<_>>()
        .join("\n")
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

    #[test]
    fn suite_from_list_file_names() {
        assert_eq!(
            suite_of_list("deb.example_debian_dists_bookworm-updates_main_binary-amd64_Packages"),
            Some("bookworm-updates")
        );
        assert_eq!(
            suite_of_list(
                "sec.example_debian-security_dists_bookworm-security_main_binary-amd64_Packages"
            ),
            Some("bookworm-security")
        );
        assert_eq!(suite_of_list("local_._Packages"), None);
    }

    #[test]
    fn packages_stanza_replaces_the_archive_fields() {
        let control = "Package: udev\nVersion: 252\nArchitecture: amd64\nPriority: optional\n\
                       Depends: libc6\nDescription: device manager\n more text\n";
        let mut d = deb("udev", "252");
        d.priority = "important".into();
        let s = packages_stanza(control, &d, "pool/x.deb");
        assert_eq!(
            s,
            format!(
                "Package: udev\nVersion: 252\nArchitecture: amd64\nDepends: libc6\n\
                 Description: device manager\n more text\nPriority: important\n\
                 Filename: pool/x.deb\nSize: 1234\nSHA256: {}\n",
                d.sha256
            )
        );
        // No archive priority: the control file's stays.
        d.priority.clear();
        assert!(packages_stanza(control, &d, "p").contains("Priority: optional\n"));
    }

    #[test]
    fn packages_index_is_sorted_and_blank_line_separated() {
        let a = deb("zlib1g", "1");
        let b = deb("apt", "2");
        let idx = packages_index(&[
            (a.clone(), "Package: zlib1g\n".into()),
            (b.clone(), "Package: apt\n".into()),
        ]);
        let stanzas: Vec<&str> = idx.split("\n\n").collect();
        assert_eq!(stanzas.len(), 2);
        assert!(stanzas[0].starts_with("Package: apt\n"));
        assert!(stanzas[0].contains(&format!("Filename: pool/{}.deb", b.sha256)));
        assert!(stanzas[1].starts_with("Package: zlib1g\n"));
    }

    #[test]
    fn installed_packages_of_a_status_file() {
        let status = "Package: apt\nStatus: install ok installed\nArchitecture: amd64\n\
                      Version: 2.6.1\n\nPackage: gone\nStatus: deinstall ok config-files\n\
                      Architecture: amd64\nVersion: 1\n";
        let i = installed(status);
        assert_eq!(i.len(), 1);
        assert_eq!(i[&("apt".into(), "amd64".into())], "2.6.1");
    }

    #[test]
    fn release_names_the_suite_and_pins_the_index() {
        let r = release("bookworm", b"Package: apt\n");
        assert!(r.contains("Suite: bookworm\nCodename: bookworm\n"));
        assert!(r.ends_with(&format!(
            " {} 13 Packages\n",
            hex(&Sha256::digest(b"Package: apt\n"))
        )));
    }

    #[test]
    fn reads_the_lists_of_wanted_packages() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path()
                .join("m.example_debian_dists_bookworm_main_binary-amd64_Packages"),
            "Package: apt\nVersion: 2.6.1\nArchitecture: amd64\nPriority: required\n\
             Filename: pool/main/a/apt/apt_2.6.1_amd64.deb\nSHA256: aa\n\n\
             Package: vim\nVersion: 9\nArchitecture: amd64\nFilename: pool/v.deb\n",
        )
        .unwrap();
        let wanted = BTreeSet::from(["apt".to_string()]);
        let idx = read_lists(dir.path(), &wanted).unwrap();
        assert_eq!(idx.len(), 1);
        let e = &idx[&("apt".into(), "2.6.1".into(), "amd64".into())][0];
        assert_eq!(e.suite, "bookworm");
        assert_eq!(e.priority, "required");
        assert_eq!(e.filename, "pool/main/a/apt/apt_2.6.1_amd64.deb");
    }
}
