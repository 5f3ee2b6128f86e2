//! `base "image" path=DISK`: the root filesystem of an existing disk (a VM installed by hand,
//! a distribution's cloud image) as the first layer of an image, read without mounting
//! anything on the host.
//!
//! The disk is checked first with `qemu-img info` (which reads headers only and never opens a
//! backing file): only raw, qcow2, vmdk (one self-contained file), vdi, vhdx and vpc are taken,
//! and a qcow2 with a backing file or an external data file, or any image naming another file,
//! is refused (the hole Ironic's format inspector closes). libguestfs then reads it in its own
//! small VM, read-only: it finds the operating system (`inspect-os`; `root=` chooses when
//! there are several), mounts its filesystems as the guest's own `/etc/fstab` says (LVM, xfs,
//! btrfs, vfat, separate `/boot`…) and streams the tree out as a tar with owners, modes,
//! xattrs (SELinux labels included), hard links, symlinks and device nodes, which the store
//! imports as any tree. The appliance runs under TCG unless the host's environment says
//! otherwise (`LIBGUESTFS_BACKEND`, `LIBGUESTFS_BACKEND_SETTINGS`).
//!
//! The tree is then generalised the way `virt-sysprep` would for an image many machines boot
//! ([`CLEANINGS`], each skipped when named in `keep=`).
//!
//! Key: the disk's content digest (remembered by path, size, mtime and inode, so a 20 GB disk
//! is hashed once per change), `root`, the cleanings kept, and libguestfs' version.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use imgspec_cache::{EntryKind, StepOutput};

use super::tree::Tree;
use super::{FactError, Facts, StepContext, StepError};
use crate::key::KeyBuilder;
use crate::runner::Cmd;
use crate::spec::model::DiskSource;
pub use crate::spec::model::CLEANINGS;
use crate::tools::{Tool, GUESTFISH, QEMU_IMG};

pub const VERSION: u32 = 1;
pub const TOOLS: &[Tool] = &[GUESTFISH, QEMU_IMG];

/// The disk formats taken, as `qemu-img info` names them.
const FORMATS: &[&str] = &["raw", "qcow2", "vmdk", "vdi", "vhdx", "vpc"];

/// The cache's folder of disk images downloaded for `base "image" url=`, by SHA-256
/// (`<sha256>.img`), layout version 1.
pub const IMAGES_DIR: &str = "images-v1";

#[derive(Clone, Debug)]
pub struct ImageBase {
    pub source: DiskSource,
    /// The device of the root filesystem to take when the disk holds several systems.
    pub root: Option<String>,
    /// Names of [`CLEANINGS`] not to do.
    pub keep: BTreeSet<String>,
}

impl ImageBase {
    pub fn hash(&self, k: &mut KeyBuilder, facts: &dyn Facts) -> Result<(), FactError> {
        match &self.source {
            DiskSource::Path(path) => {
                let d = super::file_digest(facts, path)?;
                k.file("disk", &d);
            }
            // The content, not where it is published: a moved URL rebuilds nothing.
            DiskSource::Url { sha256, .. } => {
                k.param("disk-sha256", sha256);
            }
        }
        k.param("root", self.root.as_deref().unwrap_or(""));
        k.param(
            "keep",
            &self.keep.iter().cloned().collect::<Vec<_>>().join(" "),
        );
        for t in TOOLS {
            k.tool(t.program, &facts.tool_version(t)?);
        }
        Ok(())
    }

    pub fn run(&self, ctx: &StepContext) -> Result<StepOutput, StepError> {
        let disk = match &self.source {
            DiskSource::Path(path) => path.clone(),
            DiskSource::Url { url, sha256 } => download(ctx, url, sha256)?,
        };
        let format = check_disk(ctx, &disk)?;
        let tar = ctx.work.join("root.tar");
        {
            let fish = Guestfish::start(ctx, &disk, &format)?;
            fish.call(&["run"])?;
            let root = fish.choose_root(self.root.as_deref(), &disk)?;
            let mut mounts = fish.mountpoints(&root)?;
            // Parents before children: `/` before `/boot` before `/boot/efi`.
            mounts.sort_by_key(|(mp, _)| (mp.matches('/').count(), mp.len()));
            for (mp, dev) in &mounts {
                // The guest's fstab may name what the disk lacks (a network mount, a second
                // disk): the root must mount, the others may not. A failed command stops a
                // `--listen` guestfish, unless it is prefixed with `-`.
                if mp == "/" {
                    fish.call(&["mount-ro", dev, mp])?;
                } else {
                    fish.call(&["-mount-ro", dev, mp])?;
                }
            }
            let mounted = fish.call(&["mountpoints"])?;
            for (mp, dev) in &mounts {
                if !mounted
                    .lines()
                    .any(|l| l.trim_end().ends_with(&format!(": {mp}")))
                {
                    ctx.note(&format!(
                        "{dev} ({mp} in the guest's fstab) did not mount: left out"
                    ));
                }
            }
            let out = tar.to_string_lossy().into_owned();
            fish.call(&[
                "tar-out",
                "/",
                &out,
                "numericowner:true",
                "xattrs:true",
                "selinux:true",
                "acls:true",
            ])?;
        }
        let f = std::fs::File::open(&tar).map_err(StepError::io(&tar))?;
        let mut reader = std::io::BufReader::new(f);
        let m = ctx.store.import_tar(&mut reader, &ctx.import_options())?;
        let _ = std::fs::remove_file(&tar);
        let mut tree = Tree::new(m);
        generalise(&mut tree, ctx, &self.keep)?;
        ctx.tree_output(&tree.into_manifest())
    }
}

/// The disk of `url` in the cache (`images-v1/<sha256>.img`), downloaded and checked when it is
/// not there yet.
fn download(ctx: &StepContext, url: &str, sha256: &str) -> Result<PathBuf, StepError> {
    let dest = ctx
        .store
        .root()
        .join(IMAGES_DIR)
        .join(format!("{sha256}.img"));
    if dest.is_file() {
        return Ok(dest);
    }
    ctx.note(&format!("downloading {url}"));
    crate::fetch::fetch_large(url, sha256, &dest, &|_| {})
        .map_err(|e| StepError::Invalid(crate::exec::error_lines(&e)))?;
    Ok(dest)
}

/// Removes the downloaded disks of `images-v1/` whose SHA-256 is not in `keep` (and what an
/// interrupted download left there). Returns how many files went and their bytes.
pub fn gc_images(cache_root: &Path, keep: &BTreeSet<String>) -> (usize, u64) {
    let (mut n, mut bytes) = (0, 0);
    let Ok(files) = std::fs::read_dir(cache_root.join(IMAGES_DIR)) else {
        return (0, 0);
    };
    for f in files.flatten() {
        let name = f.file_name().to_string_lossy().into_owned();
        if name
            .strip_suffix(".img")
            .is_some_and(|sha| keep.contains(sha))
        {
            continue;
        }
        let size = f.metadata().map(|m| m.len()).unwrap_or(0);
        if f.file_type().is_ok_and(|t| t.is_file()) && std::fs::remove_file(f.path()).is_ok() {
            n += 1;
            bytes += size;
        }
    }
    (n, bytes)
}

/// The format of the disk at `path`, after refusing what must not be read: a file that names
/// another (backing file, external data file, a vmdk of several extents) or a format not in
/// [`FORMATS`].
fn check_disk(ctx: &StepContext, path: &Path) -> Result<String, StepError> {
    let bad =
        |why: String| StepError::Invalid(format!("`{}` cannot be imported: {why}", path.display()));
    // Before qemu-img opens it: some headers make qemu-img itself open other files.
    let mut head = vec![0u8; 4096];
    let n = {
        use std::io::Read;
        let mut f = std::fs::File::open(path).map_err(StepError::io(path))?;
        let mut n = 0;
        while n < head.len() {
            match f.read(&mut head[n..]).map_err(StepError::io(path))? {
                0 => break,
                k => n += k,
            }
        }
        n
    };
    if let Some(why) = header_problem(&head[..n]) {
        return Err(bad(why));
    }
    let out = ctx
        .runner
        .output(
            &Cmd::new(QEMU_IMG.program)
                .args(["info", "--output=json", "-U"])
                .arg(path),
            &ctx.log,
        )
        .map_err(|e| {
            bad(format!(
                "`qemu-img info` cannot read it ({})",
                crate::exec::error_lines(&e).replace('\n', " ")
            ))
        })?;
    let info: serde_json::Value = serde_json::from_slice(&out)
        .map_err(|e| bad(format!("`qemu-img info` said something unreadable: {e}")))?;
    info_problem(&info).map_or_else(
        || Ok(info["format"].as_str().unwrap_or_default().to_string()),
        |why| Err(bad(why)),
    )
}

/// Why a disk whose first bytes are `head` must not even be shown to `qemu-img`: a qcow2 with a
/// backing file or an external data file, a vmdk descriptor (text naming extent files), a
/// sparse vmdk of capacity 0 (whose embedded descriptor names them). The checks of Ironic's
/// format inspector, on the header alone.
pub fn header_problem(head: &[u8]) -> Option<String> {
    let be64 = |at: usize| {
        head.get(at..at + 8)
            .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
    };
    let convert = "make a self-contained copy first: `qemu-img convert -O qcow2 DISK copy.qcow2`";
    if head.starts_with(b"QFI\xfb") {
        if be64(8).is_some_and(|o| o != 0) {
            return Some(format!(
                "it has a backing file, which imgspec never follows; {convert}"
            ));
        }
        let version = head
            .get(4..8)
            .map_or(0, |b| u32::from_be_bytes(b.try_into().expect("4 bytes")));
        // Incompatible feature bit 2: the guest data is in an external file.
        if version >= 3 && be64(72).is_some_and(|f| f & 0b100 != 0) {
            return Some(format!(
                "its data is in another file, which imgspec never follows; {convert}"
            ));
        }
    }
    if head.starts_with(b"KDMV") {
        let capacity = head
            .get(12..20)
            .map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
        if capacity == 0 {
            return Some(format!(
                "it is a vmdk whose own descriptor names its extent files; {convert}"
            ));
        }
    }
    // A sparse vmdk carries its descriptor (of itself) after the header: only a file that is
    // the text is a descriptor.
    let text = String::from_utf8_lossy(&head[..head.len().min(1024)]);
    if !head.starts_with(b"KDMV")
        && (text.starts_with("# Disk DescriptorFile") || text.contains("\ncreateType="))
    {
        return Some(format!(
            "it is a vmdk descriptor, which names other files; {convert}"
        ));
    }
    None
}

/// Why a disk whose `qemu-img info --output=json` is `info` must not be imported, if it must
/// not.
pub fn info_problem(info: &serde_json::Value) -> Option<String> {
    let format = info["format"].as_str().unwrap_or_default();
    if !FORMATS.contains(&format) {
        return Some(format!(
            "it is a `{format}` image; the formats taken are {}",
            FORMATS.join(", ")
        ));
    }
    if let Some(backing) = info.get("backing-filename").and_then(|b| b.as_str()) {
        return Some(format!(
            "it has a backing file (`{backing}`), which imgspec never follows; make a \
             self-contained copy first: `qemu-img convert -O qcow2 DISK copy.qcow2`"
        ));
    }
    let specific = &info["format-specific"]["data"];
    if let Some(data) = specific.get("data-file").and_then(|d| d.as_str()) {
        return Some(format!(
            "its data is in another file (`{data}`), which imgspec never follows; make a \
             self-contained copy first: `qemu-img convert -O qcow2 DISK copy.qcow2`"
        ));
    }
    if format == "vmdk" {
        let extents = specific["extents"].as_array().map_or(0, Vec::len);
        let create = specific["create-type"].as_str().unwrap_or_default();
        if extents > 1 || !matches!(create, "monolithicSparse" | "streamOptimized") {
            return Some(format!(
                "it is a vmdk of type `{create}` with {extents} extent file(s); only a \
                 self-contained vmdk (monolithicSparse or streamOptimized) is read: convert it \
                 with `qemu-img convert -O qcow2 DISK copy.qcow2`"
            ));
        }
    }
    None
}

/// A guestfish process listening for commands (`guestfish --listen`), on one disk,
/// read-only; it exits when dropped.
struct Guestfish<'a> {
    ctx: &'a StepContext<'a>,
    pid: String,
}

impl<'a> Guestfish<'a> {
    fn start(ctx: &'a StepContext<'a>, disk: &Path, format: &str) -> Result<Self, StepError> {
        let cmd = guestfs_env(Cmd::new(GUESTFISH.program))
            .args(["--listen", "--ro"])
            .arg(format!("--format={format}"))
            .arg("-a")
            .arg(disk);
        let out = ctx.runner.output(&cmd, &ctx.log)?;
        let text = String::from_utf8_lossy(&out);
        let pid = text
            .split(|c: char| c == ';' || c.is_whitespace())
            .find_map(|w| w.strip_prefix("GUESTFISH_PID="))
            .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| {
                StepError::Invalid(format!("guestfish --listen said no process id: {text}"))
            })?
            .to_string();
        Ok(Guestfish { ctx, pid })
    }

    /// One command; its standard output.
    fn call(&self, args: &[&str]) -> Result<String, StepError> {
        let cmd = guestfs_env(Cmd::new(GUESTFISH.program))
            .arg(format!("--remote={}", self.pid))
            .arg("--")
            .args(args);
        let out = self.ctx.runner.output(&cmd, &self.ctx.log)?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// The root filesystem of the one operating system on the disk, or of the one `wanted`
    /// names; else why not, in words a person can act on.
    fn choose_root(&self, wanted: Option<&str>, disk: &Path) -> Result<String, StepError> {
        let roots: Vec<String> = self
            .call(&["inspect-os"])?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        let describe = |root: &str| -> String {
            let product = self
                .call(&["-inspect-get-product-name", root])
                .unwrap_or_default();
            format!("`{root}` ({})", product.trim())
        };
        match (roots.as_slice(), wanted) {
            ([], _) => {
                let filesystems = self.call(&["-list-filesystems"]).unwrap_or_default();
                // `list-filesystems` leaves out what it cannot mount, LUKS among them: each
                // device and partition is asked for its type.
                let encrypted = filesystems.lines().any(|l| l.contains("crypto_LUKS"))
                    || ["-list-devices", "-list-partitions"]
                        .iter()
                        .flat_map(|c| {
                            self.call(&[c])
                                .unwrap_or_default()
                                .lines()
                                .map(str::to_string)
                                .collect::<Vec<_>>()
                        })
                        .any(|dev| {
                            self.call(&["-vfs-type", dev.trim()])
                                .is_ok_and(|t| t.trim() == "crypto_LUKS")
                        });
                Err(StepError::Invalid(if encrypted {
                    format!(
                        "`{}` has an encrypted (LUKS) volume and no operating system outside \
                         it: imgspec does not open encrypted volumes; import a copy of the \
                         disk without encryption",
                        disk.display()
                    )
                } else {
                    format!(
                        "no operating system found on `{}` (filesystems: {}): is it the disk \
                         of an installed system, and whole?",
                        disk.display(),
                        filesystems.lines().collect::<Vec<_>>().join(", ")
                    )
                }))
            }
            (_, Some(w)) => roots.iter().find(|r| *r == w).cloned().ok_or_else(|| {
                StepError::Invalid(format!(
                    "`root=\"{w}\"` is not an operating system's root on `{}`; it has {}",
                    disk.display(),
                    roots
                        .iter()
                        .map(|r| describe(r))
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            }),
            ([one], None) => Ok(one.clone()),
            (many, None) => Err(StepError::Invalid(format!(
                "`{}` holds {} operating systems: {}; choose one with `root=\"DEVICE\"` on \
                 `base \"image\"`",
                disk.display(),
                many.len(),
                many.iter()
                    .map(|r| describe(r))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// (mount point, device) of the guest's filesystems, as its `/etc/fstab` says.
    fn mountpoints(&self, root: &str) -> Result<Vec<(String, String)>, StepError> {
        let text = self.call(&["inspect-get-mountpoints", root])?;
        Ok(text
            .lines()
            .filter_map(|l| l.split_once(": "))
            .map(|(mp, dev)| (mp.trim().to_string(), dev.trim().to_string()))
            .filter(|(mp, _)| mp.starts_with('/'))
            .collect())
    }
}

impl Drop for Guestfish<'_> {
    fn drop(&mut self) {
        if self.call(&["exit"]).is_err() {
            if let Ok(pid) = self.pid.parse::<i32>() {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe {
                    libc::kill(pid, libc::SIGTERM);
                }
            }
        }
    }
}

/// libguestfs' appliance without KVM unless the host's environment chooses (this kind of
/// machine has a `/dev/kvm` that QEMU hangs on).
fn guestfs_env(cmd: Cmd) -> Cmd {
    let mut cmd = cmd;
    for (k, default) in [
        ("LIBGUESTFS_BACKEND", "direct"),
        ("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg"),
    ] {
        let v = std::env::var_os(k).unwrap_or_else(|| default.into());
        cmd = cmd.env(k, v);
    }
    cmd
}

/// What `imgspec doctor` says of libguestfs on this host: problems (why, fix) that stop every
/// import, and notes. Starts the appliance once (`guestfish -a /dev/null run`: seconds with
/// KVM, about 20 s under TCG).
pub fn appliance_check() -> (Option<(String, String)>, Vec<String>) {
    let mut notes = Vec::new();
    let kernels: Vec<PathBuf> = std::fs::read_dir("/boot")
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
                        && std::fs::File::open(p).is_ok()
                })
                .collect()
        })
        .unwrap_or_default();
    if kernels.is_empty() {
        return (
            Some((
                "libguestfs has no kernel to boot its appliance: there is no readable /boot/vmlinuz-* on this host"
                    .into(),
                "apt-get install linux-image-amd64, then rm -rf /var/tmp/.guestfs-* (the appliance is made again)"
                    .into(),
            )),
            notes,
        );
    }
    if !Path::new("/usr/lib/x86_64-linux-gnu/guestfs/supermin.d/packages-xfs").exists() {
        notes.push(
            "libguestfs cannot read xfs here (Debian's libguestfs-xfs is not installed)".into(),
        );
    }
    let mut cmd = std::process::Command::new(GUESTFISH.program);
    for (k, v) in guestfs_env(Cmd::new(GUESTFISH.program)).env {
        cmd.env(k, v);
    }
    let out = cmd.args(["--ro", "-a", "/dev/null", "run"]).output();
    match out {
        Ok(o) if o.status.success() => {
            notes.push("libguestfs: the appliance starts".into());
            (None, notes)
        }
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr);
            let tail: Vec<&str> = err.lines().rev().take(3).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            (
                Some((
                    format!("libguestfs' appliance does not start: {}", tail.join(" / ")),
                    "run `libguestfs-test-tool` for the whole story; where KVM does not work, LIBGUESTFS_BACKEND=direct LIBGUESTFS_BACKEND_SETTINGS=force_tcg (the default here unless set)"
                        .into(),
                )),
                notes,
            )
        }
        Err(e) => (
            Some((
                format!("guestfish cannot start: {e}"),
                "apt-get install libguestfs-tools".into(),
            )),
            notes,
        ),
    }
}

/// Does every cleaning of [`CLEANINGS`] not named in `keep`.
pub fn generalise(
    tree: &mut Tree,
    ctx: &StepContext,
    keep: &BTreeSet<String>,
) -> Result<(), StepError> {
    let on = |name: &str| !keep.contains(name);
    let (store, epoch) = (ctx.store, ctx.epoch);
    if on("machine-id") {
        if tree.entries.contains_key("etc/machine-id") {
            tree.put_file(store, "etc/machine-id", b"", 0o444, epoch)?;
        }
        tree.remove("var/lib/dbus/machine-id");
    }
    if on("ssh-host-keys") {
        super::scrub::ssh_host_keys(tree, store, epoch)?;
    }
    if on("logs") {
        remove_files_below(tree, "var/log");
    }
    if on("net-rules") {
        for rule in [
            "etc/udev/rules.d/70-persistent-net.rules",
            "etc/udev/rules.d/75-persistent-net-generator.rules",
        ] {
            tree.remove(rule);
        }
    }
    if on("dhcp-leases") {
        for dir in ["var/lib/dhcp", "var/lib/dhclient", "var/lib/dhcpcd"] {
            tree.remove_children(dir, |_| true);
        }
        tree.remove_children("var/lib/NetworkManager", |n| {
            n.ends_with(".lease") || n.ends_with(".leases")
        });
        tree.remove_children("var/lib/systemd/network", |_| true);
    }
    if on("cloud-init") {
        for p in [
            "var/lib/cloud/instance",
            "var/lib/cloud/instances",
            "var/lib/cloud/data",
            "var/lib/cloud/sem",
        ] {
            tree.remove(p);
        }
    }
    if on("shell-history") {
        const HISTORIES: &[&str] = &[
            ".bash_history",
            ".zsh_history",
            ".history",
            ".sh_history",
            ".python_history",
            ".lesshst",
            ".viminfo",
        ];
        let homes: Vec<String> = std::iter::once("root".to_string())
            .chain(
                tree.entries
                    .iter()
                    .filter(|(p, e)| {
                        p.strip_prefix("home/").is_some_and(|r| !r.contains('/'))
                            && matches!(e.kind, EntryKind::Dir)
                    })
                    .map(|(p, _)| p.clone()),
            )
            .collect();
        for home in homes {
            tree.remove_children(&home, |n| HISTORIES.contains(&n));
        }
    }
    if on("tmp") {
        tree.remove_children("tmp", |_| true);
        tree.remove_children("var/tmp", |_| true);
    }
    if on("package-caches") {
        tree.remove_children("var/cache/apt/archives", |n| n.ends_with(".deb"));
        tree.remove_children("var/cache/apt", |n| n.ends_with(".bin"));
        tree.remove_children("var/cache/dnf", |_| true);
        tree.remove_children("var/cache/yum", |_| true);
    }
    if on("hostname") && tree.entries.contains_key("etc/hostname") {
        tree.put_file(store, "etc/hostname", b"localhost\n", 0o644, epoch)?;
    }
    Ok(())
}

/// Removes every entry below `dir` that is not a folder.
fn remove_files_below(tree: &mut Tree, dir: &str) {
    let prefix = format!("{dir}/");
    let files: Vec<String> = tree
        .entries
        .iter()
        .filter(|(p, e)| p.starts_with(&prefix) && !matches!(e.kind, EntryKind::Dir))
        .map(|(p, _)| p.clone())
        .collect();
    for p in files {
        tree.remove(&p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn what_qemu_img_info_says_decides_what_is_read() {
        let ok = json!({"format": "qcow2", "format-specific": {"type": "qcow2", "data": {}}});
        assert_eq!(info_problem(&ok), None);
        assert_eq!(info_problem(&json!({"format": "raw"})), None);
        let backing = json!({"format": "qcow2", "backing-filename": "/etc/shadow"});
        assert!(info_problem(&backing)
            .unwrap()
            .contains("backing file (`/etc/shadow`)"));
        let data = json!({"format": "qcow2",
            "format-specific": {"type": "qcow2", "data": {"data-file": "/dev/sda"}}});
        assert!(info_problem(&data)
            .unwrap()
            .contains("another file (`/dev/sda`)"));
        let iso = json!({"format": "iso"});
        assert!(info_problem(&iso).unwrap().contains("`iso` image"));
        let flat = json!({"format": "vmdk", "format-specific": {"type": "vmdk",
            "data": {"create-type": "monolithicFlat", "extents": [{}]}}});
        assert!(info_problem(&flat).unwrap().contains("monolithicFlat"));
        let sparse = json!({"format": "vmdk", "format-specific": {"type": "vmdk",
            "data": {"create-type": "monolithicSparse", "extents": [{}]}}});
        assert_eq!(info_problem(&sparse), None);
    }

    #[test]
    fn headers_that_name_other_files_are_refused_before_qemu_img() {
        let mut qcow2 = vec![0u8; 512];
        qcow2[..4].copy_from_slice(b"QFI\xfb");
        qcow2[7] = 3;
        assert_eq!(header_problem(&qcow2), None);
        let mut backed = qcow2.clone();
        backed[15] = 0x70;
        assert!(header_problem(&backed).unwrap().contains("backing file"));
        let mut external = qcow2.clone();
        external[79] = 0b100;
        assert!(header_problem(&external).unwrap().contains("another file"));
        let mut vmdk = vec![0u8; 512];
        vmdk[..4].copy_from_slice(b"KDMV");
        assert!(header_problem(&vmdk)
            .unwrap()
            .contains("names its extent files"));
        vmdk[13] = 1;
        assert_eq!(header_problem(&vmdk), None);
        // The descriptor a sparse vmdk embeds (of itself) is no problem.
        let mut embedded = vmdk.clone();
        embedded.extend_from_slice(b"# Disk DescriptorFile\ncreateType=\"monolithicSparse\"\n");
        assert_eq!(header_problem(&embedded), None);
        let desc = b"# Disk DescriptorFile\nversion=1\ncreateType=\"monolithicFlat\"\nRW 8 FLAT \"/etc/shadow\" 0\n";
        assert!(header_problem(desc).unwrap().contains("vmdk descriptor"));
        assert_eq!(header_problem(b"just some bytes"), None);
    }

    #[test]
    fn every_cleaning_has_a_distinct_name() {
        let names: BTreeSet<&str> = CLEANINGS.iter().map(|(n, _)| *n).collect();
        assert_eq!(names.len(), CLEANINGS.len());
    }
}
