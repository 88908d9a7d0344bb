//! Registry changes made with the CLI (another process, same database) reaching sessions that
//! are already open: removed devices, keys, operators and rules, and narrowed operator policy.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::Relay;
use crate::audit::Outcome;

/// How often the relay checks whether the CLI changed the registry.
const REVOCATION_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// Cuts sessions whose device or key was removed from the registry while they were online.
pub(crate) async fn watch_revocations(relay: Arc<Relay>, shutdown: CancellationToken) {
    let mut last = relay.store.data_version().unwrap_or(0);
    let mut tick = tokio::time::interval(REVOCATION_CHECK_INTERVAL);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Ok(version) = relay.store.data_version() else {
            continue;
        };
        if version == last {
            continue;
        }
        last = version;
        for dev in relay.registry.all() {
            if let Ok(false) = relay.store.device_has_key(&dev.name, &dev.key_fingerprint) {
                relay.audit.record(
                    "revoke",
                    &dev.name,
                    &dev.peer.to_string(),
                    Outcome::Ok,
                    "device or its key was removed; session closed",
                );
                dev.cut.cancel();
            }
        }
        enforce_operator_policy(&relay);
        relay.listeners.retain_allowed(|device, addr, port| {
            match relay.store.listen_addr(device, port) {
                Ok(Some(a)) => a == addr,
                Ok(None) => false,
                // A read error is no revocation.
                Err(_) => true,
            }
        });
    }
}

/// Operators removed are cut off; streams and consoles their new policy forbids are closed.
fn enforce_operator_policy(relay: &Relay) {
    for op in relay.operators.all() {
        let Ok(record) = relay.store.operator(op.name()) else {
            continue;
        };
        if record.is_none() {
            relay.audit.record(
                "revoke",
                op.name(),
                &op.login.to_string(),
                Outcome::Ok,
                "operator was removed; connection closed",
            );
        }
        for device in op.enforce(record.as_ref()) {
            relay.audit.record(
                "revoke",
                op.name(),
                &device,
                Outcome::Ok,
                &format!("operator policy no longer allows device {device}; stream closed"),
            );
        }
    }
}
