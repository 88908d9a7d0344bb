//! The accept loop and the per-connection task: admission, pre-auth deadline, shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use burrow_io::cut::CutStream;
use burrow_io::first_bytes::FirstBytes;

use crate::config::SHUTDOWN_GRACE;
use crate::conn::Conn;
use crate::gate::Refused;
use crate::{Relay, RelayError};

pub(crate) async fn run(
    relay: Arc<Relay>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), RelayError> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!("relay listening on {addr}");
    }
    let watcher = relay.tracker.spawn(crate::revocation::watch_revocations(
        relay.clone(),
        shutdown.clone(),
    ));
    let c = &relay.config;
    let pruner = relay.tracker.spawn(crate::audit::keep_pruned(
        relay.store.clone(),
        c.audit_keep,
        c.audit_max_rows,
        c.audit_prune_interval,
        shutdown.clone(),
    ));
    let result = loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) if is_transient(&e) => {
                    // Out of file descriptors or a connection reset before accept: keep serving.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
                Err(e) => break Err(RelayError::Listener(e)),
            },
        };
        let cut = shutdown.child_token();
        let permit = match relay.gate.admit(peer.ip(), cut.clone()) {
            Ok(admitted) => {
                if let Some(old) = admitted.evicted {
                    tracing::info!(
                        %peer,
                        "unauthenticated connections at their cap: cut the oldest (from {old}) to admit this one"
                    );
                }
                admitted.permit
            }
            Err(why) => {
                let why = match why {
                    Refused::PerIp => "too many unauthenticated connections from this address",
                    Refused::Rate => "this address opens connections too fast",
                };
                tracing::debug!(%peer, "connection refused: {why}");
                continue;
            }
        };
        let relay2 = relay.clone();
        relay.tracker.spawn(async move {
            handle_connection(relay2, stream, peer, permit, cut).await;
        });
    };
    shutdown.cancel();
    drop(listener);
    watcher.abort();
    pruner.abort();
    relay.tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, relay.tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("sessions still running after {SHUTDOWN_GRACE:?}; stopping anyway");
    }
    result
}

fn is_transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), ConnectionAborted | ConnectionReset | Interrupted | WouldBlock)
        || e.raw_os_error() == Some(24) // EMFILE
        || e.raw_os_error() == Some(23) // ENFILE
}

async fn handle_connection(
    relay: Arc<Relay>,
    stream: TcpStream,
    peer: SocketAddr,
    permit: crate::gate::Permit,
    cut: CancellationToken,
) {
    let span = tracing::info_span!("conn", %peer);
    let _ = stream.set_nodelay(true);
    let (authed_tx, authed_rx) = oneshot::channel();
    let conn = Conn::new(relay.clone(), peer, cut.clone(), permit, authed_tx);
    let (stream, heard) = FirstBytes::new(stream);
    let stream = CutStream::new(stream, cut.clone());
    let deadline = relay.config.pre_auth_timeout;
    // A connection that says nothing holds a place for nothing: it gets a short deadline for
    // its identification line, well before the authentication deadline.
    let banner_timeout = relay.config.banner_timeout;
    let banner_cut = cut.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = tokio::time::sleep(banner_timeout) => {
                if !heard.any() {
                    tracing::debug!(%peer, "no identification within {banner_timeout:?}; closing");
                    banner_cut.cancel();
                }
            }
            () = banner_cut.cancelled() => {}
        }
    });
    let session = async {
        let running = russh::server::run_stream(relay.ssh.clone(), stream, conn).await?;
        running.await
    };
    tokio::pin!(session);
    // Until authentication succeeds the whole exchange (banner, kex, auth) has one deadline.
    let pre_auth = async {
        match tokio::time::timeout(deadline, authed_rx).await {
            Ok(Ok(())) => std::future::pending::<()>().await,
            Ok(Err(_)) => std::future::pending::<()>().await,
            Err(_) => {}
        }
    };
    tokio::select! {
        result = &mut session => log_end(result, &span),
        () = pre_auth => {
            span.in_scope(|| tracing::info!("no authentication within {deadline:?}; closing"));
            cut.cancel();
            let _ = session.await;
        }
    }
}

fn log_end(result: Result<(), russh::Error>, span: &tracing::Span) {
    let _g = span.enter();
    match result {
        Ok(()) => tracing::debug!("connection closed"),
        Err(russh::Error::IO(e)) if e.kind() == std::io::ErrorKind::ConnectionAborted => {
            tracing::debug!("connection cut")
        }
        Err(e) => tracing::debug!("connection ended: {e}"),
    }
}
