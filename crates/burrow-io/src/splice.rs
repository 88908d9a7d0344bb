//! Copies bytes both ways between two byte streams (SSH channels, TCP sockets), honouring
//! half-close: when one side ends its direction (EOF), the other side's write half is shut
//! down and the other direction goes on until it ends too.
//!
//! Flow control is the streams' own. An SSH channel of burrow-ssh gives window back only as
//! its bytes are read here, so a reader that stops holds back its own stream and nothing else;
//! TCP pushes back by itself. What is in flight per direction is one copy buffer.
//!
//! A stream that ends without EOF (a channel closed mid-stream, a session that went away, a
//! reset) ends the whole splice as interrupted: the other direction would otherwise wait on a
//! peer that is gone.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Size of one copy buffer (one per direction of a running stream).
const CHUNK: usize = 32 * 1024;

/// Why a stream ended abnormally.
#[derive(Debug, thiserror::Error)]
pub enum SpliceError {
    /// A socket failed.
    #[error("socket error: {0}")]
    Io(std::io::Error),
    /// One side went away without ending its stream (no EOF): a lost session, a reset.
    #[error("interrupted: {0}")]
    Interrupted(String),
}

impl SpliceError {
    /// True when the stream was cut short (every failure here is).
    pub fn is_interruption(&self) -> bool {
        true
    }

    fn from_io(e: std::io::Error) -> SpliceError {
        match e.kind() {
            std::io::ErrorKind::ConnectionAborted => SpliceError::Interrupted(e.to_string()),
            _ => SpliceError::Io(e),
        }
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

/// Copies one direction until end of stream, then shuts the writer's direction down (EOF).
async fn pipe<R, W>(mut from: R, mut to: W, delivered: &AtomicU64) -> Result<(), SpliceError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = from.read(&mut buf).await.map_err(SpliceError::from_io)?;
        if n == 0 {
            let _ = to.shutdown().await;
            return Ok(());
        }
        to.write_all(buf.get(..n).unwrap_or_default())
            .await
            .map_err(SpliceError::from_io)?;
        delivered.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Copies both ways between `a` and `b` until both directions reach end of stream or either
/// fails; both are dropped (closed) at the end.
pub async fn splice<A, B>(a: A, b: B) -> (Transfer, Result<(), SpliceError>)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    splice_until(a, b, std::future::pending()).await
}

/// [`splice`], but `stop` finishing ends the stream early (access revoked): both ends are
/// closed and the result says so.
pub async fn splice_until<A, B>(
    a: A,
    b: B,
    stop: impl Future<Output = ()>,
) -> (Transfer, Result<(), SpliceError>)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (a_read, a_write) = tokio::io::split(a);
    let (b_read, b_write) = tokio::io::split(b);
    let a_to_b = AtomicU64::new(0);
    let b_to_a = AtomicU64::new(0);
    let result = tokio::select! {
        r = async {
            tokio::try_join!(
                pipe(a_read, b_write, &a_to_b),
                pipe(b_read, a_write, &b_to_a)
            )
        } => r.map(|_| ()),
        () = stop => Err(SpliceError::Interrupted(
            "closed by the relay: access was revoked".into(),
        )),
    };
    let transfer = Transfer {
        a_to_b: a_to_b.into_inner(),
        b_to_a: b_to_a.into_inner(),
    };
    (transfer, result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;

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
    async fn an_end_without_eof_interrupts_the_whole_stream() {
        let (b, _b_peer) = duplex(1024);
        let (_, r) = splice(Aborted, b).await;
        let e = r.expect_err("interrupted");
        assert!(matches!(e, SpliceError::Interrupted(_)), "{e}");
        assert!(e.to_string().contains("before its end of stream"));
        let (a, _a_peer) = duplex(1024);
        let (b, _b_peer) = duplex(1024);
        let (_, r) = splice_until(a, b, async {}).await;
        assert!(r.expect_err("stopped").to_string().contains("revoked"));
    }
}
