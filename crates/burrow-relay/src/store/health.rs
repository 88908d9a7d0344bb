//! What the registry keeps of each device's health, as the relay holding its session saw it:
//! how its last session ended, its reconnects, its last probe, its agent, and what the agent
//! reported about its link. Offline devices keep theirs until they are removed.

use serde::Serialize;

use super::{AuditRecord, DeviceRecord, rfc3339};
use crate::alerts::AlertRecord;

/// Why a device session ended, as stored and printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfflineReason {
    /// The device said goodbye (an SSH disconnect): its agent stopped, or `ssh` exited.
    Clean,
    /// The relay heard nothing for longer than the agent's declared keepalive schedule allows.
    KeepaliveTimeout,
    /// The connection broke without a goodbye (reset, closed, TCP gave up).
    Reset,
    /// A newer session of the device replaced this one.
    TakenOver,
    /// The device or the key it logged in with was removed.
    Revoked,
    /// Its key was seen from two places at once and quarantined.
    Quarantined,
    /// The relay stopped (or crashed) while the session was up.
    RelayStopped,
}

impl OfflineReason {
    /// Every reason, for the metrics and the docs.
    pub const ALL: [OfflineReason; 7] = [
        OfflineReason::Clean,
        OfflineReason::KeepaliveTimeout,
        OfflineReason::Reset,
        OfflineReason::TakenOver,
        OfflineReason::Revoked,
        OfflineReason::Quarantined,
        OfflineReason::RelayStopped,
    ];

    /// As stored and printed.
    pub fn as_str(self) -> &'static str {
        match self {
            OfflineReason::Clean => "clean",
            OfflineReason::KeepaliveTimeout => "keepalive-timeout",
            OfflineReason::Reset => "reset",
            OfflineReason::TakenOver => "taken-over",
            OfflineReason::Revoked => "revoked",
            OfflineReason::Quarantined => "quarantined",
            OfflineReason::RelayStopped => "relay-stopped",
        }
    }

    /// Whether a fault cut the session (the audit outcome `interrupted`), as opposed to the
    /// device ending it or the relay deciding to.
    pub fn is_fault(self) -> bool {
        matches!(
            self,
            OfflineReason::KeepaliveTimeout | OfflineReason::Reset | OfflineReason::RelayStopped
        )
    }
}

/// The last end-to-end probe the agent ran through the relay, as the relay timed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProbeResult {
    /// When it ran (RFC 3339 UTC in JSON).
    #[serde(serialize_with = "rfc3339")]
    pub at: Option<i64>,
    /// Whether the probe stream reached the agent and came back.
    pub ok: bool,
    /// The round trip from the relay to the agent and back, in milliseconds.
    pub rtt_ms: Option<u32>,
}

/// A device's health in listings.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct DeviceHealth {
    /// The device's software as its SSH identification names it (`burrow_0.1.0`,
    /// `OpenSSH_9.6`).
    pub agent: Option<String>,
    /// When the current session came up (online), or the last one (offline).
    #[serde(serialize_with = "rfc3339")]
    pub since: Option<i64>,
    /// When the last session ended.
    #[serde(serialize_with = "rfc3339")]
    pub ended: Option<i64>,
    /// How the last session ended (see [`OfflineReason`]).
    pub reason: Option<String>,
    /// Sessions that came up in the last 24 hours after an earlier session.
    pub reconnects_24h: u32,
    /// The last probe.
    pub probe: Option<ProbeResult>,
    /// The agent's last report in one line (`lte -97 dBm`, `no ModemManager`).
    pub link: Option<String>,
    /// When the agent last reported.
    #[serde(serialize_with = "rfc3339")]
    pub reported: Option<i64>,
    /// Signal strength from the last report (RSRP, else RSSI), whole dBm.
    pub signal_dbm: Option<i32>,
    /// Temperature from the last report, whole °C.
    pub temp_c: Option<i32>,
    /// A Raspberry Pi's throttling flags from the last report.
    pub throttled: Option<u32>,
}

/// Everything `device show` prints of one device.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceDetail {
    /// The device as `device ls` lists it.
    #[serde(flatten)]
    pub device: DeviceRecord,
    /// More about how the last session ended.
    pub reason_detail: Option<String>,
    /// Why the last probe failed.
    pub probe_error: Option<String>,
    /// The agent's last report, whole.
    pub report: Option<burrow_proto::health::Report>,
    /// The device's recent audit entries, newest last.
    pub events: Vec<AuditRecord>,
    /// Its recent alerts, newest last.
    pub alerts: Vec<AlertRecord>,
}

/// A health row as read, before it joins its device.
#[derive(Debug, Clone, Default)]
pub(crate) struct HealthRow {
    pub(crate) health: DeviceHealth,
    pub(crate) reason_detail: Option<String>,
    pub(crate) probe_error: Option<String>,
    pub(crate) report: Option<String>,
}

impl HealthRow {
    /// The row from its columns, in the order both backends select them (see
    /// [`HEALTH_COLUMNS`]).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        agent: Option<String>,
        since: Option<i64>,
        ended: Option<i64>,
        reason: Option<String>,
        probe: (Option<i64>, Option<bool>, Option<i64>),
        link: Option<String>,
        reported: Option<i64>,
        numbers: (Option<i32>, Option<i32>, Option<i64>),
    ) -> HealthRow {
        let (probe_at, probe_ok, rtt) = probe;
        let (signal_dbm, temp_c, throttled) = numbers;
        HealthRow {
            health: DeviceHealth {
                agent: agent.filter(|a| !a.is_empty()),
                since,
                ended,
                reason: reason.filter(|r| !r.is_empty()),
                reconnects_24h: 0,
                probe: probe_ok.map(|ok| ProbeResult {
                    at: probe_at,
                    ok,
                    rtt_ms: rtt.and_then(|r| u32::try_from(r).ok()),
                }),
                link,
                reported,
                signal_dbm,
                temp_c,
                throttled: throttled.and_then(|t| u32::try_from(t).ok()),
            },
            ..HealthRow::default()
        }
    }
}

/// What a listing joins to each device (`h`: its `device_health` row; `c`: its reconnects),
/// in [`HealthRow::new`]'s order followed by the reconnect count.
pub(crate) const LISTED_HEALTH: &str = "h.agent, h.since, h.ended, h.reason, h.probe_at, h.probe_ok, h.probe_rtt_ms, h.link, h.report_at, h.signal_dbm, h.temp_c, h.throttled, c.n";

/// The join of a listing's query that gives [`LISTED_HEALTH`]: `{since}` is the parameter that
/// holds the start of the reconnect window.
pub(crate) fn listing_join(since: &str) -> String {
    format!(
        "LEFT JOIN device_health h ON h.device = d.name
         LEFT JOIN (SELECT device, COUNT(*) AS n FROM device_connects WHERE at > {since} GROUP BY device) c
                ON c.device = d.name"
    )
}

/// How far back reconnects are counted, in seconds.
pub const RECONNECT_WINDOW_SECS: i64 = 86_400;

/// The start of the reconnect window, now.
pub(crate) fn reconnect_window_start() -> i64 {
    super::now() - RECONNECT_WINDOW_SECS
}
