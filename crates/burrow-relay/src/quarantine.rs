//! One key seen from two places at once (a cloned SD card, a copied key): the session that was
//! there first is kept, the other is refused, and the key is quarantined.
//!
//! A device that reboots and a clone look alike when their new session arrives: both come from
//! another agent process with the same key while the old session still looks up. What tells
//! them apart is whether the old session still answers. The new session takes over at once, as
//! it always did (a reboot is not slowed down), while the relay asks the old one for an answer:
//! none within [`ALIVE_CHECK`] and the takeover stands; an answer, and the old session is put
//! back, the new one refused and the key quarantined. From then on a session with that key is
//! admitted only while no other holds it (the old one is asked first), so clones stop taking
//! the device from each other, and everyone sees `quarantined` until an operator gives the copy
//! a key of its own (`--replace`) and lifts it (`device unquarantine`).

use std::sync::Arc;
use std::time::Duration;

use burrow_proto::QUARANTINED_PREFIX;
use burrow_ssh::channel::GlobalRequest;

use crate::Relay;
use crate::audit::Outcome;
use crate::registry::DeviceSession;
use crate::store::Write;
use crate::store::fleet::Quarantine;

/// How long an old session has to answer before a new session with its key takes it over.
pub(crate) const ALIVE_CHECK: Duration = Duration::from_secs(5);
/// The global request that asks a session for an answer (every SSH client answers one it
/// does not know with a failure, which is an answer).
const ALIVE_REQUEST: &str = "alive@burrow";

/// Whether `new` may be a second copy of `old`: the same key from another agent process (or
/// from a stock client, which does not say).
fn same_key_elsewhere(old: &DeviceSession, new: &DeviceSession) -> bool {
    old.id != new.id
        && old.key_fingerprint == new.key_fingerprint
        && (old.instance.is_empty() || old.instance != new.instance)
}

/// Whether the session answers a request within [`ALIVE_CHECK`].
async fn answers(session: &DeviceSession) -> bool {
    if session.cut.is_cancelled() {
        return false;
    }
    let asked = session
        .handle
        .global_request(GlobalRequest::Other(ALIVE_REQUEST.into()));
    matches!(tokio::time::timeout(ALIVE_CHECK, asked).await, Ok(Ok(_)))
}

/// Admits a freshly authenticated device session whose key is `quarantined` or not; false when
/// it was refused (it is then told why and cut).
pub(crate) async fn admit(relay: &Arc<Relay>, dev: Arc<DeviceSession>, quarantined: bool) -> bool {
    if quarantined && let Some(holder) = held_elsewhere(relay, &dev).await {
        refuse(relay, &dev, &format!("a session on relay {holder}"));
        return false;
    }
    let suspect = relay
        .registry
        .get(&dev.name)
        .filter(|old| same_key_elsewhere(old, &dev));
    let Some(old) = suspect else {
        crate::device::came_online(relay, dev.clone());
        if quarantined {
            keep(relay, &dev).await;
        }
        return true;
    };
    if quarantined {
        // Known to have copies: the new session waits for the old one's answer.
        if answers(&old).await {
            refuse(
                relay,
                &dev,
                &format!(
                    "the session from {} (up {:.0} s)",
                    old.peer,
                    old.since.elapsed().as_secs_f64()
                ),
            );
            return false;
        }
        crate::device::came_online(relay, dev.clone());
        keep(relay, &dev).await;
        return true;
    }
    // A reboot must not wait: take over now, and undo it if the old session answers.
    if let Some(displaced) = crate::device::register(relay, dev.clone()) {
        let relay = relay.clone();
        tokio::spawn(async move { verify(&relay, displaced, dev).await });
    }
    true
}

/// After `dev` took over from `old` with the same key: cuts `old` if it is gone, else puts it
/// back, quarantines the key and refuses `dev`.
async fn verify(relay: &Arc<Relay>, old: Arc<DeviceSession>, dev: Arc<DeviceSession>) {
    if !answers(&old).await || old.cut.is_cancelled() {
        crate::device::replace(relay, &old, &dev);
        return;
    }
    if !relay.registry.restore(old.clone(), dev.id) {
        // A third session took over meanwhile: it decides, as a takeover does.
        crate::device::replace(relay, &old, &dev);
        return;
    }
    relay.listeners.transfer(dev.id, old.id);
    // The online mirror names the old session again, with its endpoints.
    // Corrections of the mirror, not a session ending and another coming up: the device's
    // health (its last ending, reconnects) is left as it is.
    relay.db.submit(Write::Offline {
        device: dev.name.clone(),
        session: dev.id,
        reason: String::new(),
        detail: String::new(),
    });
    relay.db.submit(Write::Online {
        device: old.name.clone(),
        peer: old.peer.to_string(),
        session: old.id,
        instance: old.instance.clone(),
        key: old.key_fingerprint.clone(),
        agent: String::new(),
    });
    for e in old.endpoints_all().into_iter().filter(|e| !e.is_internal()) {
        relay.db.submit(Write::Endpoint {
            device: old.name.clone(),
            port: e.port,
            bind: e.bind,
            present: true,
        });
    }
    let relay_id = relay_id(relay);
    quarantine(relay, &old, &dev.peer.to_string(), &relay_id).await;
    refuse(
        relay,
        &dev,
        &format!(
            "the session from {} (up {:.0} s)",
            old.peer,
            old.since.elapsed().as_secs_f64()
        ),
    );
}

/// Records the quarantine of `kept`'s key, seen from `other` too; `kept` keeps it.
pub(crate) async fn quarantine(relay: &Relay, kept: &DeviceSession, other: &str, relay_id: &str) {
    let name = &kept.name;
    let detail = format!(
        "key {} of device {name} is in use from {} and from {other} at once (a copied disk image or key?): the key is quarantined; the session from {} is kept, the other refused. Give the copy a key and name of its own (`burrow agent enroll` with a new join token), or re-bind this device to a new key (`burrow relay token create --replace {name}`), then `burrow relay device unquarantine {name}`",
        kept.key_fingerprint, kept.peer, kept.peer
    );
    let record = Quarantine {
        device: name.clone(),
        fingerprint: kept.key_fingerprint.clone(),
        since: crate::store::now(),
        detail: detail.clone(),
        kept_relay: relay_id.to_string(),
        kept_session: kept.id,
        kept_instance: kept.instance.clone(),
    };
    if let Err(e) = relay.db.quarantine_key(&record).await {
        tracing::error!("cannot record the quarantine of {name}'s key: {e}");
    }
    relay
        .audit
        .record("quarantine", name, other, Outcome::Ok, &detail);
}

/// Tells `dev` that its key is in use elsewhere (`by` says where), audits it and cuts it.
pub(crate) fn refuse(relay: &Relay, dev: &Arc<DeviceSession>, by: &str) {
    relay.audit.record(
        "quarantine",
        &dev.name,
        &dev.peer.to_string(),
        Outcome::Denied,
        &format!(
            "session refused: key {} is quarantined and held by {by}",
            dev.key_fingerprint
        ),
    );
    let why = format!(
        "{QUARANTINED_PREFIX}: key {} of device {} is in use by another session ({by}); ask the relay's admin (`burrow relay device ls`)",
        dev.key_fingerprint, dev.name
    );
    dev.note_ending(
        crate::store::health::OfflineReason::Quarantined,
        format!("its key is in use by another session ({by})"),
    );
    let dev = dev.clone();
    tokio::spawn(async move {
        dev.handle.disconnect(&why);
        let _ = tokio::time::timeout(Duration::from_millis(700), dev.handle.closed()).await;
        dev.cut.cancel();
    });
}

/// Notes that `dev` now holds its quarantined key, so that revocation leaves it alone.
async fn keep(relay: &Relay, dev: &DeviceSession) {
    let id = relay_id(relay);
    if let Err(e) = relay
        .db
        .keep_quarantined(&dev.name, &dev.key_fingerprint, &id, dev.id, &dev.instance)
        .await
    {
        tracing::warn!("cannot record which session holds {}'s key: {e}", dev.name);
    }
}

/// The relay holding another session of the device, in a cluster.
async fn held_elsewhere(relay: &Relay, dev: &DeviceSession) -> Option<String> {
    let cluster = relay.cluster.as_ref()?;
    let pg = relay.db.postgres_reads().await?;
    let sessions = pg.sessions_of_others(&dev.name, &dev.instance).await.ok()?;
    sessions.into_iter().find(|holder| *holder != cluster.id)
}

/// This relay's id as quarantine rows name it.
pub(crate) fn relay_id(relay: &Relay) -> String {
    relay
        .cluster
        .as_ref()
        .map_or_else(|| relay.config.relay_id.clone(), |c| c.id.clone())
}

/// Cuts the sessions held here whose key is quarantined and kept by another session.
pub(crate) async fn enforce(relay: &Relay) {
    let Ok(quarantined) = relay.db.quarantines().await else {
        return;
    };
    if quarantined.is_empty() {
        return;
    }
    let me = relay_id(relay);
    for dev in relay.registry.all() {
        let Some(q) = quarantined
            .iter()
            .find(|q| q.device == dev.name && q.fingerprint == dev.key_fingerprint)
        else {
            continue;
        };
        // The agent process that keeps the key keeps all its sessions (one per relay).
        let same_process = !q.kept_instance.is_empty() && q.kept_instance == dev.instance;
        if same_process || (q.kept_relay == me && q.kept_session == dev.id) {
            continue;
        }
        let by = if q.kept_relay == me {
            "another session on this relay".to_string()
        } else {
            format!("a session on relay {}", q.kept_relay)
        };
        refuse(relay, &dev, &by);
    }
}

/// In a cluster: a session of `local`'s device came up on relay `holder` with the same key
/// from another process. Returns false when `local` answers (then the key is quarantined and
/// `local` kept; the other relay cuts its session when it hears of it), true when `local` is
/// gone and may be replaced.
pub(crate) async fn check_elsewhere(relay: &Relay, local: &DeviceSession, holder: &str) -> bool {
    if !answers(local).await {
        return true;
    }
    let id = relay_id(relay);
    quarantine(relay, local, &format!("relay {holder}"), &id).await;
    false
}
