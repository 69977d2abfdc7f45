//! The history role's own LMDB index of the fleet's manifests: the only file of `fleet/` that
//! touches LMDB, with the queue's rules (plain synchronous functions, no transaction leaves
//! this file, versioned postcard records).
//!
//! Databases: `sessions` (cursor -> [`IndexedSession`]; the cursor is the session start in ms
//! shifted left 16 bits plus a disambiguator, so the natural order is newest-first by start),
//! `by_session` ((session id, appliance id) -> cursor: session ids come from the client or
//! guacd and are unique per appliance only, so two appliances may file the same one),
//! `by_appliance` (appliance, NUL, cursor -> ()), `manifests` (object key -> what was seen
//! there, so an unchanged object is never fetched twice), and `meta` (listing cursor, skip
//! counters, schema).
//!
//! Each clip carries a verdict on its bytes ([`ClipBytes`]): the signed manifest names a
//! SHA-256, and only hashing the object's bytes (the role's background verifier, or a whole
//! clip streamed to a viewer) shows that the bucket still holds those bytes.
//!
//! Called by the indexer (writes) and by serve's `FleetBackend` (reads). Knows nothing about
//! HTTP or the store.

use std::collections::BTreeMap;
use std::path::Path;

use heed::types::{Bytes, Str, U64, Unit};
use heed::{CommitOrAbort, Database, Env, EnvOpenOptions, WithoutTls};
use serde::{Deserialize, Serialize};

use crate::limits::{FLEET_INDEX_DBS_MAX, FLEET_INDEX_MAP_BYTES, FLEET_LIST_SCAN_ROWS_MAX};
use crate::manifest::signed::Integrity;
use crate::queue::Postcard;

type BeU64 = U64<heed::byteorder::BigEndian>;

mod db_name {
    pub const META: &str = "fleet_meta";
    pub const SESSIONS: &str = "fleet_sessions";
    /// Schema 1 (session id alone -> cursor); emptied by the schema 2 migration.
    pub const BY_SESSION_ID_V1: &str = "fleet_by_session_id";
    pub const BY_SESSION: &str = "fleet_by_session";
    pub const BY_APPLIANCE: &str = "fleet_by_appliance";
    pub const MANIFESTS: &str = "fleet_manifests";
}

/// Directory of the index under the role's data directory.
pub const INDEX_DIR: &str = "fleet-index";

const META_LIST_CURSOR: &str = "list_cursor";
const META_STATS: &str = "stats";
const META_SCHEMA: &str = "schema";
/// Schema 2: sessions keyed by (appliance, session id); clips carry a [`ClipBytes`] verdict.
const SCHEMA: u8 = 2;

/// Errors of the index.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// LMDB refused (full map, I/O, corrupt file).
    #[error("fleet index: {0}")]
    Lmdb(#[from] heed::Error),
    /// The directory could not be created.
    #[error("fleet index directory: {0}")]
    Io(#[from] std::io::Error),
}

impl crate::error::Classify for IndexError {
    fn is_transient(&self) -> bool {
        match self {
            IndexError::Io(e) => e.is_transient(),
            IndexError::Lmdb(heed::Error::Io(e)) => e.is_transient(),
            IndexError::Lmdb(_) => false,
        }
    }
}

/// One clip of an indexed session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexedClip {
    /// Object key of the MP4.
    pub key: String,
    /// Object key of the thumbnail.
    pub thumbnail_key: Option<String>,
    /// Size in bytes (from the manifest).
    pub size_bytes: u64,
    /// Hex SHA-256 (from the manifest).
    pub sha256: String,
    /// Start, ms.
    pub start_ms: u64,
    /// End, ms.
    pub end_ms: u64,
    /// The object is no longer in the bucket (lifecycle rule, deletion).
    pub gone: bool,
    /// What hashing the object's bytes found.
    pub bytes: ClipBytes,
    /// The clip's events object, as the manifest signed it.
    pub events: Option<EventsObjectRef>,
    /// The clip's screen text (OCR) events object, as the manifest signed it (a later version
    /// than the clip's own, once the appliance read and uploaded it).
    pub ocr: Option<EventsObjectRef>,
}

/// Where a clip's events object is and what its bytes must be (from the signed manifest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventsObjectRef {
    /// Object key.
    pub key: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Hex SHA-256.
    pub sha256: String,
}

/// Whether a clip object's bytes were hashed and matched the manifest's SHA-256.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ClipBytes {
    /// Not hashed yet (only the object's size and metadata were checked).
    #[default]
    Unverified,
    /// Hashed: size and SHA-256 match the manifest.
    Verified,
    /// Hashed: the bytes differ from what the manifest signed.
    Failed,
}

impl ClipBytes {
    /// Words for the history page.
    pub fn words(self) -> &'static str {
        match self {
            ClipBytes::Unverified => "integrity: unverified",
            ClipBytes::Verified => "integrity: verified",
            ClipBytes::Failed => "integrity: failed (bytes differ from the manifest's SHA-256)",
        }
    }
}

/// A clip as schema 1 stored it (no byte verdict).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct IndexedClipV1 {
    key: String,
    thumbnail_key: Option<String>,
    size_bytes: u64,
    sha256: String,
    start_ms: u64,
    end_ms: u64,
    gone: bool,
}

/// A session as schema 1 stored it: the fields of [`IndexedSession`] in order, clips without
/// a byte verdict.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct IndexedSessionV1 {
    appliance_id: String,
    session_id: String,
    user_id: String,
    username: String,
    workspace: String,
    protocol: String,
    start_ms: u64,
    end_ms: Option<u64>,
    state: String,
    version: u64,
    is_final: bool,
    integrity: Integrity,
    manifest_key: String,
    clips: Vec<IndexedClipV1>,
}

impl From<IndexedSessionV1> for IndexedSessionV2 {
    fn from(s: IndexedSessionV1) -> Self {
        IndexedSessionV2 {
            appliance_id: s.appliance_id,
            session_id: s.session_id,
            user_id: s.user_id,
            username: s.username,
            workspace: s.workspace,
            protocol: s.protocol,
            start_ms: s.start_ms,
            end_ms: s.end_ms,
            state: s.state,
            version: s.version,
            is_final: s.is_final,
            integrity: s.integrity,
            manifest_key: s.manifest_key,
            clips: s
                .clips
                .into_iter()
                .map(|c| IndexedClipV2 {
                    key: c.key,
                    thumbnail_key: c.thumbnail_key,
                    size_bytes: c.size_bytes,
                    sha256: c.sha256,
                    start_ms: c.start_ms,
                    end_ms: c.end_ms,
                    gone: c.gone,
                    bytes: ClipBytes::Unverified,
                })
                .collect(),
        }
    }
}

/// A clip as schema 2 stored it (no events object).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct IndexedClipV2 {
    key: String,
    thumbnail_key: Option<String>,
    size_bytes: u64,
    sha256: String,
    start_ms: u64,
    end_ms: u64,
    gone: bool,
    bytes: ClipBytes,
}

/// A session as schema 2 stored it: the fields of [`IndexedSession`] in order, clips without
/// an events object.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct IndexedSessionV2 {
    appliance_id: String,
    session_id: String,
    user_id: String,
    username: String,
    workspace: String,
    protocol: String,
    start_ms: u64,
    end_ms: Option<u64>,
    state: String,
    version: u64,
    is_final: bool,
    integrity: Integrity,
    manifest_key: String,
    clips: Vec<IndexedClipV2>,
}

impl From<IndexedSessionV2> for IndexedSessionV3 {
    fn from(s: IndexedSessionV2) -> Self {
        IndexedSessionV3 {
            appliance_id: s.appliance_id,
            session_id: s.session_id,
            user_id: s.user_id,
            username: s.username,
            workspace: s.workspace,
            protocol: s.protocol,
            start_ms: s.start_ms,
            end_ms: s.end_ms,
            state: s.state,
            version: s.version,
            is_final: s.is_final,
            integrity: s.integrity,
            manifest_key: s.manifest_key,
            clips: s
                .clips
                .into_iter()
                .map(|c| IndexedClipV3 {
                    key: c.key,
                    thumbnail_key: c.thumbnail_key,
                    size_bytes: c.size_bytes,
                    sha256: c.sha256,
                    start_ms: c.start_ms,
                    end_ms: c.end_ms,
                    gone: c.gone,
                    bytes: c.bytes,
                    events: None,
                })
                .collect(),
        }
    }
}

/// A clip as record versions 3 and 4 stored it: the fields of [`IndexedClip`] in order,
/// without the screen text object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct IndexedClipV3 {
    key: String,
    thumbnail_key: Option<String>,
    size_bytes: u64,
    sha256: String,
    start_ms: u64,
    end_ms: u64,
    gone: bool,
    bytes: ClipBytes,
    events: Option<EventsObjectRef>,
}

/// A session as schema 2's third record version stored it: the fields of [`IndexedSession`]
/// in order, without target nor client address, clips without the screen text object.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct IndexedSessionV3 {
    appliance_id: String,
    session_id: String,
    user_id: String,
    username: String,
    workspace: String,
    protocol: String,
    start_ms: u64,
    end_ms: Option<u64>,
    state: String,
    version: u64,
    is_final: bool,
    integrity: Integrity,
    manifest_key: String,
    clips: Vec<IndexedClipV3>,
}

impl From<IndexedSessionV3> for IndexedSessionV4 {
    /// Version 3 kept no target nor client address: both read empty.
    fn from(s: IndexedSessionV3) -> Self {
        IndexedSessionV4 {
            appliance_id: s.appliance_id,
            session_id: s.session_id,
            user_id: s.user_id,
            username: s.username,
            workspace: s.workspace,
            protocol: s.protocol,
            target: String::new(),
            client_addr: String::new(),
            start_ms: s.start_ms,
            end_ms: s.end_ms,
            state: s.state,
            version: s.version,
            is_final: s.is_final,
            integrity: s.integrity,
            manifest_key: s.manifest_key,
            clips: s.clips,
        }
    }
}

/// A session as schema 2's fourth record version stored it: the fields of [`IndexedSession`]
/// in order, clips without the screen text object.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct IndexedSessionV4 {
    appliance_id: String,
    session_id: String,
    user_id: String,
    username: String,
    workspace: String,
    protocol: String,
    target: String,
    client_addr: String,
    start_ms: u64,
    end_ms: Option<u64>,
    state: String,
    version: u64,
    is_final: bool,
    integrity: Integrity,
    manifest_key: String,
    clips: Vec<IndexedClipV3>,
}

impl From<IndexedSessionV4> for IndexedSession {
    /// Version 4 kept no screen text object: clips read without one (a later manifest version
    /// that lists it files the session again).
    fn from(s: IndexedSessionV4) -> Self {
        IndexedSession {
            appliance_id: s.appliance_id,
            session_id: s.session_id,
            user_id: s.user_id,
            username: s.username,
            workspace: s.workspace,
            protocol: s.protocol,
            target: s.target,
            client_addr: s.client_addr,
            start_ms: s.start_ms,
            end_ms: s.end_ms,
            state: s.state,
            version: s.version,
            is_final: s.is_final,
            integrity: s.integrity,
            manifest_key: s.manifest_key,
            clips: s
                .clips
                .into_iter()
                .map(|c| IndexedClip {
                    key: c.key,
                    thumbnail_key: c.thumbnail_key,
                    size_bytes: c.size_bytes,
                    sha256: c.sha256,
                    start_ms: c.start_ms,
                    end_ms: c.end_ms,
                    gone: c.gone,
                    bytes: c.bytes,
                    events: c.events,
                    ocr: None,
                })
                .collect(),
        }
    }
}

/// One session as the index holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexedSession {
    /// The appliance that recorded it.
    pub appliance_id: String,
    /// External session id.
    pub session_id: String,
    /// User id.
    pub user_id: String,
    /// User name.
    pub username: String,
    /// Workspace.
    pub workspace: String,
    /// Protocol.
    pub protocol: String,
    /// The remote host (`host:port`), from the manifest; empty when it names none.
    pub target: String,
    /// The peer address the appliance's tap accepted, from the manifest; empty when unknown.
    pub client_addr: String,
    /// Start, ms.
    pub start_ms: u64,
    /// End, when ended.
    pub end_ms: Option<u64>,
    /// End state name (`live`, `closed`, `interrupted`, `failed`).
    pub state: String,
    /// Manifest version.
    pub version: u64,
    /// Whether the manifest was final.
    pub is_final: bool,
    /// Signature and clip checks.
    pub integrity: Integrity,
    /// The manifest object it came from.
    pub manifest_key: String,
    /// Clips in order.
    pub clips: Vec<IndexedClip>,
}

impl IndexedSession {
    /// Whether the session is trusted: signature and metadata checks passed and no clip's
    /// bytes failed.
    pub fn integrity_ok(&self) -> bool {
        self.integrity.ok() && !self.clips.iter().any(|c| c.bytes == ClipBytes::Failed)
    }

    /// The session's integrity in words: the manifest's failure, else the first clip whose
    /// bytes failed, else verified when every clip still in the bucket was hashed, else
    /// unverified.
    pub fn integrity_words(&self) -> String {
        if !self.integrity.ok() {
            return self.integrity.words();
        }
        if let Some(n) = self.clips.iter().position(|c| c.bytes == ClipBytes::Failed) {
            return format!(
                "integrity: failed (clip {}: bytes differ from the manifest's SHA-256)",
                n + 1
            );
        }
        let present = || self.clips.iter().filter(|c| !c.gone);
        if present().all(|c| c.bytes == ClipBytes::Verified) {
            ClipBytes::Verified.words().into()
        } else {
            ClipBytes::Unverified.words().into()
        }
    }

    fn from_record(r: SessionRecord) -> Self {
        match r {
            SessionRecord::V1(s) => {
                IndexedSessionV4::from(IndexedSessionV3::from(IndexedSessionV2::from(s))).into()
            }
            SessionRecord::V2(s) => IndexedSessionV4::from(IndexedSessionV3::from(s)).into(),
            SessionRecord::V3(s) => IndexedSessionV4::from(s).into(),
            SessionRecord::V4(s) => s.into(),
            SessionRecord::V5(s) => s,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum SessionRecord {
    V1(IndexedSessionV1),
    V2(IndexedSessionV2),
    V3(IndexedSessionV3),
    V4(IndexedSessionV4),
    V5(IndexedSession),
}

/// What the indexer found at a manifest key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SeenOutcome {
    /// Indexed (or superseded by a higher version of the same session).
    Indexed,
    /// Skipped; the counter it was counted under.
    Skipped(String),
}

/// A manifest object as last seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenManifest {
    /// Entity tag at the time.
    pub etag: Option<String>,
    /// Size at the time.
    pub size_bytes: u64,
    /// What came of it.
    pub outcome: SeenOutcome,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum SeenRecord {
    V1(SeenManifest),
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Stats {
    skipped: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum StatsRecord {
    V1(Stats),
}

/// One document to file.
#[derive(Debug, Clone)]
pub struct Filing {
    /// The manifest object's key.
    pub key: String,
    /// Its entity tag as listed.
    pub etag: Option<String>,
    /// Its size as listed.
    pub size_bytes: u64,
    /// What it turned out to be.
    pub what: FilingKind,
}

/// What a document turned out to be.
#[derive(Debug, Clone)]
pub enum FilingKind {
    /// A manifest, parsed and checked (boxed: a session is large, a skip is small).
    Session(Box<IndexedSession>),
    /// Not indexed; the counter it is counted under.
    Skipped(String),
}

/// What filing a session did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filed {
    /// New session.
    Added,
    /// A newer version (or a re-read of the same object) replaced the old one.
    Replaced,
    /// An older or equal version from another object: kept the one in the index.
    Kept,
}

/// Counts for the status page (the board's own type: the role publishes it as it is).
pub use crate::status::FleetIndexCounts as IndexCounts;

/// A page of sessions, newest start first.
#[derive(Debug, Clone, Default)]
pub struct SessionsPage {
    /// `(cursor, session)` pairs.
    pub items: Vec<(u64, IndexedSession)>,
    /// Cursor for the next older page.
    pub next_before: Option<u64>,
    /// Cursor for the next newer page (only for a page asked for with a cursor).
    pub next_after: Option<u64>,
}

/// What [`FleetIndex::next_unverified`] found.
#[derive(Debug, Clone)]
pub enum UnverifiedScan {
    /// A session with clips to hash, and its cursor.
    Found(u64, Box<IndexedSession>),
    /// Nothing in the rows scanned; go on after this cursor.
    Continue(u64),
    /// Nothing left: every clip is hashed (or gone).
    End,
}

/// Filters of [`FleetIndex::list`].
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Exact appliance.
    pub appliance: Option<String>,
    /// Lower-case part of the user name.
    pub user_lower: Option<String>,
    /// Lower-case part of the target (`host:port`).
    pub host_lower: Option<String>,
    /// Start at or after.
    pub from_ms: Option<u64>,
    /// Start before.
    pub to_ms: Option<u64>,
    /// Lower-case substring of session id, user, workspace or appliance.
    pub text_lower: Option<String>,
    /// Older than this cursor.
    pub before: Option<u64>,
    /// The page just newer than this cursor (ignored when `before` is set).
    pub after: Option<u64>,
    /// Page size.
    pub limit: usize,
}

/// The index.
pub struct FleetIndex {
    env: Env<WithoutTls>,
    meta: Database<'static, Str, Bytes>,
    sessions: Database<'static, BeU64, Postcard<SessionRecord>>,
    by_session: Database<'static, Bytes, BeU64>,
    /// Schema 1's id index, kept open only to be emptied by the migration.
    by_session_v1: Database<'static, Str, BeU64>,
    by_appliance: Database<'static, Bytes, Unit>,
    manifests: Database<'static, Str, Postcard<SeenRecord>>,
}

/// `by_session` key: the session id's length (2 bytes, big-endian), the session id, the
/// appliance id. The length prefix makes "every appliance's session `S`" one key range.
fn session_key(session_id: &str, appliance: &str) -> Vec<u8> {
    let mut k = session_prefix(session_id);
    k.extend_from_slice(appliance.as_bytes());
    k
}

fn session_prefix(session_id: &str) -> Vec<u8> {
    let id = session_id.as_bytes();
    // Ids are bounded far below 64 KiB by the manifest parser; a longer one is cut (and then
    // only shares keys with ids of the same first 64 KiB).
    let id = &id[..id.len().min(usize::from(u16::MAX))];
    let mut k = Vec::with_capacity(2 + id.len() + 32);
    k.extend_from_slice(&(id.len() as u16).to_be_bytes());
    k.extend_from_slice(id);
    k
}

/// The high bits of a session's cursor: its start, clamped at 2^47 ms (year 6429).
fn start_key(start_ms: u64) -> u64 {
    start_ms.min((1 << 47) - 1)
}

fn appliance_key(appliance: &str, cursor: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(appliance.len() + 9);
    k.extend_from_slice(appliance.as_bytes());
    k.push(0);
    k.extend_from_slice(&cursor.to_be_bytes());
    k
}

impl FleetIndex {
    /// Opens (creating) the index in `dir`.
    ///
    /// # Errors
    /// [`IndexError`].
    pub fn open(dir: &Path) -> Result<Self, IndexError> {
        std::fs::create_dir_all(dir)?;
        let mut builder = EnvOpenOptions::new().read_txn_without_tls();
        builder
            .map_size(FLEET_INDEX_MAP_BYTES)
            .max_dbs(FLEET_INDEX_DBS_MAX);
        // SAFETY: the directory belongs to this role alone and is opened once per process
        // (heed refuses a second open itself).
        let env = unsafe { builder.open(dir)? };
        let wtxn = env.write_txn()?;
        let (meta, sessions, by_session_v1, by_session, by_appliance, manifests) = env
            .create_databases_and_commit(wtxn, |o, w| -> Result<_, heed::Error> {
                Ok(CommitOrAbort::<_, ()>::Commit((
                    o.create_database::<Str, Bytes>(w, Some(db_name::META))?,
                    o.create_database::<BeU64, Postcard<SessionRecord>>(
                        w,
                        Some(db_name::SESSIONS),
                    )?,
                    o.create_database::<Str, BeU64>(w, Some(db_name::BY_SESSION_ID_V1))?,
                    o.create_database::<Bytes, BeU64>(w, Some(db_name::BY_SESSION))?,
                    o.create_database::<Bytes, Unit>(w, Some(db_name::BY_APPLIANCE))?,
                    o.create_database::<Str, Postcard<SeenRecord>>(w, Some(db_name::MANIFESTS))?,
                )))
            })?
            .unwrap_commit();
        let ix = Self {
            env,
            meta,
            sessions,
            by_session,
            by_session_v1,
            by_appliance,
            manifests,
        };
        ix.migrate()?;
        Ok(ix)
    }

    /// Schema 1 -> 2, in one write transaction: `by_session` is built from the sessions, the
    /// schema 1 id index is emptied, and every manifest is marked unseen so the next full
    /// rescan files again the sessions schema 1 merged (two appliances, one session id).
    fn migrate(&self) -> Result<(), IndexError> {
        let mut w = self.env.write_txn()?;
        if self.meta.get(&w, META_SCHEMA)? == Some(&[SCHEMA][..]) {
            return Ok(());
        }
        if !self.sessions.is_empty(&w)? {
            let mut keys = Vec::new();
            for item in self.sessions.iter(&w)? {
                let (cursor, r) = item?;
                let s = IndexedSession::from_record(r);
                keys.push((session_key(&s.session_id, &s.appliance_id), cursor));
            }
            for (k, cursor) in keys {
                self.by_session.put(&mut w, &k, &cursor)?;
            }
            self.manifests.clear(&mut w)?;
            log::info!("event=fleet_index_migrated schema={SCHEMA}");
        }
        self.by_session_v1.clear(&mut w)?;
        self.meta.put(&mut w, META_SCHEMA, &[SCHEMA])?;
        w.commit()?;
        Ok(())
    }

    /// The listing cursor: the greatest manifest key listed so far.
    ///
    /// # Errors
    /// [`IndexError`].
    pub fn list_cursor(&self) -> Result<Option<String>, IndexError> {
        let r = self.env.read_txn()?;
        Ok(self
            .meta
            .get(&r, META_LIST_CURSOR)?
            .map(|b| String::from_utf8_lossy(b).into_owned()))
    }

    /// Stores the listing cursor.
    ///
    /// # Errors
    /// [`IndexError`].
    pub fn set_list_cursor(&self, key: &str) -> Result<(), IndexError> {
        let mut w = self.env.write_txn()?;
        self.meta.put(&mut w, META_LIST_CURSOR, key.as_bytes())?;
        w.commit()?;
        Ok(())
    }

    /// What was seen at `key` last time, if anything.
    ///
    /// # Errors
    /// [`IndexError`].
    pub fn seen(&self, key: &str) -> Result<Option<SeenManifest>, IndexError> {
        let r = self.env.read_txn()?;
        Ok(match self.manifests.get(&r, key) {
            Ok(Some(SeenRecord::V1(s))) => Some(s),
            Ok(None) => None,
            // An undecodable record is treated as unseen: the object is read again.
            Err(heed::Error::Decoding(_)) => None,
            Err(e) => return Err(e.into()),
        })
    }

    /// Records a skipped document at `key` and counts it under `counter` (once per object
    /// version: the caller only files what changed).
    ///
    /// # Errors
    /// [`IndexError`].
    pub fn file_skipped(
        &self,
        key: &str,
        etag: Option<&str>,
        size_bytes: u64,
        counter: &str,
    ) -> Result<(), IndexError> {
        self.file_batch(&[Filing {
            key: key.to_string(),
            etag: etag.map(str::to_string),
            size_bytes,
            what: FilingKind::Skipped(counter.to_string()),
        }])?;
        Ok(())
    }

    /// Files a batch of documents in one write transaction (one commit, one fsync, for a
    /// whole listing page). Returns what each session filing did, in order (`None` for
    /// skipped documents).
    ///
    /// # Errors
    /// [`IndexError`]; nothing of the batch is filed then.
    pub fn file_batch(&self, batch: &[Filing]) -> Result<Vec<Option<Filed>>, IndexError> {
        let mut w = self.env.write_txn()?;
        let mut stats = self.stats_in(&w)?;
        let mut out = Vec::with_capacity(batch.len());
        let mut counted = false;
        for f in batch {
            let outcome = match &f.what {
                FilingKind::Skipped(counter) => {
                    *stats.skipped.entry(counter.clone()).or_default() += 1;
                    counted = true;
                    out.push(None);
                    SeenOutcome::Skipped(counter.clone())
                }
                FilingKind::Session(session) => {
                    out.push(Some(self.file_session_in(
                        &mut w,
                        &f.key,
                        (**session).clone(),
                    )?));
                    SeenOutcome::Indexed
                }
            };
            let seen = SeenManifest {
                etag: f.etag.clone(),
                size_bytes: f.size_bytes,
                outcome,
            };
            self.manifests.put(&mut w, &f.key, &SeenRecord::V1(seen))?;
        }
        if counted {
            self.meta.put(
                &mut w,
                META_STATS,
                &postcard::to_stdvec(&StatsRecord::V1(stats)).unwrap_or_default(),
            )?;
        }
        w.commit()?;
        Ok(out)
    }

    fn stats_in(&self, txn: &heed::RoTxn<'_, WithoutTls>) -> Result<Stats, IndexError> {
        Ok(match self.meta.get(txn, META_STATS)? {
            Some(b) => match postcard::from_bytes::<StatsRecord>(b) {
                Ok(StatsRecord::V1(s)) => s,
                Err(_) => Stats::default(),
            },
            None => Stats::default(),
        })
    }

    /// Files a parsed session from the manifest at `key`: a new session is added; a higher
    /// version replaces the indexed one (clips already known to be gone stay gone); a re-read
    /// of the very object the index came from (an edit) replaces it whatever its version.
    ///
    /// # Errors
    /// [`IndexError`].
    pub fn file_session(
        &self,
        key: &str,
        etag: Option<&str>,
        size_bytes: u64,
        session: IndexedSession,
    ) -> Result<Filed, IndexError> {
        let out = self.file_batch(&[Filing {
            key: key.to_string(),
            etag: etag.map(str::to_string),
            size_bytes,
            what: FilingKind::Session(Box::new(session)),
        }])?;
        Ok(out.into_iter().flatten().next().unwrap_or(Filed::Kept))
    }

    fn file_session_in(
        &self,
        w: &mut heed::RwTxn<'_>,
        key: &str,
        mut session: IndexedSession,
    ) -> Result<Filed, IndexError> {
        let id_key = session_key(&session.session_id, &session.appliance_id);
        let existing = self.by_session.get(w, &id_key)?;
        let filed = match existing {
            Some(cursor) => {
                let old = self
                    .sessions
                    .get(w, &cursor)?
                    .map(IndexedSession::from_record);
                match old {
                    Some(old) if session.version > old.version || old.manifest_key == key => {
                        for c in &mut session.clips {
                            // The same object with the same signed hash keeps what is known
                            // of it: gone stays gone, hashed bytes stay hashed.
                            if let Some(o) = old
                                .clips
                                .iter()
                                .find(|o| o.key == c.key && o.sha256 == c.sha256)
                            {
                                c.bytes = o.bytes;
                            }
                            c.gone |= old.clips.iter().any(|o| o.key == c.key && o.gone);
                        }
                        self.by_appliance
                            .delete(w, &appliance_key(&old.appliance_id, cursor))?;
                        let cursor = if cursor >> 16 == start_key(session.start_ms) {
                            cursor
                        } else {
                            // A version with another start: the session moves to its
                            // place in the history's order.
                            self.sessions.delete(w, &cursor)?;
                            let moved = self.free_cursor(w, session.start_ms)?;
                            self.by_session.put(w, &id_key, &moved)?;
                            moved
                        };
                        self.by_appliance.put(
                            w,
                            &appliance_key(&session.appliance_id, cursor),
                            &(),
                        )?;
                        self.sessions.put(w, &cursor, &SessionRecord::V5(session))?;
                        Filed::Replaced
                    }
                    Some(_) => Filed::Kept,
                    None => {
                        self.by_appliance.put(
                            w,
                            &appliance_key(&session.appliance_id, cursor),
                            &(),
                        )?;
                        self.sessions.put(w, &cursor, &SessionRecord::V5(session))?;
                        Filed::Added
                    }
                }
            }
            None => {
                let cursor = self.free_cursor(w, session.start_ms)?;
                self.by_session.put(w, &id_key, &cursor)?;
                self.by_appliance
                    .put(w, &appliance_key(&session.appliance_id, cursor), &())?;
                self.sessions.put(w, &cursor, &SessionRecord::V5(session))?;
                Filed::Added
            }
        };
        Ok(filed)
    }

    fn free_cursor(
        &self,
        txn: &heed::RoTxn<'_, WithoutTls>,
        start_ms: u64,
    ) -> Result<u64, IndexError> {
        // The low 16 bits tell apart sessions that started in the same millisecond.
        let base = start_key(start_ms) << 16;
        for n in 0..u64::from(u16::MAX) {
            if self.sessions.get(txn, &(base | n))?.is_none() {
                return Ok(base | n);
            }
        }
        Ok(base | u64::from(u16::MAX))
    }

    /// One session by appliance and session id, with its cursor. Without an appliance, the
    /// session of that id when exactly one appliance filed one (`None` when several did).
    ///
    /// # Errors
    /// [`IndexError`].
    pub fn session(
        &self,
        appliance: Option<&str>,
        session_id: &str,
    ) -> Result<Option<(u64, IndexedSession)>, IndexError> {
        let r = self.env.read_txn()?;
        let cursor = match appliance {
            Some(a) => self.by_session.get(&r, &session_key(session_id, a))?,
            None => {
                let prefix = session_prefix(session_id);
                let mut found = self.by_session.prefix_iter(&r, &prefix)?;
                match (found.next().transpose()?, found.next().transpose()?) {
                    (Some((_, cursor)), None) => Some(cursor),
                    _ => None,
                }
            }
        };
        let Some(cursor) = cursor else {
            return Ok(None);
        };
        Ok(self
            .sessions
            .get(&r, &cursor)?
            .map(|rec| (cursor, IndexedSession::from_record(rec))))
    }

    /// Records what hashing clip `position` (0-based) of the session at `cursor` found, if
    /// that clip is still the object `key` with the signed hash `sha256` (a newer manifest
    /// may have replaced it meanwhile). A failed verdict is final for that object and hash.
    /// Returns whether the verdict changed.
    ///
    /// # Errors
    /// [`IndexError`].
    pub fn record_clip_bytes(
        &self,
        cursor: u64,
        position: usize,
        key: &str,
        sha256: &str,
        verdict: ClipBytes,
    ) -> Result<bool, IndexError> {
        let mut w = self.env.write_txn()?;
        let Some(mut s) = self.session_in(&w, cursor)? else {
            return Ok(false);
        };
        let Some(c) = s.clips.get_mut(position) else {
            return Ok(false);
        };
        // A failure stays: bytes put back later do not undo having served others.
        if c.key != key || c.sha256 != sha256 || c.bytes == verdict || c.bytes == ClipBytes::Failed
        {
            return Ok(false);
        }
        c.bytes = verdict;
        self.sessions.put(&mut w, &cursor, &SessionRecord::V5(s))?;
        w.commit()?;
        Ok(true)
    }

    /// The first session after `after` (oldest first; from the start without it) with a clip
    /// still in the bucket whose bytes were never hashed, among sessions whose manifest
    /// checks passed. Scans at most [`FLEET_LIST_SCAN_ROWS_MAX`] rows a call.
    ///
    /// # Errors
    /// [`IndexError`].
    pub fn next_unverified(&self, after: Option<u64>) -> Result<UnverifiedScan, IndexError> {
        let r = self.env.read_txn()?;
        let lower = match after {
            Some(c) => std::ops::Bound::Excluded(c),
            None => std::ops::Bound::Unbounded,
        };
        for (n, item) in self
            .sessions
            .range(&r, &(lower, std::ops::Bound::Unbounded))?
            .enumerate()
        {
            let (cursor, rec) = item?;
            let s = IndexedSession::from_record(rec);
            if s.integrity.ok()
                && s.clips
                    .iter()
                    .any(|c| !c.gone && c.bytes == ClipBytes::Unverified)
            {
                return Ok(UnverifiedScan::Found(cursor, Box::new(s)));
            }
            if n + 1 >= FLEET_LIST_SCAN_ROWS_MAX {
                return Ok(UnverifiedScan::Continue(cursor));
            }
        }
        Ok(UnverifiedScan::End)
    }

    /// Sessions matching `f`, newest start first: cursors order by start time (see
    /// [`Self::free_cursor`]), the same order as an appliance's own history. Older than
    /// `before`, or the page just newer than `after`, else the newest. Scans at most
    /// [`FLEET_LIST_SCAN_ROWS_MAX`] rows per call; a page cut short by that bound carries the
    /// cursor to go on from.
    ///
    /// # Errors
    /// [`IndexError`].
    pub fn list(&self, f: &ListFilter) -> Result<SessionsPage, IndexError> {
        use std::ops::Bound::{Excluded, Included, Unbounded};
        let r = self.env.read_txn()?;
        let limit = f.limit.max(1);
        let newer_mode = f.before.is_none() && f.after.is_some();
        // The cursors of the rows to consider, walking away from the page's cursor: over
        // every session, or over one appliance's (keys `appliance\0cursor`).
        let bound = |c: Option<u64>| c.map_or(Unbounded, Excluded);
        let akey = |c: u64| appliance_key(f.appliance.as_deref().unwrap_or(""), c);
        let (lo, hi) = (akey(0), akey(u64::MAX));
        let (after, before) = (f.after.map(akey), f.before.map(akey));
        let cursor_of =
            |k: &[u8]| u64::from_be_bytes(k[k.len() - 8..].try_into().unwrap_or([0; 8]));
        let cursors: Box<dyn Iterator<Item = Result<u64, heed::Error>> + '_> =
            match (&f.appliance, newer_mode) {
                (Some(_), true) => {
                    let from = after.as_deref().unwrap_or(&lo);
                    let range = (Excluded(from), Included(hi.as_slice()));
                    Box::new(
                        self.by_appliance
                            .range(&r, &range)?
                            .map(move |i| Ok(cursor_of(i?.0))),
                    )
                }
                (Some(_), false) => {
                    let to = before.as_deref().unwrap_or(&hi);
                    let range = (Included(lo.as_slice()), Excluded(to));
                    Box::new(
                        self.by_appliance
                            .rev_range(&r, &range)?
                            .map(move |i| Ok(cursor_of(i?.0))),
                    )
                }
                (None, true) => Box::new(
                    self.sessions
                        .range(&r, &(bound(f.after), Unbounded))?
                        .map(|i| Ok(i?.0)),
                ),
                (None, false) => Box::new(
                    self.sessions
                        .rev_range(&r, &(Unbounded, bound(f.before)))?
                        .map(|i| Ok(i?.0)),
                ),
            };
        let mut page = SessionsPage::default();
        let mut scanned = 0usize;
        let mut stopped_at = None;
        let mut more = false;
        for cursor in cursors {
            let cursor = cursor?;
            if stopped_at.is_some() {
                more = true;
                break;
            }
            let Some(s) = self.session_in(&r, cursor)? else {
                continue;
            };
            scanned += 1;
            if matches(f, &s) {
                page.items.push((cursor, s));
            }
            if page.items.len() >= limit || scanned >= FLEET_LIST_SCAN_ROWS_MAX {
                stopped_at = Some(cursor);
            }
        }
        let first = page.items.first().map(|(c, _)| *c);
        if newer_mode {
            page.next_after = stopped_at.filter(|_| more);
            page.next_before = first;
            page.items.reverse();
        } else {
            page.next_before = stopped_at.filter(|_| more);
            page.next_after = first.filter(|_| f.before.is_some());
        }
        Ok(page)
    }

    /// Every clip key of the index with its session cursor, for the gone sweep.
    ///
    /// # Errors
    /// [`IndexError`].
    pub fn clip_keys(&self) -> Result<Vec<(u64, String)>, IndexError> {
        let r = self.env.read_txn()?;
        let mut out = Vec::new();
        for item in self.sessions.iter(&r)? {
            let (cursor, rec) = item?;
            let s = IndexedSession::from_record(rec);
            out.extend(
                s.clips
                    .into_iter()
                    .filter(|c| !c.gone)
                    .map(|c| (cursor, c.key)),
            );
        }
        Ok(out)
    }

    /// Marks the clips with these keys of the session at `cursor` gone.
    ///
    /// # Errors
    /// [`IndexError`].
    pub fn mark_gone(&self, cursor: u64, keys: &[String]) -> Result<usize, IndexError> {
        let mut w = self.env.write_txn()?;
        let Some(mut s) = self.session_in(&w, cursor)? else {
            return Ok(0);
        };
        let mut n = 0;
        for c in &mut s.clips {
            if !c.gone && keys.contains(&c.key) {
                c.gone = true;
                n += 1;
            }
        }
        if n > 0 {
            self.sessions.put(&mut w, &cursor, &SessionRecord::V5(s))?;
            w.commit()?;
        }
        Ok(n)
    }

    fn session_in(
        &self,
        txn: &heed::RoTxn<'_, WithoutTls>,
        cursor: u64,
    ) -> Result<Option<IndexedSession>, IndexError> {
        Ok(self
            .sessions
            .get(txn, &cursor)?
            .map(IndexedSession::from_record))
    }

    /// Counts for the status page (one pass over the sessions).
    ///
    /// # Errors
    /// [`IndexError`].
    pub fn counts(&self) -> Result<IndexCounts, IndexError> {
        Ok(self.counts_and_appliances()?.0)
    }

    /// [`Self::counts`] and the appliance ids, sorted.
    ///
    /// # Errors
    /// [`IndexError`].
    pub fn counts_and_appliances(&self) -> Result<(IndexCounts, Vec<String>), IndexError> {
        let r = self.env.read_txn()?;
        let mut c = IndexCounts {
            skipped: self.stats_in(&r)?.skipped,
            ..IndexCounts::default()
        };
        let mut appliances = std::collections::BTreeSet::new();
        for item in self.sessions.iter(&r)? {
            let (_, rec) = item?;
            let s = IndexedSession::from_record(rec);
            c.sessions += 1;
            c.integrity_failed += u64::from(!s.integrity_ok());
            c.clips_gone += s.clips.iter().filter(|c| c.gone).count() as u64;
            let bytes = |v| s.clips.iter().filter(|c| c.bytes == v).count() as u64;
            c.clips_verified += bytes(ClipBytes::Verified);
            c.clips_bytes_failed += bytes(ClipBytes::Failed);
            appliances.insert(s.appliance_id);
        }
        c.appliances = appliances.len() as u64;
        Ok((c, appliances.into_iter().collect()))
    }
}

fn matches(f: &ListFilter, s: &IndexedSession) -> bool {
    f.user_lower
        .as_ref()
        .is_none_or(|u| s.username.to_lowercase().contains(u.as_str()))
        && f.host_lower
            .as_ref()
            .is_none_or(|h| s.target.to_lowercase().contains(h.as_str()))
        && f.from_ms.is_none_or(|t| s.start_ms >= t)
        && f.to_ms.is_none_or(|t| s.start_ms < t)
        && f.text_lower.as_ref().is_none_or(|t| {
            [
                &s.session_id,
                &s.username,
                &s.workspace,
                &s.appliance_id,
                &s.target,
            ]
            .iter()
            .any(|h| h.to_lowercase().contains(t.as_str()))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(id: &str, appliance: &str, start_ms: u64, version: u64) -> IndexedSession {
        IndexedSession {
            appliance_id: appliance.into(),
            session_id: id.into(),
            user_id: "u".into(),
            username: "alice".into(),
            workspace: "Ubuntu".into(),
            protocol: "vnc".into(),
            target: format!("{id}.example:5900"),
            client_addr: "10.0.0.9:40000".into(),
            start_ms,
            end_ms: Some(start_ms + 10),
            state: "closed".into(),
            version,
            is_final: true,
            integrity: Integrity::Verified {
                public_key: "k".into(),
            },
            manifest_key: format!("m/{id}-{version}.json"),
            clips: vec![IndexedClip {
                key: format!("c/{id}.mp4"),
                thumbnail_key: None,
                size_bytes: 5,
                sha256: "ab".into(),
                start_ms,
                end_ms: start_ms + 10,
                gone: false,
                bytes: ClipBytes::Unverified,
                events: None,
                ocr: None,
            }],
        }
    }

    /// A clip as versions 3 and 4 stored it.
    fn clip_v3(c: &IndexedClip) -> IndexedClipV3 {
        IndexedClipV3 {
            key: c.key.clone(),
            thumbnail_key: c.thumbnail_key.clone(),
            size_bytes: c.size_bytes,
            sha256: c.sha256.clone(),
            start_ms: c.start_ms,
            end_ms: c.end_ms,
            gone: c.gone,
            bytes: c.bytes,
            events: c.events.clone(),
        }
    }

    /// Writes an older session record for `id` of proxy-a and its indexes, as the index's
    /// earlier versions did.
    fn put_old(ix: &FleetIndex, id: &str, record: SessionRecord) {
        let mut w = ix.env.write_txn().unwrap();
        let cursor = 10 << 16;
        ix.sessions.put(&mut w, &cursor, &record).unwrap();
        ix.by_session
            .put(&mut w, &session_key(id, "proxy-a"), &cursor)
            .unwrap();
        ix.by_appliance
            .put(&mut w, &appliance_key("proxy-a", cursor), &())
            .unwrap();
        w.commit().unwrap();
    }

    fn file(ix: &FleetIndex, s: IndexedSession) -> Filed {
        let key = s.manifest_key.clone();
        ix.file_session(&key, Some("e"), 1, s).unwrap()
    }

    #[test]
    fn newest_first_filtered_by_appliance_with_paging() {
        let dir = tempfile::tempdir().unwrap();
        let ix = FleetIndex::open(dir.path()).unwrap();
        for i in 0..10u64 {
            let a = if i % 2 == 0 { "a" } else { "b" };
            assert_eq!(
                file(&ix, session(&format!("s{i}"), a, 1000 + i, 1)),
                Filed::Added
            );
        }
        let all = ix
            .list(&ListFilter {
                limit: 3,
                ..ListFilter::default()
            })
            .unwrap();
        let ids: Vec<_> = all
            .items
            .iter()
            .map(|(_, s)| s.session_id.as_str())
            .collect();
        assert_eq!(ids, ["s9", "s8", "s7"]);
        let f = ListFilter {
            appliance: Some("a".into()),
            limit: 2,
            ..ListFilter::default()
        };
        let p1 = ix.list(&f).unwrap();
        let ids: Vec<_> = p1
            .items
            .iter()
            .map(|(_, s)| s.session_id.as_str())
            .collect();
        assert_eq!(ids, ["s8", "s6"]);
        let p2 = ix
            .list(&ListFilter {
                before: p1.next_before,
                ..f.clone()
            })
            .unwrap();
        let ids: Vec<_> = p2
            .items
            .iter()
            .map(|(_, s)| s.session_id.as_str())
            .collect();
        assert_eq!(ids, ["s4", "s2"]);
        let c = ix.counts().unwrap();
        assert_eq!((c.sessions, c.appliances), (10, 2));
    }

    /// Filed in another order than they started: listed newest start first, paged both ways
    /// (also within one appliance), the user matched by part of the name in any case; a new
    /// version with another start moves the session to its place.
    #[test]
    fn newest_start_first_both_ways_and_by_part_of_the_user_name() {
        let dir = tempfile::tempdir().unwrap();
        let ix = FleetIndex::open(dir.path()).unwrap();
        let starts = [50u64, 10, 40, 20, 30, 60];
        for (i, start) in starts.iter().enumerate() {
            let mut s = session(
                &format!("s{i}"),
                if i % 2 == 0 { "a" } else { "b" },
                *start,
                1,
            );
            s.username = if i % 3 == 0 { "Dana.Scully" } else { "fox" }.into();
            file(&ix, s);
        }
        let ids = |p: &SessionsPage| -> Vec<String> {
            p.items.iter().map(|(_, s)| s.session_id.clone()).collect()
        };
        let list = |f: ListFilter| ix.list(&f).unwrap();
        let page = |before, after, appliance: Option<&str>| {
            list(ListFilter {
                before,
                after,
                appliance: appliance.map(str::to_string),
                limit: 2,
                ..ListFilter::default()
            })
        };
        for (appliance, expected) in [
            (None, vec!["s5", "s0", "s2", "s4", "s3", "s1"]),
            (Some("a"), vec!["s0", "s2", "s4"]),
        ] {
            let mut pages = vec![page(None, None, appliance)];
            while let Some(b) = pages.last().unwrap().next_before {
                pages.push(page(Some(b), None, appliance));
            }
            let all: Vec<String> = pages.iter().flat_map(&ids).collect();
            assert_eq!(all, expected, "{appliance:?}");
            // Back: each Newer link gives the previous page.
            for i in (1..pages.len()).rev() {
                let back = page(None, pages[i].next_after, appliance);
                assert_eq!(ids(&back), ids(&pages[i - 1]), "{appliance:?} page {i}");
            }
            assert_eq!(pages[0].next_after, None);
        }
        let scully = list(ListFilter {
            user_lower: Some("scully".into()),
            limit: 10,
            ..ListFilter::default()
        });
        assert_eq!(ids(&scully), ["s0", "s3"]);
        // A version 2 of s1 that started later: now the newest.
        let mut moved = session("s1", "b", 70, 2);
        moved.username = "fox".into();
        assert_eq!(file(&ix, moved), Filed::Replaced);
        let top = page(None, None, None);
        assert_eq!(ids(&top), ["s1", "s5"]);
        let b = page(None, None, Some("b"));
        assert_eq!(ids(&b), ["s1", "s5"]);
        assert_eq!(ix.counts().unwrap().sessions, 6);
        assert!(ix.session(Some("b"), "s1").unwrap().is_some());
    }

    #[test]
    fn higher_versions_replace_lower_ones_are_kept_out() {
        let dir = tempfile::tempdir().unwrap();
        let ix = FleetIndex::open(dir.path()).unwrap();
        file(&ix, session("s", "a", 5, 2));
        assert_eq!(file(&ix, session("s", "a", 5, 1)), Filed::Kept);
        assert_eq!(ix.session(None, "s").unwrap().unwrap().1.version, 2);
        let (cursor, _) = ix.session(None, "s").unwrap().unwrap();
        assert_eq!(ix.mark_gone(cursor, &["c/s.mp4".into()]).unwrap(), 1);
        assert_eq!(file(&ix, session("s", "a", 5, 3)), Filed::Replaced);
        let s = ix.session(None, "s").unwrap().unwrap().1;
        assert_eq!(s.version, 3);
        assert!(s.clips[0].gone, "a gone clip stays gone");
        // An edited object (same key, lower or equal version) is read again.
        let mut edited = session("s", "a", 5, 3);
        edited.integrity = Integrity::Failed { reason: "x".into() };
        assert_eq!(file(&ix, edited), Filed::Replaced);
        assert_eq!(ix.counts().unwrap().integrity_failed, 1);
        assert_eq!(
            ix.list(&ListFilter {
                limit: 5,
                ..ListFilter::default()
            })
            .unwrap()
            .items
            .len(),
            1
        );
    }

    #[test]
    fn cursor_and_skips_persist() {
        let dir = tempfile::tempdir().unwrap();
        {
            let ix = FleetIndex::open(dir.path()).unwrap();
            ix.set_list_cursor("m/0001").unwrap();
            ix.file_skipped("m/bad.json", Some("e1"), 3, "not_json")
                .unwrap();
        }
        let ix = FleetIndex::open(dir.path()).unwrap();
        assert_eq!(ix.list_cursor().unwrap().as_deref(), Some("m/0001"));
        assert_eq!(ix.counts().unwrap().skipped["not_json"], 1);
        let seen = ix.seen("m/bad.json").unwrap().unwrap();
        assert_eq!(seen.etag.as_deref(), Some("e1"));
    }

    #[test]
    fn two_appliances_may_file_the_same_session_id() {
        let dir = tempfile::tempdir().unwrap();
        let ix = FleetIndex::open(dir.path()).unwrap();
        let mut a = session("dup", "proxy-a", 100, 1);
        a.manifest_key = "m/a-dup-1.json".into();
        let mut b = session("dup", "proxy-b", 200, 1);
        b.manifest_key = "m/b-dup-1.json".into();
        b.username = "bob".into();
        assert_eq!(file(&ix, a), Filed::Added);
        assert_eq!(file(&ix, b), Filed::Added);
        assert_eq!(ix.counts().unwrap().sessions, 2);
        let (_, sa) = ix.session(Some("proxy-a"), "dup").unwrap().unwrap();
        let (_, sb) = ix.session(Some("proxy-b"), "dup").unwrap().unwrap();
        assert_eq!(
            (sa.username.as_str(), sb.username.as_str()),
            ("alice", "bob")
        );
        assert!(ix.session(Some("proxy-c"), "dup").unwrap().is_none());
        assert!(
            ix.session(None, "dup").unwrap().is_none(),
            "a bare id filed by two appliances is ambiguous"
        );
        // A higher version of one replaces that one only.
        let mut b2 = session("dup", "proxy-b", 200, 2);
        b2.manifest_key = "m/b-dup-2.json".into();
        assert_eq!(file(&ix, b2), Filed::Replaced);
        assert_eq!(
            ix.session(Some("proxy-a"), "dup")
                .unwrap()
                .unwrap()
                .1
                .version,
            1
        );
        assert_eq!(
            ix.session(Some("proxy-b"), "dup")
                .unwrap()
                .unwrap()
                .1
                .version,
            2
        );
        // A prefix of another id is another session.
        file(&ix, session("du", "proxy-a", 300, 1));
        assert_eq!(ix.session(None, "du").unwrap().unwrap().1.session_id, "du");
    }

    #[test]
    fn byte_verdicts_are_recorded_kept_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let ix = FleetIndex::open(dir.path()).unwrap();
        file(&ix, session("s", "a", 5, 1));
        let (cursor, s) = match ix.next_unverified(None).unwrap() {
            UnverifiedScan::Found(c, s) => (c, s),
            other => panic!("{other:?}"),
        };
        assert_eq!(s.integrity_words(), "integrity: unverified");
        // A verdict for another object (the manifest changed meanwhile) is not recorded.
        assert!(
            !ix.record_clip_bytes(cursor, 0, "c/other.mp4", "ab", ClipBytes::Verified)
                .unwrap()
        );
        assert!(
            ix.record_clip_bytes(cursor, 0, "c/s.mp4", "ab", ClipBytes::Verified)
                .unwrap()
        );
        assert!(matches!(
            ix.next_unverified(None).unwrap(),
            UnverifiedScan::End
        ));
        let s = ix.session(None, "s").unwrap().unwrap().1;
        assert_eq!(s.integrity_words(), "integrity: verified");
        // A newer version naming the same object and hash keeps the verdict.
        file(&ix, session("s", "a", 5, 2));
        let s = ix.session(None, "s").unwrap().unwrap().1;
        assert_eq!(s.clips[0].bytes, ClipBytes::Verified);
        assert!(
            ix.record_clip_bytes(cursor, 0, "c/s.mp4", "ab", ClipBytes::Failed)
                .unwrap()
        );
        let s = ix.session(None, "s").unwrap().unwrap().1;
        assert!(!s.integrity_ok());
        assert!(s.integrity_words().starts_with("integrity: failed (clip 1"));
        let c = ix.counts().unwrap();
        assert_eq!(
            (c.integrity_failed, c.clips_bytes_failed, c.clips_verified),
            (1, 1, 0)
        );
    }

    #[test]
    fn a_version_3_record_reads_without_target_and_todays_round_trips_and_filters() {
        let dir = tempfile::tempdir().unwrap();
        let ix = FleetIndex::open(dir.path()).unwrap();
        let new = session("erp-1", "proxy-a", 20, 1);
        let mut old = IndexedSessionV3 {
            appliance_id: "proxy-a".into(),
            session_id: "v3".into(),
            user_id: "u".into(),
            username: "alice".into(),
            workspace: "w".into(),
            protocol: "rdp".into(),
            start_ms: 10,
            end_ms: Some(11),
            state: "closed".into(),
            version: 1,
            is_final: true,
            integrity: Integrity::Verified {
                public_key: "k".into(),
            },
            manifest_key: "m/v3.json".into(),
            clips: new.clips.iter().map(clip_v3).collect(),
        };
        old.clips[0].key = "c/v3.mp4".into();
        // What the index wrote before targets were kept.
        put_old(&ix, "v3", SessionRecord::V3(old));
        let (_, s) = ix.session(Some("proxy-a"), "v3").unwrap().unwrap();
        assert_eq!((s.protocol.as_str(), s.target.as_str()), ("rdp", ""));
        assert_eq!(s.client_addr, "");
        assert_eq!(file(&ix, new.clone()), Filed::Added);
        let (_, back) = ix.session(Some("proxy-a"), "erp-1").unwrap().unwrap();
        assert_eq!(back, new, "V5 round trip");
        let by_host = |h: &str| {
            ix.list(&ListFilter {
                host_lower: Some(h.into()),
                limit: 10,
                ..ListFilter::default()
            })
            .unwrap()
            .items
            .into_iter()
            .map(|(_, s)| s.session_id)
            .collect::<Vec<_>>()
        };
        assert_eq!(by_host("erp-1.example"), ["erp-1"]);
        assert!(by_host("hr.example").is_empty());
    }

    #[test]
    fn a_version_4_record_reads_without_screen_text_and_version_5_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let ix = FleetIndex::open(dir.path()).unwrap();
        let events = |ext: &str| EventsObjectRef {
            key: format!("c/v4.{ext}"),
            size_bytes: 7,
            sha256: "cd".into(),
        };
        let mut old = session("v4", "proxy-a", 10, 1);
        old.clips[0].events = Some(events("events.json"));
        let v4 = IndexedSessionV4 {
            appliance_id: old.appliance_id.clone(),
            session_id: old.session_id.clone(),
            user_id: old.user_id.clone(),
            username: old.username.clone(),
            workspace: old.workspace.clone(),
            protocol: old.protocol.clone(),
            target: old.target.clone(),
            client_addr: old.client_addr.clone(),
            start_ms: old.start_ms,
            end_ms: old.end_ms,
            state: old.state.clone(),
            version: old.version,
            is_final: old.is_final,
            integrity: old.integrity.clone(),
            manifest_key: old.manifest_key.clone(),
            clips: old.clips.iter().map(clip_v3).collect(),
        };
        // What the index wrote before screen text was kept.
        put_old(&ix, "v4", SessionRecord::V4(v4));
        let (_, s) = ix.session(Some("proxy-a"), "v4").unwrap().unwrap();
        assert_eq!(s, old, "V4 reads with every field, ocr None");
        assert_eq!(s.clips[0].ocr, None);
        // The manifest's next version lists the screen text: it replaces the V4 record.
        let mut new = old.clone();
        new.version = 2;
        new.manifest_key = "m/v4-2.json".into();
        new.clips[0].ocr = Some(events("ocr.events.json"));
        assert_eq!(file(&ix, new.clone()), Filed::Replaced);
        let (_, back) = ix.session(Some("proxy-a"), "v4").unwrap().unwrap();
        assert_eq!(back, new, "V5 round trip");
    }

    #[test]
    fn schema_1_index_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let old = IndexedSessionV1 {
            appliance_id: "proxy-a".into(),
            session_id: "old".into(),
            user_id: "u".into(),
            username: "alice".into(),
            workspace: "w".into(),
            protocol: "vnc".into(),
            start_ms: 7,
            end_ms: Some(9),
            state: "closed".into(),
            version: 1,
            is_final: true,
            integrity: Integrity::Verified {
                public_key: "k".into(),
            },
            manifest_key: "m/old.json".into(),
            clips: vec![IndexedClipV1 {
                key: "c/old.mp4".into(),
                thumbnail_key: None,
                size_bytes: 5,
                sha256: "ab".into(),
                start_ms: 7,
                end_ms: 9,
                gone: false,
            }],
        };
        {
            // Write what schema 1 wrote: the V1 record, its id index, no schema mark.
            let ix = FleetIndex::open(dir.path()).unwrap();
            let mut w = ix.env.write_txn().unwrap();
            let cursor = 7 << 16;
            ix.sessions
                .put(&mut w, &cursor, &SessionRecord::V1(old))
                .unwrap();
            ix.by_session_v1.put(&mut w, "old", &cursor).unwrap();
            ix.manifests
                .put(
                    &mut w,
                    "m/old.json",
                    &SeenRecord::V1(SeenManifest {
                        etag: None,
                        size_bytes: 1,
                        outcome: SeenOutcome::Indexed,
                    }),
                )
                .unwrap();
            ix.meta.delete(&mut w, META_SCHEMA).unwrap();
            w.commit().unwrap();
        }
        let ix = FleetIndex::open(dir.path()).unwrap();
        let (_, s) = ix.session(Some("proxy-a"), "old").unwrap().unwrap();
        assert_eq!(s.clips[0].bytes, ClipBytes::Unverified);
        assert_eq!(s.username, "alice");
        assert!(
            ix.seen("m/old.json").unwrap().is_none(),
            "manifests are read again after the migration"
        );
    }
}
