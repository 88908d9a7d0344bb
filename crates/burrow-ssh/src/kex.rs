//! The key exchange methods (RFC 4253 §7 and §8) and what they share: the exchange hash (RFC
//! 5656 §4 for ECDH-style exchanges, which the hybrid KEM methods keep), the key derivation of
//! RFC 4253 §7.2, and the `ssh-ed25519` host key signature over the exchange hash (RFC 8709).
//!
//! # Layout
//! - [`method`]: the methods burrow offers, best first, and each side's share of one exchange.
//! - [`hybrid`]: the post-quantum hybrids `mlkem768x25519-sha256` and
//!   `sntrup761x25519-sha512`: a KEM and X25519 side by side, their secrets hashed together.
//! - here: `curve25519-sha256` (RFC 8731), which the hybrids build on, the exchange hash, key
//!   derivation and the host key.

pub mod hybrid;
pub mod method;

use ring::agreement::{self, EphemeralPrivateKey, UnparsedPublicKey, X25519};
use ring::digest::{Context, SHA256, SHA512};
use ring::rand::SecureRandom;
use ring::signature::{self, Ed25519KeyPair, KeyPair};
use zeroize::Zeroizing;

use crate::wire::{Reader, WireError, Writer};

pub use method::{ClientShare, METHODS, Method, methods, server_share};

/// The method's name.
pub const CURVE25519_SHA256: &str = "curve25519-sha256";
/// The same method under its older name.
pub const CURVE25519_SHA256_LIBSSH: &str = "curve25519-sha256@libssh.org";
/// The host key algorithm.
pub const SSH_ED25519: &str = "ssh-ed25519";

/// Why a key exchange step failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KexError {
    /// The peer's public value is malformed or of low order.
    BadPublicValue,
    /// The peer's public value or ciphertext (`Q_C`, `Q_S`) is not the method's size.
    WrongLength {
        /// Which value.
        field: &'static str,
        /// The method's size.
        expected: usize,
        /// What came.
        got: usize,
    },
    /// No randomness.
    Random,
    /// The host key or its signature is malformed.
    Malformed(WireError),
    /// The signature over the exchange hash does not verify.
    BadSignature,
    /// A host key of another algorithm.
    UnsupportedHostKey(String),
}

impl std::fmt::Display for KexError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KexError::BadPublicValue => write!(f, "the peer's key exchange value is invalid"),
            KexError::WrongLength {
                field,
                expected,
                got,
            } => write!(f, "{field} is {got} bytes; the method's is {expected}"),
            KexError::Random => write!(f, "no randomness for the key exchange"),
            KexError::Malformed(e) => write!(f, "host key or signature: {e}"),
            KexError::BadSignature => write!(f, "the host key's signature does not verify"),
            KexError::UnsupportedHostKey(a) => write!(f, "host key algorithm {a:?} not supported"),
        }
    }
}

impl std::error::Error for KexError {}

/// The hash function of a key exchange method: the exchange hash and key derivation use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KexHash {
    /// SHA-256 (`curve25519-sha256`, `mlkem768x25519-sha256`).
    Sha256,
    /// SHA-512 (`sntrup761x25519-sha512`).
    Sha512,
}

impl KexHash {
    fn algorithm(self) -> &'static ring::digest::Algorithm {
        match self {
            KexHash::Sha256 => &SHA256,
            KexHash::Sha512 => &SHA512,
        }
    }

    /// The digest of `parts`, one after the other.
    pub fn digest(self, parts: &[&[u8]]) -> ring::digest::Digest {
        let mut ctx = Context::new(self.algorithm());
        for part in parts {
            ctx.update(part);
        }
        ctx.finish()
    }
}

/// The shared secret `K`, encoded as it enters the exchange hash and the key derivation (an
/// `mpint` for curve25519, a `string` for the hybrids), with the method's hash; wiped when
/// dropped.
pub struct SharedSecret {
    encoded: Zeroizing<Vec<u8>>,
    hash: KexHash,
}

impl SharedSecret {
    /// `K` as already encoded, hashed with `hash`.
    pub(crate) fn new(encoded: Zeroizing<Vec<u8>>, hash: KexHash) -> SharedSecret {
        SharedSecret { encoded, hash }
    }

    /// The encoded `K`, as hashed.
    pub fn encoded(&self) -> &[u8] {
        &self.encoded
    }

    /// The method's hash.
    pub fn hash(&self) -> KexHash {
        self.hash
    }
}

/// One side's X25519 value for one exchange.
pub struct Ephemeral {
    private: EphemeralPrivateKey,
    public: Vec<u8>,
}

impl Ephemeral {
    /// A fresh key pair.
    pub fn generate(rng: &dyn SecureRandom) -> Result<Ephemeral, KexError> {
        let private = EphemeralPrivateKey::generate(&X25519, rng).map_err(|_| KexError::Random)?;
        let public = private
            .compute_public_key()
            .map_err(|_| KexError::Random)?
            .as_ref()
            .to_vec();
        Ok(Ephemeral { private, public })
    }

    /// The public value sent to the peer (`Q_C` or `Q_S`).
    pub fn public(&self) -> &[u8] {
        &self.public
    }

    /// `curve25519-sha256`'s shared secret with the peer's public value: the X25519 result as
    /// an `mpint` (RFC 8731 §3).
    pub fn agree(self, peer: &[u8]) -> Result<SharedSecret, KexError> {
        let raw = self.agree_raw(peer)?;
        let mut w = Writer::new();
        w.mpint_unsigned(raw.as_slice());
        Ok(SharedSecret::new(
            Zeroizing::new(w.into_bytes()),
            KexHash::Sha256,
        ))
    }

    /// The raw 32-byte X25519 result with the peer's public value, as the hybrids hash it; an
    /// all-zero result (a low-order point) is refused, as RFC 8731 §3 requires and OpenSSH does
    /// for the hybrids too.
    pub fn agree_raw(self, peer: &[u8]) -> Result<Zeroizing<[u8; 32]>, KexError> {
        if peer.len() != 32 {
            return Err(KexError::BadPublicValue);
        }
        let peer = UnparsedPublicKey::new(&X25519, peer);
        agreement::agree_ephemeral(self.private, &peer, |raw| {
            if raw.iter().all(|b| *b == 0) {
                return None;
            }
            let mut out = Zeroizing::new([0u8; 32]);
            if raw.len() != out.len() {
                return None;
            }
            out.copy_from_slice(raw);
            Some(out)
        })
        .ok()
        .flatten()
        .ok_or(KexError::BadPublicValue)
    }
}

/// What the exchange hash covers, in order.
pub struct HashInput<'a> {
    /// The client's identification line, without CR LF.
    pub client_id: &'a [u8],
    /// The server's.
    pub server_id: &'a [u8],
    /// The client's KEXINIT payload.
    pub client_kexinit: &'a [u8],
    /// The server's.
    pub server_kexinit: &'a [u8],
    /// The server's host key blob.
    pub host_key: &'a [u8],
    /// The client's public value.
    pub client_public: &'a [u8],
    /// The server's.
    pub server_public: &'a [u8],
}

/// The exchange hash `H`, with the method's hash. `Q_C` and `Q_S` go in as strings whatever
/// they hold (a hybrid's are a KEM value and an X25519 value concatenated); `K` goes in as
/// the method encoded it.
pub fn exchange_hash(input: &HashInput<'_>, secret: &SharedSecret) -> Vec<u8> {
    let mut w = Writer::new();
    for field in [
        input.client_id,
        input.server_id,
        input.client_kexinit,
        input.server_kexinit,
        input.host_key,
        input.client_public,
        input.server_public,
    ] {
        w.string(field);
    }
    secret
        .hash
        .digest(&[&w.into_bytes(), secret.encoded()])
        .as_ref()
        .to_vec()
}

/// Key material `letter` ('A' to 'F') of `len` bytes (RFC 4253 §7.2) with the method's hash,
/// wiped when dropped.
pub fn derive(
    secret: &SharedSecret,
    hash: &[u8],
    session_id: &[u8],
    letter: u8,
    len: usize,
) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(len));
    let k = secret.encoded();
    let first = secret.hash.digest(&[k, hash, &[letter], session_id]);
    out.extend_from_slice(first.as_ref());
    while out.len() < len {
        let more = secret.hash.digest(&[k, hash, &out]);
        out.extend_from_slice(more.as_ref());
    }
    out.truncate(len);
    out
}

/// The relay's Ed25519 host key.
pub struct HostKey(Ed25519KeyPair);

impl HostKey {
    /// From the 32-byte private seed.
    pub fn from_seed(seed: &[u8]) -> Option<HostKey> {
        Ed25519KeyPair::from_seed_unchecked(seed).ok().map(HostKey)
    }

    /// The public key blob (`string "ssh-ed25519", string key`), `K_S` in the exchange hash.
    pub fn blob(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.string(SSH_ED25519.as_bytes())
            .string(self.0.public_key().as_ref());
        w.into_bytes()
    }

    /// The signature blob over the exchange hash.
    pub fn sign(&self, hash: &[u8]) -> Vec<u8> {
        let mut w = Writer::new();
        w.string(SSH_ED25519.as_bytes())
            .string(self.0.sign(hash).as_ref());
        w.into_bytes()
    }
}

/// Checks the server's signature blob over `hash` with its host key blob.
pub fn verify_host_signature(
    host_key: &[u8],
    signature: &[u8],
    hash: &[u8],
) -> Result<(), KexError> {
    let mut key = Reader::new(host_key);
    let algorithm = key
        .utf8(64, "host key algorithm")
        .map_err(KexError::Malformed)?;
    if algorithm != SSH_ED25519 {
        return Err(KexError::UnsupportedHostKey(algorithm.to_string()));
    }
    let public = key.string(32, "host key").map_err(KexError::Malformed)?;
    key.finish().map_err(KexError::Malformed)?;
    let mut sig = Reader::new(signature);
    let sig_algorithm = sig
        .utf8(64, "signature algorithm")
        .map_err(KexError::Malformed)?;
    if sig_algorithm != SSH_ED25519 {
        return Err(KexError::UnsupportedHostKey(sig_algorithm.to_string()));
    }
    let raw = sig.string(64, "signature").map_err(KexError::Malformed)?;
    sig.finish().map_err(KexError::Malformed)?;
    signature::UnparsedPublicKey::new(&signature::ED25519, public)
        .verify(hash, raw)
        .map_err(|_| KexError::BadSignature)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;

    /// Both sides of one exchange, as the messages would carry it.
    fn exchange() -> (Vec<u8>, SharedSecret, Vec<u8>, SharedSecret) {
        let rng = SystemRandom::new();
        let client = Ephemeral::generate(&rng).expect("client value");
        let server = Ephemeral::generate(&rng).expect("server value");
        let (q_c, q_s) = (client.public().to_vec(), server.public().to_vec());
        let host = HostKey::from_seed(&[9; 32]).expect("seed");
        let input = HashInput {
            client_id: b"SSH-2.0-burrow_0.1.0",
            server_id: b"SSH-2.0-OpenSSH_9.6",
            client_kexinit: b"\x14client",
            server_kexinit: b"\x14server",
            host_key: &host.blob(),
            client_public: &q_c,
            server_public: &q_s,
        };
        let k_server = server.agree(&q_c).expect("server agrees");
        let h_server = exchange_hash(&input, &k_server);
        let k_client = client.agree(&q_s).expect("client agrees");
        let h_client = exchange_hash(&input, &k_client);
        (h_client, k_client, h_server, k_server)
    }

    #[test]
    fn both_sides_reach_the_same_hash_and_keys() {
        let (h_c, k_c, h_s, k_s) = exchange();
        assert_eq!(h_c, h_s);
        assert_eq!(h_c.len(), 32);
        for letter in b'A'..=b'F' {
            for len in [12, 32, 64, 100] {
                let a = derive(&k_c, &h_c, &h_c, letter, len);
                let b = derive(&k_s, &h_s, &h_s, letter, len);
                assert_eq!(*a, *b);
                assert_eq!(a.len(), len);
            }
        }
        // Different letters give different keys; longer keys extend shorter ones.
        assert_ne!(
            *derive(&k_c, &h_c, &h_c, b'C', 32),
            *derive(&k_c, &h_c, &h_c, b'D', 32)
        );
        let long = derive(&k_c, &h_c, &h_c, b'C', 64);
        assert_eq!(long[..32], *derive(&k_c, &h_c, &h_c, b'C', 32));
    }

    #[test]
    fn derived_keys_drive_the_ciphers_both_ways() {
        let (h_c, k_c, h_s, k_s) = exchange();
        for cipher in crate::crypto::CIPHERS {
            let (key_len, iv_len) = crate::crypto::key_material(cipher).expect("known");
            let client_key = derive(&k_c, &h_c, &h_c, b'C', key_len);
            let client_iv = derive(&k_c, &h_c, &h_c, b'A', iv_len);
            let server_key = derive(&k_s, &h_s, &h_s, b'C', key_len);
            let server_iv = derive(&k_s, &h_s, &h_s, b'A', iv_len);
            let mac_key = [7u8; 32];
            let mac = (!crate::kexinit::is_aead(cipher))
                .then_some((crate::crypto::MACS[0], &mac_key[..]));
            let mut seal =
                crate::crypto::Sealer::new(cipher, &client_key, &client_iv, mac).expect("seal");
            let mut open =
                crate::crypto::Opener::new(cipher, &server_key, &server_iv, mac).expect("open");
            let mut packet = seal.seal(3, b"\x05ssh-userauth", |p| p.fill(1));
            assert_eq!(
                open.open(3, &mut packet),
                Ok(&b"\x05ssh-userauth"[..]),
                "{cipher}"
            );
        }
    }

    #[test]
    fn host_signatures_verify_and_forgeries_do_not() {
        let host = HostKey::from_seed(&[1; 32]).expect("seed");
        let hash = [42u8; 32];
        let sig = host.sign(&hash);
        assert_eq!(verify_host_signature(&host.blob(), &sig, &hash), Ok(()));
        assert_eq!(
            verify_host_signature(&host.blob(), &sig, &[43u8; 32]),
            Err(KexError::BadSignature)
        );
        let other = HostKey::from_seed(&[2; 32]).expect("seed");
        assert_eq!(
            verify_host_signature(&other.blob(), &sig, &hash),
            Err(KexError::BadSignature)
        );
        let mut rsa = Writer::new();
        rsa.string(b"ssh-rsa").string(&[1, 0, 1]);
        assert!(matches!(
            verify_host_signature(&rsa.into_bytes(), &sig, &hash),
            Err(KexError::UnsupportedHostKey(_))
        ));
        assert!(matches!(
            verify_host_signature(&host.blob()[..20], &sig, &hash),
            Err(KexError::Malformed(_))
        ));
    }

    #[test]
    fn low_order_and_malformed_public_values_are_refused() {
        let rng = SystemRandom::new();
        for bad in [vec![0u8; 32], vec![1u8; 31], vec![]] {
            let e = Ephemeral::generate(&rng).expect("value");
            assert!(e.agree(&bad).is_err());
        }
    }
}
