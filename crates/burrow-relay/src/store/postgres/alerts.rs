//! Alerts on PostgreSQL: the alerts with their deliveries, the projection's per-device timers
//! and its position in the audit trail, shared by the relays of a cluster (one leads).

use super::*;
use crate::alerts::{AlertChanges, AlertRecord, Delivery, DeviceAlertState};

/// Schema step: alerts, deliveries, the projection's state.
pub(super) const ALERTS_SCHEMA: &str = "
CREATE TABLE alerts (
    id BIGSERIAL PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    at BIGINT NOT NULL,
    kind TEXT NOT NULL,
    device TEXT,
    severity TEXT NOT NULL,
    summary TEXT NOT NULL,
    detail TEXT NOT NULL,
    relay TEXT NOT NULL DEFAULT ''
);
CREATE INDEX alerts_device ON alerts (device, id);
CREATE TABLE alert_deliveries (
    alert BIGINT NOT NULL REFERENCES alerts(id) ON DELETE CASCADE,
    target TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    done_at BIGINT,
    last_error TEXT,
    PRIMARY KEY (target, alert)
);
CREATE INDEX alert_deliveries_alert ON alert_deliveries (alert);
CREATE TABLE alert_devices (
    device TEXT PRIMARY KEY,
    offline_at BIGINT,
    offline_id BIGINT,
    offline_due BIGINT,
    offline_alerted BOOLEAN NOT NULL DEFAULT false,
    flapping_until BIGINT
);
CREATE TABLE alert_cursor (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    audit_id BIGINT NOT NULL
);
";

const ALERT_COLUMNS: &str = "id, at, kind, device, severity, summary, detail, relay";

fn alert_row(r: &tokio_postgres::Row) -> AlertRecord {
    AlertRecord {
        id: r.get(0),
        at: r.get(1),
        kind: r.get(2),
        device: r.get(3),
        severity: r.get(4),
        summary: r.get(5),
        detail: r.get(6),
        relay: r.get(7),
        deliveries: Vec::new(),
    }
}

impl Pg {
    /// Takes the advisory lock `key` on this connection if no other session holds it; it is
    /// held until the connection ends.
    pub async fn try_advisory_lock(&self, key: i64) -> Result<bool, StoreError> {
        let row = self
            .client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
            .await
            .map_err(pg("taking an advisory lock"))?;
        Ok(row.get(0))
    }

    /// How far the projection read the audit trail, if it ever did.
    pub async fn alert_cursor(&self) -> Result<Option<i64>, StoreError> {
        let row = self
            .client
            .query_opt("SELECT audit_id FROM alert_cursor", &[])
            .await
            .map_err(pg("reading the alert position"))?;
        Ok(row.map(|r| r.get(0)))
    }

    /// The newest audit entry's id (0 for none).
    pub async fn audit_max_id(&self) -> Result<i64, StoreError> {
        let row = self
            .client
            .query_one("SELECT COALESCE(MAX(id), 0) FROM audit", &[])
            .await
            .map_err(pg("reading the audit position"))?;
        Ok(row.get(0))
    }

    /// Audit entries of `events` after id `after`, oldest first, at most `limit`.
    pub async fn audit_after(
        &self,
        after: i64,
        events: &[&str],
        limit: usize,
    ) -> Result<Vec<(i64, AuditRecord)>, StoreError> {
        let events: Vec<String> = events.iter().map(|e| e.to_string()).collect();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .client
            .query(
                "SELECT id, at, event, who, target, outcome, detail, device, operator FROM audit
                  WHERE id > $1 AND event = ANY($2) ORDER BY id LIMIT $3",
                &[&after, &events, &limit],
            )
            .await
            .map_err(pg("reading the audit trail"))?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    r.get(0),
                    AuditRecord {
                        at: r.get(1),
                        event: r.get(2),
                        who: r.get(3),
                        target: r.get(4),
                        outcome: r.get(5),
                        detail: r.get(6),
                        device: r.get(7),
                        operator: r.get(8),
                    },
                )
            })
            .collect())
    }

    /// The projection's per-device timers.
    pub async fn alert_states(&self) -> Result<Vec<DeviceAlertState>, StoreError> {
        let rows = self
            .client
            .query(
                "SELECT device, offline_at, offline_id, offline_due, offline_alerted, flapping_until FROM alert_devices",
                &[],
            )
            .await
            .map_err(pg("reading alert timers"))?;
        Ok(rows
            .iter()
            .map(|r| DeviceAlertState {
                device: r.get(0),
                offline_at: r.get(1),
                offline_id: r.get(2),
                offline_due: r.get(3),
                offline_alerted: r.get(4),
                flapping_until: r.get(5),
            })
            .collect())
    }

    /// Stores one projection step in one transaction.
    pub async fn store_alert_changes(&mut self, changes: &AlertChanges) -> Result<(), StoreError> {
        let now = now();
        let fail = || pg("storing alerts");
        let tx = self.client.transaction().await.map_err(fail())?;
        for a in &changes.alerts {
            let row = tx
                .query_opt(
                    "INSERT INTO alerts (key, at, kind, device, severity, summary, detail, relay)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (key) DO NOTHING RETURNING id",
                    &[
                        &a.key,
                        &a.at,
                        &a.kind.as_str(),
                        &a.device,
                        &a.kind.severity(),
                        &a.summary,
                        &a.detail,
                        &changes.relay,
                    ],
                )
                .await
                .map_err(fail())?;
            let Some(row) = row else { continue };
            let id: i64 = row.get(0);
            for target in &a.targets {
                tx.execute(
                    "INSERT INTO alert_deliveries (alert, target) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    &[&id, target],
                )
                .await
                .map_err(fail())?;
            }
        }
        for s in &changes.states {
            if s.is_idle(now) {
                tx.execute("DELETE FROM alert_devices WHERE device = $1", &[&s.device])
                    .await
                    .map_err(fail())?;
            } else {
                tx.execute(
                    "INSERT INTO alert_devices (device, offline_at, offline_id, offline_due, offline_alerted, flapping_until)
                     VALUES ($1, $2, $3, $4, $5, $6)
                     ON CONFLICT (device) DO UPDATE SET offline_at = $2, offline_id = $3,
                        offline_due = $4, offline_alerted = $5, flapping_until = $6",
                    &[
                        &s.device,
                        &s.offline_at,
                        &s.offline_id,
                        &s.offline_due,
                        &s.offline_alerted,
                        &s.flapping_until,
                    ],
                )
                .await
                .map_err(fail())?;
            }
        }
        if let Some(cursor) = changes.cursor {
            tx.execute(
                "INSERT INTO alert_cursor (one, audit_id) VALUES (1, $1)
                 ON CONFLICT (one) DO UPDATE SET audit_id = $1",
                &[&cursor],
            )
            .await
            .map_err(fail())?;
        }
        tx.commit().await.map_err(fail())
    }

    /// Whether `device` has a session on a live relay.
    pub async fn device_online(&self, device: &str) -> Result<bool, StoreError> {
        Ok(!self.sessions_of(device).await?.is_empty())
    }

    /// Reconnects of `device` since `since`.
    pub async fn reconnects_since(&self, device: &str, since: i64) -> Result<u32, StoreError> {
        let row = self
            .client
            .query_one(
                "SELECT COUNT(*) FROM device_connects WHERE device = $1 AND at >= $2",
                &[&device, &since],
            )
            .await
            .map_err(pg("counting reconnects"))?;
        Ok(u32::try_from(row.get::<_, i64>(0)).unwrap_or(u32::MAX))
    }

    /// The oldest alerts still to deliver to `target`, at most `limit`.
    pub async fn pending_alerts(
        &self,
        target: &str,
        limit: usize,
    ) -> Result<Vec<AlertRecord>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .client
            .query(
                &format!(
                    "SELECT {ALERT_COLUMNS} FROM alerts WHERE id IN
                       (SELECT alert FROM alert_deliveries WHERE target = $1 AND state = 'pending'
                         ORDER BY alert LIMIT $2) ORDER BY id"
                ),
                &[&target, &limit],
            )
            .await
            .map_err(pg("reading pending alerts"))?;
        Ok(rows.iter().map(alert_row).collect())
    }

    /// Records a post of `ids` to `target`: delivered, or failed with `error`.
    pub async fn alerts_attempted(
        &self,
        target: &str,
        ids: &[i64],
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        let ids = ids.to_vec();
        let done = match error {
            None => {
                self.client
                    .execute(
                        "UPDATE alert_deliveries SET attempts = attempts + 1, state = 'delivered',
                            done_at = $3, last_error = NULL WHERE target = $1 AND alert = ANY($2)",
                        &[&target, &ids, &now()],
                    )
                    .await
            }
            Some(why) => {
                self.client
                    .execute(
                        "UPDATE alert_deliveries SET attempts = attempts + 1, last_error = $3
                          WHERE target = $1 AND alert = ANY($2)",
                        &[&target, &ids, &why],
                    )
                    .await
            }
        };
        done.map_err(pg("recording a delivery"))?;
        Ok(())
    }

    /// Gives up what is still pending for `target` from alerts raised before `before`.
    pub async fn alerts_give_up(&self, target: &str, before: i64) -> Result<usize, StoreError> {
        let n = self
            .client
            .execute(
                "UPDATE alert_deliveries SET state = 'gave-up', done_at = $3
                  WHERE target = $1 AND state = 'pending'
                    AND alert IN (SELECT id FROM alerts WHERE at < $2)",
                &[&target, &before, &now()],
            )
            .await
            .map_err(pg("giving up alerts"))?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    /// The newest `limit` alerts (of `device`, if given), oldest first, with deliveries.
    pub async fn alerts(
        &self,
        limit: usize,
        device: Option<&str>,
    ) -> Result<Vec<AlertRecord>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .client
            .query(
                &format!(
                    "SELECT {ALERT_COLUMNS} FROM
                       (SELECT * FROM alerts WHERE ($2::TEXT IS NULL OR device = $2)
                         ORDER BY id DESC LIMIT $1) a ORDER BY id"
                ),
                &[&limit, &device],
            )
            .await
            .map_err(pg("reading alerts"))?;
        let mut alerts: Vec<AlertRecord> = rows.iter().map(alert_row).collect();
        let ids: Vec<i64> = alerts.iter().map(|a| a.id).collect();
        let rows = self
            .client
            .query(
                "SELECT alert, target, state, attempts, done_at, last_error FROM alert_deliveries
                  WHERE alert = ANY($1) ORDER BY alert, target",
                &[&ids],
            )
            .await
            .map_err(pg("reading alert deliveries"))?;
        let mut by_alert: HashMap<i64, Vec<Delivery>> = HashMap::new();
        for r in &rows {
            by_alert.entry(r.get(0)).or_default().push(Delivery {
                target: r.get(1),
                state: r.get(2),
                attempts: u32::try_from(r.get::<_, i32>(3)).unwrap_or(0),
                done_at: r.get(4),
                last_error: r.get(5),
            });
        }
        for a in &mut alerts {
            a.deliveries = by_alert.remove(&a.id).unwrap_or_default();
        }
        Ok(alerts)
    }

    /// Deletes alerts raised before `before`, and all but the newest `max_rows`.
    pub async fn prune_alerts(&self, before: i64, max_rows: u64) -> Result<usize, StoreError> {
        let old = self
            .client
            .execute("DELETE FROM alerts WHERE at < $1", &[&before])
            .await
            .map_err(pg("pruning alerts"))?;
        let keep = i64::try_from(max_rows).unwrap_or(i64::MAX);
        let excess = self
            .client
            .execute(
                "DELETE FROM alerts WHERE id <= (SELECT id FROM alerts ORDER BY id DESC LIMIT 1 OFFSET $1)",
                &[&keep],
            )
            .await
            .map_err(pg("pruning alerts"))?;
        Ok(usize::try_from(old.saturating_add(excess)).unwrap_or(usize::MAX))
    }
}
