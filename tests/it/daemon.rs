//! The daemon end to end: the real binary on a temporary home with a spool of real recordings.
//!
//! Covers: every recording becomes exactly one clip per segment in the local bucket; a corrupt
//! file is quarantined while the others go through; a file still locked by its writer is not
//! imported until unlocked; SIGTERM stops with exit 0; `status` prints; bad configs exit 78
//! (also a video size only the encoder refuses); every shipped config file validates; a local
//! bucket broken behind the daemon's back (at run time or across a restart) never stops it,
//! shows in Recent errors, and heals without a restart; SIGHUP applies the file, and a file
//! that does not validate keeps the running settings.

use crate::util;
use crate::util::daemon;

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use daemon::{Home, expected_segments, files_under, free_port, wait_for};
use session_recorder::clock::SystemClock;
use session_recorder::queue::{ClipStateKind, Queue, QueueOptions, SegmentStateKind};

fn recording(name: &str) -> PathBuf {
    util::shared_dir().join("recordings").join(name)
}

const MB: u64 = 1_000_000;

#[test]
fn every_recording_becomes_one_clip_per_segment_and_corrupt_files_are_quarantined() {
    let home = Home::new("segment-size-mb = 1\nqueue-length = 2", None);
    let inputs = [
        ("ssh-green-800x600.guac", "a.guac", "sess-a"),
        ("vnc-odd-1023x767.guac", "b.guac", "sess-b"),
    ];
    let mut expected = 0;
    for (src, name, id) in inputs {
        home.spool_recording(&recording(src), name, id);
        expected += expected_segments(&recording(src), MB);
    }
    std::fs::write(
        home.spool().join("broken.guac"),
        b"\x89PNG\r\n not a guacamole stream",
    )
    .unwrap();
    let d = home.start();
    let done = wait_for(Duration::from_secs(900), || {
        home.spool_waiting().is_empty() && home.bucket_clips().len() >= expected
    });
    let log = d.log_text();
    let status = d.stop();
    assert!(done, "not every clip reached the bucket; log:\n{log}");
    assert_eq!(status.code(), Some(0), "log:\n{log}");

    // The corrupt file is kept, with its reason, and did not block the others.
    let q = home.spool().join("quarantine");
    assert!(q.join("broken.guac").is_file());
    let reason = std::fs::read_to_string(q.join("broken.guac.reason")).unwrap();
    assert!(reason.contains("Guacamole"), "{reason}");

    // Exactly one clip per segment, each the one in the bucket, byte for byte.
    let bucket = home.bucket_clips();
    assert_eq!(bucket.len(), expected, "{:?}", bucket.keys());
    let queue = Queue::open(
        &QueueOptions::new(home.data().join("queue")),
        Arc::new(SystemClock),
    )
    .unwrap();
    let mut clips_seen = 0;
    for (_, _, id) in inputs {
        let session = queue.session_by_external(id).unwrap().expect("session");
        for seg in queue.segments_of_session(session.id).unwrap() {
            assert_eq!(seg.state.kind(), SegmentStateKind::Encoded, "{seg:?}");
        }
        for clip in queue.clips_of_session(session.id).unwrap() {
            clips_seen += 1;
            assert!(
                matches!(
                    clip.state.kind(),
                    ClipStateKind::Uploaded | ClipStateKind::LocalDeleted
                ),
                "{clip:?}"
            );
            let key = clip.object_key.clone().expect("object key");
            let bytes = bucket.get(&key).expect("clip in bucket");
            assert_eq!(sha256_hex(bytes), clip.sha256);
            assert!(key.contains(&format!("user-{id}")), "{key}");
            if let Some(stream) = ffprobe_codec(&home.bucket().join(&key)) {
                assert_eq!(stream, "h264");
            }
        }
    }
    assert_eq!(clips_seen, expected);
    assert!(
        home.stray_temporaries().is_empty(),
        "{:?}",
        home.stray_temporaries()
    );
}

#[test]
fn a_recording_locked_by_its_writer_waits_until_unlocked() {
    let home = Home::new("", None);
    let d = home.start();
    // Written like guacd does: the file is open and fcntl-locked while the session runs.
    let path = home.spool().join("live.guac");
    std::fs::copy(recording("ssh-green-800x600.guac"), &path).unwrap();
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    fcntl_write_lock(&file);
    // Several polls (2 s each) pass without import.
    std::thread::sleep(Duration::from_secs(7));
    assert!(
        path.is_file(),
        "imported while locked; log:\n{}",
        d.log_text()
    );
    assert!(files_under(&home.data().join("segments")).is_empty());
    drop(file); // closing releases the lock, as guacd's close does
    let imported = wait_for(Duration::from_secs(60), || !path.exists());
    let log = d.log_text();
    assert_eq!(d.stop().code(), Some(0));
    assert!(imported, "never imported after unlock; log:\n{log}");
    let segments: Vec<_> = files_under(&home.data().join("segments"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "guac"))
        .collect();
    assert_eq!(segments.len(), 1);
    assert_eq!(
        std::fs::read(&segments[0]).unwrap(),
        std::fs::read(recording("ssh-green-800x600.guac")).unwrap()
    );
}

#[test]
fn sigterm_stops_cleanly_and_status_prints() {
    let port = free_port();
    let home = Home::new("", Some(port));
    let mut d = home.start();
    assert!(wait_for(Duration::from_secs(30), || d
        .log_text()
        .contains("event=started")));
    assert!(d.running());
    // While it runs, `status` asks its HTTP endpoint.
    let url = format!("http://127.0.0.1:{port}");
    let (code, out, err) = home.run(&["status", "--url", &url]);
    assert_eq!(code, 0, "{err}\n{}", d.log_text());
    let v: serde_json::Value = serde_json::from_str(&out).expect("status prints JSON");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"), "{out}");
    let status = d.stop();
    assert_eq!(status.code(), Some(0));

    let data = home.data();
    let (code, out, err) = home.run(&["status", "--data-dir", data.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("status prints JSON");
    assert_eq!(v["queue_counts"]["segments_sealed"], 0, "{out}");

    // A web user lands in the daemon's queue.
    let config = home.root().join("config.toml");
    let (code, out, err) = home.run(&[
        "user",
        "add",
        "admin@example.com",
        "--permissions",
        "ADMIN",
        "--config",
        config.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("password for admin@example.com"), "{out}");
    let queue = Queue::open(
        &QueueOptions::new(home.data().join("queue")),
        Arc::new(SystemClock),
    )
    .unwrap();
    assert!(queue.user("admin@example.com").unwrap().is_some());
    drop(queue);

    // Nobody listening: an internal error, exit 70.
    let (code, _, err) = home.run(&["status", "--url", "http://127.0.0.1:9"]);
    assert_eq!(code, 70, "{err}");
    let (code, out, _) = home.run(&["--version"]);
    assert_eq!(code, 0);
    assert!(out.contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn embedded_defaults_run_without_a_config_file() {
    if Path::new(session_recorder::config::DEFAULT_CONFIG_PATH).exists() {
        eprintln!("skipped: this machine has a system config file");
        return;
    }
    let home = Home::new("", None);
    let cwd = home.root().join("laptop");
    std::fs::create_dir_all(&cwd).unwrap();
    let log = cwd.join("daemon.log");
    let mut child = daemon::retry_busy(|| {
        std::process::Command::new(daemon::binary())
            .arg("serve")
            .current_dir(&cwd)
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
    })
    .unwrap();
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    let started = wait_for(Duration::from_secs(30), || {
        read().contains("event=started") || child.try_wait().unwrap().is_some()
    });
    assert!(started, "{}", read());
    if child.try_wait().unwrap().is_some() && read().contains("in use") {
        // Another test on this machine holds 4822 or 8480; nothing to learn here.
        eprintln!("skipped: default ports busy: {}", read());
        return;
    }
    // Data under ./data, the local bucket, the spool, the queue.
    for dir in [
        "data/queue",
        "data/bucket",
        "data/spool",
        "data/segments",
        "data/clips",
    ] {
        assert!(cwd.join(dir).is_dir(), "{dir} missing; log:\n{}", read());
    }
    assert!(read().contains("local directory"), "{}", read());
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{}", read());
}

#[test]
fn bad_config_exits_78_naming_the_key() {
    // Out of the config's range; and a size only the encoder refuses (above 4096x2304).
    for (text, key) in [
        ("queue-length = 0", "queue-length"),
        ("[video]\nwidth = 5120\nheight = 2880", "video.width"),
    ] {
        let home = Home::new(text, None);
        let (code, _, err) = home.run(&[
            "serve",
            "--config",
            home.root().join("config.toml").to_str().unwrap(),
        ]);
        assert_eq!(code, 78, "{err}");
        assert!(err.contains(key), "{err}");
    }
}

// ---- the store, broken and mended behind the daemon's back ----

#[test]
fn a_broken_local_bucket_never_stops_the_daemon_and_heals_without_a_restart() {
    let port = free_port();
    let home = Home::new("", Some(port));
    // A first clip goes through: the bucket works.
    let mut d = home.start();
    home.spool_recording(&recording("ssh-green-800x600.guac"), "a.guac", "sess-a");
    assert!(
        wait_for(Duration::from_secs(300), || home.bucket_clips().len() == 1),
        "{}",
        d.log_text()
    );
    assert!(d.running());
    assert_eq!(d.stop().code(), Some(0));

    // Behind the daemon's back the bucket becomes a file (as an unmounted mount point
    // behaves), and the daemon restarts: it comes up, says why uploads fail, keeps clips.
    let bucket = home.bucket();
    let away = home.root().join("bucket.away");
    std::fs::rename(&bucket, &away).unwrap();
    std::fs::write(&bucket, b"not a directory").unwrap();
    let mut d = home.start_ready();
    home.spool_recording(&recording("ssh-green-800x600.guac"), "b.guac", "sess-b");
    let mut last = serde_json::Value::Null;
    let shown = wait_for(Duration::from_secs(300), || {
        last = home.status_json(port);
        last["uploads"]["reachable"] == false
            && last["queue_counts"]["clips_retrying"].as_u64() >= Some(1)
            && last["recent_errors"]
                .as_array()
                .is_some_and(|e| e.iter().any(|e| e["source"] == "upload"))
    });
    assert!(shown, "{last}\n{}", d.log_text());
    // Waiting to retry is not failed.
    assert_eq!(last["queue_counts"]["clips_failed"], 0, "{last}");
    assert!(d.running());

    // The mount comes back: the clip is uploaded without a restart.
    std::fs::remove_file(&bucket).unwrap();
    std::fs::rename(&away, &bucket).unwrap();
    let healed = wait_for(Duration::from_secs(180), || home.bucket_clips().len() == 2);
    let log = d.log_text();
    assert!(healed, "{}\n{log}", home.status_json(port));
    let settled = wait_for(Duration::from_secs(30), || {
        last = home.status_json(port);
        last["queue_counts"]["clips_retrying"] == 0
            && last["queue_counts"]["clips_local_deleted"] == 2
            && last["uploads"]["reachable"] == true
    });
    assert!(settled, "{last}");
    assert_eq!(last["queue_counts"]["clips_failed"], 0, "{last}");
    assert!(log.contains("transient=true"), "{log}");
    assert_eq!(d.stop().code(), Some(0));
}

#[test]
fn a_bucket_directory_that_cannot_be_made_does_not_stop_the_start() {
    let port = free_port();
    let home = Home::new(
        "[storage]\nupload-location = \"file:///proc/sr-bucket/{session_id}-{clip_index}.mp4\"",
        Some(port),
    );
    let d = home.start_ready();
    let v = home.status_json(port);
    assert_eq!(v["uploads"]["reachable"], false, "{v}");
    assert!(d.log_text().contains("event=store_not_ready"));
    assert_eq!(d.stop().code(), Some(0));
}

#[test]
fn sighup_applies_the_file_and_a_bad_file_keeps_the_running_settings() {
    let port = free_port();
    let home = Home::new("", Some(port));
    let mut d = home.start_ready();
    let config = home.root().join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let hup = |d: &daemon::Daemon| {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(d.child.id() as libc::pid_t, libc::SIGHUP) };
    };
    // Live keys (the disk floor, the bucket) and a restart key.
    let bucket2 = home.root().join("bucket2");
    std::fs::write(
        &config,
        format!(
            "{}\n[storage]\nupload-location = \"file://{}/{{session_id}}-{{clip_index}}.mp4\"\n",
            text.replace("disk-floor-mb = 10", "disk-floor-mb = 20\nqueue-length = 3"),
            bucket2.display()
        ),
    )
    .unwrap();
    hup(&d);
    let applied = wait_for(Duration::from_secs(10), || {
        let v = home.status_json(port);
        v["disk"]["floor_bytes"] == 20_000_000
            && v["restart_pending"] == serde_json::json!(["queue-length"])
    });
    assert!(applied, "{}\n{}", home.status_json(port), d.log_text());
    // The next clip goes to the new bucket, without a restart.
    home.spool_recording(&recording("ssh-green-800x600.guac"), "a.guac", "sess-hup");
    let moved = wait_for(Duration::from_secs(300), || {
        bucket2.join("sess-hup-1.mp4").is_file() || bucket2.join("sess-hup-0.mp4").is_file()
    });
    assert!(moved, "{:?}\n{}", files_under(&bucket2), d.log_text());
    assert!(home.bucket_clips().is_empty(), "nothing in the old bucket");
    // A file that does not validate: still running, old settings, the key shown.
    std::fs::write(&config, format!("{text}\n[video]\nframerate = 1000\n")).unwrap();
    hup(&d);
    let refused = wait_for(Duration::from_secs(10), || {
        home.status_json(port)["settings_problems"][0]
            .as_str()
            .is_some_and(|p| p.contains("video.framerate"))
    });
    assert!(refused, "{}\n{}", home.status_json(port), d.log_text());
    assert!(d.running());
    assert_eq!(home.status_json(port)["disk"]["floor_bytes"], 20_000_000);
    let log = d.log_text();
    assert!(log.contains("event=settings_reload_refused"), "{log}");
    assert_eq!(d.stop().code(), Some(0), "{log}");
}

// ---- config files ----

/// Config files shipped in the repository.
fn shipped_configs() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();
    for dir in ["examples/config", "systemd", "image", "packaging"] {
        for p in files_under(&root.join(dir)) {
            if p.extension().is_some_and(|e| e == "toml") {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn every_shipped_config_file_parses_and_validates() {
    let files = shipped_configs();
    assert!(
        files
            .iter()
            .any(|p| p.to_string_lossy().contains("examples/config")),
        "{files:?}"
    );
    for file in files {
        let raw = session_recorder::config::RawConfig::from_file(&file)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        // CA and certificate files named by a sample may not exist on a build machine: check
        // everything else by validating with them removed.
        let mut relaxed = raw.clone();
        relaxed.storage.ca_file = None;
        relaxed.http.tls_cert = None;
        relaxed.http.tls_key = None;
        relaxed.http.allow_plain_http = true;
        if let Err(e) = relaxed.validate() {
            panic!("{}: {e}", file.display());
        }
    }
}

#[test]
fn invalid_config_files_are_rejected_naming_the_key() {
    let cases = [
        ("queue-length = 65", "queue-length"),
        ("segment-size-mb = 0", "segment-size-mb"),
        ("disk-floor-mb = 1", "disk-floor-mb"),
        ("retention-hours = 100000", "retention-hours"),
        ("data-dir = \"\"", "data-dir"),
        ("[video]\nbitrate-kbps = 1", "video.bitrate-kbps"),
        ("[video]\nframerate = 0", "video.framerate"),
        ("[video]\nheight = 720", "video.width"),
        (
            "[storage]\nupload-location = \"s3://bucket/x.mp4\"",
            "storage.object-storage-key",
        ),
        (
            "[storage]\nupload-location = \"file:///tmp/x.mkv\"",
            "storage.upload-location",
        ),
        (
            "[storage]\nca-file = \"/nonexistent/ca.pem\"",
            "storage.ca-file",
        ),
        ("[tap]\nlisten = \"localhost\"", "tap.listen"),
        ("[tap]\nupstream = \"127.0.0.1:4822\"", "tap.upstream"),
        ("[http]\nlisten = \"0.0.0.0:8480\"", "http.allow-plain-http"),
        ("[http]\ntls-key = \"/k.pem\"", "http.tls-cert"),
        ("queue-lenght = 2", "queue-lenght"),
        ("[video]\nfps = 10", "fps"),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (i, (text, key)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad-{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let err = session_recorder::config::Config::load(Some(&path))
            .map(|_| ())
            .expect_err(text);
        let message = err.to_string();
        assert!(message.contains(key), "{text:?} -> {message}");
    }
}

// ---- helpers ----

fn fcntl_write_lock(file: &std::fs::File) {
    // SAFETY: zeroed flock is valid; the fd is open for writing for the call.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = libc::F_WRLCK as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &lock) };
    assert_eq!(rc, 0, "fcntl lock: {}", std::io::Error::last_os_error());
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// The first video stream's codec per ffprobe, or `None` when ffprobe is not installed.
fn ffprobe_codec(path: &Path) -> Option<String> {
    let out = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-show_entries"])
        .args(["stream=codec_name", "-of", "default=nw=1:nk=1"])
        .arg(path)
        .output()
        .ok()?;
    assert!(out.status.success(), "ffprobe rejects {}", path.display());
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}
