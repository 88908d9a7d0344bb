//! Per-device Prometheus metrics, from the same listing as `device ls`: presence, reconnects,
//! probe, and what the agent reported. The only label is `device` (a registered name), so
//! the series stay bounded by the registry; offline devices keep theirs until removed.

use std::fmt::Write as _;

use crate::store::DeviceRecord;

/// One metric family: name, type, help, and each device's value (devices without one are
/// left out of the family).
struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    value: fn(&DeviceRecord, i64) -> Option<f64>,
}

const FAMILIES: [Family; 9] = [
    Family {
        name: "burrow_device_online",
        kind: "gauge",
        help: "1 while the device has a session on a relay of the cluster.",
        value: |d, _| Some(f64::from(u8::from(d.online))),
    },
    Family {
        name: "burrow_device_last_seen_timestamp_seconds",
        kind: "gauge",
        help: "When the device was last seen (now while online), seconds since the epoch.",
        value: |d, _| d.last_seen.map(|t| t as f64),
    },
    Family {
        name: "burrow_device_session_seconds",
        kind: "gauge",
        help: "How long the device's current session has been up.",
        value: |d, now| {
            d.health
                .since
                .filter(|_| d.online)
                .map(|s| now.saturating_sub(s).max(0) as f64)
        },
    },
    Family {
        name: "burrow_device_reconnects_24h",
        kind: "gauge",
        help: "Sessions the device started in the last 24 hours after an earlier one.",
        value: |d, _| Some(f64::from(d.health.reconnects_24h)),
    },
    Family {
        name: "burrow_device_probe_ok",
        kind: "gauge",
        help: "1 if the device's last end-to-end probe came back.",
        value: |d, _| d.health.probe.as_ref().map(|p| f64::from(u8::from(p.ok))),
    },
    Family {
        name: "burrow_device_probe_rtt_seconds",
        kind: "gauge",
        help: "Round trip of the device's last probe, relay to device and back.",
        value: |d, _| {
            d.health
                .probe
                .as_ref()
                .filter(|p| p.ok)
                .and_then(|p| p.rtt_ms)
                .map(|ms| f64::from(ms) / 1000.0)
        },
    },
    Family {
        name: "burrow_device_signal_dbm",
        kind: "gauge",
        help: "Cellular signal strength the device reported (RSRP, else RSSI).",
        value: |d, _| d.health.signal_dbm.map(f64::from),
    },
    Family {
        name: "burrow_device_temperature_celsius",
        kind: "gauge",
        help: "SoC temperature the device reported.",
        value: |d, _| d.health.temp_c.map(f64::from),
    },
    Family {
        name: "burrow_device_under_voltage",
        kind: "gauge",
        help: "1 while a Raspberry Pi reports under-voltage now.",
        value: |d, _| d.health.throttled.map(|t| f64::from(u8::from(t & 1 != 0))),
    },
];

/// The per-device families, and the count of health reports this relay took.
pub(crate) fn render(devices: &[DeviceRecord], health_reports: u64) -> String {
    let now = crate::store::now();
    let mut s = String::new();
    for f in &FAMILIES {
        let _ = writeln!(
            s,
            "# HELP {} {}\n# TYPE {} {}",
            f.name, f.help, f.name, f.kind
        );
        for d in devices {
            if let Some(v) = (f.value)(d, now) {
                let _ = writeln!(s, "{}{{device=\"{}\"}} {v}", f.name, d.name);
            }
        }
    }
    let _ = writeln!(
        s,
        "# HELP burrow_health_reports_total Health reports this relay took from agents.\n# TYPE burrow_health_reports_total counter\nburrow_health_reports_total {health_reports}"
    );
    s
}
