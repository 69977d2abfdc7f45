//! Search inside recordings as a person uses it, through the real gateway: guacd 1.6.0 from
//! `../shared/guacd` behind the real `session-recorder` binary's tap (`tap.record-keys` on),
//! its clips uploaded to a real Garage, its own history (HTTP) and search index.
//!
//! An SSH session types `echo findme-42`, sets the terminal title, answers a `read -s` prompt
//! with a password, copies text from the terminal (a mouse selection: remote -> client) and
//! pastes from the client. Then in headless Chromium, through the pages only: log in, search
//! `findme-42` from the history page, click the hit: the player opens within 1 s of the moment
//! the command was typed (measured by this test's own clock), and the clip's picture 1 s later
//! (grabbed with ffmpeg from the clip the player was given, read with tesseract) shows the
//! command. The password is in neither the index (searching it finds nothing), nor the events
//! object in the bucket, nor any page shown; a user without SESSION_KEYSTROKES_VIEW sees the
//! paste but not its text; the search is on the audit page; the title is found as a title.
//! Screenshots go to `artifacts/gateway-search-*.png`.
//!
//! Skipped (with a message) when `../shared/guacd` is absent, or without Chromium (outside CI).
//! Cost: about 40 s on 2 cores (a 15 s real-time session, the encode, upload and indexing).

use crate::util;
use crate::util::daemon;
use crate::util::garage;
use crate::util::serve_fixture;
use crate::util::webdriver;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use daemon::{Daemon, Home};
use session_recorder::clock::{Clock, SystemClock};
use session_recorder::queue::{Queue, QueueOptions};
use util::gateway_lab::{Client, Guacd, SSH_PASSWORD, SSH_USER, Sshd, guacd_dir, lock, until};
use webdriver::{Driver, artifacts, browser_available};

/// The word typed as a command.
const WORD: &str = "findme-42";
/// The password typed at a prompt that echoes nothing.
const SECRET: &str = "hunter2secret";
/// What the client pastes into the session.
const PASTED: &str = "pasted-from-the-client";
/// What the terminal's title is set to.
const TITLE: &str = "mytitle-77";
/// The accounts' password.
const PASSWORD: &str = "correct horse battery";
/// An auditor with every permission.
const ADMIN: &str = "admin@example.com";
/// A user who may play recordings but not read keystrokes.
const PLAYER: &str = "player@example.com";
/// This test's HTTP ports (the lab's own range is the gateway lab's).
const HTTP_PORT_FIRST: u16 = 43_100;

fn wait(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A lab directory and guacd in it, or `None` (saying the test skips) without a guacd build.
fn lab() -> Option<(tempfile::TempDir, Guacd)> {
    let Some(guacd_dir) = guacd_dir() else {
        eprintln!("SKIPPED: no guacd build in ../shared/guacd; the real-gateway tests need it");
        return None;
    };
    let dir = util::gateway_lab::lab_dir();
    let guacd = Guacd::start(&guacd_dir, dir.path());
    Some((dir, guacd))
}

/// A free port from this test's range, never handed out twice by this process (tests run in
/// parallel: a port bound and released here is free until its daemon binds it).
fn http_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    loop {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        assert!(n < 400, "no free HTTP port");
        let p = HTTP_PORT_FIRST + n;
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

/// A daemon home: the tap in front of `guacd` with `record-keys` on, HTTP on `port`, the
/// admin and the player, and `extra` settings (clips go to the embedded local bucket without
/// a `[storage]`).
fn lab_home(guacd: &Guacd, port: u16, extra: &str) -> (Home, String) {
    let home = Home::new("", Some(port));
    let tap = format!("127.0.0.1:{}", util::gateway_lab::port());
    home.enable_tap(&tap, &guacd.addr(), "record-keys = true\n");
    let config = home.root().join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{text}{extra}")).unwrap();
    home.add_user(
        ADMIN,
        PASSWORD,
        "SESSIONS_VIEW,SESSION_RECORDINGS_VIEW,SESSION_KEYSTROKES_VIEW,ADMIN",
    );
    home.add_user(PLAYER, PASSWORD, "SESSIONS_VIEW,SESSION_RECORDINGS_VIEW");
    (home, tap)
}

/// `[storage]` for clips in Garage.
fn garage_storage(g: &garage::Garage) -> String {
    format!(
        "\n[storage]\nupload-location = \"s3://{bucket}@{host}/{{user_id}}/{{session_id}}/clip-{{clip_index}}-{{timestamp_ms}}.mp4\"\n\
         object-storage-key = \"{key}\"\nobject-storage-secret = \"{secret}\"\n\
         allow-http = true\npath-style = true\n",
        bucket = g.bucket,
        host = g.host_port(),
        key = g.key,
        secret = g.secret,
    )
}

/// The tap's recording parameters and the SSH login.
fn ssh_params(id: &str, sshd: &Sshd) -> Vec<(&'static str, String)> {
    vec![
        ("recording-session-id", id.to_string()),
        ("recording-user-id", "u-1".into()),
        ("recording-username", "dba".into()),
        ("recording-image-friendly-name", "ERP host".into()),
        ("recording-required", "true".into()),
        ("hostname", "127.0.0.1".into()),
        ("port", sshd.port.to_string()),
        ("username", SSH_USER.into()),
        ("password", SSH_PASSWORD.into()),
    ]
}

/// Sends `text` as the client's clipboard (a paste into the session).
fn paste(client: &Client, text: &str) {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(text);
    client.send(&["clipboard", "7", "text/plain"]);
    client.send(&["blob", "7", &b64]);
    client.send(&["end", "7"]);
}

/// The SSH session a person has; returns the wall-clock ms just before the command was typed.
fn ssh_session(client: &Client) -> u64 {
    std::thread::sleep(Duration::from_millis(2500));
    client.type_text("clear\n");
    std::thread::sleep(Duration::from_millis(1000));
    let typed_at_ms = SystemClock.now_ms();
    client.type_text(&format!("echo {WORD}\n"));
    std::thread::sleep(Duration::from_millis(2500));
    client.type_text(&format!("printf '\\033]0;{TITLE}\\007'\n"));
    std::thread::sleep(Duration::from_millis(1500));
    client.type_text("read -s -p 'Password: ' x\n");
    std::thread::sleep(Duration::from_millis(1500));
    client.type_text(&format!("{SECRET}\n"));
    std::thread::sleep(Duration::from_millis(1500));
    // A copy: select the top three rows with the mouse (guacd's terminal sends the selection
    // to the client as its clipboard when the button is released).
    client.mouse(2, 4, 0);
    client.mouse(2, 4, 1);
    for x in (50..1000).step_by(100) {
        client.mouse(x, 40, 1);
        std::thread::sleep(Duration::from_millis(30));
    }
    client.mouse(1000, 40, 0);
    std::thread::sleep(Duration::from_millis(1500));
    paste(client, PASTED);
    std::thread::sleep(Duration::from_millis(1500));
    client.type_text("exit\n");
    std::thread::sleep(Duration::from_millis(1000));
    typed_at_ms
}

fn queue(home: &Home) -> Queue {
    Queue::open(
        &QueueOptions::new(home.data().join("queue")),
        Arc::new(SystemClock),
    )
    .expect("open the daemon's queue")
}

fn api(addr: SocketAddr, cookie: &str, query: &str) -> Value {
    let r = serve_fixture::get(
        addr,
        &format!("/api/v1/search?{query}"),
        &format!("Cookie: sr_session={cookie}\r\n"),
    );
    assert_eq!(r.status, 200, "{query}: {}", r.text());
    serde_json::from_slice(&r.body).unwrap()
}

/// The text tesseract reads in the picture the clip shows at `t_s`, upscaled 3x and inverted
/// (light terminal text on black). The clip has a frame only where the screen changed (a still
/// picture is one long sample), so the picture shown at `t_s` is taken from a 10 fps decode
/// (`fps` repeats the held frame), not with `-ss`, which gives the next frame after `t_s`.
fn ocr_frame(mp4: &Path, t_s: f64, png: &Path) -> String {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-i"])
        .arg(mp4)
        .args([
            "-frames:v",
            "1",
            "-vf",
            &format!("fps=10,trim=start={t_s:.3},scale=iw*3:ih*3,negate"),
        ])
        .arg(png)
        .output()
        .expect("ffmpeg");
    assert!(
        out.status.success(),
        "ffmpeg: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("tesseract")
        .arg(png)
        .arg("-")
        .env("OMP_THREAD_LIMIT", "1")
        .output()
        .expect("tesseract");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The player's state: current clip, time, readiness.
fn player(d: &Driver) -> Value {
    d.js("const r = document.getElementById('session-player'); \
          const v = document.getElementById('player'); \
          if (!r || !v) { return {}; } \
          return {clip: Number(r.dataset.currentClip), t: v.currentTime, ready: v.readyState, \
                  src: v.currentSrc};")
}

fn logout(d: &Driver) {
    d.click("form[action='/logout'] button");
    wait("the logout", Duration::from_secs(15), || {
        d.url().ends_with("/status") && d.source().contains("href=\"/login\"")
    });
}

#[test]
fn a_person_searches_what_was_typed_through_the_gateway_and_lands_on_it() {
    if !browser_available() {
        return;
    }
    let Some((dir, guacd)) = lab() else { return };
    let Some(g) = garage::garage_or_skip("gateway_search") else {
        return;
    };
    let sshd = Sshd::start(dir.path());
    let port = http_port();
    let (home, tap) = lab_home(&guacd, port, &garage_storage(&g));
    let d = home.start_tap(&tap);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    // The session.
    let id = "gw-person";
    let client = Client::connect(&tap, "ssh", &ssh_params(id, &sshd), Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("ssh session through the tap: {e}"));
    wait("the first frame", Duration::from_secs(20), || {
        lock(&client.seen).syncs > 0
    });
    let typed_at_ms = ssh_session(&client);
    client.disconnect();

    // Encoded, uploaded to Garage, indexed: the API finds the word.
    let admin = serve_fixture::login(addr, ADMIN, PASSWORD).expect("admin login");
    let found = until(Duration::from_secs(180), || {
        api(addr, &admin, &format!("q={WORD}&kind=typed"))["total"] == 1
    });
    assert!(found, "not indexed; log:\n{}", d.log_text());
    let hit = api(addr, &admin, &format!("q={WORD}&kind=typed"))["hits"][0].clone();
    assert_eq!(hit["session_id"], id, "{hit}");
    assert_eq!(hit["kind"], "typed", "{hit}");
    let at_ms = hit["at_ms"].as_u64().unwrap();
    assert!(
        at_ms.abs_diff(typed_at_ms) < 1000,
        "the hit is at {at_ms}, the command was typed at {typed_at_ms}"
    );
    let (session, clips) = {
        let q = queue(&home);
        let s = q.session_by_external(id).unwrap().expect("the session");
        let clips = q.clips_of_session(s.id).unwrap();
        (s, clips)
    };
    assert!(session.end_ms.is_some(), "the session ended");
    let clip = clips
        .iter()
        .rev()
        .find(|c| c.start_ms <= at_ms)
        .expect("the clip of the moment");
    let moment_s = typed_at_ms.saturating_sub(clip.start_ms) as f64 / 1000.0;

    // The password: not in the index, not in the events object in the bucket.
    assert_eq!(api(addr, &admin, &format!("q={SECRET}"))["total"], 0);
    assert_eq!(api(addr, &admin, "q=hunter2")["total"], 0);
    for c in &clips {
        let key = c.object_key.as_ref().expect("uploaded clip");
        let events_key = session_recorder::upload::location::events_key(key);
        let events = g.curl(&[], &format!("{}/{events_key}", g.bucket));
        assert!(
            events.contains("\"format\""),
            "events object {events_key}: {events}"
        );
        assert!(
            !events.contains("hunter2"),
            "the password is in {events_key}"
        );
    }
    // The title, the copy and the paste.
    let title = api(addr, &admin, &format!("q={TITLE}&kind=title"));
    assert_eq!(title["total"], 1, "{title}");
    let pastes = api(addr, &admin, "kind=clipboard");
    let texts = pastes.to_string();
    assert!(texts.contains(PASTED), "{pastes}");
    assert!(
        texts.contains("Copy out of the session"),
        "no copy: {pastes}"
    );

    // In the browser, through the pages only.
    let art = artifacts();
    let profile = home.root().join("profile");
    let downloads = home.root().join("downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    let b = Driver::start(&downloads, &profile);
    b.size(1280, 900);
    let base = format!("http://{addr}");
    b.log_in(&format!("{base}/login"), ADMIN, PASSWORD);
    b.type_into("#search-q", WORD);
    b.click("form.search-inside button");
    wait("the search page", Duration::from_secs(10), || {
        b.url().contains("/search?q=")
    });
    // Typed, and in what was copied out of the terminal (the selection held the command).
    assert_eq!(
        b.js("return document.querySelectorAll('#hits tr.hit').length;"),
        2
    );
    b.screenshot(&art.join("gateway-search-hits.png"));
    // Narrowed to typed text with the form's kind filter.
    b.js("document.getElementById('kind').value = 'typed'; return true;");
    b.click("form.filters button[type=submit]");
    wait("the kind filter", Duration::from_secs(10), || {
        b.url().contains("kind=typed")
    });
    assert_eq!(
        b.js("return document.querySelectorAll('#hits tr.hit').length;"),
        1
    );
    b.click("a.hit-link");
    wait("the player", Duration::from_secs(20), || {
        player(&b)["ready"].as_u64().unwrap_or(0) >= 1
    });
    wait("the seek", Duration::from_secs(10), || {
        (player(&b)["t"].as_f64().unwrap_or(-9.0) - moment_s).abs() < 1.0
    });
    b.js("document.getElementById('player').pause(); return true;");
    let p = player(&b);
    let t = p["t"].as_f64().unwrap();
    assert!((t - moment_s).abs() < 1.0, "within 1 s of {moment_s}: {p}");
    assert_eq!(
        p["clip"].as_u64(),
        Some(u64::from(clip.index) + 1),
        "the clip of the moment: {p}"
    );
    b.screenshot(&art.join("gateway-search-player.png"));
    let src = b.source();
    assert!(src.contains(PASTED), "the admin sees the paste's text");
    assert!(
        !src.contains("hunter2"),
        "the password is on the player page"
    );

    // The picture there: the clip the player plays, 1 s on (the command was typed from the
    // moment on, at 20 ms a key, and its output follows).
    let video = serve_fixture::get(
        addr,
        &format!("/clips/{id}/{}/video", u64::from(clip.index) + 1),
        &format!("Cookie: sr_session={admin}\r\n"),
    );
    assert_eq!(video.status, 200, "the clip: {}", video.text());
    let mp4 = home.root().join("moment.mp4");
    std::fs::write(&mp4, &video.body).unwrap();
    let png = art.join("gateway-search-frame.png");
    let text = ocr_frame(&mp4, t + 1.0, &png);
    assert!(
        text.contains(&format!("echo {WORD}")) || text.contains(WORD),
        "the frame at {:.1} s shows no command; tesseract read:\n{text}",
        t + 1.0
    );

    // The audit page has the search.
    b.go(&format!("{base}/admin/audit?kind=searched"));
    let src = b.source();
    assert!(
        src.contains(&format!("searched recordings for \"{WORD}\"")),
        "audited"
    );
    // The password is there only as the query of this test's own searches for it.
    let others = src
        .replace(&format!("for \"{SECRET}\""), "")
        .replace("for \"hunter2\"", "");
    assert!(
        !others.contains("hunter2"),
        "the password on the audit page"
    );
    b.screenshot(&art.join("gateway-search-audit.png"));

    // Without SESSION_KEYSTROKES_VIEW: the paste is there, its text is not.
    logout(&b);
    b.log_in(&format!("{base}/login"), PLAYER, PASSWORD);
    b.go(&format!("{base}/search?q={PASTED}"));
    assert!(b.source().contains("Nothing found"), "found by its words");
    b.go(&format!("{base}/search?kind=clipboard"));
    let src = b.source();
    assert!(
        src.contains("Paste into the session") && src.contains("contents hidden"),
        "the paste is listed, hidden"
    );
    assert!(!src.contains(PASTED) && !src.contains("hunter2"));
    b.screenshot(&art.join("gateway-search-no-keystrokes.png"));
    b.go(&format!("{base}/play/{id}"));
    let src = b.source();
    assert!(src.contains("Paste into the session") && !src.contains(PASTED));
    assert!(!src.contains("hunter2"));
    drop(b);
    d.stop();
}

/// A field of the daemon's `/proc/PID/status`, kB.
fn proc_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// The events of every clip of session `id` in the local bucket, once it ended and each clip
/// is there with its events object.
fn local_events(
    home: &Home,
    d: &Daemon,
    id: &str,
) -> (
    Vec<std::path::PathBuf>,
    Vec<session_recorder::events::Event>,
) {
    let mut mp4s = Vec::new();
    let done = until(Duration::from_secs(180), || {
        let q = queue(home);
        let Ok(Some(s)) = q.session_by_external(id) else {
            return false;
        };
        let segments = q.segments_of_session(s.id).unwrap();
        let clips = q.clips_of_session(s.id).unwrap();
        mp4s = clips
            .iter()
            .filter_map(|c| c.object_key.as_ref())
            .map(|k| home.bucket().join(k))
            .filter(|p| p.exists() && p.with_extension("events.json").exists())
            .collect();
        s.end_ms.is_some() && !segments.is_empty() && mp4s.len() == segments.len()
    });
    assert!(done, "session {id} not uploaded; log:\n{}", d.log_text());
    let mut events = Vec::new();
    for mp4 in &mp4s {
        let bytes = std::fs::read(mp4.with_extension("events.json")).unwrap();
        events.extend(
            session_recorder::events::format::from_bytes(&bytes)
                .expect("a readable events object")
                .events,
        );
    }
    (mp4s, events)
}

/// Bad input through the real gateway, each with nothing lost and a clear outcome: a 100 MiB
/// paste (kept as its first 64 KiB, marked cut, its size counted; the daemon's memory does not
/// grow with it; the session records on), a binary clipboard (mimetype and size only), an
/// upload that never ends (closed with the session, marked incomplete), keys nobody knows
/// (`<0xNNNN>`); then a corrupt events object in the bucket: the rebuilt index skips and counts
/// it on the status page, and the session still plays.
#[test]
fn bad_input_through_the_gateway_is_recorded_bounded_and_clear() {
    use base64::Engine;
    use session_recorder::events::{Direction, EventDetail};
    let Some((dir, guacd)) = lab() else { return };
    let sshd = Sshd::start(dir.path());
    let port = http_port();
    // The unknown key comes right after `echo a`: on a loaded machine the shell's echo of that
    // run can come after the key that ends it, and the run would be masked as a password
    // (tested on its own in `a_person_searches...`). Here the raw keys are the point.
    let (home, tap) = lab_home(&guacd, port, "\n[search]\nmask-unechoed-input = false\n");
    let d = home.start_tap(&tap);
    let pid = d.child.id();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let id = "gw-bad-input";
    let mut params = ssh_params(id, &sshd);
    params.push(("enable-sftp", "true".into()));
    let client = Client::connect(&tap, "ssh", &params, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("ssh session through the tap: {e}"));
    wait("the first frame", Duration::from_secs(20), || {
        lock(&client.seen).syncs > 0
    });
    std::thread::sleep(Duration::from_millis(2500));
    let rss_before_kb = proc_kb(pid, "VmRSS:");

    // 100 MiB of text pasted from the client, 4 KiB a blob.
    const PASTE_BYTES: usize = 100 * 1024 * 1024;
    const BLOB_BYTES: usize = 4096;
    let chunk: Vec<u8> = (0..BLOB_BYTES).map(|i| b"flood-line "[i % 11]).collect();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&chunk);
    let started = Instant::now();
    client.send(&["clipboard", "11", "text/plain"]);
    for _ in 0..PASTE_BYTES / BLOB_BYTES {
        client.send(&["blob", "11", &b64]);
    }
    client.send(&["end", "11"]);
    eprintln!("100 MiB paste sent in {:?}", started.elapsed());
    std::thread::sleep(Duration::from_millis(1000));
    // A binary clipboard.
    let png = [0x89u8, b'P', b'N', b'G', 0, 1, 2, 3, 0xff, 0xfe];
    client.send(&["clipboard", "12", "image/png"]);
    client.send(&[
        "blob",
        "12",
        &base64::engine::general_purpose::STANDARD.encode(png),
    ]);
    client.send(&["end", "12"]);
    std::thread::sleep(Duration::from_millis(500));
    // An upload (SFTP) that never ends.
    client.send(&["file", "13", "application/octet-stream", "never-ends.bin"]);
    client.send(&[
        "blob",
        "13",
        &base64::engine::general_purpose::STANDARD.encode([7u8; 3000]),
    ]);
    std::thread::sleep(Duration::from_millis(500));
    // Keys nobody knows, between known ones.
    client.type_text("echo a");
    client.send(&["key", "74565", "1"]);
    client.send(&["key", "74565", "0"]);
    client.type_text("b\n");
    std::thread::sleep(Duration::from_millis(1000));
    // The session records on.
    client.type_text("echo after-the-flood\n");
    std::thread::sleep(Duration::from_millis(1500));
    let hwm_kb = proc_kb(pid, "VmHWM:");
    client.type_text("exit\n");
    std::thread::sleep(Duration::from_millis(1000));
    client.disconnect();

    let (mp4s, events) = local_events(&home, &d, id);
    eprintln!("daemon RSS before {rss_before_kb} kB, peak {hwm_kb} kB");
    assert!(
        hwm_kb < rss_before_kb + 64 * 1024,
        "the daemon's memory grew with the paste: {rss_before_kb} kB -> peak {hwm_kb} kB"
    );
    let clipboards: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.detail {
            EventDetail::Clipboard {
                direction,
                mimetype,
                size_bytes,
                text,
                truncated,
            } => Some((
                *direction,
                mimetype.clone(),
                *size_bytes,
                text.clone(),
                *truncated,
            )),
            _ => None,
        })
        .collect();
    assert_eq!(clipboards.len(), 2, "{clipboards:?}");
    let (dir0, mime, size, text, cut) = &clipboards[0];
    assert_eq!((*dir0, mime.as_str()), (Direction::ToRemote, "text/plain"));
    assert_eq!(
        *size, PASTE_BYTES as u64,
        "the paste's size is counted whole"
    );
    assert!(*cut, "the paste is marked cut");
    let text = text.as_deref().expect("the paste's text");
    assert_eq!(text.len(), 64 * 1024, "kept up to the cap");
    assert!(text.starts_with("flood-line flood-line"));
    assert_eq!(
        clipboards[1],
        (
            Direction::ToRemote,
            "image/png".to_string(),
            png.len() as u64,
            None,
            false
        ),
        "a binary clipboard is mimetype and size only"
    );
    let files: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.detail {
            EventDetail::File {
                direction,
                name,
                size_bytes,
                complete,
                ..
            } => Some((*direction, name.clone(), *size_bytes, *complete)),
            _ => None,
        })
        .collect();
    assert_eq!(
        files,
        [(
            Direction::ToRemote,
            "never-ends.bin".to_string(),
            3000,
            false
        )],
        "the upload that never ended"
    );
    let typed: Vec<String> = events
        .iter()
        .filter_map(|e| match &e.detail {
            EventDetail::Typed { raw, .. } => Some(raw.clone()),
            _ => None,
        })
        .collect();
    assert!(
        typed.iter().any(|r| r.contains("a<0x12345>b")),
        "the unknown key: {typed:?}"
    );
    assert!(
        typed.iter().any(|r| r.contains("after-the-flood")),
        "recorded on after the paste: {typed:?}"
    );
    // The clip lasts the session.
    let session = queue(&home).session_by_external(id).unwrap().unwrap();
    let probed: f64 = mp4s.iter().map(|m| util::clip::probe(m).duration_s).sum();
    let lasted_s = (session.end_ms.unwrap() - session.start_ms) as f64 / 1000.0;
    assert!(
        (probed - lasted_s).abs() < 1.5,
        "clips {probed:.1} s, session {lasted_s:.1} s"
    );

    // A corrupt events object in the bucket, and the index rebuilt: skipped, counted, plays.
    let admin = serve_fixture::login(addr, ADMIN, PASSWORD).expect("admin login");
    assert!(
        until(Duration::from_secs(60), || {
            api(addr, &admin, "q=after-the-flood")["total"] == 1
        }),
        "not indexed"
    );
    assert_eq!(d.stop().code(), Some(0));
    std::fs::write(
        mp4s[0].with_extension("events.json"),
        b"{\"format\": 1, \"ev",
    )
    .unwrap();
    std::fs::remove_dir_all(home.data().join("search")).unwrap();
    let d = home.start_tap(&tap);
    let admin = {
        let mut c = None;
        wait("the HTTP server", Duration::from_secs(30), || {
            c = std::net::TcpStream::connect(addr)
                .ok()
                .and_then(|_| serve_fixture::login(addr, ADMIN, PASSWORD));
            c.is_some()
        });
        c.unwrap()
    };
    let cookie = format!("Cookie: sr_session={admin}\r\n");
    let counted = until(Duration::from_secs(60), || {
        serve_fixture::get(addr, "/status", &cookie)
            .text()
            .contains("1 events objects skipped")
    });
    assert!(
        counted,
        "not counted; status:\n{}",
        serve_fixture::get(addr, "/status", &cookie).text()
    );
    assert_eq!(api(addr, &admin, "q=after-the-flood")["total"], 0);
    let video = serve_fixture::get(addr, &format!("/clips/{id}/1/video"), &cookie);
    assert_eq!(video.status, 200, "the session still plays");
    assert_eq!(video.body, std::fs::read(&mp4s[0]).unwrap());
    assert_eq!(
        serve_fixture::get(addr, &format!("/play/{id}"), &cookie).status,
        200
    );
    d.stop();
}

/// A VNC session through the gateway where the client pastes text: a clipboard event, found
/// by its words.
#[test]
fn a_vnc_paste_through_the_gateway_is_a_clipboard_event_found_by_search() {
    let Some((dir, guacd)) = lab() else { return };
    let desk = util::gateway_lab::Desktop::vnc(dir.path());
    let port = http_port();
    let (home, tap) = lab_home(&guacd, port, "");
    let d = home.start_tap(&tap);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let id = "gw-vnc-paste";
    let params = vec![
        ("recording-session-id", id.to_string()),
        ("recording-user-id", "u-2".into()),
        ("recording-username", "designer".into()),
        ("recording-image-friendly-name", "Desktop".into()),
        ("recording-required", "true".into()),
        ("hostname", "127.0.0.1".into()),
        ("port", desk.port.to_string()),
    ];
    let client = Client::connect(&tap, "vnc", &params, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("vnc session through the tap: {e}"));
    wait("the first frame", Duration::from_secs(20), || {
        lock(&client.seen).syncs > 0
    });
    std::thread::sleep(Duration::from_millis(1500));
    let vnc_pasted = "vnc-paste-quarterly-report";
    paste(&client, vnc_pasted);
    std::thread::sleep(Duration::from_millis(1500));
    desk.type_text("echo typed-on-the-desktop\n");
    std::thread::sleep(Duration::from_millis(1500));
    client.disconnect();
    let (_, events) = local_events(&home, &d, id);
    let pastes: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.detail {
            session_recorder::events::EventDetail::Clipboard {
                direction, text, ..
            } => Some((*direction, text.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        pastes,
        [(
            session_recorder::events::Direction::ToRemote,
            Some(vnc_pasted.to_string())
        )],
        "clipboard events"
    );
    let admin = serve_fixture::login(addr, ADMIN, PASSWORD).expect("admin login");
    let found = until(Duration::from_secs(60), || {
        api(addr, &admin, &format!("q={vnc_pasted}&kind=clipboard"))["total"] == 1
    });
    assert!(found, "the paste is not found");
    let hit = api(addr, &admin, &format!("q={vnc_pasted}&kind=clipboard"))["hits"][0].clone();
    assert_eq!(hit["session_id"], id, "{hit}");
    d.stop();
}
