//! Registry operations behind `burrow relay device|operator ...`: passwords and listings.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

use burrow_proto::time::format_utc_minutes;

use crate::store::{DeviceRecord, OperatorRecord};

/// Hashes a password with argon2id and a random salt (PHC string format).
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt_bytes: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Checks a password against a stored hash.
pub fn verify_password(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// `device ls` as a table.
pub fn render_devices(devices: &[DeviceRecord]) -> String {
    let width = devices
        .iter()
        .map(|d| d.name.len())
        .max()
        .unwrap_or(0)
        .max(6);
    let mut out = format!(
        "{:<width$}  {:<7}  {:<20}  {:<12}  KEYS\n",
        "DEVICE", "STATE", "LAST SEEN", "ENDPOINTS"
    );
    for d in devices {
        let endpoints = d
            .endpoints
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(",");
        out.push_str(&format!(
            "{:<width$}  {:<7}  {:<20}  {:<12}  {}\n",
            d.name,
            if d.online { "online" } else { "offline" },
            d.last_seen.map_or("never".to_string(), format_utc_minutes),
            if endpoints.is_empty() {
                "-".into()
            } else {
                endpoints
            },
            d.fingerprints.join(" "),
        ));
        for c in &d.allow_connect {
            out.push_str(&format!("{:<width$}    allow-connect {c}\n", ""));
        }
        for l in &d.allow_listen {
            out.push_str(&format!("{:<width$}    allow-listen {l}\n", ""));
        }
    }
    out
}

/// `operator ls` as a table.
pub fn render_operators(operators: &[OperatorRecord]) -> String {
    let width = operators
        .iter()
        .map(|o| o.name.len())
        .max()
        .unwrap_or(0)
        .max(8);
    let mut out = format!(
        "{:<width$}  {:<8}  {:<12}  {:<20}  KEYS\n",
        "OPERATOR", "PASSWORD", "ACCESS", "ALLOW"
    );
    for o in operators {
        out.push_str(&format!(
            "{:<width$}  {:<8}  {:<12}  {:<20}  {}\n",
            o.name,
            if o.has_password { "yes" } else { "no" },
            if o.console_only {
                "console-only"
            } else {
                "full"
            },
            o.allow.join(","),
            o.fingerprints.join(" "),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_roundtrip() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password(&h, "correct horse"));
        assert!(!verify_password(&h, "wrong"));
        assert!(!verify_password("not a hash", "x"));
    }
}
