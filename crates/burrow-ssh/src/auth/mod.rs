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

use signature::Verifier;
use ssh_key::{Algorithm, EcdsaCurve, PublicKey};
use zeroize::Zeroizing;

use crate::wire::WireError;

mod client;
mod server;
#[cfg(test)]
mod tests;

pub use client::{ClientAuth, ClientKey, ClientStep, Credential};
pub use server::{ServerAuth, ServerStep};

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
    /// Is this the password? (From `password` or from the keyboard-interactive prompt.) After
    /// a [`Decision::Partial`], keyboard-interactive's answer is the second factor's code.
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
    /// No, with a line for the person at the client, sent as a banner just before the failure
    /// (RFC 4252 §5.4): what to do instead.
    RejectSaying(String),
    /// This step passed but more is needed: these methods may continue (RFC 4252 §5.1).
    Partial(Vec<&'static str>),
}
