//! The SSH handler of one connection: authentication, then dispatch to device or operator rules.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Instant;

use burrow_io::activity::Activity;
use burrow_io::keys::PublicKey;
use burrow_proto::liveness::Schedule;
use burrow_proto::name::Login;
use burrow_ssh::auth::{Decision, Question, method};
use burrow_ssh::channel::{GlobalRequest, OpenKind, open_failure};
use burrow_ssh::driver::{GlobalAnswer, Handle, Handler, Offer};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::Relay;
use crate::audit::Outcome;
use crate::gate::Permit;
use crate::metrics::AuthFailure;
use crate::registry::DeviceSession;
use crate::store::Principal as KeyOwner;

/// Who a connection authenticated as.
pub(crate) enum Principal {
    /// Not yet authenticated.
    Nobody,
    /// A device, with its session once registered.
    Device {
        name: String,
        key_fingerprint: String,
        session: Option<Arc<DeviceSession>>,
        /// It waits for approval: told so and disconnected.
        pending: bool,
        /// Its key was seen from two places at once.
        quarantined: bool,
    },
    /// An agent enrolling with a join token (`+enroll`).
    Enroller {
        /// The token it proved.
        token: String,
    },
    /// An operator.
    Operator(Arc<crate::operator::OperatorSession>),
    /// The relay's own command line on its machine (`control`).
    Control,
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
    /// When the authentication attempt being answered was taken up (refusals are paced from it).
    paced_from: Instant,
    /// An operator whose password was right and whose TOTP code is asked next.
    code_for: Option<Login>,
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
            paced_from: Instant::now(),
            code_for: None,
        }
    }

    /// Audits a refusal; every method stays open until the attempt limit, so a mistyped
    /// password does not leave a PuTTY or OpenSSH user with "Permission denied (publickey)"
    /// and no second try.
    /// Refuses a login; a refused password is an operator's (only operators have one), a
    /// refused key may be anyone's.
    fn reject(&self, login: &str, why: &str, kind: AuthFailure) -> Decision {
        self.relay.metrics.auth_failed(kind);
        let peer = self.peer.to_string();
        match kind {
            AuthFailure::UnknownKey | AuthFailure::Other => {
                self.relay
                    .audit
                    .record("auth", login, &peer, Outcome::Denied, why)
            }
            _ => self.relay.audit.record_about(
                crate::audit::About::Operator,
                "auth",
                login,
                &peer,
                Outcome::Denied,
                why,
            ),
        }
        Decision::Reject
    }

    /// Checks a public key for `user` without changing state (one query).
    async fn key_allowed(&self, user: &str, key: &PublicKey) -> Result<KeyMatch, String> {
        let login = Login::parse(user).map_err(|e| e.to_string())?;
        let fp = burrow_io::keys::fingerprint(key);
        let owner = self
            .relay
            .db
            .key_owner(login.principal(), &fp)
            .await
            .map_err(|e| e.to_string())?;
        match (owner, login) {
            (
                Some(KeyOwner::Device {
                    pending,
                    quarantined,
                }),
                Login::Plain(name),
            ) => Ok(KeyMatch::Device {
                name,
                fp,
                pending,
                quarantined,
            }),
            (Some(KeyOwner::Operator), login) => Ok(KeyMatch::Operator(login, fp)),
            _ => Err(format!("key {fp} is not registered for {user}")),
        }
    }

    async fn become_operator(&mut self, login: Login, method: &str) -> Decision {
        let name = login.principal().to_string();
        match self.relay.db.operator(&name).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                return self.reject(&login.to_string(), "operator vanished", AuthFailure::Other);
            }
            Err(e) => return self.reject(&login.to_string(), &e.to_string(), AuthFailure::Other),
        }
        self.relay.audit.record_about(
            crate::audit::About::Operator,
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
        Decision::Accept
    }

    async fn key(&mut self, user: &str, key: &PublicKey) -> Decision {
        if user == crate::control::USER {
            return match crate::control::admits(&self.relay, key, self.peer) {
                Ok(()) => {
                    self.relay.audit.record(
                        "auth",
                        crate::control::OPERATOR,
                        &self.peer.to_string(),
                        Outcome::Ok,
                        "the relay's command line, with this start's control key",
                    );
                    self.principal = Principal::Control;
                    Decision::Accept
                }
                Err(why) => self.reject(user, &why, AuthFailure::UnknownKey),
            };
        }
        match self.key_allowed(user, key).await {
            Ok(KeyMatch::Device {
                name,
                fp,
                pending,
                quarantined,
            }) => {
                // A pending device logs in only to be told that it waits (see `authenticated`).
                if !pending {
                    self.relay.audit.record_about(
                        crate::audit::About::Device,
                        "auth",
                        &name,
                        &self.peer.to_string(),
                        Outcome::Ok,
                        &format!("device authenticated with key {fp}"),
                    );
                }
                self.principal = Principal::Device {
                    name,
                    key_fingerprint: fp,
                    session: None,
                    pending,
                    quarantined,
                };
                Decision::Accept
            }
            Ok(KeyMatch::Operator(login, _fp)) => self.become_operator(login, "public key").await,
            Err(why) => {
                let decision = self.reject(user, &why, AuthFailure::UnknownKey);
                // The client proved it holds the key (it signed): it may learn whose it is.
                match self
                    .relay
                    .db
                    .key_holder(&burrow_io::keys::fingerprint(key))
                    .await
                {
                    Ok(Some((kind, holder))) => {
                        Decision::RejectSaying(key_held_by(user, &kind, &holder))
                    }
                    _ => decision,
                }
            }
        }
    }

    async fn password(&mut self, user: &str, password: &str, method: &str) -> Decision {
        if user == burrow_proto::join::ENROLL_USER {
            return match crate::enroll::check_login(&self.relay, password).await {
                Ok(token) => {
                    self.principal = Principal::Enroller { token };
                    Decision::Accept
                }
                Err(why) => {
                    let target = match burrow_proto::join::split_password(password) {
                        Some((id, _)) => format!("token {id}"),
                        None => "token".into(),
                    };
                    self.relay.audit.record(
                        "token",
                        &self.peer.to_string(),
                        &target,
                        Outcome::Denied,
                        &why,
                    );
                    self.reject(user, &why, AuthFailure::Password)
                }
            };
        }
        // After a right password, an operator with TOTP answers keyboard-interactive's
        // "Verification code" prompt.
        if let Some(login) = self.code_for.clone() {
            if login.to_string() != user {
                return self.reject(
                    user,
                    "the user name changed after the password",
                    AuthFailure::Other,
                );
            }
            return match crate::totp::second_factor(&self.relay, login.principal(), password).await
            {
                Ok(()) => {
                    self.code_for = None;
                    self.become_operator(login, &format!("{method} with a TOTP code"))
                        .await
                }
                Err(why) => self.reject(user, &why, AuthFailure::Password),
            };
        }
        let (outcome, started) =
            crate::password::attempt(&self.relay, self.peer, user, password).await;
        // A refusal is paced from when the password was taken up, after the address's turn:
        // the argon2 work hides inside the pause.
        self.paced_from = started;
        match outcome {
            crate::password::Outcome::Accepted(login) => {
                match self.relay.db.operator(login.principal()).await {
                    Ok(Some(r)) if r.totp => {
                        self.relay.audit.record(
                            "auth",
                            &login.to_string(),
                            &self.peer.to_string(),
                            Outcome::Ok,
                            &format!("password right by {method}; asking the TOTP code"),
                        );
                        self.code_for = Some(login);
                        Decision::Partial(vec![method::KEYBOARD_INTERACTIVE])
                    }
                    _ => self.become_operator(login, method).await,
                }
            }
            crate::password::Outcome::Refused(why, kind) => self.reject(user, &why, kind),
        }
    }
}

/// What a client that logged in as `user` with a key registered to someone else is told.
fn key_held_by(user: &str, kind: &str, holder: &str) -> String {
    let user = burrow_proto::text::clean(user, burrow_proto::text::MAX_NAME_CHARS);
    if kind == "device" {
        format!(
            "burrow: this key is device {holder}'s, not {user}'s: if this device is {holder}, set its name to {holder} (name = \"{holder}\" or --name {holder}); otherwise give {user} a key of its own"
        )
    } else {
        format!(
            "burrow: this key is operator {holder}'s, not {user}'s: log in as {holder}, or give {user} a key of its own"
        )
    }
}

enum KeyMatch {
    Device {
        name: String,
        fp: String,
        pending: bool,
        quarantined: bool,
    },
    Operator(Login, String),
}

/// Waits for a session channel's `exec` and accepts it; other requests are refused. `None` when
/// the channel ends (or sends EOF) first.
pub(crate) async fn next_exec(channel: &burrow_ssh::driver::Channel) -> Option<String> {
    use burrow_ssh::channel::Request;
    use burrow_ssh::driver::ChannelMsg;
    loop {
        match channel.next().await? {
            ChannelMsg::Request {
                request: Request::Exec(command),
                want_reply,
            } => {
                if want_reply {
                    channel.reply(true);
                }
                return Some(command);
            }
            ChannelMsg::Request { want_reply, .. } => {
                if want_reply {
                    channel.reply(false);
                }
            }
            ChannelMsg::Data(_) => {}
            ChannelMsg::Eof => return None,
        }
    }
}

impl Handler for Conn {
    async fn auth(&mut self, question: Question) -> Decision {
        self.paced_from = Instant::now();
        let decision = match &question {
            // Refusing a key before its signature spares one; each refusal counts as a
            // failed attempt (bounded per connection).
            Question::KeyQuery { user, key } if user == crate::control::USER => {
                match crate::control::admits(&self.relay, key, self.peer) {
                    Ok(()) => Decision::Accept,
                    Err(why) => self.reject(user, &why, AuthFailure::UnknownKey),
                }
            }
            Question::KeyQuery { user, key } => match self.key_allowed(user, key).await {
                Ok(_) => Decision::Accept,
                Err(why) => self.reject(user, &why, AuthFailure::UnknownKey),
            },
            Question::Key { user, key } => self.key(user, key).await,
            Question::Password {
                user,
                password,
                method,
            } => self.password(user, password, method).await,
        };
        if matches!(decision, Decision::Reject | Decision::RejectSaying(_)) {
            // Failures are answered a fixed pause after the attempt was taken up, as sshd
            // does: guessing costs time, and the work done meanwhile does not show.
            let answer = self.paced_from + self.relay.config.auth_rejection_time;
            tokio::time::sleep_until(answer.into()).await;
        }
        decision
    }

    async fn auth_refused(&mut self, user: &str, why: &str) {
        let started = Instant::now();
        self.relay.metrics.auth_failed(AuthFailure::Other);
        let user = burrow_proto::text::clean(user, burrow_proto::text::MAX_NAME_CHARS);
        self.relay
            .audit
            .record("auth", &user, &self.peer.to_string(), Outcome::Denied, why);
        // The protocol layer's refusals (a bad signature, SHA-1 `ssh-rsa`) wait as long as
        // the relay's own: no refusal comes back sooner than another.
        tokio::time::sleep_until((started + self.relay.config.auth_rejection_time).into()).await;
    }

    async fn authenticated(&mut self, _user: &str, handle: &Handle) {
        if let Some(permit) = self.permit.take() {
            permit.authenticated();
        }
        let peer_id = handle.peer_id().map(|id| id.line).unwrap_or_default();
        let burrow = peer_id.starts_with(crate::config::BURROW_SSH_ID_PREFIX);
        // An agent that declared its keepalive schedule is watched by its silence alone; every
        // other client keeps the TCP keepalive set at accept.
        let schedule = match &self.principal {
            Principal::Device { .. } if burrow => Schedule::from_ssh_id(&peer_id),
            _ => None,
        };
        if let (Some(_), Some(socket)) = (&schedule, &self.socket)
            && let Err(e) = crate::server::quiet_socket(socket)
        {
            tracing::debug!("cannot turn TCP keepalive off: {e}");
        }
        self.socket = None;
        if let Principal::Operator(op) = &self.principal {
            let _ = op.handle.set(handle.clone());
        }
        if let Some(tx) = self.authed.take() {
            let _ = tx.send(());
        }
        if let Principal::Device {
            name,
            pending: true,
            ..
        } = &self.principal
        {
            let why = format!(
                "device {name} waits for approval: on the relay, `burrow relay device approve {name}` (or `device reject {name}`)"
            );
            self.relay
                .audit
                .record("auth", name, &self.peer.to_string(), Outcome::Denied, &why);
            handle.disconnect(&format!(
                "{}: {why}; this agent tries again until then",
                burrow_proto::PENDING_PREFIX
            ));
            self.principal = Principal::Nobody;
            return;
        }
        if let Principal::Device {
            name,
            key_fingerprint,
            session: slot,
            quarantined,
            ..
        } = &mut self.principal
        {
            let carrier = crate::registry::Carrier {
                peer: self.peer,
                handle: handle.clone(),
                cut: self.cut.clone(),
                activity: self.activity.clone(),
                schedule,
                instance: burrow_proto::liveness::instance_from_ssh_id(&peer_id)
                    .unwrap_or_default(),
                software: crate::health::software(&peer_id),
            };
            let dev = Arc::new(DeviceSession::new(
                self.relay.next_id(),
                name.clone(),
                key_fingerprint.clone(),
                carrier,
            ));
            *slot = Some(dev.clone());
            if !crate::quarantine::admit(&self.relay, dev, *quarantined).await {
                // Refused: the session was never the device's; nothing to undo when it ends.
                *slot = None;
            }
        }
    }

    async fn channel_open(&mut self, kind: OpenKind, offer: Offer) {
        match (kind, &self.principal) {
            (OpenKind::Session, Principal::Operator(op)) => match offer.accept() {
                Ok(channel) => {
                    crate::operator::session_opened(self.relay.clone(), op.clone(), channel)
                }
                Err(e) => tracing::debug!("session channel lost before it opened: {e}"),
            },
            (OpenKind::Session, Principal::Control) => match offer.accept() {
                Ok(channel) => crate::control::session_opened(self.relay.clone(), channel),
                Err(e) => tracing::debug!("session channel lost before it opened: {e}"),
            },
            (OpenKind::Session, Principal::Enroller { token }) => match offer.accept() {
                Ok(channel) => crate::enroll::session_opened(
                    self.relay.clone(),
                    token.clone(),
                    self.peer.to_string(),
                    channel,
                ),
                Err(e) => tracing::debug!("session channel lost before it opened: {e}"),
            },
            (OpenKind::Session, Principal::Device { name, .. }) => {
                self.relay.audit.record(
                    "session",
                    name,
                    "shell",
                    Outcome::Denied,
                    "devices get no shell, exec or pty",
                );
                offer.reject(
                    open_failure::PROHIBITED,
                    "devices get no session on the relay",
                );
            }
            (
                OpenKind::DirectTcpip {
                    host,
                    port,
                    originator,
                    originator_port,
                },
                principal,
            ) => {
                let request = crate::operator::StreamRequest {
                    host,
                    port,
                    originator: format!("{originator}:{originator_port}"),
                    originator_address: originator,
                    originator_port,
                };
                match principal {
                    Principal::Operator(op) => {
                        crate::operator::open_stream(self.relay.clone(), op.clone(), request, offer)
                    }
                    Principal::Device {
                        session: Some(dev), ..
                    } => {
                        crate::device::open_stream(self.relay.clone(), dev.clone(), request, offer)
                    }
                    _ => offer.reject(open_failure::PROHIBITED, "not authenticated"),
                }
            }
            (
                OpenKind::Other(name),
                Principal::Device {
                    name: device,
                    session: Some(_),
                    ..
                },
            ) if name == burrow_proto::portlog::CHANNEL_TYPE => match offer.accept() {
                Ok(channel) => {
                    let relay = self.relay.clone();
                    let device = device.clone();
                    self.relay
                        .tracker
                        .spawn(crate::console::upload::serve(relay, device, channel));
                }
                Err(e) => tracing::debug!("upload channel lost before it opened: {e}"),
            },
            (kind, _) => {
                tracing::info!("channel type {} refused", kind.name());
                offer.reject(
                    open_failure::UNKNOWN_CHANNEL_TYPE,
                    "the relay opens session and direct-tcpip channels only",
                );
            }
        }
    }

    async fn global_request(&mut self, request: GlobalRequest) -> GlobalAnswer {
        let dev = match &self.principal {
            Principal::Device {
                session: Some(dev), ..
            } => Some(dev.clone()),
            _ => None,
        };
        match (request, dev) {
            (GlobalRequest::TcpipForward { address, port }, Some(dev)) => {
                let asked = port;
                let mut port = port;
                if crate::device::forward(&self.relay, &dev, &address, &mut port).await {
                    // The port goes back only when the client asked for any (RFC 4254 §7.1).
                    GlobalAnswer::Success((asked == 0).then_some(port))
                } else {
                    GlobalAnswer::Failure
                }
            }
            (GlobalRequest::CancelTcpipForward { address, port }, Some(dev)) => {
                if crate::device::cancel_forward(&self.relay, &dev, &address, port) {
                    GlobalAnswer::Success(None)
                } else {
                    GlobalAnswer::Failure
                }
            }
            (GlobalRequest::WithData { name, data }, Some(dev))
                if name == burrow_proto::health::REQUEST =>
            {
                crate::health::report_received(&self.relay, &dev, &data);
                GlobalAnswer::Failure
            }
            (GlobalRequest::TcpipForward { .. }, None) => {
                tracing::info!("tcpip-forward refused: only devices expose endpoints");
                GlobalAnswer::Failure
            }
            _ => GlobalAnswer::Failure,
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        match &self.principal {
            Principal::Device {
                session: Some(dev), ..
            } => {
                // The relay's own reasons to cut a session are recorded on it; past those, a
                // cut before the session ended by itself is the relay stopping.
                let stopping = self.relay.stopping() || self.cut.is_cancelled();
                // The session is over: whoever waits for its end (a takeover) may go on.
                dev.cut.cancel();
                crate::device::went_offline(&self.relay, dev, stopping)
            }
            Principal::Operator(op) => self.relay.operators.remove(op.id),
            _ => {}
        }
    }
}
