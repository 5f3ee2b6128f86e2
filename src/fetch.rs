//! Downloads of files whose SHA-256 is known beforehand (locked `.deb`s, disk images by URL):
//! through a `.part` file renamed once whole and checked, tried again while the failure may
//! pass, never counting a byte twice for the progress bar.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("I/O error on `{}`", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The server answered that it has no such file (HTTP 404, 410 or another 4xx): trying
    /// again will not help.
    #[error("`{url}`: {reason}")]
    Gone { url: String, reason: String },
    /// The server could not be reached or did not finish the answer (a name that did not
    /// resolve, a refused or dropped connection, a timeout, HTTP 5xx, 408 or 429), after
    /// [`FETCH_TRIES`] tries.
    #[error("`{url}`: {reason} ({tries} tries)")]
    Unreachable {
        url: String,
        reason: String,
        tries: u32,
    },
    #[error("`{url}` is not the file asked for: SHA-256 `{got}`, not `{want}`")]
    Mismatch {
        url: String,
        got: String,
        want: String,
    },
    /// The build is being stopped (Ctrl-C): the download gave up between two chunks.
    #[error("`{url}`: the download was stopped (the build was interrupted)")]
    Stopped { url: String },
}

fn io(path: &Path, source: std::io::Error) -> FetchError {
    FetchError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Downloads `url` to `dest` (through a `.part` file beside it, renamed once whole and
/// checked), checking that its SHA-256 is `sha256`. A failure that may pass (see
/// [`FetchError::Unreachable`]) is tried again, [`FETCH_TRIES`] times in all, waiting 1, 2, 4,
/// … s between tries; `done` hears each byte once however many tries it takes.
pub fn fetch(url: &str, sha256: &str, dest: &Path, done: &dyn Fn(u64)) -> Result<(), FetchError> {
    fetch_with(
        url,
        sha256,
        dest,
        done,
        FETCH_TRIES,
        Duration::from_secs(1),
        SMALL_BODY,
    )
}

/// [`fetch`] for a file of gigabytes (a disk image): the body may take hours, not minutes.
pub fn fetch_large(
    url: &str,
    sha256: &str,
    dest: &Path,
    done: &dyn Fn(u64),
) -> Result<(), FetchError> {
    fetch_with(
        url,
        sha256,
        dest,
        done,
        FETCH_TRIES,
        Duration::from_secs(1),
        LARGE_BODY,
    )
}

/// The longest a body may take to arrive (ureq's deadline covers the whole body): a package.
const SMALL_BODY: Duration = Duration::from_secs(600);
/// ... and a disk image.
const LARGE_BODY: Duration = Duration::from_secs(12 * 3600);

fn fetch_with(
    url: &str,
    sha256: &str,
    dest: &Path,
    done: &dyn Fn(u64),
    tries: u32,
    first_wait: Duration,
    body: Duration,
) -> Result<(), FetchError> {
    let parent = dest.parent().expect("a deb path has a parent");
    std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
    // Its own name, so that two fetches of one file at once (two steps of a build) never
    // write into each other's; the one renamed last wins, both checked whole.
    static NTH: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nth = NTH.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = parent.join(format!(".{sha256}.{}.{nth}.part", std::process::id()));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(20)))
        .timeout_recv_body(Some(body))
        .build()
        .into();
    // The most bytes any try has told `done` of, so a try again is not counted twice.
    let told = std::cell::Cell::new(0u64);
    let mut wait = first_wait;
    let mut tried = 0;
    let result = loop {
        tried += 1;
        let attempt = fetch_once(&agent, url, sha256, &tmp, dest, &|got| {
            if got > told.get() {
                done(got - told.get());
                told.set(got);
            }
        });
        match attempt {
            Err(Attempt::Transient(_)) if tried < tries => {
                if !pause(wait) {
                    break Err(FetchError::Stopped { url: url.into() });
                }
                wait *= 2;
            }
            Err(Attempt::Transient(reason)) => {
                break Err(FetchError::Unreachable {
                    url: url.into(),
                    reason,
                    tries: tried,
                })
            }
            Err(Attempt::Final(e)) => break Err(e),
            Ok(()) => break Ok(()),
        }
    };
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// One try: `url` into `tmp`, checked, renamed to `dest`; `got` hears the bytes received
/// so far in this try.
fn fetch_once(
    agent: &ureq::Agent,
    url: &str,
    sha256: &str,
    tmp: &Path,
    dest: &Path,
    got: &dyn Fn(u64),
) -> Result<(), Attempt> {
    let resp = agent.get(url).call().map_err(|e| match e {
        ureq::Error::StatusCode(c @ (404 | 410)) => Attempt::Final(FetchError::Gone {
            url: url.into(),
            reason: format!("HTTP {c}"),
        }),
        ureq::Error::StatusCode(c @ (408 | 429 | 500..=599)) => {
            Attempt::Transient(format!("HTTP {c}"))
        }
        ureq::Error::StatusCode(c) => Attempt::Final(FetchError::Gone {
            url: url.into(),
            reason: format!("HTTP {c}"),
        }),
        other => Attempt::Transient(other.to_string()),
    })?;
    let mut body = resp.into_body().into_reader();
    let mut f = std::fs::File::create(tmp).map_err(|e| Attempt::Final(io(tmp, e)))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut received = 0u64;
    loop {
        let n = body
            .read(&mut buf)
            .map_err(|e| Attempt::Transient(e.to_string()))?;
        if n == 0 {
            break;
        }
        if crate::runner::stopping() {
            return Err(Attempt::Final(FetchError::Stopped { url: url.into() }));
        }
        h.update(&buf[..n]);
        f.write_all(&buf[..n])
            .map_err(|e| Attempt::Final(io(tmp, e)))?;
        received += n as u64;
        got(received);
    }
    f.sync_all().map_err(|e| Attempt::Final(io(tmp, e)))?;
    let digest = hex(&h.finalize());
    if digest != sha256 {
        return Err(Attempt::Final(FetchError::Mismatch {
            url: url.into(),
            got: digest,
            want: sha256.into(),
        }));
    }
    std::fs::rename(tmp, dest).map_err(|e| Attempt::Final(io(dest, e)))
}

/// Waits `wait` before a try again, in steps short enough to see a Ctrl-C; false when the
/// build is being stopped.
fn pause(wait: Duration) -> bool {
    let until = std::time::Instant::now() + wait;
    while !crate::runner::stopping() {
        let left = until.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return true;
        }
        std::thread::sleep(left.min(Duration::from_millis(100)));
    }
    false
}

/// How many times a file is asked for before its server is called unreachable: six
/// tries wait 1 + 2 + 4 + 8 + 16 = 31 s in all, past the usual blip of a resolver or a proxy.
pub const FETCH_TRIES: u32 = 6;

/// How one try of a fetch failed.
enum Attempt {
    /// It may pass: try again (why).
    Transient(String),
    /// It will not pass.
    Final(FetchError),
}

#[cfg(test)]
mod tests {
    //! Fetches against a real HTTP listener on the loopback that answers each connection as
    //! scripted: the retry rules are about what goes over the wire, so they are tried there.
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// What the listener does with one connection.
    enum Answer {
        /// Reads the request and closes without a word.
        Drop,
        /// Answers the status with this body.
        Status(u16, Vec<u8>),
        /// Promises the whole body and sends only the first `n` bytes of it.
        Short(Vec<u8>, usize),
    }

    /// Serves `answers`, one per connection in order; the URL and the count of connections.
    fn serve(answers: Vec<Answer>) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/pool/p.deb", listener.local_addr().unwrap());
        let count = Arc::new(AtomicUsize::new(0));
        let seen = count.clone();
        std::thread::spawn(move || {
            for answer in answers {
                let Ok((mut conn, _)) = listener.accept() else {
                    return;
                };
                seen.fetch_add(1, Ordering::SeqCst);
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let head = |code: u16, len: usize| {
                    format!(
                        "HTTP/1.1 {code} X\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
                    )
                };
                let _ = match answer {
                    Answer::Drop => Ok(()),
                    Answer::Status(code, body) => conn
                        .write_all(head(code, body.len()).as_bytes())
                        .and_then(|_| conn.write_all(&body)),
                    Answer::Short(body, n) => conn
                        .write_all(head(200, body.len()).as_bytes())
                        .and_then(|_| conn.write_all(&body[..n])),
                };
            }
        });
        (url, count)
    }

    fn body() -> (Vec<u8>, String) {
        let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let sha = hex(&Sha256::digest(&body));
        (body, sha)
    }

    /// Fetches `url` with `tries` and no wait to speak of: the result and the bytes told.
    fn fetch(url: &str, sha: &str, tries: u32) -> (tempfile::TempDir, Result<(), FetchError>, u64) {
        let dir = tempfile::tempdir().unwrap();
        let told = std::cell::Cell::new(0u64);
        let r = fetch_with(
            url,
            sha,
            &dir.path().join("file.deb"),
            &|n| told.set(told.get() + n),
            tries,
            Duration::from_millis(5),
            SMALL_BODY,
        );
        (dir, r, told.get())
    }

    /// The files under `dir` but the one fetched: a half-fetched one left behind.
    fn leftovers(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(leftovers(&p));
            } else if p.extension().is_none_or(|x| x != "deb") {
                out.push(p);
            }
        }
        out
    }

    #[test]
    fn a_dropped_connection_and_a_short_body_are_tried_again_and_each_byte_counted_once() {
        let (b, sha) = body();
        let (url, count) = serve(vec![
            Answer::Drop,
            Answer::Short(b.clone(), 150_000),
            Answer::Status(503, b"busy".to_vec()),
            Answer::Status(200, b.clone()),
        ]);
        let (dir, r, told) = fetch(&url, &sha, 6);
        r.unwrap();
        assert_eq!(count.load(Ordering::SeqCst), 4);
        assert_eq!(told, b.len() as u64, "the bar hears each byte once");
        assert_eq!(std::fs::read(dir.path().join("file.deb")).unwrap(), b);
        assert_eq!(leftovers(dir.path()), Vec::<PathBuf>::new());
    }

    #[test]
    fn a_file_the_mirror_does_not_have_is_asked_for_once() {
        let (_, sha) = body();
        let (url, count) = serve(vec![
            Answer::Status(404, b"no".to_vec()),
            Answer::Status(404, b"no".to_vec()),
        ]);
        let (dir, r, _) = fetch(&url, &sha, 6);
        match r {
            Err(FetchError::Gone { reason, .. }) => assert_eq!(reason, "HTTP 404"),
            other => panic!("want Gone, got {other:?}"),
        }
        assert_eq!(count.load(Ordering::SeqCst), 1);
        assert_eq!(leftovers(dir.path()), Vec::<PathBuf>::new());
    }

    #[test]
    fn other_bytes_under_the_name_are_not_tried_again_and_not_kept() {
        let (b, sha) = body();
        let mut other = b.clone();
        other[7] ^= 1;
        let (url, count) = serve(vec![Answer::Status(200, other), Answer::Status(200, b)]);
        let (dir, r, _) = fetch(&url, &sha, 6);
        assert!(matches!(r, Err(FetchError::Mismatch { .. })), "{r:?}");
        assert_eq!(count.load(Ordering::SeqCst), 1);
        assert!(!dir.path().join("file.deb").exists());
        assert_eq!(leftovers(dir.path()), Vec::<PathBuf>::new());
    }

    #[test]
    fn a_mirror_that_stays_down_is_unreachable_after_the_tries() {
        let (_, sha) = body();
        let (url, count) = serve((0..3).map(|_| Answer::Status(502, vec![])).collect());
        let (dir, r, _) = fetch(&url, &sha, 3);
        match r {
            Err(FetchError::Unreachable { reason, tries, .. }) => {
                assert_eq!((reason.as_str(), tries), ("HTTP 502", 3))
            }
            other => panic!("want Unreachable, got {other:?}"),
        }
        assert_eq!(count.load(Ordering::SeqCst), 3);
        assert_eq!(leftovers(dir.path()), Vec::<PathBuf>::new());
        // Nobody listening at all: refused, tried again, unreachable.
        let closed = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/p.deb", closed.local_addr().unwrap());
        drop(closed);
        let (_, r, _) = fetch(&url, &sha, 2);
        assert!(
            matches!(r, Err(FetchError::Unreachable { tries: 2, .. })),
            "{r:?}"
        );
    }
}
