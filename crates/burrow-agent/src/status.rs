//! The agent's status: kept in memory, written atomically to a JSON file on every change (read
//! by `burrow agent status`), and announced to a state-change hook on up/down transitions.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use burrow_proto::time::format_rfc3339;
use serde::{Deserialize, Serialize};

/// Connection state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Dialing or setting up forwards.
    Connecting,
    /// Connected with every forward up.
    Up,
    /// Not connected; waiting to retry.
    Down,
    /// On-demand access with no entry for this device: no tunnel is wanted.
    Idle,
}

/// One exposed endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointStatus {
    /// The endpoint port (`NAME:PORT`).
    pub port: u16,
    /// The port requested from the relay (differs on a stock sshd relay).
    pub requested: u16,
    /// The local service.
    pub to: String,
    /// Whether the relay accepted the forward in the current session.
    pub up: bool,
    /// Why not.
    pub error: Option<String>,
}

/// One serial console the agent serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleStatus {
    /// Console name (`OPERATOR:DEVICE/NAME`).
    pub name: String,
    /// The serial device.
    pub device: String,
    /// Its configured line speed.
    pub baud: u32,
    /// Its endpoint port (RFC 2217).
    pub port: u16,
    /// Whether its port is open now (as the agent last saw it).
    #[serde(default)]
    pub present: Option<bool>,
    /// Its line settings now (`9600 8N1, flow none, DTR on, RTS on`).
    #[serde(default)]
    pub line: Option<String>,
}

/// The last end-to-end probe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeStatus {
    /// When it ran (RFC 3339).
    pub at: String,
    /// Whether the nonce came back.
    pub ok: bool,
    /// Round trip in milliseconds.
    pub rtt_ms: Option<f64>,
    /// Why it failed.
    pub error: Option<String>,
}

/// On-demand access: where the tunnel comes from and how the last read went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct MetadataStatus {
    /// The metadata source (`soracom http://...`, `url https://...`).
    pub source: String,
    /// This device's id in the document (the IMSI), once known.
    pub id: Option<String>,
    /// When the last read finished (RFC 3339).
    pub last_fetch: Option<String>,
    /// Whether it succeeded.
    pub ok: bool,
    /// What it found, or why it failed.
    pub result: String,
    /// The tunnel running from the metadata, if any.
    pub tunnel: Option<String>,
    /// How the relay's host key is checked for that tunnel.
    pub host_key: Option<String>,
}

/// Everything `burrow agent status` shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Device name.
    pub name: String,
    /// Relay address.
    pub relay: String,
    /// Current state.
    pub state: State,
    /// Since when (RFC 3339).
    pub since: String,
    /// Endpoints.
    pub endpoints: Vec<EndpointStatus>,
    /// Serial consoles served.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub consoles: Vec<ConsoleStatus>,
    /// Last probe.
    pub last_probe: Option<ProbeStatus>,
    /// Probes run in this agent's life (they run only when nothing else proved the path).
    #[serde(default)]
    pub probes: u64,
    /// Set while a keepalive waits long for its answer: when the relay was last heard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_silent_since: Option<String>,
    /// Sessions that came up again after one was lost (each of `connections` sessions' first
    /// one is a connect, not a reconnect).
    pub reconnects: u64,
    /// Last error.
    pub last_error: Option<String>,
    /// Process id of the agent.
    pub pid: u32,
    /// Last update (RFC 3339).
    pub updated: String,
    /// On-demand access (`[metadata]`), when configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<MetadataStatus>,
    /// The health report as last read (link, board), when reports are on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<burrow_proto::health::Report>,
    /// Health reports sent to relays in this agent's life.
    #[serde(default)]
    pub health_reports: u64,
}

/// Now as RFC 3339.
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    format_rfc3339(secs)
}

/// The shared, file-backed status.
#[derive(Clone)]
pub struct StatusBoard {
    inner: Arc<Mutex<Status>>,
    /// Held across one whole write of the file, so that writes from several tasks neither share
    /// a temporary file nor leave an older status on disk after a newer one.
    writer: Arc<Mutex<()>>,
    path: PathBuf,
    hook: Option<String>,
}

impl StatusBoard {
    /// A board starting in `Connecting`, writing to `path`, running `hook` on up/down changes.
    pub fn new(
        name: &str,
        relay: &str,
        endpoints: Vec<EndpointStatus>,
        path: PathBuf,
        hook: Option<String>,
    ) -> Self {
        let now = now_rfc3339();
        let board = StatusBoard {
            inner: Arc::new(Mutex::new(Status {
                name: name.to_string(),
                relay: relay.to_string(),
                state: State::Connecting,
                since: now.clone(),
                endpoints,
                consoles: Vec::new(),
                last_probe: None,
                probes: 0,
                relay_silent_since: None,
                reconnects: 0,
                last_error: None,
                pid: std::process::id(),
                updated: now,
                metadata: None,
                health: None,
                health_reports: 0,
            })),
            writer: Arc::new(Mutex::new(())),
            path,
            hook,
        };
        board.write();
        board
    }

    /// A copy of the current status.
    pub fn snapshot(&self) -> Status {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Changes the status and writes the file.
    pub fn update(&self, f: impl FnOnce(&mut Status)) {
        {
            let mut s = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut s);
            s.updated = now_rfc3339();
        }
        self.write();
    }

    /// Points the board at a new tunnel (on-demand access changed it): fresh endpoints, probe
    /// and counters; the metadata section stays.
    pub fn retarget(
        &self,
        name: &str,
        relay: &str,
        endpoints: Vec<EndpointStatus>,
        consoles: Vec<ConsoleStatus>,
    ) {
        self.update(|s| {
            s.name = name.to_string();
            s.relay = relay.to_string();
            s.endpoints = endpoints;
            s.consoles = consoles;
            s.last_probe = None;
            s.probes = 0;
            s.relay_silent_since = None;
            s.reconnects = 0;
            s.last_error = None;
        });
    }

    /// Changes the metadata section.
    pub fn update_metadata(&self, f: impl FnOnce(&mut MetadataStatus)) {
        self.update(|s| f(s.metadata.get_or_insert_with(MetadataStatus::default)));
    }

    /// Moves to `state`; on a change between up and not-up, runs the hook.
    pub fn set_state(&self, state: State, error: Option<String>) {
        let mut changed = None;
        self.update(|s| {
            if s.state != state {
                let was_up = s.state == State::Up;
                s.state = state;
                s.since = now_rfc3339();
                if was_up != (state == State::Up) {
                    changed = Some(state);
                }
            }
            if error.is_some() {
                s.last_error = error.clone();
            }
        });
        if let (Some(state), Some(hook)) = (changed, &self.hook) {
            run_hook(hook, state, error.as_deref());
        }
    }

    fn write(&self) {
        if let Err(e) = self.try_write() {
            tracing::warn!("cannot write status file {}: {e}", self.path.display());
        }
    }

    /// Writes the status as it is now. The writer lock is taken before the status is read: a
    /// write that waited for another one then writes a status at least as new as it.
    fn try_write(&self) -> std::io::Result<()> {
        let _writing = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let json = {
            let s = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            serde_json::to_string_pretty(&*s).unwrap_or_default()
        };
        write_atomically(&self.path, json.as_bytes())
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// Runs the state-change hook through `sh -c`, without waiting for it.
fn run_hook(hook: &str, state: State, error: Option<&str>) {
    let state = match state {
        State::Up => "up",
        State::Down | State::Connecting | State::Idle => "down",
    };
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c")
        .arg(hook)
        .env("BURROW_STATE", state)
        .env("BURROW_ERROR", error.unwrap_or(""))
        .stdin(std::process::Stdio::null())
        .kill_on_drop(false);
    match cmd.spawn() {
        Ok(mut child) => {
            tokio::spawn(async move {
                match child.wait().await {
                    Ok(s) if !s.success() => tracing::warn!("state-change hook exited with {s}"),
                    Err(e) => tracing::warn!("state-change hook failed: {e}"),
                    _ => {}
                }
            });
        }
        Err(e) => tracing::warn!("cannot run state-change hook {hook:?}: {e}"),
    }
}

fn render_metadata(m: &MetadataStatus) -> String {
    let mut out = format!("metadata   {}", m.source);
    if let Some(id) = &m.id {
        out.push_str(&format!(" (id {id})"));
    }
    out.push('\n');
    match &m.last_fetch {
        Some(at) if m.ok => out.push_str(&format!("  fetched  ok at {at}: {}\n", m.result)),
        Some(at) => out.push_str(&format!("  fetched  FAILED at {at}: {}\n", m.result)),
        None => out.push_str("  fetched  not yet\n"),
    }
    match &m.tunnel {
        Some(t) => out.push_str(&format!("  tunnel   from metadata: {t}\n")),
        None => out.push_str("  tunnel   none\n"),
    }
    if let Some(h) = &m.host_key {
        out.push_str(&format!("  host key {h}\n"));
    }
    out
}

/// Whether the agent that last wrote the status file at `path` (process `pid`) still runs: a
/// process of that id exists and started before the file was last written. After a reboot the
/// id may belong to any process, started after the file was written.
pub fn process_runs(pid: u32, path: &Path) -> bool {
    if !Path::new("/proc/self/stat").exists() {
        // Not Linux: trust the file.
        return true;
    }
    let Some(started) = process_start(pid) else {
        return false;
    };
    let written = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .unwrap_or(std::time::SystemTime::now());
    started <= written + std::time::Duration::from_secs(1)
}

/// When process `pid` started, from `/proc` (its start in ticks after boot, and the boot time).
fn process_start(pid: u32) -> Option<std::time::SystemTime> {
    // USER_HZ, the unit of /proc's process times, is 100 on every Linux ABI burrow runs on.
    const TICKS_PER_SECOND: u64 = 100;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: fields are counted after it;
    // the start time is field 22, the 20th after the name.
    let ticks: u64 = stat
        .rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()?;
    let boot: u64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    let after_epoch = std::time::Duration::from_secs(boot)
        + std::time::Duration::from_millis(ticks * 1000 / TICKS_PER_SECOND);
    Some(std::time::UNIX_EPOCH + after_epoch)
}

/// Reads a status file written by a running agent.
pub fn read(path: &Path) -> Result<Status, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "cannot read agent status {}: {e} (is the agent running? pass --status-file if it uses another path)",
            path.display()
        )
    })?;
    serde_json::from_str(&text)
        .map_err(|e| format!("status file {} is damaged: {e}", path.display()))
}

/// Renders a status for people.
pub fn render(s: &Status) -> String {
    let state = match s.state {
        State::Up => "up",
        State::Down => "down",
        State::Connecting => "connecting",
        State::Idle => "idle (no tunnel wanted)",
    };
    let relay = if s.relay.is_empty() { "none" } else { &s.relay };
    let mut out = format!(
        "device     {}\nrelay      {relay}\nstate      {state} since {}\nreconnects {}\n",
        s.name, s.since, s.reconnects
    );
    if let Some(t) = &s.relay_silent_since {
        out.push_str(&format!(
            "silent     the relay has sent nothing since {t}; a keepalive waits for its answer\n"
        ));
    }
    match &s.last_probe {
        Some(p) if p.ok => out.push_str(&format!(
            "probe      ok at {}, round trip {:.1} ms\n",
            p.at,
            p.rtt_ms.unwrap_or_default()
        )),
        Some(p) => out.push_str(&format!(
            "probe      FAILED at {}: {}\n",
            p.at,
            p.error.as_deref().unwrap_or("?")
        )),
        None => out
            .push_str("probe      none yet (probes run only when nothing else proved the path)\n"),
    }
    if let Some(e) = &s.last_error {
        out.push_str(&format!("last error {e}\n"));
    }
    if let Some(m) = &s.metadata {
        out.push_str(&render_metadata(m));
    }
    if s.state == State::Idle {
        return out;
    }
    if !s.consoles.is_empty() {
        out.push_str("consoles\n");
        for c in &s.consoles {
            // A path is looked at now (the agent may be stopped); a USB identity only the
            // agent can resolve.
            let present = match (c.present, Path::new(&c.device).exists()) {
                (_, true) | (Some(true), _) => "present".to_string(),
                _ => format!("MISSING: no {} on this machine now", c.device),
            };
            let line = c.line.clone().unwrap_or_else(|| format!("{} baud", c.baud));
            out.push_str(&format!(
                "  {}/{} -> {} @ {line} (endpoint {})  {present}\n",
                s.name, c.name, c.device, c.port
            ));
        }
    }
    out.push_str("endpoints\n");
    for e in &s.endpoints {
        let relay_port = if e.requested != e.port {
            format!(" (relay port {})", e.requested)
        } else {
            String::new()
        };
        let state = if e.up {
            "up".to_string()
        } else {
            format!("down: {}", e.error.as_deref().unwrap_or("not connected"))
        };
        out.push_str(&format!(
            "  {}:{}{relay_port} -> {}  {state}\n",
            s.name, e.port, e.to
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_runs_only_if_it_started_before_the_file_was_written() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("status.json");
        std::fs::write(&file, "{}").expect("write");
        assert!(process_runs(std::process::id(), &file));
        // A file written before this process started: its writer was some earlier process.
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(365 * 86_400);
        std::fs::File::options()
            .write(true)
            .open(&file)
            .and_then(|f| f.set_modified(old))
            .expect("set mtime");
        assert!(!process_runs(std::process::id(), &file));
        assert!(!process_runs(u32::MAX, &file));
    }

    #[test]
    fn writes_from_many_threads_all_land_and_the_file_ends_with_the_newest_status() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("agent-status.json");
        let board = StatusBoard::new("pi", "relay:22", Vec::new(), file.clone(), None);
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let board = board.clone();
                std::thread::spawn(move || {
                    (0..200)
                        .map(|_| {
                            board.inner.lock().expect("status").probes += 1;
                            board.try_write().err()
                        })
                        .find(Option::is_some)
                        .flatten()
                })
            })
            .collect();
        for thread in threads {
            let failure = thread.join().expect("writer thread");
            assert!(failure.is_none(), "a write failed: {failure:?}");
        }
        let on_disk = read(&file).expect("status file");
        assert_eq!(
            on_disk.probes,
            8 * 200,
            "the last write left an older status"
        );
        assert_eq!(on_disk, board.snapshot());
    }
}
