//! Every accept/deny decision, written to the audit table and the log together.

use std::sync::Arc;

use crate::store::{AuditRecord, Store, now};

/// Whether a decision allowed or refused something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Allowed or succeeded.
    Ok,
    /// Refused by policy or credentials.
    Denied,
    /// Allowed but failed (connect error, overflow).
    Failed,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Denied => "denied",
            Outcome::Failed => "failed",
        }
    }
}

/// The audit detail of a finished stream: bytes each way, duration, and why it ended early.
pub(crate) fn stream_summary(
    to_device: u64,
    from_device: u64,
    started: std::time::Instant,
    result: &Result<(), burrow_io::splice::SpliceError>,
) -> (Outcome, String) {
    let mut detail = format!(
        "{to_device} bytes to device, {from_device} bytes from device, {:.1} s",
        started.elapsed().as_secs_f64()
    );
    match result {
        Ok(()) => (Outcome::Ok, detail),
        Err(e) => {
            detail.push_str(&format!("; ended: {e}"));
            (Outcome::Failed, detail)
        }
    }
}

/// Writes audit entries.
#[derive(Clone)]
pub struct Audit {
    store: Arc<Store>,
}

impl Audit {
    /// An auditor writing to `store`.
    pub fn new(store: Arc<Store>) -> Self {
        Audit { store }
    }

    /// Records one decision: `who` did `event` to `target` with `outcome`, because `detail`.
    pub fn record(&self, event: &str, who: &str, target: &str, outcome: Outcome, detail: &str) {
        match outcome {
            Outcome::Ok => {
                tracing::info!(target: "burrow::audit", event, who, target, outcome = outcome.as_str(), "{detail}")
            }
            Outcome::Denied | Outcome::Failed => {
                tracing::warn!(target: "burrow::audit", event, who, target, outcome = outcome.as_str(), "{detail}")
            }
        }
        let record = AuditRecord {
            at: now(),
            event: event.into(),
            who: who.into(),
            target: target.into(),
            outcome: outcome.as_str().into(),
            detail: detail.into(),
        };
        if let Err(e) = self.store.audit(&record) {
            tracing::error!("audit entry not stored: {e}");
        }
    }
}
