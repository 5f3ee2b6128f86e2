//! Fuzzing the spec front-end and the planner on stable Rust: seeded mutations of every spec in
//! `tests/fixtures/spec/` and `specs/` (byte flips, insertions, deletions, duplicated lines,
//! two specs spliced, deep nesting, long lines, huge numbers, odd unicode, imports of devices and
//! of files outside), each loaded and planned in-process (a panic is caught and is a failure, an
//! error must be a diagnostic that renders), and a share of them run through the real binary
//! (`imgspec check` and `imgspec plan`, with a timeout: exit 0 or 2, never a signal, which is
//! how a stack overflow or an abort shows).
//!
//! `IMGSPEC_FUZZ_CASES` sets the number of cases (default 2000), `IMGSPEC_FUZZ_SEED` the seed
//! (default fixed, so CI runs the same cases every time). A failing case is written to the
//! target's tmp folder, named in the failure message, to be replayed with `imgspec check`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use imgspec::spec;
use imgspec::steps::Facts;
use imgspec::tools::{Tool, ToolError};
use miette::Diagnostic;

/// Fixed facts: planning needs no host tool, no file read and no cache.
struct FixedFacts;

impl Facts for FixedFacts {
    fn tool_version(&self, tool: &Tool) -> Result<String, ToolError> {
        Ok(format!("{} 1.0", tool.program))
    }
    fn file_digest(&self, path: &Path) -> Result<String, std::io::Error> {
        Ok(blake3::hash(path.to_string_lossy().as_bytes())
            .to_hex()
            .to_string())
    }
}

/// xorshift64*: small, seeded, the same on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// In `0..n` (`n` > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Pieces of KDL and of the spec language worth inserting.
const TOKENS: &[&str] = &[
    "{",
    "}",
    "{ }",
    "\"",
    "\"\"\"\n",
    "#\"",
    "\"#",
    "##\"",
    "/*",
    "*/",
    "//",
    "/-",
    ";",
    "=",
    "\\",
    "\n",
    "\r\n",
    "\t",
    " ",
    "#true",
    "#false",
    "#null",
    "(t)",
    "0x",
    "1e9",
    "-",
    ".",
    "..",
    "image \"z\" { }",
    "template \"z\" { }",
    "import \"common.kdl\"",
    "extends=\"z\"",
    "base \"tar\" path=\"rootfs.tar\"",
    "disk size=\"2GiB\" {",
    "partition \"p\" type=\"linux\"",
    "size=",
    "size=\"\"",
    "mount=\"/\"",
    "format=\"vfat\"",
    "output \"raw\"",
    "output \"partition\"",
    "bootloader \"hybrid\"",
    "element \"hostname\" name=\"\"",
    "user \"root\"",
    "epoch -1",
    "run \"\"",
    "files \".\"",
    "packages \"\"",
    "ssh-key=\"\"",
];

const HUGE: &[&str] = &[
    "18446744073709551615",
    "18446744073709551616",
    "99999999999999999999999999999999999999",
    "-9223372036854775808",
    "170141183460469231731687303715884105728",
    "\"18446744073709551615B\"",
    "\"18446744073.9GB\"",
    "\"17179869183.5GiB\"",
    "\"16777216TiB\"",
    "\"500MB\"",
    "\"511B\"",
    "\"1\"",
    "0",
    "1.5e308",
    "0.000000001",
];

const ODD: &[&str] = &[
    "\u{202E}",
    "\u{FEFF}",
    "\u{0}",
    "\u{7F}",
    "\u{301}\u{301}\u{301}",
    "\u{1F600}",
    "\u{FFFD}",
    "\u{2028}",
    "\u{85}",
    "\u{200B}",
    "\u{10FFFF}",
    "\u{1100}\u{1161}",
    "ﾟ",
    "𝕏",
];

const IMPORTS: &[&str] = &[
    "import \"/dev/zero\"\n",
    "import \"/etc/shadow\"\n",
    "import \"../../../../../../etc/passwd\"\n",
    "import \"case.kdl\"\n",
    "import \".\"\n",
    "import \"\"\n",
    "import \"/proc/self/fd/0\"\n",
    "import \"fifo.kdl\"\n",
];

/// One mutation of `text`; `other` is another spec, for splicing.
fn mutate(rng: &mut Rng, text: &mut Vec<u8>, other: &[u8]) {
    let at = |rng: &mut Rng, len: usize| rng.below(len + 1);
    match rng.below(13) {
        0 if !text.is_empty() => {
            let i = rng.below(text.len());
            text[i] = rng.next() as u8;
        }
        1 => {
            let token = rng.pick(TOKENS).as_bytes();
            let i = at(rng, text.len());
            text.splice(i..i, token.iter().copied());
        }
        2 if !text.is_empty() => {
            let i = rng.below(text.len());
            let n = 1 + rng.below(40.min(text.len() - i));
            text.drain(i..i + n);
        }
        3 => {
            let lines: Vec<&[u8]> = text.split(|&b| b == b'\n').collect();
            let line = rng.pick(&lines).to_vec();
            let most = if rng.below(10) == 0 { 500 } else { 3 };
            let times = 1 + rng.below(most);
            let mut out = Vec::new();
            for _ in 0..times {
                out.extend_from_slice(&line);
                out.push(b'\n');
            }
            let i = at(rng, text.len());
            text.splice(i..i, out);
        }
        4 => {
            let cut = at(rng, text.len());
            let from = at(rng, other.len());
            text.truncate(cut);
            text.extend_from_slice(&other[from..]);
        }
        5 => {
            let opener = *rng.pick(&["{", "a {", "/*", "/-", "(", "\"", "#\"", "{ /- "]);
            let n = *rng.pick(&[10, 63, 64, 65, 200, 1322, 5000]);
            let i = at(rng, text.len());
            text.splice(i..i, opener.repeat(n).into_bytes());
        }
        6 => {
            let unit = *rng.pick(&["a", "run \"a\"; ", " ", "\t", "é", "/* */"]);
            let n = 70_000 / unit.len() + rng.below(1000);
            let i = at(rng, text.len());
            text.splice(i..i, unit.repeat(n).into_bytes());
        }
        7 => {
            let huge = rng.pick(HUGE).as_bytes();
            // Replace a number (or a quoted value) if there is one near, else insert.
            let i = at(rng, text.len());
            let start = text[i..]
                .iter()
                .position(|b| b.is_ascii_digit() || *b == b'"')
                .map(|p| i + p);
            match start {
                Some(s) => {
                    let end = text[s + 1..]
                        .iter()
                        .position(|b| !(b.is_ascii_alphanumeric() || *b == b'.'))
                        .map_or(text.len(), |p| s + 1 + p + usize::from(text[s] == b'"'));
                    text.splice(s..end.min(text.len()), huge.iter().copied());
                }
                None => {
                    text.splice(i..i, huge.iter().copied());
                }
            }
        }
        8 => {
            let odd = rng.pick(ODD).as_bytes();
            let i = at(rng, text.len());
            text.splice(i..i, odd.iter().copied());
        }
        9 => {
            const BAD: &[&[u8]] = &[
                &[0xFF],
                &[0xC3],
                &[0xED, 0xA0, 0x80],
                &[0xF4, 0x90, 0x80, 0x80],
                &[0xC0, 0xAF],
            ];
            let bad = *rng.pick(BAD);
            let i = at(rng, text.len());
            text.splice(i..i, bad.iter().copied());
        }
        10 => {
            let import = rng.pick(IMPORTS).as_bytes();
            text.splice(0..0, import.iter().copied());
        }
        11 => {
            // Swap two bytes far apart: brackets and quotes end up unbalanced.
            if text.len() > 1 {
                let (a, b) = (rng.below(text.len()), rng.below(text.len()));
                text.swap(a, b);
            }
        }
        _ => {
            // Truncate: a spec cut off anywhere.
            let cut = at(rng, text.len());
            text.truncate(cut);
        }
    }
}

/// The corpus: every spec of the fixtures and of `specs/`, copied with what they name into
/// `root` (same layout), as (folder in `root`, text).
fn corpus(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();
    for (from, to) in [
        ("tests/fixtures/spec/valid", "valid"),
        ("tests/fixtures/spec/invalid", "invalid"),
        ("tests/fixtures/spec/invalid/parts", "invalid/parts"),
        ("specs", "specs"),
    ] {
        let dst = root.join(to);
        copy_tree(&manifest.join(from), &dst);
        for entry in std::fs::read_dir(manifest.join(from)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "kdl") {
                out.push((dst.clone(), std::fs::read(&path).unwrap()));
            }
        }
    }
    out.sort();
    // A FIFO beside every case: an import of it must not block.
    for (dir, _) in &out {
        let fifo = std::ffi::CString::new(dir.join("fifo.kdl").to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path; EEXIST for the second case of a folder is fine.
        unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) };
    }
    assert!(out.len() >= 40, "only {} specs in the corpus", out.len());
    out
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dst = to.join(entry.file_name());
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            copy_tree(&entry.path(), &dst);
        } else if kind.is_file() {
            std::fs::copy(entry.path(), &dst).unwrap();
        }
    }
}

/// What went wrong with one case, if anything.
fn run_in_process(path: &Path) -> Option<String> {
    let outcome = catch_unwind(AssertUnwindSafe(|| -> Option<String> {
        match spec::load(&[path.to_path_buf()]) {
            Ok(model) => match imgspec::plan::plan(&model, &FixedFacts) {
                Ok(_) => None,
                Err(e) if e.to_string().is_empty() => Some("a plan error with no message".into()),
                Err(_) => None,
            },
            Err(errors) => {
                for p in errors.iter() {
                    let code = p.code().map(|c| c.to_string()).unwrap_or_default();
                    if !code.starts_with("spec::") || p.help().is_none() {
                        return Some(format!("a problem without a code or help: {p}"));
                    }
                    let labels: Vec<_> = p.labels().into_iter().flatten().collect();
                    // Only a spec file named on the command line that cannot be read, and the
                    // count of problems beyond those shown, have no place to point at.
                    let unplaced = (code == "spec::unreadable" && p.source_code().is_none())
                        || code == "spec::too-many";
                    if labels.is_empty() != unplaced {
                        return Some(format!("`{code}` without a span: {p}"));
                    }
                }
                let text = spec::render(&errors, 100);
                (text.len() > 4 << 20).then(|| format!("{} bytes of diagnostics", text.len()))
            }
        }
    }));
    match outcome {
        Ok(problem) => problem,
        Err(panic) => Some(format!(
            "panic: {}",
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        )),
    }
}

/// `imgspec ARGS` with a timeout: what went wrong, if anything.
fn run_binary(args: &[&str], path: &Path, cache: &Path) -> Option<String> {
    let child = Command::new(env!("CARGO_BIN_EXE_imgspec"))
        .args(args)
        .arg(path)
        .env("IMGSPEC_CACHE_DIR", cache)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let output = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(output) => output.unwrap(),
        Err(_) => {
            // SAFETY: kill(2) on the child we started; it has not been reaped (the waiting
            // thread has not returned).
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            let _ = rx.recv();
            return Some(format!(
                "`imgspec {}` did not finish in 60 s",
                args.join(" ")
            ));
        }
    };
    match output.status.code() {
        Some(0 | 2) => None,
        Some(code) => Some(format!(
            "`imgspec {}` exited {code}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
                .chars()
                .take(2000)
                .collect::<String>()
        )),
        None => Some(format!(
            "`imgspec {}` was killed by a signal ({:?}): {}",
            args.join(" "),
            std::os::unix::process::ExitStatusExt::signal(&output.status),
            String::from_utf8_lossy(&output.stderr)
                .chars()
                .take(2000)
                .collect::<String>()
        )),
    }
}

fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not a number")),
        Err(_) => default,
    }
}

#[test]
fn mutated_specs_end_in_diagnostics_never_in_a_crash() {
    let cases = env_number("IMGSPEC_FUZZ_CASES", 2000);
    let seed = env_number("IMGSPEC_FUZZ_SEED", 0x1323_5EED);
    let work = tempfile::tempdir().unwrap();
    let corpus = corpus(work.path());
    let cache = work.path().join("cache");
    let saved = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-failures");
    let mut rng = Rng(seed | 1);
    let mut failures: Vec<String> = Vec::new();
    // Every 20th case also runs in the real binary: check and plan.
    let mut in_binary = 0;
    // Reported, never asserted on.
    let (mut in_process_time, mut binary_time) = (Duration::ZERO, Duration::ZERO);
    for case in 0..cases {
        let (dir, text) = &corpus[rng.below(corpus.len())];
        let other = &corpus[rng.below(corpus.len())].1;
        let mut text = text.clone();
        for _ in 0..1 + rng.below(3) {
            mutate(&mut rng, &mut text, other);
        }
        let path = dir.join("case.kdl");
        std::fs::write(&path, &text).unwrap();
        // A stack overflow aborts the test process: this copy is the case that did it.
        std::fs::create_dir_all(&saved).unwrap();
        std::fs::write(saved.join("current.kdl"), &text).unwrap();
        let started = std::time::Instant::now();
        let mut problems: Vec<String> = run_in_process(&path).into_iter().collect();
        in_process_time += started.elapsed();
        if case % 20 == 0 {
            let started = std::time::Instant::now();
            in_binary += 1;
            problems.extend(run_binary(&["check"], &path, &cache));
            problems.extend(run_binary(&["plan"], &path, &cache));
            binary_time += started.elapsed();
        }
        if !problems.is_empty() {
            std::fs::create_dir_all(&saved).unwrap();
            let keep = saved.join(format!("case-{seed:x}-{case}.kdl"));
            std::fs::write(&keep, &text).unwrap();
            failures.push(format!(
                "case {case} (from {}, saved as {}): {}",
                dir.display(),
                keep.display(),
                problems.join("; ")
            ));
        }
    }
    eprintln!(
        "fuzz: {cases} mutated specs (seed {seed:#x}) loaded and planned in-process, {in_binary} \
         also run as `imgspec check` and `imgspec plan`: {} failed ({:.1} s in-process, \
         {:.1} s in the binary)",
        failures.len(),
        in_process_time.as_secs_f64(),
        binary_time.as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{} of {cases} cases failed:\n{}",
        failures.len(),
        failures
            .iter()
            .take(10)
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join("\n")
    );
}
