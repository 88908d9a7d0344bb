//! A stream wrapper that can be cut from outside, ending its SSH session at once.
//!
//! russh runs each session in a task of its own and dropping its handle does not stop it; a
//! session writing to a peer that stopped reading (a device frozen mid-reboot) would hang in that
//! write forever. Cutting the stream makes every pending and future read and write fail, so the
//! session loop ends within one poll: this is how takeover, revocation and the pre-auth timeout
//! end sessions without waiting for keepalives.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// A stream that fails all I/O once its token is cancelled.
pub struct CutStream<T> {
    inner: T,
    cut: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl<T> CutStream<T> {
    /// Wraps `inner`; cancelling `token` cuts it.
    pub fn new(inner: T, token: CancellationToken) -> Self {
        CutStream {
            inner,
            cut: Box::pin(token.cancelled_owned()),
        }
    }

    fn check(&mut self, cx: &mut Context<'_>) -> std::io::Result<()> {
        match self.cut.as_mut().poll(cx) {
            Poll::Ready(()) => Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "connection cut by burrow",
            )),
            Poll::Pending => Ok(()),
        }
    }
}

use std::future::Future;

impl<T: AsyncRead + Unpin> AsyncRead for CutStream<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for CutStream<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn cut_ends_a_blocked_write_and_read() {
        let (a, _b) = tokio::io::duplex(16);
        let token = CancellationToken::new();
        let mut s = CutStream::new(a, token.clone());
        s.write_all(b"0123456789abcdef").await.unwrap();
        // The duplex buffer is full and nobody reads: this write would wait forever.
        let blocked = tokio::spawn(async move {
            let r = s.write_all(b"more").await;
            (r, s)
        });
        tokio::task::yield_now().await;
        token.cancel();
        let (r, mut s) = blocked.await.unwrap();
        assert_eq!(r.unwrap_err().kind(), std::io::ErrorKind::ConnectionAborted);
        let mut buf = [0u8; 4];
        assert!(s.read(&mut buf).await.is_err());
    }
}
