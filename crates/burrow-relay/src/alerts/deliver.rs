//! Posting alerts to one webhook: oldest first, several per post, with a pause that doubles
//! after each failure (up to `retry_max`), until each is delivered or given up. Only the relay
//! that leads the projection posts, so a cluster sends each alert once.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{AlertRecord, AlertsConfig, Format, Kind, Webhook, leads};
use crate::Relay;
use crate::store::now;

/// Time one post may take.
pub(crate) const POST_TIMEOUT: Duration = Duration::from_secs(10);
/// Most alerts in one post.
const BATCH: usize = 50;
/// How long Alertmanager keeps an alert firing that nothing resolves: a device offline stays
/// firing until its return resolves it (or this long).
const FIRING_FOR: i64 = 30 * 86_400;
/// How long Alertmanager shows an alert about an event (a token used, a lock).
const EVENT_FOR: i64 = 3600;
/// How often an idle deliverer looks for alerts on its own (new ones wake it at once).
const IDLE_LOOK: std::time::Duration = std::time::Duration::from_secs(5);
/// How often undelivered alerts are checked for their age.
const GIVE_UP_CHECK: std::time::Duration = std::time::Duration::from_secs(60);

/// Delivers to `hook` until `shutdown`, while this relay leads.
pub(crate) async fn run(
    relay: Arc<Relay>,
    hook: Webhook,
    client: Arc<burrow_io::http::Client>,
    leader: Arc<AtomicBool>,
    mut wake: watch::Receiver<u64>,
    shutdown: CancellationToken,
) {
    let config = &relay.config.alerts;
    let db = &relay.db;
    let mut failures = 0u32;
    let mut checked: Option<std::time::Instant> = None;
    loop {
        let pause = if !leads(&leader) {
            Some(config.poll)
        } else {
            match deliver_some(&relay, &hook, &client).await {
                Ok(0) => {
                    failures = 0;
                    None
                }
                Ok(_) => {
                    failures = 0;
                    continue;
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let pause = config.backoff(failures);
                    tracing::warn!(
                        "alerts to {} not delivered ({e}); trying again in {:.1} s",
                        hook.target,
                        pause.as_secs_f64()
                    );
                    Some(pause)
                }
            }
        };
        if leads(&leader) && checked.is_none_or(|t| t.elapsed() >= GIVE_UP_CHECK) {
            checked = Some(std::time::Instant::now());
            let give_up = i64::try_from(config.give_up_after.as_secs()).unwrap_or(i64::MAX / 4);
            match db
                .alerts_give_up(&hook.target, now().saturating_sub(give_up))
                .await
            {
                Ok(0) | Err(_) => {}
                Ok(n) => tracing::warn!(
                    "{n} alerts for {} given up: undelivered for longer than {} s",
                    hook.target,
                    give_up
                ),
            }
        }
        let wait = pause.unwrap_or(IDLE_LOOK.max(config.poll));
        tokio::select! {
            _ = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
            // New alerts wake an idle deliverer at once; one that backs off keeps its pause.
            Ok(()) = wake.changed(), if pause.is_none() => {}
        }
    }
}

/// Posts the oldest pending alerts once; returns how many were delivered.
async fn deliver_some(
    relay: &Relay,
    hook: &Webhook,
    client: &burrow_io::http::Client,
) -> Result<usize, String> {
    let db = &relay.db;
    let batch = db
        .pending_alerts(&hook.target, BATCH)
        .await
        .map_err(|e| e.to_string())?;
    if batch.is_empty() {
        return Ok(0);
    }
    let body = payload(hook.format, &relay.config.alerts, &batch);
    let answer = client
        .send(&burrow_io::http::Request {
            method: "POST",
            url: &hook.url,
            content_type: "application/json",
            accept: "*/*",
            body: body.as_bytes(),
        })
        .await;
    let result = match answer {
        Ok(a) if (200..300).contains(&a.status) => Ok(()),
        Ok(a) => Err(format!("HTTP {} {}", a.status, a.reason)),
        Err(e) => Err(e),
    };
    let ids: Vec<i64> = batch.iter().map(|a| a.id).collect();
    db.alerts_attempted(
        &hook.target,
        &ids,
        result.as_ref().err().map(String::as_str),
    )
    .await
    .map_err(|e| e.to_string())?;
    result?;
    tracing::info!("{} alerts delivered to {}", batch.len(), hook.target);
    Ok(batch.len())
}

/// The body of a post of `alerts` in `format`.
pub(crate) fn payload(format: Format, config: &AlertsConfig, alerts: &[AlertRecord]) -> String {
    let value = match format {
        Format::Json => json!({
            "source": "burrow",
            "alerts": alerts.iter().map(json_alert).collect::<Vec<_>>(),
        }),
        Format::Alertmanager => Value::Array(
            alerts
                .iter()
                .map(|a| alertmanager_alert(a, config))
                .collect(),
        ),
    };
    value.to_string()
}

fn json_alert(a: &AlertRecord) -> Value {
    let resolved = a.kind == Kind::DeviceOnline.as_str();
    json!({
        "id": a.id,
        "at": rfc3339(a.at),
        "kind": a.kind,
        "status": if resolved { "resolved" } else { "firing" },
        "device": a.device,
        "severity": a.severity,
        "summary": a.summary,
        "detail": a.detail,
        "relay": a.relay,
    })
}

/// One alert as Alertmanager's API takes it. A device back online is sent as its offline
/// alert (same labels) with `endsAt` now, which resolves it.
fn alertmanager_alert(a: &AlertRecord, config: &AlertsConfig) -> Value {
    let at = a.at.unwrap_or_else(now);
    let kind = Kind::parse(&a.kind);
    let (name_kind, severity) = match kind {
        Some(Kind::DeviceOnline) => (Kind::DeviceOffline, Kind::DeviceOffline.severity()),
        Some(k) => (k, k.severity()),
        None => (Kind::ConsolePattern, "warning"),
    };
    let ends = match kind {
        Some(Kind::DeviceOnline) => at,
        Some(Kind::DeviceOffline) | Some(Kind::Quarantine) => at + FIRING_FOR,
        Some(Kind::Flapping) => {
            at + i64::try_from(config.flapping_damping.as_secs()).unwrap_or(EVENT_FOR)
        }
        _ => at + EVENT_FOR,
    };
    let mut labels = serde_json::Map::new();
    labels.insert("alertname".into(), json!(alert_name(name_kind)));
    labels.insert("severity".into(), json!(severity));
    labels.insert("source".into(), json!("burrow"));
    if let Some(d) = &a.device {
        labels.insert("device".into(), json!(d));
    }
    json!({
        "labels": labels,
        "annotations": {"summary": a.summary, "description": a.detail},
        "startsAt": rfc3339(Some(at)),
        "endsAt": rfc3339(Some(ends)),
    })
}

/// `BurrowDeviceOffline`, `BurrowTokenRefused`, ...
fn alert_name(kind: Kind) -> String {
    let mut out = String::from("Burrow");
    for word in kind.as_str().split('-') {
        let mut chars = word.chars();
        if let Some(first) = chars.next() {
            out.extend(first.to_uppercase());
            out.push_str(chars.as_str());
        }
    }
    out
}

fn rfc3339(at: Option<i64>) -> Value {
    at.map_or(Value::Null, |t| {
        Value::String(burrow_proto::time::format_rfc3339(t))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: Kind, at: i64) -> AlertRecord {
        AlertRecord {
            id: 7,
            at: Some(at),
            kind: kind.as_str().into(),
            device: Some("pi".into()),
            severity: kind.severity().into(),
            summary: "s".into(),
            detail: "d".into(),
            relay: "r1".into(),
            deliveries: vec![],
        }
    }

    #[test]
    fn a_return_resolves_the_offline_alert_in_alertmanager() {
        let c = AlertsConfig::default();
        let body = payload(
            Format::Alertmanager,
            &c,
            &[
                record(Kind::DeviceOffline, 1_700_000_000),
                record(Kind::DeviceOnline, 1_700_000_600),
            ],
        );
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v[0]["labels"], v[1]["labels"], "same alert, so it resolves");
        assert_eq!(v[0]["labels"]["alertname"], "BurrowDeviceOffline");
        assert_eq!(v[1]["endsAt"], "2023-11-14T22:23:20Z");
        assert!(v[0]["endsAt"].as_str().unwrap() > v[0]["startsAt"].as_str().unwrap());
    }

    #[test]
    fn the_json_payload_says_firing_or_resolved() {
        let body = payload(
            Format::Json,
            &AlertsConfig::default(),
            &[record(Kind::DeviceOnline, 1)],
        );
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["source"], "burrow");
        assert_eq!(v["alerts"][0]["status"], "resolved");
        assert_eq!(v["alerts"][0]["kind"], "device-online");
        assert_eq!(alert_name(Kind::TokenRefused), "BurrowTokenRefused");
    }
}
