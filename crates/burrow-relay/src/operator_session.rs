//! Authenticated operator connections and what each has open, so that removing an operator or
//! narrowing its policy closes what it may no longer use.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use burrow_proto::name::Login;
use tokio_util::sync::CancellationToken;

use crate::Relay;
use crate::store::OperatorRecord;

/// An authenticated operator connection.
pub(crate) struct OperatorSession {
    pub(crate) id: u64,
    pub(crate) login: Login,
    /// Cuts the whole connection (the operator was removed).
    pub(crate) cut: CancellationToken,
    /// The connection's handle, once authenticated: to tell the client why it is cut.
    pub(crate) handle: std::sync::OnceLock<burrow_ssh::driver::Handle>,
    /// What it has open, so that a policy change can close what is no longer allowed.
    open: Mutex<HashMap<u64, OpenUse>>,
}

/// One stream or console session an operator has open.
struct OpenUse {
    device: String,
    /// A console session (allowed to console-only operators) rather than a port stream.
    console: bool,
    stop: CancellationToken,
}

/// Removes its entry from the operator's open uses when dropped.
pub(crate) struct UseGuard {
    op: Arc<OperatorSession>,
    id: u64,
    /// Cancelled when policy no longer allows this use.
    pub(crate) stop: CancellationToken,
}

impl Drop for UseGuard {
    fn drop(&mut self) {
        self.op.uses().remove(&self.id);
    }
}

impl OperatorSession {
    pub(crate) fn new(id: u64, login: Login, cut: CancellationToken) -> Self {
        OperatorSession {
            id,
            login,
            cut,
            handle: std::sync::OnceLock::new(),
            open: Mutex::default(),
        }
    }

    pub(crate) fn name(&self) -> &str {
        self.login.principal()
    }

    fn uses(&self) -> std::sync::MutexGuard<'_, HashMap<u64, OpenUse>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a stream (or a console session) to `device` for policy enforcement.
    pub(crate) fn track(self: &Arc<Self>, relay: &Relay, device: &str, console: bool) -> UseGuard {
        let id = relay.next_id();
        let stop = CancellationToken::new();
        self.uses().insert(
            id,
            OpenUse {
                device: device.to_string(),
                console,
                stop: stop.clone(),
            },
        );
        UseGuard {
            op: self.clone(),
            id,
            stop,
        }
    }

    /// Closes what `record` (the operator's current policy; `None`: removed) no longer allows.
    /// Returns the devices whose streams or consoles were closed.
    pub(crate) fn enforce(
        &self,
        record: Option<&OperatorRecord>,
        labels: &std::collections::HashMap<&str, &burrow_proto::labels::Labels>,
    ) -> Vec<String> {
        let Some(record) = record else {
            self.cut.cancel();
            return Vec::new();
        };
        let mut closed = Vec::new();
        for u in self.uses().values() {
            let empty = burrow_proto::labels::Labels::new();
            let device_labels = labels.get(u.device.as_str()).copied().unwrap_or(&empty);
            let allowed = burrow_proto::labels::allows(&record.allow, &u.device, device_labels)
                && (u.console || !record.console_only);
            if !allowed && !u.stop.is_cancelled() {
                u.stop.cancel();
                closed.push(u.device.clone());
            }
        }
        closed
    }
}

/// Every authenticated operator connection, for revocation.
#[derive(Default)]
pub(crate) struct Operators {
    map: Mutex<HashMap<u64, Arc<OperatorSession>>>,
}

impl Operators {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<OperatorSession>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn insert(&self, op: Arc<OperatorSession>) {
        self.map().insert(op.id, op);
    }

    pub(crate) fn remove(&self, id: u64) {
        self.map().remove(&id);
    }

    pub(crate) fn all(&self) -> Vec<Arc<OperatorSession>> {
        self.map().values().cloned().collect()
    }
}
