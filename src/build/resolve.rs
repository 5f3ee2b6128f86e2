//! Lock files through the session: reading the locks beside the specs, and `imgspec lock`'s
//! resolution. Resolution is a build of the steps that install packages, unlocked: each records
//! what apt really downloaded ([`crate::distro::record_installed`]). A step already in the cache
//! answers from the cache (what it installed when it was built); `--update` builds them again
//! from the mirror as it is now.
//! A set that dnf installed (an imported RPM-family tree, [`crate::distro::rpm`]) cannot be locked
//! yet: the lock says so and writes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use imgspec_cache::{Store, Tiers};

use super::{
    needs_root, open_store, run, steps_to_run, BuildError, Feedback, RootFor, RunOptions, Session,
};
use crate::distro::DEBS_META;
use crate::lockfile::{lock_path, parse_debs, Lock, LockSet};
use crate::plan::{Plan, StepId};
use crate::spec;
use crate::spec::model::{Base, Layer};
use crate::steps::Action;

/// The locks beside `specs` (`SPEC.lock`), merged; `None` when no spec has one. Every image
/// that a spec with a lock declares must be in that lock (an image added since `imgspec lock`
/// is refused, not built unlocked).
pub fn load_locks(
    specs: &[PathBuf],
    model: &spec::model::Spec,
) -> Result<Option<Lock>, BuildError> {
    let mut all: Option<Lock> = None;
    for s in specs {
        let path = lock_path(s);
        let Some(l) = Lock::load(&path)? else {
            continue;
        };
        let this = s.canonicalize().ok();
        for img in &model.images {
            let declared_here = this.is_some() && img.file.canonicalize().ok() == this;
            if declared_here && !l.has_image(&img.name) && installs_packages(img) {
                return Err(BuildError::NotInLock {
                    image: img.name.clone(),
                    spec: s.clone(),
                    lock: path,
                });
            }
        }
        all.get_or_insert_with(Lock::default).extend(l);
    }
    Ok(all)
}

fn installs_packages(img: &spec::model::Image) -> bool {
    img.layers
        .iter()
        .any(|l| matches!(l, Layer::Base(Base::Debian(_)) | Layer::Packages(_)))
}

/// A step that installs packages, as a set of the lock to be.
struct Wanted {
    id: StepId,
    step: String,
    images: Vec<String>,
    request: String,
}

fn wanted_sets(plan: &Plan) -> Vec<Wanted> {
    let mut out: Vec<Wanted> = Vec::new();
    for img in &plan.images {
        for &id in &img.steps {
            let s = &plan.steps[id];
            let request = match &s.action {
                Action::Bootstrap(b) => crate::lockfile::base_request(&b.spec),
                Action::Packages(p) => crate::lockfile::packages_request(&p.packages),
                _ => continue,
            };
            let step = s.name_in(&img.name);
            match out.iter_mut().find(|w| w.id == id && w.step == step) {
                Some(w) => w.images.push(img.name.clone()),
                None => out.push(Wanted {
                    id,
                    step,
                    images: vec![img.name.clone()],
                    request,
                }),
            }
        }
    }
    out
}

/// What `imgspec lock` resolves again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Update {
    /// Only the sets the lock lacks or that the spec changed.
    Missing,
    /// Every set, from the mirror as it is now.
    All,
    /// These packages (and what their new versions bring in); the rest stays pinned.
    Only(Vec<String>),
}

impl Update {
    pub fn from_arg(arg: Option<Vec<String>>) -> Update {
        match arg {
            None => Update::Missing,
            Some(p) if p.is_empty() => Update::All,
            Some(p) => Update::Only(p),
        }
    }
}

/// `--update PKG…`: a set of the fresh resolution `lock` that installs none of the named
/// packages is the `old` lock's set again; in the others, the packages not named take their
/// entry of the old set back when it has one (same name and architecture), and new ones (what
/// the named packages' new versions need) stay. Returns how many entries differ from the old
/// lock.
fn pin_others(lock: &mut Lock, old: &Lock, named: &[String]) -> usize {
    let mut changed = 0;
    for s in &mut lock.sets {
        let old_set = s.images.iter().find_map(|i| old.set_for(i, &s.step));
        let touched = s.debs.iter().any(|d| named.contains(&d.name));
        if let (false, Some(o)) = (touched, old_set) {
            s.debs = o.debs.clone();
            continue;
        }
        for d in &mut s.debs {
            let before =
                old_set.and_then(|o| o.debs.iter().find(|o| o.name == d.name && o.arch == d.arch));
            match before {
                Some(o) if !named.contains(&d.name) => *d = o.clone(),
                Some(o) if o == d => {}
                _ => changed += 1,
            }
        }
        s.debs.sort();
    }
    changed
}

/// What `imgspec lock` wrote (or found up to date).
pub struct LockWritten {
    pub path: PathBuf,
    /// False when the file already held this text.
    pub changed: bool,
    pub sets: usize,
    pub packages: usize,
    /// Distinct `.deb` files.
    pub files: usize,
    /// Sets resolved now (the others were kept from the old lock).
    pub resolved: usize,
    pub seconds: f64,
}

/// `imgspec lock SPEC`: resolves the package sets `update` asks for (building their steps
/// unlocked in the store at `cache_dir`), keeps the rest, and writes `SPEC.lock` (beside, then
/// renamed). `feedback` hears what a partial update changes before it is checked.
pub fn lock_spec(
    cache_dir: &Path,
    spec_path: &Path,
    update: &Update,
    o: &RunOptions,
    feedback: &dyn Feedback,
) -> Result<LockWritten, BuildError> {
    let t = std::time::Instant::now();
    let path = lock_path(spec_path);
    let session = Session {
        spec: spec::load(&[spec_path.to_path_buf()])?,
        store: open_store(cache_dir)?,
        lock: None,
    };
    // A broken lock is replaced by --update, and refused otherwise.
    let old = match Lock::load(&path) {
        Ok(l) => l.unwrap_or_default(),
        Err(_) if *update == Update::All => Lock::default(),
        Err(e) => return Err(e.into()),
    };
    if matches!(update, Update::Only(_)) && old.sets.is_empty() {
        return Err(BuildError::NothingPinned {
            lock: path,
            spec: spec_path.to_path_buf(),
        });
    }
    let plan = session.plan()?;
    let wanted = wanted_sets(&plan);
    if wanted.is_empty() {
        return Err(BuildError::NothingToLock {
            spec: spec_path.to_path_buf(),
        });
    }
    // Sets kept as they are: everything without --update, when the spec still asks for it.
    let keep = |w: &Wanted| -> Option<LockSet> {
        if *update != Update::Missing {
            return None;
        }
        let set = w
            .images
            .iter()
            .map(|i| old.set_for(i, &w.step))
            .collect::<Option<Vec<_>>>()?;
        let first = set.first()?;
        (set.iter().all(|s| *s == *first) && first.request == w.request).then(|| LockSet {
            step: w.step.clone(),
            images: w.images.clone(),
            request: w.request.clone(),
            debs: first.debs.clone(),
            origin: None,
        })
    };
    let mut lock = Lock::default();
    let mut resolve: Vec<&Wanted> = Vec::new();
    for w in &wanted {
        match keep(w) {
            Some(s) => {
                lock.sets.push(s);
                // A set kept from the old lock keeps the date it was resolved at.
                lock.epoch = lock.epoch.max(old.epoch);
            }
            None => resolve.push(w),
        }
    }
    let targets: Vec<StepId> = resolve.iter().map(|w| w.id).collect();
    let fresh: Vec<StepId> = match update {
        Update::Missing => vec![],
        Update::All | Update::Only(_) => targets.clone(),
    };
    if !targets.is_empty() {
        let o = RunOptions {
            fresh: &fresh,
            ..*o
        };
        let outputs = resolve_steps(&session, &plan, &targets, &o)?;
        for w in &resolve {
            // A set dnf installed (an RPM-family tree) has no `.deb` lines to pin.
            if let Some(dnf) = outputs
                .get(&w.id)
                .and_then(|o| o.meta.get(crate::distro::rpm::MANAGER_META))
            {
                return Err(BuildError::Resolve(format!(
                    "`{}` installs with {dnf} (the image is of the RPM family): imgspec cannot \
                     lock dnf package sets yet; build the spec without a lock",
                    plan.steps[w.id].label
                )));
            }
            let text = outputs
                .get(&w.id)
                .and_then(|o| o.meta.get(DEBS_META))
                .ok_or_else(|| {
                    BuildError::Internal(format!(
                        "step `{}` did not record what it installed",
                        plan.steps[w.id].label
                    ))
                })?;
            let debs = parse_debs(text).map_err(|e| {
                BuildError::Internal(format!(
                    "step `{}` recorded unreadable packages: {e}",
                    plan.steps[w.id].label
                ))
            })?;
            lock.sets.push(LockSet {
                step: w.step.clone(),
                images: w.images.clone(),
                request: w.request.clone(),
                debs,
                origin: None,
            });
            let date = outputs
                .get(&w.id)
                .and_then(|o| o.meta.get(crate::distro::ARCHIVE_DATE_META))
                .and_then(|d| d.parse::<i64>().ok());
            lock.epoch = lock.epoch.max(date);
        }
    }
    lock.sort();
    if let Update::Only(named) = update {
        let known: BTreeSet<&str> = lock
            .sets
            .iter()
            .flat_map(|s| s.debs.iter().map(|d| d.name.as_str()))
            .collect();
        let unknown: Vec<String> = named
            .iter()
            .filter(|p| !known.contains(p.as_str()))
            .map(|p| format!("`{p}`"))
            .collect();
        if !unknown.is_empty() {
            return Err(BuildError::UnknownPackages(unknown));
        }
        let changed = pin_others(&mut lock, &old, named);
        feedback.notice(&format!(
            "{changed} package{} of the lock change{}; checking that the pinned rest installs \
             with them",
            if changed == 1 { "" } else { "s" },
            if changed == 1 { "s" } else { "" },
        ));
        check_locked(
            cache_dir,
            spec_path,
            &lock,
            &RunOptions { fresh: &[], ..*o },
            feedback,
        )?;
    }
    let text = lock.render();
    let changed = std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str());
    if changed {
        let tmp = path.with_extension("lock.tmp");
        std::fs::write(&tmp, &text)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|source| BuildError::Write {
                path: path.clone(),
                source,
            })?;
    }
    let packages: usize = lock.sets.iter().map(|s| s.debs.len()).sum();
    let unique: BTreeSet<&str> = lock
        .sets
        .iter()
        .flat_map(|s| s.debs.iter().map(|d| d.sha256.as_str()))
        .collect();
    Ok(LockWritten {
        path,
        changed,
        sets: lock.sets.len(),
        packages,
        files: unique.len(),
        resolved: resolve.len(),
        seconds: t.elapsed().as_secs_f64(),
    })
}

/// Builds the package-installing steps of `spec_path` with `lock` (a partial update): apt in
/// a repository of exactly the locked files must install them all, or the update is refused.
fn check_locked(
    cache_dir: &Path,
    spec_path: &Path,
    lock: &Lock,
    o: &RunOptions,
    feedback: &dyn Feedback,
) -> Result<(), BuildError> {
    let session = Session {
        spec: spec::load(&[spec_path.to_path_buf()])?,
        store: open_store(cache_dir)?,
        lock: Some(lock.clone()),
    };
    let plan = session.plan()?;
    let targets: Vec<StepId> = wanted_sets(&plan).iter().map(|w| w.id).collect();
    let to_run = steps_to_run(&session.store, &Tiers::none(), &plan, &targets);
    super::preflight::fetch_locked(&session, &plan, &to_run, feedback, o.cancel)?;
    resolve_steps(&session, &plan, &targets, o).map_err(|e| match e {
        BuildError::Resolve(m) => BuildError::PartialUpdate(m),
        other => other,
    })?;
    Ok(())
}

/// Builds `targets` unlocked (`o.fresh` ones even when cached) and returns every output.
fn resolve_steps(
    session: &Session,
    plan: &Plan,
    targets: &[StepId],
    o: &RunOptions,
) -> Result<BTreeMap<StepId, imgspec_cache::StepOutput>, BuildError> {
    let none = Tiers::none();
    let mut to_run = steps_to_run(&session.store, &none, plan, targets);
    to_run.extend(o.fresh);
    needs_root(plan, &to_run, RootFor::Lock)?;
    // Resolution never fetches or uploads.
    let o = RunOptions { tiers: &none, ..*o };
    let outcome = run::executor(&session.store, &o).run(plan, targets);
    if outcome.interrupted {
        return Err(BuildError::Interrupted);
    }
    if !outcome.ok() {
        return Err(BuildError::Resolve(
            run::failures(plan, &outcome).join("\n"),
        ));
    }
    Ok(outcome.outputs)
}

/// `cache gc SPEC…`: removes the `.deb` files (and their control fields) that neither `locks`
/// (the specs' lock files) nor any step result left in the store names. Returns how many files
/// went and their bytes.
pub fn gc_debs(store: &Store, locks: &Lock) -> Result<(usize, u64), BuildError> {
    let mut keep: BTreeSet<String> = locks
        .sets
        .iter()
        .flat_map(|s| s.debs.iter().map(|d| d.sha256.clone()))
        .collect();
    for r in store.list().map_err(BuildError::internal)? {
        if let Some(text) = r.output.meta.get(DEBS_META) {
            let debs = parse_debs(text).map_err(|e| {
                BuildError::Internal(format!("step `{}` has unreadable packages: {e}", r.name))
            })?;
            keep.extend(debs.into_iter().map(|d| d.sha256));
        }
    }
    let (mut n, mut bytes) = (0, 0);
    for family in crate::distro::FAMILIES {
        let (fn_, fb) = family.gc_locked(store.root(), &keep);
        n += fn_;
        bytes += fb;
    }
    Ok((n, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lockfile::LockedDeb;

    fn deb(name: &str, version: &str) -> LockedDeb {
        LockedDeb {
            name: name.into(),
            arch: "amd64".into(),
            version: version.into(),
            sha256: "0".repeat(64),
            size: 1,
            suite: "bookworm".into(),
            priority: String::new(),
            filename: format!("pool/{name}_{version}.deb"),
        }
    }

    fn set(step: &str, debs: Vec<LockedDeb>) -> LockSet {
        LockSet {
            step: step.into(),
            images: vec!["a".into()],
            request: "r".into(),
            debs,
            origin: None,
        }
    }

    #[test]
    fn a_partial_update_keeps_the_rest_pinned() {
        let old = Lock {
            epoch: None,
            image_epochs: Default::default(),
            sets: vec![
                set("base", vec![deb("libc6", "1"), deb("apt", "1")]),
                set("packages:x", vec![deb("less", "1"), deb("libtinfo", "1")]),
            ],
        };
        // The mirror moved on: everything is newer, and less now needs libnew.
        let mut fresh = Lock {
            epoch: None,
            image_epochs: Default::default(),
            sets: vec![
                set(
                    "base",
                    vec![deb("libc6", "2"), deb("apt", "2"), deb("libz", "2")],
                ),
                set(
                    "packages:x",
                    vec![deb("less", "2"), deb("libtinfo", "2"), deb("libnew", "2")],
                ),
            ],
        };
        let changed = pin_others(&mut fresh, &old, &["less".into()]);
        assert_eq!(
            fresh.sets[0], old.sets[0],
            "a set without `less` stays as it was"
        );
        let got: Vec<(&str, &str)> = fresh.sets[1]
            .debs
            .iter()
            .map(|d| (d.name.as_str(), d.version.as_str()))
            .collect();
        assert_eq!(got, [("less", "2"), ("libnew", "2"), ("libtinfo", "1")]);
        assert_eq!(changed, 2);
    }
}
