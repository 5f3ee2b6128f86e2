//! `sbom`: `IMAGE.spdx.json`, an SPDX 2.3 document, a cheap step of its own so it is cached,
//! keyed and reproducible like everything else. Inputs: the final root filesystem tree, then
//! the image's output steps. Every installed package of the tree is an SPDX package with its
//! version, architecture and a purl, whatever the image's family: dpkg's (when the tree has a
//! `var/lib/dpkg/status`, [`crate::distro::debian::dpkg`]; `pkg:deb`, and when a lock file pins
//! it the SHA-256 of its `.deb`) and the RPM database's (when the tree has one,
//! [`crate::distro::rpmdb`], read by the host's `rpm`; `pkg:rpm`). Every output file is a
//! package of purpose `FILE` with its SHA-256, described by the document and containing the
//! packages. The creation time is the image epoch, the namespace a URN derived from the content.
//!
//! Key: input keys, image name, the lock's `.deb` checksums. Not the host `rpm`'s version: what
//! it prints is the headers' tags as stored (see [`crate::distro::rpmdb`]).

use std::collections::BTreeMap;

use imgspec_cache::StepOutput;
use serde_json::json;

use super::document::{document_output, output_files};
use super::{FactError, StepContext, StepError};
use crate::distro::debian::dpkg;
use crate::distro::rpmdb::{self, RpmPackage};
use crate::distro::Installed;
use crate::key::KeyBuilder;

pub const SBOM_VERSION: u32 = 1;

#[derive(Clone, Debug)]
pub struct SbomStep {
    pub image: String,
    pub file_name: String,
    /// SHA-256 of `.deb`s a lock pins, by `name:arch:version`.
    pub deb_sha256: BTreeMap<String, String>,
}

/// The packages of a tree, by database.
#[derive(Clone, Debug, Default)]
struct Packages {
    dpkg: Vec<Installed>,
    rpm: Vec<RpmPackage>,
}

/// `ID` and `VERSION_ID` from an os-release file.
fn os_release(text: &str) -> (Option<String>, Option<String>) {
    let get = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(|v| v.trim().trim_matches('"').to_string())
    };
    (get("ID"), get("VERSION_ID"))
}

/// Unique SPDX identifiers: the second of two names that clean to the same one gets `-2`.
#[derive(Default)]
struct Ids(std::collections::BTreeSet<String>);

impl Ids {
    fn unique(&mut self, id: String) -> String {
        let mut candidate = id.clone();
        let mut n = 1;
        while !self.0.insert(candidate.clone()) {
            n += 1;
            candidate = format!("{id}-{n}");
        }
        candidate
    }
}

/// An SPDX identifier: letters, digits, `.` and `-` only.
fn spdx_id(prefix: &str, s: &str) -> String {
    let clean: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("SPDXRef-{prefix}-{clean}")
}

/// An installed package as an SPDX package: what every database gives.
fn spdx_package(id: &str, name: &str, version: &str, purl: &str) -> serde_json::Value {
    json!({
        "SPDXID": id,
        "name": name,
        "versionInfo": version,
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "primaryPackagePurpose": "LIBRARY",
        "copyrightText": "NOASSERTION",
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "externalRefs": [{
            "referenceCategory": "PACKAGE-MANAGER",
            "referenceType": "purl",
            "referenceLocator": purl,
        }],
    })
}

/// `1970-01-01T00:00:00Z` for seconds since the epoch (UTC, proleptic Gregorian calendar).
pub fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

impl SbomStep {
    pub fn hash(&self, k: &mut KeyBuilder) -> Result<(), FactError> {
        k.param("image", &self.image).param("file", &self.file_name);
        for (pkg, sha) in &self.deb_sha256 {
            k.param(&format!("deb {pkg}"), sha);
        }
        Ok(())
    }

    pub fn run(&self, ctx: &StepContext) -> Result<StepOutput, StepError> {
        let (_, tree) = ctx.input_tree(0)?;
        let read = |path: &str| -> Result<Option<String>, StepError> {
            match tree.get(path).map(|e| &e.kind) {
                Some(imgspec_cache::EntryKind::File { digest, .. }) => Ok(Some(
                    String::from_utf8_lossy(&ctx.store.read_blob(digest)?).into_owned(),
                )),
                _ => Ok(None),
            }
        };
        let packages = Packages {
            dpkg: match read("var/lib/dpkg/status")? {
                Some(status) => dpkg::installed_packages(&status),
                None => Vec::new(),
            },
            rpm: match rpmdb::find(&tree)? {
                Some(db) => rpmdb::query(ctx, &db)?,
                None => Vec::new(),
            },
        };
        let os = match read("etc/os-release")? {
            Some(t) => Some(t),
            None => read("usr/lib/os-release")?,
        };
        let (distro, distro_version) = os.as_deref().map(os_release).unwrap_or((None, None));
        let files = output_files(&ctx.inputs[1..]);
        document_output(
            ctx,
            &self.file_name,
            &self.document(&packages, distro, distro_version, &files, ctx.epoch),
        )
    }

    fn document(
        &self,
        packages: &Packages,
        distro: Option<String>,
        distro_version: Option<String>,
        files: &BTreeMap<String, (u64, String)>,
        epoch: i64,
    ) -> serde_json::Value {
        let namespace = {
            let mut h = blake3::Hasher::new();
            for (name, (size, sha)) in files {
                h.update(format!("{name} {size} {sha}\n").as_bytes());
            }
            for p in &packages.dpkg {
                h.update(format!("{} {} {}\n", p.name, p.version, p.arch).as_bytes());
            }
            for p in &packages.rpm {
                h.update(format!("rpm {} {} {}\n", p.name, p.evr(), p.arch).as_bytes());
            }
            format!("urn:imgspec:{}:{}", self.image, h.finalize().to_hex())
        };
        let os = (distro.as_deref(), distro_version.as_deref());
        let mut ids = Ids::default();
        let mut spdx_packages = Vec::new();
        let mut relationships = Vec::new();
        let file_ids: Vec<String> = files
            .keys()
            .map(|name| ids.unique(spdx_id("File", name)))
            .collect();
        for ((name, (_, sha)), id) in files.iter().zip(&file_ids) {
            spdx_packages.push(json!({
                "SPDXID": id,
                "name": name,
                "packageFileName": name,
                "downloadLocation": "NOASSERTION",
                "filesAnalyzed": false,
                "primaryPackagePurpose": "FILE",
                "checksums": [{"algorithm": "SHA256", "checksumValue": sha}],
                "copyrightText": "NOASSERTION",
                "licenseConcluded": "NOASSERTION",
                "licenseDeclared": "NOASSERTION",
            }));
            relationships.push(json!({
                "spdxElementId": "SPDXRef-DOCUMENT",
                "relationshipType": "DESCRIBES",
                "relatedSpdxElement": id,
            }));
        }
        let contains = |id: &str, relationships: &mut Vec<serde_json::Value>| {
            for file in &file_ids {
                relationships.push(json!({
                    "spdxElementId": file,
                    "relationshipType": "CONTAINS",
                    "relatedSpdxElement": id,
                }));
            }
        };
        for p in &packages.dpkg {
            let id = ids.unique(spdx_id("Package", &format!("{}-{}", p.name, p.arch)));
            let mut pkg = spdx_package(&id, &p.name, &p.version, &dpkg::purl(p, os));
            if let Some(src) = &p.source {
                pkg["sourceInfo"] = json!(format!("built from the source package {src}"));
            }
            let lock_key = format!("{}:{}:{}", p.name, p.arch, p.version);
            match self.deb_sha256.get(&lock_key) {
                Some(sha) => {
                    pkg["checksums"] = json!([{"algorithm": "SHA256", "checksumValue": sha}]);
                }
                None => {
                    pkg["comment"] =
                        json!("no lock file pins this package: the .deb's checksum is unknown");
                }
            }
            spdx_packages.push(pkg);
            contains(&id, &mut relationships);
        }
        // RPMs: their ids are of their own kind (a name may be in both databases) and have the
        // version (an install-only package, `kernel-core`, is there in several).
        for p in &packages.rpm {
            let id = ids.unique(spdx_id(
                "RpmPackage",
                &format!("{}-{}-{}", p.name, p.evr(), p.arch),
            ));
            let mut pkg = spdx_package(&id, &p.name, &p.evr(), &p.purl(os));
            if let Some(src) = &p.source_rpm {
                pkg["sourceInfo"] = json!(format!("built from the source RPM {src}"));
            }
            pkg["comment"] = json!(
                "from the RPM database: no lock file pins it, the .rpm's checksum is unknown"
            );
            spdx_packages.push(pkg);
            contains(&id, &mut relationships);
        }
        json!({
            "spdxVersion": "SPDX-2.3",
            "dataLicense": "CC0-1.0",
            "SPDXID": "SPDXRef-DOCUMENT",
            "name": self.image,
            "documentNamespace": namespace,
            "creationInfo": {
                "created": rfc3339(epoch),
                "creators": [format!("Tool: imgspec-{}", env!("CARGO_PKG_VERSION"))],
            },
            "packages": spdx_packages,
            "relationships": relationships,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::document::document_bytes;

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn sbom_is_spdx_and_pins_lock_checksums() {
        let step = SbomStep {
            image: "img".into(),
            file_name: "img.spdx.json".into(),
            deb_sha256: BTreeMap::from([("b:amd64:1".to_string(), "ab".repeat(32))]),
        };
        let pkgs = Packages {
            dpkg: vec![Installed {
                name: "b".into(),
                version: "1".into(),
                arch: "amd64".into(),
                source: None,
            }],
            rpm: vec![],
        };
        let files = BTreeMap::from([("img.raw".to_string(), (10, "cd".repeat(32)))]);
        let doc = step.document(&pkgs, Some("debian".into()), Some("12".into()), &files, 0);
        assert_eq!(doc["spdxVersion"], "SPDX-2.3");
        assert_eq!(doc["creationInfo"]["created"], "1970-01-01T00:00:00Z");
        let b = &doc["packages"][1];
        assert_eq!(b["checksums"][0]["checksumValue"], "ab".repeat(32));
        assert_eq!(
            b["externalRefs"][0]["referenceLocator"],
            "pkg:deb/debian/b@1?arch=amd64&distro=debian-12"
        );
        assert_eq!(doc["relationships"][0]["relationshipType"], "DESCRIBES");
        assert_eq!(doc["relationships"][1]["relationshipType"], "CONTAINS");
        // Same inputs, same bytes (as written, key order included).
        let again = step.document(&pkgs, Some("debian".into()), Some("12".into()), &files, 0);
        assert_eq!(document_bytes(&doc), document_bytes(&again));
    }

    /// A Debian tree with one RPM-managed package of the same name: both listed, each with its
    /// purl, every SPDX id unique.
    #[test]
    fn dpkg_and_rpm_packages_side_by_side() {
        let step = SbomStep {
            image: "img".into(),
            file_name: "img.spdx.json".into(),
            deb_sha256: BTreeMap::new(),
        };
        let rpm = |epoch, version: &str| RpmPackage {
            name: "tzdata".into(),
            epoch,
            version: version.into(),
            release: "1.el9".into(),
            arch: "noarch".into(),
            source_rpm: Some(format!("tzdata-{version}-1.el9.src.rpm")),
        };
        let pkgs = Packages {
            dpkg: vec![Installed {
                name: "tzdata".into(),
                version: "2024a-0+deb12u1".into(),
                arch: "all".into(),
                source: None,
            }],
            rpm: vec![rpm(Some(2), "2024a"), rpm(None, "2024b")],
        };
        let files = BTreeMap::from([("img.raw".to_string(), (10, "cd".repeat(32)))]);
        let doc = step.document(&pkgs, Some("centos".into()), Some("8".into()), &files, 0);
        let packages = doc["packages"].as_array().unwrap();
        assert_eq!(packages.len(), 4);
        let ids: std::collections::BTreeSet<&str> = packages
            .iter()
            .map(|p| p["SPDXID"].as_str().unwrap())
            .collect();
        assert_eq!(ids.len(), 4, "{ids:?}");
        let purls: Vec<&str> = packages[1..]
            .iter()
            .map(|p| p["externalRefs"][0]["referenceLocator"].as_str().unwrap())
            .collect();
        assert_eq!(
            purls,
            [
                "pkg:deb/centos/tzdata@2024a-0+deb12u1?arch=all&distro=centos-8",
                "pkg:rpm/centos/tzdata@2024a-1.el9?arch=noarch&distro=centos-8&epoch=2",
                "pkg:rpm/centos/tzdata@2024b-1.el9?arch=noarch&distro=centos-8",
            ]
        );
        assert_eq!(packages[2]["versionInfo"], "2:2024a-1.el9");
        assert_eq!(
            packages[2]["sourceInfo"],
            "built from the source RPM tzdata-2024a-1.el9.src.rpm"
        );
        // Every package is contained in every output file.
        let contains = doc["relationships"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["relationshipType"] == "CONTAINS")
            .count();
        assert_eq!(contains, 3);
    }

    #[test]
    fn ids_stay_unique_when_names_clean_alike() {
        let mut ids = Ids::default();
        assert_eq!(ids.unique(spdx_id("Package", "a+b")), "SPDXRef-Package-a-b");
        assert_eq!(
            ids.unique(spdx_id("Package", "a-b")),
            "SPDXRef-Package-a-b-2"
        );
        assert_eq!(
            ids.unique(spdx_id("Package", "a:b")),
            "SPDXRef-Package-a-b-3"
        );
    }
}
