//! The built-in elements: `element "NAME" [param=value ...]` in a spec, each a parameterised
//! customisation of the image tree doing what the diskimage-builder (DIB) element of the same
//! purpose does. One file per element, each a [`Definition`] (name, own version, parameters,
//! the parser of their values) and the [`Element`] its parser returns (the packages it needs,
//! whether it runs a command in the image, the edits it makes); [`ELEMENTS`] lists them.
//!
//! This module sits below both the spec and the steps, and depends on neither: the spec reads an
//! element's parameters through its definition when the file is read (so a bad value is a
//! diagnostic of `imgspec check`, at its span), the plan asks it for packages, and
//! `steps::element` hashes its name, version and parameters and runs its edits on the image
//! through [`ImageTree`] (the manifest in memory, or a chroot of it).
//!
//! | element | DIB element | params (default) | packages the plan adds |
//! |---------|-------------|------------------|------------------------|
//! | [`dhcp_all_interfaces`] | `dhcp-all-interfaces` | — | `ifupdown isc-dhcp-client` |
//! | [`serial_console`] | `serial-console` | `port` (`ttyS0`), `speed` | — |
//! | [`hostname`] | — (DIB leaves it to cloud-init) | `name` | — |
//! | [`growroot`] | `growroot` | — | `cloud-guest-utils` |
//! | [`cloud_init`] | `cloud-init` + `cloud-init-datasources` | `datasources` (`ConfigDrive OpenStack`) | `cloud-init` |
//! | [`timezone`] | — | `zone` | `tzdata` |
//! | [`locale`] | — | `lang` | `locales` (none for `C`, `C.UTF-8`, `POSIX`) |
//! | [`grub2`] | `grub2` | — | `grub-pc-bin grub-efi-amd64-bin grub-common grub2-common` |
//! | [`dracut_regenerate`] | `dracut-regenerate` | — | — (the image's dracut or initramfs-tools) |
//!
//! Each file's `//!` says what the element writes. Every write is owned by root with its mtime
//! at the image epoch. Every element but `locale` of a locale glibc does not have built in and
//! `dracut-regenerate` is an exact edit of the tree's manifest (no chroot, no root needed).
//!
//! Adding an element: a file here with its `DEFINITION`, and its line in [`ELEMENTS`].

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

pub mod cloud_init;
pub mod dhcp_all_interfaces;
pub mod dracut_regenerate;
pub mod growroot;
pub mod grub2;
pub mod hostname;
pub mod locale;
pub mod serial_console;
pub mod timezone;

#[cfg(test)]
mod tests;

/// Every element, in the order `imgspec` lists them.
pub static ELEMENTS: &[&Definition] = &[
    &dhcp_all_interfaces::DEFINITION,
    &serial_console::DEFINITION,
    &hostname::DEFINITION,
    &growroot::DEFINITION,
    &cloud_init::DEFINITION,
    &timezone::DEFINITION,
    &locale::DEFINITION,
    &grub2::DEFINITION,
    &dracut_regenerate::DEFINITION,
];

/// The element named `name`.
pub fn find(name: &str) -> Option<&'static Definition> {
    ELEMENTS.iter().copied().find(|d| d.name == name)
}

/// What the spec and the key know of an element before its parameters are read.
pub struct Definition {
    /// As written in the spec: `serial-console`.
    pub name: &'static str,
    /// The element's own version, part of its step's key: bump it when what the element
    /// writes changes, so that changing one element does not send the others' layers cold.
    pub version: u32,
    /// The parameters it takes.
    pub params: &'static [Param],
    /// Reads the parameters' values (only known parameters, every required one given).
    pub parse: fn(&Params<'_>) -> Parsed,
}

/// What a [`Definition::parse`] gives: the element, or every value it refuses.
pub type Parsed = Result<Box<dyn Element>, Vec<ParamError>>;

impl fmt::Debug for Definition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Definition")
            .field("name", &self.name)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// One parameter of an element.
#[derive(Debug)]
pub struct Param {
    pub name: &'static str,
    pub required: bool,
}

impl Param {
    pub const fn required(name: &'static str) -> Param {
        Param {
            name,
            required: true,
        }
    }

    pub const fn optional(name: &'static str) -> Param {
        Param {
            name,
            required: false,
        }
    }
}

/// The parameters of an element as written (integers as their decimal text).
pub struct Params<'a>(&'a BTreeMap<String, String>);

impl<'a> Params<'a> {
    pub fn get(&self, name: &str) -> Option<&'a str> {
        self.0.get(name).map(String::as_str)
    }
}

/// A parameter value the element refuses, before anything is built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamError {
    /// The parameter, or none when the element or the set of parameters is at fault.
    pub param: Option<String>,
    /// `` `fast` is not a baud rate ``.
    pub message: String,
    /// What the value is, on its span: `not a baud rate`.
    pub label: String,
    /// What to write instead.
    pub help: String,
}

impl ParamError {
    pub fn new(
        param: &str,
        message: impl Into<String>,
        label: impl Into<String>,
        help: impl Into<String>,
    ) -> Self {
        ParamError {
            param: Some(param.to_string()),
            message: message.into(),
            label: label.into(),
            help: help.into(),
        }
    }
}

impl fmt::Display for ParamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.message, self.help)
    }
}

/// An element with its parameters read: what the element does to an image.
pub trait Element: fmt::Debug + Send + Sync {
    /// The packages it needs in the image (the plan adds them to a package set before it).
    fn packages(&self) -> Vec<&'static str> {
        Vec::new()
    }

    /// Why it runs a command inside the image (which needs root), or `None` when it only edits
    /// the tree. [`ImageTree::run`] is available only when this is given.
    fn chroot(&self) -> Option<&'static str> {
        None
    }

    /// Makes the element's edits.
    fn apply(&self, image: &mut dyn ImageTree) -> Result<(), Failure>;
}

/// The image tree an element edits, paths relative to its root and resolved through the image's
/// own links (never leaving it). Files written are owned by root, their mtime the image epoch.
pub trait ImageTree {
    /// The content of the regular file at `path` (its last component followed), if there is one.
    fn read(&self, path: &str) -> Result<Option<Vec<u8>>, Failure>;
    /// Whether `path` (its last component followed) is a regular file or a hard link.
    fn is_file(&self, path: &str) -> bool;
    /// The mode of what `path` (its last component followed) is, if it exists.
    fn mode(&self, path: &str) -> Option<u32>;
    /// Writes a regular file, replacing what was there.
    fn write(&mut self, path: &str, content: &[u8], mode: u32) -> Result<(), Failure>;
    /// Puts a symbolic link, replacing what was there.
    fn symlink(&mut self, path: &str, target: &str) -> Result<(), Failure>;
    /// Runs `script` with `/bin/sh -c` inside the image (elements whose
    /// [`Element::chroot`] says why). What was written before is in the image it runs in.
    fn run(&mut self, script: &str) -> Result<(), Failure>;
}

/// Why an element's edits failed.
#[derive(Debug)]
pub enum Failure {
    /// The image cannot take the element (no such time zone in it, no unit to enable): for
    /// people, and the step fails with it.
    Image(String),
    /// Reading or writing the tree failed: the tree's own error, handed back as it was.
    Tree(Box<dyn std::error::Error + Send + Sync>),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Image(m) => f.write_str(m),
            Failure::Tree(e) => e.fmt(f),
        }
    }
}

/// The text of a file of the tree, if there is one (invalid UTF-8 replaced).
pub fn read_text(image: &dyn ImageTree, path: &str) -> Result<Option<String>, Failure> {
    Ok(image
        .read(path)?
        .map(|b| String::from_utf8_lossy(&b).into_owned()))
}

/// An element of a spec with its parameters read: the model's `element` layer.
#[derive(Clone)]
pub struct Configured {
    pub definition: &'static Definition,
    /// As written (integers as their decimal text), sorted by name: what the key hashes.
    pub params: BTreeMap<String, String>,
    element: Arc<dyn Element>,
}

impl Configured {
    /// Element `name` with `params`: refused when there is no such element, when a parameter is
    /// unknown or a required one missing, and when a value does not parse (every problem).
    pub fn new(
        name: &str,
        params: BTreeMap<String, String>,
    ) -> Result<Configured, Vec<ParamError>> {
        let Some(definition) = find(name) else {
            return Err(vec![ParamError {
                param: None,
                message: format!("unknown element `{name}`"),
                label: "unknown element".into(),
                help: format!(
                    "the elements are {}",
                    ELEMENTS
                        .iter()
                        .map(|d| format!("`{}`", d.name))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }]);
        };
        let mut refused = Vec::new();
        for p in params.keys() {
            if !definition.params.iter().any(|d| d.name == p) {
                refused.push(ParamError::new(
                    p,
                    format!("element `{name}` has no parameter `{p}`"),
                    "unknown parameter",
                    known_params(definition),
                ));
            }
        }
        for d in definition.params.iter().filter(|d| d.required) {
            if !params.contains_key(d.name) {
                refused.push(ParamError {
                    param: None,
                    message: format!("element `{name}` needs `{}`", d.name),
                    label: format!("`{}` missing", d.name),
                    help: format!("write `element \"{name}\" {}=\"…\"`", d.name),
                });
            }
        }
        if !refused.is_empty() {
            return Err(refused);
        }
        let element = (definition.parse)(&Params(&params))?;
        Ok(Configured {
            definition,
            params,
            element: Arc::from(element),
        })
    }

    pub fn name(&self) -> &'static str {
        self.definition.name
    }

    /// What the element does, as its parameters say.
    pub fn element(&self) -> &dyn Element {
        &*self.element
    }
}

fn known_params(d: &Definition) -> String {
    if d.params.is_empty() {
        format!("`{}` takes no parameters", d.name)
    } else {
        format!(
            "its parameters are {}",
            d.params
                .iter()
                .map(|p| format!("`{}`", p.name))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

/// Two elements are equal when their names and parameters are: the rest is read from them.
impl PartialEq for Configured {
    fn eq(&self, other: &Self) -> bool {
        self.definition.name == other.definition.name && self.params == other.params
    }
}

impl Eq for Configured {}

impl fmt::Debug for Configured {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Configured")
            .field("name", &self.definition.name)
            .field("params", &self.params)
            .field("element", &self.element)
            .finish()
    }
}
