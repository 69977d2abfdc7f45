//! The transparent Guacamole tap in front of guacd: accepts clients where they expected guacd,
//! relays both directions byte for byte, and records the sessions that must be recorded.
//!
//! Per connection:
//! 1. Handshake. The client's `select` names a protocol. When the tap already knows guacd's
//!    `args` for it (learned from an earlier connection), it answers `args` itself and guacd is
//!    contacted only once the session is admitted; otherwise it asks guacd. Either way the
//!    client sees guacd's `args` with our five `recording-*` names appended (version element
//!    kept at the head), and guacd sees exactly the `connect` it asked for.
//! 2. Admission (fail closed). A session that must be recorded starts only when the shared
//!    [`AdmissionState`] allows it, the sink opens the session and the segment directory is
//!    writable. Otherwise the client gets an `error` and, on a known protocol, guacd is never
//!    contacted; the refusal goes to the sink's `refused` (audit).
//! 3. Relay. Bytes are forwarded as they arrive; a recorded session is scanned on the side
//!    into rolling segment files ([`super::recorder`]). At critical disk, at shutdown or when
//!    recording fails, the session ends after the instruction in flight with an `error`, and
//!    what was written is sealed. Whatever decides that files an `EndRequest`; only the
//!    guacd -> client pump acts on it, between chunks, so no part of the tap is ever dropped
//!    half-way through forwarding a chunk the recorder has not seen.
//! 4. guacd is watched in the background ([`watch_upstream`]): its reachability is a status
//!    problem and a metric, and the configured protocols' `args` are learned whenever it
//!    (re)appears. A recorded session that cannot reach guacd leaves nothing behind.
//!
//! Sessions that need no recording are relayed untouched, with no scanning at all.
//! The tap does not own the executors: the daemon runs [`run_tap`] on one of its
//! `LocalExecutor`s; each connection is a task there.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use smol::channel::{Receiver, Sender};
use smol::future::FutureExt;
use smol::io::{AsyncReadExt, AsyncWriteExt};
use smol::net::{TcpListener, TcpStream};
use smol::{LocalExecutor, Timer};

use crate::clock::Clock;
use crate::config::Config;
use crate::limits::{
    SEGMENT_IDLE_FLUSH_MS, TAP_ARGS_CACHE_ENTRIES_MAX, TAP_CHUNKS_PER_YIELD, TAP_CLOSE_LINGER_MS,
    TAP_CONNECTIONS_MAX, TAP_DISK_CHECK_INTERVAL_MS, TAP_DRAIN_TIMEOUT_MS, TAP_HANDSHAKE_BYTES_MAX,
    TAP_HANDSHAKE_TIMEOUT_MS, TAP_LINGER_READ_BYTES, TAP_LINKED_SESSIONS_MAX,
    TAP_META_VALUE_CHARS_MAX, TAP_RECONNECT_POLL_MS, TAP_RECONNECT_SEAL_WAIT_MS,
    TAP_RECONNECT_WAIT_MS, TAP_RELAY_BUFFER_BYTES, TAP_SESSION_ID_CHARS_MAX,
    TAP_UPSTREAM_CONNECT_TIMEOUT_MS, TAP_UPSTREAM_PROBE_INTERVAL_MS,
};
use crate::status::StatusBoard;

use super::admission::{AdmissionState, Refusal};
use super::handshake::{
    HandshakeError, Instruction, RecordingValues, StatusCode, error_instruction, extend_args,
    parse_instruction, split_connect,
};
use super::recorder::{RecordError, Recorder};
use super::segment::{SegmentWriter, is_safe_session_id, session_dir};
use super::sink::{EndReason, RecordingSink, Rejoin, SessionMeta};
use crate::disk::DiskState;

/// The tap's listener failed.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// Accepting connections failed for good.
    #[error("tap listener: {0}")]
    Listen(#[source] std::io::Error),
}

impl crate::error::Classify for TapError {
    fn is_transient(&self) -> bool {
        match self {
            TapError::Listen(e) => e.is_transient(),
        }
    }
}

/// The tap's settings, from [`Config`] (tests shorten the timeouts).
#[derive(Debug, Clone)]
pub struct TapSettings {
    /// guacd, `host:port`.
    pub upstream: String,
    /// Record `key` events.
    pub record_keys: bool,
    /// Record sessions that do not say `recording-required`.
    pub record_by_default: bool,
    /// `<data_dir>/segments`.
    pub segments_dir: PathBuf,
    /// Segments roll (after a `sync`) once they reach this size.
    pub segment_bytes_max: u64,
    /// The whole handshake must finish within this.
    pub handshake_timeout: Duration,
    /// Concurrent connections accepted.
    pub connections_max: usize,
    /// Protocols whose `args` are asked of guacd before any client needs them.
    pub protocols: Vec<String>,
    /// How often guacd is probed in the background.
    pub upstream_probe_interval: Duration,
}

impl TapSettings {
    /// The settings for `config`, with the named default limits.
    pub fn from_config(config: &Config) -> Self {
        Self {
            upstream: config.tap.upstream.clone(),
            record_keys: config.tap.record_keys,
            record_by_default: config.tap.record_by_default,
            segments_dir: config.data_dir.join("segments"),
            segment_bytes_max: config.segment_bytes_max,
            handshake_timeout: Duration::from_millis(TAP_HANDSHAKE_TIMEOUT_MS),
            connections_max: TAP_CONNECTIONS_MAX,
            protocols: config.tap.protocols.clone(),
            upstream_probe_interval: Duration::from_millis(TAP_UPSTREAM_PROBE_INTERVAL_MS),
        }
    }
}

/// The recording flags a settings reload changes while the tap runs (`tap.record-keys`,
/// `tap.record-by-default`): each new connection reads them once, at its handshake; sessions
/// already running keep what they started with.
#[derive(Debug)]
pub struct RecordingFlags {
    record_keys: AtomicBool,
    record_by_default: AtomicBool,
}

impl RecordingFlags {
    fn new(settings: &TapSettings) -> Self {
        Self {
            record_keys: AtomicBool::new(settings.record_keys),
            record_by_default: AtomicBool::new(settings.record_by_default),
        }
    }

    /// Puts new values in force for connections that start from now on.
    pub fn set(&self, record_keys: bool, record_by_default: bool) {
        self.record_keys.store(record_keys, Ordering::Relaxed);
        self.record_by_default
            .store(record_by_default, Ordering::Relaxed);
    }

    /// Whether new sessions record `key` events.
    pub fn record_keys(&self) -> bool {
        self.record_keys.load(Ordering::Relaxed)
    }

    /// Whether new sessions that do not say `recording-required` are recorded.
    pub fn record_by_default(&self) -> bool {
        self.record_by_default.load(Ordering::Relaxed)
    }
}

/// State shared by every connection of every executor.
struct Shared {
    /// guacd's `args` per `select` value (protocol names only, never join ids).
    args_cache: Mutex<HashMap<String, Vec<String>>>,
    connections: AtomicUsize,
    upstream_connects: AtomicUsize,
    /// Recorded sessions live in this process, by session id: a reconnect continues one
    /// only once the previous connection sealed its segments, so segment indices never
    /// collide.
    live_sessions: Mutex<HashMap<String, LiveEntry>>,
    /// Whether the last contact with guacd worked; `None` before the first.
    upstream_reachable: Mutex<Option<bool>>,
    /// Sessions relayed without recording since the start.
    unrecorded_total: AtomicUsize,
}

/// Everything a connection needs. Cheap to clone; clones share the args cache and counters.
#[derive(Clone)]
pub struct TapContext {
    /// Settings.
    pub settings: Arc<TapSettings>,
    /// The gate the daemon updates.
    pub admission: Arc<AdmissionState>,
    /// Where sessions and sealed segments go.
    pub sink: Arc<dyn RecordingSink>,
    /// Wall clock for session start times.
    pub clock: Arc<dyn Clock>,
    /// Where live-session counts and errors are published, if anywhere.
    pub status: Option<StatusBoard>,
    /// The recording flags in force (initially from `settings`; a reload changes them).
    pub flags: Arc<RecordingFlags>,
    shared: Arc<Shared>,
}

impl TapContext {
    /// A context for the tap.
    pub fn new(
        settings: TapSettings,
        admission: Arc<AdmissionState>,
        sink: Arc<dyn RecordingSink>,
        clock: Arc<dyn Clock>,
        status: Option<StatusBoard>,
    ) -> Self {
        Self {
            flags: Arc::new(RecordingFlags::new(&settings)),
            settings: Arc::new(settings),
            admission,
            sink,
            clock,
            status,
            shared: Arc::new(Shared {
                args_cache: Mutex::new(HashMap::new()),
                connections: AtomicUsize::new(0),
                upstream_connects: AtomicUsize::new(0),
                live_sessions: Mutex::new(HashMap::new()),
                upstream_reachable: Mutex::new(None),
                unrecorded_total: AtomicUsize::new(0),
            }),
        }
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Connections the tap has opened to guacd since it started.
    pub fn upstream_connects(&self) -> usize {
        self.shared.upstream_connects.load(Ordering::SeqCst)
    }

    /// Sessions relayed without recording since the start.
    pub fn unrecorded_sessions(&self) -> usize {
        self.shared.unrecorded_total.load(Ordering::SeqCst)
    }

    /// Whether the last contact with guacd worked; `None` before the first.
    pub fn upstream_reachable(&self) -> Option<bool> {
        *self
            .shared
            .upstream_reachable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Notes the result of a contact with guacd (the probe's or a session's connect): logged
    /// and published when reachability changes. Returns true when guacd just became
    /// reachable (first contact, or back after being down).
    fn note_upstream(&self, result: Result<(), &std::io::Error>) -> bool {
        let reachable = result.is_ok();
        let before = {
            let mut state = self
                .shared
                .upstream_reachable
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            state.replace(reachable)
        };
        let upstream = &self.settings.upstream;
        if let Some(board) = &self.status {
            board.set_upstream(reachable, result.err().map(|e| e.to_string()));
        }
        self.admission
            .set_upstream_problem(result.err().map(|e| format!("{upstream}: {e}")));
        if before == Some(reachable) {
            return false;
        }
        match result {
            Ok(()) => log::info!("event=guacd_reachable upstream={upstream}"),
            Err(e) => {
                log::error!("event=guacd_unreachable upstream={upstream} error={e}");
                if let Some(board) = &self.status {
                    board.record_error("tap", &format!("guacd at {upstream} unreachable: {e}"));
                }
            }
        }
        reachable
    }

    fn publish_unrecorded(&self, delta: i64) {
        if delta > 0 {
            self.shared.unrecorded_total.fetch_add(1, Ordering::SeqCst);
        }
        if let Some(board) = &self.status {
            board.update(|s| {
                s.tap.unrecorded_live = s.tap.unrecorded_live.saturating_add_signed(delta);
                if delta > 0 {
                    s.tap.unrecorded_total += 1;
                }
            });
        }
    }

    /// Whether guacd's `args` for `select` are known (learned up front or from a session).
    pub fn knows_args(&self, select: &str) -> bool {
        self.cached_args(select).is_some()
    }

    fn cached_args(&self, select: &str) -> Option<Vec<String>> {
        let cache = self
            .shared
            .args_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        cache.get(select).cloned()
    }

    fn remember_args(&self, select: &str, args: &[String]) {
        // Joins select a connection id (`$...`): one-off, never cached.
        if select.starts_with('$') {
            return;
        }
        let mut cache = self
            .shared
            .args_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if cache.len() >= TAP_ARGS_CACHE_ENTRIES_MAX && !cache.contains_key(select) {
            return;
        }
        cache.insert(select.to_string(), args.to_vec());
    }

    fn live_sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, LiveEntry>> {
        self.shared
            .live_sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Claims `meta`'s session for a new connection. When another connection records it now,
    /// waits (bounded) for that one to go: if it does, it seals and hands the session over,
    /// and this connection continues it; if it stays (a second tab), this connection is
    /// recorded as a linked session with a derived id. Answers well within 2 s either way.
    async fn claim_or_rejoin(
        &self,
        meta: Arc<SessionMeta>,
    ) -> Result<(Arc<SessionMeta>, SessionClaim, Option<Rejoin>), Arc<SessionMeta>> {
        let id = meta.session_id.clone();
        {
            let mut live = self.live_sessions();
            match live.get_mut(&id) {
                None => {
                    live.insert(id.clone(), LiveEntry::default());
                    drop(live);
                    return Ok((meta, SessionClaim::new(self, &id), None));
                }
                Some(entry) => entry.waiting += 1,
            }
        }
        log::info!(
            "event=session_reconnect_waiting session={id} addr={}",
            meta.client_addr
        );
        let started = Instant::now();
        loop {
            Timer::after(Duration::from_millis(TAP_RECONNECT_POLL_MS)).await;
            let waited_ms = started.elapsed().as_millis() as u64;
            let mut live = self.live_sessions();
            let Some(entry) = live.get_mut(&id) else {
                // The earlier connection closed the session before it saw this one waiting.
                live.insert(id.clone(), LiveEntry::default());
                drop(live);
                let how = Rejoin::Continued { waited_ms };
                return Ok((meta, SessionClaim::new(self, &id), Some(how)));
            };
            if entry.handed_over {
                entry.handed_over = false;
                entry.going = false;
                entry.waiting -= 1;
                drop(live);
                let how = Rejoin::Continued { waited_ms };
                return Ok((meta, SessionClaim::new(self, &id), Some(how)));
            }
            let stays = !entry.going && waited_ms >= TAP_RECONNECT_WAIT_MS;
            if stays || waited_ms >= TAP_RECONNECT_SEAL_WAIT_MS {
                entry.waiting -= 1;
                return self.link(&mut live, meta);
            }
        }
    }

    /// Records `meta` beside the live session of its id, under the first free derived id
    /// `ID.N` (N from 2).
    fn link(
        &self,
        live: &mut HashMap<String, LiveEntry>,
        meta: Arc<SessionMeta>,
    ) -> Result<(Arc<SessionMeta>, SessionClaim, Option<Rejoin>), Arc<SessionMeta>> {
        for n in 2..2 + TAP_LINKED_SESSIONS_MAX {
            let suffix = format!(".{n}");
            let keep = TAP_SESSION_ID_CHARS_MAX - suffix.len();
            let linked: String = meta.session_id.chars().take(keep).collect::<String>() + &suffix;
            if live.contains_key(&linked) {
                continue;
            }
            live.insert(linked.clone(), LiveEntry::default());
            let how = Rejoin::Linked {
                live: meta.session_id.clone(),
            };
            let claim = SessionClaim::new(self, &linked);
            let linked_meta = Arc::new(SessionMeta {
                session_id: linked,
                ..(*meta).clone()
            });
            return Ok((linked_meta, claim, Some(how)));
        }
        Err(meta)
    }

    fn publish_live(&self, delta: i64) {
        if let Some(board) = &self.status {
            board.update(|s| s.live_sessions = s.live_sessions.saturating_add_signed(delta));
        }
    }
}

/// Accepts clients on `listener` until `shutdown` is closed (or receives a message), spawning
/// one task per connection on `ex`; then waits for every connection to finish (recorded ones
/// are closed with an `error` after sealing what was written).
///
/// # Errors
/// Only when the listener itself fails for good.
pub async fn run_tap(
    ctx: TapContext,
    listener: TcpListener,
    ex: Rc<LocalExecutor<'static>>,
    shutdown: Receiver<()>,
) -> Result<(), TapError> {
    let (alive_tx, alive_rx) = smol::channel::bounded::<()>(1);
    log::info!(
        "event=tap_listening addr={:?} upstream={}",
        listener.local_addr().ok(),
        ctx.settings.upstream
    );
    loop {
        let next = async { Some(listener.accept().await) }
            .or(async {
                let _ = shutdown.recv().await;
                None
            })
            .await;
        let Some(accepted) = next else {
            break;
        };
        match accepted {
            Ok((stream, addr)) => {
                let task = connection(
                    ctx.clone(),
                    stream,
                    addr,
                    shutdown.clone(),
                    alive_tx.clone(),
                );
                ex.spawn(task).detach();
            }
            Err(e) => {
                // Out of descriptors and similar: back off briefly instead of spinning.
                log::error!("event=tap_accept_failed error={e}");
                Timer::after(Duration::from_millis(50)).await;
            }
        }
    }
    drop(alive_tx);
    // Every connection holds a sender; `recv` fails once all are gone.
    let _ = alive_rx.recv().await;
    log::info!("event=tap_stopped");
    Ok(())
}

/// Asks guacd for the `args` of each protocol in `protocols` not known yet (one short
/// connection each, no session is started) so that from the very first client on, a refused
/// session never reaches guacd. guacd logs each of these as a failed handshake, so only the
/// configured protocols are asked, once each. Protocols guacd does not know, or a guacd that
/// is down, are logged and skipped: the tap then learns the list from the first client.
pub async fn learn_args(ctx: &TapContext, protocols: &[&str]) {
    for protocol in protocols {
        if ctx.cached_args(protocol).is_some() {
            continue;
        }
        let select = super::handshake::encode(&["select", protocol]);
        // Bounded like a client's handshake: something at the upstream address that accepts
        // and never answers must not stop the watch that called this.
        let asked = async { open_upstream(ctx, &select).await.map_err(|_| ()) }.or(async {
            Timer::after(ctx.settings.handshake_timeout).await;
            Err(())
        });
        match asked.await {
            Ok(up) => {
                ctx.remember_args(protocol, &up.args);
                log::info!(
                    "event=tap_args_learned protocol={protocol} args={}",
                    up.args.len()
                );
            }
            Err(_) => log::warn!("event=tap_args_not_learned protocol={protocol}"),
        }
    }
}

/// Watches guacd until `shutdown`: a bare TCP connect every probe interval (guacd logs
/// nothing for a connection that closes before `select`), so that guacd being down is a
/// status problem and a metric even while no session arrives, and clears once it is back.
/// Each time guacd becomes reachable (at start, or back after an outage) the configured
/// protocols' `args` not known yet are learned.
pub async fn watch_upstream(ctx: TapContext, shutdown: Receiver<()>) {
    let protocols: Vec<String> = ctx.settings.protocols.clone();
    let protocols: Vec<&str> = protocols.iter().map(String::as_str).collect();
    loop {
        let probe = connect_upstream(&ctx.settings.upstream).await;
        if ctx.note_upstream(probe.as_ref().map(|_| ())) {
            learn_args(&ctx, &protocols).await;
        }
        drop(probe);
        let stopped = async {
            Timer::after(ctx.settings.upstream_probe_interval).await;
            false
        }
        .or(async {
            let _ = shutdown.recv().await;
            true
        })
        .await;
        if stopped {
            return;
        }
    }
}

/// A TCP connection to guacd, bounded by the connect timeout.
async fn connect_upstream(addr: &str) -> std::io::Result<TcpStream> {
    async { TcpStream::connect(addr).await }
        .or(async {
            Timer::after(Duration::from_millis(TAP_UPSTREAM_CONNECT_TIMEOUT_MS)).await;
            Err(std::io::ErrorKind::TimedOut.into())
        })
        .await
}

/// A recorded session live in this process, as the claims see it.
#[derive(Debug, Default)]
struct LiveEntry {
    /// The connection recording it is ending (a side closed, or the tap closes it).
    going: bool,
    /// New connections with its id waiting to continue it.
    waiting: u32,
    /// The connection that recorded it sealed its segments and left it open for a waiting
    /// one.
    handed_over: bool,
}

/// A recorded session live in this process; released on drop, however the connection ends,
/// unless it was handed over to a waiting connection.
struct SessionClaim {
    shared: Arc<Shared>,
    session_id: String,
    handed_over: bool,
}

impl SessionClaim {
    fn new(ctx: &TapContext, session_id: &str) -> Self {
        Self {
            shared: ctx.shared.clone(),
            session_id: session_id.to_string(),
            handed_over: false,
        }
    }

    fn with_entry<T>(&self, f: impl FnOnce(&mut LiveEntry) -> T) -> Option<T> {
        let mut live = self
            .shared
            .live_sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        live.get_mut(&self.session_id).map(f)
    }

    /// This connection is ending: a reconnect waiting for it will get the session.
    fn mark_going(&self) {
        self.with_entry(|e| e.going = true);
    }

    /// After sealing: hands the session to a connection waiting for it, if any (the session
    /// then stays open). True when handed over.
    fn hand_over(&mut self) -> bool {
        let handed = self
            .with_entry(|e| {
                if e.waiting > 0 {
                    e.handed_over = true;
                }
                e.handed_over
            })
            .unwrap_or(false);
        self.handed_over = handed;
        handed
    }
}

impl Drop for SessionClaim {
    fn drop(&mut self) {
        if self.handed_over {
            return;
        }
        let mut live = self
            .shared
            .live_sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        live.remove(&self.session_id);
    }
}

/// Decrements the connection count when a connection ends, however it ends.
struct ConnectionSlot(Arc<Shared>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn connection(
    ctx: TapContext,
    mut client: TcpStream,
    addr: SocketAddr,
    shutdown: Receiver<()>,
    _alive: Sender<()>,
) {
    let n = ctx.shared.connections.fetch_add(1, Ordering::SeqCst) + 1;
    let _slot = ConnectionSlot(ctx.shared.clone());
    if n > ctx.settings.connections_max {
        log::warn!("event=tap_connection_refused reason=too_many addr={addr} open={n}");
        let refusal = Refusal::new(StatusCode::ServerBusy, "Too many connections");
        let _ = client.write_all(&error_of(&refusal)).await;
        return;
    }
    let _ = client.set_nodelay(true);
    let timeout = ctx.settings.handshake_timeout;
    let outcome = handshake(&ctx, &mut client, addr)
        .or(async {
            Timer::after(timeout).await;
            Err(Ending::Timeout)
        })
        .await;
    let established = match outcome {
        Ok(e) => e,
        Err(ending) => {
            end_handshake(&ctx, &mut client, addr, ending).await;
            return;
        }
    };
    relay(&ctx, client, addr, established, shutdown).await;
}

/// Why a handshake did not lead to a session.
enum Ending {
    /// The peer went away or failed mid-handshake (nothing to tell it).
    Io(std::io::Error),
    /// Malformed or oversized handshake.
    Bad(HandshakeError),
    /// Took too long.
    Timeout,
    /// guacd cannot be reached.
    Upstream(std::io::Error),
    /// Refused by admission; the metadata when the session was identified.
    Refused(Refusal, Option<Arc<SessionMeta>>),
    /// Admitted, and opened in the sink, but it could not start (its segment directory or
    /// guacd failed); nothing was recorded and nothing is left on disk.
    NotStarted(Refusal, Arc<SessionMeta>),
}

async fn end_handshake(ctx: &TapContext, client: &mut TcpStream, addr: SocketAddr, e: Ending) {
    let refusal = match e {
        Ending::Io(e) => {
            log::debug!("event=tap_handshake_aborted addr={addr} error={e}");
            return;
        }
        Ending::Bad(e) => {
            log::warn!("event=tap_handshake_bad addr={addr} error={e}");
            Refusal::new(StatusCode::ClientBadRequest, format!("Bad handshake: {e}"))
        }
        Ending::Timeout => {
            log::warn!("event=tap_handshake_timeout addr={addr}");
            Refusal::new(StatusCode::ClientTimeout, "Handshake timed out")
        }
        Ending::Upstream(e) => {
            log::error!(
                "event=tap_upstream_unavailable addr={addr} upstream={} error={e}",
                ctx.settings.upstream
            );
            upstream_refusal(&e.to_string())
        }
        Ending::Refused(refusal, meta) => {
            log::warn!(
                "event=session_refused addr={addr} session={} code={} reason={:?}",
                meta.as_ref().map(|m| m.session_id.as_str()).unwrap_or("-"),
                refusal.code.as_u16(),
                refusal.message
            );
            if let Some(board) = &ctx.status {
                board.record_error("tap", &refusal.message);
            }
            if let Some(meta) = meta {
                let (sink, reason) = (ctx.sink.clone(), refusal.message.clone());
                smol::unblock(move || sink.refused(&meta, &reason)).await;
            }
            refusal
        }
        Ending::NotStarted(refusal, meta) => {
            log::warn!(
                "event=session_not_started session={} addr={addr} code={} reason={:?}",
                meta.session_id,
                refusal.code.as_u16(),
                refusal.message
            );
            if let Some(board) = &ctx.status {
                board.record_error(
                    "tap",
                    &format!(
                        "session {} not started: {}",
                        meta.session_id, refusal.message
                    ),
                );
            }
            let (sink, reason) = (ctx.sink.clone(), refusal.message.clone());
            smol::unblock(move || sink.not_started(&meta, &reason)).await;
            refusal
        }
    };
    let _ = client.write_all(&error_of(&refusal)).await;
    let _ = client.flush().await;
}

fn error_of(r: &Refusal) -> Vec<u8> {
    error_instruction(&r.message, r.code)
}

/// Reads whole handshake instructions from one side, bounded.
struct HandshakeReader {
    buf: Vec<u8>,
    total: usize,
}

impl HandshakeReader {
    fn new() -> Self {
        Self {
            buf: Vec::new(),
            total: 0,
        }
    }

    async fn next(
        &mut self,
        stream: &mut TcpStream,
    ) -> Result<(Instruction, Vec<u8>), HandshakeFailure> {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some((ins, used)) = parse_instruction(&self.buf)? {
                let raw: Vec<u8> = self.buf.drain(..used).collect();
                return Ok((ins, raw));
            }
            if self.total >= TAP_HANDSHAKE_BYTES_MAX {
                return Err(HandshakeError::TooLarge {
                    max: TAP_HANDSHAKE_BYTES_MAX,
                }
                .into());
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(HandshakeFailure::Io(
                    std::io::ErrorKind::UnexpectedEof.into(),
                ));
            }
            self.total += n;
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    async fn expect(
        &mut self,
        stream: &mut TcpStream,
        opcode: &'static str,
    ) -> Result<(Instruction, Vec<u8>), HandshakeFailure> {
        let (ins, raw) = self.next(stream).await?;
        if ins.opcode() != opcode {
            return Err(HandshakeError::Unexpected {
                got: ins.opcode().chars().take(32).collect(),
                expected: opcode,
            }
            .into());
        }
        Ok((ins, raw))
    }
}

enum HandshakeFailure {
    Io(std::io::Error),
    Bad(HandshakeError),
}

impl From<std::io::Error> for HandshakeFailure {
    fn from(e: std::io::Error) -> Self {
        HandshakeFailure::Io(e)
    }
}

impl From<HandshakeError> for HandshakeFailure {
    fn from(e: HandshakeError) -> Self {
        HandshakeFailure::Bad(e)
    }
}

/// A failure reading the client's side.
fn client_side(e: HandshakeFailure) -> Ending {
    match e {
        HandshakeFailure::Io(e) => Ending::Io(e),
        HandshakeFailure::Bad(e) => Ending::Bad(e),
    }
}

/// A failure on guacd's side.
fn upstream_side(e: HandshakeFailure) -> Ending {
    match e {
        HandshakeFailure::Io(e) => Ending::Upstream(e),
        HandshakeFailure::Bad(e) => Ending::Upstream(std::io::Error::other(e.to_string())),
    }
}

/// A session past the handshake.
struct Established {
    upstream: TcpStream,
    /// Bytes guacd sent after `args` (for the client, and the recorder).
    upstream_leftover: Vec<u8>,
    /// Bytes the client sent after `connect` (already forwarded; for the recorder).
    client_leftover: Vec<u8>,
    /// What the client selected, for the logs (a join's connection id reads `join`).
    protocol: String,
    recording: Option<(Arc<SessionMeta>, Recorder, SessionClaim)>,
}

struct Upstream {
    stream: TcpStream,
    reader: HandshakeReader,
    args: Vec<String>,
}

async fn open_upstream(ctx: &TapContext, select_raw: &[u8]) -> Result<Upstream, Ending> {
    let connected = connect_upstream(&ctx.settings.upstream).await;
    ctx.note_upstream(connected.as_ref().map(|_| ()));
    let mut stream = connected.map_err(Ending::Upstream)?;
    ctx.shared.upstream_connects.fetch_add(1, Ordering::SeqCst);
    let _ = stream.set_nodelay(true);
    stream
        .write_all(select_raw)
        .await
        .map_err(Ending::Upstream)?;
    let mut reader = HandshakeReader::new();
    let (args, _) = reader
        .expect(&mut stream, "args")
        .await
        .map_err(upstream_side)?;
    Ok(Upstream {
        stream,
        reader,
        args: args.args().to_vec(),
    })
}

async fn handshake(
    ctx: &TapContext,
    client: &mut TcpStream,
    addr: SocketAddr,
) -> Result<Established, Ending> {
    // 1. `select`, then guacd's args: from the cache or from guacd.
    let mut from_client = HandshakeReader::new();
    let (select, select_raw) = from_client
        .expect(client, "select")
        .await
        .map_err(client_side)?;
    let [target] = select.args() else {
        return Err(Ending::Bad(HandshakeError::Malformed { offset: 0 }));
    };
    let mut upstream = None;
    let args_answered = match ctx.cached_args(target) {
        Some(args) => args,
        None => {
            let up = open_upstream(ctx, &select_raw).await?;
            ctx.remember_args(target, &up.args);
            let args = up.args.clone();
            upstream = Some(up);
            args
        }
    };
    client
        .write_all(&extend_args(&args_answered))
        .await
        .map_err(Ending::Io)?;

    // 2. The client's size/audio/video/image/timezone/name, then `connect`.
    let mut forward = Vec::new();
    let connect = loop {
        let (ins, raw) = from_client.next(client).await.map_err(client_side)?;
        if ins.opcode() == "connect" {
            break ins;
        }
        forward.extend_from_slice(&raw);
    };
    let (_, ours) = split_connect(connect.args(), &args_answered, &args_answered);

    // 3. Admission.
    let recording = match recording_required(&ours, ctx.flags.record_by_default()) {
        true => Some(admit(ctx, target, addr, &ours).await?),
        false => None,
    };

    // 4. guacd: connect now if not yet, forward the handshake with guacd's own `connect`.
    let mut up = match upstream {
        Some(up) => up,
        None => match open_upstream(ctx, &select_raw).await {
            Ok(up) => up,
            Err(e) => {
                return Err(match recording {
                    Some((meta, rec, _claim)) => abandon_recording(ctx, meta, rec, e).await,
                    None => e,
                });
            }
        },
    };
    if up.args != args_answered {
        log::warn!("event=tap_args_changed select={target}");
        ctx.remember_args(target, &up.args);
    }
    let (connect_bytes, _) = split_connect(connect.args(), &args_answered, &up.args);
    forward.extend_from_slice(&connect_bytes);
    let client_leftover = std::mem::take(&mut from_client.buf);
    forward.extend_from_slice(&client_leftover);
    if let Err(e) = up.stream.write_all(&forward).await {
        let e = Ending::Upstream(e);
        return Err(match recording {
            Some((meta, rec, _claim)) => abandon_recording(ctx, meta, rec, e).await,
            None => e,
        });
    }
    let protocol = match target.starts_with('$') {
        true => "join".to_string(),
        false => target.chars().take(TAP_META_VALUE_CHARS_MAX).collect(),
    };
    Ok(Established {
        upstream: up.stream,
        upstream_leftover: std::mem::take(&mut up.reader.buf),
        client_leftover,
        protocol,
        recording,
    })
}

/// A recorded session was admitted but guacd could not be reached (`e`): nothing was
/// recorded, so nothing is kept. Removes the empty segment file and directory (a reconnect's
/// directory, holding its earlier segments, stays) and returns the ending that has the sink
/// forget the session and audit why it never started.
async fn abandon_recording(
    ctx: &TapContext,
    meta: Arc<SessionMeta>,
    rec: Recorder,
    e: Ending,
) -> Ending {
    let detail = match &e {
        Ending::Upstream(io) => io.to_string(),
        _ => "no connection".to_string(),
    };
    if let Err(e) = rec.close().await {
        log::warn!(
            "event=session_close_failed session={} error={e}",
            meta.session_id
        );
    }
    remove_if_empty(&session_dir(&ctx.settings.segments_dir, &meta.session_id));
    Ending::NotStarted(upstream_refusal(&detail), meta)
}

/// What a client hears when guacd cannot be reached: the same for recorded and unrecorded
/// sessions.
fn upstream_refusal(detail: &str) -> Refusal {
    Refusal::new(
        StatusCode::UpstreamUnavailable,
        format!("The remote desktop gateway (guacd) is unavailable ({detail})"),
    )
}

/// Removes `dir` if it is empty (anything in it is kept).
fn remove_if_empty(dir: &std::path::Path) {
    match std::fs::remove_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) if e.kind() == std::io::ErrorKind::DirectoryNotEmpty => {}
        Err(e) => log::warn!(
            "event=session_dir_remove_failed dir={} error={e}",
            dir.display()
        ),
    }
}

/// `recording-required`: `true`/`false` (also `1`/`0`, `yes`/`no`); absent, empty or anything
/// else means the configured default.
fn recording_required(ours: &RecordingValues, default: bool) -> bool {
    match ours[4].as_deref().map(str::trim) {
        Some("true" | "1" | "yes") => true,
        Some("false" | "0" | "no") => false,
        _ => default,
    }
}

/// Admits a session that must be recorded: gate, session metadata, sink, segment directory.
async fn admit(
    ctx: &TapContext,
    target: &str,
    addr: SocketAddr,
    ours: &RecordingValues,
) -> Result<(Arc<SessionMeta>, Recorder, SessionClaim), Ending> {
    let value = |i: usize| -> String {
        ours[i]
            .as_deref()
            .unwrap_or("")
            .chars()
            .take(TAP_META_VALUE_CHARS_MAX)
            .collect()
    };
    let session_id = match ours[0].as_deref().unwrap_or("") {
        "" => generated_session_id(),
        id => id.to_string(),
    };
    let meta = Arc::new(SessionMeta {
        session_id,
        user_id: value(1),
        username: value(2),
        image_friendly_name: value(3),
        protocol: target.chars().take(TAP_META_VALUE_CHARS_MAX).collect(),
        client_addr: addr.to_string(),
        started_ms: ctx.clock.now_ms(),
    });
    let refuse =
        |code, message: String| Ending::Refused(Refusal::new(code, message), Some(meta.clone()));
    if !is_safe_session_id(&meta.session_id) {
        return Err(refuse(
            StatusCode::ClientBadRequest,
            "Session recording unavailable: recording-session-id must be 1-128 characters of \
             A-Z a-z 0-9 . _ -"
                .into(),
        ));
    }
    if let Err(r) = ctx.admission.check() {
        return Err(Ending::Refused(r, Some(meta)));
    }
    // A connection with the id of a live session: a reconnect continues it once the earlier
    // connection sealed; a second tab is recorded beside it.
    let (meta, claim, rejoin) = match ctx.claim_or_rejoin(meta).await {
        Ok(claimed) => claimed,
        Err(meta) => {
            return Err(Ending::Refused(
                Refusal::new(
                    StatusCode::ServerBusy,
                    format!(
                        "Session recording unavailable: {TAP_LINKED_SESSIONS_MAX} other \
                         connections already record this session"
                    ),
                ),
                Some(meta),
            ));
        }
    };
    let refuse =
        |code, message: String| Ending::Refused(Refusal::new(code, message), Some(meta.clone()));
    let (sink, m) = (ctx.sink.clone(), meta.clone());
    let start = match smol::unblock(move || sink.open_session(&m)).await {
        Ok(start) => start,
        Err(e) => {
            return Err(refuse(
                StatusCode::ServerError,
                format!("Session recording unavailable: {e}"),
            ));
        }
    };
    let dir = session_dir(&ctx.settings.segments_dir, &meta.session_id);
    let (sink, m) = (ctx.sink.clone(), meta.clone());
    let writer = match smol::unblock(move || SegmentWriter::create(dir, m, sink, start)).await {
        Ok(w) => w,
        Err(e) => {
            remove_if_empty(&session_dir(&ctx.settings.segments_dir, &meta.session_id));
            return Err(Ending::NotStarted(
                Refusal::new(
                    StatusCode::ServerError,
                    format!("Session recording unavailable: segment directory not writable ({e})"),
                ),
                meta,
            ));
        }
    };
    log::info!(
        "event=session_admitted session={} user={} first_segment={} addr={addr}",
        meta.session_id,
        meta.user_id,
        start.next_index
    );
    if let Some(how) = rejoin {
        match &how {
            Rejoin::Continued { waited_ms } => log::info!(
                "event=session_reconnected session={} first_segment={} waited_ms={waited_ms} \
                 addr={addr}",
                meta.session_id,
                start.next_index
            ),
            Rejoin::Linked { live } => log::warn!(
                "event=session_linked session={} live={live} addr={addr} \
                 cause=earlier_connection_still_live",
                meta.session_id
            ),
        }
        let (sink, m) = (ctx.sink.clone(), meta.clone());
        smol::unblock(move || sink.rejoined(&m, &how)).await;
    }
    let rec = Recorder::new(
        writer,
        ctx.settings.segment_bytes_max,
        ctx.flags.record_keys(),
    );
    Ok((meta, rec, claim))
}

fn generated_session_id() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        // No entropy is a broken system; a time-based id still keeps sessions apart.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        bytes = t.to_le_bytes();
    }
    format!("tap-{}", hex::encode(bytes))
}

/// Seals what a recorder wrote, then hands the session to a reconnect waiting for it or
/// tells the sink the session closed, and how.
async fn close_recording(
    ctx: &TapContext,
    meta: &Arc<SessionMeta>,
    rec: Recorder,
    claim: &mut SessionClaim,
    reason: EndReason,
) {
    match rec.close().await {
        Ok(sealed) => {
            log::info!(
                "event=session_closed session={} segments_sealed={sealed} reason={}",
                meta.session_id,
                reason.name()
            );
            if sealed == 0 {
                // Nothing drawn: no empty directory (a reconnect's earlier segments stay).
                remove_if_empty(&session_dir(&ctx.settings.segments_dir, &meta.session_id));
            }
        }
        Err(e) => {
            log::error!(
                "event=session_close_failed session={} error={e}",
                meta.session_id
            );
            if let Some(board) = &ctx.status {
                board.record_error("tap", &format!("session {}: {e}", meta.session_id));
            }
        }
    }
    if claim.hand_over() {
        log::info!(
            "event=session_handed_over session={} reason={}",
            meta.session_id,
            reason.name()
        );
        return;
    }
    let (sink, m) = (ctx.sink.clone(), meta.clone());
    smol::unblock(move || sink.session_closed(&m, reason)).await;
}

/// Socket reads that find data return at once, so a busy stream would never give its
/// executor back: yield every few chunks so that other connections on the same core (and the
/// other direction of this one) get their turn.
#[derive(Default)]
struct Fairness {
    chunks: u32,
}

impl Fairness {
    async fn tick(&mut self) {
        self.chunks = self.chunks.wrapping_add(1);
        if self.chunks.is_multiple_of(TAP_CHUNKS_PER_YIELD) {
            smol::future::yield_now().await;
        }
    }
}

/// Why a recorded session must end, as filed with [`EndRequest::file`].
#[derive(Debug, Clone)]
enum End {
    /// Either side closed or failed (the reason says which): there is no one to tell.
    Closed(EndReason),
    /// The tap must close it with this `error`, on an instruction boundary.
    Close(Refusal, EndReason),
}

/// How the guacd -> client pump finished a recorded session, and why.
enum Outcome {
    /// A side closed or failed; nothing was sent.
    Closed(EndReason),
    /// The client got the `error`, on an instruction boundary.
    Told(Refusal, EndReason),
    /// The `error` was due but no instruction boundary could be reached in time (the client
    /// stopped reading, or guacd stopped mid-instruction): closed without it, since an
    /// `error` inside an instruction would only be garbage to the client.
    Cut(Refusal, EndReason),
}

impl Outcome {
    /// How the session ended, from the outcome and the goodbyes each side said: a client's
    /// `disconnect` is the user's, a `disconnect`/`error` from guacd before a side closed
    /// means the remote desktop ended it.
    fn reason(&self, rec: &Recorder) -> EndReason {
        match self {
            Outcome::Told(_, reason) | Outcome::Cut(_, reason) => *reason,
            Outcome::Closed(_) if rec.client_said_goodbye() => EndReason::UserDisconnect,
            Outcome::Closed(_) if rec.server_said_goodbye() => EndReason::ServerEnded,
            Outcome::Closed(reason) => *reason,
        }
    }
}

/// The one way a recorded session is ended while it relays. Whoever decides that it must end
/// (the client -> guacd pump, the disk watch, the idle flush, shutdown, a failed recording in
/// the guacd -> client pump itself) files a request here; only the guacd -> client pump acts
/// on it, and only between two chunks: after the chunk in hand is forwarded whole *and*
/// recorded. So the client never holds bytes the recorder has not seen, and the closing
/// `error` goes out after the instruction in flight. Filing closes a channel, which wakes the
/// pump when it is blocked reading guacd. Nothing here drops a pump half-way; the only bound
/// is [`TAP_DRAIN_TIMEOUT_MS`] from the filing, for a client that stopped reading.
struct EndRequest {
    filed: RefCell<Option<End>>,
    filed_at: Cell<Option<Instant>>,
    /// Closed on filing: every `recv` then returns at once, so waiting is level-triggered.
    wake: (Sender<()>, Receiver<()>),
}

impl EndRequest {
    fn new() -> Self {
        Self {
            filed: RefCell::new(None),
            filed_at: Cell::new(None),
            wake: smol::channel::bounded(1),
        }
    }

    /// Files `end`, unless a request is already filed: the first reason is the one the client
    /// hears.
    fn file(&self, end: End) {
        if self.filed_at.get().is_some() {
            return;
        }
        *self.filed.borrow_mut() = Some(end);
        self.filed_at.set(Some(Instant::now()));
        self.wake.0.close();
    }

    /// Files the end of a failed recording, logged once: later reports of the same (sticky)
    /// failure, or a failure while the session is ending anyway, add nothing.
    fn fail(&self, ctx: &TapContext, meta: &SessionMeta, e: RecordError) {
        if self.filed_at.get().is_none() {
            self.file(recording_error(ctx, meta, e));
        }
    }

    /// The request filed, if any (it stays filed).
    fn get(&self) -> Option<End> {
        self.filed.borrow().clone()
    }

    /// Resolves once a request is filed.
    async fn filed(&self) {
        let _ = self.wake.1.recv().await;
    }

    /// Resolves [`TAP_DRAIN_TIMEOUT_MS`] after a request was filed.
    async fn overdue(&self) {
        self.filed().await;
        let at = self
            .filed_at
            .get()
            .expect("filed before the channel closed");
        Timer::at(at + Duration::from_millis(TAP_DRAIN_TIMEOUT_MS)).await;
    }
}

async fn relay(
    ctx: &TapContext,
    client: TcpStream,
    addr: SocketAddr,
    est: Established,
    shutdown: Receiver<()>,
) {
    let Established {
        upstream,
        upstream_leftover,
        client_leftover,
        protocol,
        recording,
    } = est;
    let Some((meta, recorder, mut claim)) = recording else {
        // Operators must see which sessions were not recorded: a line at start and end, and
        // a count on the status board.
        let started = Instant::now();
        log::info!("event=session_unrecorded_started protocol={protocol} addr={addr}");
        ctx.publish_unrecorded(1);
        pass_through(client, upstream, upstream_leftover, shutdown).await;
        ctx.publish_unrecorded(-1);
        log::info!(
            "event=session_unrecorded_ended protocol={protocol} addr={addr} duration_ms={}",
            started.elapsed().as_millis()
        );
        return;
    };
    ctx.publish_live(1);
    let rec = RefCell::new(recorder);
    let ending = EndRequest::new();
    let mut c = client.clone();
    let outcome = match c.write_all(&upstream_leftover).await {
        // The client is gone: nothing to tell it.
        Err(_) => Outcome::Closed(EndReason::UserDisconnect),
        Ok(()) => {
            let leftovers = {
                let mut r = rec.borrow_mut();
                r.server(&upstream_leftover)
                    .and_then(|()| r.client(&client_leftover))
            };
            if let Err(e) = leftovers {
                ending.fail(ctx, &meta, e);
            }
            recorded_relay(ctx, &meta, &client, &upstream, &rec, &ending, shutdown).await
        }
    };
    claim.mark_going();
    match &outcome {
        Outcome::Closed(_) => {}
        Outcome::Told(refusal, _) => log::warn!(
            "event=session_closed_by_tap session={} reason={:?}",
            meta.session_id,
            refusal.message
        ),
        Outcome::Cut(refusal, _) => log::warn!(
            "event=session_cut session={} reason={:?} error_sent=false \
             cause=no_instruction_boundary_within_ms={TAP_DRAIN_TIMEOUT_MS}",
            meta.session_id,
            refusal.message
        ),
    }
    let _ = upstream.shutdown(std::net::Shutdown::Both);
    let reason = outcome.reason(&rec.borrow());
    log::info!(
        "event=session_ending session={} reason={}",
        meta.session_id,
        reason.name()
    );
    // Seal while the client's side closes: neither waits for the other.
    smol::future::zip(
        linger_close(&client),
        close_recording(ctx, &meta, rec.into_inner(), &mut claim, reason),
    )
    .await;
    ctx.publish_live(-1);
}

/// Closes the client's side without losing what was written to it: FIN after the last byte,
/// then reads (and drops) whatever the client still sends until it closes, at most
/// [`TAP_CLOSE_LINGER_MS`]. Closing a socket that holds unread input makes the kernel reset
/// the connection and throw away what it has not sent yet; a client that reads more slowly
/// than the tap writes (any client on a loaded machine) then lost the end of the stream, the
/// closing `error` included, and its stream ended inside an instruction.
async fn linger_close(client: &TcpStream) {
    let _ = client.shutdown(std::net::Shutdown::Write);
    let mut c = client.clone();
    let mut buf = vec![0u8; TAP_LINGER_READ_BYTES];
    let drain = async { while let Ok(1..) = c.read(&mut buf).await {} };
    drain
        .or(async {
            Timer::after(Duration::from_millis(TAP_CLOSE_LINGER_MS)).await;
        })
        .await;
    let _ = client.shutdown(std::net::Shutdown::Both);
}

/// Runs a recorded session until the guacd -> client pump finishes it. Everything else that
/// can end the session (the client side, the disk watch, the idle flush, shutdown) only files
/// an [`EndRequest`], then keeps running until that pump is done; none of it is ever dropped
/// mid-operation except the client -> guacd pump, whose half-forwarded bytes only guacd sees
/// (and guacd's connection closes next).
async fn recorded_relay(
    ctx: &TapContext,
    meta: &SessionMeta,
    client: &TcpStream,
    upstream: &TcpStream,
    rec: &RefCell<Recorder>,
    ending: &EndRequest,
    shutdown: Receiver<()>,
) -> Outcome {
    let down = pump_server(ctx, meta, upstream, client, rec, ending);
    let up = pump_client(ctx, meta, client, upstream, rec, ending);
    let disk = async {
        while !ctx.admission.disk_state().must_close_sessions() {
            Timer::after(Duration::from_millis(TAP_DISK_CHECK_INTERVAL_MS)).await;
        }
        ending.file(End::Close(
            Refusal::new(
                StatusCode::ServerBusy,
                "The disk is critically full; this recorded session was closed",
            ),
            EndReason::DiskCritical,
        ));
    };
    // Writes are otherwise started only per SEGMENT_FLUSH_BYTES: a session gone quiet after a
    // burst would keep its last drawing in memory, lost on a crash, for as long as it stays
    // quiet.
    let idle = async {
        loop {
            Timer::after(Duration::from_millis(SEGMENT_IDLE_FLUSH_MS)).await;
            let flushed = rec.borrow_mut().flush_complete();
            if let Err(e) = flushed {
                ending.fail(ctx, meta, e);
                return;
            }
        }
    };
    let stop = async {
        let _ = shutdown.recv().await;
        ending.file(End::Close(
            Refusal::new(
                StatusCode::ServerBusy,
                "The session recorder is shutting down",
            ),
            EndReason::RecorderShutdown,
        ));
    };
    let requesters = async {
        smol::future::zip(smol::future::zip(up, disk), smol::future::zip(idle, stop)).await;
        smol::future::pending::<Outcome>().await
    };
    down.or(requesters).await
}

/// guacd -> client: forwards each chunk as it arrives, then lets the recorder see it; acts on
/// the [`EndRequest`] between chunks (a read blocked on guacd is woken by the filing).
async fn pump_server(
    ctx: &TapContext,
    meta: &SessionMeta,
    from: &TcpStream,
    to: &TcpStream,
    rec: &RefCell<Recorder>,
    ending: &EndRequest,
) -> Outcome {
    let mut fair = Fairness::default();
    let (mut from, mut to) = (from.clone(), to.clone());
    let mut buf = vec![0u8; TAP_RELAY_BUFFER_BYTES];
    loop {
        // Between chunks: everything the client got, the recorder has seen.
        match ending.get() {
            Some(End::Closed(reason)) => return Outcome::Closed(reason),
            Some(End::Close(refusal, reason)) => {
                return close_on_boundary(meta, &mut from, &mut to, rec, ending, refusal, reason)
                    .await;
            }
            None => {}
        }
        let read = async { Some(from.read(&mut buf).await) }.or(async {
            ending.filed().await;
            None
        });
        let n = match read.await {
            // A read that has not completed consumed nothing: dropping it loses no byte.
            None => continue,
            Some(Ok(0) | Err(_)) => return Outcome::Closed(EndReason::GuacdGone),
            Some(Ok(n)) => n,
        };
        // The chunk goes out whole; only a client that stopped reading can hold it up, and
        // then only until the request (if one is filed meanwhile) is overdue.
        let wrote = async { Some(to.write_all(&buf[..n]).await) }.or(async {
            ending.overdue().await;
            None
        });
        match wrote.await {
            None => return overdue(ending),
            Some(Err(_)) => return Outcome::Closed(EndReason::UserDisconnect),
            Some(Ok(())) => {}
        }
        let recorded = rec.borrow_mut().server(&buf[..n]);
        if let Err(e) = recorded {
            ending.fail(ctx, meta, e);
            continue;
        }
        // The disk is slower than the stream: stop reading until the write in flight is done.
        while ending.get().is_none() {
            let over = rec.borrow_mut().over_backlog();
            match over {
                Ok(false) => break,
                Ok(true) => {
                    Timer::after(Duration::from_millis(1)).await;
                }
                Err(e) => ending.fail(ctx, meta, e),
            }
        }
        fair.tick().await;
    }
}

/// The request went overdue while a chunk was being written to a client that does not read.
fn overdue(ending: &EndRequest) -> Outcome {
    match ending.get() {
        Some(End::Close(refusal, reason)) => Outcome::Cut(refusal, reason),
        Some(End::Closed(reason)) => Outcome::Closed(reason),
        None => Outcome::Closed(EndReason::UserDisconnect),
    }
}

/// Forwards guacd's bytes up to the end of the instruction in flight, then the `error`; all
/// of it by the request's deadline, or the session is cut without the `error`.
async fn close_on_boundary(
    meta: &SessionMeta,
    from: &mut TcpStream,
    to: &mut TcpStream,
    rec: &RefCell<Recorder>,
    ending: &EndRequest,
    refusal: Refusal,
    reason: EndReason,
) -> Outcome {
    log::warn!(
        "event=session_closing session={} reason={:?}",
        meta.session_id,
        refusal.message
    );
    let mut buf = vec![0u8; TAP_RELAY_BUFFER_BYTES];
    let finish = async {
        while !rec.borrow().server_at_boundary() {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => n,
            };
            let take = rec.borrow().first_server_boundary(&buf[..n]).unwrap_or(n);
            if to.write_all(&buf[..take]).await.is_err() {
                return false;
            }
            // The recording has often failed already (a full disk) and then reports that on
            // every call, while its scanner still tracks where instructions end: only a
            // stream that stops parsing has no boundary to wait for.
            if let Err(RecordError::Scan(_)) = rec.borrow_mut().server(&buf[..take]) {
                return false;
            }
        }
        to.write_all(&error_of(&refusal)).await.is_ok() && to.flush().await.is_ok()
    };
    let told = finish
        .or(async {
            ending.overdue().await;
            false
        })
        .await;
    match told {
        true => Outcome::Told(refusal, reason),
        false => Outcome::Cut(refusal, reason),
    }
}

/// client -> guacd: forwards each chunk, then lets the recorder see the input events in it.
/// Files the end of the client side (or of a failed recording) and returns.
async fn pump_client(
    ctx: &TapContext,
    meta: &SessionMeta,
    from: &TcpStream,
    to: &TcpStream,
    rec: &RefCell<Recorder>,
    ending: &EndRequest,
) {
    let mut fair = Fairness::default();
    let (mut from, mut to) = (from.clone(), to.clone());
    let mut buf = vec![0u8; TAP_RELAY_BUFFER_BYTES];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return ending.file(End::Closed(EndReason::UserDisconnect)),
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).await.is_err() {
            return ending.file(End::Closed(EndReason::GuacdGone));
        }
        let recorded = rec.borrow_mut().client(&buf[..n]);
        if let Err(e) = recorded {
            return ending.fail(ctx, meta, e);
        }
        fair.tick().await;
    }
}

/// Recording failed: the session must end (fail closed). A full disk ends it like critical
/// disk does (`SERVER_BUSY`: retrying once space is freed may work); anything else is a server
/// error.
fn recording_error(ctx: &TapContext, meta: &SessionMeta, e: RecordError) -> End {
    let disk_full = e.is_disk_full();
    log::error!(
        "event=recording_failed session={} disk_full={disk_full} transient={} error={e}",
        meta.session_id,
        crate::error::Classify::is_transient(&e)
    );
    if let Some(board) = &ctx.status {
        board.record_error(
            "tap",
            &format!("session {}: recording failed: {e}", meta.session_id),
        );
    }
    if disk_full && ctx.admission.disk_state() == DiskState::Available {
        // The kernel knows before the disk watch's next sample: refuse new recorded sessions
        // now rather than admit them only to close them at their first write. The watch's
        // next sample publishes the real state (and reopens the gate once space is freed).
        ctx.admission.set_disk_state(DiskState::Low);
    }
    let reason = match disk_full {
        true => EndReason::DiskCritical,
        false => EndReason::RecordingFailed,
    };
    let refusal = if disk_full {
        Refusal::new(
            StatusCode::ServerBusy,
            "The disk is full; this recorded session was closed",
        )
    } else {
        Refusal::new(
            StatusCode::ServerError,
            "Session recording failed; this session must be recorded, so it was closed",
        )
    };
    End::Close(refusal, reason)
}

/// Relays a session that needs no recording: bytes only, no scanning.
async fn pass_through(
    client: TcpStream,
    upstream: TcpStream,
    upstream_leftover: Vec<u8>,
    shutdown: Receiver<()>,
) {
    let pump = |mut from: TcpStream, mut to: TcpStream| async move {
        let mut buf = vec![0u8; TAP_RELAY_BUFFER_BYTES];
        let mut fair = Fairness::default();
        loop {
            let n = from.read(&mut buf).await?;
            if n == 0 {
                return Ok::<(), std::io::Error>(());
            }
            to.write_all(&buf[..n]).await?;
            fair.tick().await;
        }
    };
    let mut c = client.clone();
    if c.write_all(&upstream_leftover).await.is_ok() {
        let _ = pump(upstream.clone(), client.clone())
            .or(pump(client.clone(), upstream.clone()))
            .or(async {
                let _ = shutdown.recv().await;
                Ok(())
            })
            .await;
    }
    let _ = upstream.shutdown(std::net::Shutdown::Both);
    // guacd's last words (its `disconnect` or `error`) must reach the client.
    linger_close(&client).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recording_required_falls_back_to_the_default() {
        let mut v: RecordingValues = Default::default();
        assert!(recording_required(&v, true));
        assert!(!recording_required(&v, false));
        v[4] = Some("false".into());
        assert!(!recording_required(&v, true));
        v[4] = Some("true".into());
        assert!(recording_required(&v, false));
        v[4] = Some("maybe".into());
        assert!(recording_required(&v, true));
    }

    #[test]
    fn generated_ids_are_safe_and_distinct() {
        let a = generated_session_id();
        assert!(is_safe_session_id(&a));
        assert_ne!(a, generated_session_id());
    }
}
