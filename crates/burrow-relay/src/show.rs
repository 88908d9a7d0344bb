//! `device show NAME` and `relay alerts` as text, and the health columns of `device ls`.

use burrow_proto::health::{ModemManager, Report, throttled_flags};
use burrow_proto::time::format_rfc3339;

use crate::alerts::AlertRecord;
use crate::store::DeviceRecord;
use crate::store::health::DeviceDetail;

/// A span as people read it: `40s`, `5m`, `2h 3m`, `3d 4h`.
pub fn span(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86_400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// `device ls`'s STATE column: `pending` (waiting for approval), `online`, or `offline` with
/// how the last session ended.
pub fn state(d: &DeviceRecord) -> String {
    if d.pending {
        return "pending".into();
    }
    match (d.online, &d.health.reason) {
        (true, _) => "online".into(),
        (false, Some(reason)) => format!("offline ({reason})"),
        (false, None) => "offline".into(),
    }
}

/// `device ls`'s FOR column: how long the session has been up, or the device gone.
pub fn state_for(d: &DeviceRecord, now: i64) -> String {
    let since = if d.online {
        d.health.since
    } else {
        d.health.ended.or(d.last_seen)
    };
    since.map_or_else(|| "-".into(), |t| span(now - t))
}

/// `device ls`'s PROBE column: `ok 85ms`, `failed`, or `-`.
pub fn probe(d: &DeviceRecord) -> String {
    match &d.health.probe {
        Some(p) if p.ok => match p.rtt_ms {
            Some(ms) => format!("ok {ms}ms"),
            None => "ok".into(),
        },
        Some(_) => "failed".into(),
        None => "-".into(),
    }
}

/// `device show` as text.
pub fn render_detail(d: &DeviceDetail) -> String {
    let mut out = format!("device {}\n", d.device.name);
    for (key, value) in detail_lines(d) {
        out.push_str(&format!("  {key:<12} {value}\n"));
    }
    if !d.events.is_empty() {
        out.push_str("recent events\n");
        for e in &d.events {
            out.push_str(&format!(
                "  {} {:<14} {:<11} {:<22} {}\n",
                format_rfc3339(e.at),
                e.event,
                e.outcome,
                e.target,
                e.detail
            ));
        }
    }
    if !d.alerts.is_empty() {
        out.push_str("alerts\n");
        out.push_str(&render_alert_lines(&d.alerts, "  "));
    }
    out
}

/// What `device show` says of a device's state and health, key by key (the web console's
/// device page shows the same).
pub fn detail_lines(d: &DeviceDetail) -> Vec<(&'static str, String)> {
    let now = crate::store::now();
    let dev = &d.device;
    let h = &dev.health;
    let mut lines = Vec::new();
    let mut line = |key: &'static str, value: String| lines.push((key, value));
    let state = if dev.online {
        format!(
            "online for {}{}",
            state_for(dev, now),
            h.since
                .map(|t| format!(" (since {})", format_rfc3339(t)))
                .unwrap_or_default()
        )
    } else {
        let how = match (&h.reason, &d.reason_detail) {
            (Some(r), Some(detail)) => format!(": {r} ({detail})"),
            (Some(r), None) => format!(": {r}"),
            _ => String::new(),
        };
        format!("offline for {}{how}", state_for(dev, now))
    };
    line("state", state);
    if let Some(relay) = &dev.relay {
        line("relay", relay.clone());
    }
    line(
        "last seen",
        dev.last_seen.map_or_else(|| "never".into(), format_rfc3339),
    );
    line("agent", h.agent.clone().unwrap_or_else(|| "-".into()));
    line(
        "reconnects",
        format!("{} in the last 24 h", h.reconnects_24h),
    );
    let probe = match &h.probe {
        None => "none yet".into(),
        Some(p) => {
            let at = p.at.map(format_rfc3339).unwrap_or_default();
            match (p.ok, p.rtt_ms, &d.probe_error) {
                (true, Some(ms), _) => format!("ok, {ms} ms round trip, {at}"),
                (true, None, _) => format!("ok, {at}"),
                (false, _, Some(e)) => format!("failed: {e}, {at}"),
                (false, _, None) => format!("failed, {at}"),
            }
        }
    };
    line("probe", probe);
    line("endpoints", crate::admin::endpoints_text(&dev.endpoints));
    line("keys", dev.fingerprints.join(" "));
    for c in &dev.allow_connect {
        line("allow", format!("connect {c}"));
    }
    for l in &dev.allow_listen {
        line("allow", format!("listen {l}"));
    }
    match (&d.report, h.reported) {
        (Some(r), at) => {
            line("reported", at.map_or_else(|| "-".into(), format_rfc3339));
            for (key, value) in report_lines(r) {
                line(key, value);
            }
        }
        (None, _) => line("reported", "nothing yet".into()),
    }
    lines
}

/// What the agent reported, one line per part.
fn report_lines(r: &Report) -> Vec<(&'static str, String)> {
    let mut lines = Vec::new();
    let m = &r.modem;
    let modem = match m.mm {
        ModemManager::Unknown => "not read".to_string(),
        ModemManager::Absent | ModemManager::None | ModemManager::Error => {
            let what = match m.mm {
                ModemManager::Absent => "no ModemManager",
                ModemManager::None => "no modem",
                _ => "ModemManager failed",
            };
            match &m.why {
                Some(why) => format!("{what} ({why})"),
                None => what.to_string(),
            }
        }
        ModemManager::Present => {
            let mut parts: Vec<String> = Vec::new();
            parts.extend(m.state.clone());
            parts.extend(m.tech.clone());
            parts.extend(m.operator.clone());
            if let Some(q) = m.quality {
                parts.push(format!("quality {q}%"));
            }
            let db =
                |name: &str, v: Option<f32>, unit: &str| v.map(|v| format!("{name} {v} {unit}"));
            parts.extend(db("RSSI", m.rssi, "dBm"));
            parts.extend(db("RSRP", m.rsrp, "dBm"));
            parts.extend(db("RSRQ", m.rsrq, "dB"));
            parts.extend(db("SNR", m.snr, "dB"));
            if let (Some(rx), Some(tx)) = (m.rx, m.tx) {
                parts.push(format!(
                    "{} received, {} sent on the bearer",
                    bytes(rx),
                    bytes(tx)
                ));
            }
            parts.join(", ")
        }
    };
    lines.push(("modem", modem));
    let mut board: Vec<String> = Vec::new();
    if let Some(flags) = r.throttled {
        let names = throttled_flags(flags);
        board.push(if names.is_empty() {
            "power and clocks fine".into()
        } else {
            names.join(", ")
        });
    }
    if let Some(t) = r.temp_c {
        board.push(format!("{t} °C"));
    }
    if !board.is_empty() {
        lines.push(("board", board.join("; ")));
    }
    if let (Some(free), Some(total)) = (r.disk_free, r.disk_total) {
        lines.push(("disk", format!("{} free of {}", bytes(free), bytes(total))));
    }
    if let Some(up) = r.uptime_s {
        lines.push((
            "booted",
            format!("{} ago", span(i64::try_from(up).unwrap_or(i64::MAX))),
        ));
    }
    lines
}

/// `1.2 GB`, `340 kB`.
fn bytes(n: u64) -> String {
    let n = n as f64;
    if n >= 1e9 {
        format!("{:.1} GB", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.1} MB", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.0} kB", n / 1e3)
    } else {
        format!("{n} B")
    }
}

/// `relay alerts` as text.
pub fn render_alerts(alerts: &[AlertRecord]) -> String {
    let mut out = format!(
        "{:<20}  {:<15}  {:<16}  {:<8}  {:<22}  SUMMARY\n",
        "AT", "KIND", "DEVICE", "SEVERITY", "DELIVERY"
    );
    out.push_str(&render_alert_lines(alerts, ""));
    out
}

pub(crate) fn render_alert_lines(alerts: &[AlertRecord], indent: &str) -> String {
    let mut out = String::new();
    for a in alerts {
        out.push_str(&format!(
            "{indent}{:<20}  {:<15}  {:<16}  {:<8}  {:<22}  {}\n",
            a.at.map(format_rfc3339).unwrap_or_default(),
            a.kind,
            a.device.as_deref().unwrap_or("-"),
            a.severity,
            delivery(a),
            a.summary
        ));
    }
    out
}

/// How an alert's deliveries stand, in a few words.
pub(crate) fn delivery(a: &AlertRecord) -> String {
    if a.deliveries.is_empty() {
        return "kept (no webhook)".into();
    }
    let count = |state: &str| a.deliveries.iter().filter(|d| d.state == state).count();
    let (done, pending, gave_up) = (count("delivered"), count("pending"), count("gave-up"));
    let attempts: u32 = a
        .deliveries
        .iter()
        .filter(|d| d.state == "pending")
        .map(|d| d.attempts)
        .max()
        .unwrap_or(0);
    match (pending, gave_up) {
        (0, 0) => format!("delivered ({done})"),
        (0, _) => format!("gave up ({gave_up})"),
        _ if attempts > 0 => format!("retrying ({attempts} tries)"),
        _ => "pending".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_read_well() {
        assert_eq!(span(40), "40s");
        assert_eq!(span(300), "5m");
        assert_eq!(span(7380), "2h 3m");
        assert_eq!(span(3 * 86_400 + 4 * 3600), "3d 4h");
        assert_eq!(span(-5), "0s");
    }
}
