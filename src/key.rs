//! The written-down encoding of step keys.
//!
//! A key is BLAKE3 over this byte sequence, never over `std::hash::Hash`:
//!
//! | field            | encoding                                               |
//! |------------------|--------------------------------------------------------|
//! | format version   | `FORMAT_VERSION` as a length-prefixed string            |
//! | step kind        | length-prefixed string (`base-tar`, `files`, ...)       |
//! | kind version     | u32 little-endian (each step module's `VERSION`)        |
//! | each part        | tag byte, length-prefixed name, length-prefixed value   |
//!
//! Lengths are u64 little-endian. Tags: `p` parameter, `i` input step key, `f` local file
//! content digest, `t` host tool version. Each step kind adds its parts in a fixed order (its
//! module documents which). Changing what a kind hashes means bumping that kind's `VERSION`;
//! changing this encoding means bumping [`FORMAT_VERSION`]. The golden test in `plan` pins the
//! keys of a fixed spec.

use imgspec_cache::StepKey;
use serde::{Deserialize, Serialize};

/// Bump when the encoding above changes: every key changes with it.
pub const FORMAT_VERSION: &str = "imgspec-key-v1";

/// One named component of a key, kept in readable form so that `plan` can say which input
/// changed since the last build.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyPart {
    /// `param`, `input`, `file` or `tool`.
    pub class: String,
    pub name: String,
    pub value: String,
}

pub struct KeyBuilder {
    hasher: blake3::Hasher,
    parts: Vec<KeyPart>,
}

impl KeyBuilder {
    pub fn new(kind: &str, kind_version: u32) -> Self {
        let mut hasher = blake3::Hasher::new();
        put(&mut hasher, FORMAT_VERSION.as_bytes());
        put(&mut hasher, kind.as_bytes());
        hasher.update(&kind_version.to_le_bytes());
        KeyBuilder {
            hasher,
            parts: Vec::new(),
        }
    }

    fn part(&mut self, tag: u8, class: &str, name: &str, value: &str) -> &mut Self {
        self.hasher.update(&[tag]);
        put(&mut self.hasher, name.as_bytes());
        put(&mut self.hasher, value.as_bytes());
        self.parts.push(KeyPart {
            class: class.into(),
            name: name.into(),
            value: value.into(),
        });
        self
    }

    pub fn param(&mut self, name: &str, value: &str) -> &mut Self {
        self.part(b'p', "param", name, value)
    }

    pub fn input(&mut self, name: &str, key: &StepKey) -> &mut Self {
        self.part(b'i', "input", name, &key.to_hex())
    }

    pub fn file(&mut self, name: &str, digest_hex: &str) -> &mut Self {
        self.part(b'f', "file", name, digest_hex)
    }

    pub fn tool(&mut self, name: &str, version: &str) -> &mut Self {
        self.part(b't', "tool", name, version)
    }

    pub fn finish(self) -> (StepKey, Vec<KeyPart>) {
        (StepKey::from_hash(self.hasher.finalize()), self.parts)
    }
}

fn put(h: &mut blake3::Hasher, bytes: &[u8]) {
    h.update(&(bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

/// Why a step's key differs from the one it had at the last build, in words.
pub fn explain_change(old: &[KeyPart], new: &[KeyPart]) -> Vec<String> {
    let find = |parts: &[KeyPart], p: &KeyPart| {
        parts
            .iter()
            .find(|o| o.class == p.class && o.name == p.name)
            .cloned()
    };
    let mut why = Vec::new();
    for p in new {
        match find(old, p) {
            None => why.push(format!("{} `{}` added", p.class, p.name)),
            Some(o) if o.value != p.value => why.push(match p.class.as_str() {
                "input" => format!("input `{}` changed", p.name),
                "file" => format!("file `{}` changed", p.name),
                _ => format!("{} `{}`: `{}` → `{}`", p.class, p.name, o.value, p.value),
            }),
            Some(_) => {}
        }
    }
    for o in old {
        if find(new, o).is_none() {
            why.push(format!("{} `{}` removed", o.class, o.name));
        }
    }
    if why.is_empty() {
        why.push("step definition changed (imgspec version)".into());
    }
    why
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_length_prefixed() {
        // "ab"+"c" and "a"+"bc" must not collide.
        let mut a = KeyBuilder::new("k", 1);
        a.param("ab", "c");
        let mut b = KeyBuilder::new("k", 1);
        b.param("a", "bc");
        assert_ne!(a.finish().0, b.finish().0);
    }

    #[test]
    fn kind_version_changes_the_key() {
        assert_ne!(
            KeyBuilder::new("k", 1).finish().0,
            KeyBuilder::new("k", 2).finish().0
        );
    }

    #[test]
    fn explains_a_changed_file_and_a_new_tool() {
        let mut a = KeyBuilder::new("files", 1);
        a.file("etc/motd", "aa");
        let mut b = KeyBuilder::new("files", 1);
        b.file("etc/motd", "bb").tool("mke2fs", "1.47.2");
        let why = explain_change(&a.finish().1, &b.finish().1);
        assert_eq!(why, ["file `etc/motd` changed", "tool `mke2fs` added"]);
    }
}
