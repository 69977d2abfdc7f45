//! Fleet history: many appliances, one audited history, indexed from the shared bucket.
//!
//! Appliances write a signed, self-describing manifest per session version to the bucket
//! (the `manifest` module: format, signing, the appliance's key, the worker that writes them);
//! the history role (`serve` with a `[fleet]` section) lists the bucket, verifies what it
//! finds through `manifest::signed` and keeps an index of its own.
//!
//! - [`index`]: the history role's LMDB index (the only LMDB code outside `queue/`).
//! - [`indexer`]: lists the bucket, fetches, verifies and files manifests; marks gone clips.

pub mod index;
pub mod indexer;
