//! The key exchange methods burrow speaks, best first, and each side's share of one exchange
//! (`Q_C` and `Q_S` of RFC 5656 §4, carried in KEX_ECDH_INIT and KEX_ECDH_REPLY by all of them).

use ring::rand::SecureRandom;

use super::hybrid::{self, HybridClient, Kem};
use super::{CURVE25519_SHA256, CURVE25519_SHA256_LIBSSH, Ephemeral, KexError, SharedSecret};

/// ML-KEM-768 with X25519 (draft-ietf-sshm-mlkem-hybrid-kex).
pub const MLKEM768X25519_SHA256: &str = "mlkem768x25519-sha256";
/// Streamlined NTRU Prime 761 with X25519 (draft-ietf-sshm-ntruprime-ssh).
pub const SNTRUP761X25519_SHA512: &str = "sntrup761x25519-sha512";
/// The same under OpenSSH's name, the only one OpenSSH before 9.9 knows.
pub const SNTRUP761X25519_SHA512_OPENSSH: &str = "sntrup761x25519-sha512@openssh.com";

/// Every method burrow offers, best first: the post-quantum hybrids, then curve25519 for
/// peers without them (OpenSSH before 8.5, older paramiko and
/// dropbear, burrow agents from before the hybrids).
pub const METHODS: [&str; 5] = [
    MLKEM768X25519_SHA256,
    SNTRUP761X25519_SHA512,
    SNTRUP761X25519_SHA512_OPENSSH,
    CURVE25519_SHA256,
    CURVE25519_SHA256_LIBSSH,
];

/// [`METHODS`] as a transport's [`crate::transport::Config::kex`] takes them.
pub fn methods() -> Vec<String> {
    METHODS.iter().map(|m| m.to_string()).collect()
}

/// A key exchange method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `mlkem768x25519-sha256`.
    MlKem768X25519,
    /// `sntrup761x25519-sha512`, under either name.
    Sntrup761X25519,
    /// `curve25519-sha256`, under either name.
    Curve25519,
}

impl Method {
    /// The method a negotiated name stands for.
    pub fn from_name(name: &str) -> Option<Method> {
        match name {
            MLKEM768X25519_SHA256 => Some(Method::MlKem768X25519),
            SNTRUP761X25519_SHA512 | SNTRUP761X25519_SHA512_OPENSSH => {
                Some(Method::Sntrup761X25519)
            }
            CURVE25519_SHA256 | CURVE25519_SHA256_LIBSSH => Some(Method::Curve25519),
            _ => None,
        }
    }

    /// Whether it resists a quantum computer (a hybrid).
    pub fn post_quantum(self) -> bool {
        self.kem().is_some()
    }

    fn kem(self) -> Option<Kem> {
        match self {
            Method::MlKem768X25519 => Some(Kem::MlKem768),
            Method::Sntrup761X25519 => Some(Kem::Sntrup761),
            Method::Curve25519 => None,
        }
    }

    /// The size of the client's `Q_C`: the bound where KEX_ECDH_INIT is read.
    pub fn client_share_len(self) -> usize {
        self.kem().map_or(32, Kem::client_share_len)
    }

    /// The size of the server's `Q_S`: the bound where KEX_ECDH_REPLY is read.
    pub fn server_share_len(self) -> usize {
        self.kem().map_or(32, Kem::server_share_len)
    }
}

/// The client's side of one exchange: its secrets until the server's reply, and `Q_C`.
pub enum ClientShare {
    /// `curve25519-sha256`.
    Curve25519(Ephemeral),
    /// A post-quantum hybrid.
    Hybrid(Box<HybridClient>),
}

impl ClientShare {
    /// Fresh secrets for `method`.
    pub fn generate(method: Method, rng: &dyn SecureRandom) -> Result<ClientShare, KexError> {
        Ok(match method.kem() {
            None => ClientShare::Curve25519(Ephemeral::generate(rng)?),
            Some(kem) => ClientShare::Hybrid(Box::new(HybridClient::generate(kem, rng)?)),
        })
    }

    /// `Q_C`, sent in KEX_ECDH_INIT.
    pub fn public(&self) -> &[u8] {
        match self {
            ClientShare::Curve25519(e) => e.public(),
            ClientShare::Hybrid(h) => h.public(),
        }
    }

    /// The shared secret from the server's `Q_S`.
    pub fn finish(self, q_s: &[u8]) -> Result<SharedSecret, KexError> {
        match self {
            ClientShare::Curve25519(e) => e.agree(q_s),
            ClientShare::Hybrid(h) => h.finish(q_s),
        }
    }
}

/// The server's side of one exchange: `Q_S` for the client's `Q_C`, and the shared secret.
pub fn server_share(
    method: Method,
    q_c: &[u8],
    rng: &dyn SecureRandom,
) -> Result<(Vec<u8>, SharedSecret), KexError> {
    match method.kem() {
        None => {
            let e = Ephemeral::generate(rng)?;
            let q_s = e.public().to_vec();
            Ok((q_s, e.agree(q_c)?))
        }
        Some(kem) => hybrid::respond(kem, q_c, rng),
    }
}
