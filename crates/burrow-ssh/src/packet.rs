//! The binary packet protocol of RFC 4253 §6: `uint32 packet_length`, `byte padding_length`,
//! payload, random padding (at least 4 bytes; the total a multiple of the cipher's block, or of
//! 8). AEAD and encrypt-then-MAC modes leave the length field out of that multiple, as OpenSSH
//! does. This module frames and unframes; the cipher around it is another layer.

/// Largest packet accepted, `packet_length` included (RFC 4253 §6.1 requires 35000).
pub const MAX_PACKET: usize = 35_000;
/// Least padding.
pub const MIN_PADDING: usize = 4;
/// Longest MAC or tag after a packet (hmac-sha2-512).
const MAX_MAC: usize = 64;

/// Why a packet was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PacketError {
    /// `packet_length` out of range.
    Length(u32),
    /// Padding shorter than 4 bytes, or longer than the packet.
    Padding(u8),
    /// The packet does not fill whole blocks.
    Alignment(u32),
}

impl std::fmt::Display for PacketError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PacketError::Length(n) => write!(f, "packet length {n} out of range"),
            PacketError::Padding(n) => write!(f, "padding length {n} out of range"),
            PacketError::Alignment(n) => {
                write!(f, "packet length {n} is not a multiple of the block size")
            }
        }
    }
}

impl std::error::Error for PacketError {}

/// How the padding is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framing {
    /// The cipher's block size (8 for ChaCha20-Poly1305 and no cipher, 16 for AES).
    pub block: usize,
    /// Whether the length field counts towards the block multiple (false for AEAD and
    /// encrypt-then-MAC, whose length travels as associated data or in the clear).
    pub length_in_blocks: bool,
}

impl Framing {
    /// Before the first key exchange: no cipher.
    pub const CLEAR: Framing = Framing {
        block: 8,
        length_in_blocks: true,
    };

    fn block(self) -> usize {
        self.block.max(8)
    }

    /// Padding for a payload of `payload_len` bytes.
    pub fn padding_for(self, payload_len: usize) -> usize {
        let block = self.block();
        let counted = payload_len
            .saturating_add(1)
            .saturating_add(if self.length_in_blocks { 4 } else { 0 });
        let mut padding = block.saturating_sub(counted.checked_rem(block).unwrap_or(0));
        if padding < MIN_PADDING {
            padding = padding.saturating_add(block);
        }
        padding
    }

    /// The framed packet: length, padding length, payload, padding from `fill`; with room
    /// for the largest MAC or tag, so that sealing it does not move it.
    pub fn frame(self, payload: &[u8], fill: impl FnOnce(&mut [u8])) -> Vec<u8> {
        self.frame_parts(payload, &[], fill)
    }

    /// [`Framing::frame`] for a payload of `head` followed by `rest`.
    pub fn frame_parts(self, head: &[u8], rest: &[u8], fill: impl FnOnce(&mut [u8])) -> Vec<u8> {
        let payload_len = head.len().saturating_add(rest.len());
        let padding = self.padding_for(payload_len);
        let body = payload_len.saturating_add(1).saturating_add(padding);
        let mut out = Vec::with_capacity(body.saturating_add(4).saturating_add(MAX_MAC));
        out.extend_from_slice(&u32::try_from(body).unwrap_or(u32::MAX).to_be_bytes());
        out.push(u8::try_from(padding).unwrap_or(u8::MAX));
        out.extend_from_slice(head);
        out.extend_from_slice(rest);
        let start = out.len();
        out.resize(start.saturating_add(padding), 0);
        if let Some(pad) = out.get_mut(start..) {
            fill(pad);
        }
        out
    }

    /// Checks a `packet_length` before the rest of the packet is read.
    pub fn check_length(self, packet_length: u32) -> Result<usize, PacketError> {
        let len = usize::try_from(packet_length).map_err(|_| PacketError::Length(packet_length))?;
        if len < MIN_PADDING.saturating_add(1) || len.saturating_add(4) > MAX_PACKET {
            return Err(PacketError::Length(packet_length));
        }
        let counted = len.saturating_add(if self.length_in_blocks { 4 } else { 0 });
        if !counted.is_multiple_of(self.block()) {
            return Err(PacketError::Alignment(packet_length));
        }
        Ok(len)
    }

    /// The payload of a packet body (what follows `packet_length`).
    pub fn payload(self, body: &[u8]) -> Result<&[u8], PacketError> {
        let Some((&padding, rest)) = body.split_first() else {
            return Err(PacketError::Length(0));
        };
        let padding_len = usize::from(padding);
        if padding_len < MIN_PADDING || padding_len > rest.len() {
            return Err(PacketError::Padding(padding));
        }
        rest.get(..rest.len().saturating_sub(padding_len))
            .ok_or(PacketError::Padding(padding))
    }
}

/// Unframes packets without a cipher from bytes as they arrive (the first key exchange).
#[derive(Debug, Default)]
pub struct ClearReader {
    buf: Vec<u8>,
    /// Sequence number of the next packet (it counts from the first packet and wraps).
    pub seq: u32,
}

impl ClearReader {
    /// Takes `input`.
    pub fn feed(&mut self, input: &[u8]) {
        self.buf.extend_from_slice(input);
    }

    /// The next whole packet's payload, if one has arrived.
    pub fn next_payload(&mut self) -> Result<Option<Vec<u8>>, PacketError> {
        let Some(head) = self.buf.get(..4) else {
            return Ok(None);
        };
        let length = u32::from_be_bytes([
            head.first().copied().unwrap_or(0),
            head.get(1).copied().unwrap_or(0),
            head.get(2).copied().unwrap_or(0),
            head.get(3).copied().unwrap_or(0),
        ]);
        let len = Framing::CLEAR.check_length(length)?;
        let Some(body) = self.buf.get(4..len.saturating_add(4)) else {
            return Ok(None);
        };
        let payload = Framing::CLEAR.payload(body)?.to_vec();
        self.buf.drain(..len.saturating_add(4));
        self.seq = self.seq.wrapping_add(1);
        Ok(Some(payload))
    }

    /// Bytes received after the last whole packet (handed to the cipher after NEWKEYS).
    pub fn take_rest(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_fills_whole_blocks_with_at_least_four_bytes() {
        for framing in [
            Framing::CLEAR,
            Framing {
                block: 16,
                length_in_blocks: true,
            },
            Framing {
                block: 8,
                length_in_blocks: false,
            },
            Framing {
                block: 16,
                length_in_blocks: false,
            },
        ] {
            for len in 0..100 {
                let payload = vec![0xabu8; len];
                let packet = framing.frame(&payload, |p| p.fill(0x55));
                let body = packet.get(4..).expect("length field");
                let counted = body.len() + if framing.length_in_blocks { 4 } else { 0 };
                assert_eq!(counted % framing.block, 0, "{framing:?} {len}");
                let length = u32::try_from(body.len()).expect("small");
                assert_eq!(framing.check_length(length), Ok(body.len()));
                assert_eq!(framing.payload(body), Ok(&payload[..]));
                let padding = usize::from(body[0]);
                assert!((MIN_PADDING..MIN_PADDING + framing.block).contains(&padding));
            }
        }
    }

    #[test]
    fn clear_packets_arrive_in_pieces_and_count_their_sequence() {
        let a = Framing::CLEAR.frame(b"first", |p| p.fill(0));
        let b = Framing::CLEAR.frame(b"second one", |p| p.fill(0));
        let all = [a, b, vec![0, 0]].concat();
        let mut r = ClearReader::default();
        let mut got = Vec::new();
        for byte in &all {
            r.feed(std::slice::from_ref(byte));
            while let Some(p) = r.next_payload().expect("valid") {
                got.push(p);
            }
        }
        assert_eq!(got, vec![b"first".to_vec(), b"second one".to_vec()]);
        assert_eq!(r.seq, 2);
        assert_eq!(r.take_rest(), vec![0, 0]);
    }

    #[test]
    fn hostile_lengths_and_padding_are_refused() {
        let f = Framing::CLEAR;
        assert_eq!(f.check_length(0), Err(PacketError::Length(0)));
        assert_eq!(f.check_length(u32::MAX), Err(PacketError::Length(u32::MAX)));
        assert_eq!(f.check_length(35_000), Err(PacketError::Length(35_000)));
        assert_eq!(f.check_length(13), Err(PacketError::Alignment(13)));
        assert_eq!(f.payload(&[3, 1, 2, 3, 4]), Err(PacketError::Padding(3)));
        assert_eq!(f.payload(&[9, 1, 2, 3]), Err(PacketError::Padding(9)));
        let mut r = ClearReader::default();
        r.feed(&[0xff, 0xff, 0xff, 0xf0]);
        assert!(r.next_payload().is_err());
    }

    #[test]
    fn hostile_bytes_never_panic() {
        let mut seed = 99u64;
        for _ in 0..5_000 {
            let mut r = ClearReader::default();
            for _ in 0..6 {
                let len = (crate::xorshift(&mut seed) % 48) as usize;
                let chunk: Vec<u8> = (0..len)
                    .map(|i| {
                        // Small lengths now and then, so that whole packets form.
                        if i < 3 {
                            0
                        } else {
                            crate::xorshift(&mut seed) as u8
                        }
                    })
                    .collect();
                r.feed(&chunk);
                if r.next_payload().is_err() {
                    break;
                }
            }
        }
    }
}
