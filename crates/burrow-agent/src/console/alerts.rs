//! Alerts raised on the device, queued on its disk until the relay acknowledges them: an
//! alert fired while the link is down (or the agent restarts) is delivered when it returns.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use burrow_proto::portlog::ConsoleAlert;
use tokio::sync::Notify;

/// Alerts kept while undelivered; past this the oldest go (and the next one says so).
const MAX_PENDING: usize = 256;

struct Inner {
    stream: u64,
    next_seq: u64,
    pending: VecDeque<ConsoleAlert>,
}

/// The device's undelivered alerts.
pub(crate) struct AlertQueue {
    dir: PathBuf,
    inner: Mutex<Inner>,
    /// Woken when an alert is queued (the uploader sends it).
    pub(crate) wake: Arc<Notify>,
}

impl AlertQueue {
    /// The queue kept in `dir` (`alerts.json`, `alerts.seq`).
    pub(crate) fn open(dir: PathBuf, wake: Arc<Notify>) -> AlertQueue {
        if let Err(e) = std::fs::create_dir_all(&dir) {
            tracing::warn!(
                "cannot create {}: {e}; alerts are kept in memory only",
                dir.display()
            );
        }
        let (stream, next_seq) = std::fs::read_to_string(dir.join("alerts.seq"))
            .ok()
            .and_then(|s| {
                let (a, b) = s.trim().split_once(' ')?;
                Some((u64::from_str_radix(a, 16).ok()?, b.parse().ok()?))
            })
            .unwrap_or_else(|| (rand::random::<u64>() | 1, 1));
        let pending: VecDeque<ConsoleAlert> = std::fs::read_to_string(dir.join("alerts.json"))
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default();
        let q = AlertQueue {
            dir,
            inner: Mutex::new(Inner {
                stream,
                next_seq,
                pending,
            }),
            wake,
        };
        q.save(&q.lock());
        q
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn save(&self, inner: &Inner) {
        let seq = format!("{:016x} {}\n", inner.stream, inner.next_seq);
        let list = serde_json::to_string(&inner.pending).unwrap_or_default();
        for (name, text) in [("alerts.seq", seq), ("alerts.json", list)] {
            let path = self.dir.join(name);
            let tmp = self.dir.join(format!("{name}.tmp"));
            if let Err(e) = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &path)) {
                tracing::warn!("cannot write {}: {e}", path.display());
            }
        }
    }

    /// Queues an alert (numbered here) and wakes the uploader.
    pub(crate) fn push(&self, mut alert: ConsoleAlert) {
        tracing::warn!(
            "console {}: alert {:?}: {}",
            alert.console,
            alert.rule,
            alert.line
        );
        let mut inner = self.lock();
        alert.stream = inner.stream;
        alert.seq = inner.next_seq;
        inner.next_seq += 1;
        if inner.pending.len() >= MAX_PENDING {
            inner.pending.pop_front();
            alert.line.push_str(&format!(
                " (older undelivered alerts were dropped: more than {MAX_PENDING} waited)"
            ));
        }
        inner.pending.push_back(alert);
        self.save(&inner);
        drop(inner);
        self.wake.notify_one();
    }

    /// The alerts waiting, oldest first.
    pub(crate) fn pending(&self) -> Vec<ConsoleAlert> {
        self.lock().pending.iter().cloned().collect()
    }

    /// The relay recorded alert `seq`.
    pub(crate) fn delivered(&self, seq: u64) {
        let mut inner = self.lock();
        let before = inner.pending.len();
        inner.pending.retain(|a| a.seq != seq);
        if inner.pending.len() != before {
            self.save(&inner);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alerts_survive_a_restart_until_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let q = AlertQueue::open(dir.path().to_path_buf(), Arc::default());
        let alert = |rule: &str| ConsoleAlert {
            stream: 0,
            seq: 0,
            console: "console".into(),
            rule: rule.into(),
            line: "x".into(),
            before: vec![],
            after: vec![],
            at_ms: 1,
            offset: 0,
            suppressed: 0,
        };
        q.push(alert("a"));
        q.push(alert("b"));
        drop(q);
        let q = AlertQueue::open(dir.path().to_path_buf(), Arc::default());
        let p = q.pending();
        assert_eq!(
            p.iter()
                .map(|a| (a.rule.as_str(), a.seq))
                .collect::<Vec<_>>(),
            [("a", 1), ("b", 2)]
        );
        q.delivered(1);
        q.push(alert("c"));
        let p = q.pending();
        assert_eq!(p.iter().map(|a| a.seq).collect::<Vec<_>>(), [2, 3]);
        assert_eq!(p[0].stream, p[1].stream);
    }
}
