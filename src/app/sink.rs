//! The daemon's adapters between stages: the tap's [`RecordingSink`] on the queue, and the
//! HTTP side's [`RemoteObjects`] on the object store.
//!
//! Owns the translation of queue errors into the tap's fail-closed vocabulary: a full queue
//! (LMDB map at its maximum) becomes a refusal of new recorded sessions with a clear reason on
//! the admission gate and the status page, never a crash; the gate opens again after the next
//! successful write. A sealed segment the queue refuses is kept and registered again when its
//! session closes; if the queue still refuses, the session is left open-ended for start-up
//! recovery, which registers the files on disk, so no written footage is orphaned.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::error::Classify;
use crate::ingest::sink::Rejoin;
use crate::ingest::{AdmissionState, RecordingSink, SessionMeta, SessionStart, SinkError};
use crate::queue::{
    ACTOR_SYSTEM, AuditAction, AuditTarget, EndReason, NewAudit, NewSegment, NewSession, Queue,
    QueueError, SessionEnd, SessionState,
};
use crate::serve::RemoteObjects;
use crate::serve::clips::ClipError;
use crate::status::StatusBoard;
use crate::upload::{ObjectStore, StoreError};

/// [`RecordingSink`] over the LMDB queue.
pub struct QueueSink {
    queue: Arc<Queue>,
    admission: Arc<AdmissionState>,
    status: StatusBoard,
    /// Sealed segment files the queue did not take (full or failing disk), by session id:
    /// retried when the session closes, so their footage is not left unregistered.
    unregistered: Mutex<HashMap<u64, Vec<NewSegment>>>,
    /// Closed sessions a reconnect made live again, with the end they had: restored should
    /// that connection not start after all.
    reopened: Mutex<HashMap<u64, SessionEnd>>,
}

impl QueueSink {
    /// A sink writing to `queue`, reporting a full queue on `admission` and `status`.
    pub fn new(queue: Arc<Queue>, admission: Arc<AdmissionState>, status: StatusBoard) -> Self {
        Self {
            queue,
            admission,
            status,
            unregistered: Mutex::new(HashMap::new()),
            reopened: Mutex::new(HashMap::new()),
        }
    }

    /// A connection with the id of a session that already closed continues it: the session
    /// is live again (audited as a reconnect), and ends anew when this connection ends.
    fn reopen_if_closed(&self, meta: &SessionMeta, id: u64) -> Result<(), SinkError> {
        match self.queue.session(id) {
            Ok(Some(s)) if s.state == SessionState::Closed => {}
            Ok(_) => return Ok(()),
            Err(e) => return Err(self.refuse("session", e)),
        }
        let audit = NewAudit {
            actor: ACTOR_SYSTEM.to_string(),
            action: AuditAction::SessionReconnected,
            target: AuditTarget::Session {
                session_id: meta.session_id.clone(),
            },
            message: format!(
                "Session {} of user {} ({}) from {}: reconnected after the session had \
                 closed; it continues (live again, its end set when this connection ends)",
                meta.session_id, meta.username, meta.user_id, meta.client_addr
            ),
        };
        match self.queue.reopen_session(id, &audit) {
            Ok(before) => {
                log::info!(
                    "event=session_reopened session={} segments={}",
                    meta.session_id,
                    before.segment_count
                );
                self.reopened.lock().expect("sink lock poisoned").insert(
                    id,
                    SessionEnd {
                        end_ms: before.end_ms,
                        reason: before.end_reason,
                    },
                );
                Ok(())
            }
            // Another connection reopened it first.
            Err(QueueError::StaleState { .. }) => Ok(()),
            Err(e) => Err(self.refuse("reopen_session", e)),
        }
    }

    /// A reopened session whose new connection did not start: it ends where it ended.
    fn restore_end(&self, id: u64) {
        let Some(SessionEnd { end_ms, reason }) = self
            .reopened
            .lock()
            .expect("sink lock poisoned")
            .remove(&id)
        else {
            return;
        };
        let reason = reason.unwrap_or(EndReason::UserDisconnect);
        let restored =
            self.queue
                .end_session(id, SessionState::Live, SessionState::Closed, end_ms, reason);
        if let Err(e) = restored {
            self.refuse("transition_session", e);
        }
    }

    /// Registers the segments of `session` the queue refused earlier. True when none is left.
    fn retry_unregistered(&self, session: u64) -> bool {
        let pending = self
            .unregistered
            .lock()
            .expect("sink lock poisoned")
            .remove(&session)
            .unwrap_or_default();
        let mut left = Vec::new();
        for segment in pending {
            if let Err(e) = self.queue.register_segment(&segment) {
                log::error!(
                    "event=segment_register_retry_failed session={session} index={} error={e}",
                    segment.index
                );
                left.push(segment);
            }
        }
        let done = left.is_empty();
        if !done {
            self.unregistered
                .lock()
                .expect("sink lock poisoned")
                .insert(session, left);
        }
        done
    }

    /// A session that ended before any segment was registered leaves nothing but an audit
    /// entry (no empty `closed` session in the history). True when it was forgotten.
    fn forget_if_empty(&self, meta: &SessionMeta, session: u64, reason: EndReason) -> bool {
        match self.queue.session(session) {
            Ok(Some(s)) if s.segment_count == 0 && s.state == SessionState::Live => {}
            _ => return false,
        }
        let audit = NewAudit {
            actor: ACTOR_SYSTEM.to_string(),
            action: AuditAction::SessionEmpty,
            target: AuditTarget::None,
            message: format!(
                "Session {} of user {} ({}) from {} ended before anything was drawn ({}); \
                 nothing was recorded",
                meta.session_id,
                meta.username,
                meta.user_id,
                meta.client_addr,
                reason.describe()
            ),
        };
        match self.queue.forget_unstarted_session(session, &audit) {
            Ok(forgotten) => {
                log::info!(
                    "event=session_empty_forgotten session={} reason={} forgotten={forgotten}",
                    meta.session_id,
                    reason.name()
                );
                forgotten
            }
            Err(e) => {
                self.refuse("forget_unstarted_session", e);
                false
            }
        }
    }

    /// Maps a queue error to the tap's terms, and closes the gate when the queue is full.
    fn refuse(&self, what: &str, e: QueueError) -> SinkError {
        if matches!(e, QueueError::Full { .. }) {
            let reason = format!("recording queue full ({e}); new recorded sessions are refused");
            self.admission.set_queue_problem(Some(reason.clone()));
            self.status.record_error("queue", &reason);
        }
        log::error!("event=sink_failed op={what} error={e}");
        if e.is_transient() {
            SinkError::Unavailable(e.to_string())
        } else {
            SinkError::Rejected(e.to_string())
        }
    }

    fn ok<T>(&self, value: T) -> T {
        self.admission.set_queue_problem(None);
        value
    }

    fn session_id(&self, meta: &SessionMeta) -> Result<u64, SinkError> {
        match self.queue.session_by_external(&meta.session_id) {
            Ok(Some(s)) => Ok(s.id),
            Ok(None) => Err(SinkError::Rejected(format!(
                "session {} was never opened",
                meta.session_id
            ))),
            Err(e) => Err(self.refuse("session_by_external", e)),
        }
    }
}

impl RecordingSink for QueueSink {
    fn open_session(&self, meta: &SessionMeta) -> Result<SessionStart, SinkError> {
        let new = NewSession {
            session_id: meta.session_id.clone(),
            user_id: meta.user_id.clone(),
            username: meta.username.clone(),
            image_friendly_name: meta.image_friendly_name.clone(),
            protocol: meta.protocol.clone(),
            start_ms: meta.started_ms,
            target: meta.target.clone(),
            client_addr: meta.client_addr.clone(),
        };
        let id = self
            .queue
            .register_session(&new)
            .map_err(|e| self.refuse("register_session", e))?;
        self.reopen_if_closed(meta, id)?;
        let count = match self.queue.session(id) {
            Ok(Some(s)) => s.segment_count,
            Ok(None) => 0,
            Err(e) => return Err(self.refuse("session", e)),
        };
        Ok(self.ok(SessionStart {
            session: id,
            next_index: count,
        }))
    }

    fn segment_sealed(
        &self,
        session: u64,
        _meta: &SessionMeta,
        index: u32,
        path: &Path,
        bytes: u64,
    ) -> Result<(), SinkError> {
        let segment = NewSegment {
            session,
            index,
            path: path.to_path_buf(),
            bytes,
            first_sync_ms: None,
            last_sync_ms: None,
            sealed: true,
        };
        if let Err(e) = self.queue.register_segment(&segment) {
            // The file is written and synced: keep it for a retry at close (and, failing
            // that, for start-up recovery) instead of dropping its footage.
            self.unregistered
                .lock()
                .expect("sink lock poisoned")
                .entry(session)
                .or_default()
                .push(segment);
            return Err(self.refuse("register_segment", e));
        }
        self.ok(());
        Ok(())
    }

    fn session_closed(&self, meta: &SessionMeta, reason: EndReason) {
        let Ok(session) = self.session_id(meta) else {
            return;
        };
        self.reopened
            .lock()
            .expect("sink lock poisoned")
            .remove(&session);
        if !self.retry_unregistered(session) {
            // Footage on disk the queue still refuses: leave the session open-ended
            // (`Interrupted`, no end) so the next start-up recovery registers its files.
            log::error!("event=session_left_for_recovery session={session}");
            if let Err(e) = self.queue.end_session(
                session,
                SessionState::Live,
                SessionState::Interrupted,
                None,
                EndReason::RecordingFailed,
            ) {
                self.refuse("transition_session", e);
            }
            return;
        }
        if self.forget_if_empty(meta, session, reason) {
            return;
        }
        let now_ms = self.status.clock().now_ms();
        // `Interrupted`: a reconnect of a session a crash cut (start-up recovery ended it at
        // its last write); this connection's end is the session's real end.
        for from in [SessionState::Live, SessionState::Interrupted] {
            match self
                .queue
                .end_session(session, from, SessionState::Closed, Some(now_ms), reason)
            {
                Err(QueueError::StaleState { .. }) => continue,
                Ok(_) => {}
                Err(e) => {
                    self.refuse("transition_session", e);
                }
            }
            return;
        }
    }

    fn rejoined(&self, meta: &SessionMeta, how: &Rejoin) {
        let (session_id, what) = match how {
            Rejoin::Continued { waited_ms } => (
                meta.session_id.clone(),
                format!(
                    "reconnected and continues the session (the earlier connection was \
                     sealed after {waited_ms} ms)"
                ),
            ),
            Rejoin::Linked { live } => (
                live.clone(),
                format!(
                    "connected again while the session is still live (a second tab): \
                     recorded beside it as session {}",
                    meta.session_id
                ),
            ),
        };
        let audit = NewAudit {
            actor: ACTOR_SYSTEM.to_string(),
            action: AuditAction::SessionReconnected,
            target: AuditTarget::Session { session_id },
            message: format!(
                "Session {} of user {} ({}) from {}: {what}",
                meta.session_id, meta.username, meta.user_id, meta.client_addr
            ),
        };
        if let Err(e) = self.queue.append_audit(&audit) {
            self.refuse("append_audit", e);
        }
    }

    fn refused(&self, meta: &SessionMeta, reason: &str) {
        let audit = NewAudit {
            actor: ACTOR_SYSTEM.to_string(),
            action: AuditAction::SessionRefused,
            target: AuditTarget::None,
            message: format!(
                "Session {} of user {} ({}) from {} refused: {reason}",
                meta.session_id, meta.username, meta.user_id, meta.client_addr
            ),
        };
        if let Err(e) = self.queue.append_audit(&audit) {
            self.refuse("append_audit", e);
        }
    }

    fn not_started(&self, meta: &SessionMeta, reason: &str) {
        let audit = NewAudit {
            actor: ACTOR_SYSTEM.to_string(),
            action: AuditAction::SessionRefused,
            target: AuditTarget::None,
            message: format!(
                "Session {} of user {} ({}) from {} not started: {reason}",
                meta.session_id, meta.username, meta.user_id, meta.client_addr
            ),
        };
        let forgotten = match self.queue.session_by_external(&meta.session_id) {
            Ok(Some(s)) => {
                let forgotten = self.queue.forget_unstarted_session(s.id, &audit);
                self.restore_end(s.id);
                forgotten
            }
            Ok(None) => self.queue.append_audit(&audit).map(|_| false),
            Err(e) => Err(e),
        };
        match forgotten {
            Ok(forgotten) => log::info!(
                "event=session_not_started_recorded session={} forgotten={forgotten}",
                meta.session_id
            ),
            Err(e) => {
                self.refuse("forget_unstarted_session", e);
            }
        }
    }
}

/// [`RemoteObjects`] over the object store, for playing clips whose local file is gone.
pub struct StoreObjects(pub Arc<dyn ObjectStore>);

fn clip_error(e: StoreError) -> ClipError {
    ClipError::Remote {
        transient: e.is_transient(),
        message: e.to_string(),
    }
}

impl RemoteObjects for StoreObjects {
    fn size(&self, key: &str) -> Result<Option<u64>, ClipError> {
        Ok(self.0.head(key).map_err(clip_error)?.map(|i| i.size_bytes))
    }

    fn read(&self, key: &str, start: u64, len: u64) -> Result<Box<dyn Read + Send>, ClipError> {
        if len == 0 {
            return Ok(Box::new(std::io::empty()));
        }
        let last = start.saturating_add(len - 1);
        self.0
            .get(key, Some((start, Some(last))))
            .map_err(clip_error)
    }

    fn presign(&self, key: &str, expiry_s: u32) -> Option<String> {
        self.0.presign_get(key, expiry_s).ok().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::queue::{Failpoint, QueueOptions, RecoveredSegment};

    fn meta(id: &str) -> SessionMeta {
        SessionMeta {
            session_id: id.into(),
            user_id: "u".into(),
            username: "alice".into(),
            image_friendly_name: "desk".into(),
            protocol: "vnc".into(),
            client_addr: "127.0.0.1".into(),
            started_ms: 10,
            target: "desk-1:5900".into(),
        }
    }

    /// The queue id of the session `m` names (what `open_session` returned).
    fn id_of(sink: &QueueSink, m: &SessionMeta) -> u64 {
        sink.session_id(m).unwrap()
    }

    /// A sink over a fresh queue at clock 50 ms (the tempdir must outlive the queue).
    fn rig() -> (tempfile::TempDir, Arc<ManualClock>, Arc<Queue>, QueueSink) {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(50));
        let queue = Arc::new(Queue::open(&QueueOptions::new(dir.path()), clock.clone()).unwrap());
        let status = StatusBoard::new(clock.clone(), 0, 1);
        let sink = QueueSink::new(queue.clone(), Arc::new(AdmissionState::new()), status);
        (dir, clock, queue, sink)
    }

    #[test]
    fn a_segment_the_queue_refused_is_registered_at_close_or_left_for_recovery() {
        let (_dir, _clock, queue, sink) = rig();
        // Session 1: the registration fails once, the retry at close succeeds.
        let m = meta("s-1");
        sink.open_session(&m).unwrap();
        queue.set_failpoint(Some(Failpoint::AfterSegmentWrite));
        assert!(
            sink.segment_sealed(id_of(&sink, &m), &m, 0, Path::new("/d/s-1/000000.guac"), 9)
                .is_err()
        );
        let id = queue.session_by_external("s-1").unwrap().unwrap().id;
        assert!(queue.segment_at(id, 0).unwrap().is_none(), "not registered");
        sink.session_closed(&m, EndReason::UserDisconnect);
        let seg = queue
            .segment_at(id, 0)
            .unwrap()
            .expect("registered at close");
        assert_eq!(seg.bytes, 9);
        let session = queue.session(id).unwrap().unwrap();
        assert_eq!(session.state, SessionState::Closed);
        // Session 2: the queue still refuses at close: the session is left open-ended, for
        // start-up recovery to pick up its file.
        let m = meta("s-2");
        sink.open_session(&m).unwrap();
        queue.set_failpoint(Some(Failpoint::AfterSegmentWrite));
        assert!(
            sink.segment_sealed(id_of(&sink, &m), &m, 0, Path::new("/d/s-2/000000.guac"), 7)
                .is_err()
        );
        queue.set_failpoint(Some(Failpoint::AfterSegmentWrite));
        sink.session_closed(&m, EndReason::UserDisconnect);
        let id = queue.session_by_external("s-2").unwrap().unwrap().id;
        assert!(queue.segment_at(id, 0).unwrap().is_none());
        let session = queue.session(id).unwrap().unwrap();
        assert_eq!(
            (session.state, session.end_ms),
            (SessionState::Interrupted, None)
        );
        let open = queue.sessions_left_open().unwrap();
        assert!(open.iter().any(|s| s.id == id), "recovery will find it");
    }

    #[test]
    fn a_session_that_never_started_is_forgotten_and_audited_but_a_reconnect_is_kept() {
        use crate::queue::AuditFilter;
        let (_dir, _clock, queue, sink) = rig();
        // Opened, then guacd could not be reached: no trace but the audit entry.
        let m = meta("s-1");
        sink.open_session(&m).unwrap();
        sink.not_started(&m, "guacd unavailable (connection refused)");
        assert!(queue.session_by_external("s-1").unwrap().is_none());
        assert!(queue.sessions_left_open().unwrap().is_empty());
        assert_eq!(
            queue.counts().unwrap().sessions,
            crate::queue::SessionCounts::default(),
            "nothing left"
        );
        // A reconnect of a session with footage keeps it all.
        let m = meta("s-2");
        sink.open_session(&m).unwrap();
        sink.segment_sealed(id_of(&sink, &m), &m, 0, Path::new("/d/s-2/000000.guac"), 9)
            .unwrap();
        sink.session_closed(&m, EndReason::UserDisconnect);
        assert_eq!(sink.open_session(&m).unwrap().next_index, 1);
        sink.not_started(&m, "guacd unavailable (timed out)");
        let kept = queue.session_by_external("s-2").unwrap().expect("kept");
        assert_eq!((kept.state, kept.segment_count), (SessionState::Closed, 1));
        let audit = queue
            .list_audit(&AuditFilter {
                action: Some(AuditAction::SessionRefused),
                limit: 10,
                ..AuditFilter::default()
            })
            .unwrap();
        let messages: Vec<&str> = audit.items.iter().map(|a| a.message.as_str()).collect();
        assert_eq!(messages.len(), 2, "{messages:?}");
        assert!(messages[0].contains("s-2") && messages[0].contains("timed out"));
        assert!(messages[1].contains("s-1") && messages[1].contains("not started"));
    }

    #[test]
    fn the_end_reason_is_stored_and_a_session_with_nothing_drawn_is_forgotten_and_audited() {
        use crate::queue::AuditFilter;
        let (_dir, _clock, queue, sink) = rig();
        let m = meta("s-1");
        sink.open_session(&m).unwrap();
        sink.segment_sealed(id_of(&sink, &m), &m, 0, Path::new("/d/s-1/000000.guac"), 9)
            .unwrap();
        sink.session_closed(&m, EndReason::GuacdGone);
        let s = queue.session_by_external("s-1").unwrap().unwrap();
        assert_eq!(
            (s.state, s.end_reason),
            (SessionState::Closed, Some(EndReason::GuacdGone))
        );
        // A failed login: opened, nothing sealed, closed: no session left, one audit entry.
        let m = meta("s-2");
        sink.open_session(&m).unwrap();
        sink.session_closed(&m, EndReason::ServerEnded);
        assert!(queue.session_by_external("s-2").unwrap().is_none());
        let audit = queue
            .list_audit(&AuditFilter {
                action: Some(AuditAction::SessionEmpty),
                limit: 10,
                ..AuditFilter::default()
            })
            .unwrap();
        assert_eq!(audit.items.len(), 1);
        assert!(audit.items[0].message.contains("s-2"));
        assert!(audit.items[0].message.contains("remote desktop"));
    }

    #[test]
    fn a_rejoin_is_audited_on_the_live_session() {
        use crate::queue::AuditFilter;
        let (_dir, _clock, queue, sink) = rig();
        let m = meta("s-1.2");
        sink.rejoined(&m, &Rejoin::Linked { live: "s-1".into() });
        sink.rejoined(&meta("s-1"), &Rejoin::Continued { waited_ms: 40 });
        let audit = queue
            .list_audit(&AuditFilter {
                action: Some(AuditAction::SessionReconnected),
                limit: 10,
                ..AuditFilter::default()
            })
            .unwrap();
        assert_eq!(audit.items.len(), 2);
        for a in &audit.items {
            assert_eq!(
                a.target,
                AuditTarget::Session {
                    session_id: "s-1".into()
                }
            );
        }
    }

    #[test]
    fn a_reconnect_after_crash_recovery_continues_past_the_recovered_files_and_closes() {
        let (_dir, clock, queue, sink) = rig();
        let m = meta("s-1");
        assert_eq!(sink.open_session(&m).unwrap().next_index, 0);
        sink.segment_sealed(id_of(&sink, &m), &m, 0, Path::new("/d/s-1/000000.guac"), 9)
            .unwrap();
        // The daemon died while segment 1 was being written; start-up recovery registered it.
        let id = queue.session_by_external("s-1").unwrap().unwrap().id;
        let found = RecoveredSegment {
            index: 1,
            path: "/d/s-1/000001.guac".into(),
            bytes: 5,
            first_sync_ms: None,
            last_sync_ms: None,
            quarantine: None,
        };
        queue.end_interrupted_session(id, 60, &[found]).unwrap();
        // The reconnect writes after it (never over it) and closes the session for real.
        assert_eq!(sink.open_session(&m).unwrap().next_index, 2);
        clock.set_ms(90);
        sink.session_closed(&m, EndReason::UserDisconnect);
        let session = queue.session(id).unwrap().unwrap();
        assert_eq!(session.state, SessionState::Closed);
        assert_eq!(session.end_ms, Some(90));
    }
}
