//! Encoding a recording held in memory to a temporary MP4, and reading the clip back with
//! ffprobe (per-packet pts, size and keyframe flag; duration), for the tests that check what
//! the encoder writes from the outside (tests/it/encode_bounds.rs, tests/it/seek_browser.rs), and
//! the PSNR of a decoded picture against our own render (also tests/it/encode.rs).

use std::path::{Path, PathBuf};
use std::process::Command;

use session_recorder::encode::{ClipReport, VideoSettings, encode_recording};
use session_recorder::render::Frame;

/// One video packet as ffprobe reports it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Packet {
    /// Presentation time, seconds.
    pub pts_s: f64,
    /// Size of the coded frame, bytes.
    pub bytes: u64,
    /// An IDR (ffprobe's `K` flag).
    pub key: bool,
}

/// What ffprobe says about a clip.
#[derive(Debug, Clone)]
pub struct Probed {
    /// Container duration, seconds.
    pub duration_s: f64,
    /// Video packets in file order (pts order too: no B-frames).
    pub packets: Vec<Packet>,
}

/// Encodes `recording` with `settings` into `clip.mp4` in a new temp dir.
///
/// # Panics
/// When the encode fails: every input here is meant to encode.
pub fn encode(
    recording: &[u8],
    settings: &VideoSettings,
) -> (tempfile::TempDir, PathBuf, ClipReport) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mp4 = dir.path().join("clip.mp4");
    let jpg = dir.path().join("clip.jpg");
    let mut input = recording;
    let report = encode_recording(&mut input, settings, None, None, &mp4, &jpg, &mut |_| {})
        .unwrap_or_else(|e| panic!("encode failed: {e}"));
    (dir, mp4, report)
}

/// ffprobe's view of the first video stream of `mp4`.
///
/// # Panics
/// When ffprobe fails or complains.
pub fn probe(mp4: &Path) -> Probed {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-of", "json", "-select_streams", "v:0"])
        .args([
            "-show_format",
            "-show_entries",
            "packet=pts_time,size,flags",
        ])
        .arg(mp4)
        .output()
        .expect("ffprobe runs");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "ffprobe: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ffprobe json");
    let num =
        |x: &serde_json::Value| -> f64 { x.as_str().expect("a string").parse().expect("a number") };
    let packets = v["packets"]
        .as_array()
        .expect("packets")
        .iter()
        .map(|p| Packet {
            pts_s: num(&p["pts_time"]),
            bytes: num(&p["size"]) as u64,
            key: p["flags"].as_str().expect("flags").starts_with('K'),
        })
        .collect();
    Probed {
        duration_s: num(&v["format"]["duration"]),
        packets,
    }
}

/// The most bytes any window `[t, t + window_s)` of the clip holds, and where that window
/// starts. The fullest window starts at a packet, so only those starts are tried.
pub fn max_window_bytes(packets: &[Packet], window_s: f64) -> (u64, f64) {
    let mut best = (0, 0.0);
    let mut end = 0;
    let mut sum = 0u64;
    for p in packets {
        while end < packets.len() && packets[end].pts_s < p.pts_s + window_s - 1e-9 {
            sum += packets[end].bytes;
            end += 1;
        }
        if sum > best.0 {
            best = (sum, p.pts_s);
        }
        sum -= p.bytes;
    }
    best
}

/// Decodes every frame of `mp4` with ffmpeg; panics on any decoder complaint.
///
/// The frames keep the clip's own time base (`-enc_time_base -1`): by default ffmpeg re-times
/// them to the nominal 10 fps, where a final frame 14 ms after the previous one lands on the
/// same tick and its null muxer complains about the timestamps, not the picture.
pub fn decode_all(mp4: &Path) {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(mp4)
        .args(["-enc_time_base", "-1", "-f", "null", "-"])
        .output()
        .expect("ffmpeg runs");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "ffmpeg decode: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// PSNR in dB of decoded `pixels` (`bytes_per_px` 3 for RGB24, 4 for RGBA; `stride_w` pixels a
/// row) against `reference`'s area, over its R, G and B channels.
pub fn psnr_rgb(reference: &Frame, pixels: &[u8], stride_w: u32, bytes_per_px: u32) -> f64 {
    let mut sum = 0f64;
    for y in 0..reference.height {
        for x in 0..reference.width {
            let p = reference.pixel(x, y);
            let at = ((y * stride_w + x) * bytes_per_px) as usize;
            for (c, shift) in [16, 8, 0].iter().enumerate() {
                let d = f64::from((p >> shift) & 0xff) - f64::from(pixels[at + c]);
                sum += d * d;
            }
        }
    }
    let mse = sum / f64::from(reference.width * reference.height * 3);
    if mse == 0.0 {
        return 99.0;
    }
    10.0 * (255.0f64 * 255.0 / mse).log10()
}
