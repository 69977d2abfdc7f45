//! Retention of what the upload leaves behind: raw segments once their clips are
//! confirmed in the bucket (`segment-retention-hours`), and the metadata of old sessions and
//! old audit entries (`history-retention-days`, `audit-retention-days`).
//!
//! One [`RetentionWorker::sweep`] every `RETENTION_SWEEP_INTERVAL_MS`, on its own thread
//! ([`RetentionWorker::run`], which publishes [`RetentionStatus`] to the status board):
//! 1. raw segments: `Encoded` segments whose clips were all confirmed (uploaded, size and
//!    SHA-256 checked) longer ago than the segment retention lose their `NNNNNN.guac` and
//!    `.state` files, except when the next segment still needs the end display state (the
//!    last segment of a live session, or one whose successor is not encoded yet);
//! 2. history: `Closed` sessions that ended before the history cut-off are purged with their
//!    segments and clips, a bounded batch per write transaction, each batch audited;
//! 3. audit: entries older than the audit cut-off, likewise;
//! 4. the bytes still held by raw segments, measured on disk, for the status page.
//!
//! The local clip retention (`retention-hours`: clips that never reached the bucket expire)
//! stays in [`super::worker`]; config validation keeps the periods consistent (history
//! outlives both). Does not own the queue rules of what may be purged (`queue::retention`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::clock::Clock;
use crate::durable::with_suffix;
use crate::lifecycle::{Heartbeat, Shutdown};
use crate::limits::{
    PURGE_TXN_PAUSE_MS, PURGE_TXNS_PER_SWEEP_MAX, RETENTION_SEGMENT_FILES_COUNTED_MAX,
    RETENTION_SEGMENTS_PER_SWEEP_MAX, RETENTION_SWEEP_INTERVAL_MS,
};
use crate::queue::{PurgedAudit, PurgedHistory, Queue, QueueError};
use crate::status::{StatusBoard, WritingSegments};

const DAY_MS: u64 = 86_400_000;
const HOUR_MS: u64 = 3_600_000;

/// What the status page shows about retention: the worker publishes this very value.
pub type RetentionStatus = crate::status::RetentionFacts;

/// What one sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepOutcome {
    /// Raw segments whose files were deleted.
    pub raw_segments_deleted: u64,
    /// Sessions purged.
    pub sessions_purged: u64,
    /// Audit entries purged.
    pub audit_entries_purged: u64,
    /// Whether a purge stopped at its per-sweep bound (the next sweep goes on).
    pub more: bool,
}

#[derive(Default)]
struct Cursors {
    segments_after: u64,
    history_after: u64,
}

/// Retention of raw segments, history and audit log (`segment-retention-hours`,
/// `history-retention-days`, `audit-retention-days`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionSettings {
    /// A raw segment and its `.state` are deleted this long after its clips are confirmed.
    pub segment_ms: u64,
    /// Sessions (with their segments and clips) older than this are purged.
    pub history_ms: u64,
    /// Audit entries older than this are purged.
    pub audit_ms: u64,
}

/// The retention sweeper.
pub struct RetentionWorker {
    queue: Arc<Queue>,
    clock: Arc<dyn Clock>,
    /// Replaced by a settings reload; each sweep reads it once.
    cfg: Mutex<RetentionSettings>,
    segments_dir: PathBuf,
    /// Segment files being written (the tap's): left out of the measure, the status board
    /// counts them live.
    writing: WritingSegments,
    cursors: Mutex<Cursors>,
    status: Mutex<RetentionStatus>,
}

impl RetentionWorker {
    /// A sweeper over `queue`, measuring raw segments under `segments_dir`.
    pub fn new(
        queue: Arc<Queue>,
        clock: Arc<dyn Clock>,
        cfg: RetentionSettings,
        segments_dir: PathBuf,
    ) -> Self {
        assert!(
            cfg.history_ms > cfg.segment_ms,
            "history must outlive raw segments (config validation)"
        );
        Self {
            queue,
            clock,
            cfg: Mutex::new(cfg),
            segments_dir,
            writing: WritingSegments::default(),
            cursors: Mutex::new(Cursors::default()),
            status: Mutex::new(RetentionStatus::default()),
        }
    }

    /// Leaves the segment files on `writing` out of the raw segments measured.
    pub fn skipping(mut self, writing: WritingSegments) -> Self {
        self.writing = writing;
        self
    }

    /// Applies reloaded settings from the next sweep on (validation keeps them consistent).
    pub fn set_config(&self, cfg: RetentionSettings) {
        if cfg.history_ms > cfg.segment_ms {
            *self.cfg.lock().unwrap_or_else(|p| p.into_inner()) = cfg;
        }
    }

    fn cfg(&self) -> RetentionSettings {
        *self.cfg.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of the current status.
    pub fn status(&self) -> RetentionStatus {
        *self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sweeps until `shutdown`, beating `heartbeat` between purge transactions and publishing
    /// the status to `board` after every sweep; a sweep that left more to purge is followed
    /// by the next one soon.
    pub fn run(&self, shutdown: &Shutdown, heartbeat: &Heartbeat, board: &StatusBoard) {
        loop {
            heartbeat.beat();
            let keep_going = || {
                heartbeat.beat();
                !shutdown.is_requested()
            };
            let pause_ms = match self.sweep(&keep_going) {
                Ok(out) if out.more => PURGE_TXN_PAUSE_MS * 200,
                Ok(_) => RETENTION_SWEEP_INTERVAL_MS,
                Err(e) => {
                    log::error!("event=retention_sweep_failed error={e}");
                    board.record_error("retention", &e.to_string());
                    RETENTION_SWEEP_INTERVAL_MS
                }
            };
            let st = self.status();
            board.update(|s| s.retention = st);
            if shutdown.sleep(Duration::from_millis(pause_ms)) {
                break;
            }
        }
    }

    /// One sweep (see the module doc). `keep_going` is asked between purge transactions, so a
    /// stopping daemon does not wait for a long backlog.
    ///
    /// # Errors
    /// Queue errors (what was done before stays done).
    pub fn sweep(&self, keep_going: &dyn Fn() -> bool) -> Result<SweepOutcome, QueueError> {
        let now_ms = self.clock.now_ms();
        let mut out = SweepOutcome {
            raw_segments_deleted: self.delete_raw_segments(now_ms)?,
            ..SweepOutcome::default()
        };
        let (sessions, more_history) = self.purge_history(now_ms, keep_going)?;
        let (entries, more_audit) = self.purge_audit(now_ms, keep_going)?;
        out.sessions_purged = sessions;
        out.audit_entries_purged = entries;
        out.more = more_history || more_audit;
        self.writing.measuring();
        let (bytes, files, truncated) = measure_raw_segments(&self.segments_dir, &self.writing);
        let mut st = self.status.lock().unwrap_or_else(|p| p.into_inner());
        st.raw_segment_bytes = bytes;
        st.raw_segment_files = files;
        st.raw_segment_count_truncated = truncated;
        st.raw_segments_deleted += out.raw_segments_deleted;
        st.sessions_purged += sessions;
        st.audit_entries_purged += entries;
        Ok(out)
    }

    /// Step 1: one page of encoded segments from the cursor; the cursor wraps at the end.
    fn delete_raw_segments(&self, now_ms: u64) -> Result<u64, QueueError> {
        let after = self.lock_cursors().segments_after;
        let page = self
            .queue
            .raw_segments_after(after, RETENTION_SEGMENTS_PER_SWEEP_MAX)?;
        self.lock_cursors().segments_after = page.next_after.unwrap_or(0);
        let mut deleted = 0;
        for raw in page.items {
            let Some(confirmed_ms) = raw.confirmed_ms else {
                continue;
            };
            if raw.needed_by_next
                || raw.needed_by_ocr
                || now_ms < confirmed_ms.saturating_add(self.cfg().segment_ms)
            {
                continue;
            }
            let state = with_suffix(&raw.segment.path, ".state");
            let mut removed_any = false;
            for path in [&raw.segment.path, &state] {
                match std::fs::remove_file(path) {
                    Ok(()) => removed_any = true,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => log::warn!(
                        "event=raw_segment_delete_failed path={} error={e}",
                        path.display()
                    ),
                }
            }
            if removed_any {
                remove_dir_if_empty(&raw.segment.path);
                log::info!(
                    "event=raw_segment_deleted segment={} session={} index={} path={} \
                     confirmed_hours_ago={}",
                    raw.segment.id,
                    raw.segment.session,
                    raw.segment.index,
                    raw.segment.path.display(),
                    now_ms.saturating_sub(confirmed_ms) / HOUR_MS
                );
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    /// Step 2: batches until nothing is left, the bound or `keep_going` says stop.
    fn purge_history(
        &self,
        now_ms: u64,
        keep_going: &dyn Fn() -> bool,
    ) -> Result<(u64, bool), QueueError> {
        let cutoff = now_ms.saturating_sub(self.cfg().history_ms);
        let days = self.cfg().history_ms / DAY_MS;
        let message = |p: &PurgedHistory| {
            format!(
                "System purged {} sessions ({} segments, {} clips) that ended more than {days} \
                 days ago (history retention)",
                p.sessions, p.segments, p.clips
            )
        };
        let mut purged = 0;
        for _ in 0..PURGE_TXNS_PER_SWEEP_MAX {
            let after = self.lock_cursors().history_after;
            let batch = self.queue.purge_history(cutoff, after, &message)?;
            self.lock_cursors().history_after = batch.next_after.unwrap_or(0);
            remove_files(&batch.files);
            if batch.sessions > 0 {
                log::info!(
                    "event=history_purged sessions={} segments={} clips={} busy={} days={days}",
                    batch.sessions,
                    batch.segments,
                    batch.clips,
                    batch.busy
                );
            }
            purged += batch.sessions;
            if batch.next_after.is_none() {
                return Ok((purged, false));
            }
            if !keep_going() {
                break;
            }
            std::thread::sleep(Duration::from_millis(PURGE_TXN_PAUSE_MS));
        }
        Ok((purged, true))
    }

    /// Step 3: batches of the oldest audit entries.
    fn purge_audit(
        &self,
        now_ms: u64,
        keep_going: &dyn Fn() -> bool,
    ) -> Result<(u64, bool), QueueError> {
        let cutoff = now_ms.saturating_sub(self.cfg().audit_ms);
        let days = self.cfg().audit_ms / DAY_MS;
        let message = |p: &PurgedAudit| {
            format!(
                "System purged {} audit entries older than {days} days (audit retention)",
                p.entries
            )
        };
        let mut purged = 0;
        for _ in 0..PURGE_TXNS_PER_SWEEP_MAX {
            let batch = self.queue.purge_audit(cutoff, &message)?;
            if batch.entries > 0 {
                log::info!("event=audit_purged entries={} days={days}", batch.entries);
            }
            purged += batch.entries;
            if !batch.more {
                return Ok((purged, false));
            }
            if !keep_going() {
                break;
            }
            std::thread::sleep(Duration::from_millis(PURGE_TXN_PAUSE_MS));
        }
        Ok((purged, true))
    }

    fn lock_cursors(&self) -> std::sync::MutexGuard<'_, Cursors> {
        self.cursors.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Removes the files of purged records that are still there (and their segment `.state`).
fn remove_files(files: &[PathBuf]) {
    for path in files {
        let state = with_suffix(path, ".state");
        for p in [path, &state] {
            match std::fs::remove_file(p) {
                Ok(()) => log::info!("event=purged_file_removed path={}", p.display()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => log::warn!(
                    "event=purged_file_remove_failed path={} error={e}",
                    p.display()
                ),
            }
        }
        remove_dir_if_empty(path);
    }
}

/// A session's segment directory goes with its last file (nothing empty is left behind).
fn remove_dir_if_empty(file: &Path) {
    if let Some(dir) = file.parent() {
        // Fails harmlessly (ENOTEMPTY) while other files are there.
        let _ = std::fs::remove_dir(dir);
    }
}

/// Bytes and number of files under the segments directory (two levels: `<session>/<file>`),
/// counting at most `RETENTION_SEGMENT_FILES_COUNTED_MAX` files, except those being written.
pub fn measure_raw_segments(segments_dir: &Path, writing: &WritingSegments) -> (u64, u64, bool) {
    let (mut bytes, mut files) = (0u64, 0u64);
    let Ok(sessions) = std::fs::read_dir(segments_dir) else {
        return (0, 0, false);
    };
    for session in sessions.flatten() {
        let Ok(entries) = std::fs::read_dir(session.path()) else {
            continue;
        };
        for entry in entries.flatten() {
            if files as usize >= RETENTION_SEGMENT_FILES_COUNTED_MAX {
                return (bytes, files, true);
            }
            if let Ok(meta) = entry.metadata()
                && meta.is_file()
                && !writing.contains(&entry.path())
            {
                bytes += meta.len();
                files += 1;
            }
        }
    }
    (bytes, files, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::queue::*;

    const T0: u64 = 1_700_000_000_000;

    struct Setup {
        dir: tempfile::TempDir,
        queue: Arc<Queue>,
        clock: Arc<ManualClock>,
        worker: RetentionWorker,
    }

    fn setup(segment_hours: u64) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(T0));
        let queue = Arc::new(
            Queue::open(&QueueOptions::new(dir.path().join("queue")), clock.clone()).unwrap(),
        );
        let cfg = RetentionSettings {
            segment_ms: segment_hours * HOUR_MS,
            history_ms: 30 * DAY_MS,
            audit_ms: 60 * DAY_MS,
        };
        let worker = RetentionWorker::new(
            queue.clone(),
            clock.clone(),
            cfg,
            dir.path().join("segments"),
        );
        Setup {
            dir,
            queue,
            clock,
            worker,
        }
    }

    /// A live session with `n` segments on disk (`.guac` + `.state`), encoded, clips uploaded.
    fn live_session(s: &Setup, n: u32) -> (u64, Vec<PathBuf>) {
        let q = &s.queue;
        let id = q
            .register_session(&NewSession {
                session_id: "sess-a".into(),
                user_id: "u".into(),
                username: "alice".into(),
                image_friendly_name: "Desktop".into(),
                protocol: "vnc".into(),
                start_ms: T0,
                target: String::new(),
                client_addr: String::new(),
            })
            .unwrap();
        let dir = s.dir.path().join("segments").join("sess-a");
        std::fs::create_dir_all(&dir).unwrap();
        let mut paths = Vec::new();
        for i in 0..n {
            let path = dir.join(format!("{i:06}.guac"));
            std::fs::write(&path, vec![1u8; 1000]).unwrap();
            std::fs::write(with_suffix(&path, ".state"), vec![2u8; 100]).unwrap();
            let seg = q
                .register_segment(&NewSegment {
                    session: id,
                    index: i,
                    path: path.clone(),
                    bytes: 1000,
                    first_sync_ms: None,
                    last_sync_ms: None,
                    sealed: true,
                })
                .unwrap();
            assert_eq!(q.next_segment_to_encode().unwrap().unwrap().id, seg);
            let clip = NewClip {
                segment: seg,
                index: 0,
                path: s.dir.path().join(format!("clip-{i}.mp4")),
                thumb_path: None,
                bytes: 10,
                sha256: "ab".repeat(32),
                duration_ms: 1000,
                start_ms: T0,
                end_ms: T0 + 1000,
                object_key: None,
                events: None,
            };
            let c = q.finish_encoding(seg, &[clip]).unwrap()[0];
            assert_eq!(q.next_clip_to_upload(T0).unwrap().unwrap().id, c);
            let patch = ClipPatch {
                object_key: Some(format!("k/{c}")),
                audit: None,
            };
            q.transition_clip(c, ClipStateKind::Uploading, ClipState::Uploaded, &patch)
                .unwrap();
            paths.push(path);
        }
        (id, paths)
    }

    #[test]
    fn raw_segments_go_after_the_retention_except_the_one_the_next_segment_needs() {
        let s = setup(24);
        let (id, paths) = live_session(&s, 2);
        let go = || true;
        // Confirmed, but the retention has not passed: everything stays.
        let out = s.worker.sweep(&go).unwrap();
        assert_eq!(out.raw_segments_deleted, 0);
        assert_eq!(s.worker.status().raw_segment_bytes, 2 * 1100);
        assert_eq!(s.worker.status().raw_segment_files, 4);
        // 24 h later the first segment and its state go; the last one of the live session stays
        // (the next segment will start from its display state).
        s.clock.advance_ms(24 * HOUR_MS);
        let out = s.worker.sweep(&go).unwrap();
        assert_eq!(out.raw_segments_deleted, 1);
        assert!(!paths[0].exists() && !with_suffix(&paths[0], ".state").exists());
        assert!(paths[1].exists() && with_suffix(&paths[1], ".state").exists());
        assert_eq!(s.worker.status().raw_segment_bytes, 1100);
        // Records stay (history); only the raw files went.
        assert!(s.queue.segment_at(id, 0).unwrap().is_some());
        // The session ends: nothing follows, the last segment goes too, and the directory.
        s.queue
            .transition_session(id, SessionState::Live, SessionState::Closed, Some(T0))
            .unwrap();
        let out = s.worker.sweep(&go).unwrap();
        assert_eq!(out.raw_segments_deleted, 1);
        assert!(!paths[1].exists());
        assert!(
            !paths[1].parent().unwrap().exists(),
            "no empty directory left"
        );
        assert_eq!(s.worker.status().raw_segment_bytes, 0);
        assert_eq!(s.worker.status().raw_segments_deleted, 2);
    }

    #[test]
    fn history_and_audit_purge_run_from_the_sweep_and_are_audited() {
        let s = setup(0);
        let (id, paths) = live_session(&s, 1);
        s.queue
            .transition_session(id, SessionState::Live, SessionState::Closed, Some(T0))
            .unwrap();
        s.queue
            .append_audit(&NewAudit {
                actor: "alice".into(),
                action: AuditAction::Played,
                target: AuditTarget::None,
                message: "User alice played sess-a video".into(),
            })
            .unwrap();
        let go = || true;
        // 31 days: the session goes, the audit entry (60 days) stays.
        s.clock.advance_ms(31 * DAY_MS);
        let out = s.worker.sweep(&go).unwrap();
        assert_eq!((out.sessions_purged, out.audit_entries_purged), (1, 0));
        assert!(s.queue.session(id).unwrap().is_none());
        assert!(
            !paths[0].exists(),
            "its raw segment went (retention 0, or with the purge)"
        );
        // 61 days: the old audit entry goes; the purge entries themselves are recent.
        s.clock.advance_ms(30 * DAY_MS);
        let out = s.worker.sweep(&go).unwrap();
        assert_eq!(out.audit_entries_purged, 1);
        let log = s
            .queue
            .list_audit(&AuditFilter {
                limit: 50,
                ..Default::default()
            })
            .unwrap();
        let words: Vec<_> = log.items.iter().map(|a| a.message.as_str()).collect();
        assert_eq!(
            words,
            [
                "System purged 1 audit entries older than 60 days (audit retention)",
                "System purged 1 sessions (1 segments, 1 clips) that ended more than 30 days ago \
                 (history retention)",
            ]
        );
        assert_eq!(s.worker.status().sessions_purged, 1);
    }

    #[test]
    fn measuring_counts_files_two_levels_down_except_those_being_written() {
        let dir = tempfile::tempdir().unwrap();
        let s = dir.path().join("abc");
        std::fs::create_dir_all(&s).unwrap();
        std::fs::write(s.join("000000.guac"), vec![0u8; 1000]).unwrap();
        std::fs::write(s.join("000000.guac.state"), vec![0u8; 24]).unwrap();
        std::fs::write(s.join("000001.guac"), vec![0u8; 500]).unwrap();
        let writing = WritingSegments::default();
        let live = writing.start(s.join("000001.guac"));
        assert_eq!(measure_raw_segments(dir.path(), &writing), (1024, 2, false));
        drop(live);
        assert_eq!(measure_raw_segments(dir.path(), &writing), (1524, 3, false));
        assert_eq!(
            measure_raw_segments(&dir.path().join("missing"), &writing),
            (0, 0, false)
        );
    }
}
