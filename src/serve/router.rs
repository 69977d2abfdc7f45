//! Request dispatch: parses the request, finds out who is asking (login cookie or API token),
//! checks the route's permission and CSRF before touching any data, calls the page handler, and
//! writes the response with security headers. A panic in a handler becomes a 500 for that
//! request only.
//!
//! Routes and their permission:
//!
//! | route | permission |
//! |---|---|
//! | `GET /`, `/status`, `/api/v1/status`, `/metrics`, `/api/v1/admission` | none (redacted) |
//! | `GET/POST /login`, `POST /logout` | none / login |
//! | `GET /sessions`, `/api/v1/sessions` | `SESSIONS_VIEW` |
//! | `GET /play/S/N`, `/clips/S/N/video`, `/clips/S/N/download`, `/sessions/S/zip`, `/thumbs/S/N` | `SESSION_RECORDINGS_VIEW` |
//! | `/admin/audit`, `/admin/settings`, `/admin/users` (+ POSTs) | `ADMIN` |

use std::collections::{BTreeMap, HashMap};
use std::io::{Cursor, Read};
use std::sync::{Arc, Mutex};

use tiny_http::{Header, Method, Request, Response, StatusCode};

use super::ServeContext;
use super::auth::{self, Permissions};
use super::backend::{BackendError, NewAuditRow, WebSessionRow};
use super::front::PEER_HEADER;
use super::html::{self, NavUser, esc};
use super::streams::{self, Job, Slot, Streams};
use crate::limits::{
    HTTP_BODY_BYTES_MAX, HTTP_LOGIN_SESSION_MS, HTTP_PLAY_AUDIT_ENTRIES_MAX,
    HTTP_PLAY_AUDIT_WINDOW_MS, HTTP_SESSION_ID_CHARS_MAX,
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
}

/// Why a route refused.
pub enum Deny {
    /// Not logged in: 401.
    Unauthenticated,
    /// Logged in without the permission: 403.
    Forbidden,
}

impl App {
    /// The app for `ctx`; long bodies go to `streams`.
    pub fn new(ctx: ServeContext, secure: bool, streams: Arc<Streams>) -> Self {
        let dummy_hash = auth::hash_password("not a real password, only for timing")
            .unwrap_or_else(|_| String::from("$argon2id$v=19$m=19456,t=2,p=1$AAAA$AAAA"));
        Self {
            ctx,
            secure,
            streams,
            play_audits: Mutex::new(HashMap::new()),
            dummy_hash,
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

    /// Handles one request end to end.
    pub fn handle(&self, mut rq: Request) {
        let started = std::time::Instant::now();
        let method = rq.method().clone();
        let url = rq.url().to_string();
        let reply = match self.parse(&mut rq) {
            Ok(ctx) => {
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.route(&ctx)));
                r.unwrap_or_else(|_| {
                    log::error!("event=http_handler_panicked method={method} path={url}");
                    Reply::text(500, "Internal Server Error")
                })
            }
            Err(r) => r,
        };
        let status = reply.status;
        self.respond(rq, reply);
        log::debug!(
            "event=http_request method={method} path={} status={status} us={}",
            url.split('?').next().unwrap_or(""),
            started.elapsed().as_micros()
        );
    }

    fn parse(&self, rq: &mut Request) -> Result<Ctx, Reply> {
        let url = rq.url().to_string();
        let (path, query) = url.split_once('?').unwrap_or((&url, ""));
        let mut segments = Vec::new();
        for seg in path.split('/').filter(|s| !s.is_empty()) {
            segments.push(html::url_decode(seg).ok_or_else(|| Reply::text(400, "Bad Request"))?);
        }
        let headers: HashMap<String, String> = rq
            .headers()
            .iter()
            .map(|h| {
                (
                    h.field.as_str().as_str().to_ascii_lowercase(),
                    h.value.as_str().to_string(),
                )
            })
            .collect();
        let mut body = Vec::new();
        if rq.body_length().unwrap_or(0) > 0 {
            rq.as_reader()
                .take(HTTP_BODY_BYTES_MAX)
                .read_to_end(&mut body)
                .map_err(|_| Reply::text(400, "Bad Request"))?;
        }
        let mut ctx = Ctx {
            method: rq.method().clone(),
            segments,
            query: parse_pairs(query),
            peer: headers
                .get(&PEER_HEADER.to_ascii_lowercase())
                .cloned()
                .unwrap_or_default(),
            headers,
            viewer: None,
            body,
            http11: *rq.http_version() >= (1, 1),
        };
        ctx.viewer = self
            .authenticate(&ctx)
            .map_err(|e| self.storage_error(&e))?;
        Ok(ctx)
    }

    /// Finds the viewer from a Bearer token or the login cookie.
    fn authenticate(&self, ctx: &Ctx) -> Result<Option<Viewer>, BackendError> {
        let backend = &self.ctx.backend;
        if let Some(tok) = ctx
            .header("authorization")
            .and_then(|a| a.strip_prefix("Bearer "))
        {
            let Some(t) = backend.token(&auth::secret_hash(tok.trim()))? else {
                return Ok(None);
            };
            return Ok(backend.user(&t.user)?.map(|u| Viewer {
                name: u.name,
                perms: Permissions(u.permissions),
                via: Via::Token,
            }));
        }
        let Some(cookie) = ctx.cookie(SESSION_COOKIE) else {
            return Ok(None);
        };
        let id_hash = auth::secret_hash(&cookie);
        let Some(ws) = backend.web_session(&id_hash)? else {
            return Ok(None);
        };
        if ws.expires_ms <= self.now_ms() {
            backend.remove_web_session(&id_hash)?;
            return Ok(None);
        }
        Ok(backend.user(&ws.user)?.map(|u| Viewer {
            name: u.name,
            perms: Permissions(u.permissions),
            via: Via::Cookie {
                csrf: auth::csrf_for(&cookie),
                id_hash,
            },
        }))
    }

    fn route(&self, ctx: &Ctx) -> Reply {
        let seg: Vec<&str> = ctx.segments.iter().map(String::as_str).collect();
        let get = ctx.method == Method::Get || ctx.method == Method::Head;
        let post = ctx.method == Method::Post;
        use Permissions as P;
        match (get, post, seg.as_slice()) {
            (true, _, []) => Reply::redirect("/status"),
            (true, _, ["status"]) => super::status_page::page(self, ctx),
            (true, _, ["api", "v1", "status"]) => super::status_page::json(self, ctx),
            (true, _, ["metrics"]) => super::status_page::metrics(self),
            (true, _, ["api", "v1", "admission"]) => super::status_page::admission(self),
            (true, _, ["login"]) => super::admin::login_form(self, ctx, 200, None),
            (_, true, ["login"]) => super::admin::login(self, ctx),
            (_, true, ["logout"]) => self
                .guard_post(ctx, P::NONE)
                .unwrap_or_else(|| super::admin::logout(self, ctx)),
            (true, _, ["sessions"]) => self
                .guard(ctx, P::SESSIONS_VIEW)
                .unwrap_or_else(|| super::history::list(self, ctx)),
            (true, _, ["api", "v1", "sessions"]) => self
                .guard(ctx, P::SESSIONS_VIEW)
                .unwrap_or_else(|| super::history::list_json(self, ctx)),
            (true, _, ["play", sid, n]) => self.with_clip(ctx, sid, n, super::history::play),
            (true, _, ["clips", sid, n, "video"]) => {
                self.with_clip(ctx, sid, n, super::history::video)
            }
            (true, _, ["clips", sid, n, "download"]) => {
                self.with_clip(ctx, sid, n, super::history::download)
            }
            (true, _, ["thumbs", sid, n]) => self.with_clip(ctx, sid, n, super::history::thumb),
            (true, _, ["sessions", sid, "zip"]) => {
                let sid = sid.to_string();
                self.guard(ctx, P::SESSION_RECORDINGS_VIEW)
                    .or_else(|| check_session_id(&sid).err())
                    .unwrap_or_else(|| super::history::zip(self, ctx, &sid))
            }
            (true, _, ["admin", "audit"]) => self
                .guard(ctx, P::ADMIN)
                .unwrap_or_else(|| super::admin::audit(self, ctx)),
            (true, _, ["admin", "settings"]) => self
                .guard(ctx, P::ADMIN)
                .unwrap_or_else(|| super::admin::settings_form(self, ctx, 200, None, None)),
            (_, true, ["admin", "settings"]) => self
                .guard_post(ctx, P::ADMIN)
                .unwrap_or_else(|| super::admin::settings_save(self, ctx)),
            (true, _, ["admin", "users"]) => self
                .guard(ctx, P::ADMIN)
                .unwrap_or_else(|| super::admin::users(self, ctx, 200, None)),
            (_, true, ["admin", "users", action]) => {
                let action = action.to_string();
                self.guard_post(ctx, P::ADMIN)
                    .unwrap_or_else(|| super::admin::users_post(self, ctx, &action))
            }
            (false, false, _) => Reply::text(405, "Method Not Allowed"),
            _ => Reply::text(404, "Not Found"),
        }
    }

    /// Permission check for reads: `Some(reply)` when refused.
    pub fn guard(&self, ctx: &Ctx, need: Permissions) -> Option<Reply> {
        match &ctx.viewer {
            None => Some(self.deny(ctx, Deny::Unauthenticated)),
            Some(v) if need != Permissions::NONE && !v.perms.allows(need) => {
                Some(self.deny(ctx, Deny::Forbidden))
            }
            Some(_) => None,
        }
    }

    /// Permission and CSRF check for state-changing requests.
    pub fn guard_post(&self, ctx: &Ctx, need: Permissions) -> Option<Reply> {
        if let Some(r) = self.guard(ctx, need) {
            return Some(r);
        }
        if !same_origin(ctx) {
            return Some(Reply::text(403, "Forbidden: cross-origin request"));
        }
        match ctx.viewer.as_ref().map(|v| &v.via) {
            Some(Via::Cookie { csrf, .. }) => {
                let sent = ctx.form().remove("csrf").unwrap_or_default();
                if auth::constant_time_eq(&sent, csrf) {
                    None
                } else {
                    log::warn!("event=csrf_rejected user={} peer={}", ctx.who(), ctx.peer);
                    Some(Reply::text(403, "Forbidden: missing or wrong CSRF token"))
                }
            }
            // A bearer token is not sent by browsers on their own: no CSRF exposure.
            Some(Via::Token) => None,
            None => Some(self.deny(ctx, Deny::Unauthenticated)),
        }
    }

    fn deny(&self, ctx: &Ctx, why: Deny) -> Reply {
        let wants_html = ctx
            .header("accept")
            .is_some_and(|a| a.contains("text/html"));
        match why {
            Deny::Unauthenticated if wants_html => {
                super::admin::login_form(self, ctx, 401, Some("Please log in."))
            }
            Deny::Unauthenticated => Reply::text(401, "Unauthorized")
                .with("WWW-Authenticate", "Bearer realm=\"session-recorder\""),
            Deny::Forbidden if wants_html => Reply::html(
                403,
                html::page(
                    "Forbidden",
                    ctx.viewer.as_ref().map(|v| v.nav()).as_ref(),
                    None,
                    "<p>Your account does not have the permission this page needs.</p>",
                ),
            ),
            Deny::Forbidden => Reply::text(403, "Forbidden"),
        }
    }

    /// Runs `f` for clip `n` (1-based) of session `sid`, after the permission and id checks.
    fn with_clip(
        &self,
        ctx: &Ctx,
        sid: &str,
        n: &str,
        f: fn(&App, &Ctx, &str, usize, &[super::backend::ClipRow]) -> Reply,
    ) -> Reply {
        if let Some(r) = self.guard(ctx, Permissions::SESSION_RECORDINGS_VIEW) {
            return r;
        }
        if let Err(r) = check_session_id(sid) {
            return r;
        }
        let Some(n) = n.parse::<usize>().ok().filter(|&n| n >= 1) else {
            return Reply::text(400, "Bad Request: clip number");
        };
        let clips = match self.ctx.backend.clips(sid) {
            Ok(c) => c,
            Err(e) => return self.storage_error(&e),
        };
        if n > clips.len() {
            return Reply::text(404, "Not Found");
        }
        f(self, ctx, sid, n, &clips)
    }

    /// A streaming slot for a long body, or the 503 to answer. Handlers take it before they
    /// audit, so a refused stream leaves no audit entry (nothing was served).
    ///
    /// # Errors
    /// Every slot is taken: the 503 with `Retry-After`.
    pub fn stream_slot(&self, ctx: &Ctx) -> Result<Slot, Reply> {
        self.streams
            .try_slot()
            .ok_or_else(|| streams::busy(ctx, self.streams.max()))
    }

    /// 503 for a storage failure (logged, not shown).
    pub fn storage_error(&self, e: &BackendError) -> Reply {
        log::error!("event=http_storage_error error={e}");
        Reply::text(503, "Service Unavailable: storage error")
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
        if let Err(e) = self.ctx.backend.append_audit(&entry) {
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

    fn respond(&self, rq: Request, reply: Reply) {
        let mut headers: Vec<Header> = Vec::with_capacity(reply.headers.len() + 6);
        let mut push = |n: &str, v: &str| {
            if let Ok(h) = Header::from_bytes(n.as_bytes(), v.as_bytes()) {
                headers.push(h);
            }
        };
        for (n, v) in &reply.headers {
            push(n, v);
        }
        let media = if self.ctx.options.presign_redirect {
            "media-src 'self' https: http:; "
        } else {
            ""
        };
        push(
            "Content-Security-Policy",
            &format!(
                "default-src 'self'; {media}img-src 'self' data:; style-src 'unsafe-inline'; \
                 script-src 'none'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
            ),
        );
        push("X-Content-Type-Options", "nosniff");
        push("Referrer-Policy", "no-referrer");
        push("X-Frame-Options", "DENY");
        if !reply.headers.iter().any(|(n, _)| n == "Cache-Control") {
            push("Cache-Control", "no-store");
        }
        if self.secure {
            push("Strict-Transport-Security", "max-age=31536000");
        }
        let status = StatusCode(reply.status);
        let result = match reply.body {
            Body::Bytes(b) => {
                let len = b.len();
                rq.respond(Response::new(
                    status,
                    headers,
                    Cursor::new(b),
                    Some(len),
                    None,
                ))
            }
            Body::Stream { reader, len, slot } => {
                // The worker is free as soon as the job is queued; the client's pace only
                // holds the streaming thread and the slot.
                let response =
                    Response::new(status, headers, reader, len.map(|l| l as usize), None);
                self.streams.hand_off(Job {
                    request: rq,
                    response,
                    slot,
                });
                Ok(())
            }
        };
        if let Err(e) = result {
            log::debug!("event=http_respond_failed error={e}");
        }
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
        Err(Reply::text(400, "Bad Request: session id"))
    }
}

/// `Origin` (or, without it, `Referer`) must name the host the request was sent to.
fn same_origin(ctx: &Ctx) -> bool {
    let Some(host) = ctx.header("host") else {
        return true;
    };
    let src = ctx.header("origin").or_else(|| ctx.header("referer"));
    match src {
        None => true,
        Some("null") => false,
        Some(o) => {
            let rest = o
                .strip_prefix("https://")
                .or_else(|| o.strip_prefix("http://"))
                .unwrap_or("");
            rest.split('/').next() == Some(host)
        }
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

/// Parses `YYYY-MM-DD` to ms since the epoch at 00:00 UTC.
pub fn parse_date_ms(s: &str) -> Option<u64> {
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    let d = time::Date::parse(s, &fmt).ok()?;
    let ts = d.midnight().assume_utc().unix_timestamp();
    u64::try_from(ts).ok().map(|t| t * 1000)
}

/// A short error page for people.
pub fn error_page(ctx: &Ctx, status: u16, title: &str, message: &str) -> Reply {
    Reply::html(
        status,
        html::page(
            title,
            ctx.viewer.as_ref().map(|v| v.nav()).as_ref(),
            None,
            &format!("<p>{}</p>", esc(message)),
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
    fn dates_parse() {
        assert_eq!(parse_date_ms("1970-01-02"), Some(86_400_000));
        assert_eq!(parse_date_ms("2024-13-01"), None);
    }

    #[test]
    fn pairs_decode() {
        let p = parse_pairs("a=1&b=x+y%21&bad=%zz&c");
        assert_eq!(p.get("b").map(String::as_str), Some("x y!"));
        assert!(!p.contains_key("bad"));
        assert_eq!(p.get("c").map(String::as_str), Some(""));
    }
}
