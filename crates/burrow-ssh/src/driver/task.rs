//! The task that runs one connection: moves bytes between the socket and the session, hands
//! questions and requests to the [`Handler`], and routes channel data to the channels' queues.

use std::io;
use std::time::Instant;

use tokio::net::TcpStream;

use crate::channel;
use crate::session::Event;

use super::*;

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
    let socket = Arc::new(socket);
    let inner = Arc::new(Inner {
        state: Mutex::new(State {
            session,
            slots: HashMap::new(),
            opens: HashMap::new(),
            globals: VecDeque::new(),
            socket: Some(socket.clone()),
            out: VecDeque::new(),
            out_at: 0,
            out_len: 0,
            blocked: Vec::new(),
            ended: None,
            peer_disconnect: None,
            authenticated: None,
            peak_queued: 0,
            views: 0,
        }),
        wake: Notify::new(),
        changed: Notify::new(),
        observer,
    });
    let handle = Handle {
        inner: inner.clone(),
    };
    let driver = Driver {
        inner,
        socket,
        handler,
        stalled_since: None,
    };
    (handle, driver.run())
}

/// Longest wait for the peer to close after our last packet.
const LINGER: std::time::Duration = std::time::Duration::from_secs(1);
/// How long a connection moves nothing before its buffers and queues go back: long enough that
/// a conversation of small packets keeps them, short enough that an idle device costs no more
/// than its state.
const IDLE_RELEASE: std::time::Duration = std::time::Duration::from_millis(50);

struct Driver<H> {
    inner: Arc<Inner>,
    /// Shared with the channel writers that write through (see `State::write_through`); the
    /// driver alone reads it and waits for it.
    socket: Arc<TcpStream>,
    handler: H,
    /// Since when reading has been stopped because the peer takes nothing.
    stalled_since: Option<Instant>,
}

/// Where the queue toward the peer stands against its cap.
struct Pressure {
    /// Everything queued for the peer.
    queued: usize,
    /// The cap that applies now (lower before authentication).
    cap: usize,
    stall_timeout: std::time::Duration,
    /// Packets wait for the socket.
    pending: bool,
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

    /// Passes the time (`now`) to the session, moves its output into the queue for the
    /// socket and takes its events.
    fn collect(&mut self, now: Instant) -> (Vec<Event>, Option<Instant>, Pressure) {
        let mut st = self.inner.lock();
        // Every wake-up tells the session the time: a key exchange's deadline runs from when
        // it started.
        st.session.handle_time(now);
        st.take_transmit();
        let queued = st.queued_now();
        if queued < BACKLOG_HIGH / 2 {
            for w in st.blocked.drain(..) {
                w.wake();
            }
        }
        let limits = *st.session.connection().limits();
        let cap = if st.session.authenticated() {
            limits.max_queued
        } else {
            limits.max_queued.min(PRE_AUTH_MAX_QUEUED)
        };
        let events = std::iter::from_fn(|| st.session.poll_event()).collect();
        let pressure = Pressure {
            queued,
            cap,
            stall_timeout: limits.stall_timeout,
            pending: !st.out.is_empty(),
        };
        (events, st.session.poll_timeout(), pressure)
    }

    async fn run_inner(&mut self) -> Result<(), Error> {
        let mut failure: Option<String> = None;
        // One wake-up registration and one timer for the connection's life, not one per turn
        // of the loop: each costs a registration under a lock when made and another when
        // dropped, on every packet.
        let inner = self.inner.clone();
        let mut woken = std::pin::pin!(inner.wake.notified());
        let mut timer = std::pin::pin!(tokio::time::sleep(IDLE_RELEASE));
        // The last turn that moved anything, and whether the buffers went back since.
        let mut busy_at = Instant::now();
        let mut released = false;
        loop {
            let now = Instant::now();
            // Every turn, and so every read, takes all that is queued for the peer: window
            // adjustments that did not wake the driver go out here, at the latest after the
            // peer's next bytes (see `Connection::has_output`).
            let (events, timeout, pressure) = self.collect(now);
            let had_events = !events.is_empty();
            for event in events {
                self.event(event).await;
            }
            if had_events {
                busy_at = now;
                continue;
            }
            let pending = pressure.pending;
            if let Some(why) = &failure
                && !pending
            {
                self.linger().await;
                return Err(Error(why.clone()));
            }
            // Nothing to write for a while: give the buffers and queues back. Not at once: a
            // conversation of small packets would free and allocate them for every one.
            let release_at = if pending {
                busy_at = now;
                released = false;
                None
            } else if released {
                None
            } else if now.saturating_duration_since(busy_at) >= IDLE_RELEASE {
                self.inner.lock().release_idle();
                released = true;
                None
            } else {
                busy_at.checked_add(IDLE_RELEASE)
            };
            // Past the cap, nothing more is read: a peer that sends without reading gets no
            // more answers queued. If it still takes nothing, it is cut.
            let reading = pressure.queued < pressure.cap;
            let stall_deadline = if reading {
                self.stalled_since = None;
                None
            } else {
                let since = *self.stalled_since.get_or_insert(now);
                let deadline = since.checked_add(pressure.stall_timeout);
                if deadline.is_some_and(|d| now >= d) {
                    return Err(Error(format!(
                        "the peer took nothing of the {} bytes queued for it for {} s",
                        pressure.queued,
                        pressure.stall_timeout.as_secs()
                    )));
                }
                deadline
            };
            let wake_at = [timeout, stall_deadline, release_at]
                .into_iter()
                .flatten()
                .min();
            // The timer is moved only to fire sooner. A deadline that moved later (the
            // keepalive after each packet) lets it fire early once, and the next turn sets it
            // again; every deadline is checked against the clock at the top of the loop.
            if let Some(at) = wake_at.map(tokio::time::Instant::from)
                && (timer.is_elapsed() || timer.deadline() > at)
            {
                timer.as_mut().reset(at);
            }
            tokio::select! {
                ready = std::future::poll_fn(|cx| self.socket.poll_read_ready(cx)),
                    if failure.is_none() && reading =>
                {
                    ready.map_err(|e| Error(format!("socket: {e}")))?;
                    match self.read() {
                        Ok(Ok(0)) => return Err(Error("the peer closed the connection".into())),
                        Ok(Ok(n)) => {
                            // Not `now`: that was before the wait for these bytes.
                            busy_at = Instant::now();
                            released = false;
                            if let Some(o) = &self.inner.observer {
                                o.received(n);
                            }
                        }
                        Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Ok(Err(e)) => return Err(Error(format!("socket: {e}"))),
                        Err(e) => failure = Some(e.0),
                    }
                }
                ready = std::future::poll_fn(|cx| self.socket.poll_write_ready(cx)), if pending => {
                    ready.map_err(|e| Error(format!("socket: {e}")))?;
                    let written = self.inner.lock().write_some(&self.socket);
                    match written {
                        Ok(n) => {
                            if n > 0 {
                                self.stalled_since = None;
                            }
                            if let Some(o) = &self.inner.observer {
                                o.sent(n);
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Err(Error(format!("socket: {e}"))),
                    }
                }
                _ = &mut woken => {
                    woken.set(inner.wake.notified());
                    let st = self.inner.lock();
                    if failure.is_none()
                        && let Some(why) = &st.ended
                    {
                        failure = Some(why.clone());
                    }
                }
                // The session is told the time at the top of the loop.
                _ = &mut timer, if wake_at.is_some() => {}
            }
            if failure.is_none() {
                failure = self.session_failure();
            }
        }
    }

    /// Reads what the socket has straight into the session's buffer: packets are decrypted
    /// where they land and their data handed on without a copy. A read that did not fill the
    /// room it had emptied the socket, so the socket is marked not ready: the next turn waits
    /// for the next bytes instead of asking the kernel once more only to hear "nothing".
    fn read(&mut self) -> Result<io::Result<usize>, Error> {
        // The socket is read, and what it brought decrypted, without the connection's lock: a
        // channel's reader or writer on another thread waits only for the packets to be
        // handed over, not for the kernel's copy or the cipher.
        let mut lease = self
            .inner
            .lock()
            .session
            .take_read_buffer()
            .map_err(|e| Error(e.0))?;
        let buf = lease.buffer();
        buf.reserve(READ_SIZE);
        let room = buf.capacity().saturating_sub(buf.len());
        let socket = &self.socket;
        let mut got = None;
        let outcome = socket.try_io(tokio::io::Interest::READABLE, || {
            let n = socket.try_read_buf(&mut *buf)?;
            got = Some(n);
            if n > 0 && n < room {
                Err(io::ErrorKind::WouldBlock.into())
            } else {
                Ok(n)
            }
        });
        let got = got.map_or(outcome, Ok);
        if got.is_ok() {
            lease.open_packets();
        }
        self.inner
            .lock()
            .session
            .give_read_buffer(lease, got.is_ok())
            .map_err(|e| Error(e.0))?;
        Ok(got)
    }

    /// Once the last packet (a DISCONNECT) is written: ends our direction and reads what the
    /// peer still sends until it closes, for a moment. Closing a socket with unread bytes makes
    /// the kernel answer with a reset, which can destroy the DISCONNECT before the peer reads
    /// it, and then the peer never learns why (OpenSSH prints "Broken pipe" instead of the
    /// reason).
    async fn linger(&mut self) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // Nobody writes any more: the writers' share of the socket goes, and the driver has it
        // alone.
        self.inner.lock().socket = None;
        let Some(socket) = Arc::get_mut(&mut self.socket) else {
            return;
        };
        let _ = socket.shutdown().await;
        // On the heap: a buffer held across this await would be part of every connection's
        // future, lingering or not (4 KiB per idle device).
        let mut buf = vec![0u8; 4096];
        let drain = async {
            while let Ok(n) = socket.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(LINGER, drain).await;
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
            Event::AuthRefused { user, why } => {
                Box::pin(self.handler.auth_refused(&user, &why)).await;
                let _ = self.inner.lock().session.decide(Decision::Reject);
            }
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
            Event::HostKeys(keys) => Box::pin(self.handler.host_keys(keys)).await,
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
            // Extended data (a remote command's stderr): read as data where the channel asked
            // for it, else taken and dropped.
            E::ExtendedData { channel, data, .. }
                if self.slots.get(&channel).is_some_and(|s| s.merge_stderr) =>
            {
                self.channel_event(E::Data { channel, data });
            }
            E::ExtendedData { channel, data, .. } => {
                let _ = self.session.connection().consume(channel, data.len());
            }
            E::Data { channel, data } => {
                match self.slots.get_mut(&channel) {
                    Some(slot) if !slot.dropped => {
                        slot.queued = slot.queued.saturating_add(data.len());
                        self.peak_queued = self.peak_queued.max(slot.queued);
                        let views = self.views.saturating_add(data.len());
                        if data.len() >= COPY_BELOW && views <= VIEW_BUDGET {
                            self.views = views;
                            slot.recv.push_back(Item::View(data));
                        } else {
                            match slot.recv.back_mut() {
                                // Gathered into what was copied last (a reader part way into
                                // it reads on from where it was).
                                Some(Item::Copy(tail))
                                    if tail.len().saturating_add(data.len()) <= COPY_PIECE =>
                                {
                                    tail.extend_from_slice(&data);
                                }
                                // Room for a few more like it: a stream of small packets
                                // gathers without growing the piece at every one.
                                _ => {
                                    let room = data.len().saturating_mul(4).min(COPY_PIECE);
                                    let mut piece = Vec::with_capacity(room);
                                    piece.extend_from_slice(&data);
                                    slot.recv.push_back(Item::Copy(piece));
                                }
                            }
                        }
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
                // Too many waiting: refused, but answered in its turn (earlier requests may
                // still await their owner's answer). The connection layer bounds how many
                // answers may be owed, so these markers are bounded too.
                Some(slot) if !slot.dropped && want_reply => {
                    slot.recv.push_back(Item::Refused);
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
            // Handled by the driver with the handler, or by the session.
            E::Open { .. } | E::Global { .. } | E::HostKeys(_) | E::HostKeysProof { .. } => {}
        }
    }
}
