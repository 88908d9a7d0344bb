//! Alerts on SQLite: the alerts with their deliveries, the projection's per-device timers and
//! its position in the audit trail.

use super::*;
use crate::alerts::{AlertChanges, AlertRecord, Delivery, DeviceAlertState};

/// Schema step: alerts, deliveries, the projection's state.
pub(super) const ALERTS_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    at INTEGER NOT NULL,
    kind TEXT NOT NULL,
    device TEXT,
    severity TEXT NOT NULL,
    summary TEXT NOT NULL,
    detail TEXT NOT NULL,
    relay TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS alerts_device ON alerts (device, id);
CREATE TABLE IF NOT EXISTS alert_deliveries (
    alert INTEGER NOT NULL REFERENCES alerts(id) ON DELETE CASCADE,
    target TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    done_at INTEGER,
    last_error TEXT,
    PRIMARY KEY (target, alert)
);
CREATE INDEX IF NOT EXISTS alert_deliveries_alert ON alert_deliveries (alert);
CREATE TABLE IF NOT EXISTS alert_devices (
    device TEXT PRIMARY KEY,
    offline_at INTEGER,
    offline_id INTEGER,
    offline_due INTEGER,
    offline_alerted INTEGER NOT NULL DEFAULT 0,
    flapping_until INTEGER
);
CREATE TABLE IF NOT EXISTS alert_cursor (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    audit_id INTEGER NOT NULL
);
";

const ALERT_COLUMNS: &str = "id, at, kind, device, severity, summary, detail, relay";

fn alert_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AlertRecord> {
    Ok(AlertRecord {
        id: r.get(0)?,
        at: r.get(1)?,
        kind: r.get(2)?,
        device: r.get(3)?,
        severity: r.get(4)?,
        summary: r.get(5)?,
        detail: r.get(6)?,
        relay: r.get(7)?,
        deliveries: Vec::new(),
    })
}

/// The deliveries of `alerts`, attached to each.
fn attach_deliveries(c: &Connection, alerts: &mut [AlertRecord]) -> Result<(), StoreError> {
    let mut stmt = c
        .prepare_cached(
            "SELECT target, state, attempts, done_at, last_error FROM alert_deliveries
             WHERE alert = ?1 ORDER BY target",
        )
        .map_err(sql("reading alert deliveries"))?;
    for a in alerts {
        a.deliveries = stmt
            .query_map([a.id], |r| {
                Ok(Delivery {
                    target: r.get(0)?,
                    state: r.get(1)?,
                    attempts: r.get(2)?,
                    done_at: r.get(3)?,
                    last_error: r.get(4)?,
                })
            })
            .map_err(sql("reading alert deliveries"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(sql("reading alert deliveries"))?;
    }
    Ok(())
}

impl Store {
    /// How far the projection read the audit trail, if it ever did.
    pub fn alert_cursor(&self) -> Result<Option<i64>, StoreError> {
        self.with(|c| {
            c.query_row("SELECT audit_id FROM alert_cursor", [], |r| r.get(0))
                .optional()
                .map_err(sql("reading the alert position"))
        })
    }

    /// The newest audit entry's id (0 for none).
    pub fn audit_max_id(&self) -> Result<i64, StoreError> {
        self.with(|c| {
            c.query_row("SELECT COALESCE(MAX(id), 0) FROM audit", [], |r| r.get(0))
                .map_err(sql("reading the audit position"))
        })
    }

    /// Audit entries of `events` after id `after`, oldest first, at most `limit`.
    pub fn audit_after(
        &self,
        after: i64,
        events: &[&str],
        limit: usize,
    ) -> Result<Vec<(i64, AuditRecord)>, StoreError> {
        let list = events
            .iter()
            .map(|e| format!("'{}'", e.replace('\'', "")))
            .collect::<Vec<_>>()
            .join(",");
        self.with(|c| {
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT id, at, event, who, target, outcome, detail, device, operator FROM audit
                     WHERE id > ?1 AND event IN ({list}) ORDER BY id LIMIT ?2"
                ))
                .map_err(sql("reading the audit trail"))?;
            stmt.query_map(params![after, limit as i64], |r| {
                Ok((
                    r.get(0)?,
                    AuditRecord {
                        at: r.get(1)?,
                        event: r.get(2)?,
                        who: r.get(3)?,
                        target: r.get(4)?,
                        outcome: r.get(5)?,
                        detail: r.get(6)?,
                        device: r.get(7)?,
                        operator: r.get(8)?,
                    },
                ))
            })
            .map_err(sql("reading the audit trail"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(sql("reading the audit trail"))
        })
    }

    /// The projection's per-device timers.
    pub fn alert_states(&self) -> Result<Vec<DeviceAlertState>, StoreError> {
        self.read_rows(
            "SELECT device, offline_at, offline_id, offline_due, offline_alerted, flapping_until FROM alert_devices",
            |r| {
                Ok(DeviceAlertState {
                    device: r.get(0)?,
                    offline_at: r.get(1)?,
                    offline_id: r.get(2)?,
                    offline_due: r.get(3)?,
                    offline_alerted: r.get(4)?,
                    flapping_until: r.get(5)?,
                })
            },
        )
    }

    /// Stores one projection step in one transaction.
    pub fn store_alert_changes(&self, changes: &AlertChanges) -> Result<(), StoreError> {
        let now = now();
        self.with(|c| {
            let fail = || sql("storing alerts");
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(fail())?;
            for a in &changes.alerts {
                let inserted = tx
                    .prepare_cached(
                        "INSERT INTO alerts (key, at, kind, device, severity, summary, detail, relay)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (key) DO NOTHING",
                    )
                    .and_then(|mut s| {
                        s.execute(params![
                            a.key,
                            a.at,
                            a.kind.as_str(),
                            a.device,
                            a.kind.severity(),
                            a.summary,
                            a.detail,
                            changes.relay
                        ])
                    })
                    .map_err(fail())?;
                if inserted == 0 {
                    continue;
                }
                let id = tx.last_insert_rowid();
                for target in &a.targets {
                    tx.prepare_cached(
                        "INSERT OR IGNORE INTO alert_deliveries (alert, target) VALUES (?1, ?2)",
                    )
                    .and_then(|mut s| s.execute(params![id, target]))
                    .map_err(fail())?;
                }
            }
            for s in &changes.states {
                if s.is_idle(now) {
                    tx.prepare_cached("DELETE FROM alert_devices WHERE device = ?1")
                        .and_then(|mut st| st.execute([&s.device]))
                        .map_err(fail())?;
                } else {
                    tx.prepare_cached(
                        "INSERT OR REPLACE INTO alert_devices
                         (device, offline_at, offline_id, offline_due, offline_alerted, flapping_until)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    )
                    .and_then(|mut st| {
                        st.execute(params![
                            s.device,
                            s.offline_at,
                            s.offline_id,
                            s.offline_due,
                            s.offline_alerted,
                            s.flapping_until
                        ])
                    })
                    .map_err(fail())?;
                }
            }
            if let Some(cursor) = changes.cursor {
                tx.execute(
                    "INSERT OR REPLACE INTO alert_cursor (one, audit_id) VALUES (1, ?1)",
                    [cursor],
                )
                .map_err(fail())?;
            }
            tx.commit().map_err(fail())
        })
    }

    /// Whether `device` has a session up (as mirrored by the running relay).
    pub fn device_online(&self, device: &str) -> Result<bool, StoreError> {
        self.with(|c| {
            c.query_row("SELECT 1 FROM online WHERE device = ?1", [device], |_| {
                Ok(())
            })
            .optional()
            .map(|r| r.is_some())
            .map_err(sql("looking up a device session"))
        })
    }

    /// Reconnects of `device` since `since`.
    pub fn reconnects_since(&self, device: &str, since: i64) -> Result<u32, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT COUNT(*) FROM device_connects WHERE device = ?1 AND at >= ?2",
                params![device, since],
                |r| r.get(0),
            )
            .map_err(sql("counting reconnects"))
        })
    }

    /// The oldest alerts still to deliver to `target`, at most `limit`.
    pub fn pending_alerts(
        &self,
        target: &str,
        limit: usize,
    ) -> Result<Vec<AlertRecord>, StoreError> {
        self.with(|c| {
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT {ALERT_COLUMNS} FROM alerts WHERE id IN
                     (SELECT alert FROM alert_deliveries WHERE target = ?1 AND state = 'pending'
                      ORDER BY alert LIMIT ?2) ORDER BY id"
                ))
                .map_err(sql("reading pending alerts"))?;
            stmt.query_map(params![target, limit as i64], alert_row)
                .map_err(sql("reading pending alerts"))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(sql("reading pending alerts"))
        })
    }

    /// Records a post of `ids` to `target`: delivered, or failed with `error`.
    pub fn alerts_attempted(
        &self,
        target: &str,
        ids: &[i64],
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        let now = now();
        self.with(|c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql("recording a delivery"))?;
            for id in ids {
                let done = match error {
                    None => tx
                        .prepare_cached(
                            "UPDATE alert_deliveries SET attempts = attempts + 1, state = 'delivered',
                             done_at = ?3, last_error = NULL WHERE target = ?1 AND alert = ?2",
                        )
                        .and_then(|mut s| s.execute(params![target, id, now])),
                    Some(why) => tx
                        .prepare_cached(
                            "UPDATE alert_deliveries SET attempts = attempts + 1, last_error = ?3
                             WHERE target = ?1 AND alert = ?2",
                        )
                        .and_then(|mut s| s.execute(params![target, id, why])),
                };
                done.map_err(sql("recording a delivery"))?;
            }
            tx.commit().map_err(sql("recording a delivery"))
        })
    }

    /// Gives up what is still pending for `target` from alerts raised before `before`.
    pub fn alerts_give_up(&self, target: &str, before: i64) -> Result<usize, StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE alert_deliveries SET state = 'gave-up', done_at = ?3
                 WHERE target = ?1 AND state = 'pending'
                   AND alert IN (SELECT id FROM alerts WHERE at < ?2)",
                params![target, before, now()],
            )
            .map_err(sql("giving up alerts"))
        })
    }

    /// The newest `limit` alerts (of `device`, if given), oldest first, with deliveries.
    pub fn alerts(
        &self,
        limit: usize,
        device: Option<&str>,
    ) -> Result<Vec<AlertRecord>, StoreError> {
        self.with(|c| {
            let filter = if device.is_some() {
                "WHERE device = ?2"
            } else {
                "WHERE ?2 IS NULL"
            };
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT {ALERT_COLUMNS} FROM
                     (SELECT * FROM alerts {filter} ORDER BY id DESC LIMIT ?1) ORDER BY id"
                ))
                .map_err(sql("reading alerts"))?;
            let mut alerts = stmt
                .query_map(params![limit as i64, device], alert_row)
                .map_err(sql("reading alerts"))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(sql("reading alerts"))?;
            attach_deliveries(c, &mut alerts)?;
            Ok(alerts)
        })
    }

    /// Deletes alerts raised before `before`, and all but the newest `max_rows`.
    pub fn prune_alerts(&self, before: i64, max_rows: u64) -> Result<usize, StoreError> {
        self.with(|c| {
            let old = c
                .execute("DELETE FROM alerts WHERE at < ?1", [before])
                .map_err(sql("pruning alerts"))?;
            let excess = c
                .execute(
                    "DELETE FROM alerts WHERE id <= (SELECT id FROM alerts ORDER BY id DESC LIMIT 1 OFFSET ?1)",
                    [i64::try_from(max_rows).unwrap_or(i64::MAX)],
                )
                .map_err(sql("pruning alerts"))?;
            Ok(old + excess)
        })
    }
}
