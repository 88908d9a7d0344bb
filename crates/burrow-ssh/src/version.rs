//! The identification exchange of RFC 4253 §4.2: `SSH-2.0-softwareversion SP comments CR LF`.
//! A server may send other lines first (a client must skip them); the version line itself is at
//! most 255 characters with its CR LF. Everything after it is binary packets.

/// Longest identification line, CR LF included (RFC 4253 §4.2).
pub const MAX_LINE: usize = 255;
/// Most bytes of lines a server may send before its identification line.
pub const MAX_PREAMBLE: usize = 8192;

/// A peer's identification line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identification {
    /// The whole line without its line end, as it enters the exchange hash.
    pub line: String,
    /// The software version (`OpenSSH_9.6p1`).
    pub software: String,
    /// What follows the first space, if anything.
    pub comments: Option<String>,
}

/// Why the identification could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionError {
    /// A line was longer than allowed.
    TooLong,
    /// Too many lines came before the identification.
    PreambleTooLong,
    /// A client sent something other than its identification first.
    NotSsh(String),
    /// The peer speaks another protocol version.
    Unsupported(String),
    /// The line holds bytes the standard forbids (NUL, control characters, non-ASCII).
    Malformed(String),
}

impl std::fmt::Display for VersionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VersionError::TooLong => write!(f, "identification line longer than {MAX_LINE} bytes"),
            VersionError::PreambleTooLong => write!(
                f,
                "more than {MAX_PREAMBLE} bytes before the identification line"
            ),
            VersionError::NotSsh(l) => write!(f, "not an SSH peer: it sent {l:?}"),
            VersionError::Unsupported(l) => write!(f, "unsupported SSH version: {l:?}"),
            VersionError::Malformed(l) => write!(f, "malformed identification line {l:?}"),
        }
    }
}

impl std::error::Error for VersionError {}

/// Our own identification line, CR LF included.
pub fn line(software: &str, comments: Option<&str>) -> Vec<u8> {
    let mut s = format!("SSH-2.0-{software}");
    if let Some(c) = comments {
        s.push(' ');
        s.push_str(c);
    }
    s.push_str("\r\n");
    s.into_bytes()
}

/// Reads the peer's identification from bytes as they arrive.
#[derive(Debug, Default)]
pub struct VersionReader {
    /// Whether lines before the identification are allowed (reading a server's).
    preamble_allowed: bool,
    buf: Vec<u8>,
    preamble: usize,
}

impl VersionReader {
    /// A reader of a server's identification (other lines may come first) when `from_server`,
    /// else of a client's.
    pub fn new(from_server: bool) -> VersionReader {
        VersionReader {
            preamble_allowed: from_server,
            buf: Vec::new(),
            preamble: 0,
        }
    }

    /// Takes `input`; once the identification is complete, returns it with the bytes that
    /// followed it (the first binary packets).
    pub fn feed(
        &mut self,
        input: &[u8],
    ) -> Result<Option<(Identification, Vec<u8>)>, VersionError> {
        self.buf.extend_from_slice(input);
        loop {
            let Some(end) = self.buf.iter().position(|b| *b == b'\n') else {
                // A line still open: bound what it may grow to.
                let limit = if self.preamble_allowed {
                    MAX_PREAMBLE.saturating_sub(self.preamble).max(MAX_LINE)
                } else {
                    MAX_LINE
                };
                if self.buf.len() > limit {
                    return Err(VersionError::TooLong);
                }
                return Ok(None);
            };
            let rest = self.buf.split_off(end.saturating_add(1));
            let raw = std::mem::replace(&mut self.buf, rest);
            let text = raw
                .strip_suffix(b"\n")
                .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
                .unwrap_or(&raw);
            let shown = String::from_utf8_lossy(text)
                .chars()
                .take(80)
                .collect::<String>();
            if text.starts_with(b"SSH-") {
                if raw.len() > MAX_LINE {
                    return Err(VersionError::TooLong);
                }
                let id = parse(text, &shown)?;
                return Ok(Some((id, std::mem::take(&mut self.buf))));
            }
            if !self.preamble_allowed {
                return Err(VersionError::NotSsh(shown));
            }
            self.preamble = self.preamble.saturating_add(raw.len());
            if self.preamble > MAX_PREAMBLE {
                return Err(VersionError::PreambleTooLong);
            }
        }
    }
}

fn parse(text: &[u8], shown: &str) -> Result<Identification, VersionError> {
    if text.iter().any(|b| !(0x20..=0x7e).contains(b)) {
        return Err(VersionError::Malformed(shown.to_string()));
    }
    let line = String::from_utf8_lossy(text).into_owned();
    let after = line
        .strip_prefix("SSH-2.0-")
        .or_else(|| line.strip_prefix("SSH-1.99-"))
        .ok_or_else(|| VersionError::Unsupported(shown.to_string()))?;
    let (software, comments) = match after.split_once(' ') {
        Some((s, c)) => (s, Some(c.to_string())),
        None => (after, None),
    };
    if software.is_empty() || software.contains('-') {
        return Err(VersionError::Malformed(shown.to_string()));
    }
    Ok(Identification {
        software: software.to_string(),
        comments,
        line,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_in_pieces_then_packets() {
        let mut r = VersionReader::new(false);
        assert_eq!(r.feed(b"SSH-2.0-Open"), Ok(None));
        let (id, rest) = r
            .feed(b"SSH_9.6p1 Debian-4\r\n\x00\x00\x01")
            .expect("valid")
            .expect("complete");
        assert_eq!(id.software, "OpenSSH_9.6p1");
        assert_eq!(id.comments.as_deref(), Some("Debian-4"));
        assert_eq!(id.line, "SSH-2.0-OpenSSH_9.6p1 Debian-4");
        assert_eq!(rest, b"\x00\x00\x01");
        assert_eq!(
            line("burrow_0.1.0", Some("keepalive=150/20")),
            b"SSH-2.0-burrow_0.1.0 keepalive=150/20\r\n"
        );
    }

    #[test]
    fn a_server_may_speak_first_a_client_may_not() {
        let banner = b"Welcome\r\nto the relay\nSSH-1.99-dropbear_2022.83\r\n";
        let mut r = VersionReader::new(true);
        let (id, rest) = r.feed(banner).expect("valid").expect("complete");
        assert_eq!(id.software, "dropbear_2022.83");
        assert!(rest.is_empty());
        let mut r = VersionReader::new(false);
        assert!(matches!(r.feed(banner), Err(VersionError::NotSsh(_))));
    }

    #[test]
    fn bad_lines_are_refused_with_what_was_seen() {
        for (input, want) in [
            (&b"SSH-1.5-old\r\n"[..], "unsupported"),
            (b"SSH-2.0-\r\n", "malformed"),
            (b"SSH-2.0-a\x00b\r\n", "malformed"),
            (b"SSH-2.0-soft-ware\r\n", "malformed"),
            (b"GET / HTTP/1.1\r\n", "not an SSH peer"),
        ] {
            let err = VersionReader::new(false)
                .feed(input)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains(want), "{input:?}: {err}");
        }
        let long = [b"SSH-2.0-".as_slice(), &[b'a'; 300]].concat();
        assert_eq!(
            VersionReader::new(false).feed(&long),
            Err(VersionError::TooLong)
        );
        let chatter = b"hello\r\n".repeat(MAX_PREAMBLE / 7 + 2);
        assert_eq!(
            VersionReader::new(true).feed(&chatter),
            Err(VersionError::PreambleTooLong)
        );
    }

    #[test]
    fn hostile_bytes_never_panic() {
        let mut seed = 7u64;
        for _ in 0..5_000 {
            let mut r = VersionReader::new(seed.is_multiple_of(2));
            for _ in 0..8 {
                let len = (crate::xorshift(&mut seed) % 40) as usize;
                let chunk: Vec<u8> = (0..len)
                    .map(|_| match crate::xorshift(&mut seed) % 4 {
                        0 => b'\n',
                        1 => b'S',
                        _ => crate::xorshift(&mut seed) as u8,
                    })
                    .collect();
                if r.feed(&chunk).is_err() {
                    break;
                }
            }
        }
    }
}
