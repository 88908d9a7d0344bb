//! The russh client handler: checks the relay's host key, serves forwarded channels for exposed
//! endpoints and the probe echo, and refuses every channel the agent did not ask for.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use burrow_io::splice::{End, Flow, splice};
use burrow_proto::addr::Target;
use russh::client::{ChannelOpenHandle, Handler, Msg, Session};
use russh::keys::PublicKeyOrCertificate;
use russh::{Channel, ChannelOpenFailure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::hostkey::{HostKeyPolicy, Verified};

/// Time allowed to connect to a local service.
const SERVICE_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest probe nonce echoed back.
pub(crate) const PROBE_NONCE_LEN: usize = 16;

/// The routed probe waiting for its stream: nonce, and who to tell when it arrives.
pub(crate) type PendingProbe = Arc<Mutex<Option<(u32, tokio::sync::oneshot::Sender<()>)>>>;

/// What one connection's handler needs.
pub(crate) struct Shared {
    pub(crate) relay_host: String,
    pub(crate) relay_port: u16,
    pub(crate) host_key: HostKeyPolicy,
    /// Local service by the port the relay sends in `forwarded-tcpip`.
    pub(crate) services: HashMap<u16, Target>,
    /// Consoles by their endpoint port.
    pub(crate) consoles: HashMap<u16, burrow_proto::agent_config::Console>,
    pub(crate) port_opener: Arc<dyn crate::console::port::PortOpener>,
}

pub(crate) struct AgentHandler {
    pub(crate) shared: Arc<Shared>,
    /// This session's open streams and the last proof of its path.
    pub(crate) streams: Arc<crate::liveness::Streams>,
    /// The routed probe in flight, if any.
    pub(crate) pending_probe: PendingProbe,
    /// Port of this session's probe endpoint, once the relay assigned it.
    pub(crate) probe_port: Arc<Mutex<Option<u16>>>,
    /// Why the host key was refused, for the error message.
    pub(crate) host_key_error: Arc<Mutex<Option<String>>>,
    /// Cancelled when the session ends (the handler is dropped with it).
    pub(crate) dead: CancellationToken,
    /// Flow control for this session's streams, known once the relay identified itself.
    pub(crate) flow: Arc<Mutex<Flow>>,
    /// Set when the relay said a newer session of this device replaced this one.
    pub(crate) replaced: Arc<Mutex<Option<String>>>,
}

impl Drop for AgentHandler {
    fn drop(&mut self) {
        self.dead.cancel();
    }
}

fn refuse(reply: ChannelOpenHandle, why: &str) -> impl std::future::Future<Output = ()> {
    tracing::warn!("refused a channel the relay opened: {why}");
    reply.reject(ChannelOpenFailure::Other {
        code: 1,
        reason: why.to_string(),
    })
}

impl Handler for AgentHandler {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let PublicKeyOrCertificate::PublicKey { key, .. } = key else {
            *self
                .host_key_error
                .lock()
                .unwrap_or_else(|e| e.into_inner()) =
                Some("relay presented a certificate; pin its plain host key instead".into());
            return Ok(false);
        };
        let s = &self.shared;
        match s.host_key.check(&s.relay_host, s.relay_port, key) {
            Ok(Verified::Matched) => Ok(true),
            Ok(Verified::Learned(fp)) => {
                tracing::warn!(
                    "TRUSTED ON FIRST USE: recorded relay {}:{} host key {fp}; verify it with `burrow relay fingerprint` on the relay",
                    s.relay_host,
                    s.relay_port
                );
                Ok(true)
            }
            Err(e) => {
                *self
                    .host_key_error
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(e);
                Ok(false)
            }
        }
    }

    async fn disconnected(
        &mut self,
        reason: russh::client::DisconnectReason<Self::Error>,
    ) -> Result<(), Self::Error> {
        match reason {
            russh::client::DisconnectReason::ReceivedDisconnect(info) => {
                if info.message.starts_with(burrow_proto::REPLACED_PREFIX) {
                    *self.replaced.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(burrow_proto::text::clean(
                            &info.message,
                            burrow_proto::text::MAX_TEXT_CHARS,
                        ));
                }
                Ok(())
            }
            russh::client::DisconnectReason::Error(e) => Err(e),
        }
    }

    async fn kex_done(
        &mut self,
        _shared_secret: Option<&[u8]>,
        _names: &russh::Names,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let burrow = session
            .remote_sshid()
            .starts_with(crate::BURROW_SSH_ID_PREFIX.as_bytes());
        *self.flow.lock().unwrap_or_else(|e| e.into_inner()) = if burrow {
            Flow::Credit
        } else {
            Flow::Capped(burrow_io::splice::DEFAULT_STALL_TIMEOUT)
        };
        Ok(())
    }

    async fn server_channel_open_forwarded_tcpip(
        &mut self,
        channel: Channel<Msg>,
        _connected_address: &str,
        connected_port: u32,
        originator_address: &str,
        originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Ok(port) = u16::try_from(connected_port) else {
            refuse(reply, "not a port").await;
            return Ok(());
        };
        let probe = *self.probe_port.lock().unwrap_or_else(|e| e.into_inner());
        if probe == Some(port) {
            if originator_address == burrow_proto::PROBE_ORIGIN {
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
                        "probe answered"
                    }
                    None => "no probe of that nonce is waiting",
                };
                reply
                    .reject(ChannelOpenFailure::Other {
                        code: 2,
                        reason: answer.into(),
                    })
                    .await;
                return Ok(());
            }
            reply.accept().await;
            tokio::spawn(echo(channel));
            return Ok(());
        }
        if let Some(console) = self.shared.consoles.get(&port).cloned() {
            reply.accept().await;
            tracing::info!("console {} opened from {originator_address}", console.name);
            let guard = self.streams.from_relay();
            let opener = self.shared.port_opener.clone();
            tokio::spawn(async move {
                crate::console::serve(channel, console, opener).await;
                drop(guard);
            });
            return Ok(());
        }
        let Some(target) = self.shared.services.get(&port).cloned() else {
            refuse(reply, &format!("port {port} is not exposed by this agent")).await;
            return Ok(());
        };
        let flow = *self.flow.lock().unwrap_or_else(|e| e.into_inner());
        let from = format!("{originator_address}:{originator_port}");
        let guard = self.streams.from_relay();
        // Connecting is a round trip: never await it inside the handler.
        tokio::spawn(async move {
            let _guard = guard;
            let connect = TcpStream::connect((target.host.as_str(), target.port));
            match tokio::time::timeout(SERVICE_CONNECT_TIMEOUT, connect).await {
                Ok(Ok(tcp)) => {
                    reply.accept().await;
                    tracing::debug!("stream from {from} to {target}");
                    let (t, r) = splice(End::Shared(channel, flow), End::<Msg>::Tcp(tcp)).await;
                    tracing::debug!(
                        "stream from {from} to {target} ended: {} bytes in, {} bytes out, {r:?}",
                        t.a_to_b,
                        t.b_to_a
                    );
                }
                Ok(Err(e)) => {
                    tracing::warn!("cannot connect to local service {target}: {e}");
                    reply
                        .reject(ChannelOpenFailure::Other {
                            code: 2,
                            reason: format!("local service {target} on the device: {e}"),
                        })
                        .await;
                }
                Err(_) => {
                    reply
                        .reject(ChannelOpenFailure::Other {
                            code: 2,
                            reason: format!("local service {target} on the device did not answer"),
                        })
                        .await;
                }
            }
        });
        Ok(())
    }

    async fn server_channel_open_forwarded_streamlocal(
        &mut self,
        _channel: Channel<Msg>,
        _socket_path: &str,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        refuse(reply, "unix socket forwarding was not requested").await;
        Ok(())
    }

    async fn server_channel_open_agent_forward(
        &mut self,
        _channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        refuse(reply, "agent forwarding was not requested").await;
        Ok(())
    }

    async fn server_channel_open_session(
        &mut self,
        _channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        refuse(reply, "the agent offers no sessions").await;
        Ok(())
    }

    async fn server_channel_open_direct_tcpip(
        &mut self,
        _channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        refuse(
            reply,
            &format!("direct-tcpip to {host_to_connect}:{port_to_connect} is not offered"),
        )
        .await;
        Ok(())
    }

    async fn server_channel_open_direct_streamlocal(
        &mut self,
        _channel: Channel<Msg>,
        _socket_path: &str,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        refuse(reply, "unix socket forwarding is not offered").await;
        Ok(())
    }

    async fn server_channel_open_x11(
        &mut self,
        _channel: Channel<Msg>,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        refuse(reply, "X11 forwarding was not requested").await;
        Ok(())
    }

    async fn should_accept_unknown_server_channel(
        &mut self,
        _id: russh::ChannelId,
        channel_type: &str,
    ) -> bool {
        tracing::warn!("refused a {channel_type:?} channel the relay opened");
        false
    }
}

/// The probe's far end: sends back the nonce it receives.
async fn echo(channel: Channel<Msg>) {
    let mut stream = channel.into_stream();
    let mut buf = [0u8; PROBE_NONCE_LEN];
    if stream.read_exact(&mut buf).await.is_ok() {
        let _ = stream.write_all(&buf).await;
        let _ = stream.flush().await;
    }
    let _ = stream.shutdown().await;
}
