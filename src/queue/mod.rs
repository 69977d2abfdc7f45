//! The durable LMDB queue (heed + postcard). The only module that touches LMDB.
//!
//! Owns the environment, one typed database per concern ([`db_name`]), the versioned records
//! ([`records`]), the state machines of sessions, segments and clips, the audit log, the web
//! accounts (and the one-time drop of the old web settings table). It does not own files on disk (the tap, encoders and
//! retention create and delete them) nor any policy (retry schedules, retention ages: callers
//! pass times and limits in).
//!
//! Callers (daemon wiring, spool import, encoder workers, upload and manifest workers, tap,
//! HTTP server) share one `Arc<Queue>`. Every function is a plain synchronous `fn` that opens, uses and
//! closes its own transaction: no `RoTxn`/`RwTxn` ever leaves this module, so none can be held
//! across an `.await`. A commit costs one fsync (~1 ms), so call these from a blocking-capable
//! thread or accept that cost on an executor thread.
//!
//! Who calls what (all through `Arc<Queue>`):
//! - daemon start-up: [`Queue::open`], [`Queue::recover`] (before any worker), then for each
//!   of [`Queue::sessions_left_open`] (after cutting its files on disk back to a complete
//!   frame) [`Queue::end_interrupted_session`], before the tap accepts connections.
//! - tap: [`Queue::register_session`], [`Queue::register_segment`] (`Writing`), then
//!   `transition_segment(id, Writing, Sealed, patch)` when the file rolls or the session ends,
//!   and `transition_session(id, Live, Closed, Some(end_ms))`.
//! - spool import: [`Queue::register_session`], [`Queue::register_segments`] (`sealed: true`).
//! - encoder: [`Queue::next_segment_to_encode`], then [`Queue::finish_encoding`] with the clips,
//!   or `transition_segment(id, Encoding, Sealed | Failed | Quarantined, ..)`.
//! - uploader: [`Queue::next_clip_to_upload`], then `transition_clip(id, Uploading, Uploaded,
//!   ..)` (with the object key) or `Failed { transient, next_attempt_ms, .. }`.
//! - retention: [`Queue::clips_older_than`] then `Expired` / `LocalDeleted` transitions;
//!   [`Queue::raw_segments_after`], [`Queue::purge_history`], [`Queue::purge_audit`].
//! - manifest worker: [`Queue::next_owed_manifest`] (marked owed by the clip, segment and
//!   session changes themselves, in their transaction), then for the fleet manifest
//!   [`Queue::manifest_filing`], [`Queue::intend_manifest`] before its put,
//!   [`Queue::manifest_filed`] after it, [`Queue::manifest_deleted`] after each superseded
//!   key's delete; finally [`Queue::manifest_paid`] or [`Queue::manifest_retry_at`].
//! - HTTP: listings ([`Queue::list_sessions`], [`Queue::clips_of_session`], [`Queue::counts`],
//!   [`Queue::list_audit`]), [`Queue::append_audit`] for views and downloads, accounts.
//! - daemon start-up, once: [`Queue::legacy_settings`] then [`Queue::drop_legacy_settings`]
//!   (settings saved by an older web page move into the config file).
//!
//! Layout:
//! - `mod.rs`: [`Queue`], opening, the transaction helpers (map growth, fail-points).
//! - `records.rs`: stored types and state-machine edges.
//! - `codec.rs`: postcard values, big-endian keys, decode errors with db/key context.
//! - `work.rs`: registration, the public transitions, work pulling, recovery of work items.
//! - `store.rs`: load and put of each record with its indexes, the audit append (the floor
//!   that `transition.rs`, `work.rs`, `recover.rs`, `query.rs` and `accounts.rs` stand on).
//! - `transition.rs`: the one state-change path (`Machine` over sessions, segments, clips).
//! - `recover.rs`: start-up recovery of sessions a crash left open.
//! - `query.rs`: counts, listings, retention queries, the audit log.
//! - `accounts.rs`: users, API tokens, web sessions, the old web settings table.
//! - `retention.rs`: raw segments ready to leave the disk, the bounded purge of old history and
//!   audit entries.
//! - `ocr.rs`: the screen text (OCR) work of clips: reads waiting, objects to upload.
//! - `manifests.rs`: the manifests owed, and the write-ahead record of each session's fleet
//!   manifest filing.

mod accounts;
mod codec;
mod error;
mod manifests;
mod ocr;
mod query;
pub mod records;
mod recover;
mod retention;
mod store;
mod transition;
mod work;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, RwLock};

use heed::types::{Bytes, Str, U64, Unit};
use heed::{CommitOrAbort, Database, Env, EnvOpenOptions, RoTxn, RwTxn, WithoutTls};

use crate::clock::Clock;
use crate::limits;

pub use codec::{Postcard, Versioned};
pub use error::{Entity, QueueError};
pub use manifests::OwedNext;
pub use ocr::{OCR_ATTEMPTS_MAX, OcrCounts, OcrState, OcrTask, OcrUpload, OcrWork};
pub use query::{
    AuditFilter, ClipCounts, Page, QueueCounts, SegmentCounts, SessionCounts, SessionCursor,
    SessionFilter, SessionPage,
};
pub use records::*;
pub use recover::{InterruptedEnd, RecoveredSegment};
pub use retention::{PurgedAudit, PurgedHistory, RawSegment, RawSegmentPage};
pub use work::Recovery;

use codec::{Pair, RecordDb, TagId};
use ocr::OcrRecord;

/// Big-endian u64 key codec: keys sort numerically, so ids iterate oldest first.
type BeU64 = U64<heed::byteorder::BigEndian>;

/// Names of the LMDB databases. Stored in the environment: never rename one.
pub mod db_name {
    /// Counters (`next_*_id`) and the schema version.
    pub const META: &str = "meta";
    /// Session id -> `SessionRecord`.
    pub const SESSIONS: &str = "sessions";
    /// External session id -> session id (unique index).
    pub const SESSION_BY_EXTERNAL: &str = "session-by-external";
    /// Segment id -> `SegmentRecord`.
    pub const SEGMENTS: &str = "segments";
    /// (state tag, session id) -> () (live sessions, counts).
    pub const SESSION_BY_STATE: &str = "session-by-state";
    /// (session id, index) -> segment id (unique index; session order).
    pub const SEGMENT_BY_POSITION: &str = "segment-by-position";
    /// (state tag, segment id) -> () (counts, recovery, listings by state).
    pub const SEGMENT_BY_STATE: &str = "segment-by-state";
    /// Segment id -> () for `Sealed` segments whose predecessor is settled: the encoders' work
    /// queue, so pulling is one cursor step. Derived; rebuilt by `recover()`.
    pub const SEGMENT_READY: &str = "segment-ready";
    /// Clip id -> `ClipRecord`.
    pub const CLIPS: &str = "clips";
    /// (segment id, index) -> clip id (unique index).
    pub const CLIP_BY_POSITION: &str = "clip-by-position";
    /// (session id, clip id) -> () (clips of a session).
    pub const CLIP_BY_SESSION: &str = "clip-by-session";
    /// (state tag, clip id) -> () (counts, retention).
    pub const CLIP_BY_STATE: &str = "clip-by-state";
    /// (due ms, clip id) -> () for clips waiting for an upload attempt.
    pub const CLIP_DUE: &str = "clip-due";
    /// Sequence -> `AuditRecord` (append-only).
    pub const AUDIT: &str = "audit";
    /// User name -> `UserRecord`.
    pub const USERS: &str = "users";
    /// Token hash -> `TokenRecord`.
    pub const TOKENS: &str = "tokens";
    /// Cookie id hash -> `WebSessionRecord`.
    pub const WEB_SESSIONS: &str = "web-sessions";
    /// 0 -> `SettingsRecord`: the settings the web page saved before they moved into the
    /// config file. No longer created; an old queue's table is read once by the move and
    /// dropped.
    pub const SETTINGS: &str = "settings";
    /// Session id -> `ManifestFilingRecord`: the fleet manifest filing of the session.
    pub const MANIFEST_FILINGS: &str = "manifest-filings";
    /// Session id -> () for filings with a step owed (put not confirmed, delete not done).
    /// Derived from `manifest-filings`, written in the same transactions.
    pub const MANIFEST_UNFINISHED: &str = "manifest-unfinished";
    /// (start ms, session id) -> (): the history's order, newest start first, id as
    /// tie-break. Derived from `sessions`, written with them; built at open for a queue of
    /// schema 1.
    pub const SESSION_BY_START: &str = "session-by-start";
    /// Session id -> `OwedManifestRecord`: sessions whose manifests are owed.
    pub const MANIFEST_OWED: &str = "manifest-owed";
    /// (due ms, session id) -> (): the manifest worker's order. Derived from
    /// `manifest-owed`, written in the same transactions.
    pub const MANIFEST_OWED_DUE: &str = "manifest-owed-due";
    /// Clip id -> `OcrRecord`: the screen text (OCR) work of the clip.
    pub const OCR: &str = "ocr";
    /// (state tag, clip id) -> (): OCR work by state, oldest first. Derived from `ocr`,
    /// written in the same transactions.
    pub const OCR_BY_STATE: &str = "ocr-by-state";
}

/// Every database the queue creates at open, one per line (the old `settings` table is only
/// opened, never created).
const DATABASES: [&str; 24] = [
    db_name::META,
    db_name::SESSIONS,
    db_name::SESSION_BY_EXTERNAL,
    db_name::SESSION_BY_STATE,
    db_name::SESSION_BY_START,
    db_name::SEGMENTS,
    db_name::SEGMENT_BY_POSITION,
    db_name::SEGMENT_BY_STATE,
    db_name::SEGMENT_READY,
    db_name::CLIPS,
    db_name::CLIP_BY_POSITION,
    db_name::CLIP_BY_SESSION,
    db_name::CLIP_BY_STATE,
    db_name::CLIP_DUE,
    db_name::AUDIT,
    db_name::USERS,
    db_name::TOKENS,
    db_name::WEB_SESSIONS,
    db_name::MANIFEST_FILINGS,
    db_name::MANIFEST_UNFINISHED,
    db_name::MANIFEST_OWED,
    db_name::MANIFEST_OWED_DUE,
    db_name::OCR,
    db_name::OCR_BY_STATE,
];
const _: () = assert!(DATABASES.len() < limits::QUEUE_DBS_MAX as usize);

/// Schema version written in `meta` at creation; checked at open. Version 2 added
/// `session-by-start`, which opening a version 1 queue builds; version 3 added
/// `manifest-owed`, which opening an older queue fills with the ended sessions whose final
/// manifest is not filed (see `Queue::migrate_schema`); version 4 added `ocr` and
/// `ocr-by-state`, empty in an older queue (its clips were filed without OCR).
const SCHEMA_VERSION: u64 = 4;

/// A named point where a test can make the queue fail, to simulate a crash between two steps.
///
/// `*Write` points fire after the records are written but before the commit: the transaction
/// is aborted, exactly as if the process died there. `AfterCommit` fires after a successful
/// commit: the change is durable but the caller sees an error (a crash before the caller could
/// act on the acknowledgement).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Failpoint {
    /// In `register_segment`, after the segment record and indexes are written.
    AfterSegmentWrite = 1,
    /// In `register_clip` / `finish_encoding`, after the clip records are written.
    AfterClipWrite = 2,
    /// In every transition (including work pulling and recovery), after the write.
    AfterTransitionWrite = 3,
    /// After any successful commit.
    AfterCommit = 4,
    /// In `intend_manifest`, `manifest_filed` and `manifest_deleted`, after the filing record
    /// is written.
    AfterManifestFilingWrite = 5,
    /// In `next_owed_manifest`, when it hands out a due manifest: the process dies after the
    /// change that made the manifest owed (a clip's upload) committed and before the manifest
    /// worker wrote anything.
    OwedManifestTaken = 6,
    /// In every change of a clip's OCR work (`ocr_read`, `ocr_uploaded`...), after the
    /// record is written.
    AfterOcrWrite = 7,
}

/// How to open the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueOptions {
    /// Directory of the LMDB environment (created if missing).
    pub dir: PathBuf,
    /// Map size to open with (rounded up to the page size, capped at `map_bytes_max`); an
    /// existing file holding more data wins.
    pub map_bytes_initial: usize,
    /// Largest map the queue grows to before answering [`QueueError::Full`].
    pub map_bytes_max: usize,
}

impl QueueOptions {
    /// Options with the default limits from [`crate::limits`].
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            map_bytes_initial: limits::QUEUE_MAP_BYTES_INITIAL,
            map_bytes_max: limits::QUEUE_MAP_BYTES_MAX,
        }
    }
}

/// The typed databases. `Database<'static, ..>` handles are plain ids, valid while the env is.
#[derive(Clone, Copy)]
struct Dbs {
    meta: Database<'static, Str, BeU64>,
    sessions: RecordDb<BeU64, SessionRecord>,
    session_by_external: Database<'static, Str, BeU64>,
    session_by_state: Database<'static, TagId, Unit>,
    segments: RecordDb<BeU64, SegmentRecord>,
    segment_by_position: Database<'static, Pair, BeU64>,
    segment_by_state: Database<'static, TagId, Unit>,
    segment_ready: Database<'static, BeU64, Unit>,
    clips: RecordDb<BeU64, ClipRecord>,
    clip_by_position: Database<'static, Pair, BeU64>,
    clip_by_session: Database<'static, Pair, Unit>,
    clip_by_state: Database<'static, TagId, Unit>,
    clip_due: Database<'static, Pair, Unit>,
    audit: RecordDb<BeU64, AuditRecord>,
    users: RecordDb<Str, UserRecord>,
    tokens: RecordDb<Str, TokenRecord>,
    web_sessions: RecordDb<Str, WebSessionRecord>,
    manifest_filings: RecordDb<BeU64, ManifestFilingRecord>,
    manifest_unfinished: Database<'static, BeU64, Unit>,
    session_by_start: Database<'static, Pair, Unit>,
    manifest_owed: RecordDb<BeU64, OwedManifestRecord>,
    manifest_owed_due: Database<'static, Pair, Unit>,
    ocr: RecordDb<BeU64, OcrRecord>,
    ocr_by_state: Database<'static, TagId, Unit>,
}

/// The durable queue. `Send + Sync`; share it as `Arc<Queue>`.
pub struct Queue {
    env: Env<WithoutTls>,
    dbs: Dbs,
    clock: Arc<dyn Clock>,
    map_bytes_max: usize,
    /// Every transaction holds this for reading; growing the map takes it for writing, because
    /// LMDB allows `mdb_env_set_mapsize` only while no transaction is open in the process.
    gate: RwLock<()>,
    /// Armed fail-point (0 = none), see [`Failpoint`].
    failpoint: AtomicU8,
    /// The old web settings table, while an old queue still has it (see `accounts.rs`).
    legacy_settings: std::sync::Mutex<Option<RecordDb<BeU64, SettingsRecord>>>,
    /// Whether newly encoded clips are marked for OCR (setting `search.ocr`).
    ocr_wanted: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("dir", &self.env.path())
            .field("map_bytes", &self.env.info().map_size)
            .field("map_bytes_max", &self.map_bytes_max)
            .finish_non_exhaustive()
    }
}

/// Rounds up to a multiple of the OS page size (LMDB requires it for the map size).
fn page_round(bytes: usize) -> usize {
    // SAFETY: sysconf has no preconditions; it returns -1 on error, handled below.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let page = if page > 0 { page as usize } else { 4096 };
    bytes.div_ceil(page).saturating_mul(page)
}

impl Queue {
    /// Opens (or creates) the queue in `options.dir`.
    ///
    /// Does not run [`Queue::recover`]: the daemon calls it once, before starting workers.
    ///
    /// # Errors
    /// [`QueueError::Io`] if the directory cannot be created or the environment is already open
    /// in this process; [`QueueError::Lmdb`] if LMDB refuses the file; [`QueueError::UnknownVersion`]
    /// if the queue was written by a newer schema.
    pub fn open(options: &QueueOptions, clock: Arc<dyn Clock>) -> Result<Queue, QueueError> {
        let map_bytes_max = page_round(options.map_bytes_max);
        let map_bytes_initial = page_round(options.map_bytes_initial).min(map_bytes_max);
        std::fs::create_dir_all(&options.dir)?;
        let mut builder = EnvOpenOptions::new().read_txn_without_tls();
        builder
            .map_size(map_bytes_initial)
            .max_dbs(limits::QUEUE_DBS_MAX)
            .max_readers(limits::QUEUE_READERS_MAX);
        // SAFETY: heed's open is unsafe because LMDB must not be opened twice in one process
        // (heed checks this itself and returns EnvAlreadyOpened) and the file must not be
        // modified by other means; the queue directory belongs to this daemon alone.
        let env = unsafe { builder.open(&options.dir)? };
        let (dbs, legacy_settings) = Self::create_databases(&env)?;
        let queue = Queue {
            env,
            dbs,
            clock,
            map_bytes_max,
            gate: RwLock::new(()),
            failpoint: AtomicU8::new(0),
            legacy_settings: std::sync::Mutex::new(legacy_settings),
            ocr_wanted: std::sync::atomic::AtomicBool::new(false),
        };
        queue.check_schema()?;
        log::info!(
            "queue opened dir={} map_bytes={} map_bytes_max={}",
            options.dir.display(),
            queue.env.info().map_size,
            queue.map_bytes_max
        );
        Ok(queue)
    }

    /// Creates (or opens) every database of [`DATABASES`] in one committed transaction, then
    /// types each one by name. A queue from an older build gains the databases added since,
    /// empty (`check_schema` fills the derived ones). The old web settings table is only
    /// opened: present in queues from before settings moved into the config file.
    #[allow(clippy::type_complexity)]
    fn create_databases(
        env: &Env<WithoutTls>,
    ) -> Result<(Dbs, Option<RecordDb<BeU64, SettingsRecord>>), QueueError> {
        let wtxn = env.write_txn()?;
        let (all, legacy) = env
            .create_databases_and_commit(wtxn, |o, w| -> Result<_, heed::Error> {
                let mut all = Vec::with_capacity(DATABASES.len());
                for name in DATABASES {
                    all.push(o.create_database::<Bytes, Bytes>(w, Some(name))?);
                }
                let all: [_; DATABASES.len()] = all.try_into().expect("one per name");
                let legacy = o.open_database::<Bytes, Bytes>(w, Some(db_name::SETTINGS))?;
                Ok(CommitOrAbort::<_, ()>::Commit((all, legacy)))
            })?
            .unwrap_commit();
        let raw = |name: &str| {
            let at = DATABASES.iter().position(|n| *n == name);
            all[at.expect("a name of DATABASES")]
        };
        fn record<R: 'static, K: 'static>(
            db: Database<'static, Bytes, Bytes>,
            name: &'static str,
        ) -> RecordDb<K, R> {
            RecordDb {
                db: db.remap_types(),
                name,
            }
        }
        use db_name::*;
        let dbs = Dbs {
            meta: raw(META).remap_types(),
            sessions: record(raw(SESSIONS), SESSIONS),
            session_by_external: raw(SESSION_BY_EXTERNAL).remap_types(),
            session_by_state: raw(SESSION_BY_STATE).remap_types(),
            session_by_start: raw(SESSION_BY_START).remap_types(),
            segments: record(raw(SEGMENTS), SEGMENTS),
            segment_by_position: raw(SEGMENT_BY_POSITION).remap_types(),
            segment_by_state: raw(SEGMENT_BY_STATE).remap_types(),
            segment_ready: raw(SEGMENT_READY).remap_types(),
            clips: record(raw(CLIPS), CLIPS),
            clip_by_position: raw(CLIP_BY_POSITION).remap_types(),
            clip_by_session: raw(CLIP_BY_SESSION).remap_types(),
            clip_by_state: raw(CLIP_BY_STATE).remap_types(),
            clip_due: raw(CLIP_DUE).remap_types(),
            audit: record(raw(AUDIT), AUDIT),
            users: record(raw(USERS), USERS),
            tokens: record(raw(TOKENS), TOKENS),
            web_sessions: record(raw(WEB_SESSIONS), WEB_SESSIONS),
            manifest_filings: record(raw(MANIFEST_FILINGS), MANIFEST_FILINGS),
            manifest_unfinished: raw(MANIFEST_UNFINISHED).remap_types(),
            manifest_owed: record(raw(MANIFEST_OWED), MANIFEST_OWED),
            manifest_owed_due: raw(MANIFEST_OWED_DUE).remap_types(),
            ocr: record(raw(OCR), OCR),
            ocr_by_state: raw(OCR_BY_STATE).remap_types(),
        };
        Ok((dbs, legacy.map(|db| record(db, SETTINGS))))
    }

    /// Writes the schema version on a fresh queue, migrates an older one in the same
    /// transaction, refuses a queue from a newer schema.
    fn check_schema(&self) -> Result<(), QueueError> {
        const KEY: &str = "schema-version";
        self.write(|w, d| match d.meta.get(w, KEY)? {
            None if d.sessions.raw().is_empty(w)? => {
                d.meta.put(w, KEY, &SCHEMA_VERSION)?;
                Ok(())
            }
            // No version but sessions: written before the version was (treated as 1).
            None => Self::migrate_schema(w, d, 1),
            Some(v) if v < SCHEMA_VERSION => Self::migrate_schema(w, d, v),
            Some(SCHEMA_VERSION) => Ok(()),
            Some(v) => Err(QueueError::UnknownVersion {
                db: db_name::META,
                key: KEY.into(),
                version: v,
            }),
        })
    }

    /// Brings a queue of schema `from` to [`SCHEMA_VERSION`] inside the opening write
    /// transaction: all or nothing, and a crash halfway leaves the old version to migrate
    /// again.
    fn migrate_schema(w: &mut RwTxn, d: &Dbs, from: u64) -> Result<(), QueueError> {
        if from < 2 {
            let indexed = store::index_sessions_by_start(w, d)?;
            log::info!("queue migrated schema from=1 to=2 sessions_indexed_by_start={indexed}");
        }
        if from < 3 {
            let owed = manifests::owe_unfiled_manifests(w, d)?;
            log::info!("queue migrated schema from={from} to=3 manifests_owed={owed}");
        }
        if from < 4 {
            log::info!("queue migrated schema from={from} to=4 ocr_databases=created");
        }
        d.meta.put(w, "schema-version", &SCHEMA_VERSION)?;
        Ok(())
    }

    /// The environment directory.
    pub fn path(&self) -> &Path {
        self.env.path()
    }

    /// Current LMDB map size in bytes (grows on demand up to the configured maximum).
    pub fn map_bytes(&self) -> usize {
        self.env.info().map_size
    }

    /// Arms a fail-point (or disarms with `None`); it fires once, on the next operation that
    /// reaches it, then disarms itself. For crash tests.
    pub fn set_failpoint(&self, point: Option<Failpoint>) {
        self.failpoint
            .store(point.map_or(0, |p| p as u8), Ordering::SeqCst);
    }

    /// Fires `point` if it is armed.
    fn hit(&self, point: Failpoint) -> Result<(), QueueError> {
        let armed = self.failpoint.load(Ordering::Relaxed);
        if armed == point as u8
            && self
                .failpoint
                .compare_exchange(armed, 0, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            log::warn!("queue failpoint fired point={point:?}");
            return Err(QueueError::InjectedFailure(point));
        }
        Ok(())
    }

    fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Runs `f` in a read transaction.
    fn read<T>(
        &self,
        f: impl FnOnce(&RoTxn, &Dbs) -> Result<T, QueueError>,
    ) -> Result<T, QueueError> {
        let _gate = self.gate.read().unwrap_or_else(|p| p.into_inner());
        let rtxn = self.env.read_txn()?;
        f(&rtxn, &self.dbs)
    }

    /// Runs `f` in a write transaction and commits (fsync). On `MDB_MAP_FULL`, aborts, grows
    /// the map (doubling, up to the maximum) and runs `f` again: `f` must be repeatable, which
    /// it is because an aborted transaction left nothing behind.
    fn write<T>(
        &self,
        mut f: impl FnMut(&mut RwTxn, &Dbs) -> Result<T, QueueError>,
    ) -> Result<T, QueueError> {
        loop {
            let seen_map = {
                let _gate = self.gate.read().unwrap_or_else(|p| p.into_inner());
                let seen_map = self.env.info().map_size;
                match self.write_once(&mut f) {
                    Err(e) if e.is_map_full() => seen_map,
                    other => return other,
                }
            };
            self.grow(seen_map)?;
        }
    }

    fn write_once<T>(
        &self,
        f: &mut impl FnMut(&mut RwTxn, &Dbs) -> Result<T, QueueError>,
    ) -> Result<T, QueueError> {
        let mut wtxn = self.env.write_txn()?;
        let value = f(&mut wtxn, &self.dbs)?;
        wtxn.commit()?;
        self.hit(Failpoint::AfterCommit)?;
        Ok(value)
    }

    /// Doubles the map (capped at the maximum) unless another thread already grew it past
    /// `seen_map`.
    ///
    /// # Errors
    /// [`QueueError::Full`] when the map is already at its maximum.
    fn grow(&self, seen_map: usize) -> Result<(), QueueError> {
        let _gate = self.gate.write().unwrap_or_else(|p| p.into_inner());
        let current = self.env.info().map_size;
        if current > seen_map {
            return Ok(());
        }
        if current >= self.map_bytes_max {
            log::error!(
                "queue full map_bytes={current} map_bytes_max={}",
                self.map_bytes_max
            );
            return Err(QueueError::Full { map_bytes: current });
        }
        let new_size = page_round(current.saturating_mul(2)).min(self.map_bytes_max);
        // SAFETY: we hold the gate for writing, and every transaction in this process is opened
        // under the gate held for reading, so no transaction is active; LMDB allows resizing
        // then. (No other process opens the queue.)
        unsafe { self.env.resize(new_size)? };
        log::info!("queue map grown from_bytes={current} to_bytes={new_size}");
        Ok(())
    }

    /// Flushes everything to disk (commits already do; for shutdown paranoia).
    ///
    /// # Errors
    /// LMDB I/O errors.
    pub fn sync(&self) -> Result<(), QueueError> {
        let _gate = self.gate.read().unwrap_or_else(|p| p.into_inner());
        self.env.force_sync()?;
        Ok(())
    }
}

/// Next value of the named counter in `meta` (ids start at 1; 0 is never an id).
fn next_id(w: &mut RwTxn, d: &Dbs, counter: &str) -> Result<u64, QueueError> {
    let id = d.meta.get(w, counter)?.unwrap_or(0) + 1;
    d.meta.put(w, counter, &id)?;
    Ok(id)
}

/// Checks a string against its size limit.
fn check_len(field: &'static str, value: &str, max: usize) -> Result<(), QueueError> {
    if value.len() > max {
        return Err(QueueError::TooLarge {
            field,
            bytes: value.len(),
            max,
        });
    }
    Ok(())
}

/// Checks a path against the path size limit.
fn check_path(field: &'static str, path: &Path) -> Result<(), QueueError> {
    let bytes = path.as_os_str().len();
    if bytes > limits::QUEUE_PATH_BYTES_MAX {
        return Err(QueueError::TooLarge {
            field,
            bytes,
            max: limits::QUEUE_PATH_BYTES_MAX,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn queue_is_send_and_sync() {
        assert_send_sync::<Queue>();
        assert_send_sync::<Arc<Queue>>();
    }

    #[test]
    fn failpoint_fires_once() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(
            &QueueOptions::new(dir.path()),
            Arc::new(ManualClock::new(1)),
        )
        .unwrap();
        q.set_failpoint(Some(Failpoint::AfterCommit));
        assert!(matches!(q.hit(Failpoint::AfterClipWrite), Ok(())));
        assert!(matches!(
            q.hit(Failpoint::AfterCommit),
            Err(QueueError::InjectedFailure(Failpoint::AfterCommit))
        ));
        assert!(q.hit(Failpoint::AfterCommit).is_ok());
    }
}
