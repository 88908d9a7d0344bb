//! The web console's logins, kept in the database so that every relay of a cluster knows
//! them (any relay serves any browser) and a relay restart logs no one out: sessions,
//! one-time links and the codes that hand a login to a device's host. Each is stored under
//! the SHA-256 of its secret, so that reading the database logs no one in.

/// What a stored login is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebKind {
    /// A logged-in browser (its cookie).
    Session,
    /// A link from `ssh OPERATOR@relay web`, used once.
    Link,
    /// A code handing a login to one device's host, used once.
    HostCode,
}

impl WebKind {
    /// As stored.
    pub fn as_str(self) -> &'static str {
        match self {
            WebKind::Session => "session",
            WebKind::Link => "link",
            WebKind::HostCode => "host-code",
        }
    }
}

/// One stored login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebLogin {
    /// The operator it logs in.
    pub operator: String,
    /// A session's CSRF token (empty for links and codes).
    pub csrf: String,
    /// A session or code of one device's host: (device, port).
    pub scope: Option<(String, u16)>,
    /// When it stops working (seconds since the epoch).
    pub expires: i64,
}

/// Schema step (both backends): the logins, found by hash, ended by operator.
pub(crate) const WEB_SCHEMA: &str = "
CREATE TABLE web_logins (
    id_hash TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    operator TEXT NOT NULL,
    csrf TEXT NOT NULL DEFAULT '',
    device TEXT,
    port INTEGER,
    expires BIGINT NOT NULL
);
CREATE INDEX web_logins_operator ON web_logins (operator);
CREATE INDEX web_logins_expires ON web_logins (expires);
";

/// The SHA-256 of a secret, in hex: what is stored (as join tokens' secrets are).
pub fn hash_secret(secret: &str) -> String {
    crate::enroll::hash_secret(secret)
}

/// A stored row's columns as read: operator, csrf, device, port, expires.
pub(crate) fn login_of(
    operator: String,
    csrf: String,
    device: Option<String>,
    port: Option<i32>,
    expires: i64,
) -> WebLogin {
    WebLogin {
        operator,
        csrf,
        scope: device.zip(port.and_then(|p| u16::try_from(p).ok())),
        expires,
    }
}
