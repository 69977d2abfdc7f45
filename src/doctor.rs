//! `session-recorder doctor`: checks a box end to end and explains each finding in plain words,
//! with what to do about it.
//!
//! Owns the checks and their wording: config valid, data and spool directories writable, free
//! disk against the floor, x264 able to encode, guacd answering at the tap's upstream address,
//! the bucket writable, readable and deletable. It does not fix anything and does not start any
//! part of the daemon. Called by `main.rs` (`session-recorder doctor`) and the weekly
//! `session-recorder-doctor.timer`; tests call [`check`] with simulated disks and stores.
//!
//! The free-space probe and the bucket are trait objects ([`DiskProbe`], [`BucketProbe`]) so a
//! test can simulate a full disk or a store that refuses the key.

use std::fmt;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, ConfigError, DEFAULT_CONFIG_PATH, StorageConfig};
use crate::disk::{DiskProbe, DiskState, DiskWatch, SystemProbe};
use crate::encode::VideoSettings;
use crate::encode::convert::I420;
use crate::encode::x264::{Encoder, X264Params};
use crate::limits::{DOCTOR_GUACD_REPLY_BYTES_MAX, DOCTOR_GUACD_TIMEOUT_MS, DOCTOR_X264_FRAME_PX};
use crate::upload::{self, ObjectStore, StoreErrorKind};

/// `session-recorder doctor` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct DoctorArgs {
    /// The config file to check.
    #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    /// The protocol named in the `select` sent to guacd; guacd must have its plugin.
    #[arg(long, default_value = "vnc")]
    pub guacd_protocol: String,
}

/// Why `doctor` could not check anything at all.
#[derive(Debug, thiserror::Error)]
pub enum DoctorError {
    /// The config file is missing, unreadable or invalid: nothing else can be checked.
    #[error(
        "config {path} is not usable: {source}. Fix the named setting (see docs: Operating the \
         appliance) and run `session-recorder doctor` again"
    )]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        source: ConfigError,
    },
}

impl crate::error::Classify for DoctorError {
    fn is_transient(&self) -> bool {
        match self {
            DoctorError::Config { source, .. } => source.is_transient(),
        }
    }
}

/// What `doctor` checks, in the order it checks them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// The config file parses and validates.
    Config,
    /// Which user the checks run as.
    User,
    /// The data directory (queue, clips, segments) is writable.
    DataDir,
    /// The spool directory (guacd's recording-path) is writable.
    SpoolDir,
    /// Free disk space against the floor.
    Disk,
    /// x264 opens and encodes a frame.
    X264,
    /// guacd answers `select` with `args` at the tap's upstream address.
    Guacd,
    /// The bucket takes, returns and deletes a probe object.
    Bucket,
    /// The manifest signing key in the data directory (its public key is printed).
    SigningKey,
    /// The history role's index: the manifest prefix can be listed, keys are trusted.
    Fleet,
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad`, so that the report can align the names with `{:<10}`.
        f.pad(match self {
            Check::Config => "config",
            Check::User => "user",
            Check::DataDir => "data-dir",
            Check::SpoolDir => "spool-dir",
            Check::Disk => "disk",
            Check::X264 => "x264",
            Check::Guacd => "guacd",
            Check::Bucket => "bucket",
            Check::SigningKey => "signing-key",
            Check::Fleet => "fleet",
        })
    }
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Fine.
    Pass,
    /// Works, but degraded or not fully checked.
    Warn,
    /// Blocks recording, or recordings will be lost.
    Fail,
    /// Not checked because it does not apply (e.g. the tap is disabled).
    Skipped,
}

/// One finding: what was checked, the verdict, what was found and what to do.
#[derive(Debug, Clone)]
pub struct Finding {
    /// The check.
    pub check: Check,
    /// Its verdict.
    pub verdict: Verdict,
    /// What was found, in plain words.
    pub summary: String,
    /// What to do about it; `None` when nothing needs doing.
    pub advice: Option<String>,
}

/// Every finding of one `doctor` run.
#[derive(Debug, Clone, Default)]
pub struct DoctorReport {
    /// The findings, in check order.
    pub findings: Vec<Finding>,
}

impl DoctorReport {
    /// The finding of `check`, if it ran.
    pub fn finding(&self, check: Check) -> Option<&Finding> {
        self.findings.iter().find(|f| f.check == check)
    }

    /// Whether any finding blocks recording (or means recordings will be lost).
    pub fn blocks_recording(&self) -> bool {
        self.findings.iter().any(|f| f.verdict == Verdict::Fail)
    }

    /// The process exit code: 0 when nothing blocks recording, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        i32::from(self.blocks_recording())
    }

    fn push(&mut self, check: Check, verdict: Verdict, summary: String, advice: Option<String>) {
        self.findings.push(Finding {
            check,
            verdict,
            summary,
            advice,
        });
    }
}

impl fmt::Display for DoctorReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for finding in &self.findings {
            let tag = match finding.verdict {
                Verdict::Pass => " OK ",
                Verdict::Warn => "WARN",
                Verdict::Fail => "FAIL",
                Verdict::Skipped => "SKIP",
            };
            writeln!(f, "[{tag}] {:<10} {}", finding.check, finding.summary)?;
            if let Some(advice) = &finding.advice {
                writeln!(f, "       {:<10} what to do: {advice}", "")?;
            }
        }
        let failures = self
            .findings
            .iter()
            .filter(|f| f.verdict == Verdict::Fail)
            .count();
        if failures == 0 {
            writeln!(f, "verdict: ready to record")
        } else {
            writeln!(
                f,
                "verdict: {failures} problem(s) block recording or lose recordings"
            )
        }
    }
}

/// Why a bucket probe failed, in the categories an operator acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BucketFailureKind {
    /// Connection refused, DNS failure, timeout, a transfer broken off: the store is down or
    /// unreachable.
    Unreachable,
    /// The store answered 5xx or "slow down".
    ServerError,
    /// 403, bad signature, unknown access key.
    AccessDenied,
    /// The bucket does not exist.
    BucketMissing,
    /// The TLS handshake failed (untrusted or invalid certificate).
    Tls,
    /// The local bucket directory cannot be written or read.
    LocalIo,
    /// The store returned something other than what was written.
    Inconsistent,
    /// The storage settings are invalid (location template, endpoint, CA file).
    Settings,
    /// Anything else the store refused.
    Other,
}

impl From<StoreErrorKind> for BucketFailureKind {
    fn from(kind: StoreErrorKind) -> Self {
        use StoreErrorKind as S;
        match kind {
            S::Unreachable | S::Timeout | S::Transfer | S::ClientGone => Self::Unreachable,
            S::ServerError => Self::ServerError,
            S::AccessDenied => Self::AccessDenied,
            S::BucketMissing => Self::BucketMissing,
            S::Tls => Self::Tls,
            S::LocalIo | S::SourceIo => Self::LocalIo,
            S::Inconsistent => Self::Inconsistent,
            S::Settings | S::InvalidKey => Self::Settings,
            S::Rejected | S::NotFound => Self::Other,
        }
    }
}

/// A failed bucket probe.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{detail}")]
pub struct BucketFailure {
    /// The category.
    pub kind: BucketFailureKind,
    /// The store's own words.
    pub detail: String,
}

/// The one thing `doctor` needs from an object store; [`StoreBucket`] gives it for the upload
/// stage's stores, tests simulate it.
pub trait BucketProbe {
    /// Writes a small probe object, reads it back and deletes it.
    ///
    /// # Errors
    /// The first failing step, categorised.
    fn probe(&self) -> Result<(), BucketFailure>;

    /// Where objects go, without secrets, for the report.
    fn describe(&self) -> String;
}

/// An upload-stage store, probed with [`ObjectStore::probe`] (put, head, get, delete).
pub struct StoreBucket(pub Arc<dyn ObjectStore>);

impl BucketProbe for StoreBucket {
    fn probe(&self) -> Result<(), BucketFailure> {
        self.0.probe().map_err(|e| BucketFailure {
            kind: e.kind().into(),
            detail: e.to_string(),
        })
    }

    fn describe(&self) -> String {
        self.0.describe()
    }
}

/// A store that could not even be opened: every probe reports why.
struct UnopenedBucket {
    location: String,
    failure: BucketFailure,
}

impl BucketProbe for UnopenedBucket {
    fn probe(&self) -> Result<(), BucketFailure> {
        Err(self.failure.clone())
    }

    fn describe(&self) -> String {
        self.location.clone()
    }
}

/// The bucket `storage` names, opened through the upload stage (no network contact yet).
pub fn open_bucket(storage: &StorageConfig) -> Box<dyn BucketProbe> {
    match upload::open_store(&storage.upload_settings()) {
        Ok(store) => Box::new(StoreBucket(store)),
        Err(e) => {
            let kind = match &e {
                upload::OpenStoreError::Settings(_) => BucketFailureKind::Settings,
                upload::OpenStoreError::Store(s) => s.kind().into(),
            };
            Box::new(UnopenedBucket {
                // Bucket, endpoint and template only: the location never holds secrets.
                location: storage.upload_location.clone(),
                failure: BucketFailure {
                    kind,
                    detail: e.to_string(),
                },
            })
        }
    }
}

/// What the checks talk to; real in `run`, simulated in tests.
pub struct Environment<'a> {
    /// Free-space probe.
    pub disk: &'a dyn DiskProbe,
    /// The bucket.
    pub bucket: &'a dyn BucketProbe,
    /// The protocol named in the `select` sent to guacd.
    pub guacd_protocol: &'a str,
}

/// Loads the config named in `args` and checks the box with the real disk, x264, guacd and
/// bucket.
///
/// # Errors
/// [`DoctorError::Config`] when the config cannot be loaded; every other problem is a finding.
pub fn run(args: &DoctorArgs) -> Result<DoctorReport, DoctorError> {
    let (config, _raw) =
        Config::load(Some(&args.config)).map_err(|source| DoctorError::Config {
            path: args.config.clone(),
            source,
        })?;
    // Checked as the daemon's user, so that "writable" means writable for it, and so that a
    // probe never leaves root-owned directories in the daemon's way.
    let identity = become_service_user();
    let bucket = open_bucket(&config.storage);
    let env = Environment {
        disk: &SystemProbe,
        bucket: bucket.as_ref(),
        guacd_protocol: &args.guacd_protocol,
    };
    let mut report = check(&args.config, &config, &env);
    if let Some(finding) = identity {
        report.findings.insert(1, finding);
    }
    Ok(report)
}

/// The system user the daemon runs as (systemd/session-recorder.sysusers).
pub const SERVICE_USER: &str = "session-recorder";

/// When running as root, switches to [`SERVICE_USER`] for good. Returns a finding when there
/// was something to say (switched, or could not).
fn become_service_user() -> Option<Finding> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let finding = |verdict, summary: String, advice: Option<String>| Finding {
        check: Check::User,
        verdict,
        summary,
        advice,
    };
    let name = std::ffi::CString::new(SERVICE_USER).expect("no NUL in the user name");
    // SAFETY: name is a valid C string; getpwnam returns NULL or a pointer to a static entry
    // that stays valid until the next getpw* call, and is read right away.
    let entry = unsafe { libc::getpwnam(name.as_ptr()) };
    if entry.is_null() {
        return Some(finding(
            Verdict::Warn,
            format!(
                "running as root and there is no {SERVICE_USER} user: directories are checked for root"
            ),
            Some("create the user (systemd-sysusers) so doctor checks what the daemon sees".into()),
        ));
    }
    // SAFETY: entry is non-null and points to a valid passwd entry (see above).
    let (uid, gid) = unsafe { ((*entry).pw_uid, (*entry).pw_gid) };
    // SAFETY: plain system calls on integers and a one-element array that outlives the call.
    let dropped = unsafe {
        libc::setgroups(1, &gid) == 0 && libc::setgid(gid) == 0 && libc::setuid(uid) == 0
    };
    if dropped {
        Some(finding(
            Verdict::Pass,
            format!("checking as user {SERVICE_USER} (uid {uid}, gid {gid}), as the daemon runs"),
            None,
        ))
    } else {
        Some(finding(
            Verdict::Warn,
            format!(
                "cannot switch to user {SERVICE_USER}: {}; directories are checked for root",
                std::io::Error::last_os_error()
            ),
            Some("run `systemctl start session-recorder-doctor` and read its journal".into()),
        ))
    }
}

/// Runs every check against a loaded config.
pub fn check(config_path: &Path, config: &Config, env: &Environment<'_>) -> DoctorReport {
    let mut report = DoctorReport::default();
    report.push(
        Check::Config,
        Verdict::Pass,
        format!(
            "{} is valid (data-dir {}, spool-dir {}, tap {} -> guacd {})",
            config_path.display(),
            config.data_dir.display(),
            config.spool_dir.display(),
            config.tap.listen,
            config.tap.upstream
        ),
        None,
    );
    check_dir(&mut report, Check::DataDir, &config.data_dir);
    check_dir(&mut report, Check::SpoolDir, &config.spool_dir);
    check_disk(&mut report, config, env.disk);
    check_x264(&mut report, &config.video.encoder_settings());
    check_guacd(&mut report, config, env.guacd_protocol);
    check_bucket(&mut report, env.bucket);
    check_signing_key(&mut report, &config.data_dir);
    check_fleet(&mut report, config);
    report
}

/// The appliance's manifest signing key: present with tight permissions; prints the public key
/// the history role must trust.
fn check_signing_key(report: &mut DoctorReport, data_dir: &Path) {
    use crate::manifest::keys;
    let path = keys::key_path(data_dir);
    match keys::read(&path) {
        Ok(key) => report.push(
            Check::SigningKey,
            Verdict::Pass,
            format!(
                "manifests are signed with public key {} ({}); the history role trusts it \
                 when it is in its [fleet] trusted-keys",
                keys::public_hex(&key),
                path.display()
            ),
            None,
        ),
        Err(keys::KeyError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            report.push(
                Check::SigningKey,
                Verdict::Warn,
                format!("{} does not exist yet", path.display()),
                Some("it is created on the daemon's first start; run doctor again then".into()),
            )
        }
        Err(e) => report.push(
            Check::SigningKey,
            Verdict::Fail,
            e.to_string(),
            Some(format!(
                "chmod 0600 {0} and chown it to session-recorder; if it is damaged, remove it \
                 (a new key is made at start) and update the history role's trusted-keys",
                path.display()
            )),
        ),
    }
}

/// The history role: one listing of the manifest prefix must work.
fn check_fleet(report: &mut DoctorReport, config: &Config) {
    // Only a history role has an index to check: appliances get no extra line.
    let Some(fleet) = &config.fleet else {
        return;
    };
    let settings = config.storage.upload_settings();
    let listed = crate::upload::open_target(&settings, &fleet.target).and_then(|store| {
        let prefix = if fleet.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", fleet.prefix)
        };
        store.list_page(&prefix, None, None)
    });
    match listed {
        Ok(page) => report.push(
            Check::Fleet,
            Verdict::Pass,
            format!(
                "{} lists ({}{} objects in the first page), {} trusted key(s)",
                fleet.index,
                page.objects.len(),
                if page.next_token.is_some() { "+" } else { "" },
                fleet.trusted_keys.len()
            ),
            None,
        ),
        Err(e) => report.push(
            Check::Fleet,
            Verdict::Fail,
            format!("{} cannot be listed: {e}", fleet.index),
            Some(
                "check fleet.index (bucket, endpoint, prefix) and the [storage] key and secret: \
                 the key needs list and read rights on the bucket"
                    .into(),
            ),
        ),
    }
}

/// A directory exists and takes a file (created, written, synced, deleted).
fn check_dir(report: &mut DoctorReport, check: Check, dir: &Path) {
    let advice = |what: &str| {
        Some(format!(
            "{what}; on the appliance the unit creates /var/lib/session-recorder \
             (StateDirectory=) and tmpfiles creates /var/spool/guacamole-recordings: run \
             `systemd-tmpfiles --create` and check the owner is session-recorder"
        ))
    };
    if !dir.is_dir() {
        let what = format!(
            "create {} writable by the session-recorder user",
            dir.display()
        );
        report.push(
            check,
            Verdict::Fail,
            format!("{} does not exist or is not a directory", dir.display()),
            advice(&what),
        );
        return;
    }
    let path = dir.join(format!(".doctor-{}.tmp", std::process::id()));
    let written = std::fs::File::create(&path).and_then(|mut f| {
        f.write_all(b"doctor")?;
        f.sync_all()
    });
    let removed = std::fs::remove_file(&path);
    match written.and(removed) {
        Ok(()) => report.push(
            check,
            Verdict::Pass,
            format!("{} is writable", dir.display()),
            None,
        ),
        Err(e) => {
            let what = format!(
                "make {} writable by the session-recorder user",
                dir.display()
            );
            report.push(
                check,
                Verdict::Fail,
                format!("cannot write to {}: {e}", dir.display()),
                advice(&what),
            );
        }
    }
}

/// Free space on the filesystems of the data and spool directories against the floor.
fn check_disk(report: &mut DoctorReport, config: &Config, probe: &dyn DiskProbe) {
    let mut dirs = vec![&config.data_dir];
    if config.spool_dir != config.data_dir {
        dirs.push(&config.spool_dir);
    }
    let floor_mb = config.disk_floor_bytes / 1_000_000;
    let mut worst: Option<(DiskState, &PathBuf, Option<u64>)> = None;
    for dir in dirs {
        let mut watch = DiskWatch::new(dir.clone(), config.disk_floor_bytes);
        let state = watch.sample(probe);
        let rank = |s: DiskState| match s {
            DiskState::Available => 0,
            DiskState::Low => 1,
            DiskState::Critical => 2,
            DiskState::Unknown => 3,
        };
        if worst.is_none_or(|(w, _, _)| rank(state) > rank(w)) {
            worst = Some((state, dir, watch.free_bytes()));
        }
    }
    let Some((state, dir, free)) = worst else {
        unreachable!("at least the data directory is sampled");
    };
    let free_mb = free.map_or_else(|| "?".to_string(), |b| (b / 1_000_000).to_string());
    let free_up = format!(
        "free space on {}: delete old files, let the upload backlog drain, or grow the disk; \
         or lower disk-floor-mb (now {floor_mb})",
        dir.display()
    );
    let (verdict, summary, advice) = match state {
        DiskState::Available => (
            Verdict::Pass,
            format!(
                "{free_mb} MB free on {}, floor {floor_mb} MB: disk available",
                dir.display()
            ),
            None,
        ),
        DiskState::Low => (
            Verdict::Fail,
            format!(
                "only {free_mb} MB free on {}, below the floor of {floor_mb} MB: disk low, new \
                 recorded sessions are refused",
                dir.display()
            ),
            Some(format!("make at least {floor_mb} MB of {free_up}")),
        ),
        DiskState::Critical => (
            Verdict::Fail,
            format!(
                "only {free_mb} MB free on {}, below half the floor of {floor_mb} MB: disk \
                 critical, recorded sessions are closed",
                dir.display()
            ),
            Some(format!("make at least {floor_mb} MB of {free_up}")),
        ),
        DiskState::Unknown => (
            Verdict::Fail,
            format!(
                "cannot measure free space on {}: disk unknown, treated as full",
                dir.display()
            ),
            Some(format!(
                "check that {} exists and the filesystem is healthy (dmesg, journalctl -k)",
                dir.display()
            )),
        ),
    };
    report.push(Check::Disk, verdict, summary, advice);
}

/// Opens an x264 encoder and encodes one tiny frame.
fn check_x264(report: &mut DoctorReport, video: &VideoSettings) {
    match encode_test_frame(video) {
        Ok(bytes) => report.push(
            Check::X264,
            Verdict::Pass,
            format!(
                "libx264 build {} encodes ({bytes} bytes for a {px}x{px} test frame)",
                x264_sys::X264_BUILD,
                px = DOCTOR_X264_FRAME_PX
            ),
            None,
        ),
        Err(e) => report.push(
            Check::X264,
            Verdict::Fail,
            format!("libx264 does not encode: {e}; segments will not become clips"),
            Some(format!(
                "install Debian's libx264-{} (apt-get install libx264-{})",
                x264_sys::X264_BUILD,
                x264_sys::X264_BUILD
            )),
        ),
    }
}

/// Encodes one grey frame with [`Encoder`] as the daemon would (its `[video]` preset,
/// quantiser and threads), a forced IDR then a flush; returns the bytes x264 produced.
fn encode_test_frame(video: &VideoSettings) -> Result<usize, String> {
    let params = X264Params {
        width: DOCTOR_X264_FRAME_PX,
        height: DOCTOR_X264_FRAME_PX,
        fps: video.fps,
        timebase_den: video.fps,
        qp: video.qp,
        preset: video.preset.as_str(),
        threads: video.threads,
    };
    let mut encoder = Encoder::open(&params).map_err(|e| e.to_string())?;
    let picture = I420::new(DOCTOR_X264_FRAME_PX, DOCTOR_X264_FRAME_PX);
    let mut produced = encoder
        .encode(&picture, 0, true)
        .map_err(|e| e.to_string())?
        .map_or(0, |f| f.data.len());
    while let Some(frame) = encoder.flush().map_err(|e| e.to_string())? {
        produced += frame.data.len();
    }
    if produced == 0 {
        return Err("the encoder produced no output for a test frame".into());
    }
    Ok(produced)
}

/// Connects to guacd, sends `select`, expects `args`.
fn check_guacd(report: &mut DoctorReport, config: &Config, protocol: &str) {
    if !config.tap.enabled {
        report.push(
            Check::Guacd,
            Verdict::Skipped,
            "the tap is disabled (tap.enabled = false): only guacd's own recordings are imported"
                .into(),
            None,
        );
        return;
    }
    let upstream = &config.tap.upstream;
    let move_guacd = format!(
        "start guacd listening on {upstream} (e.g. `guacd -b 127.0.0.1 -l 4823`, or \
         GUACD_PORT/`bind_port` in guacd.conf) and keep the tap on {} where clients expect \
         guacd; or set tap.upstream to where guacd listens",
        config.tap.listen
    );
    match ask_guacd(upstream, protocol) {
        Ok(GuacdAnswer::Args(version)) => report.push(
            Check::Guacd,
            Verdict::Pass,
            format!("guacd at {upstream} answers `select {protocol}` (protocol {version})"),
            None,
        ),
        Ok(GuacdAnswer::Error(message)) => report.push(
            Check::Guacd,
            Verdict::Warn,
            format!("guacd at {upstream} refused `select {protocol}`: {message}"),
            Some(format!(
                "guacd runs but lacks the {protocol} plugin; run doctor with \
                 --guacd-protocol rdp (or ssh, telnet, kubernetes) to test one it has"
            )),
        ),
        Ok(GuacdAnswer::Other(opcode)) => report.push(
            Check::Guacd,
            Verdict::Fail,
            format!("{upstream} answered `{opcode}` instead of `args`: it is not guacd"),
            Some(move_guacd),
        ),
        Err(e) => report.push(
            Check::Guacd,
            Verdict::Fail,
            format!("guacd at {upstream} does not answer ({e}): every recorded session is refused"),
            Some(move_guacd),
        ),
    }
}

/// What guacd sent back to `select`.
#[derive(Debug, PartialEq, Eq)]
enum GuacdAnswer {
    /// `args`, with the protocol version it announced (first argument).
    Args(String),
    /// `error`, with its message.
    Error(String),
    /// Any other opcode.
    Other(String),
}

fn ask_guacd(upstream: &str, protocol: &str) -> Result<GuacdAnswer, String> {
    let timeout = Duration::from_millis(DOCTOR_GUACD_TIMEOUT_MS);
    let addrs: Vec<_> = upstream
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {upstream}: {e}"))?
        .collect();
    let mut last = format!("{upstream} resolves to no address");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(stream) => return select_args(stream, protocol, timeout),
            Err(e) => last = format!("connect to {addr}: {e}"),
        }
    }
    Err(last)
}

fn select_args(
    mut stream: TcpStream,
    protocol: &str,
    timeout: Duration,
) -> Result<GuacdAnswer, String> {
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| e.to_string())?;
    let select = format!("6.select,{}.{protocol};", protocol.chars().count());
    stream
        .write_all(select.as_bytes())
        .map_err(|e| format!("send select: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(elements) = parse_instruction(&buf)? {
            let _ = stream.shutdown(std::net::Shutdown::Both);
            let mut elements = elements.into_iter();
            let opcode = elements.next().unwrap_or_default();
            let first = elements.next().unwrap_or_default();
            return Ok(match opcode.as_str() {
                "args" => GuacdAnswer::Args(first),
                "error" => GuacdAnswer::Error(first),
                _ => GuacdAnswer::Other(opcode),
            });
        }
        if buf.len() >= DOCTOR_GUACD_REPLY_BYTES_MAX {
            return Err(format!(
                "no complete instruction in the first {DOCTOR_GUACD_REPLY_BYTES_MAX} bytes"
            ));
        }
        let n = stream
            .read(&mut chunk)
            .map_err(|e| format!("waiting for args: {e}"))?;
        if n == 0 {
            return Err("the connection closed before an answer".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The elements of the first complete Guacamole instruction in `buf`, `None` when more bytes
/// are needed: the tap's handshake parser (`guac::Parser` under the handshake limits).
fn parse_instruction(buf: &[u8]) -> Result<Option<Vec<String>>, String> {
    crate::ingest::handshake::parse_instruction(buf)
        .map(|found| found.map(|(instruction, _)| instruction.elements))
        .map_err(|e| e.to_string())
}

/// Writes, reads back and deletes a probe object.
fn check_bucket(report: &mut DoctorReport, bucket: &dyn BucketProbe) {
    let name = bucket.describe();
    let Err(failure) = bucket.probe() else {
        report.push(
            Check::Bucket,
            Verdict::Pass,
            format!("{name}: a probe object was written, read back and deleted"),
            None,
        );
        return;
    };
    use BucketFailureKind as K;
    let (verdict, advice) = match failure.kind {
        K::Unreachable => (
            Verdict::Fail,
            "check the endpoint in storage.upload-location, DNS, the firewall and that the store \
             is up; clips wait locally until retention-hours, then expire",
        ),
        K::AccessDenied => (
            Verdict::Fail,
            "check storage.object-storage-key and object-storage-secret, and that the key may \
             put, get and delete in this bucket",
        ),
        K::BucketMissing => (
            Verdict::Fail,
            "create the bucket named in storage.upload-location, or fix the name",
        ),
        K::Tls => (
            Verdict::Fail,
            "the store's certificate is not trusted: set storage.ca-file to your CA's PEM bundle, \
             or fix the certificate's name",
        ),
        K::LocalIo => (
            Verdict::Fail,
            "make the bucket directory writable by the session-recorder user and check free space",
        ),
        K::Inconsistent => (
            Verdict::Fail,
            "the store returned something else than was written: check for a proxy or a \
             misconfigured gateway in front of it",
        ),
        K::ServerError => (
            Verdict::Fail,
            "the store itself is failing (5xx): check its health and logs; uploads retry \
             with backoff meanwhile",
        ),
        K::Settings => (
            Verdict::Fail,
            "fix storage.upload-location (or ca-file) as the message says; the key template \
             needs {session_id} with {clip_index} or {timestamp_ms}",
        ),
        K::Other => (
            Verdict::Fail,
            "read the store's message above; the status page shows the upload side's last error",
        ),
    };
    report.push(
        Check::Bucket,
        verdict,
        format!("{name}: probe failed ({:?}): {failure}", failure.kind),
        Some(advice.to_string()),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Option<Vec<String>> {
        parse_instruction(s.as_bytes()).expect("well formed")
    }

    #[test]
    fn parses_args_and_waits_for_more() {
        assert_eq!(
            parse("4.args,13.VERSION_1_5_0,8.hostname;"),
            Some(vec![
                "args".into(),
                "VERSION_1_5_0".into(),
                "hostname".into()
            ])
        );
        assert_eq!(parse("4.args,13.VERSION_1_"), None);
        assert_eq!(parse("4.args"), None);
        assert_eq!(parse("4.ar"), None);
        assert_eq!(parse(""), None);
    }

    #[test]
    fn lengths_count_characters_not_bytes() {
        assert_eq!(
            parse("5.error,6.héllo✓,3.519;"),
            Some(vec!["error".into(), "héllo✓".into(), "519".into()])
        );
        // Cut inside a multi-byte character: more bytes needed, not an error.
        let full = "5.error,2.é✓;".as_bytes();
        for cut in 0..full.len() {
            assert_eq!(
                parse_instruction(&full[..cut]).expect("prefix"),
                None,
                "{cut}"
            );
        }
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(parse_instruction(b"HTTP/1.1 400 Bad Request\r\n").is_err());
        assert!(parse_instruction(b"4.argsX").is_err());
    }

    #[test]
    fn x264_encodes_a_test_frame() {
        let bytes = encode_test_frame(&VideoSettings::default()).expect("x264 works");
        assert!(bytes > 0);
    }
}
