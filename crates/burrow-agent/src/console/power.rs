//! Power control of a console's device: the `[[console.power]]` commands (a USB hub port with
//! uhubctl, a GPIO relay, a PDU), run with `sh -c`, each bounded in time.

use std::process::Stdio;
use std::time::Duration;

use burrow_proto::agent_config::{Console, PowerOutlet};
use burrow_proto::console_config::{DEFAULT_CYCLE_DELAY, DEFAULT_POWER_TIMEOUT};
use tokio::io::AsyncReadExt;

/// What an operator asked of the power.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PowerAction {
    On,
    Off,
    Cycle,
    /// Cycle, then hold BREAK this long while the device boots (ROMMON, password recovery).
    CycleBreak(Duration),
}

impl PowerAction {
    /// Parses `on`, `off`, `cycle`, `cycle-break [SECONDS]` (`default` is the console's
    /// `break_hold`).
    pub(crate) fn parse(words: &[&str], default_hold: Duration) -> Result<PowerAction, String> {
        match words {
            ["on"] => Ok(PowerAction::On),
            ["off"] => Ok(PowerAction::Off),
            ["cycle"] => Ok(PowerAction::Cycle),
            ["cycle-break"] => Ok(PowerAction::CycleBreak(default_hold)),
            ["cycle-break", secs] => match secs.parse::<f64>() {
                Ok(s)
                    if s > 0.0
                        && s <= burrow_proto::console_config::MAX_BREAK_HOLD.as_secs_f64() =>
                {
                    Ok(PowerAction::CycleBreak(Duration::from_secs_f64(s)))
                }
                _ => Err(format!(
                    "cycle-break {secs:?}: give the seconds of BREAK, up to {}",
                    burrow_proto::console_config::MAX_BREAK_HOLD.as_secs()
                )),
            },
            _ => Err("power: use on, off, cycle or cycle-break [SECONDS]".into()),
        }
    }

    pub(crate) fn name(self) -> String {
        match self {
            PowerAction::On => "on".into(),
            PowerAction::Off => "off".into(),
            PowerAction::Cycle => "cycle".into(),
            PowerAction::CycleBreak(d) => format!("cycle, then BREAK for {:.0} s", d.as_secs_f64()),
        }
    }
}

fn outlet_name(i: usize, o: &PowerOutlet) -> String {
    o.name.clone().unwrap_or_else(|| {
        if i == 0 {
            "power".into()
        } else {
            format!("power{}", i + 1)
        }
    })
}

/// The outlets of a console, by name, for the relay's menu.
pub(crate) fn outlets(console: &Console) -> Vec<String> {
    console
        .power
        .iter()
        .enumerate()
        .map(|(i, o)| outlet_name(i, o))
        .collect()
}

/// Runs `verb` (`on`, `off`, `cycle`) on every outlet; a cycle without a cycle command is
/// off on all, the longest `cycle_delay`, on on all (a device with two supplies goes dark).
pub(crate) async fn switch(console: &Console, action: PowerAction) -> Result<String, String> {
    if console.power.is_empty() {
        return Err(format!(
            "console {} has no power control: add [[console.power]] with on, off or cycle commands to the agent's config",
            console.name
        ));
    }
    let mut done = Vec::new();
    match action {
        PowerAction::On | PowerAction::Off => {
            let verb = if action == PowerAction::On {
                "on"
            } else {
                "off"
            };
            for (i, o) in console.power.iter().enumerate() {
                let cmd = if verb == "on" { &o.on } else { &o.off };
                done.push(run_one(console, i, o, verb, cmd.as_deref()).await?);
            }
        }
        PowerAction::Cycle | PowerAction::CycleBreak(_) => {
            let all_cycle = console.power.iter().all(|o| o.cycle.is_some());
            if all_cycle {
                for (i, o) in console.power.iter().enumerate() {
                    done.push(run_one(console, i, o, "cycle", o.cycle.as_deref()).await?);
                }
            } else {
                for (i, o) in console.power.iter().enumerate() {
                    done.push(run_one(console, i, o, "off", o.off.as_deref()).await?);
                }
                let delay = console
                    .power
                    .iter()
                    .map(|o| o.cycle_delay.map_or(DEFAULT_CYCLE_DELAY, |d| d.duration()))
                    .max()
                    .unwrap_or(DEFAULT_CYCLE_DELAY);
                tokio::time::sleep(delay).await;
                for (i, o) in console.power.iter().enumerate() {
                    done.push(run_one(console, i, o, "on", o.on.as_deref()).await?);
                }
            }
        }
    }
    Ok(done.join(", "))
}

async fn run_one(
    console: &Console,
    i: usize,
    outlet: &PowerOutlet,
    verb: &str,
    command: Option<&str>,
) -> Result<String, String> {
    let name = outlet_name(i, outlet);
    let Some(command) = command else {
        return Err(format!(
            "{name} has no `{verb}` command in [[console.power]] of console {}",
            console.name
        ));
    };
    let timeout = outlet
        .timeout
        .map_or(DEFAULT_POWER_TIMEOUT, |t| t.duration());
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .env("BURROW_CONSOLE", &console.name)
        .env("BURROW_POWER", verb)
        .env("BURROW_OUTLET", &name)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("{name} {verb}: cannot run sh: {e}"))?;
    let mut stderr = child.stderr.take();
    let status = tokio::time::timeout(timeout, child.wait()).await;
    let mut err = String::new();
    if let Some(s) = stderr.as_mut() {
        let mut buf = Vec::new();
        let _ =
            tokio::time::timeout(Duration::from_secs(1), s.take(4096).read_to_end(&mut buf)).await;
        err = String::from_utf8_lossy(&buf)
            .trim()
            .lines()
            .last()
            .unwrap_or("")
            .to_string();
    }
    match status {
        Err(_) => {
            let _ = child.kill().await;
            Err(format!(
                "{name} {verb}: `{command}` took longer than {:.0} s and was killed",
                timeout.as_secs_f64()
            ))
        }
        Ok(Err(e)) => Err(format!("{name} {verb}: {e}")),
        Ok(Ok(s)) if s.success() => Ok(format!("{name} {verb}")),
        Ok(Ok(s)) => {
            let why = if err.is_empty() {
                s.to_string()
            } else {
                format!("{s}: {}", burrow_proto::text::clean(&err, 200))
            };
            Err(format!("{name} {verb}: `{command}` failed ({why})"))
        }
    }
}
