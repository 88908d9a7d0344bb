//! A thin tokio driver around [`Session`]: one task per connection moves bytes between the
//! socket and the state machine, hands questions and requests to a [`Handler`], and offers
//! each channel as a [`Channel`] that is an `AsyncRead + AsyncWrite` stream.
//!
//! Flow control is the session's: a [`Channel`]'s reads give window back as the application
//! takes bytes, and its writes take only what the peer's window allows, so a reader that stops
//! holds back its own channel and nothing else. An idle connection holds no buffers: the task
//! waits for the socket to become readable and allocates a read buffer only then.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{Notify, oneshot};

use crate::auth::{Decision, Question};
use crate::channel::{self, ChannelId, GlobalRequest, OpenKind, Request, open_failure};
use crate::messages::reason;
use crate::session::{Event, Session};
use crate::version::Identification;

/// Largest read from the socket at once.
const READ_SIZE: usize = 64 * 1024;
/// Writers wait while this much is queued for the socket, and go on below half of it.
const BACKLOG_HIGH: usize = 512 * 1024;

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
    /// offered...): for the audit.
    fn auth_refused(&mut self, user: &str, why: &str) {
        let _ = (user, why);
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
}

/// What arrived on a channel, in order.
enum Item {
    Data(bytes::Bytes),
    Request(Request, bool),
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
    /// Bytes waiting for the socket.
    backlog: usize,
    blocked: Vec<Waker>,
    /// Why the connection ended, once it did.
    ended: Option<String>,
    /// The peer's DISCONNECT description, if it sent one.
    peer_disconnect: Option<String>,
    authenticated: Option<String>,
    /// The most data bytes ever queued unread on one channel of this connection.
    peak_queued: usize,
}

impl State {
    /// Lets go of the memory an idle connection does not need.
    fn release_idle(&mut self) {
        self.session.release_idle();
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

    /// How many channels are open.
    pub fn channel_count(&self) -> usize {
        self.inner.lock().slots.len()
    }
}

struct OpenGuard {
    inner: Option<Arc<Inner>>,
    id: ChannelId,
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            let mut st = inner.lock();
            st.opens.remove(&self.id);
            if let Some(slot) = st.slots.get_mut(&self.id) {
                slot.dropped = true;
            }
            let _ = st.session.connection().close(self.id);
            drop(st);
            inner.wake.notify_one();
        }
    }
}

/// A channel the peer offered: accept it for a [`Channel`], or reject it. Dropped unanswered,
/// it is rejected.
pub struct Offer {
    inner: Option<Arc<Inner>>,
    id: ChannelId,
}

impl Offer {
    /// Our number for the channel.
    pub fn id(&self) -> ChannelId {
        self.id
    }

    /// Accepts the channel.
    pub fn accept(mut self) -> Result<Channel, Error> {
        let Some(inner) = self.inner.take() else {
            return Err(Error("answered already".into()));
        };
        {
            let mut st = inner.lock();
            if let Some(why) = &st.ended {
                return Err(Error(format!("the connection ended: {why}")));
            }
            st.session
                .connection()
                .accept(self.id)
                .map_err(|e| Error(e.0))?;
            st.slots.insert(self.id, Slot::default());
        }
        inner.wake.notify_one();
        Ok(Channel { inner, id: self.id })
    }

    /// Rejects the channel with `reason` ([`channel::open_failure`]) and `text`.
    pub fn reject(mut self, reason: u32, text: &str) {
        self.refuse(reason, text);
    }

    fn refuse(&mut self, reason: u32, text: &str) {
        if let Some(inner) = self.inner.take() {
            let _ = inner
                .lock()
                .session
                .connection()
                .reject(self.id, reason, text);
            inner.wake.notify_one();
        }
    }
}

impl Drop for Offer {
    fn drop(&mut self) {
        self.refuse(open_failure::CONNECT_FAILED, "refused");
    }
}

/// One open channel as a byte stream. Reading gives window back; shutting down the write half
/// sends EOF; dropping it closes the channel.
pub struct Channel {
    inner: Arc<Inner>,
    id: ChannelId,
}

impl Channel {
    /// Our number for the channel.
    pub fn id(&self) -> ChannelId {
        self.id
    }

    /// A handle to the connection the channel is on.
    pub fn handle(&self) -> Handle {
        Handle {
            inner: self.inner.clone(),
        }
    }

    /// Sends a channel request; with `want_reply`, waits for the answer (`false` without).
    pub async fn request(&self, request: Request, want_reply: bool) -> Result<bool, Error> {
        let rx = {
            let mut st = self.inner.lock();
            if st.ended.is_some() {
                return Err(Error("the connection ended".into()));
            }
            st.session
                .connection()
                .request(self.id, &request, want_reply)
                .map_err(|e| Error(e.0))?;
            if want_reply {
                let (tx, rx) = oneshot::channel();
                if let Some(slot) = st.slots.get_mut(&self.id) {
                    slot.replies.push_back(tx);
                }
                Some(rx)
            } else {
                None
            }
        };
        self.inner.wake.notify_one();
        match rx {
            Some(rx) => rx.await.map_err(|_| Error("the channel closed".into())),
            None => Ok(false),
        }
    }

    /// Sends EOF: no more data from us.
    pub fn eof(&self) {
        let _ = self.inner.lock().session.connection().eof(self.id);
        self.inner.wake.notify_one();
    }

    /// The window the peer may still fill (for tests and metrics).
    pub fn receive_window(&self) -> Option<u32> {
        self.inner
            .lock()
            .session
            .connection()
            .receive_window(self.id)
    }

    /// Bytes received and not yet read.
    pub fn buffered(&self) -> usize {
        self.inner
            .lock()
            .slots
            .get(&self.id)
            .map_or(0, |s| s.queued)
    }

    /// The next message: data, a request or EOF, in the order they arrived; `None` once the
    /// channel is closed.
    pub async fn next(&self) -> Option<ChannelMsg> {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }

    fn poll_next(&self, cx: &mut Context<'_>) -> Poll<Option<ChannelMsg>> {
        let mut st = self.inner.lock();
        let State { session, slots, .. } = &mut *st;
        let Some(slot) = slots.get_mut(&self.id) else {
            return Poll::Ready(None);
        };
        if let Some(item) = slot.recv.pop_front() {
            let head = std::mem::take(&mut slot.head);
            let msg = match item {
                Item::Data(d) => {
                    let rest = d.get(head..).unwrap_or_default().to_vec();
                    slot.queued = slot.queued.saturating_sub(rest.len());
                    let _ = session.connection().consume(self.id, rest.len());
                    ChannelMsg::Data(rest)
                }
                Item::Request(request, want_reply) => {
                    slot.requests = slot.requests.saturating_sub(1);
                    ChannelMsg::Request {
                        request,
                        want_reply,
                    }
                }
            };
            let wake = session.connection().has_output();
            drop(st);
            if wake {
                self.inner.wake.notify_one();
            }
            return Poll::Ready(Some(msg));
        }
        if slot.eof && !slot.eof_taken {
            slot.eof_taken = true;
            return Poll::Ready(Some(ChannelMsg::Eof));
        }
        if slot.closed {
            return Poll::Ready(None);
        }
        slot.reader = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Answers the oldest request that wanted a reply.
    pub fn reply(&self, success: bool) {
        let _ = self
            .inner
            .lock()
            .session
            .connection()
            .reply(self.id, success);
        self.inner.wake.notify_one();
    }

    /// Writes all of `data`, waiting for window as needed.
    pub async fn data(&self, data: &[u8]) -> io::Result<()> {
        self.write_with(None, data).await
    }

    /// Writes all of `data` as extended data (stderr), waiting for window as needed.
    pub async fn stderr(&self, data: &[u8]) -> io::Result<()> {
        self.write_with(Some(1), data).await
    }

    async fn write_with(&self, code: Option<u32>, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let n = std::future::poll_fn(|cx| self.poll_send(cx, code, data)).await?;
            data = data.get(n..).unwrap_or_default();
        }
        Ok(())
    }

    fn poll_send(
        &self,
        cx: &mut Context<'_>,
        code: Option<u32>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut st = self.inner.lock();
        if st.ended.is_some() || st.slots.get(&self.id).is_none_or(|s| s.closed) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the channel is closed",
            )));
        }
        if st.backlog >= BACKLOG_HIGH {
            st.blocked.push(cx.waker().clone());
            return Poll::Pending;
        }
        let sent = st.session.send_data(self.id, code, buf);
        let n = match sent {
            Ok(n) => n,
            Err(e) => return Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, e.0))),
        };
        if n == 0 && !buf.is_empty() {
            if let Some(slot) = st.slots.get_mut(&self.id) {
                slot.writer = Some(cx.waker().clone());
            }
            return Poll::Pending;
        }
        drop(st);
        self.inner.wake.notify_one();
        Poll::Ready(Ok(n))
    }

    /// Sends `exit-status`.
    pub fn exit_status(&self, code: u32) {
        let _ = self.inner.lock().session.connection().request(
            self.id,
            &Request::ExitStatus(code),
            false,
        );
        self.inner.wake.notify_one();
    }

    /// Closes the channel (EOF first is the caller's choice: [`Channel::eof`]).
    pub fn close(&self) {
        let _ = self.inner.lock().session.connection().close(self.id);
        self.inner.wake.notify_one();
    }
}

impl AsyncRead for Channel {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let mut st = this.inner.lock();
        let State {
            session,
            slots,
            ended,
            ..
        } = &mut *st;
        let Some(slot) = slots.get_mut(&this.id) else {
            return Poll::Ready(Err(interrupted(ended.as_deref())));
        };
        let mut taken = 0usize;
        while buf.remaining() > 0 {
            match slot.recv.front() {
                None => break,
                Some(Item::Request(_, want_reply)) => {
                    // A byte stream takes no requests: refuse the ones that wait for an answer.
                    if *want_reply {
                        let _ = session.connection().reply(this.id, false);
                    }
                    slot.requests = slot.requests.saturating_sub(1);
                    slot.recv.pop_front();
                }
                Some(Item::Data(front)) => {
                    let rest = front.get(slot.head..).unwrap_or_default();
                    let n = rest.len().min(buf.remaining());
                    buf.put_slice(rest.get(..n).unwrap_or_default());
                    taken = taken.saturating_add(n);
                    slot.queued = slot.queued.saturating_sub(n);
                    slot.head = slot.head.saturating_add(n);
                    if slot.head >= front.len() {
                        slot.recv.pop_front();
                        slot.head = 0;
                    }
                }
            }
        }
        if slot.recv.is_empty() {
            // Give the memory back while the channel is quiet.
            slot.recv = VecDeque::new();
        }
        if taken > 0 {
            let _ = session.connection().consume(this.id, taken);
        }
        let wake = session.connection().has_output();
        let result = if taken > 0 || slot.eof {
            Poll::Ready(Ok(()))
        } else if slot.closed {
            // Closed without EOF: the other side did not finish its stream.
            Poll::Ready(Err(interrupted(ended.as_deref())))
        } else {
            slot.reader = Some(cx.waker().clone());
            Poll::Pending
        };
        drop(st);
        if wake {
            this.inner.wake.notify_one();
        }
        result
    }
}

/// The error a read gets when the channel ended without EOF.
fn interrupted(ended: Option<&str>) -> io::Error {
    let why = match ended {
        Some(why) => format!("the SSH connection ended: {why}"),
        None => "the channel was closed before its end of stream".to_string(),
    };
    io::Error::new(io::ErrorKind::ConnectionAborted, why)
}

impl AsyncWrite for Channel {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_send(cx, None, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.eof();
        Poll::Ready(Ok(()))
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        let mut st = self.inner.lock();
        let closed = st.slots.get(&self.id).is_none_or(|s| s.closed);
        if closed {
            st.slots.remove(&self.id);
        } else {
            if let Some(slot) = st.slots.get_mut(&self.id) {
                slot.dropped = true;
                slot.recv = VecDeque::new();
            }
            let _ = st.session.connection().close(self.id);
        }
        drop(st);
        self.inner.wake.notify_one();
    }
}

/// Drives a client `session` over `socket` on a task of its own and waits for
/// authentication: the handle, and the task (its result says how the connection ended).
pub async fn connect<H: Handler>(
    socket: TcpStream,
    session: Session,
    handler: H,
) -> Result<(Handle, tokio::task::JoinHandle<Result<(), Error>>), Error> {
    let (handle, driver) = start(socket, session, handler, None);
    let task = tokio::spawn(driver);
    handle.authenticated().await?;
    Ok((handle, task))
}

/// Starts driving `session` over `socket`: returns the handle and the future that runs the
/// connection (spawn it); the future ends when the connection does. Dropping the future cuts
/// the connection. `observer` sees the bytes moved.
pub fn start<H: Handler>(
    socket: TcpStream,
    session: Session,
    handler: H,
    observer: Option<Arc<dyn Observer>>,
) -> (Handle, impl Future<Output = Result<(), Error>> + Send) {
    let inner = Arc::new(Inner {
        state: Mutex::new(State {
            session,
            slots: HashMap::new(),
            opens: HashMap::new(),
            globals: VecDeque::new(),
            backlog: 0,
            blocked: Vec::new(),
            ended: None,
            peer_disconnect: None,
            authenticated: None,
            peak_queued: 0,
        }),
        wake: Notify::new(),
        changed: Notify::new(),
    });
    let handle = Handle {
        inner: inner.clone(),
    };
    let driver = Driver {
        inner,
        socket,
        handler,
        observer,
        out: VecDeque::new(),
        out_at: 0,
        out_len: 0,
    };
    (handle, driver.run())
}

struct Driver<H> {
    inner: Arc<Inner>,
    socket: TcpStream,
    handler: H,
    observer: Option<Arc<dyn Observer>>,
    /// Sealed packets waiting for the socket, written as they are (no copy into one buffer);
    /// `out_at` is how much of the first was written.
    out: VecDeque<Vec<u8>>,
    out_at: usize,
    /// Bytes in `out` not yet written.
    out_len: usize,
}

impl<H> Drop for Driver<H> {
    fn drop(&mut self) {
        // Ended or cut (the future dropped): everyone waiting on the connection learns it.
        self.inner.lock().end("the connection was cut");
        self.inner.changed.notify_waiters();
    }
}

impl<H: Handler> Driver<H> {
    async fn run(mut self) -> Result<(), Error> {
        let result = self.run_inner().await;
        let why = match &result {
            Ok(()) => "closed".to_string(),
            Err(e) => e.0.clone(),
        };
        self.inner.lock().end(&why);
        self.inner.changed.notify_waiters();
        result
    }

    /// Moves the session's output into `out` and takes its events.
    fn collect(&mut self) -> (Vec<Event>, Option<Instant>, Option<String>) {
        let mut st = self.inner.lock();
        while let Some(bytes) = st.session.poll_transmit() {
            self.out_len = self.out_len.saturating_add(bytes.len());
            self.out.push_back(bytes);
        }
        st.backlog = self.out_len;
        if st.backlog < BACKLOG_HIGH / 2 {
            for w in st.blocked.drain(..) {
                w.wake();
            }
        }
        let events = std::iter::from_fn(|| st.session.poll_event()).collect();
        (events, st.session.poll_timeout(), st.ended.clone())
    }

    async fn run_inner(&mut self) -> Result<(), Error> {
        let mut failure: Option<String> = None;
        loop {
            let (events, timeout, _) = self.collect();
            let had_events = !events.is_empty();
            for event in events {
                self.event(event).await;
            }
            if had_events {
                continue;
            }
            let pending = !self.out.is_empty();
            if let Some(why) = &failure
                && !pending
            {
                return Err(Error(why.clone()));
            }
            if !pending {
                // Nothing to write: give the queues back while idle.
                self.out = VecDeque::new();
                self.inner.lock().release_idle();
            }
            let sleep = async {
                match timeout {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                ready = self.socket.readable(), if failure.is_none() => {
                    ready.map_err(|e| Error(format!("socket: {e}")))?;
                    // Read straight into the session's buffer: packets are decrypted where
                    // they land and their data handed on without a copy.
                    let socket = &self.socket;
                    let mut st = self.inner.lock();
                    let got = st.session.receive_with(|buf| {
                        buf.reserve(READ_SIZE);
                        socket.try_read_buf(buf)
                    });
                    drop(st);
                    match got {
                        Ok(Ok(0)) => return Err(Error("the peer closed the connection".into())),
                        Ok(Ok(n)) => {
                            if let Some(o) = &self.observer {
                                o.received(n);
                            }
                        }
                        Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Ok(Err(e)) => return Err(Error(format!("socket: {e}"))),
                        Err(e) => failure = Some(e.0),
                    }
                }
                ready = self.socket.writable(), if pending => {
                    ready.map_err(|e| Error(format!("socket: {e}")))?;
                    match self.write_some() {
                        Ok(n) => {
                            if let Some(o) = &self.observer {
                                o.sent(n);
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Err(Error(format!("socket: {e}"))),
                    }
                }
                _ = self.inner.wake.notified() => {
                    let st = self.inner.lock();
                    if failure.is_none()
                        && let Some(why) = &st.ended
                    {
                        failure = Some(why.clone());
                    }
                }
                _ = sleep => {
                    self.inner.lock().session.handle_time(Instant::now());
                }
            }
            if failure.is_none() {
                failure = self.session_failure();
            }
        }
    }

    /// Writes as many queued packets as the socket takes in one vectored write, and drops
    /// those written whole.
    fn write_some(&mut self) -> io::Result<usize> {
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
        let n = self
            .socket
            .try_write_vectored(slices.get(..count).unwrap_or_default())?;
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

    /// The session's own end (a DISCONNECT either way), which ends the driver once what is
    /// queued was written.
    fn session_failure(&self) -> Option<String> {
        let mut st = self.inner.lock();
        let why = st.session.failure()?.0.clone();
        st.end(&why);
        Some(why)
    }

    fn handle(&self) -> Handle {
        Handle {
            inner: self.inner.clone(),
        }
    }

    async fn event(&mut self, event: Event) {
        match event {
            Event::Auth(q) => {
                // Handler futures are boxed: held inline, the largest of them would size every
                // connection's task for as long as it lives, idle or not.
                let d = Box::pin(self.handler.auth(q)).await;
                let _ = self.inner.lock().session.decide(d);
            }
            Event::AuthRefused { user, why } => self.handler.auth_refused(&user, &why),
            Event::Authenticated { user } => {
                let handle = self.handle();
                Box::pin(self.handler.authenticated(&user, &handle)).await;
                self.inner.lock().authenticated = Some(user);
                self.inner.changed.notify_waiters();
            }
            Event::Banner(text) => self.handler.banner(&text),
            Event::Disconnected(d) => {
                let why = format!("the peer disconnected: {}", d.description);
                let mut st = self.inner.lock();
                st.peer_disconnect = Some(d.description);
                st.end(&why);
                drop(st);
                self.inner.changed.notify_waiters();
            }
            Event::Connection(e) => self.connection_event(e).await,
        }
    }

    async fn connection_event(&mut self, event: channel::Event) {
        use channel::Event as E;
        match event {
            E::Open { channel, kind } => {
                let offer = Offer {
                    inner: Some(self.inner.clone()),
                    id: channel,
                };
                Box::pin(self.handler.channel_open(kind, offer)).await;
            }
            E::Global {
                request,
                want_reply,
            } => {
                let answer = Box::pin(self.handler.global_request(request)).await;
                if want_reply {
                    let (ok, port) = match answer {
                        GlobalAnswer::Failure => (false, None),
                        GlobalAnswer::Success(port) => (true, port),
                    };
                    let _ = self
                        .inner
                        .lock()
                        .session
                        .connection()
                        .global_reply(ok, port);
                }
            }
            other => self.inner.lock().channel_event(other),
        }
    }
}

impl State {
    /// Channel events that need no application decision.
    fn channel_event(&mut self, event: channel::Event) {
        use channel::Event as E;
        match event {
            // Extended data (a remote command's stderr) has no reader here: taken and dropped.
            E::ExtendedData { channel, data, .. } => {
                let _ = self.session.connection().consume(channel, data.len());
            }
            E::Data { channel, data } => {
                match self.slots.get_mut(&channel) {
                    Some(slot) if !slot.dropped => {
                        slot.queued = slot.queued.saturating_add(data.len());
                        self.peak_queued = self.peak_queued.max(slot.queued);
                        slot.recv.push_back(Item::Data(data));
                        if let Some(w) = slot.reader.take() {
                            w.wake();
                        }
                    }
                    // Nobody reads it: taken at once so the window stays open until CLOSE.
                    _ => {
                        let _ = self.session.connection().consume(channel, data.len());
                    }
                }
            }
            E::Eof(channel) => {
                if let Some(slot) = self.slots.get_mut(&channel) {
                    slot.eof = true;
                    slot.wake();
                }
            }
            E::Closed(channel) => {
                let remove = match self.slots.get_mut(&channel) {
                    Some(slot) => {
                        slot.closed = true;
                        slot.replies.clear();
                        slot.wake();
                        slot.dropped
                    }
                    None => false,
                };
                if remove {
                    self.slots.remove(&channel);
                }
                if let Some(tx) = self.opens.remove(&channel) {
                    let _ = tx.send(Err(OpenError {
                        reason: 0,
                        text: "closed".into(),
                    }));
                }
            }
            E::Writable(channel) => {
                if let Some(w) = self.slots.get_mut(&channel).and_then(|s| s.writer.take()) {
                    w.wake();
                }
            }
            E::Opened(channel) => {
                if let Some(tx) = self.opens.remove(&channel) {
                    let _ = tx.send(Ok(()));
                }
            }
            E::OpenFailed {
                channel,
                reason,
                text,
            } => {
                self.slots.remove(&channel);
                if let Some(tx) = self.opens.remove(&channel) {
                    let _ = tx.send(Err(OpenError { reason, text }));
                }
            }
            E::RequestReply { channel, success } => {
                if let Some(tx) = self
                    .slots
                    .get_mut(&channel)
                    .and_then(|s| s.replies.pop_front())
                {
                    let _ = tx.send(success);
                }
            }
            E::GlobalReply { success, port } => {
                if let Some(tx) = self.globals.pop_front() {
                    let _ = tx.send(if success {
                        GlobalAnswer::Success(port)
                    } else {
                        GlobalAnswer::Failure
                    });
                }
            }
            E::Request {
                channel,
                request,
                want_reply,
            } => match self.slots.get_mut(&channel) {
                Some(slot) if !slot.dropped && slot.requests < MAX_QUEUED_REQUESTS => {
                    slot.requests = slot.requests.saturating_add(1);
                    slot.recv.push_back(Item::Request(request, want_reply));
                    if let Some(w) = slot.reader.take() {
                        w.wake();
                    }
                }
                _ => {
                    if want_reply {
                        let _ = self.session.connection().reply(channel, false);
                    }
                }
            },
            // Handled by the driver with the handler.
            E::Open { .. } | E::Global { .. } => {}
        }
    }
}
