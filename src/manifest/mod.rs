//! Manifests: what the bucket says about each session, next to its clips. The stage after
//! upload on the path tap -> queue -> encode -> upload -> manifest -> fleet index -> serve.
//!
//! The queue marks a session's manifests owed in the same transaction as the change that makes
//! them owed (a clip up or expired, a segment done with, the session ended); the manifest
//! worker takes what is owed, writes it and clears the mark, so a crash at any point writes
//! them again after the restart and no session is left without its final manifest.
//!
//! - [`worker`]: [`ManifestWorker`], owed manifests from the queue -> the store.
//! - [`writer`]: the signed fleet manifest's versions, filed write-ahead through the queue.
//! - [`signed`]: pure: format 2 JSON, canonical form, ed25519 signing and verification (the
//!   history role's `fleet` module reads manifests through it).
//! - [`session_json`]: pure: the format 1 per-session manifest JSON.
//! - [`keys`]: the appliance's signing key file.
//!
//! Imports `upload` (the store trait, key templates, retry schedule) and `queue`; `upload`
//! imports neither this module nor `fleet`.

pub mod keys;
pub mod session_json;
pub mod signed;
pub mod worker;
pub mod writer;

pub use worker::{ManifestStatus, ManifestTick, ManifestWorker, ManifestWorkerConfig};
pub use writer::FleetWriterConfig;
