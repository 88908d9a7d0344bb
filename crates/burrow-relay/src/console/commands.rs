//! The console's exec commands: `console break|baud|watch|set|power|who|log DEVICE[/NAME] ...`.
//! One-shot commands attach for write like anyone else, so they respect a writer.

use std::sync::Arc;
use std::time::Duration;

use burrow_proto::name::{DEFAULT_CONSOLE, check_name};
use burrow_ssh::driver::Channel;

use super::hub::{Out, Role};
use super::session::{Attachment, DEFAULT_SIZE, Mode, run_console};
use crate::Relay;
use crate::audit::Outcome;

const USAGE: &str = "usage: console break DEVICE[/NAME] | console baud DEVICE[/NAME] RATE | console watch DEVICE[/NAME] | console set DEVICE[/NAME] SETTINGS... | console power DEVICE[/NAME] on|off|cycle|cycle-break [SECONDS] | console who DEVICE[/NAME] | console log DEVICE[/NAME] [--since T] [--follow] [--timestamps]";

/// How long a one-shot command waits for the agent's answer.
const ANSWER_WAIT: Duration = Duration::from_secs(5);
/// How long `console power` waits for the outcome (a cycle pauses, BREAK is held).
const POWER_WAIT: Duration = Duration::from_secs(180);

/// Parses `DEVICE[/NAME]`.
pub(crate) fn parse_target(arg: &str) -> Result<(String, String), String> {
    let (device, console) = arg.split_once('/').unwrap_or((arg, DEFAULT_CONSOLE));
    check_name("device", device).map_err(|e| e.to_string())?;
    check_name("console", console).map_err(|e| e.to_string())?;
    Ok((device.to_string(), console.to_string()))
}

async fn err(write: &Channel, text: &str) {
    let _ = write.stderr(format!("{text}\n").as_bytes()).await;
}

/// `console ...` as an exec command. Returns the exit status.
pub(crate) async fn console_exec(
    relay: &Arc<Relay>,
    operator: &str,
    allowed: &(dyn Fn(&str) -> bool + Sync),
    words: &[&str],
    write: &Channel,
) -> u32 {
    let (verb, target, args) = match words {
        [
            verb @ ("break" | "watch" | "who" | "baud" | "set" | "power" | "log"),
            t,
            rest @ ..,
        ] => (*verb, *t, rest),
        _ => {
            err(write, USAGE).await;
            return 2;
        }
    };
    let usage_ok = match verb {
        "break" | "watch" | "who" => args.is_empty(),
        "baud" => args.len() == 1,
        "set" => !args.is_empty(),
        "power" => !args.is_empty() && args.len() <= 2,
        _ => true,
    };
    if !usage_ok {
        err(write, USAGE).await;
        return 2;
    }
    let (device, console) = match parse_target(target) {
        Ok(t) => t,
        Err(e) => {
            err(write, &e).await;
            return 2;
        }
    };
    // A viewer (`operator set --role viewer`) reads: it may watch, list and read the log only.
    let refusal = if !matches!(verb, "watch" | "who" | "log")
        && super::session::is_viewer(relay, operator).await
    {
        Some(format!(
            "operator {operator} has the viewer role: it cannot {verb} a console"
        ))
    } else if !allowed(&device) {
        Some(format!("operator {operator} may not reach device {device}"))
    } else {
        None
    };
    if let Some(why) = refusal {
        relay.audit.record(
            "console-attach",
            operator,
            &format!("{device}/{console}"),
            Outcome::Denied,
            &why,
        );
        err(write, &why).await;
        return 1;
    }
    // The port log is read where it was stored: on this relay.
    if verb == "log" {
        return log(relay, &device, &console, args, write).await;
    }
    // Checked before anything opens: a typo is a usage error, not a console session.
    let request = match verb {
        "baud" => match args.first().and_then(|r| r.parse::<u32>().ok()) {
            Some(r) if r > 0 => format!("baud={r}"),
            _ => {
                err(
                    write,
                    &format!("{:?} is not a baud rate", args.first().unwrap_or(&"")),
                )
                .await;
                return 2;
            }
        },
        "set" => {
            if let Err(e) = burrow_proto::serial::parse_changes(args) {
                err(write, &e).await;
                return 2;
            }
            args.join(" ")
        }
        "power" => {
            let ok = match args {
                ["on" | "off" | "cycle" | "cycle-break"] => true,
                ["cycle-break", s] => s.parse::<f64>().is_ok_and(|s| s > 0.0),
                _ => false,
            };
            if !ok {
                err(
                    write,
                    "console power: use on, off, cycle or cycle-break [SECONDS]",
                )
                .await;
                return 2;
            }
            args.join(" ")
        }
        _ => String::new(),
    };
    // In a cluster, a console held by another relay runs there.
    let command = format!(
        "{} {operator} {}",
        crate::cluster::peer::CONSOLE_EXEC,
        words.join(" ")
    );
    if let Some(status) = Box::pin(crate::cluster::console_elsewhere(
        relay, &device, command, write,
    ))
    .await
    {
        return status;
    }
    if verb == "watch" {
        return run_console(
            relay,
            operator,
            &device,
            &console,
            Mode::Watch,
            DEFAULT_SIZE,
            write,
        )
        .await;
    }
    let hub = match relay
        .hubs
        .open(relay, &device, &console, DEFAULT_SIZE)
        .await
    {
        Ok(h) => h,
        Err(why) => {
            err(write, &why).await;
            return 1;
        }
    };
    let super::hub::Attached {
        id, role, mut rx, ..
    } = match hub.attach(operator, verb != "who", &format!("console {verb}")) {
        Ok(a) => a,
        Err(why) => {
            err(write, &why).await;
            return 1;
        }
    };
    let _attachment = Attachment {
        relay,
        hub: &hub,
        id,
        operator,
        row: None,
    };
    if verb == "who" {
        let mut text = String::new();
        for (op, role, how, secs) in hub.who() {
            if op == operator && how == "console who" {
                continue;
            }
            let role = if role == Role::Writer {
                "read-write"
            } else {
                "read-only"
            };
            text.push_str(&format!("{op}\t{role}\t{how}\t{secs} s\n"));
        }
        text.push_str(&format!("{}\n", super::actions::status_line(&hub).await));
        let _ = write.data(text.as_bytes()).await;
        return 0;
    }
    if role != Role::Writer {
        let who = hub.writer().unwrap_or_default();
        err(
            write,
            &format!("{who} holds write on {device}/{console}; not changed"),
        )
        .await;
        return 1;
    }
    let wait = match verb {
        "baud" => {
            let rate = request.trim_start_matches("baud=").parse().unwrap_or(0);
            hub.set_baud(relay, operator, rate).await;
            ANSWER_WAIT
        }
        "set" => {
            if super::actions::settings(relay, &hub, operator, &request, write)
                .await
                .is_some()
            {
                return 2;
            }
            ANSWER_WAIT
        }
        "power" => {
            if hub.reported_power_outlets().await.is_none() {
                err(
                    write,
                    &format!("{device}/{console} has no power control: the agent's config gives it with [[console.power]]"),
                )
                .await;
                return 1;
            }
            super::actions::power(relay, &hub, operator, &request).await;
            POWER_WAIT
        }
        _ => {
            hub.send_break(relay, operator, super::hub::BREAK_DURATION)
                .await;
            ANSWER_WAIT
        }
    };
    // Pass on what the agent says (a failed break, the new line settings, the power's
    // outcome) until the answer that ends this command.
    let deadline = tokio::time::Instant::now() + wait;
    let mut failed = false;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(Out::Notice(text))) => {
                if text.contains("failed")
                    || text.starts_with("offline")
                    || text.contains("not changed")
                {
                    failed = true;
                }
                let _ = write.data(format!("{text}\n").as_bytes()).await;
                let done = match verb {
                    "break" => text == super::hub::BREAK_ENDED || text.contains("break failed"),
                    "power" => {
                        text.starts_with("power ")
                            && (text.contains(": done") || text.contains(" failed"))
                    }
                    _ => {
                        text.starts_with("line now")
                            || text.contains("not changed")
                            || text.starts_with("line speed is")
                    }
                };
                if done {
                    break;
                }
            }
            Ok(Some(Out::Data(_))) => {}
            Ok(None) => break,
            Err(_) => {
                if verb == "power" {
                    failed = true;
                    err(
                        write,
                        "no word from the agent on the power: see the console's recording",
                    )
                    .await;
                }
                break;
            }
        }
    }
    u32::from(failed)
}

/// `console log DEVICE[/NAME] [--since T] [--follow] [--timestamps]` for operators.
async fn log(
    relay: &Arc<Relay>,
    device: &str,
    console: &str,
    args: &[&str],
    write: &Channel,
) -> u32 {
    let mut since = 0u64;
    let mut follow = false;
    let mut timestamps = true;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match *a {
            "--follow" | "-f" => follow = true,
            "--no-timestamps" => timestamps = false,
            "--timestamps" => timestamps = true,
            "--since" => {
                let Some(t) = it.next() else {
                    err(
                        write,
                        "--since needs a time (2026-11-23T12:03:00Z) or an age (10m)",
                    )
                    .await;
                    return 2;
                };
                match burrow_proto::time::parse_since(t, crate::store::now() * 1000) {
                    Ok(ms) => since = ms.max(0) as u64,
                    Err(e) => {
                        err(write, &e).await;
                        return 2;
                    }
                }
            }
            other => {
                err(write, &format!("console log: unknown option {other:?}")).await;
                return 2;
            }
        }
    }
    let mut follower =
        super::portlog::Follower::new(&relay.config.data_dir, device, console, since);
    loop {
        let lines = match follower.poll(10_000) {
            Ok(l) => l,
            Err(e) => {
                err(
                    write,
                    &format!("cannot read the port log of {device}/{console}: {e}"),
                )
                .await;
                return 1;
            }
        };
        let mut text = String::new();
        for l in &lines {
            text.push_str(&super::portlog::format_line(l, timestamps));
            text.push('\n');
        }
        if !text.is_empty() && write.data(text.as_bytes()).await.is_err() {
            return 0;
        }
        if !follow {
            let mut rest = Vec::new();
            follower.finish(&mut rest);
            for l in &rest {
                let _ = write
                    .data(format!("{}\n", super::portlog::format_line(l, timestamps)).as_bytes())
                    .await;
            }
            return 0;
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
            msg = write.next() => match msg {
                Some(burrow_ssh::driver::ChannelMsg::Eof) | None => return 0,
                _ => {}
            },
        }
    }
}
