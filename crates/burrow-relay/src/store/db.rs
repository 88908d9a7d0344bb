//! The registry as the relay uses it: one async interface over SQLite or PostgreSQL.
//!
//! No database call runs on an async worker. SQLite reads run on tokio's blocking threads;
//! writes the relay makes while it serves (audit entries, the online mirror, password locks)
//! go through one queue, in order, to a writer that commits whatever has queued up in one
//! transaction: a reconnect storm of thousands of devices costs a few hundred commits, not
//! tens of thousands. A caller that must know its write is stored (an audit row a crash must
//! not lose, a row whose id it needs) waits for that batch's commit; others only queue.

use std::sync::Arc;

use burrow_io::keys::PublicKey;
use tokio::sync::{Mutex, mpsc, oneshot};

use super::postgres::Pg;
use super::{
    AuditRecord, DeviceRecord, OperatorRecord, PasswordLogin, Principal, Store, StoreError,
};

/// Most writes committed in one transaction.
const MAX_BATCH: usize = 512;

/// A write the relay makes while it serves; applied in the order queued.
#[derive(Debug, Clone, PartialEq, Eq)]
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

enum Backend {
    Sqlite {
        /// The store the CLI and tests use directly.
        store: Arc<Store>,
        reads: std::sync::mpsc::Sender<ReadJob>,
    },
    Postgres {
        url: String,
        /// Reads (queries pipeline on one connection).
        reads: Pg,
        /// Registry changes (the CLI), on a connection opened when first needed.
        changes: Mutex<Option<Pg>>,
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
    /// CLI), with its writer task.
    pub async fn postgres(url: &str, relay: &str) -> Result<Db, StoreError> {
        let reads = Pg::open(url, relay).await?;
        let mut writer = Pg::writer(url, relay).await?;
        let (jobs, mut queue) = mpsc::unbounded_channel::<Job>();
        let queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let done = queued.clone();
        let stats = Arc::new(DbStats::default());
        let batch_stats = stats.clone();
        tokio::spawn(async move {
            while let Some(first) = queue.recv().await {
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match queue.try_recv() {
                        Ok(job) => batch.push(job),
                        Err(_) => break,
                    }
                }
                let writes_of: Vec<&Write> = batch.iter().map(|j| &j.write).collect();
                let started = std::time::Instant::now();
                let results = writer.apply(&writes_of).await;
                batch_stats.record(started, results.first().unwrap_or(&Ok(Written::Done)));
                finish(batch, results, &done);
            }
        });
        Ok(Db {
            inner: Arc::new(Inner {
                backend: Backend::Postgres {
                    url: url.to_string(),
                    reads,
                    changes: Mutex::new(None),
                },
                jobs,
                queued,
                stats,
            }),
        })
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

    /// The PostgreSQL connection behind this registry, if that is the backend.
    pub fn postgres_reads(&self) -> Option<&Pg> {
        match &self.inner.backend {
            Backend::Postgres { reads, .. } => Some(reads),
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

    /// Runs `sqlite` on a blocking thread, or `pg` on the PostgreSQL connection.
    async fn read<T: Send + 'static>(
        &self,
        sqlite: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
        pg: impl AsyncFnOnce(&Pg) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let started = std::time::Instant::now();
        let result = self.read_inner(sqlite, pg).await;
        self.inner.stats.record(started, &result);
        result
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
            Backend::Postgres { reads, .. } => pg(reads).await,
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
            Backend::Sqlite { .. } => self.read(sqlite, async |_| Err(unreachable_pg())).await,
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

    /// At start of a relay on PostgreSQL: what this relay's previous run left open is marked
    /// interrupted; returns how many rows.
    pub async fn interrupt_leftovers_postgres(&self) -> Result<usize, StoreError> {
        match &self.inner.backend {
            Backend::Postgres { url, reads, .. } => {
                let mut own = Pg::writer(url, reads.relay()).await?;
                own.interrupt_leftovers().await
            }
            Backend::Sqlite { .. } => Err(unreachable_pg()),
        }
    }

    /// A counter that moves whenever the registry (devices, keys, operators, rules) changes.
    pub async fn registry_version(&self) -> Result<i64, StoreError> {
        self.read(
            |s| s.registry_version(),
            async |p| p.registry_version().await,
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
        )
        .await
    }

    /// Every (device, key fingerprint) pair.
    pub async fn device_key_pairs(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.read(
            |s| s.device_key_pairs(),
            async |p| p.device_key_pairs().await,
        )
        .await
    }

    /// Whether a device of this name exists.
    pub async fn device_exists(&self, name: &str) -> Result<bool, StoreError> {
        let n = name.to_string();
        self.read(
            move |s| s.device_exists(&n),
            async |p| p.device_exists(name).await,
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
        )
        .await
    }

    /// The listen address allowed for `device` on `port`, if any.
    pub async fn listen_addr(&self, device: &str, port: u16) -> Result<Option<String>, StoreError> {
        let d = device.to_string();
        self.read(
            move |s| s.listen_addr(&d, port),
            async |p| p.listen_addr(device, port).await,
        )
        .await
    }

    /// All devices, sorted by name (a fixed number of queries).
    pub async fn devices(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        self.read(|s| s.devices(), async |p| p.devices().await)
            .await
    }

    /// Last time `device` connected or disconnected.
    pub async fn last_seen(&self, device: &str) -> Result<Option<i64>, StoreError> {
        let d = device.to_string();
        self.read(
            move |s| s.last_seen(&d),
            async |p| p.last_seen(device).await,
        )
        .await
    }

    /// One operator, if it exists.
    pub async fn operator(&self, name: &str) -> Result<Option<OperatorRecord>, StoreError> {
        let n = name.to_string();
        self.read(move |s| s.operator(&n), async |p| p.operator(name).await)
            .await
    }

    /// All operators, sorted by name (a fixed number of queries).
    pub async fn operators(&self) -> Result<Vec<OperatorRecord>, StoreError> {
        self.read(|s| s.operators(), async |p| p.operators().await)
            .await
    }

    /// What a password login of `name` is checked against.
    pub async fn operator_password(&self, name: &str) -> Result<Option<PasswordLogin>, StoreError> {
        let n = name.to_string();
        self.read(
            move |s| s.operator_password(&n),
            async |p| p.operator_password(name).await,
        )
        .await
    }

    /// Applies the audit retention; returns how many entries were deleted.
    pub async fn prune_audit(&self, before: i64, max_rows: u64) -> Result<usize, StoreError> {
        self.read(
            move |s| s.prune_audit(before, max_rows),
            async |p| p.prune_audit(before, max_rows).await,
        )
        .await
    }

    /// The most recent `limit` audit entries, oldest first.
    pub async fn audit_tail(&self, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        self.read(
            move |s| s.audit_tail(limit),
            async |p| p.audit_tail(limit).await,
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
