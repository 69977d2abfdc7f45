//! Integration tests for `guac` (parser) and `render` (display model) on the real recordings
//! in the shared directory and guacenc's reference frames.

use crate::util;

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

/// `frame` as an RGB image at `width` x `height` the way guacenc makes a video frame: black
/// pillar- or letterboxes to the output's aspect ratio (in source pixels), then a bicubic scale.
fn to_video_size(frame: &Frame, width: u32, height: u32) -> image::RgbImage {
    let (fw, fh) = (i64::from(frame.width), i64::from(frame.height));
    let (w, h) = (i64::from(width), i64::from(height));
    let (mut left, mut top) = (0, 0);
    if fw * h / fh <= w {
        left = (w - fw * h / fh) * fh / h / 2;
    } else {
        top = (h - fh * w / fw) * fw / w / 2;
    }
    let padded = image::RgbImage::from_fn((fw + 2 * left) as u32, (fh + 2 * top) as u32, |x, y| {
        let (x, y) = (i64::from(x) - left, i64::from(y) - top);
        if x < 0 || y < 0 || x >= fw || y >= fh {
            return image::Rgb([0, 0, 0]);
        }
        let p = frame.pixel(x as u32, y as u32);
        image::Rgb([(p >> 16) as u8, (p >> 8) as u8, p as u8])
    });
    if padded.dimensions() == (width, height) {
        return padded;
    }
    image::imageops::resize(
        &padded,
        width,
        height,
        image::imageops::FilterType::CatmullRom,
    )
}

/// `img` after the round trip through BT.601 YCbCr 4:2:0 that every video frame (guacenc's
/// MPEG-4 and our H.264 alike) goes through: chroma averaged over 2x2 blocks. Comparing a
/// lossless frame with a 4:2:0 one would otherwise charge the subsampling of coloured text to
/// the renderer.
fn chroma_420(img: &image::RgbImage) -> image::RgbImage {
    let (w, h) = img.dimensions();
    let ycc = |p: &image::Rgb<u8>| {
        let (r, g, b) = (f64::from(p[0]), f64::from(p[1]), f64::from(p[2]));
        let y = 0.299 * r + 0.587 * g + 0.114 * b;
        (y, (b - y) * 0.564, (r - y) * 0.713)
    };
    let mut out = img.clone();
    for by in (0..h).step_by(2) {
        for bx in (0..w).step_by(2) {
            let mut block = Vec::new();
            for y in by..(by + 2).min(h) {
                for x in bx..(bx + 2).min(w) {
                    block.push((x, y, ycc(img.get_pixel(x, y))));
                }
            }
            let n = block.len() as f64;
            let cb = block.iter().map(|b| b.2.1).sum::<f64>() / n;
            let cr = block.iter().map(|b| b.2.2).sum::<f64>() / n;
            for (x, y, (luma, _, _)) in block {
                let r = luma + cr / 0.713;
                let b = luma + cb / 0.564;
                let g = (luma - 0.299 * r - 0.114 * b) / 0.587;
                let c = |v: f64| v.round().clamp(0.0, 255.0) as u8;
                out.put_pixel(x, y, image::Rgb([c(r), c(g), c(b)]));
            }
        }
    }
    out
}

/// PSNR in dB of the RGB channels of `frame` against an RGB(A) PNG (the frame is first
/// brought to the PNG's size as guacenc does when the display was resized).
fn psnr(frame: &Frame, png: &Path) -> f64 {
    let reference = image::open(png).expect("reference PNG").to_rgb8();
    let ours = chroma_420(&to_video_size(frame, reference.width(), reference.height()));
    let mut sum = 0f64;
    for (p, q) in reference.pixels().zip(ours.pixels()) {
        for c in 0..3 {
            let d = f64::from(p[c]) - f64::from(q[c]);
            sum += d * d;
        }
    }
    let mse = sum / (3.0 * f64::from(reference.width()) * f64::from(reference.height()));
    if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0f64 * 255.0 / mse).log10()
    }
}

/// The frame shown `instant_ms` after the first sync, as guacenc renders it: the display as it
/// was at the last frame boundary (a `sync`, or a timestamped `mouse`, which guacenc also
/// renders) at or before that instant. Drawing after that boundary belongs to a later frame.
fn render_until(bytes: &[u8], instant_ms: u64) -> Frame {
    let mut p = Parser::new();
    p.push(bytes);
    let mut d = Display::new();
    let mut first_sync = None;
    let mut shown = None;
    while let Some(i) = p.next().expect("parses") {
        let ts = match d.apply(&i).unwrap_or(Effect::None) {
            Effect::Sync { timestamp_ms } => {
                first_sync.get_or_insert(timestamp_ms);
                timestamp_ms
            }
            Effect::Pointer { timestamp_ms } => timestamp_ms,
            Effect::None => continue,
        };
        let Some(first) = first_sync else { continue };
        if ts > first + instant_ms {
            break;
        }
        shown = Some(d.flatten().clone());
    }
    shown.expect("a frame before the instant")
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
        if let Some(dir) = std::env::var_os("RENDER_DUMP_DIR") {
            let img = to_video_size(&frame, frame.width, frame.height);
            img.save(Path::new(&dir).join(format!("{name}.png")))
                .expect("dump frame");
        }
        println!("| {name} | {db:.2} |");
        if db < 30.0 {
            failures.push(format!("{name}: {db:.2} dB"));
        }
    }
    assert!(failures.is_empty(), "below 30 dB: {failures:?}");
}

/// Throughput figures (not an assertion: speed belongs in benchmarks). Run with
/// `cargo test --release --test it render::throughput -- --ignored --nocapture`.
#[test]
#[ignore = "timing report; run explicitly in release"]
fn throughput_report() {
    println!("| recording | MB | instructions | frames | wall ms | thread CPU ms |");
    for path in util::recordings() {
        let bytes = read(&path);
        let start = std::time::Instant::now();
        let cpu_start = thread_cpu_ms();
        let (_, frames, errors) = render_all(&bytes);
        let cpu_ms = thread_cpu_ms() - cpu_start;
        let ms = start.elapsed().as_secs_f64() * 1000.0;
        assert!(errors.is_empty());
        let n = parse_chunked(&bytes, 0, 1 << 16).len();
        let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("?");
        let mb = bytes.len() as f64 / 1e6;
        println!("| {name} | {mb:.2} | {n} | {frames} | {ms:.0} | {cpu_ms:.0} |");
    }
}

/// Damage tracking must never leave stale pixels: at regular syncs, the incrementally
/// flattened frame equals a full recomposite of the same state (a display restored from a
/// snapshot composites everything), and the snapshot survives postcard.
#[test]
fn incremental_flatten_equals_full_recomposite() {
    for name in [
        "vnc-windows-1366x768",
        "ssh-green-800x600",
        "rdp-desktop-1024x768",
    ] {
        let bytes = read(
            &util::shared_dir()
                .join("recordings")
                .join(format!("{name}.guac")),
        );
        let mut p = Parser::new();
        p.push(&bytes);
        let mut d = Display::new();
        let mut boundaries = 0;
        let mut checked = 0;
        while let Some(i) = p.next().expect("parses") {
            if matches!(
                d.apply(&i),
                Ok(Effect::Sync { .. } | Effect::Pointer { .. })
            ) {
                d.flatten();
                boundaries += 1;
                if boundaries % 97 == 0 {
                    let bytes = postcard::to_stdvec(&d.snapshot()).expect("serialise");
                    let snap = postcard::from_bytes(&bytes).expect("deserialise");
                    let mut full = Display::from_snapshot(&snap).expect("restore");
                    assert_eq!(
                        full.flatten(),
                        d.flatten(),
                        "{name} at boundary {boundaries}"
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked >= 3, "{name}: only {checked} checks");
    }
}

/// CPU time used by this thread so far, in milliseconds (wall time is noisy on a shared box).
fn thread_cpu_ms() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a complete rusage into the pointer it is given.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, usage.as_mut_ptr()) };
    assert_eq!(rc, 0, "getrusage");
    // SAFETY: initialised by the successful call above (and zeroed before).
    let usage = unsafe { usage.assume_init() };
    let ms = |t: libc::timeval| t.tv_sec as f64 * 1000.0 + t.tv_usec as f64 / 1000.0;
    ms(usage.ru_utime) + ms(usage.ru_stime)
}
