//! The agent's health report about its link and board: read every `health_interval`, kept for
//! the sessions, and sent by each session when it is due (its first chance, a notable change,
//! the periodic refresh), with the next packet that session sends anyway.
//!
//! # Layout
//! - `modem`: the cellular link from ModemManager (`mmcli`).
//! - `board`: a Raspberry Pi's power and throttling flags, temperature, disk, uptime.

mod board;
mod modem;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use burrow_proto::health::{Cadence, Report};
use burrow_ssh::channel::GlobalRequest;
use burrow_ssh::driver::Handle;
use tokio_util::sync::CancellationToken;

use crate::status::StatusBoard;

/// The latest report, shared by the sessions.
pub(crate) struct Health {
    latest: Mutex<Option<Report>>,
    cadence: Cadence,
    /// Reports handed to sessions to send, in this agent's life.
    sent: AtomicU64,
}

impl Health {
    /// Reads every `interval`; unchanged reports go again after `refresh`.
    pub(crate) fn new(interval: Duration, refresh: Duration) -> Health {
        Health {
            latest: Mutex::new(None),
            cadence: Cadence::new(interval, refresh),
            sent: AtomicU64::new(0),
        }
    }

    fn latest(&self) -> Option<Report> {
        self.latest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Reads the report every `interval` until `shutdown`, into `health` and the status file.
pub(crate) async fn keep_reading(
    health: Arc<Health>,
    interval: Duration,
    status: StatusBoard,
    shutdown: CancellationToken,
) {
    let mut signal_setup = false;
    loop {
        let report = read(interval, &mut signal_setup).await;
        *health.latest.lock().unwrap_or_else(|e| e.into_inner()) = Some(report.clone());
        status.update(|s| s.health = Some(report));
        tokio::select! {
            _ = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

/// Reads everything the report holds.
async fn read(interval: Duration, signal_setup: &mut bool) -> Report {
    let disk = board::disk(std::path::Path::new("/"));
    Report {
        modem: modem::read(interval, signal_setup).await,
        throttled: board::throttled().await,
        temp_c: board::temperature().await,
        disk_free: disk.map(|d| d.0),
        disk_total: disk.map(|d| d.1),
        uptime_s: board::uptime().await,
    }
    .cleaned()
}

/// What one session sent last.
#[derive(Default)]
pub(crate) struct Outbox {
    sent: Option<(Report, Instant)>,
}

impl Outbox {
    /// Queues the latest report on `handle` if it is due; it leaves with the next packet the
    /// session sends (see [`Handle::send_with_next`]).
    pub(crate) fn offer(&mut self, health: &Health, handle: &Handle, status: &StatusBoard) {
        let Some(latest) = health.latest() else {
            return;
        };
        let now = Instant::now();
        let last = self.sent.as_ref().map(|(r, at)| (r, *at));
        let Some(why) = health.cadence.due(&latest, last, now) else {
            return;
        };
        let Ok(json) = serde_json::to_vec(&latest) else {
            return;
        };
        tracing::debug!(
            "health report ({} bytes) goes with the next packet: {why}",
            json.len()
        );
        handle.send_with_next(GlobalRequest::WithData {
            name: burrow_proto::health::REQUEST.into(),
            data: json,
        });
        self.sent = Some((latest, now));
        let count = health.sent.fetch_add(1, Ordering::Relaxed) + 1;
        status.update(|s| s.health_reports = count);
    }
}
