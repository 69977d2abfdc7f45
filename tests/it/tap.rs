//! Integration tests of the Guacamole tap: a fake guacd replaying the real recordings, a test
//! client, the tap in between. Byte-exact forwarding, recording, rolling, reconnect, every
//! fail-closed path, pass-through, concurrency and hostile input.
//!
//! Benchmarks are `#[ignore]`d tests named `bench_*`, run in release by `scripts/bench-tap`.

use crate::util::guacd_replay;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use guacd_replay::*;
use session_recorder::disk::DiskState;
use session_recorder::ingest::RECORDING_PARAMS;
use session_recorder::ingest::TapSettings;
use session_recorder::ingest::handshake::{encode, extend_args, parse_instruction};

fn replay(name: &str) -> ReplayOptions {
    ReplayOptions {
        recording: recording(name),
        nop_every: 37,
        pace_ms_per_100: 0,
        wait_for_disconnect: true,
        bulk: false,
    }
}

/// A fake guacd replaying `name`, a tap in front of it writing segments of `segment_bytes`
/// under a fresh directory.
struct Rig {
    rec: Arc<Vec<u8>>,
    tap: TapHandle,
    guacd: FakeGuacd,
    data: tempfile::TempDir,
}

impl Rig {
    fn new(name: &str, segment_bytes: u64) -> Self {
        Self::with(replay(name), segment_bytes, |_| {})
    }

    fn with(opts: ReplayOptions, segment_bytes: u64, tune: impl FnOnce(&mut TapSettings)) -> Self {
        let data = tempfile::tempdir().unwrap();
        let rec = opts.recording.clone();
        let guacd = FakeGuacd::start(opts);
        let mut settings = test_settings(&guacd.addr, data.path(), segment_bytes);
        tune(&mut settings);
        let tap = TapHandle::start(settings);
        Self {
            rec,
            tap,
            guacd,
            data,
        }
    }

    /// One unrecorded session, so the tap knows guacd's `args` for `vnc`.
    fn warm(&self) {
        let warm = run_client(
            &self.tap.addr,
            &client_opts("warm", Some("false"), &self.rec),
        );
        assert!(warm.error.is_none());
        self.tap.wait_idle();
    }

    fn client(&self, session: &str, required: Option<&str>) -> ClientResult {
        run_client(&self.tap.addr, &client_opts(session, required, &self.rec))
    }
}

fn client_opts(session: &str, required: Option<&str>, events: &Arc<Vec<u8>>) -> ClientOptions {
    ClientOptions {
        select: None,
        params: params(session, required),
        events_from: Some(events.clone()),
    }
}

/// Checks one recorded session end to end.
fn check_recorded(
    data: &Path,
    session: &str,
    up: &UpstreamConn,
    client: &ClientResult,
    record_keys: bool,
) {
    assert!(
        client.error.is_none(),
        "unexpected error {:?}",
        client.error
    );
    // 1. The client got every byte guacd sent, unchanged, after our extended `args`.
    let mut expected = extend_args(&fake_args());
    expected.extend_from_slice(&up.sent_after_args);
    assert_eq!(client.received.len(), expected.len(), "client byte count");
    assert!(client.received == expected, "client bytes differ");
    // 2. guacd saw the client's handshake with our values stripped from `connect`.
    assert_eq!(up.handshake.len(), client.sent_handshake.len());
    for (got, sent) in up.handshake.iter().zip(&client.sent_handshake) {
        if got.opcode() == "connect" {
            assert_eq!(
                got.elements[..],
                sent[..sent.len() - RECORDING_PARAMS.len()]
            );
            assert_eq!(got.args().len(), fake_args().len());
        } else {
            assert_eq!(&got.elements, sent);
        }
    }
    assert!(
        up.received_after_connect == client.sent_after_connect,
        "guacd bytes differ"
    );
    // 3. Segments: the drawing stream plus the client's input events.
    let files = segment_files(data, session);
    assert!(!files.is_empty(), "no segments for {session}");
    let ins = guacd_replay::recorded_instructions(&files);
    // The tap's own event instructions (a clipboard change, a file transfer: `x-sr-*`) are
    // checked by the tests that make them.
    let drawing: Vec<u8> = ins
        .iter()
        .filter(|(_, op)| op != "mouse" && op != "key" && !op.starts_with("x-sr-"))
        .flat_map(|(raw, _)| raw.clone())
        .collect();
    assert!(
        drawing == expected_drawing(&up.sent_after_args),
        "recorded drawing stream differs"
    );
    let events: Vec<(String, Vec<String>)> = ins
        .iter()
        .filter(|(_, op)| op == "mouse" || op == "key")
        .map(|(raw, op)| {
            let (i, _) = parse_instruction(raw).unwrap().unwrap();
            let n = i.args().len();
            assert!(i.args()[n - 1].parse::<u64>().is_ok(), "timestamp");
            (op.clone(), i.args()[..n - 1].to_vec())
        })
        .collect();
    let sent: Vec<(String, Vec<String>)> = client
        .events
        .iter()
        .filter(|(op, _)| record_keys || op != "key")
        .cloned()
        .collect();
    assert_eq!(events, sent, "recorded input events");
}

#[test]
fn every_recording_is_forwarded_unchanged_and_recorded_exactly() {
    for name in all_recordings() {
        let rig = Rig::new(&name, 150_000_000);
        let session = format!("s-{}", name.trim_end_matches(".guac"));
        let client = rig.client(&session, Some("true"));
        rig.tap.wait_idle();
        let up = rig.guacd.wait_conns(1)[0].clone();
        check_recorded(rig.data.path(), &session, &up, &client, true);
        assert_eq!(segment_files(rig.data.path(), &session).len(), 1);
        let ev = rig.tap.sink.events();
        assert!(ev.contains(&SinkEvent::Opened(session.clone(), 0)));
        assert_eq!(
            ev.last(),
            Some(&SinkEvent::Closed(
                session.clone(),
                EndReason::UserDisconnect
            ))
        );
    }
}

#[test]
fn keys_are_recorded_only_when_configured() {
    let opts = replay("vnc-jpeg-keys-1280x800.guac");
    let rig = Rig::with(opts, 150_000_000, |s| s.record_keys = false);
    let client = rig.client("nokeys", None);
    rig.tap.wait_idle();
    assert!(client.events.iter().any(|(op, _)| op == "key"));
    let up = rig.guacd.wait_conns(1)[0].clone();
    check_recorded(rig.data.path(), "nokeys", &up, &client, false);
}

#[test]
fn segments_roll_after_a_sync_and_each_parses() {
    let rig = Rig::new("vnc-windows-1366x768.guac", 64 * 1024);
    let client = rig.client("roll", Some("true"));
    rig.tap.wait_idle();
    let up = rig.guacd.wait_conns(1)[0].clone();
    check_recorded(rig.data.path(), "roll", &up, &client, true);
    let files = segment_files(rig.data.path(), "roll");
    assert!(files.len() > 10, "only {} segments", files.len());
    let sealed = rig.tap.sink.sealed("roll");
    assert_eq!(sealed.len(), files.len());
    for (n, ((index, path, bytes), file)) in sealed.iter().zip(&files).enumerate() {
        assert_eq!(*index as usize, n, "seal order");
        assert_eq!(path, file);
        let content = std::fs::read(file).unwrap();
        assert_eq!(*bytes, content.len() as u64);
        let ins = raw_instructions(&content);
        if n + 1 < files.len() {
            assert_eq!(
                ins.last().unwrap().1,
                "sync",
                "segment {n} ends after a sync"
            );
            assert!(content.len() as u64 >= 64 * 1024);
        }
    }
}

#[test]
fn a_reconnect_continues_the_session() {
    let rig = Rig::new("ssh-green-800x600.guac", 100_000);
    assert!(rig.client("again", Some("true")).error.is_none());
    rig.tap.wait_idle();
    let n = segment_files(rig.data.path(), "again").len();
    assert!(n >= 2);
    assert!(rig.client("again", Some("true")).error.is_none());
    rig.tap.wait_idle();
    let sealed = rig.tap.sink.sealed("again");
    let indices: Vec<u32> = sealed.iter().map(|s| s.0).collect();
    assert_eq!(indices, (0..sealed.len() as u32).collect::<Vec<_>>());
    assert!(sealed.len() >= 2 * n - 1);
    let events = rig.tap.sink.events();
    assert!(events.contains(&SinkEvent::Opened("again".into(), n as u32)));
    assert_eq!(segment_files(rig.data.path(), "again").len(), sealed.len());
}

#[test]
fn a_session_without_recording_passes_through_untouched() {
    let rig = Rig::new("ssh-resize-1024x768.guac", 100_000);
    // Refusing conditions do not matter to a session that need not be recorded.
    rig.tap.admission.set_disk_state(DiskState::Low);
    let client = rig.client("free", Some("false"));
    rig.tap.wait_idle();
    assert!(client.error.is_none());
    let up = rig.guacd.wait_conns(1)[0].clone();
    let mut expected = extend_args(&fake_args());
    expected.extend_from_slice(&up.sent_after_args);
    assert!(client.received == expected);
    assert!(up.received_after_connect == client.sent_after_connect);
    assert!(!rig.data.path().join("segments").exists());
    assert!(rig.tap.sink.events().is_empty());
    // Not recorded, but counted (and logged at start and end).
    assert_eq!(rig.tap.ctx.unrecorded_sessions(), 1);
}

#[test]
fn record_by_default_changed_by_a_reload_applies_to_the_next_session() {
    let rig = Rig::new("ssh-resize-1024x768.guac", 100_000);
    // What a settings reload does: the next session that does not say `recording-required`
    // is not recorded.
    rig.tap.ctx.flags.set(false, false);
    let client = rig.client("plain", None);
    rig.tap.wait_idle();
    assert!(client.error.is_none());
    assert!(rig.tap.sink.events().is_empty());
    assert_eq!(rig.tap.ctx.unrecorded_sessions(), 1);
    // And back: recorded again.
    rig.tap.ctx.flags.set(false, true);
    let client = rig.client("plain-2", None);
    rig.tap.wait_idle();
    assert!(client.error.is_none());
    assert!(!rig.tap.sink.sealed("plain-2").is_empty());
    assert_eq!(rig.tap.ctx.unrecorded_sessions(), 1);
}

/// Checks that a refused session gets an `error` with `code`, that guacd is never contacted
/// and that the refusal is audited.
fn assert_refused(rig: &Rig, code: &str, text: &str) {
    let before = rig.guacd.connection_count();
    let client = rig.client("must", Some("true"));
    let err = client.error.expect("an error instruction");
    assert_eq!(err.args()[1], code, "status code");
    assert!(err.args()[0].contains(text), "message {:?}", err.args()[0]);
    rig.tap.wait_idle();
    assert_eq!(rig.guacd.connection_count(), before, "guacd was contacted");
    assert!(rig.tap.sink.events().iter().any(
        |e| matches!(e, SinkEvent::Refused(s, r) | SinkEvent::NotStarted(s, r)
                if s == "must" && r.contains(text))
    ));
}

#[test]
fn each_fail_closed_path_refuses_without_contacting_guacd() {
    let rig = Rig::new("ssh-green-800x600.guac", 1_000_000);
    rig.warm();
    assert_eq!(rig.guacd.connection_count(), 1);
    let gate = &rig.tap.admission;
    for (state, text) in [
        (DiskState::Low, "below the floor"),
        (DiskState::Critical, "critically full"),
        (DiskState::Unknown, "cannot be determined"),
    ] {
        gate.set_disk_state(state);
        assert_refused(&rig, "513", text);
    }
    gate.set_disk_state(DiskState::Available);

    gate.set_settings_problem(Some("video.framerate out of range".into()));
    assert_refused(&rig, "512", "invalid recorder settings");
    gate.set_settings_problem(None);

    gate.set_queue_problem(Some("map full".into()));
    assert_refused(&rig, "512", "queue cannot be written");
    gate.set_queue_problem(None);

    let fail_open = &rig.tap.sink.fail_open;
    fail_open.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_refused(&rig, "512", "simulated queue failure");
    fail_open.store(false, std::sync::atomic::Ordering::SeqCst);
    assert!(!rig.data.path().join("segments/must").exists());

    // The default is to record: a session that says nothing is refused too.
    gate.set_disk_state(DiskState::Low);
    let before = rig.guacd.connection_count();
    assert_eq!(rig.client("must", None).error.unwrap().args()[1], "513");
    assert_eq!(rig.guacd.connection_count(), before);
    gate.set_disk_state(DiskState::Available);

    // And everything admits again.
    assert!(rig.client("must", Some("true")).error.is_none());
}

#[test]
fn an_unwritable_segment_directory_refuses_the_session() {
    // A regular file where the data directory should be: nothing can be created below it
    // (even as root).
    let blocked = tempfile::NamedTempFile::new().unwrap();
    let path = blocked.path().to_path_buf();
    let rig = Rig::with(replay("ssh-green-800x600.guac"), 1_000_000, |s| {
        s.segments_dir = path.join("segments")
    });
    rig.warm();
    assert_refused(&rig, "512", "segment directory not writable");
    // Opened in the sink, then told it never started (forgotten, audited), never closed.
    let events = rig.tap.sink.events();
    assert!(
        events.contains(&SinkEvent::Opened("must".into(), 0)),
        "{events:?}"
    );
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, SinkEvent::Closed(s, _) if s == "must")),
        "{events:?}"
    );
}

/// A port nothing listens on (bound, then released).
fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// Waits (bounded) until `ok`.
fn eventually(what: &str, ok: impl Fn() -> bool) {
    for _ in 0..1000 {
        if ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("never: {what}");
}

#[test]
fn a_failed_upstream_connect_leaves_no_session_and_nothing_on_disk() {
    let data = tempfile::tempdir().unwrap();
    let rec = recording("ssh-green-800x600.guac");
    let guacd = FakeGuacd::start(replay("ssh-green-800x600.guac"));
    let addr = guacd.addr.clone();
    let tap = TapHandle::start(test_settings(&addr, data.path(), 1_000_000));
    // The tap knows guacd's args (so it admits before contacting guacd); then guacd stops.
    assert!(
        run_client(&tap.addr, &client_opts("warm", Some("false"), &rec))
            .error
            .is_none()
    );
    tap.wait_idle();
    drop(guacd);
    eventually("guacd gone", || {
        std::net::TcpStream::connect(&addr).is_err()
    });

    let client = run_client(&tap.addr, &client_opts("gone", Some("true"), &rec));
    tap.wait_idle();
    let err = client.error.expect("an error instead of ready");
    assert_eq!(err.args()[1], "520", "UPSTREAM_UNAVAILABLE");
    assert!(err.args()[0].contains("guacd"), "{:?}", err.args());
    // The sink opened it, then heard it never started (forgotten and audited), nothing else.
    let events: Vec<SinkEvent> = tap
        .sink
        .events()
        .into_iter()
        .filter(|e| format!("{e:?}").contains("\"gone\""))
        .collect();
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0], SinkEvent::Opened("gone".into(), 0));
    assert!(
        matches!(&events[1], SinkEvent::NotStarted(s, r) if s == "gone" && r.contains("guacd")),
        "{events:?}"
    );
    // Nothing empty is left on disk.
    assert!(!data.path().join("segments/gone").exists());
    assert_eq!(tap.ctx.upstream_reachable(), Some(false));
}

#[test]
fn guacd_down_is_a_status_problem_until_it_is_back_and_then_its_args_are_learned() {
    use session_recorder::clock::SystemClock;
    use session_recorder::status::StatusBoard;
    let data = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let board = StatusBoard::new(Arc::new(SystemClock), 0, 1);
    let tap = TapHandle::start_with(
        test_settings(&addr, data.path(), 1_000_000),
        Some(board.clone()),
    );
    let (stop_tx, stop_rx) = smol::channel::bounded::<()>(1);
    let ctx = tap.ctx.clone();
    let watcher = std::thread::spawn(move || {
        smol::block_on(session_recorder::ingest::watch_upstream(ctx, stop_rx))
    });

    // 1. Down from the start, with no session arriving: published, with the reason.
    eventually("guacd seen down", || {
        board.snapshot().tap.upstream_reachable == Some(false)
    });
    let s = board.snapshot();
    assert!(
        s.tap
            .upstream_error
            .as_deref()
            .unwrap_or("")
            .contains("refused"),
        "{:?}",
        s.tap
    );
    assert!(
        s.recent_errors
            .iter()
            .any(|e| e.source == "tap" && e.message.contains("unreachable")),
        "{:?}",
        s.recent_errors
    );
    assert!(!tap.ctx.knows_args("vnc"));
    // The broker's pre-flight check says no, with the reason (the disk is fine).
    tap.admission.set_disk_state(DiskState::Available);
    let reason = tap.admission.admission_report().unwrap_err();
    assert!(
        reason.contains("guacd") && reason.contains("refused"),
        "{reason}"
    );

    // 2. Back: cleared, and the configured protocol's args are learned at once.
    let guacd = FakeGuacd::start_on(&addr, replay("ssh-green-800x600.guac"));
    eventually("guacd seen back", || {
        let t = board.snapshot().tap;
        t.upstream_reachable == Some(true) && t.upstream_error.is_none()
    });
    assert_eq!(tap.admission.admission_report(), Ok(()));
    eventually("vnc args learned", || tap.ctx.knows_args("vnc"));
    // So a refused session never reaches guacd (the probes are bare connects, not counted).
    tap.admission.set_disk_state(DiskState::Low);
    let connects = tap.ctx.upstream_connects();
    let rec = recording("ssh-green-800x600.guac");
    let refused = run_client(&tap.addr, &client_opts("cold", Some("true"), &rec));
    assert_eq!(refused.error.expect("refused").args()[1], "513");
    assert_eq!(tap.ctx.upstream_connects(), connects, "guacd was contacted");
    assert!(
        guacd.conns.lock().unwrap().is_empty(),
        "guacd got a connect"
    );
    stop_tx.close();
    watcher.join().unwrap();
}

/// A paced replay that stays connected until the client goes.
fn live(name: &str) -> ReplayOptions {
    ReplayOptions {
        pace_ms_per_100: 30,
        ..replay(name)
    }
}

fn paced(name: &str, ms_per_100: u64) -> ReplayOptions {
    ReplayOptions {
        pace_ms_per_100: ms_per_100,
        wait_for_disconnect: false,
        ..replay(name)
    }
}

/// The last instruction the client received: it must be an `error` with `code`.
fn assert_ended_with_error(client: &ClientResult, code: &str) -> String {
    let ins = raw_instructions(&client.received);
    let (raw, op) = ins.last().unwrap();
    assert_eq!(op, "error", "the session ends with an error");
    let (err, _) = parse_instruction(raw).unwrap().unwrap();
    assert_eq!(err.args()[1], code);
    err.args()[0].clone()
}

#[test]
fn a_failing_sink_mid_session_closes_it_with_an_error() {
    let rig = Rig::with(paced("vnc-windows-1366x768.guac", 2), 20_000, |_| {});
    rig.tap
        .sink
        .fail_seal
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let client = rig.client("sealfail", Some("true"));
    rig.tap.wait_idle();
    assert_ended_with_error(&client, "512");
    let events = rig.tap.sink.events();
    assert!(events.contains(&SinkEvent::Closed(
        "sealfail".into(),
        EndReason::RecordingFailed
    )));
}

#[test]
fn critical_disk_closes_live_recorded_sessions_after_sealing() {
    let rig = Rig::with(paced("vnc-windows-1366x768.guac", 20), 50_000, |_| {});
    let client = std::thread::scope(|scope| {
        let client = scope.spawn(|| rig.client("crit", Some("true")));
        // Let the session record a while, then fill the disk.
        std::thread::sleep(Duration::from_millis(400));
        rig.tap.admission.set_disk_state(DiskState::Critical);
        client.join().unwrap()
    });
    rig.tap.wait_idle();
    assert!(assert_ended_with_error(&client, "513").contains("critically full"));
    // Everything recorded was sealed and parses.
    let files = segment_files(rig.data.path(), "crit");
    assert!(!files.is_empty());
    assert_eq!(rig.tap.sink.sealed("crit").len(), files.len());
    for f in files {
        raw_instructions(&std::fs::read(f).unwrap());
    }
    let events = rig.tap.sink.events();
    assert_eq!(
        events.last(),
        Some(&SinkEvent::Closed("crit".into(), EndReason::DiskCritical))
    );
}

#[test]
fn fifty_concurrent_recorded_sessions() {
    let rig = Rig::new("ssh-resize-1024x768.guac", 100_000);
    // Warm the args cache so the concurrent sessions start the same way.
    rig.warm();
    let results: Vec<ClientResult> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..50)
            .map(|i| {
                let rig = &rig;
                scope.spawn(move || rig.client(&format!("c{i}"), Some("true")))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    rig.tap.wait_idle();
    let conns = rig.guacd.wait_conns(51);
    for (i, client) in results.iter().enumerate() {
        // Every upstream connection replayed the same bytes and received the same input.
        check_recorded(
            rig.data.path(),
            &format!("c{i}"),
            &conns[i + 1],
            client,
            true,
        );
    }
}

#[test]
fn hostile_clients_are_dropped_without_affecting_others() {
    let opts = ReplayOptions {
        pace_ms_per_100: 5,
        ..replay("ssh-green-800x600.guac")
    };
    let rig = Rig::with(opts, 100_000, |s| {
        s.handshake_timeout = Duration::from_millis(300)
    });
    rig.warm();
    let addr = rig.tap.addr.as_str();
    let good = std::thread::scope(|scope| {
        // A good session runs alongside everything below.
        let good = scope.spawn(|| rig.client("good", Some("true")));
        let wait = Duration::from_secs(5);
        let garbage = raw_exchange(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", wait);
        assert!(
            garbage.ends_with(b"3.768;"),
            "{:?}",
            String::from_utf8_lossy(&garbage)
        );
        let endless = raw_exchange(addr, b"6.select,99999999999999", wait);
        assert!(endless.ends_with(b"3.768;"));
        let too_long = raw_exchange(addr, b"6.select,3.vnc;70000.", wait);
        assert!(too_long.ends_with(b"3.768;"));
        let half = raw_exchange(addr, b"6.select,3.vnc;4.size,4.10", wait);
        assert!(
            half.ends_with(b"3.776;"),
            "{:?}",
            String::from_utf8_lossy(&half)
        );
        let silent = raw_exchange(addr, b"", wait);
        assert!(silent.ends_with(b"3.776;"));
        good.join().unwrap()
    });
    rig.tap.wait_idle();
    let up = rig.guacd.wait_conns(2)[1].clone();
    check_recorded(rig.data.path(), "good", &up, &good, true);
}

#[test]
fn ten_thousand_dropped_connections_leak_nothing() {
    let rig = Rig::new("ssh-green-800x600.guac", 100_000);
    rig.warm();
    std::thread::sleep(Duration::from_millis(50));
    let port = |addr: &str| {
        addr.rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
    };
    let ports = [port(&rig.tap.addr).unwrap(), port(&rig.guacd.addr).unwrap()];
    let baseline = fds_of(&ports, rig.data.path());
    let prefixes: [&[u8]; 4] = [b"", b"6.select,3.vnc;", b"6.sel", b"6.select,3.vnc;4.size,"];
    for batch in 0..20 {
        let mut open = Vec::new();
        for i in 0..500 {
            let mut s = std::net::TcpStream::connect(&rig.tap.addr).unwrap();
            let _ = std::io::Write::write_all(&mut s, prefixes[(batch + i) % 4]);
            open.push(s);
        }
        drop(open);
    }
    rig.tap.wait_idle();
    // The listener keeps serving.
    let after = rig.client("after", Some("true"));
    assert!(after.error.is_none());
    rig.tap.wait_idle();
    let up = rig.guacd.wait_conns(2)[1].clone();
    check_recorded(rig.data.path(), "after", &up, &after, true);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        fds_of(&ports, rig.data.path()),
        baseline,
        "descriptors leaked"
    );
}

#[test]
fn shutdown_seals_live_sessions() {
    let mut rig = Rig::with(paced("vnc-windows-1366x768.guac", 20), 1_000_000, |_| {});
    let client = std::thread::scope(|scope| {
        let (addr, rec) = (rig.tap.addr.clone(), rig.rec.clone());
        let client =
            scope.spawn(move || run_client(&addr, &client_opts("bye", Some("true"), &rec)));
        std::thread::sleep(Duration::from_millis(300));
        rig.tap.stop();
        client.join().unwrap()
    });
    assert_ended_with_error(&client, "513");
    assert_eq!(rig.tap.sink.sealed("bye").len(), 1);
    let events = rig.tap.sink.events();
    assert_eq!(
        events.last(),
        Some(&SinkEvent::Closed(
            "bye".into(),
            EndReason::RecorderShutdown
        ))
    );
}

#[test]
fn a_cold_refusal_never_sends_connect_and_learned_args_avoid_guacd_entirely() {
    let rig = Rig::new("ssh-green-800x600.guac", 1_000_000);
    rig.tap.admission.set_disk_state(DiskState::Low);
    // Nothing known about `vnc` yet: the tap must ask guacd for its args, but never connects
    // a session (guacd sees no `connect`; the fake records only connections that got one).
    let cold = rig.client("cold", Some("true"));
    assert_eq!(cold.error.unwrap().args()[1], "513");
    let mut offered = fake_args();
    offered.extend(RECORDING_PARAMS.map(String::from));
    assert_eq!(cold.args, offered);
    rig.tap.wait_idle();
    assert_eq!(rig.guacd.connection_count(), 1);
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        rig.guacd.conns.lock().unwrap().is_empty(),
        "guacd got a connect"
    );

    // A tap that learned the args at start-up refuses without any contact.
    let rig2 = Rig::new("ssh-green-800x600.guac", 1_000_000);
    smol::block_on(session_recorder::ingest::learn_args(
        &rig2.tap.ctx,
        &["vnc"],
    ));
    assert_eq!(rig2.guacd.connection_count(), 1);
    rig2.tap.admission.set_disk_state(DiskState::Low);
    assert_refused(&rig2, "513", "below the floor");
}

// ---- benchmarks (release, `scripts/bench-tap`) ----

/// A plain TCP relay (one thread per direction): the baseline for throughput.
fn plain_relay(upstream: String) -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(c) = c else { continue };
            let u = std::net::TcpStream::connect(&upstream).unwrap();
            let (mut c1, mut u1) = (c.try_clone().unwrap(), u.try_clone().unwrap());
            let (mut c2, mut u2) = (c, u);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut u1, &mut c1);
                let _ = c1.shutdown(std::net::Shutdown::Both);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c2, &mut u2);
            });
        }
    });
    addr
}

fn timed_session_required(
    addr: &str,
    rec: &Arc<Vec<u8>>,
    session: &str,
    required: &str,
) -> (Duration, usize) {
    let mut opts = client_opts(session, Some(required), rec);
    opts.events_from = None;
    let t = Instant::now();
    let r = run_client(addr, &opts);
    assert!(r.error.is_none());
    (t.elapsed(), r.received.len())
}

fn timed_session(addr: &str, rec: &Arc<Vec<u8>>, session: &str, events: bool) -> (Duration, usize) {
    let mut opts = client_opts(session, Some("true"), rec);
    if !events {
        opts.events_from = None;
    }
    let t = Instant::now();
    let r = run_client(addr, &opts);
    assert!(r.error.is_none());
    (t.elapsed(), r.received.len())
}

#[test]
#[ignore]
fn bench_throughput_tap_vs_plain_relay() {
    let name = "vnc-jpeg-keys-1280x800.guac";
    let rec = recording(name);
    let mut opts = replay(name);
    opts.nop_every = 0;
    opts.bulk = true;
    let guacd = FakeGuacd::start(opts);
    // BENCH_DATA_DIR=/dev/shm separates the tap from the disk's writeback.
    let data = match std::env::var("BENCH_DATA_DIR") {
        Ok(dir) => tempfile::tempdir_in(dir).unwrap(),
        Err(_) => tempfile::tempdir().unwrap(),
    };
    let tap = TapHandle::start(test_settings(&guacd.addr, data.path(), 150_000_000));
    let relay = plain_relay(guacd.addr.clone());
    let mut best = [f64::MAX; 4];
    for round in 0..5 {
        let (t_direct, _) = timed_session(&guacd.addr, &rec, "d", false);
        let (t_relay, _) = timed_session(&relay, &rec, "r", false);
        let (t_tap, _) = timed_session(&tap.addr, &rec, &format!("t{round}"), false);
        tap.wait_idle();
        let (t_pass, _) = timed_session_required(&tap.addr, &rec, "p", "false");
        for (b, t) in best.iter_mut().zip([t_direct, t_relay, t_tap, t_pass]) {
            *b = b.min(t.as_secs_f64());
        }
    }
    let mb = rec.len() as f64 / 1e6;
    let cpu = thread_cpu_ms("tap-exec");
    println!("BENCH tap_thread_cpu_ms_total={cpu} (5 recorded sessions of {mb:.1} MB)");
    println!(
        "BENCH throughput recording={name} MB={mb:.1} direct={:.0} MB/s plain_relay={:.0} MB/s tap_recording={:.0} MB/s tap_passthrough={:.0} MB/s ratio_tap_recording_vs_relay={:.2} ratio_passthrough_vs_relay={:.2}",
        mb / best[0],
        mb / best[1],
        mb / best[2],
        mb / best[3],
        best[1] / best[2],
        best[1] / best[3]
    );
}

const FRAME: &[u8] =
    b"4.rect,1.0,2.10,2.10,3.100,3.100;5.cfill,2.14,1.0,1.0,1.0,1.0,3.255;4.sync,7.1234567,1.0;";

#[test]
#[ignore]
fn bench_latency_per_instruction() {
    // guacd sends one small instruction, the client echoes; measured round trips through the
    // tap (recording) vs straight to the echo server.
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let up_addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let _ = s.set_nodelay(true);
                let mut r = Reader::new();
                let _ = r.next(&mut s);
                let mut args = vec!["args".to_string()];
                args.extend(fake_args());
                s.write_all(&encode(&args)).unwrap();
                while let Some((ins, _)) = r.next(&mut s) {
                    if ins.opcode() == "connect" {
                        break;
                    }
                }
                s.write_all(&encode(&["ready", "$x"])).unwrap();
                // Echo: each client `sync` is answered by a drawing instruction and a sync.
                let mut buf = [0u8; 4096];
                let frame = FRAME;
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            if s.write_all(frame).is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
    let measure = |addr: &str, session: &str| -> Vec<Duration> {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        s.write_all(&encode(&["select", "vnc"])).unwrap();
        let mut r = Reader::new();
        let (args, _) = r.next(&mut s).unwrap();
        let mut connect = vec!["connect".to_string()];
        let p = params(session, Some("true"));
        for n in args.args() {
            connect.push(if n.starts_with("VERSION_") {
                n.clone()
            } else {
                p.get(n).cloned().unwrap_or_default()
            });
        }
        s.write_all(&encode(&connect)).unwrap();
        r.next(&mut s).unwrap();
        let mut times = Vec::new();
        let mut buf = [0u8; 4096];
        for _ in 0..5000 {
            let t = Instant::now();
            s.write_all(b"4.sync,7.1234567;").unwrap();
            let mut got = 0;
            while got < FRAME.len() {
                got += s.read(&mut buf).unwrap();
            }
            times.push(t.elapsed());
        }
        times
    };
    let data = tempfile::tempdir().unwrap();
    let tap = TapHandle::start(test_settings(&up_addr, data.path(), 150_000_000));
    let pct = |v: &mut Vec<Duration>, p: f64| {
        v.sort();
        v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
    };
    let mut direct = measure(&up_addr, "x");
    let mut through = measure(&tap.addr, "lat");
    let (d50, d99) = (pct(&mut direct, 0.5), pct(&mut direct, 0.99));
    let (t50, t99) = (pct(&mut through, 0.5), pct(&mut through, 0.99));
    println!(
        "BENCH latency round_trip direct p50={d50:?} p99={d99:?} via_tap p50={t50:?} p99={t99:?} added p50={:?} p99={:?}",
        t50.saturating_sub(d50),
        t99.saturating_sub(d99)
    );
}

#[test]
#[ignore]
fn bench_sessions_per_core() {
    // The busiest recording replayed at its real-time rate (its sync timestamps), N sessions at
    // once through one tap executor; the tap keeps up when every session finishes within a few
    // percent of the recording's own duration.
    let name = "vnc-jpeg-keys-1280x800.guac";
    let rec = recording(name);
    let n: usize = std::env::var("BENCH_SESSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let secs: f64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20.0);
    // Real-time pacing: cut the recording to `secs` seconds and pace at 100 instructions per
    // (duration / instructions * 100).
    let ins = raw_instructions(&rec);
    let total = ins.len();
    let ms_per_100 = (45_100.0 / total as f64 * 100.0) as u64;
    let keep = ((secs / 45.1) * total as f64) as usize;
    let cut: Vec<u8> = ins
        .iter()
        .take(keep.min(total))
        .flat_map(|(r, _)| r.clone())
        .collect();
    let cut = Arc::new(cut);
    let opts = ReplayOptions {
        recording: cut.clone(),
        nop_every: 0,
        pace_ms_per_100: ms_per_100,
        wait_for_disconnect: true,
        bulk: false,
    };
    let guacd = FakeGuacd::start(opts);
    let data = tempfile::tempdir().unwrap();
    let tap = TapHandle::start(test_settings(&guacd.addr, data.path(), 150_000_000));
    let start = Instant::now();
    let (tap_cpu0, blocking_cpu0) = (thread_cpu_ms("tap-exec"), thread_cpu_ms("blocking-1"));
    let hs: Vec<_> = (0..n)
        .map(|i| {
            let (a, r) = (tap.addr.clone(), cut.clone());
            std::thread::spawn(move || timed_session(&a, &r, &format!("p{i}"), true))
        })
        .collect();
    let times: Vec<Duration> = hs.into_iter().map(|h| h.join().unwrap().0).collect();
    let wall = start.elapsed();
    tap.wait_idle();
    let tap_cpu = thread_cpu_ms("tap-exec") - tap_cpu0;
    let _ = blocking_cpu0;
    let core_share = tap_cpu as f64 / wall.as_millis() as f64;
    let worst = times.iter().max().unwrap();
    let bytes: u64 = cut.len() as u64 * n as u64;
    println!(
        "BENCH sessions_per_core sessions={n} recording={name} cut_s={secs} replay_paced_ms_per_100={ms_per_100} worst_session={worst:?} wall={wall:?} aggregate_MB/s={:.1} tap_thread_cpu_ms={tap_cpu} tap_core_share={:.3} sessions_per_core_estimate={:.0}",
        bytes as f64 / 1e6 / wall.as_secs_f64(),
        core_share,
        n as f64 / core_share.max(1e-6)
    );
}

#[test]
fn a_client_that_stops_reading_stalls_no_one_else() {
    let rig = Rig::new("vnc-jpeg-keys-1280x800.guac", 150_000_000);
    rig.warm();
    // A client that completes the handshake, then never reads: the tap's writes to it block
    // once the socket buffers are full (22 MB of drawing stream waiting).
    let mut stuck = std::net::TcpStream::connect(&rig.tap.addr).unwrap();
    std::io::Write::write_all(&mut stuck, &encode(&["select", "vnc"])).unwrap();
    let mut r = Reader::new();
    let (args, _) = r.next(&mut stuck).unwrap();
    let p = params("stuck", Some("true"));
    let mut connect = vec!["connect".to_string()];
    for n in args.args() {
        connect.push(p.get(n).cloned().unwrap_or_else(|| n.clone()));
    }
    std::io::Write::write_all(&mut stuck, &encode(&connect)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // Another recorded session on the same executor runs to the end meanwhile.
    let client = rig.client("free-flowing", Some("true"));
    assert!(client.error.is_none());
    let conns = rig.guacd.wait_conns(2);
    let up = conns
        .iter()
        .find(|c| !c.received_after_connect.is_empty())
        .unwrap();
    assert!(client.received.len() > 20_000_000);
    check_recorded(rig.data.path(), "free-flowing", up, &client, true);
    drop(stuck);
    rig.tap.wait_idle();
}

/// `name` with per-user streams woven into its drawing stream, as guacd sends them to one
/// user: a remote clipboard copy, a file download whose blobs interleave with drawing, a
/// filesystem object with a `body` download, an `argv` echo, and the clipboard's stream index
/// reused by an `img` after its `end` (which is recorded again). Returns the stream and the
/// base64 payloads that must never reach a segment.
fn with_per_user_streams(name: &str) -> (Arc<Vec<u8>>, Vec<String>) {
    let secret_clip = "VE9QLVNFQ1JFVC1DTElQQk9BUkQ="; // "TOP-SECRET-CLIPBOARD"
    let secret_file = "RklMRS1DT05URU5ULUZJTEUtQ09OVEVOVC0=".repeat(150);
    let secret_body = "Qk9EWS1ET1dOTE9BRA==";
    let secret_argv = "QVJHVi1WQUxVRQ==";
    let e = |v: &[&str]| encode(v);
    let mut out = Vec::new();
    let (mut file_blobs, mut file_open) = (0, false);
    for (k, (raw, _)) in raw_instructions(&recording(name)).into_iter().enumerate() {
        out.extend_from_slice(&raw);
        match k {
            20 => {
                out.extend(e(&["clipboard", "901", "text/plain"]));
                out.extend(e(&["blob", "901", secret_clip]));
                out.extend(e(&["end", "901"]));
            }
            30 => {
                out.extend(e(&["file", "903", "application/octet-stream", "big.bin"]));
                file_open = true;
            }
            150 => {
                out.extend(e(&["filesystem", "7", "SFTP"]));
                out.extend(e(&["body", "7", "905", "text/plain", "/etc/motd"]));
                out.extend(e(&["blob", "905", secret_body]));
                out.extend(e(&["end", "905"]));
                out.extend(e(&["undefine", "7"]));
            }
            160 => {
                out.extend(e(&["argv", "907", "text/plain", "font-size"]));
                out.extend(e(&["blob", "907", secret_argv]));
                out.extend(e(&["end", "907"]));
            }
            170 => {
                out.extend(e(&["img", "901", "14", "0", "image/png", "0", "0"]));
                out.extend(e(&["blob", "901", "iVBORw0KGgo="]));
                out.extend(e(&["end", "901"]));
            }
            _ if file_open && k % 10 == 5 => {
                out.extend(e(&["blob", "903", &secret_file]));
                file_blobs += 1;
                if file_blobs == 8 {
                    out.extend(e(&["end", "903"]));
                    file_open = false;
                }
            }
            _ => {}
        }
    }
    assert!(
        !file_open,
        "the recording is long enough for the whole download"
    );
    let secrets = [secret_clip, &secret_file, secret_body, secret_argv];
    (Arc::new(out), secrets.map(String::from).to_vec())
}

#[test]
fn per_user_streams_are_left_out_of_segments_like_guacd_does() {
    let (stream, secrets) = with_per_user_streams("ssh-green-800x600.guac");
    let opts = ReplayOptions {
        recording: stream.clone(),
        ..replay("ssh-green-800x600.guac")
    };
    let rig = Rig::with(opts, 150_000_000, |_| {});
    let client = rig.client("streams", Some("true"));
    rig.tap.wait_idle();
    let up = rig.guacd.wait_conns(1)[0].clone();
    // The client got every byte, streams included; the segment holds the drawing stream with
    // the reused index's `img` and not one instruction of a per-user stream.
    check_recorded(rig.data.path(), "streams", &up, &client, true);
    let files = segment_files(rig.data.path(), "streams");
    let segment: Vec<u8> = files
        .iter()
        .flat_map(|f| std::fs::read(f).unwrap())
        .collect();
    for secret in &secrets {
        assert!(
            !segment
                .windows(secret.len())
                .any(|w| w == secret.as_bytes()),
            "a per-user stream's payload reached the segment"
        );
    }
    let ops: Vec<String> = raw_instructions(&segment)
        .into_iter()
        .map(|(_, o)| o)
        .collect();
    for op in [
        "clipboard",
        "file",
        "filesystem",
        "body",
        "undefine",
        "argv",
    ] {
        assert!(!ops.iter().any(|o| o == op), "{op} recorded");
    }
    assert!(ops.iter().any(|o| o == "img"));
    // In their place, one event instruction per clipboard change and file transfer (the
    // filesystem `body` download is a file transfer too); `argv` is no event.
    let count = |name: &str| ops.iter().filter(|o| *o == name).count();
    assert_eq!(count("x-sr-clipboard"), 1, "clipboard events");
    assert_eq!(count("x-sr-file"), 2, "file events");
    let text = String::from_utf8_lossy(&segment);
    assert!(
        text.contains("TOP-SECRET-CLIPBOARD"),
        "the clipboard text is its event's"
    );
    assert!(
        !text.contains("FILE-CONTENT"),
        "a file's content reached the segment"
    );
    // About the size guacd's own recording of the session would be (input events aside).
    let original = expected_drawing(&recording("ssh-green-800x600.guac"));
    let drawing: usize = raw_instructions(&segment)
        .iter()
        .filter(|(_, op)| op != "mouse" && op != "key" && !op.starts_with("x-sr-"))
        .map(|(raw, _)| raw.len())
        .sum();
    assert!(
        drawing < original.len() + 200,
        "segment drawing {drawing} bytes, guacd's {}",
        original.len()
    );
}

/// A client that completes the handshake for `session` and stops there (it reads nothing
/// more). Returns the stream, what came instead of `ready` if anything, and how long the
/// handshake took.
fn open_client(addr: &str, session: &str) -> (std::net::TcpStream, Option<Vec<String>>, Duration) {
    open_client_selecting(addr, "vnc", session)
}

/// Like [`open_client`], selecting `select` (a protocol, or `$ID` to join a connection).
fn open_client_selecting(
    addr: &str,
    select: &str,
    session: &str,
) -> (std::net::TcpStream, Option<Vec<String>>, Duration) {
    use std::io::Write;
    let started = Instant::now();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(&encode(&["select", select])).unwrap();
    let mut r = Reader::new();
    let (args, _) = r.next(&mut s).expect("args");
    assert_eq!(args.opcode(), "args");
    let p = params(session, Some("true"));
    let mut connect = vec!["connect".to_string()];
    for name in args.args() {
        match name.starts_with("VERSION_") {
            true => connect.push(name.clone()),
            false => connect.push(p.get(name).cloned().unwrap_or_default()),
        }
    }
    s.write_all(&encode(&["size", "1024", "768", "96"]))
        .unwrap();
    s.write_all(&encode(&connect)).unwrap();
    let (reply, _) = r.next(&mut s).expect("a reply");
    let error = (reply.opcode() != "ready").then(|| reply.elements.clone());
    (s, error, started.elapsed())
}

fn closed_events(rig: &Rig, session: &str) -> Vec<EndReason> {
    rig.tap
        .sink
        .events()
        .into_iter()
        .filter_map(|e| match e {
            SinkEvent::Closed(s, reason) if s == session => Some(reason),
            _ => None,
        })
        .collect()
}

#[test]
fn a_reconnect_while_the_old_connection_goes_continues_the_session_within_2_s() {
    let rig = Rig::with(live("ssh-green-800x600.guac"), 20_000, |_| {});
    rig.warm();
    let (old, error, _) = open_client(&rig.tap.addr, "re");
    assert!(error.is_none(), "{error:?}");
    std::thread::sleep(Duration::from_millis(300));
    // The browser reloads: the new connection arrives while the old one is still up, then
    // the old one's client goes.
    let (addr, rec) = (rig.tap.addr.clone(), rig.rec.clone());
    let new = std::thread::spawn(move || {
        let started = Instant::now();
        let (s, error, took) = open_client(&addr, "re");
        drop(rec);
        (s, error, took, started)
    });
    std::thread::sleep(Duration::from_millis(200));
    drop(old);
    let (new_stream, error, took, _) = new.join().unwrap();
    assert!(error.is_none(), "{error:?}");
    assert!(took < Duration::from_secs(2), "answered after {took:?}");
    std::thread::sleep(Duration::from_millis(300));
    drop(new_stream);
    rig.tap.wait_idle();
    let events = rig.tap.sink.events();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, SinkEvent::Rejoined(s, Rejoin::Continued { .. }) if s == "re")),
        "{events:?}"
    );
    // One session: segments in order, one close at the very end.
    let sealed = rig.tap.sink.sealed("re");
    let indices: Vec<u32> = sealed.iter().map(|s| s.0).collect();
    assert_eq!(indices, (0..sealed.len() as u32).collect::<Vec<_>>());
    assert!(sealed.len() >= 2, "both connections recorded: {sealed:?}");
    assert_eq!(closed_events(&rig, "re"), [EndReason::UserDisconnect]);
    assert!(matches!(events.last(), Some(SinkEvent::Closed(s, _)) if s == "re"));
    assert_eq!(segment_files(rig.data.path(), "re").len(), sealed.len());
}

#[test]
fn a_second_tab_is_recorded_beside_the_live_session_under_a_linked_id() {
    let rig = Rig::with(live("ssh-green-800x600.guac"), 1_000_000, |_| {});
    rig.warm();
    let (first, error, _) = open_client(&rig.tap.addr, "tabs");
    assert!(error.is_none(), "{error:?}");
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let second = rig.client("tabs", Some("true"));
    assert!(second.error.is_none(), "{:?}", second.error);
    let ready_at = second
        .received
        .windows(b"5.ready".len())
        .position(|w| w == b"5.ready");
    assert!(ready_at.is_some());
    assert!(started.elapsed() < Duration::from_secs(30));
    drop(first);
    rig.tap.wait_idle();
    let events = rig.tap.sink.events();
    assert!(
        events.iter().any(|e| matches!(
            e,
            SinkEvent::Rejoined(s, Rejoin::Linked { live }) if s == "tabs.2" && live == "tabs"
        )),
        "{events:?}"
    );
    assert!(!rig.tap.sink.sealed("tabs.2").is_empty());
    assert!(!rig.tap.sink.sealed("tabs").is_empty());
    assert_eq!(closed_events(&rig, "tabs"), [EndReason::UserDisconnect]);
    assert_eq!(closed_events(&rig, "tabs.2"), [EndReason::UserDisconnect]);
}

#[test]
fn a_second_tab_is_answered_within_2_s() {
    let rig = Rig::with(live("ssh-green-800x600.guac"), 1_000_000, |_| {});
    rig.warm();
    let (first, error, _) = open_client(&rig.tap.addr, "quick");
    assert!(error.is_none(), "{error:?}");
    let (second, error, took) = open_client(&rig.tap.addr, "quick");
    assert!(error.is_none(), "{error:?}");
    assert!(took < Duration::from_secs(2), "answered after {took:?}");
    drop((first, second));
    rig.tap.wait_idle();
}

#[test]
fn end_reasons_say_who_ended_the_session() {
    // guacd ends it with a goodbye (the replay's `disconnect`), the client never said one.
    let opts = ReplayOptions {
        wait_for_disconnect: false,
        ..replay("ssh-green-800x600.guac")
    };
    let rig = Rig::with(opts, 1_000_000, |_| {});
    rig.warm();
    let (mut s, error, _) = open_client(&rig.tap.addr, "by-server");
    assert!(error.is_none());
    let mut sink = Vec::new();
    let _ = std::io::Read::read_to_end(&mut s, &mut sink);
    rig.tap.wait_idle();
    assert_eq!(closed_events(&rig, "by-server"), [EndReason::ServerEnded]);
    // (The client's `disconnect` is the user's: every_recording_is_forwarded_unchanged_...)
    // guacd goes without a goodbye.
    let gone = tempfile::tempdir().unwrap();
    let upstream = rude_guacd(&encode(&["sync", "1"]));
    let tap = TapHandle::start(test_settings(&upstream, gone.path(), 1_000_000));
    let (mut s, error, _) = open_client(&tap.addr, "guacd-gone");
    assert!(error.is_none(), "{error:?}");
    let _ = std::io::Read::read_to_end(&mut s, &mut sink);
    tap.wait_idle();
    let reasons: Vec<SinkEvent> = tap.sink.events();
    assert_eq!(
        reasons.last(),
        Some(&SinkEvent::Closed(
            "guacd-gone".into(),
            EndReason::GuacdGone
        ))
    );
}

/// A guacd that answers every connection with `args`, then after `connect` sends `ready` and
/// `then`, and drops the connection without a goodbye.
fn rude_guacd(then: &[u8]) -> String {
    use std::io::Write;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let then = then.to_vec();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            let mut r = Reader::new();
            let mut args = vec!["args".to_string()];
            args.extend(fake_args());
            if s.write_all(&encode(&args)).is_err() {
                continue;
            }
            while let Some((ins, _)) = r.next(&mut s) {
                if ins.opcode() == "connect" {
                    let _ = s.write_all(&encode(&["ready", "$rude"]));
                    let _ = s.write_all(&then);
                    std::thread::sleep(Duration::from_millis(200));
                    break;
                }
            }
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    });
    addr
}

#[test]
fn a_session_that_ends_before_anything_is_drawn_leaves_nothing() {
    // guacd answers `ready`, then fails the login: an `error`, no frame.
    let opts = ReplayOptions {
        recording: Arc::new(encode(&["error", "Authentication failure", "769"])),
        wait_for_disconnect: false,
        ..replay("ssh-green-800x600.guac")
    };
    let rig = Rig::with(opts, 1_000_000, |_| {});
    rig.warm();
    let (mut s, error, _) = open_client(&rig.tap.addr, "no-login");
    assert!(error.is_none());
    let mut rest = Vec::new();
    let _ = std::io::Read::read_to_end(&mut s, &mut rest);
    rig.tap.wait_idle();
    assert!(rig.tap.sink.sealed("no-login").is_empty());
    assert_eq!(closed_events(&rig, "no-login"), [EndReason::ServerEnded]);
    assert!(
        !rig.data.path().join("segments/no-login").exists(),
        "no empty segment directory"
    );
}

#[test]
fn a_join_takes_the_protocol_and_target_of_the_session_it_joins() {
    let rig = Rig::with(live("ssh-green-800x600.guac"), 1_000_000, |_| {});
    rig.warm();
    let (owner, error, _) = open_client(&rig.tap.addr, "owner");
    assert!(error.is_none(), "{error:?}");
    let meta = rig.tap.sink.meta("owner").expect("opened");
    assert_eq!(
        (meta.protocol.as_str(), meta.target.as_str()),
        ("vnc", "desk-1:5900")
    );
    assert!(
        meta.client_addr.starts_with("127.0.0.1:"),
        "{}",
        meta.client_addr
    );
    // The fake guacd names every connection `$fake-connection-id` in its `ready`.
    let (joiner, error, _) = open_client_selecting(&rig.tap.addr, "$fake-connection-id", "joiner");
    assert!(error.is_none(), "{error:?}");
    let meta = rig.tap.sink.meta("joiner").expect("opened");
    assert_eq!(
        (meta.protocol.as_str(), meta.target.as_str()),
        ("vnc", "desk-1:5900")
    );
    // A connection this tap did not see start: joined, no target.
    let (stranger, error, _) = open_client_selecting(&rig.tap.addr, "$not-through-this-tap", "x");
    assert!(error.is_none(), "{error:?}");
    let meta = rig.tap.sink.meta("x").expect("opened");
    assert_eq!(
        (meta.protocol.as_str(), meta.target.as_str()),
        ("joined", "")
    );
    drop((owner, joiner, stranger));
    rig.tap.wait_idle();
    // Once the owner is gone, its connection id names nothing any more.
    let (late, error, _) = open_client_selecting(&rig.tap.addr, "$fake-connection-id", "late");
    assert!(error.is_none(), "{error:?}");
    assert_eq!(rig.tap.sink.meta("late").unwrap().protocol, "joined");
    drop(late);
    rig.tap.wait_idle();
}

#[test]
fn a_reconnect_after_the_session_closed_continues_it() {
    use session_recorder::app::sink::QueueSink;
    use session_recorder::clock::SystemClock;
    use session_recorder::ingest::AdmissionState;
    use session_recorder::queue::{AuditAction, AuditFilter, Queue, QueueOptions, SessionState};
    use session_recorder::status::StatusBoard;
    let data = tempfile::tempdir().unwrap();
    let guacd = FakeGuacd::start(live("ssh-green-800x600.guac"));
    let clock = Arc::new(SystemClock);
    let queue =
        Arc::new(Queue::open(&QueueOptions::new(data.path().join("q")), clock.clone()).unwrap());
    let status = StatusBoard::new(clock, 0, 1);
    let sink = Arc::new(QueueSink::new(
        queue.clone(),
        Arc::new(AdmissionState::new()),
        status,
    ));
    let settings = test_settings(&guacd.addr, data.path(), 1_000_000);
    let tap = TapHandle::start_on(settings, None, Some(sink));
    let session = |id: &str| queue.session_by_external(id).unwrap().expect("registered");
    let (first, error, _) = open_client(&tap.addr, "again");
    assert!(error.is_none(), "{error:?}");
    std::thread::sleep(Duration::from_millis(300));
    drop(first);
    tap.wait_idle();
    let closed = session("again");
    assert_eq!(closed.state, SessionState::Closed);
    let (first_end, first_segments) = (closed.end_ms.unwrap(), closed.segment_count);
    assert!(first_segments >= 1);
    assert_eq!(closed.target, "desk-1:5900");
    std::thread::sleep(Duration::from_millis(20));
    // The same id again, after the close: the session is live again, no new session.
    let (second, error, _) = open_client(&tap.addr, "again");
    assert!(error.is_none(), "{error:?}");
    let live = session("again");
    assert_eq!(
        (live.id, live.state.clone(), live.end_ms),
        (closed.id, SessionState::Live, None)
    );
    std::thread::sleep(Duration::from_millis(300));
    drop(second);
    tap.wait_idle();
    let again = session("again");
    assert_eq!(again.state, SessionState::Closed);
    assert!(
        again.segment_count > first_segments,
        "a new segment was appended"
    );
    assert!(
        again.end_ms.unwrap() > first_end,
        "the end moved to the new end"
    );
    assert!(again.end_reason.is_some());
    let audit = queue
        .list_audit(&AuditFilter {
            action: Some(AuditAction::SessionReconnected),
            limit: 10,
            ..AuditFilter::default()
        })
        .unwrap();
    assert!(
        audit
            .items
            .iter()
            .any(|a| a.message.contains("after the session had closed")),
        "{:?}",
        audit.items
    );
}
