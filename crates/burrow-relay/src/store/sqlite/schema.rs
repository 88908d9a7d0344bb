//! The schema, versioned with `PRAGMA user_version` and migrated forward one version at a
//! time when a database is opened.

use super::*;

/// Version 2: a counter of registry changes kept by triggers (the relay rereads policy when it
/// moves, rather than on every write to the audit table).
const REGISTRY_VERSION: &str = "
CREATE TABLE IF NOT EXISTS meta (one INTEGER PRIMARY KEY CHECK (one = 1), registry_version INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (one, registry_version) VALUES (1, 0);
";

/// Version 4: the fleet. Devices wait for approval and carry labels; join tokens (the secret
/// stored as its hash); keys seen from two places at once; each relay's public address and host
/// key, for join strings.
const FLEET: &str = "
ALTER TABLE devices ADD COLUMN pending INTEGER NOT NULL DEFAULT 0;
CREATE TABLE device_labels (
    device TEXT NOT NULL REFERENCES devices(name) ON DELETE CASCADE,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (device, key)
);
CREATE INDEX device_labels_by_value ON device_labels (key, value);
CREATE TABLE quarantine (
    device TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    since INTEGER NOT NULL,
    detail TEXT NOT NULL,
    kept_relay TEXT NOT NULL DEFAULT '',
    kept_session INTEGER NOT NULL DEFAULT 0,
    kept_instance TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (device, fingerprint),
    FOREIGN KEY (device, fingerprint) REFERENCES device_keys (device, fingerprint) ON DELETE CASCADE
);
CREATE TABLE tokens (
    id TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL,
    created INTEGER NOT NULL,
    created_by TEXT NOT NULL,
    expires INTEGER NOT NULL,
    max_uses INTEGER,
    uses INTEGER NOT NULL DEFAULT 0,
    name_pattern TEXT NOT NULL,
    labels TEXT NOT NULL DEFAULT '',
    approve INTEGER NOT NULL DEFAULT 0,
    replaces TEXT,
    last_used_by TEXT,
    last_used INTEGER,
    revoked INTEGER
);
CREATE TABLE relay_addresses (
    relay TEXT PRIMARY KEY,
    address TEXT NOT NULL,
    host_key TEXT NOT NULL,
    updated INTEGER NOT NULL
);
";

/// Tables added by version 4 whose changes reach open sessions (labels narrow or widen operator
/// policy; a quarantine cuts a second session).
const FLEET_REGISTRY_TABLES: [&str; 2] = ["device_labels", "quarantine"];

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

/// Brings the schema to [`SCHEMA_VERSION`], one version at a time, each in a transaction.
/// Version 0 is a new file or one made before versions were counted.
pub(super) fn migrate(c: &Connection) -> Result<(), StoreError> {
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
            2 => registry_version_v2(c),
            3 => checkpoint_v3(c),
            4 => fleet_v4(c),
            5 => health_v5(c),
            6 => audit_query_v6(c),
            7 => last_seen_v7(c),
            _ => web_v8(c),
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

/// Version 3: when the relay was last known alive, which bounds what a crash left open.
fn checkpoint_v3(c: &Connection) -> Result<(), StoreError> {
    c.execute_batch("ALTER TABLE meta ADD COLUMN checkpoint INTEGER NOT NULL DEFAULT 0")
        .map_err(sql("adding the checkpoint"))
}

/// Version 5: device health (how sessions ended, probes, reports), reconnects of the last
/// day, the audit by device (for `device show`), and alerts.
fn health_v5(c: &Connection) -> Result<(), StoreError> {
    c.execute_batch(super::health::HEALTH_SCHEMA)
        .map_err(sql("adding device health"))?;
    c.execute_batch(super::alerts::ALERTS_SCHEMA)
        .map_err(sql("adding alerts"))
}

/// Version 6: each audit entry's device and operator, filled in for the entries already
/// there, and an index for each filter of `relay audit` (each one ends with the row id, so a
/// filter walks its index newest first and stops at the limit).
fn audit_query_v6(c: &Connection) -> Result<(), StoreError> {
    c.execute_batch(&format!(
        "ALTER TABLE audit ADD COLUMN device TEXT;
         ALTER TABLE audit ADD COLUMN operator TEXT;
         {};
         CREATE INDEX audit_at ON audit (at);
         CREATE INDEX audit_device ON audit (device, at) WHERE device IS NOT NULL;
         CREATE INDEX audit_operator ON audit (operator, at) WHERE operator IS NOT NULL;
         CREATE INDEX audit_event ON audit (event, at);",
        crate::audit_subject::backfill_sql("instr")
    ))
    .map_err(sql("adding the audit indexes"))
}

/// Version 8: operators' roles (viewer, operator, admin) and TOTP secrets, for the web console
/// and second-factor SSH logins; the web console's logins.
fn web_v8(c: &Connection) -> Result<(), StoreError> {
    c.execute_batch(
        "ALTER TABLE operators ADD COLUMN role TEXT NOT NULL DEFAULT 'operator';
         ALTER TABLE operators ADD COLUMN totp_secret TEXT;",
    )
    .map_err(sql("adding operators.role and operators.totp_secret"))?;
    c.execute_batch(crate::store::web::WEB_SCHEMA)
        .map_err(sql("adding web console logins"))
}

fn registry_version_v2(c: &Connection) -> Result<(), StoreError> {
    c.execute_batch(REGISTRY_VERSION)
        .map_err(sql("adding the registry version"))?;
    for table in crate::store::REGISTRY_TABLES {
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

/// Version 7: a device's connect or disconnect (an update of `last_seen` alone) does not move
/// the registry version, which made the relay re-check every open session against the whole
/// registry after each one. Updates count when they name any other column.
fn last_seen_v7(c: &Connection) -> Result<(), StoreError> {
    c.execute_batch(&format!(
        "DROP TRIGGER IF EXISTS devices_update_version;
         CREATE TRIGGER devices_update_version AFTER UPDATE OF {} ON devices
         BEGIN UPDATE meta SET registry_version = registry_version + 1; END;",
        crate::store::DEVICE_COLUMNS_THAT_COUNT.join(", ")
    ))
    .map_err(sql("keeping last seen out of the registry version"))
}

fn fleet_v4(c: &Connection) -> Result<(), StoreError> {
    c.execute_batch(FLEET)
        .map_err(sql("adding the fleet tables"))?;
    for table in FLEET_REGISTRY_TABLES {
        for op in ["INSERT", "UPDATE", "DELETE"] {
            c.execute_batch(&format!(
                "CREATE TRIGGER IF NOT EXISTS {table}_{op}_version AFTER {op} ON {table}
                 BEGIN UPDATE meta SET registry_version = registry_version + 1; END;",
                op = op.to_lowercase()
            ))
            .map_err(sql("adding the fleet tables"))?;
        }
    }
    Ok(())
}
