//! Time-based one-time passwords (RFC 6238 over RFC 4226's HOTP, HMAC-SHA-1, 6 digits, 30 s
//! steps): what authenticator apps show, asked after an enrolled operator's password on the
//! web and on SSH.

use ring::hmac;

/// Seconds per code.
pub const STEP: i64 = 30;
/// Digits per code.
pub const DIGITS: u32 = 6;
/// Steps either side of now whose codes are still taken (clocks drift, people type slowly).
const SKEW: i64 = 1;

/// The HOTP value of `key` at `counter` (RFC 4226 section 5.3).
pub fn hotp(key: &[u8], counter: u64) -> u32 {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, key);
    let tag = hmac::sign(&key, &counter.to_be_bytes());
    let mac = tag.as_ref();
    // Dynamic truncation: the low nibble of the last byte says where 31 bits are taken.
    let offset = usize::from(mac.last().copied().unwrap_or(0) & 0x0f);
    let word = mac
        .get(offset..offset + 4)
        .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    (word & 0x7fff_ffff) % 10u32.pow(DIGITS)
}

/// The step a time (seconds since the epoch) falls in.
pub fn step_of(unix: i64) -> i64 {
    unix.div_euclid(STEP)
}

/// The step whose code `code` is, within [`SKEW`] steps of `unix`, if any. The caller keeps
/// the last step used and refuses it again (a code works once).
pub fn check(key: &[u8], code: &str, unix: i64) -> Option<i64> {
    let code = code.trim();
    if code.len() != DIGITS as usize || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let want: u32 = code.parse().ok()?;
    let now = step_of(unix);
    (now - SKEW..=now + SKEW)
        .filter(|s| *s >= 0)
        .find(|s| hotp(key, *s as u64) == want)
}

const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// RFC 4648 base32 without padding (how authenticator apps take secrets).
pub fn base32_encode(bytes: &[u8]) -> String {
    let mut out = String::new();
    let (mut buf, mut bits) = (0u32, 0u32);
    for &b in bytes {
        buf = (buf << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(BASE32[((buf >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(BASE32[((buf << (5 - bits)) & 31) as usize]));
    }
    out
}

/// Decodes base32 (case and padding ignored); `None` on any other character.
pub fn base32_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let (mut buf, mut bits) = (0u32, 0u32);
    for c in s.bytes().filter(|c| *c != b'=' && *c != b' ') {
        let v = BASE32.iter().position(|x| *x == c.to_ascii_uppercase())? as u32;
        buf = (buf << 5) | v;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
        }
    }
    Some(out)
}

/// A new secret: 20 random bytes (RFC 4226's recommended length), base32.
pub fn new_secret() -> String {
    let bytes: [u8; 20] = rand::random();
    base32_encode(&bytes)
}

/// The `otpauth://` URI an authenticator app scans.
pub fn uri(issuer: &str, operator: &str, secret: &str) -> String {
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    char::from(b).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    };
    format!(
        "otpauth://totp/{}:{}?secret={secret}&issuer={}&algorithm=SHA1&digits={DIGITS}&period={STEP}",
        enc(issuer),
        enc(operator),
        enc(issuer)
    )
}

/// The QR code of `text` drawn for a terminal: two rows of modules per line with half-block
/// characters, dark on light, with the quiet zone scanners need.
pub fn qr_terminal(text: &str) -> Result<String, String> {
    let code = qrcode::QrCode::with_error_correction_level(text.as_bytes(), qrcode::EcLevel::M)
        .map_err(|e| format!("cannot draw the QR code: {e}"))?;
    let width = code.width();
    let quiet = 2usize;
    let dark = |x: isize, y: isize| -> bool {
        if x < 0 || y < 0 || x as usize >= width || y as usize >= width {
            return false;
        }
        code[(x as usize, y as usize)] == qrcode::Color::Dark
    };
    let mut out = String::new();
    let span = (width + 2 * quiet) as isize;
    let mut y = -(quiet as isize);
    while y < span - quiet as isize {
        for x in -(quiet as isize)..span - quiet as isize {
            // Light modules are drawn (█), dark ones left blank: a terminal's dark background
            // then reads as the code's dark modules.
            out.push(match (dark(x, y), dark(x, y + 1)) {
                (false, false) => '█',
                (false, true) => '▀',
                (true, false) => '▄',
                (true, true) => ' ',
            });
        }
        out.push('\n');
        y += 2;
    }
    Ok(out)
}

/// The last step each operator logged in with, so that a code seen over a shoulder or in a
/// proxy's memory cannot be used a second time within its window.
#[derive(Default)]
pub(crate) struct Used {
    last: std::sync::Mutex<std::collections::HashMap<String, i64>>,
}

impl Used {
    /// Takes `step` for `operator` unless it (or a later one) was used already.
    fn take(&self, operator: &str, step: i64) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        match last.get(operator) {
            Some(l) if *l >= step => false,
            _ => {
                last.insert(operator.to_string(), step);
                true
            }
        }
    }
}

/// The second factor after a right password: nothing for an operator without TOTP, else
/// `code` must be a current code not used before. The error is what the audit records.
pub(crate) async fn second_factor(
    relay: &crate::Relay,
    operator: &str,
    code: &str,
) -> Result<(), String> {
    let record = relay
        .db
        .operator(operator)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("operator {operator} was removed"))?;
    let Some(secret) = record.totp_secret else {
        return Ok(());
    };
    let key = base32_decode(secret.expose())
        .ok_or_else(|| format!("operator {operator}'s TOTP secret is damaged: enroll again"))?;
    if code.trim().is_empty() {
        return Err("right password, but no TOTP code (this operator enrolled TOTP)".into());
    }
    match check(&key, code, crate::store::now()) {
        Some(step) if relay.totp_used.take(operator, step) => Ok(()),
        Some(_) => Err("right password, but that TOTP code was used already".into()),
        None => Err("right password, wrong TOTP code".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4226_appendix_d() {
        let key = b"12345678901234567890";
        let want = [
            755224, 287082, 359152, 969429, 338314, 254676, 287922, 162583, 399871, 520489,
        ];
        for (counter, want) in want.iter().enumerate() {
            assert_eq!(hotp(key, counter as u64), *want, "counter {counter}");
        }
    }

    #[test]
    fn rfc6238_appendix_b_sha1() {
        // The RFC's 8-digit values, last six digits.
        let key = b"12345678901234567890";
        for (t, want) in [
            (59, "287082"),
            (1111111109, "081804"),
            (1111111111, "050471"),
            (1234567890, "005924"),
            (2000000000, "279037"),
        ] {
            assert_eq!(
                format!("{:06}", hotp(key, step_of(t) as u64)),
                want,
                "t={t}"
            );
            assert_eq!(check(key, want, t), Some(step_of(t)));
        }
        assert_eq!(check(key, "287082", 59 + 10 * STEP), None, "too old");
        assert_eq!(check(key, "28708", 59), None);
        assert_eq!(check(key, "abcdef", 59), None);
    }

    #[test]
    fn base32_roundtrips() {
        assert_eq!(base32_encode(b"foobar"), "MZXW6YTBOI");
        assert_eq!(base32_decode("mzxw6ytboi======").unwrap(), b"foobar");
        assert_eq!(base32_decode("1"), None);
        let s = new_secret();
        assert_eq!(base32_decode(&s).unwrap().len(), 20);
    }

    #[test]
    fn qr_draws() {
        let q = qr_terminal(&uri("burrow", "alice", "JBSWY3DPEHPK3PXP")).unwrap();
        assert!(q.lines().count() > 10);
    }
}
