//! On-demand access: read a metadata service every `interval` and start, restart or stop the
//! tunnel it describes.
//!
//! - entry present and unchanged: keep the tunnel;
//! - entry changed: write its key (0600, in the state directory) and restart the tunnel;
//! - entry gone: stop the tunnel and delete the key and the host key learned for it;
//! - metadata unreachable or malformed: change nothing, log why, try again next interval.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use burrow_proto::agent_config::AgentConfig;
use burrow_proto::metadata::{
    Found, IdSource, MetadataConfig, Source, find_entry, subscriber_imsi,
};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::session::Current;
use crate::status::{State, StatusBoard, now_rfc3339};
use crate::{AgentError, AgentOptions};

use burrow_io::http::Client;
use burrow_io::tls::Tls;

/// File name of the delivered key in the state directory.
pub const KEY_FILE: &str = "metadata_key";
/// File name of the relay host keys trusted on first use for the current entry.
pub const KNOWN_HOSTS_FILE: &str = "metadata_known_hosts";

/// The tunnel started from an entry.
struct Running {
    raw: Value,
    stop: CancellationToken,
    task: JoinHandle<Result<(), AgentError>>,
}

impl Running {
    async fn stop(self) {
        self.stop.cancel();
        match self.task.await {
            Ok(Err(e)) => tracing::warn!("the tunnel from metadata had failed: {e}"),
            Err(e) => tracing::warn!("the tunnel from metadata panicked: {e}"),
            Ok(Ok(())) => {}
        }
    }
}

struct Supervisor {
    base: AgentConfig,
    options: AgentOptions,
    source: Source,
    fetcher: Client,
    status: StatusBoard,
    current: Current,
    key_path: PathBuf,
    known_hosts: PathBuf,
    /// This device's id (the IMSI), once read.
    id: Option<String>,
    running: Option<Running>,
    /// The agent's shutdown: a read in progress is abandoned for it.
    shutdown: CancellationToken,
}

/// Runs the agent in on-demand mode until `shutdown` is cancelled.
pub(crate) async fn run(
    base: AgentConfig,
    metadata: MetadataConfig,
    options: AgentOptions,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    let source = metadata.source().map_err(AgentError::Config)?;
    let tls = if source_uses_tls(&source) {
        Some(
            Tls::new(metadata.ca_file.as_deref(), "[metadata] ca_file")
                .map_err(AgentError::Config)?,
        )
    } else {
        None
    };
    let state_dir = options
        .status_file
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let status = StatusBoard::new(
        &base.name,
        "",
        Vec::new(),
        options.status_file.clone(),
        base.on_state_change.clone(),
    );
    status.update_metadata(|m| m.source = metadata.describe());
    status.set_state(State::Idle, None);
    let current: Current = Arc::default();
    crate::connect::start(&base.connect, &base.name, current.clone(), shutdown.clone()).await?;
    let mut supervisor = Supervisor {
        id: match &source.id {
            IdSource::Fixed(id) => Some(id.clone()),
            IdSource::Subscriber(_) | IdSource::None => None,
        },
        fetcher: Client {
            timeout: metadata.timeout(),
            tls,
            user_agent: format!("burrow-agent/{}", env!("CARGO_PKG_VERSION")),
        },
        source,
        base,
        options,
        status,
        current,
        key_path: state_dir.join(KEY_FILE),
        known_hosts: state_dir.join(KNOWN_HOSTS_FILE),
        running: None,
        shutdown: shutdown.clone(),
    };
    // A key left by an agent that did not stop cleanly belongs to no running tunnel.
    supervisor.forget_entry();
    tracing::info!(
        "on-demand access: reading {} every {:.0} s",
        metadata.describe(),
        metadata.interval().as_secs_f64()
    );
    loop {
        supervisor.poll().await;
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(metadata.interval()) => {}
        }
    }
    if let Some(running) = supervisor.running.take() {
        running.stop().await;
    }
    supervisor.forget_entry();
    supervisor
        .status
        .set_state(State::Down, Some("agent stopped".into()));
    Ok(())
}

fn source_uses_tls(source: &Source) -> bool {
    source.document.tls || matches!(&source.id, IdSource::Subscriber(u) if u.tls)
}

impl Supervisor {
    /// One read of the metadata and what follows from it.
    async fn poll(&mut self) {
        // Only the read is abandoned on shutdown; starting and stopping tunnels run to the end.
        let shutdown = self.shutdown.clone();
        let outcome = tokio::select! {
            outcome = self.fetch() => outcome,
            _ = shutdown.cancelled() => return,
        };
        let at = now_rfc3339();
        match outcome {
            Err(e) => self.keep_state(at, e),
            Ok(None) => {
                let stopped = self.running.is_some();
                if let Some(running) = self.running.take() {
                    tracing::info!(
                        "metadata: the entry for this device is gone; stopping the tunnel and deleting its key"
                    );
                    running.stop().await;
                    self.forget_entry();
                    // Nothing of the stopped tunnel stays on show, its "agent stopped" included.
                    self.status
                        .retarget(&self.base.name, "", Vec::new(), Vec::new());
                }
                let id = self.id_text();
                self.status.update_metadata(|m| {
                    m.last_fetch = Some(at);
                    m.ok = true;
                    m.result = format!("no entry{id}");
                    m.tunnel = None;
                    m.host_key = None;
                });
                // Idle last: whoever sees it sees a status with the tunnel already gone.
                if stopped {
                    self.status.set_state(State::Idle, None);
                }
            }
            Ok(Some(found)) => self.apply(found, at).await,
        }
    }

    /// A read that failed or found unusable data: nothing changes; the log and the status
    /// say why.
    fn keep_state(&self, at: String, why: String) {
        let keeping = if self.running.is_some() {
            "keeping the current tunnel"
        } else {
            "no tunnel"
        };
        tracing::warn!("metadata: {why}; {keeping}, trying again next interval");
        self.status.update_metadata(|m| {
            m.last_fetch = Some(at);
            m.ok = false;
            m.result = format!("{why} ({keeping})");
        });
    }

    fn id_text(&self) -> String {
        self.id
            .as_deref()
            .map(|id| format!(" for {id}"))
            .unwrap_or_default()
    }

    /// Reads the id (once) and the document, and picks this device's entry.
    async fn fetch(&mut self) -> Result<Option<Found>, String> {
        if let (None, IdSource::Subscriber(url)) = (&self.id, &self.source.id) {
            let body = self.fetcher.get(url).await?;
            let imsi = subscriber_imsi(&body).map_err(|e| format!("{url}: {e}"))?;
            tracing::info!("metadata: this SIM's IMSI is {imsi}");
            self.status.update_metadata(|m| m.id = Some(imsi.clone()));
            self.id = Some(imsi);
        }
        let url = &self.source.document;
        let body = self.fetcher.get(url).await?;
        find_entry(&body, self.id.as_deref()).map_err(|e| format!("{url}: {e}"))
    }

    /// Starts or restarts the tunnel for an entry, unless it is the one already running.
    async fn apply(&mut self, found: Found, at: String) {
        let id = self.id_text();
        if self.running.as_ref().is_some_and(|r| r.raw == found.raw) {
            self.status.update_metadata(|m| {
                m.last_fetch = Some(at);
                m.ok = true;
                m.result = format!("entry{id} unchanged");
            });
            return;
        }
        // Check everything before touching the running tunnel: bad data starts nothing.
        let tunnel = found
            .entry
            .tunnel(&self.base, &self.key_path, &self.known_hosts)
            .and_then(|t| {
                burrow_io::keys::parse_private_key(t.private_key.expose())
                    .map_err(|e| format!("the delivered private key is unusable: {e}"))?;
                Ok(t)
            });
        let tunnel = match tunnel {
            Ok(t) => t,
            Err(e) => return self.keep_state(at, format!("the entry{id} is unusable: {e}")),
        };
        let restarting = self.running.is_some();
        if let Some(running) = self.running.take() {
            tracing::info!("metadata: the entry{id} changed; restarting the tunnel");
            running.stop().await;
        }
        // The host key trusted for the old entry is not evidence about the new one.
        self.forget_entry();
        if let Err(e) = write_key(&self.key_path, tunnel.private_key.expose()) {
            tracing::error!("metadata: {e}; no tunnel started");
            self.status.update_metadata(|m| {
                m.last_fetch = Some(at);
                m.ok = false;
                m.result = format!("{e} (no tunnel started)");
                m.tunnel = None;
            });
            self.status.set_state(State::Idle, Some(e));
            return;
        }
        let host_key = if tunnel.host_key_pinned {
            "pinned by the metadata entry".to_string()
        } else {
            tracing::warn!(
                "metadata: the entry{id} pins no relay host key: TRUSTING THE RELAY'S KEY ON FIRST USE \
                 (recorded in {}); add hostKey/host_key = \"SHA256:...\" to the entry to pin it",
                self.known_hosts.display()
            );
            format!(
                "TRUSTED ON FIRST USE (the entry pins none; recorded in {})",
                self.known_hosts.display()
            )
        };
        tracing::info!(
            "metadata: {} the tunnel: {}",
            if restarting { "restarting" } else { "starting" },
            tunnel.summary
        );
        self.status.update_metadata(|m| {
            m.last_fetch = Some(at);
            m.ok = true;
            m.result = format!("entry{id} {}", if restarting { "changed" } else { "found" });
            m.tunnel = Some(tunnel.summary.clone());
            m.host_key = Some(host_key);
        });
        let stop = CancellationToken::new();
        // The pins come from the metadata, not the config file: a learned one is kept in
        // memory only (the metadata is where it belongs).
        let options = crate::AgentOptions {
            config_file: None,
            ..self.options.clone()
        };
        let task = tokio::spawn(crate::run::run_tunnel(
            tunnel.config,
            options,
            self.status.clone(),
            self.current.clone(),
            stop.clone(),
        ));
        self.running = Some(Running {
            raw: found.raw,
            stop,
            task,
        });
    }

    /// Deletes the delivered key and the host keys learned for it.
    fn forget_entry(&self) {
        for path in [&self.key_path, &self.known_hosts] {
            match std::fs::remove_file(path) {
                Ok(()) => tracing::info!("metadata: deleted {}", path.display()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::error!("metadata: cannot delete {}: {e}", path.display()),
            }
        }
    }
}

/// Writes the delivered key with mode 0600, replacing any old one atomically.
fn write_key(path: &Path, text: &str) -> Result<(), String> {
    let err = |e: std::io::Error| format!("cannot write the delivered key {}: {e}", path.display());
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    let mut text = text.to_string();
    if !text.ends_with('\n') {
        text.push('\n');
    }
    file.write_all(text.as_bytes()).map_err(err)?;
    file.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// The SIM's IMSI, from SORACOM's `/v1/subscriber` under `base_url` (an enrolling device's
/// name, with `--name-from imsi`).
pub async fn imsi(base_url: &str, timeout: std::time::Duration) -> Result<String, String> {
    let base: burrow_proto::metadata::HttpUrl = base_url
        .parse()
        .map_err(|e| format!("metadata URL {base_url:?}: {e}"))?;
    let tls = if base.tls {
        Some(Tls::new(None, "[metadata] ca_file")?)
    } else {
        None
    };
    let fetcher = Client {
        timeout,
        tls,
        user_agent: format!("burrow-agent/{}", env!("CARGO_PKG_VERSION")),
    };
    let body = fetcher.get(&base.join("/v1/subscriber")).await?;
    subscriber_imsi(&body)
}
