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

#[cfg(test)]
mod tests {
    use super::*;
    use ring::digest::{SHA256, digest};
    use ring::rand::SystemRandom;

    fn hex(text: &str) -> Vec<u8> {
        let text = text.trim();
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
            .collect()
    }

    fn sha256_hex(bytes: &[u8]) -> String {
        digest(&SHA256, bytes)
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// NIST's ACVP vectors for ML-KEM-768 (FIPS 203), test case 26 of the key generation and of
    /// the encapsulation sets: the seed order (d then z) and the encapsulation randomness are
    /// used as the standard says.
    #[test]
    fn ml_kem_768_gives_nists_known_answers() {
        let d = hex("E34A701C4C87582F42264EE422D3C684D97611F2523EFE0C998AF05056D693DC");
        let z = hex("A85768F3486BD32A01BF9A8F21EA938E648EAE4E5448C34C3EB88820B159EEDD");
        let seed: [u8; 64] = [d, z].concat().try_into().expect("64 bytes");
        let key = ml_kem::DecapsulationKey768::from_seed(Seed::from(seed));
        assert_eq!(
            sha256_hex(key.encapsulation_key().to_bytes().as_slice()),
            "7799c9d8eef172aa78c073514f2f039c240de8c5cb61bca82ba0bc46041ce279"
        );

        let ek = hex(include_str!(
            "testdata/mlkem768-acvp-encapsulation-26-ek.hex"
        ));
        let ek = ml_kem::array::Array::try_from(ek.as_slice()).expect("1184 bytes");
        let ek = ml_kem::EncapsulationKey768::new(&ek).expect("a valid key");
        let m: [u8; 32] = hex("2CE74AD291133518FE60C7DF5D251B9D82ADD48462FF505C6E547E949E6B6BF7")
            .try_into()
            .expect("32 bytes");
        let (ciphertext, shared) = ek.encapsulate_deterministic(&B32::from(m));
        assert_eq!(
            sha256_hex(ciphertext.as_slice()),
            "ac57163b80ead205b8323e1402b8ca66bece40d8df9994b12d43bbb4f6e19bf4"
        );
        assert_eq!(
            shared.as_slice(),
            hex("2696D28E9C61C2A01CE9B1608DCB9D292785A0CD58EFB7FE13B1DE95F0DB55B3")
        );
    }

    /// K is HASH(KEM secret || X25519 secret) as an SSH `string` (the digests below are
    /// Python's hashlib over 32 bytes of 1 then 32 bytes of 2).
    #[test]
    fn the_hybrid_secret_is_the_hash_of_both_secrets_as_a_string() {
        let k = combine(KexHash::Sha256, &[1; 32], &[2; 32]);
        let mut expected = vec![0, 0, 0, 32];
        expected.extend(hex(
            "f818afd37a6dc3bc92fb44731011277006db4efa6e9023cd7468c02335d22a4d",
        ));
        assert_eq!(k.encoded(), expected);
        assert_eq!(k.hash(), KexHash::Sha256);
        let k = combine(KexHash::Sha512, &[1; 32], &[2; 32]);
        let mut expected = vec![0, 0, 0, 64];
        expected.extend(hex(
            "fc921a960a9867283a6958fbef4e5d89123dd3d28773ef73339d0a41b2796b37\
             bc3fdb8ee4bf1112bcd22c4cb883909d0c3d1e68184629c272f0545b55444d00",
        ));
        assert_eq!(k.encoded(), expected);
        // A leading zero stays: a string, not an mpint, whatever the digest's first byte.
        assert_eq!(k.encoded().len(), 68);
    }

    #[test]
    fn both_hybrids_agree_with_the_drafts_sizes() {
        let rng = SystemRandom::new();
        for (kem, q_c_len, q_s_len, k_len) in [
            (Kem::MlKem768, 1216, 1120, 36),
            (Kem::Sntrup761, 1190, 1071, 68),
        ] {
            let client = HybridClient::generate(kem, &rng).expect("client");
            assert_eq!(client.public().len(), q_c_len, "{kem:?}");
            let (q_s, server_k) = respond(kem, client.public(), &rng).expect("server");
            assert_eq!(q_s.len(), q_s_len, "{kem:?}");
            let client_k = client.finish(&q_s).expect("client finishes");
            assert_eq!(client_k.encoded(), server_k.encoded(), "{kem:?}");
            assert_eq!(client_k.encoded().len(), k_len, "{kem:?}");
        }
    }

    /// What a hostile peer can send is refused, or (a KEM's implicit rejection) gives a secret
    /// the other side does not have; it never panics.
    #[test]
    fn hostile_shares_are_refused_or_disagree_and_never_panic() {
        let rng = SystemRandom::new();
        let mut seed = 41u64;
        for kem in [Kem::MlKem768, Kem::Sntrup761] {
            let client = HybridClient::generate(kem, &rng).expect("client");
            let good = client.public().to_vec();
            // Sizes are exact both ways.
            for len in [0, 32, good.len() - 1, good.len() + 1] {
                let q_c = vec![7u8; len];
                assert!(
                    matches!(
                        respond(kem, &q_c, &rng),
                        Err(KexError::WrongLength { field: "Q_C", .. })
                    ),
                    "{kem:?} {len}"
                );
            }
            // A low-order X25519 value (all zero) is refused.
            let mut low = good.clone();
            low[kem.public_key_len()..].fill(0);
            assert_eq!(
                respond(kem, &low, &rng).err(),
                Some(KexError::BadPublicValue)
            );
            // Random bytes of the right size, many times (debug builds check overflow too).
            for _ in 0..20 {
                let q_c: Vec<u8> = (0..good.len())
                    .map(|_| crate::xorshift(&mut seed) as u8)
                    .collect();
                let _ = respond(kem, &q_c, &rng);
            }
            let (q_s, server_k) = respond(kem, &good, &rng).expect("server");
            let mut tampered = q_s.clone();
            tampered[3] ^= 1;
            let other = HybridClient::generate(kem, &rng).expect("client");
            let _ = other.finish(&q_s[..q_s.len() - 1]).err().expect("short");
            let k = client.finish(&tampered).expect("implicit rejection");
            assert_ne!(k.encoded(), server_k.encoded(), "{kem:?}");
            for _ in 0..20 {
                let q_s: Vec<u8> = (0..kem.server_share_len())
                    .map(|_| crate::xorshift(&mut seed) as u8)
                    .collect();
                let client = HybridClient::generate(kem, &rng).expect("client");
                let _ = client.finish(&q_s);
            }
        }
        // ML-KEM's modulus check: coefficients of 0xFFF are not below q = 3329.
        let mut q_c = vec![0xFFu8; Kem::MlKem768.client_share_len()];
        q_c[Kem::MlKem768.public_key_len()..].fill(9);
        assert_eq!(
            respond(Kem::MlKem768, &q_c, &rng).err(),
            Some(KexError::BadPublicValue)
        );
    }
}
