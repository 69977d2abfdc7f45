//! Spool import: recordings guacd wrote itself (`recording-path`) become queued segments.
//!
//! Owns the watch over `Config.spool_dir` (a poll, no inotify), the "is guacd done with this
//! file" test (no fcntl or flock lock held by a writer, and the same size and mtime on two
//! polls in a row), the session metadata (a sidecar `NAME.json`, or the file name), the split of
//! large files into segments at `sync` boundaries, and the quarantine of files that are not
//! Guacamole streams. It does not encode, and it never deletes a recording it could not import.
//!
//! Crash safety: pieces are copied to `<data-dir>/segments/<session>/<index>.guac` through a
//! temporary file and registered with the queue's idempotent `register_*`; the spool file is
//! removed only after every piece is committed. A kill at any point is repaired by importing
//! the same file again: pieces already registered are skipped, so nothing is duplicated.
//!
//! Called by `app`, on its own thread (file copies and LMDB commits block).

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Deserialize;

use crate::clock::Clock;
use crate::durable::{replace_via_temp, sync_parent, with_suffix, write_atomically};
use crate::error::Classify;
use crate::guac::Parser;
use crate::lifecycle::{Heartbeat, Shutdown};
use crate::limits::{
    LOG_REMINDER_INTERVAL_MS, SPOOL_FILES_PER_POLL_MAX, SPOOL_POLL_INTERVAL_MS,
    SPOOL_READ_CHUNK_BYTES, SPOOL_SIDECAR_BYTES_MAX,
};
use crate::queue::{
    ACTOR_SYSTEM, AuditAction, AuditTarget, NewAudit, NewSegment, NewSession, Queue, QueueError,
    SessionState,
};
use crate::status::StatusBoard;

/// The spool's quarantine directory name.
pub const QUARANTINE_DIR: &str = "quarantine";

/// Why a spool file could not be imported.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// Reading the spool or writing segments failed.
    #[error("spool I/O on {path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The queue refused (full, I/O).
    #[error("queue: {0}")]
    Queue(#[from] QueueError),
    /// The file cannot be imported as it is (not a Guacamole stream, bad sidecar, clash).
    #[error("{0}")]
    Corrupt(String),
}

impl Classify for SpoolError {
    fn is_transient(&self) -> bool {
        match self {
            SpoolError::Io { source, .. } => source.is_transient(),
            SpoolError::Queue(e) => e.is_transient(),
            SpoolError::Corrupt(_) => false,
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Session metadata Kasm / the broker writes beside a recording as `NAME.json`.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct Sidecar {
    /// External session id.
    #[serde(default)]
    pub session_id: Option<String>,
    /// External user id.
    #[serde(default)]
    pub user_id: Option<String>,
    /// User name.
    #[serde(default)]
    pub username: Option<String>,
    /// Image / connection name.
    #[serde(default)]
    pub image_friendly_name: Option<String>,
    /// `2023-12-12 21:12:45.386547` (UTC), RFC 3339, or ms since the epoch.
    #[serde(default)]
    pub start_date: Option<serde_json::Value>,
    /// `rdp`, `vnc`, `ssh`...
    #[serde(default)]
    pub protocol: Option<String>,
}

/// One piece of a recording: bytes `start..end`, ending just after a `sync` (except the last).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// First `sync` timestamp inside.
    pub first_sync_ms: Option<u64>,
    /// Last `sync` timestamp inside.
    pub last_sync_ms: Option<u64>,
}

impl Piece {
    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Whether it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

/// Parses the whole stream and cuts it into pieces of at most `bytes_max` bytes at `sync`
/// boundaries (a single frame larger than that stays whole). An incomplete instruction at the
/// end (guacd killed mid-write) is left out.
///
/// # Errors
/// [`SpoolError::Corrupt`] when the bytes are not a Guacamole stream (with the offset);
/// I/O errors.
pub fn plan_pieces(input: &mut dyn Read, bytes_max: u64) -> Result<Vec<Piece>, SpoolError> {
    assert!(bytes_max > 0, "segment size is validated to be positive");
    let mut parser = Parser::new();
    let mut pieces = Vec::new();
    let mut cur = Piece {
        start: 0,
        end: 0,
        first_sync_ms: None,
        last_sync_ms: None,
    };
    // (end offset, timestamp) of the last sync in the current piece: where it may be cut.
    let mut cut: Option<(u64, Option<u64>)> = None;
    let mut buf = vec![0u8; SPOOL_READ_CHUNK_BYTES];
    let mut instructions = 0u64;
    loop {
        let n = input.read(&mut buf).map_err(|source| SpoolError::Io {
            path: PathBuf::from("<recording>"),
            source,
        })?;
        if n == 0 {
            break;
        }
        parser.push(&buf[..n]);
        while let Some(instr) = parser
            .next()
            .map_err(|e| SpoolError::Corrupt(format!("not a valid Guacamole stream: {e}")))?
        {
            instructions += 1;
            let end = instr.offset + instr.raw_len;
            if end - cur.start > bytes_max
                && let Some((cut_end, cut_ts)) = cut.take()
            {
                pieces.push(Piece {
                    end: cut_end,
                    last_sync_ms: cut_ts,
                    ..cur
                });
                cur = Piece {
                    start: cut_end,
                    end: cut_end,
                    first_sync_ms: None,
                    last_sync_ms: None,
                };
            }
            if instr.opcode == "sync" {
                let ts = instr.args.first().and_then(|a| a.parse::<u64>().ok());
                if cur.first_sync_ms.is_none() {
                    cur.first_sync_ms = ts;
                }
                if ts.is_some() {
                    cur.last_sync_ms = ts;
                }
                cut = Some((end, cur.last_sync_ms));
            }
            cur.end = end;
        }
    }
    if instructions == 0 {
        return Err(SpoolError::Corrupt(
            "no complete Guacamole instruction (empty or not a Guacamole stream)".into(),
        ));
    }
    if parser.pending_bytes() > 0 {
        log::warn!(
            "event=spool_truncated_tail bytes={} offset={}",
            parser.pending_bytes(),
            parser.offset()
        );
    }
    if !cur.is_empty() {
        pieces.push(cur);
    }
    Ok(pieces)
}

/// Parses a sidecar's `start_date`.
fn parse_start_date(v: &serde_json::Value) -> Option<u64> {
    use time::format_description::well_known::Rfc3339;
    use time::macros::format_description;
    match v {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => {
            let s = s.trim();
            if let Ok(t) = time::OffsetDateTime::parse(s, &Rfc3339) {
                return u64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok();
            }
            let fmt = format_description!(
                "[year]-[month]-[day][first [ ][T]][hour]:[minute]:[second][optional [.[subsecond]]]"
            );
            let t = time::PrimitiveDateTime::parse(s, fmt).ok()?.assume_utc();
            u64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
        }
        _ => None,
    }
}

/// What the watcher remembers of a file between polls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    bytes: u64,
    modified: Option<SystemTime>,
}

/// What one [`SpoolImporter::tick`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpoolTick {
    /// Nothing was ready.
    Idle,
    /// This many files were imported or quarantined.
    Worked(usize),
    /// A transient problem (queue full, disk trouble): try again later.
    Backoff,
}

/// The spool watcher and importer.
pub struct SpoolImporter {
    spool_dir: PathBuf,
    segments_dir: PathBuf,
    segment_bytes_max: u64,
    queue: Arc<Queue>,
    status: StatusBoard,
    clock: Arc<dyn Clock>,
    seen: HashMap<PathBuf, Seen>,
}

/// What to log about the spool being paused: the change of state, then at most one reminder
/// per [`LOG_REMINDER_INTERVAL_MS`] while it lasts (a poll every 2 s would otherwise log it 30
/// times a minute).
#[derive(Debug, Default)]
struct PauseLog {
    /// Since when, and when it was last logged.
    paused: Option<(u64, u64)>,
}

#[derive(Debug, PartialEq, Eq)]
enum PauseLine {
    Paused,
    StillPaused { since_ms: u64 },
    Resumed,
}

impl PauseLog {
    fn observe(&mut self, paused: bool, now_ms: u64) -> Option<PauseLine> {
        match (self.paused, paused) {
            (None, false) => None,
            (None, true) => {
                self.paused = Some((now_ms, now_ms));
                Some(PauseLine::Paused)
            }
            (Some(_), false) => {
                self.paused = None;
                Some(PauseLine::Resumed)
            }
            (Some((since_ms, logged_ms)), true) => {
                if now_ms.saturating_sub(logged_ms) < LOG_REMINDER_INTERVAL_MS {
                    return None;
                }
                self.paused = Some((since_ms, now_ms));
                Some(PauseLine::StillPaused { since_ms })
            }
        }
    }
}

impl SpoolImporter {
    /// A watcher over `spool_dir` writing segments under `segments_dir`.
    pub fn new(
        spool_dir: PathBuf,
        segments_dir: PathBuf,
        segment_bytes_max: u64,
        queue: Arc<Queue>,
        status: StatusBoard,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            spool_dir,
            segments_dir,
            segment_bytes_max,
            queue,
            status,
            clock,
            seen: HashMap::new(),
        }
    }

    /// Polls every [`SPOOL_POLL_INTERVAL_MS`] until `shutdown`.
    pub fn run(mut self, shutdown: &Shutdown, heartbeat: &Heartbeat) {
        let interval = Duration::from_millis(SPOOL_POLL_INTERVAL_MS);
        let mut pause = PauseLog::default();
        loop {
            heartbeat.beat();
            let disk = self.status.snapshot().disk.state;
            let paused = disk.must_close_sessions();
            match pause.observe(paused, self.clock.now_ms()) {
                Some(PauseLine::Paused) => {
                    log::warn!("event=spool_paused reason=disk disk_state={disk:?}")
                }
                Some(PauseLine::StillPaused { since_ms }) => log::warn!(
                    "event=spool_still_paused reason=disk disk_state={disk:?} since_ms={since_ms}"
                ),
                Some(PauseLine::Resumed) => log::info!("event=spool_resumed disk_state={disk:?}"),
                None => {}
            }
            if !paused {
                self.tick();
            }
            if shutdown.sleep(interval) {
                break;
            }
        }
        log::info!("event=spool_stopped");
    }

    /// One poll: notes sizes, imports the files that are finished, quarantines corrupt ones.
    pub fn tick(&mut self) -> SpoolTick {
        let (recordings, sidecars) = match self.list() {
            Ok(lists) => lists,
            Err(e) => {
                log::error!(
                    "event=spool_list_failed dir={} error={e}",
                    self.spool_dir.display()
                );
                self.status.record_error("spool", &e.to_string());
                return SpoolTick::Backoff;
            }
        };
        let mut next_seen = HashMap::new();
        let mut worked = 0;
        for (path, now) in recordings {
            let before = self.seen.get(&path).copied();
            if before != Some(now) || is_locked(&path) {
                next_seen.insert(path, now);
                continue;
            }
            match self.import(&path) {
                Ok(()) => worked += 1,
                Err(e) if e.is_transient() => {
                    log::error!(
                        "event=spool_import_deferred file={} error={e}",
                        path.display()
                    );
                    self.status.record_error("spool", &e.to_string());
                    self.seen = next_seen;
                    return SpoolTick::Backoff;
                }
                Err(e) => {
                    self.quarantine(&path, &e.to_string());
                    worked += 1;
                }
            }
        }
        self.seen = next_seen;
        self.clean_sidecars(&sidecars);
        if worked > 0 {
            SpoolTick::Worked(worked)
        } else {
            SpoolTick::Idle
        }
    }

    /// Recordings (with their size and mtime) and sidecars in the spool, oldest name first.
    #[allow(clippy::type_complexity)]
    fn list(&self) -> io::Result<(Vec<(PathBuf, Seen)>, Vec<PathBuf>)> {
        let mut recordings = Vec::new();
        let mut sidecars = Vec::new();
        let entries = match fs::read_dir(&self.spool_dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((recordings, sidecars)),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let meta = match entry.metadata() {
                Ok(m) => m,
                // Vanished between listing and stat: guacd or an operator moved it.
                Err(_) => continue,
            };
            if !meta.is_file() || name.starts_with('.') {
                continue;
            }
            if name.ends_with(".json") {
                sidecars.push(entry.path());
            } else if !(name.ends_with(".tmp") || name.ends_with(".reason")) {
                let seen = Seen {
                    bytes: meta.len(),
                    modified: meta.modified().ok(),
                };
                recordings.push((entry.path(), seen));
            }
        }
        recordings.sort_by(|a, b| a.0.cmp(&b.0));
        recordings.truncate(SPOOL_FILES_PER_POLL_MAX);
        Ok((recordings, sidecars))
    }

    /// Imports one finished recording. Safe to repeat after a crash at any point.
    ///
    /// # Errors
    /// Transient ones leave the file for the next poll; the others mean quarantine.
    pub fn import(&self, path: &Path) -> Result<(), SpoolError> {
        let sidecar_path = find_sidecar(path);
        let sidecar = match &sidecar_path {
            Some(p) => read_sidecar(p)?,
            None => Sidecar::default(),
        };
        let mut file = File::open(path).map_err(io_err(path))?;
        let meta = file.metadata().map_err(io_err(path))?;
        let pieces = plan_pieces(&mut io::BufReader::new(&mut file), self.segment_bytes_max)?;
        let new_session = session_for(path, &sidecar, &meta, &pieces, self.clock.now_ms());
        let session = self.queue.register_session(&new_session)?;
        let existing = self
            .queue
            .session(session)?
            .map_or(0, |s| s.segment_count as usize);
        if existing > pieces.len() {
            return Err(SpoolError::Corrupt(format!(
                "session id {} already has {existing} segments, this file makes {}",
                new_session.session_id,
                pieces.len()
            )));
        }
        let dir = self.segments_dir.join(session.to_string());
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        for (index, piece) in pieces.iter().enumerate() {
            let index = u32::try_from(index).map_err(|_| {
                SpoolError::Corrupt("recording splits into more than 2^32 segments".into())
            })?;
            self.import_piece(&mut file, session, index, piece, &dir)?;
        }
        self.close_session(session, &pieces, &new_session)?;
        // Committed: the spool copy may go. The recording first, then its sidecar, so that a
        // crash in between cannot re-import the recording under a file-name session id.
        fs::remove_file(path).map_err(io_err(path))?;
        if let Some(sidecar) = sidecar_path {
            fs::remove_file(&sidecar).map_err(io_err(&sidecar))?;
        }
        sync_parent(path).map_err(io_err(path))?;
        log::info!(
            "event=spool_imported file={} session={} session_id={} segments={} bytes={}",
            path.display(),
            session,
            new_session.session_id,
            pieces.len(),
            meta.len()
        );
        Ok(())
    }

    fn import_piece(
        &self,
        file: &mut File,
        session: u64,
        index: u32,
        piece: &Piece,
        dir: &Path,
    ) -> Result<(), SpoolError> {
        if let Some(seg) = self.queue.segment_at(session, index)? {
            if seg.bytes != piece.len() {
                return Err(SpoolError::Corrupt(format!(
                    "segment {index} of session {session} already exists with {} bytes, this \
                     file has {} (two recordings with one session id?)",
                    seg.bytes,
                    piece.len()
                )));
            }
            return Ok(());
        }
        let dest = dir.join(format!("{index}.guac"));
        copy_range(file, piece.start, piece.len(), &dest).map_err(io_err(&dest))?;
        self.queue.register_segment(&NewSegment {
            session,
            index,
            path: dest,
            bytes: piece.len(),
            first_sync_ms: piece.first_sync_ms,
            last_sync_ms: piece.last_sync_ms,
            sealed: true,
        })?;
        Ok(())
    }

    fn close_session(
        &self,
        session: u64,
        pieces: &[Piece],
        new: &NewSession,
    ) -> Result<(), SpoolError> {
        // Live, or Interrupted when a crash cut an earlier import of this file short.
        let state = self.queue.session(session)?.map(|s| s.state);
        if let Some(from @ (SessionState::Live | SessionState::Interrupted)) = state {
            let end_ms = new.start_ms.saturating_add(span_ms(pieces));
            self.queue
                .transition_session(session, from, SessionState::Closed, Some(end_ms))?;
        }
        Ok(())
    }

    /// Moves a recording (and its sidecar) into `<spool>/quarantine/` with a `.reason` file.
    /// Never deletes it.
    fn quarantine(&self, path: &Path, reason: &str) {
        log::error!(
            "event=spool_quarantined file={} reason={reason:?}",
            path.display()
        );
        self.status.record_error(
            "spool",
            &format!("{} quarantined: {reason}", path.display()),
        );
        let qdir = self.spool_dir.join(QUARANTINE_DIR);
        let result = (|| -> io::Result<PathBuf> {
            fs::create_dir_all(&qdir)?;
            let name = path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let mut dest = qdir.join(&name);
            let mut n = 1;
            while dest.exists() {
                dest = qdir.join(format!("{name}.{n}"));
                n += 1;
            }
            let sidecar = find_sidecar(path);
            fs::rename(path, &dest)?;
            if let Some(sidecar) = sidecar {
                let mut side_dest = dest.as_os_str().to_owned();
                side_dest.push(".json");
                fs::rename(&sidecar, PathBuf::from(side_dest))?;
            }
            let mut reason_path = dest.as_os_str().to_owned();
            reason_path.push(".reason");
            write_atomically(Path::new(&reason_path), format!("{reason}\n").as_bytes())?;
            Ok(dest)
        })();
        match result {
            Ok(dest) => {
                let audit = NewAudit {
                    actor: ACTOR_SYSTEM.to_string(),
                    action: AuditAction::QuarantinedSegment,
                    target: AuditTarget::None,
                    message: format!(
                        "Spool recording {} quarantined as {}: {reason}",
                        path.display(),
                        dest.display()
                    ),
                };
                if let Err(e) = self.queue.append_audit(&audit) {
                    log::error!("event=audit_failed error={e}");
                }
            }
            Err(e) => log::error!(
                "event=spool_quarantine_failed file={} error={e}",
                path.display()
            ),
        }
    }

    /// Removes sidecars left behind by a crash after their recording was imported (the
    /// recording is gone and its session is in the queue).
    fn clean_sidecars(&self, sidecars: &[PathBuf]) {
        for sidecar in sidecars {
            let stem = sidecar.with_extension("");
            if stem.exists() || recording_candidates(sidecar).iter().any(|p| p.exists()) {
                continue;
            }
            let Ok(meta) = read_sidecar(sidecar) else {
                continue;
            };
            let Some(id) = meta.session_id else { continue };
            if matches!(self.queue.session_by_external(&id), Ok(Some(s)) if s.segment_count > 0) {
                log::info!("event=spool_sidecar_removed file={}", sidecar.display());
                let _ = fs::remove_file(sidecar);
            }
        }
    }
}

/// Recording names a sidecar can belong to: `X.json` -> `X`, `X.guac`.
fn recording_candidates(sidecar: &Path) -> Vec<PathBuf> {
    let stem = sidecar.with_extension("");
    let mut with_guac = stem.as_os_str().to_owned();
    with_guac.push(".guac");
    vec![stem, PathBuf::from(with_guac)]
}

/// `NAME.json` beside `NAME`, or `STEM.json` beside `STEM.EXT`.
fn find_sidecar(path: &Path) -> Option<PathBuf> {
    let mut full = path.as_os_str().to_owned();
    full.push(".json");
    let full = PathBuf::from(full);
    if full.is_file() {
        return Some(full);
    }
    let stem = path.with_extension("json");
    (stem != path && stem.is_file()).then_some(stem)
}

fn read_sidecar(path: &Path) -> Result<Sidecar, SpoolError> {
    let meta = fs::metadata(path).map_err(io_err(path))?;
    if meta.len() > SPOOL_SIDECAR_BYTES_MAX {
        return Err(SpoolError::Corrupt(format!(
            "sidecar {} is larger than {SPOOL_SIDECAR_BYTES_MAX} bytes",
            path.display()
        )));
    }
    let text = fs::read(path).map_err(io_err(path))?;
    serde_json::from_slice(&text)
        .map_err(|e| SpoolError::Corrupt(format!("sidecar {}: {e}", path.display())))
}

/// guacd's sync timestamps span of the whole recording.
fn span_ms(pieces: &[Piece]) -> u64 {
    let first = pieces.iter().find_map(|p| p.first_sync_ms);
    let last = pieces.iter().rev().find_map(|p| p.last_sync_ms);
    match (first, last) {
        (Some(a), Some(b)) => b.saturating_sub(a),
        _ => 0,
    }
}

/// The session a recording belongs to: from its sidecar, else from its name and times.
fn session_for(
    path: &Path,
    sidecar: &Sidecar,
    meta: &fs::Metadata,
    pieces: &[Piece],
    now_ms: u64,
) -> NewSession {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let stem = name.strip_suffix(".guac").unwrap_or(&name).to_string();
    let protocol = ["rdp", "vnc", "ssh", "telnet", "kubernetes"]
        .into_iter()
        .find(|p| stem.to_ascii_lowercase().starts_with(p))
        .unwrap_or("unknown");
    // Without a start date, the file's mtime is the end of the session.
    let mtime_ms = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(now_ms, |d| d.as_millis() as u64);
    let start_ms = sidecar
        .start_date
        .as_ref()
        .and_then(parse_start_date)
        .unwrap_or_else(|| mtime_ms.saturating_sub(span_ms(pieces)));
    let or = |v: &Option<String>, d: &str| v.clone().unwrap_or_else(|| d.to_string());
    NewSession {
        session_id: or(&sidecar.session_id, &stem),
        user_id: or(&sidecar.user_id, ""),
        username: or(&sidecar.username, ""),
        image_friendly_name: or(&sidecar.image_friendly_name, ""),
        protocol: or(&sidecar.protocol, protocol),
        start_ms,
        // A spooled recording names no remote host nor peer.
        target: String::new(),
        client_addr: String::new(),
    }
}

/// Copies `len` bytes from `offset` of `src` to `dest` through `dest.tmp`, durably. On
/// failure (a full disk) the temporary copy is removed: nothing half-copied stays behind, and
/// the spool file, untouched, is imported again later.
fn copy_range(src: &mut File, offset: u64, len: u64, dest: &Path) -> io::Result<()> {
    replace_via_temp(
        &with_suffix(dest, ".tmp"),
        dest,
        |_, e| e,
        |out| {
            src.seek(SeekFrom::Start(offset))?;
            let copied = io::copy(&mut src.take(len), out)?;
            if copied != len {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("recording shrank while importing: copied {copied} of {len} bytes"),
                ));
            }
            out.flush()
        },
    )
}

/// Whether a writer holds a lock on the file: an fcntl (POSIX) lock, as guacd takes on a
/// recording in progress, or an flock. An unreadable file counts as locked (try again later).
pub fn is_locked(path: &Path) -> bool {
    let Ok(file) = File::open(path) else {
        return true;
    };
    fcntl_locked(&file) || flock_locked(&file)
}

fn fcntl_locked(file: &File) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: `flock` is a plain C struct of integers; all-zero is valid before we set fields.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = libc::F_WRLCK as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    lock.l_start = 0;
    lock.l_len = 0;
    // SAFETY: the fd is open for the duration of the call and `lock` is a valid, writable
    // struct flock; F_GETLK only reads the lock table and fills `lock`.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &mut lock) };
    rc != 0 || lock.l_type != libc::F_UNLCK as libc::c_short
}

fn flock_locked(file: &File) -> bool {
    match fs2::FileExt::try_lock_shared(file) {
        Ok(()) => {
            let _ = fs2::FileExt::unlock(file);
            false
        }
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::queue::QueueOptions;

    #[test]
    fn a_lasting_pause_is_logged_at_its_start_and_end_and_reminded_every_ten_minutes() {
        let mut log = PauseLog::default();
        let poll = SPOOL_POLL_INTERVAL_MS;
        assert_eq!(log.observe(false, 0), None);
        assert_eq!(log.observe(true, poll), Some(PauseLine::Paused));
        // Three minutes of polls every 2 s: nothing more (this was 91 lines).
        let mut lines = 0;
        let mut t = 2 * poll;
        while t < poll + 3 * 60 * 1000 {
            lines += usize::from(log.observe(true, t).is_some());
            t += poll;
        }
        assert_eq!(lines, 0);
        // Ten minutes after the first line: one reminder, then silence again.
        let reminder = poll + LOG_REMINDER_INTERVAL_MS;
        assert_eq!(log.observe(true, reminder - 1), None);
        assert_eq!(
            log.observe(true, reminder),
            Some(PauseLine::StillPaused { since_ms: poll })
        );
        assert_eq!(log.observe(true, reminder + poll), None);
        assert_eq!(
            log.observe(false, reminder + 2 * poll),
            Some(PauseLine::Resumed)
        );
        assert_eq!(log.observe(false, reminder + 3 * poll), None);
        assert_eq!(
            log.observe(true, reminder + 4 * poll),
            Some(PauseLine::Paused)
        );
    }

    fn recording(name: &str) -> PathBuf {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        let candidates = [
            std::env::var_os("SESSION_RECORDER_SHARED").map(PathBuf::from),
            Some(manifest.join("../shared")),
            Some(PathBuf::from("/work/shared")),
        ];
        candidates
            .into_iter()
            .flatten()
            .map(|d| d.join("recordings").join(name))
            .find(|p| p.is_file())
            .expect("shared recordings")
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        spool: PathBuf,
        queue: Arc<Queue>,
        importer: SpoolImporter,
    }

    fn fixture(segment_bytes_max: u64) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("spool");
        fs::create_dir_all(&spool).unwrap();
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(1_700_000_000_000));
        let queue =
            Arc::new(Queue::open(&QueueOptions::new(dir.path().join("q")), clock.clone()).unwrap());
        let importer = SpoolImporter::new(
            spool.clone(),
            dir.path().join("segments"),
            segment_bytes_max,
            queue.clone(),
            StatusBoard::new(clock.clone(), 1, 1),
            clock,
        );
        Fixture {
            _dir: dir,
            spool,
            queue,
            importer,
        }
    }

    #[test]
    fn pieces_cover_the_stream_and_end_at_sync() {
        let path = recording("ssh-green-800x600.guac");
        let bytes = fs::read(&path).unwrap();
        let max = 64 * 1024;
        let pieces = plan_pieces(&mut &bytes[..], max).unwrap();
        assert!(pieces.len() > 5, "{}", pieces.len());
        assert_eq!(pieces[0].start, 0);
        assert_eq!(pieces.last().unwrap().end, bytes.len() as u64);
        for pair in pieces.windows(2) {
            assert_eq!(pair[0].end, pair[1].start);
        }
        for p in &pieces[..pieces.len() - 1] {
            // Only a single frame larger than the limit may exceed it.
            assert!(p.len() <= max || p.first_sync_ms == p.last_sync_ms, "{p:?}");
            let chunk = &bytes[p.start as usize..p.end as usize];
            let mut parser = Parser::new();
            parser.push(chunk);
            let mut last = None;
            while let Some(i) = parser.next().unwrap() {
                last = Some(i.opcode);
            }
            assert_eq!(last.as_deref(), Some("sync"));
            assert!(p.first_sync_ms.is_some() && p.last_sync_ms >= p.first_sync_ms);
        }
        // Under the limit: one piece.
        assert_eq!(plan_pieces(&mut &bytes[..], 1 << 30).unwrap().len(), 1);
    }

    #[test]
    fn not_a_stream_is_corrupt() {
        let e = plan_pieces(&mut &b"hello world"[..], 1000).unwrap_err();
        assert!(matches!(e, SpoolError::Corrupt(_)), "{e}");
        let e = plan_pieces(&mut &b""[..], 1000).unwrap_err();
        assert!(matches!(e, SpoolError::Corrupt(_)), "{e}");
    }

    #[test]
    fn truncated_tail_is_left_out() {
        let pieces = plan_pieces(&mut &b"4.sync,2.10;4.sync,2.2"[..], 1000).unwrap();
        assert_eq!(pieces.len(), 1);
        assert_eq!(pieces[0].end, 12);
    }

    #[test]
    fn start_dates_in_kasm_and_rfc3339_forms() {
        let kasm = serde_json::json!("2024-01-29 18:55:45.220000");
        assert_eq!(parse_start_date(&kasm), Some(1_706_554_545_220));
        let rfc = serde_json::json!("2024-01-29T18:55:45.220Z");
        assert_eq!(parse_start_date(&rfc), Some(1_706_554_545_220));
        assert_eq!(parse_start_date(&serde_json::json!(42)), Some(42));
        assert_eq!(parse_start_date(&serde_json::json!("yesterday")), None);
    }

    #[test]
    fn locks_held_by_a_writer_are_seen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rec");
        fs::write(&path, b"x").unwrap();
        assert!(!is_locked(&path));
        // An fcntl write lock, as guacd takes, held by another process: F_GETLK ignores our
        // own locks, so take it in a child.
        let mut child = std::process::Command::new("flock")
            .arg("--no-fork")
            .arg(&path)
            .arg("sleep")
            .arg("30")
            .spawn()
            .expect("flock(1)");
        let mut locked = false;
        for _ in 0..100 {
            if is_locked(&path) {
                locked = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(locked, "an flock held by another process is seen");
        assert!(!is_locked(&path));
        // fcntl locks (guacd's kind) are covered end to end in tests/it/daemon.rs, where the
        // test process holds one and the daemon process must see it.
    }

    #[test]
    fn import_is_idempotent_and_removes_the_spool_copy() {
        let mut f = fixture(128 * 1024);
        let src = recording("ssh-resize-1024x768.guac");
        let rec = f.spool.join("rec-1.guac");
        fs::copy(&src, &rec).unwrap();
        fs::write(
            f.spool.join("rec-1.guac.json"),
            r#"{"session_id":"abc","user_id":"u","username":"bob","start_date":"2024-01-29 18:55:45.220000","protocol":"ssh"}"#,
        )
        .unwrap();
        // First poll notes the file, the second imports it.
        assert_eq!(f.importer.tick(), SpoolTick::Idle);
        assert_eq!(f.importer.tick(), SpoolTick::Worked(1));
        assert!(!rec.exists());
        assert!(!f.spool.join("rec-1.guac.json").exists());
        let session = f.queue.session_by_external("abc").unwrap().unwrap();
        assert_eq!(session.username, "bob");
        assert_eq!(session.state, SessionState::Closed);
        let segments = f.queue.segments_of_session(session.id).unwrap();
        assert!(segments.len() >= 4, "{}", segments.len());
        let total: u64 = segments.iter().map(|s| s.bytes).sum();
        assert_eq!(total, fs::metadata(&src).unwrap().len());
        // A crash before the spool copy was removed: the same file comes again.
        fs::copy(&src, &rec).unwrap();
        fs::write(f.spool.join("rec-1.guac.json"), r#"{"session_id":"abc"}"#).unwrap();
        f.importer.import(&rec).unwrap();
        assert_eq!(
            f.queue.segments_of_session(session.id).unwrap().len(),
            segments.len()
        );
        // Concatenated segments are the recording.
        let mut joined = Vec::new();
        for s in &segments {
            joined.extend(fs::read(&s.path).unwrap());
        }
        assert_eq!(joined, fs::read(&src).unwrap());
    }

    #[test]
    fn corrupt_file_is_quarantined_with_a_reason_and_others_go_through() {
        let mut f = fixture(1 << 30);
        fs::write(f.spool.join("broken.guac"), b"\x89PNG not guacamole").unwrap();
        fs::copy(recording("ssh-green-800x600.guac"), f.spool.join("ok.guac")).unwrap();
        f.importer.tick();
        assert_eq!(f.importer.tick(), SpoolTick::Worked(2));
        let q = f.spool.join(QUARANTINE_DIR);
        assert!(q.join("broken.guac").is_file());
        let reason = fs::read_to_string(q.join("broken.guac.reason")).unwrap();
        assert!(reason.contains("not a Guacamole stream"), "{reason}");
        assert!(f.queue.session_by_external("ok").unwrap().is_some());
        assert!(f.queue.session_by_external("broken").unwrap().is_none());
    }

    #[test]
    fn a_growing_file_waits() {
        let mut f = fixture(1 << 30);
        let rec = f.spool.join("growing.guac");
        fs::write(&rec, b"4.sync,2.10;").unwrap();
        f.importer.tick();
        fs::write(&rec, b"4.sync,2.10;4.sync,2.20;").unwrap();
        assert_eq!(f.importer.tick(), SpoolTick::Idle);
        assert_eq!(f.importer.tick(), SpoolTick::Worked(1));
    }
}
