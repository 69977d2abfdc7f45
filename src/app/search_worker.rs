//! The indexing worker of the search index, on an appliance (its own history) and in the
//! history role (the fleet's): a thread with its own tick that walks the history through the
//! [`HistorySource`] (newest sessions first), and for each playable clip not yet in the index reads
//! its events object and files it with [`SearchIndex::index_clip`]. Every so often it also
//! drops from the index the sessions the history no longer has (retention).
//!
//! Progress is the index itself: a clip is indexed (events and marker) in one commit, so a
//! crash neither loses nor duplicates (see `search::index`). An events object that is missing
//! (a clip from before events were recorded) is indexed as a clip without events; one that is
//! corrupt or not what its manifest signed is skipped and counted (`events_objects_skipped` on
//! the status board): its clip still plays, and it is tried again after a restart.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::Classify;
use crate::events::ClipEvents;
use crate::events::format::EVENTS_OBJECT_BYTES_MAX;
use crate::events::format::from_bytes;
use crate::limits::{HTTP_PAGE_ROWS_MAX, SEARCH_CLIPS_PER_TICK_MAX, SEARCH_TICK_INTERVAL_MS};
use crate::search::{ClipPlace, Expected, SearchError, SearchIndex, fetch_events};
use crate::serve::backend::HistorySource;
use crate::serve::backend::{ClipRow, SessionCursor, SessionQuery, SessionRow};
use crate::upload::ObjectStore;
use crate::upload::location::events_key;

/// The index's directory under the data directory.
pub const SEARCH_DIR: &str = "search";

/// The manifest's SHA-256 and size of a clip's events object, when the history has them.
pub type ExpectedOf = Arc<dyn Fn(&SessionRow, usize, &ClipRow) -> Option<Expected> + Send + Sync>;

/// The history role's [`ExpectedOf`]: the SHA-256 and size the clip's signed manifest holds
/// for its events object, looked up in the fleet index (clips count from 1, in the order the
/// index holds them). `None` when the manifest names no events object.
pub fn expected_from_fleet_index(index: Arc<crate::fleet::index::FleetIndex>) -> ExpectedOf {
    Arc::new(move |s, n, _| {
        let (_, session) = index
            .session(s.appliance.as_deref(), &s.session_id)
            .ok()
            .flatten()?;
        let e = session.clips.get(n.checked_sub(1)?)?.events.as_ref()?;
        Some(Expected {
            sha256: e.sha256.clone(),
            size_bytes: e.size_bytes,
        })
    })
}

/// Where a clip's screen text (OCR events object) is, once there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OcrObject {
    /// A local file (read, not yet uploaded), or else an object key.
    pub local_path: Option<PathBuf>,
    /// The object key, once uploaded.
    pub key: Option<String>,
    /// The SHA-256 and size its bytes must have.
    pub expected: Expected,
}

/// A clip's screen text, when the history has it (`None`: none, or not read yet).
pub type OcrOf = Arc<dyn Fn(&SessionRow, usize, &ClipRow) -> Option<OcrObject> + Send + Sync>;

/// The appliance's [`OcrOf`]: the queue's OCR work of the clip (the history's clip id is the
/// queue's), read once its object is written.
pub fn ocr_from_queue(queue: Arc<crate::queue::Queue>) -> OcrOf {
    use crate::queue::OcrState;
    Arc::new(move |_, _, c| match queue.ocr_of_clip(c.id).ok()??.state {
        OcrState::Read {
            path,
            sha256,
            bytes,
        } => Some(OcrObject {
            local_path: Some(path),
            key: None,
            expected: Expected {
                sha256,
                size_bytes: bytes,
            },
        }),
        OcrState::Uploaded { key, sha256, bytes } => Some(OcrObject {
            local_path: None,
            key: Some(key),
            expected: Expected {
                sha256,
                size_bytes: bytes,
            },
        }),
        OcrState::Pending | OcrState::Failed { .. } => None,
    })
}

/// The history role's [`OcrOf`]: the clip's screen text object as its signed manifest lists
/// it in the fleet index (key, SHA-256, size; clips count from 1), fetched from the bucket.
/// `None` while the manifest names none (not read, not uploaded yet, or OCR off there).
pub fn ocr_from_fleet_index(index: Arc<crate::fleet::index::FleetIndex>) -> OcrOf {
    Arc::new(move |s, n, _| {
        let (_, session) = index
            .session(s.appliance.as_deref(), &s.session_id)
            .ok()
            .flatten()?;
        let o = session.clips.get(n.checked_sub(1)?)?.ocr.as_ref()?;
        Some(OcrObject {
            local_path: None,
            key: Some(o.key.clone()),
            expected: Expected {
                sha256: o.sha256.clone(),
                size_bytes: o.size_bytes,
            },
        })
    })
}

/// What one tick did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TickReport {
    /// Clips indexed.
    pub clips: usize,
    /// Events filed.
    pub events: usize,
    /// Events objects skipped (corrupt, or not what the manifest signed).
    pub skipped: usize,
    /// Sessions dropped from the index (gone from the history).
    pub purged: usize,
    /// More clips wait (the tick stopped at its limit).
    pub more: bool,
}

/// The worker.
pub struct SearchWorker {
    index: Arc<SearchIndex>,
    backend: Arc<dyn HistorySource>,
    store: Option<Arc<dyn ObjectStore>>,
    expected: ExpectedOf,
    ocr_of: OcrOf,
    skipped: HashSet<(String, usize)>,
    skipped_total: Arc<AtomicU64>,
    /// Where the last tick stopped at its limit: the next one goes on from there.
    resume: Option<SessionCursor>,
    /// The appliance of sessions that do not name one (an appliance's own history).
    own_appliance: String,
}

impl SearchWorker {
    /// A worker filing the clips of `backend` into `index`, reading events objects beside the
    /// local MP4 or else from `store` at the clip's key with `.events.json`.
    pub fn new(
        index: Arc<SearchIndex>,
        backend: Arc<dyn HistorySource>,
        store: Option<Arc<dyn ObjectStore>>,
        expected: ExpectedOf,
    ) -> Self {
        Self {
            index,
            backend,
            store,
            expected,
            ocr_of: Arc::new(|_, _, _| None),
            skipped: HashSet::new(),
            skipped_total: Arc::new(AtomicU64::new(0)),
            resume: None,
            own_appliance: String::new(),
        }
    }

    /// Files sessions that name no appliance (an appliance's own history) under `id`.
    pub fn with_own_appliance(mut self, id: &str) -> Self {
        self.own_appliance = id.to_string();
        self
    }

    /// Indexes each clip's screen text too, where `ocr_of` finds it (the appliance with
    /// `search.ocr` on: [`ocr_from_queue`]; the history role: [`ocr_from_fleet_index`]).
    pub fn with_ocr(mut self, ocr_of: OcrOf) -> Self {
        self.ocr_of = ocr_of;
        self
    }

    /// Events objects skipped since start (shared with the status publisher).
    pub fn skipped_counter(&self) -> Arc<AtomicU64> {
        self.skipped_total.clone()
    }

    /// Indexes up to [`SEARCH_CLIPS_PER_TICK_MAX`] clips not yet indexed, newest sessions
    /// first; without `purge` it stops after a page of ended sessions that were all indexed
    /// already (older pages were done by earlier ticks); with `purge` it walks the whole
    /// history (catching clips an earlier tick could not read) and drops from the index the
    /// sessions the history no longer has.
    ///
    /// # Errors
    /// The history or the index cannot be read or written, or the store failed transiently.
    pub fn tick(&mut self, purge: bool) -> Result<TickReport, SearchError> {
        let mut report = TickReport::default();
        let mut known = HashSet::new();
        let resume = self.resume.take();
        let mut q = SessionQuery {
            limit: HTTP_PAGE_ROWS_MAX,
            before: if purge { None } else { resume },
            ..SessionQuery::default()
        };
        loop {
            let page = self
                .backend
                .list_sessions(&q)
                .map_err(|e| SearchError::Index(format!("history: {e}")))?;
            let mut page_done = true;
            for s in &page.items {
                known.insert(s.address());
                if report.clips < SEARCH_CLIPS_PER_TICK_MAX {
                    let before = report.clips;
                    let all_done = self.session(s, &mut report)?;
                    page_done &= all_done && before == report.clips && s.end_ms.is_some();
                } else {
                    if !report.more {
                        self.resume = q.before;
                    }
                    report.more = true;
                }
            }
            match page.next_before {
                Some(c) if purge || (!report.more && !page_done) => q.before = Some(c),
                _ => break,
            }
        }
        if purge {
            let gone: Vec<String> = self
                .index
                .sessions()?
                .into_iter()
                .filter(|s| !known.contains(s))
                .collect();
            self.index.delete_sessions(&gone)?;
            report.purged = gone.len();
        }
        Ok(report)
    }

    /// Indexes the session's clips not yet indexed; returns whether every clip is settled
    /// (indexed, skipped or failed).
    fn session(&mut self, s: &SessionRow, report: &mut TickReport) -> Result<bool, SearchError> {
        let address = s.address();
        let clips = self
            .backend
            .clips(&address)
            .map_err(|e| SearchError::Index(format!("history: {e}")))?;
        let mut settled = true;
        for (i, c) in clips.iter().enumerate() {
            let n = i + 1;
            let Ok(clip_index) = u32::try_from(n) else {
                break;
            };
            if c.failed || self.skipped.contains(&(address.clone(), n)) {
                continue;
            }
            let ocr = (self.ocr_of)(s, n, c);
            if self.index.has_clip(&address, clip_index)?
                && (ocr.is_none() || self.index.has_clip_ocr(&address, clip_index)?)
            {
                continue;
            }
            let source = self.source(c);
            if report.clips >= SEARCH_CLIPS_PER_TICK_MAX || source.is_none() {
                settled = false;
                continue;
            }
            let Some(source) = source else {
                continue;
            };
            let expected = (self.expected)(s, n, c);
            let events = match self.read(&source, expected.as_ref()) {
                Ok(ev) => ev,
                Err(e) if e.is_bad_object() && !matches!(e, SearchError::Store(_)) => {
                    log::warn!(
                        "event=events_object_skipped session_id={address} clip={n} error={e}"
                    );
                    self.skipped.insert((address.clone(), n));
                    self.skipped_total.fetch_add(1, Ordering::Relaxed);
                    report.skipped += 1;
                    continue;
                }
                // No events object: a clip recorded before events were kept.
                Err(e) if e.is_bad_object() => ClipEvents::default(),
                Err(e) if e.is_transient() => return Err(e),
                Err(e) => {
                    log::warn!(
                        "event=events_object_unreadable session_id={address} clip={n} error={e}"
                    );
                    self.skipped.insert((address.clone(), n));
                    report.skipped += 1;
                    continue;
                }
            };
            let place = ClipPlace {
                session: address.clone(),
                appliance: s
                    .appliance
                    .clone()
                    .unwrap_or_else(|| self.own_appliance.clone()),
                user: s.user.clone(),
                clip_index,
                clip_start_ms: c.start_ms,
                session_start_ms: s
                    .start_ms
                    .min(clips.iter().map(|c| c.start_ms).min().unwrap_or(s.start_ms)),
            };
            let screen = match &ocr {
                Some(o) => self.read_ocr(o, &address, n)?,
                None => None,
            };
            report.events += match &screen {
                Some(screen) => self.index.index_clip_with_ocr(&place, &events, screen)?,
                None => self.index.index_clip(&place, &events)?,
            };
            report.clips += 1;
        }
        Ok(settled)
    }

    /// The clip's screen text; an object that is corrupt or not what was signed is logged
    /// and counted, and the clip is indexed as if it had none (marked so: not tried again).
    fn read_ocr(
        &self,
        o: &OcrObject,
        address: &str,
        n: usize,
    ) -> Result<Option<ClipEvents>, SearchError> {
        let source = match (&o.local_path, &o.key) {
            (Some(p), _) if p.is_file() => Source::Local(p.clone()),
            (_, Some(k)) => Source::Store(k.clone()),
            _ => return Ok(None),
        };
        match self.read(&source, Some(&o.expected)) {
            Ok(ev) => Ok(Some(ev)),
            Err(e) if e.is_transient() => Err(e),
            Err(e) => {
                log::warn!("event=ocr_object_skipped session_id={address} clip={n} error={e}");
                self.skipped_total.fetch_add(1, Ordering::Relaxed);
                Ok(Some(ClipEvents::default()))
            }
        }
    }

    fn source(&self, c: &ClipRow) -> Option<Source> {
        if let Some(p) = c.local_path.as_deref().map(events_path_of)
            && p.is_file()
        {
            return Some(Source::Local(p));
        }
        match (&c.object_key, &self.store) {
            (Some(k), Some(_)) => Some(Source::Store(events_key(k))),
            _ => None,
        }
    }

    fn read(
        &self,
        source: &Source,
        expected: Option<&Expected>,
    ) -> Result<ClipEvents, SearchError> {
        match source {
            Source::Local(p) => {
                let bytes = read_capped(p)?;
                match expected {
                    Some(x) => crate::search::verify_events_object(&bytes, x),
                    None => Ok(from_bytes(&bytes)?),
                }
            }
            Source::Store(key) => match &self.store {
                Some(store) => fetch_events(store.as_ref(), key, expected),
                None => Ok(ClipEvents::default()),
            },
        }
    }
}

/// Ticks of the worker between two retention sweeps of the index.
const PURGE_EVERY_TICKS: u64 = 60;

/// Opens the search index under `<data-dir>/search` and starts its indexing worker thread;
/// `None` (logged and on the status page) when the index cannot be opened: the daemon runs on
/// without search.
///
/// # Errors
/// The OS refused a thread.
pub fn start(
    ctx: &super::Context,
    workers: &mut super::threads::Workers,
    backend: Arc<dyn HistorySource>,
    store: Option<Arc<dyn ObjectStore>>,
    expected: ExpectedOf,
    ocr_of: Option<OcrOf>,
) -> Result<Option<Arc<SearchIndex>>, super::AppError> {
    let dir = ctx.config.data_dir.join(SEARCH_DIR);
    let index = match SearchIndex::open(&dir) {
        Ok(ix) => Arc::new(ix),
        Err(e) => {
            log::error!(
                "event=search_index_unavailable dir={} error={e}",
                dir.display()
            );
            ctx.status.record_error("search", &e.to_string());
            return Ok(None);
        }
    };
    let mut worker = SearchWorker::new(index.clone(), backend, store, expected)
        .with_own_appliance(&ctx.config.appliance_id);
    if let Some(ocr_of) = ocr_of {
        worker = worker.with_ocr(ocr_of);
    }
    let skipped = worker.skipped_counter();
    let (status, shutdown) = (ctx.status.clone(), ctx.shutdown.clone());
    let heartbeat = ctx.heartbeats.register("search-indexer");
    let ix = index.clone();
    workers.spawn("search-indexer", None, move || {
        super::threads::lower_priority(crate::limits::UPLOAD_THREAD_NICE);
        let mut ticks: u64 = 0;
        loop {
            heartbeat.beat();
            let pause_ms = match worker.tick(ticks.is_multiple_of(PURGE_EVERY_TICKS)) {
                Ok(r) => {
                    if r.clips > 0 || r.purged > 0 || r.skipped > 0 {
                        log::info!(
                            "event=search_indexed clips={} events={} skipped={} purged={}",
                            r.clips,
                            r.events,
                            r.skipped,
                            r.purged
                        );
                    }
                    if r.more { 0 } else { SEARCH_TICK_INTERVAL_MS }
                }
                Err(e) => {
                    log::warn!("event=search_index_tick_failed error={e}");
                    status.record_error("search", &e.to_string());
                    SEARCH_TICK_INTERVAL_MS
                }
            };
            ticks += 1;
            let stats = ix.stats().unwrap_or_default();
            status.update(|s| {
                s.search = crate::status::SearchFacts {
                    enabled: true,
                    events: stats.events,
                    clips: stats.clips,
                    events_objects_skipped: skipped.load(Ordering::Relaxed),
                };
            });
            if shutdown.sleep(std::time::Duration::from_millis(pause_ms)) {
                break;
            }
        }
    })?;
    Ok(Some(index))
}

enum Source {
    Local(PathBuf),
    Store(String),
}

fn read_capped(p: &Path) -> Result<Vec<u8>, SearchError> {
    use std::io::Read;
    let f = std::fs::File::open(p).map_err(|e| SearchError::Io(p.display().to_string(), e))?;
    let mut bytes = Vec::new();
    f.take(EVENTS_OBJECT_BYTES_MAX as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| SearchError::Io(p.display().to_string(), e))?;
    Ok(bytes)
}

/// The events object beside a clip's local MP4: `clip-1-123.mp4` -> `clip-1-123.events.json`.
pub fn events_path_of(mp4: &Path) -> PathBuf {
    mp4.with_extension("events.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_objects_sit_beside_their_clip() {
        assert_eq!(
            events_path_of(Path::new("/d/clip-1-5.mp4")),
            PathBuf::from("/d/clip-1-5.events.json")
        );
        assert_eq!(events_key("u/s/clip-2-9.mp4"), "u/s/clip-2-9.events.json");
    }
}
