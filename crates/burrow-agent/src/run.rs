//! The reconnect loop: run a session, wait a jittered backoff, run again, forever.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use burrow_proto::addr::Target;
use burrow_proto::agent_config::AgentConfig;
use burrow_proto::backoff::Backoff;
use tokio_util::sync::CancellationToken;

use crate::handler::Shared;
use crate::hostkey::HostKeyPolicy;
use crate::session::{Ctx, Current};
use crate::status::{ConsoleStatus, EndpointStatus, State, StatusBoard};
use crate::{AgentError, AgentOptions};

/// A session up this long proves the setup works: later failures start backoff from scratch.
pub const STABLE_PERIOD: Duration = Duration::from_secs(60);

/// Runs the agent until `shutdown` is cancelled. Connection failures are retried forever;
/// only an unusable configuration returns an error. With `[metadata]`, the tunnel comes and
/// goes with the metadata (see `crate::metadata`).
pub async fn run(
    config: AgentConfig,
    options: AgentOptions,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    config
        .validate()
        .map_err(|e| AgentError::Config(e.to_string()))?;
    if let Some(count) = config.keepalive_count {
        tracing::warn!(
            "keepalive_count = {count} is no longer used: TCP retries a keepalive until keepalive_timeout ({:?}) runs out; remove it from the config",
            config.keepalive_timeout()
        );
    }
    let schedule = config.schedule();
    tracing::info!(
        "keepalive after {:?} without sending ({:?} without hearing the relay after stream bytes), answer within {:?}; profile {}",
        schedule.interval,
        schedule.busy_interval,
        schedule.timeout,
        config.profile.name()
    );
    if let Some(metadata) = config.metadata.clone() {
        return crate::metadata::run(config, metadata, options, shutdown).await;
    }
    // Fail fast on an unusable key: a retry will not fix its permissions. (A key delivered by
    // metadata is parsed before it is written, with mode 0600.)
    burrow_io::keys::load_private_key(&config.key)
        .map_err(|e| AgentError::Config(e.to_string()))?;
    let status = StatusBoard::new(
        &config.name,
        &config.relay,
        Vec::new(),
        options.status_file.clone(),
        config.on_state_change.clone(),
    );
    let current: Current = Arc::default();
    crate::connect::start(
        &config.connect,
        &config.name,
        current.clone(),
        shutdown.clone(),
    )
    .await?;
    run_tunnel(config, options, status, current, shutdown).await
}

/// Runs one tunnel configuration, reporting to `status`, until `shutdown` is cancelled.
pub(crate) async fn run_tunnel(
    config: AgentConfig,
    options: AgentOptions,
    status: StatusBoard,
    current: Current,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    let relays = config
        .relay_targets()
        .map_err(|e| AgentError::Config(e.to_string()))?;
    let host_key = match (&config.host_key, &config.known_hosts) {
        (Some(fp), _) => HostKeyPolicy::Fingerprint(fp.clone()),
        (None, Some(path)) => HostKeyPolicy::KnownHosts {
            path: path.clone(),
            trust_on_first_use: config.trust_on_first_use,
        },
        (None, None) => return Err(AgentError::Config("no relay host key pin".into())),
    };
    let mut services = HashMap::new();
    let mut endpoints = Vec::new();
    for e in &config.expose {
        let target = e
            .target()
            .map_err(|err| AgentError::Config(err.to_string()))?;
        endpoints.push(EndpointStatus {
            port: e.port,
            requested: e.requested_port(),
            to: target.to_string(),
            up: false,
            error: None,
        });
        services.insert(e.requested_port(), target);
    }
    let relay_list = relays
        .iter()
        .map(Target::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let mut console_status = Vec::new();
    for (console, port) in config.consoles() {
        let device = console.port_label();
        // Served anyway (a USB adapter may be plugged in later), but said at once: a mistyped
        // path would otherwise show only when an operator attaches.
        if console.usb.is_none() && !console.device.exists() {
            tracing::warn!(
                "console {}: {device} does not exist (yet); operators attaching see it offline until it appears. Check the path (ls /dev/serial/by-id/)",
                console.name
            );
        }
        console_status.push(ConsoleStatus {
            name: console.name.clone(),
            device,
            baud: console.baud,
            port,
            present: None,
            line: None,
        });
    }
    status.retarget(&config.name, &relay_list, endpoints, console_status);
    // The consoles' ports stay open for as long as this configuration runs, attached or not.
    let consoles_stop = shutdown.child_token();
    let _stop_consoles = consoles_stop.clone().drop_guard();
    let log_wake = Arc::new(tokio::sync::Notify::new());
    let alerts = Arc::new(crate::console::AlertQueue::open(
        options.state_dir.join("console-log"),
        log_wake.clone(),
    ));
    let env = crate::console::KeeperEnv {
        opener: options.port_opener.clone(),
        roots: options.roots.clone(),
        alerts: alerts.clone(),
        log_dir: options.state_dir.join("console-log"),
        log_wake: log_wake.clone(),
        status: status.clone(),
    };
    let mut consoles = HashMap::new();
    let mut keepers = Vec::new();
    for (console, port) in config.consoles() {
        let keeper = crate::console::Keeper::start(console.clone(), &env, consoles_stop.clone())
            .map_err(AgentError::Config)?;
        keepers.push(keeper.clone());
        consoles.insert(port, keeper);
    }
    let shared = Arc::new(Shared {
        instance: options.instance.clone(),
        consoles,
        host_key: Mutex::new(host_key),
        pin_file: options
            .config_file
            .clone()
            .filter(|_| config.host_key.is_some()),
        services,
    });
    if !keepers.is_empty() || !alerts.pending().is_empty() {
        let uploads = Arc::new(crate::console::Uploads {
            keepers,
            alerts,
            wake: log_wake,
            default_delay: config.schedule().interval,
        });
        tokio::spawn(crate::console::run_uploads(
            uploads,
            current.clone(),
            consoles_stop.clone(),
        ));
    }

    let connections = config.connection_count();
    let interval = config.health_interval();
    let health = (!interval.is_zero()).then(|| {
        let health = Arc::new(crate::health::Health::new(
            interval,
            config.health_refresh(),
        ));
        tokio::spawn(crate::health::keep_reading(
            health.clone(),
            interval,
            status.clone(),
            shutdown.clone(),
        ));
        health
    });
    let ctx = Arc::new(Ctx {
        config,
        shared,
        status,
        current,
        slots_up: Default::default(),
        health,
    });
    let relays = Arc::new(relays);
    let in_use = Arc::new(Mutex::new(vec![None; connections]));
    let mut slots = tokio::task::JoinSet::new();
    for slot in 0..connections {
        slots.spawn(hold(
            ctx.clone(),
            relays.clone(),
            in_use.clone(),
            slot,
            shutdown.clone(),
        ));
    }
    while slots.join_next().await.is_some() {}
    ctx.status
        .set_state(State::Down, Some("agent stopped".into()));
    Ok(())
}

/// Which relay each slot holds a session with (by index into the relay list).
type InUse = Arc<Mutex<Vec<Option<usize>>>>;

/// The relay a slot tries next after `last`: the next in the list that no other slot holds
/// (slots start on relays of their own), wrapping around.
fn next_relay(relays: usize, slot: usize, last: Option<usize>, in_use: &InUse) -> usize {
    let held = in_use.lock().unwrap_or_else(|e| e.into_inner());
    let start = last.map_or(slot % relays.max(1), |l| (l + 1) % relays.max(1));
    (0..relays)
        .map(|i| (start + i) % relays)
        .find(|r| {
            !held
                .iter()
                .enumerate()
                .any(|(s, h)| s != slot && *h == Some(*r))
        })
        .unwrap_or(start)
}

/// One connection slot: holds a session to one relay of the list, moving to the next one when
/// it fails, until `shutdown`. A slot backs off only after every relay failed in a row.
async fn hold(
    ctx: Arc<Ctx>,
    relays: Arc<Vec<Target>>,
    in_use: InUse,
    slot: usize,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(ctx.config.backoff_min(), ctx.config.backoff_max());
    let mut replaced_in_a_row = 0u32;
    let mut waiting_for_approval = false;
    let mut failed_in_a_row = 0usize;
    let mut last: Option<usize> = None;
    loop {
        let index = next_relay(relays.len(), slot, last, &in_use);
        last = Some(index);
        let Some(target) = relays.get(index) else {
            return;
        };
        if let Some(h) = in_use
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(slot)
        {
            *h = Some(index);
        }
        if ctx
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
        {
            ctx.status.set_state(State::Connecting, None);
        }
        let ended = crate::session::run(&ctx, slot, target, &shutdown).await;
        if let Some(h) = in_use
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(slot)
        {
            *h = None;
        }
        if shutdown.is_cancelled() {
            return;
        }
        if ended.up_for >= STABLE_PERIOD {
            backoff.reset();
            failed_in_a_row = 0;
        }
        let (error, delay) = match (ended.replaced, ended.pending, ended.quarantined) {
            // Approval is a person's decision: ask again at the pace of the backoff (its
            // longest wait is how soon after approval the device connects), and say it once.
            (_, Some(why), _) => {
                replaced_in_a_row = 0;
                let delay = backoff.next_delay(rand::random::<f64>());
                let error = format!("waiting for approval: {why}");
                if !waiting_for_approval {
                    tracing::warn!("{error}");
                }
                waiting_for_approval = true;
                (error, delay)
            }
            // The key is in use by another session (a copy of this device?): the relay keeps
            // that one. Wait the longest backoff and say so once.
            (_, _, Some(why)) => {
                let delay = ctx.config.backoff_max();
                let error = format!(
                    "{why}. Waiting {:.0} s before trying again",
                    delay.as_secs_f64()
                );
                if replaced_in_a_row == 0 {
                    tracing::error!("{error}");
                }
                replaced_in_a_row += 1;
                (error, delay)
            }
            // Another session of this device took over: fighting it back every few seconds
            // helps nobody. Wait the longest backoff, and say so once in plain words.
            (Some(why), _, _) => {
                let delay = ctx.config.backoff_max();
                let error = format!(
                    "replaced: {why}; another agent may be using this device's name or key. Waiting {:.0} s before trying again",
                    delay.as_secs_f64()
                );
                if replaced_in_a_row == 0 {
                    tracing::warn!("{error}");
                } else {
                    tracing::debug!("{error}");
                }
                replaced_in_a_row += 1;
                (error, delay)
            }
            (None, None, None) => {
                replaced_in_a_row = 0;
                waiting_for_approval = false;
                failed_in_a_row += 1;
                let error = ended.error.unwrap_or_else(|| "session ended".into());
                // An attempt that timed out waiting on a dark link already waited long: the
                // next one goes at once, so that it is under way when the link returns.
                if ended.unanswered {
                    backoff.reset();
                }
                // With other relays to try, the next one goes at once (failover); the backoff
                // starts once each has failed in a row.
                let delay = if relays.len() > 1 && !failed_in_a_row.is_multiple_of(relays.len()) {
                    std::time::Duration::ZERO
                } else {
                    backoff.next_delay(rand::random::<f64>())
                };
                tracing::warn!("{error}; retrying in {:.1} s", delay.as_secs_f64());
                (error, delay)
            }
        };
        if ctx
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
        {
            ctx.status.set_state(State::Down, Some(error));
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}
