//! Progress for people and machines: a spinner per running step on a terminal, plain
//! timestamped lines otherwise, JSON lines with `--json`.

use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::exec::{CacheSource, Event, Reporter};

/// One JSON object per line on standard output.
pub struct JsonReporter;

impl Reporter for JsonReporter {
    fn event(&self, e: &Event) {
        if let Ok(s) = serde_json::to_string(e) {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{s}");
        }
    }
}

/// `[12:03:04] started packages system` lines on standard error.
pub struct PlainReporter;

pub fn clock() -> String {
    let s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    format!("{:02}:{:02}:{:02}", (s / 3600) % 24, (s / 60) % 60, s % 60)
}

fn line(e: &Event) -> Option<String> {
    Some(match e {
        Event::StepCached {
            source: CacheSource::Local,
            ..
        } => return None,
        Event::StepCached {
            label,
            source: CacheSource::Remote,
            remote,
            ..
        } => format!(
            "fetched  {label} (from the remote cache {})",
            remote.as_deref().unwrap_or("")
        ),
        Event::StepWaiting { label, .. } => {
            format!("waiting  {label}: another build on this cache is building it")
        }
        Event::StepStarted { label, .. } => format!("started  {label}"),
        Event::StepFinished { label, seconds, .. } => format!("built    {label} ({seconds:.1}s)"),
        Event::StepFailed {
            label, error, log, ..
        } => format!(
            "FAILED   {label}: {}\n         log: {}",
            error.replace('\n', "\n         "),
            log.display()
        ),
        Event::StepSkipped { label, because, .. } => format!("skipped  {label}: {because}"),
        Event::RemoteUnavailable { remote, error } => format!(
            "WARNING  the remote cache {remote} is unavailable; going on with the local cache \
             only\n         ({error})"
        ),
        Event::RemoteRefused {
            label,
            remote,
            error,
            ..
        } => format!(
            "WARNING  {label}: the result from the remote cache {remote} was refused (the next \
             remote cache is asked, else the step is built here)\n         ({error})"
        ),
        Event::CacheDamaged {
            label,
            blob,
            problem,
            found_by,
            ..
        } => {
            let blob = blob
                .as_deref()
                .map(|b| format!(" (blob {})", &b[..b.len().min(12)]))
                .unwrap_or_default();
            let by = found_by
                .as_deref()
                .map(|f| format!(", found by {f}"))
                .unwrap_or_default();
            format!(
                "WARNING  {label}: its cached result is damaged{blob}{by}; dropped it, the step \
                 is built again\n         ({})",
                problem.replace('\n', "\n         ")
            )
        }
        Event::StepUploaded {
            label,
            remote,
            blobs,
            bytes,
            ..
        } => format!(
            "uploaded {label} to {remote} ({blobs} blobs, {})",
            super::human_bytes(*bytes)
        ),
    })
}

impl Reporter for PlainReporter {
    fn event(&self, e: &Event) {
        if let Some(l) = line(e) {
            // Not `eprintln!`: a closed standard error (`imgspec build 2>&1 | head`) must not
            // panic a worker thread.
            let _ = writeln!(std::io::stderr().lock(), "[{}] {l}", clock());
        }
    }
}

/// A spinner per running step.
pub struct TerminalReporter {
    multi: MultiProgress,
    bars: Mutex<Vec<(String, ProgressBar)>>,
}

impl TerminalReporter {
    pub fn new() -> Self {
        TerminalReporter {
            multi: MultiProgress::new(),
            bars: Mutex::new(Vec::new()),
        }
    }

    fn take(&self, key: &str) -> Option<ProgressBar> {
        let mut bars = self.bars.lock().unwrap();
        let i = bars.iter().position(|(k, _)| k == key)?;
        Some(bars.remove(i).1)
    }
}

impl Default for TerminalReporter {
    fn default() -> Self {
        Self::new()
    }
}

impl Reporter for TerminalReporter {
    fn event(&self, e: &Event) {
        match e {
            Event::StepStarted { key, label, .. } => {
                let bar = self.multi.add(ProgressBar::new_spinner());
                bar.set_style(
                    ProgressStyle::with_template("{spinner} {msg} {elapsed:.dim}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                bar.set_message(label.clone());
                bar.enable_steady_tick(Duration::from_millis(120));
                self.bars.lock().unwrap().push((key.clone(), bar));
            }
            Event::StepFinished { key, .. } | Event::StepFailed { key, .. } => {
                if let Some(bar) = self.take(key) {
                    bar.finish_and_clear();
                    self.multi.remove(&bar);
                }
                if let Some(l) = line(e) {
                    let _ = self.multi.println(l);
                }
            }
            _ => {
                if let Some(l) = line(e) {
                    let _ = self.multi.println(l);
                }
            }
        }
    }
}
