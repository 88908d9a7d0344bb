//! Every accept/deny decision, written to the audit table and the log together.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use burrow_io::splice::{Progress, Transfer};
use burrow_proto::time::format_rfc3339;

pub use crate::audit_subject::About;
use crate::audit_subject::subjects;
use crate::store::{AuditRecord, Db, Write, Written, now};

/// Whether a decision allowed or refused something, and how what ran ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Allowed or succeeded; for a stream, ended normally.
    Ok,
    /// Refused by policy or credentials.
    Denied,
    /// Allowed but failed (connect error, overflow).
    Failed,
    /// Cut by a fault (a connection lost, a session given up or replaced, the relay stopping);
    /// the detail says which.
    Interrupted,
    /// Still running (a stream's row is written when it opens and completed when it ends).
    Open,
    /// A stream the operator closed while the device still sent (a reader that had enough).
    ClosedByOperator,
    /// A stream the device closed while the operator still sent.
    ClosedByDevice,
    /// A stream a relay-side target (`allow-connect`) closed while the device still sent.
    ClosedByTarget,
}

impl Outcome {
    /// Every outcome a stream can end with, for the metrics.
    pub(crate) const STREAM_ENDS: [Outcome; 5] = [
        Outcome::Ok,
        Outcome::ClosedByOperator,
        Outcome::ClosedByDevice,
        Outcome::ClosedByTarget,
        Outcome::Interrupted,
    ];

    /// As stored and printed.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Denied => "denied",
            Outcome::Failed => "failed",
            Outcome::Interrupted => "interrupted",
            Outcome::Open => "open",
            Outcome::ClosedByOperator => "closed-by-operator",
            Outcome::ClosedByDevice => "closed-by-device",
            Outcome::ClosedByTarget => "closed-by-target",
        }
    }
}

/// The audit detail of a finished stream: bytes each way, duration, and how it ended when
/// that was not normally.
pub(crate) fn stream_summary(
    to_device: u64,
    from_device: u64,
    lasted: std::time::Duration,
    ending: &crate::stream_end::Ending,
) -> String {
    let mut detail = format!(
        "{to_device} bytes to device, {from_device} bytes from device, {:.1} s",
        lasted.as_secs_f64()
    );
    if let Some(why) = &ending.why {
        detail.push_str("; ");
        detail.push_str(why);
    }
    detail
}

/// Writes audit entries.
#[derive(Clone)]
pub struct Audit {
    db: Db,
    /// Rows written when something started and not yet completed, for checkpoints.
    live: Arc<Mutex<HashMap<u64, Live>>>,
    next: Arc<AtomicU64>,
}

/// What an open row measures, for its checkpoints.
pub(crate) enum Measure {
    /// A stream: its bytes each way as they go (`a_is_device`: the splice's first end is the
    /// device's side).
    Stream {
        progress: Arc<Progress>,
        a_is_device: bool,
    },
    /// Something that lasts (a console attach): how long so far.
    Duration,
}

/// An open row as the checkpoints see it.
struct Live {
    id: i64,
    detail: String,
    started: Instant,
    measure: Measure,
    /// Bytes at the last checkpoint, and when they last moved.
    seen: Option<Transfer>,
    active: Option<i64>,
}

impl Live {
    /// The row's detail as of now, if anything changed since the last checkpoint.
    fn checkpoint(&mut self, now: i64) -> Option<String> {
        let so_far = self.started.elapsed().as_secs_f64();
        let (to_device, from_device) = match &self.measure {
            Measure::Duration => {
                return Some(format!("{}; {so_far:.0} s so far", self.detail));
            }
            Measure::Stream {
                progress,
                a_is_device,
            } => {
                let t = progress.now();
                if self.seen != Some(t) {
                    self.seen = Some(t);
                    self.active = Some(now);
                } else {
                    // Nothing moved: the row already says as much.
                    return None;
                }
                if *a_is_device {
                    (t.b_to_a, t.a_to_b)
                } else {
                    (t.a_to_b, t.b_to_a)
                }
            }
        };
        let active = self
            .active
            .map(|t| format!("; last activity {}", format_rfc3339(t)))
            .unwrap_or_default();
        let sep = if self.detail.is_empty() { "" } else { ": " };
        Some(format!(
            "{}{sep}{to_device} bytes to device, {from_device} bytes from device, {so_far:.1} s so far{active}",
            self.detail
        ))
    }
}

impl Audit {
    /// An auditor writing to `db`.
    pub fn new(db: Db) -> Self {
        Audit {
            db,
            live: Arc::default(),
            next: Arc::new(AtomicU64::new(1)),
        }
    }

    /// Records one decision: `who` did `event` to `target` with `outcome`, because `detail`.
    /// The entry is logged at once and committed with the next batch, in order.
    pub fn record(&self, event: &str, who: &str, target: &str, outcome: Outcome, detail: &str) {
        self.record_entry(entry(event, who, target, outcome, detail, None));
    }

    /// [`Audit::record`] for an entry whose event does not say whose deed it is (a login, a
    /// revocation): `about` does, for `relay audit --device/--operator`.
    pub fn record_about(
        &self,
        about: About<'_>,
        event: &str,
        who: &str,
        target: &str,
        outcome: Outcome,
        detail: &str,
    ) {
        self.record_entry(entry(event, who, target, outcome, detail, Some(about)));
    }

    fn record_entry(&self, record: AuditRecord) {
        log(&record);
        self.db.submit(Write::Audit(record));
    }

    /// Records one decision and waits until it is stored (the CLI, which exits right after).
    pub async fn record_stored(
        &self,
        event: &str,
        who: &str,
        target: &str,
        outcome: Outcome,
        detail: &str,
    ) -> Result<(), crate::store::StoreError> {
        let record = entry(event, who, target, outcome, detail, None);
        log(&record);
        self.db.write(Write::Audit(record)).await.map(|_| ())
    }

    /// Writes the row of something that runs (a stream, a console attach) when it starts, so
    /// that a crash cannot lose it; [`OpenEntry::close`] completes it. Until then what
    /// `measure` sees is written into the row every [`CHECKPOINT_EVERY`], and a crash is
    /// ended with what the last checkpoint knew at the next start.
    /// The row is committed before this returns.
    pub(crate) async fn open(
        &self,
        event: &str,
        who: &str,
        target: &str,
        detail: &str,
        measure: Measure,
    ) -> OpenEntry {
        let record = entry(event, who, target, Outcome::Open, detail, None);
        tracing::debug!(target: "burrow::audit", event = %record.event, who = %record.who, target = %record.target, "started: {}", record.detail);
        let id = match self.db.write(Write::AuditOpen(record.clone())).await {
            Ok(Written::Id(id)) => Some(id),
            Ok(_) => None,
            Err(e) => {
                tracing::error!("audit entry not stored: {e}");
                None
            }
        };
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        if let Some(id) = id {
            self.live().insert(
                key,
                Live {
                    id,
                    detail: record.detail.clone(),
                    started: Instant::now(),
                    measure,
                    seen: None,
                    active: None,
                },
            );
        }
        OpenEntry {
            audit: self.clone(),
            id,
            key,
            record,
        }
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Live>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes what the open rows know now, and that the relay is alive (when anything is
    /// open or `online` says devices are up: an idle relay writes nothing).
    pub(crate) fn checkpoint(&self, online: bool) {
        let now = now();
        let updates: Vec<(i64, String)> = self
            .live()
            .values_mut()
            .filter_map(|l| l.checkpoint(now).map(|d| (l.id, d)))
            .collect();
        let anything = online || !self.live().is_empty();
        for (id, detail) in updates {
            let detail = burrow_proto::text::clean(&detail, burrow_proto::text::MAX_TEXT_CHARS);
            self.db.submit(Write::AuditCheckpoint { id, detail });
        }
        if anything {
            self.db.submit(Write::Checkpoint { at: now });
        }
    }
}

/// How often open rows are checkpointed: a crash loses at most this much of their accounting.
pub(crate) const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Checkpoints the open rows every [`CHECKPOINT_EVERY`] until `shutdown`.
pub(crate) async fn keep_checkpoints(
    relay: Arc<crate::Relay>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        relay.audit.checkpoint(!relay.registry.all().is_empty());
        // The reserve a start on a full disk uses, made again once there is room (off the
        // async workers: it is half a megabyte written).
        if relay.db.disk_full().is_none() {
            let dir = relay.config.data_dir.clone();
            let _ = tokio::task::spawn_blocking(move || crate::datadir::keep_reserve(&dir)).await;
        }
    }
}

/// Applies the audit retention now and then every `interval` until `shutdown`.
pub(crate) async fn keep_pruned(
    db: Db,
    keep: std::time::Duration,
    max_rows: u64,
    interval: std::time::Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let before = now().saturating_sub(i64::try_from(keep.as_secs()).unwrap_or(i64::MAX));
        match db.prune_audit(before, max_rows).await {
            Ok(0) => {}
            Ok(n) => tracing::info!("audit retention: deleted {n} old entries"),
            Err(e) => tracing::error!("audit retention: {e}"),
        }
    }
}

/// An audit row written when something started; completed by [`OpenEntry::close`].
pub struct OpenEntry {
    audit: Audit,
    id: Option<i64>,
    key: u64,
    record: AuditRecord,
}

impl OpenEntry {
    /// Completes the row with how it ended.
    pub fn close(mut self, outcome: Outcome, detail: &str) {
        self.audit.live().remove(&self.key);
        self.record.outcome = outcome.as_str().into();
        self.record.detail = burrow_proto::text::clean(detail, burrow_proto::text::MAX_TEXT_CHARS);
        log(&self.record);
        self.audit.db.submit(match self.id {
            Some(id) => Write::AuditComplete {
                id,
                outcome: self.record.outcome.clone(),
                detail: self.record.detail.clone(),
            },
            None => Write::Audit(self.record.clone()),
        });
    }

    /// How long since the row was opened.
    pub(crate) fn since(&self) -> i64 {
        now().saturating_sub(self.record.at)
    }
}

/// An audit record with every untrusted string escaped and bounded, and the device and
/// operator it concerns.
fn entry(
    event: &str,
    who: &str,
    target: &str,
    outcome: Outcome,
    detail: &str,
    about: Option<About<'_>>,
) -> AuditRecord {
    use burrow_proto::text::{MAX_NAME_CHARS, MAX_TEXT_CHARS, clean};
    let (who, target) = (clean(who, MAX_NAME_CHARS), clean(target, MAX_NAME_CHARS));
    let (device, operator) = subjects(event, &who, &target, about);
    AuditRecord {
        at: now(),
        event: event.into(),
        who,
        target,
        outcome: outcome.as_str().into(),
        detail: clean(detail, MAX_TEXT_CHARS),
        device,
        operator,
    }
}

fn log(r: &AuditRecord) {
    let (event, who, target, outcome) = (&r.event, &r.who, &r.target, &r.outcome);
    if r.outcome == "ok" {
        tracing::info!(target: "burrow::audit", %event, %who, %target, %outcome, "{}", r.detail)
    } else {
        tracing::warn!(target: "burrow::audit", %event, %who, %target, %outcome, "{}", r.detail)
    }
}
