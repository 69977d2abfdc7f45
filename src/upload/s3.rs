//! `S3Store`: the [`ObjectStore`] over S3-compatible storage, through the minio crate (rustls).
//!
//! minio runs on tokio. To keep tokio invisible to the rest of the program, one dedicated OS
//! thread (`s3-client`) runs a current-thread tokio runtime that owns the client. The blocking
//! trait methods send a job over a channel and wait for the reply with a timeout; jobs run
//! concurrently on that one thread (uploads are I/O-bound; SHA-256 of parts runs on minio's
//! blocking pool). Dropping the store ends the thread.
//!
//! Uploads read the file in large pieces: up to [`UPLOAD_PART_BYTES`] as one PUT, above it as a
//! multipart upload of parts of that size with [`UPLOAD_PARTS_IN_FLIGHT_MAX`] parts in flight
//! (that many parts in memory). `Content-Type` and the SHA-256
//! (`x-amz-meta-sha256`) go with the object. Errors are mapped to [`StoreError`] by structure
//! (S3 error code, HTTP status, reqwest/rustls error type), never by message text.
//!
//! Does not: pick keys, retry (the worker does), or read settings (`open_store` does).

use std::future::Future;
use std::io::{self, Read};
use std::path::Path;
use std::pin::Pin;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use minio::s3::builders::ObjectContent;
use minio::s3::client::{MinioClient, MinioClientBuilder};
use minio::s3::creds::StaticProvider;
use minio::s3::error::{Error as MinioError, NetworkError, S3ServerError, ValidationErr};
use minio::s3::http::BaseUrl;
use minio::s3::minio_error_response::MinioErrorCode;
use minio::s3::multimap_ext::Multimap;
use minio::s3::response_traits::{HasEtagFromHeaders, HasS3Fields};
use minio::s3::types::{PartInfo, Region, S3Api, ToStream};

use super::location::Secret;
use super::store::{
    ListPage, ListedObject, ObjectInfo, ObjectStore, PutOptions, SHA256_METADATA, StoreError,
    check_key,
};
use crate::limits::{
    PRESIGN_EXPIRY_S_MAX, STORE_LIST_PAGE_KEYS_MAX, STORE_PUT_BYTES_MAX,
    STORE_READ_CHUNKS_BUFFERED, STORE_READ_IDLE_TIMEOUT_MS, STORE_REQUEST_TIMEOUT_MS,
    UPLOAD_OBJECT_BYTES_MAX, UPLOAD_PART_BYTES, UPLOAD_PART_BYTES_MIN, UPLOAD_PARTS_IN_FLIGHT_MAX,
    UPLOAD_THROUGHPUT_BYTES_PER_S_MIN,
};

/// Extra wait on the caller's side beyond the runtime-side timeout, so the runtime's own
/// timeout (which cancels the request) normally answers first.
const REPLY_GRACE_MS: u64 = 5_000;

/// Everything needed to talk to one bucket.
#[derive(Debug, Clone)]
pub struct S3Config {
    /// `https://host[:port]` or `http://host[:port]`.
    pub endpoint_url: String,
    /// Bucket name.
    pub bucket: String,
    /// Region used for signing.
    pub region: String,
    /// Access key id.
    pub access_key: String,
    /// Secret key.
    pub secret_key: Secret,
    /// Extra CA certificates (PEM) to trust.
    pub ca_file: Option<std::path::PathBuf>,
    /// Path-style addressing instead of virtual-hosted style.
    pub path_style: bool,
    /// Multipart part size; files up to this size go up in one PUT.
    pub part_bytes: u64,
}

impl S3Config {
    /// A config with the default part size.
    pub fn new(endpoint_url: &str, bucket: &str, access_key: &str, secret_key: Secret) -> Self {
        Self {
            endpoint_url: endpoint_url.to_string(),
            bucket: bucket.to_string(),
            region: super::location::DEFAULT_REGION.to_string(),
            access_key: access_key.to_string(),
            secret_key,
            ca_file: None,
            path_style: true,
            part_bytes: UPLOAD_PART_BYTES,
        }
    }
}

type JobFuture = Pin<Box<dyn Future<Output = ()>>>;
type Job = Box<dyn FnOnce(MinioClient) -> JobFuture + Send>;

/// An S3 bucket as an [`ObjectStore`].
pub struct S3Store {
    jobs: Option<tokio::sync::mpsc::UnboundedSender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
    bucket: String,
    description: String,
    part_bytes: u64,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store")
            .field("store", &self.description)
            .finish()
    }
}

impl S3Store {
    /// Builds the client and starts its runtime thread. Does not contact the store (use
    /// [`ObjectStore::probe`] for that).
    ///
    /// # Errors
    /// [`StoreError::Settings`] for an unusable endpoint, region or CA file;
    /// [`StoreError::LocalIo`] when the thread or runtime cannot be created.
    pub fn open(cfg: &S3Config) -> Result<Self, StoreError> {
        let settings = |detail: String| StoreError::Settings { detail };
        assert!(
            cfg.part_bytes >= UPLOAD_PART_BYTES_MIN,
            "part size below S3's minimum"
        );
        let mut base: BaseUrl = cfg
            .endpoint_url
            .parse()
            .map_err(|e: ValidationErr| settings(format!("endpoint {}: {e}", cfg.endpoint_url)))?;
        base.region = Region::new(&cfg.region)
            .map_err(|e| settings(format!("region {:?}: {e}", cfg.region)))?;
        base.virtual_style = !cfg.path_style;
        let provider = StaticProvider::new(&cfg.access_key, cfg.secret_key.expose(), None);
        let client = MinioClientBuilder::new(base)
            .provider(Some(provider))
            .ssl_cert_file(cfg.ca_file.as_deref())
            .app_info(Some((
                "session-recorder".into(),
                env!("CARGO_PKG_VERSION").into(),
            )))
            .build()
            .map_err(|e| settings(format!("S3 client: {}", error_chain(&e))))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| StoreError::LocalIo {
                path: "tokio runtime".into(),
                source,
            })?;
        let (jobs, mut rx) = tokio::sync::mpsc::unbounded_channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("s3-client".into())
            .spawn(move || {
                let local = tokio::task::LocalSet::new();
                local.block_on(&runtime, async move {
                    while let Some(job) = rx.recv().await {
                        tokio::task::spawn_local(job(client.clone()));
                    }
                });
            })
            .map_err(|source| StoreError::LocalIo {
                path: "s3-client thread".into(),
                source,
            })?;
        let style = if cfg.path_style {
            "path-style"
        } else {
            "virtual-hosted"
        };
        Ok(Self {
            jobs: Some(jobs),
            thread: Some(thread),
            bucket: cfg.bucket.clone(),
            description: format!(
                "S3 bucket {} at {} (region {}, {style}{})",
                cfg.bucket,
                cfg.endpoint_url,
                cfg.region,
                if cfg.ca_file.is_some() {
                    ", private CA"
                } else {
                    ""
                }
            ),
            part_bytes: cfg.part_bytes,
        })
    }

    /// Runs `op` on the runtime thread and waits (at most `timeout` plus a grace) for its result.
    fn call<T, F, Fut>(&self, op: &'static str, timeout: Duration, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(MinioClient) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, StoreError>> + 'static,
    {
        let (reply, answer) = std_mpsc::sync_channel(1);
        let after_ms = timeout.as_millis() as u64;
        let job: Job = Box::new(move |client| {
            Box::pin(async move {
                let result = match tokio::time::timeout(timeout, f(client)).await {
                    Ok(r) => r,
                    Err(_) => Err(StoreError::Timeout { op, after_ms }),
                };
                // The caller may have given up already; nothing to do then.
                let _ = reply.send(result);
            })
        });
        let jobs = self.jobs.as_ref().ok_or(StoreError::ClientGone)?;
        jobs.send(job).map_err(|_| StoreError::ClientGone)?;
        match answer.recv_timeout(timeout + Duration::from_millis(REPLY_GRACE_MS)) {
            Ok(r) => r,
            Err(std_mpsc::RecvTimeoutError::Timeout) => Err(StoreError::Timeout { op, after_ms }),
            Err(std_mpsc::RecvTimeoutError::Disconnected) => Err(StoreError::ClientGone),
        }
    }

    fn metadata(opts: &PutOptions) -> Multimap {
        let mut m = Multimap::new();
        m.insert(
            format!("x-amz-meta-{SHA256_METADATA}"),
            opts.sha256_hex.clone(),
        );
        m
    }
}

impl Drop for S3Store {
    fn drop(&mut self) {
        // Closing the channel ends the runtime loop; in-flight jobs are cancelled with it.
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Timeout of a transfer of `bytes`: the fixed part plus the time at the slowest allowed rate.
fn transfer_timeout(bytes: u64) -> Duration {
    Duration::from_millis(
        STORE_REQUEST_TIMEOUT_MS + bytes.saturating_mul(1000) / UPLOAD_THROUGHPUT_BYTES_PER_S_MIN,
    )
}

fn request_timeout() -> Duration {
    Duration::from_millis(STORE_REQUEST_TIMEOUT_MS)
}

impl ObjectStore for S3Store {
    fn put_file(
        &self,
        key: &str,
        path: &Path,
        opts: &PutOptions,
    ) -> Result<ObjectInfo, StoreError> {
        check_key(key)?;
        let size = std::fs::metadata(path)
            .map_err(|source| StoreError::SourceIo {
                path: path.to_path_buf(),
                source,
            })?
            .len();
        if size > UPLOAD_OBJECT_BYTES_MAX {
            return Err(StoreError::SourceIo {
                path: path.to_path_buf(),
                source: io::Error::new(io::ErrorKind::FileTooLarge, "clip larger than 64 GiB"),
            });
        }
        let (bucket, key_s, path_b) = (self.bucket.clone(), key.to_string(), path.to_path_buf());
        let (meta, ctype, part) = (
            Self::metadata(opts),
            opts.content_type.clone(),
            self.part_bytes,
        );
        let etag = self.call("put_file", transfer_timeout(size), move |c| async move {
            let job = FileUpload {
                c,
                bucket,
                key: key_s,
                path: path_b,
                size,
                part_bytes: part,
            };
            let sent = job.run(meta, ctype).await;
            diagnose(&job.c, &job.bucket, sent).await
        })?;
        Ok(ObjectInfo {
            key: key.to_string(),
            size_bytes: size,
            sha256_hex: Some(opts.sha256_hex.clone()),
            etag,
            content_type: Some(opts.content_type.clone()),
        })
    }

    fn put_bytes(
        &self,
        key: &str,
        bytes: &[u8],
        opts: &PutOptions,
    ) -> Result<ObjectInfo, StoreError> {
        check_key(key)?;
        assert!(
            bytes.len() <= STORE_PUT_BYTES_MAX,
            "put_bytes of {} bytes",
            bytes.len()
        );
        let (bucket, key_s, data) = (self.bucket.clone(), key.to_string(), bytes.to_vec());
        let (meta, ctype) = (Self::metadata(opts), opts.content_type.clone());
        let size = bytes.len() as u64;
        let resp = self.call("put_bytes", transfer_timeout(size), move |c| async move {
            let sent = c
                .put_object_content(&bucket, &key_s, ObjectContent::from(data))
                .map_err(|e| map_err(e.into(), &bucket, &key_s, None))?
                .content_type(ctype)
                .user_metadata(meta)
                .build()
                .send()
                .await
                .map_err(|e| map_err(e, &bucket, &key_s, None));
            diagnose(&c, &bucket, sent).await
        })?;
        Ok(ObjectInfo {
            key: key.to_string(),
            size_bytes: size,
            sha256_hex: Some(opts.sha256_hex.clone()),
            etag: resp.etag().ok().map(|e| e.to_string()),
            content_type: Some(opts.content_type.clone()),
        })
    }

    fn head(&self, key: &str) -> Result<Option<ObjectInfo>, StoreError> {
        check_key(key)?;
        let (bucket, key_s) = (self.bucket.clone(), key.to_string());
        self.call("head", request_timeout(), move |c| async move {
            let sent = c
                .stat_object(&bucket, &key_s)
                .map_err(|e| map_err(e.into(), &bucket, &key_s, None))?
                .build()
                .send()
                .await;
            let resp = match sent {
                Ok(r) => r,
                Err(e) => match map_err(e, &bucket, &key_s, None) {
                    StoreError::NotFound { .. } => return Ok(None),
                    other => return Err(other),
                },
            };
            let bad = |e: ValidationErr| StoreError::Inconsistent {
                key: key_s.clone(),
                detail: format!("unreadable HEAD response: {e}"),
            };
            let size_bytes = resp.size().map_err(bad)?;
            let meta = resp.user_metadata().map_err(bad)?;
            let content_type = resp
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            Ok(Some(ObjectInfo {
                key: key_s.clone(),
                size_bytes,
                sha256_hex: meta.get(SHA256_METADATA).cloned(),
                etag: resp.etag().ok().map(|e| e.to_string()),
                content_type,
            }))
        })
    }

    fn get(
        &self,
        key: &str,
        range: Option<(u64, Option<u64>)>,
    ) -> Result<Box<dyn Read + Send>, StoreError> {
        check_key(key)?;
        let (bucket, key_s) = (self.bucket.clone(), key.to_string());
        let (offset, length) = match range {
            None => (None, None),
            Some((first, last)) => {
                assert!(last.is_none_or(|l| l >= first), "range end before start");
                (Some(first), last.map(|l| l - first + 1))
            }
        };
        let (tx, rx) = tokio::sync::mpsc::channel(STORE_READ_CHUNKS_BUFFERED);
        let expected = self.call("get", request_timeout(), move |c| async move {
            let resp = c
                .get_object(&bucket, &key_s)
                .map_err(|e| map_err(e.into(), &bucket, &key_s, None))?
                .offset(offset)
                .length(length)
                .build()
                .send()
                .await
                .map_err(|e| map_err(e, &bucket, &key_s, None))?;
            let (stream, len) = resp
                .into_boxed_stream()
                .map_err(|e| map_err(e, &bucket, &key_s, None))?;
            // Pump the body into the bounded channel in the background; the blocking reader
            // pulls from the other end. A dropped reader ends the pump at its next send.
            tokio::task::spawn_local(pump(stream, tx));
            Ok(len)
        })?;
        Ok(Box::new(ChunkReader {
            rx,
            chunk: None,
            pos: 0,
            remaining: expected,
        }))
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        check_key(key)?;
        let (bucket, key_s) = (self.bucket.clone(), key.to_string());
        self.call("delete", request_timeout(), move |c| async move {
            let sent = c
                .delete_object(&bucket, key_s.as_str())
                .map_err(|e| map_err(e.into(), &bucket, &key_s, None))?
                .build()
                .send()
                .await;
            match sent.map_err(|e| map_err(e, &bucket, &key_s, None)) {
                Ok(_) | Err(StoreError::NotFound { .. }) => Ok(()),
                Err(e) => Err(e),
            }
        })
    }

    fn list_page(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        token: Option<&str>,
    ) -> Result<ListPage, StoreError> {
        use smol::stream::StreamExt;
        let bucket = self.bucket.clone();
        let (prefix, start_after, token) = (
            prefix.to_string(),
            start_after.map(str::to_string),
            token.map(str::to_string),
        );
        self.call("list", request_timeout(), move |c| async move {
            let what = prefix.clone();
            // The minio stream follows continuation tokens by itself; taking only its first
            // item sends exactly one ListObjectsV2 request (the stream is lazy).
            let mut stream = c
                .list_objects(&bucket)
                .map_err(|e| map_err(e.into(), &bucket, &what, None))?
                .recursive(true)
                .max_keys(Some(STORE_LIST_PAGE_KEYS_MAX as u16))
                .prefix((!prefix.is_empty()).then_some(prefix))
                .start_after(start_after)
                .continuation_token(token)
                .build()
                .to_stream()
                .await;
            let page = match stream.next().await {
                Some(r) => r.map_err(|e| map_err(e, &bucket, &what, None))?,
                None => return Ok(ListPage::default()),
            };
            let objects = page
                .contents
                .into_iter()
                .filter(|e| !e.is_prefix && !e.is_delete_marker)
                .map(|e| ListedObject {
                    key: e.name,
                    size_bytes: e.size.unwrap_or(0),
                    etag: e.etag.map(|t| t.trim_matches('"').to_string()),
                })
                .collect();
            Ok(ListPage {
                objects,
                next_token: page.next_continuation_token.filter(|_| page.is_truncated),
            })
        })
    }

    fn presign_get(&self, key: &str, expiry_s: u32) -> Result<Option<String>, StoreError> {
        check_key(key)?;
        let expiry_s = expiry_s.clamp(1, PRESIGN_EXPIRY_S_MAX);
        let (bucket, key_s) = (self.bucket.clone(), key.to_string());
        self.call("presign", request_timeout(), move |c| async move {
            let method = "GET".parse().expect("GET is a method");
            let resp = c
                .get_presigned_object_url(&bucket, &key_s, method)
                .map_err(|e| map_err(e.into(), &bucket, &key_s, None))?
                .expiry_seconds(expiry_s)
                .build()
                .send()
                .await
                .map_err(|e| map_err(e, &bucket, &key_s, None))?;
            Ok(Some(resp.url))
        })
    }

    fn describe(&self) -> String {
        self.description.clone()
    }
}

/// One file upload on the runtime thread: a single PUT up to the part size, otherwise a
/// multipart upload with up to [`UPLOAD_PARTS_IN_FLIGHT_MAX`] parts in flight. Each part is read
/// with one large read on tokio's blocking pool (minio's own file source reads 8 KiB at a time
/// through async-std, which costs CPU and leaves the link idle between parts).
struct FileUpload {
    c: MinioClient,
    bucket: String,
    key: String,
    path: std::path::PathBuf,
    size: u64,
    part_bytes: u64,
}

impl FileUpload {
    fn err(&self, e: MinioError) -> StoreError {
        map_err(e, &self.bucket, &self.key, Some(&self.path))
    }

    /// Uploads; returns the etag.
    async fn run(&self, meta: Multimap, ctype: String) -> Result<Option<String>, StoreError> {
        if self.size <= self.part_bytes {
            let data = read_part(self.path.clone(), 0, self.size).await?;
            let resp = self
                .c
                .put_object_content(&self.bucket, &self.key, ObjectContent::from(data))
                .map_err(|e| self.err(e.into()))?
                .content_type(ctype)
                .user_metadata(meta)
                .build()
                .send()
                .await
                .map_err(|e| self.err(e))?;
            if resp.object_size() != self.size {
                return Err(StoreError::Inconsistent {
                    key: self.key.clone(),
                    detail: format!("sent {} of {} bytes", resp.object_size(), self.size),
                });
            }
            return Ok(resp.etag().ok().map(|e| e.to_string()));
        }
        let created = self
            .c
            .create_multipart_upload(&self.bucket, &self.key)
            .map_err(|e| self.err(e.into()))?
            .content_type(ctype)
            .user_metadata(meta)
            .build()
            .send()
            .await
            .map_err(|e| self.err(e))?;
        let upload_id = created
            .upload_id()
            .await
            .map_err(|e| self.err(e.into()))?
            .to_string();
        let result = self.parts_and_complete(&upload_id).await;
        if result.is_err() {
            // Best effort: a store that is down keeps the parts until its own cleanup.
            if let Ok(b) =
                self.c
                    .abort_multipart_upload(&self.bucket, &self.key, upload_id.as_str())
            {
                let _ = b.build().send().await;
            }
        }
        result
    }

    async fn parts_and_complete(&self, upload_id: &str) -> Result<Option<String>, StoreError> {
        let n_parts = self.size.div_ceil(self.part_bytes);
        assert!(
            n_parts <= 10_000,
            "S3 allows 10,000 parts; object limit keeps us below"
        );
        let mut in_flight = std::collections::VecDeque::new();
        let mut parts = Vec::with_capacity(n_parts as usize);
        let mut failure = None;
        for i in 0..n_parts {
            if in_flight.len() == UPLOAD_PARTS_IN_FLIGHT_MAX {
                match join_part(in_flight.pop_front()).await {
                    Ok(p) => parts.push(p),
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            let first = i * self.part_bytes;
            let len = self.part_bytes.min(self.size - first);
            let number = u16::try_from(i + 1).expect("part number within 10,000");
            let (c, bucket, key, path) = (
                self.c.clone(),
                self.bucket.clone(),
                self.key.clone(),
                self.path.clone(),
            );
            let upload_id = upload_id.to_string();
            in_flight.push_back(tokio::task::spawn_local(async move {
                let data = read_part(path.clone(), first, len).await?;
                let data = ObjectContent::from(data)
                    .to_segmented_bytes()
                    .await
                    .map_err(|e| StoreError::SourceIo {
                        path: path.clone(),
                        source: e,
                    })?;
                let err = |e: MinioError| map_err(e, &bucket, &key, Some(&path));
                let resp = c
                    .upload_part(&bucket, &key, upload_id.as_str(), number, data)
                    .map_err(|e| err(e.into()))?
                    .build()
                    .send()
                    .await
                    .map_err(err)?;
                let etag = resp.etag().map_err(|e| err(e.into()))?;
                Ok(PartInfo::new(number, etag, len, None))
            }));
        }
        if let Some(e) = failure {
            in_flight.iter().for_each(|t| t.abort());
            return Err(e);
        }
        while !in_flight.is_empty() {
            parts.push(join_part(in_flight.pop_front()).await?);
        }
        let resp = self
            .c
            .complete_multipart_upload(&self.bucket, &self.key, upload_id, parts)
            .map_err(|e| self.err(e.into()))?
            .build()
            .send()
            .await
            .map_err(|e| self.err(e))?;
        Ok(resp.etag().ok().map(|e| e.to_string()))
    }
}

type PartTask = tokio::task::JoinHandle<Result<PartInfo, StoreError>>;

async fn join_part(task: Option<PartTask>) -> Result<PartInfo, StoreError> {
    let task = task.expect("a part in flight");
    match task.await {
        Ok(r) => r,
        Err(e) => Err(StoreError::Transfer {
            detail: format!("part upload task: {e}"),
        }),
    }
}

/// Reads `len` bytes at `first` of `path` on tokio's blocking pool.
async fn read_part(path: std::path::PathBuf, first: u64, len: u64) -> Result<Vec<u8>, StoreError> {
    let p = path.clone();
    let read = tokio::task::spawn_blocking(move || -> io::Result<Vec<u8>> {
        use std::io::{Seek, SeekFrom};
        let mut f = std::fs::File::open(&p)?;
        f.seek(SeekFrom::Start(first))?;
        let mut buf = vec![0u8; usize::try_from(len).map_err(io::Error::other)?];
        f.read_exact(&mut buf)?;
        Ok(buf)
    })
    .await;
    match read {
        Ok(Ok(buf)) => Ok(buf),
        Ok(Err(source)) => Err(StoreError::SourceIo { path, source }),
        Err(e) => Err(StoreError::SourceIo {
            path,
            source: io::Error::other(e.to_string()),
        }),
    }
}

/// A store that refuses a request (bad signature, missing bucket) may answer before reading the
/// body and close the connection; the client then only sees a broken pipe while sending. After
/// such a transfer failure, one body-less HEAD of the bucket tells the real, permanent cause.
async fn diagnose<T>(
    c: &MinioClient,
    bucket: &str,
    sent: Result<T, StoreError>,
) -> Result<T, StoreError> {
    let Err(StoreError::Transfer { detail }) = sent else {
        return sent;
    };
    let probe = match c.bucket_exists(bucket) {
        Ok(b) => b.build().send().await,
        Err(_) => return Err(StoreError::Transfer { detail }),
    };
    match probe {
        Ok(r) if !r.exists() => Err(StoreError::BucketMissing {
            bucket: bucket.into(),
        }),
        Err(e) => match map_err(e, bucket, "", None) {
            e @ (StoreError::AccessDenied { .. } | StoreError::BucketMissing { .. }) => Err(e),
            _ => Err(StoreError::Transfer { detail }),
        },
        Ok(_) => Err(StoreError::Transfer { detail }),
    }
}

/// Moves a GET body from the network into the reader's channel, one chunk at a time, giving up
/// when the store is silent for [`STORE_READ_IDLE_TIMEOUT_MS`].
async fn pump<S, B>(mut stream: Pin<Box<S>>, tx: tokio::sync::mpsc::Sender<io::Result<B>>)
where
    S: smol::stream::Stream<Item = io::Result<B>> + ?Sized,
{
    use smol::stream::StreamExt;
    let idle = Duration::from_millis(STORE_READ_IDLE_TIMEOUT_MS);
    loop {
        let item = match tokio::time::timeout(idle, stream.next()).await {
            Ok(Some(item)) => item,
            Ok(None) => return,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "object store read idle",
            )),
        };
        let stop = item.is_err();
        if tx.send(item).await.is_err() || stop {
            return;
        }
    }
}

/// Blocking `Read` over the chunks the pump sends; a stream that ends before the announced
/// length is an `UnexpectedEof`, never a silently short object.
struct ChunkReader<B> {
    rx: tokio::sync::mpsc::Receiver<io::Result<B>>,
    chunk: Option<B>,
    pos: usize,
    remaining: u64,
}

impl<B: AsRef<[u8]>> Read for ChunkReader<B> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(chunk) = &self.chunk {
                let bytes = &chunk.as_ref()[self.pos..];
                if !bytes.is_empty() {
                    let n = bytes.len().min(buf.len());
                    buf[..n].copy_from_slice(&bytes[..n]);
                    self.pos += n;
                    self.remaining = self.remaining.saturating_sub(n as u64);
                    return Ok(n);
                }
            }
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => {
                    self.chunk = Some(chunk);
                    self.pos = 0;
                }
                Some(Err(e)) => return Err(e),
                None if self.remaining == 0 => return Ok(0),
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("object stream ended {} bytes early", self.remaining),
                    ));
                }
            }
        }
    }
}

/// Maps a minio error to a [`StoreError`] by structure.
fn map_err(e: MinioError, bucket: &str, key: &str, source: Option<&Path>) -> StoreError {
    match e {
        MinioError::S3Server(S3ServerError::S3Error(resp)) => {
            let detail = format!(
                "{}: {}",
                resp.code(),
                resp.message().as_deref().unwrap_or("")
            );
            match resp.code() {
                MinioErrorCode::NoSuchBucket => StoreError::BucketMissing {
                    bucket: bucket.into(),
                },
                MinioErrorCode::NoSuchKey => StoreError::NotFound { key: key.into() },
                MinioErrorCode::AccessDenied => StoreError::AccessDenied { detail },
                MinioErrorCode::OtherError(code) => match code.as_str() {
                    "signaturedoesnotmatch"
                    | "invalidaccesskeyid"
                    | "invalidtoken"
                    | "expiredtoken"
                    | "accountproblem"
                    | "invalidsecuritytoken" => StoreError::AccessDenied { detail },
                    "internalerror" | "serviceunavailable" | "slowdown" | "requesttimeout"
                    | "throttling" | "toomanyrequests" | "http 500" | "http 502" | "http 503"
                    | "http 504" => StoreError::Server { detail },
                    _ => StoreError::Rejected { detail },
                },
                _ => StoreError::Rejected { detail },
            }
        }
        MinioError::S3Server(S3ServerError::HttpError(status, _))
        | MinioError::S3Server(S3ServerError::InvalidServerResponse {
            http_status_code: status,
            ..
        })
        | MinioError::Network(NetworkError::ServerError(status)) => from_status(status, key),
        MinioError::Network(NetworkError::ReqwestError(e))
        | MinioError::Validation(ValidationErr::HttpError(e)) => {
            from_transport(&e, e.is_timeout(), e.is_connect())
        }
        MinioError::DriveIo(minio::s3::error::IoError::IOError(e))
        | MinioError::Validation(ValidationErr::IOError(e)) => match source {
            Some(p) => StoreError::SourceIo {
                path: p.to_path_buf(),
                source: e,
            },
            None => StoreError::Transfer {
                detail: e.to_string(),
            },
        },
        other => StoreError::Rejected {
            detail: error_chain(&other),
        },
    }
}

/// HTTP status without a parsable S3 error body.
fn from_status(status: u16, key: &str) -> StoreError {
    let detail = format!("HTTP {status}");
    match status {
        401 | 403 => StoreError::AccessDenied { detail },
        404 => StoreError::NotFound { key: key.into() },
        408 | 429 | 500..=599 => StoreError::Server { detail },
        _ => StoreError::Rejected { detail },
    }
}

/// A transport (reqwest) error, with reqwest's own timeout/connect flags: TLS trouble is a
/// settings problem (permanent); connection, DNS, timeouts and broken transfers are transient.
fn from_transport(
    e: &(dyn std::error::Error + 'static),
    is_timeout: bool,
    is_connect: bool,
) -> StoreError {
    let detail = error_chain(e);
    if find_rustls(e) {
        StoreError::Tls { detail }
    } else if is_timeout || chain_has_io(e, &[io::ErrorKind::TimedOut]) {
        StoreError::Timeout {
            op: "request",
            after_ms: STORE_REQUEST_TIMEOUT_MS,
        }
    } else if is_connect {
        StoreError::Unreachable { detail }
    } else {
        StoreError::Transfer { detail }
    }
}

/// Whether an `io::Error` of one of `kinds` is in the chain.
fn chain_has_io(e: &(dyn std::error::Error + 'static), kinds: &[io::ErrorKind]) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err
            .downcast_ref::<io::Error>()
            .is_some_and(|io| kinds.contains(&io.kind()))
        {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Whether a rustls error (bad certificate, handshake failure) is anywhere in the chain,
/// including inside `io::Error`s (whose `source()` skips the wrapped error).
fn find_rustls(e: &(dyn std::error::Error + 'static)) -> bool {
    if e.downcast_ref::<rustls::Error>().is_some() {
        return true;
    }
    let inner = e.downcast_ref::<io::Error>().and_then(|io| io.get_ref());
    if inner.is_some_and(|inner| find_rustls(inner)) {
        return true;
    }
    e.source().is_some_and(find_rustls)
}

/// All messages of an error chain joined with `: ` (adjacent repeats dropped).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = Some(e);
    while let Some(err) = cur {
        let msg = err.to_string();
        if parts.last().is_none_or(|last| !last.contains(&msg)) {
            parts.push(msg);
        }
        cur = err.source();
    }
    parts.join(": ")
}
