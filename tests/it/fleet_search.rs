//! Search in the history role: two appliances' signed manifests and clips in one bucket (the
//! embedded local store, as a `file://` bucket), each clip with an events object beside it at
//! the clip's key with `.events.json`; the role's indexer files the manifests, the search
//! worker fetches the events objects through the store, and a search finds the same typed word
//! in both appliances' sessions, each named `ID@APPLIANCE`. A third appliance's events object
//! is corrupt: skipped and counted, its session still listed with its clip.
//!
//! Screen text: an appliance's OCR object, listed by a later manifest version (OCR comes after
//! the final one), is filed by the role as `screen_text`; one whose bytes are not what its
//! manifest signed is skipped and counted, and its clip's typed events are still found.

use std::sync::Arc;

use ed25519_dalek::SigningKey;
use sha2::{Digest, Sha256};

use session_recorder::app::search_worker::{
    SearchWorker, expected_from_fleet_index, ocr_from_fleet_index,
};
use session_recorder::events::format::to_bytes;
use session_recorder::events::{ClipEvents, Event, EventDetail, EventKind};
use session_recorder::fleet::index::FleetIndex;
use session_recorder::fleet::indexer::Indexer;
use session_recorder::manifest::signed::{
    EndState, FleetClip, FleetEventsObject, FleetManifest, ManifestInput, TrustedKeys,
};
use session_recorder::manifest::writer::version_key;
use session_recorder::search::{SearchIndex, SearchQuery};
use session_recorder::serve::HistorySource;
use session_recorder::serve::backend::SessionQuery;
use session_recorder::serve::backend_fleet::FleetBackend;
use session_recorder::upload::location::{events_key, ocr_events_key};
use session_recorder::upload::{LocalDirStore, ObjectStore, PutOptions};

const WORD: &str = "findme-42";

fn put(store: &dyn ObjectStore, key: &str, bytes: &[u8], content_type: &str) {
    let opts = PutOptions {
        content_type: content_type.into(),
        sha256_hex: hex::encode(Sha256::digest(bytes)),
    };
    store.put_bytes(key, bytes, &opts).unwrap();
}

/// Session `sid` of appliance `appliance` with one clip whose events object in the bucket is
/// `events`, and whose manifest signs `signed` as that object.
fn session(
    store: &dyn ObjectStore,
    key: &SigningKey,
    (appliance, sid): (&str, &str),
    events: &[u8],
    signed: &[u8],
) {
    session_version(store, key, (appliance, sid), (events, signed), 1, None);
}

/// [`session`] as manifest `version`, with the clip's screen text object when `ocr` names
/// one: `(bytes in the bucket, bytes its manifest signs)`.
fn session_version(
    store: &dyn ObjectStore,
    key: &SigningKey,
    (appliance, sid): (&str, &str),
    (events, signed): (&[u8], &[u8]),
    version: u64,
    ocr: Option<(&[u8], &[u8])>,
) {
    let start_ms = 1_790_000_000_000u64;
    let clip_key = format!("{appliance}/{sid}/clip-1-{start_ms}.mp4");
    let clip = format!("not really an mp4 of {appliance}").into_bytes();
    put(store, &clip_key, &clip, "video/mp4");
    put(store, &events_key(&clip_key), events, "application/json");
    let ocr = ocr.map(|(stored, signed)| {
        put(
            store,
            &ocr_events_key(&clip_key),
            stored,
            "application/json",
        );
        FleetEventsObject {
            key: ocr_events_key(&clip_key),
            size_bytes: signed.len() as u64,
            sha256: hex::encode(Sha256::digest(signed)),
        }
    });
    let m = FleetManifest::signed(
        ManifestInput {
            appliance_id: appliance.into(),
            version,
            state: EndState::Closed,
            session_id: sid.into(),
            user_id: "u1".into(),
            username: "dba@example.com".into(),
            image_friendly_name: "ERP host".into(),
            protocol: "ssh".into(),
            start_ms,
            end_ms: Some(start_ms + 60_000),
            end_reason: None,
            clips: vec![FleetClip {
                index: 0,
                key: clip_key.clone(),
                thumbnail_key: None,
                size_bytes: clip.len() as u64,
                sha256: hex::encode(Sha256::digest(&clip)),
                start_ms,
                end_ms: start_ms + 60_000,
                events: Some(FleetEventsObject {
                    key: events_key(&clip_key),
                    size_bytes: signed.len() as u64,
                    sha256: hex::encode(Sha256::digest(signed)),
                }),
                ocr,
            }],
            target: String::new(),
            client_addr: String::new(),
        },
        key,
    )
    .unwrap();
    // A later version is written later: its key sorts after the role's listing cursor.
    let written_ms = start_ms + 60_000 + version * 1_000;
    let mkey = version_key("manifests", written_ms, appliance, sid, version);
    put(store, &mkey, &m.to_json(), "application/json");
}

/// One event as a clip's events object.
fn one_event(offset_ms: u64, detail: EventDetail) -> Vec<u8> {
    to_bytes(&ClipEvents {
        events: vec![Event { offset_ms, detail }],
        ..ClipEvents::default()
    })
}

/// The history role over a `file://` bucket: `appliances` signing keys it trusts, its fleet
/// index, indexer, history backend and search index.
struct Role {
    store: Arc<dyn ObjectStore>,
    keys: Vec<SigningKey>,
    fleet_index: Arc<FleetIndex>,
    indexer: Indexer,
    backend: Arc<FleetBackend>,
    search: Arc<SearchIndex>,
    /// Last, so that it is removed after everything in it is closed.
    _dir: tempfile::TempDir,
}

impl Role {
    fn new(appliances: u8) -> Role {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> =
            Arc::new(LocalDirStore::open(&dir.path().join("bucket")).unwrap());
        let keys: Vec<SigningKey> = (1..=appliances)
            .map(|i| SigningKey::from_bytes(&[i; 32]))
            .collect();
        let trusted: Vec<String> = keys
            .iter()
            .map(|k| hex::encode(k.verifying_key().as_bytes()))
            .collect();
        let fleet_index = Arc::new(FleetIndex::open(&dir.path().join("fleet")).unwrap());
        let indexer = Indexer::new(
            store.clone(),
            fleet_index.clone(),
            "manifests",
            TrustedKeys::from_hex(&trusted).unwrap(),
        );
        let backend = Arc::new(FleetBackend::new(
            fleet_index.clone(),
            "file:///bucket/".into(),
        ));
        let search = Arc::new(SearchIndex::open(&dir.path().join("search")).unwrap());
        Role {
            store,
            keys,
            fleet_index,
            indexer,
            backend,
            search,
            _dir: dir,
        }
    }

    /// The search worker that files the events objects the fleet index lists.
    fn worker(&self) -> SearchWorker {
        SearchWorker::new(
            self.search.clone(),
            self.backend.clone(),
            Some(self.store.clone()),
            expected_from_fleet_index(self.fleet_index.clone()),
        )
    }
}

#[test]
fn the_history_role_finds_the_same_word_from_two_appliances() {
    let role = Role::new(4);
    let (store, keys) = (&*role.store, &role.keys);
    let events = one_event(
        12_000,
        EventDetail::Typed {
            raw: format!("psql -c 'DROP TABLE orders' # {WORD}"),
            text: format!("psql -c 'DROP TABLE orders' # {WORD}"),
            masked_keys: 0,
            keys: 40,
        },
    );
    session(store, &keys[0], ("proxy-a", "dup"), &events, &events);
    session(store, &keys[1], ("proxy-b", "dup"), &events, &events);
    let corrupt = b"{\"format\":1,\"events\":[{";
    session(store, &keys[2], ("proxy-c", "broken"), corrupt, corrupt);
    // Readable, holding the word, but not the bytes its manifest signed: skipped too.
    let other = to_bytes(&ClipEvents::default());
    session(store, &keys[3], ("proxy-d", "tampered"), &events, &other);

    role.indexer.poll().unwrap();
    let (backend, search) = (&role.backend, &role.search);
    let listed = backend
        .list_sessions(&SessionQuery {
            limit: 10,
            ..SessionQuery::default()
        })
        .unwrap();
    assert_eq!(listed.items.len(), 4, "every session is in the history");

    let mut worker = role.worker();
    let report = worker.tick(true).unwrap();
    assert_eq!(
        (report.clips, report.events, report.skipped),
        (2, 2, 2),
        "{report:?}"
    );

    let page = search
        .search(
            &SearchQuery {
                text: WORD.into(),
                limit: 10,
                ..SearchQuery::default()
            },
            true,
        )
        .unwrap();
    let mut found: Vec<(String, String, u64)> = page
        .hits
        .iter()
        .map(|h| (h.session_id.clone(), h.appliance_id.clone(), h.offset_ms))
        .collect();
    found.sort();
    assert_eq!(
        found,
        vec![
            ("dup@proxy-a".into(), "proxy-a".into(), 12_000),
            ("dup@proxy-b".into(), "proxy-b".into(), 12_000),
        ]
    );
    // The broken session still has its clip in the history (it plays; it has no events).
    let clips = backend.clips("broken@proxy-c").unwrap();
    assert_eq!(clips.len(), 1);
    assert!(!clips[0].failed);
}

#[test]
fn the_history_role_files_screen_text_a_later_manifest_version_lists() {
    const SEEN: &str = "invoice-7731";
    let role = Role::new(2);
    let (store, keys, search) = (&*role.store, &role.keys, &role.search);
    let typed = one_event(
        3_000,
        EventDetail::Typed {
            raw: format!("less {WORD}"),
            text: format!("less {WORD}"),
            masked_keys: 0,
            keys: 14,
        },
    );
    let screen = one_event(
        9_000,
        EventDetail::ScreenText {
            text: format!("Total due {SEEN}"),
            region: [10, 20, 300, 40],
        },
    );
    // The final manifests come first, without screen text (not read yet).
    for (k, appliance) in keys.iter().zip(["proxy-a", "proxy-b"]) {
        session(store, k, (appliance, "s1"), &typed, &typed);
    }
    role.indexer.poll().unwrap();
    let mut worker = role
        .worker()
        .with_ocr(ocr_from_fleet_index(role.fleet_index.clone()));
    let skipped = worker.skipped_counter();
    let report = worker.tick(true).unwrap();
    assert_eq!((report.clips, report.events), (2, 2), "{report:?}");
    let screen_hits = |text: &str| {
        let page = search
            .search(
                &SearchQuery {
                    text: text.into(),
                    kinds: vec![EventKind::ScreenText],
                    limit: 10,
                    ..SearchQuery::default()
                },
                true,
            )
            .unwrap();
        page.hits
            .iter()
            .map(|h| (h.session_id.clone(), h.offset_ms))
            .collect::<Vec<_>>()
    };
    assert!(screen_hits(SEEN).is_empty(), "no screen text listed yet");

    // Version 2 of each lists its OCR object: proxy-a's as signed, proxy-b's altered after
    // signing (the bucket's bytes are not what the manifest signed).
    session_version(
        store,
        &keys[0],
        ("proxy-a", "s1"),
        (&typed, &typed),
        2,
        Some((&screen, &screen)),
    );
    let altered = one_event(
        9_000,
        EventDetail::ScreenText {
            text: format!("Total due {SEEN} (altered)"),
            region: [10, 20, 300, 40],
        },
    );
    session_version(
        store,
        &keys[1],
        ("proxy-b", "s1"),
        (&typed, &typed),
        2,
        Some((&altered, &screen)),
    );
    role.indexer.poll().unwrap();
    let (_, filed) = role
        .fleet_index
        .session(Some("proxy-a"), "s1")
        .unwrap()
        .unwrap();
    assert_eq!(filed.version, 2, "the later version replaced the final one");
    assert_eq!(
        filed.clips[0].ocr.as_ref().map(|o| o.key.clone()),
        Some(ocr_events_key(&filed.clips[0].key))
    );

    let report = worker.tick(true).unwrap();
    assert_eq!(
        report.clips, 2,
        "both clips filed again, with screen text: {report:?}"
    );
    assert_eq!(
        screen_hits(SEEN),
        [("s1@proxy-a".to_string(), 9_000)],
        "proxy-a's screen text is found, proxy-b's altered object is not filed"
    );
    assert_eq!(skipped.load(std::sync::atomic::Ordering::Relaxed), 1);
    // The typed events of both clips are still found once each.
    let page = search
        .search(
            &SearchQuery {
                text: WORD.into(),
                limit: 10,
                ..SearchQuery::default()
            },
            true,
        )
        .unwrap();
    assert_eq!(page.hits.len(), 2, "{:?}", page.hits);
    // Settled: another pass files nothing again.
    let report = worker.tick(true).unwrap();
    assert_eq!(report.clips, 0, "{report:?}");
}
