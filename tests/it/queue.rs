//! Integration tests of the durable queue: state machines, races, idempotent registration,
//! recovery, reopen, SIGKILL mid-commit, map growth and exhaustion, corrupt records, audit.
//!
//! Every test uses its own temporary directory and a [`ManualClock`].

use std::path::PathBuf;
use std::sync::Arc;

use session_recorder::clock::ManualClock;
use session_recorder::error::Classify;
use session_recorder::queue::*;

const T0: u64 = 1_700_000_000_000;

fn open(dir: &std::path::Path) -> Queue {
    Queue::open(&QueueOptions::new(dir), Arc::new(ManualClock::new(T0))).unwrap()
}

fn new_session(n: u32) -> NewSession {
    NewSession {
        session_id: format!("sess-{n}"),
        user_id: format!("uid-{}", n % 3),
        username: format!("user{}", n % 3),
        image_friendly_name: "Ubuntu Desktop".into(),
        protocol: "rdp".into(),
        start_ms: T0 + u64::from(n) * 1000,
        target: String::new(),
        client_addr: String::new(),
    }
}

fn new_segment(session: u64, index: u32, sealed: bool) -> NewSegment {
    NewSegment {
        session,
        index,
        path: PathBuf::from(format!("/spool/{session}/{index}.guac")),
        bytes: 1000,
        first_sync_ms: None,
        last_sync_ms: None,
        sealed,
    }
}

fn new_clip(segment: u64, index: u32) -> NewClip {
    NewClip {
        segment,
        index,
        path: PathBuf::from(format!("/spool/clips/{segment}-{index}.mp4")),
        thumb_path: Some(PathBuf::from(format!("/spool/clips/{segment}-{index}.jpg"))),
        bytes: 5000,
        sha256: "ab".repeat(32),
        duration_ms: 60_000,
        start_ms: T0,
        end_ms: T0 + 60_000,
        object_key: None,
        events: None,
    }
}

#[test]
fn segment_lifecycle_and_illegal_transitions() {
    let dir = tempfile::tempdir().unwrap();
    let q = open(dir.path());
    let s = q.register_session(&new_session(1)).unwrap();
    let seg = q.register_segment(&new_segment(s, 0, false)).unwrap();
    assert_eq!(
        q.segment(seg).unwrap().unwrap().state,
        SegmentState::Writing
    );

    // Writing cannot jump to Encoding.
    let err = q
        .transition_segment(
            seg,
            SegmentStateKind::Writing,
            SegmentState::Encoding,
            &SegmentPatch::default(),
        )
        .unwrap_err();
    assert!(
        matches!(err, QueueError::IllegalTransition { .. }),
        "{err:?}"
    );
    assert!(!err.is_transient());

    let patch = SegmentPatch {
        bytes: Some(4242),
        last_sync_ms: Some(T0 + 5),
        ..Default::default()
    };
    let sealed = q
        .transition_segment(seg, SegmentStateKind::Writing, SegmentState::Sealed, &patch)
        .unwrap();
    assert_eq!(sealed.bytes, 4242);
    assert_eq!(sealed.last_sync_ms, Some(T0 + 5));

    let job = q.next_segment_to_encode().unwrap().unwrap();
    assert_eq!(job.id, seg);
    assert_eq!(job.state, SegmentState::Encoding);
    assert_eq!(job.attempts, 1);
    assert!(q.next_segment_to_encode().unwrap().is_none());

    let clips = q
        .finish_encoding(seg, &[new_clip(seg, 0), new_clip(seg, 1)])
        .unwrap();
    assert_eq!(clips.len(), 2);
    assert_eq!(
        q.segment(seg).unwrap().unwrap().state,
        SegmentState::Encoded
    );
    let err = q
        .transition_segment(
            seg,
            SegmentStateKind::Encoded,
            SegmentState::Writing,
            &SegmentPatch::default(),
        )
        .unwrap_err();
    assert!(
        matches!(err, QueueError::IllegalTransition { .. }),
        "{err:?}"
    );
}

fn open_clock(dir: &std::path::Path) -> (Queue, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(T0));
    let q = Queue::open(&QueueOptions::new(dir), clock.clone()).unwrap();
    (q, clock)
}

fn seal(q: &Queue, seg: u64) {
    q.transition_segment(
        seg,
        SegmentStateKind::Writing,
        SegmentState::Sealed,
        &SegmentPatch::default(),
    )
    .unwrap();
}

#[test]
fn stale_state_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let q = open(dir.path());
    let s = q.register_session(&new_session(1)).unwrap();
    let seg = q.register_segment(&new_segment(s, 0, true)).unwrap();
    // Worker A takes it; worker B still believes it is Sealed.
    q.next_segment_to_encode().unwrap().unwrap();
    let err = q
        .transition_segment(
            seg,
            SegmentStateKind::Sealed,
            SegmentState::Encoding,
            &SegmentPatch::default(),
        )
        .unwrap_err();
    match &err {
        QueueError::StaleState {
            entity,
            id,
            expected,
            actual,
        } => {
            assert_eq!(*entity, Entity::Segment);
            assert_eq!(*id, seg);
            assert_eq!(*expected, "Sealed");
            assert_eq!(*actual, "Encoding");
        }
        other => panic!("expected StaleState, got {other:?}"),
    }
    assert!(!err.is_transient());
    // The record is untouched by the failed call.
    let now = q.segment(seg).unwrap().unwrap();
    assert_eq!(now.state, SegmentState::Encoding);
    assert_eq!(now.attempts, 1);

    let missing = q
        .transition_segment(
            999,
            SegmentStateKind::Sealed,
            SegmentState::Encoding,
            &SegmentPatch::default(),
        )
        .unwrap_err();
    assert!(
        matches!(missing, QueueError::NotFound { .. }),
        "{missing:?}"
    );
}

#[test]
fn racing_workers_never_share_a_job() {
    let dir = tempfile::tempdir().unwrap();
    let q = Arc::new(open(dir.path()));
    let mut batch = Vec::new();
    for n in 0..20 {
        let s = q.register_session(&new_session(n)).unwrap();
        batch.push(new_segment(s, 0, true));
    }
    q.register_segments(&batch).unwrap();
    let mut workers = Vec::new();
    for _ in 0..4 {
        let q = q.clone();
        workers.push(std::thread::spawn(move || {
            let mut mine = Vec::new();
            while let Some(seg) = q.next_segment_to_encode().unwrap() {
                mine.push(seg.id);
            }
            mine
        }));
    }
    let mut all: Vec<u64> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    all.sort_unstable();
    let before = all.len();
    all.dedup();
    assert_eq!(before, all.len(), "a segment was handed to two workers");
    assert_eq!(all.len(), 20);
    assert_eq!(q.counts().unwrap().segments.encoding, 20);
}

#[test]
fn registration_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let q = open(dir.path());
    let s1 = q.register_session(&new_session(1)).unwrap();
    let mut changed = new_session(1);
    changed.username = "someone else".into();
    assert_eq!(q.register_session(&changed).unwrap(), s1);
    assert_eq!(q.session(s1).unwrap().unwrap().username, "user1");

    let a = q.register_segment(&new_segment(s1, 0, false)).unwrap();
    let b = q.register_segment(&new_segment(s1, 0, false)).unwrap();
    assert_eq!(a, b);
    let ids = q
        .register_segments(&[new_segment(s1, 0, true), new_segment(s1, 1, true)])
        .unwrap();
    assert_eq!(ids[0], a);
    assert_ne!(ids[1], a);
    assert_eq!(q.session(s1).unwrap().unwrap().segment_count, 2);
    assert_eq!(q.segments_of_session(s1).unwrap().len(), 2);

    let c1 = q.register_clip(&new_clip(a, 0)).unwrap();
    assert_eq!(q.register_clip(&new_clip(a, 0)).unwrap(), c1);
    assert_eq!(q.clips_of_session(s1).unwrap().len(), 1);
    assert_eq!(q.counts().unwrap().clips.ready, 1);

    // Unknown parents are typed errors.
    let err = q.register_segment(&new_segment(77, 0, true)).unwrap_err();
    assert!(matches!(
        err,
        QueueError::NotFound {
            entity: Entity::Session,
            ..
        }
    ));
    let err = q.register_clip(&new_clip(77, 0)).unwrap_err();
    assert!(matches!(
        err,
        QueueError::NotFound {
            entity: Entity::Segment,
            ..
        }
    ));
}

#[test]
fn crash_between_clip_write_and_commit_is_replayed_without_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let (seg, session) = {
        let q = open(dir.path());
        let s = q.register_session(&new_session(1)).unwrap();
        let seg = q.register_segment(&new_segment(s, 0, true)).unwrap();
        q.next_segment_to_encode().unwrap().unwrap();
        q.set_failpoint(Some(Failpoint::AfterClipWrite));
        let err = q.finish_encoding(seg, &[new_clip(seg, 0)]).unwrap_err();
        assert!(matches!(
            err,
            QueueError::InjectedFailure(Failpoint::AfterClipWrite)
        ));
        (seg, s)
    };
    // "Restart": reopen, recover, redo the work.
    let q = open(dir.path());
    assert!(
        q.clips_of_session(session).unwrap().is_empty(),
        "aborted write leaked"
    );
    let rec = q.recover().unwrap();
    assert_eq!(rec.segments_requeued, 1);
    let job = q.next_segment_to_encode().unwrap().unwrap();
    assert_eq!(job.id, seg);
    assert_eq!(job.attempts, 2);
    // This time the commit happens but the process "dies" before acting on it.
    q.set_failpoint(Some(Failpoint::AfterCommit));
    assert!(q.finish_encoding(seg, &[new_clip(seg, 0)]).is_err());
    drop(q);
    let q = open(dir.path());
    assert_eq!(q.recover().unwrap().segments_requeued, 0);
    assert_eq!(
        q.segment(seg).unwrap().unwrap().state,
        SegmentState::Encoded
    );
    assert_eq!(q.clips_of_session(session).unwrap().len(), 1);
    // A replayed registration of the same clip is a no-op.
    let again = q.register_clip(&new_clip(seg, 0)).unwrap();
    assert_eq!(q.clips_of_session(session).unwrap()[0].id, again);
    assert_eq!(q.clips_of_session(session).unwrap().len(), 1);
}

#[test]
fn failpoint_in_registration_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let q = open(dir.path());
    let s = q.register_session(&new_session(1)).unwrap();
    q.set_failpoint(Some(Failpoint::AfterSegmentWrite));
    let err = q.register_segment(&new_segment(s, 0, true)).unwrap_err();
    assert!(err.is_transient());
    assert!(q.segment_at(s, 0).unwrap().is_none());
    assert_eq!(q.session(s).unwrap().unwrap().segment_count, 0);
    assert_eq!(q.counts().unwrap().segments.sealed, 0);
    let id = q.register_segment(&new_segment(s, 0, true)).unwrap();
    assert_eq!(q.segment_at(s, 0).unwrap().unwrap().id, id);
}

#[test]
fn recover_puts_interrupted_work_back() {
    let dir = tempfile::tempdir().unwrap();
    {
        let q = open(dir.path());
        let s = q.register_session(&new_session(1)).unwrap();
        let s2 = q.register_session(&new_session(2)).unwrap();
        q.register_segment(&new_segment(s2, 0, false)).unwrap();
        let segs = q
            .register_segments(&[new_segment(s, 0, true), new_segment(s, 1, true)])
            .unwrap();
        let job = q.next_segment_to_encode().unwrap().unwrap();
        assert_eq!(job.id, segs[0]);
        let done = q.register_segment(&new_segment(s2, 1, true)).unwrap();
        // s2/1's predecessor is Writing: not encodable; s/1 waits for s/0.
        assert!(q.next_segment_to_encode().unwrap().is_none());
        let _ = done;
        let c = q.register_clip(&new_clip(segs[0], 0)).unwrap();
        let up = q.next_clip_to_upload(T0).unwrap().unwrap();
        assert_eq!(up.id, c);
        assert_eq!(up.state, ClipState::Uploading);
        // Crash here: the queue is dropped with work in flight.
    }
    let q = open(dir.path());
    let rec = q.recover().unwrap();
    assert_eq!(
        rec,
        Recovery {
            segments_requeued: 1,
            clips_requeued: 1,
            segments_writing: 1,
            sessions_live: 2,
            unreadable: 0,
        }
    );
    let counts = q.counts().unwrap();
    assert_eq!(counts.segments.encoding, 0);
    assert_eq!(counts.segments.sealed, 3);
    assert_eq!(counts.clips.uploading, 0);
    assert_eq!(counts.clips.ready, 1);
    // Running it again finds nothing to do.
    assert_eq!(q.recover().unwrap().segments_requeued, 0);
    // The daemon then ends the sessions whose tap died (here with no files found on disk),
    // and seals the leftover segment.
    let open = q.sessions_left_open().unwrap();
    assert_eq!(open.len(), 2);
    for s in &open {
        q.end_interrupted_session(s.id, T0, &[]).unwrap();
    }
    assert_eq!(q.counts().unwrap().sessions.interrupted, 2);
    let writing = q.segments_in_state(SegmentStateKind::Writing, 100).unwrap();
    assert_eq!(writing.len(), 1);
    seal(&q, writing[0].id);
    let s2 = writing[0].session;
    q.transition_session(
        s2,
        SessionState::Interrupted,
        SessionState::Closed,
        Some(T0 + 1),
    )
    .unwrap();
    // s2/0 is now encodable, and then s2/1 after it.
    let sealed = q.segments_in_state(SegmentStateKind::Sealed, 100).unwrap();
    assert_eq!(sealed.len(), 4);
}

#[test]
fn encoding_respects_session_order() {
    let dir = tempfile::tempdir().unwrap();
    let q = open(dir.path());
    let a = q.register_session(&new_session(1)).unwrap();
    let b = q.register_session(&new_session(2)).unwrap();
    let a0 = q.register_segment(&new_segment(a, 0, true)).unwrap();
    let a1 = q.register_segment(&new_segment(a, 1, true)).unwrap();
    let a2 = q.register_segment(&new_segment(a, 2, true)).unwrap();
    let b0 = q.register_segment(&new_segment(b, 0, false)).unwrap();

    assert_eq!(q.next_segment_to_encode().unwrap().unwrap().id, a0);
    // a1 needs a0's end state; b0 is still being written.
    assert!(q.next_segment_to_encode().unwrap().is_none());
    seal(&q, b0);
    assert_eq!(q.next_segment_to_encode().unwrap().unwrap().id, b0);
    q.finish_encoding(a0, &[new_clip(a0, 0)]).unwrap();
    assert_eq!(q.next_segment_to_encode().unwrap().unwrap().id, a1);
    // A quarantined predecessor does not block its successor forever.
    q.transition_segment(
        a1,
        SegmentStateKind::Encoding,
        SegmentState::Quarantined {
            reason: "broken stream at offset 17".into(),
        },
        &SegmentPatch::default(),
    )
    .unwrap();
    assert_eq!(q.next_segment_to_encode().unwrap().unwrap().id, a2);

    // Quarantine is audited in the same transaction.
    let page = q
        .list_audit(&AuditFilter {
            action: Some(AuditAction::QuarantinedSegment),
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.items[0].target, AuditTarget::Segment { segment: a1 });
    assert_eq!(page.items[0].actor, ACTOR_SYSTEM);
    assert!(
        page.items[0].message.contains("offset 17"),
        "{}",
        page.items[0].message
    );
}

#[test]
fn clip_upload_retry_schedule() {
    let dir = tempfile::tempdir().unwrap();
    let q = open(dir.path());
    let s = q.register_session(&new_session(1)).unwrap();
    let seg = q.register_segment(&new_segment(s, 0, true)).unwrap();
    let c0 = q.register_clip(&new_clip(seg, 0)).unwrap();
    let c1 = q.register_clip(&new_clip(seg, 1)).unwrap();

    // Oldest first.
    assert_eq!(q.next_clip_to_upload(T0).unwrap().unwrap().id, c0);
    q.transition_clip(
        c0,
        ClipStateKind::Uploading,
        ClipState::Failed {
            reason: "503 Slow Down".into(),
            transient: true,
            next_attempt_ms: T0 + 10_000,
        },
        &ClipPatch::default(),
    )
    .unwrap();
    assert_eq!(q.next_clip_to_upload(T0).unwrap().unwrap().id, c1);
    // c0 is not due yet.
    assert!(q.next_clip_to_upload(T0 + 9_999).unwrap().is_none());
    let retry = q.next_clip_to_upload(T0 + 10_000).unwrap().unwrap();
    assert_eq!(retry.id, c0);
    assert_eq!(retry.attempts, 2);
    let done = q
        .transition_clip(
            c0,
            ClipStateKind::Uploading,
            ClipState::Uploaded,
            &ClipPatch {
                object_key: Some("recordings/u/s/0.mp4".into()),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(done.object_key.as_deref(), Some("recordings/u/s/0.mp4"));
    // A permanent failure is parked: never handed out again.
    q.transition_clip(
        c1,
        ClipStateKind::Uploading,
        ClipState::Failed {
            reason: "403 AccessDenied".into(),
            transient: false,
            next_attempt_ms: 0,
        },
        &ClipPatch::default(),
    )
    .unwrap();
    assert!(q.next_clip_to_upload(u64::MAX).unwrap().is_none());
    // Retention: c1 is older than the cutoff and not uploaded; expire it (audited).
    let old = q
        .clips_older_than(
            &[ClipStateKind::Ready, ClipStateKind::Failed],
            T0 + 61_000,
            100,
        )
        .unwrap();
    assert_eq!(old.iter().map(|c| c.id).collect::<Vec<_>>(), vec![c1]);
    q.transition_clip(
        c1,
        ClipStateKind::Failed,
        ClipState::Expired,
        &ClipPatch::default(),
    )
    .unwrap();
    let audit = q
        .list_audit(&AuditFilter {
            action: Some(AuditAction::ClipExpired),
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(audit.items.len(), 1);
    assert_eq!(audit.items[0].target, AuditTarget::Clip { clip: c1 });
    let uploaded = q
        .clips_older_than(&[ClipStateKind::Uploaded], T0 + 61_000, 100)
        .unwrap();
    assert_eq!(uploaded.len(), 1);
    q.transition_clip(
        c0,
        ClipStateKind::Uploaded,
        ClipState::LocalDeleted,
        &ClipPatch::default(),
    )
    .unwrap();
    let counts = q.counts().unwrap();
    assert_eq!(counts.clips.local_deleted, 1);
    assert_eq!(counts.clips.expired, 1);
    assert_eq!(counts.oldest_waiting_clip_created_ms, None);
    // Illegal: an expired clip cannot be uploaded.
    let err = q
        .transition_clip(
            c1,
            ClipStateKind::Expired,
            ClipState::Uploading,
            &ClipPatch::default(),
        )
        .unwrap_err();
    assert!(matches!(err, QueueError::IllegalTransition { .. }));
}

#[test]
fn reopen_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let (s, seg, clip) = {
        let q = open(dir.path());
        let s = q.register_session(&new_session(1)).unwrap();
        let seg = q.register_segment(&new_segment(s, 0, true)).unwrap();
        q.next_segment_to_encode().unwrap();
        let clip = q.finish_encoding(seg, &[new_clip(seg, 0)]).unwrap()[0];
        q.transition_session(s, SessionState::Live, SessionState::Closed, Some(T0 + 99))
            .unwrap();
        q.append_audit(&NewAudit {
            actor: "admin".into(),
            action: AuditAction::Played,
            target: AuditTarget::Session {
                session_id: "sess-1".into(),
            },
            message: "admin played session sess-1".into(),
        })
        .unwrap();
        q.add_user(
            &User {
                name: "admin".into(),
                password_hash: "$argon2id$v=19$...".into(),
                permissions: 0b1011,
                created_ms: T0,
            },
            ACTOR_SYSTEM,
        )
        .unwrap();
        (s, seg, clip)
    };
    let q = open(dir.path());
    let session = q.session_by_external("sess-1").unwrap().unwrap();
    assert_eq!(session.id, s);
    assert_eq!(session.state, SessionState::Closed);
    assert_eq!(session.end_ms, Some(T0 + 99));
    assert_eq!(
        q.segment(seg).unwrap().unwrap().state,
        SegmentState::Encoded
    );
    let c = q.clip(clip).unwrap().unwrap();
    assert_eq!(c.sha256, "ab".repeat(32));
    assert_eq!(c.session, s);
    assert_eq!(q.user("admin").unwrap().unwrap().permissions, 0b1011);
    let audit = q
        .list_audit(&AuditFilter {
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(audit.items.len(), 2);
    // Ids keep increasing after a reopen.
    let s2 = q.register_session(&new_session(2)).unwrap();
    assert!(s2 > s);
}

#[test]
fn session_listing_filters_and_pages() {
    let dir = tempfile::tempdir().unwrap();
    let q = open(dir.path());
    for n in 0..30 {
        q.register_session(&new_session(n)).unwrap();
    }
    let first = q
        .list_sessions(&SessionFilter {
            limit: 7,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(first.items.len(), 7);
    assert_eq!(first.items[0].session_id, "sess-29", "newest first");
    let mut seen: Vec<String> = first.items.iter().map(|s| s.session_id.clone()).collect();
    let mut before = first.older;
    assert_eq!(first.newer, None, "the newest page has nothing newer");
    while let Some(b) = before {
        let page = q
            .list_sessions(&SessionFilter {
                limit: 7,
                before: Some(b),
                ..Default::default()
            })
            .unwrap();
        seen.extend(page.items.iter().map(|s| s.session_id.clone()));
        assert!(page.newer.is_some(), "every later page leads back");
        before = page.older;
    }
    assert_eq!(seen.len(), 30);
    assert_eq!(seen.last().unwrap(), "sess-0");

    let by_user = q
        .list_sessions(&SessionFilter {
            username: Some("user1".into()),
            limit: 100,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(by_user.items.len(), 10);
    assert!(by_user.items.iter().all(|s| s.username == "user1"));
    assert_eq!(by_user.older, None);
    // Part of the name, in any case.
    let by_part = q
        .list_sessions(&SessionFilter {
            username: Some("SER2".into()),
            limit: 100,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(by_part.items.len(), 10);
    assert!(by_part.items.iter().all(|s| s.username == "user2"));

    let ranged = q
        .list_sessions(&SessionFilter {
            start_from_ms: Some(T0 + 10_000),
            start_to_ms: Some(T0 + 15_000),
            limit: 100,
            ..Default::default()
        })
        .unwrap();
    let ids: Vec<&str> = ranged.items.iter().map(|s| s.session_id.as_str()).collect();
    assert_eq!(ids, ["sess-14", "sess-13", "sess-12", "sess-11", "sess-10"]);

    let text = q
        .list_sessions(&SessionFilter {
            text: Some("SESS-2".into()),
            limit: 100,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(text.items.len(), 11); // sess-2 and sess-20..29
}

/// Sessions registered in another order than they started (an imported recording of last
/// week, a live session): the history is by start, newest first, id breaking ties, and pages
/// both ways give the same sequence.
#[test]
fn history_is_newest_start_first_and_pages_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let q = open(dir.path());
    // Registration order 0..12; start times shuffled, with two pairs in the same ms.
    let starts = [5u64, 1, 9, 3, 3, 11, 0, 7, 7, 2, 10, 4];
    let mut ids = Vec::new();
    for (n, start) in starts.iter().enumerate() {
        let mut s = new_session(n as u32);
        s.start_ms = T0 + start * 60_000;
        ids.push((s.start_ms, q.register_session(&s).unwrap(), s.session_id));
    }
    ids.sort_by_key(|b| std::cmp::Reverse((b.0, b.1)));
    let expected: Vec<String> = ids.iter().map(|(_, _, sid)| sid.clone()).collect();
    let page = |before, after| {
        q.list_sessions(&SessionFilter {
            before,
            after,
            limit: 5,
            ..Default::default()
        })
        .unwrap()
    };
    let names =
        |p: &SessionPage| -> Vec<String> { p.items.iter().map(|s| s.session_id.clone()).collect() };
    let p1 = page(None, None);
    let p2 = page(p1.older, None);
    let p3 = page(p2.older, None);
    let all: Vec<String> = [names(&p1), names(&p2), names(&p3)].concat();
    assert_eq!(all, expected);
    assert_eq!(p3.older, None);
    assert!(
        all.iter().position(|s| s == "sess-4") < all.iter().position(|s| s == "sess-3"),
        "same start: the later registration first"
    );
    // Newer from the last page gives the middle page back, then the first.
    let back2 = page(None, p3.newer);
    assert_eq!(names(&back2), names(&p2));
    let back1 = page(None, back2.newer);
    assert_eq!(names(&back1), names(&p1));
    assert_eq!(back1.newer, None);
    assert_eq!(back1.older, p1.older);
    // A date range walks only its part of the index, same order.
    let ranged = q
        .list_sessions(&SessionFilter {
            start_from_ms: Some(T0 + 3 * 60_000),
            start_to_ms: Some(T0 + 8 * 60_000),
            limit: 50,
            ..Default::default()
        })
        .unwrap();
    let want: Vec<String> = ids
        .iter()
        .filter(|(t, _, _)| (T0 + 3 * 60_000..T0 + 8 * 60_000).contains(t))
        .map(|(_, _, sid)| sid.clone())
        .collect();
    assert_eq!(names(&ranged), want);
}

/// A queue written before the start-time index existed (schema 1) gains it at open.
#[test]
fn schema_1_queue_is_migrated_to_the_start_index() {
    use heed::types::{Bytes, Str, U64};
    let dir = tempfile::tempdir().unwrap();
    {
        let q = open(dir.path());
        for (n, start) in [(0u32, 30u64), (1, 10), (2, 20)] {
            let mut s = new_session(n);
            s.start_ms = T0 + start;
            q.register_session(&s).unwrap();
        }
    }
    // Back to schema 1: no start index, version 1.
    {
        let env = unsafe {
            heed::EnvOpenOptions::new()
                .max_dbs(64)
                .map_size(256 << 20)
                .open(dir.path())
                .unwrap()
        };
        let wtxn = env.write_txn().unwrap();
        let (index, meta) = env
            .create_databases_and_commit(wtxn, |o, w| {
                let index: heed::Database<Bytes, Bytes> =
                    o.create_database(w, Some(db_name::SESSION_BY_START))?;
                let meta: heed::Database<Str, U64<heed::byteorder::BigEndian>> =
                    o.create_database(w, Some(db_name::META))?;
                Ok::<_, heed::Error>(heed::CommitOrAbort::<_, ()>::Commit((index, meta)))
            })
            .unwrap()
            .unwrap_commit();
        let mut wtxn = env.write_txn().unwrap();
        index.clear(&mut wtxn).unwrap();
        meta.put(&mut wtxn, "schema-version", &1).unwrap();
        wtxn.commit().unwrap();
        env.prepare_for_closing().wait();
    }
    let q = open(dir.path());
    let all = q
        .list_sessions(&SessionFilter {
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    let ids: Vec<&str> = all.items.iter().map(|s| s.session_id.as_str()).collect();
    assert_eq!(ids, ["sess-0", "sess-2", "sess-1"]);
    // And the migrated index is kept up to date afterwards.
    let mut s = new_session(3);
    s.start_ms = T0 + 25;
    q.register_session(&s).unwrap();
    let all = q
        .list_sessions(&SessionFilter {
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    let ids: Vec<&str> = all.items.iter().map(|s| s.session_id.as_str()).collect();
    assert_eq!(ids, ["sess-0", "sess-3", "sess-2", "sess-1"]);
}

#[test]
fn audit_pagination_and_filters() {
    let dir = tempfile::tempdir().unwrap();
    let (q, clock) = open_clock(dir.path());
    for n in 0..25u64 {
        clock.set_ms(T0 + n * 1000);
        let (actor, action) = match n % 3 {
            0 => ("alice", AuditAction::Played),
            1 => ("bob", AuditAction::Downloaded),
            _ => ("alice", AuditAction::LoginFailed),
        };
        q.append_audit(&NewAudit {
            actor: actor.into(),
            action,
            target: AuditTarget::Session {
                session_id: format!("sess-{n}"),
            },
            message: format!("{actor} did {action:?} on session sess-{n}"),
        })
        .unwrap();
    }
    // Newest first, pages of 10 with a cursor.
    let p1 = q
        .list_audit(&AuditFilter {
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(p1.items.len(), 10);
    assert_eq!(p1.items[0].seq, 25);
    assert!(p1.items.windows(2).all(|w| w[0].seq > w[1].seq));
    let p2 = q
        .list_audit(&AuditFilter {
            limit: 10,
            before: p1.next_before,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(p2.items[0].seq, 15);
    let p3 = q
        .list_audit(&AuditFilter {
            limit: 10,
            before: p2.next_before,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(p3.items.len(), 5);
    assert_eq!(p3.next_before, None);

    let bob = q
        .list_audit(&AuditFilter {
            actor: Some("bob".into()),
            limit: 100,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(bob.items.len(), 8);
    assert!(
        bob.items
            .iter()
            .all(|e| e.action == AuditAction::Downloaded)
    );

    let failed_logins = q
        .list_audit(&AuditFilter {
            action: Some(AuditAction::LoginFailed),
            from_ms: Some(T0 + 10_000),
            to_ms: Some(T0 + 20_000),
            limit: 100,
            ..Default::default()
        })
        .unwrap();
    let seqs: Vec<u64> = failed_logins.items.iter().map(|e| e.seq).collect();
    // n = 11, 14, 17 (n % 3 == 2 within [10, 20)); seq = n + 1.
    assert_eq!(seqs, [18, 15, 12]);
    assert_eq!(failed_logins.items[0].time_ms, T0 + 17_000);

    let text = q
        .list_audit(&AuditFilter {
            text: Some("SESSION SESS-2".into()),
            limit: 100,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(text.items.len(), 6); // sess-2, sess-20..24

    // Page size is clamped, not an error.
    let huge = q
        .list_audit(&AuditFilter {
            limit: usize::MAX,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(huge.items.len(), 25);

    let long = NewAudit {
        actor: "alice".into(),
        action: AuditAction::Played,
        target: AuditTarget::None,
        message: "x".repeat(session_recorder::limits::QUEUE_TEXT_BYTES_MAX + 1),
    };
    assert!(matches!(
        q.append_audit(&long),
        Err(QueueError::TooLarge { .. })
    ));
}

#[test]
fn accounts() {
    let dir = tempfile::tempdir().unwrap();
    let q = open(dir.path());
    let admin = User {
        name: "admin".into(),
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
        permissions: u64::MAX,
        created_ms: T0,
    };
    q.add_user(&admin, ACTOR_SYSTEM).unwrap();
    assert!(matches!(
        q.add_user(&admin, ACTOR_SYSTEM),
        Err(QueueError::AlreadyExists {
            entity: Entity::User,
            ..
        })
    ));
    let mut changed = admin.clone();
    changed.permissions = 1;
    q.update_user(&changed, "admin").unwrap();
    assert_eq!(q.user("admin").unwrap().unwrap().permissions, 1);

    let token = ApiToken {
        token_hash: "f00d".into(),
        user: "admin".into(),
        label: "ci".into(),
        created_ms: T0,
    };
    q.add_token(&token, "admin").unwrap();
    assert_eq!(q.token("f00d").unwrap().unwrap().user, "admin");
    assert_eq!(q.tokens(Some("admin")).unwrap().len(), 1);
    assert!(matches!(
        q.add_token(
            &ApiToken {
                user: "ghost".into(),
                ..token.clone()
            },
            "admin"
        ),
        Err(QueueError::NotFound {
            entity: Entity::User,
            ..
        })
    ));

    q.put_web_session(&WebSession {
        id_hash: "c00k1e".into(),
        user: "admin".into(),
        created_ms: T0,
        expires_ms: T0 + 1000,
    })
    .unwrap();
    q.put_web_session(&WebSession {
        id_hash: "old".into(),
        user: "admin".into(),
        created_ms: T0 - 5000,
        expires_ms: T0 - 1,
    })
    .unwrap();
    assert!(q.web_session("c00k1e", T0).unwrap().is_some());
    assert!(
        q.web_session("c00k1e", T0 + 1000).unwrap().is_none(),
        "expired"
    );
    assert_eq!(q.purge_web_sessions(T0).unwrap(), 1);
    assert!(q.remove_web_session("c00k1e").unwrap());
    assert!(!q.remove_web_session("c00k1e").unwrap());

    q.add_token(
        &ApiToken {
            token_hash: "beef".into(),
            ..token.clone()
        },
        "admin",
    )
    .unwrap();
    q.put_web_session(&WebSession {
        id_hash: "s2".into(),
        user: "admin".into(),
        created_ms: T0,
        expires_ms: T0 + 1000,
    })
    .unwrap();
    q.remove_user("admin", ACTOR_SYSTEM).unwrap();
    assert!(q.user("admin").unwrap().is_none());
    assert!(
        q.tokens(None).unwrap().is_empty(),
        "tokens go with their user"
    );
    assert!(q.web_session("s2", T0).unwrap().is_none());

    let actions: Vec<AuditAction> = q
        .list_audit(&AuditFilter {
            limit: 100,
            ..Default::default()
        })
        .unwrap()
        .items
        .iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(
        actions,
        [
            AuditAction::UserRemoved,
            AuditAction::TokenCreated,
            AuditAction::TokenCreated,
            AuditAction::UserChanged,
            AuditAction::UserAdded,
        ]
    );
}

/// Environment variable that turns [`child_commit_stream`] into the writer process of
/// [`sigkill_mid_stream_loses_nothing_acknowledged`].
const KILL_CHILD_DIR: &str = "SESSION_RECORDER_QUEUE_KILL_CHILD_DIR";

/// Not a test on its own: a no-op unless [`KILL_CHILD_DIR`] is set, in which case it is the
/// child process that commits a stream of work and prints `ACK <index>` after each
/// acknowledged step, until it is killed.
#[test]
fn child_commit_stream() {
    use std::io::Write;
    let Ok(dir) = std::env::var(KILL_CHILD_DIR) else {
        return;
    };
    let q = open(std::path::Path::new(&dir));
    let s = q.register_session(&new_session(1)).unwrap();
    let mut out = std::io::stdout().lock();
    // Bounded so an orphaned child ends by itself.
    for index in 0..100_000u32 {
        let seg = q.register_segment(&new_segment(s, index, true)).unwrap();
        let job = q
            .next_segment_to_encode()
            .unwrap()
            .expect("a sealed segment");
        assert_eq!(job.id, seg);
        q.finish_encoding(seg, &[new_clip(seg, 0)]).unwrap();
        q.append_audit(&NewAudit {
            actor: ACTOR_SYSTEM.into(),
            action: AuditAction::Played,
            target: AuditTarget::Segment { segment: seg },
            message: format!("ack {index}"),
        })
        .unwrap();
        writeln!(out, "ACK {index} {seg}").unwrap();
        out.flush().unwrap();
    }
}

#[test]
fn sigkill_mid_stream_loses_nothing_acknowledged() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "queue::child_commit_stream",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(KILL_CHILD_DIR, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut acked: Vec<(u32, u64)> = Vec::new();
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.unwrap();
        let Some(rest) = line.strip_prefix("ACK ") else {
            continue;
        };
        let mut parts = rest.split(' ');
        let index: u32 = parts.next().unwrap().parse().unwrap();
        let seg: u64 = parts.next().unwrap().parse().unwrap();
        acked.push((index, seg));
        if acked.len() == 150 {
            // SIGKILL (std's Child::kill sends SIGKILL on Unix) while it keeps committing.
            child.kill().unwrap();
            break;
        }
    }
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "child should have been killed: {status:?}"
    );
    assert_eq!(
        acked.len(),
        150,
        "child died before acknowledging enough work"
    );

    let q = open(dir.path());
    let session = q.session_by_external("sess-1").unwrap().unwrap();
    // Every acknowledged step is there, complete.
    for (index, seg) in &acked {
        let s = q
            .segment_at(session.id, *index)
            .unwrap()
            .expect("acknowledged segment lost");
        assert_eq!(s.id, *seg);
        assert_eq!(s.state, SegmentState::Encoded);
    }
    // Nothing is duplicated or half-written: indexes are contiguous, the session counter
    // matches, each segment has at most one clip, and the indexes agree with the records.
    let segments = q.segments_of_session(session.id).unwrap();
    assert!(segments.len() >= acked.len());
    for (i, s) in segments.iter().enumerate() {
        assert_eq!(s.index as usize, i);
    }
    assert_eq!(session.segment_count as usize, segments.len());
    let clips = q.clips_of_session(session.id).unwrap();
    let mut clip_segments: Vec<u64> = clips.iter().map(|c| c.segment).collect();
    clip_segments.dedup();
    assert_eq!(
        clip_segments.len(),
        clips.len(),
        "duplicate clip for a segment"
    );
    let rec = q.recover().unwrap();
    assert!(rec.segments_requeued <= 1, "{rec:?}");
    let counts = q.counts().unwrap();
    assert_eq!(
        counts.segments.sealed + counts.segments.encoded,
        segments.len() as u64
    );
    assert_eq!(counts.segments.encoded as usize, clips.len());
    assert_eq!(counts.clips.ready as usize, clips.len());
    // The queue keeps working after the crash.
    let next = q
        .register_segment(&new_segment(session.id, segments.len() as u32, true))
        .unwrap();
    assert!(next > segments.last().unwrap().id);
}

#[test]
fn map_full_grows_then_errors_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let options = QueueOptions {
        dir: dir.path().to_path_buf(),
        map_bytes_initial: 256 << 10,
        map_bytes_max: 1 << 20,
    };
    let clock = Arc::new(ManualClock::new(T0));
    let q = Queue::open(&options, clock.clone()).unwrap();
    assert_eq!(q.map_bytes(), 256 << 10);
    let entry = |n: u32| NewAudit {
        actor: "alice".into(),
        action: AuditAction::Played,
        target: AuditTarget::None,
        message: format!("{n:05} {}", "x".repeat(3000)),
    };
    let mut written = 0u32;
    let err = loop {
        match q.append_audit(&entry(written)) {
            Ok(_) => written += 1,
            Err(e) => break e,
        }
        assert!(written < 10_000, "a 1 MiB map cannot hold 30 MB of audit");
    };
    assert!(matches!(err, QueueError::Full { .. }), "{err:?}");
    assert!(err.is_transient(), "Full means refuse new work for now");
    assert_eq!(q.map_bytes(), 1 << 20, "the map grew to its maximum first");
    assert!(written > 100, "only {written} entries fit");
    // Still readable, nothing acknowledged is lost, and small writes that fit still fail
    // cleanly or succeed; no panic.
    let page = q
        .list_audit(&AuditFilter {
            limit: 1,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(page.items[0].seq, u64::from(written));
    let _ = q.register_session(&new_session(1));
    drop(q);
    // With a larger maximum the same queue accepts work again.
    let bigger = QueueOptions {
        map_bytes_max: 4 << 20,
        ..options
    };
    let q = Queue::open(&bigger, clock).unwrap();
    q.append_audit(&entry(written)).unwrap();
    assert!(q.map_bytes() > 1 << 20);
}

/// Writes raw bytes under a u64 key of one queue database, behind the queue's back.
fn poke_raw(dir: &std::path::Path, db: &str, key: u64, value: &[u8]) {
    use heed::types::Bytes;
    let env = unsafe {
        heed::EnvOpenOptions::new()
            .max_dbs(64)
            .map_size(256 << 20)
            .open(dir)
            .unwrap()
    };
    let wtxn = env.write_txn().unwrap();
    let raw: heed::Database<Bytes, Bytes> = env
        .create_databases_and_commit(wtxn, |o, w| {
            o.create_database(w, Some(db))
                .map(heed::CommitOrAbort::<_, ()>::Commit)
        })
        .unwrap()
        .unwrap_commit();
    let mut wtxn = env.write_txn().unwrap();
    raw.put(&mut wtxn, &key.to_be_bytes(), value).unwrap();
    wtxn.commit().unwrap();
}

#[test]
fn corrupt_and_unknown_version_records_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (bad, future, good, seg, busy, clips) = {
        let q = open(dir.path());
        let bad = q.register_session(&new_session(1)).unwrap();
        let future = q.register_session(&new_session(2)).unwrap();
        let other = q.register_session(&new_session(4)).unwrap();
        let busy = q.register_segment(&new_segment(other, 0, true)).unwrap();
        assert_eq!(q.next_segment_to_encode().unwrap().unwrap().id, busy);
        let clips = [
            q.register_clip(&new_clip(busy, 0)).unwrap(),
            q.register_clip(&new_clip(busy, 1)).unwrap(),
        ];
        let good = q.register_session(&new_session(3)).unwrap();
        let seg = q.register_segment(&new_segment(good, 0, true)).unwrap();
        (bad, future, good, seg, busy, clips)
    };
    // A truncated V1 record, a record from a newer build (variant 3 = V4), a damaged segment.
    poke_raw(dir.path(), db_name::SESSIONS, bad, &[0, 3, b'a']);
    poke_raw(dir.path(), db_name::SESSIONS, future, &[3, 1, 2, 3]);
    poke_raw(dir.path(), db_name::SEGMENTS, seg, &[0xff, 0xff]);
    poke_raw(dir.path(), db_name::SEGMENTS, busy, &[0]);
    poke_raw(dir.path(), db_name::CLIPS, clips[0], &[0, 1]);

    let q = open(dir.path());
    match q.session(bad).unwrap_err() {
        QueueError::Corrupt { db, key } => {
            assert_eq!(db, db_name::SESSIONS);
            assert_eq!(key, bad.to_string());
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    match q.session(future).unwrap_err() {
        QueueError::UnknownVersion { db, version, .. } => {
            assert_eq!(db, db_name::SESSIONS);
            assert_eq!(version, 3);
        }
        other => panic!("expected UnknownVersion, got {other:?}"),
    }
    assert!(!q.session(bad).unwrap_err().is_transient());
    // Listings log and skip what they cannot read.
    let page = q
        .list_sessions(&SessionFilter {
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(page.items.len(), 2);
    assert_eq!(page.items[0].session_id, "sess-4", "newest start first");
    assert_eq!(page.items[1].id, good);
    assert!(q.segments_of_session(good).unwrap().is_empty());
    // Work pulling skips the damaged segment instead of failing every tick.
    assert!(q.next_segment_to_encode().unwrap().is_none());
    let err = q
        .transition_segment(
            seg,
            SegmentStateKind::Sealed,
            SegmentState::Encoding,
            &SegmentPatch::default(),
        )
        .unwrap_err();
    assert!(matches!(err, QueueError::Corrupt { .. }), "{err:?}");
    // Start-up recovery still works: the unreadable in-flight segment is reported, not fatal.
    let rec = q.recover().unwrap();
    assert_eq!(rec.unreadable, 1);
    assert_eq!(q.counts().unwrap().segments.sealed, 1);
    // The upload queue skips the damaged clip and hands out the next one.
    assert_eq!(q.next_clip_to_upload(T0).unwrap().unwrap().id, clips[1]);
    assert!(q.next_clip_to_upload(T0).unwrap().is_none());
}

#[test]
fn oversized_fields_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let q = open(dir.path());
    let mut s = new_session(1);
    s.session_id = "s".repeat(session_recorder::limits::QUEUE_NAME_BYTES_MAX + 1);
    assert!(matches!(
        q.register_session(&s),
        Err(QueueError::TooLarge { .. })
    ));
    let id = q.register_session(&new_session(1)).unwrap();
    let seg = q.register_segment(&new_segment(id, 0, true)).unwrap();
    q.next_segment_to_encode().unwrap();
    // A long failure reason is truncated, not refused: the state change matters more.
    let reason = "é".repeat(session_recorder::limits::QUEUE_TEXT_BYTES_MAX);
    let failed = q
        .transition_segment(
            seg,
            SegmentStateKind::Encoding,
            SegmentState::Failed { reason },
            &SegmentPatch::default(),
        )
        .unwrap();
    match failed.state {
        SegmentState::Failed { reason } => {
            assert!(reason.len() <= session_recorder::limits::QUEUE_TEXT_BYTES_MAX);
            assert!(reason.starts_with('é'));
        }
        other => panic!("{other:?}"),
    }
}

/// Start-up recovery with 10,000 queued segments (950 of them interrupted in `Encoding`,
/// 200 clips interrupted in `Uploading`), and single-record commit throughput. Prints figures;
/// asserts only correctness. Run with `scripts/bench-queue`.
#[test]
#[ignore = "benchmark: run scripts/bench-queue"]
fn bench_recovery_10k_segments() {
    use std::time::Instant;
    const SESSIONS: u32 = 1000;
    const PER_SESSION: u32 = 10;
    const ENCODED: u32 = 500;
    let dir = tempfile::tempdir().unwrap();
    let setup = Instant::now();
    {
        let q = open(dir.path());
        let mut batch = Vec::new();
        for n in 0..SESSIONS {
            let s = q.register_session(&new_session(n)).unwrap();
            batch.extend((0..PER_SESSION).map(|i| new_segment(s, i, true)));
        }
        for chunk in batch.chunks(1000) {
            q.register_segments(chunk).unwrap();
        }
        // 1,000 single-record commits: 500 segments pulled and finished with 2 clips each
        // (sessions 0..49 complete), then every segment that is ready (segment 0 of the other
        // 950 sessions) pulled and left in Encoding.
        let t = Instant::now();
        for _ in 0..ENCODED {
            let job = q.next_segment_to_encode().unwrap().unwrap();
            q.finish_encoding(job.id, &[new_clip(job.id, 0), new_clip(job.id, 1)])
                .unwrap();
        }
        let pairs = t.elapsed();
        println!(
            "bench single-record commits: {} commits in {:?} = {:.0} commits/s",
            2 * ENCODED,
            pairs,
            f64::from(2 * ENCODED) / pairs.as_secs_f64()
        );
        let t = Instant::now();
        let mut pulled = 0u32;
        while q.next_segment_to_encode().unwrap().is_some() {
            pulled += 1;
        }
        let pulls = t.elapsed();
        println!(
            "bench next_segment_to_encode with ~9,500 queued: {pulled} pulls in {pulls:?} = {:.0}/s",
            f64::from(pulled) / pulls.as_secs_f64()
        );
        assert_eq!(pulled, SESSIONS - ENCODED / PER_SESSION);
        let t = Instant::now();
        for _ in 0..200 {
            q.next_clip_to_upload(T0).unwrap().unwrap();
        }
        println!("bench next_clip_to_upload: 200 pulls in {:?}", t.elapsed());
        let c = q.counts().unwrap();
        assert_eq!(c.segments.encoding, u64::from(pulled));
        assert_eq!(c.clips.uploading, 200);
        // Crash: drop with work in flight.
    }
    println!("bench setup total {:?}", setup.elapsed());

    let t0 = Instant::now();
    let q = open(dir.path());
    let t_open = t0.elapsed();
    let rec = q.recover().unwrap();
    let t_recover = t0.elapsed();
    let counts = q.counts().unwrap();
    let t_counts = t0.elapsed();
    println!(
        "bench open+recover+counts: open {t_open:?}, +recover {:?}, +counts {:?}, total {t_counts:?}",
        t_recover - t_open,
        t_counts - t_recover
    );
    assert_eq!(
        rec.segments_requeued,
        u64::from(SESSIONS - ENCODED / PER_SESSION)
    );
    assert_eq!(rec.clips_requeued, 200);
    assert_eq!(counts.segments.encoded, u64::from(ENCODED));
    assert_eq!(
        counts.segments.sealed,
        u64::from(SESSIONS * PER_SESSION - ENCODED)
    );
    let t = Instant::now();
    for _ in 0..100 {
        q.counts().unwrap();
    }
    println!("bench counts(): {:?} per call", t.elapsed() / 100);
    let t = Instant::now();
    let page = q
        .list_sessions(&SessionFilter {
            text: Some("no such text".into()),
            limit: 50,
            ..Default::default()
        })
        .unwrap();
    assert!(page.items.is_empty());
    println!(
        "bench list_sessions full text scan of {SESSIONS} sessions: {:?}",
        t.elapsed()
    );
    let file = std::fs::metadata(dir.path().join("data.mdb"))
        .unwrap()
        .len();
    println!("bench data.mdb size {} KiB", file / 1024);
}

#[test]
fn audit_note_overrides_default_wording() {
    let dir = tempfile::tempdir().unwrap();
    let q = open(dir.path());
    let s = q.register_session(&new_session(1)).unwrap();
    let seg = q.register_segment(&new_segment(s, 0, false)).unwrap();
    let note = AuditNote {
        actor: "admin".into(),
        message: "Recording sess-1 part 0 quarantined by admin".into(),
    };
    q.transition_segment(
        seg,
        SegmentStateKind::Writing,
        SegmentState::Quarantined {
            reason: "manual".into(),
        },
        &SegmentPatch {
            audit: Some(note.clone()),
            ..Default::default()
        },
    )
    .unwrap();
    let page = q
        .list_audit(&AuditFilter {
            actor: Some("admin".into()),
            limit: 5,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.items[0].message, note.message);
    assert_eq!(page.items[0].action, AuditAction::QuarantinedSegment);
    // An operator releases it: Quarantined -> Sealed, and it becomes encodable.
    q.transition_segment(
        seg,
        SegmentStateKind::Quarantined,
        SegmentState::Sealed,
        &SegmentPatch::default(),
    )
    .unwrap();
    assert_eq!(q.next_segment_to_encode().unwrap().unwrap().id, seg);
}

// ---- retention: raw segments and the purge of old history and audit ----

/// A session with `segments` segments, each encoded with one clip; clips of the first
/// `uploaded` segments confirmed in the bucket. Returns (session, segment ids, clip ids).
fn encoded_session(q: &Queue, n: u32, segments: u32, uploaded: u32) -> (u64, Vec<u64>, Vec<u64>) {
    let s = q.register_session(&new_session(n)).unwrap();
    let (mut segs, mut clips) = (Vec::new(), Vec::new());
    for i in 0..segments {
        let seg = q.register_segment(&new_segment(s, i, true)).unwrap();
        let job = q.next_segment_to_encode().unwrap().expect("in order");
        assert_eq!(job.id, seg);
        clips.extend(q.finish_encoding(seg, &[new_clip(seg, 0)]).unwrap());
        segs.push(seg);
    }
    for &c in clips.iter().take(uploaded as usize) {
        let got = q.next_clip_to_upload(T0 + 10_000_000).unwrap().unwrap();
        assert_eq!(got.id, c);
        let patch = ClipPatch {
            object_key: Some(format!("k/{c}")),
            audit: None,
        };
        q.transition_clip(c, ClipStateKind::Uploading, ClipState::Uploaded, &patch)
            .unwrap();
    }
    (s, segs, clips)
}

#[test]
fn raw_segments_are_offered_only_when_confirmed_and_not_needed_by_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let (q, clock) = open_clock(dir.path());
    // Live session: 2 segments, both clips up. The last one is needed by the next segment.
    let (live, live_segs, _) = encoded_session(&q, 1, 2, 2);
    // Closed session: 2 segments, only the first clip up.
    let (closed, closed_segs, _) = encoded_session(&q, 2, 2, 1);
    q.transition_session(closed, SessionState::Live, SessionState::Closed, Some(T0))
        .unwrap();
    clock.advance_ms(5_000);
    let page = q.raw_segments_after(0, 100).unwrap();
    assert_eq!(page.next_after, None);
    let by_id = |id: u64| page.items.iter().find(|r| r.segment.id == id).unwrap();
    assert!(by_id(live_segs[0]).confirmed_ms.is_some());
    assert!(
        !by_id(live_segs[0]).needed_by_next,
        "its successor is encoded"
    );
    assert!(by_id(live_segs[1]).confirmed_ms.is_some());
    assert!(
        by_id(live_segs[1]).needed_by_next,
        "last segment of a live session"
    );
    assert!(by_id(closed_segs[0]).confirmed_ms.is_some());
    assert!(!by_id(closed_segs[0]).needed_by_next);
    assert_eq!(
        by_id(closed_segs[1]).confirmed_ms,
        None,
        "its clip is not up"
    );
    assert!(
        !by_id(closed_segs[1]).needed_by_next,
        "session closed: nothing follows"
    );
    // Paging: one at a time, in id order, ending with no cursor.
    let mut after = 0;
    let mut seen = Vec::new();
    loop {
        let p = q.raw_segments_after(after, 1).unwrap();
        seen.extend(p.items.iter().map(|r| r.segment.id));
        match p.next_after {
            Some(a) => after = a,
            None => break,
        }
    }
    assert_eq!(seen.len(), 4);
    assert!(seen.windows(2).all(|w| w[0] < w[1]));
    let _ = live;
}

#[test]
fn purge_removes_old_closed_sessions_with_every_index_and_audits_itself() {
    let dir = tempfile::tempdir().unwrap();
    let (q, clock) = open_clock(dir.path());
    let (old, _, old_clips) = encoded_session(&q, 1, 2, 2);
    q.transition_session(
        old,
        SessionState::Live,
        SessionState::Closed,
        Some(T0 + 1_000),
    )
    .unwrap();
    // Old but live.
    let (live, _, _) = encoded_session(&q, 3, 1, 1);
    // Recent and closed.
    let (recent, _, _) = encoded_session(&q, 4, 1, 1);
    q.transition_session(
        recent,
        SessionState::Live,
        SessionState::Closed,
        Some(T0 + 9_000_000),
    )
    .unwrap();
    // Old but busy: a clip still waiting for its upload (made last: uploads are FIFO).
    let (busy, _, _) = encoded_session(&q, 2, 1, 0);
    q.transition_session(
        busy,
        SessionState::Live,
        SessionState::Closed,
        Some(T0 + 1_000),
    )
    .unwrap();
    let before = q.counts().unwrap();
    clock.set_ms(T0 + 10_000_000);
    let cutoff = T0 + 5_000_000;
    let msg = |p: &PurgedHistory| format!("System purged {} sessions", p.sessions);
    let mut after = 0;
    let mut total = PurgedHistory::default();
    loop {
        let b = q.purge_history(cutoff, after, &msg).unwrap();
        total.sessions += b.sessions;
        total.segments += b.segments;
        total.clips += b.clips;
        total.busy += b.busy;
        total.files.extend(b.files);
        match b.next_after {
            Some(a) => after = a,
            None => break,
        }
    }
    assert_eq!(
        (total.sessions, total.segments, total.clips, total.busy),
        (1, 2, 2, 1)
    );
    // The records are gone, and so is every index entry: counts, lookups, listings.
    assert!(q.session(old).unwrap().is_none());
    assert!(q.session_by_external("sess-1").unwrap().is_none());
    assert!(q.segments_of_session(old).unwrap().is_empty());
    assert!(q.clips_of_session(old).unwrap().is_empty());
    for c in &old_clips {
        assert!(q.clip(*c).unwrap().is_none());
    }
    let after_counts = q.counts().unwrap();
    assert_eq!(after_counts.sessions.closed, before.sessions.closed - 1);
    assert_eq!(after_counts.segments.encoded, before.segments.encoded - 2);
    assert_eq!(after_counts.clips.uploaded, before.clips.uploaded - 2);
    for keep in [busy, live, recent] {
        assert!(q.session(keep).unwrap().is_some(), "session {keep} kept");
    }
    // The files the records pointed to are returned for deletion (2 segments, 2 MP4, 2 JPEG).
    assert_eq!(total.files.len(), 6, "{:?}", total.files);
    // A purged external id can be registered again as a new session.
    let again = q.register_session(&new_session(1)).unwrap();
    assert_ne!(again, old);
    // Audited, in the same transaction: one entry, by the system, with the caller's words.
    let page = q
        .list_audit(&AuditFilter {
            action: Some(AuditAction::Purged),
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.items[0].actor, ACTOR_SYSTEM);
    assert_eq!(page.items[0].message, "System purged 1 sessions");
    // Nothing left to purge: a second pass writes no audit entry.
    let b = q.purge_history(cutoff, 0, &msg).unwrap();
    assert_eq!((b.sessions, b.audit_seq), (0, None));
}

#[test]
fn purge_drops_finished_manifest_filings_and_keeps_sessions_owing_a_manifest_step() {
    let dir = tempfile::tempdir().unwrap();
    let (q, clock) = open_clock(dir.path());
    let filed = |version: u64, key: &str| ManifestVersion {
        version,
        key: key.into(),
        is_final: true,
    };
    let (done, _, _) = encoded_session(&q, 1, 1, 1);
    let (owing, _, _) = encoded_session(&q, 2, 1, 1);
    for s in [done, owing] {
        q.transition_session(
            s,
            SessionState::Live,
            SessionState::Closed,
            Some(T0 + 1_000),
        )
        .unwrap();
    }
    q.intend_manifest(done, &filed(3, "m/1-done-v3")).unwrap();
    q.manifest_filed(done, "m/1-done-v3").unwrap();
    // A crash between the intent and its confirmation: the put is owed.
    q.intend_manifest(owing, &filed(3, "m/1-owing-v3")).unwrap();
    clock.set_ms(T0 + 10_000_000);
    let msg = |p: &PurgedHistory| format!("System purged {} sessions", p.sessions);
    let b = q.purge_history(T0 + 5_000_000, 0, &msg).unwrap();
    assert_eq!((b.sessions, b.busy), (1, 1));
    assert!(q.session(done).unwrap().is_none());
    assert_eq!(
        q.manifest_filing(done).unwrap(),
        None,
        "the filing went with it"
    );
    assert!(
        q.session(owing).unwrap().is_some(),
        "its manifest step is in flight"
    );
    assert_eq!(q.unfinished_manifest_filings(10).unwrap(), vec![owing]);
    // Once the step is done, the session goes too, and no unfinished entry is left behind.
    q.manifest_filed(owing, "m/1-owing-v3").unwrap();
    let b = q.purge_history(T0 + 5_000_000, 0, &msg).unwrap();
    assert_eq!((b.sessions, b.busy), (1, 0));
    assert_eq!(q.manifest_filing(owing).unwrap(), None);
    assert!(q.unfinished_manifest_filings(10).unwrap().is_empty());
    // A purged session gets no new filing.
    let gone = q.intend_manifest(owing, &filed(5, "m/2-owing-v5"));
    assert!(matches!(gone, Err(QueueError::NotFound { .. })), "{gone:?}");
}

#[test]
fn audit_purge_deletes_oldest_first_in_bounded_batches() {
    let dir = tempfile::tempdir().unwrap();
    let (q, clock) = open_clock(dir.path());
    let entry = |i: u32| NewAudit {
        actor: "admin".into(),
        action: AuditAction::Login,
        target: AuditTarget::None,
        message: format!("User admin logged in ({i})"),
    };
    for i in 0..1_500u32 {
        q.append_audit(&entry(i)).unwrap();
        clock.advance_ms(1_000);
    }
    let cutoff = T0 + 1_200 * 1_000; // entries 0..1199 are older
    let msg = |p: &PurgedAudit| format!("System purged {} audit entries", p.entries);
    let first = q.purge_audit(cutoff, &msg).unwrap();
    assert_eq!(
        first.entries,
        session_recorder::limits::PURGE_AUDIT_PER_TXN_MAX as u64
    );
    assert!(first.more);
    assert_eq!(first.oldest_ms, Some(T0));
    let second = q.purge_audit(cutoff, &msg).unwrap();
    assert_eq!(first.entries + second.entries, 1_200);
    assert!(!second.more);
    let all = q
        .list_audit(&AuditFilter {
            limit: 500,
            ..Default::default()
        })
        .unwrap();
    // 300 recent entries and the two entries about the purges.
    assert_eq!(all.items.len(), 302);
    assert!(all.items.iter().all(|a| a.time_ms >= cutoff));
    let purges: Vec<_> = all
        .items
        .iter()
        .filter(|a| a.action == AuditAction::Purged)
        .map(|a| a.message.clone())
        .collect();
    assert_eq!(
        purges,
        [
            format!("System purged {} audit entries", second.entries),
            format!("System purged {} audit entries", first.entries)
        ]
    );
    // The purge's own entries are new: a third pass finds nothing.
    assert_eq!(q.purge_audit(cutoff, &msg).unwrap().entries, 0);
}

/// Benchmark (scripts/bench-queue): purge batches at 1M records. 333,334 closed sessions with
/// one segment and one clip each (1M records, plus 333,334 audit entries), half of them past
/// the cut-off; figures per write transaction.
#[test]
#[ignore]
fn bench_purge_at_1m_records() {
    use std::time::Instant;
    const SESSIONS: u64 = 333_334;
    let dir = tempfile::tempdir().unwrap();
    let (q, clock) = open_clock(dir.path());
    let t = Instant::now();
    q.fill_for_bench(SESSIONS, T0, 60_000).unwrap();
    println!(
        "bench fill {SESSIONS} sessions (x3 records + audit) in {:?}",
        t.elapsed()
    );
    let cutoff = T0 + SESSIONS / 2 * 60_000;
    clock.set_ms(T0 + SESSIONS * 60_000);
    let msg = |p: &PurgedHistory| format!("System purged {} sessions", p.sessions);
    let mut txn_us = Vec::new();
    let mut work_us = Vec::new();
    let mut call_us = Vec::new();
    let mut after = 0;
    let mut purged = 0;
    // 200 batches are enough for stable figures.
    for _ in 0..200 {
        let t = Instant::now();
        let b = q.purge_history(cutoff, after, &msg).unwrap();
        call_us.push(t.elapsed().as_micros() as u64);
        if b.sessions > 0 {
            txn_us.push(b.write_txn_us);
            work_us.push(b.work_us);
        }
        purged += b.sessions;
        after = b.next_after.unwrap_or(0);
    }
    let stats = |v: &mut Vec<u64>| {
        v.sort_unstable();
        (v[v.len() / 2], v[v.len() * 99 / 100], v[v.len() - 1])
    };
    let (p50, p99, max) = stats(&mut txn_us);
    let (c50, c99, cmax) = stats(&mut call_us);
    let (w50, w99, wmax) = stats(&mut work_us);
    println!(
        "bench purge_history: work inside the txn (before commit) p50 {w50} us, p99 {w99} us, \
         max {wmax} us"
    );
    println!(
        "bench purge_history: {purged} sessions in {} batches of {}; write txn (commit \
         included) p50 {p50} us, p99 {p99} us, max {max} us; whole call (scan + txn) p50 {c50} us, \
         p99 {c99} us, max {cmax} us",
        txn_us.len(),
        session_recorder::limits::PURGE_SESSIONS_PER_TXN_MAX
    );
    let amsg = |p: &PurgedAudit| format!("System purged {} audit entries", p.entries);
    let mut audit_us = Vec::new();
    let mut audit_work_us = Vec::new();
    for _ in 0..100 {
        let b = q.purge_audit(cutoff, &amsg).unwrap();
        audit_us.push(b.write_txn_us);
        audit_work_us.push(b.work_us);
    }
    let (a50, a99, amax) = stats(&mut audit_us);
    let (aw50, aw99, awmax) = stats(&mut audit_work_us);
    println!(
        "bench purge_audit: work inside the txn (before commit) p50 {aw50} us, p99 {aw99} us, \
         max {awmax} us"
    );
    println!(
        "bench purge_audit: batches of {}; write txn (commit included) p50 {a50} us, p99 {a99} \
         us, max {amax} us",
        session_recorder::limits::PURGE_AUDIT_PER_TXN_MAX
    );
    let file = std::fs::metadata(dir.path().join("data.mdb"))
        .unwrap()
        .len();
    println!("bench data.mdb size {} MiB", file >> 20);
    assert!(purged > 0);
}
