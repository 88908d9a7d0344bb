//! The projection: audit entries read in order, and presence timers, turned into alerts.
//!
//! Entries are read by id. On PostgreSQL ids are handed out when a row is inserted and rows
//! become visible when their transaction commits, so a lower id can appear after a higher one
//! was read; the read position therefore trails what was seen by [`SETTLE`], and rows seen
//! in that window are remembered so that none is taken twice. A relay that takes the
//! projection over starts from the stored position: what it reads again raises nothing new,
//! because every alert has a key that is stored once only.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{AlertChanges, AlertsConfig, DeviceAlertState, Kind, NewAlert};
use crate::Relay;
use crate::store::postgres::Pg;
use crate::store::{AuditRecord, Db, StoreError, now};

/// How long a row may stay invisible after a higher id was read (a transaction committing).
const SETTLE: Duration = Duration::from_secs(5);
/// Most audit entries read at once.
const READ_BATCH: usize = 2000;
/// How often a relay that does not lead tries to.
const LEAD_RETRY: Duration = Duration::from_secs(3);
/// The advisory lock whose holder leads the projection in a cluster.
const ALERT_LOCK: i64 = 0x0062_7572_726f_7761;
/// How often old alerts are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// At most this many alerts are kept.
const MAX_ALERTS: u64 = 100_000;

/// The audit events the projection reads.
pub(crate) const EVENTS: [&str; 6] = [
    "online",
    "offline",
    "quarantine",
    "token",
    "lock",
    "console-alert",
];

/// Leads the projection while this relay may, until `shutdown`.
pub(crate) async fn run(
    relay: Arc<Relay>,
    leader: Arc<AtomicBool>,
    wake: watch::Sender<u64>,
    shutdown: CancellationToken,
) {
    loop {
        // On PostgreSQL, leading is holding the advisory lock on a connection of its own.
        let lock = match relay.db.postgres_url() {
            None => None,
            Some(url) => match take_lead(url, &relay.config.relay_id).await {
                Some(pg) => Some(pg),
                None => {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        () = tokio::time::sleep(LEAD_RETRY) => continue,
                    }
                }
            },
        };
        tracing::info!("this relay raises the alerts");
        leader.store(true, Ordering::Relaxed);
        let result = lead(&relay, lock.as_ref(), &wake, &shutdown).await;
        leader.store(false, Ordering::Relaxed);
        match result {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!("alerts paused: {e}");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    () = tokio::time::sleep(LEAD_RETRY) => {}
                }
            }
        }
    }
}

async fn take_lead(url: &str, relay: &str) -> Option<Pg> {
    let pg = Pg::writer(url, relay).await.ok()?;
    pg.try_advisory_lock(ALERT_LOCK).await.ok()?.then_some(pg)
}

/// The projection while this relay leads: returns at shutdown, or with the error that ended
/// the lead (the lock's connection dropped, the database failed).
async fn lead(
    relay: &Arc<Relay>,
    lock: Option<&Pg>,
    wake: &watch::Sender<u64>,
    shutdown: &CancellationToken,
) -> Result<(), StoreError> {
    let db = &relay.db;
    let config = &relay.config.alerts;
    let mut projection = Projection::new(db, config, &relay.config.relay_id).await?;
    let mut pruned = Instant::now();
    loop {
        if lock.is_some_and(Pg::is_closed) {
            return Err(StoreError::Postgres {
                doing: "leading the alerts",
                why: "the connection holding the lead dropped".into(),
            });
        }
        let raised = projection.step(db, config).await?;
        if raised {
            wake.send_modify(|n| *n = n.wrapping_add(1));
        }
        if pruned.elapsed() >= PRUNE_EVERY {
            pruned = Instant::now();
            let keep = i64::try_from(relay.config.audit_keep.as_secs()).unwrap_or(i64::MAX);
            if let Err(e) = db
                .prune_alerts(now().saturating_sub(keep), MAX_ALERTS)
                .await
            {
                tracing::warn!("alert retention: {e}");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(config.poll) => {}
        }
    }
}

/// The projection's state while it leads.
struct Projection {
    relay: String,
    /// Entries up to here are read.
    cursor: i64,
    /// Entries past the cursor already read, with when they were first seen.
    seen: BTreeMap<i64, Instant>,
    /// Per-device timers and dampers that are not idle.
    states: HashMap<String, DeviceAlertState>,
    /// When this lead started: offline timers do not run out before the relays had the time
    /// to take their devices back (after a restart of the relay, say).
    started: i64,
}

impl Projection {
    async fn new(db: &Db, _config: &AlertsConfig, relay: &str) -> Result<Projection, StoreError> {
        let cursor = match db.alert_cursor().await? {
            Some(c) => c,
            // The very first lead: what happened before is history, not news. The starting
            // point is stored at once, so that a relay taking over from this one soon after
            // does not skip what happened in between.
            None => {
                let start = db.audit_max_id().await?;
                db.store_alert_changes(AlertChanges {
                    cursor: Some(start),
                    relay: relay.to_string(),
                    ..AlertChanges::default()
                })
                .await?;
                start
            }
        };
        let states = db
            .alert_states()
            .await?
            .into_iter()
            .map(|s| (s.device.clone(), s))
            .collect();
        Ok(Projection {
            relay: relay.to_string(),
            cursor,
            seen: BTreeMap::new(),
            states,
            started: now(),
        })
    }

    /// Reads what is new, runs the timers, stores the result; true if alerts were raised.
    async fn step(&mut self, db: &Db, config: &AlertsConfig) -> Result<bool, StoreError> {
        let mut changes = AlertChanges {
            relay: self.relay.clone(),
            ..AlertChanges::default()
        };
        let mut touched: Vec<String> = Vec::new();
        let rows = db.audit_after(self.cursor, &EVENTS, READ_BATCH).await?;
        let first_seen = Instant::now();
        for (id, record) in rows {
            if self.seen.contains_key(&id) {
                continue;
            }
            self.seen.insert(id, first_seen);
            if let Some(device) = self.take(db, config, id, &record, &mut changes).await? {
                touched.push(device);
            }
        }
        let now = now();
        self.run_timers(db, config, now, &mut changes, &mut touched)
            .await?;
        // The position moves past rows seen long enough ago that nothing below them can
        // still appear.
        let settled = Instant::now().checked_sub(SETTLE);
        let mut cursor = self.cursor;
        while let Some((&id, &at)) = self.seen.first_key_value() {
            if settled.is_none_or(|s| at > s) {
                break;
            }
            cursor = id;
            self.seen.remove(&id);
        }
        let moved = cursor != self.cursor;
        if moved {
            changes.cursor = Some(cursor);
        }
        touched.sort();
        touched.dedup();
        for device in touched {
            if let Some(state) = self.states.get(&device) {
                changes.states.push(state.clone());
                if state.is_idle(now) {
                    self.states.remove(&device);
                }
            }
        }
        let raised = !changes.alerts.is_empty();
        if raised || !changes.states.is_empty() || moved {
            db.store_alert_changes(changes).await?;
            self.cursor = cursor;
        }
        Ok(raised)
    }

    /// One audit entry; returns the device whose state it changed.
    async fn take(
        &mut self,
        db: &Db,
        config: &AlertsConfig,
        id: i64,
        r: &AuditRecord,
        changes: &mut AlertChanges,
    ) -> Result<Option<String>, StoreError> {
        let alert = |kind: Kind, device: Option<&str>, summary: String| NewAlert {
            key: format!("{}:{id}", kind.as_str()),
            at: r.at,
            kind,
            device: device.map(str::to_string),
            summary,
            detail: format!("{} {} {}: {}", r.event, r.outcome, r.target, r.detail),
            targets: targets(config, kind),
        };
        match r.event.as_str() {
            "offline" => {
                let due = r.at.max(self.started) + secs(config.offline_grace);
                let state = self.state(&r.who);
                if state.offline_at.is_none() {
                    state.offline_at = Some(r.at);
                    state.offline_id = Some(id);
                }
                state.offline_due = Some(due);
                Ok(Some(r.who.clone()))
            }
            "online" => {
                let device = r.who.clone();
                let reconnects = db
                    .reconnects_since(&device, r.at - secs(config.flapping_window))
                    .await?;
                let state = self.state(&device);
                if state.offline_alerted {
                    let away = state.offline_at.map_or(0, |t| r.at.saturating_sub(t));
                    let mut back = alert(
                        Kind::DeviceOnline,
                        Some(&device),
                        format!("device {device} is back online after {}", duration(away)),
                    );
                    back.detail = format!("offline since {}", time(state.offline_at));
                    changes.alerts.push(back);
                }
                state.offline_at = None;
                state.offline_id = None;
                state.offline_due = None;
                state.offline_alerted = false;
                let damped = state.flapping_until.is_some_and(|t| t > r.at);
                if reconnects >= config.flapping_reconnects && !damped {
                    state.flapping_until = Some(r.at + secs(config.flapping_damping));
                    let mut flap = alert(
                        Kind::Flapping,
                        Some(&device),
                        format!(
                            "device {device} is flapping: {reconnects} reconnects within {}",
                            duration(secs(config.flapping_window))
                        ),
                    );
                    flap.detail = format!(
                        "its offline alerts wait until {}",
                        time(state.flapping_until)
                    );
                    changes.alerts.push(flap);
                }
                Ok(Some(device))
            }
            "quarantine" => {
                changes.alerts.push(alert(
                    Kind::Quarantine,
                    Some(&r.who),
                    format!("device {} quarantined: {}", r.who, r.detail),
                ));
                Ok(None)
            }
            "token" => {
                let (kind, verb) = if r.outcome == "ok" {
                    (Kind::TokenUsed, "used")
                } else {
                    (Kind::TokenRefused, "refused")
                };
                changes.alerts.push(alert(
                    kind,
                    None,
                    format!("join token {verb} ({} {}): {}", r.who, r.target, r.detail),
                ));
                Ok(None)
            }
            "lock" => {
                changes.alerts.push(alert(
                    Kind::OperatorLocked,
                    None,
                    format!("operator {} locked: {}", r.who, r.detail),
                ));
                Ok(None)
            }
            "console-alert" => {
                changes.alerts.push(alert(
                    Kind::ConsolePattern,
                    Some(&r.who),
                    format!("console {} of {}: {}", r.target, r.who, r.detail),
                ));
                Ok(None)
            }
            _ => Ok(None),
        }
    }

    /// Offline timers that ran out: alerted if the device is still registered and offline;
    /// a flapping device's wait until its damping ends.
    async fn run_timers(
        &mut self,
        db: &Db,
        config: &AlertsConfig,
        now: i64,
        changes: &mut AlertChanges,
        touched: &mut Vec<String>,
    ) -> Result<(), StoreError> {
        let due: Vec<String> = self
            .states
            .values()
            .filter(|s| s.offline_due.is_some_and(|t| t <= now))
            .map(|s| s.device.clone())
            .collect();
        for device in due {
            let exists = db.device_exists(&device).await?;
            let online = exists && db.device_online(&device).await?;
            let Some(state) = self.states.get_mut(&device) else {
                continue;
            };
            touched.push(device.clone());
            if !exists || online {
                // Removed, or back (its `online` entry follows).
                state.offline_due = None;
                continue;
            }
            if let Some(until) = state.flapping_until.filter(|t| *t > now) {
                state.offline_due = Some(until);
                continue;
            }
            state.offline_due = None;
            state.offline_alerted = true;
            let since = state.offline_at.unwrap_or(now);
            changes.alerts.push(NewAlert {
                key: format!(
                    "{}:{}",
                    Kind::DeviceOffline.as_str(),
                    state.offline_id.unwrap_or_default()
                ),
                at: now,
                kind: Kind::DeviceOffline,
                device: Some(device.clone()),
                summary: format!(
                    "device {device} offline for {} (since {})",
                    duration(now.saturating_sub(since)),
                    time(Some(since))
                ),
                detail: format!(
                    "no session on any relay for longer than the grace of {}",
                    duration(secs(config.offline_grace))
                ),
                targets: targets(config, Kind::DeviceOffline),
            });
        }
        Ok(())
    }

    fn state(&mut self, device: &str) -> &mut DeviceAlertState {
        self.states
            .entry(device.to_string())
            .or_insert_with(|| DeviceAlertState {
                device: device.to_string(),
                ..DeviceAlertState::default()
            })
    }
}

/// The webhooks that take `kind`.
fn targets(config: &AlertsConfig, kind: Kind) -> Vec<String> {
    config
        .webhooks
        .iter()
        .filter(|w| w.takes(kind))
        .map(|w| w.target.clone())
        .collect()
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 4)
}

fn time(at: Option<i64>) -> String {
    at.map_or_else(|| "-".into(), burrow_proto::time::format_rfc3339)
}

/// `5 min`, `2 h 3 min`, `40 s`.
pub(crate) fn duration(secs: i64) -> String {
    let secs = secs.max(0);
    match secs {
        0..120 => format!("{secs} s"),
        120..7200 => format!("{} min", secs / 60),
        _ => format!("{} h {} min", secs / 3600, secs % 3600 / 60),
    }
}
