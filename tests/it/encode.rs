//! Integration tests of the encode stage on the real recordings: every recording encodes to a
//! playable H.264 MP4 (checked with ffprobe/ffmpeg) at native, scaled and odd sizes, with
//! faststart layout, bounded keyframe intervals, the session's duration, and a picture close to
//! our own lossless render (PSNR); bad input and bad settings fail with typed errors and leave
//! no output.

use crate::util;

use std::path::{Path, PathBuf};
use std::process::Command;

use session_recorder::encode::cli::{EncodeArgs, EncodeCliError, run};
use session_recorder::encode::convert::Converter;
use session_recorder::encode::{
    ClipReport, EncodeError, Preset, SettingsError, VideoSettings, encode_recording,
};
use session_recorder::guac::Parser;
use session_recorder::render::{Display, Frame};

/// Encodes `recording` into a fresh temp dir.
fn encode(recording: &Path, settings: &VideoSettings) -> (tempfile::TempDir, PathBuf, ClipReport) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mp4 = dir.path().join("clip.mp4");
    let jpg = dir.path().join("clip.jpg");
    let mut input = std::fs::File::open(recording).expect("open recording");
    let mut last_progress = 0;
    let report = encode_recording(&mut input, settings, None, None, &mp4, &jpg, &mut |n| {
        assert!(n >= last_progress, "progress never goes back");
        last_progress = n;
    })
    .unwrap_or_else(|e| panic!("{}: {e}", recording.display()));
    assert_eq!(
        last_progress, report.input_bytes,
        "progress reaches the end"
    );
    assert!(jpg.metadata().expect("thumbnail").len() > 0);
    (dir, mp4, report)
}

fn name(path: &Path) -> String {
    path.file_stem()
        .expect("name")
        .to_string_lossy()
        .into_owned()
}

/// Runs `tool` (ffprobe/ffmpeg) quietly with `before` arguments, `-i`-less input `mp4` (ffmpeg
/// gets `-i`), then `after`; asserts it succeeded without complaint and returns its stdout.
fn run_tool(tool: &str, before: &[&str], mp4: &Path, after: &[&str]) -> Vec<u8> {
    let mut cmd = Command::new(tool);
    cmd.args(["-v", "error"]).args(before);
    if tool == "ffmpeg" {
        cmd.arg("-i");
    }
    let out = cmd.arg(mp4).args(after).output().expect("tool runs");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{tool}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Runs ffprobe and parses its JSON.
fn ffprobe(mp4: &Path, args: &[&str]) -> serde_json::Value {
    let mut before = vec!["-of", "json"];
    before.extend_from_slice(args);
    serde_json::from_slice(&run_tool("ffprobe", &before, mp4, &[])).expect("ffprobe json")
}

/// Decodes every frame of `mp4`: fails on any decoder complaint.
fn decode_all(mp4: &Path) {
    run_tool("ffmpeg", &[], mp4, &["-f", "null", "-"]);
}

struct Probe {
    codec: String,
    width: u32,
    height: u32,
    duration_s: f64,
    /// (pts seconds, keyframe) for every packet.
    packets: Vec<(f64, bool)>,
}

fn probe(mp4: &Path) -> Probe {
    let v = ffprobe(
        mp4,
        &[
            "-select_streams",
            "v:0",
            "-show_streams",
            "-show_format",
            "-show_entries",
            "packet=pts_time,flags",
        ],
    );
    let stream = &v["streams"][0];
    let num =
        |x: &serde_json::Value| -> f64 { x.as_str().expect("string").parse().expect("number") };
    let packets = v["packets"]
        .as_array()
        .expect("packets")
        .iter()
        .map(|p| {
            let flags = p["flags"].as_str().expect("flags");
            (num(&p["pts_time"]), flags.starts_with('K'))
        })
        .collect();
    Probe {
        codec: stream["codec_name"].as_str().expect("codec").to_owned(),
        width: stream["width"].as_u64().expect("width") as u32,
        height: stream["height"].as_u64().expect("height") as u32,
        duration_s: num(&v["format"]["duration"]),
        packets,
    }
}

/// Top-level MP4 box types in file order.
fn top_level_boxes(mp4: &Path) -> Vec<String> {
    let bytes = std::fs::read(mp4).expect("read mp4");
    let mut kinds = Vec::new();
    let mut at = 0usize;
    while at + 8 <= bytes.len() {
        let mut size = u64::from(u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()));
        if size == 1 {
            size = u64::from_be_bytes(bytes[at + 8..at + 16].try_into().unwrap());
        }
        kinds.push(String::from_utf8_lossy(&bytes[at + 4..at + 8]).into_owned());
        assert!(size >= 8, "box size at {at}");
        at += size as usize;
    }
    assert_eq!(at, bytes.len(), "boxes cover the file exactly");
    kinds
}

/// guacd timestamps of every `sync` in a recording, by our parser.
fn sync_timestamps(recording: &Path) -> Vec<u64> {
    let mut parser = Parser::new();
    parser.push(&std::fs::read(recording).expect("read"));
    let mut out = Vec::new();
    while let Some(i) = parser.next().expect("parses") {
        if i.opcode == "sync" {
            out.push(i.args[0].parse().expect("timestamp"));
        }
    }
    out
}

/// Our lossless render of the display at `ms` after the first sync: every instruction up to the
/// last frame boundary (`sync` or timestamped `mouse`) at or before that instant.
fn render_at(recording: &Path, ms: u64) -> Frame {
    let mut parser = Parser::new();
    parser.push(&std::fs::read(recording).expect("read"));
    let mut display = Display::new();
    let mut held = Vec::new();
    let mut first = None;
    while let Some(i) = parser.next().expect("parses") {
        let ts: Option<u64> = match i.opcode.as_str() {
            "sync" => i.args.first().and_then(|a| a.parse().ok()),
            "mouse" if first.is_some() => i.args.get(3).and_then(|a| a.parse().ok()),
            _ => None,
        };
        let is_boundary = ts.is_some();
        held.push(i);
        if let Some(ts) = ts {
            let first = *first.get_or_insert(ts);
            if ts - first > ms {
                break;
            }
        }
        if is_boundary || first.is_none() {
            for h in held.drain(..) {
                let _ = display.apply(&h);
            }
        }
    }
    display.flatten().clone()
}

/// Decodes frame number `index` of `mp4` as RGB24 (BT.709 limited range, as signalled) or,
/// with `yuv`, as the raw I420 planes.
fn decode_frame(mp4: &Path, index: usize, width: u32, height: u32, yuv: bool) -> Vec<u8> {
    let (filter, pix_fmt, len) = if yuv {
        (
            format!("select=eq(n\\,{index})"),
            "yuv420p",
            width * height * 3 / 2,
        )
    } else {
        (
            format!("select=eq(n\\,{index}),scale=in_color_matrix=bt709:in_range=tv"),
            "rgb24",
            width * height * 3,
        )
    };
    let after = [
        "-vf",
        &filter,
        "-fps_mode",
        "passthrough",
        "-frames:v",
        "1",
        "-f",
        "rawvideo",
        "-pix_fmt",
        pix_fmt,
        "-",
    ];
    let out = run_tool("ffmpeg", &[], mp4, &after);
    assert_eq!(out.len(), len as usize, "decoded frame size");
    out
}

/// PSNR in dB over all samples of two equally sized byte buffers (for I420: the usual
/// 4:1:1-weighted average of the three planes).
fn psnr_bytes(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len());
    let sum: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
        .sum();
    let mse = sum / a.len() as f64;
    if mse == 0.0 {
        return 99.0;
    }
    10.0 * (255.0f64 * 255.0 / mse).log10()
}

/// Checks shared by every encode: codec, size, duration, layout, keyframe spacing.
fn check_clip(
    recording: &Path,
    mp4: &Path,
    report: &ClipReport,
    want_w: u32,
    want_h: u32,
) -> Probe {
    let p = probe(mp4);
    let label = name(recording);
    assert_eq!(p.codec, "h264", "{label}");
    assert_eq!((p.width, p.height), (want_w, want_h), "{label}: size");
    assert_eq!(
        (report.width, report.height),
        (want_w, want_h),
        "{label}: report size"
    );
    let syncs = sync_timestamps(recording);
    let session_s = (syncs.last().unwrap() - syncs.first().unwrap()) as f64 / 1000.0;
    let frame_s = 0.1;
    assert!(
        (p.duration_s - session_s).abs() <= frame_s + 1e-3,
        "{label}: duration {} vs session {session_s}",
        p.duration_s
    );
    let boxes = top_level_boxes(mp4);
    let moov = boxes.iter().position(|b| b == "moov").expect("moov");
    let mdat = boxes.iter().position(|b| b == "mdat").expect("mdat");
    assert!(moov < mdat, "{label}: faststart {boxes:?}");
    assert!(p.packets[0].1, "{label}: starts with a keyframe");
    // Keyframes by frames decoded, not by video time: a seek decodes at most
    // `keyframe_frames` frames (a still screen may go on for minutes without one).
    let keyframe_frames = VideoSettings::default().keyframe_frames as usize;
    let mut since_key = 0;
    for (i, &(t, key)) in p.packets.iter().enumerate() {
        since_key = if key { 1 } else { since_key + 1 };
        assert!(
            since_key <= keyframe_frames,
            "{label}: packet {i} at {t} s is {since_key} frames after a keyframe"
        );
    }
    assert_eq!(
        p.packets.len() as u64,
        report.frames_encoded,
        "{label}: frames"
    );
    assert_eq!(std::fs::metadata(mp4).unwrap().len(), report.bytes_written);
    p
}

/// Instants (ms after the first sync) to compare: the quiet instants of the shared
/// reference-frames README, or spread over the clip for recordings without quiet gaps.
fn instants(recording: &Path) -> Vec<u64> {
    match name(recording).as_str() {
        "rdp-desktop-1024x768" => vec![10_601, 31_847, 49_856],
        "ssh-green-800x600" => vec![9_933, 22_021, 44_220],
        "ssh-resize-1024x768" => vec![9_789, 21_493, 43_157],
        "vnc-jpeg-keys-1280x800" => vec![9_687, 29_053, 37_364],
        "vnc-odd-1023x767" => vec![6_294, 20_324, 26_173],
        "vnc-windows-1366x768" => vec![12_194, 36_776, 53_948],
        "vnc-xterm-800x600" => vec![6_888, 24_060, 36_629],
        _ => vec![5_000, 15_000, 25_000],
    }
}

/// One fidelity figure: the instant, the encoder's PSNR (decoded I420 against the I420 of our
/// lossless render, all planes) and the end-to-end RGB PSNR (includes 4:2:0 chroma loss).
#[derive(Debug, Clone, Copy)]
struct Fidelity {
    at_s: f64,
    yuv_db: f64,
    rgb_db: f64,
}

/// Compares the frame on screen at each instant with our lossless render of the state that
/// frame shows (the state at its timestamp). Instants where the display size differs from the
/// native output size (ssh-resize after a resize) are compared only through the converter.
fn fidelity(recording: &Path, mp4: &Path, p: &Probe) -> Vec<Fidelity> {
    let mut out = Vec::new();
    for at_ms in instants(recording) {
        let t = at_ms as f64 / 1000.0;
        let index = p
            .packets
            .iter()
            .rposition(|&(pts, _)| pts <= t + 1e-6)
            .expect("a frame");
        let pts_ms = (p.packets[index].0 * 1000.0).round() as u64;
        let reference = render_at(recording, pts_ms);
        let mut converter = Converter::new(p.width, p.height);
        if reference.width.next_multiple_of(2) == p.width
            && reference.height.next_multiple_of(2) == p.height
        {
            converter = Converter::new(reference.width, reference.height);
        }
        let mut picture = converter.new_picture();
        converter.convert(&reference, &mut picture);
        let (y, u, v) = picture.planes();
        let want = [y, u, v].concat();
        let yuv_db = psnr_bytes(&want, &decode_frame(mp4, index, p.width, p.height, true));
        let rgb_db = if reference.width.next_multiple_of(2) == p.width {
            util::clip::psnr_rgb(
                &reference,
                &decode_frame(mp4, index, p.width, p.height, false),
                p.width,
                3,
            )
        } else {
            f64::NAN
        };
        out.push(Fidelity {
            at_s: t,
            yuv_db,
            rgb_db,
        });
    }
    out
}

#[test]
fn every_recording_encodes_at_native_size_with_fidelity() {
    let mut lines = Vec::new();
    let mut failures = Vec::new();
    for recording in util::recordings() {
        let (_dir, mp4, report) = encode(&recording, &VideoSettings::default());
        let first = render_at(&recording, 0);
        let (w, h) = (
            first.width.next_multiple_of(2),
            first.height.next_multiple_of(2),
        );
        let p = check_clip(&recording, &mp4, &report, w, h);
        let figures = fidelity(&recording, &mp4, &p);
        // The encoder's fidelity. The RGB figure is reported, not asserted: 4:2:0 chroma alone
        // (before any encoding) caps coloured text on black at ~28-34 dB.
        failures.extend(
            figures
                .iter()
                .filter(|f| f.yuv_db < 38.0)
                .map(|f| format!("{}: {f:?}", name(&recording))),
        );
        let shown: Vec<String> = figures
            .iter()
            .map(|f| format!("{:.1}s:{:.1}/{:.1}", f.at_s, f.yuv_db, f.rgb_db))
            .collect();
        lines.push(format!(
            "{} frames={} keyframes={} bytes={} psnr_db(yuv/rgb)=[{}]",
            name(&recording),
            report.frames_encoded,
            report.keyframes,
            report.bytes_written,
            shown.join(" ")
        ));
    }
    eprintln!("{}", lines.join("\n"));
    assert!(failures.is_empty(), "PSNR below 38 dB: {failures:#?}");
}

fn recording(stem: &str) -> PathBuf {
    util::shared_dir()
        .join("recordings")
        .join(format!("{stem}.guac"))
}

#[test]
fn scaled_and_odd_output_sizes() {
    let cases = [
        ("vnc-jpeg-keys-1280x800", 640, 360, (640, 360)),
        ("vnc-odd-1023x767", 1023, 767, (1024, 768)),
        ("ssh-resize-1024x768", 640, 360, (640, 360)),
        ("vnc-windows-1366x768", 1920, 1080, (1920, 1080)),
    ];
    for (stem, w, h, want) in cases {
        let rec = recording(stem);
        let settings = VideoSettings {
            width: Some(w),
            height: Some(h),
            ..Default::default()
        };
        let (_dir, mp4, report) = encode(&rec, &settings);
        check_clip(&rec, &mp4, &report, want.0, want.1);
    }
}

#[test]
fn odd_native_size_keeps_pixels_exact_and_pads() {
    let rec = recording("vnc-odd-1023x767");
    let (_dir, mp4, report) = encode(&rec, &VideoSettings::default());
    let p = check_clip(&rec, &mp4, &report, 1024, 768);
    let figures = fidelity(&rec, &mp4, &p);
    assert!(figures.iter().all(|f| f.yuv_db >= 38.0), "{figures:?}");
}

/// A segment whose span lasts longer than its drawing (the session ended, or the next segment
/// began, 20 s after the last `sync`): the clip lasts the whole span within one frame, its last
/// picture held as one long sample at no frame cost, and the held picture is the final one.
#[test]
fn a_still_tail_is_held_to_the_end_of_the_span() {
    let rec = recording("vnc-xterm-800x600");
    let syncs = sync_timestamps(&rec);
    let span_ms = syncs.last().unwrap() - syncs.first().unwrap() + 20_000;
    let (_plain_dir, plain_mp4, plain) = encode(&rec, &VideoSettings::default());
    let dir = tempfile::tempdir().unwrap();
    let (mp4, jpg) = (dir.path().join("held.mp4"), dir.path().join("held.jpg"));
    let mut input = std::fs::File::open(&rec).unwrap();
    let held = encode_recording(
        &mut input,
        &VideoSettings::default(),
        None,
        Some(span_ms),
        &mp4,
        &jpg,
        &mut |_| {},
    )
    .expect("encodes");
    assert_eq!(held.duration_ms, span_ms, "the report says the span");
    let p = probe(&mp4);
    assert!(
        (p.duration_s * 1000.0 - span_ms as f64).abs() <= 100.0,
        "MP4 lasts {} s, span {span_ms} ms",
        p.duration_s
    );
    assert_eq!(
        held.frames_encoded, plain.frames_encoded,
        "holding encodes nothing"
    );
    assert_eq!(p.packets.len() as u64, held.frames_encoded);
    let last = p.packets.len() - 1;
    assert_eq!(
        decode_frame(&mp4, last, p.width, p.height, true),
        decode_frame(&plain_mp4, last, p.width, p.height, true),
        "the held picture is the final one"
    );
    decode_all(&mp4);
}

#[test]
fn resize_mid_stream_keeps_the_output_size() {
    let rec = recording("ssh-resize-1024x768");
    let (_dir, mp4, report) = encode(&rec, &VideoSettings::default());
    check_clip(&rec, &mp4, &report, 1024, 768);
    // Every frame decodes at the fixed size.
    decode_all(&mp4);
}

#[test]
fn segment_continues_from_previous_end_state() {
    // Split a recording at a sync: the second half, started from the first half's end state,
    // renders the same final picture as the whole.
    let rec = recording("ssh-green-800x600");
    let bytes = std::fs::read(&rec).unwrap();
    let mut parser = Parser::new();
    parser.push(&bytes);
    let mut cut = 0;
    let mut syncs = 0;
    while let Some(i) = parser.next().unwrap() {
        if i.opcode == "sync" {
            syncs += 1;
            if syncs == 150 {
                cut = (i.offset + i.raw_len) as usize;
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let run = |data: &[u8], start, stem: &str| {
        let mp4 = dir.path().join(format!("{stem}.mp4"));
        let jpg = dir.path().join(format!("{stem}.jpg"));
        let mut input = data;
        encode_recording(
            &mut input,
            &VideoSettings::default(),
            start,
            None,
            &mp4,
            &jpg,
            &mut |_| {},
        )
        .expect("encodes")
    };
    let first = run(&bytes[..cut], None, "a");
    let second = run(&bytes[cut..], Some(&first.end_state), "b");
    let whole = run(&bytes, None, "whole");
    let end_b = Display::from_snapshot(&second.end_state)
        .unwrap()
        .flatten()
        .clone();
    let end_whole = Display::from_snapshot(&whole.end_state)
        .unwrap()
        .flatten()
        .clone();
    assert_eq!(end_b, end_whole, "same end picture");
    assert_eq!(second.last_sync_ms, whole.last_sync_ms);
}

#[test]
fn truncated_recording_encodes_up_to_the_last_sync() {
    let rec = recording("vnc-xterm-800x600");
    let bytes = std::fs::read(&rec).unwrap();
    // Cut in the middle of a blob, well into the file.
    let mut cut = bytes.len() * 2 / 3;
    while bytes[cut] == b';' {
        cut += 1;
    }
    let dir = tempfile::tempdir().unwrap();
    let cut_file = dir.path().join("cut.guac");
    std::fs::write(&cut_file, &bytes[..cut]).unwrap();
    let (_d, mp4, report) = encode(&cut_file, &VideoSettings::default());
    let at = report.truncated_at.expect("truncation reported");
    assert!(
        at < cut as u64 && at > 0,
        "offset {at} before the cut {cut}"
    );
    assert_eq!(
        bytes[at as usize - 1],
        b';',
        "offset is just after a complete instruction"
    );
    decode_all(&mp4);
    assert!(probe(&mp4).duration_s > 10.0);
}

fn expect_failure(data: &[u8], settings: &VideoSettings) -> EncodeError {
    let dir = tempfile::tempdir().unwrap();
    let mp4 = dir.path().join("x.mp4");
    let jpg = dir.path().join("x.jpg");
    let mut input = data;
    let err = encode_recording(&mut input, settings, None, None, &mp4, &jpg, &mut |_| {})
        .expect_err("must fail");
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "no output or temp file left: {left:?}");
    err
}

#[test]
fn corrupt_in_the_middle_fails_with_the_offset() {
    let bytes = std::fs::read(recording("ssh-green-800x600")).unwrap();
    let mut bad = bytes.clone();
    // Find an instruction start past the middle and break its length prefix.
    let mut at = bad.len() / 2;
    while bad[at - 1] != b';' {
        at += 1;
    }
    bad[at] = b'#';
    match expect_failure(&bad, &VideoSettings::default()) {
        EncodeError::Corrupt { offset, .. } => assert_eq!(offset, at as u64),
        other => panic!("expected Corrupt, got {other}"),
    }
}

#[test]
fn garbage_is_not_a_guacamole_stream() {
    let garbage: Vec<u8> = (0..10_000u32).map(|i| (i * 7919 % 251) as u8).collect();
    assert!(matches!(
        expect_failure(&garbage, &VideoSettings::default()),
        EncodeError::Corrupt { offset: 0, .. }
    ));
    assert!(matches!(
        expect_failure(b"", &VideoSettings::default()),
        EncodeError::NoFrames { bytes: 0 }
    ));
}

#[test]
fn absurd_settings_are_refused_before_any_work() {
    let data = std::fs::read(recording("ssh-green-800x600")).unwrap();
    let zero_fps = VideoSettings {
        fps: 0,
        ..Default::default()
    };
    assert!(matches!(
        expect_failure(&data, &zero_fps),
        EncodeError::Settings(SettingsError::Fps { value: 0, .. })
    ));
    let huge = VideoSettings {
        width: Some(100_000),
        height: Some(100_000),
        ..Default::default()
    };
    assert!(matches!(
        expect_failure(&data, &huge),
        EncodeError::Settings(SettingsError::Width { .. })
    ));
}

fn args(files: Vec<PathBuf>, output: Option<PathBuf>, force: bool) -> EncodeArgs {
    EncodeArgs {
        size: None,
        bitrate: 2_000_000,
        fps: 10,
        qp: 23,
        keyframe_frames: 50,
        preset: Preset::Veryfast,
        x264_floor: false,
        events: None,
        mask_unechoed_input: true,
        force,
        output,
        files,
    }
}

#[test]
fn cli_refuses_to_overwrite_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("s.guac");
    std::fs::copy(recording("ssh-green-800x600"), &input).unwrap();
    let out = dir.path().join("s.guac.mp4");
    run(&args(vec![input.clone()], None, false)).expect("first run");
    assert!(out.exists() && dir.path().join("s.guac.jpg").exists());
    let events = std::fs::read(dir.path().join("s.guac.events.json")).expect("events object");
    session_recorder::events::format::from_bytes(&events).expect("readable events object");
    let before = std::fs::read(&out).unwrap();
    assert!(matches!(
        run(&args(vec![input.clone()], None, false)),
        Err(EncodeCliError::Exists { .. })
    ));
    assert_eq!(std::fs::read(&out).unwrap(), before, "untouched");
    run(&args(vec![input.clone()], None, true)).expect("forced");
    assert_eq!(std::fs::read(&out).unwrap(), before, "deterministic output");
    let named = dir.path().join("named.mp4");
    run(&args(vec![input.clone()], Some(named.clone()), false)).expect("-o");
    assert!(named.exists());
    assert!(matches!(
        run(&args(vec![input.clone(), input], Some(named), true)),
        Err(EncodeCliError::OutputWithManyInputs { count: 2 })
    ));
}
