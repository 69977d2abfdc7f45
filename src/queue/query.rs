//! Read side: lookups by id, counts for the status page, session and audit listings with
//! filters and cursor pagination, retention queries, and appending audit entries.
//!
//! Listings never fail on one bad record: an undecodable record is logged and skipped. Every
//! listing is bounded twice: by the page size (clamped to `QUEUE_PAGE_ITEMS_MAX`) and by the
//! number of records examined (`QUEUE_SCAN_RECORDS_MAX`); when the scan bound stops a page
//! early, the returned cursor lets the caller continue from there.

use heed::RoTxn;

use super::codec::{RecordDb, Versioned, decode};
use super::records::*;
use super::{Dbs, Queue, QueueError, store};
use crate::limits;

/// Segments per state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SegmentCounts {
    /// `Writing`.
    pub writing: u64,
    /// `Sealed` (waiting for an encoder).
    pub sealed: u64,
    /// `Encoding`.
    pub encoding: u64,
    /// `Encoded`.
    pub encoded: u64,
    /// `Failed`.
    pub failed: u64,
    /// `Quarantined`.
    pub quarantined: u64,
}

/// Clips per state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClipCounts {
    /// `Ready`.
    pub ready: u64,
    /// `Uploading`.
    pub uploading: u64,
    /// `Uploaded`.
    pub uploaded: u64,
    /// `LocalDeleted`.
    pub local_deleted: u64,
    /// `Failed` and parked: a permanent failure, retried only once the store works again.
    pub failed: u64,
    /// `Failed` but waiting for its next attempt (a transient failure): not failed yet.
    pub retrying: u64,
    /// `Expired`.
    pub expired: u64,
}

/// Sessions per state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionCounts {
    /// `Live`.
    pub live: u64,
    /// `Closed`.
    pub closed: u64,
    /// `Interrupted`.
    pub interrupted: u64,
}

/// Everything the status page shows about the queue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueCounts {
    /// Sessions per state.
    pub sessions: SessionCounts,
    /// Segments per state.
    pub segments: SegmentCounts,
    /// Clips per state.
    pub clips: ClipCounts,
    /// Registration time of the oldest clip still waiting for upload (`Ready` or `Failed`).
    pub oldest_waiting_clip_created_ms: Option<u64>,
    /// Current LMDB map size.
    pub map_bytes: usize,
}

impl QueueCounts {
    /// Every count under a stable `<kind>_<state>` name (`sessions_live`, `segments_sealed`,
    /// `clips_ready`, ...), the keys of the status board's `queue_counts`. `clips_uploaded`
    /// counts every clip in the store, whether its local copy is still there or not (the
    /// uploader deletes it at once, so `Uploaded` alone is nearly always 0);
    /// `clips_local_deleted` is the part of those whose local copy is gone.
    pub fn named(&self) -> Vec<(&'static str, u64)> {
        let (s, g, c) = (&self.sessions, &self.segments, &self.clips);
        vec![
            ("sessions_live", s.live),
            ("sessions_closed", s.closed),
            ("sessions_interrupted", s.interrupted),
            ("segments_writing", g.writing),
            ("segments_sealed", g.sealed),
            ("segments_encoding", g.encoding),
            ("segments_encoded", g.encoded),
            ("segments_failed", g.failed),
            ("segments_quarantined", g.quarantined),
            ("clips_ready", c.ready),
            ("clips_uploading", c.uploading),
            ("clips_uploaded", c.uploaded + c.local_deleted),
            ("clips_local_deleted", c.local_deleted),
            ("clips_failed", c.failed),
            ("clips_retrying", c.retrying),
            ("clips_expired", c.expired),
        ]
    }
}

/// One page of a listing, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// Pass as `before` to get the next (older) page; `None` when there is nothing older.
    pub next_before: Option<u64>,
}

/// A place in the session history's order: newest start first, the internal id breaking ties
/// (later registration first). Written in URLs as `START_MS-ID`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionCursor {
    /// The session's start, ms since the epoch.
    pub start_ms: u64,
    /// Its internal id (or, in the fleet history, the index's cursor).
    pub id: u64,
}

impl std::fmt::Display for SessionCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.start_ms, self.id)
    }
}

impl std::str::FromStr for SessionCursor {
    type Err = std::num::ParseIntError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (start, id) = s.split_once('-').unwrap_or((s, ""));
        Ok(Self {
            start_ms: start.parse()?,
            id: id.parse()?,
        })
    }
}

impl serde::Serialize for SessionCursor {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One page of the session history: newest start first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionPage {
    /// The sessions, newest start first.
    pub items: Vec<Session>,
    /// Pass as `before` for the next older page; `None` when nothing older matched.
    pub older: Option<SessionCursor>,
    /// Pass as `after` for the next newer page; `None` when nothing newer matched (or the
    /// page was asked for without a cursor: it is the newest).
    pub newer: Option<SessionCursor>,
}

/// Filters for [`Queue::list_sessions`]; all `None` = everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionFilter {
    /// Case-insensitive part of the user name.
    pub username: Option<String>,
    /// Case-insensitive part of the target (`host:port`).
    pub host: Option<String>,
    /// Sessions that started at or after this time.
    pub start_from_ms: Option<u64>,
    /// Sessions that started before this time.
    pub start_to_ms: Option<u64>,
    /// Case-insensitive substring of session id, user name, image name or protocol.
    pub text: Option<String>,
    /// Only sessions older than this place (the previous page's `older`).
    pub before: Option<SessionCursor>,
    /// Only sessions newer than this place (the previous page's `newer`); ignored when
    /// `before` is set.
    pub after: Option<SessionCursor>,
    /// Page size; clamped to `1..=QUEUE_PAGE_ITEMS_MAX`.
    pub limit: usize,
}

impl SessionFilter {
    /// Whether `s` passes the filters (not the cursors). `lower` holds the lower-cased
    /// `username`, `host` and `text`.
    fn keeps(&self, s: &Session, lower: &LowerFilters) -> bool {
        let user_ok = lower
            .user
            .as_deref()
            .is_none_or(|u| contains_ci(&s.username, u));
        let host_ok = lower
            .host
            .as_deref()
            .is_none_or(|h| contains_ci(&s.target, h));
        let from_ok = self.start_from_ms.is_none_or(|f| s.start_ms >= f);
        let to_ok = self.start_to_ms.is_none_or(|t| s.start_ms < t);
        let text_ok = lower.text.as_deref().is_none_or(|t| {
            contains_ci(&s.session_id, t)
                || contains_ci(&s.username, t)
                || contains_ci(&s.image_friendly_name, t)
                || contains_ci(&s.protocol, t)
                || contains_ci(&s.target, t)
        });
        user_ok && host_ok && from_ok && to_ok && text_ok
    }
}

/// The text filters of a [`SessionFilter`], lower-cased once per listing.
struct LowerFilters {
    user: Option<String>,
    host: Option<String>,
    text: Option<String>,
}

/// Filters for [`Queue::list_audit`]; all `None` = everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Exact actor.
    pub actor: Option<String>,
    /// Only this action.
    pub action: Option<AuditAction>,
    /// Entries at or after this time.
    pub from_ms: Option<u64>,
    /// Entries before this time.
    pub to_ms: Option<u64>,
    /// Case-insensitive substring of the message or actor.
    pub text: Option<String>,
    /// Only entries with a sequence number below this (cursor from the previous page).
    pub before: Option<u64>,
    /// Page size; clamped to `1..=QUEUE_PAGE_ITEMS_MAX`.
    pub limit: usize,
}

/// An entry of the start-time index: `((start ms, session id), ())`.
type StartEntry = ((u64, u64), ());

fn clamp_limit(limit: usize) -> usize {
    limit.clamp(1, limits::QUEUE_PAGE_ITEMS_MAX)
}

fn contains_ci(haystack: &str, needle_lower: &str) -> bool {
    haystack.to_lowercase().contains(needle_lower)
}

/// Walks a u64-keyed record database newest first from `before`, keeping records that pass
/// `keep`, bounded by `limit` items and the scan limit. Undecodable records are logged and
/// skipped.
fn page_newest_first<R: Versioned, T>(
    txn: &RoTxn,
    db: RecordDb<super::BeU64, R>,
    before: Option<u64>,
    limit: usize,
    mut keep: impl FnMut(R) -> Option<T>,
) -> Result<Page<T>, QueueError> {
    let limit = clamp_limit(limit);
    let upper = before.unwrap_or(u64::MAX);
    let mut items = Vec::new();
    let mut scanned = 0usize;
    for entry in db.raw().rev_range(txn, &(..upper))? {
        let (key, bytes) = entry?;
        scanned += 1;
        match decode::<R>(db.name, &key, bytes) {
            Ok(record) => {
                if let Some(item) = keep(record) {
                    items.push(item);
                }
            }
            Err(e) => log::error!(
                "queue skipping unreadable record db={} key={key} error={e}",
                db.name
            ),
        }
        if items.len() >= limit || scanned >= limits::QUEUE_SCAN_RECORDS_MAX {
            // Stopped early: there may be older records. Callers get a cursor to go on.
            let more = db.raw().rev_range(txn, &(..key))?.next().is_some();
            return Ok(Page {
                items,
                next_before: more.then_some(key),
            });
        }
    }
    Ok(Page {
        items,
        next_before: None,
    })
}

impl Queue {
    /// A session by internal id.
    ///
    /// # Errors
    /// LMDB errors; [`QueueError::Corrupt`] / [`QueueError::UnknownVersion`].
    pub fn session(&self, id: u64) -> Result<Option<Session>, QueueError> {
        self.read(|r, d| Ok(d.sessions.get(r, &id)?.map(SessionRecord::into_session)))
    }

    /// A session by external session id.
    ///
    /// # Errors
    /// As [`Queue::session`].
    pub fn session_by_external(&self, session_id: &str) -> Result<Option<Session>, QueueError> {
        self.read(|r, d| match d.session_by_external.get(r, session_id)? {
            None => Ok(None),
            Some(id) => Ok(d.sessions.get(r, &id)?.map(SessionRecord::into_session)),
        })
    }

    /// A segment by id.
    ///
    /// # Errors
    /// As [`Queue::session`].
    pub fn segment(&self, id: u64) -> Result<Option<Segment>, QueueError> {
        self.read(|r, d| Ok(d.segments.get(r, &id)?.map(|SegmentRecord::V1(s)| s)))
    }

    /// The segment at `index` in a session.
    ///
    /// # Errors
    /// As [`Queue::session`].
    pub fn segment_at(&self, session: u64, index: u32) -> Result<Option<Segment>, QueueError> {
        self.read(
            |r, d| match d.segment_by_position.get(r, &(session, u64::from(index)))? {
                None => Ok(None),
                Some(id) => Ok(d.segments.get(r, &id)?.map(|SegmentRecord::V1(s)| s)),
            },
        )
    }

    /// The segments of a session in index order (unreadable ones logged and skipped).
    ///
    /// # Errors
    /// LMDB errors.
    pub fn segments_of_session(&self, session: u64) -> Result<Vec<Segment>, QueueError> {
        self.read(|r, d| {
            let mut out = Vec::new();
            for entry in d
                .segment_by_position
                .range(r, &((session, 0)..=(session, u64::MAX)))?
            {
                let (_, id) = entry?;
                match d.segments.get(r, &id) {
                    Ok(Some(SegmentRecord::V1(s))) => out.push(s),
                    Ok(None) => {
                        log::error!("queue dangling segment index session={session} id={id}")
                    }
                    Err(e) => log::error!("queue skipping unreadable segment id={id} error={e}"),
                }
            }
            Ok(out)
        })
    }

    /// Segments in one state, oldest first, at most `limit` (clamped to the page maximum).
    ///
    /// # Errors
    /// LMDB errors.
    pub fn segments_in_state(
        &self,
        kind: SegmentStateKind,
        limit: usize,
    ) -> Result<Vec<Segment>, QueueError> {
        let limit = clamp_limit(limit);
        self.read(|r, d| {
            let tag = kind as u8;
            let mut out = Vec::new();
            for entry in d.segment_by_state.range(r, &((tag, 0)..=(tag, u64::MAX)))? {
                let ((_, id), ()) = entry?;
                match d.segments.get(r, &id) {
                    Ok(Some(SegmentRecord::V1(s))) => out.push(s),
                    Ok(None) => log::error!("queue dangling segment state index id={id}"),
                    Err(e) => log::error!("queue skipping unreadable segment id={id} error={e}"),
                }
                if out.len() >= limit {
                    break;
                }
            }
            Ok(out)
        })
    }

    /// Sessions in one state, oldest first, at most `limit` (clamped to the page maximum).
    ///
    /// # Errors
    /// LMDB errors.
    pub fn sessions_in_state(
        &self,
        state: SessionState,
        limit: usize,
    ) -> Result<Vec<Session>, QueueError> {
        let limit = clamp_limit(limit);
        self.read(|r, d| {
            let ids = Queue::ids_in_state(r, d.session_by_state, state.tag())?;
            let mut out = Vec::new();
            for id in ids.into_iter().take(limit) {
                match d.sessions.get(r, &id) {
                    Ok(Some(s)) => out.push(s.into_session()),
                    Ok(None) => log::error!("queue dangling session state index id={id}"),
                    Err(e) => log::error!("queue skipping unreadable session id={id} error={e}"),
                }
            }
            Ok(out)
        })
    }

    /// A clip by id.
    ///
    /// # Errors
    /// As [`Queue::session`].
    pub fn clip(&self, id: u64) -> Result<Option<Clip>, QueueError> {
        self.read(|r, d| Ok(d.clips.get(r, &id)?.map(ClipRecord::into_clip)))
    }

    /// The clips of a session in registration order (segment order, then clip order).
    ///
    /// # Errors
    /// LMDB errors.
    pub fn clips_of_session(&self, session: u64) -> Result<Vec<Clip>, QueueError> {
        self.read(|r, d| {
            let mut out = Vec::new();
            for entry in d
                .clip_by_session
                .range(r, &((session, 0)..=(session, u64::MAX)))?
            {
                let ((_, id), ()) = entry?;
                match d.clips.get(r, &id).map(|c| c.map(ClipRecord::into_clip)) {
                    Ok(Some(c)) => out.push(c),
                    Ok(None) => log::error!("queue dangling clip index session={session} id={id}"),
                    Err(e) => log::error!("queue skipping unreadable clip id={id} error={e}"),
                }
            }
            Ok(out)
        })
    }

    /// Retention query: clips in one of `kinds` whose `end_ms` is before `cutoff_ms`, oldest
    /// registration first, at most `limit` (clamped to the page maximum). For example
    /// `[Ready, Failed]` finds clips to expire, `[Uploaded]` finds local copies to delete.
    /// Examines at most `QUEUE_SCAN_RECORDS_MAX` clips per call.
    ///
    /// # Errors
    /// LMDB errors.
    pub fn clips_older_than(
        &self,
        kinds: &[ClipStateKind],
        cutoff_ms: u64,
        limit: usize,
    ) -> Result<Vec<Clip>, QueueError> {
        let limit = clamp_limit(limit);
        self.read(|r, d| {
            let mut out = Vec::new();
            let mut scanned = 0usize;
            for kind in kinds {
                let tag = *kind as u8;
                for entry in d.clip_by_state.range(r, &((tag, 0)..=(tag, u64::MAX)))? {
                    let ((_, id), ()) = entry?;
                    scanned += 1;
                    match d.clips.get(r, &id).map(|c| c.map(ClipRecord::into_clip)) {
                        // Retention counts from when the clip was made, not from when its session
                        // happened: an imported recording of last week must still get its full
                        // retention period to reach the bucket.
                        Ok(Some(c)) if c.created_ms < cutoff_ms => out.push(c),
                        Ok(_) => {}
                        Err(e) => log::error!("queue skipping unreadable clip id={id} error={e}"),
                    }
                    if out.len() >= limit || scanned >= limits::QUEUE_SCAN_RECORDS_MAX {
                        return Ok(out);
                    }
                }
            }
            Ok(out)
        })
    }

    /// The oldest clip still waiting for upload (`Ready` or `Failed`), if any.
    ///
    /// # Errors
    /// LMDB errors.
    pub fn oldest_waiting_clip(&self) -> Result<Option<Clip>, QueueError> {
        self.read(Self::oldest_waiting_clip_in)
    }

    fn oldest_waiting_clip_in(r: &RoTxn, d: &Dbs) -> Result<Option<Clip>, QueueError> {
        let mut oldest: Option<Clip> = None;
        for kind in [ClipStateKind::Ready, ClipStateKind::Failed] {
            let tag = kind as u8;
            // The first readable clip of each state (ids are in registration order).
            for entry in d.clip_by_state.range(r, &((tag, 0)..=(tag, u64::MAX)))? {
                let ((_, id), ()) = entry?;
                match d.clips.get(r, &id).map(|c| c.map(ClipRecord::into_clip)) {
                    Ok(Some(c)) => {
                        if oldest.as_ref().is_none_or(|o| c.id < o.id) {
                            oldest = Some(c);
                        }
                        break;
                    }
                    Ok(None) => log::error!("queue dangling clip state index id={id}"),
                    Err(e) if e.is_unreadable() => {
                        log::error!("queue skipping unreadable clip id={id} error={e}");
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(oldest)
    }

    /// Counts per state for the status page. Cost: one index walk per state (about a
    /// millisecond per 10,000 entries).
    ///
    /// # Errors
    /// LMDB errors.
    pub fn counts(&self) -> Result<QueueCounts, QueueError> {
        let map_bytes = self.map_bytes();
        self.read(|r, d| {
            let seg = |k: SegmentStateKind| Queue::count_tag(r, d.segment_by_state, k as u8);
            let clip = |k: ClipStateKind| Queue::count_tag(r, d.clip_by_state, k as u8);
            let sess = |s: SessionState| Queue::count_tag(r, d.session_by_state, s.tag());
            // `clip-due` holds the `Ready` clips and the transient failures.
            let failed = clip(ClipStateKind::Failed)?;
            let ready = clip(ClipStateKind::Ready)?;
            let retrying = d.clip_due.len(r)?.saturating_sub(ready).min(failed);
            Ok(QueueCounts {
                sessions: SessionCounts {
                    live: sess(SessionState::Live)?,
                    closed: sess(SessionState::Closed)?,
                    interrupted: sess(SessionState::Interrupted)?,
                },
                segments: SegmentCounts {
                    writing: seg(SegmentStateKind::Writing)?,
                    sealed: seg(SegmentStateKind::Sealed)?,
                    encoding: seg(SegmentStateKind::Encoding)?,
                    encoded: seg(SegmentStateKind::Encoded)?,
                    failed: seg(SegmentStateKind::Failed)?,
                    quarantined: seg(SegmentStateKind::Quarantined)?,
                },
                clips: ClipCounts {
                    ready,
                    uploading: clip(ClipStateKind::Uploading)?,
                    uploaded: clip(ClipStateKind::Uploaded)?,
                    local_deleted: clip(ClipStateKind::LocalDeleted)?,
                    failed: failed - retrying,
                    retrying,
                    expired: clip(ClipStateKind::Expired)?,
                },
                oldest_waiting_clip_created_ms: Self::oldest_waiting_clip_in(r, d)?
                    .map(|c| c.created_ms),
                map_bytes,
            })
        })
    }

    /// Sessions newest start first (id as tie-break), filtered, one page at a time: older
    /// than `before`, or the page just newer than `after`, else the newest. Walks the
    /// start-time index within the time range, so a date filter costs only its range; at
    /// most `QUEUE_SCAN_RECORDS_MAX` sessions are examined per page, and a page cut short by
    /// that still carries the cursor to go on from.
    ///
    /// # Errors
    /// LMDB errors (unreadable records are skipped, not errors).
    pub fn list_sessions(&self, filter: &SessionFilter) -> Result<SessionPage, QueueError> {
        use std::ops::Bound::{Excluded, Included};
        let limit = clamp_limit(filter.limit);
        let lower_of = |v: &Option<String>| v.as_ref().map(|t| t.to_lowercase());
        let lower = LowerFilters {
            user: lower_of(&filter.username),
            host: lower_of(&filter.host),
            text: lower_of(&filter.text),
        };
        let lo = (filter.start_from_ms.unwrap_or(0), 0);
        let hi = (filter.start_to_ms.unwrap_or(u64::MAX), 0);
        let newer_mode = filter.before.is_none() && filter.after.is_some();
        let key = |c: SessionCursor| (c.start_ms, c.id);
        let cursor = |(start_ms, id): (u64, u64)| SessionCursor { start_ms, id };
        self.read(|r, d| {
            let idx = d.session_by_start;
            // Whether the index holds anything strictly newer (or older) than `k` in range.
            let any_newer = |k| -> Result<bool, QueueError> {
                Ok(idx.range(r, &(Excluded(k), Excluded(hi)))?.next().is_some())
            };
            let any_older = |k| -> Result<bool, QueueError> {
                Ok(idx
                    .rev_range(r, &(Included(lo), Excluded(k)))?
                    .next()
                    .is_some())
            };
            let walk: Box<dyn Iterator<Item = heed::Result<StartEntry>>> = if newer_mode {
                let from = filter.after.map_or(lo, key).max(lo);
                Box::new(idx.range(r, &(Excluded(from), Excluded(hi)))?)
            } else {
                let upper = filter.before.map_or(hi, key).min(hi);
                Box::new(idx.rev_range(r, &(Included(lo), Excluded(upper)))?)
            };
            let mut items = Vec::new();
            let mut scanned = 0usize;
            let mut stopped_at = None;
            for entry in walk {
                let (k, ()) = entry?;
                scanned += 1;
                match d.sessions.get(r, &k.1) {
                    Ok(Some(rec)) => {
                        let s = rec.into_session();
                        if filter.keeps(&s, &lower) {
                            items.push(s);
                        }
                    }
                    Ok(None) => {}
                    Err(e) => log::error!("queue skipping unreadable session id={} error={e}", k.1),
                }
                if items.len() >= limit || scanned >= limits::QUEUE_SCAN_RECORDS_MAX {
                    stopped_at = Some(k);
                    break;
                }
            }
            // The first and last key the page covers, in walking order.
            let first = items.first().map(|s| (s.start_ms, s.id));
            let (older, newer) = if newer_mode {
                let newer = match stopped_at {
                    Some(k) if any_newer(k)? => Some(cursor(k)),
                    _ => None,
                };
                let older = match first {
                    Some(k) if any_older(k)? => Some(cursor(k)),
                    _ => None,
                };
                items.reverse();
                (older, newer)
            } else {
                let older = match stopped_at {
                    Some(k) if any_older(k)? => Some(cursor(k)),
                    _ => None,
                };
                let newer = match first {
                    Some(k) if filter.before.is_some() && any_newer(k)? => Some(cursor(k)),
                    _ => None,
                };
                (older, newer)
            };
            Ok(SessionPage {
                items,
                older,
                newer,
            })
        })
    }

    /// Appends an audit entry in its own transaction (views, downloads, logins: actions that
    /// change nothing else in the queue). Returns its sequence number.
    ///
    /// # Errors
    /// [`QueueError::TooLarge`] for an over-long actor or message; [`QueueError::Full`]; LMDB
    /// errors.
    pub fn append_audit(&self, entry: &NewAudit) -> Result<u64, QueueError> {
        let now_ms = self.now_ms();
        self.write(|w, d| store::append_audit(w, d, now_ms, entry))
    }

    /// Audit entries newest first, filtered, one page at a time.
    ///
    /// # Errors
    /// LMDB errors (unreadable entries are skipped).
    pub fn list_audit(&self, filter: &AuditFilter) -> Result<Page<AuditEntry>, QueueError> {
        let text = filter.text.as_ref().map(|t| t.to_lowercase());
        self.read(|r, d| {
            page_newest_first(
                r,
                d.audit,
                filter.before,
                filter.limit,
                |AuditRecord::V1(a)| {
                    let actor_ok = filter.actor.as_ref().is_none_or(|x| *x == a.actor);
                    let action_ok = filter.action.is_none_or(|x| x == a.action);
                    let from_ok = filter.from_ms.is_none_or(|f| a.time_ms >= f);
                    let to_ok = filter.to_ms.is_none_or(|t| a.time_ms < t);
                    let text_ok = text
                        .as_ref()
                        .is_none_or(|t| contains_ci(&a.message, t) || contains_ci(&a.actor, t));
                    (actor_ok && action_ok && from_ok && to_ok && text_ok).then_some(a)
                },
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_counts_are_unique_and_complete() {
        let counts = QueueCounts {
            segments: SegmentCounts {
                sealed: 7,
                ..Default::default()
            },
            ..Default::default()
        };
        let named = counts.named();
        let mut names: Vec<&str> = named.iter().map(|(n, _)| *n).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(
            names.len(),
            // `Failed` clips count twice: parked (`clips_failed`) and `clips_retrying`.
            3 + SegmentStateKind::ALL.len() + ClipStateKind::ALL.len() + 1
        );
        assert!(named.contains(&("segments_sealed", 7)));
    }

    #[test]
    fn clips_uploaded_counts_clips_whose_local_copy_is_gone() {
        // The uploader removes the local copy right after the store confirmed it: 36 uploads
        // are 36 `LocalDeleted` clips, and the status page must not say "0 uploaded".
        let counts = QueueCounts {
            clips: ClipCounts {
                local_deleted: 36,
                ..Default::default()
            },
            ..Default::default()
        };
        let named = counts.named();
        assert!(named.contains(&("clips_uploaded", 36)), "{named:?}");
        assert!(named.contains(&("clips_local_deleted", 36)), "{named:?}");
    }

    #[test]
    fn limits_are_clamped() {
        assert_eq!(clamp_limit(0), 1);
        assert_eq!(clamp_limit(usize::MAX), limits::QUEUE_PAGE_ITEMS_MAX);
        assert!(contains_ci("Ubuntu Desktop", "desk"));
    }
}
