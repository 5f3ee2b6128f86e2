//! Byte progress of long transfers (locked `.deb`s fetched, `cache push`/`pull`, bundles):
//! on a terminal a bar with the bytes done, the rate and the time left (a spinner with bytes
//! and rate where the total is not known); nothing at all when stderr is not a terminal or with
//! `--json`, so logs and pipes stay clean.

use std::io::{IsTerminal, Read, Write};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// One transfer's bar; hidden off a terminal. Cleared when dropped (the verb's summary line
/// says what was moved).
pub struct Bar(Option<ProgressBar>);

impl Bar {
    pub fn new(what: &str, total: Option<u64>, json: bool) -> Bar {
        if json || !std::io::stderr().is_terminal() {
            return Bar(None);
        }
        let (pb, template) = match total {
            Some(t) => (
                ProgressBar::with_draw_target(Some(t), ProgressDrawTarget::stderr()),
                "{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} \
                 eta {eta}",
            ),
            None => (
                ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
                "{spinner} {msg} {binary_bytes} {binary_bytes_per_sec} {elapsed}",
            ),
        };
        pb.set_style(
            ProgressStyle::with_template(template)
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        pb.set_message(what.to_string());
        pb.enable_steady_tick(Duration::from_millis(200));
        Bar(Some(pb))
    }

    /// `n` more bytes done.
    pub fn inc(&self, n: u64) {
        if let Some(b) = &self.0 {
            b.inc(n);
        }
    }

    /// `n` bytes done in all.
    pub fn set(&self, n: u64) {
        if let Some(b) = &self.0 {
            b.set_position(n);
        }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        if let Some(b) = &self.0 {
            b.finish_and_clear();
        }
    }
}

/// A writer that moves `bar` on by what goes through it.
pub struct Counting<'a, T> {
    pub inner: T,
    pub bar: &'a Bar,
}

impl<T: Write> Write for Counting<'_, T> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bar.inc(n as u64);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<T: Read> Read for Counting<'_, T> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bar.inc(n as u64);
        Ok(n)
    }
}

/// Runs `work` while a thread sets `bar` to `done()` five times a second (for transfers that
/// count their own bytes, such as a remote's traffic).
pub fn polled<R>(bar: &Bar, done: impl Fn() -> u64 + Sync, work: impl FnOnce() -> R) -> R {
    if bar.0.is_none() {
        return work();
    }
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                bar.set(done());
                std::thread::sleep(Duration::from_millis(200));
            }
            bar.set(done());
        });
        let r = work();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        r
    })
}

impl crate::build::Transfer for Bar {
    fn add(&self, bytes: u64) {
        self.inc(bytes);
    }
}

/// The command line's [`crate::build::Feedback`]: notices as timestamped lines on stderr,
/// transfers as [`Bar`]s.
pub struct Feedback {
    pub json: bool,
}

impl crate::build::Feedback for Feedback {
    fn notice(&self, message: &str) {
        eprintln!("[{}] {message}", super::report::clock());
    }
    fn transfer(&self, what: &str, total: Option<u64>) -> Box<dyn crate::build::Transfer + '_> {
        Box::new(Bar::new(what, total, self.json))
    }
}
