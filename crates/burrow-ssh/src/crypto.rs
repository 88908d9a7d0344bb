//! Packet protection after NEWKEYS:
//! - `chacha20-poly1305@openssh.com` (OpenSSH's PROTOCOL.chacha20poly1305: the length encrypted
//!   with its own key, the tag over length and body), on RustCrypto's ChaCha20 and Poly1305,
//!   whose vector code (AVX2, and AVX-512 for ChaCha20 where `.cargo/config.toml` turns it on)
//!   is chosen at run time; ring's Poly1305 is portable C and was over a quarter of the
//!   relay's CPU on the operator path (bench/tuning.md, step 13);
//! - `aes128-gcm@openssh.com` and `aes256-gcm@openssh.com` (RFC 5647: the length in the clear as
//!   associated data, a 12-byte nonce of a fixed part and a 64-bit counter that grows by one per
//!   packet).
//!
//! - `aes128-ctr` and `aes256-ctr` with `hmac-sha2-256-etm@openssh.com` or
//!   `hmac-sha2-512-etm@openssh.com`, for older dropbear and TeraTerm builds (OpenSSH's
//!   PROTOCOL §1.7: the length in the clear, the rest encrypted, the MAC over the sequence
//!   number and the whole encrypted packet, checked before anything is decrypted). AES-CTR
//!   comes from RustCrypto (ring has none), HMAC from ring.
//!
//! A packet is sealed whole; opening is in two steps, because the length must be known before
//! the rest of the packet can be awaited: [`Opener::length`] reads it (for ChaCha20, decrypts
//! it, not yet authenticated), then [`Opener::open`] authenticates and decrypts the packet.

use aes::cipher::{KeyIvInit, StreamCipher};
use chacha20::ChaCha20LegacyCore;
use chacha20::cipher::{Block, StreamCipherCore};
use poly1305::Poly1305;
use poly1305::universal_hash::{KeyInit, UniversalHash};
use ring::aead::{self, Aad, LessSafeKey, Nonce, Tag, UnboundKey};
use ring::hmac;

use crate::packet::{Framing, PacketError};

/// Authentication tag length of the AEAD ciphers.
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

/// The ciphers this layer offers, best first where AES instructions exist; the CTR ciphers
/// last, for peers that have nothing better.
pub const CIPHERS: [&str; 5] = [
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes128-gcm@openssh.com",
    "aes256-ctr",
    "aes128-ctr",
];

/// The MACs offered with the CTR ciphers: encrypt-then-MAC only, no SHA-1.
pub const MACS: [&str; 2] = [
    "hmac-sha2-256-etm@openssh.com",
    "hmac-sha2-512-etm@openssh.com",
];

/// Key and IV lengths a cipher needs from the key derivation: (key, iv).
pub fn key_material(cipher: &str) -> Option<(usize, usize)> {
    match cipher {
        "chacha20-poly1305@openssh.com" => Some((ChaChaPoly::KEY_LEN, 0)),
        "aes256-gcm@openssh.com" => Some((32, 12)),
        "aes128-gcm@openssh.com" => Some((16, 12)),
        "aes256-ctr" => Some((32, 16)),
        "aes128-ctr" => Some((16, 16)),
        _ => None,
    }
}

/// The key length a MAC needs from the key derivation.
pub fn mac_key_len(mac: &str) -> Option<usize> {
    match mac {
        "hmac-sha2-256-etm@openssh.com" => Some(32),
        "hmac-sha2-512-etm@openssh.com" => Some(64),
        _ => None,
    }
}

/// AES-CTR's keystream for one direction; it runs on across packets.
enum Ctr {
    Aes128(Box<ctr::Ctr128BE<aes::Aes128>>),
    Aes256(Box<ctr::Ctr128BE<aes::Aes256>>),
}

impl Ctr {
    fn new(cipher: &str, key: &[u8], iv: &[u8]) -> Option<Ctr> {
        Some(match cipher {
            "aes128-ctr" => Ctr::Aes128(Box::new(
                ctr::Ctr128BE::<aes::Aes128>::new_from_slices(key, iv).ok()?,
            )),
            "aes256-ctr" => Ctr::Aes256(Box::new(
                ctr::Ctr128BE::<aes::Aes256>::new_from_slices(key, iv).ok()?,
            )),
            _ => return None,
        })
    }

    fn apply(&mut self, data: &mut [u8]) {
        match self {
            Ctr::Aes128(c) => c.apply_keystream(data),
            Ctr::Aes256(c) => c.apply_keystream(data),
        }
    }
}

/// AES-CTR with an encrypt-then-MAC HMAC.
struct CtrEtm {
    ctr: Ctr,
    mac: hmac::Key,
    mac_len: usize,
}

impl CtrEtm {
    fn new(cipher: &str, key: &[u8], iv: &[u8], mac: (&str, &[u8])) -> Option<CtrEtm> {
        let (algorithm, mac_len) = match mac.0 {
            "hmac-sha2-256-etm@openssh.com" => (hmac::HMAC_SHA256, 32),
            "hmac-sha2-512-etm@openssh.com" => (hmac::HMAC_SHA512, 64),
            _ => return None,
        };
        if Some(mac.1.len()) != mac_key_len(mac.0) {
            return None;
        }
        Some(CtrEtm {
            ctr: Ctr::new(cipher, key, iv)?,
            mac: hmac::Key::new(algorithm, mac.1),
            mac_len,
        })
    }

    fn tag(&self, seq: u32, packet: &[u8]) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.mac);
        ctx.update(&seq.to_be_bytes());
        ctx.update(packet);
        ctx.sign()
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

/// `chacha20-poly1305@openssh.com` for one direction: two ChaCha20 keys (the original 64-bit
/// nonce variant, the nonce being the packet's sequence number). The second key encrypts only
/// the length; the first makes the Poly1305 key from its block 0 and encrypts the rest of the
/// packet from block 1 on. The tag covers the encrypted length and body.
struct ChaChaPoly {
    main: zeroize::Zeroizing<[u8; 32]>,
    header: zeroize::Zeroizing<[u8; 32]>,
}

impl ChaChaPoly {
    const KEY_LEN: usize = 64;

    fn new(key: &[u8]) -> Option<ChaChaPoly> {
        if key.len() != Self::KEY_LEN {
            return None;
        }
        let (main, header) = key.split_at(32);
        Some(ChaChaPoly {
            main: zeroize::Zeroizing::new(main.try_into().ok()?),
            header: zeroize::Zeroizing::new(header.try_into().ok()?),
        })
    }

    fn cipher(key: &[u8; 32], seq: u32) -> ChaCha20LegacyCore {
        let nonce: chacha20::LegacyNonce = u64::from(seq).to_be_bytes().into();
        ChaCha20LegacyCore::new(key.into(), &nonce)
    }

    /// The first [`FIRST_BLOCKS`] keystream blocks of `key` for packet `seq`, and the cipher
    /// after them. Not one block alone: the crate's code for a single block is its slowest (on
    /// AVX-512 its 128-bit code, whose rotations this build leaves as calls; on AVX2 a whole
    /// four-block round for one), and four are one vector's work on either.
    fn first_blocks(key: &[u8; 32], seq: u32) -> (ChaCha20LegacyCore, FirstBlocks) {
        let mut cipher = Self::cipher(key, seq);
        let mut blocks =
            zeroize::Zeroizing::new([Block::<ChaCha20LegacyCore>::default(); FIRST_BLOCKS]);
        cipher.write_keystream_blocks(&mut *blocks);
        (cipher, blocks)
    }

    /// The length field (the first four bytes) en- or decrypted.
    fn length(&self, seq: u32, first: &mut [u8]) {
        let (_, blocks) = Self::first_blocks(&self.header, seq);
        if let Some(block) = blocks.first() {
            xor(first, block);
        }
    }

    /// The packet's one-time Poly1305 key (block 0), the keystream blocks after it that were
    /// made with it, and the cipher for the rest of the body.
    fn body(
        &self,
        seq: u32,
    ) -> (
        ChaCha20LegacyCore,
        zeroize::Zeroizing<[u8; 32]>,
        FirstBlocks,
    ) {
        let (cipher, blocks) = Self::first_blocks(&self.main, seq);
        let mut poly_key = zeroize::Zeroizing::new([0u8; 32]);
        if let Some(block) = blocks.first() {
            for (k, b) in poly_key.iter_mut().zip(block.iter()) {
                *k = *b;
            }
        }
        (cipher, poly_key, blocks)
    }

    /// Encrypts `packet` (length field first) in place; returns the tag.
    fn seal(&self, seq: u32, packet: &mut [u8]) -> [u8; TAG_LEN] {
        let at = 4.min(packet.len());
        let (first, body) = packet.split_at_mut(at);
        self.length(seq, first);
        let (mut cipher, poly_key, blocks) = self.body(seq);
        apply_keystream(&mut cipher, blocks.get(1..).unwrap_or_default(), body);
        mac(&poly_key, packet)
    }

    /// Checks `tag` over `sealed` (in constant time) and only then decrypts its body in place.
    fn open<'p>(&self, seq: u32, sealed: &'p mut [u8], tag: &[u8]) -> Option<&'p [u8]> {
        let (mut cipher, poly_key, blocks) = self.body(seq);
        let expected = mac(&poly_key, sealed);
        if !constant_time_eq(&expected, tag) {
            return None;
        }
        let body = sealed.get_mut(4..)?;
        apply_keystream(&mut cipher, blocks.get(1..).unwrap_or_default(), body);
        Some(body)
    }
}

/// Keystream blocks made at the start of each packet (see [`ChaChaPoly::first_blocks`]).
const FIRST_BLOCKS: usize = 4;

/// Those blocks, wiped when dropped.
type FirstBlocks = zeroize::Zeroizing<[Block<ChaCha20LegacyCore>; FIRST_BLOCKS]>;

/// Poly1305 of `data` under the packet's one-time key: on AVX-512 IFMA where the CPU has it
/// ([`burrow_poly1305`]), else on RustCrypto's code (AVX2 where there is AVX2), which gets
/// the whole 16-byte blocks through `update`, four at a time to its vector code, and only the
/// short end through `compute_unpadded`, which takes one block per call (copying each into a
/// cache of four first): a third less time per byte than all of it through
/// `compute_unpadded`.
fn mac(key: &[u8; 32], data: &[u8]) -> [u8; TAG_LEN] {
    if burrow_poly1305::accelerated() {
        return burrow_poly1305::tag(key, data);
    }
    let mut poly = Poly1305::new(key.into());
    let (blocks, end) = poly1305::Block::slice_as_chunks(data);
    poly.update(blocks);
    poly.compute_unpadded(end).into()
}

/// XORs the keystream into `data`: first the blocks already made (`made`), then `cipher`'s,
/// sixteen blocks at a time (what the AVX-512 code makes in one go). The crate's own
/// `apply_keystream` XORs byte by byte through a copy on the stack in this build, which made
/// its ChaCha20 slower than ring's (bench/tuning.md, step 13).
fn apply_keystream(
    cipher: &mut ChaCha20LegacyCore,
    made: &[Block<ChaCha20LegacyCore>],
    data: &mut [u8],
) {
    const BLOCKS: usize = 16;
    let (head, rest) = data.split_at_mut(made.len().saturating_mul(64).min(data.len()));
    for (part, block) in head.chunks_mut(64).zip(made) {
        xor(part, block);
    }
    let mut keystream = [Block::<ChaCha20LegacyCore>::default(); BLOCKS];
    for chunk in rest.chunks_mut(BLOCKS * 64) {
        let blocks = keystream
            .get_mut(..chunk.len().div_ceil(64))
            .unwrap_or_default();
        cipher.write_keystream_blocks(blocks);
        for (part, block) in chunk.chunks_mut(64).zip(blocks.iter()) {
            xor(part, block);
        }
    }
}

/// `data ^= keystream` over the shorter of the two, eight bytes at a time: the release build's
/// link-time pass runs at the size-optimised level, which leaves a byte loop unvectorised.
fn xor(data: &mut [u8], keystream: &[u8]) {
    let n = data.len().min(keystream.len());
    let (data, keystream) = (
        data.get_mut(..n).unwrap_or_default(),
        keystream.get(..n).unwrap_or_default(),
    );
    let mut words = data.chunks_exact_mut(8);
    let mut keys = keystream.chunks_exact(8);
    for (d, k) in (&mut words).zip(&mut keys) {
        let mixed = u64::from_ne_bytes(<[u8; 8]>::try_from(&*d).unwrap_or_default())
            ^ u64::from_ne_bytes(k.try_into().unwrap_or_default());
        d.copy_from_slice(&mixed.to_ne_bytes());
    }
    for (d, k) in words.into_remainder().iter_mut().zip(keys.remainder()) {
        *d ^= k;
    }
}

fn framing(cipher: &str) -> Framing {
    Framing {
        block: if cipher == CHACHA { 8 } else { 16 },
        length_in_blocks: false,
    }
}

enum SealKey {
    ChaCha(Box<ChaChaPoly>),
    Gcm(Gcm),
    CtrEtm(CtrEtm),
}

/// A MAC by name with its key, for the ciphers that need one.
pub type MacKey<'a> = Option<(&'a str, &'a [u8])>;

/// Protects outgoing packets in one direction.
pub struct Sealer {
    key: SealKey,
    framing: Framing,
}

impl Sealer {
    /// For `cipher` with the derived `key` and `iv` (and `mac` for a CTR cipher); `None` for
    /// an unknown cipher or a key of the wrong length.
    pub fn new(cipher: &str, key: &[u8], iv: &[u8], mac: MacKey<'_>) -> Option<Sealer> {
        let key = if cipher == CHACHA {
            SealKey::ChaCha(Box::new(ChaChaPoly::new(key)?))
        } else if let Some(mac) = mac {
            SealKey::CtrEtm(CtrEtm::new(cipher, key, iv, mac)?)
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
        self.seal_parts(seq, payload, &[], fill)
    }

    /// [`Sealer::seal`] for a payload of `head` followed by `body`.
    pub fn seal_parts(
        &mut self,
        seq: u32,
        head: &[u8],
        body: &[u8],
        fill: impl FnOnce(&mut [u8]),
    ) -> Vec<u8> {
        let mut packet = self.framing.frame_parts(head, body, fill);
        if let SealKey::CtrEtm(etm) = &mut self.key {
            etm.ctr.apply(packet.get_mut(4..).unwrap_or_default());
            let tag = etm.tag(seq, &packet);
            packet.extend_from_slice(tag.as_ref());
            return packet;
        }
        let mut tag = [0u8; TAG_LEN];
        match &mut self.key {
            SealKey::ChaCha(key) => tag = key.seal(seq, &mut packet),
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
            SealKey::CtrEtm(_) => {}
        }
        packet.extend_from_slice(&tag);
        packet
    }
}

enum OpenKey {
    ChaCha(Box<ChaChaPoly>),
    Gcm(Gcm),
    CtrEtm(CtrEtm),
}

/// Checks and decrypts incoming packets in one direction.
pub struct Opener {
    key: OpenKey,
    framing: Framing,
}

impl Opener {
    /// For `cipher` with the derived `key` and `iv` (and `mac` for a CTR cipher).
    pub fn new(cipher: &str, key: &[u8], iv: &[u8], mac: MacKey<'_>) -> Option<Opener> {
        let key = if cipher == CHACHA {
            OpenKey::ChaCha(Box::new(ChaChaPoly::new(key)?))
        } else if let Some(mac) = mac {
            OpenKey::CtrEtm(CtrEtm::new(cipher, key, iv, mac)?)
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
        let mut plain = first;
        if let OpenKey::ChaCha(key) = &self.key {
            key.length(seq, &mut plain);
        }
        let body = self
            .framing
            .check_length(u32::from_be_bytes(plain))
            .map_err(OpenError::Packet)?;
        Ok(body.saturating_add(4).saturating_add(self.tag_len()))
    }

    fn tag_len(&self) -> usize {
        match &self.key {
            OpenKey::CtrEtm(etm) => etm.mac_len,
            OpenKey::ChaCha(_) | OpenKey::Gcm(_) => TAG_LEN,
        }
    }

    /// The payload of a whole packet (as long as [`Opener::length`] said) with sequence
    /// number `seq`, decrypted in place: a slice of `packet`.
    pub fn open<'p>(&mut self, seq: u32, packet: &'p mut [u8]) -> Result<&'p [u8], OpenError> {
        if let OpenKey::CtrEtm(etm) = &mut self.key {
            let split = packet
                .len()
                .checked_sub(etm.mac_len)
                .ok_or(OpenError::Authentication)?;
            let (sealed, tag) = packet.split_at_mut(split);
            // The MAC is checked (in constant time) before a byte is decrypted.
            let mut ctx = hmac::Context::with_key(&etm.mac);
            ctx.update(&seq.to_be_bytes());
            ctx.update(sealed);
            let expected = ctx.sign();
            if !constant_time_eq(expected.as_ref(), tag) {
                return Err(OpenError::Authentication);
            }
            let body = sealed.get_mut(4..).unwrap_or_default();
            etm.ctr.apply(body);
            return self.framing.payload(body).map_err(OpenError::Packet);
        }
        let split = packet
            .len()
            .checked_sub(TAG_LEN)
            .ok_or(OpenError::Authentication)?;
        let (sealed, tag) = packet.split_at_mut(split);
        let tag: [u8; TAG_LEN] = (&*tag).try_into().map_err(|_| OpenError::Authentication)?;
        let body: &[u8] = match &mut self.key {
            OpenKey::ChaCha(key) => key
                .open(seq, sealed, &tag)
                .ok_or(OpenError::Authentication)?,
            OpenKey::Gcm(gcm) => {
                let at = 4.min(sealed.len());
                let (length, body) = sealed.split_at_mut(at);
                // The nonce advances whether or not the packet is genuine: a failure ends the
                // connection anyway.
                let nonce = gcm.next_nonce();
                gcm.key
                    .open_in_place_separate_tag(
                        nonce,
                        Aad::from(&*length),
                        Tag::from(tag),
                        body,
                        0..,
                    )
                    .map_err(|_| OpenError::Authentication)?
            }
            OpenKey::CtrEtm(_) => return Err(OpenError::Authentication),
        };
        self.framing.payload(body).map_err(OpenError::Packet)
    }
}

/// Whether two byte strings are equal, in time that depends only on their lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(cipher: &str) -> (Sealer, Opener) {
        pair_with(cipher, MACS[0])
    }

    fn pair_with(cipher: &str, mac: &str) -> (Sealer, Opener) {
        let (key_len, iv_len) = key_material(cipher).expect("known");
        let key: Vec<u8> = (0..key_len).map(|i| i as u8).collect();
        let iv: Vec<u8> = (0..iv_len).map(|i| 0xf0 ^ i as u8).collect();
        let mac_key = vec![0x5a; mac_key_len(mac).expect("mac")];
        let mac = (!crate::kexinit::is_aead(cipher)).then_some((mac, mac_key.as_slice()));
        (
            Sealer::new(cipher, &key, &iv, mac).expect("sealer"),
            Opener::new(cipher, &key, &iv, mac).expect("opener"),
        )
    }

    /// ring implements OpenSSH's chacha20-poly1305 construction whole; ours (on RustCrypto's
    /// vector code) must give the same bytes and tags, and open what ring sealed, for every
    /// length the vector code splits differently (blocks of 64 bytes, batches of 4, 8 and
    /// 16 blocks) and for sequence numbers up to the wrap.
    #[test]
    fn chacha20_poly1305_matches_ring_byte_for_byte() {
        use ring::aead::chacha20_poly1305_openssh as reference;
        let key: [u8; 64] = std::array::from_fn(|i| (i as u8).wrapping_mul(37) ^ 0x5c);
        let theirs_seal = reference::SealingKey::new(&key);
        let theirs_open = reference::OpeningKey::new(&key);
        let ours = ChaChaPoly::new(&key).expect("64-byte key");
        let lengths = (0..600).chain([1020, 1024, 4096, 32 * 1024 + 20, 35_000, 256 * 1024 + 3]);
        for (n, len) in lengths.enumerate() {
            let seq = match n % 4 {
                0 => n as u32,
                1 => u32::MAX - n as u32,
                2 => 1 << 31,
                _ => 0,
            };
            let plain: Vec<u8> = (0..len + 4).map(|i| (i * 7 + n) as u8).collect();
            let mut a = plain.clone();
            let mut tag_a = [0u8; TAG_LEN];
            theirs_seal.seal_in_place(seq, &mut a, &mut tag_a);
            let mut b = plain.clone();
            let tag_b = ours.seal(seq, &mut b);
            assert_eq!(a, b, "ciphertext, {len} bytes, seq {seq}");
            assert_eq!(tag_a, tag_b, "tag, {len} bytes, seq {seq}");
            let mut first: [u8; 4] = a[..4].try_into().expect("4");
            ours.length(seq, &mut first);
            assert_eq!(first, plain[..4], "length, seq {seq}");
            assert_eq!(ours.open(seq, &mut a, &tag_a), Some(&plain[4..]));
            // And ring opens what we sealed.
            assert_eq!(
                theirs_open.open_in_place(seq, &mut b, &tag_b).ok(),
                Some(&plain[4..])
            );
        }
        // A flipped bit anywhere, or the wrong sequence number, is refused before decrypting.
        let mut packet = vec![9u8; 100];
        let tag = ours.seal(7, &mut packet);
        let sealed = packet.clone();
        for at in [0, 3, 4, 99] {
            let mut altered = sealed.clone();
            altered[at] ^= 0x10;
            let mut p = altered.clone();
            assert_eq!(ours.open(7, &mut p, &tag), None, "flipped byte {at}");
            assert_eq!(p, altered, "left as it came");
        }
        let mut p = sealed.clone();
        assert_eq!(ours.open(8, &mut p, &tag), None, "wrong sequence number");
    }

    #[test]
    fn ctr_with_either_mac_round_trips_and_refuses_a_flipped_bit() {
        for cipher in ["aes128-ctr", "aes256-ctr"] {
            for mac in MACS {
                let (mut s, mut o) = pair_with(cipher, mac);
                for seq in 0..4u32 {
                    let payload = vec![seq as u8 + 1; 100 * seq as usize];
                    let mut packet = s.seal(seq, &payload, |p| p.fill(3));
                    // The length is in the clear and the body is not.
                    if !payload.is_empty() {
                        assert_ne!(&packet[5..13], &payload[..8]);
                    }
                    let first: [u8; 4] = packet[..4].try_into().expect("4");
                    assert_eq!(o.length(seq, first), Ok(packet.len()));
                    assert_eq!(o.open(seq, &mut packet), Ok(&payload[..]), "{cipher} {mac}");
                }
                let mut packet = s.seal(4, b"x", |p| p.fill(0));
                packet[6] ^= 1;
                assert_eq!(o.open(4, &mut packet), Err(OpenError::Authentication));
            }
        }
        assert!(
            Sealer::new(
                "aes128-ctr",
                &[0; 16],
                &[0; 16],
                Some(("hmac-sha1", &[0; 20]))
            )
            .is_none()
        );
        assert!(Sealer::new("aes128-ctr", &[0; 16], &[0; 16], Some((MACS[0], &[0; 5]))).is_none());
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
                assert_eq!(o.open(seq, &mut packet), Ok(&payload[..]), "{cipher}");
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
        assert!(Sealer::new("aes128-cbc", &[0; 16], &[0; 16], None).is_none());
        assert!(Sealer::new("aes256-gcm@openssh.com", &[0; 5], &[0; 12], None).is_none());
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
