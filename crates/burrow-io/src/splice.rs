//! Copies bytes both ways between SSH channels and TCP streams, honouring half-close (EOF).
//!
//! russh refills a channel's receive window when data *arrives*, not when it is consumed, and
//! stops the whole connection when one channel's message queue is full. So how a channel is read
//! depends on what else shares its connection:
//!
//! - [`End::Channel`]: a channel on an operator's connection, which usually carries this stream
//!   alone (`ssh -W`/`-J`). It is drained into a queue of up to [`PUSHBACK_QUEUE_BYTES`], so
//!   short bursts never hold up the connection's other channels (an `ssh -L` carrying a control
//!   and a data stream, as iperf3 or a browser use); past that, reading stops and the connection
//!   pushes back over TCP. Nothing is dropped.
//! - [`End::Shared`]: the connection carries many streams (a device session). The channel is
//!   drained at once into a byte-bounded queue so that one slow stream never stalls the others or
//!   the keepalives. With [`Flow::Credit`] (both ends are burrow) the sender never has more than
//!   [`CREDIT_WINDOW`] bytes in flight: the receiver returns credit for what it has delivered, in
//!   extended-data messages of type [`CREDIT_EXT`], so the queue cannot overflow and a slow reader
//!   slows its own stream only. With [`Flow::Capped`] (a stock `ssh -R` peer, which knows no
//!   credit) the queue holds up to [`CAPPED_QUEUE_BYTES`]; past that, reading stops (which holds
//!   the whole connection back, russh being what it is) for as long as the receiver keeps taking
//!   data. A receiver that takes nothing at all for the stall time closes the stream with
//!   [`SpliceError::Stalled`], so one dead reader cannot hold the others back for ever; a slow
//!   reader that makes progress is never cut.
//! - [`End::Tcp`]: a socket; TCP pushes back.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use russh::{Channel, ChannelId, ChannelMsg, ChannelReadHalf, ChannelWriteHalf};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Notify, mpsc};

/// Extended-data type code of a credit message (cumulative bytes delivered, u64 big-endian).
pub const CREDIT_EXT: u32 = 0x6275_7272;
/// Bytes a credit-controlled sender may have in flight per stream.
pub const CREDIT_WINDOW: u64 = 2 << 20;
/// Delivered bytes after which the receiver returns credit.
const CREDIT_STEP: u64 = 256 << 10;
/// Queue of an operator's channel before reading it stops (and its connection pushes back).
pub const PUSHBACK_QUEUE_BYTES: u64 = 8 << 20;
/// Queue limit of a shared channel whose peer knows no credit.
pub const CAPPED_QUEUE_BYTES: u64 = 4 << 20;
/// Default time a receiver of a [`Flow::Capped`] stream may take nothing before it is cut.
pub const DEFAULT_STALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);
/// Size of one read from a TCP stream.
const TCP_READ_CHUNK: usize = 32 * 1024;

/// Why a stream ended abnormally.
#[derive(Debug, thiserror::Error)]
pub enum SpliceError {
    /// The reading side did not keep up and the bounded queue filled.
    #[error("the receiving side did not read {0} queued bytes; stream closed")]
    Overflow(u64),
    /// The reading side took nothing at all for this long while data waited.
    #[error(
        "the receiving side took nothing for {0:?} while {1} bytes waited; stream cut, the transfer is incomplete"
    )]
    Stalled(std::time::Duration, u64),
    /// A socket failed.
    #[error("socket error: {0}")]
    Io(#[from] std::io::Error),
    /// The SSH session of a channel went away.
    #[error("SSH channel closed: {0}")]
    Ssh(#[from] russh::Error),
    /// One side went away without ending its stream (no EOF): a lost session, a reset.
    #[error("interrupted: {0}")]
    Interrupted(&'static str),
}

impl SpliceError {
    /// True when the stream was cut short (rather than refused for overflowing).
    pub fn is_interruption(&self) -> bool {
        !matches!(self, SpliceError::Overflow(_) | SpliceError::Stalled(..))
    }
}

/// Byte counts of a finished stream.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Transfer {
    /// Bytes delivered from the first end to the second.
    pub a_to_b: u64,
    /// Bytes delivered from the second end to the first.
    pub b_to_a: u64,
}

/// Flow control on a channel whose connection carries other streams too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// The peer is burrow: in-band credit bounds what is in flight.
    Credit,
    /// The peer knows no credit: a bounded queue, then pushback while the receiver makes
    /// progress; a receiver that takes nothing for this long gets its stream cut.
    Capped(std::time::Duration),
}

/// What a full queue does.
#[derive(Debug, Clone, Copy)]
enum WhenFull {
    /// Stop reading until there is room (the connection pushes back).
    Wait,
    /// Stop reading while the receiver makes progress; cut after this long without any.
    WaitWhileProgressing(std::time::Duration),
    /// Cannot happen with credit; close the stream if it does.
    Fail,
}

/// One end of a stream.
pub enum End<S: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static> {
    /// A channel alone on its connection (or whose siblings may wait with it).
    Channel(Channel<S>),
    /// A channel on a connection shared with other streams.
    Shared(Channel<S>, Flow),
    /// A TCP connection.
    Tcp(TcpStream),
}

/// Credit state of one shared channel, seen by both directions of the stream.
#[derive(Default)]
struct Credit {
    /// Bytes the peer has confirmed delivering.
    acked: AtomicU64,
    /// Our writes on this channel are over (EOF sent): no more credit is needed.
    writes_done: std::sync::atomic::AtomicBool,
    changed: Notify,
}

impl Credit {
    /// Takes a credit message (cumulative bytes delivered, u64 big-endian); others are ignored.
    fn take(&self, data: &[u8]) {
        if let Ok(bytes) = <[u8; 8]>::try_from(data) {
            self.acked
                .fetch_max(u64::from_be_bytes(bytes), Ordering::Relaxed);
            self.changed.notify_waiters();
        }
    }
}

enum Source {
    Channel {
        read: ChannelReadHalf,
        /// Drain into a queue of at most this many bytes.
        queue_limit: u64,
        /// What to do past the limit.
        when_full: WhenFull,
        /// Credit the peer grants us for our writes on this channel.
        credit: Option<Arc<Credit>>,
    },
    Tcp(OwnedReadHalf),
}

enum SinkKind<S: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static> {
    Channel(Arc<ChannelWriteHalf<S>>),
    Tcp(OwnedWriteHalf),
}

struct Sink<S: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static> {
    kind: SinkKind<S>,
    /// Credit-controlled: wait for the peer's credit before sending.
    credit: Option<Arc<Credit>>,
    sent: u64,
}

/// Where a pipe returns credit for what it delivered: the write half of its source channel.
struct CreditReturn<S: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static> {
    channel: Arc<ChannelWriteHalf<S>>,
    last: u64,
}

impl<S: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static> End<S> {
    fn split(self) -> (Source, Sink<S>, Option<CreditReturn<S>>) {
        match self {
            End::Channel(c) => {
                let (read, write) = c.split();
                let source = Source::Channel {
                    read,
                    queue_limit: PUSHBACK_QUEUE_BYTES,
                    when_full: WhenFull::Wait,
                    credit: None,
                };
                (
                    source,
                    Sink::new(SinkKind::Channel(Arc::new(write)), None),
                    None,
                )
            }
            End::Shared(c, flow) => {
                let (read, write) = c.split();
                let write = Arc::new(write);
                let (limit, when_full, credit, ret) = match flow {
                    Flow::Credit => (
                        CREDIT_WINDOW + CREDIT_STEP,
                        WhenFull::Fail,
                        Some(Arc::new(Credit::default())),
                        Some(CreditReturn {
                            channel: write.clone(),
                            last: 0,
                        }),
                    ),
                    Flow::Capped(stall) => (
                        CAPPED_QUEUE_BYTES,
                        WhenFull::WaitWhileProgressing(stall),
                        None,
                        None,
                    ),
                };
                let source = Source::Channel {
                    read,
                    queue_limit: limit,
                    when_full,
                    credit: credit.clone(),
                };
                (source, Sink::new(SinkKind::Channel(write), credit), ret)
            }
            End::Tcp(t) => {
                let _ = t.set_nodelay(true);
                let (r, w) = t.into_split();
                (Source::Tcp(r), Sink::new(SinkKind::Tcp(w), None), None)
            }
        }
    }
}

impl Source {
    /// Next chunk of data; `None` at end of stream. Credit messages are consumed here.
    async fn next(&mut self) -> Result<Option<Bytes>, SpliceError> {
        match self {
            Source::Channel { read, credit, .. } => loop {
                match read.wait().await {
                    Some(ChannelMsg::Data { data }) => return Ok(Some(data)),
                    Some(ChannelMsg::ExtendedData { data, ext }) if ext == CREDIT_EXT => {
                        if let Some(credit) = credit.as_ref() {
                            credit.take(&data);
                        }
                    }
                    Some(ChannelMsg::Eof) => return Ok(None),
                    // Without EOF first, the other side did not finish: the whole stream ends,
                    // or the other direction would wait on a peer that is gone.
                    Some(ChannelMsg::Close) => {
                        return Err(SpliceError::Interrupted(
                            "the channel was closed before its end of stream",
                        ));
                    }
                    None => return Err(SpliceError::Interrupted("the SSH session ended")),
                    Some(_) => continue,
                }
            },
            Source::Tcp(r) => {
                let mut buf = BytesMut::with_capacity(TCP_READ_CHUNK);
                let n = r.read_buf(&mut buf).await?;
                Ok((n > 0).then(|| buf.freeze()))
            }
        }
    }

    /// After the peer's EOF, credit for our own writes on this channel still arrives on it:
    /// keep reading credit until those writes are over (or the channel closes), or a stream
    /// half-closed this way would stall the other way once a window is in flight.
    async fn drain_credit_after_eof(&mut self) {
        let Source::Channel {
            read,
            credit: Some(credit),
            ..
        } = self
        else {
            return;
        };
        loop {
            let changed = credit.changed.notified();
            if credit.writes_done.load(Ordering::Relaxed) {
                return;
            }
            tokio::select! {
                msg = read.wait() => match msg {
                    Some(ChannelMsg::ExtendedData { data, ext }) if ext == CREDIT_EXT => {
                        credit.take(&data);
                    }
                    Some(ChannelMsg::Close) | None => return,
                    Some(_) => {}
                },
                () = changed => {}
            }
        }
    }

    /// The queue limit, and what to do when it is reached.
    fn queue_limit(&self) -> Option<(u64, WhenFull)> {
        match self {
            Source::Channel {
                queue_limit,
                when_full,
                ..
            } => Some((*queue_limit, *when_full)),
            Source::Tcp(_) => None,
        }
    }
}

impl<S: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static> Sink<S> {
    fn new(kind: SinkKind<S>, credit: Option<Arc<Credit>>) -> Self {
        Sink {
            kind,
            credit,
            sent: 0,
        }
    }

    async fn write(&mut self, data: Bytes) -> Result<(), SpliceError> {
        let len = data.len() as u64;
        if let Some(credit) = &self.credit {
            // Wait until the peer has delivered enough that this chunk fits in the window.
            loop {
                let changed = credit.changed.notified();
                let in_flight = self.sent - credit.acked.load(Ordering::Relaxed).min(self.sent);
                if in_flight == 0 || in_flight + len <= CREDIT_WINDOW {
                    break;
                }
                changed.await;
            }
        }
        match &mut self.kind {
            SinkKind::Channel(w) => w.data_bytes(data).await?,
            SinkKind::Tcp(w) => w.write_all(&data).await?,
        }
        self.sent += len;
        Ok(())
    }

    async fn eof(&mut self) {
        if let Some(credit) = &self.credit {
            credit.writes_done.store(true, Ordering::Relaxed);
            credit.changed.notify_waiters();
        }
        match &mut self.kind {
            SinkKind::Channel(w) => {
                let _ = w.eof().await;
            }
            SinkKind::Tcp(w) => {
                let _ = w.shutdown().await;
            }
        }
    }

    async fn close(&self) {
        if let SinkKind::Channel(w) = &self.kind {
            let _ = w.close().await;
        }
    }
}

impl<S: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static> CreditReturn<S> {
    /// Tells the peer how much of what it sent has been delivered, every [`CREDIT_STEP`] bytes.
    /// (The sender's window is larger than a step plus a chunk, so it never waits for a credit
    /// that is not coming.)
    async fn delivered(&mut self, total: u64) {
        if total - self.last >= CREDIT_STEP {
            self.last = total;
            let _ = self
                .channel
                .extended_data_bytes(CREDIT_EXT, Bytes::copy_from_slice(&total.to_be_bytes()))
                .await;
        }
    }
}

/// Copies one direction until end of stream, then sends EOF on the sink.
async fn pipe<S, T>(
    mut src: Source,
    sink: &mut Sink<S>,
    mut credit_return: Option<CreditReturn<T>>,
    delivered: &AtomicU64,
) -> Result<(), SpliceError>
where
    S: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static,
    T: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static,
{
    let Some((limit, when_full)) = src.queue_limit() else {
        // Backpressure source: read only as fast as the sink takes it.
        while let Some(chunk) = src.next().await? {
            let len = chunk.len() as u64;
            sink.write(chunk).await?;
            delivered.fetch_add(len, Ordering::Relaxed);
        }
        sink.eof().await;
        return Ok(());
    };
    // A channel: drain it into our own queue (russh's would stall the connection), bounded.
    let queued = AtomicU64::new(0);
    let drained = Notify::new();
    let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
    let reader = async {
        while let Some(chunk) = src.next().await? {
            let len = chunk.len() as u64;
            loop {
                let room = drained.notified();
                if queued.load(Ordering::Relaxed) + len <= limit
                    || queued.load(Ordering::Relaxed) == 0
                {
                    break;
                }
                match when_full {
                    WhenFull::Wait => room.await,
                    WhenFull::Fail => return Err(SpliceError::Overflow(limit)),
                    // Any chunk delivered is progress and restarts the clock.
                    WhenFull::WaitWhileProgressing(stall) => {
                        if tokio::time::timeout(stall, room).await.is_err() {
                            return Err(SpliceError::Stalled(
                                stall,
                                queued.load(Ordering::Relaxed),
                            ));
                        }
                    }
                }
            }
            queued.fetch_add(len, Ordering::Relaxed);
            if tx.send(chunk).is_err() {
                break;
            }
        }
        drop(tx);
        src.drain_credit_after_eof().await;
        Ok::<(), SpliceError>(())
    };
    let writer = async {
        while let Some(chunk) = rx.recv().await {
            let len = chunk.len() as u64;
            sink.write(chunk).await?;
            queued.fetch_sub(len, Ordering::Relaxed);
            drained.notify_waiters();
            let total = delivered.fetch_add(len, Ordering::Relaxed) + len;
            if let Some(ret) = credit_return.as_mut() {
                ret.delivered(total).await;
            }
        }
        sink.eof().await;
        Ok::<(), SpliceError>(())
    };
    tokio::try_join!(reader, writer)?;
    Ok(())
}

/// Copies both ways between `a` and `b` until both directions reach end of stream or either
/// fails, then closes both.
pub async fn splice<SA, SB>(a: End<SA>, b: End<SB>) -> (Transfer, Result<(), SpliceError>)
where
    SA: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static,
    SB: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static,
{
    splice_until(a, b, std::future::pending()).await
}

/// [`splice`], but `stop` finishing ends the stream early (access revoked): both ends are
/// closed and the result says so.
pub async fn splice_until<SA, SB>(
    a: End<SA>,
    b: End<SB>,
    stop: impl std::future::Future<Output = ()>,
) -> (Transfer, Result<(), SpliceError>)
where
    SA: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static,
    SB: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static,
{
    let (a_src, mut a_sink, a_ret) = a.split();
    let (b_src, mut b_sink, b_ret) = b.split();
    let a_to_b = AtomicU64::new(0);
    let b_to_a = AtomicU64::new(0);
    let result = tokio::select! {
        r = async {
            tokio::try_join!(
                pipe(a_src, &mut b_sink, a_ret, &a_to_b),
                pipe(b_src, &mut a_sink, b_ret, &b_to_a)
            )
        } => r.map(|_| ()),
        () = stop => Err(SpliceError::Interrupted("closed by the relay: access was revoked")),
    };
    a_sink.close().await;
    b_sink.close().await;
    let transfer = Transfer {
        a_to_b: a_to_b.into_inner(),
        b_to_a: b_to_a.into_inner(),
    };
    (transfer, result)
}
