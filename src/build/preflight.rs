//! Locked packages before a build: every `.deb` a step that will run installs is in the
//! cache's deb store, or the build stops, naming each one that is neither there nor on the
//! mirror. Before any step, except the files of the steps after a base (`packages`) when the
//! base's own must be fetched too: those download while the base builds ([`Deferred`]), and
//! only the base may have run when one of them is missing (its result stays cached).
//!
//! Ctrl-C (the build's cancel flag) stops a fetch: no new download starts, the ones on the way
//! finish (a `.deb` is whole or absent), and the build ends as interrupted.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

use rayon::prelude::*;

use super::{BuildError, Feedback, Session};
use crate::distro::{self, FetchFailure};
use crate::lockfile::LockedDeb;
use crate::plan::{Plan, StepId};
use crate::spec::model::{Base, Layer};
use crate::steps::Action;

/// The lock's packages of a step, if it is pinned, and the family that installs them.
fn locked_debs(action: &Action) -> Option<(&'static dyn distro::Family, &[LockedDeb])> {
    match action {
        Action::Bootstrap(b) => b.locked.as_ref().map(|l| (b.family, l.debs.as_slice())),
        Action::Packages(p) => p.locked.as_ref().map(|l| (p.family, l.debs.as_slice())),
        _ => None,
    }
}

/// Suite → archive URI, from the sources the image's base uses (the spec's mirror, else the
/// host's apt sources), as its distribution family reads them.
fn mirrors_of(session: &Session, image: &str) -> Result<BTreeMap<String, String>, String> {
    let img = session
        .spec
        .images
        .iter()
        .find(|i| i.name == image)
        .ok_or_else(|| format!("no image `{image}`"))?;
    let Some(Layer::Base(Base::Debian(d))) = img.layers.first() else {
        return Err(format!(
            "image `{image}` has no Debian base to take a mirror from"
        ));
    };
    distro::family_of(img).mirrors(d)
}

/// Locked files fetched at once. More do not help: 12 took as long as 4 (25 s for the 160
/// files of `specs/debian-efi.kdl`), the mirror's bandwidth is the limit.
const FETCHES_AT_ONCE: usize = 4;

/// A locked file to fetch: the package, the step's label, its URL or why there is none, and
/// the family that keeps it.
type Wanted = (
    LockedDeb,
    String,
    Result<String, String>,
    &'static dyn distro::Family,
);

/// Every locked `.deb` that the steps in `to_run` install is in the cache afterwards (fetched
/// from the mirror, four at a time, `feedback` told how many and their bytes), or none of them
/// runs.
pub(super) fn fetch_locked(
    session: &Session,
    plan: &Plan,
    to_run: &[StepId],
    feedback: &dyn Feedback,
    cancel: &AtomicBool,
) -> Result<(), BuildError> {
    fetch(session, wanted(session, plan, to_run), feedback, cancel)
}

/// The locked files of the steps after the bases, left to fetch while the bases build.
pub struct Deferred {
    wanted: BTreeMap<String, Wanted>,
    /// The base steps to build first.
    pub bases: Vec<StepId>,
}

impl Deferred {
    /// Fetches the files; an error names each one that is neither in the cache nor on the
    /// mirror.
    pub fn fetch(
        self,
        session: &Session,
        feedback: &dyn Feedback,
        cancel: &AtomicBool,
    ) -> Result<(), BuildError> {
        fetch(session, self.wanted, feedback, cancel)
    }
}

/// Like [`fetch_locked`], but when both the bases of `to_run` and the steps after them have
/// files to fetch, only the bases' are fetched now: the others are returned, for the caller to
/// fetch while it builds the bases.
pub(super) fn fetch_locked_overlapped(
    session: &Session,
    plan: &Plan,
    to_run: &[StepId],
    feedback: &dyn Feedback,
    cancel: &AtomicBool,
) -> Result<Option<Deferred>, BuildError> {
    let is_base = |id: &StepId| matches!(plan.steps[*id].action, Action::Bootstrap(_));
    let (bases, rest): (Vec<StepId>, Vec<StepId>) = to_run.iter().copied().partition(is_base);
    let first = wanted(session, plan, &bases);
    let mut later = wanted(session, plan, &rest);
    later.retain(|sha, _| !first.contains_key(sha));
    if first.is_empty() || later.is_empty() {
        fetch_locked(session, plan, to_run, feedback, cancel)?;
        return Ok(None);
    }
    fetch(session, first, feedback, cancel)?;
    Ok(Some(Deferred {
        wanted: later,
        bases,
    }))
}

/// The locked files the steps of `steps` install that the cache does not have yet.
fn wanted(session: &Session, plan: &Plan, steps: &[StepId]) -> BTreeMap<String, Wanted> {
    let root = session.store.root();
    let mut wanted: BTreeMap<String, Wanted> = BTreeMap::new();
    let mut mirrors: BTreeMap<String, Result<BTreeMap<String, String>, String>> = BTreeMap::new();
    for &id in steps {
        let step = &plan.steps[id];
        let Some((family, locked)) = locked_debs(&step.action) else {
            continue;
        };
        let image = &step.uses[0].0;
        for d in locked {
            if family.has_locked(root, &d.sha256) || wanted.contains_key(&d.sha256) {
                continue;
            }
            let m = mirrors
                .entry(image.clone())
                .or_insert_with(|| mirrors_of(session, image));
            let url = match m {
                Ok(m) => m
                    .get(&d.suite)
                    .map(|uri| format!("{uri}/{}", d.filename))
                    .ok_or_else(|| format!("no mirror of suite `{}` in the sources", d.suite)),
                Err(e) => Err(e.clone()),
            };
            wanted.insert(
                d.sha256.clone(),
                (d.clone(), step.label.clone(), url, family),
            );
        }
    }
    wanted
}

fn fetch(
    session: &Session,
    wanted: BTreeMap<String, Wanted>,
    feedback: &dyn Feedback,
    cancel: &AtomicBool,
) -> Result<(), BuildError> {
    let root = session.store.root();
    if wanted.is_empty() {
        return Ok(());
    }
    feedback.notice(&format!(
        "fetching {} locked package{} missing from the cache",
        wanted.len(),
        if wanted.len() == 1 { "" } else { "s" }
    ));
    let total: u64 = wanted.values().map(|(d, _, _, _)| d.size).sum();
    let transfer = feedback.transfer("locked packages", Some(total));
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(FETCHES_AT_ONCE)
        .build()
        .map_err(BuildError::internal)?;
    let failed: Vec<(bool, String)> = pool.install(|| {
        wanted
            .par_iter()
            .filter_map(|(sha, (d, label, url, family))| {
                if cancel.load(Ordering::SeqCst) {
                    return None; // not started: the build is stopping
                }
                let r = match url {
                    Ok(url) => family.fetch_locked(root, url, sha, &|n| transfer.add(n)),
                    Err(e) => Err(FetchFailure::Gone(e.clone())),
                };
                r.err().map(|why| {
                    let (gone, why) = match why {
                        FetchFailure::Gone(w) => (true, w),
                        FetchFailure::Unreachable(w) | FetchFailure::Local(w) => (false, w),
                    };
                    let line = format!(
                        "`{}` {} ({}) of step `{label}`: {why}",
                        d.name, d.version, d.arch
                    );
                    (gone, line)
                })
            })
            .collect()
    });
    drop(transfer);
    if cancel.load(Ordering::SeqCst) {
        return Err(BuildError::Interrupted);
    }
    if failed.is_empty() {
        return Ok(());
    }
    let (gone, unfetched): (Vec<_>, Vec<_>) = failed.into_iter().partition(|(g, _)| *g);
    let sorted = |v: Vec<(bool, String)>| {
        let mut v: Vec<String> = v.into_iter().map(|(_, l)| l).collect();
        v.sort();
        v
    };
    Err(BuildError::LockedMissing {
        gone: sorted(gone),
        unfetched: sorted(unfetched),
    })
}
