//! `imgspec boot`: starts an image in QEMU on a throw-away overlay and watches its serial
//! console until a login prompt appears.
//!
//! KVM is used when it works and TCG (software emulation) otherwise: a VM that dies under KVM
//! before the guest printed anything (a `/dev/kvm` that opens but cannot run a guest does that)
//! is started again under TCG. UEFI boots with OVMF (a private copy of its variable
//! store), BIOS with QEMU's SeaBIOS. The VM is always stopped: on success, on timeout and when
//! this process unwinds.

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
    pub image: PathBuf,
    pub firmware: Firmware,
    pub timeout: Duration,
    /// Direct kernel boot (partition images): kernel, initrd and command line.
    pub kernel: Option<(PathBuf, PathBuf, String)>,
    pub memory_mib: u32,
    /// What marks success on the console.
    pub expect: String,
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
            BootError::Timeout { tail, .. } | BootError::Exited { tail, .. } => tail,
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
    let mut a: Vec<String> = ["-accel", accel, "-machine", "q35", "-cpu", cpu, "-smp", "2"]
        .map(String::from)
        .to_vec();
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
        Some("raw") => {}
        Some(other) => {
            return Err(not(format!(
                "it is a `{other}` image; imgspec boots qcow2 and raw"
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
        Accel::Auto => kvm_usable(),
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
    // A direct kernel boot needs no firmware of its own choosing: SeaBIOS starts it fastest.
    if o.firmware == Firmware::Uefi && o.kernel.is_none() {
        let (code, v) = OVMF
            .iter()
            .find(|(c, v)| Path::new(c).exists() && Path::new(v).exists())
            .ok_or_else(|| {
                BootError::NoFirmware(OVMF.iter().map(|(c, _)| *c).collect::<Vec<_>>().join(", "))
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
    let child = Command::new("qemu-system-x86_64")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| BootError::Spawn {
            program: "qemu-system-x86_64".into(),
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
            Ok(bytes) => {
                if console.push(&bytes, &o.expect, on_line) {
                    return Ok(start.elapsed());
                }
            }
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

impl Console {
    fn push(&mut self, bytes: &[u8], expect: &str, on_line: &mut dyn FnMut(&str)) -> bool {
        let text = String::from_utf8_lossy(bytes).replace('\r', "");
        for c in text.chars() {
            if c == '\n' {
                let line = strip_escapes(&std::mem::take(&mut self.partial));
                on_line(&line);
                let found = line.contains(expect);
                self.lines.push(line);
                if found {
                    return true;
                }
            } else {
                self.partial.push(c);
            }
        }
        if strip_escapes(&self.partial).contains(expect) {
            let line = strip_escapes(&self.partial);
            on_line(&line);
            self.lines.push(line);
            return true;
        }
        false
    }

    fn tail(&self) -> Vec<String> {
        let mut all = self.lines.clone();
        if !self.partial.is_empty() {
            all.push(strip_escapes(&self.partial));
        }
        all[all.len().saturating_sub(25)..].to_vec()
    }
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
        assert!(!c.push(
            b"Debian GNU/Linux 12 debian ttyS0\r\n\r\n",
            "login:",
            &mut |l| { seen.push(l.to_string()) }
        ));
        assert!(c.push(b"localhost login: ", "login:", &mut |_| {}));
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
            image: "x.qcow2".into(),
            firmware: Firmware::Uefi,
            timeout: Duration::from_secs(1),
            kernel: None,
            memory_mib: 1024,
            expect: "login:".into(),
        };
        let a = qemu_args(
            &o,
            false,
            Path::new("/t/o.qcow2"),
            Some(("/c.fd", Path::new("/t/v.fd"))),
        );
        let s = a.join(" ");
        assert!(s.contains("-accel tcg -machine q35 -cpu max"));
        assert!(s.contains("if=pflash,format=raw,unit=0,readonly=on,file=/c.fd"));
        assert!(s.contains("if=pflash,format=raw,unit=1,file=/t/v.fd"));
        assert!(s.contains("file=/t/o.qcow2,if=virtio,format=qcow2"));
    }
}
