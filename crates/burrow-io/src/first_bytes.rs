//! A stream wrapper that keeps the first bytes its peer sent: whether a connection said
//! anything at all (the relay's banner deadline), and which SSH software answered (the agent's
//! error when its relay address points at something else).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes that hold an SSH identification line (at most 255 with its CR LF).
pub const IDENTIFICATION: usize = 256;

/// What the peer sent first, shared with whoever wants to look.
#[derive(Clone, Default)]
pub struct Seen(Arc<Mutex<Vec<u8>>>);

impl Seen {
    /// Whether the peer sent anything yet.
    pub fn any(&self) -> bool {
        !self.bytes().is_empty()
    }

    /// The peer's first line (its SSH identification), if it sent one.
    pub fn first_line(&self) -> Option<String> {
        let bytes = self.bytes();
        let end = bytes.iter().position(|b| *b == b'\n')?;
        let line = String::from_utf8_lossy(bytes.get(..end)?);
        Some(line.trim_end_matches('\r').to_string())
    }

    fn bytes(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A stream that records the first `keep` bytes read from it.
pub struct FirstBytes<T> {
    inner: T,
    seen: Seen,
    /// Bytes still to record; nothing is looked at once this is 0.
    left: usize,
}

impl<T> FirstBytes<T> {
    /// Wraps `inner`, keeping the first `keep` bytes read (1 answers "said anything?",
    /// [`IDENTIFICATION`] holds the peer's SSH identification line); returns the stream and
    /// the record.
    pub fn new(inner: T, keep: usize) -> (Self, Seen) {
        let seen = Seen::default();
        (
            FirstBytes {
                inner,
                seen: seen.clone(),
                left: keep,
            },
            seen,
        )
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for FirstBytes<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if self.left > 0 {
            let new = buf.filled().get(before..).unwrap_or_default();
            let take = self.left.min(new.len());
            self.seen
                .bytes()
                .extend_from_slice(new.get(..take).unwrap_or_default());
            self.left -= take;
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for FirstBytes<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
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
    async fn keeps_the_first_line_and_no_more_than_it_needs() {
        let (a, mut b) = tokio::io::duplex(4096);
        let (mut r, seen) = FirstBytes::new(a, IDENTIFICATION);
        assert!(!seen.any());
        b.write_all(b"SSH-2.0-OpenSSH_9.2p1 Debian\r\n")
            .await
            .unwrap();
        b.write_all(&[7u8; 1000]).await.unwrap();
        drop(b);
        let mut all = Vec::new();
        r.read_to_end(&mut all).await.unwrap();
        assert_eq!(all.len(), 1030);
        assert!(seen.any());
        assert_eq!(seen.first_line().unwrap(), "SSH-2.0-OpenSSH_9.2p1 Debian");
        assert_eq!(seen.bytes().len(), IDENTIFICATION);
    }
}
