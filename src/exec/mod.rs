//! The executor: runs the steps a set of targets needs, every independent step at once.
//!
//! A step whose key is in the store is not run, and neither is anything only it needed. A
//! step runs in scratch space inside the store with its own log file; its output is recorded
//! in the index only after every blob it references is stored, so an interrupted or failed
//! step leaves nothing behind. A failure stops the steps that depend on it; the others go on.
//! Progress goes through the [`Reporter`] trait: the executor prints nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use imgspec_cache::{BlobDigest, Claim, RemoteError, StepOutput, StepRecord, Store, Tiers};
use serde::Serialize;

use crate::plan::{Plan, StepId};
use crate::runner::Runner;
use crate::steps::{StepContext, StepError};

/// What happens during a build, for the CLI to show.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    StepCached {
        key: String,
        kind: String,
        label: String,
        /// Where the result was found: the local store, or a remote cache (fetched, checked
        /// and recorded locally).
        source: CacheSource,
        /// The remote it came from (its URL, without credentials), when `source` is `remote`.
        #[serde(skip_serializing_if = "Option::is_none")]
        remote: Option<String>,
    },
    /// Another build (another process on the same store) is building this step; this one
    /// waits for it and then takes its result.
    StepWaiting {
        key: String,
        kind: String,
        label: String,
    },
    StepStarted {
        key: String,
        kind: String,
        label: String,
        log: PathBuf,
    },
    StepFinished {
        key: String,
        kind: String,
        label: String,
        seconds: f64,
    },
    StepFailed {
        key: String,
        kind: String,
        label: String,
        error: String,
        log: PathBuf,
    },
    StepSkipped {
        key: String,
        kind: String,
        label: String,
        because: String,
    },
    /// A remote cache cannot be used for the rest of this build (unreachable, or refusing
    /// us): the build goes on with the other tiers. Sent once per remote.
    RemoteUnavailable { remote: String, error: String },
    /// A remote's result of a step was wrong (an object failed its check, or is missing):
    /// refused; the next remote is asked, else the step is built locally.
    RemoteRefused {
        key: String,
        kind: String,
        label: String,
        remote: String,
        error: String,
    },
    /// A step's cached result turned out damaged (a blob it references is corrupt or gone):
    /// its record (and the damaged blob) were dropped, and the step is built again (or
    /// fetched) in this build. `found_by` is the step, or the output folder, that read it;
    /// none when the lookup itself found it.
    CacheDamaged {
        key: String,
        kind: String,
        label: String,
        blob: Option<String>,
        problem: String,
        found_by: Option<String>,
    },
    /// A step built here, or found in a later tier, was uploaded to a read-write remote.
    StepUploaded {
        key: String,
        kind: String,
        label: String,
        remote: String,
        blobs: usize,
        bytes: u64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CacheSource {
    Local,
    Remote,
}

/// Receives progress. Implementations live in the CLI.
pub trait Reporter: Sync {
    fn event(&self, e: &Event);
}

/// A failed step.
#[derive(Debug)]
pub struct Failure {
    pub step: StepId,
    pub error: StepError,
    pub log: PathBuf,
}

#[derive(Debug, Default)]
pub struct Outcome {
    /// Outputs of every step that is done (built or cached) and was needed.
    pub outputs: BTreeMap<StepId, StepOutput>,
    pub built: Vec<StepId>,
    pub cached: Vec<StepId>,
    /// The cached steps that came from a remote cache.
    pub from_remote: Vec<StepId>,
    pub failed: Vec<Failure>,
    pub skipped: Vec<StepId>,
    pub interrupted: bool,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.failed.is_empty() && self.skipped.is_empty() && !self.interrupted
    }

    /// Takes in a later run of the same build (some steps run again): its outputs replace
    /// these, what it built or fetched counts as built or fetched.
    pub fn absorb(&mut self, later: Outcome) {
        let add = |to: &mut Vec<StepId>, from: Vec<StepId>| {
            for id in from {
                if !to.contains(&id) {
                    to.push(id);
                }
            }
        };
        self.cached.retain(|i| !later.built.contains(i));
        self.outputs.extend(later.outputs);
        add(&mut self.built, later.built);
        add(&mut self.from_remote, later.from_remote);
        self.failed.extend(later.failed);
        add(&mut self.skipped, later.skipped);
        self.interrupted |= later.interrupted;
    }
}

pub struct Executor<'a> {
    pub store: &'a Store,
    pub runner: &'a dyn Runner,
    pub reporter: &'a dyn Reporter,
    /// At most this many steps at once.
    pub jobs: usize,
    /// Set by the CLI on Ctrl-C: no new step starts.
    pub cancel: &'a AtomicBool,
    /// Steps run even when their result is cached (`imgspec lock --update`: the packages as
    /// the mirror has them now).
    pub fresh: &'a [StepId],
    /// The remote caches after the local store, in order: asked on a local miss; the
    /// read-write ones are given every step built here and every step a later remote had
    /// (uploaded in the background, one thread per remote, done before `run` returns).
    pub tiers: &'a Tiers,
}

/// The upload queues of one run, one per read-write remote (by tier index).
struct Uploads {
    queues: Vec<Option<mpsc::Sender<(StepId, StepOutput)>>>,
}

impl Uploads {
    /// Queues the result of step `id` for the remotes `to`.
    fn send(&self, to: &[usize], id: StepId, output: &StepOutput) {
        for &t in to {
            if let Some(Some(q)) = self.queues.get(t) {
                let _ = q.send((id, output.clone()));
            }
        }
    }
}

#[derive(Clone, Debug)]
enum State {
    Unseen,
    /// To be built: waits for its needed inputs, then is ready.
    Needed,
    Running,
    Done,
    Failed,
}

/// Whether step `i` is needed and every input it needs is done.
fn is_ready(plan: &Plan, state: &[State], i: StepId) -> bool {
    matches!(state[i], State::Needed)
        && plan.steps[i]
            .inputs
            .iter()
            .all(|&d| !matches!(state[d], State::Needed | State::Running | State::Failed))
}

/// Keeps `ready`, a stack, to the steps that are ready: drops those that are not any more (a
/// heal made an input needed again) and pushes those that now are, in plan order, so that
/// the step that just became ready runs next (a chain of chroot steps goes on with the tree
/// the previous one kept) and the oldest ready step waits longest.
fn refresh_ready(plan: &Plan, state: &[State], ready: &mut Vec<StepId>) {
    ready.retain(|&i| is_ready(plan, state, i));
    for i in 0..plan.steps.len() {
        if is_ready(plan, state, i) && !ready.contains(&i) {
            ready.push(i);
        }
    }
}

impl Executor<'_> {
    /// The log file of a step.
    pub fn log_path(&self, plan: &Plan, id: StepId) -> PathBuf {
        let s = &plan.steps[id];
        self.store
            .root()
            .join("logs")
            .join(format!("{}-{}.log", s.key.short(), s.kind()))
    }

    /// Runs what `targets` need.
    pub fn run(&self, plan: &Plan, targets: &[StepId]) -> Outcome {
        let writable = self.tiers.writable();
        std::thread::scope(|s| {
            let mut queues: Vec<Option<mpsc::Sender<(StepId, StepOutput)>>> =
                (0..self.tiers.len()).map(|_| None).collect();
            let mut uploaders = Vec::new();
            for &t in &writable {
                let (tx, rx) = mpsc::channel();
                queues[t] = Some(tx);
                uploaders.push(s.spawn(move || self.upload(t, plan, rx)));
            }
            let uploads = Uploads { queues };
            let out = self.run_steps(plan, targets, &uploads);
            drop(uploads);
            for u in uploaders {
                let _ = u.join();
            }
            out
        })
    }

    /// The lookup phase's last resort: the step's result from the first remote that has it
    /// whole, queued for the read-write remotes before that one. Trouble is reported, never
    /// fatal.
    fn fetch_from_remote(
        &self,
        plan: &Plan,
        id: StepId,
        uploads: &Uploads,
    ) -> Option<(usize, StepRecord)> {
        let step = &plan.steps[id];
        let hit = self.tiers.fetch_step(self.store, &step.key, &mut |t, e| {
            self.remote_trouble(t, e, plan, id)
        })?;
        uploads.send(&self.tiers.fill_targets(hit.tier), id, &hit.record.output);
        Some((hit.tier, hit.record))
    }

    /// Tells the user about a remote failure: once per remote for an unavailable one, once per
    /// step and remote for a refused object.
    fn remote_trouble(&self, tier: usize, e: &RemoteError, plan: &Plan, id: StepId) {
        let remote = self.tiers.remote(tier);
        if e.is_unavailable() {
            if let Some(reason) = remote.down_notice() {
                self.reporter.event(&Event::RemoteUnavailable {
                    remote: remote.url().to_string(),
                    error: reason,
                });
            }
            return;
        }
        let step = &plan.steps[id];
        self.reporter.event(&Event::RemoteRefused {
            key: step.key.to_hex(),
            kind: step.kind().into(),
            label: step.label.clone(),
            remote: remote.url().to_string(),
            error: error_lines(e),
        });
    }

    /// Uploads each step the build sends to remote `tier`, in the order they were sent.
    fn upload(&self, tier: usize, plan: &Plan, rx: mpsc::Receiver<(StepId, StepOutput)>) {
        let remote = self.tiers.remote(tier);
        for (id, output) in rx {
            let step = &plan.steps[id];
            match remote.push_step(self.store, &step.key, step.kind(), &step.label, &output) {
                Ok(stats) if !stats.already_there => self.reporter.event(&Event::StepUploaded {
                    key: step.key.to_hex(),
                    kind: step.kind().into(),
                    label: step.label.clone(),
                    remote: remote.url().to_string(),
                    blobs: stats.blobs_sent,
                    bytes: stats.bytes_sent,
                }),
                Ok(_) => {}
                Err(e) => self.remote_trouble(tier, &e, plan, id),
            }
        }
    }

    fn run_steps(&self, plan: &Plan, targets: &[StepId], uploads: &Uploads) -> Outcome {
        let mut out = Outcome::default();
        let mut state = vec![State::Unseen; plan.steps.len()];
        self.resolve(plan, targets.to_vec(), &mut state, &mut out, uploads);
        let mut ready = Vec::new();
        refresh_ready(plan, &state, &mut ready);
        ready.reverse(); // the first in plan order runs first
                         // Blobs found damaged while a step read them, by step: each heals once.
        let mut healed: BTreeSet<(StepId, BlobDigest)> = BTreeSet::new();

        let threads = self
            .jobs
            .max(std::thread::available_parallelism().map_or(2, |n| n.get()));
        let pool = match rayon::ThreadPoolBuilder::new().num_threads(threads).build() {
            Ok(p) => p,
            Err(_) => {
                out.interrupted = true;
                return out;
            }
        };
        let (tx, rx) = mpsc::channel::<Message>();
        let mut running = 0usize;
        // Steps built whose record waits for their blobs (`Ran::Recording`).
        let mut recording = 0usize;
        std::thread::scope(|recorders| {
            pool.in_place_scope(|scope| loop {
                while running < self.jobs.max(1) && !self.cancel.load(Ordering::SeqCst) {
                    let Some(id) = ready.pop() else { break };
                    state[id] = State::Running;
                    let step = &plan.steps[id];
                    let inputs: Vec<StepOutput> =
                        step.inputs.iter().map(|i| out.outputs[i].clone()).collect();
                    let log = self.log_path(plan, id);
                    running += 1;
                    let tx = tx.clone();
                    scope.spawn(move |_| {
                        let t = Instant::now();
                        // Always answer, even if something panics (a reporter on a closed
                        // terminal): the loop below waits for every step it started.
                        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            self.run_one(plan, id, inputs, log)
                        }))
                        .unwrap_or(Err(StepError::Internal("the step panicked")));
                        let _ = tx.send(Message::Ran(id, r, t.elapsed().as_secs_f64()));
                    });
                }
                if running == 0 && recording == 0 {
                    break;
                }
                let Ok(message) = rx.recv() else {
                    break;
                };
                let (id, result, seconds) = match message {
                    Message::Ran(id, result, seconds) => {
                        running -= 1;
                        (id, result, seconds)
                    }
                    Message::Recorded(id, recorded) => {
                        recording -= 1;
                        match recorded {
                            Ok(()) => {
                                if let Some(o) = out.outputs.get(&id) {
                                    uploads.send(&self.tiers.writable(), id, o);
                                }
                            }
                            Err(error) => {
                                state[id] = State::Failed;
                                out.built.retain(|&b| b != id);
                                out.outputs.remove(&id);
                                self.failed(plan, id, error, &mut out);
                            }
                        }
                        continue;
                    }
                };
                let step = &plan.steps[id];
                match result {
                    Ok(ran) => {
                        state[id] = State::Done;
                        // A step still recording is uploaded once it is recorded.
                        let (ran, upload) = match ran {
                            Ran::Recording { output, lock, work } => {
                                recording += 1;
                                let tx = tx.clone();
                                let o = output.clone();
                                recorders.spawn(move || {
                                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(
                                        || self.record_later(plan, id, &o),
                                    ))
                                    .unwrap_or(Err(
                                        StepError::Internal("recording the step panicked"),
                                    ));
                                    drop(lock);
                                    drop(work);
                                    let _ = tx.send(Message::Recorded(id, r));
                                });
                                (Ran::Built(output), false)
                            }
                            ran => (ran, true),
                        };
                        match ran {
                            Ran::Built(o) | Ran::Recording { output: o, .. } => {
                                if upload {
                                    uploads.send(&self.tiers.writable(), id, &o);
                                }
                                out.outputs.insert(id, o);
                                out.built.push(id);
                                self.reporter.event(&Event::StepFinished {
                                    key: step.key.to_hex(),
                                    kind: step.kind().into(),
                                    label: step.label.clone(),
                                    seconds,
                                });
                            }
                            Ran::Reused(o) => {
                                out.outputs.insert(id, o);
                                out.cached.push(id);
                                self.reporter.event(&Event::StepCached {
                                    key: step.key.to_hex(),
                                    kind: step.kind().into(),
                                    label: step.label.clone(),
                                    source: CacheSource::Local,
                                    remote: None,
                                });
                            }
                        }
                        refresh_ready(plan, &state, &mut ready);
                    }
                    Err(error) => {
                        if self.heal(plan, id, &error, &mut healed, &mut state, &mut out, uploads) {
                            refresh_ready(plan, &state, &mut ready);
                            continue;
                        }
                        state[id] = State::Failed;
                        self.failed(plan, id, error, &mut out);
                    }
                }
            })
        });
        out.interrupted = self.cancel.load(Ordering::SeqCst);
        // A step whose record failed after the steps that need it had started (`Ran::Recording`):
        // what was built on it is not a result of this build, and no image is written from it.
        let mut bad: BTreeSet<StepId> = out.failed.iter().map(|f| f.step).collect();
        for (i, step) in plan.steps.iter().enumerate() {
            if step.inputs.iter().any(|d| bad.contains(d)) {
                bad.insert(i);
                out.outputs.remove(&i);
            }
        }
        // Whatever did not run: it depended on a failure, or the build was interrupted.
        let left: Vec<StepId> = (0..plan.steps.len())
            .filter(|&i| matches!(state[i], State::Needed))
            .collect();
        for id in left {
            let step = &plan.steps[id];
            let because = if out.interrupted {
                "the build was interrupted".to_string()
            } else {
                let failed: Vec<&str> = out
                    .failed
                    .iter()
                    .map(|f| plan.steps[f.step].label.as_str())
                    .collect();
                format!("it depends on a failed step ({})", failed.join(", "))
            };
            self.reporter.event(&Event::StepSkipped {
                key: step.key.to_hex(),
                kind: step.kind().into(),
                label: step.label.clone(),
                because,
            });
            out.skipped.push(id);
        }
        out
    }

    /// The lookup phase, top-down from `stack`: a step found in the cache (local, else remote)
    /// is done and cuts off everything above it; a missing one is needed, and so are its
    /// inputs' lookups. A record found damaged is dropped (said once) and is a miss.
    fn resolve(
        &self,
        plan: &Plan,
        mut stack: Vec<StepId>,
        state: &mut [State],
        out: &mut Outcome,
        uploads: &Uploads,
    ) {
        while let Some(id) = stack.pop() {
            if !matches!(state[id], State::Unseen) {
                continue;
            }
            let step = &plan.steps[id];
            let lookup = if self.fresh.contains(&id) {
                Ok((None, None))
            } else {
                self.store.lookup_or_drop(&step.key)
            };
            if let Ok((_, Some(dropped))) = &lookup {
                self.reporter.event(&Event::CacheDamaged {
                    key: step.key.to_hex(),
                    kind: step.kind().into(),
                    label: step.label.clone(),
                    blob: dropped.blob.map(|d| d.to_hex()),
                    problem: dropped.reason.to_string(),
                    found_by: None,
                });
            }
            match lookup {
                Ok((Some(rec), _)) => {
                    state[id] = State::Done;
                    out.outputs.insert(id, rec.output);
                    out.cached.push(id);
                    self.reporter.event(&Event::StepCached {
                        key: step.key.to_hex(),
                        kind: step.kind().into(),
                        label: step.label.clone(),
                        source: CacheSource::Local,
                        remote: None,
                    });
                }
                // A broken index row is a miss: the step is built again, unless a remote
                // cache has it.
                Ok((None, _)) | Err(_) => match self.fetch_from_remote(plan, id, uploads) {
                    Some((tier, rec)) => {
                        state[id] = State::Done;
                        out.outputs.insert(id, rec.output);
                        out.cached.push(id);
                        out.from_remote.push(id);
                        self.reporter.event(&Event::StepCached {
                            key: step.key.to_hex(),
                            kind: step.kind().into(),
                            label: step.label.clone(),
                            source: CacheSource::Remote,
                            remote: Some(self.tiers.remote(tier).url().to_string()),
                        });
                    }
                    None => {
                        state[id] = State::Needed;
                        stack.extend(&step.inputs);
                    }
                },
            }
        }
    }

    /// A step failed on a blob of one of its inputs that is corrupt or gone: that input's
    /// result is a miss after all. Deletes the blob, drops the records of this build's
    /// results that reference it (saying so once for each), and makes them needed again, so
    /// that they are built (or fetched) and the step runs after them, in this same build.
    /// False when the failure is not that, or the same blob failed this step before (then it
    /// is a real failure).
    #[allow(clippy::too_many_arguments)]
    fn heal(
        &self,
        plan: &Plan,
        id: StepId,
        error: &StepError,
        healed: &mut BTreeSet<(StepId, BlobDigest)>,
        state: &mut [State],
        out: &mut Outcome,
        uploads: &Uploads,
    ) -> bool {
        let Some(blob) = error.damaged_blob() else {
            return false;
        };
        if self.cancel.load(Ordering::SeqCst) || !healed.insert((id, blob)) {
            return false;
        }
        let inputs = &plan.steps[id].inputs;
        if inputs.iter().any(|&i| !matches!(state[i], State::Done)) {
            // Another step found the blob first, and an input this step read is being built
            // again: run after it.
            state[id] = State::Needed;
            return true;
        }
        let refers = |i: &StepId| {
            out.outputs
                .get(i)
                .is_some_and(|o| self.store.references_blob(o, &blob))
        };
        if !inputs.iter().any(refers) || self.store.discard_damaged_blob(&blob).is_err() {
            return false;
        }
        // Every result of this build that holds the blob, not only this step's inputs: the
        // step that made it first (the blob is shared down a chain of layers) is among them.
        let producers: Vec<StepId> = (0..plan.steps.len())
            .filter(|&i| matches!(state[i], State::Done) && refers(&i))
            .collect();
        let problem = error_lines(error);
        for &p in &producers {
            let step = &plan.steps[p];
            if let Some(o) = out.outputs.remove(&p) {
                let _ = self.store.drop_record(&step.key, &o);
            }
            out.cached.retain(|&c| c != p);
            out.built.retain(|&c| c != p);
            out.from_remote.retain(|&c| c != p);
            state[p] = State::Unseen;
            self.reporter.event(&Event::CacheDamaged {
                key: step.key.to_hex(),
                kind: step.kind().into(),
                label: step.label.clone(),
                blob: Some(blob.to_hex()),
                problem: problem.clone(),
                found_by: Some(plan.steps[id].label.clone()),
            });
        }
        state[id] = State::Needed;
        self.resolve(plan, producers, state, out, uploads);
        true
    }

    /// Builds one step under its lock. When another process held the lock and recorded the
    /// step meanwhile, its record is taken instead.
    fn run_one(
        &self,
        plan: &Plan,
        id: StepId,
        inputs: Vec<StepOutput>,
        log: PathBuf,
    ) -> Result<Ran, StepError> {
        let step = &plan.steps[id];
        let event = |e: fn(String, String, String) -> Event| {
            self.reporter.event(&e(
                step.key.to_hex(),
                step.kind().into(),
                step.label.clone(),
            ));
        };
        let claim = self.store.claim_step(
            &step.key,
            &mut || event(|key, kind, label| Event::StepWaiting { key, kind, label }),
            &|| self.cancel.load(Ordering::SeqCst),
        )?;
        let Claim::Held { lock, waited } = claim else {
            return Err(StepError::Invalid("interrupted".into()));
        };
        // Look again now that the lock is ours: another build may have recorded the step
        // since this one's lookup, without this one ever finding the lock taken (a quick step
        // is built and unlocked in between). A step asked fresh is taken only from a build it
        // waited for.
        if waited || !self.fresh.contains(&id) {
            if let Ok(Some(rec)) = self.store.lookup(&step.key) {
                return Ok(Ran::Reused(rec.output));
            }
        }
        self.reporter.event(&Event::StepStarted {
            key: step.key.to_hex(),
            kind: step.kind().into(),
            label: step.label.clone(),
            log: log.clone(),
        });
        let input_keys = step
            .inputs
            .iter()
            .map(|&i| plan.steps[i].key.to_hex())
            .collect();
        match self.build_one(step, inputs, input_keys, log)? {
            (output, Some(work)) => Ok(Ran::Recording { output, lock, work }),
            (output, None) => {
                drop(lock);
                Ok(Ran::Built(output))
            }
        }
    }

    fn build_one(
        &self,
        step: &crate::plan::Step,
        inputs: Vec<StepOutput>,
        input_keys: Vec<String>,
        log: PathBuf,
    ) -> Result<(StepOutput, Option<tempfile::TempDir>), StepError> {
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir).map_err(StepError::io(dir))?;
        }
        std::fs::write(&log, format!("# {} ({})\n", step.label, step.key))
            .map_err(StepError::io(&log))?;
        let work = self.store.tmp_dir(step.kind())?;
        let ctx = StepContext {
            store: self.store,
            runner: self.runner,
            log,
            inputs,
            input_keys,
            epoch: step.epoch,
            work: work.path().to_path_buf(),
        };
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| step.action.run(&ctx)))
                .unwrap_or(Err(StepError::Internal("the step panicked")))?;
        if self.cancel.load(Ordering::SeqCst) {
            return Err(StepError::Invalid("interrupted".into()));
        }
        if self.store.is_pending(&result) {
            // Its large blobs are still being written: recorded once they are, while the
            // steps that need it go on with its plain files.
            return Ok((result, Some(work)));
        }
        self.store
            .record(&step.key, step.kind(), &step.label, &result)?;
        drop(work);
        Ok((result, None))
    }

    /// Says that step `id` failed, and why, and where its log is.
    fn failed(&self, plan: &Plan, id: StepId, error: StepError, out: &mut Outcome) {
        let step = &plan.steps[id];
        let log = self.log_path(plan, id);
        self.reporter.event(&Event::StepFailed {
            key: step.key.to_hex(),
            kind: step.kind().into(),
            label: step.label.clone(),
            error: error_lines(&error),
            log: log.clone(),
        });
        out.failed.push(Failure {
            step: id,
            error,
            log,
        });
    }

    /// Records a step built with blobs still being written (`Ran::Recording`), once they are:
    /// on a thread of its own, while the build goes on. The step's lock is held until then.
    fn record_later(&self, plan: &Plan, id: StepId, output: &StepOutput) -> Result<(), StepError> {
        let step = &plan.steps[id];
        self.store
            .record(&step.key, step.kind(), &step.label, output)?;
        Ok(())
    }
}

/// What running a step came to.
enum Ran {
    Built(StepOutput),
    /// Built, and its large blobs are still being written by threads of the store: the steps
    /// that need it may start; it is recorded (and its lock and scratch folder let go) once
    /// they are written.
    Recording {
        output: StepOutput,
        lock: imgspec_cache::StepClaim,
        work: tempfile::TempDir,
    },
    /// Another process built it while this one waited for the step's lock.
    Reused(StepOutput),
}

/// What a thread of the build tells its loop.
enum Message {
    /// A step ran (its result, or why it failed), in so many seconds.
    Ran(StepId, Result<Ran, StepError>, f64),
    /// A `Ran::Recording` step was recorded, or could not be.
    Recorded(StepId, Result<(), StepError>),
}

/// An error and its sources, one per line (`imgspec_cache::error_chain`'s long form): what a
/// person reads of a failure.
pub fn error_lines(e: &dyn std::error::Error) -> String {
    format!("{:#}", imgspec_cache::error_chain(e))
}
