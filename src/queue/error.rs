//! `QueueError`: every way a queue operation can fail, classified for retry decisions.
//!
//! Owns the error type only; the functions that produce these errors live in the sibling files.

use crate::error::Classify;

use super::Failpoint;

/// The kind of record an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entity {
    /// A recorded session.
    Session,
    /// A segment file of a session.
    Segment,
    /// An encoded clip of a segment.
    Clip,
    /// A web user account.
    User,
    /// An API token.
    Token,
    /// A web login session.
    WebSession,
    /// The settings override record.
    Settings,
    /// The filing record of a session's fleet manifest.
    ManifestFiling,
}

/// A failed queue operation.
///
/// Classification ([`Classify::is_transient`]):
/// - transient: [`QueueError::Full`] (the map reached its configured maximum: refuse new work
///   now, retry later once retention or an operator has made room), I/O errors the kernel calls
///   transient (disk full, interrupted), and [`QueueError::InjectedFailure`] (a test crash).
/// - permanent: everything else. In particular [`QueueError::StaleState`] is permanent: the
///   same call can never succeed again because another worker already moved the record; the
///   caller re-reads the record (or simply drops the work) instead of retrying.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The LMDB map is at its configured maximum and the write did not fit.
    #[error("queue full: LMDB map at its maximum of {map_bytes} bytes")]
    Full {
        /// The map size that was reached.
        map_bytes: usize,
    },
    /// The record is not in the state the caller expected: another worker changed it first.
    #[error("{entity:?} {id}: expected state {expected}, found {actual}")]
    StaleState {
        /// The kind of record.
        entity: Entity,
        /// Its id.
        id: u64,
        /// The state the caller asserted.
        expected: &'static str,
        /// The state actually stored.
        actual: &'static str,
    },
    /// The requested state change is not an edge of the state machine.
    #[error("{entity:?} {id}: illegal transition {from} -> {to}")]
    IllegalTransition {
        /// The kind of record.
        entity: Entity,
        /// Its id.
        id: u64,
        /// Current state.
        from: &'static str,
        /// Requested state.
        to: &'static str,
    },
    /// No record with that key.
    #[error("{entity:?} {key} not found")]
    NotFound {
        /// The kind of record.
        entity: Entity,
        /// The key looked up (id or name).
        key: String,
    },
    /// A record with that key already exists (creating a user that exists, for instance).
    #[error("{entity:?} {key} already exists")]
    AlreadyExists {
        /// The kind of record.
        entity: Entity,
        /// The key.
        key: String,
    },
    /// A stored record could not be decoded.
    #[error("corrupt record in database {db} at key {key}")]
    Corrupt {
        /// Database name (see `db_name`).
        db: &'static str,
        /// The key, rendered for logs.
        key: String,
    },
    /// A stored record carries a version this build does not know (written by a newer build).
    #[error("record in database {db} at key {key} has unknown version {version}")]
    UnknownVersion {
        /// Database name.
        db: &'static str,
        /// The key, rendered for logs.
        key: String,
        /// The stored version tag (0 = V1).
        version: u64,
    },
    /// A value is larger than its limit in `crate::limits`.
    #[error("{field} is {bytes} bytes, limit {max}")]
    TooLarge {
        /// Which field.
        field: &'static str,
        /// Its size.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// A record could not be encoded (a path that is not UTF-8, for instance).
    #[error("cannot encode record for database {db}: {reason}")]
    Encode {
        /// Database name.
        db: &'static str,
        /// What postcard said.
        reason: String,
    },
    /// A test fail-point fired (see [`super::Queue::set_failpoint`]).
    #[error("injected failure at {0:?}")]
    InjectedFailure(Failpoint),
    /// An LMDB error other than the ones above.
    #[error("lmdb: {0}")]
    Lmdb(#[source] heed::MdbError),
    /// An I/O error from opening or growing the environment.
    #[error("queue i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl QueueError {
    /// True for a stored record this build cannot read ([`QueueError::Corrupt`] or
    /// [`QueueError::UnknownVersion`]): listings and work pulling log and skip those.
    pub fn is_unreadable(&self) -> bool {
        matches!(
            self,
            QueueError::Corrupt { .. } | QueueError::UnknownVersion { .. }
        )
    }

    /// True when the error is LMDB's `MDB_MAP_FULL` (handled inside the queue by growing).
    pub(super) fn is_map_full(&self) -> bool {
        matches!(self, QueueError::Lmdb(heed::MdbError::MapFull))
    }
}

impl From<heed::Error> for QueueError {
    fn from(e: heed::Error) -> Self {
        match e {
            heed::Error::Io(io) => QueueError::Io(io),
            heed::Error::Mdb(m) => QueueError::Lmdb(m),
            heed::Error::Encoding(b) => QueueError::Encode {
                db: "?",
                reason: b.to_string(),
            },
            // Values are decoded by `codec::decode` with their key; this path only sees key
            // decoding failures, which mean a corrupt index.
            heed::Error::Decoding(_) => QueueError::Corrupt {
                db: "?",
                key: "?".into(),
            },
            heed::Error::EnvAlreadyOpened => QueueError::Io(std::io::Error::new(
                std::io::ErrorKind::ResourceBusy,
                "queue environment already open in this process",
            )),
        }
    }
}

impl Classify for QueueError {
    fn is_transient(&self) -> bool {
        match self {
            QueueError::Full { .. } | QueueError::InjectedFailure(_) => true,
            QueueError::Io(e) => e.is_transient(),
            QueueError::Lmdb(m) => matches!(
                m,
                heed::MdbError::MapFull
                    | heed::MdbError::ReadersFull
                    | heed::MdbError::TxnFull
                    | heed::MdbError::MapResized
            ),
            QueueError::StaleState { .. }
            | QueueError::IllegalTransition { .. }
            | QueueError::NotFound { .. }
            | QueueError::AlreadyExists { .. }
            | QueueError::Corrupt { .. }
            | QueueError::UnknownVersion { .. }
            | QueueError::TooLarge { .. }
            | QueueError::Encode { .. } => false,
        }
    }
}
