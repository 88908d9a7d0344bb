//! The russh handler of one connection: authentication, then dispatch to device or operator rules.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Instant;

use burrow_io::activity::Activity;
use burrow_io::splice::Flow;
use burrow_proto::liveness::Schedule;
use burrow_proto::name::Login;
use russh::keys::PublicKey;
use russh::server::{Auth, Handler, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, ChannelOpenFailure};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::Relay;
use crate::audit::Outcome;
use crate::gate::Permit;
use crate::registry::DeviceSession;

/// Who a connection authenticated as.
pub(crate) enum Principal {
    /// Not yet authenticated.
    Nobody,
    /// A device, with its session once registered.
    Device {
        name: String,
        key_fingerprint: String,
        session: Option<Arc<DeviceSession>>,
    },
    /// An operator.
    Operator(Arc<crate::operator::OperatorSession>),
}

pub(crate) struct Conn {
    pub(crate) relay: Arc<Relay>,
    pub(crate) peer: SocketAddr,
    pub(crate) cut: CancellationToken,
    pub(crate) principal: Principal,
    /// When bytes last moved on the connection.
    activity: Arc<Activity>,
    /// The socket (a duplicate), until authentication tells how to watch it.
    socket: Option<OwnedFd>,
    permit: Option<Permit>,
    authed: Option<oneshot::Sender<()>>,
}

impl Conn {
    pub(crate) fn new(
        relay: Arc<Relay>,
        peer: SocketAddr,
        cut: CancellationToken,
        permit: Permit,
        authed: oneshot::Sender<()>,
        activity: Arc<Activity>,
        socket: Option<OwnedFd>,
    ) -> Self {
        Conn {
            relay,
            peer,
            cut,
            principal: Principal::Nobody,
            activity,
            socket,
            permit: Some(permit),
            authed: Some(authed),
        }
    }

    fn reject(&self, login: &str, why: &str) -> Auth {
        self.relay
            .audit
            .record("auth", login, &self.peer.to_string(), Outcome::Denied, why);
        // Both methods stay open until the attempt limit: a mistyped password must not leave a
        // PuTTY or OpenSSH user with "Permission denied (publickey)" and no second try.
        Auth::Reject {
            proceed_with_methods: Some(crate::config::auth_methods()),
            partial_success: false,
        }
    }

    /// Checks a public key for `user` without changing state.
    fn key_allowed(&self, user: &str, key: &PublicKey) -> Result<KeyMatch, String> {
        let login = Login::parse(user).map_err(|e| e.to_string())?;
        let fp = burrow_io::keys::fingerprint(key);
        let store = &self.relay.store;
        match &login {
            Login::Plain(name) => {
                if store.device_has_key(name, &fp).map_err(|e| e.to_string())? {
                    return Ok(KeyMatch::Device(name.clone(), fp));
                }
                if store
                    .operator_has_key(name, &fp)
                    .map_err(|e| e.to_string())?
                {
                    return Ok(KeyMatch::Operator(login, fp));
                }
            }
            Login::Console { operator, .. } => {
                if store
                    .operator_has_key(operator, &fp)
                    .map_err(|e| e.to_string())?
                {
                    return Ok(KeyMatch::Operator(login, fp));
                }
            }
        }
        Err(format!("key {fp} is not registered for {user}"))
    }

    fn become_operator(&mut self, login: Login, method: &str) -> Result<Auth, russh::Error> {
        let name = login.principal().to_string();
        match self.relay.store.operator(&name) {
            Ok(Some(_)) => {}
            Ok(None) => return Ok(self.reject(&login.to_string(), "operator vanished")),
            Err(e) => return Ok(self.reject(&login.to_string(), &e.to_string())),
        }
        self.relay.audit.record(
            "auth",
            &login.to_string(),
            &self.peer.to_string(),
            Outcome::Ok,
            &format!("operator authenticated by {method}"),
        );
        let op = Arc::new(crate::operator::OperatorSession::new(
            self.relay.next_id(),
            login,
            self.cut.clone(),
        ));
        self.relay.operators.insert(op.clone());
        self.principal = Principal::Operator(op);
        Ok(Auth::Accept)
    }
}

enum KeyMatch {
    Device(String, String),
    Operator(Login, String),
}

impl Handler for Conn {
    type Error = russh::Error;

    async fn auth_none(&mut self, _user: &str) -> Result<Auth, Self::Error> {
        Ok(Auth::reject())
    }

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        // Refusing here spares the signature; each refused key counts as a failed attempt
        // (bounded by max_auth_attempts per connection).
        Ok(match self.key_allowed(user, offer.public_key) {
            Ok(_) => Auth::Accept,
            Err(why) => self.reject(user, &why),
        })
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        match self.key_allowed(user, key.public_key) {
            Ok(KeyMatch::Device(name, fp)) => {
                self.relay.audit.record(
                    "auth",
                    &name,
                    &self.peer.to_string(),
                    Outcome::Ok,
                    &format!("device authenticated with key {fp}"),
                );
                self.principal = Principal::Device {
                    name,
                    key_fingerprint: fp,
                    session: None,
                };
                Ok(Auth::Accept)
            }
            Ok(KeyMatch::Operator(login, _fp)) => self.become_operator(login, "public key"),
            Err(why) => Ok(self.reject(user, &why)),
        }
    }

    async fn auth_password(&mut self, user: &str, password: &str) -> Result<Auth, Self::Error> {
        let login = match Login::parse(user) {
            Ok(l) => l,
            Err(e) => return Ok(self.reject(user, &e.to_string())),
        };
        let name = login.principal().to_string();
        let ip = self.peer.ip();
        let throttle = &self.relay.throttle;
        let login_state = match self.relay.store.operator_password(&name) {
            Ok(Some(l)) => l,
            Ok(None) => {
                throttle.failed(ip, None, Instant::now());
                return Ok(self.reject(
                    user,
                    "password login: no operator with a password of that name",
                ));
            }
            Err(e) => return Ok(self.reject(user, &e.to_string())),
        };
        if let Some(until) = login_state.locked_until {
            return Ok(self.reject(
                user,
                &format!(
                    "password login locked until {} after repeated wrong passwords (lift it with `burrow relay operator unlock {name}`)",
                    burrow_proto::time::format_rfc3339(until)
                ),
            ));
        }
        let Some(_checking) = throttle.begin(ip) else {
            return Ok(self.reject(user, "too many password checks at once from this address"));
        };
        // Each failure makes the next guess (from this address, or at this operator) wait longer.
        let delay = throttle.delay(ip, &name, Instant::now());
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let (hash, password) = (login_state.hash, password.to_string());
        // argon2 costs tens of milliseconds of CPU: keep it off the async workers.
        let ok =
            tokio::task::spawn_blocking(move || crate::admin::verify_password(&hash, &password))
                .await
                .unwrap_or(false);
        if ok {
            throttle.succeeded(ip, &name);
            return self.become_operator(login, "password");
        }
        let in_a_row = throttle.failed(ip, Some(&name), Instant::now());
        let config = &self.relay.config;
        if in_a_row >= config.password_lock_after {
            let until = crate::store::now()
                + i64::try_from(config.password_lock_for.as_secs()).unwrap_or(i64::MAX / 2);
            if let Err(e) = self.relay.store.lock_operator(&name, until) {
                tracing::error!("{e}");
            }
            throttle.forget_operator(&name);
            self.relay.audit.record(
                "lock",
                &name,
                &self.peer.to_string(),
                Outcome::Denied,
                &format!(
                    "{in_a_row} wrong passwords in a row: password login locked until {} (lift it with `burrow relay operator unlock {name}`)",
                    burrow_proto::time::format_rfc3339(until)
                ),
            );
        }
        Ok(self.reject(user, "wrong password"))
    }

    async fn auth_succeeded(&mut self, session: &mut Session) -> Result<(), Self::Error> {
        self.permit = None;
        let burrow = session
            .remote_sshid()
            .starts_with(crate::config::BURROW_SSH_ID_PREFIX.as_bytes());
        // An agent that declared its keepalive schedule is watched by its silence alone; every
        // other client keeps the TCP keepalive set at accept.
        let schedule = match &self.principal {
            Principal::Device { .. } if burrow => {
                Schedule::from_ssh_id(&String::from_utf8_lossy(session.remote_sshid()))
            }
            _ => None,
        };
        if let (Some(_), Some(socket)) = (&schedule, &self.socket)
            && let Err(e) = crate::server::quiet_socket(socket)
        {
            tracing::debug!("cannot turn TCP keepalive off: {e}");
        }
        self.socket = None;
        if let Principal::Operator(op) = &self.principal {
            let _ = op.handle.set(session.handle());
        }
        if let Some(tx) = self.authed.take() {
            let _ = tx.send(());
        }
        if let Principal::Device {
            name,
            key_fingerprint,
            session: slot,
        } = &mut self.principal
        {
            let carrier = crate::registry::Carrier {
                peer: self.peer,
                handle: session.handle(),
                cut: self.cut.clone(),
                // Both ends speak burrow's stream credit only when the device runs the agent.
                flow: if burrow {
                    Flow::Credit
                } else {
                    Flow::Capped(self.relay.config.stalled_stream_timeout)
                },
                activity: self.activity.clone(),
                schedule,
            };
            let dev = Arc::new(DeviceSession::new(
                self.relay.next_id(),
                name.clone(),
                key_fingerprint.clone(),
                carrier,
            ));
            *slot = Some(dev.clone());
            crate::device::came_online(&self.relay, dev);
        }
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        match &self.principal {
            Principal::Operator(op) => {
                reply.accept().await;
                crate::operator::session_opened(self.relay.clone(), op.clone(), channel);
            }
            Principal::Device { name, .. } => {
                self.relay.audit.record(
                    "session",
                    name,
                    "shell",
                    Outcome::Denied,
                    "devices get no shell, exec or pty",
                );
                reply
                    .reject(ChannelOpenFailure::Other {
                        code: 1,
                        reason: "devices get no session on the relay".into(),
                    })
                    .await;
            }
            Principal::Nobody => {}
        }
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        match &self.principal {
            // The command itself is run by the task that owns the channel.
            Principal::Operator(_) => session.channel_success(channel)?,
            _ => session.channel_failure(channel)?,
        }
        Ok(())
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        match &self.principal {
            Principal::Operator(_) => session.channel_success(channel)?,
            _ => session.channel_failure(channel)?,
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        match self.principal {
            Principal::Operator(_) => session.channel_success(channel)?,
            _ => session.channel_failure(channel)?,
        }
        Ok(())
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _x11_auth_protocol: &str,
        _x11_auth_cookie: &str,
        _x11_screen_number: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Nothing on the relay draws windows, and a forwarded display is a way into the client.
        tracing::info!("X11 forwarding refused: the relay forwards no displays");
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let name = burrow_proto::text::clean(name, burrow_proto::text::MAX_NAME_CHARS);
        tracing::info!("subsystem {name:?} refused: the relay offers none");
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        match &self.principal {
            Principal::Device {
                session: Some(dev), ..
            } => Ok(crate::device::forward(&self.relay, dev, address, port).await),
            _ => {
                tracing::info!("tcpip-forward refused: only devices expose endpoints");
                Ok(false)
            }
        }
    }

    async fn cancel_tcpip_forward(
        &mut self,
        address: &str,
        port: u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        match &self.principal {
            Principal::Device {
                session: Some(dev), ..
            } => Ok(crate::device::cancel_forward(
                &self.relay,
                dev,
                address,
                port,
            )),
            _ => Ok(false),
        }
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        originator_address: &str,
        originator_port: u32,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let request = crate::operator::StreamRequest {
            host: host_to_connect.to_string(),
            port: port_to_connect,
            originator: format!("{originator_address}:{originator_port}"),
            originator_address: originator_address.to_string(),
            originator_port,
        };
        match &self.principal {
            Principal::Operator(op) => crate::operator::open_stream(
                self.relay.clone(),
                op.clone(),
                request,
                channel,
                reply,
            ),
            Principal::Device {
                session: Some(dev), ..
            } => {
                crate::device::open_stream(self.relay.clone(), dev.clone(), request, channel, reply)
            }
            _ => {}
        }
        Ok(())
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        match &self.principal {
            Principal::Device {
                session: Some(dev), ..
            } => {
                // The session is over: whoever waits for its end (a takeover) may go on.
                dev.cut.cancel();
                crate::device::went_offline(&self.relay, dev)
            }
            Principal::Operator(op) => self.relay.operators.remove(op.id),
            _ => {}
        }
    }
}
