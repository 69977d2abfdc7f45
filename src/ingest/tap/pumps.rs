//! The relay pumps (step 3): bytes both ways as they arrive, a recorded session scanned on
//! the side, and the end of a session (shutdown, critical disk, recording failure) acted on
//! between chunks by the guacd -> client pump only. Unrecorded sessions pass through untouched.

use super::*;

/// Socket reads that find data return at once, so a busy stream would never give its
/// executor back: yield every few chunks so that other connections on the same core (and the
/// other direction of this one) get their turn.
#[derive(Default)]
pub(super) struct Fairness {
    pub(super) chunks: u32,
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
pub(super) enum End {
    /// Either side closed or failed (the reason says which): there is no one to tell.
    Closed(EndReason),
    /// The tap must close it with this `error`, on an instruction boundary.
    Close(Refusal, EndReason),
}

/// How the guacd -> client pump finished a recorded session, and why.
pub(super) enum Outcome {
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
pub(super) struct EndRequest {
    pub(super) filed: RefCell<Option<End>>,
    pub(super) filed_at: Cell<Option<Instant>>,
    /// Closed on filing: every `recv` then returns at once, so waiting is level-triggered.
    pub(super) wake: (Sender<()>, Receiver<()>),
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

pub(super) async fn relay(
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
pub(super) async fn linger_close(client: &TcpStream) {
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
pub(super) async fn recorded_relay(
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
pub(super) async fn pump_server(
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
            Some(Ok(0) | Err(_)) => return guacd_gone(meta, &mut to, rec).await,
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

/// guacd closed the connection. Without a goodbye from either side (its connection process
/// died), the client is told with an `error` when guacd's stream ended on an instruction
/// boundary, within [`TAP_DRAIN_TIMEOUT_MS`].
async fn guacd_gone(meta: &SessionMeta, to: &mut TcpStream, rec: &RefCell<Recorder>) -> Outcome {
    let silent_end = {
        let r = rec.borrow();
        !r.server_said_goodbye() && !r.client_said_goodbye() && r.server_at_boundary()
    };
    if !silent_end {
        return Outcome::Closed(EndReason::GuacdGone);
    }
    log::warn!(
        "event=guacd_gone session={} cause=closed_without_goodbye",
        meta.session_id
    );
    let refusal = Refusal::new(
        StatusCode::UpstreamError,
        "The remote desktop gateway (guacd) ended this session unexpectedly",
    );
    let told =
        async { to.write_all(&error_of(&refusal)).await.is_ok() && to.flush().await.is_ok() }
            .or(async {
                Timer::after(Duration::from_millis(TAP_DRAIN_TIMEOUT_MS)).await;
                false
            })
            .await;
    match told {
        true => Outcome::Told(refusal, EndReason::GuacdGone),
        false => Outcome::Closed(EndReason::GuacdGone),
    }
}

/// The request went overdue while a chunk was being written to a client that does not read.
pub(super) fn overdue(ending: &EndRequest) -> Outcome {
    match ending.get() {
        Some(End::Close(refusal, reason)) => Outcome::Cut(refusal, reason),
        Some(End::Closed(reason)) => Outcome::Closed(reason),
        None => Outcome::Closed(EndReason::UserDisconnect),
    }
}

/// Forwards guacd's bytes up to the end of the instruction in flight, then the `error`; all
/// of it by the request's deadline, or the session is cut without the `error`.
pub(super) async fn close_on_boundary(
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
/// Files the end of the client side (or of a failed recording) and returns. While guacd stays
/// silent for [`TAP_GUACD_SILENCE_PROBE_MS`], sends it a `nop` between the client's
/// instructions: a connection whose guacd process died is then closed by guacd at once
/// (rather than at the client's next input), and the guacd -> client pump ends the session.
pub(super) async fn pump_client(
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
    let probe = Duration::from_millis(TAP_GUACD_SILENCE_PROBE_MS);
    loop {
        let read = async { Some(from.read(&mut buf).await) }.or(async {
            Timer::after(probe).await;
            None
        });
        let n = match read.await {
            // A read that has not completed consumed nothing: dropping it loses no byte.
            None => {
                let due = {
                    let r = rec.borrow();
                    r.server_silent_for() >= probe && r.client_at_boundary()
                };
                if due && to.write_all(GUACD_PROBE).await.is_err() {
                    return ending.file(End::Closed(EndReason::GuacdGone));
                }
                continue;
            }
            Some(Ok(0) | Err(_)) => return ending.file(End::Closed(EndReason::UserDisconnect)),
            Some(Ok(n)) => n,
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

/// What the tap sends guacd after a silence: nothing guacd acts on.
const GUACD_PROBE: &[u8] = b"3.nop;";

/// Recording failed: the session must end (fail closed). A full disk ends it like critical
/// disk does (`SERVER_BUSY`: retrying once space is freed may work); anything else is a server
/// error.
pub(super) fn recording_error(ctx: &TapContext, meta: &SessionMeta, e: RecordError) -> End {
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
pub(super) async fn pass_through(
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
