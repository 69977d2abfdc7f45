//! Registration, transitions, work pulling and start-up recovery: everything that moves a
//! session, segment or clip through its state machine. The checked state change itself, shared
//! by all three, is in `transition.rs`, and the load/put of each record with its indexes is in
//! `store.rs`; this file holds the public entry points and sits on top of both.
//!
//! Every public function here is one write transaction: the record, its indexes and (when the
//! change is auditable) the audit entry commit together or not at all. Registration is
//! idempotent on the natural key (external session id, (session, index), (segment, index)) so
//! a crash between "file written" and "record committed" can be replayed without duplicates.

use heed::RwTxn;

use super::records::*;
use super::store::{
    append_audit, delete_session, load_clip, load_segment, load_session, predecessor_settled,
};
use super::store::{put_clip, put_segment, put_session};
use super::transition::transition_in;
use super::{Dbs, Failpoint, Queue, QueueError, check_len, check_path, next_id};
use crate::limits;

/// What [`Queue::recover`] did and found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Segments moved back from `Encoding` to `Sealed`.
    pub segments_requeued: u64,
    /// Clips moved back from `Uploading` to `Ready`.
    pub clips_requeued: u64,
    /// Segments still `Writing`: their tap died with the process; the daemon decides (seal
    /// with the size on disk, or quarantine).
    pub segments_writing: u64,
    /// Sessions still `Live`: the daemon marks them `Interrupted`.
    pub sessions_live: u64,
    /// Interrupted records that could not be decoded (logged and left as they are).
    pub unreadable: u64,
}

impl Queue {
    // ---- sessions ----

    /// Registers a session; idempotent on `session_id` (a second call returns the first id and
    /// changes nothing). New sessions start `Live`.
    ///
    /// # Errors
    /// [`QueueError::TooLarge`] for an over-long field; [`QueueError::Full`]; LMDB errors.
    pub fn register_session(&self, new: &NewSession) -> Result<u64, QueueError> {
        let name_max = limits::QUEUE_NAME_BYTES_MAX;
        check_len("session_id", &new.session_id, name_max)?;
        check_len("user_id", &new.user_id, name_max)?;
        check_len("username", &new.username, name_max)?;
        check_len("image_friendly_name", &new.image_friendly_name, name_max)?;
        check_len("protocol", &new.protocol, name_max)?;
        check_len("target", &new.target, name_max)?;
        check_len("client_addr", &new.client_addr, name_max)?;
        self.write(|w, d| {
            if let Some(id) = d.session_by_external.get(w, &new.session_id)? {
                return Ok(id);
            }
            let id = next_id(w, d, "next-session-id")?;
            let session = Session {
                id,
                session_id: new.session_id.clone(),
                user_id: new.user_id.clone(),
                username: new.username.clone(),
                image_friendly_name: new.image_friendly_name.clone(),
                protocol: new.protocol.clone(),
                start_ms: new.start_ms,
                end_ms: None,
                state: SessionState::Live,
                segment_count: 0,
                end_reason: None,
                target: new.target.clone(),
                client_addr: new.client_addr.clone(),
            };
            put_session(w, d, None, &session)?;
            Ok(id)
        })
    }

    /// Forgets a session that never started: removes it, with its indexes, when it is `Live`
    /// with no segment (a session the tap registered, then could not connect), and appends
    /// `audit` in the same transaction either way. A session with segments (a reconnect)
    /// is kept as it is. Returns whether the session was removed.
    ///
    /// # Errors
    /// [`QueueError::NotFound`]; [`QueueError::Full`]; LMDB errors.
    pub fn forget_unstarted_session(&self, id: u64, audit: &NewAudit) -> Result<bool, QueueError> {
        let now_ms = self.now_ms();
        self.write(|w, d| {
            let session = load_session(w, d, id)?;
            let unstarted = session.state == SessionState::Live && session.segment_count == 0;
            if unstarted {
                delete_session(w, d, &session)?;
            }
            append_audit(w, d, now_ms, audit)?;
            Ok(unstarted)
        })
    }

    /// Makes a `Closed` session `Live` again (a reconnect with its id continues it), its end
    /// and end reason cleared, and appends `audit` in the same transaction. Returns the
    /// session as it was before (its end, to restore should the reconnect not start).
    ///
    /// # Errors
    /// [`QueueError::NotFound`]; [`QueueError::StaleState`] if it is not `Closed`;
    /// [`QueueError::Full`]; LMDB errors.
    pub fn reopen_session(&self, id: u64, audit: &NewAudit) -> Result<Session, QueueError> {
        let now_ms = self.now_ms();
        self.write(|w, d| {
            let before = load_session(w, d, id)?;
            transition_in::<Session>(
                w,
                d,
                id,
                &SessionState::Closed,
                SessionState::Live,
                &SessionEnd::default(),
                now_ms,
            )?;
            append_audit(w, d, now_ms, audit)?;
            Ok(before)
        })
    }

    /// Moves a session from `from` to `to`, setting `end_ms` when given.
    ///
    /// # Errors
    /// [`QueueError::NotFound`]; [`QueueError::StaleState`] if the session is not in `from`;
    /// [`QueueError::IllegalTransition`] if `from -> to` is not an edge; [`QueueError::Full`];
    /// LMDB errors.
    pub fn transition_session(
        &self,
        id: u64,
        from: SessionState,
        to: SessionState,
        end_ms: Option<u64>,
    ) -> Result<Session, QueueError> {
        let end = SessionEnd {
            end_ms,
            reason: None,
        };
        self.transition(id, from, to, &end)
    }

    /// Ends a session: moves it from `from` to `to` (`Closed`, or `Interrupted`) with its end
    /// time and how it ended, in one write.
    ///
    /// # Errors
    /// As [`Self::transition_session`].
    pub fn end_session(
        &self,
        id: u64,
        from: SessionState,
        to: SessionState,
        end_ms: Option<u64>,
        reason: EndReason,
    ) -> Result<Session, QueueError> {
        let end = SessionEnd {
            end_ms,
            reason: Some(reason),
        };
        self.transition(id, from, to, &end)
    }

    // ---- segments ----

    /// Registers a segment; idempotent on `(session, index)`: if it exists, returns its id and
    /// changes nothing. Starts `Writing`, or `Sealed` when `new.sealed`.
    ///
    /// # Errors
    /// [`QueueError::NotFound`] if the session does not exist; [`QueueError::TooLarge`] for an
    /// over-long path; [`QueueError::Full`]; LMDB errors.
    pub fn register_segment(&self, new: &NewSegment) -> Result<u64, QueueError> {
        check_path("segment path", &new.path)?;
        let now_ms = self.now_ms();
        self.write(|w, d| {
            let id = Self::register_segment_in(w, d, new, now_ms)?;
            self.hit(Failpoint::AfterSegmentWrite)?;
            Ok(id)
        })
    }

    /// Registers many segments in one transaction (one fsync): for the spool import of a
    /// backlog. Same idempotence as [`Queue::register_segment`]; returns ids in input order.
    ///
    /// # Errors
    /// As [`Queue::register_segment`]; nothing is registered when any one fails.
    pub fn register_segments(&self, batch: &[NewSegment]) -> Result<Vec<u64>, QueueError> {
        for new in batch {
            check_path("segment path", &new.path)?;
        }
        let now_ms = self.now_ms();
        self.write(|w, d| {
            let mut ids = Vec::with_capacity(batch.len());
            for new in batch {
                ids.push(Self::register_segment_in(w, d, new, now_ms)?);
            }
            self.hit(Failpoint::AfterSegmentWrite)?;
            Ok(ids)
        })
    }

    pub(super) fn register_segment_in(
        w: &mut RwTxn,
        d: &Dbs,
        new: &NewSegment,
        now_ms: u64,
    ) -> Result<u64, QueueError> {
        if let Some(id) = d
            .segment_by_position
            .get(w, &(new.session, u64::from(new.index)))?
        {
            return Ok(id);
        }
        let session = load_session(w, d, new.session)?;
        let id = next_id(w, d, "next-segment-id")?;
        let segment = Segment {
            id,
            session: new.session,
            index: new.index,
            path: new.path.clone(),
            bytes: new.bytes,
            first_sync_ms: new.first_sync_ms,
            last_sync_ms: new.last_sync_ms,
            state: if new.sealed {
                SegmentState::Sealed
            } else {
                SegmentState::Writing
            },
            attempts: 0,
            created_ms: now_ms,
            updated_ms: now_ms,
        };
        put_segment(w, d, None, &segment)?;
        let mut counted = session.clone();
        counted.segment_count = counted.segment_count.saturating_add(1);
        put_session(w, d, Some(&session), &counted)?;
        Ok(id)
    }

    /// Moves a segment from `from` to `to`, applying `patch` in the same transaction; writes a
    /// `QuarantinedSegment` audit entry when `to` is `Quarantined`.
    ///
    /// # Errors
    /// [`QueueError::NotFound`]; [`QueueError::StaleState`] if the segment is not in `from`
    /// (another worker moved it); [`QueueError::IllegalTransition`]; [`QueueError::TooLarge`]
    /// for an over-long path; [`QueueError::Full`]; LMDB errors.
    pub fn transition_segment(
        &self,
        id: u64,
        from: SegmentStateKind,
        to: SegmentState,
        patch: &SegmentPatch,
    ) -> Result<Segment, QueueError> {
        self.transition(id, from, to, patch)
    }

    /// Takes the oldest `Sealed` segment whose predecessor in the same session is settled
    /// (`Encoded`, or `Quarantined`, or absent) and moves it to `Encoding` (attempts + 1), in
    /// one transaction, so two encoders never get the same segment. Segment N+1 waits for N
    /// because its display starts from N's end state. An encoder that gives up on a segment
    /// must quarantine it, or its successors wait forever.
    ///
    /// Cost: O(log n): the first entry of a derived index of ready segments, kept in step by
    /// every segment write and rebuilt by [`Queue::recover`].
    ///
    /// # Errors
    /// [`QueueError::Full`]; LMDB errors; [`QueueError::Corrupt`] if a record cannot be read.
    pub fn next_segment_to_encode(&self) -> Result<Option<Segment>, QueueError> {
        let now_ms = self.now_ms();
        self.write(|w, d| {
            let Some(id) = Self::first_encodable(w, d)? else {
                return Ok(None);
            };
            let patch = SegmentPatch::default();
            let seg = transition_in::<Segment>(
                w,
                d,
                id,
                &SegmentStateKind::Sealed,
                SegmentState::Encoding,
                &patch,
                now_ms,
            )?;
            self.hit(Failpoint::AfterTransitionWrite)?;
            Ok(Some(seg))
        })
    }

    /// The oldest ready segment (see [`db_name::SEGMENT_READY`](super::db_name::SEGMENT_READY)).
    /// Unreadable entries are logged and skipped.
    fn first_encodable(w: &RwTxn, d: &Dbs) -> Result<Option<u64>, QueueError> {
        for entry in d.segment_ready.iter(w)? {
            let (id, ()) = entry?;
            match load_segment(w, d, id) {
                Ok(seg) => {
                    // The ready index is derived; a mismatch is a bug, but one that recover()
                    // heals, so log it instead of handing out the wrong work.
                    if seg.state.kind() == SegmentStateKind::Sealed {
                        return Ok(Some(id));
                    }
                    log::error!(
                        "queue ready index out of step id={id} state={}",
                        seg.state.kind().name()
                    );
                }
                Err(e) if e.is_unreadable() => {
                    log::error!("queue skipping unreadable segment id={id} error={e}");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// Rebuilds the derived ready index from the `Sealed` state index.
    fn rebuild_ready(w: &mut RwTxn, d: &Dbs) -> Result<(), QueueError> {
        d.segment_ready.clear(w)?;
        let sealed = Self::ids_in_state(w, d.segment_by_state, SegmentStateKind::Sealed as u8)?;
        for id in sealed {
            match load_segment(w, d, id) {
                Ok(seg) => {
                    if predecessor_settled(w, d, seg.session, seg.index)? {
                        d.segment_ready.put(w, &id, &())?;
                    }
                }
                Err(e) if e.is_unreadable() => {
                    log::error!("queue skipping unreadable segment id={id} error={e}");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    // ---- clips ----

    /// Registers a clip (state `Ready`); idempotent on `(segment, index)`.
    ///
    /// # Errors
    /// [`QueueError::NotFound`] if the segment does not exist; [`QueueError::TooLarge`];
    /// [`QueueError::Full`]; LMDB errors.
    pub fn register_clip(&self, new: &NewClip) -> Result<u64, QueueError> {
        Self::check_clip(new)?;
        let now_ms = self.now_ms();
        self.write(|w, d| {
            let id = Self::register_clip_in(w, d, new, now_ms)?;
            self.hit(Failpoint::AfterClipWrite)?;
            Ok(id)
        })
    }

    /// Registers the clips of a segment and moves it `Encoding -> Encoded`, in one
    /// transaction: either the segment is done with all its clips, or (after a crash) it is
    /// still `Encoding` and recovery redoes it. Clips already registered are kept (idempotent).
    /// Returns the clip ids in the order given.
    ///
    /// # Errors
    /// [`QueueError::StaleState`] if the segment is not `Encoding`; [`QueueError::NotFound`];
    /// [`QueueError::TooLarge`]; [`QueueError::Full`]; LMDB errors.
    pub fn finish_encoding(&self, segment: u64, clips: &[NewClip]) -> Result<Vec<u64>, QueueError> {
        for clip in clips {
            assert_eq!(
                clip.segment, segment,
                "finish_encoding: clip of another segment"
            );
            Self::check_clip(clip)?;
        }
        let now_ms = self.now_ms();
        self.write(|w, d| {
            let mut ids = Vec::with_capacity(clips.len());
            for clip in clips {
                let id = Self::register_clip_in(w, d, clip, now_ms)?;
                if self.ocr_wanted() {
                    let filed = super::store::load_clip(w, d, id)?;
                    super::ocr::mark_ocr(w, d, &filed, now_ms)?;
                }
                ids.push(id);
            }
            self.hit(Failpoint::AfterClipWrite)?;
            let patch = SegmentPatch::default();
            transition_in::<Segment>(
                w,
                d,
                segment,
                &SegmentStateKind::Encoding,
                SegmentState::Encoded,
                &patch,
                now_ms,
            )?;
            self.hit(Failpoint::AfterTransitionWrite)?;
            Ok(ids)
        })
    }

    fn check_clip(new: &NewClip) -> Result<(), QueueError> {
        check_path("clip path", &new.path)?;
        if let Some(thumb) = &new.thumb_path {
            check_path("thumb path", thumb)?;
        }
        if let Some(events) = &new.events {
            check_path("events path", &events.path)?;
            check_len(
                "events sha256",
                &events.sha256,
                limits::QUEUE_NAME_BYTES_MAX,
            )?;
        }
        check_len("sha256", &new.sha256, limits::QUEUE_NAME_BYTES_MAX)?;
        if let Some(key) = &new.object_key {
            check_len("object key", key, limits::QUEUE_PATH_BYTES_MAX)?;
        }
        Ok(())
    }

    fn register_clip_in(
        w: &mut RwTxn,
        d: &Dbs,
        new: &NewClip,
        now_ms: u64,
    ) -> Result<u64, QueueError> {
        let position = (new.segment, u64::from(new.index));
        if let Some(id) = d.clip_by_position.get(w, &position)? {
            return Ok(id);
        }
        let segment = load_segment(w, d, new.segment)?;
        let id = next_id(w, d, "next-clip-id")?;
        let clip = Clip {
            id,
            segment: new.segment,
            session: segment.session,
            index: new.index,
            path: new.path.clone(),
            thumb_path: new.thumb_path.clone(),
            bytes: new.bytes,
            sha256: new.sha256.clone(),
            duration_ms: new.duration_ms,
            start_ms: new.start_ms,
            end_ms: new.end_ms,
            object_key: new.object_key.clone(),
            state: ClipState::Ready,
            attempts: 0,
            created_ms: now_ms,
            updated_ms: now_ms,
            events: new.events.clone(),
        };
        put_clip(w, d, None, &clip)?;
        Ok(id)
    }

    /// Moves a clip from `from` to `to`, applying `patch`; writes a `ClipExpired` audit entry
    /// when `to` is `Expired`.
    ///
    /// # Errors
    /// [`QueueError::NotFound`]; [`QueueError::StaleState`] if the clip is not in `from`;
    /// [`QueueError::IllegalTransition`]; [`QueueError::TooLarge`]; [`QueueError::Full`];
    /// LMDB errors.
    pub fn transition_clip(
        &self,
        id: u64,
        from: ClipStateKind,
        to: ClipState,
        patch: &ClipPatch,
    ) -> Result<Clip, QueueError> {
        self.transition(id, from, to, patch)
    }

    /// Takes the clip due first (`Ready` clips in registration order, then transient failures
    /// whose `next_attempt_ms <= now_ms`, earliest first) and moves it to `Uploading`
    /// (attempts + 1) in one transaction. O(log n) through the due index.
    ///
    /// # Errors
    /// [`QueueError::Full`]; LMDB errors; [`QueueError::Corrupt`].
    pub fn next_clip_to_upload(&self, now_ms: u64) -> Result<Option<Clip>, QueueError> {
        let stamp_ms = self.now_ms();
        self.write(|w, d| {
            // Skip (and log) unreadable clips so one bad record cannot stall every upload.
            let mut due = None;
            for entry in d.clip_due.range(w, &((0, 0)..=(now_ms, u64::MAX)))? {
                let ((_, id), ()) = entry?;
                match load_clip(w, d, id) {
                    Ok(clip) => {
                        due = Some(clip);
                        break;
                    }
                    Err(e) if e.is_unreadable() => {
                        log::error!("queue skipping unreadable clip id={id} error={e}");
                    }
                    Err(e) => return Err(e),
                }
            }
            let Some(old) = due else {
                return Ok(None);
            };
            let clip = transition_in::<Clip>(
                w,
                d,
                old.id,
                &old.state.kind(),
                ClipState::Uploading,
                &ClipPatch::default(),
                stamp_ms,
            )?;
            self.hit(Failpoint::AfterTransitionWrite)?;
            Ok(Some(clip))
        })
    }

    // ---- recovery ----

    /// Start-up recovery, in one transaction: segments left `Encoding` go back to `Sealed` and
    /// clips left `Uploading` go back to `Ready` (their work is redone; outputs are written to
    /// temporary files and renamed, so redoing is idempotent); the derived ready index is
    /// rebuilt. Also counts what the daemon must handle itself (`Writing` segments, `Live`
    /// sessions). Call once, before any worker starts.
    ///
    /// # Errors
    /// [`QueueError::Full`]; LMDB errors; [`QueueError::Corrupt`].
    pub fn recover(&self) -> Result<Recovery, QueueError> {
        let now_ms = self.now_ms();
        let report = self.write(|w, d| {
            let mut report = Recovery::default();
            let encoding =
                Self::ids_in_state(w, d.segment_by_state, SegmentStateKind::Encoding as u8)?;
            for id in encoding {
                let back = transition_in::<Segment>(
                    w,
                    d,
                    id,
                    &SegmentStateKind::Encoding,
                    SegmentState::Sealed,
                    &SegmentPatch::default(),
                    now_ms,
                );
                match back {
                    Ok(_) => report.segments_requeued += 1,
                    // Start-up must not fail on one bad record: log it, count it, go on.
                    Err(e) if e.is_unreadable() => {
                        log::error!("queue recovery skipping unreadable segment id={id} error={e}");
                        report.unreadable += 1;
                    }
                    Err(e) => return Err(e),
                }
            }
            let uploading = Self::ids_in_state(w, d.clip_by_state, ClipStateKind::Uploading as u8)?;
            for id in uploading {
                let back = transition_in::<Clip>(
                    w,
                    d,
                    id,
                    &ClipStateKind::Uploading,
                    ClipState::Ready,
                    &ClipPatch::default(),
                    now_ms,
                );
                match back {
                    Ok(_) => report.clips_requeued += 1,
                    Err(e) if e.is_unreadable() => {
                        log::error!("queue recovery skipping unreadable clip id={id} error={e}");
                        report.unreadable += 1;
                    }
                    Err(e) => return Err(e),
                }
            }
            Self::rebuild_ready(w, d)?;
            self.hit(Failpoint::AfterTransitionWrite)?;
            report.segments_writing =
                Self::count_tag(w, d.segment_by_state, SegmentStateKind::Writing as u8)?;
            report.sessions_live =
                Self::count_tag(w, d.session_by_state, SessionState::Live.tag())?;
            Ok(report)
        })?;
        log::info!(
            "queue recovered segments_requeued={} clips_requeued={} segments_writing={} \
             sessions_live={} unreadable={}",
            report.segments_requeued,
            report.clips_requeued,
            report.segments_writing,
            report.sessions_live,
            report.unreadable
        );
        Ok(report)
    }

    /// Ids under one tag of a state index, oldest first.
    pub(super) fn ids_in_state(
        txn: &heed::RoTxn,
        index: heed::Database<'static, super::codec::TagId, heed::types::Unit>,
        tag: u8,
    ) -> Result<Vec<u64>, QueueError> {
        let mut ids = Vec::new();
        for entry in index.range(txn, &((tag, 0)..=(tag, u64::MAX)))? {
            let ((_, id), ()) = entry?;
            ids.push(id);
        }
        Ok(ids)
    }

    /// Number of entries under one tag of a state index.
    pub(super) fn count_tag(
        txn: &heed::RoTxn,
        index: heed::Database<'static, super::codec::TagId, heed::types::Unit>,
        tag: u8,
    ) -> Result<u64, QueueError> {
        let range = index.range(txn, &((tag, 0)..=(tag, u64::MAX)))?;
        let mut n = 0;
        for entry in range.remap_types::<heed::types::DecodeIgnore, heed::types::DecodeIgnore>() {
            entry?;
            n += 1;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Arc;

    use super::*;
    use crate::clock::ManualClock;
    use crate::queue::QueueOptions;

    /// The ready index must always equal its definition: Sealed and predecessor settled.
    fn check_ready_invariant(q: &Queue) {
        q.read(|r, d| {
            let mut expected = Vec::new();
            for entry in d.segments.raw().iter(r)? {
                let (id, _) = entry?;
                let Some(SegmentRecord::V1(seg)) = d.segments.get(r, &id)? else {
                    unreachable!()
                };
                let pred_settled = match seg.index.checked_sub(1) {
                    None => true,
                    Some(p) => match d.segment_by_position.get(r, &(seg.session, u64::from(p)))? {
                        None => true,
                        Some(pid) => match d.segments.get(r, &pid)? {
                            Some(SegmentRecord::V1(p)) => p.state.kind().settles_successor(),
                            None => unreachable!(),
                        },
                    },
                };
                if seg.state.kind() == SegmentStateKind::Sealed && pred_settled {
                    expected.push(id);
                }
            }
            let mut actual = Vec::new();
            for entry in d.segment_ready.iter(r)? {
                actual.push(entry?.0);
            }
            assert_eq!(actual, expected, "ready index out of step");
            Ok(())
        })
        .unwrap();
    }

    #[test]
    fn ready_index_follows_every_transition() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(
            &QueueOptions::new(dir.path()),
            Arc::new(ManualClock::new(1)),
        )
        .unwrap();
        let mut sessions = Vec::new();
        for n in 0..4 {
            let new = NewSession {
                session_id: format!("s{n}"),
                user_id: "u".into(),
                username: "u".into(),
                image_friendly_name: "i".into(),
                protocol: "rdp".into(),
                start_ms: 1,
                target: String::new(),
                client_addr: String::new(),
            };
            sessions.push(q.register_session(&new).unwrap());
        }
        // A small deterministic pseudo-random walk over every segment operation.
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = |m: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % m
        };
        let mut ids: Vec<u64> = Vec::new();
        let (mut pulls, mut moves) = (0, 0);
        for _ in 0..600 {
            match next(8) {
                0 | 1 => {
                    let session = sessions[next(4) as usize];
                    // Mostly in order, sometimes out of order (spool import).
                    let index = next(12) as u32;
                    let seg = NewSegment {
                        session,
                        index,
                        path: PathBuf::from(format!("/x/{session}/{index}")),
                        bytes: 1,
                        first_sync_ms: None,
                        last_sync_ms: None,
                        sealed: next(2) == 0,
                    };
                    ids.push(q.register_segment(&seg).unwrap());
                }
                2 => {
                    if let Some(seg) = q.next_segment_to_encode().unwrap() {
                        assert_eq!(seg.state, SegmentState::Encoding);
                        pulls += 1;
                    }
                }
                _ if ids.is_empty() => {}
                op => {
                    let id = ids[next(ids.len() as u64) as usize];
                    let seg = q.segment(id).unwrap().unwrap();
                    let to = match op {
                        3 => SegmentState::Sealed,
                        4 => SegmentState::Encoded,
                        5 => SegmentState::Failed { reason: "f".into() },
                        6 => SegmentState::Quarantined { reason: "q".into() },
                        _ => SegmentState::Encoding,
                    };
                    let result = q.transition_segment(
                        id,
                        seg.state.kind(),
                        to.clone(),
                        &SegmentPatch::default(),
                    );
                    assert_eq!(result.is_ok(), seg.state.can_become(&to), "{result:?}");
                    moves += usize::from(result.is_ok());
                }
            }
            check_ready_invariant(&q);
        }
        q.recover().unwrap();
        check_ready_invariant(&q);
        // The walk must actually exercise the machine, not just register segments.
        assert!(pulls > 10, "pulls={pulls}");
        assert!(moves > 50, "moves={moves}");
    }
}
