//! Start-up recovery of recorded sessions a crash left open: which sessions need it, and the
//! one transaction that registers what reached their disk and ends them as `Interrupted`.
//!
//! The file work (cutting each segment back to its last complete frame, fsync) is the
//! daemon's, in `crate::ingest::recover`; this file only records its result. Work items
//! (segments left `Encoding`, clips left `Uploading`) are recovered by [`Queue::recover`] in
//! `work.rs`.
//!
//! Idempotent by construction: segments are registered on their natural key `(session, index)`
//! and the session's end is written in the same transaction, so a crash anywhere during
//! recovery leaves either nothing or everything, and the next start redoes or skips it.

use std::path::PathBuf;

use super::records::*;
use super::store::{load_segment, load_session, put_session};
use super::transition::{Machine, transition_in};
use super::{Entity, Queue, QueueError, check_path};

/// What start-up recovery found on disk for one segment of a session left open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveredSegment {
    /// Position within the session.
    pub index: u32,
    /// The segment file, already cut back to its last complete frame (or, when it has none,
    /// its last complete instruction) and fsynced.
    pub path: PathBuf,
    /// Its size after the cut.
    pub bytes: u64,
    /// Timestamp of its first complete `sync`, if any.
    pub first_sync_ms: Option<u64>,
    /// Timestamp of its last complete `sync`, if any.
    pub last_sync_ms: Option<u64>,
    /// `None`: sealed, encoded like any other. `Some(reason)`: it holds no frame, so it is
    /// parked as `Quarantined` (audited) instead of failing an encode.
    pub quarantine: Option<String>,
}

/// What [`Queue::end_interrupted_session`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InterruptedEnd {
    /// Segments registered now (they were on disk only).
    pub registered: u32,
    /// Segments that were registered `Writing` and are now sealed or quarantined.
    pub sealed: u32,
    /// Of the two above, how many went to `Quarantined` (no frame).
    pub quarantined: u32,
    /// The session had already been ended by an earlier recovery: nothing changed.
    pub already_ended: bool,
}

/// Whether `session` is one a previous run left open: `Live`, or `Interrupted` without an end
/// (marked by a version that did not recover sessions yet).
fn left_open(session: &Session) -> bool {
    match session.state {
        SessionState::Live => true,
        SessionState::Interrupted => session.end_ms.is_none(),
        SessionState::Closed => false,
    }
}

impl Queue {
    /// Sessions a previous run left open (see [`Queue::end_interrupted_session`]), oldest
    /// first. Call only at start-up, before the tap and the spool import run: later, `Live`
    /// sessions are really live.
    ///
    /// # Errors
    /// LMDB errors (unreadable records are logged and skipped).
    pub fn sessions_left_open(&self) -> Result<Vec<Session>, QueueError> {
        self.read(|r, d| {
            let mut out = Vec::new();
            for state in [SessionState::Live, SessionState::Interrupted] {
                for id in Queue::ids_in_state(r, d.session_by_state, state.tag())? {
                    match d.sessions.get(r, &id) {
                        Ok(Some(s)) => {
                            let s = s.into_session();
                            if left_open(&s) {
                                out.push(s);
                            }
                        }
                        Ok(None) => log::error!("queue dangling session state index id={id}"),
                        Err(e) => {
                            log::error!("queue skipping unreadable session id={id} error={e}")
                        }
                    }
                }
            }
            out.sort_by_key(|s| s.id);
            Ok(out)
        })
    }

    /// Ends a session a crash left open, in one transaction: registers each of `segments` not
    /// registered yet (`Sealed`, or `Quarantined` with an audit entry when it holds no frame),
    /// seals those left `Writing`, keeps the session's segment count past the highest index
    /// (so a reconnect never reuses a file's index), and moves the session to `Interrupted`
    /// with `end_ms`. Segments already registered in any other state are left alone.
    ///
    /// Idempotent: a session already ended this way is left unchanged (`already_ended`).
    ///
    /// # Errors
    /// [`QueueError::NotFound`]; [`QueueError::StaleState`] if the session is `Closed`;
    /// [`QueueError::TooLarge`] for an over-long path; [`QueueError::Full`]; LMDB errors.
    pub fn end_interrupted_session(
        &self,
        session: u64,
        end_ms: u64,
        segments: &[RecoveredSegment],
    ) -> Result<InterruptedEnd, QueueError> {
        for seg in segments {
            check_path("segment path", &seg.path)?;
        }
        let now_ms = self.now_ms();
        self.write(|w, d| {
            let old = load_session(w, d, session)?;
            if !left_open(&old) {
                if old.state == SessionState::Interrupted {
                    return Ok(InterruptedEnd {
                        already_ended: true,
                        ..InterruptedEnd::default()
                    });
                }
                return Err(QueueError::StaleState {
                    entity: Entity::Session,
                    id: session,
                    expected: SessionState::Live.name(),
                    actual: old.state.name(),
                });
            }
            let mut report = InterruptedEnd::default();
            for seg in segments {
                Self::recover_segment_in(w, d, session, seg, now_ms, &mut report)?;
            }
            // Registration counted the new segments; holes (an empty file removed) must not
            // let a reconnect start below a segment that exists.
            let before = load_session(w, d, session)?;
            let past_last = segments.iter().map(|s| s.index.saturating_add(1)).max();
            let mut counted = before.clone();
            counted.segment_count = counted.segment_count.max(past_last.unwrap_or(0));
            let end = SessionEnd {
                end_ms: Some(end_ms.max(before.start_ms)),
                reason: Some(EndReason::Crash),
            };
            if counted.state == SessionState::Live {
                put_session(w, d, Some(&before), &counted)?;
                let to = SessionState::Interrupted;
                transition_in::<Session>(w, d, session, &SessionState::Live, to, &end, now_ms)?;
            } else {
                // Already `Interrupted` (an older version's start-up): only the end is new.
                counted.end_ms = end.end_ms;
                // A reason given when it was left open (a refused segment) stays.
                counted.end_reason = counted.end_reason.or(end.reason);
                put_session(w, d, Some(&before), &counted)?;
            }
            self.hit(super::Failpoint::AfterTransitionWrite)?;
            Ok(report)
        })
    }

    fn recover_segment_in(
        w: &mut heed::RwTxn,
        d: &super::Dbs,
        session: u64,
        seg: &RecoveredSegment,
        now_ms: u64,
        report: &mut InterruptedEnd,
    ) -> Result<(), QueueError> {
        let position = (session, u64::from(seg.index));
        let to = Segment::clamp(match &seg.quarantine {
            None => SegmentState::Sealed,
            Some(reason) => SegmentState::Quarantined {
                reason: reason.clone(),
            },
        });
        let patch = SegmentPatch {
            bytes: Some(seg.bytes),
            first_sync_ms: seg.first_sync_ms,
            last_sync_ms: seg.last_sync_ms,
            ..SegmentPatch::default()
        };
        let id = match d.segment_by_position.get(w, &position)? {
            Some(id) => {
                if load_segment(w, d, id)?.state.kind() != SegmentStateKind::Writing {
                    return Ok(());
                }
                let from = SegmentStateKind::Writing;
                transition_in::<Segment>(w, d, id, &from, to, &patch, now_ms)?;
                report.sealed += 1;
                id
            }
            None => {
                let new = NewSegment {
                    session,
                    index: seg.index,
                    path: seg.path.clone(),
                    bytes: seg.bytes,
                    first_sync_ms: seg.first_sync_ms,
                    last_sync_ms: seg.last_sync_ms,
                    sealed: true,
                };
                let id = Self::register_segment_in(w, d, &new, now_ms)?;
                if seg.quarantine.is_some() {
                    let from = SegmentStateKind::Sealed;
                    transition_in::<Segment>(w, d, id, &from, to, &patch, now_ms)?;
                }
                report.registered += 1;
                id
            }
        };
        if seg.quarantine.is_some() {
            report.quarantined += 1;
        }
        log::info!(
            "queue segment recovered session={session} index={} id={id} bytes={} quarantined={}",
            seg.index,
            seg.bytes,
            seg.quarantine.is_some()
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::clock::ManualClock;
    use crate::queue::{Failpoint, QueueOptions};

    fn queue(dir: &std::path::Path) -> Queue {
        Queue::open(&QueueOptions::new(dir), Arc::new(ManualClock::new(1_000))).unwrap()
    }

    fn session(q: &Queue, name: &str) -> u64 {
        q.register_session(&NewSession {
            session_id: name.into(),
            user_id: "u".into(),
            username: "u".into(),
            image_friendly_name: "i".into(),
            protocol: "vnc".into(),
            start_ms: 500,
            target: String::new(),
            client_addr: String::new(),
        })
        .unwrap()
    }

    fn all_audit() -> crate::queue::AuditFilter {
        crate::queue::AuditFilter {
            limit: 100,
            ..Default::default()
        }
    }

    fn found(index: u32, bytes: u64, quarantine: Option<&str>) -> RecoveredSegment {
        RecoveredSegment {
            index,
            path: PathBuf::from(format!("/d/s/{index:06}.guac")),
            bytes,
            first_sync_ms: Some(10),
            last_sync_ms: Some(20),
            quarantine: quarantine.map(str::to_owned),
        }
    }

    #[test]
    fn ends_the_session_registers_its_files_and_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let q = queue(dir.path());
        let s = session(&q, "s");
        let closed = session(&q, "closed");
        q.transition_session(closed, SessionState::Live, SessionState::Closed, Some(9))
            .unwrap();
        // Segment 0 was sealed by the tap before the crash; 1 and 2 are on disk only (2 holds
        // no frame), 3 was empty and removed: the count must still pass 2.
        q.register_segment(&NewSegment {
            session: s,
            index: 0,
            path: "/d/s/000000.guac".into(),
            bytes: 100,
            first_sync_ms: None,
            last_sync_ms: None,
            sealed: true,
        })
        .unwrap();
        assert_eq!(
            q.sessions_left_open()
                .unwrap()
                .iter()
                .map(|s| s.id)
                .collect::<Vec<_>>(),
            vec![s]
        );
        let files = [
            found(0, 100, None),
            found(1, 70, None),
            found(2, 5, Some("no frame")),
        ];
        // A crash inside the transaction leaves nothing behind.
        q.set_failpoint(Some(Failpoint::AfterTransitionWrite));
        assert!(q.end_interrupted_session(s, 2_000, &files).is_err());
        assert_eq!(q.session(s).unwrap().unwrap().state, SessionState::Live);
        assert!(q.segment_at(s, 1).unwrap().is_none());
        let audit_before = q.list_audit(&all_audit()).unwrap().items.len();

        let done = q.end_interrupted_session(s, 2_000, &files).unwrap();
        assert_eq!(
            done,
            InterruptedEnd {
                registered: 2,
                sealed: 0,
                quarantined: 1,
                already_ended: false
            }
        );
        let ended = q.session(s).unwrap().unwrap();
        assert_eq!(ended.state, SessionState::Interrupted);
        assert_eq!(ended.end_ms, Some(2_000));
        assert_eq!(ended.segment_count, 3);
        let segs = q.segments_of_session(s).unwrap();
        let kinds: Vec<_> = segs
            .iter()
            .map(|g| (g.index, g.state.kind(), g.bytes))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (0, SegmentStateKind::Sealed, 100),
                (1, SegmentStateKind::Sealed, 70),
                (2, SegmentStateKind::Quarantined, 5)
            ]
        );
        assert_eq!(segs[1].last_sync_ms, Some(20));
        let audit = q.list_audit(&all_audit()).unwrap().items;
        assert_eq!(audit.len(), audit_before + 1, "the quarantine is audited");
        assert!(q.sessions_left_open().unwrap().is_empty());

        // Again: nothing changes, nothing is duplicated.
        let again = q.end_interrupted_session(s, 3_000, &files).unwrap();
        assert!(again.already_ended);
        assert_eq!(q.session(s).unwrap().unwrap(), ended);
        assert_eq!(q.segments_of_session(s).unwrap(), segs);
        assert_eq!(q.list_audit(&all_audit()).unwrap().items, audit);
        // A closed session is not ours to end.
        assert!(matches!(
            q.end_interrupted_session(closed, 2_000, &[]),
            Err(QueueError::StaleState { .. })
        ));
    }

    #[test]
    fn a_writing_segment_is_sealed_and_an_old_style_interrupted_session_is_ended() {
        let dir = tempfile::tempdir().unwrap();
        let q = queue(dir.path());
        let s = session(&q, "s");
        q.register_segment(&NewSegment {
            session: s,
            index: 0,
            path: "/d/s/000000.guac".into(),
            bytes: 0,
            first_sync_ms: None,
            last_sync_ms: None,
            sealed: false,
        })
        .unwrap();
        // What versions without session recovery did at start-up: Interrupted, no end.
        q.transition_session(s, SessionState::Live, SessionState::Interrupted, None)
            .unwrap();
        assert_eq!(q.sessions_left_open().unwrap().len(), 1);
        let done = q
            .end_interrupted_session(s, 100, &[found(0, 42, None)])
            .unwrap();
        assert_eq!(done.sealed, 1);
        let seg = q.segment_at(s, 0).unwrap().unwrap();
        assert_eq!((seg.state, seg.bytes), (SegmentState::Sealed, 42));
        let ended = q.session(s).unwrap().unwrap();
        // An end before the start (a clock step) is clamped to the start.
        assert_eq!(ended.end_ms, Some(500));
        assert_eq!(ended.segment_count, 1);
        assert!(q.sessions_left_open().unwrap().is_empty());
    }
}
