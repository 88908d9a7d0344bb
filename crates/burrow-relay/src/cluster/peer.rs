//! Relay-to-relay links: SSH (burrow-ssh) between the relays of a cluster.
//!
//! A relay logs in to another's peer port as its own relay id with its host key; the
//! accepting relay lets it in only if the registry records that relay with that key and a
//! live lease, and the dialling relay checks the other's host key against the registry the
//! same way. Nothing else may use the peer port. Over a link, the operator's relay opens
//! `direct-tcpip` channels to `DEVICE:PORT` (an operator stream to a device held by the other
//! relay) and `session` channels whose exec request names a console to attach or a console
//! command to run there. Policy was checked by the operator's relay; the holding relay only
//! routes. One link per pair of relays carries every stream between them (see [`super::links`]
//! for the dialling side).

use std::sync::Arc;

use burrow_ssh::auth::{Decision, Question};
use burrow_ssh::channel::{OpenKind, Request, open_failure};
use burrow_ssh::driver::{Channel, ChannelMsg, Handler, Offer};
use burrow_ssh::session::{Session, Side};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::links::live_relays;
use crate::Relay;
use crate::operator::{Asker, Refusal, open_endpoint};

/// Exec command on a peer `session` channel: attach a console (`OPERATOR DEVICE CONSOLE
/// MODE COLS ROWS`, mode `rw` or `watch`).
pub(crate) const CONSOLE_ATTACH: &str = "burrow-console";
/// Exec command on a peer `session` channel: a console command (`OPERATOR WORDS...`).
pub(crate) const CONSOLE_EXEC: &str = "burrow-console-exec";

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
                relay2.config.transport(relay2.ssh_host_key()),
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
                    let (_, result) =
                        burrow_io::splice::splice_halves(channel.halves(), device_channel.halves())
                            .await;
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
    let Some(command) = crate::conn::next_exec(&channel).await else {
        return;
    };
    let words: Vec<&str> = command.split_whitespace().collect();
    let status = match words.as_slice() {
        [CONSOLE_ATTACH, operator, device, console, mode, cols, rows] => {
            let mode = match *mode {
                "watch" => crate::console::Mode::Watch,
                "binary" => crate::console::Mode::Binary,
                _ => crate::console::Mode::Interactive,
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
