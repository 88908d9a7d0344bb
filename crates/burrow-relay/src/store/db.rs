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
    AuditRecord, DeviceRecord, OperatorRecord, PasswordLogin, Principal, Store, StoreError,
};

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
    },
    /// A device session ended (a newer session of the device is left alone).
    Offline {
        /// The device.
        device: String,
        /// The session that ended.
        session: u64,
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
    /// An operator's password login locked until then (seconds since the epoch).
    LockOperator {
        /// The operator.
        name: String,
        /// Until when.
        until: i64,
    },
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
        let (jobs, mut queue) = mpsc::unbounded_channel::<Job>();
        let queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let done = queued.clone();
        let stats = Arc::new(DbStats::default());
        let batch_stats = stats.clone();
        std::thread::Builder::new()
            .name("burrow-db-writer".into())
            .spawn(move || {
                while let Some(first) = queue.blocking_recv() {
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH {
                        match queue.try_recv() {
                            Ok(job) => batch.push(job),
                            Err(_) => break,
                        }
                    }
                    let writes_of: Vec<&Write> = batch.iter().map(|j| &j.write).collect();
                    let started = std::time::Instant::now();
                    let results = writes.apply(&writes_of);
                    batch_stats.record(started, results.first().unwrap_or(&Ok(Written::Done)));
                    finish(batch, results, &done);
                }
            })
            .map_err(|e| StoreError::Schema(format!("cannot start the database writer: {e}")))?;
        Ok(Db {
            inner: Arc::new(Inner {
                backend: Backend::Sqlite { store, reads },
                jobs,
                queued,
                stats,
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

    /// Reads the registry again into the copy answered from while the database is
    /// unreachable (a relay on PostgreSQL does this when the registry changes, and every
    /// minute).
    pub async fn refresh_snapshot(&self) -> Result<(), StoreError> {
        let Backend::Postgres { snapshot, .. } = &self.inner.backend else {
            return Ok(());
        };
        let pg = self.pg_reads().await?;
        let copy = Snapshot::new(
            pg.device_key_pairs().await?,
            pg.devices().await?,
            pg.operators().await?,
            pg.password_hashes().await?,
        );
        *snapshot.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(copy));
        Ok(())
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

    /// Writes queued and not yet committed.
    pub fn queued(&self) -> usize {
        self.inner.queued.load(std::sync::atomic::Ordering::Relaxed)
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

    /// An answer from the registry copy, if there is one young enough.
    fn answer_from_copy<T>(&self, copy: impl FnOnce(&Snapshot) -> Option<T>) -> Option<T> {
        let Backend::Postgres {
            snapshot,
            snapshot_max_age,
            said,
            ..
        } = &self.inner.backend
        else {
            return None;
        };
        let snap = snapshot.read().unwrap_or_else(|e| e.into_inner()).clone()?;
        let age = snap.age();
        if age > *snapshot_max_age {
            return None;
        }
        let mut said = said.lock().unwrap_or_else(|e| e.into_inner());
        if said.is_none_or(|t| t.elapsed() > std::time::Duration::from_secs(60)) {
            *said = Some(std::time::Instant::now());
            tracing::warn!(
                "the database cannot be reached: answering from the copy of the registry taken {:.0} s ago",
                age.as_secs_f64()
            );
        }
        copy(&snap)
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

    /// At start of a relay: what its previous run left open (streams, device sessions) is
    /// marked interrupted; returns how many rows.
    pub async fn interrupt_leftovers(&self) -> Result<usize, StoreError> {
        match &self.inner.backend {
            Backend::Postgres { url, relay, .. } => {
                let mut own = Pg::writer(url, relay).await?;
                own.interrupt_leftovers().await
            }
            Backend::Sqlite { .. } => {
                self.read(
                    |s| s.interrupt_leftovers(),
                    async |_| Err(unreachable_pg()),
                    |_| None,
                )
                .await
            }
        }
    }

    /// A counter that moves whenever the registry (devices, keys, operators, rules) changes.
    pub async fn registry_version(&self) -> Result<i64, StoreError> {
        self.read(
            |s| s.registry_version(),
            async |p| p.registry_version().await,
            |_| None,
        )
        .await
    }

    /// Whose key `fingerprint` is when `name` logs in with it.
    pub async fn key_owner(
        &self,
        name: &str,
        fingerprint: &str,
    ) -> Result<Option<Principal>, StoreError> {
        let (n, f) = (name.to_string(), fingerprint.to_string());
        self.read(
            move |s| s.key_owner(&n, &f),
            async |p| p.key_owner(name, fingerprint).await,
            |c| Some(c.key_owner(name, fingerprint)),
        )
        .await
    }

    /// Every (device, key fingerprint) pair.
    pub async fn device_key_pairs(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.read(
            |s| s.device_key_pairs(),
            async |p| p.device_key_pairs().await,
            |c| Some(c.device_key_pairs()),
        )
        .await
    }

    /// Whether a device of this name exists.
    pub async fn device_exists(&self, name: &str) -> Result<bool, StoreError> {
        let n = name.to_string();
        self.read(
            move |s| s.device_exists(&n),
            async |p| p.device_exists(name).await,
            |c| Some(c.device(name).is_some()),
        )
        .await
    }

    /// Whether `device` may open `host:port` on the relay side.
    pub async fn may_connect(
        &self,
        device: &str,
        host: &str,
        port: u16,
    ) -> Result<bool, StoreError> {
        let (d, h) = (device.to_string(), host.to_string());
        self.read(
            move |s| s.may_connect(&d, &h, port),
            async |p| p.may_connect(device, host, port).await,
            |c| Some(c.may_connect(device, host, port)),
        )
        .await
    }

    /// The listen address allowed for `device` on `port`, if any.
    pub async fn listen_addr(&self, device: &str, port: u16) -> Result<Option<String>, StoreError> {
        let d = device.to_string();
        self.read(
            move |s| s.listen_addr(&d, port),
            async |p| p.listen_addr(device, port).await,
            |c| Some(c.listen_addr(device, port)),
        )
        .await
    }

    /// All devices, sorted by name (a fixed number of queries).
    pub async fn devices(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        self.read(
            |s| s.devices(),
            async |p| p.devices().await,
            |c| Some(c.devices()),
        )
        .await
    }

    /// The consoles of devices held by other relays of a cluster: (device, console, relay),
    /// sorted; none on SQLite (one relay) or while the database is out of reach.
    pub async fn consoles_elsewhere(&self) -> Result<Vec<(String, String, String)>, StoreError> {
        if self.postgres_url().is_none() {
            return Ok(Vec::new());
        }
        self.read(
            |_| Ok(Vec::new()),
            async |p| p.consoles_elsewhere().await,
            |_| Some(Vec::new()),
        )
        .await
    }

    /// Last time `device` connected or disconnected.
    pub async fn last_seen(&self, device: &str) -> Result<Option<i64>, StoreError> {
        let d = device.to_string();
        self.read(
            move |s| s.last_seen(&d),
            async |p| p.last_seen(device).await,
            |c| Some(c.device(device).and_then(|d| d.last_seen)),
        )
        .await
    }

    /// One operator, if it exists.
    pub async fn operator(&self, name: &str) -> Result<Option<OperatorRecord>, StoreError> {
        let n = name.to_string();
        self.read(
            move |s| s.operator(&n),
            async |p| p.operator(name).await,
            |c| Some(c.operator(name)),
        )
        .await
    }

    /// All operators, sorted by name (a fixed number of queries).
    pub async fn operators(&self) -> Result<Vec<OperatorRecord>, StoreError> {
        self.read(
            |s| s.operators(),
            async |p| p.operators().await,
            |c| Some(c.operators()),
        )
        .await
    }

    /// What a password login of `name` is checked against.
    pub async fn operator_password(&self, name: &str) -> Result<Option<PasswordLogin>, StoreError> {
        let n = name.to_string();
        self.read(
            move |s| s.operator_password(&n),
            async |p| p.operator_password(name).await,
            |c| Some(c.operator_password(name)),
        )
        .await
    }

    /// Applies the audit retention; returns how many entries were deleted.
    pub async fn prune_audit(&self, before: i64, max_rows: u64) -> Result<usize, StoreError> {
        self.read(
            move |s| s.prune_audit(before, max_rows),
            async |p| p.prune_audit(before, max_rows).await,
            |_| None,
        )
        .await
    }

    /// The most recent `limit` audit entries, oldest first.
    pub async fn audit_tail(&self, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        self.read(
            move |s| s.audit_tail(limit),
            async |p| p.audit_tail(limit).await,
            |_| None,
        )
        .await
    }

    // ----- registry changes (the CLI) -----

    /// Adds a device with its first keys.
    pub async fn add_device(&self, name: &str, keys: &[PublicKey]) -> Result<(), StoreError> {
        let (n, k) = (name.to_string(), keys.to_vec());
        self.change(
            move |s| s.add_device(&n, &k),
            async |p| p.add_device(name, keys).await,
        )
        .await
    }

    /// Adds keys to an existing device.
    pub async fn add_device_keys(&self, name: &str, keys: &[PublicKey]) -> Result<(), StoreError> {
        let (n, k) = (name.to_string(), keys.to_vec());
        self.change(
            move |s| s.add_device_keys(&n, &k),
            async |p| p.add_device_keys(name, keys).await,
        )
        .await
    }

    /// Removes a device and everything it owns.
    pub async fn remove_device(&self, name: &str) -> Result<(), StoreError> {
        let n = name.to_string();
        self.change(
            move |s| s.remove_device(&n),
            async |p| p.remove_device(name).await,
        )
        .await
    }

    /// Removes one key of a device (the last one is kept).
    pub async fn remove_device_key(&self, name: &str, fingerprint: &str) -> Result<(), StoreError> {
        let (n, f) = (name.to_string(), fingerprint.to_string());
        self.change(
            move |s| s.remove_device_key(&n, &f),
            async |p| p.remove_device_key(name, fingerprint).await,
        )
        .await
    }

    /// Lets `device` open `host:port` on the relay side.
    pub async fn allow_connect(
        &self,
        device: &str,
        host: &str,
        port: u16,
    ) -> Result<(), StoreError> {
        let (d, h) = (device.to_string(), host.to_string());
        self.change(
            move |s| s.allow_connect(&d, &h, port),
            async |p| p.allow_connect(device, host, port).await,
        )
        .await
    }

    /// Removes an `allow-connect` rule; false if there was none.
    pub async fn disallow_connect(
        &self,
        device: &str,
        host: &str,
        port: u16,
    ) -> Result<bool, StoreError> {
        let (d, h) = (device.to_string(), host.to_string());
        self.change(
            move |s| s.disallow_connect(&d, &h, port),
            async |p| p.disallow_connect(device, host, port).await,
        )
        .await
    }

    /// Lets `device` hold a real listener on `addr:port`.
    pub async fn allow_listen(
        &self,
        device: &str,
        addr: &str,
        port: u16,
    ) -> Result<(), StoreError> {
        let (d, a) = (device.to_string(), addr.to_string());
        self.change(
            move |s| s.allow_listen(&d, &a, port),
            async |p| p.allow_listen(device, addr, port).await,
        )
        .await
    }

    /// Removes an `allow-listen` rule; false if there was none.
    pub async fn disallow_listen(
        &self,
        device: &str,
        addr: &str,
        port: u16,
    ) -> Result<bool, StoreError> {
        let (d, a) = (device.to_string(), addr.to_string());
        self.change(
            move |s| s.disallow_listen(&d, &a, port),
            async |p| p.disallow_listen(device, addr, port).await,
        )
        .await
    }

    /// Adds an operator.
    pub async fn add_operator(
        &self,
        name: &str,
        keys: &[PublicKey],
        password_hash: Option<&str>,
        allow: &[String],
        console_only: bool,
    ) -> Result<(), StoreError> {
        let (n, k, h, a) = (
            name.to_string(),
            keys.to_vec(),
            password_hash.map(str::to_string),
            allow.to_vec(),
        );
        self.change(
            move |s| s.add_operator(&n, &k, h.as_deref(), &a, console_only),
            async |p| {
                p.add_operator(name, keys, password_hash, allow, console_only)
                    .await
            },
        )
        .await
    }

    /// Removes an operator.
    pub async fn remove_operator(&self, name: &str) -> Result<(), StoreError> {
        let n = name.to_string();
        self.change(
            move |s| s.remove_operator(&n),
            async |p| p.remove_operator(name).await,
        )
        .await
    }

    /// Changes an operator's `--allow` patterns and/or console-only flag.
    pub async fn set_operator_policy(
        &self,
        name: &str,
        allow: Option<&[String]>,
        console_only: Option<bool>,
    ) -> Result<(), StoreError> {
        let (n, a) = (name.to_string(), allow.map(<[String]>::to_vec));
        self.change(
            move |s| s.set_operator_policy(&n, a.as_deref(), console_only),
            async |p| p.set_operator_policy(name, allow, console_only).await,
        )
        .await
    }

    /// Lifts a password lock; false if the operator was not locked.
    pub async fn unlock_operator(&self, name: &str) -> Result<bool, StoreError> {
        let n = name.to_string();
        self.change(
            move |s| s.unlock_operator(&n),
            async |p| p.unlock_operator(name).await,
        )
        .await
    }

    /// Sets or clears an operator's password (never its last credential).
    pub async fn set_operator_password(
        &self,
        name: &str,
        hash: Option<&str>,
    ) -> Result<(), StoreError> {
        let (n, h) = (name.to_string(), hash.map(str::to_string));
        self.change(
            move |s| s.set_operator_password(&n, h.as_deref()),
            async |p| p.set_operator_password(name, hash).await,
        )
        .await
    }

    /// Adds keys to an existing operator.
    pub async fn add_operator_keys(
        &self,
        name: &str,
        keys: &[PublicKey],
    ) -> Result<(), StoreError> {
        let (n, k) = (name.to_string(), keys.to_vec());
        self.change(
            move |s| s.add_operator_keys(&n, &k),
            async |p| p.add_operator_keys(name, keys).await,
        )
        .await
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

/// The PostgreSQL write queue: batches committed in one transaction each. While the database
/// cannot be reached, batches go to the disk queue (`spill`) and count as done; the disk queue
/// is replayed, in order, before anything newer once the database answers again.
async fn pg_writer(
    mut writer: Pg,
    url: String,
    relay: String,
    mut queue: mpsc::UnboundedReceiver<Job>,
    mut spill: Option<Spill>,
    queued: Arc<std::sync::atomic::AtomicUsize>,
    stats: Arc<DbStats>,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let mut spilled = spill.as_ref().map_or(0, Spill::pending);
    queued.fetch_add(spilled, Relaxed);
    let mut tried: Option<std::time::Instant> = None;
    loop {
        // Wake now and then while writes wait on disk, to try the database again.
        let first = if spilled > 0 {
            match tokio::time::timeout(std::time::Duration::from_secs(1), queue.recv()).await {
                Ok(Some(job)) => Some(job),
                Ok(None) => return,
                Err(_) => None,
            }
        } else {
            match queue.recv().await {
                Some(job) => Some(job),
                None => return,
            }
        };
        let mut batch: Vec<Job> = first.into_iter().collect();
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        // Reconnect at most once a second: an unreachable host must not hold up every batch.
        if writer.is_closed()
            && tried.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(1))
        {
            tried = Some(std::time::Instant::now());
            if let Ok(fresh) = Pg::writer(&url, &relay).await {
                writer = fresh;
            }
        }
        // What waits on disk goes first.
        if spilled > 0
            && !writer.is_closed()
            && let Some(s) = spill.as_mut()
        {
            let waiting = s.read();
            let refs: Vec<&Write> = waiting.iter().collect();
            let mut all_done = true;
            for chunk in refs.chunks(MAX_BATCH) {
                if writer.apply(chunk).await.iter().any(Result::is_err) && writer.is_closed() {
                    all_done = false;
                    break;
                }
            }
            if all_done && s.clear().is_ok() {
                tracing::warn!(
                    "{spilled} writes queued on disk during the outage are in the database"
                );
                queued.fetch_sub(spilled, Relaxed);
                spilled = 0;
            }
        }
        if batch.is_empty() {
            continue;
        }
        let writes_of: Vec<&Write> = batch.iter().map(|j| &j.write).collect();
        let started = std::time::Instant::now();
        let results = if spilled == 0 && !writer.is_closed() {
            writer.apply(&writes_of).await
        } else {
            vec![Err(StoreError::Postgres {
                doing: "writing",
                why: "the database is unreachable".into(),
            })]
        };
        stats.record(started, results.first().unwrap_or(&Ok(Written::Done)));
        let outage = results.iter().any(Result::is_err) && (spilled > 0 || writer.is_closed());
        match (outage, spill.as_mut()) {
            (true, Some(s)) => {
                let before = s.pending();
                match s.push(&writes_of) {
                    Ok(()) => {
                        let added = s.pending().saturating_sub(before);
                        spilled = spilled.saturating_add(added);
                        queued.fetch_add(added, Relaxed);
                        let done: Vec<Result<Written, StoreError>> =
                            batch.iter().map(|_| Ok(Written::Done)).collect();
                        finish(batch, done, &queued);
                    }
                    Err(e) => {
                        tracing::error!("{e}");
                        finish(batch, results, &queued);
                    }
                }
            }
            _ => finish(batch, results, &queued),
        }
    }
}

/// Hands each write of a batch its result.
fn finish(
    batch: Vec<Job>,
    results: Vec<Result<Written, StoreError>>,
    queued: &std::sync::atomic::AtomicUsize,
) {
    queued.fetch_sub(batch.len(), std::sync::atomic::Ordering::Relaxed);
    let mut results = results.into_iter();
    for job in batch {
        let result = results.next().unwrap_or_else(|| Err(stopped()));
        match job.done {
            Some(tx) => {
                let _ = tx.send(result);
            }
            None => {
                if let Err(e) = result {
                    tracing::error!("not stored: {e}");
                }
            }
        }
    }
}

fn stopped() -> StoreError {
    StoreError::Schema("the database writer has stopped".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn audit(who: &str) -> AuditRecord {
        AuditRecord {
            at: 1,
            event: "auth".into(),
            who: who.into(),
            target: String::new(),
            outcome: "ok".into(),
            detail: String::new(),
        }
    }

    #[tokio::test]
    async fn queued_writes_commit_in_order_and_a_waiting_one_sees_them_all() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::sqlite(&dir.path().join("r.db")).unwrap();
        for i in 0..1000 {
            db.submit(Write::Audit(audit(&format!("d{i}"))));
        }
        let id = db.write(Write::AuditOpen(audit("last"))).await.unwrap();
        assert!(matches!(id, Written::Id(1001)), "{id:?}");
        let tail = db.audit_tail(3).await.unwrap();
        let who: Vec<_> = tail.iter().map(|r| r.who.as_str()).collect();
        assert_eq!(who, ["d998", "d999", "last"]);
    }
}
