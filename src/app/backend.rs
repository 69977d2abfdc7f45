//! The HTTP side's [`Backend`] on the LMDB queue: history, clips, audit, accounts, settings.
//!
//! Owns only the translation between the queue's records and the rows `serve` shows; every
//! call is one queue call (or a few reads for a listing page). Called on HTTP worker threads
//! and by `session-recorder user add`.

use std::sync::Arc;

use crate::clock::Clock;
use crate::error::Classify;
use crate::queue::{
    ApiToken, AuditAction, AuditFilter, AuditTarget, Clip, ClipState, NewAudit, Queue, QueueError,
    Session, SessionFilter, SessionState, User, WebSession,
};
use crate::serve::backend::{
    AuditKind, AuditQuery, AuditRow, ClipRow, NewAuditRow, Page, SessionQuery, SessionRow,
    TokenRow, UserRow, WebSessionRow,
};
use crate::serve::{Backend, BackendError};
use crate::upload::location::thumbnail_key;

/// [`Backend`] over the queue.
pub struct QueueBackend {
    queue: Arc<Queue>,
    clock: Arc<dyn Clock>,
    /// Where objects go, for the audit wording (`s3://bucket@host`, `local directory ...`).
    store: String,
}

impl QueueBackend {
    /// A backend over `queue`; `store` describes the object store (audit wording).
    pub fn new(queue: Arc<Queue>, clock: Arc<dyn Clock>, store: String) -> Self {
        Self {
            queue,
            clock,
            store,
        }
    }

    fn session_row(&self, s: Session) -> Result<SessionRow, BackendError> {
        let clips = self.queue.clips_of_session(s.id).map_err(err)?;
        Ok(SessionRow {
            cursor: s.id,
            session_id: s.session_id,
            user: s.username,
            workspace: s.image_friendly_name,
            start_ms: s.start_ms,
            end_ms: s.end_ms,
            state: session_words(&s.state, &clips).to_string(),
            clip_count: u32::try_from(clips.len()).unwrap_or(u32::MAX),
        })
    }

    fn clip_row(&self, c: Clip) -> ClipRow {
        let (state, failed) = clip_words(&c.state);
        let local = |p: &std::path::PathBuf| p.is_file().then(|| p.clone());
        ClipRow {
            id: c.id,
            local_path: local(&c.path),
            thumb_path: c.thumb_path.as_ref().and_then(local),
            thumb_key: c
                .object_key
                .as_deref()
                .filter(|k| k.ends_with(".mp4"))
                .map(thumbnail_key),
            location: match &c.object_key {
                Some(key) => format!("{}/{key}", self.store),
                None => format!("file://{}", c.path.display()),
            },
            object_key: c.object_key,
            bytes: c.bytes,
            duration_ms: c.duration_ms,
            start_ms: c.start_ms,
            state: state.to_string(),
            failed,
        }
    }
}

fn err(e: QueueError) -> BackendError {
    BackendError {
        transient: e.is_transient(),
        message: e.to_string(),
    }
}

/// A session's state in words: live, interrupted, or how far its clips are.
fn session_words(state: &SessionState, clips: &[Clip]) -> &'static str {
    match state {
        SessionState::Live => "live",
        SessionState::Interrupted => "interrupted",
        SessionState::Closed if clips.iter().any(|c| clip_words(&c.state).1) => "failed",
        SessionState::Closed
            if clips
                .iter()
                .all(|c| matches!(c.state, ClipState::Uploaded | ClipState::LocalDeleted)) =>
        {
            "uploaded"
        }
        SessionState::Closed => "encoding",
    }
}

/// A clip's state in words, and whether it counts as failed.
fn clip_words(state: &ClipState) -> (&'static str, bool) {
    match state {
        ClipState::Ready => ("encoded", false),
        ClipState::Uploading => ("uploading", false),
        ClipState::Uploaded | ClipState::LocalDeleted => ("uploaded", false),
        ClipState::Failed {
            transient: true, ..
        } => ("retrying", false),
        ClipState::Failed { .. } => ("failed", true),
        ClipState::Expired => ("expired", true),
    }
}

fn action_of(kind: AuditKind) -> AuditAction {
    match kind {
        AuditKind::Played => AuditAction::Played,
        AuditKind::Downloaded => AuditAction::Downloaded,
        AuditKind::DownloadedSession => AuditAction::DownloadedSession,
        AuditKind::Login => AuditAction::Login,
        AuditKind::LoginFailed => AuditAction::LoginFailed,
        AuditKind::Logout => AuditAction::Logout,
        AuditKind::SettingsChanged => AuditAction::SettingsChanged,
        AuditKind::AccountChanged => AuditAction::UserChanged,
    }
}

/// The snake_case name of a stored action, as the audit page shows it.
fn action_name(action: AuditAction) -> &'static str {
    match action {
        AuditAction::Played => "played",
        AuditAction::Downloaded => "downloaded",
        AuditAction::DownloadedSession => "downloaded_session",
        AuditAction::SessionRefused => "session_refused",
        AuditAction::ClipExpired => "clip_expired",
        AuditAction::QuarantinedSegment => "quarantined",
        AuditAction::UserAdded
        | AuditAction::UserChanged
        | AuditAction::UserRemoved
        | AuditAction::TokenCreated
        | AuditAction::TokenRevoked => "account_changed",
        AuditAction::SettingsChanged => "settings_changed",
        AuditAction::Login => "login",
        AuditAction::LoginFailed => "login_failed",
        AuditAction::Logout => "logout",
        AuditAction::ClipDeleted => "clip_deleted",
    }
}

impl Backend for QueueBackend {
    fn list_sessions(&self, q: &SessionQuery) -> Result<Page<SessionRow>, BackendError> {
        let page = self
            .queue
            .list_sessions(&SessionFilter {
                username: q.user.clone(),
                start_from_ms: q.from_ms,
                start_to_ms: q.to_ms,
                text: q.text.clone(),
                before: q.before,
                limit: q.limit,
            })
            .map_err(err)?;
        let items = page
            .items
            .into_iter()
            .map(|s| self.session_row(s))
            .collect::<Result<_, _>>()?;
        Ok(Page {
            items,
            next_before: page.next_before,
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
        let mut clips = self.queue.clips_of_session(s.id).map_err(err)?;
        clips.sort_by_key(|c| (c.start_ms, c.segment, c.index));
        Ok(clips.into_iter().map(|c| self.clip_row(c)).collect())
    }

    fn append_audit(&self, entry: &NewAuditRow) -> Result<(), BackendError> {
        let target = match &entry.session_id {
            Some(id) => AuditTarget::Session {
                session_id: id.clone(),
            },
            None => AuditTarget::None,
        };
        self.queue
            .append_audit(&NewAudit {
                actor: entry.actor.clone(),
                action: action_of(entry.kind),
                target,
                message: entry.message.clone(),
            })
            .map(|_| ())
            .map_err(err)
    }

    fn list_audit(&self, q: &AuditQuery) -> Result<Page<AuditRow>, BackendError> {
        // "account changed" covers five stored actions: filter those here.
        let exact = q.kind.filter(|k| *k != AuditKind::AccountChanged);
        let page = self
            .queue
            .list_audit(&AuditFilter {
                actor: q.actor.clone(),
                action: exact.map(action_of),
                from_ms: q.from_ms,
                to_ms: q.to_ms,
                text: q.text.clone(),
                before: q.before,
                limit: q.limit,
            })
            .map_err(err)?;
        let items = page
            .items
            .into_iter()
            .map(|e| AuditRow {
                seq: e.seq,
                time_ms: e.time_ms,
                actor: e.actor,
                kind: action_name(e.action).to_string(),
                message: e.message,
            })
            .filter(|row| q.kind.is_none_or(|k| row.kind == k.name()))
            .collect();
        Ok(Page {
            items,
            next_before: page.next_before,
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

    fn put_user(&self, user: &UserRow, actor: &str) -> Result<(), BackendError> {
        let record = User {
            name: user.name.clone(),
            password_hash: user.password_hash.clone(),
            permissions: user.permissions,
            created_ms: user.created_ms,
        };
        if self.queue.user(&user.name).map_err(err)?.is_some() {
            self.queue.update_user(&record, actor).map_err(err)
        } else {
            self.queue.add_user(&record, actor).map_err(err)
        }
    }

    fn remove_user(&self, name: &str, actor: &str) -> Result<bool, BackendError> {
        if self.queue.user(name).map_err(err)?.is_none() {
            return Ok(false);
        }
        self.queue.remove_user(name, actor).map_err(err)?;
        Ok(true)
    }

    fn add_token(&self, token: &TokenRow, actor: &str) -> Result<(), BackendError> {
        self.queue
            .add_token(
                &ApiToken {
                    token_hash: token.token_hash.clone(),
                    user: token.user.clone(),
                    label: token.label.clone(),
                    created_ms: token.created_ms,
                },
                actor,
            )
            .map_err(err)
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

    fn put_web_session(&self, s: &WebSessionRow) -> Result<(), BackendError> {
        self.queue
            .put_web_session(&WebSession {
                id_hash: s.id_hash.clone(),
                user: s.user.clone(),
                created_ms: s.created_ms,
                expires_ms: s.expires_ms,
            })
            .map_err(err)
    }

    fn web_session(&self, id_hash: &str) -> Result<Option<WebSessionRow>, BackendError> {
        let now_ms = self.clock.now_ms();
        Ok(self
            .queue
            .web_session(id_hash, now_ms)
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

    fn settings_override(&self) -> Result<Option<String>, BackendError> {
        Ok(self.queue.settings_override().map_err(err)?.map(|s| s.toml))
    }

    fn save_settings_override(&self, toml: &str, actor: &str) -> Result<(), BackendError> {
        let version = self
            .queue
            .settings_override()
            .map_err(err)?
            .map_or(0, |s| s.version);
        self.queue
            .save_settings_override(version, toml, actor)
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
    use crate::queue::{NewSession, QueueOptions};

    fn backend() -> (tempfile::TempDir, QueueBackend) {
        let dir = tempfile::tempdir().unwrap();
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(1_000));
        let queue = Arc::new(Queue::open(&QueueOptions::new(dir.path()), clock.clone()).unwrap());
        (dir, QueueBackend::new(queue, clock, "local".into()))
    }

    #[test]
    fn users_round_trip_and_are_audited() {
        let (_d, b) = backend();
        let mut u = UserRow {
            name: "admin@example.com".into(),
            password_hash: "$argon2id$x".into(),
            permissions: 7,
            created_ms: 5,
        };
        b.put_user(&u, "cli").unwrap();
        u.permissions = 1;
        b.put_user(&u, "cli").unwrap();
        assert_eq!(b.user(&u.name).unwrap(), Some(u.clone()));
        assert_eq!(b.users().unwrap().len(), 1);
        let audit = b
            .list_audit(&AuditQuery {
                kind: Some(AuditKind::AccountChanged),
                limit: 10,
                ..AuditQuery::default()
            })
            .unwrap();
        assert_eq!(audit.items.len(), 2);
        assert!(b.remove_user(&u.name, "cli").unwrap());
        assert!(!b.remove_user(&u.name, "cli").unwrap());
    }

    #[test]
    fn sessions_list_with_their_state_in_words() {
        let (_d, b) = backend();
        b.queue
            .register_session(&NewSession {
                session_id: "s1".into(),
                user_id: "u".into(),
                username: "bob".into(),
                image_friendly_name: "Desktop".into(),
                protocol: "rdp".into(),
                start_ms: 10,
            })
            .unwrap();
        let page = b
            .list_sessions(&SessionQuery {
                limit: 10,
                ..SessionQuery::default()
            })
            .unwrap();
        assert_eq!(page.items.len(), 1);
        assert_eq!(page.items[0].state, "live");
        assert_eq!(page.items[0].workspace, "Desktop");
        assert_eq!(b.session("s1").unwrap().unwrap().user, "bob");
        assert!(b.clips("nope").unwrap().is_empty());
        b.append_audit(&NewAuditRow {
            actor: "bob".into(),
            kind: AuditKind::Played,
            session_id: Some("s1".into()),
            message: "User bob played s1".into(),
        })
        .unwrap();
        let audit = b
            .list_audit(&AuditQuery {
                limit: 10,
                ..AuditQuery::default()
            })
            .unwrap();
        assert_eq!(audit.items[0].kind, "played");
    }

    #[test]
    fn settings_override_saves_over_the_last_version() {
        let (_d, b) = backend();
        assert_eq!(b.settings_override().unwrap(), None);
        b.save_settings_override("queue-length = 1", "admin")
            .unwrap();
        b.save_settings_override("queue-length = 2", "admin")
            .unwrap();
        assert_eq!(
            b.settings_override().unwrap().as_deref(),
            Some("queue-length = 2")
        );
    }
}
