//! Device health on PostgreSQL: its table, what each session start, end, probe and report
//! writes (by the relay holding the session), and the reads of `device ls` and `device show`.

use super::*;
use crate::store::health::{DeviceHealth, HealthRow, OfflineReason, RECONNECT_WINDOW_SECS};

/// Schema step: the health table (narrow: what listings read, so that `device ls` stays
/// quick), the details `device show` adds (the report, the ending's detail, the probe's error),
/// reconnects of the last day, and the audit by device.
pub(super) const HEALTH_SCHEMA: &str = "
CREATE TABLE device_health (
    device TEXT PRIMARY KEY REFERENCES devices(name) ON DELETE CASCADE,
    agent TEXT NOT NULL DEFAULT '',
    since BIGINT,
    ended BIGINT,
    reason TEXT NOT NULL DEFAULT '',
    probe_at BIGINT,
    probe_ok BOOLEAN,
    probe_rtt_ms BIGINT,
    report_at BIGINT,
    link TEXT,
    signal_dbm INTEGER,
    temp_c INTEGER,
    throttled BIGINT
);
CREATE TABLE device_health_detail (
    device TEXT PRIMARY KEY REFERENCES devices(name) ON DELETE CASCADE,
    reason_detail TEXT NOT NULL DEFAULT '',
    probe_error TEXT,
    report TEXT
);
CREATE TABLE device_connects (
    device TEXT NOT NULL REFERENCES devices(name) ON DELETE CASCADE,
    at BIGINT NOT NULL
);
CREATE INDEX device_connects_device ON device_connects (device, at);
CREATE INDEX device_connects_at ON device_connects (at);
CREATE INDEX audit_who ON audit (who, id);
";

/// A session came up on `relay`: the device's software and when. It counts as a reconnect
/// when the device had been seen before and this is not a second session of an agent process
/// already online through another relay. Call before `last_seen` moves, after the session's
/// own `online` row is in.
pub(super) async fn online<C: tokio_postgres::GenericClient>(
    c: &C,
    relay: &str,
    device: &str,
    session: i64,
    instance: &str,
    agent: &str,
    now: i64,
) -> Result<(), StoreError> {
    if agent.is_empty() {
        return Ok(());
    }
    let fail = pg("recording a device online");
    let reconnect: bool = c
        .query_opt(
            "SELECT d.last_seen IS NOT NULL AND NOT EXISTS (
                 SELECT 1 FROM online o WHERE o.device = $1 AND o.instance = $2 AND $2 <> ''
                    AND NOT (o.relay = $3 AND o.session = $4))
               FROM devices d WHERE d.name = $1",
            &[&device, &instance, &relay, &session],
        )
        .await
        .map_err(fail)?
        .is_some_and(|r| r.get(0));
    c.execute(
        "INSERT INTO device_health (device, agent, since) SELECT $1, $2, $3
          WHERE EXISTS (SELECT 1 FROM devices WHERE name = $1)
         ON CONFLICT (device) DO UPDATE SET agent = excluded.agent, since = excluded.since",
        &[&device, &agent, &now],
    )
    .await
    .map_err(pg("recording a device online"))?;
    if reconnect {
        c.execute(
            "INSERT INTO device_connects (device, at) SELECT $1, $2
              WHERE EXISTS (SELECT 1 FROM devices WHERE name = $1)",
            &[&device, &now],
        )
        .await
        .map_err(pg("counting a reconnect"))?;
        c.execute(
            "DELETE FROM device_connects WHERE device = $1 AND at < $2",
            &[&device, &(now - RECONNECT_WINDOW_SECS)],
        )
        .await
        .map_err(pg("counting a reconnect"))?;
    }
    Ok(())
}

/// A session ended, a probe ran, or the agent reported.
pub(super) async fn apply<C: tokio_postgres::GenericClient>(
    c: &C,
    w: &Write,
) -> Result<(), StoreError> {
    match w {
        Write::Offline {
            device,
            reason,
            detail,
            ..
        } if !reason.is_empty() => {
            c.execute(
                "UPDATE device_health SET ended = $2, reason = $3 WHERE device = $1",
                &[device, &now(), reason],
            )
            .await
            .map_err(pg("recording a device offline"))?;
            detail_set(c, device, "reason_detail", detail).await?;
        }
        Write::Probe {
            device,
            ok,
            rtt_ms,
            error,
        } => {
            let error = (!error.is_empty()).then_some(error);
            c.execute(
                "UPDATE device_health SET probe_at = $2, probe_ok = $3, probe_rtt_ms = $4
                  WHERE device = $1",
                &[device, &now(), ok, &i64::from(*rtt_ms)],
            )
            .await
            .map_err(pg("recording a probe"))?;
            detail_set(c, device, "probe_error", &error).await?;
        }
        Write::Health {
            device,
            report,
            link,
            signal_dbm,
            temp_c,
            throttled,
        } => {
            c.execute(
                "UPDATE device_health SET report_at = $2, link = $3, signal_dbm = $4,
                        temp_c = $5, throttled = $6 WHERE device = $1",
                &[
                    device,
                    &now(),
                    link,
                    signal_dbm,
                    temp_c,
                    &throttled.map(i64::from),
                ],
            )
            .await
            .map_err(pg("recording a health report"))?;
            detail_set(c, device, "report", report).await?;
        }
        _ => {}
    }
    Ok(())
}

/// Sets one column of a device's details.
async fn detail_set<C: tokio_postgres::GenericClient>(
    c: &C,
    device: &str,
    column: &'static str,
    value: &(dyn tokio_postgres::types::ToSql + Sync),
) -> Result<(), StoreError> {
    c.execute(
        &format!(
            "INSERT INTO device_health_detail (device, {column}) SELECT $1, $2
              WHERE EXISTS (SELECT 1 FROM devices WHERE name = $1)
             ON CONFLICT (device) DO UPDATE SET {column} = excluded.{column}"
        ),
        &[&device, value],
    )
    .await
    .map_err(pg("recording device health"))?;
    Ok(())
}

/// The health of a listing's row, from its columns at `at` on (see
/// [`crate::store::health::LISTED_HEALTH`]).
pub(super) fn listed(r: &tokio_postgres::Row, at: usize) -> DeviceHealth {
    let mut h = HealthRow::new(
        r.get(at),
        r.get(at + 1),
        r.get(at + 2),
        r.get(at + 3),
        (r.get(at + 4), r.get(at + 5), r.get(at + 6)),
        r.get(at + 7),
        r.get(at + 8),
        (r.get(at + 9), r.get(at + 10), r.get(at + 11)),
    )
    .health;
    let n: Option<i64> = r.get(at + 12);
    h.reconnects_24h = n.map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX));
    h
}

/// At start of `relay`: the sessions it left up ended with it.
pub(super) async fn interrupted(
    tx: &tokio_postgres::Transaction<'_>,
    relay: &str,
    at: i64,
) -> Result<u64, StoreError> {
    tx.execute(
        "UPDATE device_health_detail
            SET reason_detail = 'the relay stopped while the device session was up'
          WHERE device IN (SELECT device FROM online WHERE relay = $1)",
        &[&relay],
    )
    .await
    .map_err(pg("marking interrupted sessions"))?;
    tx.execute(
        "UPDATE device_health SET ended = $2, reason = $3
          WHERE device IN (SELECT device FROM online WHERE relay = $1)",
        &[&relay, &at, &OfflineReason::RelayStopped.as_str()],
    )
    .await
    .map_err(pg("marking interrupted sessions"))
}

impl Pg {
    /// What `device show` adds to a device's listing (see `Store::device_extra`).
    pub(crate) async fn device_extra(
        &self,
        name: &str,
        events: usize,
    ) -> Result<(HealthRow, Vec<AuditRecord>), StoreError> {
        let extra = self
            .client
            .query_opt(
                "SELECT reason_detail, probe_error, report FROM device_health_detail WHERE device = $1",
                &[&name],
            )
            .await
            .map_err(pg("reading device health"))?
            .map(|r| HealthRow {
                reason_detail: r
                    .get::<_, Option<String>>(0)
                    .filter(|d: &String| !d.is_empty()),
                probe_error: r.get(1),
                report: r.get(2),
                ..HealthRow::default()
            })
            .unwrap_or_default();
        let limit = i64::try_from(events).unwrap_or(i64::MAX);
        let rows = self
            .client
            .query(
                "SELECT at, event, who, target, outcome, detail, device, operator FROM
                   (SELECT * FROM audit WHERE who = $1 ORDER BY id DESC LIMIT $2) a ORDER BY id",
                &[&name, &limit],
            )
            .await
            .map_err(pg("reading a device's audit entries"))?;
        let events = rows
            .iter()
            .map(|r| AuditRecord {
                at: r.get(0),
                event: r.get(1),
                who: r.get(2),
                target: r.get(3),
                outcome: r.get(4),
                detail: r.get(5),
                device: r.get(6),
                operator: r.get(7),
            })
            .collect();
        Ok((extra, events))
    }
}
