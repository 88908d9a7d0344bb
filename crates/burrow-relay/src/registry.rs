//! Online device sessions and their virtual endpoints; takeover when a device connects again.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use burrow_io::splice::Flow;
use russh::server::Handle;
use tokio_util::sync::CancellationToken;

/// First port handed out for `tcpip-forward` requests with port 0 (as sshd picks an ephemeral one).
pub const DYNAMIC_PORT_FIRST: u16 = 49152;

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
    /// Flow control on its channels: credit with a burrow agent, a capped queue with stock ssh.
    pub flow: Flow,
    endpoints: Mutex<BTreeMap<u16, Endpoint>>,
}

impl DeviceSession {
    /// A new session with no endpoints.
    pub fn new(
        id: u64,
        name: String,
        key_fingerprint: String,
        peer: SocketAddr,
        handle: Handle,
        cut: CancellationToken,
        flow: Flow,
    ) -> Self {
        DeviceSession {
            id,
            name,
            key_fingerprint,
            peer,
            since: Instant::now(),
            handle,
            replaced: CancellationToken::new(),
            cut,
            flow,
            endpoints: Mutex::new(BTreeMap::new()),
        }
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

    /// The endpoint on `port` if operators may reach it (not internal).
    pub fn public_endpoint(&self, port: u16) -> Option<Endpoint> {
        self.endpoint(port).filter(|e| !e.is_internal())
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
