//! Search inside recordings: the full-text index of session events ([`index`]) and the
//! checked reading of events objects that feeds it. Sits after `upload` (it reads events
//! objects from the store) and before `fleet` and `serve`, which use it: the appliance's
//! indexing worker (wired in `app/`) and the history role's indexer hand it each clip's events
//! object, the pages and the API ask it.
//!
//! An events object read from the bucket is checked against the SHA-256 and size its signed
//! manifest gives ([`verify_events_object`]); one that does not match, cannot be read or does
//! not parse is skipped (the caller counts it); the clip still plays, it only has no events.

pub mod index;

use std::io::Read;

use sha2::{Digest, Sha256};

pub use index::{ClipPlace, Hit, HitPage, IndexStats, SearchIndex, SearchQuery, Snippet};

use crate::error::Classify;
use crate::events::ClipEvents;
use crate::events::format::{EVENTS_OBJECT_BYTES_MAX, EventsFormatError, from_bytes};
use crate::upload::{ObjectStore, StoreError};

/// Why indexing or searching failed, or why an events object was skipped.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    /// The index's directory could not be made or read.
    #[error("search index {0}: {1}")]
    Io(String, std::io::Error),
    /// tantivy failed (a broken or foreign index, a full disk).
    #[error("search index: {0}")]
    Index(String),
    /// The events object is not what its manifest signed.
    #[error("events object {what} does not match its manifest (expected {expected}, got {got})")]
    Mismatch {
        /// `size` or `SHA-256`.
        what: &'static str,
        /// The manifest's value.
        expected: String,
        /// The object's.
        got: String,
    },
    /// The events object does not parse.
    #[error(transparent)]
    Format(#[from] EventsFormatError),
    /// The store could not give the events object.
    #[error("events object: {0}")]
    Store(#[from] StoreError),
}

impl SearchError {
    fn from_tantivy(e: tantivy::TantivyError) -> Self {
        SearchError::Index(e.to_string())
    }

    /// Whether the events object itself is bad (skip and count it; fetching it again cannot
    /// help), as opposed to the index or the store failing.
    pub fn is_bad_object(&self) -> bool {
        matches!(self, SearchError::Mismatch { .. } | SearchError::Format(_))
            || matches!(self, SearchError::Store(StoreError::NotFound { .. }))
    }
}

impl Classify for SearchError {
    fn is_transient(&self) -> bool {
        match self {
            SearchError::Io(_, e) => e.is_transient(),
            SearchError::Store(e) => e.is_transient(),
            // A full disk or a lock held by a dying writer: the next tick tries again.
            SearchError::Index(_) => true,
            SearchError::Mismatch { .. } | SearchError::Format(_) => false,
        }
    }
}

/// What the manifest says an events object must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// Hex SHA-256 of its bytes.
    pub sha256: String,
    /// Its size in bytes.
    pub size_bytes: u64,
}

/// Checks `bytes` against the manifest's size and SHA-256, then parses them.
///
/// # Errors
/// [`SearchError::Mismatch`] (size first, then hash) or [`SearchError::Format`].
pub fn verify_events_object(bytes: &[u8], expected: &Expected) -> Result<ClipEvents, SearchError> {
    if bytes.len() as u64 != expected.size_bytes {
        return Err(SearchError::Mismatch {
            what: "size",
            expected: expected.size_bytes.to_string(),
            got: bytes.len().to_string(),
        });
    }
    let got = hex::encode(Sha256::digest(bytes));
    if !got.eq_ignore_ascii_case(&expected.sha256) {
        return Err(SearchError::Mismatch {
            what: "SHA-256",
            expected: expected.sha256.clone(),
            got,
        });
    }
    Ok(from_bytes(bytes)?)
}

/// Fetches the events object at `key` (at most [`EVENTS_OBJECT_BYTES_MAX`] bytes read) and
/// checks it against `expected` when given (the history role always gives the manifest's; the
/// appliance reading its own bucket may not have it).
///
/// # Errors
/// The store's error, a size or hash mismatch, an object that does not parse.
pub fn fetch_events(
    store: &dyn ObjectStore,
    key: &str,
    expected: Option<&Expected>,
) -> Result<ClipEvents, SearchError> {
    let reader = store.get(key, None)?;
    let mut bytes = Vec::new();
    reader
        .take(EVENTS_OBJECT_BYTES_MAX as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| {
            SearchError::Store(StoreError::Transfer {
                detail: format!("{key}: {e}"),
            })
        })?;
    match expected {
        Some(x) => verify_events_object(&bytes, x),
        None => Ok(from_bytes(&bytes)?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::format::to_bytes;

    #[test]
    fn an_object_that_is_not_what_the_manifest_signed_is_refused() {
        let bytes = to_bytes(&ClipEvents::default());
        let good = Expected {
            sha256: hex::encode(Sha256::digest(&bytes)),
            size_bytes: bytes.len() as u64,
        };
        assert!(verify_events_object(&bytes, &good).is_ok());
        let mut flipped = bytes.clone();
        flipped[3] ^= 1;
        let e = verify_events_object(&flipped, &good).unwrap_err();
        assert!(
            e.is_bad_object() && e.to_string().contains("SHA-256"),
            "{e}"
        );
        let e = verify_events_object(&bytes[1..], &good).unwrap_err();
        assert!(e.to_string().contains("size"), "{e}");
        let junk = b"{not json";
        let e = verify_events_object(
            junk,
            &Expected {
                sha256: hex::encode(Sha256::digest(junk)),
                size_bytes: junk.len() as u64,
            },
        )
        .unwrap_err();
        assert!(matches!(e, SearchError::Format(_)) && !e.is_transient());
    }
}
