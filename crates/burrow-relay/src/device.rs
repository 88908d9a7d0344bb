//! What devices may do: expose endpoints under their own name, open allowed relay-side targets.

use std::future::pending;
use std::sync::Arc;
use std::time::{Duration, Instant};

use burrow_io::splice::{Progress, buffered_halves, splice_halves_until};
use burrow_proto::REPLACED_PREFIX;
use burrow_ssh::driver::{Channel, Offer};
use tokio::net::TcpStream;

use crate::Relay;
use crate::audit::{Measure, Outcome, stream_summary};
use crate::operator::{Asker, CONNECT_FAILED, PROHIBITED, Refusal, StreamRequest, open_endpoint};
use crate::registry::{DeviceSession, Health};
use crate::store::Write;
use crate::stream_end::{Party, Side, classify, other_was_sending};

/// A session replaced sooner than this after it came up counts as flapping.
const FLAPPING_WITHIN: Duration = Duration::from_secs(60);

/// Time allowed to connect to an `allow-connect` target.
const TARGET_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Registers a freshly authenticated session; an older session of the same device is cut.
pub(crate) fn came_online(relay: &Relay, dev: Arc<DeviceSession>) {
    if let Some(old) = register(relay, dev.clone()) {
        replace(relay, &old, &dev);
    }
}

/// Makes `dev` the device's current session (its endpoints, listeners and the online mirror)
/// and returns the session it displaced, which the caller cuts ([`replace`]) or, for a key seen
/// from two places at once, keeps (see `crate::quarantine`).
pub(crate) fn register(relay: &Relay, dev: Arc<DeviceSession>) -> Option<Arc<DeviceSession>> {
    let peer = dev.peer.to_string();
    let old = relay.registry.take_over(dev.clone());
    if let Some(old) = &old {
        relay.listeners.transfer(old.id, dev.id);
    }
    relay.db.submit(Write::Online {
        device: dev.name.clone(),
        peer: peer.clone(),
        session: dev.id,
        instance: dev.instance.clone(),
        key: dev.key_fingerprint.clone(),
        agent: dev.software.clone(),
    });
    relay
        .audit
        .record("online", &dev.name, &peer, Outcome::Ok, "device session up");
    old
}

/// Cuts `old`, replaced by `dev` (a reboot, a dead link not yet noticed): the takeover.
pub(crate) fn replace(relay: &Relay, old: &Arc<DeviceSession>, dev: &DeviceSession) {
    let peer = dev.peer.to_string();
    relay.metrics.takeover();
    old.replaced.cancel();
    let up = old.since.elapsed();
    // A session replaced soon after it came up is most likely a second agent with the
    // same name, not a reboot: say so, where people look.
    let flapping = if up < FLAPPING_WITHIN {
        "; it was up only briefly: are two devices using the name or key of this one?"
    } else {
        ""
    };
    relay.audit.record(
        "takeover",
        &dev.name,
        &peer,
        Outcome::Ok,
        &format!(
            "new session from {peer} replaced the session from {} (up {:.0} s); the old one is closed{flapping}",
            old.peer,
            up.as_secs_f64()
        ),
    );
    // Tell the old session why it goes (an agent backs off instead of fighting), then cut
    // it; a frozen peer cannot hold this up.
    let why = format!(
        "{REPLACED_PREFIX} of device {} from {peer} replaced this one",
        dev.name
    );
    let old = old.clone();
    tokio::spawn(async move {
        old.handle.disconnect(&why);
        // A live peer reads the reason and the session ends by itself; a frozen one gets
        // a moment for the packet to leave, then the socket is cut.
        let _ = tokio::time::timeout(Duration::from_millis(700), old.handle.closed()).await;
        old.cut.cancel();
    });
}

/// Unregisters a session that ended (unless a newer one already took over), with how it
/// ended; `stopping`: the relay is shutting down.
pub(crate) fn went_offline(relay: &Relay, dev: &DeviceSession, stopping: bool) {
    relay.listeners.release(dev.id);
    if relay.registry.remove(&dev.name, dev.id) {
        let (reason, detail) = crate::health::why_ended(dev, stopping);
        relay.db.submit(Write::Offline {
            device: dev.name.clone(),
            session: dev.id,
            reason: reason.as_str().into(),
            detail: detail.clone(),
        });
        // Issue 23's vocabulary: a fault cut the session, or it ended as someone chose.
        let outcome = if reason.is_fault() {
            Outcome::Interrupted
        } else {
            Outcome::Ok
        };
        relay.audit.record(
            "offline",
            &dev.name,
            &dev.peer.to_string(),
            outcome,
            &format!(
                "device session down after {:.0} s: {}: {detail}",
                dev.since.elapsed().as_secs_f64(),
                reason.as_str()
            ),
        );
    }
}

/// Gives up device sessions whose agent stopped keeping its declared keepalive schedule. One
/// task for all devices: an idle session costs no timer of its own.
pub(crate) async fn watch_silence(
    relay: Arc<Relay>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut tick = Duration::from_secs(1);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            () = tokio::time::sleep(tick) => {}
        }
        let now = Instant::now();
        tick = Duration::from_secs(1);
        for dev in relay.registry.all() {
            let Some(schedule) = dev.schedule else {
                continue;
            };
            // Check a few times within the shortest timeout in use.
            tick = tick.min((schedule.timeout / 4).max(Duration::from_millis(10)));
            if dev.health(now) == Health::Dead {
                let why = format!(
                    "nothing heard for {:.0} s (its agent promised a keepalive after {:.0} s of quiet, answered within {:.0} s)",
                    dev.silence(now).as_secs_f64(),
                    schedule.interval.as_secs_f64(),
                    schedule.timeout.as_secs_f64()
                );
                tracing::info!(device = %dev.name, peer = %dev.peer, "device session given up: {why}");
                dev.give_up(why);
            }
        }
    }
}

/// Bind addresses a device may send: they all mean "my own name".
fn is_own_bind_address(address: &str, device: &str) -> bool {
    matches!(
        address,
        "" | "localhost" | "127.0.0.1" | "0.0.0.0" | "::" | "::1" | "*"
    ) || address == device
        || address == burrow_proto::PROBE_BIND
        // `console/NAME` is the agent's way to name a console endpoint.
        || address
            .strip_prefix(crate::registry::CONSOLE_BIND_PREFIX)
            .is_some_and(burrow_proto::name::is_valid_name)
}

/// Handles `tcpip-forward`: adds the virtual endpoint, and a real listener where allowed.
pub(crate) async fn forward(
    relay: &Arc<Relay>,
    dev: &Arc<DeviceSession>,
    address: &str,
    port: &mut u32,
) -> bool {
    let name = dev.name.as_str();
    let deny = |why: String| {
        relay.audit.record(
            "endpoint-add",
            name,
            &format!("{address}:{port}"),
            Outcome::Denied,
            &why,
        );
        false
    };
    if !relay.registry.is_current(name, dev.id) {
        return deny("session was taken over".into());
    }
    if !is_own_bind_address(address, name) {
        return deny(format!(
            "bind address {address:?} names another device; a device exposes endpoints under its own name only"
        ));
    }
    let Ok(requested) = u16::try_from(*port) else {
        return deny(format!("{port} is not a port"));
    };
    // A real listener (`allow-listen`) is bound before the endpoint is announced: whoever
    // sees the endpoint can connect to it at once. (A port 0 request learns its port first.)
    let listen = |port: u16| async move {
        match relay.db.listen_addr(name, port).await {
            Ok(Some(addr)) => match relay.listeners.ensure(relay, &addr, port, dev).await {
                Ok(()) => Ok(()),
                Err(e) => Err((addr, e)),
            },
            Ok(None) => Ok(()),
            Err(e) => {
                tracing::error!("{e}");
                Ok(())
            }
        }
    };
    let listened = if requested != 0 {
        listen(requested).await
    } else {
        Ok(())
    };
    let assigned = match listened {
        Ok(()) => dev.add_endpoint(address, requested),
        Err(failed) => {
            listen_failed(relay, name, requested, failed);
            return false;
        }
    };
    let Some(assigned) = assigned else {
        return deny("no free dynamic port".into());
    };
    if requested == 0
        && let Err(failed) = listen(assigned).await
    {
        dev.remove_endpoint(assigned);
        listen_failed(relay, name, assigned, failed);
        return false;
    }
    *port = u32::from(assigned);
    if address == burrow_proto::PROBE_BIND {
        // Internal: not listed, not audited.
        tracing::debug!("probe endpoint {name}:{assigned}");
        return true;
    }
    relay.db.submit(Write::Endpoint {
        device: name.to_string(),
        port: assigned,
        bind: address.to_string(),
        present: true,
    });
    relay.audit.record(
        "endpoint-add",
        name,
        &format!("{name}:{assigned}"),
        Outcome::Ok,
        &format!("bind address {address:?}"),
    );
    true
}

fn listen_failed(relay: &Relay, name: &str, port: u16, (addr, e): (String, std::io::Error)) {
    relay.audit.record(
        "endpoint-add",
        name,
        &format!("{addr}:{port}"),
        Outcome::Failed,
        &format!("cannot listen on {addr}:{port}: {e}"),
    );
}

/// Handles `cancel-tcpip-forward`.
pub(crate) fn cancel_forward(
    relay: &Relay,
    dev: &DeviceSession,
    _address: &str,
    port: u32,
) -> bool {
    let Ok(port) = u16::try_from(port) else {
        return false;
    };
    let internal = dev.endpoint(port).is_some_and(|e| e.is_internal());
    if !dev.remove_endpoint(port) {
        return false;
    }
    if internal {
        return true;
    }
    relay.listeners.close(&dev.name, port);
    relay.db.submit(Write::Endpoint {
        device: dev.name.clone(),
        port,
        bind: String::new(),
        present: false,
    });
    relay.audit.record(
        "endpoint-remove",
        &dev.name,
        &format!("{}:{port}", dev.name),
        Outcome::Ok,
        "cancelled by the device",
    );
    true
}

/// Handles `direct-tcpip` from a device: its own endpoints (the tunnel probe) or allowed targets.
pub(crate) fn open_stream(
    relay: Arc<Relay>,
    dev: Arc<DeviceSession>,
    req: StreamRequest,
    offer: Offer,
) {
    let relay2 = relay.clone();
    relay.tracker.spawn(async move {
        let target = format!("{}:{}", req.host, req.port);
        let name = dev.name.clone();
        if req.originator_address == burrow_proto::PROBE_ORIGIN {
            return routed_probe(&relay2, &dev, &req, offer).await;
        }
        let result = connect(&relay2, &dev, &req).await;
        let peer = match result {
            Ok(peer) => peer,
            Err(refusal) => {
                relay2.audit.record(
                    "device-connect",
                    &name,
                    &target,
                    refusal.outcome(),
                    &refusal.reason,
                );
                return refusal.send(offer);
            }
        };
        let Ok(own) = offer.accept() else {
            return;
        };
        let started = Instant::now();
        let probe = matches!(peer, Peer::Endpoint(_, true));
        // A probe every minute per device would swamp the audit trail; the agent's status
        // carries its result.
        let progress = Arc::new(Progress::default());
        let row = if probe {
            None
        } else {
            let measure = Measure::Stream {
                progress: progress.clone(),
                a_is_device: true,
            };
            Some(
                relay2
                    .audit
                    .open("device-connect", &name, &target, "", measure)
                    .await,
            )
        };
        relay2.metrics.stream_opened();
        // Both ends stay open until the row is completed (a peer that saw the close finds
        // the stream audited).
        let mut own = own;
        let dev_side = Side::Device(&dev);
        let lasted;
        let (transfer, ending, peer) = match peer {
            Peer::Endpoint(mut ch, x) => {
                let r = splice_halves_until(own.halves(), ch.halves(), pending(), &progress).await;
                let t = progress.now();
                lasted = started.elapsed();
                let sending = other_was_sending(&r, &mut own, &mut ch).await;
                let ending = classify(&r, &dev_side, &dev_side, relay2.stopping(), sending);
                (t, ending, Peer::Endpoint(ch, x))
            }
            Peer::Tcp(mut tcp) => {
                let _ = tcp.set_nodelay(true);
                let r = splice_halves_until(
                    own.halves(),
                    buffered_halves(&mut tcp),
                    pending(),
                    &progress,
                )
                .await;
                let t = progress.now();
                lasted = started.elapsed();
                let sending = other_was_sending(&r, &mut own, &mut tcp).await;
                let target_side = Side::Tcp(Party::Target);
                let ending = classify(&r, &dev_side, &target_side, relay2.stopping(), sending);
                (t, ending, Peer::Tcp(tcp))
            }
        };
        relay2
            .metrics
            .stream_closed(transfer.b_to_a, transfer.a_to_b, ending.outcome);
        let detail = stream_summary(transfer.b_to_a, transfer.a_to_b, lasted, &ending);
        match row {
            Some(row) => row.close(ending.outcome, &detail),
            None => tracing::debug!(device = %name, "probe stream: {detail}"),
        }
        drop((own, peer));
    });
}

/// The agent's one-round-trip probe: open a stream to its probe endpoint the way an operator
/// stream goes (by name, through the registry), carrying the probe's nonce; the agent refuses
/// that stream as its answer, and the probe's own open is refused with the outcome. Probes are
/// not audited: the agent's status carries them.
async fn routed_probe(relay: &Relay, dev: &DeviceSession, req: &StreamRequest, offer: Offer) {
    let internal = u16::try_from(req.port)
        .ok()
        .and_then(|p| dev.endpoint(p))
        .is_some_and(|e| e.is_internal());
    let started = Instant::now();
    let outcome = if !internal {
        format!("port {} is not this device's probe endpoint", req.port)
    } else {
        let port = u16::try_from(req.port).unwrap_or_default();
        match open_endpoint(
            relay,
            &dev.name,
            port,
            &req.originator_address,
            req.originator_port,
            Asker::Device,
        )
        .await
        {
            // An agent of before the routed probe accepts the stream: close it at once.
            Ok((_, channel)) => {
                channel.close();
                "probe stream accepted and closed".into()
            }
            Err(refusal) => refusal.reason,
        }
    };
    let outcome = if outcome == "probe stream accepted and closed" {
        burrow_proto::PROBE_ANSWERED.to_string()
    } else {
        outcome
    };
    crate::health::probe_done(relay, dev, started.elapsed(), &outcome);
    tracing::debug!(device = %dev.name, "probe: {outcome}");
    offer.reject(CONNECT_FAILED, &outcome);
}

enum Peer {
    /// One of the device's own endpoints; true when it is the internal probe endpoint.
    Endpoint(Channel, bool),
    Tcp(TcpStream),
}

async fn connect(relay: &Relay, dev: &DeviceSession, req: &StreamRequest) -> Result<Peer, Refusal> {
    let name = dev.name.as_str();
    let port = u16::try_from(req.port)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| Refusal::new(PROHIBITED, format!("{} is not a port", req.port)))?;
    // A device reaching its own endpoint through the relay: the agent's end-to-end probe.
    let own_host =
        matches!(req.host.as_str(), "localhost" | "127.0.0.1" | "::1") || req.host == name;
    if let Some(ep) = dev.endpoint(port).filter(|_| own_host) {
        let (_, ch) = open_endpoint(
            relay,
            name,
            port,
            &req.originator_address,
            req.originator_port,
            Asker::Device,
        )
        .await?;
        return Ok(Peer::Endpoint(ch, ep.is_internal()));
    }
    let allowed = relay
        .db
        .may_connect(name, &req.host, port)
        .await
        .map_err(|e| Refusal::new(CONNECT_FAILED, e.to_string()))?;
    if !allowed {
        return Err(Refusal::new(
            PROHIBITED,
            format!(
                "device {name} may not open {}:{port} (allow it with `burrow relay device allow-connect {name} {}:{port}`)",
                req.host, req.host
            ),
        ));
    }
    match tokio::time::timeout(
        TARGET_CONNECT_TIMEOUT,
        TcpStream::connect((req.host.as_str(), port)),
    )
    .await
    {
        Ok(Ok(tcp)) => Ok(Peer::Tcp(tcp)),
        Ok(Err(e)) => Err(Refusal::new(
            CONNECT_FAILED,
            format!("cannot connect to {}:{port}: {e}", req.host),
        )),
        Err(_) => Err(Refusal::new(
            CONNECT_FAILED,
            format!(
                "connecting to {}:{port} took longer than {TARGET_CONNECT_TIMEOUT:?}",
                req.host
            ),
        )),
    }
}
