//! The fleet on PostgreSQL: join tokens, enrollment, approval, labels, quarantined keys, relay
//! addresses and imports. An enrollment locks its token's row, so two agents spending the last
//! use of one token at once on two relays cannot both succeed.

use burrow_proto::labels::{Labels, format_labels, parse_labels};
use tokio_postgres::Transaction;

use super::*;
use crate::store::fleet::{
    Existing, ImportDevice, NewToken, Plan, Quarantine, RelayAddress, TokenRecord, decide,
};

const TOKEN_COLUMNS: &str = "id, created, created_by, expires, max_uses, uses, name_pattern, labels, approve, replaces, last_used_by, last_used, revoked";

fn token_row(r: &tokio_postgres::Row) -> TokenRecord {
    let labels: String = r.get(7);
    let count = |i: usize| u32::try_from(r.get::<_, i32>(i)).unwrap_or(0);
    TokenRecord {
        id: r.get(0),
        created: r.get(1),
        created_by: r.get(2),
        expires: r.get(3),
        max_uses: r
            .get::<_, Option<i32>>(4)
            .map(|m| u32::try_from(m).unwrap_or(0)),
        uses: count(5),
        name_pattern: r.get(6),
        labels: parse_labels(&[labels]).unwrap_or_default(),
        approve: r.get(8),
        replaces: r.get(9),
        last_used_by: r.get(10),
        last_used: r.get(11),
        revoked: r.get(12),
    }
}

async fn put_labels(tx: &Transaction<'_>, device: &str, labels: &Labels) -> Result<(), StoreError> {
    for (k, v) in labels {
        tx.execute(
            "INSERT INTO device_labels (device, key, value) VALUES ($1, $2, $3)
             ON CONFLICT (device, key) DO UPDATE SET value = EXCLUDED.value",
            &[&device, k, v],
        )
        .await
        .map_err(pg("setting a label"))?;
    }
    Ok(())
}

async fn labels_of<C: tokio_postgres::GenericClient>(
    c: &C,
    name: &str,
) -> Result<Labels, StoreError> {
    let rows = c
        .query(
            "SELECT key, value FROM device_labels WHERE device = $1 ORDER BY key",
            &[&name],
        )
        .await
        .map_err(pg("reading labels"))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

async fn device_key_list(
    tx: &Transaction<'_>,
    name: &str,
) -> Result<Option<Vec<String>>, StoreError> {
    if !exists(tx, "devices", "name", name).await? {
        return Ok(None);
    }
    let rows = tx
        .query(
            "SELECT fingerprint FROM device_keys WHERE device = $1 ORDER BY fingerprint",
            &[&name],
        )
        .await
        .map_err(pg("reading device keys"))?;
    Ok(Some(rows.iter().map(|r| r.get(0)).collect()))
}

impl Pg {
    /// Stores a new join token; an id already taken is a conflict.
    pub async fn create_token(&mut self, token: &NewToken) -> Result<(), StoreError> {
        let t = &token.record;
        let max_uses = t.max_uses.map(|m| i32::try_from(m).unwrap_or(i32::MAX));
        let n = self
            .client
            .execute(
                "INSERT INTO tokens (id, secret_hash, created, created_by, expires, max_uses, name_pattern, labels, approve, replaces)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT DO NOTHING",
                &[
                    &t.id,
                    &token.secret_hash,
                    &t.created,
                    &t.created_by,
                    &t.expires,
                    &max_uses,
                    &t.name_pattern,
                    &format_labels(&t.labels),
                    &t.approve,
                    &t.replaces,
                ],
            )
            .await
            .map_err(pg("storing a join token"))?;
        if n == 0 {
            return Err(StoreError::Conflict(format!("token id {} is taken", t.id)));
        }
        Ok(())
    }

    /// Every join token, newest first.
    pub async fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let rows = self
            .client
            .query(
                &format!("SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY created DESC, id"),
                &[],
            )
            .await
            .map_err(pg("listing join tokens"))?;
        Ok(rows.iter().map(token_row).collect())
    }

    /// One token and the hash of its secret.
    pub async fn token(&self, id: &str) -> Result<Option<(TokenRecord, String)>, StoreError> {
        let row = self
            .client
            .query_opt(
                &format!("SELECT {TOKEN_COLUMNS}, secret_hash FROM tokens WHERE id = $1"),
                &[&id],
            )
            .await
            .map_err(pg("reading a join token"))?;
        Ok(row.map(|r| (token_row(&r), r.get(13))))
    }

    /// Revokes a token; false if it was revoked already.
    pub async fn revoke_token(&mut self, id: &str) -> Result<bool, StoreError> {
        self.change("revoking a join token", async |tx| {
            if !exists(tx, "tokens", "id", id).await? {
                return Err(StoreError::NoToken(id.into()));
            }
            let n = tx
                .execute(
                    "UPDATE tokens SET revoked = $2 WHERE id = $1 AND revoked IS NULL",
                    &[&id, &now()],
                )
                .await
                .map_err(pg("revoking a join token"))?;
            Ok(n > 0)
        })
        .await
    }

    /// Enrolls `name` with `key` through token `id` in one transaction (see the SQLite
    /// backend); the token's row is locked for it.
    pub async fn enroll(
        &mut self,
        id: &str,
        name: &str,
        key: &PublicKey,
    ) -> Result<Result<(Plan, TokenRecord), String>, StoreError> {
        let fp = burrow_io::keys::fingerprint(key);
        self.change("enrolling a device", async |tx| {
            let Some(row) = tx
                .query_opt(
                    &format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE id = $1 FOR UPDATE"),
                    &[&id],
                )
                .await
                .map_err(pg("enrolling a device"))?
            else {
                return Ok(Err(format!("join token {id} does not exist (any more)")));
            };
            let token = token_row(&row);
            let key_owner: Option<String> = tx
                .query_opt(
                    "SELECT device FROM device_keys WHERE fingerprint = $1 AND device != $2 LIMIT 1",
                    &[&fp, &name],
                )
                .await
                .map_err(pg("enrolling a device"))?
                .map(|r| r.get(0));
            let existing = Existing {
                device_keys: device_key_list(tx, name).await?,
                operator: exists(tx, "operators", "name", name).await?,
                key_owner,
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
                        "INSERT INTO devices (name, created, pending) VALUES ($1, $2, $3)",
                        &[&name, &now, pending],
                    )
                    .await
                    .map_err(pg("enrolling a device"))?;
                    insert_keys(tx, "device_keys", "device", name, std::slice::from_ref(key))
                        .await?;
                    put_labels(tx, name, labels).await?;
                }
                Plan::Replace {
                    pending, labels, ..
                } => {
                    tx.execute("DELETE FROM device_keys WHERE device = $1", &[&name])
                        .await
                        .map_err(pg("re-binding a device"))?;
                    insert_keys(tx, "device_keys", "device", name, std::slice::from_ref(key))
                        .await?;
                    if *pending {
                        tx.execute("UPDATE devices SET pending = true WHERE name = $1", &[&name])
                            .await
                            .map_err(pg("re-binding a device"))?;
                    }
                    put_labels(tx, name, labels).await?;
                }
            }
            let row = tx
                .query_one(
                    &format!(
                        "UPDATE tokens SET uses = uses + 1, last_used_by = $2, last_used = $3 WHERE id = $1 RETURNING {TOKEN_COLUMNS}"
                    ),
                    &[&id, &name, &now],
                )
                .await
                .map_err(pg("spending a join token"))?;
            Ok(Ok((plan, token_row(&row))))
        })
        .await
    }

    /// Approves a pending device; false if it was not pending.
    pub async fn approve_device(&mut self, name: &str) -> Result<bool, StoreError> {
        self.change("approving a device", async |tx| {
            if !exists(tx, "devices", "name", name).await? {
                return Err(StoreError::NoDevice(name.into()));
            }
            let n = tx
                .execute(
                    "UPDATE devices SET pending = false WHERE name = $1 AND pending",
                    &[&name],
                )
                .await
                .map_err(pg("approving a device"))?;
            Ok(n > 0)
        })
        .await
    }

    /// Removes a device that waits for approval.
    pub async fn reject_device(&mut self, name: &str) -> Result<(), StoreError> {
        self.change("rejecting a device", async |tx| {
            if !exists(tx, "devices", "name", name).await? {
                return Err(StoreError::NoDevice(name.into()));
            }
            let n = tx
                .execute("DELETE FROM devices WHERE name = $1 AND pending", &[&name])
                .await
                .map_err(pg("rejecting a device"))?;
            if n == 0 {
                return Err(StoreError::Conflict(format!(
                    "device {name} is not waiting for approval; remove it with `burrow relay device rm {name}`"
                )));
            }
            Ok(())
        })
        .await
    }

    /// Sets labels on a device and removes the keys in `remove`; returns its labels now.
    pub async fn set_labels(
        &mut self,
        name: &str,
        set: &Labels,
        remove: &[String],
    ) -> Result<Labels, StoreError> {
        self.change("labelling a device", async |tx| {
            if !exists(tx, "devices", "name", name).await? {
                return Err(StoreError::NoDevice(name.into()));
            }
            put_labels(tx, name, set).await?;
            for key in remove {
                tx.execute(
                    "DELETE FROM device_labels WHERE device = $1 AND key = $2",
                    &[&name, key],
                )
                .await
                .map_err(pg("labelling a device"))?;
            }
            let now = labels_of(tx, name).await?;
            if now.len() > burrow_proto::labels::MAX_LABELS {
                return Err(StoreError::Conflict(format!(
                    "device {name} would carry {} labels; at most {} (remove some with --rm KEY)",
                    now.len(),
                    burrow_proto::labels::MAX_LABELS
                )));
            }
            Ok(now)
        })
        .await
    }

    /// A device's labels.
    pub async fn device_labels(&self, name: &str) -> Result<Labels, StoreError> {
        labels_of(&self.client, name).await
    }

    /// Records that a device's key was seen from two places at once; `kept_*` names the
    /// session that keeps it.
    pub async fn quarantine_key(&mut self, q: &Quarantine) -> Result<(), StoreError> {
        let session = i64::try_from(q.kept_session).unwrap_or(i64::MAX);
        self.client
            .execute(
                "INSERT INTO quarantine (device, fingerprint, since, detail, kept_relay, kept_session, kept_instance)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (device, fingerprint) DO UPDATE SET kept_relay = EXCLUDED.kept_relay,
                   kept_session = EXCLUDED.kept_session, kept_instance = EXCLUDED.kept_instance",
                &[&q.device, &q.fingerprint, &q.since, &q.detail, &q.kept_relay, &session, &q.kept_instance],
            )
            .await
            .map(|_| ())
            .map_err(pg("quarantining a key"))
    }

    /// Notes which session holds a quarantined key now (nothing if it is not quarantined).
    pub async fn keep_quarantined(
        &mut self,
        device: &str,
        fingerprint: &str,
        relay: &str,
        session: u64,
        instance: &str,
    ) -> Result<(), StoreError> {
        let session = i64::try_from(session).unwrap_or(i64::MAX);
        self.client
            .execute(
                "UPDATE quarantine SET kept_relay = $3, kept_session = $4, kept_instance = $5 WHERE device = $1 AND fingerprint = $2",
                &[&device, &fingerprint, &relay, &session, &instance],
            )
            .await
            .map(|_| ())
            .map_err(pg("recording who holds a quarantined key"))
    }

    /// Lifts the quarantine of a device's keys; returns how many keys it held.
    pub async fn unquarantine(&mut self, name: &str) -> Result<usize, StoreError> {
        self.change("lifting a quarantine", async |tx| {
            if !exists(tx, "devices", "name", name).await? {
                return Err(StoreError::NoDevice(name.into()));
            }
            let n = tx
                .execute("DELETE FROM quarantine WHERE device = $1", &[&name])
                .await
                .map_err(pg("lifting a quarantine"))?;
            Ok(usize::try_from(n).unwrap_or(usize::MAX))
        })
        .await
    }

    /// Every quarantined key.
    pub async fn quarantines(&self) -> Result<Vec<Quarantine>, StoreError> {
        let rows = self
            .client
            .query(
                "SELECT device, fingerprint, since, detail, kept_relay, kept_session, kept_instance FROM quarantine ORDER BY device, fingerprint",
                &[],
            )
            .await
            .map_err(pg("reading quarantined keys"))?;
        Ok(rows
            .iter()
            .map(|r| Quarantine {
                device: r.get(0),
                fingerprint: r.get(1),
                since: r.get(2),
                detail: r.get(3),
                kept_relay: r.get(4),
                kept_session: u64::try_from(r.get::<_, i64>(5)).unwrap_or(0),
                kept_instance: r.get(6),
            })
            .collect())
    }

    /// Records a relay's public address and host key.
    pub async fn record_relay_address(&self, a: &RelayAddress) -> Result<(), StoreError> {
        self.client
            .execute(
                "INSERT INTO relay_addresses (relay, address, host_key, updated) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (relay) DO UPDATE SET address = EXCLUDED.address, host_key = EXCLUDED.host_key, updated = EXCLUDED.updated",
                &[&a.relay, &a.address, &a.host_key, &now()],
            )
            .await
            .map(|_| ())
            .map_err(pg("recording the relay's address"))
    }

    /// Every relay's public address and host key, most recently started first.
    pub async fn relay_addresses(&self) -> Result<Vec<RelayAddress>, StoreError> {
        let rows = self
            .client
            .query(
                "SELECT relay, address, host_key FROM relay_addresses ORDER BY updated DESC, relay",
                &[],
            )
            .await
            .map_err(pg("reading the relays' addresses"))?;
        Ok(rows
            .iter()
            .map(|r| RelayAddress {
                relay: r.get(0),
                address: r.get(1),
                host_key: r.get(2),
            })
            .collect())
    }

    /// Registers many devices in one transaction: each either whole or refused with the
    /// reason, the others unaffected.
    pub async fn import_devices(
        &mut self,
        devices: &[ImportDevice],
    ) -> Result<Vec<Result<(), String>>, StoreError> {
        self.change("importing devices", async |tx| {
            let mut out = Vec::with_capacity(devices.len());
            for d in devices {
                out.push(import_one(tx, d).await?);
            }
            Ok(out)
        })
        .await
    }
}

async fn import_one(
    tx: &Transaction<'_>,
    d: &ImportDevice,
) -> Result<Result<(), String>, StoreError> {
    let name = d.name.as_str();
    if exists(tx, "devices", "name", name).await? {
        return Ok(Err(format!("device {name} already exists; left as it is")));
    }
    if exists(tx, "operators", "name", name).await? {
        return Ok(Err(format!("{name} is an operator's name")));
    }
    for (addr, port) in &d.allow_listen {
        let owner: Option<String> = tx
            .query_opt(
                "SELECT device FROM device_allow_listen WHERE port = $1 AND (addr = $2 OR addr = '0.0.0.0' OR $2 = '0.0.0.0')",
                &[&i32::from(*port), addr],
            )
            .await
            .map_err(pg("importing devices"))?
            .map(|r| r.get(0));
        if let Some(o) = owner {
            return Ok(Err(format!(
                "port {port} is already allowed for device {o}; one listening port belongs to one device"
            )));
        }
    }
    tx.execute(
        "INSERT INTO devices (name, created) VALUES ($1, $2)",
        &[&name, &now()],
    )
    .await
    .map_err(pg("importing devices"))?;
    insert_keys(tx, "device_keys", "device", name, &d.keys).await?;
    put_labels(tx, name, &d.labels).await?;
    for (host, port) in &d.allow_connect {
        tx.execute(
            "INSERT INTO device_allow_connect (device, host, port) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            &[&name, host, &i32::from(*port)],
        )
        .await
        .map_err(pg("importing devices"))?;
    }
    for (addr, port) in &d.allow_listen {
        tx.execute(
            "INSERT INTO device_allow_listen (device, addr, port) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            &[&name, addr, &i32::from(*port)],
        )
        .await
        .map_err(pg("importing devices"))?;
    }
    Ok(Ok(()))
}
