//! asciicast v2 recordings (playable with `asciinema play`), written as events happen.
//!
//! The header is one JSON object; each event is a JSON array `[seconds, code, data]` with code
//! `o` for output and `m` for a marker (attach, detach, break, baud). Serial output is bytes, not
//! text: a UTF-8 sequence split across reads is held until it completes, and bytes that cannot be
//! UTF-8 (wrong baud, binary) become U+FFFD, so every line stays valid JSON.

use std::fmt::Write;

/// The header line for a recording.
pub fn header(width: u16, height: u16, unix_timestamp: i64, title: &str) -> String {
    let mut s = String::from("{\"version\":2,");
    let _ = write!(
        s,
        "\"width\":{width},\"height\":{height},\"timestamp\":{unix_timestamp},\"title\":"
    );
    push_json_string(&mut s, title);
    s.push_str(",\"env\":{\"TERM\":\"xterm-256color\"}}\n");
    s
}

/// One event line: `[time, code, data]`.
pub fn event(seconds: f64, code: char, data: &str) -> String {
    let mut s = String::with_capacity(data.len() + 24);
    let _ = write!(s, "[{seconds:.6},");
    push_json_string(&mut s, &code.to_string());
    s.push(',');
    push_json_string(&mut s, data);
    s.push_str("]\n");
    s
}

fn push_json_string(s: &mut String, text: &str) {
    s.push('"');
    for c in text.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            '\t' => s.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(s, "\\u{:04x}", c as u32);
            }
            c => s.push(c),
        }
    }
    s.push('"');
}

/// Turns a byte stream into text, keeping UTF-8 sequences that span reads intact.
#[derive(Debug, Default)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    /// Decodes `input` after whatever was held back; an incomplete sequence at the end is held.
    pub fn decode(&mut self, input: &[u8]) -> String {
        let mut bytes = std::mem::take(&mut self.pending);
        bytes.extend_from_slice(input);
        let mut out = String::with_capacity(bytes.len());
        let mut rest: &[u8] = &bytes;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    break;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                    match e.error_len() {
                        Some(bad) => {
                            out.push('\u{FFFD}');
                            rest = after.get(bad..).unwrap_or_default();
                        }
                        None => {
                            // An incomplete sequence at the end: wait for the rest.
                            self.pending = after.to_vec();
                            break;
                        }
                    }
                }
            }
        }
        out
    }

    /// Whatever is still held, as replacement characters (at the end of a recording).
    pub fn finish(&mut self) -> String {
        if self.pending.is_empty() {
            String::new()
        } else {
            self.pending.clear();
            "\u{FFFD}".into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_and_events_are_json_lines() {
        let h = header(80, 24, 1_795_435_380, "garage-pi/console \"rom\"");
        assert!(h.ends_with('\n'));
        assert!(
            h.starts_with("{\"version\":2,\"width\":80,\"height\":24,\"timestamp\":1795435380")
        );
        assert!(h.contains("\\\"rom\\\""));
        assert_eq!(
            event(1.5, 'o', "a\"b\\\r\n\u{1b}[0m"),
            "[1.500000,\"o\",\"a\\\"b\\\\\\r\\n\\u001b[0m\"]\n"
        );
    }

    #[test]
    fn split_multibyte_sequences_survive() {
        let text = "Router> ok – ルーター ✓\r\n";
        let bytes = text.as_bytes();
        for split in 0..bytes.len() {
            let mut u = Utf8Stream::default();
            let (a, b) = bytes.split_at(split);
            let joined = u.decode(a) + &u.decode(b);
            assert_eq!(joined, text, "split at {split}");
            assert_eq!(u.finish(), "");
        }
    }

    #[test]
    fn invalid_bytes_are_replaced() {
        let mut u = Utf8Stream::default();
        assert_eq!(u.decode(b"a\xffb\xc3"), "a\u{FFFD}b");
        assert_eq!(u.decode(b"\x28c"), "\u{FFFD}(c");
        assert_eq!(u.decode(b"\xe3\x83"), "");
        assert_eq!(u.finish(), "\u{FFFD}");
        assert_eq!(u.decode(b"\x80\x80"), "\u{FFFD}\u{FFFD}");
    }
}
