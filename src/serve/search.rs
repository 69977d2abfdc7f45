//! Search inside recordings: the search page (`GET /search`), its JSON twin
//! (`GET /api/v1/search`), and the player's event pane and activity heatmap (rendered into the
//! player page by `history.rs`). Everything reads the [`SearchIndex`] given in
//! [`super::ServeOptions::search`]; without one the pages say search is not available.
//!
//! Every search (each page of hits) is audited with its query. Typed text and clipboard
//! contents are matched and shown only for viewers with `SESSION_KEYSTROKES_VIEW`; others see
//! such events (kind, time, a summary without contents) but their text never matches.

use std::fmt::Write as _;

use super::Permissions;
use super::backend::{AuditKind, NewAuditRow};
use super::ctx::{App, Ctx, Reply, error_page};
use super::html::{self, attr, esc};
use crate::events::EventKind;
use crate::limits::{SEARCH_PAGE_HITS_DEFAULT, SEARCH_PAGE_HITS_MAX};
use crate::search::index::ClipActivity;
use crate::search::{Hit, HitPage, SearchQuery, Snippet};

/// Words for a kind in the pages' filters and lists.
fn kind_label(kind: &str) -> &'static str {
    match EventKind::parse(kind) {
        Some(EventKind::Typed) => "Typed",
        Some(EventKind::Clipboard) => "Clipboard",
        Some(EventKind::File) => "File",
        Some(EventKind::Title) => "Title",
        Some(EventKind::ScreenText) => "Screen text",
        None => "Event",
    }
}

/// Whether the viewer may see typed text and clipboard contents.
pub fn may_see_keystrokes(ctx: &Ctx) -> bool {
    ctx.viewer
        .as_ref()
        .is_some_and(|v| v.perms.allows(Permissions::SESSION_KEYSTROKES_VIEW))
}

/// The search of the request, with notes about ignored filters.
fn query_from(app: &App, ctx: &Ctx) -> (SearchQuery, Vec<String>) {
    let zone = &app.ctx.http.display_timezone;
    let mut notes = Vec::new();
    let mut time = |key: &str, end: bool| -> Option<u64> {
        let v = ctx.q(key)?;
        if let Ok(ms) = v.parse::<u64>() {
            return Some(ms);
        }
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
    let from_ms = time("from", false);
    let to_ms = time("to", true);
    let mut kinds = Vec::new();
    for k in ctx.q("kind").unwrap_or_default().split(',') {
        match EventKind::parse(k.trim()) {
            Some(kind) => kinds.push(kind),
            None if k.trim().is_empty() => {}
            None => notes.push(format!("Ignored the unknown kind `{}`.", k.trim())),
        }
    }
    let q = SearchQuery {
        text: ctx.q("q").unwrap_or_default(),
        user: ctx.q("user"),
        appliance: ctx.q("appliance"),
        from_ms,
        to_ms,
        kinds,
        offset: ctx.q("offset").and_then(|o| o.parse().ok()).unwrap_or(0),
        limit: ctx
            .q("limit")
            .and_then(|l| l.parse().ok())
            .unwrap_or(SEARCH_PAGE_HITS_DEFAULT)
            .clamp(1, SEARCH_PAGE_HITS_MAX),
    };
    (q, notes)
}

/// Whether the request asks anything (a bare visit to the page shows the form only).
fn asks(ctx: &Ctx) -> bool {
    ["q", "kind", "user", "appliance", "from", "to"]
        .iter()
        .any(|k| ctx.q(k).is_some())
}

/// Runs the search of the request and audits it.
fn run(app: &App, ctx: &Ctx, q: &SearchQuery) -> Result<HitPage, Reply> {
    let Some(index) = app.ctx.options.search.as_ref() else {
        return Err(error_page(
            ctx,
            503,
            "Search not available",
            "This server keeps no search index.",
        ));
    };
    let page = index.search(q, may_see_keystrokes(ctx)).map_err(|e| {
        log::error!("event=search_failed error={e}");
        error_page(
            ctx,
            503,
            "Search failed",
            "The search index cannot be read right now; the log says why.",
        )
    })?;
    let mut filters = Vec::new();
    for (k, v) in [
        ("user", &q.user),
        ("appliance", &q.appliance),
        ("from", &ctx.q("from")),
        ("to", &ctx.q("to")),
    ] {
        if let Some(v) = v {
            filters.push(format!("{k} {v:?}"));
        }
    }
    if !q.kinds.is_empty() {
        let kinds: Vec<&str> = q.kinds.iter().map(|k| k.as_str()).collect();
        filters.push(format!("kind {}", kinds.join(",")));
    }
    let filters = if filters.is_empty() {
        String::new()
    } else {
        format!(" ({})", filters.join(", "))
    };
    app.audit(NewAuditRow {
        actor: ctx.who().to_string(),
        kind: AuditKind::Searched,
        session_id: None,
        message: format!(
            "User {} searched recordings for {:?}{filters}: {}",
            ctx.who(),
            q.text,
            page.count_label()
        ),
    });
    Ok(page)
}

/// `GET /api/v1/search`: the page of hits, each with its session's `target`.
pub fn json(app: &App, ctx: &Ctx) -> Reply {
    let (q, _) = query_from(app, ctx);
    match run(app, ctx, &q) {
        Ok(page) => {
            let targets = Targets::of(app, &page);
            let hits: Vec<HitOut<'_>> = page
                .hits
                .iter()
                .map(|hit| HitOut {
                    hit,
                    target: targets.of_hit(hit),
                })
                .collect();
            Reply::json(
                200,
                &serde_json::json!({
                    "hits": hits,
                    "total": page.total,
                    "total_exact": page.total_exact,
                    "next_offset": page.next_offset,
                }),
            )
        }
        Err(r) => r,
    }
}

/// A hit as the API gives it: the index's hit and the target of its session.
#[derive(serde::Serialize)]
struct HitOut<'a> {
    #[serde(flatten)]
    hit: &'a Hit,
    /// The session's remote host (`host:port`); empty when it names none.
    target: &'a str,
}

/// The targets of the sessions of a page of hits, read from the history (the search index
/// keeps events; the session's fields stay with the session): one look-up per session.
struct Targets(std::collections::HashMap<String, String>);

impl Targets {
    fn of(app: &App, page: &HitPage) -> Self {
        let mut map = std::collections::HashMap::new();
        for h in &page.hits {
            if map.contains_key(&h.session_id) {
                continue;
            }
            let target = match app.ctx.backend.history.session(&h.session_id) {
                Ok(Some(s)) => s.target,
                Ok(None) => String::new(),
                Err(e) => {
                    log::error!("event=http_storage_error error={e}");
                    String::new()
                }
            };
            map.insert(h.session_id.clone(), target);
        }
        Self(map)
    }

    fn of_hit(&self, h: &Hit) -> &str {
        self.0.get(&h.session_id).map_or("", String::as_str)
    }
}

/// A snippet as HTML: everything escaped, the matches in `<mark>`.
pub fn snippet_html(s: &Snippet) -> String {
    let mut out = String::new();
    let mut at = 0;
    for &(a, b) in &s.highlights {
        let (Some(before), Some(hit)) = (s.text.get(at..a), s.text.get(a..b)) else {
            continue;
        };
        out.push_str(&esc(before));
        let _ = write!(out, "<mark>{}</mark>", esc(hit));
        at = b;
    }
    out.push_str(&esc(s.text.get(at..).unwrap_or_default()));
    out
}

/// What a hit or event shows as its text: the snippet, or that the text is hidden.
fn text_cell(h: &Hit) -> String {
    match &h.snippet {
        Some(s) if !s.text.is_empty() => {
            format!("<span class=\"snippet\">{}</span>", snippet_html(s))
        }
        Some(_) => String::new(),
        None => "<span class=\"hidden-text\">(contents hidden: needs \
                 SESSION_KEYSTROKES_VIEW)</span>"
            .to_string(),
    }
}

/// The player address of a hit: the session at the hit's second (the player opens the clip
/// that holds it).
fn play_link(h: &Hit) -> String {
    format!(
        "/play/{}?t={:.3}",
        html::url_encode(&h.session_id),
        h.offset_ms as f64 / 1000.0
    )
}

const SEARCH_CSS: &str = "\
form.filters{align-items:flex-end}form.filters .field{display:flex;flex-direction:column}\
form.filters label{margin:0 0 .15rem;font-size:.85rem}form.filters .actions{flex-direction:row;\
gap:.6rem;align-items:center}form.filters .wide input{min-width:18rem}\
.pager{display:flex;gap:1.2rem;margin:.8rem 0}mark{background:#ffe066;color:inherit}\
.hidden-text{color:#555;font-style:italic}td.snippet-cell{max-width:36rem}";

fn form(app: &App, ctx: &Ctx) -> String {
    let v = |k: &str| esc(&ctx.q(k).unwrap_or_default());
    let zone = esc(app.ctx.http.display_timezone.name());
    let mut b = String::from("<form class=\"filters\" method=\"get\" action=\"/search\">");
    let _ = write!(
        b,
        "<span class=\"field wide\"><label for=\"q\">Search inside recordings</label>\
         <input id=\"q\" name=\"q\" type=\"search\" value=\"{}\"></span>",
        v("q")
    );
    if let Some(list) = app.ctx.backend.history.appliances() {
        let chosen = ctx.q("appliance").unwrap_or_default();
        b.push_str(
            "<span class=\"field\"><label for=\"appliance\">Appliance</label>\
             <select name=\"appliance\" id=\"appliance\"><option value=\"\">All appliances</option>",
        );
        for a in &list {
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
    let chosen_kind = ctx.q("kind").unwrap_or_default();
    let _ = write!(
        b,
        "<span class=\"field\"><label for=\"kind\">Kind</label><select id=\"kind\" name=\"kind\">\
         <option value=\"\">All kinds</option>"
    );
    for k in EventKind::ALL {
        let _ = write!(
            b,
            "<option value=\"{}\"{}>{}</option>",
            k.as_str(),
            if chosen_kind == k.as_str() {
                " selected"
            } else {
                ""
            },
            kind_label(k.as_str())
        );
    }
    let _ = write!(
        b,
        "</select></span><span class=\"field\"><label for=\"user\">User (part of the name)</label>\
         <input id=\"user\" name=\"user\" value=\"{}\"></span>\
         <span class=\"field\"><label for=\"from\">From (day, {zone})</label>\
         <input id=\"from\" name=\"from\" type=\"date\" value=\"{}\"></span>\
         <span class=\"field\"><label for=\"to\">to (day, {zone}, included)</label>\
         <input id=\"to\" name=\"to\" type=\"date\" value=\"{}\"></span>\
         <span class=\"field actions\"><button type=\"submit\">Search</button>\
         <a href=\"/search\">Clear</a></span></form>",
        v("user"),
        v("from"),
        v("to")
    );
    b
}

/// `GET /search`: the form, and the hits of the request's search, paged.
pub fn page(app: &App, ctx: &Ctx) -> Reply {
    let (q, notes) = query_from(app, ctx);
    let mut b = format!("<style>{SEARCH_CSS}</style>");
    for n in &notes {
        let _ = write!(b, "<div class=\"alert\">{}</div>", esc(n));
    }
    b.push_str(&form(app, ctx));
    if !may_see_keystrokes(ctx) {
        b.push_str(
            "<p class=\"hidden-text\">Typed text and clipboard contents are not searched for \
             your account (they need SESSION_KEYSTROKES_VIEW).</p>",
        );
    }
    if asks(ctx) {
        let page = match run(app, ctx, &q) {
            Ok(p) => p,
            Err(r) => return r,
        };
        hits_table(app, &mut b, &page, &q);
        pager(ctx, &mut b, &page, &q);
    }
    b.push_str("<p><a href=\"/sessions\">&larr; Session history</a></p>");
    let nav = ctx.viewer.as_ref().map(|v| v.nav());
    Reply::html(
        200,
        html::page("Search inside recordings", nav.as_ref(), None, &b),
    )
}

fn hits_table(app: &App, b: &mut String, page: &HitPage, q: &SearchQuery) {
    let zone = &app.ctx.http.display_timezone;
    if page.hits.is_empty() {
        b.push_str("<p id=\"no-hits\">Nothing found.</p>");
        return;
    }
    let _ = write!(
        b,
        "<p id=\"hit-count\">{} &middot; showing {} to {}</p>\
         <div class=\"scroll\"><table id=\"hits\"><tr><th>When ({})</th><th>Kind</th>\
         <th>Text</th><th>Session</th><th>Host</th><th>User</th><th>Appliance</th></tr>",
        page.count_label(),
        q.offset.saturating_add(1),
        q.offset + page.hits.len(),
        esc(zone.name())
    );
    let targets = Targets::of(app, page);
    for h in &page.hits {
        let target = match targets.of_hit(h) {
            "" => "\u{2014}",
            t => t,
        };
        let _ = write!(
            b,
            "<tr class=\"hit\"><td><a class=\"hit-link\" href=\"{}\"><time datetime=\"{}\">{}</time>\
             </a></td><td>{}<br><small>{}</small></td><td class=\"snippet-cell\">{}</td>\
             <td><code>{}</code><br><small>clip {}, at {}</small></td><td class=\"host\">{}</td>\
             <td>{}</td><td>{}</td></tr>",
            esc(&play_link(h)),
            h.at_ms,
            zone.datetime(h.at_ms),
            kind_label(&h.kind),
            esc(&h.summary),
            text_cell(h),
            esc(&h.session_id),
            h.clip_index,
            html::duration(h.offset_ms),
            esc(target),
            esc(&h.user),
            esc(&h.appliance_id),
        );
    }
    b.push_str("</table></div>");
}

fn pager(ctx: &Ctx, b: &mut String, page: &HitPage, q: &SearchQuery) {
    let mut keep = String::new();
    for k in ["q", "kind", "user", "appliance", "from", "to", "limit"] {
        if let Some(v) = ctx.q(k) {
            let _ = write!(keep, "&{k}={}", html::url_encode(&v));
        }
    }
    let mut nav = Vec::new();
    if q.offset > 0 {
        let back = q.offset.saturating_sub(q.limit);
        nav.push(format!(
            "<a rel=\"prev\" href=\"{}\">&larr; Previous hits</a>",
            esc(&format!("/search?offset={back}{keep}"))
        ));
    }
    if let Some(next) = page.next_offset {
        nav.push(format!(
            "<a rel=\"next\" href=\"{}\">More hits &rarr;</a>",
            esc(&format!("/search?offset={next}{keep}"))
        ));
    }
    html::pager(b, "Pages of hits", &nav);
}

/// The session's events and activity for the player, or `None` without an index.
pub fn session_events(app: &App, ctx: &Ctx, sid: &str) -> Option<(Vec<Hit>, Vec<ClipActivity>)> {
    let index = app.ctx.options.search.as_ref()?;
    match index.session_events(sid, may_see_keystrokes(ctx)) {
        Ok(found) => Some(found),
        Err(e) => {
            log::error!("event=search_failed session_id={sid} error={e}");
            None
        }
    }
}

/// Bins of the heatmap across the session.
const HEATMAP_BINS: usize = 200;

/// The activity heatmap: one strip on the session timeline's 0..1000 scale, each bin as dark
/// as its screen change (pixels) and key presses relative to the busiest bin.
pub fn heatmap_svg(b: &mut String, activity: &[ClipActivity], total_ms: u64) {
    let total_ms = total_ms.max(1);
    let mut bins = [0f64; HEATMAP_BINS];
    for a in activity {
        for (i, &(px, keys)) in a.seconds.iter().enumerate() {
            let ms = a.offset_ms + i as u64 * 1000;
            let bin = ((ms as f64 / total_ms as f64) * HEATMAP_BINS as f64) as usize;
            // A key press weighs like a changed 20x20 square: typing shows on a still screen.
            bins[bin.min(HEATMAP_BINS - 1)] += px as f64 + f64::from(keys) * 400.0;
        }
    }
    let max = bins.iter().copied().fold(0.0, f64::max);
    b.push_str(
        "<svg id=\"heatmap\" class=\"heatmap\" viewBox=\"0 0 1000 12\" preserveAspectRatio=\"none\" \
         role=\"img\" aria-label=\"Activity along the session: darker is busier\">",
    );
    if max > 0.0 {
        let w = 1000.0 / HEATMAP_BINS as f64;
        for (i, v) in bins.iter().enumerate().filter(|(_, v)| **v > 0.0) {
            let _ = write!(
                b,
                "<rect x=\"{:.2}\" y=\"0\" width=\"{:.2}\" height=\"12\" fill-opacity=\"{:.2}\"/>",
                i as f64 * w,
                w,
                (v / max).sqrt().max(0.08)
            );
        }
    }
    b.push_str("</svg>");
}

/// Styles of the event pane and heatmap (added to the player's).
pub const PANE_CSS: &str = "\
svg.heatmap{display:block;width:100%;height:12px;margin:.2rem 0;background:#f1f3f5}\
svg.heatmap rect{fill:#b3541e}.events-head{display:flex;gap:.5rem;align-items:center;\
flex-wrap:wrap}ol.eventlist{list-style:none;padding:0;margin:.4rem 0;max-height:45vh;\
overflow-y:auto}ol.eventlist li{padding:.3rem .4rem;border:1px solid transparent;\
border-radius:4px;font-size:.9rem}ol.eventlist li.current{border-color:#b3541e;\
background:#fff4ec}ol.eventlist a{text-decoration:none;color:inherit;display:block}\
ol.eventlist time{font-variant-numeric:tabular-nums;font-weight:600}\
ol.eventlist .kind{color:#444}ol.eventlist .snippet{display:block;white-space:pre-wrap;\
word-break:break-word;font-family:monospace}.hidden-text{color:#555;font-style:italic}";

/// The event pane: every event of the session in time order, a kind filter, each a link to
/// its second (`player.js` seeks in place and highlights the current one).
pub fn event_pane(app: &App, b: &mut String, sid: &str, events: &[Hit]) {
    let zone = &app.ctx.http.display_timezone;
    b.push_str(
        "<section id=\"events\" aria-labelledby=\"events-title\"><div class=\"events-head\">\
         <h2 id=\"events-title\">Events</h2><label for=\"event-kind\">Show</label>\
         <select id=\"event-kind\"><option value=\"\">All kinds</option>",
    );
    for k in EventKind::ALL {
        let _ = write!(
            b,
            "<option value=\"{}\">{}</option>",
            k.as_str(),
            kind_label(k.as_str())
        );
    }
    b.push_str("</select></div>");
    if events.is_empty() {
        b.push_str("<p>No events recorded for this session.</p></section>");
        return;
    }
    b.push_str("<ol class=\"eventlist\" id=\"eventlist\">");
    for e in events {
        let time = zone.datetime(e.at_ms);
        let time = time.rsplit(' ').next().unwrap_or(&time);
        let _ = write!(
            b,
            "<li data-offset-ms=\"{}\" data-kind=\"{}\"><a class=\"event-seek\" href=\"/play/{}?t={:.3}\">\
             <time datetime=\"{}\">{}</time> <span class=\"kind\">{}</span> &middot; {}{}</a></li>",
            e.offset_ms,
            attr(&e.kind),
            attr(sid),
            e.offset_ms as f64 / 1000.0,
            e.at_ms,
            esc(time),
            kind_label(&e.kind),
            esc(&e.summary),
            text_cell(e),
        );
    }
    b.push_str("</ol></section>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snippets_escape_everything_and_mark_the_match() {
        let s = Snippet {
            text: "<b>echo</b> findme & co".into(),
            highlights: vec![(12, 18)],
        };
        assert_eq!(
            snippet_html(&s),
            "&lt;b&gt;echo&lt;/b&gt; <mark>findme</mark> &amp; co"
        );
    }

    #[test]
    fn the_heatmap_darkens_busy_seconds() {
        let mut b = String::new();
        let a = ClipActivity {
            offset_ms: 0,
            seconds: vec![(0, 0), (10_000, 0), (0, 3)],
        };
        heatmap_svg(&mut b, &[a], 200_000);
        assert_eq!(b.matches("<rect").count(), 2);
        assert!(b.contains("fill-opacity=\"1.00\""));
    }
}
