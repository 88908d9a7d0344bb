//! One relay connection to a console: an RFC 2217 server in front of the serial port.
//!
//! The channel is read promptly at all times (it shares the device's SSH session): keystrokes go
//! to a bounded queue in front of the port, which at 9600 baud is far slower than a paste.
//! When the port is missing or vanishes, the operator is told (`offline: /dev/ttyUSB0 is gone`),
//! told again when keys typed meanwhile are dropped, and the port is retried every second until
//! it is back (said to the operator and in the log).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use burrow_proto::agent_config::Console;
use burrow_proto::rfc2217::{
    CONTROL_BREAK_OFF, CONTROL_BREAK_ON, ComPort, Decoder, Event, Negotiator, encode_command,
    encode_data, encode_notice,
};
use burrow_ssh::driver::{Channel, ChannelMsg};
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::port::{PortOpener, SerialControl};
use crate::liveness::Streams;

/// How often a missing port is looked for again.
const RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// A break left on longer than this (the relay vanished mid-break) is released.
const MAX_BREAK: Duration = Duration::from_secs(5);
/// Keystroke chunks queued in front of the port before input is dropped.
const INPUT_QUEUE: usize = 256;

type Writer = Arc<Channel>;

/// Line speeds operators set, by console name: the next attach (a new channel) opens the port at
/// the speed the last one left, not the configured one, until the agent restarts.
pub(crate) type Speeds = Arc<std::sync::Mutex<std::collections::HashMap<String, u32>>>;

struct ActivePort {
    control: Box<dyn SerialControl>,
    input: mpsc::Sender<Bytes>,
    tasks: [JoinHandle<()>; 2],
}

impl Drop for ActivePort {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

struct Server {
    console: Console,
    opener: Arc<dyn PortOpener>,
    write: Writer,
    port: Option<ActivePort>,
    offline: bool,
    breaking: Option<tokio::time::Instant>,
    gone_tx: mpsc::Sender<String>,
    dropped_input: bool,
    /// The operator was told that keys typed while the port is gone are lost (once per outage).
    told_offline_input: bool,
    /// The session's streams: the port's bytes count as their movement.
    streams: Arc<Streams>,
    speeds: Speeds,
}

/// Serves one console channel until the relay closes it.
pub(crate) async fn serve(
    channel: Channel,
    console: Console,
    opener: Arc<dyn PortOpener>,
    streams: Arc<Streams>,
    speeds: Speeds,
) {
    let mut console = console;
    if let Some(&baud) = speeds
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&console.name)
    {
        console.baud = baud;
    }
    let write: Writer = Arc::new(channel);
    let (gone_tx, mut gone_rx) = mpsc::channel(4);
    let mut server = Server {
        console,
        opener,
        write: write.clone(),
        port: None,
        offline: false,
        breaking: None,
        gone_tx,
        dropped_input: false,
        told_offline_input: false,
        streams,
        speeds,
    };
    let mut negotiator = Negotiator::default();
    send(&write, negotiator.hello(false)).await;
    server.try_open().await;
    let mut decoder = Decoder::default();
    let mut retry = tokio::time::interval(RETRY_INTERVAL);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
            Some(why) = gone_rx.recv() => {
                server.port = None;
                server.breaking = None;
                server.offline = true;
                tracing::warn!("console {}: {} is gone: {why}", server.console.name, server.console.device.display());
                server.notice(&format!("offline: {} is gone ({why})", server.console.device.display())).await;
            }
            _ = retry.tick(), if server.port.is_none() => server.try_open().await,
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

async fn send(write: &Writer, bytes: Vec<u8>) {
    let _ = write.data(&bytes).await;
}

impl Server {
    async fn notice(&self, text: &str) {
        let mut out = Vec::new();
        encode_notice(text, &mut out);
        send(&self.write, out).await;
    }

    async fn reply(&self, command: ComPort) {
        let mut out = Vec::new();
        encode_command(&command, true, &mut out);
        send(&self.write, out).await;
    }

    async fn try_open(&mut self) {
        let device = self.console.device.display().to_string();
        match self.opener.open(&self.console) {
            Ok(port) => {
                let (input_tx, input_rx) = mpsc::channel(INPUT_QUEUE);
                let reader = tokio::spawn(pump_from_port(
                    Box::new(self.streams.metered(port.reader)),
                    self.write.clone(),
                    self.gone_tx.clone(),
                ));
                let writer = tokio::spawn(pump_to_port(
                    input_rx,
                    Box::new(self.streams.metered(port.writer)),
                    self.gone_tx.clone(),
                ));
                self.port = Some(ActivePort {
                    control: port.control,
                    input: input_tx,
                    tasks: [reader, writer],
                });
                if self.offline {
                    self.offline = false;
                    self.told_offline_input = false;
                    tracing::info!("console {}: {device} is back", self.console.name);
                    self.notice(&format!("online: {device} is back")).await;
                }
            }
            Err(e) => {
                if !self.offline {
                    self.offline = true;
                    let what = match e.kind() {
                        io::ErrorKind::NotFound => format!("offline: {device} is gone"),
                        _ => format!("offline: cannot open {device}: {e}"),
                    };
                    tracing::warn!("console {}: {what}", self.console.name);
                    self.notice(&what).await;
                }
            }
        }
    }

    async fn set_break(&mut self, on: bool) {
        let result = match self.port.as_mut() {
            Some(p) => p.control.set_break(on),
            None => Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "port is offline",
            )),
        };
        match result {
            Ok(()) => self.breaking = on.then(|| tokio::time::Instant::now() + MAX_BREAK),
            Err(e) => {
                self.breaking = None;
                let device = self.console.device.display().to_string();
                tracing::warn!(
                    "console {}: break failed on {device}: {e}",
                    self.console.name
                );
                self.notice(&format!("break failed on {device}: {e}")).await;
            }
        }
    }

    async fn handle(&mut self, event: Event, negotiator: &mut Negotiator) {
        match event {
            Event::Data(data) => {
                let Some(port) = &self.port else {
                    if !self.told_offline_input {
                        self.told_offline_input = true;
                        let device = self.console.device.display().to_string();
                        self.notice(&format!(
                            "input dropped: {device} is gone; type again once it is back"
                        ))
                        .await;
                    }
                    return;
                };
                if port.input.try_send(Bytes::from(data)).is_err() {
                    if !self.dropped_input {
                        self.dropped_input = true;
                        self.notice("input dropped: the serial line is slower than the typing")
                            .await;
                    }
                } else {
                    self.dropped_input = false;
                }
            }
            Event::Negotiate(verb, option) => {
                if let Some(answer) = negotiator.answer(verb, option) {
                    send(&self.write, answer.to_vec()).await;
                }
            }
            Event::ComPort { server: true, .. } | Event::Notice(_) => {}
            Event::ComPort { command, .. } => self.command(command).await,
        }
    }

    async fn command(&mut self, command: ComPort) {
        match command {
            ComPort::SetBaud(0) => self.reply(ComPort::SetBaud(self.console.baud)).await,
            ComPort::SetBaud(rate) => {
                let result = match self.port.as_mut() {
                    Some(p) => p.control.set_baud(rate),
                    None => Ok(()),
                };
                match result {
                    Ok(()) => {
                        self.console.baud = rate;
                        self.speeds
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(self.console.name.clone(), rate);
                        tracing::info!("console {}: baud rate now {rate}", self.console.name);
                    }
                    Err(e) => {
                        self.notice(&format!("baud change to {rate} failed: {e}"))
                            .await;
                    }
                }
                self.reply(ComPort::SetBaud(self.console.baud)).await;
            }
            ComPort::SetControl(v @ (CONTROL_BREAK_ON | CONTROL_BREAK_OFF)) => {
                self.set_break(v == CONTROL_BREAK_ON).await;
                self.reply(ComPort::SetControl(v)).await;
            }
            // Data size, parity, stop bits and the rest are acknowledged as asked.
            other => self.reply(other).await,
        }
    }
}

async fn pump_from_port(
    mut reader: Box<dyn tokio::io::AsyncRead + Send + Unpin>,
    write: Writer,
    gone: mpsc::Sender<String>,
) {
    let mut buf = vec![0u8; 4096];
    let why = loop {
        match reader.read(&mut buf).await {
            Ok(0) => break "end of file".to_string(),
            Ok(n) => {
                let mut out = Vec::with_capacity(n + 8);
                encode_data(buf.get(..n).unwrap_or_default(), &mut out);
                if write.data(&out).await.is_err() {
                    return;
                }
            }
            Err(e) => break e.to_string(),
        }
    };
    let _ = gone.send(why).await;
}

async fn pump_to_port(
    mut input: mpsc::Receiver<Bytes>,
    mut writer: Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
    gone: mpsc::Sender<String>,
) {
    while let Some(chunk) = input.recv().await {
        if let Err(e) = writer.write_all(&chunk).await {
            let _ = gone.send(e.to_string()).await;
            return;
        }
    }
}
