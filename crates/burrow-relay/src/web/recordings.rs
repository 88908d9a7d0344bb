//! Recordings: the list (with the consoles in use now, to watch live), and each recording
//! played in the browser with asciinema-player, or downloaded.

use std::fmt::Write as _;

use hyper::StatusCode;

use super::Web;
use super::auth;
use super::html::{self, esc, url_part};
use super::http::{Resp, respond};
use super::pages::{html_ok, may_see, not_found, viewed};
use super::routes::Who;

pub(crate) fn table(files: &[crate::console::recording::RecordingFile]) -> String {
    let mut out = String::from(
        "<table><thead><tr><th>Device</th><th>Recording</th><th>Size</th></tr></thead><tbody>",
    );
    for f in files.iter().rev() {
        let name = f
            .path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let _ = write!(
            out,
            "<tr><td>{d}</td><td><a href=\"/recordings/{dl}/{nl}\">{n}</a></td><td>{b}</td></tr>",
            d = esc(&f.device),
            dl = url_part(&f.device),
            nl = url_part(&name),
            n = esc(&name),
            b = f.bytes,
        );
    }
    if files.is_empty() {
        out.push_str("<tr><td colspan=\"3\" class=\"muted\">None.</td></tr>");
    }
    out.push_str("</tbody></table>");
    out
}

pub(crate) async fn list(web: &Web, who: &Who) -> Resp {
    let visible = crate::fleet::Visibility::of(&web.relay, &who.record).await;
    let files: Vec<_> = crate::console::recording::list(&web.relay.config.data_dir, None)
        .unwrap_or_default()
        .into_iter()
        .filter(|f| visible.sees(&f.device))
        .collect();
    viewed(web, who, "recordings", &format!("{} listed", files.len()));
    let mut live = String::new();
    for (device, console, writer) in web.relay.hubs.in_use() {
        if !visible.sees(&device) {
            continue;
        }
        let _ = write!(
            live,
            "<li><a href=\"/console/{dl}/{cl}?watch=1\">{d}/{c}</a> <span class=\"muted\">{w}</span></li>",
            dl = url_part(&device),
            cl = url_part(&console),
            d = esc(&device),
            c = esc(&console),
            w = esc(&writer.map(|w| format!("{w} writes")).unwrap_or_default()),
        );
    }
    let live = if live.is_empty() {
        String::new()
    } else {
        format!("<h2>In use now: watch live</h2><ul id=\"live\">{live}</ul>")
    };
    let body = format!("<h1>Recordings</h1>{live}{}", table(&files));
    html_ok(html::page("Recordings", Some(who), &[], &body))
}

/// A recording's file name: what the relay writes, nothing that could leave the directory.
fn valid_file(name: &str) -> bool {
    name.ends_with(".cast")
        && !name.starts_with('.')
        && name.len() <= 200
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// `/recordings/DEVICE/FILE`: the player page; with `?raw` the asciicast file itself.
pub(crate) async fn play(web: &Web, who: &Who, dev: &str, file: &str) -> Resp {
    let (dev, file) = (
        auth::percent_decode(dev.as_bytes()),
        auth::percent_decode(file.as_bytes()),
    );
    let (file, raw) = match file.strip_suffix(".raw") {
        Some(f) => (f.to_string(), true),
        None => (file, false),
    };
    if !burrow_proto::name::is_valid_name(&dev)
        || !valid_file(&file)
        || !may_see(web, who, &dev).await
    {
        return not_found(web, who, "No such recording that you may see.");
    }
    let path = web
        .relay
        .config
        .data_dir
        .join(crate::console::recording::RECORDINGS_DIR)
        .join(&dev)
        .join(&file);
    if raw {
        return match tokio::fs::read(&path).await {
            Ok(bytes) => {
                viewed(web, who, &format!("{dev}/{file}"), "recording read");
                respond(StatusCode::OK, "application/x-asciicast", bytes)
            }
            Err(_) => not_found(web, who, "No such recording that you may see."),
        };
    }
    if !path.is_file() {
        return not_found(web, who, "No such recording that you may see.");
    }
    viewed(web, who, &format!("{dev}/{file}"), "recording played");
    let body = format!(
        "<h1>{d} · {f}</h1><link rel=\"stylesheet\" href=\"/static/asciinema-player.css\">\
         <div id=\"player\" data-src=\"/recordings/{dl}/{fl}.raw\"></div>\
         <p><a href=\"/recordings/{dl}/{fl}.raw\" download>Download</a> (plays with <code>asciinema play</code>)</p>",
        d = esc(&dev),
        f = esc(&file),
        dl = url_part(&dev),
        fl = url_part(&file),
    );
    let mut r = html_ok(html::page(
        &file,
        Some(who),
        &["asciinema-player.min.js", "player.js"],
        &body,
    ));
    // The player builds its terminal with inline styles and compiles its WebAssembly
    // terminal emulator; scripts still come from this site only.
    r.headers_mut().insert(
        hyper::header::CONTENT_SECURITY_POLICY,
        hyper::header::HeaderValue::from_static(super::routes::CSP_PLAYER),
    );
    r
}
