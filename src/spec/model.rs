//! The typed, validated model of a spec: what `spec::load` returns once every check passed.
//!
//! Everything here is plain data. Paths are absolute (resolved against the folder of the file
//! that named them); sizes are in bytes; `extends` and `import` are already resolved, so an
//! image carries its whole, flattened list of layers.

use std::path::PathBuf;

/// All the images of the spec files given on the command line (and the files they import).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    /// Buildable images (not templates), in the order they were declared.
    pub images: Vec<Image>,
    /// Every spec file read (given or imported), in the order first read: for the build
    /// manifest.
    pub sources: Vec<SpecSource>,
}

/// A spec file as the build manifest names it: its file name (never the folder it sits in,
/// which differs between machines) and the BLAKE3 of its text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecSource {
    pub name: String,
    pub blake3: String,
    /// Canonical path: which images it declares ([`Image::file`]).
    pub path: PathBuf,
    /// The files it imports, as indexes into [`Spec::sources`].
    pub imports: Vec<usize>,
}

impl Spec {
    /// The spec files an image is made of: the file that declares it, then everything that
    /// file imports (depth first, each once). Other specs built alongside are not among them,
    /// so an image's manifest does not depend on what else was built with it.
    pub fn sources_of(&self, image: &Image) -> Vec<&SpecSource> {
        let mut seen = vec![false; self.sources.len()];
        let mut order = Vec::new();
        let mut stack: Vec<usize> = self
            .sources
            .iter()
            .position(|s| s.path == image.file)
            .into_iter()
            .collect();
        while let Some(i) = stack.pop() {
            if std::mem::replace(&mut seen[i], true) {
                continue;
            }
            order.push(&self.sources[i]);
            stack.extend(self.sources[i].imports.iter().rev());
        }
        order
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    pub name: String,
    /// The spec file that declared the image.
    pub file: PathBuf,
    /// SOURCE_DATE_EPOCH for every step of the image: the spec's `epoch`, else [`DEFAULT_EPOCH`].
    pub epoch: i64,
    /// True when the spec gave `epoch`; otherwise a lock file's epoch replaces the default.
    pub epoch_given: bool,
    /// The root filesystem, layer by layer, base first. Never empty: validation requires a base.
    pub layers: Vec<Layer>,
    pub bootloader: Option<Bootloader>,
    pub disk: Option<Disk>,
    /// At least one; validation requires it for a buildable image.
    pub outputs: Vec<OutputFormat>,
}

/// 2023-06-10 (bookworm's release day): the epoch of an image that does not give one.
pub const DEFAULT_EPOCH: i64 = 1_686_355_200;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Layer {
    Base(Base),
    Packages(Packages),
    Files(Files),
    Run(Run),
    User(User),
    Element(Element),
}

/// `user "ops" groups="sudo adm" ssh-key="ssh-ed25519 ..." [password-hash="$6$..."] [sudo=#true]
/// [shell="/bin/bash"]`: an account created inside the image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
    /// Authorized SSH keys (the `ssh-key` property may be given several times, or as children
    /// `ssh-key "..."`).
    pub ssh_keys: Vec<String>,
    /// crypt(3) hash; None: the password is locked.
    pub password_hash: Option<String>,
    /// Passwordless sudo through /etc/sudoers.d.
    pub sudo: bool,
    pub shell: String,
}

/// `element "NAME" [param=value ...]`: a built-in, parameterised customisation (the
/// diskimage-builder element of the same name), with its parameters read and checked. The
/// elements, their parameters and what they do are in [`crate::element`].
pub type Element = crate::element::Configured;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Base {
    /// `base "tar" path="rootfs.tar"`: a root filesystem tarball (optionally .gz/.zst/.xz? no:
    /// plain or zstd, by extension `.tar` / `.tar.zst`).
    Tar { path: PathBuf },
    /// `base "debian" suite="bookworm" variant="minbase" [mirror=URL] [components="main contrib"]
    /// [keyring=PATH] [architecture="amd64"] [include="pkg pkg"]`.
    Debian(Debian),
    /// `base "image" path="vm.qcow2"|url="https://…" sha256="…" [root="/dev/..."]
    /// [keep="logs ..."]`: the root filesystem of an existing disk.
    Image(DiskImage),
}

/// The generalisations of an imported disk's tree (`steps::image_base`), by the name `keep=`
/// uses, with what each does (the README lists the same).
pub const CLEANINGS: &[(&str, &str)] = &[
    (
        "machine-id",
        "empties /etc/machine-id (systemd makes a new one at first boot), removes D-Bus's copy",
    ),
    (
        "ssh-host-keys",
        "removes /etc/ssh/ssh_host_*; a unit makes new ones at first boot",
    ),
    ("logs", "removes the files under /var/log (folders stay)"),
    (
        "net-rules",
        "removes udev's persistent-net rules, which pin the old machine's MAC addresses",
    ),
    (
        "dhcp-leases",
        "removes the DHCP leases of dhclient, dhcpcd, NetworkManager and systemd-networkd",
    ),
    (
        "cloud-init",
        "removes cloud-init's instance state, so it runs again on each new machine",
    ),
    (
        "shell-history",
        "removes shell, Python and less histories of root and every user",
    ),
    ("tmp", "empties /tmp and /var/tmp"),
    (
        "package-caches",
        "removes downloaded packages and metadata caches of apt, dnf and yum",
    ),
    ("hostname", "sets /etc/hostname to `localhost`"),
];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskImage {
    pub source: DiskSource,
    /// The root device of the system to take, when the disk holds several.
    pub root: Option<String>,
    /// Generalisations not to do (names of [`CLEANINGS`]), sorted.
    pub keep: Vec<String>,
}

/// Where an imported disk comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiskSource {
    /// `path=`: a disk file on this machine.
    Path(PathBuf),
    /// `url=` and `sha256=`: a published disk image (a distribution's cloud image), downloaded
    /// once into the cache and checked.
    Url { url: String, sha256: String },
}

impl DiskSource {
    /// The disk's file name, for the step's label.
    pub fn file_name(&self) -> String {
        match self {
            DiskSource::Path(p) => p
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
            DiskSource::Url { url, .. } => url
                .split(['?', '#'])
                .next()
                .and_then(|u| u.rsplit('/').next())
                .unwrap_or_default()
                .to_string(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Debian {
    /// `debian` or `ubuntu`: which distribution's conventions (default keyring, components).
    pub distro: String,
    pub suite: String,
    /// mmdebstrap variant: `minbase`, `essential`, `apt`, `required`, `important`, `standard`.
    pub variant: String,
    /// None: the host's apt sources decide.
    pub mirror: Option<String>,
    pub components: Vec<String>,
    pub architecture: String,
    pub keyring: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packages {
    /// The set's name, `packages "system" ...`.
    pub name: String,
    /// Sorted, deduplicated.
    pub packages: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Files {
    /// Absolute path of the source folder (exists, is a directory, inside the spec's folder).
    pub source: PathBuf,
    /// As written in the spec, for messages: `overlay/`.
    pub source_text: String,
    /// Where in the image the folder's content lands: `dest="/"` by default; absolute, normalised.
    pub dest: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Run {
    /// Run by `/bin/sh -c` inside the image root.
    pub command: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootloaderKind {
    GrubEfi,
    GrubBios,
    Hybrid,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bootloader {
    pub kind: BootloaderKind,
    /// Kernel command line: the spec's `cmdline`, else [`DEFAULT_CMDLINE`].
    pub cmdline: String,
    /// `secure-boot=#true` (`grub-efi`, `hybrid`): the EFI side boots through the
    /// distribution's signed shim and GRUB to its signed kernel.
    pub secure_boot: bool,
}

/// The kernel command line of a bootloader that does not give one: the first VGA console and
/// the first serial port, so that an image boots visibly both on a screen and under QEMU.
pub const DEFAULT_CMDLINE: &str = "console=tty0 console=ttyS0,115200";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableKind {
    Gpt,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disk {
    pub table: TableKind,
    /// Whole-disk size in bytes.
    pub size: u64,
    /// In order; at most one partition has `size: None` (it takes the rest).
    pub partitions: Vec<Partition>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PartitionType {
    /// EFI system partition.
    Esp,
    /// Root filesystem (x86-64 root type of the Discoverable Partitions Specification).
    Root,
    /// BIOS boot partition for GRUB's core image.
    BiosBoot,
    /// Generic Linux data.
    Linux,
    Swap,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsFormat {
    Ext4,
    Vfat,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    pub name: String,
    pub ptype: PartitionType,
    /// In bytes, rounded up to a whole MiB; None: the rest of the disk (rounded down to a
    /// whole MiB, the last MiB of the disk being left for the backup GPT).
    pub size: Option<u64>,
    pub format: Option<FsFormat>,
    /// Absolute mount point in the image (`/`, `/boot/efi`), when it has a filesystem.
    pub mount: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum OutputFormat {
    /// The root filesystem as a deterministic tarball, `NAME.tar`.
    Tar,
    /// The whole disk, `NAME.raw`.
    Raw,
    /// The whole disk, `NAME.qcow2`; zlib-compressed clusters with `compress=#true` (smaller,
    /// slower to write and to read).
    Qcow2 { compressed: bool },
    /// The whole disk, `NAME.qcow2` with zstd-compressed clusters (`compress="zstd"`): smaller
    /// than raw, far faster to write than zlib; QEMU 5.1 or newer reads it.
    Qcow2Zstd,
    /// Ironic's partition image set: `NAME.qcow2` holding only the root filesystem (no
    /// partition table), `NAME.vmlinuz` and `NAME.initrd` from the image's `/boot`.
    Partition,
    /// The whole disk as a VMware sparse disk, `NAME.vmdk` (monolithicSparse).
    Vmdk,
    /// The whole disk as a VirtualBox disk, `NAME.vdi` (dynamic).
    Vdi,
    /// The whole disk as a Hyper-V disk, `NAME.vhdx` (dynamic).
    Vhdx,
    /// The whole disk as a Virtual PC / Hyper-V / Azure disk, `NAME.vhd` (dynamic).
    Vhd,
}

impl OutputFormat {
    /// The name a spec writes (`output "vmdk"`).
    pub fn name(self) -> &'static str {
        match self {
            OutputFormat::Tar => "tar",
            OutputFormat::Raw => "raw",
            OutputFormat::Qcow2 { .. } | OutputFormat::Qcow2Zstd => "qcow2",
            OutputFormat::Partition => "partition",
            OutputFormat::Vmdk => "vmdk",
            OutputFormat::Vdi => "vdi",
            OutputFormat::Vhdx => "vhdx",
            OutputFormat::Vhd => "vhd",
        }
    }

    /// The extension of the file it writes (`NAME.vmdk`).
    pub fn extension(self) -> &'static str {
        match self {
            OutputFormat::Partition => "qcow2",
            other => other.name(),
        }
    }

    /// Whether it is the whole disk (partition table and all), made from the disk step.
    pub fn whole_disk(self) -> bool {
        !matches!(self, OutputFormat::Tar | OutputFormat::Partition)
    }
}
