//! The registry as the relay uses it: one async interface over SQLite or PostgreSQL.
//!
//! No database call runs on an async worker. SQLite reads run on tokio's blocking threads;
//! writes the relay makes while it serves (audit entries, the online mirror, password locks)
//! go through one queue, in order, to a writer that commits whatever has queued up in one
//! transaction: a reconnect storm of thousands of devices costs a few hundred commits, not
//! tens of thousands. A caller that must know its write is stored (an audit row a crash must
//! not lose, a row whose id it needs) waits for that batch's commit; others only queue.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

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

enum Backend {
    Sqlite(Arc<Store>),
}

struct Inner {
    backend: Backend,
    jobs: mpsc::UnboundedSender<Job>,
}

/// The registry: cheap to clone, shared by every connection.
#[derive(Clone)]
pub struct Db {
    inner: Arc<Inner>,
}

impl Db {
    /// The SQLite registry at `path` (created and migrated if needed), with its writer thread.
    pub fn sqlite(path: &std::path::Path) -> Result<Db, StoreError> {
        let reads = Arc::new(Store::open(path)?);
        // The writer has a connection of its own: WAL lets readers go on while it commits.
        let writes = Store::open(path)?;
        let (jobs, mut queue) = mpsc::unbounded_channel::<Job>();
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
                    let results = writes.apply(&writes_of);
                    finish(batch, results);
                }
            })
            .map_err(|e| StoreError::Schema(format!("cannot start the database writer: {e}")))?;
        Ok(Db {
            inner: Arc::new(Inner {
                backend: Backend::Sqlite(reads),
                jobs,
            }),
        })
    }

    /// The SQLite store behind this registry, if that is the backend (the CLI and tests use
    /// it directly).
    pub fn sqlite_store(&self) -> Option<&Store> {
        match &self.inner.backend {
            Backend::Sqlite(s) => Some(s),
        }
    }

    /// Queues a write and goes on; it is committed in order with the others, within
    /// milliseconds.
    pub fn submit(&self, write: Write) {
        let _ = self.inner.jobs.send(Job { write, done: None });
    }

    /// Queues a write and waits until it is committed.
    pub async fn write(&self, write: Write) -> Result<Written, StoreError> {
        let (tx, rx) = oneshot::channel();
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

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        match &self.inner.backend {
            Backend::Sqlite(store) => {
                let store = store.clone();
                tokio::task::spawn_blocking(move || f(&store))
                    .await
                    .map_err(|e| StoreError::Schema(format!("a database read failed: {e}")))?
            }
        }
    }

    /// A counter that moves whenever the registry (devices, keys, operators, rules) changes.
    pub async fn registry_version(&self) -> Result<i64, StoreError> {
        self.read(|s| s.registry_version()).await
    }

    /// Whose key `fingerprint` is when `name` logs in with it.
    pub async fn key_owner(
        &self,
        name: &str,
        fingerprint: &str,
    ) -> Result<Option<Principal>, StoreError> {
        let (name, fingerprint) = (name.to_string(), fingerprint.to_string());
        self.read(move |s| s.key_owner(&name, &fingerprint)).await
    }

    /// Every (device, key fingerprint) pair.
    pub async fn device_key_pairs(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.read(|s| s.device_key_pairs()).await
    }

    /// Whether a device of this name exists.
    pub async fn device_exists(&self, name: &str) -> Result<bool, StoreError> {
        let name = name.to_string();
        self.read(move |s| s.device_exists(&name)).await
    }

    /// Whether `device` may open `host:port` on the relay side.
    pub async fn may_connect(
        &self,
        device: &str,
        host: &str,
        port: u16,
    ) -> Result<bool, StoreError> {
        let (device, host) = (device.to_string(), host.to_string());
        self.read(move |s| s.may_connect(&device, &host, port))
            .await
    }

    /// The listen address allowed for `device` on `port`, if any.
    pub async fn listen_addr(&self, device: &str, port: u16) -> Result<Option<String>, StoreError> {
        let device = device.to_string();
        self.read(move |s| s.listen_addr(&device, port)).await
    }

    /// All devices, sorted by name (a fixed number of queries).
    pub async fn devices(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        self.read(|s| s.devices()).await
    }

    /// Last time `device` connected or disconnected.
    pub async fn last_seen(&self, device: &str) -> Result<Option<i64>, StoreError> {
        let device = device.to_string();
        self.read(move |s| s.last_seen(&device)).await
    }

    /// One operator, if it exists.
    pub async fn operator(&self, name: &str) -> Result<Option<OperatorRecord>, StoreError> {
        let name = name.to_string();
        self.read(move |s| s.operator(&name)).await
    }

    /// All operators, sorted by name (a fixed number of queries).
    pub async fn operators(&self) -> Result<Vec<OperatorRecord>, StoreError> {
        self.read(|s| s.operators()).await
    }

    /// What a password login of `name` is checked against.
    pub async fn operator_password(&self, name: &str) -> Result<Option<PasswordLogin>, StoreError> {
        let name = name.to_string();
        self.read(move |s| s.operator_password(&name)).await
    }

    /// At start: what the previous run left open is marked interrupted; returns how many.
    pub async fn interrupt_leftovers(&self) -> Result<usize, StoreError> {
        self.read(|s| s.interrupt_leftovers()).await
    }

    /// Applies the audit retention; returns how many entries were deleted.
    pub async fn prune_audit(&self, before: i64, max_rows: u64) -> Result<usize, StoreError> {
        self.read(move |s| s.prune_audit(before, max_rows)).await
    }

    /// The most recent `limit` audit entries, oldest first.
    pub async fn audit_tail(&self, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        self.read(move |s| s.audit_tail(limit)).await
    }
}

/// Hands each write of a batch its result.
fn finish(batch: Vec<Job>, results: Vec<Result<Written, StoreError>>) {
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
