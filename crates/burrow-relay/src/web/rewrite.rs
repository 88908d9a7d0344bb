//! What a device's web UI sends and receives, adjusted to being served under a prefix of the
//! relay's site: hop-by-hop headers dropped, the console's cookie kept from the device,
//! redirects and cookie paths kept under the prefix, cookie domains dropped.

use hyper::header::{self, HeaderMap, HeaderValue};

use super::auth::COOKIE;

/// Headers that belong to one hop, not passed on (RFC 9110 section 7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

pub(crate) fn copy_request_headers(from: &HeaderMap, to: &mut HeaderMap, upgrade: bool) {
    for (k, v) in from {
        let name = k.as_str();
        if HOP_BY_HOP.contains(&name) || name.starts_with("x-forwarded-") {
            continue;
        }
        if k == header::COOKIE {
            // The console's session cookie is the operator's, not the device's.
            let kept: Vec<&str> = v
                .to_str()
                .unwrap_or("")
                .split(';')
                .map(str::trim)
                .filter(|c| !c.is_empty() && !c.starts_with(&format!("{COOKIE}=")))
                .collect();
            if !kept.is_empty()
                && let Ok(v) = HeaderValue::from_str(&kept.join("; "))
            {
                to.append(header::COOKIE, v);
            }
            continue;
        }
        to.append(k.clone(), v.clone());
    }
    if upgrade {
        to.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    }
}

pub(crate) fn copy_response_headers(
    from: &HeaderMap,
    to: &mut HeaderMap,
    prefix: &str,
    device: &str,
    port: u16,
) {
    for (k, v) in from {
        let name = k.as_str();
        if HOP_BY_HOP.contains(&name) {
            continue;
        }
        let value = v.to_str().unwrap_or("");
        let rewritten = if k == header::LOCATION {
            rewrite_location(value, prefix, device, port)
        } else if k == header::SET_COOKIE {
            rewrite_cookie(value, prefix)
        } else {
            to.append(k.clone(), v.clone());
            continue;
        };
        if let Ok(v) = HeaderValue::from_str(&rewritten) {
            to.append(k.clone(), v);
        }
    }
}

/// A redirect to a path of the device (or to the device's own address) stays under the
/// prefix; relative ones already do; others are left alone.
fn rewrite_location(value: &str, prefix: &str, device: &str, port: u16) -> String {
    if let Some(path) = value.strip_prefix('/')
        && !value.starts_with("//")
    {
        return format!("{prefix}/{path}");
    }
    for own in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("{device}:{port}"),
    ] {
        for scheme in ["http://", "https://"] {
            if let Some(rest) = value.strip_prefix(&format!("{scheme}{own}")) {
                let rest = rest.strip_prefix('/').unwrap_or(rest);
                return format!("{prefix}/{rest}");
            }
        }
    }
    value.to_string()
}

/// A cookie's `Path` goes under the prefix (none: the prefix itself); its `Domain` goes (the
/// browser's host is the relay's).
fn rewrite_cookie(value: &str, prefix: &str) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut has_path = false;
    for (i, part) in value.split(';').enumerate() {
        let t = part.trim();
        if i == 0 {
            parts.push(t.to_string());
            continue;
        }
        let lower = t.to_ascii_lowercase();
        if lower.starts_with("domain=") {
            continue;
        }
        if lower.starts_with("path=") {
            has_path = true;
            let path = t.get(5..).unwrap_or("/");
            let path = path.strip_prefix('/').unwrap_or(path);
            parts.push(format!("Path={prefix}/{path}"));
            continue;
        }
        parts.push(t.to_string());
    }
    if !has_path {
        parts.push(format!("Path={prefix}/"));
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_stay_under_the_prefix() {
        let p = "/d/pi/8080";
        assert_eq!(
            rewrite_location("/login", p, "pi", 8080),
            "/d/pi/8080/login"
        );
        assert_eq!(rewrite_location("login", p, "pi", 8080), "login");
        assert_eq!(
            rewrite_location("http://localhost:8080/x?y=1", p, "pi", 8080),
            "/d/pi/8080/x?y=1"
        );
        assert_eq!(
            rewrite_location("https://example.com/", p, "pi", 8080),
            "https://example.com/"
        );
        assert_eq!(rewrite_location("//evil/", p, "pi", 8080), "//evil/");
    }

    #[test]
    fn cookies_stay_under_the_prefix() {
        let p = "/d/pi/8080";
        assert_eq!(
            rewrite_cookie("sid=1; Path=/; HttpOnly", p),
            "sid=1; Path=/d/pi/8080/; HttpOnly"
        );
        assert_eq!(
            rewrite_cookie("sid=1; Domain=pi.lan; path=/app", p),
            "sid=1; Path=/d/pi/8080/app"
        );
        assert_eq!(rewrite_cookie("sid=1", p), "sid=1; Path=/d/pi/8080/");
    }
}
