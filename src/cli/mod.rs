//! The command line: the only module that prints, reads the environment and chooses exit codes.

mod diff;
mod dot;
mod help;
mod lock;
mod progress;
mod remote;
mod report;
mod verify;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::{Parser, Subcommand};
use imgspec_cache::{GcPolicy, Store};
use miette::Diagnostic;
use serde::Serialize;

use crate::build::{cached, BuildError, BuildRequest, RootFor, RunOptions, Session};
use crate::exec::{error_lines, Reporter};
use crate::key::{explain_change, KeyPart};
use crate::plan::{Plan, StepId};
use crate::spec;
use crate::steps::is_root;
use crate::tools::{install_line, Tool};

#[derive(Parser)]
#[command(
    name = "imgspec",
    version,
    about = "Declarative, reproducible OS disk images"
)]
struct Cli {
    /// The local cache [default: $XDG_CACHE_HOME/imgspec]
    #[arg(long, global = true, env = "IMGSPEC_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Machine-readable output: JSON lines of events (build) or one JSON document
    #[arg(long, global = true)]
    json: bool,
    #[command(flatten)]
    remote: remote::RemoteArgs,
    #[command(subcommand)]
    command: Command,
}

const SPECS_HELP: &str = "Spec files (KDL) to read together; their images share steps";

#[derive(Subcommand)]
enum Command {
    /// Check spec files and report every problem
    #[command(after_help = help::CHECK)]
    Check {
        #[arg(help = SPECS_HELP, value_name = "SPECS")]
        specs: Vec<PathBuf>,
    },
    /// Show the steps of the specs' images: key, cached or to build, and why
    #[command(after_help = help::PLAN)]
    Plan {
        #[arg(help = SPECS_HELP, value_name = "SPECS")]
        specs: Vec<PathBuf>,
        /// Write the step graph in Graphviz's language (`| dot -Tsvg > plan.svg`): one node per
        /// step, green when cached, orange when it must be built, an arrow from each input, and
        /// one coloured edge set per image, so variants show the layers they share
        #[arg(long, conflicts_with = "json")]
        dot: bool,
    },
    /// Build the images; outputs go to OUT_DIR/IMAGE/
    #[command(after_help = help::BUILD)]
    Build {
        /// Spec files (KDL) to build together: every image they declare (or those --image
        /// names), sharing the steps they have in common; a `SPEC.lock` beside a spec pins its
        /// packages
        #[arg(value_name = "SPECS")]
        specs: Vec<PathBuf>,
        /// Steps run at once (1 to 256)
        #[arg(long, short, default_value_t = default_jobs(), value_parser = jobs_parser())]
        jobs: usize,
        /// Where the outputs go: OUT_DIR/IMAGE/ with a SHA256SUMS
        #[arg(long, default_value = "out")]
        out_dir: PathBuf,
        /// Build only these images (default: all in the specs)
        #[arg(long = "image")]
        images: Vec<String>,
    },
    /// Rebuild every step in an empty scratch store and compare it with the cache (or with a
    /// published SHA256SUMS): exit 0 only when every output is identical
    #[command(after_help = help::VERIFY)]
    Verify {
        #[arg(help = SPECS_HELP, value_name = "SPECS")]
        specs: Vec<PathBuf>,
        /// Steps run at once (1 to 256)
        #[arg(long, short, default_value_t = default_jobs(), value_parser = jobs_parser())]
        jobs: usize,
        /// Verify only these images (default: all in the specs)
        #[arg(long = "image")]
        images: Vec<String>,
        /// A published build to compare with instead of the cache: its SHA256SUMS and
        /// IMAGE.manifest.json (found beside the sums when not given), files or http(s) URLs.
        /// The first step whose output differs from the manifest's is named before the rebuild
        #[arg(long, value_name = "FILE-OR-URL")]
        against: Vec<String>,
        /// Run diffoscope on the first differing pair of output files or step trees and keep
        /// its report in the cache's logs/
        #[arg(long)]
        diffoscope: bool,
        /// Keep the scratch store (it is removed otherwise)
        #[arg(long)]
        keep: bool,
    },
    /// Host tools the specs need: found or missing, with the install line
    #[command(after_help = help::DOCTOR)]
    Doctor {
        #[arg(help = SPECS_HELP, value_name = "SPECS")]
        specs: Vec<PathBuf>,
    },
    /// Resolve every package set to exact versions and write SPEC.lock beside each spec
    #[command(after_help = help::LOCK)]
    Lock {
        #[arg(help = SPECS_HELP, value_name = "SPECS")]
        specs: Vec<PathBuf>,
        /// Resolve again from the mirror as it is now: everything, or only the packages named
        /// (the rest stays pinned; put the specs first: `lock SPEC --update PKG…`). Default:
        /// keep what the lock has and resolve only sets it lacks or that the spec changed
        #[arg(long, num_args = 0.., value_name = "PKG")]
        update: Option<Vec<String>>,
        /// Steps run at once (1 to 256)
        #[arg(long, short, default_value_t = default_jobs(), value_parser = jobs_parser())]
        jobs: usize,
    },
    /// Boot an image in QEMU on a throw-away overlay and wait for a login prompt
    #[command(after_help = help::BOOT)]
    Boot {
        /// A whole-disk image (`.qcow2`, `.raw`, `.vmdk`, `.vdi`, `.vhdx`, `.vhd`), or a
        /// partition image set's `NAME.qcow2`
        image: PathBuf,
        /// Firmware: from the partition table (auto: an EFI system partition means UEFI, also
        /// on a hybrid disk; a BIOS boot partition alone SeaBIOS), or forced
        #[arg(long, value_enum, default_value = "auto")]
        firmware: FirmwareArg,
        /// Seconds to wait for the login prompt
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        /// Guest memory in MiB
        #[arg(long, default_value_t = 1024)]
        memory: u32,
        /// UEFI with Secure Boot enforced: OVMF's secboot build with Microsoft's keys enrolled
        /// (an image built with `bootloader "grub-efi" secure-boot=#true` boots; others are
        /// refused by the firmware)
        #[arg(long)]
        secure_boot: bool,
        /// Do not echo the serial console
        #[arg(long, short)]
        quiet: bool,
        /// Kernel for direct boot [default: IMAGE's NAME.vmlinuz when it exists: a partition
        /// image set]
        #[arg(long)]
        kernel: Option<PathBuf>,
        /// Initramfs for direct boot [default: NAME.initrd beside the image]
        #[arg(long)]
        initrd: Option<PathBuf>,
        /// Kernel command line for direct boot (an arm64 kernel gets console=ttyAMA0)
        #[arg(long, default_value = DEFAULT_APPEND)]
        append: String,
        /// What on the serial console means success
        #[arg(long, default_value = "login:")]
        expect: String,
        /// Accelerator: KVM when it works (auto), or force one
        #[arg(long, value_enum, default_value = "auto", env = "IMGSPEC_ACCEL")]
        accel: AccelArg,
    },
    /// What changed between two builds of an image: packages (from the SBOMs) and files (from
    /// the cache, when both final trees are in it)
    #[command(after_help = help::DIFF)]
    Diff {
        /// The older build: an output folder (out/IMAGE/), IMAGE.spdx.json or IMAGE.manifest.json
        old: PathBuf,
        /// The newer build, the same way
        new: PathBuf,
    },
    /// The local cache
    #[command(after_help = help::CACHE)]
    Cache {
        #[command(subcommand)]
        command: CacheCommand,
    },
    /// Print a shell completion script to standard output
    #[command(after_help = help::COMPLETIONS)]
    Completions {
        /// The shell to complete for
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) of imgspec or of one of its subcommands
    #[command(after_help = help::MAN)]
    Man {
        /// A subcommand, e.g. `build` or `cache gc` [default: the page of imgspec itself]
        #[arg(value_name = "SUBCOMMAND")]
        command: Vec<String>,
    },
}

#[derive(Subcommand)]
enum CacheCommand {
    /// List cached step results
    #[command(after_help = help::CACHE_LS)]
    Ls,
    /// Disk usage of the cache
    #[command(after_help = help::CACHE_DU)]
    Du,
    /// Remove what is not needed: keep what the specs need, or limit by size or age
    #[command(after_help = help::CACHE_GC)]
    Gc {
        /// Keep what these spec files need and remove everything else
        #[arg(value_name = "SPECS")]
        specs: Vec<PathBuf>,
        /// Drop least-recently-used results until the cache is at most this size (e.g. 20GiB)
        #[arg(long)]
        max_size: Option<String>,
        /// Drop results not used for this many days
        #[arg(long)]
        older_than_days: Option<u64>,
    },
    /// Re-hash every blob; drop corrupt ones and the results that used them
    #[command(after_help = help::CACHE_VERIFY)]
    Verify,
    /// Upload what the specs need (every step result in the local cache) to the remote caches
    /// (all but those the config file marks `write=#false`)
    #[command(after_help = help::CACHE_PUSH)]
    Push {
        #[arg(help = SPECS_HELP, value_name = "SPECS")]
        specs: Vec<PathBuf>,
    },
    /// Download what the specs need from the remote caches (each step from the first that has
    /// it), each object checked
    #[command(after_help = help::CACHE_PULL)]
    Pull {
        #[arg(help = SPECS_HELP, value_name = "SPECS")]
        specs: Vec<PathBuf>,
    },
    /// Write what the specs need (step results and their blobs) to a bundle file
    #[command(after_help = help::CACHE_EXPORT)]
    Export {
        #[arg(help = SPECS_HELP, value_name = "SPECS")]
        specs: Vec<PathBuf>,
        /// The bundle to write, e.g. bundle.tar.zst
        #[arg(long, short)]
        output: PathBuf,
    },
    /// Read a bundle made by `cache export` into the local cache, every object checked
    #[command(after_help = help::CACHE_IMPORT)]
    Import {
        /// The bundle file, e.g. bundle.tar.zst
        bundle: PathBuf,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum AccelArg {
    Auto,
    Kvm,
    Tcg,
}

/// The command line of a direct kernel boot (`boot --append`); on arm64 its console is
/// `ttyAMA0`.
const DEFAULT_APPEND: &str = "root=/dev/vda ro console=ttyS0,115200";

#[derive(Clone, Copy, clap::ValueEnum)]
enum FirmwareArg {
    Auto,
    Uefi,
    Bios,
}

/// The most steps `--jobs` lets run at once: each is a thread, and most run a tool as well.
const MAX_JOBS: usize = 256;

fn default_jobs() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().min(MAX_JOBS))
}

fn jobs_parser() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(1..=MAX_JOBS as u64)
}

/// What went wrong, by kind: each kind has its exit code.
#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum CliError {
    #[error(transparent)]
    #[diagnostic(transparent)]
    Spec(#[from] spec::SpecErrors),
    #[error("{message}")]
    #[diagnostic(code(imgspec::usage))]
    Usage {
        message: String,
        #[help]
        help: Option<String>,
    },
    #[error("{message}")]
    #[diagnostic(code(imgspec::environment))]
    Environment {
        message: String,
        #[help]
        help: Option<String>,
    },
    #[error("{0}")]
    #[diagnostic(code(imgspec::build_failed))]
    BuildFailed(String),
    #[error("interrupted")]
    #[diagnostic(
        code(imgspec::interrupted),
        help("nothing half-written was kept; run the build again to go on")
    )]
    Interrupted,
    #[error("{0}")]
    #[diagnostic(code(imgspec::internal))]
    Internal(String),
}

impl CliError {
    fn exit_code(&self) -> u8 {
        match self {
            CliError::BuildFailed(_) => 1,
            CliError::Spec(_) | CliError::Usage { .. } => 2,
            CliError::Environment { .. } => 3,
            CliError::Internal(_) => 70,
            CliError::Interrupted => 130,
        }
    }
}

fn internal(e: impl std::error::Error) -> CliError {
    CliError::Internal(error_lines(&e))
}

pub fn main() -> ExitCode {
    // The caller's umask must not reach the image: every file a step creates (apt's lists, a
    // `run` command's output, the store's blobs) gets the same modes on every machine.
    // SAFETY: umask has no preconditions and cannot fail.
    unsafe { libc::umask(0o022) };
    // Nothing the caller left open (a pipe, a directory of the host) may reach a step's
    // command: every inherited descriptor but the standard three is closed on exec.
    // SAFETY: close_range only sets a flag on descriptors; an old kernel answers ENOSYS.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    // Nor the caller's group: as root, every file imgspec itself creates (a `grub.cfg`, a
    // `locale.gen` written into a chroot's tree) is owned by group root, whatever `sudo -g` or
    // a CI runner gave it. Only the filesystem group changes, before any thread starts (threads
    // inherit it), so imgspec still reads a spec folder only its own groups may read; the
    // programs it runs get group root outright (`runner::HostRunner`).
    // SAFETY: geteuid and setfsgid have no memory preconditions.
    unsafe {
        if libc::geteuid() == 0 {
            libc::setfsgid(0);
        }
    }
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = e.exit_code();
            if !matches!(e, CliError::BuildFailed(_)) || !e.to_string().is_empty() {
                // Not eprintln!: a closed stderr (`imgspec check bad.kdl 2>&1 | head`) must
                // not turn the exit code into a panic's.
                use std::io::Write;
                let _ = writeln!(std::io::stderr(), "{:?}", miette::Report::new(e));
            }
            ExitCode::from(code)
        }
    }
}

fn run(cli: Cli) -> Result<(), CliError> {
    let cache_dir = cli.cache_dir.clone().unwrap_or_else(default_cache_dir);
    match cli.command {
        Command::Check { specs } => check(&specs, cli.json),
        Command::Plan { ref specs, dot } => {
            // Planning needs no cache: without one it can use (another user's, say), every
            // step is shown as to build, from an empty store that is removed afterwards.
            let scratch;
            let ctx = match open_session(&cache_dir, specs) {
                Err(CliError::Environment { message, .. })
                    if message.starts_with("cannot open the cache") =>
                {
                    eprintln!("warning: {message}: planning without it (nothing shows as cached)");
                    scratch = tempfile::tempdir().map_err(internal)?;
                    open_session(scratch.path(), specs)?
                }
                other => other?,
            };
            let plan = ctx.plan()?;
            if dot {
                print!("{}", dot::render(&plan, |k| cached(&ctx.store, k)));
                return Ok(());
            }
            show_plan(&ctx, &plan, cli.json)
        }
        Command::Build {
            ref specs,
            jobs,
            ref out_dir,
            ref images,
        } => {
            let ctx = open_session(&cache_dir, specs)?;
            let tiers = remote::tiers(&cli.remote)?;
            build(&ctx, jobs, out_dir, images, &tiers, cli.json)
        }
        Command::Verify {
            ref specs,
            jobs,
            ref images,
            ref against,
            diffoscope,
            keep,
        } => {
            let ctx = open_session(&cache_dir, specs)?;
            verify::verify(
                &ctx,
                &verify::VerifyOptions {
                    jobs,
                    images: images.clone(),
                    against: against.clone(),
                    diffoscope,
                    keep,
                    json: cli.json,
                },
            )
        }
        Command::Doctor { ref specs } => {
            remote::doctor(&cli.remote)?;
            doctor(&cache_dir, specs)
        }
        Command::Lock {
            ref specs,
            update,
            jobs,
        } => lock::lock(
            &cache_dir,
            specs,
            crate::build::resolve::Update::from_arg(update.clone()),
            jobs,
            cli.json,
        ),
        Command::Boot {
            image,
            firmware,
            timeout,
            memory,
            secure_boot,
            quiet,
            accel,
            kernel,
            initrd,
            append,
            expect,
        } => {
            let mut kernel = direct_kernel(&image, kernel, initrd, append)?;
            let (firmware, why) = match (firmware, &kernel) {
                // A direct kernel boot starts under SeaBIOS whatever the disk holds.
                (_, Some(_)) => (crate::boot::Firmware::Bios, None),
                (FirmwareArg::Uefi, None) => (crate::boot::Firmware::Uefi, None),
                (FirmwareArg::Bios, None) => (crate::boot::Firmware::Bios, None),
                (FirmwareArg::Auto, None) => {
                    let (f, why) =
                        crate::boot::detect_firmware(&image).map_err(|e| CliError::Usage {
                            message: e.to_string(),
                            help: Some(
                                "a whole-disk image needs an EFI system partition or a BIOS \
                                 boot partition; a partition image boots with its NAME.vmlinuz \
                                 and NAME.initrd beside it, or --kernel and --initrd"
                                    .into(),
                            ),
                        })?;
                    (f, Some(why))
                }
            };
            // The machine: the architecture the root partition's type names (a partition
            // image set: its kernel's).
            let arch = match &kernel {
                Some((k, _, _)) => crate::boot::kernel_arch(k),
                None => crate::boot::detect_arch(&image).ok(),
            }
            .unwrap_or(crate::boot::Arch::X86_64);
            // The default command line's console is a PC serial port; arm64's is a PL011.
            if let (crate::boot::Arch::Aarch64, Some((_, _, append))) = (arch, kernel.as_mut()) {
                if append == DEFAULT_APPEND {
                    *append = append.replace("console=ttyS0", "console=ttyAMA0");
                }
            }
            if secure_boot && arch == crate::boot::Arch::Aarch64 {
                return Err(CliError::Usage {
                    message: "--secure-boot is for x86-64 images; this one is arm64".into(),
                    help: Some("leave out --secure-boot: arm64 images boot under AAVMF".into()),
                });
            }
            if secure_boot && firmware == crate::boot::Firmware::Bios {
                return Err(CliError::Usage {
                    message: "--secure-boot needs UEFI, and this boot is a BIOS one".into(),
                    help: Some(
                        "Secure Boot starts a whole disk under OVMF: leave out --firmware bios \
                         (and --kernel, a direct kernel boot has no firmware to check it)"
                            .into(),
                    ),
                });
            }
            let o = crate::boot::BootOptions {
                accel: match accel {
                    AccelArg::Auto => crate::boot::Accel::Auto,
                    AccelArg::Kvm => crate::boot::Accel::Kvm,
                    AccelArg::Tcg => crate::boot::Accel::Tcg,
                },
                arch,
                image,
                firmware,
                timeout: std::time::Duration::from_secs(timeout),
                kernel,
                memory_mib: memory,
                expect,
                secure_boot,
            };
            boot(o, why, quiet)
        }
        Command::Cache { command } => cache(&cache_dir, command, &cli.remote, cli.json),
        Command::Diff { old, new } => diff::diff(&cache_dir, &old, &new, cli.json),
        Command::Completions { shell } => {
            help::completions(shell, &mut std::io::stdout().lock());
            Ok(())
        }
        Command::Man { command } => {
            let page = help::man_page(&command).ok_or_else(|| CliError::Usage {
                message: format!("no subcommand `{}`", command.join(" ")),
                help: Some(
                    "see `imgspec --help` for the subcommands, e.g. `imgspec man build`".into(),
                ),
            })?;
            use std::io::Write;
            std::io::stdout().write_all(&page).map_err(internal)
        }
    }
}

fn default_cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    base.join("imgspec")
}

fn need_specs(specs: &[PathBuf]) -> Result<(), CliError> {
    if specs.is_empty() {
        return Err(CliError::Usage {
            message: "no spec file given".into(),
            help: Some(
                "name one or more spec files, e.g. `imgspec build specs/debian-efi.kdl`".into(),
            ),
        });
    }
    Ok(())
}

fn check(specs: &[PathBuf], json: bool) -> Result<(), CliError> {
    need_specs(specs)?;
    let spec = spec::load(specs)?;
    if json {
        let names: Vec<&str> = spec.images.iter().map(|i| i.name.as_str()).collect();
        println!("{}", serde_json::json!({ "ok": true, "images": names }));
    } else {
        for i in &spec.images {
            eprintln!("ok: image `{}` ({} layers)", i.name, i.layers.len());
        }
        if spec.images.is_empty() {
            eprintln!("ok: no buildable image (templates only)");
        }
    }
    Ok(())
}

/// The session of a verb over the cache at `cache_dir`: its specs (at least one) with their
/// locks; says once when the cache's index was found damaged.
fn open_session(cache_dir: &Path, specs: &[PathBuf]) -> Result<Session, CliError> {
    need_specs(specs)?;
    let s = Session::open(cache_dir, specs)?;
    if let Some(r) = s.store.index_reset() {
        eprintln!("{}", index_reset_notice(r));
    }
    Ok(s)
}

/// Each failure of the library, in words for people, with its help line and exit code.
impl From<BuildError> for CliError {
    fn from(e: BuildError) -> CliError {
        let usage = |message: String, help: Option<String>| CliError::Usage { message, help };
        let env = |message: String, help: Option<String>| CliError::Environment { message, help };
        match e {
            BuildError::Spec(e) => CliError::Spec(e),
            BuildError::Store { dir, source } => env(
                format!(
                    "cannot open the cache at `{}`: {}",
                    dir.display(),
                    error_lines(&source)
                ),
                Some("choose another place with --cache-dir or IMGSPEC_CACHE_DIR".into()),
            ),
            BuildError::Lock(e) => usage(
                error_lines(&e),
                Some(
                    "fix that line, or write the lock again with `imgspec lock --update SPEC`"
                        .into(),
                ),
            ),
            BuildError::NotInLock { image, spec, lock } => usage(
                format!(
                    "image `{image}` of `{}` is not in its lock `{}`",
                    spec.display(),
                    lock.display()
                ),
                Some(format!("lock it with `imgspec lock {}`", spec.display())),
            ),
            BuildError::Plan(e) => plan_error(e),
            BuildError::MissingTools(m) => missing_tools(&m),
            BuildError::NeedsRoot {
                steps,
                verb: RootFor::Build,
            } => env(
                format!(
                    "these steps must run as root (chroot, device nodes, file owners): {}",
                    steps.join(", ")
                ),
                Some("run imgspec as root, e.g. `sudo imgspec build ...`".into()),
            ),
            BuildError::NeedsRoot {
                steps,
                verb: RootFor::Lock,
            } => env(
                format!(
                    "resolving the packages runs these steps, which must run as root: {}",
                    steps.join(", ")
                ),
                Some("run imgspec as root, e.g. `sudo imgspec lock ...`".into()),
            ),
            BuildError::LockedMissing { gone, unfetched } => {
                let plural = |n: usize| if n == 1 { " is" } else { "s are" };
                let mut message = String::from("nothing was built:");
                if !gone.is_empty() {
                    message += &format!(
                        " {} locked package{} neither in the cache nor on the mirror:\n  {}",
                        gone.len(),
                        plural(gone.len()),
                        gone.join("\n  ")
                    );
                }
                if !unfetched.is_empty() {
                    message += &format!(
                        "{} {} locked package{} not in the cache and could not be fetched:\n  {}",
                        if gone.is_empty() { "" } else { "\n" },
                        unfetched.len(),
                        plural(unfetched.len()),
                        unfetched.join("\n  ")
                    );
                }
                let help = if gone.is_empty() {
                    "the lock is fine: the mirror could not be reached or the cache could not be \
                     written (the reason is on each line); run the build again once it can be \
                     (the packages fetched are kept in the cache)"
                } else {
                    "the mirror has moved on and the cache does not have them: lock what the \
                     mirror has now with `imgspec lock --update SPEC`"
                };
                env(message, Some(help.into()))
            }
            BuildError::Foreign { image, why, fix } => env(
                format!("image `{image}` cannot be built here: {why}"),
                Some(fix),
            ),
            BuildError::NoImage { name, known } => usage(
                format!("no image `{name}` in the specs"),
                Some(format!("images: {}", known.join(", "))),
            ),
            BuildError::Failed(m) => CliError::BuildFailed(m),
            BuildError::Interrupted => CliError::Interrupted,
            BuildError::NothingPinned { lock, spec } => usage(
                format!("`{}` pins nothing yet", lock.display()),
                Some(format!(
                    "write it first with `imgspec lock {}`",
                    spec.display()
                )),
            ),
            BuildError::NothingToLock { spec } => usage(
                format!("`{}` installs no packages: nothing to lock", spec.display()),
                Some("a lock pins `base \"debian\"` and `packages` layers".into()),
            ),
            BuildError::UnknownPackages(u) => usage(
                format!("no package set installs {}", u.join(", ")),
                Some("name packages of the lock file, or give `--update` alone".into()),
            ),
            BuildError::PartialUpdate(lines) => CliError::BuildFailed(format!(
                "the named packages cannot be updated with the rest pinned (the lock is left as \
                 it was): name more packages, or refresh everything with `--update` alone\n\
                 cannot resolve the packages:\n{lines}"
            )),
            BuildError::Resolve(lines) => {
                CliError::BuildFailed(format!("cannot resolve the packages:\n{lines}"))
            }
            BuildError::Write { path, source } => {
                env(format!("cannot write `{}`: {source}", path.display()), None)
            }
            BuildError::Internal(m) => CliError::Internal(m),
        }
    }
}

fn plan_error(e: crate::plan::PlanError) -> CliError {
    let help = match &e {
        crate::plan::PlanError::Unsupported { .. } => {
            Some("see CHANGELOG.md for what is built today".to_string())
        }
        crate::plan::PlanError::Fact { .. } => None,
        crate::plan::PlanError::Foreign { .. } => Some(
            "build it on a host of its architecture, or use one of the architectures named"
                .to_string(),
        ),
        crate::plan::PlanError::Disk { .. } => {
            Some("change the disk's `size` or the partitions' sizes".to_string())
        }
        crate::plan::PlanError::Lock { .. } => Some(
            "lock the spec as it is now with `imgspec lock SPEC` (`--update` to refresh every set)"
                .to_string(),
        ),
    };
    CliError::Usage {
        message: error_lines(&e),
        help,
    }
}

fn missing_tools(missing: &[Tool]) -> CliError {
    let names: Vec<String> = missing.iter().map(|t| format!("`{}`", t.program)).collect();
    let hints: Vec<&str> = missing.iter().filter_map(|t| t.install_hint).collect();
    let mut help = format!("install them with: {}", install_line(missing));
    for h in hints {
        help.push_str(&format!("\n({h})"));
    }
    CliError::Environment {
        message: format!("missing host tools: {}", names.join(", ")),
        help: Some(help),
    }
}

fn open_store(dir: &Path) -> Result<Store, CliError> {
    let store = crate::build::open_store(dir)?;
    if let Some(r) = store.index_reset() {
        eprintln!("{}", index_reset_notice(r));
    }
    Ok(store)
}

/// What to say, once, when the cache's index was found damaged and replaced.
fn index_reset_notice(r: &imgspec_cache::IndexReset) -> String {
    format!(
        "WARNING  the cache index was damaged ({}); it was set aside as `{}` and a new one \
         started. The blobs are kept, the step results are not: steps are built again (or \
         fetched from the remote cache).",
        r.problem,
        r.set_aside.display()
    )
}

#[derive(Serialize)]
struct StepView {
    name: String,
    kind: String,
    label: String,
    key: String,
    cached: bool,
    inputs: Vec<String>,
    /// Why it must be built, when it must.
    why: Vec<String>,
}

#[derive(Serialize)]
struct ImageView {
    name: String,
    steps: Vec<StepView>,
}

fn step_name(plan: &Plan, id: StepId, image: &str) -> String {
    plan.steps[id].name_in(image)
}

fn why_rebuild(store: &Store, plan: &Plan, id: StepId, image: &str) -> Vec<String> {
    let s = &plan.steps[id];
    match store.last_build(image, &step_name(plan, id, image)) {
        Ok(Some((old_key, explain))) if old_key != s.key => {
            match serde_json::from_str::<Vec<KeyPart>>(&explain) {
                Ok(old) => explain_change(&old, &s.parts),
                Err(_) => vec!["its key changed".into()],
            }
        }
        Ok(Some(_)) => vec!["its result is no longer in the cache".into()],
        _ => vec!["never built".into()],
    }
}

fn image_views(store: &Store, plan: &Plan) -> Vec<ImageView> {
    plan.images
        .iter()
        .map(|img| ImageView {
            name: img.name.clone(),
            steps: img
                .steps
                .iter()
                .map(|&id| {
                    let s = &plan.steps[id];
                    let cached = cached(store, &s.key);
                    StepView {
                        name: step_name(plan, id, &img.name),
                        kind: s.kind().into(),
                        label: s.label.clone(),
                        key: s.key.to_hex(),
                        cached,
                        inputs: s
                            .inputs
                            .iter()
                            .map(|&i| step_name(plan, i, &img.name))
                            .collect(),
                        why: if cached {
                            vec![]
                        } else {
                            why_rebuild(store, plan, id, &img.name)
                        },
                    }
                })
                .collect(),
        })
        .collect()
}

fn show_plan(ctx: &Session, plan: &Plan, json: bool) -> Result<(), CliError> {
    let views = image_views(&ctx.store, plan);
    if json {
        let s = serde_json::to_string_pretty(&serde_json::json!({ "images": views }))
            .map_err(internal)?;
        println!("{s}");
        return Ok(());
    }
    for img in &views {
        println!("{}", img.name);
        let width = img
            .steps
            .iter()
            .map(|s| s.label.chars().count())
            .max()
            .unwrap_or(0);
        for s in &img.steps {
            let state = if s.cached { "cached" } else { "build" };
            let why = if s.why.is_empty() {
                String::new()
            } else {
                format!("  ({})", s.why.join("; "))
            };
            println!(
                "  {:<width$}  {}  {:<6}{}",
                s.label,
                &s.key[..12],
                state,
                why,
                width = width
            );
        }
    }
    Ok(())
}

fn reporter(json: bool) -> Box<dyn Reporter> {
    if json {
        Box::new(report::JsonReporter)
    } else if std::io::stderr().is_terminal() {
        Box::new(report::TerminalReporter::new())
    } else {
        Box::new(report::PlainReporter)
    }
}

fn build(
    session: &Session,
    jobs: usize,
    out_dir: &Path,
    only: &[String],
    tiers: &imgspec_cache::Tiers,
    json: bool,
) -> Result<(), CliError> {
    let cancel = interrupt_flag();
    let rep = reporter(json);
    let o = RunOptions {
        jobs,
        reporter: rep.as_ref(),
        cancel: &cancel,
        fresh: &[],
        tiers,
    };
    let req = BuildRequest {
        out_dir,
        images: only,
    };
    let r = crate::build::run::build(session, &o, &req, &progress::Feedback { json })?;
    if json {
        let s = serde_json::json!({
            "event": "build-finished",
            "built": r.built,
            "cached": r.up_to_date,
            "from_remote": r.from_remote,
            "failed": r.failed,
            "seconds": r.seconds,
            "images": r.images.iter().map(|(n, w)| serde_json::json!({"name": n, "files": w})).collect::<Vec<_>>(),
        });
        println!("{s}");
    } else {
        for (name, written) in &r.images {
            eprintln!("image `{name}`:");
            for w in written {
                eprintln!(
                    "  {}{}",
                    w.path.display(),
                    if w.written { "" } else { " (unchanged)" }
                );
            }
        }
        let fetched = match r.from_remote {
            0 => String::new(),
            n => format!(" ({n} fetched from the remote cache)"),
        };
        eprintln!(
            "{} steps built, {} cached, {} failed in {:.2}s{fetched}",
            r.built, r.up_to_date, r.failed, r.seconds
        );
    }
    match r.error() {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

/// Set on Ctrl-C or SIGTERM, which also stops the running child processes.
fn interrupt_flag() -> Arc<AtomicBool> {
    let cancel = Arc::new(AtomicBool::new(false));
    let c = cancel.clone();
    // A second Ctrl-C while stopping is ignored: steps clean up before we exit.
    let _ = ctrlc::set_handler(move || {
        c.store(true, Ordering::SeqCst);
        crate::runner::terminate_all();
    });
    cancel
}

fn doctor(cache_dir: &Path, specs: &[PathBuf]) -> Result<(), CliError> {
    let session = open_session(cache_dir, specs)?;
    let facts = session.facts();
    let plan = crate::plan::plan_locked(&session.spec, &facts, session.lock.as_ref())
        .map_err(plan_error)?;
    let mut tools: Vec<Tool> = plan.steps.iter().flat_map(|s| s.action.tools()).collect();
    tools.extend(session.spec.images.iter().filter_map(|i| {
        crate::foreign::emulator(crate::plan::architecture(i))
            .ok()
            .flatten()
            .map(|e| e.tool)
    }));
    tools.sort();
    tools.dedup();
    let missing = facts.into_missing();
    for t in &tools {
        let state = if missing.contains(t) {
            "MISSING".to_string()
        } else {
            crate::tools::which(t.program)
                .map(|p| format!("found at {}", p.display()))
                .unwrap_or_else(|| "MISSING".into())
        };
        println!("{:<20} {:<14} {}", t.program, t.package, state);
    }
    let root_steps: Vec<&str> = plan
        .steps
        .iter()
        .filter(|s| s.action.needs_root())
        .map(|s| s.label.as_str())
        .collect();
    if !root_steps.is_empty() {
        println!(
            "root: {} (needed by {})",
            if is_root() { "yes" } else { "NO" },
            root_steps.join(", ")
        );
    }
    let mut emulation = None;
    for image in &session.spec.images {
        let arch = crate::plan::architecture(image);
        if let Ok(Some(e)) = crate::foreign::emulator(arch) {
            match crate::build::foreign_problem(&session.spec, &image.name) {
                None => println!(
                    "emulation: {arch} programs run under binfmt_misc `{}` ({})",
                    e.binfmt, e.tool.program
                ),
                Some((why, fix)) => {
                    println!("emulation: {arch} programs CANNOT run: {why}\n  fix: {fix}");
                    emulation.get_or_insert((why, fix));
                }
            }
        }
    }
    let missing: Vec<Tool> = tools
        .into_iter()
        .filter(|t| missing.contains(t) || crate::tools::which(t.program).is_none())
        .collect();
    if !missing.is_empty() {
        return Err(missing_tools(&missing));
    }
    let imports = plan
        .steps
        .iter()
        .any(|s| matches!(s.action, crate::steps::Action::ImageBase(_)));
    if imports {
        let (problem, notes) = crate::steps::image_base::appliance_check();
        for n in notes {
            println!("{n}");
        }
        if let Some((why, fix)) = problem {
            println!("libguestfs: CANNOT read disks: {why}\n  fix: {fix}");
            emulation.get_or_insert((why, fix));
        }
    }
    if let Some((why, fix)) = emulation {
        return Err(CliError::Environment {
            message: why,
            help: Some(fix),
        });
    }
    println!("all host tools found");
    Ok(())
}

fn cache(
    dir: &Path,
    command: CacheCommand,
    remote_args: &remote::RemoteArgs,
    json: bool,
) -> Result<(), CliError> {
    let store = open_store(dir)?;
    match command {
        CacheCommand::Ls => {
            let list = store.list().map_err(internal)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list).map_err(internal)?);
            } else {
                for r in list {
                    println!(
                        "{}  {:<12} {:>10}  {}",
                        r.key.short(),
                        r.kind,
                        human_bytes(r.size),
                        r.name
                    );
                }
            }
        }
        CacheCommand::Du => {
            let u = store.usage().map_err(internal)?;
            let (trees, tree_bytes) = store.kept_usage();
            let (linked, linked_bytes) = store.linked_usage();
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "records": u.records,
                        "blobs": u.blobs,
                        "bytes": u.bytes,
                        "kept_trees": trees,
                        "kept_tree_bytes": tree_bytes,
                        "linked_outputs": linked,
                        "linked_output_bytes": linked_bytes,
                    })
                );
            } else {
                println!(
                    "{}: {} step results, {} blobs, {}",
                    store.root().display(),
                    u.records,
                    u.blobs,
                    human_bytes(u.bytes)
                );
                if linked > 0 {
                    println!(
                        "  and {linked} links to output files, to restore them when deleted: {} \
                         held by the cache alone (the others are output folders' files; \
                         `cache gc` removes those no output folder has)",
                        human_bytes(linked_bytes)
                    );
                }
                if trees > 0 {
                    println!(
                        "  and {trees} materialised trees kept for the next build's chroot \
                         steps, {} (made again when removed; `cache gc` removes them)",
                        human_bytes(tree_bytes)
                    );
                }
            }
        }
        CacheCommand::Gc {
            specs,
            max_size,
            older_than_days,
        } => {
            let mut keep_locks = None;
            let mut keep_images = None;
            let policy = if !specs.is_empty() {
                let (spec, locks) = crate::build::load(&specs)?;
                let plan = crate::build::plan_of(&store, &spec, locks.as_ref())?;
                keep_locks = Some(locks.unwrap_or_default());
                keep_images = Some(
                    plan.steps
                        .iter()
                        .filter_map(|s| match &s.action {
                            crate::steps::Action::ImageBase(b) => match &b.source {
                                crate::spec::model::DiskSource::Url { sha256, .. } => {
                                    Some(sha256.clone())
                                }
                                crate::spec::model::DiskSource::Path(_) => None,
                            },
                            _ => None,
                        })
                        .collect::<std::collections::BTreeSet<String>>(),
                );
                GcPolicy::Keep(plan.steps.iter().map(|s| s.key).collect())
            } else if let Some(s) = max_size {
                let n = spec::parse_size(&s).map_err(|e| CliError::Usage {
                    message: format!("bad --max-size `{s}`: {e}"),
                    help: Some("write a size like `20GiB` or `500MiB`".into()),
                })?;
                GcPolicy::MaxBytes(n)
            } else if let Some(d) = older_than_days {
                GcPolicy::OlderThan(d as i64 * 86_400)
            } else {
                return Err(CliError::Usage {
                    message: "`cache gc` needs spec files to keep, --max-size or --older-than-days"
                        .into(),
                    help: Some(
                        "e.g. `imgspec cache gc specs/*.kdl` keeps what those specs need".into(),
                    ),
                });
            };
            let r = store.gc(&policy).map_err(internal)?;
            println!(
                "removed {} step results and {} blobs, freed {}",
                r.records_removed,
                r.blobs_removed,
                human_bytes(r.bytes_freed)
            );
            let (linked, linked_bytes) = store.drop_unlinked_outputs();
            if linked > 0 {
                println!(
                    "removed {linked} copies of deleted output files kept to restore them, \
                     freed {}",
                    human_bytes(linked_bytes)
                );
            }
            let (_, tree_bytes) = store.kept_usage();
            let trees = store.drop_kept_trees();
            if trees > 0 {
                println!(
                    "removed {trees} materialised trees kept for the next build, freed {}",
                    human_bytes(tree_bytes)
                );
            }
            if r.locks_removed > 0 {
                println!(
                    "removed {} lock files no build held (left by killed builds)",
                    r.locks_removed
                );
            }
            // Locked `.deb` files go only when specs say what to keep (they may be the only
            // copy left once the mirror has moved on).
            if let Some(locks) = keep_locks {
                let (n, bytes) = crate::build::resolve::gc_debs(&store, &locks)?;
                println!(
                    "removed {n} .deb files no lock or step result needs, freed {}",
                    human_bytes(bytes)
                );
            }
            // Downloaded disks (`base "image" url=`) likewise: the specs say which to keep.
            if let Some(keep) = keep_images {
                let (n, bytes) = crate::steps::image_base::gc_images(store.root(), &keep);
                println!(
                    "removed {n} downloaded disk images no spec names, freed {}",
                    human_bytes(bytes)
                );
            }
        }
        CacheCommand::Verify => {
            let r = store.verify().map_err(internal)?;
            if let Some(reset) = &r.index_reset {
                println!("{}", index_reset_notice(reset));
            }
            println!(
                "checked the index and {} blobs: {} corrupt (removed), {} missing, {} step \
                 results dropped",
                r.blobs_checked,
                r.corrupt.len(),
                r.missing.len(),
                r.dropped.len()
            );
            if r.linked_checked > 0 {
                println!(
                    "checked {} output files the cache links to restore them: {} removed (not \
                     their blob's bytes, or changed since)",
                    r.linked_checked, r.linked_removed
                );
            }
            for d in &r.corrupt {
                println!("  corrupt: {d}");
            }
            for d in &r.missing {
                println!("  missing: {d}");
            }
            for d in &r.dropped {
                let blob = d.blob.map(|b| format!(" (blob {})", b.short()));
                println!(
                    "  dropped: {} `{}` ({}): {}{}",
                    d.kind,
                    d.name,
                    &d.key[..d.key.len().min(12)],
                    d.reason,
                    blob.unwrap_or_default()
                );
            }
            let clean = r.corrupt.is_empty()
                && r.missing.is_empty()
                && r.dropped.is_empty()
                && r.index_reset.is_none()
                && store.index_reset().is_none(); // found when the cache was opened
            if !clean {
                return Err(CliError::BuildFailed(String::new()));
            }
        }
        CacheCommand::Push { specs } => remote::push(&store, &specs, remote_args, json)?,
        CacheCommand::Pull { specs } => remote::pull(&store, &specs, remote_args, json)?,
        CacheCommand::Export { specs, output } => remote::export(&store, &specs, &output, json)?,
        CacheCommand::Import { bundle } => remote::import(&store, &bundle, json)?,
    }
    Ok(())
}

fn boot(o: crate::boot::BootOptions, why: Option<String>, quiet: bool) -> Result<(), CliError> {
    use crate::boot::{BootError, Firmware};
    let qemu = match o.arch {
        crate::boot::Arch::X86_64 => crate::tools::QEMU_SYSTEM,
        crate::boot::Arch::Aarch64 => crate::tools::QEMU_SYSTEM_AARCH64,
    };
    let missing: Vec<Tool> = [qemu, crate::tools::QEMU_IMG]
        .into_iter()
        .filter(|t| crate::tools::which(t.program).is_none())
        .collect();
    if !missing.is_empty() {
        return Err(missing_tools(&missing));
    }
    // Before anything starts: a text file would keep QEMU waiting for its whole timeout.
    crate::boot::inspect(&o.image, o.kernel.is_some()).map_err(|e| match e {
        BootError::NotAnImage { .. } | BootError::NoImage(_) => not_an_image(&e),
        other => CliError::Environment {
            message: error_lines(&other),
            help: None,
        },
    })?;
    let mut how = match (&o.kernel, o.firmware, why) {
        (Some((k, _, _)), _, _) => format!("partition image, kernel `{}`", k.display()),
        (None, _, Some(why)) => why,
        (None, Firmware::Uefi, None) => "UEFI, OVMF".to_string(),
        (None, Firmware::Bios, None) => "BIOS, SeaBIOS".to_string(),
    };
    if o.arch == crate::boot::Arch::Aarch64 {
        how.push_str("; arm64: qemu-system-aarch64 -machine virt");
        if o.kernel.is_none() {
            how.push_str(", AAVMF");
        }
    }
    if o.secure_boot {
        how.push_str("; Secure Boot enforced, Microsoft's keys");
    }
    eprintln!(
        "[{}] booting `{}` ({how})",
        report::clock(),
        o.image.display()
    );
    let mut echo = |l: &str| {
        if !quiet {
            eprintln!("  | {l}");
        }
    };
    match crate::boot::boot(&o, &mut echo) {
        Ok(t) => {
            eprintln!("`{}` after {:.1}s", o.expect, t.as_secs_f64());
            Ok(())
        }
        Err(e @ (BootError::NotAnImage { .. } | BootError::NoImage(_))) => Err(not_an_image(&e)),
        Err(e @ BootError::NoFirmware(_)) => Err(CliError::Environment {
            message: e.to_string(),
            help: Some(format!(
                "install it with: apt-get install {}",
                match o.arch {
                    crate::boot::Arch::X86_64 => "ovmf",
                    crate::boot::Arch::Aarch64 => "qemu-efi-aarch64",
                }
            )),
        }),
        Err(BootError::NothingToBoot { line, .. })
            if o.secure_boot && line.contains("Access Denied") =>
        {
            Err(CliError::Usage {
                message: format!(
                    "Secure Boot refused the disk's boot loader (not signed by a key the \
                     firmware trusts): `{line}`"
                ),
                help: Some(
                    "build the image with `bootloader \"grub-efi\" secure-boot=#true` (Debian's \
                     signed shim and GRUB), or boot it without --secure-boot"
                        .into(),
                ),
            })
        }
        Err(e @ BootError::NothingToBoot { .. }) => {
            let other = match o.firmware {
                Firmware::Uefi => "bios",
                Firmware::Bios => "uefi",
            };
            Err(CliError::Usage {
                message: e.to_string(),
                help: Some(format!(
                    "the disk holds no boot loader this firmware can start; if it was built for \
                     the other one, try --firmware {other} (or leave --firmware out: the \
                     partition table decides)"
                )),
            })
        }
        Err(e) => {
            let tail = e.console_tail();
            let mut msg = e.to_string();
            if quiet && !tail.is_empty() {
                msg.push_str("\nlast console lines:\n  | ");
                msg.push_str(&tail.join("\n  | "));
            }
            Err(CliError::BuildFailed(msg))
        }
    }
}

fn not_an_image(e: &crate::boot::BootError) -> CliError {
    CliError::Usage {
        message: e.to_string(),
        help: Some(
            "give an image `imgspec build` wrote: `out/IMAGE/IMAGE.qcow2` or `IMAGE.raw` (a whole disk), or a partition image set's `IMAGE.qcow2`"
                .into(),
        ),
    }
}

/// The kernel, initrd and command line of a direct boot: given, or a partition image set's
/// `NAME.vmlinuz` and `NAME.initrd` beside `NAME.qcow2`.
fn direct_kernel(
    image: &Path,
    kernel: Option<PathBuf>,
    initrd: Option<PathBuf>,
    append: String,
) -> Result<Option<(PathBuf, PathBuf, String)>, CliError> {
    let beside = |ext: &str| Some(image.with_extension(ext)).filter(|p| p.exists());
    match (
        kernel.or_else(|| beside("vmlinuz")),
        initrd.or_else(|| beside("initrd")),
    ) {
        (Some(k), Some(i)) => Ok(Some((k, i, append))),
        (None, None) => Ok(None),
        (Some(_), None) | (None, Some(_)) => Err(CliError::Usage {
            message: "a direct kernel boot needs both a kernel and an initrd".into(),
            help: Some(
                "give --kernel and --initrd, or put NAME.vmlinuz and NAME.initrd beside the image"
                    .into(),
            ),
        }),
    }
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
