//! Upload stage against real stores: a real Garage S3 server (scripts/s3-test-server, stopped by
//! PID), a TLS-terminating socat proxy with a private CA made by the openssl CLI, and the local
//! directory store. What the store holds is checked with curl, independently of the code under
//! test.

use crate::util::certs;
use crate::util::garage;

use std::io::Read;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use garage::{garage_or_skip, sha256_hex, write_random_file};
use session_recorder::error::Classify;
use session_recorder::manifest::session_json::{ManifestClip, SessionManifest};
use session_recorder::upload::location::{manifest_key, thumbnail_key};
use session_recorder::upload::store::{CONTENT_TYPE_JPEG, CONTENT_TYPE_JSON, CONTENT_TYPE_MP4};
use session_recorder::upload::{
    ClipVars, ObjectStore, PutOptions, S3Store, StoreError, StoreErrorKind, open_store,
};

const TEMPLATE: &str = "kasm/{username}/{session_id}/{clip_index}-{timestamp_ms}.mp4";
const MIB: usize = 1024 * 1024;

fn vars(index: u32) -> ClipVars {
    ClipVars {
        user_id: "u-1".into(),
        username: "alice smith".into(),
        image_friendly_name: "Ubuntu Jammy".into(),
        session_id: "sess-42".into(),
        session_start_ms: 1_706_554_000_000,
        clip_start_ms: 1_706_554_545_220 + u64::from(index) * 60_000,
        clip_end_ms: 1_706_554_605_220 + u64::from(index) * 60_000,
        clip_index: index,
        clip_part: 0,
        hostname: "proxy-1".into(),
        appliance_id: "proxy-1".into(),
    }
}

fn mp4(sha: &str) -> PutOptions {
    PutOptions {
        content_type: CONTENT_TYPE_MP4.into(),
        sha256_hex: sha.into(),
    }
}

fn read_all(store: &dyn ObjectStore, key: &str, range: Option<(u64, Option<u64>)>) -> Vec<u8> {
    let mut out = Vec::new();
    store
        .get(key, range)
        .expect("get")
        .read_to_end(&mut out)
        .expect("read");
    out
}

#[test]
fn s3_happy_path_clip_thumbnail_manifest_presign() {
    let Some(g) = garage_or_skip("s3_happy_path") else {
        return;
    };
    let settings = g.settings(&g.bucket, TEMPLATE);
    let template = settings.validate().expect("valid settings").template;
    let store = open_store(&settings).expect("open store");
    store.probe().expect("probe");

    let dir = tempfile::tempdir().unwrap();
    let mut clips = Vec::new();
    // Clip 0 is multipart (20 MiB > 16 MiB parts); clip 1 is a single PUT.
    for (index, len) in [(0u32, 20 * MIB + 123), (1, 3 * MIB)] {
        let path = dir.path().join(format!("clip{index}.mp4"));
        let sha = write_random_file(&path, len, u64::from(index) + 7);
        let key = template.render(&vars(index));
        assert_eq!(
            key,
            format!(
                "kasm/alice smith/sess-42/{}-{}.mp4",
                index + 1,
                vars(index).clip_start_ms
            )
        );
        let info = store.put_file(&key, &path, &mp4(&sha)).expect("put clip");
        assert_eq!(info.size_bytes, len as u64);
        let thumb = b"\xff\xd8\xff\xe0 not really a jpeg \xff\xd9".to_vec();
        let tkey = thumbnail_key(&key);
        store
            .put_bytes(
                &tkey,
                &thumb,
                &PutOptions {
                    content_type: CONTENT_TYPE_JPEG.into(),
                    sha256_hex: sha256_hex(&thumb),
                },
            )
            .expect("put thumbnail");

        // HEAD through the store and, independently, through curl.
        let head = store.head(&key).unwrap().expect("object exists");
        assert_eq!(head.size_bytes, len as u64);
        assert_eq!(head.sha256_hex.as_deref(), Some(sha.as_str()));
        assert_eq!(head.content_type.as_deref(), Some(CONTENT_TYPE_MP4));
        let h = g.head_headers(&key.replace(' ', "%20"));
        assert!(h.contains("content-type: video/mp4"), "{h}");
        assert!(h.contains(&format!("x-amz-meta-sha256: {sha}")), "{h}");
        let h = g.head_headers(&tkey.replace(' ', "%20"));
        assert!(h.contains("content-type: image/jpeg"), "{h}");

        // Streamed GET, whole and ranged.
        let body = read_all(store.as_ref(), &key, None);
        assert_eq!(sha256_hex(&body), sha);
        let part = read_all(store.as_ref(), &key, Some((1000, Some(1999))));
        assert_eq!(part, body[1000..2000]);
        let tail = read_all(store.as_ref(), &key, Some((len as u64 - 10, None)));
        assert_eq!(tail, body[len - 10..]);

        // Presigned GET fetched by curl without credentials.
        let url = store.presign_get(&key, 600).unwrap().expect("S3 presigns");
        let out = dir.path().join("fetched.mp4");
        let status = Command::new("curl")
            .args(["-sS", "-f", "-o"])
            .arg(&out)
            .arg(&url)
            .status()
            .unwrap();
        assert!(status.success(), "curl of presigned URL failed: {url}");
        assert_eq!(sha256_hex(&std::fs::read(&out).unwrap()), sha);
        clips.push(ManifestClip::new(
            index,
            key,
            Some(tkey),
            len as u64,
            sha,
            vars(index).clip_start_ms,
            vars(index).clip_end_ms,
        ));
    }

    let mkey = manifest_key(&clips[0].key, "sess-42").unwrap();
    assert_eq!(mkey, "kasm/alice smith/sess-42/sess-42.manifest.json");
    let m = SessionManifest::new(
        "sess-42",
        "u-1",
        "alice smith",
        "Ubuntu Jammy",
        "proxy-1",
        vars(0).session_start_ms,
        vars(1).clip_end_ms,
        clips,
    )
    .unwrap();
    let json = m.to_json();
    store
        .put_bytes(
            &mkey,
            &json,
            &PutOptions {
                content_type: CONTENT_TYPE_JSON.into(),
                sha256_hex: sha256_hex(&json),
            },
        )
        .unwrap();
    let back: SessionManifest =
        serde_json::from_slice(&read_all(store.as_ref(), &mkey, None)).unwrap();
    assert_eq!(back, m);

    let mut keys = g.list_keys("kasm/");
    keys.sort();
    assert_eq!(keys.len(), 5, "{keys:?}");
    assert_eq!(g.multipart_uploads(), 0, "no multipart upload left behind");

    store.delete(&mkey).unwrap();
    store.delete(&mkey).unwrap();
    assert!(store.head(&mkey).unwrap().is_none());
    assert!(matches!(
        store.get(&mkey, None),
        Err(StoreError::NotFound { .. })
    ));
    assert!(store.describe().contains(&g.bucket));
    assert!(!store.describe().contains(&g.secret));
}

#[test]
fn s3_wrong_secret_is_permanent_keeps_clip_and_heals_after_fix() {
    let Some(g) = garage_or_skip("s3_wrong_secret") else {
        return;
    };
    let mut settings = g.settings(&g.bucket, TEMPLATE);
    settings.secret_key = session_recorder::upload::Secret::new("0".repeat(64));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("clip.mp4");
    let sha = write_random_file(&path, MIB, 3);
    let key = settings.validate().unwrap().template.render(&vars(0));

    let bad = open_store(&settings).expect("opening does not contact the store");
    let e = bad.put_file(&key, &path, &mp4(&sha)).unwrap_err();
    assert_eq!(e.kind(), StoreErrorKind::AccessDenied, "{e}");
    assert!(!e.is_transient());
    assert!(e.is_config_problem());
    assert_eq!(e.kind().words(), "access denied: check key/secret");
    assert_eq!(
        bad.probe().unwrap_err().kind(),
        StoreErrorKind::AccessDenied
    );
    assert!(path.exists(), "the clip is kept");
    assert!(g.list_keys("kasm/").is_empty());

    // Wrong access key id too.
    let mut settings2 = g.settings(&g.bucket, TEMPLATE);
    settings2.access_key = "GK000000000000000000000000".into();
    let e = open_store(&settings2)
        .unwrap()
        .put_file(&key, &path, &mp4(&sha))
        .unwrap_err();
    assert_eq!(e.kind(), StoreErrorKind::AccessDenied, "{e}");

    // The operator fixes the secret: the same clip goes up.
    let good = open_store(&g.settings(&g.bucket, TEMPLATE)).unwrap();
    good.put_file(&key, &path, &mp4(&sha))
        .expect("upload after fix");
    assert_eq!(
        good.head(&key).unwrap().unwrap().sha256_hex.as_deref(),
        Some(sha.as_str())
    );
}

#[test]
fn s3_server_down_at_start_is_transient_then_succeeds() {
    let Some(mut g) = garage_or_skip("s3_server_down") else {
        return;
    };
    g.stop();
    let store = open_store(&g.settings(&g.bucket, TEMPLATE)).expect("opens while S3 is down");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("clip.mp4");
    let sha = write_random_file(&path, MIB, 5);
    let key = TEMPLATE
        .replace("{username}", "u")
        .replace("{session_id}", "s")
        .replace("{clip_index}", "0")
        .replace("{timestamp_ms}", "1");
    let e = store.put_file(&key, &path, &mp4(&sha)).unwrap_err();
    assert_eq!(e.kind(), StoreErrorKind::Unreachable, "{e}");
    assert!(e.is_transient());
    assert!(!e.is_config_problem());
    assert!(store.probe().unwrap_err().is_transient());

    g.restart();
    store
        .put_file(&key, &path, &mp4(&sha))
        .expect("upload once the store is back");
    assert_eq!(g.list_keys("kasm/"), vec![key]);
}

#[test]
fn s3_killed_during_multipart_then_completes_exactly_once() {
    let Some(mut g) = garage_or_skip("s3_killed_mid_multipart") else {
        return;
    };
    let store: std::sync::Arc<dyn ObjectStore> =
        open_store(&g.settings(&g.bucket, TEMPLATE)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.mp4");
    let len = 96 * MIB + 17; // 7 parts of 16 MiB
    let sha = write_random_file(&path, len, 11);
    let key = "kasm/big/sess/0-1.mp4".to_string();

    let upload = {
        let (store, key, path, sha) = (store.clone(), key.clone(), path.clone(), sha.clone());
        std::thread::spawn(move || store.put_file(&key, &path, &mp4(&sha)))
    };
    // Wait until the multipart upload exists on the server, then kill -9 it mid-transfer.
    while g.multipart_uploads() == 0 {
        assert!(
            !upload.is_finished(),
            "upload ended before the multipart upload was seen"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    g.kill9();
    let e = upload
        .join()
        .unwrap()
        .expect_err("upload must fail when the server dies");
    assert!(e.is_transient(), "{e} ({:?}) should be transient", e.kind());

    g.restart();
    let info = store
        .put_file(&key, &path, &mp4(&sha))
        .expect("upload after restart");
    assert_eq!(info.size_bytes, len as u64);
    assert_eq!(
        g.list_keys("kasm/big/"),
        vec![key.clone()],
        "exactly one object"
    );
    let head = store.head(&key).unwrap().unwrap();
    assert_eq!(
        (head.size_bytes, head.sha256_hex.as_deref()),
        (len as u64, Some(sha.as_str()))
    );
    assert_eq!(sha256_hex(&read_all(store.as_ref(), &key, None)), sha);
}

#[test]
fn s3_missing_bucket_is_permanent_and_says_so() {
    let Some(g) = garage_or_skip("s3_missing_bucket") else {
        return;
    };
    let store = open_store(&g.settings("no-such-bucket", TEMPLATE)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("clip.mp4");
    let sha = write_random_file(&path, 1000, 1);
    let e = store
        .put_file("kasm/a/b/0-1.mp4", &path, &mp4(&sha))
        .unwrap_err();
    assert_eq!(e.kind(), StoreErrorKind::BucketMissing, "{e}");
    assert!(!e.is_transient());
    assert!(
        e.to_string()
            .contains("bucket does not exist: no-such-bucket"),
        "{e}"
    );
    let e = store.probe().unwrap_err();
    assert_eq!(e.kind().words(), "bucket does not exist");
}

/// socat terminating TLS on a free port and forwarding to Garage; killed by PID on drop.
struct TlsProxy {
    child: Child,
    port: u16,
}

impl TlsProxy {
    fn start(dir: &Path, backend: &str) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("socat")
            .arg(format!(
                "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,cert={},key={},verify=0",
                dir.join("leaf.pem").display(),
                dir.join("leaf.key").display()
            ))
            .arg(format!("TCP:{backend}"))
            .stdout(Stdio::null())
            .spawn()
            .expect("socat is needed for the TLS test (apt-get install socat)");
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Self { child, port }
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn s3_tls_endpoint_with_private_ca() {
    let Some(g) = garage_or_skip("s3_tls_private_ca") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    certs::make_ca_and_leaf(dir.path());
    let proxy = TlsProxy::start(dir.path(), g.host_port());
    let mut settings = g.settings(&g.bucket, TEMPLATE);
    settings.location = format!("s3://{}@localhost:{}/{TEMPLATE}", g.bucket, proxy.port);
    settings.allow_http = false;

    // Without the CA the certificate is not trusted: a permanent, config-shaped error.
    let untrusted = open_store(&settings).unwrap();
    assert!(untrusted.describe().contains("https://localhost"));
    let e = untrusted.probe().unwrap_err();
    assert_eq!(e.kind(), StoreErrorKind::Tls, "{e}");
    assert!(!e.is_transient());
    assert!(e.is_config_problem());

    settings.ca_file = Some(dir.path().join("ca.pem"));
    let store = open_store(&settings).unwrap();
    store.probe().expect("probe over TLS with the private CA");
    let path = dir.path().join("clip.mp4");
    let sha = write_random_file(&path, 17 * MIB, 9);
    store
        .put_file("kasm/tls/s/0-1.mp4", &path, &mp4(&sha))
        .expect("multipart over TLS");
    let head = store.head("kasm/tls/s/0-1.mp4").unwrap().unwrap();
    assert_eq!(head.sha256_hex.as_deref(), Some(sha.as_str()));
    assert_eq!(
        g.list_keys("kasm/tls/"),
        vec!["kasm/tls/s/0-1.mp4".to_string()]
    );
}

#[test]
fn s3_store_survives_many_small_concurrent_calls() {
    let Some(g) = garage_or_skip("s3_concurrent") else {
        return;
    };
    let store = std::sync::Arc::new(S3Store::open(&g.s3_config()).unwrap());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..5 {
                    let key = format!("conc/{t}/{i}.json");
                    let body = format!("{{\"t\":{t},\"i\":{i}}}").into_bytes();
                    let opts = PutOptions {
                        content_type: CONTENT_TYPE_JSON.into(),
                        sha256_hex: sha256_hex(&body),
                    };
                    store.put_bytes(&key, &body, &opts).unwrap();
                    assert_eq!(read_all(store.as_ref(), &key, None), body);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(g.list_keys("conc/").len(), 20);
}

#[test]
fn local_store_through_open_store_behaves_like_a_bucket() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("recordings");
    let settings = session_recorder::upload::UploadSettings {
        location: format!(
            "file://{}/{{username}}/{{session_id}}-{{clip_index}}.mp4",
            root.display()
        ),
        ..Default::default()
    };
    let loc = settings.validate().unwrap();
    let store = open_store(&settings).unwrap();
    store.probe().unwrap();
    let mut v = vars(2);
    v.username = "../../etc".into();
    let key = loc.template.render(&v);
    assert_eq!(key, "_._.._etc/sess-42-3.mp4", "{{clip_index}} is 1-based");
    let src = dir.path().join("clip.mp4");
    let sha = write_random_file(&src, 3 * MIB + 5, 2);
    store.put_file(&key, &src, &mp4(&sha)).unwrap();
    assert!(root.join(&key).is_file());
    assert_eq!(sha256_hex(&std::fs::read(root.join(&key)).unwrap()), sha);
    let head = store.head(&key).unwrap().unwrap();
    assert_eq!(head.sha256_hex.as_deref(), Some(sha.as_str()));
    assert_eq!(read_all(store.as_ref(), &key, Some((5, Some(9)))).len(), 5);
    assert!(store.presign_get(&key, 60).unwrap().is_none());
    assert!(store.describe().contains("recordings"));
}

// ---- upload worker: queue -> store ----

mod worker {
    use super::*;
    use session_recorder::clock::{Clock, ManualClock};
    use session_recorder::lifecycle::Heartbeat;
    use session_recorder::manifest::{ManifestTick, ManifestWorker, ManifestWorkerConfig};
    use session_recorder::queue::*;
    use session_recorder::upload::{KeyTemplate, TickOutcome, UploadWorker, UploadWorkerConfig};
    use std::path::PathBuf;
    use std::sync::Arc;

    const T0: u64 = 1_706_554_000_000;

    /// A queue with one session of `n` encoded segments, one clip (+ thumbnail) each.
    struct Fixture {
        dir: tempfile::TempDir,
        clock: Arc<ManualClock>,
        queue: Arc<Queue>,
        session: u64,
        clips: Vec<(u64, PathBuf, String)>,
    }

    fn fixture(n: u32, clip_bytes: usize, close: bool) -> Fixture {
        fixture_encoded_at(n, clip_bytes, close, T0)
    }

    /// Like [`fixture`], but the clips are encoded (created) at `now_ms` while the session still
    /// happened at `T0`: an old recording imported late.
    fn fixture_encoded_at(n: u32, clip_bytes: usize, close: bool, now_ms: u64) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(now_ms));
        let queue = Arc::new(
            Queue::open(&QueueOptions::new(dir.path().join("queue")), clock.clone()).unwrap(),
        );
        let session = queue
            .register_session(&NewSession {
                session_id: "sess-7".into(),
                user_id: "uid-1".into(),
                username: "bob".into(),
                image_friendly_name: "Ubuntu".into(),
                protocol: "rdp".into(),
                start_ms: T0,
                target: String::new(),
                client_addr: String::new(),
            })
            .unwrap();
        let mut clips = Vec::new();
        for i in 0..n {
            let seg = queue
                .register_segment(&NewSegment {
                    session,
                    index: i,
                    path: dir.path().join(format!("{i}.guac")),
                    bytes: 1,
                    first_sync_ms: None,
                    last_sync_ms: None,
                    sealed: true,
                })
                .unwrap();
            let taken = queue
                .next_segment_to_encode()
                .unwrap()
                .expect("sealed segment");
            assert_eq!(taken.id, seg);
            let path = dir.path().join(format!("clip-{i}.mp4"));
            let sha = write_random_file(&path, clip_bytes, u64::from(i) + 100);
            let thumb = dir.path().join(format!("clip-{i}.jpg"));
            std::fs::write(&thumb, format!("jpeg {i}")).unwrap();
            let events_path = dir.path().join(format!("clip-{i}.events.json"));
            let events_bytes = session_recorder::events::format::to_bytes(&Default::default());
            std::fs::write(&events_path, &events_bytes).unwrap();
            let events = session_recorder::queue::ClipEventsObject {
                sha256: sha256_hex(&events_bytes),
                bytes: events_bytes.len() as u64,
                path: events_path,
            };
            let start_ms = T0 + u64::from(i) * 60_000;
            let ids = queue
                .finish_encoding(
                    seg,
                    &[NewClip {
                        segment: seg,
                        index: 0,
                        path: path.clone(),
                        thumb_path: Some(thumb),
                        bytes: clip_bytes as u64,
                        sha256: sha.clone(),
                        duration_ms: 60_000,
                        start_ms,
                        end_ms: start_ms + 59_999,
                        object_key: None,
                        events: Some(events),
                    }],
                )
                .unwrap();
            clips.push((ids[0], path, sha));
        }
        if close {
            queue
                .transition_session(
                    session,
                    SessionState::Live,
                    SessionState::Closed,
                    Some(T0 + u64::from(n) * 60_000),
                )
                .unwrap();
        }
        Fixture {
            dir,
            clock,
            queue,
            session,
            clips,
        }
    }

    fn worker(f: &Fixture, store: Arc<dyn ObjectStore>, concurrency: usize) -> Arc<UploadWorker> {
        Arc::new(UploadWorker::new(
            f.queue.clone(),
            store,
            KeyTemplate::parse(TEMPLATE).unwrap(),
            f.clock.clone(),
            UploadWorkerConfig {
                concurrency,
                retention_hours: 1,
                hostname: "proxy-1".into(),
                appliance_id: "proxy-1".into(),
            },
        ))
    }

    /// The manifest stage over the same queue (format 1 manifests only).
    fn manifests(f: &Fixture, store: Arc<dyn ObjectStore>) -> ManifestWorker {
        ManifestWorker::new(
            f.queue.clone(),
            store,
            f.clock.clone(),
            ManifestWorkerConfig {
                hostname: "proxy-1".into(),
                fleet: None,
            },
        )
    }

    /// Ticks the manifest worker until nothing is due; every write must succeed.
    fn drain(m: &ManifestWorker) -> usize {
        let mut written = 0;
        loop {
            match m.tick().unwrap() {
                ManifestTick::Written(_) => written += 1,
                ManifestTick::Idle | ManifestTick::NotBefore(_) => return written,
                ManifestTick::Failed(s) => panic!("manifest of {s} failed: {:?}", m.status()),
            }
        }
    }

    fn state(f: &Fixture, clip: u64) -> ClipState {
        f.queue.clip(clip).unwrap().unwrap().state
    }

    /// A store on a port where nothing listens: every call is a transient failure.
    fn dead_store() -> Arc<dyn ObjectStore> {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cfg = session_recorder::upload::S3Config::new(
            &format!("http://127.0.0.1:{port}"),
            "recordings",
            "GK000000000000000000000000",
            session_recorder::upload::Secret::new("x"),
        );
        Arc::new(S3Store::open(&cfg).unwrap())
    }

    #[test]
    fn uploads_verifies_deletes_local_files_and_writes_manifest() {
        let Some(g) = garage_or_skip("worker_happy_path") else {
            return;
        };
        let f = fixture(2, 2 * MIB, true);
        let w = worker(&f, open_store(&g.settings(&g.bucket, TEMPLATE)).unwrap(), 1);
        let mut uploaded = Vec::new();
        loop {
            match w.tick().unwrap() {
                TickOutcome::Uploaded(id) => uploaded.push(id),
                TickOutcome::Idle => break,
                TickOutcome::Backoff(_) => panic!("unexpected failure: {:?}", w.status()),
            }
        }
        assert_eq!(uploaded, f.clips.iter().map(|c| c.0).collect::<Vec<_>>());
        let store = open_store(&g.settings(&g.bucket, TEMPLATE)).unwrap();
        assert!(drain(&manifests(&f, store)) >= 1);
        for (id, path, sha) in &f.clips {
            let clip = f.queue.clip(*id).unwrap().unwrap();
            assert_eq!(clip.state, ClipState::LocalDeleted);
            assert!(
                !path.exists(),
                "local clip deleted after the upload was confirmed"
            );
            assert!(!clip.thumb_path.unwrap().exists());
            assert!(!clip.events.unwrap().path.exists());
            let key = clip.object_key.expect("key stored");
            let h = g.head_headers(&key);
            assert!(h.contains(&format!("x-amz-meta-sha256: {sha}")), "{h}");
        }
        let mut keys = g.list_keys("kasm/bob/sess-7/");
        keys.sort();
        assert_eq!(
            keys,
            vec![
                // `{clip_index}` counts from 1.
                format!("kasm/bob/sess-7/1-{T0}.events.json"),
                format!("kasm/bob/sess-7/1-{T0}.jpg"),
                format!("kasm/bob/sess-7/1-{T0}.mp4"),
                format!("kasm/bob/sess-7/2-{}.events.json", T0 + 60_000),
                format!("kasm/bob/sess-7/2-{}.jpg", T0 + 60_000),
                format!("kasm/bob/sess-7/2-{}.mp4", T0 + 60_000),
                "kasm/bob/sess-7/sess-7.manifest.json".to_string(),
            ]
        );
        let store = open_store(&g.settings(&g.bucket, TEMPLATE)).unwrap();
        let m: SessionManifest = serde_json::from_slice(&read_all(
            store.as_ref(),
            "kasm/bob/sess-7/sess-7.manifest.json",
            None,
        ))
        .unwrap();
        assert_eq!(m.clips.len(), 2);
        assert_eq!(m.clips[1].sha256, f.clips[1].2);
        assert_eq!(m.clips[1].thumbnail_key.as_deref(), Some(keys[4].as_str()));
        assert_eq!(m.total_bytes, 4 * MIB as u64);
        assert_eq!(w.status().uploaded_clips, 2);
        assert!(w.status().problem.is_none());
    }

    #[test]
    fn permanent_failure_parks_clip_shows_config_problem_and_heals_after_fix() {
        let Some(g) = garage_or_skip("worker_wrong_secret") else {
            return;
        };
        let f = fixture(1, MIB, true);
        let mut bad = g.settings(&g.bucket, TEMPLATE);
        bad.secret_key = session_recorder::upload::Secret::new("f".repeat(64));
        let w = worker(&f, open_store(&bad).unwrap(), 1);
        assert!(matches!(w.tick().unwrap(), TickOutcome::Backoff(_)));
        let (id, path, _) = &f.clips[0];
        match state(&f, *id) {
            ClipState::Failed {
                transient, reason, ..
            } => {
                assert!(!transient);
                assert!(
                    reason.starts_with("access denied: check key/secret"),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
        let problem = w.status().problem.expect("problem shown");
        assert!(problem.config_problem);
        assert_eq!(problem.kind, StoreErrorKind::AccessDenied);
        assert!(path.exists(), "clip kept while the settings are wrong");
        // Still wrong: the slow retry probes and keeps the clip parked.
        f.clock.advance_ms(10 * 60 * 1000);
        assert_eq!(w.revive_parked_clips(f.clock.now_ms()).unwrap(), 0);

        // The operator fixes the secret; the daemon builds a worker on the new store.
        let w = worker(&f, open_store(&g.settings(&g.bucket, TEMPLATE)).unwrap(), 1);
        assert_eq!(w.tick().unwrap(), TickOutcome::Uploaded(*id));
        assert_eq!(state(&f, *id), ClipState::LocalDeleted);
        assert!(!path.exists());
    }

    #[test]
    fn transient_failure_backs_off_then_retries() {
        let f = fixture(1, 1000, false);
        let w = worker(&f, dead_store(), 1);
        let id = f.clips[0].0;
        let TickOutcome::Backoff(until) = w.tick().unwrap() else {
            panic!("should fail")
        };
        assert!(until >= T0 + 2_000, "first retry after at least 2 s");
        assert!(matches!(
            state(&f, id),
            ClipState::Failed {
                transient: true,
                ..
            }
        ));
        assert_eq!(
            w.status().problem.unwrap().kind,
            StoreErrorKind::Unreachable
        );
        // Not due yet.
        assert_eq!(w.tick().unwrap(), TickOutcome::Idle);
        f.clock.set_ms(until);
        let TickOutcome::Backoff(until2) = w.tick().unwrap() else {
            panic!("should fail")
        };
        assert!(until2 - until >= 4_000, "second retry waits longer");
        assert_eq!(f.queue.clip(id).unwrap().unwrap().attempts, 2);
        assert!(f.clips[0].1.exists());
    }

    #[test]
    fn clip_past_retention_is_expired_with_audit_entry() {
        let f = fixture(2, 1000, false);
        let w = worker(&f, dead_store(), 1);
        let _ = w.tick().unwrap(); // first clip fails (transient), second stays Ready
        f.clock.advance_ms(3 * 3_600_000);
        let _ = w.tick().unwrap(); // housekeeping expires both
        for (id, path, _) in &f.clips {
            assert_eq!(state(&f, *id), ClipState::Expired);
            assert!(!path.exists());
        }
        let audit = f
            .queue
            .list_audit(&AuditFilter {
                action: Some(AuditAction::ClipExpired),
                limit: 10,
                ..AuditFilter::default()
            })
            .unwrap();
        assert_eq!(audit.items.len(), 2);
        assert!(
            audit
                .items
                .iter()
                .all(|a| a.message.contains("expired after 1 hours"))
        );
        assert!(
            audit
                .items
                .iter()
                .any(|a| a.message.contains("cannot reach the object store"))
        );
        assert_eq!(w.tick().unwrap(), TickOutcome::Idle);
    }

    /// Regression (found by the crash test): retention was measured from the recording's end,
    /// so a recording imported a week late was expired before its first upload attempt.
    #[test]
    fn retention_counts_from_clip_creation_not_recording_time() {
        let week_ms = 7 * 24 * 3_600_000;
        let f = fixture_encoded_at(1, 1000, false, T0 + week_ms);
        let w = worker(&f, dead_store(), 1);
        let id = f.clips[0].0;
        assert!(matches!(w.tick().unwrap(), TickOutcome::Backoff(_)));
        f.clock.advance_ms(30 * 60_000);
        let _ = w.tick().unwrap();
        assert!(
            matches!(state(&f, id), ClipState::Failed { .. }),
            "a clip made 30 minutes ago is within its 1 hour retention: {:?}",
            state(&f, id)
        );
        f.clock.advance_ms(2 * 3_600_000);
        let _ = w.tick().unwrap();
        assert_eq!(state(&f, id), ClipState::Expired);
    }

    /// Regression (found by the 100-kill crash test): which manifests were still owed lived only
    /// in memory, so a kill between a session's last clip upload and its manifest lost the
    /// manifest. The queue marks it owed with the upload; a restarted manifest worker writes it.
    #[test]
    fn manifest_owed_at_a_crash_is_written_after_restart() {
        let f = fixture(2, 1000, true);
        let root = f.dir.path().join("bucket");
        let manifest = root.join("kasm/bob/sess-7/sess-7.manifest.json");
        let store = || -> Arc<dyn ObjectStore> {
            Arc::new(session_recorder::upload::LocalDirStore::open(&root).unwrap())
        };
        let w = worker(&f, store(), 1);
        while w.tick().unwrap() != TickOutcome::Idle {}
        assert_eq!(f.queue.owed_manifest_count().unwrap(), 1);
        // The crash: after the uploads committed, before the manifest worker wrote anything.
        f.queue.set_failpoint(Some(Failpoint::OwedManifestTaken));
        let cut = manifests(&f, store()).tick();
        assert!(
            matches!(cut, Err(QueueError::InjectedFailure(_))),
            "{cut:?}"
        );
        assert!(!manifest.exists());
        let restarted = manifests(&f, store());
        assert_eq!(drain(&restarted), 1);
        let m: SessionManifest =
            serde_json::from_slice(&std::fs::read(&manifest).expect("manifest written")).unwrap();
        assert_eq!(m.clips.len(), 2);
        assert_eq!(f.queue.owed_manifest_count().unwrap(), 0);
        assert_eq!(drain(&restarted), 0, "written once");
    }

    #[test]
    fn concurrent_threads_upload_every_clip_once_to_the_local_store() {
        let f = fixture(8, 300_000, true);
        let root = f.dir.path().join("bucket");
        let store: Arc<dyn ObjectStore> =
            Arc::new(session_recorder::upload::LocalDirStore::open(&root).unwrap());
        let w = worker(&f, store.clone(), 3);
        let m = Arc::new(manifests(&f, store));
        let shutdown = session_recorder::lifecycle::Shutdown::new();
        let board = session_recorder::status::StatusBoard::new(f.clock.clone(), 0, 1);
        let run = |name: &str, body: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(body)
                .unwrap()
        };
        let mut threads = Vec::new();
        for n in 0..3 {
            let (w, shutdown, board) = (w.clone(), shutdown.clone(), board.clone());
            threads.push(run(
                &format!("upload-{n}"),
                Box::new(move || w.run(&shutdown, &Heartbeat::detached(), &board)),
            ));
        }
        let (m2, shutdown2, board2) = (m.clone(), shutdown.clone(), board.clone());
        threads.push(run(
            "manifest",
            Box::new(move || m2.run(&shutdown2, &Heartbeat::detached(), &board2)),
        ));
        let done = || {
            f.clips
                .iter()
                .all(|c| state(&f, c.0) == ClipState::LocalDeleted)
        };
        // Guard against a hang only; the work itself takes well under a second.
        for _ in 0..6000 {
            if done() && root.join("kasm/bob/sess-7/sess-7.manifest.json").exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        shutdown.request();
        for t in threads {
            t.join().unwrap();
        }
        assert!(done());
        let published = board.snapshot();
        assert_eq!(
            published.uploads.uploaded_clips, 8,
            "the workers publish themselves"
        );
        assert_eq!(published.uploads.uploaded_bytes, 8 * 300_000);
        assert_eq!(published.manifests.owed, 0);
        for (id, _, sha) in &f.clips {
            let clip = f.queue.clip(*id).unwrap().unwrap();
            assert_eq!(clip.attempts, 1, "each clip taken exactly once");
            let bytes = std::fs::read(root.join(clip.object_key.unwrap())).unwrap();
            assert_eq!(&sha256_hex(&bytes), sha);
        }
        assert_eq!(w.status().uploaded_clips, 8);
        let m: SessionManifest = serde_json::from_slice(
            &std::fs::read(root.join("kasm/bob/sess-7/sess-7.manifest.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(m.clips.len(), 8);
        let _ = f.session;
    }
}

/// Benchmark body for scripts/bench-upload (ignored in normal runs): uploads BENCH_FILE to the
/// Garage described by BENCH_ENDPOINT/KEY/SECRET/BUCKET and prints wall seconds and CPU seconds
/// of this process (all threads: caller, S3 runtime thread, minio's hashing pool).
#[test]
#[ignore = "benchmark: run through scripts/bench-upload"]
fn bench_upload_file() {
    let env = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} not set"));
    let cfg = session_recorder::upload::S3Config::new(
        &env("BENCH_ENDPOINT"),
        &env("BENCH_BUCKET"),
        &env("BENCH_KEY"),
        session_recorder::upload::Secret::new(env("BENCH_SECRET")),
    );
    let garage_pid = std::env::var("BENCH_GARAGE_PID").ok();
    let garage_cpu_s = || {
        garage_pid.as_ref().map_or(0.0, |pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let f: Vec<&str> = stat
                .rsplit_once(')')
                .map_or("", |x| x.1)
                .split_whitespace()
                .collect();
            let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            (ticks(11) + ticks(12)) / 100.0
        })
    };
    let store = S3Store::open(&cfg).unwrap();
    let path = std::path::PathBuf::from(env("BENCH_FILE"));
    let size = std::fs::metadata(&path).unwrap().len();
    let runs: u32 = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let cpu_s = || {
        // SAFETY: getrusage fills the struct we pass; no other memory is touched.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        tv(ru.ru_utime) + tv(ru.ru_stime)
    };
    for run in 0..runs {
        let (t0, c0, g0) = (std::time::Instant::now(), cpu_s(), garage_cpu_s());
        let info = store
            .put_file(
                &format!("bench/minio-{run}.bin"),
                &path,
                &mp4(&"0".repeat(64)),
            )
            .expect("bench upload");
        let (wall, cpu) = (t0.elapsed().as_secs_f64(), cpu_s() - c0);
        let garage = garage_cpu_s() - g0;
        assert_eq!(info.size_bytes, size);
        let mb = size as f64 / 1e6;
        println!(
            "BENCH run={run} bytes={size} wall_s={wall:.3} mb_per_s={:.1} cpu_s={cpu:.3} \
             cpu_s_per_mb={:.5} garage_cpu_s={garage:.2}",
            mb / wall,
            cpu / mb
        );
    }
}
