//! Every accept/deny decision, written to the audit table and the log together.

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
}

impl Audit {
    /// An auditor writing to `db`.
    pub fn new(db: Db) -> Self {
        Audit { db }
    }

    /// Records one decision: `who` did `event` to `target` with `outcome`, because `detail`.
    /// The entry is logged at once and committed with the next batch, in order.
    pub fn record(&self, event: &str, who: &str, target: &str, outcome: Outcome, detail: &str) {
        let record = entry(event, who, target, outcome, detail);
        log(&record);
        self.db.submit(Write::Audit(record));
    }

    /// Writes the row of something that runs (a stream) when it starts, so that a crash cannot
    /// lose it; [`OpenEntry::close`] completes it. Rows a crash left open are marked interrupted
    /// at the next start.
    /// The row is committed before this returns.
    pub async fn open(&self, event: &str, who: &str, target: &str, detail: &str) -> OpenEntry {
        let record = entry(event, who, target, Outcome::Open, detail);
        tracing::debug!(target: "burrow::audit", event = %record.event, who = %record.who, target = %record.target, "started: {}", record.detail);
        let id = match self.db.write(Write::AuditOpen(record.clone())).await {
            Ok(Written::Id(id)) => Some(id),
            Ok(Written::Done) => None,
            Err(e) => {
                tracing::error!("audit entry not stored: {e}");
                None
            }
        };
        OpenEntry {
            audit: self.clone(),
            id,
            record,
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
    record: AuditRecord,
}

impl OpenEntry {
    /// Completes the row with how it ended.
    pub fn close(mut self, outcome: Outcome, detail: &str) {
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
}

/// An audit record with every untrusted string escaped and bounded.
fn entry(event: &str, who: &str, target: &str, outcome: Outcome, detail: &str) -> AuditRecord {
    use burrow_proto::text::{MAX_NAME_CHARS, MAX_TEXT_CHARS, clean};
    AuditRecord {
        at: now(),
        event: event.into(),
        who: clean(who, MAX_NAME_CHARS),
        target: clean(target, MAX_NAME_CHARS),
        outcome: outcome.as_str().into(),
        detail: clean(detail, MAX_TEXT_CHARS),
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
