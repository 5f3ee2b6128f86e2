//! What stops a verb before, during or after its steps, by cause. `cli` words each for people
//! (with its help line and exit code); the library only says what happened.

use std::path::PathBuf;

use crate::tools::Tool;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Spec(#[from] crate::spec::SpecErrors),
    #[error("cannot open the cache at `{}`", dir.display())]
    Store {
        dir: PathBuf,
        #[source]
        source: imgspec_cache::StoreError,
    },
    /// A lock file beside a spec cannot be read.
    #[error(transparent)]
    Lock(#[from] crate::lockfile::LockError),
    /// A spec with a lock declares an image (that installs packages) its lock does not pin.
    #[error("image `{image}` of `{}` is not in its lock `{}`", spec.display(), lock.display())]
    NotInLock {
        image: String,
        spec: PathBuf,
        lock: PathBuf,
    },
    #[error(transparent)]
    Plan(#[from] crate::plan::PlanError),
    /// Host tools the plan needs are not installed (all of them, in the order asked for).
    #[error("missing host tools")]
    MissingTools(Vec<Tool>),
    /// imgspec is not root, and these steps (labels) would run and need it.
    #[error("these steps must run as root: {}", steps.join(", "))]
    NeedsRoot {
        steps: Vec<String>,
        verb: super::RootFor,
    },
    /// An image of another architecture whose programs a step would run, and the host's
    /// emulator is not ready: why, and the fix.
    #[error("image `{image}` cannot be built here: {why}")]
    Foreign {
        image: String,
        why: String,
        fix: String,
    },
    /// Locked `.deb` files not in the cache that could not be fetched: one line per file,
    /// those the mirror does not have (`gone`) apart from those it could not give
    /// (`unfetched`: the mirror unreachable, the cache not writable).
    #[error("locked packages not in the cache could not be fetched")]
    LockedMissing {
        gone: Vec<String>,
        unfetched: Vec<String>,
    },
    /// `--image NAME` names no image of the specs.
    #[error("no image `{name}` in the specs")]
    NoImage { name: String, known: Vec<String> },
    /// Steps failed (one line and its log per failed step, then the images not built).
    #[error("{0}")]
    Failed(String),
    #[error("interrupted")]
    Interrupted,
    /// `lock --update PKG` where the lock pins nothing yet.
    #[error("`{}` pins nothing yet", lock.display())]
    NothingPinned { lock: PathBuf, spec: PathBuf },
    /// `lock` of a spec without `base "debian"` or `packages`.
    #[error("`{}` installs no packages: nothing to lock", spec.display())]
    NothingToLock { spec: PathBuf },
    /// `lock --update PKG…` naming packages no set installs (each in backticks).
    #[error("no package set installs {}", .0.join(", "))]
    UnknownPackages(Vec<String>),
    /// `lock --update PKG…`: the named packages do not install with the rest pinned.
    #[error("the named packages cannot be updated with the rest pinned:\n{0}")]
    PartialUpdate(String),
    /// Resolving the packages of a lock failed (the failed steps' lines).
    #[error("cannot resolve the packages:\n{0}")]
    Resolve(String),
    #[error("cannot write `{}`", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A bug or an impossible state: nothing the user can change.
    #[error("{0}")]
    Internal(String),
}

impl BuildError {
    pub(crate) fn internal(e: impl std::error::Error) -> BuildError {
        BuildError::Internal(crate::exec::error_lines(&e))
    }
}
