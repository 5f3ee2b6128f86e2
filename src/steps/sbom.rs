//! `sbom`: `IMAGE.spdx.json`, an SPDX 2.3 document, a cheap step of its own so it is cached,
//! keyed and reproducible like everything else. Inputs: the final root filesystem tree, then
//! the image's output steps. Every installed package of the tree (as its distribution family
//! reads it: Debian's `var/lib/dpkg/status`, [`crate::distro::debian::dpkg`]) is an SPDX
//! package with its version, architecture, a purl and, when a lock file pins it, the SHA-256 of
//! its `.deb`; every output file is a package of purpose `FILE` with its SHA-256, described by
//! the document and containing the packages. The creation time is the image epoch, the
//! namespace a URN derived from the content.
//!
//! Key: input keys, image name, the lock's `.deb` checksums.

use std::collections::BTreeMap;

use imgspec_cache::StepOutput;
use serde_json::json;

use super::document::{document_output, output_files};
use super::{FactError, StepContext, StepError};
use crate::distro::Installed;
use crate::key::KeyBuilder;

pub const SBOM_VERSION: u32 = 1;

#[derive(Clone, Debug)]
pub struct SbomStep {
    pub image: String,
    pub file_name: String,
    /// SHA-256 of `.deb`s a lock pins, by `name:arch:version`.
    pub deb_sha256: BTreeMap<String, String>,
    /// The image's distribution family: it reads the tree's package database (not hashed: the
    /// tree's key says which base it grew from).
    pub family: &'static dyn crate::distro::Family,
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
        let packages = self.family.installed(&read)?;
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
        packages: &[Installed],
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
            for p in packages {
                h.update(format!("{} {} {}\n", p.name, p.version, p.arch).as_bytes());
            }
            format!("urn:imgspec:{}:{}", self.image, h.finalize().to_hex())
        };
        let mut spdx_packages = Vec::new();
        let mut relationships = Vec::new();
        for (name, (_, sha)) in files {
            let id = spdx_id("File", name);
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
        for p in packages {
            let id = spdx_id("Package", &format!("{}-{}", p.name, p.arch));
            let purl = self
                .family
                .purl(p, (distro.as_deref(), distro_version.as_deref()));
            let mut pkg = json!({
                "SPDXID": id,
                "name": p.name,
                "versionInfo": p.version,
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
            });
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
            for file in files.keys() {
                relationships.push(json!({
                    "spdxElementId": spdx_id("File", file),
                    "relationshipType": "CONTAINS",
                    "relatedSpdxElement": id,
                }));
            }
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
            family: &crate::distro::debian::DEBIAN,
        };
        let pkgs = vec![Installed {
            name: "b".into(),
            version: "1".into(),
            arch: "amd64".into(),
            source: None,
        }];
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
}
