//! The snapshot board that workers publish to and the HTTP side reads from.
//!
//! Workers (disk watch, encoders, uploaders, the tap) write small facts here; the status page,
//! `/api/v1/status`, `/metrics` and `session-recorder status` read a cloned [`StatusSnapshot`].
//! Reads never block the pipeline for longer than one clone under a short lock, and nothing here
//! touches the queue: queue counts are published by whoever already holds the numbers.
//!
//! Segments the tap is writing have no queue record until they are sealed, so the tap lists
//! them in the board's [`WritingSegments`] (path and bytes so far, buffered ones included), and
//! every [`StatusBoard::snapshot`] counts them live: in `queue_counts["segments_writing"]` and in
//! the retention's raw segment bytes and files. The retention's walk of the disk (once a
//! minute) leaves them out, so nothing is counted twice, and those sealed since its last walk
//! are added until the next one.
//!
//! The board also keeps the last 24 h as trend points ([`TrendPoint`], one per
//! `STATUS_TREND_SAMPLE_MS`, at most `STATUS_TREND_SAMPLES_MAX`): every update folds the
//! board's current figures into the running point (lowest free disk, highest backlog and live
//! sessions), and encoders add what they encoded ([`StatusBoard::record_encode`]). In memory
//! only: a restart starts the charts afresh.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use serde::Serialize;

use crate::clock::Clock;
use crate::disk::DiskState;
use crate::limits::{
    STATUS_BYTES_PER_USER, STATUS_ERROR_CHARS_MAX, STATUS_ERRORS_MAX, STATUS_TREND_SAMPLE_MS,
    STATUS_TREND_SAMPLES_MAX,
};

/// Everything the status page shows, as one cloneable value.
#[derive(Debug, Clone, Serialize)]
pub struct StatusSnapshot {
    /// The program's version.
    pub version: String,
    /// When the daemon started, ms since the epoch.
    pub started_ms: u64,
    /// Free space on the spool's filesystem.
    pub disk: DiskStatus,
    /// Records per queue state, e.g. `segments_sealed`, `clips_ready`.
    pub queue_counts: BTreeMap<String, u64>,
    /// One entry per encoder thread.
    pub encoders: Vec<EncoderStatus>,
    /// The upload side.
    pub uploads: UploadStatus,
    /// The manifest side (published by the manifest worker).
    pub manifests: ManifestFacts,
    /// Problems found in the settings; empty when they are valid. A config file that does
    /// not validate at a reload is named here (with its key) while the daemon keeps running
    /// on the settings it had.
    pub settings_problems: Vec<String>,
    /// Keys changed in the config file that apply only at the next start.
    pub restart_pending: Vec<String>,
    /// Live recorded sessions through the tap.
    pub live_sessions: u64,
    /// The most recent errors, newest last.
    pub recent_errors: VecDeque<ErrorEntry>,
    /// Raw segments held on disk and what retention purged.
    pub retention: RetentionFacts,
    /// guacd as the tap sees it, and the sessions it relays without recording.
    pub tap: TapStatus,
    /// Fleet history: this appliance's signing key, or the history role's index.
    pub fleet: FleetStatus,
    /// The search index of session events.
    pub search: SearchFacts,
    /// The screen text (OCR) job (published by its thread when `search.ocr` is on).
    pub ocr: OcrFacts,
}

/// The OCR job's counts of clips (published by its thread).
#[derive(Debug, Clone, Default, Serialize)]
pub struct OcrFacts {
    /// Whether the OCR job runs (`search.ocr`).
    pub enabled: bool,
    /// Clips waiting for their screen text to be read (the backlog).
    pub pending: u64,
    /// Read, waiting for their upload.
    pub read: u64,
    /// Screen text in the bucket.
    pub uploaded: u64,
    /// Given up (unreadable recording, Tesseract failing, or dropped when the disk ran low).
    pub failed: u64,
    /// Why the job is paused (Tesseract missing or failing), while it is.
    pub paused: Option<String>,
}

/// The search index's counts (published by its indexing worker).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct SearchFacts {
    /// Whether this server keeps a search index.
    pub enabled: bool,
    /// Event documents in the index.
    pub events: u64,
    /// Clips indexed.
    pub clips: u64,
    /// Events objects skipped since start: corrupt, or not what their manifest signed (their
    /// clips still play, without events).
    pub events_objects_skipped: u64,
}

/// Manifest facts (published by the manifest worker).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ManifestFacts {
    /// Sessions whose manifests are owed (to write, or to write again after a failure).
    pub owed: u64,
    /// Sessions whose manifests were written since start.
    pub written: u64,
    /// The last failure in words, cleared by the next success.
    pub last_error: Option<String>,
}

/// Retention facts (published by the retention thread).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RetentionFacts {
    /// Bytes held by raw segment files (`.guac` and `.state`) under `<data-dir>/segments`.
    pub raw_segment_bytes: u64,
    /// Whether the walk that measured them stopped at its bound (the figures are a floor).
    pub raw_segment_count_truncated: bool,
    /// Number of those files.
    pub raw_segment_files: u64,
    /// Raw segments deleted since start (clips confirmed, retention passed).
    pub raw_segments_deleted: u64,
    /// Sessions purged from the history since start.
    pub sessions_purged: u64,
    /// Audit entries purged since start.
    pub audit_entries_purged: u64,
}

// ---- the tap's upstream and unrecorded sessions ----

/// What the tap knows of guacd and of the sessions it relays without recording.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TapStatus {
    /// guacd's address (`host:port`); empty when the tap is off.
    pub upstream: String,
    /// Whether the last contact with guacd (the background probe or a session's connect)
    /// worked; `None` before the first.
    pub upstream_reachable: Option<bool>,
    /// Why the last contact failed, while guacd is unreachable.
    pub upstream_error: Option<String>,
    /// Since when guacd has been in its current state, ms since the epoch.
    pub upstream_since_ms: Option<u64>,
    /// Sessions relayed now without recording (`recording-required` false).
    pub unrecorded_live: u64,
    /// Sessions relayed without recording since the start.
    pub unrecorded_total: u64,
}

impl StatusBoard {
    /// Publishes the result of a contact with guacd; returns whether reachability changed
    /// (the caller logs changes only).
    pub fn set_upstream(&self, reachable: bool, error: Option<String>) -> bool {
        let now_ms = self.clock.now_ms();
        let error = error.map(|e| e.chars().take(STATUS_ERROR_CHARS_MAX).collect());
        let mut changed = false;
        self.update(|s| {
            changed = s.tap.upstream_reachable != Some(reachable);
            if changed {
                s.tap.upstream_since_ms = Some(now_ms);
            }
            s.tap.upstream_reachable = Some(reachable);
            s.tap.upstream_error = error;
        });
        changed
    }
}

/// Fleet history facts.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FleetStatus {
    /// Hex public key this appliance signs its manifests with.
    pub signing_public_key: Option<String>,
    /// The history role's index, when this instance is one.
    pub index: Option<FleetIndexStatus>,
}

/// The history role's view of the bucket.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FleetIndexStatus {
    /// Where the manifests are read from (no secrets).
    pub location: String,
    /// Trusted public keys.
    pub trusted_keys: Vec<String>,
    /// Whether the last poll reached the bucket; `None` before the first one.
    pub reachable: Option<bool>,
    /// The last poll's error, when it failed.
    pub last_error: Option<String>,
    /// When the last poll finished, ms since the epoch.
    pub last_poll_ms: Option<u64>,
    /// Store requests the last poll made.
    pub last_poll_requests: u64,
    /// How long the last poll took.
    pub last_poll_duration_ms: u64,
    /// When the last full rescan finished.
    pub last_rescan_ms: Option<u64>,
    /// What the index holds: the index counts into this very type (flat in the JSON).
    #[serde(flatten)]
    pub counts: FleetIndexCounts,
}

/// What the history role's index holds, as counted for the status page.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FleetIndexCounts {
    /// Sessions in the index.
    pub sessions: u64,
    /// Appliances seen.
    pub appliances: u64,
    /// Sessions shown with "integrity: failed".
    pub integrity_failed: u64,
    /// Clips whose object is gone from the bucket.
    pub clips_gone: u64,
    /// Clips whose bytes were hashed and match their manifest.
    pub clips_verified: u64,
    /// Clips whose bytes were hashed and do not match their manifest.
    pub clips_bytes_failed: u64,
    /// Documents skipped, by reason (`not_json`, `unknown_version`, `malformed`, `too_large`).
    pub skipped: BTreeMap<String, u64>,
}

/// Disk facts.
#[derive(Debug, Clone, Serialize)]
pub struct DiskStatus {
    /// Available / low / critical / unknown.
    pub state: DiskState,
    /// Last measured free bytes.
    pub free_bytes: Option<u64>,
    /// The configured floor.
    pub floor_bytes: u64,
}

impl DiskStatus {
    /// How many more recorded users fit, counting a named allowance per user above the floor.
    pub fn users_that_fit(&self) -> u64 {
        self.free_bytes
            .map(|free| free.saturating_sub(self.floor_bytes) / STATUS_BYTES_PER_USER)
            .unwrap_or(0)
    }
}

/// One encoder thread.
#[derive(Debug, Clone, Serialize)]
pub struct EncoderStatus {
    /// The core the thread is pinned to, when pinning succeeded.
    pub core: Option<usize>,
    /// What it is encoding, or `None` when idle.
    pub job: Option<EncoderJob>,
}

/// The job an encoder is busy with.
#[derive(Debug, Clone, Serialize)]
pub struct EncoderJob {
    /// The session's external id.
    pub session_id: String,
    /// The segment's index within the session.
    pub segment_index: u32,
    /// Fraction done, 0.0 to 1.0.
    pub progress: f32,
    /// When it started, ms since the epoch.
    pub started_ms: u64,
}

/// The upload side.
#[derive(Debug, Clone, Default, Serialize)]
pub struct UploadStatus {
    /// A human description of the store (no secrets), e.g. `s3://bucket@host:9000`.
    pub store: String,
    /// Whether the last contact with the store worked; `None` before the first contact.
    pub reachable: Option<bool>,
    /// The last store error in words, when the last contact failed.
    pub last_error: Option<String>,
    /// Clips waiting to be uploaded.
    pub backlog: u64,
    /// When the oldest waiting clip was made, ms since the epoch.
    pub oldest_waiting_ms: Option<u64>,
    /// Uploads in progress.
    pub active: u64,
    /// Clips uploaded since start.
    pub uploaded_clips: u64,
    /// Bytes of clips uploaded since start.
    pub uploaded_bytes: u64,
}

/// A recent error.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorEntry {
    /// When, ms since the epoch.
    pub at_ms: u64,
    /// Which part of the program, e.g. `encode`, `upload`, `tap`.
    pub source: String,
    /// The message, cut to a named maximum.
    pub message: String,
}

/// What one `STATUS_TREND_SAMPLE_MS` of the status board looked like at its worst.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TrendPoint {
    /// Start of the period, ms since the epoch (a multiple of the period).
    pub at_ms: u64,
    /// Lowest free disk space seen, when it was measured.
    pub disk_free_bytes_min: Option<u64>,
    /// Highest upload backlog (clips waiting) seen.
    pub backlog_max: u64,
    /// Most live recorded sessions seen.
    pub live_sessions_max: u64,
    /// Recording time of the clips encoded in the period.
    pub encoded_media_ms: u64,
    /// Time the encoders spent on them (summed over encoders).
    pub encode_busy_ms: u64,
}

impl TrendPoint {
    /// Encoding speed as a multiple of real time (2.0 = an hour of recording in 30 min of one
    /// encoder), when something was encoded.
    pub fn encode_speed(&self) -> Option<f64> {
        (self.encode_busy_ms > 0).then(|| self.encoded_media_ms as f64 / self.encode_busy_ms as f64)
    }
}

/// The bounded ring of trend points plus the running one.
#[derive(Debug, Default)]
struct Trends {
    done: VecDeque<TrendPoint>,
    current: Option<TrendPoint>,
}

impl Trends {
    /// The running point for `now_ms`, closing the previous one when its period is over.
    fn point(&mut self, now_ms: u64) -> &mut TrendPoint {
        let at_ms = now_ms - now_ms % STATUS_TREND_SAMPLE_MS;
        if let Some(cur) = self.current.take_if(|c| c.at_ms != at_ms) {
            if self.done.len() == STATUS_TREND_SAMPLES_MAX {
                self.done.pop_front();
            }
            self.done.push_back(cur);
        }
        self.current.get_or_insert(TrendPoint {
            at_ms,
            ..TrendPoint::default()
        })
    }

    fn observe(&mut self, now_ms: u64, s: &StatusSnapshot) {
        let p = self.point(now_ms);
        if let Some(free) = s.disk.free_bytes {
            p.disk_free_bytes_min = Some(p.disk_free_bytes_min.map_or(free, |m| m.min(free)));
        }
        p.backlog_max = p.backlog_max.max(s.uploads.backlog);
        p.live_sessions_max = p.live_sessions_max.max(s.live_sessions);
    }

    /// The points of the last `STATUS_TREND_SAMPLES_MAX` periods, oldest first, the running
    /// one last.
    fn points(&self, now_ms: u64) -> Vec<TrendPoint> {
        let running = now_ms - now_ms % STATUS_TREND_SAMPLE_MS;
        let since =
            running.saturating_sub(STATUS_TREND_SAMPLE_MS * (STATUS_TREND_SAMPLES_MAX as u64 - 1));
        self.done
            .iter()
            .chain(self.current.iter())
            .filter(|p| p.at_ms >= since)
            .copied()
            .collect()
    }
}

// ---- segments being written ----

/// The segment files being written now (by the tap), with their bytes so far, and the ones
/// sealed since the retention last measured the disk. Cheap to clone (an `Arc` inside).
#[derive(Debug, Clone, Default)]
pub struct WritingSegments {
    inner: Arc<Mutex<Writing>>,
}

#[derive(Debug, Default)]
struct Writing {
    files: HashMap<PathBuf, Arc<AtomicU64>>,
    /// Sealed since the last measure: (files, bytes).
    sealed: (u64, u64),
}

/// What [`WritingSegments::totals`] counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WritingTotals {
    /// Segments being written.
    pub writing: u64,
    /// Their bytes so far.
    pub writing_bytes: u64,
    /// Segments sealed since the retention last measured the disk.
    pub sealed: u64,
    /// Their bytes.
    pub sealed_bytes: u64,
}

impl WritingSegments {
    /// Lists `path` as being written until the returned handle is dropped (sealed) or
    /// discarded.
    pub fn start(&self, path: PathBuf) -> WritingSegment {
        let bytes = Arc::new(AtomicU64::new(0));
        self.lock().files.insert(path.clone(), bytes.clone());
        WritingSegment {
            set: self.clone(),
            path,
            bytes,
            kept: true,
        }
    }

    /// Whether `path` is being written.
    pub fn contains(&self, path: &Path) -> bool {
        self.lock().files.contains_key(path)
    }

    /// The segments being written and those sealed since the last measure.
    pub fn totals(&self) -> WritingTotals {
        let w = self.lock();
        WritingTotals {
            writing: w.files.len() as u64,
            writing_bytes: w.files.values().map(|b| b.load(Ordering::Relaxed)).sum(),
            sealed: w.sealed.0,
            sealed_bytes: w.sealed.1,
        }
    }

    /// The retention starts measuring the disk: segments sealed from now on are counted here
    /// until the next measure.
    pub fn measuring(&self) {
        self.lock().sealed = (0, 0);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Writing> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One segment file being written; dropping it takes it off the list as sealed (kept on disk).
#[derive(Debug)]
pub struct WritingSegment {
    set: WritingSegments,
    path: PathBuf,
    bytes: Arc<AtomicU64>,
    kept: bool,
}

impl WritingSegment {
    /// The segment holds `bytes` now (buffered ones included).
    pub fn set_bytes(&self, bytes: u64) {
        self.bytes.store(bytes, Ordering::Relaxed);
    }

    /// The list it is on.
    pub fn set(&self) -> &WritingSegments {
        &self.set
    }

    /// Takes it off the list as removed (nothing kept on disk).
    pub fn discard(mut self) {
        self.kept = false;
    }
}

impl Drop for WritingSegment {
    fn drop(&mut self) {
        let mut w = self.set.lock();
        w.files.remove(&self.path);
        if self.kept {
            w.sealed.0 += 1;
            w.sealed.1 += self.bytes.load(Ordering::Relaxed);
        }
    }
}

/// The shared board. Cheap to clone (an `Arc` inside).
#[derive(Clone)]
pub struct StatusBoard {
    inner: Arc<RwLock<StatusSnapshot>>,
    trends: Arc<Mutex<Trends>>,
    clock: Arc<dyn Clock>,
    writing: WritingSegments,
}

impl StatusBoard {
    /// A board for a daemon started now with `encoders` encoder threads.
    pub fn new(clock: Arc<dyn Clock>, floor_bytes: u64, encoders: usize) -> Self {
        let snapshot = StatusSnapshot {
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_ms: clock.now_ms(),
            disk: DiskStatus {
                state: DiskState::Unknown,
                free_bytes: None,
                floor_bytes,
            },
            queue_counts: BTreeMap::new(),
            encoders: vec![
                EncoderStatus {
                    core: None,
                    job: None
                };
                encoders
            ],
            uploads: UploadStatus::default(),
            manifests: ManifestFacts::default(),
            settings_problems: Vec::new(),
            restart_pending: Vec::new(),
            live_sessions: 0,
            recent_errors: VecDeque::new(),
            retention: RetentionFacts::default(),
            tap: TapStatus::default(),
            fleet: FleetStatus::default(),
            search: SearchFacts::default(),
            ocr: OcrFacts::default(),
        };
        Self {
            inner: Arc::new(RwLock::new(snapshot)),
            trends: Arc::new(Mutex::new(Trends::default())),
            clock,
            writing: WritingSegments::default(),
        }
    }

    /// A copy of the current state, the segments being written (and those sealed since the
    /// retention last measured the disk) counted as they are now.
    pub fn snapshot(&self) -> StatusSnapshot {
        let mut s = self.read(|s| s.clone());
        let t = self.writing.totals();
        if t.writing > 0 {
            *s.queue_counts
                .entry("segments_writing".to_string())
                .or_default() += t.writing;
        }
        s.retention.raw_segment_bytes += t.writing_bytes + t.sealed_bytes;
        s.retention.raw_segment_files += t.writing + t.sealed;
        s
    }

    /// The segment files being written (the tap lists them; the retention's walk skips them).
    pub fn writing_segments(&self) -> &WritingSegments {
        &self.writing
    }

    /// Applies `f` to the board under the write lock. Keep `f` short: readers wait for it.
    pub fn update(&self, f: impl FnOnce(&mut StatusSnapshot)) {
        // A panic while holding the lock poisons it; the data is plain facts, so keep serving.
        let mut guard = self.inner.write().unwrap_or_else(|p| p.into_inner());
        f(&mut guard);
        let now_ms = self.clock.now_ms();
        self.trends
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .observe(now_ms, &guard);
    }

    /// Adds an encoded clip to the trend: `media_ms` of recording took `busy_ms` of one
    /// encoder.
    pub fn record_encode(&self, media_ms: u64, busy_ms: u64) {
        let now_ms = self.clock.now_ms();
        let mut t = self.trends.lock().unwrap_or_else(|p| p.into_inner());
        let p = t.point(now_ms);
        p.encoded_media_ms = p.encoded_media_ms.saturating_add(media_ms);
        p.encode_busy_ms = p.encode_busy_ms.saturating_add(busy_ms.max(1));
    }

    /// The trend points of the last 24 h, oldest first (the running period last).
    pub fn trends(&self) -> Vec<TrendPoint> {
        let now_ms = self.clock.now_ms();
        self.trends
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .points(now_ms)
    }

    fn read<T>(&self, f: impl FnOnce(&StatusSnapshot) -> T) -> T {
        let guard = self.inner.read().unwrap_or_else(|p| p.into_inner());
        f(&guard)
    }

    /// Records an error for the status page (the caller logs it too).
    pub fn record_error(&self, source: &str, message: &str) {
        let at_ms = self.clock.now_ms();
        let message: String = message.chars().take(STATUS_ERROR_CHARS_MAX).collect();
        self.update(|s| {
            if s.recent_errors.len() == STATUS_ERRORS_MAX {
                s.recent_errors.pop_front();
            }
            s.recent_errors.push_back(ErrorEntry {
                at_ms,
                source: source.to_string(),
                message,
            });
        });
    }

    /// Records an error unless the newest one already says the same (a failure retried
    /// every few seconds shows once, not as a flood that hides the others).
    pub fn record_error_unless_repeated(&self, source: &str, message: &str) {
        let message: String = message.chars().take(STATUS_ERROR_CHARS_MAX).collect();
        let repeated = self.read(|s| {
            s.recent_errors
                .back()
                .is_some_and(|e| e.source == source && e.message == message)
        });
        if !repeated {
            self.record_error(source, &message);
        }
    }

    /// The clock the board stamps errors with.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    #[test]
    fn keeps_only_the_most_recent_errors() {
        let board = StatusBoard::new(Arc::new(ManualClock::new(1)), 100, 2);
        for i in 0..STATUS_ERRORS_MAX + 5 {
            board.record_error("test", &format!("error {i}"));
        }
        let s = board.snapshot();
        assert_eq!(s.recent_errors.len(), STATUS_ERRORS_MAX);
        assert_eq!(s.recent_errors.front().unwrap().message, "error 5");
        assert_eq!(s.encoders.len(), 2);
    }

    #[test]
    fn upstream_changes_are_reported_once_and_dated() {
        let clock = Arc::new(ManualClock::new(1_000));
        let board = StatusBoard::new(clock.clone(), 100, 1);
        assert!(board.set_upstream(false, Some("connection refused".into())));
        clock.set_ms(2_000);
        assert!(!board.set_upstream(false, Some("timed out".into())));
        let t = board.snapshot().tap;
        assert_eq!(t.upstream_reachable, Some(false));
        assert_eq!(t.upstream_error.as_deref(), Some("timed out"));
        assert_eq!(
            t.upstream_since_ms,
            Some(1_000),
            "down since the first failure"
        );
        clock.set_ms(3_000);
        assert!(board.set_upstream(true, None));
        let t = board.snapshot().tap;
        assert_eq!(
            (t.upstream_reachable, t.upstream_error, t.upstream_since_ms),
            (Some(true), None, Some(3_000))
        );
    }

    #[test]
    fn trends_keep_the_worst_of_each_period_and_at_most_a_day() {
        let clock = Arc::new(ManualClock::new(STATUS_TREND_SAMPLE_MS * 1000));
        let board = StatusBoard::new(clock.clone(), 100, 1);
        board.update(|s| {
            s.disk.free_bytes = Some(900);
            s.uploads.backlog = 2;
        });
        board.update(|s| {
            s.disk.free_bytes = Some(700);
            s.uploads.backlog = 1;
            s.live_sessions = 3;
        });
        board.record_encode(60_000, 20_000);
        let t = board.trends();
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].disk_free_bytes_min, Some(700));
        assert_eq!(t[0].backlog_max, 2);
        assert_eq!(t[0].live_sessions_max, 3);
        assert_eq!(t[0].encode_speed(), Some(3.0));
        // A day and a half of periods: only the last day stays, bounded.
        for i in 1..=STATUS_TREND_SAMPLES_MAX as u64 * 3 / 2 {
            clock.set_ms(STATUS_TREND_SAMPLE_MS * (1000 + i));
            board.update(|s| s.uploads.backlog = i);
        }
        let t = board.trends();
        assert!(t.len() <= STATUS_TREND_SAMPLES_MAX, "{}", t.len());
        assert!(t.len() >= STATUS_TREND_SAMPLES_MAX - 1, "{}", t.len());
        assert_eq!(
            t.last().unwrap().backlog_max,
            STATUS_TREND_SAMPLES_MAX as u64 * 3 / 2
        );
        assert!(t.windows(2).all(|w| w[0].at_ms < w[1].at_ms));
        assert_eq!(
            board.trends.lock().unwrap().done.len(),
            STATUS_TREND_SAMPLES_MAX
        );
    }

    #[test]
    fn users_that_fit_counts_above_the_floor() {
        let d = DiskStatus {
            state: DiskState::Available,
            free_bytes: Some(3_500_000_000),
            floor_bytes: 500_000_000,
        };
        assert_eq!(d.users_that_fit(), 3);
    }

    #[test]
    fn segments_being_written_count_live_in_the_snapshot() {
        let board = StatusBoard::new(Arc::new(crate::clock::ManualClock::new(1_000)), 0, 1);
        board.update(|s| {
            s.queue_counts.insert("segments_writing".into(), 0);
            s.retention.raw_segment_bytes = 5_000;
            s.retention.raw_segment_files = 2;
        });
        let a = board.writing_segments().start("s/000000.guac".into());
        let b = board.writing_segments().start("t/000003.guac".into());
        a.set_bytes(700);
        b.set_bytes(300);
        let s = board.snapshot();
        assert_eq!(s.queue_counts["segments_writing"], 2);
        assert_eq!(
            (s.retention.raw_segment_bytes, s.retention.raw_segment_files),
            (6_000, 4)
        );
        // Sealed: no longer being written, still held until the retention measures it.
        drop(a);
        b.discard();
        let s = board.snapshot();
        assert_eq!(s.queue_counts["segments_writing"], 0);
        assert_eq!(
            (s.retention.raw_segment_bytes, s.retention.raw_segment_files),
            (5_700, 3)
        );
        board.writing_segments().measuring();
        assert_eq!(board.snapshot().retention.raw_segment_bytes, 5_000);
    }
}
