//! A console port kept open for the agent's whole life, attached or not: what it says goes to
//! the port log and the pattern alerts first, then to every relay channel attached. The line
//! settings live here, so they stay across attaches, reconnects and replugging. A port that
//! goes away is looked for again every second (by path or USB identity), reopened with the
//! settings, and said to be back.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use burrow_proto::agent_config::Console;
use burrow_proto::pattern_alert::Watcher;
use burrow_proto::serial::{Change, LineSettings};
use bytes::Bytes;
use tokio::sync::{Notify, broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::alerts::AlertQueue;
use super::keeper_task::Task;
use super::locate::Roots;
use super::port::PortOpener;
use super::power::{PowerAction, switch};
use super::ring::Ring;
use crate::status::StatusBoard;

/// How often a missing port is looked for again.
pub(super) const RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// A line without an end is logged once the port was quiet this long (a prompt).
pub(super) const PARTIAL_RECORD_QUIET: Duration = Duration::from_millis(250);
/// How often partial lines, alert waits and the gone timer are looked at.
pub(super) const TICK: Duration = Duration::from_millis(250);
/// Keystroke chunks queued in front of the port before input is dropped.
pub(super) const INPUT_QUEUE: usize = 256;
/// Output messages queued for each attached channel before it skips.
const OUTPUT_QUEUE: usize = 1024;

/// What attached channels receive.
#[derive(Debug, Clone)]
pub(crate) enum Out {
    /// What the port said (after `imap`).
    Data(Bytes),
    /// A line for the operators.
    Notice(String),
    /// A report for the relay (`line ...`, `power-done ...`).
    Control(String),
}

pub(super) enum Cmd {
    Input(Bytes),
    Set(
        Vec<Change>,
        String,
        oneshot::Sender<Result<LineSettings, String>>,
    ),
    Break(bool, oneshot::Sender<std::io::Result<()>>),
    Event(String),
}

pub(super) struct Shared {
    pub(super) settings: LineSettings,
    /// The port is open now.
    pub(super) present: bool,
    /// The path it was opened at.
    pub(super) path: Option<PathBuf>,
}

/// One console port, shared by the channels attached to it and the uploader.
pub(crate) struct Keeper {
    pub(crate) console: Console,
    cmds: mpsc::Sender<Cmd>,
    pub(super) out: broadcast::Sender<Out>,
    shared: Mutex<Shared>,
    /// Relay channels attached now.
    pub(crate) attached: AtomicUsize,
    /// The port log (`None` when it cannot be kept: the agent says why at start).
    pub(crate) ring: Option<Mutex<Ring>>,
    /// Woken when the log grew or someone attached (the uploader looks).
    pub(crate) log_wake: Arc<Notify>,
}

/// What a keeper needs from the agent.
pub(crate) struct KeeperEnv {
    pub(crate) opener: Arc<dyn PortOpener>,
    pub(crate) roots: Roots,
    pub(crate) alerts: Arc<AlertQueue>,
    pub(crate) log_dir: PathBuf,
    pub(crate) log_wake: Arc<Notify>,
    pub(crate) status: StatusBoard,
}

pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Keeper {
    /// Starts keeping `console`'s port until `shutdown`.
    pub(crate) fn start(
        console: Console,
        env: &KeeperEnv,
        shutdown: CancellationToken,
    ) -> Result<Arc<Keeper>, String> {
        let watcher = Watcher::new(&console.name, &console.alert)?;
        let dir = env.log_dir.join(&console.name);
        let ring = match Ring::open(&dir, console.log_bytes()) {
            Ok(r) => Some(Mutex::new(r)),
            Err(e) => {
                tracing::error!(
                    "console {}: cannot keep a port log in {}: {e}; what the port says while nobody is attached is lost",
                    console.name,
                    dir.display()
                );
                None
            }
        };
        let (cmds, rx) = mpsc::channel(INPUT_QUEUE);
        let (out, _) = broadcast::channel(OUTPUT_QUEUE);
        let keeper = Arc::new(Keeper {
            shared: Mutex::new(Shared {
                settings: console.line_settings(),
                present: false,
                path: None,
            }),
            console,
            cmds,
            out,
            attached: AtomicUsize::new(0),
            ring,
            log_wake: env.log_wake.clone(),
        });
        let task = Task::new(keeper.clone(), env, watcher);
        tokio::spawn(task.run(rx, shutdown));
        Ok(keeper)
    }

    pub(super) fn shared(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The line settings now.
    pub(crate) fn settings(&self) -> LineSettings {
        self.shared().settings
    }

    /// Whether the port is open now.
    pub(crate) fn present(&self) -> bool {
        self.shared().present
    }

    /// The port as people name it.
    pub(crate) fn label(&self) -> String {
        self.shared()
            .path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| self.console.port_label())
    }

    /// Output and notices from now on.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Out> {
        self.out.subscribe()
    }

    /// Keystrokes for the port; false when the keeper has stopped.
    pub(crate) async fn input(&self, bytes: Bytes) -> bool {
        self.cmds.send(Cmd::Input(bytes)).await.is_ok()
    }

    /// Changes settings; `who` is named in the port log.
    pub(crate) async fn set(
        &self,
        changes: Vec<Change>,
        who: &str,
    ) -> Result<LineSettings, String> {
        let (tx, rx) = oneshot::channel();
        self.cmds
            .send(Cmd::Set(changes, who.to_string(), tx))
            .await
            .map_err(|_| "the console is shutting down".to_string())?;
        rx.await
            .map_err(|_| "the console is shutting down".to_string())?
    }

    /// Asserts or releases BREAK.
    pub(crate) async fn set_break(&self, on: bool) -> std::io::Result<()> {
        let (tx, rx) = oneshot::channel();
        let gone = || std::io::Error::other("the console is shutting down");
        self.cmds
            .send(Cmd::Break(on, tx))
            .await
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// Runs a power action in the background; the outcome goes to every channel as a notice
    /// and a `power-done` report, and into the port log.
    pub(crate) fn power(self: &Arc<Self>, action: PowerAction, who: String) {
        let keeper = self.clone();
        tokio::spawn(async move {
            let name = action.name();
            keeper.event(format!("power {name} by {who}")).await;
            let mut result = switch(&keeper.console, action).await;
            if let (Ok(_), PowerAction::CycleBreak(hold)) = (&result, action) {
                // BREAK while the device boots: ROMMON and password recovery wait for it.
                keeper.say(format!(
                    "power cycled; holding BREAK for {:.0} s",
                    hold.as_secs_f64()
                ));
                match keeper.set_break(true).await {
                    Ok(()) => {
                        tokio::time::sleep(hold).await;
                        if let Err(e) = keeper.set_break(false).await {
                            result = Err(format!("releasing BREAK failed: {e}"));
                        }
                    }
                    Err(e) => result = Err(format!("BREAK after the cycle failed: {e}")),
                }
            }
            let (report, notice) = match &result {
                Ok(done) => (
                    format!("power-done ok {name}"),
                    format!("power {name}: done ({done})"),
                ),
                Err(e) => (
                    format!("power-done failed {name}: {e}"),
                    format!("power {name} failed: {e}"),
                ),
            };
            keeper.event(notice.clone()).await;
            let _ = keeper.out.send(Out::Notice(notice));
            let _ = keeper.out.send(Out::Control(report));
        });
    }

    /// Tells every attached channel something.
    pub(crate) fn say(&self, text: String) {
        let _ = self.out.send(Out::Notice(text));
    }

    /// Notes something in the port log.
    async fn event(&self, text: String) {
        let _ = self.cmds.send(Cmd::Event(text)).await;
    }

    /// The log's unsent state, for the uploader: (id, end).
    pub(crate) fn log_end(&self) -> Option<(u64, u64)> {
        let ring = self
            .ring
            .as_ref()?
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        Some((ring.id(), ring.end()))
    }

    /// One channel more or less attached.
    pub(crate) fn attach(&self, delta: isize) {
        if delta > 0 {
            self.attached.fetch_add(1, Ordering::Relaxed);
        } else {
            self.attached.fetch_sub(1, Ordering::Relaxed);
        }
        self.log_wake.notify_one();
    }
}
