//! The post-quantum hybrids: `mlkem768x25519-sha256` (draft-ietf-sshm-mlkem-hybrid-kex,
//! OpenSSH's default since 9.9) and `sntrup761x25519-sha512` (draft-ietf-sshm-ntruprime-ssh,
//! OpenSSH's `sntrup761x25519-sha512@openssh.com` since 8.5, its default from 9.0 to 9.8).
//!
//! Both put a key encapsulation mechanism beside X25519. The client sends its KEM public key
//! followed by its X25519 public value (`Q_C`); the server encapsulates a secret to that key
//! and sends the ciphertext followed by its own X25519 public value (`Q_S`). The shared secret
//! is the method's hash over the KEM's secret followed by the raw X25519 result, and it enters
//! the exchange hash and the key derivation as a `string`, where curve25519's is an `mpint`.
//! Either half alone keeps the keys secret: X25519 against today's attacker, the KEM against a
//! quantum computer that reads recorded traffic later.
//!
//! The lattice arithmetic is the `ml-kem` and `sntrup761` crates'; randomness is ring's, fed to
//! their seeded entry points, so one source serves every key exchange.

use ml_kem::{B32, KeyExport, Seed};
use ring::rand::SecureRandom;
use zeroize::Zeroizing;

use super::{Ephemeral, KexError, KexHash, SharedSecret};

/// Size of an X25519 public value.
const X25519_LEN: usize = 32;

/// The KEM half of a hybrid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kem {
    /// ML-KEM-768 (FIPS 203), hashed with SHA-256.
    MlKem768,
    /// Streamlined NTRU Prime 761, hashed with SHA-512.
    Sntrup761,
}

impl Kem {
    /// Size of the KEM's public key.
    pub const fn public_key_len(self) -> usize {
        match self {
            Kem::MlKem768 => 1184,
            Kem::Sntrup761 => sntrup761::PUBLIC_KEY_SIZE,
        }
    }

    /// Size of the KEM's ciphertext.
    pub const fn ciphertext_len(self) -> usize {
        match self {
            Kem::MlKem768 => 1088,
            Kem::Sntrup761 => sntrup761::CIPHERTEXT_SIZE,
        }
    }

    /// Size of `Q_C`: the KEM public key and the X25519 value.
    pub const fn client_share_len(self) -> usize {
        self.public_key_len().saturating_add(X25519_LEN)
    }

    /// Size of `Q_S`: the ciphertext and the X25519 value.
    pub const fn server_share_len(self) -> usize {
        self.ciphertext_len().saturating_add(X25519_LEN)
    }

    /// The method's hash.
    pub const fn hash(self) -> KexHash {
        match self {
            Kem::MlKem768 => KexHash::Sha256,
            Kem::Sntrup761 => KexHash::Sha512,
        }
    }
}

/// The client's KEM secret for one exchange; both wipe themselves when dropped.
enum KemSecret {
    MlKem768(Box<ml_kem::DecapsulationKey768>),
    Sntrup761(Box<sntrup761::DecapsulationKey>),
}

/// The client's side of one hybrid exchange: its secrets and `Q_C`.
pub struct HybridClient {
    kem: KemSecret,
    x25519: Ephemeral,
    public: Vec<u8>,
}

/// `N` random bytes from ring, wiped when dropped.
fn random<const N: usize>(rng: &dyn SecureRandom) -> Result<Zeroizing<[u8; N]>, KexError> {
    let mut bytes = Zeroizing::new([0u8; N]);
    rng.fill(bytes.as_mut_slice())
        .map_err(|_| KexError::Random)?;
    Ok(bytes)
}

/// Checks that `value` has the method's size for `field`.
fn exact<'a>(value: &'a [u8], expected: usize, field: &'static str) -> Result<&'a [u8], KexError> {
    if value.len() != expected {
        return Err(KexError::WrongLength {
            field,
            expected,
            got: value.len(),
        });
    }
    Ok(value)
}

/// The hybrid shared secret: HASH(KEM secret || X25519 result), encoded as a `string`.
fn combine(hash: KexHash, kem_secret: &[u8], x25519_secret: &[u8]) -> SharedSecret {
    let digest = hash.digest(&[kem_secret, x25519_secret]);
    let digest = digest.as_ref();
    let mut encoded = Zeroizing::new(Vec::with_capacity(digest.len().saturating_add(4)));
    // A digest is 32 or 64 bytes: its length always fits.
    let len = u32::try_from(digest.len()).unwrap_or(u32::MAX);
    encoded.extend_from_slice(&len.to_be_bytes());
    encoded.extend_from_slice(digest);
    SharedSecret::new(encoded, hash)
}

impl HybridClient {
    /// Fresh key pairs for `kem` and X25519.
    pub fn generate(kem: Kem, rng: &dyn SecureRandom) -> Result<HybridClient, KexError> {
        let x25519 = Ephemeral::generate(rng)?;
        let mut public = Vec::with_capacity(kem.client_share_len());
        let secret = match kem {
            Kem::MlKem768 => {
                let seed = random::<64>(rng)?;
                let key = ml_kem::DecapsulationKey768::from_seed(Seed::from(*seed));
                public.extend_from_slice(key.encapsulation_key().to_bytes().as_slice());
                KemSecret::MlKem768(Box::new(key))
            }
            Kem::Sntrup761 => {
                let seed = random::<32>(rng)?;
                let (public_key, key) = sntrup761::generate_key_from_seed(*seed);
                public.extend_from_slice(public_key.as_ref());
                KemSecret::Sntrup761(Box::new(key))
            }
        };
        public.extend_from_slice(x25519.public());
        Ok(HybridClient {
            kem: secret,
            x25519,
            public,
        })
    }

    /// `Q_C`: the KEM public key, then the X25519 value.
    pub fn public(&self) -> &[u8] {
        &self.public
    }

    /// The shared secret from the server's `Q_S`.
    pub fn finish(self, q_s: &[u8]) -> Result<SharedSecret, KexError> {
        let kem = match self.kem {
            KemSecret::MlKem768(_) => Kem::MlKem768,
            KemSecret::Sntrup761(_) => Kem::Sntrup761,
        };
        let q_s = exact(q_s, kem.server_share_len(), "Q_S")?;
        let (ciphertext, their_x25519) = q_s
            .split_at_checked(kem.ciphertext_len())
            .ok_or(KexError::BadPublicValue)?;
        let kem_secret: Zeroizing<Vec<u8>> = match &self.kem {
            KemSecret::MlKem768(key) => {
                let ciphertext = ml_kem::ml_kem_768::Ciphertext::try_from(ciphertext)
                    .map_err(|_| KexError::BadPublicValue)?;
                let shared = ml_kem::Decapsulate::decapsulate(key.as_ref(), &ciphertext);
                Zeroizing::new(shared.as_slice().to_vec())
            }
            KemSecret::Sntrup761(key) => {
                let ciphertext = sntrup761::Ciphertext::try_from(ciphertext)
                    .map_err(|_| KexError::BadPublicValue)?;
                Zeroizing::new(key.decapsulate(&ciphertext).as_ref().to_vec())
            }
        };
        let x25519_secret = self.x25519.agree_raw(their_x25519)?;
        Ok(combine(kem.hash(), &kem_secret, x25519_secret.as_slice()))
    }
}

/// The server's side: encapsulates to the client's `Q_C` and returns `Q_S` and the shared
/// secret. A KEM public key that is not one (ML-KEM's modulus check of FIPS 203 §7.2) or an
/// X25519 value of low order is refused.
pub fn respond(
    kem: Kem,
    q_c: &[u8],
    rng: &dyn SecureRandom,
) -> Result<(Vec<u8>, SharedSecret), KexError> {
    let q_c = exact(q_c, kem.client_share_len(), "Q_C")?;
    let (their_key, their_x25519) = q_c
        .split_at_checked(kem.public_key_len())
        .ok_or(KexError::BadPublicValue)?;
    let mut q_s = Vec::with_capacity(kem.server_share_len());
    let kem_secret: Zeroizing<Vec<u8>> = match kem {
        Kem::MlKem768 => {
            let key =
                ml_kem::array::Array::try_from(their_key).map_err(|_| KexError::BadPublicValue)?;
            let key =
                ml_kem::EncapsulationKey768::new(&key).map_err(|_| KexError::BadPublicValue)?;
            let m = random::<32>(rng)?;
            let (ciphertext, shared) = key.encapsulate_deterministic(&B32::from(*m));
            q_s.extend_from_slice(ciphertext.as_slice());
            Zeroizing::new(shared.as_slice().to_vec())
        }
        Kem::Sntrup761 => {
            let key = sntrup761::EncapsulationKey::try_from(their_key)
                .map_err(|_| KexError::BadPublicValue)?;
            let seed = random::<32>(rng)?;
            let (ciphertext, shared) = key.encapsulate_deterministic(*seed);
            q_s.extend_from_slice(ciphertext.as_ref());
            Zeroizing::new(shared.as_ref().to_vec())
        }
    };
    let x25519 = Ephemeral::generate(rng)?;
    q_s.extend_from_slice(x25519.public());
    let x25519_secret = x25519.agree_raw(their_x25519)?;
    Ok((
        q_s,
        combine(kem.hash(), &kem_secret, x25519_secret.as_slice()),
    ))
}
