//! Seeking in the history player, in headless Chromium: a 3-minute clip made by our
//! encoder from a real guacd drawing stream (a shared recording played three times in a row)
//! is served by the real HTTP server; the player page seeks to 30 seeded random instants. For
//! each, the time from `currentTime =` to `seeked` is measured (printed: median and max, for
//! the closing note; not asserted, timing is the benchmarks' business), the frame on screen is
//! drawn to a canvas, and it must match our own lossless render of the display state the video
//! shows at that instant: PSNR >= 35 dB. A seek that showed the wrong frame (the keyframe it
//! started decoding from, a neighbour, a half-decoded picture) scores far lower; the PSNR of
//! each frame against the render at its keyframe is printed beside it to show how far.
//!
//! Needs `chromium` and `chromium-driver` (scripts/e2e-browser-deps installs them). Without
//! them the test says so and passes, except under CI (`CI` set), where it fails.

use crate::util;
use crate::util::serve_fixture;
use crate::util::webdriver;

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::json;

use serve_fixture::*;
use session_recorder::encode::VideoSettings;
use session_recorder::guac::Parser;
use session_recorder::render::{Display, Frame};
use util::clip::{self, Packet};
use util::synthetic::{self, Rng};
use webdriver::{Driver, artifacts, browser_available};

/// The real recording looped into the clip: window drags (large `copy`s), a wandering pointer
/// and redraws everywhere, so long runs of P-frames between keyframes; 59.8 s a pass.
const SOURCE: &str = "vnc-windows-1366x768";
/// Passes of `SOURCE`: three make the 3-minute clip.
const PASSES: u32 = 3;
/// Pause between passes, ms (a session that went quiet for a moment).
const PASS_GAP_MS: u64 = 200;
/// Seek instants and their seed (fixed: the same instants every run).
const SEEKS: usize = 30;
const SEED: u64 = 12;
/// The frame shown after a seek must be this close to our render (the issue's bar).
const PSNR_MIN_DB: f64 = 35.0;

/// What the browser showed after one seek.
struct Seek {
    target_s: f64,
    /// Milliseconds from `currentTime =` to `seeked`.
    seek_ms: f64,
    /// The frame drawn to the canvas, RGBA.
    rgba: Vec<u8>,
    width: u32,
    height: u32,
}

/// The index of the frame on screen at `t_s`: the last packet presented at or before it.
fn frame_at(packets: &[Packet], t_s: f64) -> usize {
    packets
        .iter()
        .rposition(|p| p.pts_s <= t_s + 1e-6)
        .expect("a frame at every instant")
}

/// Our render of the display at each of `instants_ms` (ascending, ms after the first `sync`):
/// every instruction up to the last frame boundary (`sync`, or `mouse` with a timestamp after
/// the first `sync`) at or before the instant, as the encoder samples it.
fn renders_at(recording: &[u8], instants_ms: &[u64], mut each: impl FnMut(usize, &Frame)) {
    assert!(instants_ms.is_sorted(), "instants ascending");
    let mut parser = Parser::new();
    parser.push(recording);
    let mut display = Display::new();
    let mut held = Vec::new();
    let mut first: Option<u64> = None;
    let mut next = 0;
    while let Some(i) = parser.next().expect("parses") {
        let ts: Option<u64> = match i.opcode.as_str() {
            "sync" => i.args.first().and_then(|a| a.parse().ok()),
            "mouse" if first.is_some() => i.args.get(3).and_then(|a| a.parse().ok()),
            _ => None,
        };
        let boundary = ts.is_some();
        if let Some(ts) = ts {
            let at = ts.saturating_sub(*first.get_or_insert(ts));
            while next < instants_ms.len() && at > instants_ms[next] {
                each(next, display.flatten());
                next += 1;
            }
        }
        held.push(i);
        if boundary || first.is_none() {
            for h in held.drain(..) {
                let _ = display.apply(&h);
            }
        }
    }
    while next < instants_ms.len() {
        each(next, display.flatten());
        next += 1;
    }
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

/// Seeks the paused player to `t_s`, times it, and draws the frame shown to a canvas.
/// `seeked` can fire before the sought frame is presented (on a loaded machine the first seek
/// then drew an empty canvas): the grab waits for the frame's presentation
/// (`requestVideoFrameCallback`), or at most 500 ms when the frame was presented before the
/// callback was asked for.
const SEEK_AND_GRAB: &str = r"
const t = arguments[0], done = arguments[arguments.length - 1];
const v = document.getElementById('player');
const c = document.createElement('canvas');
c.width = v.videoWidth; c.height = v.videoHeight;
let t0 = 0;
v.addEventListener('seeked', () => {
  const ms = performance.now() - t0;
  let grabbed = false;
  const grab = () => {
    if (grabbed) { return; }
    grabbed = true;
    c.getContext('2d').drawImage(v, 0, 0);
    done({ms: ms, at: v.currentTime, png: c.toDataURL('image/png'),
          error: v.error ? v.error.code : null});
  };
  if ('requestVideoFrameCallback' in v) {
    v.requestVideoFrameCallback(grab);
    setTimeout(grab, 500);
  } else {
    grab();
  }
}, {once: true});
t0 = performance.now();
v.currentTime = t;
";

fn seek(d: &Driver, t_s: f64) -> Seek {
    let r = d.js_async(SEEK_AND_GRAB, json!([t_s]));
    assert!(
        r["error"].is_null(),
        "video error after seeking to {t_s}: {r}"
    );
    let at = r["at"].as_f64().expect("currentTime");
    assert!((at - t_s).abs() < 1e-3, "asked for {t_s}, at {at}");
    let url = r["png"].as_str().expect("data url");
    let b64 = url
        .strip_prefix("data:image/png;base64,")
        .expect("a PNG data URL");
    let png = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("base64");
    let img = image::load_from_memory(&png).expect("PNG").to_rgba8();
    Seek {
        target_s: t_s,
        seek_ms: r["ms"].as_f64().expect("ms"),
        width: img.width(),
        height: img.height(),
        rgba: img.into_raw(),
    }
}

/// Opens the player page and waits until the clip's metadata is loaded, then pauses it.
fn open_paused_player(d: &Driver, base: &str, duration_s: f64) {
    d.go(&format!("{base}/play/{SESSION}/1"));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = d.js("const v = document.getElementById('player'); v.pause(); \
             return {error: v.error ? v.error.code : null, ready: v.readyState, \
             d: v.duration, paused: v.paused};");
        assert!(s["error"].is_null(), "video error: {s}");
        let ready = s["ready"].as_u64().unwrap_or(0) >= 1 && s["paused"] == true;
        if ready {
            let d_s = s["d"].as_f64().expect("duration");
            assert!(
                (d_s - duration_s).abs() < 0.01,
                "player duration {d_s}, clip {duration_s}"
            );
            return;
        }
        assert!(Instant::now() < deadline, "player never got ready: {s}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn save_png(path: &Path, s: &Seek) {
    image::save_buffer(path, &s.rgba, s.width, s.height, image::ColorType::Rgba8)
        .expect("save PNG");
}

#[test]
fn seeking_a_three_minute_clip_shows_the_right_frame() {
    if !browser_available() {
        return;
    }
    // The clip: a real recording three times over, encoded with the daemon's defaults.
    let source = util::shared_dir()
        .join("recordings")
        .join(format!("{SOURCE}.guac"));
    let one = std::fs::read(&source).expect("shared recording");
    let (recording, period_ms) = synthetic::looped(&one, PASSES, PASS_GAP_MS);
    let (_enc_dir, mp4, report) = clip::encode(&recording, &VideoSettings::default());
    let probed = clip::probe(&mp4);
    let packets = &probed.packets;
    let keys = packets.iter().filter(|p| p.key).count();
    eprintln!(
        "clip: {SOURCE} x{PASSES} ({:.1} s a pass): {:.1} s, {} frames, {keys} keyframes, \
         {} bytes",
        period_ms as f64 / 1000.0,
        probed.duration_s,
        packets.len(),
        report.bytes_written
    );
    assert!(probed.duration_s >= 175.0, "a 3-minute clip");

    // Serve it as clip 1 of the fixture's session (the fixture plays local files).
    let f = start();
    std::fs::copy(&mp4, &f.clips[0]).expect("clip in place");
    let base = format!("http://{}", f.addr);
    let profile = f.dir.path().join("profile");
    let downloads = f.dir.path().join("downloads");
    let d = Driver::start(&downloads, &profile);
    d.size(1600, 1000);
    d.script_timeout(Duration::from_secs(60));
    let landed = d.log_in(&format!("{base}/login"), ADMIN, PASSWORD);
    assert!(landed.ends_with("/sessions"), "landed on {landed}");
    open_paused_player(&d, &base, probed.duration_s);
    // One seek before the measured ones, so that each of those starts from a player that has
    // shown a frame (like a user's), not from one that has only read the metadata.
    seek(&d, 0.0);

    // Seek to seeded random instants (the last 0.1 s is only the final frame's tail).
    let mut rng = Rng::new(SEED);
    let targets: Vec<f64> = (0..SEEKS)
        .map(|_| (rng.unit() * (probed.duration_s - 0.1) * 1000.0).round() / 1000.0)
        .collect();
    let seeks: Vec<Seek> = targets.iter().map(|&t| seek(&d, t)).collect();
    d.screenshot(&artifacts().join("seek-player.png"));

    // The frame each seek must show, and the keyframe its decode started from.
    let frame_of: Vec<usize> = targets.iter().map(|&t| frame_at(packets, t)).collect();
    let key_of: Vec<usize> = frame_of
        .iter()
        .map(|&i| packets[..=i].iter().rposition(|p| p.key).expect("keyframe"))
        .collect();
    let ms_of = |i: usize| (packets[i].pts_s * 1000.0).round() as u64;
    // One render pass for all instants: each seek's frame, then its keyframe.
    let mut wanted: Vec<(u64, usize, bool)> = Vec::new();
    for (n, (&fi, &ki)) in frame_of.iter().zip(&key_of).enumerate() {
        wanted.push((ms_of(fi), n, false));
        wanted.push((ms_of(ki), n, true));
    }
    wanted.sort_unstable();
    let instants: Vec<u64> = wanted.iter().map(|w| w.0).collect();
    let mut shown_db = vec![f64::NAN; SEEKS];
    let mut vs_key_db = vec![f64::NAN; SEEKS];
    renders_at(&recording, &instants, |k, reference| {
        let (_, n, is_key) = wanted[k];
        let s = &seeks[n];
        assert_eq!(
            (s.width, s.height),
            (report.width, report.height),
            "canvas is the video's size"
        );
        let db = clip::psnr_rgb(reference, &s.rgba, s.width, 4);
        if is_key {
            vs_key_db[n] = db;
        } else {
            shown_db[n] = db;
        }
    });

    let mut failures = Vec::new();
    for (n, s) in seeks.iter().enumerate() {
        let (fi, ki) = (frame_of[n], key_of[n]);
        eprintln!(
            "seek {n:2} to {:7.3}s: {:6.1} ms, frame {fi} at {:.1}s, {} frames after keyframe \
             {ki}: PSNR {:.1} dB (vs the keyframe's picture {})",
            s.target_s,
            s.seek_ms,
            packets[fi].pts_s,
            fi - ki,
            shown_db[n],
            if fi == ki {
                "-".to_string()
            } else {
                format!("{:.1} dB", vs_key_db[n])
            }
        );
        if shown_db[n].is_nan() || shown_db[n] < PSNR_MIN_DB {
            save_png(&artifacts().join(format!("seek-{n}-wrong.png")), s);
            failures.push(format!("{:.3}s: {:.1} dB", s.target_s, shown_db[n]));
        }
    }
    let times: Vec<f64> = seeks.iter().map(|s| s.seek_ms).collect();
    let decoded: Vec<f64> = frame_of
        .iter()
        .zip(&key_of)
        .map(|(f, k)| (f - k) as f64)
        .collect();
    eprintln!(
        "seek time (currentTime= to seeked) over {SEEKS} seeks: median {:.1} ms, max {:.1} ms; \
         frames after the keyframe: median {:.0}, max {:.0}; PSNR min {:.1} dB",
        median(&times),
        times.iter().copied().fold(0.0, f64::max),
        median(&decoded),
        decoded.iter().copied().fold(0.0, f64::max),
        shown_db.iter().copied().fold(f64::INFINITY, f64::min)
    );
    assert!(
        failures.is_empty(),
        "frames shown after a seek differ from our render (< {PSNR_MIN_DB} dB; saved under \
         artifacts/): {failures:?}"
    );
}
