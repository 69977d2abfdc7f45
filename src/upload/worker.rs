//! The upload worker: takes clips from the queue and gets them into the object store.
//!
//! One [`UploadWorker`] is shared (`Arc`) by N upload threads ([`UploadWorker::spawn_threads`],
//! N <= [`UPLOADS_CONCURRENT_MAX`]); each [`UploadWorker::tick`] handles at most one clip:
//!
//! 1. take the next due clip (`Ready`, or a transient failure whose time has come) from the
//!    queue, which moves it to `Uploading` atomically, so threads never share a clip;
//! 2. render its key (kept in the record once known), upload the MP4, the thumbnail and the
//!    events object;
//! 3. HEAD the object: size and SHA-256 metadata must match the queue record;
//! 4. only then mark it `Uploaded`, delete the local files, mark it `LocalDeleted`;
//! 5. if its session is closed and every clip of it is up, write the session manifest.
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
//! period (the queue writes the audit entry; local files are deleted), removes local copies an
//! earlier crash left behind, and writes manifests of sessions that closed after their last
//! upload.
//!
//! Does not: encode, decide retention policy values (config does), or talk to tokio.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::Digest;

use super::location::{ClipVars, KeyTemplate, events_key, manifest_key, thumbnail_key};
use super::manifest::{ManifestClip, SessionManifest};
use super::retry::{FailureClass, os_random, retry_delay_ms};
use super::store::{
    CONTENT_TYPE_JPEG, CONTENT_TYPE_JSON, CONTENT_TYPE_MP4, ObjectStore, PutOptions, StoreError,
    StoreErrorKind,
};
use crate::clock::Clock;
use crate::error::Classify;
use crate::fleet::writer::{FleetWriter, FleetWriterConfig, Settled};
use crate::limits::{
    UPLOAD_HOUSEKEEPING_INTERVAL_MS, UPLOAD_IDLE_POLL_MS, UPLOAD_PENDING_MANIFESTS_MAX,
    UPLOAD_RETENTION_HOURS_MAX, UPLOAD_RETRY_PERMANENT_MS, UPLOAD_SWEEP_CLIPS_MAX,
    UPLOADS_CONCURRENT_MAX,
};
use crate::queue::{
    ACTOR_SYSTEM, AuditNote, Clip, ClipPatch, ClipState, ClipStateKind, Queue, QueueError, Session,
    SessionState,
};

/// Settings of the worker.
#[derive(Debug, Clone)]
pub struct UploadWorkerConfig {
    /// Upload threads (1..=[`UPLOADS_CONCURRENT_MAX`]).
    pub concurrency: usize,
    /// Hours a clip may wait for its upload before it is expired.
    pub retention_hours: u64,
    /// `{hostname}` in key templates.
    pub hostname: String,
    /// Signed fleet manifests (appliance id, prefix, key); `None` writes only the format 1
    /// per-session manifest.
    pub fleet: Option<FleetWriterConfig>,
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
    pending_manifests: BTreeSet<u64>,
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
    fleet: Option<FleetWriter>,
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
        let mut pending_manifests = recent_closed_sessions(
            &queue,
            clock.now_ms(),
            cfg.retention_hours,
            cfg.fleet.is_some(),
        );
        pending_manifests.extend(unfinished_manifest_filings(&queue));
        let housekeeping = Housekeeping {
            pending_manifests,
            ..Housekeeping::default()
        };
        let fleet = cfg.fleet.clone().map(FleetWriter::new);
        Self {
            queue,
            store,
            template: std::sync::RwLock::new(template),
            retention_hours: std::sync::atomic::AtomicU64::new(cfg.retention_hours),
            clock,
            cfg,
            status: Mutex::new(status),
            housekeeping: Mutex::new(housekeeping),
            fleet,
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

    /// Starts `cfg.concurrency` named threads looping on [`Self::tick`] until `stop` is set.
    ///
    /// # Errors
    /// The OS error when a thread cannot be spawned.
    pub fn spawn_threads(
        self: &Arc<Self>,
        stop: Arc<AtomicBool>,
    ) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
        (0..self.cfg.concurrency)
            .map(|i| {
                let (worker, stop) = (self.clone(), stop.clone());
                std::thread::Builder::new()
                    .name(format!("upload-{i}"))
                    .spawn(move || worker.run(&stop))
            })
            .collect()
    }

    fn run(&self, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            let sleep_ms = match self.tick() {
                Ok(TickOutcome::Uploaded(_)) => 0,
                Ok(TickOutcome::Idle) | Ok(TickOutcome::Backoff(_)) => UPLOAD_IDLE_POLL_MS,
                Err(e) => {
                    log::error!(
                        "upload tick failed error={e} transient={}",
                        e.is_transient()
                    );
                    UPLOAD_IDLE_POLL_MS
                }
            };
            if sleep_ms > 0 {
                std::thread::sleep(Duration::from_millis(sleep_ms));
            }
        }
    }

    /// Housekeeping if due, then at most one clip.
    ///
    /// # Errors
    /// [`UploadError::Queue`] when the queue fails; store failures are recorded in the clip.
    pub fn tick(&self) -> Result<TickOutcome, UploadError> {
        self.housekeeping_if_due()?;
        let now_ms = self.clock.now_ms();
        let Some(clip) = self.queue.next_clip_to_upload(now_ms)? else {
            return Ok(TickOutcome::Idle);
        };
        let session = self.queue.session(clip.session)?;
        match self.upload_clip(&clip, session.as_ref()) {
            Ok(key) => {
                self.finish_success(&clip, &key)?;
                if let Some(s) = &session {
                    self.manifest_if_complete(s)?;
                }
                Ok(TickOutcome::Uploaded(clip.id))
            }
            Err(e) => self.finish_failure(&clip, &e),
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
            appliance_id: self
                .cfg
                .fleet
                .as_ref()
                .map_or_else(|| self.cfg.hostname.clone(), |f| f.appliance_id.clone()),
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

    /// Step 5: the manifests. The signed fleet manifest is rewritten (a new version) after
    /// every clip that lands and once more, final, when the session has settled (closed,
    /// interrupted or failed); the format 1 per-session manifest is written once the session
    /// is closed and all its clips are up. Sessions not settled yet, or whose manifest could
    /// not be written (or whose superseded fleet versions could not be deleted yet), are
    /// remembered for housekeeping.
    fn manifest_if_complete(&self, session: &Session) -> Result<(), UploadError> {
        let segments = self.queue.segments_of_session(session.id)?;
        let clips = self.queue.clips_of_session(session.id)?;
        let settled = crate::fleet::writer::settled(session, &segments, &clips);
        // The format 1 manifest goes first: once the final fleet version is filed, the format
        // 1 manifest is written too, so start-up need not put it again.
        if settled != Settled::No && !self.manifest_if_settled(session, &segments, &clips) {
            self.remember_manifest(session.id);
            return Ok(());
        }
        if let Some(fleet) = &self.fleet {
            let now_ms = self.clock.now_ms();
            let written = fleet.write(
                &self.queue,
                self.store.as_ref(),
                session,
                &segments,
                &clips,
                now_ms,
            );
            match written {
                Ok(w) if w.deletes_owed == 0 => {}
                Ok(_) => {
                    // Filed; only clean-up is owed.
                    self.remember_manifest(session.id);
                    return Ok(());
                }
                Err(e) => {
                    log::warn!(
                        "upload fleet manifest failed session={} error={e}",
                        session.session_id
                    );
                    self.remember_manifest(session.id);
                    return Ok(());
                }
            }
        }
        match settled {
            Settled::No => self.remember_manifest(session.id),
            Settled::Yes(_) => self.forget_manifest(session.id),
        }
        Ok(())
    }

    /// The format 1 manifest of a settled session. False when it is owed (its put failed).
    fn manifest_if_settled(
        &self,
        session: &Session,
        segments: &[crate::queue::Segment],
        clips: &[Clip],
    ) -> bool {
        let encoded = segments
            .iter()
            .all(|s| s.state.kind() == crate::queue::SegmentStateKind::Encoded);
        let up = |c: &Clip| {
            matches!(
                c.state.kind(),
                ClipStateKind::Uploaded | ClipStateKind::LocalDeleted
            )
        };
        // Closed, or interrupted and ended by start-up recovery: either way it is over.
        let ended = session.state == SessionState::Closed
            || (session.state == SessionState::Interrupted && session.end_ms.is_some());
        let legacy = ended && encoded && !clips.is_empty() && clips.iter().all(up);
        if !legacy {
            return true;
        }
        match self.write_manifest(session, clips) {
            Ok(key) => {
                log::info!("upload manifest session={} key={key:?}", session.session_id);
                true
            }
            Err(e) => {
                log::warn!(
                    "upload manifest failed session={} error={e}",
                    session.session_id
                );
                false
            }
        }
    }

    fn write_manifest(&self, session: &Session, clips: &[Clip]) -> ClipResult<String> {
        let mut segment_index = std::collections::HashMap::new();
        for seg in self
            .queue
            .segments_of_session(session.id)
            .unwrap_or_default()
        {
            segment_index.insert(seg.id, seg.index);
        }
        // Session order: segment index, then the clip's part within the segment.
        let mut ordered: Vec<(u32, u32, &Clip)> = clips
            .iter()
            .map(|c| {
                (
                    segment_index.get(&c.segment).copied().unwrap_or(0),
                    c.index,
                    c,
                )
            })
            .collect();
        ordered.sort_by_key(|(seg, part, c)| (*seg, *part, c.id));
        let mut entries = Vec::with_capacity(ordered.len());
        for (n, (_, _, c)) in ordered.iter().enumerate() {
            let key = c.object_key.clone().ok_or_else(|| StoreError::InvalidKey {
                key: format!("clip {}", c.id),
                reason: "uploaded clip without an object key",
            })?;
            let thumb = c.thumb_path.as_ref().map(|_| thumbnail_key(&key));
            let index = u32::try_from(n).unwrap_or(u32::MAX);
            entries.push(ManifestClip::new(
                index,
                key,
                thumb,
                c.bytes,
                c.sha256.clone(),
                c.start_ms,
                c.end_ms,
            ));
        }
        let first =
            entries
                .first()
                .map(|e| e.key.clone())
                .ok_or_else(|| StoreError::InvalidKey {
                    key: session.session_id.clone(),
                    reason: "session without clips",
                })?;
        let mut m = SessionManifest::new(
            &session.session_id,
            &session.user_id,
            &session.username,
            &session.image_friendly_name,
            &self.cfg.hostname,
            session.start_ms,
            session.end_ms.unwrap_or(session.start_ms),
            entries,
        )
        .map_err(|e| StoreError::Inconsistent {
            key: session.session_id.clone(),
            detail: e.to_string(),
        })?;
        m.end_reason = session.end_reason.map(|r| r.name().to_string());
        let key =
            manifest_key(&first, &session.session_id).map_err(|e| StoreError::InvalidKey {
                key: format!("{e}"),
                reason: "manifest key longer than 1024 bytes",
            })?;
        let json = m.to_json();
        let opts = PutOptions {
            content_type: CONTENT_TYPE_JSON.into(),
            sha256_hex: hex::encode(sha2::Sha256::digest(&json)),
        };
        self.store.put_bytes(&key, &json, &opts)?;
        Ok(key)
    }

    fn remember_manifest(&self, session: u64) {
        let mut hk = self.housekeeping.lock().unwrap_or_else(|p| p.into_inner());
        if hk.pending_manifests.len() < UPLOAD_PENDING_MANIFESTS_MAX {
            hk.pending_manifests.insert(session);
        }
    }

    fn forget_manifest(&self, session: u64) {
        let mut hk = self.housekeeping.lock().unwrap_or_else(|p| p.into_inner());
        hk.pending_manifests.remove(&session);
    }

    /// Runs housekeeping when due; only one thread does it, the others skip.
    fn housekeeping_if_due(&self) -> Result<(), UploadError> {
        let now_ms = self.clock.now_ms();
        let (revive, pending) = {
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
            (revive, std::mem::take(&mut hk.pending_manifests))
        };
        self.expire_old_clips(now_ms)?;
        self.delete_leftover_local_copies()?;
        if revive {
            self.revive_parked_clips(now_ms)?;
        }
        for id in pending {
            if let Some(session) = self.queue.session(id)? {
                self.manifest_if_complete(&session)?;
            }
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

/// Sessions whose fleet manifest filing owes a step (a put not confirmed, a superseded
/// version not deleted) whatever their age, so a crash never strands a superseded object.
fn unfinished_manifest_filings(queue: &Queue) -> Vec<u64> {
    queue
        .unfinished_manifest_filings(UPLOAD_PENDING_MANIFESTS_MAX)
        .unwrap_or_else(|e| {
            log::error!("upload cannot list unfinished fleet manifest filings error={e}");
            Vec::new()
        })
}

/// Whether the final fleet manifest of queue session `id` is filed.
fn final_filed(queue: &Queue, id: u64) -> bool {
    matches!(queue.manifest_filing(id), Ok(Some(f)) if f.final_filed())
}

/// Closed sessions that started within twice the retention period, newest first: the ones whose
/// manifest a crash may have lost. Which format 1 manifests are still owed lives only in
/// memory, so a kill between a session's last clip upload and its manifest write would lose
/// that manifest for good; at start-up every recent closed session is checked again
/// (`manifest_if_complete` writes nothing for sessions with clips still waiting, re-writing an
/// existing format 1 manifest puts the same bytes under the same key, and the fleet writer's
/// durable filing record makes a fleet version already filed a no-op). Older sessions are past
/// retention: their clips are up or expired.
fn recent_closed_sessions(
    queue: &Queue,
    now_ms: u64,
    retention_hours: u64,
    fleet: bool,
) -> BTreeSet<u64> {
    let filter = crate::queue::SessionFilter {
        start_from_ms: Some(now_ms.saturating_sub(2 * retention_hours * 3_600_000)),
        limit: UPLOAD_PENDING_MANIFESTS_MAX,
        ..crate::queue::SessionFilter::default()
    };
    match queue.list_sessions(&filter) {
        Ok(page) => page
            .items
            .into_iter()
            // Ended sessions: closed, or interrupted and ended by start-up recovery.
            .filter(|s| s.state == SessionState::Closed || s.end_ms.is_some())
            // A final fleet version is filed only after the format 1 manifest was written.
            .filter(|s| !fleet || !final_filed(queue, s.id))
            .map(|s| s.id)
            .collect(),
        Err(e) => {
            log::error!("upload cannot list recent sessions for manifests error={e}");
            BTreeSet::new()
        }
    }
}

/// A clip's local files: the MP4, its thumbnail and its events object.
fn local_files(clip: &Clip) -> impl Iterator<Item = &Path> {
    std::iter::once(clip.path.as_path())
        .chain(clip.thumb_path.as_deref())
        .chain(clip.events.as_ref().map(|e| e.path.as_path()))
}
