//! The tap's handshake flow (step 1): reading the client's and guacd's opening instructions
//! under the handshake limits, answering `args` from the cache or from guacd, and ending a
//! handshake that does not lead to a session with an `error` to the client.

use super::*;

/// Why a handshake did not lead to a session.
pub(super) enum Ending {
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

pub(super) async fn end_handshake(
    ctx: &TapContext,
    client: &mut TcpStream,
    addr: SocketAddr,
    e: Ending,
) {
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

pub(super) fn error_of(r: &Refusal) -> Vec<u8> {
    error_instruction(&r.message, r.code)
}

/// Reads whole handshake instructions from one side, bounded.
pub(super) struct HandshakeReader {
    pub(super) buf: Vec<u8>,
    pub(super) total: usize,
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

pub(super) enum HandshakeFailure {
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
pub(super) fn client_side(e: HandshakeFailure) -> Ending {
    match e {
        HandshakeFailure::Io(e) => Ending::Io(e),
        HandshakeFailure::Bad(e) => Ending::Bad(e),
    }
}

/// A failure on guacd's side.
pub(super) fn upstream_side(e: HandshakeFailure) -> Ending {
    match e {
        HandshakeFailure::Io(e) => Ending::Upstream(e),
        HandshakeFailure::Bad(e) => Ending::Upstream(std::io::Error::other(e.to_string())),
    }
}

/// A session past the handshake.
pub(super) struct Established {
    pub(super) upstream: TcpStream,
    /// Bytes guacd sent after `args` (for the client, and the recorder).
    pub(super) upstream_leftover: Vec<u8>,
    /// Bytes the client sent after `connect` (already forwarded; for the recorder).
    pub(super) client_leftover: Vec<u8>,
    /// What the client selected, for the logs (a join's connection id reads `join`).
    pub(super) protocol: String,
    pub(super) recording: Option<(Arc<SessionMeta>, Recorder, SessionClaim)>,
}

pub(super) struct Upstream {
    pub(super) stream: TcpStream,
    pub(super) reader: HandshakeReader,
    pub(super) args: Vec<String>,
}

pub(super) async fn open_upstream(ctx: &TapContext, select_raw: &[u8]) -> Result<Upstream, Ending> {
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

pub(super) async fn handshake(
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
    let host = connect_target(connect.args(), &args_answered);

    // 3. Admission.
    let mut recording = match recording_required(&ours, ctx.flags.record_by_default()) {
        true => Some(admit(ctx, target, &host, addr, &ours).await?),
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
    let upstream_leftover = match &mut recording {
        Some((meta, _, claim)) => await_ready(&mut up, meta, claim).await,
        None => std::mem::take(&mut up.reader.buf),
    };
    let protocol = match target.starts_with('$') {
        true => "join".to_string(),
        false => target.chars().take(TAP_META_VALUE_CHARS_MAX).collect(),
    };
    Ok(Established {
        upstream: up.stream,
        upstream_leftover,
        client_leftover,
        protocol,
        recording,
    })
}

/// Reads guacd's answer to `connect` for a recorded session: `ready` names guacd's id of the
/// connection, which the claim keeps so a later join (`select` of that id) takes this
/// session's protocol and target. Returns every byte read from guacd after `args`, `ready`
/// included, for the client and the recorder; a failure or another first instruction
/// (`error`) is left to the relay, which forwards it.
async fn await_ready(up: &mut Upstream, meta: &SessionMeta, claim: &mut SessionClaim) -> Vec<u8> {
    let Ok((ins, mut raw)) = up.reader.next(&mut up.stream).await else {
        return std::mem::take(&mut up.reader.buf);
    };
    if let ("ready", [id]) = (ins.opcode(), ins.args())
        && id.starts_with('$')
    {
        claim.own_connection(id, meta);
    }
    raw.append(&mut up.reader.buf);
    raw
}
