//! The S3 transport of the remote cache (`s3://BUCKET/PREFIX`), for AWS S3 and self-hosted
//! S3-compatible stores (Garage, Ceph RGW, MinIO…), through `object_store`: it signs (SigV4),
//! retries with backoff on 5xx and timeouts, and does multipart uploads and ranged reads. The
//! objects are the HTTP remote's (`PREFIX/cas-v1/<blake3>`, `PREFIX/ac-v1/<key>`), and
//! [`crate::Remote`] checks everything fetched exactly as it does for HTTP: this module only
//! moves bytes.
//!
//! object_store is asynchronous; the remote's calls are blocking (they run on the remote's own
//! pool of threads), so each call is one `block_on` on a small runtime owned by the transport.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

use crate::backend::{Backend, Opener, Trouble};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{
    ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig,
    WriteMultipart,
};

/// Objects larger than this go up as multipart uploads, in parts of this size.
const PART: usize = 16 << 20;
/// Parts of one object in flight at once.
const PARTS_AT_ONCE: usize = 4;
/// Broken downloads of one object resumed before the store counts as down.
const ATTEMPTS: u32 = 3;

/// Where the bucket is and who we are to it. Credentials left out are looked for by
/// object_store itself (instance metadata), never in a file or the environment by this crate.
#[derive(Clone, Default)]
pub struct S3Config {
    pub bucket: String,
    /// Folder in the bucket, without leading or trailing `/` (may be empty).
    pub prefix: String,
    /// `http(s)://host:port` of a self-hosted store; AWS when `None`.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Virtual-hosted addressing (`BUCKET.host`), as AWS prefers; path-style
    /// (`host/BUCKET`, what self-hosted stores take) otherwise.
    pub virtual_hosted: bool,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
}

// Never print a secret, not even in a debug dump.
impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("virtual_hosted", &self.virtual_hosted)
            .field(
                "credentials",
                &self.access_key_id.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl S3Config {
    /// The URL to show: `s3://BUCKET/PREFIX`, with the endpoint of a self-hosted store.
    pub fn shown(&self) -> String {
        let mut s = format!("s3://{}", self.bucket);
        if !self.prefix.is_empty() {
            s.push('/');
            s.push_str(&self.prefix);
        }
        if let Some(e) = &self.endpoint {
            s.push_str(&format!(" (at {e})"));
        }
        s
    }
}

pub(crate) struct S3 {
    store: Arc<AmazonS3>,
    prefix: String,
    rt: tokio::runtime::Runtime,
}

impl S3 {
    pub(crate) fn new(cfg: &S3Config) -> Result<S3, String> {
        if cfg.bucket.is_empty() {
            return Err("no bucket (s3://BUCKET/PREFIX)".into());
        }
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(&cfg.bucket)
            .with_virtual_hosted_style_request(cfg.virtual_hosted)
            .with_region(cfg.region.clone().unwrap_or_else(|| "us-east-1".into()))
            // A few quick retries: a store that is down is reported once and the build goes on
            // locally, rather than waiting minutes for it.
            .with_retry(RetryConfig {
                max_retries: 3,
                retry_timeout: Duration::from_secs(20),
                ..RetryConfig::default()
            })
            .with_client_options(
                ClientOptions::new()
                    .with_connect_timeout(Duration::from_secs(5))
                    .with_timeout(Duration::from_secs(120)),
            );
        if let Some(e) = &cfg.endpoint {
            b = b
                .with_endpoint(e.trim_end_matches('/'))
                .with_allow_http(e.starts_with("http://"));
        }
        if let (Some(id), Some(secret)) = (&cfg.access_key_id, &cfg.secret_access_key) {
            b = b.with_access_key_id(id).with_secret_access_key(secret);
            if let Some(t) = &cfg.session_token {
                b = b.with_token(t);
            }
        }
        let store = b.build().map_err(|e| e.to_string())?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("imgspec-s3")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the S3 client's runtime: {e}"))?;
        Ok(S3 {
            store: Arc::new(store),
            prefix: cfg.prefix.trim_matches('/').to_string(),
            rt,
        })
    }

    fn path(&self, object: &str) -> ObjectPath {
        if self.prefix.is_empty() {
            ObjectPath::from(object)
        } else {
            ObjectPath::from(format!("{}/{object}", self.prefix))
        }
    }
}

impl Backend for S3 {
    fn exists(&self, object: &str) -> Result<bool, Trouble> {
        let path = self.path(object);
        match self.rt.block_on(self.store.head(&path)) {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(down("HEAD", object, &e)),
        }
    }

    fn get_small(
        &self,
        object: &str,
        limit: u64,
        down_bytes: &AtomicU64,
    ) -> Result<Option<Vec<u8>>, Trouble> {
        let path = self.path(object);
        self.rt.block_on(async {
            let r = match self.store.get(&path).await {
                Ok(r) => r,
                Err(object_store::Error::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(down("GET", object, &e)),
            };
            if r.meta.size > limit {
                return Err(Trouble::TooLarge);
            }
            let bytes = r.bytes().await.map_err(|e| down("GET", object, &e))?;
            down_bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
            Ok(Some(bytes.to_vec()))
        })
    }

    /// Resumes from what arrived after a broken transfer, with a ranged read.
    fn get_to_file(
        &self,
        object: &str,
        file: &mut File,
        down_bytes: &AtomicU64,
    ) -> Result<bool, Trouble> {
        let path = self.path(object);
        self.rt.block_on(async {
            let mut broken = 0;
            loop {
                let have = file.seek(SeekFrom::End(0)).map_err(Trouble::Local)?;
                let opts = GetOptions {
                    range: (have > 0).then_some(GetRange::Offset(have)),
                    ..GetOptions::default()
                };
                let r = match self.store.get_opts(&path, opts).await {
                    Ok(r) => r,
                    Err(object_store::Error::NotFound { .. }) => return Ok(false),
                    Err(e) => return Err(down("GET", object, &e)),
                };
                if r.range.start != have {
                    file.set_len(0).map_err(Trouble::Local)?;
                    file.seek(SeekFrom::Start(0)).map_err(Trouble::Local)?;
                }
                let mut stream = r.into_stream();
                let mut failed = None;
                while let Some(chunk) = stream.next().await {
                    match chunk {
                        Ok(c) => {
                            file.write_all(&c).map_err(Trouble::Local)?;
                            down_bytes.fetch_add(c.len() as u64, Ordering::Relaxed);
                        }
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    }
                }
                match failed {
                    None => return Ok(true),
                    Some(e) => {
                        broken += 1;
                        if broken >= ATTEMPTS {
                            return Err(down("GET", object, &e));
                        }
                    }
                }
            }
        })
    }

    /// One request for a small object, a multipart upload in parts of [`PART`] for a large one
    /// (aborted if anything fails).
    fn put(
        &self,
        object: &str,
        open: Opener,
        len: u64,
        up_bytes: &AtomicU64,
    ) -> Result<(), Trouble> {
        let path = self.path(object);
        let mut reader = open().map_err(Trouble::Local)?;
        self.rt.block_on(async {
            if len <= PART as u64 {
                let mut buf = Vec::with_capacity(len as usize);
                reader.read_to_end(&mut buf).map_err(Trouble::Local)?;
                let n = buf.len() as u64;
                self.store
                    .put(&path, PutPayload::from(buf))
                    .await
                    .map_err(|e| down("PUT", object, &e))?;
                up_bytes.fetch_add(n, Ordering::Relaxed);
                return Ok(());
            }
            let upload = self
                .store
                .put_multipart(&path)
                .await
                .map_err(|e| down("PUT", object, &e))?;
            let mut w = WriteMultipart::new_with_chunk_size(upload, PART);
            let mut buf = vec![0u8; PART];
            let mut sent = 0u64;
            loop {
                let n = match crate::blob::read_full(&mut reader, &mut buf) {
                    Ok(n) => n,
                    Err(e) => {
                        let _ = w.abort().await;
                        return Err(Trouble::Local(e));
                    }
                };
                if n == 0 {
                    break;
                }
                if let Err(e) = w.wait_for_capacity(PARTS_AT_ONCE).await {
                    return Err(down("PUT", object, &e));
                }
                w.write(&buf[..n]);
                sent += n as u64;
            }
            w.finish().await.map_err(|e| down("PUT", object, &e))?;
            up_bytes.fetch_add(sent, Ordering::Relaxed);
            Ok(())
        })
    }
}

fn down(what: &str, object: &str, e: &object_store::Error) -> Trouble {
    let mut reason = format!("{what} `{object}`: {}", crate::error_chain(e));
    if reason.contains("403")
        || reason.contains("AccessDenied")
        || reason.contains("InvalidAccessKeyId")
    {
        reason.push_str(
            " (check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE, and the key's \
             permissions on the bucket)",
        );
    }
    Trouble::Down(reason)
}
