//! The registry: devices, operators, keys, policy, the online mirror and the audit trail.
//!
//! # Layout
//! - [`sqlite`]: the embedded backend of a single relay (the default), which the CLI can also
//!   open directly beside a running relay.
//! - [`postgres`]: the shared backend of a relay cluster.
//! - [`degraded`]: the registry copy and disk queue of a relay whose database is unreachable.
//! - [`migrate`]: a single relay's SQLite registry copied into PostgreSQL.
//! - [`health`]: what is kept of each device's health (last session's end, probe, report).
//! - [`audit_query`]: the audit trail's filters as one indexed query on either backend.
//! - [`db`]: the one async interface the relay uses, over either backend: reads run off the
//!   async workers, writes are queued in order and committed in batches.
//! - [`fleet`]: join tokens, the rules of an enrollment, imports and quarantined keys.

pub mod audit_query;
pub mod db;
pub mod degraded;
pub mod fleet;
pub mod health;
pub mod migrate;
pub mod postgres;
pub mod sqlite;
pub mod web;

pub use audit_query::{AuditEntry, AuditQuery};
pub use db::{Db, Write, Written};
pub use sqlite::Store;

/// The tables whose changes revoke or narrow what open sessions may do: both backends keep a
/// registry version that triggers on these tables move.
pub(crate) const REGISTRY_TABLES: [&str; 7] = [
    "devices",
    "device_keys",
    "device_allow_connect",
    "device_allow_listen",
    "operators",
    "operator_keys",
    "operator_allow",
];

/// The columns of `devices` whose update is a registry change: every column but `last_seen`,
/// which each connect and disconnect sets. A column added to `devices` must be added here (a
/// test compares this list with the table).
pub(crate) const DEVICE_COLUMNS_THAT_COUNT: [&str; 3] = ["name", "created", "pending"];

/// A database error with the operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("database error while {doing}: {source}")]
    Sqlite {
        /// What was being done.
        doing: &'static str,
        /// The SQLite error.
        source: rusqlite::Error,
    },
    /// PostgreSQL failed or cannot be reached.
    #[error("PostgreSQL error while {doing}: {why}")]
    Postgres {
        /// What was being done.
        doing: &'static str,
        /// What went wrong.
        why: String,
    },
    /// The database is on a newer schema than this relay knows.
    #[error("{0}")]
    Schema(String),
    /// The named device does not exist.
    #[error("no device named {0:?} (list them with `burrow relay device ls`)")]
    NoDevice(String),
    /// The named operator does not exist.
    #[error("no operator named {0:?} (list them with `burrow relay operator ls`)")]
    NoOperator(String),
    /// The named join token does not exist.
    #[error("no join token {0:?} (list them with `burrow relay token ls`)")]
    NoToken(String),
    /// The name is already in use.
    #[error("{0}")]
    Conflict(String),
}

/// The refusal of a key that `holder_kind` `holder` already has, for `owner_kind` `owner`.
pub(crate) fn key_held(
    fingerprint: &str,
    holder_kind: &str,
    holder: &str,
    owner_kind: &str,
    owner: &str,
) -> StoreError {
    StoreError::Conflict(format!(
        "key {fingerprint} is already the key of {holder_kind} {holder:?}; a key belongs to one device or operator (whoever holds it could log in as both). Make {owner_kind} {owner:?} a key of its own (`ssh-keygen -t ed25519 -f FILE`), or remove it from {holder_kind} {holder:?} first"
    ))
}

pub(crate) fn sql(doing: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError::Sqlite { doing, source }
}

/// A device as the registry knows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeviceRecord {
    /// Device name.
    pub name: String,
    /// SHA256 fingerprints of its keys.
    pub fingerprints: Vec<String>,
    /// When last seen: now while online, else when its session ended (seconds since the
    /// epoch; RFC 3339 UTC in JSON).
    #[serde(serialize_with = "rfc3339")]
    pub last_seen: Option<i64>,
    /// Whether a session is up (as mirrored by the running relay).
    pub online: bool,
    /// Endpoint ports it currently exposes.
    pub endpoints: Vec<u16>,
    /// Relay-side targets it may open, `HOST:PORT`.
    pub allow_connect: Vec<String>,
    /// Real relay listeners it may hold, `ADDR:PORT`.
    pub allow_listen: Vec<String>,
    /// The relay holding its session, in a cluster (`None` on a single relay).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay: Option<String>,
    /// It waits for `burrow relay device approve` (enrolled with an `--approve` token).
    pub pending: bool,
    /// Its labels (`site=osaka`).
    pub labels: burrow_proto::labels::Labels,
    /// Fingerprints of its keys that were seen from two places at once.
    pub quarantined: Vec<String>,
    /// Its health: how its last session ended, reconnects, last probe, agent, link.
    pub health: health::DeviceHealth,
}

/// Whose key a login presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Principal {
    /// The device of that name.
    Device {
        /// It waits for approval: its agent is told so, and nothing more.
        pending: bool,
        /// The key was seen from two places at once.
        quarantined: bool,
    },
    /// The operator of that name.
    Operator,
}

/// An operator as the registry knows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OperatorRecord {
    /// Operator name.
    pub name: String,
    /// SHA256 fingerprints of its keys.
    pub fingerprints: Vec<String>,
    /// Whether a password is set.
    pub has_password: bool,
    /// Device name patterns it may reach.
    pub allow: Vec<String>,
    /// Consoles only, no endpoint forwarding.
    pub console_only: bool,
    /// Password login locked after repeated failures, until then (seconds since the epoch).
    #[serde(serialize_with = "rfc3339")]
    pub locked_until: Option<i64>,
    /// What it may do in the web console (and whether it may write to consoles).
    pub role: Role,
    /// Its TOTP secret (base32), asked on password logins once enrolled.
    #[serde(skip)]
    pub totp_secret: Option<burrow_proto::secret::Secret>,
    /// Whether TOTP is enrolled.
    pub totp: bool,
}

/// What an operator may do beyond reaching its devices (`operator set --role`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Sees what its policy allows; never writes to a console.
    Viewer,
    /// Sees and uses what its policy allows (the default).
    #[default]
    Operator,
    /// Also tokens, approvals and policy edits.
    Admin,
}

impl Role {
    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// A stored role; anything unknown reads as the least one.
    pub fn parse_stored(s: &str) -> Role {
        s.parse().unwrap_or(Role::Viewer)
    }

    /// Whether it may write to consoles and open device streams.
    pub fn may_write(self) -> bool {
        self != Role::Viewer
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            _ => Err(format!(
                "{s:?} is not a role: use viewer, operator or admin"
            )),
        }
    }
}

/// What a password login is checked against.
pub struct PasswordLogin {
    /// The argon2 hash.
    pub hash: String,
    /// Locked after repeated wrong passwords until then (seconds since the epoch).
    pub locked_until: Option<i64>,
}

/// One audit entry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AuditRecord {
    /// Seconds since the epoch.
    pub at: i64,
    /// What happened (`auth`, `endpoint-add`, `takeover`, `stream`, …).
    pub event: String,
    /// Who did it.
    pub who: String,
    /// What it was done to.
    pub target: String,
    /// `ok` or `denied` / `failed`.
    pub outcome: String,
    /// Why, and numbers.
    pub detail: String,
    /// The device the entry concerns, if any (`relay audit --device`; see
    /// [`crate::audit_subject`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// The operator the entry concerns, if any (`relay audit --operator`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<String>,
}

/// Why what a crash left open ended, bounded by when the relay was last known alive.
pub(crate) fn leftover_reason(last_alive: i64) -> String {
    format!(
        "cut by a fault: the relay stopped (crashed or was killed) before it ended; it was last known alive at {}",
        burrow_proto::time::format_rfc3339(last_alive)
    )
}

/// Labels read back as `key=value` rows.
pub(crate) fn fleet_labels(rows: Option<Vec<String>>) -> burrow_proto::labels::Labels {
    rows.unwrap_or_default()
        .into_iter()
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

/// Now, in seconds since the epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Serializes seconds since the epoch as RFC 3339 UTC (`2026-11-23T12:03:00Z`).
pub(crate) fn rfc3339<S: serde::Serializer>(at: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
    match at {
        Some(t) => s.serialize_str(&burrow_proto::time::format_rfc3339(*t)),
        None => s.serialize_none(),
    }
}
