//! One live connection to a device's console, shared by every operator attached to it.
//!
//! The hub speaks RFC 2217 to the agent, keeps a ring of recent output for late joiners and
//! replays, enforces one writer, and fans output out to viewers through bounded queues: a viewer
//! that cannot keep up skips output (and is told how much), it never slows the console or the
//! other viewers. It records the whole attach cycle and closes when the last operator leaves.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use burrow_proto::rfc2217::{
    CONTROL_BREAK_OFF, CONTROL_BREAK_ON, ComPort, Decoder, Event, Negotiator, encode_command,
    encode_data,
};
use burrow_ssh::driver::{Channel, ChannelMsg};
use bytes::Bytes;
use tokio::sync::mpsc;

use super::recording::Recording;
use crate::Relay;
use crate::audit::Outcome;

/// Recent output kept for late joiners and `^Ecr`.
pub(crate) const RING_BYTES: usize = 64 * 1024;
/// Output messages queued per viewer before it skips.
const VIEWER_QUEUE: usize = 256;
/// How long a break from `^Ecl1` or `console break` holds the line.
pub(crate) const BREAK_DURATION: Duration = Duration::from_millis(500);
/// Longest break an SSH client may ask for: a line held in break longer is a line down.
pub(crate) const MAX_BREAK: Duration = Duration::from_secs(3);

/// The length of a break an SSH client asked for (RFC 4335: milliseconds, 0 for the default).
pub(crate) fn break_length(ms: u32) -> Duration {
    if ms == 0 {
        BREAK_DURATION
    } else {
        Duration::from_millis(u64::from(ms)).min(MAX_BREAK)
    }
}

/// The notice that closes a break.
pub(crate) const BREAK_ENDED: &str = "break ended";

/// What a viewer receives.
#[derive(Debug, Clone)]
pub(crate) enum Out {
    /// Console output.
    Data(Bytes),
    /// A line from burrow (who writes, break failed, port offline, skipped output).
    Notice(String),
}

/// Whether a viewer may write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Writer,
    Viewer,
}

struct Viewer {
    operator: String,
    /// How it attached (`ssh, read-write`, `watch`, `binary`), for `^Ecw`.
    how: String,
    since: std::time::Instant,
    tx: mpsc::Sender<Out>,
    /// Output bytes dropped because the queue was full; the session reports them once it has
    /// written everything queued before the gap.
    skipped: Arc<AtomicUsize>,
}

/// What [`Hub::attach`] hands a session.
pub(crate) struct Attached {
    pub(crate) id: u64,
    pub(crate) role: Role,
    pub(crate) rx: mpsc::Receiver<Out>,
    pub(crate) skipped: Arc<AtomicUsize>,
    pub(crate) replay: Vec<u8>,
}

struct State {
    ring: VecDeque<u8>,
    viewers: HashMap<u64, Viewer>,
    writer: Option<u64>,
    next_id: u64,
    recording: Option<Recording>,
    /// Why this attach cycle is not (or no longer) recorded, told to every operator who attaches.
    unrecorded: Option<String>,
    closed: bool,
    /// What the agent reported: line settings, idle timeout, power outlets.
    line: Option<String>,
    idle: Option<Duration>,
    power: Option<String>,
}

/// A console connection shared by its operators.
pub(crate) struct Hub {
    pub(crate) device: String,
    pub(crate) console: String,
    state: Mutex<State>,
    to_device: mpsc::Sender<Bytes>,
    audit: crate::audit::Audit,
    /// The relay refuses consoles it cannot record (`--require-recordings`).
    require_recording: bool,
    /// Woken when the agent reported the line settings.
    reported: tokio::sync::Notify,
}

/// All open hubs, by (device, console).
#[derive(Default)]
pub(crate) struct Hubs {
    map: Mutex<HashMap<(String, String), Arc<Hub>>>,
}

impl Hubs {
    /// The consoles open now: (device, console, who writes), by device.
    pub(crate) fn in_use(&self) -> Vec<(String, String, Option<String>)> {
        let hubs: Vec<Arc<Hub>> = self
            .map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        let mut out: Vec<_> = hubs
            .iter()
            .filter(|h| !h.state().closed)
            .map(|h| (h.device.clone(), h.console.clone(), h.writer()))
            .collect();
        out.sort();
        out
    }

    /// The hub of `device/console`, connecting to the agent if none is open.
    pub(crate) async fn open(
        &self,
        relay: &Arc<Relay>,
        device: &str,
        console: &str,
        size: (u16, u16),
    ) -> Result<Arc<Hub>, String> {
        let key = (device.to_string(), console.to_string());
        if let Some(hub) = self.map.lock().unwrap_or_else(|e| e.into_inner()).get(&key)
            && !hub.state().closed
        {
            return Ok(hub.clone());
        }
        let Some(dev) = relay.registry.get(device) else {
            return Err(crate::operator::offline_reason(relay, device).await);
        };
        let Some(port) = dev.console_port(console) else {
            let consoles = dev.consoles();
            return Err(if consoles.is_empty() {
                format!("device {device} serves no console")
            } else {
                format!(
                    "device {device} has no console {console} (it has: {})",
                    consoles.join(", ")
                )
            });
        };
        let (_, channel) = crate::operator::open_endpoint(
            relay,
            device,
            port,
            "relay-console",
            0,
            crate::operator::Asker::Operator,
        )
        .await
        .map_err(|r| r.reason)?;
        // Another operator may have opened it meanwhile: keep theirs, close ours.
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(hub) = map.get(&key)
            && !hub.state().closed
        {
            let hub = hub.clone();
            drop(map);
            tokio::spawn(async move {
                channel.close();
            });
            return Ok(hub);
        }
        let created = Recording::create(
            &relay.config.data_dir,
            device,
            console,
            crate::store::now(),
            size,
            &relay.recording_limits,
        );
        let (recording, unrecorded) = match created {
            Ok(r) => (Some(r), None),
            Err(e) => {
                let why = format!("cannot record console {device}/{console}: {e}");
                relay.audit.record(
                    "console-recording",
                    device,
                    &format!("{device}/{console}"),
                    Outcome::Failed,
                    &why,
                );
                if relay.config.require_recordings {
                    drop(map);
                    tokio::spawn(async move {
                        channel.close();
                    });
                    return Err(format!(
                        "{why}; this relay requires recordings (--require-recordings), so the console stays closed"
                    ));
                }
                (None, Some(why))
            }
        };
        let (to_device, from_hubs) = mpsc::channel(64);
        let hub = Arc::new(Hub {
            device: device.to_string(),
            console: console.to_string(),
            state: Mutex::new(State {
                ring: VecDeque::with_capacity(4096),
                viewers: HashMap::new(),
                writer: None,
                next_id: 1,
                recording,
                unrecorded,
                closed: false,
                line: None,
                idle: None,
                power: None,
            }),
            reported: tokio::sync::Notify::new(),
            to_device,
            audit: relay.audit.clone(),
            require_recording: relay.config.require_recordings,
        });
        map.insert(key, hub.clone());
        drop(map);
        relay.tracker.spawn(run_connection(
            relay.clone(),
            hub.clone(),
            channel,
            from_hubs,
        ));
        Ok(hub)
    }

    /// Marks something in the recording of `device/console`, and tells its operators, if it
    /// is open here.
    pub(crate) fn mark(&self, device: &str, console: &str, text: &str) {
        let key = (device.to_string(), console.to_string());
        let hub = self
            .map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned();
        if let Some(hub) = hub {
            hub.notice(text);
        }
    }

    fn remove(&self, hub: &Hub) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let key = (hub.device.clone(), hub.console.clone());
        if map.get(&key).is_some_and(|h| std::ptr::eq(h.as_ref(), hub)) {
            map.remove(&key);
        }
    }
}

/// Carries bytes between the agent's console endpoint and the hub until either side ends.
async fn run_connection(
    relay: Arc<Relay>,
    hub: Arc<Hub>,
    channel: Channel,
    mut from_hub: mpsc::Receiver<Bytes>,
) {
    let write = &channel;
    let mut negotiator = Negotiator::default();
    let _ = write.data(&negotiator.hello(true)).await;
    let mut decoder = Decoder::default();
    let why = loop {
        tokio::select! {
            msg = channel.next() => match msg {
                Some(ChannelMsg::Data(data)) => {
                    let mut events = Vec::new();
                    decoder.feed(&data, &mut events);
                    for event in events {
                        match event {
                            Event::Data(bytes) => hub.output(Bytes::from(bytes)),
                            Event::Notice(text) => hub.notice(&text),
                            Event::Control(text) => hub.report(&text),
                            Event::ComPort { command: ComPort::SetBaud(rate), server: true } => {
                                hub.notice(&format!("line speed is {rate} baud"));
                            }
                            Event::ComPort { command: ComPort::SetControl(CONTROL_BREAK_OFF), server: true } => {
                                hub.notice(BREAK_ENDED);
                            }
                            Event::Negotiate(verb, option) => {
                                if let Some(answer) = negotiator.answer(verb, option) {
                                    let _ = write.data(&answer).await;
                                }
                            }
                            Event::ComPort { .. } => {}
                        }
                    }
                }
                Some(ChannelMsg::Eof) | None => break "the device closed the console",
                Some(ChannelMsg::Request { want_reply, .. }) => {
                    if want_reply {
                        channel.reply(false);
                    }
                }
            },
            bytes = from_hub.recv() => match bytes {
                Some(bytes) if bytes.is_empty() => {
                    if hub.state().closed {
                        break "";
                    }
                }
                Some(bytes) => {
                    if write.data(&bytes).await.is_err() {
                        break "the device session ended";
                    }
                }
                None => break "",
            },
        }
    };
    channel.close();
    if !why.is_empty() {
        hub.notice(&format!("console connection lost: {why}"));
    }
    hub.close();
    relay.hubs.remove(&hub);
}

impl Hub {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fans output out to viewers, the ring and the recording.
    fn output(&self, bytes: Bytes) {
        let mut st = self.state();
        self.record(&mut st, |r| r.output(&bytes));
        st.ring.extend(bytes.iter());
        let excess = st.ring.len().saturating_sub(RING_BYTES);
        st.ring.drain(..excess);
        for v in st.viewers.values_mut() {
            deliver(v, Out::Data(bytes.clone()));
        }
    }

    /// Writes to the recording; when it has just stopped (a cap, a full disk), every operator
    /// is told, the audit says so, and with `--require-recordings` the console closes.
    fn record(&self, st: &mut State, write: impl FnOnce(&mut Recording)) {
        let Some(r) = st.recording.as_mut() else {
            return;
        };
        write(r);
        let Some(why) = r.new_failure() else {
            return;
        };
        let target = format!("{}/{}", self.device, self.console);
        self.audit.record(
            "console-recording",
            &self.device,
            &target,
            Outcome::Failed,
            &format!("recording stopped: {why}"),
        );
        let mut told = format!("recording stopped: {why}");
        if self.require_recording {
            told.push_str(
                "; this relay requires recordings (--require-recordings), so the console is closed",
            );
        } else {
            told.push_str("; the console goes on unrecorded");
        }
        for v in st.viewers.values_mut() {
            deliver(v, Out::Notice(told.clone()));
        }
        st.unrecorded = Some(why);
        if self.require_recording {
            st.closed = true;
            st.writer = None;
            st.viewers.clear();
            if let Some(mut r) = st.recording.take() {
                r.finish();
            }
            let _ = self.to_device.try_send(Bytes::new());
        }
    }

    /// Records a terminal resize of the operator who writes.
    pub(crate) fn resize(&self, id: u64, cols: u32, rows: u32) {
        let mut st = self.state();
        if st.writer == Some(id) {
            self.record(&mut st, |r| r.resize(cols, rows));
        }
    }

    /// Tells every viewer something, and marks it in the recording.
    pub(crate) fn notice(&self, text: &str) {
        let mut st = self.state();
        self.record(&mut st, |r| r.marker(text));
        for v in st.viewers.values_mut() {
            deliver(v, Out::Notice(text.to_string()));
        }
    }

    /// A report from the agent: `line SETTINGS`, `idle-timeout SECONDS`, `power OUTLETS ...`.
    fn report(&self, text: &str) {
        let (verb, rest) = text.split_once(' ').unwrap_or((text, ""));
        let mut st = self.state();
        match verb {
            "line" => {
                let before = st.line.replace(rest.to_string());
                if before.is_some_and(|b| b != rest) {
                    let told = format!("line now {rest}");
                    self.record(&mut st, |r| r.marker(&told));
                    for v in st.viewers.values_mut() {
                        deliver(v, Out::Notice(told.clone()));
                    }
                } else {
                    self.record(&mut st, |r| r.marker(&format!("line {rest}")));
                }
                drop(st);
                self.reported.notify_waiters();
            }
            "idle-timeout" => {
                st.idle = rest
                    .parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && *s > 0.0)
                    .map(Duration::from_secs_f64);
            }
            "power" => st.power = Some(rest.to_string()),
            _ => {}
        }
    }

    /// The line settings the agent reported, waiting a moment for the first report.
    pub(crate) async fn line(&self) -> Option<String> {
        let waiting = self.reported.notified();
        if let Some(l) = self.state().line.clone() {
            return Some(l);
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), waiting).await;
        self.state().line.clone()
    }

    /// The idle timeout of operator sessions, if the console has one.
    pub(crate) fn idle_timeout(&self) -> Option<Duration> {
        self.state().idle
    }

    /// The power outlets, if the console has power control.
    pub(crate) fn power_outlets(&self) -> Option<String> {
        self.state().power.clone()
    }

    /// The power outlets, once the agent has said what the console has (its hello ends with
    /// the line): a console just opened is not taken for one without power.
    pub(crate) async fn reported_power_outlets(&self) -> Option<String> {
        self.line().await;
        self.power_outlets()
    }

    /// Whether it is being recorded, and where.
    pub(crate) fn recording_path(&self) -> Result<String, String> {
        let st = self.state();
        match (&st.recording, &st.unrecorded) {
            (Some(r), _) => Ok(r.path().display().to_string()),
            (None, Some(why)) => Err(why.clone()),
            (None, None) => Err("not recorded".into()),
        }
    }

    /// Who is attached: operator, role, how, seconds attached.
    pub(crate) fn who(&self) -> Vec<(String, Role, String, u64)> {
        let st = self.state();
        let mut out: Vec<_> = st
            .viewers
            .iter()
            .map(|(id, v)| {
                let role = if st.writer == Some(*id) {
                    Role::Writer
                } else {
                    Role::Viewer
                };
                (
                    v.operator.clone(),
                    role,
                    v.how.clone(),
                    v.since.elapsed().as_secs(),
                )
            })
            .collect();
        out.sort_by_key(|(_, _, _, secs)| std::cmp::Reverse(*secs));
        out
    }

    /// Sends a burrow request to the agent (`set ...`, `power ...`).
    pub(crate) async fn request(&self, text: &str) {
        let mut wire = Vec::new();
        burrow_proto::rfc2217::encode_control(text, &mut wire);
        let _ = self.to_device.send(Bytes::from(wire)).await;
    }

    /// Adds an operator; it writes if it asks to and nobody does. Returns its id, role, queue
    /// and the recent output.
    pub(crate) fn attach(
        &self,
        operator: &str,
        want_write: bool,
        how: &str,
    ) -> Result<Attached, String> {
        let (tx, rx) = mpsc::channel(VIEWER_QUEUE);
        let mut st = self.state();
        if st.closed {
            return Err("the console connection just closed; try again".into());
        }
        let id = st.next_id;
        st.next_id += 1;
        let role = if want_write && st.writer.is_none() {
            st.writer = Some(id);
            Role::Writer
        } else {
            Role::Viewer
        };
        let skipped = Arc::new(AtomicUsize::new(0));
        st.viewers.insert(
            id,
            Viewer {
                operator: operator.to_string(),
                how: how.to_string(),
                since: std::time::Instant::now(),
                tx,
                skipped: skipped.clone(),
            },
        );
        let mode = if role == Role::Writer {
            "read-write"
        } else {
            "read-only"
        };
        self.record(&mut st, |r| {
            r.marker(&format!("attach {operator} ({mode})"))
        });
        if let Some(why) = st.unrecorded.clone()
            && let Some(v) = st.viewers.get_mut(&id)
        {
            deliver(v, Out::Notice(format!("not recorded: {why}")));
        }
        let replay = st.ring.iter().copied().collect();
        Ok(Attached {
            id,
            role,
            rx,
            skipped,
            replay,
        })
    }

    /// Who writes, if anyone.
    pub(crate) fn writer(&self) -> Option<String> {
        let st = self.state();
        st.writer
            .and_then(|w| st.viewers.get(&w))
            .map(|v| v.operator.clone())
    }

    /// Whether `id` holds write.
    pub(crate) fn is_writer(&self, id: u64) -> bool {
        self.state().writer == Some(id)
    }

    /// Takes write for `id`: only when free unless `force`. Returns the previous writer.
    pub(crate) fn take_write(&self, id: u64, force: bool) -> Result<Option<String>, String> {
        let mut st = self.state();
        let previous = st.writer.filter(|w| *w != id);
        if let Some(p) = previous
            && !force
        {
            let who = st
                .viewers
                .get(&p)
                .map(|v| v.operator.clone())
                .unwrap_or_default();
            return Err(format!("{who} holds write; force write to take it over"));
        }
        st.writer = Some(id);
        let me = st
            .viewers
            .get(&id)
            .map(|v| v.operator.clone())
            .unwrap_or_default();
        let previous_name = previous.and_then(|p| st.viewers.get(&p).map(|v| v.operator.clone()));
        if let Some(p) = previous
            && let Some(v) = st.viewers.get_mut(&p)
        {
            deliver(
                v,
                Out::Notice(format!("{me} took write; you are read-only now")),
            );
        }
        self.record(&mut st, |r| r.marker(&format!("write {me}")));
        Ok(previous_name)
    }

    /// Gives up write.
    pub(crate) fn spy(&self, id: u64) {
        let mut st = self.state();
        if st.writer == Some(id) {
            st.writer = None;
        }
    }

    /// Removes an operator; the last one out closes the console connection.
    pub(crate) fn detach(&self, id: u64) {
        let mut st = self.state();
        let Some(v) = st.viewers.remove(&id) else {
            return;
        };
        if st.writer == Some(id) {
            st.writer = None;
        }
        self.record(&mut st, |r| r.marker(&format!("detach {}", v.operator)));
        if st.viewers.is_empty() {
            st.closed = true;
            if let Some(mut r) = st.recording.take() {
                r.finish();
            }
        }
        let empty = st.viewers.is_empty();
        drop(st);
        if empty {
            // Dropping our sender is not enough (sessions hold clones): tell the connection task.
            let _ = self.to_device.try_send(Bytes::new());
        }
    }

    fn close(&self) {
        let mut st = self.state();
        st.closed = true;
        st.writer = None;
        // Dropping the senders ends every session's output loop.
        st.viewers.clear();
        if let Some(mut r) = st.recording.take() {
            r.finish();
        }
    }

    /// Keystrokes from the writer.
    pub(crate) async fn input(&self, bytes: &[u8]) {
        let mut wire = Vec::with_capacity(bytes.len() + 4);
        encode_data(bytes, &mut wire);
        let _ = self.to_device.send(Bytes::from(wire)).await;
    }

    async fn command(&self, command: ComPort) {
        let mut wire = Vec::new();
        encode_command(&command, false, &mut wire);
        let _ = self.to_device.send(Bytes::from(wire)).await;
    }

    /// Holds a break on the line for `length`.
    pub(crate) async fn send_break(&self, relay: &Relay, operator: &str, length: Duration) {
        let target = format!("{}/{}", self.device, self.console);
        relay.audit.record(
            "console-break",
            operator,
            &target,
            Outcome::Ok,
            &format!("{} ms", length.as_millis()),
        );
        self.notice(&format!(
            "break ({} ms) sent by {operator}",
            length.as_millis()
        ));
        self.command(ComPort::SetControl(CONTROL_BREAK_ON)).await;
        tokio::time::sleep(length).await;
        self.command(ComPort::SetControl(CONTROL_BREAK_OFF)).await;
    }

    /// Changes the line speed.
    pub(crate) async fn set_baud(&self, relay: &Relay, operator: &str, rate: u32) {
        let target = format!("{}/{}", self.device, self.console);
        relay.audit.record(
            "console-baud",
            operator,
            &target,
            Outcome::Ok,
            &format!("{rate} baud"),
        );
        self.notice(&format!("baud change to {rate} by {operator}"));
        self.command(ComPort::SetBaud(rate)).await;
    }

    /// The recent output.
    pub(crate) fn recent(&self) -> Vec<u8> {
        self.state().ring.iter().copied().collect()
    }
}

/// Queues for a viewer without ever waiting: when its queue is full the output is skipped and
/// counted, never waited for.
fn deliver(v: &mut Viewer, out: Out) {
    if let Err(mpsc::error::TrySendError::Full(Out::Data(d))) = v.tx.try_send(out) {
        v.skipped.fetch_add(d.len(), Ordering::Relaxed);
    }
}
