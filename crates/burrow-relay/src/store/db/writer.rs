//! The PostgreSQL write queue, and how a committed batch answers those who wait for it.

use super::*;

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
