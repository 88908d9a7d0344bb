//! A stream wrapper that records when bytes last moved each way, for liveness decisions that
//! must see every byte of the SSH connection (keepalive answers, window adjustments, data),
//! not only what reaches the application.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// When bytes last moved on one connection, and how many.
#[derive(Debug)]
pub struct Activity {
    epoch: Instant,
    /// Microseconds after `epoch` of the last read and write that moved bytes.
    last_rx: AtomicU64,
    last_tx: AtomicU64,
    tx_bytes: AtomicU64,
    rx_bytes: AtomicU64,
}

impl Activity {
    /// A connection that starts now, counting as having just heard and spoken.
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            epoch: Instant::now(),
            last_rx: AtomicU64::new(0),
            last_tx: AtomicU64::new(0),
            tx_bytes: AtomicU64::new(0),
            rx_bytes: AtomicU64::new(0),
        })
    }

    fn stamp(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    fn at(&self, micros: u64) -> Instant {
        self.epoch + Duration::from_micros(micros)
    }

    /// When a byte was last received.
    pub fn last_rx(&self) -> Instant {
        self.at(self.last_rx.load(Ordering::Relaxed))
    }

    /// When a byte was last sent.
    pub fn last_tx(&self) -> Instant {
        self.at(self.last_tx.load(Ordering::Relaxed))
    }

    /// How long nothing was received, at `now`.
    pub fn silence(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_rx())
    }

    /// Bytes handed to the socket so far.
    pub fn tx_bytes(&self) -> u64 {
        self.tx_bytes.load(Ordering::Relaxed)
    }

    /// Bytes received so far.
    pub fn rx_bytes(&self) -> u64 {
        self.rx_bytes.load(Ordering::Relaxed)
    }

    /// Records that bytes arrived now.
    pub fn received(&self) {
        self.last_rx.store(self.stamp(), Ordering::Relaxed);
    }

    fn received_bytes(&self, n: usize) {
        self.received();
        self.rx_bytes.fetch_add(n as u64, Ordering::Relaxed);
    }

    fn sent(&self, n: usize) {
        self.last_tx.store(self.stamp(), Ordering::Relaxed);
        self.tx_bytes.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// The SSH driver reports every byte its connection moves.
impl burrow_ssh::driver::Observer for Activity {
    fn received(&self, bytes: usize) {
        self.received_bytes(bytes);
    }

    fn sent(&self, bytes: usize) {
        Activity::sent(self, bytes);
    }
}

/// A stream that records its traffic in an [`Activity`].
pub struct Metered<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T> Metered<T> {
    /// Wraps `inner`, recording into `activity`.
    pub fn new(inner: T, activity: Arc<Activity>) -> Self {
        Metered { inner, activity }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Metered<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let got = buf.filled().len().saturating_sub(before);
        if matches!(polled, Poll::Ready(Ok(()))) && got > 0 {
            self.activity.received_bytes(got);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Metered<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled
            && n > 0
        {
            self.activity.sent(n);
        }
        polled
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
    async fn reads_and_writes_move_their_own_clock_only() {
        let (a, mut b) = tokio::io::duplex(64);
        let activity = Activity::new();
        let mut a = Metered::new(a, activity.clone());
        let start = (activity.last_rx(), activity.last_tx());
        tokio::time::sleep(Duration::from_millis(20)).await;
        a.write_all(b"hello").await.expect("write");
        assert!(activity.last_tx() > start.1);
        assert_eq!(activity.last_rx(), start.0);
        assert_eq!(activity.tx_bytes(), 5);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let before = Instant::now();
        b.write_all(b"x").await.expect("write");
        let mut one = [0u8; 1];
        a.read_exact(&mut one).await.expect("read");
        assert!(activity.last_rx() > activity.last_tx());
        assert!(activity.silence(Instant::now()) <= before.elapsed());
        // End of stream is not traffic.
        drop(b);
        let rx = activity.last_rx();
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(a.read(&mut one).await.expect("eof"), 0);
        assert_eq!(activity.last_rx(), rx);
    }
}
