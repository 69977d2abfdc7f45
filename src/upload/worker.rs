//! The upload worker: takes clips from the queue and gets them into the object store.
//!
//! One [`UploadWorker`] is shared (`Arc`) by N upload threads, each in [`UploadWorker::run`]
//! (N <= [`UPLOADS_CONCURRENT_MAX`]); each [`UploadWorker::tick`] handles at most one clip:
//!
//! 1. take the next due clip (`Ready`, or a transient failure whose time has come) from the
//!    queue, which moves it to `Uploading` atomically, so threads never share a clip;
//! 2. render its key (kept in the record once known), upload the MP4, the thumbnail and the
//!    events object;
//! 3. HEAD the object: size and SHA-256 metadata must match the queue record;
//! 4. only then mark it `Uploaded` (the queue marks the session's manifests owed in the same
//!    transaction: the manifest worker writes them), delete the local files, mark it
//!    `LocalDeleted`.
//!
//! With no clip due, a tick uploads the next OCR events object (screen text, read after the
//! clip's upload) at its key beside the clip's; marking it uploaded owes the session's
//! manifests again in the same transaction.
//!
//! Failures are classified: transient ones (network, 5xx, and a local bucket's missing
//! directory, permission, read-only or full file system, which a mount or permission fix
//! cures) go to `Failed { transient: true }` with an exponential backoff ([`super::retry`])
//! until the retention period ends; permanent ones (bad key, missing bucket, untrusted
//! certificate) go to `Failed { transient: false }` and the status shows the config problem.
//! The store, key template and retention period can be replaced while running (a settings
//! reload): a clip keeps the key it was first given.
//! Housekeeping (at most every [`UPLOAD_HOUSEKEEPING_INTERVAL_MS`], one thread at a time)
//! revives parked clips every [`UPLOAD_RETRY_PERMANENT_MS`] once a probe of the store
//! succeeds (so fixing the settings heals the queue), expires clips older than the retention
//! period (the queue writes the audit entry; local files are deleted) and removes local copies
//! an earlier crash left behind.
//!
//! Does not: encode, write manifests (the `manifest` stage does), decide retention policy
//! values (config does), or talk to tokio.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::Digest;

use super::location::{ClipVars, KeyTemplate, events_key, ocr_events_key, thumbnail_key};
use super::retry::{FailureClass, os_random, retry_delay_ms};
use super::store::{
    CONTENT_TYPE_JPEG, CONTENT_TYPE_JSON, CONTENT_TYPE_MP4, ObjectStore, PutOptions, StoreError,
    StoreErrorKind,
};
use crate::clock::Clock;
use crate::error::Classify;
use crate::lifecycle::{Heartbeat, Shutdown};
use crate::limits::{
    UPLOAD_HOUSEKEEPING_INTERVAL_MS, UPLOAD_IDLE_POLL_MS, UPLOAD_RETENTION_HOURS_MAX,
    UPLOAD_RETRY_PERMANENT_MS, UPLOAD_SWEEP_CLIPS_MAX, UPLOADS_CONCURRENT_MAX,
};
use crate::queue::{
    ACTOR_SYSTEM, AuditNote, Clip, ClipPatch, ClipState, ClipStateKind, OcrState, Queue,
    QueueError, Session,
};
use crate::status::StatusBoard;

/// Settings of the worker.
#[derive(Debug, Clone)]
pub struct UploadWorkerConfig {
    /// Upload threads (1..=[`UPLOADS_CONCURRENT_MAX`]).
    pub concurrency: usize,
    /// Hours a clip may wait for its upload before it is expired.
    pub retention_hours: u64,
    /// `{hostname}` in key templates.
    pub hostname: String,
    /// `{appliance_id}` in key templates (setting `appliance-id`).
    pub appliance_id: String,
}

/// What one tick did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TickOutcome {
    /// Nothing was due.
    Idle,
    /// A clip was uploaded (its id).
    Uploaded(u64),
    /// An upload failed and was rescheduled or parked; retry not before this time (ms).
    Backoff(u64),
}

/// Errors that stop a tick (the queue failing); store errors are handled inside the tick.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The queue could not be read or written.
    #[error("upload worker queue error: {0}")]
    Queue(#[from] QueueError),
}

impl Classify for UploadError {
    fn is_transient(&self) -> bool {
        match self {
            Self::Queue(e) => e.is_transient(),
        }
    }
}

/// The last store problem, for the status page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadProblem {
    /// Kind (its `words()` are what the page shows).
    pub kind: StoreErrorKind,
    /// Whether it is a settings problem (key, secret, bucket, CA).
    pub config_problem: bool,
    /// Full message.
    pub detail: String,
    /// When it happened (ms).
    pub at_ms: u64,
}

/// Snapshot of the worker for the status page.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UploadStatus {
    /// Where objects go (no secrets).
    pub store: String,
    /// Clips uploaded since start.
    pub uploaded_clips: u64,
    /// Bytes of clips uploaded since start.
    pub uploaded_bytes: u64,
    /// The last failure, cleared by the next success.
    pub problem: Option<UploadProblem>,
}

#[derive(Default)]
struct Housekeeping {
    next_ms: u64,
    next_revive_ms: u64,
}

/// The upload worker, shared by the upload threads.
pub struct UploadWorker {
    queue: Arc<Queue>,
    store: Arc<dyn ObjectStore>,
    /// Replaced by a settings reload; a clip keeps the key it was first given.
    template: std::sync::RwLock<KeyTemplate>,
    /// Replaced by a settings reload (`retention-hours`).
    retention_hours: std::sync::atomic::AtomicU64,
    clock: Arc<dyn Clock>,
    cfg: UploadWorkerConfig,
    status: Mutex<UploadStatus>,
    housekeeping: Mutex<Housekeeping>,
    /// Held by the one thread uploading an OCR object (the queue hands them out unmarked).
    ocr_uploads: Mutex<()>,
}

/// Why one clip's upload failed: the store's error, or a local precondition.
type ClipResult<T> = Result<T, StoreError>;

impl UploadWorker {
    /// A worker over `queue` and `store`, making keys with `template`.
    pub fn new(
        queue: Arc<Queue>,
        store: Arc<dyn ObjectStore>,
        template: KeyTemplate,
        clock: Arc<dyn Clock>,
        cfg: UploadWorkerConfig,
    ) -> Self {
        assert!(
            cfg.concurrency >= 1,
            "upload concurrency must be at least 1"
        );
        assert!(
            cfg.concurrency <= UPLOADS_CONCURRENT_MAX,
            "upload concurrency above the limit"
        );
        assert!(
            cfg.retention_hours >= 1,
            "retention must be at least an hour"
        );
        assert!(
            cfg.retention_hours <= UPLOAD_RETENTION_HOURS_MAX,
            "retention above the limit"
        );
        let status = UploadStatus {
            store: store.describe(),
            ..UploadStatus::default()
        };
        Self {
            queue,
            store,
            template: std::sync::RwLock::new(template),
            retention_hours: std::sync::atomic::AtomicU64::new(cfg.retention_hours),
            clock,
            cfg,
            status: Mutex::new(status),
            housekeeping: Mutex::new(Housekeeping::default()),
            ocr_uploads: Mutex::new(()),
        }
    }

    /// A copy of the current status.
    pub fn status(&self) -> UploadStatus {
        let mut st = self
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        st.store = self.store.describe();
        st
    }

    /// Applies reloaded settings: the key template of clips not keyed yet, and the retention
    /// period (the store itself is swapped through [`super::SharedStore`]). Clips being
    /// uploaded finish as they started.
    pub fn apply_settings(&self, template: KeyTemplate, retention_hours: u64) {
        let hours = retention_hours.clamp(1, UPLOAD_RETENTION_HOURS_MAX);
        *self.template.write().unwrap_or_else(|p| p.into_inner()) = template;
        self.retention_hours.store(hours, Ordering::Relaxed);
    }

    /// Forgets the last store problem (the settings changed: the next attempt tells).
    pub fn clear_problem(&self) {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .problem = None;
    }

    fn retention_hours(&self) -> u64 {
        self.retention_hours.load(Ordering::Relaxed)
    }

    /// Runs ticks until `shutdown` (one upload thread), beating `heartbeat` on every tick and
    /// publishing the worker's status to `board` after each: a failed upload (retried on its
    /// schedule) is a recent error there.
    pub fn run(&self, shutdown: &Shutdown, heartbeat: &Heartbeat, board: &StatusBoard) {
        while !shutdown.is_requested() {
            heartbeat.beat();
            let tick = self.tick();
            self.publish(board);
            let pause_ms = match tick {
                Ok(TickOutcome::Uploaded(_)) => continue,
                Ok(TickOutcome::Idle) => UPLOAD_IDLE_POLL_MS,
                Ok(TickOutcome::Backoff(_)) => {
                    if let Some(p) = self.status().problem {
                        board.record_error_unless_repeated("upload", &p.detail);
                    }
                    UPLOAD_IDLE_POLL_MS
                }
                Err(e) => {
                    log::error!("event=upload_tick_failed error={e}");
                    board.record_error("upload", &e.to_string());
                    UPLOAD_IDLE_POLL_MS
                }
            };
            if shutdown.sleep(Duration::from_millis(pause_ms)) {
                break;
            }
        }
    }

    /// Publishes the worker's status to `board`: the store, what was uploaded and, once the
    /// store was contacted, whether it answered (before that, what start-up found stays shown).
    pub fn publish(&self, board: &StatusBoard) {
        let u = self.status();
        let contacted = u.uploaded_clips > 0 || u.problem.is_some();
        board.update(|s| {
            s.uploads.store = u.store.clone();
            s.uploads.uploaded_clips = u.uploaded_clips;
            s.uploads.uploaded_bytes = u.uploaded_bytes;
            if contacted {
                s.uploads.reachable = Some(u.problem.is_none());
                s.uploads.last_error = u.problem.as_ref().map(|p| p.detail.clone());
            }
        });
    }

    /// Housekeeping if due, then at most one clip.
    ///
    /// # Errors
    /// [`UploadError::Queue`] when the queue fails; store failures are recorded in the clip.
    pub fn tick(&self) -> Result<TickOutcome, UploadError> {
        self.housekeeping_if_due()?;
        let now_ms = self.clock.now_ms();
        let Some(clip) = self.queue.next_clip_to_upload(now_ms)? else {
            return self.upload_next_ocr(now_ms);
        };
        let session = self.queue.session(clip.session)?;
        match self.upload_clip(&clip, session.as_ref()) {
            Ok(key) => {
                self.finish_success(&clip, &key)?;
                Ok(TickOutcome::Uploaded(clip.id))
            }
            Err(e) => self.finish_failure(&clip, &e),
        }
    }

    /// With no clip due: the next OCR events object whose clip is up goes at its key beside
    /// the clip's; the queue then marks it uploaded and owes the session's manifests again
    /// (one transaction), and the local file goes. Failures retry like a clip's.
    fn upload_next_ocr(&self, now_ms: u64) -> Result<TickOutcome, UploadError> {
        let Ok(_one) = self.ocr_uploads.try_lock() else {
            return Ok(TickOutcome::Idle);
        };
        let Some(up) = self.queue.next_ocr_upload(now_ms)? else {
            return Ok(TickOutcome::Idle);
        };
        let OcrState::Read { path, sha256, .. } = &up.work.state else {
            return Ok(TickOutcome::Idle);
        };
        let key = ocr_events_key(&up.clip_key);
        let opts = PutOptions {
            content_type: CONTENT_TYPE_JSON.into(),
            sha256_hex: sha256.clone(),
        };
        match self.store.put_file(&key, path, &opts) {
            Ok(_) => {
                self.queue.ocr_uploaded(up.work.clip, &key)?;
                log::info!("upload done ocr clip={} key={key:?}", up.work.clip);
                if let Err(e) = std::fs::remove_file(path) {
                    log::warn!(
                        "upload cannot delete local file path={} error={e}",
                        path.display()
                    );
                }
                Ok(TickOutcome::Uploaded(up.work.clip))
            }
            Err(e) => {
                let class = FailureClass::of(&e);
                let attempt = up.work.attempts.saturating_add(1);
                let next_ms = now_ms + retry_delay_ms(attempt, class, os_random());
                log::warn!(
                    "upload failed ocr clip={} attempt={attempt} error={e}",
                    up.work.clip
                );
                self.queue
                    .ocr_upload_failed(up.work.clip, &e.to_string(), next_ms)?;
                self.record_problem(&e, now_ms);
                Ok(TickOutcome::Backoff(next_ms))
            }
        }
    }

    /// Steps 2-3: key, MP4, thumbnail, HEAD check. Returns the key.
    fn upload_clip(&self, clip: &Clip, session: Option<&Session>) -> ClipResult<String> {
        let key = match &clip.object_key {
            Some(k) => k.clone(),
            None => {
                let vars = self.clip_vars(clip, session)?;
                self.template
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .render(&vars)
            }
        };
        let opts = PutOptions {
            content_type: CONTENT_TYPE_MP4.into(),
            sha256_hex: clip.sha256.clone(),
        };
        self.store.put_file(&key, &clip.path, &opts)?;
        if let Some(thumb) = clip.thumb_path.as_deref().filter(|p| p.exists()) {
            let opts = PutOptions {
                content_type: CONTENT_TYPE_JPEG.into(),
                sha256_hex: file_sha256(thumb)?,
            };
            self.store.put_file(&thumbnail_key(&key), thumb, &opts)?;
        }
        if let Some(events) = clip.events.as_ref().filter(|e| e.path.exists()) {
            let opts = PutOptions {
                content_type: CONTENT_TYPE_JSON.into(),
                sha256_hex: events.sha256.clone(),
            };
            self.store
                .put_file(&events_key(&key), &events.path, &opts)?;
        }
        let head = self
            .store
            .head(&key)?
            .ok_or_else(|| StoreError::Inconsistent {
                key: key.clone(),
                detail: "object missing right after upload".into(),
            })?;
        if head.size_bytes != clip.bytes || head.sha256_hex.as_deref() != Some(&clip.sha256) {
            return Err(StoreError::Inconsistent {
                key,
                detail: format!(
                    "stored {} bytes sha256={:?}, expected {} bytes sha256={}",
                    head.size_bytes, head.sha256_hex, clip.bytes, clip.sha256
                ),
            });
        }
        Ok(key)
    }

    fn clip_vars(&self, clip: &Clip, session: Option<&Session>) -> ClipResult<ClipVars> {
        let session = session.ok_or_else(|| StoreError::InvalidKey {
            key: format!("clip {}", clip.id),
            reason: "the clip's session is missing from the queue",
        })?;
        let segment_index = match self.queue.segment(clip.segment) {
            Ok(Some(seg)) => seg.index,
            _ => {
                return Err(StoreError::InvalidKey {
                    key: format!("clip {}", clip.id),
                    reason: "the clip's segment is missing from the queue",
                });
            }
        };
        Ok(ClipVars {
            user_id: session.user_id.clone(),
            username: session.username.clone(),
            image_friendly_name: session.image_friendly_name.clone(),
            session_id: session.session_id.clone(),
            session_start_ms: session.start_ms,
            clip_start_ms: clip.start_ms,
            clip_end_ms: clip.end_ms,
            clip_index: segment_index,
            clip_part: clip.index,
            hostname: self.cfg.hostname.clone(),
            appliance_id: self.cfg.appliance_id.clone(),
        })
    }

    /// Step 4: Uploaded (with the key), delete local files, LocalDeleted.
    fn finish_success(&self, clip: &Clip, key: &str) -> Result<(), UploadError> {
        let patch = ClipPatch {
            object_key: Some(key.to_string()),
            audit: None,
        };
        let up = self.queue.transition_clip(
            clip.id,
            ClipStateKind::Uploading,
            ClipState::Uploaded,
            &patch,
        )?;
        log::info!(
            "upload done clip={} key={key:?} bytes={}",
            clip.id,
            clip.bytes
        );
        {
            let mut st = self.status.lock().unwrap_or_else(|p| p.into_inner());
            st.uploaded_clips += 1;
            st.uploaded_bytes += clip.bytes;
            st.problem = None;
        }
        self.delete_local(&up)
    }

    fn delete_local(&self, clip: &Clip) -> Result<(), UploadError> {
        for path in local_files(clip) {
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    // Stays Uploaded: housekeeping tries again.
                    log::warn!(
                        "upload cannot delete local file path={} error={e}",
                        path.display()
                    );
                    return Ok(());
                }
            }
        }
        self.queue.transition_clip(
            clip.id,
            ClipStateKind::Uploaded,
            ClipState::LocalDeleted,
            &ClipPatch::default(),
        )?;
        self.prune_clip_dir(clip);
        Ok(())
    }

    /// Removes the session's local clip directory once it is empty and no clip can come into
    /// it any more: the session has ended and none of its segments is still to be encoded (an
    /// encode creates the directory before it writes, so pruning under it would fail that
    /// encode). `remove_dir` leaves a directory that still holds clips of the session.
    fn prune_clip_dir(&self, clip: &Clip) {
        let Some(dir) = clip.path.parent() else {
            return;
        };
        let ended = matches!(self.queue.session(clip.session), Ok(Some(s)) if s.end_ms.is_some());
        let settled = ended
            && self
                .queue
                .segments_of_session(clip.session)
                .is_ok_and(|segs| segs.iter().all(|g| g.state.kind().settles_successor()));
        if settled && std::fs::remove_dir(dir).is_ok() {
            log::debug!("event=clip_dir_removed dir={}", dir.display());
        }
    }

    fn finish_failure(&self, clip: &Clip, e: &StoreError) -> Result<TickOutcome, UploadError> {
        let now_ms = self.clock.now_ms();
        let class = FailureClass::of(e);
        let attempt = clip.attempts.max(1);
        let next_ms = now_ms + retry_delay_ms(attempt, class, os_random());
        log::warn!(
            "upload failed clip={} attempt={attempt} kind={:?} transient={} error={e}",
            clip.id,
            e.kind(),
            class == FailureClass::Transient
        );
        let state = ClipState::Failed {
            reason: format!("{}: {e}", e.kind().words()),
            transient: class == FailureClass::Transient,
            next_attempt_ms: next_ms,
        };
        self.queue.transition_clip(
            clip.id,
            ClipStateKind::Uploading,
            state,
            &ClipPatch::default(),
        )?;
        self.record_problem(e, now_ms);
        Ok(TickOutcome::Backoff(next_ms))
    }

    /// Shows `e` on the status page until the next success.
    fn record_problem(&self, e: &StoreError, now_ms: u64) {
        let mut st = self.status.lock().unwrap_or_else(|p| p.into_inner());
        st.problem = Some(UploadProblem {
            kind: e.kind(),
            config_problem: e.is_config_problem(),
            detail: e.to_string(),
            at_ms: now_ms,
        });
    }

    /// Runs housekeeping when due; only one thread does it, the others skip.
    fn housekeeping_if_due(&self) -> Result<(), UploadError> {
        let now_ms = self.clock.now_ms();
        let revive = {
            let Ok(mut hk) = self.housekeeping.try_lock() else {
                return Ok(());
            };
            if now_ms < hk.next_ms {
                return Ok(());
            }
            hk.next_ms = now_ms + UPLOAD_HOUSEKEEPING_INTERVAL_MS;
            let revive = now_ms >= hk.next_revive_ms;
            if revive {
                hk.next_revive_ms = now_ms + UPLOAD_RETRY_PERMANENT_MS;
            }
            revive
        };
        self.expire_old_clips(now_ms)?;
        self.delete_leftover_local_copies()?;
        if revive {
            self.revive_parked_clips(now_ms)?;
        }
        Ok(())
    }

    /// Clips that waited longer than the retention period become `Expired` (audited by the
    /// queue in the same transaction) and their local files are deleted.
    pub fn expire_old_clips(&self, now_ms: u64) -> Result<usize, UploadError> {
        let retention_hours = self.retention_hours();
        let cutoff = now_ms.saturating_sub(retention_hours * 3_600_000);
        let old = self.queue.clips_older_than(
            &[ClipStateKind::Ready, ClipStateKind::Failed],
            cutoff,
            UPLOAD_SWEEP_CLIPS_MAX,
        )?;
        let mut expired = 0;
        for clip in old {
            let last = match &clip.state {
                ClipState::Failed { reason, .. } => format!("; last error: {reason}"),
                _ => String::new(),
            };
            let note = AuditNote {
                actor: ACTOR_SYSTEM.into(),
                message: format!(
                    "Clip {} ({}) of session {} expired after {} hours without reaching {} \
                     ({} attempts{last}); local files deleted",
                    clip.id,
                    clip.path.display(),
                    clip.session,
                    retention_hours,
                    self.store.describe(),
                    clip.attempts
                ),
            };
            let patch = ClipPatch {
                object_key: None,
                audit: Some(note),
            };
            match self
                .queue
                .transition_clip(clip.id, clip.state.kind(), ClipState::Expired, &patch)
            {
                Ok(_) => {}
                // Another thread took it for an upload meanwhile: it is not waiting any more.
                Err(QueueError::StaleState { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
            for path in local_files(&clip) {
                let _ = std::fs::remove_file(path);
            }
            log::warn!("upload expired clip={} session={}", clip.id, clip.session);
            expired += 1;
        }
        Ok(expired)
    }

    /// `Uploaded` clips whose local files a crash left behind.
    fn delete_leftover_local_copies(&self) -> Result<(), UploadError> {
        let left = self.queue.clips_older_than(
            &[ClipStateKind::Uploaded],
            u64::MAX,
            UPLOAD_SWEEP_CLIPS_MAX,
        )?;
        for clip in left {
            match self.delete_local(&clip) {
                Err(UploadError::Queue(QueueError::StaleState { .. })) => {}
                other => other?,
            }
        }
        Ok(())
    }

    /// Parked (permanent) failures go back to `Ready` once a probe shows the store works.
    pub fn revive_parked_clips(&self, now_ms: u64) -> Result<usize, UploadError> {
        let failed = self.queue.clips_older_than(
            &[ClipStateKind::Failed],
            u64::MAX,
            UPLOAD_SWEEP_CLIPS_MAX,
        )?;
        let parked: Vec<Clip> = failed
            .into_iter()
            .filter(|c| {
                matches!(
                    c.state,
                    ClipState::Failed {
                        transient: false,
                        ..
                    }
                )
            })
            .collect();
        if parked.is_empty() {
            return Ok(0);
        }
        if let Err(e) = self.store.probe() {
            log::warn!(
                "upload store still failing parked={} kind={:?} error={e}",
                parked.len(),
                e.kind()
            );
            self.record_problem(&e, now_ms);
            return Ok(0);
        }
        let mut revived = 0;
        for clip in parked {
            match self.queue.transition_clip(
                clip.id,
                ClipStateKind::Failed,
                ClipState::Ready,
                &ClipPatch::default(),
            ) {
                Ok(_) => revived += 1,
                Err(QueueError::StaleState { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        log::info!("upload store works again revived={revived}");
        Ok(revived)
    }
}

/// The local files of a clip: MP4, thumbnail, events object.
fn local_files(clip: &Clip) -> impl Iterator<Item = &Path> {
    std::iter::once(clip.path.as_path())
        .chain(clip.thumb_path.as_deref())
        .chain(clip.events.as_ref().map(|e| e.path.as_path()))
}

fn file_sha256(path: &Path) -> ClipResult<String> {
    let mut f = std::fs::File::open(path).map_err(|source| StoreError::SourceIo {
        path: path.to_path_buf(),
        source,
    })?;
    let mut h = sha2::Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(|source| StoreError::SourceIo {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(hex::encode(h.finalize()))
}
