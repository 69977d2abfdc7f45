//! The tap's events of a session that ends right after a segment rolled, with a paste and a
//! download still open: the last segment holds only those events, and the encoder makes a clip
//! of it (the picture the segment began with) carrying both events, instead of refusing a
//! segment without a frame. Real recorder, real segment files, real x264 encode. Cost: < 1 s.

use std::sync::Arc;

use session_recorder::encode::{VideoSettings, encode_recording_with_events};
use session_recorder::events::EventDetail;
use session_recorder::events::extract::ExtractSettings;
use session_recorder::guac::Parser;
use session_recorder::ingest::recorder::Recorder;
use session_recorder::ingest::segment::SegmentWriter;
use session_recorder::ingest::sink::{RecordingSink, SessionMeta, SessionStart, SinkError};
use session_recorder::queue::EndReason;
use session_recorder::render::Display;

struct NoSink;

impl RecordingSink for NoSink {
    fn open_session(&self, _: &SessionMeta) -> Result<SessionStart, SinkError> {
        Ok(SessionStart {
            session: 1,
            next_index: 0,
        })
    }
    fn segment_sealed(
        &self,
        _: u64,
        _: &SessionMeta,
        _: u32,
        _: &std::path::Path,
        _: u64,
    ) -> Result<(), SinkError> {
        Ok(())
    }
    fn session_closed(&self, _: &SessionMeta, _: EndReason) {}
    fn rejoined(&self, _: &SessionMeta, _: &session_recorder::ingest::sink::Rejoin) {}
    fn refused(&self, _: &SessionMeta, _: &str) {}
    fn not_started(&self, _: &SessionMeta, _: &str) {}
}

#[test]
fn a_session_ending_right_after_a_roll_with_streams_open_gives_a_clip_with_their_events() {
    let dir = tempfile::tempdir().unwrap();
    let meta = Arc::new(SessionMeta {
        session_id: "s".into(),
        user_id: String::new(),
        username: String::new(),
        image_friendly_name: String::new(),
        protocol: "ssh".into(),
        client_addr: String::new(),
        target: String::new(),
        started_ms: 0,
    });
    let session = dir.path().join("s");
    let writer = SegmentWriter::create(
        session.clone(),
        meta,
        Arc::new(NoSink),
        SessionStart {
            session: 1,
            next_index: 0,
        },
    )
    .unwrap();
    // Every `sync` rolls; the session ends right after the second roll, a paste and a
    // download open.
    let mut rec = Recorder::new(writer, 1, false, std::time::Instant::now());
    rec.server(b"4.size,1.0,2.64,2.48;4.rect,1.0,1.0,1.0,2.64,2.48;5.cfill,2.14,1.0,3.255,1.0,1.0,3.255;4.sync,4.1000;")
        .unwrap();
    rec.client(b"9.clipboard,1.0,10.text/plain;4.blob,1.0,8.aGVsbG8=;")
        .unwrap();
    rec.server(b"4.file,1.7,10.text/plain,5.a.txt;4.blob,1.7,4.YWJj;4.sync,4.2000;")
        .unwrap();
    let sealed = smol::block_on(rec.close()).unwrap();
    assert_eq!(sealed, 3);

    // The display as segments 1 and 2 left it (the encoder's start state for segment 3).
    let mut display = Display::new();
    for n in 0..2 {
        let mut p = Parser::new();
        p.push(&std::fs::read(session.join(format!("00000{n}.guac"))).unwrap());
        while let Some(i) = p.next().unwrap() {
            let _ = display.apply(&i);
        }
    }
    let state = display.snapshot();
    let last = std::fs::read(session.join("000002.guac")).unwrap();
    let out = dir.path().join("clip.mp4");
    let report = encode_recording_with_events(
        &mut &last[..],
        &VideoSettings::default(),
        ExtractSettings::default(),
        Some(&state),
        Some(3_000),
        [&out, &dir.path().join("clip.jpg")],
        &mut |_| {},
    )
    .unwrap_or_else(|e| {
        panic!(
            "the last segment does not encode: {e}; it holds {}",
            String::from_utf8_lossy(&last)
        )
    });
    assert_eq!(report.first_sync_ms, 2_000, "it starts at the roll");
    let kinds: Vec<_> = report
        .events
        .events
        .iter()
        .map(|e| match &e.detail {
            EventDetail::Clipboard { text, .. } => format!("clipboard {text:?}"),
            EventDetail::File { name, complete, .. } => format!("file {name} {complete}"),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(kinds.len(), 2, "{kinds:?}");
    assert!(
        kinds.contains(&"clipboard Some(\"hello\")".to_string()),
        "{kinds:?}"
    );
    assert!(kinds.contains(&"file a.txt false".to_string()), "{kinds:?}");
    assert!(std::fs::metadata(&out).unwrap().len() > 0);
}
