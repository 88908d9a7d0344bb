//! One relay connection to a console: an RFC 2217 server in front of the console's keeper.
//!
//! The channel is read promptly at all times (it shares the device's SSH session): keystrokes go
//! to the keeper's bounded queue in front of the port. On opening, the relay is told the line
//! settings, the idle timeout and the power outlets (burrow control reports); an operator is
//! told when the port is gone, and told again when keys typed meanwhile are dropped.

use std::sync::Arc;
use std::time::Duration;

use burrow_proto::rfc2217::{
    CONTROL_BREAK_OFF, CONTROL_BREAK_ON, CONTROL_DTR_OFF, CONTROL_DTR_ON, CONTROL_FLOW_HARDWARE,
    CONTROL_FLOW_NONE, CONTROL_FLOW_XONXOFF, CONTROL_RTS_OFF, CONTROL_RTS_ON, ComPort, Decoder,
    Event, Negotiator, encode_command, encode_control, encode_data, encode_notice,
};
use burrow_proto::serial::{Change, FlowControl, Level, Parity, parse_changes};
use burrow_ssh::driver::{Channel, ChannelMsg};
use bytes::Bytes;
use tokio::sync::broadcast::error::RecvError;

use super::keeper::{Keeper, Out};
use super::power::{PowerAction, outlets};
use crate::liveness::Streams;

/// A break left on longer than this (the relay vanished mid-break) is released.
const MAX_BREAK: Duration = Duration::from_secs(5);

struct Server<'a> {
    keeper: &'a Arc<Keeper>,
    write: &'a Channel,
    breaking: Option<tokio::time::Instant>,
    /// The operator was told that keys typed while the port is gone are lost (once per outage).
    told_offline_input: bool,
    streams: &'a Streams,
}

/// Keeps the keeper's count of attached channels.
struct Attached<'a>(&'a Keeper);

impl Drop for Attached<'_> {
    fn drop(&mut self) {
        self.0.attach(-1);
    }
}

/// Serves one console channel until the relay closes it.
pub(crate) async fn serve(channel: Channel, keeper: Arc<Keeper>, streams: Arc<Streams>) {
    let mut output = keeper.subscribe();
    keeper.attach(1);
    let _attached = Attached(&keeper);
    let write = &channel;
    let mut server = Server {
        keeper: &keeper,
        write,
        breaking: None,
        told_offline_input: false,
        streams: &streams,
    };
    let mut negotiator = Negotiator::default();
    send(write, negotiator.hello(false)).await;
    server.hello().await;
    let mut decoder = Decoder::default();
    loop {
        let break_deadline = server.breaking;
        tokio::select! {
            msg = write.next() => match msg {
                Some(ChannelMsg::Data(data)) => {
                    let mut events = Vec::new();
                    decoder.feed(&data, &mut events);
                    for event in events {
                        server.handle(event, &mut negotiator).await;
                    }
                }
                Some(ChannelMsg::Eof) | None => break,
                Some(ChannelMsg::Request { want_reply, .. }) => {
                    if want_reply {
                        write.reply(false);
                    }
                }
            },
            out = output.recv() => {
                let mut wire = Vec::new();
                match out {
                    Ok(Out::Data(bytes)) => {
                        server.streams.touch();
                        encode_data(&bytes, &mut wire);
                    }
                    Ok(Out::Notice(text)) => encode_notice(&text, &mut wire),
                    Ok(Out::Control(text)) => encode_control(&text, &mut wire),
                    Err(RecvError::Lagged(n)) => encode_notice(
                        &format!("skipped {n} pieces of output: the link to the relay is slower than the port"),
                        &mut wire,
                    ),
                    Err(RecvError::Closed) => break,
                }
                if write.data(&wire).await.is_err() {
                    break;
                }
            }
            _ = sleep_until(break_deadline), if break_deadline.is_some() => {
                server.set_break(false).await;
                server.notice("break released: the relay did not end it").await;
            }
        }
    }
    if server.breaking.is_some() {
        server.set_break(false).await;
    }
    write.close();
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

async fn send(write: &Channel, bytes: Vec<u8>) {
    let _ = write.data(&bytes).await;
}

impl Server<'_> {
    async fn notice(&self, text: &str) {
        let mut out = Vec::new();
        encode_notice(text, &mut out);
        send(self.write, out).await;
    }

    async fn control(&self, text: &str) {
        let mut out = Vec::new();
        encode_control(text, &mut out);
        send(self.write, out).await;
    }

    async fn reply(&self, command: ComPort) {
        let mut out = Vec::new();
        encode_command(&command, true, &mut out);
        send(self.write, out).await;
    }

    /// What the relay learns on opening: settings, idle timeout, power; and a port that is
    /// gone, said at once.
    async fn hello(&self) {
        let c = &self.keeper.console;
        if let Some(idle) = c.idle_timeout() {
            self.control(&format!("idle-timeout {}", idle.as_secs_f64()))
                .await;
        }
        let power = outlets(c);
        if !power.is_empty() {
            self.control(&format!(
                "power {} break-hold {}",
                power.join(","),
                c.break_hold().as_secs_f64()
            ))
            .await;
        }
        // The line last: a relay that has it has the rest of this hello too.
        self.control(&format!("line {}", self.keeper.settings().describe()))
            .await;
        if !self.keeper.present() {
            self.notice(&format!("offline: {} is gone", self.keeper.label()))
                .await;
        }
    }

    async fn set_break(&mut self, on: bool) {
        match self.keeper.set_break(on).await {
            Ok(()) => self.breaking = on.then(|| tokio::time::Instant::now() + MAX_BREAK),
            Err(e) => {
                self.breaking = None;
                let device = self.keeper.label();
                tracing::warn!(
                    "console {}: break failed on {device}: {e}",
                    self.keeper.console.name
                );
                self.notice(&format!("break failed on {device}: {e}")).await;
            }
        }
    }

    async fn handle(&mut self, event: Event, negotiator: &mut Negotiator) {
        match event {
            Event::Data(data) => {
                if !self.keeper.present() {
                    if !self.told_offline_input {
                        self.told_offline_input = true;
                        let device = self.keeper.label();
                        self.notice(&format!(
                            "input dropped: {device} is gone; type again once it is back"
                        ))
                        .await;
                    }
                    return;
                }
                self.told_offline_input = false;
                self.streams.touch();
                self.keeper.input(Bytes::from(data)).await;
            }
            Event::Negotiate(verb, option) => {
                if let Some(answer) = negotiator.answer(verb, option) {
                    send(self.write, answer.to_vec()).await;
                }
            }
            Event::ComPort { server: true, .. } | Event::Notice(_) => {}
            Event::Control(text) => self.control_request(&text).await,
            Event::ComPort { command, .. } => self.command(command).await,
        }
    }

    /// A burrow request from the relay: `set WHO SETTINGS...`, `power WHO ACTION [SECONDS]`.
    async fn control_request(&mut self, text: &str) {
        let words: Vec<&str> = text.split_whitespace().collect();
        match words.as_slice() {
            ["set", who, settings @ ..] => match parse_changes(settings) {
                Ok(changes) => {
                    if let Err(e) = self.keeper.set(changes, who).await {
                        self.notice(&format!("settings not changed: {e}")).await;
                        self.control(&format!("line {}", self.keeper.settings().describe()))
                            .await;
                    }
                }
                Err(e) => self.notice(&format!("settings not changed: {e}")).await,
            },
            ["power", who, action @ ..] => {
                match PowerAction::parse(action, self.keeper.console.break_hold()) {
                    Ok(action) => {
                        if self.keeper.console.power.is_empty() {
                            let why = format!(
                                "console {} has no power control: add [[console.power]] to the agent's config",
                                self.keeper.console.name
                            );
                            self.notice(&why).await;
                            self.control(&format!("power-done failed {}: {why}", action.name()))
                                .await;
                        } else {
                            self.keeper.power(action, (*who).to_string());
                        }
                    }
                    Err(e) => {
                        self.notice(&e).await;
                        self.control(&format!("power-done failed: {e}")).await;
                    }
                }
            }
            _ => tracing::debug!("unknown console request {text:?}"),
        }
    }

    /// Applies a standard RFC 2217 change and answers with the value now in force.
    async fn change(&mut self, change: Change) {
        if let Err(e) = self.keeper.set(vec![change], "rfc2217").await {
            self.notice(&format!("{} failed: {e}", change.text())).await;
        }
    }

    async fn command(&mut self, command: ComPort) {
        let now = |k: &Keeper| k.settings();
        match command {
            ComPort::SetBaud(0) => {}
            ComPort::SetBaud(rate) => match burrow_proto::serial::check_baud(rate) {
                Ok(rate) => {
                    self.change(Change::Baud(rate)).await;
                    tracing::info!(
                        "console {}: baud rate now {}",
                        self.keeper.console.name,
                        now(self.keeper).baud
                    );
                }
                Err(e) => self.notice(&format!("baud change failed: {e}")).await,
            },
            ComPort::SetDataSize(d @ 5..=8) => self.change(Change::DataBits(d)).await,
            ComPort::SetParity(p) => {
                if let Some(p) = Parity::from_rfc2217(p) {
                    self.change(Change::Parity(p)).await;
                }
            }
            ComPort::SetStopSize(s @ 1..=2) => self.change(Change::StopBits(s)).await,
            ComPort::SetControl(v @ (CONTROL_BREAK_ON | CONTROL_BREAK_OFF)) => {
                self.set_break(v == CONTROL_BREAK_ON).await;
                self.reply(ComPort::SetControl(v)).await;
                return;
            }
            ComPort::SetControl(v) => {
                let change = match v {
                    CONTROL_FLOW_NONE => Some(Change::Flow(FlowControl::None)),
                    CONTROL_FLOW_XONXOFF => Some(Change::Flow(FlowControl::Software)),
                    CONTROL_FLOW_HARDWARE => Some(Change::Flow(FlowControl::Hardware)),
                    CONTROL_DTR_ON => Some(Change::Dtr(Level::On)),
                    CONTROL_DTR_OFF => Some(Change::Dtr(Level::Off)),
                    CONTROL_RTS_ON => Some(Change::Rts(Level::On)),
                    CONTROL_RTS_OFF => Some(Change::Rts(Level::Off)),
                    _ => None,
                };
                if let Some(c) = change {
                    self.change(c).await;
                }
                self.reply(ComPort::SetControl(v)).await;
                return;
            }
            other => {
                self.reply(other).await;
                return;
            }
        }
        // Answer with what is in force (a query, or a change the port refused).
        let s = now(self.keeper);
        let answer = match command {
            ComPort::SetBaud(_) => ComPort::SetBaud(s.baud),
            ComPort::SetDataSize(_) => ComPort::SetDataSize(s.data_bits),
            ComPort::SetParity(_) => ComPort::SetParity(s.parity.rfc2217()),
            ComPort::SetStopSize(_) => ComPort::SetStopSize(s.stop_bits),
            other => other,
        };
        self.reply(answer).await;
    }
}
