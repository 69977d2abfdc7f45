//! Session history, playback and downloads: the history table (filters, cursor pagination,
//! clips under each session), the player page, clip streaming with `Range`, single-clip
//! download, thumbnails and the whole-session zip. Every play and download is audited with
//! Kasm's wording before the bytes go out; the bytes go out on a streaming thread (see
//! `streams.rs`), and a stream refused for lack of a slot (503) served nothing and is not
//! audited.

use std::fmt::Write as _;
use std::io::Read;
use std::sync::Arc;

use super::Permissions;
use super::backend::{AuditKind, Backend, ClipRow, NewAuditRow, SessionQuery, SessionRow};
use super::clips::{ClipError, HashCheck, RangeAnswer, parse_range};
use super::ctx::{App, Body, Ctx, Reply, error_page, parse_date_ms};
use super::html::{self, attr, esc};
use super::zipstream::{ZipEntry, ZipStream};
use crate::limits::{HTTP_PAGE_ROWS_MAX, HTTP_PRESIGN_EXPIRY_S, HTTP_ZIP_ENTRIES_MAX};

fn query_from(ctx: &Ctx) -> (SessionQuery, Vec<String>) {
    let mut notes = Vec::new();
    let mut date = |key: &str, plus_day: bool| -> Option<u64> {
        let v = ctx.q(key)?;
        match parse_date_ms(&v) {
            Some(ms) => Some(if plus_day { ms + 86_400_000 } else { ms }),
            None => {
                notes.push(format!("Ignored `{key}`: dates are YYYY-MM-DD."));
                None
            }
        }
    };
    let from_ms = date("from", false);
    let to_ms = date("to", true);
    let q = SessionQuery {
        user: ctx.q("user"),
        from_ms,
        to_ms,
        text: ctx.q("q"),
        appliance: ctx.q("appliance"),
        before: ctx.q("before").and_then(|b| b.parse().ok()),
        limit: ctx
            .q("limit")
            .and_then(|l| l.parse().ok())
            .unwrap_or(25)
            .clamp(1, HTTP_PAGE_ROWS_MAX),
    };
    (q, notes)
}

/// `GET /api/v1/sessions`: the same list as JSON.
pub fn list_json(app: &App, ctx: &Ctx) -> Reply {
    let (q, _) = query_from(ctx);
    match app.ctx.backend.list_sessions(&q) {
        Ok(page) => Reply::json(200, &page),
        Err(e) => app.storage_error(&e),
    }
}

/// `GET /sessions`.
pub fn list(app: &App, ctx: &Ctx) -> Reply {
    let (q, notes) = query_from(ctx);
    let page = match app.ctx.backend.list_sessions(&q) {
        Ok(p) => p,
        Err(e) => return app.storage_error(&e),
    };
    let may_play = ctx
        .viewer
        .as_ref()
        .is_some_and(|v| v.perms.allows(Permissions::SESSION_RECORDINGS_VIEW));
    let mut b = String::new();
    for n in &notes {
        let _ = write!(b, "<div class=\"alert\">{}</div>", esc(n));
    }
    let v = |k: &str| esc(&ctx.q(k).unwrap_or_default());
    let fleet = app.ctx.backend.appliances();
    let appliance_filter = match &fleet {
        Some(list) => {
            let chosen = ctx.q("appliance").unwrap_or_default();
            let mut sel = String::from(
                "<select name=\"appliance\" id=\"appliance\" aria-label=\"Appliance\">\
                 <option value=\"\">All appliances</option>",
            );
            for a in list {
                let _ = write!(
                    sel,
                    "<option value=\"{}\"{}>{}</option>",
                    attr(a),
                    if *a == chosen { " selected" } else { "" },
                    esc(a)
                );
            }
            sel.push_str("</select>");
            sel
        }
        None => String::new(),
    };
    let _ = write!(
        b,
        "<form class=\"filters\" method=\"get\" action=\"/sessions\">{appliance_filter}\
         <input name=\"user\" placeholder=\"User\" value=\"{}\" aria-label=\"User\">\
         <input name=\"from\" type=\"date\" value=\"{}\" aria-label=\"From\">\
         <input name=\"to\" type=\"date\" value=\"{}\" aria-label=\"To\">\
         <input name=\"q\" placeholder=\"Search\" value=\"{}\" aria-label=\"Search\">\
         <button type=\"submit\">Filter</button></form>",
        v("user"),
        v("from"),
        v("to"),
        v("q")
    );
    if page.items.is_empty() {
        b.push_str("<p>No sessions match.</p>");
    } else {
        let _ = write!(
            b,
            "<div class=\"scroll\"><table id=\"sessions\"><tr>{}<th>Workspace</th><th>Created (UTC)</th>\
             <th>Duration</th><th>Session</th><th>User</th><th>Recordings</th><th>State</th></tr>",
            if fleet.is_some() {
                "<th>Appliance</th>"
            } else {
                ""
            }
        );
        for s in &page.items {
            if fleet.is_some() {
                let _ = write!(
                    b,
                    "<tr><td class=\"appliance\">{}</td>",
                    esc(s.appliance.as_deref().unwrap_or(""))
                );
                session_row(app, &mut b, s, may_play, false);
            } else {
                session_row(app, &mut b, s, may_play, true);
            }
        }
        b.push_str("</table></div>");
    }
    if let Some(next) = page.next_before {
        let mut link = format!("/sessions?before={next}");
        for k in ["appliance", "user", "from", "to", "q"] {
            if let Some(val) = ctx.q(k) {
                let _ = write!(link, "&{k}={}", html::url_encode(&val));
            }
        }
        let _ = write!(
            b,
            "<p><a href=\"{}\">Older sessions &rarr;</a></p>",
            esc(&link)
        );
    }
    if q.before.is_some() {
        b.push_str("<p><a href=\"/sessions\">&larr; Newest</a></p>");
    }
    let nav = ctx.viewer.as_ref().map(|v| v.nav());
    Reply::html(200, html::page("Session history", nav.as_ref(), None, &b))
}

fn session_row(app: &App, b: &mut String, s: &SessionRow, may_play: bool, open_row: bool) {
    let duration = s
        .end_ms
        .unwrap_or_else(|| app.now_ms())
        .saturating_sub(s.start_ms);
    let _ = write!(
        b,
        "{}<td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td><td>",
        if open_row { "<tr>" } else { "" },
        esc(&s.workspace),
        html::datetime(s.start_ms),
        html::duration(duration),
        esc(&s.session_id),
        esc(&s.user),
    );
    // Links name the session by its address: its id on an appliance, id@appliance in a
    // fleet history (ids are unique per appliance only).
    let address = s.address();
    let clips = match app.ctx.backend.clips(&address) {
        Ok(c) => c,
        Err(e) => {
            log::error!("event=http_storage_error error={e}");
            Vec::new()
        }
    };
    let _ = write!(
        b,
        "<details><summary>{} clips</summary><ul class=\"clips\">",
        clips.len()
    );
    for (i, c) in clips.iter().enumerate() {
        let n = i + 1;
        let sid = attr(&address);
        b.push_str("<li>");
        if may_play && !c.failed {
            let _ = write!(
                b,
                "<a href=\"/play/{sid}/{n}\"><img class=\"thumb\" loading=\"lazy\" \
                 src=\"/thumbs/{sid}/{n}\" alt=\"Clip {n}\"></a><br>"
            );
        }
        let state = if c.failed || c.state.contains("integrity: failed") {
            format!("<span class=\"failed\">{}</span>", esc(&c.state))
        } else {
            esc(&c.state)
        };
        let title = if may_play && !c.failed {
            format!("<a href=\"/play/{sid}/{n}\">Clip {n}</a>")
        } else {
            format!("Clip {n}")
        };
        let _ = write!(
            b,
            "{title}: {} UTC, {}, {state}</li>",
            html::datetime(c.start_ms),
            html::duration(c.duration_ms)
        );
    }
    b.push_str("</ul>");
    if may_play && !clips.is_empty() {
        let _ = write!(
            b,
            "<a href=\"/sessions/{}/zip\">Download all (zip)</a>",
            attr(&address)
        );
    }
    let state = if s.state == "failed" || s.state.contains("integrity: failed") {
        format!("<span class=\"failed\">{}</span>", esc(&s.state))
    } else {
        esc(&s.state)
    };
    let ended = match &s.end_reason {
        Some(reason) => format!("<br><small>{}</small>", esc(reason)),
        None => String::new(),
    };
    let _ = write!(b, "</details></td><td>{state}{ended}</td></tr>");
}

/// `GET /play/S/N`: the player page with the session's clip list.
pub fn play(app: &App, ctx: &Ctx, sid: &str, n: usize, clips: &[ClipRow]) -> Reply {
    let clip = &clips[n - 1];
    let mut b = String::new();
    let session = app.ctx.backend.session(sid).ok().flatten();
    if let Some(s) = &session {
        let _ = write!(
            b,
            "<p>{} &middot; {} &middot; started {} UTC</p>",
            esc(&s.workspace),
            esc(&s.user),
            html::datetime(s.start_ms)
        );
    }
    let esid = attr(sid);
    if clip.failed {
        b.push_str("<div class=\"alert\">This clip failed to encode and cannot be played.</div>");
    } else {
        let _ = write!(
            b,
            "<video id=\"player\" controls autoplay muted preload=\"metadata\" \
             src=\"/clips/{esid}/{n}/video\"></video><p><a href=\"/clips/{esid}/{n}/download\">\
             Download clip {n}</a> &middot; <a href=\"/sessions/{esid}/zip\">Download all clips \
             (zip)</a></p>"
        );
    }
    b.push_str("<h2>Clips</h2><ul class=\"clips\">");
    for (i, c) in clips.iter().enumerate() {
        let k = i + 1;
        let label = format!(
            "Clip {k} &middot; {} UTC &middot; {}",
            html::datetime(c.start_ms),
            html::duration(c.duration_ms)
        );
        if c.failed {
            let _ = write!(b, "<li>{label} <span class=\"failed\">failed</span></li>");
        } else if k == n {
            let _ = write!(b, "<li><strong>{label}</strong> (playing)</li>");
        } else {
            let _ = write!(b, "<li><a href=\"/play/{esid}/{k}\">{label}</a></li>");
        }
    }
    b.push_str("</ul><p><a href=\"/sessions\">&larr; Session history</a></p>");
    let nav = ctx.viewer.as_ref().map(|v| v.nav());
    Reply::html(
        200,
        html::page(&format!("Session {sid}, clip {n}"), nav.as_ref(), None, &b),
    )
}

fn clip_error(ctx: &Ctx, e: &ClipError) -> Reply {
    match e {
        ClipError::Unavailable => {
            error_page(ctx, 404, "Not available", "This clip is not available.")
        }
        e => {
            log::error!("event=clip_read_failed error={e}");
            error_page(
                ctx,
                503,
                "Unavailable",
                "The clip cannot be read right now.",
            )
        }
    }
}

/// All `len` bytes of clip `n` of the session at `sid`, hashed on the way when the backend
/// gave the clip's signed hash (fleet history); the verdict goes back to the backend.
fn hashed(
    backend: &Arc<dyn Backend>,
    sid: &str,
    n: usize,
    clip: &ClipRow,
    reader: Box<dyn Read + Send>,
    len: u64,
) -> Box<dyn Read + Send> {
    let Some(sha256) = clip.sha256.clone() else {
        return reader;
    };
    let (backend, sid) = (backend.clone(), sid.to_string());
    Box::new(HashCheck::new(
        reader,
        len,
        sha256,
        Box::new(move |matched| backend.clip_bytes_hashed(&sid, n - 1, matched)),
    ))
}

/// Streams clip `n` of `sid` with `Range` support; `attachment` makes it a download. A
/// request for the whole clip has its bytes checked (see [`hashed`]).
fn stream(
    app: &App,
    ctx: &Ctx,
    (sid, n): (&str, usize),
    clip: &ClipRow,
    filename: Option<&str>,
) -> Result<Reply, Reply> {
    if clip.failed {
        return Err(error_page(
            ctx,
            404,
            "Failed clip",
            "This clip failed and has no video.",
        ));
    }
    let len = app.ctx.clips.size(clip).map_err(|e| clip_error(ctx, &e))?;
    let (status, start, count) = match parse_range(ctx.header("range"), len) {
        RangeAnswer::Full => (200, 0, len),
        RangeAnswer::Partial { start, end } => (206, start, end - start + 1),
        RangeAnswer::Unsatisfiable => {
            return Err(Reply::text(416, "Range Not Satisfiable")
                .with("Content-Range", format!("bytes */{len}")));
        }
    };
    // The slot before the bytes are opened and the caller audits: a refused stream served
    // nothing and is not audited.
    let slot = app.stream_slot(ctx)?;
    let mut reader = app
        .ctx
        .clips
        .read(clip, start, count)
        .map_err(|e| clip_error(ctx, &e))?;
    if start == 0 && count == len {
        reader = hashed(&app.ctx.backend, sid, n, clip, reader, len);
    }
    let mut r = Reply {
        status,
        headers: vec![
            ("Content-Type".into(), "video/mp4".into()),
            ("Accept-Ranges".into(), "bytes".into()),
            ("Cache-Control".into(), "private, no-store".into()),
        ],
        body: Body::Stream {
            reader,
            len: Some(count),
            slot,
        },
    };
    if status == 206 {
        r.headers.push((
            "Content-Range".into(),
            format!("bytes {start}-{}/{len}", start + count - 1),
        ));
    }
    if let Some(f) = filename {
        r.headers.push((
            "Content-Disposition".into(),
            format!("attachment; filename=\"{f}\""),
        ));
    }
    Ok(r)
}

/// `GET /clips/S/N/video`: the bytes the `<video>` element plays. The first request of a
/// viewing (range starting at 0) is audited once per window.
pub fn video(app: &App, ctx: &Ctx, sid: &str, n: usize, clips: &[ClipRow]) -> Reply {
    let clip = &clips[n - 1];
    let starts_at_zero = matches!(
        parse_range(ctx.header("range"), u64::MAX),
        RangeAnswer::Full | RangeAnswer::Partial { start: 0, .. }
    );
    let audit = |app: &App| {
        if starts_at_zero && app.play_audit_due(ctx.who(), clip.id) {
            app.audit(NewAuditRow {
                actor: ctx.who().to_string(),
                kind: AuditKind::Played,
                session_id: Some(sid.to_string()),
                message: format!("User {} played {sid} video: {}", ctx.who(), clip.location),
            });
        }
    };
    if app.ctx.options.presign_redirect
        && let Some(url) = app.ctx.clips.presign(clip, HTTP_PRESIGN_EXPIRY_S)
    {
        audit(app);
        return Reply::text(302, "Found").with("Location", url);
    }
    match stream(app, ctx, (sid, n), clip, None) {
        Ok(r) => {
            audit(app);
            r
        }
        Err(r) => r,
    }
}

/// `GET /clips/S/N/download`.
pub fn download(app: &App, ctx: &Ctx, sid: &str, n: usize, clips: &[ClipRow]) -> Reply {
    let clip = &clips[n - 1];
    match stream(
        app,
        ctx,
        (sid, n),
        clip,
        Some(&format!("{sid}-clip-{n}.mp4")),
    ) {
        Ok(r) => {
            app.audit(NewAuditRow {
                actor: ctx.who().to_string(),
                kind: AuditKind::Downloaded,
                session_id: Some(sid.to_string()),
                message: format!(
                    "User {} downloaded {sid} video: {}",
                    ctx.who(),
                    clip.location
                ),
            });
            r
        }
        Err(r) => r,
    }
}

/// `GET /thumbs/S/N`.
pub fn thumb(app: &App, _ctx: &Ctx, _sid: &str, n: usize, clips: &[ClipRow]) -> Reply {
    match app.ctx.clips.thumbnail(&clips[n - 1]) {
        Ok(Some(jpeg)) => {
            Reply::bytes(200, "image/jpeg", jpeg).with("Cache-Control", "private, max-age=3600")
        }
        Ok(None) => Reply::text(404, "Not Found"),
        Err(e) => {
            log::warn!("event=thumbnail_failed error={e}");
            Reply::text(503, "Service Unavailable")
        }
    }
}

/// `GET /sessions/S/zip`: every playable clip of the session as `<session_id>.zip`, streamed.
pub fn zip(app: &App, ctx: &Ctx, sid: &str) -> Reply {
    let clips = match app.ctx.backend.clips(sid) {
        Ok(c) => c,
        Err(e) => return app.storage_error(&e),
    };
    if clips.is_empty() {
        return Reply::text(404, "Not Found");
    }
    if !ctx.http11 {
        // The zip's length is not known in advance and HTTP/1.0 has no chunked bodies:
        // tiny_http would collect the whole archive in memory to count it.
        return Reply::text(
            505,
            "HTTP Version Not Supported: zip downloads need HTTP/1.1",
        );
    }
    let mut entries = Vec::new();
    for (i, c) in clips.into_iter().enumerate().take(HTTP_ZIP_ENTRIES_MAX) {
        if c.failed {
            continue;
        }
        let size = match app.ctx.clips.size(&c) {
            Ok(s) => s,
            Err(e) => {
                log::warn!(
                    "event=zip_clip_skipped session_id={sid} clip={} error={e}",
                    i + 1
                );
                continue;
            }
        };
        let (source, backend, address) = (
            app.ctx.clips.clone(),
            app.ctx.backend.clone(),
            sid.to_string(),
        );
        entries.push(ZipEntry {
            name: format!("{sid}-clip-{}.mp4", i + 1),
            size,
            mtime_ms: c.start_ms,
            open: Box::new(move || {
                let reader = source
                    .read(&c, 0, size)
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                Ok(hashed(&backend, &address, i + 1, &c, reader, size))
            }),
        });
    }
    if entries.is_empty() {
        return error_page(
            ctx,
            404,
            "Not available",
            "No clip of this session can be downloaded.",
        );
    }
    let slot = match app.stream_slot(ctx) {
        Ok(s) => s,
        Err(busy) => return busy,
    };
    app.audit(NewAuditRow {
        actor: ctx.who().to_string(),
        kind: AuditKind::DownloadedSession,
        session_id: Some(sid.to_string()),
        message: format!("User {} downloaded entire session: {sid}", ctx.who()),
    });
    Reply {
        status: 200,
        headers: vec![
            ("Content-Type".into(), "application/zip".into()),
            (
                "Content-Disposition".into(),
                format!("attachment; filename=\"{sid}.zip\""),
            ),
        ],
        body: Body::Stream {
            reader: Box::new(ZipStream::new(entries)),
            len: None,
            slot,
        },
    }
}
