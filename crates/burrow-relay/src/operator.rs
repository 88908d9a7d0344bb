//! What operators may do: endpoints opened for them (and why not), `ls`, exec commands and
//! their session channel. Their streams are `operator_stream`.

use std::sync::Arc;
use std::time::Duration;

use burrow_proto::labels::{Labels, allows, needs_labels};
use burrow_proto::name::Login;
use burrow_proto::time::format_utc_minutes;
use burrow_ssh::channel::{OpenKind, Request};
use burrow_ssh::driver::{Channel, ChannelMsg, Offer};

use crate::Relay;
use crate::audit::Outcome;
pub(crate) use crate::operator_session::{OperatorSession, Operators};
pub(crate) use crate::operator_stream::open_stream;
use crate::registry::DeviceSession;
use crate::store::OperatorRecord;

/// Time a device gets to accept a forwarded channel.
pub(crate) const DEVICE_OPEN_TIMEOUT: Duration = Duration::from_secs(15);

/// A `direct-tcpip` request as received.
pub(crate) struct StreamRequest {
    pub(crate) host: String,
    pub(crate) port: u32,
    pub(crate) originator: String,
    pub(crate) originator_address: String,
    pub(crate) originator_port: u32,
}

/// Why a stream was not opened: the SSH reason code and a sentence the client prints.
pub(crate) struct Refusal {
    pub(crate) code: u32,
    pub(crate) reason: String,
}

/// SSH_OPEN_ADMINISTRATIVELY_PROHIBITED: policy said no.
pub(crate) const PROHIBITED: u32 = 1;
/// SSH_OPEN_CONNECT_FAILED: allowed, but the target is not there.
pub(crate) const CONNECT_FAILED: u32 = 2;

impl Refusal {
    pub(crate) fn new(code: u32, reason: impl Into<String>) -> Self {
        Refusal {
            code,
            reason: reason.into(),
        }
    }

    pub(crate) fn outcome(&self) -> Outcome {
        if self.code == PROHIBITED {
            Outcome::Denied
        } else {
            Outcome::Failed
        }
    }

    pub(crate) fn send(self, offer: Offer) {
        offer.reject(self.code, &self.reason);
    }
}

/// The reason given for an offline device.
pub(crate) async fn offline_reason(relay: &Relay, device: &str) -> String {
    match relay.db.last_seen(device).await {
        Ok(Some(t)) => format!(
            "device {device} is offline (last seen {})",
            format_utc_minutes(t)
        ),
        _ => format!("device {device} is offline (never seen)"),
    }
}

/// Who asks for an endpoint: internal endpoints (the agent's probe) are the device's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Asker {
    /// An operator, or anything else outside the device.
    Operator,
    /// The device itself (its end-to-end probe).
    Device,
}

/// Opens a `forwarded-tcpip` channel to `device:port` on the device's current session.
pub(crate) async fn open_endpoint(
    relay: &Relay,
    device: &str,
    port: u16,
    originator_address: &str,
    originator_port: u32,
    asker: Asker,
) -> Result<(Arc<DeviceSession>, Channel), Refusal> {
    let Some(dev) = relay.registry.get(device) else {
        return match relay.db.device_exists(device).await {
            Ok(true) => Err(Refusal::new(
                CONNECT_FAILED,
                offline_reason(relay, device).await,
            )),
            _ => Err(Refusal::new(
                CONNECT_FAILED,
                format!("no device named {device}"),
            )),
        };
    };
    let now = std::time::Instant::now();
    if dev.health(now) != crate::registry::Health::Fine {
        return Err(Refusal::new(
            CONNECT_FAILED,
            format!(
                "device {device} has not answered for {:.0} s (its session is about to be given up; the device reconnects once its link works)",
                dev.silence(now).as_secs_f64()
            ),
        ));
    }
    let ep = dev.endpoint_soon(port, asker == Asker::Device).await;
    let Some(ep) = ep else {
        let ports = dev.ports();
        let exposed = if ports.is_empty() {
            "none yet".to_string()
        } else {
            join_ports(&ports)
        };
        return Err(Refusal::new(
            CONNECT_FAILED,
            format!(
                "device {device} is online but does not expose port {port} (it exposes: {exposed})"
            ),
        ));
    };
    let open = dev.handle.open(OpenKind::ForwardedTcpip {
        address: ep.bind.clone(),
        port: u32::from(port),
        originator: originator_address.to_string(),
        originator_port,
    });
    // A session being replaced (its device reconnected) is told why before it is cut; what
    // waits on it fails at once rather than with it.
    let open = async {
        tokio::select! {
            opened = open => Some(opened),
            () = dev.replaced.cancelled() => None,
        }
    };
    match tokio::time::timeout(DEVICE_OPEN_TIMEOUT, open).await {
        Ok(None) => Err(Refusal::new(
            CONNECT_FAILED,
            format!("device {device} reconnected while this stream was opening; try again"),
        )),
        Ok(Some(Ok(channel))) => Ok((dev, channel)),
        Ok(Some(Err(e))) => Err(Refusal::new(
            CONNECT_FAILED,
            format!("device {device} refused the connection to its port {port}: {e}"),
        )),
        Err(_) => {
            // Until the device is heard again, others get this answer at once.
            dev.open_unanswered(now);
            Err(Refusal::new(
                CONNECT_FAILED,
                format!("device {device} did not answer within {DEVICE_OPEN_TIMEOUT:?}"),
            ))
        }
    }
}

pub(crate) fn join_ports(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether `record`'s policy lets the operator reach `device`: by name, or by the device's
/// labels as they are now (read only when a label selector needs them).
pub(crate) async fn may_reach(relay: &Relay, record: &OperatorRecord, device: &str) -> bool {
    let labels = if needs_labels(&record.allow) {
        relay.db.device_labels(device).await.unwrap_or_default()
    } else {
        Labels::new()
    };
    allows(&record.allow, device, &labels)
}

/// Every device's labels, when `allow` has a label selector (else none are read).
async fn labels_for(relay: &Relay, allow: &[String]) -> std::collections::HashMap<String, Labels> {
    if !needs_labels(allow) {
        return std::collections::HashMap::new();
    }
    relay
        .db
        .devices()
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|d| (d.name, d.labels))
        .collect()
}

/// The operator's current policy record (changes made with the CLI apply at once).
pub(crate) async fn current_record(relay: &Relay, op: &OperatorSession) -> Option<OperatorRecord> {
    relay.db.operator(op.name()).await.ok().flatten()
}

/// Serves an operator's session channel: exec commands, the shell (a listing and help), and
/// console logins (`OPERATOR:DEVICE/CONSOLE`).
pub(crate) fn session_opened(relay: Arc<Relay>, op: Arc<OperatorSession>, channel: Channel) {
    let relay2 = relay.clone();
    relay.tracker.spawn(async move {
        let relay = relay2;
        let mut pty = None;
        let status = loop {
            let (request, want_reply) = match channel.next().await {
                Some(ChannelMsg::Request {
                    request,
                    want_reply,
                }) => (request, want_reply),
                Some(ChannelMsg::Data(_)) => continue,
                Some(ChannelMsg::Eof) | None => return,
            };
            let reply = |ok: bool| {
                if want_reply {
                    channel.reply(ok);
                }
            };
            match request {
                Request::PtyReq { size, .. } => {
                    pty = Some(crate::console::term_size(size.cols, size.rows));
                    reply(true);
                }
                Request::Exec(command)
                    if command.trim() == "binary" && matches!(op.login, Login::Console { .. }) =>
                {
                    // `ssh OPERATOR:DEVICE/NAME@relay binary`: the console's bytes both ways and
                    // nothing else (XMODEM, YMODEM).
                    reply(true);
                    break console_login(&relay, &op, &channel, pty, crate::console::Mode::Binary)
                        .await;
                }
                Request::Exec(command) => {
                    reply(true);
                    let words: Vec<&str> = command.split_whitespace().collect();
                    let status = if let Some(("console", rest)) =
                        words.split_first().map(|(a, b)| (*a, b))
                    {
                        let record = current_record(&relay, &op).await;
                        let labels = match &record {
                            Some(r) => labels_for(&relay, &r.allow).await,
                            None => Default::default(),
                        };
                        let none = Labels::new();
                        let allowed = |device: &str| {
                            record.as_ref().is_some_and(|r| {
                                allows(&r.allow, device, labels.get(device).unwrap_or(&none))
                            })
                        };
                        crate::console::console_exec(&relay, op.name(), &allowed, rest, &channel)
                            .await
                    } else {
                        let (out, err, status) =
                            crate::operator_exec::run_command(&relay, &op, &command).await;
                        let _ = channel.data(out.as_bytes()).await;
                        if !err.is_empty() {
                            let _ = channel.stderr(err.as_bytes()).await;
                        }
                        status
                    };
                    // Audited with what really happened: a refused or unknown command is not ok.
                    let (outcome, detail) = match status {
                        0 => (Outcome::Ok, "exit status 0".to_string()),
                        2 => (
                            Outcome::Denied,
                            "unknown command or usage error (exit status 2)".to_string(),
                        ),
                        n => (Outcome::Failed, format!("exit status {n}")),
                    };
                    relay
                        .audit
                        .record("exec", op.name(), &command, outcome, &detail);
                    break status;
                }
                Request::Shell => {
                    reply(true);
                    if let Login::Console { .. } = &op.login {
                        break console_login(
                            &relay,
                            &op,
                            &channel,
                            pty,
                            crate::console::Mode::Interactive,
                        )
                        .await;
                    }
                    if let Some(size) = pty {
                        break crate::console::run_menu(&relay, op.name(), size, &channel).await;
                    }
                    let (out, _, _) = crate::operator_exec::run_command(&relay, &op, "ls").await;
                    let _ = channel
                        .data(
                            format!("{out}\n{}", crate::operator_exec::HELP)
                                .replace('\n', "\r\n")
                                .as_bytes(),
                        )
                        .await;
                    break 0;
                }
                Request::Subsystem(name) => {
                    let name = burrow_proto::text::clean(&name, burrow_proto::text::MAX_NAME_CHARS);
                    tracing::info!("subsystem {name:?} refused: the relay offers none");
                    reply(false);
                }
                Request::Other(name) if name == "x11-req" => {
                    // Nothing on the relay draws windows, and a forwarded display is a way
                    // into the client.
                    tracing::info!("X11 forwarding refused: the relay forwards no displays");
                    reply(false);
                }
                // `env` is ignored, as sshd ignores what AcceptEnv does not list.
                _ => reply(false),
            }
        };
        channel.exit_status(status);
        channel.eof();
        channel.close();
    });
}

/// A console login (`OPERATOR:DEVICE/NAME`): attached while policy allows the device.
async fn console_login(
    relay: &Arc<Relay>,
    op: &Arc<OperatorSession>,
    channel: &Channel,
    pty: Option<(u16, u16)>,
    mode: crate::console::Mode,
) -> u32 {
    let Login::Console {
        device, console, ..
    } = &op.login
    else {
        return 1;
    };
    let allowed = match current_record(relay, op).await {
        Some(r) => may_reach(relay, &r, device).await,
        None => false,
    };
    if !allowed {
        let why = format!("operator {} may not reach device {device}", op.name());
        relay.audit.record(
            "console-attach",
            op.name(),
            &format!("{device}/{console}"),
            Outcome::Denied,
            &why,
        );
        let _ = channel.data(format!("[burrow] {why}\r\n").as_bytes()).await;
        return 1;
    }
    let guard = op.track(relay, device, true);
    let size = pty.unwrap_or(crate::console::DEFAULT_SIZE);
    let attached = crate::console::attach(relay, op.name(), device, console, mode, size, channel);
    tokio::select! {
        status = attached => status,
        () = guard.stop.cancelled() => {
            let why = format!(
                "\r\n[burrow] operator {} may no longer use device {device}; disconnected\r\n",
                op.name()
            );
            let _ = channel.data(why.as_bytes()).await;
            1
        }
    }
}
