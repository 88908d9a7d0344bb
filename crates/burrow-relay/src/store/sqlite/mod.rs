//! The SQLite backend: one relay's registry in one file.
//!
//! The CLI (`burrow relay device add`, …) and the running relay open the same file; WAL mode lets
//! them work at once, and the relay reads policy on every decision, so changes apply without a
//! restart. The `online`/`endpoints` tables mirror the relay's memory for the CLI's listings.
//! The schema is versioned (`PRAGMA user_version`) and migrated forward when opened.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use burrow_io::keys::PublicKey;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{
    AuditRecord, DeviceRecord, OperatorRecord, PasswordLogin, Principal, StoreError, Write,
    Written, now, sql,
};

mod alerts;
mod audit;
mod backup;
mod devices;
mod fleet;
mod health;
mod operators;
mod schema;
#[cfg(test)]
mod tests;
mod web;

pub use backup::{BackupReport, backup, restore};

/// The schema version this build writes; each step below brings a database one version up.
pub const SCHEMA_VERSION: i64 = 8;

/// The relay database.
pub struct Store {
    conn: Mutex<Connection>,
}

impl Store {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let conn = Connection::open(path).map_err(sql("opening the database"))?;
        Self::init(conn)
    }

    /// An in-memory database, for tests.
    pub fn open_in_memory() -> Result<Store, StoreError> {
        Self::init(Connection::open_in_memory().map_err(sql("opening the database"))?)
    }

    fn init(conn: Connection) -> Result<Store, StoreError> {
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(sql("setting the busy timeout"))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
        )
        .map_err(sql("configuring the database"))?;
        schema::migrate(&conn)?;
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    /// Runs `query` and maps each row.
    pub(crate) fn read_rows<T>(
        &self,
        query: &str,
        map: impl Fn(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>, StoreError> {
        self.with(|c| {
            let mut stmt = c.prepare(query).map_err(sql("reading rows"))?;
            stmt.query_map([], |r| map(r))
                .map_err(sql("reading rows"))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(sql("reading rows"))
        })
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut conn)
    }

    /// A counter that moves whenever the registry (devices, keys, operators, rules) changes,
    /// from any process.
    pub fn registry_version(&self) -> Result<i64, StoreError> {
        self.with(|c| {
            c.query_row("SELECT registry_version FROM meta", [], |r| r.get(0))
                .map_err(sql("reading the registry version"))
        })
    }

    /// Applies queued writes in one transaction (group commit); if the batch fails as a whole,
    /// each write is tried alone so that one bad write fails only itself.
    pub fn apply(&self, writes: &[&Write]) -> Vec<Result<Written, StoreError>> {
        match self.apply_together(writes) {
            Ok(done) => done.into_iter().map(Ok).collect(),
            Err(_) if writes.len() > 1 => writes
                .iter()
                .map(|w| {
                    self.apply_together(&[w])
                        .map(|mut r| r.pop().unwrap_or(Written::Done))
                })
                .collect(),
            Err(e) => vec![Err(e)],
        }
    }

    /// Applies writes in one transaction: all of them or none.
    pub fn apply_together(&self, writes: &[&Write]) -> Result<Vec<Written>, StoreError> {
        self.with(|c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql("writing a batch"))?;
            let mut out = Vec::with_capacity(writes.len());
            for w in writes {
                out.push(apply_one(&tx, w)?);
            }
            tx.commit().map_err(sql("writing a batch"))?;
            Ok(out)
        })
    }

    /// Whose key `fingerprint` is when `name` logs in with it: the device (pending approval or
    /// not, the key quarantined or not), the operator, or nobody (one query).
    pub fn key_owner(
        &self,
        name: &str,
        fingerprint: &str,
    ) -> Result<Option<Principal>, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT 'device', d.pending,
                        EXISTS (SELECT 1 FROM quarantine q WHERE q.device = k.device AND q.fingerprint = k.fingerprint)
                   FROM device_keys k JOIN devices d ON d.name = k.device
                  WHERE k.device = ?1 AND k.fingerprint = ?2
                 UNION ALL
                 SELECT 'operator', 0, 0 FROM operator_keys WHERE operator = ?1 AND fingerprint = ?2
                 LIMIT 1",
                params![name, fingerprint],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, bool>(1)?, r.get::<_, bool>(2)?)),
            )
            .optional()
            .map(|o| {
                o.map(|(kind, pending, quarantined)| {
                    if kind == "device" {
                        Principal::Device {
                            pending,
                            quarantined,
                        }
                    } else {
                        Principal::Operator
                    }
                })
            })
            .map_err(sql("checking a key"))
        })
    }

    /// Who holds the key `fingerprint`: `("device" | "operator", name)`, if anyone.
    pub fn key_holder(&self, fingerprint: &str) -> Result<Option<(String, String)>, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT 'device', device FROM device_keys WHERE fingerprint = ?1
                 UNION ALL
                 SELECT 'operator', operator FROM operator_keys WHERE fingerprint = ?1
                 LIMIT 1",
                [fingerprint],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(sql("looking up who holds a key"))
        })
    }

    /// Every (device, key fingerprint) pair, for checking all open sessions at once.
    pub fn device_key_pairs(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.with(|c| {
            let mut stmt = c
                .prepare_cached("SELECT device, fingerprint FROM device_keys")
                .map_err(sql("reading device keys"))?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(sql("reading device keys"))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(sql("reading device keys"))
        })
    }
}

fn device_exists(c: &Connection, name: &str) -> Result<bool, StoreError> {
    c.query_row("SELECT 1 FROM devices WHERE name = ?1", [name], |_| Ok(()))
        .optional()
        .map(|r| r.is_some())
        .map_err(sql("looking up a device"))
}

fn operator_exists(c: &Connection, name: &str) -> Result<bool, StoreError> {
    c.query_row(
        "SELECT 1 FROM operators WHERE name = ?1",
        [name],
        |_| Ok(()),
    )
    .optional()
    .map(|r| r.is_some())
    .map_err(sql("looking up an operator"))
}

fn operator_record(c: &Connection, name: &str) -> Result<Option<OperatorRecord>, StoreError> {
    let row = c
        .query_row(
            "SELECT password_hash IS NOT NULL, console_only, locked_until, role, totp_secret FROM operators WHERE name = ?1",
            [name],
            |r| {
                Ok((
                    r.get::<_, bool>(0)?,
                    r.get::<_, bool>(1)?,
                    r.get::<_, Option<i64>>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, Option<String>>(4)?,
                ))
            },
        )
        .optional()
        .map_err(sql("looking up an operator"))?;
    let Some((has_password, console_only, locked_until, role, totp_secret)) = row else {
        return Ok(None);
    };
    let locked_until = locked_until.filter(|t| *t > now());
    Ok(Some(OperatorRecord {
        name: name.to_string(),
        fingerprints: strings(
            c,
            "SELECT fingerprint FROM operator_keys WHERE operator = ?1 ORDER BY fingerprint",
            name,
        )?,
        has_password,
        allow: strings(
            c,
            "SELECT pattern FROM operator_allow WHERE operator = ?1 ORDER BY pattern",
            name,
        )?,
        console_only,
        locked_until,
        role: crate::store::Role::parse_stored(&role),
        totp: totp_secret.is_some(),
        totp_secret: totp_secret.map(burrow_proto::secret::Secret::new),
    }))
}

fn strings(c: &Connection, query: &str, arg: &str) -> Result<Vec<String>, StoreError> {
    let mut stmt = c.prepare_cached(query).map_err(sql("reading a list"))?;
    stmt.query_map([arg], |r| Ok(value_text(r.get(0)?)))
        .map_err(sql("reading a list"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(sql("reading a list"))
}

/// Rows of (owner, value) grouped by owner.
fn grouped(c: &Connection, query: &str) -> Result<HashMap<String, Vec<String>>, StoreError> {
    let mut stmt = c.prepare_cached(query).map_err(sql("reading a list"))?;
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    let rows = stmt
        .query_map([], |r| {
            let owner: String = r.get(0)?;
            let v: rusqlite::types::Value = r.get(1)?;
            Ok((owner, value_text(v)))
        })
        .map_err(sql("reading a list"))?;
    for row in rows {
        let (owner, v) = row.map_err(sql("reading a list"))?;
        out.entry(owner).or_default().push(v);
    }
    Ok(out)
}

fn value_text(v: rusqlite::types::Value) -> String {
    match v {
        rusqlite::types::Value::Integer(i) => i.to_string(),
        rusqlite::types::Value::Text(t) => t,
        _ => String::new(),
    }
}

/// One queued write inside the writer's transaction.
fn apply_one(c: &Connection, w: &Write) -> Result<Written, StoreError> {
    const AUDIT: &str = "INSERT INTO audit (at, event, who, target, outcome, detail, device, operator) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";
    match w {
        Write::Audit(r) | Write::AuditOpen(r) => {
            c.prepare_cached(AUDIT)
                .and_then(|mut s| {
                    s.execute(params![
                        r.at, r.event, r.who, r.target, r.outcome, r.detail, r.device, r.operator
                    ])
                })
                .map_err(sql("writing the audit log"))?;
            Ok(match w {
                Write::AuditOpen(_) => Written::Id(c.last_insert_rowid()),
                _ => Written::Done,
            })
        }
        Write::AuditComplete {
            id,
            outcome,
            detail,
        } => {
            c.prepare_cached("UPDATE audit SET outcome = ?2, detail = ?3 WHERE id = ?1")
                .and_then(|mut s| s.execute(params![id, outcome, detail]))
                .map_err(sql("completing an audit entry"))?;
            Ok(Written::Done)
        }
        Write::Online {
            device,
            peer,
            agent,
            ..
        } => {
            let now = now();
            health::online(c, device, agent, now).map_err(sql("recording a device online"))?;
            c.prepare_cached(
                "INSERT OR REPLACE INTO online (device, since, peer) VALUES (?1, ?2, ?3)",
            )
            .and_then(|mut s| s.execute(params![device, now, peer]))
            .and_then(|_| c.prepare_cached("DELETE FROM endpoints WHERE device = ?1"))
            .and_then(|mut s| s.execute([device]))
            .and_then(|_| c.prepare_cached("UPDATE devices SET last_seen = ?2 WHERE name = ?1"))
            .and_then(|mut s| s.execute(params![device, now]))
            .map_err(sql("recording a device online"))?;
            Ok(Written::Done)
        }
        Write::Offline {
            device,
            reason,
            detail,
            ..
        } => {
            health::offline(c, device, reason, detail, now())
                .map_err(sql("recording a device offline"))?;
            c.prepare_cached("DELETE FROM online WHERE device = ?1")
                .and_then(|mut s| s.execute([device]))
                .and_then(|_| c.prepare_cached("DELETE FROM endpoints WHERE device = ?1"))
                .and_then(|mut s| s.execute([device]))
                .and_then(|_| c.prepare_cached("UPDATE devices SET last_seen = ?2 WHERE name = ?1"))
                .and_then(|mut s| s.execute(params![device, now()]))
                .map_err(sql("recording a device offline"))?;
            Ok(Written::Done)
        }
        Write::Endpoint {
            device,
            port,
            present,
            ..
        } => {
            let q = if *present {
                "INSERT OR IGNORE INTO endpoints (device, port) VALUES (?1, ?2)"
            } else {
                "DELETE FROM endpoints WHERE device = ?1 AND port = ?2"
            };
            c.prepare_cached(q)
                .and_then(|mut s| s.execute(params![device, port]))
                .map_err(sql("recording an endpoint"))?;
            Ok(Written::Done)
        }
        Write::AuditCheckpoint { id, detail } => {
            c.prepare_cached("UPDATE audit SET detail = ?2 WHERE id = ?1 AND outcome = 'open'")
                .and_then(|mut s| s.execute(params![id, detail]))
                .map_err(sql("checkpointing an audit entry"))?;
            Ok(Written::Done)
        }
        Write::Checkpoint { at } => {
            c.prepare_cached("UPDATE meta SET checkpoint = ?1")
                .and_then(|mut s| s.execute([at]))
                .map_err(sql("checkpointing"))?;
            Ok(Written::Done)
        }
        Write::LockOperator { name, until } => {
            c.prepare_cached("UPDATE operators SET locked_until = ?2 WHERE name = ?1")
                .and_then(|mut s| s.execute(params![name, until]))
                .map_err(sql("locking an operator"))?;
            Ok(Written::Done)
        }
        Write::InterruptLeftovers => Ok(Written::Rows(audit::interrupt_leftovers(c)?)),
        Write::Probe { .. } | Write::Health { .. } => {
            health::apply(c, w).map_err(sql("recording device health"))?;
            Ok(Written::Done)
        }
        Write::Barrier => Ok(Written::Done),
    }
}

fn insert_keys(
    tx: &Connection,
    table: &'static str,
    owner_col: &'static str,
    owner: &str,
    keys: &[PublicKey],
) -> Result<(), StoreError> {
    for key in keys {
        let fingerprint = burrow_io::keys::fingerprint(key);
        let holder = tx
            .query_row(
                "SELECT 'device', device FROM device_keys
                   WHERE fingerprint = ?1 AND NOT (?2 = 'device' AND device = ?3)
                 UNION ALL
                 SELECT 'operator', operator FROM operator_keys
                   WHERE fingerprint = ?1 AND NOT (?2 = 'operator' AND operator = ?3)
                 LIMIT 1",
                params![fingerprint, owner_col, owner],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
            )
            .optional()
            .map_err(sql("checking who holds a key"))?;
        if let Some((kind, name)) = holder {
            return Err(super::key_held(
                &fingerprint,
                &kind,
                &name,
                owner_col,
                owner,
            ));
        }
    }
    insert_key_rows(tx, table, owner_col, owner, keys)
}

/// Inserts key rows without asking who else holds them: only for a bench's simulated fleet.
fn insert_key_rows(
    tx: &Connection,
    table: &'static str,
    owner_col: &'static str,
    owner: &str,
    keys: &[PublicKey],
) -> Result<(), StoreError> {
    let q = format!(
        "INSERT OR IGNORE INTO {table} ({owner_col}, fingerprint, key) VALUES (?1, ?2, ?3)"
    );
    for key in keys {
        tx.execute(
            &q,
            params![
                owner,
                burrow_io::keys::fingerprint(key),
                burrow_io::keys::public_key_line(key)
            ],
        )
        .map_err(sql("adding a key"))?;
    }
    Ok(())
}
