//! The status page (HTML, auto-refresh), `/api/v1/status` (JSON), `/metrics` (Prometheus text)
//! and `/api/v1/admission`. All read one [`StatusSnapshot`] clone; none touches storage.
//!
//! Problems come first, in words: a broken setting, an unreachable bucket, a low or unknown
//! disk, a closed admission gate. Anonymous viewers get a redacted snapshot (no session ids,
//! store names or error texts).

use crate::clock::DisplayZone;
use std::fmt::Write as _;

use serde::Serialize;

use super::ctx::{App, Ctx, Reply};
use super::html::{self, esc};
use crate::disk::DiskState;
use crate::limits::{STATUS_TREND_SAMPLE_MS, STATUS_TREND_SAMPLES_MAX};
use crate::status::{StatusSnapshot, TrendPoint};

/// The JSON document of `/api/v1/status`: the snapshot plus derived fields.
#[derive(Debug, Serialize)]
pub struct StatusDocument {
    /// The (possibly redacted) snapshot.
    #[serde(flatten)]
    pub snapshot: StatusSnapshot,
    /// Now, ms since the epoch.
    pub now_ms: u64,
    /// Seconds since start.
    pub uptime_s: u64,
    /// More recorded users that fit on the disk.
    pub users_that_fit: u64,
    /// Whether a new recorded session would be admitted now.
    pub admission_open: bool,
    /// Whether the settings are valid.
    pub settings_valid: bool,
    /// Problems in words, most important first; empty when all is well.
    pub problems: Vec<String>,
    /// Whether details were removed (anonymous viewer).
    pub redacted: bool,
}

/// Builds the document for a viewer (redacted when `redact`).
pub fn document(app: &App, redact: bool) -> StatusDocument {
    document_and_problems(app, redact).0
}

/// The document and its problems with what to do about each.
fn document_and_problems(app: &App, redact: bool) -> (StatusDocument, Vec<Problem>) {
    let mut s = app.ctx.board.snapshot();
    let now_ms = app.now_ms();
    let admission = (app.ctx.admission)();
    if redact {
        redact_snapshot(&mut s);
    }
    let found = problems(&s, &admission);
    let problems = found.iter().map(Problem::text).collect();
    let doc = StatusDocument {
        now_ms,
        uptime_s: now_ms.saturating_sub(s.started_ms) / 1000,
        users_that_fit: s.disk.users_that_fit(),
        admission_open: admission.is_ok(),
        settings_valid: s.settings_problems.is_empty(),
        problems,
        redacted: redact,
        snapshot: s,
    };
    (doc, found)
}

/// Removes names an anonymous viewer must not see.
fn redact_snapshot(s: &mut StatusSnapshot) {
    for e in &mut s.encoders {
        if let Some(job) = &mut e.job {
            job.session_id = String::new();
        }
    }
    s.uploads.store = String::new();
    if let Some(ix) = &mut s.fleet.index {
        ix.location = String::new();
        if ix.last_error.is_some() {
            ix.last_error = Some("(log in to see the error)".into());
        }
    }
    if s.uploads.last_error.is_some() {
        s.uploads.last_error = Some("(log in to see the error)".into());
    }
    if s.manifests.last_error.is_some() {
        s.manifests.last_error = Some("(log in to see the error)".into());
    }
    for e in &mut s.recent_errors {
        e.message = "(log in to see the message)".into();
    }
    s.tap.upstream = String::new();
    if s.tap.upstream_error.is_some() {
        s.tap.upstream_error = Some("(log in to see the error)".into());
    }
}

/// A problem in `doctor`'s words: what is wrong, and what to do about it.
struct Problem {
    what: String,
    todo: String,
}

impl Problem {
    fn new(what: impl Into<String>, todo: impl Into<String>) -> Self {
        Self {
            what: what.into(),
            todo: todo.into(),
        }
    }

    /// One sentence for the JSON document and the command line.
    fn text(&self) -> String {
        format!("{} What to do: {}.", self.what, self.todo)
    }
}

fn problems(s: &StatusSnapshot, admission: &Result<(), String>) -> Vec<Problem> {
    let mut p = Vec::new();
    for sp in &s.settings_problems {
        p.push(Problem::new(
            format!("Settings problem: {sp}"),
            "fix the named setting in the config file (or on the Settings page); session-recorder \
             doctor checks the result",
        ));
    }
    if !s.restart_pending.is_empty() {
        p.push(Problem::new(
            format!(
                "Restart pending for: {} (changed in the config file; these apply only when the \
                 service restarts).",
                s.restart_pending.join(", ")
            ),
            "restart the service when no one is being recorded: systemctl restart \
             session-recorder",
        ));
    }
    if s.uploads.reachable == Some(false) {
        let why = s.uploads.last_error.as_deref().unwrap_or("no details");
        let why = why.trim_start_matches('(').trim_end_matches(')');
        p.push(Problem::new(
            format!(
                "The object storage bucket is unreachable ({why}). Clips wait on local disk and \
                 are uploaded when it is back."
            ),
            "check the endpoint in storage.upload-location, DNS, the firewall and that the \
             store is up; clips wait locally until retention-hours, then expire",
        ));
    }
    if s.tap.upstream_reachable == Some(false) {
        let why = s.tap.upstream_error.as_deref().unwrap_or("no details");
        let why = why.trim_start_matches('(').trim_end_matches(')');
        let at = match s.tap.upstream.as_str() {
            "" => String::new(),
            addr => format!(" at {addr}"),
        };
        p.push(Problem::new(
            format!(
                "guacd (the remote desktop gateway){at} is unreachable ({why}). No session can \
                 connect through the tap until it is back."
            ),
            format!(
                "start guacd listening on {} (systemctl start guacd), or set tap.upstream to \
                 where guacd listens",
                if s.tap.upstream.is_empty() {
                    "tap.upstream"
                } else {
                    &s.tap.upstream
                }
            ),
        ));
    }
    if let Some(ix) = &s.fleet.index {
        if ix.reachable == Some(false) {
            let why = ix.last_error.as_deref().unwrap_or("no details");
            p.push(Problem::new(
                format!(
                    "The fleet bucket is unreachable ({why}). The history shows the last index."
                ),
                "check fleet.index (bucket, endpoint, prefix) and the [storage] key and secret",
            ));
        }
        let skipped: u64 = ix.counts.skipped.values().sum();
        if skipped > 0 {
            let by: Vec<String> = ix
                .counts
                .skipped
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            p.push(Problem::new(
                format!(
                    "{skipped} document(s) in the manifest prefix were skipped ({}).",
                    by.join(", ")
                ),
                "remove documents that are not manifests from the manifest prefix, or upgrade \
                 this history role if they are of a newer version",
            ));
        }
    }
    let free = s
        .disk
        .free_bytes
        .map(html::bytes)
        .unwrap_or_else(|| "?".into());
    let floor = html::bytes(s.disk.floor_bytes);
    let free_up = format!(
        "make at least {floor} free on the data disk: delete old files, let the upload backlog \
         drain, or grow the disk; or lower disk-floor-mb"
    );
    match s.disk.state {
        DiskState::Available => {}
        DiskState::Low => p.push(Problem::new(
            format!(
                "Disk space is low: {free} free, floor {floor}. New recorded sessions are refused."
            ),
            free_up,
        )),
        DiskState::Critical => p.push(Problem::new(
            format!(
                "Disk space is critical: {free} free, floor {floor}. Active recorded sessions \
                 are being closed."
            ),
            free_up,
        )),
        DiskState::Unknown => p.push(Problem::new(
            "Free disk space cannot be measured. New recorded sessions are refused.",
            "check that the data directory exists and the filesystem is healthy (dmesg, \
             journalctl -k)",
        )),
    }
    if let Err(reason) = admission {
        let todo = if p.is_empty() {
            "run session-recorder doctor on the appliance: it names the cause and the fix"
        } else {
            "fix the problems above; sessions are admitted again by themselves once they are \
             gone"
        };
        p.push(Problem::new(
            format!("New recorded sessions are refused: {reason}"),
            todo,
        ));
    }
    p
}

/// `GET /status`: the headline first (all good, or what is wrong and what to do), then the
/// few figures field staff need, the last 24 h as charts, and the rest behind "Details".
///
/// The page does not reload itself unless asked: `?refresh=on` (a link on the page) reloads
/// it every `refresh_s` seconds, with "Stop auto-refresh" as the first link. A timed reload
/// the reader did not choose moves a screen reader back to the top and loses their place
/// (WCAG 2.2.1).
pub fn page(app: &App, ctx: &Ctx) -> Reply {
    let (doc, problems) = document_and_problems(app, ctx.viewer.is_none());
    let s = &doc.snapshot;
    let auto = ctx.q("refresh").is_some_and(|r| r == "on");
    let mut b = String::new();
    headline(&mut b, &problems, doc.admission_open);
    let refresh_s = app.ctx.options.refresh_s;
    let _ = write!(
        b,
        "<p class=\"note\" id=\"refresh\">Updated {} ({}). {}</p>",
        app.ctx.http.display_timezone.datetime(doc.now_ms),
        esc(app.ctx.http.display_timezone.name()),
        if auto {
            format!(
                "Refreshes every {refresh_s} s. <a href=\"/status\" id=\"stop-refresh\">Stop \
                 auto-refresh</a>"
            )
        } else {
            format!(
                "Reload for new figures, or <a href=\"/status?refresh=on\" \
                 id=\"auto-refresh\">refresh every {refresh_s} s</a>."
            )
        }
    );
    figures(&mut b, s, &doc);
    trends(&mut b, &app.ctx.board.trends(), s, doc.now_ms);
    recent_errors(&mut b, s, &app.ctx.http.display_timezone);
    b.push_str(
        "<details id=\"details\"><summary>Details for support</summary><div class=\"grid\">",
    );
    service_card(&mut b, s, &doc);
    fleet_card(&mut b, s, doc.now_ms);
    queue_card(&mut b, s);
    b.push_str("</div>");
    encoders_table(&mut b, s);
    b.push_str(
        "<p class=\"note\">Machine-readable: <a href=\"/api/v1/status\">/api/v1/status</a>, \
         <a href=\"/metrics\">/metrics</a>.</p></details>",
    );
    let nav = ctx.viewer.as_ref().map(|v| v.nav());
    Reply::html(
        200,
        html::page("Status", nav.as_ref(), auto.then_some(refresh_s), &b),
    )
}

fn headline(b: &mut String, problems: &[Problem], admission_open: bool) {
    if problems.is_empty() {
        b.push_str(
            "<div class=\"headline good\" id=\"headline\" role=\"status\"><strong>All good.\
             </strong> New sessions are recorded, clips are encoded and uploaded.</div>",
        );
        return;
    }
    let summary = if !admission_open {
        "Recording is blocked: new recorded sessions are refused.".to_string()
    } else if problems.len() == 1 {
        "Needs attention: 1 problem. Recording goes on.".to_string()
    } else {
        format!(
            "Needs attention: {} problems. Recording goes on.",
            problems.len()
        )
    };
    let _ = write!(
        b,
        "<div class=\"headline bad\" id=\"headline\"><strong>{}</strong></div>",
        esc(&summary)
    );
    for p in problems {
        let _ = write!(
            b,
            "<div class=\"alert\" role=\"alert\">{} <span class=\"todo\">What to do: {}.\
             </span></div>",
            esc(&p.what),
            esc(&p.todo)
        );
    }
}

/// The few figures that matter, as tiles.
fn figures(b: &mut String, s: &StatusSnapshot, doc: &StatusDocument) {
    b.push_str("<div class=\"figures\">");
    let mut tile = |id: &str, title: &str, value: &str, extra: &str| {
        let _ = write!(
            b,
            "<section class=\"card fig\" id=\"fig-{id}\" aria-labelledby=\"fig-{id}-t\"><h2 \
             id=\"fig-{id}-t\">{title}</h2><p class=\"big\">{value}</p><p class=\"note\">{extra}\
             </p></section>"
        );
    };
    let unrecorded = if s.tap.unrecorded_live > 0 {
        format!("{} more relayed without recording", s.tap.unrecorded_live)
    } else {
        "recorded through the tap".to_string()
    };
    tile(
        "live",
        "Live sessions",
        &s.live_sessions.to_string(),
        &unrecorded,
    );
    if doc.admission_open {
        tile(
            "admission",
            "New sessions",
            "admitted",
            "new recorded sessions start",
        );
    } else {
        tile(
            "admission",
            "New sessions",
            "<span class=\"failed\">refused</span>",
            "see the problems above",
        );
    }
    let since = |t: Option<u64>| {
        t.map(|t| format!("for {}", html::duration(doc.now_ms.saturating_sub(t))))
            .unwrap_or_default()
    };
    let guacd = match s.tap.upstream_reachable {
        Some(true) => ("reachable".to_string(), since(s.tap.upstream_since_ms)),
        Some(false) => (
            "<span class=\"failed\">unreachable</span>".to_string(),
            since(s.tap.upstream_since_ms),
        ),
        None => ("unknown".to_string(), "not contacted yet".to_string()),
    };
    tile("guacd", "guacd", &guacd.0, &guacd.1);
    let free = s
        .disk
        .free_bytes
        .map(html::bytes)
        .unwrap_or_else(|| "unknown".into());
    tile(
        "disk",
        "Free disk",
        &free,
        &format!(
            "{}; floor {}; room for about {} more recorded users",
            disk_word(s.disk.state),
            html::bytes(s.disk.floor_bytes),
            doc.users_that_fit
        ),
    );
    let oldest = s
        .uploads
        .oldest_waiting_ms
        .map(|t| {
            format!(
                "oldest waiting {}",
                html::duration(doc.now_ms.saturating_sub(t))
            )
        })
        .unwrap_or_else(|| "nothing waiting".into());
    let storage = match s.uploads.reachable {
        Some(true) => "storage reachable",
        Some(false) => "<span class=\"failed\">storage unreachable</span>",
        None => "storage not contacted yet",
    };
    tile(
        "backlog",
        "Upload backlog",
        &format!("{} clips", s.uploads.backlog),
        &format!("{oldest}; {storage}"),
    );
    let busy = s.encoders.iter().filter(|e| e.job.is_some()).count();
    tile(
        "encoders",
        "Encoders",
        &format!("{busy} of {} busy", s.encoders.len()),
        &format!(
            "{} segments waiting",
            s.queue_counts.get("segments_sealed").copied().unwrap_or(0)
        ),
    );
    b.push_str("</div>");
}

/// The last 24 h as four small inline SVG bar charts (no script, nothing fetched).
fn trends(b: &mut String, points: &[TrendPoint], s: &StatusSnapshot, now_ms: u64) {
    b.push_str("<h2>Last 24 hours</h2><div class=\"grid trends\">");
    let floor = s.disk.floor_bytes as f64;
    chart(
        b,
        &Chart {
            id: "disk",
            title: "Free disk (lowest per 5 min)",
            reference: Some((floor, "floor")),
            high_is_bad: false,
            fmt: &|v| html::bytes(v as u64),
        },
        points,
        now_ms,
        &|p| p.disk_free_bytes_min.map(|v| v as f64),
    );
    chart(
        b,
        &Chart {
            id: "backlog",
            title: "Upload backlog (clips waiting, highest per 5 min)",
            reference: None,
            high_is_bad: true,
            fmt: &|v| format!("{v:.0}"),
        },
        points,
        now_ms,
        &|p| Some(p.backlog_max as f64),
    );
    chart(
        b,
        &Chart {
            id: "live",
            title: "Live recorded sessions (highest per 5 min)",
            reference: None,
            high_is_bad: true,
            fmt: &|v| format!("{v:.0}"),
        },
        points,
        now_ms,
        &|p| Some(p.live_sessions_max as f64),
    );
    chart(
        b,
        &Chart {
            id: "speed",
            title: "Encoding speed (times real time; below 1 falls behind)",
            reference: Some((1.0, "real time")),
            high_is_bad: false,
            fmt: &|v| format!("{v:.1}\u{d7}"),
        },
        points,
        now_ms,
        &TrendPoint::encode_speed,
    );
    b.push_str("</div>");
}

/// How one trend chart is drawn and worded.
struct Chart<'a> {
    id: &'a str,
    title: &'a str,
    /// A line across the chart (the disk floor, real time) and its name.
    reference: Option<(f64, &'a str)>,
    /// Whether the 24 h figure worth naming is the highest (backlog) or the lowest (disk).
    high_is_bad: bool,
    fmt: &'a dyn Fn(f64) -> String,
}

/// Chart width in SVG units: one unit per trend point.
const CHART_W: u64 = STATUS_TREND_SAMPLES_MAX as u64;
/// Chart height in SVG units (and pixels).
const CHART_H: f64 = 60.0;

fn chart(
    b: &mut String,
    c: &Chart<'_>,
    points: &[TrendPoint],
    now_ms: u64,
    value: &dyn Fn(&TrendPoint) -> Option<f64>,
) {
    // Aligned on the periods: the running one is the last column, 24 h back the first.
    let start_ms = (now_ms - now_ms % STATUS_TREND_SAMPLE_MS)
        .saturating_sub(STATUS_TREND_SAMPLE_MS * (CHART_W - 1));
    let values: Vec<(u64, f64)> = points
        .iter()
        .filter(|p| p.at_ms >= start_ms)
        .filter_map(|p| {
            let x = (p.at_ms - start_ms) / STATUS_TREND_SAMPLE_MS;
            Some((x.min(CHART_W - 1), value(p)?))
        })
        .collect();
    let max = values
        .iter()
        .map(|(_, v)| *v)
        .chain(c.reference.map(|(r, _)| r))
        .fold(0.0_f64, f64::max)
        .max(1e-9)
        * 1.1;
    let y = |v: f64| CHART_H - (v / max * CHART_H).clamp(0.0, CHART_H);
    let mut d = String::new();
    for (x, v) in &values {
        let _ = write!(d, "M{x}.5 {CHART_H}V{:.1}", y(*v));
    }
    let summary = match values.last() {
        Some((_, last)) => {
            let worst = values.iter().map(|(_, v)| *v);
            let (word, w) = if c.high_is_bad {
                ("high", worst.fold(f64::MIN, f64::max))
            } else {
                ("low", worst.fold(f64::MAX, f64::min))
            };
            format!("latest {}, 24 h {word} {}", (c.fmt)(*last), (c.fmt)(w))
        }
        None => "no data yet".to_string(),
    };
    let reference = c
        .reference
        .map(|(r, _)| format!("<path d=\"M0 {:.1}H{CHART_W}\" class=\"ref\"/>", y(r)))
        .unwrap_or_default();
    let ref_note = c
        .reference
        .map(|(r, name)| format!("; dashed line: {name} ({})", (c.fmt)(r)))
        .unwrap_or_default();
    let label = format!("{}: {summary}{ref_note}", c.title);
    let _ = write!(
        b,
        "<figure class=\"card trend\" id=\"trend-{id}\"><figcaption><strong>{title}</strong>\
         <br><span class=\"note\">{summary}{ref_note}</span></figcaption><svg viewBox=\"0 0 \
         {CHART_W} {CHART_H}\" preserveAspectRatio=\"none\" width=\"100%\" height=\"{CHART_H}\" \
         role=\"img\" aria-label=\"{label}\"><title>{label}</title><path d=\"M0 {CHART_H}H\
         {CHART_W}\" class=\"axis\"/><path d=\"{d}\" class=\"bars\"/>{reference}</svg><div \
         class=\"axis-labels\" aria-hidden=\"true\"><span>24 h ago</span><span>now</span></div>\
         </figure>",
        id = c.id,
        title = esc(c.title),
        summary = esc(&summary),
        ref_note = esc(&ref_note),
        label = esc(&label),
    );
}

fn recent_errors(b: &mut String, s: &StatusSnapshot, zone: &DisplayZone) {
    b.push_str("<h2>Recent errors</h2>");
    if s.recent_errors.is_empty() {
        b.push_str("<p class=\"note\">None.</p>");
        return;
    }
    let _ = write!(
        b,
        "<div class=\"scroll\" tabindex=\"0\" role=\"region\" aria-label=\"Recent errors\"><table \
         id=\"errors\"><tr><th>Time ({})</th><th>Source</th><th>Message</th></tr>",
        esc(zone.name())
    );
    for e in s.recent_errors.iter().rev() {
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            zone.datetime(e.at_ms),
            esc(&e.source),
            esc(&e.message)
        );
    }
    b.push_str("</table></div>");
}

fn service_card(b: &mut String, s: &StatusSnapshot, doc: &StatusDocument) {
    let store = if s.uploads.store.is_empty() {
        String::new()
    } else {
        format!(
            "<dt>Store</dt><dd><code>{}</code></dd>",
            esc(&s.uploads.store)
        )
    };
    let r = &s.retention;
    let m = &s.manifests;
    let manifest_error = m
        .last_error
        .as_deref()
        .map(|e| format!(" <span class=\"failed\">(last error: {})</span>", esc(e)))
        .unwrap_or_default();
    // The walk that measures raw segments stops at a bound: then the figures are a floor.
    let at_least = if r.raw_segment_count_truncated {
        "at least "
    } else {
        ""
    };
    let _ = write!(
        b,
        "<section class=\"card\"><h2>Service</h2><dl><dt>Version</dt><dd>{}</dd><dt>Uptime</dt>\
         <dd>{}</dd>{store}<dt>Uploads active</dt><dd>{}</dd><dt>Uploaded since start</dt>\
         <dd>{} clips, {}</dd><dt>Manifests owed</dt><dd>{} sessions{manifest_error}</dd>\
         <dt>Raw segments held</dt><dd>{at_least}{} in {} files</dd><dt>Raw segments deleted</dt>\
         <dd>{}</dd><dt>Sessions purged</dt><dd>{}</dd><dt>Audit entries purged</dt><dd>{}</dd>\
         {}</dl></section>",
        esc(&s.version),
        html::duration(doc.uptime_s * 1000),
        s.uploads.active,
        s.uploads.uploaded_clips,
        html::bytes(s.uploads.uploaded_bytes),
        m.owed,
        html::bytes(r.raw_segment_bytes),
        r.raw_segment_files,
        r.raw_segments_deleted,
        r.sessions_purged,
        r.audit_entries_purged,
        search_facts(&s.search) + &ocr_facts(&s.ocr)
    );
}

/// The OCR job's line of the Service card (nothing while `search.ocr` is off): its backlog,
/// and why it is paused (Tesseract missing or failing) when it is.
fn ocr_facts(f: &crate::status::OcrFacts) -> String {
    if !f.enabled {
        return String::new();
    }
    let paused = match &f.paused {
        Some(why) => format!("; paused: {}", esc(why)),
        None => String::new(),
    };
    format!(
        "<dt>Screen text (OCR)</dt><dd id=\"ocr\">{} clips waiting, {} to upload, {} in the \
         bucket, {} given up{paused}</dd>",
        f.pending, f.read, f.uploaded, f.failed
    )
}

/// The search index's line of the Service card (nothing without an index).
fn search_facts(f: &crate::status::SearchFacts) -> String {
    if !f.enabled {
        return String::new();
    }
    format!(
        "<dt>Search index</dt><dd id=\"search-index\">{} events in {} clips; {} events objects \
         skipped (corrupt or not as signed)</dd>",
        f.events, f.clips, f.events_objects_skipped
    )
}

fn queue_card(b: &mut String, s: &StatusSnapshot) {
    b.push_str("<section class=\"card\" id=\"queue\"><h2>Queue</h2><dl>");
    if s.queue_counts.is_empty() {
        b.push_str("<dt>empty</dt><dd></dd>");
    }
    for (k, v) in &s.queue_counts {
        let _ = write!(b, "<dt>{}</dt><dd>{v}</dd>", esc(&k.replace('_', " ")));
    }
    b.push_str("</dl></section>");
}

fn encoders_table(b: &mut String, s: &StatusSnapshot) {
    b.push_str(
        "<h2>Encoders</h2><div class=\"scroll\" tabindex=\"0\" role=\"region\" \
         aria-label=\"Encoders\"><table><tr><th>#</th><th>Core</th><th>State</th><th>Job</th>\
         <th>Progress</th></tr>",
    );
    for (i, e) in s.encoders.iter().enumerate() {
        let core = e.core.map(|c| c.to_string()).unwrap_or_else(|| "-".into());
        match &e.job {
            Some(j) => {
                let what = if j.session_id.is_empty() {
                    format!("segment {}", j.segment_index)
                } else {
                    format!("{} segment {}", esc(&j.session_id), j.segment_index)
                };
                let _ = write!(
                    b,
                    "<tr><td>{i}</td><td>{core}</td><td class=\"busy\">busy</td><td>{what}</td>\
                     <td>{:.0} %</td></tr>",
                    (j.progress * 100.0).clamp(0.0, 100.0)
                );
            }
            None => {
                let _ = write!(
                    b,
                    "<tr><td>{i}</td><td>{core}</td><td>idle</td><td></td><td></td></tr>"
                );
            }
        }
    }
    b.push_str("</table></div>");
}

/// The fleet card: this appliance's signing key, and the history role's index.
fn fleet_card(b: &mut String, s: &StatusSnapshot, now_ms: u64) {
    let f = &s.fleet;
    if f.signing_public_key.is_none() && f.index.is_none() {
        return;
    }
    b.push_str("<section class=\"card\" id=\"fleet\"><h2>Fleet history</h2><dl>");
    if let Some(k) = &f.signing_public_key {
        let _ = write!(
            b,
            "<dt>Manifest signing key</dt><dd><code id=\"signing-key\">{}</code></dd>",
            esc(k)
        );
    }
    if let Some(ix) = &f.index {
        let reach = match ix.reachable {
            Some(true) => "reachable".to_string(),
            Some(false) => {
                "<span class=\"failed\">unreachable (serving the last index)</span>".to_string()
            }
            None => "not polled yet".to_string(),
        };
        let last = ix
            .last_poll_ms
            .map(|t| format!("{} ago", html::duration(now_ms.saturating_sub(t))))
            .unwrap_or_else(|| "never".into());
        let skipped = if ix.counts.skipped.is_empty() {
            "none".to_string()
        } else {
            ix.counts
                .skipped
                .iter()
                .map(|(k, v)| format!("{}: {v}", esc(k)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = write!(
            b,
            "<dt>Index</dt><dd><code>{}</code></dd><dt>Bucket</dt><dd>{reach}</dd>\
             <dt>Last poll</dt><dd>{last} ({} requests, {} ms)</dd><dt>Sessions</dt><dd>{}</dd>\
             <dt>Appliances</dt><dd>{}</dd><dt>Integrity failed</dt><dd>{}</dd>\
             <dt>Clips gone</dt><dd>{}</dd><dt>Clips hashed</dt><dd>{} match, {} differ</dd>\
             <dt>Skipped documents</dt><dd id=\"fleet-skipped\">{skipped}</dd>\
             <dt>Trusted keys</dt><dd>{}</dd>",
            esc(&ix.location),
            ix.last_poll_requests,
            ix.last_poll_duration_ms,
            ix.counts.sessions,
            ix.counts.appliances,
            ix.counts.integrity_failed,
            ix.counts.clips_gone,
            ix.counts.clips_verified,
            ix.counts.clips_bytes_failed,
            ix.trusted_keys.len()
        );
    }
    b.push_str("</dl></section>");
}

fn disk_word(s: DiskState) -> &'static str {
    match s {
        DiskState::Available => "available",
        DiskState::Low => "<span class=\"failed\">low</span>",
        DiskState::Critical => "<span class=\"failed\">critical</span>",
        DiskState::Unknown => "<span class=\"failed\">unknown</span>",
    }
}

/// `GET /api/v1/status`.
pub fn json(app: &App, ctx: &Ctx) -> Reply {
    Reply::json(200, &document(app, ctx.viewer.is_none()))
}

/// `GET /api/v1/admission`: 200, or 503 with the reason.
pub fn admission(app: &App) -> Reply {
    match (app.ctx.admission)() {
        Ok(()) => Reply::json(200, &serde_json::json!({ "admitted": true })),
        Err(reason) => Reply::json(
            503,
            &serde_json::json!({ "admitted": false, "reason": reason }),
        ),
    }
}

/// How a metric behaves: a gauge goes up and down; a counter only counts up from the start
/// and its name ends in `_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MetricKind {
    Gauge,
    Counter,
}

impl MetricKind {
    fn name(self) -> &'static str {
        match self {
            Self::Gauge => "gauge",
            Self::Counter => "counter",
        }
    }
}

/// One row of the metrics table: name (after `session_recorder_`), help, kind and samples
/// (label set, value). A metric without samples is not exported.
struct Metric {
    name: &'static str,
    help: &'static str,
    kind: MetricKind,
    samples: Vec<(String, f64)>,
}

/// The metrics table, in the order `/metrics` lists it.
#[derive(Default)]
struct MetricTable(Vec<Metric>);

impl MetricTable {
    fn gauge(&mut self, name: &'static str, help: &'static str, samples: &[(String, f64)]) {
        self.push(name, help, MetricKind::Gauge, samples);
    }

    fn counter(&mut self, name: &'static str, help: &'static str, samples: &[(String, f64)]) {
        self.push(name, help, MetricKind::Counter, samples);
    }

    fn push(
        &mut self,
        name: &'static str,
        help: &'static str,
        kind: MetricKind,
        samples: &[(String, f64)],
    ) {
        assert!(
            name.ends_with("_total") == (kind == MetricKind::Counter),
            "metric {name}: counters, and only counters, end in _total"
        );
        self.0.push(Metric {
            name,
            help,
            kind,
            samples: samples.to_vec(),
        });
    }

    /// Prometheus text format 0.0.4.
    fn render(&self) -> String {
        let mut m = String::with_capacity(2048);
        for metric in self.0.iter().filter(|metric| !metric.samples.is_empty()) {
            let Metric {
                name, help, kind, ..
            } = metric;
            let _ = writeln!(m, "# HELP session_recorder_{name} {help}");
            let _ = writeln!(m, "# TYPE session_recorder_{name} {}", kind.name());
            for (labels, v) in &metric.samples {
                let _ = writeln!(m, "session_recorder_{name}{labels} {v}");
            }
        }
        m
    }
}

/// `GET /metrics` (Prometheus text format 0.0.4). Numbers only: no names in labels but queue
/// states, disk states and encoder numbers.
pub fn metrics(app: &App) -> Reply {
    let d = document(app, true);
    let s = &d.snapshot;
    let mut t = MetricTable::default();
    let one = |v: f64| vec![(String::new(), v)];
    t.gauge(
        "info",
        "Version of the running program.",
        &[(format!("{{version=\"{}\"}}", label(&s.version)), 1.0)],
    );
    t.gauge(
        "uptime_seconds",
        "Seconds since start.",
        &one(d.uptime_s as f64),
    );
    if let Some(f) = s.disk.free_bytes {
        t.gauge(
            "disk_free_bytes",
            "Free bytes on the spool filesystem.",
            &one(f as f64),
        );
    }
    t.gauge(
        "disk_floor_bytes",
        "Configured disk floor.",
        &one(s.disk.floor_bytes as f64),
    );
    let states = [
        DiskState::Available,
        DiskState::Low,
        DiskState::Critical,
        DiskState::Unknown,
    ];
    let disk: Vec<_> = states
        .iter()
        .map(|st| {
            let name = format!("{st:?}").to_lowercase();
            (
                format!("{{state=\"{name}\"}}"),
                f64::from(u8::from(*st == s.disk.state)),
            )
        })
        .collect();
    t.gauge("disk_state", "1 for the current disk state.", &disk);
    t.gauge(
        "users_that_fit",
        "More recorded users that fit above the floor.",
        &one(d.users_that_fit as f64),
    );
    let q: Vec<_> = s
        .queue_counts
        .iter()
        .map(|(k, v)| (format!("{{state=\"{}\"}}", label(k)), *v as f64))
        .collect();
    t.gauge("queue", "Queue records per state.", &q);
    let busy: Vec<_> = s
        .encoders
        .iter()
        .enumerate()
        .map(|(i, e)| {
            (
                format!("{{encoder=\"{i}\"}}"),
                f64::from(u8::from(e.job.is_some())),
            )
        })
        .collect();
    t.gauge("encoder_busy", "1 when the encoder is busy.", &busy);
    let progress: Vec<_> = s
        .encoders
        .iter()
        .enumerate()
        .filter_map(|(i, e)| {
            Some((
                format!("{{encoder=\"{i}\"}}"),
                f64::from(e.job.as_ref()?.progress),
            ))
        })
        .collect();
    t.gauge(
        "encoder_progress",
        "Fraction of the current job done.",
        &progress,
    );
    t.gauge(
        "upload_backlog",
        "Clips waiting to be uploaded.",
        &one(s.uploads.backlog as f64),
    );
    t.gauge(
        "upload_active",
        "Uploads in progress.",
        &one(s.uploads.active as f64),
    );
    if let Some(since_ms) = s.uploads.oldest_waiting_ms {
        let age = d.now_ms.saturating_sub(since_ms) as f64 / 1000.0;
        t.gauge(
            "upload_oldest_waiting_seconds",
            "Age of the oldest waiting clip.",
            &one(age),
        );
    }
    if let Some(r) = s.uploads.reachable {
        t.gauge(
            "store_reachable",
            "1 when the last contact with the store worked.",
            &one(f64::from(u8::from(r))),
        );
    }
    t.gauge(
        "settings_valid",
        "1 when the settings are valid.",
        &one(f64::from(u8::from(d.settings_valid))),
    );
    t.gauge(
        "admission_open",
        "1 when new recorded sessions are admitted.",
        &one(f64::from(u8::from(d.admission_open))),
    );
    t.gauge(
        "live_sessions",
        "Live recorded sessions.",
        &one(s.live_sessions as f64),
    );
    if let Some(r) = s.tap.upstream_reachable {
        t.gauge(
            "guacd_reachable",
            "1 when the last contact with guacd (probe or session) worked.",
            &one(f64::from(u8::from(r))),
        );
    }
    t.gauge(
        "unrecorded_sessions",
        "Sessions relayed now without recording.",
        &one(s.tap.unrecorded_live as f64),
    );
    t.gauge(
        "recent_errors",
        "Errors kept on the status board.",
        &one(s.recent_errors.len() as f64),
    );
    t.gauge(
        "http_streams_active",
        "Playbacks, downloads and zips being streamed now.",
        &one(app.streams.active() as f64),
    );
    t.gauge(
        "http_streams_max",
        "Streams allowed at once; more are answered 503.",
        &one(app.streams.max() as f64),
    );
    // ---- retention and HTTP limits ----
    let r = &s.retention;
    t.gauge(
        "raw_segment_bytes",
        "Bytes held by raw segments and their display states on disk, segments being written \
         included (their buffered bytes too).",
        &one(r.raw_segment_bytes as f64),
    );
    t.gauge(
        "raw_segment_files",
        "Raw segment and display state files on disk.",
        &one(r.raw_segment_files as f64),
    );
    t.counter(
        "raw_segments_deleted_total",
        "Raw segments deleted since start (clips confirmed, retention passed).",
        &one(r.raw_segments_deleted as f64),
    );
    t.counter(
        "history_sessions_purged_total",
        "Sessions purged from the history since start.",
        &one(r.sessions_purged as f64),
    );
    t.counter(
        "audit_entries_purged_total",
        "Audit entries purged since start.",
        &one(r.audit_entries_purged as f64),
    );
    t.counter(
        "http_logins_throttled_total",
        "Login attempts refused by the failed-login backoff since start.",
        &one(app.login_throttle.refused() as f64),
    );
    t.counter(
        "unrecorded_sessions_total",
        "Sessions relayed without recording since the start.",
        &one(s.tap.unrecorded_total as f64),
    );
    Reply::bytes(
        200,
        "text/plain; version=0.0.4; charset=utf-8",
        t.render().into_bytes(),
    )
}

fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn speed_chart(points: &[TrendPoint], now_ms: u64) -> String {
        let mut b = String::new();
        chart(
            &mut b,
            &Chart {
                id: "speed",
                title: "Encoding speed",
                reference: Some((1.0, "real time")),
                high_is_bad: false,
                fmt: &|v| format!("{v:.1}x"),
            },
            points,
            now_ms,
            &TrendPoint::encode_speed,
        );
        b
    }

    #[test]
    fn charts_place_points_by_time_and_say_what_they_show() {
        let now_ms = STATUS_TREND_SAMPLE_MS * 10_000;
        let point = |ago: u64, media: u64| TrendPoint {
            at_ms: now_ms - ago * STATUS_TREND_SAMPLE_MS,
            encoded_media_ms: media,
            encode_busy_ms: 1000,
            ..TrendPoint::default()
        };
        let b = speed_chart(
            &[point(287, 4000), point(1, 2000), point(0, 500)],
            now_ms + 7,
        );
        // The oldest point is at the left edge, the running one at the right.
        assert!(b.contains("M0.5 60V"), "{b}");
        assert!(b.contains("M286.5 60V"), "{b}");
        assert!(b.contains("M287.5 60V"), "{b}");
        assert!(
            b.contains("latest 0.5x, 24 h low 0.5x; dashed line: real time (1.0x)"),
            "{b}"
        );
        assert!(
            b.contains("role=\"img\" aria-label=\"Encoding speed: latest 0.5x"),
            "{b}"
        );
        assert!(b.contains("class=\"ref\""), "{b}");
        // Nothing encoded: no bars, and the words say so.
        let empty = speed_chart(&[], now_ms);
        assert!(empty.contains("no data yet"), "{empty}");
        assert!(empty.contains("class=\"bars\""), "{empty}");
    }
}
