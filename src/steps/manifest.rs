//! `manifest`: `IMAGE.manifest.json`, the build manifest (not the cache's tree manifest,
//! `imgspec_cache::TreeManifest`), a cheap step of its own so it is cached, keyed and
//! reproducible like everything else. Inputs: every other step of the image. Names the spec
//! file that declares the image and each file it imports (not other specs built in the same
//! run) by file name with its BLAKE3, every step with its name, kind, key and output digest
//! (BLAKE3 of the step output's canonical JSON, [`super::document::output_digest`]), the tool
//! versions the keys hold, and every file of `out/IMAGE/` (the output steps' and the SBOM) with
//! its size and SHA-256.
//!
//! Key: input keys, image name, spec file digests, step names, tool versions.

use std::collections::BTreeMap;

use imgspec_cache::StepOutput;
use serde::Serialize;
use serde_json::json;

use super::document::{document_output, output_digest, output_files};
use super::{FactError, StepContext, StepError};
use crate::key::KeyBuilder;

/// 2: `outputs` lists only the files written to `out/IMAGE/`.
pub const MANIFEST_VERSION: u32 = 2;

#[derive(Clone, Debug)]
pub struct ManifestStep {
    pub image: String,
    pub file_name: String,
    /// (file name, BLAKE3) of each spec file.
    pub spec: Vec<(String, String)>,
    /// The lock file's name and BLAKE3, when the image has one.
    pub lock: Option<(String, String)>,
    /// (stable name, kind, label) of each input, in input order.
    pub steps: Vec<(String, String, String)>,
    pub tools: BTreeMap<String, String>,
}

#[derive(Serialize)]
struct ManifestDoc<'a> {
    image: &'a str,
    imgspec: &'static str,
    epoch: i64,
    spec: Vec<BTreeMap<&'static str, &'a str>>,
    lock: Option<BTreeMap<&'static str, &'a str>>,
    steps: Vec<serde_json::Value>,
    tools: &'a BTreeMap<String, String>,
    outputs: BTreeMap<String, serde_json::Value>,
}

impl ManifestStep {
    pub fn hash(&self, k: &mut KeyBuilder) -> Result<(), FactError> {
        k.param("image", &self.image).param("file", &self.file_name);
        for (name, digest) in &self.spec {
            k.param(&format!("spec {name}"), digest);
        }
        if let Some((name, digest)) = &self.lock {
            k.param(&format!("lock {name}"), digest);
        }
        for (name, kind, label) in &self.steps {
            k.param(&format!("step {name}"), &format!("{kind} {label}"));
        }
        for (tool, version) in &self.tools {
            k.tool(tool, version);
        }
        Ok(())
    }

    pub fn run(&self, ctx: &StepContext) -> Result<StepOutput, StepError> {
        if ctx.inputs.len() != self.steps.len() {
            return Err(StepError::Internal(
                "manifest: inputs and step names differ",
            ));
        }
        let steps = self
            .steps
            .iter()
            .zip(&ctx.inputs)
            .zip(&ctx.input_keys)
            .map(|(((name, kind, label), o), key)| {
                json!({
                    "name": name,
                    "kind": kind,
                    "label": label,
                    "key": key,
                    "output": output_digest(o),
                })
            })
            .collect();
        // The files written to `out/IMAGE/` (those of the output steps and the SBOM); the
        // intermediate ones (`fs.img`, `disk.raw`) are in their steps' output digests.
        let delivered: Vec<StepOutput> = self
            .steps
            .iter()
            .zip(&ctx.inputs)
            .filter(|((_, kind, _), _)| matches!(kind.as_str(), "output" | "sbom"))
            .map(|(_, o)| o.clone())
            .collect();
        let outputs = output_files(&delivered)
            .into_iter()
            .map(|(name, (size, sha))| (name, json!({"size": size, "sha256": sha})))
            .collect();
        fn entry((name, digest): &(String, String)) -> BTreeMap<&'static str, &str> {
            BTreeMap::from([("file", name.as_str()), ("blake3", digest.as_str())])
        }
        let doc = ManifestDoc {
            image: &self.image,
            imgspec: env!("CARGO_PKG_VERSION"),
            epoch: ctx.epoch,
            spec: self.spec.iter().map(entry).collect(),
            lock: self.lock.as_ref().map(entry),
            steps,
            tools: &self.tools,
            outputs,
        };
        let value = serde_json::to_value(&doc).expect("the manifest always encodes");
        document_output(ctx, &self.file_name, &value)
    }
}
