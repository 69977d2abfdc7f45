//! Fleet history: many appliances, one audited history, indexed from the shared bucket.
//!
//! Appliances write a signed, self-describing manifest per session version to the bucket
//! ([`manifest`], key in the data dir: [`keys`]); the history role (`serve` with a `[fleet]`
//! section) lists the bucket, verifies what it finds and keeps an index of its own.
//!
//! - [`manifest`]: pure: format 2 JSON, canonical form, ed25519 signing and verification.
//! - [`keys`]: the appliance's signing key file.
//! - [`index`]: the history role's LMDB index (the only LMDB code outside `queue/`).
//! - [`indexer`]: lists the bucket, fetches, verifies and files manifests; marks gone clips.
//! - [`writer`]: the appliance side: queue records -> signed manifest version in the bucket.

pub mod index;
pub mod indexer;
pub mod keys;
pub mod manifest;
pub mod writer;
