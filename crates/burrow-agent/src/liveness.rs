//! The agent's view of its session's health: which streams are open, when the path was last
//! proven end to end, and how far TCP got with what the agent sent (so that a keepalive or probe
//! queued behind a transfer gets the time that transfer takes).

#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The streams of one session.
#[derive(Debug, Default)]
pub(crate) struct Streams {
    open: AtomicUsize,
    relay_open: Arc<AtomicUsize>,
    /// When the relay last opened a stream to this device: proof that it routes to it.
    proven: Mutex<Option<Instant>>,
}

impl Streams {
    /// A stream the relay opened (an operator's): counts as proof of the path.
    pub(crate) fn from_relay(self: &Arc<Self>) -> StreamGuard {
        *self.proven.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        self.relay_open.fetch_add(1, Ordering::Relaxed);
        let mut guard = self.device_side();
        guard.1 = Some(self.relay_open.clone());
        guard
    }

    /// A stream this device opened (`[[connect]]`).
    pub(crate) fn device_side(self: &Arc<Self>) -> StreamGuard {
        self.open.fetch_add(1, Ordering::Relaxed);
        StreamGuard(self.clone(), None)
    }

    /// Streams open now.
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
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
pub(crate) struct StreamGuard(Arc<Streams>, Option<Arc<AtomicUsize>>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
        if let Some(relay_open) = &self.1 {
            relay_open.fetch_sub(1, Ordering::Relaxed);
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

    #[test]
    fn stream_guards_count_and_relay_streams_prove_the_path() {
        let streams = Arc::new(Streams::default());
        assert_eq!(streams.proven(), None);
        let a = streams.device_side();
        assert_eq!((streams.open(), streams.proven()), (1, None));
        let b = streams.from_relay();
        assert_eq!((streams.open(), streams.relay_open()), (2, 1));
        assert!(streams.proven().is_some());
        drop(a);
        drop(b);
        assert_eq!((streams.open(), streams.relay_open()), (0, 0));
    }
}
