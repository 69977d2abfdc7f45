//! `session-recorder doctor`: a healthy box and each broken case (bad key, full disk, guacd
//! down, guacd without the plugin, missing spool), through `doctor::check` with simulated disks
//! and stores, and through the real binary for exit codes.
//!
//! The bucket checks use the upload stage's real stores: the local directory store, and a real
//! Garage S3 server (scripts/s3-test-server, stopped by PID) with a right and a wrong secret.

use crate::util::garage;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::JoinHandle;

use session_recorder::config::Config;
use session_recorder::disk::FixedProbe;
use session_recorder::doctor::{
    self, BucketFailure, BucketFailureKind, BucketProbe, Check, DoctorReport, Environment, Verdict,
};

const GB: u64 = 1_000_000_000;
const MB: u64 = 1_000_000;

/// A fake guacd on 127.0.0.1: accepts one connection, reads the `select`, answers `reply`,
/// hands back what it received.
struct FakeGuacd {
    addr: SocketAddr,
    thread: JoinHandle<String>,
}

impl FakeGuacd {
    fn start(reply: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fake guacd");
        let addr = listener.local_addr().expect("local addr");
        let thread = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().expect("accept");
            let mut got = Vec::new();
            let mut byte = [0u8; 1];
            while conn.read(&mut byte).expect("read select") == 1 {
                got.push(byte[0]);
                if byte[0] == b';' {
                    break;
                }
            }
            conn.write_all(reply.as_bytes()).expect("reply");
            String::from_utf8(got).expect("utf-8 select")
        });
        Self { addr, thread }
    }

    fn received(self) -> String {
        self.thread.join().expect("fake guacd thread")
    }
}

/// A port nothing listens on: bound, then closed.
fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

struct Box_ {
    _tmp: tempfile::TempDir,
    data: PathBuf,
    config_path: PathBuf,
    config: Config,
}

/// A temp data dir with a spool and a local bucket, the tap pointed at `upstream`.
fn healthy_box(upstream: SocketAddr) -> Box_ {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    std::fs::create_dir_all(data.join("spool")).expect("spool");
    let text = format!(
        "data-dir = \"{data}\"\ndisk-floor-mb = 500\n\
         [storage]\nupload-location = \"file://{data}/bucket/{{session_id}}-{{clip_index}}.mp4\"\n\
         [tap]\nlisten = \"127.0.0.1:1\"\nupstream = \"{upstream}\"\n",
        data = data.display()
    );
    let config_path = tmp.path().join("config.toml");
    std::fs::write(&config_path, &text).expect("write config");
    let config = Config::from_toml(&text).expect("valid test config");
    Box_ {
        _tmp: tmp,
        data,
        config_path,
        config,
    }
}

fn run_check(b: &Box_, disk: &FixedProbe, bucket: &dyn BucketProbe) -> DoctorReport {
    let env = Environment {
        disk,
        bucket,
        guacd_protocol: "vnc",
    };
    doctor::check(&b.config_path, &b.config, &env)
}

fn local_bucket(b: &Box_) -> Box<dyn BucketProbe> {
    doctor::open_bucket(&b.config.storage)
}

/// Every regular file under `dir`.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            found.extend(files_under(&path));
        } else {
            found.push(path);
        }
    }
    found
}

fn verdict(report: &DoctorReport, check: Check) -> Verdict {
    report.finding(check).expect("check ran").verdict
}

const ARGS_REPLY: &str = "4.args,13.VERSION_1_5_0,8.hostname,4.port,8.password;";

#[test]
fn healthy_box_passes_every_check() {
    let guacd = FakeGuacd::start(ARGS_REPLY);
    let b = healthy_box(guacd.addr);
    // The daemon made its signing key at its first start.
    let key = session_recorder::manifest::keys::load_or_create(&b.data).unwrap();
    let report = run_check(&b, &FixedProbe::new(100 * GB), local_bucket(&b).as_ref());
    assert_eq!(guacd.received(), "6.select,3.vnc;");
    println!("{report}");
    for f in &report.findings {
        assert_eq!(f.verdict, Verdict::Pass, "{report}");
        assert!(f.advice.is_none(), "{report}");
    }
    assert_eq!(report.findings.len(), 8, "{report}");
    assert_eq!(report.exit_code(), 0);
    let text = report.to_string();
    let public = session_recorder::manifest::keys::public_hex(&key);
    assert!(
        text.contains(&public),
        "doctor shows the public key: {text}"
    );
    assert!(text.contains("VERSION_1_5_0"), "{text}");
    assert!(text.contains("verdict: ready to record"), "{text}");
    assert!(text.contains("bucket"), "{text}");
    // The probe went through the bucket directory and cleaned up after itself.
    assert!(b.data.join("bucket").is_dir(), "{text}");
    assert_eq!(files_under(&b.data.join("bucket")), Vec::<PathBuf>::new());
}

/// A store that refuses the key, as S3 does with a wrong secret (simulated; the Garage test below
/// does it for real).
struct DenyingStore;

impl BucketProbe for DenyingStore {
    fn probe(&self) -> Result<(), BucketFailure> {
        Err(BucketFailure {
            kind: BucketFailureKind::AccessDenied,
            detail: "403 SignatureDoesNotMatch".into(),
        })
    }
    fn describe(&self) -> String {
        "s3://clips@127.0.0.1:3900".into()
    }
}

#[test]
fn simulated_bad_key_fails_with_key_advice() {
    let guacd = FakeGuacd::start(ARGS_REPLY);
    let b = healthy_box(guacd.addr);
    let report = run_check(&b, &FixedProbe::new(100 * GB), &DenyingStore);
    guacd.received();
    let f = report.finding(Check::Bucket).expect("bucket");
    assert_eq!(f.verdict, Verdict::Fail, "{report}");
    assert!(f.summary.contains("SignatureDoesNotMatch"), "{report}");
    assert!(
        f.advice
            .as_deref()
            .unwrap_or("")
            .contains("object-storage-secret")
    );
    assert_eq!(report.exit_code(), 1);
    assert_eq!(verdict(&report, Check::Guacd), Verdict::Pass);
}

#[test]
fn full_disk_is_critical_and_low_disk_is_low() {
    for (free, word) in [
        (0, "critical"),
        (200 * MB, "critical"),
        (400 * MB, "disk low"),
    ] {
        let guacd = FakeGuacd::start(ARGS_REPLY);
        let b = healthy_box(guacd.addr);
        let report = run_check(&b, &FixedProbe::new(free), local_bucket(&b).as_ref());
        guacd.received();
        let f = report.finding(Check::Disk).expect("disk");
        assert_eq!(f.verdict, Verdict::Fail, "{report}");
        assert!(f.summary.contains(word), "{free}: {report}");
        assert!(
            f.advice.as_deref().unwrap_or("").contains("500 MB"),
            "{report}"
        );
        assert_eq!(report.exit_code(), 1);
    }
}

#[test]
fn failing_disk_probe_is_unknown_and_fails_closed() {
    let guacd = FakeGuacd::start(ARGS_REPLY);
    let b = healthy_box(guacd.addr);
    let probe = FixedProbe::new(100 * GB);
    probe.set_failing(true);
    let report = run_check(&b, &probe, local_bucket(&b).as_ref());
    guacd.received();
    let f = report.finding(Check::Disk).expect("disk");
    assert_eq!(f.verdict, Verdict::Fail);
    assert!(f.summary.contains("unknown"), "{report}");
}

#[test]
fn guacd_down_fails_with_where_to_move_it() {
    let b = healthy_box(closed_port());
    let report = run_check(&b, &FixedProbe::new(100 * GB), local_bucket(&b).as_ref());
    let f = report.finding(Check::Guacd).expect("guacd");
    assert_eq!(f.verdict, Verdict::Fail, "{report}");
    assert!(f.summary.contains("does not answer"), "{report}");
    assert!(f.advice.as_deref().unwrap_or("").contains("tap.upstream"));
    assert_eq!(report.exit_code(), 1);
    // Everything else still ran and passed.
    assert_eq!(verdict(&report, Check::Bucket), Verdict::Pass);
    assert_eq!(verdict(&report, Check::X264), Verdict::Pass);
}

#[test]
fn guacd_without_the_plugin_is_a_warning() {
    let guacd = FakeGuacd::start("5.error,22.Protocol not supported,3.519;");
    let b = healthy_box(guacd.addr);
    let report = run_check(&b, &FixedProbe::new(100 * GB), local_bucket(&b).as_ref());
    guacd.received();
    let f = report.finding(Check::Guacd).expect("guacd");
    assert_eq!(f.verdict, Verdict::Warn, "{report}");
    assert!(f.summary.contains("Protocol not supported"), "{report}");
    assert_eq!(report.exit_code(), 0);
}

#[test]
fn something_else_than_guacd_fails() {
    let guacd = FakeGuacd::start("3.nop;");
    let b = healthy_box(guacd.addr);
    let report = run_check(&b, &FixedProbe::new(100 * GB), local_bucket(&b).as_ref());
    guacd.received();
    assert_eq!(verdict(&report, Check::Guacd), Verdict::Fail, "{report}");
}

#[test]
fn missing_spool_and_unwritable_bucket_fail() {
    let guacd = FakeGuacd::start(ARGS_REPLY);
    let b = healthy_box(guacd.addr);
    std::fs::remove_dir(b.data.join("spool")).expect("remove spool");
    // A file where the bucket directory should be: not writable as a directory, even for root.
    std::fs::write(b.data.join("bucket"), b"not a dir").expect("block bucket");
    let report = run_check(&b, &FixedProbe::new(100 * GB), local_bucket(&b).as_ref());
    guacd.received();
    assert_eq!(verdict(&report, Check::SpoolDir), Verdict::Fail, "{report}");
    assert_eq!(verdict(&report, Check::DataDir), Verdict::Pass, "{report}");
    let f = report.finding(Check::Bucket).expect("bucket");
    assert_eq!(f.verdict, Verdict::Fail, "{report}");
    assert!(f.summary.contains("LocalIo"), "{report}");
}

fn doctor_bin(config: &Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_session-recorder"))
        .args(["doctor", "--config"])
        .arg(config)
        .output()
        .expect("run doctor");
    (
        out.status.code().expect("exit code"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn binary_exit_codes_healthy_blocked_bad_config() {
    // Healthy, with the real disk probe: a 10 MB floor any test machine clears.
    let guacd = FakeGuacd::start(ARGS_REPLY);
    let b = healthy_box(guacd.addr);
    let text = std::fs::read_to_string(&b.config_path).expect("read config");
    std::fs::write(
        &b.config_path,
        text.replace("disk-floor-mb = 500", "disk-floor-mb = 10"),
    )
    .expect("write config");
    let (code, stdout, _) = doctor_bin(&b.config_path);
    guacd.received();
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("[ OK ] guacd"), "{stdout}");

    // guacd down: blocked, exit 1.
    let b = healthy_box(closed_port());
    let (code, stdout, _) = doctor_bin(&b.config_path);
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("[FAIL] guacd"), "{stdout}");

    // A misspelt key: exit 78 naming it.
    std::fs::write(&b.config_path, "queue-lenght = 2\n").expect("write config");
    let (code, _, stderr) = doctor_bin(&b.config_path);
    assert_eq!(code, 78, "{stderr}");
    assert!(stderr.contains("queue-lenght"), "{stderr}");
}

/// The box with `[storage]` pointed at Garage, with `secret` as the secret key.
fn s3_box(g: &garage::Garage, upstream: SocketAddr, secret: &str) -> Box_ {
    let b = healthy_box(upstream);
    let text = std::fs::read_to_string(&b.config_path).expect("read config");
    let start = text.find("[storage]").expect("storage table");
    let end = text.find("[tap]").expect("tap table");
    let storage = format!(
        "[storage]\nupload-location = \"s3://{}@{}/{{session_id}}-{{clip_index}}.mp4\"\n\
         object-storage-key = \"{}\"\nobject-storage-secret = \"{secret}\"\n\
         allow-http = true\npath-style = true\n",
        g.bucket,
        g.host_port(),
        g.key
    );
    let text = format!("{}{storage}{}", &text[..start], &text[end..]);
    std::fs::write(&b.config_path, &text).expect("write config");
    let config = Config::from_toml(&text).expect("valid s3 config");
    Box_ { config, ..b }
}

/// Doctor on a box whose bucket is Garage with `secret`; returns the report.
fn s3_doctor(g: &garage::Garage, secret: &str) -> DoctorReport {
    let guacd = FakeGuacd::start(ARGS_REPLY);
    let b = s3_box(g, guacd.addr, secret);
    let bucket = local_bucket(&b);
    let report = run_check(&b, &FixedProbe::new(100 * GB), bucket.as_ref());
    guacd.received();
    report
}

#[test]
fn s3_bucket_right_key_passes_wrong_key_fails_access_denied() {
    let Some(mut g) = garage::garage_or_skip("doctor_s3") else {
        return;
    };
    let secret = g.secret.clone();
    let report = s3_doctor(&g, &secret);
    assert_eq!(verdict(&report, Check::Bucket), Verdict::Pass, "{report}");
    assert_eq!(report.exit_code(), 0, "{report}");
    assert!(g.list_keys("").is_empty(), "the probe object was deleted");

    let wrong = "0".repeat(64);
    let report = s3_doctor(&g, &wrong);
    println!("{report}");
    let f = report.finding(Check::Bucket).expect("bucket");
    assert_eq!(f.verdict, Verdict::Fail, "{report}");
    assert!(f.summary.contains("AccessDenied"), "{report}");
    let advice = f.advice.as_deref().unwrap_or("");
    assert!(advice.contains("object-storage-secret"), "{report}");
    assert!(
        !report.to_string().contains(&wrong),
        "secret printed: {report}"
    );
    assert_eq!(report.exit_code(), 1);

    // The store down: unreachable.
    g.stop();
    let report = s3_doctor(&g, &secret);
    let f = report.finding(Check::Bucket).expect("bucket");
    assert_eq!(f.verdict, Verdict::Fail, "{report}");
    assert!(f.summary.contains("Unreachable"), "{report}");
}
