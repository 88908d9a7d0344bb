//! One SSH connection as a state machine with no I/O: the [`Transport`] carrying the
//! authentication service and then the connection protocol ([`Connection`]).
//!
//! The caller feeds received bytes to [`Session::receive`], writes out what
//! [`Session::poll_transmit`] returns, answers the [`Event`]s from [`Session::poll_event`], and
//! passes the time to [`Session::handle_time`] when [`Session::poll_timeout`] says. Channels
//! are driven through [`Session::connection`]. Nothing here reads a clock or a socket.

use std::collections::VecDeque;
use std::time::Instant;

use crate::auth::{self, ClientAuth, Credential, Decision, Question, ServerAuth};
use crate::channel::{self, Connection, Limits};
use crate::messages::{Disconnect, ExtInfo, reason};
use crate::msg;
use crate::transport::{self, Role, Transport};
use crate::version::Identification;
use crate::wire::Reader;

/// Which end, with what it needs for authentication.
pub enum Side {
    /// Accepts logins: offers these methods and allows this many failed attempts.
    Server {
        /// Methods offered (see [`auth::method`]).
        methods: Vec<&'static str>,
        /// Failed attempts before the connection is cut.
        max_attempts: u32,
    },
    /// Logs in as `user` with `credentials`, tried in order.
    Client {
        /// Login name.
        user: String,
        /// Keys and passwords.
        credentials: Vec<Credential>,
    },
}

/// What happened.
#[derive(Debug)]
pub enum Event {
    /// The server asks the application; answer with [`Session::decide`].
    Auth(Question),
    /// The server refused an attempt (for the audit): the user named and why. Its
    /// USERAUTH_FAILURE waits for [`Session::decide`] (with any decision), so that the
    /// application can pace it like the failures it decides itself.
    AuthRefused {
        /// The login name.
        user: String,
        /// Why.
        why: String,
    },
    /// Authentication succeeded: channels may open.
    Authenticated {
        /// The login name.
        user: String,
    },
    /// The server's banner (client side).
    Banner(String),
    /// Something on a channel or a global request.
    Connection(channel::Event),
    /// Client: the server proved, in this session, that it holds these host keys (blobs),
    /// which the host key check did not trust (see [`crate::hostkeys`]); or why it did not.
    HostKeys(Result<Vec<Vec<u8>>, String>),
    /// The peer ended the connection.
    Disconnected(Disconnect),
}

/// Why the session ended; the caller closes the socket after writing what is queued (a
/// DISCONNECT naming the reason, when there was one to send).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionError(pub String);

impl std::fmt::Display for SessionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SessionError {}

enum Auth {
    Server {
        auth: Box<ServerAuth>,
        service_accepted: bool,
    },
    Client(Box<ClientAuth>),
    /// Logged in: nothing of the exchange is kept.
    Done,
}

/// One SSH connection.
pub struct Session {
    transport: Transport,
    auth: Auth,
    authenticated: bool,
    connection: Connection,
    events: VecDeque<Event>,
    failed: Option<SessionError>,
    /// Client: the host keys a proof was asked of (each once per connection).
    host_keys_asked: Vec<Vec<u8>>,
}

impl Session {
    /// A session starting at `now`; its identification and first KEXINIT are queued.
    pub fn new(mut config: transport::Config, side: Side, limits: Limits, now: Instant) -> Session {
        let auth = match side {
            Side::Server {
                methods,
                max_attempts,
            } => {
                config.role = Role::Server;
                if config.ext_info.is_none() {
                    config.ext_info =
                        Some(ExtInfo::server_sig_algs(&auth::SIGNATURE_ALGORITHMS).encode());
                }
                Auth::Server {
                    auth: Box::new(ServerAuth::new(methods, max_attempts)),
                    service_accepted: false,
                }
            }
            Side::Client { user, credentials } => {
                config.role = Role::Client;
                Auth::Client(Box::new(ClientAuth::new(&user, credentials)))
            }
        };
        Session {
            transport: Transport::new(config, now),
            auth,
            authenticated: false,
            connection: Connection::new(limits),
            events: VecDeque::new(),
            failed: None,
            host_keys_asked: Vec::new(),
        }
    }

    /// Lets go of what an idle connection does not need: the buffers of empty queues, and the
    /// authentication exchange once it succeeded. A driver calls it before it waits.
    pub fn release_idle(&mut self) {
        if self.authenticated && self.events.is_empty() {
            self.auth = Auth::Done;
        }
        shrink(&mut self.events);
        self.transport.release_idle();
        self.connection.release_idle();
    }

    /// The peer's identification, once it arrived.
    pub fn peer_id(&self) -> Option<&Identification> {
        self.transport.peer_id()
    }

    /// Why the session ended, once it did (a DISCONNECT either way, or a protocol error).
    pub fn failure(&self) -> Option<&SessionError> {
        self.failed.as_ref()
    }

    /// Whether authentication succeeded.
    pub fn authenticated(&self) -> bool {
        self.authenticated
    }

    /// The channels and global requests.
    pub fn connection(&mut self) -> &mut Connection {
        &mut self.connection
    }

    /// The transport (for rekeying and keepalive bookkeeping).
    pub fn transport(&mut self) -> &mut Transport {
        &mut self.transport
    }

    /// Bytes to write to the peer, in order.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.flush_connection();
        self.transport.poll_transmit()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Session::handle_time`] next has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.transport.poll_timeout()
    }

    /// Passes the time: rekeying by time, and the deadline of a key exchange under way (past
    /// it the session fails with `KEY_EXCHANGE_FAILED`; see [`Session::failure`]).
    pub fn handle_time(&mut self, now: Instant) {
        if self.failed.is_some() {
            return;
        }
        if let Err(e) = self.transport.handle_time(now) {
            self.fail(e.reason, e.message);
        }
    }

    /// Bytes queued toward the peer and not yet handed to [`Session::poll_transmit`]: the
    /// connection layer's messages, sealed packets, and messages held during a key exchange.
    pub fn queued_bytes(&self) -> usize {
        self.connection
            .queued_bytes()
            .saturating_add(self.transport.queued_bytes())
    }

    /// Sends `keepalive@openssh.com`; any answer (success or failure) proves the peer alive.
    pub fn send_keepalive(&mut self, want_reply: bool) {
        self.connection
            .global_request(&channel::GlobalRequest::Keepalive, want_reply);
    }

    /// Ends the connection with DISCONNECT; the caller closes after writing what is queued.
    pub fn disconnect(&mut self, reason: u32, description: &str) {
        self.flush_connection();
        self.transport.disconnect(reason, description);
        self.failed
            .get_or_insert_with(|| SessionError(format!("disconnected: {description}")));
    }

    /// Sends up to `data.len()` bytes of data on `channel` (extended data with `code`), as
    /// many as its window allows, framed straight from `data`; returns how many were taken.
    pub fn send_data(
        &mut self,
        channel: channel::ChannelId,
        code: Option<u32>,
        mut data: &[u8],
    ) -> Result<usize, channel::ConnectionError> {
        if !self.authenticated || self.failed.is_some() {
            return Err(channel::ConnectionError("the session is not open".into()));
        }
        // What the connection queued goes first: channel messages stay in order.
        self.flush_connection();
        let mut taken = 0usize;
        while let Some((header, n)) = self.connection.data_header(channel, code, data.len())? {
            let (chunk, rest) = data.split_at(n.min(data.len()));
            if let Err(e) = self.transport.send_parts(header.as_slice(), chunk) {
                return Err(channel::ConnectionError(e.message));
            }
            taken = taken.saturating_add(n);
            data = rest;
        }
        Ok(taken)
    }

    fn flush_connection(&mut self) {
        if !self.authenticated || self.failed.is_some() {
            return;
        }
        while let Some(m) = self.connection.poll_transmit() {
            if self.transport.send(m).is_err() {
                return;
            }
        }
    }

    fn check(&self) -> Result<(), SessionError> {
        match &self.failed {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Fails the session: a DISCONNECT with `code` and the reason goes out first.
    fn fail(&mut self, code: u32, why: String) -> SessionError {
        let e = SessionError(why);
        if self.failed.is_none() {
            self.transport.disconnect(code, &e.0);
            self.failed = Some(e.clone());
        }
        e
    }

    /// Takes bytes from the peer.
    pub fn receive(&mut self, bytes: &[u8]) -> Result<(), SessionError> {
        self.check()?;
        if let Err(e) = self.transport.receive(bytes) {
            // A broken packet or exchange: say so to the peer, then stop.
            return Err(self.fail(e.reason, e.message));
        }
        self.take_transport_events()
    }

    /// The transport's read buffer and incoming keys, lent for a read and the decryption of
    /// what it completed, made without holding the session (see
    /// [`Transport::take_read_buffer`]).
    pub fn take_read_buffer(&mut self) -> Result<transport::ReadLease, SessionError> {
        self.check()?;
        match self.transport.take_read_buffer() {
            Ok(buf) => Ok(buf),
            Err(e) => Err(self.fail(e.reason, e.message)),
        }
    }

    /// Takes back the lent read buffer after a read (`read` true) or a failed one, and handles
    /// the packets it completed.
    pub fn give_read_buffer(
        &mut self,
        lease: transport::ReadLease,
        read: bool,
    ) -> Result<(), SessionError> {
        // The transport takes its keys back first, whatever the session's state.
        let given = self.transport.give_read_buffer(lease, read);
        self.check()?;
        if let Err(e) = given {
            return Err(self.fail(e.reason, e.message));
        }
        self.take_transport_events()
    }

    fn take_transport_events(&mut self) -> Result<(), SessionError> {
        while let Some(event) = self.transport.poll_event() {
            match event {
                transport::Event::PeerVersion(_) => {}
                transport::Event::KeysReady { first } => {
                    if first && matches!(self.auth, Auth::Client(_)) {
                        let session_id = self.session_id();
                        let start = match &mut self.auth {
                            Auth::Client(client) => client.start(&session_id),
                            Auth::Server { .. } | Auth::Done => Ok(Vec::new()),
                        };
                        match start {
                            Ok(messages) => {
                                for m in messages {
                                    self.send(m)?;
                                }
                            }
                            Err(e) => {
                                return Err(self.fail(reason::NO_MORE_AUTH_METHODS_AVAILABLE, e.0));
                            }
                        }
                    }
                }
                transport::Event::Disconnected(d) => {
                    self.failed = Some(SessionError(format!(
                        "the peer disconnected: {}",
                        d.description
                    )));
                    self.events.push_back(Event::Disconnected(d));
                    return Ok(());
                }
                transport::Event::Message(payload) => self.dispatch(payload)?,
            }
        }
        self.take_connection_events();
        Ok(())
    }

    fn send(&mut self, payload: Vec<u8>) -> Result<(), SessionError> {
        self.transport
            .send(payload)
            .map_err(|e| SessionError(e.message))
    }

    fn take_connection_events(&mut self) {
        while let Some(e) = self.connection.poll_event() {
            match e {
                channel::Event::HostKeys(keys) => self.host_keys_announced(keys),
                channel::Event::HostKeysProof { keys, answer } => {
                    let result = match answer {
                        Some(answer) => {
                            crate::hostkeys::check_answer(&self.session_id(), &keys, &answer)
                                .map(|()| keys)
                        }
                        None => Err("the server refused to prove its new host keys".into()),
                    };
                    self.events.push_back(Event::HostKeys(result));
                }
                e => self.events.push_back(Event::Connection(e)),
            }
        }
    }

    /// Client: asks proof of each announced key that the check does not trust and that can
    /// be checked (Ed25519), once per key and connection (a burrow relay announces again when
    /// its keys change during the session).
    fn host_keys_announced(&mut self, keys: Vec<Vec<u8>>) {
        /// Keys asked about in one connection, at most: a relay rotates one key at a time.
        const MAX_ASKED: usize = 64;
        let config = self.transport.config();
        if config.role != Role::Client || !config.learn_host_keys {
            return;
        }
        let unknown: Vec<Vec<u8>> = keys
            .into_iter()
            .filter(|k| {
                Reader::new(k).utf8(64, "key type") == Ok(crate::kex::SSH_ED25519)
                    && !self.host_keys_asked.contains(k)
                    && !self.transport.host_key_trusted(k)
            })
            .collect();
        // One request per key: a key the server cannot prove (another relay's, announced so
        // that clients keep it) then spoils only its own proof.
        for key in unknown {
            if self.host_keys_asked.len() >= MAX_ASKED {
                return;
            }
            self.host_keys_asked.push(key.clone());
            self.connection.prove_host_keys(vec![key]);
        }
    }

    /// Server: once authenticated, announces the host keys and stands ready to prove them.
    fn announce_host_keys(&mut self) {
        let config = self.transport.config();
        if config.role != Role::Server || !config.announce_host_keys {
            return;
        }
        let (extra, peers) = (
            config.extra_host_keys.clone(),
            config.peer_host_keys.clone(),
        );
        self.announce(extra, peers);
    }

    /// Server: announces the host keys again because they changed while the session is up: the
    /// key exchange's, now `extra` besides it, and `peers`; proofs are made with these from
    /// now on. Only for a client that takes more than one announcement (a burrow agent):
    /// OpenSSH ends the connection at a second one.
    pub fn reannounce_host_keys(
        &mut self,
        extra: Vec<std::sync::Arc<crate::kex::HostKey>>,
        peers: Vec<Vec<u8>>,
    ) {
        let config = self.transport.config();
        if !self.authenticated
            || self.failed.is_some()
            || config.role != Role::Server
            || !config.announce_host_keys
        {
            return;
        }
        self.announce(extra, peers);
    }

    fn announce(&mut self, extra: Vec<std::sync::Arc<crate::kex::HostKey>>, peers: Vec<Vec<u8>>) {
        let mut held: Vec<std::sync::Arc<crate::kex::HostKey>> = Vec::new();
        let mut blobs: Vec<Vec<u8>> = Vec::new();
        for key in self
            .transport
            .config()
            .host_key
            .iter()
            .cloned()
            .chain(extra)
        {
            let blob = key.blob();
            if !blobs.contains(&blob) {
                blobs.push(blob);
                held.push(key);
            }
        }
        for peer in peers {
            if !blobs.contains(&peer) {
                blobs.push(peer);
            }
        }
        let session_id = self.session_id();
        self.connection.set_prover(held, session_id);
        self.connection.announce_host_keys(&blobs);
    }

    fn session_id(&self) -> Vec<u8> {
        self.transport.session_id().unwrap_or_default().to_vec()
    }

    fn dispatch(&mut self, payload: bytes::Bytes) -> Result<(), SessionError> {
        let number = payload.first().copied().unwrap_or(0);
        match number {
            msg::EXT_INFO => {
                // The client learns nothing it needs from it: burrow signs with ed25519, or
                // with rsa-sha2-512, which every server that accepts RSA keys takes.
                Ok(())
            }
            msg::SERVICE_REQUEST => self.service_request(&payload),
            msg::SERVICE_ACCEPT
            | msg::USERAUTH_FAILURE
            | msg::USERAUTH_SUCCESS
            | msg::USERAUTH_BANNER
            | msg::USERAUTH_PK_OK => self.client_auth(&payload),
            msg::USERAUTH_REQUEST | msg::USERAUTH_INFO_RESPONSE => {
                self.server_auth(payload.to_vec())
            }
            80..=127 => {
                if !self.authenticated {
                    return Err(self.fail(
                        reason::PROTOCOL_ERROR,
                        format!("connection message {number} before authentication"),
                    ));
                }
                if let Err(e) = self.connection.receive(payload) {
                    return Err(self.fail(reason::PROTOCOL_ERROR, e.0));
                }
                Ok(())
            }
            _ => Err(self.fail(
                reason::PROTOCOL_ERROR,
                format!("message {number} out of place"),
            )),
        }
    }

    fn service_request(&mut self, payload: &[u8]) -> Result<(), SessionError> {
        let mut r = Reader::new(payload);
        let _ = r.u8("message number");
        let name = r.utf8(256, "service name").map(str::to_string);
        let Auth::Server {
            service_accepted, ..
        } = &mut self.auth
        else {
            return Err(self.fail(
                reason::PROTOCOL_ERROR,
                "a service request sent to a client".into(),
            ));
        };
        match name {
            Ok(n) if n == auth::USERAUTH_SERVICE && !*service_accepted => {
                *service_accepted = true;
                let mut w = crate::wire::Writer::message(msg::SERVICE_ACCEPT);
                w.string(n.as_bytes());
                self.send(w.into_bytes())
            }
            // Asked again before success (paramiko does, once per attempt): answered in order
            // with the authentication requests, which may be waiting on a question.
            Ok(n) if n == auth::USERAUTH_SERVICE && !self.authenticated => {
                self.server_auth(payload.to_vec())
            }
            Ok(n) => Err(self.fail(
                reason::SERVICE_NOT_AVAILABLE,
                format!("service {n:?} is not available"),
            )),
            Err(e) => Err(self.fail(reason::PROTOCOL_ERROR, format!("SERVICE_REQUEST: {e}"))),
        }
    }

    fn client_auth(&mut self, payload: &[u8]) -> Result<(), SessionError> {
        if matches!(self.auth, Auth::Done) {
            return Err(self.fail(
                reason::PROTOCOL_ERROR,
                "an authentication message after success".into(),
            ));
        }
        let session_id = self.session_id();
        let Auth::Client(client) = &mut self.auth else {
            return Err(self.fail(
                reason::PROTOCOL_ERROR,
                "an authentication answer sent to a server".into(),
            ));
        };
        if client.done() {
            return Err(self.fail(
                reason::PROTOCOL_ERROR,
                "an authentication message after success".into(),
            ));
        }
        let step = match client.receive(payload, &session_id) {
            Ok(step) => step,
            Err(e) => {
                return Err(self.fail(reason::NO_MORE_AUTH_METHODS_AVAILABLE, e.0));
            }
        };
        if let Some(banner) = client.take_banner() {
            self.events.push_back(Event::Banner(banner));
        }
        for m in step.send {
            self.send(m)?;
        }
        if step.success {
            self.authenticated = true;
            let user = match &self.auth {
                Auth::Client(c) => c.user().to_string(),
                Auth::Server { .. } | Auth::Done => String::new(),
            };
            self.events.push_back(Event::Authenticated { user });
        }
        Ok(())
    }

    fn server_auth(&mut self, payload: Vec<u8>) -> Result<(), SessionError> {
        if self.authenticated && matches!(self.auth, Auth::Done) {
            // RFC 4252 §5.1: requests after success are ignored.
            return Ok(());
        }
        let session_id = self.session_id();
        let Auth::Server {
            auth,
            service_accepted,
        } = &mut self.auth
        else {
            return Err(self.fail(
                reason::PROTOCOL_ERROR,
                "an authentication request sent to a client".into(),
            ));
        };
        if !*service_accepted {
            return Err(self.fail(
                reason::PROTOCOL_ERROR,
                "an authentication request before the service request".into(),
            ));
        }
        let step = auth.receive(payload, &session_id);
        self.server_step(step)
    }

    /// Answers the authentication question out.
    pub fn decide(&mut self, decision: Decision) -> Result<(), SessionError> {
        self.check()?;
        let session_id = self.session_id();
        let Auth::Server { auth, .. } = &mut self.auth else {
            return Err(SessionError("a client has no questions to decide".into()));
        };
        let step = auth.decide(decision, &session_id);
        self.server_step(step)
    }

    fn server_step(
        &mut self,
        step: Result<auth::ServerStep, auth::AuthError>,
    ) -> Result<(), SessionError> {
        let step = match step {
            Ok(s) => s,
            Err(e) => return Err(self.fail(reason::NO_MORE_AUTH_METHODS_AVAILABLE, e.0)),
        };
        for m in step.send {
            self.send(m)?;
        }
        if let Some((user, why)) = step.refused {
            self.events.push_back(Event::AuthRefused { user, why });
        }
        if let Some(q) = step.question {
            self.events.push_back(Event::Auth(q));
        }
        if let Some(user) = step.success {
            self.authenticated = true;
            self.announce_host_keys();
            self.events.push_back(Event::Authenticated { user });
        }
        Ok(())
    }
}

/// Frees an empty queue's buffer.
pub(crate) fn shrink<T>(queue: &mut VecDeque<T>) {
    if queue.is_empty() && queue.capacity() > 0 {
        *queue = VecDeque::new();
    }
}
