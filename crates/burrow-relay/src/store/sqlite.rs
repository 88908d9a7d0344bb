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

/// The schema version this build writes; each step below brings a database one version up.
pub const SCHEMA_VERSION: i64 = 2;

/// Version 2: a counter of registry changes kept by triggers (the relay rereads policy when it
/// moves, rather than on every write to the audit table).
const REGISTRY_VERSION: &str = "
CREATE TABLE IF NOT EXISTS meta (one INTEGER PRIMARY KEY CHECK (one = 1), registry_version INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (one, registry_version) VALUES (1, 0);
";

/// The tables whose changes revoke or narrow what open sessions may do.
const REGISTRY_TABLES: [&str; 7] = [
    "devices",
    "device_keys",
    "device_allow_connect",
    "device_allow_listen",
    "operators",
    "operator_keys",
    "operator_allow",
];

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS devices (
    name TEXT PRIMARY KEY,
    created INTEGER NOT NULL,
    last_seen INTEGER
);
CREATE TABLE IF NOT EXISTS device_keys (
    device TEXT NOT NULL REFERENCES devices(name) ON DELETE CASCADE,
    fingerprint TEXT NOT NULL,
    key TEXT NOT NULL,
    PRIMARY KEY (device, fingerprint)
);
CREATE TABLE IF NOT EXISTS device_allow_connect (
    device TEXT NOT NULL REFERENCES devices(name) ON DELETE CASCADE,
    host TEXT NOT NULL,
    port INTEGER NOT NULL,
    PRIMARY KEY (device, host, port)
);
CREATE TABLE IF NOT EXISTS device_allow_listen (
    device TEXT NOT NULL REFERENCES devices(name) ON DELETE CASCADE,
    addr TEXT NOT NULL,
    port INTEGER NOT NULL,
    PRIMARY KEY (addr, port)
);
CREATE TABLE IF NOT EXISTS operators (
    name TEXT PRIMARY KEY,
    password_hash TEXT,
    console_only INTEGER NOT NULL DEFAULT 0,
    created INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS operator_keys (
    operator TEXT NOT NULL REFERENCES operators(name) ON DELETE CASCADE,
    fingerprint TEXT NOT NULL,
    key TEXT NOT NULL,
    PRIMARY KEY (operator, fingerprint)
);
CREATE TABLE IF NOT EXISTS operator_allow (
    operator TEXT NOT NULL REFERENCES operators(name) ON DELETE CASCADE,
    pattern TEXT NOT NULL,
    PRIMARY KEY (operator, pattern)
);
CREATE TABLE IF NOT EXISTS online (
    device TEXT PRIMARY KEY,
    since INTEGER NOT NULL,
    peer TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS endpoints (
    device TEXT NOT NULL,
    port INTEGER NOT NULL,
    PRIMARY KEY (device, port)
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY,
    at INTEGER NOT NULL,
    event TEXT NOT NULL,
    who TEXT NOT NULL,
    target TEXT NOT NULL,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL
);
";

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
        migrate(&conn)?;
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
        let whole = self.with(|c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql("writing a batch"))?;
            let mut out = Vec::with_capacity(writes.len());
            for w in writes {
                out.push(apply_one(&tx, w)?);
            }
            tx.commit().map_err(sql("writing a batch"))?;
            Ok(out)
        });
        match whole {
            Ok(done) => done.into_iter().map(Ok).collect(),
            Err(_) if writes.len() > 1 => writes
                .iter()
                .map(|w| {
                    self.with(|c| {
                        let tx = c
                            .transaction_with_behavior(TransactionBehavior::Immediate)
                            .map_err(sql("writing"))?;
                        let r = apply_one(&tx, w)?;
                        tx.commit().map_err(sql("writing"))?;
                        Ok(r)
                    })
                })
                .collect(),
            Err(e) => vec![Err(e)],
        }
    }

    /// Whose key `fingerprint` is when `name` logs in with it: the device, the operator, or
    /// nobody (one query).
    pub fn key_owner(
        &self,
        name: &str,
        fingerprint: &str,
    ) -> Result<Option<Principal>, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT 'device' FROM device_keys WHERE device = ?1 AND fingerprint = ?2
                 UNION ALL
                 SELECT 'operator' FROM operator_keys WHERE operator = ?1 AND fingerprint = ?2
                 LIMIT 1",
                params![name, fingerprint],
                |r| r.get::<_, String>(0),
            )
            .optional()
            .map(|o| {
                o.map(|kind| {
                    if kind == "device" {
                        Principal::Device
                    } else {
                        Principal::Operator
                    }
                })
            })
            .map_err(sql("checking a key"))
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

    // ----- devices -----

    /// Adds a device with its first keys.
    pub fn add_device(&self, name: &str, keys: &[PublicKey]) -> Result<(), StoreError> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sql("adding a device"))?;
            if operator_exists(&tx, name)? {
                return Err(StoreError::Conflict(format!(
                    "{name:?} is already an operator name; devices and operators share one namespace"
                )));
            }
            let inserted = tx
                .execute(
                    "INSERT OR IGNORE INTO devices (name, created) VALUES (?1, ?2)",
                    params![name, now()],
                )
                .map_err(sql("adding a device"))?;
            if inserted == 0 {
                return Err(StoreError::Conflict(format!(
                    "device {name:?} already exists; add another key with `burrow relay device add-key {name} --pubkey FILE`"
                )));
            }
            insert_keys(&tx, "device_keys", "device", name, keys)?;
            tx.commit().map_err(sql("adding a device"))
        })
    }

    /// Adds many devices with the same keys in one transaction (loading a fleet for the
    /// bench, or an import); names that exist already are left as they are.
    pub fn add_devices_bulk(&self, names: &[String], keys: &[PublicKey]) -> Result<(), StoreError> {
        self.with(|c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql("adding devices"))?;
            for name in names {
                tx.prepare_cached("INSERT OR IGNORE INTO devices (name, created) VALUES (?1, ?2)")
                    .and_then(|mut s| s.execute(params![name, now()]))
                    .map_err(sql("adding devices"))?;
                insert_keys(&tx, "device_keys", "device", name, keys)?;
            }
            tx.commit().map_err(sql("adding devices"))
        })
    }

    /// Adds keys to an existing device.
    pub fn add_device_keys(&self, name: &str, keys: &[PublicKey]) -> Result<(), StoreError> {
        self.with(|c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql("adding a device key"))?;
            if !device_exists(&tx, name)? {
                return Err(StoreError::NoDevice(name.into()));
            }
            insert_keys(&tx, "device_keys", "device", name, keys)?;
            tx.commit().map_err(sql("adding a device key"))
        })
    }

    /// Removes a device and everything it owns.
    pub fn remove_device(&self, name: &str) -> Result<(), StoreError> {
        self.with(|c| {
            let n = c
                .execute("DELETE FROM devices WHERE name = ?1", [name])
                .map_err(sql("removing a device"))?;
            if n == 0 {
                return Err(StoreError::NoDevice(name.into()));
            }
            Ok(())
        })
    }

    /// Removes one key of a device (by its `SHA256:` fingerprint); an online session that
    /// authenticated with it is cut. The last key is kept: remove the device instead.
    pub fn remove_device_key(&self, name: &str, fingerprint: &str) -> Result<(), StoreError> {
        self.with(|c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql("removing a device key"))?;
            if !device_exists(&tx, name)? {
                return Err(StoreError::NoDevice(name.into()));
            }
            let keys: Vec<String> = {
                let mut stmt = tx
                    .prepare("SELECT fingerprint FROM device_keys WHERE device = ?1")
                    .map_err(sql("removing a device key"))?;
                stmt.query_map([name], |r| r.get(0))
                    .map_err(sql("removing a device key"))?
                    .collect::<Result<_, _>>()
                    .map_err(sql("removing a device key"))?
            };
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
                "DELETE FROM device_keys WHERE device = ?1 AND fingerprint = ?2",
                params![name, fingerprint],
            )
            .map_err(sql("removing a device key"))?;
            tx.commit().map_err(sql("removing a device key"))
        })
    }

    /// Removes an `allow-connect` rule; false if there was none.
    pub fn disallow_connect(
        &self,
        device: &str,
        host: &str,
        port: u16,
    ) -> Result<bool, StoreError> {
        self.with(|c| {
            if !device_exists(c, device)? {
                return Err(StoreError::NoDevice(device.into()));
            }
            c.execute(
                "DELETE FROM device_allow_connect WHERE device = ?1 AND host = ?2 AND port = ?3",
                params![device, host, port],
            )
            .map(|n| n > 0)
            .map_err(sql("removing an allow-connect rule"))
        })
    }

    /// Removes an `allow-listen` rule; false if there was none.
    pub fn disallow_listen(&self, device: &str, addr: &str, port: u16) -> Result<bool, StoreError> {
        self.with(|c| {
            if !device_exists(c, device)? {
                return Err(StoreError::NoDevice(device.into()));
            }
            c.execute(
                "DELETE FROM device_allow_listen WHERE device = ?1 AND addr = ?2 AND port = ?3",
                params![device, addr, port],
            )
            .map(|n| n > 0)
            .map_err(sql("removing an allow-listen rule"))
        })
    }

    /// Whether `key` is one of `device`'s keys.
    pub fn device_has_key(&self, device: &str, fingerprint: &str) -> Result<bool, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT 1 FROM device_keys WHERE device = ?1 AND fingerprint = ?2",
                params![device, fingerprint],
                |_| Ok(()),
            )
            .optional()
            .map(|r| r.is_some())
            .map_err(sql("checking a device key"))
        })
    }

    /// Whether a device of this name exists.
    pub fn device_exists(&self, name: &str) -> Result<bool, StoreError> {
        self.with(|c| device_exists(c, name))
    }

    /// Lets `device` open `host:port` on the relay side.
    pub fn allow_connect(&self, device: &str, host: &str, port: u16) -> Result<(), StoreError> {
        self.with(|c| {
            if !device_exists(c, device)? {
                return Err(StoreError::NoDevice(device.into()));
            }
            c.execute(
                "INSERT OR IGNORE INTO device_allow_connect (device, host, port) VALUES (?1, ?2, ?3)",
                params![device, host, port],
            )
            .map_err(sql("adding an allow-connect rule"))?;
            Ok(())
        })
    }

    /// Whether `device` may open `host:port`.
    pub fn may_connect(&self, device: &str, host: &str, port: u16) -> Result<bool, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT 1 FROM device_allow_connect WHERE device = ?1 AND host = ?2 AND port = ?3",
                params![device, host, port],
                |_| Ok(()),
            )
            .optional()
            .map(|r| r.is_some())
            .map_err(sql("checking an allow-connect rule"))
        })
    }

    /// Lets `device` hold a real listener on `addr:port`.
    pub fn allow_listen(&self, device: &str, addr: &str, port: u16) -> Result<(), StoreError> {
        self.with(|c| {
            if !device_exists(c, device)? {
                return Err(StoreError::NoDevice(device.into()));
            }
            let owner: Option<String> = c
                .query_row(
                    "SELECT device FROM device_allow_listen WHERE port = ?1 AND (addr = ?2 OR addr = '0.0.0.0' OR ?2 = '0.0.0.0')",
                    params![port, addr],
                    |r| r.get(0),
                )
                .optional()
                .map_err(sql("checking allow-listen rules"))?;
            match owner {
                Some(o) if o == device => Ok(()),
                Some(o) => Err(StoreError::Conflict(format!(
                    "port {port} is already allowed for device {o:?}; one listening port belongs to one device"
                ))),
                None => {
                    c.execute(
                        "INSERT INTO device_allow_listen (device, addr, port) VALUES (?1, ?2, ?3)",
                        params![device, addr, port],
                    )
                    .map_err(sql("adding an allow-listen rule"))?;
                    Ok(())
                }
            }
        })
    }

    /// The listen address allowed for `device` on `port`, if any.
    pub fn listen_addr(&self, device: &str, port: u16) -> Result<Option<String>, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT addr FROM device_allow_listen WHERE device = ?1 AND port = ?2",
                params![device, port],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql("reading allow-listen rules"))
        })
    }

    /// All devices, sorted by name: five queries however many devices there are.
    pub fn devices(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        self.with(|c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT d.name, d.last_seen, o.device IS NOT NULL FROM devices d
                     LEFT JOIN online o ON o.device = d.name ORDER BY d.name",
                )
                .map_err(sql("listing devices"))?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, Option<i64>>(1)?, r.get::<_, bool>(2)?))
                })
                .map_err(sql("listing devices"))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(sql("listing devices"))?;
            let mut keys = grouped(c, "SELECT device, fingerprint FROM device_keys ORDER BY device, fingerprint")?;
            let mut endpoints = grouped(c, "SELECT device, port FROM endpoints ORDER BY device, port")?;
            let mut connect = grouped(c, "SELECT device, host || ':' || port FROM device_allow_connect ORDER BY device, host, port")?;
            let mut listen = grouped(c, "SELECT device, addr || ':' || port FROM device_allow_listen ORDER BY device, port")?;
            let now = now();
            Ok(rows
                .into_iter()
                .map(|(name, last_seen, online)| DeviceRecord {
                    // An online device is seen now, not when its session started.
                    last_seen: if online { Some(now) } else { last_seen },
                    online,
                    fingerprints: keys.remove(&name).unwrap_or_default(),
                    endpoints: endpoints
                        .remove(&name)
                        .unwrap_or_default()
                        .iter()
                        .filter_map(|p| p.parse().ok())
                        .collect(),
                    allow_connect: connect.remove(&name).unwrap_or_default(),
                    allow_listen: listen.remove(&name).unwrap_or_default(),
                    relay: None,
                    name,
                })
                .collect())
        })
    }

    /// Last time `device` connected or disconnected.
    pub fn last_seen(&self, device: &str) -> Result<Option<i64>, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT last_seen FROM devices WHERE name = ?1",
                [device],
                |r| r.get::<_, Option<i64>>(0),
            )
            .optional()
            .map(Option::flatten)
            .map_err(sql("reading last seen"))
        })
    }

    // ----- online mirror -----

    /// Records that `device` came online from `peer`.
    pub fn set_online(&self, device: &str, peer: &str) -> Result<(), StoreError> {
        self.apply_single(&Write::Online {
            device: device.into(),
            peer: peer.into(),
            session: 0,
            instance: String::new(),
        })
        .map(|_| ())
    }

    /// Records that `device` went offline.
    pub fn set_offline(&self, device: &str) -> Result<(), StoreError> {
        self.apply_single(&Write::Offline {
            device: device.into(),
            session: 0,
        })
        .map(|_| ())
    }

    /// Mirrors an endpoint added or removed.
    pub fn set_endpoint(&self, device: &str, port: u16, present: bool) -> Result<(), StoreError> {
        self.apply_single(&Write::Endpoint {
            device: device.into(),
            port,
            bind: String::new(),
            present,
        })
        .map(|_| ())
    }

    // ----- operators -----

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
                    "SELECT name, password_hash IS NOT NULL, console_only, locked_until FROM operators ORDER BY name",
                )
                .map_err(sql("listing operators"))?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, bool>(1)?,
                        r.get::<_, bool>(2)?,
                        r.get::<_, Option<i64>>(3)?,
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
                .map(|(name, has_password, console_only, locked_until)| OperatorRecord {
                    fingerprints: keys.remove(&name).unwrap_or_default(),
                    allow: allow.remove(&name).unwrap_or_default(),
                    has_password,
                    console_only,
                    locked_until: locked_until.filter(|t| *t > now),
                    name,
                })
                .collect())
        })
    }

    // ----- audit -----

    /// Appends an audit entry.
    pub fn audit(&self, record: &AuditRecord) -> Result<(), StoreError> {
        self.apply_single(&Write::Audit(record.clone())).map(|_| ())
    }

    /// Appends an audit entry and returns its row id (to complete it later).
    pub fn audit_insert(&self, record: &AuditRecord) -> Result<i64, StoreError> {
        match self.apply_single(&Write::AuditOpen(record.clone()))? {
            Written::Id(id) => Ok(id),
            Written::Done => Ok(0),
        }
    }

    /// Completes an audit entry written by [`Store::audit_insert`].
    pub fn audit_complete(&self, id: i64, outcome: &str, detail: &str) -> Result<(), StoreError> {
        self.apply_single(&Write::AuditComplete {
            id,
            outcome: outcome.into(),
            detail: detail.into(),
        })
        .map(|_| ())
    }

    fn apply_single(&self, w: &Write) -> Result<Written, StoreError> {
        self.apply(&[w]).pop().unwrap_or(Ok(Written::Done))
    }

    /// At start: what the previous run left open (streams, device sessions) is marked
    /// interrupted, with the time of that run's last audit entry. Returns how many rows.
    pub fn interrupt_leftovers(&self) -> Result<usize, StoreError> {
        self.with(|c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql("marking interrupted audit entries"))?;
            let last: i64 = tx
                .query_row("SELECT COALESCE(MAX(at), 0) FROM audit", [], |r| r.get(0))
                .map_err(sql("marking interrupted audit entries"))?;
            let streams = tx
                .execute(
                    "UPDATE audit SET outcome = 'interrupted',
                     detail = detail || '; the relay stopped before it ended' WHERE outcome = 'open'",
                    [],
                )
                .map_err(sql("marking interrupted audit entries"))?;
            let sessions = tx
                .execute(
                    "INSERT INTO audit (at, event, who, target, outcome, detail)
                     SELECT ?1, 'offline', device, peer, 'interrupted',
                            'the relay stopped while the device session was up'
                     FROM online",
                    [last],
                )
                .map_err(sql("marking interrupted audit entries"))?;
            tx.execute_batch("DELETE FROM online; DELETE FROM endpoints;")
                .map_err(sql("clearing the online table"))?;
            tx.commit().map_err(sql("marking interrupted audit entries"))?;
            Ok(streams + sessions)
        })
    }

    /// Deletes audit entries older than `before` (seconds since the epoch) and all but the
    /// newest `max_rows`; rows of streams still open are kept. Returns how many were deleted.
    pub fn prune_audit(&self, before: i64, max_rows: u64) -> Result<usize, StoreError> {
        self.with(|c| {
            let old = c
                .execute(
                    "DELETE FROM audit WHERE at < ?1 AND outcome != 'open'",
                    [before],
                )
                .map_err(sql("pruning the audit log"))?;
            let excess = c
                .execute(
                    "DELETE FROM audit WHERE outcome != 'open' AND id <= (
                         SELECT id FROM audit ORDER BY id DESC LIMIT 1 OFFSET ?1)",
                    [i64::try_from(max_rows).unwrap_or(i64::MAX)],
                )
                .map_err(sql("pruning the audit log"))?;
            Ok(old + excess)
        })
    }

    /// Number of audit entries.
    pub fn audit_len(&self) -> Result<u64, StoreError> {
        self.with(|c| {
            c.query_row("SELECT COUNT(*) FROM audit", [], |r| r.get::<_, i64>(0))
                .map(|n| n.max(0) as u64)
                .map_err(sql("counting audit entries"))
        })
    }

    /// The most recent `limit` audit entries, oldest first.
    pub fn audit_tail(&self, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        self.with(|c| {
            let mut stmt = c
                .prepare(
                    "SELECT at, event, who, target, outcome, detail FROM
                     (SELECT * FROM audit ORDER BY id DESC LIMIT ?1) ORDER BY id",
                )
                .map_err(sql("reading the audit log"))?;
            stmt.query_map([limit as i64], |r| {
                Ok(AuditRecord {
                    at: r.get(0)?,
                    event: r.get(1)?,
                    who: r.get(2)?,
                    target: r.get(3)?,
                    outcome: r.get(4)?,
                    detail: r.get(5)?,
                })
            })
            .map_err(sql("reading the audit log"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(sql("reading the audit log"))
        })
    }
}

/// Brings the schema to [`SCHEMA_VERSION`], one version at a time, each in a transaction.
/// Version 0 is a new file or one made before versions were counted.
fn migrate(c: &Connection) -> Result<(), StoreError> {
    let version: i64 = c
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(sql("reading the schema version"))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::Schema(format!(
            "the database is at schema version {version}, newer than this burrow knows ({SCHEMA_VERSION}): run a newer burrow"
        )));
    }
    for to in (version + 1)..=SCHEMA_VERSION {
        c.execute_batch("BEGIN IMMEDIATE")
            .map_err(sql("migrating the schema"))?;
        let step = match to {
            1 => schema_v1(c),
            _ => registry_version_v2(c),
        };
        let done = step.and_then(|()| {
            c.execute_batch(&format!("PRAGMA user_version = {to}; COMMIT"))
                .map_err(sql("migrating the schema"))
        });
        if let Err(e) = done {
            let _ = c.execute_batch("ROLLBACK");
            return Err(e);
        }
    }
    Ok(())
}

/// The first schema, and the lock column added before versions were counted.
fn schema_v1(c: &Connection) -> Result<(), StoreError> {
    c.execute_batch(SCHEMA)
        .map_err(sql("creating the schema"))?;
    let has_lock: bool = c
        .query_row(
            "SELECT COUNT(*) FROM pragma_table_info('operators') WHERE name = 'locked_until'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n > 0)
        .map_err(sql("checking the schema"))?;
    if !has_lock {
        c.execute_batch("ALTER TABLE operators ADD COLUMN locked_until INTEGER")
            .map_err(sql("adding operators.locked_until"))?;
    }
    Ok(())
}

fn registry_version_v2(c: &Connection) -> Result<(), StoreError> {
    c.execute_batch(REGISTRY_VERSION)
        .map_err(sql("adding the registry version"))?;
    for table in REGISTRY_TABLES {
        for op in ["INSERT", "UPDATE", "DELETE"] {
            // A password lock is not a policy change: it does not move the version.
            let when = if table == "operators" && op == "UPDATE" {
                " WHEN OLD.locked_until IS NEW.locked_until"
            } else {
                ""
            };
            c.execute_batch(&format!(
                "CREATE TRIGGER IF NOT EXISTS {table}_{op}_version AFTER {op} ON {table}{when}
                 BEGIN UPDATE meta SET registry_version = registry_version + 1; END;",
                op = op.to_lowercase()
            ))
            .map_err(sql("adding the registry version"))?;
        }
    }
    Ok(())
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
            "SELECT password_hash IS NOT NULL, console_only, locked_until FROM operators WHERE name = ?1",
            [name],
            |r| {
                Ok((
                    r.get::<_, bool>(0)?,
                    r.get::<_, bool>(1)?,
                    r.get::<_, Option<i64>>(2)?,
                ))
            },
        )
        .optional()
        .map_err(sql("looking up an operator"))?;
    let Some((has_password, console_only, locked_until)) = row else {
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
    const AUDIT: &str = "INSERT INTO audit (at, event, who, target, outcome, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
    match w {
        Write::Audit(r) | Write::AuditOpen(r) => {
            c.prepare_cached(AUDIT)
                .and_then(|mut s| {
                    s.execute(params![r.at, r.event, r.who, r.target, r.outcome, r.detail])
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
        Write::Online { device, peer, .. } => {
            let now = now();
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
        Write::Offline { device, .. } => {
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
        Write::LockOperator { name, until } => {
            c.prepare_cached("UPDATE operators SET locked_until = ?2 WHERE name = ?1")
                .and_then(|mut s| s.execute(params![name, until]))
                .map_err(sql("locking an operator"))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use burrow_io::keys::{fingerprint, generate_ed25519};

    fn row(at: i64, outcome: &str) -> AuditRecord {
        AuditRecord {
            at,
            event: "stream".into(),
            who: "alice".into(),
            target: "pi:22".into(),
            outcome: outcome.into(),
            detail: String::new(),
        }
    }

    #[test]
    fn audit_retention_by_age_and_rows_keeps_open_streams() {
        let s = Store::open_in_memory().unwrap();
        s.audit(&row(10, "open")).unwrap();
        for at in 0..20 {
            s.audit(&row(at, "ok")).unwrap();
        }
        // Older than 5: 5 rows go (the open one stays).
        assert_eq!(s.prune_audit(5, 1000).unwrap(), 5);
        assert_eq!(s.audit_len().unwrap(), 16);
        // At most 10 rows: the oldest go, the open one stays whatever its age.
        s.prune_audit(0, 10).unwrap();
        let left = s.audit_tail(100).unwrap();
        assert!(left.iter().any(|r| r.outcome == "open"));
        assert!(left.len() <= 11, "{}", left.len());
        assert_eq!(left.last().unwrap().at, 19);
    }

    #[test]
    fn devices_operators_and_policy() {
        let s = Store::open_in_memory().unwrap();
        let k1 = generate_ed25519().public_key().clone();
        let k2 = generate_ed25519().public_key().clone();
        s.add_device("pi", std::slice::from_ref(&k1)).unwrap();
        assert!(matches!(
            s.add_device("pi", &[]),
            Err(StoreError::Conflict(_))
        ));
        s.add_device_keys("pi", std::slice::from_ref(&k2)).unwrap();
        assert!(s.device_has_key("pi", &fingerprint(&k2)).unwrap());
        assert!(!s.device_has_key("other", &fingerprint(&k2)).unwrap());
        assert!(matches!(
            s.add_device_keys("nope", &[]),
            Err(StoreError::NoDevice(_))
        ));

        s.allow_connect("pi", "localhost", 1883).unwrap();
        assert!(s.may_connect("pi", "localhost", 1883).unwrap());
        assert!(!s.may_connect("pi", "localhost", 1884).unwrap());

        s.add_device("cam", &[]).unwrap();
        s.allow_listen("pi", "127.0.0.1", 8080).unwrap();
        assert!(matches!(
            s.allow_listen("cam", "0.0.0.0", 8080),
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(
            s.listen_addr("pi", 8080).unwrap().as_deref(),
            Some("127.0.0.1")
        );

        assert!(matches!(
            s.add_operator("pi", &[], None, &[], false),
            Err(StoreError::Conflict(_))
        ));
        s.add_operator(
            "alice",
            std::slice::from_ref(&k1),
            Some("hash"),
            &["pi*".into()],
            true,
        )
        .unwrap();
        let alice = s.operator("alice").unwrap().unwrap();
        assert!(alice.has_password && alice.console_only);
        assert_eq!(alice.allow, ["pi*"]);
        assert!(s.operator_has_key("alice", &fingerprint(&k1)).unwrap());

        s.set_online("pi", "127.0.0.1:5555").unwrap();
        s.set_endpoint("pi", 22, true).unwrap();
        let pi = s
            .devices()
            .unwrap()
            .into_iter()
            .find(|d| d.name == "pi")
            .unwrap();
        assert!(pi.online);
        assert_eq!(pi.endpoints, [22]);
        assert_eq!(pi.fingerprints.len(), 2);
        assert_eq!(pi.allow_connect, ["localhost:1883"]);
        s.set_offline("pi").unwrap();
        assert!(s.last_seen("pi").unwrap().is_some());

        s.remove_device("pi").unwrap();
        assert!(!s.device_has_key("pi", &fingerprint(&k1)).unwrap());
        assert!(!s.may_connect("pi", "localhost", 1883).unwrap());
        assert!(matches!(
            s.remove_device("pi"),
            Err(StoreError::NoDevice(_))
        ));
    }

    #[test]
    fn audit_tail_is_ordered() {
        let s = Store::open_in_memory().unwrap();
        for i in 0..5 {
            s.audit(&AuditRecord {
                at: i,
                event: "auth".into(),
                who: format!("d{i}"),
                target: String::new(),
                outcome: "ok".into(),
                detail: String::new(),
            })
            .unwrap();
        }
        let tail = s.audit_tail(2).unwrap();
        assert_eq!(tail.iter().map(|r| r.at).collect::<Vec<_>>(), [3, 4]);
    }
}
