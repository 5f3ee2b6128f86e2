//! One module per step kind. Each says what goes into its key (`hash`) and what it produces
//! from its inputs (`run`). A step never calls another step: the executor hands it its inputs'
//! outputs through the [`StepContext`].

pub mod base_tar;
pub mod bootloader;
pub mod bootstrap;
pub mod chroot;
pub mod disk;
pub mod document;
pub mod element;
pub mod files;
pub mod filesystem;
pub mod fstab;
pub mod image_base;
pub mod manifest;
pub mod mounts;
pub mod output;
pub mod packages;
pub mod run;
pub mod sbom;
pub mod scrub;
pub mod tree;
pub mod user;

use std::path::{Path, PathBuf};

use imgspec_cache::{StepOutput, Store, StoreError, TreeDigest, TreeManifest};

use crate::key::KeyBuilder;
use crate::runner::{RunError, Runner};
use crate::tools::{Tool, ToolError};

/// What a step does, with every parameter it needs. Built by the plan, run by the executor.
#[derive(Clone, Debug)]
pub enum Action {
    BaseTar(base_tar::TarBase),
    /// `base "image"`: the root filesystem of an existing disk, read with libguestfs.
    ImageBase(image_base::ImageBase),
    /// `base "debian"` and every other distribution base: its family's bootstrap.
    Bootstrap(bootstrap::Bootstrap),
    Packages(packages::PackagesStep),
    Files(files::FilesStep),
    Run(run::RunStep),
    User(user::UserStep),
    Element(element::ElementStep),
    Bootloader(bootloader::BootloaderStep),
    Fstab(fstab::FstabStep),
    Filesystem(filesystem::FilesystemStep),
    Disk(disk::DiskStep),
    Output(output::OutputStep),
    Sbom(sbom::SbomStep),
    Manifest(manifest::ManifestStep),
}

impl Action {
    /// The step kind, as shown by `plan` and stored in the index.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::BaseTar(_) => "base-tar",
            Action::ImageBase(_) => "base-image",
            Action::Bootstrap(b) => b.family.bootstrap_kind().0,
            Action::Packages(_) => "packages",
            Action::Files(_) => "files",
            Action::Run(_) => "run",
            Action::User(_) => "user",
            Action::Element(_) => "element",
            Action::Bootloader(_) => "bootloader",
            Action::Fstab(_) => "fstab",
            Action::Filesystem(_) => "filesystem",
            Action::Disk(_) => "disk",
            Action::Output(_) => "output",
            Action::Sbom(_) => "sbom",
            Action::Manifest(_) => "manifest",
        }
    }

    /// The kind's version: bump it whenever what the kind hashes or produces changes.
    pub fn version(&self) -> u32 {
        match self {
            Action::BaseTar(_) => base_tar::VERSION,
            Action::ImageBase(_) => image_base::VERSION,
            Action::Bootstrap(b) => b.family.bootstrap_kind().1,
            Action::Packages(_) => packages::VERSION,
            Action::Files(_) => files::VERSION,
            Action::Run(_) => run::VERSION,
            Action::User(_) => user::VERSION,
            Action::Element(_) => element::VERSION,
            Action::Bootloader(_) => bootloader::VERSION,
            Action::Fstab(_) => fstab::VERSION,
            Action::Filesystem(_) => filesystem::VERSION,
            Action::Disk(_) => disk::VERSION,
            Action::Output(_) => output::VERSION,
            Action::Sbom(_) => sbom::SBOM_VERSION,
            Action::Manifest(_) => manifest::MANIFEST_VERSION,
        }
    }

    /// Host tools the step runs.
    pub fn tools(&self) -> Vec<Tool> {
        match self {
            Action::BaseTar(_)
            | Action::Files(_)
            | Action::Disk(_)
            | Action::Fstab(_)
            | Action::Sbom(_)
            | Action::Manifest(_) => vec![],
            Action::Bootstrap(b) => b.family.bootstrap_tools(),
            Action::ImageBase(_) => image_base::TOOLS.to_vec(),
            Action::Run(_) | Action::Packages(_) | Action::Bootloader(_) | Action::User(_) => {
                chroot::TOOLS.to_vec()
            }
            Action::Element(e) => e.tools(),
            Action::Filesystem(f) => f.tools(),
            Action::Output(o) => o.tools(),
        }
    }

    /// Whether the step runs programs of the image (in its chroot, or mmdebstrap's maintainer
    /// scripts): under emulation for a foreign architecture ([`crate::foreign`]).
    pub fn runs_image_programs(&self) -> bool {
        match self {
            Action::Element(e) => e.needs_root(),
            _ => matches!(
                self,
                Action::Bootstrap(_)
                    | Action::Run(_)
                    | Action::Packages(_)
                    | Action::Bootloader(_)
                    | Action::User(_)
            ),
        }
    }

    /// Whether the step must run as root (chroot, device nodes, file owners).
    pub fn needs_root(&self) -> bool {
        match self {
            Action::Element(e) => e.needs_root(),
            _ => matches!(
                self,
                Action::Bootstrap(_)
                    | Action::Run(_)
                    | Action::Packages(_)
                    | Action::Bootloader(_)
                    | Action::User(_)
            ),
        }
    }

    /// Adds the step's own parameters, local files and tool versions to its key (the plan adds
    /// the input keys first).
    pub fn hash(&self, k: &mut KeyBuilder, facts: &dyn Facts) -> Result<(), FactError> {
        match self {
            Action::BaseTar(s) => s.hash(k, facts),
            Action::ImageBase(s) => s.hash(k, facts),
            Action::Bootstrap(s) => s.hash(k, facts),
            Action::Packages(s) => s.hash(k),
            Action::Files(s) => s.hash(k, facts),
            Action::Run(s) => s.hash(k),
            Action::User(s) => s.hash(k),
            Action::Element(s) => s.hash(k),
            Action::Bootloader(s) => s.hash(k),
            Action::Fstab(s) => s.hash(k),
            Action::Filesystem(s) => s.hash(k, facts),
            Action::Disk(s) => s.hash(k),
            Action::Output(s) => s.hash(k, facts),
            Action::Sbom(s) => s.hash(k),
            Action::Manifest(s) => s.hash(k),
        }
    }

    pub fn run(&self, ctx: &StepContext) -> Result<StepOutput, StepError> {
        match self {
            Action::BaseTar(s) => s.run(ctx),
            Action::ImageBase(s) => s.run(ctx),
            Action::Bootstrap(s) => s.run(ctx),
            Action::Packages(s) => s.run(ctx),
            Action::Files(s) => s.run(ctx),
            Action::Run(s) => s.run(ctx),
            Action::User(s) => s.run(ctx),
            Action::Element(s) => s.run(ctx),
            Action::Bootloader(s) => s.run(ctx),
            Action::Fstab(s) => s.run(ctx),
            Action::Filesystem(s) => s.run(ctx),
            Action::Disk(s) => s.run(ctx),
            Action::Output(s) => s.run(ctx),
            Action::Sbom(s) => s.run(ctx),
            Action::Manifest(s) => s.run(ctx),
        }
    }
}

/// Facts about the host that keys depend on. The real one reads the machine; tests give fixed
/// answers, so that planning stays pure.
pub trait Facts {
    fn tool_version(&self, tool: &Tool) -> Result<String, ToolError>;
    /// BLAKE3 (hex) of a local file's content.
    fn file_digest(&self, path: &Path) -> Result<String, std::io::Error>;
}

#[derive(Debug, thiserror::Error)]
pub enum FactError {
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error("cannot read `{path}`")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What a running step gets from the executor.
pub struct StepContext<'a> {
    pub store: &'a Store,
    pub runner: &'a dyn Runner,
    /// The step's log file: every command's output goes there.
    pub log: PathBuf,
    /// The outputs of the step's inputs, in the order the plan listed them.
    pub inputs: Vec<StepOutput>,
    /// The keys (hex) of the step's inputs, in the same order.
    pub input_keys: Vec<String>,
    /// SOURCE_DATE_EPOCH of the image.
    pub epoch: i64,
    /// Scratch space inside the store (same filesystem), removed after the step.
    pub work: PathBuf,
}

impl StepContext<'_> {
    /// The tree of input `i`.
    pub fn input_tree(&self, i: usize) -> Result<(TreeDigest, TreeManifest), StepError> {
        let d = self
            .inputs
            .get(i)
            .and_then(|o| o.tree)
            .ok_or(StepError::Internal("the step's input has no tree"))?;
        Ok((d, self.store.get_manifest(&d)?))
    }

    /// A step output holding just a tree.
    pub fn tree_output(&self, m: &TreeManifest) -> Result<StepOutput, StepError> {
        Ok(StepOutput {
            tree: Some(self.store.put_manifest(m)?),
            ..Default::default()
        })
    }

    /// A line of the step's own in its log, after `# `.
    pub fn note(&self, line: &str) {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(&self.log) {
            let _ = writeln!(f, "# {line}");
        }
    }

    pub fn import_options(&self) -> imgspec_cache::ImportOptions {
        imgspec_cache::ImportOptions {
            clamp_mtime: Some(self.epoch),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Format(#[from] crate::format::FormatError),
    #[error("I/O error on `{path}`")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("this step must run as root ({0})")]
    NeedsRoot(&'static str),
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl StepError {
    /// The blob of the store this step found damaged or missing, if that is why it failed
    /// (see [`StoreError::damaged_blob`]).
    pub fn damaged_blob(&self) -> Option<imgspec_cache::BlobDigest> {
        match self {
            // Transparent: its `source` is the store error's source, not the store error.
            StepError::Store(e) => e.damaged_blob(),
            other => imgspec_cache::damaged_blob(other),
        }
    }

    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> StepError {
        let path = path.into();
        move |source| StepError::Io { path, source }
    }
}

/// True when this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The content digest of a local file a key names, as [`Facts::file_digest`] gives it.
pub fn file_digest(facts: &dyn Facts, path: &Path) -> Result<String, FactError> {
    facts.file_digest(path).map_err(|source| FactError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Stores the file at `path` and takes its SHA-256 in the same read; the file is kept as the
/// blob's plain copy for the rest of the build ([`imgspec_cache::Store::put_file_keep`]).
///
/// The SHA-256 is taken on a thread of its own, fed the chunks the store reads: on one core it
/// is the slowest of the three passes over the bytes (BLAKE3, zstd, SHA-256 at about 2 GB/s),
/// and a 2 GiB disk is mostly holes it must hash as zeros. Zero chunks cross as their length.
pub fn put_with_sha256(
    ctx: &StepContext,
    path: &Path,
) -> Result<(imgspec_cache::FileRef, String), StepError> {
    // The file is a disk or an output: it moves into the output directory, which syncs it.
    // Its writeback starts now, beside the hashing and compression. (A disk only converted to
    // another format is written back for nothing: disk time beside the CPU work, no wait.)
    imgspec_cache::start_file_writeback(path);
    let (stored, sha) = sha256_beside(|tap| ctx.store.put_file_keep_later(path, tap))?;
    Ok((stored?, sha))
}

/// Runs `read`, which hands every byte it reads to the tap it is given, and takes the SHA-256
/// of those bytes on a thread of its own.
fn sha256_beside<T>(
    read: impl FnOnce(&mut dyn FnMut(&[u8])) -> T,
) -> Result<(T, String), StepError> {
    use sha2::Digest;
    enum Piece {
        Data(Vec<u8>),
        Zeros(usize),
    }
    static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
    let (tx, rx) = std::sync::mpsc::sync_channel::<Piece>(8);
    let (back_tx, back_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::scope(|scope| {
        let hasher = scope.spawn(move || {
            let mut h = sha2::Sha256::new();
            for piece in rx {
                match piece {
                    Piece::Data(b) => {
                        h.update(&b);
                        let _ = back_tx.send(b);
                    }
                    Piece::Zeros(mut n) => {
                        while n > 0 {
                            let k = n.min(ZEROS.len());
                            h.update(&ZEROS[..k]);
                            n -= k;
                        }
                    }
                }
            }
            format!("{:x}", h.finalize())
        });
        let out = read(&mut |b: &[u8]| {
            let piece = if imgspec_cache::is_zero(b) {
                Piece::Zeros(b.len())
            } else {
                let mut buf = back_rx.try_recv().unwrap_or_default();
                buf.clear();
                buf.extend_from_slice(b);
                Piece::Data(buf)
            };
            // The hasher only stops when this side hangs up.
            let _ = tx.send(piece);
        });
        drop(tx);
        let sha = hasher
            .join()
            .map_err(|_| StepError::Internal("the SHA-256 thread panicked"))?;
        Ok((out, sha))
    })
}

#[cfg(test)]
mod tests {
    use sha2::Digest;

    #[test]
    fn the_sha256_beside_the_store_is_the_sha256_of_the_bytes() {
        // Data, zero chunks of several sizes (a disk's holes), a chunk that only starts with
        // zeros and one that only ends with them, an empty piece.
        let mut pieces: Vec<Vec<u8>> = vec![
            b"GPT header".to_vec(),
            vec![0; 1 << 20],
            vec![0; 3],
            (0..=255u8).cycle().take(300_000).collect(),
            [vec![0; 4096], vec![7]].concat(),
            [vec![9], vec![0; 4096]].concat(),
            Vec::new(),
            vec![0; (200 << 10) + 1],
        ];
        pieces.push(b"backup header".to_vec());
        let all = pieces.concat();
        let (n, sha) = super::sha256_beside(|tap| {
            for p in &pieces {
                tap(p);
            }
            pieces.len()
        })
        .unwrap();
        assert_eq!(n, pieces.len());
        assert_eq!(sha, format!("{:x}", sha2::Sha256::digest(&all)));
        let (_, empty) = super::sha256_beside(|_| ()).unwrap();
        assert_eq!(empty, format!("{:x}", sha2::Sha256::digest(b"")));
    }
}
