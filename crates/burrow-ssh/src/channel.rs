//! The connection protocol (RFC 4254, RFC 4335) with no I/O: channels, their windows, their
//! requests, and global requests.
//!
//! Flow control is by consumption. A channel's receive window shrinks as data arrives and grows
//! again only when the application says it has taken bytes ([`Connection::consume`]); a peer
//! that sends past the window it was given breaks the protocol. So no channel's queue can
//! grow past the window it advertised, and one slow reader holds back only its own channel.
//! Sending is the mirror: [`Connection::send`] takes what the peer's window allows and says
//! how much, and [`Event::Writable`] tells when the peer has made room.
//!
//! EOF and CLOSE follow RFC 4254 §5.3: each direction ends on its own with EOF; a CLOSE is
//! answered with a CLOSE, and the channel number is free once both have gone.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;

use crate::msg;
use crate::wire::{Reader, WireError, Writer};

/// Longest host name, signal name, terminal name or similar taken from the peer.
const MAX_NAME: usize = 1024;
/// Longest command (`exec`) or environment value taken from the peer.
const MAX_COMMAND: usize = 64 * 1024;
/// Largest terminal modes blob.
const MAX_MODES: usize = 4096;
/// Largest data in one CHANNEL_DATA (the packet limit bounds it too).
const MAX_DATA: usize = 256 * 1024;
/// Channels one connection may hold open at once.
pub const MAX_CHANNELS: usize = 1024;
/// Requests wanting a reply that may be outstanding, per channel and for global requests.
const MAX_OWED: usize = 64;

/// A channel, by our own number for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChannelId(pub u32);

impl std::fmt::Display for ChannelId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "channel {}", self.0)
    }
}

/// What a channel is for (RFC 4254 §6.1, §7.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenKind {
    /// `session`: a shell, a command or a console.
    Session,
    /// `direct-tcpip`: the client asks for a stream to `host:port` (`ssh -W`, `-L`, `-J`).
    DirectTcpip {
        /// Host to connect to.
        host: String,
        /// Port to connect to.
        port: u32,
        /// Where the stream came from, as the client says.
        originator: String,
        /// Its port.
        originator_port: u32,
    },
    /// `forwarded-tcpip`: a connection arrived on a port forwarded with `tcpip-forward`.
    ForwardedTcpip {
        /// The address that was forwarded.
        address: String,
        /// The port that was forwarded.
        port: u32,
        /// Where the connection came from.
        originator: String,
        /// Its port.
        originator_port: u32,
    },
    /// Anything else (refused by burrow).
    Other(String),
}

impl OpenKind {
    /// The channel type as on the wire.
    pub fn name(&self) -> &str {
        match self {
            OpenKind::Session => "session",
            OpenKind::DirectTcpip { .. } => "direct-tcpip",
            OpenKind::ForwardedTcpip { .. } => "forwarded-tcpip",
            OpenKind::Other(name) => name,
        }
    }

    fn encode_fields(&self, w: &mut Writer) {
        match self {
            OpenKind::Session | OpenKind::Other(_) => {}
            OpenKind::DirectTcpip {
                host: a,
                port: p,
                originator: o,
                originator_port: op,
            }
            | OpenKind::ForwardedTcpip {
                address: a,
                port: p,
                originator: o,
                originator_port: op,
            } => {
                w.string(a.as_bytes()).u32(*p).string(o.as_bytes()).u32(*op);
            }
        }
    }

    fn decode(name: &str, r: &mut Reader<'_>) -> Result<OpenKind, WireError> {
        let endpoint = |r: &mut Reader<'_>| -> Result<(String, u32, String, u32), WireError> {
            Ok((
                r.utf8(MAX_NAME, "host")?.to_string(),
                r.u32("port")?,
                r.utf8(MAX_NAME, "originator address")?.to_string(),
                r.u32("originator port")?,
            ))
        };
        Ok(match name {
            "session" => OpenKind::Session,
            "direct-tcpip" => {
                let (host, port, originator, originator_port) = endpoint(r)?;
                OpenKind::DirectTcpip {
                    host,
                    port,
                    originator,
                    originator_port,
                }
            }
            "forwarded-tcpip" => {
                let (address, port, originator, originator_port) = endpoint(r)?;
                OpenKind::ForwardedTcpip {
                    address,
                    port,
                    originator,
                    originator_port,
                }
            }
            other => {
                let _fields = r.bytes(r.remaining(), "channel type fields")?;
                OpenKind::Other(other.to_string())
            }
        })
    }
}

/// A terminal's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TermSize {
    /// Columns.
    pub cols: u32,
    /// Rows.
    pub rows: u32,
    /// Width in pixels.
    pub width_px: u32,
    /// Height in pixels.
    pub height_px: u32,
}

/// A channel request (RFC 4254 §6, RFC 4335).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `pty-req`.
    PtyReq {
        /// `TERM`.
        term: String,
        /// The size.
        size: TermSize,
        /// Encoded terminal modes.
        modes: Vec<u8>,
    },
    /// `shell`.
    Shell,
    /// `exec` with its command.
    Exec(String),
    /// `subsystem` with its name.
    Subsystem(String),
    /// `env`.
    Env {
        /// Variable name.
        name: String,
        /// Value.
        value: String,
    },
    /// `window-change`.
    WindowChange(TermSize),
    /// `break` with its length in milliseconds (RFC 4335).
    Break {
        /// Milliseconds; 0 means the default of the serial layer.
        ms: u32,
    },
    /// `signal` with the name without `SIG`.
    Signal(String),
    /// `exit-status`.
    ExitStatus(u32),
    /// `exit-signal`.
    ExitSignal {
        /// Signal name without `SIG`.
        name: String,
        /// Whether a core was dumped.
        core_dumped: bool,
        /// Error message.
        message: String,
    },
    /// `eow@openssh.com`: no more writes to the pty (OpenSSH's half-close of a session).
    EndOfWrite,
    /// Anything else, by name (refused).
    Other(String),
}

impl Request {
    /// The request type as on the wire.
    pub fn name(&self) -> &str {
        match self {
            Request::PtyReq { .. } => "pty-req",
            Request::Shell => "shell",
            Request::Exec(_) => "exec",
            Request::Subsystem(_) => "subsystem",
            Request::Env { .. } => "env",
            Request::WindowChange(_) => "window-change",
            Request::Break { .. } => "break",
            Request::Signal(_) => "signal",
            Request::ExitStatus(_) => "exit-status",
            Request::ExitSignal { .. } => "exit-signal",
            Request::EndOfWrite => "eow@openssh.com",
            Request::Other(name) => name,
        }
    }

    fn encode_fields(&self, w: &mut Writer) {
        let size = |w: &mut Writer, s: &TermSize| {
            w.u32(s.cols).u32(s.rows).u32(s.width_px).u32(s.height_px);
        };
        match self {
            Request::PtyReq {
                term,
                size: s,
                modes,
            } => {
                w.string(term.as_bytes());
                size(w, s);
                w.string(modes);
            }
            Request::Shell | Request::EndOfWrite | Request::Other(_) => {}
            Request::Exec(s) | Request::Subsystem(s) | Request::Signal(s) => {
                w.string(s.as_bytes());
            }
            Request::Env { name, value } => {
                w.string(name.as_bytes()).string(value.as_bytes());
            }
            Request::WindowChange(s) => size(w, s),
            Request::Break { ms } => {
                w.u32(*ms);
            }
            Request::ExitStatus(code) => {
                w.u32(*code);
            }
            Request::ExitSignal {
                name,
                core_dumped,
                message,
            } => {
                w.string(name.as_bytes())
                    .bool(*core_dumped)
                    .string(message.as_bytes())
                    .string(b"");
            }
        }
    }

    fn decode(name: &str, r: &mut Reader<'_>) -> Result<Request, WireError> {
        let size = |r: &mut Reader<'_>| -> Result<TermSize, WireError> {
            Ok(TermSize {
                cols: r.u32("columns")?,
                rows: r.u32("rows")?,
                width_px: r.u32("width")?,
                height_px: r.u32("height")?,
            })
        };
        let text = |r: &mut Reader<'_>, max, field| -> Result<String, WireError> {
            Ok(String::from_utf8_lossy(r.string(max, field)?).into_owned())
        };
        let request = match name {
            "pty-req" => Request::PtyReq {
                term: text(r, MAX_NAME, "TERM")?,
                size: size(r)?,
                modes: r.string(MAX_MODES, "terminal modes")?.to_vec(),
            },
            "shell" => Request::Shell,
            "exec" => Request::Exec(text(r, MAX_COMMAND, "command")?),
            "subsystem" => Request::Subsystem(text(r, MAX_NAME, "subsystem")?),
            "env" => Request::Env {
                name: text(r, MAX_NAME, "variable name")?,
                value: text(r, MAX_COMMAND, "variable value")?,
            },
            "window-change" => Request::WindowChange(size(r)?),
            "break" => Request::Break {
                ms: r.u32("break length")?,
            },
            "signal" => Request::Signal(text(r, MAX_NAME, "signal name")?),
            "exit-status" => Request::ExitStatus(r.u32("exit status")?),
            "exit-signal" => {
                let request = Request::ExitSignal {
                    name: text(r, MAX_NAME, "signal name")?,
                    core_dumped: r.bool("core dumped")?,
                    message: text(r, MAX_COMMAND, "error message")?,
                };
                let _language = r.string(MAX_NAME, "language tag")?;
                request
            }
            "eow@openssh.com" => Request::EndOfWrite,
            other => {
                let _fields = r.bytes(r.remaining(), "request fields")?;
                Request::Other(other.to_string())
            }
        };
        r.finish()?;
        Ok(request)
    }
}

/// A global request (RFC 4254 §4, §7.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GlobalRequest {
    /// `tcpip-forward`: listen on `address:port` (0: any free port) and forward here.
    TcpipForward {
        /// Address to bind.
        address: String,
        /// Port to bind; 0 asks for one.
        port: u32,
    },
    /// `cancel-tcpip-forward`.
    CancelTcpipForward {
        /// Address bound.
        address: String,
        /// Port bound.
        port: u32,
    },
    /// `keepalive@openssh.com`: answered (with failure, as OpenSSH does) by the layer itself.
    Keepalive,
    /// Anything else, by name.
    Other(String),
}

impl GlobalRequest {
    /// The request name as on the wire.
    pub fn name(&self) -> &str {
        match self {
            GlobalRequest::TcpipForward { .. } => "tcpip-forward",
            GlobalRequest::CancelTcpipForward { .. } => "cancel-tcpip-forward",
            GlobalRequest::Keepalive => "keepalive@openssh.com",
            GlobalRequest::Other(name) => name,
        }
    }
}

/// Why an open was refused (RFC 4254 §5.1).
pub mod open_failure {
    /// `SSH_OPEN_ADMINISTRATIVELY_PROHIBITED`.
    pub const PROHIBITED: u32 = 1;
    /// `SSH_OPEN_CONNECT_FAILED`.
    pub const CONNECT_FAILED: u32 = 2;
    /// `SSH_OPEN_UNKNOWN_CHANNEL_TYPE`.
    pub const UNKNOWN_CHANNEL_TYPE: u32 = 3;
    /// `SSH_OPEN_RESOURCE_SHORTAGE`.
    pub const RESOURCE_SHORTAGE: u32 = 4;
}

/// What happened on the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The peer asks to open a channel; answer with [`Connection::accept`] or
    /// [`Connection::reject`].
    Open {
        /// Our number for it.
        channel: ChannelId,
        /// What for.
        kind: OpenKind,
    },
    /// A channel we opened was confirmed.
    Opened(ChannelId),
    /// A channel we opened was refused; the number is free again.
    OpenFailed {
        /// The channel.
        channel: ChannelId,
        /// Reason code ([`open_failure`]).
        reason: u32,
        /// The peer's text.
        text: String,
    },
    /// Data arrived; it counts against the window until [`Connection::consume`] says taken.
    Data {
        /// The channel.
        channel: ChannelId,
        /// The bytes (a view of the packet they came in: no copy).
        data: Bytes,
    },
    /// Extended data (stderr is code 1); it counts against the window like data.
    ExtendedData {
        /// The channel.
        channel: ChannelId,
        /// Data type code.
        code: u32,
        /// The bytes.
        data: Bytes,
    },
    /// The peer will send no more data on the channel.
    Eof(ChannelId),
    /// The channel is closed both ways and its number is free.
    Closed(ChannelId),
    /// The peer's window grew: more may be sent.
    Writable(ChannelId),
    /// A channel request; if `want_reply`, answer with [`Connection::reply`], in order.
    Request {
        /// The channel.
        channel: ChannelId,
        /// The request.
        request: Request,
        /// Whether the peer waits for an answer.
        want_reply: bool,
    },
    /// The answer to our channel request.
    RequestReply {
        /// The channel.
        channel: ChannelId,
        /// Success or failure.
        success: bool,
    },
    /// A global request; if `want_reply`, answer with [`Connection::global_reply`], in order.
    Global {
        /// The request.
        request: GlobalRequest,
        /// Whether the peer waits for an answer.
        want_reply: bool,
    },
    /// The answer to our global request.
    GlobalReply {
        /// Success or failure.
        success: bool,
        /// The port bound, for a `tcpip-forward` with port 0.
        port: Option<u32>,
    },
}

/// The connection layer broke the protocol; the connection ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionError(pub String);

impl std::fmt::Display for ConnectionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConnectionError {}

fn fail<T>(why: impl Into<String>) -> Result<T, ConnectionError> {
    Err(ConnectionError(why.into()))
}

fn malformed(what: &str, e: WireError) -> ConnectionError {
    ConnectionError(format!("{what}: {e}"))
}

/// Window and packet sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The receive window each channel advertises.
    pub window: u32,
    /// Largest data packet we take.
    pub max_packet: u32,
}

impl Default for Limits {
    /// OpenSSH's sizes for forwarded streams: 2 MiB window, 32 KiB packets.
    fn default() -> Limits {
        Limits {
            window: 2 * 1024 * 1024,
            max_packet: 32 * 1024,
        }
    }
}

/// The fields of a CHANNEL_DATA or CHANNEL_EXTENDED_DATA message before its data.
#[derive(Debug, Clone, Copy)]
pub struct DataHeader {
    bytes: [u8; 13],
    len: usize,
}

impl DataHeader {
    /// The header's bytes.
    pub fn as_slice(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or_default()
    }

    fn len(&self) -> usize {
        self.len
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// We asked; the peer has not answered.
    Opening,
    /// The peer asked; the application has not answered.
    Offered,
    /// Open.
    Open,
}

#[derive(Debug)]
struct Channel {
    state: State,
    remote: u32,
    /// What the peer may still send us.
    recv_window: u32,
    /// The window we keep open.
    recv_max: u32,
    /// Taken by the application, not yet given back in a WINDOW_ADJUST.
    consumed: u32,
    /// What we may still send.
    send_window: u32,
    /// The peer's largest packet.
    send_packet: u32,
    sent_eof: bool,
    got_eof: bool,
    sent_close: bool,
    got_close: bool,
    /// Incoming requests that want a reply and have none yet.
    owed: usize,
    /// Our requests that want a reply.
    expected: usize,
}

impl Channel {
    fn new(state: State, limits: Limits) -> Channel {
        Channel {
            state,
            remote: 0,
            recv_window: limits.window,
            recv_max: limits.window,
            consumed: 0,
            send_window: 0,
            send_packet: 0,
            sent_eof: false,
            got_eof: false,
            sent_close: false,
            got_close: false,
            owed: 0,
            expected: 0,
        }
    }
}

/// The channels and global requests of one connection.
#[derive(Debug, Default)]
pub struct Connection {
    limits: Limits,
    channels: BTreeMap<u32, Channel>,
    next_id: u32,
    out: VecDeque<Vec<u8>>,
    events: VecDeque<Event>,
    /// Incoming global requests that want a reply and have none yet.
    global_owed: usize,
    /// Our global requests that want a reply, in order: whether each was a keepalive.
    global_expected: VecDeque<bool>,
}

impl Connection {
    /// A connection whose channels advertise `limits`.
    pub fn new(limits: Limits) -> Connection {
        Connection {
            limits,
            ..Connection::default()
        }
    }

    /// Frees the buffers of empty queues (see [`crate::session::Session::release_idle`]).
    pub fn release_idle(&mut self) {
        crate::session::shrink(&mut self.out);
        crate::session::shrink(&mut self.events);
        crate::session::shrink(&mut self.global_expected);
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.out.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Whether messages wait in [`Connection::poll_transmit`].
    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// How many channels are in use.
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// Whether any of our keepalives is still unanswered.
    pub fn keepalive_outstanding(&self) -> bool {
        self.global_expected.iter().any(|k| *k)
    }

    fn free_id(&mut self) -> Option<u32> {
        if self.channels.len() >= MAX_CHANNELS {
            return None;
        }
        // Numbers are reused only after a wrap, and never while in use.
        loop {
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1);
            if !self.channels.contains_key(&id) {
                return Some(id);
            }
        }
    }

    fn get(&mut self, channel: ChannelId) -> Result<&mut Channel, ConnectionError> {
        match self.channels.get_mut(&channel.0) {
            Some(c) => Ok(c),
            None => fail(format!("{channel} is not open")),
        }
    }

    /// Opens a channel; [`Event::Opened`] or [`Event::OpenFailed`] follows.
    pub fn open(&mut self, kind: &OpenKind) -> Result<ChannelId, ConnectionError> {
        let Some(id) = self.free_id() else {
            return fail(format!("{MAX_CHANNELS} channels are open already"));
        };
        self.channels
            .insert(id, Channel::new(State::Opening, self.limits));
        let mut w = Writer::message(msg::CHANNEL_OPEN);
        w.string(kind.name().as_bytes())
            .u32(id)
            .u32(self.limits.window)
            .u32(self.limits.max_packet);
        kind.encode_fields(&mut w);
        self.out.push_back(w.into_bytes());
        Ok(ChannelId(id))
    }

    /// Accepts a channel the peer asked for.
    pub fn accept(&mut self, channel: ChannelId) -> Result<(), ConnectionError> {
        let limits = self.limits;
        let c = self.get(channel)?;
        if c.state != State::Offered {
            return fail(format!("{channel} was not offered"));
        }
        c.state = State::Open;
        let mut w = Writer::message(msg::CHANNEL_OPEN_CONFIRMATION);
        w.u32(c.remote)
            .u32(channel.0)
            .u32(limits.window)
            .u32(limits.max_packet);
        self.out.push_back(w.into_bytes());
        Ok(())
    }

    /// Refuses a channel the peer asked for.
    pub fn reject(
        &mut self,
        channel: ChannelId,
        reason: u32,
        text: &str,
    ) -> Result<(), ConnectionError> {
        let c = self.get(channel)?;
        if c.state != State::Offered {
            return fail(format!("{channel} was not offered"));
        }
        let remote = c.remote;
        self.channels.remove(&channel.0);
        self.out
            .push_back(open_failure_message(remote, reason, text));
        Ok(())
    }

    /// How many bytes [`Connection::send`] would take now.
    pub fn send_room(&self, channel: ChannelId) -> usize {
        self.channels
            .get(&channel.0)
            .filter(|c| c.state == State::Open && !c.sent_eof && !c.sent_close)
            .map_or(0, |c| c.send_window as usize)
    }

    /// Sends what the peer's window allows of `data`; returns how much was taken (0: wait for
    /// [`Event::Writable`]).
    pub fn send(&mut self, channel: ChannelId, data: &[u8]) -> Result<usize, ConnectionError> {
        self.send_inner(channel, None, data)
    }

    /// Sends extended data (`code` 1 is stderr), like [`Connection::send`].
    pub fn send_extended(
        &mut self,
        channel: ChannelId,
        code: u32,
        data: &[u8],
    ) -> Result<usize, ConnectionError> {
        self.send_inner(channel, Some(code), data)
    }

    fn send_inner(
        &mut self,
        channel: ChannelId,
        code: Option<u32>,
        mut data: &[u8],
    ) -> Result<usize, ConnectionError> {
        let mut taken = 0usize;
        while let Some((header, n)) = self.data_header(channel, code, data.len())? {
            let (chunk, rest) = data.split_at(n.min(data.len()));
            let mut message = Vec::with_capacity(header.len().saturating_add(n));
            message.extend_from_slice(header.as_slice());
            message.extend_from_slice(chunk);
            self.out.push_back(message);
            taken = taken.saturating_add(n);
            data = rest;
        }
        Ok(taken)
    }

    /// Takes up to `len` bytes of data for `channel`, as many as its window and one packet
    /// allow: the message header to send before them, and how many were taken (`None` when
    /// nothing can be: no data, or no window). The caller sends the header and that many bytes
    /// as one message before anything else this connection queues (see
    /// [`crate::session::Session::send_data`]), which spares copying the data twice.
    pub fn data_header(
        &mut self,
        channel: ChannelId,
        code: Option<u32>,
        len: usize,
    ) -> Result<Option<(DataHeader, usize)>, ConnectionError> {
        let c = self.get(channel)?;
        if c.state != State::Open {
            return fail(format!("{channel} is not open yet"));
        }
        if c.sent_eof || c.sent_close {
            return fail(format!("{channel}: data after EOF"));
        }
        if len == 0 || c.send_window == 0 {
            return Ok(None);
        }
        // A packet's data leaves room for the message's own fields within the peer's maximum.
        let packet = (c.send_packet as usize).saturating_sub(16).max(1);
        let n = len.min(packet).min(c.send_window as usize);
        let n32 = u32::try_from(n).unwrap_or(u32::MAX);
        let mut header = DataHeader {
            bytes: [0; 13],
            len: 0,
        };
        let mut put = |b: &[u8]| {
            for x in b {
                if let Some(slot) = header.bytes.get_mut(header.len) {
                    *slot = *x;
                    header.len = header.len.saturating_add(1);
                }
            }
        };
        match code {
            None => put(&[msg::CHANNEL_DATA]),
            Some(_) => put(&[msg::CHANNEL_EXTENDED_DATA]),
        }
        put(&c.remote.to_be_bytes());
        if let Some(code) = code {
            put(&code.to_be_bytes());
        }
        put(&n32.to_be_bytes());
        c.send_window = c.send_window.saturating_sub(n32);
        Ok(Some((header, n)))
    }

    /// The application took `n` bytes of a channel's data: what was taken goes back to the
    /// peer once it reaches three maximum packets or half the window, whichever is less (as
    /// OpenSSH does). Frequent small adjustments keep a long upload's sender from waiting, and
    /// keep the receiver audible: a link that carries data one way hears the other way too.
    pub fn consume(&mut self, channel: ChannelId, n: usize) -> Result<(), ConnectionError> {
        let step = self.limits.max_packet.saturating_mul(3);
        let c = self.get(channel)?;
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        c.consumed = c.consumed.saturating_add(n);
        let given_back = c.recv_window.saturating_add(c.consumed);
        if given_back > c.recv_max {
            return fail(format!(
                "{channel}: more consumed than ever arrived ({} over the window)",
                given_back.saturating_sub(c.recv_max)
            ));
        }
        if c.consumed >= step.min(c.recv_max / 2)
            && c.state == State::Open
            && !c.got_eof
            && !c.sent_close
        {
            let mut w = Writer::message(msg::CHANNEL_WINDOW_ADJUST);
            w.u32(c.remote).u32(c.consumed);
            c.recv_window = given_back;
            c.consumed = 0;
            self.out.push_back(w.into_bytes());
        }
        Ok(())
    }

    /// The data the peer may still send on a channel before it must wait.
    pub fn receive_window(&self, channel: ChannelId) -> Option<u32> {
        self.channels.get(&channel.0).map(|c| c.recv_window)
    }

    /// Ends our direction of a channel (EOF); the peer's may go on.
    pub fn eof(&mut self, channel: ChannelId) -> Result<(), ConnectionError> {
        let c = self.get(channel)?;
        if c.sent_eof || c.sent_close || c.state != State::Open {
            return Ok(());
        }
        c.sent_eof = true;
        let mut w = Writer::message(msg::CHANNEL_EOF);
        w.u32(c.remote);
        self.out.push_back(w.into_bytes());
        Ok(())
    }

    /// Closes a channel; [`Event::Closed`] follows once the peer's CLOSE is in.
    pub fn close(&mut self, channel: ChannelId) -> Result<(), ConnectionError> {
        let c = self.get(channel)?;
        if c.sent_close {
            return Ok(());
        }
        match c.state {
            // Refusing is the way to close what was never accepted.
            State::Offered => {
                return self.reject(channel, open_failure::CONNECT_FAILED, "closed");
            }
            // The answer is still to come; CLOSE goes once it is known.
            State::Opening => {
                c.sent_close = true;
                return Ok(());
            }
            State::Open => {}
        }
        c.sent_close = true;
        let mut w = Writer::message(msg::CHANNEL_CLOSE);
        w.u32(c.remote);
        self.out.push_back(w.into_bytes());
        self.maybe_free(channel);
        Ok(())
    }

    fn maybe_free(&mut self, channel: ChannelId) {
        if self
            .channels
            .get(&channel.0)
            .is_some_and(|c| c.sent_close && c.got_close)
        {
            self.channels.remove(&channel.0);
            self.events.push_back(Event::Closed(channel));
        }
    }

    /// Sends a channel request; with `want_reply`, [`Event::RequestReply`] follows.
    pub fn request(
        &mut self,
        channel: ChannelId,
        request: &Request,
        want_reply: bool,
    ) -> Result<(), ConnectionError> {
        let c = self.get(channel)?;
        if c.state != State::Open || c.sent_close {
            return fail(format!("{channel} is not open"));
        }
        if want_reply {
            c.expected = c.expected.saturating_add(1);
        }
        let mut w = Writer::message(msg::CHANNEL_REQUEST);
        w.u32(c.remote)
            .string(request.name().as_bytes())
            .bool(want_reply);
        request.encode_fields(&mut w);
        self.out.push_back(w.into_bytes());
        Ok(())
    }

    /// Answers the oldest unanswered request of a channel that wanted a reply.
    pub fn reply(&mut self, channel: ChannelId, success: bool) -> Result<(), ConnectionError> {
        let c = self.get(channel)?;
        if c.owed == 0 {
            return fail(format!("{channel}: no request waits for a reply"));
        }
        c.owed = c.owed.saturating_sub(1);
        if c.sent_close {
            return Ok(());
        }
        let mut w = Writer::message(if success {
            msg::CHANNEL_SUCCESS
        } else {
            msg::CHANNEL_FAILURE
        });
        w.u32(c.remote);
        self.out.push_back(w.into_bytes());
        Ok(())
    }

    /// Sends a global request; with `want_reply`, [`Event::GlobalReply`] follows (not for
    /// keepalives: their answers are taken here).
    pub fn global_request(&mut self, request: &GlobalRequest, want_reply: bool) {
        let mut w = Writer::message(msg::GLOBAL_REQUEST);
        w.string(request.name().as_bytes()).bool(want_reply);
        match request {
            GlobalRequest::TcpipForward { address, port }
            | GlobalRequest::CancelTcpipForward { address, port } => {
                w.string(address.as_bytes()).u32(*port);
            }
            GlobalRequest::Keepalive | GlobalRequest::Other(_) => {}
        }
        if want_reply {
            self.global_expected
                .push_back(*request == GlobalRequest::Keepalive);
        }
        self.out.push_back(w.into_bytes());
    }

    /// Answers the oldest global request that wanted a reply; `port` for a `tcpip-forward`
    /// that asked for port 0.
    pub fn global_reply(
        &mut self,
        success: bool,
        port: Option<u32>,
    ) -> Result<(), ConnectionError> {
        if self.global_owed == 0 {
            return fail("no global request waits for a reply");
        }
        self.global_owed = self.global_owed.saturating_sub(1);
        let mut w = Writer::message(if success {
            msg::REQUEST_SUCCESS
        } else {
            msg::REQUEST_FAILURE
        });
        if let (true, Some(port)) = (success, port) {
            w.u32(port);
        }
        self.out.push_back(w.into_bytes());
        Ok(())
    }

    /// Takes a connection protocol message (80-127).
    pub fn receive(&mut self, payload: impl Into<Bytes>) -> Result<(), ConnectionError> {
        let payload: Bytes = payload.into();
        let mut r = Reader::new(&payload);
        let number = r
            .u8("message number")
            .map_err(|e| malformed("message", e))?;
        match number {
            msg::GLOBAL_REQUEST => self.on_global_request(&mut r),
            msg::REQUEST_SUCCESS | msg::REQUEST_FAILURE => {
                let Some(keepalive) = self.global_expected.pop_front() else {
                    return fail("a global request reply with no request out");
                };
                if !keepalive {
                    let port = if number == msg::REQUEST_SUCCESS && r.remaining() >= 4 {
                        r.u32("bound port").ok()
                    } else {
                        None
                    };
                    self.events.push_back(Event::GlobalReply {
                        success: number == msg::REQUEST_SUCCESS,
                        port,
                    });
                }
                Ok(())
            }
            msg::CHANNEL_OPEN => self.on_open(&mut r),
            msg::CHANNEL_OPEN_CONFIRMATION => self.on_confirmation(&mut r),
            msg::CHANNEL_OPEN_FAILURE => self.on_open_failure(&mut r),
            msg::CHANNEL_WINDOW_ADJUST => {
                let (id, n) = (|| Ok((r.u32("channel")?, r.u32("bytes to add")?)))()
                    .map_err(|e: WireError| malformed("WINDOW_ADJUST", e))?;
                let channel = ChannelId(id);
                let c = self.get(channel)?;
                c.send_window = c.send_window.checked_add(n).ok_or_else(|| {
                    ConnectionError(format!("{channel}: window grown past 2^32 - 1"))
                })?;
                self.events.push_back(Event::Writable(channel));
                Ok(())
            }
            msg::CHANNEL_DATA | msg::CHANNEL_EXTENDED_DATA => {
                let id = r.u32("channel").map_err(|e| malformed("CHANNEL_DATA", e))?;
                let code = if number == msg::CHANNEL_EXTENDED_DATA {
                    Some(
                        r.u32("data type")
                            .map_err(|e| malformed("EXTENDED_DATA", e))?,
                    )
                } else {
                    None
                };
                let len = r
                    .string(MAX_DATA, "data")
                    .map_err(|e| malformed("CHANNEL_DATA", e))?
                    .len();
                r.finish().map_err(|e| malformed("CHANNEL_DATA", e))?;
                self.on_data(ChannelId(id), code, payload.clone(), len)
            }
            msg::CHANNEL_EOF => {
                let channel = self.channel_of(&mut r, "CHANNEL_EOF")?;
                let c = self.get(channel)?;
                if c.state != State::Open {
                    return fail(format!("EOF on {channel}, which is not open"));
                }
                if !c.got_eof {
                    c.got_eof = true;
                    if !c.sent_close {
                        self.events.push_back(Event::Eof(channel));
                    }
                }
                Ok(())
            }
            msg::CHANNEL_CLOSE => {
                let channel = self.channel_of(&mut r, "CHANNEL_CLOSE")?;
                let c = self.get(channel)?;
                if c.state != State::Open || c.got_close {
                    return fail(format!("CLOSE on {channel}, which is not open"));
                }
                c.got_close = true;
                if !c.sent_close {
                    c.sent_close = true;
                    let mut w = Writer::message(msg::CHANNEL_CLOSE);
                    w.u32(c.remote);
                    self.out.push_back(w.into_bytes());
                }
                self.maybe_free(channel);
                Ok(())
            }
            msg::CHANNEL_REQUEST => self.on_request(&mut r),
            msg::CHANNEL_SUCCESS | msg::CHANNEL_FAILURE => {
                let channel = self.channel_of(&mut r, "CHANNEL_SUCCESS")?;
                let c = self.get(channel)?;
                if c.expected == 0 {
                    return fail(format!("a reply on {channel} with no request out"));
                }
                c.expected = c.expected.saturating_sub(1);
                if !c.sent_close {
                    self.events.push_back(Event::RequestReply {
                        channel,
                        success: number == msg::CHANNEL_SUCCESS,
                    });
                }
                Ok(())
            }
            other => fail(format!(
                "message {other} is not part of the connection protocol"
            )),
        }
    }

    fn channel_of(&self, r: &mut Reader<'_>, what: &str) -> Result<ChannelId, ConnectionError> {
        let id = r.u32("recipient channel").map_err(|e| malformed(what, e))?;
        Ok(ChannelId(id))
    }

    fn on_global_request(&mut self, r: &mut Reader<'_>) -> Result<(), ConnectionError> {
        let parse = |r: &mut Reader<'_>| -> Result<(GlobalRequest, bool), WireError> {
            let name = r.utf8(MAX_NAME, "request name")?.to_string();
            let want_reply = r.bool("want reply")?;
            let request = match name.as_str() {
                "tcpip-forward" | "cancel-tcpip-forward" => {
                    let address = r.utf8(MAX_NAME, "address")?.to_string();
                    let port = r.u32("port")?;
                    r.finish()?;
                    if name == "tcpip-forward" {
                        GlobalRequest::TcpipForward { address, port }
                    } else {
                        GlobalRequest::CancelTcpipForward { address, port }
                    }
                }
                "keepalive@openssh.com" => GlobalRequest::Keepalive,
                _ => GlobalRequest::Other(name),
            };
            Ok((request, want_reply))
        };
        let (request, want_reply) = parse(r).map_err(|e| malformed("GLOBAL_REQUEST", e))?;
        if want_reply && self.global_owed >= MAX_OWED {
            return fail("too many global requests wait for a reply");
        }
        match request {
            // Answered here, as OpenSSH answers what it does not know: a failure is an answer.
            GlobalRequest::Keepalive | GlobalRequest::Other(_) => {
                if want_reply {
                    self.out.push_back(vec![msg::REQUEST_FAILURE]);
                }
                if let GlobalRequest::Other(_) = request {
                    self.events.push_back(Event::Global {
                        request,
                        want_reply: false,
                    });
                }
            }
            request => {
                if want_reply {
                    self.global_owed = self.global_owed.saturating_add(1);
                }
                self.events.push_back(Event::Global {
                    request,
                    want_reply,
                });
            }
        }
        Ok(())
    }

    fn on_open(&mut self, r: &mut Reader<'_>) -> Result<(), ConnectionError> {
        let parse = |r: &mut Reader<'_>| -> Result<(OpenKind, u32, u32, u32), WireError> {
            let name = r.utf8(MAX_NAME, "channel type")?.to_string();
            let sender = r.u32("sender channel")?;
            let window = r.u32("initial window size")?;
            let packet = r.u32("maximum packet size")?;
            let kind = OpenKind::decode(&name, r)?;
            r.finish()?;
            Ok((kind, sender, window, packet))
        };
        let (kind, sender, window, packet) = parse(r).map_err(|e| malformed("CHANNEL_OPEN", e))?;
        let Some(id) = self.free_id() else {
            self.out.push_back(open_failure_message(
                sender,
                open_failure::RESOURCE_SHORTAGE,
                "too many channels open",
            ));
            return Ok(());
        };
        if let OpenKind::Other(name) = &kind {
            let text = format!("channel type {name:?} is not offered");
            self.out.push_back(open_failure_message(
                sender,
                open_failure::UNKNOWN_CHANNEL_TYPE,
                &text,
            ));
            return Ok(());
        }
        let mut c = Channel::new(State::Offered, self.limits);
        c.remote = sender;
        c.send_window = window;
        c.send_packet = packet;
        self.channels.insert(id, c);
        self.events.push_back(Event::Open {
            channel: ChannelId(id),
            kind,
        });
        Ok(())
    }

    fn on_confirmation(&mut self, r: &mut Reader<'_>) -> Result<(), ConnectionError> {
        let parse = |r: &mut Reader<'_>| -> Result<(u32, u32, u32, u32), WireError> {
            let ours = r.u32("recipient channel")?;
            let theirs = r.u32("sender channel")?;
            let window = r.u32("initial window size")?;
            let packet = r.u32("maximum packet size")?;
            // Type-specific fields may follow; none are used.
            Ok((ours, theirs, window, packet))
        };
        let (ours, theirs, window, packet) =
            parse(r).map_err(|e| malformed("OPEN_CONFIRMATION", e))?;
        let channel = ChannelId(ours);
        let c = self.get(channel)?;
        if c.state != State::Opening {
            return fail(format!(
                "a confirmation for {channel}, which was not opening"
            ));
        }
        c.state = State::Open;
        c.remote = theirs;
        c.send_window = window;
        c.send_packet = packet;
        if c.sent_close {
            // Closed while opening: close it now that it has a number on the other side.
            let mut w = Writer::message(msg::CHANNEL_CLOSE);
            w.u32(theirs);
            self.out.push_back(w.into_bytes());
        } else {
            self.events.push_back(Event::Opened(channel));
        }
        Ok(())
    }

    fn on_open_failure(&mut self, r: &mut Reader<'_>) -> Result<(), ConnectionError> {
        let parse = |r: &mut Reader<'_>| -> Result<(u32, u32, String), WireError> {
            let ours = r.u32("recipient channel")?;
            let reason = r.u32("reason code")?;
            let text = String::from_utf8_lossy(r.string(MAX_COMMAND, "description")?).into_owned();
            let _language = r.string(MAX_NAME, "language tag")?;
            r.finish()?;
            Ok((ours, reason, text))
        };
        let (ours, reason, text) = parse(r).map_err(|e| malformed("OPEN_FAILURE", e))?;
        let channel = ChannelId(ours);
        let c = self.get(channel)?;
        if c.state != State::Opening {
            return fail(format!(
                "an open failure for {channel}, which was not opening"
            ));
        }
        let closed_meanwhile = c.sent_close;
        self.channels.remove(&ours);
        self.events.push_back(if closed_meanwhile {
            Event::Closed(channel)
        } else {
            Event::OpenFailed {
                channel,
                reason,
                text,
            }
        });
        Ok(())
    }

    fn on_data(
        &mut self,
        channel: ChannelId,
        code: Option<u32>,
        payload: Bytes,
        len: usize,
    ) -> Result<(), ConnectionError> {
        let c = self.get(channel)?;
        if c.state != State::Open {
            return fail(format!("data on {channel}, which is not open"));
        }
        if c.got_eof {
            return fail(format!("data on {channel} after its EOF"));
        }
        let n = u32::try_from(len).unwrap_or(u32::MAX);
        if n > c.recv_window {
            return fail(format!(
                "{channel}: {n} bytes sent into a window of {} (the peer ignores flow control)",
                c.recv_window
            ));
        }
        c.recv_window = c.recv_window.saturating_sub(n);
        if c.sent_close {
            // In flight when we closed: dropped, and there is no one to give the window to.
            return Ok(());
        }
        // The data is the tail of the payload: a view past the header, not a copy.
        let header = payload.len().saturating_sub(len);
        let payload = payload.slice(header..);
        self.events.push_back(match code {
            None => Event::Data {
                channel,
                data: payload,
            },
            Some(code) => Event::ExtendedData {
                channel,
                code,
                data: payload,
            },
        });
        Ok(())
    }

    fn on_request(&mut self, r: &mut Reader<'_>) -> Result<(), ConnectionError> {
        let parse = |r: &mut Reader<'_>| -> Result<(u32, Request, bool), WireError> {
            let id = r.u32("recipient channel")?;
            let name = r.utf8(MAX_NAME, "request type")?.to_string();
            let want_reply = r.bool("want reply")?;
            Ok((id, Request::decode(&name, r)?, want_reply))
        };
        let (id, request, want_reply) = parse(r).map_err(|e| malformed("CHANNEL_REQUEST", e))?;
        let channel = ChannelId(id);
        let c = self.get(channel)?;
        if c.state != State::Open {
            return fail(format!("a request on {channel}, which is not open"));
        }
        if want_reply && c.owed >= MAX_OWED {
            return fail(format!("{channel}: too many requests wait for a reply"));
        }
        if c.sent_close {
            return Ok(());
        }
        // keepalive@openssh.com and PuTTY's winadj@ are answered here (with failure, which
        // is an answer); other unknown requests go up so the application can log them.
        if let Request::Other(name) = &request
            && (name == "keepalive@openssh.com" || name.starts_with("winadj@"))
        {
            if want_reply {
                let mut w = Writer::message(msg::CHANNEL_FAILURE);
                w.u32(c.remote);
                self.out.push_back(w.into_bytes());
            }
            return Ok(());
        }
        if want_reply {
            c.owed = c.owed.saturating_add(1);
        }
        self.events.push_back(Event::Request {
            channel,
            request,
            want_reply,
        });
        Ok(())
    }
}

fn open_failure_message(remote: u32, reason: u32, text: &str) -> Vec<u8> {
    let mut w = Writer::message(msg::CHANNEL_OPEN_FAILURE);
    w.u32(remote)
        .u32(reason)
        .string(text.as_bytes())
        .string(b"");
    w.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Delivers everything each side sends to the other until both are quiet.
    fn pump(a: &mut Connection, b: &mut Connection) -> Result<(), ConnectionError> {
        loop {
            let mut moved = false;
            while let Some(m) = a.poll_transmit() {
                b.receive(m)?;
                moved = true;
            }
            while let Some(m) = b.poll_transmit() {
                a.receive(m)?;
                moved = true;
            }
            if !moved {
                return Ok(());
            }
        }
    }

    fn events(c: &mut Connection) -> Vec<Event> {
        std::iter::from_fn(|| c.poll_event()).collect()
    }

    fn small() -> Limits {
        Limits {
            window: 1000,
            max_packet: 300,
        }
    }

    fn open_pair() -> (Connection, Connection, ChannelId, ChannelId) {
        let (mut a, mut b) = (Connection::new(small()), Connection::new(small()));
        let kind = OpenKind::DirectTcpip {
            host: "pi".into(),
            port: 22,
            originator: "127.0.0.1".into(),
            originator_port: 5000,
        };
        let ours = a.open(&kind).expect("open");
        pump(&mut a, &mut b).expect("open");
        let theirs = match events(&mut b).as_slice() {
            [Event::Open { channel, kind: k }] if *k == kind => *channel,
            other => panic!("{other:?}"),
        };
        b.accept(theirs).expect("accept");
        pump(&mut a, &mut b).expect("confirm");
        assert_eq!(events(&mut a), vec![Event::Opened(ours)]);
        (a, b, ours, theirs)
    }

    fn data_of(events: &[Event]) -> Vec<u8> {
        events
            .iter()
            .flat_map(|e| match e {
                Event::Data { data, .. } => data.to_vec(),
                _ => Vec::new(),
            })
            .collect()
    }

    #[test]
    fn the_window_closes_until_the_reader_consumes_and_reopens_after() {
        let (mut a, mut b, ours, theirs) = open_pair();
        let payload: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        // Only the window's worth goes, in packets no larger than the peer's maximum.
        let taken = a.send(ours, &payload).expect("send");
        assert_eq!(taken, 1000);
        assert_eq!(a.send(ours, &payload[taken..]).expect("full"), 0);
        let mut packets = Vec::new();
        while let Some(m) = a.poll_transmit() {
            assert!(m.len() <= 300, "packet of {}", m.len());
            packets.push(m);
        }
        for m in packets {
            b.receive(m).expect("data");
        }
        let got = data_of(&events(&mut b));
        assert_eq!(got, payload[..1000]);
        assert_eq!(b.receive_window(theirs), Some(0));
        // Consuming less than half gives nothing back; half reopens the window.
        b.consume(theirs, 400).expect("consume");
        assert!(b.poll_transmit().is_none());
        b.consume(theirs, 100).expect("consume");
        pump(&mut a, &mut b).expect("adjust");
        assert_eq!(events(&mut a), vec![Event::Writable(ours)]);
        assert_eq!(a.send_room(ours), 500);
        // Giving back more than arrived is the application's bug, caught.
        assert!(b.consume(theirs, 10_000).is_err());
    }

    #[test]
    fn a_peer_that_ignores_the_window_is_refused() {
        let (mut a, mut b, _ours, theirs) = open_pair();
        let _ = a;
        let mut w = Writer::message(msg::CHANNEL_DATA);
        w.u32(theirs.0).string(&[0u8; 1001]);
        // The peer's number for its side is `ours`; here `a` speaks to `b`, whose channel is
        // `theirs`: forge data past the 1000-byte window.
        let err = b.receive(w.into_bytes()).expect_err("over the window");
        assert!(err.0.contains("flow control"), "{err}");
        a = Connection::new(small());
        assert!(
            a.receive(vec![msg::CHANNEL_DATA, 0, 0, 0, 9, 0, 0, 0, 1, 7])
                .is_err()
        );
    }

    #[test]
    fn half_close_each_way_then_close() {
        let (mut a, mut b, ours, theirs) = open_pair();
        a.send(ours, b"request").expect("send");
        a.eof(ours).expect("eof");
        pump(&mut a, &mut b).expect("pump");
        let ev = events(&mut b);
        assert_eq!(data_of(&ev), b"request");
        assert_eq!(ev.last(), Some(&Event::Eof(theirs)));
        // The other direction still flows after a's EOF.
        b.send(theirs, b"answer").expect("answer");
        b.eof(theirs).expect("eof");
        pump(&mut a, &mut b).expect("pump");
        let ev = events(&mut a);
        assert_eq!(data_of(&ev), b"answer");
        assert_eq!(ev.last(), Some(&Event::Eof(ours)));
        // Data after our own EOF is refused locally; after the peer's, it breaks the protocol.
        assert!(a.send(ours, b"late").is_err());
        b.close(theirs).expect("close");
        pump(&mut a, &mut b).expect("pump");
        assert_eq!(events(&mut a), vec![Event::Closed(ours)]);
        assert_eq!(events(&mut b), vec![Event::Closed(theirs)]);
        assert_eq!((a.channel_count(), b.channel_count()), (0, 0));
        // Another close on a freed number is a protocol error.
        let mut w = Writer::message(msg::CHANNEL_CLOSE);
        w.u32(ours.0);
        assert!(a.receive(w.into_bytes()).is_err());
    }

    #[test]
    fn requests_are_answered_in_order_and_break_carries_its_length() {
        let (mut a, mut b, ours, theirs) = open_pair();
        a.request(ours, &Request::Break { ms: 750 }, true)
            .expect("break");
        a.request(ours, &Request::Other("keepalive@openssh.com".into()), true)
            .expect("keepalive");
        a.request(
            ours,
            &Request::WindowChange(TermSize {
                cols: 132,
                rows: 43,
                ..TermSize::default()
            }),
            false,
        )
        .expect("resize");
        pump(&mut a, &mut b).expect("pump");
        assert_eq!(
            events(&mut b),
            vec![
                Event::Request {
                    channel: theirs,
                    request: Request::Break { ms: 750 },
                    want_reply: true
                },
                Event::Request {
                    channel: theirs,
                    request: Request::WindowChange(TermSize {
                        cols: 132,
                        rows: 43,
                        ..TermSize::default()
                    }),
                    want_reply: false
                },
            ]
        );
        // The keepalive was answered at once (failure); the break waits for the application.
        b.reply(theirs, true).expect("reply");
        assert!(b.reply(theirs, true).is_err(), "only one reply was owed");
        pump(&mut a, &mut b).expect("pump");
        assert_eq!(
            events(&mut a),
            vec![
                Event::RequestReply {
                    channel: ours,
                    success: false
                },
                Event::RequestReply {
                    channel: ours,
                    success: true
                },
            ]
        );
    }

    #[test]
    fn global_requests_forward_with_port_zero_and_keepalives_are_answered_here() {
        let (mut a, mut b) = (Connection::new(small()), Connection::new(small()));
        a.global_request(&GlobalRequest::Keepalive, true);
        a.global_request(
            &GlobalRequest::TcpipForward {
                address: "localhost".into(),
                port: 0,
            },
            true,
        );
        assert!(a.keepalive_outstanding());
        pump(&mut a, &mut b).expect("pump");
        assert_eq!(
            events(&mut b),
            vec![Event::Global {
                request: GlobalRequest::TcpipForward {
                    address: "localhost".into(),
                    port: 0
                },
                want_reply: true
            }]
        );
        b.global_reply(true, Some(40123)).expect("reply");
        pump(&mut a, &mut b).expect("pump");
        assert!(!a.keepalive_outstanding());
        assert_eq!(
            events(&mut a),
            vec![Event::GlobalReply {
                success: true,
                port: Some(40123)
            }]
        );
        assert!(
            a.receive(vec![msg::REQUEST_SUCCESS]).is_err(),
            "nothing was asked"
        );
    }

    #[test]
    fn refused_and_unknown_opens_and_a_close_while_opening() {
        let (mut a, mut b) = (Connection::new(small()), Connection::new(small()));
        let x = a.open(&OpenKind::Other("x11".into())).expect("open");
        let s = a.open(&OpenKind::Session).expect("open");
        pump(&mut a, &mut b).expect("pump");
        let offered = match events(&mut b).as_slice() {
            [
                Event::Open {
                    channel,
                    kind: OpenKind::Session,
                },
            ] => *channel,
            other => panic!("{other:?}"),
        };
        b.reject(offered, open_failure::PROHIBITED, "no shells here")
            .expect("reject");
        pump(&mut a, &mut b).expect("pump");
        let ev = events(&mut a);
        assert!(
            matches!(&ev[0], Event::OpenFailed { channel, reason: 3, .. } if *channel == x),
            "{ev:?}"
        );
        assert!(
            matches!(&ev[1], Event::OpenFailed { channel, reason: 1, text } if *channel == s && text == "no shells here"),
            "{ev:?}"
        );
        // Closed before the answer came: the channel closes once it is confirmed.
        let c = a.open(&OpenKind::Session).expect("open");
        a.close(c).expect("close early");
        pump(&mut a, &mut b).expect("pump");
        let offered = match events(&mut b).as_slice() {
            [Event::Open { channel, .. }] => *channel,
            other => panic!("{other:?}"),
        };
        b.accept(offered).expect("accept");
        pump(&mut a, &mut b).expect("pump");
        assert_eq!(events(&mut a), vec![Event::Closed(c)]);
        assert_eq!(events(&mut b), vec![Event::Closed(offered)]);
        assert_eq!((a.channel_count(), b.channel_count()), (0, 0));
    }

    #[test]
    fn hostile_connection_messages_never_panic() {
        let (mut a, mut b, ours, _) = open_pair();
        a.send(ours, b"hello").expect("send");
        a.request(
            ours,
            &Request::PtyReq {
                term: "xterm".into(),
                size: TermSize::default(),
                modes: vec![0],
            },
            true,
        )
        .expect("pty");
        a.global_request(
            &GlobalRequest::TcpipForward {
                address: "a".into(),
                port: 1,
            },
            true,
        );
        let samples: Vec<Vec<u8>> = std::iter::from_fn(|| a.poll_transmit()).collect();
        let _ = &mut b;
        let mut seed = 7u64;
        for _ in 0..5000 {
            let (_, mut b, _, _) = open_pair();
            let pick = (crate::xorshift(&mut seed) as usize) % samples.len();
            let mut bytes = samples[pick].clone();
            for _ in 0..(crate::xorshift(&mut seed) % 3 + 1) {
                let at = (crate::xorshift(&mut seed) as usize) % bytes.len();
                bytes[at] = crate::xorshift(&mut seed) as u8;
            }
            let cut = (crate::xorshift(&mut seed) as usize) % (bytes.len() + 1);
            bytes.truncate(cut.max(1));
            let _ = b.receive(bytes);
        }
    }
}
#[cfg(test)]
mod consume_steps {
    use super::*;

    /// The window goes back every three packets taken (OpenSSH's step), not every half
    /// window: a long upload's receiver stays audible and its sender never waits long.
    #[test]
    fn default_limits_adjust_every_three_packets() {
        let (mut a, mut b) = (
            Connection::new(Limits::default()),
            Connection::new(Limits::default()),
        );
        let id = a.open(&OpenKind::Session).unwrap();
        while let Some(m) = a.poll_transmit() {
            b.receive(m).unwrap();
        }
        let Some(Event::Open { channel, .. }) = b.poll_event() else {
            panic!()
        };
        b.accept(channel).unwrap();
        while let Some(m) = b.poll_transmit() {
            a.receive(m).unwrap();
        }
        let data = vec![0u8; 1 << 20];
        assert_eq!(a.send(id, &data).unwrap(), 1 << 20);
        while let Some(m) = a.poll_transmit() {
            b.receive(m).unwrap();
        }
        let mut adjusts = 0;
        for _ in 0..32 {
            b.consume(channel, 32 * 1024).unwrap();
            while let Some(m) = b.poll_transmit() {
                assert_eq!(m[0], msg::CHANNEL_WINDOW_ADJUST);
                adjusts += 1;
            }
        }
        assert_eq!(adjusts, 10);
    }
}
