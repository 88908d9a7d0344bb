//! Untrusted strings (SSH user names, exec commands, channel requests) made safe to log and store.

/// Longest untrusted name kept (a user name, a target), in characters.
pub const MAX_NAME_CHARS: usize = 128;
/// Longest untrusted free text kept (a command line, a detail), in characters.
pub const MAX_TEXT_CHARS: usize = 1024;

/// `text` with control characters escaped (`\n`, `\u{1b}`, ...) and cut to `max` characters; a
/// cut says how much was dropped. A peer cannot forge log lines, move a terminal's cursor, or
/// fill the audit table with one 256 KiB user name.
pub fn clean(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max + 32));
    for (kept, (i, c)) in text.char_indices().enumerate() {
        if kept >= max {
            out.push_str(&format!("... ({} more bytes)", text.len() - i));
            return out;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_controls_and_truncates() {
        assert_eq!(clean("alice", 10), "alice");
        assert_eq!(clean("a\nFAKE LOG", 20), "a\\nFAKE LOG");
        assert_eq!(clean("\u{1b}[2J", 20), "\\u{1b}[2J");
        let long = "x".repeat(300_000);
        let c = clean(&long, MAX_NAME_CHARS);
        assert!(c.starts_with(&"x".repeat(MAX_NAME_CHARS)));
        assert!(c.ends_with(&format!("({} more bytes)", 300_000 - MAX_NAME_CHARS)));
        assert!(c.len() < 200);
        // Multi-byte characters are never split.
        assert_eq!(clean("ääää", 2), "ää... (4 more bytes)");
    }
}
