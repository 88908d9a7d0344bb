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

mod alerts;
mod audit;
mod fleet;
mod health;
mod reads;
mod registry;
mod schema;
mod web;
mod writes;

/// The schema version this build writes.
pub const SCHEMA_VERSION: i32 = 8;

/// Channel of registry changes (devices, keys, operators, rules): payload unused.
pub const REGISTRY_CHANNEL: &str = "burrow_registry";
/// Channel of device sessions that came up: payload `DEVICE RELAY SESSION INSTANCE`.
pub const SESSION_CHANNEL: &str = "burrow_session";

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
        /// The key it logged in with (empty from relays that do not say).
        key: String,
    },
}

/// A connection to the cluster's database.
pub struct Pg {
    client: Client,
    relay: String,
}

/// Where `config` points, for messages: host, port, database and user, never the password.
fn target(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let mut out = format!("{host}:{port}");
    if let Some(db) = config.get_dbname() {
        out.push_str(&format!(", database {db}"));
    }
    if let Some(user) = config.get_user() {
        out.push_str(&format!(", as {user}"));
    }
    out
}

/// Connects, or says where it tried and what to check.
async fn connect_raw(
    url: &str,
    what: &'static str,
) -> Result<
    (
        Client,
        tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>,
    ),
    StoreError,
> {
    const FORM: &str = "postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE";
    let config = url
        .parse::<tokio_postgres::Config>()
        .map_err(|e| StoreError::Postgres {
            doing: what,
            why: format!("the database URL cannot be read ({e}); give it as {FORM}"),
        })?;
    let why = match tokio::time::timeout(Duration::from_secs(10), config.connect(NoTls)).await {
        Ok(Ok(pair)) => return Ok(pair),
        Ok(Err(e)) => describe(&e),
        Err(_) => "no answer within 10 s".into(),
    };
    Err(StoreError::Postgres {
        doing: what,
        why: format!(
            "{why} ({}); check that PostgreSQL runs there and that --database (or BURROW_DATABASE_URL) names it, as {FORM}",
            target(&config)
        ),
    })
}

/// Opens a connection; its driver runs on a task of its own.
async fn connect(url: &str, what: &'static str) -> Result<Client, StoreError> {
    let (client, connection) = connect_raw(url, what).await?;
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
        schema::migrate(&client).await?;
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
        let (client, mut connection) = connect_raw(url, "listening for changes").await?;
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
    /// A 32-bit integer or NULL.
    Int4Opt(Option<i32>),
    /// A flag.
    Bool(bool),
}

impl StoreError {
    /// A copy of the error for each write of a failed batch.
    pub(crate) fn clone_shallow(&self) -> StoreError {
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
    let key = words.next().unwrap_or_default().to_string();
    Some(Notice::Session {
        device,
        relay,
        session,
        instance,
        key,
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
        let holder = tx
            .query_opt(
                "SELECT 'device', device FROM device_keys
                   WHERE fingerprint = $1 AND NOT ($2 = 'device' AND device = $3)
                 UNION ALL
                 SELECT 'operator', operator FROM operator_keys
                   WHERE fingerprint = $1 AND NOT ($2 = 'operator' AND operator = $3)
                 LIMIT 1",
                &[&fp, &owner_col, &owner],
            )
            .await
            .map_err(pg("checking who holds a key"))?;
        if let Some(row) = holder {
            let (kind, name): (String, String) = (row.get(0), row.get(1));
            return Err(crate::store::key_held(&fp, &kind, &name, owner_col, owner));
        }
        let line = burrow_io::keys::public_key_line(key);
        tx.execute(&q, &[&owner, &fp, &line])
            .await
            .map_err(pg("adding a key"))?;
    }
    Ok(())
}
