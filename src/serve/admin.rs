//! Login and logout, and the admin pages: audit log and settings (users and API tokens are in
//! `users.rs`).
//!
//! The settings page edits the config file itself (the one source of truth): the changed
//! fields only, comments kept ([`crate::config_edit`]), after the whole result passes every
//! stage's validation and the storage answers a probe; then the daemon applies it through
//! [`super::SettingsHooks`]. A refusal keeps the typed values and marks the field it names.

use std::fmt::Write as _;

use super::auth::{self, Permissions};
use super::backend::{AuditKind, AuditQuery, NewAuditRow};
use super::ctx::{App, Ctx, LOGIN_COOKIE, Reply, SESSION_COOKIE, Via, csrf_field, error_page_with};
use super::html::{self, esc};
use crate::config::RawConfig;
use crate::limits::HTTP_PAGE_ROWS_MAX;
use crate::secret::Secret;

/// `GET /login` (and the 401 page): the form, with a fresh pre-login CSRF cookie.
pub fn login_form(app: &App, ctx: &Ctx, status: u16, message: Option<&str>) -> Reply {
    let Ok(pre) = auth::random_token() else {
        return Reply::text(500, "Internal Server Error");
    };
    let next = ctx.q("next").filter(|n| safe_next(n)).unwrap_or_else(|| {
        if status == 401 {
            let path: Vec<_> = ctx.segments.iter().map(|s| html::url_encode(s)).collect();
            format!("/{}", path.join("/"))
        } else {
            "/sessions".into()
        }
    });
    let mut b = String::new();
    if let Some(m) = message {
        let _ = write!(b, "<div class=\"alert\">{}</div>", esc(m));
    }
    let _ = write!(
        b,
        "<form method=\"post\" action=\"/login\" class=\"card\" style=\"max-width:380px\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\"><input type=\"hidden\" name=\"next\" \
         value=\"{}\"><label for=\"user\">User</label><input id=\"user\" name=\"user\" \
         autocomplete=\"username\" required style=\"width:100%\"><label for=\"password\">Password\
         </label><input id=\"password\" name=\"password\" type=\"password\" \
         autocomplete=\"current-password\" required style=\"width:100%\"><p><button \
         type=\"submit\" id=\"login\">Log in</button></p></form>",
        esc(&auth::csrf_for(&pre)),
        esc(&next)
    );
    Reply::html(status, html::page("Log in", None, None, &b))
        .with("Set-Cookie", app.cookie(LOGIN_COOKIE, &pre, "/login", 3600))
}

fn safe_next(n: &str) -> bool {
    n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') && n != "/login"
}

/// `POST /login`.
pub fn login(app: &App, ctx: &Ctx) -> Reply {
    let form = ctx.form();
    let pre = ctx.cookie(LOGIN_COOKIE).unwrap_or_default();
    let sent = form.get("csrf").map(String::as_str).unwrap_or("");
    if pre.is_empty() || !auth::constant_time_eq(sent, &auth::csrf_for(&pre)) {
        log::warn!("event=csrf_rejected route=login peer={}", ctx.peer);
        return Reply::text(
            403,
            "Forbidden: missing or wrong CSRF token (reload the login page)",
        );
    }
    let user = form.get("user").map(|s| s.trim()).unwrap_or("");
    let password = form.get("password").map(String::as_str).unwrap_or("");
    // Backoff first: a blocked user name or address costs no password check.
    if let Err(r) = app.login_throttle.check(user, &ctx.peer, app.now_ms()) {
        return throttled(app, ctx, user, &r);
    }
    let found = match app.ctx.backend.accounts.user(user) {
        Ok(u) => u,
        Err(e) => return app.storage_error(&e),
    };
    let hash = found
        .as_ref()
        .map_or(app.dummy_hash(), |u| u.password_hash.as_str());
    let ok = auth::verify_password(password, hash) && found.is_some();
    if !ok {
        log::warn!("event=login_failed user={user:?} peer={}", ctx.peer);
        let blocked = app.login_throttle.failed(user, &ctx.peer, app.now_ms());
        let backoff = blocked.map_or(String::new(), |until| {
            format!(
                "; further logins for user {user} or from {} refused for {} s",
                ctx.peer,
                until.saturating_sub(app.now_ms()).div_ceil(1000)
            )
        });
        app.audit(NewAuditRow {
            actor: "anonymous".into(),
            kind: AuditKind::LoginFailed,
            session_id: None,
            message: format!("Failed login for user {user} from {}{backoff}", ctx.peer),
        });
        return login_form(app, ctx, 401, Some("Wrong user name or password."));
    }
    app.login_throttle.succeeded(user, &ctx.peer);
    let cookie = match app.new_login(user) {
        Ok(c) => c,
        Err(r) => return r,
    };
    app.audit(NewAuditRow {
        actor: user.to_string(),
        kind: AuditKind::Login,
        session_id: None,
        message: format!("User {user} logged in from {}", ctx.peer),
    });
    let next = form
        .get("next")
        .filter(|n| safe_next(n))
        .cloned()
        .unwrap_or_else(|| "/sessions".into());
    // The default landing page is the session list; who may not list sessions lands on the
    // status page instead of a refusal.
    let may_list = found
        .as_ref()
        .is_some_and(|u| Permissions(u.permissions).allows(Permissions::SESSIONS_VIEW));
    let next = if next == "/sessions" && !may_list {
        "/status".to_string()
    } else {
        next
    };
    Reply::redirect(&next)
        .with("Set-Cookie", cookie)
        .with("Set-Cookie", app.cookie(LOGIN_COOKIE, "", "/login", 0))
}

/// The answer to a login refused by the backoff: 429 with `Retry-After`; the first refusal of
/// each block is audited.
fn throttled(app: &App, ctx: &Ctx, user: &str, r: &super::throttle::Refusal) -> Reply {
    let wait_s = r
        .until_ms
        .saturating_sub(app.now_ms())
        .div_ceil(1000)
        .max(1);
    log::warn!(
        "event=login_throttled user={user:?} peer={} by={} failures={} retry_after_s={wait_s}",
        ctx.peer,
        r.by,
        r.failures
    );
    if r.audit {
        let what = if r.by == "user" {
            format!("user {user}")
        } else {
            format!("address {}", ctx.peer)
        };
        app.audit(NewAuditRow {
            actor: "anonymous".into(),
            kind: AuditKind::LoginThrottled,
            session_id: None,
            message: format!(
                "Login for user {user} from {} refused without a password check: {} failed \
                 logins for {what}, next attempt allowed in {wait_s} s",
                ctx.peer, r.failures
            ),
        });
    }
    let mut reply = login_form(
        app,
        ctx,
        429,
        Some(&format!(
            "Too many failed logins. Try again in {wait_s} seconds."
        )),
    );
    reply = reply.with("Retry-After", wait_s.to_string());
    reply
}

/// `POST /logout` (permission and CSRF already checked).
pub fn logout(app: &App, ctx: &Ctx) -> Reply {
    if let Some(v) = &ctx.viewer
        && let Via::Cookie { id_hash, .. } = &v.via
    {
        if let Err(e) = app.ctx.backend.accounts.remove_web_session(id_hash) {
            return app.storage_error(&e);
        }
        app.audit(NewAuditRow {
            actor: v.name.clone(),
            kind: AuditKind::Logout,
            session_id: None,
            message: format!("User {} logged out", v.name),
        });
    }
    Reply::redirect("/status").with("Set-Cookie", app.cookie(SESSION_COOKIE, "", "/", 0))
}

fn nav_page(ctx: &Ctx, status: u16, title: &str, body: &str) -> Reply {
    let nav = ctx.viewer.as_ref().map(|v| v.nav());
    Reply::html(status, html::page(title, nav.as_ref(), None, body))
}

/// `GET /admin/audit`. An unknown `kind=` or a malformed date is a 400 page, not a silently
/// unfiltered list.
pub fn audit(app: &App, ctx: &Ctx) -> Reply {
    let kind = match ctx.q("kind") {
        None => None,
        Some(k) => match AuditKind::parse(&k) {
            Some(k) => Some(k),
            None => {
                return error_page_with(
                    ctx,
                    400,
                    "Unknown action",
                    &format!(
                        "The audit log has no action called \"{k}\". Pick one from the \
                         action menu."
                    ),
                    &[("/admin/audit", "The whole audit log")],
                );
            }
        },
    };
    let zone = &app.ctx.http.display_timezone;
    let mut dates = [None, None];
    for (slot, key) in dates.iter_mut().zip(["from", "to"]) {
        if let Some(d) = ctx.q(key).filter(|d| !d.is_empty()) {
            let day = if key == "from" {
                zone.day_start_ms(&d)
            } else {
                zone.day_end_ms(&d)
            };
            let Some(ms) = day else {
                return error_page_with(
                    ctx,
                    400,
                    "Bad date",
                    &format!("\"{d}\" is not a date of the form YYYY-MM-DD."),
                    &[("/admin/audit", "The whole audit log")],
                );
            };
            *slot = Some(ms);
        }
    }
    let q = AuditQuery {
        actor: ctx.q("actor"),
        kind,
        from_ms: dates[0],
        to_ms: dates[1],
        text: ctx.q("q"),
        before: ctx.q("before").and_then(|b| b.parse().ok()),
        limit: HTTP_PAGE_ROWS_MAX,
    };
    let page = match app.ctx.backend.accounts.list_audit(&q) {
        Ok(p) => p,
        Err(e) => return app.storage_error(&e),
    };
    let v = |k: &str| esc(&ctx.q(k).unwrap_or_default());
    let mut kinds = String::from("<option value=\"\">Any action</option>");
    for k in AuditKind::ALL {
        let sel = if q.kind == Some(k) { " selected" } else { "" };
        let _ = write!(
            kinds,
            "<option value=\"{}\"{sel}>{}</option>",
            k.name(),
            esc(k.label())
        );
    }
    let zone_name = esc(zone.name());
    let mut b = format!(
        "<form class=\"filters\" method=\"get\" action=\"/admin/audit\">\
         <span><label for=\"f-actor\">User</label><input id=\"f-actor\" name=\"actor\" \
         value=\"{}\"></span>\
         <span><label for=\"f-kind\">Action</label><select id=\"f-kind\" name=\"kind\">{kinds}\
         </select></span>\
         <span><label for=\"f-from\">From (day, {zone_name})</label><input id=\"f-from\" name=\"from\" \
         type=\"date\" value=\"{}\"></span>\
         <span><label for=\"f-to\">To (day, {zone_name}, included)</label><input id=\"f-to\" name=\"to\" type=\"date\" \
         value=\"{}\"></span>\
         <span><label for=\"f-q\">Text</label><input id=\"f-q\" name=\"q\" value=\"{}\"></span>\
         <span class=\"go\"><button type=\"submit\">Filter</button></span></form>",
        v("actor"),
        v("from"),
        v("to"),
        v("q")
    );
    let _ = write!(
        b,
        "<div class=\"scroll\" tabindex=\"0\" role=\"region\" aria-label=\"Audit entries\">\
         <table id=\"audit\"><tr><th>Time ({zone_name})</th><th>User</th><th>Action</th>\
         <th>Session</th><th>Entry</th></tr>",
    );
    for e in &page.items {
        let session = match &e.session_id {
            Some(sid) => {
                // Sessions that were played or downloaded have clips to open; others (refused
                // sessions) are found in the history list.
                let href = match AuditKind::parse(&e.kind) {
                    Some(
                        AuditKind::Played | AuditKind::Downloaded | AuditKind::DownloadedSession,
                    ) => format!("/play/{}/1", html::url_encode(sid)),
                    _ => format!("/sessions?q={}", html::url_encode(sid)),
                };
                format!("<a href=\"{}\"><code>{}</code></a>", esc(&href), esc(sid))
            }
            None => String::new(),
        };
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{session}</td><td>{}</td></tr>",
            zone.datetime(e.time_ms),
            esc(&e.actor),
            esc(&e.kind),
            esc(&e.message)
        );
    }
    b.push_str("</table></div>");
    if page.items.is_empty() {
        b.push_str("<p class=\"note\">No entries match.</p>");
    }
    if let Some(next) = page.next_before {
        let mut link = format!("/admin/audit?before={next}");
        for k in ["actor", "kind", "from", "to", "q"] {
            if let Some(val) = ctx.q(k) {
                let _ = write!(link, "&{k}={}", html::url_encode(&val));
            }
        }
        let _ = write!(
            b,
            "<p><a href=\"{}\">Older entries &rarr;</a></p>",
            esc(&link)
        );
    }
    nav_page(ctx, 200, "Audit log", &b)
}

#[derive(Clone, Copy)]
enum Kind {
    Number,
    Text,
    Secret,
}

/// The settings the page edits: `(key, label, kind)`.
const FIELDS: [(&str, &str, Kind); 16] = [
    (
        "storage.upload-location",
        "Upload location (s3://BUCKET/...mp4 or file:///...)",
        Kind::Text,
    ),
    ("storage.region", "S3 region", Kind::Text),
    (
        "storage.object-storage-key",
        "Object storage key",
        Kind::Secret,
    ),
    (
        "storage.object-storage-secret",
        "Object storage secret",
        Kind::Secret,
    ),
    ("video.bitrate-kbps", "Bitrate cap (kbit/s)", Kind::Number),
    ("video.framerate", "Framerate (fps)", Kind::Number),
    (
        "video.keyframe-frames",
        "Keyframe at least every (frames, 10-300)",
        Kind::Number,
    ),
    ("video.width", "Width (0 = native)", Kind::Number),
    ("video.height", "Height (0 = native)", Kind::Number),
    ("retention-hours", "Retention period (hours)", Kind::Number),
    (
        "queue-length",
        "Queue length (encodes at once)",
        Kind::Number,
    ),
    ("disk-floor-mb", "Disk floor (MB)", Kind::Number),
    ("segment-size-mb", "Segment size (MB)", Kind::Number),
    (
        "segment-retention-hours",
        "Raw segments kept after upload (hours)",
        Kind::Number,
    ),
    (
        "history-retention-days",
        "History kept (days)",
        Kind::Number,
    ),
    (
        "audit-retention-days",
        "Audit log kept (days)",
        Kind::Number,
    ),
];

fn num_field<'a>(raw: &'a mut RawConfig, key: &str) -> Option<&'a mut u64> {
    Some(match key {
        "video.bitrate-kbps" => &mut raw.video.bitrate_kbps,
        "video.framerate" => &mut raw.video.framerate,
        "video.keyframe-frames" => &mut raw.video.keyframe_frames,
        "video.width" => &mut raw.video.width,
        "video.height" => &mut raw.video.height,
        "retention-hours" => &mut raw.retention_hours,
        "queue-length" => &mut raw.queue_length,
        "disk-floor-mb" => &mut raw.disk_floor_mb,
        "segment-size-mb" => &mut raw.segment_size_mb,
        "segment-retention-hours" => &mut raw.segment_retention_hours,
        "history-retention-days" => &mut raw.history_retention_days,
        "audit-retention-days" => &mut raw.audit_retention_days,
        _ => return None,
    })
}

fn current_value(raw: &RawConfig, key: &str) -> String {
    let mut copy = raw.clone();
    if let Some(n) = num_field(&mut copy, key) {
        return n.to_string();
    }
    match key {
        "storage.upload-location" => raw.storage.upload_location.clone().unwrap_or_default(),
        "storage.region" => raw.storage.region.clone().unwrap_or_default(),
        _ => String::new(),
    }
}

/// The keys on the page that wait for a restart (the others apply when saved).
fn restart_keys() -> Vec<&'static str> {
    FIELDS
        .iter()
        .map(|(k, _, _)| *k)
        .filter(|k| !crate::config::Config::applies_without_restart(k))
        .collect()
}

/// The settings in the config file (the one source of truth), with its text; without a file,
/// the embedded defaults the daemon runs on.
fn file_settings(app: &App) -> Result<(RawConfig, Option<String>), String> {
    match &app.ctx.settings.file {
        None => Ok((app.ctx.raw_config.clone(), None)),
        Some(path) => {
            let text = crate::config_edit::read_text(path).map_err(|e| e.to_string())?;
            let raw = RawConfig::from_toml(&text, path).map_err(|e| e.to_string())?;
            Ok((raw, Some(text)))
        }
    }
}

/// A refused save: the message, the key it names (its field is marked) and the values as
/// typed (shown again instead of the file's).
struct Refusal<'a> {
    message: String,
    key: Option<String>,
    typed: &'a std::collections::HashMap<String, String>,
}

/// `GET /admin/settings`.
pub fn settings_form(
    app: &App,
    ctx: &Ctx,
    status: u16,
    error: Option<&str>,
    saved: Option<&str>,
) -> Reply {
    let refusal = error.map(|m| Refusal {
        message: m.to_string(),
        key: None,
        typed: &EMPTY_FORM,
    });
    render_settings(app, ctx, status, refusal.as_ref(), saved)
}

static EMPTY_FORM: std::sync::LazyLock<std::collections::HashMap<String, String>> =
    std::sync::LazyLock::new(std::collections::HashMap::new);

fn render_settings(
    app: &App,
    ctx: &Ctx,
    status: u16,
    refusal: Option<&Refusal<'_>>,
    saved: Option<&str>,
) -> Reply {
    let mut b = String::new();
    let (raw, text) = match file_settings(app) {
        Ok(r) => r,
        Err(e) => {
            let _ = write!(
                b,
                "<div class=\"alert\" id=\"settings-error\">The config file cannot be read: {}. \
                 Fix it on the appliance; the daemon keeps running on the settings it loaded.\
                 </div>",
                esc(&e)
            );
            return nav_page(ctx, 500, "Settings", &b);
        }
    };
    if let Some(r) = refusal {
        let _ = write!(
            b,
            "<div class=\"alert\" id=\"settings-error\" role=\"alert\">Not saved: {}</div>",
            esc(&r.message)
        );
    }
    if let Some(s) = saved {
        let _ = write!(
            b,
            "<div class=\"ok\" id=\"settings-saved\">{}</div>",
            esc(s)
        );
    }
    let writable = match &app.ctx.settings.file {
        None => Err(
            "Settings are not edited here: this instance runs without a config file it may \
             edit (embedded defaults, or the history role). Create or edit the file on the \
             appliance (start the daemon with --config FILE) and run `systemctl reload \
             session-recorder`."
                .to_string(),
        ),
        Some(path) => crate::config_edit::writable(path).map_err(|e| {
            format!(
                "{e}. Edit {} on the appliance and run `systemctl reload session-recorder`.",
                path.display()
            )
        }),
    };
    let file_name = app.ctx.settings.file.as_ref().map_or_else(
        || "(embedded defaults)".to_string(),
        |p| p.display().to_string(),
    );
    let _ = write!(
        b,
        "<p class=\"note\">These are the settings in <code>{}</code>, the one place they live: \
         a save changes only the fields you changed there (comments and other keys stay), after \
         checking the whole file and trying the storage. Most settings apply at once; \
         {} apply when the service restarts. Secrets are never shown; leave a secret empty to \
         keep it.</p>",
        esc(&file_name),
        restart_keys()
            .iter()
            .map(|k| format!("<code>{k}</code>"))
            .collect::<Vec<_>>()
            .join(" and ")
    );
    if let Err(why) = &writable {
        let _ = write!(
            b,
            "<p class=\"alert\" id=\"settings-readonly\">{}</p>",
            esc(why)
        );
    }
    let _ = write!(
        b,
        "<form method=\"post\" action=\"/admin/settings\" class=\"card\" novalidate>{}",
        csrf_field(ctx)
    );
    let defaults = raw.validate().ok();
    for (key, label, kind) in FIELDS {
        let typed = refusal.and_then(|r| r.typed.get(key));
        let (ty, value, placeholder) = match kind {
            Kind::Secret => {
                let set = match key {
                    "storage.object-storage-key" => !raw.storage.object_storage_key.is_empty(),
                    _ => !raw.storage.object_storage_secret.is_empty(),
                };
                let hint = if set { "set (hidden)" } else { "not set" };
                ("password", String::new(), hint.to_string())
            }
            Kind::Number => (
                "text",
                typed.cloned().unwrap_or_else(|| current_value(&raw, key)),
                String::new(),
            ),
            // An empty text field means the default, shown as the placeholder.
            Kind::Text => (
                "text",
                typed.cloned().unwrap_or_else(|| current_value(&raw, key)),
                match key {
                    "storage.upload-location" => defaults
                        .as_ref()
                        .map(|c| format!("default: {}", c.storage.upload_location))
                        .unwrap_or_default(),
                    _ => "default: us-east-1".to_string(),
                },
            ),
        };
        let bad = refusal.is_some_and(|r| r.key.as_deref() == Some(key));
        let restart = if !crate::config::Config::applies_without_restart(key) {
            " <small>(applies at restart)</small>"
        } else {
            ""
        };
        let (invalid, described) = if bad {
            (
                " aria-invalid=\"true\" class=\"invalid\"",
                format!(" aria-describedby=\"{key}-error\""),
            )
        } else {
            ("", String::new())
        };
        let mode = if matches!(kind, Kind::Number) {
            " inputmode=\"numeric\""
        } else {
            ""
        };
        let _ = write!(
            b,
            "<label for=\"{key}\">{} <code>{key}</code>{restart}</label><input id=\"{key}\" \
             name=\"{key}\" type=\"{ty}\"{mode} value=\"{}\" placeholder=\"{}\" \
             style=\"width:100%\" autocomplete=\"off\"{invalid}{described}>",
            esc(label),
            esc(&value),
            esc(&placeholder)
        );
        if bad && let Some(r) = refusal {
            let _ = write!(
                b,
                "<p class=\"field-error\" id=\"{key}-error\" style=\"color:#b71c1c;\
                 font-weight:600;margin:.2rem 0 .6rem\">{}</p>",
                esc(&r.message)
            );
        }
    }
    let disabled = if writable.is_err() { " disabled" } else { "" };
    let _ = write!(
        b,
        "<p><button type=\"submit\"{disabled}>Save</button></p></form><h2>The file now</h2>\
         <pre class=\"card\" style=\"overflow-x:auto\">"
    );
    let shown = match text {
        Some(t) => mask_secrets(&t),
        None => raw.to_masked_toml(),
    };
    b.push_str(&esc(&shown));
    b.push_str("</pre>");
    // A marked field stands out even without colour vision: a thick red border and the text.
    b.push_str("<style>input.invalid{border:3px solid #b71c1c;background:#fdecea}</style>");
    nav_page(ctx, status, "Settings", &b)
}

/// The file's text with the values of the secret keys replaced by `"***"`.
fn mask_secrets(text: &str) -> String {
    text.lines()
        .map(|line| {
            let t = line.trim_start();
            let secret = ["object-storage-key", "object-storage-secret"]
                .iter()
                .any(|k| t.starts_with(k) && t[k.len()..].trim_start().starts_with('='));
            if secret {
                let indent = &line[..line.len() - t.len()];
                let name = t.split('=').next().unwrap_or_default().trim_end();
                format!("{indent}{name} = \"***\"\n")
            } else {
                format!("{line}\n")
            }
        })
        .collect()
}

/// The key a validation message names (`invalid setting `video.width`: ...`).
fn key_of(e: &crate::config::ConfigError) -> Option<String> {
    match e {
        crate::config::ConfigError::Invalid { key, .. } => Some(key.clone()),
        _ => None,
    }
}

/// `POST /admin/settings` (permission and CSRF already checked): the changed fields are
/// written into the config file after the whole result validates and the storage answers a
/// probe, then the daemon applies it.
pub fn settings_save(app: &App, ctx: &Ctx) -> Reply {
    let form = ctx.form();
    let typed: std::collections::HashMap<String, String> = FIELDS
        .iter()
        .filter(|(_, _, k)| !matches!(k, Kind::Secret))
        .filter_map(|(key, _, _)| form.get(*key).map(|v| (key.to_string(), v.clone())))
        .collect();
    let refuse = |status: u16, message: String, key: Option<String>| {
        let r = Refusal {
            message,
            key,
            typed: &typed,
        };
        render_settings(app, ctx, status, Some(&r), None)
    };
    let Some(path) = app.ctx.settings.file.clone() else {
        return refuse(409, "there is no config file to write here".into(), None);
    };
    let (mut raw, text) = match file_settings(app) {
        Ok((raw, Some(text))) => (raw, text),
        Ok((_, None)) => return refuse(409, "there is no config file to write".into(), None),
        Err(e) => return refuse(500, format!("the config file cannot be read: {e}"), None),
    };
    let mut changes: Vec<(&str, crate::config_edit::NewValue)> = Vec::new();
    for (key, _, kind) in FIELDS {
        let Some(value) = form.get(key).map(|v| v.trim().to_string()) else {
            continue;
        };
        use crate::config_edit::NewValue;
        match kind {
            Kind::Number => {
                let Ok(n) = value.parse::<u64>() else {
                    let msg = format!("invalid setting `{key}`: `{value}` is not a whole number");
                    return refuse(400, msg, Some(key.to_string()));
                };
                if let Some(slot) = num_field(&mut raw, key)
                    && *slot != n
                {
                    *slot = n;
                    changes.push((key, NewValue::Int(n)));
                }
            }
            Kind::Text => {
                let v = (!value.is_empty()).then(|| value.clone());
                let slot = match key {
                    "storage.upload-location" => &mut raw.storage.upload_location,
                    _ => &mut raw.storage.region,
                };
                if *slot != v {
                    *slot = v.clone();
                    changes.push((key, v.map_or(NewValue::Unset, NewValue::Text)));
                }
            }
            Kind::Secret if value.is_empty() => {}
            Kind::Secret => {
                let slot = match key {
                    "storage.object-storage-key" => &mut raw.storage.object_storage_key,
                    _ => &mut raw.storage.object_storage_secret,
                };
                *slot = Secret::new(value.clone());
                changes.push((key, NewValue::Text(value)));
            }
        }
    }
    if changes.is_empty() {
        return render_settings(app, ctx, 200, None, Some("Nothing changed."));
    }
    // The whole result, as the daemon will read it, through every stage's own check.
    let new_text = match crate::config_edit::apply(&text, &changes, &path) {
        Ok(t) => t,
        Err(e) => return refuse(400, e.to_string(), None),
    };
    let config = match RawConfig::from_toml(&new_text, &path).and_then(|r| r.validate()) {
        Ok(c) => c,
        Err(e) => {
            let key = key_of(&e);
            return refuse(400, e.to_string(), key);
        }
    };
    // What can be tried is tried: the store takes, returns and deletes a probe object.
    if changes.iter().any(|(k, _)| k.starts_with("storage.")) {
        let settings = config.storage.upload_settings();
        let probed = crate::upload::open_store(&settings)
            .map_err(|e| e.to_string())
            .and_then(|store| store.probe().map_err(|e| e.to_string()));
        if let Err(why) = probed {
            let key = changes
                .iter()
                .map(|(k, _)| *k)
                .find(|k| *k == "storage.upload-location")
                .or_else(|| {
                    changes
                        .iter()
                        .map(|(k, _)| *k)
                        .find(|k| k.starts_with("storage."))
                })
                .map(str::to_string);
            return refuse(
                400,
                format!("the storage does not work with these settings: {why}"),
                key,
            );
        }
    }
    if let Err(e) = crate::config_edit::write(&path, &new_text) {
        log::error!(
            "event=settings_write_failed file={} error={e}",
            path.display()
        );
        return refuse(500, e.to_string(), None);
    }
    let names: Vec<&str> = changes.iter().map(|(k, _)| *k).collect();
    log::info!(
        "event=settings_saved file={} by={} keys={}",
        path.display(),
        ctx.who(),
        names.join(",")
    );
    app.audit(NewAuditRow {
        actor: ctx.who().to_string(),
        kind: AuditKind::SettingsChanged,
        session_id: None,
        message: format!(
            "User {} changed settings in {}: {}",
            ctx.who(),
            path.display(),
            names.join(", ")
        ),
    });
    let message = match (app.ctx.settings.reload)() {
        Ok(pending) if pending.is_empty() => "Saved and applied.".to_string(),
        Ok(pending) => format!(
            "Saved. Applied now, except {} (restart pending: applies when the service restarts).",
            pending.join(", ")
        ),
        Err(e) => format!("Saved, but not applied: {e}"),
    };
    render_settings(app, ctx, 200, None, Some(&message))
}
