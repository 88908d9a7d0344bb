//! The schema, versioned in `schema_migrations` and migrated forward at start under an
//! advisory lock, so that relays starting together do not race.

use super::*;

/// Arbitrary key of the advisory lock held while migrating.
const MIGRATION_LOCK: i64 = 0x6275_7272_6f77;

const SCHEMA_V1: &str = "
CREATE TABLE devices (
    name TEXT PRIMARY KEY,
    created BIGINT NOT NULL,
    last_seen BIGINT
);
CREATE TABLE device_keys (
    device TEXT NOT NULL REFERENCES devices(name) ON DELETE CASCADE,
    fingerprint TEXT NOT NULL,
    key TEXT NOT NULL,
    PRIMARY KEY (device, fingerprint)
);
CREATE TABLE device_allow_connect (
    device TEXT NOT NULL REFERENCES devices(name) ON DELETE CASCADE,
    host TEXT NOT NULL,
    port INTEGER NOT NULL,
    PRIMARY KEY (device, host, port)
);
CREATE TABLE device_allow_listen (
    device TEXT NOT NULL REFERENCES devices(name) ON DELETE CASCADE,
    addr TEXT NOT NULL,
    port INTEGER NOT NULL,
    PRIMARY KEY (addr, port)
);
CREATE TABLE operators (
    name TEXT PRIMARY KEY,
    password_hash TEXT,
    console_only BOOLEAN NOT NULL DEFAULT false,
    created BIGINT NOT NULL,
    locked_until BIGINT
);
CREATE TABLE operator_keys (
    operator TEXT NOT NULL REFERENCES operators(name) ON DELETE CASCADE,
    fingerprint TEXT NOT NULL,
    key TEXT NOT NULL,
    PRIMARY KEY (operator, fingerprint)
);
CREATE TABLE operator_allow (
    operator TEXT NOT NULL REFERENCES operators(name) ON DELETE CASCADE,
    pattern TEXT NOT NULL,
    PRIMARY KEY (operator, pattern)
);
-- Relays of the cluster: where their peer links listen, the key they prove themselves with,
-- and until when they are alive (milliseconds since the epoch; renewed while they run).
CREATE TABLE relays (
    id TEXT PRIMARY KEY,
    peer_addr TEXT NOT NULL,
    host_key TEXT NOT NULL,
    lease_until BIGINT NOT NULL,
    started BIGINT NOT NULL
);
-- Device sessions: one row per session, on the relay holding it. A row counts only while its
-- relay's lease runs.
CREATE TABLE online (
    device TEXT NOT NULL,
    relay TEXT NOT NULL,
    session BIGINT NOT NULL,
    instance TEXT NOT NULL,
    since BIGINT NOT NULL,
    peer TEXT NOT NULL,
    PRIMARY KEY (device, relay, session)
);
CREATE TABLE endpoints (
    device TEXT NOT NULL,
    relay TEXT NOT NULL,
    session BIGINT NOT NULL,
    port INTEGER NOT NULL,
    PRIMARY KEY (device, relay, session, port)
);
CREATE TABLE audit (
    id BIGSERIAL PRIMARY KEY,
    at BIGINT NOT NULL,
    event TEXT NOT NULL,
    who TEXT NOT NULL,
    target TEXT NOT NULL,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL,
    relay TEXT NOT NULL DEFAULT ''
);
CREATE INDEX audit_open ON audit (relay) WHERE outcome = 'open';
CREATE TABLE meta (one INTEGER PRIMARY KEY CHECK (one = 1), registry_version BIGINT NOT NULL);
INSERT INTO meta VALUES (1, 0);
CREATE FUNCTION burrow_registry_changed() RETURNS trigger AS $$
BEGIN
    UPDATE meta SET registry_version = registry_version + 1;
    PERFORM pg_notify('burrow_registry', '');
    RETURN NULL;
END $$ LANGUAGE plpgsql;
";

/// Version 2: endpoints keep the bind address the device asked for, so that any relay can list
/// the consoles of a device held by another.
const SCHEMA_V2: &str = "ALTER TABLE endpoints ADD COLUMN bind TEXT NOT NULL DEFAULT '';";

/// Version 3: when each relay was last known alive (seconds since the epoch), which bounds what
/// a crash of it left open.
const SCHEMA_V3: &str = "ALTER TABLE relays ADD COLUMN checkpoint BIGINT NOT NULL DEFAULT 0;";

/// Version 4: the fleet. Devices wait for approval and carry labels; join tokens (the secret
/// stored as its hash); keys seen from two places at once; each relay's public address and host
/// key, for join strings.
const SCHEMA_V4: &str = "
ALTER TABLE devices ADD COLUMN pending BOOLEAN NOT NULL DEFAULT false;
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
    since BIGINT NOT NULL,
    detail TEXT NOT NULL,
    kept_relay TEXT NOT NULL DEFAULT '',
    kept_session BIGINT NOT NULL DEFAULT 0,
    kept_instance TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (device, fingerprint),
    FOREIGN KEY (device, fingerprint) REFERENCES device_keys (device, fingerprint) ON DELETE CASCADE
);
CREATE TABLE tokens (
    id TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL,
    created BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    expires BIGINT NOT NULL,
    max_uses INTEGER,
    uses INTEGER NOT NULL DEFAULT 0,
    name_pattern TEXT NOT NULL,
    labels TEXT NOT NULL DEFAULT '',
    approve BOOLEAN NOT NULL DEFAULT false,
    replaces TEXT,
    last_used_by TEXT,
    last_used BIGINT,
    revoked BIGINT
);
CREATE TABLE relay_addresses (
    relay TEXT PRIMARY KEY,
    address TEXT NOT NULL,
    host_key TEXT NOT NULL,
    updated BIGINT NOT NULL
);
CREATE TRIGGER device_labels_changed AFTER INSERT OR UPDATE OR DELETE ON device_labels
    FOR EACH STATEMENT EXECUTE FUNCTION burrow_registry_changed();
CREATE TRIGGER quarantine_changed AFTER INSERT OR UPDATE OR DELETE ON quarantine
    FOR EACH STATEMENT EXECUTE FUNCTION burrow_registry_changed();
";

/// Version 6: each audit entry's device and operator, filled in for the entries already there,
/// and an index for each filter of `relay audit`, each ending with the row id so that a filter
/// walks it newest first and stops at the limit.
fn schema_v6() -> String {
    format!(
        "ALTER TABLE audit ADD COLUMN device TEXT;
         ALTER TABLE audit ADD COLUMN operator TEXT;
         {};
         CREATE INDEX audit_at ON audit (at, id);
         CREATE INDEX audit_device ON audit (device, at, id) WHERE device IS NOT NULL;
         CREATE INDEX audit_operator ON audit (operator, at, id) WHERE operator IS NOT NULL;
         CREATE INDEX audit_event ON audit (event, at, id);",
        crate::audit_subject::backfill_sql("strpos")
    )
}

/// Version 7: a device's connect or disconnect (an update of `last_seen` alone) is no registry
/// change. Every one moved the registry version and sent a NOTIFY, so during a reconnect storm
/// every relay re-checked every open session against the whole registry every few seconds.
/// Updates count when they name any other column ([`DEVICE_COLUMNS_THAT_COUNT`]).
fn schema_v7() -> String {
    format!(
        "DROP TRIGGER devices_changed ON devices;
CREATE TRIGGER devices_changed AFTER INSERT OR DELETE ON devices
    FOR EACH STATEMENT EXECUTE FUNCTION burrow_registry_changed();
CREATE TRIGGER devices_updated AFTER UPDATE OF {} ON devices
    FOR EACH STATEMENT EXECUTE FUNCTION burrow_registry_changed();",
        crate::store::DEVICE_COLUMNS_THAT_COUNT.join(", ")
    )
}

/// Version 8: operators' roles (viewer, operator, admin) and TOTP secrets, for the web console
/// and second-factor SSH logins (the web console's logins are added with it).
const SCHEMA_V8: &str = "ALTER TABLE operators ADD COLUMN role TEXT NOT NULL DEFAULT 'operator';
ALTER TABLE operators ADD COLUMN totp_secret TEXT;";

/// Brings the schema to [`SCHEMA_VERSION`] under an advisory lock.
pub(super) async fn migrate(client: &Client) -> Result<(), StoreError> {
    client
        .batch_execute(&format!(
            // Created only when missing: `IF NOT EXISTS` on an existing table makes PostgreSQL
            // send a NOTICE, which every command would print.
            "SELECT pg_advisory_lock({MIGRATION_LOCK});
             DO $$ BEGIN
               IF to_regclass('schema_migrations') IS NULL THEN
                 CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied BIGINT NOT NULL);
               END IF;
             END $$;"
        ))
        .await
        .map_err(pg("preparing the schema"))?;
    let result = async {
        let version: i32 = client
            .query_one("SELECT COALESCE(MAX(version), 0) FROM schema_migrations", &[])
            .await
            .map_err(pg("reading the schema version"))?
            .get(0);
        if version > SCHEMA_VERSION {
            return Err(StoreError::Schema(format!(
                "the database is at schema version {version}, newer than this burrow knows ({SCHEMA_VERSION}): run a newer burrow"
            )));
        }
        if version < 1 {
            let mut script = format!("BEGIN;\n{SCHEMA_V1}\n");
            for table in crate::store::REGISTRY_TABLES {
                script.push_str(&format!(
                    "CREATE TRIGGER {table}_changed AFTER INSERT OR UPDATE OR DELETE ON {table}
                     FOR EACH STATEMENT EXECUTE FUNCTION burrow_registry_changed();\n"
                ));
            }
            script.push_str(&format!(
                "INSERT INTO schema_migrations VALUES (1, {});\nCOMMIT;",
                now()
            ));
            if let Err(e) = client.batch_execute(&script).await {
                let _ = client.batch_execute("ROLLBACK").await;
                return Err(pg("creating the schema")(e));
            }
        }
        if version < 2 {
            let script = format!(
                "BEGIN;\n{SCHEMA_V2}\nINSERT INTO schema_migrations VALUES (2, {});\nCOMMIT;",
                now()
            );
            if let Err(e) = client.batch_execute(&script).await {
                let _ = client.batch_execute("ROLLBACK").await;
                return Err(pg("bringing the schema to version 2")(e));
            }
        }
        if version < 3 {
            let script = format!(
                "BEGIN;\n{SCHEMA_V3}\nINSERT INTO schema_migrations VALUES (3, {});\nCOMMIT;",
                now()
            );
            if let Err(e) = client.batch_execute(&script).await {
                let _ = client.batch_execute("ROLLBACK").await;
                return Err(pg("bringing the schema to version 3")(e));
            }
        }
        if version < 4 {
            let script = format!(
                "BEGIN;\n{SCHEMA_V4}\nINSERT INTO schema_migrations VALUES (4, {});\nCOMMIT;",
                now()
            );
            if let Err(e) = client.batch_execute(&script).await {
                let _ = client.batch_execute("ROLLBACK").await;
                return Err(pg("bringing the schema to version 4")(e));
            }
        }
        if version < 5 {
            let script = format!(
                "BEGIN;\n{}\n{}\nINSERT INTO schema_migrations VALUES (5, {});\nCOMMIT;",
                super::health::HEALTH_SCHEMA,
                super::alerts::ALERTS_SCHEMA,
                now()
            );
            if let Err(e) = client.batch_execute(&script).await {
                let _ = client.batch_execute("ROLLBACK").await;
                return Err(pg("bringing the schema to version 5 (device health, alerts)")(e));
            }
        }
        if version < 6 {
            let script = format!(
                "BEGIN;\n{}\nINSERT INTO schema_migrations VALUES (6, {});\nCOMMIT;",
                schema_v6(),
                now()
            );
            if let Err(e) = client.batch_execute(&script).await {
                let _ = client.batch_execute("ROLLBACK").await;
                return Err(pg("bringing the schema to version 6 (audit queries)")(e));
            }
        }
        if version < 7 {
            let script = format!(
                "BEGIN;\n{}\nINSERT INTO schema_migrations VALUES (7, {});\nCOMMIT;",
                schema_v7(),
                now()
            );
            if let Err(e) = client.batch_execute(&script).await {
                let _ = client.batch_execute("ROLLBACK").await;
                return Err(pg("bringing the schema to version 7 (last seen is no registry change)")(e));
            }
        }
        if version < 8 {
            let script = format!(
                "BEGIN;\n{SCHEMA_V8}\n{}\nINSERT INTO schema_migrations VALUES (8, {});\nCOMMIT;",
                crate::store::web::WEB_SCHEMA,
                now()
            );
            if let Err(e) = client.batch_execute(&script).await {
                let _ = client.batch_execute("ROLLBACK").await;
                return Err(pg("bringing the schema to version 8 (operator roles, TOTP, web logins)")(e));
            }
        }
        Ok(())
    }
    .await;
    let _ = client
        .batch_execute(&format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})"))
        .await;
    result
}
