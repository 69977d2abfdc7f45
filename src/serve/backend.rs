//! What the HTTP side needs from durable storage, as one small trait: the session history, the
//! clips of a session, the audit log and local accounts (users, API tokens, web login
//! sessions). Settings are not here: they live in the config file.
//!
//! The daemon implements [`Backend`] on the LMDB queue (see `backend_queue.rs` once the queue is
//! merged); [`MemBackend`] keeps everything in memory for tests and for a stand-alone demo
//! server. Nothing here knows about HTTP.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::Serialize;

pub use crate::queue::SessionCursor;

/// A storage problem, in words (the HTTP side answers 503 and logs it).
#[derive(Debug, Clone, thiserror::Error)]
#[error("storage: {message}")]
pub struct BackendError {
    /// What went wrong.
    pub message: String,
    /// Whether a retry later may work.
    pub transient: bool,
}

impl crate::error::Classify for BackendError {
    fn is_transient(&self) -> bool {
        self.transient
    }
}

/// One recorded session as the history page shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SessionRow {
    /// The tie-break of the history's order among sessions that started in the same
    /// millisecond (the queue's internal id; the fleet index's cursor).
    pub cursor: u64,
    /// External session id (Kasm / Guacamole).
    pub session_id: String,
    /// User name.
    pub user: String,
    /// The workspace (image friendly name).
    pub workspace: String,
    /// The remote host the session connected to (`host:port`); empty when unknown (imported
    /// recordings, sessions recorded before targets were kept).
    pub target: String,
    /// The peer address the tap accepted (behind the Guacamole web app, the web app's);
    /// empty when unknown.
    pub client_addr: String,
    /// Start, ms since the epoch.
    pub start_ms: u64,
    /// End; `None` while live.
    pub end_ms: Option<u64>,
    /// State in words (`live`, `encoding`, `uploaded`, `failed`...).
    pub state: String,
    /// Number of clips made so far.
    pub clip_count: u32,
    /// How it ended, in words (`user disconnected`...), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_reason: Option<String>,
    /// The appliance that recorded it (fleet history only; `None` on an appliance).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub appliance: Option<String>,
}

impl SessionRow {
    /// The row's place in the history's order (newest start first).
    pub fn place(&self) -> SessionCursor {
        SessionCursor {
            start_ms: self.start_ms,
            id: self.cursor,
        }
    }

    /// How URLs name the session: its id on an appliance's own history; `ID@APPLIANCE` in a
    /// fleet history, where ids (from the client or guacd) are unique per appliance only.
    /// Appliance ids hold no `@`, so the last one splits an address (see [`split_address`]).
    pub fn address(&self) -> String {
        match &self.appliance {
            Some(a) => format!("{}@{a}", self.session_id),
            None => self.session_id.clone(),
        }
    }
}

/// Splits a fleet history's session address ([`SessionRow::address`]) into session id and
/// appliance id; an address whose part after the last `@` is not an appliance id (letters,
/// digits, `-`, `_`, `.`) is a bare session id.
pub fn split_address(address: &str) -> (&str, Option<&str>) {
    match address.rsplit_once('@') {
        Some((sid, a))
            if !sid.is_empty()
                && !a.is_empty()
                && a.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) =>
        {
            (sid, Some(a))
        }
        _ => (address, None),
    }
}

/// One clip of a session.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ClipRow {
    /// The clip's internal id (stable, for de-duplication only).
    pub id: u64,
    /// Local MP4 file (may have been removed after upload).
    pub local_path: Option<PathBuf>,
    /// Local JPEG thumbnail.
    pub thumb_path: Option<PathBuf>,
    /// Object key in the store once uploaded.
    pub object_key: Option<String>,
    /// Thumbnail object key once uploaded.
    pub thumb_key: Option<String>,
    /// Where the clip lives for people: `s3://bucket/key` or `file:///...` (audit wording).
    pub location: String,
    /// MP4 size in bytes (0 while unknown).
    pub bytes: u64,
    /// Media duration.
    pub duration_ms: u64,
    /// Wall-clock time of the first frame.
    pub start_ms: u64,
    /// State in words (`encoded`, `uploading`, `uploaded`, `failed`...).
    pub state: String,
    /// The clip failed (shown as failed, never hidden); it cannot be played.
    pub failed: bool,
    /// The hex SHA-256 the clip's bytes must have, when the backend wants them checked as a
    /// whole clip streams out (fleet history: see [`Backend::clip_bytes_hashed`]).
    pub sha256: Option<String>,
}

/// Filters for the history list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionQuery {
    /// Case-insensitive part of the user name.
    pub user: Option<String>,
    /// Case-insensitive part of the target (`host:port`).
    pub host: Option<String>,
    /// Sessions that started at or after this time.
    pub from_ms: Option<u64>,
    /// Sessions that started before this time.
    pub to_ms: Option<u64>,
    /// Case-insensitive substring of session id, user, workspace or target.
    pub text: Option<String>,
    /// Exact appliance id (fleet history; ignored by an appliance's own history).
    pub appliance: Option<String>,
    /// Only sessions older than this place (the previous page's `next_before`).
    pub before: Option<SessionCursor>,
    /// The page of sessions just newer than this place (a page's `next_after`); ignored
    /// when `before` is set.
    pub after: Option<SessionCursor>,
    /// Page size.
    pub limit: usize,
}

/// One page of rows, newest first.
#[derive(Debug, Clone, Serialize)]
pub struct Page<T, C = u64> {
    /// The rows.
    pub items: Vec<T>,
    /// Cursor for the next (older) page, `None` at the end.
    pub next_before: Option<C>,
    /// Cursor for the previous (newer) page, `None` at the newest (and for listings that
    /// page only one way).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_after: Option<C>,
}

/// What an audit entry records: every action the appliance writes to its audit log, and so
/// exactly the choices of the audit page's action filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditKind {
    /// A clip was played.
    Played,
    /// One clip was downloaded.
    Downloaded,
    /// All clips of a session were downloaded as a zip.
    DownloadedSession,
    /// A session that had to be recorded was refused (recording could not start).
    SessionRefused,
    /// A connection came with the id of a live recorded session (a reconnect or a second tab).
    SessionReconnected,
    /// A recorded session ended before anything was drawn: nothing was kept.
    SessionEmpty,
    /// A clip expired on local disk before it could be uploaded.
    ClipExpired,
    /// A segment could not be encoded and was set aside.
    QuarantinedSegment,
    /// Old history or old audit entries were purged by retention.
    Purged,
    /// A user logged in.
    Login,
    /// A login was refused.
    LoginFailed,
    /// A login was refused by the failed-login backoff, without checking the password.
    LoginThrottled,
    /// A user logged out.
    Logout,
    /// The settings were changed.
    SettingsChanged,
    /// A web user was added.
    UserAdded,
    /// A web user's permissions or password were changed.
    UserChanged,
    /// A web user was removed.
    UserRemoved,
    /// An API token was created.
    TokenCreated,
    /// An API token was revoked.
    TokenRevoked,
    /// Someone searched inside recordings.
    Searched,
}

impl AuditKind {
    /// Every kind, in the order of the filter menu.
    pub const ALL: [AuditKind; 20] = [
        AuditKind::Played,
        AuditKind::Searched,
        AuditKind::Downloaded,
        AuditKind::DownloadedSession,
        AuditKind::SessionRefused,
        AuditKind::SessionReconnected,
        AuditKind::SessionEmpty,
        AuditKind::ClipExpired,
        AuditKind::QuarantinedSegment,
        AuditKind::Purged,
        AuditKind::Login,
        AuditKind::LoginFailed,
        AuditKind::LoginThrottled,
        AuditKind::Logout,
        AuditKind::SettingsChanged,
        AuditKind::UserAdded,
        AuditKind::UserChanged,
        AuditKind::UserRemoved,
        AuditKind::TokenCreated,
        AuditKind::TokenRevoked,
    ];

    /// The snake_case name (stored, and the `kind=` of the audit page).
    pub fn name(self) -> &'static str {
        match self {
            AuditKind::Played => "played",
            AuditKind::Downloaded => "downloaded",
            AuditKind::DownloadedSession => "downloaded_session",
            AuditKind::SessionRefused => "session_refused",
            AuditKind::SessionReconnected => "session_reconnected",
            AuditKind::SessionEmpty => "session_empty",
            AuditKind::ClipExpired => "clip_expired",
            AuditKind::QuarantinedSegment => "quarantined_segment",
            AuditKind::Purged => "purged",
            AuditKind::Login => "login",
            AuditKind::LoginFailed => "login_failed",
            AuditKind::LoginThrottled => "login_throttled",
            AuditKind::Logout => "logout",
            AuditKind::SettingsChanged => "settings_changed",
            AuditKind::UserAdded => "user_added",
            AuditKind::UserChanged => "user_changed",
            AuditKind::UserRemoved => "user_removed",
            AuditKind::TokenCreated => "token_created",
            AuditKind::TokenRevoked => "token_revoked",
            AuditKind::Searched => "searched",
        }
    }

    /// Words for the filter menu.
    pub fn label(self) -> &'static str {
        match self {
            AuditKind::Played => "Played a clip",
            AuditKind::Downloaded => "Downloaded a clip",
            AuditKind::DownloadedSession => "Downloaded a session (zip)",
            AuditKind::SessionRefused => "Session refused (not recorded)",
            AuditKind::SessionReconnected => "Session reconnected or opened twice",
            AuditKind::SessionEmpty => "Session ended before anything was drawn",
            AuditKind::ClipExpired => "Clip expired before upload",
            AuditKind::QuarantinedSegment => "Recording set aside (not encodable)",
            AuditKind::Purged => "Purged by retention",
            AuditKind::Login => "Logged in",
            AuditKind::LoginFailed => "Failed login",
            AuditKind::LoginThrottled => "Login refused (too many failures)",
            AuditKind::Logout => "Logged out",
            AuditKind::SettingsChanged => "Settings changed",
            AuditKind::UserAdded => "User added",
            AuditKind::UserChanged => "User changed",
            AuditKind::UserRemoved => "User removed",
            AuditKind::TokenCreated => "API token created",
            AuditKind::TokenRevoked => "API token revoked",
            AuditKind::Searched => "Searched inside recordings",
        }
    }

    /// Parses [`AuditKind::name`].
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == s)
    }

    /// Whether the account store writes this entry itself, in the transaction of the change
    /// (the queue does; [`MemBackend`] takes it from the handler).
    pub fn is_account_change(self) -> bool {
        matches!(
            self,
            AuditKind::UserAdded
                | AuditKind::UserChanged
                | AuditKind::UserRemoved
                | AuditKind::TokenCreated
                | AuditKind::TokenRevoked
        )
    }
}

/// An audit entry to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAuditRow {
    /// Who did it.
    pub actor: String,
    /// What.
    pub kind: AuditKind,
    /// The session it concerns, if any.
    pub session_id: Option<String>,
    /// Kasm-style wording: `User a@b played SID video: s3://...`.
    pub message: String,
}

/// A stored audit entry.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AuditRow {
    /// Sequence number (the cursor).
    pub seq: u64,
    /// When, ms since the epoch.
    pub time_ms: u64,
    /// Who.
    pub actor: String,
    /// What, `snake_case` (see [`AuditKind::name`]).
    pub kind: String,
    /// The session (its address) the entry is about, if any.
    pub session_id: Option<String>,
    /// The wording.
    pub message: String,
}

/// Filters for the audit log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Exact actor.
    pub actor: Option<String>,
    /// Only this kind.
    pub kind: Option<AuditKind>,
    /// At or after.
    pub from_ms: Option<u64>,
    /// Before.
    pub to_ms: Option<u64>,
    /// Case-insensitive substring of message or actor.
    pub text: Option<String>,
    /// Older than this cursor.
    pub before: Option<u64>,
    /// Page size.
    pub limit: usize,
}

/// A local account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    /// Login name.
    pub name: String,
    /// argon2 PHC string.
    pub password_hash: String,
    /// Permission bits (see `serve::auth::Permissions`).
    pub permissions: u64,
    /// Creation time.
    pub created_ms: u64,
}

/// An API token (only its hash is stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    /// SHA-256 of the token, hex.
    pub token_hash: String,
    /// Owner.
    pub user: String,
    /// Label shown in the list.
    pub label: String,
    /// Creation time.
    pub created_ms: u64,
}

/// A web login session (only the cookie's hash is stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSessionRow {
    /// SHA-256 of the cookie value, hex.
    pub id_hash: String,
    /// User name.
    pub user: String,
    /// Creation time.
    pub created_ms: u64,
    /// Expiry time.
    pub expires_ms: u64,
}

/// Where the history pages' sessions and clips come from: the appliance's own queue
/// ([`super::backend_queue::QueueBackend`]) or, on the history role, the fleet index
/// ([`super::backend_fleet::FleetBackend`]). Plain blocking calls; they run on HTTP worker
/// threads, never on the pipeline's.
pub trait HistorySource: Send + Sync {
    /// Sessions matching `q`, newest first.
    ///
    /// # Errors
    /// Storage failure.
    fn list_sessions(
        &self,
        q: &SessionQuery,
    ) -> Result<Page<SessionRow, SessionCursor>, BackendError>;
    /// One session by its address ([`SessionRow::address`]: the external id on an
    /// appliance).
    ///
    /// # Errors
    /// Storage failure.
    fn session(&self, session_id: &str) -> Result<Option<SessionRow>, BackendError>;
    /// The clips of the session at an address, in playing order (failed ones included).
    ///
    /// # Errors
    /// Storage failure.
    fn clips(&self, session_id: &str) -> Result<Vec<ClipRow>, BackendError>;
    /// The appliances of a fleet history, for the filter menu; `None` on an appliance's own
    /// history (no appliance column or filter).
    fn appliances(&self) -> Option<Vec<String>> {
        None
    }
    /// A whole clip (position `clip_index`, 0-based, of the session at `session`) was
    /// streamed to a viewer and its bytes hashed: `matched` says whether they have the
    /// row's `sha256`. Only called for rows that carry one.
    fn clip_bytes_hashed(&self, _session: &str, _clip_index: usize, _matched: bool) {}
}

/// Users, API tokens, web logins and the audit log: the instance's own queue in both roles.
/// Plain blocking calls, on HTTP worker threads.
pub trait AccountStore: Send + Sync {
    /// Appends an audit entry.
    ///
    /// # Errors
    /// Storage failure.
    fn append_audit(&self, entry: &NewAuditRow) -> Result<(), BackendError>;
    /// Audit entries matching `q`, newest first.
    ///
    /// # Errors
    /// Storage failure.
    fn list_audit(&self, q: &AuditQuery) -> Result<Page<AuditRow>, BackendError>;
    /// One user.
    ///
    /// # Errors
    /// Storage failure.
    fn user(&self, name: &str) -> Result<Option<UserRow>, BackendError>;
    /// Every user, by name.
    ///
    /// # Errors
    /// Storage failure.
    fn users(&self) -> Result<Vec<UserRow>, BackendError>;
    /// Adds or replaces a user; `actor` is audited by the store when it audits accounts.
    ///
    /// # Errors
    /// Storage failure.
    fn put_user(&self, user: &UserRow, actor: &str) -> Result<(), BackendError>;
    /// Removes a user and their tokens; false when there was none.
    ///
    /// # Errors
    /// Storage failure.
    fn remove_user(&self, name: &str, actor: &str) -> Result<bool, BackendError>;
    /// Adds a token.
    ///
    /// # Errors
    /// Storage failure.
    fn add_token(&self, token: &TokenRow, actor: &str) -> Result<(), BackendError>;
    /// A token by hash.
    ///
    /// # Errors
    /// Storage failure.
    fn token(&self, token_hash: &str) -> Result<Option<TokenRow>, BackendError>;
    /// Every token.
    ///
    /// # Errors
    /// Storage failure.
    fn tokens(&self) -> Result<Vec<TokenRow>, BackendError>;
    /// Removes a token; false when there was none.
    ///
    /// # Errors
    /// Storage failure.
    fn remove_token(&self, token_hash: &str, actor: &str) -> Result<bool, BackendError>;
    /// Stores a web session.
    ///
    /// # Errors
    /// Storage failure.
    fn put_web_session(&self, s: &WebSessionRow) -> Result<(), BackendError>;
    /// A web session by hash.
    ///
    /// # Errors
    /// Storage failure.
    fn web_session(&self, id_hash: &str) -> Result<Option<WebSessionRow>, BackendError>;
    /// Removes a web session.
    ///
    /// # Errors
    /// Storage failure.
    fn remove_web_session(&self, id_hash: &str) -> Result<(), BackendError>;
}

/// Durable storage as the HTTP side sees it: the history source and the account store.
#[derive(Clone)]
pub struct Backend {
    /// Sessions and clips.
    pub history: Arc<dyn HistorySource>,
    /// Users, tokens, web logins, audit log.
    pub accounts: Arc<dyn AccountStore>,
}

impl Backend {
    /// One value that is both (the queue, or the in-memory store of tests and the demo).
    pub fn of<T: HistorySource + AccountStore + 'static>(both: Arc<T>) -> Self {
        Self {
            history: both.clone(),
            accounts: both,
        }
    }
}

/// Everything in memory: for tests and the demo server.
#[derive(Default)]
pub struct MemBackend {
    inner: Mutex<MemState>,
}

#[derive(Default)]
struct MemState {
    sessions: Vec<SessionRow>,
    clips: BTreeMap<String, Vec<ClipRow>>,
    audit: Vec<AuditRow>,
    users: BTreeMap<String, UserRow>,
    tokens: BTreeMap<String, TokenRow>,
    web_sessions: BTreeMap<String, WebSessionRow>,
    now_ms: u64,
}

impl MemBackend {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemState> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a session with its clips (test fixture); the cursor is assigned here.
    pub fn add_session(&self, mut row: SessionRow, clips: Vec<ClipRow>) {
        let mut s = self.lock();
        row.cursor = s.sessions.len() as u64 + 1;
        row.clip_count = clips.len() as u32;
        s.clips.insert(row.session_id.clone(), clips);
        s.sessions.push(row);
    }

    /// Every audit entry, oldest first (test helper).
    pub fn audit_entries(&self) -> Vec<AuditRow> {
        self.lock().audit.clone()
    }

    /// Sets the time stamped on audit entries (test helper).
    pub fn set_now_ms(&self, now_ms: u64) {
        self.lock().now_ms = now_ms;
    }
}

/// The page `q` asks for out of every matching row, newest first (the reference the stores'
/// own paging is tested against).
fn page_of(rows: Vec<SessionRow>, q: &SessionQuery) -> Page<SessionRow, SessionCursor> {
    let limit = q.limit.max(1);
    let (from, to) = match (q.before, q.after) {
        (Some(b), _) => {
            let from = rows
                .iter()
                .position(|r| r.place() < b)
                .unwrap_or(rows.len());
            (from, (from + limit).min(rows.len()))
        }
        (None, Some(a)) => {
            let to = rows
                .iter()
                .position(|r| r.place() <= a)
                .unwrap_or(rows.len());
            (to.saturating_sub(limit), to)
        }
        (None, None) => (0, limit.min(rows.len())),
    };
    let items = rows[from..to].to_vec();
    let next_before = (to < rows.len())
        .then(|| items.last().map(SessionRow::place))
        .flatten();
    let next_after = (from > 0 && (q.before.is_some() || q.after.is_some()))
        .then(|| items.first().map(SessionRow::place))
        .flatten();
    Page {
        items,
        next_before,
        next_after,
    }
}

fn contains_ci(hay: &str, needle_lower: &str) -> bool {
    hay.to_lowercase().contains(needle_lower)
}

impl HistorySource for MemBackend {
    fn list_sessions(
        &self,
        q: &SessionQuery,
    ) -> Result<Page<SessionRow, SessionCursor>, BackendError> {
        let s = self.lock();
        let text = q.text.as_ref().map(|t| t.to_lowercase());
        let user = q.user.as_ref().map(|t| t.to_lowercase());
        let host = q.host.as_ref().map(|t| t.to_lowercase());
        let mut matching: Vec<SessionRow> = s
            .sessions
            .iter()
            .filter(|r| user.as_ref().is_none_or(|u| contains_ci(&r.user, u)))
            .filter(|r| host.as_ref().is_none_or(|h| contains_ci(&r.target, h)))
            .filter(|r| q.from_ms.is_none_or(|f| r.start_ms >= f))
            .filter(|r| q.to_ms.is_none_or(|t| r.start_ms < t))
            .filter(|r| {
                text.as_ref().is_none_or(|t| {
                    contains_ci(&r.session_id, t)
                        || contains_ci(&r.user, t)
                        || contains_ci(&r.workspace, t)
                        || contains_ci(&r.target, t)
                })
            })
            .cloned()
            .collect();
        matching.sort_by_key(|r| std::cmp::Reverse(r.place()));
        Ok(page_of(matching, q))
    }

    fn session(&self, session_id: &str) -> Result<Option<SessionRow>, BackendError> {
        let s = self.lock();
        Ok(s.sessions
            .iter()
            .find(|r| r.address() == session_id)
            .cloned())
    }

    fn clips(&self, session_id: &str) -> Result<Vec<ClipRow>, BackendError> {
        Ok(self
            .lock()
            .clips
            .get(session_id)
            .cloned()
            .unwrap_or_default())
    }
}

impl AccountStore for MemBackend {
    fn append_audit(&self, e: &NewAuditRow) -> Result<(), BackendError> {
        let mut s = self.lock();
        let seq = s.audit.len() as u64 + 1;
        let time_ms = s.now_ms;
        s.audit.push(AuditRow {
            seq,
            time_ms,
            actor: e.actor.clone(),
            kind: e.kind.name().to_string(),
            session_id: e.session_id.clone(),
            message: e.message.clone(),
        });
        Ok(())
    }

    fn list_audit(&self, q: &AuditQuery) -> Result<Page<AuditRow>, BackendError> {
        let s = self.lock();
        let text = q.text.as_ref().map(|t| t.to_lowercase());
        let mut items: Vec<AuditRow> = s
            .audit
            .iter()
            .rev()
            .filter(|r| q.before.is_none_or(|b| r.seq < b))
            .filter(|r| q.actor.as_ref().is_none_or(|a| &r.actor == a))
            .filter(|r| q.kind.is_none_or(|k| r.kind == k.name()))
            .filter(|r| q.from_ms.is_none_or(|f| r.time_ms >= f))
            .filter(|r| q.to_ms.is_none_or(|t| r.time_ms < t))
            .filter(|r| {
                text.as_ref()
                    .is_none_or(|t| contains_ci(&r.message, t) || contains_ci(&r.actor, t))
            })
            .take(q.limit.max(1) + 1)
            .cloned()
            .collect();
        let next_before = if items.len() > q.limit.max(1) {
            items.pop();
            items.last().map(|r| r.seq)
        } else {
            None
        };
        Ok(Page {
            items,
            next_before,
            next_after: None,
        })
    }

    fn user(&self, name: &str) -> Result<Option<UserRow>, BackendError> {
        Ok(self.lock().users.get(name).cloned())
    }

    fn users(&self) -> Result<Vec<UserRow>, BackendError> {
        Ok(self.lock().users.values().cloned().collect())
    }

    fn put_user(&self, user: &UserRow, _actor: &str) -> Result<(), BackendError> {
        self.lock().users.insert(user.name.clone(), user.clone());
        Ok(())
    }

    fn remove_user(&self, name: &str, _actor: &str) -> Result<bool, BackendError> {
        let mut s = self.lock();
        s.tokens.retain(|_, t| t.user != name);
        s.web_sessions.retain(|_, w| w.user != name);
        Ok(s.users.remove(name).is_some())
    }

    fn add_token(&self, token: &TokenRow, _actor: &str) -> Result<(), BackendError> {
        self.lock()
            .tokens
            .insert(token.token_hash.clone(), token.clone());
        Ok(())
    }

    fn token(&self, token_hash: &str) -> Result<Option<TokenRow>, BackendError> {
        Ok(self.lock().tokens.get(token_hash).cloned())
    }

    fn tokens(&self) -> Result<Vec<TokenRow>, BackendError> {
        Ok(self.lock().tokens.values().cloned().collect())
    }

    fn remove_token(&self, token_hash: &str, _actor: &str) -> Result<bool, BackendError> {
        Ok(self.lock().tokens.remove(token_hash).is_some())
    }

    fn put_web_session(&self, w: &WebSessionRow) -> Result<(), BackendError> {
        self.lock()
            .web_sessions
            .insert(w.id_hash.clone(), w.clone());
        Ok(())
    }

    fn web_session(&self, id_hash: &str) -> Result<Option<WebSessionRow>, BackendError> {
        Ok(self.lock().web_sessions.get(id_hash).cloned())
    }

    fn remove_web_session(&self, id_hash: &str) -> Result<(), BackendError> {
        self.lock().web_sessions.remove(id_hash);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, user: &str, start_ms: u64) -> SessionRow {
        SessionRow {
            cursor: 0,
            session_id: id.into(),
            user: user.into(),
            workspace: "Ubuntu".into(),
            target: String::new(),
            client_addr: String::new(),
            start_ms,
            end_ms: None,
            state: "live".into(),
            clip_count: 0,
            end_reason: None,
            appliance: None,
        }
    }

    #[test]
    fn sessions_page_newest_first_with_cursor() {
        let b = MemBackend::new();
        for i in 0..5 {
            b.add_session(row(&format!("s{i}"), "u", i * 10), vec![]);
        }
        let q = SessionQuery {
            limit: 2,
            ..Default::default()
        };
        let p1 = b.list_sessions(&q).unwrap();
        let ids: Vec<_> = p1.items.iter().map(|r| r.session_id.as_str()).collect();
        assert_eq!(ids, ["s4", "s3"]);
        let p2 = b
            .list_sessions(&SessionQuery {
                before: p1.next_before,
                ..q.clone()
            })
            .unwrap();
        assert_eq!(p2.items[0].session_id, "s2");
        let p3 = b
            .list_sessions(&SessionQuery {
                before: p2.next_before,
                ..q
            })
            .unwrap();
        assert_eq!(p3.items.len(), 1);
        assert_eq!(p3.next_before, None);
    }

    #[test]
    fn addresses_name_a_session_per_appliance() {
        let mut r = row("a@b", "u", 0);
        assert_eq!(r.address(), "a@b");
        r.appliance = Some("proxy-1.lab".into());
        assert_eq!(r.address(), "a@b@proxy-1.lab");
        assert_eq!(split_address(&r.address()), ("a@b", Some("proxy-1.lab")));
        assert_eq!(split_address("plain-id"), ("plain-id", None));
        assert_eq!(split_address("x@not:app"), ("x@not:app", None));
        assert_eq!(split_address("@x"), ("@x", None));
    }

    #[test]
    fn audit_kind_names_round_trip() {
        for k in AuditKind::ALL {
            assert_eq!(AuditKind::parse(k.name()), Some(k));
        }
    }
}
