//! Changes to the registry (the CLI): each one transaction; and the copy of a single
//! relay's rows by `relay migrate`.

use super::*;

impl Pg {
    /// Runs one registry change in a transaction.
    pub(super) async fn change<T>(
        &mut self,
        doing: &'static str,
        f: impl AsyncFnOnce(&tokio_postgres::Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let tx = self.client.transaction().await.map_err(pg(doing))?;
        let out = f(&tx).await?;
        tx.commit().await.map_err(pg(doing))?;
        Ok(out)
    }

    /// Adds a device with its first keys.
    pub async fn add_device(&mut self, name: &str, keys: &[PublicKey]) -> Result<(), StoreError> {
        self.change("adding a device", async |tx| {
            if exists(tx, "operators", "name", name).await? {
                return Err(StoreError::Conflict(format!(
                    "{name:?} is already an operator name; devices and operators share one namespace"
                )));
            }
            let n = tx
                .execute(
                    "INSERT INTO devices (name, created) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    &[&name, &now()],
                )
                .await
                .map_err(pg("adding a device"))?;
            if n == 0 {
                return Err(StoreError::Conflict(format!(
                    "device {name:?} already exists; add another key with `burrow relay device add-key {name} --pubkey FILE`"
                )));
            }
            insert_keys(tx, "device_keys", "device", name, keys).await
        })
        .await
    }

    /// Adds keys to an existing device.
    pub async fn add_device_keys(
        &mut self,
        name: &str,
        keys: &[PublicKey],
    ) -> Result<(), StoreError> {
        self.change("adding a device key", async |tx| {
            if !exists(tx, "devices", "name", name).await? {
                return Err(StoreError::NoDevice(name.into()));
            }
            insert_keys(tx, "device_keys", "device", name, keys).await
        })
        .await
    }

    /// Removes a device and everything it owns.
    pub async fn remove_device(&mut self, name: &str) -> Result<(), StoreError> {
        let n = self
            .client
            .execute("DELETE FROM devices WHERE name = $1", &[&name])
            .await
            .map_err(pg("removing a device"))?;
        if n == 0 {
            return Err(StoreError::NoDevice(name.into()));
        }
        Ok(())
    }

    /// Removes one key of a device; the last key is kept.
    pub async fn remove_device_key(
        &mut self,
        name: &str,
        fingerprint: &str,
    ) -> Result<(), StoreError> {
        self.change("removing a device key", async |tx| {
            if !exists(tx, "devices", "name", name).await? {
                return Err(StoreError::NoDevice(name.into()));
            }
            let keys: Vec<String> = tx
                .query("SELECT fingerprint FROM device_keys WHERE device = $1", &[&name])
                .await
                .map_err(pg("removing a device key"))?
                .iter()
                .map(|r| r.get(0))
                .collect();
            if !keys.iter().any(|k| k == fingerprint) {
                return Err(StoreError::Conflict(format!(
                    "device {name:?} has no key {fingerprint} (its keys: {}; see `burrow relay device ls`)",
                    keys.join(", ")
                )));
            }
            if keys.len() == 1 {
                return Err(StoreError::Conflict(format!(
                    "{fingerprint} is the only key of device {name:?}; add another first (`burrow relay device add-key`) or remove the device (`burrow relay device rm {name}`)"
                )));
            }
            tx.execute(
                "DELETE FROM device_keys WHERE device = $1 AND fingerprint = $2",
                &[&name, &fingerprint],
            )
            .await
            .map_err(pg("removing a device key"))?;
            Ok(())
        })
        .await
    }

    /// Lets `device` open `host:port` on the relay side.
    pub async fn allow_connect(
        &mut self,
        device: &str,
        host: &str,
        port: u16,
    ) -> Result<(), StoreError> {
        self.change("adding an allow-connect rule", async |tx| {
            if !exists(tx, "devices", "name", device).await? {
                return Err(StoreError::NoDevice(device.into()));
            }
            tx.execute(
                "INSERT INTO device_allow_connect (device, host, port) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                &[&device, &host, &i32::from(port)],
            )
            .await
            .map_err(pg("adding an allow-connect rule"))?;
            Ok(())
        })
        .await
    }

    /// Removes an `allow-connect` rule; false if there was none.
    pub async fn disallow_connect(
        &mut self,
        device: &str,
        host: &str,
        port: u16,
    ) -> Result<bool, StoreError> {
        self.change("removing an allow-connect rule", async |tx| {
            if !exists(tx, "devices", "name", device).await? {
                return Err(StoreError::NoDevice(device.into()));
            }
            let n = tx
                .execute(
                    "DELETE FROM device_allow_connect WHERE device = $1 AND host = $2 AND port = $3",
                    &[&device, &host, &i32::from(port)],
                )
                .await
                .map_err(pg("removing an allow-connect rule"))?;
            Ok(n > 0)
        })
        .await
    }

    /// Lets `device` hold a real listener on `addr:port`.
    pub async fn allow_listen(
        &mut self,
        device: &str,
        addr: &str,
        port: u16,
    ) -> Result<(), StoreError> {
        self.change("adding an allow-listen rule", async |tx| {
            if !exists(tx, "devices", "name", device).await? {
                return Err(StoreError::NoDevice(device.into()));
            }
            let owner: Option<String> = tx
                .query_opt(
                    "SELECT device FROM device_allow_listen WHERE port = $1 AND (addr = $2 OR addr = '0.0.0.0' OR $2 = '0.0.0.0')",
                    &[&i32::from(port), &addr],
                )
                .await
                .map_err(pg("checking allow-listen rules"))?
                .map(|r| r.get(0));
            match owner {
                Some(o) if o == device => Ok(()),
                Some(o) => Err(StoreError::Conflict(format!(
                    "port {port} is already allowed for device {o:?}; one listening port belongs to one device"
                ))),
                None => {
                    tx.execute(
                        "INSERT INTO device_allow_listen (device, addr, port) VALUES ($1, $2, $3)",
                        &[&device, &addr, &i32::from(port)],
                    )
                    .await
                    .map_err(pg("adding an allow-listen rule"))?;
                    Ok(())
                }
            }
        })
        .await
    }

    /// Removes an `allow-listen` rule; false if there was none.
    pub async fn disallow_listen(
        &mut self,
        device: &str,
        addr: &str,
        port: u16,
    ) -> Result<bool, StoreError> {
        self.change("removing an allow-listen rule", async |tx| {
            if !exists(tx, "devices", "name", device).await? {
                return Err(StoreError::NoDevice(device.into()));
            }
            let n = tx
                .execute(
                    "DELETE FROM device_allow_listen WHERE device = $1 AND addr = $2 AND port = $3",
                    &[&device, &addr, &i32::from(port)],
                )
                .await
                .map_err(pg("removing an allow-listen rule"))?;
            Ok(n > 0)
        })
        .await
    }

    /// Adds an operator.
    pub async fn add_operator(
        &mut self,
        name: &str,
        keys: &[PublicKey],
        password_hash: Option<&str>,
        allow: &[String],
        console_only: bool,
    ) -> Result<(), StoreError> {
        self.change("adding an operator", async |tx| {
            if exists(tx, "devices", "name", name).await? {
                return Err(StoreError::Conflict(format!(
                    "{name:?} is already a device name; devices and operators share one namespace"
                )));
            }
            let n = tx
                .execute(
                    "INSERT INTO operators (name, password_hash, console_only, created) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                    &[&name, &password_hash, &console_only, &now()],
                )
                .await
                .map_err(pg("adding an operator"))?;
            if n == 0 {
                return Err(StoreError::Conflict(format!(
                    "operator {name:?} already exists; remove it first with `burrow relay operator rm {name}`"
                )));
            }
            insert_keys(tx, "operator_keys", "operator", name, keys).await?;
            for pattern in allow {
                tx.execute(
                    "INSERT INTO operator_allow (operator, pattern) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    &[&name, pattern],
                )
                .await
                .map_err(pg("adding an operator"))?;
            }
            Ok(())
        })
        .await
    }

    /// Removes an operator.
    pub async fn remove_operator(&mut self, name: &str) -> Result<(), StoreError> {
        let n = self
            .client
            .execute("DELETE FROM operators WHERE name = $1", &[&name])
            .await
            .map_err(pg("removing an operator"))?;
        if n == 0 {
            return Err(StoreError::NoOperator(name.into()));
        }
        Ok(())
    }

    /// Changes an operator's `--allow` patterns and/or console-only flag.
    pub async fn set_operator_policy(
        &mut self,
        name: &str,
        allow: Option<&[String]>,
        console_only: Option<bool>,
    ) -> Result<(), StoreError> {
        self.change("changing an operator", async |tx| {
            if !exists(tx, "operators", "name", name).await? {
                return Err(StoreError::NoOperator(name.into()));
            }
            if let Some(allow) = allow {
                tx.execute("DELETE FROM operator_allow WHERE operator = $1", &[&name])
                    .await
                    .map_err(pg("changing an operator"))?;
                for pattern in allow {
                    tx.execute(
                        "INSERT INTO operator_allow (operator, pattern) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                        &[&name, pattern],
                    )
                    .await
                    .map_err(pg("changing an operator"))?;
                }
            }
            if let Some(console_only) = console_only {
                tx.execute(
                    "UPDATE operators SET console_only = $2 WHERE name = $1",
                    &[&name, &console_only],
                )
                .await
                .map_err(pg("changing an operator"))?;
            }
            Ok(())
        })
        .await
    }

    /// Sets an operator's role and/or TOTP secret (`Some(None)` removes the secret).
    pub async fn set_operator_web(
        &mut self,
        name: &str,
        role: Option<crate::store::Role>,
        totp_secret: Option<Option<&str>>,
    ) -> Result<(), StoreError> {
        self.change("changing an operator", async |tx| {
            if !exists(tx, "operators", "name", name).await? {
                return Err(StoreError::NoOperator(name.into()));
            }
            if let Some(role) = role {
                tx.execute(
                    "UPDATE operators SET role = $2 WHERE name = $1",
                    &[&name, &role.as_str()],
                )
                .await
                .map_err(pg("changing an operator"))?;
            }
            if let Some(secret) = totp_secret {
                tx.execute(
                    "UPDATE operators SET totp_secret = $2 WHERE name = $1",
                    &[&name, &secret],
                )
                .await
                .map_err(pg("changing an operator"))?;
            }
            Ok(())
        })
        .await
    }

    /// Lifts a lock; false if the operator was not locked.
    pub async fn unlock_operator(&mut self, name: &str) -> Result<bool, StoreError> {
        self.change("unlocking an operator", async |tx| {
            if !exists(tx, "operators", "name", name).await? {
                return Err(StoreError::NoOperator(name.into()));
            }
            let n = tx
                .execute(
                    "UPDATE operators SET locked_until = NULL WHERE name = $1 AND locked_until > $2",
                    &[&name, &now()],
                )
                .await
                .map_err(pg("unlocking an operator"))?;
            Ok(n > 0)
        })
        .await
    }

    /// Sets or clears an operator's password (never its last credential).
    pub async fn set_operator_password(
        &mut self,
        name: &str,
        hash: Option<&str>,
    ) -> Result<(), StoreError> {
        self.change("changing a password", async |tx| {
            if !exists(tx, "operators", "name", name).await? {
                return Err(StoreError::NoOperator(name.into()));
            }
            if hash.is_none() {
                let keys: i64 = tx
                    .query_one("SELECT COUNT(*) FROM operator_keys WHERE operator = $1", &[&name])
                    .await
                    .map_err(pg("changing a password"))?
                    .get(0);
                if keys == 0 {
                    return Err(StoreError::Conflict(format!(
                        "operator {name:?} has no key: clearing its password would lock it out; add one with `burrow relay operator add-key {name} --pubkey FILE` first, or remove the operator"
                    )));
                }
            }
            tx.execute(
                "UPDATE operators SET password_hash = $2 WHERE name = $1",
                &[&name, &hash],
            )
            .await
            .map_err(pg("changing a password"))?;
            Ok(())
        })
        .await
    }

    /// Adds keys to an existing operator.
    pub async fn add_operator_keys(
        &mut self,
        name: &str,
        keys: &[PublicKey],
    ) -> Result<(), StoreError> {
        self.change("adding an operator key", async |tx| {
            if !exists(tx, "operators", "name", name).await? {
                return Err(StoreError::NoOperator(name.into()));
            }
            insert_keys(tx, "operator_keys", "operator", name, keys).await
        })
        .await
    }

    /// Copies rows into a table of the same columns (for `relay migrate`); returns how many.
    pub async fn copy_rows(
        &mut self,
        table: &'static str,
        columns: &[&'static str],
        rows: &[Vec<CopyValue>],
    ) -> Result<u64, StoreError> {
        let placeholders: Vec<String> = (1..=columns.len()).map(|i| format!("${i}")).collect();
        let insert = format!(
            "INSERT INTO {table} ({}) VALUES ({}) ON CONFLICT DO NOTHING",
            columns.join(", "),
            placeholders.join(", ")
        );
        self.change("copying rows", async |tx| {
            let stmt = tx.prepare(&insert).await.map_err(pg("copying rows"))?;
            let mut n = 0u64;
            for row in rows {
                let args: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = row
                    .iter()
                    .map(|v| match v {
                        CopyValue::Text(t) => t as &(dyn tokio_postgres::types::ToSql + Sync),
                        CopyValue::Int(i) => i as &(dyn tokio_postgres::types::ToSql + Sync),
                        CopyValue::Int4(i) => i as &(dyn tokio_postgres::types::ToSql + Sync),
                        CopyValue::Int4Opt(i) => i as &(dyn tokio_postgres::types::ToSql + Sync),
                        CopyValue::Bool(b) => b as &(dyn tokio_postgres::types::ToSql + Sync),
                    })
                    .collect();
                n = n.saturating_add(tx.execute(&stmt, &args).await.map_err(pg("copying rows"))?);
            }
            Ok(n)
        })
        .await
    }

    /// Rows in `table`.
    pub async fn count(&self, table: &'static str) -> Result<u64, StoreError> {
        let row = self
            .client
            .query_one(&format!("SELECT COUNT(*) FROM {table}"), &[])
            .await
            .map_err(pg("counting rows"))?;
        Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
    }

    /// Makes the audit id sequence follow copied rows.
    pub async fn resync_audit_ids(&self) -> Result<(), StoreError> {
        self.client
            .batch_execute(
                "SELECT setval(pg_get_serial_sequence('audit', 'id'), COALESCE((SELECT MAX(id) FROM audit), 1))",
            )
            .await
            .map_err(pg("resetting the audit ids"))
    }
}
