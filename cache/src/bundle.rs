//! Bundles: step records and their blobs in one `.tar.zst` file, to carry a cache to a machine
//! with no network path to the first.
//!
//! # Format
//!
//! A zstd-compressed tar, written deterministically (entries in this order, each group sorted by
//! name; mode 0644, owner 0:0, mtime 0), so the same records give the same bytes:
//!
//! ```text
//! IMGSPEC-BUNDLE                 the text "imgspec bundle v1\n": what this file is
//! blobs-v1/<blake3 hex>          each blob exactly as the store keeps it (zstd of its bytes)
//! records-v1/<step key hex>.json each step record, as a remote cache keeps it under ac-v1/
//! ```
//!
//! Blobs come before the records that need them. `import_bundle` checks every blob against its
//! digest as it streams in ([`Store::adopt_compressed`]), reads the bundle to its very end (a
//! truncated file fails the zstd check), and only then records every step in one transaction:
//! a bundle that is bad anywhere records nothing. Blobs adopted before the fault was found are
//! complete and correct but referenced by no record; `gc` removes them.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, Read, Write};

use crate::error_chain;
use crate::remote::SharedRecord;
use crate::{BlobDigest, Result, StepKey, Store, StoreError};

const MAGIC_ENTRY: &str = "IMGSPEC-BUNDLE";
const MAGIC: &[u8] = b"imgspec bundle v1\n";
const BLOBS: &str = "blobs-v1/";
const RECORDS: &str = "records-v1/";
/// A record entry larger than this is not a record.
const MAX_RECORD: u64 = 16 << 20;

/// What went into or came out of a bundle.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BundleStats {
    pub records: usize,
    pub blobs: usize,
    /// Blob bytes as stored (compressed).
    pub bytes: u64,
}

fn bad(entry: &str, reason: impl Into<String>) -> StoreError {
    StoreError::BadBundle {
        entry: entry.into(),
        reason: reason.into(),
    }
}

fn header(path: &str, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_path(path).expect("bundle paths are short ASCII");
    h.set_size(size);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    h
}

impl Store {
    /// Writes the records of `keys` and every blob they reference to `w` as a bundle. Every key
    /// must be in the store (`MissingBlob`/lookup errors otherwise): pick them with `lookup`.
    pub fn export_bundle(&self, keys: &[StepKey], w: &mut dyn Write) -> Result<BundleStats> {
        let mut records = Vec::new();
        let mut blobs = BTreeSet::new();
        let mut keys = keys.to_vec();
        keys.sort();
        keys.dedup();
        for key in &keys {
            let rec = self.lookup(key)?.ok_or_else(|| {
                bad(
                    &format!("{RECORDS}{}.json", key.to_hex()),
                    "that step is not in the local cache",
                )
            })?;
            blobs.extend(self.output_blobs(&rec.output)?);
            records.push(SharedRecord::new(
                rec.key,
                &rec.kind,
                &rec.name,
                &rec.output,
            ));
        }
        let out = io::BufWriter::new(w);
        let io_err = |e: io::Error| StoreError::Io {
            path: "<bundle>".into(),
            source: e,
        };
        // The blobs inside are zstd already: the outer level only packs the tar headers.
        let enc = zstd::Encoder::new(out, 1).map_err(io_err)?;
        let mut tar = tar::Builder::new(enc);
        tar.append(&header(MAGIC_ENTRY, MAGIC.len() as u64), MAGIC)
            .map_err(io_err)?;
        let mut stats = BundleStats {
            records: records.len(),
            ..BundleStats::default()
        };
        for d in &blobs {
            self.wait_pending(d)?;
            let path = self.blob_path(d);
            let file = File::open(&path).map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => StoreError::MissingBlob(*d),
                _ => StoreError::Io {
                    path: path.clone(),
                    source: e,
                },
            })?;
            let len = file.metadata().map_err(StoreError::io(&path))?.len();
            tar.append(&header(&format!("{BLOBS}{}", d.to_hex()), len), file)
                .map_err(StoreError::io(&path))?;
            stats.blobs += 1;
            stats.bytes += len;
        }
        for rec in &records {
            let json = rec.to_json();
            let name = format!("{RECORDS}{}.json", rec.key.to_hex());
            tar.append(&header(&name, json.len() as u64), &json[..])
                .map_err(io_err)?;
        }
        let enc = tar.into_inner().map_err(io_err)?;
        let mut out = enc.finish().map_err(io_err)?;
        out.flush().map_err(io_err)?;
        Ok(stats)
    }

    /// Imports a bundle: every blob checked against its digest, then every record, all or none.
    /// A bad bundle fails with [`StoreError::BadBundle`] naming the entry and records nothing.
    pub fn import_bundle(&self, r: &mut dyn Read) -> Result<BundleStats> {
        let dec = zstd::Decoder::new(r).map_err(|e| bad("(the zstd stream)", e.to_string()))?;
        let mut archive = tar::Archive::new(dec);
        let mut records: Vec<SharedRecord> = Vec::new();
        let mut stats = BundleStats::default();
        let mut seen_magic = false;
        let entries = archive
            .entries()
            .map_err(|e| bad("(the tar stream)", e.to_string()))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| bad("(the tar stream)", e.to_string()))?;
            let name = entry
                .path()
                .map_err(|e| bad("(the tar stream)", e.to_string()))?
                .to_string_lossy()
                .into_owned();
            if !seen_magic {
                let mut magic = Vec::new();
                (&mut entry)
                    .take(64)
                    .read_to_end(&mut magic)
                    .map_err(|e| bad(&name, e.to_string()))?;
                if name != MAGIC_ENTRY || magic != MAGIC {
                    return Err(bad(
                        &name,
                        "not an imgspec bundle (no IMGSPEC-BUNDLE first)",
                    ));
                }
                seen_magic = true;
                continue;
            }
            if let Some(hex) = name.strip_prefix(BLOBS) {
                let d = BlobDigest::parse_hex(hex)
                    .ok_or_else(|| bad(&name, "the name is not a BLAKE3 digest"))?;
                let mut tmp = self.incoming_file()?;
                let n = io::copy(&mut entry, tmp.as_file_mut())
                    .map_err(|e| bad(&name, format!("cannot read it: {e}")))?;
                if !self.has_blob(&d) {
                    self.adopt_compressed(&d, tmp).map_err(|e| {
                        if e.is_corrupt() {
                            bad(&name, error_chain(&e).to_string())
                        } else {
                            e
                        }
                    })?;
                }
                stats.blobs += 1;
                stats.bytes += n;
            } else if let Some(file) = name.strip_prefix(RECORDS) {
                let key = file
                    .strip_suffix(".json")
                    .and_then(StepKey::parse_hex)
                    .ok_or_else(|| bad(&name, "the name is not a step key"))?;
                let mut json = Vec::new();
                (&mut entry)
                    .take(MAX_RECORD)
                    .read_to_end(&mut json)
                    .map_err(|e| bad(&name, format!("cannot read it: {e}")))?;
                records.push(SharedRecord::parse(&json, &key).map_err(|r| bad(&name, r))?);
            } else {
                return Err(bad(&name, "unknown entry"));
            }
        }
        if !seen_magic {
            return Err(bad("(the tar stream)", "empty: not an imgspec bundle"));
        }
        // Read to the end of the zstd stream: a bundle cut short fails here, even when the cut
        // fell after the tar's end marker.
        io::copy(&mut archive.into_inner(), &mut io::sink())
            .map_err(|e| bad("(the zstd stream)", format!("truncated or damaged: {e}")))?;
        let rows: Vec<_> = records
            .iter()
            .map(|r| (r.key, r.kind.as_str(), r.name.as_str(), &r.output))
            .collect();
        self.record_all(&rows).map_err(|e| match e {
            StoreError::MissingBlob(d) => bad(
                &format!("{BLOBS}{}", d.to_hex()),
                "a record of the bundle needs this blob, and the bundle does not hold it",
            ),
            e => e,
        })?;
        stats.records = records.len();
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{StepOutput, TreeDigest};

    /// A store with one step whose output is a tree of two files.
    fn store_with_a_step(dir: &std::path::Path) -> (Store, StepKey) {
        let s = Store::open(&dir.join("a")).unwrap();
        let src = dir.join("src");
        std::fs::create_dir_all(src.join("etc")).unwrap();
        std::fs::write(src.join("etc/motd"), "hello\n").unwrap();
        std::fs::write(src.join("big"), vec![7u8; 300_000]).unwrap();
        let m = s.import_dir(&src, &Default::default()).unwrap();
        let tree: TreeDigest = s.put_manifest(&m).unwrap();
        let key = StepKey::from_hash(blake3::hash(b"step"));
        let out = StepOutput {
            tree: Some(tree),
            ..Default::default()
        };
        s.record(&key, "files", "files etc", &out).unwrap();
        (s, key)
    }

    #[test]
    fn a_bundle_is_deterministic_and_imports_into_an_empty_store() {
        let dir = tempfile::tempdir().unwrap();
        let (a, key) = store_with_a_step(dir.path());
        let mut one = Vec::new();
        let stats = a.export_bundle(&[key], &mut one).unwrap();
        assert_eq!(stats.records, 1);
        assert_eq!(stats.blobs, 3); // manifest, motd, big
        let mut two = Vec::new();
        a.export_bundle(&[key, key], &mut two).unwrap();
        assert_eq!(one, two);

        let b = Store::open(&dir.path().join("b")).unwrap();
        let got = b.import_bundle(&mut &one[..]).unwrap();
        assert_eq!((got.records, got.blobs), (1, 3));
        let rec = b.lookup(&key).unwrap().expect("imported");
        assert_eq!(rec.output, a.lookup(&key).unwrap().unwrap().output);
    }

    #[test]
    fn a_damaged_bundle_records_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (a, key) = store_with_a_step(dir.path());
        let mut bundle = Vec::new();
        a.export_bundle(&[key], &mut bundle).unwrap();

        // Cut anywhere: refused, nothing recorded.
        for cut in [10, bundle.len() / 2, bundle.len() - 3] {
            let b = Store::open(&dir.path().join(format!("cut-{cut}"))).unwrap();
            let e = b.import_bundle(&mut &bundle[..cut]).unwrap_err();
            assert!(matches!(e, StoreError::BadBundle { .. }), "{cut}: {e:?}");
            assert!(b.lookup(&key).unwrap().is_none());
        }

        // A blob whose bytes are not its digest's: refused, naming it.
        let mut raw = Vec::new();
        zstd::Decoder::new(&bundle[..])
            .unwrap()
            .read_to_end(&mut raw)
            .unwrap();
        let mut tar_in = tar::Archive::new(&raw[..]);
        let mut builder = tar::Builder::new(Vec::new());
        let mut swapped = false;
        for e in tar_in.entries().unwrap() {
            let mut e = e.unwrap();
            let name = e.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            if name.starts_with(BLOBS) && !swapped {
                data = zstd::encode_all(&b"not this blob"[..], 3).unwrap();
                swapped = true;
            }
            builder
                .append(&header(&name, data.len() as u64), &data[..])
                .unwrap();
        }
        let bad_bundle = zstd::encode_all(&builder.into_inner().unwrap()[..], 1).unwrap();
        let b = Store::open(&dir.path().join("bad")).unwrap();
        match b.import_bundle(&mut &bad_bundle[..]).unwrap_err() {
            StoreError::BadBundle { entry, reason } => {
                assert!(entry.starts_with(BLOBS), "{entry}");
                assert!(reason.contains("corrupt"), "{reason}");
            }
            e => panic!("{e:?}"),
        }
        assert!(b.lookup(&key).unwrap().is_none());

        // Not a bundle at all.
        let plain = zstd::encode_all(&b"hello"[..], 1).unwrap();
        assert!(b.import_bundle(&mut &plain[..]).is_err());
    }
}
