//! Fleet history end to end, all real parts: a Garage S3 store, two appliance daemons with
//! different `appliance-id`s importing shared recordings from their spools (one also recovers
//! a session a crash left open, so it ends `interrupted`), and one history role (`serve` with
//! `[fleet]`) indexing the bucket.
//!
//! Checks: both appliances' sessions are listed with the right clips and the appliance filter
//! works; a clip plays through the role with `Range` (bytes equal to the bucket's); the session
//! zip passes `unzip -t`; plays and downloads are audited; a manifest edited in the bucket shows
//! "integrity: failed"; a document that is not JSON is skipped and counted on the status page;
//! the interrupted session shows its state; with the store down the status shows the problem
//! while the last index keeps being served.

#[path = "util/daemon.rs"]
mod daemon;
#[path = "util/serve_fixture.rs"]
mod fixture;
#[path = "util/garage.rs"]
mod garage;
mod util;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use daemon::{Home, free_port, wait_for};
use serde_json::Value;
use session_recorder::queue::{NewSession, Queue, QueueOptions};

const PASSWORD: &str = "correct horse battery";
const AUDITOR: &str = "auditor@example.com";

fn appliance_config(id: &str, g: &garage::Garage) -> String {
    format!(
        "appliance-id = \"{id}\"\nsegment-size-mb = 150\n\n[storage]\n\
         upload-location = \"s3://{bucket}@{host}/{{user_id}}/{{session_id}}/clip-{{clip_index}}-{{timestamp_ms}}.mp4\"\n\
         object-storage-key = \"{key}\"\nobject-storage-secret = \"{secret}\"\n\
         allow-http = true\npath-style = true\n",
        bucket = g.bucket,
        host = g.host_port(),
        key = g.key,
        secret = g.secret,
    )
}

fn role_config(g: &garage::Garage, keys: &[String]) -> String {
    let keys: Vec<String> = keys.iter().map(|k| format!("\"{k}\"")).collect();
    format!(
        "appliance-id = \"history\"\n\n[storage]\nobject-storage-key = \"{key}\"\n\
         object-storage-secret = \"{secret}\"\nallow-http = true\npath-style = true\n\n\
         [fleet]\nindex = \"s3://{bucket}@{host}/manifests\"\ntrusted-keys = [{keys}]\n\
         poll-interval-s = 1\nrescan-interval-s = 2\n",
        bucket = g.bucket,
        host = g.host_port(),
        key = g.key,
        secret = g.secret,
        keys = keys.join(", "),
    )
}

/// The public key an appliance created in its data dir.
fn public_key(home: &Home) -> String {
    let key =
        session_recorder::fleet::keys::read(&session_recorder::fleet::keys::key_path(&home.data()))
            .expect("signing key");
    session_recorder::fleet::keys::public_hex(&key)
}

/// A session a crash left live: registered, its open segment on disk, never sealed. The next
/// start-up's recovery registers the file and ends the session as interrupted.
fn leave_live_session(home: &Home, session_id: &str, recording: &Path) {
    let clock = std::sync::Arc::new(session_recorder::clock::SystemClock);
    let queue = Queue::open(&QueueOptions::new(home.data().join("queue")), clock).unwrap();
    let now = session_recorder::clock::Clock::now_ms(&session_recorder::clock::SystemClock);
    queue
        .register_session(&NewSession {
            session_id: session_id.into(),
            user_id: "user-crash".into(),
            username: "crash-tester".into(),
            image_friendly_name: "Test image".into(),
            protocol: "ssh".into(),
            start_ms: now - 60_000,
        })
        .unwrap();
    let dir = home.data().join("segments").join(session_id);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(recording, dir.join("000000.guac")).unwrap();
}

fn json(addr: SocketAddr, path: &str, cookie: &str) -> Value {
    let r = fixture::get(addr, path, &format!("Cookie: sr_session={cookie}\r\n"));
    assert_eq!(r.status, 200, "{path}: {}", r.text());
    serde_json::from_slice(&r.body).unwrap_or_else(|_| panic!("{path}: {}", r.text()))
}

fn sessions(addr: SocketAddr, cookie: &str, query: &str) -> Vec<Value> {
    json(addr, &format!("/api/v1/sessions?limit=100{query}"), cookie)["items"]
        .as_array()
        .unwrap()
        .clone()
}

fn state_of(addr: SocketAddr, cookie: &str, sid: &str) -> String {
    sessions(addr, cookie, "")
        .iter()
        .find(|s| s["session_id"] == sid)
        .map(|s| s["state"].as_str().unwrap_or("").to_string())
        .unwrap_or_default()
}

#[test]
fn two_appliances_one_history_role() {
    let Some(mut g) = garage::garage_or_skip("two_appliances_one_history_role") else {
        return;
    };
    let rec = util::shared_dir().join("recordings");

    // Two appliances: A imports two recordings and recovers one interrupted session; B one.
    let a = Home::new(&appliance_config("proxy-a", &g), None);
    let b = Home::new(&appliance_config("proxy-b", &g), None);
    leave_live_session(&a, "a-crashed", &rec.join("ssh-resize-1024x768.guac"));
    a.spool_recording(&rec.join("ssh-green-800x600.guac"), "a1.guac", "a-one");
    a.spool_recording(&rec.join("vnc-xterm-800x600.guac"), "a2.guac", "a-two");
    b.spool_recording(&rec.join("ssh-resize-1024x768.guac"), "b1.guac", "b-one");
    let (da, db) = (a.start(), b.start());

    // Every session ends in a final manifest (the last version carries `"final": true`).
    let finals = || {
        g.list_keys("manifests/")
            .iter()
            .filter(|k| k.ends_with(".json"))
            .filter_map(|k| {
                let body = g.curl(&[], &format!("{}/{k}", g.bucket));
                serde_json::from_str::<Value>(&body).ok()
            })
            .filter(|m| m["final"] == true)
            .map(|m| m["session_id"].as_str().unwrap().to_string())
            .collect::<std::collections::BTreeSet<_>>()
    };
    let all_final = wait_for(Duration::from_secs(900), || finals().len() == 4);
    assert!(
        all_final,
        "final manifests: {:?}\nA log:\n{}\nB log:\n{}",
        finals(),
        da.log_text(),
        db.log_text()
    );
    let keys = [public_key(&a), public_key(&b)];
    assert_ne!(keys[0], keys[1]);
    assert_eq!(da.stop().code(), Some(0));
    assert_eq!(db.stop().code(), Some(0));

    // The history role, and an auditor allowed to play.
    let port = free_port();
    let role = Home::new(&role_config(&g, &keys), Some(port));
    let cfg = role.root().join("config.toml");
    let out = Command::new(&role.bin)
        .args(["user", "add", AUDITOR, "--password-stdin", "--permissions"])
        .arg("SESSIONS_VIEW,SESSION_RECORDINGS_VIEW,ADMIN")
        .arg("--config")
        .arg(&cfg)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin
                .take()
                .unwrap()
                .write_all(format!("{PASSWORD}\n").as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(out.status.success(), "user add failed");
    let dr = role.start();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(
        wait_for(Duration::from_secs(60), || fixture::login(
            addr, AUDITOR, PASSWORD
        )
        .is_some()),
        "role not up; log:\n{}",
        dr.log_text()
    );
    let cookie = fixture::login(addr, AUDITOR, PASSWORD).unwrap();

    // Both appliances' sessions, with the right appliance and clip counts.
    let indexed = wait_for(Duration::from_secs(60), || {
        sessions(addr, &cookie, "").len() == 4
    });
    assert!(
        indexed,
        "sessions: {:?}\nlog:\n{}",
        sessions(addr, &cookie, ""),
        dr.log_text()
    );
    let all = sessions(addr, &cookie, "");
    let by_id = |sid: &str| all.iter().find(|s| s["session_id"] == sid).unwrap().clone();
    for (sid, appliance) in [
        ("a-one", "proxy-a"),
        ("a-two", "proxy-a"),
        ("a-crashed", "proxy-a"),
        ("b-one", "proxy-b"),
    ] {
        let s = by_id(sid);
        assert_eq!(s["appliance"], appliance, "{s}");
        assert!(s["clip_count"].as_u64().unwrap() >= 1, "{s}");
        assert!(!s["state"].as_str().unwrap().contains("integrity"), "{s}");
    }
    assert_eq!(by_id("a-one")["state"], "closed");
    assert_eq!(by_id("a-crashed")["state"], "interrupted");
    let only_b = sessions(addr, &cookie, "&appliance=proxy-b");
    assert_eq!(only_b.len(), 1);
    assert_eq!(only_b[0]["session_id"], "b-one");
    let page = fixture::get(
        addr,
        "/sessions?appliance=proxy-a",
        &format!("Cookie: sr_session={cookie}\r\n"),
    );
    let html = page.text();
    assert!(html.contains("a-two") && !html.contains("b-one"), "{html}");
    assert!(
        html.contains("<option value=\"proxy-b\">proxy-b</option>"),
        "{html}"
    );

    // The clips are those of the manifests, and a clip plays through the role with Range.
    let clip_key = {
        let m: Vec<Value> = g
            .list_keys("manifests/")
            .iter()
            .map(|k| serde_json::from_str(&g.curl(&[], &format!("{}/{k}", g.bucket))).unwrap())
            .filter(|m: &Value| m["session_id"] == "b-one" && m["final"] == true)
            .collect();
        m[0]["clips"][0]["key"].as_str().unwrap().to_string()
    };
    let whole = g.curl(
        &["-o", "-"],
        &format!("{}/{}", g.bucket, clip_key.replace(' ', "%20")),
    );
    let r = fixture::get(
        addr,
        "/clips/b-one/1/video",
        &format!("Cookie: sr_session={cookie}\r\nRange: bytes=100-1099\r\n"),
    );
    assert_eq!(r.status, 206, "{}", r.text());
    assert_eq!(r.body.len(), 1000);
    assert_eq!(&r.body[..], &whole.as_bytes()[100..1100]);

    // The zip of a session passes `unzip -t`.
    let r = fixture::get(
        addr,
        "/sessions/a-one/zip",
        &format!("Cookie: sr_session={cookie}\r\n"),
    );
    assert_eq!(r.status, 200);
    let zip = role.root().join("a-one.zip");
    std::fs::write(&zip, &r.body).unwrap();
    let t = Command::new("unzip").arg("-t").arg(&zip).output().unwrap();
    assert!(t.status.success(), "{}", String::from_utf8_lossy(&t.stdout));

    // Both were audited in Kasm's wording, in the role's audit log.
    let audit = fixture::get(
        addr,
        "/admin/audit",
        &format!("Cookie: sr_session={cookie}\r\n"),
    );
    assert_eq!(audit.status, 200);
    let audit = audit.text();
    assert!(
        audit.contains(&format!("User {AUDITOR} played b-one video: s3://")),
        "{audit}"
    );
    assert!(
        audit.contains(&format!("User {AUDITOR} downloaded entire session: a-one")),
        "{audit}"
    );

    // A manifest edited in the bucket: integrity failed (seen by the next rescan).
    let a_two_key = g
        .list_keys("manifests/")
        .into_iter()
        .find(|k| k.contains("-a-two-"))
        .unwrap();
    let body = g.curl(&[], &format!("{}/{a_two_key}", g.bucket));
    let edited = body.replacen("\"tester\"", "\"someone-else\"", 1);
    assert_ne!(edited, body);
    let file = role.root().join("edited.json");
    std::fs::write(&file, &edited).unwrap();
    g.curl(
        &[
            "-X",
            "PUT",
            "--data-binary",
            &format!("@{}", file.display()),
        ],
        &format!("{}/{a_two_key}", g.bucket),
    );
    let flagged = wait_for(Duration::from_secs(60), || {
        state_of(addr, &cookie, "a-two").contains("integrity: failed")
    });
    assert!(
        flagged,
        "state: {}\nlog:\n{}",
        state_of(addr, &cookie, "a-two"),
        dr.log_text()
    );

    // Not JSON in the manifest prefix: skipped, counted, on the status page.
    std::fs::write(&file, b"this is not json").unwrap();
    g.curl(
        &[
            "-X",
            "PUT",
            "--data-binary",
            &format!("@{}", file.display()),
        ],
        &format!("{}/manifests/9999999999999-junk.json", g.bucket),
    );
    let counted = wait_for(Duration::from_secs(30), || {
        json(addr, "/api/v1/status", &cookie)["fleet"]["index"]["skipped"]["not_json"] == 1
    });
    assert!(counted, "{}", json(addr, "/api/v1/status", &cookie));
    assert_eq!(sessions(addr, &cookie, "").len(), 4);

    // The store down: a status problem, the last index still served.
    g.stop();
    let down = wait_for(Duration::from_secs(60), || {
        json(addr, "/api/v1/status", &cookie)["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p.as_str().unwrap().contains("fleet bucket is unreachable"))
    });
    assert!(down, "{}", json(addr, "/api/v1/status", &cookie));
    assert_eq!(sessions(addr, &cookie, "").len(), 4);
    g.restart();
    let up = wait_for(Duration::from_secs(60), || {
        json(addr, "/api/v1/status", &cookie)["fleet"]["index"]["reachable"] == true
    });
    assert!(up, "{}", json(addr, "/api/v1/status", &cookie));
    assert_eq!(dr.stop().code(), Some(0));
}
