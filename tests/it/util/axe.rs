//! Accessibility check for the browser tests: injects axe-core (the npm package pinned in
//! `tests/a11y/package.json`, installed by `scripts/install-deps` with `npm ci`) into the page
//! the [`Driver`] shows, runs it, and fails on any critical or serious finding, naming the rule,
//! the elements and what to fix.
//!
//! Use it on every page a browser test visits:
//!
//! ```ignore
//! #[path = "util/webdriver.rs"] mod webdriver;
//! #[path = "util/axe.rs"] mod axe;
//! d.go(&url);
//! axe::assert_accessible(&d, "status page");
//! ```
//!
//! The script goes in through WebDriver's execute (the DevTools protocol), which the pages'
//! `script-src 'none'` policy does not apply to; nothing is added to the pages themselves.
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{Value, json};

use crate::util::webdriver::Driver;

/// Where `npm ci --prefix tests/a11y` puts axe-core.
pub fn axe_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/a11y/node_modules/axe-core/axe.min.js")
}

fn axe_source() -> &'static str {
    static SRC: OnceLock<String> = OnceLock::new();
    SRC.get_or_init(|| {
        let p = axe_path();
        std::fs::read_to_string(&p).unwrap_or_else(|e| {
            panic!(
                "axe-core missing at {} ({e}): run scripts/install-deps (or `npm ci --prefix \
                 tests/a11y`)",
                p.display()
            )
        })
    })
}

/// Runs axe-core on the current page and returns its critical and serious violations, one
/// line each (`rule (impact): help -- element: what to fix; ...`), without the axe rules named in `skip` (rule ids such as `meta-refresh`).
pub fn violations_except(d: &Driver, skip: &[&str]) -> Vec<String> {
    let present = d.js("return typeof window.axe === 'object';");
    if present != Value::Bool(true) {
        let script = format!("{}\nreturn typeof window.axe;", axe_source());
        let t = d.call(
            "POST",
            "/execute/sync",
            json!({"script": script, "args": []}),
        );
        assert_eq!(t, "object", "axe-core did not load into the page");
    }
    d.script_timeout(Duration::from_secs(60));
    let rules: serde_json::Map<String, Value> = skip
        .iter()
        .map(|r| (r.to_string(), json!({"enabled": false})))
        .collect();
    let result = d.js_async(
        "const done = arguments[arguments.length - 1];\
         axe.run(document, {resultTypes: ['violations'], rules: arguments[0]})\
         .then(r => done(r.violations\
           .filter(v => v.impact === 'critical' || v.impact === 'serious')\
           .map(v => v.id + ' (' + v.impact + '): ' + v.help + ' -- ' + v.nodes.map(n =>\
             n.target.join(' ') + ': ' + (n.failureSummary || '').replace(/\\s+/g, ' ')).join('; '))))\
         .catch(e => done(['axe failed: ' + e]));",
        json!([rules]),
    );
    result
        .as_array()
        .expect("axe result is a list")
        .iter()
        .map(|v| v.as_str().unwrap_or_default().to_string())
        .collect()
}

/// Fails the test when axe-core finds a critical or serious violation on the current page;
/// `what` names the page in the message.
pub fn assert_accessible(d: &Driver, what: &str) {
    assert_accessible_except(d, what, &[]);
}

/// [`assert_accessible`] without the rules in `skip`: only for a finding the page is meant to
/// have, and say why where it is called.
pub fn assert_accessible_except(d: &Driver, what: &str, skip: &[&str]) {
    let found = violations_except(d, skip);
    assert!(
        found.is_empty(),
        "axe-core: {} critical/serious finding(s) on {what} ({}):\n{}",
        found.len(),
        d.url(),
        found.join("\n")
    );
}
