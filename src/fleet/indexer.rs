//! The history role's indexer: lists the manifest prefix of the shared bucket through the
//! [`ObjectStore`] trait, fetches what is new or changed, verifies it and files it in the
//! [`FleetIndex`].
//!
//! Two passes:
//! - [`Indexer::poll`] (every `poll-interval-s`): ListObjectsV2 from the stored cursor (the
//!   greatest key seen) minus a look-back of [`FLEET_POLL_LOOKBACK_MS`] of write time, so a
//!   manifest written by an appliance whose clock lags a little is still found. Manifest keys
//!   sort by write time (see `manifest::version_key`), so a poll that finds nothing new costs
//!   one request (one page of recent keys, all already seen).
//! - [`Indexer::rescan`] (every `rescan-interval-s`): lists the whole prefix (an edited
//!   manifest has a new entity tag and is read and verified again), then every clip key of the
//!   index is looked for in a listing of the bucket: those no longer there are marked gone.
//!
//! A document that is not JSON, of an unknown format, or malformed is skipped, counted and
//! remembered (by entity tag, so it is not fetched again). A store error ends the pass and is
//! returned: the role keeps serving the index it has. Does not serve anything.

use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::index::{Filing, FilingKind, FleetIndex, IndexError, IndexedClip, IndexedSession};
use super::manifest::{
    Integrity, Parsed, StoredClip, TrustedKeys, check_clip, parse_and_verify, written_ms_of_key,
};
use crate::error::Classify;
use crate::limits::{FLEET_FETCH_THREADS, FLEET_MANIFEST_BYTES_MAX, FLEET_POLL_LOOKBACK_MS};
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
            Ok(parsed) => FilingKind::Session(self.checked(&o.key, parsed)?),
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
            });
        }
        Ok(IndexedSession {
            appliance_id: m.appliance_id,
            session_id: m.session_id,
            user_id: m.user_id,
            username: m.username,
            workspace: m.image_friendly_name,
            protocol: m.protocol,
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
}
