//! Harness for tests that run the real `session-recorder` binary: a temporary home with a
//! config, a spool and a data directory; start, SIGTERM, SIGKILL; and what the tests inspect
//! afterwards (bucket objects, stray files, the queue).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A daemon home: `<root>/config.toml`, `<root>/spool`, `<root>/data`.
pub struct Home {
    /// Keeps the directory alive.
    pub dir: tempfile::TempDir,
    /// The binary, copied here so that another build into the shared target directory
    /// cannot swap it under a running test.
    pub bin: PathBuf,
}

/// The binary under test, copied once per test process: `$SESSION_RECORDER_BIN` when set
/// (scripts copy a freshly built binary there, because other worktrees build into the same
/// shared target directory), else cargo's own.
pub fn binary() -> &'static Path {
    static BIN: std::sync::OnceLock<(tempfile::TempDir, PathBuf)> = std::sync::OnceLock::new();
    let (_, path) = BIN.get_or_init(|| {
        let src = std::env::var_os("SESSION_RECORDER_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_session-recorder")));
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("session-recorder");
        std::fs::copy(&src, &path).expect("copy binary");
        (dir, path)
    });
    path
}

/// Runs `start` again while exec fails with ETXTBSY: the one copy in [`binary`] can still race
/// a fork in another test thread (the child holds the write descriptor until it execs, which
/// takes microseconds).
pub fn retry_busy<T>(mut start: impl FnMut() -> std::io::Result<T>) -> std::io::Result<T> {
    let mut tries = 0;
    loop {
        match start() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 50 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// The sessions' start date: when the test process first asked, Kasm's format.
pub fn start_date() -> &'static str {
    static START: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    START.get_or_init(|| {
        use session_recorder::clock::{Clock, SystemClock, format_datetime_ms};
        // Whole milliseconds: the sidecar format has microseconds, the queue keeps ms.
        format_datetime_ms(SystemClock.now_ms())
    })
}

/// A running daemon.
pub struct Daemon {
    /// The process.
    pub child: Child,
    /// Its stderr log.
    pub log: PathBuf,
}

impl Home {
    /// A fresh home whose config is the embedded defaults plus `extra` TOML (top-level keys),
    /// the tap off, and HTTP on 127.0.0.1:`http_port` when given (off otherwise).
    pub fn new(extra: &str, http_port: Option<u16>) -> Home {
        let dir = tempfile::tempdir().expect("tempdir");
        let bin = dir.path().join("session-recorder");
        // A hard link, not a copy: copying opens the file for writing, and a process another
        // test thread forks at that moment inherits the write descriptor until it execs, which
        // makes our exec of this file fail with ETXTBSY ("Text file busy").
        std::fs::hard_link(binary(), &bin)
            .or_else(|_| std::fs::copy(binary(), &bin).map(|_| ()))
            .expect("link binary");
        let root = dir.path();
        std::fs::create_dir_all(root.join("spool")).unwrap();
        let config = format!(
            "data-dir = \"{data}\"\nspool-dir = \"{spool}\"\ndisk-floor-mb = 10\n{extra}\n\
             [tap]\nenabled = false\n\n[http]\n{http}\n",
            http = match http_port {
                Some(port) => format!("listen = \"127.0.0.1:{port}\""),
                None => "enabled = false".to_string(),
            },
            data = root.join("data").display(),
            spool = root.join("spool").display(),
        );
        std::fs::write(root.join("config.toml"), config).unwrap();
        Home { dir, bin }
    }

    /// The home directory.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }
    /// The spool.
    pub fn spool(&self) -> PathBuf {
        self.root().join("spool")
    }
    /// The data directory.
    pub fn data(&self) -> PathBuf {
        self.root().join("data")
    }
    /// The embedded local bucket.
    pub fn bucket(&self) -> PathBuf {
        self.data().join("bucket")
    }

    /// Copies a recording into the spool as `name`, with a sidecar naming `session_id`.
    ///
    /// The start date is the same for every session of the test process (so object keys
    /// match between runs) and recent: the upload worker's retention counts from the
    /// recording's wall-clock end, so an old start date would expire clips before upload.
    pub fn spool_recording(&self, src: &Path, name: &str, session_id: &str) {
        let json = format!(
            "{{\"session_id\":\"{session_id}\",\"user_id\":\"user-{session_id}\",\
             \"username\":\"tester\",\"image_friendly_name\":\"Test image\",\
             \"start_date\":\"{start}\",\"protocol\":\"vnc\"}}",
            start = start_date()
        );
        // The sidecar first, then the recording under a temporary name, renamed: the daemon
        // never sees a half-copied file.
        std::fs::write(self.spool().join(format!("{name}.json")), json).unwrap();
        let tmp = self.spool().join(format!(".{name}.copying"));
        std::fs::copy(src, &tmp).unwrap();
        std::fs::rename(&tmp, self.spool().join(name)).unwrap();
    }

    /// Starts `serve --config <root>/config.toml`.
    pub fn start(&self) -> Daemon {
        let log = self.root().join(format!(
            "daemon-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let child = retry_busy(|| {
            Command::new(&self.bin)
                .arg("serve")
                .arg("--config")
                .arg(self.root().join("config.toml"))
                .current_dir(self.root())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
        })
        .expect("start daemon");
        Daemon { child, log }
    }

    /// Turns the tap on: listening on `listen` in front of guacd at `upstream`, with `extra`
    /// `[tap]` lines (`"record-keys = true\n"`).
    pub fn enable_tap(&self, listen: &str, upstream: &str, extra: &str) {
        let config = self.root().join("config.toml");
        let text = std::fs::read_to_string(&config).unwrap();
        let tap = format!("[tap]\n{extra}listen = \"{listen}\"\nupstream = \"{upstream}\"");
        let patched = text.replace("[tap]\nenabled = false", &tap);
        assert_ne!(patched, text, "the harness's tap section changed");
        std::fs::write(&config, patched).unwrap();
    }

    /// Starts the daemon and waits until its tap serves on `tap` and has asked guacd for the
    /// `args` of every protocol. A session must not start while those questions are in flight:
    /// guacd 1.6.0 forks a process per connection from a threaded parent, and a child forked
    /// while another handshake is being served can die at once (a segfault in libc, seen as a
    /// session whose client gets end-of-stream right after `ready`).
    pub fn start_tap(&self, tap: &str) -> Daemon {
        let mut d = self.start();
        let up = wait_for(Duration::from_secs(60), || {
            let log = d.log_text();
            ["vnc", "rdp", "ssh"].iter().all(|p| {
                log.contains(&format!("event=tap_args_learned protocol={p} "))
                    || log.contains(&format!("event=tap_args_not_learned protocol={p}"))
            }) && std::net::TcpStream::connect(tap).is_ok()
        });
        assert!(up && d.running(), "tap not up; log:\n{}", d.log_text());
        d
    }

    /// Starts the daemon and waits until it says `event=started` (panics with its log if it
    /// does not within 30 s).
    pub fn start_ready(&self) -> Daemon {
        let mut d = self.start();
        let ok = wait_for(Duration::from_secs(30), || {
            d.log_text().contains("event=started") || !d.running()
        });
        assert!(ok && d.running(), "daemon did not start:\n{}", d.log_text());
        d
    }

    /// The running daemon's status (`status --url`, anonymous: messages redacted).
    pub fn status_json(&self, port: u16) -> serde_json::Value {
        let url = format!("http://127.0.0.1:{port}");
        let (code, out, err) = self.run(&["status", "--url", &url]);
        assert_eq!(code, 0, "{err}");
        serde_json::from_str(&out).expect("status JSON")
    }

    /// Adds web user `user` with `password` and `permissions` (comma-separated) to this
    /// home's config, through `user add --password-stdin` as an operator would.
    pub fn add_user(&self, user: &str, password: &str, permissions: &str) {
        let out = Command::new(&self.bin)
            .args(["user", "add", user, "--password-stdin", "--permissions"])
            .arg(permissions)
            .arg("--config")
            .arg(self.root().join("config.toml"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin
                    .take()
                    .expect("piped stdin")
                    .write_all(format!("{password}\n").as_bytes())?;
                c.wait_with_output()
            })
            .expect("run user add");
        assert!(
            out.status.success(),
            "user add {user}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs the binary with `args` and returns (exit code, stdout, stderr).
    pub fn run(&self, args: &[&str]) -> (i32, String, String) {
        let out = retry_busy(|| {
            Command::new(&self.bin)
                .args(args)
                .current_dir(self.root())
                .output()
        })
        .expect("run binary");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Bucket objects ending in `.mp4`: key -> bytes.
    pub fn bucket_clips(&self) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        let root = self.bucket();
        for path in files_under(&root) {
            let key = path
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if key.ends_with(".mp4") && !key.starts_with('.') {
                out.insert(key, std::fs::read(&path).unwrap());
            }
        }
        out
    }

    /// Recordings still waiting in the spool (not hidden, not sidecars, not quarantined).
    pub fn spool_waiting(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.spool())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .filter(|p| {
                let n = p.file_name().unwrap().to_string_lossy();
                !n.starts_with('.') && !n.ends_with(".json")
            })
            .collect()
    }

    /// Temporary files anywhere in the home (`*.tmp`, `.tmp/` trees): leftovers of a crash
    /// that nothing cleaned up.
    pub fn stray_temporaries(&self) -> Vec<PathBuf> {
        files_under(&self.data())
            .into_iter()
            .filter(|p| {
                p.components().any(|c| c.as_os_str() == ".tmp")
                    || p.extension().is_some_and(|e| e == "tmp")
            })
            .collect()
    }
}

/// Every file under `root`, recursively (hidden ones included).
pub fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

impl Daemon {
    /// SIGTERM, then waits for the exit.
    pub fn stop(mut self) -> ExitStatus {
        signal(&self.child, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                self.child.kill().ok();
                panic!("daemon ignored SIGTERM for 60 s; log:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, and reaps the process.
    pub fn kill(mut self) {
        signal(&self.child, libc::SIGKILL);
        self.child.wait().unwrap();
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// What it logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A daemon still running when its handle goes (a test that panicked before `stop` or `kill`)
/// is killed and reaped, so a failing test never leaves a server behind.
impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            signal(&self.child, libc::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    unsafe {
        libc::kill(child.id() as libc::pid_t, sig);
    }
}

/// A TCP port free at the time of the call.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Polls `check` every 100 ms until it returns true or `limit` passes; returns the result.
pub fn wait_for(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// How many segments the daemon will make of `path` with segments of `segment_bytes_max`.
pub fn expected_segments(path: &Path, segment_bytes_max: u64) -> usize {
    let bytes = std::fs::read(path).unwrap();
    session_recorder::ingest::spool::plan_pieces(&mut &bytes[..], segment_bytes_max)
        .unwrap()
        .len()
}
