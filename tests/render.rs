//! Integration tests for `guac` (parser) and `render` (display model) on the real recordings
//! in the shared directory and guacenc's reference frames.

mod util;

use std::collections::BTreeMap;
use std::path::Path;

use session_recorder::guac::{Instruction, Parser};
use session_recorder::render::{Display, Effect, Frame};

/// All instructions of a byte stream pushed in chunks of `chunk` bytes (after a first chunk of
/// `first` bytes).
fn parse_chunked(bytes: &[u8], first: usize, chunk: usize) -> Vec<Instruction> {
    let mut p = Parser::new();
    let mut out = Vec::new();
    let (head, tail) = bytes.split_at(first.min(bytes.len()));
    for piece in std::iter::once(head).chain(tail.chunks(chunk)) {
        p.push(piece);
        while let Some(i) = p.next().expect("recordings parse") {
            out.push(i);
        }
    }
    assert_eq!(p.offset(), bytes.len() as u64, "whole stream consumed");
    assert_eq!(p.pending_bytes(), 0);
    out
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn every_recording_parses_fully_and_raw_bytes_line_up() {
    for path in util::recordings() {
        let bytes = read(&path);
        let all = parse_chunked(&bytes, 0, 1 << 20);
        assert!(
            all.len() > 1000,
            "{}: only {} instructions",
            path.display(),
            all.len()
        );
        let mut at = 0u64;
        for i in &all {
            assert_eq!(i.offset, at, "instructions are contiguous");
            let raw = &bytes[i.offset as usize..(i.offset + i.raw_len) as usize];
            assert_eq!(
                raw,
                i.encode().as_bytes(),
                "raw bytes re-encode identically"
            );
            at += i.raw_len;
        }
        assert_eq!(at, bytes.len() as u64);
    }
}

#[test]
fn resplitting_recordings_gives_identical_instructions() {
    for path in util::recordings() {
        let bytes = read(&path);
        // Bound the work on the big recording: the first 3 MB are plenty of splits.
        let bytes = &bytes[..bytes.len().min(3 << 20)];
        let cut = {
            let mut p = Parser::new();
            p.push(bytes);
            while p.next().expect("parses").is_some() {}
            p.offset() as usize
        };
        let bytes = &bytes[..cut];
        let reference = parse_chunked(bytes, 0, bytes.len().max(1));
        for (first, chunk) in [
            (0, 1),
            (1, 7),
            (3, 13),
            (5, 64),
            (17, 1000),
            (333, 4093),
            (8191, 8192),
        ] {
            let got = parse_chunked(bytes, first, chunk);
            assert_eq!(
                got,
                reference,
                "{} first={first} chunk={chunk}",
                path.display()
            );
        }
    }
}

/// Renders a whole recording, counting handler errors by kind.
fn render_all(bytes: &[u8]) -> (Display, usize, BTreeMap<String, usize>) {
    let mut p = Parser::new();
    p.push(bytes);
    let mut d = Display::new();
    let mut frames = 0;
    let mut errors = BTreeMap::new();
    while let Some(i) = p.next().expect("parses") {
        match d.apply(&i) {
            Ok(Effect::Sync { .. }) => {
                if d.is_dirty() {
                    d.flatten();
                    frames += 1;
                }
            }
            Ok(_) => {}
            Err(e) => *errors.entry(format!("{}: {e:?}", i.opcode)).or_insert(0) += 1,
        }
    }
    (d, frames, errors)
}

#[test]
fn every_recording_renders_without_handler_errors() {
    for path in util::recordings() {
        let (d, frames, errors) = render_all(&read(&path));
        println!(
            "{}: size {:?}, {frames} frames, errors {errors:?}",
            path.display(),
            d.size()
        );
        assert!(errors.is_empty(), "{}: {errors:?}", path.display());
        assert!(frames > 10);
    }
}

/// PSNR in dB of the RGB channels of `frame` against an RGB(A) PNG.
fn psnr(frame: &Frame, png: &Path) -> f64 {
    let reference = image::open(png).expect("reference PNG").to_rgb8();
    assert_eq!(
        (reference.width(), reference.height()),
        (frame.width, frame.height),
        "{}",
        png.display()
    );
    let mut sum = 0f64;
    for (x, y, p) in reference.enumerate_pixels() {
        let ours = frame.pixel(x, y);
        for (c, shift) in [(p[0], 16), (p[1], 8), (p[2], 0)] {
            let d = f64::from(c) - f64::from((ours >> shift) & 0xFF);
            sum += d * d;
        }
    }
    let mse = sum / (3.0 * f64::from(frame.width) * f64::from(frame.height));
    if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0f64 * 255.0 / mse).log10()
    }
}

/// Renders `bytes` up to `instant_ms` after the first sync: every instruction until the first
/// frame boundary (sync, or timestamped mouse) later than that instant.
fn render_until(bytes: &[u8], instant_ms: u64) -> Frame {
    let mut p = Parser::new();
    p.push(bytes);
    let mut d = Display::new();
    let mut first_sync = None;
    while let Some(i) = p.next().expect("parses") {
        let effect = d.apply(&i).unwrap_or(Effect::None);
        let ts = match effect {
            Effect::Sync { timestamp_ms } => {
                first_sync.get_or_insert(timestamp_ms);
                Some(timestamp_ms)
            }
            Effect::Pointer { timestamp_ms } => Some(timestamp_ms),
            Effect::None => None,
        };
        if let (Some(ts), Some(first)) = (ts, first_sync)
            && ts > first + instant_ms
        {
            break;
        }
    }
    d.flatten().clone()
}

#[test]
fn reference_frames_match_guacenc() {
    let dir = util::shared_dir().join("reference-frames");
    let mut pngs: Vec<_> = std::fs::read_dir(&dir)
        .expect("reference-frames dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "png"))
        .collect();
    pngs.sort();
    assert!(!pngs.is_empty());
    let mut failures = Vec::new();
    println!("| reference frame | PSNR dB |\n| --- | ---: |");
    for png in &pngs {
        let name = png
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("utf-8 name");
        let (recording, at) = name.split_once('@').expect("RECORDING@Tms");
        let instant_ms: u64 = at.trim_end_matches("ms").parse().expect("T");
        let bytes = read(
            &util::shared_dir()
                .join("recordings")
                .join(format!("{recording}.guac")),
        );
        let frame = render_until(&bytes, instant_ms);
        let db = psnr(&frame, png);
        println!("| {name} | {db:.2} |");
        if db < 30.0 {
            failures.push(format!("{name}: {db:.2} dB"));
        }
    }
    assert!(failures.is_empty(), "below 30 dB: {failures:?}");
}
