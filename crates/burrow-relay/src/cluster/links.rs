//! The links this relay dials to the other relays of its cluster: made when first needed,
//! watched with keepalives, given up when one goes unanswered (a partition, a frozen relay),
//! failing opens at once while down, and dialled again in the background until they are back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use burrow_ssh::driver::{Handle, Handler};
use burrow_ssh::session::{Session, Side};
use tokio::net::TcpStream;

use crate::Relay;

/// How long dialling another relay may take, connect and SSH login together.
const DIAL_TIMEOUT: Duration = Duration::from_secs(2);
/// A link silent this long is asked for a keepalive.
const LINK_QUIET: Duration = Duration::from_millis(500);
/// A keepalive unanswered this long means the link is down (a partition, a frozen relay).
const LINK_DEAD_AFTER: Duration = Duration::from_millis(1500);
/// Pauses between attempts to bring a link that is down back: from the first to the longest.
const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// An outgoing link to another relay.
enum Link {
    Up(Handle),
    /// Known to be down since then, and why; a task brings it back.
    Down {
        since: Instant,
        why: String,
    },
}

/// Outgoing links to the other relays, one per relay, made when first needed. A link known
/// to be down fails opens at once with the reason and is retried in the background; a link
/// is watched with keepalives, so that a partition is known within two seconds even while
/// nothing new is opened.
#[derive(Default)]
pub(crate) struct Links {
    map: Mutex<HashMap<String, Link>>,
}

impl Links {
    /// A link to relay `id`: the live one, a new one, or at once the reason there is none.
    pub(crate) async fn get(&self, relay: &Arc<Relay>, id: &str) -> Result<Handle, String> {
        match self.lock().get(id) {
            Some(Link::Up(h)) if h.ended().is_none() => return Ok(h.clone()),
            Some(Link::Down { since, why }) => {
                return Err(format!(
                    "the link to relay {id} is down ({why}) since {:.0} s ago; it is retried in the background",
                    since.elapsed().as_secs_f64()
                ));
            }
            _ => {}
        }
        match dial(relay, id).await {
            Ok(linked) => {
                let h = linked.handle.clone();
                self.up(relay, id, linked);
                Ok(h)
            }
            Err(why) => {
                let why = why.to_string();
                self.down(relay, id, &why);
                Err(format!(
                    "the link to relay {id} cannot be made ({why}); it is retried in the background"
                ))
            }
        }
    }

    fn up(&self, relay: &Arc<Relay>, id: &str, linked: Linked) {
        self.lock()
            .insert(id.to_string(), Link::Up(linked.handle.clone()));
        tokio::spawn(watch(relay.clone(), id.to_string(), linked));
    }

    /// Marks the link to `id` down (cutting it, and with it the streams it carried) and has it
    /// retried in the background.
    pub(crate) fn down(&self, relay: &Arc<Relay>, id: &str, why: &str) {
        let mut map = self.lock();
        if let Some(Link::Down { .. }) = map.get(id) {
            return;
        }
        if let Some(Link::Up(h)) = map.get(id) {
            h.disconnect(&format!("the link is given up: {why}"));
        }
        tracing::warn!(
            "the link to relay {id} is down ({why}); opens through it fail at once until it is back"
        );
        map.insert(
            id.to_string(),
            Link::Down {
                since: Instant::now(),
                why: why.to_string(),
            },
        );
        drop(map);
        tokio::spawn(bring_back(relay.clone(), id.to_string()));
    }

    /// Forgets the link to `id` (its relay is gone; the next stream dials again).
    fn forget(&self, id: &str) {
        self.lock().remove(id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Link>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Watches a link that is up: a keepalive when it has been quiet, and the link given up when
/// one goes unanswered.
async fn watch(relay: Arc<Relay>, id: String, linked: Linked) {
    let Some(cluster) = relay.cluster.as_ref() else {
        return;
    };
    let Linked {
        handle: link,
        activity,
    } = linked;
    let mut asked: Option<Instant> = None;
    loop {
        tokio::time::sleep(LINK_QUIET / 2).await;
        if link.ended().is_some() || relay.stopping() {
            // Closed by the other relay or given up here: a new one is dialled when needed.
            if let Some(Link::Up(h)) = cluster.links.lock().get(&id)
                && h.ended().is_some()
            {
                cluster.links.forget(&id);
            }
            return;
        }
        match asked {
            Some(at) if link.keepalive_outstanding() => {
                if at.elapsed() >= LINK_DEAD_AFTER {
                    let why = format!("no answer for {:.1} s", at.elapsed().as_secs_f64());
                    cluster.links.down(&relay, &id, &why);
                    return;
                }
            }
            _ => {
                asked = None;
                if activity.silence(Instant::now()) >= LINK_QUIET {
                    link.send_keepalive();
                    asked = Some(Instant::now());
                }
            }
        }
    }
}

/// Dials relay `id` again and again, pausing longer each time, until the link is up or the
/// relay is no longer alive.
async fn bring_back(relay: Arc<Relay>, id: String) {
    let Some(cluster) = relay.cluster.as_ref() else {
        return;
    };
    let mut pause = RETRY_FIRST;
    loop {
        tokio::time::sleep(pause).await;
        if relay.stopping() {
            return;
        }
        match dial(&relay, &id).await {
            Ok(linked) => {
                tracing::info!("the link to relay {id} is back");
                cluster.links.up(&relay, &id, linked);
                return;
            }
            Err(Dial::Gone(why)) => {
                tracing::info!("no longer retrying the link to relay {id}: {why}");
                cluster.links.forget(&id);
                return;
            }
            Err(Dial::Failed(why)) => {
                if let Some(Link::Down { why: w, .. }) = cluster.links.lock().get_mut(&id) {
                    *w = why;
                }
            }
        }
        pause = pause.saturating_mul(2).min(RETRY_MAX);
    }
}

/// Why a dial failed.
enum Dial {
    /// The relay is not in the cluster any more (its lease ran out).
    Gone(String),
    /// It did not answer, or refused.
    Failed(String),
}

impl std::fmt::Display for Dial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dial::Gone(w) | Dial::Failed(w) => f.write_str(w),
        }
    }
}

struct PeerClient;

impl Handler for PeerClient {}

/// The live relays as the registry says (or, while it cannot be reached, as its copy said).
pub(super) async fn live_relays(relay: &Relay) -> Result<Vec<(String, String, String)>, String> {
    if let Some(pg) = relay.db.postgres_reads().await
        && let Ok(relays) = pg.live_relays().await
    {
        return Ok(relays);
    }
    relay
        .db
        .read_copy(|c| c.relays())
        .map(|(r, _)| r)
        .ok_or_else(|| "the cluster's registry cannot be reached".to_string())
}

/// Dials relay `id` at the address the registry gives and logs in as this relay, within
/// [`DIAL_TIMEOUT`].
async fn dial(relay: &Arc<Relay>, id: &str) -> Result<Linked, Dial> {
    let relays = live_relays(relay).await.map_err(Dial::Failed)?;
    let (_, addr, key_line) = relays
        .into_iter()
        .find(|(r, _, _)| r == id)
        .ok_or_else(|| Dial::Gone(format!("relay {id} is not alive (its lease ran out)")))?;
    let expected = burrow_io::keys::parse_public_keys(&key_line, "the registry")
        .ok()
        .and_then(|k| k.into_iter().next())
        .and_then(|k| k.to_bytes().ok())
        .ok_or_else(|| {
            Dial::Failed(format!("relay {id} has no usable host key in the registry"))
        })?;
    let mut transport = relay.config.transport(relay.ssh_host_key());
    transport.role = burrow_ssh::transport::Role::Client;
    transport.host_key = None;
    transport.host_key_check = Some(Box::new(move |blob: &[u8]| blob == expected.as_slice()));
    let session = Session::new(
        transport,
        Side::Client {
            user: relay.config.relay_id.clone(),
            credentials: vec![burrow_ssh::auth::Credential::Key(Box::new(
                burrow_ssh::auth::ClientKey::new(relay.host_keys().current),
            ))],
        },
        relay.config.peer_limits(),
        std::time::Instant::now(),
    );
    let started = Instant::now();
    let late = || Dial::Failed(format!("no SSH login at {addr} within {DIAL_TIMEOUT:?}"));
    let tcp = tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(&addr))
        .await
        .map_err(|_| late())?
        .map_err(|e| Dial::Failed(format!("cannot reach it at {addr}: {e}")))?;
    let _ = tcp.set_nodelay(true);
    let activity = burrow_io::activity::Activity::new();
    let (handle, driver) =
        burrow_ssh::driver::start(tcp, session, PeerClient, Some(activity.clone()));
    let task = tokio::spawn(driver);
    let left = DIAL_TIMEOUT.saturating_sub(started.elapsed());
    match tokio::time::timeout(left, handle.authenticated()).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            task.abort();
            return Err(Dial::Failed(format!(
                "it refused this relay at {addr}: {e}"
            )));
        }
        Err(_) => {
            task.abort();
            return Err(late());
        }
    }
    tracing::info!("peer link to relay {id} at {addr} up");
    Ok(Linked { handle, activity })
}

/// A link just made: its handle, and when bytes last moved on it.
struct Linked {
    handle: Handle,
    activity: Arc<burrow_io::activity::Activity>,
}
