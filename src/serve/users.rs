//! The users page (`/admin/users`): web users and API tokens, for admins.
//!
//! What a person does here, each without script: add a user; change a user's permissions or
//! password in place (the stored user keeps its name, creation time and, for a permission
//! change, its password); delete a user after a confirmation page; create an API token (its
//! secret is shown once) and revoke one. Refusals are shown in the error style with the form
//! kept; a user who may play recordings but not list sessions is explained in the table.
//!
//! The store audits account changes itself (in the queue, in the transaction of the change);
//! the handlers here pass the actor and word the entry for stores that do not.
//! Called by the router after the `ADMIN` and CSRF checks.

use crate::clock::DisplayZone;
use std::fmt::Write as _;

use super::auth::{self, Permissions};
use super::backend::{AuditKind, NewAuditRow, TokenRow, UserRow};
use super::ctx::{App, Ctx, Reply, csrf_field, error_page_with};
use super::html::{self, esc};
use crate::limits::HTTP_TOKEN_LABEL_CHARS_MAX;

/// The outcome of a form, shown above the page.
enum Notice {
    /// Done; the text says what.
    Done(String),
    /// Refused; the text says why and what to do.
    Refused(String),
    /// A token was created: its secret, shown once.
    Token {
        /// Whose token.
        user: String,
        /// Its label.
        label: String,
        /// The secret.
        secret: String,
    },
}

const PERMISSIONS: [(Permissions, &str, &str); 4] = [
    (
        Permissions::SESSIONS_VIEW,
        "SESSIONS_VIEW",
        "List sessions (history)",
    ),
    (
        Permissions::SESSION_RECORDINGS_VIEW,
        "SESSION_RECORDINGS_VIEW",
        "Play and download recordings",
    ),
    (
        Permissions::SESSION_KEYSTROKES_VIEW,
        "SESSION_KEYSTROKES_VIEW",
        "See typed text and clipboard contents (search, event pane)",
    ),
    (
        Permissions::ADMIN,
        "ADMIN",
        "Administer (settings, users, audit log; includes the others)",
    ),
];

/// `GET /admin/users`.
pub fn page(app: &App, ctx: &Ctx) -> Reply {
    render(app, ctx, 200, None)
}

/// Checkboxes for `perms`, each with its own label; `id` makes the ids unique on the page.
fn permission_boxes(id: &str, perms: Permissions) -> String {
    let mut b = String::from("<fieldset class=\"perms\"><legend>Permissions</legend>");
    for (p, name, words) in PERMISSIONS {
        let checked = if perms.0 & p.0 != 0 { " checked" } else { "" };
        let _ = write!(
            b,
            "<label class=\"check\"><input type=\"checkbox\" name=\"perm\" value=\"{name}\" \
             id=\"{id}-{name}\"{checked}><span>{} <code>{name}</code></span></label>",
            esc(words)
        );
    }
    b.push_str("</fieldset>");
    b
}

/// A note for permission sets that need one.
fn permission_note(perms: Permissions) -> &'static str {
    if perms.allows(Permissions::SESSION_RECORDINGS_VIEW)
        && !perms.allows(Permissions::SESSIONS_VIEW)
    {
        "Can play and download recordings only from a direct link: without SESSIONS_VIEW the \
         session list is refused."
    } else if perms == Permissions::NONE {
        "Can log in but see nothing beyond the status page."
    } else {
        ""
    }
}

fn render(app: &App, ctx: &Ctx, status: u16, notice: Option<Notice>) -> Reply {
    let (mut users, tokens) = match (
        app.ctx.backend.accounts.users(),
        app.ctx.backend.accounts.tokens(),
    ) {
        (Ok(u), Ok(t)) => (u, t),
        (Err(e), _) | (_, Err(e)) => return app.storage_error(&e),
    };
    users.sort_by(|a, b| a.name.cmp(&b.name));
    let csrf = csrf_field(ctx);
    let zone = &app.ctx.http.display_timezone;
    let mut b = String::new();
    match notice {
        Some(Notice::Done(m)) => {
            let _ = write!(
                b,
                "<div class=\"ok\" role=\"status\" id=\"users-message\">{}</div>",
                esc(&m)
            );
        }
        Some(Notice::Refused(m)) => {
            let _ = write!(
                b,
                "<div class=\"alert\" role=\"alert\" id=\"users-error\">Not done: {}</div>",
                esc(&m)
            );
        }
        Some(Notice::Token {
            user,
            label,
            secret,
        }) => {
            let _ = write!(
                b,
                "<div class=\"ok\" role=\"status\" id=\"users-message\">API token \
                 <strong>{}</strong> created for {}. Copy it now: it is shown only once.\
                 <br><code id=\"new-token\">{}</code></div>",
                esc(&label),
                esc(&user),
                esc(&secret)
            );
        }
        None => {}
    }
    b.push_str("<h2>Users</h2>");
    if users.is_empty() {
        b.push_str("<p class=\"note\">No users yet.</p>");
    }
    for (i, u) in users.iter().enumerate() {
        user_card(&mut b, &csrf, i, u, u.name == ctx.who(), zone);
    }
    let _ = write!(
        b,
        "<h2>Add a user</h2><form method=\"post\" action=\"/admin/users/add\" class=\"card\" \
         id=\"add-user\">{csrf}<label for=\"new-name\">User name</label><input id=\"new-name\" \
         name=\"name\" required autocomplete=\"off\"><label for=\"new-password\">Password \
         ({}-{} characters)</label><input id=\"new-password\" name=\"password\" \
         type=\"password\" autocomplete=\"new-password\" required>{}<p><button \
         type=\"submit\">Add user</button></p></form>",
        crate::limits::HTTP_PASSWORD_CHARS_MIN,
        crate::limits::HTTP_PASSWORD_CHARS_MAX,
        permission_boxes("new", Permissions::SESSIONS_VIEW)
    );
    tokens_section(&mut b, &csrf, &users, &tokens, zone);
    let nav = ctx.viewer.as_ref().map(|v| v.nav());
    Reply::html(status, html::page("Users", nav.as_ref(), None, &b))
}

/// One user: name, permissions form, password form, delete link.
fn user_card(
    b: &mut String,
    csrf: &str,
    i: usize,
    u: &UserRow,
    is_viewer: bool,
    zone: &DisplayZone,
) {
    let perms = Permissions(u.permissions);
    let name = esc(&u.name);
    let delete = if is_viewer {
        "<p class=\"note\">This is your account: another admin can delete it.</p>".to_string()
    } else {
        format!(
            "<p><a class=\"danger\" href=\"/admin/users/delete?name={}\">Delete {name}&hellip;\
             </a></p>",
            html::attr(&u.name)
        )
    };
    let note = match permission_note(perms) {
        "" => String::new(),
        n => format!("<p class=\"note\">{}</p>", esc(n)),
    };
    let _ = write!(
        b,
        "<section class=\"card user\" id=\"user-{i}\" aria-labelledby=\"user-{i}-name\">\
         <h3 id=\"user-{i}-name\">{name}</h3><p class=\"note\">Created {} ({}). Permissions: \
         {}.</p>{note}<div class=\"user-forms\">\
         <form method=\"post\" action=\"/admin/users/permissions\">{csrf}\
         <input type=\"hidden\" name=\"name\" value=\"{name}\">{}\
         <button type=\"submit\">Save permissions</button></form>\
         <form method=\"post\" action=\"/admin/users/password\">{csrf}\
         <input type=\"hidden\" name=\"name\" value=\"{name}\">\
         <label for=\"user-{i}-password\">New password</label><input id=\"user-{i}-password\" \
         name=\"password\" type=\"password\" autocomplete=\"new-password\" required>\
         <p><button type=\"submit\">Set password</button></p></form></div>{delete}</section>",
        zone.datetime(u.created_ms),
        esc(zone.name()),
        match perms.names() {
            n if n.is_empty() => "none".to_string(),
            n => esc(&n),
        },
        permission_boxes(&format!("user-{i}"), perms),
    );
}

fn tokens_section(
    b: &mut String,
    csrf: &str,
    users: &[UserRow],
    tokens: &[TokenRow],
    zone: &DisplayZone,
) {
    b.push_str("<h2>API tokens</h2>");
    if tokens.is_empty() {
        b.push_str("<p class=\"note\">No API tokens.</p>");
    } else {
        let _ = write!(
            b,
            "<div class=\"scroll\" tabindex=\"0\" role=\"region\" aria-label=\"API tokens\">\
             <table id=\"tokens\"><tr><th>Label</th><th>User</th><th>Created ({})</th>\
             <th>Revoke</th></tr>",
            esc(zone.name())
        );
        for t in tokens {
            let _ = write!(
                b,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td><form method=\"post\" \
                 action=\"/admin/users/token-delete\" style=\"margin:0\">{csrf}<input \
                 type=\"hidden\" name=\"hash\" value=\"{}\"><button type=\"submit\" \
                 aria-label=\"Revoke token {}\">Revoke</button></form></td></tr>",
                esc(&t.label),
                esc(&t.user),
                zone.datetime(t.created_ms),
                esc(&t.token_hash),
                esc(&t.label)
            );
        }
        b.push_str("</table></div>");
    }
    let mut options = String::new();
    for u in users {
        let _ = write!(options, "<option value=\"{0}\">{0}</option>", esc(&u.name));
    }
    let _ = write!(
        b,
        "<form method=\"post\" action=\"/admin/users/token-add\" class=\"card\" \
         id=\"add-token\">{csrf}<label for=\"token-user\">For user</label><select \
         id=\"token-user\" name=\"user\" required>{options}</select><label \
         for=\"token-label\">Label (what uses it, up to {HTTP_TOKEN_LABEL_CHARS_MAX} \
         characters)</label><input id=\"token-label\" name=\"label\" required \
         maxlength=\"{HTTP_TOKEN_LABEL_CHARS_MAX}\"><p><button type=\"submit\">Create \
         token</button></p></form>"
    );
}

/// `GET /admin/users/delete?name=X`: the confirmation page; the deletion itself is a POST
/// from its form.
pub fn confirm_delete(app: &App, ctx: &Ctx) -> Reply {
    ask_delete(app, ctx, &ctx.q("name").unwrap_or_default())
}

/// The question before deleting `name`.
fn ask_delete(app: &App, ctx: &Ctx, name: &str) -> Reply {
    match app.ctx.backend.accounts.user(name) {
        Ok(Some(_)) => {}
        Ok(None) => {
            return error_page_with(
                ctx,
                404,
                "No such user",
                &format!("There is no user \"{name}\"."),
                &[("/admin/users", "Users")],
            );
        }
        Err(e) => return app.storage_error(&e),
    }
    let b = format!(
        "<div class=\"alert\" role=\"alert\">Delete the user <strong>{0}</strong>? They can no \
         longer log in, and their API tokens stop working. This cannot be undone.</div>\
         <form method=\"post\" action=\"/admin/users/delete\" class=\"card\">{1}<input \
         type=\"hidden\" name=\"name\" value=\"{0}\"><input type=\"hidden\" name=\"confirm\" \
         value=\"yes\"><p><button type=\"submit\" class=\"danger\" id=\"confirm-delete\">\
         Delete {0}</button> <a href=\"/admin/users\">Cancel</a></p></form>",
        esc(name),
        csrf_field(ctx)
    );
    let nav = ctx.viewer.as_ref().map(|v| v.nav());
    Reply::html(200, html::page("Delete user", nav.as_ref(), None, &b))
}

/// `POST /admin/users/{add,permissions,password,delete,token-add,token-delete}`.
pub fn post(app: &App, ctx: &Ctx, action: &str) -> Reply {
    let form = ctx.form_all();
    let get = |k: &str| {
        form.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default()
    };
    let perms = || {
        let names: Vec<&str> = form
            .iter()
            .filter(|(n, _)| n == "perm")
            .map(|(_, v)| v.as_str())
            .collect();
        Permissions::parse(&names.join(","))
    };
    let who = ctx.who().to_string();
    let result = match action {
        "add" => add(
            app,
            &who,
            &get("name"),
            &get_raw(&form, "password"),
            perms(),
        ),
        "permissions" => set_permissions(app, &who, &get("name"), perms()),
        "password" => set_password(app, &who, &get("name"), &get_raw(&form, "password")),
        "delete" if get("confirm") != "yes" => return ask_delete(app, ctx, &get("name")),
        "delete" => delete(app, &who, &get("name")),
        "token-add" => add_token(app, &who, &get("user"), &get("label")),
        "token-delete" => revoke_token(app, &who, &get("hash")),
        _ => {
            return error_page_with(
                ctx,
                404,
                "Page not found",
                "There is no such action on the users page.",
                &[("/admin/users", "Users")],
            );
        }
    };
    match result {
        Ok(n) => render(app, ctx, 200, Some(n)),
        Err(Failure::Refused(m)) => render(app, ctx, 400, Some(Notice::Refused(m))),
        Err(Failure::Storage(e)) => app.storage_error(&e),
    }
}

fn get_raw(form: &[(String, String)], k: &str) -> String {
    form.iter()
        .find(|(n, _)| n == k)
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

/// Why a form was not carried out.
enum Failure {
    /// The person's input: said on the page.
    Refused(String),
    /// The store failed: a 503 page.
    Storage(super::backend::BackendError),
}

impl From<super::backend::BackendError> for Failure {
    fn from(e: super::backend::BackendError) -> Self {
        Failure::Storage(e)
    }
}

fn refused(m: impl Into<String>) -> Failure {
    Failure::Refused(m.into())
}

fn audit(app: &App, who: &str, kind: AuditKind, message: String) {
    app.audit(NewAuditRow {
        actor: who.to_string(),
        kind,
        session_id: None,
        message,
    });
}

fn existing(app: &App, name: &str) -> Result<UserRow, Failure> {
    app.ctx
        .backend
        .accounts
        .user(name)?
        .ok_or_else(|| refused(format!("there is no user \"{name}\"")))
}

fn add(
    app: &App,
    who: &str,
    name: &str,
    password: &str,
    perms: Result<Permissions, String>,
) -> Result<Notice, Failure> {
    auth::check_user_name(name).map_err(refused)?;
    if app.ctx.backend.accounts.user(name)?.is_some() {
        return Err(refused(format!(
            "a user \"{name}\" already exists; change their permissions or password in their \
             card above"
        )));
    }
    auth::check_password(password).map_err(refused)?;
    let perms = perms.map_err(refused)?;
    let user = UserRow {
        password_hash: auth::hash_password(password).map_err(|e| refused(e.to_string()))?,
        name: name.to_string(),
        permissions: perms.0,
        created_ms: app.now_ms(),
    };
    app.ctx.backend.accounts.put_user(&user, who)?;
    audit(
        app,
        who,
        AuditKind::UserAdded,
        format!("User {who} added user {name} with {}", names_or_none(perms)),
    );
    Ok(Notice::Done(with_note(
        format!("Added user {name} ({}).", names_or_none(perms)),
        perms,
    )))
}

fn set_permissions(
    app: &App,
    who: &str,
    name: &str,
    perms: Result<Permissions, String>,
) -> Result<Notice, Failure> {
    let mut user = existing(app, name)?;
    let perms = perms.map_err(refused)?;
    if name == who && !perms.allows(Permissions::ADMIN) {
        return Err(refused(
            "you cannot take ADMIN away from your own account (another admin can)",
        ));
    }
    if user.permissions == perms.0 {
        return Ok(Notice::Done(format!(
            "Nothing changed: {name} already has {}.",
            names_or_none(perms)
        )));
    }
    let before = names_or_none(Permissions(user.permissions));
    user.permissions = perms.0;
    app.ctx.backend.accounts.put_user(&user, who)?;
    audit(
        app,
        who,
        AuditKind::UserChanged,
        format!(
            "User {who} changed the permissions of {name} from {before} to {}",
            names_or_none(perms)
        ),
    );
    Ok(Notice::Done(with_note(
        format!("Permissions of {name} are now {}.", names_or_none(perms)),
        perms,
    )))
}

fn set_password(app: &App, who: &str, name: &str, password: &str) -> Result<Notice, Failure> {
    let mut user = existing(app, name)?;
    auth::check_password(password).map_err(refused)?;
    user.password_hash = auth::hash_password(password).map_err(|e| refused(e.to_string()))?;
    app.ctx.backend.accounts.put_user(&user, who)?;
    audit(
        app,
        who,
        AuditKind::UserChanged,
        format!("User {who} set a new password for {name}"),
    );
    Ok(Notice::Done(format!("New password set for {name}.")))
}

fn delete(app: &App, who: &str, name: &str) -> Result<Notice, Failure> {
    if name == who {
        return Err(refused("you cannot delete your own account"));
    }
    if !app.ctx.backend.accounts.remove_user(name, who)? {
        return Err(refused(format!("there is no user \"{name}\"")));
    }
    audit(
        app,
        who,
        AuditKind::UserRemoved,
        format!("User {who} deleted user {name}"),
    );
    Ok(Notice::Done(format!("Deleted user {name}.")))
}

fn add_token(app: &App, who: &str, user: &str, label: &str) -> Result<Notice, Failure> {
    existing(app, user)?;
    if label.is_empty() {
        return Err(refused("give the token a label (what will use it)"));
    }
    let label: String = label.chars().take(HTTP_TOKEN_LABEL_CHARS_MAX).collect();
    let secret = auth::random_token().map_err(|e| refused(e.to_string()))?;
    let row = TokenRow {
        token_hash: auth::secret_hash(&secret),
        user: user.to_string(),
        label: label.clone(),
        created_ms: app.now_ms(),
    };
    app.ctx.backend.accounts.add_token(&row, who)?;
    audit(
        app,
        who,
        AuditKind::TokenCreated,
        format!("User {who} created API token {label} for {user}"),
    );
    Ok(Notice::Token {
        user: user.to_string(),
        label,
        secret,
    })
}

fn revoke_token(app: &App, who: &str, hash: &str) -> Result<Notice, Failure> {
    if !app.ctx.backend.accounts.remove_token(hash, who)? {
        return Err(refused("no such token (revoked already?)"));
    }
    audit(
        app,
        who,
        AuditKind::TokenRevoked,
        format!("User {who} revoked an API token"),
    );
    Ok(Notice::Done("Token revoked.".into()))
}

fn names_or_none(p: Permissions) -> String {
    match p.names() {
        n if n.is_empty() => "no permissions".to_string(),
        n => n,
    }
}

fn with_note(done: String, perms: Permissions) -> String {
    match permission_note(perms) {
        "" => done,
        n => format!("{done} {n}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_permission_box_has_its_own_label() {
        let b = permission_boxes("u1", Permissions::SESSIONS_VIEW);
        assert_eq!(
            b.matches("<label class=\"check\">").count(),
            PERMISSIONS.len(),
            "{b}"
        );
        assert_eq!(b.matches(" checked").count(), 1, "{b}");
        assert!(b.contains("<legend>Permissions</legend>"), "{b}");
    }

    #[test]
    fn player_only_is_explained() {
        assert!(permission_note(Permissions::SESSION_RECORDINGS_VIEW).contains("SESSIONS_VIEW"));
        assert_eq!(permission_note(Permissions::ADMIN), "");
    }
}
