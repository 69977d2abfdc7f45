//! The full-text index of session events (tantivy): one document per event, plus one marker
//! document per clip that says the clip is indexed and carries its activity track (the
//! player's heatmap). The appliance keeps one for its own history, the history role one for the
//! fleet; both fill it through [`SearchIndex::index_clip`].
//!
//! Durable progress without a cursor: indexing a clip deletes every document of that clip
//! (its `clip` term) and adds the new ones in ONE commit. A crash before the commit leaves the
//! clip absent (its marker too), so it is indexed again; a crash after leaves it complete; doing
//! it twice replaces, never duplicates. [`SearchIndex::has_clip`] (the marker) is what a worker
//! asks before fetching an events object.
//!
//! Typed text and clipboard contents (see [`EventKind::text_is_sensitive`]) live in their own
//! field, `secret`. A search by a viewer without the keystroke permission never reads that
//! field: such text cannot match, cannot be guessed by trying words, and is never shown; the
//! viewer still sees that the event happened (its kind, time and a summary without contents)
//! in the event pane and in a kind-filtered listing. Not here: fetching events objects, pages.
//!
//! Hits come newest first, and the index keeps every segment sorted by `at_ms`, newest first
//! (tantivy's index sorting), so a search reads each segment's matches in that order and stops
//! once it has the page and has counted [`SEARCH_HITS_COUNTED_MAX`] + 1 matches: a phrase that
//! occurs millions of times costs about as much as a rare one. Past that the count is a lower
//! bound ([`HitPage::total_exact`] false: "more than 10,000 hits"); the filters are exact.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use tantivy::collector::{Count, TopDocs};
use tantivy::query::{AllQuery, BooleanQuery, EnableScoring, Occur, Query, QueryParser, TermQuery};
use tantivy::schema::{
    FAST, Field, INDEXED, IndexRecordOption, STORED, STRING, Schema, TEXT, Value,
};
use tantivy::snippet::SnippetGenerator;
use tantivy::{
    DocAddress, DocSet, Index, IndexReader, IndexSettings, IndexSortByField, IndexWriter, Order,
    ReloadPolicy, TantivyDocument, Term,
};

use super::SearchError;
use crate::events::{ClipEvents, Direction, Event, EventDetail, EventKind};
use crate::limits::{
    SEARCH_EVENTS_PER_SESSION_MAX, SEARCH_HITS_COUNTED_MAX, SEARCH_HITS_OFFSET_MAX,
    SEARCH_SNIPPET_CHARS_MAX, SEARCH_WRITER_HEAP_BYTES,
};

/// The `kind` of a clip's marker document (never a search hit).
const MARKER_KIND: &str = "_clip";
/// The `kind` of the marker saying a clip's screen text (OCR) is indexed with it.
const OCR_MARKER_KIND: &str = "_ocr";

/// Where a clip sits: what every document of it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClipPlace {
    /// The session's address: its id on an appliance, `id@appliance` in a fleet history.
    pub session: String,
    /// The appliance that recorded it.
    pub appliance: String,
    /// The user of the session.
    pub user: String,
    /// The clip's number in the session, 1-based.
    pub clip_index: u32,
    /// Wall clock of the clip's start (its video time 0), ms since the epoch.
    pub clip_start_ms: u64,
    /// Wall clock of the session's start (the player's timeline 0), ms since the epoch.
    pub session_start_ms: u64,
}

impl ClipPlace {
    fn clip_key(&self) -> String {
        format!("{}\u{1f}{}", self.session, self.clip_index)
    }

    /// An event's offset from the session's start, as the player counts it.
    fn session_offset_ms(&self, clip_offset_ms: u64) -> u64 {
        self.clip_start_ms.saturating_sub(self.session_start_ms) + clip_offset_ms
    }
}

/// What a search asks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchQuery {
    /// Words (tantivy's query syntax; quoted phrases). Empty: every event of the filters,
    /// newest first.
    pub text: String,
    /// Case-insensitive part of the user name.
    pub user: Option<String>,
    /// Exact appliance id.
    pub appliance: Option<String>,
    /// Events at or after this wall-clock time.
    pub from_ms: Option<u64>,
    /// Events before this wall-clock time.
    pub to_ms: Option<u64>,
    /// Only these kinds (empty: all).
    pub kinds: Vec<EventKind>,
    /// Hits to skip (paging).
    pub offset: usize,
    /// Hits per page.
    pub limit: usize,
}

/// A piece of text with the ranges (byte offsets) a search matched.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Snippet {
    /// The fragment.
    pub text: String,
    /// Matched byte ranges in `text`, in order, `[start, end)`.
    pub highlights: Vec<(usize, usize)>,
}

/// One event found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Hit {
    /// The session's address.
    pub session_id: String,
    /// The appliance.
    pub appliance_id: String,
    /// The user.
    pub user: String,
    /// Clip number, 1-based.
    pub clip_index: u32,
    /// The event's kind ([`EventKind::as_str`]).
    pub kind: String,
    /// Wall clock of the event, ms since the epoch.
    pub at_ms: u64,
    /// Offset from the session's start, ms (the player's `?t=` times 1000).
    pub offset_ms: u64,
    /// What happened, without contents ("Paste, text/plain, 42 bytes").
    pub summary: String,
    /// The matched text around the match; `None` when the viewer may not see this text.
    pub snippet: Option<Snippet>,
}

/// One page of hits.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HitPage {
    /// The hits, newest first.
    pub hits: Vec<Hit>,
    /// Every hit of the query when `total_exact`; otherwise [`SEARCH_HITS_COUNTED_MAX`] and
    /// the query has more.
    pub total: usize,
    /// Whether `total` is the exact count (false: counting stopped past
    /// [`SEARCH_HITS_COUNTED_MAX`]).
    pub total_exact: bool,
    /// The `offset` of the next page, `None` at the end.
    pub next_offset: Option<usize>,
}

impl HitPage {
    /// The count in words: "1 hit", "42 hits", "more than 10,000 hits" (the page and the audit
    /// entry).
    pub fn count_label(&self) -> String {
        let n = group_thousands(self.total);
        match (self.total_exact, self.total) {
            (false, _) => format!("more than {n} hits"),
            (true, 1) => "1 hit".to_string(),
            (true, _) => format!("{n} hits"),
        }
    }
}

/// The first of the documents `0..max_doc` for which `before` is false (`before` is true for a
/// leading run and false after it).
fn partition_point(max_doc: u32, before: impl Fn(u32) -> bool) -> u32 {
    let (mut lo, mut hi) = (0u32, max_doc);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if before(mid) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

/// `12345` as `12,345`.
fn group_thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// What [`SearchIndex::newest`] found.
struct Newest {
    /// `(at_ms, address)` of the newest matches, newest first.
    found: Vec<(u64, DocAddress)>,
    /// Matches counted (stops past [`SEARCH_HITS_COUNTED_MAX`]).
    counted: usize,
}

/// The activity of one clip, placed on the session's timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClipActivity {
    /// Offset of `seconds[0]` from the session's start, ms.
    pub offset_ms: u64,
    /// Per second: changed pixels and key presses.
    pub seconds: Vec<(u64, u32)>,
}

/// Counts of the index, for the status page.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IndexStats {
    /// Event documents.
    pub events: u64,
    /// Clips indexed.
    pub clips: u64,
}

struct Fields {
    session: Field,
    appliance: Field,
    user: Field,
    user_lc: Field,
    clip: Field,
    clip_index: Field,
    kind: Field,
    at_ms: Field,
    offset_ms: Field,
    summary: Field,
    text: Field,
    secret: Field,
    activity: Field,
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let f = Fields {
        session: b.add_text_field("session", STRING | STORED),
        appliance: b.add_text_field("appliance", STRING | STORED),
        user: b.add_text_field("user", STORED),
        user_lc: b.add_text_field("user_lc", STRING),
        clip: b.add_text_field("clip", STRING),
        clip_index: b.add_u64_field("clip_index", STORED),
        kind: b.add_text_field("kind", STRING | STORED),
        at_ms: b.add_u64_field("at_ms", INDEXED | FAST | STORED),
        offset_ms: b.add_u64_field("offset_ms", FAST | STORED),
        summary: b.add_text_field("summary", STORED),
        text: b.add_text_field("text", TEXT | STORED),
        secret: b.add_text_field("secret", TEXT | STORED),
        activity: b.add_text_field("activity", STORED),
    };
    (b.build(), f)
}

/// The index: a tantivy index in one directory, one writer (behind a lock), one reader that
/// sees every commit once it returns.
pub struct SearchIndex {
    index: Index,
    /// The index's directory (clones share tantivy's cache of mapped files).
    mmap: tantivy::directory::MmapDirectory,
    reader: IndexReader,
    writer: Mutex<IndexWriter>,
    f: Fields,
}

impl std::fmt::Debug for SearchIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SearchIndex").finish_non_exhaustive()
    }
}

impl SearchIndex {
    /// Opens the index in `dir`, creating the directory and an empty index when there is none.
    ///
    /// # Errors
    /// The directory cannot be made or read, the index there is not ours or is broken.
    pub fn open(dir: &Path) -> Result<Self, SearchError> {
        std::fs::create_dir_all(dir).map_err(|e| SearchError::Io(dir.display().to_string(), e))?;
        let (schema, f) = schema();
        let mmap = tantivy::directory::MmapDirectory::open(dir)
            .map_err(|e| SearchError::Index(e.to_string()))?;
        let settings = IndexSettings {
            sort_by_field: Some(IndexSortByField {
                field: "at_ms".to_string(),
                order: Order::Desc,
            }),
            ..IndexSettings::default()
        };
        let index = Index::builder()
            .schema(schema.clone())
            .settings(settings.clone())
            .open_or_create(mmap.clone())
            .map_err(SearchError::from_tantivy)?;
        let directory = mmap.clone();
        // An index made before segments were sorted cannot be searched newest-first by
        // stopping early: start it again (the worker refiles every clip it lacks).
        let index = if index.settings().sort_by_field == settings.sort_by_field {
            index
        } else {
            Index::create(mmap, schema, settings).map_err(SearchError::from_tantivy)?
        };
        let writer = index
            .writer_with_num_threads(1, SEARCH_WRITER_HEAP_BYTES)
            .map_err(SearchError::from_tantivy)?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .map_err(SearchError::from_tantivy)?;
        Ok(Self {
            index,
            mmap: directory,
            reader,
            writer: Mutex::new(writer),
            f,
        })
    }

    fn writer(&self) -> std::sync::MutexGuard<'_, IndexWriter> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn commit(&self, w: &mut IndexWriter) -> Result<(), SearchError> {
        w.commit().map_err(SearchError::from_tantivy)?;
        self.reader.reload().map_err(SearchError::from_tantivy)?;
        // tantivy's directory remembers every file it ever mapped (path and a weak handle)
        // and forgets one only when it maps the same path again, which a merged-away
        // segment's file never is: about 1 KiB per commit, held until a restart. Asking for
        // the cache's figures drops the entries of files no reader holds any more.
        self.mmap.get_cache_info();
        Ok(())
    }

    /// Whether clip `clip_index` of `session` is indexed (its marker is committed).
    ///
    /// # Errors
    /// The index cannot be read.
    pub fn has_clip(&self, session: &str, clip_index: u32) -> Result<bool, SearchError> {
        self.has_marker(session, clip_index, MARKER_KIND)
    }

    /// Whether clip `clip_index` of `session` is indexed with its screen text (OCR).
    ///
    /// # Errors
    /// The index cannot be read.
    pub fn has_clip_ocr(&self, session: &str, clip_index: u32) -> Result<bool, SearchError> {
        self.has_marker(session, clip_index, OCR_MARKER_KIND)
    }

    fn has_marker(&self, session: &str, clip_index: u32, kind: &str) -> Result<bool, SearchError> {
        let key = format!("{session}\u{1f}{clip_index}");
        let q = BooleanQuery::new(vec![
            (Occur::Must, self.term_query(self.f.clip, &key)),
            (Occur::Must, self.term_query(self.f.kind, kind)),
        ]);
        let n = self
            .reader
            .searcher()
            .search(&q, &Count)
            .map_err(SearchError::from_tantivy)?;
        Ok(n > 0)
    }

    /// Replaces every document of the clip at `place` with `events` (and its marker) in one
    /// commit; returns the number of event documents.
    ///
    /// # Errors
    /// The index cannot be written.
    pub fn index_clip(&self, place: &ClipPlace, events: &ClipEvents) -> Result<usize, SearchError> {
        self.index_clips(&[(place.clone(), events)])
    }

    /// [`SearchIndex::index_clip`] for many clips in one commit (a rebuild, a backlog): all of
    /// them or none are in the index after a crash.
    ///
    /// # Errors
    /// The index cannot be written.
    pub fn index_clips(&self, clips: &[(ClipPlace, &ClipEvents)]) -> Result<usize, SearchError> {
        let with: Vec<_> = clips.iter().map(|(p, e)| (p.clone(), *e, None)).collect();
        self.index_clips_with(&with)
    }

    /// [`SearchIndex::index_clip`] with the clip's screen text (`ocr`, its OCR events object)
    /// filed beside its events, and a second marker saying so ([`SearchIndex::has_clip_ocr`]).
    ///
    /// # Errors
    /// The index cannot be written.
    pub fn index_clip_with_ocr(
        &self,
        place: &ClipPlace,
        events: &ClipEvents,
        ocr: &ClipEvents,
    ) -> Result<usize, SearchError> {
        self.index_clips_with(&[(place.clone(), events, Some(ocr))])
    }

    fn index_clips_with(
        &self,
        clips: &[(ClipPlace, &ClipEvents, Option<&ClipEvents>)],
    ) -> Result<usize, SearchError> {
        let mut w = self.writer();
        let mut n = 0;
        for (place, events, ocr) in clips {
            w.delete_term(Term::from_field_text(self.f.clip, &place.clip_key()));
            let screen = ocr.map(|o| o.events.as_slice()).unwrap_or_default();
            for e in events.events.iter().chain(screen) {
                w.add_document(self.event_doc(place, e))
                    .map_err(SearchError::from_tantivy)?;
            }
            w.add_document(self.marker_doc(place, events))
                .map_err(SearchError::from_tantivy)?;
            if ocr.is_some() {
                let at = place.clip_start_ms;
                w.add_document(self.common(place, OCR_MARKER_KIND, at, place.session_offset_ms(0)))
                    .map_err(SearchError::from_tantivy)?;
            }
            n += events.events.len() + screen.len();
        }
        self.commit(&mut w)?;
        Ok(n)
    }

    fn common(&self, place: &ClipPlace, kind: &str, at_ms: u64, offset_ms: u64) -> TantivyDocument {
        let mut d = TantivyDocument::default();
        d.add_text(self.f.session, &place.session);
        d.add_text(self.f.appliance, &place.appliance);
        d.add_text(self.f.user, &place.user);
        d.add_text(self.f.user_lc, place.user.to_lowercase());
        d.add_text(self.f.clip, place.clip_key());
        d.add_u64(self.f.clip_index, u64::from(place.clip_index));
        d.add_text(self.f.kind, kind);
        d.add_u64(self.f.at_ms, at_ms);
        d.add_u64(self.f.offset_ms, offset_ms);
        d
    }

    fn event_doc(&self, place: &ClipPlace, e: &Event) -> TantivyDocument {
        let kind = e.kind();
        let mut d = self.common(
            place,
            kind.as_str(),
            place.clip_start_ms + e.offset_ms,
            place.session_offset_ms(e.offset_ms),
        );
        d.add_text(self.f.summary, summary(e));
        let field = if kind.text_is_sensitive() {
            self.f.secret
        } else {
            self.f.text
        };
        d.add_text(field, e.search_text());
        d
    }

    fn marker_doc(&self, place: &ClipPlace, events: &ClipEvents) -> TantivyDocument {
        let offset = place.session_offset_ms(events.activity_start_ms);
        let mut d = self.common(
            place,
            MARKER_KIND,
            place.clip_start_ms + events.activity_start_ms,
            offset,
        );
        let seconds: Vec<(u64, u32)> = events
            .activity
            .iter()
            .map(|a| (a.changed_px, a.keys))
            .collect();
        d.add_text(
            self.f.activity,
            serde_json::to_string(&seconds).unwrap_or_default(),
        );
        d
    }

    /// Deletes every document of `session` (retention, or a session gone from the bucket).
    ///
    /// # Errors
    /// The index cannot be written.
    pub fn delete_session(&self, session: &str) -> Result<(), SearchError> {
        self.delete_sessions(&[session.to_string()])
    }

    /// Deletes every document of these sessions in one commit.
    ///
    /// # Errors
    /// The index cannot be written.
    pub fn delete_sessions(&self, sessions: &[String]) -> Result<(), SearchError> {
        if sessions.is_empty() {
            return Ok(());
        }
        let mut w = self.writer();
        for s in sessions {
            w.delete_term(Term::from_field_text(self.f.session, s));
        }
        self.commit(&mut w)
    }

    /// Every session address that has documents, sorted (for retention sweeps).
    ///
    /// # Errors
    /// The index cannot be read.
    pub fn sessions(&self) -> Result<Vec<String>, SearchError> {
        let searcher = self.reader.searcher();
        let mut out = std::collections::BTreeSet::new();
        self.for_each_term(&searcher, self.f.session, |term| {
            // A term of a deleted document may stay until its segment merges: ask.
            if !out.contains(&term) && self.count_session(&searcher, &term)? > 0 {
                out.insert(term);
            }
            Ok(())
        })?;
        Ok(out.into_iter().collect())
    }

    /// Calls `each` with every term of `field` in every segment (a term may come once per
    /// segment).
    fn for_each_term(
        &self,
        searcher: &tantivy::Searcher,
        field: Field,
        mut each: impl FnMut(String) -> Result<(), SearchError>,
    ) -> Result<(), SearchError> {
        for seg in searcher.segment_readers() {
            let inv = seg
                .inverted_index(field)
                .map_err(SearchError::from_tantivy)?;
            let mut stream = inv
                .terms()
                .stream()
                .map_err(|e| SearchError::Index(e.to_string()))?;
            while stream.advance() {
                each(String::from_utf8_lossy(stream.key()).into_owned())?;
            }
        }
        Ok(())
    }

    fn count_session(&self, s: &tantivy::Searcher, session: &str) -> Result<usize, SearchError> {
        s.search(&*self.term_query(self.f.session, session), &Count)
            .map_err(SearchError::from_tantivy)
    }

    /// Event documents and indexed clips.
    ///
    /// # Errors
    /// The index cannot be read.
    pub fn stats(&self) -> Result<IndexStats, SearchError> {
        let s = self.reader.searcher();
        let clips = s
            .search(&*self.term_query(self.f.kind, MARKER_KIND), &Count)
            .map_err(SearchError::from_tantivy)? as u64;
        Ok(IndexStats {
            events: s.num_docs().saturating_sub(clips),
            clips,
        })
    }

    fn term_query(&self, field: Field, text: &str) -> Box<dyn Query> {
        Box::new(TermQuery::new(
            Term::from_field_text(field, text),
            IndexRecordOption::Basic,
        ))
    }

    /// Events of every user whose name contains `part` (case-insensitive): the matching names
    /// are read off the term dictionaries and their postings united, which a search reads
    /// lazily (newest first, stopping early) where a regular-expression query would first
    /// gather every document of every matching user.
    fn users_query(
        &self,
        searcher: &tantivy::Searcher,
        part: &str,
    ) -> Result<Box<dyn Query>, SearchError> {
        let part = part.to_lowercase();
        let mut names = std::collections::BTreeSet::new();
        self.for_each_term(searcher, self.f.user_lc, |name| {
            if name.contains(&part) {
                names.insert(name);
            }
            Ok(())
        })?;
        // No such user: a query with no clause matches nothing.
        Ok(Box::new(BooleanQuery::new(
            names
                .iter()
                .map(|n| (Occur::Should, self.term_query(self.f.user_lc, n)))
                .collect(),
        )))
    }

    /// Only events of these kinds (all kinds: every document but the clips' markers).
    fn kinds_clause(&self, kinds: &[EventKind]) -> (Occur, Box<dyn Query>) {
        if kinds.is_empty() {
            return (Occur::MustNot, self.term_query(self.f.kind, MARKER_KIND));
        }
        let any = BooleanQuery::new(
            kinds
                .iter()
                .map(|k| (Occur::Should, self.term_query(self.f.kind, k.as_str())))
                .collect(),
        );
        (Occur::Must, Box::new(any))
    }

    /// Searches; `keystrokes` says whether the viewer may see typed text and clipboard
    /// contents (without it, that text is neither matched nor shown).
    ///
    /// # Errors
    /// The index cannot be read.
    pub fn search(&self, q: &SearchQuery, keystrokes: bool) -> Result<HitPage, SearchError> {
        let limit = q.limit.max(1);
        let offset = q.offset.min(SEARCH_HITS_OFFSET_MAX);
        let searcher = self.reader.searcher();
        let mut fields = vec![self.f.text];
        if keystrokes {
            fields.push(self.f.secret);
        }
        let mut parser = QueryParser::for_index(&self.index, fields.clone());
        parser.set_conjunction_by_default();
        let words = q.text.trim();
        let text_query: Option<Box<dyn Query>> = if words.is_empty() {
            None
        } else {
            Some(parser.parse_query_lenient(words).0)
        };
        let mut must: Vec<(Occur, Box<dyn Query>)> = vec![self.kinds_clause(&q.kinds)];
        match &text_query {
            Some(t) => must.push((Occur::Must, t.box_clone())),
            None => must.push((Occur::Must, Box::new(AllQuery))),
        }
        if let Some(a) = q.appliance.as_deref().filter(|a| !a.is_empty()) {
            must.push((Occur::Must, self.term_query(self.f.appliance, a)));
        }
        if let Some(u) = q.user.as_deref().filter(|u| !u.is_empty()) {
            must.push((Occur::Must, self.users_query(&searcher, u)?));
        }
        let query = BooleanQuery::new(must);
        let when = q.from_ms.unwrap_or(0)..q.to_ms.unwrap_or(u64::MAX);
        let newest = self.newest(&searcher, &query, &when, offset + limit)?;
        let gens = match &text_query {
            Some(t) => fields
                .iter()
                .map(|&fl| {
                    let mut g = SnippetGenerator::create(&searcher, &**t, fl)?;
                    g.set_max_num_chars(SEARCH_SNIPPET_CHARS_MAX);
                    Ok((fl, g))
                })
                .collect::<tantivy::Result<Vec<_>>>()
                .map_err(SearchError::from_tantivy)?,
            None => Vec::new(),
        };
        let mut hits = Vec::with_capacity(limit);
        for &(_, a) in newest.found.iter().skip(offset).take(limit) {
            let doc: TantivyDocument = searcher.doc(a).map_err(SearchError::from_tantivy)?;
            hits.push(self.hit_of(&doc, keystrokes, &gens));
        }
        let next = offset + hits.len();
        let total_exact = newest.counted <= SEARCH_HITS_COUNTED_MAX;
        Ok(HitPage {
            hits,
            total: newest.counted.min(SEARCH_HITS_COUNTED_MAX),
            total_exact,
            next_offset: (next < newest.counted && next <= SEARCH_HITS_OFFSET_MAX).then_some(next),
        })
    }

    /// The `want` newest matches of `query` with `at_ms` in `when` (newest first) and how many
    /// matches were counted: all of them, or [`SEARCH_HITS_COUNTED_MAX`] + 1 when there are
    /// more.
    ///
    /// Each segment is sorted newest first, so its first `want` matches are its newest, and
    /// the documents of `when` are one run of it, found by bisecting `at_ms`; a segment is read
    /// only over that run, until it gave its newest and the count passed the cap.
    fn newest(
        &self,
        searcher: &tantivy::Searcher,
        query: &dyn Query,
        when: &std::ops::Range<u64>,
        want: usize,
    ) -> Result<Newest, SearchError> {
        assert!(want > 0, "a search asks for at least one hit");
        let weight = query
            .weight(EnableScoring::disabled_from_searcher(searcher))
            .map_err(SearchError::from_tantivy)?;
        let mut found = Vec::new();
        let mut counted = 0usize;
        for (ord, seg) in searcher.segment_readers().iter().enumerate() {
            let ord = u32::try_from(ord).unwrap_or(u32::MAX);
            let at_ms = seg
                .fast_fields()
                .u64("at_ms")
                .map_err(SearchError::from_tantivy)?;
            let at = |doc: u32| at_ms.first(doc).unwrap_or(0);
            // Newest first: the run of `when` starts at the first document older than its end
            // and stops at the first one older than its start.
            let first = partition_point(seg.max_doc(), |d| at(d) >= when.end);
            let end = partition_point(seg.max_doc(), |d| at(d) >= when.start);
            if first >= end {
                continue;
            }
            let alive = seg.alive_bitset();
            let mut scorer = weight.scorer(seg, 1.0).map_err(SearchError::from_tantivy)?;
            let mut taken = 0usize;
            let mut doc = scorer.doc();
            if doc < first {
                doc = scorer.seek(first);
            }
            while doc < end {
                if alive.is_none_or(|a| a.is_alive(doc)) {
                    if taken < want {
                        found.push((at(doc), DocAddress::new(ord, doc)));
                        taken += 1;
                    }
                    counted += 1;
                    if taken == want && counted > SEARCH_HITS_COUNTED_MAX {
                        break;
                    }
                }
                doc = scorer.advance();
            }
        }
        // Newest first across segments; equal times keep the index's order (stable pages).
        found.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        found.truncate(want);
        Ok(Newest { found, counted })
    }

    fn str_of(&self, d: &TantivyDocument, f: Field) -> String {
        d.get_first(f)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string()
    }

    fn u64_of(&self, d: &TantivyDocument, f: Field) -> u64 {
        d.get_first(f).and_then(|v| v.as_u64()).unwrap_or(0)
    }

    fn hit_of(
        &self,
        d: &TantivyDocument,
        keystrokes: bool,
        gens: &[(Field, SnippetGenerator)],
    ) -> Hit {
        let kind = self.str_of(d, self.f.kind);
        let sensitive = EventKind::parse(&kind).is_none_or(EventKind::text_is_sensitive);
        let field = if sensitive {
            self.f.secret
        } else {
            self.f.text
        };
        let snippet = if sensitive && !keystrokes {
            None
        } else {
            let generated = gens
                .iter()
                .find(|(f, _)| *f == field)
                .map(|(_, g)| g.snippet_from_doc(d))
                .filter(|s| !s.highlighted().is_empty());
            Some(match generated {
                Some(s) => Snippet {
                    text: s.fragment().to_string(),
                    highlights: s.highlighted().iter().map(|r| (r.start, r.end)).collect(),
                },
                None => Snippet {
                    text: cut(&self.str_of(d, field), SEARCH_SNIPPET_CHARS_MAX),
                    highlights: Vec::new(),
                },
            })
        };
        Hit {
            session_id: self.str_of(d, self.f.session),
            appliance_id: self.str_of(d, self.f.appliance),
            user: self.str_of(d, self.f.user),
            clip_index: u32::try_from(self.u64_of(d, self.f.clip_index)).unwrap_or(u32::MAX),
            kind,
            at_ms: self.u64_of(d, self.f.at_ms),
            offset_ms: self.u64_of(d, self.f.offset_ms),
            summary: self.str_of(d, self.f.summary),
            snippet,
        }
    }

    /// Every event of `session` in time order (the player's event pane), at most
    /// `SEARCH_EVENTS_PER_SESSION_MAX`, with their text when the viewer may see it, and the
    /// activity of each indexed clip.
    ///
    /// # Errors
    /// The index cannot be read.
    pub fn session_events(
        &self,
        session: &str,
        keystrokes: bool,
    ) -> Result<(Vec<Hit>, Vec<ClipActivity>), SearchError> {
        let searcher = self.reader.searcher();
        let q = self.term_query(self.f.session, session);
        let top = TopDocs::with_limit(SEARCH_EVENTS_PER_SESSION_MAX + 1024)
            .order_by_u64_field("offset_ms", Order::Asc);
        let found = searcher
            .search(&*q, &top)
            .map_err(SearchError::from_tantivy)?;
        let mut events = Vec::new();
        let mut activity = BTreeMap::new();
        for (_, a) in found {
            let d: TantivyDocument = searcher.doc(a).map_err(SearchError::from_tantivy)?;
            if self.str_of(&d, self.f.kind) == OCR_MARKER_KIND {
                continue;
            }
            if self.str_of(&d, self.f.kind) == MARKER_KIND {
                let seconds: Vec<(u64, u32)> =
                    serde_json::from_str(&self.str_of(&d, self.f.activity)).unwrap_or_default();
                let clip = self.u64_of(&d, self.f.clip_index);
                activity.insert(
                    clip,
                    ClipActivity {
                        offset_ms: self.u64_of(&d, self.f.offset_ms),
                        seconds,
                    },
                );
            } else if events.len() < SEARCH_EVENTS_PER_SESSION_MAX {
                events.push(self.hit_of(&d, keystrokes, &[]));
            }
        }
        Ok((events, activity.into_values().collect()))
    }
}

/// What an event was, without its contents (what every viewer may see).
fn summary(e: &Event) -> String {
    let dir = |d: Direction, to: &str, from: &str| match d {
        Direction::ToRemote => to.to_string(),
        Direction::FromRemote => from.to_string(),
    };
    match &e.detail {
        EventDetail::Typed {
            keys, masked_keys, ..
        } => {
            if *masked_keys > 0 {
                format!("Typed {keys} keys ({masked_keys} not echoed, masked)")
            } else {
                format!("Typed {keys} keys")
            }
        }
        EventDetail::Clipboard {
            direction,
            mimetype,
            size_bytes,
            truncated,
            ..
        } => format!(
            "{}, {mimetype}, {size_bytes} bytes{}",
            dir(
                *direction,
                "Paste into the session",
                "Copy out of the session"
            ),
            if *truncated { " (text cut)" } else { "" }
        ),
        EventDetail::File {
            direction,
            name,
            size_bytes,
            complete,
            ..
        } => format!(
            "{} {name}, {size_bytes} bytes{}",
            dir(*direction, "Upload", "Download"),
            if *complete { "" } else { " (incomplete)" }
        ),
        EventDetail::Title { .. } => "Window or terminal title".to_string(),
        EventDetail::ScreenText { .. } => "Read off the screen".to_string(),
    }
}

/// The first `max` characters of `s`, with an ellipsis when cut.
fn cut(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::ActivitySecond;

    fn place(session: &str, clip_index: u32, clip_start_ms: u64) -> ClipPlace {
        ClipPlace {
            session: session.into(),
            appliance: "app-1".into(),
            user: "Alice@Example".into(),
            clip_index,
            clip_start_ms,
            session_start_ms: 1_000_000,
        }
    }

    fn typed(offset_ms: u64, text: &str) -> Event {
        Event {
            offset_ms,
            detail: EventDetail::Typed {
                raw: text.into(),
                text: text.into(),
                masked_keys: 0,
                keys: text.len() as u32,
            },
        }
    }

    fn title(offset_ms: u64, t: &str) -> Event {
        Event {
            offset_ms,
            detail: EventDetail::Title { title: t.into() },
        }
    }

    fn paste(offset_ms: u64, t: &str) -> Event {
        Event {
            offset_ms,
            detail: EventDetail::Clipboard {
                direction: Direction::ToRemote,
                mimetype: "text/plain".into(),
                size_bytes: t.len() as u64,
                text: Some(t.into()),
                truncated: false,
            },
        }
    }

    fn clip(events: Vec<Event>) -> ClipEvents {
        ClipEvents {
            events,
            activity_start_ms: 0,
            activity: vec![
                ActivitySecond {
                    changed_px: 10,
                    keys: 1,
                };
                3
            ],
        }
    }

    fn q(text: &str) -> SearchQuery {
        SearchQuery {
            text: text.into(),
            limit: 10,
            ..SearchQuery::default()
        }
    }

    #[test]
    fn a_word_is_found_with_its_place_and_highlight() {
        let dir = tempfile::tempdir().unwrap();
        let ix = SearchIndex::open(dir.path()).unwrap();
        let c = clip(vec![
            typed(2_500, "echo findme-42"),
            title(3_000, "root@erp: ~"),
        ]);
        ix.index_clip(&place("s1", 2, 1_060_000), &c).unwrap();
        let page = ix.search(&q("findme-42"), true).unwrap();
        assert_eq!(page.total, 1);
        let h = &page.hits[0];
        assert_eq!(h.kind, "typed");
        assert_eq!(h.at_ms, 1_062_500);
        assert_eq!(h.offset_ms, 62_500, "clip start - session start + offset");
        assert_eq!(h.clip_index, 2);
        let s = h.snippet.as_ref().unwrap();
        let (a, b) = s.highlights[0];
        assert_eq!(&s.text[a..b], "findme");
        assert_eq!(ix.search(&q("erp"), false).unwrap().hits[0].kind, "title");
    }

    #[test]
    fn keystrokes_neither_match_nor_show_without_the_permission() {
        let dir = tempfile::tempdir().unwrap();
        let ix = SearchIndex::open(dir.path()).unwrap();
        let c = clip(vec![paste(1_000, "customer list secret")]);
        ix.index_clip(&place("s1", 1, 1_000_000), &c).unwrap();
        assert_eq!(ix.search(&q("customer"), true).unwrap().total, 1);
        assert_eq!(ix.search(&q("customer"), false).unwrap().total, 0);
        let mut by_kind = q("");
        by_kind.kinds = vec![EventKind::Clipboard];
        let page = ix.search(&by_kind, false).unwrap();
        assert_eq!(page.total, 1, "the paste is seen");
        assert_eq!(page.hits[0].snippet, None, "its text is not");
        assert!(page.hits[0].summary.starts_with("Paste"));
        let (events, _) = ix.session_events("s1", false).unwrap();
        assert_eq!(events[0].snippet, None);
        let (events, activity) = ix.session_events("s1", true).unwrap();
        assert_eq!(
            events[0].snippet.as_ref().unwrap().text,
            "customer list secret"
        );
        assert_eq!(activity[0].seconds.len(), 3);
    }

    #[test]
    fn indexing_a_clip_twice_replaces_and_sessions_purge() {
        let dir = tempfile::tempdir().unwrap();
        {
            let ix = SearchIndex::open(dir.path()).unwrap();
            let c = clip(vec![typed(10, "alpha"), typed(20, "beta")]);
            assert!(!ix.has_clip("s1", 1).unwrap());
            ix.index_clip(&place("s1", 1, 1_000_000), &c).unwrap();
            ix.index_clip(&place("s1", 1, 1_000_000), &c).unwrap();
            ix.index_clip(&place("s2", 1, 2_000_000), &c).unwrap();
            assert!(ix.has_clip("s1", 1).unwrap());
        }
        // Reopened: the commit is durable and nothing is doubled.
        let ix = SearchIndex::open(dir.path()).unwrap();
        assert_eq!(
            ix.stats().unwrap(),
            IndexStats {
                events: 4,
                clips: 2
            }
        );
        assert_eq!(ix.search(&q("alpha"), true).unwrap().total, 2);
        assert_eq!(
            ix.sessions().unwrap(),
            vec!["s1".to_string(), "s2".to_string()]
        );
        ix.delete_session("s1").unwrap();
        assert_eq!(ix.search(&q("alpha"), true).unwrap().total, 1);
        assert!(!ix.has_clip("s1", 1).unwrap());
        assert_eq!(ix.sessions().unwrap(), vec!["s2".to_string()]);
    }

    #[test]
    fn hits_come_newest_first_across_segments_and_a_huge_count_is_capped() {
        let dir = tempfile::tempdir().unwrap();
        let ix = SearchIndex::open(dir.path()).unwrap();
        // One commit (one segment) per clip, their times interleaved.
        for (i, s) in ["s1", "s2", "s3"].iter().enumerate() {
            let c = clip((0..5).map(|k| typed(k * 3_000, "needle here")).collect());
            ix.index_clip(&place(s, 1, 1_000_000 + i as u64 * 1_000), &c)
                .unwrap();
        }
        let mut p = q("needle");
        p.limit = 100;
        let all = ix.search(&p, true).unwrap();
        assert_eq!((all.total, all.total_exact), (15, true));
        assert_eq!(all.count_label(), "15 hits");
        let times: Vec<u64> = all.hits.iter().map(|h| h.at_ms).collect();
        let mut sorted = times.clone();
        sorted.sort_unstable_by(|a, b| b.cmp(a));
        assert_eq!(times, sorted, "newest first");
        assert_eq!(times[0], 1_014_000);
        // Pages of 4 are the same order, cut.
        let mut paged = Vec::new();
        let mut p4 = q("needle");
        p4.limit = 4;
        loop {
            let page = ix.search(&p4, true).unwrap();
            paged.extend(page.hits.iter().map(|h| (h.session_id.clone(), h.at_ms)));
            match page.next_offset {
                Some(n) => p4.offset = n,
                None => break,
            }
        }
        let whole: Vec<_> = all
            .hits
            .iter()
            .map(|h| (h.session_id.clone(), h.at_ms))
            .collect();
        assert_eq!(paged, whole);
        ix.delete_session("s2").unwrap();
        let after = ix.search(&p, true).unwrap();
        assert_eq!(after.total, 10);
        assert!(after.hits.iter().all(|h| h.session_id != "s2"));
        // A time range is a run of each sorted segment: its start counts, its end does not.
        let mut t = p.clone();
        t.from_ms = Some(1_003_000);
        t.to_ms = Some(1_009_000);
        let times: Vec<u64> = ix
            .search(&t, true)
            .unwrap()
            .hits
            .iter()
            .map(|h| h.at_ms)
            .collect();
        assert_eq!(times, [1_008_000, 1_006_000, 1_005_000, 1_003_000]);
        t.from_ms = Some(1_014_001);
        t.to_ms = None;
        assert_eq!(ix.search(&t, true).unwrap().total, 0);

        // More matches than are counted: the count says so, the page is still the newest.
        let n = SEARCH_HITS_COUNTED_MAX as u64 + 5;
        let many = clip((0..n).map(|k| typed(k, "common word")).collect());
        ix.index_clip(&place("s4", 1, 5_000_000), &many).unwrap();
        let page = ix.search(&q("common"), true).unwrap();
        assert_eq!(page.total, SEARCH_HITS_COUNTED_MAX);
        assert!(!page.total_exact);
        assert_eq!(page.count_label(), "more than 10,000 hits");
        assert_eq!(page.hits[0].at_ms, 5_000_000 + n - 1);
        assert_eq!(page.next_offset, Some(10));
        // Filters stay exact.
        let mut t = q("common");
        t.to_ms = Some(5_000_100);
        let page = ix.search(&t, true).unwrap();
        assert_eq!((page.total, page.total_exact), (100, true));
        assert_eq!(page.hits[0].at_ms, 5_000_099);
    }

    #[test]
    fn an_index_with_unsorted_segments_starts_again_sorted() {
        let dir = tempfile::tempdir().unwrap();
        drop(Index::create_in_dir(dir.path(), schema().0).unwrap());
        let ix = SearchIndex::open(dir.path()).unwrap();
        assert_eq!(
            ix.index.settings().sort_by_field,
            Some(IndexSortByField {
                field: "at_ms".into(),
                order: Order::Desc
            })
        );
        ix.index_clip(&place("s1", 1, 1_000_000), &clip(vec![typed(1, "x")]))
            .unwrap();
        assert_eq!(ix.stats().unwrap().events, 1);
    }

    #[test]
    fn filters_and_paging() {
        let dir = tempfile::tempdir().unwrap();
        let ix = SearchIndex::open(dir.path()).unwrap();
        let c = clip((0..30).map(|i| typed(i * 1000, "ls -la")).collect());
        ix.index_clip(&place("s1", 1, 1_000_000), &c).unwrap();
        let mut p = q("ls");
        assert_eq!(ix.search(&p, true).unwrap().next_offset, Some(10));
        p.offset = 25;
        let page = ix.search(&p, true).unwrap();
        assert_eq!((page.hits.len(), page.next_offset), (5, None));
        let mut f = q("ls");
        f.user = Some("alice@".into());
        assert_eq!(ix.search(&f, true).unwrap().total, 30);
        f.user = Some("bob".into());
        assert_eq!(ix.search(&f, true).unwrap().total, 0);
        let mut t = q("ls");
        t.from_ms = Some(1_010_000);
        t.to_ms = Some(1_012_000);
        assert_eq!(ix.search(&t, true).unwrap().total, 2);
        let mut a = q("ls");
        a.appliance = Some("other".into());
        assert_eq!(ix.search(&a, true).unwrap().total, 0);
        let mut k = q("ls");
        k.kinds = vec![EventKind::Title];
        assert_eq!(ix.search(&k, true).unwrap().total, 0);
        // Query syntax errors are not errors.
        assert!(ix.search(&q("\"unclosed (AND"), true).is_ok());
    }
}
