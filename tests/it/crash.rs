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
//!
//! A second test kills the daemon in the middle of a session recorded through the tap (a fake
//! guacd that never ends the session): at restart the session must end as interrupted, its
//! open segment be cut back to the last complete frame (even with a torn tail) and encoded,
//! and one more restart must change nothing.

use crate::util;
use crate::util::daemon;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use daemon::{Home, expected_segments, files_under, wait_for};
use session_recorder::clock::SystemClock;
use session_recorder::ingest::handshake::{Instruction, encode, parse_instruction};
use session_recorder::ingest::spool::plan_pieces;
use session_recorder::queue::{ClipStateKind, Queue, QueueOptions, SegmentStateKind, SessionState};

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

fn new_home() -> Home {
    Home::new("segment-size-mb = 1\nqueue-length = 2", None)
}

fn expected_total(inputs: &[Input]) -> usize {
    inputs
        .iter()
        .map(|i| expected_segments(&i.src, SEGMENT_BYTES))
        .sum()
}

/// Runs the daemon until every clip is in the bucket, the spool is empty and every session's
/// format 1 manifest is written (the manifest worker files the final fleet version in the same
/// step, which a stop lets finish), then SIGTERM.
fn run_to_completion(home: &Home, expected: usize, sessions: usize) {
    let d = home.start();
    let done = wait_for(Duration::from_secs(1200), || {
        home.spool_waiting().is_empty()
            && home.bucket_clips().len() >= expected
            && objects_named(&home.bucket(), ".manifest.json").len() >= sessions
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

/// Removes the fleet manifest objects from `layout` and returns them per session:
/// `<appliance>-<session>` -> every (version, state) filed for it (keys are
/// `manifests/<ms>-<appliance>-<session>-v<N>.json`; the state is read from the document).
fn manifests(home: &Home, layout: &mut Vec<PathBuf>) -> BTreeMap<String, Vec<(u64, String)>> {
    let mut per_session: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
    layout.retain(|p| {
        let Ok(rest) = p.strip_prefix("bucket/manifests") else {
            return true;
        };
        let name = rest.to_string_lossy();
        let name = name.trim_end_matches(".json");
        let (who, version) = name.rsplit_once("-v").expect("manifest key has a version");
        let who = who.split_once('-').expect("manifest key has a time").1;
        let version: u64 = version.parse().expect("numeric manifest version");
        let doc: serde_json::Value =
            serde_json::from_slice(&std::fs::read(home.data().join(p)).unwrap()).unwrap();
        let state = doc["state"].as_str().unwrap_or("?").to_string();
        per_session
            .entry(who.to_string())
            .or_default()
            .push((version, state));
        false
    });
    per_session
}

/// Asserts that the bucket of `home` holds exactly one fleet manifest object per session of
/// `inputs`, and that it is a final one (not `live`); returns session -> its version.
fn one_final_manifest_each(
    what: &str,
    per_session: &BTreeMap<String, Vec<(u64, String)>>,
    inputs: &[Input],
) -> BTreeMap<String, u64> {
    let objects: usize = per_session.values().map(Vec::len).sum();
    eprintln!(
        "crash test: {what} bucket holds manifest_objects={objects} for sessions={}",
        inputs.len()
    );
    assert_eq!(per_session.len(), inputs.len(), "{what}: {per_session:?}");
    let mut out = BTreeMap::new();
    for (who, filed) in per_session {
        assert_eq!(filed.len(), 1, "{what}: {who} has {filed:?}");
        let (version, state) = &filed[0];
        assert_ne!(state, "live", "{what}: {who} has only a partial manifest");
        assert_eq!(
            version % 2,
            1,
            "{what}: {who} version {version} is not final"
        );
        out.insert(who.clone(), *version);
    }
    out
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
    run_to_completion(&reference, expected, inputs.len());
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
    let mut rng = util::rng::Rng::new(seed | 1);
    let crash_started = Instant::now();
    let mut kills = 0;
    // Kills that interrupted an encode in flight, from the killed daemon's log.
    let mut mid_encode = 0;
    while kills < kills_wanted {
        let mut d = home.start();
        std::thread::sleep(Duration::from_millis(rng.between(150, 4_000)));
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
    run_to_completion(&home, expected, inputs.len());
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
    // The search index's files are named by tantivy at random (the index is derived from the
    // clips' events objects, not a record of its own).
    crashed_layout.retain(|p| !p.starts_with("search/"));
    reference_layout.retain(|p| !p.starts_with("search/"));
    // Fleet manifests: exactly one object per session, its final version, in both runs (keys
    // carry the write time, so they are compared per session, not by name). Each restart
    // used to file a settled session's final version again under a new key.
    let reference_manifests = manifests(&reference, &mut reference_layout);
    let crashed_manifests = manifests(&home, &mut crashed_layout);
    let reference_versions = one_final_manifest_each("reference", &reference_manifests, &inputs);
    let crashed_versions = one_final_manifest_each("crashed", &crashed_manifests, &inputs);
    assert_eq!(
        crashed_versions, reference_versions,
        "fleet manifests differ from the uninterrupted run"
    );
    assert_eq!(crashed_layout, reference_layout);
}

// ---- a recorded tap session cut by SIGKILL ----

/// A fake guacd that answers `select` with `args` and, after `connect`, sends `ready` and the
/// drawing stream of a real recording (without the client's `mouse`/`key`), then holds the
/// connection open: the session stays live until the daemon dies.
struct StallingGuacd {
    addr: String,
}

impl StallingGuacd {
    fn start(stream: Arc<Vec<u8>>) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let stream = stream.clone();
                std::thread::spawn(move || stall_one(conn, &stream));
            }
        });
        Self { addr }
    }
}

/// Reads one handshake instruction; `None` at EOF.
fn next_instruction(s: &mut std::net::TcpStream, buf: &mut Vec<u8>) -> Option<Instruction> {
    use std::io::Read;
    loop {
        if let Some((ins, used)) = parse_instruction(buf).expect("valid handshake") {
            buf.drain(..used);
            return Some(ins);
        }
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn stall_one(mut s: std::net::TcpStream, stream: &[u8]) {
    use std::io::{Read, Write};
    let mut buf = Vec::new();
    let Some(select) = next_instruction(&mut s, &mut buf) else {
        return;
    };
    assert_eq!(select.opcode(), "select");
    let args = [
        "args",
        "VERSION_1_5_0",
        "hostname",
        "port",
        "password",
        "recording-path",
    ];
    if s.write_all(&encode(&args)).is_err() {
        return;
    }
    // The tap's own `args` probe closes here; a session goes on to `connect`.
    loop {
        match next_instruction(&mut s, &mut buf) {
            Some(ins) if ins.opcode() == "connect" => break,
            Some(_) => {}
            None => return,
        }
    }
    let _ = s.write_all(&encode(&["ready", "$stalling"]));
    let _ = s.write_all(stream);
    // Hold the connection (reading the client's input) until the other side goes away.
    let mut sink = [0u8; 4096];
    while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
}

/// The server->client part of a recording: everything but the client's `mouse` and `key`.
fn drawing_stream(recording: &[u8]) -> Vec<u8> {
    complete_instructions(recording)
        .into_iter()
        .filter(|(_, _, op)| op != "mouse" && op != "key")
        .flat_map(|(start, end, _)| recording[start..end].to_vec())
        .collect()
}

/// (start, end, opcode) of each complete instruction, by a parser written for this test (not
/// the daemon's scanner): lengths count characters, an incomplete tail is left out.
fn complete_instructions(b: &[u8]) -> Vec<(usize, usize, String)> {
    let mut out = Vec::new();
    let mut pos = 0;
    'instructions: loop {
        let start = pos;
        let mut opcode = None;
        loop {
            let digits = b[pos.min(b.len())..]
                .iter()
                .take_while(|c| c.is_ascii_digit())
                .count();
            if digits == 0 || b.get(pos + digits) != Some(&b'.') {
                break 'instructions;
            }
            let chars: usize = std::str::from_utf8(&b[pos..pos + digits])
                .unwrap()
                .parse()
                .unwrap();
            let value = pos + digits + 1;
            let mut end = value;
            for _ in 0..chars {
                let width = match b.get(end) {
                    None => break 'instructions,
                    Some(c) if *c < 0x80 => 1,
                    Some(c) if *c >= 0xF0 => 4,
                    Some(c) if *c >= 0xE0 => 3,
                    Some(_) => 2,
                };
                end += width;
            }
            if end > b.len() {
                break 'instructions;
            }
            opcode.get_or_insert_with(|| String::from_utf8_lossy(&b[value..end]).into_owned());
            match b.get(end) {
                Some(b',') => pos = end + 1,
                Some(b';') => {
                    pos = end + 1;
                    out.push((start, pos, opcode.take().unwrap()));
                    continue 'instructions;
                }
                _ => break 'instructions,
            }
        }
    }
    out
}

/// A Guacamole client through the tap: handshake with recording parameters, then reads
/// whatever comes until the connection dies. Returns the socket (kept open by the caller).
fn start_client(tap: &str, session_id: &str) -> std::net::TcpStream {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(tap).expect("connect tap");
    s.write_all(&encode(&["select", "vnc"])).unwrap();
    let mut buf = Vec::new();
    let args = next_instruction(&mut s, &mut buf).expect("args");
    assert_eq!(args.opcode(), "args", "{args:?}");
    let mut connect = vec!["connect".to_string()];
    for name in args.args() {
        connect.push(match name.as_str() {
            v if v.starts_with("VERSION_") => v.to_string(),
            "recording-session-id" => session_id.to_string(),
            "recording-user-id" => "u-7".into(),
            "recording-username" => "alice".into(),
            "recording-image-friendly-name" => "Desktop".into(),
            "recording-required" => "true".into(),
            _ => String::new(),
        });
    }
    for ins in [
        vec!["size".to_string(), "1024".into(), "768".into(), "96".into()],
        vec!["audio".into()],
        vec!["video".into()],
        vec!["image".into(), "image/png".into()],
        connect,
    ] {
        s.write_all(&encode(&ins)).unwrap();
    }
    let ready = next_instruction(&mut s, &mut buf).expect("ready");
    assert_eq!(ready.opcode(), "ready", "{ready:?}");
    let mut reader = s.try_clone().unwrap();
    std::thread::spawn(move || {
        let mut chunk = vec![0u8; 65536];
        while matches!(reader.read(&mut chunk), Ok(n) if n > 0) {}
    });
    s
}

/// A home whose daemon runs the tap (on a free port, in front of `guacd`) and encodes with one
/// encoder into 1 MB segments.
fn tap_home(guacd: &str) -> (Home, String) {
    let home = Home::new("segment-size-mb = 1\nqueue-length = 1", None);
    let listen = format!("127.0.0.1:{}", daemon::free_port());
    let config = home.root().join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let tap = format!("[tap]\nlisten = \"{listen}\"\nupstream = \"{guacd}\"");
    let patched = text.replace("[tap]\nenabled = false", &tap);
    assert_ne!(patched, text, "the harness's tap section changed");
    std::fs::write(&config, patched).unwrap();
    (home, listen)
}

fn open_queue(home: &Home) -> Queue {
    Queue::open(
        &QueueOptions::new(home.data().join("queue")),
        Arc::new(SystemClock),
    )
    .unwrap()
}

/// ffprobe accepts the clip without a complaint and finds a video stream with some duration.
fn assert_playable(mp4: &Path) {
    let out = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0"])
        .args([
            "-show_entries",
            "stream=codec_name:format=duration",
            "-of",
            "csv=p=0",
        ])
        .arg(mp4)
        .output()
        .expect("ffprobe runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "ffprobe {}: {}",
        mp4.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("h264"), "{text}");
    let duration: f64 = text
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .next()
        .unwrap_or(0.0);
    assert!(duration > 0.0, "{text}");
}

/// What must not change when the daemon starts again: the session, its segments (state,
/// size, file), its clips, the bucket's clips.
fn snapshot(home: &Home, session_id: &str) -> String {
    let queue = open_queue(home);
    let session = queue.session_by_external(session_id).unwrap().unwrap();
    let segments: Vec<_> = queue
        .segments_of_session(session.id)
        .unwrap()
        .into_iter()
        .map(|s| (s.id, s.index, s.state, s.bytes, s.path))
        .collect();
    let clips: Vec<_> = queue
        .clips_of_session(session.id)
        .unwrap()
        .into_iter()
        .map(|c| (c.id, c.segment, c.index, c.sha256, c.object_key))
        .collect();
    let keys: Vec<_> = home.bucket_clips().into_keys().collect();
    format!("{session:?}\n{segments:?}\n{clips:?}\n{keys:?}")
}

#[test]
fn sigkill_mid_tap_session_recovers_the_open_segment_as_interrupted_once() {
    const SESSION: &str = "kill9-tap-1";
    let recording = std::fs::read(util::shared_dir().join("recordings").join(LONG)).unwrap();
    let guacd = StallingGuacd::start(Arc::new(drawing_stream(&recording)));
    let (home, tap) = tap_home(&guacd.addr);
    let dir = home.data().join("segments").join(SESSION);
    let open_segment = dir.join("000001.guac");

    // 1. A live recorded session: segment 0 rolled and sealed, segment 1 written in part.
    let mut d = home.start();
    assert!(
        wait_for(Duration::from_secs(60), || d
            .log_text()
            .contains("event=tap_args_learned protocol=vnc")),
        "tap not up; log:\n{}",
        d.log_text()
    );
    let client = start_client(&tap, SESSION);
    // Until the tap has written what it will of the stream (the file holds a complete frame
    // and stops growing for a second): the kill then lands on a live session with its open
    // segment on disk. Both conditions, because on a loaded machine the tap can pause for a
    // second between two buffer flushes, before the first `sync` of segment 1 reached the disk.
    let (mut last_len, mut still_polls) = (0, 0);
    let settled = wait_for(Duration::from_secs(120), || {
        let sealed = d
            .log_text()
            .contains(&format!("event=segment_sealed session={SESSION} index=0"));
        let bytes = std::fs::read(&open_segment).unwrap_or_default();
        let len = bytes.len();
        still_polls = if len > 0 && len == last_len {
            still_polls + 1
        } else {
            0
        };
        last_len = len;
        let framed = || {
            complete_instructions(&bytes)
                .iter()
                .any(|(_, _, op)| op == "sync")
        };
        sealed && still_polls >= 10 && framed()
    });
    assert!(settled, "no bytes of segment 1; log:\n{}", d.log_text());
    assert!(d.running());

    // 2. SIGKILL mid-session, then a torn tail as a power cut mid-write leaves one: a complete
    // drawing instruction, then one cut inside a multi-byte character.
    d.kill();
    drop(client);
    let on_disk = std::fs::read(&open_segment).unwrap();
    let expected_end = complete_instructions(&on_disk)
        .into_iter()
        .filter(|(_, _, op)| op == "sync")
        .map(|(_, end, _)| end)
        .next_back()
        .expect("segment 1 holds a complete frame");
    let mut torn = on_disk.clone();
    torn.extend_from_slice(b"4.rect,1.0,1.0,1.0,2.10,2.10;4.name,4.h\xC3\xA9\xE2\x82");
    std::fs::write(&open_segment, &torn).unwrap();
    {
        let queue = open_queue(&home);
        let session = queue.session_by_external(SESSION).unwrap().unwrap();
        assert_eq!(session.state, SessionState::Live);
        assert!(queue.segment_at(session.id, 1).unwrap().is_none());
    }

    // 3. Restart: the session ends as interrupted, segment 1 is cut to its last frame,
    // registered and encoded like segment 0.
    let d = home.start();
    let started = wait_for(Duration::from_secs(60), || {
        d.log_text().contains("event=started")
    });
    assert!(started, "log:\n{}", d.log_text());
    // Recovery runs before the tap (and `started`): by now the session must be ended and its
    // open segment registered (the queue is read from this second process, as `user add`
    // does). Without recovery, show what the queue holds instead of waiting for a clip.
    let recovered = {
        let queue = open_queue(&home);
        let session = queue.session_by_external(SESSION).unwrap().unwrap();
        session.end_ms.is_some() && queue.segment_at(session.id, 1).unwrap().is_some()
    };
    if !recovered {
        let log = d.log_text();
        d.stop();
        panic!(
            "no session recovery at start-up; queue after restart:\n{}\nfiles: {:?}\nlog:\n{log}",
            snapshot(&home, SESSION),
            files_under(&dir)
        );
    }
    let encoded = wait_for(Duration::from_secs(600), || home.bucket_clips().len() >= 2);
    let log = d.log_text();
    assert_eq!(d.stop().code(), Some(0), "log:\n{log}");
    assert!(
        encoded,
        "clips: {:?}; log:\n{log}",
        home.bucket_clips().keys()
    );
    assert!(
        log.contains("event=sessions_recovered sessions=1 segments=1"),
        "{log}"
    );
    for line in log
        .lines()
        .filter(|l| l.contains("recover") || l.contains("interrupted"))
    {
        eprintln!("{line}");
    }
    {
        let queue = open_queue(&home);
        let session = queue.session_by_external(SESSION).unwrap().unwrap();
        assert_eq!(session.state, SessionState::Interrupted);
        let end_ms = session.end_ms.expect("ended");
        assert!(end_ms >= session.start_ms);
        assert_eq!(session.segment_count, 2);
        let segments = queue.segments_of_session(session.id).unwrap();
        assert_eq!(segments.len(), 2);
        for seg in &segments {
            assert_eq!(seg.state.kind(), SegmentStateKind::Encoded, "{seg:?}");
        }
        assert_eq!(segments[1].path, open_segment);
        assert_eq!(segments[1].bytes, expected_end as u64);
        let now = std::fs::read(&open_segment).unwrap();
        assert!(now == on_disk[..expected_end], "not cut to the last frame");
        assert!(now.ends_with(b";"));
        let clips = queue.clips_of_session(session.id).unwrap();
        assert_eq!(clips.len(), 2, "{clips:?}");
        for seg in &segments {
            let of_seg: Vec<_> = clips.iter().filter(|c| c.segment == seg.id).collect();
            assert_eq!(of_seg.len(), 1, "one clip for segment {}", seg.index);
            let key = of_seg[0].object_key.as_deref().expect("uploaded");
            assert_playable(&home.bucket().join(key));
        }
        assert_eq!(queue.counts().unwrap().sessions.interrupted, 1);
    }

    // 4. Another start changes nothing and duplicates nothing.
    let before = snapshot(&home, SESSION);
    let d = home.start();
    assert!(
        wait_for(Duration::from_secs(60), || d
            .log_text()
            .contains("event=started")),
        "log:\n{}",
        d.log_text()
    );
    let log = d.log_text();
    assert_eq!(d.stop().code(), Some(0), "log:\n{log}");
    assert!(!log.contains("event=sessions_recovered"), "{log}");
    assert_eq!(snapshot(&home, SESSION), before);
}

// ---- manifests owed across a crash, beyond one listing page ----

/// More closed sessions than one listing page holds, so a start-up rescan of "recent
/// sessions" (which asked for one page) could not have seen the oldest.
const MANY_SESSIONS: u64 = session_recorder::limits::QUEUE_PAGE_ITEMS_MAX as u64 + 20;

/// Registers `MANY_SESSIONS` closed sessions in `queue`, oldest first, each with one encoded
/// segment and one clip (a small file under `dir`) waiting for its upload.
fn closed_sessions_with_a_clip(queue: &Queue, dir: &Path, t0: u64) {
    use session_recorder::queue::{NewClip, NewSegment, NewSession};
    use sha2::Digest;
    for n in 0..MANY_SESSIONS {
        let start_ms = t0 + n * 60_000;
        let session = queue
            .register_session(&NewSession {
                session_id: format!("many-{n:04}"),
                user_id: "uid-1".into(),
                username: "bob".into(),
                image_friendly_name: "Ubuntu".into(),
                protocol: "vnc".into(),
                start_ms,
                target: String::new(),
                client_addr: String::new(),
            })
            .unwrap();
        let seg = queue
            .register_segment(&NewSegment {
                session,
                index: 0,
                path: dir.join(format!("{n}.guac")),
                bytes: 1,
                first_sync_ms: None,
                last_sync_ms: None,
                sealed: true,
            })
            .unwrap();
        assert_eq!(queue.next_segment_to_encode().unwrap().unwrap().id, seg);
        let path = dir.join(format!("{n}.mp4"));
        let bytes = format!("clip {n}").into_bytes();
        std::fs::write(&path, &bytes).unwrap();
        queue
            .finish_encoding(
                seg,
                &[NewClip {
                    segment: seg,
                    index: 0,
                    path,
                    thumb_path: None,
                    bytes: bytes.len() as u64,
                    sha256: hex::encode(sha2::Sha256::digest(&bytes)),
                    duration_ms: 30_000,
                    start_ms,
                    end_ms: start_ms + 29_999,
                    object_key: None,
                    events: None,
                }],
            )
            .unwrap();
        queue
            .transition_session(
                session,
                SessionState::Live,
                SessionState::Closed,
                Some(start_ms + 30_000),
            )
            .unwrap();
    }
}

/// The names of the files under `root` that end with `suffix`.
fn objects_named(root: &Path, suffix: &str) -> Vec<String> {
    files_under(root)
        .into_iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .filter(|n| n.ends_with(suffix))
        .collect()
}

/// Regression: which manifests were owed lived in memory, and start-up found them again by
/// listing one page (500) of recent sessions; with more closed sessions than that, a crash
/// between the oldest session's last upload and its manifest lost the manifest for good. Now
/// the upload's own transaction marks it owed: a crash right there (the fail point between
/// the clip's upload and the manifest write), then a restart, writes it, once, with every
/// other session's.
#[test]
fn manifest_owed_at_a_crash_is_written_after_restart_beyond_one_listing_page() {
    use session_recorder::clock::ManualClock;
    use session_recorder::manifest::{
        FleetWriterConfig, ManifestTick, ManifestWorker, ManifestWorkerConfig,
    };
    use session_recorder::queue::{Failpoint, QueueError};
    use session_recorder::upload::{
        KeyTemplate, LocalDirStore, ObjectStore, TickOutcome, UploadWorker, UploadWorkerConfig,
    };
    const T0: u64 = 1_706_554_000_000;
    // In memory when the machine has a tmpfs: this test is about what the queue records, not
    // about fsync (on disk, ~12 commits and two synced puts per session cost over a minute).
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    let (queue_dir, bucket) = (dir.path().join("queue"), dir.path().join("bucket"));
    let clock = Arc::new(ManualClock::new(T0 + MANY_SESSIONS * 60_000 + 60_000));
    let open = || Arc::new(Queue::open(&QueueOptions::new(&queue_dir), clock.clone()).unwrap());
    let store = || -> Arc<dyn ObjectStore> { Arc::new(LocalDirStore::open(&bucket).unwrap()) };
    let manifests = |queue: &Arc<Queue>| {
        ManifestWorker::new(
            queue.clone(),
            store(),
            clock.clone(),
            ManifestWorkerConfig {
                hostname: "proxy-1".into(),
                fleet: Some(FleetWriterConfig {
                    appliance_id: "proxy-1".into(),
                    prefix: "manifests".into(),
                    key: Arc::new(ed25519_dalek::SigningKey::from_bytes(&[9; 32])),
                }),
            },
        )
    };
    {
        let queue = open();
        closed_sessions_with_a_clip(&queue, dir.path(), T0);
        let uploads = UploadWorker::new(
            queue.clone(),
            store(),
            KeyTemplate::parse("{user_id}/{session_id}/clip-{clip_index}.mp4").unwrap(),
            clock.clone(),
            UploadWorkerConfig {
                concurrency: 1,
                retention_hours: 24,
                hostname: "proxy-1".into(),
                appliance_id: "proxy-1".into(),
            },
        );
        let mut uploaded = 0;
        while let TickOutcome::Uploaded(_) = uploads.tick().unwrap() {
            uploaded += 1;
        }
        assert_eq!(uploaded, MANY_SESSIONS);
        assert_eq!(queue.owed_manifest_count().unwrap(), MANY_SESSIONS);
        // The crash: every clip is up, and the manifest worker dies as it takes the first
        // session owed, the oldest.
        queue.set_failpoint(Some(Failpoint::OwedManifestTaken));
        let cut = manifests(&queue).tick();
        assert!(
            matches!(cut, Err(QueueError::InjectedFailure(_))),
            "{cut:?}"
        );
        assert!(objects_named(&bucket, ".manifest.json").is_empty());
    }
    // The restart: a new queue handle and a new worker, no memory of the first.
    let queue = open();
    assert_eq!(queue.owed_manifest_count().unwrap(), MANY_SESSIONS);
    let worker = manifests(&queue);
    let mut written = 0;
    loop {
        match worker.tick().unwrap() {
            ManifestTick::Written(_) => written += 1,
            ManifestTick::Idle => break,
            other => panic!("{other:?}: {:?}", worker.status()),
        }
    }
    assert_eq!(written, MANY_SESSIONS);
    assert_eq!(queue.owed_manifest_count().unwrap(), 0);
    // One format 1 manifest and one final fleet manifest object per session, the oldest
    // included.
    let format_1 = objects_named(&bucket, ".manifest.json");
    assert_eq!(format_1.len() as u64, MANY_SESSIONS);
    assert!(format_1.contains(&"many-0000.manifest.json".to_string()));
    let fleet = objects_named(&bucket.join("manifests"), ".json");
    assert_eq!(fleet.len() as u64, MANY_SESSIONS, "one fleet object each");
    assert!(
        fleet.iter().all(|k| k.ends_with("-v0000000003.json")),
        "each is its final version (one clip listed, final)"
    );
    assert!(fleet.iter().any(|k| k.contains("-many-0000-")));
    // Another restart writes nothing again.
    drop((worker, queue));
    let again = manifests(&open());
    assert_eq!(again.tick().unwrap(), ManifestTick::Idle);
}
