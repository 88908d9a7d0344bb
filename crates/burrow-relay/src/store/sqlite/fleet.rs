//! The fleet on SQLite: join tokens, enrollment, approval, labels, quarantined keys, relay
//! addresses and imports.

use burrow_proto::labels::{Labels, format_labels, parse_labels};

use super::*;
use crate::store::fleet::{
    Existing, ImportDevice, NewToken, Plan, Quarantine, RelayAddress, TokenRecord, decide,
};

const TOKEN_COLUMNS: &str = "id, created, created_by, expires, max_uses, uses, name_pattern, labels, approve, replaces, last_used_by, last_used, revoked";

fn token_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TokenRecord> {
    let labels: String = r.get(7)?;
    Ok(TokenRecord {
        id: r.get(0)?,
        created: r.get(1)?,
        created_by: r.get(2)?,
        expires: r.get(3)?,
        max_uses: r.get(4)?,
        uses: r.get(5)?,
        name_pattern: r.get(6)?,
        labels: parse_labels(&[labels]).unwrap_or_default(),
        approve: r.get(8)?,
        replaces: r.get(9)?,
        last_used_by: r.get(10)?,
        last_used: r.get(11)?,
        revoked: r.get(12)?,
    })
}

fn token_by_id(c: &Connection, id: &str) -> Result<Option<(TokenRecord, String)>, StoreError> {
    c.query_row(
        &format!("SELECT {TOKEN_COLUMNS}, secret_hash FROM tokens WHERE id = ?1"),
        [id],
        |r| Ok((token_row(r)?, r.get::<_, String>(13)?)),
    )
    .optional()
    .map_err(sql("reading a join token"))
}

fn device_key_list(c: &Connection, name: &str) -> Result<Option<Vec<String>>, StoreError> {
    if !device_exists(c, name)? {
        return Ok(None);
    }
    strings(
        c,
        "SELECT fingerprint FROM device_keys WHERE device = ?1 ORDER BY fingerprint",
        name,
    )
    .map(Some)
}

fn put_labels(c: &Connection, device: &str, labels: &Labels) -> Result<(), StoreError> {
    for (k, v) in labels {
        c.prepare_cached(
            "INSERT INTO device_labels (device, key, value) VALUES (?1, ?2, ?3)
             ON CONFLICT (device, key) DO UPDATE SET value = excluded.value",
        )
        .and_then(|mut s| s.execute(params![device, k, v]))
        .map_err(sql("setting a label"))?;
    }
    Ok(())
}

impl Store {
    /// Stores a new join token; an id already taken is a conflict (the caller draws another).
    pub fn create_token(&self, token: &NewToken) -> Result<(), StoreError> {
        let t = &token.record;
        self.with(|c| {
            let n = c
                .execute(
                    "INSERT OR IGNORE INTO tokens (id, secret_hash, created, created_by, expires, max_uses, name_pattern, labels, approve, replaces)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                    params![
                        t.id,
                        token.secret_hash,
                        t.created,
                        t.created_by,
                        t.expires,
                        t.max_uses,
                        t.name_pattern,
                        format_labels(&t.labels),
                        t.approve,
                        t.replaces
                    ],
                )
                .map_err(sql("storing a join token"))?;
            if n == 0 {
                return Err(StoreError::Conflict(format!("token id {} is taken", t.id)));
            }
            Ok(())
        })
    }

    /// Every join token, newest first.
    pub fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.read_rows(
            &format!("SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY created DESC, id"),
            token_row,
        )
    }

    /// One token and the hash of its secret.
    pub fn token(&self, id: &str) -> Result<Option<(TokenRecord, String)>, StoreError> {
        self.with(|c| token_by_id(c, id))
    }

    /// Revokes a token; false if it was revoked already.
    pub fn revoke_token(&self, id: &str) -> Result<bool, StoreError> {
        self.with(|c| {
            if token_by_id(c, id)?.is_none() {
                return Err(StoreError::NoToken(id.into()));
            }
            c.execute(
                "UPDATE tokens SET revoked = ?2 WHERE id = ?1 AND revoked IS NULL",
                params![id, now()],
            )
            .map(|n| n > 0)
            .map_err(sql("revoking a join token"))
        })
    }

    /// Enrolls `name` with `key` through token `id` in one transaction: the token's rules are
    /// checked against the registry as it is, and a use is spent only by a change. The inner
    /// error is the refusal, in words for the agent.
    pub fn enroll(
        &self,
        id: &str,
        name: &str,
        key: &PublicKey,
    ) -> Result<Result<(Plan, TokenRecord), String>, StoreError> {
        let fp = burrow_io::keys::fingerprint(key);
        self.with(|c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql("enrolling a device"))?;
            let Some((token, _)) = token_by_id(&tx, id)? else {
                return Ok(Err(format!("join token {id} does not exist (any more)")));
            };
            let existing = Existing {
                device_keys: device_key_list(&tx, name)?,
                operator: operator_exists(&tx, name)?,
                key_owner: tx
                    .query_row(
                        "SELECT device FROM device_keys WHERE fingerprint = ?1 AND device != ?2 LIMIT 1",
                        params![fp, name],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(sql("enrolling a device"))?,
            };
            let now = now();
            let plan = match decide(&token, now, name, &fp, &existing) {
                Ok(plan) => plan,
                Err(why) => return Ok(Err(why)),
            };
            match &plan {
                Plan::Already => return Ok(Ok((plan, token))),
                Plan::Create { pending, labels } => {
                    tx.execute(
                        "INSERT INTO devices (name, created, pending) VALUES (?1, ?2, ?3)",
                        params![name, now, pending],
                    )
                    .map_err(sql("enrolling a device"))?;
                    insert_keys(&tx, "device_keys", "device", name, std::slice::from_ref(key))?;
                    put_labels(&tx, name, labels)?;
                }
                Plan::Replace {
                    pending, labels, ..
                } => {
                    tx.execute("DELETE FROM device_keys WHERE device = ?1", [name])
                        .map_err(sql("re-binding a device"))?;
                    insert_keys(&tx, "device_keys", "device", name, std::slice::from_ref(key))?;
                    if *pending {
                        tx.execute("UPDATE devices SET pending = 1 WHERE name = ?1", [name])
                            .map_err(sql("re-binding a device"))?;
                    }
                    put_labels(&tx, name, labels)?;
                }
            }
            tx.execute(
                "UPDATE tokens SET uses = uses + 1, last_used_by = ?2, last_used = ?3 WHERE id = ?1",
                params![id, name, now],
            )
            .map_err(sql("spending a join token"))?;
            let token = token_by_id(&tx, id)?.map_or(token, |(t, _)| t);
            tx.commit().map_err(sql("enrolling a device"))?;
            Ok(Ok((plan, token)))
        })
    }

    /// Approves a pending device; false if it was not pending.
    pub fn approve_device(&self, name: &str) -> Result<bool, StoreError> {
        self.with(|c| {
            if !device_exists(c, name)? {
                return Err(StoreError::NoDevice(name.into()));
            }
            c.execute(
                "UPDATE devices SET pending = 0 WHERE name = ?1 AND pending != 0",
                [name],
            )
            .map(|n| n > 0)
            .map_err(sql("approving a device"))
        })
    }

    /// Removes a device that waits for approval (a device already approved is removed with
    /// `device rm` instead).
    pub fn reject_device(&self, name: &str) -> Result<(), StoreError> {
        self.with(|c| {
            if !device_exists(c, name)? {
                return Err(StoreError::NoDevice(name.into()));
            }
            let n = c
                .execute(
                    "DELETE FROM devices WHERE name = ?1 AND pending != 0",
                    [name],
                )
                .map_err(sql("rejecting a device"))?;
            if n == 0 {
                return Err(StoreError::Conflict(format!(
                    "device {name} is not waiting for approval; remove it with `burrow relay device rm {name}`"
                )));
            }
            Ok(())
        })
    }

    /// Sets labels on a device and removes the keys in `remove`; returns its labels now.
    pub fn set_labels(
        &self,
        name: &str,
        set: &Labels,
        remove: &[String],
    ) -> Result<Labels, StoreError> {
        self.with(|c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql("labelling a device"))?;
            if !device_exists(&tx, name)? {
                return Err(StoreError::NoDevice(name.into()));
            }
            put_labels(&tx, name, set)?;
            for key in remove {
                tx.execute(
                    "DELETE FROM device_labels WHERE device = ?1 AND key = ?2",
                    params![name, key],
                )
                .map_err(sql("labelling a device"))?;
            }
            let now = labels_of(&tx, name)?;
            if now.len() > burrow_proto::labels::MAX_LABELS {
                return Err(StoreError::Conflict(format!(
                    "device {name} would carry {} labels; at most {} (remove some with --rm KEY)",
                    now.len(),
                    burrow_proto::labels::MAX_LABELS
                )));
            }
            tx.commit().map_err(sql("labelling a device"))?;
            Ok(now)
        })
    }

    /// A device's labels.
    pub fn device_labels(&self, name: &str) -> Result<Labels, StoreError> {
        self.with(|c| labels_of(c, name))
    }

    /// Records that a device's key was seen from two places at once (nothing if it was
    /// already); `kept_*` names the session that keeps it.
    pub fn quarantine_key(&self, q: &Quarantine) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO quarantine (device, fingerprint, since, detail, kept_relay, kept_session, kept_instance)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (device, fingerprint) DO UPDATE SET kept_relay = excluded.kept_relay,
                   kept_session = excluded.kept_session, kept_instance = excluded.kept_instance",
                params![
                    q.device,
                    q.fingerprint,
                    q.since,
                    q.detail,
                    q.kept_relay,
                    i64::try_from(q.kept_session).unwrap_or(i64::MAX),
                    q.kept_instance
                ],
            )
            .map(|_| ())
            .map_err(sql("quarantining a key"))
        })
    }

    /// Notes which session holds a quarantined key now (nothing if it is not quarantined).
    pub fn keep_quarantined(
        &self,
        device: &str,
        fingerprint: &str,
        relay: &str,
        session: u64,
        instance: &str,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE quarantine SET kept_relay = ?3, kept_session = ?4, kept_instance = ?5 WHERE device = ?1 AND fingerprint = ?2",
                params![device, fingerprint, relay, i64::try_from(session).unwrap_or(i64::MAX), instance],
            )
            .map(|_| ())
            .map_err(sql("recording who holds a quarantined key"))
        })
    }

    /// Lifts the quarantine of a device's keys; returns how many keys it held.
    pub fn unquarantine(&self, name: &str) -> Result<usize, StoreError> {
        self.with(|c| {
            if !device_exists(c, name)? {
                return Err(StoreError::NoDevice(name.into()));
            }
            c.execute("DELETE FROM quarantine WHERE device = ?1", [name])
                .map_err(sql("lifting a quarantine"))
        })
    }

    /// Every quarantined key.
    pub fn quarantines(&self) -> Result<Vec<Quarantine>, StoreError> {
        self.read_rows(
            "SELECT device, fingerprint, since, detail, kept_relay, kept_session, kept_instance FROM quarantine ORDER BY device, fingerprint",
            |r| {
                Ok(Quarantine {
                    device: r.get(0)?,
                    fingerprint: r.get(1)?,
                    since: r.get(2)?,
                    detail: r.get(3)?,
                    kept_relay: r.get(4)?,
                    kept_session: u64::try_from(r.get::<_, i64>(5)?).unwrap_or(0),
                    kept_instance: r.get(6)?,
                })
            },
        )
    }

    /// Records a relay's public address and host key (each relay at start).
    pub fn record_relay_address(&self, a: &RelayAddress) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO relay_addresses (relay, address, host_key, updated) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (relay) DO UPDATE SET address = excluded.address, host_key = excluded.host_key, updated = excluded.updated",
                params![a.relay, a.address, a.host_key, now()],
            )
            .map(|_| ())
            .map_err(sql("recording the relay's address"))
        })
    }

    /// Every relay's public address and host key, most recently started first.
    pub fn relay_addresses(&self) -> Result<Vec<RelayAddress>, StoreError> {
        self.read_rows(
            "SELECT relay, address, host_key FROM relay_addresses ORDER BY updated DESC, relay",
            |r| {
                Ok(RelayAddress {
                    relay: r.get(0)?,
                    address: r.get(1)?,
                    host_key: r.get(2)?,
                })
            },
        )
    }

    /// Registers many devices in one transaction: each either whole (keys, labels, rules) or
    /// refused with the reason, the others unaffected.
    pub fn import_devices(
        &self,
        devices: &[ImportDevice],
    ) -> Result<Vec<Result<(), String>>, StoreError> {
        self.with(|c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql("importing devices"))?;
            let mut out = Vec::with_capacity(devices.len());
            for d in devices {
                out.push(import_one(&tx, d)?);
            }
            tx.commit().map_err(sql("importing devices"))?;
            Ok(out)
        })
    }
}

fn labels_of(c: &Connection, name: &str) -> Result<Labels, StoreError> {
    let rows = strings(
        c,
        "SELECT key || '=' || value FROM device_labels WHERE device = ?1 ORDER BY key",
        name,
    )?;
    Ok(crate::store::fleet_labels(Some(rows)))
}

fn import_one(c: &Connection, d: &ImportDevice) -> Result<Result<(), String>, StoreError> {
    let name = d.name.as_str();
    if device_exists(c, name)? {
        return Ok(Err(format!("device {name} already exists; left as it is")));
    }
    if operator_exists(c, name)? {
        return Ok(Err(format!("{name} is an operator's name")));
    }
    for (addr, port) in &d.allow_listen {
        let owner: Option<String> = c
            .query_row(
                "SELECT device FROM device_allow_listen WHERE port = ?1 AND (addr = ?2 OR addr = '0.0.0.0' OR ?2 = '0.0.0.0')",
                params![port, addr],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql("importing devices"))?;
        if let Some(o) = owner {
            return Ok(Err(format!(
                "port {port} is already allowed for device {o}; one listening port belongs to one device"
            )));
        }
    }
    c.execute(
        "INSERT INTO devices (name, created) VALUES (?1, ?2)",
        params![name, now()],
    )
    .map_err(sql("importing devices"))?;
    insert_keys(c, "device_keys", "device", name, &d.keys)?;
    put_labels(c, name, &d.labels)?;
    for (host, port) in &d.allow_connect {
        c.execute(
            "INSERT OR IGNORE INTO device_allow_connect (device, host, port) VALUES (?1, ?2, ?3)",
            params![name, host, port],
        )
        .map_err(sql("importing devices"))?;
    }
    for (addr, port) in &d.allow_listen {
        c.execute(
            "INSERT OR IGNORE INTO device_allow_listen (device, addr, port) VALUES (?1, ?2, ?3)",
            params![name, addr, port],
        )
        .map_err(sql("importing devices"))?;
    }
    Ok(Ok(()))
}
