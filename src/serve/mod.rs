//! The HTTP(S) side: status page, `/api/v1/status`, `/metrics`, `/api/v1/admission`, session
//! history, playback with Range support, single-clip and whole-session (zip) downloads, the
//! audit log, the settings page and local accounts.
//!
//! Shape: a front thread ([`front`]) accepts TCP, terminates TLS with rustls 0.23 when
//! `[http] tls-cert/tls-key` are set, enforces the request limits and relays to tiny_http on a
//! private unix socket, one upstream connection per request (so tiny_http's own per-connection
//! threads are never tied up by slow or idle clients); a bounded pool of worker threads takes requests from tiny_http and runs
//! the [`router`]. Workers read the [`StatusBoard`] snapshot and call the [`Backend`] (its
//! [`HistorySource`] and [`AccountStore`]: the LMDB queue in the daemon) and the [`ClipSource`]; nothing here runs on or blocks a pipeline
//! thread. Long bodies (playback, downloads, zips) are not written by the workers but by a
//! separate bounded set of [`streams`] threads, so slow or stalled clients cannot starve the
//! status page, the history or login; past `HTTP_STREAMS_MAX` a stream is refused with 503.
//!
//! Who may see what (decided here, see `router.rs`):
//! - Without login: the status page, `/api/v1/status`, `/metrics` and `/api/v1/admission`, so
//!   field staff and monitoring can check an appliance. These are redacted for anonymous
//!   viewers: no session ids, user names, bucket or endpoint names, and error messages reduced
//!   to their source and time (log in with any permission to read them).
//! - `SESSIONS_VIEW`: the history list and its clip lists (states, times, durations).
//! - `SESSION_RECORDINGS_VIEW`: thumbnails, playing, downloading (each audited), search
//!   inside recordings and the player's event pane (each search audited).
//! - `SESSION_KEYSTROKES_VIEW`: typed text and clipboard contents in search hits and the
//!   event pane (without it they are neither matched nor shown).
//! - `ADMIN`: everything, plus the audit log, settings and users.
//!
//! Not here: the queue itself (`queue/`), object stores (`upload/`), the admission decision
//! (the tap's; we only report it).

pub mod admin;
pub mod auth;
pub mod backend;
pub mod backend_fleet;
pub mod backend_queue;
pub mod clips;
pub mod ctx;
pub mod front;
pub mod history;
pub mod html;
pub mod remote_store;
pub mod router;
pub mod search;
pub mod status_page;
pub mod streams;
pub mod throttle;
pub mod users;
pub mod zipstream;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub use auth::{Permissions, UserAddArgs, user_add_cli};
pub use backend::{AccountStore, Backend, BackendError, HistorySource, MemBackend};
pub use clips::{ClipSource, LocalThenRemote, RemoteObjects};

use crate::clock::Clock;
use crate::config::{HttpConfig, RawConfig};
use crate::limits::{HTTP_STREAMS_MAX, HTTP_WORKERS_MAX};
use crate::status::StatusBoard;

/// Errors of the HTTP side.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The certificate or key could not be used.
    #[error("TLS: {0}")]
    Tls(String),
    /// Internal plumbing (socket directory, tiny_http, threads) failed to start.
    #[error("HTTP server start: {0}")]
    Start(String),
    /// The OS random source failed.
    #[error("random source: {0}")]
    Random(String),
    /// Invalid input from a person (CLI arguments).
    #[error("{0}")]
    BadInput(String),
    /// Storage failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

impl crate::error::Classify for ServeError {
    fn is_transient(&self) -> bool {
        match self {
            ServeError::Bind { source, .. } => source.is_transient(),
            ServeError::Backend(e) => e.is_transient(),
            ServeError::Start(_) | ServeError::Random(_) => true,
            ServeError::Tls(_) | ServeError::BadInput(_) => false,
        }
    }
}

/// Checks whether a new recorded session would be admitted now: `Err(reason)` when not.
pub type AdmissionCheck = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// The HTTP side's limits on logins and streams. Defaults are the named constants
/// of `limits.rs`; tests give small values so nothing waits for real minutes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Failed logins per user name (and per client address) before the backoff starts.
    pub login_failures_free: u32,
    /// First backoff; doubles with each further failure.
    pub login_backoff_base_ms: u64,
    /// Longest backoff.
    pub login_backoff_max_ms: u64,
    /// Failures older than this are forgotten.
    pub login_failure_window_ms: u64,
    /// Streams one user may run at once.
    pub streams_per_user_max: usize,
    /// Longest life of one stream.
    pub stream_life_ms_max: u64,
    /// Minimum average throughput of a stream once its grace period is over.
    pub stream_bytes_per_s_min: u64,
    /// Time before a stream's throughput is judged.
    pub stream_grace_ms: u64,
}

impl Default for HttpLimits {
    fn default() -> Self {
        use crate::limits as l;
        Self {
            login_failures_free: l::HTTP_LOGIN_FAILURES_FREE,
            login_backoff_base_ms: l::HTTP_LOGIN_BACKOFF_BASE_MS,
            login_backoff_max_ms: l::HTTP_LOGIN_BACKOFF_MS_MAX,
            login_failure_window_ms: l::HTTP_LOGIN_FAILURE_WINDOW_MS,
            streams_per_user_max: l::HTTP_STREAMS_PER_USER_MAX,
            stream_life_ms_max: l::HTTP_STREAM_LIFE_MS_MAX,
            stream_bytes_per_s_min: l::HTTP_STREAM_BYTES_PER_S_MIN,
            stream_grace_ms: l::HTTP_STREAM_GRACE_MS,
        }
    }
}

/// Tunables that are not in the config file.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Request worker threads (clamped to `1..=HTTP_WORKERS_MAX`).
    pub workers: usize,
    /// Redirect playback of clips that only live in the bucket to a presigned URL instead of
    /// streaming them through the appliance.
    pub presign_redirect: bool,
    /// Where the private unix socket between the front and tiny_http is made; a fresh
    /// directory under the system temp dir when `None`.
    pub socket_dir: Option<PathBuf>,
    /// Status page auto-refresh period.
    pub refresh_s: u32,
    /// Login backoff and stream limits.
    pub limits: HttpLimits,
    /// The full-text index of session events (search page, API, the player's event pane);
    /// `None`: those say search is not available.
    pub search: Option<Arc<crate::search::SearchIndex>>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            workers: 4,
            presign_redirect: false,
            socket_dir: None,
            refresh_s: 10,
            limits: HttpLimits::default(),
            search: None,
        }
    }
}

/// Everything the server needs.
#[derive(Clone)]
pub struct ServeContext {
    /// `[http]`.
    pub http: HttpConfig,
    /// The snapshot board.
    pub board: StatusBoard,
    /// Durable storage.
    pub backend: Backend,
    /// Clip bytes.
    pub clips: Arc<dyn ClipSource>,
    /// The tap's admission check.
    pub admission: AdmissionCheck,
    /// The settings as loaded at start (shown when there is no config file to edit).
    pub raw_config: RawConfig,
    /// The config file the settings page edits, and how the daemon applies it.
    pub settings: SettingsHooks,
    /// Wall clock (audit, sessions, uptime).
    pub clock: Arc<dyn Clock>,
    /// Tunables.
    pub options: ServeOptions,
}

/// Applies the config file after the settings page wrote it: `Ok` lists the changed keys that
/// wait for a restart, `Err` says why the file was not applied.
pub type ReloadHook = Arc<dyn Fn() -> Result<Vec<String>, String> + Send + Sync>;

/// The settings page's link to the one source of truth, the config file.
#[derive(Clone)]
pub struct SettingsHooks {
    /// The file the daemon was started with; `None` when it runs on the embedded defaults
    /// (the page then shows them and says how to make a file).
    pub file: Option<PathBuf>,
    /// Re-reads the file and applies what can change while running.
    pub reload: ReloadHook,
}

impl SettingsHooks {
    /// No file and nothing to reload (tests, the history role without a file).
    pub fn none() -> Self {
        Self {
            file: None,
            reload: Arc::new(|| Ok(Vec::new())),
        }
    }
}

/// A running server; stops on [`ServeHandle::stop`] or drop.
pub struct ServeHandle {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    front: Option<front::Front>,
    workers: Vec<std::thread::JoinHandle<()>>,
    streams: Arc<streams::Streams>,
    socket_dir: PathBuf,
    owns_socket_dir: bool,
}

impl ServeHandle {
    /// The address actually listened on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets workers finish their current request, and joins every thread.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        if let Some(f) = self.front.take() {
            f.stop();
        }
        self.stop.store(true, Ordering::SeqCst);
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        // After the front: the connections are gone, so running streams end on a failed write.
        self.streams.stop();
        let _ = std::fs::remove_file(self.socket_dir.join("http.sock"));
        if self.owns_socket_dir {
            let _ = std::fs::remove_dir(&self.socket_dir);
        }
        log::info!("event=http_stopped addr={}", self.addr);
    }
}

impl Drop for ServeHandle {
    fn drop(&mut self) {
        if self.front.is_some() || !self.workers.is_empty() {
            self.stop_inner();
        }
    }
}

/// Starts the server: binds `ctx.http.listen`, loads TLS when configured, spawns the front and
/// the workers.
///
/// # Errors
/// Bind failure, unusable certificate or key, or internal start-up failure.
pub fn start(ctx: ServeContext) -> Result<ServeHandle, ServeError> {
    let tls = match &ctx.http.tls {
        Some((cert, key)) => Some(Arc::new(
            front::tls_config(cert, key).map_err(ServeError::Tls)?,
        )),
        None => None,
    };
    let listener =
        std::net::TcpListener::bind(ctx.http.listen).map_err(|source| ServeError::Bind {
            addr: ctx.http.listen,
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|e| ServeError::Start(e.to_string()))?;
    let (socket_dir, owns_socket_dir) = socket_dir(&ctx.options)?;
    let socket = socket_dir.join("http.sock");
    let _ = std::fs::remove_file(&socket);
    let server = tiny_http::Server::http_unix(&socket)
        .map_err(|e| ServeError::Start(format!("tiny_http on {}: {e}", socket.display())))?;
    let server = Arc::new(server);
    let secure = tls.is_some();
    let front =
        front::spawn(listener, tls, socket).map_err(|e| ServeError::Start(e.to_string()))?;
    let stop = Arc::new(AtomicBool::new(false));
    let streams = Arc::new(
        streams::Streams::start(HTTP_STREAMS_MAX).map_err(|e| ServeError::Start(e.to_string()))?,
    );
    let app = Arc::new(ctx::App::new(ctx.clone(), secure, streams.clone()));
    let n = ctx.options.workers.clamp(1, HTTP_WORKERS_MAX);
    let mut workers = Vec::with_capacity(n);
    for i in 0..n {
        let (server, stop, app) = (server.clone(), stop.clone(), app.clone());
        let w = std::thread::Builder::new()
            .name(format!("http-worker-{i}"))
            .spawn(move || worker_loop(&server, &stop, &app))
            .map_err(|e| ServeError::Start(e.to_string()))?;
        workers.push(w);
    }
    log::info!(
        "event=http_started addr={addr} tls={secure} workers={n} streams={HTTP_STREAMS_MAX} \
         socket={}",
        socket_dir.display()
    );
    Ok(ServeHandle {
        addr,
        stop,
        front: Some(front),
        workers,
        streams,
        socket_dir,
        owns_socket_dir,
    })
}

fn worker_loop(server: &tiny_http::Server, stop: &AtomicBool, app: &ctx::App) {
    while !stop.load(Ordering::SeqCst) {
        match server.recv_timeout(Duration::from_millis(200)) {
            Ok(Some(rq)) => app.handle(rq),
            Ok(None) => {}
            Err(e) => log::debug!("event=http_recv_failed error={e}"),
        }
    }
}

fn socket_dir(options: &ServeOptions) -> Result<(PathBuf, bool), ServeError> {
    use std::os::unix::fs::DirBuilderExt;
    if let Some(d) = &options.socket_dir {
        return Ok((d.clone(), false));
    }
    let suffix = &auth::random_token()?[..12];
    let dir = std::env::temp_dir().join(format!(
        "session-recorder-http-{}-{suffix}",
        std::process::id()
    ));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| ServeError::Start(format!("socket dir {}: {e}", dir.display())))?;
    Ok((dir, true))
}
