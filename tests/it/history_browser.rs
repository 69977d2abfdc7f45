//! The session history and the session player in headless Chromium, through the pages only,
//! as an auditor uses them: log in through the form; page the history newest first with
//! Older/Newer (the page size kept); find a user's sessions by part of the name in any case and
//! a date range (days in the display time zone, Europe/Berlin here), and by clicking a user
//! name; play a 3-clip session through to its end (the next clip starts by itself: `ended` of
//! each clip and the current clip observed in the page), Prev/Next, a click on the session
//! timeline, a `?t=` deep link landing in the right clip with the wall-clock time of that
//! frame; download a clip and the whole session as a zip (`Content-Length` present,
//! `unzip -t` passes, entries sorted and 1-based, ffprobe reads every video). axe-core runs
//! on every page; screenshots at desktop and 390 px phone width go to `artifacts/`.
//!
//! Needs `chromium` and `chromium-driver`. Without them the test says so and passes, except
//! under CI (`CI` set), where it fails.

use crate::util::axe;
use crate::util::serve_fixture;
use crate::util::webdriver;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use serve_fixture::*;
use session_recorder::clock::DisplayZone;
use session_recorder::serve::backend::{ClipRow, SessionRow};
use webdriver::{Driver, artifacts, browser_available};

/// 2026-11-02 12:00:00 UTC (13:00 in Berlin): the day the sessions of the test start from.
const DAY0_MS: u64 = 1_793_620_800_000;
const DAY_MS: u64 = 86_400_000;
/// The 3-clip session: three contiguous 2 s clips.
const THREE: &str = "three-clips-0001";
const CLIP_MS: u64 = 2_000;
/// A session whose one clip is 0.4 s long.
const SHORT: &str = "short-clip-0001";

/// Sessions of the history, in the order they are added (not the order they started):
/// (id, user, day offset from `DAY0_MS`, minutes into that day).
const SESSIONS: [(&str, &str, u64, u64); 8] = [
    ("s-mulder-1", "Fox.Mulder@fbi.example", 0, 0),
    ("s-scully-3", "Dana.Scully@fbi.example", 4, 30),
    ("s-skinner-1", "w.skinner@fbi.example", 2, 0),
    ("s-scully-1", "dana.scully@fbi.example", 1, 0),
    (THREE, "Dana.Scully@fbi.example", 3, 0),
    ("s-mulder-2", "fox.mulder@fbi.example", 5, 0),
    ("s-scully-2", "DANA.SCULLY@fbi.example", 2, 45),
    (SHORT, "w.skinner@fbi.example", 6, 0),
];

fn start_ms_of(day: u64, minute: u64) -> u64 {
    DAY0_MS + day * DAY_MS + minute * 60_000
}

fn clip(id: u64, mp4: &Path, jpg: &Path, start_ms: u64, duration_ms: u64, sid: &str) -> ClipRow {
    ClipRow {
        id,
        local_path: Some(mp4.to_path_buf()),
        thumb_path: Some(jpg.to_path_buf()),
        object_key: None,
        thumb_key: None,
        location: format!("s3://{BUCKET}/{sid}/clip-{id}.mp4"),
        bytes: std::fs::metadata(mp4).unwrap().len(),
        duration_ms,
        start_ms,
        state: "uploaded".into(),
        failed: false,
        sha256: None,
    }
}

/// Adds the test's sessions to the fixture's backend; returns the three clips' files.
fn add_sessions(f: &Fixture) -> Vec<std::path::PathBuf> {
    let dir = f.dir.path();
    let made: Vec<_> = (0..3)
        .map(|i| make_clip(dir, &format!("three-{i}"), 2, i * 100))
        .collect();
    for (k, (sid, user, day, minute)) in SESSIONS.iter().enumerate() {
        let start = start_ms_of(*day, *minute);
        let clips = match *sid {
            THREE => (0..3u64)
                .map(|i| {
                    let (mp4, jpg) = &made[i as usize];
                    clip(100 + i, mp4, jpg, start + i * CLIP_MS, CLIP_MS, sid)
                })
                .collect(),
            SHORT => vec![clip(200, &made[0].0, &made[0].1, start, 400, sid)],
            _ => vec![clip(
                300 + k as u64,
                &made[1].0,
                &made[1].1,
                start,
                CLIP_MS,
                sid,
            )],
        };
        let end = start + CLIP_MS * clips.len() as u64;
        f.backend.add_session(
            SessionRow {
                cursor: 0,
                session_id: sid.to_string(),
                user: user.to_string(),
                workspace: "Ubuntu 24.04".into(),
                start_ms: start,
                end_ms: Some(end),
                state: "uploaded".into(),
                clip_count: 0,
                appliance: None,
                end_reason: None,
                target: target_of(user).into(),
                client_addr: "192.0.2.10:41000".into(),
            },
            clips,
        );
    }
    made.into_iter().map(|(mp4, _)| mp4).collect()
}

/// The remote host of a user's sessions: Mulder's on the ERP host, Scully's on the X-files
/// database, Skinner's imported (no host).
fn target_of(user: &str) -> &'static str {
    let user = user.to_lowercase();
    if user.contains("mulder") {
        "erp-01.fbi.example:3389"
    } else if user.contains("scully") {
        "xfiles-db.fbi.example:22"
    } else {
        ""
    }
}

/// Waits until `cond` holds (polled every 100 ms), or fails with `what`.
fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The session ids of the history table, top to bottom.
fn listed(d: &Driver) -> Vec<String> {
    let v = d.js(
        "return Array.from(document.querySelectorAll('#sessions tr td code'))\
         .map(c => c.textContent);",
    );
    v.as_array()
        .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

/// The start times (ms) of the history table, top to bottom.
fn listed_starts(d: &Driver) -> Vec<u64> {
    d.js(
        "return Array.from(document.querySelectorAll('#sessions time'))\
          .map(t => Number(t.getAttribute('datetime')));",
    )
    .as_array()
    .unwrap()
    .iter()
    .map(|v| v.as_u64().unwrap())
    .collect()
}

/// The player's state: current clip, src, time, paused/ended, rate, wall clock.
fn player(d: &Driver) -> Value {
    d.js("const r = document.getElementById('session-player'); \
          const v = document.getElementById('player'); \
          return {clip: Number(r.dataset.currentClip), ended: r.dataset.ended === 'true', \
          src: v.currentSrc || v.src, t: v.currentTime, ready: v.readyState, \
          rate: v.playbackRate, error: v.error ? v.error.code : null, \
          wall: document.getElementById('wallclock').textContent, \
          log: window.__log || []};")
}

fn ffprobe_ok(path: &Path) {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "stream=codec_name,width,height",
        ])
        .arg(path)
        .output()
        .expect("ffprobe runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("codec_name=h264"),
        "ffprobe {}: {text}",
        path.display()
    );
}

#[test]
fn auditor_finds_plays_and_downloads_a_session() {
    if !browser_available() {
        return;
    }
    let f = start_with(Options {
        display_timezone: DisplayZone::named("Europe/Berlin").unwrap(),
        ..Options::default()
    });
    let three_files = add_sessions(&f);
    let base = format!("http://{}", f.addr);
    let downloads = f.dir.path().join("downloads");
    let profile = f.dir.path().join("profile");
    std::fs::create_dir_all(&downloads).unwrap();
    let d = Driver::start(&downloads, &profile);
    let art = artifacts();
    d.size(1280, 900);
    let landed = d.log_in(&format!("{base}/login"), ADMIN, PASSWORD);
    assert!(landed.ends_with("/sessions"), "landed on {landed}");

    history_pages_newest_first(&d, &base, &art);
    finding_a_users_sessions(&d, &base, &art);
    finding_a_hosts_sessions(&d, &base, &art);
    playing_through_a_session(&d, &base, &art);
    prev_next_timeline_and_deep_link(&d, &base);
    downloads_carry_their_length(&d, &base, &downloads, &three_files);
    sub_second_clips_say_so(&d, &base);
}

/// Newest start first, pages of 3 with Older then Newer, `limit` kept in every link.
fn history_pages_newest_first(d: &Driver, base: &str, art: &Path) {
    d.go(&format!("{base}/sessions?limit=3"));
    axe::assert_accessible(d, "history page");
    d.screenshot(&art.join("history-paged.png"));
    let mut pages = vec![listed(d)];
    let mut starts = listed_starts(d);
    while d.js("return !!document.querySelector('a[rel=next]');") == json!(true) {
        d.click("a[rel=next]");
        assert!(d.url().contains("limit=3"), "limit kept: {}", d.url());
        pages.push(listed(d));
        starts.extend(listed_starts(d));
        assert!(pages.len() < 10, "paging does not end");
    }
    assert!(pages.iter().all(|p| p.len() <= 3));
    // The fixture's own two sessions (today) plus ours.
    assert_eq!(starts.len(), SESSIONS.len() + 2);
    assert!(
        starts.windows(2).all(|w| w[0] >= w[1]),
        "newest start first across pages: {starts:?}"
    );
    let all: Vec<String> = pages.concat();
    let mut ours: Vec<(u64, &str)> = SESSIONS
        .iter()
        .map(|(sid, _, day, min)| (start_ms_of(*day, *min), *sid))
        .collect();
    ours.sort_by(|a, b| b.cmp(a));
    let ours: Vec<&str> = ours.iter().map(|(_, s)| *s).collect();
    assert_eq!(&all[2..], ours.as_slice(), "{all:?}");
    // Back with Newer: the same pages in reverse.
    for expected in pages.iter().rev().skip(1) {
        d.click("a[rel=prev]");
        assert!(d.url().contains("limit=3"), "limit kept: {}", d.url());
        assert_eq!(&listed(d), expected);
    }
    assert!(d.js("return !document.querySelector('a[rel=prev]');") == json!(true));
}

/// Part of a user name in any case and a date range, then a click on a user name.
fn finding_a_users_sessions(d: &Driver, base: &str, art: &Path) {
    d.go(&format!("{base}/sessions"));
    let labels = d.js(
        "return Array.from(document.querySelectorAll('form.filters label'))\
                       .map(l => l.textContent);",
    );
    let labels = labels.to_string();
    assert!(
        labels.contains("User (part of the name)")
            && labels.contains("Started from (day, Europe/Berlin)")
            && labels.contains("to (day, Europe/Berlin, included)"),
        "{labels}"
    );
    assert!(d.source().contains("<th>Started (Europe/Berlin)</th>"));
    d.type_into("#user", "sCuLLy");
    // Days of the date inputs (a person picks them in the calendar).
    d.js("document.getElementById('from').value = '2026-11-03'; \
          document.getElementById('to').value = '2026-11-05';");
    d.click("form.filters button[type=submit]");
    wait_for("the filtered history", Duration::from_secs(10), || {
        d.url().contains("user=sCuLLy")
    });
    // Scully's sessions of 3 to 5 November (Berlin days), newest first; not the one of 6 Nov.
    assert_eq!(listed(d), [THREE, "s-scully-2", "s-scully-1"]);
    axe::assert_accessible(d, "filtered history");
    d.screenshot(&art.join("history-filtered.png"));
    d.size(390, 844);
    d.screenshot(&art.join("history-filtered-phone.png"));
    d.size(1280, 900);
    // A user name in the table filters by that user.
    d.go(&format!("{base}/sessions"));
    d.click("td.user a[href*='skinner']");
    wait_for("the user filter", Duration::from_secs(10), || {
        d.url().contains("user=w.skinner")
    });
    assert_eq!(listed(d), [SHORT, "s-skinner-1"]);
}

/// The Host column ("—" for an import), part of a host in the filter form, then a click on a
/// host in the table.
fn finding_a_hosts_sessions(d: &Driver, base: &str, art: &Path) {
    d.go(&format!("{base}/sessions"));
    let heads = d.js(
        "return Array.from(document.querySelectorAll('#sessions th')).map(t => t.textContent);",
    );
    assert_eq!(heads[1], "Host", "{heads}");
    let hosts = d.js(
        "return Array.from(document.querySelectorAll('#sessions td.host'))\
         .map(t => t.textContent);",
    );
    let hosts = hosts.to_string();
    assert!(
        hosts.contains("erp-01.fbi.example:3389") && hosts.contains("\u{2014}"),
        "{hosts}"
    );
    d.type_into("#host", "ERP-01.FBI");
    d.click("form.filters button[type=submit]");
    wait_for("the host filter", Duration::from_secs(10), || {
        d.url().contains("host=ERP-01.FBI")
    });
    assert_eq!(listed(d), ["s-mulder-2", "s-mulder-1"]);
    axe::assert_accessible(d, "history filtered by host");
    d.screenshot(&art.join("history-host.png"));
    d.go(&format!("{base}/sessions"));
    d.click("td.host a[href*='xfiles-db']");
    wait_for("the host link", Duration::from_secs(10), || {
        d.url().contains("host=xfiles-db")
    });
    assert_eq!(listed(d), ["s-scully-3", THREE, "s-scully-2", "s-scully-1"]);
    d.size(390, 844);
    d.screenshot(&art.join("history-host-phone.png"));
    d.size(1280, 900);
}

/// Opens the 3-clip session's player and plays it through at 4x: each clip ends and the next
/// starts by itself, the chosen speed holds, the last clip's end is the session's end.
fn playing_through_a_session(d: &Driver, base: &str, art: &Path) {
    d.go(&format!("{base}/sessions?user=scully"));
    d.click(&format!("a[href=\"/play/{THREE}\"]"));
    wait_for("the player", Duration::from_secs(10), || {
        d.url().ends_with(&format!("/play/{THREE}"))
            || d.url().ends_with(&format!("/play/{THREE}/1"))
    });
    wait_for("clip 1 to load", Duration::from_secs(20), || {
        player(d)["ready"].as_u64().unwrap_or(0) >= 1
    });
    let s = player(d);
    assert_eq!(s["clip"], 1, "{s}");
    assert!(s["error"].is_null(), "{s}");
    axe::assert_accessible(d, "session player");
    d.screenshot(&art.join("player-session.png"));
    d.size(390, 844);
    d.screenshot(&art.join("player-session-phone.png"));
    d.size(1280, 900);
    // Watch the clip changes from inside the page; faster, as a viewer may choose.
    // (The player's own `ended` handler runs first and already moves to the next clip: the
    // clip that ended is the one last seen playing.)
    d.js(
        "window.__log = []; const v = document.getElementById('player'); \
          const r = document.getElementById('session-player'); let playing = 1; \
          v.addEventListener('ended', () => window.__log.push('ended ' + playing)); \
          v.addEventListener('playing', () => { playing = r.dataset.currentClip; \
            window.__log.push('playing ' + playing); }); \
          v.currentTime = 0; v.playbackRate = 4; v.play().catch(() => {});",
    );
    let mut seen_clips = Vec::new();
    wait_for(
        "the session to play to its end",
        Duration::from_secs(40),
        || {
            let s = player(d);
            assert!(s["error"].is_null(), "video error: {s}");
            let c = s["clip"].as_u64().unwrap();
            if seen_clips.last() != Some(&c) {
                seen_clips.push(c);
            }
            s["ended"] == json!(true)
        },
    );
    let s = player(d);
    assert_eq!(seen_clips, [1, 2, 3], "{s}");
    let log: Vec<&str> = s["log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let ends: Vec<&&str> = log.iter().filter(|e| e.starts_with("ended")).collect();
    assert_eq!(ends, [&"ended 1", &"ended 2", &"ended 3"], "{log:?}");
    assert!(
        log.contains(&"playing 2") && log.contains(&"playing 3"),
        "{log:?}"
    );
    assert_eq!(s["rate"], 4.0, "the chosen speed holds across clips: {s}");
    assert!(
        s["src"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/clips/{THREE}/3/video"))
    );
    assert!(
        s["t"].as_f64().unwrap() > 1.5,
        "the last clip played to its end: {s}"
    );
}

/// Prev/Next switch clips in place; a click on the timeline's middle lands in clip 2 at 1 s;
/// `?t=4.5` opens clip 3 at 0.5 s with that frame's wall-clock time.
fn prev_next_timeline_and_deep_link(d: &Driver, base: &str) {
    d.click("#prev");
    wait_for("Prev", Duration::from_secs(10), || player(d)["clip"] == 2);
    d.click("#prev");
    wait_for("Prev again", Duration::from_secs(10), || {
        player(d)["clip"] == 1
    });
    assert_eq!(
        d.js("return document.getElementById('prev').getAttribute('aria-disabled');"),
        "true"
    );
    d.click("#next");
    wait_for("Next", Duration::from_secs(10), || {
        let s = player(d);
        s["clip"] == 2
            && s["src"]
                .as_str()
                .unwrap()
                .ends_with(&format!("/{THREE}/2/video"))
    });
    d.click("#next");
    wait_for("Next again", Duration::from_secs(10), || {
        player(d)["clip"] == 3
    });
    // The session lasts 6 s: the timeline's middle is 3 s in, clip 2 at 1 s.
    d.js("document.getElementById('player').pause();");
    d.click("#timeline");
    wait_for("the timeline seek", Duration::from_secs(10), || {
        let s = player(d);
        s["clip"] == 2 && s["ready"].as_u64().unwrap_or(0) >= 1
    });
    d.js("document.getElementById('player').pause();");
    let t = player(d)["t"].as_f64().unwrap();
    assert!((0.8..1.6).contains(&t), "timeline click landed at {t} s");

    d.go(&format!("{base}/play/{THREE}?t=4.5"));
    wait_for("the deep link", Duration::from_secs(20), || {
        let s = player(d);
        s["ready"].as_u64().unwrap_or(0) >= 1 && s["t"].as_f64().unwrap_or(0.0) >= 0.45
    });
    d.js("document.getElementById('player').pause();");
    std::thread::sleep(Duration::from_millis(300));
    let s = player(d);
    assert_eq!(s["clip"], 3, "{s}");
    let t = s["t"].as_f64().unwrap();
    assert!(
        (0.45..1.5).contains(&t),
        "deep link landed at {t} s of clip 3"
    );
    let zone = DisplayZone::named("Europe/Berlin").unwrap();
    let frame_ms = start_ms_of(3, 0) + 2 * CLIP_MS + (t * 1000.0) as u64;
    assert_eq!(s["wall"], zone.datetime(frame_ms), "{s}");
    assert!(zone.datetime(frame_ms).starts_with("2026-11-05 13:00:0"));
}

/// A clip and the zip downloaded by their links: both announce their length; the zip passes
/// `unzip -t` with entries sorted and numbered from 1; every video is H.264 to ffprobe.
fn downloads_carry_their_length(
    d: &Driver,
    base: &str,
    downloads: &Path,
    files: &[std::path::PathBuf],
) {
    d.go(&format!("{base}/play/{THREE}/2"));
    // What the browser gets for each link (its own fetch, same cookie).
    d.js(&format!(
        "window.__heads = null; Promise.all(['/clips/{THREE}/2/download', \
         '/sessions/{THREE}/zip'].map(u => fetch(u).then(r => r.arrayBuffer().then(b => \
         ({{url: u, status: r.status, len: r.headers.get('content-length'), \
           bytes: b.byteLength}}))))).then(h => window.__heads = h, \
           e => window.__heads = String(e));"
    ));
    let mut heads = Value::Null;
    wait_for("the fetches", Duration::from_secs(30), || {
        heads = d.js("return window.__heads;");
        !heads.is_null()
    });
    for h in heads.as_array().expect("fetch results") {
        assert_eq!(h["status"], 200, "{heads}");
        assert_eq!(
            h["len"].as_str().and_then(|l| l.parse::<u64>().ok()),
            h["bytes"].as_u64(),
            "Content-Length present and right: {heads}"
        );
    }
    d.click("#download-current");
    let clip_file = downloads.join(format!("{THREE}-clip-02.mp4"));
    wait_for("the clip download", Duration::from_secs(30), || {
        clip_file.exists()
    });
    wait_for(
        "the clip download to finish",
        Duration::from_secs(30),
        || std::fs::read(&clip_file).ok() == std::fs::read(&files[1]).ok(),
    );
    ffprobe_ok(&clip_file);
    d.click(&format!("a[href=\"/sessions/{THREE}/zip\"]"));
    let zip = downloads.join(format!("{THREE}.zip"));
    wait_for("the zip download", Duration::from_secs(30), || {
        zip.exists()
            && Command::new("unzip")
                .arg("-tq")
                .arg(&zip)
                .output()
                .is_ok_and(|o| o.status.success())
    });
    let listing = Command::new("unzip").arg("-Z1").arg(&zip).output().unwrap();
    let names: Vec<String> = String::from_utf8_lossy(&listing.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    let expected: Vec<String> = (1..=3).map(|n| format!("{THREE}-clip-0{n}.mp4")).collect();
    assert_eq!(names, expected);
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(sorted, names, "entries sort in clip order");
    let out = downloads.join("unzipped");
    assert!(
        Command::new("unzip")
            .arg("-oq")
            .arg(&zip)
            .arg("-d")
            .arg(&out)
            .status()
            .unwrap()
            .success()
    );
    for (name, original) in names.iter().zip(files) {
        let p = out.join(name);
        assert_eq!(std::fs::read(&p).unwrap(), std::fs::read(original).unwrap());
        ffprobe_ok(&p);
    }
}

/// A 0.4 s clip says "<1 s" in the player's clip list, not "0 s".
fn sub_second_clips_say_so(d: &Driver, base: &str) {
    d.go(&format!("{base}/play/{SHORT}"));
    let text = d.js("return document.querySelector('#clip-1 .duration').textContent;");
    assert_eq!(text, "<1 s");
    axe::assert_accessible(d, "player of a one-clip session");
}
