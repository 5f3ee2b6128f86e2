//! What the two documents of a build (`sbom`, `manifest`) share: the digest of a step output,
//! the files of `out/IMAGE/` with their SHA-256, and a JSON document as a step output.

use std::collections::BTreeMap;

use imgspec_cache::StepOutput;
use sha2::{Digest, Sha256};

use super::{StepContext, StepError};

/// The BLAKE3 of a step output's canonical encoding: what `verify` and the manifest compare.
pub fn output_digest(o: &StepOutput) -> String {
    let json = serde_json::to_vec(o).expect("a step output always encodes");
    blake3::hash(&json).to_hex().to_string()
}

/// Output files of `outputs`: name → (size, SHA-256).
pub(super) fn output_files(outputs: &[StepOutput]) -> BTreeMap<String, (u64, String)> {
    let mut files = BTreeMap::new();
    for o in outputs {
        for (name, r) in &o.files {
            let sha = o
                .meta
                .get(&format!("sha256:{name}"))
                .cloned()
                .unwrap_or_default();
            files.insert(name.clone(), (r.size, sha));
        }
    }
    files
}

/// The bytes of a document as written to `out/`.
pub(super) fn document_bytes(doc: &serde_json::Value) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(doc).expect("JSON values always encode");
    bytes.push(b'\n');
    bytes
}

/// A document as a step output: the file, and its SHA-256 for `SHA256SUMS`.
pub(super) fn document_output(
    ctx: &StepContext,
    name: &str,
    doc: &serde_json::Value,
) -> Result<StepOutput, StepError> {
    let bytes = document_bytes(doc);
    let mut out = StepOutput::default();
    out.files
        .insert(name.to_string(), ctx.store.put_bytes(&bytes)?);
    out.meta.insert(
        format!("sha256:{name}"),
        format!("{:x}", Sha256::digest(&bytes)),
    );
    Ok(out)
}
