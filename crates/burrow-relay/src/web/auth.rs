//! Logging in to the web console with the identity an operator already has, and the session
//! that follows: one-time links, the password (through the SSH path's throttle), session
//! cookies and CSRF tokens.
//!
//! A one-time link carries its secret in the URL's fragment, which browsers never send: no
//! proxy or relay log holds it. The page it opens posts the secret, gets the session cookie,
//! and moves on to the fleet page. Links, sessions and host codes are kept in the database
//! under the hash of their secrets (`store::web`): every relay of a cluster knows them.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use hyper::header::{self, HeaderMap, HeaderValue};

use super::LINK_LIFETIME;
use crate::store::StoreError;
use crate::store::db::Db;
use crate::store::web::{WebKind, WebLogin, hash_secret};

/// A fresh random secret as 64 hex digits.
pub(crate) fn secret() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares two secrets in time independent of where they differ.
pub(crate) fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Links most outstanding at once (a stuck script calling `web` in a loop is cut off here).
const MAX_LINKS: u64 = 10_000;

/// Seconds since the epoch, `d` from now.
fn expires_in(d: Duration) -> i64 {
    crate::store::now() + i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2)
}

/// One-time login links, made by `ssh OPERATOR@relay web`. Kept in the database: a link made
/// on one relay of a cluster works on any (behind one address, a load balancer picks).
#[derive(Default)]
pub(crate) struct Links {
    base: Mutex<Option<String>>,
}

impl Links {
    /// Where the web console is served (set when it starts).
    pub(crate) fn set_base(&self, base: String) {
        *self.base.lock().unwrap_or_else(|e| e.into_inner()) = Some(base);
    }

    /// A link for `operator`, or why there is none.
    pub(crate) async fn create(&self, db: &Db, operator: &str) -> Result<String, String> {
        let base = self
            .base
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or("the web console is off on this relay (it is started with --web ADDR)")?;
        let left = db
            .web_prune(WebKind::Link)
            .await
            .map_err(|e| format!("no link: {e}"))?;
        if left >= MAX_LINKS {
            return Err("too many login links outstanding; try again in two minutes".into());
        }
        let token = secret();
        let login = WebLogin {
            operator: operator.to_string(),
            csrf: String::new(),
            scope: None,
            expires: expires_in(LINK_LIFETIME),
        };
        db.web_put(WebKind::Link, &hash_secret(&token), &login)
            .await
            .map_err(|e| format!("no link: {e}"))?;
        Ok(format!("{base}/login/link#{token}"))
    }

    /// The operator a link was made for, if it is still usable; it is used up either way.
    pub(crate) async fn redeem(&self, db: &Db, token: &str) -> Option<String> {
        db.web_take(WebKind::Link, &hash_secret(token))
            .await
            .ok()
            .flatten()
            .map(|l| l.operator)
    }
}

/// A logged-in browser.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub(crate) operator: String,
    /// Sent back with every change (form field `csrf` or header `X-CSRF-Token`).
    pub(crate) csrf: String,
}

/// The session cookie's name.
pub(crate) const COOKIE: &str = "burrow_session";
/// The cookie of a session on one device's host (host routing).
pub(crate) const DEVICE_COOKIE: &str = "burrow_device";

/// How long a code handing a login to a device's host can be used (once).
const HOST_CODE_LIFETIME: Duration = Duration::from_secs(30);

/// Codes that hand an operator's login to one device's host: made on the console's origin,
/// used once on the device's.
pub(crate) struct HostCodes {
    db: Db,
}

impl HostCodes {
    pub(crate) fn new(db: Db) -> Self {
        HostCodes { db }
    }

    pub(crate) async fn create(
        &self,
        operator: &str,
        device: &str,
        port: u16,
    ) -> Result<String, StoreError> {
        let code = secret();
        let login = WebLogin {
            operator: operator.to_string(),
            csrf: String::new(),
            scope: Some((device.to_string(), port)),
            expires: expires_in(HOST_CODE_LIFETIME),
        };
        self.db
            .web_put(WebKind::HostCode, &hash_secret(&code), &login)
            .await?;
        Ok(code)
    }

    /// The operator a code was made for, if it is for `device:port` and still usable; it is
    /// used up either way.
    pub(crate) async fn redeem(&self, code: &str, device: &str, port: u16) -> Option<String> {
        let l = self
            .db
            .web_take(WebKind::HostCode, &hash_secret(code))
            .await
            .ok()
            .flatten()?;
        (l.scope == Some((device.to_string(), port))).then_some(l.operator)
    }
}

/// The logged-in browsers, kept in the database (every relay of a cluster knows them; a
/// restart logs no one out). Each is stored under the hash of its cookie.
pub(crate) struct Sessions {
    lifetime: Duration,
    db: Db,
}

impl Sessions {
    pub(crate) fn new(lifetime: Duration, db: Db) -> Self {
        Sessions { lifetime, db }
    }

    /// Starts a session for `operator`; returns its cookie value.
    pub(crate) async fn start(&self, operator: &str) -> Result<String, StoreError> {
        self.start_in(operator, None).await
    }

    /// Starts a session of `device:port`'s host for `operator`; returns its cookie value.
    pub(crate) async fn start_scoped(
        &self,
        operator: &str,
        device: &str,
        port: u16,
    ) -> Result<String, StoreError> {
        self.start_in(operator, Some((device.to_string(), port)))
            .await
    }

    async fn start_in(
        &self,
        operator: &str,
        scope: Option<(String, u16)>,
    ) -> Result<String, StoreError> {
        let id = secret();
        let login = WebLogin {
            operator: operator.to_string(),
            csrf: secret(),
            scope,
            expires: expires_in(self.lifetime),
        };
        self.db
            .web_put(WebKind::Session, &hash_secret(&id), &login)
            .await?;
        Ok(id)
    }

    /// The session a request's cookie names, if it has not ended.
    pub(crate) async fn get(&self, headers: &HeaderMap) -> Option<(String, Session)> {
        self.find(cookie(headers, COOKIE)?, None).await
    }

    /// The session of `device:port`'s host a request's cookie names, if it has not ended.
    pub(crate) async fn get_scoped(
        &self,
        headers: &HeaderMap,
        device: &str,
        port: u16,
    ) -> Option<(String, Session)> {
        self.find(
            cookie(headers, DEVICE_COOKIE)?,
            Some((device.to_string(), port)),
        )
        .await
    }

    async fn find(&self, id: &str, scope: Option<(String, u16)>) -> Option<(String, Session)> {
        // A cookie of ours is 64 hex digits; anything else is not looked up.
        if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let l = self
            .db
            .web_get(WebKind::Session, &hash_secret(id))
            .await
            .ok()
            .flatten()?;
        (l.scope == scope).then(|| {
            (
                id.to_string(),
                Session {
                    operator: l.operator,
                    csrf: l.csrf,
                },
            )
        })
    }

    /// Whether session `id` has not ended.
    pub(crate) async fn alive(&self, id: &str) -> bool {
        self.db
            .web_get(WebKind::Session, &hash_secret(id))
            .await
            .is_ok_and(|l| l.is_some())
    }

    pub(crate) async fn end(&self, id: &str) {
        if let Err(e) = self.db.web_end(&hash_secret(id)).await {
            tracing::warn!("a web session was not ended: {e}");
        }
    }

    /// Ends every session of `operator` (removed from the registry).
    pub(crate) async fn end_operator(&self, operator: &str) {
        if let Err(e) = self.db.web_end_operator(operator).await {
            tracing::warn!("operator {operator}'s web sessions were not ended: {e}");
        }
    }

    /// Deletes expired sessions, links and codes.
    pub(crate) async fn prune(&self) {
        let _ = self.db.web_prune(WebKind::Session).await;
    }

    /// The `Set-Cookie` value that starts a session.
    pub(crate) fn set_cookie(&self, id: &str, secure: bool) -> HeaderValue {
        self.cookie_named(COOKIE, id, secure)
    }

    /// The `Set-Cookie` value that starts a device host's session (host-only: no Domain).
    pub(crate) fn set_device_cookie(&self, id: &str, secure: bool) -> HeaderValue {
        self.cookie_named(DEVICE_COOKIE, id, secure)
    }

    fn cookie_named(&self, name: &str, id: &str, secure: bool) -> HeaderValue {
        let secure = if secure { "; Secure" } else { "" };
        HeaderValue::from_str(&format!(
            "{name}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
            self.lifetime.as_secs()
        ))
        .unwrap_or_else(|_| HeaderValue::from_static(""))
    }
}

/// The `Set-Cookie` value that ends a session.
pub(crate) fn clear_cookie() -> HeaderValue {
    HeaderValue::from_static("burrow_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// The value of cookie `name` in a request.
pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Whether a change carries the session's CSRF token (header or form field).
pub(crate) fn csrf_ok(session: &Session, headers: &HeaderMap, form: &[(String, String)]) -> bool {
    let given = headers
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .or_else(|| {
            form.iter()
                .find(|(k, _)| k == "csrf")
                .map(|(_, v)| v.as_str())
        });
    given.is_some_and(|g| same_secret(g, &session.csrf))
}

/// Decodes an `application/x-www-form-urlencoded` body (bounded by the body limit).
pub(crate) fn parse_form(body: &[u8]) -> Vec<(String, String)> {
    body.split(|b| *b == b'&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let mut it = pair.splitn(2, |b| *b == b'=');
            let k = percent_decode(it.next().unwrap_or_default());
            let v = percent_decode(it.next().unwrap_or_default());
            (k, v)
        })
        .collect()
}

/// Decodes `%XX` and `+` (form encoding); bad escapes stay as they are.
pub(crate) fn percent_decode(s: &[u8]) -> String {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while let Some(&b) = s.get(i) {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = s
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                if let Some(v) = hex {
                    out.push(v);
                    i += 2;
                } else {
                    out.push(b'%');
                }
            }
            _ => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The value of `name` in a decoded form or query.
pub(crate) fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The password path's peer: the client address with no port (the throttle counts by
/// address).
pub(crate) fn peer_of(client: std::net::IpAddr) -> SocketAddr {
    SocketAddr::new(client, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_decode() {
        let f = parse_form(b"name=alice&password=a+b%26c%3D&bad=%zz&empty=");
        assert_eq!(field(&f, "name"), Some("alice"));
        assert_eq!(field(&f, "password"), Some("a b&c="));
        assert_eq!(field(&f, "bad"), Some("%zz"));
        assert_eq!(field(&f, "empty"), Some(""));
        assert_eq!(percent_decode(b"%"), "%");
        assert_eq!(percent_decode(b"%4"), "%4");
    }

    #[tokio::test]
    async fn links_work_once_and_sessions_end() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::sqlite(&dir.path().join("relay.db")).unwrap();
        let links = Links::default();
        assert!(
            links.create(&db, "alice").await.is_err(),
            "no base: the console is off"
        );
        links.set_base("https://relay.example".into());
        let url = links.create(&db, "alice").await.unwrap();
        let token = url.split_once('#').unwrap().1;
        assert!(url.starts_with("https://relay.example/login/link#"));
        assert_eq!(links.redeem(&db, token).await.as_deref(), Some("alice"));
        assert_eq!(links.redeem(&db, token).await, None, "a link works once");
        assert_eq!(links.redeem(&db, "nonsense").await, None);

        let sessions = Sessions::new(Duration::from_secs(60), db.clone());
        let id = sessions.start("alice").await.unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("{COOKIE}={id}")).unwrap(),
        );
        let (_, s) = sessions.get(&h).await.expect("the session");
        assert_eq!(s.operator, "alice");
        assert!(
            sessions.get_scoped(&h, "pi", 80).await.is_none(),
            "the console's session is not a device host's"
        );
        sessions.end_operator("alice").await;
        assert!(sessions.get(&h).await.is_none(), "ended with its operator");
    }

    #[test]
    fn cookies_are_found_by_name() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; burrow_session=xyz"),
        );
        assert_eq!(cookie(&h, COOKIE), Some("xyz"));
        assert_eq!(cookie(&h, "b"), None);
    }
}
