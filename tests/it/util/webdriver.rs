//! A WebDriver client for the browser tests (`*_browser.rs`, gateway_search.rs, fleet*.rs):
//! starts chromedriver on a free port with headless Chromium (a private profile and download
//! directory), and speaks the W3C WebDriver HTTP API through the harness's raw HTTP client
//! (`crate::util::serve_fixture::request`). Also the login form every browser test goes
//! through, where screenshots and other artifacts go, and whether a browser is installed at
//! all (it must be under CI).
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

use crate::util::serve_fixture::request;

/// How long a login's POST and redirect may take on a loaded CI box.
const LOGIN_WAIT: Duration = Duration::from_secs(15);

/// A chromedriver process with one browser session; both end on drop.
pub struct Driver {
    child: Child,
    addr: SocketAddr,
    session: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = request(
            self.addr,
            "DELETE",
            &format!("/session/{}", self.session),
            "",
            "",
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wd(addr: SocketAddr, method: &str, path: &str, body: &Value) -> Value {
    let body = if method == "GET" {
        String::new()
    } else {
        body.to_string()
    };
    let r = request(
        addr,
        method,
        path,
        "Content-Type: application/json\r\n",
        &body,
    );
    let v: Value = serde_json::from_slice(&r.body)
        .unwrap_or_else(|_| panic!("webdriver {path}: {}", r.text()));
    assert!(
        r.status < 300,
        "webdriver {method} {path}: {} {v}",
        r.status
    );
    v["value"].clone()
}

/// How long an element lookup waits for the element to appear.
const ELEMENT_WAIT: Duration = Duration::from_secs(10);

impl Driver {
    /// Starts chromedriver and a headless Chromium session.
    pub fn start(download_dir: &Path, profile: &Path) -> Driver {
        let port = free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen");
            std::thread::sleep(Duration::from_millis(100));
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--autoplay-policy=no-user-gesture-required",
                    format!("--user-data-dir={}", profile.display()),
                ],
                "prefs": {
                    "download.default_directory": download_dir.display().to_string(),
                    "download.prompt_for_download": false,
                    "download.directory_upgrade": true,
                }
            }
        }}});
        let mut d = Driver {
            child,
            addr,
            session: String::new(),
        };
        let v = wd(addr, "POST", "/session", &caps);
        d.session = v["sessionId"].as_str().expect("session id").to_string();
        // A click that submits a form returns once the navigation starts; the URL changes when
        // it commits, before the next page is parsed. Element lookups wait for the element to
        // appear (WebDriver's implicit wait) instead of failing on the page being replaced.
        d.call(
            "POST",
            "/timeouts",
            json!({ "implicit": ELEMENT_WAIT.as_millis() as u64 }),
        );
        d
    }

    pub fn call(&self, method: &str, path: &str, body: Value) -> Value {
        eprintln!("webdriver {method} {path}");
        wd(
            self.addr,
            method,
            &format!("/session/{}{path}", self.session),
            &body,
        )
    }

    pub fn go(&self, url: &str) {
        self.call("POST", "/url", json!({ "url": url }));
    }

    pub fn find(&self, css: &str) -> String {
        let v = self.call(
            "POST",
            "/element",
            json!({"using": "css selector", "value": css}),
        );
        v.as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .expect("element id")
            .to_string()
    }

    pub fn click(&self, css: &str) {
        let e = self.find(css);
        self.call("POST", &format!("/element/{e}/click"), json!({}));
    }

    pub fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css);
        self.call(
            "POST",
            &format!("/element/{e}/value"),
            json!({ "text": text }),
        );
    }

    pub fn js(&self, script: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            json!({"script": script, "args": []}),
        )
    }

    /// Runs `script` as an async script (its last argument is the completion callback) with
    /// `args`, waiting at most the session's script timeout.
    pub fn js_async(&self, script: &str, args: Value) -> Value {
        self.call(
            "POST",
            "/execute/async",
            json!({"script": script, "args": args}),
        )
    }

    /// Sets the script timeout (how long `js_async` may take).
    pub fn script_timeout(&self, timeout: Duration) {
        self.call(
            "POST",
            "/timeouts",
            json!({"script": timeout.as_millis() as u64}),
        );
    }

    pub fn url(&self) -> String {
        self.call("GET", "/url", json!({}))
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    pub fn source(&self) -> String {
        self.call("GET", "/source", json!({}))
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    /// Logs in through the form at `login_url` (`{base}/login`, perhaps with `?next=`) and
    /// waits, at most [`LOGIN_WAIT`], for the page it lands on to be loaded: the URL changes
    /// when the navigation commits, before the new page is parsed, so the wait is for a page
    /// that is no longer the form and offers "Log out". Returns that page's URL.
    pub fn log_in(&self, login_url: &str, user: &str, password: &str) -> String {
        self.go(login_url);
        self.type_into("#user", user);
        self.type_into("#password", password);
        self.click("#login");
        let deadline = Instant::now() + LOGIN_WAIT;
        loop {
            let url = self.url();
            if !url.contains("/login") && self.source().contains("Log out") {
                return url;
            }
            assert!(
                Instant::now() < deadline,
                "{user} not signed in after {LOGIN_WAIT:?}: still on {url}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn size(&self, w: u32, h: u32) {
        self.call("POST", "/window/rect", json!({"width": w, "height": h}));
    }

    pub fn screenshot(&self, path: &Path) {
        let b64 = self.call("GET", "/screenshot", json!({}));
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap())
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"));
        std::fs::write(path, png).unwrap();
    }
}

/// `<repo>/artifacts`, created if missing.
pub fn artifacts() -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("artifacts");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Whether chromium and chromedriver are installed; under CI (`CI` set) their absence is a
/// failure, not a skip.
pub fn browser_available() -> bool {
    let ok = Path::new("/usr/bin/chromium").exists()
        && Command::new("chromedriver")
            .arg("--version")
            .output()
            .is_ok();
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium/chromedriver missing in CI: run scripts/e2e-browser-deps"
        );
        eprintln!("e2e_browser: chromium or chromedriver missing; run scripts/e2e-browser-deps");
    }
    ok
}
