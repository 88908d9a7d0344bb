//! The agent's view of its session's health: which streams are open, when they last moved
//! bytes, when the path was last proven end to end, and how far TCP got with what the agent sent
//! (so that a keepalive or probe queued behind a transfer gets the time that transfer takes).

#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use burrow_io::activity::{Activity, Metered};

/// The streams of one session.
#[derive(Debug)]
pub(crate) struct Streams {
    relay_open: AtomicUsize,
    /// When the relay last opened a stream to this device: proof that it routes to it.
    proven: Mutex<Option<Instant>>,
    /// When the streams' local ends (services, serial ports) last moved bytes; the SSH side of
    /// a stream moves the same bytes a moment before or after.
    traffic: Arc<Activity>,
    /// Whether any stream opened, so that `traffic`'s start counts as movement.
    opened: AtomicBool,
}

impl Default for Streams {
    fn default() -> Streams {
        Streams {
            relay_open: AtomicUsize::new(0),
            proven: Mutex::new(None),
            traffic: Activity::new(),
            opened: AtomicBool::new(false),
        }
    }
}

impl Streams {
    /// A stream the relay opened (an operator's): counts as proof of the path.
    pub(crate) fn from_relay(self: &Arc<Self>) -> StreamGuard {
        *self.proven.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        self.relay_open.fetch_add(1, Ordering::Relaxed);
        let mut guard = self.device_side();
        guard.relay = true;
        guard
    }

    /// A stream this device opened (`[[connect]]`).
    pub(crate) fn device_side(self: &Arc<Self>) -> StreamGuard {
        // Opening is an exchange with the relay: it moves bytes too.
        self.traffic.received();
        self.opened.store(true, Ordering::Relaxed);
        StreamGuard {
            streams: self.clone(),
            relay: false,
        }
    }

    /// `io` (a stream's local end) with its bytes counted as the streams' movement.
    pub(crate) fn metered<T>(&self, io: T) -> Metered<T> {
        Metered::new(io, self.traffic.clone())
    }

    /// A console's port moved bytes for an attached channel (the port is not a stream of its
    /// own: it stays open when nobody is attached).
    pub(crate) fn touch(&self) {
        self.traffic.received();
        self.opened.store(true, Ordering::Relaxed);
    }

    /// When a stream last opened or moved bytes, if any ever did.
    pub(crate) fn moved_at(&self) -> Option<Instant> {
        self.opened
            .load(Ordering::Relaxed)
            .then(|| self.traffic.last_rx().max(self.traffic.last_tx()))
    }

    /// Streams the relay opened that are open now.
    pub(crate) fn relay_open(&self) -> usize {
        self.relay_open.load(Ordering::Relaxed)
    }

    /// When the relay last proved the path, by a stream or a probe.
    pub(crate) fn proven(&self) -> Option<Instant> {
        *self.proven.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a successful probe.
    pub(crate) fn proved(&self, at: Instant) {
        *self.proven.lock().unwrap_or_else(|e| e.into_inner()) = Some(at);
    }
}

/// Keeps a stream counted while it lives.
#[derive(Debug)]
pub(crate) struct StreamGuard {
    streams: Arc<Streams>,
    /// Whether the relay opened it (counted in `relay_open`).
    relay: bool,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.relay {
            self.streams.relay_open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Watches the socket's acknowledged byte count: while it grows, what was queued is still
/// leaving, and a keepalive or probe behind it is not late yet.
pub(crate) struct AckWatch {
    socket: Option<OwnedFd>,
    acked: Option<u64>,
    moved_at: Option<Instant>,
}

impl AckWatch {
    /// Watches `socket` (a duplicate of the session's TCP socket); `None` watches nothing.
    pub(crate) fn new(socket: Option<OwnedFd>) -> AckWatch {
        AckWatch {
            socket,
            acked: None,
            moved_at: None,
        }
    }

    /// The last time, up to `now`, the acknowledged byte count was seen to grow.
    pub(crate) fn poll(&mut self, now: Instant) -> Option<Instant> {
        let acked = self.socket.as_ref().and_then(bytes_acked);
        if acked.is_some() && self.acked.is_some() && acked > self.acked {
            self.moved_at = Some(now);
        }
        if acked.is_some() {
            self.acked = acked;
        }
        self.moved_at
    }
}

/// `tcpi_bytes_acked` of a TCP socket (Linux 4.1 and later).
#[cfg(target_os = "linux")]
fn bytes_acked(socket: &OwnedFd) -> Option<u64> {
    // Offset of tcpi_bytes_acked in struct tcp_info: 8 one-byte fields, 24 u32s, two u64s.
    const OFFSET: usize = 8 + 24 * 4 + 2 * 8;
    let mut info = [0u8; 256];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: the buffer is valid for `len` bytes and the kernel writes at most `len`.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 || (len as usize) < OFFSET + 8 {
        return None;
    }
    let bytes: [u8; 8] = info.get(OFFSET..OFFSET + 8)?.try_into().ok()?;
    Some(u64::from_ne_bytes(bytes))
}

#[cfg(not(target_os = "linux"))]
fn bytes_acked(_socket: &OwnedFd) -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn acknowledged_bytes_are_seen_to_grow() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut client =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (mut server, _) = listener.accept().expect("accept");
        let dup = std::os::fd::AsFd::as_fd(&client)
            .try_clone_to_owned()
            .expect("dup");
        let before = bytes_acked(&dup).expect("tcp_info");
        let mut watch = AckWatch::new(Some(dup));
        let t0 = Instant::now();
        assert_eq!(watch.poll(t0), None);
        client.write_all(&[7u8; 10_000]).expect("write");
        let mut got = vec![0u8; 10_000];
        server.read_exact(&mut got).expect("read");
        // The receiver's kernel acknowledged everything it handed over.
        let mut moved = None;
        for _ in 0..200 {
            moved = watch.poll(Instant::now());
            if moved.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(moved.is_some_and(|t| t >= t0));
        assert!(watch.acked.is_some_and(|a| a >= before + 10_000));
    }

    #[tokio::test]
    async fn streams_moving_bytes_are_seen() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let t0 = Instant::now();
        let streams = Arc::new(Streams::default());
        assert_eq!(streams.moved_at(), None);
        let _guard = streams.from_relay();
        let opened = streams.moved_at().expect("an open moves bytes");
        assert!(opened >= t0);
        let (near, mut far) = tokio::io::duplex(64);
        let mut near = streams.metered(near);
        far.write_all(b"x").await.expect("write");
        let mut byte = [0u8; 1];
        near.read_exact(&mut byte).await.expect("read");
        let read = streams.moved_at().expect("moved");
        assert!(read >= opened);
        near.write_all(b"y").await.expect("write");
        assert!(streams.moved_at().expect("moved") >= read);
    }

    #[test]
    fn stream_guards_count_and_relay_streams_prove_the_path() {
        let streams = Arc::new(Streams::default());
        assert_eq!(streams.proven(), None);
        let a = streams.device_side();
        assert_eq!((streams.relay_open(), streams.proven()), (0, None));
        let b = streams.from_relay();
        assert_eq!(streams.relay_open(), 1);
        assert!(streams.proven().is_some());
        drop(a);
        drop(b);
        assert_eq!(streams.relay_open(), 0);
    }
}
