//! Phase two, second half: names and `extends` across all files, then each image flattened
//! (its ancestors' layers first) and checked as a whole.
//!
//! Declarations see their own file and the files it imports, transitively. A declaration
//! whose `extends` cannot be followed (unknown name, cycle) is reported once and left out of
//! the whole-image checks, so one mistake does not cascade. A check that involves several
//! nodes is made where the last of them is declared: a parent's mistake is reported once, on
//! the parent, not again on every image that extends it.

use std::collections::HashMap;

use miette::SourceSpan;

use super::error::{backticked, closest, FirstDeclared, SpecError};
use super::image::{Decl, DeclId, Own, BOOTLOADERS};
use super::model::{
    Base, Bootloader, BootloaderKind, Disk, Image, Layer, OutputFormat, PartitionType,
    DEFAULT_EPOCH,
};
use super::read::{FileId, Problems, Spanned};
use super::source::SourceFile;
use super::values::relative_path;

/// The buildable images, flattened, in declaration order (only meaningful when no problem was
/// reported).
pub(crate) fn resolve(files: &[SourceFile], decls: &[Decl], problems: &mut Problems) -> Vec<Image> {
    let mut r = Resolver {
        files,
        decls,
        problems,
    };
    let by_name = r.names();
    let parents = r.parents(&by_name);
    let chains = r.chains(&parents);
    let mut images = Vec::new();
    for (id, chain) in chains.iter().enumerate() {
        let Some(chain) = chain else { continue };
        // The chain is the declaration then its ancestors: fold from the oldest.
        let inherited = chain[1..]
            .iter()
            .rev()
            .fold(Flat::default(), |flat, &a| flat.with(a, &decls[a]));
        r.check_inheritance(id, &inherited);
        let flat = inherited.with(id, &decls[id]);
        r.check_consistency(id, &flat);
        if decls[id].buildable {
            r.check_buildable(id, &flat);
            images.push(flat.into_image(&files[decls[id].file], &decls[id]));
        }
    }
    images
}

/// An image with everything it inherits: each node with the declaration it comes from.
#[derive(Default)]
struct Flat<'d> {
    epoch: Option<i64>,
    base: Option<(DeclId, &'d Own<Base>)>,
    layers: Vec<Layer>,
    /// The declarations that gave layers after the base.
    layer_owners: Vec<DeclId>,
    bootloader: Option<(DeclId, &'d Own<Bootloader>)>,
    disk: Option<(DeclId, &'d Own<Disk>)>,
    outputs: Option<(DeclId, &'d Own<Vec<Spanned<OutputFormat>>>)>,
}

impl<'d> Flat<'d> {
    /// `self` extended by `decl`: its layers after the inherited ones, its single nodes
    /// replacing the inherited ones.
    fn with(mut self, id: DeclId, decl: &'d Decl) -> Self {
        if let Some(epoch) = decl.epoch.as_ref().and_then(|e| e.value) {
            self.epoch = Some(epoch);
        }
        if let Some(base) = &decl.base {
            self.layers.extend(base.value.clone().map(Layer::Base));
            self.base.get_or_insert((id, base));
        }
        if !decl.layers.is_empty() {
            self.layer_owners.push(id);
        }
        self.layers.extend(decl.layers.iter().cloned());
        self.bootloader = owned(id, &decl.bootloader).or(self.bootloader);
        self.disk = owned(id, &decl.disk).or(self.disk);
        self.outputs = owned(id, &decl.outputs).or(self.outputs);
        self
    }

    fn into_image(self, file: &SourceFile, decl: &Decl) -> Image {
        fn value<T: Clone>(slot: Option<(DeclId, &Own<T>)>) -> Option<T> {
            slot.and_then(|(_, own)| own.value.clone())
        }
        Image {
            name: decl.name.value.clone(),
            file: file.info.path.clone(),
            epoch: self.epoch.unwrap_or(DEFAULT_EPOCH),
            epoch_given: self.epoch.is_some(),
            layers: self.layers,
            bootloader: value(self.bootloader),
            disk: value(self.disk),
            outputs: value(self.outputs)
                .map_or_else(Vec::new, |o| o.into_iter().map(|o| o.value).collect()),
        }
    }
}

/// A declaration's own node, with the declaration's id.
fn owned<T>(id: DeclId, slot: &Option<Own<T>>) -> Option<(DeclId, &Own<T>)> {
    slot.as_ref().map(|own| (id, own))
}

/// Where to point for a node of image `id`: at the node when the image declares it, else at
/// the image's name.
fn node_or_name<T>(slot: Option<(DeclId, &Own<T>)>, id: DeclId, name: SourceSpan) -> SourceSpan {
    match slot {
        Some((owner, own)) if owner == id => own.span,
        _ => name,
    }
}

struct Resolver<'a> {
    files: &'a [SourceFile],
    decls: &'a [Decl],
    problems: &'a mut Problems,
}

impl<'a> Resolver<'a> {
    fn report(&mut self, file: FileId, problem: SpecError) {
        self.problems.push(Some(file), problem);
    }

    fn src(&self, id: DeclId) -> super::error::Src {
        self.files[self.decls[id].file].info.src.clone()
    }

    /// Each name's first declaration; later ones are reported as duplicates.
    fn names(&mut self) -> HashMap<&'a str, DeclId> {
        let decls = self.decls;
        let mut by_name: HashMap<&'a str, DeclId> = HashMap::new();
        for (id, decl) in decls.iter().enumerate() {
            let Some(&first) = by_name.get(decl.name.value.as_str()) else {
                by_name.insert(&decl.name.value, id);
                continue;
            };
            let first_decl = &decls[first];
            let same_file = first_decl.file == decl.file;
            let elsewhere = (!same_file).then(|| FirstDeclared {
                src: self.src(first),
                span: first_decl.name.span,
                name: first_decl.name.value.clone(),
            });
            let problem = SpecError::DuplicateImage {
                src: self.src(id),
                first: same_file.then_some(first_decl.name.span),
                second: decl.name.span,
                name: decl.name.value.clone(),
                elsewhere: elsewhere.into_iter().collect(),
            };
            self.report(decl.file, problem);
        }
        by_name
    }

    /// Each declaration's parent: `Ok(None)` without `extends`, `Err` when it names nothing
    /// the declaration's file can see (reported).
    fn parents(&mut self, by_name: &HashMap<&str, DeclId>) -> Vec<Result<Option<DeclId>, ()>> {
        let visible = self.visible_files();
        (0..self.decls.len())
            .map(|id| self.parent(id, by_name, &visible))
            .collect()
    }

    fn parent(
        &mut self,
        id: DeclId,
        by_name: &HashMap<&str, DeclId>,
        visible: &[Vec<bool>],
    ) -> Result<Option<DeclId>, ()> {
        let decls = self.decls;
        let decl = &decls[id];
        let Some(extends) = &decl.extends else {
            return Ok(None);
        };
        let sees = |d: DeclId| visible[decl.file][decls[d].file];
        let found = by_name.get(extends.value.as_str()).copied();
        if let Some(parent) = found.filter(|&d| sees(d)) {
            return Ok(Some(parent));
        }
        let help = match found {
            Some(elsewhere) => {
                let there = &self.files[decls[elsewhere].file].info;
                let here = &self.files[decl.file].info;
                format!(
                    "`{}` is declared in `{}`, which this file does not import: add `import \"{}\"`",
                    extends.value,
                    there.src.name(),
                    relative_path(&here.dir, &there.path).display()
                )
            }
            None => {
                let known: Vec<&str> = (0..decls.len())
                    .filter(|&d| sees(d) && decls[d].name.value != decl.name.value)
                    .map(|d| decls[d].name.value.as_str())
                    .collect();
                let declare = format!(
                    "declare `{}` as an `image` or a `template`, or import the file that declares it",
                    extends.value
                );
                match closest(&extends.value, &known) {
                    Some(close) => format!("did you mean `{close}`?"),
                    None if known.is_empty() => declare,
                    None => format!("{declare} (known here: {})", backticked(&known)),
                }
            }
        };
        let problem = SpecError::UnknownImage {
            src: self.src(id),
            span: extends.span,
            name: extends.value.clone(),
            help,
        };
        self.report(decl.file, problem);
        Err(())
    }

    /// `visible[f][g]`: file `f` is `g` or imports it, directly or not.
    fn visible_files(&self) -> Vec<Vec<bool>> {
        let n = self.files.len();
        let mut visible = vec![vec![false; n]; n];
        for (start, row) in visible.iter_mut().enumerate() {
            let mut stack = vec![start];
            while let Some(f) = stack.pop() {
                if !std::mem::replace(&mut row[f], true) {
                    stack.extend(&self.files[f].imports);
                }
            }
        }
        visible
    }

    /// Each declaration with its ancestors, itself first; `None` when the chain is broken by
    /// an unknown name or a cycle (a cycle is reported once, on its first declaration).
    fn chains(&mut self, parents: &[Result<Option<DeclId>, ()>]) -> Vec<Option<Vec<DeclId>>> {
        (0..self.decls.len())
            .map(|id| {
                let mut chain = vec![id];
                loop {
                    let last = *chain.last().expect("never empty");
                    match parents[last] {
                        Err(()) => return None,
                        Ok(None) => return Some(chain),
                        Ok(Some(parent)) if parent == id => {
                            if chain.iter().all(|&d| d >= id) {
                                self.report_cycle(&chain);
                            }
                            return None;
                        }
                        // A cycle further up, reported from its own first declaration.
                        Ok(Some(parent)) if chain.contains(&parent) => return None,
                        Ok(Some(parent)) => chain.push(parent),
                    }
                }
            })
            .collect()
    }

    fn report_cycle(&mut self, cycle: &[DeclId]) {
        let mut names: Vec<String> = cycle
            .iter()
            .map(|&d| format!("`{}`", self.decls[d].name.value))
            .collect();
        names.push(names[0].clone());
        let id = cycle[0];
        let decl = &self.decls[id];
        let span = decl.extends.as_ref().map_or(decl.name.span, |e| e.span);
        let problem = SpecError::ExtendsCycle {
            src: self.src(id),
            span,
            chain: names.join(" → "),
        };
        self.report(decl.file, problem);
    }

    /// A declaration's own `base` against what it inherits.
    fn check_inheritance(&mut self, id: DeclId, inherited: &Flat<'_>) {
        let decl = &self.decls[id];
        let Some(base) = &decl.base else { return };
        let problem = if let Some((owner, _)) = inherited.base {
            SpecError::InheritedBase {
                src: self.src(id),
                span: base.span,
                name: decl.name.value.clone(),
                parent: self.decls[owner].name.value.clone(),
            }
        } else if let Some(&owner) = inherited.layer_owners.first() {
            let owner = &self.decls[owner].name.value;
            SpecError::BaseNotFirst {
                src: self.src(id),
                span: base.span,
                label: format!("comes after the layers inherited from `{owner}`"),
                help: format!("move this `base` into `{owner}`, above its layers: the root filesystem starts from it"),
            }
        } else {
            return;
        };
        self.report(decl.file, problem);
    }

    /// Bootloader against disk, when both are known and at least one is `id`'s own.
    fn check_consistency(&mut self, id: DeclId, flat: &Flat<'_>) {
        let (Some((boot_owner, boot)), Some((disk_owner, disk))) = (flat.bootloader, flat.disk)
        else {
            return;
        };
        let (Some(bootloader), Some(disk)) = (&boot.value, &disk.value) else {
            return;
        };
        let span = if boot_owner == id {
            boot.span
        } else if disk_owner == id {
            // The disk's own node; the bootloader is inherited.
            self.decls[id]
                .disk
                .as_ref()
                .map_or(self.decls[id].name.span, |d| d.span)
        } else {
            return;
        };
        let has = |t: PartitionType| disk.partitions.iter().any(|p| p.ptype == t);
        let missing = needed_partitions(bootloader.kind)
            .iter()
            .filter(|(t, _, _)| !has(*t))
            .collect::<Vec<_>>();
        if missing.is_empty() {
            return;
        }
        let names: Vec<&str> = missing.iter().map(|(_, name, _)| *name).collect();
        let lines: Vec<&str> = missing.iter().map(|(_, _, line)| *line).collect();
        let problem = SpecError::BootloaderPartition {
            src: self.src(id),
            span,
            message: format!(
                "bootloader `{}` needs {} on the disk",
                name_of(&BOOTLOADERS, bootloader.kind),
                names.join(" and ")
            ),
            label: if boot_owner == id {
                "needs a partition the disk lacks".to_string()
            } else {
                format!(
                    "lacks a partition for bootloader `{}`",
                    name_of(&BOOTLOADERS, bootloader.kind)
                )
            },
            help: format!("add `{}` to the `disk`", lines.join("` and `")),
        };
        self.report(self.decls[id].file, problem);
    }

    /// What an image needs to be built: a base, outputs, and a disk for what writes one.
    fn check_buildable(&mut self, id: DeclId, flat: &Flat<'_>) {
        let decl = &self.decls[id];
        let name = decl.name.value.clone();
        let mut found = Vec::new();
        if flat.base.is_none() {
            found.push(SpecError::MissingBase {
                src: self.src(id),
                span: decl.name.span,
                name: name.clone(),
            });
        }
        match flat.outputs {
            None => found.push(SpecError::MissingOutput {
                src: self.src(id),
                span: decl.name.span,
                name: name.clone(),
            }),
            Some((owner, outputs)) if flat.disk.is_none() => {
                let outputs = outputs.value.as_deref().unwrap_or_default();
                if let Some(output) = outputs.iter().find(|o| o.value != OutputFormat::Tar) {
                    found.push(SpecError::OutputNeedsDisk {
                        src: self.src(id),
                        span: if owner == id {
                            output.span
                        } else {
                            decl.name.span
                        },
                        name: name.clone(),
                        output: output.value.name().to_string(),
                    });
                }
            }
            Some(_) => {}
        }
        if let Some((owner, o)) = flat.outputs {
            let outs = o.value.as_deref().unwrap_or_default();
            let qcow2 = outs.iter().find(|o| {
                matches!(
                    o.value,
                    OutputFormat::Qcow2 { .. } | OutputFormat::Qcow2Zstd
                )
            });
            let partition = outs.iter().find(|o| o.value == OutputFormat::Partition);
            if let (Some(_), Some(p)) = (qcow2, partition) {
                found.push(SpecError::OutputClash {
                    src: self.src(id),
                    span: if owner == id { p.span } else { decl.name.span },
                    name: name.clone(),
                });
            }
        }
        // A partition image set and a bootloader both need a kernel in the image's /boot: with a
        // distribution base, one of the image's package sets must install one.
        let distro_base = matches!(
            flat.base.and_then(|(_, b)| b.value.as_ref()),
            Some(Base::Debian(_))
        );
        let has_kernel = flat.layers.iter().any(|l| {
            matches!(l, Layer::Packages(p) if p.packages.iter().any(|p| p.starts_with("linux-image-")))
        });
        if distro_base && !has_kernel {
            let partition = flat.outputs.and_then(|(owner, o)| {
                o.value
                    .as_deref()
                    .unwrap_or_default()
                    .iter()
                    .find(|o| o.value == OutputFormat::Partition)
                    .map(|o| (owner, o.span))
            });
            let needed_by = match (partition, flat.bootloader) {
                (Some((owner, span)), _) => Some((
                    "output `partition`",
                    if owner == id { span } else { decl.name.span },
                )),
                (None, Some((owner, b))) if b.value.is_some() => Some((
                    "the bootloader",
                    if owner == id { b.span } else { decl.name.span },
                )),
                _ => None,
            };
            if let Some((what, span)) = needed_by {
                found.push(SpecError::NoKernel {
                    src: self.src(id),
                    span,
                    name: name.clone(),
                    what: what.to_string(),
                });
            }
        }
        // The bootloaders imgspec makes for each architecture.
        if let (Some((_, base)), Some((_, boot))) = (flat.base, flat.bootloader) {
            if let (Some(Base::Debian(d)), Some(b)) = (&base.value, &boot.value) {
                let kind = name_of(&BOOTLOADERS, b.kind);
                let problem = match (d.architecture.as_str(), b.kind, b.secure_boot) {
                    ("amd64", _, _) | ("arm64", BootloaderKind::GrubEfi, false) => None,
                    ("arm64", BootloaderKind::GrubEfi, true) => Some((
                        "Secure Boot is built for `amd64` images only (shim and GRUB signed for \
                         x86-64)"
                            .to_string(),
                        "remove `secure-boot=#true`: the arm64 image boots through GRUB's \
                         `arm64-efi` image, unsigned",
                    )),
                    ("arm64", _, _) => Some((
                        format!(
                            "bootloader `{kind}` needs a PC BIOS, and arm64 machines boot UEFI only"
                        ),
                        "use `bootloader \"grub-efi\"` (GRUB's `arm64-efi` at \
                         EFI/BOOT/BOOTAA64.EFI), with an `esp` partition",
                    )),
                    (other, _, _) => Some((
                        format!(
                            "imgspec makes bootloaders for `amd64` and `arm64` images, not `{other}`"
                        ),
                        "remove the bootloader (and build `output \"tar\"`), or use \
                         `architecture=\"amd64\"` or `\"arm64\"`",
                    )),
                };
                if let Some((message, help)) = problem {
                    found.push(SpecError::BadValue {
                        src: self.src(id),
                        span: node_or_name(flat.bootloader, id, decl.name.span),
                        message: format!("image `{name}`: {message}"),
                        label: format!("for `{}` images", d.architecture),
                        help: help.to_string(),
                    });
                }
            }
        }
        if let (Some((_, boot)), None) = (flat.bootloader, flat.disk) {
            if let Some(bootloader) = &boot.value {
                let needed = needed_partitions(bootloader.kind);
                let names: Vec<&str> = needed.iter().map(|(_, n, _)| *n).collect();
                let lines: Vec<&str> = needed.iter().map(|(_, _, line)| *line).collect();
                found.push(SpecError::BootloaderPartition {
                    src: self.src(id),
                    span: node_or_name(flat.bootloader, id, decl.name.span),
                    message: format!(
                        "bootloader `{}` needs a disk with {}, but image `{name}` has no `disk`",
                        name_of(&BOOTLOADERS, bootloader.kind),
                        names.join(" and ")
                    ),
                    label: "no disk to boot from".to_string(),
                    help: format!(
                        "add `disk size=\"2GiB\" {{ … }}` with `{}` and a root partition, or remove the bootloader",
                        lines.join("` and `")
                    ),
                });
            }
        }
        for problem in found {
            self.report(decl.file, problem);
        }
    }
}

/// The partitions a bootloader needs: type, how messages name it, a line that declares one.
fn needed_partitions(
    kind: BootloaderKind,
) -> &'static [(PartitionType, &'static str, &'static str)] {
    const ESP: (PartitionType, &str, &str) = (
        PartitionType::Esp,
        "an `esp` partition",
        "partition \"esp\" type=\"esp\" size=\"200MiB\" format=\"vfat\" mount=\"/boot/efi\"",
    );
    const BIOS: (PartitionType, &str, &str) = (
        PartitionType::BiosBoot,
        "a `bios-boot` partition",
        "partition \"bios\" type=\"bios-boot\" size=\"1MiB\"",
    );
    match kind {
        BootloaderKind::GrubEfi => &[ESP],
        BootloaderKind::GrubBios => &[BIOS],
        BootloaderKind::Hybrid => &[BIOS, ESP],
    }
}

/// The name a spec gives `value` in `table` (one of the tables the reader parses names with).
fn name_of<T: Copy + PartialEq>(table: &[(&'static str, T)], value: T) -> &'static str {
    table
        .iter()
        .find(|(_, v)| std::mem::discriminant(v) == std::mem::discriminant(&value))
        .map_or("?", |(name, _)| name)
}
