//! Integration tests of the HTTP side against a real server on 127.0.0.1 with real MP4 clips:
//! the route-by-permission matrix, redaction for anonymous viewers, malformed requests, Range
//! correctness, zip validity (`unzip -t`), audit wording, CSRF, login/logout, settings
//! validation, TLS through rustls, graceful stop.

use crate::util::certs;
use crate::util::serve_fixture;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serve_fixture::*;

const NONE: &str = "";

/// (path, [no auth, SESSIONS_VIEW, SESSION_RECORDINGS_VIEW, ADMIN]).
fn matrix() -> Vec<(String, [u16; 4])> {
    let s = SESSION;
    let open = [200, 200, 200, 200];
    let history = [401, 200, 403, 200];
    let recordings = [401, 403, 200, 200];
    let admin = [401, 403, 403, 200];
    vec![
        ("/status".into(), open),
        ("/api/v1/status".into(), open),
        ("/metrics".into(), open),
        ("/api/v1/admission".into(), open),
        ("/sessions".into(), history),
        ("/api/v1/sessions".into(), history),
        (format!("/play/{s}/1"), recordings),
        (format!("/clips/{s}/1/video"), recordings),
        (format!("/clips/{s}/1/download"), recordings),
        (format!("/thumbs/{s}/1"), recordings),
        (format!("/sessions/{s}/zip"), recordings),
        ("/admin/audit".into(), admin),
        ("/admin/settings".into(), admin),
        ("/admin/users".into(), admin),
    ]
}

#[test]
fn route_permission_matrix() {
    let f = start();
    let auths = [String::new(), bearer(VIEWER), bearer(PLAYER), bearer(ADMIN)];
    for (path, expected) in matrix() {
        for (i, auth) in auths.iter().enumerate() {
            let r = get(f.addr, &path, auth);
            assert_eq!(r.status, expected[i], "GET {path} as role #{i}");
            if r.status == 401 || r.status == 403 {
                let t = r.text();
                assert!(!t.contains(SESSION), "{path} leaks the session id: {t}");
                assert!(!t.contains(BUCKET), "{path} leaks the bucket: {t}");
                assert!(!t.contains("alice"), "{path} leaks a user name: {t}");
            }
        }
    }
    // The same for the 401 page a browser gets (HTML login form).
    let r = get(f.addr, "/sessions", "Accept: text/html\r\n");
    assert_eq!(r.status, 401);
    assert!(r.text().contains("name=\"password\""));
    assert!(!r.text().contains(SESSION));
    // State-changing routes.
    let posts = ["/admin/settings", "/admin/users/add", "/logout"];
    for p in posts {
        assert_eq!(request(f.addr, "POST", p, "", "").status, 401, "POST {p}");
    }
    for role in [VIEWER, PLAYER] {
        let r = request(f.addr, "POST", "/admin/settings", &bearer(role), "");
        assert_eq!(r.status, 403, "POST settings as {role}");
    }
    let r = request(f.addr, "POST", "/admin/settings", &bearer(ADMIN), "");
    assert_eq!(r.status, 200);
    // A bad token is the same as none.
    let r = get(f.addr, "/sessions", "Authorization: Bearer nope\r\n");
    assert_eq!(r.status, 401);
    // Unknown route and method.
    assert_eq!(get(f.addr, "/nope", &bearer(ADMIN)).status, 404);
    assert_eq!(request(f.addr, "DELETE", "/status", "", "").status, 405);
}

#[test]
fn status_is_public_but_redacted_and_problems_come_first() {
    let f = start();
    let anon = get(f.addr, "/api/v1/status", NONE);
    assert_eq!(anon.status, 200);
    let t = anon.text();
    assert!(!t.contains(SESSION), "{t}");
    assert!(!t.contains(BUCKET), "{t}");
    let v: serde_json::Value = serde_json::from_slice(&anon.body).unwrap();
    assert_eq!(v["redacted"], true);
    assert_eq!(v["users_that_fit"], 9);
    assert_eq!(v["settings_valid"], false);
    assert_eq!(v["encoders"][0]["core"], 1);
    assert_eq!(v["uploads"]["backlog"], 7);
    let problems = v["problems"].as_array().unwrap();
    assert!(
        problems[0]
            .as_str()
            .unwrap()
            .starts_with("Settings problem")
    );
    assert!(problems[1].as_str().unwrap().contains("unreachable"));

    let admin = get(f.addr, "/api/v1/status", &bearer(ADMIN));
    let v: serde_json::Value = serde_json::from_slice(&admin.body).unwrap();
    assert_eq!(v["redacted"], false);
    assert_eq!(v["encoders"][0]["job"]["session_id"], SESSION);
    assert!(admin.text().contains(BUCKET));

    let page = get(f.addr, "/status", NONE);
    let html = page.text();
    assert!(html.contains("refresh=on"));
    assert!(html.contains("name=\"viewport\""));
    let first_alert = html.find("class=\"alert\"").expect("an alert");
    let enc = html.find("Encoders").unwrap();
    assert!(first_alert < enc);
    assert!(html[first_alert..].starts_with("class=\"alert\" role=\"alert\">Settings problem"));
    assert!(html.contains("bucket is unreachable"));
    assert!(!html.contains(BUCKET));
    assert!(!html.contains(SESSION));
    assert!(!html.contains("<script"));
}

#[test]
fn metrics_and_admission() {
    let f = start();
    let m = get(f.addr, "/metrics", NONE).text();
    for line in [
        "session_recorder_disk_free_bytes 10000000000",
        "session_recorder_users_that_fit 9",
        "session_recorder_queue{state=\"clips_ready\"} 3",
        "session_recorder_encoder_busy{encoder=\"0\"} 1",
        "session_recorder_encoder_busy{encoder=\"1\"} 0",
        "session_recorder_upload_backlog 7",
        "session_recorder_store_reachable 0",
        "session_recorder_settings_valid 0",
        "session_recorder_admission_open 1",
        "session_recorder_disk_state{state=\"available\"} 1",
    ] {
        assert!(m.contains(line), "missing `{line}` in\n{m}");
    }
    assert!(!m.contains(BUCKET) && !m.contains(SESSION));
    assert_eq!(get(f.addr, "/api/v1/admission", NONE).status, 200);
    f.admission_open.store(false, Ordering::SeqCst);
    let r = get(f.addr, "/api/v1/admission", NONE);
    assert_eq!(r.status, 503);
    assert!(r.text().contains("disk space below the floor"));
}

#[test]
fn guacd_unreachable_is_a_problem_and_a_metric_until_it_is_back() {
    let f = start();
    let problems = |auth: &str| -> Vec<String> {
        let r = get(f.addr, "/api/v1/status", auth);
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        v["problems"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap().to_string())
            .filter(|p| p.contains("guacd"))
            .collect()
    };
    assert!(problems(&bearer(ADMIN)).is_empty());
    f.board.update(|s| s.tap.upstream = "127.0.0.1:4823".into());
    f.board
        .set_upstream(false, Some("Connection refused (os error 111)".into()));
    let admin = problems(&bearer(ADMIN));
    assert_eq!(admin.len(), 1, "{admin:?}");
    assert!(
        admin[0].contains("127.0.0.1:4823") && admin[0].contains("Connection refused"),
        "{admin:?}"
    );
    // Anonymous viewers see the problem, not the address or the error.
    let anon = problems(NONE);
    assert_eq!(anon.len(), 1, "{anon:?}");
    assert!(
        !anon[0].contains("4823") && !anon[0].contains("refused"),
        "{anon:?}"
    );
    let m = get(f.addr, "/metrics", NONE).text();
    assert!(m.contains("session_recorder_guacd_reachable 0\n"), "{m}");
    assert!(
        m.contains("session_recorder_unrecorded_sessions_total 0\n"),
        "{m}"
    );
    // guacd is back: cleared.
    f.board.set_upstream(true, None);
    assert!(problems(&bearer(ADMIN)).is_empty());
    let m = get(f.addr, "/metrics", NONE).text();
    assert!(m.contains("session_recorder_guacd_reachable 1\n"), "{m}");
}

#[test]
fn malformed_requests_get_clean_4xx_and_the_server_lives_on() {
    let f = start();
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (b"\x16\x03\x01\x00\xa5garbage\r\n\r\n".to_vec(), 400),
        (b"HELLO\r\n\r\n".to_vec(), 400),
        (b"GET / HTTP/9.9\r\n\r\n".to_vec(), 505),
        (
            format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(64 * 1024)).into_bytes(),
            431,
        ),
        (
            format!(
                "GET / HTTP/1.1\r\n{}\r\n",
                (0..200).map(|i| format!("H{i}: v\r\n")).collect::<String>()
            )
            .into_bytes(),
            431,
        ),
        (
            b"POST /login HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n".to_vec(),
            413,
        ),
        (
            b"POST /login HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
            411,
        ),
        (
            format!("GET /{} HTTP/1.1\r\n\r\n", "x".repeat(10_000)).into_bytes(),
            414,
        ),
        (
            b"GET /%zz HTTP/1.1\r\nConnection: close\r\n\r\n".to_vec(),
            400,
        ),
    ];
    for (bytes, want) in cases {
        let r = raw(f.addr, &bytes);
        assert_eq!(
            r.status,
            want,
            "{:?}",
            String::from_utf8_lossy(&bytes[..40.min(bytes.len())])
        );
    }
    // A connection that closes mid-head does not hurt.
    let _ = raw_partial(f.addr, b"GET /status HT");
    assert_eq!(get(f.addr, "/status", NONE).status, 200);
}

fn raw_partial(addr: std::net::SocketAddr, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(addr)?;
    s.write_all(bytes)
}

#[test]
fn traversal_and_bad_ids_are_400_or_404() {
    let f = start();
    let a = bearer(ADMIN);
    for (path, want) in [
        ("/play/..%2F..%2Fetc%2Fpasswd/1".to_string(), 400),
        ("/clips/%2e%2e/1/video".into(), 400),
        ("/thumbs/a%00b/1".into(), 400),
        ("/sessions/..%5C..%5Cwin/zip".into(), 400),
        (format!("/play/{SESSION}/0"), 400),
        (format!("/play/{SESSION}/-1"), 400),
        (format!("/play/{SESSION}/99999999999999999999999"), 400),
        (format!("/play/{SESSION}/99"), 404),
        ("/play/unknown-session/1".into(), 404),
        ("/sessions/unknown-session/zip".into(), 404),
    ] {
        let r = get(f.addr, &path, &a);
        assert_eq!(r.status, want, "{path}");
        assert!(!r.text().contains("/etc"), "{path}");
    }
    // The failed clip is listed but cannot be streamed.
    assert_eq!(
        get(f.addr, &format!("/clips/{SESSION}/3/video"), &a).status,
        404
    );
}

#[test]
fn range_requests_are_correct() {
    let f = start();
    let file = std::fs::read(&f.clips[0]).unwrap();
    let len = file.len();
    let path = format!("/clips/{SESSION}/1/video");
    let a = bearer(PLAYER);
    let full = get(f.addr, &path, &a);
    assert_eq!(full.status, 200);
    assert_eq!(full.body, file);
    assert_eq!(full.header("accept-ranges"), Some("bytes"));
    assert_eq!(full.header("content-type"), Some("video/mp4"));

    let r = get(f.addr, &path, &format!("{a}Range: bytes=100-199\r\n"));
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &file[100..200]);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes 100-199/{len}").as_str())
    );

    let r = get(f.addr, &path, &format!("{a}Range: bytes=-50\r\n"));
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &file[len - 50..]);

    let r = get(f.addr, &path, &format!("{a}Range: bytes={}-\r\n", len - 10));
    assert_eq!(r.body, &file[len - 10..]);

    let r = get(
        f.addr,
        &path,
        &format!("{a}Range: bytes=0-{}\r\n", len * 10),
    );
    assert_eq!(r.status, 206);
    assert_eq!(r.body, file);

    for bad in [
        format!("bytes={len}-"),
        "bytes=9-3".into(),
        "bytes=x-y".into(),
        "pages=1-2".into(),
    ] {
        let r = get(f.addr, &path, &format!("{a}Range: {bad}\r\n"));
        assert_eq!(r.status, 416, "{bad}");
        assert_eq!(
            r.header("content-range"),
            Some(format!("bytes */{len}").as_str())
        );
    }
    let r = get(f.addr, &path, &format!("{a}Range: bytes=0-1,5-6\r\n"));
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), len);
}

#[test]
fn zip_of_a_session_is_valid_and_audited() {
    let f = start();
    let r = get(f.addr, &format!("/sessions/{SESSION}/zip"), &bearer(PLAYER));
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-disposition"),
        Some(format!("attachment; filename=\"{SESSION}.zip\"").as_str())
    );
    // Its length is announced (the browser shows progress), and is right.
    assert_eq!(r.header("transfer-encoding"), None);
    assert_eq!(
        r.header("content-length"),
        Some(r.body.len().to_string().as_str())
    );
    let zip_path = f.dir.path().join("all.zip");
    std::fs::write(&zip_path, &r.body).unwrap();
    let t = Command::new("unzip")
        .arg("-t")
        .arg(&zip_path)
        .output()
        .unwrap();
    assert!(t.status.success(), "{}", String::from_utf8_lossy(&t.stdout));
    let out = Command::new("unzip")
        .arg("-o")
        .arg(&zip_path)
        .arg("-d")
        .arg(f.dir.path().join("x"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let one = std::fs::read(
        f.dir
            .path()
            .join("x")
            .join(format!("{SESSION}-clip-01.mp4")),
    )
    .unwrap();
    let two = std::fs::read(
        f.dir
            .path()
            .join("x")
            .join(format!("{SESSION}-clip-02.mp4")),
    )
    .unwrap();
    assert_eq!(one, std::fs::read(&f.clips[0]).unwrap());
    assert_eq!(two, std::fs::read(&f.clips[1]).unwrap());
    // The failed clip 3 is not in the archive.
    assert!(
        !f.dir
            .path()
            .join("x")
            .join(format!("{SESSION}-clip-03.mp4"))
            .exists()
    );
    let audit = f.backend.audit_entries();
    let last = audit.last().unwrap();
    assert_eq!(last.kind, "downloaded_session");
    assert_eq!(
        last.message,
        format!("User {PLAYER} downloaded entire session: {SESSION}")
    );
}

#[test]
fn play_and_download_are_audited_with_kasm_wording() {
    let f = start();
    let a = bearer(PLAYER);
    let location = format!("s3://{BUCKET}/user-1/{SESSION}/clip-1.mp4");
    let page = get(f.addr, &format!("/play/{SESSION}/1"), &a);
    assert!(
        page.text()
            .contains(&format!("src=\"/clips/{SESSION}/1/video\""))
    );
    assert!(page.text().contains("Clip 2"));
    assert!(page.text().contains("failed"));
    assert_eq!(
        get(f.addr, &format!("/clips/{SESSION}/1/video"), &a).status,
        200
    );
    // The follow-up range requests of the same viewing add nothing.
    get(
        f.addr,
        &format!("/clips/{SESSION}/1/video"),
        &format!("{a}Range: bytes=0-\r\n"),
    );
    get(
        f.addr,
        &format!("/clips/{SESSION}/1/video"),
        &format!("{a}Range: bytes=500-\r\n"),
    );
    let played: Vec<_> = f
        .backend
        .audit_entries()
        .into_iter()
        .filter(|e| e.kind == "played")
        .collect();
    assert_eq!(played.len(), 1, "{played:?}");
    assert_eq!(
        played[0].message,
        format!("User {PLAYER} played {SESSION} video: {location}")
    );
    assert_eq!(played[0].actor, PLAYER);
    let d = get(f.addr, &format!("/clips/{SESSION}/1/download"), &a);
    assert_eq!(d.status, 200);
    assert_eq!(
        d.header("content-disposition"),
        Some(format!("attachment; filename=\"{SESSION}-clip-01.mp4\"").as_str())
    );
    assert!(
        d.body.len() > 32 * 1024,
        "past tiny_http's chunking threshold"
    );
    assert_eq!(
        d.header("content-length"),
        Some(d.body.len().to_string().as_str())
    );
    assert_eq!(d.header("transfer-encoding"), None);
    let last = f.backend.audit_entries().pop().unwrap();
    assert_eq!(
        last.message,
        format!("User {PLAYER} downloaded {SESSION} video: {location}")
    );
    // The admin audit page shows and filters them.
    let page = get(f.addr, "/admin/audit?kind=played", &bearer(ADMIN)).text();
    assert!(page.contains(&format!("played {SESSION} video")));
    assert!(!page.contains(&format!("downloaded {SESSION} video")));
    let page = get(
        f.addr,
        &format!("/admin/audit?q=downloaded&actor={}", url(PLAYER)),
        &bearer(ADMIN),
    );
    assert!(page.text().contains(&format!("downloaded {SESSION} video")));
}

#[test]
fn history_lists_filters_and_marks_failed_clips() {
    let f = start();
    let a = bearer(VIEWER);
    let page = get(f.addr, "/sessions", &a).text();
    let newest = page.find(SESSION).unwrap();
    let older = page.find(OTHER_SESSION).unwrap();
    assert!(newest < older, "newest first");
    assert!(page.contains("Windows 11 &lt;Desktop&gt;"), "escaped");
    assert!(page.contains("3 clips"));
    assert!(page.contains("class=\"failed\">failed"));
    // Without SESSION_RECORDINGS_VIEW there are no play links or thumbnails.
    assert!(!page.contains("/play/"));
    let admin_page = get(f.addr, "/sessions", &bearer(ADMIN)).text();
    assert!(admin_page.contains(&format!("/play/{SESSION}/1")));
    let filtered = get(f.addr, "/sessions?user=bob%40example.com", &a).text();
    assert!(filtered.contains(OTHER_SESSION) && !filtered.contains(SESSION));
    // Part of the name, any case; the user cell links to that filter.
    let part = get(f.addr, "/sessions?user=BOB", &a).text();
    assert!(part.contains(OTHER_SESSION) && !part.contains(SESSION));
    assert!(page.contains("href=\"/sessions?user=bob%40example.com\""));
    assert!(page.contains("<label for=\"from\">Started from (day, UTC)</label>"));
    assert!(page.contains("<th>Started (UTC)</th>"));
    let text = get(f.addr, "/sessions?q=windows", &a).text();
    assert!(text.contains(SESSION) && !text.contains(OTHER_SESSION));
    let none = get(f.addr, "/sessions?from=2001-01-01&to=2001-01-02", &a).text();
    assert!(none.contains("No sessions match"));
    let paged = get(f.addr, "/sessions?limit=1", &a).text();
    assert!(paged.contains("Older sessions") && !paged.contains(OTHER_SESSION));
    let bad = get(f.addr, "/sessions?from=yesterday", &a);
    assert_eq!(bad.status, 200);
    assert!(bad.text().contains("Ignored `from`"));
    let json: serde_json::Value =
        serde_json::from_slice(&get(f.addr, "/api/v1/sessions?limit=1", &a).body).unwrap();
    assert_eq!(json["items"][0]["session_id"], SESSION);
    let cursor = json["next_before"].as_str().expect("a cursor");
    let older: serde_json::Value = serde_json::from_slice(
        &get(
            f.addr,
            &format!("/api/v1/sessions?limit=1&before={cursor}"),
            &a,
        )
        .body,
    )
    .unwrap();
    assert_eq!(older["items"][0]["session_id"], OTHER_SESSION);
    let newer = older["next_after"].as_str().expect("a way back");
    let back = get(f.addr, &format!("/sessions?limit=1&after={newer}"), &a).text();
    assert!(back.contains(SESSION) && !back.contains(OTHER_SESSION));
    assert!(back.contains("Older sessions") && !back.contains("Newer sessions"));
}

/// The session player: one page for all clips, the timeline with the clip boundaries, the
/// clip list with thumbnails, durations and downloads, and `?t=` landing in the clip that holds
/// that second of the session.
#[test]
fn session_player_page_and_deep_links() {
    let f = start();
    let a = bearer(PLAYER);
    let page = get(f.addr, &format!("/play/{SESSION}"), &a);
    assert_eq!(page.status, 200);
    let html = page.text();
    assert!(html.contains("data-current-clip=\"1\""), "{html}");
    assert!(html.contains(&format!("src=\"/clips/{SESSION}/1/video\"")));
    assert!(html.contains("Clip 1 of 3"));
    assert!(html.contains("<script src=\"/static/player.js"));
    assert_eq!(html.matches("<rect class=\"clip").count(), 3);
    for n in 1..=3 {
        assert!(html.contains(&format!("id=\"clip-{n}\" data-clip=\"{n}\"")));
    }
    assert_eq!(html.matches("class=\"boundary\"").count(), 2);
    assert!(html.contains(&format!("src=\"/thumbs/{SESSION}/2\"")));
    assert!(html.contains(&format!("href=\"/clips/{SESSION}/2/download\"")));
    assert!(html.contains("data-failed=\"true\""));
    assert!(html.contains("3 s"));
    // The session starts with clip 1 at -600 s; clip 2 starts 100 s in, lasts 3 s.
    let at = |t: &str| get(f.addr, &format!("/play/{SESSION}?t={t}"), &a).text();
    let p = at("101.5");
    assert!(p.contains("data-current-clip=\"2\""));
    assert!(p.contains(&format!("src=\"/clips/{SESSION}/2/video#t=1.500\"")));
    // In the gap between clips: the next clip, from its start.
    let p = at("50");
    assert!(p.contains("data-current-clip=\"2\"") && p.contains("data-start-at-s=\"0.000\""));
    // Past the last playable clip (clip 3 failed): the last playable one.
    assert!(at("250").contains("data-current-clip=\"2\""));
    assert!(at("nonsense").contains("data-current-clip=\"1\""));
    // The script is served same-origin and the pages may run it.
    let js = get(f.addr, "/static/player.js", NONE);
    assert_eq!(js.status, 200);
    assert!(
        js.header("content-type")
            .unwrap()
            .starts_with("text/javascript")
    );
    assert!(
        js.header("content-security-policy")
            .unwrap()
            .contains("script-src 'self'")
    );
    // Old links to one clip open the same player at that clip.
    let p = get(f.addr, &format!("/play/{SESSION}/2"), &a).text();
    assert!(p.contains("data-current-clip=\"2\""));
    assert_eq!(get(f.addr, "/play/no-such-session", &a).status, 404);
    assert_eq!(
        get(f.addr, &format!("/play/{SESSION}"), &bearer(VIEWER)).status,
        403
    );
}

/// The Host column, its filter (form, links, JSON) and the session page's host line.
#[test]
fn history_has_a_host_column_and_filters_by_host() {
    let f = start();
    let a = bearer(ADMIN);
    let page = get(f.addr, "/sessions", &a).text();
    assert!(page.contains("<th>Host</th>"));
    assert!(page.contains("<label for=\"host\">Host (part of host:port)</label>"));
    assert!(page.contains("href=\"/sessions?host=erp-01.corp.example%3A3389\""));
    assert!(page.contains("connected from 10.20.30.40:51234"));
    assert!(
        page.contains("<td class=\"host\">\u{2014}</td>"),
        "an import names no host"
    );
    let only = get(f.addr, "/sessions?host=ERP-01", &a).text();
    assert!(only.contains(SESSION) && !only.contains(OTHER_SESSION));
    assert!(
        only.contains("value=\"ERP-01\""),
        "the filter stays in the form"
    );
    let none = get(f.addr, "/sessions?host=hr.example", &a).text();
    assert!(none.contains("No sessions match"));
    let json: serde_json::Value =
        serde_json::from_slice(&get(f.addr, "/api/v1/sessions?host=erp-01", &a).body).unwrap();
    let items = json["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["session_id"], SESSION);
    assert_eq!(items[0]["target"], TARGET);
    assert_eq!(items[0]["client_addr"], "10.20.30.40:51234");
    let all: serde_json::Value =
        serde_json::from_slice(&get(f.addr, "/api/v1/sessions", &a).body).unwrap();
    let other = &all["items"][1];
    assert_eq!(
        (&other["session_id"], &other["target"]),
        (&OTHER_SESSION.into(), &"".into())
    );
    let player = get(f.addr, &format!("/play/{SESSION}"), &a).text();
    assert!(player.contains(&format!("host <span class=\"target\">{TARGET}</span>")));
    assert!(player.contains("<span class=\"client-addr\">10.20.30.40:51234</span>"));
}

/// The history through the LMDB queue: newest start first whatever the registration order,
/// user by part of the name, Newer/Older keeping the page size.
#[test]
fn queue_history_is_newest_start_first() {
    use session_recorder::clock::ManualClock;
    use session_recorder::queue::{NewSession, Queue, QueueOptions};
    use session_recorder::serve::HistorySource;
    use session_recorder::serve::backend::SessionQuery;
    use session_recorder::serve::backend_queue::QueueBackend;
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let queue = Arc::new(Queue::open(&QueueOptions::new(dir.path()), clock.clone()).unwrap());
    for (n, start_min, user, target) in [
        (1, 30u64, "Alice.Smith", "erp.example:3389"),
        (2, 10, "bob", ""),
        (3, 50, "ALICE.jones", "hr.example:22"),
        (4, 20, "carol", "ERP.example:3389"),
        (5, 40, "alice.smith", "erp.example:3389"),
    ] {
        queue
            .register_session(&NewSession {
                session_id: format!("s{n}"),
                user_id: user.into(),
                username: user.into(),
                image_friendly_name: "Kali".into(),
                protocol: "vnc".into(),
                start_ms: 1_700_000_000_000 + start_min * 60_000,
                target: target.into(),
                client_addr: "10.0.0.2:40000".into(),
            })
            .unwrap();
    }
    let b = QueueBackend::new(queue, clock, "s3://b/".into());
    let ids = |q: &SessionQuery| -> (Vec<String>, _, _) {
        let p = b.list_sessions(q).unwrap();
        let ids = p.items.iter().map(|r| r.session_id.clone()).collect();
        (ids, p.next_before, p.next_after)
    };
    let (all, _, _) = ids(&SessionQuery {
        limit: 10,
        ..Default::default()
    });
    assert_eq!(all, ["s3", "s5", "s1", "s4", "s2"]);
    let (alices, _, _) = ids(&SessionQuery {
        user: Some("alice".into()),
        limit: 10,
        ..Default::default()
    });
    assert_eq!(alices, ["s3", "s5", "s1"]);
    let (erp, _, _) = ids(&SessionQuery {
        host: Some("erp.EXAMPLE".into()),
        limit: 10,
        ..Default::default()
    });
    assert_eq!(erp, ["s5", "s1", "s4"], "part of host:port, any case");
    let row = b.session("s4").unwrap().unwrap();
    assert_eq!(
        (row.target.as_str(), row.client_addr.as_str()),
        ("ERP.example:3389", "10.0.0.2:40000")
    );
    let (p1, older, _) = ids(&SessionQuery {
        limit: 2,
        ..Default::default()
    });
    let (p2, _, newer) = ids(&SessionQuery {
        limit: 2,
        before: older,
        ..Default::default()
    });
    assert_eq!(p1, ["s3", "s5"]);
    assert_eq!(p2, ["s1", "s4"]);
    let (back, _, _) = ids(&SessionQuery {
        limit: 2,
        after: newer,
        ..Default::default()
    });
    assert_eq!(back, p1);
}

#[test]
fn login_cookie_csrf_and_logout() {
    let f = start();
    assert!(login(f.addr, ADMIN, "wrong password").is_none());
    let failed = f.backend.audit_entries().pop().unwrap();
    assert_eq!(failed.kind, "login_failed");
    let cookie = login(f.addr, ADMIN, PASSWORD).expect("login works");
    let c = format!("Cookie: sr_session={cookie}\r\n");
    let page = get(f.addr, "/admin/settings", &c);
    assert_eq!(page.status, 200);
    let csrf = hidden_value(&page.text(), "csrf").unwrap();
    // The cookie's flags.
    let form = get(f.addr, "/login", NONE);
    let pre = cookie_value(&form, "sr_login").unwrap();
    let tok = hidden_value(&form.text(), "csrf").unwrap();
    let r = request(
        f.addr,
        "POST",
        "/login",
        &format!("Cookie: sr_login={pre}\r\n"),
        &format!("csrf={tok}&user={}&password={}", url(ADMIN), url(PASSWORD)),
    );
    let set = r
        .headers_named("set-cookie")
        .into_iter()
        .find(|c| c.starts_with("sr_session="))
        .unwrap()
        .to_string();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.contains("Max-Age=")
    );
    assert!(!set.contains("Secure"), "plain HTTP: no Secure flag");
    // Login POST without the pre-login CSRF pair is refused.
    let r = request(
        f.addr,
        "POST",
        "/login",
        "",
        &format!("user={}&password={}", url(ADMIN), url(PASSWORD)),
    );
    assert_eq!(r.status, 403);
    // A state-changing POST with the cookie but without the token, or from another origin.
    let body = "video.framerate=12";
    assert_eq!(
        request(f.addr, "POST", "/admin/settings", &c, body).status,
        403
    );
    let wrong = format!("{c}Origin: https://evil.example\r\n");
    let with_token = format!("csrf={csrf}&{body}");
    assert_eq!(
        request(f.addr, "POST", "/admin/settings", &wrong, &with_token).status,
        403
    );
    assert!(
        f.backend_settings().is_none(),
        "nothing saved by refused POSTs"
    );
    let ok = request(f.addr, "POST", "/admin/settings", &c, &with_token);
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert!(f.backend_settings().unwrap().contains("framerate = 12"));
    // Logout needs the token too, then the cookie is dead.
    assert_eq!(request(f.addr, "POST", "/logout", &c, "").status, 403);
    assert_eq!(
        request(f.addr, "POST", "/logout", &c, &format!("csrf={csrf}")).status,
        303
    );
    assert_eq!(get(f.addr, "/admin/settings", &c).status, 401);
    let kinds: Vec<_> = f
        .backend
        .audit_entries()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert!(kinds.contains(&"login".to_string()) && kinds.contains(&"logout".to_string()));
}

trait Settings {
    fn backend_settings(&self) -> Option<String>;
}

impl Settings for Fixture {
    /// The config file's text once the settings page changed it.
    fn backend_settings(&self) -> Option<String> {
        let now = std::fs::read_to_string(&self.config_file).unwrap();
        (now != self.config_initial).then_some(now)
    }
}

#[test]
fn settings_are_validated_naming_the_field_and_secrets_stay_masked() {
    let f = start();
    let a = bearer(ADMIN);
    let page = get(f.addr, "/admin/settings", &a).text();
    assert!(!page.contains("hunter2") && !page.contains("AKIAEXAMPLEKEY"));
    assert!(page.contains("apply when the service restarts"));
    let r = request(
        f.addr,
        "POST",
        "/admin/settings",
        &a,
        "video.framerate=1000",
    );
    assert_eq!(r.status, 400);
    assert!(r.text().contains("video.framerate"), "{}", r.text());
    assert!(
        page.contains("video.keyframe-frames"),
        "keyframe setting on the page"
    );
    let r = request(
        f.addr,
        "POST",
        "/admin/settings",
        &a,
        "video.keyframe-frames=5",
    );
    assert_eq!(r.status, 400, "below 10 frames is refused");
    assert!(r.text().contains("video.keyframe-frames"), "{}", r.text());
    let r = request(f.addr, "POST", "/admin/settings", &a, "queue-length=lots");
    assert_eq!(r.status, 400);
    assert!(r.text().contains("queue-length"));
    let r = request(
        f.addr,
        "POST",
        "/admin/settings",
        &a,
        "storage.upload-location=ftp%3A%2F%2Fx%2Fy.mp4",
    );
    assert_eq!(r.status, 400);
    assert!(r.text().contains("storage.upload-location"));
    assert!(f.backend_settings().is_none());
    let r = request(
        f.addr,
        "POST",
        "/admin/settings",
        &a,
        "video.framerate=15&video.keyframe-frames=120&storage.object-storage-secret=&retention-hours=48",
    );
    assert_eq!(r.status, 200);
    assert!(r.text().contains("Saved"));
    assert!(!r.text().contains("hunter2"));
    let saved = f.backend_settings().unwrap();
    let raw =
        session_recorder::config::RawConfig::from_toml(&saved, std::path::Path::new("t")).unwrap();
    assert_eq!(raw.video.framerate, 15);
    assert_eq!(raw.video.keyframe_frames, 120);
    assert_eq!(raw.retention_hours, 48);
    assert_eq!(
        raw.storage.object_storage_secret.expose(),
        "hunter2-secret",
        "empty keeps it"
    );
    let last = f.backend.audit_entries().pop().unwrap();
    assert_eq!(last.kind, "settings_changed");
    assert!(last.message.contains("video.framerate") && last.message.contains("retention-hours"));
}

#[test]
fn admin_manages_users_and_tokens() {
    use session_recorder::serve::AccountStore;
    let f = start();
    let a = bearer(ADMIN);
    let post = |path: &str, body: &str| request(f.addr, "POST", path, &a, body);
    let r = post(
        "/admin/users/add",
        "name=new%40example.com&password=long+enough+pw&perm=SESSIONS_VIEW",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(login(f.addr, "new@example.com", "long enough pw").is_some());
    // Adding the same name again does not replace the user.
    let r = post(
        "/admin/users/add",
        "name=new%40example.com&password=other+password&perm=ADMIN",
    );
    assert_eq!(r.status, 400);
    assert!(r.text().contains("class=\"alert\""), "{}", r.text());
    assert!(login(f.addr, "new@example.com", "long enough pw").is_some());
    let r = post("/admin/users/add", "name=..%2Fx&password=long+enough+pw");
    assert_eq!(r.status, 400);
    assert!(r.text().contains("id=\"users-error\""));

    // Permissions change in place: password and creation time stay.
    let before = f.backend_user("new@example.com");
    let r = post(
        "/admin/users/permissions",
        "name=new%40example.com&perm=SESSIONS_VIEW&perm=SESSION_RECORDINGS_VIEW",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let after = f.backend_user("new@example.com");
    assert_eq!(after.permissions, 3);
    assert_eq!(after.password_hash, before.password_hash);
    assert_eq!(after.created_ms, before.created_ms);
    // The player-only combination is explained where it is set.
    let r = post(
        "/admin/users/permissions",
        "name=new%40example.com&perm=SESSION_RECORDINGS_VIEW",
    );
    assert!(r.text().contains("without SESSIONS_VIEW"), "{}", r.text());
    // An admin cannot take ADMIN away from themselves.
    let r = post(
        "/admin/users/permissions",
        &format!("name={}&perm=SESSIONS_VIEW", url(ADMIN)),
    );
    assert_eq!(r.status, 400);
    assert_eq!(f.backend_user(ADMIN).permissions, 4);

    // Password change in place: the old one stops working, permissions stay.
    let r = post(
        "/admin/users/password",
        "name=new%40example.com&password=a+brand+new+one",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(login(f.addr, "new@example.com", "long enough pw").is_none());
    assert!(login(f.addr, "new@example.com", "a brand new one").is_some());
    assert_eq!(f.backend_user("new@example.com").permissions, 2);
    let r = post(
        "/admin/users/password",
        "name=new%40example.com&password=short",
    );
    assert_eq!(r.status, 400);

    // Tokens: the secret is shown once; it works until revoked.
    let r = post("/admin/users/token-add", "user=new%40example.com&label=ci");
    assert_eq!(r.status, 200, "{}", r.text());
    let token = between(&r.text(), "<code id=\"new-token\">", "</code>");
    assert_eq!(token.len(), 64, "{token}");
    let auth = format!("Authorization: Bearer {token}\r\n");
    assert_eq!(
        get(f.addr, &format!("/play/{SESSION}/1"), &auth).status,
        200,
        "the new token plays"
    );
    let tokens = get(f.addr, "/admin/users", &a).text();
    assert!(!tokens.contains(&token), "the secret is never shown again");

    // Delete asks first: a POST without the confirmation shows the question.
    let r = post("/admin/users/delete", "name=new%40example.com");
    assert_eq!(r.status, 200);
    assert!(r.text().contains("id=\"confirm-delete\""), "{}", r.text());
    assert!(f.backend.user("new@example.com").unwrap().is_some());
    let confirm = get(f.addr, "/admin/users/delete?name=new%40example.com", &a);
    assert_eq!(confirm.status, 200);
    assert!(confirm.text().contains("name=\"confirm\" value=\"yes\""));
    let r = post("/admin/users/delete", "name=new%40example.com&confirm=yes");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(f.backend.user("new@example.com").unwrap().is_none());
    assert_eq!(
        get(f.addr, "/sessions", &auth).status,
        401,
        "token of a deleted user is dead"
    );
    let kinds: Vec<String> = f
        .backend
        .audit_entries()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    for k in [
        "user_added",
        "user_changed",
        "token_created",
        "user_removed",
    ] {
        assert!(kinds.iter().any(|x| x == k), "{k} audited: {kinds:?}");
    }
}

fn between(text: &str, from: &str, to: &str) -> String {
    let at = text
        .find(from)
        .unwrap_or_else(|| panic!("{from} in {text}"))
        + from.len();
    text[at..at + text[at..].find(to).unwrap()].to_string()
}

trait Users {
    fn backend_user(&self, name: &str) -> session_recorder::serve::backend::UserRow;
}

impl Users for Fixture {
    fn backend_user(&self, name: &str) -> session_recorder::serve::backend::UserRow {
        use session_recorder::serve::AccountStore;
        self.backend.user(name).unwrap().unwrap()
    }
}

#[test]
fn error_pages_are_inside_the_app_frame_with_a_way_back() {
    let f = start();
    let a = bearer(ADMIN);
    let framed = |r: &Resp, status: u16, words: &str| {
        let t = r.text();
        assert_eq!(r.status, status, "{t}");
        assert!(
            r.header("content-type").unwrap().starts_with("text/html"),
            "{t}"
        );
        assert!(t.contains("<header>") && t.contains("id=\"error\""), "{t}");
        assert!(t.contains("href=\"/status\">Status page</a>"), "{t}");
        assert!(t.contains(words), "{words} in {t}");
    };
    framed(&get(f.addr, "/nope", &a), 404, "no page at this address");
    framed(&get(f.addr, "/nope", NONE), 404, "href=\"/login\"");
    let r = get(f.addr, "/play/no-such-session/1", &a);
    framed(&r, 404, "no recorded session with this id");
    assert!(r.text().contains("href=\"/sessions\">Session history</a>"));
    let r = get(f.addr, &format!("/play/{SESSION}/9"), &a);
    framed(&r, 404, "there is no clip 9");
    assert!(r.text().contains(&format!("href=\"/play/{SESSION}/1\"")));
    framed(
        &get(f.addr, &format!("/play/{SESSION}/0"), &a),
        400,
        "whole numbers",
    );
    framed(
        &get(f.addr, "/play/bad%20id/1", &a),
        400,
        "not a valid session id",
    );
    framed(&get(f.addr, "/play/%zz/1", &a), 400, "broken %-escape");
    let r = request(f.addr, "DELETE", "/status", "", "");
    framed(&r, 405, "does not accept");
    assert!(r.header("allow").is_some());
    framed(
        &request(f.addr, "POST", "/status", &a, ""),
        405,
        "only shows a page",
    );
    let r = get(f.addr, "/admin/audit?kind=bogus", &a);
    framed(&r, 400, "no action called");
    assert!(!r.text().contains("<table id=\"audit\""));
    framed(
        &get(f.addr, "/admin/audit?from=yesterday", &a),
        400,
        "YYYY-MM-DD",
    );
    // A viewer without the permission is told which one is missing.
    framed(
        &get(f.addr, "/sessions", &bearer(PLAYER)),
        403,
        "not list sessions (SESSIONS_VIEW)",
    );
    framed(
        &get(f.addr, "/admin/users", &bearer(VIEWER)),
        403,
        "Your permissions: SESSIONS_VIEW",
    );
    framed(
        &get(f.addr, "/admin/users/delete?name=nobody", &a),
        404,
        "no user",
    );
    // JSON stays JSON under /api/.
    for (path, who, status) in [
        ("/api/v1/nope", a.clone(), 404),
        ("/api/v1/sessions", bearer(PLAYER), 403),
        ("/api/v1/sessions", String::new(), 401),
    ] {
        let r = get(f.addr, path, &who);
        assert_eq!(r.status, status, "{path}");
        assert_eq!(r.header("content-type"), Some("application/json"), "{path}");
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert!(v["error"].is_string(), "{path}: {v}");
    }
    // Metrics stay plain text.
    assert!(
        get(f.addr, "/metrics", NONE)
            .header("content-type")
            .unwrap()
            .starts_with("text/plain")
    );
}

#[test]
fn browser_form_posts_carry_a_real_origin_and_null_is_refused() {
    let f = start();
    let r = get(f.addr, "/status", NONE);
    // Under this policy browsers send the real Origin on same-origin form posts.
    assert_eq!(r.header("referrer-policy"), Some("same-origin"));
    let cookie = login(f.addr, ADMIN, PASSWORD).expect("login works");
    let c = format!("Cookie: sr_session={cookie}\r\n");
    let csrf = hidden_value(&get(f.addr, "/status", &c).text(), "csrf").unwrap();
    let body = format!("csrf={csrf}");
    for origin in ["null", "http://evil.example", "https://127.0.0.1:1"] {
        let r = request(
            f.addr,
            "POST",
            "/logout",
            &format!("{c}Origin: {origin}\r\n"),
            &body,
        );
        assert_eq!(r.status, 403, "Origin: {origin}");
        assert!(r.text().contains("id=\"error\""), "{}", r.text());
    }
    assert_eq!(
        get(f.addr, "/admin/users", &c).status,
        200,
        "still logged in"
    );
    // What Chromium sends for the nav bar's Log out button.
    let r = request(
        f.addr,
        "POST",
        "/logout",
        &format!(
            "{c}Origin: http://{}\r\nReferer: http://{}/status\r\n\
             Content-Type: application/x-www-form-urlencoded\r\n",
            f.addr, f.addr
        ),
        &body,
    );
    assert_eq!(r.status, 303, "{}", r.text());
    assert_eq!(
        get(f.addr, "/admin/users", &format!("{c}Accept: text/html\r\n")).status,
        401,
        "the cookie no longer works"
    );
}

#[test]
fn audit_page_filters_by_every_written_action_and_links_sessions() {
    let f = start();
    let a = bearer(ADMIN);
    // A download, so the log has an entry about a session.
    assert_eq!(
        get(f.addr, &format!("/clips/{SESSION}/1/download"), &a).status,
        200
    );
    let page = get(f.addr, "/admin/audit", &a).text();
    let options: Vec<&str> = page
        .split("<option value=\"")
        .skip(1)
        .map(|o| &o[..o.find('"').unwrap()])
        .collect();
    let mut expected = vec![""];
    expected.extend(
        session_recorder::serve::backend::AuditKind::ALL
            .iter()
            .map(|k| k.name()),
    );
    assert_eq!(options, expected);
    for gone in ["account_changed", "clip_deleted"] {
        assert!(!options.contains(&gone), "{gone} is never written");
    }
    assert!(
        page.contains(&format!(
            "href=\"/play/{SESSION}/1\"><code>{SESSION}</code></a>"
        )),
        "{page}"
    );
    let only = get(f.addr, "/admin/audit?kind=downloaded", &a).text();
    assert!(only.contains("downloaded"), "{only}");
    assert!(
        only.contains("<option value=\"downloaded\" selected>"),
        "{only}"
    );
}

#[test]
fn status_page_leads_with_a_headline_and_refreshes_only_when_asked() {
    let f = start();
    let page = get(f.addr, "/status", NONE).text();
    let headline = page.find("id=\"headline\"").expect("a headline");
    assert!(headline < page.find("id=\"fig-live\"").unwrap());
    assert!(page.contains("Needs attention: 2 problems"), "{page}");
    assert!(page.contains("What to do: check the endpoint"), "{page}");
    for fig in ["live", "admission", "guacd", "disk", "backlog", "encoders"] {
        assert!(page.contains(&format!("id=\"fig-{fig}\"")), "{fig}");
    }
    for chart in ["disk", "backlog", "live", "speed"] {
        assert!(page.contains(&format!("id=\"trend-{chart}\"")), "{chart}");
    }
    assert!(page.contains("<details id=\"details\">"));
    assert!(page.find("<details").unwrap() < page.find("id=\"queue\"").unwrap());
    // No timed reload unless the reader asks for one (WCAG 2.2.1), and then a way to stop it.
    assert!(!page.contains("http-equiv=\"refresh\""));
    assert!(page.contains("href=\"/status?refresh=on\""));
    let auto = get(f.addr, "/status?refresh=on", NONE).text();
    assert!(
        auto.contains("<meta http-equiv=\"refresh\" content=\"10\">"),
        "{auto}"
    );
    assert!(
        auto.contains("id=\"stop-refresh\">Stop auto-refresh</a>"),
        "{auto}"
    );

    // Admission closed: the headline says recording is blocked.
    f.admission_open.store(false, Ordering::SeqCst);
    let page = get(f.addr, "/status", NONE).text();
    assert!(page.contains("Recording is blocked"), "{page}");
    assert!(page.contains("New recorded sessions are refused: disk space below the floor"));
    f.admission_open.store(true, Ordering::SeqCst);

    // All well: one green line.
    f.board.update(|s| {
        s.settings_problems.clear();
        s.uploads.reachable = Some(true);
        s.uploads.last_error = None;
    });
    let page = get(f.addr, "/status", NONE).text();
    assert!(page.contains("<strong>All good.</strong>"), "{page}");
    assert!(!page.contains("class=\"alert\""), "{page}");
    f.board.record_encode(60_000, 20_000);
    let page = get(f.addr, "/status", NONE).text();
    assert!(page.contains("latest 3.0\u{d7}"), "{page}");
}

#[test]
fn user_add_with_unknown_permissions_is_a_usage_error_and_one_shot_commands_stay_quiet() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "data-dir = \"{}\"\n[tap]\nenabled = false\n[http]\nenabled = false\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let run = |args: &[&str], stdin: &str| {
        use std::io::Write;
        let mut child = Command::new(env!("CARGO_BIN_EXE_session-recorder"))
            .args(args)
            .arg("--config")
            .arg(&config)
            .env_remove("SESSION_RECORDER_LOG")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = run(&["user", "add", "bob", "--permissions", "FOO"], "");
    assert_eq!(code, Some(64), "{err}");
    assert!(out.is_empty(), "{out}");
    for name in ["SESSIONS_VIEW", "SESSION_RECORDINGS_VIEW", "ADMIN", "FOO"] {
        assert!(err.contains(name), "{name} in {err}");
    }
    let (code, out, err) = run(
        &[
            "user",
            "add",
            "bob",
            "--permissions",
            "SESSIONS_VIEW",
            "--password-stdin",
        ],
        "long enough pw\n",
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("saved user bob (SESSIONS_VIEW)"), "{out}");
    assert!(
        !err.contains("INFO"),
        "no INFO lines on the terminal: {err}"
    );
    let (code, _, err) = run(
        &[
            "-v",
            "user",
            "add",
            "carol",
            "--permissions",
            "ADMIN",
            "--password-stdin",
        ],
        "long enough pw\n",
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("INFO"), "-v shows info lines: {err}");
    // A password that is too short is the caller's mistake too: usage, not internal.
    let (code, _, err) = run(
        &[
            "user",
            "add",
            "dave",
            "--permissions",
            "ADMIN",
            "--password-stdin",
        ],
        "short\n",
    );
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("password"), "{err}");
}

#[test]
fn security_headers_are_set() {
    let f = start();
    let r = get(f.addr, "/status", NONE);
    assert!(
        r.header("content-security-policy")
            .unwrap()
            .contains("default-src 'self'")
    );
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(r.header("referrer-policy"), Some("same-origin"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
}

#[test]
fn https_through_rustls() {
    let dir = tempfile::tempdir().unwrap();
    let certs::TestCerts {
        ca,
        leaf: cert,
        leaf_key: key,
    } = certs::make_ca_and_leaf(dir.path());
    let f = start_with(Options {
        tls: Some((cert, key)),
        ..Options::default()
    });
    let resp = tls_get(f.addr, &ca, "/api/v1/status");
    let r = parse_response(&resp);
    assert_eq!(r.status, 200);
    assert!(r.header("strict-transport-security").is_some());
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["redacted"], true);
    // The login cookie is Secure over TLS.
    let r = parse_response(&tls_get(f.addr, &ca, "/login"));
    let set = r.headers_named("set-cookie").join(";");
    assert!(set.contains("Secure"), "{set}");
    // Plain HTTP to the TLS port is not served.
    let mut s = std::net::TcpStream::connect(f.addr).unwrap();
    use std::io::{Read, Write};
    s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    s.write_all(b"GET /status HTTP/1.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    assert!(!String::from_utf8_lossy(&out).contains("200 OK"));
}

fn tls_get(addr: std::net::SocketAddr, ca: &std::path::Path, path: &str) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca).unwrap();
    for c in rustls_pemfile::certs(&mut &pem[..]) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
    let sock = std::net::TcpStream::connect(addr).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let mut out = Vec::new();
    match tls.read_to_end(&mut out) {
        Ok(_) => {}
        // A peer that closes without close_notify still gave us the whole response.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
        Err(e) => panic!("tls read: {e}"),
    }
    out
}

#[test]
fn stop_closes_the_port() {
    let mut f = start();
    assert_eq!(get(f.addr, "/status", NONE).status, 200);
    f.server.take().unwrap().stop();
    assert!(std::net::TcpStream::connect(f.addr).is_err());
}

#[test]
fn keep_alive_carries_several_requests_on_one_connection() {
    use std::io::{Read, Write};
    let f = start();
    let mut s = std::net::TcpStream::connect(f.addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    s.write_all(
        b"GET /api/v1/admission HTTP/1.1\r\nHost: x\r\n\r\nGET /api/v1/admission HTTP/1.1\r\nHost: x\r\n\r\nGET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    assert_eq!(text.matches("HTTP/1.1 200").count(), 3, "{text}");
}

/// Not a test: keeps a fixture server up for `scripts/bench-http`, which sets
/// `SERVE_BENCH_ADDR_FILE` (where the address is written) and `SERVE_BENCH_SECS`.
#[test]
#[ignore = "run by scripts/bench-http"]
fn serve_for_bench() {
    let f = start();
    let file = std::env::var("SERVE_BENCH_ADDR_FILE").expect("SERVE_BENCH_ADDR_FILE");
    let secs: u64 = std::env::var("SERVE_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    std::fs::write(&file, f.addr.to_string()).unwrap();
    std::thread::sleep(std::time::Duration::from_secs(secs));
    drop(f);
}

/// The whole chain on real parts: the LMDB queue as backend (a session with an encoded clip and
/// a segment whose encoding failed), the clip uploaded to a local-directory object store and its
/// local file deleted, so playback streams from the store; audit entries land in LMDB.
#[test]
fn queue_backed_server_streams_from_the_store_and_audits_into_lmdb() {
    use session_recorder::clock::{Clock, SystemClock};
    use session_recorder::queue::*;
    use session_recorder::serve::backend_queue::QueueBackend;
    use session_recorder::serve::remote_store::{StoreClips, thumb_key_of};
    use session_recorder::serve::{LocalThenRemote, ServeContext, ServeOptions};
    use session_recorder::upload::{LocalDirStore, ObjectStore, PutOptions};

    let dir = tempfile::tempdir().unwrap();
    let (mp4, jpg) = make_clip(dir.path(), "q-clip", 2, 60);
    let data = std::fs::read(&mp4).unwrap();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let now = clock.now_ms();
    let queue =
        Arc::new(Queue::open(&QueueOptions::new(dir.path().join("queue")), clock.clone()).unwrap());
    let sid = "q-session-1";
    let session = queue
        .register_session(&NewSession {
            session_id: sid.into(),
            user_id: "u1".into(),
            username: "carol@example.com".into(),
            image_friendly_name: "Kali".into(),
            protocol: "rdp".into(),
            start_ms: now - 60_000,
            target: String::new(),
            client_addr: String::new(),
        })
        .unwrap();
    let seg = |index: u32| NewSegment {
        session,
        index,
        path: dir.path().join(format!("seg-{index}.guac")),
        bytes: 10,
        first_sync_ms: Some(now - 60_000 + u64::from(index) * 1000),
        last_sync_ms: Some(now - 59_000 + u64::from(index) * 1000),
        sealed: true,
    };
    queue.register_segments(&[seg(0), seg(1)]).unwrap();
    let first = queue.next_segment_to_encode().unwrap().unwrap();
    let key = format!("u1/{sid}/clip-0.mp4");
    let clip_ids = queue
        .finish_encoding(
            first.id,
            &[NewClip {
                segment: first.id,
                index: 0,
                path: mp4.clone(),
                thumb_path: Some(jpg.clone()),
                bytes: data.len() as u64,
                sha256: String::new(),
                duration_ms: 2_000,
                start_ms: now - 60_000,
                end_ms: now - 58_000,
                object_key: Some(key.clone()),
                events: None,
            }],
        )
        .unwrap();
    let second = queue.next_segment_to_encode().unwrap().unwrap();
    queue
        .transition_segment(
            second.id,
            SegmentStateKind::Encoding,
            SegmentState::Failed {
                reason: "test".into(),
            },
            &SegmentPatch::default(),
        )
        .unwrap();
    // Upload to the store, then retention removes the local copy.
    let store = Arc::new(LocalDirStore::open(&dir.path().join("bucket")).unwrap());
    let opts = PutOptions {
        content_type: "video/mp4".into(),
        sha256_hex: String::new(),
    };
    store.put_bytes(&key, &data, &opts).unwrap();
    store
        .put_bytes(
            &thumb_key_of(&key).unwrap(),
            &std::fs::read(&jpg).unwrap(),
            &opts,
        )
        .unwrap();
    let c = clip_ids[0];
    queue
        .transition_clip(
            c,
            ClipStateKind::Ready,
            ClipState::Uploading,
            &ClipPatch::default(),
        )
        .unwrap();
    queue
        .transition_clip(
            c,
            ClipStateKind::Uploading,
            ClipState::Uploaded,
            &ClipPatch::default(),
        )
        .unwrap();
    queue
        .transition_clip(
            c,
            ClipStateKind::Uploaded,
            ClipState::LocalDeleted,
            &ClipPatch::default(),
        )
        .unwrap();
    std::fs::remove_file(&mp4).unwrap();
    std::fs::remove_file(&jpg).unwrap();

    let backend = Arc::new(
        QueueBackend::new(queue.clone(), clock.clone(), "s3://bucket-q/".into())
            .with_thumb_key(thumb_key_of),
    );
    let hash = session_recorder::serve::auth::hash_password(PASSWORD).unwrap();
    add_account(&*backend, ADMIN, 4, &hash, "q-token", now);
    let ctx = ServeContext {
        http: session_recorder::config::HttpConfig {
            enabled: true,
            listen: "127.0.0.1:0".parse().unwrap(),
            tls: None,
            display_timezone: Default::default(),
        },
        board: session_recorder::status::StatusBoard::new(clock.clone(), 1, 1),
        backend: session_recorder::serve::Backend::of(backend.clone()),
        clips: Arc::new(LocalThenRemote::new(Some(Arc::new(StoreClips::new(store))))),
        admission: Arc::new(|| Ok(())),
        raw_config: session_recorder::config::RawConfig::default(),
        settings: session_recorder::serve::SettingsHooks::none(),
        clock,
        options: ServeOptions::default(),
    };
    let server = session_recorder::serve::start(ctx).unwrap();
    let addr = server.local_addr();
    let a = "Authorization: Bearer q-token\r\n";
    let page = get(addr, "/sessions", a).text();
    assert!(page.contains(sid) && page.contains("Kali") && page.contains("carol@example.com"));
    assert!(page.contains("Clip 1") && page.contains("Clip 2"));
    assert!(
        page.contains("class=\"failed\">failed"),
        "the failed segment is shown as a failed clip"
    );
    let r = get(
        addr,
        &format!("/clips/{sid}/1/video"),
        &format!("{a}Range: bytes=10-109\r\n"),
    );
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &data[10..110]);
    let full = get(addr, &format!("/clips/{sid}/1/video"), a);
    assert_eq!(full.body, data);
    let thumb = get(addr, &format!("/thumbs/{sid}/1"), a);
    assert_eq!(thumb.status, 200);
    assert!(thumb.body.starts_with(&[0xFF, 0xD8]));
    assert_eq!(get(addr, &format!("/clips/{sid}/2/video"), a).status, 404);
    let z = get(addr, &format!("/sessions/{sid}/zip"), a);
    let zip_path = dir.path().join("q.zip");
    std::fs::write(&zip_path, &z.body).unwrap();
    assert!(
        Command::new("unzip")
            .arg("-t")
            .arg(&zip_path)
            .status()
            .unwrap()
            .success()
    );
    let audit = queue
        .list_audit(&AuditFilter {
            limit: 50,
            ..Default::default()
        })
        .unwrap();
    let msgs: Vec<_> = audit.items.iter().map(|e| e.message.as_str()).collect();
    assert!(
        msgs.contains(&format!("User {ADMIN} played {sid} video: s3://bucket-q/{key}").as_str()),
        "{msgs:?}"
    );
    assert!(
        msgs.contains(&format!("User {ADMIN} downloaded entire session: {sid}").as_str()),
        "{msgs:?}"
    );
    let page = get(addr, "/admin/audit?kind=played", a).text();
    assert!(page.contains(&format!("played {sid} video")));
    server.stop();
}

// ---- long streams vs. the request workers ----

/// A session whose two clips are 512 MiB sparse files (no disk blocks, no memory): a client
/// that stops reading stalls its response long before the end.
const BIG_SESSION: &str = "b16b16b1-0000-4000-8000-00000000b16b";
const BIG_CLIP_BYTES: u64 = 512 << 20;
/// The failure condition of the starvation tests: a page that does not answer within this is
/// starved (it answers in milliseconds when healthy). Not a speed assertion.
const PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

fn add_big_session(f: &Fixture) {
    use session_recorder::clock::{Clock, SystemClock};
    use session_recorder::serve::backend::{ClipRow, SessionRow};
    let now = SystemClock.now_ms();
    let clips = (1..=2u64)
        .map(|n| {
            let p = f.dir.path().join(format!("big-{n}.mp4"));
            std::fs::File::create(&p)
                .unwrap()
                .set_len(BIG_CLIP_BYTES)
                .unwrap();
            ClipRow {
                id: 100 + n,
                local_path: Some(p),
                thumb_path: None,
                object_key: None,
                thumb_key: None,
                location: format!("s3://{BUCKET}/user-1/{BIG_SESSION}/clip-{n}.mp4"),
                bytes: BIG_CLIP_BYTES,
                duration_ms: 3_600_000,
                start_ms: now - 3_000_000,
                state: "uploaded".into(),
                failed: false,
                sha256: None,
            }
        })
        .collect();
    f.backend.add_session(
        SessionRow {
            cursor: 0,
            session_id: BIG_SESSION.into(),
            user: "auditor@example.com".into(),
            workspace: "Long session".into(),
            start_ms: now - 4_000_000,
            end_ms: Some(now - 100_000),
            state: "uploaded".into(),
            clip_count: 0,
            end_reason: None,
            appliance: None,
            target: String::new(),
            client_addr: String::new(),
        },
        clips,
    );
}

/// Sends a GET and reads nothing: an auditor on a dead link, a frozen browser tab.
fn stalled_client(addr: std::net::SocketAddr, path: &str, extra: &str) -> std::net::TcpStream {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}\r\n").as_bytes())
        .unwrap();
    s
}

/// Reads a stalled client's response head (and the few body bytes that come with it), then
/// stops reading again. The status, `None` when no head came within `PATIENCE`.
fn head_status(s: &mut std::net::TcpStream) -> Option<u16> {
    use std::io::Read;
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    // The status line only: the body may be chunked and is cut anywhere.
    let line = String::from_utf8_lossy(&got);
    line.split(' ').nth(1)?.parse().ok()
}

/// A whole `Connection: close` request, `None` when the answer did not come within `PATIENCE`.
fn get_patiently(addr: std::net::SocketAddr, path: &str, extra: &str) -> Option<Resp> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra}\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let deadline = std::time::Instant::now() + PATIENCE;
    let mut out = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => return None,
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
    }
    out.windows(4)
        .any(|w| w == b"\r\n\r\n")
        .then(|| parse_response(&out))
}

/// The value of an unlabelled gauge on `/metrics`.
fn gauge(addr: std::net::SocketAddr, name: &str) -> Option<f64> {
    let m = get_patiently(addr, "/metrics", NONE)?.text();
    m.lines()
        .find_map(|l| l.strip_prefix(&format!("session_recorder_{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

/// Paths of the slow clients: downloads and playbacks (`Range`, as a `<video>` asks).
fn slow_paths(count: usize) -> Vec<(String, String)> {
    (0..count)
        .map(|i| {
            let n = 1 + (i / 2) % 2;
            if i % 2 == 0 {
                (format!("/clips/{BIG_SESSION}/{n}/download"), String::new())
            } else {
                (
                    format!("/clips/{BIG_SESSION}/{n}/video"),
                    "Range: bytes=0-\r\n".to_string(),
                )
            }
        })
        .collect()
}

/// Regression: each clip download, playback or zip was written by the request worker that
/// routed it, for as long as the client took to read it; four slow clients took all four
/// workers and the status page, the history and login stopped answering.
#[test]
fn stalled_downloads_do_not_starve_status_history_or_login() {
    use session_recorder::limits::HTTP_STREAMS_MAX;
    // One user takes every slot here: lift the per-user share (tested on its own below).
    let f = start_with(Options {
        limits: Some(session_recorder::serve::HttpLimits {
            streams_per_user_max: HTTP_STREAMS_MAX,
            ..Default::default()
        }),
        ..Options::default()
    });
    add_big_session(&f);
    let a = bearer(PLAYER);
    let audits_before = f.backend.audit_entries().len();
    let mut held: Vec<_> = slow_paths(HTTP_STREAMS_MAX)
        .iter()
        .map(|(p, h)| stalled_client(f.addr, p, &format!("{a}{h}")))
        .collect();
    let status = get_patiently(f.addr, "/status", NONE);
    assert_eq!(
        status.map(|r| r.status),
        Some(200),
        "the status page must answer while {HTTP_STREAMS_MAX} downloads are stalled"
    );
    // Every slow client got its head: all streams are running (and stalled, the clips are far
    // larger than the socket buffers).
    for (i, s) in held.iter_mut().enumerate() {
        let st = head_status(s);
        assert!(matches!(st, Some(200 | 206)), "stalled client #{i}: {st:?}");
    }
    for (path, auth) in [
        ("/status", NONE.to_string()),
        ("/api/v1/status", NONE.to_string()),
        ("/login", NONE.to_string()),
        ("/sessions", bearer(VIEWER)),
        (&format!("/play/{BIG_SESSION}/1") as &str, a.clone()),
        (&format!("/thumbs/{SESSION}/1") as &str, a.clone()),
    ] {
        let r = get_patiently(f.addr, path, &auth);
        assert_eq!(
            r.map(|r| r.status),
            Some(200),
            "GET {path} with all streams stalled"
        );
    }
    assert!(login(f.addr, ADMIN, PASSWORD).is_some(), "login works");
    assert_eq!(
        gauge(f.addr, "http_streams_active"),
        Some(HTTP_STREAMS_MAX as f64)
    );
    // One more stream of any kind is refused with a retry hint, not queued behind the others.
    for (path, extra) in [
        (format!("/clips/{BIG_SESSION}/1/download"), String::new()),
        (format!("/sessions/{BIG_SESSION}/zip"), String::new()),
        (
            format!("/clips/{SESSION}/1/video"),
            "Range: bytes=0-\r\n".into(),
        ),
    ] {
        let r = get_patiently(f.addr, &path, &format!("{a}{extra}")).expect("an answer");
        assert_eq!(r.status, 503, "GET {path} beyond the limit");
        let retry: u32 = r
            .header("retry-after")
            .expect("Retry-After")
            .parse()
            .unwrap();
        assert!(retry >= 1);
        assert!(r.text().contains("Too many downloads"), "{}", r.text());
    }
    // Exactly the streams that went out are audited: one download per /download, one play per
    // viewing; nothing for the refused ones.
    let new: Vec<_> = f.backend.audit_entries()[audits_before..].to_vec();
    let downloads = new.iter().filter(|e| e.kind == "downloaded").count();
    let plays = new.iter().filter(|e| e.kind == "played").count();
    assert_eq!(downloads, HTTP_STREAMS_MAX.div_ceil(2), "{new:?}");
    assert_eq!(plays, 2, "one per clip viewed: {new:?}");
    assert!(
        new.iter().all(|e| e.kind != "downloaded_session"),
        "{new:?}"
    );
    assert!(new.iter().any(|e| e.message
        == format!("User {PLAYER} downloaded {BIG_SESSION} video: s3://{BUCKET}/user-1/{BIG_SESSION}/clip-1.mp4")));

    // The slow clients give up: every slot comes back.
    held.clear();
    let deadline = std::time::Instant::now() + 3 * PATIENCE;
    while gauge(f.addr, "http_streams_active") != Some(0.0) {
        assert!(
            std::time::Instant::now() < deadline,
            "streaming slots leaked: {:?} still active",
            gauge(f.addr, "http_streams_active")
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let d = get_patiently(f.addr, &format!("/clips/{SESSION}/1/download"), &a).unwrap();
    assert_eq!(d.status, 200);
    assert_eq!(d.body, std::fs::read(&f.clips[0]).unwrap());
    // And all of them can be used again at once.
    let mut again: Vec<_> = slow_paths(HTTP_STREAMS_MAX)
        .iter()
        .map(|(p, h)| stalled_client(f.addr, p, &format!("{a}{h}")))
        .collect();
    for (i, s) in again.iter_mut().enumerate() {
        let st = head_status(s);
        assert!(
            matches!(st, Some(200 | 206)),
            "second round, client #{i}: {st:?}"
        );
    }
}

/// A client that keeps its connection open but stops reading gives its streaming slot back
/// once the front's write to it has stalled for `HTTP_WRITE_TIMEOUT_MS`. Slow (over a minute):
/// `cargo test --test it -- --ignored serve::stalled_client_that_stays`.
#[test]
#[ignore = "slow: waits HTTP_WRITE_TIMEOUT_MS"]
fn stalled_client_that_stays_connected_loses_its_slot() {
    use session_recorder::limits::HTTP_WRITE_TIMEOUT_MS;
    let f = start();
    add_big_session(&f);
    let a = bearer(PLAYER);
    let mut s = stalled_client(f.addr, &format!("/clips/{BIG_SESSION}/1/download"), &a);
    assert_eq!(head_status(&mut s), Some(200));
    assert_eq!(gauge(f.addr, "http_streams_active"), Some(1.0));
    let started = std::time::Instant::now();
    let deadline = started + std::time::Duration::from_millis(HTTP_WRITE_TIMEOUT_MS) + 4 * PATIENCE;
    while gauge(f.addr, "http_streams_active") != Some(0.0) {
        assert!(
            std::time::Instant::now() < deadline,
            "a stalled client kept its slot"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    eprintln!("slot released after {:?}", started.elapsed());
    // The stalled connection was closed: reading on gets what was buffered, then the end.
    use std::io::Read;
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n as u64,
        }
    }
    assert!(
        total < BIG_CLIP_BYTES,
        "the stalled download was cut, not finished"
    );
}

/// Regression: tiny_http collects a body of unknown length in memory to count it when the
/// answer cannot be chunked (an HTTP/1.0 request, or `TE: identity`): a zip of a long session
/// could take the appliance's memory. The zip's length is now computed up front, so it is
/// streamed with `Content-Length` whatever the client speaks.
#[test]
fn zip_bodies_are_never_collected_in_memory() {
    let f = start();
    let a = bearer(PLAYER);
    let r = raw(
        f.addr,
        format!("GET /sessions/{SESSION}/zip HTTP/1.0\r\n{a}\r\n").as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.body.starts_with(b"PK\x03\x04"));
    let r = get(
        f.addr,
        &format!("/sessions/{SESSION}/zip"),
        &format!("{a}TE: identity\r\n"),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("transfer-encoding"), None);
    assert_eq!(
        r.header("content-length"),
        Some(r.body.len().to_string().as_str())
    );
    assert!(r.body.starts_with(b"PK\x03\x04"));
    // Clips have a known length and stay downloadable over HTTP/1.0.
    let r = raw(
        f.addr,
        format!("GET /clips/{SESSION}/1/download HTTP/1.0\r\n{a}\r\n").as_bytes(),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.body, std::fs::read(&f.clips[0]).unwrap());
}

// ---- HTTP limits ----

/// A login POST through the form; the whole response.
fn login_attempt(addr: std::net::SocketAddr, user: &str, password: &str) -> Resp {
    let form = get(addr, "/login", NONE);
    let pre = cookie_value(&form, "sr_login").unwrap();
    let csrf = hidden_value(&form.text(), "csrf").unwrap();
    request(
        addr,
        "POST",
        "/login",
        &format!("Cookie: sr_login={pre}\r\nOrigin: http://{addr}\r\n"),
        &format!("csrf={csrf}&user={}&password={}", url(user), url(password)),
    )
}

#[test]
fn failed_logins_back_off_per_user_and_address_and_the_refusal_is_audited() {
    let f = start_with(Options {
        limits: Some(session_recorder::serve::HttpLimits {
            login_backoff_base_ms: 1_500,
            ..Default::default()
        }),
        ..Options::default()
    });
    for i in 0..5 {
        let r = login_attempt(f.addr, ADMIN, "wrong password");
        assert_eq!(r.status, 401, "failure {i} is answered normally");
    }
    let last_failed = f.backend.audit_entries().pop().unwrap();
    assert_eq!(last_failed.kind, "login_failed");
    assert!(
        last_failed.message.contains(
            "further logins for user admin@example.com or from 127.0.0.1 refused for 2 s"
        ),
        "{}",
        last_failed.message
    );
    // Blocked: even the right password is refused, without a password check, with a hint.
    let r = login_attempt(f.addr, ADMIN, PASSWORD);
    assert_eq!(r.status, 429, "{}", r.text());
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    assert!(r.text().contains("Too many failed logins"));
    assert!(cookie_value(&r, "sr_session").is_none());
    // The address is blocked too: another user name from it is refused.
    assert_eq!(login_attempt(f.addr, VIEWER, PASSWORD).status, 429);
    // Refused again, for both reasons.
    assert_eq!(login_attempt(f.addr, ADMIN, PASSWORD).status, 429);
    assert_eq!(login_attempt(f.addr, VIEWER, PASSWORD).status, 429);
    // One audit entry per block (the user's, the address's), in Kasm-like wording; later
    // refusals are only counted.
    let throttled: Vec<_> = f
        .backend
        .audit_entries()
        .into_iter()
        .filter(|e| e.kind == "login_throttled")
        .collect();
    assert_eq!(throttled.len(), 2, "{throttled:?}");
    assert!(
        throttled[1].message.starts_with(
            "Login for user viewer@example.com from 127.0.0.1 refused without a password check: 5 failed logins for address 127.0.0.1"
        ),
        "{}",
        throttled[1].message
    );
    assert_eq!(throttled[0].actor, "anonymous");
    assert!(
        throttled[0].message.starts_with(
            "Login for user admin@example.com from 127.0.0.1 refused without a password check: 5 failed logins for user admin@example.com"
        ),
        "{}",
        throttled[0].message
    );
    assert_eq!(gauge(f.addr, "http_logins_throttled_total"), Some(4.0));
    // Once the block is over, the right password works and clears the count.
    std::thread::sleep(std::time::Duration::from_millis(1_600));
    assert!(
        login(f.addr, ADMIN, PASSWORD).is_some(),
        "login after the backoff"
    );
    assert_eq!(login_attempt(f.addr, ADMIN, "wrong password").status, 401);
    assert!(
        login(f.addr, ADMIN, PASSWORD).is_some(),
        "the count started again"
    );
}

#[test]
fn one_user_cannot_hold_every_stream_and_trickling_readers_are_cut() {
    let f = start_with(Options {
        limits: Some(session_recorder::serve::HttpLimits {
            streams_per_user_max: 2,
            stream_grace_ms: 500,
            stream_bytes_per_s_min: 8 << 20,
            ..Default::default()
        }),
        ..Options::default()
    });
    add_big_session(&f);
    let player = bearer(PLAYER);
    // Two stalled streams of one user hold that user's whole share...
    let mut held: Vec<_> = (1..=2)
        .map(|n| {
            stalled_client(
                f.addr,
                &format!("/clips/{BIG_SESSION}/{n}/download"),
                &player,
            )
        })
        .collect();
    for s in &mut held {
        assert_eq!(head_status(s), Some(200));
    }
    let r = get_patiently(f.addr, &format!("/clips/{SESSION}/1/download"), &player).unwrap();
    assert_eq!(r.status, 429, "a third stream of the same user");
    assert!(r.header("retry-after").is_some());
    assert!(r.text().contains("limit per user"), "{}", r.text());
    // ...while another user still gets a slot.
    let d = get_patiently(
        f.addr,
        &format!("/clips/{SESSION}/1/download"),
        &bearer(ADMIN),
    )
    .unwrap();
    assert_eq!(d.status, 200);
    assert_eq!(d.body, std::fs::read(&f.clips[0]).unwrap());
    // A reader that trickles (16 KiB every 20 ms, far below the minimum throughput but fast
    // enough for the stall timeout) is cut after the grace period, and its slot comes back.
    drop(held);
    // The closed clients' slots come back once the front notices (not at once).
    let deadline = std::time::Instant::now() + 3 * PATIENCE;
    while gauge(f.addr, "http_streams_active") != Some(0.0) {
        assert!(
            std::time::Instant::now() < deadline,
            "closed clients kept their slots"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let mut s = stalled_client(f.addr, &format!("/clips/{BIG_SESSION}/1/download"), &player);
    assert_eq!(head_status(&mut s), Some(200));
    let started = std::time::Instant::now();
    let mut total = 0u64;
    let mut buf = vec![0u8; 16 << 10];
    use std::io::Read;
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n as u64,
        }
        assert!(
            started.elapsed() < 6 * PATIENCE,
            "the trickling stream was never cut"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(total < BIG_CLIP_BYTES, "cut, not finished: {total} bytes");
    let deadline = std::time::Instant::now() + 3 * PATIENCE;
    while gauge(f.addr, "http_streams_active") != Some(0.0) {
        assert!(
            std::time::Instant::now() < deadline,
            "the slot was not released"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
