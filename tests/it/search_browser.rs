//! Search inside recordings, as an auditor uses it: events objects beside the clips are filed
//! by the indexing worker (a corrupt one is skipped and counted, its clip still plays, a session
//! gone from the history leaves the index); then in headless Chromium, through the pages only:
//! search a word from the history page, see the hit highlighted, narrow it to a user, click it
//! and land in the right clip of a 2-clip session within 1 s of the moment; the event pane
//! highlights the current event, seeks on a click and filters by kind; the search is on the
//! audit page; a user without SESSION_KEYSTROKES_VIEW sees the paste but not its text and cannot
//! find it by its words. The JSON API answers the same with the same rules. axe-core on each
//! page; screenshots go to `artifacts/`.
//!
//! Needs `chromium` and `chromium-driver` for the browser part (without them it says so and
//! passes, except under CI).

use crate::util::axe;
use crate::util::serve_fixture;
use crate::util::webdriver;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use serve_fixture::*;
use session_recorder::app::search_worker::{SearchWorker, events_path_of};
use session_recorder::events::format::to_bytes;
use session_recorder::events::{ActivitySecond, ClipEvents, Direction, Event, EventDetail};
use session_recorder::search::{ClipPlace, SearchIndex};
use webdriver::{Driver, artifacts, browser_available};

/// The word typed in clip 2 of the 2-clip session, 1.5 s into the clip.
const WORD: &str = "findme-42";
/// What was pasted (only keystroke viewers may see or find it).
const PASTED: &str = "hunter2 customer-list";

fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The events of the fixture's second clip (3 s): a title, the typed command, a paste.
fn clip2_events() -> ClipEvents {
    ClipEvents {
        events: vec![
            Event {
                offset_ms: 500,
                detail: EventDetail::Title {
                    title: "root@erp-host: ~".into(),
                },
            },
            Event {
                offset_ms: 1_500,
                detail: EventDetail::Typed {
                    raw: format!("echo {WORD}<Return>"),
                    text: format!("echo {WORD}\n"),
                    masked_keys: 0,
                    keys: 15,
                },
            },
            Event {
                offset_ms: 2_200,
                detail: EventDetail::Clipboard {
                    direction: Direction::ToRemote,
                    mimetype: "text/plain".into(),
                    size_bytes: PASTED.len() as u64,
                    text: Some(PASTED.into()),
                    truncated: false,
                },
            },
        ],
        activity_start_ms: 0,
        activity: vec![
            ActivitySecond {
                changed_px: 5_000,
                keys: 0,
            },
            ActivitySecond {
                changed_px: 80_000,
                keys: 15,
            },
            ActivitySecond {
                changed_px: 1_000,
                keys: 0,
            },
        ],
    }
}

/// A fixture whose clip 2 (shared by both of its sessions' files) has events, whose clip 1 has
/// a corrupt events object; indexed by one tick of the worker. Also gives its index.
fn indexed_fixture(index_dir: &std::path::Path) -> (Fixture, Arc<SearchIndex>) {
    let index = Arc::new(SearchIndex::open(index_dir).unwrap());
    let f = start_with(Options {
        search: Some(index.clone()),
        ..Options::default()
    });
    let (c1, c2) = (&f.clips[0], &f.clips[1]);
    std::fs::write(events_path_of(c2), to_bytes(&clip2_events())).unwrap();
    std::fs::write(events_path_of(c1), b"{\"format\": 1, \"events\": [tru").unwrap();
    // A session the history no longer has (retention purged it): the sweep drops it.
    let gone = ClipPlace {
        session: "purged-session".into(),
        appliance: String::new(),
        user: "carol@example.com".into(),
        clip_index: 1,
        clip_start_ms: 1_000,
        session_start_ms: 1_000,
    };
    index.index_clip(&gone, &clip2_events()).unwrap();
    let mut worker = SearchWorker::new(
        index.clone(),
        f.backend.clone(),
        None,
        Arc::new(|_, _, _| None),
    );
    let report = worker.tick(true).unwrap();
    // Indexed: SESSION's clip 2 and OTHER_SESSION's clip 1 (the same file); skipped: SESSION's
    // clip 1 (corrupt); clip 3 failed and has no video.
    assert_eq!((report.clips, report.events), (2, 6), "{report:?}");
    assert_eq!(report.skipped, 1, "the corrupt events object is counted");
    assert_eq!(report.purged, 1, "the purged session leaves the index");
    assert_eq!(
        worker
            .skipped_counter()
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // A second tick finds nothing new and files nothing twice.
    let again = worker.tick(false).unwrap();
    assert_eq!((again.clips, again.skipped), (0, 0), "{again:?}");
    assert_eq!(index.stats().unwrap().events, 6);
    (f, index)
}

fn json_of(r: &Resp) -> Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|_| panic!("JSON: {}", r.text()))
}

#[test]
fn the_api_finds_the_moment_and_hides_keystrokes_without_the_permission() {
    let index_dir = tempfile::tempdir().unwrap();
    let (f, _) = indexed_fixture(index_dir.path());
    let admin = bearer("admin@example.com");
    let player = bearer("player@example.com");

    let r = get(
        f.addr,
        &format!("/api/v1/search?q={WORD}&user=alice"),
        &admin,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = json_of(&r);
    assert_eq!(
        (&v["total"], &v["total_exact"]),
        (&1.into(), &true.into()),
        "{v}"
    );
    let hit = &v["hits"][0];
    assert_eq!(hit["session_id"], SESSION);
    assert_eq!(hit["appliance_id"], "");
    assert_eq!(hit["kind"], "typed");
    assert_eq!(hit["clip_index"], 2);
    assert_eq!(hit["target"], TARGET, "the session's remote host");
    // Clip 2 starts 100 s into the session; the word was typed 1.5 s into the clip.
    assert_eq!(hit["offset_ms"], 101_500);
    let snippet = hit["snippet"]["text"].as_str().unwrap();
    let (a, b) = (
        hit["snippet"]["highlights"][0][0].as_u64().unwrap() as usize,
        hit["snippet"]["highlights"][0][1].as_u64().unwrap() as usize,
    );
    assert_eq!(&snippet[a..b], "findme");
    let at = hit["at_ms"].as_u64().unwrap();
    // Both sessions share the clip file: without the user filter there are two hits.
    let v = json_of(&get(f.addr, &format!("/api/v1/search?q={WORD}"), &admin));
    assert_eq!(v["total"], 2);
    let mut targets: Vec<&str> = (0..2)
        .map(|i| v["hits"][i]["target"].as_str().unwrap())
        .collect();
    targets.sort();
    assert_eq!(targets, ["", TARGET], "an imported session names no host");
    // Filters: kind, time.
    let v = json_of(&get(
        f.addr,
        &format!("/api/v1/search?q={WORD}&kind=title"),
        &admin,
    ));
    assert_eq!(v["total"], 0);
    let v = json_of(&get(
        f.addr,
        &format!("/api/v1/search?q={WORD}&from={}&to={}", at, at + 1),
        &admin,
    ));
    assert_eq!(v["total"], 1, "{v}");

    // The paste: found by its words with the permission, not without.
    let v = json_of(&get(f.addr, "/api/v1/search?q=customer-list", &admin));
    assert_eq!(v["total"], 2);
    assert!(v.to_string().contains("hunter2"));
    let v = json_of(&get(f.addr, "/api/v1/search?q=customer-list", &player));
    assert_eq!(v["total"], 0, "{v}");
    let v = json_of(&get(
        f.addr,
        "/api/v1/search?kind=clipboard&user=alice",
        &player,
    ));
    assert_eq!(v["total"], 1, "the paste is seen");
    assert_eq!(v["hits"][0]["snippet"], Value::Null, "its text is not");
    assert!(!v.to_string().contains("hunter2"));
    let page = get(f.addr, &format!("/play/{SESSION}"), &player).text();
    assert!(
        page.contains("Paste into the session"),
        "the pane lists the paste"
    );
    assert!(!page.contains("hunter2"), "the pane hides its text");

    // Refused without SESSION_RECORDINGS_VIEW; every search audited.
    let r = get(f.addr, "/api/v1/search?q=x", &bearer("viewer@example.com"));
    assert_eq!(r.status, 403);
    let audits: Vec<String> = f
        .backend
        .audit_entries()
        .into_iter()
        .filter(|a| a.kind == "searched")
        .map(|a| a.message)
        .collect();
    assert_eq!(audits.len(), 7, "{audits:#?}");
    assert!(
        audits
            .iter()
            .any(|a| a.contains(&format!("searched recordings for \"{WORD}\""))),
        "{audits:?}"
    );

    // The corrupt events object's clip still plays.
    let r = get(f.addr, &format!("/clips/{SESSION}/1/video"), &admin);
    assert_eq!(r.status, 200);
    assert!(r.body.len() > 1000);
}

#[test]
fn an_auditor_searches_clicks_and_lands_on_the_moment() {
    if !browser_available() {
        return;
    }
    let index_dir = tempfile::tempdir().unwrap();
    let (f, index) = indexed_fixture(index_dir.path());
    let base = format!("http://{}", f.addr);
    let downloads = f.dir.path().join("downloads");
    let profile = f.dir.path().join("profile");
    std::fs::create_dir_all(&downloads).unwrap();
    let d = Driver::start(&downloads, &profile);
    let art = artifacts();
    d.size(1280, 900);
    d.log_in(&format!("{base}/login"), ADMIN, PASSWORD);

    // From the history page's search box.
    d.type_into("#search-q", WORD);
    d.click("form.search-inside button");
    wait_for("the search page", Duration::from_secs(10), || {
        d.url().contains("/search?q=")
    });
    axe::assert_accessible(&d, "search page");
    d.screenshot(&art.join("search-hits.png"));
    let marks =
        d.js("return Array.from(document.querySelectorAll('#hits mark')).map(m => m.textContent);");
    assert_eq!(
        marks,
        serde_json::json!(["findme", "42", "findme", "42"]),
        "highlighted in both hits"
    );
    assert_eq!(
        d.js("return document.querySelectorAll('#hits tr.hit').length;"),
        2
    );
    // Narrow to alice's session with the form, then open the hit.
    d.type_into("#user", "ALICE");
    d.click("form.filters button[type=submit]");
    wait_for("the user filter", Duration::from_secs(10), || {
        d.url().contains("user=ALICE")
    });
    assert_eq!(
        d.js("return document.querySelectorAll('#hits tr.hit').length;"),
        1
    );
    d.click("a.hit-link");
    wait_for("the player at the moment", Duration::from_secs(20), || {
        let s = player(&d);
        s["ready"].as_u64().unwrap_or(0) >= 1 && s["clip"] == 2
    });
    wait_for("the seek", Duration::from_secs(10), || {
        (player(&d)["t"].as_f64().unwrap_or(0.0) - 1.5).abs() < 1.0
    });
    let s = player(&d);
    assert_eq!(s["clip"], 2, "the right clip: {s}");
    assert!(
        (s["t"].as_f64().unwrap() - 1.5).abs() < 1.0,
        "within 1 s: {s}"
    );
    d.js("document.getElementById('player').pause(); return true;");
    axe::assert_accessible(&d, "player with the event pane");

    // The event pane: the typed event is current; a click on the title seeks to it.
    wait_for("the current event", Duration::from_secs(10), || {
        d.js("const c = document.querySelector('#eventlist li.current'); return c ? c.dataset.kind : null;")
            == "typed"
    });
    assert_eq!(
        d.js("return document.querySelectorAll('#heatmap rect').length > 0;"),
        true
    );
    d.screenshot(&art.join("search-player-pane.png"));
    d.click("#eventlist li[data-kind=title] a");
    wait_for("the seek to the title", Duration::from_secs(10), || {
        let t = player(&d)["t"].as_f64().unwrap_or(9.0);
        (t - 0.5).abs() < 0.3
            && d.js("const c = document.querySelector('#eventlist li.current'); return c ? c.dataset.kind : null;")
                == "title"
    });
    d.js(
        "const m = document.getElementById('event-kind'); m.value = 'clipboard'; \
          m.dispatchEvent(new Event('change')); return true;",
    );
    assert_eq!(
        d.js("return Array.from(document.querySelectorAll('#eventlist li')).filter(l => !l.hidden).map(l => l.dataset.kind);"),
        serde_json::json!(["clipboard"])
    );
    assert!(
        d.source().contains("hunter2"),
        "the admin sees the pasted text"
    );

    // The audit page shows the searches.
    d.go(&format!("{base}/admin/audit?kind=searched"));
    let src = d.source();
    assert!(
        src.contains(&format!("searched recordings for \"{WORD}\"")),
        "audited"
    );
    d.screenshot(&art.join("search-audit.png"));

    // A command typed more often than a search counts: the page says "more than", newest
    // first; the API says the count is not exact.
    let busy = ClipPlace {
        session: "busy-session".into(),
        appliance: String::new(),
        user: "dave@example.com".into(),
        clip_index: 1,
        clip_start_ms: 1_790_000_000_000,
        session_start_ms: 1_790_000_000_000,
    };
    let many = ClipEvents {
        events: (0..10_005u64)
            .map(|i| Event {
                offset_ms: i * 100,
                detail: EventDetail::ScreenText {
                    text: format!("tail -f syslog line {i}"),
                    region: [0, 0, 800, 20],
                },
            })
            .collect(),
        activity_start_ms: 0,
        activity: Vec::new(),
    };
    index.index_clip(&busy, &many).unwrap();
    d.go(&format!("{base}/search?q=syslog"));
    assert_eq!(
        d.js("return document.getElementById('hit-count').textContent;"),
        "more than 10,000 hits · showing 1 to 20"
    );
    assert!(d.source().contains("line 10004"), "the newest first");
    d.screenshot(&art.join("search-capped.png"));
    let v = json_of(&get(f.addr, "/api/v1/search?q=syslog", &bearer(ADMIN)));
    assert_eq!(
        (&v["total"], &v["total_exact"]),
        (&10_000.into(), &false.into()),
        "{v}"
    );

    // A player without SESSION_KEYSTROKES_VIEW: the paste is there, its text is not.
    // The logout's navigation must finish before the next one: a `go` while its POST is in
    // flight cancels it, and `/login` then finds the admin still signed in.
    d.click("form[action='/logout'] button");
    wait_for("the logout", Duration::from_secs(15), || {
        d.url().ends_with("/status") && d.source().contains("href=\"/login\"")
    });
    d.log_in(&format!("{base}/login"), PLAYER, PASSWORD);
    d.go(&format!("{base}/search?q=hunter2"));
    assert!(
        d.source().contains("Nothing found"),
        "cannot find the paste by its words"
    );
    d.go(&format!("{base}/search?kind=clipboard&user=alice"));
    let src = d.source();
    assert!(src.contains("Paste into the session") && src.contains("contents hidden"));
    assert!(!src.contains("hunter2"));
    axe::assert_accessible(&d, "search page without keystrokes");
    d.screenshot(&art.join("search-no-keystrokes.png"));
    d.click("a.hit-link");
    wait_for("the player", Duration::from_secs(20), || {
        player(&d)["clip"] == 2
    });
    let src = d.source();
    assert!(src.contains("Paste into the session") && !src.contains("hunter2"));
}

/// The player's state: current clip, time, readiness.
fn player(d: &Driver) -> Value {
    d.js("const r = document.getElementById('session-player'); \
          const v = document.getElementById('player'); \
          if (!r || !v) { return {}; } \
          return {clip: Number(r.dataset.currentClip), t: v.currentTime, ready: v.readyState};")
}
