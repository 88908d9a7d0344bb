//! A raw deflate stream cut into pieces that can each be decoded on arrival (sync flush), and
//! its decoder with bounded output per step: the port log's upload.

use miniz_oxide::deflate::core::{CompressorOxide, create_comp_flags_from_zip_params};
use miniz_oxide::inflate::stream::{InflateState, inflate};
use miniz_oxide::{DataFormat, MZFlush, MZStatus};

/// Compression level: text from a console compresses nearly as well at 6 as at 9, for less CPU
/// on a small board.
const LEVEL: i32 = 6;
/// Output decoded per step.
const STEP: usize = 16 << 10;

/// One compressing stream; each [`Deflater::piece`] can be decoded as soon as it arrives, and
/// later pieces use what earlier ones said (a syslog line compresses against the ones before).
pub struct Deflater {
    state: Box<CompressorOxide>,
}

impl Default for Deflater {
    fn default() -> Self {
        // Negative window bits: raw deflate, no zlib header or checksum (SSH checks integrity).
        let flags = create_comp_flags_from_zip_params(LEVEL, -15, 0);
        Deflater {
            state: Box::new(CompressorOxide::new(flags)),
        }
    }
}

impl Deflater {
    /// `input`, compressed and flushed so that the other end can decode all of it now.
    pub fn piece(&mut self, input: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; input.len() / 2 + 64];
        let mut written = 0;
        let mut rest = input;
        loop {
            if written == out.len() {
                out.resize(out.len() * 2, 0);
            }
            let Some(space) = out.get_mut(written..) else {
                break;
            };
            let r =
                miniz_oxide::deflate::stream::deflate(&mut self.state, rest, space, MZFlush::Sync);
            written += r.bytes_written;
            rest = rest.get(r.bytes_consumed..).unwrap_or_default();
            // Done when everything went in and the flush left room to spare.
            if rest.is_empty() && written < out.len() || r.status.is_err() {
                break;
            }
        }
        out.truncate(written);
        out
    }
}

/// The decoder of a [`Deflater`]'s pieces.
pub struct Inflater {
    state: Box<InflateState>,
}

impl Default for Inflater {
    fn default() -> Self {
        Inflater {
            state: InflateState::new_boxed(DataFormat::Raw),
        }
    }
}

/// The stream does not decode.
#[derive(Debug, thiserror::Error)]
#[error("the compressed stream is corrupt")]
pub struct Corrupt;

impl Inflater {
    /// Decodes `input`, handing the output to `sink` at most 16 KiB at a time (a small piece
    /// that expands enormously never takes more memory than that here); `sink` may stop it.
    pub fn feed<E>(
        &mut self,
        input: &[u8],
        mut sink: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<Result<(), E>, Corrupt> {
        let mut buf = vec![0u8; STEP];
        let mut rest = input;
        loop {
            let r = inflate(&mut self.state, rest, &mut buf, MZFlush::None);
            rest = rest.get(r.bytes_consumed..).unwrap_or_default();
            if let Some(out) = buf.get(..r.bytes_written)
                && !out.is_empty()
                && let Err(e) = sink(out)
            {
                return Ok(Err(e));
            }
            match r.status {
                Ok(MZStatus::Ok) => {}
                Ok(_) => return Ok(Ok(())),
                // No progress possible: everything given was decoded.
                Err(miniz_oxide::MZError::Buf) => return Ok(Ok(())),
                Err(_) => return Err(Corrupt),
            }
            if rest.is_empty() && r.bytes_written < buf.len() {
                return Ok(Ok(()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_decode_on_arrival_and_compress_against_earlier_ones() {
        let mut d = Deflater::default();
        let mut i = Inflater::default();
        let line = b"Nov 23 12:00:01 router %LINK-3-UPDOWN: Interface GigabitEthernet0/1, changed state to up\r\n";
        let mut sizes = Vec::new();
        for n in 0..5 {
            let mut input = line.to_vec();
            input.extend_from_slice(format!("{n}").as_bytes());
            let piece = d.piece(&input);
            sizes.push(piece.len());
            let mut got = Vec::new();
            i.feed::<()>(&piece, |b| {
                got.extend_from_slice(b);
                Ok(())
            })
            .unwrap()
            .unwrap();
            assert_eq!(got, input);
        }
        assert!(
            sizes[4] < sizes[0] / 2,
            "later lines refer to earlier ones: {sizes:?}"
        );
        // Big input, in one piece.
        let big: Vec<u8> = (0..200_000u32).map(|v| (v % 251) as u8).collect();
        let piece = d.piece(&big);
        let mut got = Vec::new();
        i.feed::<()>(&piece, |b| {
            got.extend_from_slice(b);
            Ok(())
        })
        .unwrap()
        .unwrap();
        assert_eq!(got, big);
    }

    #[test]
    fn garbage_is_corrupt_not_a_panic() {
        let mut i = Inflater::default();
        let r = i.feed::<()>(&[0xff; 64], |_| Ok(()));
        assert!(r.is_err());
    }
}
