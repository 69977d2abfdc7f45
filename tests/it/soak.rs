//! Soak test of the whole daemon; not in CI: `scripts/soak [MINUTES]` runs it.
//!
//! The real `session-recorder serve` binary with the tap on, in front of the replay fake of
//! guacd (tests/it/util/guacd_replay.rs), uploading to a real single-node Garage. Client threads
//! keep `SOAK_SESSIONS` (20) recorded sessions going through the tap for the whole run, each
//! one a paced replay of a real recording. A third of the way in, Garage is stopped for
//! `SOAK_OUTAGE_S` (120 s) and started again; two thirds in, the daemon gets one SIGTERM and is
//! started again on the same data dir. Every minute it prints the daemon's RSS and open file
//! descriptors; during and after the outage, the status page's problems
//! (`GET /api/v1/status`). At the end it waits for the queue to drain and checks the bucket:
//! every session the tap admitted (the client got `ready`) has exactly one clip, and no clip
//! belongs to a session nobody started, so nothing was lost and nothing duplicated.
//!
//! Figures are printed as lines starting with `SOAK`; the assertions are the lost/duplicated
//! counts only (RSS and fd figures are for the reader, as benchmarks are).
//!
//! `per_session_memory` (also ignored, run by hand) is the fast probe for memory kept per
//! recorded session: short sessions in batches, RSS and anonymous memory after each drain,
//! lines starting with `CREEP`.

use crate::util::daemon;
use crate::util::garage;
use crate::util::guacd_replay;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use daemon::{Daemon, Home, free_port};
use garage::Garage;
use guacd_replay::{FakeGuacd, Reader, ReplayOptions, params, recording};
use session_recorder::ingest::handshake::encode;

/// A setting from the environment, or its default.
fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What one client session ended with.
enum Outcome {
    /// The tap admitted it (the client got `ready`); bytes received after `ready`.
    Recorded(u64),
    /// The tap answered with an `error` instead.
    Refused(String),
    /// Nothing listened (the daemon restarting).
    NoConnection,
    /// The connection broke during the handshake.
    Broken(String),
}

/// One recorded session through the tap: handshake with our recording parameters, then reads
/// until the tap closes (the fake guacd ends the session when its replay is done).
fn run_session(addr: &str, session_id: &str) -> Outcome {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return Outcome::NoConnection;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(300)));
    if s.write_all(&encode(&["select", "vnc"])).is_err() {
        return Outcome::Broken("write select".into());
    }
    let mut r = Reader::new();
    let Some((first, _)) = r.next(&mut s) else {
        return Outcome::Broken("closed before args".into());
    };
    if first.opcode() == "error" {
        return Outcome::Refused(first.args().join(" "));
    }
    if first.opcode() != "args" {
        return Outcome::Broken(format!("{} instead of args", first.opcode()));
    }
    let values = params(session_id, Some("true"));
    let mut connect = vec!["connect".to_string()];
    for name in first.args() {
        connect.push(if name.starts_with("VERSION_") {
            name.clone()
        } else {
            values.get(name).cloned().unwrap_or_default()
        });
    }
    let mut hs = Vec::new();
    for ins in [
        vec!["size", "1024", "768", "96"],
        vec!["audio", "audio/L16"],
        vec!["video"],
        vec!["image", "image/png", "image/jpeg"],
        vec!["timezone", "UTC"],
        vec!["name", "soak"],
    ] {
        hs.extend_from_slice(&encode(&ins));
    }
    hs.extend_from_slice(&encode(&connect));
    if s.write_all(&hs).is_err() {
        return Outcome::Broken("write connect".into());
    }
    let Some((reply, _)) = r.next(&mut s) else {
        return Outcome::Broken("closed before ready".into());
    };
    if reply.opcode() == "error" {
        return Outcome::Refused(reply.args().join(" "));
    }
    if reply.opcode() != "ready" {
        return Outcome::Broken(format!("{} instead of ready", reply.opcode()));
    }
    let mut bytes = r.buf.len() as u64;
    let mut chunk = vec![0u8; 65536];
    loop {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => bytes += n as u64,
        }
    }
    Outcome::Recorded(bytes)
}

/// Counters the client threads share.
#[derive(Default)]
struct Load {
    admitted: Mutex<BTreeSet<String>>,
    refused: Mutex<BTreeMap<String, u64>>,
    no_connection: AtomicU64,
    bytes_received: AtomicU64,
    broken: Mutex<BTreeMap<String, u64>>,
    stop: AtomicBool,
}

fn client_loop(load: Arc<Load>, tap: String, client: usize) {
    let mut n = 0u64;
    while !load.stop.load(Ordering::SeqCst) {
        let session_id = format!("soak-{client:02}-{n:05}");
        n += 1;
        match run_session(&tap, &session_id) {
            Outcome::Recorded(bytes) => {
                load.bytes_received.fetch_add(bytes, Ordering::SeqCst);
                load.admitted.lock().unwrap().insert(session_id);
            }
            Outcome::Refused(why) => {
                *load.refused.lock().unwrap().entry(why).or_insert(0) += 1;
                std::thread::sleep(Duration::from_millis(500));
            }
            Outcome::NoConnection => {
                load.no_connection.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(200));
            }
            Outcome::Broken(why) => {
                *load.broken.lock().unwrap().entry(why).or_insert(0) += 1;
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

/// RSS (KiB) and open fds of a process.
fn rss_kib_and_fds(pid: u32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    (rss, fds)
}

/// The daemon's status document (anonymous view), or `None` when it does not answer.
fn status(http_port: u16) -> Option<serde_json::Value> {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5"])
        .arg(format!("http://127.0.0.1:{http_port}/api/v1/status"))
        .output()
        .ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

/// The status document's problems, one string.
fn problems(doc: &Option<serde_json::Value>) -> String {
    match doc {
        None => "(no answer)".into(),
        Some(d) => serde_json::to_string(&d["problems"]).unwrap_or_default(),
    }
}

/// The queue counts and upload backlog, short.
fn queue_brief(doc: &Option<serde_json::Value>) -> String {
    match doc {
        None => "-".into(),
        Some(d) => {
            // The snapshot's fields are flattened into the document.
            let counts: Vec<String> = d["queue_counts"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter(|(k, v)| v.as_u64() != Some(0) && *k != "queue_map_bytes")
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect()
                })
                .unwrap_or_default();
            format!(
                "backlog={} live={} {}",
                d["uploads"]["backlog"],
                d["live_sessions"],
                counts.join(",")
            )
        }
    }
}

/// Clip keys in the bucket per session id (`soak/<session>/clip-...mp4`).
fn clips_by_session(g: &Garage) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for key in g.list_all_keys("soak/") {
        if !key.ends_with(".mp4") {
            continue;
        }
        let session = key.split('/').nth(1).unwrap_or_default().to_string();
        out.entry(session).or_default().push(key);
    }
    out
}

/// The daemon's config: tap in front of the fake guacd, S3 upload to Garage, HTTP on.
fn write_config(home: &Home, g: &Garage, tap_port: u16, upstream: &str, http_port: u16) {
    let text = format!(
        r#"data-dir = "{data}"
spool-dir = "{spool}"
disk-floor-mb = 10
queue-length = 2

# Small, low-rate clips: the soak looks for leaks, losses and duplicates, and on a 2-core
# machine shared with builds full-size encodes would fall behind 20 live sessions.
[video]
framerate = 5
width = 400
height = 300

[storage]
upload-location = "s3://{bucket}@{host}/soak/{{session_id}}/clip-{{clip_index}}-{{timestamp_ms}}.mp4"
object-storage-key = "{key}"
object-storage-secret = "{secret}"
region = "us-east-1"
path-style = true
allow-http = true

[tap]
listen = "127.0.0.1:{tap_port}"
upstream = "{upstream}"

[http]
listen = "127.0.0.1:{http_port}"
"#,
        data = home.data().display(),
        spool = home.spool().display(),
        bucket = g.bucket,
        host = g.host_port(),
        key = g.key,
        secret = g.secret,
    );
    std::fs::write(home.root().join("config.toml"), text).unwrap();
}

/// The replay fake of guacd, sending shared recording `rec_name` to every connection at
/// `pace` ms per 100 instructions.
fn replay_fake(rec_name: &str, pace: u64) -> FakeGuacd {
    FakeGuacd::start(ReplayOptions {
        recording: recording(rec_name),
        nop_every: 0,
        pace_ms_per_100: pace,
        wait_for_disconnect: false,
        bulk: false,
    })
}

/// Waits (bounded) until the tap accepts TCP connections.
fn wait_listening(addr: &str, limit: Duration) -> bool {
    daemon::wait_for(limit, || TcpStream::connect(addr).is_ok())
}

#[test]
#[ignore = "soak test: run by scripts/soak, not in CI"]
fn soak() {
    let minutes = env_u64("SOAK_MINUTES", 30);
    let sessions = env_u64("SOAK_SESSIONS", 20) as usize;
    let total = Duration::from_secs(minutes * 60);
    let outage = Duration::from_secs(env_u64("SOAK_OUTAGE_S", 120).min(minutes * 60 / 3));
    let outage_at = total / 3;
    let restart_at = total * 2 / 3;
    let rec_name = std::env::var("SOAK_RECORDING").unwrap_or("ssh-green-800x600.guac".into());
    // guacd sends a recording in about its real duration; replaying it at ~real pace keeps
    // sessions long enough that the outage and the restart meet live ones.
    let pace = env_u64("SOAK_PACE_MS_PER_100", 2200);

    let mut g = Garage::start();
    let fake = replay_fake(&rec_name, pace);
    let home = Home::new("", None);
    let (tap_port, http_port) = (free_port(), free_port());
    write_config(&home, &g, tap_port, &fake.addr, http_port);
    let tap = format!("127.0.0.1:{tap_port}");
    let mut d: Daemon = home.start();
    assert!(
        wait_listening(&tap, Duration::from_secs(60)),
        "tap not listening; log:\n{}",
        d.log_text()
    );
    println!(
        "\nSOAK start minutes={minutes} sessions={sessions} recording={rec_name} \
         pace_ms_per_100={pace} outage_at_s={} outage_s={} restart_at_s={} home={}",
        outage_at.as_secs(),
        outage.as_secs(),
        restart_at.as_secs(),
        home.root().display()
    );

    let load = Arc::new(Load::default());
    let clients: Vec<_> = (0..sessions)
        .map(|c| {
            let (load, tap) = (load.clone(), tap.clone());
            std::thread::spawn(move || client_loop(load, tap, c))
        })
        .collect();

    let t0 = Instant::now();
    let mut next_minute = Duration::from_secs(60);
    let mut outage_started = false;
    let mut outage_ended = false;
    let mut restarted = false;
    let mut next_status = Duration::ZERO;
    let mut old_logs = Vec::new();
    println!("SOAK | minute | rss_kib | fds | admitted | clips_in_bucket | queue |");
    while t0.elapsed() < total {
        let now = t0.elapsed();
        if !outage_started && now >= outage_at {
            g.stop();
            outage_started = true;
            println!("SOAK event t_s={} garage stopped", now.as_secs());
        }
        if outage_started && !outage_ended && now >= outage_at + outage {
            g.restart();
            outage_ended = true;
            println!("SOAK event t_s={} garage started again", now.as_secs());
        }
        if !restarted && now >= restart_at {
            let pid = d.child.id();
            let ts = Instant::now();
            old_logs.push(d.log.clone());
            let status = d.stop();
            println!(
                "SOAK event t_s={} daemon pid {pid} SIGTERM: exit {status} after {} ms",
                now.as_secs(),
                ts.elapsed().as_millis()
            );
            d = home.start();
            assert!(wait_listening(&tap, Duration::from_secs(60)), "tap back");
            println!(
                "SOAK event t_s={} daemon pid {} listening again after {} ms",
                t0.elapsed().as_secs(),
                d.child.id(),
                ts.elapsed().as_millis()
            );
            restarted = true;
        }
        // The status page's problems: every 10 s from just before the outage until a minute
        // after it ended.
        let watch = now + Duration::from_secs(15) >= outage_at
            && now <= outage_at + outage + Duration::from_secs(60);
        if watch && now >= next_status {
            let doc = status(http_port);
            println!(
                "SOAK status t_s={} problems={} {}",
                now.as_secs(),
                problems(&doc),
                queue_brief(&doc)
            );
            next_status = now + Duration::from_secs(10);
        }
        if now >= next_minute {
            let (rss, fds) = rss_kib_and_fds(d.child.id());
            let admitted = load.admitted.lock().unwrap().len();
            let clips: usize = if g.pid.is_some() {
                clips_by_session(&g).values().map(Vec::len).sum()
            } else {
                0
            };
            println!(
                "SOAK | {} | {rss} | {fds} | {admitted} | {} | {} |",
                next_minute.as_secs() / 60,
                if g.pid.is_some() {
                    clips.to_string()
                } else {
                    "(down)".into()
                },
                queue_brief(&status(http_port))
            );
            // The fake keeps what every connection saw; the soak does not need it.
            fake.conns.lock().unwrap().clear();
            next_minute += Duration::from_secs(60);
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    // End of load: let the clients finish the session they are in, then drain.
    load.stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    let admitted = load.admitted.lock().unwrap().clone();
    println!(
        "SOAK load ended t_s={} admitted={} client_mib={} no_connection={} refused={:?} \
         broken={:?}",
        t0.elapsed().as_secs(),
        admitted.len(),
        load.bytes_received.load(Ordering::SeqCst) >> 20,
        load.no_connection.load(Ordering::SeqCst),
        load.refused.lock().unwrap(),
        load.broken.lock().unwrap()
    );
    let drain0 = Instant::now();
    let mut last_count = 0;
    let mut last_progress = Instant::now();
    let clips = loop {
        let clips = clips_by_session(&g);
        let covered = admitted.iter().filter(|s| clips.contains_key(*s)).count();
        if covered == admitted.len() {
            break clips;
        }
        if covered != last_count {
            last_count = covered;
            last_progress = Instant::now();
        }
        if last_progress.elapsed() > Duration::from_secs(180)
            || drain0.elapsed() > Duration::from_secs(3600)
        {
            println!(
                "SOAK drain stopped making progress at {covered}/{}",
                admitted.len()
            );
            break clips;
        }
        std::thread::sleep(Duration::from_secs(2));
    };
    let doc = status(http_port);
    let (rss, fds) = rss_kib_and_fds(d.child.id());
    println!(
        "SOAK drained in {} s: rss_kib={rss} fds={fds} problems={} {}",
        drain0.elapsed().as_secs(),
        problems(&doc),
        queue_brief(&doc)
    );
    // Sessions the daemon's queue knows, whatever their state: more than the tap admitted
    // means sessions were recorded for connections that never got `ready`.
    let queue_sessions: u64 = doc
        .as_ref()
        .and_then(|d| d["queue_counts"].as_object().cloned())
        .map(|m| {
            m.iter()
                .filter(|(k, _)| k.starts_with("sessions_"))
                .filter_map(|(_, v)| v.as_u64())
                .sum()
        })
        .unwrap_or(0);
    println!(
        "SOAK queue sessions={queue_sessions} (admitted {})",
        admitted.len()
    );

    let lost: Vec<&String> = admitted
        .iter()
        .filter(|s| !clips.contains_key(*s))
        .collect();
    let duplicated: Vec<(&String, &Vec<String>)> =
        clips.iter().filter(|(_, keys)| keys.len() > 1).collect();
    let unknown: Vec<&String> = clips.keys().filter(|s| !admitted.contains(*s)).collect();
    let clip_count: usize = clips.values().map(Vec::len).sum();
    println!(
        "SOAK result sessions_in={} clips_in_bucket={clip_count} sessions_with_clip={} \
         lost={} duplicated={} unknown={}",
        admitted.len(),
        clips.len(),
        lost.len(),
        duplicated.len(),
        unknown.len()
    );
    for s in lost.iter().take(20) {
        println!("SOAK lost {s}");
    }
    for (s, keys) in duplicated.iter().take(20) {
        println!("SOAK duplicated {s}: {keys:?}");
    }
    for s in unknown.iter().take(20) {
        println!("SOAK unknown {s}");
    }
    let exit = d.stop();
    old_logs.push(home.root().join("(current)"));
    for path in daemon::files_under(home.root())
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("daemon-"))
    {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let count = |level: &str| text.lines().filter(|l| l.contains(level)).count();
        println!(
            "SOAK log {} lines={} error={} warn={}",
            path.display(),
            text.lines().count(),
            count("ERROR"),
            count("WARN")
        );
    }
    println!("SOAK daemon final SIGTERM: exit {exit}");
    assert!(lost.is_empty(), "sessions without a clip: {lost:?}");
    assert!(duplicated.is_empty(), "sessions with more than one clip");
    assert!(unknown.is_empty(), "clips of sessions nobody started");
    assert!(exit.success(), "daemon exit {exit}");
}

/// Anonymous memory (KiB) of a process, from `/proc/PID/smaps_rollup`.
fn anon_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Anonymous:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// MP4 clips in a local bucket directory.
fn local_clips(bucket: &std::path::Path) -> usize {
    daemon::files_under(bucket)
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "mp4"))
        .count()
}

/// Memory per recorded session: batches of short sessions through the tap (replay fake of
/// guacd, local bucket), each batch drained to the bucket before RSS and anonymous memory are
/// sampled, so what grows from batch to batch is what the daemon keeps per ended session.
/// `CREEP_BATCHES` (8) batches of `CREEP_BATCH` (50) sessions, `CREEP_CONCURRENCY` (10) at a
/// time, replayed at `CREEP_PACE_MS_PER_100` (0: as fast as possible); the figures are the
/// lowest over `CREEP_SETTLE_S` (15) seconds after each drain. `CREEP_GDB_TRIM=1` also calls
/// `malloc_trim(0)` in the daemon through gdb after each batch (what the allocator held free);
/// `CREEP_KILL=1` ends the daemon with SIGKILL (a heap profiler attached with `heaptrack -p`
/// then reports what it still held as leaked).
#[test]
#[ignore = "memory probe: run by hand, not in CI"]
fn per_session_memory() {
    let batches = env_u64("CREEP_BATCHES", 8);
    let batch = env_u64("CREEP_BATCH", 50);
    let concurrency = env_u64("CREEP_CONCURRENCY", 10);
    let pace = env_u64("CREEP_PACE_MS_PER_100", 0);
    let settle_s = env_u64("CREEP_SETTLE_S", 15);
    let rec_name = std::env::var("SOAK_RECORDING").unwrap_or("ssh-green-800x600.guac".into());
    let fake = replay_fake(&rec_name, pace);
    let http_port = free_port();
    let home = Home::new(
        "queue-length = 2\n[video]\nframerate = 5\nwidth = 400\nheight = 300\n",
        Some(http_port),
    );
    let tap = format!("127.0.0.1:{}", free_port());
    home.enable_tap(&tap, &fake.addr, "");
    let d = home.start_tap(&tap);
    let pid = d.child.id();
    println!("CREEP daemon pid={pid}");
    let mut admitted = 0usize;
    let mut first: Option<(u64, u64, usize)> = None;
    println!("CREEP | sessions | rss_kib | anon_kib | fds | kib_per_session_since_first |");
    for b in 0..batches {
        let next = Arc::new(AtomicU64::new(0));
        let ok = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..concurrency)
            .map(|_| {
                let (next, ok, tap) = (next.clone(), ok.clone(), tap.clone());
                std::thread::spawn(move || {
                    loop {
                        let n = next.fetch_add(1, Ordering::SeqCst);
                        if n >= batch {
                            break;
                        }
                        if let Outcome::Recorded(_) = run_session(&tap, &format!("creep-{b}-{n}")) {
                            ok.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        admitted += ok.load(Ordering::SeqCst) as usize;
        let drained = daemon::wait_for(Duration::from_secs(600), || {
            local_clips(&home.bucket()) >= admitted
        });
        assert!(
            drained,
            "not drained: {} of {admitted}",
            local_clips(&home.bucket())
        );
        fake.conns.lock().unwrap().clear();
        // The lowest figures over the settling time: the daemon gives free pages back to the
        // kernel periodically, and what stays is what it holds.
        let (mut rss, mut anon, mut fds) = (u64::MAX, u64::MAX, 0);
        for _ in 0..settle_s {
            std::thread::sleep(Duration::from_secs(1));
            let (r, f) = rss_kib_and_fds(pid);
            (rss, anon, fds) = (rss.min(r), anon.min(anon_kib(pid)), f);
        }
        let per = match first {
            None => {
                first = Some((rss, anon, admitted));
                "-".to_string()
            }
            Some((rss0, anon0, n0)) => format!(
                "rss {:.1} anon {:.1}",
                (rss as f64 - rss0 as f64) / (admitted - n0) as f64,
                (anon as f64 - anon0 as f64) / (admitted - n0) as f64
            ),
        };
        println!("CREEP | {admitted} | {rss} | {anon} | {fds} | {per} |");
        // Experiment: what glibc's malloc holds free. gdb calls malloc_trim(0) in the daemon.
        if std::env::var_os("CREEP_GDB_TRIM").is_some() {
            let _ = Command::new("gdb")
                .args([
                    "-p",
                    &pid.to_string(),
                    "-batch",
                    "-ex",
                    "call (int) malloc_trim(0)",
                ])
                .output();
            let (rss, _) = rss_kib_and_fds(pid);
            println!(
                "CREEP after malloc_trim(0): rss_kib={rss} anon_kib={}",
                anon_kib(pid)
            );
        }
    }
    // SIGKILL leaves what the daemon holds allocated for a heap profiler attached to it.
    if std::env::var_os("CREEP_KILL").is_some() {
        d.kill();
        return;
    }
    let exit = d.stop();
    assert!(exit.success(), "daemon exit {exit}");
}
