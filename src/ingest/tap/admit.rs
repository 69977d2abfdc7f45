//! Admission of a recorded session (step 2 of the tap): the session claim (one live recording
//! per session id, rejoins of a reconnecting client), the fail-closed admit, and closing or
//! abandoning the recording with what it leaves on disk.

use super::*;

/// A recorded session was admitted but guacd could not be reached (`e`): nothing was
/// recorded, so nothing is kept. Removes the empty segment file and directory (a reconnect's
/// directory, holding its earlier segments, stays) and returns the ending that has the sink
/// forget the session and audit why it never started.
pub(super) async fn abandon_recording(
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
pub(super) fn upstream_refusal(detail: &str) -> Refusal {
    Refusal::new(
        StatusCode::UpstreamUnavailable,
        format!("The remote desktop gateway (guacd) is unavailable ({detail})"),
    )
}

/// Removes `dir` if it is empty (anything in it is kept).
pub(super) fn remove_if_empty(dir: &std::path::Path) {
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
pub(super) fn recording_required(ours: &RecordingValues, default: bool) -> bool {
    match ours[4].as_deref().map(str::trim) {
        Some("true" | "1" | "yes") => true,
        Some("false" | "0" | "no") => false,
        _ => default,
    }
}

/// The protocol and target of a session whose client selected `select` and whose connect
/// named `host`: a join (`$...`) takes those of the live session owning that guacd
/// connection, or `joined` and no target when this tap did not see that one start.
pub(super) fn protocol_and_target(ctx: &TapContext, select: &str, host: &str) -> (String, String) {
    if select.starts_with('$') {
        return ctx
            .joined(select)
            .unwrap_or_else(|| ("joined".to_string(), String::new()));
    }
    let protocol = select.chars().take(TAP_META_VALUE_CHARS_MAX).collect();
    (protocol, host.to_string())
}

/// Admits a session that must be recorded: gate, session metadata, sink, segment directory.
pub(super) async fn admit(
    ctx: &TapContext,
    select: &str,
    host: &str,
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
    let (protocol, target) = protocol_and_target(ctx, select, host);
    // Taken with the session's start time: the recording's video time 0.
    let mut origin = Instant::now();
    let meta = Arc::new(SessionMeta {
        session_id,
        user_id: value(1),
        username: value(2),
        image_friendly_name: value(3),
        protocol,
        target,
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
    if let Some(Rejoin::Continued { .. }) = rejoin {
        // The earlier connection's last clip holds its picture until it was sealed, just now:
        // this connection's first clip starts there.
        origin = Instant::now();
    }
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
        Ok(mut w) => {
            if let Some(board) = &ctx.status {
                w.list_on(board.writing_segments());
            }
            w
        }
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
        origin,
    );
    Ok((meta, rec, claim))
}

pub(super) fn generated_session_id() -> String {
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
pub(super) async fn close_recording(
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

    struct NoSink;

    impl RecordingSink for NoSink {
        fn open_session(
            &self,
            _: &SessionMeta,
        ) -> Result<crate::ingest::SessionStart, crate::ingest::SinkError> {
            unreachable!("not opened in this test")
        }
        fn segment_sealed(
            &self,
            _: u64,
            _: &SessionMeta,
            _: u32,
            _: &std::path::Path,
            _: u64,
        ) -> Result<(), crate::ingest::SinkError> {
            Ok(())
        }
        fn session_closed(&self, _: &SessionMeta, _: EndReason) {}
        fn rejoined(&self, _: &SessionMeta, _: &Rejoin) {}
        fn refused(&self, _: &SessionMeta, _: &str) {}
        fn not_started(&self, _: &SessionMeta, _: &str) {}
    }

    #[test]
    fn a_join_takes_the_protocol_and_target_of_the_live_owner_of_the_connection() {
        let dir = tempfile::tempdir().unwrap();
        let settings = TapSettings {
            upstream: "127.0.0.1:1".into(),
            record_keys: false,
            record_by_default: true,
            segments_dir: dir.path().into(),
            segment_bytes_max: 1 << 20,
            handshake_timeout: Duration::from_secs(1),
            connections_max: 4,
            protocols: Vec::new(),
            upstream_probe_interval: Duration::from_secs(1),
        };
        let ctx = TapContext::new(
            settings,
            Arc::new(AdmissionState::new()),
            Arc::new(NoSink),
            Arc::new(crate::clock::ManualClock::new(0)),
            None,
        );
        let owner = SessionMeta {
            session_id: "owner".into(),
            user_id: String::new(),
            username: String::new(),
            image_friendly_name: String::new(),
            protocol: "rdp".into(),
            target: "erp.example:3389".into(),
            client_addr: "10.0.0.1:5000".into(),
            started_ms: 0,
        };
        let plain = protocol_and_target(&ctx, "ssh", "db:22");
        assert_eq!(plain, ("ssh".to_string(), "db:22".to_string()));
        let unknown = ("joined".to_string(), String::new());
        assert_eq!(protocol_and_target(&ctx, "$c-1", "ignored:1"), unknown);
        let mut claim = SessionClaim::new(&ctx, "owner");
        claim.own_connection("$c-1", &owner);
        let joined = protocol_and_target(&ctx, "$c-1", "");
        assert_eq!(joined, ("rdp".to_string(), "erp.example:3389".to_string()));
        drop(claim);
        assert_eq!(protocol_and_target(&ctx, "$c-1", ""), unknown);
    }

    #[test]
    fn generated_ids_are_safe_and_distinct() {
        let a = generated_session_id();
        assert!(is_safe_session_id(&a));
        assert_ne!(a, generated_session_id());
    }
}
