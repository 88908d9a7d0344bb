//! HTML escaping and the layout every page shares (navigation, the CSRF token, the logout
//! button). No page carries an inline script or style: the Content-Security-Policy forbids them.

use std::fmt::Write as _;

use super::routes::Who;

/// Escapes text for an HTML element or a quoted attribute.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
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

/// Escapes a path segment or query value for a URL in an attribute.
pub(crate) fn url_part(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// A whole page: `title`, the logged-in operator's bar, then `body`. `scripts` are extra
/// script files from `/static/`.
pub(crate) fn page(title: &str, who: Option<&Who>, scripts: &[&str], body: &str) -> String {
    let mut head_scripts = String::new();
    for s in scripts {
        let _ = write!(
            head_scripts,
            "<script src=\"/static/{}\" defer></script>",
            esc(s)
        );
    }
    let (csrf, nav) = match who {
        Some(w) => (
            format!("<meta name=\"csrf\" content=\"{}\">", esc(&w.session.csrf)),
            format!(
                "<nav><a class=\"brand\" href=\"/\">burrow</a><a href=\"/\">Fleet</a><a href=\"/audit\">Audit</a><a href=\"/recordings\">Recordings</a><a href=\"/alerts\">Alerts</a>{}\
                 <span class=\"who\">{} <span class=\"role\">{}</span></span>\
                 <form method=\"post\" action=\"/logout\"><input type=\"hidden\" name=\"csrf\" value=\"{}\"><button>Log out</button></form></nav>",
                if w.record.role == crate::store::Role::Admin {
                    "<a href=\"/admin\">Admin</a>"
                } else {
                    ""
                },
                esc(w.name()),
                esc(w.record.role.as_str()),
                esc(&w.session.csrf)
            ),
        ),
        None => (
            String::new(),
            "<nav><span class=\"brand\">burrow</span></nav>".into(),
        ),
    };
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">{csrf}\
         <title>{} · burrow</title><link rel=\"stylesheet\" href=\"/static/style.css\"><script src=\"/static/app.js\" defer></script>{head_scripts}</head>\
         <body>{nav}<main>{body}</main></body></html>",
        esc(title)
    )
}

/// A message page (errors, refusals).
pub(crate) fn message(title: &str, who: Option<&Who>, text: &str) -> String {
    page(
        title,
        who,
        &[],
        &format!(
            "<h1>{}</h1><p class=\"message\">{}</p>",
            esc(title),
            esc(text)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes() {
        assert_eq!(
            esc("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(url_part("a b/c?"), "a%20b%2Fc%3F");
    }
}
