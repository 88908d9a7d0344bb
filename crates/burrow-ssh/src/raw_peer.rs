//! A peer that misbehaves on purpose, for the hostile-client tests and the bench: a client
//! [`Session`] over a socket that it drives only as far as the caller says, then sends what the
//! caller makes (sealed under the real keys, so it reaches every layer) without ever reading.
//! What a server queues for such a peer is what these tests measure.
// A test tool that parses nothing a peer sends: plain arithmetic on its own clock and counts.
#![allow(clippy::arithmetic_side_effects)]

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use crate::auth::{ClientKey, Credential};
use crate::channel::{self, ChannelId, Limits, OpenKind};
use crate::msg;
use crate::session::{Event, Session, Side};
use crate::wire::Writer;

/// A client session as `user` with `credentials` that trusts any host key, whose channels
/// advertise `window` (a hostile peer asks for everything, or gives nothing).
pub fn client(user: &str, credentials: Vec<Credential>, window: u32) -> Session {
    let config = crate::transport::Config {
        host_key_check: Some(Box::new(|_| true)),
        ..Default::default()
    };
    Session::new(
        config,
        Side::Client {
            user: user.into(),
            credentials,
        },
        Limits {
            window,
            window_budget: u64::MAX,
            ..Limits::default()
        },
        Instant::now(),
    )
}

/// `keepalive@openssh.com` wanting a reply: every one is answered.
pub fn keepalive_request() -> Vec<u8> {
    let mut w = Writer::message(msg::GLOBAL_REQUEST);
    w.string(b"keepalive@openssh.com").bool(true);
    w.into_bytes()
}

/// A client session on a socket, driven by hand.
pub struct RawPeer {
    stream: TcpStream,
    session: Session,
    /// Sealed bytes not yet taken by the socket.
    unwritten: Vec<u8>,
}

impl RawPeer {
    /// Connects to `addr` and runs `session` (a client) over it; nothing moves until
    /// [`RawPeer::run_until`].
    pub async fn connect(addr: SocketAddr, session: Session) -> io::Result<RawPeer> {
        let stream = TcpStream::connect(addr).await?;
        RawPeer::from_stream(stream, session)
    }

    /// Runs `session` over a socket connected already (one with small buffers, say, so that
    /// what the server sends stays in the server).
    pub fn from_stream(stream: TcpStream, session: Session) -> io::Result<RawPeer> {
        stream.set_nodelay(true)?;
        Ok(RawPeer {
            stream,
            session,
            unwritten: Vec::new(),
        })
    }

    /// A peer at `addr` that has finished the key exchange and sent nothing of its own since.
    pub async fn key_exchanged(addr: SocketAddr, within: Duration) -> io::Result<RawPeer> {
        let mut peer = RawPeer::connect(addr, client("nobody", Vec::new(), u32::MAX)).await?;
        peer.run_until(within, |s, _| s.transport().key_exchanges() >= 1)
            .await?;
        Ok(peer)
    }

    /// A peer at `addr` logged in as `user` with `key`, its channels advertising `window`.
    pub async fn logged_in(
        addr: SocketAddr,
        user: &str,
        key: ClientKey,
        window: u32,
        within: Duration,
    ) -> io::Result<RawPeer> {
        let session = client(user, vec![Credential::Key(Box::new(key))], window);
        let mut peer = RawPeer::connect(addr, session).await?;
        peer.run_until(within, |s, _| s.authenticated()).await?;
        Ok(peer)
    }

    /// Opens a `direct-tcpip` channel to `host:port` and waits until it is open.
    pub async fn open_stream(
        &mut self,
        host: &str,
        port: u32,
        within: Duration,
    ) -> io::Result<ChannelId> {
        let id = self
            .session
            .connection()
            .open(&OpenKind::DirectTcpip {
                host: host.into(),
                port,
                originator: "127.0.0.1".into(),
                originator_port: 40000,
            })
            .map_err(|e| io::Error::other(e.0))?;
        self.run_until(within, |_, ev| {
            ev.iter()
                .any(|e| matches!(e, Event::Connection(channel::Event::Opened(c)) if *c == id))
        })
        .await?;
        Ok(id)
    }

    /// This end's address (to find the connection in the kernel's tables).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.stream.local_addr()
    }

    /// The session, to open channels or queue messages through its layers.
    pub fn session(&mut self) -> &mut Session {
        &mut self.session
    }

    /// Exchanges packets with the server as a well-behaved client would, until `done` says so
    /// (given the session and the events so far) or `timeout` passes; returns the events.
    pub async fn run_until(
        &mut self,
        timeout: Duration,
        mut done: impl FnMut(&mut Session, &[Event]) -> bool,
    ) -> io::Result<Vec<Event>> {
        let deadline = Instant::now() + timeout;
        let mut events = Vec::new();
        loop {
            while let Some(e) = self.session.poll_event() {
                events.push(e);
            }
            if done(&mut self.session, &events) {
                return Ok(events);
            }
            if let Some(e) = self.session.failure() {
                return Err(io::Error::other(format!("the session ended: {e}")));
            }
            self.collect();
            self.write_some()?;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the server did not get that far in time",
                ));
            }
            let mut buf = vec![0u8; 64 * 1024];
            let want_write = !self.unwritten.is_empty();
            tokio::select! {
                r = self.stream.readable() => {
                    r?;
                    match self.stream.try_read(&mut buf) {
                        Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the server closed the connection")),
                        Ok(n) => {
                            let _ = self.session.receive(buf.get(..n).unwrap_or_default());
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Err(e),
                    }
                }
                r = self.stream.writable(), if want_write => { r?; }
                () = tokio::time::sleep(left.min(Duration::from_millis(50))) => {}
            }
        }
    }

    /// Queues a message through the transport, sealed under the current keys (anything at
    /// all: the point is what the server does with it).
    pub fn queue(&mut self, payload: Vec<u8>) -> io::Result<()> {
        self.session
            .transport()
            .send(payload)
            .map_err(|e| io::Error::other(e.message))
    }

    fn collect(&mut self) {
        while let Some(bytes) = self.session.poll_transmit() {
            self.unwritten.extend_from_slice(&bytes);
        }
    }

    /// Writes what the socket takes now, without waiting; returns how much is still unwritten.
    pub fn write_some(&mut self) -> io::Result<usize> {
        self.collect();
        while !self.unwritten.is_empty() {
            match self.stream.try_write(&self.unwritten) {
                Ok(0) => break,
                Ok(n) => {
                    self.unwritten.drain(..n.min(self.unwritten.len()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(self.unwritten.len())
    }

    /// Sends messages made by `make` (given a counter) as fast as the server takes them, never
    /// reading, for `duration`. Returns how many messages the socket took: once the server
    /// stops reading, its buffers fill and this count stops growing.
    pub async fn flood(
        &mut self,
        duration: Duration,
        mut make: impl FnMut(u64) -> Vec<u8>,
    ) -> io::Result<u64> {
        let end = Instant::now() + duration;
        let mut sent = 0u64;
        while Instant::now() < end {
            // Keep a little ahead of the socket, no more: what the server refuses to read
            // stays in this process, not in the server.
            if self.unwritten.len() < 256 * 1024 {
                for _ in 0..64 {
                    self.queue(make(sent))?;
                    sent += 1;
                }
            }
            match self.write_some() {
                Ok(left) if left > 0 => {
                    tokio::select! {
                        r = self.stream.writable() => { r?; }
                        () = tokio::time::sleep(Duration::from_millis(20)) => {}
                    }
                }
                Ok(_) => tokio::task::yield_now().await,
                // The server cut the connection: the flood is over.
                Err(_) => break,
            }
        }
        Ok(sent)
    }

    /// Reads and throws away what the server sent until it closes the connection (true) or
    /// `within` passes (false).
    pub async fn closed_by_server(&mut self, within: Duration) -> bool {
        let mut buf = vec![0u8; 64 * 1024];
        let end = Instant::now() + within;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            match tokio::time::timeout(left, self.stream.readable()).await {
                Err(_) => return false,
                Ok(Err(_)) => return true,
                Ok(Ok(())) => match self.stream.try_read(&mut buf) {
                    Ok(0) => return true,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return true,
                },
            }
        }
    }
}
