//! Render benchmark: per shared recording, parse + apply every instruction + flatten at every
//! `sync` (when dirty), as the encoder does, without colour conversion or x264.
//!
//! `cargo bench --bench render [-- FILTER...] [--iters N] [--full-only] [--checksum]`
//!
//! For each recording it prints process CPU seconds (best of `--iters`, default 3) of three
//! passes: parse only, parse + apply, parse + apply + flatten, and the input MB/s of the full
//! pass. `--checksum` adds an FNV hash over every flattened frame (to check that an
//! optimisation changed no pixel; costs time, so not in the timed figures). Hardware counters
//! are not available on every box (VMs): for instruction counts run one recording under
//! cachegrind, e.g. `scripts/bench-render --instructions`.
//!
//! The recordings are found by tests/it/util (`$SESSION_RECORDER_SHARED/recordings`, else
//! `<repo>/../shared/recordings`, else `/work/shared/recordings`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use session_recorder::guac::Parser;
use session_recorder::render::{Display, Effect};

/// The integration tests' helpers: where the shared recordings are.
#[path = "../tests/it/util/mod.rs"]
#[allow(dead_code)] // the whole test harness: a bench uses a part of it
mod util;

/// Bytes pushed to the parser at a time (the encoder reads 64 KiB chunks).
const CHUNK: usize = 64 * 1024;

/// How far one pass goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    Parse,
    Apply,
    Full,
}

/// The shared recordings whose file name contains one of `filters` (all when empty).
fn recordings(filters: &[String]) -> Vec<PathBuf> {
    util::recordings()
        .into_iter()
        .filter(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()))
        })
        .collect()
}

/// CPU time of this process so far.
fn cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid pointer given.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_PROCESS_CPUTIME_ID) failed");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// What one pass did: instructions, frames flattened, render errors, frame checksum.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    instructions: u64,
    frames: u64,
    errors: u64,
    checksum: u64,
}

fn fnv(mut h: u64, pixels: &[u32]) -> u64 {
    for &p in pixels {
        h ^= u64::from(p & 0x00FF_FFFF);
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    h
}

fn run(bytes: &[u8], pass: Pass, checksum: bool) -> Counts {
    let mut parser = Parser::new();
    let mut display = Display::new();
    let mut c = Counts {
        checksum: 0xCBF2_9CE4_8422_2325,
        ..Counts::default()
    };
    for chunk in bytes.chunks(CHUNK) {
        parser.push(chunk);
        while let Some(instr) = parser.next().expect("recordings parse") {
            c.instructions += 1;
            if pass == Pass::Parse {
                std::hint::black_box(&instr);
                continue;
            }
            match display.apply(&instr) {
                Ok(Effect::Sync { .. }) if pass == Pass::Full && display.is_dirty() => {
                    let frame = display.flatten();
                    c.frames += 1;
                    if checksum {
                        c.checksum = fnv(c.checksum, &frame.pixels);
                    }
                    std::hint::black_box(frame);
                }
                Ok(_) => {}
                Err(_) => c.errors += 1,
            }
        }
    }
    c
}

/// Best CPU time of `iters` runs of `pass`, and the counts of the last.
fn measure(bytes: &[u8], pass: Pass, iters: u32) -> (Duration, Counts) {
    let mut best = Duration::MAX;
    let mut counts = Counts::default();
    for _ in 0..iters {
        let t0 = cpu_time();
        counts = run(bytes, pass, false);
        best = best.min(cpu_time() - t0);
    }
    (best, counts)
}

fn main() {
    let mut filters = Vec::new();
    let mut iters = 3u32;
    let mut full_only = false;
    let mut checksum = false;
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this binary without it: then
    // one quick full pass per recording, as a smoke test that every recording renders.
    let benching = std::env::args().any(|a| a == "--bench");
    if !benching {
        iters = 1;
        full_only = true;
    }
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--iters" => {
                iters = args
                    .next()
                    .and_then(|v| v.parse::<u32>().ok())
                    .expect("--iters N")
                    .max(1);
            }
            "--full-only" => full_only = true,
            "--checksum" => checksum = true,
            a if a.starts_with("--") => {} // cargo bench passes --bench
            a => filters.push(a.to_owned()),
        }
    }
    let files = recordings(&filters);
    assert!(!files.is_empty(), "no recordings match {filters:?}");
    println!(
        "{:<34} {:>6} {:>7} {:>6} {:>8} {:>8} {:>8} {:>8}{}",
        "recording",
        "MB",
        "instrs",
        "frames",
        "parse s",
        "apply s",
        "full s",
        "MB/s",
        if checksum { "  checksum" } else { "" }
    );
    let (mut total_full, mut total_mb) = (Duration::ZERO, 0.0);
    for path in files {
        let bytes = read(&path);
        let mb = bytes.len() as f64 / 1e6;
        let (full, counts) = measure(&bytes, Pass::Full, iters);
        let (parse, apply) = if full_only {
            (None, None)
        } else {
            (
                Some(measure(&bytes, Pass::Parse, iters).0),
                Some(measure(&bytes, Pass::Apply, iters).0),
            )
        };
        let secs =
            |d: Option<Duration>| d.map_or("-".to_owned(), |d| format!("{:.3}", d.as_secs_f64()));
        let sum = if checksum {
            format!("  {:016x}", run(&bytes, Pass::Full, true).checksum)
        } else {
            String::new()
        };
        println!(
            "{:<34} {:>6.2} {:>7} {:>6} {:>8} {:>8} {:>8} {:>8.1}{sum}",
            path.file_name().unwrap_or_default().to_string_lossy(),
            mb,
            counts.instructions,
            counts.frames,
            secs(parse),
            secs(apply),
            secs(Some(full)),
            mb / full.as_secs_f64().max(1e-9),
        );
        if counts.errors > 0 {
            println!("  ({} render errors)", counts.errors);
        }
        assert!(counts.frames > 0, "{} rendered no frame", path.display());
        total_full += full;
        total_mb += mb;
    }
    println!(
        "{:<34} {:>6.2} {:>7} {:>6} {:>8} {:>8} {:>8.3} {:>8.1}",
        "total",
        total_mb,
        "",
        "",
        "",
        "",
        total_full.as_secs_f64(),
        total_mb / total_full.as_secs_f64().max(1e-9)
    );
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
