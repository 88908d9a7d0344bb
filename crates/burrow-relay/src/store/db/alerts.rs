//! Alerts and device health as the relay and the CLI reach them, on either backend.

use super::*;
use crate::alerts::{AlertChanges, AlertRecord, DeviceAlertState};
use crate::store::health::DeviceDetail;

/// Audit entries `device show` prints.
const SHOW_EVENTS: usize = 20;
/// Alerts `device show` prints.
const SHOW_ALERTS: usize = 10;

impl Db {
    /// How far the alert projection read the audit trail, if it ever did.
    pub async fn alert_cursor(&self) -> Result<Option<i64>, StoreError> {
        self.read(
            |s| s.alert_cursor(),
            async |p| p.alert_cursor().await,
            |_| None,
        )
        .await
    }

    /// The newest audit entry's id.
    pub async fn audit_max_id(&self) -> Result<i64, StoreError> {
        self.read(
            |s| s.audit_max_id(),
            async |p| p.audit_max_id().await,
            |_| None,
        )
        .await
    }

    /// Audit entries of `events` after id `after`, oldest first, at most `limit`.
    pub async fn audit_after(
        &self,
        after: i64,
        events: &'static [&'static str],
        limit: usize,
    ) -> Result<Vec<(i64, AuditRecord)>, StoreError> {
        self.read(
            move |s| s.audit_after(after, events, limit),
            async |p| p.audit_after(after, events, limit).await,
            |_| None,
        )
        .await
    }

    /// The alert projection's per-device timers.
    pub async fn alert_states(&self) -> Result<Vec<DeviceAlertState>, StoreError> {
        self.read(
            |s| s.alert_states(),
            async |p| p.alert_states().await,
            |_| None,
        )
        .await
    }

    /// Stores one step of the alert projection in one transaction.
    pub async fn store_alert_changes(&self, changes: AlertChanges) -> Result<(), StoreError> {
        let copy = changes.clone();
        self.change(
            move |s| s.store_alert_changes(&copy),
            async |p| p.store_alert_changes(&changes).await,
        )
        .await
    }

    /// Whether `device` has a session up anywhere.
    pub async fn device_online(&self, device: &str) -> Result<bool, StoreError> {
        let d = device.to_string();
        self.read(
            move |s| s.device_online(&d),
            async |p| p.device_online(device).await,
            |_| None,
        )
        .await
    }

    /// Reconnects of `device` since `since` (seconds since the epoch).
    pub async fn reconnects_since(&self, device: &str, since: i64) -> Result<u32, StoreError> {
        let d = device.to_string();
        self.read(
            move |s| s.reconnects_since(&d, since),
            async |p| p.reconnects_since(device, since).await,
            |_| None,
        )
        .await
    }

    /// The oldest alerts still to deliver to `target`.
    pub async fn pending_alerts(
        &self,
        target: &str,
        limit: usize,
    ) -> Result<Vec<AlertRecord>, StoreError> {
        let t = target.to_string();
        self.read(
            move |s| s.pending_alerts(&t, limit),
            async |p| p.pending_alerts(target, limit).await,
            |_| None,
        )
        .await
    }

    /// Records a post of `ids` to `target`: delivered, or failed with `error`.
    pub async fn alerts_attempted(
        &self,
        target: &str,
        ids: &[i64],
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        let (t, i, e) = (target.to_string(), ids.to_vec(), error.map(str::to_string));
        self.read(
            move |s| s.alerts_attempted(&t, &i, e.as_deref()),
            async |p| p.alerts_attempted(target, ids, error).await,
            |_| None,
        )
        .await
    }

    /// Gives up what is still pending for `target` from alerts raised before `before`.
    pub async fn alerts_give_up(&self, target: &str, before: i64) -> Result<usize, StoreError> {
        let t = target.to_string();
        self.read(
            move |s| s.alerts_give_up(&t, before),
            async |p| p.alerts_give_up(target, before).await,
            |_| None,
        )
        .await
    }

    /// The newest `limit` alerts (of `device`, if given), oldest first, with deliveries.
    pub async fn alerts(
        &self,
        limit: usize,
        device: Option<&str>,
    ) -> Result<Vec<AlertRecord>, StoreError> {
        let d = device.map(str::to_string);
        self.read(
            move |s| s.alerts(limit, d.as_deref()),
            async |p| p.alerts(limit, device).await,
            |_| None,
        )
        .await
    }

    /// Deletes alerts raised before `before`, and all but the newest `max_rows`.
    pub async fn prune_alerts(&self, before: i64, max_rows: u64) -> Result<usize, StoreError> {
        self.read(
            move |s| s.prune_alerts(before, max_rows),
            async |p| p.prune_alerts(before, max_rows).await,
            |_| None,
        )
        .await
    }

    /// Everything `device show NAME` prints: the listing's record, how its last session
    /// ended, the last probe's error, the agent's last report, recent audit entries and
    /// alerts.
    pub async fn device_detail(&self, name: &str) -> Result<DeviceDetail, StoreError> {
        let device = self
            .devices()
            .await?
            .into_iter()
            .find(|d| d.name == name)
            .ok_or_else(|| StoreError::NoDevice(name.to_string()))?;
        let n = name.to_string();
        let (extra, events) = self
            .read(
                move |s| s.device_extra(&n, SHOW_EVENTS),
                async |p| p.device_extra(name, SHOW_EVENTS).await,
                |_| None,
            )
            .await?;
        let alerts = self.alerts(SHOW_ALERTS, Some(name)).await?;
        Ok(DeviceDetail {
            device,
            reason_detail: extra.reason_detail,
            probe_error: extra.probe_error,
            report: extra.report.and_then(|r| serde_json::from_str(&r).ok()),
            events,
            alerts,
        })
    }
}
