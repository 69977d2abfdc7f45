//! The real gateway, end to end: guacd 1.6.0 (`../shared/guacd`) in front of a loopback VNC
//! desktop, an sshd and an xrdp desktop, the real `session-recorder` binary with its tap in
//! front of guacd, and a Guacamole client written here (tests/it/util/gateway_lab.rs) that types,
//! scrolls, moves windows and downloads over SFTP as a user would.
//!
//! What is checked is what a user or an auditor sees: the clip in the bucket lasts as long as
//! the session (within one frame, still tail included), video time 0 is the clip's start on the
//! wall clock and a moment done at a known time shows there (within the desktop's latency), a
//! crashed guacd connection process is told to the client at once, the status page counts the
//! segment being written, its pictures at quiet instants match
//! our own lossless render of the raw segment (PSNR >= 38 dB), the raw segment is no bigger
//! than guacd's own recording of the same session, a reconnect is answered at once and stays
//! one session, and killing guacd or the daemon, or stopping the daemon while sessions are
//! being admitted, leaves no empty session, no empty directory, and a manifest for every
//! session. The frames compared are written as PNGs under `target/tmp/gateway/`, beside each
//! session's first clip.
//!
//! Skipped (with a message) only when `../shared/guacd` is absent. Cost: about 75 s on
//! 2 cores (the sessions are real time: 5 to 35 s each, two at a time).

use crate::util;
use crate::util::daemon;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use daemon::{Daemon, Home, files_under};
use session_recorder::clock::SystemClock;
use session_recorder::guac::Parser;
use session_recorder::queue::{
    EndReason, Queue, QueueOptions, SegmentStateKind, Session, SessionFilter,
};
use session_recorder::render::{Display, Frame};
use util::gateway_lab::{
    Client, Desktop, Guacd, SSH_PASSWORD, SSH_USER, Sshd, guacd_dir, lock, until,
};

/// One frame at 10 fps (the default), ms.
const FRAME_MS: f64 = 100.0;
/// The lowest PSNR a clip's picture may have against our render of the same instant.
const PSNR_MIN_DB: f64 = 38.0;
/// How long after the desktop was told to change the change may first show in the clip, ms:
/// the remote desktop, guacd and the frame tick (100 ms) between them.
const MOMENT_LATENCY_MAX_MS: i64 = 600;

/// The lab's guacd, or `None` (the test says it skips).
fn lab() -> Option<PathBuf> {
    let dir = guacd_dir();
    if dir.is_none() {
        eprintln!(
            "SKIPPED: no guacd build in {} (../shared/guacd); the real-gateway tests need it",
            util::shared_dir().join("guacd").display()
        );
    }
    dir
}

/// A daemon home whose tap listens on a lab port in front of `guacd`.
fn tap_home(guacd: &Guacd, extra: &str) -> (Home, String) {
    tap_home_http(guacd, extra, None)
}

/// [`tap_home`], with the status page on `http_port` when given.
fn tap_home_http(guacd: &Guacd, extra: &str, http_port: Option<u16>) -> (Home, String) {
    let home = Home::new(extra, http_port);
    let listen = format!("127.0.0.1:{}", util::gateway_lab::port());
    home.enable_tap(&listen, &guacd.addr(), "");
    (home, listen)
}

/// Starts the daemon once its tap is ready for sessions (see [`Home::start_tap`]).
fn start(home: &Home, tap: &str) -> Daemon {
    home.start_tap(tap)
}

fn queue(home: &Home) -> Queue {
    Queue::open(
        &QueueOptions::new(home.data().join("queue")),
        Arc::new(SystemClock),
    )
    .expect("open the daemon's queue")
}

/// The tap's recording parameters for session `id`.
fn recording_params(id: &str) -> Vec<(&'static str, String)> {
    vec![
        ("recording-session-id", id.to_string()),
        ("recording-user-id", "u-1".into()),
        ("recording-username", "tester".into()),
        ("recording-image-friendly-name", "Lab".into()),
        ("recording-required", "true".into()),
    ]
}

/// A lab with guacd and a VNC desktop, and the daemon with its tap in front of that guacd.
struct VncRig {
    _dir: tempfile::TempDir,
    _guacd: Guacd,
    guacd_dir: PathBuf,
    desk: Desktop,
    home: Home,
    tap: String,
    /// The status page's port.
    http: u16,
    d: Daemon,
}

fn vnc_rig() -> Option<VncRig> {
    let guacd_dir = lab()?;
    let dir = util::gateway_lab::lab_dir();
    let guacd = Guacd::start(&guacd_dir, dir.path());
    let desk = Desktop::vnc(dir.path());
    let http = util::gateway_lab::port();
    let (home, tap) = tap_home_http(&guacd, "", Some(http));
    let d = start(&home, &tap);
    Some(VncRig {
        _dir: dir,
        _guacd: guacd,
        guacd_dir,
        desk,
        home,
        tap,
        http,
        d,
    })
}

fn vnc_params(desk: &Desktop, id: &str) -> Vec<(&'static str, String)> {
    let mut p = recording_params(id);
    p.push(("hostname", "127.0.0.1".into()));
    p.push(("port", desk.port.to_string()));
    p
}

/// A session through the tap, once its first frame arrived. Input sent before that can kill
/// guacd 1.6.0's VNC process (a segfault in libc: the pointer reaches a VNC client not yet
/// connected), so the tests, like a person, act on what is on screen.
fn connect(tap: &str, protocol: &str, params: &[(&str, String)]) -> Client {
    let c = Client::connect(tap, protocol, params, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{protocol} session through the tap: {e}"));
    let drawn = until(Duration::from_secs(20), || lock(&c.seen).syncs > 0);
    assert!(drawn, "{protocol}: no frame; {:?}", lock(&c.seen));
    c
}

/// Waits until session `id` has ended and every one of its segments has a clip in the bucket;
/// returns the session and its clips' bucket paths in segment order.
fn wait_clips(home: &Home, d: &Daemon, id: &str) -> (Session, Vec<PathBuf>) {
    let mut result = None;
    let done = until(Duration::from_secs(240), || {
        let q = queue(home);
        let Ok(Some(s)) = q.session_by_external(id) else {
            return false;
        };
        let segments = q.segments_of_session(s.id).unwrap();
        let clips = q.clips_of_session(s.id).unwrap();
        let keys: Vec<PathBuf> = clips
            .iter()
            .filter_map(|c| c.object_key.as_ref())
            .map(|k| home.bucket().join(k))
            .filter(|p| p.exists())
            .collect();
        let ok = s.end_ms.is_some() && !segments.is_empty() && keys.len() == segments.len();
        if ok {
            result = Some((s, keys));
        }
        ok
    });
    assert!(done, "session {id} not encoded; log:\n{}", d.log_text());
    result.expect("set when done")
}

/// ffprobe's container duration (s) and packet pts (s), per clip.
fn probe(mp4: &Path) -> util::clip::Probed {
    util::clip::probe(mp4)
}

/// The raw segment's frame boundaries (`sync`, timestamped `mouse`), guacd ms.
fn boundaries(segment: &[u8]) -> Vec<u64> {
    let mut p = Parser::new();
    p.push(segment);
    let mut out = Vec::new();
    while let Ok(Some(i)) = p.next() {
        let ts = match i.opcode.as_str() {
            "sync" => i.args.first(),
            "mouse" if !out.is_empty() => i.args.get(3),
            _ => None,
        };
        if let Some(ts) = ts.and_then(|t| t.parse().ok()) {
            out.push(ts);
        }
    }
    out
}

/// Our lossless render of what is on screen `ms` after the segment's first `sync`: every
/// instruction up to the last boundary at or before that instant.
fn render_at(segment: &[u8], ms: u64) -> Frame {
    let mut parser = Parser::new();
    parser.push(segment);
    let mut display = Display::new();
    let mut held = Vec::new();
    let mut first = None;
    while let Ok(Some(i)) = parser.next() {
        let ts: Option<u64> = match i.opcode.as_str() {
            "sync" => i.args.first().and_then(|a| a.parse().ok()),
            "mouse" if first.is_some() => i.args.get(3).and_then(|a| a.parse().ok()),
            _ => None,
        };
        held.push(i);
        if let Some(ts) = ts {
            let first = *first.get_or_insert(ts);
            if ts - first > ms {
                break;
            }
            for h in held.drain(..) {
                let _ = display.apply(&h);
            }
        } else if first.is_none() {
            for h in held.drain(..) {
                let _ = display.apply(&h);
            }
        }
    }
    display.flatten().clone()
}

/// Quiet instants (ms after the first sync) of a clip lasting `duration_ms`, best first:
/// late in the longest pauses between boundaries, and in the tail after the last one.
fn quiet_instants(bounds: &[u64], duration_ms: u64) -> Vec<u64> {
    let first = bounds[0];
    let mut gaps: Vec<(u64, u64)> = bounds
        .windows(2)
        .map(|w| (w[0] - first, w[1] - w[0]))
        .filter(|&(_, gap)| gap >= 700)
        .collect();
    let last = bounds.last().unwrap() - first;
    if duration_ms > last + 400 {
        gaps.push((last, duration_ms - last - 100));
    }
    gaps.sort_by_key(|&(_, gap)| std::cmp::Reverse(gap));
    gaps.iter()
        .map(|&(at, gap)| at + (gap - 200).min(3_000))
        .collect()
}

/// Decodes packet `index` of `mp4` as RGB24 (BT.709, limited range, as signalled) and writes
/// it as `png` for a person to look at.
fn decode_rgb(mp4: &Path, index: usize, w: u32, h: u32, png: &Path) -> Vec<u8> {
    let filter = format!("select=eq(n\\,{index}),scale=in_color_matrix=bt709:in_range=tv");
    let run = |fmt: &[&str], out: &str| {
        let o = Command::new("ffmpeg")
            .args(["-v", "error", "-y", "-i"])
            .arg(mp4)
            .args(["-vf", &filter, "-fps_mode", "passthrough", "-frames:v", "1"])
            .args(fmt)
            .arg(out)
            .output()
            .expect("ffmpeg runs");
        assert!(
            o.status.success(),
            "ffmpeg: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        o.stdout
    };
    run(&[], &png.to_string_lossy());
    let raw = run(&["-f", "rawvideo", "-pix_fmt", "rgb24"], "-");
    assert_eq!(raw.len(), (w * h * 3) as usize, "decoded frame size");
    raw
}

/// Where the compared frames go: `target/tmp/gateway/`.
fn frames_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("gateway");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The checks every recorded lab session passes: one clip per segment, the clip as long as
/// the session within one frame (the still tail held), and pictures at three quiet instants
/// within [`PSNR_MIN_DB`] of our render of the raw segment.
fn check_session(home: &Home, d: &Daemon, id: &str) -> Session {
    let (session, clips) = wait_clips(home, d, id);
    let q = queue(home);
    let segments = q.segments_of_session(session.id).unwrap();
    let records = q.clips_of_session(session.id).unwrap();
    let session_ms = session.end_ms.unwrap() - session.start_ms;
    let mut clips_ms = 0.0;
    for (clip, record) in clips.iter().zip(&records) {
        let p = probe(clip);
        assert!(
            (p.duration_s * 1000.0 - record.duration_ms as f64).abs() <= FRAME_MS,
            "{id}: the MP4 lasts {} s, its record {} ms",
            p.duration_s,
            record.duration_ms
        );
        assert_eq!(record.end_ms - record.start_ms, record.duration_ms);
        clips_ms += p.duration_s * 1000.0;
    }
    assert!(
        (clips_ms - session_ms as f64).abs() <= FRAME_MS,
        "{id}: clips last {clips_ms:.0} ms, the session {session_ms} ms"
    );
    // Kept beside the compared frames, for a person (or a browser) to look at.
    std::fs::copy(&clips[0], frames_dir().join(format!("{id}.mp4"))).unwrap();
    // Pictures: the first segment against its own clip.
    let raw = std::fs::read(&segments[0].path).expect("raw segment kept (retention)");
    let p = probe(&clips[0]);
    let bounds = boundaries(&raw);
    let instants = quiet_instants(&bounds, (p.duration_s * 1000.0) as u64);
    let mut figures = Vec::new();
    for at_ms in instants {
        if figures.len() == 3 {
            break;
        }
        let t = at_ms as f64 / 1000.0;
        let index = p
            .packets
            .iter()
            .rposition(|pk| pk.pts_s <= t + 1e-6)
            .expect("a frame on screen");
        let reference = render_at(&raw, at_ms);
        let (w, h) = (
            reference.width.next_multiple_of(2),
            reference.height.next_multiple_of(2),
        );
        if (w, h) != util::gateway_lab::SCREEN {
            continue; // Before the display had its size (RDP's first second): black.
        }
        let png = frames_dir().join(format!("{id}-{at_ms}ms.png"));
        let rgb = decode_rgb(&clips[0], index, w, h, &png);
        let db = util::clip::psnr_rgb(&reference, &rgb, w, 3);
        figures.push((at_ms, db, png));
    }
    eprintln!("{id}: session {session_ms} ms, clips {clips_ms:.0} ms, PSNR {figures:?}");
    assert_eq!(figures.len(), 3, "{id}: three quiet instants");
    assert!(
        figures.iter().all(|f| f.1 >= PSNR_MIN_DB),
        "{id}: {figures:?}"
    );
    session
}

/// Wall-clock ms now (the clock the daemon's start and end times come from).
fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A moment a person can point at: after a still second, the xterm jumps across the screen;
/// returns the wall-clock ms it was told to, then the screen stays still for 3 s.
fn timed_moment(desk: &Desktop) -> u64 {
    std::thread::sleep(Duration::from_millis(1500));
    let at = wall_ms();
    desk.move_xterm(500, 400);
    std::thread::sleep(Duration::from_secs(3));
    at
}

/// How late (ms, negative: early) the moment done at wall-clock `at_ms` shows in the session's
/// first clip: the first picture that differs from the one on screen 500 ms before it, at
/// video time (its pts) minus `at_ms - clip start`. The frames are decoded small and grey.
fn moment_lateness_ms(home: &Home, first_sync: (u64, u64), id: &str, at_ms: u64) -> i64 {
    let q = queue(home);
    let s = q.session_by_external(id).unwrap().unwrap();
    let clip = q.clips_of_session(s.id).unwrap().remove(0);
    let mp4 = home.bucket().join(clip.object_key.as_ref().unwrap());
    let p = probe(&mp4);
    let (w, h) = (64usize, 48usize);
    let o = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(&mp4)
        .args(["-vf", &format!("scale={w}:{h},format=gray")])
        .args(["-fps_mode", "passthrough", "-f", "rawvideo", "-"])
        .output()
        .expect("ffmpeg runs");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let frames: Vec<&[u8]> = o.stdout.chunks(w * h).collect();
    let mut pts: Vec<f64> = p.packets.iter().map(|pk| pk.pts_s).collect();
    pts.sort_by(f64::total_cmp);
    assert_eq!(
        frames.len(),
        pts.len(),
        "{id}: one decoded frame per packet"
    );
    let expected_s = (at_ms - clip.start_ms) as f64 / 1000.0;
    let before = pts
        .iter()
        .rposition(|&t| t <= expected_s - 0.5)
        .expect("a picture before the moment");
    let differs = |a: &[u8], b: &[u8]| {
        let sum: u64 = a.iter().zip(b).map(|(x, y)| x.abs_diff(*y) as u64).sum();
        sum as f64 / a.len() as f64 > 2.0
    };
    let shown = (before + 1..frames.len())
        .find(|&i| differs(frames[before], frames[i]))
        .unwrap_or_else(|| panic!("{id}: the moment never shows in the clip"));
    let late = ((pts[shown] - expected_s) * 1000.0).round() as i64;
    // The lead: how long after the session's start guacd's first frame came.
    let segment = q.segments_of_session(s.id).unwrap().remove(0);
    let syncs: Vec<u64> = boundaries(&std::fs::read(&segment.path).unwrap());
    eprintln!(
        "{id}: guacd's first frame {} ms after the start; moment at {at_ms} (clip {} ms in) \
         shows at {:.3} s: {late} ms late",
        syncs[1] - syncs[0],
        at_ms - clip.start_ms,
        pts[shown]
    );
    // guacd's clock is its own (monotonic); the client's first `sync` maps it to the wall
    // clock: the segment's first `sync` (video time 0) is the clip's start on that clock, not
    // guacd's first frame.
    let (guacd_ts, wall) = first_sync;
    let zero_wall = (wall + syncs[0]).saturating_sub(guacd_ts);
    eprintln!(
        "{id}: video time 0 is {zero_wall} on the wall clock, {} ms from the clip's start",
        zero_wall as i64 - clip.start_ms as i64
    );
    assert!(
        zero_wall.abs_diff(clip.start_ms) as f64 <= FRAME_MS,
        "{id}: video time 0 is {zero_wall} on the wall clock, the clip starts at {}",
        clip.start_ms
    );
    late
}

/// The moment shows in the clip at its wall-clock time since the clip's start: not before it
/// (by more than a frame), and no later than guacd and the remote desktop take to draw it.
fn assert_moment_lands(home: &Home, first_sync: (u64, u64), id: &str, at_ms: u64) {
    let late = moment_lateness_ms(home, first_sync, id, at_ms);
    assert!(
        (-(FRAME_MS as i64)..=MOMENT_LATENCY_MAX_MS).contains(&late),
        "{id}: the moment shows {late} ms after its wall-clock time"
    );
}

/// The daemon's `segments_writing` and raw segment bytes (`status --url`, the status page's
/// figures).
fn writing_figures(home: &Home, http: u16) -> (u64, u64) {
    let v = home.status_json(http);
    let writing = v["queue_counts"]["segments_writing"].as_u64();
    let bytes = v["retention"]["raw_segment_bytes"].as_u64();
    (
        writing.unwrap_or_else(|| panic!("{v}")),
        bytes.unwrap_or_else(|| panic!("{v}")),
    )
}

/// Typing, output that scrolls, the wheel, and a window dragged across the screen, with pauses
/// the picture checks use; then `tail` of nothing at all.
fn desktop_activity(client: &Client, desk: &Desktop, tail: Duration) {
    std::thread::sleep(Duration::from_millis(1500));
    desk.xdotool(&["windowactivate", "--sync", &desk.xterm]);
    client.type_text("echo lab-session-typing; seq 1 300\n");
    std::thread::sleep(Duration::from_millis(2000));
    client.wheel(300, 300, false, 6);
    std::thread::sleep(Duration::from_millis(1500));
    for step in 0..10 {
        desk.move_xterm(40 + step * 30, 40 + step * 20);
        std::thread::sleep(Duration::from_millis(80));
    }
    std::thread::sleep(Duration::from_millis(1500));
    client.type_text("ls /\n");
    std::thread::sleep(tail);
}

#[test]
fn vnc_session_with_a_still_tail_is_recorded_whole() {
    let Some(VncRig {
        _dir,
        _guacd,
        desk,
        home,
        tap,
        http,
        d,
        ..
    }) = vnc_rig()
    else {
        return;
    };
    let client = connect(&tap, "vnc", &vnc_params(&desk, "gw-vnc"));
    client.mouse(200, 200, 0);
    desktop_activity(&client, &desk, Duration::ZERO);
    let moment = timed_moment(&desk);
    // The status page counts the segment being written, and its bytes, while it is.
    let (writing, raw_bytes) = writing_figures(&home, http);
    assert_eq!(writing, 1, "segments_writing during the session");
    assert!(
        raw_bytes > 10_000,
        "raw segment bytes during the session: {raw_bytes}"
    );
    std::thread::sleep(Duration::from_secs(17));
    assert!(
        !client.closed(),
        "{:?}; log:\n{}",
        lock(&client.seen),
        d.log_text()
    );
    let first_sync = lock(&client.seen).first_sync.expect("a sync was seen");
    client.disconnect();
    let session = check_session(&home, &d, "gw-vnc");
    assert!(session.end_ms.unwrap() - session.start_ms >= 28_000);
    assert_moment_lands(&home, first_sync, "gw-vnc", moment);
    let (writing, raw_bytes) = writing_figures(&home, http);
    assert_eq!(writing, 0, "segments_writing once the session is sealed");
    assert!(
        raw_bytes > 10_000,
        "the sealed segment is held: {raw_bytes}"
    );
    d.stop();
}

#[test]
fn rdp_session_is_recorded_whole() {
    let Some(guacd_dir) = lab() else { return };
    let dir = util::gateway_lab::lab_dir();
    let guacd = Guacd::start(&guacd_dir, dir.path());
    let mut desk = Desktop::rdp(dir.path());
    let (home, tap) = tap_home(&guacd, "");
    let d = start(&home, &tap);
    let mut params = recording_params("gw-rdp");
    params.extend([
        ("hostname", "127.0.0.1".to_string()),
        ("port", desk.port.to_string()),
        ("security", "any".into()),
        ("ignore-cert", "true".into()),
        ("username", SSH_USER.into()),
        ("password", SSH_PASSWORD.into()),
    ]);
    let client = connect(&tap, "rdp", &params);
    desk.attach_rdp_session();
    client.mouse(200, 200, 0);
    desktop_activity(&client, &desk, Duration::ZERO);
    let moment = timed_moment(&desk);
    let first_sync = lock(&client.seen).first_sync.expect("a sync was seen");
    client.disconnect();
    check_session(&home, &d, "gw-rdp");
    // guacd's first frame comes a while after the session started (the RDP connection).
    assert_moment_lands(&home, first_sync, "gw-rdp", moment);
    d.stop();
}

#[test]
fn ssh_session_with_an_sftp_download_records_what_guacd_records() {
    let Some(guacd_dir) = lab() else { return };
    let dir = util::gateway_lab::lab_dir();
    let guacd = Guacd::start(&guacd_dir, dir.path());
    let sshd = Sshd::start(dir.path());
    // A few MB the user downloads through guacd's file browser.
    let file = util::gateway_lab::ssh_home().join("download.bin");
    let data: Vec<u8> = (0..4_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&file, &data).unwrap();
    let guacd_recordings = tempfile::tempdir().unwrap();
    let (home, tap) = tap_home(&guacd, "");
    let d = start(&home, &tap);
    let mut params = recording_params("gw-ssh");
    params.extend([
        ("hostname", "127.0.0.1".to_string()),
        ("port", sshd.port.to_string()),
        ("username", SSH_USER.into()),
        ("password", SSH_PASSWORD.into()),
        ("enable-sftp", "true".into()),
        (
            "recording-path",
            guacd_recordings.path().display().to_string(),
        ),
        ("recording-name", "guacd-own".into()),
    ]);
    let client = connect(&tap, "ssh", &params);
    std::thread::sleep(Duration::from_millis(2500));
    client.type_text("echo lab-ssh-typing; seq 1 200\n");
    std::thread::sleep(Duration::from_millis(2000));
    client.wheel(300, 300, false, 5);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        until(Duration::from_secs(10), || client
            .get(&file.to_string_lossy())),
        "guacd exposed no SFTP filesystem"
    );
    let got = until(Duration::from_secs(60), || {
        !lock(&client.seen).downloads.is_empty()
    });
    assert!(got, "download did not finish: {:?}", lock(&client.seen));
    client.type_text("ls -la\n");
    std::thread::sleep(Duration::from_millis(2500));
    client.disconnect();
    let session = check_session(&home, &d, "gw-ssh");
    let q = queue(&home);
    let segment_bytes: u64 = q
        .segments_of_session(session.id)
        .unwrap()
        .iter()
        .map(|s| s.bytes)
        .sum();
    let own = std::fs::metadata(guacd_recordings.path().join("guacd-own"))
        .expect("guacd's own recording")
        .len();
    eprintln!("gw-ssh: segments {segment_bytes} bytes, guacd's own recording {own} bytes");
    // The download is an event beside the clip in the bucket: name, size and SHA-256, never
    // the bytes.
    drop(q);
    let (_, clips) = wait_clips(&home, &d, "gw-ssh");
    let files: Vec<_> = clips
        .iter()
        .flat_map(|mp4| {
            let bytes = std::fs::read(mp4.with_extension("events.json")).expect("events object");
            session_recorder::events::format::from_bytes(&bytes)
                .expect("readable events object")
                .events
        })
        .filter_map(|e| match e.detail {
            session_recorder::events::EventDetail::File {
                name,
                size_bytes,
                sha256,
                complete,
                ..
            } => Some((name, size_bytes, sha256, complete)),
            _ => None,
        })
        .collect();
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&data))
    };
    assert_eq!(
        files,
        [(
            file.to_string_lossy().into_owned(),
            data.len() as u64,
            sha,
            true
        )],
        "file events of the session"
    );
    assert!(
        (segment_bytes as f64) <= own as f64 * 1.1 && (segment_bytes as f64) >= own as f64 * 0.9,
        "the raw segments hold {segment_bytes} bytes, guacd's own recording {own}"
    );
    std::fs::remove_file(&file).ok();
    d.stop();
}

#[test]
fn a_reconnect_and_a_second_tab_are_answered_at_once_and_stay_one_session() {
    let Some(VncRig {
        _dir,
        _guacd,
        desk,
        home,
        tap,
        d,
        ..
    }) = vnc_rig()
    else {
        return;
    };
    let id = "gw-again";
    // A session, dropped as a network drop does, then the same id again (the reconnect).
    let first = connect(&tap, "vnc", &vnc_params(&desk, id));
    desk.type_text("echo first-connection\n");
    std::thread::sleep(Duration::from_secs(2));
    first.drop_connection();
    let again = Client::connect(&tap, "vnc", &vnc_params(&desk, id), Duration::from_secs(20))
        .expect("reconnect answered");
    assert!(
        again.handshake <= Duration::from_secs(2),
        "reconnect took {:?}",
        again.handshake
    );
    desk.type_text("echo reconnected\n");
    std::thread::sleep(Duration::from_secs(2));
    // A second tab while the first stays connected.
    let tab = Client::connect(&tap, "vnc", &vnc_params(&desk, id), Duration::from_secs(20))
        .expect("second tab answered");
    assert!(
        tab.handshake <= Duration::from_secs(2),
        "second tab took {:?}",
        tab.handshake
    );
    desk.type_text("echo two-tabs\n");
    std::thread::sleep(Duration::from_secs(2));
    tab.disconnect();
    again.disconnect();
    let (session, clips) = wait_clips(&home, &d, id);
    assert_eq!(session.end_reason, Some(EndReason::UserDisconnect));
    let q = queue(&home);
    let segments = q.segments_of_session(session.id).unwrap();
    assert!(
        segments.len() >= 2,
        "the reconnect records the next segment of the same session: {segments:?}"
    );
    for (i, s) in segments.iter().enumerate() {
        assert_eq!(s.index as usize, i, "segments in order");
    }
    assert_eq!(clips.len(), segments.len());
    // History: one session under this id; a second tab may show as a linked id derived from it.
    let listed = q
        .list_sessions(&SessionFilter {
            limit: 100,
            ..SessionFilter::default()
        })
        .unwrap()
        .items;
    let ours: Vec<_> = listed.iter().filter(|s| s.session_id == id).collect();
    assert_eq!(ours.len(), 1, "{listed:?}");
    for s in &listed {
        assert!(s.session_id.starts_with(id), "an unrelated session: {s:?}");
    }
    d.stop();
}

/// No session without a clip, no empty directory under segments/ or clips/, and a manifest
/// object for every session in the bucket.
fn assert_no_empty(home: &Home, d: &Daemon) {
    let q = queue(home);
    let listed = q
        .list_sessions(&SessionFilter {
            limit: 100,
            ..SessionFilter::default()
        })
        .unwrap()
        .items;
    for s in &listed {
        let clips = q.clips_of_session(s.id).unwrap();
        assert!(
            !clips.is_empty(),
            "an empty session {s:?}; log:\n{}",
            d.log_text()
        );
    }
    for top in ["segments", "clips"] {
        let mut stack = vec![home.data().join(top)];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            let entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
            if dir != home.data().join(top) {
                assert!(!entries.is_empty(), "empty directory {}", dir.display());
            }
            stack.extend(entries.into_iter().filter(|p| p.is_dir()));
        }
    }
    let objects: Vec<String> = files_under(&home.bucket())
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let manifested = until(Duration::from_secs(30), || {
        let objects: Vec<String> = files_under(&home.bucket())
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        listed.iter().all(|s| {
            objects
                .iter()
                .any(|o| o.ends_with(&format!("{}.manifest.json", s.session_id)))
        })
    });
    assert!(manifested, "a session without its manifest: {objects:?}");
}

/// The newest process under `guacd` (run-guacd, guacd, the processes guacd forks per
/// connection): the connection process it forked last.
fn newest_connection_process(guacd: &Guacd) -> u32 {
    let under = descendants_of(guacd.proc.child.id());
    assert!(
        under.len() >= 2,
        "guacd and a connection process under run-guacd: {under:?}"
    );
    *under.last().expect("checked")
}

#[test]
fn a_guacd_connection_process_that_crashes_ends_its_session_at_once() {
    let Some(VncRig {
        _dir,
        _guacd: guacd,
        desk,
        home,
        tap,
        d,
        ..
    }) = vnc_rig()
    else {
        return;
    };
    let client = connect(&tap, "vnc", &vnc_params(&desk, "gw-crashed"));
    desk.type_text("echo before-the-crash\n");
    std::thread::sleep(Duration::from_secs(2));
    // As guacd 1.6.0's VNC process does on a pointer event sent right after `ready`: it dies,
    // guacd itself lives on and keeps the client's socket until the client writes.
    let pid = newest_connection_process(&guacd);
    // SAFETY: kill(2) on a process of our own guacd; no memory is involved.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGSEGV);
    }
    let crashed = Instant::now();
    let told = until(Duration::from_secs(15), || {
        !lock(&client.seen).errors.is_empty()
    });
    let waited = crashed.elapsed();
    assert!(
        told,
        "no error; {:?}; log:\n{}",
        lock(&client.seen),
        d.log_text()
    );
    eprintln!(
        "gw-crashed: told after {} ms: {:?}",
        waited.as_millis(),
        lock(&client.seen).errors
    );
    assert!(waited < Duration::from_secs(5), "told after {waited:?}");
    assert_eq!(lock(&client.seen).errors[0].1, "515", "UPSTREAM_ERROR");
    drop(client);
    let (session, _) = wait_clips(&home, &d, "gw-crashed");
    assert_eq!(session.end_reason, Some(EndReason::GuacdGone));
    d.stop();
}

#[test]
fn guacd_killed_daemon_killed_and_stopped_while_admitting_leave_no_empty_sessions() {
    let Some(VncRig {
        _dir: dir,
        _guacd: mut guacd,
        guacd_dir,
        desk,
        home,
        tap,
        d,
        ..
    }) = vnc_rig()
    else {
        return;
    };

    // 1. guacd dies mid-session: the session ends, its footage is encoded.
    let client = connect(&tap, "vnc", &vnc_params(&desk, "gw-guacd-gone"));
    desk.type_text("echo before-guacd-dies\n");
    std::thread::sleep(Duration::from_secs(3));
    guacd.proc.kill();
    assert!(
        until(Duration::from_secs(10), || client.closed()),
        "the client was not told"
    );
    drop(client);
    let (gone, _) = wait_clips(&home, &d, "gw-guacd-gone");
    assert!(
        matches!(
            gone.end_reason,
            Some(EndReason::GuacdGone | EndReason::ServerEnded)
        ),
        "guacd killed: {:?}",
        gone.end_reason
    );

    // 2. The daemon is SIGKILLed mid-session: at the next start the session is interrupted
    // and its footage encoded.
    let guacd = Guacd::start(&guacd_dir, dir.path());
    let config = home.root().join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let old = text
        .lines()
        .find(|l| l.starts_with("upstream = "))
        .unwrap()
        .to_string();
    std::fs::write(
        &config,
        text.replace(&old, &format!("upstream = \"{}\"", guacd.addr())),
    )
    .unwrap();
    d.stop();
    let d = start(&home, &tap);
    let client = connect(&tap, "vnc", &vnc_params(&desk, "gw-daemon-killed"));
    desk.type_text("echo before-the-daemon-dies\n");
    std::thread::sleep(Duration::from_secs(3));
    d.kill();
    drop(client);
    let d = start(&home, &tap);
    let (killed, _) = wait_clips(&home, &d, "gw-daemon-killed");
    assert!(killed.end_ms.is_some());
    assert_eq!(
        killed.end_reason,
        Some(EndReason::Crash),
        "daemon SIGKILLed"
    );

    // 3. SIGTERM while sessions are being admitted: every session that exists has a clip.
    let admitting: Vec<_> = (0..6)
        .map(|i| {
            let (tap, params) = (tap.clone(), vnc_params(&desk, &format!("gw-term-{i}")));
            std::thread::spawn(move || {
                let c = Client::connect(&tap, "vnc", &params, Duration::from_secs(10));
                if let Ok(c) = &c {
                    c.mouse(100 + i * 10, 100, 0);
                    std::thread::sleep(Duration::from_millis(300 * u64::from(i)));
                }
                c.is_ok()
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(700));
    let started = Instant::now();
    let status = d.stop();
    assert_eq!(status.code(), Some(0));
    let admitted = admitting
        .into_iter()
        .map(|h| h.join())
        .filter(|r| matches!(r, Ok(true)))
        .count();
    eprintln!(
        "SIGTERM with sessions admitting: {admitted} of 6 admitted, stop took {:?}",
        started.elapsed()
    );
    // Whatever was recorded is encoded at the next start; nothing is left empty.
    let d = start(&home, &tap);
    let q = queue(&home);
    let ids: Vec<String> = q
        .list_sessions(&SessionFilter {
            limit: 100,
            ..SessionFilter::default()
        })
        .unwrap()
        .items
        .into_iter()
        .map(|s| s.session_id)
        .collect();
    drop(q);
    // Every segment encoded (or set aside as holding no picture), every clip uploaded.
    let settled = until(Duration::from_secs(120), || {
        let q = queue(&home);
        ids.iter().all(|id| {
            let s = q.session_by_external(id).unwrap().unwrap();
            let uploaded = q.clips_of_session(s.id).unwrap().iter().all(|c| {
                c.object_key
                    .as_ref()
                    .is_some_and(|k| home.bucket().join(k).exists())
            });
            s.end_ms.is_some()
                && s.end_reason.is_some()
                && uploaded
                && q.segments_of_session(s.id).unwrap().iter().all(|g| {
                    !matches!(
                        g.state.kind(),
                        SegmentStateKind::Writing
                            | SegmentStateKind::Sealed
                            | SegmentStateKind::Encoding
                    )
                })
        })
    });
    assert!(settled, "not settled; log:\n{}", d.log_text());
    assert_no_empty(&home, &d);
    d.stop();
}

/// `scripts/bench-capacity --live N`: N concurrent sessions through the tap at default
/// settings (half a busy VNC desktop scrolling text, half SSH terminals printing a line a
/// second), each `BENCH_SESSION_SECONDS` long and replaced at once, for `BENCH_MINUTES`; the
/// encode backlog (segments sealed, not yet encoded) sampled every 10 s. Figures, not
/// pass/fail.
#[test]
#[ignore = "benchmark: scripts/bench-capacity --live N"]
fn bench_capacity() {
    let Some(guacd_dir) = lab() else { return };
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let (n, minutes, session_s) = (
        env("BENCH_SESSIONS", 4),
        env("BENCH_MINUTES", 10),
        env("BENCH_SESSION_SECONDS", 60),
    );
    let dir = util::gateway_lab::lab_dir();
    let guacd = Guacd::start(&guacd_dir, dir.path());
    let desk = Desktop::vnc(dir.path());
    let sshd = Sshd::start(dir.path());
    // The busy desktop: the xterm scrolls text without pause.
    desk.type_text("while true; do ls -la /usr/lib | tail -n 40; done\n");
    let (home, tap) = tap_home(&guacd, "");
    let d = start(&home, &tap);
    let run_until = Instant::now() + Duration::from_secs(minutes * 60);
    let workers: Vec<_> = (0..n)
        .map(|i| {
            let (tap, vnc_port, ssh_port) = (tap.clone(), desk.port, sshd.port);
            std::thread::spawn(move || {
                let mut k = 0;
                while Instant::now() + Duration::from_secs(session_s) <= run_until {
                    let id = format!("bench-{i}-{k}");
                    k += 1;
                    let mut p = recording_params(&id);
                    let protocol = if i % 2 == 0 {
                        p.push(("hostname", "127.0.0.1".into()));
                        p.push(("port", vnc_port.to_string()));
                        "vnc"
                    } else {
                        p.extend([
                            ("hostname", "127.0.0.1".to_string()),
                            ("port", ssh_port.to_string()),
                            ("username", SSH_USER.into()),
                            ("password", SSH_PASSWORD.into()),
                        ]);
                        "ssh"
                    };
                    let Ok(c) = Client::connect(&tap, protocol, &p, Duration::from_secs(30)) else {
                        std::thread::sleep(Duration::from_secs(1));
                        continue;
                    };
                    until(Duration::from_secs(20), || lock(&c.seen).syncs > 0);
                    if protocol == "ssh" {
                        c.type_text("while sleep 1; do date; done\n");
                    }
                    std::thread::sleep(Duration::from_secs(session_s));
                    c.disconnect();
                }
            })
        })
        .collect();
    // guacd's CPU: the run-guacd wrapper's descendants (guacd and each connection process,
    // which guacd does not reap into its own counters), sampled every second until the end.
    let guacd_pid = guacd.proc.child.id();
    let guacd_children = std::thread::spawn(move || {
        // By pid and start time (field 19), so that a reused pid is another process.
        let mut most: std::collections::HashMap<(u32, String), f64> =
            std::collections::HashMap::new();
        while Instant::now() < run_until + Duration::from_secs(5) {
            for pid in descendants_of(guacd_pid) {
                let started = stat_fields(pid).get(19).cloned().unwrap_or_default();
                let cpu = cpu_seconds(pid);
                let seen = most.entry((pid, started)).or_default();
                *seen = seen.max(cpu);
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        most.values().sum::<f64>()
    });
    let mut samples = Vec::new();
    while Instant::now() < run_until {
        std::thread::sleep(Duration::from_secs(10));
        let q = queue(&home);
        let waiting = [SegmentStateKind::Sealed, SegmentStateKind::Encoding]
            .iter()
            .map(|&k| q.segments_in_state(k, 10_000).map(|v| v.len()).unwrap_or(0))
            .sum::<usize>();
        samples.push(waiting);
        eprintln!(
            "BENCH t_s={} backlog_segments={waiting}",
            samples.len() * 10
        );
    }
    for w in workers {
        let _ = w.join();
    }
    // What was recorded: sessions, seconds of video, and the daemon's CPU for all of it.
    let recorded = until(Duration::from_secs(120), || {
        let q = queue(&home);
        [SegmentStateKind::Sealed, SegmentStateKind::Encoding]
            .iter()
            .all(|&k| q.segments_in_state(k, 10).is_ok_and(|v| v.is_empty()))
    });
    let q = queue(&home);
    let sessions = q
        .list_sessions(&SessionFilter {
            limit: 10_000,
            ..SessionFilter::default()
        })
        .unwrap()
        .items;
    let video_ms: u64 = sessions
        .iter()
        .flat_map(|s| q.clips_of_session(s.id).unwrap())
        .map(|c| c.duration_ms)
        .sum();
    let cpu_s = cpu_seconds(d.child.id());
    let guacd_cpu_s = cpu_seconds(guacd_pid) + guacd_children.join().unwrap_or(0.0);
    eprintln!(
        "BENCH sessions_recorded={} video_s={:.0} daemon_cpu_s={cpu_s:.1} \
         cpu_per_session_second={:.4} guacd_cpu_s={guacd_cpu_s:.1} \
         guacd_cpu_per_session_second={:.4} drained={recorded}",
        sessions.len(),
        video_ms as f64 / 1000.0,
        cpu_s / (video_ms as f64 / 1000.0).max(1.0),
        guacd_cpu_s / (video_ms as f64 / 1000.0).max(1.0)
    );
    let half = samples.len() / 2;
    let first = samples[..half].iter().max().copied().unwrap_or(0);
    let last = samples[half..].iter().max().copied().unwrap_or(0);
    let bounded = last <= first + n as usize;
    eprintln!(
        "BENCH sessions={n} minutes={minutes} session_s={session_s} backlog_max_first_half={first} \
         backlog_max_last_half={last} bounded={bounded} load=\"{}\"",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    d.stop();
}

/// The fields of /proc/PID/stat after the command (state is field 0), if readable.
fn stat_fields(pid: u32) -> Vec<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// CPU seconds (user + system: fields 11 and 12) process `pid` has used; 0 when it is gone.
fn cpu_seconds(pid: u32) -> f64 {
    let ticks: u64 = stat_fields(pid)
        .get(11..13)
        .map_or(0, |f| f.iter().filter_map(|t| t.parse::<u64>().ok()).sum());
    ticks as f64 / 100.0
}

/// The processes below `pid` (children first, then theirs: run-guacd, guacd, its connection
/// processes), by parent (field 1).
fn descendants_of(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let pairs: Vec<(u32, u32)> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|p| Some((p, stat_fields(p).get(1)?.parse().ok()?)))
        .collect();
    let mut under = vec![pid];
    let mut i = 0;
    while i < under.len() {
        let parent = under[i];
        under.extend(pairs.iter().filter(|p| p.1 == parent).map(|p| p.0));
        i += 1;
    }
    under.remove(0);
    under
}

#[test]
fn ssh_typing_a_password_prompt_and_a_paste_become_events_without_the_password() {
    let Some(guacd_dir) = lab() else { return };
    let dir = util::gateway_lab::lab_dir();
    let guacd = Guacd::start(&guacd_dir, dir.path());
    let sshd = Sshd::start(dir.path());
    let (home, tap) = tap_home(&guacd, "");
    let config = home.root().join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("[tap]\n", "[tap]\nrecord-keys = true\n"),
    )
    .unwrap();
    let d = start(&home, &tap);
    let mut params = recording_params("gw-events");
    params.extend([
        ("hostname", "127.0.0.1".to_string()),
        ("port", sshd.port.to_string()),
        ("username", SSH_USER.into()),
        ("password", SSH_PASSWORD.into()),
    ]);
    let client = connect(&tap, "ssh", &params);
    std::thread::sleep(Duration::from_millis(2500));
    client.type_text("echo findme-42\n");
    std::thread::sleep(Duration::from_millis(1500));
    client.type_text("read -s -p 'Password: ' x\n");
    std::thread::sleep(Duration::from_millis(1500));
    // Typed slowly at a prompt that echoes nothing.
    client.type_text("hunter2secret\n");
    std::thread::sleep(Duration::from_millis(1500));
    // A paste from the client's clipboard into the session.
    let pasted = "pasted-from-the-client";
    {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(pasted);
        client.send(&["clipboard", "7", "text/plain"]);
        client.send(&["blob", "7", &b64]);
        client.send(&["end", "7"]);
    }
    std::thread::sleep(Duration::from_millis(1500));
    client.type_text("exit\n");
    std::thread::sleep(Duration::from_millis(1000));
    client.disconnect();
    let (_, clips) = wait_clips(&home, &d, "gw-events");
    let mut typed = String::new();
    let mut masked = 0;
    let mut pastes = Vec::new();
    for mp4 in &clips {
        let bytes = std::fs::read(mp4.with_extension("events.json")).expect("events object");
        assert!(
            !String::from_utf8_lossy(&bytes).contains("hunter2"),
            "the password is in the events object"
        );
        for e in session_recorder::events::format::from_bytes(&bytes)
            .expect("readable events object")
            .events
        {
            match e.detail {
                session_recorder::events::EventDetail::Typed {
                    text, masked_keys, ..
                } => {
                    typed.push_str(&text);
                    masked += masked_keys;
                }
                session_recorder::events::EventDetail::Clipboard {
                    direction, text, ..
                } => pastes.push((direction, text)),
                _ => {}
            }
        }
    }
    assert!(typed.contains("echo findme-42"), "typed text: {typed:?}");
    assert!(masked >= 13, "masked keys {masked}, typed text: {typed:?}");
    assert_eq!(
        pastes,
        [(
            session_recorder::events::Direction::ToRemote,
            Some(pasted.to_string())
        )],
        "clipboard events"
    );
    d.stop();
}
