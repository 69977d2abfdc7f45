//! Rolling segment files of one recorded session:
//! `<data_dir>/segments/<session_id>/<index:06>.guac`.
//!
//! The writer owns the open file, a write buffer that is flushed only at instruction
//! boundaries (so a file never ends inside an instruction), and the seal chain. Every disk
//! operation that can stall runs on the blocking pool, so the executor (and the other sessions
//! on its core) never waits for the disk: buffer writes (one in flight at a time; the buffer
//! keeps filling meanwhile, bounded by [`SEGMENT_BACKLOG_BYTES_MAX`]) and sealing (last write,
//! fsync, then [`RecordingSink::segment_sealed`]), one seal after the other in index order.
//! Only opening a file happens on the executor. It does not decide where boundaries are or
//! when to roll; the recorder in [`super::recorder`] does.
//!
//! A failed write (a full disk, ENOSPC) never leaves half an instruction behind: the write
//! task cuts the file back to where that write started (a boundary), the writer stops writing
//! for good (the recorder ends the session), and the seal still fsyncs the file and hands it to
//! the sink with its true size, so everything written before the failure is encoded. When a
//! background seal's last write fails after the session moved on to later segments, those are
//! removed rather than registered: the recording stays a gapless prefix of the session.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::limits::{SEGMENT_BACKLOG_BYTES_MAX, SEGMENT_FLUSH_BYTES};
use crate::status::{WritingSegment, WritingSegments};

use super::sink::{RecordingSink, SessionMeta, SessionStart};

/// A segment file could not be written or sealed.
#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    /// Creating, writing or syncing a segment file failed.
    #[error("segment file {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The sink did not accept a sealed segment.
    #[error("sealed segment not accepted: {0}")]
    Sink(String),
}

impl SegmentError {
    /// Whether the filesystem is full (ENOSPC, EDQUOT): freeing space heals it.
    pub fn is_disk_full(&self) -> bool {
        match self {
            SegmentError::Io { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
            ),
            SegmentError::Sink(_) => false,
        }
    }
}

/// A failure kept for later reports ([`SegmentError`] holds an `io::Error`, which is not
/// `Clone`): rebuilt into a [`SegmentError`] of the same kind each time it is asked for.
#[derive(Debug, Clone)]
enum Failure {
    Io {
        path: PathBuf,
        kind: io::ErrorKind,
        os_code: Option<i32>,
        text: String,
    },
    Sink(String),
}

impl Failure {
    fn io(path: &Path, e: &io::Error) -> Self {
        Failure::Io {
            path: path.to_path_buf(),
            kind: e.kind(),
            os_code: e.raw_os_error(),
            text: e.to_string(),
        }
    }

    fn error(&self) -> SegmentError {
        match self {
            Failure::Io {
                path,
                kind,
                os_code,
                text,
            } => SegmentError::Io {
                path: path.clone(),
                source: match os_code {
                    Some(code) => io::Error::from_raw_os_error(*code),
                    None => io::Error::new(*kind, text.clone()),
                },
            },
            Failure::Sink(msg) => SegmentError::Sink(msg.clone()),
        }
    }
}

impl crate::error::Classify for SegmentError {
    fn is_transient(&self) -> bool {
        match self {
            SegmentError::Io { source, .. } => source.is_transient(),
            SegmentError::Sink(_) => true,
        }
    }
}

/// The directory holding a session's segments.
pub fn session_dir(segments_dir: &Path, session_id: &str) -> PathBuf {
    assert!(
        is_safe_session_id(session_id),
        "session ids are validated before they name a directory"
    );
    segments_dir.join(session_id)
}

/// The path of segment `index` of a session.
pub fn segment_path(session_dir: &Path, index: u32) -> PathBuf {
    session_dir.join(format!("{index:06}.guac"))
}

/// Whether `id` can name a directory: 1 to the named maximum of `[A-Za-z0-9._-]`, not `.`/`..`.
pub fn is_safe_session_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= crate::limits::TAP_SESSION_ID_CHARS_MAX
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Writes one session's segments.
pub struct SegmentWriter {
    dir: PathBuf,
    meta: Arc<SessionMeta>,
    sink: Arc<dyn RecordingSink>,
    /// The sink's id of the session, handed back with each seal.
    session: u64,
    index: u32,
    /// The open segment file; `None` while a write is in flight (the task holds it).
    file: Option<File>,
    /// The write in flight, giving the file back with its result.
    writing: Option<smol::Task<(File, io::Result<()>)>>,
    /// Bytes of the write in flight.
    in_flight: u64,
    /// Bytes handed to the current file (in flight included).
    written: u64,
    /// Complete instructions not yet written.
    buf: Vec<u8>,
    /// A write of the current file failed: nothing more is written, the file keeps what was
    /// written before that write.
    failed: Option<Failure>,
    seals: Option<smol::Task<()>>,
    seal_failure: Arc<Mutex<Option<Failure>>>,
    sealed: u32,
    /// The current segment on the status board's list of segments being written.
    listed: Option<WritingSegment>,
}

impl SegmentWriter {
    /// Creates the session directory and the segment file `first_index`.
    ///
    /// # Errors
    /// The directory or file cannot be created (the session must then be refused).
    pub fn create(
        dir: PathBuf,
        meta: Arc<SessionMeta>,
        sink: Arc<dyn RecordingSink>,
        start: SessionStart,
    ) -> Result<Self, SegmentError> {
        let first_index = start.next_index;
        std::fs::create_dir_all(&dir).map_err(|source| SegmentError::Io {
            path: dir.clone(),
            source,
        })?;
        let file = open_segment(&segment_path(&dir, first_index))?;
        Ok(Self {
            dir,
            meta,
            sink,
            session: start.session,
            index: first_index,
            file: Some(file),
            writing: None,
            in_flight: 0,
            written: 0,
            buf: Vec::with_capacity(SEGMENT_FLUSH_BYTES * 2),
            failed: None,
            seals: None,
            seal_failure: Arc::new(Mutex::new(None)),
            sealed: 0,
            listed: None,
        })
    }

    /// Lists the current segment, and each one after it until it is sealed, on `writing`
    /// (the status board's segments being written), with its bytes as of the last
    /// [`Self::publish_len`].
    pub fn list_on(&mut self, writing: &WritingSegments) {
        self.listed = Some(writing.start(segment_path(&self.dir, self.index)));
        self.publish_len();
    }

    /// Tells the list how many bytes the current segment holds (buffered ones included).
    pub fn publish_len(&self) {
        if let Some(listed) = &self.listed {
            listed.set_bytes(self.len());
        }
    }

    /// Bytes in the current segment, buffered ones included.
    pub fn len(&self) -> u64 {
        self.written + self.buf.len() as u64
    }

    /// Whether the current segment holds nothing yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The index of the current segment.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The write buffer; the caller appends whole instructions and may truncate back to its
    /// own last boundary.
    pub fn buf_mut(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// The buffer's length.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// A write or seal that failed earlier, if any: reported on every call, so each part of
    /// the tap that looks (the pumps, the idle flush) ends the session, not only the first.
    pub fn failure(&self) -> Option<SegmentError> {
        match &self.failed {
            Some(f) => Some(f.error()),
            None => self.seal_failure(),
        }
    }

    /// A seal that failed earlier (the session must then be closed), if any.
    pub fn seal_failure(&self) -> Option<SegmentError> {
        self.seal_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(Failure::error)
    }

    /// Starts writing the buffer out when it is large and no write is in flight. Call only at
    /// an instruction boundary. After a failed write (reported once, by this or
    /// [`Self::over_backlog`]) nothing is written any more and the buffer is dropped here.
    ///
    /// # Errors
    /// An earlier write failed.
    pub fn maybe_flush(&mut self) -> Result<(), SegmentError> {
        if self.failed.is_some() {
            self.buf.clear();
            return Ok(());
        }
        if self.buf.len() >= SEGMENT_FLUSH_BYTES {
            self.reap()?;
            if self.writing.is_none() {
                self.start_write();
            }
        }
        Ok(())
    }

    /// Whether the buffer has grown past the backlog limit because the disk is slower than
    /// the stream: the caller then waits (reading no more) until this turns false. May start
    /// writing the first `boundary` bytes (complete instructions); returns how many bytes
    /// left the front of the buffer, so the caller can shift its own offsets.
    ///
    /// # Errors
    /// An earlier write failed.
    pub fn over_backlog(&mut self, boundary: usize) -> Result<(bool, usize), SegmentError> {
        assert!(
            boundary <= self.buf.len(),
            "the boundary lies inside the buffer"
        );
        if self.buf.len() < SEGMENT_BACKLOG_BYTES_MAX || self.failed.is_some() {
            return Ok((false, 0));
        }
        match self.write_prefix(boundary)? {
            0 => Ok((true, 0)),
            moved => Ok((false, moved)),
        }
    }

    /// Starts writing the first `boundary` bytes of the buffer (complete instructions) now,
    /// whatever their size, unless a write is in flight or an earlier one failed. Returns how
    /// many bytes left the front of the buffer (0 when nothing was started).
    ///
    /// # Errors
    /// An earlier write failed.
    pub fn write_prefix(&mut self, boundary: usize) -> Result<usize, SegmentError> {
        assert!(
            boundary <= self.buf.len(),
            "the boundary lies inside the buffer"
        );
        if self.failed.is_some() {
            return Ok(0);
        }
        self.reap()?;
        if self.writing.is_some() || boundary == 0 {
            return Ok(0);
        }
        let tail = self.buf.split_off(boundary);
        let head = std::mem::replace(&mut self.buf, tail);
        self.start_write_of(head);
        Ok(boundary)
    }

    /// Takes back the file from a finished write. A failed write was cut back to where it
    /// started; the writer then stops writing.
    fn reap(&mut self) -> Result<(), SegmentError> {
        if !self.writing.as_ref().is_some_and(smol::Task::is_finished) {
            return Ok(());
        }
        let Some(task) = self.writing.take() else {
            return Ok(());
        };
        // Finished: this returns at once.
        let (file, result) = smol::block_on(task);
        self.file = Some(file);
        let in_flight = std::mem::take(&mut self.in_flight);
        let Err(source) = result else {
            return Ok(());
        };
        self.written -= in_flight;
        let failure = Failure::io(&segment_path(&self.dir, self.index), &source);
        self.failed = Some(failure.clone());
        Err(failure.error())
    }

    fn start_write(&mut self) {
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(SEGMENT_FLUSH_BYTES * 2));
        self.start_write_of(data);
    }

    fn start_write_of(&mut self, data: Vec<u8>) {
        assert!(self.writing.is_none(), "one write in flight at a time");
        let mut file = self
            .file
            .take()
            .expect("the file is here when no write is in flight");
        let start = self.written;
        self.in_flight = data.len() as u64;
        self.written += self.in_flight;
        self.writing = Some(smol::unblock(move || {
            let result = write_or_cut_back(&mut file, start, &data);
            (file, result)
        }));
    }

    /// Seals the current segment (in the background) and opens the next. Call only at an
    /// instruction boundary.
    ///
    /// # Errors
    /// Creating the next file failed.
    pub fn roll(&mut self) -> Result<(), SegmentError> {
        if self.failed.is_some() {
            // Nothing is written any more; the session is being closed.
            return Ok(());
        }
        let next = open_segment(&segment_path(&self.dir, self.index + 1))?;
        self.publish_len();
        self.seal();
        self.file = Some(next);
        self.index += 1;
        self.written = 0;
        if let Some(listed) = self.listed.take() {
            self.listed = Some(listed.set().start(segment_path(&self.dir, self.index)));
        }
        Ok(())
    }

    /// Seals what was written and waits for every seal of this connection. An empty last
    /// segment is removed rather than sealed. Returns the number of segments sealed.
    ///
    /// # Errors
    /// Writing or a seal failed.
    pub async fn close(mut self) -> Result<u32, SegmentError> {
        let nothing_kept = self.written == 0 && (self.buf.is_empty() || self.failed.is_some());
        if !nothing_kept {
            self.publish_len();
            self.seal();
            self.listed = None;
        } else {
            self.remove_current();
            if let Some(listed) = self.listed.take() {
                listed.discard();
            }
        }
        if let Some(task) = self.seals.take() {
            task.await;
        }
        if let Some(failed) = &self.failed {
            return Err(failed.error());
        }
        self.sealed_so_far()
    }

    fn remove_current(&self) {
        let path = segment_path(&self.dir, self.index);
        if let Err(e) = std::fs::remove_file(&path) {
            log::warn!(
                "event=segment_remove_failed path={} error={e}",
                path.display()
            );
        }
    }

    fn sealed_so_far(&self) -> Result<u32, SegmentError> {
        match self.seal_failure() {
            Some(e) => Err(e),
            None => Ok(self.sealed),
        }
    }

    /// Removes the current segment instead of sealing it (nothing in it is worth keeping: no
    /// frame was drawn) and waits for the seals of earlier segments. Returns the number of
    /// segments sealed.
    ///
    /// # Errors
    /// An earlier seal failed.
    pub async fn discard(mut self) -> Result<u32, SegmentError> {
        if let Some(listed) = self.listed.take() {
            listed.discard();
        }
        if let Some(task) = self.writing.take() {
            // Its result no longer matters: the file goes.
            let _ = task.await;
        }
        self.file.take();
        self.remove_current();
        if let Some(task) = self.seals.take() {
            task.await;
        }
        self.sealed_so_far()
    }

    /// Hands the current segment (file or write in flight, plus the buffer) to a seal task:
    /// last write, fsync, then the sink, after the previous seal. When a write failed (now or
    /// before), the file is cut back to what was written before it and still handed to the
    /// sink with that size; the failure is kept for [`Self::seal_failure`].
    fn seal(&mut self) {
        let prev = self.seals.take();
        let path = segment_path(&self.dir, self.index);
        let (meta, sink, failure) = (
            self.meta.clone(),
            self.sink.clone(),
            self.seal_failure.clone(),
        );
        let session = self.session;
        let writing = self.writing.take();
        let file = self.file.take();
        let mut data =
            std::mem::replace(&mut self.buf, Vec::with_capacity(SEGMENT_FLUSH_BYTES * 2));
        if self.failed.is_some() {
            data.clear();
        }
        let before = Kept {
            before_in_flight: self.written - std::mem::take(&mut self.in_flight),
            before_rest: self.written,
        };
        let index = self.index;
        self.sealed += 1;
        self.seals = Some(smol::unblock(move || {
            let (bytes, written) = finish_file(writing, file, &data, before);
            // Seals reach the sink in index order.
            if let Some(prev) = prev {
                smol::block_on(prev);
            }
            if let Some(Failure::Io { .. }) = &*failure.lock().unwrap_or_else(|p| p.into_inner()) {
                // An earlier segment lost its tail: the recording stays a gapless prefix of
                // the session, so what was written after the hole is not kept.
                log::warn!(
                    "event=segment_discarded_after_write_failure session={} index={index} \
                     bytes={bytes}",
                    meta.session_id
                );
                let _ = std::fs::remove_file(&path);
                return;
            }
            let mut failed = written.err().map(|e| {
                log::error!(
                    "event=segment_write_failed session={} index={index} kept_bytes={bytes} \
                     disk_full={} error={e}",
                    meta.session_id,
                    matches!(
                        e.kind(),
                        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
                    )
                );
                Failure::io(&path, &e)
            });
            if bytes == 0 {
                // Nothing durable to encode (the failure is still reported).
                let _ = std::fs::remove_file(&path);
            } else {
                match sink.segment_sealed(session, &meta, index, &path, bytes) {
                    Ok(()) => log::info!(
                        "event=segment_sealed session={} index={index} bytes={bytes}",
                        meta.session_id
                    ),
                    Err(e) => {
                        log::error!(
                            "event=segment_seal_failed session={} index={index} error={e}",
                            meta.session_id
                        );
                        failed.get_or_insert(Failure::Sink(e.to_string()));
                    }
                }
            }
            if let Some(f) = failed {
                failure
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_or_insert(f);
            }
        }));
    }
}

/// Lengths of the file being sealed, to cut it back to when a write fails.
#[derive(Clone, Copy)]
struct Kept {
    /// Before the write in flight, if any.
    before_in_flight: u64,
    /// Before the rest of the buffer.
    before_rest: u64,
}

/// Writes `data` at `start` (the file's length so far); when that fails, cuts the file back
/// to `start` so it never ends inside a partly written instruction.
fn write_or_cut_back(file: &mut File, start: u64, data: &[u8]) -> io::Result<()> {
    let result = file.write_all(data);
    if result.is_err() {
        // Best effort: the file was opened for this session only, so `start` is its length.
        if file.set_len(start).is_ok() {
            let _ = file.seek(SeekFrom::Start(start));
        }
    }
    result
}

/// On the blocking pool: waits for the write in flight, writes the rest, fsyncs, closes.
/// Returns the bytes the file holds (cut back to a boundary on failure) and the first error.
fn finish_file(
    writing: Option<smol::Task<(File, io::Result<()>)>>,
    file: Option<File>,
    rest: &[u8],
    kept: Kept,
) -> (u64, io::Result<()>) {
    let (mut file, mut len, mut result) = match (writing, file) {
        (Some(task), _) => {
            let (file, result) = smol::block_on(task);
            match result {
                Ok(()) => (file, kept.before_rest, Ok(())),
                Err(e) => (file, kept.before_in_flight, Err(e)),
            }
        }
        (None, Some(file)) => (file, kept.before_rest, Ok(())),
        (None, None) => return (0, Err(io::Error::other("segment file missing"))),
    };
    if result.is_ok() && !rest.is_empty() {
        result = write_or_cut_back(&mut file, len, rest);
        if result.is_ok() {
            len += rest.len() as u64;
        }
    }
    // What was written must be durable even when the rest was lost.
    let synced = file.sync_all();
    (len, result.and(synced))
}

/// Creates a new segment file. Never opens an existing one: a file already at this index holds
/// recorded footage (e.g. of a session whose start-up recovery failed and that reconnected
/// before the next start), and truncating it would destroy it. The session is refused (or
/// ended, at a roll) instead.
fn open_segment(path: &Path) -> Result<File, SegmentError> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|source| SegmentError::Io {
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::sink::SinkError;

    struct Counting(Mutex<Vec<(u32, u64)>>);

    impl RecordingSink for Counting {
        fn open_session(&self, _: &SessionMeta) -> Result<SessionStart, SinkError> {
            Ok(SessionStart {
                session: 1,
                next_index: 0,
            })
        }
        fn segment_sealed(
            &self,
            _: u64,
            _: &SessionMeta,
            i: u32,
            _: &Path,
            b: u64,
        ) -> Result<(), SinkError> {
            self.0.lock().unwrap().push((i, b));
            Ok(())
        }
        fn session_closed(&self, _: &SessionMeta, _: crate::queue::EndReason) {}
        fn rejoined(&self, _: &SessionMeta, _: &crate::ingest::sink::Rejoin) {}
        fn refused(&self, _: &SessionMeta, _: &str) {}
        fn not_started(&self, _: &SessionMeta, _: &str) {}
    }

    fn start(next_index: u32) -> SessionStart {
        SessionStart {
            session: 1,
            next_index,
        }
    }

    fn test_meta() -> Arc<SessionMeta> {
        Arc::new(SessionMeta {
            session_id: "s".into(),
            user_id: String::new(),
            username: String::new(),
            image_friendly_name: String::new(),
            protocol: "vnc".into(),
            client_addr: String::new(),
            started_ms: 0,
            target: String::new(),
        })
    }

    #[test]
    fn backlog_writes_only_complete_instructions_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let meta = test_meta();
        let sink = Arc::new(Counting(Mutex::new(Vec::new())));
        let mut w =
            SegmentWriter::create(dir.path().join("s"), meta, sink.clone(), start(3)).unwrap();
        w.buf_mut().extend_from_slice(b"small");
        assert_eq!(w.over_backlog(5).unwrap(), (false, 0));
        w.buf_mut().clear();
        let head = vec![b'a'; SEGMENT_BACKLOG_BYTES_MAX];
        w.buf_mut().extend_from_slice(&head);
        w.buf_mut().extend_from_slice(b"partial");
        // Below the limit nothing happens; above it the complete part is written.
        assert_eq!(w.over_backlog(10).unwrap(), (false, 10));
        assert_eq!(w.buffered(), SEGMENT_BACKLOG_BYTES_MAX + 7 - 10);
        assert_eq!(w.len(), SEGMENT_BACKLOG_BYTES_MAX as u64 + 7);
        let sealed = smol::block_on(w.close()).unwrap();
        assert_eq!(sealed, 1);
        let content = std::fs::read(dir.path().join("s/000003.guac")).unwrap();
        assert_eq!(content.len(), SEGMENT_BACKLOG_BYTES_MAX + 7);
        assert!(content.ends_with(b"partial"));
        assert_eq!(*sink.0.lock().unwrap(), vec![(3, content.len() as u64)]);
    }

    #[test]
    fn write_prefix_writes_complete_instructions_now_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let sink = Arc::new(Counting(Mutex::new(Vec::new())));
        let mut w =
            SegmentWriter::create(dir.path().join("s"), test_meta(), sink, start(0)).unwrap();
        let complete = b"4.sync,1.1;4.rect,1.0,1.0,1.0,1.1,1.1;";
        w.buf_mut().extend_from_slice(complete);
        w.buf_mut().extend_from_slice(b"4.cfi");
        // Far below SEGMENT_FLUSH_BYTES: maybe_flush leaves it in memory.
        w.maybe_flush().unwrap();
        assert_eq!(w.buffered(), complete.len() + 5);
        assert_eq!(w.write_prefix(complete.len()).unwrap(), complete.len());
        assert_eq!(w.buffered(), 5, "the partial instruction stays");
        assert_eq!(w.len(), complete.len() as u64 + 5);
        let file = dir.path().join("s/000000.guac");
        for _ in 0..500 {
            if std::fs::read(&file).unwrap() == complete {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(
            std::fs::read(&file).unwrap(),
            complete,
            "on disk without a close"
        );
        // Nothing complete buffered: nothing to start.
        assert_eq!(w.write_prefix(0).unwrap(), 0);
    }

    #[test]
    fn the_segment_being_written_is_listed_until_it_is_sealed() {
        let dir = tempfile::tempdir().unwrap();
        let sink = Arc::new(Counting(Mutex::new(Vec::new())));
        let mut w =
            SegmentWriter::create(dir.path().join("s"), test_meta(), sink, start(0)).unwrap();
        let writing = WritingSegments::default();
        w.list_on(&writing);
        w.buf_mut().extend_from_slice(b"4.sync,1.1;");
        w.publish_len();
        let t = writing.totals();
        assert_eq!((t.writing, t.writing_bytes, t.sealed), (1, 11, 0));
        assert!(writing.contains(&dir.path().join("s/000000.guac")));
        w.roll().unwrap();
        w.buf_mut().extend_from_slice(b"4.sync,1.2;4.sync,1.3;");
        w.publish_len();
        let t = writing.totals();
        assert_eq!((t.writing, t.writing_bytes), (1, 22), "the next one");
        assert_eq!(
            (t.sealed, t.sealed_bytes),
            (1, 11),
            "the rolled one, sealed"
        );
        assert!(writing.contains(&dir.path().join("s/000001.guac")));
        assert_eq!(smol::block_on(w.close()).unwrap(), 2);
        let t = writing.totals();
        assert_eq!((t.writing, t.sealed, t.sealed_bytes), (0, 2, 33));
    }

    #[test]
    fn an_existing_segment_file_is_never_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let session = dir.path().join("s");
        std::fs::create_dir_all(&session).unwrap();
        let existing = session.join("000003.guac");
        std::fs::write(&existing, b"4.sync,1.1;").unwrap();
        let meta = test_meta();
        let sink = Arc::new(Counting(Mutex::new(Vec::new())));
        let err = SegmentWriter::create(session, meta, sink, start(3))
            .err()
            .expect("an existing segment file refuses the session");
        assert!(err.to_string().contains("000003.guac"), "{err}");
        assert_eq!(std::fs::read(&existing).unwrap(), b"4.sync,1.1;");
    }

    #[test]
    fn a_kept_write_failure_is_still_a_transient_full_disk() {
        use crate::error::Classify;
        let enospc = io::Error::from_raw_os_error(libc::ENOSPC);
        let kept = Failure::io(Path::new("/d/s/000001.guac"), &enospc);
        for e in [kept.error(), kept.error()] {
            assert!(e.is_disk_full(), "{e}");
            assert!(e.is_transient(), "{e}");
            assert!(e.to_string().contains("000001.guac"), "{e}");
        }
        let other = Failure::io(Path::new("/x"), &io::Error::other("bad")).error();
        assert!(!other.is_disk_full());
        assert!(!Failure::Sink("queue down".into()).error().is_disk_full());
    }

    #[test]
    fn session_ids_that_could_escape_are_unsafe() {
        assert!(is_safe_session_id("abc-123_x.y"));
        for bad in ["", ".", "..", "a/b", "../x", "a b", "é"] {
            assert!(!is_safe_session_id(bad), "{bad}");
        }
        assert!(!is_safe_session_id(&"a".repeat(200)));
        assert_eq!(
            segment_path(Path::new("/d/s"), 7),
            PathBuf::from("/d/s/000007.guac")
        );
    }
}
