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
use crate::limits::{
    SEGMENT_IDLE_FLUSH_MS, TAP_ARGS_CACHE_ENTRIES_MAX, TAP_CHUNKS_PER_YIELD, TAP_CLOSE_LINGER_MS,
    TAP_DISK_CHECK_INTERVAL_MS, TAP_DRAIN_TIMEOUT_MS, TAP_GUACD_SILENCE_PROBE_MS,
    TAP_HANDSHAKE_BYTES_MAX, TAP_LINGER_READ_BYTES, TAP_LINKED_SESSIONS_MAX,
    TAP_META_VALUE_CHARS_MAX, TAP_RECONNECT_POLL_MS, TAP_RECONNECT_SEAL_WAIT_MS,
    TAP_RECONNECT_WAIT_MS, TAP_RELAY_BUFFER_BYTES, TAP_SESSION_ID_CHARS_MAX,
    TAP_UPSTREAM_CONNECT_TIMEOUT_MS,
};
use crate::status::StatusBoard;

use super::admission::{AdmissionState, Refusal};
use super::handshake::{
    HandshakeError, Instruction, RecordingValues, StatusCode, connect_target, error_instruction,
    extend_args, parse_instruction, split_connect,
};
use super::recorder::{RecordError, Recorder};
use super::segment::{SegmentWriter, is_safe_session_id, session_dir};
use super::sink::{EndReason, RecordingSink, Rejoin, SessionMeta};
use crate::disk::DiskState;

mod admit;
mod handshake_flow;
mod pumps;
mod upstream;

use admit::*;
use handshake_flow::*;
use pumps::*;
use upstream::*;
pub use upstream::{learn_args, watch_upstream};

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

/// The tap's settings (`config::Config::tap_settings`; tests shorten the timeouts).
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
    /// guacd's connection ids (`$...`, from `ready`) of the recorded sessions live in this
    /// process: what a join of one of them is a join of. At most one entry per live
    /// [`SessionClaim`], which removes its own on drop.
    guacd_connections: Mutex<HashMap<String, Joinable>>,
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
                guacd_connections: Mutex::new(HashMap::new()),
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

    /// The protocol and target of the live recorded session that owns guacd connection
    /// `connection_id` (`$...`), when this tap saw it start.
    fn joined(&self, connection_id: &str) -> Option<(String, String)> {
        let owners = self
            .shared
            .guacd_connections
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        owners
            .get(connection_id)
            .map(|j| (j.protocol.clone(), j.target.clone()))
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

/// What a join of a recorded session's guacd connection takes from that session.
#[derive(Debug, Clone)]
struct Joinable {
    /// The session that owns the connection.
    session_id: String,
    /// Its protocol.
    protocol: String,
    /// Its target.
    target: String,
}

/// A recorded session live in this process; released on drop, however the connection ends,
/// unless it was handed over to a waiting connection. The guacd connection id it owns, if
/// any, is released on drop either way (that connection is gone).
struct SessionClaim {
    shared: Arc<Shared>,
    session_id: String,
    handed_over: bool,
    connection_id: Option<String>,
}

impl SessionClaim {
    fn new(ctx: &TapContext, session_id: &str) -> Self {
        Self {
            shared: ctx.shared.clone(),
            session_id: session_id.to_string(),
            handed_over: false,
            connection_id: None,
        }
    }

    /// guacd named this connection `connection_id` (its `ready`): joins of it are joins of
    /// `meta`'s session until this claim drops.
    fn own_connection(&mut self, connection_id: &str, meta: &SessionMeta) {
        let mut owners = self
            .shared
            .guacd_connections
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        owners.insert(
            connection_id.to_string(),
            Joinable {
                session_id: meta.session_id.clone(),
                protocol: meta.protocol.clone(),
                target: meta.target.clone(),
            },
        );
        self.connection_id = Some(connection_id.to_string());
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
        if let Some(id) = self.connection_id.take() {
            let mut owners = self
                .shared
                .guacd_connections
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if owners
                .get(&id)
                .is_some_and(|j| j.session_id == self.session_id)
            {
                owners.remove(&id);
            }
        }
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
