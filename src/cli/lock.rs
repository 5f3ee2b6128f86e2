//! `imgspec lock SPEC…`: resolve every package set of a spec to exact versions and write
//! `SPEC.lock`; and the lock-related parts of a build: reading the locks beside the specs and
//! the pre-flight that makes sure every locked `.deb` a build will install is in the cache
//! (fetched from the mirror when it is not) before any step starts.
//!
//! Resolution is a build of the steps that install packages, unlocked: each records what apt
//! really downloaded ([`crate::distro::record_installed`]). A step already in the cache answers
//! from the cache (what it installed when it was built); `--update` builds them again from
//! the mirror as it is now.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::{
    error_chain, internal, need_specs, open_store, reporter, step_name, steps_to_run, CliError,
    Context,
};
use crate::distro::{self, DEBS_META};
use crate::exec::Executor;
use crate::lock::{lock_path, parse_debs, Lock, LockSet, LockedDeb};
use crate::plan::{Plan, StepId};
use crate::runner::HostRunner;
use crate::spec;
use crate::spec::model::{Base, Layer};
use crate::steps::{is_root, Action};

/// The locks beside `specs` (`SPEC.lock`), merged; `None` when no spec has one. Every image
/// that a spec with a lock declares must be in that lock (an image added since `imgspec lock`
/// is refused, not built unlocked).
pub(super) fn load_locks(
    specs: &[PathBuf],
    model: &spec::model::Spec,
) -> Result<Option<Lock>, CliError> {
    let mut all: Option<Lock> = None;
    for s in specs {
        let path = lock_path(s);
        let Some(l) = Lock::load(&path).map_err(lock_error)? else {
            continue;
        };
        let this = s.canonicalize().ok();
        for img in &model.images {
            let declared_here = this.is_some() && img.file.canonicalize().ok() == this;
            if declared_here && !l.has_image(&img.name) && installs_packages(img) {
                return Err(CliError::Usage {
                    message: format!(
                        "image `{}` of `{}` is not in its lock `{}`",
                        img.name,
                        s.display(),
                        path.display()
                    ),
                    help: Some(format!("lock it with `imgspec lock {}`", s.display())),
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

fn lock_error(e: crate::lock::LockError) -> CliError {
    CliError::Usage {
        message: error_chain(&e),
        help: Some(
            "fix that line, or write the lock again with `imgspec lock --update SPEC`".into(),
        ),
    }
}

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
fn mirrors_of(ctx: &Context, image: &str) -> Result<BTreeMap<String, String>, String> {
    let img = ctx
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

/// Every locked `.deb` that the steps in `to_run` install is in the cache afterwards, or the
/// build stops here, before any step, naming each package that is neither in the cache nor on
/// the mirror.
pub(super) fn preflight(ctx: &Context, plan: &Plan, to_run: &[StepId]) -> Result<(), CliError> {
    let root = ctx.store.root();
    // sha256 → (package, step label, URL or why there is none, the family that stores it)
    #[allow(clippy::type_complexity)]
    let mut wanted: BTreeMap<
        String,
        (
            LockedDeb,
            String,
            Result<String, String>,
            &'static dyn distro::Family,
        ),
    > = BTreeMap::new();
    let mut mirrors: BTreeMap<String, Result<BTreeMap<String, String>, String>> = BTreeMap::new();
    for &id in to_run {
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
                .or_insert_with(|| mirrors_of(ctx, image));
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
    if wanted.is_empty() {
        return Ok(());
    }
    eprintln!(
        "[{}] fetching {} locked package{} missing from the cache",
        super::report::clock(),
        wanted.len(),
        if wanted.len() == 1 { "" } else { "s" }
    );
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(4)
        .build()
        .map_err(internal)?;
    let mut failed: Vec<String> = pool.install(|| {
        wanted
            .par_iter()
            .filter_map(|(sha, (d, label, url, family))| {
                let r = match url {
                    Ok(url) => family.fetch_locked(root, url, sha),
                    Err(e) => Err(e.clone()),
                };
                r.err().map(|why| {
                    format!(
                        "`{}` {} ({}) of step `{label}`: {why}",
                        d.name, d.version, d.arch
                    )
                })
            })
            .collect()
    });
    if failed.is_empty() {
        return Ok(());
    }
    failed.sort();
    Err(CliError::Environment {
        message: format!(
            "nothing was built: {} locked package{} neither in the cache nor on the mirror:\n  {}",
            failed.len(),
            if failed.len() == 1 { " is" } else { "s are" },
            failed.join("\n  ")
        ),
        help: Some(
            "the mirror has moved on and the cache does not have them: lock what the mirror has \
             now with `imgspec lock --update SPEC`"
                .into(),
        ),
    })
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
                Action::Bootstrap(b) => crate::lock::base_request(&b.spec),
                Action::Packages(p) => crate::lock::packages_request(&p.packages),
                _ => continue,
            };
            let step = step_name(plan, id, &img.name);
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
pub(super) enum Update {
    /// Only the sets the lock lacks or that the spec changed.
    Missing,
    /// Every set, from the mirror as it is now.
    All,
    /// These packages (and what their new versions bring in); the rest stays pinned.
    Only(Vec<String>),
}

impl Update {
    pub(super) fn from_arg(arg: Option<Vec<String>>) -> Update {
        match arg {
            None => Update::Missing,
            Some(p) if p.is_empty() => Update::All,
            Some(p) => Update::Only(p),
        }
    }
}

/// `imgspec lock SPEC…`.
pub(super) fn lock(
    cache_dir: &Path,
    specs: &[PathBuf],
    update: Update,
    jobs: usize,
    json: bool,
) -> Result<(), CliError> {
    need_specs(specs)?;
    for s in specs {
        lock_one(cache_dir, s, &update, jobs, json)?;
    }
    Ok(())
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

fn lock_one(
    cache_dir: &Path,
    spec_path: &Path,
    update: &Update,
    jobs: usize,
    json: bool,
) -> Result<(), CliError> {
    let t = std::time::Instant::now();
    let path = lock_path(spec_path);
    let ctx = Context {
        spec: spec::load(&[spec_path.to_path_buf()])?,
        store: open_store(cache_dir)?,
        lock: None,
    };
    // A broken lock is replaced by --update, and refused otherwise.
    let old = match Lock::load(&path) {
        Ok(l) => l.unwrap_or_default(),
        Err(_) if *update == Update::All => Lock::default(),
        Err(e) => return Err(lock_error(e)),
    };
    if matches!(update, Update::Only(_)) && old.sets.is_empty() {
        return Err(CliError::Usage {
            message: format!("`{}` pins nothing yet", path.display()),
            help: Some(format!(
                "write it first with `imgspec lock {}`",
                spec_path.display()
            )),
        });
    }
    let plan = ctx.plan()?;
    let wanted = wanted_sets(&plan);
    if wanted.is_empty() {
        return Err(CliError::Usage {
            message: format!(
                "`{}` installs no packages: nothing to lock",
                spec_path.display()
            ),
            help: Some("a lock pins `base \"debian\"` and `packages` layers".into()),
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
        let outputs = resolve_steps(&ctx, &plan, &targets, &fresh, jobs, json)?;
        for w in &resolve {
            let text = outputs
                .get(&w.id)
                .and_then(|o| o.meta.get(DEBS_META))
                .ok_or_else(|| {
                    CliError::Internal(format!(
                        "step `{}` did not record what it installed",
                        plan.steps[w.id].label
                    ))
                })?;
            let debs = parse_debs(text).map_err(|e| {
                CliError::Internal(format!(
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
                .and_then(|o| o.meta.get(distro::ARCHIVE_DATE_META))
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
            return Err(CliError::Usage {
                message: format!("no package set installs {}", unknown.join(", ")),
                help: Some("name packages of the lock file, or give `--update` alone".into()),
            });
        }
        let changed = pin_others(&mut lock, &old, named);
        eprintln!(
            "[{}] {changed} package{} of the lock change{}; checking that the pinned rest \
             installs with them",
            super::report::clock(),
            if changed == 1 { "" } else { "s" },
            if changed == 1 { "s" } else { "" },
        );
        check_locked(cache_dir, spec_path, &lock, jobs, json)?;
    }
    let text = lock.render();
    let changed = std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str());
    if changed {
        let tmp = path.with_extension("lock.tmp");
        std::fs::write(&tmp, &text)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| CliError::Environment {
                message: format!("cannot write `{}`: {e}", path.display()),
                help: None,
            })?;
    }
    let packages: usize = lock.sets.iter().map(|s| s.debs.len()).sum();
    let unique: BTreeSet<&str> = lock
        .sets
        .iter()
        .flat_map(|s| s.debs.iter().map(|d| d.sha256.as_str()))
        .collect();
    if json {
        println!(
            "{}",
            serde_json::json!({
                "event": "lock-written",
                "path": path,
                "changed": changed,
                "sets": lock.sets.len(),
                "packages": packages,
                "files": unique.len(),
                "resolved": resolve.len(),
                "seconds": t.elapsed().as_secs_f64(),
            })
        );
    } else {
        eprintln!(
            "{} `{}`: {} sets, {} packages ({} sets resolved, {} kept) in {:.2}s",
            if changed { "wrote" } else { "up to date:" },
            path.display(),
            lock.sets.len(),
            packages,
            resolve.len(),
            lock.sets.len() - resolve.len(),
            t.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// Builds the package-installing steps of `spec_path` with `lock` (a partial update): apt in
/// a repository of exactly the locked files must install them all, or the update is refused.
fn check_locked(
    cache_dir: &Path,
    spec_path: &Path,
    lock: &Lock,
    jobs: usize,
    json: bool,
) -> Result<(), CliError> {
    let ctx = Context {
        spec: spec::load(&[spec_path.to_path_buf()])?,
        store: open_store(cache_dir)?,
        lock: Some(lock.clone()),
    };
    let plan = ctx.plan()?;
    let targets: Vec<StepId> = wanted_sets(&plan).iter().map(|w| w.id).collect();
    preflight(
        &ctx,
        &plan,
        &steps_to_run(&ctx.store, None, &plan, &targets),
    )?;
    resolve_steps(&ctx, &plan, &targets, &[], jobs, json).map_err(|e| match e {
        CliError::BuildFailed(m) => CliError::BuildFailed(format!(
            "the named packages cannot be updated with the rest pinned (the lock is left as it \
             was): name more packages, or refresh everything with `--update` alone\n{m}"
        )),
        other => other,
    })?;
    Ok(())
}

/// Builds `targets` unlocked (`fresh` ones even when cached) and returns every output.
fn resolve_steps(
    ctx: &Context,
    plan: &Plan,
    targets: &[StepId],
    fresh: &[StepId],
    jobs: usize,
    json: bool,
) -> Result<BTreeMap<StepId, imgspec_cache::StepOutput>, CliError> {
    if !is_root() {
        let mut to_run = steps_to_run(&ctx.store, None, plan, targets);
        to_run.extend(fresh);
        let mut labels: Vec<&str> = to_run
            .into_iter()
            .filter(|&i| plan.steps[i].action.needs_root())
            .map(|i| plan.steps[i].label.as_str())
            .collect();
        labels.sort_unstable();
        labels.dedup();
        if !labels.is_empty() {
            return Err(CliError::Environment {
                message: format!(
                    "resolving the packages runs these steps, which must run as root: {}",
                    labels.join(", ")
                ),
                help: Some("run imgspec as root, e.g. `sudo imgspec lock ...`".into()),
            });
        }
    }
    let cancel = super::interrupt_flag();
    let rep = reporter(json);
    let exec = Executor {
        store: &ctx.store,
        runner: &HostRunner,
        reporter: rep.as_ref(),
        jobs: jobs.max(1),
        cancel: &cancel,
        fresh,
        remote: None,
        remote_write: false,
    };
    let outcome = exec.run(plan, targets);
    if outcome.interrupted {
        return Err(CliError::Interrupted);
    }
    if !outcome.ok() {
        let msg = super::failures(plan, &outcome);
        return Err(CliError::BuildFailed(format!(
            "cannot resolve the packages:\n{}",
            msg.join("\n")
        )));
    }
    Ok(outcome.outputs)
}

/// `cache gc SPEC…`: removes the `.deb` files (and their control fields) that neither `locks`
/// (the specs' lock files) nor any step result left in the store names. Returns how many files
/// went and their bytes.
pub(super) fn gc_debs(
    store: &imgspec_cache::Store,
    locks: &Lock,
) -> Result<(usize, u64), CliError> {
    let mut keep: BTreeSet<String> = locks
        .sets
        .iter()
        .flat_map(|s| s.debs.iter().map(|d| d.sha256.clone()))
        .collect();
    for r in store.list().map_err(internal)? {
        if let Some(text) = r.output.meta.get(DEBS_META) {
            let debs = parse_debs(text).map_err(|e| {
                CliError::Internal(format!("step `{}` has unreadable packages: {e}", r.name))
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
