//! The port logs' and alerts' way to the relay: one `portlog@burrow` channel on a live session
//! to a burrow relay, one deflate stream on it. Alerts leave at once (with the logs, so the
//! relay holds their context); a log leaves when someone is attached to its console, when a
//! good amount waits, or once its oldest unsent byte waited `log_upload_delay` (by default the
//! keepalive interval: on a quiet link the upload then takes the keepalive's place). What the
//! relay stored it acknowledges, and the device remembers that across restarts.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use burrow_io::deflate::Deflater;
use burrow_proto::agent_config::LogUpload;
use burrow_proto::portlog::{CHANNEL_TYPE, Frame, FrameReader};
use burrow_ssh::channel::OpenKind;
use burrow_ssh::driver::{Channel, ChannelMsg};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::alerts::AlertQueue;
use super::keeper::Keeper;
use crate::session::Current;

/// A log this far behind leaves without waiting for its delay.
const UPLOAD_NOW_BYTES: u64 = 32 << 10;
/// Most log bytes in one upload.
const UPLOAD_MAX: usize = 64 << 10;
/// How often a missing session is looked for.
const LOOK_AGAIN: Duration = Duration::from_secs(1);

/// What the uploader serves.
pub(crate) struct Uploads {
    pub(crate) keepers: Vec<Arc<Keeper>>,
    pub(crate) alerts: Arc<AlertQueue>,
    pub(crate) wake: Arc<Notify>,
    /// The wait of a log without its own `log_upload_delay`.
    pub(crate) default_delay: Duration,
}

impl Uploads {
    fn delay(&self, k: &Keeper) -> Duration {
        k.console
            .log_upload_delay
            .map_or(self.default_delay, |d| d.duration())
    }

    /// Whether `k`'s log may leave now at all.
    fn may_upload(k: &Keeper) -> bool {
        match k.console.log_upload {
            LogUpload::Always => true,
            LogUpload::OnAttach => k.attached.load(std::sync::atomic::Ordering::Relaxed) > 0,
            LogUpload::Never => false,
        }
    }

    /// Whether anything waits (alerts, or logs that may leave).
    fn anything(&self) -> bool {
        !self.alerts.pending().is_empty()
            || self.keepers.iter().any(|k| {
                Self::may_upload(k)
                    && k.ring.as_ref().is_some_and(|r| {
                        let r = r.lock().unwrap_or_else(|e| e.into_inner());
                        r.end() > r.acked()
                    })
            })
    }
}

/// Runs until `shutdown`: waits for something to send and a burrow relay to send it to.
pub(crate) async fn run(up: Arc<Uploads>, current: Current, shutdown: CancellationToken) {
    // A relay that refused the channel (an older burrow) is not asked again while that
    // session lasts.
    let mut refused: Option<burrow_ssh::driver::Handle> = None;
    loop {
        if refused.as_ref().is_some_and(|r| r.ended().is_some()) {
            refused = None;
        }
        let live = current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .find(|l| l.burrow_relay)
            .cloned();
        if let Some(live) = live.filter(|_| refused.is_none())
            && up.anything()
        {
            match live.handle.open(OpenKind::Other(CHANNEL_TYPE.into())).await {
                Ok(channel) => {
                    serve(&up, &channel, &shutdown).await;
                    channel.close();
                }
                Err(e) => {
                    tracing::warn!(
                        "the relay does not take port logs and console alerts ({}); they stay on this device",
                        e.text
                    );
                    refused = Some(live.handle.clone());
                }
            }
            if shutdown.is_cancelled() {
                return;
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            () = up.wake.notified() => {}
            () = tokio::time::sleep(LOOK_AGAIN) => {}
        }
    }
}

/// Per log: sent up to here on this channel, and since when something waits unsent.
#[derive(Default)]
struct Progress {
    sent: Option<(u64, u64)>,
    waiting_since: Option<Instant>,
}

/// One channel, until it or the session ends.
async fn serve(up: &Uploads, channel: &Channel, shutdown: &CancellationToken) {
    let mut deflater = Deflater::default();
    let mut reader = FrameReader::default();
    let mut progress: HashMap<String, Progress> = HashMap::new();
    let mut alerts_sent: Vec<u64> = Vec::new();
    loop {
        let mut frames = Vec::new();
        let pending = up.alerts.pending();
        let fresh_alert = pending.iter().any(|a| !alerts_sent.contains(&a.seq));
        for a in &pending {
            if !alerts_sent.contains(&a.seq) {
                alerts_sent.push(a.seq);
                frames.push(Frame::Alert(serde_json::to_string(a).unwrap_or_default()));
            }
        }
        let now = Instant::now();
        let mut next_due: Option<Instant> = None;
        for k in &up.keepers {
            let Some(ring) = &k.ring else { continue };
            if !Uploads::may_upload(k) {
                continue;
            }
            let p = progress.entry(k.console.name.clone()).or_default();
            let (id, end, acked) = {
                let r = ring.lock().unwrap_or_else(|e| e.into_inner());
                (r.id(), r.end(), r.acked())
            };
            let from = match p.sent {
                Some((sid, at)) if sid == id => at.max(acked),
                _ => acked,
            };
            if end <= from {
                p.waiting_since = None;
                continue;
            }
            let since = *p.waiting_since.get_or_insert(now);
            let attached = k.attached.load(std::sync::atomic::Ordering::Relaxed) > 0;
            let due = since + up.delay(k);
            if !(attached || fresh_alert || end - from >= UPLOAD_NOW_BYTES || now >= due) {
                next_due = Some(next_due.map_or(due, |d: Instant| d.min(due)));
                continue;
            }
            let read = ring
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .read(from, UPLOAD_MAX);
            match read {
                Ok((start, records)) if !records.is_empty() => {
                    p.sent = Some((id, start + records.len() as u64));
                    p.waiting_since = None;
                    frames.push(Frame::Chunk {
                        console: k.console.name.clone(),
                        log_id: id,
                        offset: start,
                        records,
                    });
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!("console {}: cannot read the port log: {e}", k.console.name)
                }
            }
        }
        if !frames.is_empty() {
            let mut plain = Vec::new();
            for f in &frames {
                f.encode(&mut plain);
            }
            if channel.data(&deflater.piece(&plain)).await.is_err() {
                return;
            }
            // More may wait (a long backlog goes in pieces).
            continue;
        }
        let sleep = next_due.map_or(Duration::from_secs(3600), |d| {
            d.saturating_duration_since(Instant::now())
        });
        tokio::select! {
            _ = shutdown.cancelled() => return,
            () = up.wake.notified() => {}
            () = tokio::time::sleep(sleep) => {}
            msg = channel.next() => match msg {
                Some(ChannelMsg::Data(data)) => match reader.feed(&data) {
                    Ok(frames) => {
                        for f in frames {
                            acknowledged(up, f);
                        }
                    }
                    Err(e) => {
                        tracing::warn!("the relay's port log answers do not parse: {e}");
                        return;
                    }
                },
                Some(ChannelMsg::Request { want_reply, .. }) => {
                    if want_reply {
                        channel.reply(false);
                    }
                }
                Some(ChannelMsg::Eof) | None => return,
            },
        }
    }
}

fn acknowledged(up: &Uploads, frame: Frame) {
    match frame {
        Frame::Ack {
            console,
            log_id,
            end,
        } => {
            if let Some(k) = up.keepers.iter().find(|k| k.console.name == console)
                && let Some(ring) = &k.ring
            {
                let mut r = ring.lock().unwrap_or_else(|e| e.into_inner());
                if r.id() == log_id {
                    r.set_acked(end);
                }
            }
        }
        Frame::AlertAck(seq) => up.alerts.delivered(seq),
        _ => {}
    }
}
