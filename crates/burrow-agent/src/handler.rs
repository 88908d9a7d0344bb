//! The SSH client handler: serves forwarded channels for exposed endpoints, consoles and the
//! probe echo, and refuses every channel the agent did not ask for.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use burrow_io::splice::{buffered_halves, splice_halves};
use burrow_proto::addr::Target;
use burrow_ssh::channel::{OpenKind, open_failure};
use burrow_ssh::driver::{Channel, Handler, Offer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::hostkey::HostKeyPolicy;

/// Time allowed to connect to a local service.
const SERVICE_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest probe nonce echoed back.
pub(crate) const PROBE_NONCE_LEN: usize = 16;

/// The routed probe waiting for its stream: nonce, and who to tell when it arrives.
pub(crate) type PendingProbe = Arc<Mutex<Option<(u32, tokio::sync::oneshot::Sender<()>)>>>;

/// What one connection's handler needs.
pub(crate) struct Shared {
    /// This agent process (see [`crate::AgentOptions::instance`]).
    pub(crate) instance: String,
    /// The relay pins; a key a relay proved it holds is added (host key rotation).
    pub(crate) host_key: Mutex<HostKeyPolicy>,
    /// The config file the pins came from, where learned pins are added.
    pub(crate) pin_file: Option<std::path::PathBuf>,
    /// Local service by the port the relay sends in `forwarded-tcpip`.
    pub(crate) services: HashMap<u16, Target>,
    /// Consoles by their endpoint port: their ports are kept open for the agent's life.
    pub(crate) consoles: HashMap<u16, Arc<crate::console::Keeper>>,
}

pub(crate) struct AgentHandler {
    pub(crate) shared: Arc<Shared>,
    /// This session's open streams and the last proof of its path.
    pub(crate) streams: Arc<crate::liveness::Streams>,
    /// The routed probe in flight, if any.
    pub(crate) pending_probe: PendingProbe,
    /// Port of this session's probe endpoint, once the relay assigned it.
    pub(crate) probe_port: Arc<Mutex<Option<u16>>>,
    /// The relay's last banner (a burrow relay explains a refused key in one).
    pub(crate) banner: Arc<Mutex<Option<String>>>,
    /// The relay this session is with.
    pub(crate) target: Target,
}

fn refuse(offer: Offer, why: &str) {
    tracing::warn!("refused a channel the relay opened: {why}");
    offer.reject(open_failure::PROHIBITED, why);
}

impl Handler for AgentHandler {
    fn host_keys(
        &mut self,
        keys: Result<Vec<Vec<u8>>, String>,
    ) -> impl std::future::Future<Output = ()> + Send {
        match keys {
            Ok(keys) => {
                for blob in keys {
                    crate::hostkey::learn(&self.shared, &self.target, &blob);
                }
            }
            Err(why) => tracing::warn!(
                "relay {} announced a host key it did not prove: {why}; not trusted",
                self.target
            ),
        }
        async {}
    }

    fn banner(&mut self, text: &str) {
        // Untrusted text from before authentication: cleaned and cut like any peer string.
        let text = burrow_proto::text::clean(text, burrow_proto::text::MAX_TEXT_CHARS);
        *self.banner.lock().unwrap_or_else(|e| e.into_inner()) = Some(text);
    }

    async fn channel_open(&mut self, kind: OpenKind, offer: Offer) {
        let OpenKind::ForwardedTcpip {
            port,
            originator,
            originator_port,
            ..
        } = kind
        else {
            let why = match &kind {
                OpenKind::Session => "the agent offers no sessions".to_string(),
                OpenKind::DirectTcpip { host, port, .. } => {
                    format!("direct-tcpip to {host}:{port} is not offered")
                }
                other => format!("{} channels are not offered", other.name()),
            };
            return refuse(offer, &why);
        };
        let Ok(port) = u16::try_from(port) else {
            return refuse(offer, "not a port");
        };
        let probe = *self.probe_port.lock().unwrap_or_else(|e| e.into_inner());
        if probe == Some(port) {
            if originator == burrow_proto::PROBE_ORIGIN {
                // The routed probe arrived: that is the whole proof. Refusing the stream ends
                // it in one message.
                let waiting = self
                    .pending_probe
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take_if(|(nonce, _)| *nonce == originator_port);
                let answer = match waiting {
                    Some((_, arrived)) => {
                        let _ = arrived.send(());
                        burrow_proto::PROBE_ANSWERED
                    }
                    None => "no probe of that nonce is waiting",
                };
                offer.reject(open_failure::CONNECT_FAILED, answer);
                return;
            }
            if let Ok(channel) = offer.accept() {
                tokio::spawn(echo(channel));
            }
            return;
        }
        if let Some(keeper) = self.shared.consoles.get(&port).cloned() {
            let Ok(channel) = offer.accept() else { return };
            tracing::info!("console {} opened from {originator}", keeper.console.name);
            let guard = self.streams.from_relay();
            let streams = self.streams.clone();
            tokio::spawn(async move {
                crate::console::serve(channel, keeper, streams).await;
                drop(guard);
            });
            return;
        }
        let Some(target) = self.shared.services.get(&port).cloned() else {
            return refuse(offer, &format!("port {port} is not exposed by this agent"));
        };
        let from = format!("{originator}:{originator_port}");
        let guard = self.streams.from_relay();
        let streams = self.streams.clone();
        // Connecting is a round trip: never await it inside the handler.
        tokio::spawn(async move {
            let _guard = guard;
            let connect = TcpStream::connect((target.host.as_str(), target.port));
            match tokio::time::timeout(SERVICE_CONNECT_TIMEOUT, connect).await {
                Ok(Ok(tcp)) => {
                    let Ok(channel) = offer.accept() else { return };
                    let _ = tcp.set_nodelay(true);
                    tracing::debug!("stream from {from} to {target}");
                    let (t, r) =
                        splice_halves(channel.halves(), buffered_halves(streams.metered(tcp)))
                            .await;
                    tracing::debug!(
                        "stream from {from} to {target} ended: {} bytes in, {} bytes out, {r:?}",
                        t.a_to_b,
                        t.b_to_a
                    );
                }
                Ok(Err(e)) => {
                    tracing::warn!("cannot connect to local service {target}: {e}");
                    offer.reject(
                        open_failure::CONNECT_FAILED,
                        &format!("local service {target} on the device: {e}"),
                    );
                }
                Err(_) => offer.reject(
                    open_failure::CONNECT_FAILED,
                    &format!("local service {target} on the device did not answer"),
                ),
            }
        });
    }
}

/// The probe's far end: sends back the nonce it receives.
async fn echo(mut channel: Channel) {
    let mut buf = [0u8; PROBE_NONCE_LEN];
    if channel.read_exact(&mut buf).await.is_ok() {
        let _ = channel.write_all(&buf).await;
    }
    let _ = channel.shutdown().await;
}
