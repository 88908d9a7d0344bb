//! User authentication (RFC 4252, RFC 4256, RFC 8332), both ends, with no I/O.
//!
//! The server side ([`ServerAuth`]) checks what it can itself (the service, a signature over
//! the session identifier, the attempt limit) and asks the application only what it cannot know:
//! whether this key, or this password, may log in as this user. Questions go out as
//! [`Question`]s, and each is answered with a [`Decision`]; requests that arrive meanwhile wait.
//! Keyboard-interactive is the password asked as one hidden prompt, which is how PuTTY and
//! TeraTerm users type a password.
//!
//! The client side ([`ClientAuth`]) tries its credentials in order, among the methods the server
//! says may continue: a public key (straight to the signed request), then a password (as
//! `password`, or answering a keyboard-interactive prompt).

use std::collections::VecDeque;

use signature::{Signer, Verifier};
use ssh_key::{Algorithm, EcdsaCurve, HashAlg, PublicKey};
use zeroize::Zeroizing;

use crate::messages::{AuthRequest, Method, decode_info_response, encode_auth_failure};
use crate::msg;
use crate::wire::{Reader, WireError, Writer};

/// Signature algorithms a client may authenticate with, announced in `server-sig-algs`. No
/// SHA-1 (`ssh-rsa`), no DSA, no security-key types.
pub const SIGNATURE_ALGORITHMS: [&str; 6] = [
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "rsa-sha2-512",
    "rsa-sha2-256",
];

/// The service authentication runs for.
pub const CONNECTION_SERVICE: &str = "ssh-connection";
/// The service the client asks for first.
pub const USERAUTH_SERVICE: &str = "ssh-userauth";

/// Methods names as they go on the wire.
pub mod method {
    /// `publickey`.
    pub const PUBLICKEY: &str = "publickey";
    /// `password`.
    pub const PASSWORD: &str = "password";
    /// `keyboard-interactive`.
    pub const KEYBOARD_INTERACTIVE: &str = "keyboard-interactive";
}

/// Why authentication could not go on; the connection ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthError(pub String);

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AuthError {}

fn wire(what: &str, e: WireError) -> AuthError {
    AuthError(format!("{what}: {e}"))
}

/// Checks that `algorithm` (as named in a request) fits the key and is one burrow takes.
pub fn algorithm_fits(algorithm: &str, key: &PublicKey) -> bool {
    let key_algorithm = key.algorithm();
    match algorithm {
        "rsa-sha2-256" | "rsa-sha2-512" => matches!(key_algorithm, Algorithm::Rsa { .. }),
        "ssh-ed25519" => key_algorithm == Algorithm::Ed25519,
        "ecdsa-sha2-nistp256" => key_algorithm == ecdsa(EcdsaCurve::NistP256),
        "ecdsa-sha2-nistp384" => key_algorithm == ecdsa(EcdsaCurve::NistP384),
        "ecdsa-sha2-nistp521" => key_algorithm == ecdsa(EcdsaCurve::NistP521),
        _ => false,
    }
}

fn ecdsa(curve: EcdsaCurve) -> Algorithm {
    Algorithm::Ecdsa { curve }
}

/// Verifies a client's signature `signature` (an SSH signature blob) by `key` over `data`,
/// made with `algorithm`, which must be the algorithm the request named.
pub fn verify_signature(
    algorithm: &str,
    key: &PublicKey,
    signature: &[u8],
    data: &[u8],
) -> Result<(), String> {
    if !algorithm_fits(algorithm, key) {
        return Err(format!(
            "signature algorithm {algorithm} does not fit a {} key",
            key.algorithm().as_str()
        ));
    }
    let sig = ssh_key::Signature::try_from(signature).map_err(|e| format!("signature: {e}"))?;
    // The blob's own algorithm must be the one requested: no SHA-1 slipped in as `ssh-rsa`.
    if sig.algorithm().as_str() != algorithm {
        return Err(format!(
            "a {} signature in a {algorithm} request",
            sig.algorithm().as_str()
        ));
    }
    // Ed25519 on ring: several times faster than the generic path, and a relay checks one
    // per device login (a reconnect storm is thousands at once).
    if let Some(public) = key.key_data().ed25519() {
        return ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, public.as_ref())
            .verify(data, sig.as_bytes())
            .map_err(|_| "the signature does not verify".to_string());
    }
    key.key_data()
        .verify(data, &sig)
        .map_err(|_| "the signature does not verify".to_string())
}

/// What the server asks the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Question {
    /// Would this key be accepted for this user? (No signature yet; refusing spares one.)
    KeyQuery {
        /// The login name.
        user: String,
        /// The key, parsed.
        key: PublicKey,
    },
    /// This key has signed: may it log in?
    Key {
        /// The login name.
        user: String,
        /// The key, whose signature verified.
        key: PublicKey,
    },
    /// Is this the password? (From `password` or from the keyboard-interactive prompt.)
    Password {
        /// The login name.
        user: String,
        /// The password, wiped on drop.
        password: Zeroizing<String>,
        /// `password` or `keyboard-interactive`.
        method: &'static str,
    },
}

impl Question {
    /// The login name asked about.
    pub fn user(&self) -> &str {
        match self {
            Question::KeyQuery { user, .. }
            | Question::Key { user, .. }
            | Question::Password { user, .. } => user,
        }
    }
}

/// The application's answer to a [`Question`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Yes (for a query: the key would do; otherwise: logged in).
    Accept,
    /// No; the methods that may continue stay as they are.
    Reject,
    /// This step passed but more is needed: these methods may continue (RFC 4252 §5.1).
    Partial(Vec<&'static str>),
}

/// Server-side authentication.
pub struct ServerAuth {
    methods: Vec<&'static str>,
    max_attempts: u32,
    attempts: u32,
    /// The question out, with what answering it needs.
    pending: Option<Pending>,
    /// Requests that arrived while a question was out, in order.
    waiting: VecDeque<Vec<u8>>,
    /// The user who was sent a keyboard-interactive prompt.
    prompted: Option<String>,
    /// The user the question out is about.
    asking: Option<String>,
    done: Option<String>,
}

enum Pending {
    Query { algorithm: String, blob: Vec<u8> },
    Login { method: &'static str },
}

/// Most requests held while a question is out; a client that sends more is misbehaving.
const MAX_WAITING: usize = 8;

/// What the server side produced from one step.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ServerStep {
    /// Messages to send, in order.
    pub send: Vec<Vec<u8>>,
    /// A question for the application.
    pub question: Option<Question>,
    /// The user now logged in.
    pub success: Option<String>,
    /// A refusal to audit: the user named and why.
    pub refused: Option<(String, String)>,
}

impl ServerAuth {
    /// Offers `methods` (see [`method`]) and allows `max_attempts` failed attempts.
    pub fn new(methods: Vec<&'static str>, max_attempts: u32) -> ServerAuth {
        ServerAuth {
            methods,
            max_attempts,
            attempts: 0,
            pending: None,
            waiting: VecDeque::new(),
            prompted: None,
            asking: None,
            done: None,
        }
    }

    /// The user logged in, once authentication succeeded.
    pub fn user(&self) -> Option<&str> {
        self.done.as_deref()
    }

    /// Whether a question is waiting for [`ServerAuth::decide`].
    pub fn asking(&self) -> bool {
        self.pending.is_some()
    }

    /// Takes a USERAUTH_REQUEST or INFO_RESPONSE; `session_id` is what signatures cover.
    pub fn receive(
        &mut self,
        payload: Vec<u8>,
        session_id: &[u8],
    ) -> Result<ServerStep, AuthError> {
        if self.done.is_some() {
            // RFC 4252 §5.1: requests after success are ignored.
            return Ok(ServerStep::default());
        }
        if self.pending.is_some() {
            if self.waiting.len() >= MAX_WAITING {
                return Err(AuthError(
                    "too many authentication requests while one is being checked".into(),
                ));
            }
            self.waiting.push_back(payload);
            return Ok(ServerStep::default());
        }
        self.handle(payload, session_id)
    }

    /// Answers the question out; requests held meanwhile are taken up after it.
    pub fn decide(
        &mut self,
        decision: Decision,
        session_id: &[u8],
    ) -> Result<ServerStep, AuthError> {
        let Some(pending) = self.pending.take() else {
            return Err(AuthError("an answer with no question out".into()));
        };
        let user = self.asking.take();
        let mut step = ServerStep::default();
        match (pending, decision) {
            (Pending::Query { algorithm, blob }, Decision::Accept) => {
                let mut w = Writer::message(msg::USERAUTH_PK_OK);
                w.string(algorithm.as_bytes()).string(&blob);
                step.send.push(w.into_bytes());
            }
            (Pending::Login { .. }, Decision::Accept) => {
                step.send.push(vec![msg::USERAUTH_SUCCESS]);
                self.waiting.clear();
                self.done = user.clone();
                step.success = user;
                return Ok(step);
            }
            (_, Decision::Partial(methods)) => {
                self.methods = methods;
                step.send.push(encode_auth_failure(&self.methods, true));
            }
            (_, Decision::Reject) => self.fail(&mut step)?,
        }
        self.drain(step, session_id)
    }

    /// Takes up requests held while a question was out, until another question goes out.
    fn drain(&mut self, mut step: ServerStep, session_id: &[u8]) -> Result<ServerStep, AuthError> {
        while self.pending.is_none() {
            let Some(next) = self.waiting.pop_front() else {
                break;
            };
            let more = self.handle(next, session_id)?;
            step.send.extend(more.send);
            step.question = more.question;
            if more.refused.is_some() {
                step.refused = more.refused;
            }
        }
        Ok(step)
    }

    fn fail(&mut self, step: &mut ServerStep) -> Result<(), AuthError> {
        self.attempts = self.attempts.saturating_add(1);
        if self.attempts >= self.max_attempts {
            return Err(AuthError(format!(
                "too many authentication failures ({})",
                self.attempts
            )));
        }
        step.send.push(encode_auth_failure(&self.methods, false));
        Ok(())
    }

    fn refuse(&mut self, user: &str, why: String) -> Result<ServerStep, AuthError> {
        let mut step = ServerStep {
            refused: Some((user.to_string(), why)),
            ..ServerStep::default()
        };
        self.fail(&mut step)?;
        Ok(step)
    }

    fn offers(&self, method: &str) -> bool {
        self.methods.contains(&method)
    }

    fn ask(&mut self, pending: Pending, question: Question) -> ServerStep {
        self.asking = Some(question.user().to_string());
        self.pending = Some(pending);
        ServerStep {
            question: Some(question),
            ..ServerStep::default()
        }
    }

    fn handle(&mut self, payload: Vec<u8>, session_id: &[u8]) -> Result<ServerStep, AuthError> {
        if payload.first() == Some(&msg::USERAUTH_INFO_RESPONSE) {
            return self.info_response(&payload);
        }
        let request = AuthRequest::decode(&payload).map_err(|e| wire("USERAUTH_REQUEST", e))?;
        // A new request abandons a keyboard-interactive exchange (RFC 4256 §3.4).
        self.prompted = None;
        let user = request.user.clone();
        if request.service != CONNECTION_SERVICE {
            return Err(AuthError(format!(
                "authentication for service {:?}; only {CONNECTION_SERVICE} is offered",
                request.service
            )));
        }
        match &request.method {
            // `none` asks which methods may continue; it is not an attempt.
            Method::None => Ok(ServerStep {
                send: vec![encode_auth_failure(&self.methods, false)],
                ..ServerStep::default()
            }),
            Method::PublicKey { .. } if !self.offers(method::PUBLICKEY) => {
                self.refuse(&user, "public key authentication is not offered now".into())
            }
            Method::PublicKey {
                algorithm,
                key,
                signature,
            } => {
                let parsed = match PublicKey::from_bytes(key) {
                    Ok(k) => k,
                    Err(e) => return self.refuse(&user, format!("public key: {e}")),
                };
                if !SIGNATURE_ALGORITHMS.contains(&algorithm.as_str())
                    || !algorithm_fits(algorithm, &parsed)
                {
                    return self.refuse(
                        &user,
                        format!(
                            "key algorithm {algorithm} with a {} key is not accepted (use ed25519, ecdsa or rsa-sha2)",
                            parsed.algorithm().as_str()
                        ),
                    );
                }
                match signature {
                    None => Ok(self.ask(
                        Pending::Query {
                            algorithm: algorithm.clone(),
                            blob: key.clone(),
                        },
                        Question::KeyQuery { user, key: parsed },
                    )),
                    Some(sig) => {
                        let data = request.signed_data(session_id).unwrap_or_default();
                        if let Err(why) = verify_signature(algorithm, &parsed, sig, &data) {
                            return self.refuse(&user, why);
                        }
                        Ok(self.ask(
                            Pending::Login {
                                method: method::PUBLICKEY,
                            },
                            Question::Key { user, key: parsed },
                        ))
                    }
                }
            }
            Method::Password { .. } if !self.offers(method::PASSWORD) => {
                self.refuse(&user, "password authentication is not offered now".into())
            }
            Method::Password { change: true, .. } => {
                self.refuse(&user, "password change is not supported".into())
            }
            Method::Password { password, .. } => Ok(self.ask(
                Pending::Login {
                    method: method::PASSWORD,
                },
                Question::Password {
                    user,
                    password: Zeroizing::new(password.clone()),
                    method: method::PASSWORD,
                },
            )),
            Method::KeyboardInteractive { .. } if !self.offers(method::KEYBOARD_INTERACTIVE) => {
                self.refuse(
                    &user,
                    "keyboard-interactive authentication is not offered now".into(),
                )
            }
            Method::KeyboardInteractive { .. } => {
                let mut w = Writer::message(msg::USERAUTH_INFO_REQUEST);
                w.string(b"") // name
                    .string(b"") // instruction
                    .string(b"") // language tag
                    .u32(1)
                    .string(b"Password: ")
                    .bool(false); // no echo
                self.prompted = Some(user);
                Ok(ServerStep {
                    send: vec![w.into_bytes()],
                    ..ServerStep::default()
                })
            }
            Method::Other(name) => self.refuse(
                &user,
                format!("authentication method {name:?} is not offered"),
            ),
        }
    }

    fn info_response(&mut self, payload: &[u8]) -> Result<ServerStep, AuthError> {
        let Some(user) = self.prompted.take() else {
            return Err(AuthError(
                "USERAUTH_INFO_RESPONSE with no prompt outstanding".into(),
            ));
        };
        let mut answers = decode_info_response(payload).map_err(|e| wire("INFO_RESPONSE", e))?;
        if answers.len() != 1 {
            return self.refuse(
                &user,
                format!("{} answers to one password prompt", answers.len()),
            );
        }
        let password = Zeroizing::new(answers.pop().unwrap_or_default());
        Ok(self.ask(
            Pending::Login {
                method: method::KEYBOARD_INTERACTIVE,
            },
            Question::Password {
                user,
                password,
                method: method::KEYBOARD_INTERACTIVE,
            },
        ))
    }

    /// The method of the login question out, for the audit.
    pub fn pending_method(&self) -> Option<&'static str> {
        match &self.pending {
            Some(Pending::Login { method }) => Some(method),
            Some(Pending::Query { .. }) => Some(method::PUBLICKEY),
            None => None,
        }
    }
}

/// A client's private key, able to sign.
pub struct ClientKey {
    key: ssh_key::PrivateKey,
}

impl ClientKey {
    /// Wraps a private key (ed25519, ecdsa or rsa).
    pub fn new(key: ssh_key::PrivateKey) -> ClientKey {
        ClientKey { key }
    }

    /// Reads an OpenSSH private key file; an encrypted key is refused (burrow runs unattended).
    pub fn read(path: &std::path::Path) -> Result<ClientKey, String> {
        let key = ssh_key::PrivateKey::read_openssh_file(path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if key.is_encrypted() {
            return Err(format!(
                "{} is protected by a passphrase; burrow needs a key it can use unattended",
                path.display()
            ));
        }
        Ok(ClientKey::new(key))
    }

    /// The public half.
    pub fn public_key(&self) -> &PublicKey {
        self.key.public_key()
    }

    /// The signature algorithm this key signs with (RSA keys: `rsa-sha2-512`).
    pub fn algorithm(&self) -> &'static str {
        match self.key.algorithm() {
            Algorithm::Ed25519 => "ssh-ed25519",
            Algorithm::Ecdsa {
                curve: EcdsaCurve::NistP256,
            } => "ecdsa-sha2-nistp256",
            Algorithm::Ecdsa {
                curve: EcdsaCurve::NistP384,
            } => "ecdsa-sha2-nistp384",
            Algorithm::Ecdsa {
                curve: EcdsaCurve::NistP521,
            } => "ecdsa-sha2-nistp521",
            _ => "rsa-sha2-512",
        }
    }

    fn blob(&self) -> Result<Vec<u8>, AuthError> {
        self.key
            .public_key()
            .to_bytes()
            .map_err(|e| AuthError(format!("our public key: {e}")))
    }

    fn sign(&self, data: &[u8]) -> Result<Vec<u8>, AuthError> {
        let sig: ssh_key::Signature = match self.key.key_data() {
            // Ed25519 on ring, as the host key is: a device signs once per login.
            ssh_key::private::KeypairData::Ed25519(pair) => {
                let ring_pair = ring::signature::Ed25519KeyPair::from_seed_and_public_key(
                    pair.private.as_ref(),
                    pair.public.as_ref(),
                )
                .map_err(|e| AuthError(format!("our ed25519 key: {e}")))?;
                ssh_key::Signature::new(Algorithm::Ed25519, ring_pair.sign(data).as_ref().to_vec())
                    .map_err(|e| AuthError(format!("signature: {e}")))?
            }
            ssh_key::private::KeypairData::Rsa(rsa) => (rsa, Some(HashAlg::Sha512))
                .try_sign(data)
                .map_err(|e| AuthError(format!("signing: {e}")))?,
            other => other
                .try_sign(data)
                .map_err(|e| AuthError(format!("signing: {e}")))?,
        };
        Vec::<u8>::try_from(sig).map_err(|e| AuthError(format!("signature: {e}")))
    }
}

/// What the client logs in with, tried in order.
pub enum Credential {
    /// A key pair.
    Key(Box<ClientKey>),
    /// A password, for `password` or a keyboard-interactive prompt.
    Password(Zeroizing<String>),
}

/// Client-side authentication.
pub struct ClientAuth {
    user: String,
    credentials: VecDeque<Credential>,
    current: Option<Credential>,
    /// Methods the server says may continue (all, until it says).
    allowed: Option<Vec<String>>,
    done: bool,
    banner: Option<String>,
}

/// What the client side produced from one step.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ClientStep {
    /// Messages to send, in order.
    pub send: Vec<Vec<u8>>,
    /// Authentication succeeded.
    pub success: bool,
}

impl ClientAuth {
    /// Logs in as `user` with `credentials`, in order.
    pub fn new(user: &str, credentials: Vec<Credential>) -> ClientAuth {
        ClientAuth {
            user: user.to_string(),
            credentials: credentials.into(),
            current: None,
            allowed: None,
            done: false,
            banner: None,
        }
    }

    /// The login name.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Whether the server accepted us.
    pub fn done(&self) -> bool {
        self.done
    }

    /// A banner the server sent, once.
    pub fn take_banner(&mut self) -> Option<String> {
        self.banner.take()
    }

    /// The first messages: the service request and, when the first credential is a key, the
    /// signed attempt with it right behind (RFC 4252 §7 lets a client sign at once; a device
    /// with one key then logs in in one round trip instead of three). Otherwise `none` goes
    /// out once the service is accepted, and its answer says which methods may continue.
    pub fn start(&mut self, session_id: &[u8]) -> Result<Vec<Vec<u8>>, AuthError> {
        let mut w = Writer::message(msg::SERVICE_REQUEST);
        w.string(USERAUTH_SERVICE.as_bytes());
        let mut out = vec![w.into_bytes()];
        if matches!(self.credentials.front(), Some(Credential::Key(_))) {
            out.push(self.next_attempt(session_id)?);
        }
        Ok(out)
    }

    fn allows(&self, method: &str) -> bool {
        self.allowed
            .as_ref()
            .is_none_or(|m| m.iter().any(|a| a == method))
    }

    /// The next attempt, or an error when every credential is spent.
    fn next_attempt(&mut self, session_id: &[u8]) -> Result<Vec<u8>, AuthError> {
        loop {
            // Each credential is tried once, by the first method that takes it.
            self.current = self.credentials.pop_front();
            match &self.current {
                None => {
                    let methods = self.allowed.clone().unwrap_or_default().join(",");
                    return Err(AuthError(format!(
                        "the server refused every credential (methods that could continue: {methods})"
                    )));
                }
                Some(Credential::Key(key)) if self.allows(method::PUBLICKEY) => {
                    let mut request = AuthRequest {
                        user: self.user.clone(),
                        service: CONNECTION_SERVICE.into(),
                        method: Method::PublicKey {
                            algorithm: key.algorithm().into(),
                            key: key.blob()?,
                            signature: None,
                        },
                    };
                    let data = request.signed_data(session_id).unwrap_or_default();
                    let sig = key.sign(&data)?;
                    if let Method::PublicKey { signature, .. } = &mut request.method {
                        *signature = Some(sig);
                    }
                    return Ok(request.encode());
                }
                Some(Credential::Password(pw)) if self.allows(method::PASSWORD) => {
                    let password = pw.to_string();
                    return Ok(self.request(Method::Password {
                        password,
                        change: false,
                    }));
                }
                Some(Credential::Password(_)) if self.allows(method::KEYBOARD_INTERACTIVE) => {
                    return Ok(self.request(Method::KeyboardInteractive {
                        submethods: String::new(),
                    }));
                }
                Some(_) => continue,
            }
        }
    }

    fn request(&self, method: Method) -> Vec<u8> {
        AuthRequest {
            user: self.user.clone(),
            service: CONNECTION_SERVICE.into(),
            method,
        }
        .encode()
    }

    /// Takes a message of authentication (6, 51-53, 60).
    pub fn receive(&mut self, payload: &[u8], session_id: &[u8]) -> Result<ClientStep, AuthError> {
        let mut step = ClientStep::default();
        let mut r = Reader::new(payload);
        let number = r.u8("message number").map_err(|e| wire("auth", e))?;
        match number {
            // `none` first, as OpenSSH does, unless a signed key went out with the service
            // request: the answer lists the methods that may continue.
            msg::SERVICE_ACCEPT => {
                if self.current.is_none() {
                    step.send.push(self.request(Method::None));
                }
            }
            msg::USERAUTH_SUCCESS => {
                self.done = true;
                self.current = None;
                self.credentials.clear();
                step.success = true;
            }
            msg::USERAUTH_FAILURE => {
                let methods = r
                    .name_list("methods")
                    .map_err(|e| wire("USERAUTH_FAILURE", e))?;
                let _partial = r
                    .bool("partial success")
                    .map_err(|e| wire("USERAUTH_FAILURE", e))?;
                self.allowed = Some(methods.into_iter().map(str::to_string).collect());
                step.send.push(self.next_attempt(session_id)?);
            }
            msg::USERAUTH_BANNER => {
                let text = r.utf8(4096, "banner").map_err(|e| wire("BANNER", e))?;
                self.banner = Some(text.to_string());
            }
            // PK_OK and INFO_REQUEST share a number; what we sent tells which.
            msg::USERAUTH_INFO_REQUEST => match &self.current {
                Some(Credential::Password(pw)) => {
                    let prompts = info_request_prompts(&mut r)
                        .map_err(|e| wire("USERAUTH_INFO_REQUEST", e))?;
                    let mut w = Writer::message(msg::USERAUTH_INFO_RESPONSE);
                    w.u32(prompts);
                    // The password answers a single prompt; further prompts get nothing.
                    for i in 0..prompts {
                        w.string(if i == 0 { pw.as_bytes() } else { b"" });
                    }
                    step.send.push(w.into_bytes());
                }
                _ => {
                    return Err(AuthError(
                        "an unexpected USERAUTH_PK_OK or INFO_REQUEST".into(),
                    ));
                }
            },
            other => return Err(AuthError(format!("message {other} during authentication"))),
        }
        Ok(step)
    }
}

/// Reads an INFO_REQUEST up to its prompts and returns how many there are.
fn info_request_prompts(r: &mut Reader<'_>) -> Result<u32, WireError> {
    let _name = r.string(4096, "name")?;
    let _instruction = r.string(4096, "instruction")?;
    let _language = r.string(256, "language")?;
    let count = r.u32("num-prompts")?;
    if count > 16 {
        return Err(WireError::Invalid {
            field: "num-prompts",
            why: "more than 16 prompts",
        });
    }
    for _ in 0..count {
        let _prompt = r.string(4096, "prompt")?;
        let _echo = r.bool("echo")?;
    }
    r.finish()?;
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SID: &[u8] = b"session-id-0123456789";

    pub(crate) fn key(alg: Algorithm) -> ClientKey {
        if let Algorithm::Rsa { .. } = alg {
            // Generating RSA keys takes seconds in a debug build: a fixed test key.
            let pem = include_str!("../tests/data/rsa_test_key");
            return ClientKey::new(ssh_key::PrivateKey::from_openssh(pem).expect("test key"));
        }
        let key = ssh_key::PrivateKey::random(&mut rand::rng(), alg).expect("keygen");
        ClientKey::new(key)
    }

    /// Runs client against server; `decide` answers each question.
    fn run(
        client: &mut ClientAuth,
        server: &mut ServerAuth,
        mut decide: impl FnMut(&Question) -> Decision,
    ) -> Result<(Vec<Question>, Vec<String>), AuthError> {
        let mut questions = Vec::new();
        let mut refused = Vec::new();
        let mut to_server = VecDeque::new();
        let mut to_client = VecDeque::from([vec![msg::SERVICE_ACCEPT]]);
        for _ in 0..100 {
            if let Some(m) = to_client.pop_front() {
                let step = client.receive(&m, SID)?;
                to_server.extend(step.send);
                if step.success {
                    return Ok((questions, refused));
                }
            } else if let Some(m) = to_server.pop_front() {
                let mut step = server.receive(m, SID)?;
                loop {
                    to_client.extend(std::mem::take(&mut step.send));
                    refused.extend(step.refused.take().map(|r| r.1));
                    let Some(q) = step.question.take() else { break };
                    let d = decide(&q);
                    questions.push(q);
                    step = server.decide(d, SID)?;
                }
            } else {
                break;
            }
        }
        Err(AuthError("stalled".into()))
    }

    fn all_methods() -> Vec<&'static str> {
        vec![
            method::PUBLICKEY,
            method::PASSWORD,
            method::KEYBOARD_INTERACTIVE,
        ]
    }

    #[test]
    fn every_key_type_signs_and_verifies_and_a_wrong_key_is_refused() {
        for alg in [
            Algorithm::Ed25519,
            ecdsa(EcdsaCurve::NistP256),
            ecdsa(EcdsaCurve::NistP384),
            ecdsa(EcdsaCurve::NistP521),
        ] {
            let k = key(alg.clone());
            let mut client = ClientAuth::new("pi", vec![Credential::Key(Box::new(k))]);
            let mut server = ServerAuth::new(all_methods(), 6);
            let (qs, _) = run(&mut client, &mut server, |_| Decision::Accept).expect("login");
            assert!(
                matches!(&qs[..], [Question::Key { user, .. }] if user == "pi"),
                "{alg:?} {qs:?}"
            );
            assert_eq!(server.user(), Some("pi"));
        }
        // The application says no to one key; the second key gets in.
        let (a, b) = (key(Algorithm::Ed25519), key(Algorithm::Ed25519));
        let good = b.key.public_key().clone();
        let mut client = ClientAuth::new(
            "pi",
            vec![Credential::Key(Box::new(a)), Credential::Key(Box::new(b))],
        );
        let mut server = ServerAuth::new(all_methods(), 6);
        let (qs, refused) = run(&mut client, &mut server, |q| match q {
            Question::Key { key, .. } if key.key_data() == good.key_data() => Decision::Accept,
            _ => Decision::Reject,
        })
        .expect("second key");
        assert_eq!(qs.len(), 2);
        assert!(refused.is_empty());
    }

    #[test]
    fn rsa_sha2_signs_and_sha1_or_a_mismatched_algorithm_is_refused() {
        let k = key(Algorithm::Rsa { hash: None });
        let blob = k.blob().expect("blob");
        let public = k.key.public_key().clone();
        let mut request = AuthRequest {
            user: "op".into(),
            service: CONNECTION_SERVICE.into(),
            method: Method::PublicKey {
                algorithm: "rsa-sha2-512".into(),
                key: blob.clone(),
                signature: None,
            },
        };
        let data = request.signed_data(SID).expect("data");
        let sig = k.sign(&data).expect("sign");
        assert_eq!(
            verify_signature("rsa-sha2-512", &public, &sig, &data),
            Ok(())
        );
        // The same signature claimed as rsa-sha2-256, or over other data, fails.
        assert!(verify_signature("rsa-sha2-256", &public, &sig, &data).is_err());
        assert!(verify_signature("rsa-sha2-512", &public, &sig, b"other").is_err());
        // `ssh-rsa` (SHA-1) is refused before any signature is looked at.
        let mut server = ServerAuth::new(all_methods(), 6);
        if let Method::PublicKey {
            algorithm,
            signature,
            ..
        } = &mut request.method
        {
            *algorithm = "ssh-rsa".into();
            *signature = Some(sig);
        }
        let step = server
            .receive(request.encode(), SID)
            .expect("refused, not an error");
        assert!(step.question.is_none());
        assert!(step.refused.expect("refused").1.contains("not accepted"));
        assert_eq!(
            step.send.first().and_then(|m| m.first()),
            Some(&msg::USERAUTH_FAILURE)
        );
    }

    #[test]
    fn a_forged_signature_never_reaches_the_application() {
        let k = key(Algorithm::Ed25519);
        let request = AuthRequest {
            user: "pi".into(),
            service: CONNECTION_SERVICE.into(),
            method: Method::PublicKey {
                algorithm: "ssh-ed25519".into(),
                key: k.blob().expect("blob"),
                signature: Some(k.sign(b"a different session").expect("sign")),
            },
        };
        let mut server = ServerAuth::new(all_methods(), 6);
        let step = server.receive(request.encode(), SID).expect("refused");
        assert!(step.question.is_none());
        assert!(step.refused.expect("why").1.contains("does not verify"));
    }

    #[test]
    fn key_query_then_password_then_keyboard_interactive() {
        // A query answered no, then the password typed wrong, then right via the prompt.
        let k = key(Algorithm::Ed25519);
        let mut client = ClientAuth::new(
            "op",
            vec![
                Credential::Key(Box::new(k)),
                Credential::Password(Zeroizing::new("wrong".into())),
                Credential::Password(Zeroizing::new("right".into())),
            ],
        );
        let mut server = ServerAuth::new(all_methods(), 6);
        let (qs, _) = run(&mut client, &mut server, |q| match q {
            Question::Password { password, .. } if password.as_str() == "right" => Decision::Accept,
            _ => Decision::Reject,
        })
        .expect("login");
        let methods: Vec<&str> = qs
            .iter()
            .map(|q| match q {
                Question::Password { method, .. } => method,
                _ => "key",
            })
            .collect();
        assert_eq!(methods, ["key", "password", "password"], "{qs:?}");

        // A server offering only keyboard-interactive gets the password through the prompt.
        let mut client = ClientAuth::new(
            "op",
            vec![Credential::Password(Zeroizing::new("pw".into()))],
        );
        let mut server = ServerAuth::new(vec![method::KEYBOARD_INTERACTIVE], 6);
        let (qs, _) = run(&mut client, &mut server, |q| match q {
            Question::Password {
                password, method, ..
            } => {
                assert_eq!(*method, method::KEYBOARD_INTERACTIVE);
                if password.as_str() == "pw" {
                    Decision::Accept
                } else {
                    Decision::Reject
                }
            }
            _ => Decision::Reject,
        })
        .expect("login");
        assert_eq!(qs.len(), 1);
    }

    #[test]
    fn partial_success_narrows_the_methods_and_the_attempt_limit_ends_it() {
        let k = key(Algorithm::Ed25519);
        let mut client = ClientAuth::new(
            "op",
            vec![
                Credential::Key(Box::new(k)),
                Credential::Password(Zeroizing::new("pw".into())),
            ],
        );
        let mut server = ServerAuth::new(all_methods(), 6);
        let (qs, _) = run(&mut client, &mut server, |q| match q {
            Question::Key { .. } => Decision::Partial(vec![method::PASSWORD]),
            Question::Password { .. } => Decision::Accept,
            Question::KeyQuery { .. } => Decision::Reject,
        })
        .expect("two factors");
        assert_eq!(qs.len(), 2);

        let many = (0..10)
            .map(|i| Credential::Password(Zeroizing::new(format!("guess{i}"))))
            .collect();
        let mut client = ClientAuth::new("op", many);
        let mut server = ServerAuth::new(vec![method::PASSWORD], 3);
        let err = run(&mut client, &mut server, |_| Decision::Reject).expect_err("limit");
        assert!(err.0.contains("too many authentication failures"), "{err}");
    }

    #[test]
    fn requests_that_arrive_while_a_question_is_out_wait_their_turn() {
        let mut server = ServerAuth::new(all_methods(), 6);
        let pw = |p: &str| {
            AuthRequest {
                user: "op".into(),
                service: CONNECTION_SERVICE.into(),
                method: Method::Password {
                    password: p.into(),
                    change: false,
                },
            }
            .encode()
        };
        let first = server.receive(pw("a"), SID).expect("first");
        assert!(first.question.is_some());
        let held = server.receive(pw("b"), SID).expect("held");
        assert_eq!(held, ServerStep::default());
        let next = server.decide(Decision::Reject, SID).expect("next");
        assert!(
            matches!(next.question, Some(Question::Password { ref password, .. }) if password.as_str() == "b")
        );
        assert!(server.decide(Decision::Reject, SID).is_ok());
        assert!(
            server.decide(Decision::Accept, SID).is_err(),
            "no question out"
        );
        // The wrong service ends it; so does an info response nobody asked for.
        let mut server = ServerAuth::new(all_methods(), 6);
        let mut bad = AuthRequest::decode(&pw("x")).expect("decodes");
        bad.service = "other".into();
        assert!(server.receive(bad.encode(), SID).is_err());
        let mut server = ServerAuth::new(all_methods(), 6);
        assert!(
            server
                .receive(
                    vec![msg::USERAUTH_INFO_RESPONSE, 0, 0, 0, 1, 0, 0, 0, 0],
                    SID
                )
                .is_err()
        );
    }

    #[test]
    fn hostile_auth_bytes_never_panic() {
        let mut seed = 99u64;
        let k = key(Algorithm::Ed25519);
        let good = AuthRequest {
            user: "pi".into(),
            service: CONNECTION_SERVICE.into(),
            method: Method::PublicKey {
                algorithm: "ssh-ed25519".into(),
                key: k.blob().expect("blob"),
                signature: Some(vec![0; 83]),
            },
        }
        .encode();
        for _ in 0..2000 {
            let mut bytes = good.clone();
            for _ in 0..(crate::xorshift(&mut seed) % 4 + 1) {
                let at = (crate::xorshift(&mut seed) as usize) % bytes.len();
                bytes[at] = crate::xorshift(&mut seed) as u8;
            }
            let cut = (crate::xorshift(&mut seed) as usize) % (bytes.len() + 1);
            let mut server = ServerAuth::new(all_methods(), 6);
            let _ = server.receive(bytes[..cut].to_vec(), SID);
            let mut client = ClientAuth::new("pi", vec![]);
            let _ = client.receive(&bytes[..cut], SID);
        }
    }
}
