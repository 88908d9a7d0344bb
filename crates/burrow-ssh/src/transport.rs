//! The transport layer as a state machine (RFC 4253): identification, key exchange and rekeying,
//! packet protection, and the ordering rules around them, with no I/O. The caller feeds received
//! bytes to [`Transport::receive`], writes out what [`Transport::poll_transmit`] returns, takes
//! [`Event`]s from [`Transport::poll_event`], hands messages of the layers above to
//! [`Transport::send`], and passes the time to [`Transport::handle_time`].
//!
//! Key exchange: the methods of [`crate::kex::METHODS`] (post-quantum hybrids first, then
//! `curve25519-sha256`) with an `ssh-ed25519` host key, strict key exchange when both sides
//! offer it (sequence numbers restart at each NEWKEYS, and nothing but the exchange's own
//! messages may arrive during the first one).
//!
//! Bounds: a key exchange must finish within [`Config::kex_timeout`]; keys are renewed after
//! [`Config::rekey_bytes`] or [`Config::rekey_packets`] either way (checked after every packet,
//! and never past the cipher's own limit, RFC 4344 §3.1), or after [`Config::rekey_time`].
//! Everything queued here is counted ([`Transport::queued_bytes`]) so the driver can cap it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use ring::rand::{SecureRandom, SystemRandom};

use crate::crypto::{Opener, Sealer};
use crate::kex::{ClientShare, HashInput, HostKey, Method, SharedSecret, derive, exchange_hash};
use crate::kexinit::{self, KexInit, Negotiated};
use crate::messages::{Disconnect, reason};
use crate::msg;
use crate::packet::Framing;
use crate::queue::ByteQueue;
use crate::version::{Identification, VersionReader};
use crate::wire::{Reader, Writer};

/// Which end this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Dials and verifies the host key.
    Client,
    /// Accepts and signs with its host key.
    Server,
}

/// Decides whether the server's host key blob is trusted (the client's pin or known_hosts).
pub type HostKeyCheck = Box<dyn Fn(&[u8]) -> bool + Send>;

/// How a transport runs.
pub struct Config {
    /// Which end.
    pub role: Role,
    /// Software version for the identification line (`burrow_0.1.0`).
    pub software: String,
    /// Comment for the identification line.
    pub comment: Option<String>,
    /// Key exchange methods in order of preference (see [`crate::kex::METHODS`]); names
    /// burrow does not implement are left out of the offer.
    pub kex: Vec<String>,
    /// Ciphers in order of preference (see [`crate::crypto::CIPHERS`]).
    pub ciphers: Vec<String>,
    /// The server's host key.
    pub host_key: Option<Arc<HostKey>>,
    /// The client's check of the server's host key.
    pub host_key_check: Option<HostKeyCheck>,
    /// Rekey after this many bytes in either direction.
    pub rekey_bytes: u64,
    /// Rekey after this many packets in either direction (ChaCha20-Poly1305's nonce is the
    /// 32-bit sequence number).
    pub rekey_packets: u64,
    /// Rekey after this long.
    pub rekey_time: Duration,
    /// A key exchange not finished this long after it started ends the connection
    /// (`KEY_EXCHANGE_FAILED`): messages are held while it runs.
    pub kex_timeout: Duration,
    /// A server's `SSH_MSG_EXT_INFO`, sent right after its first NEWKEYS to a client that
    /// asked for it (RFC 8308 §2.4).
    pub ext_info: Option<Vec<u8>>,
    /// Server: announce the host keys after authentication (`hostkeys-00@openssh.com`, see
    /// [`crate::hostkeys`]) and prove them on request, so that clients learn new ones.
    pub announce_host_keys: bool,
    /// Server: host keys held besides [`Config::host_key`] (a new key in a rotation):
    /// announced and proved, not used in the key exchange.
    pub extra_host_keys: Vec<Arc<HostKey>>,
    /// Server: public key blobs announced as this host's too, that this server cannot prove
    /// (the other relays of a cluster reached under the same name), so that a client does
    /// not drop them.
    pub peer_host_keys: Vec<Vec<u8>>,
    /// Client: ask the server to prove the announced host keys that
    /// [`Config::host_key_check`] does not trust; those it proves come out as
    /// [`crate::session::Event::HostKeys`].
    pub learn_host_keys: bool,
}

/// Renew keys after this many bytes either way (OpenSSH's default for AEAD ciphers).
pub const DEFAULT_REKEY_BYTES: u64 = 1 << 30;
/// Renew keys after this many packets either way: half the sequence number space.
pub const DEFAULT_REKEY_PACKETS: u64 = 1 << 31;
/// A key exchange must finish within this long: generous for a cellular link's worst
/// round trips, short enough that held messages cannot pile up for long.
pub const DEFAULT_KEX_TIMEOUT: Duration = Duration::from_secs(60);

impl Default for Config {
    /// A client with every cipher, the default limits, no host key and no check (which
    /// trusts no server: set [`Config::host_key_check`]).
    fn default() -> Config {
        Config {
            role: Role::Client,
            software: format!("burrow_{}", env!("CARGO_PKG_VERSION")),
            comment: None,
            kex: crate::kex::methods(),
            ciphers: crate::crypto::CIPHERS
                .iter()
                .map(|c| c.to_string())
                .collect(),
            host_key: None,
            host_key_check: None,
            rekey_bytes: DEFAULT_REKEY_BYTES,
            rekey_packets: DEFAULT_REKEY_PACKETS,
            rekey_time: Duration::from_secs(7 * 24 * 3600),
            kex_timeout: DEFAULT_KEX_TIMEOUT,
            ext_info: None,
            announce_host_keys: false,
            extra_host_keys: Vec::new(),
            peer_host_keys: Vec::new(),
            learn_host_keys: false,
        }
    }
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The peer's identification arrived.
    PeerVersion(Identification),
    /// New keys are in use both ways; `first` for the initial exchange.
    KeysReady {
        /// Whether this was the first key exchange.
        first: bool,
    },
    /// A message for the layers above (service, authentication, connection).
    Message(Bytes),
    /// The peer ended the connection.
    Disconnected(Disconnect),
}

/// Why the transport failed; the connection is over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportError {
    /// The DISCONNECT reason code that says it ([`crate::messages::reason`]).
    pub reason: u32,
    /// What went wrong.
    pub message: String,
}

impl TransportError {
    fn new(reason: u32, message: impl Into<String>) -> TransportError {
        TransportError {
            reason,
            message: message.into(),
        }
    }

    fn protocol(message: impl Into<String>) -> TransportError {
        TransportError::new(reason::PROTOCOL_ERROR, message)
    }

    fn kex(message: impl Into<String>) -> TransportError {
        TransportError::new(reason::KEY_EXCHANGE_FAILED, message)
    }
}

impl std::fmt::Display for TransportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for TransportError {}

fn fail<T>(why: impl Into<String>) -> Result<T, TransportError> {
    Err(TransportError::protocol(why))
}

fn fail_kex<T>(why: impl Into<String>) -> Result<T, TransportError> {
    Err(TransportError::kex(why))
}

/// The most bytes a cipher may protect under one key, per RFC 4344 §3.1: 2^(L/4) blocks of L
/// bits for AES; for ChaCha20-Poly1305, whose 64-bit blocks that rule does not fit, OpenSSH's
/// 1 GiB.
fn cipher_byte_limit(cipher: &str) -> u64 {
    if cipher.starts_with("aes") {
        (1u64 << 32).saturating_mul(16)
    } else {
        1 << 30
    }
}

/// One key exchange in progress.
#[derive(Default)]
struct Kex {
    ours: Vec<u8>,
    /// Sequence number our KEXINIT went out with.
    ours_seq: u32,
    theirs: Option<Vec<u8>>,
    negotiated: Option<Negotiated>,
    /// The client's secrets between its KEX_ECDH_INIT and the server's reply.
    ephemeral: Option<ClientShare>,
    /// Skip the peer's next key exchange packet: it guessed wrong.
    skip_guess: bool,
    /// When it started: the time the transport was given when it began, or for one that
    /// began between two [`Transport::handle_time`] calls (the peer's KEXINIT, a volume limit
    /// reached by a packet we sent), the next time it is given. The time the transport last
    /// heard may be long past by then: a connection's driver can wait for hours.
    started: Option<Instant>,
    /// Keys for incoming packets after the peer's NEWKEYS.
    next_opener: Option<Opener>,
    sent_newkeys: bool,
    got_newkeys: bool,
}

/// The transport of one connection.
pub struct Transport {
    config: Config,
    our_id: Vec<u8>,
    version: Option<VersionReader>,
    peer_id: Option<Identification>,
    /// Bytes received and not yet taken as packets (freed whenever it runs empty).
    inbuf: BytesMut,
    rx_seq: u32,
    tx_seq: u32,
    opener: Option<Opener>,
    sealer: Option<Sealer>,
    out: ByteQueue,
    held: ByteQueue,
    events: VecDeque<Event>,
    kex: Option<Kex>,
    session_id: Option<Vec<u8>>,
    strict: bool,
    keys_done: u32,
    /// Traffic under the current keys, each way.
    sent: Volume,
    received: Volume,
    /// The most bytes each way before keys are renewed (the configured limit, or the
    /// cipher's own if lower).
    limit_out: u64,
    limit_in: u64,
    kex_at: Instant,
    /// The last time the caller passed in.
    now: Instant,
    /// DISCONNECT went out: nothing more starts (no rekey behind it).
    closing: bool,
    /// A key exchange message is being handled (the exchange is out of `kex` meanwhile).
    stepping: bool,
    rng: SystemRandom,
    failed: Option<TransportError>,
}

/// Bytes and packets moved one way under the current keys.
#[derive(Debug, Default, Clone, Copy)]
struct Volume {
    bytes: u64,
    packets: u64,
}

impl Volume {
    fn add(&mut self, bytes: usize) {
        self.bytes = self.bytes.saturating_add(bytes as u64);
        self.packets = self.packets.saturating_add(1);
    }
}

impl Transport {
    /// A transport that starts at `now`: its identification line and first KEXINIT are queued.
    pub fn new(config: Config, now: Instant) -> Transport {
        let line = crate::version::line(&config.software, config.comment.as_deref());
        let our_id = line.strip_suffix(b"\r\n").unwrap_or(&line).to_vec();
        let from_server = config.role == Role::Client;
        let mut t = Transport {
            config,
            our_id,
            version: Some(VersionReader::new(from_server)),
            peer_id: None,
            inbuf: BytesMut::new(),
            rx_seq: 0,
            tx_seq: 0,
            opener: None,
            sealer: None,
            out: ByteQueue::with(line),
            held: ByteQueue::default(),
            events: VecDeque::new(),
            kex: None,
            session_id: None,
            strict: false,
            keys_done: 0,
            sent: Volume::default(),
            received: Volume::default(),
            limit_out: u64::MAX,
            limit_in: u64::MAX,
            kex_at: now,
            now,
            closing: false,
            stepping: false,
            rng: SystemRandom::new(),
            failed: None,
        };
        t.start_kex();
        t.stamp_kex(now);
        t
    }

    /// Bytes to write to the peer, in order.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.out.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The session identifier (the first exchange hash), once known.
    pub fn session_id(&self) -> Option<&[u8]> {
        self.session_id.as_deref()
    }

    /// The settings it was made with.
    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    /// Whether the client's check trusts the host key `blob`.
    pub(crate) fn host_key_trusted(&self, blob: &[u8]) -> bool {
        self.config
            .host_key_check
            .as_ref()
            .is_some_and(|check| check(blob))
    }

    /// The peer's identification, once it arrived.
    pub fn peer_id(&self) -> Option<&Identification> {
        self.peer_id.as_ref()
    }

    /// Sends DISCONNECT (RFC 4253 §11.1); the caller closes the connection after writing it.
    /// It goes out even after a failure: the sending direction is still intact.
    pub fn disconnect(&mut self, reason: u32, description: &str) {
        if self.closing {
            return;
        }
        self.closing = true;
        let d = Disconnect {
            reason,
            description: description.to_string(),
        };
        self.write_packet(&d.encode());
    }

    /// Bytes queued here: sealed packets not yet taken by [`Transport::poll_transmit`], and
    /// messages held until a key exchange finishes.
    pub fn queued_bytes(&self) -> usize {
        self.out.bytes().saturating_add(self.held.bytes())
    }

    /// Key exchanges finished so far (the first included).
    pub fn key_exchanges(&self) -> u32 {
        self.keys_done
    }

    /// Whether a key exchange is under way.
    pub fn in_kex(&self) -> bool {
        self.kex.is_some()
    }

    /// Queues a message of the layers above; held back while keys are being exchanged.
    pub fn send(&mut self, payload: Vec<u8>) -> Result<(), TransportError> {
        self.check()?;
        if self.kex.is_some() || self.keys_done == 0 {
            self.held.push_back(payload);
            return Ok(());
        }
        self.write_packet(&payload);
        Ok(())
    }

    /// Sends a message made of `head` and then `body`, framed from both without joining them
    /// first (channel data).
    pub fn send_parts(&mut self, head: &[u8], body: &[u8]) -> Result<(), TransportError> {
        self.check()?;
        if self.kex.is_some() || self.keys_done == 0 {
            self.held.push_back([head, body].concat());
            return Ok(());
        }
        self.write_packet_parts(head, body);
        Ok(())
    }

    /// Frees the buffers of empty queues (see [`crate::session::Session::release_idle`]).
    pub fn release_idle(&mut self) {
        self.out.release_idle();
        self.held.release_idle();
        crate::session::shrink(&mut self.events);
    }

    /// Starts a key exchange now (a rekey) unless one is running.
    pub fn rekey(&mut self) {
        if self.kex.is_none() && self.keys_done > 0 && !self.closing && self.failed.is_none() {
            self.start_kex();
        }
    }

    /// When [`Transport::handle_time`] next has something to do: the deadline of the key
    /// exchange under way, or the next rekey by time.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.failed.is_some() {
            return None;
        }
        match &self.kex {
            // Not yet stamped: the time is wanted now, to start the deadline from.
            Some(kex) => match kex.started {
                Some(started) => started.checked_add(self.config.kex_timeout),
                None => Some(self.now),
            },
            None if self.keys_done > 0 => self.kex_at.checked_add(self.config.rekey_time),
            None => None,
        }
    }

    /// Passes the time: ends a key exchange that took too long (the error says so, and a
    /// DISCONNECT is the caller's to send), and rekeys when the time since the last one calls
    /// for it. A driver calls it whenever it wakes, so the transport knows when things start.
    pub fn handle_time(&mut self, now: Instant) -> Result<(), TransportError> {
        self.check()?;
        self.now = now;
        if let Some(kex) = self.kex.as_mut() {
            let started = *kex.started.get_or_insert(now);
            if now.saturating_duration_since(started) >= self.config.kex_timeout {
                let e = TransportError::kex(format!(
                    "the key exchange did not finish within {} s",
                    self.config.kex_timeout.as_secs()
                ));
                self.failed = Some(e.clone());
                return Err(e);
            }
            return Ok(());
        }
        let by_time = self
            .kex_at
            .checked_add(self.config.rekey_time)
            .is_some_and(|at| now >= at);
        if by_time || self.volume_spent() {
            self.kex_at = now;
            self.rekey();
            self.stamp_kex(now);
        }
        Ok(())
    }

    /// Marks the key exchange under way as started at `now`, the time the caller has in hand
    /// when it starts one.
    fn stamp_kex(&mut self, now: Instant) {
        if let Some(kex) = self.kex.as_mut() {
            kex.started = Some(now);
        }
    }

    /// Whether the traffic under the current keys reached a limit either way.
    fn volume_spent(&self) -> bool {
        let packets = self.config.rekey_packets;
        self.sent.bytes >= self.limit_out
            || self.received.bytes >= self.limit_in
            || self.sent.packets >= packets
            || self.received.packets >= packets
    }

    /// Starts a rekey as soon as a packet either way reaches a limit.
    fn rekey_if_spent(&mut self) {
        if self.kex.is_none() && !self.stepping && self.keys_done > 0 && self.volume_spent() {
            self.kex_at = self.now;
            self.rekey();
        }
    }

    /// Takes bytes from the peer.
    pub fn receive(&mut self, bytes: &[u8]) -> Result<(), TransportError> {
        self.check()?;
        let result = self.receive_inner(bytes);
        if let Err(e) = &result {
            self.failed = Some(e.clone());
        }
        result
    }

    fn check(&self) -> Result<(), TransportError> {
        match &self.failed {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Reads from the peer with `read`, which appends what it got to the buffer it is given
    /// (reserving room first), then takes whole packets from it. Packets are decrypted where
    /// they arrived and handed on as views of that buffer: nothing is copied.
    pub fn receive_with<E>(
        &mut self,
        read: impl FnOnce(&mut BytesMut) -> Result<usize, E>,
    ) -> Result<Result<usize, E>, TransportError> {
        let mut lease = self.take_read_buffer()?;
        let got = read(lease.buffer());
        if got.is_ok() {
            lease.open_packets();
        }
        self.give_read_buffer(lease, got.is_ok())?;
        Ok(got)
    }

    /// The read buffer and the keys that open it, lent so that the socket can be read into
    /// it, and the packets it completes decrypted, while the caller holds nothing else (the
    /// driver does both without locking the connection its channels share). What is read goes
    /// after what is already there; [`Transport::give_read_buffer`] takes it all back. While
    /// the peer's identification line is awaited the buffer is a new, empty one.
    pub fn take_read_buffer(&mut self) -> Result<ReadLease, TransportError> {
        self.check()?;
        Ok(ReadLease {
            buf: std::mem::take(&mut self.inbuf),
            // Only under keys: the first key exchange's packets are few and are taken where
            // their keys are decided.
            opener: self.opener.take(),
            seq: self.rx_seq,
            opened: Vec::new(),
            error: None,
        })
    }

    /// Takes back what [`Transport::take_read_buffer`] lent, after a read that added to the
    /// buffer (`read` true) or failed: dispatches the packets opened meanwhile, then takes the
    /// whole packets the buffer still holds.
    pub fn give_read_buffer(&mut self, lease: ReadLease, read: bool) -> Result<(), TransportError> {
        let ReadLease {
            buf,
            opener,
            opened,
            error,
            seq,
        } = lease;
        // Nothing is dispatched while the buffer is out: what was opened follows on.
        debug_assert_eq!(
            seq,
            self.rx_seq
                .wrapping_add(u32::try_from(opened.len()).unwrap_or(u32::MAX))
        );
        if opener.is_some() {
            self.opener = opener;
        }
        self.check()?;
        if self.version.is_some() {
            return if buf.is_empty() {
                Ok(())
            } else {
                self.receive(&buf)
            };
        }
        self.inbuf = buf;
        let mut taken = self.take_opened(opened, error);
        if taken.is_ok() && read {
            taken = self.take_packets();
        }
        // Also after a read that found nothing (a socket that looked readable and was not,
        // which follows every read that emptied it): it reserved room all the same.
        self.release_empty_inbuf();
        if let Err(e) = taken {
            self.failed = Some(e.clone());
            return Err(e);
        }
        Ok(())
    }

    /// Dispatches packets opened under a lease, in order, then the error that stopped the
    /// opening, if one did.
    fn take_opened(
        &mut self,
        opened: Vec<(Bytes, usize)>,
        error: Option<TransportError>,
    ) -> Result<(), TransportError> {
        for (payload, wire_len) in opened {
            self.take_packet(payload, wire_len)?;
        }
        match error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// An idle session holds no read buffer: with nothing left over, the memory goes.
    fn release_empty_inbuf(&mut self) {
        if self.inbuf.is_empty() && self.inbuf.capacity() > 0 {
            self.inbuf = BytesMut::new();
        }
    }

    /// Memory held for bytes received and not yet taken as packets.
    pub fn receive_buffer_capacity(&self) -> usize {
        self.inbuf.capacity()
    }

    fn receive_inner(&mut self, bytes: &[u8]) -> Result<(), TransportError> {
        if let Some(reader) = self.version.as_mut() {
            match reader.feed(bytes) {
                Ok(None) => return Ok(()),
                Ok(Some((id, rest))) => {
                    self.version = None;
                    self.peer_id = Some(id.clone());
                    self.events.push_back(Event::PeerVersion(id));
                    self.inbuf.extend_from_slice(&rest);
                }
                Err(e) => {
                    return Err(TransportError::new(
                        reason::PROTOCOL_VERSION_NOT_SUPPORTED,
                        format!("identification: {e}"),
                    ));
                }
            }
        } else {
            self.inbuf.extend_from_slice(bytes);
        }
        let taken = self.take_packets();
        self.release_empty_inbuf();
        taken
    }

    /// Dispatches every whole packet in `inbuf`.
    fn take_packets(&mut self) -> Result<(), TransportError> {
        while let Some((payload, wire_len)) =
            next_packet(&mut self.inbuf, self.opener.as_mut(), self.rx_seq)?
        {
            self.take_packet(payload, wire_len)?;
        }
        Ok(())
    }

    /// Dispatches one packet: the one numbered `rx_seq`.
    fn take_packet(&mut self, payload: Bytes, wire_len: usize) -> Result<(), TransportError> {
        self.received.add(wire_len);
        // Dispatch sees this packet's own number (NEWKEYS under strict kex resets it).
        self.dispatch(payload)?;
        self.rx_seq = self.rx_seq.wrapping_add(1);
        self.rekey_if_spent();
        Ok(())
    }

    fn dispatch(&mut self, payload: Bytes) -> Result<(), TransportError> {
        let Some(&number) = payload.first() else {
            return fail("an empty packet");
        };
        let first_kex = self.keys_done == 0;
        if let Some(kex) = &self.kex {
            let kex_message =
                matches!(number, msg::KEXINIT | msg::NEWKEYS) || (30..=49).contains(&number);
            if first_kex && self.strict_offered_by_both() && !kex_message {
                return fail(format!(
                    "message {number} during the first key exchange breaks strict key exchange"
                ));
            }
            if kex_message {
                return self.kex_message(number, payload.to_vec());
            }
            // Between its KEXINIT and its NEWKEYS the peer sends only transport messages; what
            // it sent before it saw our KEXINIT may still arrive and is delivered.
            let peer_in_kex = kex.theirs.is_some() && !kex.got_newkeys;
            if (peer_in_kex || first_kex) && !msg::allowed_during_kex(number) {
                return fail(format!("message {number} during key exchange"));
            }
        }
        match number {
            msg::DISCONNECT => {
                let d = Disconnect::decode(&payload)
                    .map_err(|e| TransportError::protocol(format!("DISCONNECT: {e}")))?;
                self.events.push_back(Event::Disconnected(d));
                Ok(())
            }
            msg::UNIMPLEMENTED => {
                let seq = Reader::new(payload.get(1..).unwrap_or(&[]))
                    .u32("sequence number")
                    .ok();
                // OpenSSH's sshd takes no key re-exchange during authentication: it answers
                // our KEXINIT with this, and waiting for its KEXINIT would wait forever.
                if let Some(kex) = &self.kex
                    && seq == Some(kex.ours_seq)
                {
                    return fail_kex("the peer does not take a key re-exchange now");
                }
                Ok(())
            }
            msg::IGNORE | msg::DEBUG => Ok(()),
            msg::KEXINIT => {
                // The peer starts a rekey.
                self.start_kex();
                self.kex_message(number, payload.to_vec())
            }
            _ if first_kex => fail(format!("message {number} before the first key exchange")),
            _ if (20..=49).contains(&number) => {
                fail(format!("message {number} outside a key exchange"))
            }
            // RFC 4253 §11.4: an unrecognized message is answered, in order, not fatal.
            _ if !msg::understood(number) => {
                let mut w = Writer::message(msg::UNIMPLEMENTED);
                w.u32(self.rx_seq);
                self.send(w.into_bytes())
            }
            _ => {
                self.events.push_back(Event::Message(payload));
                Ok(())
            }
        }
    }

    fn strict_offered_by_both(&self) -> bool {
        self.kex
            .as_ref()
            .and_then(|k| k.negotiated.as_ref())
            .is_some_and(|n| n.strict)
    }

    fn our_offer(&self) -> KexInit {
        let mut cookie = [0u8; 16];
        let _ = self.rng.fill(&mut cookie);
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let mut kex: Vec<String> = self
            .config
            .kex
            .iter()
            .filter(|name| Method::from_name(name).is_some())
            .cloned()
            .collect();
        // Markers go in the first offer only.
        if self.keys_done == 0 {
            kex.extend(names(match self.config.role {
                Role::Client => &[kexinit::EXT_INFO_C, kexinit::STRICT_C],
                Role::Server => &[kexinit::STRICT_S],
            }));
        }
        let macs = names(&crate::crypto::MACS);
        KexInit {
            cookie,
            kex,
            host_key: names(&[crate::kex::SSH_ED25519]),
            cipher_c2s: self.config.ciphers.clone(),
            cipher_s2c: self.config.ciphers.clone(),
            mac_c2s: macs.clone(),
            mac_s2c: macs,
            compression_c2s: names(&["none"]),
            compression_s2c: names(&["none"]),
            ..KexInit::default()
        }
    }

    fn start_kex(&mut self) {
        if self.kex.is_some() {
            return;
        }
        let ours = self.our_offer().encode();
        let ours_seq = self.tx_seq;
        self.kex = Some(Kex {
            ours: ours.clone(),
            ours_seq,
            started: None,
            ..Kex::default()
        });
        self.write_packet(&ours);
    }

    fn kex_message(&mut self, number: u8, payload: Vec<u8>) -> Result<(), TransportError> {
        let Some(mut kex) = self.kex.take() else {
            return fail("key exchange message outside a key exchange");
        };
        self.stepping = true;
        let result = self.kex_step(&mut kex, number, payload);
        self.stepping = false;
        let done = kex.sent_newkeys && kex.got_newkeys;
        let negotiated = kex.negotiated.take_if(|_| done);
        if !done {
            self.kex = Some(kex);
        }
        result?;
        if let Some(n) = negotiated {
            self.finish_kex(&n);
        }
        Ok(())
    }

    fn kex_step(
        &mut self,
        kex: &mut Kex,
        number: u8,
        payload: Vec<u8>,
    ) -> Result<(), TransportError> {
        if kex.skip_guess && (30..=49).contains(&number) {
            kex.skip_guess = false;
            return Ok(());
        }
        match number {
            msg::KEXINIT => {
                if kex.theirs.is_some() {
                    return fail("a second KEXINIT in one key exchange");
                }
                let theirs = KexInit::decode(&payload)
                    .map_err(|e| TransportError::protocol(format!("KEXINIT: {e}")))?;
                let ours = KexInit::decode(&kex.ours)
                    .map_err(|e| TransportError::protocol(format!("our KEXINIT: {e}")))?;
                let (client, server) = match self.config.role {
                    Role::Client => (&ours, &theirs),
                    Role::Server => (&theirs, &ours),
                };
                let negotiated = kexinit::negotiate(client, server)
                    .map_err(|e| TransportError::kex(e.to_string()))?;
                if self.keys_done == 0 {
                    self.strict = negotiated.strict;
                    // Strict: the peer's KEXINIT must be its very first packet.
                    if self.strict && self.rx_seq != 0 {
                        return fail("strict key exchange: KEXINIT was not the first packet");
                    }
                }
                kex.skip_guess = negotiated.ignore_guess && theirs.first_kex_follows;
                kex.theirs = Some(payload);
                kex.negotiated = Some(negotiated);
                if self.config.role == Role::Client {
                    self.client_init(kex)?;
                }
                Ok(())
            }
            msg::KEX_ECDH_INIT if self.config.role == Role::Server => {
                // Answered once: each answer is a host-key signature, which costs.
                if kex.sent_newkeys {
                    return fail_kex("a second KEX_ECDH_INIT in one key exchange");
                }
                self.server_reply(kex, &payload)
            }
            msg::KEX_ECDH_REPLY if self.config.role == Role::Client => {
                self.client_finish(kex, &payload)
            }
            msg::NEWKEYS => {
                let Some(opener) = kex.next_opener.take() else {
                    return fail_kex("NEWKEYS before the key exchange finished");
                };
                self.opener = Some(opener);
                kex.got_newkeys = true;
                if self.strict {
                    // The packet after NEWKEYS is number 0 (dispatch adds one after this).
                    self.rx_seq = u32::MAX;
                }
                Ok(())
            }
            other => fail_kex(format!("unexpected key exchange message {other}")),
        }
    }

    fn hash_input<'a>(
        &'a self,
        kex: &'a Kex,
        host_key: &'a [u8],
        q_c: &'a [u8],
        q_s: &'a [u8],
    ) -> Option<HashInput<'a>> {
        let peer = self.peer_id.as_ref()?.line.as_bytes();
        let theirs = kex.theirs.as_deref()?;
        let (client_id, server_id, client_kexinit, server_kexinit) = match self.config.role {
            Role::Client => (&self.our_id[..], peer, &kex.ours[..], theirs),
            Role::Server => (peer, &self.our_id[..], theirs, &kex.ours[..]),
        };
        Some(HashInput {
            client_id,
            server_id,
            client_kexinit,
            server_kexinit,
            host_key,
            client_public: q_c,
            server_public: q_s,
        })
    }

    /// The negotiated key exchange method.
    fn method(kex: &Kex) -> Result<Method, TransportError> {
        let name = kex.negotiated.as_ref().map(|n| n.kex.as_str());
        name.and_then(Method::from_name).ok_or_else(|| {
            TransportError::kex(format!("key exchange method {name:?} not supported"))
        })
    }

    /// The client's KEX_ECDH_INIT for the negotiated method; its secrets wait in `kex`.
    fn client_init(&mut self, kex: &mut Kex) -> Result<(), TransportError> {
        let share = ClientShare::generate(Self::method(kex)?, &self.rng)
            .map_err(|e| TransportError::kex(e.to_string()))?;
        let mut init = Writer::message(msg::KEX_ECDH_INIT);
        init.string(share.public());
        kex.ephemeral = Some(share);
        self.write_packet(&init.into_bytes());
        Ok(())
    }

    fn server_reply(&mut self, kex: &mut Kex, payload: &[u8]) -> Result<(), TransportError> {
        let method = Self::method(kex)?;
        let mut r = Reader::new(payload);
        let _ = r.u8("message number");
        // Bounded by the method's size before anything is copied; the method checks it exactly.
        let q_c = r
            .string(method.client_share_len(), "Q_C")
            .map_err(|e| TransportError::kex(format!("KEX_ECDH_INIT: {e}")))?
            .to_vec();
        let Some(host) = self.config.host_key.clone() else {
            return fail("a server needs a host key");
        };
        let (q_s, secret) = crate::kex::server_share(method, &q_c, &self.rng)
            .map_err(|e| TransportError::kex(format!("KEX_ECDH_INIT: {e}")))?;
        let blob = host.blob();
        let hash = {
            let input = self
                .hash_input(kex, &blob, &q_c, &q_s)
                .ok_or_else(|| TransportError::kex("ECDH before KEXINIT"))?;
            exchange_hash(&input, &secret)
        };
        let signature = host.sign(&hash);
        let mut reply = Writer::message(msg::KEX_ECDH_REPLY);
        reply.string(&blob).string(&q_s).string(&signature);
        self.write_packet(&reply.into_bytes());
        self.install_keys(kex, &secret, &hash)
    }

    fn client_finish(&mut self, kex: &mut Kex, payload: &[u8]) -> Result<(), TransportError> {
        let method = Self::method(kex)?;
        let mut r = Reader::new(payload);
        let _ = r.u8("message number");
        let (host_key, q_s, signature) = ecdh_reply(&mut r, method.server_share_len())
            .map_err(|e| TransportError::kex(format!("KEX_ECDH_REPLY: {e}")))?;
        let Some(share) = kex.ephemeral.take() else {
            return fail("KEX_ECDH_REPLY before our KEX_ECDH_INIT");
        };
        let q_c = share.public().to_vec();
        let secret = share
            .finish(&q_s)
            .map_err(|e| TransportError::kex(format!("KEX_ECDH_REPLY: {e}")))?;
        let hash = {
            let input = self
                .hash_input(kex, &host_key, &q_c, &q_s)
                .ok_or_else(|| TransportError::kex("ECDH before KEXINIT"))?;
            exchange_hash(&input, &secret)
        };
        crate::kex::verify_host_signature(&host_key, &signature, &hash)
            .map_err(|e| TransportError::kex(e.to_string()))?;
        let trusted = self
            .config
            .host_key_check
            .as_ref()
            .is_some_and(|check| check(&host_key));
        if !trusted {
            return Err(TransportError::new(
                reason::HOST_KEY_NOT_VERIFIABLE,
                "the server's host key is not the one pinned",
            ));
        }
        self.install_keys(kex, &secret, &hash)
    }

    /// Derives the next keys, sends NEWKEYS and switches outgoing packets to them.
    fn install_keys(
        &mut self,
        kex: &mut Kex,
        secret: &SharedSecret,
        hash: &[u8],
    ) -> Result<(), TransportError> {
        let session_id = self.session_id.get_or_insert_with(|| hash.to_vec()).clone();
        let Some(n) = kex.negotiated.as_ref() else {
            return fail("keys before negotiation");
        };
        let material = |cipher: &str, iv: u8, key: u8| {
            let (key_len, iv_len) = crate::crypto::key_material(cipher)?;
            Some((
                derive(secret, hash, &session_id, key, key_len),
                derive(secret, hash, &session_id, iv, iv_len),
            ))
        };
        let (c2s_key, c2s_iv) = material(&n.cipher_c2s, b'A', b'C')
            .ok_or_else(|| TransportError::kex(format!("cipher {} not supported", n.cipher_c2s)))?;
        let (s2c_key, s2c_iv) = material(&n.cipher_s2c, b'B', b'D')
            .ok_or_else(|| TransportError::kex(format!("cipher {} not supported", n.cipher_s2c)))?;
        // The MAC keys (RFC 4253 §7.2 letters E and F), for the ciphers that need one.
        let mac = |mac: &Option<String>, letter: u8| {
            mac.as_ref().map(|name| {
                let len = crate::crypto::mac_key_len(name).unwrap_or(0);
                (name.clone(), derive(secret, hash, &session_id, letter, len))
            })
        };
        let c2s = (n.cipher_c2s.clone(), c2s_key, c2s_iv, mac(&n.mac_c2s, b'E'));
        let s2c = (n.cipher_s2c.clone(), s2c_key, s2c_iv, mac(&n.mac_s2c, b'F'));
        let (out, inn) = match self.config.role {
            Role::Client => (c2s, s2c),
            Role::Server => (s2c, c2s),
        };
        fn mac_ref(m: &Option<(String, zeroize::Zeroizing<Vec<u8>>)>) -> crate::crypto::MacKey<'_> {
            m.as_ref()
                .map(|(name, key)| (name.as_str(), key.as_slice()))
        }
        let sealer = Sealer::new(&out.0, &out.1, &out.2, mac_ref(&out.3))
            .ok_or_else(|| TransportError::kex("cannot key the cipher"))?;
        kex.next_opener = Some(
            Opener::new(&inn.0, &inn.1, &inn.2, mac_ref(&inn.3))
                .ok_or_else(|| TransportError::kex("cannot key the cipher"))?,
        );
        self.write_packet(&[msg::NEWKEYS]);
        self.sealer = Some(sealer);
        if self.strict {
            self.tx_seq = 0;
        }
        kex.sent_newkeys = true;
        let first = self.keys_done == 0;
        if first
            && self.config.role == Role::Server
            && n.ext_info_to_client
            && let Some(ext_info) = self.config.ext_info.clone()
        {
            self.write_packet(&ext_info);
        }
        Ok(())
    }

    fn finish_kex(&mut self, n: &Negotiated) {
        self.keys_done = self.keys_done.saturating_add(1);
        self.sent = Volume::default();
        self.received = Volume::default();
        let (out, inn) = match self.config.role {
            Role::Client => (&n.cipher_c2s, &n.cipher_s2c),
            Role::Server => (&n.cipher_s2c, &n.cipher_c2s),
        };
        self.limit_out = self.config.rekey_bytes.min(cipher_byte_limit(out));
        self.limit_in = self.config.rekey_bytes.min(cipher_byte_limit(inn));
        self.events.push_back(Event::KeysReady {
            first: self.keys_done == 1,
        });
        while let Some(payload) = self.held.pop_front() {
            self.write_packet(&payload);
        }
    }

    fn write_packet(&mut self, payload: &[u8]) {
        self.write_packet_parts(payload, &[]);
    }

    fn write_packet_parts(&mut self, head: &[u8], body: &[u8]) {
        let fill = |pad: &mut [u8]| random_padding(&self.rng, pad);
        let packet = match self.sealer.as_mut() {
            Some(sealer) => sealer.seal_parts(self.tx_seq, head, body, fill),
            None => Framing::CLEAR.frame_parts(head, body, fill),
        };
        self.sent.add(packet.len());
        self.tx_seq = self.tx_seq.wrapping_add(1);
        self.out.push_back(packet);
        self.rekey_if_spent();
    }
}

/// Fills `pad` with random bytes from a per-thread pool refilled from the system in blocks,
/// rather than a system call for each packet's few bytes of padding.
fn random_padding(rng: &SystemRandom, pad: &mut [u8]) {
    const POOL: usize = 4096;
    thread_local! {
        static POOL_BYTES: std::cell::RefCell<(Vec<u8>, usize)> =
            const { std::cell::RefCell::new((Vec::new(), 0)) };
    }
    POOL_BYTES.with(|cell| {
        let mut cell = cell.borrow_mut();
        let (bytes, at) = &mut *cell;
        if bytes.len() != POOL || at.saturating_add(pad.len()) > POOL {
            bytes.resize(POOL, 0);
            let _ = rng.fill(bytes);
            *at = 0;
        }
        let end = at.saturating_add(pad.len());
        if let Some(src) = bytes.get(*at..end) {
            pad.copy_from_slice(src);
        }
        *at = end;
    });
}

/// The server's host key blob, public value and signature from a KEX_ECDH_REPLY.
type EcdhReply = (Vec<u8>, Vec<u8>, Vec<u8>);

/// `q_s_len` is the negotiated method's size of `Q_S`, the bound it is read with.
fn ecdh_reply(r: &mut Reader<'_>, q_s_len: usize) -> Result<EcdhReply, crate::wire::WireError> {
    let k_s = r.string(4096, "K_S")?.to_vec();
    let q_s = r.string(q_s_len, "Q_S")?.to_vec();
    let sig = r.string(4096, "signature")?.to_vec();
    r.finish()?;
    Ok((k_s, q_s, sig))
}

/// The next whole packet's payload from `buf`, numbered `seq`, with the packet's length on the
/// wire, if a whole packet is there. The packet is decrypted in place and split off the buffer.
fn next_packet(
    buf: &mut BytesMut,
    opener: Option<&mut Opener>,
    seq: u32,
) -> Result<Option<(Bytes, usize)>, TransportError> {
    let Some(first) = buf.get(..4) else {
        return Ok(None);
    };
    let first: [u8; 4] = first
        .try_into()
        .map_err(|_| TransportError::protocol("short packet length"))?;
    let whole = match &opener {
        Some(opener) => opener
            .length(seq, first)
            .map_err(|e| TransportError::protocol(format!("packet: {e}")))?,
        None => Framing::CLEAR
            .check_length(u32::from_be_bytes(first))
            .map_err(|e| TransportError::protocol(format!("packet: {e}")))?
            .saturating_add(4),
    };
    if buf.len() < whole {
        return Ok(None);
    }
    let mut packet = buf.split_to(whole);
    let len = match opener {
        Some(opener) => opener
            .open(seq, &mut packet)
            .map_err(|e| {
                let code = match e {
                    crate::crypto::OpenError::Authentication => reason::MAC_ERROR,
                    crate::crypto::OpenError::Packet(_) => reason::PROTOCOL_ERROR,
                };
                TransportError::new(code, format!("packet {seq}: {e}"))
            })?
            .len(),
        None => Framing::CLEAR
            .payload(packet.get(4..).unwrap_or(&[]))
            .map_err(|e| TransportError::protocol(format!("packet: {e}")))?
            .len(),
    };
    // The payload follows the length and the padding length.
    let start = 5usize;
    Ok(Some((
        packet.freeze().slice(start..start.saturating_add(len)),
        whole,
    )))
}

/// A connection's read buffer and the keys for its incoming packets, lent out by
/// [`Transport::take_read_buffer`]: the socket is read into [`ReadLease::buffer`] and
/// [`ReadLease::open_packets`] decrypts what it completed, with no lock held, and the
/// transport dispatches them once it has the lease back.
#[must_use = "the lease holds the connection's incoming keys: give it back"]
pub struct ReadLease {
    buf: BytesMut,
    opener: Option<Opener>,
    /// The number of the next packet to open.
    seq: u32,
    /// Payloads opened, each with its packet's length on the wire.
    opened: Vec<(Bytes, usize)>,
    /// Why opening stopped at a packet (given back after the packets before it).
    error: Option<TransportError>,
}

impl ReadLease {
    /// The buffer to read into (after what it holds).
    pub fn buffer(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Decrypts the whole packets the buffer holds. It stops after a NEWKEYS, because the
    /// packets after it are under keys that only the transport's key exchange knows, and at a
    /// packet that does not open (the error goes back with the lease).
    pub fn open_packets(&mut self) {
        let Some(opener) = self.opener.as_mut() else {
            return;
        };
        if self.error.is_some() {
            return;
        }
        loop {
            match next_packet(&mut self.buf, Some(&mut *opener), self.seq) {
                Ok(Some((payload, wire_len))) => {
                    let newkeys = payload.first() == Some(&msg::NEWKEYS);
                    self.opened.push((payload, wire_len));
                    self.seq = self.seq.wrapping_add(1);
                    if newkeys {
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    self.error = Some(e);
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(cipher: &str) -> (Transport, Transport) {
        let host = Arc::new(HostKey::from_seed(&[5; 32]).expect("seed"));
        let pinned = host.blob();
        let now = Instant::now();
        let config = |role| Config {
            role,
            software: "burrow_test".into(),
            comment: None,
            kex: crate::kex::methods(),
            ciphers: vec![cipher.to_string()],
            host_key: None,
            host_key_check: None,
            rekey_time: Duration::from_secs(3600),
            ..Config::default()
        };
        let mut client = config(Role::Client);
        client.host_key_check = Some(Box::new(move |k| k == pinned.as_slice()));
        let mut server = config(Role::Server);
        server.host_key = Some(host);
        (Transport::new(client, now), Transport::new(server, now))
    }

    /// Moves bytes both ways, in reads of `chunk` through the read buffer a driver borrows
    /// (packets opened outside the transport, up to a NEWKEYS), until neither side has any.
    fn pump(a: &mut Transport, b: &mut Transport, chunk: usize) -> Result<(), TransportError> {
        fn one_way(
            from: &mut Transport,
            to: &mut Transport,
            chunk: usize,
        ) -> Result<bool, TransportError> {
            let mut bytes = Vec::new();
            while let Some(packet) = from.poll_transmit() {
                bytes.extend_from_slice(&packet);
            }
            for piece in bytes.chunks(chunk.max(1)) {
                let read = to.receive_with(|buf| {
                    buf.extend_from_slice(piece);
                    Ok::<_, ()>(piece.len())
                })?;
                assert_eq!(read, Ok(piece.len()));
            }
            Ok(!bytes.is_empty())
        }
        loop {
            let there = one_way(a, b, chunk)?;
            let back = one_way(b, a, chunk)?;
            if !there && !back {
                return Ok(());
            }
        }
    }

    fn events(t: &mut Transport) -> Vec<Event> {
        std::iter::from_fn(|| t.poll_event()).collect()
    }

    #[test]
    fn client_and_server_agree_on_keys_and_carry_messages_with_every_cipher() {
        for cipher in crate::crypto::CIPHERS {
            for chunk in [1, 7, 4096] {
                let (mut c, mut s) = pair(cipher);
                // Held back until the keys are in place.
                c.send(b"\x05first".to_vec()).expect("queued");
                pump(&mut c, &mut s, chunk).expect("kex");
                let ce = events(&mut c);
                let se = events(&mut s);
                assert!(ce.contains(&Event::KeysReady { first: true }), "{ce:?}");
                assert!(
                    se.contains(&Event::Message(Bytes::from_static(b"\x05first"))),
                    "{se:?}"
                );
                assert_eq!(c.session_id(), s.session_id());
                s.send(b"\x06back".to_vec()).expect("send");
                pump(&mut c, &mut s, chunk).expect("message");
                assert_eq!(
                    events(&mut c),
                    vec![Event::Message(Bytes::from_static(b"\x06back"))]
                );
            }
        }
    }

    #[test]
    fn rekey_mid_stream_keeps_every_message_in_order() {
        // In small reads, and in reads that hold NEWKEYS and the packets under the new keys
        // after it, all at once.
        for chunk in [13, 1 << 16] {
            rekey_mid_stream(chunk);
        }
    }

    fn rekey_mid_stream(chunk: usize) {
        let (mut c, mut s) = pair("chacha20-poly1305@openssh.com");
        pump(&mut c, &mut s, 4096).expect("kex");
        let _ = (events(&mut c), events(&mut s));
        let first_id = c.session_id().map(<[u8]>::to_vec);
        for i in 0..50u8 {
            c.send(vec![94, i]).expect("send");
            if i == 20 {
                c.rekey();
                assert!(c.in_kex());
            }
            if i == 30 {
                // The server starts one too, crossing the client's.
                s.rekey();
            }
            if i % 7 == 0 {
                pump(&mut c, &mut s, chunk).expect("pump");
            }
        }
        pump(&mut c, &mut s, chunk).expect("pump");
        let got: Vec<u8> = events(&mut s)
            .into_iter()
            .filter_map(|e| match e {
                Event::Message(m) => m.get(1).copied(),
                _ => None,
            })
            .collect();
        assert_eq!(got, (0..50).collect::<Vec<u8>>());
        assert!(!c.in_kex() && !s.in_kex());
        assert_eq!(c.session_id().map(<[u8]>::to_vec), first_id);
        // Rekey by time.
        let later = Instant::now() + Duration::from_secs(7200);
        c.handle_time(later).expect("time");
        assert!(c.in_kex());
        pump(&mut c, &mut s, 4096).expect("timed rekey");
        assert!(events(&mut c).contains(&Event::KeysReady { first: false }));
    }

    fn quiet_pair(cipher: &str, rekey_bytes: u64, rekey_packets: u64) -> (Transport, Transport) {
        let (mut c, mut s) = pair(cipher);
        for t in [&mut c, &mut s] {
            t.config.rekey_bytes = rekey_bytes;
            t.config.rekey_packets = rekey_packets;
        }
        pump(&mut c, &mut s, 4096).expect("kex");
        let _ = (events(&mut c), events(&mut s));
        (c, s)
    }

    /// Keys are renewed by volume as packets go, with no timer: the byte limit, the packet
    /// limit, in either direction, and never past the cipher's own limit.
    #[test]
    fn rekey_limits_fire_after_every_packet_without_a_timer() {
        // Bytes: 1 MiB one way with a 64 KiB limit.
        let (mut c, mut s) = quiet_pair("chacha20-poly1305@openssh.com", 64 * 1024, u64::MAX);
        for i in 0..256u32 {
            let mut m = vec![94u8; 4096];
            m[1..5].copy_from_slice(&i.to_be_bytes());
            c.send(m).expect("send");
            pump(&mut c, &mut s, 4096).expect("pump");
        }
        assert!(
            c.key_exchanges() >= 10,
            "client rekeyed {}",
            c.key_exchanges()
        );
        assert_eq!(c.key_exchanges(), s.key_exchanges());
        let got = events(&mut s)
            .into_iter()
            .filter(|e| matches!(e, Event::Message(_)))
            .count();
        assert_eq!(got, 256, "every message arrived across the rekeys");
        // Packets: many small messages the other way, with a packet limit.
        let (mut c, mut s) = quiet_pair("aes256-gcm@openssh.com", u64::MAX, 100);
        for i in 0..1000u32 {
            s.send(vec![94, (i % 256) as u8]).expect("send");
            if i % 50 == 0 {
                pump(&mut c, &mut s, 4096).expect("pump");
            }
        }
        pump(&mut c, &mut s, 4096).expect("pump");
        assert!(
            s.key_exchanges() >= 9,
            "server rekeyed {}",
            s.key_exchanges()
        );
        // The cipher's own limit caps a configured one that is larger.
        assert_eq!(cipher_byte_limit("chacha20-poly1305@openssh.com"), 1 << 30);
        assert_eq!(cipher_byte_limit("aes128-gcm@openssh.com"), 1 << 36);
        let (c, _s) = quiet_pair("chacha20-poly1305@openssh.com", u64::MAX, u64::MAX);
        assert_eq!((c.limit_out, c.limit_in), (1 << 30, 1 << 30));
    }

    /// A peer that starts a key exchange and then says nothing is cut with
    /// KEY_EXCHANGE_FAILED once the deadline passes: messages are held meanwhile.
    #[test]
    fn a_key_exchange_that_stalls_ends_at_its_deadline() {
        let (mut c, mut s) = quiet_pair("aes128-gcm@openssh.com", u64::MAX, u64::MAX);
        let start = Instant::now();
        s.handle_time(start).expect("time");
        // The client's KEXINIT reaches the server; nothing more ever comes.
        c.rekey();
        while let Some(bytes) = c.poll_transmit() {
            s.receive(&bytes).expect("kexinit");
        }
        assert!(s.in_kex());
        // A driver passes the time after every read.
        s.handle_time(start).expect("time");
        s.send(vec![94, 1, 2, 3]).expect("held");
        assert!(s.queued_bytes() > 0, "held messages are counted");
        let deadline = s.poll_timeout().expect("a deadline");
        assert!(deadline <= start + DEFAULT_KEX_TIMEOUT);
        s.handle_time(start + Duration::from_secs(30))
            .expect("not yet");
        let err = s
            .handle_time(start + DEFAULT_KEX_TIMEOUT)
            .expect_err("deadline");
        assert_eq!(err.reason, reason::KEY_EXCHANGE_FAILED, "{err}");
        assert!(s.send(vec![94]).is_err(), "the transport stays failed");
    }

    /// A key exchange's deadline runs from when it started, not from the last time the
    /// transport was told: a connection idle for hours whose peer then starts a rekey is not
    /// cut at once for an exchange that "took" those hours.
    #[test]
    fn a_rekey_after_a_long_quiet_gets_its_whole_deadline() {
        let (mut c, mut s) = quiet_pair("aes128-gcm@openssh.com", u64::MAX, u64::MAX);
        let start = Instant::now();
        s.handle_time(start).expect("time");
        // Two hours of nothing; the driver was not woken. Then the peer's KEXINIT arrives.
        let later = start + Duration::from_secs(2 * 3600);
        c.rekey();
        while let Some(bytes) = c.poll_transmit() {
            s.receive(&bytes).expect("kexinit");
        }
        assert!(s.in_kex());
        // The transport asks for the time at once, to start the deadline from.
        assert!(s.poll_timeout().is_some_and(|t| t <= later));
        s.handle_time(later).expect("the exchange just started");
        assert_eq!(s.poll_timeout(), Some(later + DEFAULT_KEX_TIMEOUT));
        s.handle_time(later + DEFAULT_KEX_TIMEOUT - Duration::from_secs(1))
            .expect("not yet");
        let err = s
            .handle_time(later + DEFAULT_KEX_TIMEOUT)
            .expect_err("deadline");
        assert_eq!(err.reason, reason::KEY_EXCHANGE_FAILED, "{err}");
        // The same for one we start ourselves between two calls (a writer's packet that
        // reached the volume limit, or a rekey asked for by hand).
        let (_c, mut s) = quiet_pair("aes128-gcm@openssh.com", u64::MAX, u64::MAX);
        s.handle_time(start).expect("time");
        s.rekey();
        s.handle_time(later).expect("the exchange just started");
        s.handle_time(later + DEFAULT_KEX_TIMEOUT - Duration::from_secs(1))
            .expect("not yet");
    }

    /// Every KEX_ECDH_INIT costs the server a host-key signature: a second one in the same
    /// exchange is refused, not answered.
    #[test]
    fn a_second_ecdh_init_in_one_exchange_is_refused() {
        let (mut c, mut s) = pair("aes128-gcm@openssh.com");
        let mut from_client = Vec::new();
        while let Some(bytes) = c.poll_transmit() {
            from_client.push(bytes.clone());
            s.receive(&bytes).expect("version and KEXINIT");
        }
        while let Some(bytes) = s.poll_transmit() {
            c.receive(&bytes).expect("server's version and KEXINIT");
        }
        let init = c.poll_transmit().expect("KEX_ECDH_INIT");
        s.receive(&init).expect("first init");
        let answered: Vec<Vec<u8>> = std::iter::from_fn(|| s.poll_transmit()).collect();
        assert!(!answered.is_empty(), "the first one is answered");
        let err = s.receive(&init).expect_err("second init");
        assert!(err.message.contains("second KEX_ECDH_INIT"), "{err}");
        assert_eq!(err.reason, reason::KEY_EXCHANGE_FAILED);
        assert!(s.poll_transmit().is_none(), "no second signature went out");
    }

    /// RFC 4253 §11.4: an unrecognized message is answered with UNIMPLEMENTED (its sequence
    /// number), and the connection goes on.
    #[test]
    fn an_unknown_message_is_answered_unimplemented_and_the_connection_goes_on() {
        let (mut c, mut s) = quiet_pair("chacha20-poly1305@openssh.com", u64::MAX, u64::MAX);
        c.send(vec![200, 1, 2, 3]).expect("send");
        c.send(vec![94, 7]).expect("send");
        while let Some(bytes) = c.poll_transmit() {
            s.receive(&bytes).expect("taken, not fatal");
        }
        assert_eq!(
            events(&mut s),
            vec![Event::Message(Bytes::from_static(&[94, 7]))],
            "the unknown message is not passed up"
        );
        let answers: Vec<Vec<u8>> = std::iter::from_fn(|| s.poll_transmit()).collect();
        assert_eq!(answers.len(), 1, "one UNIMPLEMENTED went back");
        for a in answers {
            c.receive(&a).expect("the client takes it");
        }
        assert!(events(&mut c).is_empty());
    }

    #[test]
    fn a_wrong_host_key_and_a_tampered_packet_end_the_connection() {
        let (mut c, mut s) = pair("aes256-gcm@openssh.com");
        let other = Arc::new(HostKey::from_seed(&[6; 32]).expect("seed"));
        s.config.host_key = Some(other);
        let err = pump(&mut c, &mut s, 4096).expect_err("refused");
        assert!(err.message.contains("not the one pinned"), "{err}");
        assert_eq!(err.reason, reason::HOST_KEY_NOT_VERIFIABLE);
        // Every later call fails the same way.
        assert!(c.receive(b"x").is_err());

        let (mut c, mut s) = pair("aes256-gcm@openssh.com");
        pump(&mut c, &mut s, 4096).expect("kex");
        c.send(b"\x05hello".to_vec()).expect("send");
        let mut bytes = c.poll_transmit().expect("packet");
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        let err = s.receive(&bytes).expect_err("tampered");
        assert!(err.message.contains("authentication"), "{err}");
        assert_eq!(err.reason, reason::MAC_ERROR);
    }

    /// An idle session holds no read buffer: not after packets were taken, and not after a
    /// read that found nothing (what every socket read that emptied the socket is followed by).
    #[test]
    fn no_read_buffer_is_kept_between_reads() {
        let (mut client, mut server) = pair("aes256-gcm@openssh.com");
        pump(&mut client, &mut server, 4096).unwrap();
        assert_eq!(server.receive_buffer_capacity(), 0, "after bytes handed in");
        client.send(b"\x05ping".to_vec()).expect("send");
        let wire: Vec<u8> = std::iter::from_fn(|| client.poll_transmit())
            .flatten()
            .collect();
        let got = server.receive_with(|buf| {
            buf.reserve(64 * 1024);
            buf.extend_from_slice(&wire);
            Ok::<usize, std::io::Error>(wire.len())
        });
        assert_eq!(got.unwrap().unwrap(), wire.len());
        assert_eq!(server.receive_buffer_capacity(), 0);
        let nothing = server.receive_with(|buf| {
            buf.reserve(64 * 1024);
            Err::<usize, _>(std::io::Error::from(std::io::ErrorKind::WouldBlock))
        });
        assert!(nothing.unwrap().is_err());
        assert_eq!(server.receive_buffer_capacity(), 0);
    }

    #[test]
    fn strict_key_exchange_refuses_anything_else_during_the_first_exchange() {
        let (mut c, mut s) = pair("aes128-gcm@openssh.com");
        // The client's version line and KEXINIT reach the server...
        while let Some(bytes) = c.poll_transmit() {
            s.receive(&bytes).expect("version and KEXINIT");
        }
        // ...then an IGNORE, as the Terrapin attack would slip in.
        let ignore = Framing::CLEAR.frame(&[msg::IGNORE, 0, 0, 0, 0], |p| p.fill(0));
        let err = s.receive(&ignore).expect_err("strict");
        assert!(err.message.contains("strict"), "{err}");
    }

    #[test]
    fn messages_before_keys_or_out_of_place_are_refused() {
        let (mut c, mut s) = pair("chacha20-poly1305@openssh.com");
        let id = c.poll_transmit().expect("version");
        s.receive(&id).expect("version");
        let early = Framing::CLEAR.frame(&[msg::SERVICE_REQUEST, 0, 0, 0, 0], |p| p.fill(0));
        assert!(s.receive(&early).is_err());
        let (mut c, mut s) = pair("chacha20-poly1305@openssh.com");
        pump(&mut c, &mut s, 4096).expect("kex");
        c.sealer.as_ref().expect("keys");
        c.send(vec![msg::KEX_ECDH_REPLY]).expect("queued");
        assert!(pump(&mut c, &mut s, 4096).is_err());
    }

    #[test]
    fn hostile_bytes_after_the_version_never_panic() {
        let mut seed = 23u64;
        for _ in 0..300 {
            let (mut c, mut s) = pair("aes128-gcm@openssh.com");
            let id = c.poll_transmit().expect("version");
            s.receive(&id).expect("version");
            let kexinit = c.poll_transmit().expect("kexinit");
            let mut bytes = kexinit.clone();
            for _ in 0..(crate::xorshift(&mut seed) % 4 + 1) {
                let at = (crate::xorshift(&mut seed) as usize) % bytes.len();
                bytes[at] = crate::xorshift(&mut seed) as u8;
            }
            let _ = s.receive(&bytes);
            let _ = pump(&mut c, &mut s, 5);
        }
    }
}
