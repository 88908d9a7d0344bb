//! Copies bytes both ways between SSH channels and TCP streams, honouring half-close (EOF).
//!
//! russh refills a channel's receive window when data *arrives*, not when it is consumed, and
//! blocks the whole session loop when a channel's message queue is full. So a channel is always
//! drained at once into a bounded per-stream queue here; when that queue overflows (the other
//! side does not read), the stream is closed with [`SpliceError::Overflow`] instead of stalling
//! every other channel and the keepalives of the same connection. TCP sources need no such
//! policy: they simply stop being read and TCP pushes back.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use russh::{Channel, ChannelId, ChannelMsg, ChannelReadHalf, ChannelWriteHalf};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;

/// Messages (each at most one SSH packet, 32 KiB) buffered per direction of a stream.
pub const DEFAULT_STREAM_QUEUE: usize = 64;

/// Size of one read from a TCP stream.
const TCP_READ_CHUNK: usize = 32 * 1024;

/// Why a stream ended abnormally.
#[derive(Debug, thiserror::Error)]
pub enum SpliceError {
    /// The reading side did not keep up and the bounded queue filled.
    #[error("the receiving side did not read {0} queued messages; stream closed")]
    Overflow(usize),
    /// A socket failed.
    #[error("socket error: {0}")]
    Io(#[from] std::io::Error),
    /// The SSH session of a channel went away.
    #[error("SSH channel closed: {0}")]
    Ssh(#[from] russh::Error),
}

/// Byte counts of a finished stream.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Transfer {
    /// Bytes copied from the first end to the second.
    pub a_to_b: u64,
    /// Bytes copied from the second end to the first.
    pub b_to_a: u64,
}

/// One end of a stream.
pub enum End<S: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static> {
    /// An SSH channel.
    Channel(Channel<S>),
    /// A TCP connection.
    Tcp(TcpStream),
}

enum Source {
    Channel(ChannelReadHalf),
    Tcp(OwnedReadHalf),
}

enum Sink<S: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static> {
    Channel(ChannelWriteHalf<S>),
    Tcp(OwnedWriteHalf),
}

impl<S: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static> End<S> {
    fn split(self) -> (Source, Sink<S>) {
        match self {
            End::Channel(c) => {
                let (r, w) = c.split();
                (Source::Channel(r), Sink::Channel(w))
            }
            End::Tcp(t) => {
                let _ = t.set_nodelay(true);
                let (r, w) = t.into_split();
                (Source::Tcp(r), Sink::Tcp(w))
            }
        }
    }
}

impl Source {
    /// Next chunk; `None` at end of stream.
    async fn next(&mut self) -> Result<Option<Bytes>, SpliceError> {
        match self {
            Source::Channel(r) => loop {
                match r.wait().await {
                    Some(ChannelMsg::Data { data }) => return Ok(Some(data)),
                    Some(ChannelMsg::Eof | ChannelMsg::Close) | None => return Ok(None),
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

    fn must_drain(&self) -> bool {
        matches!(self, Source::Channel(_))
    }
}

impl<S: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static> Sink<S> {
    async fn write(&mut self, data: Bytes) -> Result<(), SpliceError> {
        match self {
            Sink::Channel(w) => w.data_bytes(data).await?,
            Sink::Tcp(w) => w.write_all(&data).await?,
        }
        Ok(())
    }

    async fn eof(&mut self) {
        match self {
            Sink::Channel(w) => {
                let _ = w.eof().await;
            }
            Sink::Tcp(w) => {
                let _ = w.shutdown().await;
            }
        }
    }

    async fn close(&mut self) {
        if let Sink::Channel(w) = self {
            let _ = w.close().await;
        }
    }
}

/// Copies one direction until end of stream, then sends EOF on the sink.
async fn pipe<S>(
    mut src: Source,
    sink: &mut Sink<S>,
    queue: usize,
    copied: &AtomicU64,
) -> Result<(), SpliceError>
where
    S: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static,
{
    let (tx, mut rx) = mpsc::channel::<Bytes>(queue.max(1));
    let reader = async move {
        while let Some(chunk) = src.next().await? {
            if src.must_drain() {
                tx.try_send(chunk).map_err(|e| match e {
                    mpsc::error::TrySendError::Full(_) => SpliceError::Overflow(queue),
                    mpsc::error::TrySendError::Closed(_) => {
                        SpliceError::Io(std::io::ErrorKind::BrokenPipe.into())
                    }
                })?;
            } else if tx.send(chunk).await.is_err() {
                break;
            }
        }
        Ok::<(), SpliceError>(())
    };
    let writer = async {
        while let Some(chunk) = rx.recv().await {
            let len = chunk.len() as u64;
            sink.write(chunk).await?;
            copied.fetch_add(len, Ordering::Relaxed);
        }
        sink.eof().await;
        Ok::<(), SpliceError>(())
    };
    tokio::try_join!(reader, writer)?;
    Ok(())
}

/// Copies both ways between `a` and `b` until both directions reach end of stream or either
/// fails, then closes both. `queue` bounds the messages buffered per direction.
pub async fn splice<SA, SB>(
    a: End<SA>,
    b: End<SB>,
    queue: usize,
) -> (Transfer, Result<(), SpliceError>)
where
    SA: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static,
    SB: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static,
{
    let (a_src, mut a_sink) = a.split();
    let (b_src, mut b_sink) = b.split();
    let a_count = AtomicU64::new(0);
    let b_count = AtomicU64::new(0);
    let result = tokio::try_join!(
        pipe(a_src, &mut b_sink, queue, &a_count),
        pipe(b_src, &mut a_sink, queue, &b_count)
    )
    .map(|_| ());
    a_sink.close().await;
    b_sink.close().await;
    let transfer = Transfer {
        a_to_b: a_count.into_inner(),
        b_to_a: b_count.into_inner(),
    };
    (transfer, result)
}
