//! The relay's end of an agent's `portlog@burrow` channel: port log records stored and
//! acknowledged, console alerts recorded in the audit (kind `console-alert`, which the alert
//! engine projects) with their line, context, and where they are in the log and recording.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use burrow_io::deflate::Inflater;
use burrow_proto::name::check_name;
use burrow_proto::portlog::{ConsoleAlert, Frame, FrameReader};
use burrow_ssh::driver::{Channel, ChannelMsg};

use crate::Relay;
use crate::audit::Outcome;

/// The last alert recorded per device: (stream, seq). An alert sent again after its
/// acknowledgement was lost is recorded once.
#[derive(Default)]
pub(crate) struct SeenAlerts(Mutex<HashMap<String, (u64, u64)>>);

impl SeenAlerts {
    fn path(data_dir: &Path, device: &str) -> std::path::PathBuf {
        data_dir
            .join(super::portlog::PORTLOGS_DIR)
            .join(device)
            .join("alerts-seen")
    }

    /// Whether the alert is new; if so it counts as seen from now on.
    fn first_time(&self, data_dir: &Path, device: &str, stream: u64, seq: u64) -> bool {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let last = *map.entry(device.to_string()).or_insert_with(|| {
            std::fs::read_to_string(Self::path(data_dir, device))
                .ok()
                .and_then(|s| {
                    let (a, b) = s.trim().split_once(' ')?;
                    Some((a.parse().ok()?, b.parse().ok()?))
                })
                .unwrap_or((0, 0))
        });
        if last.0 == stream && seq <= last.1 {
            return false;
        }
        map.insert(device.to_string(), (stream, seq));
        let path = Self::path(data_dir, device);
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        if let Err(e) = std::fs::write(&path, format!("{stream} {seq}\n")) {
            tracing::warn!("cannot write {}: {e}", path.display());
        }
        true
    }
}

/// Serves one upload channel of device `device` until it closes.
pub(crate) async fn serve(relay: Arc<Relay>, device: String, channel: Channel) {
    let mut inflater = Inflater::default();
    let mut reader = FrameReader::default();
    loop {
        let data = match channel.next().await {
            Some(ChannelMsg::Data(data)) => data,
            Some(ChannelMsg::Request { want_reply, .. }) => {
                if want_reply {
                    channel.reply(false);
                }
                continue;
            }
            Some(ChannelMsg::Eof) | None => break,
        };
        let mut frames = Vec::new();
        let decoded = inflater.feed(&data, |plain| reader.feed(plain).map(|f| frames.extend(f)));
        let result = match decoded {
            Ok(inner) => inner.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(why) = result {
            tracing::warn!("device {device}: port log upload refused: {why}");
            break;
        }
        for frame in frames {
            let answer = match frame {
                Frame::Chunk {
                    console,
                    log_id,
                    offset,
                    records,
                } => store(&relay, &device, console, log_id, offset, records).await,
                Frame::Alert(json) => alert(&relay, &device, &json).await,
                _ => None,
            };
            if let Some(answer) = answer {
                let mut wire = Vec::new();
                answer.encode(&mut wire);
                if channel.data(&wire).await.is_err() {
                    return;
                }
            }
        }
    }
    channel.close();
}

async fn store(
    relay: &Arc<Relay>,
    device: &str,
    console: String,
    log_id: u64,
    offset: u64,
    records: Vec<u8>,
) -> Option<Frame> {
    if let Err(e) = check_name("console", &console) {
        tracing::warn!("device {device}: port log of a console with a bad name: {e}");
        return None;
    }
    let logs = relay.portlogs.clone();
    let (dev, con) = (device.to_string(), console.clone());
    let stored =
        tokio::task::spawn_blocking(move || logs.append(&dev, &con, log_id, offset, &records))
            .await;
    match stored {
        Ok(Ok(end)) => Some(Frame::Ack {
            console,
            log_id,
            end,
        }),
        Ok(Err(e)) => {
            // Not acknowledged: the device keeps it and sends it again.
            tracing::warn!("device {device}: cannot store the port log of {console}: {e}");
            None
        }
        Err(_) => None,
    }
}

fn cut(text: &str) -> String {
    burrow_proto::text::clean(text, 160)
}

/// Where in the recordings `at_ms` falls: the newest recording of the console started before
/// it, if it was still being written then.
fn recording_at(data_dir: &Path, device: &str, console: &str, at_ms: u64) -> Option<String> {
    let files = super::recording::list(data_dir, Some(device)).ok()?;
    let prefix = format!("{console}-");
    let at = (at_ms / 1000) as i64;
    files
        .iter()
        .filter_map(|f| {
            let name = f.path.file_name()?.to_str()?;
            let stamp = name.strip_prefix(&prefix)?.get(..16)?;
            let started = burrow_proto::time::parse_compact(stamp)?;
            let modified = std::fs::metadata(&f.path).ok()?.modified().ok()?;
            let ended = modified
                .duration_since(std::time::UNIX_EPOCH)
                .ok()?
                .as_secs() as i64;
            (started <= at && at <= ended + 1).then(|| (started, f.path.clone()))
        })
        .max_by_key(|(s, _)| *s)
        .map(|(started, path)| {
            format!(
                "recording {} at {:.1} s",
                path.display(),
                at_ms as f64 / 1000.0 - started as f64
            )
        })
}

async fn alert(relay: &Arc<Relay>, device: &str, json: &str) -> Option<Frame> {
    let a: ConsoleAlert = match serde_json::from_str(json) {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!("device {device}: an alert that does not parse: {e}");
            return None;
        }
    };
    if check_name("console", &a.console).is_err() {
        return Some(Frame::AlertAck(a.seq));
    }
    let data_dir = relay.config.data_dir.clone();
    if !relay
        .seen_alerts
        .first_time(&data_dir, device, a.stream, a.seq)
    {
        return Some(Frame::AlertAck(a.seq));
    }
    let when = crate::console::portlog::format_line(
        &burrow_proto::portlog::LogLine {
            at_ms: a.at_ms,
            kind: "output",
            text: String::new(),
        },
        true,
    );
    let when = when.trim().to_string();
    let mut detail = format!("{:?} matched {:?} at {when}", a.rule, cut(&a.line));
    if a.suppressed > 0 {
        detail.push_str(&format!(
            " ({} more matches since its last alert)",
            a.suppressed
        ));
    }
    detail.push_str(&format!(
        "; port log offset {} (burrow relay console log {device}/{} --since {when})",
        a.offset, a.console
    ));
    let (dev, con) = (device.to_string(), a.console.clone());
    let at_ms = a.at_ms;
    let dir = data_dir.clone();
    if let Ok(Some(rec)) =
        tokio::task::spawn_blocking(move || recording_at(&dir, &dev, &con, at_ms)).await
    {
        detail.push_str(&format!("; {rec}"));
    }
    if !a.before.is_empty() {
        let before: Vec<String> = a.before.iter().map(|l| cut(l)).collect();
        detail.push_str(&format!("; before: {}", before.join(" | ")));
    }
    if !a.after.is_empty() {
        let after: Vec<String> = a.after.iter().map(|l| cut(l)).collect();
        detail.push_str(&format!("; after: {}", after.join(" | ")));
    }
    relay
        .audit
        .record("console-alert", device, &a.console, Outcome::Ok, &detail);
    relay.hubs.mark(
        device,
        &a.console,
        &format!("alert {:?}: {}", a.rule, cut(&a.line)),
    );
    Some(Frame::AlertAck(a.seq))
}
