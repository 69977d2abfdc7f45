//! Crash safety of the whole daemon: the real binary on a spool of real recordings, killed
//! with SIGKILL at pseudo-random moments (deterministic seed) and restarted each time, must end
//! with exactly the result of an uninterrupted run: every segment exactly one clip in the
//! bucket, no duplicate, no orphan file, each clip byte-identical (x264 runs with one thread,
//! so encoding is deterministic). One long session spans two segments (the second starts from
//! the first one's saved display state); short ones are fed into the spool every second kill,
//! so that most kills land on a daemon with work in flight (import, encode, upload).
//!
//! `CRASH_KILLS` (default 20) and `CRASH_SEED` tune it; `scripts/crash-test` runs 100 kills on a
//! release build.

#[path = "util/daemon.rs"]
mod daemon;
mod util;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use daemon::{Home, expected_segments, files_under, wait_for};
use session_recorder::clock::SystemClock;
use session_recorder::ingest::spool::plan_pieces;
use session_recorder::queue::{ClipStateKind, Queue, QueueOptions, SegmentStateKind};

const SEGMENT_BYTES: u64 = 1_000_000;

/// The long session: two segments at 1 MB, so the second starts from the first one's saved
/// display state.
const LONG: &str = "vnc-odd-1023x767.guac";
/// The recordings the short sessions are cut from, alternately.
const SHORT_SOURCES: [&str; 2] = ["ssh-green-800x600.guac", "vnc-xterm-800x600.guac"];
/// Short sessions are the start of a recording up to a `sync` near this size: a few seconds of
/// video, so that the test stays quick in a debug build.
const SHORT_BYTES: u64 = 200_000;

/// One session of the test: (recording file, spool name, session id).
struct Input {
    src: PathBuf,
    name: String,
    id: String,
}

/// The long session then `n - 1` short ones, under distinct names and session ids. Short
/// recordings are written into `scratch`.
fn inputs(n: usize, scratch: &Path) -> Vec<Input> {
    let recordings = util::shared_dir().join("recordings");
    let mut out = vec![Input {
        src: recordings.join(LONG),
        name: "rec-000.guac".into(),
        id: "crash-000".into(),
    }];
    for (k, source) in SHORT_SOURCES.iter().enumerate() {
        let bytes = std::fs::read(recordings.join(source)).unwrap();
        let pieces = plan_pieces(&mut &bytes[..], SHORT_BYTES).unwrap();
        let cut = usize::try_from(pieces[0].end).unwrap();
        std::fs::write(scratch.join(format!("short-{k}.guac")), &bytes[..cut]).unwrap();
    }
    for i in 1..n {
        out.push(Input {
            src: scratch.join(format!("short-{}.guac", i % 2)),
            name: format!("rec-{i:03}.guac"),
            id: format!("crash-{i:03}"),
        });
    }
    out
}

fn spool(home: &Home, input: &Input) {
    home.spool_recording(&input.src, &input.name, &input.id);
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// xorshift64*: a deterministic stream of delays from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn between_ms(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}

fn new_home() -> Home {
    Home::new("segment-size-mb = 1\nqueue-length = 2", None)
}

fn expected_total(inputs: &[Input]) -> usize {
    inputs
        .iter()
        .map(|i| expected_segments(&i.src, SEGMENT_BYTES))
        .sum()
}

/// Runs the daemon until every clip is in the bucket and the spool is empty, then SIGTERM.
fn run_to_completion(home: &Home, expected: usize) {
    let d = home.start();
    let done = wait_for(Duration::from_secs(1200), || {
        home.spool_waiting().is_empty() && home.bucket_clips().len() >= expected
    });
    let log = d.log_text();
    let status = d.stop();
    assert!(done, "did not complete; log:\n{log}");
    assert_eq!(status.code(), Some(0), "log:\n{log}");
}

/// Bucket files that must be identical between runs: clips and thumbnails.
fn media(home: &Home) -> BTreeMap<String, Vec<u8>> {
    let root = home.bucket();
    files_under(&root)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "mp4" || e == "jpg"))
        .map(|p| {
            let key = p
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            (key, std::fs::read(&p).unwrap())
        })
        .filter(|(k, _)| !k.starts_with('.'))
        .collect()
}

/// Every file of the home relative to the data dir, minus the queue and the (hidden) store
/// metadata: what must not differ between runs.
fn layout(home: &Home) -> Vec<PathBuf> {
    let data = home.data();
    files_under(&data)
        .into_iter()
        .map(|p| p.strip_prefix(&data).unwrap().to_path_buf())
        .filter(|p| !p.starts_with("queue"))
        .collect()
}

/// The queue's view: each segment encoded, exactly one clip per segment, all uploaded with
/// local copies removed.
fn check_queue(home: &Home, inputs: &[Input], expected: usize) {
    let queue = Queue::open(
        &QueueOptions::new(home.data().join("queue")),
        Arc::new(SystemClock),
    )
    .unwrap();
    let mut segments_total = 0;
    for input in inputs {
        let id = &input.id;
        let session = queue.session_by_external(id).unwrap().expect("session");
        let segments = queue.segments_of_session(session.id).unwrap();
        let clips = queue.clips_of_session(session.id).unwrap();
        assert_eq!(clips.len(), segments.len(), "one clip per segment for {id}");
        for seg in &segments {
            assert_eq!(seg.state.kind(), SegmentStateKind::Encoded, "{seg:?}");
            let of_seg = clips.iter().filter(|c| c.segment == seg.id).count();
            assert_eq!(of_seg, 1, "segment {} has {of_seg} clips", seg.id);
        }
        for clip in &clips {
            assert_eq!(clip.state.kind(), ClipStateKind::LocalDeleted, "{clip:?}");
            assert!(
                !clip.path.exists(),
                "local copy left: {}",
                clip.path.display()
            );
        }
        segments_total += segments.len();
    }
    assert_eq!(segments_total, expected);
    assert_eq!(queue.counts().unwrap().sessions.closed, inputs.len() as u64);
}

#[test]
fn sigkill_at_random_moments_loses_and_duplicates_nothing() {
    let kills_wanted = env_u64("CRASH_KILLS", 20) as usize;
    let seed = env_u64("CRASH_SEED", 0x5EED_2026);
    // Two sessions at the start, then a new one every second kill, so that every restart has
    // work in flight (import, encode, upload) rather than an idle daemon to kill.
    let scratch = tempfile::tempdir().unwrap();
    let inputs = inputs(2 + kills_wanted / 2, scratch.path());
    let expected = expected_total(&inputs);
    let started = Instant::now();

    // The reference: one uninterrupted run over every session.
    let reference = new_home();
    for input in &inputs {
        spool(&reference, input);
    }
    run_to_completion(&reference, expected);
    let reference_media = media(&reference);
    let reference_secs = started.elapsed().as_secs_f64();
    assert_eq!(
        reference_media
            .keys()
            .filter(|k| k.ends_with(".mp4"))
            .count(),
        expected
    );
    check_queue(&reference, &inputs, expected);

    // The same work, fed progressively, killed again and again.
    let home = new_home();
    let mut fed = inputs.iter();
    for input in fed.by_ref().take(2) {
        spool(&home, input);
    }
    let mut rng = Rng(seed | 1);
    let crash_started = Instant::now();
    let mut kills = 0;
    // Kills that interrupted an encode in flight, from the killed daemon's log.
    let mut mid_encode = 0;
    while kills < kills_wanted {
        let mut d = home.start();
        std::thread::sleep(Duration::from_millis(rng.between_ms(150, 4_000)));
        assert!(d.running(), "daemon died by itself; log:\n{}", d.log_text());
        let log = d.log_text();
        d.kill();
        kills += 1;
        if log.matches("event=encode_started").count()
            > log.matches("event=encode_finished").count()
        {
            mid_encode += 1;
        }
        if kills % 2 == 0
            && let Some(input) = fed.next()
        {
            spool(&home, input);
        }
    }
    for input in fed {
        spool(&home, input);
    }
    run_to_completion(&home, expected);
    eprintln!(
        "crash test: kills={kills} (mid_encode={mid_encode}) sessions={} segments={expected} \
         seed={seed:#x} reference_s={reference_secs:.1} crashed_run_s={:.1}",
        inputs.len(),
        crash_started.elapsed().as_secs_f64()
    );

    // Same clips, byte for byte, under the same keys; nothing more.
    let crashed_media = media(&home);
    assert_eq!(
        crashed_media.keys().collect::<Vec<_>>(),
        reference_media.keys().collect::<Vec<_>>()
    );
    for (key, bytes) in &reference_media {
        assert!(
            crashed_media[key] == *bytes,
            "{key} differs from the uninterrupted run"
        );
    }
    check_queue(&home, &inputs, expected);
    // No orphan: the same files as the uninterrupted run, no temporaries anywhere.
    assert!(
        home.stray_temporaries().is_empty(),
        "{:?}",
        home.stray_temporaries()
    );
    let mut crashed_layout = layout(&home);
    let mut reference_layout = layout(&reference);
    // Store metadata of objects is compared through the object set above.
    crashed_layout.retain(|p| !p.starts_with("bucket/.meta"));
    reference_layout.retain(|p| !p.starts_with("bucket/.meta"));
    assert_eq!(crashed_layout, reference_layout);
}
