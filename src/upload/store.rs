//! The object-store trait: the only way the program talks to storage, and its error type.
//!
//! Owns [`ObjectStore`], [`PutOptions`], [`ObjectInfo`], [`StoreError`] and its classification.
//! Implementations live next door: [`super::local::LocalDirStore`] (embedded default) and
//! [`super::s3::S3Store`] (minio crate on its own tokio thread). The API is blocking: callers are
//! the upload worker threads and the tiny_http threads; nobody outside `upload/` sees tokio.

use std::io::Read;
use std::path::PathBuf;

use crate::error::Classify;

/// User-metadata name (without the `x-amz-meta-` prefix) holding the hex SHA-256 of an object.
pub const SHA256_METADATA: &str = "sha256";
/// Content type of clips.
pub const CONTENT_TYPE_MP4: &str = "video/mp4";
/// Content type of thumbnails.
pub const CONTENT_TYPE_JPEG: &str = "image/jpeg";
/// Content type of manifests and probes.
pub const CONTENT_TYPE_JSON: &str = "application/json";

/// What to attach to an object when writing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutOptions {
    /// `Content-Type` of the object.
    pub content_type: String,
    /// Hex SHA-256 of the content, stored as user metadata so `head()` can confirm an upload
    /// without downloading it. The caller computed it while producing the file.
    pub sha256_hex: String,
}

/// What the store knows about one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Key of the object.
    pub key: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Hex SHA-256 from the object's metadata, when it carries one.
    pub sha256_hex: Option<String>,
    /// Entity tag as the store reports it (quotes removed); informative only.
    pub etag: Option<String>,
    /// `Content-Type`, when the store reports it.
    pub content_type: Option<String>,
}

/// One object as a listing reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedObject {
    /// Key of the object.
    pub key: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Entity tag (quotes removed): changes when the object is rewritten.
    pub etag: Option<String>,
}

/// One page of a listing (S3 ListObjectsV2), keys in ascending order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListPage {
    /// The objects of this page.
    pub objects: Vec<ListedObject>,
    /// Continuation token of the next page; `None` on the last one.
    pub next_token: Option<String>,
}

/// A bucket-like store of objects addressed by keys.
///
/// Keys are `/`-separated relative paths, at most [`crate::limits::S3_KEY_BYTES_MAX`] bytes,
/// whose components are never empty and never start with `.` (see [`check_key`]).
pub trait ObjectStore: Send + Sync {
    /// Uploads the file at `path` as `key` (multipart above the part size for S3), replacing any
    /// object of that key.
    ///
    /// # Errors
    /// A [`StoreError`]; the local file's own I/O errors are [`StoreError::SourceIo`].
    fn put_file(
        &self,
        key: &str,
        path: &std::path::Path,
        opts: &PutOptions,
    ) -> Result<ObjectInfo, StoreError>;

    /// Uploads `bytes` (at most [`crate::limits::STORE_PUT_BYTES_MAX`]) as `key`.
    ///
    /// # Errors
    /// A [`StoreError`].
    fn put_bytes(
        &self,
        key: &str,
        bytes: &[u8],
        opts: &PutOptions,
    ) -> Result<ObjectInfo, StoreError>;

    /// Size, SHA-256 metadata and etag of `key`, or `None` when there is no such object.
    ///
    /// # Errors
    /// A [`StoreError`] when the store cannot answer.
    fn head(&self, key: &str) -> Result<Option<ObjectInfo>, StoreError>;

    /// Streams the object, or the byte range `(first, last_inclusive)` of it (`None` last = to
    /// the end), for playback and downloads through the appliance.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] when there is no such object; other [`StoreError`]s. Errors in
    /// the middle of the stream surface as `std::io::Error` from `read`.
    fn get(
        &self,
        key: &str,
        range: Option<(u64, Option<u64>)>,
    ) -> Result<Box<dyn Read + Send>, StoreError>;

    /// One page (at most [`crate::limits::STORE_LIST_PAGE_KEYS_MAX`] keys) of the objects whose
    /// key starts with `prefix`, in ascending key order, after `start_after` (exclusive), or
    /// continuing a previous page's `token`: one request to the store.
    ///
    /// # Errors
    /// A [`StoreError`]; stores that cannot list answer [`StoreError::Settings`].
    fn list_page(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        token: Option<&str>,
    ) -> Result<ListPage, StoreError> {
        let _ = (prefix, start_after, token);
        Err(StoreError::Settings {
            detail: format!("{} cannot list its objects", self.describe()),
        })
    }

    /// Deletes `key`; deleting a missing object is not an error.
    ///
    /// # Errors
    /// A [`StoreError`].
    fn delete(&self, key: &str) -> Result<(), StoreError>;

    /// A URL that lets a browser GET the object directly for `expiry_s` seconds (at most
    /// [`crate::limits::PRESIGN_EXPIRY_S_MAX`]); `None` for stores that have no URLs (local).
    ///
    /// # Errors
    /// A [`StoreError`].
    fn presign_get(&self, key: &str, expiry_s: u32) -> Result<Option<String>, StoreError>;

    /// Writes, reads back and deletes a small probe object: the end-to-end check used by
    /// `doctor` and the status page.
    ///
    /// # Errors
    /// The first [`StoreError`] met; its [`StoreError::kind`] says what to fix.
    fn probe(&self) -> Result<(), StoreError> {
        probe_store(self)
    }

    /// Human description of where objects go (no secrets), for logs and the status page.
    fn describe(&self) -> String;
}

/// The store in force, replaceable while the daemon runs (a reload of the settings swaps it).
/// Every call goes to the store current at that moment; a call in flight finishes on the store
/// it started with.
pub struct SharedStore {
    inner: std::sync::RwLock<std::sync::Arc<dyn ObjectStore>>,
}

impl SharedStore {
    /// Wraps `store`.
    pub fn new(store: std::sync::Arc<dyn ObjectStore>) -> Self {
        Self {
            inner: std::sync::RwLock::new(store),
        }
    }

    /// The store in force now.
    pub fn current(&self) -> std::sync::Arc<dyn ObjectStore> {
        self.inner
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Puts `store` in force for every later call.
    pub fn replace(&self, store: std::sync::Arc<dyn ObjectStore>) {
        *self
            .inner
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = store;
    }
}

impl ObjectStore for SharedStore {
    fn put_file(
        &self,
        key: &str,
        path: &std::path::Path,
        opts: &PutOptions,
    ) -> Result<ObjectInfo, StoreError> {
        self.current().put_file(key, path, opts)
    }
    fn put_bytes(
        &self,
        key: &str,
        bytes: &[u8],
        opts: &PutOptions,
    ) -> Result<ObjectInfo, StoreError> {
        self.current().put_bytes(key, bytes, opts)
    }
    fn head(&self, key: &str) -> Result<Option<ObjectInfo>, StoreError> {
        self.current().head(key)
    }
    fn get(
        &self,
        key: &str,
        range: Option<(u64, Option<u64>)>,
    ) -> Result<Box<dyn Read + Send>, StoreError> {
        self.current().get(key, range)
    }
    fn list_page(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        token: Option<&str>,
    ) -> Result<ListPage, StoreError> {
        self.current().list_page(prefix, start_after, token)
    }
    fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.current().delete(key)
    }
    fn presign_get(&self, key: &str, expiry_s: u32) -> Result<Option<String>, StoreError> {
        self.current().presign_get(key, expiry_s)
    }
    fn probe(&self) -> Result<(), StoreError> {
        self.current().probe()
    }
    fn describe(&self) -> String {
        self.current().describe()
    }
}

/// Key prefix of probe objects; a lifecycle rule on it cleans up probes a crash left behind.
pub const PROBE_KEY_PREFIX: &str = "session-recorder-probe";

/// The default [`ObjectStore::probe`]: put, head (size and SHA-256 must match), get, delete.
///
/// # Errors
/// The first failing step's error.
pub fn probe_store<S: ObjectStore + ?Sized>(store: &S) -> Result<(), StoreError> {
    use sha2::Digest;
    let mut rnd = [0u8; 8];
    // A random suffix keeps concurrent probes (doctor + status page) from deleting each
    // other's object. Without randomness a fixed suffix still works, just less isolated.
    let _ = getrandom::fill(&mut rnd);
    let key = format!("{PROBE_KEY_PREFIX}/{}.json", hex::encode(rnd));
    let body = format!("{{\"probe\":\"{}\"}}", hex::encode(rnd)).into_bytes();
    let sha = hex::encode(sha2::Sha256::digest(&body));
    let opts = PutOptions {
        content_type: CONTENT_TYPE_JSON.to_string(),
        sha256_hex: sha.clone(),
    };
    store.put_bytes(&key, &body, &opts)?;
    let verdict = (|| {
        let info = store.head(&key)?.ok_or_else(|| StoreError::Inconsistent {
            key: key.clone(),
            detail: "probe object missing right after it was written".into(),
        })?;
        if info.size_bytes != body.len() as u64 || info.sha256_hex.as_deref() != Some(&sha) {
            return Err(StoreError::Inconsistent {
                key: key.clone(),
                detail: format!(
                    "probe read back as {} bytes sha256={:?}",
                    info.size_bytes, info.sha256_hex
                ),
            });
        }
        let mut back = Vec::new();
        store
            .get(&key, None)?
            .take(body.len() as u64 + 1)
            .read_to_end(&mut back)
            .map_err(|e| StoreError::Transfer {
                detail: e.to_string(),
            })?;
        if back != body {
            return Err(StoreError::Inconsistent {
                key: key.clone(),
                detail: "probe content differs".into(),
            });
        }
        Ok(())
    })();
    let deleted = store.delete(&key);
    verdict?;
    deleted
}

/// What kind of failure a [`StoreError`] is, in words an operator can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum StoreErrorKind {
    /// Connection refused, DNS failure, reset: the store is down or unreachable.
    Unreachable,
    /// A request took longer than its timeout.
    Timeout,
    /// The store answered 5xx or "slow down".
    ServerError,
    /// 403, bad signature, unknown access key.
    AccessDenied,
    /// The bucket does not exist.
    BucketMissing,
    /// The TLS handshake failed (untrusted or invalid certificate).
    Tls,
    /// Any other refusal of the request (4xx).
    Rejected,
    /// The object does not exist.
    NotFound,
    /// The key is not acceptable (programming error or bad template).
    InvalidKey,
    /// Reading the local file to upload failed.
    SourceIo,
    /// The local store's directory could not be written or read.
    LocalIo,
    /// The store answered something that contradicts what was just written.
    Inconsistent,
    /// The transfer broke off in the middle.
    Transfer,
    /// The store's settings are invalid (should have been caught at config load).
    Settings,
    /// The S3 client thread is gone.
    ClientGone,
}

impl StoreErrorKind {
    /// Short words for the status page.
    pub fn words(self) -> &'static str {
        match self {
            Self::Unreachable => "cannot reach the object store",
            Self::Timeout => "object store timed out",
            Self::ServerError => "object store server error",
            Self::AccessDenied => "access denied: check key/secret",
            Self::BucketMissing => "bucket does not exist",
            Self::Tls => "TLS certificate not trusted: check ca-file and endpoint name",
            Self::Rejected => "request rejected by the object store",
            Self::NotFound => "object not found",
            Self::InvalidKey => "invalid object key",
            Self::SourceIo => "cannot read the local clip file",
            Self::LocalIo => "cannot write the local store directory",
            Self::Inconsistent => "object store returned inconsistent data",
            Self::Transfer => "transfer interrupted",
            Self::Settings => "invalid upload settings",
            Self::ClientGone => "S3 client thread stopped",
        }
    }
}

impl std::fmt::Display for StoreErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.words())
    }
}

/// Errors of the object stores. Classified by [`Classify::is_transient`]; shown to people
/// through [`StoreError::kind`].
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// See [`StoreErrorKind::Unreachable`].
    #[error("cannot reach the object store: {detail}")]
    Unreachable {
        /// What the network stack said.
        detail: String,
    },
    /// See [`StoreErrorKind::Timeout`].
    #[error("object store {op} timed out after {after_ms} ms")]
    Timeout {
        /// Operation name.
        op: &'static str,
        /// The timeout that elapsed.
        after_ms: u64,
    },
    /// See [`StoreErrorKind::ServerError`].
    #[error("object store server error: {detail}")]
    Server {
        /// Status or error code.
        detail: String,
    },
    /// See [`StoreErrorKind::AccessDenied`].
    #[error("access denied: check key/secret ({detail})")]
    AccessDenied {
        /// Error code from the store.
        detail: String,
    },
    /// See [`StoreErrorKind::BucketMissing`].
    #[error("bucket does not exist: {bucket}")]
    BucketMissing {
        /// The bucket name.
        bucket: String,
    },
    /// See [`StoreErrorKind::Tls`].
    #[error("TLS handshake with the object store failed: {detail}")]
    Tls {
        /// What rustls said.
        detail: String,
    },
    /// See [`StoreErrorKind::Rejected`].
    #[error("request rejected by the object store: {detail}")]
    Rejected {
        /// Error code and message from the store.
        detail: String,
    },
    /// See [`StoreErrorKind::NotFound`].
    #[error("object not found: {key}")]
    NotFound {
        /// The key.
        key: String,
    },
    /// See [`StoreErrorKind::InvalidKey`].
    #[error("invalid object key {key:?}: {reason}")]
    InvalidKey {
        /// The key, as given.
        key: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// See [`StoreErrorKind::SourceIo`].
    #[error("cannot read {path}: {source}")]
    SourceIo {
        /// The local file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// See [`StoreErrorKind::LocalIo`].
    #[error("local store {path}: {source}")]
    LocalIo {
        /// The file or directory in the store.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// See [`StoreErrorKind::Inconsistent`].
    #[error("object store inconsistent for {key}: {detail}")]
    Inconsistent {
        /// The key.
        key: String,
        /// What did not match.
        detail: String,
    },
    /// See [`StoreErrorKind::Transfer`].
    #[error("transfer interrupted: {detail}")]
    Transfer {
        /// What broke.
        detail: String,
    },
    /// See [`StoreErrorKind::Settings`].
    #[error("invalid upload settings: {detail}")]
    Settings {
        /// Which setting and why.
        detail: String,
    },
    /// See [`StoreErrorKind::ClientGone`].
    #[error("the S3 client thread has stopped")]
    ClientGone,
}

impl StoreError {
    /// The kind of failure, for the status page and metrics.
    pub fn kind(&self) -> StoreErrorKind {
        match self {
            Self::Unreachable { .. } => StoreErrorKind::Unreachable,
            Self::Timeout { .. } => StoreErrorKind::Timeout,
            Self::Server { .. } => StoreErrorKind::ServerError,
            Self::AccessDenied { .. } => StoreErrorKind::AccessDenied,
            Self::BucketMissing { .. } => StoreErrorKind::BucketMissing,
            Self::Tls { .. } => StoreErrorKind::Tls,
            Self::Rejected { .. } => StoreErrorKind::Rejected,
            Self::NotFound { .. } => StoreErrorKind::NotFound,
            Self::InvalidKey { .. } => StoreErrorKind::InvalidKey,
            Self::SourceIo { .. } => StoreErrorKind::SourceIo,
            Self::LocalIo { .. } => StoreErrorKind::LocalIo,
            Self::Inconsistent { .. } => StoreErrorKind::Inconsistent,
            Self::Transfer { .. } => StoreErrorKind::Transfer,
            Self::Settings { .. } => StoreErrorKind::Settings,
            Self::ClientGone => StoreErrorKind::ClientGone,
        }
    }

    /// True when the failure is in the store's settings (key, secret, bucket, CA, endpoint)
    /// rather than in the data or the network: the status page shows it as a config problem.
    pub fn is_config_problem(&self) -> bool {
        matches!(
            self.kind(),
            StoreErrorKind::AccessDenied
                | StoreErrorKind::BucketMissing
                | StoreErrorKind::Tls
                | StoreErrorKind::Settings
        )
    }
}

impl Classify for StoreError {
    fn is_transient(&self) -> bool {
        match self {
            Self::Unreachable { .. }
            | Self::Timeout { .. }
            | Self::Server { .. }
            | Self::Transfer { .. }
            | Self::Inconsistent { .. }
            | Self::ClientGone => true,
            // A missing source file cannot come back.
            Self::SourceIo { source, .. } => source.is_transient(),
            // The bucket directory: a mount that is not up yet (missing directory, or a file
            // where the directory should be), a permission or read-only mount being fixed, a
            // disk being cleaned. An operator's fix cures each of them without a restart.
            Self::LocalIo { source, .. } => {
                use std::io::ErrorKind::*;
                source.is_transient()
                    || matches!(
                        source.kind(),
                        NotFound | NotADirectory | PermissionDenied | ReadOnlyFilesystem
                    )
                    || matches!(
                        source.raw_os_error(),
                        Some(
                            libc::ENOENT
                                | libc::ENOTDIR
                                | libc::EACCES
                                | libc::EROFS
                                | libc::ENOSPC
                        )
                    )
            }
            Self::AccessDenied { .. }
            | Self::BucketMissing { .. }
            | Self::Tls { .. }
            | Self::Rejected { .. }
            | Self::NotFound { .. }
            | Self::InvalidKey { .. }
            | Self::Settings { .. } => false,
        }
    }
}

/// Checks the key rules every store enforces: non-empty, at most
/// [`crate::limits::S3_KEY_BYTES_MAX`] bytes, no leading `/`, no empty component, no component
/// starting with `.` (so no `.`/`..`, and room for the local store's hidden files), no control
/// characters or backslashes.
///
/// # Errors
/// [`StoreError::InvalidKey`] naming the broken rule.
pub fn check_key(key: &str) -> Result<(), StoreError> {
    let bad = |reason| {
        Err(StoreError::InvalidKey {
            key: key.chars().take(200).collect(),
            reason,
        })
    };
    if key.is_empty() {
        return bad("empty");
    }
    if key.len() > crate::limits::S3_KEY_BYTES_MAX {
        return bad("longer than 1024 bytes");
    }
    if key.chars().any(|c| c.is_control() || c == '\\') {
        return bad("contains a control character or backslash");
    }
    for part in key.split('/') {
        if part.is_empty() {
            return bad("empty path component (leading, trailing or double '/')");
        }
        if part.starts_with('.') {
            return bad("path component starts with '.'");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_key_rejects_escapes_and_oddities() {
        for key in [
            "",
            "/abs.mp4",
            "a//b.mp4",
            "a/../b.mp4",
            "../b.mp4",
            "a/./b",
            "a/",
            ".hidden",
            "a\\b",
            "a\nb",
            "a\0b",
        ] {
            assert!(check_key(key).is_err(), "{key:?} accepted");
        }
        assert!(check_key(&"a".repeat(1025)).is_err());
        assert!(check_key(&"a".repeat(1024)).is_ok());
        assert!(check_key("u/2023-12-12 21:12:45.386547/s-1.mp4").is_ok());
        assert!(check_key("a.b/c..d/é.mp4").is_ok());
    }

    #[test]
    fn classification_and_words() {
        let e = StoreError::BucketMissing { bucket: "b".into() };
        assert!(!e.is_transient());
        assert!(e.is_config_problem());
        assert_eq!(e.kind().words(), "bucket does not exist");
        let e = StoreError::AccessDenied {
            detail: "SignatureDoesNotMatch".into(),
        };
        assert!(!e.is_transient());
        assert_eq!(e.kind().to_string(), "access denied: check key/secret");
        assert!(
            StoreError::Unreachable {
                detail: "refused".into()
            }
            .is_transient()
        );
        assert!(
            StoreError::Timeout {
                op: "put",
                after_ms: 1
            }
            .is_transient()
        );
        let full = std::io::Error::from(std::io::ErrorKind::StorageFull);
        assert!(
            StoreError::LocalIo {
                path: "x".into(),
                source: full
            }
            .is_transient()
        );
        let gone = std::io::Error::from(std::io::ErrorKind::NotFound);
        assert!(
            !StoreError::SourceIo {
                path: "x".into(),
                source: gone
            }
            .is_transient()
        );
        // What a mount or permission fix cures is retried.
        for errno in [
            libc::ENOENT,
            libc::ENOTDIR,
            libc::EACCES,
            libc::EROFS,
            libc::ENOSPC,
        ] {
            let e = StoreError::LocalIo {
                path: "bucket".into(),
                source: std::io::Error::from_raw_os_error(errno),
            };
            assert!(e.is_transient(), "errno {errno}");
        }
    }
}
