//! Enrollment at the relay: join tokens made and checked, the `+enroll` login, and the one
//! `enroll` request that registers a device's new key (see `burrow_proto::join`).
//!
//! The token's secret is stored as its SHA-256 (a fast hash is enough for 128 random bits) and
//! compared in constant time. The login proves the token; the request proves the key: its
//! signature covers this connection's session identifier, so it cannot be replayed elsewhere.

use std::sync::Arc;

use burrow_proto::join::{EnrollReply, EnrollRequest};
use burrow_ssh::driver::Channel;

use crate::Relay;
use crate::audit::{About, Outcome};
use crate::store::fleet::{Plan, RelayAddress, TokenRecord};
use crate::store::{Db, StoreError};

/// SHA-256 of a token secret, hex: what the registry keeps.
pub fn hash_secret(secret: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, secret.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether `secret` hashes to `stored`, compared in constant time.
pub(crate) fn secret_matches(secret: &str, stored: &str) -> bool {
    let ours = hash_secret(secret);
    let (a, b) = (ours.as_bytes(), stored.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A new token's id (10 hex digits) and secret (128 random bits).
pub fn new_token_id_and_secret() -> (String, String) {
    let id: [u8; 5] = rand::random();
    let id = id.iter().map(|b| format!("{b:02x}")).collect();
    (id, burrow_proto::join::secret_from_bytes(rand::random()))
}

/// Every relay address and distinct host-key pin a join string carries, from what each relay
/// recorded at its start.
pub async fn relays_and_pins(db: &Db) -> Result<(Vec<String>, Vec<String>), StoreError> {
    let recorded = db.relay_addresses().await?;
    Ok(addresses_and_pins(&recorded))
}

fn addresses_and_pins(recorded: &[RelayAddress]) -> (Vec<String>, Vec<String>) {
    let (mut addresses, mut pins) = (Vec::new(), Vec::new());
    for r in recorded {
        if !addresses.contains(&r.address) {
            addresses.push(r.address.clone());
        }
        // A relay holding a new host key beside the one in use records both, one a line.
        for line in r.host_key.lines() {
            if let Ok(key) = burrow_io::keys::parse_public_key(line) {
                let fp = burrow_io::keys::fingerprint(&key);
                if !pins.contains(&fp) {
                    pins.push(fp);
                }
            }
        }
    }
    (addresses, pins)
}

/// The `+enroll` login: the password is `ID.SECRET`. Returns the token id when it proves a
/// token; the reason otherwise (for the audit, never for the client).
pub(crate) async fn check_login(relay: &Relay, password: &str) -> Result<String, String> {
    let Some((id, secret)) = burrow_proto::join::split_password(password) else {
        return Err("enrollment login with a password that is not a join token".into());
    };
    match relay.db.token(id).await {
        Ok(Some((_, stored))) if secret_matches(secret, &stored) => Ok(id.to_string()),
        Ok(Some(_)) => Err(format!("join token {id}: wrong secret")),
        Ok(None) => Err(format!("join token {id} does not exist")),
        Err(e) => Err(format!("join token {id} cannot be checked: {e}")),
    }
}

/// Serves the session channel of an enrolling agent: one `enroll` exec request.
pub(crate) fn session_opened(relay: Arc<Relay>, token: String, peer: String, channel: Channel) {
    let relay2 = relay.clone();
    relay.tracker.spawn(async move {
        let relay = relay2;
        let Some(command) = crate::conn::next_exec(&channel).await else {
            return;
        };
        // Both answers go to stdout: the agent reads it, and takes exit status 1 as "this
        // line is the refusal".
        let (out, status) = match enroll(&relay, &token, &peer, &channel, &command).await {
            Ok(reply) => (serde_json::to_string(&reply).unwrap_or_default(), 0),
            Err(why) => (why, 1),
        };
        let _ = channel.data(format!("{out}\n").as_bytes()).await;
        channel.exit_status(status);
        channel.eof();
        channel.close();
    });
}

/// Checks and applies one enrollment request; the error is a sentence for the agent (and
/// the audit).
async fn enroll(
    relay: &Relay,
    token: &str,
    peer: &str,
    channel: &Channel,
    command: &str,
) -> Result<EnrollReply, String> {
    let target = format!("token {token}");
    let refuse = |who: &str, why: String| {
        relay
            .audit
            .record_about(About::Device, "token", who, &target, Outcome::Denied, &why);
        why
    };
    let request = match EnrollRequest::parse(command) {
        Some(Ok(r)) => r,
        Some(Err(e)) => return Err(refuse("", e.to_string())),
        None => {
            return Err(refuse(
                "",
                "an enrollment connection runs `enroll` only (use `burrow agent enroll`)".into(),
            ));
        }
    };
    let name = burrow_proto::text::clean(&request.name, burrow_proto::text::MAX_NAME_CHARS);
    let key = burrow_io::keys::PublicKey::from_bytes(&request.key)
        .map_err(|e| refuse(&name, format!("the public key does not parse: {e}")))?;
    let session_id = channel.handle().session_id().unwrap_or_default();
    let proof = burrow_proto::join::proof_data(&session_id, &request.name, &request.key);
    burrow_ssh::auth::verify_signature(&request.algorithm, &key, &request.signature, &proof)
        .map_err(|e| {
            refuse(
                &name,
                format!("the key's signature does not prove its possession ({e})"),
            )
        })?;
    let (plan, record) = match relay.db.enroll(token, &request.name, &key).await {
        Ok(Ok(done)) => done,
        Ok(Err(why)) => return Err(refuse(&name, why)),
        Err(e) => {
            tracing::error!("enrollment of {name} through token {token}: {e}");
            return Err(format!(
                "the relay cannot enroll now ({e}); try again later"
            ));
        }
    };
    let fp = burrow_io::keys::fingerprint(&key);
    audit_enrollment(relay, &name, peer, &fp, &plan, &record);
    let (relays, host_keys) = match relays_and_pins(&relay.db).await {
        Ok((r, p)) if !r.is_empty() && !p.is_empty() => (r, p),
        _ => (Vec::new(), vec![relay.fingerprint()]),
    };
    let labels = relay
        .db
        .device_labels(&request.name)
        .await
        .unwrap_or_default();
    let pending = match &plan {
        Plan::Create { pending, .. } | Plan::Replace { pending, .. } => *pending,
        Plan::Already => relay
            .db
            .devices()
            .await
            .ok()
            .and_then(|d| d.into_iter().find(|d| d.name == request.name))
            .is_some_and(|d| d.pending),
    };
    Ok(EnrollReply {
        device: request.name,
        pending,
        relays,
        host_keys,
        labels,
        replaced_keys: match plan {
            Plan::Replace { old_keys, .. } => old_keys,
            _ => Vec::new(),
        },
    })
}

fn audit_enrollment(
    relay: &Relay,
    name: &str,
    peer: &str,
    fp: &str,
    plan: &Plan,
    record: &TokenRecord,
) {
    let token = format!("token {}", record.id);
    let pending = |p: &bool| {
        if *p {
            "; it waits for approval (`burrow relay device approve`)"
        } else {
            ""
        }
    };
    match plan {
        Plan::Already => {
            relay.audit.record_about(
                About::Device,
                "enroll",
                name,
                peer,
                Outcome::Ok,
                &format!("already enrolled with key {fp}; answered again, no use of {token} spent"),
            );
            return;
        }
        Plan::Create { pending: p, .. } => relay.audit.record_about(
            About::Device,
            "enroll",
            name,
            peer,
            Outcome::Ok,
            &format!("device enrolled with key {fp} through {token}{}", pending(p)),
        ),
        Plan::Replace {
            old_keys,
            pending: p,
            ..
        } => relay.audit.record(
            "replace",
            name,
            peer,
            Outcome::Ok,
            &format!(
                "device re-bound to key {fp} through {token}; its old keys {} are revoked, its history kept{}",
                old_keys.join(", "),
                pending(p)
            ),
        ),
    }
    relay.audit.record_about(
        About::Device,
        "token",
        name,
        &token,
        Outcome::Ok,
        &format!(
            "used to enroll device {name} from {peer}; uses left: {}",
            record.uses_left()
        ),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_hash_and_compare() {
        let h = hash_secret("s3cret");
        assert_eq!(h.len(), 64);
        assert!(secret_matches("s3cret", &h));
        assert!(!secret_matches("s3creT", &h));
        assert!(!secret_matches("s3cret", &h[..63]));
        let (id, secret) = new_token_id_and_secret();
        assert!(burrow_proto::join::is_token_id(&id) && id.len() == 10);
        assert_eq!(secret.len(), 22);
    }
}
