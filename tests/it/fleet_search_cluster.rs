//! Search in the history role with all real parts: a 3-node Garage cluster (replication factor
//! 3), two appliance daemons (`proxy-a` on node 0, `proxy-b` on node 1) each importing a
//! recording whose terminal title holds the same word, and the history role (`serve` with
//! `[fleet]`, on node 2) indexing their signed manifests and events objects. Through the pages
//! in headless Chromium: the word's search finds one hit per appliance, and a click on the
//! `proxy-b` hit opens `proxy-b`'s session in the player at the moment.
//!
//! Skipped (saying so) without `garage`, or without Chromium outside CI. Cost: about 40 s on 2
//! cores (two short imports, the role's indexing).

use crate::util;
use crate::util::daemon;
use crate::util::garage_cluster;
use crate::util::serve_fixture;
use crate::util::webdriver;

use std::net::SocketAddr;
use std::time::Duration;

use daemon::{Home, wait_for};
use garage_cluster::GarageCluster;
use serde_json::Value;

/// The word in both sessions' terminal titles.
const WORD: &str = "fleetword-99";
const PASSWORD: &str = "correct horse battery";
const AUDITOR: &str = "auditor@example.com";
/// This test's HTTP port range.
const HTTP_PORT_FIRST: u16 = 43_600;

/// An appliance's settings: clips and manifests in the cluster's bucket through `node`, keys
/// starting with the appliance's id.
fn appliance(id: &str, g: &GarageCluster, node: usize) -> String {
    format!(
        "appliance-id = \"{id}\"\n\n[storage]\n\
         upload-location = \"s3://{b}@{h}/{{appliance_id}}/{{session_id}}/clip-{{clip_index}}-{{timestamp_ms}}.mp4\"\n\
         object-storage-key = \"{k}\"\nobject-storage-secret = \"{s}\"\nallow-http = true\npath-style = true\n",
        b = g.bucket,
        h = g.host_port(node),
        k = g.key,
        s = g.secret,
    )
}

/// The shared SSH recording with a terminal title holding [`WORD`] set half way.
fn titled_recording(dir: &std::path::Path) -> std::path::PathBuf {
    let src = util::shared_dir().join("recordings/ssh-green-800x600.guac");
    let bytes = std::fs::read(&src).unwrap();
    // A `sync` about half way, so that the moment is well inside the clip.
    let half = bytes.len() / 2;
    let at = half
        + bytes[half..]
            .windows(7)
            .position(|w| w == b"4.sync,")
            .expect("a sync");
    let end = at + bytes[at..].iter().position(|b| *b == b';').unwrap() + 1;
    let title = format!("root@erp: {WORD}");
    let name = format!("4.name,{}.{title};", title.chars().count());
    let mut out = bytes[..end].to_vec();
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(&bytes[end..]);
    let path = dir.join("titled.guac");
    std::fs::write(&path, out).unwrap();
    path
}

fn public_key(home: &Home) -> String {
    use session_recorder::manifest::keys;
    keys::public_hex(&keys::read(&keys::key_path(&home.data())).expect("signing key"))
}

/// The sessions whose final manifest is in the bucket, as `ID@APPLIANCE`.
fn finals(g: &GarageCluster) -> Vec<String> {
    g.list_keys(2, "manifests/")
        .iter()
        .filter(|k| k.ends_with(".json"))
        .filter_map(|k| {
            serde_json::from_str::<Value>(&g.curl(2, &[], &format!("{}/{k}", g.bucket))).ok()
        })
        .filter(|m| m["final"] == true)
        .map(|m| {
            format!(
                "{}@{}",
                m["session_id"].as_str().unwrap_or(""),
                m["appliance_id"].as_str().unwrap_or("")
            )
        })
        .collect()
}

fn free_port() -> u16 {
    (HTTP_PORT_FIRST..HTTP_PORT_FIRST + 300)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free HTTP port")
}

fn search(addr: SocketAddr, cookie: &str, q: &str) -> Value {
    let r = serve_fixture::get(
        addr,
        &format!("/api/v1/search?q={q}"),
        &format!("Cookie: sr_session={cookie}\r\n"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    serde_json::from_slice(&r.body).unwrap()
}

#[test]
fn the_history_role_finds_a_word_from_two_appliances_on_a_garage_cluster() {
    let Some(g) = garage_cluster::cluster_or_skip("fleet_search_cluster", 3) else {
        return;
    };
    if !webdriver::browser_available() {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let rec = titled_recording(scratch.path());
    let a = Home::new(&appliance("proxy-a", &g, 0), None);
    let b = Home::new(&appliance("proxy-b", &g, 1), None);
    a.spool_recording(&rec, "a.guac", "erp-a");
    b.spool_recording(&rec, "b.guac", "erp-b");
    let (da, db) = (a.start(), b.start());
    let filed = wait_for(Duration::from_secs(300), || finals(&g).len() == 2);
    assert!(
        filed,
        "final manifests: {:?}\nA:\n{}\nB:\n{}",
        finals(&g),
        da.log_text(),
        db.log_text()
    );
    assert_eq!(da.stop().code(), Some(0));
    assert_eq!(db.stop().code(), Some(0));

    // The history role on node 2, and an auditor who may read keystrokes.
    let port = free_port();
    let role = Home::new(
        &format!(
            "appliance-id = \"history\"\n\n[storage]\nobject-storage-key = \"{k}\"\n\
             object-storage-secret = \"{s}\"\nallow-http = true\npath-style = true\n\n\
             [fleet]\nindex = \"s3://{bkt}@{h}/manifests\"\ntrusted-keys = [\"{ka}\", \"{kb}\"]\n\
             poll-interval-s = 1\nrescan-interval-s = 2\n",
            k = g.key,
            s = g.secret,
            bkt = g.bucket,
            h = g.host_port(2),
            ka = public_key(&a),
            kb = public_key(&b),
        ),
        Some(port),
    );
    role.add_user(
        AUDITOR,
        PASSWORD,
        "SESSIONS_VIEW,SESSION_RECORDINGS_VIEW,SESSION_KEYSTROKES_VIEW,ADMIN",
    );
    let dr = role.start();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut cookie = None;
    let up = wait_for(Duration::from_secs(60), || {
        cookie = std::net::TcpStream::connect(addr)
            .ok()
            .and_then(|_| serve_fixture::login(addr, AUDITOR, PASSWORD));
        cookie.is_some()
    });
    assert!(up, "role not up; log:\n{}", dr.log_text());
    let cookie = cookie.unwrap();
    let both = wait_for(Duration::from_secs(120), || {
        search(addr, &cookie, WORD)["total"] == 2
    });
    assert!(
        both,
        "hits: {}\nlog:\n{}",
        search(addr, &cookie, WORD),
        dr.log_text()
    );
    let hits = search(addr, &cookie, WORD);
    let mut found: Vec<(String, String, String)> = hits["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["session_id"].as_str().unwrap().to_string(),
                h["appliance_id"].as_str().unwrap().to_string(),
                h["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    found.sort();
    assert_eq!(
        found,
        [
            ("erp-a@proxy-a".into(), "proxy-a".into(), "title".into()),
            ("erp-b@proxy-b".into(), "proxy-b".into(), "title".into()),
        ],
        "{hits}"
    );
    let offset_b_ms = hits["hits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["appliance_id"] == "proxy-b")
        .and_then(|h| h["offset_ms"].as_u64())
        .unwrap();

    assert!(
        offset_b_ms > 5_000,
        "the moment is inside the clip: {offset_b_ms} ms"
    );

    // In the browser: search from the history page, click proxy-b's hit.
    let base = format!("http://{addr}");
    let downloads = scratch.path().join("downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    let d = webdriver::Driver::start(&downloads, &scratch.path().join("profile"));
    d.size(1280, 900);
    let landed = d.log_in(&format!("{base}/login"), AUDITOR, PASSWORD);
    assert!(landed.ends_with("/sessions"), "landed on {landed}");
    d.type_into("#search-q", WORD);
    d.click("form.search-inside button");
    assert!(wait_for(Duration::from_secs(10), || d
        .url()
        .contains("/search?q=")));
    assert_eq!(
        d.js("return document.querySelectorAll('#hits tr.hit').length;"),
        2
    );
    d.screenshot(&webdriver::artifacts().join("fleet-search-cluster-hits.png"));
    let clicked = d.js(
        "const row = Array.from(document.querySelectorAll('#hits tr.hit'))\
         .find(r => r.textContent.includes('proxy-b')); \
         if (!row) { return false; } row.querySelector('a.hit-link').click(); return true;",
    );
    assert_eq!(clicked, true, "proxy-b's hit");
    let player = || {
        d.js("const v = document.getElementById('player'); \
              return v ? {t: v.currentTime, ready: v.readyState} : {};")
    };
    let landed = wait_for(Duration::from_secs(20), || {
        player()["ready"].as_u64().unwrap_or(0) >= 1
    });
    assert!(landed, "no player at {}", d.url());
    let url = d.url();
    assert!(
        url.contains("erp-b@proxy-b") || url.contains("erp-b%40proxy-b"),
        "proxy-b's session: {url}"
    );
    let at = wait_for(Duration::from_secs(10), || {
        (player()["t"].as_f64().unwrap_or(-9.0) - offset_b_ms as f64 / 1000.0).abs() < 1.0
    });
    assert!(at, "not at the moment ({offset_b_ms} ms): {}", player());
    let src = d.source();
    assert!(
        src.contains("proxy-b") && src.contains(WORD),
        "the player page"
    );
    d.screenshot(&webdriver::artifacts().join("fleet-search-cluster-player.png"));
    drop(d);
    dr.stop();
}
