//! The plan: a spec's images as one DAG of keyed steps.
//!
//! Each image becomes a chain of tree layers (base, packages, files, run, ...) followed by the
//! steps that turn the last tree into output files. A step's key is BLAKE3 over the encoding in
//! [`key`]: the format version, the step kind and its version, the image epoch, the keys of its
//! inputs, then the kind's own parts (see each module of [`crate::steps`]). Steps of different
//! images with the same key are one step: variants share every layer they have in common.
//!
//! Planning is pure: facts about the host (tool versions, file digests) come through
//! [`Facts`](crate::steps::Facts).

use std::collections::HashMap;

use imgspec_cache::StepKey;

use crate::distro::{self, Family};
use crate::key::{KeyBuilder, KeyPart};
use crate::lockfile::{self, Lock};
use crate::spec::model::{
    Base, BootloaderKind, Disk, FsFormat, Image, Layer, OutputFormat, PartitionType, Spec,
};
use crate::steps::{self, Action, FactError, Facts};

/// Index of a step in [`Plan::steps`].
pub type StepId = usize;

#[derive(Debug)]
pub struct Step {
    pub id: StepId,
    pub key: StepKey,
    /// The readable parts of the key, stored after a build to explain the next miss.
    pub parts: Vec<KeyPart>,
    pub action: Action,
    /// For people: `packages system`, `run "systemctl enable ssh"`.
    pub label: String,
    pub inputs: Vec<StepId>,
    /// Images that use this step, with the step's stable name in each (`run#2`).
    pub uses: Vec<(String, String)>,
    pub epoch: i64,
}

impl Step {
    pub fn kind(&self) -> &'static str {
        self.action.kind()
    }

    /// The step's stable name in `image` (`run#2`); its kind if the image does not use it.
    pub fn name_in(&self, image: &str) -> String {
        self.uses
            .iter()
            .find(|(i, _)| i == image)
            .map_or_else(|| self.kind().to_string(), |(_, n)| n.clone())
    }
}

#[derive(Debug)]
pub struct ImagePlan {
    pub name: String,
    /// Every step of the image, inputs before the steps that use them.
    pub steps: Vec<StepId>,
    /// The output steps: each produces files that go to `out/NAME/`.
    pub outputs: Vec<StepId>,
}

#[derive(Debug, Default)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub images: Vec<ImagePlan>,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("image `{image}`: {what} cannot be built yet")]
    Unsupported { image: String, what: String },
    #[error("the lock file does not fit step `{step}` of image `{image}`: {why}")]
    Lock {
        image: String,
        step: String,
        why: String,
    },
    #[error("image `{image}`: {why}")]
    Foreign { image: String, why: String },
    #[error("image `{image}`: the disk cannot be laid out: {why}")]
    Disk { image: String, why: String },
    #[error("cannot plan step `{step}` of image `{image}`")]
    Fact {
        image: String,
        step: String,
        #[source]
        source: FactError,
    },
}

impl Plan {
    pub fn image(&self, name: &str) -> Option<&ImagePlan> {
        self.images.iter().find(|i| i.name == name)
    }
}

/// Plans every image of the spec.
pub fn plan(spec: &Spec, facts: &dyn Facts) -> Result<Plan, PlanError> {
    plan_locked(spec, facts, None)
}

/// Plans every image of the spec; with a lock, every step that installs packages is pinned to
/// its set of the lock (and its key hashes that set's digest).
pub fn plan_locked(spec: &Spec, facts: &dyn Facts, lock: Option<&Lock>) -> Result<Plan, PlanError> {
    // An image the lock pins and whose spec gives no epoch takes the lock's (the archive's
    // date when its packages were resolved).
    let with_lock_epoch;
    let spec = match lock {
        Some(l) if spec.images.iter().any(|i| l.epoch_of(&i.name).is_some()) => {
            let mut s = spec.clone();
            for i in s.images.iter_mut() {
                if let (false, Some(epoch)) = (i.epoch_given, l.epoch_of(&i.name)) {
                    i.epoch = epoch;
                }
            }
            with_lock_epoch = s;
            &with_lock_epoch
        }
        _ => spec,
    };
    let mut b = Builder {
        plan: Plan::default(),
        by_key: HashMap::new(),
        lock,
    };
    for image in &spec.images {
        b.image(image, spec, facts)?;
    }
    Ok(b.plan)
}

struct Builder<'l> {
    plan: Plan,
    by_key: HashMap<StepKey, StepId>,
    lock: Option<&'l Lock>,
}

/// One step being added to an image.
struct Add<'a> {
    image: &'a Image,
    name: String,
    label: String,
    action: Action,
    inputs: Vec<StepId>,
}

impl Builder<'_> {
    fn image(&mut self, image: &Image, spec: &Spec, facts: &dyn Facts) -> Result<(), PlanError> {
        if let Some(what) = unsupported(image) {
            return Err(PlanError::Unsupported {
                image: image.name.clone(),
                what,
            });
        }
        let mut steps = Vec::new();
        let mut counts: HashMap<&str, usize> = HashMap::new();
        let mut tree: Option<StepId> = None;
        for layer in &with_boot_packages(image) {
            let (name, label, mut action) =
                layer_step(layer, distro::family_of(image), &mut counts);
            // No distribution bootstrap: the tree's own package manager, chosen at run time.
            if let Action::Packages(p) = &mut action {
                p.from_tree = !matches!(image.layers.first(), Some(Layer::Base(Base::Debian(_))));
            }
            // Images of specs without a lock (built together with locked ones) stay unlocked.
            if let Some(lock) = self.lock.filter(|l| l.has_image(&image.name)) {
                pin(&mut action, lock, image, &name)?;
            }
            let id = self.add(
                Add {
                    image,
                    name,
                    label,
                    action,
                    inputs: tree.into_iter().collect(),
                },
                facts,
            )?;
            steps.push(id);
            tree = Some(id);
        }
        let mut outputs = Vec::new();
        let mut tree = tree.expect("validation guarantees a base layer");
        let mut disk_step = None;
        let mut root_fs = None;
        if let Some(disk) = &image.disk {
            let d = DiskPlan::new(image, disk)?;
            // The bootloader step when it also makes GRUB's BIOS images for the disk step.
            let mut bios_loader = None;
            if let Some(b) = &image.bootloader {
                let action = Action::Bootloader(steps::bootloader::BootloaderStep {
                    kind: b.kind,
                    secure_boot: b.secure_boot,
                    arch: steps::bootloader::EfiArch::of(architecture(image)),
                    cmdline: b.cmdline.clone(),
                    root_uuid: d.root_uuid(),
                    mounts: d.mounts(),
                });
                tree = self.add(
                    Add {
                        image,
                        name: "bootloader".into(),
                        label: format!(
                            "bootloader {}{}",
                            steps::bootloader::kind_name(b.kind),
                            if b.secure_boot { " secure-boot" } else { "" }
                        ),
                        action,
                        inputs: vec![tree],
                    },
                    facts,
                )?;
                steps.push(tree);
                if matches!(b.kind, BootloaderKind::GrubBios | BootloaderKind::Hybrid) {
                    bios_loader = Some(tree);
                }
            } else {
                // No bootloader (a partition image set): the image still mounts its
                // filesystems by UUID.
                tree = self.add(
                    Add {
                        image,
                        name: "fstab".into(),
                        label: "fstab".into(),
                        action: Action::Fstab(steps::fstab::FstabStep { mounts: d.mounts() }),
                        inputs: vec![tree],
                    },
                    facts,
                )?;
                steps.push(tree);
            }
            let mut fs_inputs = Vec::new();
            let mut contents = Vec::new();
            // A partition image set needs the root filesystem, not the disk.
            let whole_disk = image.outputs.iter().any(|o| o.whole_disk());
            let partition_image = image.outputs.contains(&OutputFormat::Partition);
            // The largest ext4 filesystem is made in place in a disk-sized file, which the disk
            // step takes as the disk: its bytes are written once (not for a partition image
            // set, which converts the filesystem alone).
            let placed = (whole_disk && !partition_image)
                .then(|| {
                    (0..disk.partitions.len())
                        .filter(|&i| disk.partitions[i].format == Some(FsFormat::Ext4))
                        .max_by_key(|&i| (d.layout.partitions[i].size_bytes, usize::MAX - i))
                })
                .flatten();
            for (i, part) in disk.partitions.iter().enumerate() {
                let Some(mut fs) = d.filesystem(i) else {
                    contents.push(None);
                    continue;
                };
                if placed == Some(i) {
                    fs.place = Some(crate::format::ext4::Place {
                        offset: d.layout.partitions[i].offset_bytes,
                        file_len: d.layout.disk_size,
                    });
                }
                let id = self.add(
                    Add {
                        image,
                        name: format!("filesystem:{}", part.name),
                        label: format!(
                            "filesystem {} {}",
                            part.name,
                            steps::filesystem::format_name(fs.format)
                        ),
                        action: Action::Filesystem(fs),
                        inputs: vec![tree],
                    },
                    facts,
                )?;
                steps.push(id);
                contents.push(Some(fs_inputs.len()));
                fs_inputs.push(id);
                if part.mount.as_deref() == Some("/") {
                    root_fs = Some(id);
                }
            }
            // BIOS boot: the bootloader step's core.img and boot.img, as the disk's last input.
            let bios = bios_loader.filter(|_| whole_disk).map(|id| {
                let partition = disk
                    .partitions
                    .iter()
                    .position(|p| matches!(p.ptype, PartitionType::BiosBoot))
                    .expect("validation: grub-bios and hybrid need a bios-boot partition");
                fs_inputs.push(id);
                steps::disk::BiosBoot {
                    partition,
                    input: fs_inputs.len() - 1,
                }
            });
            let action = Action::Disk(steps::disk::DiskStep {
                layout: d.layout.clone(),
                disk_guid: d.guid("disk"),
                contents,
                bios,
            });
            if whole_disk {
                let id = self.add(
                    Add {
                        image,
                        name: "disk".into(),
                        label: format!("disk gpt {}", human_size(disk.size)),
                        action,
                        inputs: fs_inputs,
                    },
                    facts,
                )?;
                steps.push(id);
                disk_step = Some(id);
            }
        }
        for &format in &image.outputs {
            let fname = steps::output::format_name(format);
            let action = Action::Output(steps::output::OutputStep {
                format,
                file_name: format!("{}.{}", image.name, format.extension()),
            });
            let id = self.add(
                Add {
                    image,
                    name: format!("output:{fname}"),
                    label: format!("output {fname}"),
                    action,
                    inputs: match format {
                        OutputFormat::Tar => vec![tree],
                        OutputFormat::Partition => vec![
                            root_fs.expect("validation: a disk has a root filesystem"),
                            tree,
                        ],
                        _ => vec![disk_step.expect("validation: disk outputs need a disk")],
                    },
                },
                facts,
            )?;
            steps.push(id);
            outputs.push(id);
        }
        let mut seen = std::collections::HashSet::new();
        steps.retain(|id| seen.insert(*id));
        // The SBOM and the build manifest, written beside the outputs.
        let sbom = self.add(
            Add {
                image,
                name: "sbom".into(),
                label: "sbom".into(),
                action: Action::Sbom(steps::sbom::SbomStep {
                    image: image.name.clone(),
                    file_name: format!("{}.spdx.json", image.name),
                    deb_sha256: self
                        .lock
                        .map(|l| l.deb_sha256(&image.name))
                        .unwrap_or_default(),
                }),
                inputs: std::iter::once(tree)
                    .chain(outputs.iter().copied())
                    .collect(),
            },
            facts,
        )?;
        steps.push(sbom);
        let names = |b: &Self, id: StepId| {
            let s = &b.plan.steps[id];
            (
                s.name_in(&image.name),
                s.kind().to_string(),
                s.label.clone(),
            )
        };
        let mut tools = std::collections::BTreeMap::new();
        for &id in &steps {
            for p in self.plan.steps[id]
                .parts
                .iter()
                .filter(|p| p.class == "tool")
            {
                tools.insert(p.name.clone(), p.value.clone());
            }
        }
        let manifest = self.add(
            Add {
                image,
                name: "manifest".into(),
                label: "manifest".into(),
                action: Action::Manifest(steps::manifest::ManifestStep {
                    image: image.name.clone(),
                    file_name: format!("{}.manifest.json", image.name),
                    spec: spec
                        .sources_of(image)
                        .into_iter()
                        .map(|s| (s.name.clone(), s.blake3.clone()))
                        .collect(),
                    lock: self.lock.and_then(|l| l.origin(&image.name)),
                    steps: steps.iter().map(|&id| names(self, id)).collect(),
                    tools,
                }),
                inputs: steps.clone(),
            },
            facts,
        )?;
        steps.push(manifest);
        outputs.push(sbom);
        outputs.push(manifest);
        self.plan.images.push(ImagePlan {
            name: image.name.clone(),
            steps,
            outputs,
        });
        Ok(())
    }

    fn add(&mut self, a: Add, facts: &dyn Facts) -> Result<StepId, PlanError> {
        let mut k = KeyBuilder::new(a.action.kind(), a.action.version());
        k.param("epoch", &a.image.epoch.to_string());
        for &i in &a.inputs {
            let input = &self.plan.steps[i];
            k.input(&input.name_in(&a.image.name), &input.key);
        }
        a.action
            .hash(&mut k, facts)
            .map_err(|source| PlanError::Fact {
                image: a.image.name.clone(),
                step: a.label.clone(),
                source,
            })?;
        // A foreign image's programs run under the emulator: its version is part of the key
        // of every step that runs them (a native image's keys do not have it).
        if a.action.runs_image_programs() {
            let emulator = crate::foreign::emulator(architecture(a.image)).map_err(|why| {
                PlanError::Foreign {
                    image: a.image.name.clone(),
                    why,
                }
            })?;
            if let Some(e) = emulator {
                let v = facts
                    .tool_version(&e.tool)
                    .map_err(|source| PlanError::Fact {
                        image: a.image.name.clone(),
                        step: a.label.clone(),
                        source: source.into(),
                    })?;
                k.tool(e.tool.program, &v);
            }
        }
        let (key, parts) = k.finish();
        let use_ = (a.image.name.clone(), a.name);
        if let Some(&id) = self.by_key.get(&key) {
            let s = &mut self.plan.steps[id];
            if !s.uses.contains(&use_) {
                s.uses.push(use_);
            }
            return Ok(id);
        }
        let id = self.plan.steps.len();
        self.plan.steps.push(Step {
            id,
            key,
            parts,
            action: a.action,
            label: a.label,
            inputs: a.inputs,
            uses: vec![use_],
            epoch: a.image.epoch,
        });
        self.by_key.insert(key, id);
        Ok(id)
    }
}

/// The step of one tree layer: its stable name in the image, its label and its action.
fn layer_step(
    layer: &Layer,
    family: &'static dyn Family,
    counts: &mut HashMap<&'static str, usize>,
) -> (String, String, Action) {
    let mut nth = |kind: &'static str| {
        let n = counts.entry(kind).or_insert(0);
        *n += 1;
        format!("{kind}#{n}")
    };
    match layer {
        Layer::Base(Base::Tar { path }) => (
            "base".into(),
            format!(
                "base tar {}",
                path.file_name().unwrap_or_default().to_string_lossy()
            ),
            Action::BaseTar(steps::base_tar::TarBase { path: path.clone() }),
        ),
        Layer::Base(Base::Image(i)) => (
            "base".into(),
            format!("base image {}", i.source.file_name()),
            Action::ImageBase(steps::image_base::ImageBase {
                source: i.source.clone(),
                root: i.root.clone(),
                keep: i.keep.iter().cloned().collect(),
            }),
        ),
        Layer::Base(Base::Debian(d)) => (
            "base".into(),
            format!("base {} {} {}", d.distro, d.suite, d.variant),
            Action::Bootstrap(steps::bootstrap::Bootstrap {
                family: distro::family_of_base(d),
                spec: d.clone(),
                locked: None,
            }),
        ),
        Layer::Files(f) => (
            nth("files"),
            format!("files {}", f.source_text),
            Action::Files(steps::files::FilesStep {
                source: f.source.clone(),
                dest: f.dest.clone(),
            }),
        ),
        Layer::Run(r) => (
            nth("run"),
            format!("run {}", short(&r.command)),
            Action::Run(steps::run::RunStep {
                command: r.command.clone(),
            }),
        ),
        Layer::Packages(p) => (
            format!("packages:{}", p.name),
            format!("packages {}", p.name),
            Action::Packages(steps::packages::PackagesStep {
                name: p.name.clone(),
                packages: p.packages.clone(),
                locked: None,
                family,
                from_tree: false,
            }),
        ),
        Layer::User(u) => {
            let step = steps::user::UserStep { user: u.clone() };
            (format!("user:{}", u.name), step.label(), Action::User(step))
        }
        Layer::Element(e) => {
            let step = steps::element::ElementStep { element: e.clone() };
            (
                format!("element:{}", nth(e.name())),
                step.label(),
                Action::Element(step),
            )
        }
    }
}

/// Pins a package-installing step to its set of the lock. A lock without the set, or whose set
/// was made for another request (the spec changed since `imgspec lock`), is refused.
fn pin(action: &mut Action, lock: &Lock, image: &Image, name: &str) -> Result<(), PlanError> {
    let (request, slot) = match action {
        Action::Bootstrap(b) => (lockfile::base_request(&b.spec), &mut b.locked),
        Action::Packages(p) => (lockfile::packages_request(&p.packages), &mut p.locked),
        _ => return Ok(()),
    };
    let err = |why: String| PlanError::Lock {
        image: image.name.clone(),
        step: name.to_string(),
        why,
    };
    let set = lock
        .set_for(&image.name, name)
        .ok_or_else(|| err("the lock has no set for it".into()))?;
    if set.request != request {
        return Err(err(format!(
            "it was locked for `{}`, the spec now asks for `{request}`",
            set.request
        )));
    }
    *slot = Some(distro::Locked::of(set));
    Ok(())
}

/// The image's Debian architecture: its `base "debian"`'s, else the host's (a tarball base is
/// whatever it holds, and runs natively).
pub fn architecture(image: &Image) -> &str {
    image
        .layers
        .iter()
        .find_map(|l| match l {
            Layer::Base(Base::Debian(d)) => Some(d.architecture.as_str()),
            _ => None,
        })
        .unwrap_or_else(|| crate::foreign::host_arch())
}

/// What the spec language accepts but the builder cannot build yet: refused before any work.
fn unsupported(_image: &Image) -> Option<String> {
    // Every bootloader kind is built now (`grub-bios` and `hybrid` through
    // `format::biosboot`); nothing is refused here at the moment.
    None
}

/// A command shortened for one line of output.
fn short(s: &str) -> String {
    let line = s.lines().next().unwrap_or("");
    let mut out: String = line.chars().take(40).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    format!("`{out}`")
}

/// The image's layers, with the packages that other layers need added to a package set before
/// them: GRUB's when the image has a bootloader, each element's
/// ([`crate::element::Element::packages`]: `cloud-init`, `cloud-guest-utils`, `tzdata`, …) and each
/// user's ([`steps::user::packages`]: `passwd`, `sudo`). They join the image's first package
/// set when it comes before every layer that needs them; otherwise they get a set of their own
/// right after the base (named `bootloader` when only the bootloader needs it, else
/// `implied`). Either way apt installs them once, with the rest, and variants that differ only
/// in later layers share that layer.
fn with_boot_packages(image: &Image) -> Vec<Layer> {
    let mut layers = image.layers.clone();
    let mut wanted: Vec<&str> = Vec::new();
    let mut first_user = None;
    for (i, l) in layers.iter().enumerate() {
        let p = match l {
            Layer::Element(e) => e.element().packages(),
            Layer::User(u) => steps::user::packages(u),
            _ => continue,
        };
        if !p.is_empty() {
            first_user.get_or_insert(i);
            wanted.extend(p);
        }
    }
    let layers_want = !wanted.is_empty();
    // The packages the bootloader step needs, as the image's family names them.
    if let Some(b) = &image.bootloader {
        let family = distro::family_of(image);
        wanted.extend(family.boot_packages(b.kind, architecture(image)));
        if b.secure_boot {
            layers.push(Layer::Packages(crate::spec::model::Packages {
                name: "secure-boot".into(),
                packages: family
                    .secure_boot_packages()
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
            }));
        }
    }
    if wanted.is_empty() {
        return layers;
    }
    let add = |p: &mut crate::spec::model::Packages| {
        p.packages.extend(wanted.iter().map(|s| s.to_string()));
        p.packages.sort();
        p.packages.dedup();
    };
    let first_set = layers
        .iter()
        .position(|l| matches!(l, Layer::Packages(_)))
        .filter(|&i| first_user.is_none_or(|u| i < u));
    match first_set.map(|i| &mut layers[i]) {
        Some(Layer::Packages(p)) => add(p),
        _ => {
            let mut p = crate::spec::model::Packages {
                name: if layers_want { "implied" } else { "bootloader" }.into(),
                packages: vec![],
            };
            add(&mut p);
            layers.insert(1, Layer::Packages(p));
        }
    }
    layers
}

/// Identifiers and placement of an image's disk, all derived from one seed so that the same
/// spec always gives the same UUIDs and GUIDs (the seed is a BLAKE3 key derivation over the
/// image name and the disk's parameters; GUIDs are derived from it per name, as systemd-repart
/// does from its seed).
struct DiskPlan<'a> {
    disk: &'a Disk,
    seed: [u8; 32],
    layout: crate::layout::Layout,
}

impl<'a> DiskPlan<'a> {
    fn new(image: &Image, disk: &'a Disk) -> Result<Self, PlanError> {
        let mut material = format!("{}\0{}", image.name, disk.size);
        for p in &disk.partitions {
            material.push_str(&format!("\0{}:{:?}:{:?}", p.name, p.ptype, p.size));
        }
        let seed = blake3::derive_key("imgspec disk seed v1", material.as_bytes());
        let specs: Vec<crate::layout::PartitionSpec> = disk
            .partitions
            .iter()
            .map(|p| crate::layout::PartitionSpec {
                name: p.name.clone(),
                type_guid: type_guid(p.ptype, architecture(image)),
                size: p.size,
                guid: crate::ids::derive_guid(&seed, &format!("partition:{}", p.name)),
                attributes: 0,
            })
            .collect();
        // The spec's checks make this hold; a gap between them and the GPT writer's rules is
        // an error, not a panic.
        let layout = crate::layout::layout(disk.size, &specs).map_err(|e| PlanError::Disk {
            image: image.name.clone(),
            why: e.to_string(),
        })?;
        Ok(DiskPlan { disk, seed, layout })
    }

    fn guid(&self, label: &str) -> crate::ids::Guid {
        crate::ids::derive_guid(&self.seed, label)
    }

    fn root_uuid(&self) -> String {
        self.disk
            .partitions
            .iter()
            .position(|p| p.mount.as_deref() == Some("/"))
            .and_then(|i| self.filesystem(i))
            .map(|f| f.uuid.to_string())
            .unwrap_or_default()
    }

    fn filesystem(&self, i: usize) -> Option<steps::filesystem::FilesystemStep> {
        let p = &self.disk.partitions[i];
        let format = p.format?;
        let mount = p.mount.clone().unwrap_or_else(|| format!("/{}", p.name));
        let under = |m: &str| {
            let base = mount.trim_end_matches('/');
            m != mount && m.starts_with(&format!("{base}/"))
        };
        let excludes = self
            .disk
            .partitions
            .iter()
            .filter_map(|q| q.mount.clone())
            .filter(|m| under(m))
            .collect();
        let label = match format {
            FsFormat::Ext4 => p.name.chars().take(16).collect(),
            FsFormat::Vfat => p.name.to_uppercase().chars().take(11).collect(),
        };
        Some(steps::filesystem::FilesystemStep {
            format,
            size: self.layout.partitions[i].size_bytes,
            mount,
            excludes,
            uuid: self.guid(&format!("filesystem:{}", p.name)),
            hash_seed: self.guid(&format!("hash-seed:{}", p.name)),
            volume_id: crate::ids::derive_u32(&self.seed, &format!("volume-id:{}", p.name)),
            label,
            place: None,
        })
    }

    /// `/etc/fstab` entries: every mounted filesystem by UUID.
    fn mounts(&self) -> Vec<steps::mounts::Mount> {
        (0..self.disk.partitions.len())
            .filter_map(|i| {
                let fs = self.filesystem(i)?;
                self.disk.partitions[i].mount.as_ref()?;
                let root = fs.mount == "/";
                Some(match fs.format {
                    FsFormat::Ext4 => steps::mounts::Mount {
                        source: format!("UUID={}", fs.uuid),
                        target: fs.mount.clone(),
                        fstype: "ext4".into(),
                        options: if root {
                            "errors=remount-ro"
                        } else {
                            "defaults"
                        }
                        .into(),
                        pass: if root { 1 } else { 2 },
                    },
                    FsFormat::Vfat => steps::mounts::Mount {
                        source: format!("UUID={}", steps::filesystem::vfat_uuid(fs.volume_id)),
                        target: fs.mount.clone(),
                        fstype: "vfat".into(),
                        options: "umask=0077".into(),
                        pass: 2,
                    },
                })
            })
            .collect()
    }
}

/// The GPT type of a partition; a root partition's names the image's architecture.
fn type_guid(t: PartitionType, arch: &str) -> crate::ids::Guid {
    match t {
        PartitionType::Esp => crate::ids::ESP,
        PartitionType::Root if arch == "arm64" => crate::ids::ROOT_ARM64,
        PartitionType::Root => crate::ids::ROOT_X86_64,
        PartitionType::BiosBoot => crate::ids::BIOS_BOOT,
        PartitionType::Linux => crate::ids::LINUX_DATA,
        PartitionType::Swap => crate::ids::SWAP,
    }
}

fn human_size(n: u64) -> String {
    const MIB: u64 = 1 << 20;
    if n % (1 << 30) == 0 {
        format!("{}GiB", n >> 30)
    } else {
        format!("{}MiB", n.div_ceil(MIB))
    }
}

#[cfg(test)]
mod element_keys;
#[cfg(test)]
mod tests;
