//! The manifest worker: takes the sessions whose manifests are owed from the queue and writes
//! them to the store.
//!
//! Each [`ManifestWorker::tick`] handles at most one session:
//!
//! 1. take the owed manifest due first ([`Queue::next_owed_manifest`]);
//! 2. reload the session, its segments and clips;
//! 3. once the session has settled (ended, every segment and clip done with), put the format 1
//!    per-session manifest (same key, same bytes when written again);
//! 4. file the signed fleet manifest version of what is up now ([`FleetWriter`]: a partial
//!    version after every clip, the final one once settled), then delete superseded versions;
//! 5. clear the mark ([`Queue::manifest_paid`], which keeps it when a change came meanwhile),
//!    or, when a step failed, put it off on the upload retry schedule
//!    ([`Queue::manifest_retry_at`]).
//!
//! The format 1 manifest goes before the final fleet version: once the final version is
//! filed, the format 1 manifest is in the bucket too. A crash at any point leaves the mark in
//! the queue; the next run writes the manifests again (a fleet version already filed is a
//! no-op, see `writer.rs`).
//!
//! Called by the daemon's manifest thread ([`ManifestWorker::run`]) and by tests through
//! `tick`. Does not decide when sessions end, upload clips, or talk to tokio.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::Digest;

use super::session_json::{ManifestClip, SessionManifest};
use super::writer::{FleetWriter, FleetWriterConfig, Settled, WriteError, settled};
use crate::clock::Clock;
use crate::error::Classify;
use crate::lifecycle::{Heartbeat, Shutdown};
use crate::limits::MANIFEST_IDLE_POLL_MS;
use crate::queue::{
    Clip, ClipStateKind, OwedManifest, OwedNext, Queue, QueueError, Segment, SegmentStateKind,
    Session, SessionState,
};
use crate::status::{ManifestFacts, StatusBoard};
use crate::upload::location::{manifest_key, thumbnail_key};
use crate::upload::retry::{FailureClass, os_random, retry_delay_ms};
use crate::upload::store::{CONTENT_TYPE_JSON, ObjectStore, PutOptions, StoreError};

/// Settings of the worker.
#[derive(Debug, Clone)]
pub struct ManifestWorkerConfig {
    /// `hostname` in the format 1 manifest.
    pub hostname: String,
    /// Signed fleet manifests (appliance id, prefix, key); `None` writes only the format 1
    /// per-session manifest.
    pub fleet: Option<FleetWriterConfig>,
}

/// What one tick did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestTick {
    /// Nothing is owed.
    Idle,
    /// Something is owed, but not before this time (ms).
    NotBefore(u64),
    /// The manifests of this queue session were written.
    Written(u64),
    /// Writing the manifests of this queue session failed; it is tried again later.
    Failed(u64),
}

/// Why a session's manifests could not be written (the mark stays; retried later).
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// A put or delete failed, or a manifest could not be made.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// The queue could not be read or written.
    #[error("{0}")]
    Queue(#[from] QueueError),
    /// Superseded fleet versions could not be deleted yet.
    #[error("{0} superseded fleet manifest version(s) not deleted yet")]
    DeletesOwed(usize),
}

impl From<WriteError> for ManifestError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Store(e) => Self::Store(e),
            WriteError::Queue(e) => Self::Queue(e),
        }
    }
}

impl Classify for ManifestError {
    fn is_transient(&self) -> bool {
        match self {
            Self::Store(e) => e.is_transient(),
            Self::Queue(e) => e.is_transient(),
            Self::DeletesOwed(_) => true,
        }
    }
}

/// Snapshot of the worker for the status page.
pub type ManifestStatus = ManifestFacts;

/// The manifest worker (one thread).
pub struct ManifestWorker {
    queue: Arc<Queue>,
    store: Arc<dyn ObjectStore>,
    clock: Arc<dyn Clock>,
    cfg: ManifestWorkerConfig,
    fleet: Option<FleetWriter>,
    status: Mutex<ManifestStatus>,
}

impl ManifestWorker {
    /// A worker over `queue` and `store` (a settings reload swaps the store inside a
    /// `SharedStore`).
    pub fn new(
        queue: Arc<Queue>,
        store: Arc<dyn ObjectStore>,
        clock: Arc<dyn Clock>,
        cfg: ManifestWorkerConfig,
    ) -> Self {
        let fleet = cfg.fleet.clone().map(FleetWriter::new);
        Self {
            queue,
            store,
            clock,
            cfg,
            fleet,
            status: Mutex::new(ManifestStatus::default()),
        }
    }

    /// A copy of the current status (the owed count as of the end of the last tick).
    pub fn status(&self) -> ManifestStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Runs ticks until `shutdown`, beating `heartbeat` on every tick and publishing the
    /// status to `board` after each.
    pub fn run(&self, shutdown: &Shutdown, heartbeat: &Heartbeat, board: &StatusBoard) {
        while !shutdown.is_requested() {
            heartbeat.beat();
            let tick = self.tick();
            self.publish(board);
            let now_ms = self.clock.now_ms();
            let pause_ms = match tick {
                Ok(ManifestTick::Written(_)) => continue,
                Ok(ManifestTick::Failed(_)) => {
                    if let Some(e) = self.status().last_error {
                        board.record_error_unless_repeated("manifest", &e);
                    }
                    continue;
                }
                Ok(ManifestTick::Idle) => MANIFEST_IDLE_POLL_MS,
                Ok(ManifestTick::NotBefore(t)) => {
                    t.saturating_sub(now_ms).clamp(1, MANIFEST_IDLE_POLL_MS)
                }
                Err(e) => {
                    log::error!("event=manifest_tick_failed error={e}");
                    board.record_error("manifest", &e.to_string());
                    MANIFEST_IDLE_POLL_MS
                }
            };
            if shutdown.sleep(Duration::from_millis(pause_ms)) {
                break;
            }
        }
        log::info!("event=manifest_worker_stopped");
    }

    fn publish(&self, board: &StatusBoard) {
        let st = self.status();
        board.update(|s| s.manifests = st);
    }

    /// Writes the manifests of the session owed first, if one is due.
    ///
    /// # Errors
    /// [`QueueError`] when the queue cannot be read or the mark not updated; store failures
    /// are handled ([`ManifestTick::Failed`]).
    pub fn tick(&self) -> Result<ManifestTick, QueueError> {
        let tick = self.tick_once();
        if let Ok(owed) = self.queue.owed_manifest_count() {
            self.status.lock().unwrap_or_else(|p| p.into_inner()).owed = owed;
        }
        tick
    }

    fn tick_once(&self) -> Result<ManifestTick, QueueError> {
        let now_ms = self.clock.now_ms();
        let owed = match self.queue.next_owed_manifest(now_ms)? {
            OwedNext::Nothing => return Ok(ManifestTick::Idle),
            OwedNext::NotBefore(t) => return Ok(ManifestTick::NotBefore(t)),
            OwedNext::Due(owed) => owed,
        };
        match self.write_session(owed.session) {
            Ok(()) => {
                self.queue.manifest_paid(&owed)?;
                let mut st = self.status.lock().unwrap_or_else(|p| p.into_inner());
                st.written += 1;
                st.last_error = None;
                Ok(ManifestTick::Written(owed.session))
            }
            Err(e) => {
                self.retry_later(&owed, &e, now_ms)?;
                Ok(ManifestTick::Failed(owed.session))
            }
        }
    }

    /// Puts the mark off on the upload retry schedule and shows `e`.
    fn retry_later(
        &self,
        owed: &OwedManifest,
        e: &ManifestError,
        now_ms: u64,
    ) -> Result<(), QueueError> {
        let attempt = owed.attempts.saturating_add(1);
        let due_ms = now_ms + retry_delay_ms(attempt, FailureClass::of(e), os_random());
        log::warn!(
            "event=manifest_failed session={} attempt={attempt} transient={} retry_at_ms={due_ms} \
             error={e}",
            owed.session,
            e.is_transient()
        );
        self.queue.manifest_retry_at(owed, due_ms, &e.to_string())?;
        let mut st = self.status.lock().unwrap_or_else(|p| p.into_inner());
        st.last_error = Some(format!("session {}: {e}", owed.session));
        Ok(())
    }

    /// Steps 2 to 4 for queue session `id`. A session gone (purged) owes nothing.
    fn write_session(&self, id: u64) -> Result<(), ManifestError> {
        let Some(session) = self.queue.session(id)? else {
            return Ok(());
        };
        let segments = self.queue.segments_of_session(id)?;
        let clips = self.queue.clips_of_session(id)?;
        let settled = settled(&session, &segments, &clips);
        if settled == Settled::No && !clips.iter().any(up) {
            // Live with nothing in the bucket yet: no manifest has anything to say.
            return Ok(());
        }
        if settled != Settled::No && format_1_due(&session, &segments, &clips) {
            let key = self.put_format_1(&session, &segments, &clips)?;
            log::info!(
                "event=session_manifest session={} key={key:?}",
                session.session_id
            );
        }
        if let Some(fleet) = &self.fleet {
            let now_ms = self.clock.now_ms();
            let written = fleet.write(
                &self.queue,
                self.store.as_ref(),
                &session,
                &segments,
                &clips,
                now_ms,
            )?;
            if written.deletes_owed > 0 {
                return Err(ManifestError::DeletesOwed(written.deletes_owed));
            }
        }
        Ok(())
    }

    /// Builds the format 1 manifest of a settled session and puts it; returns its key.
    fn put_format_1(
        &self,
        session: &Session,
        segments: &[Segment],
        clips: &[Clip],
    ) -> Result<String, StoreError> {
        let m = format_1(session, segments, clips, &self.cfg.hostname)?;
        let first = &m.clips[0].key;
        let key = manifest_key(first, &session.session_id).map_err(|e| StoreError::InvalidKey {
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
}

/// Whether the format 1 manifest is written: the session is over (closed, or interrupted and
/// ended by start-up recovery), every segment encoded and every clip up. A session with a
/// failed segment or an expired clip gets only its final fleet manifest (state `failed`).
fn format_1_due(session: &Session, segments: &[Segment], clips: &[Clip]) -> bool {
    let ended = session.state == SessionState::Closed
        || (session.state == SessionState::Interrupted && session.end_ms.is_some());
    let encoded = segments
        .iter()
        .all(|s| s.state.kind() == SegmentStateKind::Encoded);
    ended && encoded && !clips.is_empty() && clips.iter().all(up)
}

/// Whether the clip is in the bucket (confirmed there).
fn up(c: &Clip) -> bool {
    matches!(
        c.state.kind(),
        ClipStateKind::Uploaded | ClipStateKind::LocalDeleted
    )
}

/// The format 1 manifest of a settled session: its clips in session order (segment index,
/// then the clip's part within the segment), numbered from 0.
///
/// # Errors
/// [`StoreError::InvalidKey`] for a clip without an object key;
/// [`StoreError::Inconsistent`] when the manifest cannot list the clips.
fn format_1(
    session: &Session,
    segments: &[Segment],
    clips: &[Clip],
    hostname: &str,
) -> Result<SessionManifest, StoreError> {
    let segment_index: std::collections::HashMap<u64, u32> =
        segments.iter().map(|s| (s.id, s.index)).collect();
    let mut ordered: Vec<&Clip> = clips.iter().collect();
    ordered.sort_by_key(|c| {
        (
            segment_index.get(&c.segment).copied().unwrap_or(0),
            c.index,
            c.id,
        )
    });
    let mut entries = Vec::with_capacity(ordered.len());
    for (n, c) in ordered.iter().enumerate() {
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
    let mut m = SessionManifest::new(
        &session.session_id,
        &session.user_id,
        &session.username,
        &session.image_friendly_name,
        hostname,
        session.start_ms,
        session.end_ms.unwrap_or(session.start_ms),
        entries,
    )
    .map_err(|e| StoreError::Inconsistent {
        key: session.session_id.clone(),
        detail: e.to_string(),
    })?;
    if m.clips.is_empty() {
        return Err(StoreError::InvalidKey {
            key: session.session_id.clone(),
            reason: "session without clips",
        });
    }
    m.end_reason = session.end_reason.map(|r| r.name().to_string());
    m.target = session.target.clone();
    m.client_addr = session.client_addr.clone();
    Ok(m)
}
