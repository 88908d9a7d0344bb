//! The client side: credentials tried in order among the methods the server lets continue.

use std::collections::VecDeque;

use signature::Signer;
use ssh_key::HashAlg;

use crate::messages::{AuthRequest, Method};
use crate::msg;
use crate::wire::{Reader, Writer};

use super::*;

/// A client's private key, able to sign.
pub struct ClientKey {
    pub(super) key: ssh_key::PrivateKey,
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

    /// The public key blob in SSH wire form.
    pub fn blob(&self) -> Result<Vec<u8>, AuthError> {
        self.key
            .public_key()
            .to_bytes()
            .map_err(|e| AuthError(format!("our public key: {e}")))
    }

    /// Signs `data`; the signature blob in SSH wire form.
    pub fn sign(&self, data: &[u8]) -> Result<Vec<u8>, AuthError> {
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
