//! The status page (HTML, auto-refresh), `/api/v1/status` (JSON), `/metrics` (Prometheus text)
//! and `/api/v1/admission`. All read one [`StatusSnapshot`] clone; none touches storage.
//!
//! Problems come first, in words: a broken setting, an unreachable bucket, a low or unknown
//! disk, a closed admission gate. Anonymous viewers get a redacted snapshot (no session ids,
//! store names or error texts).

use std::fmt::Write as _;

use serde::Serialize;

use super::ctx::{App, Ctx, Reply};
use super::html::{self, esc};
use crate::disk::DiskState;
use crate::status::StatusSnapshot;

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
    let mut s = app.ctx.board.snapshot();
    let now_ms = app.now_ms();
    let admission = (app.ctx.admission)();
    if redact {
        redact_snapshot(&mut s);
    }
    let problems = problems(&s, &admission);
    StatusDocument {
        now_ms,
        uptime_s: now_ms.saturating_sub(s.started_ms) / 1000,
        users_that_fit: s.disk.users_that_fit(),
        admission_open: admission.is_ok(),
        settings_valid: s.settings_problems.is_empty(),
        problems,
        redacted: redact,
        snapshot: s,
    }
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
    for e in &mut s.recent_errors {
        e.message = "(log in to see the message)".into();
    }
    s.tap.upstream = String::new();
    if s.tap.upstream_error.is_some() {
        s.tap.upstream_error = Some("(log in to see the error)".into());
    }
}

fn problems(s: &StatusSnapshot, admission: &Result<(), String>) -> Vec<String> {
    let mut p = Vec::new();
    for sp in &s.settings_problems {
        p.push(format!("Settings problem: {sp}"));
    }
    if !s.restart_pending.is_empty() {
        p.push(format!(
            "Restart pending for: {} (changed in the config file; applies when the service \
             restarts: systemctl restart session-recorder).",
            s.restart_pending.join(", ")
        ));
    }
    if s.uploads.reachable == Some(false) {
        let why = s.uploads.last_error.as_deref().unwrap_or("no details");
        let why = why.trim_start_matches('(').trim_end_matches(')');
        p.push(format!(
            "The object storage bucket is unreachable ({why}). Clips wait on local disk and \
             are uploaded when it is back."
        ));
    }
    if s.tap.upstream_reachable == Some(false) {
        let why = s.tap.upstream_error.as_deref().unwrap_or("no details");
        let why = why.trim_start_matches('(').trim_end_matches(')');
        let at = match s.tap.upstream.as_str() {
            "" => String::new(),
            addr => format!(" at {addr}"),
        };
        p.push(format!(
            "guacd (the remote desktop gateway){at} is unreachable ({why}). No session can \
             connect through the tap until it is back."
        ));
    }
    if let Some(ix) = &s.fleet.index {
        if ix.reachable == Some(false) {
            let why = ix.last_error.as_deref().unwrap_or("no details");
            p.push(format!(
                "The fleet bucket is unreachable ({why}). The history shows the last index."
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
            p.push(format!(
                "{skipped} document(s) in the manifest prefix were skipped ({}).",
                by.join(", ")
            ));
        }
    }
    let free = s
        .disk
        .free_bytes
        .map(html::bytes)
        .unwrap_or_else(|| "?".into());
    let floor = html::bytes(s.disk.floor_bytes);
    match s.disk.state {
        DiskState::Available => {}
        DiskState::Low => p.push(format!(
            "Disk space is low: {free} free, floor {floor}. New recorded sessions are refused."
        )),
        DiskState::Critical => p.push(format!(
            "Disk space is critical: {free} free, floor {floor}. Active recorded sessions are \
             being closed."
        )),
        DiskState::Unknown => {
            p.push("Free disk space cannot be measured. New recorded sessions are refused.".into())
        }
    }
    if let Err(reason) = admission {
        p.push(format!("New recorded sessions are refused: {reason}"));
    }
    p
}

/// `GET /status`.
pub fn page(app: &App, ctx: &Ctx) -> Reply {
    let doc = document(app, ctx.viewer.is_none());
    let s = &doc.snapshot;
    let mut b = String::new();
    if doc.problems.is_empty() {
        b.push_str("<div class=\"ok\">All good: settings valid, storage reachable, disk space available.</div>");
    }
    for p in &doc.problems {
        let _ = write!(b, "<div class=\"alert\" role=\"alert\">{}</div>", esc(p));
    }
    b.push_str("<div class=\"grid\">");
    let _ = write!(
        b,
        "<section class=\"card\"><h2>Service</h2><dl><dt>Version</dt><dd>{}</dd><dt>Uptime</dt>\
         <dd>{}</dd><dt>Live recorded sessions</dt><dd>{}</dd><dt>Admission</dt><dd>{}</dd></dl>\
         </section>",
        esc(&s.version),
        html::duration(doc.uptime_s * 1000),
        s.live_sessions,
        if doc.admission_open {
            "open"
        } else {
            "<span class=\"failed\">refusing</span>"
        }
    );
    let _ = write!(
        b,
        "<section class=\"card\"><h2>Disk</h2><dl><dt>State</dt><dd>{}</dd><dt>Free</dt><dd>{}</dd>\
         <dt>Floor</dt><dd>{}</dd><dt>More users that fit</dt><dd>{}</dd></dl></section>",
        disk_word(s.disk.state),
        s.disk
            .free_bytes
            .map(html::bytes)
            .unwrap_or_else(|| "unknown".into()),
        html::bytes(s.disk.floor_bytes),
        doc.users_that_fit
    );
    let reach = match s.uploads.reachable {
        Some(true) => "reachable".to_string(),
        Some(false) => "<span class=\"failed\">unreachable</span>".to_string(),
        None => "not contacted yet".to_string(),
    };
    let store = if s.uploads.store.is_empty() {
        String::new()
    } else {
        format!(
            "<dt>Store</dt><dd><code>{}</code></dd>",
            esc(&s.uploads.store)
        )
    };
    let oldest = s
        .uploads
        .oldest_waiting_ms
        .map(|t| format!("{} ago", html::duration(doc.now_ms.saturating_sub(t))))
        .unwrap_or_else(|| "none".into());
    let _ = write!(
        b,
        "<section class=\"card\"><h2>Uploads</h2><dl>{store}<dt>Storage</dt><dd>{reach}</dd>\
         <dt>Backlog</dt><dd>{} clips</dd><dt>Oldest waiting</dt><dd>{oldest}</dd><dt>Active</dt>\
         <dd>{}</dd></dl></section>",
        s.uploads.backlog, s.uploads.active
    );
    // ---- retention (issue 14) ----
    let r = &s.retention;
    let _ = write!(
        b,
        "<section class=\"card\"><h2>Retention</h2><dl><dt>Raw segments held</dt><dd>{} in {} \
         files</dd><dt>Raw segments deleted</dt><dd>{}</dd><dt>Sessions purged</dt><dd>{}</dd>\
         <dt>Audit entries purged</dt><dd>{}</dd></dl></section>",
        html::bytes(r.raw_segment_bytes),
        r.raw_segment_files,
        r.raw_segments_deleted,
        r.sessions_purged,
        r.audit_entries_purged
    );

    fleet_card(&mut b, s, doc.now_ms);
    b.push_str("<section class=\"card\"><h2>Queue</h2><dl>");
    if s.queue_counts.is_empty() {
        b.push_str("<dt>empty</dt><dd></dd>");
    }
    for (k, v) in &s.queue_counts {
        let _ = write!(b, "<dt>{}</dt><dd>{v}</dd>", esc(&k.replace('_', " ")));
    }
    b.push_str(
        "</dl></section></div><h2>Encoders</h2><div class=\"scroll\"><table><tr><th>#</th>\
                <th>Core</th><th>State</th><th>Job</th><th>Progress</th></tr>",
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
    b.push_str("</table></div><h2>Recent errors</h2>");
    if s.recent_errors.is_empty() {
        b.push_str("<p class=\"note\">None.</p>");
    } else {
        b.push_str("<div class=\"scroll\"><table><tr><th>Time (UTC)</th><th>Source</th><th>Message</th></tr>");
        for e in s.recent_errors.iter().rev() {
            let _ = write!(
                b,
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                html::datetime(e.at_ms),
                esc(&e.source),
                esc(&e.message)
            );
        }
        b.push_str("</table></div>");
    }
    let _ = write!(
        b,
        "<p class=\"note\">Updated {} UTC; refreshes every {} s. Machine-readable: \
         <a href=\"/api/v1/status\">/api/v1/status</a>, <a href=\"/metrics\">/metrics</a>.</p>",
        html::datetime(doc.now_ms),
        app.ctx.options.refresh_s
    );
    let nav = ctx.viewer.as_ref().map(|v| v.nav());
    Reply::html(
        200,
        html::page("Status", nav.as_ref(), Some(app.ctx.options.refresh_s), &b),
    )
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

/// `GET /metrics` (Prometheus text format 0.0.4). Numbers only: no names in labels but queue
/// states, disk states and encoder numbers.
pub fn metrics(app: &App) -> Reply {
    let d = document(app, true);
    let s = &d.snapshot;
    let mut m = String::with_capacity(2048);
    let mut g = |name: &str, help: &str, samples: &[(String, f64)]| {
        let _ = writeln!(m, "# HELP session_recorder_{name} {help}");
        let _ = writeln!(m, "# TYPE session_recorder_{name} gauge");
        for (labels, v) in samples {
            let _ = writeln!(m, "session_recorder_{name}{labels} {v}");
        }
    };
    let one = |v: f64| vec![(String::new(), v)];
    g(
        "info",
        "Version of the running program.",
        &[(format!("{{version=\"{}\"}}", label(&s.version)), 1.0)],
    );
    g(
        "uptime_seconds",
        "Seconds since start.",
        &one(d.uptime_s as f64),
    );
    if let Some(f) = s.disk.free_bytes {
        g(
            "disk_free_bytes",
            "Free bytes on the spool filesystem.",
            &one(f as f64),
        );
    }
    g(
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
    g("disk_state", "1 for the current disk state.", &disk);
    g(
        "users_that_fit",
        "More recorded users that fit above the floor.",
        &one(d.users_that_fit as f64),
    );
    let q: Vec<_> = s
        .queue_counts
        .iter()
        .map(|(k, v)| (format!("{{state=\"{}\"}}", label(k)), *v as f64))
        .collect();
    g("queue", "Queue records per state.", &q);
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
    g("encoder_busy", "1 when the encoder is busy.", &busy);
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
    g(
        "encoder_progress",
        "Fraction of the current job done.",
        &progress,
    );
    g(
        "upload_backlog",
        "Clips waiting to be uploaded.",
        &one(s.uploads.backlog as f64),
    );
    g(
        "upload_active",
        "Uploads in progress.",
        &one(s.uploads.active as f64),
    );
    if let Some(t) = s.uploads.oldest_waiting_ms {
        let age = d.now_ms.saturating_sub(t) as f64 / 1000.0;
        g(
            "upload_oldest_waiting_seconds",
            "Age of the oldest waiting clip.",
            &one(age),
        );
    }
    if let Some(r) = s.uploads.reachable {
        g(
            "store_reachable",
            "1 when the last contact with the store worked.",
            &one(f64::from(u8::from(r))),
        );
    }
    g(
        "settings_valid",
        "1 when the settings are valid.",
        &one(f64::from(u8::from(d.settings_valid))),
    );
    g(
        "admission_open",
        "1 when new recorded sessions are admitted.",
        &one(f64::from(u8::from(d.admission_open))),
    );
    g(
        "live_sessions",
        "Live recorded sessions.",
        &one(s.live_sessions as f64),
    );
    if let Some(r) = s.tap.upstream_reachable {
        g(
            "guacd_reachable",
            "1 when the last contact with guacd (probe or session) worked.",
            &one(f64::from(u8::from(r))),
        );
    }
    g(
        "unrecorded_sessions",
        "Sessions relayed now without recording.",
        &one(s.tap.unrecorded_live as f64),
    );
    g(
        "recent_errors",
        "Errors kept on the status board.",
        &one(s.recent_errors.len() as f64),
    );
    g(
        "http_streams_active",
        "Playbacks, downloads and zips being streamed now.",
        &one(app.streams.active() as f64),
    );
    g(
        "http_streams_max",
        "Streams allowed at once; more are answered 503.",
        &one(app.streams.max() as f64),
    );
    // ---- retention and HTTP limits (issue 14) ----
    let r = &s.retention;
    g(
        "raw_segment_bytes",
        "Bytes held by raw segments and their display states on disk.",
        &one(r.raw_segment_bytes as f64),
    );
    g(
        "raw_segment_files",
        "Raw segment and display state files on disk.",
        &one(r.raw_segment_files as f64),
    );
    g(
        "raw_segments_deleted",
        "Raw segments deleted since start (clips confirmed, retention passed).",
        &one(r.raw_segments_deleted as f64),
    );
    g(
        "history_sessions_purged",
        "Sessions purged from the history since start.",
        &one(r.sessions_purged as f64),
    );
    g(
        "audit_entries_purged",
        "Audit entries purged since start.",
        &one(r.audit_entries_purged as f64),
    );
    g(
        "http_logins_throttled",
        "Login attempts refused by the failed-login backoff since start.",
        &one(app.login_throttle.refused() as f64),
    );
    let _ = writeln!(
        m,
        "# HELP session_recorder_unrecorded_sessions_total Sessions relayed without recording \
         since the start.\n# TYPE session_recorder_unrecorded_sessions_total counter\n\
         session_recorder_unrecorded_sessions_total {}",
        s.tap.unrecorded_total
    );
    Reply::bytes(
        200,
        "text/plain; version=0.0.4; charset=utf-8",
        m.into_bytes(),
    )
}

fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
