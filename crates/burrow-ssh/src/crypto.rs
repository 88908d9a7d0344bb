//! Packet protection after NEWKEYS, on ring's primitives:
//! - `chacha20-poly1305@openssh.com` (OpenSSH's PROTOCOL.chacha20poly1305: the length encrypted
//!   with its own key, the tag over length and body; ring implements exactly this construction);
//! - `aes128-gcm@openssh.com` and `aes256-gcm@openssh.com` (RFC 5647: the length in the clear as
//!   associated data, a 12-byte nonce of a fixed part and a 64-bit counter that grows by one per
//!   packet).
//!
//! A packet is sealed whole; opening is in two steps, because the length must be known before
//! the rest of the packet can be awaited: [`Opener::length`] reads it (for ChaCha20, decrypts
//! it, not yet authenticated), then [`Opener::open`] authenticates and decrypts the packet.

use ring::aead::chacha20_poly1305_openssh as chacha;
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};

use crate::packet::{Framing, PacketError};

/// Authentication tag length of every supported cipher.
pub const TAG_LEN: usize = 16;

/// Why a packet could not be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenError {
    /// Its length or padding break the rules.
    Packet(PacketError),
    /// Its tag does not match: altered, replayed out of order, or not from the peer.
    Authentication,
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::Packet(e) => e.fmt(f),
            OpenError::Authentication => write!(f, "packet authentication failed"),
        }
    }
}

impl std::error::Error for OpenError {}

/// The ciphers this layer offers, best first where AES instructions exist.
pub const CIPHERS: [&str; 3] = [
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes128-gcm@openssh.com",
];

/// Key and IV lengths a cipher needs from the key derivation: (key, iv).
pub fn key_material(cipher: &str) -> Option<(usize, usize)> {
    match cipher {
        "chacha20-poly1305@openssh.com" => Some((chacha::KEY_LEN, 0)),
        "aes256-gcm@openssh.com" => Some((32, 12)),
        "aes128-gcm@openssh.com" => Some((16, 12)),
        _ => None,
    }
}

/// AES-GCM's key and nonce state for one direction.
struct Gcm {
    key: Box<LessSafeKey>,
    fixed: [u8; 4],
    counter: u64,
}

impl Gcm {
    fn new(cipher: &str, key: &[u8], iv: &[u8]) -> Option<Gcm> {
        let algorithm = match cipher {
            "aes256-gcm@openssh.com" => &aead::AES_256_GCM,
            "aes128-gcm@openssh.com" => &aead::AES_128_GCM,
            _ => return None,
        };
        let key = Box::new(LessSafeKey::new(UnboundKey::new(algorithm, key).ok()?));
        let fixed: [u8; 4] = iv.get(..4)?.try_into().ok()?;
        let counter = u64::from_be_bytes(iv.get(4..12)?.try_into().ok()?);
        Some(Gcm {
            key,
            fixed,
            counter,
        })
    }

    /// The nonce for this packet; the next packet gets the next one (RFC 5647 §7.1).
    fn next_nonce(&mut self) -> Nonce {
        let mut n = [0u8; 12];
        let counter = self.counter.to_be_bytes();
        for (slot, b) in n.iter_mut().zip(self.fixed.iter().chain(counter.iter())) {
            *slot = *b;
        }
        self.counter = self.counter.wrapping_add(1);
        Nonce::assume_unique_for_key(n)
    }
}

const CHACHA: &str = "chacha20-poly1305@openssh.com";

fn chacha_material(key: &[u8]) -> Option<&[u8; chacha::KEY_LEN]> {
    key.try_into().ok()
}

fn framing(cipher: &str) -> Framing {
    Framing {
        block: if cipher == CHACHA { 8 } else { 16 },
        length_in_blocks: false,
    }
}

enum SealKey {
    ChaCha(chacha::SealingKey),
    Gcm(Gcm),
}

/// Protects outgoing packets in one direction.
pub struct Sealer {
    key: SealKey,
    framing: Framing,
}

impl Sealer {
    /// For `cipher` with the derived `key` and `iv`; `None` for an unknown cipher or a key of
    /// the wrong length.
    pub fn new(cipher: &str, key: &[u8], iv: &[u8]) -> Option<Sealer> {
        let key = if cipher == CHACHA {
            SealKey::ChaCha(chacha::SealingKey::new(chacha_material(key)?))
        } else {
            SealKey::Gcm(Gcm::new(cipher, key, iv)?)
        };
        Some(Sealer {
            key,
            framing: framing(cipher),
        })
    }

    /// The sealed packet for `payload` with sequence number `seq`; `fill` makes the padding.
    pub fn seal(&mut self, seq: u32, payload: &[u8], fill: impl FnOnce(&mut [u8])) -> Vec<u8> {
        let mut packet = self.framing.frame(payload, fill);
        let mut tag = [0u8; TAG_LEN];
        match &mut self.key {
            SealKey::ChaCha(key) => key.seal_in_place(seq, &mut packet, &mut tag),
            SealKey::Gcm(gcm) => {
                let at = 4.min(packet.len());
                let (length, body) = packet.split_at_mut(at);
                let nonce = gcm.next_nonce();
                let sealed = gcm
                    .key
                    .seal_in_place_separate_tag(nonce, Aad::from(&*length), body);
                if let Ok(t) = sealed {
                    tag.copy_from_slice(t.as_ref());
                }
            }
        }
        packet.extend_from_slice(&tag);
        packet
    }
}

enum OpenKey {
    ChaCha(chacha::OpeningKey),
    Gcm(Gcm),
}

/// Checks and decrypts incoming packets in one direction.
pub struct Opener {
    key: OpenKey,
    framing: Framing,
}

impl Opener {
    /// For `cipher` with the derived `key` and `iv`.
    pub fn new(cipher: &str, key: &[u8], iv: &[u8]) -> Option<Opener> {
        let key = if cipher == CHACHA {
            OpenKey::ChaCha(chacha::OpeningKey::new(chacha_material(key)?))
        } else {
            OpenKey::Gcm(Gcm::new(cipher, key, iv)?)
        };
        Some(Opener {
            key,
            framing: framing(cipher),
        })
    }

    /// The whole packet's length on the wire (length field and tag included), from its first
    /// four bytes; checked against the packet limits before anything more is read.
    pub fn length(&self, seq: u32, first: [u8; 4]) -> Result<usize, OpenError> {
        let plain = match &self.key {
            OpenKey::ChaCha(key) => key.decrypt_packet_length(seq, first),
            OpenKey::Gcm(_) => first,
        };
        let body = self
            .framing
            .check_length(u32::from_be_bytes(plain))
            .map_err(OpenError::Packet)?;
        Ok(body.saturating_add(4).saturating_add(TAG_LEN))
    }

    /// The payload of a whole packet (as long as [`Opener::length`] said) with sequence
    /// number `seq`.
    pub fn open(&mut self, seq: u32, packet: &mut [u8]) -> Result<Vec<u8>, OpenError> {
        let split = packet
            .len()
            .checked_sub(TAG_LEN)
            .ok_or(OpenError::Authentication)?;
        let (sealed, tag) = packet.split_at_mut(split);
        let tag: [u8; TAG_LEN] = (&*tag).try_into().map_err(|_| OpenError::Authentication)?;
        let body: &[u8] = match &mut self.key {
            OpenKey::ChaCha(key) => key
                .open_in_place(seq, sealed, &tag)
                .map_err(|_| OpenError::Authentication)?,
            OpenKey::Gcm(gcm) => {
                let at = 4.min(sealed.len());
                let (length, body) = sealed.split_at_mut(at);
                let mut in_out = body.to_vec();
                in_out.extend_from_slice(&tag);
                // The nonce advances whether or not the packet is genuine: a failure ends the
                // connection anyway.
                let nonce = gcm.next_nonce();
                let plain = gcm
                    .key
                    .open_in_place(nonce, Aad::from(&*length), &mut in_out)
                    .map_err(|_| OpenError::Authentication)?;
                body.copy_from_slice(plain);
                body
            }
        };
        self.framing
            .payload(body)
            .map(<[u8]>::to_vec)
            .map_err(OpenError::Packet)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(cipher: &str) -> (Sealer, Opener) {
        let (key_len, iv_len) = key_material(cipher).expect("known");
        let key: Vec<u8> = (0..key_len).map(|i| i as u8).collect();
        let iv: Vec<u8> = (0..iv_len).map(|i| 0xf0 ^ i as u8).collect();
        (
            Sealer::new(cipher, &key, &iv).expect("sealer"),
            Opener::new(cipher, &key, &iv).expect("opener"),
        )
    }

    #[test]
    fn every_cipher_round_trips_packets_in_sequence() {
        for cipher in CIPHERS {
            let (mut s, mut o) = pair(cipher);
            for (seq, len) in [(3u32, 0usize), (4, 1), (5, 100), (6, 32_000)] {
                let payload = vec![seq as u8; len];
                let mut packet = s.seal(seq, &payload, |p| p.fill(0x11));
                let first: [u8; 4] = packet[..4].try_into().expect("4 bytes");
                assert_eq!(o.length(seq, first), Ok(packet.len()), "{cipher}");
                assert_eq!(o.open(seq, &mut packet), Ok(payload), "{cipher}");
            }
        }
    }

    #[test]
    fn altered_or_misnumbered_packets_are_refused() {
        for cipher in CIPHERS {
            let (mut s, mut o) = pair(cipher);
            let mut packet = s.seal(0, b"hello", |p| p.fill(0));
            let last = packet.len() - 1;
            packet[last] ^= 1;
            assert_eq!(
                o.open(0, &mut packet),
                Err(OpenError::Authentication),
                "{cipher}"
            );
            let (mut s, mut o) = pair(cipher);
            let mut packet = s.seal(7, b"hello", |p| p.fill(0));
            // A packet replayed or reordered carries the wrong sequence (ChaCha) or nonce (GCM).
            let mut again = packet.clone();
            assert!(o.open(7, &mut packet).is_ok());
            assert_eq!(
                o.open(8, &mut again),
                Err(OpenError::Authentication),
                "{cipher}"
            );
        }
        assert!(Sealer::new("aes128-cbc", &[0; 16], &[0; 16]).is_none());
        assert!(Sealer::new("aes256-gcm@openssh.com", &[0; 5], &[0; 12]).is_none());
    }

    #[test]
    fn hostile_lengths_are_refused_before_the_body_is_awaited() {
        for cipher in CIPHERS {
            let (_, o) = pair(cipher);
            let mut seed = 11u64;
            for _ in 0..2_000 {
                let first = (crate::xorshift(&mut seed) as u32).to_be_bytes();
                if let Ok(len) = o.length(0, first) {
                    assert!(len <= crate::packet::MAX_PACKET + TAG_LEN);
                }
            }
        }
    }
}
