//! The encoder's bounds, checked from the outside on what ffprobe reads back:
//!
//! - the bitrate setting is a cap: on the busiest shared recording at a low cap (500 kb/s), and
//!   on every other one, no 1 s window of the clip holds more than the cap plus 10 %;
//! - a still screen costs only a few kB/s, even right after a busy session and even where the
//!   cap would allow far more;
//! - ten idle minutes (a synthetic recording: one drawing, then only `sync`s) make a clip of
//!   the session's duration and under 50 KB.
//!
//! Figures are printed for the closing note. CPU is not measured here (speed targets live in
//! scripts/bench-idle and scripts/bench-encode).

use crate::util;

use util::clip::{self, Packet};
use util::synthetic;

use session_recorder::encode::VideoSettings;

/// The low cap of the rate test, bits per second.
const LOW_CAP_BPS: u64 = 500_000;
/// How far over the cap one 1 s window may go.
const CAP_TOLERANCE: f64 = 1.10;
/// "A few kB/s": what a still screen may cost on average, bytes per second. A rate control
/// that spent the cap on a still picture (62.5 kB/s at 500 kb/s, 250 kB/s at the default cap)
/// is far above it, and so is a busy picture re-sent as an intra frame every few seconds.
const STILL_BYTES_PER_S_MAX: f64 = 5_000.0;
/// The idle target: ten still minutes in less than this many bytes.
const IDLE_10MIN_BYTES_MAX: u64 = 50_000;

/// The busiest shared recording: the most drawing per second (22.4 MB of PNG and JPEG updates
/// in 45 s, every part of the screen busy).
const BUSIEST: &str = "vnc-jpeg-keys-1280x800";

fn shared_recording(stem: &str) -> Vec<u8> {
    let path = util::shared_dir()
        .join("recordings")
        .join(format!("{stem}.guac"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn kbps(bytes: u64, seconds: f64) -> f64 {
    bytes as f64 * 8.0 / seconds / 1000.0
}

/// Encodes the shared recording `stem` at the low cap and checks every 1 s window of the
/// clip: returns the figures line, and whether the worst window stays within the tolerance.
fn low_cap_windows(stem: &str) -> (String, bool) {
    let settings = VideoSettings {
        bitrate_max_bps: LOW_CAP_BPS,
        ..VideoSettings::default()
    };
    let (_dir, mp4, report) = clip::encode(&shared_recording(stem), &settings);
    let p = clip::probe(&mp4);
    clip::decode_all(&mp4);
    let total: u64 = p.packets.iter().map(|k| k.bytes).sum();
    let (worst, at) = clip::max_window_bytes(&p.packets, 1.0);
    let cap_bytes = LOW_CAP_BPS as f64 / 8.0;
    let line = format!(
        "{stem} cap={} kb/s: frames={} keyframes={} bytes={} average={:.0} kb/s \
         worst 1 s window={:.0} kb/s at {at:.1}s ({:.2}x cap)",
        LOW_CAP_BPS / 1000,
        report.frames_encoded,
        report.keyframes,
        report.bytes_written,
        kbps(total, p.duration_s),
        kbps(worst, 1.0),
        worst as f64 / cap_bytes
    );
    (line, worst as f64 <= cap_bytes * CAP_TOLERANCE)
}

#[test]
fn busiest_recording_keeps_every_second_under_a_low_cap() {
    let (line, ok) = low_cap_windows(BUSIEST);
    eprintln!("{line}");
    assert!(ok, "over {} kb/s + 10 %: {line}", LOW_CAP_BPS / 1000);
}

/// The cap is a promise for every session, not only the busiest: the bursts that break it come
/// as often from a screen of new text (an SSH session's `clear`, a resize) as from images.
#[test]
fn every_shared_recording_keeps_every_second_under_a_low_cap() {
    let mut lines = Vec::new();
    let mut failures = Vec::new();
    for path in util::recordings() {
        let stem = path
            .file_stem()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        if stem == BUSIEST {
            continue; // Its own test above.
        }
        let (line, ok) = low_cap_windows(&stem);
        if !ok {
            failures.push(line.clone());
        }
        lines.push(line);
    }
    eprintln!("{}", lines.join("\n"));
    assert!(
        failures.is_empty(),
        "over {} kb/s + 10 %: {failures:#?}",
        LOW_CAP_BPS / 1000
    );
}

/// Bytes of the packets from `from_s` on.
fn bytes_from(packets: &[Packet], from_s: f64) -> u64 {
    packets
        .iter()
        .filter(|k| k.pts_s >= from_s)
        .map(|k| k.bytes)
        .sum()
}

#[test]
fn still_screen_after_a_busy_session_costs_a_few_kilobytes_per_second() {
    const IDLE_S: u64 = 60;
    // Stop the busy session where its screen is full (a quiet instant of the shared reference
    // frames, 29.053 s; an intra frame of that picture is ~120 kB), then leave it still.
    const CUT_MS: u64 = 29_053;
    let busy = synthetic::cut_at(&shared_recording(BUSIEST), CUT_MS);
    let (recording, activity_end_ms) =
        synthetic::append_idle(&busy, IDLE_S, synthetic::IDLE_SYNC_INTERVAL_MS);
    let first_ms = {
        let mut parser = session_recorder::guac::Parser::new();
        parser.push(&busy);
        std::iter::from_fn(|| parser.next().expect("parses"))
            .find(|i| i.opcode == "sync")
            .map(|i| i.args[0].parse::<u64>().expect("timestamp"))
            .expect("a sync")
    };
    // Everything after the last real frame boundary is still screen, refinements of the last
    // picture included: they are what the still screen costs.
    let still_from_s = (activity_end_ms - first_ms) as f64 / 1000.0 + 0.05;
    let mut failures = Vec::new();
    for cap in [LOW_CAP_BPS, VideoSettings::default().bitrate_max_bps] {
        let settings = VideoSettings {
            bitrate_max_bps: cap,
            ..VideoSettings::default()
        };
        let (_dir, mp4, _report) = clip::encode(&recording, &settings);
        let p = clip::probe(&mp4);
        let still_s = p.duration_s - still_from_s;
        assert!(
            still_s > IDLE_S as f64 - 1.0,
            "the idle tail is in the clip"
        );
        let still = bytes_from(&p.packets, still_from_s);
        let still_frames = p.packets.iter().filter(|k| k.pts_s >= still_from_s).count();
        let still_keys = p
            .packets
            .iter()
            .filter(|k| k.pts_s >= still_from_s && k.key)
            .count();
        let rate = still as f64 / still_s;
        eprintln!(
            "{BUSIEST} to {:.1} s + {IDLE_S} s still, cap={} kb/s: still part {still} bytes in \
             {still_frames} frames ({still_keys} keyframes) over {still_s:.1} s = {:.2} kB/s",
            CUT_MS as f64 / 1000.0,
            cap / 1000,
            rate / 1000.0
        );
        if rate > STILL_BYTES_PER_S_MAX {
            failures.push(format!("cap {cap}: {rate:.0} B/s"));
        }
    }
    assert!(
        failures.is_empty(),
        "still screen over {STILL_BYTES_PER_S_MAX} B/s: {failures:?}"
    );
}

#[test]
fn ten_idle_minutes_make_a_small_clip_of_the_right_duration() {
    const IDLE_S: u64 = 600;
    let recording = synthetic::still_screen(1024, 768, IDLE_S, synthetic::IDLE_SYNC_INTERVAL_MS);
    let (_dir, mp4, report) = clip::encode(&recording, &VideoSettings::default());
    let p = clip::probe(&mp4);
    clip::decode_all(&mp4);
    let bytes = std::fs::metadata(&mp4).expect("clip").len();
    eprintln!(
        "still 1024x768 for {IDLE_S} s: bytes={bytes} frames={} keyframes={} duration={:.2}s",
        report.frames_encoded, report.keyframes, p.duration_s
    );
    let frame_s = 1.0 / f64::from(VideoSettings::default().fps);
    assert!(
        (p.duration_s - IDLE_S as f64).abs() <= frame_s,
        "duration {} s for {IDLE_S} s of session",
        p.duration_s
    );
    assert!(p.packets[0].key, "starts with a keyframe");
    assert!(
        bytes < IDLE_10MIN_BYTES_MAX,
        "ten still minutes cost {bytes} bytes ({} keyframes), target < {IDLE_10MIN_BYTES_MAX}",
        report.keyframes
    );
}
