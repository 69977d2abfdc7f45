//! The pages' workflows in headless Chromium, through the pages only (WebDriver clicks and
//! typing, no hand-made requests for what a person does): the status page at phone and desktop
//! width with its 24 h charts and auto-refresh on request; log in; the users page (add a user with
//! labelled checkboxes, change permissions, change password, create and revoke an API token,
//! delete after the confirmation page); the audit page and its action filter; every error page
//! a person can reach; a viewer refused a page they lack the permission for; log out, after
//! which the old cookie no longer works. axe-core runs on every page visited (no critical or
//! serious finding), and screenshots go to `artifacts/pages/`.
//!
//! Needs `chromium`, `chromium-driver` and axe-core (scripts/install-deps installs all three).
//! Without a browser the test says so and passes, except under CI (`CI` set).

use crate::util::axe;
use crate::util::serve_fixture;
use crate::util::webdriver;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serve_fixture::*;
use session_recorder::clock::{Clock, ManualClock, SystemClock};
use session_recorder::limits::{STATUS_TREND_SAMPLE_MS, STATUS_TREND_SAMPLES_MAX};
use session_recorder::serve::AccountStore;
use webdriver::{Driver, artifacts, browser_available};

const NEW_USER: &str = "carol@example.com";

/// Waits until `f` holds (the click only submits a form: the answer comes later).
fn wait(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Opens `url`, checks it with axe-core, and returns the page source.
fn visit(d: &Driver, url: &str, what: &str) -> String {
    d.go(url);
    axe::assert_accessible(d, what);
    d.source()
}

/// Clicks `css`, waits for the next page to contain `needle`, and checks it with axe-core.
fn submit(d: &Driver, css: &str, needle: &str, what: &str) -> String {
    d.click(css);
    wait(needle, || d.source().contains(needle));
    axe::assert_accessible(d, what);
    d.source()
}

/// A screenshot of the whole page at `width` (the window grows to the page's height), then
/// the window goes back to `width` x `height`.
fn full_shot(d: &Driver, path: &Path, width: u32, height: u32) {
    let h = d
        .js("return document.documentElement.scrollHeight;")
        .as_u64()
        .unwrap_or(900);
    d.size(width, h as u32 + 140);
    d.screenshot(path);
    d.size(width, height);
}

fn text_of(d: &Driver, css: &str) -> String {
    d.js(&format!(
        "const e = document.querySelector({css:?}); return e ? e.textContent : null;"
    ))
    .as_str()
    .unwrap_or_default()
    .to_string()
}

/// A day of board history: free disk falling towards the floor in the afternoon, a backlog
/// that builds up and drains, live sessions in office hours, encoders at 3x real time.
fn fill_a_day(f: &Fixture, clock: &ManualClock, now_ms: u64) {
    let periods = STATUS_TREND_SAMPLES_MAX as u64;
    for i in 0..periods {
        clock.set_ms(now_ms - (periods - i) * STATUS_TREND_SAMPLE_MS);
        let hour = i as f64 / 12.0;
        let busy = (8.0..18.0).contains(&hour);
        f.board.update(|s| {
            s.disk.free_bytes = Some(9_000_000_000 - (i * 20_000_000));
            s.uploads.backlog = if (13.0..15.0).contains(&hour) {
                (i % 24) * 2
            } else {
                0
            };
            s.live_sessions = if busy { 5 + (i % 7) } else { i % 2 };
        });
        if busy || i % 3 == 0 {
            clock.set_ms(clock.now_ms() + 1);
            f.board.record_encode(600_000, 180_000 + (i % 5) * 20_000);
        }
    }
    clock.set_ms(now_ms);
    f.board.update(|s| {
        s.disk.free_bytes = Some(10_000_000_000);
        s.live_sessions = 2;
    });
}

fn art_dir() -> PathBuf {
    let d = artifacts().join("pages");
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn pages_work_in_a_browser_and_pass_axe() {
    if !browser_available() {
        return;
    }
    let now_ms = SystemClock.now_ms();
    let clock = Arc::new(ManualClock::new(now_ms));
    let f = start_with(Options {
        clock: Some(clock.clone()),
        ..Options::default()
    });
    fill_a_day(&f, &clock, now_ms);
    f.board.update(|s| {
        s.fleet.signing_public_key = Some("9f".repeat(32));
    });
    let base = format!("http://{}", f.addr);
    let downloads = f.dir.path().join("downloads");
    let profile = f.dir.path().join("profile");
    std::fs::create_dir_all(&downloads).unwrap();
    let d = Driver::start(&downloads, &profile);
    let art = art_dir();

    status_page(&d, &base, &f, &art);
    log_in(&d, &base, ADMIN, PASSWORD, "/sessions");
    axe::assert_accessible(&d, "session history");
    users_page(&d, &base, &f, &art);
    audit_page(&d, &base, &art);
    error_pages(&d, &base, &art);
    log_out(&d, &base, &f);
    refused_viewer(&d, &base, &art);
}

fn status_page(d: &Driver, base: &str, f: &Fixture, art: &Path) {
    // A field operator's phone, anonymous: the headline first, then the figures.
    d.size(390, 844);
    let src = visit(d, &format!("{base}/status"), "status page (phone)");
    assert!(src.contains("Needs attention"), "{src}");
    assert!(!src.contains(BUCKET));
    let headline_y =
        d.js("return document.getElementById('headline').getBoundingClientRect().top;");
    let figures_y = d.js("return document.getElementById('fig-live').getBoundingClientRect().top;");
    assert!(headline_y.as_f64() < figures_y.as_f64());
    // Nothing wider than the phone (the page does not scroll sideways).
    let overflow = d.js("return document.documentElement.scrollWidth - window.innerWidth;");
    assert!(
        overflow.as_f64().unwrap() <= 0.0,
        "page wider than 390 px by {overflow}"
    );
    full_shot(d, &art.join("status-phone-390.png"), 390, 844);
    // The charts have bars from the day's history.
    let bars =
        d.js("return document.querySelector('#trend-backlog .bars').getAttribute('d').length;");
    assert!(bars.as_u64().unwrap() > 100, "backlog chart is empty");

    // Auto-refresh only when asked (WCAG 2.2.1), and it stops with a link; no script.
    let meta = "return document.querySelector('meta[http-equiv=refresh]') !== null;";
    assert_eq!(d.js(meta), false, "no timed reload nobody asked for");
    d.click("#auto-refresh");
    wait("auto-refresh page", || {
        d.url().ends_with("/status?refresh=on")
    });
    assert_eq!(d.js(meta), true, "reloads itself once asked");
    // axe flags every timed reload as critical (meta-refresh); here the reader chose it and
    // the link that stops it comes right after the headline.
    axe::assert_accessible_except(d, "status page, auto-refresh on", &["meta-refresh"]);
    assert!(text_of(d, "#refresh").contains("Refreshes every 10 s"));
    d.screenshot(&art.join("status-phone-390-auto-refresh.png"));
    d.click("#stop-refresh");
    wait("stopped", || d.url().ends_with("/status"));
    assert_eq!(d.js(meta), false, "stopped");
    axe::assert_accessible(d, "status page, auto-refresh stopped");

    // Desktop, details open: the signing key fits its card.
    d.size(1280, 1000);
    d.click("#details summary");
    let key_fits = d.js(
        "const k = document.getElementById('signing-key'); const c = k.closest('.card'); \
         return k.getBoundingClientRect().right <= c.getBoundingClientRect().right + 0.5;",
    );
    assert_eq!(key_fits, true, "signing key overflows its card");
    axe::assert_accessible(d, "status page with details");
    full_shot(d, &art.join("status-desktop-details.png"), 1280, 1000);

    // All good: one green headline.
    f.board.update(|s| {
        s.settings_problems.clear();
        s.uploads.reachable = Some(true);
        s.uploads.last_error = None;
    });
    let src = visit(d, &format!("{base}/status"), "status page, all good");
    assert!(src.contains("All good."), "{src}");
    full_shot(d, &art.join("status-phone-390-all-good.png"), 390, 844);
    d.size(1280, 1000);
}

fn log_in(d: &Driver, base: &str, user: &str, password: &str, lands: &str) {
    visit(d, &format!("{base}/login"), "login form");
    d.type_into("#user", user);
    d.type_into("#password", password);
    d.click("#login");
    wait("login redirect", || d.url().ends_with(lands));
}

fn users_page(d: &Driver, base: &str, f: &Fixture, art: &Path) {
    visit(d, &format!("{base}/admin/users"), "users page");
    // Add a user: name, password, permissions by their labels.
    d.type_into("#new-name", NEW_USER);
    d.type_into("#new-password", "first password");
    d.click("#add-user label.check:nth-of-type(2)");
    let checked = d.js(
        "return [...document.querySelectorAll('#add-user input[name=perm]')].map(e => e.checked);",
    );
    assert_eq!(
        checked,
        serde_json::json!([true, true, false, false]),
        "label click checks its box"
    );
    let src = submit(
        d,
        "#add-user button",
        "id=\"users-message\"",
        "users page, user added",
    );
    assert!(src.contains(&format!("Added user {NEW_USER}")), "{src}");
    let u = f.backend.user(NEW_USER).unwrap().unwrap();
    assert_eq!(u.permissions, 3);
    full_shot(d, &art.join("users-added.png"), 1280, 1000);

    // Change permissions in place: untick SESSIONS_VIEW in the user's card.
    let card = card_of(d, NEW_USER);
    d.click(&format!("#{card} label.check:nth-of-type(1)"));
    let src = submit(
        d,
        &format!("#{card} form[action='/admin/users/permissions'] button"),
        "Permissions of",
        "users page, permissions changed",
    );
    assert!(
        src.contains("without SESSIONS_VIEW"),
        "player-only is explained: {src}"
    );
    let after = f.backend.user(NEW_USER).unwrap().unwrap();
    assert_eq!(after.permissions, 2);
    assert_eq!(after.password_hash, u.password_hash, "password kept");

    // Change the password in place.
    let card = card_of(d, NEW_USER);
    d.type_into(&format!("#{card}-password"), "second password");
    submit(
        d,
        &format!("#{card} form[action='/admin/users/password'] button"),
        "New password set",
        "users page, password changed",
    );
    let after = f.backend.user(NEW_USER).unwrap().unwrap();
    assert_ne!(after.password_hash, u.password_hash);
    assert_eq!(after.permissions, 2, "permissions kept");

    // A refused form is shown in the error style.
    d.type_into("#new-name", NEW_USER);
    d.type_into("#new-password", "whatever long");
    let src = submit(
        d,
        "#add-user button",
        "id=\"users-error\"",
        "users page, refusal",
    );
    assert!(src.contains("already exists"), "{src}");
    d.screenshot(&art.join("users-refused.png"));

    // Create a token, use it, revoke it.
    d.js(&format!(
        "document.getElementById('token-user').value = {NEW_USER:?}; return true;"
    ));
    d.type_into("#token-label", "nightly export");
    submit(
        d,
        "#add-token button",
        "id=\"new-token\"",
        "users page, token created",
    );
    let token = text_of(d, "#new-token");
    assert_eq!(token.len(), 64, "{token}");
    let auth = format!("Authorization: Bearer {token}\r\n");
    assert_eq!(
        get(f.addr, &format!("/play/{SESSION}/1"), &auth).status,
        200
    );
    d.screenshot(&art.join("users-token.png"));
    submit(
        d,
        "button[aria-label='Revoke token nightly export']",
        "Token revoked.",
        "users page, token revoked",
    );
    assert_eq!(
        get(f.addr, &format!("/play/{SESSION}/1"), &auth).status,
        401
    );

    // Delete: the link asks first; Cancel keeps the user, the button deletes.
    let card = card_of(d, NEW_USER);
    d.click(&format!("#{card} a.danger"));
    wait("confirmation page", || {
        d.source().contains("id=\"confirm-delete\"")
    });
    axe::assert_accessible(d, "delete confirmation");
    d.screenshot(&art.join("users-delete-confirm.png"));
    assert!(
        f.backend.user(NEW_USER).unwrap().is_some(),
        "asking deletes nothing"
    );
    submit(
        d,
        "#confirm-delete",
        "Deleted user",
        "users page, user deleted",
    );
    assert!(f.backend.user(NEW_USER).unwrap().is_none());
}

/// The id of the card of user `name` on the users page.
fn card_of(d: &Driver, name: &str) -> String {
    d.js(&format!(
        "return [...document.querySelectorAll('section.user')].find(s => \
         s.querySelector('h3').textContent === {name:?}).id;"
    ))
    .as_str()
    .expect("user card")
    .to_string()
}

fn audit_page(d: &Driver, base: &str, art: &Path) {
    let src = visit(d, &format!("{base}/admin/audit"), "audit page");
    for kind in [
        "user_added",
        "user_changed",
        "token_created",
        "token_revoked",
        "user_removed",
    ] {
        assert!(
            src.contains(&format!("<td>{kind}</td>")),
            "{kind} in the log"
        );
    }
    // Filter by an action through the menu.
    d.js("document.getElementById('f-kind').value = 'user_removed'; return true;");
    d.click("form.filters button");
    wait("filtered audit", || d.url().contains("kind=user_removed"));
    axe::assert_accessible(d, "audit page, filtered");
    let rows = d.js("return document.querySelectorAll('#audit tr').length;");
    assert_eq!(rows, 2, "header and the one removal");
    d.screenshot(&art.join("audit-filtered.png"));
}

fn error_pages(d: &Driver, base: &str, art: &Path) {
    let out_of_range = format!("/play/{SESSION}/9");
    let clip_zero = format!("/play/{SESSION}/0");
    let pages = [
        ("/no-such-page", "Page not found", "unknown-page"),
        ("/play/no-such-session/1", "Session not found", "no-session"),
        (out_of_range.as_str(), "Clip not found", "clip-out-of-range"),
        (clip_zero.as_str(), "Bad clip number", "bad-clip-number"),
        ("/play/bad%20id/1", "Bad Request", "bad-id"),
        ("/admin/audit?kind=bogus", "Unknown action", "unknown-kind"),
    ];
    for (path, title, shot) in pages {
        let src = visit(d, &format!("{base}{path}"), &format!("error page {path}"));
        assert!(src.contains("id=\"error\""), "{path}: {src}");
        assert!(src.contains(&format!("<h1>{title}</h1>")), "{path}: {src}");
        assert!(src.contains("<header>"), "in the app frame: {path}");
        d.screenshot(&art.join(format!("error-{shot}.png")));
        // The way back works.
        d.click("ul.back li:last-child a");
        wait("status page", || d.url().ends_with("/status"));
    }
}

fn log_out(d: &Driver, base: &str, f: &Fixture) {
    d.go(&format!("{base}/admin/users"));
    let cookie = d.call("GET", "/cookie/sr_session", serde_json::json!({}))["value"]
        .as_str()
        .expect("login cookie")
        .to_string();
    d.click("header form[action='/logout'] button");
    wait("logged out", || d.url().ends_with("/status"));
    axe::assert_accessible(d, "status page after log out");
    assert!(d.source().contains("href=\"/login\">Log in</a>"));
    // The next page asks for a login, and the old cookie is dead on the server too.
    d.go(&format!("{base}/admin/users"));
    assert!(
        d.source().contains("name=\"password\""),
        "login form after log out"
    );
    axe::assert_accessible(d, "login form after log out");
    let r = get(
        f.addr,
        "/admin/users",
        &format!("Cookie: sr_session={cookie}\r\n"),
    );
    assert_eq!(r.status, 401, "the old cookie no longer works");
}

fn refused_viewer(d: &Driver, base: &str, art: &Path) {
    // A player (SESSION_RECORDINGS_VIEW only) is told why the session list is refused.
    // Without SESSIONS_VIEW the login lands on the status page, not on a refusal.
    log_in(d, base, PLAYER, PASSWORD, "/status");
    axe::assert_accessible(d, "status page as a player");
    d.go(&format!("{base}/sessions"));
    axe::assert_accessible(d, "403 page");
    let src = d.source();
    assert!(src.contains("<h1>Not allowed</h1>"), "{src}");
    assert!(src.contains("not list sessions (SESSIONS_VIEW)"), "{src}");
    d.screenshot(&art.join("error-forbidden.png"));
    d.click("header form[action='/logout'] button");
    wait("logged out", || d.url().ends_with("/status"));
}
