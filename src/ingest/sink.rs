//! Where recorded sessions go: the [`RecordingSink`] contract between the tap and the durable
//! queue, and the session metadata the tap hands over.
//!
//! The daemon implements the sink with the LMDB queue; tests use an in-memory one. The sink's
//! calls block (LMDB fsync): the tap always calls them through `smol::unblock`, never on an
//! executor thread.

use std::path::Path;

use serde::{Deserialize, Serialize};

pub use crate::queue::EndReason;

/// A recorded session as the client's connection parameters describe it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionMeta {
    /// `recording-session-id`; the tap makes one up when the client sent none.
    pub session_id: String,
    /// `recording-user-id` (may be empty).
    pub user_id: String,
    /// `recording-username` (may be empty).
    pub username: String,
    /// `recording-image-friendly-name` (may be empty).
    pub image_friendly_name: String,
    /// The protocol (`vnc`, `rdp`, `ssh`...): what the client selected, or for a join of a
    /// connection (`$...`) the protocol of the session that owns it (`joined` when the tap
    /// did not see that one start).
    pub protocol: String,
    /// The remote host, `host:port` from the connect's `hostname` and `port` (a join takes
    /// the target of the session it joins); empty when unknown.
    pub target: String,
    /// The peer address the tap accepted (`ip:port`; behind the Guacamole web app, the web
    /// app's address).
    pub client_addr: String,
    /// When the connection was admitted, ms since the epoch.
    pub started_ms: u64,
}

/// The sink's answer to [`RecordingSink::open_session`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionStart {
    /// The sink's own id of the session (the queue's): handed back with each sealed segment,
    /// so the sink never looks the session up again by its external id.
    pub session: u64,
    /// Index of the first segment this connection writes: 0 for a new session, `n` when a
    /// session with this id already has `n` segments (a reconnect).
    pub next_index: u32,
}

/// What the tap made of a connection that came with the id of a live session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejoin {
    /// The earlier connection was going (its client had dropped): its segment was sealed and
    /// this connection records the next segments of the same session.
    Continued {
        /// How long the new connection waited for the earlier one to seal, ms.
        waited_ms: u64,
    },
    /// The earlier connection stays (a second tab): this one is recorded as its own session
    /// with a derived id, `meta.session_id`, linked to `live`.
    Linked {
        /// The id of the session that stays live.
        live: String,
    },
}

/// The sink cannot take the session or segment.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SinkError {
    /// The queue cannot be written now (disk full, database busy); may heal.
    #[error("recording queue unavailable: {0}")]
    Unavailable(String),
    /// The queue refuses this input for good (e.g. a session id it cannot store).
    #[error("recording queue refused: {0}")]
    Rejected(String),
}

impl crate::error::Classify for SinkError {
    fn is_transient(&self) -> bool {
        matches!(self, SinkError::Unavailable(_))
    }
}

/// Receives sessions and their sealed segments. Every call may block (fsync).
pub trait RecordingSink: Send + Sync {
    /// A recorded session (or a reconnect of one) starts.
    ///
    /// # Errors
    /// The queue cannot record it: the tap refuses the session (fail closed).
    fn open_session(&self, meta: &SessionMeta) -> Result<SessionStart, SinkError>;

    /// Segment `index` of the session is sealed (written and fsynced) at `path`, `bytes` long;
    /// `session` is the id [`Self::open_session`] gave. Called in index order per session;
    /// encoding may start at once.
    ///
    /// # Errors
    /// The queue cannot take it: the tap closes the session with an `error` (fail closed).
    fn segment_sealed(
        &self,
        session: u64,
        meta: &SessionMeta,
        index: u32,
        path: &Path,
        bytes: u64,
    ) -> Result<(), SinkError>;

    /// The connection ended, `reason` says how; every segment it wrote has been passed to
    /// `segment_sealed`. A session that never had a segment (it ended before anything was
    /// drawn) leaves nothing behind but an audit entry saying why.
    fn session_closed(&self, meta: &SessionMeta, reason: EndReason);

    /// A connection came with the id of a session live in this process (a reconnect, or a
    /// second tab): `how` says what the tap made of it (audit).
    fn rejoined(&self, meta: &SessionMeta, how: &Rejoin);

    /// A session that had to be recorded was refused (audit), with the reason given to the
    /// client.
    fn refused(&self, meta: &SessionMeta, reason: &str);

    /// A session [`Self::open_session`] accepted could not start after all (its segment
    /// directory or guacd failed) and nothing was recorded: the sink forgets what
    /// `open_session` created, so no empty session is left behind (a reconnect keeps its
    /// earlier segments), and audits the reason given to the client, like [`Self::refused`].
    fn not_started(&self, meta: &SessionMeta, reason: &str);
}
