//! A thin tokio driver around [`Session`]: one task per connection moves bytes between the
//! socket and the state machine, hands questions and requests to a [`Handler`], and offers
//! each channel as a [`Channel`] that is an `AsyncRead + AsyncWrite` stream.
//!
//! Flow control is the session's: a [`Channel`]'s reads give window back as the application
//! takes bytes, and its writes take only what the peer's window allows, so a reader that stops
//! holds back its own channel and nothing else. An idle connection holds no buffers: the task
//! waits for the socket to become readable and allocates a read buffer only then.
//!
//! Memory is bounded by what is queued, not by what the protocol promises. Everything waiting
//! for the peer (replies, messages held during a key exchange, sealed packets) counts toward
//! one cap ([`crate::channel::Limits::max_queued`]; [`PRE_AUTH_MAX_QUEUED`] before
//! authentication): channel writers wait at [`BACKLOG_HIGH`], far below it, and past it the
//! driver stops reading, so a peer that never reads cannot make it answer more; one that still
//! takes nothing after [`crate::channel::Limits::stall_timeout`] is cut. Channel data waiting
//! for its reader is bounded by the windows; small pieces are copied out of the read buffer
//! (a one-byte packet must not keep a 64 KiB buffer alive), and large ones are kept as views
//! only up to [`VIEW_BUDGET`] per connection.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;

use tokio::net::TcpStream;
use tokio::sync::{Notify, oneshot};

use crate::auth::{Decision, Question};
use crate::channel::{ChannelId, GlobalRequest, OpenKind, Request, open_failure};
use crate::messages::reason;
use crate::session::Session;
use crate::version::Identification;

mod stream;
mod task;

use stream::OpenGuard;
pub use stream::{Channel, ChannelReader, ChannelWriter, Offer};
pub use task::{connect, start};

/// Largest read from the socket at once.
const READ_SIZE: usize = 64 * 1024;
/// Writers wait while this much is queued for the peer, and go on below half of it.
pub const BACKLOG_HIGH: usize = 512 * 1024;
/// The cap on what is queued for a peer that has not authenticated: a key exchange and a few
/// authentication answers need a few kilobytes.
pub const PRE_AUTH_MAX_QUEUED: usize = 64 * 1024;
/// Channel data smaller than this is copied out of the read buffer rather than kept as a view
/// of it (which would keep the whole buffer alive).
const COPY_BELOW: usize = 16 * 1024;
/// The most channel data one connection keeps as views of read buffers; past it data is
/// copied. A reader that keeps up never gets near it; one that falls behind holds copies.
pub const VIEW_BUDGET: usize = 1024 * 1024;
/// Copies are gathered into pieces of up to this size.
const COPY_PIECE: usize = 64 * 1024;

/// Why a connection or one of its operations failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(pub String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

/// A refused channel open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenError {
    /// Reason code ([`channel::open_failure`]); 0 when the connection ended instead.
    pub reason: u32,
    /// The peer's text, or why the connection ended.
    pub text: String,
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::error::Error for OpenError {}

/// The answer to a global request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GlobalAnswer {
    /// Refused.
    Failure,
    /// Done; with the port bound for a `tcpip-forward` that asked for port 0.
    Success(Option<u32>),
}

/// What the application decides for a connection. Every method has a refusing default.
/// The driver awaits each call before it handles the connection's next event. Channel
/// requests (`pty-req`, `exec`, `break`...) go to the channel's owner, in order with its data:
/// see [`Channel::next`].
pub trait Handler: Send + 'static {
    /// Server: may this key or password log in?
    fn auth(&mut self, question: Question) -> impl Future<Output = Decision> + Send {
        let _ = question;
        async { Decision::Reject }
    }

    /// Server: an attempt was refused by the protocol layer (bad signature, method not
    /// offered...): for the audit. Its USERAUTH_FAILURE goes out when this returns, so a
    /// server that delays its own refusals can delay these alike.
    fn auth_refused(&mut self, user: &str, why: &str) -> impl Future<Output = ()> + Send {
        let _ = (user, why);
        async {}
    }

    /// Authentication succeeded (both ends).
    fn authenticated(&mut self, user: &str, handle: &Handle) -> impl Future<Output = ()> + Send {
        let _ = (user, handle);
        async {}
    }

    /// The peer opens a channel: accept or reject the [`Offer`], now or later.
    fn channel_open(&mut self, kind: OpenKind, offer: Offer) -> impl Future<Output = ()> + Send {
        let _ = kind;
        offer.reject(open_failure::PROHIBITED, "not offered");
        async {}
    }

    /// A global request (`tcpip-forward`...).
    fn global_request(
        &mut self,
        request: GlobalRequest,
    ) -> impl Future<Output = GlobalAnswer> + Send {
        let _ = request;
        async { GlobalAnswer::Failure }
    }

    /// The server's banner (client side).
    fn banner(&mut self, text: &str) {
        let _ = text;
    }

    /// Client with [`crate::transport::Config::learn_host_keys`]: the server proved it holds
    /// these host keys (blobs) that the check did not trust, or why it did not prove them.
    fn host_keys(&mut self, keys: Result<Vec<Vec<u8>>, String>) -> impl Future<Output = ()> + Send {
        let _ = keys;
        async {}
    }
}

/// What arrived on a channel, in order.
enum Item {
    /// Data as a view of the packet it came in (counted in [`State::views`]).
    View(bytes::Bytes),
    /// Data copied out of the read buffer, small pieces gathered into one.
    Copy(Vec<u8>),
    /// A gathered piece that a reader was lent: frozen in its own allocation, so lending it
    /// costs no copy (not a view of a read buffer; later small pieces gather into a new one).
    Lent(bytes::Bytes),
    Request(Request, bool),
    /// A request that wanted an answer and found the queue full: refused when reached.
    Refused,
}

impl Item {
    fn data(&self) -> Option<&[u8]> {
        match self {
            Item::View(b) | Item::Lent(b) => Some(b),
            Item::Copy(v) => Some(v),
            Item::Request(..) | Item::Refused => None,
        }
    }
}

/// Most requests queued on a channel nobody takes them from; more are refused at once.
const MAX_QUEUED_REQUESTS: usize = 32;

/// What a channel's owner gets from [`Channel::next`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelMsg {
    /// Data (window is given back as it is taken).
    Data(Vec<u8>),
    /// A request; if `want_reply`, answer with [`Channel::reply`], in order.
    Request {
        /// The request.
        request: Request,
        /// Whether the peer waits for the answer.
        want_reply: bool,
    },
    /// The peer sends no more data.
    Eof,
}

/// Sees every byte the connection moves (for liveness decisions that must count keepalive
/// answers and window adjustments, not only what reaches channels).
pub trait Observer: Send + Sync + 'static {
    /// `bytes` arrived from the peer.
    fn received(&self, bytes: usize);
    /// `bytes` were handed to the socket.
    fn sent(&self, bytes: usize);
}

#[derive(Default)]
struct Slot {
    /// Data and requests not yet taken, oldest first; `head` is how much of the first data
    /// piece was read.
    recv: VecDeque<Item>,
    head: usize,
    /// Data bytes in `recv` not yet read (at most the window this channel advertised).
    queued: usize,
    requests: usize,
    eof: bool,
    /// [`Channel::next`] has returned EOF.
    eof_taken: bool,
    closed: bool,
    /// The [`Channel`] was dropped; what arrives is thrown away.
    dropped: bool,
    reader: Option<Waker>,
    writer: Option<Waker>,
    replies: VecDeque<oneshot::Sender<bool>>,
    /// The message of an `exit-signal` a byte-stream read passed over (how the far end says
    /// why a stream was cut).
    signal: Option<String>,
    /// Extended data (stderr) is read as data ([`Channel::merge_stderr`]) instead of dropped.
    merge_stderr: bool,
}

impl Slot {
    fn wake(&mut self) {
        if let Some(w) = self.reader.take() {
            w.wake();
        }
        if let Some(w) = self.writer.take() {
            w.wake();
        }
    }
}

struct State {
    session: Session,
    slots: HashMap<ChannelId, Slot>,
    opens: HashMap<ChannelId, oneshot::Sender<Result<(), OpenError>>>,
    globals: VecDeque<oneshot::Sender<GlobalAnswer>>,
    /// The socket, for channel writers that write through ([`State::write_through`]); gone
    /// once the connection ended, while the driver still writes its last packets with its own.
    socket: Option<Arc<TcpStream>>,
    /// Sealed packets waiting for the socket, written as they are (no copy into one buffer);
    /// `out_at` is how much of the first was written. Whoever finds it empty may write (under
    /// the lock, so packets leave in the order they were sealed); what the socket does not take
    /// stays here for the driver, which writes it when the socket is ready.
    out: VecDeque<Vec<u8>>,
    out_at: usize,
    /// Bytes in `out` not yet written.
    out_len: usize,
    blocked: Vec<Waker>,
    /// Why the connection ended, once it did.
    ended: Option<String>,
    /// The peer's DISCONNECT description, if it sent one.
    peer_disconnect: Option<String>,
    authenticated: Option<String>,
    /// The most data bytes ever queued unread on one channel of this connection.
    peak_queued: usize,
    /// Bytes of channel data held as views of read buffers ([`Item::View`]).
    views: usize,
}

impl State {
    /// Takes the first item of a channel's queue, keeping the count of views.
    fn pop_item(views: &mut usize, slot: &mut Slot) -> Option<Item> {
        let item = slot.recv.pop_front()?;
        if let Item::View(b) = &item {
            *views = views.saturating_sub(b.len());
        }
        Some(item)
    }

    /// Drops what a channel's queue holds, keeping the count of views.
    fn clear_items(views: &mut usize, slot: &mut Slot) {
        while Self::pop_item(views, slot).is_some() {}
        slot.recv = VecDeque::new();
    }

    /// What the peer is sent and has not taken: the session's queues and the packets waiting
    /// for the socket (their memory, as [`crate::queue::ByteQueue`] counts it).
    fn queued_now(&self) -> usize {
        let out = self
            .out_len
            .saturating_add(self.out.len().saturating_mul(crate::queue::ITEM_OVERHEAD));
        out.saturating_add(self.session.queued_bytes())
    }

    /// Moves what the session sealed into the queue for the socket.
    fn take_transmit(&mut self) {
        while let Some(bytes) = self.session.poll_transmit() {
            self.out_len = self.out_len.saturating_add(bytes.len());
            self.out.push_back(bytes);
        }
    }

    /// Writes as many queued packets to `socket` as it takes in one vectored write, and drops
    /// those written whole.
    fn write_some(&mut self, socket: &TcpStream) -> io::Result<usize> {
        const MAX_SLICES: usize = 64;
        let mut slices = [io::IoSlice::new(&[]); MAX_SLICES];
        let mut count = 0;
        for (i, packet) in self.out.iter().take(MAX_SLICES).enumerate() {
            let from = if i == 0 { self.out_at } else { 0 };
            if let Some(slot) = slices.get_mut(i) {
                *slot = io::IoSlice::new(packet.get(from..).unwrap_or_default());
                count = i.saturating_add(1);
            }
        }
        let n = socket.try_write_vectored(slices.get(..count).unwrap_or_default())?;
        self.out_len = self.out_len.saturating_sub(n);
        let mut left = n;
        while let Some(front) = self.out.front() {
            let rest = front.len().saturating_sub(self.out_at);
            if left < rest {
                self.out_at = self.out_at.saturating_add(left);
                break;
            }
            left = left.saturating_sub(rest);
            self.out.pop_front();
            self.out_at = 0;
        }
        Ok(n)
    }

    /// Writes what the session just sealed from the caller's task, when nothing older waits
    /// for the socket: a chunk of channel data goes from one socket to the next without
    /// waking the connection's driver, which is often on the other worker and, on a busy
    /// host, late (bench/tuning.md, steps 16 and 18). Returns whether the driver must be
    /// woken all the same: the socket left something for it to write when it is ready, or a
    /// key exchange is under way (its deadline is the driver's to keep). An older queue means
    /// the driver was woken for it already, and what was sealed now goes after it.
    fn write_through(&mut self, observer: Option<&dyn Observer>) -> bool {
        let idle = self.out.is_empty();
        self.take_transmit();
        // Lent out of the state for the write (not cloned: no reference count to touch per
        // packet) and put back.
        if idle
            && !self.out.is_empty()
            && let Some(socket) = self.socket.take()
        {
            // A failed write leaves the packets queued; the driver's own write meets the
            // error and ends the connection.
            if let Ok(n) = self.write_some(&socket)
                && let Some(o) = observer
            {
                o.sent(n);
            }
            self.socket = Some(socket);
        }
        (idle && !self.out.is_empty()) || self.session.transport().in_kex()
    }

    /// Lets go of the memory an idle connection does not need.
    fn release_idle(&mut self) {
        self.session.release_idle();
        crate::session::shrink(&mut self.out);
        for slot in self.slots.values_mut() {
            crate::session::shrink(&mut slot.recv);
        }
        if self.slots.is_empty() && self.slots.capacity() > 0 {
            self.slots = HashMap::new();
        }
        if self.opens.is_empty() && self.opens.capacity() > 0 {
            self.opens = HashMap::new();
        }
        crate::session::shrink(&mut self.globals);
        if self.blocked.is_empty() && self.blocked.capacity() > 0 {
            self.blocked = Vec::new();
        }
    }

    fn end(&mut self, why: &str) {
        if self.ended.is_some() {
            return;
        }
        self.ended = Some(why.to_string());
        // Writers stop writing through; the driver writes what is left (a DISCONNECT).
        self.socket = None;
        for slot in self.slots.values_mut() {
            slot.closed = true;
            slot.replies.clear();
            slot.wake();
        }
        for (_, tx) in self.opens.drain() {
            let _ = tx.send(Err(OpenError {
                reason: 0,
                text: format!("the connection ended: {why}"),
            }));
        }
        self.globals.clear();
        for w in self.blocked.drain(..) {
            w.wake();
        }
    }
}

struct Inner {
    state: Mutex<State>,
    /// Wakes the driver: there is something to send.
    wake: Notify,
    /// Wakes those waiting for the end or for authentication.
    changed: Notify,
    /// Sees every byte moved, the driver's and the writers' (see [`State::write_through`]).
    observer: Option<Arc<dyn Observer>>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the state as it was: go on with it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Operations on a connection from any task: open channels, send global requests, end it.
#[derive(Clone)]
pub struct Handle {
    inner: Arc<Inner>,
}

impl Handle {
    /// Opens a channel and waits for the peer's answer.
    pub async fn open(&self, kind: OpenKind) -> Result<Channel, OpenError> {
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut st = self.inner.lock();
            if let Some(why) = &st.ended {
                return Err(OpenError {
                    reason: 0,
                    text: format!("the connection ended: {why}"),
                });
            }
            let id = st.session.connection().open(&kind).map_err(|e| OpenError {
                reason: open_failure::RESOURCE_SHORTAGE,
                text: e.0,
            })?;
            st.slots.insert(id, Slot::default());
            st.opens.insert(id, tx);
            id
        };
        self.inner.wake.notify_one();
        // Dropped before the answer: the channel is closed when it comes.
        let mut guard = OpenGuard {
            inner: Some(self.inner.clone()),
            id,
        };
        match rx.await {
            Ok(Ok(())) => {
                guard.inner = None;
                Ok(Channel {
                    inner: self.inner.clone(),
                    id,
                })
            }
            Ok(Err(e)) => {
                guard.inner = None;
                Err(e)
            }
            Err(_) => Err(OpenError {
                reason: 0,
                text: "the connection ended".into(),
            }),
        }
    }

    /// Sends a global request and waits for its answer.
    pub async fn global_request(&self, request: GlobalRequest) -> Result<GlobalAnswer, Error> {
        let (tx, rx) = oneshot::channel();
        {
            let mut st = self.inner.lock();
            if let Some(why) = &st.ended {
                return Err(Error(format!("the connection ended: {why}")));
            }
            st.session.connection().global_request(&request, true);
            st.globals.push_back(tx);
        }
        self.inner.wake.notify_one();
        rx.await.map_err(|_| Error("the connection ended".into()))
    }

    /// Sends `keepalive@openssh.com` asking for an answer (any answer proves the peer).
    pub fn send_keepalive(&self) {
        self.inner.lock().session.send_keepalive(true);
        self.inner.wake.notify_one();
    }

    /// Queues a global request that wants no answer without waking the connection: it leaves
    /// with the next thing this side sends (a keepalive, data, a reply), in the same write,
    /// and so costs no packet of its own on a metered link.
    pub fn send_with_next(&self, request: GlobalRequest) {
        let mut st = self.inner.lock();
        if st.ended.is_none() {
            st.session.connection().global_request(&request, false);
        }
    }

    /// Server: announces the host keys again after they changed (see
    /// [`Session::reannounce_host_keys`]); only for clients that take it (burrow agents).
    pub fn reannounce_host_keys(&self, extra: Vec<Arc<crate::kex::HostKey>>, peers: Vec<Vec<u8>>) {
        let mut st = self.inner.lock();
        if st.ended.is_none() {
            st.session.reannounce_host_keys(extra, peers);
        }
        drop(st);
        self.inner.wake.notify_one();
    }

    /// Whether one of our keepalives is unanswered.
    pub fn keepalive_outstanding(&self) -> bool {
        self.inner
            .lock()
            .session
            .connection()
            .keepalive_outstanding()
    }

    /// Ends the connection with DISCONNECT carrying `description`.
    pub fn disconnect(&self, description: &str) {
        self.inner
            .lock()
            .session
            .disconnect(reason::BY_APPLICATION, description);
        self.inner.wake.notify_one();
    }

    /// Starts a key re-exchange.
    pub fn rekey(&self) {
        self.inner.lock().session.transport().rekey();
        self.inner.wake.notify_one();
    }

    /// The peer's identification.
    pub fn peer_id(&self) -> Option<Identification> {
        self.inner.lock().session.peer_id().cloned()
    }

    /// The session identifier (the first key exchange's hash), once the keys are exchanged:
    /// what a signature binds to this connection.
    pub fn session_id(&self) -> Option<Vec<u8>> {
        self.inner
            .lock()
            .session
            .transport()
            .session_id()
            .map(<[u8]>::to_vec)
    }

    /// The description of the peer's DISCONNECT, if it sent one.
    pub fn peer_disconnect(&self) -> Option<String> {
        self.inner.lock().peer_disconnect.clone()
    }

    /// Why the connection ended, if it did.
    pub fn ended(&self) -> Option<String> {
        self.inner.lock().ended.clone()
    }

    /// Waits until the connection ends, and says why.
    pub async fn closed(&self) -> String {
        loop {
            let notified = self.inner.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(why) = self.ended() {
                return why;
            }
            notified.await;
        }
    }

    /// Waits until authentication succeeded (the user), or the connection ended (why).
    pub async fn authenticated(&self) -> Result<String, Error> {
        loop {
            let notified = self.inner.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let st = self.inner.lock();
                if let Some(user) = &st.authenticated {
                    return Ok(user.clone());
                }
                if let Some(why) = &st.ended {
                    return Err(Error(why.clone()));
                }
            }
            notified.await;
        }
    }

    /// The most data ever queued unread on one channel of this connection: what a reader
    /// that falls behind costs in memory (never more than the window its channel advertised).
    pub fn peak_buffered(&self) -> usize {
        self.inner.lock().peak_queued
    }

    /// Bytes queued for the peer and not yet written (replies, held and sealed messages).
    pub fn queued_bytes(&self) -> usize {
        self.inner.lock().queued_now()
    }

    /// Key exchanges finished on this connection (the first included).
    pub fn key_exchanges(&self) -> u32 {
        let mut st = self.inner.lock();
        st.session.transport().key_exchanges()
    }

    /// How many channels are open.
    pub fn channel_count(&self) -> usize {
        self.inner.lock().slots.len()
    }
}
