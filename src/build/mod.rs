//! The build as a library: what `build`, `lock`, `verify`, `plan`, `doctor` and `cache
//! push/pull/export/gc` share, below the command line.
//!
//! A [`Session`] holds the store, the specs and their locks (read together, so every verb
//! computes the same keys), and makes the host facts planning needs ([`HostFacts`]). On it:
//! the pre-flight ([`Session::preflight`]: which steps will run, whether root is needed, every
//! locked `.deb` in the cache before any step starts), the run ([`run::build`]: plan → exec →
//! outputs → last-build record) and lock resolution ([`lock`]). [`run::executor`] is the one
//! place an [`Executor`](crate::exec::Executor) is made.
//!
//! Nothing here prints or reads the environment: progress goes through the
//! [`Reporter`](crate::exec::Reporter), and the few notices and transfers a verb shows between
//! steps through its [`Feedback`]; failures are [`BuildError`]s, which `cli` turns into its messages and exit
//! codes.

mod error;
mod facts;
mod preflight;
pub use preflight::Deferred;
pub mod resolve;
pub mod run;

use std::path::{Path, PathBuf};

use imgspec_cache::{StepKey, Store, Tiers};

pub use error::BuildError;
pub use facts::HostFacts;
pub use run::{executor, BuildReport, BuildRequest, RunOptions};

/// What a verb hears between steps (the executor's events go to its
/// [`Reporter`](crate::exec::Reporter)): notices, and the bytes of long transfers.
pub trait Feedback: Sync {
    fn notice(&self, message: &str);
    /// A transfer of `total` bytes (when known) starts; it ends when the result drops.
    fn transfer(&self, what: &str, total: Option<u64>) -> Box<dyn Transfer + '_>;
}

/// One transfer under way: told the bytes as they go, from any thread.
pub trait Transfer: Sync {
    fn add(&self, bytes: u64);
}

/// Feedback that goes nowhere (tests, and callers with nobody to tell).
pub struct Quiet;

impl Feedback for Quiet {
    fn notice(&self, _: &str) {}
    fn transfer(&self, _: &str, _: Option<u64>) -> Box<dyn Transfer + '_> {
        Box::new(Quiet)
    }
}

impl Transfer for Quiet {
    fn add(&self, _: u64) {}
}

use crate::plan::{Plan, StepId};
use crate::spec;

/// The specs of one command with their locks, over one store.
pub struct Session {
    pub store: Store,
    pub spec: spec::model::Spec,
    /// The locks beside the specs, merged.
    pub lock: Option<crate::lockfile::Lock>,
}

impl Session {
    /// Reads `specs` (and the `SPEC.lock` beside each) and opens the store at `cache_dir`.
    pub fn open(cache_dir: &Path, specs: &[PathBuf]) -> Result<Session, BuildError> {
        let (spec, lock) = load(specs)?;
        let store = open_store(cache_dir)?;
        Ok(Session { store, spec, lock })
    }

    /// Host facts over this session's store (tool versions and file digests are cached in it).
    pub fn facts(&self) -> HostFacts<'_> {
        HostFacts::new(&self.store)
    }

    /// The plan every verb uses; fails with the install line when host tools are missing.
    pub fn plan(&self) -> Result<Plan, BuildError> {
        plan_of(&self.store, &self.spec, self.lock.as_ref())
    }

    /// Whether the store has a result for `key`.
    pub fn cached(&self, key: &StepKey) -> bool {
        cached(&self.store, key)
    }

    /// What must hold before a build of `targets` starts a step: the steps it will run (not in
    /// the cache nor on the remote, needed by something not cached), run as root where one of
    /// them needs it, and every locked `.deb` they install in the cache (fetched from the
    /// mirror now; `feedback` hears how many and their bytes). Returns the steps that will run.
    pub fn preflight(
        &self,
        plan: &Plan,
        targets: &[StepId],
        tiers: &Tiers,
        feedback: &dyn Feedback,
        cancel: &std::sync::atomic::AtomicBool,
    ) -> Result<Vec<StepId>, BuildError> {
        let to_run = steps_to_run(&self.store, tiers, plan, targets);
        // As in `preflight_overlapped`: nothing is fetched for a build that cannot run.
        self.check_runnable(plan, &to_run)?;
        preflight::fetch_locked(self, plan, &to_run, feedback, cancel)?;
        Ok(to_run)
    }

    /// [`Session::preflight`] for a build that fetches the locked files of the steps after
    /// a base while the base builds: those are returned to fetch then (see [`Deferred`]),
    /// when there are both.
    pub fn preflight_overlapped(
        &self,
        plan: &Plan,
        targets: &[StepId],
        tiers: &Tiers,
        feedback: &dyn Feedback,
        cancel: &std::sync::atomic::AtomicBool,
    ) -> Result<(Vec<StepId>, Option<Deferred>), BuildError> {
        let to_run = steps_to_run(&self.store, tiers, plan, targets);
        // Root and the emulator are checked first: nothing is fetched for a build that cannot
        // run.
        self.check_runnable(plan, &to_run)?;
        let later = preflight::fetch_locked_overlapped(self, plan, &to_run, feedback, cancel)?;
        Ok((to_run, later))
    }

    /// Root where a step of `to_run` needs it, the emulator where one runs a foreign image's
    /// programs.
    fn check_runnable(&self, plan: &Plan, to_run: &[StepId]) -> Result<(), BuildError> {
        needs_root(plan, to_run, RootFor::Build)?;
        // A foreign image's programs need the emulator registered, when a step will run them.
        for image in &plan.images {
            let runs = image
                .steps
                .iter()
                .any(|id| to_run.contains(id) && plan.steps[*id].action.runs_image_programs());
            if runs {
                if let Some((why, fix)) = foreign_problem(&self.spec, &image.name) {
                    return Err(BuildError::Foreign {
                        image: image.name.clone(),
                        why,
                        fix,
                    });
                }
            }
        }
        Ok(())
    }
}

/// Why image `name` of `spec`, of another architecture than the host's, cannot run its
/// programs here, and the fix (`None` for a native image, or when the emulator is ready).
pub fn foreign_problem(spec: &spec::model::Spec, name: &str) -> Option<(String, String)> {
    let image = spec.images.iter().find(|i| i.name == name)?;
    let e = crate::foreign::emulator(crate::plan::architecture(image)).ok()??;
    crate::foreign::binfmt_problem(e, Path::new("/proc/sys/fs/binfmt_misc"))
}

/// Reads `specs` and the locks beside them (merged).
pub fn load(
    specs: &[PathBuf],
) -> Result<(spec::model::Spec, Option<crate::lockfile::Lock>), BuildError> {
    let spec = spec::load(specs)?;
    let lock = resolve::load_locks(specs, &spec)?;
    Ok((spec, lock))
}

/// The plan of `spec` with `lock` and the host facts over `store`: what every verb plans with,
/// so all compute the same keys. Fails with every missing host tool at once.
pub fn plan_of(
    store: &Store,
    spec: &spec::model::Spec,
    lock: Option<&crate::lockfile::Lock>,
) -> Result<Plan, BuildError> {
    let facts = HostFacts::new(store);
    let plan = crate::plan::plan_locked(spec, &facts, lock)?;
    let missing = facts.into_missing();
    if !missing.is_empty() {
        return Err(BuildError::MissingTools(missing));
    }
    Ok(plan)
}

/// Opens (or creates) the store at `dir`.
pub fn open_store(dir: &Path) -> Result<Store, BuildError> {
    Store::open(dir).map_err(|source| BuildError::Store {
        dir: dir.to_path_buf(),
        source,
    })
}

/// Whether the step's result is in the store and whole, changing nothing: a damaged record is
/// left for the build's own lookup to drop and report.
pub fn cached(store: &Store, key: &StepKey) -> bool {
    matches!(store.has_complete_record(key), Ok(true))
}

/// What the steps that must run as root are run for, for the message when imgspec is not root.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RootFor {
    Build,
    Lock,
}

/// Fails when imgspec is not root and one of `to_run` needs root.
pub fn needs_root(plan: &Plan, to_run: &[StepId], verb: RootFor) -> Result<(), BuildError> {
    if crate::steps::is_root() {
        return Ok(());
    }
    let mut steps: Vec<String> = to_run
        .iter()
        .filter(|&&i| plan.steps[i].action.needs_root())
        .map(|&i| plan.steps[i].label.clone())
        .collect();
    if verb == RootFor::Lock {
        steps.sort_unstable();
        steps.dedup();
    }
    if steps.is_empty() {
        return Ok(());
    }
    Err(BuildError::NeedsRoot { steps, verb })
}

/// The steps a build of `targets` would run (not in the cache, needed by something not cached;
/// a step a remote cache has a record of counts as cached).
pub fn steps_to_run(store: &Store, tiers: &Tiers, plan: &Plan, targets: &[StepId]) -> Vec<StepId> {
    let on_remote = |key: &StepKey| tiers.has_step(key);
    let mut seen = vec![false; plan.steps.len()];
    let mut out = Vec::new();
    let mut stack = targets.to_vec();
    while let Some(id) = stack.pop() {
        let key = &plan.steps[id].key;
        if std::mem::replace(&mut seen[id], true) || cached(store, key) || on_remote(key) {
            continue;
        }
        out.push(id);
        stack.extend(&plan.steps[id].inputs);
    }
    out
}

/// Each step of the plan once: (key, label), in plan order.
pub fn unique_steps(plan: &Plan) -> Vec<(StepKey, String)> {
    let mut seen = std::collections::BTreeSet::new();
    plan.steps
        .iter()
        .filter(|s| seen.insert(s.key))
        .map(|s| (s.key, s.label.clone()))
        .collect()
}
