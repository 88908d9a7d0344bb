//! Copies bytes both ways between two byte streams (SSH channels, TCP sockets), honouring
//! half-close: when one side ends its direction (EOF), the other side's write half is shut
//! down and the other direction goes on until it ends too.
//!
//! Flow control is the streams' own. An SSH channel of burrow-ssh gives window back only as
//! its bytes are read here, so a reader that stops holds back its own stream and nothing else;
//! TCP pushes back by itself. What is in flight per direction is one copy buffer, or none for
//! a stream that lends its bytes where they lie (an SSH channel's reading half).
//!
//! A stream that ends without EOF (a channel closed mid-stream, a session that went away, a
//! reset), or that no longer takes bytes, ends the whole splice: the other direction would
//! otherwise wait on a peer that is gone. The error says which end went, how, and how far
//! each direction had got, so that the caller can tell an end someone chose (a reader that
//! closed early) from a fault (a connection lost).

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::Poll;

use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, ReadHalf,
    WriteHalf,
};

/// Size of one copy buffer (one per direction of a running stream).
const CHUNK: usize = 32 * 1024;

/// One of the two ends of a splice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The first stream given.
    A,
    /// The second stream given.
    B,
}

impl End {
    /// The other end.
    pub fn other(self) -> End {
        match self {
            End::A => End::B,
            End::B => End::A,
        }
    }
}

/// How an end went away before the stream was complete.
#[derive(Debug)]
pub struct Gone {
    /// The end that went away.
    pub end: End,
    /// What its read or write said.
    pub error: std::io::Error,
    /// Whether it went while writing to it (it no longer takes bytes), rather than while reading
    /// from it (its stream ended without EOF).
    pub on_write: bool,
    /// Whether the other end's stream had reached it whole, EOF included, before it went.
    pub got_all: bool,
    /// Whether its own stream had ended with EOF before it went.
    pub sent_all: bool,
}

/// Why a stream ended before both directions reached their end.
#[derive(Debug, thiserror::Error)]
pub enum SpliceError {
    /// One end went away.
    #[error("{}", describe(.0))]
    Gone(Gone),
    /// The caller's `stop` finished (access revoked, the relay stopping): the reason.
    #[error("{0}")]
    Stopped(String),
}

fn describe(g: &Gone) -> String {
    let end = match g.end {
        End::A => "the first end",
        End::B => "the second end",
    };
    if g.on_write {
        format!("{end} no longer takes data: {}", g.error)
    } else {
        format!("{end} ended without EOF: {}", g.error)
    }
}

/// Bytes delivered each way so far, and whether a direction waits for its writer to take
/// bytes; readable while the stream runs (for checkpoints, and to spot a stalled reader).
#[derive(Debug, Default)]
pub struct Progress {
    a_to_b: AtomicU64,
    b_to_a: AtomicU64,
    a_to_b_waits: AtomicBool,
    b_to_a_waits: AtomicBool,
    /// Told each time bytes from the second end start waiting for the first end.
    b_to_a_stalled: tokio::sync::Notify,
}

impl Progress {
    /// Whether bytes from the second end wait for the first end to take them.
    pub fn b_to_a_waits(&self) -> bool {
        self.b_to_a_waits.load(Ordering::Relaxed)
    }

    /// Returns when bytes from the second end start waiting for the first end to take them
    /// (at once if that happened since the last call).
    pub async fn b_to_a_stalled(&self) {
        self.b_to_a_stalled.notified().await;
    }

    /// What has been delivered so far.
    pub fn now(&self) -> Transfer {
        Transfer {
            a_to_b: self.a_to_b.load(Ordering::Relaxed),
            b_to_a: self.b_to_a.load(Ordering::Relaxed),
        }
    }
}

/// Byte counts of a stream.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Transfer {
    /// Bytes delivered from the first end to the second.
    pub a_to_b: u64,
    /// Bytes delivered from the second end to the first.
    pub b_to_a: u64,
}

/// One direction, `from` → `to`.
struct Direction<'a> {
    from: End,
    delivered: &'a AtomicU64,
    /// Set while a write waits.
    waits: &'a AtomicBool,
    /// Told when a write starts waiting.
    stalled: Option<&'a tokio::sync::Notify>,
    /// Set once `from`'s EOF was passed on.
    done: &'a AtomicBool,
}

/// A failure of one direction: which end, and whether on the write side.
struct Failure {
    end: End,
    on_write: bool,
    error: std::io::Error,
}

/// Copies one direction until end of stream, then shuts the writer's direction down (EOF).
/// What `from` hands out is taken from it only once `to` has it.
async fn pipe<R, W>(mut from: R, mut to: W, dir: Direction<'_>) -> Result<(), Failure>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        let data = from.fill_buf().await.map_err(|error| Failure {
            end: dir.from,
            on_write: false,
            error,
        })?;
        let n = data.len();
        if n == 0 {
            let _ = to.shutdown().await;
            dir.done.store(true, Ordering::Relaxed);
            return Ok(());
        }
        let written = {
            let mut write = std::pin::pin!(to.write_all(data));
            // Tried once first: a write that cannot go on at once is a stall worth telling.
            match std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await {
                Poll::Ready(r) => r,
                Poll::Pending => {
                    dir.waits.store(true, Ordering::Relaxed);
                    if let Some(stalled) = dir.stalled {
                        stalled.notify_one();
                    }
                    let r = write.await;
                    dir.waits.store(false, Ordering::Relaxed);
                    r
                }
            }
        };
        written.map_err(|error| Failure {
            end: dir.from.other(),
            on_write: true,
            error,
        })?;
        from.consume(n);
        dir.delivered.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// A byte stream's reading half with a copy buffer of [`CHUNK`] bytes, and its writing half:
/// how [`splice_halves_until`] takes a stream that cannot lend its bytes where they lie.
pub fn buffered_halves<S>(stream: S) -> (BufReader<ReadHalf<S>>, WriteHalf<S>)
where
    S: AsyncRead + AsyncWrite,
{
    let (read, write) = tokio::io::split(stream);
    (BufReader::with_capacity(CHUNK, read), write)
}

/// Copies both ways between `a` and `b` until both directions reach end of stream or either
/// fails.
pub async fn splice<A, B>(a: A, b: B) -> (Transfer, Result<(), SpliceError>)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    splice_halves(buffered_halves(a), buffered_halves(b)).await
}

/// [`splice`] between streams given as their halves ([`splice_halves_until`]).
pub async fn splice_halves<AR, AW, BR, BW>(
    a: (AR, AW),
    b: (BR, BW),
) -> (Transfer, Result<(), SpliceError>)
where
    AR: AsyncBufRead + Unpin,
    AW: AsyncWrite + Unpin,
    BR: AsyncBufRead + Unpin,
    BW: AsyncWrite + Unpin,
{
    let progress = Progress::default();
    let result = splice_halves_until(a, b, std::future::pending(), &progress).await;
    (progress.now(), result)
}

/// [`splice`], counting into `progress` as bytes go, and ending early when `stop` finishes
/// with its reason.
pub async fn splice_until<A, B>(
    a: A,
    b: B,
    stop: impl Future<Output = String>,
    progress: &Progress,
) -> Result<(), SpliceError>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    splice_halves_until(buffered_halves(a), buffered_halves(b), stop, progress).await
}

/// [`splice_until`] between streams given as their reading and writing halves. A reading
/// half that lends its bytes where they lie (an SSH channel's, `Channel::halves`) spares the
/// copy into a buffer of the splice's own; [`buffered_halves`] makes halves of any stream.
pub async fn splice_halves_until<AR, AW, BR, BW>(
    (a_read, a_write): (AR, AW),
    (b_read, b_write): (BR, BW),
    stop: impl Future<Output = String>,
    progress: &Progress,
) -> Result<(), SpliceError>
where
    AR: AsyncBufRead + Unpin,
    AW: AsyncWrite + Unpin,
    BR: AsyncBufRead + Unpin,
    BW: AsyncWrite + Unpin,
{
    let a_done = AtomicBool::new(false);
    let b_done = AtomicBool::new(false);
    let a_to_b = Direction {
        from: End::A,
        delivered: &progress.a_to_b,
        waits: &progress.a_to_b_waits,
        stalled: None,
        done: &a_done,
    };
    let b_to_a = Direction {
        from: End::B,
        delivered: &progress.b_to_a,
        waits: &progress.b_to_a_waits,
        stalled: Some(&progress.b_to_a_stalled),
        done: &b_done,
    };
    // In a fixed order, the caller's stop first: no random draw on every wake-up of a stream.
    let result = tokio::select! {
        biased;
        why = stop => return Err(SpliceError::Stopped(why)),
        r = async {
            tokio::try_join!(pipe(a_read, b_write, a_to_b), pipe(b_read, a_write, b_to_a))
        } => r.map(|_| ()),
    };
    result.map_err(|f| {
        let (own, other) = match f.end {
            End::A => (&a_done, &b_done),
            End::B => (&b_done, &a_done),
        };
        SpliceError::Gone(Gone {
            end: f.end,
            error: f.error,
            on_write: f.on_write,
            got_all: other.load(Ordering::Relaxed),
            sent_all: own.load(Ordering::Relaxed),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, duplex};

    #[tokio::test]
    async fn half_close_one_way_lets_the_other_finish() {
        let (a, mut a_peer) = duplex(1024);
        let (b, mut b_peer) = duplex(1024);
        let run = tokio::spawn(splice(a, b));
        a_peer.write_all(b"question").await.unwrap();
        a_peer.shutdown().await.unwrap();
        let mut got = Vec::new();
        // b sees the question and its end before answering.
        let mut buf = [0u8; 64];
        loop {
            let n = b_peer.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, b"question");
        b_peer.write_all(b"answer").await.unwrap();
        b_peer.shutdown().await.unwrap();
        let mut back = Vec::new();
        a_peer.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"answer");
        let (t, r) = run.await.unwrap();
        assert!(r.is_ok());
        assert_eq!(
            t,
            Transfer {
                a_to_b: 8,
                b_to_a: 6
            }
        );
    }

    /// A stream that fails its reads as a channel closed without EOF does.
    struct Aborted;

    impl AsyncRead for Aborted {
        fn poll_read(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            _: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "the channel was closed before its end of stream",
            )))
        }
    }

    impl AsyncWrite for Aborted {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            std::task::Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn an_end_without_eof_ends_the_whole_stream_and_says_which_end() {
        let (b, _b_peer) = duplex(1024);
        let (_, r) = splice(Aborted, b).await;
        let Err(SpliceError::Gone(g)) = r else {
            panic!("gone: {r:?}");
        };
        assert_eq!(g.end, End::A);
        assert!(!g.on_write && !g.got_all && !g.sent_all, "{g:?}");
        assert!(g.error.to_string().contains("before its end of stream"));
        let (a, _a_peer) = duplex(1024);
        let (b, _b_peer) = duplex(1024);
        let progress = Progress::default();
        let r = splice_until(a, b, async { "revoked".to_string() }, &progress).await;
        assert!(
            matches!(r, Err(SpliceError::Stopped(ref w)) if w == "revoked"),
            "{r:?}"
        );
    }
}
