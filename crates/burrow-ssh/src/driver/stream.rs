//! A channel as the application holds it: an [`Offer`] to accept or reject, then a [`Channel`]
//! that is an `AsyncRead + AsyncWrite` stream whose reads give window back as they take bytes.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite, ReadBuf};

use super::*;

pub(super) struct OpenGuard {
    pub(super) inner: Option<Arc<Inner>>,
    pub(super) id: ChannelId,
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
    pub(super) inner: Option<Arc<Inner>>,
    pub(super) id: ChannelId,
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
    pub(super) inner: Arc<Inner>,
    pub(super) id: ChannelId,
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

    /// Reads the peer's extended data (a remote command's stderr) as data, in the order it
    /// came, from now on; without it, extended data is dropped.
    pub fn merge_stderr(&self) {
        if let Some(slot) = self.inner.lock().slots.get_mut(&self.id) {
            slot.merge_stderr = true;
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

    /// The message of an `exit-signal` the peer sent on this channel, read past (reading the
    /// channel as a byte stream) or still queued, if it sent one.
    pub fn exit_signal(&self) -> Option<String> {
        let st = self.inner.lock();
        let slot = st.slots.get(&self.id)?;
        slot.signal.clone().or_else(|| {
            slot.recv.iter().find_map(|item| match item {
                Item::Request(Request::ExitSignal { message, .. }, _) => Some(message.clone()),
                _ => None,
            })
        })
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
        let State {
            session,
            slots,
            views,
            ..
        } = &mut *st;
        let Some(slot) = slots.get_mut(&self.id) else {
            return Poll::Ready(None);
        };
        let mut refused = false;
        let mut msg = None;
        while let Some(item) = State::pop_item(views, slot) {
            let head = std::mem::take(&mut slot.head);
            let data = match item {
                // Refused in place (the queue was full), answered in its turn: every answer
                // leaves in the order its request came.
                Item::Refused => {
                    let _ = session.connection().reply(self.id, false);
                    refused = true;
                    continue;
                }
                Item::Request(request, want_reply) => {
                    slot.requests = slot.requests.saturating_sub(1);
                    msg = Some(ChannelMsg::Request {
                        request,
                        want_reply,
                    });
                    break;
                }
                Item::View(d) | Item::Lent(d) => d.get(head..).unwrap_or_default().to_vec(),
                Item::Copy(mut d) if head > 0 => d.split_off(head.min(d.len())),
                Item::Copy(d) => d,
            };
            slot.queued = slot.queued.saturating_sub(data.len());
            let _ = session.connection().consume(self.id, data.len());
            msg = Some(ChannelMsg::Data(data));
            break;
        }
        if msg.is_some() || refused {
            let wake = session.connection().has_output();
            let queue_empty = slot.recv.is_empty();
            let eof_now = queue_empty && slot.eof && !slot.eof_taken && msg.is_none();
            if eof_now {
                slot.eof_taken = true;
                msg = Some(ChannelMsg::Eof);
            }
            let closed = slot.closed;
            if msg.is_none() && !closed {
                slot.reader = Some(cx.waker().clone());
            }
            drop(st);
            if wake {
                self.inner.wake.notify_one();
            }
            return match msg {
                Some(m) => Poll::Ready(Some(m)),
                None if closed => Poll::Ready(None),
                None => Poll::Pending,
            };
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
        // Everything queued for the peer counts, the messages held during a key exchange
        // too: a peer that stalls a rekey stops the sources of its streams here.
        let queued = st.queued_now();
        if queued >= BACKLOG_HIGH {
            st.blocked.push(cx.waker().clone());
            return Poll::Pending;
        }
        let room = BACKLOG_HIGH.saturating_sub(queued);
        let buf = buf.get(..buf.len().min(room)).unwrap_or_default();
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
        let wake = st.write_through(self.inner.observer.as_deref());
        drop(st);
        if wake {
            self.inner.wake.notify_one();
        }
        Poll::Ready(Ok(n))
    }

    /// The channel's two directions as handles of their own, for moving bytes both ways at
    /// once (a splice). The reading half hands out data where it lies, in the packet it came
    /// in, instead of copying it into a buffer of the caller's; its window goes back to the
    /// peer once the caller says it is done with it (`consume`), so bytes on their way
    /// onward still count against the window.
    pub fn halves(&self) -> (ChannelReader<'_>, ChannelWriter<'_>) {
        (
            ChannelReader {
                channel: self,
                chunk: bytes::Bytes::new(),
                taken: 0,
            },
            ChannelWriter { channel: self },
        )
    }

    /// Runs `f` on the channel's slot (with the connection's session, its count of views and
    /// why it ended, if it did) under the lock, then writes what that left to send (window
    /// given back, requests refused) or wakes the driver for it. A channel whose slot is gone
    /// gets the error of a stream cut short.
    fn with_slot<R>(
        &self,
        f: impl FnOnce(&mut Session, &mut usize, &mut Slot, Option<&str>) -> R,
    ) -> io::Result<R> {
        let mut st = self.inner.lock();
        let State {
            session,
            slots,
            ended,
            views,
            ..
        } = &mut *st;
        let Some(slot) = slots.get_mut(&self.id) else {
            return Err(interrupted(ended.as_deref()));
        };
        let result = f(session, views, slot, ended.as_deref());
        let wake =
            session.connection().has_output() && st.write_through(self.inner.observer.as_deref());
        drop(st);
        if wake {
            self.inner.wake.notify_one();
        }
        Ok(result)
    }

    /// Takes `taken` bytes from the front of the channel's queue (what the caller consumed of
    /// the last chunk; their window goes back), then the data at the front from where reading
    /// got to, still queued there: empty at EOF. One lock for both.
    fn poll_peek(&self, cx: &mut Context<'_>, taken: usize) -> Poll<io::Result<bytes::Bytes>> {
        let id = self.id;
        self.with_slot(|session, views, slot, ended| {
            take_from(session, views, slot, id, taken);
            pass_over_requests(session, views, slot, id);
            // Small pieces, gathered: frozen where they lie and lent without a copy.
            if let Some(item) = slot.recv.front_mut()
                && let Item::Copy(piece) = item
            {
                *item = Item::Lent(bytes::Bytes::from(std::mem::take(piece)));
            }
            let head = slot.head;
            let chunk = match slot.recv.front() {
                Some(Item::View(b) | Item::Lent(b)) => Some(b.slice(head.min(b.len())..)),
                _ => None,
            };
            match chunk {
                Some(chunk) => Poll::Ready(Ok(chunk)),
                None if slot.eof => Poll::Ready(Ok(bytes::Bytes::new())),
                None if slot.closed => Poll::Ready(Err(interrupted(ended))),
                None => {
                    slot.reader = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .unwrap_or_else(|e| Poll::Ready(Err(e)))
    }

    /// Takes `n` bytes from the front of the channel's queue and gives their window back.
    fn take(&self, n: usize) {
        let id = self.id;
        let _ = self.with_slot(|session, views, slot, _| take_from(session, views, slot, id, n));
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
        let id = self.id;
        self.with_slot(|session, views, slot, ended| {
            let mut taken = 0usize;
            while buf.remaining() > 0 {
                pass_over_requests(session, views, slot, id);
                let Some(data) = slot.recv.front().and_then(Item::data) else {
                    break;
                };
                let rest = data.get(slot.head..).unwrap_or_default();
                let n = rest.len().min(buf.remaining());
                buf.put_slice(rest.get(..n).unwrap_or_default());
                taken = taken.saturating_add(advance(views, slot, n));
            }
            if taken > 0 {
                let _ = session.connection().consume(id, taken);
            }
            if taken > 0 || slot.eof {
                Poll::Ready(Ok(()))
            } else if slot.closed {
                // Closed without EOF: the other side did not finish its stream.
                Poll::Ready(Err(interrupted(ended)))
            } else {
                slot.reader = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .unwrap_or_else(|e| Poll::Ready(Err(e)))
    }
}

/// Takes up to `n` bytes of data from the front of channel `id`'s queue and gives their window
/// back to the peer.
fn take_from(session: &mut Session, views: &mut usize, slot: &mut Slot, id: ChannelId, n: usize) {
    let taken = advance(views, slot, n);
    if taken > 0 {
        let _ = session.connection().consume(id, taken);
    }
}

/// Takes up to `n` bytes of data from the front of a channel's queue (what a reader used):
/// how many it took. The queue's memory goes back with the connection's when it is idle.
fn advance(views: &mut usize, slot: &mut Slot, n: usize) -> usize {
    let mut left = n;
    while left > 0 {
        let Some(len) = slot.recv.front().and_then(Item::data).map(<[u8]>::len) else {
            break;
        };
        let step = len.saturating_sub(slot.head).min(left);
        slot.head = slot.head.saturating_add(step);
        slot.queued = slot.queued.saturating_sub(step);
        left = left.saturating_sub(step);
        if slot.head >= len {
            State::pop_item(views, slot);
            slot.head = 0;
        }
    }
    n.saturating_sub(left)
}

/// Passes over what a byte stream does not take at the front of a channel's queue: requests
/// (refused where they wait for an answer; an `exit-signal`'s message is kept for the error of
/// a cut stream) and data already read to its end.
fn pass_over_requests(session: &mut Session, views: &mut usize, slot: &mut Slot, id: ChannelId) {
    loop {
        match slot.recv.front() {
            Some(Item::Request(request, want_reply)) => {
                if *want_reply {
                    let _ = session.connection().reply(id, false);
                }
                if let Request::ExitSignal { message, .. } = request {
                    slot.signal = Some(message.clone());
                }
                slot.requests = slot.requests.saturating_sub(1);
            }
            Some(Item::Refused) => {
                let _ = session.connection().reply(id, false);
            }
            Some(item) if item.data().is_some_and(|d| slot.head >= d.len()) => slot.head = 0,
            _ => return,
        }
        State::pop_item(views, slot);
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

/// The reading half of [`Channel::halves`]: the channel's data without a copy.
pub struct ChannelReader<'a> {
    channel: &'a Channel,
    /// What `poll_fill_buf` handed out and `consume` has not yet taken (still at the front of
    /// the channel's queue).
    chunk: bytes::Bytes,
    /// Bytes consumed and still at the front of the queue: taken with the next chunk.
    taken: usize,
}

impl AsyncBufRead for ChannelReader<'_> {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let this = self.get_mut();
        if this.chunk.is_empty() {
            let taken = std::mem::take(&mut this.taken);
            match this.channel.poll_peek(cx, taken) {
                Poll::Ready(Ok(chunk)) => this.chunk = chunk,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(&this.chunk))
    }

    /// Counts what was consumed; the queue gives it up (and its window goes back) when the
    /// next chunk is asked for, under the same lock, or when the reader is dropped.
    fn consume(self: Pin<&mut Self>, amt: usize) {
        let this = self.get_mut();
        let amt = amt.min(this.chunk.len());
        bytes::Buf::advance(&mut this.chunk, amt);
        this.taken = this.taken.saturating_add(amt);
    }
}

impl Drop for ChannelReader<'_> {
    fn drop(&mut self) {
        if self.taken > 0 {
            self.channel.take(self.taken);
        }
    }
}

impl AsyncRead for ChannelReader<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let data = match self.as_mut().poll_fill_buf(cx) {
            Poll::Ready(Ok(data)) => data,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        };
        let n = data.len().min(buf.remaining());
        buf.put_slice(data.get(..n).unwrap_or_default());
        self.consume(n);
        Poll::Ready(Ok(()))
    }
}

/// The writing half of [`Channel::halves`].
pub struct ChannelWriter<'a> {
    channel: &'a Channel,
}

impl AsyncWrite for ChannelWriter<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.channel.poll_send(cx, None, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.channel.eof();
        Poll::Ready(Ok(()))
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        let mut st = self.inner.lock();
        let closed = st.slots.get(&self.id).is_none_or(|s| s.closed);
        if closed {
            let State { slots, views, .. } = &mut *st;
            if let Some(mut slot) = slots.remove(&self.id) {
                State::clear_items(views, &mut slot);
            }
        } else {
            let State { slots, views, .. } = &mut *st;
            if let Some(slot) = slots.get_mut(&self.id) {
                slot.dropped = true;
                State::clear_items(views, slot);
            }
            let _ = st.session.connection().close(self.id);
        }
        drop(st);
        self.inner.wake.notify_one();
    }
}
