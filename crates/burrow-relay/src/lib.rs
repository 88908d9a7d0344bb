//! The burrow relay: an SSH server that routes operators to devices by name.
//!
//! Nobody ever gets a shell here. Devices authenticate by key, expose virtual endpoints
//! `NAME:PORT` with `tcpip-forward`, and operators reach them with `direct-tcpip` (`ssh -J`,
//! `-W`, `-L`). A device that connects again takes its endpoints over at once.
//!
//! # Layout
//! - [`config`]: relay settings and their defaults.
//! - [`datadir`]: data directory, host key creation.
//! - [`store`]: the registry (devices, operators, keys, policy, audit) behind one async
//!   interface, on SQLite or PostgreSQL.
//! - [`admin`]: registry operations behind `burrow relay device|operator ...`.
//! - [`audit`]: the audit trail (table and log).
//! - [`enroll`]: join tokens, the `+enroll` login and the request that registers a new key.
//! - `quarantine`: one key seen from two places at once: the first session kept, the other
//!   refused.
//! - [`alerts`]: alerts raised from the audit trail and presence timers, posted to webhooks.
//! - [`config_file`]: the relay's TOML config file (`--config FILE`).
//! - [`audit_subject`]: the device and operator each audit entry concerns (for its queries).
//! - [`audit_follow`]: `relay audit --follow`: new entries as they are written, by any relay.
//! - `cluster`: several relays on one PostgreSQL registry: presence, routing, peer links.
//! - [`metrics`]: Prometheus counters and their page.
//! - `device_metrics`: the page's per-device part (presence, reconnects, probe, report).
//! - [`host_keys`]: the relay's host keys and their rotation (`relay hostkey add|ls|retire`).
//! - [`console`]: serial consoles terminated at the relay (hubs, sessions, recordings).
//! - [`registry`]: online device sessions, endpoints, takeover.
//! - `gate`: caps and rates of unauthenticated connections; room made by cutting the oldest;
//!   a login gives its address's token back.
//! - `admission_log`: what the gate refused or cut, logged at most every 10 s.
//! - `server`: the accept loop and per-connection task.
//! - `stream_end`: how a stream ended: normally, closed early by one side, or cut by a fault.
//! - [`show`]: `device show`, `relay alerts`, and the health columns of `device ls`, as text.
//! - `conn`: the SSH handler of one connection: authentication and request dispatch.
//! - `device`: what devices may ask for (forwards, allowed targets).
//! - `health`: why a device session ended, the agent's probe timed here, its health report.
//! - `operator`: what operators may ask for (endpoint streams, `ls`).
//! - `nudge`: waking an operator's client that owes window for data it threw away.
//! - `operator_exec`: the operator's exec commands (`ls`, `help`).
//! - `operator_session`: operator connections and what each has open (for revocation).
//! - `operator_stream`: an operator's stream to an endpoint: routing, splice, audit, cuts.
//! - `listeners`: real TCP listeners granted by `allow-listen`.
//! - `revocation`: CLI changes to the registry reaching open sessions within 2 s.
//! - `password`: the password path: equal work for every name, the operator lock.
//! - `throttle`: password guessing as bookkeeping: each address's turns, operator counts.
//! - [`fleet`]: the fleet as one operator may see it (behind `ls` and the web pages).
//! - [`web`]: the web console (`--web`) and the HTTP stack the metrics page shares.
//! - [`totp`]: one-time codes (RFC 6238), the second factor after a password.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
mod admission_log;
pub mod alerts;
pub mod audit;
pub mod audit_follow;
pub mod audit_subject;
mod cluster;
pub mod config;
pub mod config_file;
mod conn;
pub mod console;
pub mod control;
pub mod datadir;
mod device;
mod device_metrics;
pub mod enroll;
pub mod fleet;
mod gate;
mod health;
pub mod host_keys;
mod listeners;
pub mod metrics;
mod nudge;
mod operator;
mod operator_exec;
mod operator_session;
mod operator_stream;
mod password;
mod quarantine;
pub mod registry;
mod revocation;
mod server;
pub mod show;
pub mod store;
mod stream_end;
mod throttle;
pub mod totp;
pub mod web;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use burrow_io::keys::PrivateKey;
use burrow_ssh::kex::HostKey;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::RelayConfig;

/// Why the relay could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The data directory or host key is unusable.
    #[error("{0}")]
    DataDir(String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The listening socket failed.
    #[error("listener failed: {0}")]
    Listener(std::io::Error),
}

/// A relay: its state, shared by every connection.
pub struct Relay {
    config: RelayConfig,
    db: store::Db,
    audit: audit::Audit,
    registry: registry::Registry,
    operators: operator::Operators,
    throttle: throttle::Throttle,
    listeners: listeners::Listeners,
    hubs: console::Hubs,
    recording_limits: console::recording::Limits,
    /// Console port logs uploaded by agents.
    portlogs: Arc<console::portlog::PortLogs>,
    /// The last console alert recorded per device.
    seen_alerts: console::SeenAlerts,
    gate: gate::Gate,
    admission_log: admission_log::AdmissionLog,
    /// The host key as the SSH layer signs with it.
    /// Every host key held (the one in use, and the next one during a rotation).
    host_keys: host_keys::Live,
    /// The host keys of the cluster's other live relays (blobs), announced with this
    /// relay's own so that clients reaching the cluster under one name keep them.
    peer_host_keys: std::sync::Mutex<Vec<Vec<u8>>>,
    tracker: TaskTracker,
    next_id: AtomicU64,
    metrics: metrics::Metrics,
    /// This relay's part in a cluster, when its registry is PostgreSQL.
    cluster: Option<cluster::Cluster>,
    /// Set once the relay began to shut down: what it cuts then is cut by its stopping.
    stopping: std::sync::atomic::AtomicBool,
    /// This relay's hold on its data directory, given up when it stops serving.
    dir_lock: std::sync::Mutex<Option<datadir::DirLock>>,
    /// One-time web login links made by `ssh OPERATOR@relay web`.
    web_links: web::Links,
    /// The last TOTP step each operator used (a code works once).
    totp_used: totp::Used,
    /// The fingerprint of this start's control key (`burrow relay console power`).
    control_key: Option<String>,
}

impl Relay {
    /// Opens the data directory (creating the host key and database on first start), once no
    /// other relay holds it.
    pub async fn open(config: RelayConfig) -> Result<Arc<Relay>, RelayError> {
        datadir::ensure(&config.data_dir)?;
        let dir_lock = datadir::lock(&config.data_dir)?;
        match &config.database {
            None => datadir::refuse_cluster_dir_for_sqlite(&config.data_dir)?,
            Some(url) => {
                if let Err(e) = datadir::mark_cluster(&config.data_dir, url, &config.relay_id) {
                    tracing::warn!(
                        "cannot mark {} as a cluster relay's directory: {e}",
                        config.data_dir.display()
                    );
                }
            }
        }
        let (host_key, created) = datadir::load_or_create_host_key(&config.data_dir)?;
        let fingerprint = burrow_io::keys::fingerprint(host_key.public_key());
        if created {
            tracing::info!(
                "created host key {fingerprint} in {}",
                config.data_dir.display()
            );
        }
        tracing::info!(
            "relay data directory {}, host key fingerprint {fingerprint}",
            config.data_dir.display()
        );
        let db = match &config.database {
            Some(url) => {
                store::Db::postgres_with(
                    url,
                    &config.relay_id,
                    Some(&config.data_dir),
                    config.snapshot_max_age,
                )
                .await?
            }
            None => {
                let path = config.data_dir.join(datadir::DATABASE_FILE);
                match store::Db::sqlite(&path) {
                    Ok(db) => db,
                    // A full disk: the reserve makes room to open (and to begin writing); what
                    // does not fit then waits in memory for space.
                    Err(e) if datadir::release_reserve(&config.data_dir) => {
                        tracing::error!(
                            "cannot open the database ({e}): the disk is full; released the {} KiB reserve in {} to start",
                            datadir::RESERVE_BYTES / 1024,
                            config.data_dir.display()
                        );
                        store::Db::sqlite(&path)?
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        };
        datadir::keep_reserve(&config.data_dir);
        let interrupted = db.interrupt_leftovers().await?;
        // Nothing is online yet; what a crash left open is recorded as interrupted.
        if interrupted > 0 {
            tracing::warn!(
                "{interrupted} audit entries (streams, device sessions) were left open by the previous run; marked interrupted"
            );
        }
        let cluster = config.database.as_ref().map(|_| {
            cluster::Cluster::new(
                config.relay_id.clone(),
                config.peer_advertise.clone().unwrap_or_default(),
            )
        });
        drop(host_key);
        let host_keys = host_keys::Live::open(&config.data_dir)?;
        if let Some(new) = &host_keys.get().keys.new {
            tracing::info!(
                "also holding the new host key {} (announced to clients, which learn it; `burrow relay hostkey retire` puts it in use)",
                burrow_io::keys::fingerprint(new.public_key())
            );
        }
        tokio::task::spawn_blocking(password::prepare);
        let control_key = control::make_key(&config.data_dir);
        Ok(Arc::new(Relay {
            audit: audit::Audit::new(db.clone()),
            gate: gate::Gate::new(
                config.max_unauthenticated,
                config.max_unauthenticated_per_ip,
                config.handshakes_per_ip_per_sec,
                config.handshake_burst_per_ip,
            ),
            admission_log: admission_log::AdmissionLog::new(admission_log::Limits {
                rate: config.handshakes_per_ip_per_sec,
                burst: config.handshake_burst_per_ip,
                per_ip: config.max_unauthenticated_per_ip,
                global: config.max_unauthenticated,
            }),
            registry: registry::Registry::default(),
            operators: operator::Operators::default(),
            // Every password is checked before the authentication deadline, however long
            // its address has guessed.
            throttle: throttle::Throttle::new(
                config.password_delay_first,
                config.password_delay_max.min(config.pre_auth_timeout / 2),
                config.password_lock_after,
            ),
            listeners: listeners::Listeners::default(),
            hubs: console::Hubs::default(),
            portlogs: Arc::new(console::portlog::PortLogs::new(
                &config.data_dir,
                config.console_logs,
            )),
            seen_alerts: console::SeenAlerts::default(),
            recording_limits: console::recording::Limits::new(
                &config.data_dir,
                config.recording_max_bytes,
                config.recordings_max_total,
            ),
            db,
            host_keys,
            peer_host_keys: std::sync::Mutex::new(Vec::new()),
            tracker: TaskTracker::new(),
            next_id: AtomicU64::new(1),
            metrics: metrics::Metrics::default(),
            cluster,
            web_links: web::Links::default(),
            totp_used: totp::Used::default(),
            control_key,
            config,
            stopping: std::sync::atomic::AtomicBool::new(false),
            dir_lock: std::sync::Mutex::new(Some(dir_lock)),
        }))
    }

    /// `SHA256:...` fingerprint of the host key.
    pub fn fingerprint(&self) -> String {
        burrow_io::keys::fingerprint(self.host_keys.get().keys.current.public_key())
    }

    /// Every host key held (the one in use, and the next one during a rotation).
    pub fn host_keys(&self) -> host_keys::HostKeys {
        self.host_keys.get().keys.clone()
    }

    /// The key in use, for the key exchange (and a cluster relay's identity to its peers).
    pub(crate) fn ssh_host_key(&self) -> Arc<HostKey> {
        self.host_keys.get().ssh.clone()
    }

    /// Reads the host key files again if `relay hostkey` changed them (see
    /// [`host_keys::Live::refresh`]); true when it did.
    pub(crate) fn refresh_host_keys(&self) -> bool {
        let Some(held) = self.host_keys.refresh() else {
            return false;
        };
        let fp = |k: &PrivateKey| burrow_io::keys::fingerprint(k.public_key());
        match &held.keys.new {
            Some(new) => tracing::info!(
                "host keys changed: {} in use, {} new (announced to clients, which learn it)",
                fp(&held.keys.current),
                fp(new)
            ),
            None => tracing::info!("host keys changed: {} in use", fp(&held.keys.current)),
        }
        // Devices logged in already are told now, not at their next login: a burrow agent
        // takes a second announcement (OpenSSH would end the connection, so stock clients
        // learn at their next login).
        let extra: Vec<Arc<HostKey>> = std::iter::once(held.ssh.clone())
            .chain(held.extra.iter().cloned())
            .collect();
        let peers = self
            .peer_host_keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for device in self.registry.all() {
            if device.software.starts_with("burrow_") {
                device
                    .handle
                    .reannounce_host_keys(extra.clone(), peers.clone());
            }
        }
        true
    }

    /// The fingerprints of every host key this relay announces after a login: its own, then
    /// its cluster's other live relays'.
    pub fn announced_host_keys(&self) -> Vec<String> {
        let t = self.server_transport();
        t.host_key
            .iter()
            .chain(t.extra_host_keys.iter())
            .map(|k| k.blob())
            .chain(t.peer_host_keys)
            .filter_map(|b| burrow_io::keys::PublicKey::from_bytes(&b).ok())
            .map(|k| burrow_io::keys::fingerprint(&k))
            .collect()
    }

    /// The SSH settings of a connection this relay accepts: its host key, and the others it
    /// holds or its cluster's relays hold, announced after authentication.
    pub(crate) fn server_transport(&self) -> burrow_ssh::transport::Config {
        let held = self.host_keys.get();
        let mut t = self.config.transport(held.ssh.clone());
        t.announce_host_keys = true;
        t.extra_host_keys = held.extra.clone();
        t.peer_host_keys = self
            .peer_host_keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        t
    }

    /// The host key's public half as an OpenSSH line (for known_hosts files).
    pub fn host_public_key(&self) -> String {
        burrow_io::keys::public_key_line(self.host_keys.get().keys.current.public_key())
    }

    /// The registry.
    pub fn db(&self) -> &store::Db {
        &self.db
    }

    /// The SQLite store of a relay on SQLite, for the demo and tests that write the registry
    /// directly.
    ///
    /// # Panics
    /// On a relay whose registry is not SQLite.
    pub fn store(&self) -> &store::Store {
        self.db
            .sqlite_store()
            .expect("Relay::store is for relays on SQLite; use Relay::db")
    }

    /// Serves connections from `listener` until `shutdown` is cancelled, then closes every
    /// session and waits (bounded) for their tasks.
    pub async fn run(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), RelayError> {
        server::run(self, listener, shutdown).await
    }

    /// Serves the relay-to-relay port of a cluster from `listener` until `shutdown`.
    pub async fn serve_peers(self: Arc<Self>, listener: TcpListener, shutdown: CancellationToken) {
        cluster::peer::serve(self, listener, shutdown).await;
    }

    /// Serves Prometheus metrics from `listener` until `shutdown`.
    pub async fn serve_metrics(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) {
        metrics::serve(self, listener, shutdown).await;
    }

    /// Serves the web console (checked and loaded by [`web::prepare`]) until `shutdown`.
    pub async fn serve_web(self: Arc<Self>, web: web::Prepared, shutdown: CancellationToken) {
        web::serve(self, web, shutdown).await;
    }

    /// The metrics page as a scrape sees it now.
    pub async fn metrics_page(&self) -> String {
        let held = self.registry.all().len() as u64;
        let devices_online = match self.db.postgres_reads().await {
            Some(pg) => pg.count_online().await.unwrap_or(held),
            None => held,
        };
        let gauges = metrics::Gauges {
            devices_online,
            devices_held: held,
            operator_sessions: self.operators.all().len() as u64,
            audit_queue: self.db.queued() as u64,
            degraded: self.is_degraded(),
            disk_full: self.db.disk_full().is_some(),
            audit_dropped: self.db.held().1,
        };
        let mut page = metrics::render(&self.metrics, self.db.stats(), &gauges);
        // The per-device part reads the same listing as `device ls`; a scrape during an outage
        // of the registry gets the relay's own counters only.
        if let Ok(devices) = self.db.devices().await {
            page.push_str(&device_metrics::render(
                &devices,
                self.metrics.health_reports(),
            ));
        }
        page
    }

    /// Whether the relay runs degraded: its cluster database cannot be reached, or the disk
    /// under its registry takes no writes.
    pub fn is_degraded(&self) -> bool {
        self.degraded_because().is_some()
    }

    /// Why the relay runs degraded, if it does.
    pub fn degraded_because(&self) -> Option<String> {
        if let Some(why) = self.db.disk_full() {
            return Some(format!(
                "the disk under {} takes no writes ({why}); audit entries are held in memory",
                self.config.data_dir.display()
            ));
        }
        self.cluster
            .as_ref()
            .filter(|c| c.is_degraded())
            .map(|_| "the cluster's database cannot be reached".to_string())
    }

    /// Endpoint ports of `device` if it is online (from the relay's memory, not the database).
    pub fn online_endpoints(&self, device: &str) -> Option<Vec<u16>> {
        self.registry.get(device).map(|s| s.ports())
    }

    /// The peer address of `device`'s current session, if online.
    pub fn online_peer(&self, device: &str) -> Option<std::net::SocketAddr> {
        self.registry.get(device).map(|s| s.peer)
    }

    /// The most bytes one stream of `device`'s current session ever held unread at the relay
    /// (bounded by the window the relay advertised on that stream), if online.
    pub fn online_peak_buffered(&self, device: &str) -> Option<usize> {
        self.registry.get(device).map(|s| s.handle.peak_buffered())
    }

    /// Key exchanges finished on `device`'s current session (the first included), if online.
    pub fn online_key_exchanges(&self, device: &str) -> Option<u32> {
        self.registry.get(device).map(|s| s.handle.key_exchanges())
    }

    /// Whether the relay is shutting down.
    pub(crate) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}
