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
//!
//! Memory: the windows of all a connection's channels together stay within
//! [`Limits::window_budget`] (a channel opened when the budget is spent starts with
//! [`MIN_WINDOW`] and grows as others give theirs back), so what a peer can make the application
//! hold does not grow with the number of channels it opens. Replies to global and channel
//! requests leave in the order the requests came (RFC 4254 §4, §5.4), whether answered here at
//! once or later by the application.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;

use crate::msg;
use crate::queue::ByteQueue;
use crate::wire::{Reader, WireError, Writer};

mod incoming;
mod requests;
#[cfg(test)]
mod tests;

pub use requests::{ChannelId, GlobalRequest, OpenKind, Request, TermSize, open_failure};

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
/// The window a channel starts with when the connection's window budget is spent.
pub const MIN_WINDOW: u32 = 4 * 1024;
/// The smallest maximum packet size taken from a peer: a peer that advertises less (1 turns
/// every byte into a packet) gets packets this large, which RFC 4253 §6.1 obliges every
/// implementation to take anyway.
pub const MIN_PEER_PACKET: u32 = 1024;

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
    /// The server announced its host keys (`hostkeys-00@openssh.com`); the session decides
    /// which to ask proof of (see [`crate::hostkeys`]).
    HostKeys(Vec<Vec<u8>>),
    /// The answer to our proof request for `keys`: the signatures (after the message number)
    /// on success, `None` on failure. The session checks them.
    HostKeysProof {
        /// The keys asked about, in order.
        keys: Vec<Vec<u8>>,
        /// The signatures.
        answer: Option<Bytes>,
    },
}

/// What we expect back for a global request of ours that wants a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expect {
    /// An answer for the application.
    Reply,
    /// A keepalive's answer: taken here.
    Keepalive,
    /// Proofs of these host keys.
    Proof(Vec<Vec<u8>>),
}

/// A server's host keys and the session id, to prove them with (see [`crate::hostkeys`]).
struct Prover {
    keys: Vec<std::sync::Arc<crate::kex::HostKey>>,
    session_id: Vec<u8>,
}

impl std::fmt::Debug for Prover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Prover({} keys)", self.keys.len())
    }
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
    /// The receive windows of all channels together: the most channel data the peer may
    /// have sent and the application not yet taken, however many channels it opens.
    pub window_budget: u64,
    /// The most bytes queued toward the peer (replies, held messages, sealed packets) before
    /// the driver stops reading from it; data writers wait well below it.
    pub max_queued: usize,
    /// A peer that takes nothing for this long while reading from it is stopped is cut.
    pub stall_timeout: std::time::Duration,
}

/// Channel types named `NAME@burrow` are offered to the application; other unknown types
/// are refused by the connection itself.
pub const EXTENSION_SUFFIX: &str = "@burrow";

/// Default [`Limits::window_budget`]: eight channels at the full window.
pub const DEFAULT_WINDOW_BUDGET: u64 = 16 * 1024 * 1024;
/// Default [`Limits::max_queued`].
pub const DEFAULT_MAX_QUEUED: usize = 4 * 1024 * 1024;
/// Default [`Limits::stall_timeout`].
pub const DEFAULT_STALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

impl Default for Limits {
    /// OpenSSH's sizes for forwarded streams: 2 MiB window, 32 KiB packets; 16 MiB in all.
    fn default() -> Limits {
        Limits {
            window: 2 * 1024 * 1024,
            max_packet: 32 * 1024,
            window_budget: DEFAULT_WINDOW_BUDGET,
            max_queued: DEFAULT_MAX_QUEUED,
            stall_timeout: DEFAULT_STALL_TIMEOUT,
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
    /// Answers to incoming requests that want one, in the order they came: `None` until the
    /// application answers; sent from the front as soon as they are known.
    replies: VecDeque<Option<bool>>,
    /// Our requests that want a reply.
    expected: usize,
}

impl Channel {
    /// A channel advertising `window` (0 until it is accepted).
    fn new(state: State, window: u32) -> Channel {
        Channel {
            state,
            remote: 0,
            recv_window: window,
            recv_max: window,
            consumed: 0,
            send_window: 0,
            send_packet: 0,
            sent_eof: false,
            got_eof: false,
            sent_close: false,
            got_close: false,
            replies: VecDeque::new(),
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
    out: ByteQueue,
    /// How many messages at the back of `out` are window adjustments the peer does not need
    /// yet (it could still send half a window when each was made, counting adjustments not yet
    /// sent): they go with whatever wakes the connection's driver next, at the latest the
    /// peer's next bytes, instead of waking it themselves.
    lazy: usize,
    events: VecDeque<Event>,
    /// Answers to incoming global requests that want one, in the order they came: `None`
    /// until the application answers.
    global_replies: VecDeque<Option<Vec<u8>>>,
    /// Our global requests that want a reply, in order: what each expects.
    global_expected: VecDeque<Expect>,
    /// A server's keys to answer proof requests with.
    prover: Option<Prover>,
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
        self.out.release_idle();
        crate::session::shrink(&mut self.events);
        crate::session::shrink(&mut self.global_expected);
        crate::session::shrink(&mut self.global_replies);
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        let m = self.out.pop_front();
        self.lazy = self.lazy.min(self.out.len());
        m
    }

    /// Queues a message; everything before it goes as soon as it does.
    fn queue(&mut self, message: Vec<u8>) {
        self.out.push_back(message);
        self.lazy = 0;
    }

    /// Bytes of messages waiting in [`Connection::poll_transmit`].
    pub fn queued_bytes(&self) -> usize {
        self.out.bytes()
    }

    /// The limits the connection was made with.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The window a channel opened now gets: the full window while the budget lasts, what is
    /// left of it after, and never less than [`MIN_WINDOW`].
    fn window_for_new_channel(&self) -> u32 {
        let left = self.limits.window_budget.saturating_sub(self.granted());
        let window = u64::from(self.limits.window).min(left);
        u32::try_from(window)
            .unwrap_or(u32::MAX)
            .max(MIN_WINDOW.min(self.limits.window))
    }

    /// The receive windows granted to all channels.
    fn granted(&self) -> u64 {
        self.channels.values().map(|c| u64::from(c.recv_max)).sum()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Whether messages wait in [`Connection::poll_transmit`] that should go now: window
    /// adjustments alone, while the peer can still send half a window, may wait for the
    /// driver's next turn, at the latest the one after the peer's next bytes (the driver
    /// collects what is queued after every read, so the peer never waits on one of these).
    pub fn has_output(&self) -> bool {
        self.out.len() > self.lazy
    }

    /// How many channels are in use.
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// Whether any of our keepalives is still unanswered.
    pub fn keepalive_outstanding(&self) -> bool {
        self.global_expected.contains(&Expect::Keepalive)
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
        let window = self.window_for_new_channel();
        self.channels
            .insert(id, Channel::new(State::Opening, window));
        let mut w = Writer::message(msg::CHANNEL_OPEN);
        w.string(kind.name().as_bytes())
            .u32(id)
            .u32(window)
            .u32(self.limits.max_packet);
        kind.encode_fields(&mut w);
        self.queue(w.into_bytes());
        Ok(ChannelId(id))
    }

    /// Accepts a channel the peer asked for.
    pub fn accept(&mut self, channel: ChannelId) -> Result<(), ConnectionError> {
        let max_packet = self.limits.max_packet;
        let window = self.window_for_new_channel();
        let c = self.get(channel)?;
        if c.state != State::Offered {
            return fail(format!("{channel} was not offered"));
        }
        c.state = State::Open;
        c.recv_window = window;
        c.recv_max = window;
        let mut w = Writer::message(msg::CHANNEL_OPEN_CONFIRMATION);
        w.u32(c.remote).u32(channel.0).u32(window).u32(max_packet);
        self.queue(w.into_bytes());
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
        self.queue(open_failure_message(remote, reason, text));
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
            self.queue(message);
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
        // The peer's maximum packet size bounds the data a message carries, as OpenSSH reads
        // it (OpenSSH sends that much and drops more): a 32 KiB chunk passed on between two
        // 32 KiB channels stays one packet, not one and a sliver of 16 bytes.
        let packet = c.send_packet as usize;
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
    /// keep the receiver audible: a link that carries data one way hears the other way too
    /// (an adjustment the peer does not need yet goes with our next packet or the driver's turn
    /// after the peer's next bytes; see [`Connection::has_output`]).
    pub fn consume(&mut self, channel: ChannelId, n: usize) -> Result<(), ConnectionError> {
        let step = self.limits.max_packet.saturating_mul(3);
        let full = self.limits.window;
        // A channel that started small grows back toward the full window as the budget allows.
        let growth = match self.channels.get(&channel.0) {
            Some(c) if c.recv_max < full => {
                let left = self.limits.window_budget.saturating_sub(self.granted());
                u32::try_from(left.min(u64::from(full.saturating_sub(c.recv_max)))).unwrap_or(0)
            }
            _ => 0,
        };
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
            let add = c.consumed.saturating_add(growth);
            let mut w = Writer::message(msg::CHANNEL_WINDOW_ADJUST);
            w.u32(c.remote).u32(add);
            // The peer can still send half a window: it is not waiting for this one.
            let lazy = c.recv_window >= c.recv_max / 2;
            c.recv_window = given_back.saturating_add(growth);
            c.recv_max = c.recv_max.saturating_add(growth);
            c.consumed = 0;
            if lazy {
                self.out.push_back(w.into_bytes());
                self.lazy = self.lazy.saturating_add(1);
            } else {
                self.queue(w.into_bytes());
            }
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
        self.queue(w.into_bytes());
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
        self.queue(w.into_bytes());
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
        self.queue(w.into_bytes());
        Ok(())
    }

    /// Answers the oldest request of a channel that waits for the application's answer; the
    /// answer leaves once every request before it is answered.
    pub fn reply(&mut self, channel: ChannelId, success: bool) -> Result<(), ConnectionError> {
        let c = self.get(channel)?;
        let Some(slot) = c.replies.iter_mut().find(|r| r.is_none()) else {
            return fail(format!("{channel}: no request waits for a reply"));
        };
        *slot = Some(success);
        self.send_replies(channel);
        Ok(())
    }

    /// Sends the answers at the front of a channel's reply queue that are known.
    fn send_replies(&mut self, channel: ChannelId) {
        let Some(c) = self.channels.get_mut(&channel.0) else {
            return;
        };
        while let Some(Some(success)) = c.replies.front().copied() {
            c.replies.pop_front();
            if c.sent_close {
                continue;
            }
            let mut w = Writer::message(if success {
                msg::CHANNEL_SUCCESS
            } else {
                msg::CHANNEL_FAILURE
            });
            w.u32(c.remote);
            self.out.push_back(w.into_bytes());
            self.lazy = 0;
        }
    }

    /// Sends the answers at the front of the global reply queue that are known.
    fn send_global_replies(&mut self) {
        while let Some(Some(_)) = self.global_replies.front() {
            if let Some(Some(m)) = self.global_replies.pop_front() {
                self.queue(m);
            }
        }
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
            GlobalRequest::WithData { data, .. } => {
                w.string(data);
            }
            GlobalRequest::Keepalive | GlobalRequest::Other(_) => {}
        }
        if want_reply {
            self.global_expected
                .push_back(if *request == GlobalRequest::Keepalive {
                    Expect::Keepalive
                } else {
                    Expect::Reply
                });
        }
        self.queue(w.into_bytes());
    }

    /// Server: the host keys that proof requests are answered with, in the session
    /// `session_id` (see [`crate::hostkeys`]).
    pub(crate) fn set_prover(
        &mut self,
        keys: Vec<std::sync::Arc<crate::kex::HostKey>>,
        session_id: Vec<u8>,
    ) {
        self.prover = Some(Prover { keys, session_id });
    }

    /// Server: announces the host keys `keys` (`hostkeys-00@openssh.com`).
    pub(crate) fn announce_host_keys(&mut self, keys: &[Vec<u8>]) {
        self.queue(crate::hostkeys::request(
            crate::hostkeys::ANNOUNCE,
            false,
            keys,
        ));
    }

    /// Client: asks the server to prove it holds `keys`; [`Event::HostKeysProof`] follows.
    pub(crate) fn prove_host_keys(&mut self, keys: Vec<Vec<u8>>) {
        self.queue(crate::hostkeys::request(
            crate::hostkeys::PROVE,
            true,
            &keys,
        ));
        self.global_expected.push_back(Expect::Proof(keys));
    }

    /// Answers the oldest global request that wanted a reply; `port` for a `tcpip-forward`
    /// that asked for port 0.
    pub fn global_reply(
        &mut self,
        success: bool,
        port: Option<u32>,
    ) -> Result<(), ConnectionError> {
        let Some(slot) = self.global_replies.iter_mut().find(|r| r.is_none()) else {
            return fail("no global request waits for a reply");
        };
        let mut w = Writer::message(if success {
            msg::REQUEST_SUCCESS
        } else {
            msg::REQUEST_FAILURE
        });
        if let (true, Some(port)) = (success, port) {
            w.u32(port);
        }
        *slot = Some(w.into_bytes());
        self.send_global_replies();
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
