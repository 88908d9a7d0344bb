//! The accept loop and the per-connection task: admission, pre-auth deadline, shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use burrow_io::activity::Activity;
use burrow_ssh::session::{Session, Side};

use crate::admission_log::Event;
use crate::config::SHUTDOWN_GRACE;
use crate::conn::Conn;
use crate::{Relay, RelayError};

/// Records where devices reach this relay and its host key, for the join strings that
/// `burrow relay token create` prints.
async fn record_address(relay: &Relay, listening: SocketAddr) {
    let address = match &relay.config.advertise {
        Some(a) => a.clone(),
        None if listening.ip().is_unspecified() => {
            format!("{}:{}", crate::config::host_name(), listening.port())
        }
        None => listening.to_string(),
    };
    let record = crate::store::fleet::RelayAddress {
        relay: crate::quarantine::relay_id(relay),
        address: address.clone(),
        host_key: relay.host_keys().public_lines(),
    };
    match relay.db.record_relay_address(&record).await {
        Ok(()) => tracing::info!("join strings name this relay as {address} (--advertise)"),
        Err(e) => tracing::warn!("cannot record this relay's address for join strings: {e}"),
    }
}

pub(crate) async fn run(
    relay: Arc<Relay>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), RelayError> {
    let listening = listener.local_addr().ok();
    if let Some(addr) = listening {
        tracing::info!("relay listening on {addr}");
        crate::control::note_address(&relay.config.data_dir, addr);
        record_address(&relay, addr).await;
    }
    let watcher = relay.tracker.spawn(crate::revocation::watch_revocations(
        relay.clone(),
        shutdown.clone(),
    ));
    let c = &relay.config;
    let sweeper = relay.tracker.spawn(crate::device::watch_silence(
        relay.clone(),
        shutdown.clone(),
    ));
    let pruner = relay.tracker.spawn(crate::audit::keep_pruned(
        relay.db.clone(),
        c.audit_keep,
        c.audit_max_rows,
        c.audit_prune_interval,
        shutdown.clone(),
    ));
    let present = relay.tracker.spawn(crate::cluster::keep_present(
        relay.clone(),
        shutdown.clone(),
    ));
    let hearing = relay
        .tracker
        .spawn(crate::cluster::hear_others(relay.clone(), shutdown.clone()));
    let checkpoints = relay.tracker.spawn(crate::audit::keep_checkpoints(
        relay.clone(),
        shutdown.clone(),
    ));
    let alerting = relay
        .tracker
        .spawn(crate::alerts::run(relay.clone(), shutdown.clone()));
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
        // `relay hostkey add|retire` take effect with the next connection; join strings made
        // from now on carry the keys now held.
        if relay.refresh_host_keys()
            && let Some(addr) = listening
        {
            let relay = relay.clone();
            tokio::spawn(async move { record_address(&relay, addr).await });
        }
        let cut = shutdown.child_token();
        let permit = match relay.gate.admit(peer.ip(), cut.clone()) {
            Ok(admitted) => {
                if let Some(old) = admitted.evicted {
                    report(&relay, Event::Cut, old);
                }
                admitted.permit
            }
            Err(why) => {
                report(&relay, Event::Refused(why), peer.ip());
                continue;
            }
        };
        let relay2 = relay.clone();
        relay.tracker.spawn(async move {
            handle_connection(relay2, stream, peer, permit, cut).await;
        });
    };
    relay
        .stopping
        .store(true, std::sync::atomic::Ordering::Relaxed);
    shutdown.cancel();
    drop(listener);
    watcher.abort();
    sweeper.abort();
    pruner.abort();
    present.abort();
    hearing.abort();
    checkpoints.abort();
    alerting.abort();
    relay.tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, relay.tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("sessions still running after {SHUTDOWN_GRACE:?}; stopping anyway");
    }
    // What the sessions wrote on their way out is stored before the relay says it stopped.
    relay.db.flush().await;
    let (held, _) = relay.db.held();
    if held > 0 {
        tracing::error!(
            "{held} audit entries and session records held for the full disk are lost: the relay stops before the disk took them"
        );
    }
    // The directory is free for the next relay (this one may live on as a value a while).
    drop(
        relay
            .dir_lock
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take(),
    );
    result
}

/// Counts what the gate did, and logs it when a report is due (at most every 10 s).
fn report(relay: &Relay, event: Event, ip: std::net::IpAddr) {
    relay.metrics.admission(event);
    if let Some(report) = relay
        .admission_log
        .note(event, ip, std::time::Instant::now())
    {
        tracing::warn!("{report}");
    }
}

/// TCP keepalive after `interval` of silence, `max` unanswered probes `interval` apart, and the
/// same bound on data left unacknowledged.
fn watch_socket(
    stream: &TcpStream,
    interval: std::time::Duration,
    max: usize,
) -> std::io::Result<()> {
    let socket = socket2::SockRef::from(stream);
    let retries = u32::try_from(max).unwrap_or(u32::MAX).max(1);
    socket.set_tcp_keepalive(
        &socket2::TcpKeepalive::new()
            .with_time(interval)
            .with_interval(interval)
            .with_retries(retries),
    )?;
    socket.set_tcp_user_timeout(Some(interval.saturating_mul(retries.saturating_add(1))))
}

/// Turns TCP keepalive off: an agent that declared its schedule is watched by its silence.
pub(crate) fn quiet_socket(socket: &std::os::fd::OwnedFd) -> std::io::Result<()> {
    let socket = socket2::SockRef::from(socket);
    socket.set_keepalive(false)?;
    socket.set_tcp_user_timeout(None)
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
    // Until the client turns out to be an agent with a declared keepalive schedule, TCP
    // keepalive watches the connection (OpenSSH's sshd relies on it by default too).
    let c = &relay.config;
    if let Err(e) = watch_socket(&stream, c.keepalive_interval, c.keepalive_max) {
        tracing::debug!(%peer, "cannot set TCP keepalive: {e}");
    }
    let socket = std::os::fd::AsFd::as_fd(&stream).try_clone_to_owned().ok();
    let activity = Activity::new();
    let (authed_tx, authed_rx) = oneshot::channel();
    let conn = Conn::new(
        relay.clone(),
        peer,
        cut.clone(),
        permit,
        authed_tx,
        activity.clone(),
        socket,
    );
    let deadline = relay.config.pre_auth_timeout;
    let banner_timeout = relay.config.banner_timeout;
    let ssh = Session::new(
        relay.server_transport(),
        Side::Server {
            methods: crate::config::auth_methods(),
            max_attempts: crate::config::MAX_AUTH_ATTEMPTS,
        },
        relay.config.limits(),
        std::time::Instant::now(),
    );
    let (handle, driver) = burrow_ssh::driver::start(stream, ssh, conn, Some(activity));
    // Cutting the token drops the driver, which closes the socket at once (takeover,
    // revocation, the pre-auth deadline): no write to a frozen peer can hold it.
    let session = async {
        tokio::select! {
            result = driver => result,
            () = cut.cancelled() => Err(burrow_ssh::driver::Error("connection cut".into())),
        }
    };
    tokio::pin!(session);
    // Until authentication succeeds the whole exchange (banner, kex, auth) has one deadline;
    // a connection that says nothing holds a place for nothing, so its identification line
    // has a shorter one: the whole line, not its first bytes (a half-sent line is silence).
    let pre_auth = async {
        let banner = async {
            tokio::time::sleep(banner_timeout).await;
            if handle.peer_id().is_some() {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            authed = tokio::time::timeout(deadline, authed_rx) => match authed {
                Ok(_) => std::future::pending().await,
                Err(_) => ("no authentication", deadline),
            },
            () = banner => ("no identification line", banner_timeout),
        }
    };
    tokio::select! {
        result = &mut session => log_end(result, &span),
        (why, limit) = pre_auth => {
            span.in_scope(|| tracing::info!("{why} within {limit:?}; closing"));
            cut.cancel();
            let _ = session.await;
        }
    }
}

fn log_end(result: Result<(), burrow_ssh::driver::Error>, span: &tracing::Span) {
    let _g = span.enter();
    match result {
        Ok(()) => tracing::debug!("connection closed"),
        Err(e) => tracing::debug!("connection ended: {e}"),
    }
}
