//! Clip bytes for playback and downloads: from the local file while it exists, else from the
//! object store through the appliance; and the HTTP `Range` header parser.
//!
//! The object store is reached through [`RemoteObjects`], a trait of this module that the
//! upload stage's `ObjectStore` is adapted to when the daemon wires things up.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::backend::ClipRow;

/// Why clip bytes could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ClipError {
    /// Neither a local file nor an uploaded object exists.
    #[error("clip is not available (no local file, not uploaded)")]
    Unavailable,
    /// Reading failed.
    #[error("reading clip: {0}")]
    Io(#[from] io::Error),
    /// The object store failed.
    #[error("object store: {message}")]
    Remote {
        /// What the store said.
        message: String,
        /// Whether a retry may work.
        transient: bool,
    },
}

impl crate::error::Classify for ClipError {
    fn is_transient(&self) -> bool {
        match self {
            ClipError::Unavailable => false,
            ClipError::Io(e) => e.is_transient(),
            ClipError::Remote { transient, .. } => *transient,
        }
    }
}

/// The object store, as playback needs it.
pub trait RemoteObjects: Send + Sync {
    /// Size of the object, `None` when it does not exist.
    ///
    /// # Errors
    /// Store failure.
    fn size(&self, key: &str) -> Result<Option<u64>, ClipError>;
    /// Bytes `start..start+len` of the object.
    ///
    /// # Errors
    /// Store failure.
    fn read(&self, key: &str, start: u64, len: u64) -> Result<Box<dyn Read + Send>, ClipError>;
    /// A presigned GET URL, when the store has such a thing.
    fn presign(&self, key: &str, expiry_s: u32) -> Option<String>;
}

/// Where a clip's bytes come from.
pub trait ClipSource: Send + Sync {
    /// The clip's size in bytes.
    ///
    /// # Errors
    /// Unavailable clip or store failure.
    fn size(&self, clip: &ClipRow) -> Result<u64, ClipError>;
    /// Bytes `start..start+len`.
    ///
    /// # Errors
    /// Unavailable clip or store failure.
    fn read(&self, clip: &ClipRow, start: u64, len: u64)
    -> Result<Box<dyn Read + Send>, ClipError>;
    /// The thumbnail JPEG, if any.
    ///
    /// # Errors
    /// Store failure.
    fn thumbnail(&self, clip: &ClipRow) -> Result<Option<Vec<u8>>, ClipError>;
    /// A presigned URL for the clip when it only lives in the store (redirect option).
    fn presign(&self, clip: &ClipRow, expiry_s: u32) -> Option<String>;
}

/// Hashes a whole clip as it streams out and, once its `len` bytes went through, reports
/// whether they have the expected SHA-256. A stream that ends early (client gone, too slow)
/// reports nothing: only a whole clip says something about the object.
pub struct HashCheck {
    inner: Box<dyn Read + Send>,
    hasher: Sha256,
    left_bytes: u64,
    sha256_hex: String,
    report: Option<Box<dyn FnOnce(bool) + Send>>,
}

impl HashCheck {
    /// Wraps the reader of all `len` bytes of a clip whose hash should be `sha256_hex`.
    pub fn new(
        inner: Box<dyn Read + Send>,
        len: u64,
        sha256_hex: String,
        report: Box<dyn FnOnce(bool) + Send>,
    ) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            left_bytes: len,
            sha256_hex,
            report: Some(report),
        }
    }
}

impl Read for HashCheck {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.left_bytes = self.left_bytes.saturating_sub(n as u64);
        if self.left_bytes == 0
            && let Some(report) = self.report.take()
        {
            let got = hex::encode(self.hasher.finalize_reset());
            report(got.eq_ignore_ascii_case(&self.sha256_hex));
        }
        Ok(n)
    }
}

/// Local file first, object store second.
#[derive(Clone, Default)]
pub struct LocalThenRemote {
    remote: Option<Arc<dyn RemoteObjects>>,
}

impl LocalThenRemote {
    /// A source reading local files, and `remote` for clips whose file is gone.
    pub fn new(remote: Option<Arc<dyn RemoteObjects>>) -> Self {
        Self { remote }
    }

    fn local(clip: &ClipRow) -> Option<File> {
        clip.local_path.as_ref().and_then(|p| File::open(p).ok())
    }

    fn remote_key<'a>(&'a self, clip: &'a ClipRow) -> Option<(&'a dyn RemoteObjects, &'a str)> {
        Some((self.remote.as_deref()?, clip.object_key.as_deref()?))
    }
}

impl ClipSource for LocalThenRemote {
    fn size(&self, clip: &ClipRow) -> Result<u64, ClipError> {
        if let Some(f) = Self::local(clip) {
            return Ok(f.metadata()?.len());
        }
        let (store, key) = self.remote_key(clip).ok_or(ClipError::Unavailable)?;
        store.size(key)?.ok_or(ClipError::Unavailable)
    }

    fn read(
        &self,
        clip: &ClipRow,
        start: u64,
        len: u64,
    ) -> Result<Box<dyn Read + Send>, ClipError> {
        if let Some(mut f) = Self::local(clip) {
            f.seek(SeekFrom::Start(start))?;
            return Ok(Box::new(f.take(len)));
        }
        let (store, key) = self.remote_key(clip).ok_or(ClipError::Unavailable)?;
        store.read(key, start, len)
    }

    fn thumbnail(&self, clip: &ClipRow) -> Result<Option<Vec<u8>>, ClipError> {
        use crate::limits::HTTP_THUMB_BYTES_MAX;
        if let Some(f) = clip.thumb_path.as_ref().and_then(|p| File::open(p).ok()) {
            let mut buf = Vec::new();
            f.take(HTTP_THUMB_BYTES_MAX).read_to_end(&mut buf)?;
            return Ok(Some(buf));
        }
        let (Some(store), Some(key)) = (self.remote.as_deref(), clip.thumb_key.as_deref()) else {
            return Ok(None);
        };
        let Some(size) = store.size(key)? else {
            return Ok(None);
        };
        let mut buf = Vec::new();
        store
            .read(key, 0, size.min(HTTP_THUMB_BYTES_MAX))?
            .read_to_end(&mut buf)?;
        Ok(Some(buf))
    }

    fn presign(&self, clip: &ClipRow, expiry_s: u32) -> Option<String> {
        if Self::local(clip).is_some() {
            return None;
        }
        let (store, key) = self.remote_key(clip)?;
        store.presign(key, expiry_s)
    }
}

/// What a `Range` header asks for, against a body of `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeAnswer {
    /// No range (or several ranges, which we answer whole): 200 with everything.
    Full,
    /// One satisfiable range: 206 with bytes `start..=end`.
    Partial {
        /// First byte.
        start: u64,
        /// Last byte, inclusive.
        end: u64,
    },
    /// Malformed or unsatisfiable: 416 with `Content-Range: bytes */len`.
    Unsatisfiable,
}

/// Parses a `Range` header value (`bytes=0-99`, `bytes=100-`, `bytes=-500`) against `len`.
pub fn parse_range(header: Option<&str>, len: u64) -> RangeAnswer {
    let Some(h) = header else {
        return RangeAnswer::Full;
    };
    let Some(spec) = h.trim().strip_prefix("bytes=") else {
        return RangeAnswer::Unsatisfiable;
    };
    if spec.contains(',') {
        // Multipart ranges are allowed to be answered with the whole body (RFC 9110 14.2).
        return RangeAnswer::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeAnswer::Unsatisfiable;
    };
    let num = |s: &str| -> Option<u64> {
        if s.is_empty() || s.len() > 19 || !s.bytes().all(|c| c.is_ascii_digit()) {
            None
        } else {
            s.parse().ok()
        }
    };
    let (start, end) = match (a.trim(), b.trim()) {
        ("", suffix) => match num(suffix) {
            Some(0) | None => return RangeAnswer::Unsatisfiable,
            Some(n) => (len.saturating_sub(n), len.saturating_sub(1)),
        },
        (first, "") => match num(first) {
            Some(s) => (s, len.saturating_sub(1)),
            None => return RangeAnswer::Unsatisfiable,
        },
        (first, last) => match (num(first), num(last)) {
            (Some(s), Some(e)) if s <= e => (s, e.min(len.saturating_sub(1))),
            _ => return RangeAnswer::Unsatisfiable,
        },
    };
    if len == 0 || start >= len {
        return RangeAnswer::Unsatisfiable;
    }
    RangeAnswer::Partial { start, end }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash_check(
        bytes: &'static [u8],
        sha: String,
    ) -> (HashCheck, std::sync::mpsc::Receiver<bool>) {
        let (tx, rx) = std::sync::mpsc::channel();
        let r = HashCheck::new(
            Box::new(bytes),
            bytes.len() as u64,
            sha,
            Box::new(move |ok| tx.send(ok).unwrap()),
        );
        (r, rx)
    }

    #[test]
    fn hash_check_reports_whole_clips_only() {
        let good = hex::encode(Sha256::digest(b"clip bytes"));
        let (mut r, rx) = hash_check(b"clip bytes", good.clone());
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"clip bytes");
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), [true]);
        let (mut r, rx) = hash_check(b"clip bytez", good.clone());
        r.read_to_end(&mut out).unwrap();
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), [false]);
        // Part of the clip read: no verdict.
        let (mut r, rx) = hash_check(b"clip bytez", good);
        let mut part = [0u8; 4];
        r.read_exact(&mut part).unwrap();
        drop(r);
        assert!(rx.try_iter().next().is_none());
    }

    #[test]
    fn ranges_follow_rfc_9110() {
        use RangeAnswer::*;
        assert_eq!(parse_range(None, 10), Full);
        assert_eq!(
            parse_range(Some("bytes=0-4"), 10),
            Partial { start: 0, end: 4 }
        );
        assert_eq!(
            parse_range(Some("bytes=5-"), 10),
            Partial { start: 5, end: 9 }
        );
        assert_eq!(
            parse_range(Some("bytes=-3"), 10),
            Partial { start: 7, end: 9 }
        );
        assert_eq!(
            parse_range(Some("bytes=-30"), 10),
            Partial { start: 0, end: 9 }
        );
        assert_eq!(
            parse_range(Some("bytes=8-100"), 10),
            Partial { start: 8, end: 9 }
        );
        assert_eq!(parse_range(Some("bytes=10-"), 10), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=5-2"), 10), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-0"), 10), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=a-b"), 10), Unsatisfiable);
        assert_eq!(parse_range(Some("items=0-1"), 10), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=+1-2"), 10), Unsatisfiable);
        assert_eq!(
            parse_range(Some("bytes=99999999999999999999999-"), 10),
            Unsatisfiable
        );
        assert_eq!(parse_range(Some("bytes=0-1,3-4"), 10), Full);
        assert_eq!(parse_range(Some("bytes=0-"), 0), Unsatisfiable);
    }
}
