//! The run of a build: plan → pre-flight → exec → outputs → last-build record; and the one
//! place an [`Executor`] is made.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use imgspec_cache::{Store, Tiers};

use super::{BuildError, Feedback, Session};
use crate::exec::{error_lines, Event, Executor, Outcome, Reporter};
use crate::outdir::Written;
use crate::plan::{ImagePlan, Plan, StepId};
use crate::runner::HostRunner;

/// How a verb runs steps: every [`Executor`] is made from one of these by [`executor`].
pub struct RunOptions<'a> {
    /// At most this many steps at once (at least one).
    pub jobs: usize,
    pub reporter: &'a dyn Reporter,
    /// Set on Ctrl-C: no new step starts.
    pub cancel: &'a AtomicBool,
    /// Steps run even when their result is cached (`imgspec lock --update`).
    pub fresh: &'a [StepId],
    /// The remote caches after the local store, in order, each read-only or read-write
    /// ([`Tiers::none`] for verbs that never fetch or upload: lock, verify).
    pub tiers: &'a Tiers,
}

/// The executor of `o` over `store` (the session's, or a scratch store of `verify`), running
/// commands on this host.
pub fn executor<'a>(store: &'a Store, o: &RunOptions<'a>) -> Executor<'a> {
    Executor {
        store,
        runner: &HostRunner,
        reporter: o.reporter,
        jobs: o.jobs.max(1),
        cancel: o.cancel,
        fresh: o.fresh,
        tiers: o.tiers,
    }
}

/// What to build and where its outputs go.
pub struct BuildRequest<'a> {
    /// Outputs go to `out_dir/IMAGE/`.
    pub out_dir: &'a Path,
    /// Only these images (all of the specs' when empty).
    pub images: &'a [String],
}

/// What a finished build did, for the summary; [`BuildReport::error`] when it failed.
pub struct BuildReport {
    /// Per image written: its files (and whether each was written or already right).
    pub images: Vec<(String, Vec<Written>)>,
    pub built: usize,
    /// Steps of the images that did not have to run.
    pub up_to_date: usize,
    pub from_remote: usize,
    pub failed: usize,
    pub seconds: f64,
    failures: Option<String>,
}

impl BuildReport {
    /// The failed steps (each with its log) and the images not built, when there are any.
    pub fn error(&self) -> Option<BuildError> {
        self.failures.clone().map(BuildError::Failed)
    }
}

/// How many times one build rebuilds output steps whose blobs were found damaged while the
/// output folder was written (each time another blob: a disk that keeps damaging what is
/// written to it is not worked around forever).
const MAX_OUTPUT_HEALS: usize = 4;

/// Builds the images of `session` that `req` names: the pre-flight (see
/// [`Session::preflight`]), the steps, then each image's folder in `req.out_dir`, all or
/// nothing, and the last-build record that `imgspec plan` explains changes with.
pub fn build(
    session: &Session,
    o: &RunOptions,
    req: &BuildRequest,
    feedback: &dyn Feedback,
) -> Result<BuildReport, BuildError> {
    let plan = session.plan()?;
    for name in req.images {
        if plan.image(name).is_none() {
            return Err(BuildError::NoImage {
                name: name.clone(),
                known: plan.images.iter().map(|i| i.name.clone()).collect(),
            });
        }
    }
    let images: Vec<&ImagePlan> = plan
        .images
        .iter()
        .filter(|i| req.images.is_empty() || req.images.contains(&i.name))
        .collect();
    let targets: Vec<StepId> = images.iter().flat_map(|i| i.outputs.clone()).collect();
    let (_, later) = session.preflight_overlapped(&plan, &targets, o.tiers, feedback, o.cancel)?;

    let exec = executor(&session.store, o);
    let t = std::time::Instant::now();
    let mut outcome = match later {
        None => exec.run(&plan, &targets),
        Some(later) => {
            // The bases build while the files of the steps after them download; then the
            // whole build runs, the bases cached.
            let bases = later.bases.clone();
            let (first, fetched) = std::thread::scope(|s| {
                let fetching = s.spawn(|| later.fetch(session, feedback, o.cancel));
                let first = exec.run(&plan, &bases);
                let fetched = fetching.join().unwrap_or_else(|_| {
                    Err(BuildError::internal(std::io::Error::other(
                        "the fetch of locked files panicked",
                    )))
                });
                (first, fetched)
            });
            if first.interrupted {
                return Err(BuildError::Interrupted);
            }
            fetched?;
            let mut outcome = first;
            if outcome.ok() {
                outcome.absorb(exec.run(&plan, &targets));
            }
            outcome
        }
    };
    let mut failed_images = Vec::new();
    let mut summary = Vec::new();
    let mut heals = 0;
    for img in &images {
        let dir = req.out_dir.join(&img.name);
        let written = loop {
            if outcome.interrupted {
                return Err(BuildError::Interrupted);
            }
            let outs: Option<Vec<_>> = img.outputs.iter().map(|i| outcome.outputs.get(i)).collect();
            let Some(outs) = outs else {
                break None;
            };
            let e = match crate::outdir::materialise(&session.store, &outs, &dir) {
                Ok(w) => break Some(w),
                Err(e) => e,
            };
            // A damaged blob of an output step: its result is a miss after all. The step is
            // built again and the folder written then (the old one is still whole).
            let again = if heals < MAX_OUTPUT_HEALS {
                heal_outputs(&session.store, &plan, img, &dir, &outcome, &e, o.reporter)
            } else {
                Vec::new()
            };
            if again.is_empty() {
                return Err(BuildError::internal(e));
            }
            heals += 1;
            let rerun = exec.run(&plan, &again);
            outcome.absorb(rerun);
        };
        let Some(written) = written else {
            failed_images.push(img.name.clone());
            continue;
        };
        for &id in &img.steps {
            let s = &plan.steps[id];
            let parts = serde_json::to_string(&s.parts).map_err(BuildError::internal)?;
            session
                .store
                .set_last_build(&img.name, &s.name_in(&img.name), &s.key, &parts)
                .map_err(BuildError::internal)?;
        }
        summary.push((img.name.clone(), written));
    }
    let seconds = t.elapsed().as_secs_f64();
    // Up to date: every step of the images that did not have to run (a cached output step
    // makes everything it was made from up to date without even looking).
    let mut all: Vec<StepId> = images.iter().flat_map(|i| i.steps.clone()).collect();
    all.sort_unstable();
    all.dedup();
    let up_to_date = all.len() - outcome.built.len() - outcome.failed.len() - outcome.skipped.len();
    let failures = (!outcome.ok() || !failed_images.is_empty()).then(|| {
        let mut msg = failures(&plan, &outcome);
        if !failed_images.is_empty() {
            msg.push(format!("images not built: {}", failed_images.join(", ")));
        }
        msg.join("\n")
    });
    Ok(BuildReport {
        images: summary,
        built: outcome.built.len(),
        up_to_date,
        from_remote: outcome.from_remote.len(),
        failed: outcome.failed.len(),
        seconds,
        failures,
    })
}

/// Drops the records of `img`'s output steps that reference the blob `e` found damaged (and
/// the blob itself), saying so; returns those steps, to be built again (none when `e` is not
/// about a damaged blob of theirs).
fn heal_outputs(
    store: &Store,
    plan: &Plan,
    img: &ImagePlan,
    dir: &Path,
    outcome: &Outcome,
    e: &crate::outdir::OutputError,
    rep: &dyn Reporter,
) -> Vec<StepId> {
    let Some(d) = e.damaged_blob() else {
        return Vec::new();
    };
    let d = &d;
    let steps: Vec<StepId> = img
        .outputs
        .iter()
        .copied()
        .filter(|i| {
            outcome
                .outputs
                .get(i)
                .is_some_and(|o| store.references_blob(o, d))
        })
        .collect();
    if steps.is_empty() || store.discard_damaged_blob(d).is_err() {
        return Vec::new();
    }
    for &id in &steps {
        let step = &plan.steps[id];
        if let Some(o) = outcome.outputs.get(&id) {
            let _ = store.drop_record(&step.key, o);
        }
        rep.event(&Event::CacheDamaged {
            key: step.key.to_hex(),
            kind: step.kind().into(),
            label: step.label.clone(),
            blob: Some(d.to_hex()),
            problem: error_lines(e),
            found_by: Some(format!("{}/", dir.display())),
        });
    }
    steps
}

/// One line (and its log) per failed step: what a failed build, lock or verify says.
pub fn failures(plan: &Plan, outcome: &Outcome) -> Vec<String> {
    outcome
        .failed
        .iter()
        .map(|f| {
            format!(
                "step `{}` failed: {}\n  log: {}",
                plan.steps[f.step].label,
                error_lines(&f.error),
                f.log.display()
            )
        })
        .collect()
}
