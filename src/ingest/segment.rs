//! Rolling segment files of one recorded session:
//! `<data_dir>/segments/<session_id>/<index:06>.guac`.
//!
//! The writer owns the open file, a write buffer that is flushed only at instruction
//! boundaries (so a file never ends inside an instruction), and the seal chain: sealing a
//! segment (fsync, then [`RecordingSink::segment_sealed`]) runs on the blocking pool so the
//! executor never waits for the disk, one seal after the other in index order. It does not
//! decide where boundaries are or when to roll; the recorder in [`super::tap`] does.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::limits::SEGMENT_FLUSH_BYTES;

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
    file: File,
    /// Bytes already written to `file`.
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
            file,
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

    /// Writes the buffer out when it is large. Call only at an instruction boundary.
    ///
    /// # Errors
    /// The write failed.
    pub fn maybe_flush(&mut self) -> Result<(), SegmentError> {
        if self.buf.len() >= SEGMENT_FLUSH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SegmentError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.file
            .write_all(&self.buf)
            .map_err(|source| SegmentError::Io {
                path: segment_path(&self.dir, self.index),
                source,
            })?;
        self.written += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    /// Seals the current segment (in the background) and opens the next. Call only at an
    /// instruction boundary.
    ///
    /// # Errors
    /// Writing the current or creating the next file failed.
    pub fn roll(&mut self) -> Result<(), SegmentError> {
        self.flush()?;
        let next = open_segment(&segment_path(&self.dir, self.index + 1))?;
        let file = std::mem::replace(&mut self.file, next);
        self.seal(file);
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
        let flushed = self.flush();
        if self.written > 0 {
            let file = self.file.try_clone().map_err(|source| SegmentError::Io {
                path: segment_path(&self.dir, self.index),
                source,
            })?;
            self.seal(file);
        } else {
            let path = segment_path(&self.dir, self.index);
            if let Err(e) = std::fs::remove_file(&path) {
                log::warn!("event=segment_remove_failed path={} error={e}", path.display());
            }
        }
        if let Some(task) = self.seals.take() {
            task.await;
        }
        flushed?;
        match self.seal_failure() {
            Some(msg) => Err(SegmentError::Sink(msg)),
            None => Ok(self.sealed),
        }
    }

    fn seal(&mut self, file: File) {
        let prev = self.seals.take();
        let path = segment_path(&self.dir, self.index);
        let (meta, sink, failure) = (
            self.meta.clone(),
            self.sink.clone(),
            self.seal_failure.clone(),
        );
        let (index, bytes) = (self.index, self.written);
        self.sealed += 1;
        self.seals = Some(smol::unblock(move || {
            let synced = file.sync_all();
            drop(file);
            // Seals reach the sink in index order.
            if let Some(prev) = prev {
                smol::block_on(prev);
            }
            let result = match synced {
                Ok(()) => sink
                    .segment_sealed(&meta, index, &path, bytes)
                    .map_err(|e| e.to_string()),
                Err(e) => Err(format!("fsync {}: {e}", path.display())),
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
