//! Registry operations behind `burrow relay device|operator ...`: passwords and listings.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

use burrow_proto::time::format_rfc3339;

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

/// `device ls` as a table: presence and health first (how the last session ended, for how
/// long, reconnects in the last day, the last probe, the agent's report in one line, its
/// software), then endpoints and keys; a cluster's (`cluster`) says which relay holds each
/// device.
pub fn render_devices(devices: &[DeviceRecord], cluster: bool) -> String {
    use crate::show::{probe, state, state_for};
    let now = crate::store::now();
    let wide = |f: &dyn Fn(&DeviceRecord) -> usize, min: usize| {
        devices.iter().map(f).max().unwrap_or(0).max(min)
    };
    let width = wide(&|d| d.name.len(), 6);
    let sw = wide(&|d| state(d).len(), 7);
    let lw = wide(&|d| d.health.link.as_deref().map_or(1, str::len), 4);
    let aw = wide(&|d| d.health.agent.as_deref().map_or(1, str::len), 5);
    let relay_col = |relay: Option<&str>| {
        if cluster {
            format!("{:<12}  ", relay.unwrap_or("-"))
        } else {
            String::new()
        }
    };
    let mut out = format!(
        "{:<width$}  {:<sw$}  {:<7}  {:<20}  {:>6}  {:<9}  {:<lw$}  {:<aw$}  {}{:<12}  KEYS\n",
        "DEVICE",
        "STATE",
        "FOR",
        "LAST SEEN",
        "RECONN",
        "PROBE",
        "LINK",
        "AGENT",
        relay_col(Some("RELAY")),
        "ENDPOINTS"
    );
    for d in devices {
        out.push_str(&format!(
            "{:<width$}  {:<sw$}  {:<7}  {:<20}  {:>6}  {:<9}  {:<lw$}  {:<aw$}  {}{:<12}  {}\n",
            d.name,
            state(d),
            state_for(d, now),
            last_seen_text(d.last_seen),
            d.health.reconnects_24h,
            probe(d),
            d.health.link.as_deref().unwrap_or("-"),
            d.health.agent.as_deref().unwrap_or("-"),
            relay_col(d.relay.as_deref()),
            endpoints_text(&d.endpoints),
            d.fingerprints.join(" "),
        ));
        if !d.labels.is_empty() {
            out.push_str(&format!(
                "{:<width$}    labels {}\n",
                "",
                burrow_proto::labels::format_labels(&d.labels)
            ));
        }
        for q in &d.quarantined {
            out.push_str(&format!(
                "{:<width$}    quarantined {q} (seen from two places at once; see `burrow relay audit`)\n",
                ""
            ));
        }
        for c in &d.allow_connect {
            out.push_str(&format!("{:<width$}    allow-connect {c}\n", ""));
        }
        for l in &d.allow_listen {
            out.push_str(&format!("{:<width$}    allow-listen {l}\n", ""));
        }
    }
    out
}

/// `token ls` as a table.
pub fn render_tokens(tokens: &[crate::store::fleet::TokenRecord]) -> String {
    let now = crate::store::now();
    let mut out = format!(
        "{:<10}  {:<8}  {:<8}  {:<20}  {:<12}  {:<16}  DEVICES\n",
        "TOKEN", "STATE", "USES", "EXPIRES", "BY", "NAMES"
    );
    for t in tokens {
        let mut devices = match &t.replaces {
            Some(r) => format!("replaces {r}"),
            None => String::new(),
        };
        for (word, on) in [("approve", t.approve)] {
            if on {
                devices.push_str(if devices.is_empty() { "" } else { " " });
                devices.push_str(word);
            }
        }
        if !t.labels.is_empty() {
            devices.push_str(if devices.is_empty() { "" } else { " " });
            devices.push_str(&t.labels_text());
        }
        if let Some(last) = &t.last_used_by {
            devices.push_str(if devices.is_empty() { "" } else { " " });
            devices.push_str(&format!("last: {last}"));
        }
        out.push_str(&format!(
            "{:<10}  {:<8}  {:<8}  {:<20}  {:<12}  {:<16}  {}\n",
            t.id,
            t.state(now),
            format!(
                "{}/{}",
                t.uses,
                t.max_uses.map_or("∞".to_string(), |m| m.to_string())
            ),
            format_rfc3339(t.expires),
            t.created_by,
            t.name_pattern,
            if devices.is_empty() {
                "-".into()
            } else {
                devices
            },
        ));
    }
    out
}

/// A device's state as both listings print it.
pub(crate) fn state_text(online: bool) -> &'static str {
    if online { "online" } else { "offline" }
}

/// "Last seen" as both listings print it: RFC 3339 UTC, or `never`.
pub(crate) fn last_seen_text(at: Option<i64>) -> String {
    at.map_or_else(|| "never".to_string(), format_rfc3339)
}

/// Endpoint ports as both listings print them: `22,80`, or `-` for none.
pub(crate) fn endpoints_text(ports: &[u16]) -> String {
    if ports.is_empty() {
        return "-".into();
    }
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",")
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
        "{:<width$}  {:<28}  {:<12}  {:<20}  KEYS\n",
        "OPERATOR", "PASSWORD", "ACCESS", "ALLOW"
    );
    for o in operators {
        let password = match (o.has_password, o.locked_until) {
            (true, Some(until)) => format!("locked {}", format_rfc3339(until)),
            (true, None) => "yes".into(),
            (false, _) => "no".into(),
        };
        out.push_str(&format!(
            "{:<width$}  {:<28}  {:<12}  {:<20}  {}\n",
            o.name,
            password,
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
    fn a_clusters_device_listing_names_the_holding_relay() {
        let device = |name: &str, relay: Option<&str>| DeviceRecord {
            name: name.into(),
            fingerprints: vec!["SHA256:x".into()],
            last_seen: None,
            online: relay.is_some(),
            endpoints: vec![22],
            allow_connect: Vec::new(),
            allow_listen: Vec::new(),
            relay: relay.map(str::to_string),
            pending: false,
            labels: Default::default(),
            quarantined: Vec::new(),
            health: Default::default(),
        };
        let devices = [device("pi", Some("r1")), device("cam", None)];
        let text = render_devices(&devices, true);
        let lines: Vec<_> = text.lines().collect();
        let header: Vec<_> = lines[0].split_whitespace().collect();
        assert_eq!(
            header,
            [
                "DEVICE",
                "STATE",
                "FOR",
                "LAST",
                "SEEN",
                "RECONN",
                "PROBE",
                "LINK",
                "AGENT",
                "RELAY",
                "ENDPOINTS",
                "KEYS"
            ]
        );
        let pi: Vec<_> = lines[1].split_whitespace().collect();
        assert_eq!(
            pi,
            [
                "pi", "online", "-", "never", "0", "-", "-", "-", "r1", "22", "SHA256:x"
            ]
        );
        let cam: Vec<_> = lines[2].split_whitespace().collect();
        assert_eq!(
            cam,
            [
                "cam", "offline", "-", "never", "0", "-", "-", "-", "-", "22", "SHA256:x"
            ]
        );
        // Columns line up: RELAY sits where each row's relay does.
        assert_eq!(lines[0].find("RELAY"), lines[1].find("r1"));
        assert!(!render_devices(&devices, false).contains("RELAY"));
    }

    #[test]
    fn passwords_roundtrip() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password(&h, "correct horse"));
        assert!(!verify_password(&h, "wrong"));
        assert!(!verify_password("not a hash", "x"));
    }
}
