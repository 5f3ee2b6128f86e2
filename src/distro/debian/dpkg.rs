//! What the SBOM reads of a Debian tree: dpkg's `status` file, and the package URL (`pkg:deb`)
//! of each installed package.

use std::collections::BTreeMap;

use crate::distro::Installed;

/// The installed packages in a `dpkg/status` file, sorted by name and architecture.
pub fn installed_packages(status: &str) -> Vec<Installed> {
    let mut out = Vec::new();
    for stanza in status.split("\n\n") {
        let mut fields: BTreeMap<&str, &str> = BTreeMap::new();
        for line in stanza.lines() {
            if line.starts_with([' ', '\t']) {
                continue;
            }
            if let Some((k, v)) = line.split_once(':') {
                fields.insert(k, v.trim());
            }
        }
        let installed = fields
            .get("Status")
            .is_some_and(|s| s.ends_with(" installed"));
        let (Some(name), Some(version), true) =
            (fields.get("Package"), fields.get("Version"), installed)
        else {
            continue;
        };
        out.push(Installed {
            name: name.to_string(),
            version: version.to_string(),
            arch: fields.get("Architecture").unwrap_or(&"all").to_string(),
            source: fields
                .get("Source")
                .map(|s| s.split_whitespace().next().unwrap_or(s).to_string()),
        });
    }
    out.sort();
    out
}

/// `pkg:deb/DISTRO/NAME@VERSION?arch=ARCH[&distro=ID-VERSION_ID]`; the namespace is the tree's
/// os-release `ID`, `debian` when it has none.
pub fn purl(p: &Installed, os: (Option<&str>, Option<&str>)) -> String {
    let (distro, distro_version) = os;
    let mut purl = format!(
        "pkg:deb/{}/{}@{}?arch={}",
        purl_escape(distro.unwrap_or("debian")),
        purl_escape(&p.name),
        purl_escape(&p.version),
        purl_escape(&p.arch)
    );
    if let (Some(d), Some(v)) = (distro, distro_version) {
        purl.push_str(&format!("&distro={}-{}", purl_escape(d), purl_escape(v)));
    }
    purl
}

/// Percent-encodes what a purl component may not hold as is.
pub(crate) fn purl_escape(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_' | b'~' | b'+' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_installed_packages_only() {
        let status = "Package: b\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1:2.0-1\nSource: bsrc (2.0-1)\nDescription: x\n continued: line\n\nPackage: a\nStatus: deinstall ok config-files\nVersion: 1\n\nPackage: c\nStatus: install ok installed\nArchitecture: all\nVersion: 3\n";
        let p = installed_packages(status);
        assert_eq!(
            p,
            vec![
                Installed {
                    name: "b".into(),
                    version: "1:2.0-1".into(),
                    arch: "amd64".into(),
                    source: Some("bsrc".into()),
                },
                Installed {
                    name: "c".into(),
                    version: "3".into(),
                    arch: "all".into(),
                    source: None,
                },
            ]
        );
    }

    #[test]
    fn purls_escape_epochs() {
        assert_eq!(purl_escape("1:2.0+b1~x"), "1%3A2.0+b1~x");
    }
}
