//! The recorder of one live session: turns the two byte streams the tap forwards into exactly
//! what guacd writes to a `recording-path` file, and feeds it to the [`SegmentWriter`].
//!
//! What guacd records is its broadcast drawing stream plus the user's `mouse` events (and `key`
//! events with `recording-include-keys`), each stamped with guacd's millisecond clock. So the
//! recorder keeps every server->client instruction except the per-connection ones guacd sends
//! only to this user ([`UNRECORDED_OPCODES`]) and the per-user streams (clipboard, file, pipe,
//! filesystem downloads, argv: [`super::streams`]) with their `blob`s and `end`, and re-encodes
//! the client's `mouse x,y,mask` as
//! `mouse x,y,mask,timestamp` (`key keysym,pressed` as `key keysym,pressed,timestamp`), where
//! the timestamp is guacd's clock estimated from the last `sync` plus the time since it arrived.
//! Client events are inserted only at a server instruction boundary. The clipboard and file
//! streams of both directions become one `x-sr-clipboard` or `x-sr-file` instruction each when
//! they end (or when the session ends with them open), stamped with guacd's clock at their
//! opening ([`super::stream_events`]).
//!
//! Segments roll when they reach the size limit, right after a `sync`, so every segment ends on
//! a frame, and the next one begins with that same `sync` (its clip starts at the roll, not at
//! guacd's next frame, however long the screen stays still). No I/O besides the writer's file
//! writes; the tap owns the sockets.
//!
//! # Time 0 is the session's start
//! guacd's first `sync` comes some time after the session started (the remote desktop's
//! connection and login: about 1.5 s on RDP), while the session's and its first clip's start
//! are taken at the handshake. So that video time is wall-clock time since that start, the
//! first segment begins with a `sync` stamped that much earlier on guacd's clock (its first
//! `sync` minus the time since the connection's origin): the clip shows black until guacd's
//! first picture, and its frames, events and search hits land at their wall-clock moment. The
//! bytes before guacd's first `sync` stay in the buffer until it arrives, so the lead `sync` can
//! go in front of them (should they outgrow the backlog bound and reach the disk first, the
//! segment starts without it, logged).

use std::time::Instant;

use crate::limits::TAP_STREAM_INSTRUCTION_BYTES_MAX;

use super::scan::{Captured, Event, ScanError, Scanner};
use super::segment::{SegmentError, SegmentWriter};
use super::stream_events::StreamEvents;
use super::streams::{Direction, StreamError, StreamFilter, Verdict};

/// Server->client opcodes guacd sends to one user only, never into a recording.
pub const UNRECORDED_OPCODES: [&[u8]; 9] = [
    b"nop",
    b"ack",
    b"error",
    b"disconnect",
    b"required",
    b"msg",
    b"args",
    b"ready",
    b"argv",
];

/// The recording cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// guacd's stream is not Guacamole.
    #[error("server stream: {0}")]
    Scan(#[from] ScanError),
    /// A segment could not be written or sealed.
    #[error(transparent)]
    Segment(#[from] SegmentError),
    /// guacd opened more per-user streams than the filter tracks.
    #[error("server stream: {0}")]
    Streams(#[from] StreamError),
    /// One instruction exceeded the named limit.
    #[error("instruction longer than {max} bytes")]
    InstructionTooLong {
        /// The limit.
        max: usize,
    },
}

impl RecordError {
    /// Whether the segment's filesystem is full (the session ends like at critical disk).
    pub fn is_disk_full(&self) -> bool {
        match self {
            RecordError::Segment(e) => e.is_disk_full(),
            _ => false,
        }
    }
}

impl crate::error::Classify for RecordError {
    fn is_transient(&self) -> bool {
        match self {
            RecordError::Segment(e) => crate::error::Classify::is_transient(e),
            _ => false,
        }
    }
}

/// One session's recorder.
pub struct Recorder {
    writer: SegmentWriter,
    server: Scanner,
    client: Scanner,
    segment_bytes_max: u64,
    record_keys: bool,
    /// Start of the current (incomplete) server instruction in the writer's buffer.
    inst_start: usize,
    /// The current server instruction is not recorded.
    skipping: bool,
    /// Whether the current server instruction is recorded is known.
    decided: bool,
    /// guacd's per-user streams (left out of the recording).
    server_streams: StreamFilter,
    /// The client's own streams (a paste, an upload): tracked, never recorded.
    client_streams: StreamFilter,
    /// guacd's clipboard and file streams (a copy, a download), kept as event instructions.
    server_events: StreamEvents,
    /// The client's clipboard and file streams (a paste, an upload), kept the same way.
    client_events: StreamEvents,
    /// Client events waiting for a server instruction boundary.
    pending: Vec<u8>,
    last_sync: Option<(u64, Instant)>,
    /// When this connection's recording began on the session's clock: video time 0 of its
    /// first segment.
    origin: Instant,
    /// Length of the `sync` the current segment begins with (0: none yet), so that a segment
    /// holding nothing else is not kept.
    lead_len: u64,
    /// guacd said goodbye (`disconnect` or `error`) on this connection.
    server_goodbye: bool,
    /// The client sent `disconnect`.
    client_goodbye: bool,
    /// A `sync` was recorded: at least one frame exists.
    drew: bool,
    /// When guacd's bytes last arrived.
    server_seen: Instant,
}

impl Recorder {
    /// A recorder writing to `writer`, rolling at `segment_bytes_max`; `origin` is when the
    /// connection's recording began (the moment the session's start time was taken, or the
    /// hand-over of a reconnect): video time 0 of its first segment.
    pub fn new(
        writer: SegmentWriter,
        segment_bytes_max: u64,
        record_keys: bool,
        origin: Instant,
    ) -> Self {
        assert!(segment_bytes_max > 0, "segment size is validated positive");
        Self {
            writer,
            server: Scanner::new(),
            client: Scanner::new(),
            segment_bytes_max,
            record_keys,
            inst_start: 0,
            skipping: false,
            decided: false,
            server_streams: StreamFilter::new(Direction::FromServer),
            client_streams: StreamFilter::new(Direction::FromClient),
            server_events: StreamEvents::new(false),
            client_events: StreamEvents::new(true),
            pending: Vec::new(),
            last_sync: None,
            origin,
            lead_len: 0,
            server_goodbye: false,
            client_goodbye: false,
            drew: false,
            server_seen: Instant::now(),
        }
    }

    /// Whether guacd said goodbye (`disconnect` or `error`) on this connection.
    pub fn server_said_goodbye(&self) -> bool {
        self.server_goodbye
    }

    /// Whether the client sent `disconnect`.
    pub fn client_said_goodbye(&self) -> bool {
        self.client_goodbye
    }

    /// Whether guacd's stream held a `sync` (a frame) on this connection.
    pub fn drew_anything(&self) -> bool {
        self.drew
    }

    /// Whether the server bytes seen so far end on an instruction boundary.
    pub fn server_at_boundary(&self) -> bool {
        self.server.at_boundary()
    }

    /// Whether the client bytes seen so far end on an instruction boundary.
    pub fn client_at_boundary(&self) -> bool {
        self.client.at_boundary()
    }

    /// How long since guacd last sent anything.
    pub fn server_silent_for(&self) -> std::time::Duration {
        self.server_seen.elapsed()
    }

    /// Where the first instruction in `chunk` ends, if it ends there (for draining to a
    /// boundary before an `error` is injected).
    pub fn first_server_boundary(&self, chunk: &[u8]) -> Option<usize> {
        let mut probe = self.server.clone();
        let mut first = None;
        // An error here is seen again when the bytes are really fed.
        let _ = probe.feed(chunk, |ev, pos, _| {
            if ev == Event::End && first.is_none() {
                first = Some(pos);
            }
        });
        first
    }

    /// Records bytes guacd sent (already forwarded to the client).
    ///
    /// # Errors
    /// A broken stream, an oversized instruction, a write or seal failure.
    pub fn server(&mut self, chunk: &[u8]) -> Result<(), RecordError> {
        self.server_seen = Instant::now();
        let Self {
            writer,
            server,
            segment_bytes_max,
            inst_start,
            skipping,
            decided,
            server_streams,
            server_events,
            pending,
            last_sync,
            origin,
            lead_len,
            server_goodbye,
            drew,
            ..
        } = self;
        let mut from = 0;
        // Where the bytes the stream events want start in this chunk.
        let mut events_from: Option<usize> = None;
        let mut failed: Option<RecordError> = None;
        server.feed(chunk, |ev, pos, cap| {
            if failed.is_some() {
                return;
            }
            match ev {
                Event::Opcode | Event::Arg => {
                    let wanted = match ev {
                        Event::Opcode => server_events.at_opcode(cap),
                        _ => server_events.at_arg(cap),
                    };
                    if wanted {
                        events_from = Some(pos);
                    }
                    if *decided {
                        return;
                    }
                    if ev == Event::Opcode && matches!(cap.opcode(), b"disconnect" | b"error") {
                        *server_goodbye = true;
                    }
                    let verdict = match UNRECORDED_OPCODES.contains(&cap.opcode()) {
                        true => Some(Verdict::Drop),
                        false => server_streams.verdict(cap),
                    };
                    match verdict {
                        None => {}
                        Some(Verdict::Record) => *decided = true,
                        Some(Verdict::Drop) => {
                            // Bytes of it from earlier chunks are in the buffer; drop them.
                            writer.buf_mut().truncate(*inst_start);
                            *skipping = true;
                            *decided = true;
                            from = pos;
                        }
                    }
                }
                Event::End => {
                    if server_events.wants_bytes() {
                        server_events.bytes(&chunk[events_from.unwrap_or(0)..pos]);
                    }
                    events_from = None;
                    server_events.at_end(cap, || guacd_clock_ms(*last_sync, *origin), pending);
                    if !*skipping {
                        writer.buf_mut().extend_from_slice(&chunk[from..pos]);
                        *drew |= cap.opcode() == b"sync";
                    }
                    from = pos;
                    *skipping = false;
                    *decided = false;
                    let ended = server_streams
                        .finish(cap)
                        .map_err(RecordError::from)
                        .and_then(|_| {
                            let clock = Clock {
                                last_sync,
                                origin: *origin,
                                lead_len,
                            };
                            end_of_instruction(writer, cap, *segment_bytes_max, pending, clock)
                        });
                    if let Err(e) = ended {
                        failed = Some(e);
                    }
                    *inst_start = writer.buffered();
                }
            }
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
        if self.server_events.wants_bytes() {
            self.server_events.bytes(&chunk[events_from.unwrap_or(0)..]);
        }
        if !self.skipping {
            self.writer.buf_mut().extend_from_slice(&chunk[from..]);
            if self.writer.buffered() - self.inst_start > TAP_STREAM_INSTRUCTION_BYTES_MAX {
                return Err(RecordError::InstructionTooLong {
                    max: TAP_STREAM_INSTRUCTION_BYTES_MAX,
                });
            }
        }
        self.writer.publish_len();
        if let Some(e) = self.writer.failure() {
            return Err(e.into());
        }
        Ok(())
    }

    /// Records the client's input events from bytes the client sent (already forwarded).
    /// A client stream that stops parsing is no longer scanned (guacd will drop it anyway);
    /// it never stops the session by itself.
    ///
    /// # Errors
    /// Writing buffered events failed.
    pub fn client(&mut self, chunk: &[u8]) -> Result<(), RecordError> {
        let Self {
            client,
            client_streams,
            client_events,
            client_goodbye,
            pending,
            record_keys,
            last_sync,
            origin,
            ..
        } = self;
        let now_ms = guacd_clock_ms(*last_sync, *origin);
        let mut events_from: Option<usize> = None;
        let scanned = client.feed(chunk, |ev, pos, cap| {
            let wanted = match ev {
                Event::Opcode => client_events.at_opcode(cap),
                Event::Arg => client_events.at_arg(cap),
                Event::End => false,
            };
            if wanted {
                events_from = Some(pos);
            }
            if ev != Event::End {
                return;
            }
            if client_events.wants_bytes() {
                client_events.bytes(&chunk[events_from.unwrap_or(0)..pos]);
            }
            events_from = None;
            client_events.at_end(cap, || now_ms, pending);
            // The client's per-user streams are tracked (a bound broken here only stops the
            // tracking); nothing of them is recorded.
            if client_streams.finish(cap).is_err() {
                *client_streams = StreamFilter::new(Direction::FromClient);
            }
            match cap.opcode() {
                b"disconnect" => *client_goodbye = true,
                b"mouse" => push_event(pending, b"mouse", cap, 3, now_ms),
                b"key" if *record_keys => push_event(pending, b"key", cap, 2, now_ms),
                _ => {}
            }
        });
        if let Err(e) = scanned {
            log::warn!("event=client_stream_unparsable error={e}");
            self.client = Scanner::new();
            self.client_streams = StreamFilter::new(Direction::FromClient);
            self.client_events.reset();
            self.record_keys = false;
        } else if self.client_events.wants_bytes() {
            self.client_events.bytes(&chunk[events_from.unwrap_or(0)..]);
        }
        if self.server.at_boundary() && !self.pending.is_empty() {
            self.writer.buf_mut().append(&mut self.pending);
            if self.last_sync.is_some() {
                self.writer.maybe_flush()?;
            }
            self.inst_start = self.writer.buffered();
            self.writer.publish_len();
        }
        Ok(())
    }

    /// Whether the segment buffer is over its backlog limit (the disk is slower than the
    /// stream); the tap waits while it is.
    ///
    /// # Errors
    /// An earlier write failed.
    pub fn over_backlog(&mut self) -> Result<bool, RecordError> {
        let (over, moved) = self.writer.over_backlog(self.inst_start)?;
        self.inst_start -= moved;
        Ok(over)
    }

    /// Writes the complete instructions buffered so far (the periodic flush of a quiet session,
    /// see [`crate::limits::SEGMENT_IDLE_FLUSH_MS`]). An incomplete trailing instruction stays
    /// in the buffer, so the file still never ends inside one.
    ///
    /// # Errors
    /// An earlier write failed.
    pub fn flush_complete(&mut self) -> Result<(), RecordError> {
        // Before guacd's first `sync` the lead `sync` still has to go in front; a segment with
        // nothing but its lead is not worth a write.
        if self.last_sync.is_none() || self.writer.len() <= self.lead_len {
            return match self.writer.failure() {
                Some(e) => Err(e.into()),
                None => Ok(()),
            };
        }
        let moved = self.writer.write_prefix(self.inst_start)?;
        self.inst_start -= moved;
        match self.writer.failure() {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    /// Drops an incomplete trailing server instruction, keeps pending client events, seals
    /// what was written and waits for every seal; when guacd drew nothing (no `sync`), the
    /// segment is removed instead, and so is a segment a roll began that holds nothing but the
    /// rolling `sync` (the previous clip holds that picture to the end). Returns the number of
    /// segments sealed.
    ///
    /// # Errors
    /// A write or seal failed.
    pub async fn close(mut self) -> Result<u32, SegmentError> {
        if !self.drew {
            // No frame: nothing to encode, and no segment left behind.
            return self.writer.discard().await;
        }
        self.writer.buf_mut().truncate(self.inst_start);
        // Clipboard and file streams still open were cut by the session's end.
        self.server_events.close_all(&mut self.pending);
        self.client_events.close_all(&mut self.pending);
        self.writer.buf_mut().append(&mut self.pending);
        if self.writer.len() == self.lead_len && self.writer.buffered() as u64 == self.lead_len {
            self.writer.buf_mut().clear();
        }
        self.writer.close().await
    }
}

/// The recorder's view of guacd's clock, as [`end_of_instruction`] updates it.
struct Clock<'a> {
    last_sync: &'a mut Option<(u64, Instant)>,
    origin: Instant,
    lead_len: &'a mut u64,
}

/// The `sync` captured in `cap` again, with its timestamp replaced by `ts_ms` when given (its
/// other arguments, such as guacd 1.6's frame count, as they were).
fn sync_like(cap: &Captured, ts_ms: Option<u64>) -> Vec<u8> {
    let ts = ts_ms.map(|t| t.to_string());
    let mut out = b"4.sync".to_vec();
    for i in 1..cap.count() {
        let Some(element) = cap.element(i) else {
            break;
        };
        let value = match (i, &ts) {
            (1, Some(ts)) => ts.as_bytes(),
            _ => element,
        };
        let chars = String::from_utf8_lossy(value).chars().count();
        out.push(b',');
        out.extend_from_slice(chars.to_string().as_bytes());
        out.push(b'.');
        out.extend_from_slice(value);
    }
    out.push(b';');
    out
}

/// At guacd's first `sync` (`ts_ms`) on this connection: puts a `sync` stamped at the
/// connection's origin on guacd's clock in front of the segment, so its video time 0 is the
/// origin. Returns the lead's length (0 when there is none: part of the segment already
/// reached the disk).
fn lead_in(writer: &mut SegmentWriter, cap: &Captured, ts_ms: u64, origin: Instant) -> u64 {
    let lead_ms = u64::try_from(origin.elapsed().as_millis()).unwrap_or(u64::MAX);
    if writer.len() > writer.buffered() as u64 {
        log::warn!(
            "event=segment_lead_missing index={} lead_ms={lead_ms} cause=written_before_first_sync",
            writer.index()
        );
        return 0;
    }
    let sync = sync_like(cap, Some(ts_ms.saturating_sub(lead_ms)));
    let len = sync.len() as u64;
    writer.buf_mut().splice(0..0, sync);
    len
}

/// What happens after each complete recorded-or-not server instruction; returns whether the
/// segment rolled.
fn end_of_instruction(
    writer: &mut SegmentWriter,
    cap: &Captured,
    segment_bytes_max: u64,
    pending: &mut Vec<u8>,
    clock: Clock<'_>,
) -> Result<bool, RecordError> {
    let is_sync = cap.opcode() == b"sync";
    let ts = cap
        .element(1)
        .and_then(|t| std::str::from_utf8(t).ok())
        .and_then(|t| t.parse::<u64>().ok())
        .filter(|_| is_sync);
    if let Some(ts) = ts {
        if clock.last_sync.is_none() {
            *clock.lead_len = lead_in(writer, cap, ts, clock.origin);
        }
        *clock.last_sync = Some((ts, Instant::now()));
    }
    let rolled = is_sync && writer.len() >= segment_bytes_max;
    if rolled {
        writer.roll()?;
        // The next segment begins at the roll: with the picture this `sync` completed.
        let begins = sync_like(cap, None);
        *clock.lead_len = begins.len() as u64;
        writer.buf_mut().extend_from_slice(&begins);
    }
    if !pending.is_empty() {
        writer.buf_mut().append(pending);
    }
    if clock.last_sync.is_some() {
        writer.maybe_flush()?;
    }
    Ok(rolled)
}

/// guacd's clock now: the last `sync` timestamp plus the time since it arrived.
fn guacd_clock_ms(last_sync: Option<(u64, Instant)>, started: Instant) -> u64 {
    match last_sync {
        Some((ts, at)) => ts + at.elapsed().as_millis() as u64,
        None => started.elapsed().as_millis() as u64,
    }
}

/// Appends `opcode` with the first `argc` captured arguments and a timestamp to `out`.
fn push_event(out: &mut Vec<u8>, opcode: &[u8], cap: &Captured, argc: usize, ts_ms: u64) {
    let mut args: [&str; 3] = [""; 3];
    for (i, slot) in args.iter_mut().enumerate().take(argc) {
        let Some(v) = cap.element(i + 1).and_then(|b| std::str::from_utf8(b).ok()) else {
            return;
        };
        *slot = v;
    }
    let mut put = |v: &[u8], chars: usize, last: bool| {
        out.extend_from_slice(chars.to_string().as_bytes());
        out.push(b'.');
        out.extend_from_slice(v);
        out.push(if last { b';' } else { b',' });
    };
    put(opcode, opcode.len(), false);
    for a in &args[..argc] {
        put(a.as_bytes(), a.chars().count(), false);
    }
    let ts = ts_ms.to_string();
    put(ts.as_bytes(), ts.len(), true);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::scan::Scanner;

    #[test]
    fn events_are_reencoded_with_a_timestamp() {
        let mut s = Scanner::new();
        let mut out = Vec::new();
        s.feed(
            b"5.mouse,3.677,3.380,1.0;3.key,5.65307,1.1;",
            |ev, _, cap| {
                if ev == Event::End {
                    match cap.opcode() {
                        b"mouse" => push_event(&mut out, b"mouse", cap, 3, 3674020),
                        _ => push_event(&mut out, b"key", cap, 2, 42),
                    }
                }
            },
        )
        .unwrap();
        assert_eq!(
            out,
            b"5.mouse,3.677,3.380,1.0,7.3674020;3.key,5.65307,1.1,2.42;"
        );
    }

    struct NoSink;

    impl crate::ingest::sink::RecordingSink for NoSink {
        fn open_session(
            &self,
            _: &crate::ingest::sink::SessionMeta,
        ) -> Result<crate::ingest::sink::SessionStart, crate::ingest::sink::SinkError> {
            Ok(crate::ingest::sink::SessionStart {
                session: 1,
                next_index: 0,
            })
        }
        fn segment_sealed(
            &self,
            _: u64,
            _: &crate::ingest::sink::SessionMeta,
            _: u32,
            _: &std::path::Path,
            _: u64,
        ) -> Result<(), crate::ingest::sink::SinkError> {
            Ok(())
        }
        fn session_closed(&self, _: &crate::ingest::sink::SessionMeta, _: crate::queue::EndReason) {
        }
        fn rejoined(&self, _: &crate::ingest::sink::SessionMeta, _: &crate::ingest::sink::Rejoin) {}
        fn refused(&self, _: &crate::ingest::sink::SessionMeta, _: &str) {}
        fn not_started(&self, _: &crate::ingest::sink::SessionMeta, _: &str) {}
    }

    /// The events the extractor takes from each segment file of `dir`.
    fn segment_events(dir: &std::path::Path) -> Vec<Vec<crate::events::Event>> {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        files
            .iter()
            .map(|f| {
                let mut parser = crate::guac::Parser::new();
                parser.push(&std::fs::read(f).unwrap());
                let mut x = crate::events::extract::Extractor::new(Default::default());
                while let Some(i) = parser.next().unwrap() {
                    x.instruction(&i, 0);
                }
                x.finish().events
            })
            .collect()
    }

    fn writer_in(dir: &std::path::Path) -> SegmentWriter {
        let meta = std::sync::Arc::new(crate::ingest::sink::SessionMeta {
            session_id: "s".into(),
            user_id: String::new(),
            username: String::new(),
            image_friendly_name: String::new(),
            protocol: "rdp".into(),
            client_addr: String::new(),
            started_ms: 0,
            target: String::new(),
        });
        SegmentWriter::create(
            dir.join("s"),
            meta,
            std::sync::Arc::new(NoSink),
            crate::ingest::sink::SessionStart {
                session: 1,
                next_index: 0,
            },
        )
        .unwrap()
    }

    /// The timestamps of the `sync`s of a segment file, in order.
    fn syncs(path: &std::path::Path) -> Vec<u64> {
        let mut parser = crate::guac::Parser::new();
        parser.push(&std::fs::read(path).unwrap());
        let mut out = Vec::new();
        while let Some(i) = parser.next().unwrap() {
            if i.opcode == "sync" {
                out.push(i.args[0].parse().unwrap());
            }
        }
        out
    }

    #[test]
    fn the_first_segment_starts_at_the_origin_on_guacds_clock() {
        let dir = tempfile::tempdir().unwrap();
        // guacd's first frame comes 1.45 s after the session started (RDP's login).
        let origin = Instant::now() - std::time::Duration::from_millis(1_450);
        let mut rec = Recorder::new(writer_in(dir.path()), 1 << 20, false, origin);
        rec.server(b"4.size,1.0,2.64,2.48;").unwrap();
        // The idle flush before the first `sync` writes nothing: the lead still goes in front.
        rec.flush_complete().unwrap();
        rec.server(b"4.sync,5.10000;4.sync,5.10500;").unwrap();
        assert_eq!(smol::block_on(rec.close()).unwrap(), 1);
        let got = syncs(&dir.path().join("s/000000.guac"));
        assert_eq!(got.len(), 3, "{got:?}");
        let lead = 10_000 - got[0];
        assert!((1_450..1_550).contains(&lead), "lead {lead} ms: {got:?}");
        assert_eq!(&got[1..], &[10_000, 10_500]);
    }

    #[test]
    fn a_roll_begins_the_next_segment_at_its_sync_and_a_bare_one_is_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut rec = Recorder::new(writer_in(dir.path()), 1, false, Instant::now());
        rec.server(b"4.size,1.0,2.64,2.48;4.sync,4.1000;4.rect,1.0,1.0,1.0,2.10,2.10;")
            .unwrap();
        // Still screen: guacd's next frame comes 9 s after the roll.
        rec.server(b"4.sync,5.10000;").unwrap();
        assert_eq!(
            smol::block_on(rec.close()).unwrap(),
            2,
            "the last roll left nothing"
        );
        assert_eq!(
            syncs(&dir.path().join("s/000001.guac")),
            vec![1_000, 10_000]
        );
        assert!(!dir.path().join("s/000002.guac").exists());
    }

    #[test]
    fn clipboard_and_file_streams_cut_across_a_segment_boundary() {
        use crate::events::{Direction as D, EventDetail};
        let dir = tempfile::tempdir().unwrap();
        let meta = std::sync::Arc::new(crate::ingest::sink::SessionMeta {
            session_id: "s".into(),
            user_id: String::new(),
            username: String::new(),
            image_friendly_name: String::new(),
            protocol: "ssh".into(),
            client_addr: String::new(),
            started_ms: 0,
            target: String::new(),
        });
        let session = dir.path().join("s");
        let writer = SegmentWriter::create(
            session.clone(),
            meta,
            std::sync::Arc::new(NoSink),
            crate::ingest::sink::SessionStart {
                session: 1,
                next_index: 0,
            },
        )
        .unwrap();
        // Every `sync` rolls the segment.
        let mut rec = Recorder::new(writer, 1, false, Instant::now());
        rec.server(b"4.size,1.0,3.100,3.100;4.sync,4.1000;")
            .unwrap();
        // A paste opens in segment 1, a download too; the paste ends in segment 2.
        rec.client(b"9.clipboard,1.0,10.text/plain;4.blob,1.0,8.aGVsbG8=;")
            .unwrap();
        rec.server(b"4.file,1.7,10.text/plain,5.a.txt;4.blob,1.7,4.YWJj;4.sync,4.2000;")
            .unwrap();
        rec.client(b"4.blob,1.0,4.IQ==;3.end,1.0;").unwrap();
        let sealed = smol::block_on(rec.close()).unwrap();
        assert_eq!(sealed, 3);
        let events = segment_events(&session);
        assert!(events[0].is_empty() && events[1].is_empty(), "{events:?}");
        // The last segment began with the roll and ended before a `sync`: it starts with the
        // rolling one, so its clip has a frame (the encoder refuses a segment without).
        let last_segment = std::fs::read(session.join("000002.guac")).unwrap();
        assert!(
            last_segment.starts_with(b"4.sync,4.2000;"),
            "{}",
            String::from_utf8_lossy(&last_segment)
        );
        // Both land in the last segment (the paste when it ended, the download cut at the
        // session's end), at its start: they opened before it.
        let last = &events[2];
        assert_eq!(last.len(), 2, "{last:?}");
        assert!(last.iter().all(|e| e.offset_ms == 0));
        assert!(last.iter().any(|e| e.detail
            == EventDetail::Clipboard {
                direction: D::ToRemote,
                mimetype: "text/plain".into(),
                size_bytes: 6,
                text: Some("hello!".into()),
                truncated: false,
            }));
        assert!(last.iter().any(|e| matches!(
            &e.detail,
            EventDetail::File {
                direction: D::FromRemote,
                complete: false,
                size_bytes: 3,
                name,
                ..
            } if name == "a.txt"
        )));
    }
}
