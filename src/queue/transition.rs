//! The one transition: how a session, segment or clip moves along its state machine.
//!
//! Owns [`Machine`], what each record type with a state machine tells the queue (its table and
//! indexes, its state enum and edges, its patch, its auditable changes), and the single checked
//! state change built on it, [`transition_in`]. Does not own registration, work pulling or
//! recovery (`work.rs` calls in here from those) nor the edges themselves (`records.rs`).
//!
//! Callers: the public `transition_*` functions in `work.rs` go through [`Queue::transition`];
//! work pulling, `finish_encoding` and recovery call [`transition_in`] inside their own
//! transaction.

use heed::RwTxn;

use super::records::*;
use super::store::{append_audit, load_clip, load_segment, load_session};
use super::store::{put_clip, put_segment, put_session};
use super::{Dbs, Entity, Failpoint, Queue, QueueError, check_len, check_path};
use crate::limits;

/// A stored record with a state machine.
pub(super) trait Machine: Clone {
    /// The state enum stored in the record.
    type State: Clone;
    /// What callers assert as the current state: the payload-free kind (or the state itself
    /// when it has no payload).
    type Kind: PartialEq;
    /// Field changes applied together with the state change.
    type Patch;
    /// Named in errors.
    const ENTITY: Entity;

    /// Reads the record.
    fn load(w: &RwTxn, d: &Dbs, id: u64) -> Result<Self, QueueError>;
    /// Writes `new` and keeps its indexes in step with it (`old` is what was stored).
    fn put(w: &mut RwTxn, d: &Dbs, old: &Self, new: &Self) -> Result<(), QueueError>;
    /// The current state.
    fn state(&self) -> &Self::State;
    /// The kind of a state.
    fn kind(state: &Self::State) -> Self::Kind;
    /// Stable name of a kind, for logs and errors.
    fn name(kind: &Self::Kind) -> &'static str;
    /// Whether `from -> to` is an edge of the machine.
    fn can_become(from: &Self::State, to: &Self::State) -> bool;
    /// Checks the patch against the size limits (before any transaction). Default: nothing
    /// to check.
    fn check(_patch: &Self::Patch) -> Result<(), QueueError> {
        Ok(())
    }
    /// Truncates the free text of a requested state to what is stored. Default: no free text.
    fn clamp(to: Self::State) -> Self::State {
        to
    }
    /// Enters `to` at `now_ms` (counting an attempt where the state means one) and applies
    /// `patch`.
    fn apply(&mut self, to: Self::State, patch: &Self::Patch, now_ms: u64);
    /// The audit entry of the change that produced `self`, when it is auditable. Default:
    /// never auditable.
    fn audit(
        &self,
        _w: &RwTxn,
        _d: &Dbs,
        _patch: &Self::Patch,
    ) -> Result<Option<NewAudit>, QueueError> {
        Ok(None)
    }
}

/// Moves record `id` from `from` to `to` inside the caller's write transaction: the caller's
/// `from` must be the stored kind (else another worker won the race: `StaleState`), and
/// `stored -> to` must be an edge (else `IllegalTransition`, a caller bug reported as a typed
/// error rather than a panic in a worker). Writes the record, its indexes and, when the change
/// is auditable, the audit entry. `to` must already be clamped ([`Machine::clamp`]).
pub(super) fn transition_in<M: Machine>(
    w: &mut RwTxn,
    d: &Dbs,
    id: u64,
    from: &M::Kind,
    to: M::State,
    patch: &M::Patch,
    now_ms: u64,
) -> Result<M, QueueError> {
    let old = M::load(w, d, id)?;
    let actual = M::kind(old.state());
    if actual != *from {
        return Err(QueueError::StaleState {
            entity: M::ENTITY,
            id,
            expected: M::name(from),
            actual: M::name(&actual),
        });
    }
    if !M::can_become(old.state(), &to) {
        let (from, to) = (M::name(&actual), M::name(&M::kind(&to)));
        log::error!(
            "queue illegal transition entity={:?} id={id} from={from} to={to}",
            M::ENTITY
        );
        return Err(QueueError::IllegalTransition {
            entity: M::ENTITY,
            id,
            from,
            to,
        });
    }
    let mut new = old.clone();
    new.apply(to, patch, now_ms);
    M::put(w, d, &old, &new)?;
    if let Some(entry) = new.audit(w, d, patch)? {
        append_audit(w, d, now_ms, &entry)?;
    }
    Ok(new)
}

impl Queue {
    /// A public transition: checks and clamps, then [`transition_in`] in its own write
    /// transaction.
    pub(super) fn transition<M: Machine>(
        &self,
        id: u64,
        from: M::Kind,
        to: M::State,
        patch: &M::Patch,
    ) -> Result<M, QueueError> {
        M::check(patch)?;
        let to = M::clamp(to);
        let now_ms = self.now_ms();
        self.write(|w, d| {
            let new = transition_in::<M>(w, d, id, &from, to.clone(), patch, now_ms)?;
            self.hit(Failpoint::AfterTransitionWrite)?;
            Ok(new)
        })
    }
}

impl Machine for Session {
    type State = SessionState;
    type Kind = SessionState;
    /// The end time and reason, each set when given.
    type Patch = SessionEnd;
    const ENTITY: Entity = Entity::Session;

    fn load(w: &RwTxn, d: &Dbs, id: u64) -> Result<Self, QueueError> {
        load_session(w, d, id)
    }
    fn put(w: &mut RwTxn, d: &Dbs, old: &Self, new: &Self) -> Result<(), QueueError> {
        put_session(w, d, Some(old), new)
    }
    fn state(&self) -> &SessionState {
        &self.state
    }
    fn kind(state: &SessionState) -> SessionState {
        state.clone()
    }
    fn name(kind: &SessionState) -> &'static str {
        kind.name()
    }
    fn can_become(from: &SessionState, to: &SessionState) -> bool {
        from.can_become(to)
    }
    fn apply(&mut self, to: SessionState, end: &SessionEnd, _now_ms: u64) {
        if to == SessionState::Live {
            // Live again (a reconnect of a closed session): it has no end until it ends.
            self.end_ms = None;
            self.end_reason = None;
        }
        self.state = to;
        if end.end_ms.is_some() {
            self.end_ms = end.end_ms;
        }
        if end.reason.is_some() {
            self.end_reason = end.reason;
        }
    }
}

impl Machine for Segment {
    type State = SegmentState;
    type Kind = SegmentStateKind;
    type Patch = SegmentPatch;
    const ENTITY: Entity = Entity::Segment;

    fn load(w: &RwTxn, d: &Dbs, id: u64) -> Result<Self, QueueError> {
        load_segment(w, d, id)
    }
    fn put(w: &mut RwTxn, d: &Dbs, old: &Self, new: &Self) -> Result<(), QueueError> {
        put_segment(w, d, Some(old), new)
    }
    fn state(&self) -> &SegmentState {
        &self.state
    }
    fn kind(state: &SegmentState) -> SegmentStateKind {
        state.kind()
    }
    fn name(kind: &SegmentStateKind) -> &'static str {
        kind.name()
    }
    fn can_become(from: &SegmentState, to: &SegmentState) -> bool {
        from.can_become(to)
    }
    fn check(patch: &SegmentPatch) -> Result<(), QueueError> {
        match &patch.path {
            Some(path) => check_path("segment path", path),
            None => Ok(()),
        }
    }
    fn clamp(to: SegmentState) -> SegmentState {
        match to {
            SegmentState::Failed { reason } => SegmentState::Failed {
                reason: clamp_text(&reason),
            },
            SegmentState::Quarantined { reason } => SegmentState::Quarantined {
                reason: clamp_text(&reason),
            },
            other => other,
        }
    }
    fn apply(&mut self, to: SegmentState, patch: &SegmentPatch, now_ms: u64) {
        // Each move to Encoding is an encode attempt.
        let attempt = u32::from(to.kind() == SegmentStateKind::Encoding);
        self.attempts = self.attempts.saturating_add(attempt);
        self.state = to;
        self.updated_ms = now_ms;
        if let Some(path) = &patch.path {
            self.path = path.clone();
        }
        self.bytes = patch.bytes.unwrap_or(self.bytes);
        self.first_sync_ms = patch.first_sync_ms.or(self.first_sync_ms);
        self.last_sync_ms = patch.last_sync_ms.or(self.last_sync_ms);
    }
    fn audit(
        &self,
        w: &RwTxn,
        d: &Dbs,
        patch: &SegmentPatch,
    ) -> Result<Option<NewAudit>, QueueError> {
        let SegmentState::Quarantined { reason } = &self.state else {
            return Ok(None);
        };
        let session = load_session(w, d, self.session)?;
        let target = AuditTarget::Segment { segment: self.id };
        let entry = audit_for(
            patch.audit.as_ref(),
            AuditAction::QuarantinedSegment,
            target,
            || {
                format!(
                    "Segment {} of session {} quarantined: {reason}",
                    self.index, session.session_id
                )
            },
        );
        Ok(Some(entry))
    }
}

impl Machine for Clip {
    type State = ClipState;
    type Kind = ClipStateKind;
    type Patch = ClipPatch;
    const ENTITY: Entity = Entity::Clip;

    fn load(w: &RwTxn, d: &Dbs, id: u64) -> Result<Self, QueueError> {
        load_clip(w, d, id)
    }
    fn put(w: &mut RwTxn, d: &Dbs, old: &Self, new: &Self) -> Result<(), QueueError> {
        put_clip(w, d, Some(old), new)
    }
    fn state(&self) -> &ClipState {
        &self.state
    }
    fn kind(state: &ClipState) -> ClipStateKind {
        state.kind()
    }
    fn name(kind: &ClipStateKind) -> &'static str {
        kind.name()
    }
    fn can_become(from: &ClipState, to: &ClipState) -> bool {
        from.can_become(to)
    }
    fn check(patch: &ClipPatch) -> Result<(), QueueError> {
        match &patch.object_key {
            Some(key) => check_len("object key", key, limits::QUEUE_PATH_BYTES_MAX),
            None => Ok(()),
        }
    }
    fn clamp(to: ClipState) -> ClipState {
        match to {
            ClipState::Failed {
                reason,
                transient,
                next_attempt_ms,
            } => ClipState::Failed {
                reason: clamp_text(&reason),
                transient,
                next_attempt_ms,
            },
            other => other,
        }
    }
    fn apply(&mut self, to: ClipState, patch: &ClipPatch, now_ms: u64) {
        // Each move to Uploading is an upload attempt.
        let attempt = u32::from(to.kind() == ClipStateKind::Uploading);
        self.attempts = self.attempts.saturating_add(attempt);
        self.state = to;
        self.updated_ms = now_ms;
        if let Some(key) = &patch.object_key {
            self.object_key = Some(key.clone());
        }
    }
    fn audit(&self, _: &RwTxn, _: &Dbs, patch: &ClipPatch) -> Result<Option<NewAudit>, QueueError> {
        if self.state != ClipState::Expired {
            return Ok(None);
        }
        let target = AuditTarget::Clip { clip: self.id };
        let entry = audit_for(
            patch.audit.as_ref(),
            AuditAction::ClipExpired,
            target,
            || {
                format!(
                    "Clip {} ({}) expired before upload after {} attempts",
                    self.id,
                    self.path.display(),
                    self.attempts
                )
            },
        );
        Ok(Some(entry))
    }
}

/// The audit entry of an auditable transition: the caller's note if given, else `"system"`
/// and the default wording.
fn audit_for(
    note: Option<&AuditNote>,
    action: AuditAction,
    target: AuditTarget,
    default_message: impl FnOnce() -> String,
) -> NewAudit {
    let (actor, message) = match note {
        Some(note) => (note.actor.clone(), note.message.clone()),
        None => (ACTOR_SYSTEM.to_owned(), default_message()),
    };
    NewAudit {
        actor,
        action,
        target,
        message: clamp_text(&message),
    }
}

/// Truncates free text to the stored limit (at a char boundary) rather than failing a state
/// change because an error message was long.
fn clamp_text(text: &str) -> String {
    let max = limits::QUEUE_TEXT_BYTES_MAX;
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Arc;

    use super::*;
    use crate::clock::ManualClock;
    use crate::queue::QueueOptions;

    /// The one transition names the entity and the states the same way for every machine, and a
    /// refused change writes nothing.
    #[test]
    fn refusals_name_entity_and_states_for_every_machine() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(
            &QueueOptions::new(dir.path()),
            Arc::new(ManualClock::new(1)),
        )
        .unwrap();
        let s = q
            .register_session(&NewSession {
                session_id: "s".into(),
                user_id: "u".into(),
                username: "u".into(),
                image_friendly_name: "i".into(),
                protocol: "rdp".into(),
                start_ms: 1,
                target: String::new(),
                client_addr: String::new(),
            })
            .unwrap();
        let seg = q
            .register_segment(&NewSegment {
                session: s,
                index: 0,
                path: PathBuf::from("/x/0"),
                bytes: 1,
                first_sync_ms: None,
                last_sync_ms: None,
                sealed: true,
            })
            .unwrap();
        let seg_patch = SegmentPatch::default();
        let clip_patch = ClipPatch::default();
        let refusals = [
            q.transition_session(9, SessionState::Live, SessionState::Closed, None)
                .unwrap_err(),
            q.transition_session(s, SessionState::Closed, SessionState::Live, None)
                .unwrap_err(),
            q.transition_session(s, SessionState::Live, SessionState::Live, Some(5))
                .unwrap_err(),
            q.transition_segment(
                9,
                SegmentStateKind::Sealed,
                SegmentState::Encoding,
                &seg_patch,
            )
            .unwrap_err(),
            q.transition_segment(
                seg,
                SegmentStateKind::Writing,
                SegmentState::Sealed,
                &seg_patch,
            )
            .unwrap_err(),
            q.transition_segment(
                seg,
                SegmentStateKind::Sealed,
                SegmentState::Encoded,
                &seg_patch,
            )
            .unwrap_err(),
            q.transition_clip(9, ClipStateKind::Ready, ClipState::Uploading, &clip_patch)
                .unwrap_err(),
        ];
        let shown: Vec<String> = refusals.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            shown,
            [
                "Session 9 not found",
                "Session 1: expected state Closed, found Live",
                "Session 1: illegal transition Live -> Live",
                "Segment 9 not found",
                "Segment 1: expected state Writing, found Sealed",
                "Segment 1: illegal transition Sealed -> Encoded",
                "Clip 9 not found",
            ]
        );
        // Nothing moved: the session is still Live without an end, the segment still Sealed and
        // never attempted, and no audit entry was written.
        let session = q.session(s).unwrap().unwrap();
        assert_eq!((session.state, session.end_ms), (SessionState::Live, None));
        let segment = q.segment(seg).unwrap().unwrap();
        assert_eq!((segment.state, segment.attempts), (SegmentState::Sealed, 0));
        assert!(q.list_audit(&Default::default()).unwrap().items.is_empty());
    }
}
