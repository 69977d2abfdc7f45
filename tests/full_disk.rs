//! A really full disk (ENOSPC from the kernel, on a small tmpfs) while each writer writes:
//! the tap's segment files mid-session, the encoder's clip and thumbnail, the spool import.
//! Every path must end with a clear error, lose nothing that was already durable, and recover
//! once space is freed.
//!
//! The simulated disk probe (admission thresholds) is tested in tests/tap.rs; here the disk
//! probe says "available" and the kernel says otherwise.

#[path = "util/guacd_replay.rs"]
mod replay;
mod util;

use std::path::Path;
use std::sync::Arc;

use replay::*;
use session_recorder::ingest::handshake::parse_instruction;
use util::tmpfs::Tmpfs;

/// The recording replayed by the tap tests (1.4 MB of drawing).
const TAP_RECORDING: &str = "vnc-windows-1366x768.guac";

fn replay_opts() -> ReplayOptions {
    ReplayOptions {
        recording: recording(TAP_RECORDING),
        nop_every: 37,
        pace_ms_per_100: 0,
        wait_for_disconnect: true,
        bulk: false,
    }
}

fn client_opts(session: &str, required: &str, events: &Arc<Vec<u8>>) -> ClientOptions {
    ClientOptions {
        params: params(session, Some(required)),
        events_from: Some(events.clone()),
    }
}

/// The drawing stream guacd would record from what the fake sent.
fn expected_drawing(sent_after_args: &[u8]) -> Vec<u8> {
    raw_instructions(sent_after_args)
        .into_iter()
        .filter(|(_, op)| !matches!(op.as_str(), "ready" | "nop" | "disconnect"))
        .flat_map(|(raw, _)| raw)
        .collect()
}

/// The recorded drawing of a session (input events left out); panics unless every segment
/// file ends on an instruction boundary.
fn recorded_drawing(data: &Path, session: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for f in segment_files(data, session) {
        let bytes = std::fs::read(&f).unwrap();
        for (raw, op) in raw_instructions(&bytes) {
            if op != "mouse" && op != "key" {
                out.extend_from_slice(&raw);
            }
        }
    }
    out
}

#[test]
fn a_full_disk_mid_session_ends_it_with_an_error_and_seals_what_was_written() {
    // One segment: the disk fills during a buffer write in flight.
    full_disk_mid_session(150_000_000);
}

#[test]
fn a_full_disk_while_sealing_a_rolled_segment_ends_the_session_the_same_way() {
    // Segments smaller than a buffer flush: every write happens in a seal, after a roll.
    full_disk_mid_session(40_000);
}

fn full_disk_mid_session(segment_bytes: u64) {
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

    let client = run_client(&tap.addr, &client_opts("full", "true", &rec));
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
    let drawing = recorded_drawing(&data, "full");
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
    let files = segment_files(&data, "full");
    let sealed = tap.sink.sealed("full");
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
    assert_eq!(events.last(), Some(&SinkEvent::Closed("full".into())));

    // 4. The tap lives on: an unrecorded session passes, and once space is freed a recorded
    // session records completely.
    let plain = run_client(&tap.addr, &client_opts("plain", "false", &rec));
    assert!(plain.error.is_none());
    assert!(raw_instructions(&plain.received).last().unwrap().1 == "disconnect");
    fs.free_filler();
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
