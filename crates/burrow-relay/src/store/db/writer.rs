//! The write queues (SQLite, PostgreSQL), and how a committed batch answers those who wait
//! for it.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;

use super::*;

/// Most writes held in memory while the disk is full; past it new ones are dropped, counted.
pub const MAX_HELD: usize = 10_000;

/// Whether the disk takes the relay's writes (SQLite): while it does not, writes are held.
#[derive(Default)]
pub struct DiskHealth {
    /// Why writes are held, while they are.
    pub(crate) full: std::sync::Mutex<Option<String>>,
    /// Writes held in memory for the disk.
    pub(crate) held: std::sync::atomic::AtomicUsize,
    /// Writes dropped because the hold was full.
    pub(crate) dropped: std::sync::atomic::AtomicU64,
}

impl Db {
    /// Why the disk under the registry takes no writes now (they are held in memory), if it
    /// does not.
    pub fn disk_full(&self) -> Option<String> {
        self.inner
            .disk
            .full
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Writes held in memory for the disk, and writes dropped because the hold was full.
    pub fn held(&self) -> (usize, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.inner.disk.held.load(Relaxed),
            self.inner.disk.dropped.load(Relaxed),
        )
    }
}

/// How often a full disk is tried again.
const DISK_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// Whether an error says the disk under the database takes no writes (full, or failing): the
/// write is good and must wait, not be thrown away.
pub(super) fn is_disk_trouble(e: &StoreError) -> bool {
    use rusqlite::ErrorCode::{CannotOpen, DiskFull, ReadOnly, SystemIoFailure};
    match e {
        StoreError::Sqlite {
            source: rusqlite::Error::SqliteFailure(f, _),
            ..
        } => matches!(f.code, DiskFull | SystemIoFailure | CannotOpen | ReadOnly),
        _ => false,
    }
}

/// The SQLite write queue: batches committed in one transaction each. While the disk takes no
/// writes (full), they are held in memory, in order and bounded by [`MAX_HELD`], and count as
/// done; they are written, oldest first and before anything newer, once it takes them again.
pub(super) struct SqliteWriter {
    pub(super) store: Store,
    pub(super) queue: mpsc::UnboundedReceiver<Job>,
    pub(super) queued: Arc<std::sync::atomic::AtomicUsize>,
    pub(super) stats: Arc<DbStats>,
    pub(super) disk: Arc<DiskHealth>,
    pub(super) held: VecDeque<Write>,
}

impl SqliteWriter {
    pub(super) fn run(mut self) {
        loop {
            let batch = if self.held.is_empty() {
                let Some(first) = self.queue.blocking_recv() else {
                    return;
                };
                self.take_more(vec![first])
            } else {
                // Try the disk again now and then; what arrives meanwhile is held behind.
                std::thread::sleep(DISK_RETRY);
                let batch = self.take_more(Vec::new());
                self.hold(batch);
                self.drain();
                continue;
            };
            let writes_of: Vec<&Write> = batch.iter().map(|j| &j.write).collect();
            let started = std::time::Instant::now();
            match self.store.apply_together(&writes_of) {
                Ok(done) => {
                    self.stats.record(started, &Ok::<(), StoreError>(()));
                    finish(batch, done.into_iter().map(Ok).collect(), &self.queued);
                }
                Err(e) if is_disk_trouble(&e) => {
                    self.stats.record(started, &Err::<(), _>(e.clone_shallow()));
                    self.degrade(&e);
                    self.hold(batch);
                }
                Err(e) => {
                    // One bad write fails only itself.
                    self.stats.record(started, &Err::<(), _>(e));
                    let results = self.store.apply(&writes_of);
                    finish(batch, results, &self.queued);
                }
            }
        }
    }

    /// Adds what else is queued, up to a batch.
    fn take_more(&mut self, mut batch: Vec<Job>) -> Vec<Job> {
        while batch.len() < MAX_BATCH {
            match self.queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        batch
    }

    /// Holds `batch` behind what is held already, answering its waiters: the writes count as
    /// done. A row opened now gets no id (it is written whole when it ends); checkpoints
    /// are only worth something while they are the newest.
    fn hold(&mut self, batch: Vec<Job>) {
        let mut answers = Vec::with_capacity(batch.len());
        for job in &batch {
            let keep = !matches!(
                job.write,
                Write::Barrier
                    | Write::AuditOpen(_)
                    | Write::AuditCheckpoint { .. }
                    | Write::Checkpoint { .. }
            );
            if keep {
                if self.held.len() < MAX_HELD {
                    self.held.push_back(job.write.clone());
                } else if self.disk.dropped.fetch_add(1, Relaxed) == 0 {
                    tracing::error!(
                        "{MAX_HELD} writes are held for the disk already: newer audit entries and session records are dropped (counted in burrow_audit_dropped_total) until it takes writes again"
                    );
                }
            }
            answers.push(Ok(Written::Done));
        }
        self.disk.held.store(self.held.len(), Relaxed);
        finish(batch, answers, &self.queued);
    }

    /// Writes what is held, oldest first, as far as the disk takes it.
    fn drain(&mut self) {
        while !self.held.is_empty() {
            let n = self.held.len().min(MAX_BATCH);
            let writes: Vec<&Write> = self.held.iter().take(n).collect();
            match self.store.apply_together(&writes) {
                Ok(_) => {}
                Err(e) if is_disk_trouble(&e) => return,
                // A write the database refuses on its own (not for the disk) is given up
                // alone, the others go in.
                Err(_) => {
                    for r in self.store.apply(&writes) {
                        if let Err(e) = r
                            && !is_disk_trouble(&e)
                        {
                            tracing::error!("a held write is refused: {e}");
                        }
                    }
                }
            }
            self.held.drain(..n);
            self.disk.held.store(self.held.len(), Relaxed);
        }
        let why = self
            .disk
            .full
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if why.is_some() {
            let dropped = self.disk.dropped.load(Relaxed);
            tracing::warn!(
                "the disk takes writes again: the held audit entries and session records are stored, in order{}; no longer degraded",
                if dropped > 0 {
                    format!(" ({dropped} were dropped while the hold was full)")
                } else {
                    String::new()
                }
            );
        }
    }

    fn degrade(&self, e: &StoreError) {
        let mut full = self.disk.full.lock().unwrap_or_else(|e| e.into_inner());
        if full.is_none() {
            tracing::error!(
                "the disk takes no writes ({e}): running degraded; audit entries and session records are held in memory (up to {MAX_HELD}) and written in order when space returns"
            );
            *full = Some(e.to_string());
        }
    }
}

/// The PostgreSQL write queue: batches committed in one transaction each. While the database
/// cannot be reached, batches go to the disk queue (`spill`) and count as done; the disk queue
/// is replayed, in order, before anything newer once the database answers again.
pub(super) async fn pg_writer(
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
pub(super) fn finish(
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
