//! The server side: checks what it can itself, asks the application the rest, one question
//! at a time, and holds the requests that arrive meanwhile. A refusal of its own (a bad
//! signature, SHA-1 `ssh-rsa`) is held like a question until the application answers it, so
//! that the application paces every failure alike and a client cannot tell which layer said no.

use std::collections::VecDeque;

use crate::messages::{AuthRequest, Method, decode_info_response, encode_auth_failure};
use crate::msg;
use crate::wire::Writer;

use super::*;

/// Server-side authentication.
pub struct ServerAuth {
    methods: Vec<&'static str>,
    max_attempts: u32,
    attempts: u32,
    /// A `none` request was answered already.
    asked_none: bool,
    /// The question out, with what answering it needs.
    pending: Option<Pending>,
    /// Requests that arrived while a question was out, in order.
    waiting: VecDeque<Vec<u8>>,
    /// The user who was sent a keyboard-interactive prompt.
    prompted: Option<String>,
    /// A step passed with partial success: keyboard-interactive now asks for a verification
    /// code (the second factor), not the password.
    second_factor: bool,
    /// The user the question out is about.
    asking: Option<String>,
    done: Option<String>,
}

enum Pending {
    Query {
        algorithm: String,
        blob: Vec<u8>,
    },
    Login {
        method: &'static str,
    },
    /// Refused here; USERAUTH_FAILURE goes out when the application answers.
    Refused,
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
    /// A refusal to audit and pace: the user named and why. Answer it with
    /// [`ServerAuth::decide`] (whatever the decision, it stays a refusal).
    pub refused: Option<(String, String)>,
}

impl ServerAuth {
    /// Offers `methods` (see [`method`]) and allows `max_attempts` failed attempts.
    pub fn new(methods: Vec<&'static str>, max_attempts: u32) -> ServerAuth {
        ServerAuth {
            methods,
            max_attempts,
            attempts: 0,
            asked_none: false,
            pending: None,
            waiting: VecDeque::new(),
            prompted: None,
            second_factor: false,
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
            (Pending::Refused, _) => self.fail(&mut step)?,
            (_, Decision::Partial(methods)) => {
                self.methods = methods;
                self.second_factor = true;
                step.send.push(encode_auth_failure(&self.methods, true));
            }
            (_, Decision::Reject) => self.fail(&mut step)?,
            (_, Decision::RejectSaying(text)) => {
                let mut w = Writer::message(msg::USERAUTH_BANNER);
                w.string(text.as_bytes()).string(b"");
                step.send.push(w.into_bytes());
                self.fail(&mut step)?;
            }
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

    /// Holds a refusal until the application has answered it (see [`ServerStep::refused`]).
    fn refuse(&mut self, user: &str, why: String) -> Result<ServerStep, AuthError> {
        self.asking = Some(user.to_string());
        self.pending = Some(Pending::Refused);
        Ok(ServerStep {
            refused: Some((user.to_string(), why)),
            ..ServerStep::default()
        })
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
        match payload.first() {
            Some(&msg::USERAUTH_INFO_RESPONSE) => return self.info_response(&payload),
            Some(&msg::SERVICE_REQUEST) => return service_again(&payload),
            _ => {}
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
            // The first `none` asks which methods may continue and is free, as in OpenSSH; every
            // later one is an attempt (a client that repeats it asks nothing new, and each
            // answer is queued for a peer that may never read it).
            Method::None if !self.asked_none => {
                self.asked_none = true;
                Ok(ServerStep {
                    send: vec![encode_auth_failure(&self.methods, false)],
                    ..ServerStep::default()
                })
            }
            Method::None => self.refuse(&user, "repeated \"none\" authentication".into()),
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
                let (prompt, echo): (&[u8], bool) = if self.second_factor {
                    (b"Verification code: ", true)
                } else {
                    (b"Password: ", false)
                };
                w.string(b"") // name
                    .string(b"") // instruction
                    .string(b"") // language tag
                    .u32(1)
                    .string(prompt)
                    .bool(echo);
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
            Some(Pending::Refused) | None => None,
        }
    }
}

/// A SERVICE_REQUEST for `ssh-userauth` after the first, until authentication succeeds:
/// paramiko sends one before every attempt, and OpenSSH's sshd accepts each. It is answered in
/// turn with the requests around it.
fn service_again(payload: &[u8]) -> Result<ServerStep, AuthError> {
    let mut r = crate::wire::Reader::new(payload);
    let _ = r.u8("message number");
    let name = r
        .utf8(256, "service name")
        .map_err(|e| wire("SERVICE_REQUEST", e))?;
    if name != USERAUTH_SERVICE {
        return Err(AuthError(format!(
            "service {name:?} asked for during authentication; only {USERAUTH_SERVICE} is offered"
        )));
    }
    let mut w = Writer::message(msg::SERVICE_ACCEPT);
    w.string(name.as_bytes());
    Ok(ServerStep {
        send: vec![w.into_bytes()],
        ..ServerStep::default()
    })
}
