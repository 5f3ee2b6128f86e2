//! The plain-HTTP backend of the remote cache: GET/HEAD/PUT of objects under a base URL, as
//! served by nginx with WebDAV `PUT` (or any server that stores what is PUT and serves it
//! back). `ureq`, blocking; a broken download is resumed with `Range` into the same file; a
//! transport error after connecting is retried a few times, a server nobody answers for is not
//! (the next attempt would wait as long again).
//!
//! Credentials (basic or bearer) go into an `Authorization` header only; the base URL kept has
//! no user information, and no error carries a header.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::backend::{Backend, Opener, Trouble};

/// Attempts of one request before the server counts as unreachable.
const ATTEMPTS: u32 = 3;
/// Connections kept open to the server (the remote's transfer pool has as many threads).
const IDLE_CONNECTIONS: usize = 8;

/// Who we are to the server.
#[derive(Clone, Default)]
pub enum Credentials {
    #[default]
    None,
    Basic {
        user: String,
        password: String,
    },
    Bearer(String),
}

// Never print a secret, not even in a debug dump.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Credentials::None => "None",
            Credentials::Basic { .. } => "Basic(<redacted>)",
            Credentials::Bearer(_) => "Bearer(<redacted>)",
        })
    }
}

/// `scheme://user:pass@rest` → (scheme, Some("user:pass"), rest); no `://` → None.
pub(crate) fn split_userinfo(url: &str) -> Option<(&str, Option<&str>, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => Some((scheme, Some(&rest[..at]), &rest[at + 1..])),
        None => Some((scheme, None, rest)),
    }
}

/// `%XX` escapes of user information in a URL.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(hex, 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= c.len() {
                out.push(T[(n >> shift & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A transport error that says the server cannot be reached at all.
fn unreachable(e: &ureq::Error) -> bool {
    match e {
        ureq::Error::HostNotFound | ureq::Error::ConnectionFailed | ureq::Error::Timeout(_) => true,
        ureq::Error::Io(io) => matches!(
            io.kind(),
            io::ErrorKind::ConnectionRefused
                | io::ErrorKind::HostUnreachable
                | io::ErrorKind::NetworkUnreachable
                | io::ErrorKind::TimedOut
        ),
        _ => false,
    }
}

/// A remote cache over plain HTTP at one base URL.
pub(crate) struct Http {
    /// Scheme, host, port and path, without user information or a trailing `/`.
    pub(crate) base: String,
    /// The `Authorization` header value, if any. Never shown.
    auth: Option<String>,
    agent: ureq::Agent,
}

impl Http {
    /// The server at `url` (`http://` or `https://`). User information in the URL is taken
    /// out and used as basic credentials unless `creds` gives others. `Err` says what is wrong
    /// with the URL (never with its secret in it).
    pub(crate) fn new(url: &str, creds: Credentials) -> Result<Http, String> {
        let (scheme, userinfo, rest) = split_userinfo(url).ok_or("no `http://`")?;
        if scheme != "http" && scheme != "https" {
            return Err("only http://, https:// and s3:// are supported".into());
        }
        if rest.is_empty() || rest.starts_with('/') {
            return Err("no host".into());
        }
        let creds = match (creds, userinfo) {
            (Credentials::None, Some(ui)) => {
                let (u, p) = ui.split_once(':').unwrap_or((ui, ""));
                Credentials::Basic {
                    user: percent_decode(u),
                    password: percent_decode(p),
                }
            }
            (c, _) => c,
        };
        let auth = match creds {
            Credentials::None => None,
            Credentials::Basic { user, password } => Some(format!(
                "Basic {}",
                base64(format!("{user}:{password}").as_bytes())
            )),
            Credentials::Bearer(t) => Some(format!("Bearer {t}")),
        };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(5)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .timeout_per_read(Some(Duration::from_secs(60)))
            .timeout_per_write(Some(Duration::from_secs(60)))
            .max_idle_connections_per_host(IDLE_CONNECTIONS)
            .build()
            .into();
        Ok(Http {
            base: format!("{scheme}://{}", rest.trim_end_matches('/')),
            auth,
            agent,
        })
    }

    fn object_url(&self, object: &str) -> String {
        format!("{}/{object}", self.base)
    }

    fn with_auth<B>(&self, rb: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.auth {
            Some(a) => rb.header("Authorization", a),
            None => rb,
        }
    }

    fn status_error(object: &str, status: u16, what: &str) -> Trouble {
        let hint = match status {
            401 | 403 => {
                " (check IMGSPEC_REMOTE_USER/IMGSPEC_REMOTE_PASSWORD or IMGSPEC_REMOTE_TOKEN)"
            }
            405 => " (does the server accept PUT? nginx needs `dav_methods PUT`)",
            _ => "",
        };
        Trouble::Down(format!("{what} `{object}` answered HTTP {status}{hint}"))
    }

    /// Runs `f` up to [`ATTEMPTS`] times while it fails with a transport error.
    fn retry<T>(mut f: impl FnMut() -> Result<T, ureq::Error>) -> Result<T, Trouble> {
        let mut attempt = 1;
        loop {
            match f() {
                Ok(v) => return Ok(v),
                // Nobody there (no such host, nothing listening, no answer to connect): the
                // next attempt would wait as long again. Anything after connecting is retried.
                Err(e) if attempt < ATTEMPTS && !unreachable(&e) => {
                    std::thread::sleep(Duration::from_millis(100 << attempt));
                    attempt += 1;
                }
                Err(e) => return Err(Trouble::Down(e.to_string())),
            }
        }
    }
}

impl Backend for Http {
    fn exists(&self, object: &str) -> Result<bool, Trouble> {
        let url = self.object_url(object);
        let resp = Self::retry(|| self.with_auth(self.agent.head(&url)).call())?;
        match resp.status().as_u16() {
            200..=299 => Ok(true),
            404 | 410 => Ok(false),
            s => Err(Self::status_error(object, s, "HEAD")),
        }
    }

    fn get_small(
        &self,
        object: &str,
        limit: u64,
        received: &AtomicU64,
    ) -> Result<Option<Vec<u8>>, Trouble> {
        let url = self.object_url(object);
        let mut attempt = 1;
        loop {
            let mut resp = Self::retry(|| self.with_auth(self.agent.get(&url)).call())?;
            match resp.status().as_u16() {
                200 => {}
                404 | 410 => return Ok(None),
                s => return Err(Self::status_error(object, s, "GET")),
            }
            match resp.body_mut().with_config().limit(limit).read_to_vec() {
                Ok(v) => {
                    received.fetch_add(v.len() as u64, Ordering::Relaxed);
                    return Ok(Some(v));
                }
                Err(ureq::Error::BodyExceedsLimit(_)) => return Err(Trouble::TooLarge),
                Err(_) if attempt < ATTEMPTS => attempt += 1,
                Err(e) => return Err(Trouble::Down(format!("GET `{object}`: {e}"))),
            }
        }
    }

    fn get_to_file(
        &self,
        object: &str,
        file: &mut File,
        received: &AtomicU64,
    ) -> Result<bool, Trouble> {
        let url = self.object_url(object);
        let mut broken = 0;
        loop {
            let have = file.seek(SeekFrom::End(0)).map_err(Trouble::Local)?;
            let mut resp = Self::retry(|| {
                let rb = self.with_auth(self.agent.get(&url));
                if have > 0 {
                    rb.header("Range", format!("bytes={have}-")).call()
                } else {
                    rb.call()
                }
            })?;
            match resp.status().as_u16() {
                200 => {
                    // The whole object (a server that ignores Range): start over.
                    file.set_len(0).map_err(Trouble::Local)?;
                    file.seek(SeekFrom::Start(0)).map_err(Trouble::Local)?;
                }
                206 => {
                    let from = resp
                        .headers()
                        .get("content-range")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.strip_prefix("bytes "))
                        .and_then(|v| v.split('-').next())
                        .and_then(|v| v.parse::<u64>().ok());
                    if from != Some(have) {
                        file.set_len(0).map_err(Trouble::Local)?;
                        broken += 1;
                        if broken >= ATTEMPTS {
                            return Err(Trouble::Down(format!(
                                "GET `{object}`: the server answers ranges it was not asked for"
                            )));
                        }
                        continue;
                    }
                }
                // Asked for bytes past the end: what we have is all there is.
                416 if have > 0 => return Ok(true),
                404 | 410 => return Ok(false),
                s => return Err(Self::status_error(object, s, "GET")),
            }
            let start = file.stream_position().map_err(Trouble::Local)?;
            let mut body = resp.body_mut().as_reader();
            let copied = io::copy(&mut body, file);
            let end = file.seek(SeekFrom::End(0)).map_err(Trouble::Local)?;
            received.fetch_add(end - start, Ordering::Relaxed);
            match copied {
                Ok(_) => return Ok(true),
                Err(e) => {
                    broken += 1;
                    if broken >= ATTEMPTS {
                        return Err(Trouble::Down(format!("GET `{object}` broke off: {e}")));
                    }
                    // Keep what arrived; the next request asks for the rest.
                    std::thread::sleep(Duration::from_millis(100 << broken));
                }
            }
        }
    }

    fn put(&self, object: &str, open: Opener, len: u64, sent: &AtomicU64) -> Result<(), Trouble> {
        let url = self.object_url(object);
        let resp = Self::retry(|| {
            let mut r = open().map_err(ureq::Error::Io)?;
            let body = ureq::SendBody::from_reader(&mut r);
            self.with_auth(self.agent.put(&url))
                .header("Content-Length", len.to_string())
                .send(body)
        })?;
        match resp.status().as_u16() {
            200..=299 => {
                sent.fetch_add(len, Ordering::Relaxed);
                Ok(())
            }
            s => Err(Self::status_error(object, s, "PUT")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_leave_the_url_and_go_into_one_header() {
        let r = Http::new("https://ci:p%40ss@h:1/x/", Credentials::None).unwrap();
        assert_eq!(r.base, "https://h:1/x");
        assert_eq!(r.auth.as_deref(), Some("Basic Y2k6cEBzcw=="));
        let r = Http::new("http://u:p@h", Credentials::Bearer("tok".into())).unwrap();
        assert_eq!(r.base, "http://h");
        assert_eq!(r.auth.as_deref(), Some("Bearer tok"));
        let dbg = format!("{:?}", Credentials::Bearer("tok".into()));
        assert!(!dbg.contains("tok"), "{dbg}");
        let e = Http::new("ftp://u:secret@h", Credentials::None)
            .err()
            .unwrap();
        assert!(!e.contains("secret"), "{e}");
    }

    #[test]
    fn base64_matches_the_rfc_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }
}
