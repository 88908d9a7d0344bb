//! Registry changes made with the CLI (another process, same database) reaching sessions that
//! are already open: removed devices, keys, operators and rules, and narrowed operator policy.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::Relay;
use crate::audit::Outcome;
use crate::store::{DeviceRecord, OperatorRecord};

/// How often the relay checks whether the CLI changed the registry.
const REVOCATION_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// Cuts sessions whose device or key was removed from the registry while they were online.
/// The registry's change counter is read every few seconds; when it moved, every open session
/// is checked against the registry in a fixed number of queries.
pub(crate) async fn watch_revocations(relay: Arc<Relay>, shutdown: CancellationToken) {
    let mut last = relay.db.registry_version().await.unwrap_or(0);
    let mut tick = tokio::time::interval(REVOCATION_CHECK_INTERVAL);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Ok(version) = relay.db.registry_version().await else {
            continue;
        };
        if version == last {
            continue;
        }
        last = version;
        enforce(&relay).await;
    }
}

/// Holds every open session to the registry as it is now.
pub(crate) async fn enforce(relay: &Relay) {
    // A read error is no revocation: nothing is cut on a failed query.
    if let Ok(pairs) = relay.db.device_key_pairs().await {
        let keys: HashSet<(String, String)> = pairs.into_iter().collect();
        for dev in relay.registry.all() {
            if !keys.contains(&(dev.name.clone(), dev.key_fingerprint.clone())) {
                relay.audit.record_about(
                    crate::audit::About::Device,
                    "revoke",
                    &dev.name,
                    &dev.peer.to_string(),
                    Outcome::Ok,
                    "device or its key was removed; session closed",
                );
                dev.end(
                    crate::store::health::OfflineReason::Revoked,
                    "the device or its key was removed from the registry".into(),
                );
            }
        }
    }
    crate::quarantine::enforce(relay).await;
    let devices = relay.db.devices().await;
    if let (Ok(operators), Ok(devices)) = (relay.db.operators().await, &devices) {
        enforce_operator_policy(relay, &operators, devices);
    }
    if let Ok(devices) = devices {
        let allowed: HashSet<(String, String, u16)> = devices
            .iter()
            .flat_map(|d| {
                d.allow_listen.iter().filter_map(|rule| {
                    let (addr, port) = rule.rsplit_once(':')?;
                    Some((d.name.clone(), addr.to_string(), port.parse().ok()?))
                })
            })
            .collect();
        relay.listeners.retain_allowed(|device, addr, port| {
            allowed.contains(&(device.to_string(), addr.to_string(), port))
        });
    }
}

/// Operators removed are cut off; streams and consoles their new policy forbids (by name or by
/// the devices' labels as they are now) are closed.
fn enforce_operator_policy(relay: &Relay, operators: &[OperatorRecord], devices: &[DeviceRecord]) {
    let by_name: HashMap<&str, &OperatorRecord> =
        operators.iter().map(|o| (o.name.as_str(), o)).collect();
    let labels: HashMap<&str, &burrow_proto::labels::Labels> = devices
        .iter()
        .map(|d| (d.name.as_str(), &d.labels))
        .collect();
    for op in relay.operators.all() {
        let record = by_name.get(op.name()).copied();
        if record.is_none() {
            relay.audit.record_about(
                crate::audit::About::Operator,
                "revoke",
                op.name(),
                &op.login.to_string(),
                Outcome::Ok,
                "operator was removed; connection closed",
            );
        }
        for device in op.enforce(record, &labels) {
            relay.audit.record_about(
                crate::audit::About::OperatorOn(&device),
                "revoke",
                op.name(),
                &device,
                Outcome::Ok,
                &format!("operator policy no longer allows device {device}; stream closed"),
            );
        }
    }
}
