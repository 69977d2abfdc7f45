//! The stored records and their state machines.
//!
//! Owns every type that is written to LMDB, each wrapped in a versioned enum (`XRecord::V1`)
//! because postcard is not self-describing. Rules for changing them, since old files must stay
//! readable: never reorder or remove enum variants or struct fields; a new field means a new
//! `V2` struct and a `V1 -> V2` conversion on read; new enum variants (actions, states) go at
//! the end. The numeric state tags used in the index keys are on-disk values too.
//!
//! The transitions themselves are applied in `transition.rs`; this file only says which edges
//! exist.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::codec::Versioned;

/// Declares the payload-free kind of a state enum and the machine around it, the same way for
/// segments and clips: the kind enum (`Copy`, `#[repr(u8)]`; its discriminants are the tags
/// stored in the state indexes), `Kind::ALL` in tag order, `Kind::name()` (the variant name),
/// `State::kind()` and `State::can_become()` from the list of edges. A variant with a payload
/// is written with its pattern (`Failed { .. }`), so the kind match stays exhaustive.
macro_rules! state_kinds {
    (
        $(#[$doc:meta])*
        $kind:ident of $state:ident {
            $($variant:ident $({ $($payload:tt)* })? = $tag:literal,)+
        }
        edges { $($from:ident -> $to:ident,)+ }
    ) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum $kind {
            $(
                #[doc = concat!("See [`", stringify!($state), "::", stringify!($variant), "`].")]
                $variant = $tag,
            )+
        }

        impl $kind {
            /// Every kind, in tag order.
            pub const ALL: [$kind; [$($tag),+].len()] = [$($kind::$variant),+];

            /// Stable name for logs and errors.
            pub fn name(self) -> &'static str {
                match self {
                    $($kind::$variant => stringify!($variant),)+
                }
            }
        }

        impl $state {
            /// The payload-free kind.
            pub fn kind(&self) -> $kind {
                match self {
                    $($state::$variant $({ $($payload)* })? => $kind::$variant,)+
                }
            }

            /// Whether the state machine allows `self -> to`.
            pub fn can_become(&self, to: &$state) -> bool {
                matches!(
                    (self.kind(), to.kind()),
                    $(($kind::$from, $kind::$to))|+
                )
            }
        }
    };
}

// ---------------------------------------------------------------------------------------------
// Sessions

/// Life of a recorded session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionState {
    /// The connection is open and segments are being written.
    Live,
    /// The connection ended normally; `end_ms` is set. A reconnect with its id makes it
    /// `Live` again (its end is cleared and set anew when that connection ends).
    Closed,
    /// The daemon stopped (crash, power loss) while the session was live; the daemon marks such
    /// sessions at start-up, then closes them once their last segment is sealed.
    Interrupted,
}

impl SessionState {
    /// Tag in the session state index (stored on disk: never change).
    pub fn tag(&self) -> u8 {
        match self {
            SessionState::Live => 0,
            SessionState::Closed => 1,
            SessionState::Interrupted => 2,
        }
    }

    /// Stable name for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            SessionState::Live => "Live",
            SessionState::Closed => "Closed",
            SessionState::Interrupted => "Interrupted",
        }
    }

    /// Whether the state machine allows `self -> to`.
    pub fn can_become(&self, to: &SessionState) -> bool {
        use SessionState::*;
        matches!(
            (self, to),
            (Live, Closed) | (Live, Interrupted) | (Interrupted, Closed) | (Closed, Live)
        )
    }
}

/// How a recorded session ended. Append new reasons at the end only (the variant index is
/// stored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EndReason {
    /// The user's client closed the connection (disconnect, tab closed, network gone).
    UserDisconnect,
    /// guacd ended the session with a goodbye (`disconnect` or `error`): the remote desktop
    /// logged off, refused the login or failed.
    ServerEnded,
    /// The connection to guacd broke without a goodbye (guacd stopped or crashed).
    GuacdGone,
    /// The session recorder shut down and closed it.
    RecorderShutdown,
    /// The disk went critically full (or full) and the recorder closed it.
    DiskCritical,
    /// Recording failed (a segment the queue refused, a write error) and the recorder closed
    /// it: the session must be recorded, so it could not go on.
    RecordingFailed,
    /// The daemon stopped without closing it (crash, kill -9, power loss); start-up recovery
    /// ended it at its last write.
    Crash,
}

impl EndReason {
    /// Every reason, in stored order.
    pub const ALL: [EndReason; 7] = [
        EndReason::UserDisconnect,
        EndReason::ServerEnded,
        EndReason::GuacdGone,
        EndReason::RecorderShutdown,
        EndReason::DiskCritical,
        EndReason::RecordingFailed,
        EndReason::Crash,
    ];

    /// Stable name for manifests, JSON and logs.
    pub fn name(self) -> &'static str {
        match self {
            EndReason::UserDisconnect => "user_disconnect",
            EndReason::ServerEnded => "server_ended",
            EndReason::GuacdGone => "guacd_gone",
            EndReason::RecorderShutdown => "recorder_shutdown",
            EndReason::DiskCritical => "disk_critical",
            EndReason::RecordingFailed => "recording_failed",
            EndReason::Crash => "crash",
        }
    }

    /// The reason named `name` ([`Self::name`]).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.name() == name)
    }

    /// A few words for the history page.
    pub fn describe(self) -> &'static str {
        match self {
            EndReason::UserDisconnect => "user disconnected",
            EndReason::ServerEnded => "ended by the remote desktop (guacd)",
            EndReason::GuacdGone => "connection to guacd lost",
            EndReason::RecorderShutdown => "recorder shut down",
            EndReason::DiskCritical => "disk critically full",
            EndReason::RecordingFailed => "recording failed (closed: must be recorded)",
            EndReason::Crash => "interrupted (recorder crashed or was killed)",
        }
    }
}

/// A recorded session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Internal id (the database key), increasing in registration order.
    pub id: u64,
    /// External session id (Kasm / Guacamole connection id); unique.
    pub session_id: String,
    /// External user id.
    pub user_id: String,
    /// User name as shown on the history page.
    pub username: String,
    /// Friendly name of the image / connection.
    pub image_friendly_name: String,
    /// Protocol (`rdp`, `vnc`, `ssh`...).
    pub protocol: String,
    /// Wall-clock start, ms since the epoch.
    pub start_ms: u64,
    /// Wall-clock end; `None` while live.
    pub end_ms: Option<u64>,
    /// Where the session is in its life.
    pub state: SessionState,
    /// Segments registered for this session.
    pub segment_count: u32,
    /// How it ended; `None` while live, for imported recordings, and for sessions stored
    /// before reasons were kept.
    pub end_reason: Option<EndReason>,
    /// The remote host the session connects to, `host:port` (or `host`) from the connect
    /// instruction's `hostname` and `port`; empty for imported recordings, joins of a
    /// connection the tap did not see start, and sessions stored before targets were kept.
    pub target: String,
    /// The peer address the tap accepted (`ip:port`); empty when unknown.
    pub client_addr: String,
}

/// What a session transition sets besides the state (each field when given).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionEnd {
    /// The end time, ms since the epoch.
    pub end_ms: Option<u64>,
    /// How it ended.
    pub reason: Option<EndReason>,
}

/// Version 1 of a stored session (no end reason). Frozen: never change its fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionV1 {
    /// See [`Session::id`].
    pub id: u64,
    /// See [`Session::session_id`].
    pub session_id: String,
    /// See [`Session::user_id`].
    pub user_id: String,
    /// See [`Session::username`].
    pub username: String,
    /// See [`Session::image_friendly_name`].
    pub image_friendly_name: String,
    /// See [`Session::protocol`].
    pub protocol: String,
    /// See [`Session::start_ms`].
    pub start_ms: u64,
    /// See [`Session::end_ms`].
    pub end_ms: Option<u64>,
    /// See [`Session::state`].
    pub state: SessionState,
    /// See [`Session::segment_count`].
    pub segment_count: u32,
}

impl From<SessionV1> for SessionV2 {
    /// Version 1 kept no reason; an interrupted session's is known all the same.
    fn from(v: SessionV1) -> Self {
        let end_reason = match (&v.state, v.end_ms) {
            (SessionState::Interrupted, Some(_)) => Some(EndReason::Crash),
            _ => None,
        };
        SessionV2 {
            id: v.id,
            session_id: v.session_id,
            user_id: v.user_id,
            username: v.username,
            image_friendly_name: v.image_friendly_name,
            protocol: v.protocol,
            start_ms: v.start_ms,
            end_ms: v.end_ms,
            state: v.state,
            segment_count: v.segment_count,
            end_reason,
        }
    }
}

/// Version 2 of a stored session (with the end reason, no target nor client address).
/// Frozen: never change its fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionV2 {
    /// See [`Session::id`].
    pub id: u64,
    /// See [`Session::session_id`].
    pub session_id: String,
    /// See [`Session::user_id`].
    pub user_id: String,
    /// See [`Session::username`].
    pub username: String,
    /// See [`Session::image_friendly_name`].
    pub image_friendly_name: String,
    /// See [`Session::protocol`].
    pub protocol: String,
    /// See [`Session::start_ms`].
    pub start_ms: u64,
    /// See [`Session::end_ms`].
    pub end_ms: Option<u64>,
    /// See [`Session::state`].
    pub state: SessionState,
    /// See [`Session::segment_count`].
    pub segment_count: u32,
    /// See [`Session::end_reason`].
    pub end_reason: Option<EndReason>,
}

impl From<SessionV2> for Session {
    /// Version 2 kept no target nor client address: both read empty.
    fn from(v: SessionV2) -> Self {
        Session {
            id: v.id,
            session_id: v.session_id,
            user_id: v.user_id,
            username: v.username,
            image_friendly_name: v.image_friendly_name,
            protocol: v.protocol,
            start_ms: v.start_ms,
            end_ms: v.end_ms,
            state: v.state,
            segment_count: v.segment_count,
            end_reason: v.end_reason,
            target: String::new(),
            client_addr: String::new(),
        }
    }
}

/// Stored form of [`Session`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum SessionRecord {
    /// Version 1 (read only; converted on read).
    V1(SessionV1),
    /// Version 2: with the end reason (read only; converted on read).
    V2(SessionV2),
    /// Version 3: with the target and the client address.
    V3(Session),
}

impl SessionRecord {
    /// The session, whatever version it was stored in (V1 -> V2 -> V3).
    pub fn into_session(self) -> Session {
        match self {
            SessionRecord::V1(v) => SessionV2::from(v).into(),
            SessionRecord::V2(v) => v.into(),
            SessionRecord::V3(s) => s,
        }
    }
}

impl Versioned for SessionRecord {
    const VERSIONS: u64 = 3;
}

/// What [`super::Queue::register_session`] needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSession {
    /// External session id; registering the same one twice returns the first id.
    pub session_id: String,
    /// External user id.
    pub user_id: String,
    /// User name.
    pub username: String,
    /// Image / connection friendly name.
    pub image_friendly_name: String,
    /// Protocol.
    pub protocol: String,
    /// Wall-clock start, ms.
    pub start_ms: u64,
    /// See [`Session::target`].
    pub target: String,
    /// See [`Session::client_addr`].
    pub client_addr: String,
}

// ---------------------------------------------------------------------------------------------
// Segments

/// State of a segment (a file of the server->client drawing stream).
///
/// `Writing -> Sealed -> Encoding -> Encoded`; `Encoding -> Sealed` when work is redone (crash
/// recovery, transient failure); `Failed` is an encode failure the encoder may retry
/// (`Failed -> Sealed`); `Quarantined` is parked for good (unreadable, broken stream) until an
/// operator releases it (`Quarantined -> Sealed`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SegmentState {
    /// The tap is still appending to the file.
    Writing,
    /// Complete on disk, waiting for an encoder.
    Sealed,
    /// An encoder holds it.
    Encoding,
    /// Its clips are registered.
    Encoded,
    /// The last encode attempt failed.
    Failed {
        /// Why, for the status page.
        reason: String,
    },
    /// Parked: will not be encoded without an operator.
    Quarantined {
        /// Why.
        reason: String,
    },
}

state_kinds! {
    /// [`SegmentState`] without payload: what callers assert as the `from` state, and the tag in
    /// the state index (the discriminant values are stored on disk: never change them).
    SegmentStateKind of SegmentState {
        Writing = 0,
        Sealed = 1,
        Encoding = 2,
        Encoded = 3,
        Failed { .. } = 4,
        Quarantined { .. } = 5,
    }
    edges {
        Writing -> Sealed,
        Writing -> Quarantined,
        Sealed -> Encoding,
        Sealed -> Quarantined,
        Encoding -> Encoded,
        Encoding -> Sealed,
        Encoding -> Failed,
        Encoding -> Quarantined,
        Failed -> Sealed,
        Failed -> Quarantined,
        Quarantined -> Sealed,
    }
}

impl SegmentStateKind {
    /// Whether a segment in this state lets its successor be encoded: the successor's display
    /// starts from this one's end state (Encoded), or from blank when this one is parked
    /// (Quarantined) and will never produce an end state.
    pub fn settles_successor(self) -> bool {
        matches!(
            self,
            SegmentStateKind::Encoded | SegmentStateKind::Quarantined
        )
    }
}

/// A segment as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    /// Internal id, increasing in registration order.
    pub id: u64,
    /// Internal id of the session.
    pub session: u64,
    /// Position within the session: 0, 1, 2...
    pub index: u32,
    /// The segment file on local disk.
    pub path: PathBuf,
    /// File size.
    pub bytes: u64,
    /// Timestamp of the first `sync` in the file, if known.
    pub first_sync_ms: Option<u64>,
    /// Timestamp of the last `sync`, if known.
    pub last_sync_ms: Option<u64>,
    /// State machine position.
    pub state: SegmentState,
    /// Encode attempts started (incremented on each move to `Encoding`).
    pub attempts: u32,
    /// Wall-clock registration time.
    pub created_ms: u64,
    /// Wall-clock time of the last change.
    pub updated_ms: u64,
}

/// Stored form of [`Segment`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum SegmentRecord {
    /// Version 1.
    V1(Segment),
}

impl Versioned for SegmentRecord {
    const VERSIONS: u64 = 1;
}

/// What [`super::Queue::register_segment`] needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSegment {
    /// Internal session id.
    pub session: u64,
    /// Position within the session; `(session, index)` is unique.
    pub index: u32,
    /// File on local disk.
    pub path: PathBuf,
    /// Size so far (final size when `sealed`).
    pub bytes: u64,
    /// First sync timestamp, if known.
    pub first_sync_ms: Option<u64>,
    /// Last sync timestamp, if known.
    pub last_sync_ms: Option<u64>,
    /// `false`: registered as `Writing` (the tap, before the first byte). `true`: registered
    /// straight as `Sealed` (spool import of a finished file).
    pub sealed: bool,
}

/// Field changes applied together with a segment transition (`None` keeps the value).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SegmentPatch {
    /// New file path (the writer renamed the file when sealing it).
    pub path: Option<PathBuf>,
    /// Final size.
    pub bytes: Option<u64>,
    /// First sync timestamp.
    pub first_sync_ms: Option<u64>,
    /// Last sync timestamp.
    pub last_sync_ms: Option<u64>,
    /// Overrides the audit entry written for auditable changes (Quarantined): who and what.
    pub audit: Option<AuditNote>,
}

// ---------------------------------------------------------------------------------------------
// Clips

/// State of a clip (an encoded MP4 + thumbnail).
///
/// `Ready -> Uploading -> Uploaded -> LocalDeleted`; `Uploading -> Failed` (retried when
/// `transient` once `next_attempt_ms` is due, parked otherwise); `Uploading -> Ready` when
/// upload work is redone after a crash; `Ready | Failed -> Expired` when retention ran out
/// before the upload succeeded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClipState {
    /// Waiting for its first upload attempt.
    Ready,
    /// An uploader holds it.
    Uploading,
    /// In object storage; the local copy is still there.
    Uploaded,
    /// In object storage; the local copy was removed by retention.
    LocalDeleted,
    /// The last upload attempt failed.
    Failed {
        /// Why, for the status page.
        reason: String,
        /// Whether a later attempt may succeed; permanent failures are not retried.
        transient: bool,
        /// Earliest wall-clock time of the next attempt (ignored when not transient).
        next_attempt_ms: u64,
    },
    /// Retention ran out before it was uploaded.
    Expired,
}

state_kinds! {
    /// [`ClipState`] without payload (tags stored on disk: never change them).
    ClipStateKind of ClipState {
        Ready = 0,
        Uploading = 1,
        Uploaded = 2,
        LocalDeleted = 3,
        Failed { .. } = 4,
        Expired = 5,
    }
    edges {
        Ready -> Uploading,
        Ready -> Expired,
        Uploading -> Uploaded,
        Uploading -> Failed,
        Uploading -> Ready,
        Failed -> Uploading,
        Failed -> Ready,
        Failed -> Expired,
        Uploaded -> LocalDeleted,
    }
}

impl ClipState {
    /// When the clip is due for an upload attempt, if it is waiting for one: transient failures
    /// from `next_attempt_ms`; `Ready` clips at 0, i.e. at once and in registration order
    /// whatever the clock says (a clock stepping back must not hold fresh clips).
    pub fn due_ms(&self) -> Option<u64> {
        match self {
            ClipState::Ready => Some(0),
            ClipState::Failed {
                transient: true,
                next_attempt_ms,
                ..
            } => Some(*next_attempt_ms),
            _ => None,
        }
    }
}

/// A clip as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Clip {
    /// Internal id, increasing in registration order.
    pub id: u64,
    /// Internal id of the segment it was encoded from.
    pub segment: u64,
    /// Internal id of the session.
    pub session: u64,
    /// Position within the segment: 0, 1, 2...
    pub index: u32,
    /// Local MP4 file.
    pub path: PathBuf,
    /// Local JPEG thumbnail, if one was made.
    pub thumb_path: Option<PathBuf>,
    /// MP4 size.
    pub bytes: u64,
    /// SHA-256 of the MP4, lowercase hex.
    pub sha256: String,
    /// Media duration.
    pub duration_ms: u64,
    /// Wall-clock time of the first frame.
    pub start_ms: u64,
    /// Wall-clock time of the last frame.
    pub end_ms: u64,
    /// Object key in storage, once the location template was applied.
    pub object_key: Option<String>,
    /// State machine position.
    pub state: ClipState,
    /// Upload attempts started.
    pub attempts: u32,
    /// Wall-clock registration time.
    pub created_ms: u64,
    /// Wall-clock time of the last change.
    pub updated_ms: u64,
    /// The clip's local events object, if the encoder wrote one.
    pub events: Option<ClipEventsObject>,
}

/// A clip's events object on local disk (see [`crate::events::format`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClipEventsObject {
    /// Local file, beside the MP4.
    pub path: PathBuf,
    /// Its SHA-256, lowercase hex.
    pub sha256: String,
    /// Its size.
    pub bytes: u64,
}

/// Version 1 of [`Clip`] (before the events object), read only.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClipV1 {
    pub id: u64,
    pub segment: u64,
    pub session: u64,
    pub index: u32,
    pub path: PathBuf,
    pub thumb_path: Option<PathBuf>,
    pub bytes: u64,
    pub sha256: String,
    pub duration_ms: u64,
    pub start_ms: u64,
    pub end_ms: u64,
    pub object_key: Option<String>,
    pub state: ClipState,
    pub attempts: u32,
    pub created_ms: u64,
    pub updated_ms: u64,
}

impl From<ClipV1> for Clip {
    /// Version 1 had no events object.
    fn from(v: ClipV1) -> Self {
        Clip {
            id: v.id,
            segment: v.segment,
            session: v.session,
            index: v.index,
            path: v.path,
            thumb_path: v.thumb_path,
            bytes: v.bytes,
            sha256: v.sha256,
            duration_ms: v.duration_ms,
            start_ms: v.start_ms,
            end_ms: v.end_ms,
            object_key: v.object_key,
            state: v.state,
            attempts: v.attempts,
            created_ms: v.created_ms,
            updated_ms: v.updated_ms,
            events: None,
        }
    }
}

/// Stored form of [`Clip`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ClipRecord {
    /// Version 1 (read only; converted on read).
    V1(ClipV1),
    /// Version 2: with the events object.
    V2(Clip),
}

impl ClipRecord {
    /// The clip, whatever version it was stored in.
    pub fn into_clip(self) -> Clip {
        match self {
            ClipRecord::V1(v) => v.into(),
            ClipRecord::V2(c) => c,
        }
    }
}

impl Versioned for ClipRecord {
    const VERSIONS: u64 = 2;
}

/// What [`super::Queue::register_clip`] needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewClip {
    /// Internal segment id; `(segment, index)` is unique.
    pub segment: u64,
    /// Position within the segment.
    pub index: u32,
    /// Local MP4.
    pub path: PathBuf,
    /// Local thumbnail.
    pub thumb_path: Option<PathBuf>,
    /// MP4 size.
    pub bytes: u64,
    /// SHA-256, lowercase hex.
    pub sha256: String,
    /// Media duration.
    pub duration_ms: u64,
    /// Wall-clock first frame.
    pub start_ms: u64,
    /// Wall-clock last frame.
    pub end_ms: u64,
    /// Object key, if already known.
    pub object_key: Option<String>,
    /// The local events object, if one was written.
    pub events: Option<ClipEventsObject>,
}

/// Field changes applied together with a clip transition (`None` keeps the value).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClipPatch {
    /// Object key (set when the location template is applied or the upload succeeded).
    pub object_key: Option<String>,
    /// Overrides the audit entry written for auditable changes (Expired).
    pub audit: Option<AuditNote>,
}

// ---------------------------------------------------------------------------------------------
// Audit

/// What happened. Append new actions at the end only (the variant index is stored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AuditAction {
    /// A clip or session was played in the browser.
    Played,
    /// A clip was downloaded.
    Downloaded,
    /// A whole session was downloaded (zip).
    DownloadedSession,
    /// A session that had to be recorded was refused (recording could not start).
    SessionRefused,
    /// A clip expired before it could be uploaded.
    ClipExpired,
    /// A segment was quarantined.
    QuarantinedSegment,
    /// A web user was created.
    UserAdded,
    /// A web user was changed (password, permissions).
    UserChanged,
    /// A web user was removed.
    UserRemoved,
    /// An API token was created.
    TokenCreated,
    /// An API token was revoked.
    TokenRevoked,
    /// Settings were changed from the web UI.
    SettingsChanged,
    /// A successful login.
    Login,
    /// A failed login.
    LoginFailed,
    /// A logout.
    Logout,
    /// A local clip was deleted by hand or by retention before upload (operator action).
    ClipDeleted,
    /// Old history (sessions, segments, clips) or old audit entries were purged by retention.
    Purged,
    /// A login was refused without checking the password: too many failed attempts for that
    /// user name or client address (backoff).
    LoginThrottled,
    /// A connection came with the id of a live recorded session: it continued that session,
    /// or was recorded beside it under a linked id.
    SessionReconnected,
    /// A recorded session ended before anything was drawn: nothing was kept.
    SessionEmpty,
    /// Someone searched inside recordings (the query is in the message).
    Searched,
}

/// What an audit entry is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuditTarget {
    /// Nothing in particular (login, settings).
    None,
    /// A session, by external session id.
    Session {
        /// External session id.
        session_id: String,
    },
    /// A segment, by internal id.
    Segment {
        /// Internal segment id.
        segment: u64,
    },
    /// A clip, by internal id.
    Clip {
        /// Internal clip id.
        clip: u64,
    },
    /// A web user, by name.
    User {
        /// User name.
        name: String,
    },
}

/// A stored audit entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Monotonic sequence number (the key).
    pub seq: u64,
    /// Wall-clock time, ms.
    pub time_ms: u64,
    /// User name, or `"system"`.
    pub actor: String,
    /// What happened.
    pub action: AuditAction,
    /// What it happened to.
    pub target: AuditTarget,
    /// Human wording (built by the caller, Kasm style).
    pub message: String,
}

/// Stored form of [`AuditEntry`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AuditRecord {
    /// Version 1.
    V1(AuditEntry),
}

impl Versioned for AuditRecord {
    const VERSIONS: u64 = 1;
}

/// The actor name the queue uses for changes made by the daemon itself.
pub const ACTOR_SYSTEM: &str = "system";

/// An audit entry to append (the queue adds `seq` and `time_ms`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAudit {
    /// User name, or [`ACTOR_SYSTEM`].
    pub actor: String,
    /// What happened.
    pub action: AuditAction,
    /// What it happened to.
    pub target: AuditTarget,
    /// Human wording.
    pub message: String,
}

/// Who and what to write in the audit entry of an auditable transition, replacing the default
/// (`"system"` and a message built from the reason).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditNote {
    /// User name or [`ACTOR_SYSTEM`].
    pub actor: String,
    /// Human wording.
    pub message: String,
}

// ---------------------------------------------------------------------------------------------
// Accounts and settings

/// A web user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Login name (the key).
    pub name: String,
    /// Salted password hash in PHC string form (argon2), produced by `serve`.
    pub password_hash: String,
    /// Permission bits; their meaning is defined by `serve`.
    pub permissions: u64,
    /// Wall-clock creation time.
    pub created_ms: u64,
}

/// Stored form of [`User`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum UserRecord {
    /// Version 1.
    V1(User),
}

impl Versioned for UserRecord {
    const VERSIONS: u64 = 1;
}

/// An API token (only its hash is stored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiToken {
    /// Hash of the token, hex (the key).
    pub token_hash: String,
    /// Owner's user name.
    pub user: String,
    /// Free label shown in the token list.
    pub label: String,
    /// Wall-clock creation time.
    pub created_ms: u64,
}

/// Stored form of [`ApiToken`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum TokenRecord {
    /// Version 1.
    V1(ApiToken),
}

impl Versioned for TokenRecord {
    const VERSIONS: u64 = 1;
}

/// A web login session (only the cookie id's hash is stored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebSession {
    /// Hash of the cookie id, hex (the key).
    pub id_hash: String,
    /// User name.
    pub user: String,
    /// Wall-clock creation time.
    pub created_ms: u64,
    /// Wall-clock expiry.
    pub expires_ms: u64,
}

/// Stored form of [`WebSession`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum WebSessionRecord {
    /// Version 1.
    V1(WebSession),
}

impl Versioned for WebSessionRecord {
    const VERSIONS: u64 = 1;
}

/// The settings override document edited from the web UI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingsOverride {
    /// Incremented by every save; saves assert the version they read (optimistic locking).
    pub version: u64,
    /// The override, as TOML text (validated by `config` before it is saved).
    pub toml: String,
    /// Wall-clock time of the save.
    pub updated_ms: u64,
    /// Who saved it.
    pub updated_by: String,
}

/// Stored form of [`SettingsOverride`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum SettingsRecord {
    /// Version 1.
    V1(SettingsOverride),
}

impl Versioned for SettingsRecord {
    const VERSIONS: u64 = 1;
}

// ---------------------------------------------------------------------------------------------
// Fleet manifest filings

/// One manifest version as filed in the bucket: its version number and the object key chosen
/// for it (the key carries the write time, so it is chosen once and recorded before the put).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestVersion {
    /// The manifest version (`manifest::writer`'s version rule).
    pub version: u64,
    /// The object key.
    pub key: String,
    /// Whether this is the session's final manifest (never written again once filed).
    pub is_final: bool,
}

/// Where the filing of a session's signed fleet manifest stands: a write-ahead record of the
/// steps `intent -> put -> filed -> delete superseded -> deleted`, so that a restart redoes
/// exactly the step that was not recorded. Keyed by the queue session id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFiling {
    /// Queue session id (the key).
    pub session: u64,
    /// The newest version whose put the store confirmed; `None` before the first.
    pub filed: Option<ManifestVersion>,
    /// A version chosen and recorded before its put, not confirmed yet: a restart puts it
    /// again under the same key.
    pub intent: Option<ManifestVersion>,
    /// Keys that may hold a superseded version (or an abandoned intent) still to delete.
    pub superseded: Vec<String>,
    /// Wall-clock time of the last change.
    pub updated_ms: u64,
}

impl ManifestFiling {
    /// Whether a step is still owed: a put not confirmed or a superseded key not deleted.
    pub fn unfinished(&self) -> bool {
        self.intent.is_some() || !self.superseded.is_empty()
    }

    /// Whether the final version is filed (nothing is ever put for the session again).
    pub fn final_filed(&self) -> bool {
        self.filed.as_ref().is_some_and(|f| f.is_final)
    }
}

/// Stored form of [`ManifestFiling`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ManifestFilingRecord {
    /// Version 1.
    V1(ManifestFiling),
}

impl Versioned for ManifestFilingRecord {
    const VERSIONS: u64 = 1;
}

// ---------------------------------------------------------------------------------------------
// Owed manifests

/// A session whose manifests are owed: written in the same transaction as the clip, segment
/// or session change that made them owed (a clip up or expired, a segment done with, the
/// session ended), taken by the manifest worker, removed by it once the manifests are written.
/// Keyed by the queue session id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwedManifest {
    /// Queue session id (the key).
    pub session: u64,
    /// How many changes made the manifest owed since the record was created: the worker
    /// removes the record only when no change came while it wrote (it passes the count it saw).
    pub marks: u64,
    /// Failed attempts since the last change.
    pub attempts: u32,
    /// Not to be tried before this time (ms); 0 = now.
    pub due_ms: u64,
    /// The last attempt's error, for the status page and the log.
    pub last_error: Option<String>,
}

/// Stored form of [`OwedManifest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum OwedManifestRecord {
    /// Version 1.
    V1(OwedManifest),
}

impl Versioned for OwedManifestRecord {
    const VERSIONS: u64 = 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_edges() {
        let failed = SegmentState::Failed { reason: "x".into() };
        assert!(SegmentState::Writing.can_become(&SegmentState::Sealed));
        assert!(SegmentState::Encoding.can_become(&SegmentState::Sealed));
        assert!(SegmentState::Encoding.can_become(&failed));
        assert!(!SegmentState::Encoded.can_become(&SegmentState::Writing));
        assert!(!SegmentState::Sealed.can_become(&SegmentState::Encoded));
        assert!(!SegmentState::Writing.can_become(&SegmentState::Encoding));
    }

    #[test]
    fn clip_edges_and_due_times() {
        let retry = ClipState::Failed {
            reason: "503".into(),
            transient: true,
            next_attempt_ms: 50,
        };
        let parked = ClipState::Failed {
            reason: "403".into(),
            transient: false,
            next_attempt_ms: 50,
        };
        assert!(ClipState::Uploading.can_become(&retry));
        assert!(retry.can_become(&ClipState::Uploading));
        assert!(!ClipState::Uploaded.can_become(&ClipState::Ready));
        assert!(!ClipState::Expired.can_become(&ClipState::Uploading));
        assert_eq!(ClipState::Ready.due_ms(), Some(0));
        assert_eq!(retry.due_ms(), Some(50));
        assert_eq!(parked.due_ms(), None);
        assert_eq!(ClipState::Uploaded.due_ms(), None);
    }

    #[test]
    fn audit_actions_keep_their_stored_values() {
        // postcard stores the variant index: new actions are appended, never inserted.
        let byte = |a: AuditAction| postcard::to_stdvec(&a).unwrap();
        assert_eq!(byte(AuditAction::Played), [0]);
        assert_eq!(byte(AuditAction::ClipDeleted), [15]);
        assert_eq!(byte(AuditAction::Purged), [16]);
        assert_eq!(byte(AuditAction::LoginThrottled), [17]);
    }

    #[test]
    fn a_version_1_session_reads_as_a_session_with_its_known_end_reason() {
        let v1 = SessionV1 {
            id: 3,
            session_id: "s".into(),
            user_id: "u".into(),
            username: "n".into(),
            image_friendly_name: "i".into(),
            protocol: "vnc".into(),
            start_ms: 1,
            end_ms: Some(2),
            state: SessionState::Interrupted,
            segment_count: 1,
        };
        let bytes = postcard::to_allocvec(&SessionRecord::V1(v1.clone())).unwrap();
        let read: SessionRecord = postcard::from_bytes(&bytes).unwrap();
        let s = read.into_session();
        assert_eq!(s.end_reason, Some(EndReason::Crash));
        assert_eq!((s.id, s.end_ms, s.segment_count), (3, Some(2), 1));
        assert_eq!((s.target.as_str(), s.client_addr.as_str()), ("", ""));
        let closed = SessionV1 {
            state: SessionState::Closed,
            ..v1
        };
        assert_eq!(SessionV2::from(closed).end_reason, None);
        for r in EndReason::ALL {
            assert_eq!(EndReason::from_name(r.name()), Some(r));
        }
    }

    #[test]
    fn a_version_2_session_reads_without_target_and_version_3_round_trips() {
        let v2 = SessionV2 {
            id: 4,
            session_id: "s".into(),
            user_id: "u".into(),
            username: "n".into(),
            image_friendly_name: "i".into(),
            protocol: "rdp".into(),
            start_ms: 1,
            end_ms: Some(5),
            state: SessionState::Closed,
            segment_count: 2,
            end_reason: Some(EndReason::UserDisconnect),
        };
        let bytes = postcard::to_allocvec(&SessionRecord::V2(v2)).unwrap();
        let read: SessionRecord = postcard::from_bytes(&bytes).unwrap();
        let mut s = read.into_session();
        assert_eq!(
            (s.id, s.protocol.as_str(), s.end_reason),
            (4, "rdp", Some(EndReason::UserDisconnect))
        );
        assert_eq!((s.target.as_str(), s.client_addr.as_str()), ("", ""));
        s.target = "erp.example:3389".into();
        s.client_addr = "10.0.0.7:51234".into();
        let bytes = postcard::to_allocvec(&SessionRecord::V3(s.clone())).unwrap();
        let back: SessionRecord = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back.into_session(), s);
    }

    #[test]
    fn state_tags_are_stable() {
        // Tags are stored in index keys: renumbering would corrupt existing queues.
        assert_eq!(SegmentStateKind::Quarantined as u8, 5);
        assert_eq!(ClipStateKind::Expired as u8, 5);
        for (i, k) in SegmentStateKind::ALL.iter().enumerate() {
            assert_eq!(*k as usize, i);
        }
        for (i, k) in ClipStateKind::ALL.iter().enumerate() {
            assert_eq!(*k as usize, i);
        }
    }
}
