//! What the newer escapes do, shared with the exec commands: replay the port log, who is
//! attached, the status line, line settings, power.

use std::sync::Arc;

use burrow_proto::escape::PowerKey;
use burrow_proto::serial::parse_changes;
use burrow_ssh::driver::Channel;

use super::hub::{Hub, Role};
use super::session::say;
use crate::Relay;
use crate::audit::Outcome;

/// Lines a replay shows.
pub(crate) const REPLAY_LINES: usize = 64;

/// `^Ecr` and `^Ect`: the port log's last lines (with a timestamp each on request); without a
/// port log yet, the output since this console was opened here.
pub(crate) async fn replay(relay: &Arc<Relay>, hub: &Hub, write: &Channel, timestamps: bool) {
    let (dir, device, console) = (
        relay.config.data_dir.clone(),
        hub.device.clone(),
        hub.console.clone(),
    );
    let lines = tokio::task::spawn_blocking(move || {
        super::portlog::tail(&dir, &device, &console, REPLAY_LINES)
    })
    .await
    .ok()
    .and_then(Result::ok)
    .unwrap_or_default();
    if lines.is_empty() {
        if timestamps {
            say(
                write,
                "no port log here yet (the agent uploads it as its link allows); recent output:",
            )
            .await;
        } else {
            say(write, "recent output:").await;
        }
        let _ = write.data(&hub.recent()).await;
        return;
    }
    say(write, &format!("port log, last {} lines:", lines.len())).await;
    let mut text = String::new();
    for l in &lines {
        text.push_str(&super::portlog::format_line(l, timestamps));
        text.push_str("\r\n");
    }
    let _ = write.data(text.as_bytes()).await;
}

/// `^Ecw`.
pub(crate) async fn who(hub: &Hub, write: &Channel) {
    let mut text = format!("attached to {}/{}:\r\n", hub.device, hub.console);
    for (operator, role, how, secs) in hub.who() {
        let role = if role == Role::Writer {
            "read-write"
        } else {
            "read-only"
        };
        text.push_str(&format!(
            "  {operator:<16} {role:<10} {how:<18} for {}\r\n",
            burrow_proto::time::format_duration(secs)
        ));
    }
    let _ = write.data(format!("\r\n{text}").as_bytes()).await;
}

/// The status line: line settings, writer, recording, power, idle timeout.
pub(crate) async fn status_line(hub: &Hub) -> String {
    let mut s = format!("{}/{}", hub.device, hub.console);
    match hub.line().await {
        Some(l) => s.push_str(&format!(": {l}")),
        None => s.push_str(": line settings not reported (an older agent)"),
    }
    match hub.writer() {
        Some(w) => s.push_str(&format!("; {w} writes")),
        None => s.push_str("; nobody writes"),
    }
    match hub.recording_path() {
        Ok(p) => s.push_str(&format!("; recorded to {p}")),
        Err(why) => s.push_str(&format!("; not recorded: {why}")),
    }
    if let Some(p) = hub.power_outlets() {
        s.push_str(&format!(
            "; power: {}",
            p.split(' ').next().unwrap_or_default()
        ));
    }
    if let Some(idle) = hub.idle_timeout() {
        s.push_str(&format!("; idle timeout {} s", idle.as_secs()));
    }
    s
}

/// `^Eci`.
pub(crate) async fn info(hub: &Hub, write: &Channel) {
    say(write, &status_line(hub).await).await;
}

/// `^Ec=` and `console set`: checked here, audited, marked, applied by the agent (which
/// reports the line settings back to every operator). Returns the error, if any.
pub(crate) async fn settings(
    relay: &Relay,
    hub: &Hub,
    operator: &str,
    text: &str,
    write: &Channel,
) -> Option<String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let target = format!("{}/{}", hub.device, hub.console);
    match parse_changes(&words) {
        Ok(changes) => {
            let canonical: Vec<String> = changes.iter().map(|c| c.text()).collect();
            let canonical = canonical.join(" ");
            relay.audit.record(
                "console-settings",
                operator,
                &target,
                Outcome::Ok,
                &canonical,
            );
            hub.notice(&format!("settings {canonical} by {operator}"));
            hub.request(&format!("set {operator} {canonical}")).await;
            None
        }
        Err(e) => {
            say(write, &format!("settings not changed: {e}")).await;
            Some(e)
        }
    }
}

/// `^Ecp`: the power menu's line, or why it does not open (no power control, or not the
/// writer). Shared by SSH sessions and the web console.
pub(crate) fn power_menu(hub: &Hub, id: u64) -> Result<String, &'static str> {
    let Some(power) = hub.power_outlets() else {
        return Err(NO_POWER);
    };
    if !hub.is_writer(id) {
        return Err("read-only: only the writer can switch the power");
    }
    let mut parts = power.split(' ');
    let outlets = parts.next().unwrap_or_default().to_string();
    let hold = parts
        .skip_while(|w| *w != "break-hold")
        .nth(1)
        .unwrap_or("10")
        .to_string();
    Ok(format!(
        "power of {}/{} ({outlets}): 1 on, 0 off, c cycle, b cycle then hold BREAK {hold} s; any other key: nothing",
        hub.device, hub.console
    ))
}

/// Said when a console's agent gives it no power commands.
pub(crate) const NO_POWER: &str =
    "this console has no power control: the agent's config gives it with [[console.power]]";

/// A power action chosen: the question that asks for confirmation.
pub(crate) fn power_ask(hub: &Hub, key: PowerKey) -> String {
    let what = match key {
        PowerKey::On => "switch the power ON",
        PowerKey::Off => "switch the power OFF",
        PowerKey::Cycle => "power-cycle",
        PowerKey::CycleBreak => "power-cycle and hold BREAK",
    };
    format!("{what} {}/{}? y to confirm", hub.device, hub.console)
}

/// A power action confirmed (escape, web button) or asked for (`console power`): audited,
/// marked in the recording, run by the agent (which reports the outcome to every operator).
pub(crate) async fn power(relay: &Relay, hub: &Hub, operator: &str, action: &str) {
    let target = format!("{}/{}", hub.device, hub.console);
    relay
        .audit
        .record("console-power", operator, &target, Outcome::Ok, action);
    hub.notice(&format!("power {action} by {operator}"));
    hub.request(&format!("power {operator} {action}")).await;
}
