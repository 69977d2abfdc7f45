//! The request context and reply types every page handler works with: [`Ctx`] (the parsed
//! request and its viewer), [`Reply`]/[`Body`] (a response before it is written), and [`App`]
//! (the state shared by all workers, with the helpers handlers call: audit, streaming slots,
//! login cookies, storage errors).
//!
//! The router ([`super::router`]) builds a `Ctx`, checks permissions and dispatches; the
//! handlers (`history`, `admin`, `status_page`, `streams`) import only this file, so the
//! dependency goes one way: router -> handlers -> ctx.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::sync::{Arc, Mutex};

use tiny_http::Method;

use super::ServeContext;
use super::auth::{self, Permissions};
use super::backend::{BackendError, NewAuditRow, WebSessionRow};
use super::html::{self, NavUser};
use super::streams::{NoSlot, Slot, Streams};
use super::throttle::LoginThrottle;
use crate::limits::{
    HTTP_LOGIN_SESSION_MS, HTTP_PLAY_AUDIT_ENTRIES_MAX, HTTP_PLAY_AUDIT_WINDOW_MS,
    HTTP_SESSION_ID_CHARS_MAX, HTTP_STREAMS_RETRY_AFTER_S,
};

/// Name of the login-session cookie.
pub const SESSION_COOKIE: &str = "sr_session";
/// Name of the pre-login CSRF cookie.
pub const LOGIN_COOKIE: &str = "sr_login";

/// A response body.
pub enum Body {
    /// Bytes in memory.
    Bytes(Vec<u8>),
    /// A long stream, written by a streaming thread (see `streams.rs`), not the worker.
    Stream {
        /// The bytes.
        reader: Box<dyn Read + Send>,
        /// The length (`Content-Length`), or `None` (chunked).
        len: Option<u64>,
        /// The streaming slot taken for it (before the audit entry was written).
        slot: Slot,
    },
}

/// A response before it is written.
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Body,
}

impl Reply {
    /// An HTML page.
    pub fn html(status: u16, page: String) -> Self {
        Self::bytes(status, "text/html; charset=utf-8", page.into_bytes())
    }
    /// Plain text.
    pub fn text(status: u16, text: &str) -> Self {
        Self::bytes(
            status,
            "text/plain; charset=utf-8",
            format!("{text}\n").into_bytes(),
        )
    }
    /// JSON.
    pub fn json(status: u16, value: &impl serde::Serialize) -> Self {
        let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
        Self::bytes(status, "application/json", body)
    }
    /// Bytes with a content type.
    pub fn bytes(status: u16, content_type: &str, body: Vec<u8>) -> Self {
        Self {
            status,
            headers: vec![("Content-Type".into(), content_type.into())],
            body: Body::Bytes(body),
        }
    }
    /// `303 See Other` to `location`.
    pub fn redirect(location: &str) -> Self {
        let mut r = Self::text(303, "See Other");
        r.headers.push(("Location".into(), location.into()));
        r
    }
    /// Adds a header.
    pub fn with(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// How a viewer authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// Login cookie; carries the CSRF token forms must echo.
    Cookie {
        /// The expected CSRF token.
        csrf: String,
        /// SHA-256 of the cookie (to log out).
        id_hash: String,
    },
    /// `Authorization: Bearer`.
    Token,
}

/// Who is asking.
#[derive(Debug, Clone)]
pub struct Viewer {
    /// User name.
    pub name: String,
    /// Permissions.
    pub perms: Permissions,
    /// How.
    pub via: Via,
}

impl Viewer {
    /// The navigation-bar view of this viewer.
    pub fn nav(&self) -> NavUser<'_> {
        NavUser {
            name: &self.name,
            perms: self.perms,
            csrf: match &self.via {
                Via::Cookie { csrf, .. } => Some(csrf),
                Via::Token => None,
            },
        }
    }
}

/// A parsed request.
pub struct Ctx {
    /// Method.
    pub method: Method,
    /// Decoded path segments (no empty ones).
    pub segments: Vec<String>,
    /// Decoded query parameters (last one wins).
    pub query: BTreeMap<String, String>,
    /// Header lookup, lowercase names.
    pub headers: HashMap<String, String>,
    /// The viewer, when authenticated.
    pub viewer: Option<Viewer>,
    /// Client address from the front.
    pub peer: String,
    /// The request body (forms), read up to the limit.
    pub body: Vec<u8>,
    /// Whether the request is HTTP/1.1 (chunked bodies can be sent).
    pub http11: bool,
}

impl Ctx {
    /// A header value by lowercase name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// A query parameter, trimmed, `None` when empty.
    pub fn q(&self, name: &str) -> Option<String> {
        self.query
            .get(name)
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    }

    /// The form fields of an urlencoded body.
    pub fn form(&self) -> BTreeMap<String, String> {
        parse_pairs(std::str::from_utf8(&self.body).unwrap_or(""))
    }

    /// Every field of an urlencoded body in order, repeated names kept (checkbox groups).
    pub fn form_all(&self) -> Vec<(String, String)> {
        std::str::from_utf8(&self.body)
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
            .filter_map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                Some((html::url_decode(k)?, html::url_decode(v)?))
            })
            .collect()
    }

    /// A cookie by name.
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.header("cookie")?.split(';').find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == name).then(|| v.to_string())
        })
    }

    /// The viewer's name, or `anonymous`.
    pub fn who(&self) -> &str {
        self.viewer
            .as_ref()
            .map_or("anonymous", |v| v.name.as_str())
    }
}

/// The shared state of all workers.
pub struct App {
    /// The context given to `start`.
    pub ctx: ServeContext,
    /// Whether the front terminates TLS (cookies get `Secure`, HSTS is sent).
    pub secure: bool,
    /// The streaming threads that write clip, download and zip bodies.
    pub streams: Arc<Streams>,
    /// Last play-audit time per (user, clip id), to write one entry per viewing.
    play_audits: Mutex<HashMap<(String, u64), u64>>,
    /// A hash compared against when the user does not exist, so both cases take equal time.
    dummy_hash: String,
    /// Failed-login backoff per user name and client address.
    pub login_throttle: LoginThrottle,
}

impl App {
    /// The app for `ctx`; long bodies go to `streams`.
    pub fn new(ctx: ServeContext, secure: bool, streams: Arc<Streams>) -> Self {
        let dummy_hash = auth::hash_password("not a real password, only for timing")
            .unwrap_or_else(|_| String::from("$argon2id$v=19$m=19456,t=2,p=1$AAAA$AAAA"));
        Self {
            secure,
            streams,
            play_audits: Mutex::new(HashMap::new()),
            dummy_hash,
            login_throttle: LoginThrottle::new(ctx.options.limits),
            ctx,
        }
    }

    /// The hash used for unknown users.
    pub fn dummy_hash(&self) -> &str {
        &self.dummy_hash
    }

    /// Now, from the context's clock.
    pub fn now_ms(&self) -> u64 {
        self.ctx.clock.now_ms()
    }

    /// A streaming slot for a long body, or the reply to answer. Handlers take it before they
    /// audit, so a refused stream leaves no audit entry (nothing was served).
    ///
    /// # Errors
    /// Every slot is taken: 503 with `Retry-After`; the viewer already runs their share of the
    /// slots: 429 with `Retry-After`.
    pub fn stream_slot(&self, ctx: &Ctx) -> Result<Slot, Reply> {
        let per_user = self.ctx.options.limits.streams_per_user_max;
        match self.streams.try_slot_for(ctx.who(), per_user) {
            Ok(slot) => Ok(slot),
            Err(NoSlot::Full) => Err(busy(ctx, self.streams.max())),
            Err(NoSlot::UserFull) => Err(user_busy(ctx, per_user)),
        }
    }

    /// 503 for a storage failure (logged, not shown).
    pub fn storage_error(&self, e: &BackendError) -> Reply {
        log::error!("event=http_storage_error error={e}");
        Reply::text(
            503,
            "The appliance's database cannot be read right now; the log says why. Try again \
             in a moment.",
        )
    }

    /// Appends an audit entry and logs it; a failed append is logged and reported on the
    /// status board (the view already happened).
    pub fn audit(&self, entry: NewAuditRow) {
        log::info!(
            "event=audit kind={} actor={} message={:?}",
            entry.kind.name(),
            entry.actor,
            entry.message
        );
        if let Err(e) = self.ctx.backend.accounts.append_audit(&entry) {
            log::error!("event=audit_append_failed error={e}");
            self.ctx
                .board
                .record_error("serve", &format!("audit append failed: {e}"));
        }
    }

    /// Whether a play of `clip_id` by `user` should be audited now (one per viewing window).
    pub fn play_audit_due(&self, user: &str, clip_id: u64) -> bool {
        let now = self.now_ms();
        let mut m = self.play_audits.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= HTTP_PLAY_AUDIT_ENTRIES_MAX {
            m.retain(|_, t| now.saturating_sub(*t) < HTTP_PLAY_AUDIT_WINDOW_MS);
            if m.len() >= HTTP_PLAY_AUDIT_ENTRIES_MAX {
                m.clear();
            }
        }
        let key = (user.to_string(), clip_id);
        match m.get(&key) {
            Some(&t) if now.saturating_sub(t) < HTTP_PLAY_AUDIT_WINDOW_MS => false,
            _ => {
                m.insert(key, now);
                true
            }
        }
    }

    /// Creates a login session for `user` and returns its `Set-Cookie` value.
    ///
    /// # Errors
    /// Random source or storage failure, as a reply.
    pub fn new_login(&self, user: &str) -> Result<String, Reply> {
        let cookie = auth::random_token().map_err(|_| Reply::text(500, "Internal Server Error"))?;
        let now = self.now_ms();
        let row = WebSessionRow {
            id_hash: auth::secret_hash(&cookie),
            user: user.to_string(),
            created_ms: now,
            expires_ms: now + HTTP_LOGIN_SESSION_MS,
        };
        self.ctx
            .backend
            .accounts
            .put_web_session(&row)
            .map_err(|e| self.storage_error(&e))?;
        Ok(self.cookie(SESSION_COOKIE, &cookie, "/", HTTP_LOGIN_SESSION_MS / 1000))
    }

    /// A `Set-Cookie` value with our flags.
    pub fn cookie(&self, name: &str, value: &str, path: &str, max_age_s: u64) -> String {
        let secure = if self.secure { "; Secure" } else { "" };
        format!(
            "{name}={value}; Path={path}; Max-Age={max_age_s}; HttpOnly; SameSite=Strict{secure}"
        )
    }
}

/// The hidden CSRF field every logged-in form carries (empty for token viewers, who need
/// none).
pub fn csrf_field(ctx: &Ctx) -> String {
    match ctx.viewer.as_ref().map(|v| &v.via) {
        Some(Via::Cookie { csrf, .. }) => format!(
            "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
            html::esc(csrf)
        ),
        _ => String::new(),
    }
}

/// Checks an external session id from a URL: 1..=128 of `[A-Za-z0-9._:@+-]`, not `.`/`..`.
///
/// # Errors
/// A 400 reply that does not echo the id.
pub fn check_session_id(sid: &str) -> Result<(), Reply> {
    let ok = !sid.is_empty()
        && sid.len() <= HTTP_SESSION_ID_CHARS_MAX
        && sid != "."
        && sid != ".."
        && sid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:@+-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Reply::text(
            400,
            "This is not a valid session id (1 to 128 letters, digits and . _ : @ + -).",
        ))
    }
}

/// Parses `a=1&b=2` with percent-decoding; broken pairs are skipped.
pub fn parse_pairs(s: &str) -> BTreeMap<String, String> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            Some((html::url_decode(k)?, html::url_decode(v)?))
        })
        .collect()
}

/// The answer when every slot is taken: 503, `Retry-After`, and words a person understands.
fn busy(ctx: &Ctx, max: usize) -> Reply {
    log::warn!(
        "event=http_streams_full user={} peer={} streams_max={max}",
        ctx.who(),
        ctx.peer
    );
    error_page(
        ctx,
        503,
        "Busy",
        &format!(
            "Too many downloads and playbacks are running at once (the limit is {max}). \
             Try again in {HTTP_STREAMS_RETRY_AFTER_S} seconds."
        ),
    )
    .with("Retry-After", HTTP_STREAMS_RETRY_AFTER_S.to_string())
}

/// The answer when the viewer already runs their share of the streams: 429, `Retry-After`.
fn user_busy(ctx: &Ctx, per_user: usize) -> Reply {
    log::warn!(
        "event=http_user_streams_full user={} peer={} streams_per_user_max={per_user}",
        ctx.who(),
        ctx.peer
    );
    error_page(
        ctx,
        429,
        "Too many streams",
        &format!(
            "You already have {per_user} downloads or playbacks running (the limit per user). \
             Let one finish, then try again."
        ),
    )
    .with("Retry-After", HTTP_STREAMS_RETRY_AFTER_S.to_string())
}

/// The answer to a refused or failed request: under `/api/` a JSON object
/// `{"error": message}`, elsewhere a page inside the app frame with the message in the error
/// style and a way back (the session history for viewers who may see it, and the status
/// page). Every error a person can reach goes through here, never a bare text body.
pub fn error_page(ctx: &Ctx, status: u16, title: &str, message: &str) -> Reply {
    error_page_with(ctx, status, title, message, &[])
}

/// [`error_page`] with extra links (href, label) before the usual way back, e.g. to the
/// session a missing clip belongs to.
pub fn error_page_with(
    ctx: &Ctx,
    status: u16,
    title: &str,
    message: &str,
    links: &[(&str, &str)],
) -> Reply {
    if ctx.segments.first().is_some_and(|s| s == "api") {
        return Reply::json(status, &serde_json::json!({ "error": message }));
    }
    let mut all: Vec<(&str, &str)> = links.to_vec();
    let history = ctx
        .viewer
        .as_ref()
        .is_some_and(|v| v.perms.allows(Permissions::SESSIONS_VIEW));
    if history && !links.iter().any(|(h, _)| *h == "/sessions") {
        all.push(("/sessions", "Session history"));
    }
    if ctx.viewer.is_none() && !links.iter().any(|(h, _)| *h == "/login") {
        all.push(("/login", "Log in"));
    }
    all.push(("/status", "Status page"));
    Reply::html(
        status,
        html::page(
            title,
            ctx.viewer.as_ref().map(|v| v.nav()).as_ref(),
            None,
            &html::error_body(status, message, &all),
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_reject_traversal() {
        assert!(check_session_id("3f1c2a9e-5d1b-4e47-8c53-7b8e8b0a9c11").is_ok());
        for bad in ["", ".", "..", "../etc", "a/b", "a\\b", "a b", "x%2f", "é"] {
            assert!(check_session_id(bad).is_err(), "{bad}");
        }
        assert!(check_session_id(&"a".repeat(HTTP_SESSION_ID_CHARS_MAX + 1)).is_err());
    }

    #[test]
    fn pairs_decode() {
        let p = parse_pairs("a=1&b=x+y%21&bad=%zz&c");
        assert_eq!(p.get("b").map(String::as_str), Some("x y!"));
        assert!(!p.contains_key("bad"));
        assert_eq!(p.get("c").map(String::as_str), Some(""));
    }
}
