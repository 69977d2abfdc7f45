//! Retention queries and the bounded purge of old metadata : which raw segments may
//! leave the disk, and the deletion of sessions, segments, clips (records and every index) and
//! audit entries past their retention, each batch in one short write transaction that also
//! appends the audit entry saying what was purged.
//!
//! Owns the rules that keep a purge safe: a session is purged only when it is `Closed` and
//! none of its work is in flight (no segment `Writing`/`Sealed`/`Encoding`, no clip waiting
//! for or in an upload, no fleet manifest put or delete owed; a finished manifest filing record
//! goes with it); a raw segment is offered for deletion only once every clip of it is
//! confirmed in the bucket and no later segment still needs its end display state. Does not own
//! files (the caller deletes the paths returned), the retention periods (the caller passes
//! cut-off times) or the wording of the audit entry (the caller's closure, Kasm style).
//!
//! Bounds: the candidate scan runs in a read transaction over at most
//! [`PURGE_SESSIONS_SCANNED_MAX`] sessions; the write transaction deletes at most
//! [`PURGE_SESSIONS_PER_TXN_MAX`] sessions or [`PURGE_AUDIT_PER_TXN_MAX`] audit entries.
//! Callers go on from the returned cursor. Called by `upload::retention`.

use std::path::PathBuf;

use heed::{RoTxn, RwTxn};

use super::codec::decode;
use super::manifests::drop_filing;
use super::records::*;
use super::store::{append_audit, delete_clip, delete_segment, load_segment};
use super::{Dbs, Queue, QueueError};
use crate::limits::{
    PURGE_AUDIT_PER_TXN_MAX, PURGE_SESSIONS_PER_TXN_MAX, PURGE_SESSIONS_SCANNED_MAX,
    RETENTION_SEGMENTS_PER_SWEEP_MAX,
};

/// An `Encoded` segment as the raw-segment retention sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawSegment {
    /// The segment record (its `path` is the raw file).
    pub segment: Segment,
    /// When the last of its clips was confirmed in the bucket (the segment's own last change
    /// when it made no clip); `None` while any clip is not confirmed (waiting, failed, expired).
    pub confirmed_ms: Option<u64>,
    /// Whether the next segment of the session still needs this one's end display state: it
    /// exists and is not encoded yet, or it does not exist yet and the session is still live.
    pub needed_by_next: bool,
    /// Whether OCR still needs the raw file: a clip of this segment, or of the next one
    /// (which starts from this one's end state), waits for its OCR read.
    pub needed_by_ocr: bool,
}

/// One page of [`Queue::raw_segments_after`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawSegmentPage {
    /// The segments, in id order.
    pub items: Vec<RawSegment>,
    /// Pass as `after` for the next page; `None` when the end was reached.
    pub next_after: Option<u64>,
}

/// What one history purge batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PurgedHistory {
    /// Sessions deleted.
    pub sessions: u64,
    /// Segments deleted.
    pub segments: u64,
    /// Clips deleted.
    pub clips: u64,
    /// Sessions old enough but left alone because work on them is in flight.
    pub busy: u64,
    /// Files the deleted records pointed to (segments, clips, thumbnails): the caller removes
    /// those still on disk (normally none: uploads and segment retention removed them).
    pub files: Vec<PathBuf>,
    /// Cursor (a session id) for the next batch; `None` when the scan reached the end.
    pub next_after: Option<u64>,
    /// Sequence number of the audit entry written, when anything was purged.
    pub audit_seq: Option<u64>,
    /// Duration of the write transaction, commit (fsync) included, in microseconds.
    pub write_txn_us: u64,
    /// The part of it spent before the commit (deleting, appending the audit entry).
    pub work_us: u64,
}

/// What one audit purge batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PurgedAudit {
    /// Entries deleted.
    pub entries: u64,
    /// Time of the oldest entry deleted.
    pub oldest_ms: Option<u64>,
    /// Whether old entries remain (the batch limit stopped it).
    pub more: bool,
    /// Sequence number of the audit entry written, when anything was purged.
    pub audit_seq: Option<u64>,
    /// Duration of the write transaction, commit (fsync) included, in microseconds.
    pub write_txn_us: u64,
    /// The part of it spent before the commit (deleting, appending the audit entry).
    pub work_us: u64,
}

/// Whether a segment in `kind` is work in flight (a purge must not pull it away).
fn segment_busy(kind: SegmentStateKind) -> bool {
    matches!(
        kind,
        SegmentStateKind::Writing | SegmentStateKind::Sealed | SegmentStateKind::Encoding
    )
}

/// Whether a clip in `kind` is confirmed in the bucket.
fn clip_confirmed(kind: ClipStateKind) -> bool {
    matches!(kind, ClipStateKind::Uploaded | ClipStateKind::LocalDeleted)
}

/// Whether a clip in `kind` still waits for (or is in) an upload.
fn clip_busy(kind: ClipStateKind) -> bool {
    matches!(
        kind,
        ClipStateKind::Ready | ClipStateKind::Uploading | ClipStateKind::Failed
    )
}

impl Queue {
    /// `Encoded` segments with an id above `after`, oldest first, at most `limit` (clamped to
    /// [`RETENTION_SEGMENTS_PER_SWEEP_MAX`]), each with the facts raw-segment retention
    /// decides on. One read transaction.
    ///
    /// # Errors
    /// LMDB errors (unreadable records are logged and skipped).
    pub fn raw_segments_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<RawSegmentPage, QueueError> {
        let limit = limit.clamp(1, RETENTION_SEGMENTS_PER_SWEEP_MAX);
        self.read(|r, d| {
            let tag = SegmentStateKind::Encoded as u8;
            let mut items = Vec::new();
            let start = after.saturating_add(1);
            for entry in d
                .segment_by_state
                .range(r, &((tag, start)..=(tag, u64::MAX)))?
            {
                let ((_, id), ()) = entry?;
                match d.segments.get(r, &id) {
                    Ok(Some(SegmentRecord::V1(seg))) => items.push(raw_segment(r, d, seg)?),
                    Ok(None) => log::error!("queue dangling segment state index id={id}"),
                    Err(e) => log::error!("queue skipping unreadable segment id={id} error={e}"),
                }
                if items.len() >= limit {
                    return Ok(RawSegmentPage {
                        items,
                        next_after: Some(id),
                    });
                }
            }
            Ok(RawSegmentPage {
                items,
                next_after: None,
            })
        })
    }

    /// Purges up to [`PURGE_SESSIONS_PER_TXN_MAX`] `Closed` sessions with an id above `after`
    /// that ended before `cutoff_ms`, with their segments, clips and all their index entries,
    /// and appends one [`AuditAction::Purged`] entry worded by `message` in the same
    /// transaction. Sessions with work in flight are skipped (counted in `busy`).
    ///
    /// Candidates are found in a read transaction over at most
    /// [`PURGE_SESSIONS_SCANNED_MAX`] sessions; the write transaction re-checks each one.
    ///
    /// # Errors
    /// [`QueueError::Full`] (the audit entry did not fit); LMDB errors. Nothing is purged then.
    pub fn purge_history(
        &self,
        cutoff_ms: u64,
        after: u64,
        message: &dyn Fn(&PurgedHistory) -> String,
    ) -> Result<PurgedHistory, QueueError> {
        let (candidates, next_after) =
            self.read(|r, d| purge_candidates(r, d, cutoff_ms, after))?;
        let mut out = PurgedHistory {
            next_after,
            ..PurgedHistory::default()
        };
        if candidates.is_empty() {
            return Ok(out);
        }
        let now_ms = self.now_ms();
        let started = std::time::Instant::now();
        let done = self.write(|w, d| {
            let work = std::time::Instant::now();
            let mut batch = PurgedHistory::default();
            for &id in &candidates {
                purge_session(w, d, id, cutoff_ms, &mut batch)?;
            }
            if batch.sessions > 0 {
                let entry = NewAudit {
                    actor: ACTOR_SYSTEM.into(),
                    action: AuditAction::Purged,
                    target: AuditTarget::None,
                    message: message(&batch),
                };
                batch.audit_seq = Some(append_audit(w, d, now_ms, &entry)?);
            }
            batch.work_us = work.elapsed().as_micros() as u64;
            Ok(batch)
        })?;
        out.sessions = done.sessions;
        out.segments = done.segments;
        out.clips = done.clips;
        out.busy = done.busy;
        out.files = done.files;
        out.audit_seq = done.audit_seq;
        out.work_us = done.work_us;
        out.write_txn_us = started.elapsed().as_micros() as u64;
        Ok(out)
    }

    /// Purges up to [`PURGE_AUDIT_PER_TXN_MAX`] audit entries older than `cutoff_ms`, oldest
    /// first, and appends one [`AuditAction::Purged`] entry worded by `message` in the same
    /// transaction. Stops at the first entry at or after the cut-off (entries are appended in
    /// time order). An unreadable entry is left in place (logged): evidence is not destroyed
    /// unread.
    ///
    /// # Errors
    /// [`QueueError::Full`]; LMDB errors. Nothing is purged then.
    pub fn purge_audit(
        &self,
        cutoff_ms: u64,
        message: &dyn Fn(&PurgedAudit) -> String,
    ) -> Result<PurgedAudit, QueueError> {
        let now_ms = self.now_ms();
        let started = std::time::Instant::now();
        let mut out = self.write(|w, d| {
            let work = std::time::Instant::now();
            let mut out = PurgedAudit::default();
            let mut doomed = Vec::new();
            for entry in d.audit.raw().iter(w)? {
                let (seq, bytes) = entry?;
                match decode::<AuditRecord>(d.audit.name, &seq, bytes) {
                    Ok(AuditRecord::V1(a)) if a.time_ms < cutoff_ms => {
                        if doomed.len() >= PURGE_AUDIT_PER_TXN_MAX {
                            out.more = true;
                            break;
                        }
                        out.oldest_ms = Some(out.oldest_ms.map_or(a.time_ms, |o| o.min(a.time_ms)));
                        doomed.push(seq);
                    }
                    Ok(AuditRecord::V1(_)) => break,
                    Err(e) => {
                        log::error!("queue audit purge keeps unreadable entry seq={seq} error={e}")
                    }
                }
            }
            for seq in &doomed {
                d.audit.raw().delete(w, seq)?;
            }
            out.entries = doomed.len() as u64;
            if out.entries > 0 {
                let entry = NewAudit {
                    actor: ACTOR_SYSTEM.into(),
                    action: AuditAction::Purged,
                    target: AuditTarget::None,
                    message: message(&out),
                };
                out.audit_seq = Some(append_audit(w, d, now_ms, &entry)?);
            }
            out.work_us = work.elapsed().as_micros() as u64;
            Ok(out)
        })?;
        out.write_txn_us = started.elapsed().as_micros() as u64;
        Ok(out)
    }

    /// Benchmark support (scripts/bench-queue): `sessions` closed sessions, each with one
    /// encoded segment and one uploaded clip whose local copy is gone, starting at `start_ms`
    /// `step_ms` apart, plus one audit entry per session at the same time; written through the
    /// same `put_*` helpers as the real paths, 10,000 sessions per transaction.
    ///
    /// # Errors
    /// LMDB errors; [`QueueError::Full`].
    #[doc(hidden)]
    pub fn fill_for_bench(
        &self,
        sessions: u64,
        start_ms: u64,
        step_ms: u64,
    ) -> Result<(), QueueError> {
        use super::store::{put_clip, put_segment, put_session};
        const PER_TXN: u64 = 10_000;
        let mut done = 0;
        while done < sessions {
            let n = PER_TXN.min(sessions - done);
            self.write(|w, d| {
                for k in done..done + n {
                    let t = start_ms + k * step_ms;
                    let id = super::next_id(w, d, "next-session-id")?;
                    let sid = format!("bench-{id:08}-3f1c2a9e-5d1b-4e47-8c53");
                    let session = Session {
                        id,
                        session_id: sid.clone(),
                        user_id: format!("uid-{}", k % 50),
                        username: format!("user{}@example.com", k % 50),
                        image_friendly_name: "Ubuntu Desktop".into(),
                        protocol: "rdp".into(),
                        start_ms: t,
                        end_ms: Some(t + 600_000),
                        state: SessionState::Closed,
                        segment_count: 1,
                        end_reason: Some(EndReason::UserDisconnect),
                        target: format!("host-{:02}.example:3389", k % 20),
                        client_addr: format!("10.0.0.{}:4822", k % 50),
                    };
                    put_session(w, d, None, &session)?;
                    let seg_id = super::next_id(w, d, "next-segment-id")?;
                    let seg = Segment {
                        id: seg_id,
                        session: id,
                        index: 0,
                        path: PathBuf::from(format!(
                            "/var/lib/session-recorder/segments/{sid}/000000.guac"
                        )),
                        bytes: 150_000_000,
                        first_sync_ms: Some(t),
                        last_sync_ms: Some(t + 600_000),
                        state: SegmentState::Encoded,
                        attempts: 1,
                        created_ms: t,
                        updated_ms: t,
                    };
                    put_segment(w, d, None, &seg)?;
                    let clip_id = super::next_id(w, d, "next-clip-id")?;
                    let clip = Clip {
                        id: clip_id,
                        segment: seg_id,
                        session: id,
                        index: 0,
                        path: PathBuf::from(format!("/var/lib/session-recorder/clips/{id}/0.mp4")),
                        thumb_path: Some(PathBuf::from(format!(
                            "/var/lib/session-recorder/clips/{id}/0.jpg"
                        ))),
                        bytes: 40_000_000,
                        sha256: "ab".repeat(32),
                        duration_ms: 600_000,
                        start_ms: t,
                        end_ms: t + 600_000,
                        object_key: Some(format!("uid/{sid}/clip-0-{t}.mp4")),
                        state: ClipState::LocalDeleted,
                        attempts: 1,
                        created_ms: t,
                        updated_ms: t,
                        events: None,
                    };
                    put_clip(w, d, None, &clip)?;
                    let entry = NewAudit {
                        actor: session.username.clone(),
                        action: AuditAction::Played,
                        target: AuditTarget::Session { session_id: sid },
                        message: format!("User {} played session {id} video", session.username),
                    };
                    append_audit(w, d, t, &entry)?;
                }
                Ok(())
            })?;
            done += n;
        }
        Ok(())
    }
}

/// The retention facts of one encoded segment.
fn raw_segment(r: &RoTxn, d: &Dbs, segment: Segment) -> Result<RawSegment, QueueError> {
    let mut confirmed_ms = Some(segment.updated_ms);
    for entry in d
        .clip_by_position
        .range(r, &((segment.id, 0)..=(segment.id, u64::MAX)))?
    {
        let (_, clip_id) = entry?;
        match d
            .clips
            .get(r, &clip_id)
            .map(|c| c.map(ClipRecord::into_clip))
        {
            Ok(Some(c)) if clip_confirmed(c.state.kind()) => {
                confirmed_ms = confirmed_ms.map(|t| t.max(c.updated_ms));
            }
            // Not confirmed, missing or unreadable: the raw segment is the only copy we trust.
            _ => confirmed_ms = None,
        }
    }
    let next = match segment.index.checked_add(1) {
        Some(i) => d
            .segment_by_position
            .get(r, &(segment.session, u64::from(i)))?,
        None => None,
    };
    let needed_by_next = match next {
        Some(next_id) => match d.segments.get(r, &next_id) {
            Ok(Some(SegmentRecord::V1(n))) => !n.state.kind().settles_successor(),
            // An unreadable successor can never be encoded from this state anyway.
            _ => false,
        },
        None => match d.sessions.get(r, &segment.session) {
            Ok(Some(s)) => s.into_session().state != SessionState::Closed,
            // No session record (purged or unreadable): no segment can follow.
            _ => false,
        },
    };
    let needed_by_ocr = super::ocr::segment_needed_by_ocr(r, d, &segment)?;
    Ok(RawSegment {
        segment,
        confirmed_ms,
        needed_by_next,
        needed_by_ocr,
    })
}

/// Ids of sessions above `after` that look purgeable, and the cursor for the next batch.
fn purge_candidates(
    r: &RoTxn,
    d: &Dbs,
    cutoff_ms: u64,
    after: u64,
) -> Result<(Vec<u64>, Option<u64>), QueueError> {
    let mut ids = Vec::new();
    let mut scanned = 0usize;
    for entry in d.sessions.raw().range(r, &(after.saturating_add(1)..))? {
        let (id, bytes) = entry?;
        scanned += 1;
        match decode::<SessionRecord>(d.sessions.name, &id, bytes) {
            Ok(s) => {
                if purgeable(&s.into_session(), cutoff_ms) {
                    ids.push(id);
                }
            }
            Err(e) => log::error!("queue purge skipping unreadable session id={id} error={e}"),
        }
        if ids.len() >= PURGE_SESSIONS_PER_TXN_MAX || scanned >= PURGE_SESSIONS_SCANNED_MAX {
            let more = d
                .sessions
                .raw()
                .range(r, &(id.saturating_add(1)..))?
                .next()
                .is_some();
            return Ok((ids, more.then_some(id)));
        }
    }
    Ok((ids, None))
}

/// Closed, and ended (or, without an end, started) before the cut-off.
fn purgeable(s: &Session, cutoff_ms: u64) -> bool {
    s.state == SessionState::Closed && s.end_ms.unwrap_or(s.start_ms) < cutoff_ms
}

/// Deletes one session with everything hanging off it, unless it changed since the scan or has
/// work in flight.
fn purge_session(
    w: &mut RwTxn,
    d: &Dbs,
    id: u64,
    cutoff_ms: u64,
    out: &mut PurgedHistory,
) -> Result<(), QueueError> {
    let session = match d.sessions.get(w, &id)? {
        Some(s) => s.into_session(),
        None => return Ok(()),
    };
    if !purgeable(&session, cutoff_ms) {
        return Ok(());
    }
    let mut segment_ids = Vec::new();
    for entry in d
        .segment_by_position
        .range(w, &((id, 0)..=(id, u64::MAX)))?
    {
        let ((_, index), seg_id) = entry?;
        segment_ids.push((index, seg_id));
    }
    let mut clip_ids = Vec::new();
    for entry in d.clip_by_session.range(w, &((id, 0)..=(id, u64::MAX)))? {
        let ((_, clip_id), ()) = entry?;
        clip_ids.push(clip_id);
    }
    let mut segments = Vec::with_capacity(segment_ids.len());
    for &(index, seg_id) in &segment_ids {
        match load_segment(w, d, seg_id) {
            Ok(s) if segment_busy(s.state.kind()) => {
                out.busy += 1;
                return Ok(());
            }
            Ok(s) => segments.push((index, Some(s))),
            Err(e) if e.is_unreadable() || matches!(e, QueueError::NotFound { .. }) => {
                segments.push((index, None));
            }
            Err(e) => return Err(e),
        }
    }
    let mut clips = Vec::with_capacity(clip_ids.len());
    for &clip_id in &clip_ids {
        match d
            .clips
            .get(w, &clip_id)
            .map(|c| c.map(ClipRecord::into_clip))
        {
            Ok(Some(c)) if clip_busy(c.state.kind()) => {
                out.busy += 1;
                return Ok(());
            }
            Ok(Some(c)) => clips.push((clip_id, Some(c))),
            Ok(None) => clips.push((clip_id, None)),
            Err(e) if e.is_unreadable() => clips.push((clip_id, None)),
            Err(e) => return Err(e),
        }
    }
    // A fleet manifest filing that still owes a put or a delete is work in flight too (the
    // superseded key would be stranded); a finished one goes with its session.
    if !drop_filing(w, d, id)? {
        out.busy += 1;
        return Ok(());
    }
    // Nothing in flight: delete clips, then segments, then the session, with every index.
    for (clip_id, _) in clips {
        if let Some(c) = delete_clip(w, d, id, clip_id)? {
            out.files.push(c.path);
            out.files.extend(c.thumb_path);
            out.files.extend(c.events.map(|e| e.path));
        }
        out.clips += 1;
    }
    for &(index, seg_id) in &segment_ids {
        if let Some(s) = delete_segment(w, d, id, index, seg_id)? {
            out.files.push(s.path);
        }
        out.segments += 1;
    }
    super::store::delete_session(w, d, &session)?;
    out.sessions += 1;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_work_is_never_purged() {
        for k in SegmentStateKind::ALL {
            let expected = matches!(
                k,
                SegmentStateKind::Writing | SegmentStateKind::Sealed | SegmentStateKind::Encoding
            );
            assert_eq!(segment_busy(k), expected, "{k:?}");
        }
        for k in ClipStateKind::ALL {
            // Every clip state is exactly one of: confirmed, waiting/in an upload, expired.
            let n = [clip_confirmed(k), clip_busy(k), k == ClipStateKind::Expired]
                .iter()
                .filter(|b| **b)
                .count();
            assert_eq!(n, 1, "{k:?}");
        }
    }
}
