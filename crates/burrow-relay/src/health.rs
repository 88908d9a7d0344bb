//! Device health as the relay sees it: why a session ended, the agent's probe timed at the
//! relay, and the agent's health report taken into the registry.

use std::time::{Duration, Instant};

use burrow_proto::health::{MAX_REPORT, Report};

use crate::Relay;
use crate::registry::DeviceSession;
use crate::store::Write;
use crate::store::health::OfflineReason;

/// The device's software from its SSH identification line (`SSH-2.0-burrow_0.1.0 keepalive=...`
/// gives `burrow_0.1.0`), bounded.
pub(crate) fn software(peer_id: &str) -> String {
    let rest = peer_id.strip_prefix("SSH-2.0-").unwrap_or(peer_id);
    let word = rest.split(' ').next().unwrap_or_default();
    burrow_proto::text::clean(word, 64)
}

/// Why `dev`'s session ended, with detail: what the relay decided (takeover, revocation,
/// quarantine, an overdue keepalive), else the relay stopping (`stopping`), else the device's
/// goodbye, else a connection that broke.
pub(crate) fn why_ended(dev: &DeviceSession, stopping: bool) -> (OfflineReason, String) {
    if let Some(ending) = dev.ending() {
        return ending;
    }
    if dev.replaced.is_cancelled() {
        return (
            OfflineReason::TakenOver,
            "a newer session of the device replaced it".into(),
        );
    }
    if stopping {
        return (OfflineReason::RelayStopped, "the relay stopped".into());
    }
    if let Some(goodbye) = dev.handle.peer_disconnect() {
        let goodbye = burrow_proto::text::clean(&goodbye, 200);
        return (OfflineReason::Clean, format!("the device said: {goodbye}"));
    }
    let why = dev
        .handle
        .ended()
        .unwrap_or_else(|| "the connection ended".into());
    (
        OfflineReason::Reset,
        format!(
            "the connection broke without a goodbye: {}",
            burrow_proto::text::clean(&why, 200)
        ),
    )
}

/// Records the agent's probe as the relay timed it: from the agent's open to its answer.
pub(crate) fn probe_done(relay: &Relay, dev: &DeviceSession, took: Duration, outcome: &str) {
    // The agent's answer comes back inside the relay's refusal ("device pi refused ...: probe
    // answered").
    let ok = outcome.ends_with(burrow_proto::PROBE_ANSWERED);
    relay.db.submit(Write::Probe {
        device: dev.name.clone(),
        ok,
        rtt_ms: u32::try_from(took.as_millis()).unwrap_or(u32::MAX),
        error: if ok { String::new() } else { outcome.into() },
    });
}

/// Takes a health report `data` from `dev`'s agent into the registry: bounded, parsed,
/// cleaned; at most one a second per session. What does not parse is logged and dropped.
pub(crate) fn report_received(relay: &Relay, dev: &DeviceSession, data: &[u8]) {
    if data.len() > MAX_REPORT {
        tracing::info!(device = %dev.name, "health report of {} bytes ignored (at most {MAX_REPORT})", data.len());
        return;
    }
    if !dev.take_report(Instant::now()) {
        tracing::debug!(device = %dev.name, "health report ignored: the last came less than a second ago");
        return;
    }
    let report = match serde_json::from_slice::<Report>(data) {
        Ok(r) => r.cleaned(),
        Err(e) => {
            tracing::info!(device = %dev.name, "health report ignored: {e}");
            return;
        }
    };
    let Ok(json) = serde_json::to_string(&report) else {
        return;
    };
    relay.metrics.health_report();
    tracing::debug!(device = %dev.name, "health report: {}", report.summary());
    relay.db.submit(Write::Health {
        device: dev.name.clone(),
        link: report.summary(),
        signal_dbm: report
            .modem
            .rsrp
            .or(report.modem.rssi)
            .map(|v| v.round() as i32),
        temp_c: report.temp_c.map(|v| v.round() as i32),
        throttled: report.throttled,
        report: json,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_software_is_the_first_word_of_the_identification() {
        assert_eq!(
            software("SSH-2.0-burrow_0.1.0 keepalive=150/20 instance=9f"),
            "burrow_0.1.0"
        );
        assert_eq!(software("SSH-2.0-OpenSSH_9.6p1 Debian-3"), "OpenSSH_9.6p1");
        assert!(software(&format!("SSH-2.0-{}", "x".repeat(500))).len() < 100);
    }
}
