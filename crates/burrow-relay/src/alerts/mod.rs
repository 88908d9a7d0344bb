//! Alerts: a projection of the audit trail plus presence timers, kept in the registry and
//! posted to webhooks.
//!
//! Every relay writes its audit entries to the registry; one relay (the only one on SQLite,
//! the holder of an advisory lock on PostgreSQL) reads them in order and turns some into
//! alerts: a device offline past a grace time, back online after such an alert, flapping
//! (damped), a quarantined key, a token used or refused, an operator locked, a console pattern.
//! Each alert has a key that makes it once only (a relay taking over the projection reads a few
//! seconds again), and is stored with its deliveries before anything is posted: a receiver that
//! is down gets everything once it is back, oldest first, tried with a growing pause.
//!
//! # Layout
//! - `config`: `[alerts]` and `[[alert]]` in the relay's config file, and the flags.
//! - `project`: audit entries and timers into alerts.
//! - `deliver`: posting to webhooks (JSON, or Alertmanager's API), with backoff.

pub mod config;
mod deliver;
mod project;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

pub use config::{AlertsConfig, Format, Webhook};

use crate::Relay;
use crate::store::rfc3339;

/// What an alert is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A device offline past the grace time.
    DeviceOffline,
    /// A device back online after it was alerted offline.
    DeviceOnline,
    /// A device reconnecting again and again.
    Flapping,
    /// A key seen from two places at once was quarantined.
    Quarantine,
    /// A join token was used.
    TokenUsed,
    /// A join token was refused.
    TokenRefused,
    /// An operator's password login was locked.
    OperatorLocked,
    /// A console printed a pattern its rules watch for.
    ConsolePattern,
}

impl Kind {
    /// Every kind, for `events = [...]` and the docs.
    pub const ALL: [Kind; 8] = [
        Kind::DeviceOffline,
        Kind::DeviceOnline,
        Kind::Flapping,
        Kind::Quarantine,
        Kind::TokenUsed,
        Kind::TokenRefused,
        Kind::OperatorLocked,
        Kind::ConsolePattern,
    ];

    /// As stored, printed and filtered on.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::DeviceOffline => "device-offline",
            Kind::DeviceOnline => "device-online",
            Kind::Flapping => "flapping",
            Kind::Quarantine => "quarantine",
            Kind::TokenUsed => "token-used",
            Kind::TokenRefused => "token-refused",
            Kind::OperatorLocked => "operator-locked",
            Kind::ConsolePattern => "console-pattern",
        }
    }

    /// The kind named `name`.
    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// How urgent it is.
    pub fn severity(self) -> &'static str {
        match self {
            Kind::Quarantine => "critical",
            Kind::DeviceOnline | Kind::TokenUsed => "info",
            _ => "warning",
        }
    }
}

/// One alert delivery to one webhook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Delivery {
    /// The webhook (its host, and a hash of its whole URL: URLs often hold secrets).
    pub target: String,
    /// `pending`, `delivered` or `gave-up`.
    pub state: String,
    /// Posts tried.
    pub attempts: u32,
    /// When it was delivered or given up.
    #[serde(serialize_with = "rfc3339")]
    pub done_at: Option<i64>,
    /// Why the last post failed.
    pub last_error: Option<String>,
}

/// An alert as the relay keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AlertRecord {
    /// Its number, in the order alerts were raised.
    pub id: i64,
    /// When it was raised (RFC 3339 UTC in JSON).
    #[serde(serialize_with = "rfc3339")]
    pub at: Option<i64>,
    /// What it is about (see [`Kind`]).
    pub kind: String,
    /// The device it is about, if any.
    pub device: Option<String>,
    /// `info`, `warning` or `critical`.
    pub severity: String,
    /// One line.
    pub summary: String,
    /// The audit entry or timer behind it.
    pub detail: String,
    /// The relay that raised it.
    pub relay: String,
    /// Its deliveries, one per webhook that takes its kind.
    pub deliveries: Vec<Delivery>,
}

/// An alert raised by the projection, before it is stored.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAlert {
    /// What makes it once only (`audit:1234`, `offline:pi:1700000000`).
    pub key: String,
    /// When (seconds since the epoch).
    pub at: i64,
    /// What.
    pub kind: Kind,
    /// About which device.
    pub device: Option<String>,
    /// One line.
    pub summary: String,
    /// More.
    pub detail: String,
    /// The webhooks it goes to.
    pub targets: Vec<String>,
}

/// What the projection keeps per device between audit entries: the offline timer and the
/// flapping damper.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceAlertState {
    /// The device.
    pub device: String,
    /// Since when it is offline (its `offline` entry).
    pub offline_at: Option<i64>,
    /// That entry's id: what makes its offline alert once only.
    pub offline_id: Option<i64>,
    /// When it is alerted offline unless it comes back first.
    pub offline_due: Option<i64>,
    /// Whether it was alerted offline (so that its return is alerted).
    pub offline_alerted: bool,
    /// Offline alerts wait until then: the device is flapping.
    pub flapping_until: Option<i64>,
}

impl DeviceAlertState {
    /// Whether nothing is pending (the row can go).
    pub fn is_idle(&self, now: i64) -> bool {
        self.offline_due.is_none()
            && !self.offline_alerted
            && self.flapping_until.is_none_or(|t| t <= now)
    }
}

/// One step of the projection, stored in one transaction: new alerts with their deliveries,
/// changed device states, and how far the audit trail was read.
#[derive(Debug, Clone, Default)]
pub struct AlertChanges {
    /// Alerts raised (one already stored under the same key is left alone).
    pub alerts: Vec<NewAlert>,
    /// Device states to store (idle ones are removed).
    pub states: Vec<DeviceAlertState>,
    /// Audit entries up to this id are read.
    pub cursor: Option<i64>,
    /// The relay raising them.
    pub relay: String,
}

/// Raises and delivers alerts until `shutdown`: projection on the relay that leads, and one
/// deliverer per webhook.
pub(crate) async fn run(relay: Arc<Relay>, shutdown: CancellationToken) {
    let leader = Arc::new(AtomicBool::new(false));
    // Raised alerts wake the deliverers (a counter each of them watches: none is missed).
    let (wake, _) = tokio::sync::watch::channel(0u64);
    let tls = relay.config.alerts.tls();
    let client = Arc::new(burrow_io::http::Client {
        timeout: deliver::POST_TIMEOUT,
        tls,
        user_agent: format!("burrow-relay/{}", env!("CARGO_PKG_VERSION")),
    });
    for hook in relay.config.alerts.webhooks.clone() {
        tokio::spawn(deliver::run(
            relay.clone(),
            hook,
            client.clone(),
            leader.clone(),
            wake.subscribe(),
            shutdown.clone(),
        ));
    }
    project::run(relay, leader, wake, shutdown).await;
}

/// Whether this relay leads the projection now.
fn leads(leader: &AtomicBool) -> bool {
    leader.load(Ordering::Relaxed)
}
