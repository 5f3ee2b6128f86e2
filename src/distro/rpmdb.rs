//! What the SBOM reads of a tree's RPM database, whatever the tree's family: an image imported
//! from a disk (`base "image"`) may be a Fedora or EL system, or any system with packages
//! that `rpm` installed.
//!
//! The database is read by the host's `rpm` (Debian's package, 4.18: its sqlite backend reads
//! the `rpmdb.sqlite` of current Fedora and EL, its read-only `bdb_ro` backend the Berkeley DB
//! `Packages` of EL 7 and 8), never in the tree: its files are copied out of the store into the
//! step's scratch space, where `rpm` may leave its lock and sqlite its `-shm`/`-wal` files, and
//! queried there with `--dbpath`. Where the database lives, in order:
//!
//! | folder                 | who keeps it there                                          |
//! |------------------------|-------------------------------------------------------------|
//! | `usr/lib/sysimage/rpm` | Fedora 36 and newer (there `var/lib/rpm` is a symlink to it) |
//! | `var/lib/rpm`          | EL 7, 8, 9, older Fedora, rpm's own default                 |
//!
//! The first folder with a database is read; an empty folder (Debian's `rpm` package leaves an
//! empty `var/lib/rpm`) is no database. SUSE's `ndb` format (`Packages.db`) is refused with an
//! error: Debian's `rpm` is built without it.
//!
//! What the output depends on: the headers' `EPOCH`, `NAME`, `VERSION`, `RELEASE`, `ARCH` and
//! `SOURCERPM`, printed as stored, sorted here; not on the version of `rpm` (which only decides
//! whether it can open the database at all, and a step that fails records nothing).

use imgspec_cache::{BlobDigest, EntryKind, TreeManifest};

use crate::runner::Cmd;
use crate::steps::{StepContext, StepError};
use crate::tools::RPM;

/// The folders of an rpmdb, in the order they are looked at.
pub const DB_DIRS: &[&str] = &["usr/lib/sysimage/rpm", "var/lib/rpm"];

/// An installed RPM, as its header says.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RpmPackage {
    pub name: String,
    pub epoch: Option<u64>,
    pub version: String,
    pub release: String,
    pub arch: String,
    /// `foo-1.0-1.el9.src.rpm`.
    pub source_rpm: Option<String>,
}

impl RpmPackage {
    /// `[EPOCH:]VERSION-RELEASE`, as `rpm -q --qf '%{EVR}'` shows it.
    pub fn evr(&self) -> String {
        match self.epoch {
            Some(e) => format!("{e}:{}-{}", self.version, self.release),
            None => format!("{}-{}", self.version, self.release),
        }
    }

    /// `pkg:rpm/ID/NAME@VERSION-RELEASE?arch=ARCH&distro=ID-VERSION_ID&epoch=N` (the purl
    /// spec's `rpm` type: the namespace is the vendor, lowercased, here the tree's os-release
    /// `ID`, left out when the tree has none; the qualifiers in canonical order, by key).
    pub fn purl(&self, os: (Option<&str>, Option<&str>)) -> String {
        use crate::distro::debian::dpkg::purl_escape;
        let vendor = os.0.map(str::to_ascii_lowercase);
        let mut purl = String::from("pkg:rpm/");
        if let Some(v) = &vendor {
            purl.push_str(&purl_escape(v));
            purl.push('/');
        }
        purl.push_str(&format!(
            "{}@{}-{}?arch={}",
            purl_escape(&self.name),
            purl_escape(&self.version),
            purl_escape(&self.release),
            purl_escape(&self.arch)
        ));
        if let (Some(d), Some(v)) = (&vendor, os.1) {
            purl.push_str(&format!("&distro={}-{}", purl_escape(d), purl_escape(v)));
        }
        if let Some(e) = self.epoch {
            purl.push_str(&format!("&epoch={e}"));
        }
        purl
    }
}

/// The on-disk format of a database, by the file that marks it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// `rpmdb.sqlite` (rpm 4.16 and newer: Fedora 33+, EL 9+).
    Sqlite,
    /// `Packages`, a Berkeley DB hash (EL 7, EL 8), read by rpm's `bdb_ro`.
    Bdb,
}

impl Backend {
    /// rpm's `_db_backend` for it.
    fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Bdb => "bdb_ro",
        }
    }
}

/// The rpmdb of a tree: its folder, its format, and the files to copy out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Database {
    pub dir: String,
    pub backend: Backend,
    /// File name in `dir` → content.
    pub files: Vec<(String, BlobDigest)>,
}

/// The content of a regular file of the tree (a hard link is followed to its file).
fn file_blob(tree: &TreeManifest, path: &str) -> Option<BlobDigest> {
    match &tree.get(path)?.kind {
        EntryKind::File { digest, .. } => Some(*digest),
        EntryKind::Hardlink { target } => match &tree.get(target)?.kind {
            EntryKind::File { digest, .. } => Some(*digest),
            _ => None,
        },
        _ => None,
    }
}

/// The regular files directly in folder `dir` of the tree, by name.
fn files_in(tree: &TreeManifest, dir: &str) -> Vec<(String, BlobDigest)> {
    let prefix = format!("{dir}/");
    tree.entries
        .iter()
        .filter_map(|e| e.path.strip_prefix(&prefix))
        .filter(|name| !name.contains('/'))
        .filter_map(|name| {
            Some((
                name.to_string(),
                file_blob(tree, &format!("{prefix}{name}"))?,
            ))
        })
        .collect()
}

/// The tree's rpmdb, if it has one ([`DB_DIRS`]); an error for a database the host's `rpm`
/// cannot read.
pub fn find(tree: &TreeManifest) -> Result<Option<Database>, StepError> {
    for dir in DB_DIRS {
        let files = files_in(tree, dir);
        let has = |name: &str| files.iter().any(|(n, _)| n == name);
        let keep = |pred: &dyn Fn(&str) -> bool| -> Vec<(String, BlobDigest)> {
            files.iter().filter(|(n, _)| pred(n)).cloned().collect()
        };
        if has("rpmdb.sqlite") {
            // The write-ahead log holds what a running system had not yet checkpointed; the
            // shared-memory index is made again from it.
            return Ok(Some(Database {
                dir: dir.to_string(),
                backend: Backend::Sqlite,
                files: keep(&|n| n == "rpmdb.sqlite" || n == "rpmdb.sqlite-wal"),
            }));
        }
        if has("Packages") {
            // Packages and its indexes (Name, Basenames, …), not Berkeley DB's environment
            // (`__db.*`) nor the locks.
            return Ok(Some(Database {
                dir: dir.to_string(),
                backend: Backend::Bdb,
                files: keep(&|n| !n.starts_with("__db.") && !n.starts_with('.')),
            }));
        }
        if has("Packages.db") {
            return Err(StepError::Invalid(format!(
                "the RPM database in /{dir} is in rpm's `ndb` format (Packages.db, as SUSE keeps \
                 it), which the host's rpm (Debian's package `rpm`: sqlite and bdb_ro only) \
                 cannot read, so the SBOM cannot list its packages"
            )));
        }
    }
    Ok(None)
}

/// What `rpm -qa` prints of each package: one line of tab-separated tags.
const QUERY_FORMAT: &str =
    "%{EPOCH}\\t%{NAME}\\t%{VERSION}\\t%{RELEASE}\\t%{ARCH}\\t%{SOURCERPM}\\n";

/// The packages in `rpm -qa --queryformat` output ([`QUERY_FORMAT`]), sorted. The imported
/// OpenPGP keys (`gpg-pubkey`, which rpm keeps as pseudo-packages of no architecture) are not
/// packages and are left out.
pub fn parse_query(out: &str) -> Result<Vec<RpmPackage>, String> {
    let none = |s: &str| (s != "(none)" && !s.is_empty()).then(|| s.to_string());
    let mut packages = Vec::new();
    for line in out.lines().filter(|l| !l.is_empty()) {
        let f: Vec<&str> = line.split('\t').collect();
        let [epoch, name, version, release, arch, source] = f[..] else {
            return Err(format!("rpm printed a line that is not 6 fields: {line:?}"));
        };
        if name == "gpg-pubkey" {
            continue;
        }
        let epoch = match epoch {
            "(none)" => None,
            e => Some(
                e.parse::<u64>()
                    .map_err(|_| format!("rpm printed an epoch that is not a number: {line:?}"))?,
            ),
        };
        packages.push(RpmPackage {
            name: name.to_string(),
            epoch,
            version: version.to_string(),
            release: release.to_string(),
            arch: arch.to_string(),
            source_rpm: none(source),
        });
    }
    packages.sort();
    Ok(packages)
}

/// Why the SBOM of a tree with an rpmdb cannot be made on a host without `rpm`.
fn rpm_missing(db: &Database) -> StepError {
    StepError::Invalid(format!(
        "the tree has an RPM database (/{}), which the SBOM reads with the host's `rpm`: it is \
         not installed (Debian package `{}`; scripts/install-deps installs it)",
        db.dir, RPM.package
    ))
}

/// Copies the database out of the store into the step's scratch space and lists its packages
/// with the host's `rpm`. A missing `rpm` fails the step naming its package.
pub fn query(ctx: &StepContext, db: &Database) -> Result<Vec<RpmPackage>, StepError> {
    if crate::tools::which(RPM.program).is_none() {
        return Err(rpm_missing(db));
    }
    let scratch = ctx.work.join("rpmdb");
    // Left behind by an earlier try of the same step, if any.
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).map_err(StepError::io(&scratch))?;
    for (name, digest) in &db.files {
        ctx.store.blob_to_scratch(digest, &scratch.join(name))?;
    }
    let cmd = Cmd::new(RPM.program)
        .arg(format!("--dbpath={}", scratch.display()))
        .arg("--define")
        .arg(format!("_db_backend {}", db.backend.name()))
        .args(["-qa", "--queryformat", QUERY_FORMAT]);
    // rpm exits 0 after some failures to read a database (it says `error:` on stderr, which
    // goes to the log): the log's new lines are read for them.
    let before = std::fs::metadata(&ctx.log).map(|m| m.len()).unwrap_or(0);
    let out = ctx.runner.output(&cmd, &ctx.log)?;
    let log = std::fs::read(&ctx.log).unwrap_or_default();
    let new = String::from_utf8_lossy(log.get(before as usize..).unwrap_or_default());
    if let Some(e) = new.lines().find(|l| l.starts_with("error:")) {
        return Err(StepError::Invalid(format!(
            "the host's rpm could not read the RPM database in /{}: {e}",
            db.dir
        )));
    }
    parse_query(&String::from_utf8_lossy(&out)).map_err(|why| {
        StepError::Invalid(format!("reading the RPM database in /{}: {why}", db.dir))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use imgspec_cache::Entry;

    fn pkg(epoch: Option<u64>) -> RpmPackage {
        RpmPackage {
            name: "NetworkManager".into(),
            epoch,
            version: "1.46.0".into(),
            release: "4.el9_4".into(),
            arch: "x86_64".into(),
            source_rpm: Some("NetworkManager-1.46.0-4.el9_4.src.rpm".into()),
        }
    }

    #[test]
    fn purls_follow_the_rpm_type() {
        let os = (Some("rocky"), Some("9.4"));
        assert_eq!(
            pkg(None).purl(os),
            "pkg:rpm/rocky/NetworkManager@1.46.0-4.el9_4?arch=x86_64&distro=rocky-9.4"
        );
        // The epoch is a qualifier, after `distro` in canonical (sorted) order.
        assert_eq!(
            pkg(Some(1)).purl(os),
            "pkg:rpm/rocky/NetworkManager@1.46.0-4.el9_4?arch=x86_64&distro=rocky-9.4&epoch=1"
        );
        assert_eq!(pkg(Some(1)).evr(), "1:1.46.0-4.el9_4");
        // The vendor is lowercased; without an os-release there is no namespace nor distro.
        assert_eq!(
            pkg(None).purl((Some("Fedora"), None)),
            "pkg:rpm/fedora/NetworkManager@1.46.0-4.el9_4?arch=x86_64"
        );
        assert_eq!(
            pkg(None).purl((None, None)),
            "pkg:rpm/NetworkManager@1.46.0-4.el9_4?arch=x86_64"
        );
        // What a purl may not hold as is is percent-encoded (`^` of snapshot versions).
        let mut p = pkg(None);
        p.version = "0^20240101git1".into();
        assert!(p
            .purl((Some("fedora"), Some("41")))
            .contains("@0%5E20240101git1-4.el9_4?"));
    }

    #[test]
    fn parses_rpm_output_sorted_without_keys() {
        let out = "(none)\tzlib\t1.2.11\t40.el9\tx86_64\tzlib-1.2.11-40.el9.src.rpm\n\
                   (none)\tgpg-pubkey\tfd431d51\t4ae0493b\t(none)\t(none)\n\
                   32\tbind-libs\t9.16.23\t18.el9\tx86_64\tbind-9.16.23-18.el9.src.rpm\n\
                   (none)\tzlib\t1.2.11\t40.el9\ti686\tzlib-1.2.11-40.el9.src.rpm\n";
        let p = parse_query(out).unwrap();
        let names: Vec<String> = p.iter().map(|p| format!("{}.{}", p.name, p.arch)).collect();
        assert_eq!(names, ["bind-libs.x86_64", "zlib.i686", "zlib.x86_64"]);
        assert_eq!(p[0].epoch, Some(32));
        assert_eq!(p[0].evr(), "32:9.16.23-18.el9");
        assert_eq!(
            p[0].source_rpm.as_deref(),
            Some("bind-9.16.23-18.el9.src.rpm")
        );
        assert_eq!(p[1].epoch, None);
        assert_eq!(parse_query("").unwrap(), vec![]);
        assert!(parse_query("(none)\tonly\tfour\tfields\n").is_err());
        assert!(parse_query("x\ta\t1\t1\tnoarch\t(none)\n").is_err());
    }

    fn tree(entries: &[(&str, Option<u8>)]) -> TreeManifest {
        let mut m = TreeManifest {
            entries: entries
                .iter()
                .map(|(path, content)| Entry {
                    path: path.to_string(),
                    kind: match content {
                        Some(b) => EntryKind::File {
                            digest: BlobDigest::from_hash(blake3::hash(&[*b])),
                            size: 1,
                        },
                        None => EntryKind::Dir,
                    },
                    mode: 0o644,
                    uid: 0,
                    gid: 0,
                    mtime: 0,
                    xattrs: Default::default(),
                })
                .collect(),
        };
        m.canonicalize();
        m
    }

    #[test]
    fn finds_the_database_where_fedora_and_el_keep_it() {
        // Debian's rpm package leaves an empty var/lib/rpm: no database.
        let t = tree(&[("var/lib/rpm", None)]);
        assert_eq!(find(&t).unwrap(), None);
        let t = tree(&[
            ("var/lib/rpm", None),
            ("var/lib/rpm/.rpm.lock", Some(0)),
            ("var/lib/rpm/rpmdb.sqlite", Some(1)),
            ("var/lib/rpm/rpmdb.sqlite-shm", Some(2)),
            ("var/lib/rpm/rpmdb.sqlite-wal", Some(3)),
        ]);
        let db = find(&t).unwrap().unwrap();
        assert_eq!(
            (db.dir.as_str(), db.backend),
            ("var/lib/rpm", Backend::Sqlite)
        );
        let names: Vec<&str> = db.files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["rpmdb.sqlite", "rpmdb.sqlite-wal"]);
        // Fedora 36+: the new place, `var/lib/rpm` a symlink to it.
        let mut t = tree(&[
            ("usr/lib/sysimage/rpm", None),
            ("usr/lib/sysimage/rpm/rpmdb.sqlite", Some(1)),
        ]);
        t.entries.push(Entry {
            path: "var/lib/rpm".into(),
            kind: EntryKind::Symlink {
                target: "../../usr/lib/sysimage/rpm".into(),
            },
            ..t.entries[0].clone()
        });
        t.canonicalize();
        assert_eq!(find(&t).unwrap().unwrap().dir, "usr/lib/sysimage/rpm");
        // EL 8: Berkeley DB, its indexes but not its environment.
        let t = tree(&[
            ("var/lib/rpm", None),
            ("var/lib/rpm/Name", Some(1)),
            ("var/lib/rpm/Packages", Some(2)),
            ("var/lib/rpm/__db.001", Some(3)),
        ]);
        let db = find(&t).unwrap().unwrap();
        assert_eq!(db.backend, Backend::Bdb);
        let names: Vec<&str> = db.files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["Name", "Packages"]);
        // SUSE's ndb: said, not guessed.
        let t = tree(&[("var/lib/rpm", None), ("var/lib/rpm/Packages.db", Some(1))]);
        let e = find(&t).unwrap_err().to_string();
        assert!(e.contains("ndb") && e.contains("/var/lib/rpm"), "{e}");
    }

    #[test]
    fn a_missing_rpm_is_named_with_its_package() {
        let db = Database {
            dir: "var/lib/rpm".into(),
            backend: Backend::Sqlite,
            files: vec![],
        };
        let e = rpm_missing(&db).to_string();
        assert!(
            e.contains("/var/lib/rpm") && e.contains("Debian package `rpm`"),
            "{e}"
        );
    }
}
