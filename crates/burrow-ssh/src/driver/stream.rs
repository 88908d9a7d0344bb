//! A channel as the application holds it: an [`Offer`] to accept or reject, then a [`Channel`]
//! that is an `AsyncRead + AsyncWrite` stream whose reads give window back as they take bytes.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

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
