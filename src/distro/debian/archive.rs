//! Debian's archive formats: apt's `Packages` lists (read to lock what apt downloaded),
//! generated `Packages` and `Release` files of a flat repository of locked files, deb822 fields
//! and a dpkg `status` file's installed packages.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::debstore::{hex, io, DebError};
use crate::lockfile::LockedDeb;

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
