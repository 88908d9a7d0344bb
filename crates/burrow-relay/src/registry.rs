//! Online device sessions and their virtual endpoints; takeover when a device connects again.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use burrow_io::activity::Activity;
use burrow_proto::liveness::Schedule;
use burrow_ssh::driver::Handle;
use tokio_util::sync::CancellationToken;

use crate::store::health::OfflineReason;

/// First port handed out for `tcpip-forward` requests with port 0 (as sshd picks an ephemeral one).
pub const DYNAMIC_PORT_FIRST: u16 = 49152;

/// How long after a device session comes up an open for a port it does not expose yet waits for
/// it: the device asks for its endpoints right after it logs in, and they arrive a round trip or
/// two later (a second on a cellular link). Past this, the port is simply not exposed.
pub const ENDPOINTS_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Bind address prefix with which an agent announces a console endpoint (`console/NAME`).
pub const CONSOLE_BIND_PREFIX: &str = "console/";

pub use burrow_proto::PROBE_BIND;

/// One endpoint `NAME:PORT` as the device asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The bind address the device sent; echoed back in `forwarded-tcpip` so OpenSSH matches it.
    pub bind: String,
    /// The port.
    pub port: u16,
}

impl Endpoint {
    /// The agent's own probe endpoint, which only the device itself may reach.
    pub fn is_internal(&self) -> bool {
        self.bind == PROBE_BIND
    }
}

/// One authenticated device connection.
pub struct DeviceSession {
    /// Unique per relay process, to tell sessions of the same device apart.
    pub id: u64,
    /// Device name.
    pub name: String,
    /// Fingerprint of the key it authenticated with (for revocation).
    pub key_fingerprint: String,
    /// Remote address.
    pub peer: SocketAddr,
    /// When it authenticated.
    pub since: Instant,
    /// Handle to open channels on it.
    pub handle: Handle,
    /// Cancelling this cuts the connection (see `burrow_io::cut`).
    pub cut: CancellationToken,
    /// Cancelled when a newer session of the device took over (just before it is cut).
    pub replaced: CancellationToken,
    /// When bytes last moved on its connection.
    pub activity: Arc<Activity>,
    /// The keepalive schedule a burrow agent declared; `None` for stock SSH clients, which TCP
    /// keepalive watches instead.
    pub schedule: Option<Schedule>,
    /// The agent process it comes from, as the agent declared it; empty for stock clients.
    pub instance: String,
    /// The device's software as its SSH identification names it (`burrow_0.1.0`).
    pub software: String,
    /// Why the relay ends the session, when it does (a takeover, a revocation, a quarantine,
    /// a keepalive overdue), for the offline record.
    ending: Mutex<Option<(OfflineReason, String)>>,
    /// When the last health report was taken (reports come at most once a second).
    last_report: Mutex<Option<Instant>>,
    /// Set when an open to the device went unanswered, until the device is heard again.
    unanswered_open: Mutex<Option<Instant>>,
    /// Why the relay gave the session up, for the offline record.
    gave_up: Mutex<Option<String>>,
    endpoints: Mutex<BTreeMap<u16, Endpoint>>,
    /// Woken when an endpoint is added.
    endpoint_added: tokio::sync::Notify,
}

/// How the relay sees a device session's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Heard from in time.
    Fine,
    /// Silent past its schedule, or silent since an open went unanswered: operators get an
    /// answer at once instead of waiting for the device.
    Suspect,
    /// Silent past its schedule's timeout: the session is given up.
    Dead,
}

/// What a device session keeps of the connection that carries it.
pub struct Carrier {
    /// Remote address.
    pub peer: SocketAddr,
    /// Handle to open channels on it.
    pub handle: Handle,
    /// Cancelling this cuts the connection.
    pub cut: CancellationToken,
    /// When bytes last moved on it.
    pub activity: Arc<Activity>,
    /// The keepalive schedule its agent declared, if any.
    pub schedule: Option<Schedule>,
    /// The agent process it comes from; empty for stock clients.
    pub instance: String,
    /// The device's software, from its SSH identification.
    pub software: String,
}

impl DeviceSession {
    /// A new session with no endpoints.
    pub fn new(id: u64, name: String, key_fingerprint: String, carrier: Carrier) -> Self {
        let Carrier {
            peer,
            handle,
            cut,
            activity,
            schedule,
            instance,
            software,
        } = carrier;
        DeviceSession {
            id,
            name,
            key_fingerprint,
            peer,
            since: Instant::now(),
            handle,
            replaced: CancellationToken::new(),
            cut,
            activity,
            schedule,
            instance,
            software,
            ending: Mutex::new(None),
            last_report: Mutex::new(None),
            unanswered_open: Mutex::new(None),
            gave_up: Mutex::new(None),
            endpoints: Mutex::new(BTreeMap::new()),
            endpoint_added: tokio::sync::Notify::new(),
        }
    }

    /// How long nothing was heard from the device, at `now`.
    pub fn silence(&self, now: Instant) -> std::time::Duration {
        self.activity.silence(now)
    }

    /// The session's health at `now`.
    pub fn health(&self, now: Instant) -> Health {
        let silence = self.silence(now);
        if let Some(schedule) = &self.schedule {
            if silence >= schedule.dead_after() {
                return Health::Dead;
            }
            if silence >= schedule.suspect_after() {
                return Health::Suspect;
            }
        }
        let unanswered = *self
            .unanswered_open
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match unanswered {
            Some(at) if self.activity.last_rx() < at => Health::Suspect,
            _ => Health::Fine,
        }
    }

    /// Records that an open sent at `at` got no answer in time.
    pub fn open_unanswered(&self, at: Instant) {
        *self
            .unanswered_open
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(at);
    }

    /// Records why the relay gives the session up (its keepalive is overdue), and cuts it.
    pub fn give_up(&self, why: String) {
        self.end(OfflineReason::KeepaliveTimeout, why);
    }

    /// Ends the session for `reason` (the first reason given stays): the offline record says
    /// why, and streams on it were cut by the relay. The connection is cut.
    pub fn end(&self, reason: OfflineReason, detail: String) {
        self.note_ending(reason, detail);
        self.cut.cancel();
    }

    /// Records why the relay is ending the session, for whoever cuts it next (after telling the
    /// peer why, say).
    pub fn note_ending(&self, reason: OfflineReason, detail: String) {
        self.gave_up
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert_with(|| detail.clone());
        self.ending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert((reason, detail));
    }

    /// Why the relay ended the session, if it did.
    pub fn ending(&self) -> Option<(OfflineReason, String)> {
        self.ending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether a health report may be taken now (at most one a second per session); if so, the
    /// next one waits.
    pub fn take_report(&self, now: Instant) -> bool {
        let mut last = self.last_report.lock().unwrap_or_else(|e| e.into_inner());
        if last
            .is_some_and(|t| now.saturating_duration_since(t) < std::time::Duration::from_secs(1))
        {
            return false;
        }
        *last = Some(now);
        true
    }

    /// Why the relay gave the session up, if it did.
    pub fn gave_up(&self) -> Option<String> {
        self.gave_up
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn endpoints(&self) -> std::sync::MutexGuard<'_, BTreeMap<u16, Endpoint>> {
        self.endpoints.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds an endpoint; port 0 picks a free dynamic port. Returns the port.
    pub fn add_endpoint(&self, bind: &str, port: u16) -> Option<u16> {
        let mut eps = self.endpoints();
        let port = if port == 0 {
            (DYNAMIC_PORT_FIRST..=u16::MAX).find(|p| !eps.contains_key(p))?
        } else {
            port
        };
        eps.insert(
            port,
            Endpoint {
                bind: bind.to_string(),
                port,
            },
        );
        self.endpoint_added.notify_waiters();
        Some(port)
    }

    /// Removes an endpoint; true if it existed.
    pub fn remove_endpoint(&self, port: u16) -> bool {
        self.endpoints().remove(&port).is_some()
    }

    /// The endpoint on `port`, if exposed (internal ones included).
    pub fn endpoint(&self, port: u16) -> Option<Endpoint> {
        self.endpoints().get(&port).cloned()
    }

    /// Every endpoint, internal ones included.
    pub fn endpoints_all(&self) -> Vec<Endpoint> {
        self.endpoints().values().cloned().collect()
    }

    /// The endpoint on `port` if operators may reach it (not internal).
    pub fn public_endpoint(&self, port: u16) -> Option<Endpoint> {
        self.endpoint(port).filter(|e| !e.is_internal())
    }

    /// The endpoint on `port` (internal ones only if `internal`), waiting for it while the
    /// session is younger than [`ENDPOINTS_GRACE`]: an open that arrives just after a device
    /// (re)connected is held until its endpoints do instead of being refused. `None` when the
    /// port is still not there, or the session was replaced or ended meanwhile.
    pub async fn endpoint_soon(&self, port: u16, internal: bool) -> Option<Endpoint> {
        let deadline = self.since + ENDPOINTS_GRACE;
        loop {
            let added = self.endpoint_added.notified();
            tokio::pin!(added);
            // Registered before looking, so an endpoint added in between still wakes it.
            added.as_mut().enable();
            // An internal endpoint is there already: waiting would not make it reachable.
            if let Some(ep) = self.endpoint(port) {
                return (internal || !ep.is_internal()).then_some(ep);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::select! {
                () = added => {}
                () = tokio::time::sleep_until(deadline.into()) => {}
                () = self.replaced.cancelled() => return None,
                () = self.cut.cancelled() => return None,
            }
        }
    }

    /// The endpoint port of console `name`, announced by the agent with bind address `console/NAME`.
    pub fn console_port(&self, name: &str) -> Option<u16> {
        self.endpoints()
            .values()
            .find(|e| e.bind.strip_prefix(CONSOLE_BIND_PREFIX) == Some(name))
            .map(|e| e.port)
    }

    /// Names of the consoles this device serves.
    pub fn consoles(&self) -> Vec<String> {
        self.endpoints()
            .values()
            .filter_map(|e| e.bind.strip_prefix(CONSOLE_BIND_PREFIX).map(str::to_string))
            .collect()
    }

    /// Ports exposed to operators, ascending (internal endpoints are left out).
    pub fn ports(&self) -> Vec<u16> {
        self.endpoints()
            .values()
            .filter(|e| !e.is_internal())
            .map(|e| e.port)
            .collect()
    }
}

/// All online device sessions, one per device name.
#[derive(Default)]
pub struct Registry {
    sessions: Mutex<HashMap<String, Arc<DeviceSession>>>,
}

impl Registry {
    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<DeviceSession>>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes `session` the device's current one and returns the one it replaced, which the
    /// caller must cut: the newest authenticated session always wins, at once.
    pub fn take_over(&self, session: Arc<DeviceSession>) -> Option<Arc<DeviceSession>> {
        self.sessions().insert(session.name.clone(), session)
    }

    /// Puts `session` back as the device's current one if `instead` (the session that displaced
    /// it) still is, or none is; true if it did.
    pub fn restore(&self, session: Arc<DeviceSession>, instead: u64) -> bool {
        let mut sessions = self.sessions();
        match sessions.get(&session.name) {
            Some(current) if current.id != instead => false,
            _ => {
                sessions.insert(session.name.clone(), session);
                true
            }
        }
    }

    /// Removes the session if it is still the device's current one; true if it was.
    pub fn remove(&self, name: &str, id: u64) -> bool {
        let mut sessions = self.sessions();
        if sessions.get(name).is_some_and(|s| s.id == id) {
            sessions.remove(name);
            true
        } else {
            false
        }
    }

    /// The device's current session.
    pub fn get(&self, name: &str) -> Option<Arc<DeviceSession>> {
        self.sessions().get(name).cloned()
    }

    /// Whether `id` is still the device's current session.
    pub fn is_current(&self, name: &str, id: u64) -> bool {
        self.sessions().get(name).is_some_and(|s| s.id == id)
    }

    /// A snapshot of all sessions.
    pub fn all(&self) -> Vec<Arc<DeviceSession>> {
        self.sessions().values().cloned().collect()
    }
}
