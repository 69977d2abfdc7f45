//! [`Backend`] on the real LMDB [`Queue`]: maps the queue's records to the rows the pages show.
//!
//! Clip rows are built per segment in session order: a segment whose encoding failed or that
//! was quarantined appears as one failed clip (shown, never hidden); clips of encoded segments
//! follow in their index order. Account changes are audited by the queue itself in the same
//! transaction, so the HTTP side's own `AccountChanged` entries are not written twice.

use std::sync::Arc;

use super::backend::{
    AccountStore, AuditKind, AuditQuery, AuditRow, BackendError, ClipRow, HistorySource,
    NewAuditRow, Page, SessionQuery, SessionRow, TokenRow, UserRow, WebSessionRow,
};
use crate::clock::Clock;
use crate::error::Classify;
use crate::queue::{
    ApiToken, AuditAction, AuditFilter, AuditTarget, Clip, ClipState, NewAudit, Queue, QueueError,
    SegmentState, Session, SessionCursor, SessionFilter, User, WebSession,
};

/// The queue as the HTTP side's storage.
pub struct QueueBackend {
    queue: Arc<Queue>,
    clock: Arc<dyn Clock>,
    /// `s3://bucket/` or `file:///dir/`: prefixed to object keys for the audit wording.
    location_prefix: String,
    /// Maps an uploaded clip's key to its thumbnail's key, when thumbnails are uploaded.
    thumb_key: fn(&str) -> Option<String>,
}

impl QueueBackend {
    /// A backend over `queue`; `location_prefix` is what precedes an object key in a clip's
    /// human location (`s3://bucket/`).
    pub fn new(queue: Arc<Queue>, clock: Arc<dyn Clock>, location_prefix: String) -> Self {
        Self {
            queue,
            clock,
            location_prefix,
            thumb_key: |_| None,
        }
    }

    /// Sets how a thumbnail's object key derives from its clip's key.
    pub fn with_thumb_key(mut self, f: fn(&str) -> Option<String>) -> Self {
        self.thumb_key = f;
        self
    }

    fn session_row(&self, s: Session) -> Result<SessionRow, BackendError> {
        let clip_count = self.queue.clips_of_session(s.id).map_err(err)?.len() as u32;
        Ok(SessionRow {
            cursor: s.id,
            session_id: s.session_id,
            user: s.username,
            workspace: s.image_friendly_name,
            target: s.target,
            client_addr: s.client_addr,
            start_ms: s.start_ms,
            end_ms: s.end_ms,
            state: s.state.name().to_lowercase(),
            clip_count,
            end_reason: s.end_reason.map(|r| r.describe().to_string()),
            appliance: None,
        })
    }

    fn clip_row(&self, c: Clip) -> ClipRow {
        let (state, local, remote, failed) = match &c.state {
            ClipState::Ready => ("waiting for upload".to_string(), true, false, false),
            ClipState::Uploading => ("uploading".into(), true, false, false),
            ClipState::Uploaded => ("uploaded".into(), true, true, false),
            ClipState::LocalDeleted => ("uploaded".into(), false, true, false),
            ClipState::Failed { transient, .. } => (
                if *transient {
                    "upload retrying"
                } else {
                    "upload failed"
                }
                .into(),
                true,
                false,
                false,
            ),
            ClipState::Expired => ("failed: expired before upload".into(), false, false, true),
        };
        let object_key = remote.then(|| c.object_key.clone()).flatten();
        let location = match &c.object_key {
            Some(k) => format!("{}{k}", self.location_prefix),
            None => format!("file://{}", c.path.display()),
        };
        ClipRow {
            id: c.id,
            local_path: local.then(|| c.path.clone()),
            thumb_path: c.thumb_path.clone(),
            thumb_key: object_key.as_deref().and_then(self.thumb_key),
            object_key,
            location,
            bytes: c.bytes,
            duration_ms: c.duration_ms,
            start_ms: c.start_ms,
            state,
            failed,
            // The appliance checked size and SHA-256 against the store at upload.
            sha256: None,
        }
    }
}

fn err(e: QueueError) -> BackendError {
    BackendError {
        transient: e.is_transient(),
        message: e.to_string(),
    }
}

fn action(k: AuditKind) -> AuditAction {
    match k {
        AuditKind::Played => AuditAction::Played,
        AuditKind::Downloaded => AuditAction::Downloaded,
        AuditKind::DownloadedSession => AuditAction::DownloadedSession,
        AuditKind::SessionRefused => AuditAction::SessionRefused,
        AuditKind::SessionReconnected => AuditAction::SessionReconnected,
        AuditKind::SessionEmpty => AuditAction::SessionEmpty,
        AuditKind::ClipExpired => AuditAction::ClipExpired,
        AuditKind::QuarantinedSegment => AuditAction::QuarantinedSegment,
        AuditKind::Purged => AuditAction::Purged,
        AuditKind::Login => AuditAction::Login,
        AuditKind::LoginFailed => AuditAction::LoginFailed,
        AuditKind::LoginThrottled => AuditAction::LoginThrottled,
        AuditKind::Logout => AuditAction::Logout,
        AuditKind::SettingsChanged => AuditAction::SettingsChanged,
        AuditKind::UserAdded => AuditAction::UserAdded,
        AuditKind::UserChanged => AuditAction::UserChanged,
        AuditKind::UserRemoved => AuditAction::UserRemoved,
        AuditKind::TokenCreated => AuditAction::TokenCreated,
        AuditKind::TokenRevoked => AuditAction::TokenRevoked,
        AuditKind::Searched => AuditAction::Searched,
    }
}

/// The page's kind of a stored action; `None` for one nothing writes (kept readable for old
/// records). Exhaustive, so a new action cannot be missing from the audit page's filter.
fn kind_of(a: &AuditAction) -> Option<AuditKind> {
    let k = match a {
        AuditAction::Played => AuditKind::Played,
        AuditAction::Downloaded => AuditKind::Downloaded,
        AuditAction::DownloadedSession => AuditKind::DownloadedSession,
        AuditAction::SessionRefused => AuditKind::SessionRefused,
        AuditAction::SessionReconnected => AuditKind::SessionReconnected,
        AuditAction::SessionEmpty => AuditKind::SessionEmpty,
        AuditAction::ClipExpired => AuditKind::ClipExpired,
        AuditAction::QuarantinedSegment => AuditKind::QuarantinedSegment,
        AuditAction::Purged => AuditKind::Purged,
        AuditAction::Login => AuditKind::Login,
        AuditAction::LoginFailed => AuditKind::LoginFailed,
        AuditAction::LoginThrottled => AuditKind::LoginThrottled,
        AuditAction::Logout => AuditKind::Logout,
        AuditAction::SettingsChanged => AuditKind::SettingsChanged,
        AuditAction::UserAdded => AuditKind::UserAdded,
        AuditAction::UserChanged => AuditKind::UserChanged,
        AuditAction::UserRemoved => AuditKind::UserRemoved,
        AuditAction::TokenCreated => AuditKind::TokenCreated,
        AuditAction::TokenRevoked => AuditKind::TokenRevoked,
        AuditAction::Searched => AuditKind::Searched,
        AuditAction::ClipDeleted => return None,
    };
    Some(k)
}

/// `UserAdded` -> `user_added`.
fn snake(a: &AuditAction) -> String {
    if let Some(k) = kind_of(a) {
        return k.name().to_string();
    }
    let mut out = String::new();
    for (i, ch) in format!("{a:?}").chars().enumerate() {
        if ch.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(ch.to_ascii_lowercase());
        } else {
            out.push(ch);
        }
    }
    out
}

impl HistorySource for QueueBackend {
    fn list_sessions(
        &self,
        q: &SessionQuery,
    ) -> Result<Page<SessionRow, SessionCursor>, BackendError> {
        let filter = SessionFilter {
            username: q.user.clone(),
            host: q.host.clone(),
            start_from_ms: q.from_ms,
            start_to_ms: q.to_ms,
            text: q.text.clone(),
            before: q.before,
            after: q.after,
            limit: q.limit,
        };
        let page = self.queue.list_sessions(&filter).map_err(err)?;
        let items = page
            .items
            .into_iter()
            .map(|s| self.session_row(s))
            .collect::<Result<_, _>>()?;
        Ok(Page {
            items,
            next_before: page.older,
            next_after: page.newer,
        })
    }

    fn session(&self, session_id: &str) -> Result<Option<SessionRow>, BackendError> {
        match self.queue.session_by_external(session_id).map_err(err)? {
            Some(s) => Ok(Some(self.session_row(s)?)),
            None => Ok(None),
        }
    }

    fn clips(&self, session_id: &str) -> Result<Vec<ClipRow>, BackendError> {
        let Some(s) = self.queue.session_by_external(session_id).map_err(err)? else {
            return Ok(Vec::new());
        };
        let segments = self.queue.segments_of_session(s.id).map_err(err)?;
        let mut clips = self.queue.clips_of_session(s.id).map_err(err)?;
        clips.sort_by_key(|c| (c.segment, c.index));
        let mut rows = Vec::new();
        for seg in segments {
            match &seg.state {
                SegmentState::Failed { .. } | SegmentState::Quarantined { .. } => {
                    rows.push(ClipRow {
                        id: u64::MAX - seg.id,
                        local_path: None,
                        thumb_path: None,
                        object_key: None,
                        thumb_key: None,
                        location: String::new(),
                        bytes: 0,
                        duration_ms: seg
                            .last_sync_ms
                            .zip(seg.first_sync_ms)
                            .map_or(0, |(l, f)| l.saturating_sub(f)),
                        start_ms: seg.first_sync_ms.unwrap_or(seg.created_ms),
                        state: "failed: could not be encoded".into(),
                        failed: true,
                        sha256: None,
                    });
                }
                _ => rows.extend(
                    clips
                        .iter()
                        .filter(|c| c.segment == seg.id)
                        .cloned()
                        .map(|c| self.clip_row(c)),
                ),
            }
        }
        Ok(rows)
    }
}

impl AccountStore for QueueBackend {
    fn append_audit(&self, e: &NewAuditRow) -> Result<(), BackendError> {
        if e.kind.is_account_change() {
            // The queue audits account changes itself, in the same transaction.
            return Ok(());
        }
        let entry = NewAudit {
            actor: e.actor.clone(),
            action: action(e.kind),
            target: match &e.session_id {
                Some(s) => AuditTarget::Session {
                    session_id: s.clone(),
                },
                None => AuditTarget::None,
            },
            message: e.message.clone(),
        };
        self.queue.append_audit(&entry).map(|_| ()).map_err(err)
    }

    fn list_audit(&self, q: &AuditQuery) -> Result<Page<AuditRow>, BackendError> {
        let filter = AuditFilter {
            actor: q.actor.clone(),
            action: q.kind.map(action),
            from_ms: q.from_ms,
            to_ms: q.to_ms,
            text: q.text.clone(),
            before: q.before,
            limit: q.limit,
        };
        let page = self.queue.list_audit(&filter).map_err(err)?;
        Ok(Page {
            items: page
                .items
                .into_iter()
                .map(|a| AuditRow {
                    seq: a.seq,
                    time_ms: a.time_ms,
                    kind: snake(&a.action),
                    session_id: match a.target {
                        AuditTarget::Session { session_id } => Some(session_id),
                        _ => None,
                    },
                    actor: a.actor,
                    message: a.message,
                })
                .collect(),
            next_before: page.next_before,
            next_after: None,
        })
    }

    fn user(&self, name: &str) -> Result<Option<UserRow>, BackendError> {
        Ok(self.queue.user(name).map_err(err)?.map(user_row))
    }

    fn users(&self) -> Result<Vec<UserRow>, BackendError> {
        Ok(self
            .queue
            .users()
            .map_err(err)?
            .into_iter()
            .map(user_row)
            .collect())
    }

    fn put_user(&self, u: &UserRow, actor: &str) -> Result<(), BackendError> {
        let user = User {
            name: u.name.clone(),
            password_hash: u.password_hash.clone(),
            permissions: u.permissions,
            created_ms: u.created_ms,
        };
        if self.queue.user(&u.name).map_err(err)?.is_some() {
            self.queue.update_user(&user, actor).map_err(err)
        } else {
            self.queue.add_user(&user, actor).map_err(err)
        }
    }

    fn remove_user(&self, name: &str, actor: &str) -> Result<bool, BackendError> {
        match self.queue.remove_user(name, actor) {
            Ok(()) => Ok(true),
            Err(QueueError::NotFound { .. }) => Ok(false),
            Err(e) => Err(err(e)),
        }
    }

    fn add_token(&self, t: &TokenRow, actor: &str) -> Result<(), BackendError> {
        let token = ApiToken {
            token_hash: t.token_hash.clone(),
            user: t.user.clone(),
            label: t.label.clone(),
            created_ms: t.created_ms,
        };
        self.queue.add_token(&token, actor).map_err(err)
    }

    fn token(&self, token_hash: &str) -> Result<Option<TokenRow>, BackendError> {
        Ok(self.queue.token(token_hash).map_err(err)?.map(token_row))
    }

    fn tokens(&self) -> Result<Vec<TokenRow>, BackendError> {
        Ok(self
            .queue
            .tokens(None)
            .map_err(err)?
            .into_iter()
            .map(token_row)
            .collect())
    }

    fn remove_token(&self, token_hash: &str, actor: &str) -> Result<bool, BackendError> {
        self.queue.remove_token(token_hash, actor).map_err(err)
    }

    fn put_web_session(&self, w: &WebSessionRow) -> Result<(), BackendError> {
        let s = WebSession {
            id_hash: w.id_hash.clone(),
            user: w.user.clone(),
            created_ms: w.created_ms,
            expires_ms: w.expires_ms,
        };
        self.queue.put_web_session(&s).map_err(err)
    }

    fn web_session(&self, id_hash: &str) -> Result<Option<WebSessionRow>, BackendError> {
        let now = self.clock.now_ms();
        Ok(self
            .queue
            .web_session(id_hash, now)
            .map_err(err)?
            .map(|s| WebSessionRow {
                id_hash: s.id_hash,
                user: s.user,
                created_ms: s.created_ms,
                expires_ms: s.expires_ms,
            }))
    }

    fn remove_web_session(&self, id_hash: &str) -> Result<(), BackendError> {
        self.queue
            .remove_web_session(id_hash)
            .map(|_| ())
            .map_err(err)
    }
}

fn user_row(u: User) -> UserRow {
    UserRow {
        name: u.name,
        password_hash: u.password_hash,
        permissions: u.permissions,
        created_ms: u.created_ms,
    }
}

fn token_row(t: ApiToken) -> TokenRow {
    TokenRow {
        token_hash: t.token_hash,
        user: t.user,
        label: t.label,
        created_ms: t.created_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::queue::QueueOptions;

    fn backend() -> (tempfile::TempDir, QueueBackend) {
        let dir = tempfile::tempdir().unwrap();
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(1_700_000_000_000));
        let q = Queue::open(&QueueOptions::new(dir.path().join("q")), clock.clone()).unwrap();
        (
            dir,
            QueueBackend::new(Arc::new(q), clock, "s3://bucket/".into()),
        )
    }

    #[test]
    fn accounts_audit_and_settings_round_trip_through_lmdb() {
        let (_d, b) = backend();
        let u = UserRow {
            name: "admin@example.com".into(),
            password_hash: "$argon2id$x".into(),
            permissions: 4,
            created_ms: 1,
        };
        b.put_user(&u, "cli").unwrap();
        b.put_user(
            &UserRow {
                permissions: 5,
                ..u.clone()
            },
            "cli",
        )
        .unwrap();
        assert_eq!(b.user(&u.name).unwrap().unwrap().permissions, 5);
        b.append_audit(&NewAuditRow {
            actor: u.name.clone(),
            kind: AuditKind::DownloadedSession,
            session_id: Some("sid".into()),
            message: "User admin@example.com downloaded entire session: sid".into(),
        })
        .unwrap();
        let page = b
            .list_audit(&AuditQuery {
                kind: Some(AuditKind::DownloadedSession),
                limit: 10,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(page.items.len(), 1);
        assert_eq!(page.items[0].kind, "downloaded_session");
        assert!(page.items[0].message.ends_with("entire session: sid"));
        let w = WebSessionRow {
            id_hash: "h".into(),
            user: u.name.clone(),
            created_ms: 1,
            expires_ms: u64::MAX,
        };
        b.put_web_session(&w).unwrap();
        assert_eq!(b.web_session("h").unwrap(), Some(w));
        b.remove_web_session("h").unwrap();
        assert_eq!(b.web_session("h").unwrap(), None);
        assert!(b.remove_user(&u.name, "cli").unwrap());
        assert!(!b.remove_user(&u.name, "cli").unwrap());
        assert_eq!(snake(&AuditAction::UserAdded), "user_added");
    }
}
