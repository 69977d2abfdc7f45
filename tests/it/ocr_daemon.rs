//! OCR in the daemon, end to end: the real binary on a temporary home, a shared terminal
//! recording imported through the spool, the local bucket.
//!
//! With `search.ocr = true` the clip's screen text ends as `<clip>.ocr.events.json` in the
//! bucket (the bytes its signed manifest lists, the signature valid), and
//! `/api/v1/search?q=<a word on that screen>&kind=screen_text` finds it; with it off, nothing of
//! OCR is made. Needs `tesseract` (scripts/install-deps; without it the tests say so and skip).

use crate::util;
use crate::util::daemon;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use daemon::{Home, files_under, free_port, wait_for};
use session_recorder::clock::SystemClock;
use session_recorder::manifest::keys;
use session_recorder::manifest::signed::{Integrity, TrustedKeys, parse_and_verify};
use session_recorder::ocr::tesseract::Tesseract;
use session_recorder::queue::{ApiToken, Queue, QueueOptions, User};
use sha2::Digest;

const TOKEN: &str = "ocr-daemon-test-token";

fn tesseract_installed() -> bool {
    let ok = Tesseract::default().check().is_ok();
    if !ok {
        eprintln!("SKIPPED: tesseract is not installed (scripts/install-deps installs it)");
    }
    ok
}

fn recording(name: &str) -> PathBuf {
    util::shared_dir().join("recordings").join(name)
}

/// An admin with an API token, written into the queue before the daemon opens it.
fn add_admin_token(home: &Home) {
    let queue = Queue::open(
        &QueueOptions::new(home.data().join("queue")),
        Arc::new(SystemClock),
    )
    .unwrap();
    let user = User {
        name: "auditor".into(),
        password_hash: "not-a-password".into(),
        permissions: 4,
        created_ms: 1,
    };
    queue.add_user(&user, "test").unwrap();
    let token = ApiToken {
        token_hash: session_recorder::serve::auth::secret_hash(TOKEN),
        user: "auditor".into(),
        label: "test".into(),
        created_ms: 1,
    };
    queue.add_token(&token, "test").unwrap();
}

/// GET with the test token; returns (status, body).
fn get(port: u16, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n\
         Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, body.to_string())
}

fn ocr_objects(root: &Path) -> Vec<PathBuf> {
    files_under(root)
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".ocr.events.json"))
        .collect()
}

/// The fleet manifests in the bucket, parsed and verified with the appliance's key.
fn manifests(home: &Home) -> Vec<session_recorder::manifest::signed::Parsed> {
    // The daemon makes its key at start: none yet, no manifest yet.
    let Ok(key) = keys::read(&keys::key_path(&home.data())) else {
        return Vec::new();
    };
    let trusted = TrustedKeys::from_hex(&[keys::public_hex(&key)]).unwrap();
    files_under(&home.bucket().join("manifests"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .filter_map(|p| parse_and_verify(&std::fs::read(p).unwrap(), &trusted).ok())
        .collect()
}

#[test]
fn with_ocr_on_screen_text_reaches_the_bucket_the_signed_manifest_and_search() {
    if !tesseract_installed() {
        return;
    }
    let port = free_port();
    let home = Home::new("segment-size-mb = 1\n[search]\nocr = true", Some(port));
    add_admin_token(&home);
    home.spool_recording(&recording("ssh-green-800x600.guac"), "a.guac", "sess-ocr");
    let d = home.start();
    // The OCR object is in the bucket and a verified manifest lists it with its bytes.
    let listed = wait_for(Duration::from_secs(600), || {
        manifests(&home).iter().any(|p| {
            p.manifest.clips.iter().any(|c| c.ocr.is_some())
                && matches!(p.integrity, Integrity::Verified { .. })
        })
    });
    let log = d.log_text();
    assert!(
        listed,
        "no signed manifest lists an OCR object; log:\n{log}"
    );
    let found = manifests(&home)
        .into_iter()
        .filter(|p| p.manifest.clips.iter().any(|c| c.ocr.is_some()))
        .max_by_key(|p| p.manifest.version)
        .unwrap();
    let ocr = found.manifest.clips[0].ocr.clone().expect("ocr object");
    assert!(ocr.key.ends_with(".ocr.events.json"), "{}", ocr.key);
    assert_eq!(
        ocr.key,
        found.manifest.clips[0]
            .key
            .replace(".mp4", ".ocr.events.json")
    );
    let bytes = std::fs::read(home.bucket().join(&ocr.key)).expect("OCR object in the bucket");
    assert_eq!(bytes.len() as u64, ocr.size_bytes);
    assert_eq!(hex::encode(sha2::Sha256::digest(&bytes)), ocr.sha256);
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.contains("WARRANTY"), "{text}");

    // The appliance's search finds a word of that screen as screen text.
    let mut last = String::new();
    let hit = wait_for(Duration::from_secs(120), || {
        let (status, body) = get(port, "/api/v1/search?q=WARRANTY&kind=screen_text");
        last = format!("{status} {body}");
        status == 200 && body.contains("sess-ocr") && body.contains("screen_text")
    });
    let log = d.log_text();
    let status = d.stop();
    assert!(
        hit,
        "search did not find the screen text: {last}\nlog:\n{log}"
    );
    assert_eq!(status.code(), Some(0), "log:\n{log}");
    // The local OCR file went after its upload.
    assert!(
        ocr_objects(&home.data())
            .iter()
            .all(|p| p.starts_with(home.bucket())),
        "{:?}",
        ocr_objects(&home.data())
    );
}

#[test]
fn with_ocr_off_nothing_of_ocr_is_made() {
    let home = Home::new("segment-size-mb = 1", None);
    home.spool_recording(&recording("ssh-green-800x600.guac"), "a.guac", "sess-plain");
    let d = home.start();
    let done = wait_for(Duration::from_secs(600), || {
        manifests(&home).iter().any(|p| p.manifest.is_final)
    });
    // Give a (wrongly) running OCR job time to show itself.
    std::thread::sleep(Duration::from_secs(3));
    let log = d.log_text();
    let status = d.stop();
    assert!(done, "no final manifest; log:\n{log}");
    assert_eq!(status.code(), Some(0), "log:\n{log}");
    assert!(ocr_objects(home.root()).is_empty());
    assert!(!log.contains("event=ocr"), "log:\n{log}");
    let queue = Queue::open(
        &QueueOptions::new(home.data().join("queue")),
        Arc::new(SystemClock),
    )
    .unwrap();
    assert_eq!(queue.ocr_counts().unwrap(), Default::default());
    for p in manifests(&home) {
        assert!(p.manifest.clips.iter().all(|c| c.ocr.is_none()));
    }
}
