//! `burrow agent ...`: run the agent from a config file and/or flags, or show its status.

use std::path::PathBuf;

use burrow_agent::{AgentOptions, default_status_file, status};
use burrow_proto::addr::ExposeSpec;
use burrow_proto::agent_config::{AgentConfig, Connect, Console, Expose, Seconds};
use tokio_util::sync::CancellationToken;

use crate::cli::{AgentArgs, AgentCommand};
use crate::exit::{self, Failure, Result};

pub async fn run(mut args: AgentArgs, shutdown: CancellationToken) -> Result {
    if matches!(args.command, Some(AgentCommand::Enroll(_)))
        && let Some(AgentCommand::Enroll(enroll)) = args.command.take()
    {
        return crate::enroll_cmd::run(*enroll, shutdown).await;
    }
    if let Some(AgentCommand::Status { json }) = args.command {
        return show_status(&args, json);
    }
    let config = build_config(&args)?;
    let status_file = args
        .status_file
        .clone()
        .or_else(|| config.status_file.clone())
        .unwrap_or_else(default_status_file);
    let mut options = AgentOptions::new(status_file);
    // Pins learned from a relay's host key rotation go where the pins came from: the config
    // file, unless --host-key gave them.
    if args.host_key.is_empty() {
        options.config_file = args.config.clone();
    }
    burrow_agent::run(config, options, shutdown)
        .await
        .map_err(|e| Failure::new(exit::CONFIG, e.to_string()))
}

/// `agent status` exit code: the agent runs but its tunnel is not up.
const STATUS_NOT_UP: i32 = 1;
/// `agent status` exit code: the agent is not running (as an LSB init script's `status`).
const STATUS_NOT_RUNNING: i32 = 3;

/// `agent status`: the status file the agent of `--config` (or `--status-file`) writes, and an
/// exit code scripts can test.
fn show_status(args: &AgentArgs, json: bool) -> Result {
    let from_config = match &args.config {
        Some(path) => read_config(path)?.status_file,
        None => None,
    };
    let path = args
        .status_file
        .clone()
        .or(from_config)
        .unwrap_or_else(default_status_file);
    let s = status::read(&path).map_err(|e| Failure::new(exit::NOINPUT, e))?;
    let running = status::process_runs(s.pid, &path);
    if json {
        println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
    } else {
        if !running {
            println!(
                "process    NOT RUNNING: agent process {} is gone; its last status (from {}) follows",
                s.pid,
                path.display()
            );
        }
        print!("{}", status::render(&s));
    }
    let code = match s.state {
        _ if !running => STATUS_NOT_RUNNING,
        status::State::Up | status::State::Idle => return Ok(()),
        status::State::Connecting | status::State::Down => STATUS_NOT_UP,
    };
    // The text above says why; the exit code alone tells a script.
    std::process::exit(code);
}

/// The agent config file at `path`, parsed.
fn read_config(path: &std::path::Path) -> Result<AgentConfig> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Failure::new(
            exit::NOINPUT,
            format!("cannot read config {}: {e}", path.display()),
        )
    })?;
    AgentConfig::from_toml(&text)
        .map_err(|e| Failure::new(exit::CONFIG, format!("config {}: {e}", path.display())))
}

/// The config file (if any) with the flags applied on top.
pub fn build_config(args: &AgentArgs) -> Result<AgentConfig> {
    let cfg_err = |m: String| Failure::new(exit::CONFIG, m);
    let mut config = match &args.config {
        Some(path) => read_config(path)?,
        None => {
            let missing: Vec<&str> = [
                ("--relay", args.relay.is_empty()),
                ("--name", args.name.is_none()),
                ("--key", args.key.is_none()),
            ]
            .into_iter()
            .filter_map(|(f, m)| m.then_some(f))
            .collect();
            if !missing.is_empty() {
                return Err(Failure::new(
                    exit::USAGE,
                    format!(
                        "missing {}: give them as flags or use --config FILE",
                        missing.join(", ")
                    ),
                ));
            }
            AgentConfig::new(String::new(), String::new(), PathBuf::new())
        }
    };
    if !args.relay.is_empty() {
        config.relay = args.relay.join(",");
    }
    if args.connections.is_some() {
        config.connections = args.connections;
    }
    if let Some(n) = &args.name {
        config.name = n.clone();
    }
    if let Some(k) = &args.key {
        config.key = k.clone();
    }
    if !args.host_key.is_empty() {
        config.host_key = Some(args.host_key.join(","));
    }
    if let Some(k) = &args.known_hosts {
        config.known_hosts = Some(k.clone());
    }
    if args.trust_on_first_use {
        config.trust_on_first_use = true;
    }
    if let Some(p) = args.profile {
        config.profile = p;
    }
    if let Some(c) = &args.on_state_change {
        config.on_state_change = Some(c.clone());
    }
    for (flag, value, slot) in [
        (
            "--probe-interval",
            args.probe_interval,
            &mut config.probe_interval,
        ),
        ("--backoff-min", args.backoff_min, &mut config.backoff_min),
        ("--backoff-max", args.backoff_max, &mut config.backoff_max),
        (
            "--keepalive-interval",
            args.keepalive_interval,
            &mut config.keepalive_interval,
        ),
        (
            "--keepalive-timeout",
            args.keepalive_timeout,
            &mut config.keepalive_timeout,
        ),
        (
            "--health-interval",
            args.health_interval,
            &mut config.health_interval,
        ),
        (
            "--health-refresh",
            args.health_refresh,
            &mut config.health_refresh,
        ),
    ] {
        if let Some(v) = value {
            if !v.is_finite() || v < 0.0 {
                return Err(Failure::new(
                    exit::USAGE,
                    format!("{flag} {v}: give a number of seconds"),
                ));
            }
            *slot = Some(Seconds::Fraction(v));
        }
    }
    for spec in &args.expose {
        let e: ExposeSpec = spec
            .parse()
            .map_err(|e| Failure::new(exit::USAGE, format!("--expose {spec}: {e}")))?;
        config.expose.retain(|x| x.port != e.port);
        config.expose.push(Expose {
            port: e.port,
            to: Some(e.to.to_string()),
            remote_port: None,
            bind: None,
        });
    }
    for spec in &args.console {
        let console =
            Console::parse_flag(spec).map_err(|e| Failure::new(exit::USAGE, e.to_string()))?;
        config.console.retain(|c| c.name != console.name);
        config.console.push(console);
    }
    for spec in &args.connect {
        let Some((listen, to)) = spec.split_once('=') else {
            return Err(Failure::new(
                exit::USAGE,
                format!("--connect {spec}: write LISTEN=HOST:PORT, e.g. 1883=localhost:1883"),
            ));
        };
        config.connect.push(Connect {
            listen: listen.to_string(),
            to: to.to_string(),
        });
    }
    config.validate().map_err(|e| cfg_err(e.to_string()))?;
    Ok(config)
}
