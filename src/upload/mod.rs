//! Object stores, upload locations, retries and retention.
//!
//! - [`store`]: the [`ObjectStore`] trait (blocking) and [`StoreError`], the only way the
//!   program talks to storage.
//! - [`local`]: [`LocalDirStore`], a directory that behaves like a bucket (embedded default).
//! - [`s3`]: [`S3Store`], S3-compatible storage through the minio crate on its own tokio thread.
//! - [`location`]: the upload location (`s3://`, `file://`) and per-clip key templates.
//! - [`retry`]: the backoff schedule.
//! - [`worker`]: [`UploadWorker`], the queue -> store loop (upload, verify, expire). What
//!   the bucket says about a session (its manifests) is the `manifest` stage's.
//! - [`retention`]: [`RetentionWorker`], raw segments after upload, purge of old history and
//!   audit entries.
//!
//! Callers: `config.rs` builds [`UploadSettings`]; `app.rs` calls [`open_store`]; the upload
//! worker and the HTTP server use the returned store.

pub mod local;
pub mod location;
pub mod retention;
pub mod retry;
pub mod s3;
pub mod store;
pub mod worker;

use std::sync::Arc;

pub use local::LocalDirStore;
pub use location::{
    ClipVars, KeyTemplate, Secret, SettingsError, StoreTarget, UploadLocation, UploadSettings,
};
pub use retention::{RetentionSettings, RetentionStatus, RetentionWorker};
pub use s3::{S3Config, S3Store};
pub use store::{
    ListPage, ListedObject, ObjectInfo, ObjectStore, PutOptions, SharedStore, StoreError,
    StoreErrorKind,
};
pub use worker::{TickOutcome, UploadStatus, UploadWorker, UploadWorkerConfig};

/// Why [`open_store`] failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenStoreError {
    /// A setting is invalid.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// The store could not be set up (directory not creatable, client not buildable).
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl crate::error::Classify for OpenStoreError {
    fn is_transient(&self) -> bool {
        match self {
            Self::Settings(_) => false,
            Self::Store(e) => crate::error::Classify::is_transient(e),
        }
    }
}

/// Validates the settings and opens the store they name. Does not contact a remote store
/// (call [`ObjectStore::probe`] for that), so the daemon starts even while S3 is down.
///
/// # Errors
/// [`OpenStoreError::Settings`] naming the bad field; [`OpenStoreError::Store`] when the local
/// directory cannot be created or the S3 client cannot be built.
pub fn open_store(settings: &UploadSettings) -> Result<Arc<dyn ObjectStore>, OpenStoreError> {
    let location = settings.validate()?;
    Ok(open_target(settings, &location.target)?)
}

/// Opens the store of an already validated location, or, when that fails for a reason the
/// store's own retries can outlive (a bucket directory not creatable yet), the store unopened
/// with the reason: the daemon starts, keeps clips locally and retries. Only invalid settings
/// are an error.
///
/// # Errors
/// [`StoreError`] when the S3 client cannot be built.
pub fn open_target_or_later(
    settings: &UploadSettings,
    target: &StoreTarget,
) -> Result<(Arc<dyn ObjectStore>, Option<StoreError>), StoreError> {
    match (open_target(settings, target), target) {
        (Ok(store), _) => Ok((store, None)),
        (Err(e), StoreTarget::Local { root }) => {
            Ok((Arc::new(LocalDirStore::unopened(root)), Some(e)))
        }
        (Err(e), StoreTarget::S3 { .. }) => Err(e),
    }
}

/// Opens the store of an already validated location.
///
/// # Errors
/// As [`open_store`].
pub fn open_target(
    settings: &UploadSettings,
    target: &StoreTarget,
) -> Result<Arc<dyn ObjectStore>, StoreError> {
    match target {
        StoreTarget::Local { root } => Ok(Arc::new(LocalDirStore::open(root)?)),
        StoreTarget::S3 {
            bucket,
            endpoint_url,
            ..
        } => {
            let cfg = S3Config {
                endpoint_url: endpoint_url.clone(),
                bucket: bucket.clone(),
                region: settings.region.clone(),
                access_key: settings.access_key.clone(),
                secret_key: settings.secret_key.clone(),
                ca_file: settings.ca_file.clone(),
                path_style: settings.path_style,
                part_bytes: crate::limits::UPLOAD_PART_BYTES,
            };
            Ok(Arc::new(S3Store::open(&cfg)?))
        }
    }
}
