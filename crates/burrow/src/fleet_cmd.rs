//! `burrow relay token ...` and the fleet's `device` commands: approve, reject, label,
//! unquarantine. Each change is audited as the login name that ran it.

use std::path::Path;

use burrow_proto::join::JoinToken;
use burrow_proto::labels::parse_labels;
use burrow_proto::secret::Secret;
use burrow_relay::audit::{Audit, Outcome};
use burrow_relay::store::Db;
use burrow_relay::store::fleet::{NewToken, TokenRecord};

use crate::cli::{DeviceCommand, TokenCommand};
use crate::exit::{self, Failure, Result};
use crate::relay_cmd::store_err;

/// Who runs this command, for the audit and `token ls`: the login that used sudo, else the
/// login name, else the user id.
pub fn invoker() -> String {
    ["SUDO_USER", "USER", "LOGNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| format!("uid {}", rustix::process::getuid().as_raw()))
}

/// Writes an audit entry and waits for it (the command exits right after).
async fn audit(db: &Db, event: &str, target: &str, outcome: Outcome, detail: &str) {
    if let Err(e) = Audit::new(db.clone())
        .record_stored(event, &invoker(), target, outcome, detail)
        .await
    {
        eprintln!("burrow: warning: the audit entry was not stored: {e}");
    }
}

/// `30m`, `24h`, `7d`, `90s` or plain seconds.
fn parse_ttl(text: &str) -> Option<i64> {
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: i64 = number.parse().ok()?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return None,
    };
    n.checked_mul(scale)
        .filter(|s| (60..=366 * 86_400).contains(s))
}

pub async fn token(db: &Db, data_dir: &Path, cmd: TokenCommand) -> Result {
    match cmd {
        TokenCommand::Create {
            uses,
            reusable,
            ttl,
            name_pattern,
            label,
            approve,
            replace,
            address,
        } => {
            let options = TokenOptions {
                uses,
                reusable,
                ttl,
                name_pattern,
                label,
                approve,
                replace,
                address,
            };
            let join = create(db, data_dir, options).await?;
            println!("{join}");
        }
        TokenCommand::Ls { json } => {
            let tokens = db.tokens().await.map_err(store_err)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&tokens).unwrap_or_default()
                );
            } else {
                print!("{}", burrow_relay::admin::render_tokens(&tokens));
            }
        }
        TokenCommand::Rm { id } => {
            if db.revoke_token(&id).await.map_err(store_err)? {
                audit(db, "token", &format!("token {id}"), Outcome::Ok, "revoked").await;
                println!("join token {id} revoked; devices it enrolled stay");
            } else {
                println!("join token {id} was already revoked");
            }
        }
    }
    Ok(())
}

struct TokenOptions {
    uses: Option<u32>,
    reusable: bool,
    ttl: String,
    name_pattern: String,
    label: Vec<String>,
    approve: bool,
    replace: Option<String>,
    address: Vec<String>,
}

/// Makes and stores a token; returns its join string (the summary goes to stderr, so that
/// `JOIN=$(burrow relay token create)` takes the string alone).
async fn create(db: &Db, data_dir: &Path, o: TokenOptions) -> Result<String> {
    let usage = |m: String| Failure::new(exit::USAGE, m);
    let ttl = parse_ttl(&o.ttl).ok_or_else(|| {
        usage(format!(
            "--ttl {}: give a duration from 1m to 366d, such as 30m, 24h or 7d",
            o.ttl
        ))
    })?;
    if o.uses == Some(0) {
        return Err(usage(
            "--uses 0 would enroll nothing: give at least 1, or --reusable".into(),
        ));
    }
    burrow_proto::glob::check_pattern(&o.name_pattern)
        .map_err(|e| usage(format!("--name-pattern: {e}")))?;
    let labels = parse_labels(&o.label).map_err(|e| usage(format!("--label: {e}")))?;
    if let Some(name) = &o.replace {
        if !db.device_exists(name).await.map_err(store_err)? {
            return Err(Failure::new(
                exit::DATAERR,
                format!("--replace {name}: no device named {name} (see `burrow relay device ls`)"),
            ));
        }
        if o.reusable || o.uses.is_some_and(|u| u > 1) {
            return Err(usage(
                "--replace re-binds one device to one new key: it is single-use".into(),
            ));
        }
    }
    for a in &o.address {
        a.parse::<burrow_proto::addr::Target>()
            .map_err(|e| usage(format!("--address {a}: {e}")))?;
    }
    let (recorded, mut pins) = burrow_relay::enroll::relays_and_pins(db)
        .await
        .map_err(store_err)?;
    // A single relay's CLI reads the host key beside the database, even before a first start.
    if db.sqlite_store().is_some()
        && let Ok(keys) = burrow_relay::host_keys::load(data_dir)
    {
        for key in keys.all() {
            let fp = burrow_io::keys::fingerprint(key.public_key());
            if !pins.contains(&fp) {
                pins.push(fp);
            }
        }
    }
    let relays = if o.address.is_empty() {
        recorded
    } else {
        o.address.clone()
    };
    if relays.is_empty() || pins.is_empty() {
        return Err(Failure::new(
            exit::CONFIG,
            "no relay address is known yet: start the relay once (it records its --advertise address, by default its --listen address), or give --address HOST:PORT",
        ));
    }
    let now = burrow_relay::store::now();
    let max_uses = match (o.reusable, o.uses) {
        (true, _) => None,
        (false, n) => Some(n.unwrap_or(1)),
    };
    let mut record = TokenRecord {
        id: String::new(),
        created: now,
        created_by: invoker(),
        expires: now + ttl,
        max_uses,
        uses: 0,
        name_pattern: o.replace.clone().unwrap_or(o.name_pattern),
        labels,
        approve: o.approve,
        replaces: o.replace,
        last_used_by: None,
        last_used: None,
        revoked: None,
    };
    // Ids are short enough to type: draw again on the rare collision.
    let mut secret = String::new();
    for _ in 0..8 {
        let (id, s) = burrow_relay::enroll::new_token_id_and_secret();
        record.id = id;
        secret = s;
        let token = NewToken {
            record: record.clone(),
            secret_hash: burrow_relay::enroll::hash_secret(&secret),
        };
        match db.create_token(&token).await {
            Ok(()) => break,
            Err(burrow_relay::store::StoreError::Conflict(_)) => continue,
            Err(e) => return Err(store_err(e)),
        }
    }
    let uses = match record.max_uses {
        Some(1) => "1 device".to_string(),
        Some(n) => format!("{n} devices"),
        None => "any number of devices".to_string(),
    };
    let mut summary = format!(
        "join token {}: enrolls {uses} named {}, until {}",
        record.id,
        record.name_pattern,
        burrow_proto::time::format_rfc3339(record.expires)
    );
    if let Some(r) = &record.replaces {
        summary.push_str(&format!("; re-binds device {r} to a new key"));
    }
    if !record.labels.is_empty() {
        summary.push_str(&format!("; labels {}", record.labels_text()));
    }
    if record.approve {
        summary.push_str("; devices wait for `burrow relay device approve`");
    }
    audit(
        db,
        "token",
        &format!("token {}", record.id),
        Outcome::Ok,
        &format!("created: {summary}"),
    )
    .await;
    eprintln!("{summary}");
    eprintln!(
        "relays {}; host keys {}",
        relays.join(", "),
        pins.join(", ")
    );
    eprintln!(
        "on each device: burrow agent enroll JOIN [--name NAME]   (the line below is a secret)"
    );
    let join = JoinToken {
        id: record.id,
        secret: Secret::new(secret),
        relays,
        pins,
    };
    Ok(join.encode())
}

/// The fleet's device commands.
pub async fn device(db: &Db, cmd: DeviceCommand) -> Result {
    match cmd {
        DeviceCommand::Approve { name } => {
            let was = db.approve_device(&name).await.map_err(store_err)?;
            if was {
                audit(db, "approve", &name, Outcome::Ok, "device approved").await;
                println!("device {name} approved: its agent connects at its next try");
            } else {
                println!("device {name} was not waiting for approval");
            }
        }
        DeviceCommand::Reject { name } => {
            db.reject_device(&name).await.map_err(store_err)?;
            audit(
                db,
                "approve",
                &name,
                Outcome::Denied,
                "device rejected and removed",
            )
            .await;
            println!("device {name} rejected and removed");
        }
        DeviceCommand::Label { name, labels, rm } => {
            if labels.is_empty() && rm.is_empty() {
                return Err(Failure::new(
                    exit::USAGE,
                    "give labels as KEY=VALUE, or --rm KEY",
                ));
            }
            let set =
                parse_labels(&labels).map_err(|e| Failure::new(exit::USAGE, e.to_string()))?;
            let now = db.set_labels(&name, &set, &rm).await.map_err(store_err)?;
            println!(
                "device {name}: labels {}",
                if now.is_empty() {
                    "(none)".to_string()
                } else {
                    burrow_proto::labels::format_labels(&now)
                }
            );
        }
        DeviceCommand::Unquarantine { name } => {
            let n = db.unquarantine(&name).await.map_err(store_err)?;
            if n == 0 {
                println!("device {name} had no quarantined key");
            } else {
                audit(
                    db,
                    "quarantine",
                    &name,
                    Outcome::Ok,
                    &format!("quarantine of {n} key(s) lifted"),
                )
                .await;
                println!("device {name}: quarantine lifted");
            }
        }
        other => {
            return Err(Failure::new(
                exit::SOFTWARE,
                format!("not a fleet command: {other:?}"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn ttls() {
        assert_eq!(super::parse_ttl("24h"), Some(86_400));
        assert_eq!(super::parse_ttl("30m"), Some(1800));
        assert_eq!(super::parse_ttl("7d"), Some(7 * 86_400));
        assert_eq!(super::parse_ttl("120"), Some(120));
        for bad in ["", "h", "5x", "10s", "400d"] {
            assert_eq!(super::parse_ttl(bad), None, "{bad}");
        }
    }
}
