//! The host facts planning reads: tool versions and file digests, cached in the store.

use std::path::Path;
use std::sync::Mutex;

use imgspec_cache::Store;

use crate::exec::error_lines;
use crate::steps::Facts;
use crate::tools::{Tool, ToolBox, ToolError};

/// Host facts for planning: tool versions (cached by path, size and mtime in the store's
/// `tool-versions.json`) and file digests (cached in the store's index). Missing tools are
/// collected, not fatal, so that all of them are reported at once.
pub struct HostFacts<'a> {
    store: &'a Store,
    tools: ToolBox,
    missing: Mutex<Vec<Tool>>,
}

impl HostFacts<'_> {
    pub fn new(store: &Store) -> HostFacts<'_> {
        HostFacts {
            store,
            tools: ToolBox::new(Some(store.root().join("tool-versions.json"))),
            missing: Mutex::default(),
        }
    }

    /// The tools asked for and not found, in the order they were asked for.
    pub fn into_missing(self) -> Vec<Tool> {
        self.missing.into_inner().unwrap_or_else(|e| e.into_inner())
    }
}

impl Facts for HostFacts<'_> {
    fn tool_version(&self, tool: &Tool) -> Result<String, ToolError> {
        match self.tools.version(tool) {
            Err(ToolError::Missing { .. }) => {
                let mut m = self.missing.lock().unwrap_or_else(|e| e.into_inner());
                if !m.contains(tool) {
                    m.push(*tool);
                }
                Ok("missing".into())
            }
            other => other,
        }
    }
    fn file_digest(&self, path: &Path) -> Result<String, std::io::Error> {
        self.store
            .hash_file_cached(path)
            .map(|d| d.to_hex())
            .map_err(|e| std::io::Error::other(error_lines(&e)))
    }
}
