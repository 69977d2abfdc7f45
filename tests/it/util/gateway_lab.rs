//! A loopback lab around the real gateway, for tests/it/gateway.rs: guacd 1.6.0 from
//! `../shared/guacd` (through its `run-guacd`), an X desktop served over VNC (Xvfb, openbox,
//! xterm, x11vnc), an sshd with a password user and SFTP, and an RDP desktop (Xorg with the
//! xorgxrdp driver behind xrdp, connected directly: no sesman, no login); plus a Guacamole
//! client as a browser's tunnel would speak it (handshake, an answer to every `sync`, keys,
//! mouse, SFTP downloads with `ack`).
//!
//! Everything binds 127.0.0.1, on ports 24000-24999 and X displays :60-:69; every process is
//! started here, stopped by its PID (SIGTERM, then SIGKILL) when its handle drops. The Debian
//! packages come from `scripts/install-deps`; only a missing guacd build makes a test skip.
//!
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use session_recorder::guac::Parser;
use session_recorder::ingest::handshake::encode;

/// The lab's ports: 24000-24999.
const PORT_FIRST: u16 = 24_100;
const PORT_LAST: u16 = 24_999;
/// The lab's Xvfb displays (VNC desktops): :60-:64.
const DISPLAY_FIRST: u32 = 60;
const DISPLAY_LAST: u32 = 64;
/// Where xrdp's session manager starts numbering the Xorg displays of RDP logins (:65 on): a
/// range of its own, so an RDP login never takes a display an Xvfb was just given (the
/// allocator checks for a lock file that Xvfb writes only once it runs).
const DISPLAY_RDP_FIRST: u32 = 65;
/// How many times the lab starts an xterm that died before showing its window.
const XTERM_STARTS_MAX: usize = 3;
/// The SSH (and SFTP) test user.
pub const SSH_USER: &str = "srgateway";
/// Its password.
pub const SSH_PASSWORD: &str = "gateway-Test-42";
/// How often the client says `nop` (guacamole-common-js: every 5 s).
const KEEP_ALIVE_MS: u64 = 5_000;
/// The desktop size every lab desktop and client uses.
pub const SCREEN: (u32, u32) = (1024, 768);

/// `../shared/guacd` when it holds the guacd build, else `None` (the caller skips, saying so).
pub fn guacd_dir() -> Option<PathBuf> {
    let dir = super::shared_dir().join("guacd");
    dir.join("run-guacd").is_file().then_some(dir)
}

/// A directory for one test's lab (logs, configs, keys); kept, and named on stderr, when
/// `SESSION_RECORDER_KEEP_LAB` is set.
pub fn lab_dir() -> tempfile::TempDir {
    let keep = std::env::var_os("SESSION_RECORDER_KEEP_LAB").is_some();
    let dir = tempfile::Builder::new()
        .prefix("gateway-lab")
        .disable_cleanup(keep)
        .tempdir()
        .expect("lab dir");
    if keep {
        eprintln!("lab dir: {}", dir.path().display());
    }
    dir
}

/// A free lab port (bound and released; never handed out twice by this process).
pub fn port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = PORT_FIRST + (std::process::id() % 400) as u16;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let p = base + n % (PORT_LAST - base);
        assert!(n < 2000, "no free lab port");
        if TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

/// A free X display in the lab's range.
fn display() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(DISPLAY_FIRST);
    loop {
        let d = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(d <= DISPLAY_LAST, "no free X display in :60-:64");
        let busy = Path::new(&format!("/tmp/.X{d}-lock")).exists()
            || Path::new(&format!("/tmp/.X11-unix/X{d}")).exists();
        if !busy {
            return d;
        }
    }
}

/// A process of the lab, stopped by PID when dropped.
pub struct Proc {
    /// The process.
    pub child: Child,
    /// Its output.
    pub log: PathBuf,
}

impl Proc {
    /// Starts `cmd` with stdout and stderr to `<dir>/<name>.log`.
    pub fn spawn(name: &str, dir: &Path, cmd: &mut Command) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).expect("log file");
        // Its own process group: guacd forks a process per connection, and killing "guacd"
        // means all of them.
        let child = cmd
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log fd"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Proc { child, log }
    }

    /// Sends `sig` to the process and the processes it started (its process group).
    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on our own child's process group; no memory is involved.
        unsafe {
            libc::kill(-(self.child.id() as libc::pid_t), sig);
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        self.signal(libc::SIGKILL);
        let _ = self.child.wait();
    }

    /// Whether it still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Its output so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.running() {
            self.signal(libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(3);
            while self.running() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // What it started can outlive it: guacd's connection processes ignore the SIGTERM
        // guacd itself exits on, and they were found running an hour after their tests.
        self.kill();
    }
}

/// Polls `ok` every 50 ms for up to `limit`.
pub fn until(limit: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if ok() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn listening(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// guacd 1.6.0 on a lab port.
pub struct Guacd {
    /// Its port.
    pub port: u16,
    /// The process.
    pub proc: Proc,
}

impl Guacd {
    /// Starts guacd from `guacd_dir`, unpacked once per test process into a directory of its
    /// own. The unpacking happens here, under the `OnceLock`: `run-guacd` unpacks whenever it
    /// finds no binary, so two tests starting guacd at once would both unpack into the same
    /// directory and break each other's files.
    pub fn start(guacd_dir: &Path, dir: &Path) -> Guacd {
        static HOME: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
        let home = HOME.get_or_init(|| {
            let home = tempfile::tempdir().expect("guacd home");
            let target = home.path().join("guacd");
            std::fs::create_dir_all(&target).expect("guacd dir");
            let status = Command::new("tar")
                .arg("xzf")
                .arg(guacd_dir.join("guacd-1.6.0-debian12-amd64.tar.gz"))
                .arg("-C")
                .arg(&target)
                .arg("--strip-components=1")
                .status()
                .expect("tar");
            assert!(status.success(), "unpacking guacd failed: {status}");
            home
        });
        let port = port();
        let mut cmd = Command::new(guacd_dir.join("run-guacd"));
        cmd.arg(port.to_string())
            .env("GUACD_HOME", home.path().join("guacd"));
        let proc = Proc::spawn(&format!("guacd-{port}"), dir, &mut cmd);
        let mut g = Guacd { port, proc };
        assert!(
            until(Duration::from_secs(20), || listening(port)),
            "guacd did not listen on {port}: {}",
            g.proc.log_text()
        );
        assert!(g.proc.running());
        g
    }

    /// `host:port`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// An X display with openbox and one xterm.
pub struct Desktop {
    /// `:N`.
    pub display: String,
    /// VNC port (VNC desktops) or RDP port (RDP desktops).
    pub port: u16,
    procs: Vec<Proc>,
    /// The xterm's X window id.
    pub xterm: String,
    dir: PathBuf,
    /// The X authority file of a user's session (RDP).
    xauthority: Option<PathBuf>,
    /// The X server of an RDP session (started by sesman for us; ended with the desktop).
    session_x: Option<u32>,
}

impl Drop for Desktop {
    fn drop(&mut self) {
        // The session sesman started for this desktop ends with its X server.
        if let Some(pid) = self.session_x {
            // SAFETY: kill(2) on the X server our RDP login started; no memory is involved.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
        }
    }
}

impl Desktop {
    /// Xvfb + openbox + xterm, served by x11vnc.
    pub fn vnc(dir: &Path) -> Desktop {
        let n = display();
        let d = format!(":{n}");
        let geometry = format!("{}x{}x24", SCREEN.0, SCREEN.1);
        let xvfb = Proc::spawn(
            &format!("xvfb{n}"),
            dir,
            Command::new("Xvfb").args([&d, "-screen", "0", &geometry, "-nolisten", "tcp"]),
        );
        let mut desk = Desktop {
            display: d.clone(),
            port: 0,
            procs: vec![xvfb],
            xterm: String::new(),
            dir: dir.to_path_buf(),
            xauthority: None,
            session_x: None,
        };
        desk.wait_x();
        desk.session_apps();
        let port = port();
        let x11vnc = Proc::spawn(
            &format!("x11vnc{n}"),
            dir,
            Command::new("x11vnc").args([
                "-display",
                &d,
                "-localhost",
                "-rfbport",
                &port.to_string(),
                "-nopw",
                "-forever",
                "-shared",
                "-quiet",
            ]),
        );
        desk.procs.push(x11vnc);
        assert!(
            until(Duration::from_secs(20), || listening(port)),
            "x11vnc did not listen"
        );
        desk.port = port;
        desk
    }

    /// xrdp with its session manager, as installed: the RDP login of [`SSH_USER`] starts an
    /// Xorg (xorgxrdp) session with openbox for that user. The desktop exists once a client
    /// connected: call [`Desktop::attach_rdp_session`] then. xrdp asks the sesman named in
    /// the system's `/etc/xrdp/sesman.ini` (port 3350); one already running there is used.
    pub fn rdp(dir: &Path) -> Desktop {
        ensure_user();
        let mut desk = Desktop {
            display: String::new(),
            port: 0,
            procs: Vec::new(),
            xterm: String::new(),
            dir: dir.to_path_buf(),
            xauthority: None,
            session_x: None,
        };
        if !listening_any(SESMAN_PORT) {
            let sesman = xrdp_daemon(
                dir,
                "xrdp-sesman",
                "sesman.ini",
                &[
                    (
                        "[Sessions]",
                        "X11DisplayOffset",
                        &DISPLAY_RDP_FIRST.to_string(),
                    ),
                    ("[Sessions]", "KillDisconnected", "true"),
                    ("[Sessions]", "DisconnectedTimeLimit", "0"),
                ],
            );
            desk.procs.push(sesman);
            assert!(
                until(Duration::from_secs(20), || listening_any(SESMAN_PORT)),
                "xrdp-sesman did not listen"
            );
        }
        let port = port();
        let xrdp = xrdp_daemon(
            dir,
            "xrdp",
            "xrdp.ini",
            &[
                ("[Globals]", "port", &format!("tcp://127.0.0.1:{port}")),
                ("[Globals]", "fork", "false"),
                ("[Globals]", "autorun", "Xorg"),
            ],
        );
        desk.procs.push(xrdp);
        assert!(
            until(Duration::from_secs(20), || listening(port)),
            "xrdp did not listen"
        );
        desk.port = port;
        desk
    }

    /// Waits for the Xorg session an RDP login started for [`SSH_USER`] and opens the xterm
    /// in it.
    pub fn attach_rdp_session(&mut self) {
        let uid = user_uid();
        let mut found = None;
        let up = until(Duration::from_secs(30), || {
            found = user_x_display(uid);
            found.is_some()
        });
        assert!(up, "no Xorg session for {SSH_USER}");
        let (n, server_pid) = found.expect("set when up");
        self.display = format!(":{n}");
        self.session_x = Some(server_pid);
        self.xauthority = Some(ssh_home().join(".Xauthority"));
        self.wait_x();
        self.start_xterm();
    }

    fn wait_x(&mut self) {
        let d = self.display.clone();
        let up = until(Duration::from_secs(20), || {
            let mut cmd = Command::new("xdotool");
            cmd.env("DISPLAY", &d).arg("getmouselocation");
            if let Some(auth) = &self.xauthority {
                cmd.env("XAUTHORITY", auth);
            }
            cmd.stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        let log = self.procs.first().map(Proc::log_text).unwrap_or_default();
        assert!(up, "X display {d} did not come up: {log}");
    }

    fn session_apps(&mut self) {
        let d = self.display.clone();
        let wm = Proc::spawn(
            &format!("openbox{}", &d[1..]),
            &self.dir,
            Command::new("openbox").env("DISPLAY", &d),
        );
        self.procs.push(wm);
        self.start_xterm();
    }

    fn start_xterm(&mut self) {
        let d = self.display.clone();
        let mut cmd = Command::new("xterm");
        cmd.env("DISPLAY", &d).current_dir(&self.dir).args([
            "-geometry",
            "80x24+40+40",
            "-title",
            "labterm",
        ]);
        if let Some(auth) = &self.xauthority {
            cmd.env("XAUTHORITY", auth);
        }
        // xterm has been seen to exit at once with "Can't open display" on a display that
        // had just answered xdotool (cause not found yet): wait for the display again and start
        // it anew, a bounded number of times, keeping what each attempt said.
        let mut id = String::new();
        let mut said = Vec::new();
        for _attempt in 0..XTERM_STARTS_MAX {
            self.wait_x();
            let xterm = Proc::spawn(&format!("xterm{}", &d[1..]), &self.dir, &mut cmd);
            self.procs.push(xterm);
            let found = until(Duration::from_secs(40), || {
                id = self.xdotool(&["search", "--name", "labterm"]);
                !id.is_empty() || !self.procs.last_mut().is_some_and(Proc::running)
            });
            if found && !id.is_empty() {
                break;
            }
            said.push(self.procs.last().map(Proc::log_text).unwrap_or_default());
        }
        let xvfb = self.procs.first().map(Proc::log_text).unwrap_or_default();
        assert!(
            !id.is_empty(),
            "no xterm window on {d}; xterm said: {said:?}; the X server said: {xvfb}"
        );
        self.xterm = id.lines().next().unwrap_or_default().to_string();
    }

    /// Runs xdotool on this display; returns its stdout.
    pub fn xdotool(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("xdotool");
        cmd.env("DISPLAY", &self.display).args(args);
        if let Some(auth) = &self.xauthority {
            cmd.env("XAUTHORITY", auth);
        }
        let out = cmd.output().expect("xdotool runs");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Moves the xterm to `(x, y)`.
    pub fn move_xterm(&self, x: u32, y: u32) {
        self.xdotool(&["windowmove", &self.xterm, &x.to_string(), &y.to_string()]);
    }

    /// Types `text` into the focused window (the xterm) through X.
    pub fn type_text(&self, text: &str) {
        self.xdotool(&["windowactivate", "--sync", &self.xterm]);
        self.xdotool(&["type", "--delay", "15", text]);
    }
}

/// Where xrdp finds its session manager (the port in `/etc/xrdp/sesman.ini`, which xrdp
/// always reads).
const SESMAN_PORT: u16 = 3350;

/// Whether something listens on `port` on the loopback (IPv4 or IPv6).
fn listening_any(port: u16) -> bool {
    listening(port) || TcpStream::connect(("::1", port)).is_ok()
}

/// Runs `program --nodaemon --config <dir>/<ini>`, that ini being the system's
/// `/etc/xrdp/<ini>` with `set` applied.
fn xrdp_daemon(dir: &Path, program: &str, ini: &str, set: &[(&str, &str, &str)]) -> Proc {
    let system = format!("/etc/xrdp/{ini}");
    let text = std::fs::read_to_string(&system).unwrap_or_else(|e| panic!("{system}: {e}"));
    let path = dir.join(ini);
    std::fs::write(&path, ini_set(&text, set)).unwrap();
    Proc::spawn(
        program,
        dir,
        Command::new(program)
            .arg("--nodaemon")
            .arg("--config")
            .arg(&path),
    )
}

/// An xrdp-style ini with `(section, key, value)` set (only keys that exist are changed).
fn ini_set(text: &str, set: &[(&str, &str, &str)]) -> String {
    let mut out = String::new();
    let mut section = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            section = t.to_string();
        }
        let key = t.split('=').next().unwrap_or("");
        match set.iter().find(|(s, k, _)| *s == section && *k == key) {
            Some((_, k, v)) => out.push_str(&format!("{k}={v}")),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// [`SSH_USER`]'s uid.
fn user_uid() -> u32 {
    let out = Command::new("id")
        .args(["-u", SSH_USER])
        .output()
        .expect("id");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("a uid")
}

/// The X display (number, server pid) of an Xorg session running as `uid`, from the X lock
/// files.
fn user_x_display(uid: u32) -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    for entry in std::fs::read_dir("/tmp").ok()?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(n) = name
            .strip_prefix(".X")
            .and_then(|r| r.strip_suffix("-lock"))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if entry.metadata().ok()?.uid() != uid {
            continue;
        }
        let pid = std::fs::read_to_string(entry.path())
            .ok()?
            .trim()
            .parse()
            .ok()?;
        if Path::new(&format!("/tmp/.X11-unix/X{n}")).exists() {
            return Some((n, pid));
        }
    }
    None
}

/// An sshd on a lab port, with [`SSH_USER`] able to log in by password and SFTP.
pub struct Sshd {
    /// Its port.
    pub port: u16,
    proc: Proc,
}

impl Sshd {
    /// Creates the test user when missing, then starts `sshd -D` with its own config and host
    /// key under `dir`.
    pub fn start(dir: &Path) -> Sshd {
        ensure_user();
        std::fs::create_dir_all("/run/sshd").expect("/run/sshd");
        let key = dir.join("host_ed25519");
        if !key.exists() {
            let ok = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(&key)
                .status()
                .expect("ssh-keygen");
            assert!(ok.success());
        }
        let port = port();
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {key}\nPidFile {pid}\n\
                 PasswordAuthentication yes\nKbdInteractiveAuthentication no\nUsePAM yes\n\
                 PermitRootLogin no\nSubsystem sftp /usr/lib/openssh/sftp-server\n",
                key = key.display(),
                pid = dir.join("sshd.pid").display()
            ),
        )
        .unwrap();
        let proc = Proc::spawn(
            &format!("sshd{port}"),
            dir,
            Command::new("/usr/sbin/sshd")
                .args(["-D", "-e", "-f"])
                .arg(&config),
        );
        let mut s = Sshd { port, proc };
        assert!(
            until(Duration::from_secs(20), || listening(port)),
            "sshd did not listen: {}",
            s.proc.log_text()
        );
        assert!(s.proc.running());
        s
    }
}

/// [`SSH_USER`] with [`SSH_PASSWORD`] and a home.
fn ensure_user() {
    static DONE: std::sync::Once = std::sync::Once::new();
    DONE.call_once(|| {
        let exists = Command::new("id")
            .arg(SSH_USER)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !exists {
            let ok = Command::new("useradd")
                .args(["-m", "-s", "/bin/bash", SSH_USER])
                .status()
                .expect("useradd");
            assert!(ok.success(), "useradd {SSH_USER}");
        }
        let mut chpasswd = Command::new("chpasswd")
            .stdin(Stdio::piped())
            .spawn()
            .expect("chpasswd");
        chpasswd
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{SSH_USER}:{SSH_PASSWORD}\n").as_bytes())
            .unwrap();
        assert!(chpasswd.wait().unwrap().success(), "chpasswd");
    });
}

/// The test user's home.
pub fn ssh_home() -> PathBuf {
    PathBuf::from(format!("/home/{SSH_USER}"))
}

/// What the client saw of the session.
#[derive(Debug, Default)]
pub struct Seen {
    /// `sync`s answered.
    pub syncs: u64,
    /// The first `sync`: guacd's timestamp, and the wall-clock ms it arrived (guacd's clock is
    /// its own, monotonic: this maps it to the wall clock).
    pub first_sync: Option<(u64, u64)>,
    /// `error` instructions (message, status).
    pub errors: Vec<(String, String)>,
    /// guacd said `disconnect`, or the connection closed.
    pub closed: bool,
    /// The SFTP filesystem object guacd exposed.
    pub filesystem: Option<String>,
    /// Downloads in progress: stream -> (name, bytes).
    downloading: HashMap<String, (String, u64)>,
    /// Finished downloads: (name, bytes).
    pub downloads: Vec<(String, u64)>,
    /// Bytes received.
    pub bytes: u64,
    /// Why the client stopped reading, when the stream did not parse.
    pub reader_error: Option<String>,
}

/// A Guacamole client connected (through the tap) to guacd.
pub struct Client {
    writer: Arc<Mutex<TcpStream>>,
    /// What it saw.
    pub seen: Arc<Mutex<Seen>>,
    /// connect -> `ready`.
    pub handshake: Duration,
    reader: Option<std::thread::JoinHandle<()>>,
}

/// Reads instructions from `s` into `parser` until `want` (or an error or `limit`).
fn read_until(
    s: &mut TcpStream,
    parser: &mut Parser,
    want: &str,
    limit: Duration,
) -> Result<Vec<String>, String> {
    let deadline = Instant::now() + limit;
    let mut chunk = vec![0u8; 65536];
    loop {
        while let Some(i) = parser.next().map_err(|e| e.to_string())? {
            if i.opcode == want {
                return Ok(i.args);
            }
            if i.opcode == "error" {
                return Err(format!("error {:?}", i.args));
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("no {want} within {limit:?}"));
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut chunk) {
            Ok(0) => return Err(format!("closed before {want}")),
            Ok(n) => parser.push(&chunk[..n]),
            Err(e) => return Err(format!("waiting for {want}: {e}")),
        }
    }
}

impl Client {
    /// Connects to `addr`, selects `protocol`, answers `args` with `params` (by name; the tap's
    /// `recording-*` ones included), and waits up to `limit` for `ready`.
    ///
    /// # Errors
    /// guacd's or the tap's `error`, a closed connection, or no `ready` in time.
    pub fn connect(
        addr: &str,
        protocol: &str,
        params: &[(&str, String)],
        limit: Duration,
    ) -> Result<Client, String> {
        let started = Instant::now();
        let mut s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
        s.set_nodelay(true).ok();
        let mut parser = Parser::new();
        s.write_all(&encode(&["select", protocol])).unwrap();
        let names = read_until(&mut s, &mut parser, "args", limit)?;
        let (w, h) = (SCREEN.0.to_string(), SCREEN.1.to_string());
        let mut connect = vec!["connect".to_string()];
        for name in &names {
            connect.push(if name.starts_with("VERSION_") {
                name.clone()
            } else {
                params
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            });
        }
        for ins in [
            vec!["size".to_string(), w, h, "96".into()],
            vec!["audio".into(), "audio/L16".into()],
            vec!["video".into()],
            vec!["image".into(), "image/png".into(), "image/jpeg".into()],
            vec!["timezone".into(), "UTC".into()],
            connect,
        ] {
            s.write_all(&encode(&ins)).map_err(|e| e.to_string())?;
        }
        read_until(&mut s, &mut parser, "ready", limit)?;
        let handshake = started.elapsed();
        s.set_read_timeout(None).unwrap();
        let writer = Arc::new(Mutex::new(s.try_clone().unwrap()));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let reader = {
            let (writer, seen) = (writer.clone(), seen.clone());
            std::thread::spawn(move || read_loop(s, parser, &writer, &seen))
        };
        // guacamole-common-js's keep-alive: guacd drops a user it heard nothing from for 15 s,
        // and a still screen brings no `sync` to answer.
        {
            let (writer, seen) = (writer.clone(), seen.clone());
            std::thread::spawn(move || {
                while !seen.lock().is_ok_and(|s| s.closed) {
                    std::thread::sleep(Duration::from_millis(KEEP_ALIVE_MS));
                    let sent = writer
                        .lock()
                        .is_ok_and(|mut w| w.write_all(&encode(&["nop"])).is_ok());
                    if !sent {
                        break;
                    }
                }
            });
        }
        Ok(Client {
            writer,
            seen,
            handshake,
            reader: Some(reader),
        })
    }

    /// Sends one instruction (ignoring a closed connection).
    pub fn send(&self, elements: &[&str]) {
        let _ = self.writer.lock().unwrap().write_all(&encode(elements));
    }

    /// Types `text` as key presses and releases (ASCII; `\n` is Return).
    pub fn type_text(&self, text: &str) {
        for c in text.chars() {
            let sym = if c == '\n' { 0xff0d } else { c as u32 };
            let sym = sym.to_string();
            self.send(&["key", &sym, "1"]);
            self.send(&["key", &sym, "0"]);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Moves the pointer to `(x, y)` with `buttons` held (Guacamole's mask: 1 left, 8 wheel
    /// up, 16 wheel down).
    pub fn mouse(&self, x: u32, y: u32, buttons: u32) {
        self.send(&[
            "mouse",
            &x.to_string(),
            &y.to_string(),
            &buttons.to_string(),
        ]);
    }

    /// `clicks` wheel steps at `(x, y)`, up or down.
    pub fn wheel(&self, x: u32, y: u32, down: bool, clicks: u32) {
        for _ in 0..clicks {
            self.mouse(x, y, if down { 16 } else { 8 });
            self.mouse(x, y, 0);
            std::thread::sleep(Duration::from_millis(40));
        }
    }

    /// Asks for `path` through the SFTP filesystem guacd exposed.
    pub fn get(&self, path: &str) -> bool {
        let object = lock(&self.seen).filesystem.clone();
        match object {
            Some(o) => {
                self.send(&["get", &o, path]);
                true
            }
            None => false,
        }
    }

    /// Whether the server ended the connection.
    pub fn closed(&self) -> bool {
        lock(&self.seen).closed
    }

    /// Disconnects as a browser tab closing does: `disconnect`, then the socket closes.
    pub fn disconnect(mut self) {
        self.send(&["disconnect"]);
        let _ = self
            .writer
            .lock()
            .unwrap()
            .shutdown(std::net::Shutdown::Both);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }

    /// Drops the connection without a word (a network drop, a killed browser).
    pub fn drop_connection(mut self) {
        let _ = self
            .writer
            .lock()
            .unwrap()
            .shutdown(std::net::Shutdown::Both);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Ok(w) = self.writer.lock() {
            let _ = w.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// The lock, whether or not a panicking test thread poisoned it (the data stays valid).
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn read_loop(
    mut s: TcpStream,
    mut parser: Parser,
    writer: &Arc<Mutex<TcpStream>>,
    seen: &Arc<Mutex<Seen>>,
) {
    let mut chunk = vec![0u8; 256 * 1024];
    let send = |e: &[&str]| {
        let _ = writer.lock().unwrap().write_all(&encode(e));
    };
    'outer: loop {
        loop {
            let i = match parser.next() {
                Ok(Some(i)) => i,
                Ok(None) => break,
                Err(e) => {
                    lock(seen).reader_error = Some(e.to_string());
                    break 'outer;
                }
            };
            let mut seen = lock(seen);
            let arg = |n: usize| i.args.get(n).cloned().unwrap_or_default();
            match i.opcode.as_str() {
                "sync" => {
                    seen.syncs += 1;
                    if seen.first_sync.is_none()
                        && let Ok(ts) = arg(0).parse()
                    {
                        let now = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .expect("after 1970")
                            .as_millis() as u64;
                        seen.first_sync = Some((ts, now));
                    }
                    send(&["sync", &arg(0)]);
                }
                "error" => seen.errors.push((arg(0), arg(1))),
                "disconnect" => seen.closed = true,
                "filesystem" => seen.filesystem = Some(arg(0)),
                "body" => {
                    seen.downloading.insert(arg(1), (arg(3), 0));
                    send(&["ack", &arg(1), "OK", "0"]);
                }
                "blob" if seen.downloading.contains_key(&arg(0)) => {
                    let n = (arg(1).len() as u64) * 3 / 4;
                    if let Some(d) = seen.downloading.get_mut(&arg(0)) {
                        d.1 += n;
                    }
                    send(&["ack", &arg(0), "OK", "0"]);
                }
                "end" => {
                    if let Some(d) = seen.downloading.remove(&arg(0)) {
                        seen.downloads.push(d);
                    }
                }
                _ => {}
            }
        }
        match s.read(&mut chunk) {
            Ok(0) => break,
            Err(e) => {
                lock(seen).reader_error = Some(e.to_string());
                break;
            }
            Ok(n) => {
                lock(seen).bytes += n as u64;
                parser.push(&chunk[..n]);
            }
        }
    }
    lock(seen).closed = true;
}
