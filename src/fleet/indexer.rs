//! The history role's indexer: lists the manifest prefix of the shared bucket through the
//! [`ObjectStore`] trait, fetches what is new or changed, verifies it and files it in the
//! [`FleetIndex`].
//!
//! Two passes:
//! - [`Indexer::poll`] (every `poll-interval-s`): ListObjectsV2 from the stored cursor (the
//!   greatest key seen) minus a look-back of [`FLEET_POLL_LOOKBACK_MS`] of write time, so a
//!   manifest written by an appliance whose clock lags a little is still found. Manifest keys
//!   sort by write time (see `writer::version_key`), so a poll that finds nothing new costs
//!   one request (one page of recent keys, all already seen).
//! - [`Indexer::rescan`] (every `rescan-interval-s`): lists the whole prefix (an edited
//!   manifest has a new entity tag and is read and verified again), then every clip key of the
//!   index is looked for in a listing of the bucket: those no longer there are marked gone.
//!
//! A document that is not JSON, of an unknown format, or malformed is skipped, counted and
//! remembered (by entity tag, so it is not fetched again). A store error ends the pass and is
//! returned: the role keeps serving the index it has. Does not serve anything.
//!
//! Both passes check a clip against the object's size and SHA-256 *metadata* only (one HEAD):
//! a clip replaced in the bucket with the same metadata passes them. [`Indexer::verify_next`]
//! (the role's verifier thread, paced by `fleet.verify-bytes-per-s`) fetches each clip never
//! hashed, once, hashes its bytes and records the verdict in the index.

use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::index::{
    ClipBytes, EventsObjectRef, Filing, FilingKind, FleetIndex, IndexError, IndexedClip,
    IndexedSession, UnverifiedScan,
};
use crate::error::Classify;
use crate::limits::{
    FLEET_FETCH_THREADS, FLEET_MANIFEST_BYTES_MAX, FLEET_POLL_LOOKBACK_MS, FLEET_VERIFY_CHUNK_BYTES,
};
use crate::manifest::signed::{
    FleetEventsObject, Integrity, Parsed, StoredClip, TrustedKeys, check_clip, parse_and_verify,
    written_ms_of_key,
};
use crate::upload::{ListedObject, ObjectStore, StoreError};

/// Why a pass stopped.
#[derive(Debug, thiserror::Error)]
pub enum IndexerError {
    /// The bucket could not be listed or read.
    #[error("fleet bucket: {0}")]
    Store(#[from] StoreError),
    /// The index could not be written.
    #[error("{0}")]
    Index(#[from] IndexError),
}

impl Classify for IndexerError {
    fn is_transient(&self) -> bool {
        match self {
            IndexerError::Store(e) => e.is_transient(),
            IndexerError::Index(e) => e.is_transient(),
        }
    }
}

/// What a pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Requests sent to the store (lists, GETs, HEADs).
    pub requests: u64,
    /// Keys listed.
    pub listed: u64,
    /// Manifests fetched and filed.
    pub filed: u64,
    /// Documents skipped (bad input).
    pub skipped: u64,
    /// Clips newly marked gone.
    pub gone: u64,
}

/// Keeps the background verifier's reads under a number of bytes per second.
pub struct Pacer {
    bytes_per_s: u64,
    since: Instant,
    bytes: u64,
}

impl Pacer {
    /// A pacer allowing `bytes_per_s` (at least 1).
    pub fn new(bytes_per_s: u64) -> Self {
        Self {
            bytes_per_s: bytes_per_s.max(1),
            since: Instant::now(),
            bytes: 0,
        }
    }

    /// Counts `n` bytes read; returns how long to wait before reading more.
    pub fn after(&mut self, n: u64) -> Duration {
        self.bytes += n;
        pace_delay(self.bytes, self.bytes_per_s, self.since.elapsed())
    }

    /// Starts over (after an idle wait: idle time is no credit for a burst).
    pub fn reset(&mut self) {
        self.since = Instant::now();
        self.bytes = 0;
    }
}

/// The index's reference to an events object (the clip's own, or its screen text) as the
/// signed manifest names it.
fn events_ref(e: &FleetEventsObject) -> EventsObjectRef {
    EventsObjectRef {
        key: e.key.clone(),
        size_bytes: e.size_bytes,
        sha256: e.sha256.clone(),
    }
}

/// How long to wait after reading `bytes` in `elapsed` to stay at `bytes_per_s`.
fn pace_delay(bytes: u64, bytes_per_s: u64, elapsed: Duration) -> Duration {
    let due_ns = u128::from(bytes) * 1_000_000_000 / u128::from(bytes_per_s.max(1));
    Duration::from_nanos(u64::try_from(due_ns).unwrap_or(u64::MAX)).saturating_sub(elapsed)
}

/// What reading one clip object found.
enum Hashed {
    /// Its size and hex SHA-256.
    Bytes(u64, String),
    /// Not in the bucket.
    Gone,
    /// Stopped on the way.
    Stopped,
}

/// What one [`Indexer::verify_next`] step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyStep {
    /// The unhashed clips of the session at `cursor` were hashed.
    Session {
        /// Where to go on from.
        cursor: u64,
        /// Clips whose bytes matched.
        verified: u64,
        /// Clips whose bytes did not.
        failed: u64,
    },
    /// Nothing to hash in the rows looked at; go on after this cursor.
    Continue(u64),
    /// Every clip of the index is hashed (or gone).
    End,
    /// `pause` said to stop.
    Stopped,
}

/// The indexer of one role.
pub struct Indexer {
    store: Arc<dyn ObjectStore>,
    index: Arc<FleetIndex>,
    prefix: String,
    trusted: TrustedKeys,
    requests: AtomicU64,
}

impl Indexer {
    /// An indexer of the manifests under `prefix` (no trailing `/`) in `store`.
    pub fn new(
        store: Arc<dyn ObjectStore>,
        index: Arc<FleetIndex>,
        prefix: &str,
        trusted: TrustedKeys,
    ) -> Self {
        Self {
            store,
            index,
            prefix: prefix.trim_matches('/').to_string(),
            trusted,
            requests: AtomicU64::new(0),
        }
    }

    fn list_prefix(&self) -> String {
        if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        }
    }

    fn counted<T>(&self, r: T) -> T {
        self.requests.fetch_add(1, Ordering::Relaxed);
        r
    }

    /// The incremental pass.
    ///
    /// # Errors
    /// [`IndexerError`]; what was filed before the error stays filed.
    pub fn poll(&self) -> Result<PassReport, IndexerError> {
        self.requests.store(0, Ordering::Relaxed);
        let prefix = self.list_prefix();
        let start_after = self.index.list_cursor()?.map(|cursor| {
            match written_ms_of_key(&cursor) {
                Some(ms) => format!("{prefix}{:013}", ms.saturating_sub(FLEET_POLL_LOOKBACK_MS)),
                // A cursor that is not a version key (foreign object): list from it.
                None => cursor,
            }
        });
        let mut report = self.pass(&prefix, start_after.as_deref(), true)?;
        report.requests = self.requests.load(Ordering::Relaxed);
        Ok(report)
    }

    /// The full pass: every manifest, then the gone sweep over the bucket.
    ///
    /// # Errors
    /// [`IndexerError`].
    pub fn rescan(&self) -> Result<PassReport, IndexerError> {
        self.requests.store(0, Ordering::Relaxed);
        let prefix = self.list_prefix();
        let mut report = self.pass(&prefix, None, true)?;
        report.gone = self.sweep_gone()?;
        report.requests = self.requests.load(Ordering::Relaxed);
        Ok(report)
    }

    /// Lists from `start_after`, files what changed, advances the cursor page by page.
    fn pass(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        advance: bool,
    ) -> Result<PassReport, IndexerError> {
        let mut report = PassReport::default();
        let mut token: Option<String> = None;
        loop {
            let page = self.counted(self.store.list_page(
                prefix,
                if token.is_none() { start_after } else { None },
                token.as_deref(),
            ))?;
            report.listed += page.objects.len() as u64;
            let fresh: Vec<ListedObject> = page
                .objects
                .iter()
                .filter(|o| o.key.ends_with(".json"))
                .filter(|o| match self.index.seen(&o.key) {
                    Ok(Some(seen)) => seen.etag != o.etag || seen.size_bytes != o.size_bytes,
                    _ => true,
                })
                .cloned()
                .collect();
            let (filed, skipped) = self.fetch_and_file(&fresh)?;
            report.filed += filed;
            report.skipped += skipped;
            if advance
                && let Some(last) = page.objects.last()
                && self.index.list_cursor()?.is_none_or(|c| c < last.key)
            {
                self.index.set_list_cursor(&last.key)?;
            }
            match page.next_token {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        Ok(report)
    }

    /// Fetches and verifies `objects` on a few threads (the store answers requests
    /// concurrently; one at a time the first index of a large fleet would take hours), then
    /// files them all in one index transaction.
    fn fetch_and_file(&self, objects: &[ListedObject]) -> Result<(u64, u64), IndexerError> {
        if objects.is_empty() {
            return Ok((0, 0));
        }
        let threads = FLEET_FETCH_THREADS.min(objects.len());
        let chunk = objects.len().div_ceil(threads);
        let results: Vec<Result<Vec<Filing>, IndexerError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = objects
                .chunks(chunk)
                .map(|part| {
                    scope.spawn(move || {
                        let mut out = Vec::with_capacity(part.len());
                        for o in part {
                            if let Some(f) = self.fetch_one(o)? {
                                out.push(f);
                            }
                        }
                        Ok(out)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Ok(Vec::new())))
                .collect()
        });
        let mut batch = Vec::with_capacity(objects.len());
        for r in results {
            batch.extend(r?);
        }
        let filed = self.index.file_batch(&batch)?;
        let skipped = filed.iter().filter(|f| f.is_none()).count() as u64;
        Ok((filed.len() as u64 - skipped, skipped))
    }

    /// One manifest object, fetched and checked; `None` when it vanished meanwhile.
    fn fetch_one(&self, o: &ListedObject) -> Result<Option<Filing>, IndexerError> {
        let mut bytes = Vec::new();
        let reader = match self.counted(self.store.get(&o.key, None)) {
            Ok(r) => r,
            // Deleted between the listing and the read (superseded version): nothing to do.
            Err(StoreError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        reader
            .take(FLEET_MANIFEST_BYTES_MAX as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| StoreError::Transfer {
                detail: e.to_string(),
            })?;
        let what = match parse_and_verify(&bytes, &self.trusted) {
            Ok(parsed) => FilingKind::Session(Box::new(self.checked(&o.key, parsed)?)),
            Err(rejected) => {
                log::warn!(
                    "event=fleet_manifest_skipped key={:?} reason={rejected}",
                    o.key
                );
                FilingKind::Skipped(rejected.counter().to_string())
            }
        };
        Ok(Some(Filing {
            key: o.key.clone(),
            etag: o.etag.clone(),
            size_bytes: o.size_bytes,
            what,
        }))
    }

    /// Turns a parsed manifest into an index entry, checking each clip against the store
    /// (HEAD: size and SHA-256 metadata) when the signature holds.
    fn checked(&self, key: &str, parsed: Parsed) -> Result<IndexedSession, IndexerError> {
        let m = parsed.manifest;
        let mut integrity = parsed.integrity;
        let mut clips = Vec::with_capacity(m.clips.len());
        for c in &m.clips {
            let mut gone = false;
            if integrity.ok() {
                match self.counted(self.store.head(&c.key))? {
                    None => gone = true,
                    Some(info) => {
                        let stored = StoredClip {
                            size_bytes: info.size_bytes,
                            sha256_hex: info.sha256_hex,
                        };
                        if let Err(reason) = check_clip(c, &stored) {
                            integrity = Integrity::Failed { reason };
                        }
                    }
                }
            }
            clips.push(IndexedClip {
                key: c.key.clone(),
                thumbnail_key: c.thumbnail_key.clone(),
                size_bytes: c.size_bytes,
                sha256: c.sha256.clone(),
                start_ms: c.start_ms,
                end_ms: c.end_ms,
                gone,
                bytes: ClipBytes::Unverified,
                events: c.events.as_ref().map(events_ref),
                ocr: c.ocr.as_ref().map(events_ref),
            });
        }
        Ok(IndexedSession {
            appliance_id: m.appliance_id,
            session_id: m.session_id,
            user_id: m.user_id,
            username: m.username,
            workspace: m.image_friendly_name,
            protocol: m.protocol,
            target: m.target,
            client_addr: m.client_addr,
            start_ms: m.start_ms,
            end_ms: m.end_ms,
            state: m.state.name().to_string(),
            version: m.version,
            is_final: m.is_final,
            integrity,
            manifest_key: key.to_string(),
            clips,
        })
    }

    /// Marks clips whose objects are no longer in the bucket: one paged listing of the whole
    /// bucket (a thousand keys a request), keys looked up in the set of the index's clips.
    fn sweep_gone(&self) -> Result<u64, IndexerError> {
        let clips = self.index.clip_keys()?;
        if clips.is_empty() {
            return Ok(0);
        }
        let mut missing: HashSet<&str> = clips.iter().map(|(_, k)| k.as_str()).collect();
        let mut token: Option<String> = None;
        loop {
            let page = self.counted(self.store.list_page("", None, token.as_deref()))?;
            for o in &page.objects {
                missing.remove(o.key.as_str());
            }
            match page.next_token {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        let mut by_session: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        for (cursor, key) in &clips {
            if missing.contains(key.as_str()) {
                by_session.entry(*cursor).or_default().push(key.clone());
            }
        }
        let mut gone = 0u64;
        for (cursor, keys) in by_session {
            gone += self.index.mark_gone(cursor, &keys)? as u64;
        }
        if gone > 0 {
            log::info!("event=fleet_clips_gone count={gone}");
        }
        Ok(gone)
    }

    /// One step of the background verifier: the next session after `after` with clips never
    /// hashed has each of them fetched, hashed and compared with the manifest (size and
    /// SHA-256), reading at the `pacer`'s pace; `pause(d)` waits `d` and returns true to stop.
    /// A clip deleted meanwhile is left to the gone sweep.
    ///
    /// # Errors
    /// [`IndexerError`]; verdicts recorded before the error stay recorded.
    pub fn verify_next(
        &self,
        after: Option<u64>,
        pacer: &mut Pacer,
        pause: &dyn Fn(Duration) -> bool,
    ) -> Result<VerifyStep, IndexerError> {
        let (cursor, session) = match self.index.next_unverified(after)? {
            UnverifiedScan::Found(cursor, s) => (cursor, s),
            UnverifiedScan::Continue(cursor) => return Ok(VerifyStep::Continue(cursor)),
            UnverifiedScan::End => return Ok(VerifyStep::End),
        };
        let (mut verified, mut failed) = (0, 0);
        for (i, c) in session.clips.iter().enumerate() {
            if c.gone || c.bytes != ClipBytes::Unverified {
                continue;
            }
            let (size_bytes, sha256) = match self.hash_object(&c.key, pacer, pause)? {
                Hashed::Bytes(size_bytes, sha256) => (size_bytes, sha256),
                Hashed::Gone => continue,
                Hashed::Stopped => return Ok(VerifyStep::Stopped),
            };
            let matched = size_bytes == c.size_bytes && sha256.eq_ignore_ascii_case(&c.sha256);
            let verdict = if matched {
                verified += 1;
                ClipBytes::Verified
            } else {
                failed += 1;
                log::warn!(
                    "event=fleet_clip_bytes_failed source=verifier appliance={} session_id={} \
                     clip={} key={:?} size_bytes={size_bytes} manifest_size_bytes={}",
                    session.appliance_id,
                    session.session_id,
                    i + 1,
                    c.key,
                    c.size_bytes
                );
                ClipBytes::Failed
            };
            self.index
                .record_clip_bytes(cursor, i, &c.key, &c.sha256, verdict)?;
        }
        Ok(VerifyStep::Session {
            cursor,
            verified,
            failed,
        })
    }

    /// Size and hex SHA-256 of the object's bytes.
    fn hash_object(
        &self,
        key: &str,
        pacer: &mut Pacer,
        pause: &dyn Fn(Duration) -> bool,
    ) -> Result<Hashed, IndexerError> {
        let mut reader = match self.store.get(key, None) {
            Ok(r) => r,
            Err(StoreError::NotFound { .. }) => return Ok(Hashed::Gone),
            Err(e) => return Err(e.into()),
        };
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; FLEET_VERIFY_CHUNK_BYTES];
        let mut size_bytes = 0u64;
        loop {
            let n = reader.read(&mut buf).map_err(|e| StoreError::Transfer {
                detail: e.to_string(),
            })?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            size_bytes += n as u64;
            if pause(pacer.after(n as u64)) {
                return Ok(Hashed::Stopped);
            }
        }
        Ok(Hashed::Bytes(size_bytes, hex::encode(hasher.finalize())))
    }
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::SigningKey;

    use super::*;
    use crate::manifest::signed::{EndState, FleetClip, FleetManifest, ManifestInput};
    use crate::upload::{LocalDirStore, PutOptions};

    fn put(store: &LocalDirStore, key: &str, bytes: &[u8]) -> FleetClip {
        let sha256 = hex::encode(Sha256::digest(bytes));
        let opts = PutOptions {
            content_type: "video/mp4".into(),
            sha256_hex: sha256.clone(),
        };
        store.put_bytes(key, bytes, &opts).unwrap();
        FleetClip {
            index: 0,
            key: key.into(),
            thumbnail_key: None,
            size_bytes: bytes.len() as u64,
            sha256,
            start_ms: 1_000,
            end_ms: 2_000,
            events: None,
            ocr: None,
        }
    }

    #[test]
    fn verifier_hashes_bytes_the_metadata_checks_cannot_see() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("bucket");
        let store = Arc::new(LocalDirStore::open(&root).unwrap());
        let key = SigningKey::from_bytes(&[9; 32]);
        let trusted =
            TrustedKeys::from_hex(&[hex::encode(key.verifying_key().as_bytes())]).unwrap();
        let clips = vec![
            put(&store, "u/s/clip-0.mp4", &[1u8; 200_000]),
            put(&store, "u/s/clip-1.mp4", &[2u8; 150_000]),
        ];
        let m = FleetManifest::signed(
            ManifestInput {
                appliance_id: "proxy-a".into(),
                version: 1,
                state: EndState::Closed,
                session_id: "s".into(),
                user_id: "u".into(),
                username: "alice".into(),
                image_friendly_name: "Ubuntu".into(),
                protocol: "vnc".into(),
                start_ms: 1_000,
                end_ms: Some(2_000),
                end_reason: None,
                target: "erp.example:3389".into(),
                client_addr: "10.1.2.3:50123".into(),
                clips,
            },
            &key,
        )
        .unwrap();
        let opts = PutOptions {
            content_type: "application/json".into(),
            sha256_hex: hex::encode(Sha256::digest(m.to_json())),
        };
        store
            .put_bytes(
                "manifests/0000000002000-proxy-a-s-1.json",
                &m.to_json(),
                &opts,
            )
            .unwrap();
        let index = Arc::new(FleetIndex::open(&dir.path().join("index")).unwrap());
        let indexer = Indexer::new(store.clone(), index.clone(), "manifests", trusted);
        assert_eq!(indexer.rescan().unwrap().filed, 1);
        // Clip 2 replaced in the bucket by other bytes of the same size, its metadata kept:
        // the index's HEAD checks pass.
        std::fs::write(root.join("u/s/clip-1.mp4"), [3u8; 150_000]).unwrap();
        assert_eq!(indexer.rescan().unwrap().filed, 0);
        let s = index.session(Some("proxy-a"), "s").unwrap().unwrap().1;
        assert!(s.integrity_ok(), "{}", s.integrity_words());

        // A stop request ends a step without a verdict.
        let mut pacer = Pacer::new(1 << 30);
        let step = indexer.verify_next(None, &mut pacer, &|_| true).unwrap();
        assert_eq!(step, VerifyStep::Stopped);
        let step = indexer.verify_next(None, &mut pacer, &|_| false).unwrap();
        assert!(
            matches!(
                step,
                VerifyStep::Session {
                    verified: 1,
                    failed: 1,
                    ..
                }
            ),
            "{step:?}"
        );
        let s = index.session(Some("proxy-a"), "s").unwrap().unwrap().1;
        assert_eq!(
            [s.clips[0].bytes, s.clips[1].bytes],
            [ClipBytes::Verified, ClipBytes::Failed]
        );
        assert!(s.integrity_words().starts_with("integrity: failed (clip 2"));
        assert_eq!(index.counts().unwrap().integrity_failed, 1);
        // Each clip is hashed once.
        let VerifyStep::Session { cursor, .. } = step else {
            unreachable!()
        };
        assert_eq!(
            indexer
                .verify_next(Some(cursor), &mut pacer, &|_| false)
                .unwrap(),
            VerifyStep::End
        );
        assert_eq!(
            indexer.verify_next(None, &mut pacer, &|_| false).unwrap(),
            VerifyStep::End
        );
    }

    #[test]
    fn pace_delay_holds_the_rate() {
        let ms = Duration::from_millis;
        // Half a second's worth of bytes at once: wait what is left of that half second.
        assert_eq!(pace_delay(500_000, 1_000_000, ms(0)), ms(500));
        assert_eq!(pace_delay(500_000, 1_000_000, ms(200)), ms(300));
        // Behind the pace: no wait.
        assert_eq!(pace_delay(500_000, 1_000_000, ms(900)), ms(0));
        assert_eq!(
            pace_delay(u64::MAX, 1, ms(0)),
            Duration::from_nanos(u64::MAX)
        );
    }
}
