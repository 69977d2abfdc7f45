//! The settings page in headless Chromium against the real daemon (the real binary, its
//! config file, its reload), as an admin would use it, through the pages only:
//!
//! - save a setting: the daemon applies it at once (the status page shows the new disk floor)
//!   and the config file holds it with the operator's comments and layout kept;
//! - a value the encoder refuses (5120x2880) is refused naming `video.width`, the typed values
//!   stay in the form and the field is marked (screenshot `artifacts/settings-refused.png`);
//! - an unusable store (`file:///proc/...`) is refused with the probe's reason, and the file
//!   is unchanged.
//!
//! Needs `chromium` and `chromium-driver` (see tests/e2e_browser.rs); without them the test
//! says so and passes, except under CI.

use crate::util::axe;
use crate::util::daemon;
use crate::util::webdriver;

use std::time::{Duration, Instant};

use daemon::{Home, free_port};
use serde_json::json;
use webdriver::{Driver, artifacts, browser_available};

const ADMIN: &str = "admin@example.com";
const PASSWORD: &str = "a long admin password";

/// Replaces the value of the input named `name` with `text`, as a person selecting the field
/// and typing would.
fn set_field(d: &Driver, name: &str, text: &str) {
    let e = d.find(&format!("input[name=\"{name}\"]"));
    d.call("POST", &format!("/element/{e}/clear"), json!({}));
    d.call(
        "POST",
        &format!("/element/{e}/value"),
        json!({ "text": text }),
    );
}

/// Submits the settings form and waits for the answer page.
fn save(d: &Driver) {
    d.js("document.body.setAttribute('data-old', '1'); return 1;");
    d.click("form[action=\"/admin/settings\"] button[type=submit]");
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let fresh = d.js("return document.body && !document.body.hasAttribute('data-old');");
        if fresh == true {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the save did not answer: {}", d.source());
}

#[test]
fn settings_page_edits_the_config_file_applies_it_and_refuses_bad_values() {
    if !browser_available() {
        return;
    }
    let port = free_port();
    let home = Home::new("", Some(port));
    // The operator's file, with comments the page must keep.
    let config = home.root().join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "disk-floor-mb = 10\n",
        "# Lab box: keep the floor small.\ndisk-floor-mb = 10 # MB\n",
    );
    std::fs::write(&config, &text).unwrap();
    home.add_user(ADMIN, PASSWORD, "ADMIN");
    let mut d_home = home.start_ready();
    let base = format!("http://127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let d = Driver::start(&dir.path().join("downloads"), &dir.path().join("profile"));
    d.size(1280, 1400);

    // Log in through the form.
    let landed = d.log_in(
        &format!("{base}/login?next=/admin/settings"),
        ADMIN,
        PASSWORD,
    );
    assert!(landed.ends_with("/admin/settings"), "landed on {landed}");
    let path = config.display().to_string();
    assert!(d.source().contains(&path), "{}", d.source());
    axe::assert_accessible(&d, "settings page");

    // 1. Save a setting: applied at once, in the file, comments kept.
    set_field(&d, "disk-floor-mb", "25");
    save(&d);
    let src = d.source();
    assert!(src.contains("id=\"settings-saved\""), "{src}");
    assert!(src.contains("Saved and applied"), "{src}");
    let now = std::fs::read_to_string(&config).unwrap();
    assert!(
        now.contains("# Lab box: keep the floor small.\ndisk-floor-mb = 25 # MB\n"),
        "{now}"
    );
    assert_eq!(
        now.replace("disk-floor-mb = 25", "disk-floor-mb = 10"),
        text,
        "only the changed value differs"
    );
    assert_eq!(home.status_json(port)["disk"]["floor_bytes"], 25_000_000);
    d.screenshot(&artifacts().join("settings-saved.png"));
    axe::assert_accessible(&d, "settings page, saved");

    // 2. A size the encoder refuses: refused naming the key, typed values kept, field marked.
    set_field(&d, "video.width", "5120");
    set_field(&d, "video.height", "2880");
    save(&d);
    let src = d.source();
    assert!(src.contains("id=\"settings-error\""), "{src}");
    assert!(src.contains("video.width"), "{src}");
    let field = d.js(
        "const e = document.querySelector('input[name=\"video.width\"]'); \
         const h = document.querySelector('input[name=\"video.height\"]'); \
         return {value: e.value, height: h.value, invalid: e.getAttribute('aria-invalid'), \
         border: getComputedStyle(e).borderTopColor};",
    );
    assert_eq!(field["value"], "5120", "{field}");
    assert_eq!(field["height"], "2880", "{field}");
    assert_eq!(field["invalid"], "true", "{field}");
    assert_eq!(field["border"], "rgb(183, 28, 28)", "{field}");
    d.screenshot(&artifacts().join("settings-refused.png"));
    axe::assert_accessible(&d, "settings page, refused value");
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        now,
        "a refused value is not written"
    );

    // 3. An unusable store: refused with the probe's reason.
    d.go(&format!("{base}/admin/settings"));
    set_field(
        &d,
        "storage.upload-location",
        "file:///proc/sr-bucket/{session_id}-{clip_index}.mp4",
    );
    save(&d);
    let src = d.source();
    assert!(
        src.contains("the storage does not work with these settings"),
        "{src}"
    );
    assert!(src.contains("/proc/sr-bucket"), "{src}");
    let marked = d.js(
        "return document.querySelector('input[name=\"storage.upload-location\"]')\
         .getAttribute('aria-invalid');",
    );
    assert_eq!(marked, "true");
    d.screenshot(&artifacts().join("settings-store-refused.png"));
    assert_eq!(std::fs::read_to_string(&config).unwrap(), now);
    assert!(d_home.running());
    drop(d);
    assert_eq!(d_home.stop().code(), Some(0));
}
