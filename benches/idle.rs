//! Idle benchmark (issue 12): what a still screen costs. Writes synthetic recordings (one
//! desktop-like drawing, then only `sync`s with advancing timestamps, as guacd writes while
//! nothing changes; tests/it/util/synthetic.rs) and encodes each with the release
//! `session-recorder encode` CLI, as scripts/bench-encode does, measuring the child's CPU
//! (user + sys, from `getrusage(RUSAGE_CHILDREN)`), wall time and output bytes.
//!
//! `cargo bench --bench idle [-- --runs N]` (or scripts/bench-idle). Figures, not pass/fail:
//! the targets (< 0.1 s CPU, < 50 KB for ten still minutes at 1024x768) are printed beside
//! them with "met" or "MISSED".

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// The integration tests' helpers: the synthetic recordings.
#[path = "../tests/it/util/mod.rs"]
#[allow(dead_code)] // the whole test harness: a bench uses a part of it
mod util;

use util::synthetic;

/// The targets for ten still minutes.
const CPU_TARGET_S: f64 = 0.1;
const BYTES_TARGET: u64 = 50_000;

/// One case: a still screen of `width` x `height` for `seconds`, a `sync` every
/// `sync_interval_ms`; `target` marks the case the figures are for.
struct Case {
    width: u32,
    height: u32,
    seconds: u64,
    sync_interval_ms: u64,
    target: bool,
}

const CASES: [Case; 4] = [
    Case {
        width: 1024,
        height: 768,
        seconds: 600,
        sync_interval_ms: synthetic::IDLE_SYNC_INTERVAL_MS,
        target: true,
    },
    Case {
        width: 1024,
        height: 768,
        seconds: 600,
        sync_interval_ms: 100,
        target: false,
    },
    Case {
        width: 1920,
        height: 1080,
        seconds: 600,
        sync_interval_ms: synthetic::IDLE_SYNC_INTERVAL_MS,
        target: false,
    },
    Case {
        width: 1024,
        height: 768,
        seconds: 3600,
        sync_interval_ms: synthetic::IDLE_SYNC_INTERVAL_MS,
        target: false,
    },
];

/// CPU time (user + sys) of every child waited for so far.
fn children_cpu() -> Duration {
    // SAFETY: all-zero is a valid `rusage` (plain integers and timevals).
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes one rusage into the valid pointer given.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    assert_eq!(rc, 0, "getrusage(RUSAGE_CHILDREN) failed");
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// What one encode cost.
struct Run {
    cpu_s: f64,
    wall_s: f64,
    bytes: u64,
    frames: String,
}

fn encode_once(binary: &str, recording: &Path, out: &Path) -> Run {
    let before = children_cpu();
    let started = Instant::now();
    let output = Command::new(binary)
        .args(["encode", "-f", "-o"])
        .arg(out)
        .arg(recording)
        .output()
        .expect("session-recorder runs");
    let wall_s = started.elapsed().as_secs_f64();
    let cpu_s = (children_cpu() - before).as_secs_f64();
    assert!(
        output.status.success(),
        "encode failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let frames = stdout
        .split(", ")
        .find(|p| p.ends_with(" frames"))
        .unwrap_or("? frames")
        .trim_end_matches(" frames")
        .to_string();
    Run {
        cpu_s,
        wall_s,
        bytes: std::fs::metadata(out).expect("clip written").len(),
        frames,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this binary without it (and
    // with the dev build): then one run of the target case, as a smoke test.
    let benching = args.iter().any(|a| a == "--bench");
    let runs = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1))
        .map_or(3, |n| n.parse::<usize>().expect("--runs N"));
    let (runs, cases) = if benching {
        (runs, &CASES[..])
    } else {
        (1, &CASES[..1])
    };
    let binary = env!("CARGO_BIN_EXE_session-recorder");
    let dir = tempfile::tempdir().expect("tempdir");
    println!(
        "| still screen | sync every | recording bytes | frames | cpu s (user+sys) | wall s \
         | clip bytes | B/s of video |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let mut notes = Vec::new();
    for case in cases {
        let recording = dir.path().join("still.guac");
        let data =
            synthetic::still_screen(case.width, case.height, case.seconds, case.sync_interval_ms);
        std::fs::write(&recording, &data).expect("write recording");
        let out = dir.path().join("still.mp4");
        let results: Vec<Run> = (0..runs)
            .map(|_| encode_once(binary, &recording, &out))
            .collect();
        let cpu_s = median(results.iter().map(|r| r.cpu_s).collect());
        let wall_s = median(results.iter().map(|r| r.wall_s).collect());
        let bytes = results[0].bytes;
        println!(
            "| {}x{} for {} min | {} ms | {} | {} | {cpu_s:.3} | {wall_s:.3} | {bytes} | {:.1} |",
            case.width,
            case.height,
            case.seconds / 60,
            case.sync_interval_ms,
            data.len(),
            results[0].frames,
            bytes as f64 / case.seconds as f64
        );
        if case.target {
            notes.push(format!(
                "target (1024x768, 10 min, sync every {} ms): cpu {cpu_s:.3} s < {CPU_TARGET_S} s \
                 {}; bytes {bytes} < {BYTES_TARGET} {}",
                case.sync_interval_ms,
                verdict(cpu_s < CPU_TARGET_S),
                verdict(bytes < BYTES_TARGET)
            ));
        }
    }
    println!("\nmedian of {runs} runs; {}", notes.join("; "));
}
