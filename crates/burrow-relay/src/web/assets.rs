//! The web console's scripts and styles, embedded in the binary: burrow's own (`static/`) and
//! the vendored front-end packages (`web-vendor/`, refreshed from npm by its `refresh.sh`), so
//! that building burrow needs no Node toolchain.

use hyper::StatusCode;
use hyper::header::{self, HeaderValue};

use super::http::{Resp, respond, text};

/// (name, content type, bytes, gzipped). The vendored files are embedded gzipped (a quarter of
/// their size; every browser takes `Content-Encoding: gzip`).
const FILES: &[(&str, &str, &[u8], bool)] = &[
    (
        "style.css",
        "text/css; charset=utf-8",
        include_bytes!("static/style.css"),
        false,
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("static/app.js"),
        false,
    ),
    (
        "link.js",
        "text/javascript; charset=utf-8",
        include_bytes!("static/link.js"),
        false,
    ),
    (
        "console.js",
        "text/javascript; charset=utf-8",
        include_bytes!("static/console.js"),
        false,
    ),
    (
        "player.js",
        "text/javascript; charset=utf-8",
        include_bytes!("static/player.js"),
        false,
    ),
    (
        "xterm.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../web-vendor/xterm.js.gz"),
        true,
    ),
    (
        "xterm.css",
        "text/css; charset=utf-8",
        include_bytes!("../../web-vendor/xterm.css.gz"),
        true,
    ),
    (
        "addon-fit.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../web-vendor/addon-fit.js.gz"),
        true,
    ),
    (
        "asciinema-player.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../web-vendor/asciinema-player.min.js.gz"),
        true,
    ),
    (
        "asciinema-player.css",
        "text/css; charset=utf-8",
        include_bytes!("../../web-vendor/asciinema-player.css.gz"),
        true,
    ),
];

/// Serves `/static/NAME`.
pub(crate) fn serve(name: &str) -> Resp {
    match FILES.iter().find(|(n, ..)| *n == name) {
        Some((_, kind, bytes, gzipped)) => {
            let mut r = respond(StatusCode::OK, kind, *bytes);
            if *gzipped {
                r.headers_mut()
                    .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            }
            // The files change only with the binary.
            r.headers_mut().insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=3600"),
            );
            r
        }
        None => text(StatusCode::NOT_FOUND, "no such file\n"),
    }
}
