//! Shared harness for the HTTP tests (`tests/it/serve.rs`, `tests/e2e_browser.rs`): real MP4 clips
//! made with ffmpeg/libx264, an in-memory backend with one user per permission, a status board
//! with names that must never reach anonymous viewers, a server on 127.0.0.1:0, and a tiny
//! HTTP/1.1 client on raw TCP (so malformed requests can be sent too).
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use session_recorder::clock::{Clock, SystemClock};
use session_recorder::config::{HttpConfig, RawConfig};
use session_recorder::serve::backend::{ClipRow, SessionRow, TokenRow, UserRow};
use session_recorder::serve::{self, MemBackend, ServeContext, ServeHandle};
use session_recorder::status::{EncoderJob, StatusBoard};

pub const BUCKET: &str = "secret-bucket";
pub const SESSION: &str = "3f1c2a9e-5d1b-4e47-8c53-7b8e8b0a9c11";
pub const OTHER_SESSION: &str = "9a8b7c6d-0000-4000-8000-000000000002";
/// The remote host [`SESSION`] connected to ([`OTHER_SESSION`] names none: an import).
pub const TARGET: &str = "erp-01.corp.example:3389";
pub const ADMIN: &str = "admin@example.com";
pub const VIEWER: &str = "viewer@example.com";
pub const PLAYER: &str = "player@example.com";
pub const PASSWORD: &str = "correct horse battery";

/// Tokens per role: (name, permissions, bearer token).
pub const ROLES: [(&str, u64, &str); 3] = [
    (VIEWER, 1, "tok-viewer-0123456789"),
    (PLAYER, 2, "tok-player-0123456789"),
    (ADMIN, 4, "tok-admin-0123456789"),
];

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub backend: Arc<MemBackend>,
    pub board: StatusBoard,
    pub admission_open: Arc<AtomicBool>,
    pub server: Option<ServeHandle>,
    pub addr: SocketAddr,
    pub clips: Vec<PathBuf>,
    /// The config file the settings page edits, and its text at start.
    pub config_file: PathBuf,
    pub config_initial: String,
}

impl Fixture {
    pub fn token(role: &str) -> &'static str {
        ROLES.iter().find(|r| r.0 == role).map(|r| r.2).unwrap()
    }
}

/// Encodes a short H.264 MP4 (faststart) and a JPEG thumbnail with ffmpeg.
pub fn make_clip(dir: &Path, name: &str, seconds: u32, hue: u32) -> (PathBuf, PathBuf) {
    let mp4 = dir.join(format!("{name}.mp4"));
    let jpg = dir.join(format!("{name}.jpg"));
    let src = format!("testsrc2=size=320x240:rate=10,hue=h={hue}");
    let st = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-y", "-f", "lavfi", "-i", &src, "-t"])
        .arg(seconds.to_string())
        .args([
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv420p",
            "-movflags",
            "+faststart",
        ])
        .arg(&mp4)
        .status()
        .expect("ffmpeg runs");
    assert!(st.success(), "ffmpeg encode failed");
    let st = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-y", "-i"])
        .arg(&mp4)
        .args(["-frames:v", "1", "-vf", "scale=160:-1"])
        .arg(&jpg)
        .status()
        .expect("ffmpeg runs");
    assert!(st.success(), "ffmpeg thumbnail failed");
    (mp4, jpg)
}

fn clip_row(id: u64, n: u32, mp4: Option<&Path>, jpg: Option<&Path>, start_ms: u64) -> ClipRow {
    let bytes = mp4
        .and_then(|p| std::fs::metadata(p).ok())
        .map_or(0, |m| m.len());
    ClipRow {
        id,
        local_path: mp4.map(Path::to_path_buf),
        thumb_path: jpg.map(Path::to_path_buf),
        object_key: None,
        thumb_key: None,
        location: format!("s3://{BUCKET}/user-1/{SESSION}/clip-{n}.mp4"),
        bytes,
        duration_ms: 3_000,
        start_ms,
        state: if mp4.is_some() {
            "uploaded".into()
        } else {
            "failed".into()
        },
        failed: mp4.is_none(),
        sha256: None,
    }
}

/// Adds user `name` with `perms` and the bearer token `token`.
pub fn add_account(
    backend: &dyn serve::AccountStore,
    name: &str,
    perms: u64,
    password_hash: &str,
    token: &str,
    now: u64,
) {
    let user = UserRow {
        name: name.into(),
        password_hash: password_hash.into(),
        permissions: perms,
        created_ms: now,
    };
    backend.put_user(&user, "test").unwrap();
    let row = TokenRow {
        token_hash: serve::auth::secret_hash(token),
        user: name.into(),
        label: format!("{name} token"),
        created_ms: now,
    };
    backend.add_token(&row, "test").unwrap();
}

#[derive(Default)]
pub struct Options {
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Login backoff and stream limits; `None` = the daemon's defaults.
    pub limits: Option<serve::HttpLimits>,
    /// The pages' time zone (UTC by default).
    pub display_timezone: session_recorder::clock::DisplayZone,
    /// The clock of the board and the server; `None` = the system clock.
    pub clock: Option<Arc<dyn Clock>>,
    /// The search index the pages and the API read; `None` = no search.
    pub search: Option<Arc<session_recorder::search::SearchIndex>>,
}

pub fn start() -> Fixture {
    start_with(Options::default())
}

pub fn start_with(opts: Options) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let (c1, t1) = make_clip(dir.path(), "clip-1", 3, 0);
    let (c2, t2) = make_clip(dir.path(), "clip-2", 3, 120);
    let backend = Arc::new(MemBackend::new());
    let clock: Arc<dyn Clock> = opts.clock.unwrap_or_else(|| Arc::new(SystemClock));
    let now = clock.now_ms();
    backend.set_now_ms(now);
    backend.add_session(
        SessionRow {
            cursor: 0,
            session_id: OTHER_SESSION.into(),
            user: "bob@example.com".into(),
            workspace: "Ubuntu Jammy".into(),
            start_ms: now - 7_200_000,
            end_ms: Some(now - 7_000_000),
            state: "uploaded".into(),
            clip_count: 0,
            end_reason: None,
            appliance: None,
            target: String::new(),
            client_addr: String::new(),
        },
        vec![clip_row(10, 1, Some(&c2), Some(&t2), now - 7_200_000)],
    );
    backend.add_session(
        SessionRow {
            cursor: 0,
            session_id: SESSION.into(),
            user: "alice@example.com".into(),
            workspace: "Windows 11 <Desktop>".into(),
            start_ms: now - 600_000,
            end_ms: Some(now - 300_000),
            state: "uploaded".into(),
            clip_count: 0,
            end_reason: None,
            appliance: None,
            target: TARGET.into(),
            client_addr: "10.20.30.40:51234".into(),
        },
        vec![
            clip_row(1, 1, Some(&c1), Some(&t1), now - 600_000),
            clip_row(2, 2, Some(&c2), Some(&t2), now - 500_000),
            clip_row(3, 3, None, None, now - 400_000),
        ],
    );
    let hash = serve::auth::hash_password(PASSWORD).unwrap();
    for (name, perms, tok) in ROLES {
        add_account(&*backend, name, perms, &hash, tok, now);
    }
    let board = StatusBoard::new(clock.clone(), 500_000_000, 2);
    board.update(|s| {
        s.disk.free_bytes = Some(10_000_000_000);
        s.disk.state = session_recorder::disk::DiskState::Available;
        s.queue_counts.insert("clips_ready".into(), 3);
        s.encoders[0].core = Some(1);
        s.encoders[0].job = Some(EncoderJob {
            session_id: SESSION.into(),
            segment_index: 4,
            progress: 0.42,
            started_ms: now - 1000,
        });
        s.uploads.store = format!("s3://{BUCKET}@minio.internal:9000");
        s.uploads.reachable = Some(false);
        s.uploads.last_error = Some(format!("bucket {BUCKET}: connection refused"));
        s.uploads.backlog = 7;
        s.uploads.oldest_waiting_ms = Some(now - 90_000);
        s.settings_problems
            .push("invalid setting `video.framerate`: 0 is outside 1..=60".into());
    });
    board.record_error(
        "upload",
        &format!("PUT s3://{BUCKET}/{SESSION}/clip-1.mp4 failed"),
    );
    let admission_open = Arc::new(AtomicBool::new(true));
    let gate = admission_open.clone();
    let mut raw = RawConfig {
        data_dir: dir.path().join("data"),
        ..RawConfig::default()
    };
    raw.storage.upload_location = Some(format!("s3://{BUCKET}/{{session_id}}/{{clip_index}}.mp4"));
    raw.storage.object_storage_key = session_recorder::config::Secret::new("AKIAEXAMPLEKEY");
    raw.storage.object_storage_secret = session_recorder::config::Secret::new("hunter2-secret");
    let secure = opts.tls.is_some();
    // The settings page edits this file (the one source of truth); nothing applies it here.
    let config_file = dir.path().join("config.toml");
    let config_initial = toml::to_string(&raw).expect("config as TOML");
    std::fs::write(&config_file, &config_initial).unwrap();
    let ctx = ServeContext {
        http: HttpConfig {
            enabled: true,
            listen: "127.0.0.1:0".parse().unwrap(),
            tls: opts.tls,
            display_timezone: opts.display_timezone.clone(),
        },
        board: board.clone(),
        backend: serve::Backend::of(backend.clone()),
        clips: Arc::new(serve::LocalThenRemote::new(None)),
        admission: Arc::new(move || {
            if gate.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err("disk space below the floor".into())
            }
        }),
        raw_config: raw,
        settings: serve::SettingsHooks {
            file: Some(config_file.clone()),
            reload: Arc::new(|| Ok(Vec::new())),
        },
        clock,
        options: serve::ServeOptions {
            limits: opts.limits.unwrap_or_default(),
            search: opts.search,
            ..serve::ServeOptions::default()
        },
    };
    let server = serve::start(ctx).expect("server starts");
    let addr = server.local_addr();
    let _ = secure;
    Fixture {
        dir,
        backend,
        board,
        admission_open,
        server: Some(server),
        addr,
        clips: vec![c1, c2],
        config_file,
        config_initial,
    }
}

/// A parsed response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends raw bytes and reads the whole response (the connection is closed by the server or by
/// `Connection: close`).
pub fn raw(addr: SocketAddr, bytes: &[u8]) -> Resp {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    // Read until the response is complete (some peers keep the connection open).
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
        if response_complete(&out) {
            break;
        }
    }
    parse_response(&out)
}

fn response_complete(out: &[u8]) -> bool {
    let Some(split) = out.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&out[..split]).to_ascii_lowercase();
    let body = out.len() - split - 4;
    if let Some(l) = head.lines().find_map(|l| l.strip_prefix("content-length:")) {
        return l.trim().parse::<usize>().is_ok_and(|n| body >= n);
    }
    if head.contains("transfer-encoding: chunked") {
        return out.ends_with(b"\r\n0\r\n\r\n") || body == 5 && out.ends_with(b"0\r\n\r\n");
    }
    false
}

pub fn parse_response(out: &[u8]) -> Resp {
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(out)));
    let head = String::from_utf8_lossy(&out[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = out[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Resp {
        status,
        headers,
        body,
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let i = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size line");
        let size_line = std::str::from_utf8(&b[..i]).unwrap();
        let size = usize::from_str_radix(size_line.split(';').next().unwrap().trim(), 16).unwrap();
        b = &b[i + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

/// A request with optional extra header lines (each ending in `\r\n`) and body.
pub fn request(addr: SocketAddr, method: &str, path: &str, extra: &str, body: &str) -> Resp {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra}\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    raw(addr, req.as_bytes())
}

pub fn get(addr: SocketAddr, path: &str, extra: &str) -> Resp {
    request(addr, "GET", path, extra, "")
}

pub fn bearer(role: &str) -> String {
    format!("Authorization: Bearer {}\r\n", Fixture::token(role))
}

/// Logs in through the form like a browser; returns the session cookie value.
pub fn login(addr: SocketAddr, user: &str, password: &str) -> Option<String> {
    let form = get(addr, "/login", "");
    let pre = cookie_value(&form, "sr_login")?;
    let csrf = hidden_value(&form.text(), "csrf")?;
    let body = format!(
        "csrf={csrf}&next=%2Fsessions&user={}&password={}",
        url(user),
        url(password)
    );
    let r = request(
        addr,
        "POST",
        "/login",
        &format!(
            "Cookie: sr_login={pre}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
             Origin: http://{addr}\r\n"
        ),
        &body,
    );
    if r.status != 303 {
        return None;
    }
    cookie_value(&r, "sr_session")
}

pub fn url(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

pub fn cookie_value(r: &Resp, name: &str) -> Option<String> {
    r.headers_named("set-cookie").into_iter().find_map(|c| {
        let first = c.split(';').next()?;
        let (k, v) = first.split_once('=')?;
        (k.trim() == name && !v.is_empty()).then(|| v.to_string())
    })
}

/// The value of `<input ... name="NAME" value="...">` in a page.
pub fn hidden_value(html: &str, name: &str) -> Option<String> {
    let at = html.find(&format!("name=\"{name}\" value=\""))?;
    let rest = &html[at + name.len() + 15..];
    Some(rest[..rest.find('"')?].to_string())
}
