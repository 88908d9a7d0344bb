//! The audit trail: entries, streams completed later, retention, and what a crash left open.

use rusqlite::params_from_iter;

use super::*;
use crate::store::audit_query::{AuditEntry, AuditQuery, Dialect, Param, Statement, by_ids};

impl Store {
    /// Appends an audit entry.
    pub fn audit(&self, record: &AuditRecord) -> Result<(), StoreError> {
        self.apply_single(&Write::Audit(record.clone())).map(|_| ())
    }

    /// Appends an audit entry and returns its row id (to complete it later).
    pub fn audit_insert(&self, record: &AuditRecord) -> Result<i64, StoreError> {
        match self.apply_single(&Write::AuditOpen(record.clone()))? {
            Written::Id(id) => Ok(id),
            _ => Ok(0),
        }
    }

    /// Completes an audit entry written by [`Store::audit_insert`].
    pub fn audit_complete(&self, id: i64, outcome: &str, detail: &str) -> Result<(), StoreError> {
        self.apply_single(&Write::AuditComplete {
            id,
            outcome: outcome.into(),
            detail: detail.into(),
        })
        .map(|_| ())
    }

    pub(super) fn apply_single(&self, w: &Write) -> Result<Written, StoreError> {
        self.apply(&[w]).pop().unwrap_or(Ok(Written::Done))
    }

    /// At start: what the previous run left open (streams, console attaches, device sessions)
    /// is ended with what is known: rows keep their last checkpoint (bytes, duration, last
    /// activity) and say the relay stopped, console attaches get their detach row, device
    /// sessions an `offline` row, all at the time the relay was last known alive. Returns how
    /// many rows.
    pub fn interrupt_leftovers(&self) -> Result<usize, StoreError> {
        self.apply_single(&Write::InterruptLeftovers)
            .map(|w| match w {
                Written::Rows(n) => n,
                _ => 0,
            })
    }

    /// Deletes audit entries older than `before` (seconds since the epoch) and all but the
    /// newest `max_rows`; rows of streams still open are kept. Returns how many were deleted.
    pub fn prune_audit(&self, before: i64, max_rows: u64) -> Result<usize, StoreError> {
        self.with(|c| {
            let old = c
                .execute(
                    "DELETE FROM audit WHERE at < ?1 AND outcome != 'open'",
                    [before],
                )
                .map_err(sql("pruning the audit log"))?;
            let excess = c
                .execute(
                    "DELETE FROM audit WHERE outcome != 'open' AND id <= (
                         SELECT id FROM audit ORDER BY id DESC LIMIT 1 OFFSET ?1)",
                    [i64::try_from(max_rows).unwrap_or(i64::MAX)],
                )
                .map_err(sql("pruning the audit log"))?;
            Ok(old + excess)
        })
    }

    /// Number of audit entries.
    pub fn audit_len(&self) -> Result<u64, StoreError> {
        self.with(|c| {
            c.query_row("SELECT COUNT(*) FROM audit", [], |r| r.get::<_, i64>(0))
                .map(|n| n.max(0) as u64)
                .map_err(sql("counting audit entries"))
        })
    }

    /// The most recent `limit` audit entries, oldest first.
    pub fn audit_tail(&self, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        self.with(|c| {
            let mut stmt = c
                .prepare(
                    "SELECT at, event, who, target, outcome, detail, device, operator FROM
                     (SELECT * FROM audit ORDER BY id DESC LIMIT ?1) ORDER BY id",
                )
                .map_err(sql("reading the audit log"))?;
            stmt.query_map([limit as i64], |r| {
                Ok(AuditRecord {
                    at: r.get(0)?,
                    event: r.get(1)?,
                    who: r.get(2)?,
                    target: r.get(3)?,
                    outcome: r.get(4)?,
                    detail: r.get(5)?,
                    device: r.get(6)?,
                    operator: r.get(7)?,
                })
            })
            .map_err(sql("reading the audit log"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(sql("reading the audit log"))
        })
    }
}

impl Store {
    /// The newest entries matching `q`, oldest first (see [`AuditQuery`]).
    pub fn audit_query(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        let mut rows = self.audit_rows(&q.latest(Dialect::Sqlite))?;
        rows.reverse();
        Ok(rows)
    }

    /// The entries matching `q` with ids in `after..=upto`, oldest first, at most `limit`.
    pub fn audit_range(
        &self,
        q: &AuditQuery,
        after: i64,
        upto: i64,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        self.audit_rows(&q.range(Dialect::Sqlite, after, upto, limit))
    }

    /// The entries of these ids, in id order.
    pub fn audit_entries(&self, ids: &[i64]) -> Result<Vec<AuditEntry>, StoreError> {
        // SQLite binds at most 32766 values; a follower asks for far fewer.
        let mut out = Vec::new();
        for chunk in ids.chunks(1000) {
            out.extend(self.audit_rows(&by_ids(Dialect::Sqlite, chunk))?);
        }
        Ok(out)
    }

    /// SQLite's plan for `q` (`EXPLAIN QUERY PLAN`), one step a line: the newest entries, or
    /// with `follow` what following reads (the last hundred ids).
    pub fn audit_plan(&self, q: &AuditQuery, follow: bool) -> Result<String, StoreError> {
        let stmt = if follow {
            let top = self.audit_max_id()?;
            q.range(Dialect::Sqlite, top.saturating_sub(100), top, 1000)
        } else {
            q.latest(Dialect::Sqlite)
        };
        self.with(|c| {
            let mut s = c
                .prepare(&format!("EXPLAIN QUERY PLAN {}", stmt.text))
                .map_err(sql("explaining an audit query"))?;
            let lines = s
                .query_map(params_from_iter(values(&stmt)), |r| r.get::<_, String>(3))
                .map_err(sql("explaining an audit query"))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(sql("explaining an audit query"))?;
            Ok(lines.join("\n"))
        })
    }

    fn audit_rows(&self, stmt: &Statement) -> Result<Vec<AuditEntry>, StoreError> {
        self.with(|c| {
            let mut s = c
                .prepare_cached(&stmt.text)
                .map_err(sql("reading the audit log"))?;
            s.query_map(params_from_iter(values(stmt)), |r| {
                Ok(AuditEntry {
                    id: r.get(0)?,
                    relay: None,
                    record: AuditRecord {
                        at: r.get(1)?,
                        event: r.get(2)?,
                        who: r.get(3)?,
                        target: r.get(4)?,
                        outcome: r.get(5)?,
                        detail: r.get(6)?,
                        device: r.get(7)?,
                        operator: r.get(8)?,
                    },
                })
            })
            .map_err(sql("reading the audit log"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(sql("reading the audit log"))
        })
    }
}

fn values(stmt: &Statement) -> Vec<rusqlite::types::Value> {
    stmt.params
        .iter()
        .map(|p| match p {
            Param::Text(t) => rusqlite::types::Value::Text(t.clone()),
            Param::Int(i) => rusqlite::types::Value::Integer(*i),
            Param::Ints(_) => rusqlite::types::Value::Null,
        })
        .collect()
}

/// [`Store::interrupt_leftovers`] inside the writer's transaction.
pub(super) fn interrupt_leftovers(tx: &Connection) -> Result<usize, StoreError> {
    let doing = "marking interrupted audit entries";
    let checkpoint: i64 = tx
        .query_row("SELECT checkpoint FROM meta", [], |r| r.get(0))
        .map_err(sql(doing))?;
    let last_row: i64 = tx
        .query_row("SELECT COALESCE(MAX(at), 0) FROM audit", [], |r| r.get(0))
        .map_err(sql(doing))?;
    let last = checkpoint.max(last_row);
    let why = crate::store::leftover_reason(last);
    let detaches = tx
        .execute(
            "INSERT INTO audit (at, event, who, target, outcome, detail, device, operator)
             SELECT ?1, 'console-detach', who, target, 'interrupted', ?2, device, operator
             FROM audit WHERE outcome = 'open' AND event = 'console-attach'",
            params![last, why],
        )
        .map_err(sql(doing))?;
    let rows = tx
        .execute(
            "UPDATE audit SET outcome = 'interrupted', detail = detail || '; ' || ?1
             WHERE outcome = 'open'",
            params![why],
        )
        .map_err(sql(doing))?;
    let sessions = tx
        .execute(
            "INSERT INTO audit (at, event, who, target, outcome, detail, device)
             SELECT ?1, 'offline', device, peer, 'interrupted', ?2, device
             FROM online",
            params![last, format!("the device session was up; {why}")],
        )
        .map_err(sql(doing))?;
    super::health::interrupted(tx, last).map_err(sql("marking interrupted sessions"))?;
    tx.execute_batch("DELETE FROM online; DELETE FROM endpoints;")
        .map_err(sql("clearing the online table"))?;
    Ok(rows + detaches + sessions)
}
