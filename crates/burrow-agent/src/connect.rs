//! Local `[[connect]]` listeners: each accepted connection becomes a `direct-tcpip` channel to a
//! relay-side target (the seeds' MQTT broker on the relay host), over whatever session is up.

use burrow_io::splice::{buffered_halves, splice_halves};
use burrow_proto::addr::{ListenSpec, Target};
use burrow_ssh::channel::OpenKind;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::AgentError;
use crate::session::Current;

/// Binds every `[[connect]]` listener now (a failure is a configuration error), then serves them.
pub(crate) async fn start(
    entries: &[burrow_proto::agent_config::Connect],
    device: &str,
    current: Current,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    for entry in entries {
        let listen: ListenSpec = entry
            .listen
            .parse()
            .map_err(|e| AgentError::Config(format!("[[connect]] listen: {e}")))?;
        let to: Target = entry
            .to
            .parse()
            .map_err(|e| AgentError::Config(format!("[[connect]] to: {e}")))?;
        let listener = TcpListener::bind((listen.addr.as_str(), listen.port))
            .await
            .map_err(|e| {
                AgentError::Listen(format!("[[connect]] cannot listen on {listen}: {e}"))
            })?;
        tracing::info!("forwarding {listen} to {to} on the relay side");
        // With on-demand access the name may come later, from the metadata.
        let device = if device.is_empty() { "DEVICE" } else { device };
        tokio::spawn(serve(
            listener,
            to,
            device.to_string(),
            current.clone(),
            shutdown.clone(),
        ));
    }
    Ok(())
}

async fn serve(
    listener: TcpListener,
    to: Target,
    device: String,
    current: Current,
    shutdown: CancellationToken,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Any session that is up will do (with several relays, the first one held).
        let handle = current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .next()
            .cloned();
        let Some(crate::session::Live {
            handle,
            burrow_relay,
            streams,
        }) = handle
        else {
            tracing::warn!("connection from {peer} to {to} dropped: not connected to the relay");
            continue;
        };
        let to = to.clone();
        let device = device.clone();
        tokio::spawn(async move {
            let _guard = streams.device_side();
            let opened = handle
                .open(OpenKind::DirectTcpip {
                    host: to.host.clone(),
                    port: u32::from(to.port),
                    originator: peer.ip().to_string(),
                    originator_port: u32::from(peer.port()),
                })
                .await;
            match opened {
                Ok(channel) => {
                    let _ = tcp.set_nodelay(true);
                    let (_, r) =
                        splice_halves(channel.halves(), buffered_halves(streams.metered(tcp)))
                            .await;
                    if let Err(e) = r {
                        tracing::debug!("forward to {to} ended: {e}");
                    }
                }
                Err(e) if burrow_relay => tracing::warn!(
                    "relay refused the connection to {to}: {e}; a burrow relay opens only targets its rules name: run `burrow relay device allow-connect {device} {to}` on the relay"
                ),
                Err(e) => tracing::warn!(
                    "relay refused the connection to {to}: {e}; check the relay sshd's AllowTcpForwarding and PermitOpen"
                ),
            }
            drop(handle);
        });
    }
}
