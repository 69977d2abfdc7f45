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
use super::backend::{
    AuditKind, ClipRow, HistorySource, NewAuditRow, SessionCursor, SessionQuery, SessionRow,
};
use super::clips::{ClipError, HashCheck, RangeAnswer, parse_range};
use super::ctx::{App, Body, Ctx, Reply, error_page};
use super::html::{self, attr, esc};
use super::zipstream::{ZipEntry, ZipStream};
use crate::limits::{
    HTTP_PAGE_ROWS_DEFAULT, HTTP_PAGE_ROWS_MAX, HTTP_PRESIGN_EXPIRY_S, HTTP_ZIP_ENTRIES_MAX,
};

/// The player's script (`GET /static/player.js`): plays the clips of a session one after the
/// other, Prev/Next, the timeline, the wall clock of the current frame. Same-origin, no
/// network beyond the clips.
pub const PLAYER_JS: &str = include_str!("player.js");

fn query_from(app: &App, ctx: &Ctx) -> (SessionQuery, Vec<String>) {
    let zone = &app.ctx.http.display_timezone;
    let mut notes = Vec::new();
    let mut date = |key: &str, end: bool| -> Option<u64> {
        let v = ctx.q(key).filter(|v| !v.is_empty())?;
        let ms = if end {
            zone.day_end_ms(&v)
        } else {
            zone.day_start_ms(&v)
        };
        if ms.is_none() {
            notes.push(format!("Ignored `{key}`: dates are YYYY-MM-DD."));
        }
        ms
    };
    let from_ms = date("from", false);
    let to_ms = date("to", true);
    let cursor = |key: &str| ctx.q(key).and_then(|c| c.parse::<SessionCursor>().ok());
    let q = SessionQuery {
        user: ctx.q("user").filter(|u| !u.is_empty()),
        host: ctx.q("host").filter(|h| !h.is_empty()),
        from_ms,
        to_ms,
        text: ctx.q("q").filter(|t| !t.is_empty()),
        appliance: ctx.q("appliance"),
        before: cursor("before"),
        after: cursor("after"),
        limit: page_limit(ctx),
    };
    (q, notes)
}

/// `limit=` of a history URL: rows per page.
fn page_limit(ctx: &Ctx) -> usize {
    ctx.q("limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(HTTP_PAGE_ROWS_DEFAULT)
        .clamp(1, HTTP_PAGE_ROWS_MAX)
}

/// The filters of the current history URL (and its page size) as query pairs, without the
/// paging cursors: what every link of the page keeps.
fn kept_filters(ctx: &Ctx) -> String {
    let mut out = String::new();
    for k in ["appliance", "user", "host", "from", "to", "q", "limit"] {
        if let Some(val) = ctx.q(k).filter(|v| !v.is_empty()) {
            let _ = write!(out, "&{k}={}", html::url_encode(&val));
        }
    }
    out
}

/// `GET /api/v1/sessions`: the same list as JSON.
pub fn list_json(app: &App, ctx: &Ctx) -> Reply {
    let (q, _) = query_from(app, ctx);
    match app.ctx.backend.history.list_sessions(&q) {
        Ok(page) => Reply::json(200, &page),
        Err(e) => app.storage_error(&e),
    }
}

fn filter_form(app: &App, ctx: &Ctx, fleet: Option<&[String]>) -> String {
    let v = |k: &str| esc(&ctx.q(k).unwrap_or_default());
    let mut b = String::from("<form class=\"filters\" method=\"get\" action=\"/sessions\">");
    if let Some(list) = fleet {
        let chosen = ctx.q("appliance").unwrap_or_default();
        b.push_str(
            "<span class=\"field\"><label for=\"appliance\">Appliance</label>\
             <select name=\"appliance\" id=\"appliance\"><option value=\"\">All appliances</option>",
        );
        for a in list {
            let _ = write!(
                b,
                "<option value=\"{}\"{}>{}</option>",
                esc(a),
                if *a == chosen { " selected" } else { "" },
                esc(a)
            );
        }
        b.push_str("</select></span>");
    }
    let zone = esc(app.ctx.http.display_timezone.name());
    let _ = write!(
        b,
        "<span class=\"field\"><label for=\"user\">User (part of the name)</label>\
         <input id=\"user\" name=\"user\" value=\"{}\"></span>\
         <span class=\"field\"><label for=\"host\">Host (part of host:port)</label>\
         <input id=\"host\" name=\"host\" value=\"{}\"></span>\
         <span class=\"field\"><label for=\"from\">Started from (day, {zone})</label>\
         <input id=\"from\" name=\"from\" type=\"date\" value=\"{}\"></span>\
         <span class=\"field\"><label for=\"to\">to (day, {zone}, included)</label>\
         <input id=\"to\" name=\"to\" type=\"date\" value=\"{}\"></span>\
         <span class=\"field\"><label for=\"q\">Session, user, workspace or host</label>\
         <input id=\"q\" name=\"q\" value=\"{}\"></span>",
        v("user"),
        v("host"),
        v("from"),
        v("to"),
        v("q")
    );
    if let Some(limit) = ctx.q("limit").filter(|l| !l.is_empty()) {
        let _ = write!(
            b,
            "<input type=\"hidden\" name=\"limit\" value=\"{}\">",
            esc(&limit)
        );
    }
    b.push_str(
        "<span class=\"field actions\"><button type=\"submit\">Filter</button>\
         <a href=\"/sessions\">Clear</a></span></form>",
    );
    b
}

/// `GET /sessions`: newest start first, filters, Newer/Older paging.
pub fn list(app: &App, ctx: &Ctx) -> Reply {
    let (q, notes) = query_from(app, ctx);
    let page = match app.ctx.backend.history.list_sessions(&q) {
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
    let fleet = app.ctx.backend.history.appliances();
    if may_play && app.ctx.options.search.is_some() {
        b.push_str(
            "<form class=\"filters search-inside\" method=\"get\" action=\"/search\">\
             <span class=\"field\"><label for=\"search-q\">Search inside recordings</label>\
             <input id=\"search-q\" name=\"q\" type=\"search\"></span>\
             <span class=\"field actions\"><button type=\"submit\">Search</button></span></form>",
        );
    }
    b.push_str(&filter_form(app, ctx, fleet.as_deref()));
    let zone = app.ctx.http.display_timezone.name();
    if page.items.is_empty() {
        b.push_str("<p>No sessions match.</p>");
    } else {
        let _ = write!(
            b,
            "<div class=\"scroll\"><table id=\"sessions\"><tr>{}<th>Workspace</th>\
             <th>Host</th><th>Started ({})</th><th>Duration</th><th>Session</th><th>User</th>\
             <th>Recordings</th><th>State</th></tr>",
            if fleet.is_some() {
                "<th>Appliance</th>"
            } else {
                ""
            },
            esc(zone)
        );
        for s in &page.items {
            b.push_str("<tr>");
            if fleet.is_some() {
                let _ = write!(
                    b,
                    "<td class=\"appliance\">{}</td>",
                    esc(s.appliance.as_deref().unwrap_or(""))
                );
            }
            session_row(app, ctx, &mut b, s, may_play);
        }
        b.push_str("</table></div>");
    }
    let keep = kept_filters(ctx);
    let mut nav = Vec::new();
    if let Some(after) = page.next_after {
        let newest = format!("/sessions?{}", keep.trim_start_matches('&'));
        nav.push(format!("<a href=\"{}\">&laquo; Newest</a>", esc(&newest)));
        nav.push(format!(
            "<a rel=\"prev\" href=\"{}\">&larr; Newer sessions</a>",
            esc(&format!("/sessions?after={after}{keep}"))
        ));
    }
    if let Some(before) = page.next_before {
        nav.push(format!(
            "<a rel=\"next\" href=\"{}\">Older sessions &rarr;</a>",
            esc(&format!("/sessions?before={before}{keep}"))
        ));
    }
    html::pager(&mut b, "Pages", &nav);
    let nav = ctx.viewer.as_ref().map(|v| v.nav());
    Reply::html(
        200,
        html::page(
            "Session history",
            nav.as_ref(),
            None,
            &format!("<style>{HISTORY_CSS}</style>{b}"),
        ),
    )
}

/// Styles of the history and player pages (the shared layout has the rest).
const HISTORY_CSS: &str = "\
form.filters{align-items:flex-end}form.filters .field{display:flex;flex-direction:column}\
form.filters label{margin:0 0 .15rem;font-size:.85rem}form.filters .actions{flex-direction:row;\
gap:.6rem;align-items:center}.pager{display:flex;gap:1.2rem;margin:.8rem 0}\
.player{display:grid;grid-template-columns:minmax(0,1fr) 300px;gap:1rem;align-items:start}\
.player-main{min-width:0}.player-main video{max-height:58vh}.now{font-variant-numeric:tabular-nums;margin:0 0 .4rem}\
.player-nav{display:flex;flex-wrap:wrap;gap:.5rem 1rem;align-items:center;margin:.5rem 0}\
.player-nav .button{background:#1f6feb;color:#fff;border-radius:4px;padding:.3rem .7rem;\
text-decoration:none}.player-nav .button[aria-disabled=true]{background:#9aa4ae;\
pointer-events:none}svg.timeline{display:block;width:100%;height:28px;cursor:pointer;\
background:#e3e7eb;border-radius:3px}svg.timeline .clip{fill:#7aa7e0}svg.timeline .clip.current\
{fill:#1f6feb}svg.timeline .clip.failed{fill:#e57373}svg.timeline .boundary{fill:#1f2d3d}\
svg.timeline .playhead{fill:#c62828}.scale{display:flex;justify-content:space-between;\
font-size:.8rem;color:#555;font-variant-numeric:tabular-nums}ol.cliplist{list-style:none;\
padding:0;margin:0}ol.cliplist li{display:flex;gap:.6rem;padding:.4rem;border:1px solid \
transparent;border-radius:4px}ol.cliplist li.current{border-color:#1f6feb;background:#eef4fe}\
ol.cliplist img.thumb{width:96px;max-width:30vw;height:auto}\
@media(max-width:800px){.player{grid-template-columns:minmax(0,1fr)}}";

fn session_row(app: &App, ctx: &Ctx, b: &mut String, s: &SessionRow, may_play: bool) {
    let zone = &app.ctx.http.display_timezone;
    let duration = s
        .end_ms
        .unwrap_or_else(|| app.now_ms())
        .saturating_sub(s.start_ms);
    let mut user_link = format!("/sessions?user={}", html::url_encode(&s.user));
    if let Some(limit) = ctx.q("limit") {
        let _ = write!(user_link, "&limit={}", html::url_encode(&limit));
    }
    let _ = write!(
        b,
        "<td>{}</td>{}<td><time datetime=\"{}\">{}</time></td><td>{}</td>\
         <td><code>{}</code></td>\
         <td class=\"user\"><a href=\"{}\" title=\"Only this user's sessions\">{}</a></td><td>",
        esc(&s.workspace),
        host_cell(ctx, s),
        s.start_ms,
        zone.datetime(s.start_ms),
        html::duration(duration),
        esc(&s.session_id),
        esc(&user_link),
        esc(&s.user),
    );
    // Links name the session by its address: its id on an appliance, id@appliance in a
    // fleet history (ids are unique per appliance only).
    let address = s.address();
    let clips = match app.ctx.backend.history.clips(&address) {
        Ok(c) => c,
        Err(e) => {
            log::error!("event=http_storage_error error={e}");
            Vec::new()
        }
    };
    let sid = attr(&address);
    if may_play && clips.iter().any(|c| !c.failed) {
        let _ = write!(b, "<a href=\"/play/{sid}\">Play session</a>");
    }
    let _ = write!(
        b,
        "<details><summary>{} clips</summary><ul class=\"clips\">",
        clips.len()
    );
    for (i, c) in clips.iter().enumerate() {
        let n = i + 1;
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
            "{title}: {}, {}, {state}</li>",
            zone.datetime(c.start_ms),
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

/// The Host cell: the target, linked to the history of that host, with the client's address
/// as its title; "—" when the session names none (imported recordings).
fn host_cell(ctx: &Ctx, s: &SessionRow) -> String {
    if s.target.is_empty() {
        return "<td class=\"host\">\u{2014}</td>".into();
    }
    let mut link = format!("/sessions?host={}", html::url_encode(&s.target));
    if let Some(limit) = ctx.q("limit") {
        let _ = write!(link, "&limit={}", html::url_encode(&limit));
    }
    let title = match s.client_addr.as_str() {
        "" => "Only this host's sessions".to_string(),
        from => format!("Only this host's sessions (connected from {from})"),
    };
    format!(
        "<td class=\"host\"><a href=\"{}\" title=\"{}\">{}</a></td>",
        esc(&link),
        esc(&title),
        esc(&s.target)
    )
}

/// Where each clip sits on the session's timeline: ms from the session's start.
struct Timeline {
    /// Wall clock of the timeline's 0 (the session's start).
    start_ms: u64,
    /// Length of the timeline.
    total_ms: u64,
    /// Offset of each clip from `start_ms`.
    offsets_ms: Vec<u64>,
}

impl Timeline {
    fn new(session: Option<&SessionRow>, clips: &[ClipRow]) -> Self {
        let first_clip = clips.iter().map(|c| c.start_ms).min().unwrap_or(0);
        let start_ms = session.map_or(first_clip, |s| s.start_ms.min(first_clip));
        let offsets_ms: Vec<u64> = clips
            .iter()
            .map(|c| c.start_ms.saturating_sub(start_ms))
            .collect();
        let clips_end = clips
            .iter()
            .zip(&offsets_ms)
            .map(|(c, o)| o + c.duration_ms)
            .max()
            .unwrap_or(0);
        let session_end = session
            .and_then(|s| s.end_ms)
            .map_or(0, |e| e.saturating_sub(start_ms));
        Self {
            start_ms,
            total_ms: clips_end.max(session_end).max(1),
            offsets_ms,
        }
    }

    /// The clip (0-based) to open for second `t_s` of the session and the second within it:
    /// the playable clip that holds that moment, else the next one after it, else the last.
    fn locate(&self, clips: &[ClipRow], t_s: f64) -> Option<(usize, f64)> {
        let t_ms = (t_s.max(0.0) * 1000.0) as u64;
        let playable = |i: &usize| !clips[*i].failed;
        let holds = (0..clips.len()).filter(playable).find(|&i| {
            let o = self.offsets_ms[i];
            t_ms >= o && t_ms < o + clips[i].duration_ms.max(1)
        });
        if let Some(i) = holds {
            return Some((i, (t_ms - self.offsets_ms[i]) as f64 / 1000.0));
        }
        (0..clips.len())
            .filter(playable)
            .find(|&i| self.offsets_ms[i] >= t_ms)
            .map(|i| (i, 0.0))
            .or_else(|| (0..clips.len()).rfind(playable).map(|i| (i, 0.0)))
    }
}

/// `GET /play/S?t=SECONDS`: the session player, at second `t` of the session (the clip that
/// holds it), else at its first playable clip.
pub fn play_session(app: &App, ctx: &Ctx, sid: &str) -> Reply {
    let clips = match app.ctx.backend.history.clips(sid) {
        Ok(c) => c,
        Err(e) => return app.storage_error(&e),
    };
    if clips.is_empty() {
        return error_page(ctx, 404, "Not found", "This session has no clips.");
    }
    let session = app.ctx.backend.history.session(sid).ok().flatten();
    let timeline = Timeline::new(session.as_ref(), &clips);
    let t_s = ctx
        .q("t")
        .and_then(|t| t.parse::<f64>().ok())
        .filter(|t| t.is_finite());
    let (n, at_s) = match timeline.locate(&clips, t_s.unwrap_or(0.0)) {
        Some((i, at)) => (i + 1, at),
        None => (1, 0.0),
    };
    player(app, ctx, sid, (n, at_s), &clips, session.as_ref())
}

/// `GET /play/S/N`: the session player at the start of clip `n`.
pub fn play(app: &App, ctx: &Ctx, sid: &str, n: usize, clips: &[ClipRow]) -> Reply {
    let session = app.ctx.backend.history.session(sid).ok().flatten();
    player(app, ctx, sid, (n, 0.0), clips, session.as_ref())
}

/// The zero-padded clip number of file names (`07` of 12 clips), so names sort.
fn clip_file_number(n: usize, count: usize) -> String {
    let width = count.max(1).to_string().len().max(2);
    format!("{n:0width$}")
}

/// The player page: the video, Prev/Next, the session timeline with clip boundaries, the
/// wall-clock time of the current frame and the clip list. `player.js` plays the clips one
/// after the other; without it each clip is a link.
fn player(
    app: &App,
    ctx: &Ctx,
    sid: &str,
    (n, at_s): (usize, f64),
    clips: &[ClipRow],
    session: Option<&SessionRow>,
) -> Reply {
    let zone = &app.ctx.http.display_timezone;
    let timeline = Timeline::new(session, clips);
    let clip = &clips[n - 1];
    let esid = attr(sid);
    let mut b = format!("<style>{HISTORY_CSS}{}</style>", super::search::PANE_CSS);
    let events = super::search::session_events(app, ctx, sid);
    if let Some(s) = session {
        let host = match (s.target.as_str(), s.client_addr.as_str()) {
            ("", _) => String::new(),
            (t, "") => format!(" &middot; host <span class=\"target\">{}</span>", esc(t)),
            (t, from) => format!(
                " &middot; host <span class=\"target\">{}</span> from <span \
                 class=\"client-addr\">{}</span>",
                esc(t),
                esc(from)
            ),
        };
        let _ = write!(
            b,
            "<p>{} &middot; <a href=\"/sessions?user={}\">{}</a>{host} &middot; started {} \
             ({})</p>",
            esc(&s.workspace),
            attr(&s.user),
            esc(&s.user),
            zone.datetime(s.start_ms),
            esc(zone.name())
        );
    }
    let _ = write!(
        b,
        "<div class=\"player\" id=\"session-player\" data-session=\"{}\" data-origin-ms=\"{}\" \
         data-total-ms=\"{}\" data-tz=\"{}\" data-tz-offset-s=\"{}\" data-current-clip=\"{n}\" \
         data-start-at-s=\"{at_s:.3}\"><div class=\"player-main\">",
        esc(sid),
        timeline.start_ms,
        timeline.total_ms,
        esc(zone.iana_name().unwrap_or("")),
        zone.offset_s(clip.start_ms),
    );
    let frame_ms = clip.start_ms + (at_s * 1000.0) as u64;
    let _ = write!(
        b,
        "<p class=\"now\"><span id=\"clip-label\">Clip {n} of {}</span> &middot; \
         <span>Frame time</span> <time id=\"wallclock\">{}</time> {}</p>",
        clips.len(),
        zone.datetime(frame_ms),
        esc(&zone.abbreviation(frame_ms)),
    );
    if clip.failed {
        b.push_str(
            "<div class=\"alert\" id=\"clip-failed\">This clip failed and cannot be played.</div>",
        );
    }
    let fragment = if at_s > 0.0 {
        format!("#t={at_s:.3}")
    } else {
        String::new()
    };
    let _ = write!(
        b,
        "<video id=\"player\" controls autoplay muted playsinline preload=\"metadata\"{}{}>\
         </video>",
        if clip.failed {
            String::new()
        } else {
            format!(" src=\"/clips/{esid}/{n}/video{fragment}\"")
        },
        if clip.failed { " hidden" } else { "" }
    );
    let prev = (1..n).rev().find(|&k| !clips[k - 1].failed);
    let next = (n + 1..=clips.len()).find(|&k| !clips[k - 1].failed);
    let step = |id: &str, to: Option<usize>, label: &str| match to {
        Some(k) => format!("<a class=\"button\" id=\"{id}\" href=\"/play/{esid}/{k}\">{label}</a>"),
        None => format!(
            "<a class=\"button\" id=\"{id}\" role=\"link\" aria-disabled=\"true\">{label}</a>"
        ),
    };
    let _ = write!(
        b,
        "<div class=\"player-nav\">{}{}<a id=\"download-current\" \
         href=\"/clips/{esid}/{n}/download\">Download clip {n}</a>\
         <a href=\"/sessions/{esid}/zip\">Download all clips (zip)</a></div>",
        step("prev", prev, "&larr; Previous clip"),
        step("next", next, "Next clip &rarr;"),
    );
    timeline_svg(&mut b, &timeline, clips, n);
    let _ = write!(
        b,
        "<div class=\"scale\"><span>0:00 &middot; {}</span><span>{}</span></div>",
        zone.datetime(timeline.start_ms),
        html::duration(timeline.total_ms)
    );
    // Strips that share the timeline's scale go here.
    if let Some((_, activity)) = &events {
        super::search::heatmap_svg(&mut b, activity, timeline.total_ms);
    }
    b.push_str("</div><aside class=\"player-side\" id=\"player-side\">");
    if let Some((list, _)) = &events {
        super::search::event_pane(app, &mut b, sid, list);
    }
    b.push_str("<h2>Clips</h2>");
    clip_list(&mut b, app, (sid, n), clips, &timeline);
    b.push_str("</aside></div>");
    let _ = write!(
        b,
        "<p><a href=\"/sessions\">&larr; Session history</a></p>\
         <script src=\"/static/player.js?v={}\"></script>",
        env!("CARGO_PKG_VERSION")
    );
    let nav = ctx.viewer.as_ref().map(|v| v.nav());
    Reply::html(
        200,
        html::page(&format!("Session {sid}"), nav.as_ref(), None, &b),
    )
}

/// The session timeline: one bar per clip on a 0..1000 scale, a line at each boundary
/// between clips, the play head.
fn timeline_svg(b: &mut String, t: &Timeline, clips: &[ClipRow], n: usize) {
    let x = |ms: u64| ms as f64 * 1000.0 / t.total_ms as f64;
    let _ = write!(
        b,
        "<svg id=\"timeline\" class=\"timeline\" viewBox=\"0 0 1000 28\" \
         preserveAspectRatio=\"none\" role=\"slider\" tabindex=\"0\" \
         aria-label=\"Session timeline: click to go to that moment\" aria-valuemin=\"0\" \
         aria-valuemax=\"{}\" aria-valuenow=\"{}\" aria-valuetext=\"{}\">",
        t.total_ms / 1000,
        t.offsets_ms[n - 1] / 1000,
        html::duration(t.offsets_ms[n - 1])
    );
    for (i, c) in clips.iter().enumerate() {
        let class = match (c.failed, i + 1 == n) {
            (true, _) => "clip failed",
            (false, true) => "clip current",
            (false, false) => "clip",
        };
        let _ = write!(
            b,
            "<rect class=\"{class}\" data-clip=\"{}\" x=\"{:.2}\" y=\"4\" width=\"{:.2}\" \
             height=\"20\"><title>Clip {}</title></rect>",
            i + 1,
            x(t.offsets_ms[i]),
            x(c.duration_ms.max(1)).max(0.5),
            i + 1
        );
        if i > 0 {
            let _ = write!(
                b,
                "<rect class=\"boundary\" x=\"{:.2}\" y=\"0\" width=\"1.5\" height=\"28\"/>",
                x(t.offsets_ms[i])
            );
        }
    }
    let _ = write!(
        b,
        "<rect id=\"playhead\" class=\"playhead\" x=\"{:.2}\" y=\"0\" width=\"2\" height=\"28\"/>\
         </svg>",
        x(t.offsets_ms[n - 1])
    );
}

/// The clip list: thumbnail, number, start, duration, state, download; the data `player.js`
/// plays from.
fn clip_list(b: &mut String, app: &App, (sid, n): (&str, usize), clips: &[ClipRow], t: &Timeline) {
    let zone = &app.ctx.http.display_timezone;
    let esid = attr(sid);
    b.push_str("<ol class=\"cliplist\" id=\"cliplist\">");
    for (i, c) in clips.iter().enumerate() {
        let k = i + 1;
        let _ = write!(
            b,
            "<li id=\"clip-{k}\" data-clip=\"{k}\" data-src=\"/clips/{esid}/{k}/video\" \
             data-offset-ms=\"{}\" data-duration-ms=\"{}\" data-start-ms=\"{}\"{}{}>",
            t.offsets_ms[i],
            c.duration_ms,
            c.start_ms,
            if c.failed {
                " data-failed=\"true\""
            } else {
                ""
            },
            if k == n {
                " class=\"current\" aria-current=\"true\""
            } else {
                ""
            }
        );
        if c.failed {
            b.push_str("<div></div>");
        } else {
            let _ = write!(
                b,
                "<a href=\"/play/{esid}/{k}\" class=\"goto\"><img class=\"thumb\" \
                 loading=\"lazy\" src=\"/thumbs/{esid}/{k}\" alt=\"Clip {k}\"></a>"
            );
        }
        let title = if c.failed {
            format!("Clip {k}")
        } else {
            format!("<a href=\"/play/{esid}/{k}\" class=\"goto\">Clip {k}</a>")
        };
        let state = if c.failed || c.state.contains("integrity: failed") {
            format!("<span class=\"failed\">{}</span>", esc(&c.state))
        } else {
            esc(&c.state)
        };
        let download = if c.failed {
            String::new()
        } else {
            format!(" &middot; <a href=\"/clips/{esid}/{k}/download\">Download</a>")
        };
        let _ = write!(
            b,
            "<div>{title}<br>{} &middot; <span class=\"duration\">{}</span><br>\
             {state}{download}</div></li>",
            zone.datetime(c.start_ms),
            html::duration(c.duration_ms),
        );
    }
    b.push_str("</ol>");
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
    backend: &Arc<dyn HistorySource>,
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
        reader = hashed(&app.ctx.backend.history, sid, n, clip, reader, len);
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
        Some(&format!(
            "{sid}-clip-{}.mp4",
            clip_file_number(n, clips.len())
        )),
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

/// `GET /sessions/S/zip`: every playable clip of the session as `<session_id>.zip`, streamed
/// with its length announced; entries are named `<session_id>-clip-NN.mp4`, 1-based and
/// zero-padded so they sort.
pub fn zip(app: &App, ctx: &Ctx, sid: &str) -> Reply {
    let clips = match app.ctx.backend.history.clips(sid) {
        Ok(c) => c,
        Err(e) => return app.storage_error(&e),
    };
    if clips.is_empty() {
        return Reply::text(404, "Not Found");
    }
    let count = clips.len();
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
            name: format!("{sid}-clip-{}.mp4", clip_file_number(i + 1, count)),
            size,
            mtime_ms: c.start_ms,
            open: Box::new(move || {
                let reader = source
                    .read(&c, 0, size)
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                Ok(hashed(&backend.history, &address, i + 1, &c, reader, size))
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
    // Stored entries of known sizes: the archive's length is known before its first byte,
    // so the download carries `Content-Length` (progress and ETA in the browser).
    let len = ZipStream::len_of(&entries);
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
            len: Some(len),
            slot,
        },
    }
}
