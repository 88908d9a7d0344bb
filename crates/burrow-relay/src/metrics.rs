//! Prometheus metrics: counters kept as the relay works, served as text on `--metrics ADDR`.
//!
//! Names follow Prometheus conventions: a `burrow_` prefix, `_total` on counters, base units
//! (bytes, seconds). Each scrape is one request on its own connection; nothing is kept per
//! scrape. The page is served by the same HTTP stack as the web console (`web::http`).

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::Relay;
use crate::audit::Outcome;

/// Why an authentication failed, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuthFailure {
    /// A key not registered for that name.
    UnknownKey,
    /// A wrong password, or a password for a name with none.
    Password,
    /// Password login locked after repeated failures.
    Locked,
    /// Too many password checks at once from one address.
    Throttled,
    /// Anything else (a malformed name, a vanished operator, a protocol refusal).
    Other,
}

impl AuthFailure {
    const ALL: [AuthFailure; 5] = [
        AuthFailure::UnknownKey,
        AuthFailure::Password,
        AuthFailure::Locked,
        AuthFailure::Throttled,
        AuthFailure::Other,
    ];

    fn label(self) -> &'static str {
        match self {
            AuthFailure::UnknownKey => "unknown_key",
            AuthFailure::Password => "password",
            AuthFailure::Locked => "locked",
            AuthFailure::Throttled => "throttled",
            AuthFailure::Other => "other",
        }
    }
}

/// The relay's counters.
#[derive(Default)]
pub struct Metrics {
    streams_open: AtomicU64,
    streams_total: AtomicU64,
    bytes_to_device: AtomicU64,
    bytes_from_device: AtomicU64,
    auth_failures: [AtomicU64; 5],
    takeovers: AtomicU64,
    peer_streams: AtomicU64,
    password_checks: AtomicU64,
    refused_rate: AtomicU64,
    refused_per_ip: AtomicU64,
    unauthenticated_cut: AtomicU64,
    /// Streams ended, by outcome (in the order of [`Outcome::STREAM_ENDS`]).
    stream_ends: [AtomicU64; 5],
    health_reports: AtomicU64,
}

impl Metrics {
    /// A stream (operator, listener or device connect) started.
    pub(crate) fn stream_opened(&self) {
        self.streams_open.fetch_add(1, Ordering::Relaxed);
        self.streams_total.fetch_add(1, Ordering::Relaxed);
    }

    /// A stream ended after moving these bytes, with this outcome.
    pub(crate) fn stream_closed(&self, to_device: u64, from_device: u64, outcome: Outcome) {
        self.streams_open.fetch_sub(1, Ordering::Relaxed);
        if let Some(i) = Outcome::STREAM_ENDS.iter().position(|o| *o == outcome)
            && let Some(c) = self.stream_ends.get(i)
        {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.bytes_to_device.fetch_add(to_device, Ordering::Relaxed);
        self.bytes_from_device
            .fetch_add(from_device, Ordering::Relaxed);
    }

    /// An authentication failed.
    pub(crate) fn auth_failed(&self, why: AuthFailure) {
        let i = AuthFailure::ALL.iter().position(|a| *a == why).unwrap_or(4);
        if let Some(c) = self.auth_failures.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A password was hashed to be checked (whether or not its name has one).
    pub(crate) fn password_checked(&self) {
        self.password_checks.fetch_add(1, Ordering::Relaxed);
    }

    /// The gate closed a connection at accept, or cut the oldest unauthenticated one.
    pub(crate) fn admission(&self, event: crate::admission_log::Event) {
        use crate::admission_log::Event;
        use crate::gate::Refused;
        let counter = match event {
            Event::Refused(Refused::Rate) => &self.refused_rate,
            Event::Refused(Refused::PerIp) => &self.refused_per_ip,
            Event::Cut => &self.unauthenticated_cut,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A device session took over an older one.
    pub(crate) fn takeover(&self) {
        self.takeovers.fetch_add(1, Ordering::Relaxed);
    }

    /// An agent's health report was taken.
    pub(crate) fn health_report(&self) {
        self.health_reports.fetch_add(1, Ordering::Relaxed);
    }

    /// Health reports taken so far.
    pub(crate) fn health_reports(&self) -> u64 {
        self.health_reports.load(Ordering::Relaxed)
    }

    /// A stream was carried for another relay's operator.
    pub(crate) fn peer_stream(&self) {
        self.peer_streams.fetch_add(1, Ordering::Relaxed);
    }
}

/// The state a scrape reports beside the counters.
pub(crate) struct Gauges {
    pub(crate) devices_online: u64,
    pub(crate) devices_held: u64,
    pub(crate) operator_sessions: u64,
    pub(crate) audit_queue: u64,
    pub(crate) degraded: bool,
    pub(crate) disk_full: bool,
    pub(crate) audit_dropped: u64,
}

/// The metrics page.
pub(crate) fn render(m: &Metrics, db: &crate::store::db::DbStats, g: &Gauges) -> String {
    let mut s = String::new();
    let mut one = |name: &str, kind: &str, help: &str, value: String| {
        let _ = writeln!(
            s,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    one(
        "burrow_devices_online",
        "gauge",
        "Devices with a session on any relay of the cluster.",
        g.devices_online.to_string(),
    );
    one(
        "burrow_devices_held",
        "gauge",
        "Device sessions held by this relay.",
        g.devices_held.to_string(),
    );
    one(
        "burrow_operator_sessions",
        "gauge",
        "Operator connections to this relay.",
        g.operator_sessions.to_string(),
    );
    one(
        "burrow_streams_open",
        "gauge",
        "Streams this relay carries now.",
        get(&m.streams_open).to_string(),
    );
    one(
        "burrow_streams_total",
        "counter",
        "Streams this relay carried.",
        get(&m.streams_total).to_string(),
    );
    let _ = writeln!(
        s,
        "# HELP burrow_stream_bytes_total Bytes carried by streams, by direction.\n# TYPE burrow_stream_bytes_total counter\nburrow_stream_bytes_total{{direction=\"to_device\"}} {}\nburrow_stream_bytes_total{{direction=\"from_device\"}} {}",
        get(&m.bytes_to_device),
        get(&m.bytes_from_device)
    );
    let _ = writeln!(
        s,
        "# HELP burrow_streams_ended_total Streams ended, by outcome (as in the audit).\n# TYPE burrow_streams_ended_total counter"
    );
    for (outcome, count) in Outcome::STREAM_ENDS.iter().zip(&m.stream_ends) {
        let _ = writeln!(
            s,
            "burrow_streams_ended_total{{outcome=\"{}\"}} {}",
            outcome.as_str().replace('-', "_"),
            get(count)
        );
    }
    let _ = writeln!(
        s,
        "# HELP burrow_auth_failures_total Failed authentications, by reason.\n# TYPE burrow_auth_failures_total counter"
    );
    for (why, count) in AuthFailure::ALL.iter().zip(&m.auth_failures) {
        let _ = writeln!(
            s,
            "burrow_auth_failures_total{{reason=\"{}\"}} {}",
            why.label(),
            get(count)
        );
    }
    let _ = writeln!(
        s,
        "# HELP burrow_connections_refused_total Connections closed at accept, by reason: opened too fast from one address without logging in (rate), or too many unauthenticated from one address (per_ip).\n# TYPE burrow_connections_refused_total counter\nburrow_connections_refused_total{{reason=\"rate\"}} {}\nburrow_connections_refused_total{{reason=\"per_ip\"}} {}",
        get(&m.refused_rate),
        get(&m.refused_per_ip)
    );
    let mut one = |name: &str, kind: &str, help: &str, value: String| {
        let _ = writeln!(
            s,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    one(
        "burrow_unauthenticated_cut_total",
        "counter",
        "Unauthenticated connections cut, the oldest first, to make room for newer ones.",
        get(&m.unauthenticated_cut).to_string(),
    );
    one(
        "burrow_password_checks_total",
        "counter",
        "Passwords hashed to be checked: one per password attempt, whether or not the name exists.",
        get(&m.password_checks).to_string(),
    );
    one(
        "burrow_takeovers_total",
        "counter",
        "Device sessions that replaced an older session of the device.",
        get(&m.takeovers).to_string(),
    );
    one(
        "burrow_peer_streams_total",
        "counter",
        "Streams carried for operators of other relays.",
        get(&m.peer_streams).to_string(),
    );
    let _ = writeln!(
        s,
        "# HELP burrow_db_operation_seconds Time spent in database operations.\n# TYPE burrow_db_operation_seconds summary\nburrow_db_operation_seconds_sum {}\nburrow_db_operation_seconds_count {}",
        get(&db.micros) as f64 / 1e6,
        get(&db.operations)
    );
    let mut one = |name: &str, kind: &str, help: &str, value: String| {
        let _ = writeln!(
            s,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    one(
        "burrow_db_errors_total",
        "counter",
        "Database operations that failed.",
        get(&db.errors).to_string(),
    );
    one(
        "burrow_audit_queue_length",
        "gauge",
        "Audit and presence writes waiting for the database (in memory and on disk).",
        g.audit_queue.to_string(),
    );
    one(
        "burrow_degraded",
        "gauge",
        "1 while the relay runs degraded: its cluster database cannot be reached, or its disk takes no writes.",
        u8::from(g.degraded).to_string(),
    );
    one(
        "burrow_disk_full",
        "gauge",
        "1 while the disk under the registry takes no writes (audit entries are held in memory).",
        u8::from(g.disk_full).to_string(),
    );
    one(
        "burrow_audit_dropped_total",
        "counter",
        "Audit and presence writes dropped because the disk stayed full past the hold's bound.",
        g.audit_dropped.to_string(),
    );
    s
}

/// Serves `GET /metrics` on `listener` until `shutdown`, on the web console's HTTP stack (one
/// response per connection, as scrapers expect).
pub(crate) async fn serve(relay: Arc<Relay>, listener: TcpListener, shutdown: CancellationToken) {
    use crate::web::http::{respond, text};
    use hyper::{Method, StatusCode};
    crate::web::http::serve(listener, None, false, shutdown, move |req, _| {
        let relay = relay.clone();
        async move {
            match (req.method(), req.uri().path()) {
                (&Method::GET, "/metrics" | "/") => respond(
                    StatusCode::OK,
                    "text/plain; version=0.0.4",
                    relay.metrics_page().await,
                ),
                _ => text(
                    StatusCode::NOT_FOUND,
                    "not found: the metrics are at /metrics\n",
                ),
            }
        }
    })
    .await;
}
