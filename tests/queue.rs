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
