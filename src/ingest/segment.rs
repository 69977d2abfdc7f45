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

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::limits::{SEGMENT_BACKLOG_BYTES_MAX, SEGMENT_FLUSH_BYTES};

use super::sink::{RecordingSink, SessionMeta};

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
    index: u32,
    /// The open segment file; `None` while a write is in flight (the task holds it).
    file: Option<File>,
    /// The write in flight, giving the file back with its result.
    writing: Option<smol::Task<(File, std::io::Result<()>)>>,
    /// Bytes handed to the current file (in flight included).
    written: u64,
    /// Complete instructions not yet written.
    buf: Vec<u8>,
    seals: Option<smol::Task<()>>,
    seal_failure: Arc<Mutex<Option<String>>>,
    sealed: u32,
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
        first_index: u32,
    ) -> Result<Self, SegmentError> {
        std::fs::create_dir_all(&dir).map_err(|source| SegmentError::Io {
            path: dir.clone(),
            source,
        })?;
        let file = open_segment(&segment_path(&dir, first_index))?;
        Ok(Self {
            dir,
            meta,
            sink,
            index: first_index,
            file: Some(file),
            writing: None,
            written: 0,
            buf: Vec::with_capacity(SEGMENT_FLUSH_BYTES * 2),
            seals: None,
            seal_failure: Arc::new(Mutex::new(None)),
            sealed: 0,
        })
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

    /// A seal that failed earlier (the session must then be closed), if any.
    pub fn seal_failure(&self) -> Option<String> {
        self.seal_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Starts writing the buffer out when it is large and no write is in flight. Call only at
    /// an instruction boundary.
    ///
    /// # Errors
    /// An earlier write failed.
    pub fn maybe_flush(&mut self) -> Result<(), SegmentError> {
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
        if self.buf.len() < SEGMENT_BACKLOG_BYTES_MAX {
            return Ok((false, 0));
        }
        self.reap()?;
        if self.writing.is_none() && boundary > 0 {
            let tail = self.buf.split_off(boundary);
            let head = std::mem::replace(&mut self.buf, tail);
            self.start_write_of(head);
            return Ok((false, boundary));
        }
        Ok((true, 0))
    }

    /// Takes back the file from a finished write.
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
        result.map_err(|source| SegmentError::Io {
            path: segment_path(&self.dir, self.index),
            source,
        })
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
        self.written += data.len() as u64;
        self.writing = Some(smol::unblock(move || {
            let result = file.write_all(&data);
            (file, result)
        }));
    }

    /// Seals the current segment (in the background) and opens the next. Call only at an
    /// instruction boundary.
    ///
    /// # Errors
    /// Creating the next file failed.
    pub fn roll(&mut self) -> Result<(), SegmentError> {
        let next = open_segment(&segment_path(&self.dir, self.index + 1))?;
        self.seal();
        self.file = Some(next);
        self.index += 1;
        self.written = 0;
        Ok(())
    }

    /// Seals what was written and waits for every seal of this connection. An empty last
    /// segment is removed rather than sealed. Returns the number of segments sealed.
    ///
    /// # Errors
    /// Writing or a seal failed.
    pub async fn close(mut self) -> Result<u32, SegmentError> {
        if !self.is_empty() {
            self.seal();
        } else {
            let path = segment_path(&self.dir, self.index);
            if let Err(e) = std::fs::remove_file(&path) {
                log::warn!(
                    "event=segment_remove_failed path={} error={e}",
                    path.display()
                );
            }
        }
        if let Some(task) = self.seals.take() {
            task.await;
        }
        match self.seal_failure() {
            Some(msg) => Err(SegmentError::Sink(msg)),
            None => Ok(self.sealed),
        }
    }

    /// Hands the current segment (file or write in flight, plus the buffer) to a seal task:
    /// last write, fsync, then the sink, after the previous seal.
    fn seal(&mut self) {
        let prev = self.seals.take();
        let path = segment_path(&self.dir, self.index);
        let (meta, sink, failure) = (
            self.meta.clone(),
            self.sink.clone(),
            self.seal_failure.clone(),
        );
        let writing = self.writing.take();
        let file = self.file.take();
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(SEGMENT_FLUSH_BYTES * 2));
        let (index, bytes) = (self.index, self.written + data.len() as u64);
        self.sealed += 1;
        self.seals = Some(smol::unblock(move || {
            let synced = finish_file(writing, file, &data);
            // Seals reach the sink in index order.
            if let Some(prev) = prev {
                smol::block_on(prev);
            }
            let result = match synced {
                Ok(()) => sink
                    .segment_sealed(&meta, index, &path, bytes)
                    .map_err(|e| e.to_string()),
                Err(e) => Err(format!("writing {}: {e}", path.display())),
            };
            match result {
                Ok(()) => log::info!(
                    "event=segment_sealed session={} index={index} bytes={bytes}",
                    meta.session_id
                ),
                Err(msg) => {
                    log::error!(
                        "event=segment_seal_failed session={} index={index} error={msg}",
                        meta.session_id
                    );
                    let mut f = failure.lock().unwrap_or_else(|p| p.into_inner());
                    f.get_or_insert(msg);
                }
            }
        }));
    }
}

/// On the blocking pool: waits for the write in flight, writes the rest, fsyncs, closes.
fn finish_file(
    writing: Option<smol::Task<(File, std::io::Result<()>)>>,
    file: Option<File>,
    rest: &[u8],
) -> std::io::Result<()> {
    let mut file = match (writing, file) {
        (Some(task), _) => {
            let (file, result) = smol::block_on(task);
            result?;
            file
        }
        (None, Some(file)) => file,
        (None, None) => return Err(std::io::Error::other("segment file missing")),
    };
    file.write_all(rest)?;
    file.sync_all()
}

fn open_segment(path: &Path) -> Result<File, SegmentError> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(|source| SegmentError::Io {
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::sink::{SessionStart, SinkError};

    struct Counting(Mutex<Vec<(u32, u64)>>);

    impl RecordingSink for Counting {
        fn open_session(&self, _: &SessionMeta) -> Result<SessionStart, SinkError> {
            Ok(SessionStart { next_index: 0 })
        }
        fn segment_sealed(
            &self,
            _: &SessionMeta,
            i: u32,
            _: &Path,
            b: u64,
        ) -> Result<(), SinkError> {
            self.0.lock().unwrap().push((i, b));
            Ok(())
        }
        fn session_closed(&self, _: &SessionMeta) {}
        fn refused(&self, _: &SessionMeta, _: &str) {}
    }

    #[test]
    fn backlog_writes_only_complete_instructions_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Arc::new(SessionMeta {
            session_id: "s".into(),
            user_id: String::new(),
            username: String::new(),
            image_friendly_name: String::new(),
            protocol: "vnc".into(),
            client_addr: String::new(),
            started_ms: 0,
        });
        let sink = Arc::new(Counting(Mutex::new(Vec::new())));
        let mut w = SegmentWriter::create(dir.path().join("s"), meta, sink.clone(), 3).unwrap();
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
