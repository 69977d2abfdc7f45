//! The appliance side of fleet history: turns a session's queue records into a signed fleet
//! manifest version and puts it in the bucket under the manifest prefix.
//!
//! Owns the version rule and the end-state rule, and the clean-up of superseded versions.
//! Called by the manifest worker for every session whose manifests are owed (after every clip
//! upload and when a session has settled); does not decide when sessions end (ingest and queue
//! recovery do).
//!
//! Version rule: `2 x clips listed`, `+1` once final. Clips only ever land, and a final
//! manifest gains none, so versions grow with every rewrite and are the same number for the
//! same content.
//!
//! Filing is write-ahead, recorded in the queue (`queue::manifests`), so that a
//! crash or restart neither files a version twice nor strands a superseded one: choose the key,
//! record the intent, put, record it filed, delete the superseded keys, record each deleted.
//! A later call redoes whatever step the record says is owed: the put of an intent of the same
//! version under its recorded key, the deletes not recorded done. A final version, once filed,
//! is never written again. The writer holds no transaction and no state of its own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ed25519_dalek::SigningKey;
use sha2::Digest;

use super::signed::{EndState, FleetClip, FleetEventsObject, FleetManifest, ManifestInput};
use crate::error::Classify;
use crate::queue::{
    Clip, ClipStateKind, ManifestFiling, ManifestVersion, OcrState, OcrWork, Queue, QueueError,
    Segment, SegmentStateKind, Session, SessionState,
};
use crate::upload::location::{events_key, sanitize_value, thumbnail_key};
use crate::upload::store::{CONTENT_TYPE_JSON, ObjectStore, PutOptions, StoreError};

/// What the writer needs to know about this appliance.
#[derive(Clone)]
pub struct FleetWriterConfig {
    /// Setting `appliance-id`.
    pub appliance_id: String,
    /// Key prefix of manifests in the bucket (setting `storage.manifest-prefix`).
    pub prefix: String,
    /// The appliance's signing key.
    pub key: Arc<SigningKey>,
}

impl std::fmt::Debug for FleetWriterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetWriterConfig")
            .field("appliance_id", &self.appliance_id)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// Where a session stands, as far as its manifest is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Still live or work still pending: a partial manifest.
    No,
    /// Ended and nothing more will come: a final manifest with this end state.
    Yes(EndState),
}

/// Decides whether a session is settled: ended (closed, or interrupted with its end known),
/// every segment done with (encoded, failed, quarantined) and every clip done with (up or
/// expired). Failed segments and expired clips make the end state `failed`.
pub fn settled(session: &Session, segments: &[Segment], clips: &[Clip]) -> Settled {
    let ended = match session.state {
        SessionState::Closed => Some(EndState::Closed),
        SessionState::Interrupted if session.end_ms.is_some() => Some(EndState::Interrupted),
        _ => None,
    };
    let Some(mut state) = ended else {
        return Settled::No;
    };
    for s in segments {
        match s.state.kind() {
            SegmentStateKind::Encoded => {}
            SegmentStateKind::Failed | SegmentStateKind::Quarantined => state = EndState::Failed,
            _ => return Settled::No,
        }
    }
    for c in clips {
        match c.state.kind() {
            ClipStateKind::Uploaded | ClipStateKind::LocalDeleted => {}
            ClipStateKind::Expired => state = EndState::Failed,
            _ => return Settled::No,
        }
    }
    Settled::Yes(state)
}

/// Why a manifest could not be filed (the record says which step is owed; the manifest
/// worker tries again later).
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The put (or the signing, as [`StoreError::Inconsistent`]) failed.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// The filing record could not be read or written.
    #[error("{0}")]
    Queue(#[from] QueueError),
}

impl Classify for WriteError {
    fn is_transient(&self) -> bool {
        match self {
            WriteError::Store(e) => e.is_transient(),
            WriteError::Queue(e) => e.is_transient(),
        }
    }
}

/// What one [`FleetWriter::write`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Written {
    /// The key put, if a version was filed (`None`: the filed version was up to date).
    pub key: Option<String>,
    /// Superseded keys whose delete failed this time (still recorded as owed).
    pub deletes_owed: usize,
}

/// Writes manifest versions.
pub struct FleetWriter {
    cfg: FleetWriterConfig,
    /// One filing at a time: two callers filing one session must not interleave their steps
    /// (the queue would refuse the loser's `filed` as stale). Manifests are small puts, so
    /// serialising them costs little.
    one_at_a_time: Mutex<()>,
}

impl FleetWriter {
    /// A writer for this appliance.
    pub fn new(cfg: FleetWriterConfig) -> Self {
        Self {
            cfg,
            one_at_a_time: Mutex::new(()),
        }
    }

    /// Public key hex of the signing key.
    pub fn public_key_hex(&self) -> String {
        super::keys::public_hex(&self.cfg.key)
    }

    /// Files the manifest version of `session` now (clips that are up, in session order)
    /// unless that version (or the final one) is filed already, then deletes the superseded
    /// versions still owed.
    ///
    /// # Errors
    /// [`WriteError`]: the put or a queue step failed; nothing recorded is lost, the next call
    /// redoes the step owed.
    pub fn write(
        &self,
        queue: &Queue,
        store: &dyn ObjectStore,
        session: &Session,
        segments: &[Segment],
        clips: &[Clip],
        now_ms: u64,
    ) -> Result<Written, WriteError> {
        let _one = self.one_at_a_time.lock().unwrap_or_else(|p| p.into_inner());
        let state = match settled(session, segments, clips) {
            Settled::No => EndState::Live,
            Settled::Yes(s) => s,
        };
        let mut ocr = HashMap::new();
        for c in clips {
            if let Some(OcrWork {
                state: OcrState::Uploaded { key, sha256, bytes },
                ..
            }) = queue.ocr_of_clip(c.id)?
            {
                let object = FleetEventsObject {
                    key,
                    size_bytes: bytes,
                    sha256,
                };
                ocr.insert(c.id, object);
            }
        }
        let listed = listed_clips(segments, clips, &ocr);
        // Every clip and every OCR object listed raises the version; the end state adds one.
        let objects = listed.len() + listed.iter().filter(|c| c.ocr.is_some()).count();
        let version = 2 * objects as u64 + u64::from(state != EndState::Live);
        let mut filing = queue.manifest_filing(session.id)?;
        let up_to_date = filing
            .as_ref()
            .is_some_and(|f| f.filed.as_ref().is_some_and(|v| v.version >= version));
        let mut written = Written::default();
        if !up_to_date {
            // The replay of a put a crash left unconfirmed goes under its recorded key.
            let key = match filing.as_ref().and_then(|f| f.intent.as_ref()) {
                Some(intent) if intent.version == version => intent.key.clone(),
                _ => version_key(
                    &self.cfg.prefix,
                    now_ms,
                    &self.cfg.appliance_id,
                    &session.session_id,
                    version,
                ),
            };
            let next = ManifestVersion {
                version,
                key,
                is_final: state != EndState::Live,
            };
            queue.intend_manifest(session.id, &next)?;
            self.put(store, session, state, version, listed, &next.key)?;
            filing = Some(queue.manifest_filed(session.id, &next.key)?);
            log::info!(
                "event=fleet_manifest session={} version={version} state={} key={:?}",
                session.session_id,
                state.name(),
                next.key
            );
            written.key = Some(next.key);
        }
        if let Some(f) = &filing {
            written.deletes_owed = delete_superseded(queue, store, f)?;
        }
        Ok(written)
    }

    /// Signs the manifest and puts it under `key`.
    fn put(
        &self,
        store: &dyn ObjectStore,
        session: &Session,
        state: EndState,
        version: u64,
        clips: Vec<FleetClip>,
        key: &str,
    ) -> Result<(), StoreError> {
        let input = ManifestInput {
            appliance_id: self.cfg.appliance_id.clone(),
            version,
            state,
            session_id: session.session_id.clone(),
            user_id: session.user_id.clone(),
            username: session.username.clone(),
            image_friendly_name: session.image_friendly_name.clone(),
            protocol: session.protocol.clone(),
            start_ms: session.start_ms,
            end_ms: if state == EndState::Live {
                None
            } else {
                session.end_ms
            },
            end_reason: session.end_reason.map(|r| r.name().to_string()),
            target: session.target.clone(),
            client_addr: session.client_addr.clone(),
            clips,
        };
        let m =
            FleetManifest::signed(input, &self.cfg.key).map_err(|e| StoreError::Inconsistent {
                key: session.session_id.clone(),
                detail: e.to_string(),
            })?;
        let json = m.to_json();
        let opts = PutOptions {
            content_type: CONTENT_TYPE_JSON.into(),
            sha256_hex: hex::encode(sha2::Sha256::digest(&json)),
        };
        store.put_bytes(key, &json, &opts).map(|_| ())
    }
}

/// Deletes the superseded keys `filing` owes, recording each one done; returns how many
/// deletes failed (they stay owed: the reader keeps the highest version meanwhile).
fn delete_superseded(
    queue: &Queue,
    store: &dyn ObjectStore,
    filing: &ManifestFiling,
) -> Result<usize, QueueError> {
    let mut owed = 0;
    for key in &filing.superseded {
        match store.delete(key) {
            Ok(()) => {
                queue.manifest_deleted(filing.session, key)?;
            }
            Err(e) => {
                log::warn!("event=fleet_manifest_old_version_kept key={key:?} error={e}");
                owed += 1;
            }
        }
    }
    Ok(owed)
}

/// The clips that are up, in session order (segment index, then part), with their keys and
/// the OCR objects (by clip id) that are up.
fn listed_clips(
    segments: &[Segment],
    clips: &[Clip],
    ocr: &HashMap<u64, FleetEventsObject>,
) -> Vec<FleetClip> {
    let seg_index: HashMap<u64, u32> = segments.iter().map(|s| (s.id, s.index)).collect();
    let mut up: Vec<&Clip> = clips
        .iter()
        .filter(|c| {
            matches!(
                c.state.kind(),
                ClipStateKind::Uploaded | ClipStateKind::LocalDeleted
            ) && c.object_key.is_some()
        })
        .collect();
    up.sort_by_key(|c| {
        (
            seg_index.get(&c.segment).copied().unwrap_or(0),
            c.index,
            c.id,
        )
    });
    up.iter()
        .map(|c| {
            let key = c.object_key.clone().unwrap_or_default();
            FleetClip {
                index: 0,
                thumbnail_key: c.thumb_path.as_ref().map(|_| thumbnail_key(&key)),
                events: c.events.as_ref().map(|e| FleetEventsObject {
                    key: events_key(&key),
                    size_bytes: e.bytes,
                    sha256: e.sha256.clone(),
                }),
                ocr: ocr.get(&c.id).cloned(),
                key,
                size_bytes: c.bytes,
                sha256: c.sha256.clone(),
                start_ms: c.start_ms,
                end_ms: c.end_ms,
            }
        })
        .collect()
}
/// Object key of one manifest version under `prefix`:
/// `PREFIX/<written_ms, 13 digits>-<appliance>-<session>-v<version, 10 digits>.json`.
///
/// Keys sort by the time they were written, so the history role lists only what came after
/// its cursor (a no-change poll is one request); each version is a new object, so a rewrite
/// is seen as new.
pub fn version_key(
    prefix: &str,
    written_ms: u64,
    appliance_id: &str,
    session_id: &str,
    version: u64,
) -> String {
    let name = format!(
        "{written_ms:013}-{}-{}-v{version:010}.json",
        sanitize_value(appliance_id),
        sanitize_value(session_id)
    );
    let prefix = prefix.trim_matches('/');
    if prefix.is_empty() {
        name
    } else {
        format!("{prefix}/{name}")
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::clock::ManualClock;
    use crate::queue::{ClipState, Failpoint, NewSession, QueueOptions, SegmentState};
    use crate::upload::{LocalDirStore, ObjectInfo};

    /// The real local store, with a put or a delete that fails once when armed: a crash at
    /// that step, as far as the bucket is concerned.
    struct Flaky {
        inner: LocalDirStore,
        fail_put: AtomicBool,
        fail_delete: AtomicBool,
        /// Runs once after the next successful put (to arm a queue fail-point there).
        after_put: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    }

    fn injected() -> StoreError {
        StoreError::Unreachable {
            detail: "injected".into(),
        }
    }

    impl ObjectStore for Flaky {
        fn put_file(
            &self,
            key: &str,
            path: &Path,
            o: &PutOptions,
        ) -> Result<ObjectInfo, StoreError> {
            self.inner.put_file(key, path, o)
        }
        fn put_bytes(&self, key: &str, b: &[u8], o: &PutOptions) -> Result<ObjectInfo, StoreError> {
            if self.fail_put.swap(false, Ordering::SeqCst) {
                return Err(injected());
            }
            let info = self.inner.put_bytes(key, b, o)?;
            if let Some(hook) = self.after_put.lock().unwrap().take() {
                hook();
            }
            Ok(info)
        }
        fn head(&self, key: &str) -> Result<Option<ObjectInfo>, StoreError> {
            self.inner.head(key)
        }
        fn get(
            &self,
            key: &str,
            range: Option<(u64, Option<u64>)>,
        ) -> Result<Box<dyn std::io::Read + Send>, StoreError> {
            self.inner.get(key, range)
        }
        fn delete(&self, key: &str) -> Result<(), StoreError> {
            if self.fail_delete.swap(false, Ordering::SeqCst) {
                return Err(injected());
            }
            self.inner.delete(key)
        }
        fn presign_get(&self, key: &str, expiry_s: u32) -> Result<Option<String>, StoreError> {
            self.inner.presign_get(key, expiry_s)
        }
        fn describe(&self) -> String {
            "flaky local store".into()
        }
    }

    struct World {
        dir: tempfile::TempDir,
        store: Flaky,
    }

    impl World {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let store = Flaky {
                inner: LocalDirStore::open(&dir.path().join("bucket")).unwrap(),
                fail_put: AtomicBool::new(false),
                fail_delete: AtomicBool::new(false),
                after_put: Mutex::new(None),
            };
            World { dir, store }
        }

        /// Opens the queue again: what a restarted daemon sees.
        fn queue(&self) -> Queue {
            let opts = QueueOptions::new(self.dir.path().join("queue"));
            Queue::open(&opts, Arc::new(ManualClock::new(1_000))).unwrap()
        }

        /// The manifest objects in the bucket, sorted.
        fn manifests(&self) -> Vec<String> {
            let dir = self.dir.path().join("bucket/manifests");
            let mut names: Vec<String> = std::fs::read_dir(dir)
                .map(|d| {
                    d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            names.sort();
            names
        }
    }

    /// A fresh writer (no memory of earlier runs).
    fn writer() -> FleetWriter {
        FleetWriter::new(FleetWriterConfig {
            appliance_id: "box".into(),
            prefix: "manifests".into(),
            key: Arc::new(SigningKey::from_bytes(&[7; 32])),
        })
    }

    /// A session registered in `q`, `Closed` or `Live`, with one encoded segment.
    fn session(q: &Queue, closed: bool) -> (Session, Vec<Segment>) {
        let id = q
            .register_session(&NewSession {
                session_id: "s-1".into(),
                user_id: "u".into(),
                username: "user".into(),
                image_friendly_name: "img".into(),
                protocol: "vnc".into(),
                start_ms: 1,
                target: String::new(),
                client_addr: String::new(),
            })
            .unwrap();
        let mut session = q.session(id).unwrap().expect("registered");
        if closed {
            session.state = SessionState::Closed;
            session.end_ms = Some(9_000);
        }
        session.segment_count = 1;
        let segment = Segment {
            id: 1,
            session: id,
            index: 0,
            path: PathBuf::from("/nonexistent/000000.guac"),
            bytes: 10,
            first_sync_ms: Some(1),
            last_sync_ms: Some(9_000),
            state: SegmentState::Encoded,
            attempts: 1,
            created_ms: 1,
            updated_ms: 1,
        };
        (session, vec![segment])
    }

    /// Clip `n` of the segment, up in the bucket.
    fn clip(session: u64, n: u32) -> Clip {
        Clip {
            id: u64::from(n) + 1,
            segment: 1,
            session,
            index: n,
            path: PathBuf::from(format!("/nonexistent/{n}.mp4")),
            thumb_path: None,
            bytes: 100,
            sha256: "ab".repeat(32),
            duration_ms: 1_000,
            start_ms: u64::from(n) * 1_000,
            end_ms: u64::from(n) * 1_000 + 999,
            object_key: Some(format!("u/s-1/clip-{n}.mp4")),
            state: ClipState::LocalDeleted,
            attempts: 1,
            created_ms: 1,
            updated_ms: 1,
            events: None,
        }
    }

    #[test]
    fn restart_does_not_refile_a_final_manifest() {
        let w = World::new();
        let (s, segs) = {
            let q = w.queue();
            let (s, segs) = session(&q, true);
            let clips = [clip(s.id, 0)];
            let done = writer()
                .write(&q, &w.store, &s, &segs, &clips, 10_000)
                .unwrap();
            assert!(done.key.is_some());
            (s, segs)
        };
        let first = w.manifests();
        assert_eq!(first.len(), 1);
        assert!(first[0].ends_with("-v0000000003.json"), "{first:?}");
        for restart in 1..=3u64 {
            let q = w.queue();
            let clips = [clip(s.id, 0)];
            let now_ms = 10_000 + restart * 60_000;
            let done = writer()
                .write(&q, &w.store, &s, &segs, &clips, now_ms)
                .unwrap();
            assert_eq!(done, Written::default(), "restart {restart}");
        }
        assert_eq!(w.manifests(), first);
    }

    #[test]
    fn a_put_cut_short_is_redone_under_the_intended_key() {
        let w = World::new();
        let q = w.queue();
        let (s, segs) = session(&q, false);
        let clips = [clip(s.id, 0)];
        w.store.fail_put.store(true, Ordering::SeqCst);
        let cut = writer().write(&q, &w.store, &s, &segs, &clips, 10_000);
        assert!(matches!(cut, Err(WriteError::Store(_))), "{cut:?}");
        let intent = q.manifest_filing(s.id).unwrap().unwrap().intent.unwrap();
        assert!(intent.key.contains("/0000000010000-"), "{intent:?}");
        drop(q);
        restart_redoes_the_intent(&w, &s, &segs, &clips, &intent);
        assert_eq!(w.manifests().len(), 1);
    }

    /// A restarted writer, later, puts the recorded intent under its recorded key (the write
    /// time in a new key would differ) and the filing owes nothing more.
    fn restart_redoes_the_intent(
        w: &World,
        s: &Session,
        segs: &[Segment],
        clips: &[Clip],
        intent: &ManifestVersion,
    ) {
        let q = w.queue();
        let done = writer()
            .write(&q, &w.store, s, segs, clips, 99_000)
            .unwrap();
        assert_eq!(done.key.as_deref(), Some(intent.key.as_str()));
        let filing = q.manifest_filing(s.id).unwrap().unwrap();
        assert!(!filing.unfinished(), "{filing:?}");
        assert_eq!(filing.filed.as_ref(), Some(intent));
    }

    #[test]
    fn a_crash_between_put_and_its_record_refiles_under_the_same_key() {
        let w = World::new();
        let q = Arc::new(w.queue());
        let (s, segs) = session(&q, true);
        let clips = [clip(s.id, 0)];
        // The put lands, then the `filed` step dies before its commit.
        let armed = q.clone();
        *w.store.after_put.lock().unwrap() = Some(Box::new(move || {
            armed.set_failpoint(Some(Failpoint::AfterManifestFilingWrite));
        }));
        let cut = writer().write(&q, &w.store, &s, &segs, &clips, 10_000);
        assert!(
            matches!(cut, Err(WriteError::Queue(QueueError::InjectedFailure(_)))),
            "{cut:?}"
        );
        let put = w.manifests();
        assert_eq!(put.len(), 1);
        let intent = q.manifest_filing(s.id).unwrap().unwrap().intent.unwrap();
        assert!(intent.key.ends_with(&put[0]), "{intent:?} {put:?}");
        drop(q);
        restart_redoes_the_intent(&w, &s, &segs, &clips, &intent);
        assert_eq!(w.manifests(), put, "the same object, rewritten");
    }

    #[test]
    fn a_superseded_version_left_by_a_failed_delete_is_deleted_later() {
        let w = World::new();
        let q = w.queue();
        let (live, segs) = session(&q, false);
        let one = [clip(live.id, 0)];
        writer()
            .write(&q, &w.store, &live, &segs, &one, 10_000)
            .unwrap();
        let two = [clip(live.id, 0), clip(live.id, 1)];
        w.store.fail_delete.store(true, Ordering::SeqCst);
        let done = writer()
            .write(&q, &w.store, &live, &segs, &two, 20_000)
            .unwrap();
        assert_eq!(done.deletes_owed, 1);
        assert_eq!(w.manifests().len(), 2, "v2 stays until its delete succeeds");
        assert_eq!(q.unfinished_manifest_filings(10).unwrap(), vec![live.id]);
        drop(q);
        // Restarted: nothing new to file, but the owed delete is done and recorded.
        let q = w.queue();
        let done = writer()
            .write(&q, &w.store, &live, &segs, &two, 30_000)
            .unwrap();
        assert_eq!(done, Written::default());
        let left = w.manifests();
        assert_eq!(left.len(), 1);
        assert!(left[0].ends_with("-v0000000004.json"), "{left:?}");
        assert!(q.unfinished_manifest_filings(10).unwrap().is_empty());
    }
}
