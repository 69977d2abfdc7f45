//! Integration tests of the OCR job on a real recording: the screen text of a shared terminal
//! recording is read, written as `<clip>.ocr.events.json` in the events format, and holds
//! words known to be on its screen at offsets inside the clip. Needs `tesseract` with the
//! English model (scripts/install-deps installs it; without it the test says so and skips).

use crate::util;

use session_recorder::events::{EventDetail, format};
use session_recorder::ocr::OcrError;
use session_recorder::ocr::tesseract::Tesseract;
use session_recorder::ocr::worker::{OcrJob, ocr_events_path, read_clip};

fn tesseract_or_skip() -> Option<Tesseract> {
    let t = Tesseract::default();
    match t.check() {
        Ok(()) => Some(t),
        Err(OcrError::TesseractMissing) => {
            eprintln!("SKIPPED: tesseract is not installed (scripts/install-deps installs it)");
            None
        }
        Err(e) => panic!("tesseract is installed but unusable: {e}"),
    }
}

#[test]
fn the_ocr_job_finds_known_words_on_a_terminal_recording() {
    let Some(tesseract) = tesseract_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let clip = dir.path().join("1.mp4");
    let job = OcrJob {
        clip: 0,
        segment_path: util::shared_dir().join("recordings/ssh-green-800x600.guac"),
        start_state_path: None,
        clip_path: clip.clone(),
    };
    let mut yields = 0;
    let (path, report) = read_clip(&job, &tesseract, &mut || yields += 1).expect("read clip");
    assert_eq!(path, ocr_events_path(&clip));
    assert!(
        yields >= 1,
        "the job offers to yield before Tesseract calls"
    );
    let stored = format::from_bytes(&std::fs::read(&path).expect("events object"))
        .expect("a valid events object");
    assert_eq!(stored.events, report.events);
    let mut text = String::new();
    for e in &stored.events {
        assert!(
            e.offset_ms < 46_000,
            "offset {} inside the clip",
            e.offset_ms
        );
        let EventDetail::ScreenText { text: t, region } = &e.detail else {
            panic!("only screen text: {e:?}");
        };
        assert!(region[0] + region[2] <= 800 && region[1] + region[3] <= 600);
        text.push_str(t);
        text.push('\n');
    }
    for word in [
        "Debian",
        "WARRANTY",
        "ghostscript",
        "gitconfig",
        "uucp",
        "guactest@vm",
    ] {
        assert!(text.contains(word), "{word:?} not read; read:\n{text}");
    }
    let repeats = text.lines().filter(|l| l.contains("uname -a; id")).count();
    assert_eq!(
        repeats, 1,
        "a line still on screen is reported once:\n{text}"
    );
}

#[test]
fn a_missing_tesseract_is_a_clear_transient_error() {
    use session_recorder::error::Classify;
    let t = Tesseract::new("/nonexistent/tesseract");
    let e = t.check().expect_err("no such program");
    assert!(matches!(e, OcrError::TesseractMissing), "{e:?}");
    assert!(e.is_transient(), "installing it heals it");
    assert!(e.to_string().contains("apt-get install tesseract-ocr"));
}

mod queue_work {
    //! The OCR work in the queue and its wiring (`app::ocr_worker::QueueOcrSource`): marked
    //! with the clip, read, uploaded (owing the manifest again), failed, dropped when the disk
    //! is low, redone after a crash.

    use std::path::Path;
    use std::sync::Arc;

    use session_recorder::app::ocr_worker::{OCR_DROPPED_REASON, QueueOcrSource};
    use session_recorder::clock::ManualClock;
    use session_recorder::disk::DiskState;
    use session_recorder::lifecycle::{Heartbeats, Shutdown};
    use session_recorder::ocr::worker::{OcrSource, OcrWorker, Tick};
    use session_recorder::queue::*;
    use session_recorder::status::StatusBoard;

    const T0: u64 = 1_700_000_000_000;

    fn open(dir: &Path) -> Queue {
        Queue::open(
            &QueueOptions::new(dir.join("queue")),
            Arc::new(ManualClock::new(T0)),
        )
        .unwrap()
    }

    /// One session with one encoded segment at `segment_path` and its clip; returns
    /// (session, segment, clip).
    fn encoded_clip(q: &Queue, segment_path: &Path, clips: &Path) -> (u64, u64, u64) {
        let s = q
            .register_session(&NewSession {
                session_id: "sess-ocr".into(),
                user_id: "uid".into(),
                username: "user".into(),
                image_friendly_name: "Terminal".into(),
                protocol: "ssh".into(),
                target: String::new(),
                client_addr: String::new(),
                start_ms: T0,
            })
            .unwrap();
        let seg = q
            .register_segments(&[NewSegment {
                session: s,
                index: 0,
                path: segment_path.to_owned(),
                bytes: 1000,
                first_sync_ms: None,
                last_sync_ms: None,
                sealed: true,
            }])
            .unwrap()[0];
        q.transition_session(
            s,
            SessionState::Live,
            SessionState::Closed,
            Some(T0 + 60_000),
        )
        .unwrap();
        let taken = q
            .next_segment_to_encode()
            .unwrap()
            .expect("segment to encode");
        assert_eq!(taken.id, seg);
        let clip = NewClip {
            segment: seg,
            index: 0,
            path: clips.join("1.mp4"),
            thumb_path: None,
            bytes: 5000,
            sha256: "ab".repeat(32),
            duration_ms: 60_000,
            start_ms: T0,
            end_ms: T0 + 60_000,
            object_key: None,
            events: None,
        };
        let id = q.finish_encoding(seg, &[clip]).unwrap()[0];
        (s, seg, id)
    }

    fn upload_clip(q: &Queue, clip: u64) {
        let taken = q
            .next_clip_to_upload(T0 + 1)
            .unwrap()
            .expect("clip to upload");
        assert_eq!(taken.id, clip);
        let patch = ClipPatch {
            object_key: Some("u/s/1.mp4".into()),
            audit: None,
        };
        q.transition_clip(clip, ClipStateKind::Uploading, ClipState::Uploaded, &patch)
            .unwrap();
    }

    fn pay_owed_manifests(q: &Queue) -> usize {
        let mut paid = 0;
        while let OwedNext::Due(owed) = q.next_owed_manifest(u64::MAX / 2).unwrap() {
            q.manifest_paid(&owed).unwrap();
            paid += 1;
        }
        paid
    }

    fn needed_by_ocr(q: &Queue) -> bool {
        q.raw_segments_after(0, 10).unwrap().items[0].needed_by_ocr
    }

    #[test]
    fn a_clip_is_marked_read_uploaded_and_its_upload_owes_the_manifest_again() {
        let dir = tempfile::tempdir().unwrap();
        let q = open(dir.path());
        q.set_ocr_wanted(true);
        let (session, _, clip) = encoded_clip(&q, &dir.path().join("0.guac"), dir.path());
        let task = q.next_ocr_task(T0).unwrap().expect("an OCR task");
        assert_eq!(task.work.clip, clip);
        assert_eq!(task.previous_segment_path, None);
        assert!(needed_by_ocr(&q), "the raw segment waits for its OCR");

        // A crash right after the write: nothing changed, the clip is read again.
        q.set_failpoint(Some(Failpoint::AfterOcrWrite));
        let path = dir.path().join("1.ocr.events.json");
        assert!(q.ocr_read(clip, path.clone(), "cd".repeat(32), 77).is_err());
        drop(q);
        let q = open(dir.path());
        assert_eq!(
            q.next_ocr_task(T0).unwrap().expect("redone").work.clip,
            clip
        );
        q.ocr_read(clip, path.clone(), "cd".repeat(32), 77).unwrap();
        assert!(
            q.ocr_read(clip, path, "cd".repeat(32), 77).is_err(),
            "read once"
        );
        assert_eq!(q.next_ocr_task(T0).unwrap(), None);
        assert!(!needed_by_ocr(&q));

        // Its upload waits for the clip's.
        assert_eq!(q.next_ocr_upload(T0 + 1).unwrap(), None);
        upload_clip(&q, clip);
        pay_owed_manifests(&q);
        let up = q
            .next_ocr_upload(T0 + 1)
            .unwrap()
            .expect("OCR object to upload");
        assert_eq!(up.clip_key, "u/s/1.mp4");
        assert_eq!(q.ocr_upload_failed(clip, "503", T0 + 10).unwrap(), 1);
        assert_eq!(
            q.next_ocr_upload(T0 + 1).unwrap(),
            None,
            "not before its retry"
        );
        assert!(q.next_ocr_upload(T0 + 10).unwrap().is_some());
        q.ocr_uploaded(clip, "u/s/1.ocr.events.json").unwrap();
        assert_eq!(
            pay_owed_manifests(&q),
            1,
            "the session's manifest is owed again"
        );
        let work = q.ocr_of_clip(clip).unwrap().unwrap();
        assert_eq!(work.session, session);
        assert_eq!(
            work.state,
            OcrState::Uploaded {
                key: "u/s/1.ocr.events.json".into(),
                sha256: "cd".repeat(32),
                bytes: 77
            }
        );
        let c = q.ocr_counts().unwrap();
        assert_eq!((c.pending, c.read, c.uploaded, c.failed), (0, 0, 1, 0));
    }

    #[test]
    fn with_ocr_off_no_clip_is_marked() {
        let dir = tempfile::tempdir().unwrap();
        let q = open(dir.path());
        let (_, _, clip) = encoded_clip(&q, &dir.path().join("0.guac"), dir.path());
        assert_eq!(q.ocr_of_clip(clip).unwrap(), None);
        assert_eq!(q.next_ocr_task(T0).unwrap(), None);
        assert_eq!(q.ocr_counts().unwrap(), OcrCounts::default());
        assert!(!needed_by_ocr(&q));
    }

    #[test]
    fn transient_failures_give_up_after_the_named_number_of_attempts_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let q = open(dir.path());
        q.set_ocr_wanted(true);
        let (_, _, clip) = encoded_clip(&q, &dir.path().join("0.guac"), dir.path());
        for attempt in 1..OCR_ATTEMPTS_MAX {
            assert!(
                !q.ocr_attempt_failed(clip, "tesseract timed out", T0 + 5)
                    .unwrap()
            );
            assert_eq!(
                q.next_ocr_task(T0).unwrap(),
                None,
                "attempt {attempt}: backing off"
            );
            assert!(q.next_ocr_task(T0 + 5).unwrap().is_some());
        }
        assert!(
            q.ocr_attempt_failed(clip, "tesseract timed out", T0 + 5)
                .unwrap()
        );
        let OcrState::Failed { reason } = q.ocr_of_clip(clip).unwrap().unwrap().state else {
            panic!("given up");
        };
        assert!(reason.contains("tesseract timed out"), "{reason}");
        assert_eq!(q.next_ocr_task(T0 + 5).unwrap(), None);
        assert!(!needed_by_ocr(&q), "the raw segment may go");
    }

    #[test]
    fn a_corrupt_recording_fails_its_ocr_and_its_clip_goes_on() {
        let Some(tesseract) = super::tesseract_or_skip() else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let segment = dir.path().join("0.guac");
        std::fs::write(&segment, b"4.sync,3.abc;\x00\x01 not guacamole at all").unwrap();
        let q = Arc::new(open(dir.path()));
        q.set_ocr_wanted(true);
        let (_, _, clip) = encoded_clip(&q, &segment, &dir.path().join("clips"));
        let clock = Arc::new(ManualClock::new(T0));
        let status = StatusBoard::new(clock.clone(), 0, 1);
        status.update(|s| s.disk.state = DiskState::Available);
        let source = QueueOcrSource::new(q.clone(), clock, status.clone());
        let mut worker = OcrWorker::new(source, tesseract, Arc::new(status));
        let shutdown = Shutdown::new();
        let heartbeat = Heartbeats::new().register("ocr");
        assert_eq!(worker.tick(&shutdown, &heartbeat), Tick::Worked);
        let OcrState::Failed { reason } = q.ocr_of_clip(clip).unwrap().unwrap().state else {
            panic!("failed for good");
        };
        assert!(reason.contains("corrupt"), "{reason}");
        assert_eq!(worker.tick(&shutdown, &heartbeat), Tick::Idle);
        // The clip itself is untouched: it still goes up.
        upload_clip(&q, clip);
    }

    #[test]
    fn below_the_disk_floor_waiting_ocr_work_is_dropped_and_said_so() {
        let dir = tempfile::tempdir().unwrap();
        let q = Arc::new(open(dir.path()));
        q.set_ocr_wanted(true);
        let (_, _, clip) = encoded_clip(&q, &dir.path().join("0.guac"), dir.path());
        let clock = Arc::new(ManualClock::new(T0));
        let status = StatusBoard::new(clock.clone(), 0, 1);
        status.update(|s| s.disk.state = DiskState::Low);
        let mut source = QueueOcrSource::new(q.clone(), clock, status.clone());
        assert_eq!(source.next_job(), None);
        assert_eq!(
            q.ocr_of_clip(clip).unwrap().unwrap().state,
            OcrState::Failed {
                reason: OCR_DROPPED_REASON.into()
            }
        );
        assert!(!needed_by_ocr(&q));
        let errors = status.snapshot().recent_errors;
        assert!(
            errors
                .iter()
                .any(|e| e.message.contains("disk is below its floor")),
            "{errors:?}"
        );
    }
}
