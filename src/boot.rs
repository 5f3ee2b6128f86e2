//! `imgspec boot`: starts an image in QEMU on a throw-away overlay and watches its serial
//! console until a login prompt appears.
//!
//! KVM is used when it works and TCG (software emulation) otherwise: a VM that dies under KVM
//! before the guest printed anything (a `/dev/kvm` that opens but cannot run a guest does that)
//! is started again under TCG. UEFI boots with OVMF (a private copy of its variable
//! store), BIOS with QEMU's SeaBIOS (its serial console on, `graphics=off`). The VM is always
//! stopped: on success, on timeout, when the firmware says the disk has nothing it can boot, and
//! when this process unwinds.
//!
//! [`detect_firmware`] picks the firmware from the image's partition table (the first MiB, read
//! with `qemu-img dd` for formats other than raw): an EFI system partition means UEFI (a hybrid
//! disk too), a BIOS boot partition alone, or boot code in a plain MBR, SeaBIOS; a disk with
//! neither is refused before QEMU starts.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Firmware {
    Uefi,
    Bios,
}

/// The machine QEMU emulates: the image's architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// `qemu-system-x86_64 -machine q35`, OVMF or SeaBIOS.
    X86_64,
    /// `qemu-system-aarch64 -machine virt`, AAVMF (UEFI only).
    Aarch64,
}

impl Arch {
    pub fn program(self) -> &'static str {
        match self {
            Arch::X86_64 => "qemu-system-x86_64",
            Arch::Aarch64 => "qemu-system-aarch64",
        }
    }
    /// The Debian package of [`Arch::program`].
    pub fn package(self) -> &'static str {
        match self {
            Arch::X86_64 => "qemu-system-x86",
            Arch::Aarch64 => "qemu-system-arm",
        }
    }
    /// Whether this host can run it under KVM at all (its own architecture).
    fn native(self) -> bool {
        matches!(
            (self, std::env::consts::ARCH),
            (Arch::X86_64, "x86_64") | (Arch::Aarch64, "aarch64")
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    /// KVM if it works, else TCG.
    Auto,
    Kvm,
    Tcg,
}

#[derive(Clone, Debug)]
pub struct BootOptions {
    pub accel: Accel,
    pub arch: Arch,
    pub image: PathBuf,
    pub firmware: Firmware,
    pub timeout: Duration,
    /// Direct kernel boot (partition images): kernel, initrd and command line.
    pub kernel: Option<(PathBuf, PathBuf, String)>,
    pub memory_mib: u32,
    /// What marks success on the console.
    pub expect: String,
    /// UEFI with Secure Boot enforced: OVMF's `secboot` build (SMM, a secure flash) with
    /// Microsoft's keys enrolled in its variable store ([`OVMF_SECURE_BOOT`]).
    pub secure_boot: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("`{0}` does not exist")]
    NoImage(PathBuf),
    #[error("`{path}` is not a bootable image: {why}")]
    NotAnImage { path: PathBuf, why: String },
    #[error("UEFI firmware not found (looked for {0})")]
    NoFirmware(String),
    #[error("could not start `{program}`")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`qemu-img create` of the overlay failed: {0}")]
    Overlay(String),
    #[error("{firmware} found nothing to boot on the disk: `{line}`")]
    NothingToBoot {
        firmware: &'static str,
        line: String,
        tail: Vec<String>,
    },
    #[error("`{path}` has nothing a firmware can boot: {why}")]
    NotBootable { path: PathBuf, why: String },
    #[error("cannot read the partition table of `{path}`: {why}")]
    ReadTable { path: PathBuf, why: String },
    #[error("no `{expect}` on the console after {seconds}s")]
    Timeout {
        expect: String,
        seconds: u64,
        tail: Vec<String>,
    },
    #[error("QEMU exited before `{expect}` appeared ({status})")]
    Exited {
        expect: String,
        status: String,
        tail: Vec<String>,
    },
    #[error("I/O error on `{path}`")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl BootError {
    /// The last console lines, when the VM ran.
    pub fn console_tail(&self) -> &[String] {
        match self {
            BootError::Timeout { tail, .. }
            | BootError::Exited { tail, .. }
            | BootError::NothingToBoot { tail, .. } => tail,
            _ => &[],
        }
    }
}

/// Code and variable-store images of OVMF, as Debian and Ubuntu install them.
const OVMF: &[(&str, &str)] = &[
    (
        "/usr/share/OVMF/OVMF_CODE_4M.fd",
        "/usr/share/OVMF/OVMF_VARS_4M.fd",
    ),
    (
        "/usr/share/OVMF/OVMF_CODE.fd",
        "/usr/share/OVMF/OVMF_VARS.fd",
    ),
];

/// AAVMF, the arm64 build of the same firmware (Debian's `qemu-efi-aarch64`).
const AAVMF: &[(&str, &str)] = &[(
    "/usr/share/AAVMF/AAVMF_CODE.fd",
    "/usr/share/AAVMF/AAVMF_VARS.fd",
)];

/// OVMF with Secure Boot enforced, as Debian installs it: the `secboot` code (which needs SMM
/// and a secure flash) and a variable store with Microsoft's KEK and db enrolled (`ms`), so
/// only a loader signed by Microsoft's UEFI CA, such as a distribution's shim, starts.
pub const OVMF_SECURE_BOOT: &[(&str, &str)] = &[(
    "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd",
    "/usr/share/OVMF/OVMF_VARS_4M.ms.fd",
)];

/// Kills the VM when dropped.
struct Vm(Child);

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The QEMU command line (without the program name).
pub fn qemu_args(
    o: &BootOptions,
    kvm: bool,
    overlay: &Path,
    vars: Option<(&str, &Path)>,
) -> Vec<String> {
    let (accel, cpu) = if kvm { ("kvm", "host") } else { ("tcg", "max") };
    let (machine, cpu) = match o.arch {
        // graphics=off: SeaBIOS writes its messages (and "No bootable device.") to the serial
        // port. Secure Boot: OVMF's secboot build keeps its variables behind SMM, on a flash
        // only SMM may write.
        Arch::X86_64 if o.secure_boot => ("q35,smm=on,graphics=off", cpu),
        Arch::X86_64 => ("q35,graphics=off", cpu),
        // The virt board; its serial port is a PL011 (`ttyAMA0` in the guest). Under TCG,
        // pointer authentication with QEMU's own cheap algorithm instead of the architected
        // one (QEMU's advice: QARMA is slow to emulate).
        Arch::Aarch64 if !kvm => ("virt", "max,pauth-impdef=on"),
        Arch::Aarch64 => ("virt", cpu),
    };
    let mut a: Vec<String> = [
        "-accel", accel, "-machine", machine, "-cpu", cpu, "-smp", "2",
    ]
    .map(String::from)
    .to_vec();
    if o.secure_boot && o.arch == Arch::X86_64 {
        a.extend([
            "-global".into(),
            "driver=cfi.pflash01,property=secure,value=on".into(),
        ]);
    }
    a.extend(["-m".into(), o.memory_mib.to_string()]);
    a.extend(
        [
            "-display",
            "none",
            "-monitor",
            "none",
            "-serial",
            "stdio",
            "-no-reboot",
        ]
        .map(String::from),
    );
    a.extend(["-nic".into(), "user,model=virtio-net-pci".into()]);
    a.extend([
        "-drive".into(),
        format!("file={},if=virtio,format=qcow2", overlay.display()),
    ]);
    if let Some((code, vars)) = vars {
        a.extend([
            "-drive".into(),
            format!("if=pflash,format=raw,unit=0,readonly=on,file={code}"),
            "-drive".into(),
            format!("if=pflash,format=raw,unit=1,file={}", vars.display()),
        ]);
    }
    if let Some((k, i, append)) = &o.kernel {
        a.extend([
            "-kernel".into(),
            k.display().to_string(),
            "-initrd".into(),
            i.display().to_string(),
            "-append".into(),
            append.clone(),
        ]);
    }
    a
}

/// Whether `/dev/kvm` can be opened for use.
fn kvm_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// The format of `image` (`qcow2` or `raw`) once it is known to be something QEMU can boot:
/// what `qemu-img info` recognises, and for raw data a partition table (the MBR's boot signature,
/// which a GPT's protective MBR has too) or, for a direct kernel boot, an ext4 filesystem. A
/// text file or anything else is refused before QEMU starts and waits its whole timeout.
pub fn inspect(image: &Path, direct_kernel: bool) -> Result<&'static str, BootError> {
    let not = |why: String| BootError::NotAnImage {
        path: image.to_path_buf(),
        why,
    };
    let meta = std::fs::metadata(image).map_err(|_| BootError::NoImage(image.to_path_buf()))?;
    if !meta.is_file() {
        return Err(not("it is not a regular file".into()));
    }
    let out = Command::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(image)
        .output()
        .map_err(|source| BootError::Spawn {
            program: "qemu-img".into(),
            source,
        })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(not(format!("`qemu-img info` refuses it: {}", err.trim())));
    }
    let info: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| not(format!("`qemu-img info` said something unexpected: {e}")))?;
    match info["format"].as_str() {
        Some("qcow2") => return Ok("qcow2"),
        Some("vmdk") => return Ok("vmdk"),
        Some("vdi") => return Ok("vdi"),
        Some("vpc") => return Ok("vpc"),
        Some("vhdx") => return Ok("vhdx"),
        Some("raw") => {}
        Some(other) => {
            return Err(not(format!(
                "it is a `{other}` image; imgspec boots raw, qcow2, vmdk, vdi, vhd and vhdx"
            )))
        }
        None => return Err(not("`qemu-img info` names no format".into())),
    }
    let mut head = [0u8; 2048];
    let mut file = std::fs::File::open(image).map_err(|source| BootError::Io {
        path: image.to_path_buf(),
        source,
    })?;
    let mut n = 0;
    while n < head.len() {
        match file.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(read) => n += read,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(BootError::Io {
                    path: image.to_path_buf(),
                    source,
                })
            }
        }
    }
    let head = &head[..n];
    let mbr = head.get(510..512) == Some(&[0x55, 0xAA][..]);
    let ext4 = head.get(1080..1082) == Some(&[0x53, 0xEF][..]);
    match (direct_kernel, mbr, ext4) {
        (false, true, _) | (true, _, true) => Ok("raw"),
        (false, false, _) => Err(not(
            "raw data with no partition table (no boot signature in its first sector)".into(),
        )),
        (true, _, false) => Err(not(
            "raw data that is no ext4 root filesystem, which a direct kernel boot needs".into(),
        )),
    }
}

/// Boots and waits for `expect` on the console. `on_line` sees every console line.
pub fn boot(o: &BootOptions, on_line: &mut dyn FnMut(&str)) -> Result<Duration, BootError> {
    let format = inspect(&o.image, o.kernel.is_some())?;
    let try_kvm = match o.accel {
        Accel::Kvm => true,
        Accel::Tcg => false,
        Accel::Auto => o.arch.native() && kvm_usable(),
    };
    if try_kvm {
        let mut lines = 0usize;
        let r = boot_with(o, format, true, &mut |l| {
            lines += 1;
            on_line(l)
        });
        match r {
            Err(BootError::Exited { .. }) if o.accel == Accel::Auto && lines <= 3 => {
                on_line("(KVM does not work here: starting again under TCG, software emulation)");
            }
            other => return other,
        }
    }
    boot_with(o, format, false, on_line)
}

fn boot_with(
    o: &BootOptions,
    fmt: &str,
    kvm: bool,
    on_line: &mut dyn FnMut(&str),
) -> Result<Duration, BootError> {
    let image = std::fs::canonicalize(&o.image).map_err(|_| BootError::NoImage(o.image.clone()))?;
    let tmp = tempfile::tempdir().map_err(|source| BootError::Io {
        path: std::env::temp_dir(),
        source,
    })?;
    let overlay = tmp.path().join("overlay.qcow2");
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", fmt, "-b"])
        .arg(&image)
        .arg(&overlay)
        .output()
        .map_err(|source| BootError::Spawn {
            program: "qemu-img".into(),
            source,
        })?;
    if !out.status.success() {
        return Err(BootError::Overlay(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    let mut vars = None;
    // A direct kernel boot needs no firmware of its own choosing: SeaBIOS starts it fastest
    // (the virt board of arm64 starts a kernel with none at all).
    if o.firmware == Firmware::Uefi && o.kernel.is_none() {
        let candidates = match (o.arch, o.secure_boot) {
            (Arch::Aarch64, _) => AAVMF,
            (Arch::X86_64, true) => OVMF_SECURE_BOOT,
            (Arch::X86_64, false) => OVMF,
        };
        let (code, v) = candidates
            .iter()
            .find(|(c, v)| Path::new(c).exists() && Path::new(v).exists())
            .ok_or_else(|| {
                BootError::NoFirmware(
                    candidates
                        .iter()
                        .flat_map(|(c, v)| [*c, *v])
                        .collect::<Vec<_>>()
                        .join(", "),
                )
            })?;
        let copy = tmp.path().join("vars.fd");
        std::fs::copy(v, &copy).map_err(|source| BootError::Io {
            path: PathBuf::from(v),
            source,
        })?;
        vars = Some((*code, copy));
    }
    let args = qemu_args(
        o,
        kvm,
        &overlay,
        vars.as_ref().map(|(c, v)| (*c, v.as_path())),
    );
    let child = Command::new(o.arch.program())
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| BootError::Spawn {
            program: o.arch.program().into(),
            source,
        })?;
    let mut vm = Vm(child);
    let start = Instant::now();
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    for stream in [
        vm.0.stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        vm.0.stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut stream = stream;
            let mut buf = [0u8; 4096];
            while let Ok(n) = stream.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    let mut console = Console::default();
    loop {
        let left = o.timeout.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Err(BootError::Timeout {
                expect: o.expect.clone(),
                seconds: o.timeout.as_secs(),
                tail: console.tail(),
            });
        }
        match rx.recv_timeout(left.min(Duration::from_millis(500))) {
            Ok(bytes) => match console.push(&bytes, &o.expect, on_line) {
                Seen::Expected => return Ok(start.elapsed()),
                Seen::NothingToBoot(firmware, line) => {
                    return Err(BootError::NothingToBoot {
                        firmware,
                        line,
                        tail: console.tail(),
                    })
                }
                Seen::Nothing => {}
            },
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status =
                    vm.0.wait()
                        .map(|s| s.to_string())
                        .unwrap_or_else(|e| e.to_string());
                return Err(BootError::Exited {
                    expect: o.expect.clone(),
                    status,
                    tail: console.tail(),
                });
            }
        }
    }
}

/// The console as lines, with the unfinished last line kept apart (a login prompt has no
/// newline after it).
#[derive(Default)]
struct Console {
    lines: Vec<String>,
    partial: String,
}

/// What a console line tells.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Expected,
    /// The firmware (`SeaBIOS`, `OVMF`) says it found nothing to boot on the disk: this line.
    NothingToBoot(&'static str, String),
    Nothing,
}

/// The firmware's own words for "the disk has nothing I can boot". SeaBIOS tries the disk
/// first and says `Boot failed: not a bootable disk` (no boot signature) before it goes on to
/// the network, then `No bootable device.`; OVMF names the virtio disk `UEFI Misc Device`
/// (`BdsDxe: failed to load Boot0002 "UEFI Misc Device" from PciRoot(0x0)/Pci(0x3,0x0): Not
/// Found`: no EFI loader on it) before it tries PXE and HTTP boot, then `BdsDxe: No bootable
/// option or device was found.` A disk boot never needs the network, so the first disk line
/// ends it.
fn nothing_to_boot(line: &str) -> Option<&'static str> {
    let l = line.trim();
    if l.starts_with("Boot failed: not a bootable disk") || l.starts_with("No bootable device") {
        Some("SeaBIOS")
    } else if (l.starts_with("BdsDxe: failed to load Boot") && l.contains("\"UEFI Misc Device"))
        || l.starts_with("BdsDxe: No bootable option or device was found")
    {
        Some("OVMF")
    } else {
        None
    }
}

impl Console {
    fn push(&mut self, bytes: &[u8], expect: &str, on_line: &mut dyn FnMut(&str)) -> Seen {
        let text = String::from_utf8_lossy(bytes).replace('\r', "");
        for c in text.chars() {
            if c == '\n' {
                let line = strip_escapes(&std::mem::take(&mut self.partial));
                on_line(&line);
                let seen = if line.contains(expect) {
                    Seen::Expected
                } else if let Some(fw) = nothing_to_boot(&line) {
                    Seen::NothingToBoot(fw, line.trim().to_string())
                } else {
                    Seen::Nothing
                };
                self.lines.push(line);
                if seen != Seen::Nothing {
                    return seen;
                }
            } else {
                self.partial.push(c);
            }
        }
        if strip_escapes(&self.partial).contains(expect) {
            let line = strip_escapes(&self.partial);
            on_line(&line);
            self.lines.push(line);
            return Seen::Expected;
        }
        Seen::Nothing
    }

    fn tail(&self) -> Vec<String> {
        let mut all = self.lines.clone();
        if !self.partial.is_empty() {
            all.push(strip_escapes(&self.partial));
        }
        all[all.len().saturating_sub(25)..].to_vec()
    }
}

/// qemu-img's name of an image's format, from its extension (raw otherwise).
pub fn image_format(image: &Path) -> &'static str {
    match image.extension().and_then(|e| e.to_str()) {
        Some("qcow2") => "qcow2",
        Some("vmdk") => "vmdk",
        Some("vdi") => "vdi",
        Some("vhdx") => "vhdx",
        Some("vhd") => "vpc",
        _ => "raw",
    }
}

/// How much of a disk [`detect_firmware`] reads: the MBR, the GPT header and a 128-entry array.
const TABLE_BYTES: usize = 1 << 20;

/// The firmware that boots `image`, and why, from its partition table.
pub fn detect_firmware(image: &Path) -> Result<(Firmware, String), BootError> {
    let prefix = read_prefix(image)?;
    firmware_of_table(&prefix).map_err(|why| BootError::NotBootable {
        path: image.to_path_buf(),
        why,
    })
}

/// The first [`TABLE_BYTES`] of the disk in `image` (fewer if the disk is smaller).
fn read_prefix(image: &Path) -> Result<Vec<u8>, BootError> {
    let bad = |why: String| BootError::ReadTable {
        path: image.to_path_buf(),
        why,
    };
    let fmt = image_format(image);
    if fmt == "raw" {
        use std::io::Read;
        let mut f = std::fs::File::open(image).map_err(|e| bad(e.to_string()))?;
        let mut buf = Vec::with_capacity(TABLE_BYTES);
        f.by_ref()
            .take(TABLE_BYTES as u64)
            .read_to_end(&mut buf)
            .map_err(|e| bad(e.to_string()))?;
        return Ok(buf);
    }
    let tmp = tempfile::tempdir().map_err(|e| bad(e.to_string()))?;
    let out = tmp.path().join("head.raw");
    let r = Command::new("qemu-img")
        .args([
            "dd",
            "-f",
            fmt,
            "-O",
            "raw",
            &format!("bs={TABLE_BYTES}"),
            "count=1",
        ])
        .arg(format!("if={}", image.display()))
        .arg(format!("of={}", out.display()))
        .output()
        .map_err(|source| BootError::Spawn {
            program: "qemu-img".into(),
            source,
        })?;
    if !r.status.success() {
        return Err(bad(format!(
            "qemu-img dd: {}",
            String::from_utf8_lossy(&r.stderr).trim()
        )));
    }
    std::fs::read(&out).map_err(|e| bad(e.to_string()))
}

/// The machine an image is for: the architecture its GPT's root partition type names (the
/// Discoverable Partitions types), else x86-64. A partition image set (no table) is told by
/// its kernel ([`kernel_arch`]).
pub fn detect_arch(image: &Path) -> Result<Arch, BootError> {
    let d = read_prefix(image)?;
    Ok(arch_of_table(&d).unwrap_or(Arch::X86_64))
}

/// The architecture a GPT's root partition type names, if it names one.
fn arch_of_table(d: &[u8]) -> Option<Arch> {
    if d.len() < 1024 || &d[512..520] != b"EFI PART" {
        return None;
    }
    let h = &d[512..];
    let entries_lba = u64::from_le_bytes(h[72..80].try_into().ok()?);
    let count = u32::from_le_bytes(h[80..84].try_into().ok()?) as usize;
    let size = u32::from_le_bytes(h[84..88].try_into().ok()?) as usize;
    if !(128..=4096).contains(&size) || count > 1024 {
        return None;
    }
    let start = usize::try_from(entries_lba.checked_mul(512)?).ok()?;
    (0..count).find_map(|i| {
        let t = d.get(start + i * size..start + i * size + 16)?;
        if t == crate::ids::ROOT_ARM64.to_disk() {
            Some(Arch::Aarch64)
        } else if t == crate::ids::ROOT_X86_64.to_disk() {
            Some(Arch::X86_64)
        } else {
            None
        }
    })
}

/// The architecture of a kernel file from its PE header (Linux's EFI stub has one on x86-64
/// and arm64: machine `0x8664` or `0xaa64`), or the arm64 `Image` magic; `None` otherwise.
pub fn kernel_arch(kernel: &Path) -> Option<Arch> {
    use std::io::Read;
    let mut head = Vec::with_capacity(4096);
    std::fs::File::open(kernel)
        .ok()?
        .take(4096)
        .read_to_end(&mut head)
        .ok()?;
    if head.get(56..60) == Some(b"ARM\x64") {
        return Some(Arch::Aarch64);
    }
    if head.get(..2) != Some(b"MZ") {
        return None;
    }
    let pe = u32::from_le_bytes(head.get(0x3c..0x40)?.try_into().ok()?) as usize;
    if head.get(pe..pe + 4) != Some(b"PE\0\0") {
        return None;
    }
    match u16::from_le_bytes(head.get(pe + 4..pe + 6)?.try_into().ok()?) {
        0x8664 => Some(Arch::X86_64),
        0xaa64 => Some(Arch::Aarch64),
        _ => None,
    }
}

/// GPT's partition type GUIDs that tell how a disk boots, as stored on disk.
fn type_guids() -> ([u8; 16], [u8; 16]) {
    (crate::ids::ESP.to_disk(), crate::ids::BIOS_BOOT.to_disk())
}

/// UEFI or BIOS from the start of a disk (MBR, GPT header, partition entries), or why neither.
fn firmware_of_table(d: &[u8]) -> Result<(Firmware, String), String> {
    if d.len() < 1024 {
        return Err(format!(
            "it is {} bytes, too small for a partition table",
            d.len()
        ));
    }
    let signed = d[510] == 0x55 && d[511] == 0xaa;
    let boot_code = signed && d[..440].iter().any(|&b| b != 0);
    let mbr_types: Vec<u8> = (0..4).map(|i| d[446 + 16 * i + 4]).collect();
    let (esp_type, bios_type) = type_guids();
    if &d[512..520] == b"EFI PART" {
        let h = &d[512..];
        let u32_at = |o: usize| u32::from_le_bytes(h[o..o + 4].try_into().unwrap()) as usize;
        let entries_lba = u64::from_le_bytes(h[72..80].try_into().unwrap());
        let (count, size) = (u32_at(80), u32_at(84));
        if !(128..=4096).contains(&size) || count > 1024 {
            return Err(format!("a GPT with {count} entries of {size} bytes"));
        }
        let start = usize::try_from(entries_lba.saturating_mul(512)).unwrap_or(usize::MAX);
        let end = start.saturating_add(count * size);
        if end > d.len() {
            return Err("its GPT partition entries lie past the first MiB".into());
        }
        let types: Vec<&[u8]> = (0..count)
            .map(|i| &d[start + i * size..start + i * size + 16])
            .collect();
        let esp = types.iter().any(|t| *t == esp_type);
        let bios = types.iter().any(|t| *t == bios_type);
        return match (esp, bios) {
            (true, true) => Ok((
                Firmware::Uefi,
                "hybrid disk (EFI system and BIOS boot partitions): UEFI; --firmware bios for SeaBIOS"
                    .into(),
            )),
            (true, false) => Ok((Firmware::Uefi, "EFI system partition: UEFI".into())),
            (false, true) => Ok((Firmware::Bios, "BIOS boot partition: SeaBIOS".into())),
            (false, false) if boot_code => Ok((
                Firmware::Bios,
                "GPT without an EFI system partition, boot code in the MBR: SeaBIOS".into(),
            )),
            (false, false) => Err(
                "a GPT without an EFI system partition or a BIOS boot partition, and no boot \
                 code in the MBR"
                    .into(),
            ),
        };
    }
    if signed && mbr_types.contains(&0xef) {
        return Ok((
            Firmware::Uefi,
            "MBR with an EFI system partition: UEFI".into(),
        ));
    }
    if boot_code && mbr_types.iter().any(|&t| t != 0) {
        return Ok((Firmware::Bios, "MBR with boot code: SeaBIOS".into()));
    }
    Err(
        "no partition table (a filesystem image, such as a partition image's root, boots only \
         with --kernel and --initrd)"
            .into(),
    )
}

/// Removes ANSI escape sequences (firmware and GRUB draw with them).
fn strip_escapes(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for d in chars.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            } else {
                chars.next();
            }
        } else if !c.is_control() || c == '\t' {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_prompt_without_newline() {
        let mut c = Console::default();
        let mut seen = Vec::new();
        assert_eq!(
            c.push(
                b"Debian GNU/Linux 12 debian ttyS0\r\n\r\n",
                "login:",
                &mut |l| { seen.push(l.to_string()) }
            ),
            Seen::Nothing
        );
        assert_eq!(
            c.push(b"localhost login: ", "login:", &mut |_| {}),
            Seen::Expected
        );
        assert_eq!(seen, ["Debian GNU/Linux 12 debian ttyS0", ""]);
    }

    #[test]
    fn strips_escape_sequences() {
        assert_eq!(
            strip_escapes("\u{1b}[2J\u{1b}[01;01HBdsDxe: loading"),
            "BdsDxe: loading"
        );
    }

    #[test]
    fn uefi_command_line_has_both_pflash_drives() {
        let o = BootOptions {
            accel: Accel::Auto,
            arch: Arch::X86_64,
            image: "x.qcow2".into(),
            firmware: Firmware::Uefi,
            timeout: Duration::from_secs(1),
            kernel: None,
            memory_mib: 1024,
            expect: "login:".into(),
            secure_boot: false,
        };
        let a = qemu_args(
            &o,
            false,
            Path::new("/t/o.qcow2"),
            Some(("/c.fd", Path::new("/t/v.fd"))),
        );
        let s = a.join(" ");
        assert!(s.contains("-accel tcg -machine q35,graphics=off -cpu max"));
        assert!(s.contains("if=pflash,format=raw,unit=0,readonly=on,file=/c.fd"));
        assert!(s.contains("if=pflash,format=raw,unit=1,file=/t/v.fd"));
        assert!(s.contains("file=/t/o.qcow2,if=virtio,format=qcow2"));
    }

    /// A GPT disk of 8 MiB with partitions of these types (no content).
    fn gpt_disk(dir: &Path, name: &str, types: &[crate::ids::Guid]) -> PathBuf {
        use crate::format::gpt;
        use crate::layout::{PartitionSpec, MIB};
        let parts: Vec<PartitionSpec> = types
            .iter()
            .enumerate()
            .map(|(i, t)| PartitionSpec {
                name: format!("p{i}"),
                type_guid: *t,
                size: Some(MIB),
                guid: crate::ids::derive_guid(&[1; 32], &format!("p{i}")),
                attributes: 0,
            })
            .collect();
        let layout = crate::layout::layout(8 * MIB, &parts).unwrap();
        let disk = dir.join(name);
        let contents = vec![None; parts.len()];
        gpt::write_disk(
            &disk,
            &layout,
            crate::ids::derive_guid(&[1; 32], "disk"),
            &contents,
        )
        .unwrap();
        disk
    }

    #[test]
    fn the_partition_table_picks_the_firmware() {
        use crate::ids::{BIOS_BOOT, ESP, ROOT_X86_64};
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let pick = |p: &Path| detect_firmware(p).map(|(f, _)| f);
        let esp = gpt_disk(d, "esp.raw", &[ESP, ROOT_X86_64]);
        assert_eq!(pick(&esp).unwrap(), Firmware::Uefi);
        let bios = gpt_disk(d, "bios.raw", &[BIOS_BOOT, ROOT_X86_64]);
        assert_eq!(pick(&bios).unwrap(), Firmware::Bios);
        let hybrid = gpt_disk(d, "hybrid.raw", &[BIOS_BOOT, ESP, ROOT_X86_64]);
        let (fw, why) = detect_firmware(&hybrid).unwrap();
        assert_eq!(fw, Firmware::Uefi);
        assert!(
            why.contains("hybrid") && why.contains("--firmware bios"),
            "{why}"
        );
        let none = gpt_disk(d, "none.raw", &[ROOT_X86_64]);
        let e = pick(&none).unwrap_err();
        assert!(
            matches!(&e, BootError::NotBootable { why, .. } if why.contains("no boot code")),
            "{e}"
        );
        // A filesystem image (no table at all) and a file too small for one.
        std::fs::write(d.join("fs.raw"), vec![0u8; 1 << 20]).unwrap();
        assert!(matches!(
            pick(&d.join("fs.raw")),
            Err(BootError::NotBootable { .. })
        ));
        std::fs::write(d.join("tiny.raw"), b"x").unwrap();
        assert!(matches!(
            pick(&d.join("tiny.raw")),
            Err(BootError::NotBootable { .. })
        ));
        assert!(matches!(
            pick(&d.join("missing.raw")),
            Err(BootError::ReadTable { .. })
        ));
        // The same disks in other formats: read through `qemu-img dd`.
        for (raw, want) in [(&bios, Firmware::Bios), (&esp, Firmware::Uefi)] {
            for (fmt, ext) in [("qcow2", "qcow2"), ("vmdk", "vmdk"), ("vpc", "vhd")] {
                let out = raw.with_extension(ext);
                let st = Command::new("qemu-img")
                    .args(["convert", "-q", "-f", "raw", "-O", fmt])
                    .arg(raw)
                    .arg(&out)
                    .status()
                    .unwrap();
                assert!(st.success());
                assert_eq!(image_format(&out), fmt);
                assert_eq!(pick(&out).unwrap(), want, "{}", out.display());
            }
        }
    }

    #[test]
    fn the_root_partition_type_picks_the_machine() {
        use crate::ids::{ESP, ROOT_ARM64, ROOT_X86_64};
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let arm = gpt_disk(d, "arm.raw", &[ESP, ROOT_ARM64]);
        assert_eq!(detect_arch(&arm).unwrap(), Arch::Aarch64);
        assert_eq!(detect_firmware(&arm).unwrap().0, Firmware::Uefi);
        let x86 = gpt_disk(d, "x86.raw", &[ESP, ROOT_X86_64]);
        assert_eq!(detect_arch(&x86).unwrap(), Arch::X86_64);
        // A disk whose root type names no architecture boots on the host's default machine.
        let none = gpt_disk(d, "none.raw", &[ESP]);
        assert_eq!(detect_arch(&none).unwrap(), Arch::X86_64);
        // Kernels: a PE header's machine, or the arm64 Image magic.
        let pe = |machine: u16| {
            let mut k = vec![0u8; 512];
            k[..2].copy_from_slice(b"MZ");
            k[0x3c..0x40].copy_from_slice(&0x80u32.to_le_bytes());
            k[0x80..0x84].copy_from_slice(b"PE\0\0");
            k[0x84..0x86].copy_from_slice(&machine.to_le_bytes());
            k
        };
        for (name, bytes, want) in [
            ("x86", pe(0x8664), Some(Arch::X86_64)),
            ("arm", pe(0xaa64), Some(Arch::Aarch64)),
            ("riscv", pe(0x5064), None),
            ("text", b"not a kernel".to_vec(), None),
        ] {
            let p = d.join(name);
            std::fs::write(&p, bytes).unwrap();
            assert_eq!(kernel_arch(&p), want, "{name}");
        }
        let mut image = vec![0u8; 64];
        image[56..60].copy_from_slice(b"ARM\x64");
        std::fs::write(d.join("Image"), image).unwrap();
        assert_eq!(kernel_arch(&d.join("Image")), Some(Arch::Aarch64));
    }

    #[test]
    fn arm64_and_secure_boot_command_lines() {
        let mut o = BootOptions {
            accel: Accel::Auto,
            arch: Arch::Aarch64,
            image: "x.qcow2".into(),
            firmware: Firmware::Uefi,
            timeout: Duration::from_secs(1),
            kernel: None,
            memory_mib: 1024,
            expect: "login:".into(),
            secure_boot: false,
        };
        let vars = Some(("/usr/share/AAVMF/AAVMF_CODE.fd", Path::new("/t/v.fd")));
        let s = qemu_args(&o, false, Path::new("/t/o.qcow2"), vars).join(" ");
        assert!(
            s.contains("-accel tcg -machine virt -cpu max,pauth-impdef=on"),
            "{s}"
        );
        assert!(s.contains("unit=0,readonly=on,file=/usr/share/AAVMF/AAVMF_CODE.fd"));
        assert_eq!(o.arch.program(), "qemu-system-aarch64");
        o.arch = Arch::X86_64;
        o.secure_boot = true;
        let s = qemu_args(&o, false, Path::new("/t/o.qcow2"), vars).join(" ");
        assert!(s.contains("-machine q35,smm=on,graphics=off"), "{s}");
        assert!(
            s.contains("-global driver=cfi.pflash01,property=secure,value=on"),
            "{s}"
        );
    }

    #[test]
    fn firmware_lines_that_mean_nothing_to_boot() {
        for (line, fw) in [
            ("Boot failed: not a bootable disk", Some("SeaBIOS")),
            ("No bootable device.", Some("SeaBIOS")),
            (
                "BdsDxe: failed to load Boot0002 \"UEFI Misc Device\" from PciRoot(0x0)/Pci(0x3,0x0): Not Found",
                Some("OVMF"),
            ),
            ("BdsDxe: No bootable option or device was found.", Some("OVMF")),
            // The CD-ROM and the network are not the disk.
            (
                "BdsDxe: failed to load Boot0001 \"UEFI QEMU DVD-ROM QM00005 \" from PciRoot(0x0)/Pci(0x1F,0x2)/Sata(0x2,0xFFFF,0x0): Not Found",
                None,
            ),
            ("Boot failed: Could not read from CDROM (code 0003)", None),
            ("BdsDxe: loading Boot0002 \"UEFI Misc Device\" from PciRoot(0x0)/Pci(0x3,0x0)", None),
            ("Booting from Hard Disk...", None),
        ] {
            assert_eq!(nothing_to_boot(line), fw, "{line}");
        }
        let mut c = Console::default();
        assert_eq!(
            c.push(
                b"Booting from Hard Disk...\r\nBoot failed: not a bootable disk\r\n",
                "login:",
                &mut |_| {}
            ),
            Seen::NothingToBoot("SeaBIOS", "Boot failed: not a bootable disk".into())
        );
    }
}
