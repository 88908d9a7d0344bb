//! Relay-to-relay links: SSH (burrow-ssh) between the relays of a cluster.
//!
//! A relay logs in to another's peer port as its own relay id with its host key; the
//! accepting relay lets it in only if the registry records that relay with that key and a
//! live lease, and the dialling relay checks the other's host key against the registry the
//! same way. Nothing else may use the peer port. Over a link, the operator's relay opens
//! `direct-tcpip` channels to `DEVICE:PORT` (an operator stream to a device held by the other
//! relay) and `session` channels whose exec request names a console to attach or a console
//! command to run there. Policy was checked by the operator's relay; the holding relay only
//! routes. One link per pair of relays carries every stream between them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use burrow_ssh::auth::{Decision, Question};
use burrow_ssh::channel::{OpenKind, Request, open_failure};
use burrow_ssh::driver::{Channel, ChannelMsg, Handle, Handler, Offer};
use burrow_ssh::session::{Session, Side};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::Relay;
use crate::operator::{Asker, Refusal, open_endpoint};

/// Exec command on a peer `session` channel: attach a console (`OPERATOR DEVICE CONSOLE
/// MODE COLS ROWS`, mode `rw` or `watch`).
pub(crate) const CONSOLE_ATTACH: &str = "burrow-console";
/// Exec command on a peer `session` channel: a console command (`OPERATOR WORDS...`).
pub(crate) const CONSOLE_EXEC: &str = "burrow-console-exec";

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
async fn live_relays(relay: &Relay) -> Result<Vec<(String, String, String)>, String> {
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
    let mut transport = relay.config.transport(relay.ssh_host_key.clone());
    transport.role = burrow_ssh::transport::Role::Client;
    transport.host_key = None;
    transport.host_key_check = Some(Box::new(move |blob: &[u8]| blob == expected.as_slice()));
    let session = Session::new(
        transport,
        Side::Client {
            user: relay.config.relay_id.clone(),
            credentials: vec![burrow_ssh::auth::Credential::Key(Box::new(
                burrow_ssh::auth::ClientKey::new(relay.host_key.clone()),
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

/// Serves the peer port until `shutdown`.
pub(crate) async fn serve(relay: Arc<Relay>, listener: TcpListener, shutdown: CancellationToken) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("peer port: accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let relay2 = relay.clone();
        let stop = shutdown.clone();
        relay.tracker.spawn(async move {
            let ssh = Session::new(
                relay2.config.transport(relay2.ssh_host_key.clone()),
                Side::Server {
                    methods: vec![burrow_ssh::auth::method::PUBLICKEY],
                    max_attempts: 2,
                },
                relay2.config.peer_limits(),
                std::time::Instant::now(),
            );
            let conn = PeerServer {
                relay: relay2.clone(),
                peer_relay: None,
            };
            let (_handle, driver) = burrow_ssh::driver::start(stream, ssh, conn, None);
            tokio::select! {
                r = driver => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, "peer link ended: {e}");
                    }
                }
                () = stop.cancelled() => {}
            }
        });
    }
}

struct PeerServer {
    relay: Arc<Relay>,
    /// The relay that logged in.
    peer_relay: Option<String>,
}

impl PeerServer {
    async fn known_relay(&self, user: &str, key: &burrow_io::keys::PublicKey) -> bool {
        // While the database cannot be reached, the relays its copy knew.
        let Ok(relays) = live_relays(&self.relay).await else {
            return false;
        };
        let presented = burrow_io::keys::fingerprint(key);
        relays.iter().any(|(id, _, line)| {
            id == user
                && burrow_io::keys::parse_public_keys(line, "the registry")
                    .ok()
                    .and_then(|k| k.into_iter().next())
                    .is_some_and(|k| burrow_io::keys::fingerprint(&k) == presented)
        })
    }
}

impl Handler for PeerServer {
    async fn auth(&mut self, question: Question) -> Decision {
        match &question {
            Question::KeyQuery { user, key } | Question::Key { user, key } => {
                if self.known_relay(user, key).await {
                    if let Question::Key { .. } = question {
                        self.peer_relay = Some(user.clone());
                    }
                    Decision::Accept
                } else {
                    tracing::warn!(
                        "peer port: {user:?} is not a live relay of this cluster with that key; refused"
                    );
                    Decision::Reject
                }
            }
            Question::Password { .. } => Decision::Reject,
        }
    }

    async fn channel_open(&mut self, kind: OpenKind, offer: Offer) {
        let from = self.peer_relay.clone().unwrap_or_default();
        match kind {
            OpenKind::DirectTcpip {
                host,
                port,
                originator,
                originator_port,
            } => {
                let relay = self.relay.clone();
                self.relay.tracker.spawn(async move {
                    let Ok(port) = u16::try_from(port) else {
                        return offer.reject(open_failure::CONNECT_FAILED, "not a port");
                    };
                    let opened = open_endpoint(
                        &relay,
                        &host,
                        port,
                        &originator,
                        originator_port,
                        Asker::Operator,
                    )
                    .await;
                    let (dev, device_channel) = match opened {
                        Ok(o) => o,
                        Err(r) => return r.send(offer),
                    };
                    let Ok(channel) = offer.accept() else {
                        return;
                    };
                    relay.metrics.peer_stream();
                    tracing::debug!("peer stream from relay {from} to {host}:{port}");
                    let (mut channel, mut device_channel) = (channel, device_channel);
                    let (_, result) =
                        burrow_io::splice::splice(&mut channel, &mut device_channel).await;
                    // The operator's relay audits the stream and tells its client; what it
                    // cannot see from here is why the device's side went: a fault is said
                    // before the channel closes.
                    let ending = crate::stream_end::classify(
                        &result,
                        &crate::stream_end::Side::Operator(&channel.handle()),
                        &crate::stream_end::Side::Device(&dev),
                        relay.stopping(),
                        true,
                    );
                    if ending.is_fault()
                        && let Some(why) = ending.why
                    {
                        let _ = channel
                            .request(
                                Request::ExitSignal {
                                    name: "CUT".into(),
                                    core_dumped: false,
                                    message: why.trim_start_matches("cut by a fault: ").to_string(),
                                },
                                false,
                            )
                            .await;
                    }
                });
            }
            OpenKind::Session => match offer.accept() {
                Ok(channel) => {
                    let relay = self.relay.clone();
                    self.relay
                        .tracker
                        .spawn(async move { serve_console(relay, channel).await });
                }
                Err(e) => tracing::debug!("peer session lost before it opened: {e}"),
            },
            _ => offer.reject(
                open_failure::PROHIBITED,
                "the peer port carries streams and consoles only",
            ),
        }
    }
}

/// A console attached or a console command run for an operator of another relay.
async fn serve_console(relay: Arc<Relay>, channel: Channel) {
    let command = loop {
        match channel.next().await {
            Some(ChannelMsg::Request {
                request: Request::Exec(command),
                want_reply,
            }) => {
                if want_reply {
                    channel.reply(true);
                }
                break command;
            }
            Some(ChannelMsg::Request { want_reply, .. }) => {
                if want_reply {
                    channel.reply(false);
                }
            }
            Some(_) => {}
            None => return,
        }
    };
    let words: Vec<&str> = command.split_whitespace().collect();
    let status = match words.as_slice() {
        [CONSOLE_ATTACH, operator, device, console, mode, cols, rows] => {
            let mode = if *mode == "watch" {
                crate::console::Mode::Watch
            } else {
                crate::console::Mode::Interactive
            };
            let size = (cols.parse().unwrap_or(80), rows.parse().unwrap_or(24));
            crate::console::run_console(&relay, operator, device, console, mode, size, &channel)
                .await
        }
        [CONSOLE_EXEC, operator, rest @ ..] => {
            crate::console::console_exec(&relay, operator, &|_| true, rest, &channel).await
        }
        _ => {
            let _ = channel.stderr(b"unknown peer command\n").await;
            2
        }
    };
    channel.exit_status(status);
    channel.eof();
    channel.close();
}

/// Carries an operator's session channel to a console on another relay: bytes both ways,
/// and the operator's terminal requests (window size, break). Returns the exit status the
/// other relay sent.
pub(crate) async fn bridge(operator: &Channel, peer: &Channel) -> u32 {
    let mut status = 1;
    let mut op_open = true;
    loop {
        tokio::select! {
            msg = operator.next(), if op_open => match msg {
                Some(ChannelMsg::Data(d)) => {
                    if peer.data(&d).await.is_err() {
                        break;
                    }
                }
                Some(ChannelMsg::Request { request, want_reply }) => {
                    let forwarded = matches!(request, Request::WindowChange(_) | Request::Break { .. });
                    let ok = forwarded && peer.request(request, want_reply).await.unwrap_or(false);
                    if want_reply {
                        operator.reply(ok);
                    }
                }
                Some(ChannelMsg::Eof) => {
                    peer.eof();
                    op_open = false;
                }
                None => break,
            },
            msg = peer.next() => match msg {
                Some(ChannelMsg::Data(d)) => {
                    if operator.data(&d).await.is_err() {
                        break;
                    }
                }
                Some(ChannelMsg::Request { request: Request::ExitStatus(code), .. }) => {
                    status = code;
                }
                Some(ChannelMsg::Request { want_reply, .. }) => {
                    if want_reply {
                        peer.reply(false);
                    }
                }
                Some(ChannelMsg::Eof) | None => break,
            },
        }
    }
    status
}

impl Refusal {
    /// A refusal for a stream the peer relay could not carry.
    pub(crate) fn from_peer(relay: &str, why: &str) -> Refusal {
        Refusal::new(
            crate::operator::CONNECT_FAILED,
            format!("via relay {relay}: {why}"),
        )
    }
}
