//! The manifests owed and the durable record of each session's fleet manifest filing: which
//! sessions' manifests are to be written (marked by `store.rs` in the transaction of the change
//! that made them owed), which version is filed under which key, which put is intended but not
//! confirmed, which superseded keys are still to delete.
//!
//! Owed manifests: [`Queue::next_owed_manifest`] hands the manifest worker the first one due,
//! [`Queue::manifest_paid`] removes the mark once the manifests are written (unless another
//! change came meanwhile), [`Queue::manifest_retry_at`] puts it off after a failure. A crash at
//! any point leaves the mark, so the manifests are written again after the restart.
//!
//! Owns the write-ahead steps and their order, each one short write transaction:
//! [`Queue::intend_manifest`] (key chosen, recorded before the put), [`Queue::manifest_filed`]
//! (the store confirmed the put; the version it replaces becomes superseded),
//! [`Queue::manifest_deleted`] (a superseded key is gone). A crash between two steps leaves the
//! record saying which step is owed; the caller redoes it. Also owns the `unfinished` index (the
//! sessions with a step owed), so start-up finds them without a scan, and the removal of a
//! filing with its session (`retention.rs` calls [`drop_filing`]).
//!
//! Does not own the version rule, the key format or any store call: the `manifest` module
//! decides and does the I/O, between these calls, never inside a transaction.

use heed::{RoTxn, RwTxn};

use super::records::*;
use super::store::{delete_owed, load_owed, owe_manifest, put_owed, session_ended};
use super::{Dbs, Entity, Failpoint, Queue, QueueError, check_len};
use crate::limits::{FLEET_SUPERSEDED_KEYS_MAX, QUEUE_TEXT_BYTES_MAX, S3_KEY_BYTES_MAX};

/// What [`Queue::next_owed_manifest`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwedNext {
    /// Nothing is owed.
    Nothing,
    /// Manifests are owed, the first not before this time (ms).
    NotBefore(u64),
    /// This session's manifests are due now.
    Due(OwedManifest),
}

impl Queue {
    /// The owed manifest due first: one due at `now_ms` or earlier, else when the next one is.
    ///
    /// # Errors
    /// LMDB errors; [`QueueError::InjectedFailure`] at [`Failpoint::OwedManifestTaken`].
    pub fn next_owed_manifest(&self, now_ms: u64) -> Result<OwedNext, QueueError> {
        let next = self.read(|r, d| {
            let Some(((due_ms, session), ())) = d.manifest_owed_due.first(r)? else {
                return Ok(OwedNext::Nothing);
            };
            if due_ms > now_ms {
                return Ok(OwedNext::NotBefore(due_ms));
            }
            let owed = match load_owed(r, d, session) {
                Ok(owed) => owed,
                Err(e) if e.is_unreadable() => None,
                Err(e) => return Err(e),
            };
            // An index entry without its record (or with an unreadable one): due anyway, as
            // its first change; paying it removes both.
            Ok(OwedNext::Due(owed.unwrap_or(OwedManifest {
                session,
                marks: 0,
                attempts: 0,
                due_ms,
                last_error: None,
            })))
        })?;
        if matches!(next, OwedNext::Due(_)) {
            self.hit(Failpoint::OwedManifestTaken)?;
        }
        Ok(next)
    }

    /// The manifests of `owed.session` are written: removes the mark, unless a change came
    /// since it was taken (its `marks` moved on; then it stays due). Returns whether it was
    /// removed.
    ///
    /// # Errors
    /// LMDB errors.
    pub fn manifest_paid(&self, owed: &OwedManifest) -> Result<bool, QueueError> {
        self.write(|w, d| {
            let now = match load_owed(w, d, owed.session) {
                Ok(now) => now,
                Err(e) if e.is_unreadable() => None,
                Err(e) => return Err(e),
            };
            if now.as_ref().is_some_and(|n| n.marks != owed.marks) {
                return Ok(false);
            }
            if now.is_none() {
                // The index entry alone (see `next_owed_manifest`).
                d.manifest_owed_due
                    .delete(w, &(owed.due_ms, owed.session))?;
            }
            delete_owed(w, d, owed.session)?;
            Ok(true)
        })
    }

    /// The manifests of `owed.session` could not be written: not to be tried again before
    /// `due_ms`, with `error` shown meanwhile. A change that came since it was taken makes it
    /// due now anyway (nothing is changed then).
    ///
    /// # Errors
    /// LMDB errors.
    pub fn manifest_retry_at(
        &self,
        owed: &OwedManifest,
        due_ms: u64,
        error: &str,
    ) -> Result<(), QueueError> {
        let mut error = error.to_string();
        if error.len() > QUEUE_TEXT_BYTES_MAX {
            let mut cut = QUEUE_TEXT_BYTES_MAX;
            while !error.is_char_boundary(cut) {
                cut -= 1;
            }
            error.truncate(cut);
        }
        self.write(|w, d| {
            let now = match load_owed(w, d, owed.session) {
                Ok(Some(now)) if now.marks == owed.marks => now,
                Ok(Some(_)) => return Ok(()),
                Ok(None) | Err(_) => {
                    // Paid meanwhile, or unreadable: a fresh mark carries the retry.
                    owe_manifest(w, d, owed.session)?;
                    load_owed(w, d, owed.session)?.expect("just written")
                }
            };
            let next = OwedManifest {
                attempts: now.attempts.saturating_add(1),
                due_ms,
                last_error: Some(error.clone()),
                ..now.clone()
            };
            put_owed(w, d, Some(&now), &next)
        })
    }

    /// How many sessions have manifests owed.
    ///
    /// # Errors
    /// LMDB errors.
    pub fn owed_manifest_count(&self) -> Result<u64, QueueError> {
        self.read(|r, d| Ok(d.manifest_owed.raw().len(r)?))
    }

    /// The owed manifest of queue session `session`, if any.
    ///
    /// # Errors
    /// LMDB errors; [`QueueError::Corrupt`] / [`QueueError::UnknownVersion`].
    pub fn owed_manifest(&self, session: u64) -> Result<Option<OwedManifest>, QueueError> {
        self.read(|r, d| load_owed(r, d, session))
    }

    /// The filing record of queue session `session`, if any version was ever intended.
    ///
    /// # Errors
    /// LMDB errors; [`QueueError::Corrupt`] / [`QueueError::UnknownVersion`].
    pub fn manifest_filing(&self, session: u64) -> Result<Option<ManifestFiling>, QueueError> {
        self.read(|r, d| load_filing(r, d, session))
    }

    /// Step 1: records that `next` is about to be put under `next.key`. An earlier intent
    /// under another key (a put that may or may not have happened before a crash) becomes a
    /// superseded key; intending the same key again changes nothing (the replay of a put).
    ///
    /// # Errors
    /// [`QueueError::NotFound`] when the session is gone (purged); [`QueueError::StaleState`]
    /// when the final version is filed or `next` is not newer than the filed version;
    /// [`QueueError::TooLarge`] for a key over the S3 limit or when filing `next` would owe
    /// more than [`FLEET_SUPERSEDED_KEYS_MAX`] deletes; LMDB errors.
    pub fn intend_manifest(
        &self,
        session: u64,
        next: &ManifestVersion,
    ) -> Result<ManifestFiling, QueueError> {
        check_len("manifest key", &next.key, S3_KEY_BYTES_MAX)?;
        let now_ms = self.now_ms();
        self.write(|w, d| {
            if d.sessions.get(w, &session)?.is_none() {
                return Err(QueueError::NotFound {
                    entity: Entity::Session,
                    key: session.to_string(),
                });
            }
            let mut filing = load_filing(w, d, session)?.unwrap_or(ManifestFiling {
                session,
                filed: None,
                intent: None,
                superseded: Vec::new(),
                updated_ms: now_ms,
            });
            if filing.intent.as_ref().is_some_and(|i| i.key == next.key) {
                return Ok(filing);
            }
            if let Some(filed) = &filing.filed
                && ((filed.is_final && !next.is_final) || filed.version >= next.version)
            {
                // A final version is followed only by newer final ones (an OCR object listed
                // after the session ended).
                return Err(stale(
                    session,
                    "older filed version",
                    "final or newer filed",
                ));
            }
            // Room for every delete this filing can owe once `next` is filed: the abandoned
            // intent and the version `next` replaces.
            let owed = filing.superseded.len()
                + usize::from(filing.intent.is_some())
                + usize::from(filing.filed.is_some());
            if owed > FLEET_SUPERSEDED_KEYS_MAX {
                return Err(QueueError::TooLarge {
                    field: "superseded manifest keys",
                    bytes: owed,
                    max: FLEET_SUPERSEDED_KEYS_MAX,
                });
            }
            if let Some(abandoned) = filing.intent.take() {
                supersede(&mut filing, abandoned.key);
            }
            filing.intent = Some(next.clone());
            filing.updated_ms = now_ms;
            put_filing(w, d, &filing)?;
            self.hit(Failpoint::AfterManifestFilingWrite)?;
            Ok(filing)
        })
    }

    /// Step 2: the store confirmed the put of the intent under `key`: it becomes the filed
    /// version, and the version it replaces becomes a superseded key to delete.
    ///
    /// # Errors
    /// [`QueueError::StaleState`] when the intent recorded is not `key` (another writer moved
    /// on, or it was already filed); [`QueueError::NotFound`] without a record; LMDB errors.
    pub fn manifest_filed(&self, session: u64, key: &str) -> Result<ManifestFiling, QueueError> {
        self.change_filing(session, |filing| {
            let intent = match filing.intent.take() {
                Some(i) if i.key == key => i,
                Some(_) => return Err(stale(session, "intent of this key", "another intent")),
                None => return Err(stale(session, "intent of this key", "no intent")),
            };
            if let Some(old) = filing.filed.replace(intent) {
                assert!(
                    old.key != key,
                    "a filed manifest key is intended again (session {session})"
                );
                supersede(filing, old.key);
            }
            Ok(true)
        })
    }

    /// Step 3: superseded `key` is deleted from the store. Idempotent: a key no longer listed
    /// (the replay of a delete) changes nothing.
    ///
    /// # Errors
    /// [`QueueError::NotFound`] without a record; LMDB errors.
    pub fn manifest_deleted(&self, session: u64, key: &str) -> Result<ManifestFiling, QueueError> {
        self.change_filing(session, |filing| {
            let before = filing.superseded.len();
            filing.superseded.retain(|k| k != key);
            Ok(filing.superseded.len() != before)
        })
    }

    /// Applies `change` to the existing filing of `session` in one write transaction and
    /// stores it when `change` says it changed anything.
    fn change_filing(
        &self,
        session: u64,
        mut change: impl FnMut(&mut ManifestFiling) -> Result<bool, QueueError>,
    ) -> Result<ManifestFiling, QueueError> {
        let now_ms = self.now_ms();
        self.write(|w, d| {
            let mut filing = load_filing(w, d, session)?.ok_or_else(|| QueueError::NotFound {
                entity: Entity::ManifestFiling,
                key: session.to_string(),
            })?;
            if change(&mut filing)? {
                filing.updated_ms = now_ms;
                put_filing(w, d, &filing)?;
                self.hit(Failpoint::AfterManifestFilingWrite)?;
            }
            Ok(filing)
        })
    }

    /// Queue session ids whose filing has a step owed (a put not confirmed, a superseded key
    /// not deleted), oldest first, at most `limit`: what start-up hands to the writer again.
    ///
    /// # Errors
    /// LMDB errors.
    pub fn unfinished_manifest_filings(&self, limit: usize) -> Result<Vec<u64>, QueueError> {
        self.read(|r, d| {
            let mut ids = Vec::new();
            for entry in d.manifest_unfinished.iter(r)? {
                if ids.len() >= limit {
                    break;
                }
                ids.push(entry?.0);
            }
            Ok(ids)
        })
    }
}

fn stale(session: u64, expected: &'static str, actual: &'static str) -> QueueError {
    QueueError::StaleState {
        entity: Entity::ManifestFiling,
        id: session,
        expected,
        actual,
    }
}

/// Adds `key` to the deletes owed (`intend_manifest` made room for it).
fn supersede(filing: &mut ManifestFiling, key: String) {
    if !filing.superseded.contains(&key) {
        filing.superseded.push(key);
    }
    assert!(
        filing.superseded.len() <= FLEET_SUPERSEDED_KEYS_MAX,
        "manifest filing of session {} owes more deletes than its limit",
        filing.session
    );
}

fn load_filing(r: &RoTxn, d: &Dbs, session: u64) -> Result<Option<ManifestFiling>, QueueError> {
    Ok(d.manifest_filings
        .get(r, &session)?
        .map(|ManifestFilingRecord::V1(f)| f))
}

/// Writes a filing and keeps the `unfinished` index in step with it.
fn put_filing(w: &mut RwTxn, d: &Dbs, filing: &ManifestFiling) -> Result<(), QueueError> {
    if filing.unfinished() {
        d.manifest_unfinished.put(w, &filing.session, &())?;
    } else {
        d.manifest_unfinished.delete(w, &filing.session)?;
    }
    d.manifest_filings.put(
        w,
        &filing.session,
        &ManifestFilingRecord::V1(filing.clone()),
    )
}

/// Schema migration to 3: marks the manifests owed of every ended session whose final fleet
/// manifest is not filed, or whose filing owes a step (before, a start-up rescan found them).
/// Returns how many it marked.
pub(super) fn owe_unfiled_manifests(w: &mut RwTxn, d: &Dbs) -> Result<u64, QueueError> {
    let mut owed = Vec::new();
    for entry in d.sessions.raw().iter(w)? {
        let (id, bytes) = entry?;
        let Ok(rec) = super::codec::decode::<SessionRecord>(d.sessions.name, &id, bytes) else {
            continue;
        };
        let session = rec.into_session();
        let filing = load_filing(w, d, id).ok().flatten();
        let done = filing
            .as_ref()
            .is_some_and(|f| f.final_filed() && !f.unfinished());
        if (session_ended(&session) && !done) || filing.is_some_and(|f| f.unfinished()) {
            owed.push(id);
        }
    }
    for &id in &owed {
        owe_manifest(w, d, id)?;
    }
    Ok(owed.len() as u64)
}

/// For the history purge: whether `session`'s filing still owes a step (then the session is
/// work in flight and stays), else removes the record. An unreadable record is removed (it can
/// never be replayed).
pub(super) fn drop_filing(w: &mut RwTxn, d: &Dbs, session: u64) -> Result<bool, QueueError> {
    match load_filing(w, d, session) {
        Ok(Some(f)) if f.unfinished() => return Ok(false),
        Ok(_) => {}
        Err(e) if e.is_unreadable() => {
            log::error!("queue purge drops unreadable manifest filing session={session} error={e}")
        }
        Err(e) => return Err(e),
    }
    d.manifest_unfinished.delete(w, &session)?;
    d.manifest_filings.raw().delete(w, &session)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::clock::ManualClock;
    use crate::queue::QueueOptions;

    fn open(dir: &std::path::Path) -> Queue {
        Queue::open(&QueueOptions::new(dir), Arc::new(ManualClock::new(1_000))).unwrap()
    }

    fn session(q: &Queue, name: &str) -> u64 {
        q.register_session(&NewSession {
            session_id: name.into(),
            user_id: "u".into(),
            username: "user".into(),
            image_friendly_name: "img".into(),
            protocol: "vnc".into(),
            start_ms: 1,
            target: String::new(),
            client_addr: String::new(),
        })
        .unwrap()
    }

    fn v(version: u64, key: &str) -> ManifestVersion {
        ManifestVersion {
            version,
            key: key.into(),
            is_final: version % 2 == 1,
        }
    }

    #[test]
    fn intent_filed_deleted_walk_the_steps() {
        let dir = tempfile::tempdir().unwrap();
        let q = open(dir.path());
        let s = session(&q, "s1");
        assert_eq!(q.manifest_filing(s).unwrap(), None);

        let f = q.intend_manifest(s, &v(2, "m/1-v2")).unwrap();
        assert_eq!(f.intent, Some(v(2, "m/1-v2")));
        assert!(f.unfinished());
        assert_eq!(q.unfinished_manifest_filings(10).unwrap(), vec![s]);

        let f = q.manifest_filed(s, "m/1-v2").unwrap();
        assert_eq!((f.filed, f.intent), (Some(v(2, "m/1-v2")), None));
        assert!(f.superseded.is_empty());
        assert_eq!(
            q.unfinished_manifest_filings(10).unwrap(),
            Vec::<u64>::new()
        );

        q.intend_manifest(s, &v(5, "m/2-v5")).unwrap();
        let f = q.manifest_filed(s, "m/2-v5").unwrap();
        assert_eq!(f.superseded, vec!["m/1-v2".to_string()]);
        assert!(f.final_filed());
        assert_eq!(q.unfinished_manifest_filings(10).unwrap(), vec![s]);

        let f = q.manifest_deleted(s, "m/1-v2").unwrap();
        assert!(!f.unfinished());
        assert_eq!(
            q.unfinished_manifest_filings(10).unwrap(),
            Vec::<u64>::new()
        );
        // A replayed delete changes nothing.
        assert_eq!(q.manifest_deleted(s, "m/1-v2").unwrap(), f);
    }

    fn assert_stale(r: Result<ManifestFiling, QueueError>) {
        assert!(matches!(r, Err(QueueError::StaleState { .. })), "{r:?}");
    }

    #[test]
    fn older_versions_and_live_ones_after_the_final_are_never_filed() {
        let dir = tempfile::tempdir().unwrap();
        let q = open(dir.path());
        let s = session(&q, "s1");
        q.intend_manifest(s, &v(4, "m/1-v4")).unwrap();
        q.manifest_filed(s, "m/1-v4").unwrap();
        assert_stale(q.intend_manifest(s, &v(4, "m/9-v4")));
        q.intend_manifest(s, &v(5, "m/2-v5")).unwrap();
        q.manifest_filed(s, "m/2-v5").unwrap();
        // After the final version only a newer final one (an OCR object listed later).
        assert_stale(q.intend_manifest(s, &v(6, "m/3-v6")));
        q.intend_manifest(s, &v(7, "m/3-v7")).unwrap();
        q.manifest_filed(s, "m/3-v7").unwrap();
        assert_stale(q.intend_manifest(s, &v(7, "m/4-v7")));
        // Filing a key that is not the intent is refused.
        assert_stale(q.manifest_filed(s, "m/3-v7"));
        // A purged (unknown) session gets no record.
        let gone = q.intend_manifest(999, &v(2, "m/1-v2"));
        assert!(matches!(gone, Err(QueueError::NotFound { .. })), "{gone:?}");
    }

    #[test]
    fn replay_after_interrupted_steps_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let s;
        {
            let q = open(dir.path());
            s = session(&q, "s1");
            q.intend_manifest(s, &v(2, "m/1-v2")).unwrap();
            q.manifest_filed(s, "m/1-v2").unwrap();
            // Crash after the intent of v4 (its put may or may not have happened).
            q.intend_manifest(s, &v(4, "m/2-v4")).unwrap();
        }
        {
            let q = open(dir.path());
            assert_eq!(q.unfinished_manifest_filings(10).unwrap(), vec![s]);
            let f = q.manifest_filing(s).unwrap().unwrap();
            assert_eq!(f.intent, Some(v(4, "m/2-v4")), "the owed put is known");
            // The replay intends the same key: one key per version, nothing superseded.
            let f = q.intend_manifest(s, &v(4, "m/2-v4")).unwrap();
            assert!(f.superseded.is_empty());
            // Crash after the put was confirmed, before the old version was deleted.
            q.manifest_filed(s, "m/2-v4").unwrap();
        }
        {
            let q = open(dir.path());
            let f = q.manifest_filing(s).unwrap().unwrap();
            assert_eq!(
                f.superseded,
                vec!["m/1-v2".to_string()],
                "the owed delete is known"
            );
            // The content moved on meanwhile: a newer intent, then a crash; the next run
            // intends v7 instead, and the abandoned key joins the deletes owed.
            q.intend_manifest(s, &v(6, "m/3-v6")).unwrap();
            let f = q.intend_manifest(s, &v(7, "m/4-v7")).unwrap();
            assert_eq!(
                f.superseded,
                vec!["m/1-v2".to_string(), "m/3-v6".to_string()]
            );
            q.manifest_filed(s, "m/4-v7").unwrap();
        }
        let q = open(dir.path());
        let f = q.manifest_filing(s).unwrap().unwrap();
        assert_eq!(f.superseded.len(), 3, "{f:?}");
        for key in f.superseded.clone() {
            q.manifest_deleted(s, &key).unwrap();
        }
        let f = q.manifest_filing(s).unwrap().unwrap();
        assert!(!f.unfinished() && f.final_filed(), "{f:?}");
        assert_eq!(
            q.unfinished_manifest_filings(10).unwrap(),
            Vec::<u64>::new()
        );
    }

    #[test]
    fn a_queue_from_before_the_filing_tables_opens_and_gains_them() {
        use heed::types::{Bytes, U64};
        use heed::{CommitOrAbort, EnvOpenOptions};

        use crate::queue::db_name;
        let dir = tempfile::tempdir().unwrap();
        {
            // The environment as a build without fleet filings left it: its databases only.
            let mut builder = EnvOpenOptions::new().read_txn_without_tls();
            builder.max_dbs(crate::limits::QUEUE_DBS_MAX);
            // SAFETY: a fresh directory, opened once in this test and closed before the queue.
            let env = unsafe { builder.open(dir.path()).unwrap() };
            let old = [
                db_name::META,
                db_name::SESSIONS,
                db_name::SESSION_BY_EXTERNAL,
                db_name::SEGMENTS,
                db_name::SEGMENT_BY_POSITION,
                db_name::SEGMENT_BY_STATE,
                db_name::CLIPS,
                db_name::CLIP_BY_POSITION,
                db_name::CLIP_BY_SESSION,
                db_name::CLIP_BY_STATE,
                db_name::CLIP_DUE,
                db_name::AUDIT,
                db_name::USERS,
                db_name::TOKENS,
                db_name::WEB_SESSIONS,
                db_name::SETTINGS,
                db_name::SESSION_BY_STATE,
                db_name::SEGMENT_READY,
            ];
            let wtxn = env.write_txn().unwrap();
            env.create_databases_and_commit(wtxn, |o, w| -> Result<_, heed::Error> {
                for name in old {
                    o.create_database::<Bytes, Bytes>(w, Some(name))?;
                }
                let meta = o.create_database::<heed::types::Str, U64<heed::byteorder::BigEndian>>(
                    w,
                    Some(db_name::META),
                )?;
                meta.put(w, "schema-version", &1)?;
                Ok(CommitOrAbort::<_, ()>::Commit(()))
            })
            .unwrap()
            .unwrap_commit();
            let closing = env.prepare_for_closing();
            closing.wait();
        }
        let q = open(dir.path());
        let s = session(&q, "s1");
        assert_eq!(q.manifest_filing(s).unwrap(), None);
        q.intend_manifest(s, &v(2, "m/1-v2")).unwrap();
        assert_eq!(q.unfinished_manifest_filings(10).unwrap(), vec![s]);
    }

    fn due(q: &Queue, now_ms: u64) -> OwedManifest {
        match q.next_owed_manifest(now_ms).unwrap() {
            OwedNext::Due(owed) => owed,
            other => panic!("nothing due: {other:?}"),
        }
    }

    #[test]
    fn an_owed_manifest_is_paid_once_written_kept_when_a_change_came_and_put_off_on_failure() {
        let dir = tempfile::tempdir().unwrap();
        let q = open(dir.path());
        let s = session(&q, "s1");
        assert_eq!(q.next_owed_manifest(0).unwrap(), OwedNext::Nothing);
        // Ending the session owes its manifests, in the same transaction.
        q.transition_session(s, SessionState::Live, SessionState::Closed, Some(9))
            .unwrap();
        let owed = due(&q, 0);
        assert_eq!((owed.session, owed.marks), (s, 1));
        // A change while the worker writes: the mark stays, due at once.
        q.write(|w, d| owe_manifest(w, d, s)).unwrap();
        assert!(!q.manifest_paid(&owed).unwrap());
        let owed = due(&q, 0);
        assert_eq!(owed.marks, 2);
        // A failed write puts it off, with the error.
        q.manifest_retry_at(&owed, 5_000, "store down").unwrap();
        assert_eq!(
            q.next_owed_manifest(4_999).unwrap(),
            OwedNext::NotBefore(5_000)
        );
        let owed = due(&q, 5_000);
        assert_eq!(owed.attempts, 1);
        assert_eq!(owed.last_error.as_deref(), Some("store down"));
        assert_eq!(q.owed_manifest_count().unwrap(), 1);
        assert!(q.manifest_paid(&owed).unwrap());
        assert_eq!(q.next_owed_manifest(u64::MAX).unwrap(), OwedNext::Nothing);
        assert_eq!(q.owed_manifest_count().unwrap(), 0);
    }

    #[test]
    fn superseded_keys_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let q = open(dir.path());
        let s = session(&q, "s1");
        let mut version = 0;
        let mut refused = None;
        for n in 0..=FLEET_SUPERSEDED_KEYS_MAX + 1 {
            version += 2;
            let key = format!("m/{n}-v{version}");
            if let Err(e) = q.intend_manifest(s, &v(version, &key)) {
                refused = Some(e);
                break;
            }
            q.manifest_filed(s, &key).unwrap();
        }
        assert!(
            matches!(refused, Some(QueueError::TooLarge { .. })),
            "{refused:?}"
        );
        let f = q.manifest_filing(s).unwrap().unwrap();
        assert_eq!(f.superseded.len(), FLEET_SUPERSEDED_KEYS_MAX);
    }
}
