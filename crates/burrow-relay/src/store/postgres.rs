//! The PostgreSQL backend: the shared registry of a relay cluster.
//!
//! One `tokio-postgres` connection carries reads (it pipelines concurrent queries), the write
//! queue commits on a second, and a third listens for `NOTIFY`: registry changes and takeovers
//! reach every relay at once instead of at its next poll. The schema is versioned in
//! `schema_migrations` and migrated forward at start, under an advisory lock so that relays
//! starting together do not race.

use std::collections::HashMap;
use std::time::Duration;

use burrow_io::keys::PublicKey;
use tokio::sync::mpsc;
use tokio_postgres::{Client, NoTls};

use super::{
    AuditRecord, DeviceRecord, OperatorRecord, PasswordLogin, Principal, StoreError, Write,
    Written, now,
};

/// The schema version this build writes.
pub const SCHEMA_VERSION: i32 = 2;

/// Channel of registry changes (devices, keys, operators, rules): payload unused.
pub const REGISTRY_CHANNEL: &str = "burrow_registry";
/// Channel of device sessions that came up: payload `DEVICE RELAY SESSION INSTANCE`.
pub const SESSION_CHANNEL: &str = "burrow_session";

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

fn pg(doing: &'static str) -> impl FnOnce(tokio_postgres::Error) -> StoreError {
    move |e| StoreError::Postgres {
        doing,
        why: describe(&e),
    }
}

/// The error with its cause (tokio-postgres keeps the server's message in the source).
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => match std::error::Error::source(e) {
            Some(s) => format!("{e}: {s}"),
            None => e.to_string(),
        },
    }
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A notification from another relay (or the CLI).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// The registry changed.
    Registry,
    /// A device session came up somewhere.
    Session {
        /// The device.
        device: String,
        /// The relay holding the new session.
        relay: String,
        /// The new session.
        session: u64,
        /// The agent process it came from (empty for stock clients).
        instance: String,
    },
}

/// A connection to the cluster's database.
pub struct Pg {
    client: Client,
    relay: String,
}

/// Opens a connection; its driver runs on a task of its own.
async fn connect(url: &str, what: &'static str) -> Result<Client, StoreError> {
    let (client, connection) =
        tokio::time::timeout(Duration::from_secs(10), tokio_postgres::connect(url, NoTls))
            .await
            .map_err(|_| StoreError::Postgres {
                doing: what,
                why: "no answer within 10 s".into(),
            })?
            .map_err(pg(what))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!("PostgreSQL connection ({what}) ended: {}", describe(&e));
        }
    });
    Ok(client)
}

impl Pg {
    /// Connects to `url` as relay `relay` (empty for the CLI) and migrates the schema.
    pub async fn open(url: &str, relay: &str) -> Result<Pg, StoreError> {
        let client = connect(url, "connecting to PostgreSQL").await?;
        migrate(&client).await?;
        Ok(Pg {
            client,
            relay: relay.to_string(),
        })
    }

    /// A second connection for the write queue.
    pub async fn writer(url: &str, relay: &str) -> Result<Pg, StoreError> {
        Ok(Pg {
            client: connect(url, "connecting the writer to PostgreSQL").await?,
            relay: relay.to_string(),
        })
    }

    /// The relay this connection writes as.
    pub fn relay(&self) -> &str {
        &self.relay
    }

    /// Whether the connection still works.
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Listens on `url` for registry changes and device sessions; notices go to `tx` until
    /// the connection drops (the receiver then sees the channel close).
    pub async fn listen(url: &str, tx: mpsc::UnboundedSender<Notice>) -> Result<(), StoreError> {
        let (client, mut connection) =
            tokio::time::timeout(Duration::from_secs(10), tokio_postgres::connect(url, NoTls))
                .await
                .map_err(|_| StoreError::Postgres {
                    doing: "listening for changes",
                    why: "no answer within 10 s".into(),
                })?
                .map_err(pg("listening for changes"))?;
        let driver = tokio::spawn(async move {
            loop {
                let message = std::future::poll_fn(|cx| connection.poll_message(cx)).await;
                match message {
                    Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                        let notice = if n.channel() == REGISTRY_CHANNEL {
                            Some(Notice::Registry)
                        } else {
                            parse_session(n.payload())
                        };
                        if let Some(notice) = notice
                            && tx.send(notice).is_err()
                        {
                            return;
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        tracing::warn!("PostgreSQL listener: {}", describe(&e));
                        return;
                    }
                    None => return,
                }
            }
        });
        client
            .batch_execute(&format!(
                "LISTEN {REGISTRY_CHANNEL}; LISTEN {SESSION_CHANNEL}"
            ))
            .await
            .map_err(pg("listening for changes"))?;
        // The client must outlive the LISTEN: it is kept by the driver task's lifetime.
        tokio::spawn(async move {
            let _client = client;
            let _ = driver.await;
        });
        Ok(())
    }

    // ----- reads -----

    /// A counter that moves whenever the registry changes.
    pub async fn registry_version(&self) -> Result<i64, StoreError> {
        let row = self
            .client
            .query_one("SELECT registry_version FROM meta", &[])
            .await
            .map_err(pg("reading the registry version"))?;
        Ok(row.get(0))
    }

    /// Whose key `fingerprint` is when `name` logs in with it.
    pub async fn key_owner(
        &self,
        name: &str,
        fingerprint: &str,
    ) -> Result<Option<Principal>, StoreError> {
        let row = self
            .client
            .query_opt(
                "SELECT 'device' FROM device_keys WHERE device = $1 AND fingerprint = $2
                 UNION ALL
                 SELECT 'operator' FROM operator_keys WHERE operator = $1 AND fingerprint = $2
                 LIMIT 1",
                &[&name, &fingerprint],
            )
            .await
            .map_err(pg("checking a key"))?;
        Ok(row.map(|r| {
            if r.get::<_, &str>(0) == "device" {
                Principal::Device
            } else {
                Principal::Operator
            }
        }))
    }

    /// Every (device, key fingerprint) pair.
    pub async fn device_key_pairs(&self) -> Result<Vec<(String, String)>, StoreError> {
        let rows = self
            .client
            .query("SELECT device, fingerprint FROM device_keys", &[])
            .await
            .map_err(pg("reading device keys"))?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Whether a device of this name exists.
    pub async fn device_exists(&self, name: &str) -> Result<bool, StoreError> {
        let row = self
            .client
            .query_opt("SELECT 1 FROM devices WHERE name = $1", &[&name])
            .await
            .map_err(pg("looking up a device"))?;
        Ok(row.is_some())
    }

    /// Whether `device` may open `host:port` on the relay side.
    pub async fn may_connect(
        &self,
        device: &str,
        host: &str,
        port: u16,
    ) -> Result<bool, StoreError> {
        let row = self
            .client
            .query_opt(
                "SELECT 1 FROM device_allow_connect WHERE device = $1 AND host = $2 AND port = $3",
                &[&device, &host, &i32::from(port)],
            )
            .await
            .map_err(pg("checking an allow-connect rule"))?;
        Ok(row.is_some())
    }

    /// The listen address allowed for `device` on `port`, if any.
    pub async fn listen_addr(&self, device: &str, port: u16) -> Result<Option<String>, StoreError> {
        let row = self
            .client
            .query_opt(
                "SELECT addr FROM device_allow_listen WHERE device = $1 AND port = $2",
                &[&device, &i32::from(port)],
            )
            .await
            .map_err(pg("reading allow-listen rules"))?;
        Ok(row.map(|r| r.get(0)))
    }

    /// All devices, sorted by name, with the relay holding each: five queries.
    pub async fn devices(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        let now_ms = now_ms();
        let rows = self
            .client
            .query(
                "SELECT d.name, d.last_seen,
                        (SELECT string_agg(o.relay, ',' ORDER BY o.since DESC)
                           FROM online o JOIN relays r ON r.id = o.relay AND r.lease_until > $1
                          WHERE o.device = d.name)
                   FROM devices d ORDER BY d.name",
                &[&now_ms],
            )
            .await
            .map_err(pg("listing devices"))?;
        let mut keys = self
            .grouped("SELECT device, fingerprint FROM device_keys ORDER BY device, fingerprint")
            .await?;
        let mut endpoints = self
            .grouped_live(
                "SELECT DISTINCT e.device, e.port::TEXT FROM endpoints e
                   JOIN online o ON o.device = e.device AND o.relay = e.relay AND o.session = e.session
                   JOIN relays r ON r.id = e.relay AND r.lease_until > $1
                  ORDER BY 1, 2",
                now_ms,
            )
            .await?;
        let mut connect = self
            .grouped("SELECT device, host || ':' || port FROM device_allow_connect ORDER BY device, host, port")
            .await?;
        let mut listen = self
            .grouped(
                "SELECT device, addr || ':' || port FROM device_allow_listen ORDER BY device, port",
            )
            .await?;
        let now = now();
        Ok(rows
            .into_iter()
            .map(|r| {
                let name: String = r.get(0);
                let last_seen: Option<i64> = r.get(1);
                let relays: Option<String> = r.get(2);
                let online = relays.is_some();
                DeviceRecord {
                    last_seen: if online { Some(now) } else { last_seen },
                    online,
                    fingerprints: keys.remove(&name).unwrap_or_default(),
                    endpoints: {
                        let mut ports: Vec<u16> = endpoints
                            .remove(&name)
                            .unwrap_or_default()
                            .iter()
                            .filter_map(|p| p.parse().ok())
                            .collect();
                        ports.sort_unstable();
                        ports.dedup();
                        ports
                    },
                    allow_connect: connect.remove(&name).unwrap_or_default(),
                    allow_listen: listen.remove(&name).unwrap_or_default(),
                    relay: relays,
                    name,
                }
            })
            .collect())
    }

    async fn grouped(&self, query: &str) -> Result<HashMap<String, Vec<String>>, StoreError> {
        let rows = self
            .client
            .query(query, &[])
            .await
            .map_err(pg("reading a list"))?;
        Ok(group(rows))
    }

    async fn grouped_live(
        &self,
        query: &str,
        now_ms: i64,
    ) -> Result<HashMap<String, Vec<String>>, StoreError> {
        let rows = self
            .client
            .query(query, &[&now_ms])
            .await
            .map_err(pg("reading a list"))?;
        Ok(group(rows))
    }

    /// The consoles of devices held by other live relays: (device, console, relay), sorted.
    pub async fn consoles_elsewhere(&self) -> Result<Vec<(String, String, String)>, StoreError> {
        let rows = self
            .client
            .query(
                "SELECT DISTINCT e.device, substr(e.bind, length($3) + 1), e.relay FROM endpoints e
                   JOIN online o ON o.device = e.device AND o.relay = e.relay AND o.session = e.session
                   JOIN relays r ON r.id = e.relay AND r.lease_until > $1
                  WHERE e.relay <> $2 AND starts_with(e.bind, $3)
                  ORDER BY 1, 2, 3",
                &[&now_ms(), &self.relay, &crate::registry::CONSOLE_BIND_PREFIX],
            )
            .await
            .map_err(pg("listing consoles"))?;
        Ok(rows
            .into_iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }

    /// Last time `device` connected or disconnected.
    pub async fn last_seen(&self, device: &str) -> Result<Option<i64>, StoreError> {
        let row = self
            .client
            .query_opt("SELECT last_seen FROM devices WHERE name = $1", &[&device])
            .await
            .map_err(pg("reading last seen"))?;
        Ok(row.and_then(|r| r.get(0)))
    }

    /// One operator, if it exists.
    pub async fn operator(&self, name: &str) -> Result<Option<OperatorRecord>, StoreError> {
        Ok(self
            .operators_where("WHERE name = $1", &[&name])
            .await?
            .pop())
    }

    /// All operators, sorted by name: three queries.
    pub async fn operators(&self) -> Result<Vec<OperatorRecord>, StoreError> {
        self.operators_where("", &[]).await
    }

    async fn operators_where(
        &self,
        filter: &str,
        args: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<OperatorRecord>, StoreError> {
        let rows = self
            .client
            .query(
                &format!(
                    "SELECT name, password_hash IS NOT NULL, console_only, locked_until FROM operators {filter} ORDER BY name"
                ),
                args,
            )
            .await
            .map_err(pg("listing operators"))?;
        let owner = if filter.is_empty() {
            ""
        } else {
            "WHERE operator = $1"
        };
        let keys = self
            .client
            .query(
                &format!("SELECT operator, fingerprint FROM operator_keys {owner} ORDER BY operator, fingerprint"),
                args,
            )
            .await
            .map_err(pg("listing operators"))?;
        let allow = self
            .client
            .query(
                &format!("SELECT operator, pattern FROM operator_allow {owner} ORDER BY operator, pattern"),
                args,
            )
            .await
            .map_err(pg("listing operators"))?;
        let (mut keys, mut allow) = (group(keys), group(allow));
        let now = now();
        Ok(rows
            .into_iter()
            .map(|r| {
                let name: String = r.get(0);
                let locked: Option<i64> = r.get(3);
                OperatorRecord {
                    fingerprints: keys.remove(&name).unwrap_or_default(),
                    allow: allow.remove(&name).unwrap_or_default(),
                    has_password: r.get(1),
                    console_only: r.get(2),
                    locked_until: locked.filter(|t| *t > now),
                    name,
                }
            })
            .collect())
    }

    /// Every operator's password hash (for the registry copy).
    pub async fn password_hashes(&self) -> Result<Vec<(String, String)>, StoreError> {
        let rows = self
            .client
            .query(
                "SELECT name, password_hash FROM operators WHERE password_hash IS NOT NULL",
                &[],
            )
            .await
            .map_err(pg("reading password hashes"))?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// What a password login of `name` is checked against.
    pub async fn operator_password(&self, name: &str) -> Result<Option<PasswordLogin>, StoreError> {
        let row = self
            .client
            .query_opt(
                "SELECT password_hash, locked_until FROM operators WHERE name = $1",
                &[&name],
            )
            .await
            .map_err(pg("reading a password hash"))?;
        Ok(row.and_then(|r| {
            let hash: Option<String> = r.get(0);
            let locked: Option<i64> = r.get(1);
            hash.map(|hash| PasswordLogin {
                hash,
                locked_until: locked.filter(|t| *t > now()),
            })
        }))
    }

    /// The most recent `limit` audit entries, oldest first.
    pub async fn audit_tail(&self, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .client
            .query(
                "SELECT at, event, who, target, outcome, detail FROM
                   (SELECT * FROM audit ORDER BY id DESC LIMIT $1) a ORDER BY id",
                &[&limit],
            )
            .await
            .map_err(pg("reading the audit log"))?;
        Ok(rows
            .iter()
            .map(|r| AuditRecord {
                at: r.get(0),
                event: r.get(1),
                who: r.get(2),
                target: r.get(3),
                outcome: r.get(4),
                detail: r.get(5),
            })
            .collect())
    }

    /// Number of audit entries.
    pub async fn audit_len(&self) -> Result<u64, StoreError> {
        let row = self
            .client
            .query_one("SELECT COUNT(*) FROM audit", &[])
            .await
            .map_err(pg("counting audit entries"))?;
        Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
    }

    // ----- the relay's own rows -----

    /// Records this relay as alive until `lease_ms` from now, reachable for peer links at
    /// `peer_addr` with `host_key` (an OpenSSH public key line).
    pub async fn renew_lease(
        &self,
        peer_addr: &str,
        host_key: &str,
        lease: Duration,
    ) -> Result<(), StoreError> {
        let until = now_ms().saturating_add(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX));
        self.client
            .execute(
                "INSERT INTO relays (id, peer_addr, host_key, lease_until, started)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (id) DO UPDATE SET peer_addr = $2, host_key = $3, lease_until = $4",
                &[&self.relay, &peer_addr, &host_key, &until, &now_ms()],
            )
            .await
            .map_err(pg("renewing the relay's lease"))?;
        Ok(())
    }

    /// The relays whose lease runs: (id, peer address, host key line).
    pub async fn live_relays(&self) -> Result<Vec<(String, String, String)>, StoreError> {
        let rows = self
            .client
            .query(
                "SELECT id, peer_addr, host_key FROM relays WHERE lease_until > $1 ORDER BY id",
                &[&now_ms()],
            )
            .await
            .map_err(pg("reading the relays"))?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }

    /// Where `device` is online, newest session first: (relay, session) on live relays.
    pub async fn sessions_of(&self, device: &str) -> Result<Vec<(String, u64)>, StoreError> {
        let rows = self
            .client
            .query(
                "SELECT o.relay, o.session FROM online o
                   JOIN relays r ON r.id = o.relay AND r.lease_until > $2
                  WHERE o.device = $1 ORDER BY o.since DESC, o.session DESC",
                &[&device, &now_ms()],
            )
            .await
            .map_err(pg("looking up a device's sessions"))?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), u64::try_from(r.get::<_, i64>(1)).unwrap_or(0)))
            .collect())
    }

    /// Devices with a session on a live relay.
    pub async fn count_online(&self) -> Result<u64, StoreError> {
        let row = self
            .client
            .query_one(
                "SELECT COUNT(DISTINCT o.device) FROM online o
                   JOIN relays r ON r.id = o.relay AND r.lease_until > $1",
                &[&now_ms()],
            )
            .await
            .map_err(pg("counting devices online"))?;
        Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
    }

    /// At start: audit rows this relay left open are marked interrupted, and its old session
    /// rows are removed with an `offline` entry each. Returns how many rows.
    pub async fn interrupt_leftovers(&mut self) -> Result<usize, StoreError> {
        let relay = self.relay.clone();
        let tx = self
            .client
            .transaction()
            .await
            .map_err(pg("marking interrupted audit entries"))?;
        let last: i64 = tx
            .query_one(
                "SELECT COALESCE(MAX(at), 0) FROM audit WHERE relay = $1",
                &[&relay],
            )
            .await
            .map_err(pg("marking interrupted audit entries"))?
            .get(0);
        let streams = tx
            .execute(
                "UPDATE audit SET outcome = 'interrupted',
                   detail = detail || '; the relay stopped before it ended'
                 WHERE outcome = 'open' AND relay = $1",
                &[&relay],
            )
            .await
            .map_err(pg("marking interrupted audit entries"))?;
        let sessions = tx
            .execute(
                "INSERT INTO audit (at, event, who, target, outcome, detail, relay)
                 SELECT $2, 'offline', device, peer, 'interrupted',
                        'the relay stopped while the device session was up', $1
                   FROM online WHERE relay = $1",
                &[&relay, &last],
            )
            .await
            .map_err(pg("marking interrupted audit entries"))?;
        tx.execute("DELETE FROM online WHERE relay = $1", &[&relay])
            .await
            .map_err(pg("clearing the online table"))?;
        tx.execute("DELETE FROM endpoints WHERE relay = $1", &[&relay])
            .await
            .map_err(pg("clearing the online table"))?;
        tx.commit()
            .await
            .map_err(pg("marking interrupted audit entries"))?;
        Ok(usize::try_from(streams.saturating_add(sessions)).unwrap_or(usize::MAX))
    }

    /// Deletes audit entries older than `before` and all but the newest `max_rows`.
    pub async fn prune_audit(&self, before: i64, max_rows: u64) -> Result<usize, StoreError> {
        let old = self
            .client
            .execute(
                "DELETE FROM audit WHERE at < $1 AND outcome != 'open'",
                &[&before],
            )
            .await
            .map_err(pg("pruning the audit log"))?;
        let keep = i64::try_from(max_rows).unwrap_or(i64::MAX);
        let excess = self
            .client
            .execute(
                "DELETE FROM audit WHERE outcome != 'open' AND id <= (
                     SELECT id FROM audit ORDER BY id DESC LIMIT 1 OFFSET $1)",
                &[&keep],
            )
            .await
            .map_err(pg("pruning the audit log"))?;
        Ok(usize::try_from(old.saturating_add(excess)).unwrap_or(usize::MAX))
    }

    /// Applies queued writes in one transaction; if it fails as a whole, each alone.
    pub async fn apply(&mut self, writes: &[&Write]) -> Vec<Result<Written, StoreError>> {
        let whole: Result<Vec<Written>, StoreError> = async {
            let tx = self
                .client
                .transaction()
                .await
                .map_err(pg("writing a batch"))?;
            let mut out = Vec::with_capacity(writes.len());
            for w in writes {
                out.push(apply_one(&tx, &self.relay, w).await?);
            }
            tx.commit().await.map_err(pg("writing a batch"))?;
            Ok(out)
        }
        .await;
        match whole {
            Ok(done) => done.into_iter().map(Ok).collect(),
            Err(e) if writes.len() <= 1 || self.client.is_closed() => {
                writes.iter().map(|_| Err(e.clone_shallow())).collect()
            }
            Err(_) => {
                let mut out = Vec::with_capacity(writes.len());
                for w in writes {
                    out.push(apply_one(&self.client, &self.relay, w).await);
                }
                out
            }
        }
    }

    // ----- the registry, for the CLI -----

    /// Runs one registry change in a transaction.
    async fn change<T>(
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

/// A value copied by `relay migrate`.
#[derive(Debug, Clone)]
pub enum CopyValue {
    /// Text or NULL.
    Text(Option<String>),
    /// A 64-bit integer or NULL.
    Int(Option<i64>),
    /// A 32-bit integer (ports).
    Int4(i32),
    /// A flag.
    Bool(bool),
}

impl StoreError {
    /// A copy of the error for each write of a failed batch.
    fn clone_shallow(&self) -> StoreError {
        match self {
            StoreError::Postgres { doing, why } => StoreError::Postgres {
                doing,
                why: why.clone(),
            },
            other => StoreError::Schema(other.to_string()),
        }
    }
}

fn group(rows: Vec<tokio_postgres::Row>) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for r in rows {
        out.entry(r.get(0)).or_default().push(r.get(1));
    }
    out
}

fn parse_session(payload: &str) -> Option<Notice> {
    let mut words = payload.split(' ');
    let device = words.next()?.to_string();
    let relay = words.next()?.to_string();
    let session = words.next()?.parse().ok()?;
    let instance = words.next().unwrap_or_default().to_string();
    Some(Notice::Session {
        device,
        relay,
        session,
        instance,
    })
}

async fn exists(
    tx: &tokio_postgres::Transaction<'_>,
    table: &'static str,
    column: &'static str,
    value: &str,
) -> Result<bool, StoreError> {
    let row = tx
        .query_opt(
            &format!("SELECT 1 FROM {table} WHERE {column} = $1"),
            &[&value],
        )
        .await
        .map_err(pg("looking up a name"))?;
    Ok(row.is_some())
}

async fn insert_keys(
    tx: &tokio_postgres::Transaction<'_>,
    table: &'static str,
    owner_col: &'static str,
    owner: &str,
    keys: &[PublicKey],
) -> Result<(), StoreError> {
    let q = format!(
        "INSERT INTO {table} ({owner_col}, fingerprint, key) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING"
    );
    for key in keys {
        let fp = burrow_io::keys::fingerprint(key);
        let line = burrow_io::keys::public_key_line(key);
        tx.execute(&q, &[&owner, &fp, &line])
            .await
            .map_err(pg("adding a key"))?;
    }
    Ok(())
}

/// One queued write inside the writer's transaction (or alone).
async fn apply_one<C: tokio_postgres::GenericClient>(
    c: &C,
    relay: &str,
    w: &Write,
) -> Result<Written, StoreError> {
    const AUDIT: &str = "INSERT INTO audit (at, event, who, target, outcome, detail, relay) VALUES ($1, $2, $3, $4, $5, $6, $7)";
    match w {
        Write::Audit(r) => {
            c.execute(
                AUDIT,
                &[
                    &r.at, &r.event, &r.who, &r.target, &r.outcome, &r.detail, &relay,
                ],
            )
            .await
            .map_err(pg("writing the audit log"))?;
            Ok(Written::Done)
        }
        Write::AuditOpen(r) => {
            let row = c
                .query_one(
                    &format!("{AUDIT} RETURNING id"),
                    &[
                        &r.at, &r.event, &r.who, &r.target, &r.outcome, &r.detail, &relay,
                    ],
                )
                .await
                .map_err(pg("writing the audit log"))?;
            Ok(Written::Id(row.get(0)))
        }
        Write::AuditComplete {
            id,
            outcome,
            detail,
        } => {
            c.execute(
                "UPDATE audit SET outcome = $2, detail = $3 WHERE id = $1",
                &[id, outcome, detail],
            )
            .await
            .map_err(pg("completing an audit entry"))?;
            Ok(Written::Done)
        }
        Write::Online {
            device,
            peer,
            session,
            instance,
        } => {
            let session_id = i64::try_from(*session).unwrap_or(i64::MAX);
            let now = now();
            c.execute(
                "INSERT INTO online (device, relay, session, instance, since, peer)
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                &[device, &relay, &session_id, instance, &now, peer],
            )
            .await
            .map_err(pg("recording a device online"))?;
            // Every relay hears of it at once: one holding an older session of the device
            // from another agent process cuts it (takeover across relays).
            let payload = format!("{device} {relay} {session} {instance}");
            c.execute("SELECT pg_notify($1, $2)", &[&SESSION_CHANNEL, &payload])
                .await
                .map_err(pg("announcing a device session"))?;
            c.execute(
                "UPDATE devices SET last_seen = $2 WHERE name = $1",
                &[device, &now],
            )
            .await
            .map_err(pg("recording a device online"))?;
            Ok(Written::Done)
        }
        Write::Offline { device, session } => {
            let session = i64::try_from(*session).unwrap_or(i64::MAX);
            c.execute(
                "DELETE FROM online WHERE device = $1 AND relay = $2 AND session = $3",
                &[device, &relay, &session],
            )
            .await
            .map_err(pg("recording a device offline"))?;
            c.execute(
                "DELETE FROM endpoints WHERE device = $1 AND relay = $2 AND session = $3",
                &[device, &relay, &session],
            )
            .await
            .map_err(pg("recording a device offline"))?;
            c.execute(
                "UPDATE devices SET last_seen = $2 WHERE name = $1",
                &[device, &now()],
            )
            .await
            .map_err(pg("recording a device offline"))?;
            Ok(Written::Done)
        }
        Write::Endpoint {
            device,
            port,
            bind,
            present,
        } => {
            let port = i32::from(*port);
            // The endpoint belongs to the device's newest session on this relay.
            let done = if *present {
                c.execute(
                    "INSERT INTO endpoints (device, relay, session, port, bind)
                     SELECT device, relay, session, $3, $4 FROM online WHERE device = $1 AND relay = $2
                     ORDER BY session DESC LIMIT 1 ON CONFLICT DO NOTHING",
                    &[device, &relay, &port, bind],
                )
                .await
            } else {
                c.execute(
                    "DELETE FROM endpoints WHERE device = $1 AND relay = $2 AND port = $3",
                    &[device, &relay, &port],
                )
                .await
            };
            done.map_err(pg("recording an endpoint"))?;
            Ok(Written::Done)
        }
        Write::LockOperator { name, until } => {
            c.execute(
                "UPDATE operators SET locked_until = $2 WHERE name = $1",
                &[name, until],
            )
            .await
            .map_err(pg("locking an operator"))?;
            Ok(Written::Done)
        }
        Write::Barrier => Ok(Written::Done),
    }
}

/// Brings the schema to [`SCHEMA_VERSION`] under an advisory lock.
async fn migrate(client: &Client) -> Result<(), StoreError> {
    client
        .batch_execute(&format!(
            "SELECT pg_advisory_lock({MIGRATION_LOCK});
             CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied BIGINT NOT NULL);"
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
            for table in REGISTRY_TABLES {
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
        Ok(())
    }
    .await;
    let _ = client
        .batch_execute(&format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})"))
        .await;
    result
}
