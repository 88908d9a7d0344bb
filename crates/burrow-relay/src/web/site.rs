//! What a request is, beyond its path: who sent it (through a trusted reverse proxy), whether
//! it came over TLS, and whether its `Origin` is this site.
//!
//! Only a proxy named by `--web-trusted-proxy` is believed, and only in two headers:
//! `X-Forwarded-For` (the client, the last address the proxy appended) and
//! `X-Forwarded-Proto` (`https` when the proxy terminated TLS). The `Host` header is taken as
//! sent: the proxy passes it through unchanged (nginx `proxy_set_header Host $host`).

use std::net::IpAddr;

use hyper::header::{self, HeaderMap};

use super::Web;
use super::http::Peer;

/// A request's origin facts.
#[derive(Debug, Clone)]
pub(crate) struct Site {
    /// The client, after a trusted proxy's `X-Forwarded-For`.
    pub(crate) client: IpAddr,
    /// Reached over TLS (here, or at a trusted proxy).
    pub(crate) secure: bool,
    /// `scheme://host[:port]` as the browser sees this site.
    pub(crate) origin: String,
}

impl Site {
    pub(crate) fn of(web: &Web, headers: &HeaderMap, peer: Peer) -> Site {
        let via_proxy = web
            .config
            .trusted_proxies
            .iter()
            .any(|c| c.contains(peer.addr.ip()));
        let mut client = peer.addr.ip();
        let mut secure = peer.tls;
        if via_proxy {
            // The proxy appends the address it saw last; anything before it the client wrote.
            if let Some(last) = headers
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .filter_map(|a| a.trim().parse::<IpAddr>().ok())
                .next_back()
            {
                client = last;
            }
            if let Some(proto) = headers
                .get("x-forwarded-proto")
                .and_then(|v| v.to_str().ok())
            {
                secure = proto.trim().eq_ignore_ascii_case("https");
            }
        }
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let scheme = if secure { "https" } else { "http" };
        Site {
            client,
            secure,
            origin: format!("{scheme}://{host}"),
        }
    }

    /// Whether the request's `Origin` is this site (or the configured public address). A
    /// request without one is refused: every browser sends it on POST and WebSocket.
    pub(crate) fn same_origin(&self, web: &Web, headers: &HeaderMap) -> bool {
        let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        origin.eq_ignore_ascii_case(&self.origin)
            || web
                .config
                .public_url
                .as_deref()
                .map(|u| u.trim_end_matches('/'))
                .is_some_and(|u| origin.eq_ignore_ascii_case(u))
    }

    /// Whether a login (password or link) may happen on this request: over TLS, or on a
    /// loopback listener, or when `--web-insecure` allows plain HTTP.
    pub(crate) fn may_log_in(&self, web: &Web) -> bool {
        self.secure || web.config.insecure || (web.loopback && self.client.is_loopback())
    }

    /// The client address as the audit names it.
    pub(crate) fn who(&self) -> String {
        format!("web {}", self.client)
    }
}
