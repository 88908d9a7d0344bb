//! A bad link between two loopback TCP endpoints, for tests and benchmarks: delay, jitter, loss,
//! rate and blackout, each switchable while connections run.
//!
//! This kernel has no `sch_netem`, so the impairment lives in userspace: a TCP relay that
//! accepts on one address, connects to another, and schedules every chunk it forwards. What TCP
//! endpoints see of a cellular link is reproduced at the byte-stream level:
//! - **rate**: each chunk occupies the link for `len / rate` (a serialization queue);
//! - **delay** and **jitter**: each chunk leaves `delay ± jitter` after it was sent, never
//!   before an earlier one (TCP delivers in order);
//! - **loss**: TCP retransmits what was lost, so a lost segment arrives late: with probability
//!   `loss` a chunk waits one retransmission timeout more, and everything behind it with it;
//! - **blackout**: nothing moves either way until it ends; nothing is lost either (the
//!   endpoints' TCP would retransmit), and connections stay open, as through a carrier NAT
//!   whose radio link went away for a while.
//!
//! # Layout
//! Everything is in this file: [`Impairment`] (the settings), [`Link`] (a running emulator and
//! its controls) and the per-connection pumps.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Largest chunk forwarded at once: about one segment, so that rate and loss act per packet.
const CHUNK: usize = 1400;
/// Chunks in flight per direction: the link's buffer (a full one pushes back over TCP).
const IN_FLIGHT: usize = 512;
/// Shortest retransmission delay that a lost segment costs.
const MIN_RTO: Duration = Duration::from_millis(200);

/// How the link behaves; the same both ways.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Impairment {
    /// One-way delay.
    pub delay: Duration,
    /// Each chunk's delay varies by up to this much either way.
    pub jitter: Duration,
    /// Share of chunks that are lost and retransmitted (0 to 1).
    pub loss: f64,
    /// Bytes per second each way; `None` for no limit.
    pub rate: Option<u64>,
    /// Nothing moves while this is set.
    pub blackout: bool,
}

impl Impairment {
    /// A cellular link as the seeds' devices see it: 300 ± 100 ms each way, 3 % loss,
    /// 2 Mbit/s.
    pub fn cellular() -> Impairment {
        Impairment {
            delay: Duration::from_millis(300),
            jitter: Duration::from_millis(100),
            loss: 0.03,
            rate: Some(2_000_000 / 8),
            blackout: false,
        }
    }
}

struct Control {
    settings: Mutex<Impairment>,
    changed: Notify,
    /// Bytes forwarded towards the target and back.
    up: AtomicU64,
    down: AtomicU64,
}

impl Control {
    fn settings(&self) -> Impairment {
        self.settings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits while a blackout lasts.
    async fn wait_for_light(&self) {
        loop {
            let changed = self.changed.notified();
            if !self.settings().blackout {
                return;
            }
            changed.await;
        }
    }
}

/// A running link emulator.
#[derive(Clone)]
pub struct Link {
    addr: SocketAddr,
    control: Arc<Control>,
}

impl Link {
    /// Forwards every connection accepted on `listener` to `target` through the impairment
    /// until `shutdown` is cancelled.
    pub fn start(
        listener: TcpListener,
        target: SocketAddr,
        impairment: Impairment,
        shutdown: CancellationToken,
    ) -> std::io::Result<Link> {
        let addr = listener.local_addr()?;
        let control = Arc::new(Control {
            settings: Mutex::new(impairment),
            changed: Notify::new(),
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
        });
        tokio::spawn(accept(listener, target, control.clone(), shutdown));
        Ok(Link { addr, control })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Changes the impairment; connections that run follow at once.
    pub fn set(&self, change: impl FnOnce(&mut Impairment)) {
        change(
            &mut self
                .control
                .settings
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        self.control.changed.notify_waiters();
    }

    /// The impairment now.
    pub fn impairment(&self) -> Impairment {
        self.control.settings()
    }

    /// Bytes forwarded so far: (towards the target, back from it).
    pub fn bytes(&self) -> (u64, u64) {
        (
            self.control.up.load(Ordering::Relaxed),
            self.control.down.load(Ordering::Relaxed),
        )
    }
}

async fn accept(
    listener: TcpListener,
    target: SocketAddr,
    control: Arc<Control>,
    shutdown: CancellationToken,
) {
    loop {
        let client = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(_) => continue,
            },
        };
        let (control, shutdown) = (control.clone(), shutdown.clone());
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(target).await else {
                return;
            };
            let _ = (client.set_nodelay(true), server.set_nodelay(true));
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            let up = pump(cr, sw, control.clone(), Direction::Up);
            let down = pump(sr, cw, control.clone(), Direction::Down);
            tokio::select! {
                _ = async { tokio::join!(up, down) } => {}
                _ = shutdown.cancelled() => {}
            }
        });
    }
}

#[derive(Clone, Copy)]
enum Direction {
    Up,
    Down,
}

/// Copies one direction through the impairment: a reader that schedules chunks, a writer that
/// delivers them when they are due. EOF travels like data (after what was sent before it).
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    control: Arc<Control>,
    dir: Direction,
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Option<Bytes>)>(IN_FLIGHT);
    let reader = async {
        // When the link is next free (rate), and when the last chunk leaves (order).
        let mut free_at = Instant::now();
        let mut last_due = Instant::now();
        loop {
            let mut buf = BytesMut::with_capacity(CHUNK);
            let chunk = match from.read_buf(&mut buf).await {
                Ok(0) | Err(_) => None,
                Ok(_) => Some(buf.freeze()),
            };
            control.wait_for_light().await;
            let s = control.settings();
            let now = Instant::now();
            let len = chunk.as_ref().map_or(0, |c| c.len()) as u64;
            if let Some(rate) = s.rate.filter(|r| *r > 0) {
                free_at = free_at.max(now) + Duration::from_secs_f64(len as f64 / rate as f64);
            } else {
                free_at = now;
            }
            let jitter = s.jitter.as_secs_f64() * (rand::random::<f64>() * 2.0 - 1.0);
            let mut due =
                free_at + Duration::from_secs_f64((s.delay.as_secs_f64() + jitter).max(0.0));
            if s.loss > 0.0 && rand::random::<f64>() < s.loss {
                due += MIN_RTO.max(s.delay * 2);
            }
            last_due = last_due.max(due);
            let end = chunk.is_none();
            if tx.send((last_due, chunk)).await.is_err() || end {
                return;
            }
        }
    };
    let writer = async {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            control.wait_for_light().await;
            let Some(chunk) = chunk else {
                let _ = to.shutdown().await;
                return;
            };
            if to.write_all(&chunk).await.is_err() {
                return;
            }
            let counter = match dir {
                Direction::Up => &control.up,
                Direction::Down => &control.down,
            };
            counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo service and a link in front of it.
    async fn echo_link(impairment: Impairment) -> (Link, CancellationToken) {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let echo_addr = echo.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = tcp.into_split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                });
            }
        });
        let shutdown = CancellationToken::new();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let link = Link::start(listener, echo_addr, impairment, shutdown.clone()).unwrap();
        (link, shutdown)
    }

    #[tokio::test]
    async fn bytes_arrive_whole_and_in_order_through_a_bad_link() {
        let bad = Impairment {
            delay: Duration::from_millis(5),
            jitter: Duration::from_millis(5),
            loss: 0.2,
            rate: Some(4_000_000),
            blackout: false,
        };
        let (link, _stop) = echo_link(bad).await;
        let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let tcp = TcpStream::connect(link.addr()).await.unwrap();
        let (mut r, mut w) = tcp.into_split();
        let sent = payload.clone();
        let writer = tokio::spawn(async move {
            w.write_all(&sent).await.unwrap();
            w.shutdown().await.unwrap();
        });
        let mut back = Vec::new();
        r.read_to_end(&mut back).await.unwrap();
        writer.await.unwrap();
        assert!(back == payload, "{} bytes came back altered", back.len());
        assert_eq!(link.bytes(), (300_000, 300_000));
    }

    #[tokio::test]
    async fn blackout_holds_everything_until_it_ends() {
        let (link, _stop) = echo_link(Impairment::default()).await;
        let mut tcp = TcpStream::connect(link.addr()).await.unwrap();
        tcp.write_all(b"before").await.unwrap();
        let mut buf = [0u8; 6];
        tcp.read_exact(&mut buf).await.unwrap();
        link.set(|i| i.blackout = true);
        tcp.write_all(b"during").await.unwrap();
        // Nothing crosses while the blackout lasts, and the connection stays open.
        let crossed = tokio::time::timeout(Duration::from_millis(300), tcp.read(&mut buf)).await;
        assert!(crossed.is_err(), "data crossed a blackout");
        assert_eq!(link.bytes(), (6, 6));
        link.set(|i| i.blackout = false);
        tcp.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"during");
        assert_eq!(link.bytes(), (12, 12));
    }
}
