//! Operators: keys, passwords and their locks, and the device patterns they may reach.

use super::*;

impl Store {
    /// Adds an operator.
    pub fn add_operator(
        &self,
        name: &str,
        keys: &[PublicKey],
        password_hash: Option<&str>,
        allow: &[String],
        console_only: bool,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sql("adding an operator"))?;
            if device_exists(&tx, name)? {
                return Err(StoreError::Conflict(format!(
                    "{name:?} is already a device name; devices and operators share one namespace"
                )));
            }
            let inserted = tx
                .execute(
                    "INSERT OR IGNORE INTO operators (name, password_hash, console_only, created) VALUES (?1, ?2, ?3, ?4)",
                    params![name, password_hash, console_only, now()],
                )
                .map_err(sql("adding an operator"))?;
            if inserted == 0 {
                return Err(StoreError::Conflict(format!(
                    "operator {name:?} already exists; remove it first with `burrow relay operator rm {name}`"
                )));
            }
            insert_keys(&tx, "operator_keys", "operator", name, keys)?;
            for pattern in allow {
                tx.execute(
                    "INSERT OR IGNORE INTO operator_allow (operator, pattern) VALUES (?1, ?2)",
                    params![name, pattern],
                )
                .map_err(sql("adding an operator"))?;
            }
            tx.commit().map_err(sql("adding an operator"))
        })
    }

    /// Removes an operator.
    pub fn remove_operator(&self, name: &str) -> Result<(), StoreError> {
        self.with(|c| {
            let n = c
                .execute("DELETE FROM operators WHERE name = ?1", [name])
                .map_err(sql("removing an operator"))?;
            if n == 0 {
                return Err(StoreError::NoOperator(name.into()));
            }
            Ok(())
        })
    }

    /// Changes an operator's policy: its `--allow` patterns (when given) and console-only flag
    /// (when given). Sessions already open follow within seconds (see `conn::watch_revocations`).
    pub fn set_operator_policy(
        &self,
        name: &str,
        allow: Option<&[String]>,
        console_only: Option<bool>,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql("changing an operator"))?;
            if !operator_exists(&tx, name)? {
                return Err(StoreError::NoOperator(name.into()));
            }
            if let Some(allow) = allow {
                tx.execute("DELETE FROM operator_allow WHERE operator = ?1", [name])
                    .map_err(sql("changing an operator"))?;
                for pattern in allow {
                    tx.execute(
                        "INSERT OR IGNORE INTO operator_allow (operator, pattern) VALUES (?1, ?2)",
                        params![name, pattern],
                    )
                    .map_err(sql("changing an operator"))?;
                }
            }
            if let Some(console_only) = console_only {
                tx.execute(
                    "UPDATE operators SET console_only = ?2 WHERE name = ?1",
                    params![name, console_only],
                )
                .map_err(sql("changing an operator"))?;
            }
            tx.commit().map_err(sql("changing an operator"))
        })
    }

    /// Sets an operator's role and/or TOTP secret (`Some(None)` removes the secret).
    pub fn set_operator_web(
        &self,
        name: &str,
        role: Option<crate::store::Role>,
        totp_secret: Option<Option<&str>>,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql("changing an operator"))?;
            if !operator_exists(&tx, name)? {
                return Err(StoreError::NoOperator(name.into()));
            }
            if let Some(role) = role {
                tx.execute(
                    "UPDATE operators SET role = ?2 WHERE name = ?1",
                    params![name, role.as_str()],
                )
                .map_err(sql("changing an operator"))?;
            }
            if let Some(secret) = totp_secret {
                tx.execute(
                    "UPDATE operators SET totp_secret = ?2 WHERE name = ?1",
                    params![name, secret],
                )
                .map_err(sql("changing an operator"))?;
            }
            tx.commit().map_err(sql("changing an operator"))
        })
    }

    /// Locks an operator's password login until `until` (seconds since the epoch).
    pub fn lock_operator(&self, name: &str, until: i64) -> Result<(), StoreError> {
        self.apply_single(&Write::LockOperator {
            name: name.into(),
            until,
        })
        .map(|_| ())
    }

    /// Lifts a lock; false if the operator was not locked.
    pub fn unlock_operator(&self, name: &str) -> Result<bool, StoreError> {
        self.with(|c| {
            if !operator_exists(c, name)? {
                return Err(StoreError::NoOperator(name.into()));
            }
            c.execute(
                "UPDATE operators SET locked_until = NULL WHERE name = ?1 AND locked_until > ?2",
                params![name, now()],
            )
            .map(|n| n > 0)
            .map_err(sql("unlocking an operator"))
        })
    }

    /// Sets (a hash) or clears (`None`) an operator's password. Clearing the last credential
    /// is refused: an operator with neither key nor password could never log in again.
    pub fn set_operator_password(&self, name: &str, hash: Option<&str>) -> Result<(), StoreError> {
        self.with(|c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql("changing a password"))?;
            if !operator_exists(&tx, name)? {
                return Err(StoreError::NoOperator(name.into()));
            }
            if hash.is_none() {
                let keys: i64 = tx
                    .query_row(
                        "SELECT COUNT(*) FROM operator_keys WHERE operator = ?1",
                        [name],
                        |r| r.get(0),
                    )
                    .map_err(sql("changing a password"))?;
                if keys == 0 {
                    return Err(StoreError::Conflict(format!(
                        "operator {name:?} has no key: clearing its password would lock it out; add one with `burrow relay operator add-key {name} --pubkey FILE` first, or remove the operator"
                    )));
                }
            }
            tx.execute(
                "UPDATE operators SET password_hash = ?2 WHERE name = ?1",
                params![name, hash],
            )
            .map_err(sql("changing a password"))?;
            tx.commit().map_err(sql("changing a password"))
        })
    }

    /// Adds keys to an existing operator.
    pub fn add_operator_keys(&self, name: &str, keys: &[PublicKey]) -> Result<(), StoreError> {
        self.with(|c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql("adding an operator key"))?;
            if !operator_exists(&tx, name)? {
                return Err(StoreError::NoOperator(name.into()));
            }
            insert_keys(&tx, "operator_keys", "operator", name, keys)?;
            tx.commit().map_err(sql("adding an operator key"))
        })
    }

    /// One operator, if it exists.
    pub fn operator(&self, name: &str) -> Result<Option<OperatorRecord>, StoreError> {
        self.with(|c| operator_record(c, name))
    }

    /// The operator's password hash, if it has one, and until when repeated wrong passwords
    /// locked it (a lock already over reads as none).
    pub fn operator_password(&self, name: &str) -> Result<Option<PasswordLogin>, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT password_hash, locked_until FROM operators WHERE name = ?1",
                [name],
                |r| Ok((r.get::<_, Option<String>>(0)?, r.get::<_, Option<i64>>(1)?)),
            )
            .optional()
            .map(|row| {
                row.and_then(|(hash, locked_until)| {
                    hash.map(|hash| PasswordLogin {
                        hash,
                        locked_until: locked_until.filter(|t| *t > now()),
                    })
                })
            })
            .map_err(sql("reading a password hash"))
        })
    }

    /// Whether `fingerprint` is one of the operator's keys.
    pub fn operator_has_key(&self, name: &str, fingerprint: &str) -> Result<bool, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT 1 FROM operator_keys WHERE operator = ?1 AND fingerprint = ?2",
                params![name, fingerprint],
                |_| Ok(()),
            )
            .optional()
            .map(|r| r.is_some())
            .map_err(sql("checking an operator key"))
        })
    }

    /// All operators, sorted by name: three queries however many there are.
    pub fn operators(&self) -> Result<Vec<OperatorRecord>, StoreError> {
        self.with(|c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT name, password_hash IS NOT NULL, console_only, locked_until, role, totp_secret FROM operators ORDER BY name",
                )
                .map_err(sql("listing operators"))?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, bool>(1)?,
                        r.get::<_, bool>(2)?,
                        r.get::<_, Option<i64>>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, Option<String>>(5)?,
                    ))
                })
                .map_err(sql("listing operators"))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(sql("listing operators"))?;
            let mut keys = grouped(c, "SELECT operator, fingerprint FROM operator_keys ORDER BY operator, fingerprint")?;
            let mut allow = grouped(c, "SELECT operator, pattern FROM operator_allow ORDER BY operator, pattern")?;
            let now = now();
            Ok(rows
                .into_iter()
                .map(|(name, has_password, console_only, locked_until, role, totp_secret)| OperatorRecord {
                    fingerprints: keys.remove(&name).unwrap_or_default(),
                    allow: allow.remove(&name).unwrap_or_default(),
                    has_password,
                    console_only,
                    locked_until: locked_until.filter(|t| *t > now),
                    role: crate::store::Role::parse_stored(&role),
                    totp: totp_secret.is_some(),
                    totp_secret: totp_secret.map(burrow_proto::secret::Secret::new),
                    name,
                })
                .collect())
        })
    }
}
