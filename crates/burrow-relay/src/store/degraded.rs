//! What a relay on PostgreSQL keeps so that it can go on while the database is unreachable:
//! a copy of the registry to admit known devices and operators from, and a queue on local
//! disk for the writes it could not commit.
//!
//! The copy is refreshed whenever the registry changes and at least every minute; it is used
//! only while reads fail, and only while it is younger than the configured bound. The disk
//! queue is one JSON line per write, appended and flushed before the write counts as done,
//! replayed in order once the database answers again, then removed: nothing written during an
//! outage is lost, not even across a relay restart.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{DeviceRecord, OperatorRecord, PasswordLogin, Principal, StoreError, Write};

/// The registry as last read.
pub struct Snapshot {
    taken: Instant,
    device_keys: HashSet<(String, String)>,
    devices: Vec<DeviceRecord>,
    operators: HashMap<String, OperatorRecord>,
    passwords: HashMap<String, String>,
    /// The live relays: (id, peer address, host key line).
    relays: Vec<(String, String, String)>,
}

impl Snapshot {
    /// A copy made now of what was read.
    pub fn new(
        device_keys: Vec<(String, String)>,
        devices: Vec<DeviceRecord>,
        operators: Vec<OperatorRecord>,
        passwords: Vec<(String, String)>,
        relays: Vec<(String, String, String)>,
    ) -> Snapshot {
        Snapshot {
            taken: Instant::now(),
            device_keys: device_keys.into_iter().collect(),
            devices,
            operators: operators.into_iter().map(|o| (o.name.clone(), o)).collect(),
            passwords: passwords.into_iter().collect(),
            relays,
        }
    }

    /// The relays that held `device` when the copy was taken, newest session first.
    pub(crate) fn holders(&self, device: &str) -> Vec<String> {
        self.device(device)
            .and_then(|d| d.relay.as_deref())
            .map(|r| r.split(',').map(str::to_string).collect())
            .unwrap_or_default()
    }

    /// The relays alive when the copy was taken: (id, peer address, host key line).
    pub(crate) fn relays(&self) -> Vec<(String, String, String)> {
        self.relays.clone()
    }

    /// How old the copy is.
    pub fn age(&self) -> Duration {
        self.taken.elapsed()
    }

    pub(crate) fn key_owner(&self, name: &str, fingerprint: &str) -> Option<Principal> {
        if self
            .device_keys
            .contains(&(name.to_string(), fingerprint.to_string()))
        {
            let device = self.device(name);
            return Some(Principal::Device {
                pending: device.is_some_and(|d| d.pending),
                quarantined: device.is_some_and(|d| d.quarantined.iter().any(|f| f == fingerprint)),
            });
        }
        self.operators
            .get(name)
            .filter(|o| o.fingerprints.iter().any(|f| f == fingerprint))
            .map(|_| Principal::Operator)
    }

    pub(crate) fn device_key_pairs(&self) -> Vec<(String, String)> {
        self.device_keys.iter().cloned().collect()
    }

    pub(crate) fn device(&self, name: &str) -> Option<&DeviceRecord> {
        self.devices.iter().find(|d| d.name == name)
    }

    pub(crate) fn devices(&self) -> Vec<DeviceRecord> {
        self.devices.clone()
    }

    pub(crate) fn may_connect(&self, device: &str, host: &str, port: u16) -> bool {
        let rule = format!("{host}:{port}");
        self.device(device)
            .is_some_and(|d| d.allow_connect.contains(&rule))
    }

    pub(crate) fn listen_addr(&self, device: &str, port: u16) -> Option<String> {
        self.device(device)?.allow_listen.iter().find_map(|r| {
            let (addr, p) = r.rsplit_once(':')?;
            (p.parse() == Ok(port)).then(|| addr.to_string())
        })
    }

    pub(crate) fn operator(&self, name: &str) -> Option<OperatorRecord> {
        self.operators.get(name).cloned()
    }

    pub(crate) fn operators(&self) -> Vec<OperatorRecord> {
        let mut all: Vec<OperatorRecord> = self.operators.values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    pub(crate) fn operator_password(&self, name: &str) -> Option<PasswordLogin> {
        let hash = self.passwords.get(name)?.clone();
        let locked_until = self.operators.get(name).and_then(|o| o.locked_until);
        Some(PasswordLogin { hash, locked_until })
    }
}

/// Writes waiting on local disk for the database.
pub struct Spill {
    path: PathBuf,
    file: Option<std::fs::File>,
    /// Writes in the file.
    pending: usize,
}

impl Spill {
    /// The queue in `dir`; writes a previous run left there are kept and counted.
    pub fn open(dir: &Path) -> Spill {
        let path = dir.join("write-queue.jsonl");
        let pending = std::fs::File::open(&path)
            .map(|f| std::io::BufReader::new(f).lines().count())
            .unwrap_or(0);
        Spill {
            path,
            file: None,
            pending,
        }
    }

    /// Writes in the queue.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Appends `writes` and flushes them to the disk.
    pub fn push(&mut self, writes: &[&Write]) -> Result<(), StoreError> {
        let io = |e: std::io::Error| {
            StoreError::Schema(format!(
                "cannot queue writes on disk in {}: {e}",
                self.path.display()
            ))
        };
        if self.file.is_none() {
            self.file = Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)
                    .map_err(io)?,
            );
        }
        let mut lines = Vec::new();
        let mut added = 0usize;
        for w in writes {
            // A write of a row id that never was (an audit row opened while degraded) is
            // left out: the row is written whole when it ends. Checkpoints are only worth
            // something while they are the newest.
            if matches!(
                w,
                Write::Barrier
                    | Write::InterruptLeftovers
                    | Write::AuditOpen(_)
                    | Write::AuditCheckpoint { .. }
                    | Write::Checkpoint { .. }
            ) {
                continue;
            }
            let line = serde_json::to_string(w)
                .map_err(|e| StoreError::Schema(format!("cannot encode a queued write: {e}")))?;
            lines.extend_from_slice(line.as_bytes());
            lines.push(b'\n');
            added = added.saturating_add(1);
            self.pending = self.pending.saturating_add(1);
        }
        if let Some(f) = self.file.as_mut() {
            // Whole lines or none: what a full disk cut off is taken back off the file (a
            // torn line would glue itself to the next one written).
            let before = f.metadata().map(|m| m.len()).map_err(io)?;
            if let Err(e) = f.write_all(&lines).and_then(|()| f.sync_data()) {
                let _ = f.set_len(before);
                self.pending = self.pending.saturating_sub(added);
                return Err(io(e));
            }
        }
        Ok(())
    }

    /// Everything queued, in order (lines that do not parse are reported and skipped).
    pub fn read(&self) -> Vec<Write> {
        let Ok(f) = std::fs::File::open(&self.path) else {
            return Vec::new();
        };
        std::io::BufReader::new(f)
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| match serde_json::from_str(&l) {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::error!("skipping a queued write that does not parse: {e}");
                    None
                }
            })
            .collect()
    }

    /// Empties the queue once its writes are in the database.
    pub fn clear(&mut self) -> Result<(), StoreError> {
        self.file = None;
        self.pending = 0;
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::Schema(format!(
                "cannot empty the write queue {}: {e}",
                self.path.display()
            ))),
        }
    }
}
