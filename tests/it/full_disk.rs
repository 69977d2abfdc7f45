//! A really full disk (ENOSPC from the kernel, on a small tmpfs) while each writer writes:
//! the tap's segment files mid-session, the encoder's clip and thumbnail, the spool import.
//! Every path must end with a clear error, lose nothing that was already durable, and recover
//! once space is freed.
//!
//! The simulated disk probe (admission thresholds) is tested in tests/it/tap.rs; here the disk
//! probe says "available" and the kernel says otherwise.

use crate::util;
use crate::util::daemon;
use crate::util::guacd_replay;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use daemon::{Home, expected_segments, files_under, wait_for};
use guacd_replay::*;
use session_recorder::clock::SystemClock;
use session_recorder::disk::DiskState;
use session_recorder::ingest::handshake::parse_instruction;
use session_recorder::queue::{Queue, QueueOptions, SegmentStateKind};
use util::tmpfs::Tmpfs;

/// The recording replayed by the tap tests (1.4 MB of drawing).
const TAP_RECORDING: &str = "vnc-windows-1366x768.guac";

fn replay_opts() -> ReplayOptions {
    ReplayOptions {
        recording: recording(TAP_RECORDING),
        nop_every: 37,
        // About 4 s of session, so the disk fills while it is live even when the writes on
        // the blocking pool wait for a loaded CPU (unpaced, the whole stream could be relayed
        // and the session closed before the first failed write came back).
        pace_ms_per_100: 40,
        wait_for_disconnect: true,
        bulk: false,
    }
}

fn client_opts(session: &str, required: &str, events: &Arc<Vec<u8>>) -> ClientOptions {
    ClientOptions {
        select: None,
        params: params(session, Some(required)),
        events_from: Some(events.clone()),
    }
}

/// The recorded drawing of a session (input events left out); panics unless every segment
/// file ends on an instruction boundary.
fn recorded_drawing(data: &Path, session: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for (raw, op) in guacd_replay::recorded_instructions(&segment_files(data, session)) {
        if op != "mouse" && op != "key" {
            out.extend_from_slice(&raw);
        }
    }
    out
}

#[test]
fn a_full_disk_mid_session_ends_it_with_an_error_and_seals_what_was_written() {
    // One segment: the disk fills during a buffer write in flight.
    full_disk_mid_session("full-flush", 150_000_000);
}

#[test]
fn a_full_disk_while_sealing_a_rolled_segment_ends_the_session_the_same_way() {
    // Segments smaller than a buffer flush: every write happens in a seal, after a roll.
    full_disk_mid_session("full-seal", 40_000);
}

fn full_disk_mid_session(session: &str, segment_bytes: u64) {
    let logs = capture_logs();
    let fs = Tmpfs::mount(4 * 1024 * 1024);
    let data = fs.path().to_path_buf();
    let rec = recording(TAP_RECORDING);
    let guacd = FakeGuacd::start(replay_opts());
    let tap = TapHandle::start(test_settings(&guacd.addr, &data, segment_bytes));
    // Learn guacd's args with an unrecorded session, then leave 256 KiB: a fraction of the
    // recording, so the disk fills mid-session.
    let warm = run_client(&tap.addr, &client_opts("warm", "false", &rec));
    assert!(warm.error.is_none());
    tap.wait_idle();
    let room = fs.fill_leaving(256 * 1024);
    assert_eq!(room, 256 * 1024);

    let client = run_client(&tap.addr, &client_opts(session, "true", &rec));
    tap.wait_idle();

    // 1. The client was told, with an `error` on an instruction boundary, why it ended.
    assert!(
        client.error.is_none(),
        "the session started: {:?}",
        client.error
    );
    let ins = raw_instructions(&client.received);
    let (raw, op) = ins.last().unwrap();
    assert_eq!(op, "error", "the session ends with an error");
    let (err, _) = parse_instruction(raw).unwrap().unwrap();
    assert!(
        err.args()[0].contains("disk is full"),
        "clear message: {:?}",
        err.args()
    );
    assert_eq!(err.args()[1], "513", "SERVER_BUSY: retrying later may work");
    // 2. guacd's side was closed (its connection finished) before the replay was over.
    let up = guacd.wait_conns(2)[1].clone();
    let expected = expected_drawing(&up.sent_after_args);
    // 3. What was written is a prefix of the drawing stream, ends on a boundary, is sealed
    // and handed to the sink with its true size.
    let drawing = recorded_drawing(&data, session);
    assert!(
        !drawing.is_empty(),
        "something was recorded before the disk filled"
    );
    assert!(
        drawing.len() < expected.len(),
        "the disk filled mid-session"
    );
    assert!(
        expected.starts_with(&drawing),
        "the recording is exactly the start of the stream"
    );
    let files = segment_files(&data, session);
    let sealed = tap.sink.sealed(session);
    assert_eq!(sealed.len(), files.len(), "every segment file is sealed");
    for ((_, path, bytes), file) in sealed.iter().zip(&files) {
        assert_eq!(path, file);
        assert_eq!(
            *bytes,
            std::fs::metadata(file).unwrap().len(),
            "sealed size"
        );
    }
    let events = tap.sink.events();
    assert_eq!(
        events.last(),
        Some(&SinkEvent::Closed(session.into(), EndReason::DiskCritical))
    );
    // 4. The typed error was logged, one line with its context.
    let prefix = format!("event=recording_failed session={session} disk_full=true transient=true");
    let lines = logs.lines_with(&prefix);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("No space left on device"), "{}", lines[0]);

    // 5. The tap lives on: an unrecorded session passes, and once space is freed a recorded
    // session records completely.
    let plain = run_client(&tap.addr, &client_opts("plain", "false", &rec));
    assert!(plain.error.is_none());
    assert!(raw_instructions(&plain.received).last().unwrap().1 == "disconnect");
    // 6. The gate closed at once, without waiting for the disk watch: a new recorded session
    // is refused up front.
    assert_eq!(tap.admission.disk_state(), DiskState::Low);
    let refused = run_client(&tap.addr, &client_opts("refused", "true", &rec));
    let refusal = refused.error.expect("refused before connecting");
    assert!(
        refusal.args()[0].contains("free disk space"),
        "{:?}",
        refusal.args()
    );
    assert_eq!(refusal.args()[1], "513");
    // The disk watch's next sample, after space is freed, reopens it.
    fs.free_filler();
    tap.admission.set_disk_state(DiskState::Available);
    let after = run_client(&tap.addr, &client_opts("after", "true", &rec));
    tap.wait_idle();
    assert!(after.error.is_none());
    let up = guacd.wait_conns(4)[3].clone();
    assert!(
        recorded_drawing(&data, "after") == expected_drawing(&up.sent_after_args),
        "recorded completely after space was freed"
    );
    assert_eq!(
        tap.sink.sealed("after").len(),
        segment_files(&data, "after").len()
    );
}

/// Log lines of this test process (every test's: filter by session).
struct Logs(std::sync::Mutex<Vec<String>>);

impl Logs {
    fn lines_with(&self, needle: &str) -> Vec<String> {
        let lines = self.0.lock().unwrap_or_else(|p| p.into_inner());
        lines
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
    }
}

impl log::Log for Logs {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        let line = format!("{} {}", record.level(), record.args());
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(line);
    }
    fn flush(&self) {}
}

/// Installs (once) a logger that keeps every line for assertions.
fn capture_logs() -> &'static Logs {
    static LOGS: std::sync::OnceLock<&'static Logs> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let logs: &'static Logs = Box::leak(Box::new(Logs(std::sync::Mutex::new(Vec::new()))));
        log::set_logger(logs).expect("no other logger in this test binary");
        log::set_max_level(log::LevelFilter::Info);
        logs
    })
}

/// A session for the queue-level tests.
fn new_session(id: &str) -> session_recorder::queue::NewSession {
    session_recorder::queue::NewSession {
        session_id: id.into(),
        user_id: "u".into(),
        username: "alice".into(),
        image_friendly_name: "img".into(),
        protocol: "vnc".into(),
        start_ms: 5_000,
        target: String::new(),
        client_addr: String::new(),
    }
}

/// A daemon killed when the test fails before stopping it (a failed assertion must not leave
/// it running, nor the tmpfs busy).
struct Running(Option<daemon::Daemon>);

impl Running {
    fn log_text(&self) -> String {
        self.0.as_ref().map(|d| d.log_text()).unwrap_or_default()
    }

    fn stop(mut self) -> std::process::ExitStatus {
        self.0.take().expect("running").stop()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(d) = self.0.take() {
            d.kill();
        }
    }
}

/// Files on the tmpfs other than the filler.
fn files_besides_filler(fs: &Tmpfs) -> Vec<std::path::PathBuf> {
    files_under(fs.path())
        .into_iter()
        .filter(|p| p.file_name().is_none_or(|n| n != ".filler"))
        .collect()
}

#[test]
fn a_full_clips_disk_fails_the_encode_as_transient_without_half_files_and_retries_once_freed() {
    let home = Home::new("segment-size-mb = 1\nqueue-length = 1", None);
    // The clips directory is a small tmpfs, left with 8 KiB free: less than one clip.
    let fs = Tmpfs::mount(2 * 1024 * 1024);
    std::fs::create_dir_all(home.data()).unwrap();
    std::os::unix::fs::symlink(fs.path(), home.data().join("clips")).unwrap();
    fs.fill_leaving(8 * 1024);
    let src = util::shared_dir().join("recordings/ssh-green-800x600.guac");
    let expected = expected_segments(&src, 1_000_000);
    home.spool_recording(&src, "a.guac", "full-clips");
    let d = Running(Some(home.start()));

    // 1. The encode fails, classified transient: the segment goes back to `sealed`.
    let failed = wait_for(Duration::from_secs(300), || {
        d.log_text().contains("event=encode_failed")
    });
    let log = d.log_text();
    assert!(failed, "no encode failure on a full disk; log:\n{log}");
    let line = log
        .lines()
        .find(|l| l.contains("event=encode_failed"))
        .unwrap();
    assert!(
        line.contains("to=Sealed"),
        "transient, back in the queue: {line}"
    );
    assert!(line.contains("No space left"), "says why: {line}");
    // 2. No half-written clip, thumbnail, state or temporary file is left on the full disk.
    assert_eq!(files_besides_filler(&fs), Vec::<std::path::PathBuf>::new());

    // 3. Space is freed: the retry encodes and uploads every segment.
    fs.free_filler();
    let done = wait_for(Duration::from_secs(300), || {
        home.bucket_clips().len() >= expected
    });
    let log = d.log_text();
    let status = d.stop();
    assert!(done, "no clip after space was freed; log:\n{log}");
    assert_eq!(status.code(), Some(0), "log:\n{log}");
    let queue = Queue::open(
        &QueueOptions::new(home.data().join("queue")),
        Arc::new(SystemClock),
    )
    .unwrap();
    let session = queue
        .session_by_external("full-clips")
        .unwrap()
        .expect("session");
    for seg in queue.segments_of_session(session.id).unwrap() {
        assert_eq!(seg.state.kind(), SegmentStateKind::Encoded, "{seg:?}");
    }
    assert!(
        home.stray_temporaries().is_empty(),
        "{:?}",
        home.stray_temporaries()
    );
}

#[test]
fn a_full_segments_disk_while_saving_the_end_state_leaves_no_half_file_and_retries() {
    use session_recorder::clock::{Clock, ManualClock};
    use session_recorder::config::Config;
    use session_recorder::encode::worker::{EncodeWorker, Tick, X264SegmentEncoder, state_path};
    use session_recorder::queue::NewSegment;
    use session_recorder::status::StatusBoard;

    // The segment lives on a small tmpfs, full but for one page once it is there; the clips
    // directory has room. The encode itself succeeds; saving the end display state beside
    // the segment hits ENOSPC after its first page.
    let fs = Tmpfs::mount(2 * 1024 * 1024);
    let segment = fs.path().join("000000.guac");
    std::fs::copy(
        util::shared_dir().join("recordings/ssh-green-800x600.guac"),
        &segment,
    )
    .unwrap();
    fs.fill_leaving(4096);
    let home = tempfile::tempdir().unwrap();
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(1_000_000));
    let queue = Arc::new(
        Queue::open(&QueueOptions::new(home.path().join("queue")), clock.clone()).unwrap(),
    );
    let session = queue.register_session(&new_session("s")).unwrap();
    queue
        .register_segment(&NewSegment {
            session,
            index: 0,
            path: segment.clone(),
            bytes: std::fs::metadata(&segment).unwrap().len(),
            first_sync_ms: None,
            last_sync_ms: None,
            sealed: true,
        })
        .unwrap();
    let clips = home.path().join("clips");
    let config = Config::from_toml("").unwrap();
    let mut worker = EncodeWorker::new(
        0,
        None,
        queue.clone(),
        Arc::new(X264SegmentEncoder::new(
            config.video.encoder_settings(),
            session_recorder::events::extract::ExtractSettings::default(),
        )),
        StatusBoard::new(clock.clone(), 1, 1),
        clock,
        clips.clone(),
    );

    // 1. Transient: back off, the segment is queued again, nothing half-written anywhere.
    assert!(matches!(worker.tick(), Tick::Backoff(_)));
    let seg = queue.segment_at(session, 0).unwrap().unwrap();
    assert_eq!(seg.state.kind(), SegmentStateKind::Sealed, "{seg:?}");
    assert_eq!(files_besides_filler(&fs), vec![segment.clone()]);
    assert_eq!(files_under(&clips), Vec::<std::path::PathBuf>::new());

    // 2. Space freed: the retry encodes, registers the clip and saves the state.
    fs.free_filler();
    assert_eq!(worker.tick(), Tick::Worked);
    let seg = queue.segment_at(session, 0).unwrap().unwrap();
    assert_eq!(seg.state.kind(), SegmentStateKind::Encoded, "{seg:?}");
    assert!(state_path(&segment).is_file());
    let clip = &queue.clips_of_session(session).unwrap()[0];
    assert_eq!(std::fs::metadata(&clip.path).unwrap().len(), clip.bytes);
}

#[test]
fn a_full_segments_disk_during_spool_import_keeps_the_recording_and_imports_it_later() {
    use session_recorder::clock::{Clock, ManualClock};
    use session_recorder::ingest::spool::{SpoolImporter, SpoolTick};
    use session_recorder::status::StatusBoard;

    // The spool and the queue have room; the segments directory is a full tmpfs but for
    // 64 KiB, less than the 500 KB recording.
    let fs = Tmpfs::mount(2 * 1024 * 1024);
    let home = tempfile::tempdir().unwrap();
    let spool = home.path().join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    let src = util::shared_dir().join("recordings/ssh-green-800x600.guac");
    let waiting = spool.join("ssh-full.guac");
    std::fs::copy(&src, &waiting).unwrap();
    fs.fill_leaving(64 * 1024);
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(1_000_000));
    let queue = Arc::new(
        Queue::open(&QueueOptions::new(home.path().join("queue")), clock.clone()).unwrap(),
    );
    let mut importer = SpoolImporter::new(
        spool.clone(),
        fs.path().join("segments"),
        150_000_000,
        queue.clone(),
        StatusBoard::new(clock.clone(), 1, 1),
        clock,
    );

    // 1. The first poll only notes the file; the second tries, meets ENOSPC and backs off:
    // the recording stays in the spool, no half-copied segment is left.
    assert_eq!(importer.tick(), SpoolTick::Idle);
    assert_eq!(importer.tick(), SpoolTick::Backoff);
    assert!(waiting.is_file(), "the recording is kept");
    assert_eq!(
        std::fs::read(&waiting).unwrap(),
        std::fs::read(&src).unwrap()
    );
    assert_eq!(files_besides_filler(&fs), Vec::<std::path::PathBuf>::new());

    // 2. Space freed: the next polls import it whole and remove it from the spool.
    fs.free_filler();
    let mut ticks = Vec::new();
    while !matches!(ticks.last(), Some(SpoolTick::Worked(_))) && ticks.len() < 4 {
        ticks.push(importer.tick());
    }
    assert_eq!(ticks.last(), Some(&SpoolTick::Worked(1)), "{ticks:?}");
    assert!(!waiting.exists());
    let session = queue
        .session_by_external("ssh-full")
        .unwrap()
        .expect("session");
    let segments = queue.segments_of_session(session.id).unwrap();
    assert_eq!(segments.len(), 1);
    assert_eq!(
        std::fs::read(&segments[0].path).unwrap(),
        std::fs::read(&src).unwrap()
    );
}

#[test]
fn a_full_queue_disk_is_a_transient_queue_error_and_loses_no_commit() {
    use session_recorder::clock::{Clock, ManualClock};
    use session_recorder::error::Classify;
    use session_recorder::queue::{NewSegment, QueueError};

    // The LMDB environment itself on a tmpfs that fills up.
    let fs = Tmpfs::mount(4 * 1024 * 1024);
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(1_000_000));
    let queue = Queue::open(&QueueOptions::new(fs.path().join("queue")), clock).unwrap();
    let session = queue.register_session(&new_session("q")).unwrap();
    let segment = |index: u32| NewSegment {
        session,
        index,
        // A long path makes every record big, so the map grows page by page.
        path: fs.path().join(format!("{}/{index}.guac", "p".repeat(200))),
        bytes: 1,
        first_sync_ms: None,
        last_sync_ms: None,
        sealed: true,
    };
    fs.fill_leaving(0);
    let mut committed = 0u32;
    let error = loop {
        match queue.register_segment(&segment(committed)) {
            Ok(_) => committed += 1,
            Err(e) => break e,
        }
        assert!(committed < 100_000, "LMDB never met the full disk");
    };
    assert!(error.is_transient(), "{error:?}");
    assert!(
        matches!(&error, QueueError::Io(e) if e.kind() == std::io::ErrorKind::StorageFull),
        "{error:?}"
    );
    // Everything committed before is still there, the failed write is not.
    let segments = queue.segments_of_session(session).unwrap();
    assert_eq!(segments.len(), committed as usize);
    // Space freed: the same write goes through.
    fs.free_filler();
    queue.register_segment(&segment(committed)).unwrap();
    assert_eq!(
        queue.segments_of_session(session).unwrap().len(),
        committed as usize + 1
    );
}
