//! HTML building blocks: escaping, the page layout (navigation, inline responsive CSS, no
//! external assets, no scripts), and small formatters. Every value that reaches a page goes
//! through [`esc`] or [`attr`].

use std::fmt::Write as _;

use super::auth::Permissions;

/// Escapes text for HTML element content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a value for a URL query or path segment, then HTML-escapes it.
pub fn attr(s: &str) -> String {
    esc(&url_encode(s))
}

/// Percent-encodes everything but unreserved characters.
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Decodes `%XX` and `+` (form encoding); `None` for broken escapes or non-UTF-8.
pub fn url_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// `2024-01-29 18:55:45` (UTC).
pub fn datetime(ms: u64) -> String {
    let full = crate::clock::format_datetime_ms(ms);
    full.get(..19).unwrap_or(&full).to_string()
}

/// `1 h 02 min`, `3 min 05 s`, `12 s`, `<1 s`.
pub fn duration(ms: u64) -> String {
    if ms < 1000 {
        return "<1 s".into();
    }
    let s = ms / 1000;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {:02} s", s / 60, s % 60),
        _ => format!("{} h {:02} min", s / 3600, (s / 60) % 60),
    }
}

/// `1.5 GB` (decimal units, as disks are sold).
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Who is looking at a page, for the navigation bar.
pub struct NavUser<'a> {
    /// User name.
    pub name: &'a str,
    /// Permissions.
    pub perms: Permissions,
    /// CSRF token for the logout form (cookie logins only).
    pub csrf: Option<&'a str>,
}

const CSS: &str = "\
*{box-sizing:border-box}body{margin:0;font:15px/1.45 system-ui,-apple-system,Segoe UI,Roboto,\
sans-serif;color:#1b1f24;background:#f4f6f8}header{background:#1f2d3d;color:#fff;padding:.5rem \
1rem;display:flex;flex-wrap:wrap;gap:.4rem 1rem;align-items:center}header a,header button{color:\
#fff;text-decoration:none;background:none;border:0;font:inherit;cursor:pointer;padding:0}header \
.brand{font-weight:600;margin-right:auto}main{padding:1rem;max-width:1100px;margin:auto}h1{font-\
size:1.35rem;margin:.2rem 0 1rem}h2{font-size:1.1rem;margin:1.2rem 0 .5rem}.alert{background:\
#fde8e8;border:2px solid #c62828;color:#7f1010;padding:.7rem 1rem;border-radius:6px;margin:0 0 \
1rem;font-weight:600}.ok{background:#e6f4ea;border:1px solid #2e7d32;color:#1b5e20;padding:.6rem \
1rem;border-radius:6px;margin:0 0 1rem}.note{color:#555;font-size:.9rem}.grid{display:grid;\
grid-template-columns:repeat(auto-fit,minmax(min(250px,100%),1fr));gap:.8rem}.card{background:#fff;\
border:1px solid #d8dee4;border-radius:6px;padding:.7rem 1rem}.card h2{margin-top:0}table{width:\
100%;border-collapse:collapse;background:#fff}th,td{text-align:left;padding:.35rem .5rem;border-\
bottom:1px solid #e3e7eb;vertical-align:top}th{background:#eef1f4}.scroll{overflow-x:auto}\
.failed{color:#b71c1c;font-weight:600}.busy{color:#0d47a1;font-weight:600}form.filters{display:\
flex;flex-wrap:wrap;gap:.5rem;margin-bottom:.8rem}input,select,textarea,button{font:inherit;\
padding:.35rem .5rem;border:1px solid #b8c0c8;border-radius:4px}button{background:#1f6feb;color:\
#fff;border-color:#1f6feb;cursor:pointer}label{display:block;margin:.4rem 0 .1rem;font-weight:\
600}video{width:100%;max-height:70vh;background:#000}img.thumb{width:160px;max-width:40vw;\
border:1px solid #ccc}ul.clips{list-style:none;padding-left:0;margin:.3rem 0}ul.clips li{margin:0 0 .5rem}dl{display:grid;grid-template-columns:auto \
minmax(0,1fr);gap:.1rem .8rem;margin:0}dt{color:#555}dd{margin:0;min-width:0;overflow-wrap:\
anywhere}code{word-break:break-all}\
.headline{font-size:1.15rem;padding:.8rem 1rem;border-radius:6px;margin:0 0 .6rem}.headline.good{\
background:#e6f4ea;border:2px solid #2e7d32;color:#1b5e20}.headline.bad{background:#b71c1c;color:\
#fff}.todo{display:block;font-weight:400;margin-top:.3rem}.figures{display:grid;\
grid-template-columns:repeat(auto-fit,minmax(min(170px,100%),1fr));gap:.6rem;margin:0 0 1rem}\
.fig h2{font-size:.9rem;margin:0;color:#3d4650}.fig .big{font-size:1.45rem;font-weight:600;\
margin:.1rem 0}.fig .note{margin:0}figure.trend{margin:0;display:flex;flex-direction:column}\
.trend svg{display:block;margin-top:auto;background:#f8fafc}.trend .bars{stroke:#1f6feb;stroke-width:1;fill:none}.trend .ref{stroke:\
#b71c1c;stroke-dasharray:4 3;stroke-width:1.5;vector-effect:non-scaling-stroke;fill:none}.trend \
.axis{stroke:#8a96a3;stroke-width:1;vector-effect:non-scaling-stroke}.axis-labels{display:flex;\
justify-content:space-between;font-size:.8rem;color:#555}details{margin-top:1rem}summary{cursor:\
pointer;font-weight:600;padding:.4rem 0}.filters span{display:flex;flex-direction:column}\
.filters label{margin:0 0 .1rem}.filters .go{justify-content:flex-end}fieldset.perms{border:1px \
solid #d8dee4;border-radius:4px;margin:.4rem 0;padding:.3rem .7rem}label.check{font-weight:400;\
display:flex;gap:.4rem;align-items:center;margin:.2rem 0}label.check code{word-break:normal}.user-forms{display:grid;\
grid-template-columns:repeat(auto-fit,minmax(min(260px,100%),1fr));gap:0 1rem}.card.user{margin:\
0 0 .8rem}h3{margin:.1rem 0 .3rem;font-size:1.05rem}button.danger{background:#b71c1c;\
border-color:#b71c1c}a.danger{color:#b71c1c;font-weight:600}#new-token{display:block;font-size:\
1rem;background:#fff;padding:.4rem;margin-top:.3rem}ul.back{padding-left:1.2rem}\
@media(max-width:600px){th,td{padding:.3rem}main{padding:.6rem}}";

/// A full page: navigation, title, `body` (already escaped HTML), optional auto-refresh.
pub fn page(title: &str, user: Option<&NavUser<'_>>, refresh_s: Option<u32>, body: &str) -> String {
    let mut nav = String::from("<a class=\"brand\" href=\"/status\">session-recorder</a>");
    nav.push_str("<a href=\"/status\">Status</a>");
    if let Some(u) = user {
        if u.perms.allows(Permissions::SESSIONS_VIEW) {
            nav.push_str("<a href=\"/sessions\">Sessions</a>");
        }
        if u.perms.allows(Permissions::ADMIN) {
            nav.push_str(
                "<a href=\"/admin/audit\">Audit log</a><a href=\"/admin/settings\">Settings</a>\
                 <a href=\"/admin/users\">Users</a>",
            );
        }
        let _ = write!(nav, "<span>{}</span>", esc(u.name));
        if let Some(csrf) = u.csrf {
            let _ = write!(
                nav,
                "<form method=\"post\" action=\"/logout\" style=\"margin:0\"><input type=\"hidden\" \
                 name=\"csrf\" value=\"{}\"><button type=\"submit\">Log out</button></form>",
                esc(csrf)
            );
        }
    } else {
        nav.push_str("<a href=\"/login\">Log in</a>");
    }
    let refresh = refresh_s
        .map(|s| format!("<meta http-equiv=\"refresh\" content=\"{s}\">"))
        .unwrap_or_default();
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" \
         content=\"width=device-width,initial-scale=1\">{refresh}<title>{} - session-recorder\
         </title><style>{CSS}</style></head><body><header>{nav}</header><main><h1>{}</h1>{body}\
         </main></body></html>",
        esc(title),
        esc(title)
    )
}

/// The body of an error page inside the app frame: what happened (in the error style), the
/// HTTP status in small print, and `links` (href, label) as the way back. `message` is plain
/// text; it is escaped here.
pub fn error_body(status: u16, message: &str, links: &[(&str, &str)]) -> String {
    let mut b = format!(
        "<div class=\"alert\" role=\"alert\" id=\"error\">{}</div>",
        esc(message)
    );
    if !links.is_empty() {
        b.push_str("<ul class=\"back\">");
        for (href, label) in links {
            let _ = write!(b, "<li><a href=\"{}\">{}</a></li>", esc(href), esc(label));
        }
        b.push_str("</ul>");
    }
    let _ = write!(
        b,
        "<p class=\"note\">HTTP status {status} {}.</p>",
        esc(reason(status))
    );
    b
}

/// The reason phrase of the statuses the pages answer with.
pub fn reason(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Content Too Large",
        416 => "Range Not Satisfiable",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// The pager under a list: its links (already escaped markup) in a `nav` named `label`;
/// nothing when there is no other page.
pub fn pager(b: &mut String, label: &str, links: &[String]) {
    if !links.is_empty() {
        let _ = write!(
            b,
            "<nav class=\"pager\" aria-label=\"{}\">{}</nav>",
            esc(label),
            links.join(" ")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_everything_dangerous() {
        assert_eq!(
            esc("<script>alert('x')&\"</script>"),
            "&lt;script&gt;alert(&#39;x&#39;)&amp;&quot;&lt;/script&gt;"
        );
    }

    #[test]
    fn url_round_trip() {
        let s = "a b/../é&=?";
        assert_eq!(url_decode(&url_encode(s)).as_deref(), Some(s));
        assert_eq!(url_decode("a+b%2e%2E").as_deref(), Some("a b.."));
        assert_eq!(url_decode("%zz"), None);
        assert_eq!(url_decode("%c3"), None);
    }

    #[test]
    fn error_bodies_escape_and_link_back() {
        let b = error_body(404, "No <session>", &[("/sessions", "Session history")]);
        assert!(b.contains("No &lt;session&gt;"), "{b}");
        assert!(
            b.contains("<a href=\"/sessions\">Session history</a>"),
            "{b}"
        );
        assert!(b.contains("404 Not Found"), "{b}");
    }

    #[test]
    fn formats_are_human() {
        assert_eq!(duration(65_000), "1 min 05 s");
        assert_eq!(duration(400), "<1 s");
        assert_eq!(duration(1_000), "1 s");
        assert_eq!(duration(3_725_000), "1 h 02 min");
        assert_eq!(bytes(1_500_000_000), "1.5 GB");
        assert_eq!(datetime(1_706_554_545_220), "2024-01-29 18:55:45");
    }
}
