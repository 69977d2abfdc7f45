//! Request dispatch: parses the request, finds out who is asking (login cookie or API token),
//! checks the route's permission and CSRF before touching any data, calls the page handler, and
//! writes the response with security headers. A panic in a handler becomes a 500 for that
//! request only. Every refusal a person can reach is a page inside the app frame with a way
//! back (a handler's bare text error is framed on the way out, see [`App::framed`]); under
//! `/api/` errors are JSON.
//!
//! CSRF defence for logged-in POSTs, in three layers: the login cookie is `SameSite=Strict`
//! (a cross-site form post carries no cookie), the request's `Origin` must name this host
//! (pages send `Referrer-Policy: same-origin`, under which browsers send the real origin on
//! same-origin form posts and `null` on cross-origin ones; `null` is refused), and each form
//! echoes a CSRF token derived from the cookie. Bearer tokens are never sent by browsers on
//! their own and need no token.
//!
//! Routes and their permission:
//!
//! | route | permission |
//! |---|---|
//! | `GET /`, `/status`, `/api/v1/status`, `/metrics`, `/api/v1/admission` | none (redacted) |
//! | `GET/POST /login`, `POST /logout` | none / login |
//! | `GET /sessions`, `/api/v1/sessions` | `SESSIONS_VIEW` |
//! | `GET /play/S`, `/play/S/N`, `/clips/S/N/video`, `/clips/S/N/download`, `/sessions/S/zip`, `/thumbs/S/N` | `SESSION_RECORDINGS_VIEW` |
//! | `GET /search`, `/api/v1/search` (each search audited; typed text and clipboard contents need `SESSION_KEYSTROKES_VIEW` too) | `SESSION_RECORDINGS_VIEW` |
//! | `GET /static/player.js` (the player's script, the same for everyone) | none |
//! | `/admin/audit`, `/admin/settings`, `/admin/users`, `/admin/users/delete` (+ POSTs) | `ADMIN` |
//!
//! `S` is a session's address (`SessionRow::address`): its id on an appliance, `ID@APPLIANCE`
//! in a fleet history.

use std::collections::HashMap;
use std::io::{Cursor, Read};

use tiny_http::{Header, Method, Request, Response, StatusCode};

use super::auth::{self, Permissions};
use super::backend::BackendError;
use super::ctx::{
    App, Body, Ctx, Reply, SESSION_COOKIE, Via, Viewer, check_session_id, error_page,
    error_page_with, parse_pairs,
};
use super::front::PEER_HEADER;
use super::html;
use super::streams::Job;
use crate::limits::HTTP_BODY_BYTES_MAX;

/// Why a route refused.
pub enum Deny {
    /// Not logged in: 401.
    Unauthenticated,
    /// Logged in without the permission: 403.
    Forbidden,
}

impl App {
    /// Handles one request end to end.
    pub fn handle(&self, mut rq: Request) {
        let started = std::time::Instant::now();
        let method = rq.method().clone();
        let url = rq.url().to_string();
        let reply = match self.parse(&mut rq) {
            Ok(ctx) => {
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.route(&ctx)));
                let reply = r.unwrap_or_else(|_| {
                    log::error!("event=http_handler_panicked method={method} path={url}");
                    Reply::text(
                        500,
                        "Something went wrong on the appliance; the log says what.",
                    )
                });
                self.framed(Some(&ctx), reply)
            }
            Err(r) => self.framed(None, r),
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
            segments.push(
                html::url_decode(seg)
                    .ok_or_else(|| Reply::text(400, "The address has a broken %-escape."))?,
            );
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
                .map_err(|_| Reply::text(400, "The request body could not be read."))?;
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
            let Some(t) = backend.accounts.token(&auth::secret_hash(tok.trim()))? else {
                return Ok(None);
            };
            return Ok(backend.accounts.user(&t.user)?.map(|u| Viewer {
                name: u.name,
                perms: Permissions(u.permissions),
                via: Via::Token,
            }));
        }
        let Some(cookie) = ctx.cookie(SESSION_COOKIE) else {
            return Ok(None);
        };
        let id_hash = auth::secret_hash(&cookie);
        let Some(ws) = backend.accounts.web_session(&id_hash)? else {
            return Ok(None);
        };
        if ws.expires_ms <= self.now_ms() {
            backend.accounts.remove_web_session(&id_hash)?;
            return Ok(None);
        }
        Ok(backend.accounts.user(&ws.user)?.map(|u| Viewer {
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
            (true, _, ["play", sid]) => {
                let sid = sid.to_string();
                self.guard(ctx, P::SESSION_RECORDINGS_VIEW)
                    .or_else(|| check_session_id(&sid).err())
                    .unwrap_or_else(|| super::history::play_session(self, ctx, &sid))
            }
            (true, _, ["play", sid, n]) => self.with_clip(ctx, sid, n, super::history::play),
            (true, _, ["search"]) => self
                .guard(ctx, P::SESSION_RECORDINGS_VIEW)
                .unwrap_or_else(|| super::search::page(self, ctx)),
            (true, _, ["api", "v1", "search"]) => self
                .guard(ctx, P::SESSION_RECORDINGS_VIEW)
                .unwrap_or_else(|| super::search::json(self, ctx)),
            (true, _, ["static", "player.js"]) => Reply::bytes(
                200,
                "text/javascript; charset=utf-8",
                super::history::PLAYER_JS.as_bytes().to_vec(),
            )
            .with("Cache-Control", "public, max-age=86400"),
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
                .unwrap_or_else(|| super::users::page(self, ctx)),
            (true, _, ["admin", "users", "delete"]) => self
                .guard(ctx, P::ADMIN)
                .unwrap_or_else(|| super::users::confirm_delete(self, ctx)),
            (_, true, ["admin", "users", action]) => {
                let action = action.to_string();
                self.guard_post(ctx, P::ADMIN)
                    .unwrap_or_else(|| super::users::post(self, ctx, &action))
            }
            (false, false, _) => error_page(
                ctx,
                405,
                "Method not allowed",
                "This address does not accept that kind of request.",
            )
            .with("Allow", "GET, HEAD, POST"),
            (_, true, _) => error_page(
                ctx,
                405,
                "Method not allowed",
                "This address only shows a page; it does not take a form.",
            )
            .with("Allow", "GET, HEAD"),
            _ => error_page(
                ctx,
                404,
                "Page not found",
                "There is no page at this address.",
            ),
        }
    }

    /// Frames a handler's bare text error (status 400 and above, `text/plain`) as a page
    /// inside the app frame, keeping its status and headers; under `/api/` it becomes JSON
    /// `{"error": text}`. `/metrics` and successful bodies are left alone.
    fn framed(&self, ctx: Option<&Ctx>, mut reply: Reply) -> Reply {
        let plain = reply
            .headers
            .iter()
            .any(|(n, v)| n == "Content-Type" && v.starts_with("text/plain"));
        let metrics = ctx.is_some_and(|c| c.segments.first().is_some_and(|s| s == "metrics"));
        if reply.status < 400 || !plain || metrics {
            return reply;
        }
        let Body::Bytes(bytes) = &reply.body else {
            return reply;
        };
        let text = String::from_utf8_lossy(bytes).trim().to_string();
        let reason = html::reason(reply.status);
        let message = match text.strip_prefix(reason) {
            Some(rest) => rest.trim_start_matches([':', ' ']).to_string(),
            None => text.clone(),
        };
        let message = if message.is_empty() {
            default_message(reply.status).to_string()
        } else {
            message
        };
        let title = match reason {
            "" => "Error",
            r => r,
        };
        let framed = match ctx {
            Some(c) => error_page(c, reply.status, title, &message),
            None => Reply::html(
                reply.status,
                html::page(
                    title,
                    None,
                    None,
                    &html::error_body(reply.status, &message, &[("/status", "Status page")]),
                ),
            ),
        };
        reply
            .headers
            .retain(|(n, _)| !n.eq_ignore_ascii_case("Content-Type"));
        reply.headers.extend(
            framed
                .headers
                .into_iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("Content-Type")),
        );
        reply.body = framed.body;
        reply
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
        if !same_origin(ctx, self.secure) {
            log::warn!(
                "event=cross_origin_rejected user={} peer={} origin={:?}",
                ctx.who(),
                ctx.peer,
                ctx.header("origin")
            );
            return Some(error_page(
                ctx,
                403,
                "Refused",
                "This form was sent from another site (or from a page that hides where it \
                 came from), so it was not carried out. Open the page on this appliance and \
                 send the form from there.",
            ));
        }
        match ctx.viewer.as_ref().map(|v| &v.via) {
            Some(Via::Cookie { csrf, .. }) => {
                let sent = ctx.form().remove("csrf").unwrap_or_default();
                if auth::constant_time_eq(&sent, csrf) {
                    None
                } else {
                    log::warn!("event=csrf_rejected user={} peer={}", ctx.who(), ctx.peer);
                    Some(error_page(
                        ctx,
                        403,
                        "Refused",
                        "The form was out of date or incomplete (its CSRF token did not \
                         match your login), so it was not carried out. Reload the page and \
                         send it again.",
                    ))
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
            Deny::Forbidden if ctx.segments.first().is_some_and(|s| s == "api") => {
                Reply::json(403, &serde_json::json!({ "error": "forbidden" }))
            }
            Deny::Forbidden => error_page(
                ctx,
                403,
                "Not allowed",
                &forbidden_message(ctx.viewer.as_ref().map(|v| v.perms)),
            ),
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
            return error_page(
                ctx,
                400,
                "Bad clip number",
                "Clip numbers are whole numbers from 1.",
            );
        };
        let clips = match self.ctx.backend.history.clips(sid) {
            Ok(c) => c,
            Err(e) => return self.storage_error(&e),
        };
        if clips.is_empty() {
            return error_page(
                ctx,
                404,
                "Session not found",
                "There is no recorded session with this id (or it has no clips yet, or it \
                 was purged by the history retention).",
            );
        }
        if n > clips.len() {
            let first = format!("/play/{}/1", html::url_encode(sid));
            return error_page_with(
                ctx,
                404,
                "Clip not found",
                &format!(
                    "This session has {} clip(s); there is no clip {n}.",
                    clips.len()
                ),
                &[(first.as_str(), "Clip 1 of this session")],
            );
        }
        f(self, ctx, sid, n, &clips)
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
                 script-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
            ),
        );
        push("X-Content-Type-Options", "nosniff");
        // Same-origin: browsers then send the real `Origin` on our own form posts (under
        // `no-referrer` it is `null`, which the CSRF check must refuse), while no address of
        // ours reaches another site (presigned clip URLs, links out).
        push("Referrer-Policy", "same-origin");
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
                // A known length is always sent as `Content-Length` (tiny_http would switch
                // to chunked above 32 KiB).
                rq.respond(
                    Response::new(status, headers, Cursor::new(b), Some(len), None)
                        .with_chunked_threshold(usize::MAX),
                )
            }
            Body::Stream { reader, len, slot } => {
                // The worker is free as soon as the job is queued; the client's pace only
                // holds the streaming thread and the slot.
                // Too long or too slow ends the stream: no slot is kept for hours.
                let reader: Box<dyn Read + Send> =
                    Box::new(super::streams::Paced::new(reader, self.ctx.options.limits));
                // Downloads with a known length carry `Content-Length`, so the browser shows
                // progress and an ETA; only an unknown length is chunked.
                let response =
                    Response::new(status, headers, reader, len.map(|l| l as usize), None)
                        .with_chunked_threshold(usize::MAX);
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

/// `Origin` (or, without it, `Referer`) must name the host the request was sent to, with the
/// scheme the server speaks (`https` behind TLS). `Origin: null` (a cross-origin post under
/// our referrer policy, a sandboxed frame, a `data:` page) is refused. Without either header
/// (scripts, old clients) the request passes here: the cookie's CSRF token still guards it.
fn same_origin(ctx: &Ctx, secure: bool) -> bool {
    let Some(host) = ctx.header("host") else {
        return true;
    };
    let src = ctx.header("origin").or_else(|| ctx.header("referer"));
    match src {
        None => true,
        Some("null") => false,
        Some(o) => {
            let scheme = if secure { "https://" } else { "http://" };
            let rest = o.strip_prefix(scheme).unwrap_or("");
            rest.split('/').next() == Some(host)
        }
    }
}

/// Why a logged-in viewer was refused, in words that say what to ask for.
fn forbidden_message(perms: Option<Permissions>) -> String {
    let base = "Your account does not have the permission this page needs.";
    match perms {
        Some(p)
            if p.allows(Permissions::SESSION_RECORDINGS_VIEW)
                && !p.allows(Permissions::SESSIONS_VIEW) =>
        {
            format!(
                "{base} You may play and download recordings (SESSION_RECORDINGS_VIEW) but \
                 not list sessions (SESSIONS_VIEW): open a recording from a link someone sent \
                 you, or ask an administrator to add SESSIONS_VIEW."
            )
        }
        Some(p) => format!(
            "{base} Your permissions: {}. Ask an administrator if you need more.",
            match p.names() {
                n if n.is_empty() => "none".to_string(),
                n => n,
            }
        ),
        None => base.to_string(),
    }
}

/// The message of a bare error that said nothing but its reason phrase.
fn default_message(status: u16) -> &'static str {
    match status {
        400 => "The request was not understood.",
        401 => "Please log in.",
        403 => "This request was refused.",
        404 => "There is nothing at this address.",
        416 => "The requested byte range is outside the file.",
        503 => "The appliance cannot answer this right now. Try again in a moment.",
        _ => "The request could not be carried out.",
    }
}
