//! Fleet records shared by both backends: join tokens, what an enrollment may do, device
//! imports, quarantined keys. The rules of an enrollment live here once ([`decide`]); each
//! backend reads what they need and applies the [`Plan`] inside one transaction.

use burrow_proto::labels::{Labels, format_labels};
use burrow_proto::time::format_rfc3339;

/// A join token as `token ls` shows it (the secret's hash stays in the database).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TokenRecord {
    /// Its id (public: in the join string, in `token ls`, named by `token rm`).
    pub id: String,
    /// When it was made (seconds since the epoch; RFC 3339 in JSON).
    #[serde(serialize_with = "rfc3339")]
    pub created: i64,
    /// Who made it (the login name that ran `token create`).
    pub created_by: String,
    /// When it stops working.
    #[serde(serialize_with = "rfc3339")]
    pub expires: i64,
    /// Enrollments it allows in all; `None`: reusable until it expires.
    pub max_uses: Option<u32>,
    /// Enrollments made with it.
    pub uses: u32,
    /// Device names it may enroll (a glob).
    pub name_pattern: String,
    /// Labels the devices it enrolls carry.
    pub labels: Labels,
    /// Devices it enrolls wait for `device approve`.
    pub approve: bool,
    /// The device it re-binds to a new key (`--replace NAME`).
    pub replaces: Option<String>,
    /// The device it enrolled last, and when.
    pub last_used_by: Option<String>,
    /// When it was used last.
    #[serde(serialize_with = "rfc3339_opt")]
    pub last_used: Option<i64>,
    /// When `token rm` revoked it.
    #[serde(serialize_with = "rfc3339_opt")]
    pub revoked: Option<i64>,
}

fn rfc3339<S: serde::Serializer>(at: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_rfc3339(*at))
}

fn rfc3339_opt<S: serde::Serializer>(at: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
    match at {
        Some(t) => s.serialize_str(&format_rfc3339(*t)),
        None => s.serialize_none(),
    }
}

impl TokenRecord {
    /// Why the token cannot enroll anything now, if it cannot.
    pub fn unusable(&self, now: i64) -> Option<String> {
        let id = &self.id;
        if let Some(at) = self.revoked {
            return Some(format!(
                "join token {id} was revoked at {} (`burrow relay token rm`); ask for a new one",
                format_rfc3339(at)
            ));
        }
        if now >= self.expires {
            return Some(format!(
                "join token {id} expired at {}; ask for a new one (`burrow relay token create`)",
                format_rfc3339(self.expires)
            ));
        }
        if let Some(max) = self.max_uses
            && self.uses >= max
        {
            let last = match (&self.last_used_by, self.last_used) {
                (Some(d), Some(at)) => format!(" (last by device {d} at {})", format_rfc3339(at)),
                _ => String::new(),
            };
            let times = if max == 1 {
                "once".to_string()
            } else {
                format!("{max} times")
            };
            return Some(format!(
                "join token {id} allowed enrolling {times} and has been used{last}; ask for a new one (`burrow relay token create`)"
            ));
        }
        None
    }

    /// `active`, `expired`, `used up` or `revoked`.
    pub fn state(&self, now: i64) -> &'static str {
        if self.revoked.is_some() {
            "revoked"
        } else if now >= self.expires {
            "expired"
        } else if self.max_uses.is_some_and(|m| self.uses >= m) {
            "used up"
        } else {
            "active"
        }
    }

    /// Uses left, as `token ls` prints them (`∞` for reusable tokens).
    pub fn uses_left(&self) -> String {
        match self.max_uses {
            Some(m) => m.saturating_sub(self.uses).to_string(),
            None => "reusable".into(),
        }
    }

    /// Labels as one word.
    pub fn labels_text(&self) -> String {
        format_labels(&self.labels)
    }
}

/// A token to store: its record and the hash of its secret.
#[derive(Debug, Clone)]
pub struct NewToken {
    /// What `token ls` will show.
    pub record: TokenRecord,
    /// SHA-256 of the secret, hex.
    pub secret_hash: String,
}

/// What the registry holds about an enrollment's name and key, read in its transaction.
#[derive(Debug, Clone, Default)]
pub struct Existing {
    /// The device of that name exists, with these key fingerprints.
    pub device_keys: Option<Vec<String>>,
    /// An operator has that name.
    pub operator: bool,
    /// The device (other than `name`) that already has the key.
    pub key_owner: Option<String>,
}

/// What an enrollment does, once [`decide`] allowed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// A new device with the key.
    Create {
        /// It waits for approval.
        pending: bool,
        /// The token's labels.
        labels: Labels,
    },
    /// The device already has this key (an agent asking again after a lost answer): nothing
    /// changes and no use is spent.
    Already,
    /// The device is re-bound to the key: its old keys are removed, its row and history kept.
    Replace {
        /// Fingerprints of the keys removed.
        old_keys: Vec<String>,
        /// It waits for approval.
        pending: bool,
        /// The token's labels (added to the device's).
        labels: Labels,
    },
}

/// Decides what enrolling `name` with key `fingerprint` through `token` may do.
pub fn decide(
    token: &TokenRecord,
    now: i64,
    name: &str,
    fingerprint: &str,
    existing: &Existing,
) -> Result<Plan, String> {
    burrow_proto::name::check_name("device", name).map_err(|e| e.to_string())?;
    if existing
        .device_keys
        .as_ref()
        .is_some_and(|keys| keys.iter().any(|k| k == fingerprint))
    {
        return Ok(Plan::Already);
    }
    if let Some(why) = token.unusable(now) {
        return Err(why);
    }
    if let Some(owner) = &existing.key_owner {
        return Err(format!(
            "key {fingerprint} is already registered as device {owner}; an enrollment registers a new key"
        ));
    }
    if let Some(target) = &token.replaces {
        if name != target {
            return Err(format!(
                "join token {} re-binds device {target} only; enroll with --name {target}",
                token.id
            ));
        }
        return match &existing.device_keys {
            Some(old) => Ok(Plan::Replace {
                old_keys: old.clone(),
                pending: token.approve,
                labels: token.labels.clone(),
            }),
            None => Err(format!(
                "join token {} re-binds device {target}, which no longer exists; ask for a new token",
                token.id
            )),
        };
    }
    if !burrow_proto::glob::matches(&token.name_pattern, name) {
        return Err(format!(
            "name {name} does not match the names join token {} may enroll ({}); give --name NAME matching it",
            token.id, token.name_pattern
        ));
    }
    if existing.operator {
        return Err(format!(
            "{name} is an operator's name; devices and operators share one namespace: give another --name"
        ));
    }
    if existing.device_keys.is_some() {
        return Err(format!(
            "device {name} already exists with another key; give another --name, or ask for a token that replaces it (`burrow relay token create --replace {name}`)"
        ));
    }
    Ok(Plan::Create {
        pending: token.approve,
        labels: token.labels.clone(),
    })
}

/// One device of an import (`device import`): its keys, labels and rules.
#[derive(Debug, Clone, Default)]
pub struct ImportDevice {
    /// The name.
    pub name: String,
    /// Its keys.
    pub keys: Vec<burrow_io::keys::PublicKey>,
    /// Its labels.
    pub labels: Labels,
    /// `allow-connect` rules (host, port).
    pub allow_connect: Vec<(String, u16)>,
    /// `allow-listen` rules (address, port).
    pub allow_listen: Vec<(String, u16)>,
}

/// A quarantined key: seen from two places at once.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Quarantine {
    /// The device.
    pub device: String,
    /// The key.
    pub fingerprint: String,
    /// Since when.
    #[serde(serialize_with = "rfc3339")]
    pub since: i64,
    /// What was seen.
    pub detail: String,
    /// The relay holding the session that keeps the key.
    pub kept_relay: String,
    /// That session (unique on its relay).
    pub kept_session: u64,
    /// The agent process holding it (its sessions on several relays all keep the key); empty
    /// for a stock client.
    pub kept_instance: String,
}

/// A relay's public address and host key, as join strings carry them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayAddress {
    /// The relay's id.
    pub relay: String,
    /// `HOST:PORT` devices dial.
    pub address: String,
    /// Its host key, an OpenSSH public key line.
    pub host_key: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> TokenRecord {
        TokenRecord {
            id: "t1".into(),
            created: 0,
            created_by: "root".into(),
            expires: 100,
            max_uses: Some(1),
            uses: 0,
            name_pattern: "pi-*".into(),
            labels: Labels::new(),
            approve: false,
            replaces: None,
            last_used_by: None,
            last_used: None,
            revoked: None,
        }
    }

    #[test]
    fn enrollment_rules() {
        let none = Existing::default();
        let t = token();
        assert!(matches!(
            decide(&t, 1, "pi-1", "K", &none),
            Ok(Plan::Create { .. })
        ));
        let e = decide(&t, 1, "garage", "K", &none).unwrap_err();
        assert!(e.contains("does not match") && e.contains("pi-*"), "{e}");
        let used = TokenRecord {
            uses: 1,
            last_used_by: Some("pi-1".into()),
            last_used: Some(5),
            ..token()
        };
        let e = decide(&used, 6, "pi-2", "K2", &none).unwrap_err();
        assert!(e.contains("once") && e.contains("pi-1"), "{e}");
        // The same device asking again with its key is answered, and spends nothing.
        let mine = Existing {
            device_keys: Some(vec!["K".into()]),
            ..Existing::default()
        };
        assert_eq!(decide(&used, 6, "pi-1", "K", &mine), Ok(Plan::Already));
        let e = decide(&t, 1, "pi-1", "K2", &mine).unwrap_err();
        assert!(
            e.contains("already exists") && e.contains("--replace pi-1"),
            "{e}"
        );
        assert!(
            decide(&t, 100, "pi-1", "K", &none)
                .unwrap_err()
                .contains("expired")
        );
        let revoked = TokenRecord {
            revoked: Some(3),
            ..token()
        };
        assert!(
            decide(&revoked, 4, "pi-1", "K", &none)
                .unwrap_err()
                .contains("revoked")
        );
        let replace = TokenRecord {
            replaces: Some("garage".into()),
            ..token()
        };
        assert!(matches!(
            decide(&replace, 1, "garage", "K2", &mine),
            Ok(Plan::Replace { .. })
        ));
        assert!(
            decide(&replace, 1, "other", "K2", &mine)
                .unwrap_err()
                .contains("--name garage")
        );
        assert!(
            decide(&replace, 1, "garage", "K2", &none)
                .unwrap_err()
                .contains("no longer exists")
        );
        let op = Existing {
            operator: true,
            ..Existing::default()
        };
        assert!(
            decide(&t, 1, "pi-1", "K", &op)
                .unwrap_err()
                .contains("operator")
        );
        assert!(decide(&t, 1, "Pi", "K", &none).is_err());
    }
}
