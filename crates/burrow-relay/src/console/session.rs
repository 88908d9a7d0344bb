//! An operator's console session: output and notices out, keystrokes through the escape parser
//! in; and the exec forms `console break|baud|watch DEVICE[/NAME]`.

use std::sync::Arc;

use burrow_proto::escape::{Action, EscapeParser, describe_prefix, help_text};
use burrow_proto::name::{DEFAULT_CONSOLE, check_name};
use burrow_ssh::channel::Request;
use burrow_ssh::driver::{Channel, ChannelMsg};

use super::hub::{Hub, Out, Role};
use crate::Relay;
use crate::audit::Outcome;

/// How an operator attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Read-write when free, with escapes.
    Interactive,
    /// Read-only, no input (`console watch`).
    Watch,
}

fn notice_line(text: &str) -> Vec<u8> {
    format!("\r\n[burrow] {text}\r\n").into_bytes()
}

async fn say(channel: &Channel, text: &str) {
    let _ = channel.data(&notice_line(text)).await;
}

/// An operator's place on a hub, given up however the session ends: returned, its connection
/// cut, or its future dropped because policy no longer allows it. (A session that did not
/// detach would keep write, and the console connection, for ever.)
struct Attachment<'a> {
    relay: &'a Relay,
    hub: &'a Hub,
    id: u64,
    operator: &'a str,
    /// The attach's audit row (interactive and watch sessions; one-shot commands have none):
    /// completed, with a detach row, however the session ends.
    row: Option<(crate::audit::OpenEntry, String)>,
}

impl Drop for Attachment<'_> {
    fn drop(&mut self) {
        self.hub.detach(self.id);
        if let Some((row, mode)) = self.row.take() {
            self.hub.notice(&format!("{} detached", self.operator));
            let target = format!("{}/{}", self.hub.device, self.hub.console);
            let lasted = format!("attached {} s", row.since());
            row.close(Outcome::Ok, &format!("{mode}; {lasted}"));
            self.relay.audit.record(
                "console-detach",
                self.operator,
                &target,
                Outcome::Ok,
                &lasted,
            );
        }
    }
}

/// Terminal size recorded when the operator has no pty (scripts, `console watch`).
pub(crate) const DEFAULT_SIZE: (u16, u16) = (80, 24);

/// A pty size as asciicast records it (bounded: the peer chose it).
pub(crate) fn term_size(cols: u32, rows: u32) -> (u16, u16) {
    let fit = |v: u32, default: u16| match u16::try_from(v) {
        Ok(0) | Err(_) => default,
        Ok(v) => v.min(1000),
    };
    (fit(cols, DEFAULT_SIZE.0), fit(rows, DEFAULT_SIZE.1))
}

/// Attaches `operator` to `device/console`: here when this relay holds the device, else
/// through the relay of the cluster that does. Returns the exit status.
pub(crate) async fn attach(
    relay: &Arc<Relay>,
    operator: &str,
    device: &str,
    console: &str,
    mode: Mode,
    size: (u16, u16),
    write: &Channel,
) -> u32 {
    let command = format!(
        "{} {operator} {device} {console} {} {} {}",
        crate::cluster::peer::CONSOLE_ATTACH,
        if mode == Mode::Watch { "watch" } else { "rw" },
        size.0,
        size.1
    );
    if let Some(status) = Box::pin(crate::cluster::console_elsewhere(
        relay, device, command, write,
    ))
    .await
    {
        return status;
    }
    run_console(relay, operator, device, console, mode, size, write).await
}

/// Runs a console session held on this relay on an operator's channel; returns the exit status.
pub(crate) async fn run_console(
    relay: &Arc<Relay>,
    operator: &str,
    device: &str,
    console: &str,
    mode: Mode,
    size: (u16, u16),
    write: &Channel,
) -> u32 {
    let target = format!("{device}/{console}");
    let hub = match relay.hubs.open(relay, device, console, size).await {
        Ok(h) => h,
        Err(why) => {
            relay
                .audit
                .record("console-attach", operator, &target, Outcome::Failed, &why);
            say(write, &why).await;
            return 1;
        }
    };
    let super::hub::Attached {
        id,
        role,
        mut rx,
        skipped,
        replay,
    } = match hub.attach(operator, mode == Mode::Interactive) {
        Ok(a) => a,
        Err(why) => {
            say(write, &why).await;
            return 1;
        }
    };
    let mode_text = if role == Role::Writer {
        "read-write"
    } else {
        "read-only"
    };
    let mut attachment = Attachment {
        relay,
        hub: &hub,
        id,
        operator,
        row: None,
    };
    // Open until the detach: a relay crash in between still ends it at the next start.
    let row = relay
        .audit
        .open(
            "console-attach",
            operator,
            &target,
            mode_text,
            crate::audit::Measure::Duration,
        )
        .await;
    attachment.row = Some((row, mode_text.to_string()));
    let mut banner = format!("connected to {target}, {mode_text}");
    if role == Role::Viewer
        && let Some(w) = hub.writer()
    {
        banner.push_str(&format!("; {w} holds write"));
    }
    if mode == Mode::Interactive {
        banner.push_str(&format!(
            "; {} ? for help",
            describe_prefix(relay.config.console_escape)
        ));
    }
    say(write, &banner).await;
    if !replay.is_empty() {
        let _ = write.data(&replay).await;
    }
    hub.notice(&format!("{operator} attached ({mode_text})"));

    let mut parser = EscapeParser::new(relay.config.console_escape);
    let mut told_read_only = false;
    loop {
        tokio::select! {
            out = rx.recv() => match out {
                Some(out) => {
                    match out {
                        Out::Data(bytes) => {
                            if write.data(&bytes).await.is_err() {
                                break;
                            }
                        }
                        Out::Notice(text) => say(write, &text).await,
                    }
                    // Caught up with what was queued before a gap: say what was lost.
                    if rx.is_empty() {
                        let lost = skipped.swap(0, std::sync::atomic::Ordering::Relaxed);
                        if lost > 0 {
                            say(write, &format!("skipped {lost} bytes of output: your connection is too slow")).await;
                        }
                    }
                }
                None => {
                    say(write, "console closed").await;
                    break;
                }
            },
            msg = write.next() => match msg {
                Some(ChannelMsg::Data(data)) if mode == Mode::Interactive => {
                    let mut leave = false;
                    for action in parser.feed(&data) {
                        match act(relay, &hub, id, operator, action, write, &mut told_read_only).await {
                            Flow::Stay => {}
                            Flow::Leave => leave = true,
                        }
                    }
                    if leave {
                        break;
                    }
                }
                Some(ChannelMsg::Data(_)) => {}
                Some(ChannelMsg::Request { request, want_reply }) => {
                    let ok = match request {
                        Request::WindowChange(size) => {
                            hub.resize(id, size.cols, size.rows);
                            true
                        }
                        // A terminal's own break (OpenSSH `~B`, PuTTY's and TeraTerm's Send
                        // Break, RFC 4335) with the length it asks for.
                        Request::Break { ms } if mode == Mode::Interactive => {
                            if hub.is_writer(id) {
                                hub.send_break(relay, operator, super::hub::break_length(ms)).await;
                                true
                            } else {
                                say(write, "read-only: only the writer can send a break").await;
                                false
                            }
                        }
                        _ => false,
                    };
                    if want_reply {
                        write.reply(ok);
                    }
                }
                Some(ChannelMsg::Eof) | None => break,
            },
        }
    }
    0
}

enum Flow {
    Stay,
    Leave,
}

async fn act(
    relay: &Arc<Relay>,
    hub: &Hub,
    id: u64,
    operator: &str,
    action: Action,
    write: &Channel,
    told_read_only: &mut bool,
) -> Flow {
    match action {
        Action::Send(bytes) => {
            if hub.is_writer(id) {
                *told_read_only = false;
                hub.input(&bytes).await;
            } else if !*told_read_only {
                *told_read_only = true;
                let who = hub.writer().unwrap_or_else(|| "nobody".to_string());
                let p = describe_prefix(relay.config.console_escape);
                say(
                    write,
                    &format!("read-only: {who} holds write ({p} a to attach, {p} f to force)"),
                )
                .await;
            }
        }
        Action::Break => {
            if hub.is_writer(id) {
                hub.send_break(relay, operator, super::hub::BREAK_DURATION)
                    .await;
            } else {
                say(write, "read-only: only the writer can send a break").await;
            }
        }
        Action::Baud(rate) => {
            if hub.is_writer(id) {
                hub.set_baud(relay, operator, rate).await;
            } else {
                say(write, "read-only: only the writer can change the baud rate").await;
            }
        }
        Action::Attach | Action::Force => match hub.take_write(id, action == Action::Force) {
            Ok(Some(previous)) => {
                say(write, &format!("read-write (took over from {previous})")).await
            }
            Ok(None) => say(write, "read-write").await,
            Err(why) => say(write, &why).await,
        },
        Action::Spy => {
            hub.spy(id);
            say(write, "read-only (spy)").await;
        }
        Action::Replay => {
            say(write, "recent output:").await;
            let _ = write.data(&hub.recent()).await;
        }
        Action::Disconnect => {
            say(write, "disconnected").await;
            return Flow::Leave;
        }
        Action::Help | Action::Unknown(_) => {
            let _ = write
                .data(format!("\r\n{}", help_text(relay.config.console_escape)).as_bytes())
                .await;
        }
    }
    Flow::Stay
}

/// Parses `DEVICE[/NAME]`.
fn parse_target(arg: &str) -> Result<(String, String), String> {
    let (device, console) = arg.split_once('/').unwrap_or((arg, DEFAULT_CONSOLE));
    check_name("device", device).map_err(|e| e.to_string())?;
    check_name("console", console).map_err(|e| e.to_string())?;
    Ok((device.to_string(), console.to_string()))
}

/// `console break|baud|watch DEVICE[/NAME] [RATE]` as an exec command. Returns the exit status.
pub(crate) async fn console_exec(
    relay: &Arc<Relay>,
    operator: &str,
    allowed: &(dyn Fn(&str) -> bool + Sync),
    words: &[&str],
    write: &Channel,
) -> u32 {
    const USAGE: &str = "usage: console break DEVICE[/NAME] | console baud DEVICE[/NAME] RATE | console watch DEVICE[/NAME]";
    let (verb, target, rate) = match words {
        ["break", t] => ("break", *t, None),
        ["watch", t] => ("watch", *t, None),
        ["baud", t, r] => match r.parse::<u32>() {
            Ok(r) if r > 0 => ("baud", *t, Some(r)),
            _ => {
                let _ = write
                    .stderr(format!("{r:?} is not a baud rate\n").as_bytes())
                    .await;
                return 2;
            }
        },
        _ => {
            let _ = write.stderr(format!("{USAGE}\n").as_bytes()).await;
            return 2;
        }
    };
    let (device, console) = match parse_target(target) {
        Ok(t) => t,
        Err(e) => {
            let _ = write.stderr(format!("{e}\n").as_bytes()).await;
            return 2;
        }
    };
    if !allowed(&device) {
        let why = format!("operator {operator} may not reach device {device}");
        relay.audit.record(
            "console-attach",
            operator,
            &format!("{device}/{console}"),
            Outcome::Denied,
            &why,
        );
        let _ = write.stderr(format!("{why}\n").as_bytes()).await;
        return 1;
    }
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
            let _ = write.stderr(format!("{why}\n").as_bytes()).await;
            return 1;
        }
    };
    // A one-shot command attaches for write like anyone else (so it respects a writer).
    let super::hub::Attached {
        id, role, mut rx, ..
    } = match hub.attach(operator, true) {
        Ok(a) => a,
        Err(why) => {
            let _ = write.stderr(format!("{why}\n").as_bytes()).await;
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
    if role != Role::Writer {
        let who = hub.writer().unwrap_or_default();
        let _ = write
            .stderr(format!("{who} holds write on {device}/{console}; not changed\n").as_bytes())
            .await;
        1
    } else {
        match rate {
            Some(rate) => hub.set_baud(relay, operator, rate).await,
            None => {
                hub.send_break(relay, operator, super::hub::BREAK_DURATION)
                    .await
            }
        }
        // Give the agent a moment to answer, and pass on what it says (a failed break, say).
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut failed = false;
        loop {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(Out::Notice(text))) => {
                    if text.contains("failed") || text.starts_with("offline") {
                        failed = true;
                    }
                    let _ = write.data(format!("{text}\n").as_bytes()).await;
                    if text.starts_with("line speed is") || text == super::hub::BREAK_ENDED {
                        break;
                    }
                }
                Ok(Some(Out::Data(_))) => {}
                Ok(None) | Err(_) => break,
            }
        }
        u32::from(failed)
    }
}
