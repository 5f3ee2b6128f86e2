//! Spec files: KDL text → raw nodes with spans → a validated, typed [`model::Spec`].
//!
//! [`load`] reads the files named on the command line and the files they import
//! (`source`), reads every `image` and `template` into a declaration (`image`, `disk`),
//! then follows `extends` and checks each image as a whole (`resolve`). Every problem in every
//! file is collected into one [`SpecErrors`], each a [`SpecError`] with a stable code, a label on
//! the exact span and a help line.
//!
//! # The spec language
//!
//! A spec is a [KDL v2](https://kdl.dev) document. Strings are in double quotes (a bare word is a
//! string too), booleans are `#true` and `#false`. Paths on the host are relative to the folder
//! of the spec file that names them, and may not leave it (`keyring` excepted).
//!
//! Top level:
//!
//! ```kdl
//! import "common.kdl"                  // its images and templates join this file's
//! template "NAME" [extends="OTHER"] { … }   // only for extending: never built
//! image "NAME" [extends="OTHER"] { … }      // built
//! ```
//!
//! Images and templates share one namespace across all files. `extends` names an image or
//! template of this file or of a file it imports: the image starts with its parent's layers and
//! adds its own after them; its `epoch`, `bootloader`, `disk` and `output` replace the parent's.
//!
//! In an image or template, in order (layers are applied in the order written, `base` first):
//!
//! ```kdl
//! epoch 1686355200                       // SOURCE_DATE_EPOCH; default 2023-06-10
//! base "debian" suite="bookworm" [variant="minbase"] [mirror="http://…"]
//!      [components="main contrib"] [architecture="amd64"] [keyring="PATH"]
//! base "ubuntu" suite="noble" [mirror="http://…"] [same options]
//! base "tar" path="rootfs.tar"
//! packages "NAME" openssh-server systemd-sysv …      // sorted, deduplicated
//! files "overlay/" [dest="/"]             // a folder beside the spec, copied into the image
//! run "systemctl enable ssh"              // /bin/sh -c inside the image root
//! user "ops" [groups="sudo adm"] [ssh-key="ssh-ed25519 …"]… [password-hash="$6$…"]
//!      [sudo=#true] [shell="/bin/bash"] [{ ssh-key "…" … }]
//! element "hostname" name="node1"         // see crate::element for names and parameters
//! bootloader "grub-efi"|"grub-bios"|"hybrid" [cmdline="console=tty0 console=ttyS0,115200"]
//!            [secure-boot=#true]    // grub-efi, hybrid: the distribution's signed shim and GRUB
//! disk [table="gpt"] size="2GiB" {
//!     partition "esp"  type="esp"  size="200MiB" format="vfat" mount="/boot/efi"
//!     partition "root" type="root" format="ext4" mount="/"    // no size: the rest of the disk
//! }
//! output "qcow2" "raw" "tar"
//! ```
//!
//! - Debian variants: `extract custom essential apt minbase buildd required important standard`
//!   (default `minbase`); components default to `main` (Debian) or `main universe` (Ubuntu).
//! - Partition types: `esp` (must be `vfat`), `root`, `bios-boot` (no filesystem), `linux`,
//!   `swap` (not mounted); formats: `ext4`, `vfat`. Exactly one partition is mounted at `/`.
//! - Sizes: `512KiB`, `200MiB`, `2GiB`, `1TiB`, `1KB`, `500MB`, `1GB`, `4096` or `512B`.
//!   Partitions start at 1 MiB, sizes round up to whole MiB, the last MiB holds the backup GPT;
//!   a disk's size is a whole number of 512-byte sectors (so `500MB` is a partition size only).
//!   At most 128 partitions.
//! - `grub-efi` needs an `esp` partition, `grub-bios` a `bios-boot` one, `hybrid` both; `raw`
//!   and `qcow2` outputs need a `disk`.
//! - A buildable image needs a `base` (its own or inherited, never both) and an `output`.
//!
//! Every problem is reported with a stable code (`spec::unknown-node`, `spec::bad-size`, …):
//! see [`SpecError`] for the list.

pub mod model;

mod disk;
mod error;
mod image;
mod read;
mod resolve;
mod scan;
mod source;
mod values;

#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use error::{FirstDeclared, SpecError, SpecErrors};
pub use source::read_bounded;

/// Reads the spec files at `paths` and the files they import, and checks everything.
///
/// Every problem in every file is reported, not just the first. Paths in messages are shown
/// as given (and imports relative to the importing file's shown folder); paths in the model
/// are absolute.
pub fn load(paths: &[PathBuf]) -> Result<model::Spec, SpecErrors> {
    let mut problems = read::Problems::default();
    let files = source::load_files(paths, &mut problems);
    let decls = image::read_decls(&files, &mut problems);
    let images = resolve::resolve(&files, &decls, &mut problems);
    if problems.len() > 0 {
        return Err(SpecErrors::new(problems.into_sorted()));
    }
    let sources = files
        .iter()
        .map(|f| model::SpecSource {
            name: f
                .info
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            blake3: blake3::hash(f.info.src.inner().as_bytes())
                .to_hex()
                .to_string(),
            path: f.info.path.clone(),
            imports: f.imports.clone(),
        })
        .collect();
    Ok(model::Spec { images, sources })
}

/// Parses a size: a whole number of bytes, optionally with a unit: `B`, `KiB`, `MiB`, `GiB`,
/// `TiB` (powers of 1024) or `KB`, `MB`, `GB` (powers of 1000). Zero is refused. The error
/// says why, as a message fragment: ``unit `gib` is written `GiB` ``.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let (number, unit) = split_number(text);
    if number.is_empty() {
        return Err(if text.is_empty() {
            "the size is empty".to_string()
        } else {
            "a size starts with a number".to_string()
        });
    }
    let Some((multiplier, _)) = unit_of(unit) else {
        return Err(unit_problem(number, unit));
    };
    let bytes = number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(|| "too large".to_string())?;
    if bytes == 0 {
        return Err("a size must be greater than zero".to_string());
    }
    Ok(bytes)
}

const BINARY_UNITS: &[(&str, u64)] = &[
    ("TiB", 1 << 40),
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
];
const DECIMAL_UNITS: &[(&str, u64)] = &[("GB", 1_000_000_000), ("MB", 1_000_000), ("KB", 1_000)];

/// The leading digits of `text`, and the rest.
fn split_number(text: &str) -> (&str, &str) {
    text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    )
}

/// A unit's multiplier, with the family of units it belongs to.
fn unit_of(unit: &str) -> Option<(u64, &'static [(&'static str, u64)])> {
    if unit.is_empty() || unit == "B" {
        return Some((1, BINARY_UNITS));
    }
    [BINARY_UNITS, DECIMAL_UNITS]
        .into_iter()
        .find_map(|family| {
            let (_, multiplier) = family.iter().find(|(name, _)| *name == unit)?;
            Some((*multiplier, family))
        })
}

/// Why `unit` (after the number `number`) is not a unit.
fn unit_problem(number: &str, unit: &str) -> String {
    if let Some(fraction) = unit.strip_prefix('.') {
        let (digits, unit) = split_number(fraction);
        let exact = unit_of(unit).and_then(|(multiplier, family)| {
            let scale = 10u64.checked_pow(u32::try_from(digits.len()).ok()?)?;
            let whole = number.parse::<u64>().ok()?.checked_mul(multiplier)?;
            let part = digits.parse::<u64>().ok()?.checked_mul(multiplier)?;
            let exact = whole.checked_add(part / scale)?;
            (part % scale == 0).then(|| format_size_in(exact, family))
        });
        return match exact {
            Some(exact) => format!("fractions are not allowed: write `{exact}`"),
            None => "fractions are not allowed: use a smaller unit".to_string(),
        };
    }
    let all = BINARY_UNITS.iter().chain(DECIMAL_UNITS).chain(&[("B", 1)]);
    match all
        .clone()
        .find(|(name, _)| name.eq_ignore_ascii_case(unit.trim()))
    {
        Some((name, _)) if unit.starts_with(char::is_whitespace) => {
            format!("no space between the number and the unit: `{number}{name}`")
        }
        Some((name, _)) => format!("unit `{unit}` is written `{name}`"),
        None => format!("unknown unit `{unit}`"),
    }
}

/// `bytes` in the largest of `units` that shows it exactly (`1536MiB`), else in bytes.
fn format_size_in(bytes: u64, units: &[(&str, u64)]) -> String {
    units
        .iter()
        .find(|(_, unit)| bytes >= *unit && bytes % unit == 0)
        .map_or_else(
            || format!("{bytes}B"),
            |(name, unit)| format!("{}{name}", bytes / unit),
        )
}

/// `bytes` in binary units, for messages: `2GiB`, `2050MiB`, `4097B`.
pub(crate) fn format_size(bytes: u64) -> String {
    format_size_in(bytes, BINARY_UNITS)
}

/// Renders a diagnostic as text without colours, `width` columns wide: what tests snapshot and
/// what the CLI prints when colours are off.
pub fn render(diagnostic: &dyn miette::Diagnostic, width: usize) -> String {
    let mut out = String::new();
    miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
        .with_width(width)
        .render_report(&mut out, diagnostic)
        .expect("writing to a String does not fail");
    out
}
