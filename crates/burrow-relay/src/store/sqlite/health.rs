//! Device health on SQLite: its table, what each session start, end, probe and report
//! writes, and the reads of `device ls` and `device show`.

use super::*;
use crate::store::health::{DeviceHealth, HealthRow, OfflineReason, RECONNECT_WINDOW_SECS};

/// Schema step: the health table (narrow: what listings read, so that `device ls` stays
/// quick), the details `device show` adds (the report, the ending's detail, the probe's error),
/// reconnects of the last day, and the audit by device.
pub(super) const HEALTH_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS device_health (
    device TEXT PRIMARY KEY REFERENCES devices(name) ON DELETE CASCADE,
    agent TEXT NOT NULL DEFAULT '',
    since INTEGER,
    ended INTEGER,
    reason TEXT NOT NULL DEFAULT '',
    probe_at INTEGER,
    probe_ok INTEGER,
    probe_rtt_ms INTEGER,
    report_at INTEGER,
    link TEXT,
    signal_dbm INTEGER,
    temp_c INTEGER,
    throttled INTEGER
);
CREATE TABLE IF NOT EXISTS device_health_detail (
    device TEXT PRIMARY KEY REFERENCES devices(name) ON DELETE CASCADE,
    reason_detail TEXT NOT NULL DEFAULT '',
    probe_error TEXT,
    report TEXT
);
CREATE TABLE IF NOT EXISTS device_connects (
    device TEXT NOT NULL REFERENCES devices(name) ON DELETE CASCADE,
    at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS device_connects_device ON device_connects (device, at);
CREATE INDEX IF NOT EXISTS device_connects_at ON device_connects (at);
CREATE INDEX IF NOT EXISTS audit_who ON audit (who, id);
";

/// A session came up: the device's software and when; a reconnect counted when the device had
/// been seen before (call before `last_seen` moves).
pub(super) fn online(c: &Connection, device: &str, agent: &str, now: i64) -> rusqlite::Result<()> {
    if agent.is_empty() {
        return Ok(());
    }
    let seen_before: bool = c
        .prepare_cached("SELECT last_seen IS NOT NULL FROM devices WHERE name = ?1")?
        .query_row([device], |r| r.get(0))
        .optional()?
        .unwrap_or(false);
    c.prepare_cached(
        "INSERT INTO device_health (device, agent, since) SELECT ?1, ?2, ?3
         WHERE EXISTS (SELECT 1 FROM devices WHERE name = ?1)
         ON CONFLICT (device) DO UPDATE SET agent = excluded.agent, since = excluded.since",
    )?
    .execute(params![device, agent, now])?;
    if seen_before {
        c.prepare_cached("INSERT INTO device_connects (device, at) VALUES (?1, ?2)")?
            .execute(params![device, now])?;
        c.prepare_cached("DELETE FROM device_connects WHERE device = ?1 AND at < ?2")?
            .execute(params![device, now - RECONNECT_WINDOW_SECS])?;
    }
    Ok(())
}

/// A session ended: how, and when.
pub(super) fn offline(
    c: &Connection,
    device: &str,
    reason: &str,
    detail: &str,
    now: i64,
) -> rusqlite::Result<()> {
    if reason.is_empty() {
        return Ok(());
    }
    c.prepare_cached("UPDATE device_health SET ended = ?2, reason = ?3 WHERE device = ?1")?
        .execute(params![device, now, reason])?;
    detail_set(c, device, "reason_detail", &detail)
}

/// Sets one column of a device's details.
fn detail_set(
    c: &Connection,
    device: &str,
    column: &'static str,
    value: &dyn rusqlite::ToSql,
) -> rusqlite::Result<()> {
    c.prepare_cached(&format!(
        "INSERT INTO device_health_detail (device, {column}) SELECT ?1, ?2
         WHERE EXISTS (SELECT 1 FROM devices WHERE name = ?1)
         ON CONFLICT (device) DO UPDATE SET {column} = excluded.{column}"
    ))?
    .execute(params![device, value])?;
    Ok(())
}

/// Applies a probe result or a health report.
pub(super) fn apply(c: &Connection, w: &Write) -> rusqlite::Result<()> {
    match w {
        Write::Probe {
            device,
            ok,
            rtt_ms,
            error,
        } => {
            let error = (!error.is_empty()).then_some(error);
            c.prepare_cached(
                "UPDATE device_health SET probe_at = ?2, probe_ok = ?3, probe_rtt_ms = ?4
                 WHERE device = ?1",
            )?
            .execute(params![device, now(), ok, rtt_ms])?;
            detail_set(c, device, "probe_error", &error)?;
        }
        Write::Health {
            device,
            report,
            link,
            signal_dbm,
            temp_c,
            throttled,
        } => {
            c.prepare_cached(
                "UPDATE device_health SET report_at = ?2, link = ?3, signal_dbm = ?4,
                 temp_c = ?5, throttled = ?6 WHERE device = ?1",
            )?
            .execute(params![device, now(), link, signal_dbm, temp_c, throttled])?;
            detail_set(c, device, "report", report)?;
        }
        _ => {}
    }
    Ok(())
}

/// At start: the sessions a stopped relay left up ended with it.
pub(super) fn interrupted(c: &Connection, at: i64) -> rusqlite::Result<usize> {
    c.execute(
        "UPDATE device_health_detail SET reason_detail = 'the relay stopped while the device session was up'
         WHERE device IN (SELECT device FROM online)",
        [],
    )?;
    c.execute(
        "UPDATE device_health SET ended = ?1, reason = ?2 WHERE device IN (SELECT device FROM online)",
        params![at, OfflineReason::RelayStopped.as_str()],
    )
}

/// The health of a listing's row, from its columns at `at` on (see [`LISTED_HEALTH`]).
pub(super) fn listed(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<DeviceHealth> {
    let mut h = HealthRow::new(
        r.get(at)?,
        r.get(at + 1)?,
        r.get(at + 2)?,
        r.get(at + 3)?,
        (r.get(at + 4)?, r.get(at + 5)?, r.get(at + 6)?),
        r.get(at + 7)?,
        r.get(at + 8)?,
        (r.get(at + 9)?, r.get(at + 10)?, r.get(at + 11)?),
    )
    .health;
    h.reconnects_24h = r.get::<_, Option<u32>>(at + 12)?.unwrap_or(0);
    Ok(h)
}

impl Store {
    /// What `device show` adds to a device's listing: the ending's detail, the probe's
    /// error, the last report, and the device's last `events` audit entries.
    pub(crate) fn device_extra(
        &self,
        name: &str,
        events: usize,
    ) -> Result<(HealthRow, Vec<AuditRecord>), StoreError> {
        self.with(|c| {
            let extra = c
                .query_row(
                    "SELECT reason_detail, probe_error, report FROM device_health_detail WHERE device = ?1",
                    [name],
                    |r| {
                        Ok(HealthRow {
                            reason_detail: r.get::<_, Option<String>>(0)?.filter(|d| !d.is_empty()),
                            probe_error: r.get(1)?,
                            report: r.get(2)?,
                            ..HealthRow::default()
                        })
                    },
                )
                .optional()
                .map_err(sql("reading device health"))?
                .unwrap_or_default();
            let mut stmt = c
                .prepare_cached(
                    "SELECT at, event, who, target, outcome, detail, device, operator FROM
                     (SELECT * FROM audit WHERE who = ?1 ORDER BY id DESC LIMIT ?2) ORDER BY id",
                )
                .map_err(sql("reading a device's audit entries"))?;
            let events = stmt
                .query_map(params![name, events as i64], |r| {
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
                .map_err(sql("reading a device's audit entries"))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(sql("reading a device's audit entries"))?;
            Ok((extra, events))
        })
    }
}
