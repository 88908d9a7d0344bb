//! Join strings and the enrollment exchange: what `burrow relay token create` prints and what
//! `burrow agent enroll` sends the relay.
//!
//! A join string is one shell-safe word: `burrow-join1.` followed by the base64url of a few
//! text lines naming every relay address, every relay host-key pin and the token (its id and
//! its secret). The secret is what proves the token; the relay keeps only its hash.
//!
//! Enrollment runs over SSH to a relay pinned from the string: the agent logs in as
//! [`ENROLL_USER`] with the password `ID.SECRET`, then runs one exec request,
//! `enroll v1 NAME ALGO KEY SIGNATURE`, where the signature is the new key's over
//! [`proof_data`]: the SSH session identifier (so it cannot be replayed on another
//! connection), the name and the key. The private key never leaves the device. The relay
//! answers on stdout with one JSON line ([`EnrollReply`]) and exit status 0, or with a sentence
//! (why not, and what to do) and exit status 1.

use crate::secret::Secret;

/// The SSH user an enrolling agent logs in as (not a valid device or operator name).
pub const ENROLL_USER: &str = "+enroll";
/// Start of every join string (the digit is the format's version).
pub const JOIN_PREFIX: &str = "burrow-join1.";
/// Signature context of the proof of possession.
const PROOF_CONTEXT: &str = "burrow-enroll-v1";
/// Longest join string accepted (a cluster of a few dozen relays fits).
const MAX_JOIN_LEN: usize = 8192;

/// Why a join string or an enrollment request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct JoinError(pub String);

fn err<T>(why: impl Into<String>) -> Result<T, JoinError> {
    Err(JoinError(why.into()))
}

/// What a join string carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// The token's id (public: listed by `token ls`, named by `token rm`).
    pub id: String,
    /// The token's secret.
    pub secret: Secret,
    /// Every relay address, `HOST:PORT`, in the order the agent tries them.
    pub relays: Vec<String>,
    /// Every relay host-key pin, `SHA256:...`.
    pub pins: Vec<String>,
}

/// Whether `id` looks like a token id (1-32 of `a-z0-9`).
pub fn is_token_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 32
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// Whether `word` can stand in a join string's line (no spaces or control characters).
fn is_word(word: &str) -> bool {
    !word.is_empty() && word.len() <= 255 && word.bytes().all(|b| b.is_ascii_graphic())
}

impl JoinToken {
    /// The join string.
    pub fn encode(&self) -> String {
        let mut text = format!(
            "burrow-join 1\ntoken {} {}\n",
            self.id,
            self.secret.expose()
        );
        for r in &self.relays {
            text.push_str(&format!("relay {r}\n"));
        }
        for p in &self.pins {
            text.push_str(&format!("pin {p}\n"));
        }
        // A string cut short in copying loses this line, and is not read half.
        text.push_str("end\n");
        format!("{JOIN_PREFIX}{}", b64_encode(text.as_bytes()))
    }

    /// Reads a join string (surrounding whitespace is ignored).
    pub fn decode(join: &str) -> Result<JoinToken, JoinError> {
        let join = join.trim();
        let Some(body) = join.strip_prefix(JOIN_PREFIX) else {
            return err(format!(
                "this is not a burrow join string (it starts with {:?}, a join string with {JOIN_PREFIX:?}); print one on the relay with `burrow relay token create`",
                join.chars().take(13).collect::<String>()
            ));
        };
        if join.len() > MAX_JOIN_LEN {
            return err(format!(
                "the join string is {} characters long, more than a join string can be ({MAX_JOIN_LEN})",
                join.len()
            ));
        }
        let damaged = |why: &str| {
            JoinError(format!(
                "the join string is damaged ({why}); copy it again whole, as `burrow relay token create` printed it"
            ))
        };
        let bytes = b64_decode(body).ok_or_else(|| damaged("not base64url"))?;
        let text = String::from_utf8(bytes).map_err(|_| damaged("not text"))?;
        let mut lines = text.lines();
        if lines.next() != Some("burrow-join 1") {
            return Err(damaged("no header"));
        }
        let (mut id, mut secret) = (None, None);
        let (mut relays, mut pins) = (Vec::new(), Vec::new());
        let mut ended = false;
        for line in lines {
            let words: Vec<&str> = line.split(' ').collect();
            match words.as_slice() {
                ["end"] => ended = true,
                ["token", i, s] if is_token_id(i) && is_word(s) => {
                    id = Some(i.to_string());
                    secret = Some(Secret::new(s.to_string()));
                }
                ["relay", r] if is_word(r) => relays.push(r.to_string()),
                ["pin", p] if p.starts_with("SHA256:") && is_word(p) => pins.push(p.to_string()),
                // Lines a later format adds are skipped by this one.
                _ => {}
            }
        }
        if !ended {
            return Err(damaged("it is cut short"));
        }
        let (Some(id), Some(secret)) = (id, secret) else {
            return Err(damaged("no token"));
        };
        if relays.is_empty() {
            return Err(damaged("no relay address"));
        }
        if pins.is_empty() {
            return Err(damaged("no relay host-key pin"));
        }
        Ok(JoinToken {
            id,
            secret,
            relays,
            pins,
        })
    }

    /// The password an enrolling agent logs in with: `ID.SECRET`.
    pub fn password(&self) -> String {
        format!("{}.{}", self.id, self.secret.expose())
    }
}

/// Splits an enrollment password into token id and secret.
pub fn split_password(password: &str) -> Option<(&str, &str)> {
    let (id, secret) = password.split_once('.')?;
    (is_token_id(id) && is_word(secret)).then_some((id, secret))
}

/// A new random secret: 16 bytes from `random` as base64url (22 characters).
pub fn secret_from_bytes(random: [u8; 16]) -> String {
    b64_encode(&random)
}

/// The bytes the new key signs to prove that the enrolling agent holds it: the SSH session
/// identifier, the device name and the key, each as an SSH string.
pub fn proof_data(session_id: &[u8], name: &str, key_blob: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for part in [
        PROOF_CONTEXT.as_bytes(),
        session_id,
        name.as_bytes(),
        key_blob,
    ] {
        out.extend_from_slice(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

/// The exec request of an enrolling agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollRequest {
    /// The device name asked for.
    pub name: String,
    /// The key's algorithm (`ssh-ed25519`).
    pub algorithm: String,
    /// The public key blob (SSH wire form).
    pub key: Vec<u8>,
    /// The signature blob (SSH wire form) over [`proof_data`].
    pub signature: Vec<u8>,
}

impl EnrollRequest {
    /// As the exec command line.
    pub fn to_command(&self) -> String {
        format!(
            "enroll v1 {} {} {} {}",
            self.name,
            self.algorithm,
            b64_encode(&self.key),
            b64_encode(&self.signature)
        )
    }

    /// Reads an exec command line; `None` when it is not an enrollment request.
    pub fn parse(command: &str) -> Option<Result<EnrollRequest, JoinError>> {
        let words: Vec<&str> = command.split_whitespace().collect();
        if words.first() != Some(&"enroll") {
            return None;
        }
        let ["enroll", "v1", name, algorithm, key, signature] = words.as_slice() else {
            return Some(err(
                "enroll expects `enroll v1 NAME ALGORITHM KEY SIGNATURE`; use `burrow agent enroll`",
            ));
        };
        let decode = |what: &str, text: &str| {
            b64_decode(text).ok_or_else(|| JoinError(format!("the {what} is not base64url")))
        };
        Some((|| {
            Ok(EnrollRequest {
                name: name.to_string(),
                algorithm: algorithm.to_string(),
                key: decode("key", key)?,
                signature: decode("signature", signature)?,
            })
        })())
    }
}

/// The relay's answer to an enrollment: one JSON line.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EnrollReply {
    /// The device as registered.
    pub device: String,
    /// It waits for `burrow relay device approve`.
    pub pending: bool,
    /// Every relay address of the cluster, as the relay knows them now.
    pub relays: Vec<String>,
    /// Every relay host-key pin.
    pub host_keys: Vec<String>,
    /// The labels the device carries.
    #[serde(default)]
    pub labels: crate::labels::Labels,
    /// The key it replaced (a `--replace` token), by fingerprint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replaced_keys: Vec<String>,
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// base64url without padding (RFC 4648 §5): shell-safe, one word.
pub fn b64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk.first().copied().unwrap_or(0),
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            let index = ((n >> (18 - 6 * i)) & 63) as usize;
            out.push(char::from(B64.get(index).copied().unwrap_or(b'A')));
        }
    }
    out
}

/// Decodes base64url without padding (padding and the standard alphabet's `+/` are accepted
/// too); `None` on anything else.
pub fn b64_decode(text: &str) -> Option<Vec<u8>> {
    let text = text.trim_end_matches('=');
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // A lone trailing character carries fewer than 8 bits: not base64.
    (bits < 6).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> JoinToken {
        JoinToken {
            id: "3f9a1c0b2e".into(),
            secret: Secret::new(secret_from_bytes([7; 16])),
            relays: vec!["relay.example.com:443".into(), "[2001:db8::1]:443".into()],
            pins: vec!["SHA256:abc+/def".into(), "SHA256:xyz".into()],
        }
    }

    #[test]
    fn join_string_roundtrips_and_is_one_shell_safe_word() {
        let t = token();
        let s = t.encode();
        assert!(s.starts_with(JOIN_PREFIX));
        assert!(
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)),
            "{s}"
        );
        assert_eq!(JoinToken::decode(&format!("  {s}\n")).unwrap(), t);
        assert_eq!(
            split_password(&t.password()),
            Some((t.id.as_str(), t.secret.expose()))
        );
    }

    #[test]
    fn damaged_or_foreign_strings_say_so() {
        let s = token().encode();
        let cut = &s[..s.len() - 30];
        assert!(JoinToken::decode(cut).unwrap_err().0.contains("damaged"));
        let e = JoinToken::decode("tskey-auth-abc").unwrap_err().0;
        assert!(e.contains("not a burrow join string"), "{e}");
        let e = JoinToken::decode(&format!("{JOIN_PREFIX}!!!"))
            .unwrap_err()
            .0;
        assert!(e.contains("damaged"), "{e}");
        let no_pin = format!(
            "{JOIN_PREFIX}{}",
            b64_encode(b"burrow-join 1\ntoken ab s\nrelay r:1\nend\n")
        );
        assert!(JoinToken::decode(&no_pin).unwrap_err().0.contains("pin"));
    }

    #[test]
    fn hostile_input_never_panics() {
        let mut seed = 0x1234_5678_9abc_def0u64;
        for _ in 0..2000 {
            let len = (crate::xorshift(&mut seed) % 64) as usize;
            let junk: String = (0..len)
                .map(|_| char::from((crate::xorshift(&mut seed) % 128) as u8))
                .collect();
            let _ = JoinToken::decode(&format!("{JOIN_PREFIX}{junk}"));
            let _ = b64_decode(&junk);
            let _ = EnrollRequest::parse(&format!("enroll v1 {junk}"));
        }
    }

    #[test]
    fn base64url_matches_rfc4648() {
        for (plain, coded) in [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(b64_encode(plain.as_bytes()), coded);
            assert_eq!(b64_decode(coded).unwrap(), plain.as_bytes());
        }
        assert_eq!(b64_decode("Zm9vYg==").unwrap(), b"foob");
        assert!(b64_decode("Z").is_none());
        assert_eq!(b64_encode(&[0xfb, 0xff]), "-_8");
    }

    #[test]
    fn enroll_request_roundtrips() {
        let r = EnrollRequest {
            name: "garage-pi".into(),
            algorithm: "ssh-ed25519".into(),
            key: vec![1, 2, 3],
            signature: vec![9; 70],
        };
        assert_eq!(EnrollRequest::parse(&r.to_command()), Some(Ok(r)));
        assert!(EnrollRequest::parse("ls").is_none());
        assert!(EnrollRequest::parse("enroll x").unwrap().is_err());
        let a = proof_data(b"sid", "pi", b"key");
        assert_ne!(a, proof_data(b"sie", "pi", b"key"));
        assert_ne!(a, proof_data(b"sid", "pj", b"key"));
    }
}
