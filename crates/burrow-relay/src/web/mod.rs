//! The web console (`burrow relay --web ADDR`): fleet, device, audit and recording pages, live
//! consoles in the browser, and the HTTP stack the metrics page shares.
//!
//! Secure by default: TLS (or loopback, or a trusted reverse proxy that terminates TLS), login
//! with the identity operators already have (a one-time link from `ssh OPERATOR@relay web`, or
//! the password with the SSH path's throttle), HttpOnly + SameSite=Strict session cookies, a
//! CSRF token on every change, the `Origin` checked on every change and WebSocket, a strict
//! Content-Security-Policy, and an audit entry for every page that reveals something.
//!
//! # Layout
//! - [`http`]: hyper's HTTP/1 server on TCP or TLS, response helpers, bodies.
//! - `site`: what a request is: client address (through a trusted proxy), scheme, origin.
//! - `auth`: one-time links, password login, sessions, CSRF tokens.
//! - `html`: escaping and the page layout.
//! - `pages`: the dispatch of logged-in requests, the device page, the audit.
//! - `alerts`: the alerts the relay keeps.
//! - `admin`: pending devices, join tokens, quarantined keys (admins only).
//! - `fleet_page`: the fleet page and its live rows (server-sent events).
//! - `recordings`: the recordings list, consoles to watch live, the player.
//! - `console`: live consoles over a WebSocket, on the same hubs as SSH.
//! - `console_remote`: the same for a device another relay of the cluster holds.
//! - `ws`: WebSocket handshake and frames.
//! - `hold`: open consoles and device-UI sockets held to the login and policy as they are now.
//! - `proxy`: device web UIs at `/d/NAME/PORT/`, each request passed on and audited.
//! - `hosts`: host routing, `PORT--NAME.DOMAIN`, and its login hand-over.
//! - `rewrite`: redirects and cookies of a device UI kept under its prefix.
//! - `assets`: the embedded scripts and styles, vendored ones included.
//! - `routes`: which handler answers which path.

mod admin;
mod alerts;
mod assets;
mod auth;
mod console;
mod console_remote;
mod fleet_page;
mod hold;
mod hosts;
mod html;
pub mod http;
mod pages;
mod proxy;
mod recordings;
mod rewrite;
mod routes;
mod site;
mod ws;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::Relay;

pub(crate) use auth::Links;

/// How long a login lasts, however it was used.
pub const DEFAULT_SESSION_LIFETIME: Duration = Duration::from_secs(8 * 3600);
/// How long a link from `ssh OPERATOR@relay web` can be used (once).
pub const LINK_LIFETIME: Duration = Duration::from_secs(120);

/// How the web console is served.
#[derive(Debug, Clone, Default)]
pub struct WebConfig {
    /// PEM certificate chain and private key (`--web-cert`, `--web-key`).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Serve a login form over plain HTTP on a non-loopback address (`--web-insecure`).
    pub insecure: bool,
    /// Reverse proxies whose `X-Forwarded-For` and `X-Forwarded-Proto` are believed
    /// (`--web-trusted-proxy`, addresses or CIDR ranges).
    pub trusted_proxies: Vec<Cidr>,
    /// The address people open, for the links `ssh OPERATOR@relay web` prints
    /// (`--web-url`); by default the listening address.
    pub public_url: Option<String>,
    /// How long a login lasts (`None`: [`DEFAULT_SESSION_LIFETIME`]).
    pub session_lifetime: Option<Duration>,
    /// Host routing: `PORT--NAME.DOMAIN` is device `NAME`'s web UI on `PORT`
    /// (`--web-device-domain`; one wildcard certificate `*.DOMAIN` covers every device).
    pub device_domain: Option<String>,
}

/// An address range, `ADDR` or `ADDR/BITS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    bits: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, bits) = match s.split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an address or ADDR/BITS range"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            None => max,
            Some(b) => b
                .parse::<u8>()
                .ok()
                .filter(|b| *b <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
        };
        Ok(Cidr { addr, bits })
    }
}

impl Cidr {
    /// Whether `ip` is in the range (an IPv4-mapped IPv6 address counts as its IPv4 one).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.bits)).unwrap_or(0);
                u32::from(a) & mask == u32::from(b) & mask
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.bits))
                    .unwrap_or(0);
                u128::from(a) & mask == u128::from(b) & mask
            }
            _ => false,
        }
    }
}

/// Checks `--web` settings before anything is bound: a login form goes over TLS, through a
/// trusted proxy, or stays on loopback, unless `--web-insecure` says otherwise.
pub fn check(listen: SocketAddr, config: &WebConfig) -> Result<(), String> {
    if config.tls.is_none()
        && config.trusted_proxies.is_empty()
        && !config.insecure
        && !listen.ip().is_loopback()
    {
        return Err(format!(
            "--web {listen} is not a loopback address and has no TLS: passwords and session cookies would cross the network in clear. Give --web-cert FILE --web-key FILE, or put it behind a reverse proxy that terminates TLS (--web-trusted-proxy ADDR), or serve it on 127.0.0.1; --web-insecure serves it anyway"
        ));
    }
    if let Some(url) = &config.public_url
        && !(url.starts_with("https://") || url.starts_with("http://"))
    {
        return Err(format!(
            "--web-url {url:?}: give the address people open, such as https://relay.example:8443"
        ));
    }
    Ok(())
}

/// The web console's state beside the relay's.
pub(crate) struct Web {
    pub(crate) relay: Arc<Relay>,
    pub(crate) config: WebConfig,
    /// Whether the listening address is loopback (plain HTTP is fine there).
    pub(crate) loopback: bool,
    pub(crate) sessions: auth::Sessions,
    pub(crate) host_codes: auth::HostCodes,
    /// Where the console itself is (device hosts send people there to log in).
    pub(crate) base: String,
}

/// A web console ready to serve: its listener checked, its certificate loaded.
pub struct Prepared {
    listener: TcpListener,
    local: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
    config: WebConfig,
}

/// Checks the settings against the listener's address and loads the certificate, so that a
/// mistake stops the relay at start rather than at the first login.
pub fn prepare(listener: TcpListener, config: WebConfig) -> Result<Prepared, String> {
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    check(local, &config)?;
    let tls = match &config.tls {
        Some((cert, key)) => Some(http::tls_acceptor(cert, key)?),
        None => None,
    };
    Ok(Prepared {
        listener,
        local,
        tls,
        config,
    })
}

/// Serves the web console until `shutdown`.
pub(crate) async fn serve(relay: Arc<Relay>, prepared: Prepared, shutdown: CancellationToken) {
    let Prepared {
        listener,
        local,
        tls,
        config,
    } = prepared;
    let base = config.public_url.clone().unwrap_or_else(|| {
        let scheme = if tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{local}")
    });
    relay
        .web_links
        .set_base(base.trim_end_matches('/').to_string());
    tracing::info!("web console on {base}");
    let web = Arc::new(Web {
        loopback: local.ip().is_loopback(),
        sessions: auth::Sessions::new(
            config.session_lifetime.unwrap_or(DEFAULT_SESSION_LIFETIME),
            relay.db.clone(),
        ),
        host_codes: auth::HostCodes::new(relay.db.clone()),
        base: base.trim_end_matches('/').to_string(),
        relay,
        config,
    });
    let pruner = {
        let web = web.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {
                        web.sessions.prune().await;
                    }
                }
            }
        })
    };
    http::serve(listener, tls, true, shutdown, move |req, peer| {
        let web = web.clone();
        async move { routes::handle(&web, req, peer).await }
    })
    .await;
    pruner.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_contain_what_they_should() {
        let cases = [
            ("10.0.0.0/8", "10.1.2.3", true),
            ("10.0.0.0/8", "11.0.0.1", false),
            ("192.0.2.7", "192.0.2.7", true),
            ("192.0.2.7", "192.0.2.8", false),
            ("0.0.0.0/0", "203.0.113.9", true),
            ("::1", "::1", true),
            ("2001:db8::/32", "2001:db8:1::5", true),
            ("2001:db8::/32", "2001:db9::5", false),
            ("127.0.0.1", "::ffff:127.0.0.1", true),
        ];
        for (range, ip, want) in cases {
            let cidr: Cidr = range.parse().unwrap();
            assert_eq!(cidr.contains(ip.parse().unwrap()), want, "{range} {ip}");
        }
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("relay".parse::<Cidr>().is_err());
    }

    #[test]
    fn plain_http_is_refused_off_loopback() {
        let plain = WebConfig::default();
        assert!(check("127.0.0.1:8080".parse().unwrap(), &plain).is_ok());
        assert!(check("[::1]:8080".parse().unwrap(), &plain).is_ok());
        let err = check("0.0.0.0:8080".parse().unwrap(), &plain).unwrap_err();
        assert!(err.contains("--web-cert"), "{err}");
        let insecure = WebConfig {
            insecure: true,
            ..WebConfig::default()
        };
        assert!(check("0.0.0.0:8080".parse().unwrap(), &insecure).is_ok());
        let proxied = WebConfig {
            trusted_proxies: vec!["127.0.0.1".parse().unwrap()],
            ..WebConfig::default()
        };
        assert!(check("0.0.0.0:8080".parse().unwrap(), &proxied).is_ok());
    }
}
