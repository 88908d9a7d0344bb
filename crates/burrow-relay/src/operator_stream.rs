//! An operator's stream to a device endpoint (`ssh -J`, `-W`, `-L`): policy, routing (here
//! or through the relay of the cluster holding the device), the splice, its audit, and what
//! the client is told when a fault cut it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use burrow_io::splice::{Progress, splice_halves_until};
use burrow_proto::name::{Login, is_valid_name};
use burrow_ssh::driver::{Channel, Handle, Offer};

use crate::Relay;
use crate::audit::{Measure, stream_summary};
use crate::operator::{
    Asker, CONNECT_FAILED, OperatorSession, PROHIBITED, Refusal, StreamRequest, open_endpoint,
};
use crate::registry::DeviceSession;
use crate::stream_end::{Side, classify, other_was_sending};

/// Where an operator stream goes: the device's session held here, or the relay of the
/// cluster that holds it.
pub(crate) enum Via {
    Session(Arc<DeviceSession>),
    /// The holding relay, and how old the registry copy it was found in was (while the
    /// cluster's database could not be reached).
    Relay(String, Option<Duration>),
}

impl Via {
    fn describe(&self) -> String {
        match self {
            Via::Session(dev) => format!("session {}", dev.id),
            Via::Relay(holder, None) => format!("relay {holder}"),
            Via::Relay(holder, Some(age)) => format!(
                "relay {holder} (the database could not be reached: routed from the registry copy of {:.0} s ago)",
                age.as_secs_f64()
            ),
        }
    }
}

/// Opens the device's endpoint for an operator stream: on the session held here, or in a
/// cluster through the relay that holds it. Returns how it goes (for the audit) and the
/// channel.
async fn route(
    relay: &Arc<Relay>,
    device: &str,
    port: u16,
    req: &StreamRequest,
) -> Result<(Via, Channel), Refusal> {
    let local = open_endpoint(
        relay,
        device,
        port,
        &req.originator_address,
        req.originator_port,
        Asker::Operator,
    )
    .await;
    match (local, &relay.cluster) {
        (Ok((dev, channel)), _) => Ok((Via::Session(dev), channel)),
        (Err(here), Some(cluster)) if relay.registry.get(device).is_none() => {
            let (holder, from_copy, channel) = cluster
                .open_stream(
                    relay,
                    device,
                    port,
                    &req.originator_address,
                    req.originator_port,
                    here,
                )
                .await?;
            Ok((Via::Relay(holder, from_copy), channel))
        }
        (Err(refusal), _) => Err(refusal),
    }
}

/// Checks policy for an operator stream and, when allowed, splices it to the device.
pub(crate) fn open_stream(
    relay: Arc<Relay>,
    op: Arc<OperatorSession>,
    req: StreamRequest,
    offer: Offer,
) {
    let who = op.name().to_string();
    let target = format!("{}:{}", req.host, req.port);
    let relay2 = relay.clone();
    relay.tracker.spawn(async move {
        let checked = check_stream(&relay2, &op, &req).await;
        let refuse = |relay: &Relay, refusal: Refusal| {
            relay
                .audit
                .record("stream", &who, &target, refusal.outcome(), &refusal.reason);
            refusal
        };
        let (device, port) = match checked {
            Ok(t) => t,
            Err(r) => return refuse(&relay2, r).send(offer),
        };
        let opened = route(&relay2, &device, port, &req).await;
        let (via, dev_channel) = match opened {
            Ok(o) => o,
            Err(r) => return refuse(&relay2, r).send(offer),
        };
        let Ok(channel) = offer.accept() else {
            return;
        };
        let started = Instant::now();
        let via_text = format!("from {} via {}", req.originator, via.describe());
        let progress = Arc::new(Progress::default());
        let measure = Measure::Stream {
            progress: progress.clone(),
            a_is_device: false,
        };
        let row = relay2
            .audit
            .open("stream", &who, &target, &via_text, measure)
            .await;
        let guard = op.track(&relay2, &device, false);
        relay2.metrics.stream_opened();
        // Each stream has its own window on both connections: a slow reader holds back
        // this stream only. The channels stay open until the row is completed, so a client
        // that saw its stream close finds it audited.
        let (mut channel, mut dev_channel) = (channel, dev_channel);
        let stop = async {
            tokio::select! {
                biased;
                () = guard.stop.cancelled() => {
                    format!("access was revoked: operator {who} may no longer reach device {device}")
                }
                () = op.cut.cancelled() => if relay2.stopping() {
                    "the relay shut down".to_string()
                } else {
                    format!("operator {who} was removed; its connection was closed")
                },
            }
        };
        let op_handle = channel.handle();
        let result = tokio::select! {
            r = splice_halves_until(channel.halves(), dev_channel.halves(), stop, &progress) => r,
            never = crate::nudge::wake_stalled_client(&op_handle, &progress) => match never {},
        };
        let (transfer, lasted) = (progress.now(), started.elapsed());
        let dev_handle = dev_channel.handle();
        let device_side = match &via {
            Via::Session(dev) => Side::Device(dev),
            Via::Relay(holder, _) => Side::PeerRelay {
                id: holder,
                handle: &dev_handle,
                said: dev_channel.exit_signal(),
            },
        };
        let sending = other_was_sending(&result, &mut channel, &mut dev_channel).await;
        let ending = classify(
            &result,
            &Side::Operator(&op_handle),
            &device_side,
            relay2.stopping(),
            sending,
        );
        relay2
            .metrics
            .stream_closed(transfer.a_to_b, transfer.b_to_a, ending.outcome);
        let summary = stream_summary(transfer.a_to_b, transfer.b_to_a, lasted, &ending);
        row.close(ending.outcome, &format!("{via_text}: {summary}"));
        if ending.is_fault() {
            tell_cut(&op_handle, &req, &target, &summary);
        }
        drop((channel, dev_channel, guard));
    });
}

/// Stdio forwarding (`ssh -W`, the jump of `ssh -J`, `plink -nc`) has no socket to name as the
/// stream's origin: OpenSSH says port 65535, PuTTY port 0, neither of them a port a local
/// connection of `-L` comes from.
fn is_stdio_forward(req: &StreamRequest) -> bool {
    matches!(req.originator_port, 0 | 65535)
}

/// A stream cut by a fault must not look complete to the operator, and closing its channel
/// looks exactly like an end to every client. A connection that carries nothing but this
/// stream (`ssh -W`, the jump of `ssh -J`) is therefore disconnected with the reason: ssh
/// prints it and exits 255. A connection that multiplexes streams (`ssh -L`) keeps its other
/// channels: the stream is closed without EOF and the cut is logged.
fn tell_cut(op: &Handle, req: &StreamRequest, target: &str, summary: &str) {
    if op.ended().is_some() {
        return;
    }
    // This stream's channel is still open, so a count of one means it is the only one.
    if op.channel_count() <= 1 && is_stdio_forward(req) {
        op.disconnect(&format!(
            "burrow relay: the stream to {target} was cut and is incomplete: {summary}"
        ));
    } else {
        tracing::warn!(
            "the stream to {target} from {} was cut and is closed without EOF (the client may show it as a normal end): {summary}",
            req.originator
        );
    }
}

async fn check_stream(
    relay: &Relay,
    op: &OperatorSession,
    req: &StreamRequest,
) -> Result<(String, u16), Refusal> {
    let name = op.name();
    if let Login::Console { .. } = op.login {
        return Err(Refusal::new(
            PROHIBITED,
            format!("a console login cannot forward ports; log in as {name}@relay instead"),
        ));
    }
    // Re-read policy: changes made with the CLI apply to sessions that are already up.
    let record = match relay.db.operator(name).await {
        Ok(Some(r)) => r,
        Ok(None) => {
            return Err(Refusal::new(
                PROHIBITED,
                format!("operator {name} was removed"),
            ));
        }
        Err(e) => return Err(Refusal::new(CONNECT_FAILED, e.to_string())),
    };
    if record.role == crate::store::Role::Viewer {
        return Err(Refusal::new(
            PROHIBITED,
            format!(
                "operator {name} has the viewer role: it watches consoles, it opens no streams"
            ),
        ));
    }
    if record.console_only {
        return Err(Refusal::new(
            PROHIBITED,
            format!("operator {name} may use consoles only, not forward to device ports"),
        ));
    }
    let device = req.host.as_str();
    if !is_valid_name(device) {
        return Err(Refusal::new(
            PROHIBITED,
            format!(
                "{device:?} is not a device name; the relay connects only to devices (DEVICE:PORT)"
            ),
        ));
    }
    if !crate::operator::may_reach(relay, &record, device).await {
        return Err(Refusal::new(
            PROHIBITED,
            format!("operator {name} may not reach device {device}"),
        ));
    }
    let port = u16::try_from(req.port)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| Refusal::new(PROHIBITED, format!("{} is not a port", req.port)))?;
    Ok((device.to_string(), port))
}
