//! The registry as the relay uses it: one async interface over SQLite or PostgreSQL.
//!
//! No database call runs on an async worker. SQLite reads run on a few reader threads of their
//! own, each with its connection; writes the relay makes while it serves (audit entries, the
//! online mirror, password locks) go through one queue, in order, to a writer that commits
//! whatever has queued up in one transaction: a reconnect storm of thousands of devices costs
//! a few hundred commits, not tens of thousands. A caller that must know its write is stored (an audit row a crash must
//! not lose, a row whose id it needs) waits for that batch's commit; others only queue.

use std::sync::Arc;

use burrow_io::keys::PublicKey;
use tokio::sync::{Mutex, mpsc, oneshot};

use super::degraded::{Snapshot, Spill};
use super::postgres::Pg;
use super::{
    AuditEntry, AuditQuery, AuditRecord, DeviceRecord, OperatorRecord, PasswordLogin, Principal,
    Store, StoreError,
};

mod alerts;
mod changes;
mod copy;
mod fleet;
mod reads;
#[cfg(test)]
mod tests;
mod web;
mod writer;

use writer::pg_writer;
pub use writer::{DiskHealth, MAX_HELD};

/// Most writes committed in one transaction.
const MAX_BATCH: usize = 512;

/// A write the relay makes while it serves; applied in the order queued.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Write {
    /// An audit entry.
    Audit(AuditRecord),
    /// An audit entry that is completed later (its row id comes back).
    AuditOpen(AuditRecord),
    /// Completes an [`Write::AuditOpen`] row.
    AuditComplete {
        /// The row.
        id: i64,
        /// How it ended.
        outcome: String,
        /// Why, and numbers.
        detail: String,
    },
    /// A device session came up.
    Online {
        /// The device.
        device: String,
        /// Its address.
        peer: String,
        /// The session, unique on this relay.
        session: u64,
        /// The agent process it comes from (its sessions on several relays coexist; a new
        /// process takes over the old one's); empty for stock clients.
        instance: String,
        /// The fingerprint of the key it logged in with (another relay holding a session with
        /// the same key from another process checks for a clone); empty in older queues.
        #[serde(default)]
        key: String,
        /// The device's software, from its SSH identification (`burrow_0.1.0`); empty when
        /// the mirror names an existing session again (no session came up, and the device's
        /// health is left as it is).
        #[serde(default)]
        agent: String,
    },
    /// A device session ended (a newer session of the device is left alone).
    Offline {
        /// The device.
        device: String,
        /// The session that ended.
        session: u64,
        /// How it ended (see [`super::health::OfflineReason`]); empty for a correction of the
        /// mirror (the device's health is left as it is).
        #[serde(default)]
        reason: String,
        /// More about it.
        #[serde(default)]
        detail: String,
    },
    /// The agent's probe through the relay, as the relay timed it.
    Probe {
        /// The device.
        device: String,
        /// Whether it came back.
        ok: bool,
        /// Round trip, milliseconds.
        rtt_ms: u32,
        /// Why it failed.
        error: String,
    },
    /// The agent's health report.
    Health {
        /// The device.
        device: String,
        /// The report as JSON (cleaned, bounded).
        report: String,
        /// Its one-line summary.
        link: String,
        /// Signal strength, whole dBm.
        signal_dbm: Option<i32>,
        /// Temperature, whole °C.
        temp_c: Option<i32>,
        /// A Pi's throttling flags.
        throttled: Option<u32>,
    },
    /// An endpoint added or removed.
    Endpoint {
        /// The device.
        device: String,
        /// The port.
        port: u16,
        /// The bind address the device asked for (`console/NAME` for a console); kept in a
        /// cluster so that other relays can list the consoles.
        bind: String,
        /// Added (true) or removed.
        present: bool,
    },
    /// What an open audit row knows so far (bytes, duration, last activity), so that a crash
    /// loses at most one checkpoint's worth; ignored once the row is completed.
    AuditCheckpoint {
        /// The row.
        id: i64,
        /// Its detail as of now.
        detail: String,
    },
    /// The relay was alive then (seconds since the epoch): what a crash left open ended after
    /// this and before the next checkpoint.
    Checkpoint {
        /// When.
        at: i64,
    },
    /// An operator's password login locked until then (seconds since the epoch).
    LockOperator {
        /// The operator.
        name: String,
        /// Until when.
        until: i64,
    },
    /// At the start of a single relay (SQLite): what the previous run left open is ended
    /// (see [`crate::store::Store::interrupt_leftovers`]); queued like any write, so that on a
    /// full disk it waits, first in line, for space.
    InterruptLeftovers,
    /// Nothing: waiting for it waits for everything queued before it.
    Barrier,
}

/// What a write gave back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// Stored.
    Done,
    /// Stored as this row.
    Id(i64),
    /// Stored, touching this many rows.
    Rows(usize),
}

struct Job {
    write: Write,
    done: Option<oneshot::Sender<Result<Written, StoreError>>>,
}

/// A read for one of the SQLite reader threads.
type ReadJob = Box<dyn FnOnce(&Store) + Send>;

/// SQLite reader threads: each holds a connection of its own (WAL lets them read while the
/// writer commits). A fixed few, not a thread per waiting read: a reconnect storm must not
/// grow hundreds of threads and their memory.
const SQLITE_READERS: usize = 4;

// The PostgreSQL variant is the larger; there is one per relay.
#[allow(clippy::large_enum_variant)]
enum Backend {
    Sqlite {
        /// The store the CLI and tests use directly.
        store: Arc<Store>,
        reads: std::sync::mpsc::Sender<ReadJob>,
    },
    Postgres {
        url: String,
        relay: String,
        /// Reads (queries pipeline on one connection), reconnected when it drops.
        reads: tokio::sync::RwLock<Arc<Pg>>,
        /// When a reconnect was last tried (at most one a second).
        reconnect: Mutex<Option<std::time::Instant>>,
        /// Registry changes (the CLI), on a connection opened when first needed.
        changes: Mutex<Option<Pg>>,
        /// The registry as last read, for answering while the database is unreachable.
        snapshot: std::sync::RwLock<Option<Arc<Snapshot>>>,
        /// The oldest copy answered from.
        snapshot_max_age: std::time::Duration,
        /// When answering from the copy was last logged.
        said: std::sync::Mutex<Option<std::time::Instant>>,
    },
}

/// Time spent in database operations, and failures.
#[derive(Default)]
pub struct DbStats {
    /// Microseconds spent, in total.
    pub micros: std::sync::atomic::AtomicU64,
    /// Operations (reads, changes, committed batches).
    pub operations: std::sync::atomic::AtomicU64,
    /// Operations that failed.
    pub errors: std::sync::atomic::AtomicU64,
}

impl DbStats {
    fn record<T>(&self, started: std::time::Instant, result: &Result<T, StoreError>) {
        use std::sync::atomic::Ordering::Relaxed;
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.micros.fetch_add(micros, Relaxed);
        self.operations.fetch_add(1, Relaxed);
        if result.is_err() {
            self.errors.fetch_add(1, Relaxed);
        }
    }
}

struct Inner {
    stats: Arc<DbStats>,
    /// The disk under an SQLite registry (always fine for PostgreSQL).
    disk: Arc<DiskHealth>,
    backend: Backend,
    jobs: mpsc::UnboundedSender<Job>,
    /// Writes queued and not yet committed.
    queued: Arc<std::sync::atomic::AtomicUsize>,
}

/// The registry: cheap to clone, shared by every connection.
#[derive(Clone)]
pub struct Db {
    inner: Arc<Inner>,
}

impl Db {
    /// The SQLite registry at `path` (created and migrated if needed), with its writer thread.
    pub fn sqlite(path: &std::path::Path) -> Result<Db, StoreError> {
        let store = Arc::new(Store::open(path)?);
        let (reads, read_queue) = std::sync::mpsc::channel::<ReadJob>();
        let read_queue = Arc::new(std::sync::Mutex::new(read_queue));
        for i in 0..SQLITE_READERS {
            let conn = Store::open(path)?;
            let queue = read_queue.clone();
            std::thread::Builder::new()
                .name(format!("burrow-db-read-{i}"))
                .spawn(move || {
                    loop {
                        let job = {
                            let queue = queue.lock().unwrap_or_else(|e| e.into_inner());
                            queue.recv()
                        };
                        match job {
                            Ok(job) => job(&conn),
                            Err(_) => return,
                        }
                    }
                })
                .map_err(|e| StoreError::Schema(format!("cannot start a database reader: {e}")))?;
        }
        // The writer has a connection of its own: WAL lets readers go on while it commits.
        let writes = Store::open(path)?;
        let (jobs, queue) = mpsc::unbounded_channel::<Job>();
        let queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stats = Arc::new(DbStats::default());
        let disk = Arc::new(DiskHealth::default());
        let writer = writer::SqliteWriter {
            store: writes,
            queue,
            queued: queued.clone(),
            stats: stats.clone(),
            disk: disk.clone(),
            held: std::collections::VecDeque::new(),
        };
        std::thread::Builder::new()
            .name("burrow-db-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| StoreError::Schema(format!("cannot start the database writer: {e}")))?;
        Ok(Db {
            inner: Arc::new(Inner {
                backend: Backend::Sqlite { store, reads },
                jobs,
                queued,
                stats,
                disk,
            }),
        })
    }

    /// The PostgreSQL registry at `url` (migrated if needed), as relay `relay` (empty for the
    /// CLI), with its writer task. Writes the database cannot take go to a queue on disk in
    /// `spill` (a relay's data directory) and are replayed when it answers again; reads that
    /// fail are answered from the last copy of the registry while it is younger than
    /// `snapshot_max_age`. Without `spill` (the CLI), failures are returned as they are.
    pub async fn postgres_with(
        url: &str,
        relay: &str,
        spill: Option<&std::path::Path>,
        snapshot_max_age: std::time::Duration,
    ) -> Result<Db, StoreError> {
        let reads = Pg::open(url, relay).await?;
        let writer = Pg::writer(url, relay).await?;
        let (jobs, queue) = mpsc::unbounded_channel::<Job>();
        let queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stats = Arc::new(DbStats::default());
        let spill = spill.map(Spill::open);
        if let Some(s) = &spill
            && s.pending() > 0
        {
            tracing::warn!(
                "{} writes queued on disk by an earlier run go to the database first",
                s.pending()
            );
        }
        tokio::spawn(pg_writer(
            writer,
            url.to_string(),
            relay.to_string(),
            queue,
            spill,
            queued.clone(),
            stats.clone(),
        ));
        let db = Db {
            inner: Arc::new(Inner {
                backend: Backend::Postgres {
                    url: url.to_string(),
                    relay: relay.to_string(),
                    reads: tokio::sync::RwLock::new(Arc::new(reads)),
                    reconnect: Mutex::new(None),
                    changes: Mutex::new(None),
                    snapshot: std::sync::RwLock::new(None),
                    snapshot_max_age,
                    said: std::sync::Mutex::new(None),
                },
                jobs,
                queued,
                stats,
                disk: Arc::default(),
            }),
        };
        if spill_dir_given(&db) {
            let _ = db.refresh_snapshot().await;
        }
        Ok(db)
    }

    /// The PostgreSQL registry at `url` as the CLI uses it: no disk queue, no copy.
    pub async fn postgres(url: &str, relay: &str) -> Result<Db, StoreError> {
        Db::postgres_with(url, relay, None, std::time::Duration::ZERO).await
    }

    /// The read connection, reconnected if it dropped (at most one attempt a second).
    async fn pg_reads(&self) -> Result<Arc<Pg>, StoreError> {
        let Backend::Postgres {
            url,
            relay,
            reads,
            reconnect,
            ..
        } = &self.inner.backend
        else {
            return Err(unreachable_pg());
        };
        let current = reads.read().await.clone();
        if !current.is_closed() {
            return Ok(current);
        }
        let mut last = reconnect.lock().await;
        if last.is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(1)) {
            return Err(StoreError::Postgres {
                doing: "reading the registry",
                why: "the connection is down".into(),
            });
        }
        *last = Some(std::time::Instant::now());
        let fresh = Arc::new(Pg::writer(url, relay).await?);
        *reads.write().await = fresh.clone();
        Ok(fresh)
    }

    /// Opens `database`: a `postgresql://` URL, or else an SQLite file path.
    pub async fn open(database: &str, relay: &str) -> Result<Db, StoreError> {
        if is_postgres_url(database) {
            Db::postgres(database, relay).await
        } else {
            Db::sqlite(std::path::Path::new(database))
        }
    }

    /// The SQLite store behind this registry, if that is the backend (the CLI and tests use
    /// it directly).
    pub fn sqlite_store(&self) -> Option<&Store> {
        match &self.inner.backend {
            Backend::Sqlite { store, .. } => Some(store),
            Backend::Postgres { .. } => None,
        }
    }

    /// The PostgreSQL connection behind this registry, if that is the backend and it answers.
    pub async fn postgres_reads(&self) -> Option<Arc<Pg>> {
        match &self.inner.backend {
            Backend::Postgres { .. } => self.pg_reads().await.ok(),
            Backend::Sqlite { .. } => None,
        }
    }

    /// The URL of the PostgreSQL backend, if that is the backend.
    pub fn postgres_url(&self) -> Option<&str> {
        match &self.inner.backend {
            Backend::Postgres { url, .. } => Some(url),
            Backend::Sqlite { .. } => None,
        }
    }

    /// Queues a write and goes on; it is committed in order with the others, within
    /// milliseconds.
    pub fn submit(&self, write: Write) {
        self.inner
            .queued
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let _ = self.inner.jobs.send(Job { write, done: None });
    }

    /// Time spent in database operations, and failures.
    pub fn stats(&self) -> &DbStats {
        &self.inner.stats
    }

    /// Writes queued and not yet committed (held for a full disk included).
    pub fn queued(&self) -> usize {
        let held = self
            .inner
            .disk
            .held
            .load(std::sync::atomic::Ordering::Relaxed);
        self.inner
            .queued
            .load(std::sync::atomic::Ordering::Relaxed)
            .saturating_add(held)
    }

    /// Queues a write and waits until it is committed.
    pub async fn write(&self, write: Write) -> Result<Written, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .queued
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner
            .jobs
            .send(Job {
                write,
                done: Some(tx),
            })
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Waits until every write queued so far is committed.
    pub async fn flush(&self) {
        let _ = self.write(Write::Barrier).await;
    }

    /// Runs `sqlite` on a reader thread, or `pg` on the PostgreSQL connection; when that
    /// fails, `copy` answers from the last copy of the registry if it may.
    async fn read<T: Send + 'static>(
        &self,
        sqlite: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
        pg: impl AsyncFnOnce(&Pg) -> Result<T, StoreError>,
        copy: impl FnOnce(&Snapshot) -> Option<T>,
    ) -> Result<T, StoreError> {
        let started = std::time::Instant::now();
        let result = self.read_inner(sqlite, pg).await;
        self.inner.stats.record(started, &result);
        match result {
            Err(e @ StoreError::Postgres { .. }) => self.answer_from_copy(copy).ok_or(e),
            other => other,
        }
    }

    async fn read_inner<T: Send + 'static>(
        &self,
        sqlite: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
        pg: impl AsyncFnOnce(&Pg) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match &self.inner.backend {
            Backend::Sqlite { reads, .. } => {
                let (tx, rx) = oneshot::channel();
                let job: ReadJob = Box::new(move |store| {
                    let _ = tx.send(sqlite(store));
                });
                reads.send(job).map_err(|_| stopped())?;
                rx.await.map_err(|_| stopped())?
            }
            Backend::Postgres { .. } => {
                let conn = self.pg_reads().await?;
                pg(&conn).await
            }
        }
    }

    /// Runs a registry change: `sqlite` on a blocking thread, or `pg` on the change
    /// connection (opened when first needed).
    async fn change<T: Send + 'static>(
        &self,
        sqlite: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
        pg: impl AsyncFnOnce(&mut Pg) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match &self.inner.backend {
            Backend::Sqlite { .. } => {
                self.read(sqlite, async |_| Err(unreachable_pg()), |_| None)
                    .await
            }
            Backend::Postgres { url, changes, .. } => {
                let mut conn = changes.lock().await;
                if conn.as_ref().is_none_or(Pg::is_closed) {
                    *conn = Some(Pg::writer(url, "").await?);
                }
                match conn.as_mut() {
                    Some(c) => pg(c).await,
                    None => Err(unreachable_pg()),
                }
            }
        }
    }
}

/// Whether `database` names PostgreSQL rather than an SQLite file.
pub fn is_postgres_url(database: &str) -> bool {
    database.starts_with("postgresql://") || database.starts_with("postgres://")
}

fn unreachable_pg() -> StoreError {
    StoreError::Schema("not a PostgreSQL registry".into())
}

/// Whether this registry answers from a copy when the database is unreachable (a relay's,
/// not the CLI's).
fn spill_dir_given(db: &Db) -> bool {
    matches!(&db.inner.backend, Backend::Postgres { snapshot_max_age, .. } if !snapshot_max_age.is_zero())
}

fn stopped() -> StoreError {
    StoreError::Schema("the database writer has stopped".into())
}
