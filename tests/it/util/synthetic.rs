//! Synthetic Guacamole recordings for the encoder's proofs (tests/it/encode_bounds.rs,
//! tests/it/seek_browser.rs, benches/idle.rs): a still screen (one drawing, then only `sync`s
//! with advancing timestamps, as guacd writes while nothing changes), a real recording with
//! idle time appended, and a real recording looped into a longer one.
//!
//! Everything is built from plain protocol text, so the encoder under test reads exactly what
//! guacd would have written; nothing here knows how the encoder works.

use session_recorder::guac::{Instruction, Parser};

/// guacd's monotonic millisecond clock at the first `sync` of a synthetic recording (any value
/// works; the encoder uses differences).
pub const CLOCK_START_MS: u64 = 1_000_000;

/// How often guacd writes a `sync` while the screen is still: its terminal flushes about once a
/// second when idle (ssh-green's longest gap between `sync`s is 1005 ms, with runs of `sync`s
/// and nothing between them).
pub const IDLE_SYNC_INTERVAL_MS: u64 = 1_000;

fn ins(opcode: &str, args: &[String]) -> String {
    Instruction::new(opcode, args.to_vec()).encode()
}

fn sync(ts_ms: u64) -> String {
    ins("sync", &[ts_ms.to_string(), "0".into()])
}

/// A filled rectangle on the default layer (`rect` + `cfill`, composite `over`).
fn fill(out: &mut String, x: u32, y: u32, w: u32, h: u32, rgb: (u8, u8, u8)) {
    let s = |v: u32| v.to_string();
    out.push_str(&ins("rect", &["0".into(), s(x), s(y), s(w), s(h)]));
    let (r, g, b) = rgb;
    out.push_str(&ins(
        "cfill",
        &[
            "14".into(),
            "0".into(),
            r.to_string(),
            g.to_string(),
            b.to_string(),
            "255".into(),
        ],
    ));
}

/// The test generator, so every run draws the same picture.
pub use super::rng::Rng;

/// One drawing of a desktop-like screen: a background, three windows with title bars, and
/// rows of glyph-sized blocks standing in for text, so that an intra frame of it costs about
/// what a real terminal or desktop screen costs, not what a flat colour does (at 1024x768 with
/// the default settings of main at 076c21b: ~29 kB an IDR).
fn desktop(width: u32, height: u32) -> String {
    let mut out = ins("size", &["0".into(), width.to_string(), height.to_string()]);
    fill(&mut out, 0, 0, width, height, (32, 96, 112));
    let mut rng = Rng::new(0x5eed);
    let windows = [
        (width / 20, height / 16, width / 2, height * 2 / 3),
        (width * 11 / 20, height / 8, width * 2 / 5, height / 2),
        (width / 4, height * 3 / 5, width * 3 / 5, height / 3),
    ];
    for (wx, wy, ww, wh) in windows {
        let wh = wh.min(height - wy - 1);
        fill(&mut out, wx, wy, ww, wh, (235, 235, 230));
        fill(&mut out, wx, wy, ww, 22, (40, 70, 160));
        // Text: rows 14 px apart, words of 7 px glyphs separated by spaces.
        let mut y = wy + 30;
        while y + 10 < wy + wh {
            let mut x = wx + 6;
            let line_end = wx + 6 + (rng.below(u64::from(ww - 12)) as u32);
            while x + 7 < line_end {
                let word = 2 + rng.below(8) as u32;
                for _ in 0..word {
                    if x + 7 >= line_end {
                        break;
                    }
                    let shade = 20 + rng.below(60) as u8;
                    let gh = 6 + rng.below(4) as u32;
                    fill(&mut out, x, y + 10 - gh, 5, gh, (shade, shade, shade + 20));
                    x += 7;
                }
                x += 7;
            }
            y += 14;
        }
    }
    out
}

/// A still screen: one desktop-like drawing at `width` x `height`, then a `sync` every
/// `sync_interval_ms` for `seconds` and nothing else.
pub fn still_screen(width: u32, height: u32, seconds: u64, sync_interval_ms: u64) -> Vec<u8> {
    assert!(sync_interval_ms > 0, "sync interval must be positive");
    let mut out = desktop(width, height);
    let mut ts = CLOCK_START_MS;
    let end = CLOCK_START_MS + seconds * 1000;
    while ts <= end {
        out.push_str(&sync(ts));
        ts += sync_interval_ms;
    }
    out.into_bytes()
}

/// The timestamp a frame boundary carries: `sync` (arg 0) and `mouse` (arg 3).
fn boundary_arg(i: &Instruction) -> Option<usize> {
    match i.opcode.as_str() {
        "sync" => Some(0),
        "mouse" if i.args.len() > 3 => Some(3),
        _ => None,
    }
}

/// Every instruction of `recording` with its raw bytes, and the first and last `sync`
/// timestamps.
fn parse_all(recording: &[u8]) -> (Vec<Instruction>, u64, u64) {
    let mut parser = Parser::new();
    parser.push(recording);
    let mut all = Vec::new();
    let (mut first, mut last) = (None, 0);
    while let Some(i) = parser.next().expect("a recording that parses") {
        if i.opcode == "sync" {
            let ts: u64 = i.args[0].parse().expect("sync timestamp");
            first.get_or_insert(ts);
            last = ts;
        }
        all.push(i);
    }
    (all, first.expect("a recording with a sync"), last)
}

/// The start of `recording` up to and including its last `sync` at most `ms` after the first:
/// a session that stops there with that picture on screen.
pub fn cut_at(recording: &[u8], ms: u64) -> Vec<u8> {
    let (all, first, _) = parse_all(recording);
    let end = all
        .iter()
        .filter(|i| i.opcode == "sync")
        .take_while(|i| i.args[0].parse::<u64>().expect("sync timestamp") - first <= ms)
        .last()
        .map(|i| i.offset + i.raw_len)
        .expect("a sync");
    recording[..end as usize].to_vec()
}

/// `recording` followed by `seconds` of still screen: a `sync` every `sync_interval_ms` after
/// its last `sync`. Returns the stream and the guacd timestamp where the activity ends.
pub fn append_idle(recording: &[u8], seconds: u64, sync_interval_ms: u64) -> (Vec<u8>, u64) {
    let (_, _, last) = parse_all(recording);
    let mut out = recording.to_vec();
    let mut ts = last + sync_interval_ms;
    while ts <= last + seconds * 1000 {
        out.extend_from_slice(sync(ts).as_bytes());
        ts += sync_interval_ms;
    }
    (out, last)
}

/// `recording` played `times` times in a row, each pass `gap_ms` after the previous one's last
/// `sync`: the drawing instructions are guacd's own, byte for byte; only the timestamps of
/// `sync` and `mouse` are shifted so that time keeps advancing. Returns the stream and the
/// length of one pass in ms (first to last `sync`, plus the gap).
pub fn looped(recording: &[u8], times: u32, gap_ms: u64) -> (Vec<u8>, u64) {
    let (all, first, last) = parse_all(recording);
    let period = last - first + gap_ms;
    let mut out = Vec::with_capacity(recording.len() * times as usize);
    for pass in 0..u64::from(times) {
        for i in &all {
            match boundary_arg(i) {
                Some(at) if pass > 0 => {
                    let mut shifted = i.clone();
                    if let Ok(ts) = i.args[at].parse::<u64>() {
                        shifted.args[at] = (ts + pass * period).to_string();
                    }
                    out.extend_from_slice(shifted.encode().as_bytes());
                }
                _ => {
                    let raw = &recording[i.offset as usize..(i.offset + i.raw_len) as usize];
                    out.extend_from_slice(raw);
                }
            }
        }
    }
    (out, period)
}
