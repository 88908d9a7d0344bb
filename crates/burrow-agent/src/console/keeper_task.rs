//! The task that owns a console's port for the keeper: opens it (and again after it went),
//! reads it into the port log, the alert rules and the attached channels, writes operators'
//! input to it, applies line settings and BREAK, and notes events.

use std::sync::Arc;
use std::time::Instant;

use burrow_proto::pattern_alert::Watcher;
use burrow_proto::portlog::{ConsoleAlert, Kind};
use burrow_proto::serial::{Change, Level, LineSettings, PULSE};
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::alerts::AlertQueue;
use super::keeper::{
    Cmd, INPUT_QUEUE, Keeper, KeeperEnv, Out, PARTIAL_RECORD_QUIET, RETRY_INTERVAL, TICK, now_ms,
};
use super::locate::{Roots, resolve};
use super::port::{PortOpener, SerialControl};
use crate::status::StatusBoard;

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

enum PortEvent {
    Data(u64, Bytes),
    Gone(u64, String),
}

pub(super) struct Task {
    keeper: Arc<Keeper>,
    opener: Arc<dyn PortOpener>,
    roots: Roots,
    alerts: Arc<AlertQueue>,
    status: StatusBoard,
    watcher: Watcher,
    port: Option<ActivePort>,
    /// Which opening of the port events belong to (a reader of an earlier one may still talk).
    generation: u64,
    /// The output record under way: when its first byte came, and its bytes.
    record: Option<(u64, Instant, Vec<u8>)>,
    gone_since: Option<Instant>,
    gone_alerted: bool,
    ever_open: bool,
    dropped_input: bool,
}

impl Task {
    pub(super) fn new(keeper: Arc<Keeper>, env: &KeeperEnv, watcher: Watcher) -> Task {
        Task {
            keeper,
            opener: env.opener.clone(),
            roots: env.roots.clone(),
            alerts: env.alerts.clone(),
            status: env.status.clone(),
            watcher,
            port: None,
            generation: 0,
            record: None,
            gone_since: None,
            gone_alerted: false,
            ever_open: false,
            dropped_input: false,
        }
    }

    pub(super) async fn run(mut self, mut cmds: mpsc::Receiver<Cmd>, shutdown: CancellationToken) {
        let (events_tx, mut events) = mpsc::channel(64);
        self.try_open(&events_tx).await;
        let mut retry = tokio::time::interval(RETRY_INTERVAL);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(ev) = events.recv() => match ev {
                    PortEvent::Data(g, bytes) if g == self.generation => self.output(&bytes),
                    PortEvent::Gone(g, why) if g == self.generation => self.gone(why).await,
                    _ => {}
                },
                Some(cmd) = cmds.recv() => self.command(cmd).await,
                _ = retry.tick(), if self.port.is_none() => self.try_open(&events_tx).await,
                _ = tick.tick() => self.tick(),
            }
        }
        self.flush_record();
        let mut alerts = Vec::new();
        self.watcher.drain(now_ms(), &mut alerts);
        for a in alerts {
            self.alerts.push(a);
        }
    }

    fn log(&self, kind: Kind, at_ms: u64, data: &[u8]) -> u64 {
        let Some(ring) = &self.keeper.ring else {
            return 0;
        };
        let mut ring = ring.lock().unwrap_or_else(|e| e.into_inner());
        // A write to the page cache: quick enough for the port's pace (11 KB/s at 115200
        // baud), so it happens here rather than on a thread of its own.
        match ring.append(at_ms, kind, data) {
            Ok(at) => at,
            Err(e) => {
                tracing::warn!(
                    "console {}: port log write failed: {e}",
                    self.keeper.console.name
                );
                ring.end()
            }
        }
    }

    fn event(&self, text: &str) {
        self.log(Kind::Event, now_ms(), text.as_bytes());
        self.keeper.log_wake.notify_one();
    }

    /// The port said something: log it (cut at line ends), watch it, pass it on.
    fn output(&mut self, bytes: &[u8]) {
        let now = now_ms();
        let offset = self
            .keeper
            .ring
            .as_ref()
            .map_or(0, |r| r.lock().unwrap_or_else(|e| e.into_inner()).end());
        let mut rest = bytes;
        while !rest.is_empty() {
            let (piece, more) = match rest.iter().position(|b| *b == b'\n') {
                Some(i) => rest.split_at(i + 1),
                None => (rest, &[][..]),
            };
            let (_, _, buf) = self
                .record
                .get_or_insert_with(|| (now, Instant::now(), Vec::new()));
            buf.extend_from_slice(piece);
            if piece.ends_with(b"\n") || buf.len() >= burrow_proto::portlog::MAX_RECORD_DATA {
                self.flush_record();
            }
            rest = more;
        }
        let mut alerts = Vec::new();
        self.watcher.feed(now, offset, bytes, &mut alerts);
        self.raise(alerts);
        let settings = self.keeper.settings();
        let data = if settings.imap.is_none() {
            Bytes::copy_from_slice(bytes)
        } else {
            let mut mapped = Vec::with_capacity(bytes.len());
            settings.imap.apply(bytes, &mut mapped);
            Bytes::from(mapped)
        };
        let _ = self.keeper.out.send(Out::Data(data));
        self.keeper.log_wake.notify_one();
    }

    fn flush_record(&mut self) {
        if let Some((at, _, buf)) = self.record.take()
            && !buf.is_empty()
        {
            self.log(Kind::Output, at, &buf);
        }
    }

    fn raise(&self, alerts: Vec<ConsoleAlert>) {
        for a in alerts {
            self.event(&format!("alert {}: {}", a.rule, a.line));
            self.alerts.push(a);
        }
    }

    fn tick(&mut self) {
        if self
            .record
            .as_ref()
            .is_some_and(|(_, since, _)| since.elapsed() >= PARTIAL_RECORD_QUIET)
        {
            self.flush_record();
        }
        let mut alerts = Vec::new();
        self.watcher.tick(now_ms(), &mut alerts);
        self.raise(alerts);
        if let (Some(since), Some(limit)) = (self.gone_since, self.keeper.console.gone_alert())
            && !self.gone_alerted
            && since.elapsed() >= limit
        {
            self.gone_alerted = true;
            let line = format!(
                "{} has been gone for {:.0} s",
                self.keeper.label(),
                since.elapsed().as_secs_f64()
            );
            self.alert("gone", line);
        }
    }

    fn alert(&self, rule: &str, line: String) {
        let offset = self.keeper.log_end().map_or(0, |(_, end)| end);
        self.raise(vec![ConsoleAlert {
            stream: 0,
            seq: 0,
            console: self.keeper.console.name.clone(),
            rule: rule.into(),
            line,
            before: Vec::new(),
            after: Vec::new(),
            at_ms: now_ms(),
            offset,
            suppressed: 0,
        }]);
    }

    fn set_status(&self) {
        let name = self.keeper.console.name.clone();
        let (present, line) = {
            let s = self.keeper.shared();
            (s.present, s.settings.describe())
        };
        self.status.update(|st| {
            if let Some(c) = st.consoles.iter_mut().find(|c| c.name == name) {
                c.present = Some(present);
                c.line = Some(line.clone());
            }
        });
    }

    async fn try_open(&mut self, events: &mpsc::Sender<PortEvent>) {
        let name = self.keeper.console.name.clone();
        let settings = self.keeper.settings();
        let opened = resolve(&self.keeper.console, &self.roots).and_then(|path| {
            let port = self.opener.open(&path, &settings)?;
            Ok((path, port))
        });
        match opened {
            Ok((path, mut port)) => {
                if (!settings.dtr || !settings.rts)
                    && let Err(e) = port.control.set_modem(settings.dtr, settings.rts)
                {
                    tracing::warn!(
                        "console {name}: cannot set DTR/RTS on {}: {e}",
                        path.display()
                    );
                }
                self.generation += 1;
                let g = self.generation;
                let (input_tx, input_rx) = mpsc::channel(INPUT_QUEUE);
                let reader = tokio::spawn(pump_from_port(port.reader, events.clone(), g));
                let writer = tokio::spawn(pump_to_port(input_rx, port.writer, events.clone(), g));
                self.port = Some(ActivePort {
                    control: port.control,
                    input: input_tx,
                    tasks: [reader, writer],
                });
                let device = path.display().to_string();
                {
                    let mut s = self.keeper.shared();
                    s.present = true;
                    s.path = Some(path);
                }
                if self.gone_since.take().is_some() || self.ever_open {
                    tracing::info!("console {name}: {device} is back ({})", settings.describe());
                    self.event(&format!("back: {device}"));
                    self.keeper.say(format!(
                        "online: {device} is back ({})",
                        settings.describe()
                    ));
                    if std::mem::take(&mut self.gone_alerted) {
                        self.alert("back", format!("{device} is back"));
                    }
                } else {
                    tracing::info!("console {name}: {device} open ({})", settings.describe());
                }
                self.ever_open = true;
                self.set_status();
            }
            Err(e) => {
                if self.gone_since.is_none() {
                    self.gone_since = Some(Instant::now());
                    let device = self.keeper.console.port_label();
                    let what = match e.kind() {
                        std::io::ErrorKind::NotFound if self.keeper.console.usb.is_some() => {
                            format!("offline: {e}")
                        }
                        std::io::ErrorKind::NotFound => format!("offline: {device} is gone"),
                        _ => format!("offline: cannot open {device}: {e}"),
                    };
                    tracing::warn!("console {name}: {what}");
                    self.event(&format!("gone: {what}"));
                    self.keeper.say(what);
                    self.set_status();
                }
            }
        }
    }

    async fn gone(&mut self, why: String) {
        self.port = None;
        self.flush_record();
        let device = {
            let mut s = self.keeper.shared();
            s.present = false;
            s.path.as_ref().map(|p| p.display().to_string())
        }
        .unwrap_or_else(|| self.keeper.console.port_label());
        self.gone_since = Some(Instant::now());
        tracing::warn!(
            "console {}: {device} is gone: {why}",
            self.keeper.console.name
        );
        self.event(&format!("gone: {device} ({why})"));
        self.keeper
            .say(format!("offline: {device} is gone ({why})"));
        self.set_status();
    }

    async fn command(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Input(bytes) => {
                let settings = self.keeper.settings();
                if self.keeper.console.log_input {
                    self.log(Kind::Input, now_ms(), &bytes);
                }
                let Some(port) = &self.port else { return };
                let bytes = if settings.omap.is_none() {
                    bytes
                } else {
                    let mut mapped = Vec::with_capacity(bytes.len());
                    settings.omap.apply(&bytes, &mut mapped);
                    Bytes::from(mapped)
                };
                if port.input.try_send(bytes).is_err() {
                    if !self.dropped_input {
                        self.dropped_input = true;
                        self.keeper
                            .say("input dropped: the serial line is slower than the typing".into());
                    }
                } else {
                    self.dropped_input = false;
                }
            }
            Cmd::Set(changes, who, reply) => {
                let result = self.set(&changes).await;
                if let Ok(s) = &result {
                    let words: Vec<String> = changes.iter().map(Change::text).collect();
                    self.event(&format!(
                        "settings {} by {who}: {}",
                        words.join(" "),
                        s.describe()
                    ));
                    let _ = self
                        .keeper
                        .out
                        .send(Out::Control(format!("line {}", s.describe())));
                    self.set_status();
                }
                let _ = reply.send(result);
            }
            Cmd::Break(on, reply) => {
                let result = match self.port.as_mut() {
                    Some(p) => p.control.set_break(on),
                    None => Err(std::io::Error::new(
                        std::io::ErrorKind::NotConnected,
                        "port is offline",
                    )),
                };
                let _ = reply.send(result);
            }
            Cmd::Event(text) => self.event(&text),
        }
    }

    /// Applies changes to the settings and, when the port is open, to the line.
    async fn set(&mut self, changes: &[Change]) -> Result<LineSettings, String> {
        let mut next = self.keeper.settings();
        for c in changes {
            next.apply(c);
        }
        if let Some(port) = self.port.as_mut() {
            port.control
                .set_line(&next)
                .map_err(|e| format!("the port refused {}: {e}", next.describe()))?;
            let pulses = changes
                .iter()
                .any(|c| matches!(c, Change::Dtr(Level::Pulse) | Change::Rts(Level::Pulse)));
            let modem = changes
                .iter()
                .any(|c| matches!(c, Change::Dtr(_) | Change::Rts(_)));
            if pulses {
                let dtr = !changes.contains(&Change::Dtr(Level::Pulse)) && next.dtr;
                let rts = !changes.contains(&Change::Rts(Level::Pulse)) && next.rts;
                port.control
                    .set_modem(dtr, rts)
                    .map_err(|e| format!("DTR/RTS: {e}"))?;
                tokio::time::sleep(PULSE).await;
            }
            if modem {
                port.control
                    .set_modem(next.dtr, next.rts)
                    .map_err(|e| format!("DTR/RTS: {e}"))?;
            }
        }
        self.keeper.shared().settings = next;
        Ok(next)
    }
}

async fn pump_from_port(
    mut reader: Box<dyn tokio::io::AsyncRead + Send + Unpin>,
    events: mpsc::Sender<PortEvent>,
    generation: u64,
) {
    let mut buf = vec![0u8; 4096];
    let why = loop {
        match reader.read(&mut buf).await {
            Ok(0) => break "end of file".to_string(),
            Ok(n) => {
                let bytes = Bytes::copy_from_slice(buf.get(..n).unwrap_or_default());
                if events
                    .send(PortEvent::Data(generation, bytes))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Err(e) => break e.to_string(),
        }
    };
    let _ = events.send(PortEvent::Gone(generation, why)).await;
}

async fn pump_to_port(
    mut input: mpsc::Receiver<Bytes>,
    mut writer: Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
    events: mpsc::Sender<PortEvent>,
    generation: u64,
) {
    while let Some(chunk) = input.recv().await {
        if let Err(e) = writer.write_all(&chunk).await {
            let _ = events
                .send(PortEvent::Gone(generation, e.to_string()))
                .await;
            return;
        }
    }
}
