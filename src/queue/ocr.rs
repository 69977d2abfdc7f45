//! Screen text (OCR) work of encoded clips: which clips wait for their OCR read, which OCR
//! events objects wait for their upload, and which are up (listed in the session's manifest).
//!
//! A clip is marked [`OcrState::Pending`] in the transaction that files it
//! ([`Queue::finish_encoding`], only while [`Queue::set_ocr_wanted`] is on), one mark per
//! segment (its first clip: the OCR job reads the whole segment). Nothing is marked "in
//! progress": the one OCR thread takes the oldest `Pending` mark and records the outcome, so a
//! crash mid-read leaves the mark `Pending` and the clip is read again, never twice filed.
//! `Read` objects are uploaded by the upload worker once their clip is up; the change to
//! `Uploaded` owes the session's manifests in the same transaction. Raw segments are kept
//! while a mark of theirs (or of the next segment, which starts from their end state) is
//! `Pending` (see `retention.rs`); [`Queue::drop_ocr_work`] gives that work up when the disk
//! runs low. Does not own the OCR itself (`crate::ocr`) nor the upload (`crate::upload`).

use std::path::PathBuf;

use heed::{RoTxn, RwTxn};
use serde::{Deserialize, Serialize};

use super::records::*;
use super::store::owe_manifest;
use super::{Dbs, Entity, Failpoint, Queue, QueueError, check_len, check_path};
use crate::limits;

/// Attempts of an OCR read that failed transiently (Tesseract failing or timing out) before
/// the clip's OCR is given up for good.
pub const OCR_ATTEMPTS_MAX: u32 = 5;
/// Longest failure reason kept, bytes (longer ones are cut).
const OCR_REASON_BYTES_MAX: usize = 512;

/// Where a clip's OCR stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OcrState {
    /// Waiting for the OCR job.
    Pending,
    /// Read: the events object is on local disk, waiting for its upload.
    Read {
        /// The local `<clip>.ocr.events.json`.
        path: PathBuf,
        /// Its SHA-256, lowercase hex.
        sha256: String,
        /// Its size.
        bytes: u64,
    },
    /// In the bucket at `key` (listed in the session's manifest).
    Uploaded {
        /// Object key.
        key: String,
        /// Its SHA-256, lowercase hex.
        sha256: String,
        /// Its size.
        bytes: u64,
    },
    /// Given up: the recording is unreadable, Tesseract failed [`OCR_ATTEMPTS_MAX`] times, or
    /// the disk ran low.
    Failed {
        /// Why, in words.
        reason: String,
    },
}

impl OcrState {
    /// Its key in `ocr-by-state`, below `store::OCR_STATE_TAGS`.
    fn tag(&self) -> u8 {
        match self {
            OcrState::Pending => 0,
            OcrState::Read { .. } => 1,
            OcrState::Uploaded { .. } => 2,
            OcrState::Failed { .. } => 3,
        }
    }

    /// Lower-case name.
    pub fn name(&self) -> &'static str {
        match self {
            OcrState::Pending => "pending",
            OcrState::Read { .. } => "read",
            OcrState::Uploaded { .. } => "uploaded",
            OcrState::Failed { .. } => "failed",
        }
    }
}

/// The OCR work of one clip.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OcrWork {
    /// The clip (key of the record).
    pub clip: u64,
    /// Its session.
    pub session: u64,
    /// Its segment (the raw recording the job reads).
    pub segment: u64,
    /// Where it stands.
    pub state: OcrState,
    /// Failed attempts of the current step (read, then upload).
    pub attempts: u32,
    /// Not before this time (ms) is the current step tried again.
    pub due_ms: u64,
    /// The last transient failure, if any.
    pub last_error: Option<String>,
    /// Wall-clock time of the last change.
    pub updated_ms: u64,
}

/// Stored form of [`OcrWork`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum OcrRecord {
    /// Version 1.
    V1(OcrWork),
}

impl super::Versioned for OcrRecord {
    const VERSIONS: u64 = 1;
}

/// One clip for the OCR job, with the files it reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OcrTask {
    /// The work record.
    pub work: OcrWork,
    /// The raw segment.
    pub segment_path: PathBuf,
    /// The previous segment's raw file (its end state sits beside it), `None` for the first.
    pub previous_segment_path: Option<PathBuf>,
    /// The clip's local MP4 path (the OCR object goes beside it).
    pub clip_path: PathBuf,
}

/// One OCR object for the upload worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OcrUpload {
    /// The work record (state `Read`).
    pub work: OcrWork,
    /// The clip's object key.
    pub clip_key: String,
}

/// OCR marks per state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OcrCounts {
    /// Waiting for the OCR job (the backlog).
    pub pending: u64,
    /// Read, waiting for the upload.
    pub read: u64,
    /// Up.
    pub uploaded: u64,
    /// Given up.
    pub failed: u64,
}

fn cut(reason: &str) -> String {
    let mut end = reason.len().min(OCR_REASON_BYTES_MAX);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_string()
}

pub(super) fn load_ocr(r: &RoTxn, d: &Dbs, clip: u64) -> Result<Option<OcrWork>, QueueError> {
    Ok(d.ocr.get(r, &clip)?.map(|OcrRecord::V1(w)| w))
}

fn load_ocr_rw(w: &RwTxn, d: &Dbs, clip: u64) -> Result<OcrWork, QueueError> {
    match d.ocr.get(w, &clip)? {
        Some(OcrRecord::V1(o)) => Ok(o),
        None => Err(QueueError::NotFound {
            entity: Entity::Clip,
            key: format!("ocr of clip {clip}"),
        }),
    }
}

/// Writes an OCR record and keeps its state index in step with it.
pub(super) fn put_ocr(
    w: &mut RwTxn,
    d: &Dbs,
    old: Option<&OcrWork>,
    new: &OcrWork,
) -> Result<(), QueueError> {
    if let Some(old) = old {
        d.ocr_by_state.delete(w, &(old.state.tag(), old.clip))?;
    }
    d.ocr_by_state.put(w, &(new.state.tag(), new.clip), &())?;
    d.ocr.put(w, &new.clip, &OcrRecord::V1(new.clone()))
}

/// Marks a freshly filed clip for OCR (called in the transaction that files it).
pub(super) fn mark_ocr(w: &mut RwTxn, d: &Dbs, clip: &Clip, now_ms: u64) -> Result<(), QueueError> {
    if clip.index != 0 || d.ocr.get(w, &clip.id)?.is_some() {
        return Ok(());
    }
    let new = OcrWork {
        clip: clip.id,
        session: clip.session,
        segment: clip.segment,
        state: OcrState::Pending,
        attempts: 0,
        due_ms: 0,
        last_error: None,
        updated_ms: now_ms,
    };
    put_ocr(w, d, None, &new)
}

/// Whether the segment's raw file is still needed by OCR: a mark of its own, or of the next
/// segment (which starts from this one's end state), is `Pending`.
pub(super) fn segment_needed_by_ocr(
    r: &RoTxn,
    d: &Dbs,
    segment: &Segment,
) -> Result<bool, QueueError> {
    let mut segments = vec![segment.id];
    if let Some(i) = segment.index.checked_add(1)
        && let Some(next) = d
            .segment_by_position
            .get(r, &(segment.session, u64::from(i)))?
    {
        segments.push(next);
    }
    for seg in segments {
        for entry in d.clip_by_position.range(r, &((seg, 0)..=(seg, u64::MAX)))? {
            let (_, clip) = entry?;
            if let Ok(Some(o)) = load_ocr(r, d, clip)
                && o.state == OcrState::Pending
            {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

impl Queue {
    /// Switches marking newly encoded clips for OCR (setting `search.ocr`).
    pub fn set_ocr_wanted(&self, on: bool) {
        self.ocr_wanted
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    pub(super) fn ocr_wanted(&self) -> bool {
        self.ocr_wanted.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The oldest clip waiting for its OCR read whose retry time has come (`now_ms`), with
    /// the files the job reads. One read transaction; nothing is marked taken (one OCR thread).
    ///
    /// # Errors
    /// LMDB errors.
    pub fn next_ocr_task(&self, now_ms: u64) -> Result<Option<OcrTask>, QueueError> {
        self.read(|r, d| {
            let tag = OcrState::Pending.tag();
            for entry in d.ocr_by_state.range(r, &((tag, 0)..=(tag, u64::MAX)))? {
                let ((_, clip_id), ()) = entry?;
                let Some(work) = load_ocr(r, d, clip_id)? else {
                    continue;
                };
                if work.due_ms > now_ms {
                    continue;
                }
                let (Some(clip), Some(SegmentRecord::V1(seg))) = (
                    d.clips.get(r, &clip_id)?.map(ClipRecord::into_clip),
                    d.segments.get(r, &work.segment)?,
                ) else {
                    continue;
                };
                let previous_segment_path = match seg.index.checked_sub(1) {
                    Some(i) => match d.segment_by_position.get(r, &(seg.session, u64::from(i)))? {
                        Some(p) => match d.segments.get(r, &p)? {
                            Some(SegmentRecord::V1(p)) => Some(p.path),
                            None => None,
                        },
                        None => None,
                    },
                    None => None,
                };
                return Ok(Some(OcrTask {
                    work,
                    segment_path: seg.path,
                    previous_segment_path,
                    clip_path: clip.path,
                }));
            }
            Ok(None)
        })
    }

    /// Loads the clip's OCR work, checks it is in state `expected`, writes what `f` makes of it
    /// (given the time now) and fires [`Failpoint::AfterOcrWrite`]; returns `f`'s answer.
    fn change_ocr<T>(
        &self,
        clip: u64,
        expected: &'static str,
        f: impl Fn(&OcrWork, u64) -> (OcrWork, T),
    ) -> Result<T, QueueError> {
        let now_ms = self.now_ms();
        self.write(|w, d| {
            let old = load_ocr_rw(w, d, clip)?;
            expect_state(&old, expected)?;
            let (new, answer) = f(&old, now_ms);
            put_ocr(w, d, Some(&old), &new)?;
            self.hit(Failpoint::AfterOcrWrite)?;
            Ok(answer)
        })
    }

    /// The clip's OCR events object was written: `Pending` -> `Read`, due for upload now.
    ///
    /// # Errors
    /// [`QueueError::StaleState`] unless the clip's OCR is `Pending`; LMDB errors.
    pub fn ocr_read(
        &self,
        clip: u64,
        path: PathBuf,
        sha256: String,
        bytes: u64,
    ) -> Result<(), QueueError> {
        check_path("ocr events path", &path)?;
        check_len("ocr sha256", &sha256, limits::QUEUE_NAME_BYTES_MAX)?;
        self.change_ocr(clip, "pending", |old, now_ms| {
            let state = OcrState::Read {
                path: path.clone(),
                sha256: sha256.clone(),
                bytes,
            };
            (settled(old, state, now_ms), ())
        })
    }

    /// A read failed transiently (Tesseract failing, timing out): the clip is tried again at
    /// `retry_at_ms`, or given up (`Failed`) after [`OCR_ATTEMPTS_MAX`] attempts. Returns
    /// whether it was given up.
    ///
    /// # Errors
    /// [`QueueError::StaleState`] unless the clip's OCR is `Pending`; LMDB errors.
    pub fn ocr_attempt_failed(
        &self,
        clip: u64,
        reason: &str,
        retry_at_ms: u64,
    ) -> Result<bool, QueueError> {
        self.change_ocr(clip, "pending", |old, now_ms| {
            let attempts = old.attempts.saturating_add(1);
            let given_up = attempts >= OCR_ATTEMPTS_MAX;
            let state = if given_up {
                OcrState::Failed {
                    reason: cut(&format!("{attempts} attempts failed, the last: {reason}")),
                }
            } else {
                OcrState::Pending
            };
            let new = OcrWork {
                state,
                ..retried(old, reason, retry_at_ms, now_ms)
            };
            (new, given_up)
        })
    }

    /// The clip's OCR is given up for good (its recording cannot be read): `Pending` ->
    /// `Failed` with `reason`.
    ///
    /// # Errors
    /// [`QueueError::StaleState`] unless the clip's OCR is `Pending`; LMDB errors.
    pub fn ocr_failed(&self, clip: u64, reason: &str) -> Result<(), QueueError> {
        self.change_ocr(clip, "pending", |old, now_ms| {
            let state = OcrState::Failed {
                reason: cut(reason),
            };
            (settled(old, state, now_ms), ())
        })
    }

    /// Gives up every `Pending` OCR read (the disk is below its floor: the raw segments they
    /// need must be free to go), each `Failed` with `reason`; returns how many.
    ///
    /// # Errors
    /// LMDB errors.
    pub fn drop_ocr_work(&self, reason: &str) -> Result<u64, QueueError> {
        let now_ms = self.now_ms();
        self.write(|w, d| {
            let tag = OcrState::Pending.tag();
            let mut ids = Vec::new();
            for entry in d.ocr_by_state.range(w, &((tag, 0)..=(tag, u64::MAX)))? {
                ids.push(entry?.0.1);
            }
            for &clip in &ids {
                let old = load_ocr_rw(w, d, clip)?;
                let new = OcrWork {
                    state: OcrState::Failed {
                        reason: cut(reason),
                    },
                    updated_ms: now_ms,
                    ..old.clone()
                };
                put_ocr(w, d, Some(&old), &new)?;
            }
            Ok(ids.len() as u64)
        })
    }

    /// The oldest OCR object waiting for its upload whose clip is up (it goes at a key derived
    /// from the clip's) and whose retry time has come.
    ///
    /// # Errors
    /// LMDB errors.
    pub fn next_ocr_upload(&self, now_ms: u64) -> Result<Option<OcrUpload>, QueueError> {
        self.read(|r, d| {
            let tag = OcrState::Read {
                path: PathBuf::new(),
                sha256: String::new(),
                bytes: 0,
            }
            .tag();
            for entry in d.ocr_by_state.range(r, &((tag, 0)..=(tag, u64::MAX)))? {
                let ((_, clip_id), ()) = entry?;
                let Some(work) = load_ocr(r, d, clip_id)? else {
                    continue;
                };
                let Some(clip) = d.clips.get(r, &clip_id)?.map(ClipRecord::into_clip) else {
                    continue;
                };
                let up = matches!(
                    clip.state.kind(),
                    ClipStateKind::Uploaded | ClipStateKind::LocalDeleted
                );
                if let (true, Some(clip_key)) = (up && work.due_ms <= now_ms, clip.object_key) {
                    return Ok(Some(OcrUpload { work, clip_key }));
                }
            }
            Ok(None)
        })
    }

    /// The OCR object is in the bucket at `key`: `Read` -> `Uploaded`, and the session's
    /// manifests are owed again (in the same transaction) so they list it.
    ///
    /// # Errors
    /// [`QueueError::StaleState`] unless the clip's OCR is `Read`; LMDB errors.
    pub fn ocr_uploaded(&self, clip: u64, key: &str) -> Result<(), QueueError> {
        check_len("ocr object key", key, limits::QUEUE_PATH_BYTES_MAX)?;
        let now_ms = self.now_ms();
        self.write(|w, d| {
            let old = load_ocr_rw(w, d, clip)?;
            let OcrState::Read { sha256, bytes, .. } = &old.state else {
                return Err(wrong(&old, "read"));
            };
            let new = OcrWork {
                state: OcrState::Uploaded {
                    key: key.to_string(),
                    sha256: sha256.clone(),
                    bytes: *bytes,
                },
                attempts: 0,
                due_ms: 0,
                last_error: None,
                updated_ms: now_ms,
                ..old.clone()
            };
            put_ocr(w, d, Some(&old), &new)?;
            owe_manifest(w, d, old.session)?;
            self.hit(Failpoint::AfterOcrWrite)
        })
    }

    /// An OCR object's upload failed: tried again at `retry_at_ms`.
    ///
    /// # Errors
    /// [`QueueError::StaleState`] unless the clip's OCR is `Read`; LMDB errors.
    pub fn ocr_upload_failed(
        &self,
        clip: u64,
        reason: &str,
        retry_at_ms: u64,
    ) -> Result<u32, QueueError> {
        self.change_ocr(clip, "read", |old, now_ms| {
            let new = retried(old, reason, retry_at_ms, now_ms);
            let attempts = new.attempts;
            (new, attempts)
        })
    }

    /// The OCR work of a clip, if it has any.
    ///
    /// # Errors
    /// LMDB errors, an unreadable record.
    pub fn ocr_of_clip(&self, clip: u64) -> Result<Option<OcrWork>, QueueError> {
        self.read(|r, d| load_ocr(r, d, clip))
    }

    /// OCR marks per state.
    ///
    /// # Errors
    /// LMDB errors.
    pub fn ocr_counts(&self) -> Result<OcrCounts, QueueError> {
        self.read(|r, d| {
            let mut c = OcrCounts::default();
            for entry in d.ocr_by_state.iter(r)? {
                let ((tag, _), ()) = entry?;
                match tag {
                    0 => c.pending += 1,
                    1 => c.read += 1,
                    2 => c.uploaded += 1,
                    _ => c.failed += 1,
                }
            }
            Ok(c)
        })
    }
}

/// `old` moved on to `state`: its attempts and retry time start afresh.
fn settled(old: &OcrWork, state: OcrState, now_ms: u64) -> OcrWork {
    OcrWork {
        state,
        attempts: 0,
        due_ms: 0,
        last_error: None,
        updated_ms: now_ms,
        ..old.clone()
    }
}

/// `old` after a failed attempt: counted, tried again at `retry_at_ms`.
fn retried(old: &OcrWork, reason: &str, retry_at_ms: u64, now_ms: u64) -> OcrWork {
    OcrWork {
        attempts: old.attempts.saturating_add(1),
        due_ms: retry_at_ms,
        last_error: Some(cut(reason)),
        updated_ms: now_ms,
        ..old.clone()
    }
}

fn wrong(o: &OcrWork, expected: &'static str) -> QueueError {
    QueueError::StaleState {
        entity: Entity::Clip,
        id: o.clip,
        expected,
        actual: o.state.name(),
    }
}

fn expect_state(o: &OcrWork, expected: &'static str) -> Result<(), QueueError> {
    if o.state.name() == expected {
        Ok(())
    } else {
        Err(wrong(o, expected))
    }
}
