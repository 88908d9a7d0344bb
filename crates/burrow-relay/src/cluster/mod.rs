//! Several relays on one PostgreSQL registry: presence, routing, takeover and revocation
//! across relays.
//!
//! Each relay renews a lease on its row in `relays` (a third of the lease at a time); a relay
//! killed with SIGKILL stops being routed to once its lease runs out. Device sessions are rows
//! in `online` naming their relay. An operator's stream or console for a device held by another
//! relay goes through an SSH link between the two relays ([`peer`]). A device session that
//! comes up is announced with `NOTIFY`: a relay still holding an older session of that device
//! from another agent process cuts it at once; registry changes are announced the same way and
//! applied to open sessions at once.
//!
//! # Layout
//! - [`peer`]: the relay-to-relay port (the accepting side) and what goes over a link.
//! - [`links`]: the links this relay dials, their watch and their return after a fault.

pub(crate) mod links;
pub(crate) mod peer;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use burrow_ssh::channel::OpenKind;
use burrow_ssh::driver::Channel;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::Relay;
use crate::audit::Outcome;
use crate::operator::Refusal;
use crate::store::postgres::{Notice, Pg};

/// How often the registry copy for an outage is refreshed when nothing changed.
const SNAPSHOT_EVERY: Duration = Duration::from_secs(60);
/// Longest a stream waits for the other relay to open it.
const PEER_OPEN_TIMEOUT: Duration = Duration::from_secs(15);

/// This relay's part in a cluster.
pub(crate) struct Cluster {
    /// This relay's id.
    pub(crate) id: String,
    /// Where other relays reach this one's peer port.
    pub(crate) advertise: String,
    pub(crate) links: links::Links,
    /// The database cannot be reached: the relay runs on its last copy of the registry.
    pub(crate) degraded: AtomicBool,
}

impl Cluster {
    pub(crate) fn new(id: String, advertise: String) -> Cluster {
        Cluster {
            id,
            advertise,
            links: links::Links::default(),
            degraded: AtomicBool::new(false),
        }
    }

    /// Marks the relay degraded (or back), saying so once in the log.
    pub(crate) fn set_degraded(&self, degraded: bool, why: &str) {
        let was = self.degraded.swap(degraded, Ordering::Relaxed);
        match (was, degraded) {
            (false, true) => tracing::error!(
                "the database cannot be reached ({why}): running degraded; open sessions and streams go on, known devices and operators are admitted from the last copy of the registry, audit entries queue on local disk"
            ),
            (true, false) => tracing::warn!("the database is back: no longer degraded"),
            _ => {}
        }
    }

    pub(crate) fn is_degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }

    /// Opens `device:port` on the relay holding the device, for an operator stream; returns
    /// that relay's id, whether it was found in the registry's copy (and how old the copy is),
    /// and the channel. `here` is why this relay could not: the answer when no other relay
    /// holds the device either.
    pub(crate) async fn open_stream(
        &self,
        relay: &Arc<Relay>,
        device: &str,
        port: u16,
        originator: &str,
        originator_port: u32,
        here: Refusal,
    ) -> Result<(String, Option<Duration>, Channel), Refusal> {
        let holders = self.holders(relay, device).await?;
        let mut last = None;
        for holder in holders.ids {
            let link = match self.links.get(relay, &holder).await {
                Ok(link) => link,
                Err(why) => {
                    last = Some(Refusal::from_peer(&holder, &why));
                    continue;
                }
            };
            let open = link.open(OpenKind::DirectTcpip {
                host: device.to_string(),
                port: u32::from(port),
                originator: originator.to_string(),
                originator_port,
            });
            // The device itself may take its time to answer; the link's own liveness is the
            // watcher's (a link that stops answering is given up within two seconds, and
            // this open with it).
            match tokio::time::timeout(PEER_OPEN_TIMEOUT, open).await {
                Ok(Ok(channel)) => return Ok((holder, holders.from_copy, channel)),
                // The other relay answered: the device refused, or it is not there any more
                // (another holder may have it).
                Ok(Err(e)) if link.ended().is_none() => {
                    last = Some(Refusal::from_peer(&holder, &e.text));
                }
                Ok(Err(e)) => {
                    last = Some(Refusal::from_peer(
                        &holder,
                        &format!("the link to it was lost ({})", e.text),
                    ));
                }
                Err(_) => {
                    last = Some(Refusal::from_peer(&holder, "no answer"));
                }
            }
        }
        let mut refusal = last.unwrap_or(here);
        if let Some(age) = holders.from_copy {
            refusal.reason.push_str(&format!(
                " (the cluster's database cannot be reached: holders taken from the registry copy of {:.0} s ago)",
                age.as_secs_f64()
            ));
        }
        Err(refusal)
    }

    /// Opens a `session` channel on the relay holding `device` running `command` there (a
    /// console attach or command for an operator of this relay); `None` when no other relay
    /// holds the device.
    pub(crate) async fn open_console(
        &self,
        relay: &Arc<Relay>,
        device: &str,
        command: String,
    ) -> Result<Option<(String, Channel)>, String> {
        let holders = self.holders(relay, device).await.map_err(|r| r.reason)?;
        let Some(holder) = holders.ids.into_iter().next() else {
            return Ok(None);
        };
        let link = self.links.get(relay, &holder).await?;
        let channel = link.open(OpenKind::Session).await.map_err(|e| e.text)?;
        let accepted = channel
            .request(burrow_ssh::channel::Request::Exec(command), true)
            .await
            .map_err(|e| e.0)?;
        if !accepted {
            return Err(format!("relay {holder} refused the console"));
        }
        Ok(Some((holder, channel)))
    }

    /// The other relays holding a session of `device`, newest session first: from the
    /// registry, or while it cannot be reached from its copy (saying how old).
    async fn holders(&self, relay: &Relay, device: &str) -> Result<Holders, Refusal> {
        let from_db = match relay.db.postgres_reads().await {
            Some(pg) => pg.sessions_of(device).await.map_err(|e| e.to_string()),
            None => Err("the cluster's registry cannot be reached".to_string()),
        };
        let (ids, from_copy) = match from_db {
            Ok(sessions) => (sessions.into_iter().map(|(h, _)| h).collect(), None),
            Err(why) => match relay.db.read_copy(|c| c.holders(device)) {
                Some((ids, age)) => (ids, Some(age)),
                None => {
                    return Err(Refusal::new(
                        crate::operator::CONNECT_FAILED,
                        format!("{why}, and this relay has no recent copy of it"),
                    ));
                }
            },
        };
        let mut out: Vec<String> = Vec::new();
        for holder in ids {
            if holder != self.id && !out.contains(&holder) {
                out.push(holder);
            }
        }
        Ok(Holders {
            ids: out,
            from_copy,
        })
    }
}

/// The relays holding a device, as far as this relay can tell.
struct Holders {
    ids: Vec<String>,
    /// Taken from the registry copy (the database cannot be reached), this old.
    from_copy: Option<Duration>,
}

/// Runs a console or console command for an operator of this relay on the relay holding
/// `device`, carrying the operator's channel there; `None` when no other relay holds it (the
/// caller then answers for this relay: offline, or held here).
pub(crate) async fn console_elsewhere(
    relay: &Arc<Relay>,
    device: &str,
    command: String,
    operator_channel: &Channel,
) -> Option<u32> {
    let cluster = relay.cluster.as_ref()?;
    if relay.registry.get(device).is_some() {
        return None;
    }
    match cluster.open_console(relay, device, command).await {
        Ok(Some((_, peer))) => Some(peer::bridge(operator_channel, &peer).await),
        Ok(None) => None,
        Err(why) => {
            let _ = operator_channel
                .data(format!("[burrow] {why}\r\n").as_bytes())
                .await;
            Some(1)
        }
    }
}

/// Renews this relay's lease until `shutdown`; the relay is degraded while that fails.
pub(crate) async fn keep_present(relay: Arc<Relay>, shutdown: CancellationToken) {
    let Some(cluster) = &relay.cluster else {
        return;
    };
    let Some(url) = relay.db.postgres_url().map(str::to_string) else {
        return;
    };
    let every = relay.config.lease / 3;
    let mut conn: Option<Pg> = None;
    let mut copied = tokio::time::Instant::now();
    loop {
        if conn.as_ref().is_none_or(Pg::is_closed) {
            conn = Pg::writer(&url, &cluster.id).await.ok();
        }
        // The key in use now: a rotated key reaches the other relays with the next renewal.
        let host_key = relay.host_public_key();
        let renewed = match &conn {
            Some(pg) => pg
                .renew_lease(&cluster.advertise, &host_key, relay.config.lease)
                .await
                .map_err(|e| e.to_string()),
            None => Err("cannot connect".to_string()),
        };
        match renewed {
            Ok(()) => {
                cluster.set_degraded(false, "");
                if let Some(pg) = &conn {
                    remember_peer_keys(&relay, &cluster.id, pg).await;
                }
                // The registry copy for an outage, at least every minute.
                if copied.elapsed() >= SNAPSHOT_EVERY && relay.db.refresh_snapshot().await.is_ok() {
                    copied = tokio::time::Instant::now();
                }
            }
            Err(why) => {
                conn = None;
                cluster.set_degraded(true, &why);
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// Keeps the host keys of the other live relays that clients reach under this relay's name
/// (the same `--advertise` address: one DNS name or load balancer in front of them all), which
/// this relay announces with its own: an OpenSSH client knowing the cluster under that name
/// then keeps them all instead of dropping the keys this relay does not hold. Relays with
/// names of their own announce only their own keys (a client knowing this relay under its own
/// name would ask proof of the others', which this relay cannot give).
async fn remember_peer_keys(relay: &Relay, me: &str, pg: &Pg) {
    let (Ok(live), Ok(recorded)) = (pg.live_relays().await, relay.db.relay_addresses().await)
    else {
        return;
    };
    let Some(mine) = recorded.iter().find(|r| r.relay == me).map(|r| &r.address) else {
        return;
    };
    let keys: Vec<Vec<u8>> = recorded
        .iter()
        .filter(|r| r.relay != me && &r.address == mine)
        .filter(|r| live.iter().any(|(id, _, _)| *id == r.relay))
        .flat_map(|r| r.host_key.lines())
        .filter_map(|line| burrow_io::keys::parse_public_key(line).ok())
        .filter_map(|k| k.to_bytes().ok())
        .collect();
    *relay
        .peer_host_keys
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = keys;
}

/// Hears other relays' announcements until `shutdown`: takeovers cut local sessions, registry
/// changes are applied to open sessions at once. Reconnects when the database comes back.
pub(crate) async fn hear_others(relay: Arc<Relay>, shutdown: CancellationToken) {
    let Some(cluster) = &relay.cluster else {
        return;
    };
    let Some(url) = relay.db.postgres_url().map(str::to_string) else {
        return;
    };
    loop {
        let (tx, mut rx) = mpsc::unbounded_channel();
        if let Err(e) = Pg::listen(&url, tx).await {
            tracing::debug!("cannot listen for cluster announcements: {e}");
        } else {
            // What was announced while nobody listened is caught up once.
            crate::revocation::enforce(&relay).await;
            loop {
                let notice = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    n = rx.recv() => n,
                };
                match notice {
                    Some(Notice::Registry) => {
                        crate::revocation::enforce(&relay).await;
                        let _ = relay.db.refresh_snapshot().await;
                    }
                    Some(Notice::Session {
                        device,
                        relay: holder,
                        instance,
                        key,
                        ..
                    }) if holder != cluster.id => {
                        taken_elsewhere(&relay, &device, &holder, &instance, &key)
                    }
                    Some(Notice::Session { .. }) => {}
                    None => break,
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// A session of `device` came up on relay `holder` from agent process `instance` with `key`: a
/// session held here from another process (or a stock client) is replaced, unless it has the
/// same key and still answers (then the key is quarantined, see `crate::quarantine`).
fn taken_elsewhere(relay: &Arc<Relay>, device: &str, holder: &str, instance: &str, key: &str) {
    let Some(local) = relay.registry.get(device) else {
        return;
    };
    if !instance.is_empty() && local.instance == instance {
        // The same agent process holds sessions to several relays at once.
        return;
    }
    if !key.is_empty() && local.key_fingerprint == key {
        let (relay, holder) = (relay.clone(), holder.to_string());
        tokio::spawn(async move {
            if crate::quarantine::check_elsewhere(&relay, &local, &holder).await
                && relay.registry.is_current(&local.name, local.id)
            {
                cut_for_elsewhere(&relay, &local, &holder);
            }
        });
        return;
    }
    cut_for_elsewhere(relay, &local, holder);
}

/// Cuts `local`, replaced by a session of its device on relay `holder`.
fn cut_for_elsewhere(relay: &Relay, local: &Arc<crate::registry::DeviceSession>, holder: &str) {
    let device = local.name.as_str();
    relay.metrics.takeover();
    relay.audit.record(
        "takeover",
        device,
        &local.peer.to_string(),
        Outcome::Ok,
        &format!(
            "a new session on relay {holder} replaced the session from {} held here; it is closed",
            local.peer
        ),
    );
    let why = format!(
        "{} of device {device} on relay {holder} replaced this one",
        burrow_proto::REPLACED_PREFIX
    );
    local.replaced.cancel();
    // Gone from here at once (routing, listings, the cluster's online rows), not only once its
    // connection has closed: streams opened meanwhile must go to the new session.
    crate::device::went_offline(relay, local, false);
    let old = local.clone();
    tokio::spawn(async move {
        old.handle.disconnect(&why);
        let _ = tokio::time::timeout(Duration::from_millis(700), old.handle.closed()).await;
        old.cut.cancel();
    });
}
