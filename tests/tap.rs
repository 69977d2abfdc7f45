//! Integration tests of the Guacamole tap: a fake guacd replaying the real recordings, a test
//! client, the tap in between. Byte-exact forwarding, recording, rolling, reconnect, every
//! fail-closed path, pass-through, concurrency and hostile input.
//!
//! Benchmarks are `#[ignore]`d tests named `bench_*`, run in release by `scripts/bench-tap`.

#[path = "util/guacd_replay.rs"]
mod util;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use session_recorder::disk::DiskState;
use session_recorder::ingest::handshake::{encode, extend_args, parse_instruction};
use session_recorder::ingest::RECORDING_PARAMS;
use util::*;

/// Tests share the process's descriptor table: the descriptor-leak test runs alone (write
/// lock), every other test takes a read lock.
static FD_TABLE: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn shared() -> std::sync::RwLockReadGuard<'static, ()> {
    FD_TABLE.read().unwrap_or_else(|p| p.into_inner())
}

fn replay(name: &str) -> ReplayOptions {
    ReplayOptions {
        recording: recording(name),
        nop_every: 37,
        pace_ms_per_100: 0,
        wait_for_disconnect: true,
    }
}

fn client_opts(session: &str, required: Option<&str>, events: &Arc<Vec<u8>>) -> ClientOptions {
    ClientOptions {
        params: params(session, required),
        events_from: Some(events.clone()),
    }
}

/// The drawing stream guacd would record from what the fake sent: everything after `args`
/// except per-connection instructions.
fn expected_drawing(sent_after_args: &[u8]) -> Vec<u8> {
    raw_instructions(sent_after_args)
        .into_iter()
        .filter(|(_, op)| !matches!(op.as_str(), "ready" | "nop" | "disconnect"))
        .flat_map(|(raw, _)| raw)
        .collect()
}

/// Checks one recorded session end to end.
fn check_recorded(
    data: &Path,
    session: &str,
    up: &UpstreamConn,
    client: &ClientResult,
    record_keys: bool,
) {
    assert!(client.error.is_none(), "unexpected error {:?}", client.error);
    // 1. The client got every byte guacd sent, unchanged, after our extended `args`.
    let mut expected = extend_args(&fake_args());
    expected.extend_from_slice(&up.sent_after_args);
    assert_eq!(client.received.len(), expected.len(), "client byte count");
    assert!(client.received == expected, "client bytes differ");
    // 2. guacd saw the client's handshake with our values stripped from `connect`.
    assert_eq!(up.handshake.len(), client.sent_handshake.len());
    for (got, sent) in up.handshake.iter().zip(&client.sent_handshake) {
        if got.opcode() == "connect" {
            assert_eq!(got.elements[..], sent[..sent.len() - RECORDING_PARAMS.len()]);
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
    let mut all = Vec::new();
    for f in &files {
        all.extend_from_slice(&std::fs::read(f).unwrap());
    }
    let ins = raw_instructions(&all);
    let drawing: Vec<u8> = ins
        .iter()
        .filter(|(_, op)| op != "mouse" && op != "key")
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
    let _fd = shared();
    let data = tempfile::tempdir().unwrap();
    for name in all_recordings() {
        let rec = recording(&name);
        let guacd = FakeGuacd::start(replay(&name));
        let tap = TapHandle::start(test_settings(&guacd.addr, data.path(), 150_000_000));
        let session = format!("s-{}", name.trim_end_matches(".guac"));
        let client = run_client(&tap.addr, &client_opts(&session, Some("true"), &rec));
        tap.wait_idle();
        let up = guacd.wait_conns(1)[0].clone();
        check_recorded(data.path(), &session, &up, &client, true);
        assert_eq!(segment_files(data.path(), &session).len(), 1);
        let ev = tap.sink.events();
        assert!(ev.contains(&SinkEvent::Opened(session.clone(), 0)));
        assert_eq!(ev.last(), Some(&SinkEvent::Closed(session.clone())));
    }
}

#[test]
fn keys_are_recorded_only_when_configured() {
    let _fd = shared();
    let data = tempfile::tempdir().unwrap();
    let name = "vnc-jpeg-keys-1280x800.guac";
    let rec = recording(name);
    let guacd = FakeGuacd::start(replay(name));
    let mut settings = test_settings(&guacd.addr, data.path(), 150_000_000);
    settings.record_keys = false;
    let tap = TapHandle::start(settings);
    let client = run_client(&tap.addr, &client_opts("nokeys", None, &rec));
    tap.wait_idle();
    assert!(client.events.iter().any(|(op, _)| op == "key"));
    let up = guacd.wait_conns(1)[0].clone();
    check_recorded(data.path(), "nokeys", &up, &client, false);
}

#[test]
fn segments_roll_after_a_sync_and_each_parses() {
    let _fd = shared();
    let data = tempfile::tempdir().unwrap();
    let name = "vnc-windows-1366x768.guac";
    let rec = recording(name);
    let guacd = FakeGuacd::start(replay(name));
    let tap = TapHandle::start(test_settings(&guacd.addr, data.path(), 64 * 1024));
    let client = run_client(&tap.addr, &client_opts("roll", Some("true"), &rec));
    tap.wait_idle();
    let up = guacd.wait_conns(1)[0].clone();
    check_recorded(data.path(), "roll", &up, &client, true);
    let files = segment_files(data.path(), "roll");
    assert!(files.len() > 10, "only {} segments", files.len());
    let sealed = tap.sink.sealed("roll");
    assert_eq!(sealed.len(), files.len());
    for (n, ((index, path, bytes), file)) in sealed.iter().zip(&files).enumerate() {
        assert_eq!(*index as usize, n, "seal order");
        assert_eq!(path, file);
        let content = std::fs::read(file).unwrap();
        assert_eq!(*bytes, content.len() as u64);
        let ins = raw_instructions(&content);
        if n + 1 < files.len() {
            assert_eq!(ins.last().unwrap().1, "sync", "segment {n} ends after a sync");
            assert!(content.len() as u64 >= 64 * 1024);
        }
    }
}

#[test]
fn a_reconnect_continues_the_session() {
    let _fd = shared();
    let data = tempfile::tempdir().unwrap();
    let name = "ssh-green-800x600.guac";
    let rec = recording(name);
    let guacd = FakeGuacd::start(replay(name));
    let tap = TapHandle::start(test_settings(&guacd.addr, data.path(), 100_000));
    let first = run_client(&tap.addr, &client_opts("again", Some("true"), &rec));
    assert!(first.error.is_none());
    tap.wait_idle();
    let n = segment_files(data.path(), "again").len();
    assert!(n >= 2);
    let second = run_client(&tap.addr, &client_opts("again", Some("true"), &rec));
    assert!(second.error.is_none());
    tap.wait_idle();
    let sealed = tap.sink.sealed("again");
    let indices: Vec<u32> = sealed.iter().map(|s| s.0).collect();
    assert_eq!(indices, (0..sealed.len() as u32).collect::<Vec<_>>());
    assert!(sealed.len() >= 2 * n - 1);
    assert!(tap.sink.events().contains(&SinkEvent::Opened("again".into(), n as u32)));
    assert_eq!(segment_files(data.path(), "again").len(), sealed.len());
}

#[test]
fn a_session_without_recording_passes_through_untouched() {
    let _fd = shared();
    let data = tempfile::tempdir().unwrap();
    let name = "ssh-resize-1024x768.guac";
    let rec = recording(name);
    let guacd = FakeGuacd::start(replay(name));
    let tap = TapHandle::start(test_settings(&guacd.addr, data.path(), 100_000));
    // Refusing conditions do not matter to a session that need not be recorded.
    tap.admission.set_disk_state(DiskState::Low);
    let client = run_client(&tap.addr, &client_opts("free", Some("false"), &rec));
    tap.wait_idle();
    assert!(client.error.is_none());
    let up = guacd.wait_conns(1)[0].clone();
    let mut expected = extend_args(&fake_args());
    expected.extend_from_slice(&up.sent_after_args);
    assert!(client.received == expected);
    assert!(up.received_after_connect == client.sent_after_connect);
    assert!(!data.path().join("segments").exists());
    assert!(tap.sink.events().is_empty());
}

/// Warms the args cache with one unrecorded session, then checks that a refused session gets
/// an `error` with `code`, that guacd is never contacted and that the refusal is audited.
fn assert_refused(tap: &TapHandle, guacd: &FakeGuacd, rec: &Arc<Vec<u8>>, code: &str, text: &str) {
    let before = guacd.connection_count();
    let client = run_client(&tap.addr, &client_opts("must", Some("true"), rec));
    let err = client.error.expect("an error instruction");
    assert_eq!(err.args()[1], code, "status code");
    assert!(err.args()[0].contains(text), "message {:?}", err.args()[0]);
    tap.wait_idle();
    assert_eq!(guacd.connection_count(), before, "guacd was contacted");
    assert!(
        tap.sink
            .events()
            .iter()
            .any(|e| matches!(e, SinkEvent::Refused(s, r) if s == "must" && r.contains(text)))
    );
}

#[test]
fn each_fail_closed_path_refuses_without_contacting_guacd() {
    let _fd = shared();
    let data = tempfile::tempdir().unwrap();
    let name = "ssh-green-800x600.guac";
    let rec = recording(name);
    let guacd = FakeGuacd::start(replay(name));
    let tap = TapHandle::start(test_settings(&guacd.addr, data.path(), 1_000_000));
    let warm = run_client(&tap.addr, &client_opts("warm", Some("false"), &rec));
    assert!(warm.error.is_none());
    tap.wait_idle();
    assert_eq!(guacd.connection_count(), 1);

    for (state, text) in [
        (DiskState::Low, "below the floor"),
        (DiskState::Critical, "critically full"),
        (DiskState::Unknown, "cannot be determined"),
    ] {
        tap.admission.set_disk_state(state);
        assert_refused(&tap, &guacd, &rec, "513", text);
    }
    tap.admission.set_disk_state(DiskState::Available);

    tap.admission
        .set_settings_problem(Some("video.framerate out of range".into()));
    assert_refused(&tap, &guacd, &rec, "512", "invalid recorder settings");
    tap.admission.set_settings_problem(None);

    tap.admission.set_queue_problem(Some("map full".into()));
    assert_refused(&tap, &guacd, &rec, "512", "queue cannot be written");
    tap.admission.set_queue_problem(None);

    tap.sink.fail_open.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_refused(&tap, &guacd, &rec, "512", "simulated queue failure");
    tap.sink.fail_open.store(false, std::sync::atomic::Ordering::SeqCst);
    assert!(!data.path().join("segments/must").exists());

    // The default is to record: a session that says nothing is refused too.
    tap.admission.set_disk_state(DiskState::Low);
    let before = guacd.connection_count();
    let quiet = run_client(&tap.addr, &client_opts("must", None, &rec));
    assert_eq!(quiet.error.unwrap().args()[1], "513");
    assert_eq!(guacd.connection_count(), before);
    tap.admission.set_disk_state(DiskState::Available);

    // And everything admits again.
    let ok = run_client(&tap.addr, &client_opts("must", Some("true"), &rec));
    assert!(ok.error.is_none());
}

#[test]
fn an_unwritable_segment_directory_refuses_the_session() {
    let _fd = shared();
    let data = tempfile::tempdir().unwrap();
    let name = "ssh-green-800x600.guac";
    let rec = recording(name);
    let guacd = FakeGuacd::start(replay(name));
    // A regular file where the segments directory should be: nothing can be created below it
    // (even as root).
    let blocked = data.path().join("blocked");
    std::fs::write(&blocked, b"not a directory").unwrap();
    let tap = TapHandle::start(test_settings(&guacd.addr, &blocked, 1_000_000));
    let warm = run_client(&tap.addr, &client_opts("warm", Some("false"), &rec));
    assert!(warm.error.is_none());
    tap.wait_idle();
    assert_refused(&tap, &guacd, &rec, "512", "segment directory not writable");
}

#[test]
fn a_failing_sink_mid_session_closes_it_with_an_error() {
    let _fd = shared();
    let data = tempfile::tempdir().unwrap();
    let name = "vnc-windows-1366x768.guac";
    let rec = recording(name);
    let mut opts = replay(name);
    opts.pace_ms_per_100 = 2;
    opts.wait_for_disconnect = false;
    let guacd = FakeGuacd::start(opts);
    let tap = TapHandle::start(test_settings(&guacd.addr, data.path(), 20_000));
    tap.sink.fail_seal.store(true, std::sync::atomic::Ordering::SeqCst);
    let client = run_client(&tap.addr, &client_opts("sealfail", Some("true"), &rec));
    tap.wait_idle();
    let tail = raw_instructions(&client.received);
    let (raw, op) = tail.last().unwrap();
    assert_eq!(op, "error");
    let (err, _) = parse_instruction(raw).unwrap().unwrap();
    assert_eq!(err.args()[1], "512");
    assert!(tap.sink.events().contains(&SinkEvent::Closed("sealfail".into())));
}

#[test]
fn critical_disk_closes_live_recorded_sessions_after_sealing() {
    let _fd = shared();
    let data = tempfile::tempdir().unwrap();
    let name = "vnc-windows-1366x768.guac";
    let rec = recording(name);
    let mut opts = replay(name);
    opts.pace_ms_per_100 = 20;
    opts.wait_for_disconnect = false;
    let guacd = FakeGuacd::start(opts);
    let tap = TapHandle::start(test_settings(&guacd.addr, data.path(), 50_000));
    let addr = tap.addr.clone();
    let rec2 = rec.clone();
    let client = std::thread::spawn(move || {
        run_client(&addr, &client_opts("crit", Some("true"), &rec2))
    });
    // Let the session record a while, then fill the disk.
    std::thread::sleep(Duration::from_millis(400));
    tap.admission.set_disk_state(DiskState::Critical);
    let client = client.join().unwrap();
    tap.wait_idle();
    let ins = raw_instructions(&client.received);
    let (raw, op) = ins.last().unwrap();
    assert_eq!(op, "error", "the session ends with an error");
    let (err, _) = parse_instruction(raw).unwrap().unwrap();
    assert_eq!(err.args()[1], "513");
    assert!(err.args()[0].contains("critically full"));
    // Everything recorded was sealed and parses.
    let files = segment_files(data.path(), "crit");
    assert!(!files.is_empty());
    assert_eq!(tap.sink.sealed("crit").len(), files.len());
    for f in files {
        raw_instructions(&std::fs::read(f).unwrap());
    }
    assert_eq!(tap.sink.events().last(), Some(&SinkEvent::Closed("crit".into())));
}

#[test]
fn fifty_concurrent_recorded_sessions() {
    let _fd = shared();
    let data = tempfile::tempdir().unwrap();
    let name = "ssh-resize-1024x768.guac";
    let rec = recording(name);
    let guacd = FakeGuacd::start(replay(name));
    let tap = TapHandle::start(test_settings(&guacd.addr, data.path(), 100_000));
    // Warm the args cache so the concurrent sessions start the same way.
    let warm = run_client(&tap.addr, &client_opts("warm", Some("false"), &rec));
    assert!(warm.error.is_none());
    tap.wait_idle();
    let handles: Vec<_> = (0..50)
        .map(|i| {
            let (addr, rec) = (tap.addr.clone(), rec.clone());
            std::thread::spawn(move || {
                run_client(&addr, &client_opts(&format!("c{i}"), Some("true"), &rec))
            })
        })
        .collect();
    let results: Vec<ClientResult> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    tap.wait_idle();
    let conns = guacd.wait_conns(51);
    assert_eq!(conns.len(), 51);
    for (i, client) in results.iter().enumerate() {
        // Every upstream connection replayed the same bytes and received the same input.
        let up = &conns[i + 1];
        let session = format!("c{i}");
        let mut expected = extend_args(&fake_args());
        expected.extend_from_slice(&up.sent_after_args);
        assert!(client.received == expected, "client {i}");
        check_recorded(data.path(), &session, up, client, true);
    }
}

#[test]
fn hostile_clients_are_dropped_without_affecting_others() {
    let _fd = shared();
    let data = tempfile::tempdir().unwrap();
    let name = "ssh-green-800x600.guac";
    let rec = recording(name);
    let mut opts = replay(name);
    opts.pace_ms_per_100 = 5;
    let guacd = FakeGuacd::start(opts);
    let mut settings = test_settings(&guacd.addr, data.path(), 100_000);
    settings.handshake_timeout = Duration::from_millis(300);
    let tap = TapHandle::start(settings);
    let warm = run_client(&tap.addr, &client_opts("warm", Some("false"), &rec));
    assert!(warm.error.is_none());
    tap.wait_idle();

    // A good session runs alongside everything below.
    let (addr, rec2) = (tap.addr.clone(), rec.clone());
    let good = std::thread::spawn(move || {
        run_client(&addr, &client_opts("good", Some("true"), &rec2))
    });

    let wait = Duration::from_secs(5);
    let garbage = raw_exchange(&tap.addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", wait);
    assert!(garbage.ends_with(b"3.768;"), "garbage: {:?}", String::from_utf8_lossy(&garbage));
    let endless = raw_exchange(&tap.addr, b"6.select,99999999999999", wait);
    assert!(endless.ends_with(b"3.768;"));
    let mut big = b"6.select,3.vnc;".to_vec();
    big.extend_from_slice(b"70000.");
    let too_long = raw_exchange(&tap.addr, &big, wait);
    assert!(String::from_utf8_lossy(&too_long).contains("3.768;"));
    let half = raw_exchange(&tap.addr, b"6.select,3.vnc;4.size,4.10", wait);
    assert!(half.ends_with(b"3.776;"), "half: {:?}", String::from_utf8_lossy(&half));
    let silent = raw_exchange(&tap.addr, b"", wait);
    assert!(silent.ends_with(b"3.776;"));

    let good = good.join().unwrap();
    tap.wait_idle();
    let up = guacd.wait_conns(2)[1].clone();
    check_recorded(data.path(), "good", &up, &good, true);
}

#[test]
fn ten_thousand_dropped_connections_leak_nothing() {
    let _alone = FD_TABLE.write().unwrap_or_else(|p| p.into_inner());
    let data = tempfile::tempdir().unwrap();
    let name = "ssh-green-800x600.guac";
    let rec = recording(name);
    let guacd = FakeGuacd::start(replay(name));
    let tap = TapHandle::start(test_settings(&guacd.addr, data.path(), 100_000));
    let warm = run_client(&tap.addr, &client_opts("warm", Some("false"), &rec));
    assert!(warm.error.is_none());
    tap.wait_idle();
    std::thread::sleep(Duration::from_millis(50));
    let baseline = fd_count();
    let prefixes: [&[u8]; 4] = [b"", b"6.select,3.vnc;", b"6.sel", b"6.select,3.vnc;4.size,"];
    for batch in 0..20 {
        let mut open = Vec::new();
        for i in 0..500 {
            let mut s = std::net::TcpStream::connect(&tap.addr).unwrap();
            let _ = std::io::Write::write_all(&mut s, prefixes[(batch + i) % 4]);
            open.push(s);
        }
        drop(open);
    }
    tap.wait_idle();
    // The listener keeps serving.
    let after = run_client(&tap.addr, &client_opts("after", Some("true"), &rec));
    assert!(after.error.is_none());
    tap.wait_idle();
    let up = guacd.wait_conns(2)[1].clone();
    check_recorded(data.path(), "after", &up, &after, true);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(fd_count(), baseline, "descriptors leaked");
}

#[test]
fn shutdown_seals_live_sessions() {
    let _fd = shared();
    let data = tempfile::tempdir().unwrap();
    let name = "vnc-windows-1366x768.guac";
    let rec = recording(name);
    let mut opts = replay(name);
    opts.pace_ms_per_100 = 20;
    opts.wait_for_disconnect = false;
    let guacd = FakeGuacd::start(opts);
    let mut tap = TapHandle::start(test_settings(&guacd.addr, data.path(), 1_000_000));
    let (addr, rec2) = (tap.addr.clone(), rec.clone());
    let client = std::thread::spawn(move || {
        run_client(&addr, &client_opts("bye", Some("true"), &rec2))
    });
    std::thread::sleep(Duration::from_millis(300));
    tap.stop();
    let client = client.join().unwrap();
    let last = raw_instructions(&client.received).pop().unwrap();
    assert_eq!(last.1, "error");
    assert_eq!(tap.sink.sealed("bye").len(), 1);
    assert_eq!(tap.sink.events().last(), Some(&SinkEvent::Closed("bye".into())));
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
    let guacd = FakeGuacd::start(opts);
    let data = tempfile::tempdir().unwrap();
    let tap = TapHandle::start(test_settings(&guacd.addr, data.path(), 150_000_000));
    let relay = plain_relay(guacd.addr.clone());
    let mut best = [f64::MAX; 3];
    for round in 0..5 {
        let (t_direct, _) = timed_session(&guacd.addr, &rec, "d", false);
        let (t_relay, _) = timed_session(&relay, &rec, "r", false);
        let (t_tap, bytes) = timed_session(&tap.addr, &rec, &format!("t{round}"), false);
        tap.wait_idle();
        for (b, t) in best.iter_mut().zip([t_direct, t_relay, t_tap]) {
            *b = b.min(t.as_secs_f64());
        }
        let _ = bytes;
    }
    let mb = rec.len() as f64 / 1e6;
    let cpu = thread_cpu_ms("tap-exec");
    println!("BENCH tap_thread_cpu_ms_total={cpu} (5 recorded sessions of {mb:.1} MB)");
    println!(
        "BENCH throughput recording={name} MB={mb:.1} direct={:.0} MB/s plain_relay={:.0} MB/s tap_recording={:.0} MB/s ratio_tap_vs_relay={:.2}",
        mb / best[0],
        mb / best[1],
        mb / best[2],
        best[1] / best[2]
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
            connect.push(if n.starts_with("VERSION_") { n.clone() } else { p.get(n).cloned().unwrap_or_default() });
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
    let n: usize = std::env::var("BENCH_SESSIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let secs: f64 = std::env::var("BENCH_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(20.0);
    // Real-time pacing: cut the recording to `secs` seconds and pace at 100 instructions per
    // (duration / instructions * 100).
    let ins = raw_instructions(&rec);
    let total = ins.len();
    let ms_per_100 = (45_100.0 / total as f64 * 100.0) as u64;
    let keep = ((secs / 45.1) * total as f64) as usize;
    let cut: Vec<u8> = ins.iter().take(keep.min(total)).flat_map(|(r, _)| r.clone()).collect();
    let cut = Arc::new(cut);
    let opts = ReplayOptions {
        recording: cut.clone(),
        nop_every: 0,
        pace_ms_per_100: ms_per_100,
        wait_for_disconnect: true,
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
