//! The data types of RFC 4251 §5: `byte`, `boolean`, `uint32`, `uint64`, `string`, `mpint` and
//! `name-list`. A [`Reader`] never allocates more than the input it was given and refuses every
//! length beyond what is left or beyond the caller's bound; a [`Writer`] appends to a buffer.

/// Why a message could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// The message ended inside a field.
    Truncated {
        /// What was being read.
        field: &'static str,
    },
    /// A length over the bound for that field.
    TooLong {
        /// What was being read.
        field: &'static str,
        /// The length the peer claimed.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// A field whose bytes break its rules (a non-ASCII name, an empty name in a list...).
    Invalid {
        /// What was being read.
        field: &'static str,
        /// Which rule.
        why: &'static str,
    },
    /// Bytes left over after the last field.
    Trailing {
        /// How many.
        len: usize,
    },
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::Truncated { field } => write!(f, "message ends inside {field}"),
            WireError::TooLong { field, len, max } => {
                write!(f, "{field} of {len} bytes is longer than the {max} allowed")
            }
            WireError::Invalid { field, why } => write!(f, "{field}: {why}"),
            WireError::Trailing { len } => write!(f, "{len} bytes after the message's last field"),
        }
    }
}

impl std::error::Error for WireError {}

/// Longest name in a name-list (RFC 4251 §6 caps algorithm names at 64 characters).
pub const MAX_NAME: usize = 64;
/// Most names accepted in one name-list.
pub const MAX_NAMES: usize = 64;

/// Reads fields from one message, front to back.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over `bytes`.
    pub fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { rest: bytes }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.rest.len()
    }

    /// Fails unless everything was read.
    pub fn finish(&self) -> Result<(), WireError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(WireError::Trailing {
                len: self.rest.len(),
            })
        }
    }

    /// The next `n` bytes.
    pub fn bytes(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], WireError> {
        if n > self.rest.len() {
            return Err(WireError::Truncated { field });
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    /// A `byte`.
    pub fn u8(&mut self, field: &'static str) -> Result<u8, WireError> {
        let b = self.bytes(1, field)?;
        b.first().copied().ok_or(WireError::Truncated { field })
    }

    /// A `boolean`: any non-zero byte is true (RFC 4251 §5).
    pub fn bool(&mut self, field: &'static str) -> Result<bool, WireError> {
        Ok(self.u8(field)? != 0)
    }

    /// A `uint32`.
    pub fn u32(&mut self, field: &'static str) -> Result<u32, WireError> {
        let b: [u8; 4] = self
            .bytes(4, field)?
            .try_into()
            .map_err(|_| WireError::Truncated { field })?;
        Ok(u32::from_be_bytes(b))
    }

    /// A `uint64`.
    pub fn u64(&mut self, field: &'static str) -> Result<u64, WireError> {
        let b: [u8; 8] = self
            .bytes(8, field)?
            .try_into()
            .map_err(|_| WireError::Truncated { field })?;
        Ok(u64::from_be_bytes(b))
    }

    /// A `string` of at most `max` bytes, borrowed from the input.
    pub fn string(&mut self, max: usize, field: &'static str) -> Result<&'a [u8], WireError> {
        let len = usize::try_from(self.u32(field)?).unwrap_or(usize::MAX);
        if len > max {
            return Err(WireError::TooLong { field, len, max });
        }
        self.bytes(len, field)
    }

    /// A `string` that must be UTF-8 (user names, descriptions), at most `max` bytes.
    pub fn utf8(&mut self, max: usize, field: &'static str) -> Result<&'a str, WireError> {
        std::str::from_utf8(self.string(max, field)?).map_err(|_| WireError::Invalid {
            field,
            why: "not UTF-8",
        })
    }

    /// An `mpint`, as its two's complement bytes (leading zero byte kept as sent).
    pub fn mpint(&mut self, max: usize, field: &'static str) -> Result<&'a [u8], WireError> {
        let bytes = self.string(max, field)?;
        // RFC 4251 §5: no unnecessary leading bytes.
        if let [first, second, ..] = bytes
            && ((*first == 0 && second & 0x80 == 0) || (*first == 0xff && second & 0x80 != 0))
        {
            return Err(WireError::Invalid {
                field,
                why: "mpint with an unnecessary leading byte",
            });
        }
        Ok(bytes)
    }

    /// A `name-list`: comma-separated US-ASCII names, none empty, each at most [`MAX_NAME`]
    /// characters, at most [`MAX_NAMES`] of them.
    pub fn name_list(&mut self, field: &'static str) -> Result<Vec<&'a str>, WireError> {
        let max = MAX_NAMES.saturating_mul(MAX_NAME.saturating_add(1));
        let raw = self.string(max, field)?;
        if raw.is_empty() {
            return Ok(Vec::new());
        }
        let text = std::str::from_utf8(raw).map_err(|_| WireError::Invalid {
            field,
            why: "a name-list is US-ASCII",
        })?;
        let mut names = Vec::new();
        for name in text.split(',') {
            let printable = name.bytes().all(|b| (0x21..=0x7e).contains(&b));
            if name.is_empty() || !printable || name.len() > MAX_NAME {
                return Err(WireError::Invalid {
                    field,
                    why: "a name is empty, too long, or not printable US-ASCII",
                });
            }
            if names.len() == MAX_NAMES {
                return Err(WireError::Invalid {
                    field,
                    why: "too many names",
                });
            }
            names.push(name);
        }
        Ok(names)
    }
}

/// Appends fields to a message.
#[derive(Debug, Default, Clone)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// An empty message.
    pub fn new() -> Writer {
        Writer::default()
    }

    /// A message starting with message number `msg`.
    pub fn message(msg: u8) -> Writer {
        let mut w = Writer::new();
        w.u8(msg);
        w
    }

    /// The bytes written.
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    /// Raw bytes.
    pub fn raw(&mut self, bytes: &[u8]) -> &mut Writer {
        self.buf.extend_from_slice(bytes);
        self
    }

    /// A `byte`.
    pub fn u8(&mut self, v: u8) -> &mut Writer {
        self.buf.push(v);
        self
    }

    /// A `boolean`.
    pub fn bool(&mut self, v: bool) -> &mut Writer {
        self.u8(u8::from(v))
    }

    /// A `uint32`.
    pub fn u32(&mut self, v: u32) -> &mut Writer {
        self.raw(&v.to_be_bytes())
    }

    /// A `uint64`.
    pub fn u64(&mut self, v: u64) -> &mut Writer {
        self.raw(&v.to_be_bytes())
    }

    /// A `string`. Strings longer than 4 GiB cannot be sent and are cut (never happens: packets
    /// are far smaller).
    pub fn string(&mut self, v: &[u8]) -> &mut Writer {
        let len = u32::try_from(v.len()).unwrap_or(u32::MAX);
        self.u32(len);
        self.raw(v.get(..len as usize).unwrap_or(v))
    }

    /// An `mpint` from an unsigned big-endian magnitude.
    pub fn mpint_unsigned(&mut self, magnitude: &[u8]) -> &mut Writer {
        let trimmed = match magnitude.iter().position(|b| *b != 0) {
            Some(first) => magnitude.get(first..).unwrap_or(&[]),
            None => &[],
        };
        if trimmed.first().is_some_and(|b| b & 0x80 != 0) {
            let mut padded = Vec::with_capacity(trimmed.len().saturating_add(1));
            padded.push(0);
            padded.extend_from_slice(trimmed);
            self.string(&padded)
        } else {
            self.string(trimmed)
        }
    }

    /// A `name-list`.
    pub fn name_list<S: AsRef<str>>(&mut self, names: &[S]) -> &mut Writer {
        let joined = names
            .iter()
            .map(AsRef::as_ref)
            .collect::<Vec<_>>()
            .join(",");
        self.string(joined.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_round_trips() {
        let mut w = Writer::message(20);
        w.bool(true)
            .u32(0xdead_beef)
            .u64(1 << 40)
            .string(b"hello")
            .name_list(&["curve25519-sha256", "ext-info-c"])
            .name_list::<&str>(&[])
            .mpint_unsigned(&[0, 0, 0x80, 1]);
        let bytes = w.into_bytes();
        let mut r = Reader::new(&bytes);
        assert_eq!(r.u8("msg"), Ok(20));
        assert_eq!(r.bool("b"), Ok(true));
        assert_eq!(r.u32("n"), Ok(0xdead_beef));
        assert_eq!(r.u64("n"), Ok(1 << 40));
        assert_eq!(r.string(16, "s"), Ok(&b"hello"[..]));
        assert_eq!(
            r.name_list("kex"),
            Ok(vec!["curve25519-sha256", "ext-info-c"])
        );
        assert_eq!(r.name_list("none"), Ok(vec![]));
        assert_eq!(r.mpint(16, "k"), Ok(&[0, 0x80, 1][..]));
        assert_eq!(r.finish(), Ok(()));
    }

    #[test]
    fn rfc_4251_mpint_examples() {
        let cases: [(&[u8], &[u8]); 3] = [
            (&[], &[0, 0, 0, 0]),
            (&[0x80], &[0, 0, 0, 2, 0, 0x80]),
            (
                &[0x09, 0xa3, 0x78, 0xf9, 0xb2, 0xe3, 0x32, 0xa7],
                &[0, 0, 0, 8, 0x09, 0xa3, 0x78, 0xf9, 0xb2, 0xe3, 0x32, 0xa7],
            ),
        ];
        for (magnitude, wire) in cases {
            let mut w = Writer::new();
            w.mpint_unsigned(magnitude);
            assert_eq!(w.into_bytes(), wire);
        }
        // Unnecessary leading bytes are refused.
        let mut r = Reader::new(&[0, 0, 0, 2, 0, 0x01]);
        assert!(matches!(r.mpint(8, "k"), Err(WireError::Invalid { .. })));
    }

    #[test]
    fn lengths_beyond_the_input_or_the_bound_are_refused_before_allocating() {
        let mut r = Reader::new(&[0xff, 0xff, 0xff, 0xff, 1, 2]);
        assert_eq!(
            r.string(1 << 20, "s"),
            Err(WireError::TooLong {
                field: "s",
                len: 0xffff_ffff,
                max: 1 << 20
            })
        );
        let mut r = Reader::new(&[0, 0, 0, 9, 1, 2]);
        assert_eq!(r.string(64, "s"), Err(WireError::Truncated { field: "s" }));
        for bad in [&b"a,,b"[..], b",a", b"a b", b"\xff"] {
            let mut w = Writer::new();
            w.string(bad);
            let bytes = w.into_bytes();
            assert!(
                matches!(
                    Reader::new(&bytes).name_list("l"),
                    Err(WireError::Invalid { .. })
                ),
                "{bad:?}"
            );
        }
        let long = vec![b'a'; MAX_NAME + 1];
        let mut w = Writer::new();
        w.string(&long);
        let bytes = w.into_bytes();
        assert!(Reader::new(&bytes).name_list("l").is_err());
        let many = vec!["a"; MAX_NAMES + 1];
        let mut w = Writer::new();
        w.name_list(&many);
        let bytes = w.into_bytes();
        assert!(Reader::new(&bytes).name_list("l").is_err());
        assert_eq!(
            Reader::new(&[1]).finish(),
            Err(WireError::Trailing { len: 1 })
        );
    }

    #[test]
    fn hostile_bytes_never_panic() {
        let mut seed = 0x5eed_u64;
        for _ in 0..20_000 {
            let len = (crate::xorshift(&mut seed) % 64) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| crate::xorshift(&mut seed) as u8).collect();
            let mut r = Reader::new(&bytes);
            let _ = r.u8("a");
            let _ = r.name_list("b");
            let _ = r.mpint(32, "c");
            let _ = r.utf8(32, "d");
            let _ = r.u64("e");
            let _ = r.string(usize::MAX, "f");
        }
    }
}
