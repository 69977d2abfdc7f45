//! Loading and writing the stored records inside a write transaction: each record together
//! with the indexes derived from it (state, ready, due), the owed manifests a change makes, and
//! the append-only audit table.
//!
//! Owns the invariant that a record and its indexes never disagree: every write of a session,
//! segment or clip goes through its `put_*` here, and so does every removal (`delete_*`). A
//! change that alters what a session's manifests say (a clip up or expired, a segment done
//! with, the session ended) marks the session's manifests owed in the same transaction
//! ([`owe_manifest`]). Does not own which changes are allowed
//! (`transition.rs`) nor the public entry points (`work.rs`, `accounts.rs`, `query.rs`), which
//! all sit on top of this file.

use heed::RwTxn;

use super::records::*;
use super::{Dbs, Entity, QueueError, check_len};
use crate::limits;

/// How many states OCR work has (`ocr::OcrState`'s tags are `0..OCR_STATE_TAGS`).
pub(super) const OCR_STATE_TAGS: u8 = 4;

pub(super) fn load_session(w: &RwTxn, d: &Dbs, id: u64) -> Result<Session, QueueError> {
    match d.sessions.get(w, &id)? {
        Some(s) => Ok(s.into_session()),
        None => Err(QueueError::NotFound {
            entity: Entity::Session,
            key: id.to_string(),
        }),
    }
}

pub(super) fn load_segment(w: &RwTxn, d: &Dbs, id: u64) -> Result<Segment, QueueError> {
    match d.segments.get(w, &id)? {
        Some(SegmentRecord::V1(s)) => Ok(s),
        None => Err(QueueError::NotFound {
            entity: Entity::Segment,
            key: id.to_string(),
        }),
    }
}

pub(super) fn load_clip(w: &RwTxn, d: &Dbs, id: u64) -> Result<Clip, QueueError> {
    match d.clips.get(w, &id)?.map(ClipRecord::into_clip) {
        Some(c) => Ok(c),
        None => Err(QueueError::NotFound {
            entity: Entity::Clip,
            key: id.to_string(),
        }),
    }
}

/// Writes a session and keeps its state and start-time indexes in step with it; a new one
/// (`old` is `None`) also gets its external id entry (the caller checked it is free).
pub(super) fn put_session(
    w: &mut RwTxn,
    d: &Dbs,
    old: Option<&Session>,
    new: &Session,
) -> Result<(), QueueError> {
    match old {
        Some(old) => {
            d.session_by_state.delete(w, &(old.state.tag(), old.id))?;
            d.session_by_start.delete(w, &(old.start_ms, old.id))?;
        }
        None => d.session_by_external.put(w, &new.session_id, &new.id)?,
    }
    d.session_by_state.put(w, &(new.state.tag(), new.id), &())?;
    d.session_by_start.put(w, &(new.start_ms, new.id), &())?;
    let changed = old.is_none_or(|old| old.state != new.state || old.end_ms != new.end_ms);
    if changed && session_ended(new) {
        owe_manifest(w, d, new.id)?;
    }
    d.sessions.put(w, &new.id, &SessionRecord::V3(new.clone()))
}

/// Whether the session is over: closed, or interrupted and ended by start-up recovery.
pub(super) fn session_ended(s: &Session) -> bool {
    match s.state {
        SessionState::Closed => true,
        SessionState::Interrupted => s.end_ms.is_some(),
        SessionState::Live => false,
    }
}

/// Removes a session's record and the indexes derived from it alone (state, start time,
/// external id), and its owed manifest mark (nothing is left to write one from).
pub(super) fn delete_session(w: &mut RwTxn, d: &Dbs, session: &Session) -> Result<(), QueueError> {
    delete_owed(w, d, session.id)?;
    d.session_by_state
        .delete(w, &(session.state.tag(), session.id))?;
    d.session_by_start
        .delete(w, &(session.start_ms, session.id))?;
    d.session_by_external.delete(w, &session.session_id)?;
    d.sessions.raw().delete(w, &session.id)?;
    Ok(())
}

/// Rebuilds the start-time index from every readable session (schema migration); returns
/// how many it indexed. Unreadable sessions are logged and left out, as every listing does.
pub(super) fn index_sessions_by_start(w: &mut RwTxn, d: &Dbs) -> Result<u64, QueueError> {
    d.session_by_start.clear(w)?;
    let mut keys = Vec::new();
    for entry in d.sessions.raw().iter(w)? {
        let (id, bytes) = entry?;
        match super::codec::decode::<SessionRecord>(d.sessions.name, &id, bytes) {
            Ok(rec) => keys.push((rec.into_session().start_ms, id)),
            Err(e) => log::error!("queue not indexing unreadable session id={id} error={e}"),
        }
    }
    for k in &keys {
        d.session_by_start.put(w, k, &())?;
    }
    Ok(keys.len() as u64)
}

/// Removes a segment's record and every index derived from it (state, ready, position).
/// Returns the segment when it was readable (its file is the caller's to delete).
pub(super) fn delete_segment(
    w: &mut RwTxn,
    d: &Dbs,
    session: u64,
    index: u64,
    id: u64,
) -> Result<Option<Segment>, QueueError> {
    let segment = match load_segment(w, d, id) {
        Ok(s) => Some(s),
        Err(e) if e.is_unreadable() || matches!(e, QueueError::NotFound { .. }) => None,
        Err(e) => return Err(e),
    };
    if let Some(s) = &segment {
        d.segment_by_state.delete(w, &(s.state.kind() as u8, id))?;
    }
    d.segment_ready.delete(w, &id)?;
    d.segment_by_position.delete(w, &(session, index))?;
    d.segments.raw().delete(w, &id)?;
    Ok(segment)
}

/// Writes a segment and keeps its state index in step with it; a new one (`old` is `None`)
/// also gets its position entry (the caller checked the position is free).
pub(super) fn put_segment(
    w: &mut RwTxn,
    d: &Dbs,
    old: Option<&Segment>,
    new: &Segment,
) -> Result<(), QueueError> {
    match old {
        Some(old) => {
            d.segment_by_state
                .delete(w, &(old.state.kind() as u8, old.id))?;
        }
        None => {
            d.segment_by_position
                .put(w, &(new.session, u64::from(new.index)), &new.id)?;
        }
    }
    d.segment_by_state
        .put(w, &(new.state.kind() as u8, new.id), &())?;
    d.segments
        .put(w, &new.id, &SegmentRecord::V1(new.clone()))?;
    if old.is_none_or(|old| old.state.kind() != new.state.kind()) {
        refresh_ready(w, d, new)?;
        if segment_done_with(new.state.kind()) {
            owe_manifest(w, d, new.session)?;
        }
    }
    Ok(())
}

/// A segment in this state makes no more clips: the session's manifest may be settled now.
fn segment_done_with(kind: SegmentStateKind) -> bool {
    matches!(
        kind,
        SegmentStateKind::Encoded | SegmentStateKind::Failed | SegmentStateKind::Quarantined
    )
}

/// Whether the predecessor of segment `(session, index)` is settled (see
/// [`SegmentStateKind::settles_successor`]). No predecessor counts as settled, and so does an
/// unreadable one: it can never settle, and holding the session back forever is worse than
/// encoding from a blank display.
pub(super) fn predecessor_settled(
    w: &RwTxn,
    d: &Dbs,
    session: u64,
    index: u32,
) -> Result<bool, QueueError> {
    let Some(prev_index) = index.checked_sub(1) else {
        return Ok(true);
    };
    let Some(prev) = d
        .segment_by_position
        .get(w, &(session, u64::from(prev_index)))?
    else {
        return Ok(true);
    };
    match load_segment(w, d, prev) {
        Ok(prev) => Ok(prev.state.kind().settles_successor()),
        Err(e) if e.is_unreadable() => {
            log::error!("queue unreadable predecessor id={prev} session={session} error={e}");
            Ok(true)
        }
        Err(e) => Err(e),
    }
}

/// Recomputes the ready entries of `seg` (whose state just changed) and of its successor
/// (whose predecessor just changed).
fn refresh_ready(w: &mut RwTxn, d: &Dbs, seg: &Segment) -> Result<(), QueueError> {
    let ready = seg.state.kind() == SegmentStateKind::Sealed
        && predecessor_settled(w, d, seg.session, seg.index)?;
    set_ready(w, d, seg.id, ready)?;
    let Some(next_index) = seg.index.checked_add(1) else {
        return Ok(());
    };
    let Some(next) = d
        .segment_by_position
        .get(w, &(seg.session, u64::from(next_index)))?
    else {
        return Ok(());
    };
    match load_segment(w, d, next) {
        Ok(next) => {
            let ready = next.state.kind() == SegmentStateKind::Sealed
                && seg.state.kind().settles_successor();
            set_ready(w, d, next.id, ready)
        }
        Err(e) if e.is_unreadable() => Ok(()),
        Err(e) => Err(e),
    }
}

fn set_ready(w: &mut RwTxn, d: &Dbs, id: u64, ready: bool) -> Result<(), QueueError> {
    if ready {
        d.segment_ready.put(w, &id, &())?;
    } else {
        d.segment_ready.delete(w, &id)?;
    }
    Ok(())
}

/// Writes a clip and keeps its state and due indexes in step with it; a new one (`old` is
/// `None`) also gets its position and session entries (the caller checked the position is
/// free).
pub(super) fn put_clip(
    w: &mut RwTxn,
    d: &Dbs,
    old: Option<&Clip>,
    new: &Clip,
) -> Result<(), QueueError> {
    match old {
        Some(old) => {
            d.clip_by_state
                .delete(w, &(old.state.kind() as u8, old.id))?;
            if let Some(due) = old.state.due_ms() {
                d.clip_due.delete(w, &(due, old.id))?;
            }
        }
        None => {
            d.clip_by_position
                .put(w, &(new.segment, u64::from(new.index)), &new.id)?;
            d.clip_by_session.put(w, &(new.session, new.id), &())?;
        }
    }
    d.clip_by_state
        .put(w, &(new.state.kind() as u8, new.id), &())?;
    if let Some(due) = new.state.due_ms() {
        d.clip_due.put(w, &(due, new.id), &())?;
    }
    let kind = new.state.kind();
    let changed = old.is_none_or(|old| old.state.kind() != kind);
    if changed && matches!(kind, ClipStateKind::Uploaded | ClipStateKind::Expired) {
        owe_manifest(w, d, new.session)?;
    }
    d.clips.put(w, &new.id, &ClipRecord::V2(new.clone()))
}

/// Removes a clip's record and every index derived from it (state, due, position, session).
/// Returns the clip when it was readable (its files are the caller's to delete).
pub(super) fn delete_clip(
    w: &mut RwTxn,
    d: &Dbs,
    session: u64,
    id: u64,
) -> Result<Option<Clip>, QueueError> {
    let clip = match d.clips.get(w, &id) {
        Ok(Some(r)) => Some(r.into_clip()),
        Ok(None) => None,
        Err(e) if e.is_unreadable() => None,
        Err(e) => return Err(e),
    };
    if let Some(c) = &clip {
        d.clip_by_state.delete(w, &(c.state.kind() as u8, id))?;
        if let Some(due) = c.state.due_ms() {
            d.clip_due.delete(w, &(due, id))?;
        }
        d.clip_by_position
            .delete(w, &(c.segment, u64::from(c.index)))?;
    }
    d.clip_by_session.delete(w, &(session, id))?;
    // The clip's OCR work goes with it (its record and its state index entry, whatever state).
    d.ocr.raw().delete(w, &id)?;
    for tag in 0..OCR_STATE_TAGS {
        if d.ocr_by_state.delete(w, &(tag, id))? {
            break;
        }
    }
    d.clips.raw().delete(w, &id)?;
    Ok(clip)
}

// ---- owed manifests ----

pub(super) fn load_owed(
    r: &heed::RoTxn,
    d: &Dbs,
    session: u64,
) -> Result<Option<OwedManifest>, QueueError> {
    Ok(d.manifest_owed
        .get(r, &session)?
        .map(|OwedManifestRecord::V1(o)| o))
}

/// Marks the manifests of `session` owed (due now), or counts one more change on a mark that
/// exists: the worker that is writing them will see it and write them again.
pub(super) fn owe_manifest(w: &mut RwTxn, d: &Dbs, session: u64) -> Result<(), QueueError> {
    let old = match load_owed(w, d, session) {
        Ok(old) => old,
        // An unreadable mark is replaced: a fresh one owes the same.
        Err(e) if e.is_unreadable() => None,
        Err(e) => return Err(e),
    };
    let new = OwedManifest {
        session,
        marks: old.as_ref().map_or(1, |o| o.marks + 1),
        attempts: 0,
        due_ms: 0,
        last_error: None,
    };
    put_owed(w, d, old.as_ref(), &new)
}

/// Writes an owed mark and keeps its due index in step with it.
pub(super) fn put_owed(
    w: &mut RwTxn,
    d: &Dbs,
    old: Option<&OwedManifest>,
    new: &OwedManifest,
) -> Result<(), QueueError> {
    if let Some(old) = old {
        d.manifest_owed_due.delete(w, &(old.due_ms, old.session))?;
    }
    d.manifest_owed_due
        .put(w, &(new.due_ms, new.session), &())?;
    d.manifest_owed
        .put(w, &new.session, &OwedManifestRecord::V1(new.clone()))
}

/// Removes the owed mark of `session` (paid, or its session purged) with its due index.
pub(super) fn delete_owed(w: &mut RwTxn, d: &Dbs, session: u64) -> Result<(), QueueError> {
    match load_owed(w, d, session) {
        Ok(Some(old)) => {
            d.manifest_owed_due.delete(w, &(old.due_ms, old.session))?;
        }
        Ok(None) => {}
        Err(e) if e.is_unreadable() => {
            // The due entry cannot be known from the record: find it by session.
            let mut stale = Vec::new();
            for entry in d.manifest_owed_due.iter(w)? {
                let ((due, s), ()) = entry?;
                if s == session {
                    stale.push(due);
                }
            }
            for due in stale {
                d.manifest_owed_due.delete(w, &(due, session))?;
            }
        }
        Err(e) => return Err(e),
    }
    d.manifest_owed.raw().delete(w, &session)?;
    Ok(())
}

/// Appends an audit entry; returns its sequence number.
pub(super) fn append_audit(
    w: &mut RwTxn,
    d: &Dbs,
    now_ms: u64,
    entry: &NewAudit,
) -> Result<u64, QueueError> {
    check_len("audit actor", &entry.actor, limits::QUEUE_NAME_BYTES_MAX)?;
    check_len(
        "audit message",
        &entry.message,
        limits::QUEUE_TEXT_BYTES_MAX,
    )?;
    let seq = match d.audit.raw().last(w)? {
        Some((last, _)) => last + 1,
        None => 1,
    };
    let record = AuditRecord::V1(AuditEntry {
        seq,
        time_ms: now_ms,
        actor: entry.actor.clone(),
        action: entry.action,
        target: entry.target.clone(),
        message: entry.message.clone(),
    });
    d.audit.put(w, &seq, &record)?;
    Ok(seq)
}
