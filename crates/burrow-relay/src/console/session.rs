//! An operator's console session: output and notices out, keystrokes through the escape parser
//! in (or straight through, in binary mode); the idle timeout.

use std::sync::Arc;

use burrow_proto::escape::{Action, EscapeParser, describe_prefix, help_text};
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
    /// Read-write without escapes, banner or notices: the bytes both ways and nothing else
    /// (`ssh OPERATOR:DEVICE/NAME@relay binary`, for XMODEM and YMODEM).
    Binary,
}

/// In binary mode from the escape (`^Ecx`), escapes come back after input paused this long.
const BINARY_PAUSE: std::time::Duration = std::time::Duration::from_secs(5);

pub(crate) fn notice_line(text: &str) -> Vec<u8> {
    format!("\r\n[burrow] {text}\r\n").into_bytes()
}

pub(crate) async fn say(channel: &Channel, text: &str) {
    let _ = channel.data(&notice_line(text)).await;
}

/// An operator's place on a hub, given up however the session ends: returned, its connection
/// cut, or its future dropped because policy no longer allows it. (A session that did not
/// detach would keep write, and the console connection, for ever.)
pub(crate) struct Attachment<'a> {
    pub(crate) relay: &'a Relay,
    pub(crate) hub: &'a Hub,
    pub(crate) id: u64,
    pub(crate) operator: &'a str,
    /// The attach's audit row (interactive and watch sessions; one-shot commands have none):
    /// completed, with a detach row, however the session ends.
    pub(crate) row: Option<(crate::audit::OpenEntry, String)>,
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
        match mode {
            Mode::Watch => "watch",
            Mode::Binary => "binary",
            Mode::Interactive => "rw",
        },
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
    // A viewer (`operator set --role viewer`) watches: no keystrokes, escapes, binary mode
    // or write.
    let mode = if mode != Mode::Watch && is_viewer(relay, operator).await {
        say(write, &format!("{operator} has the viewer role: read-only")).await;
        Mode::Watch
    } else {
        mode
    };
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
    } = match hub.attach(operator, mode != Mode::Watch, how(mode)) {
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
    if mode == Mode::Binary && role != Role::Writer {
        let who = hub.writer().unwrap_or_default();
        let _ = write
            .stderr(
                format!("{who} holds write on {target}; a binary session needs it\n").as_bytes(),
            )
            .await;
        drop(Attachment {
            relay,
            hub: &hub,
            id,
            operator,
            row: None,
        });
        return 1;
    }
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
    let quiet = mode == Mode::Binary;
    if !quiet {
        let mut banner = format!("connected to {target}, {mode_text}");
        if role == Role::Viewer
            && let Some(w) = hub.writer()
        {
            banner.push_str(&format!("; {w} holds write"));
        }
        if let Some(line) = hub.line().await {
            banner.push_str(&format!("; {line}"));
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
    }
    // Everyone attached hears of it: the writer learns who watches.
    match mode {
        Mode::Interactive => hub.notice(&format!("{operator} attached ({mode_text})")),
        _ => hub.notice(&format!("{operator} attached ({mode_text}, {})", how(mode))),
    }

    let mut parser = EscapeParser::new(relay.config.console_escape);
    let mut told_read_only = false;
    let mut last_input = tokio::time::Instant::now();
    // `^Ecx`: escapes off until input pauses.
    let mut binary_until: Option<tokio::time::Instant> = None;
    loop {
        let idle = hub
            .idle_timeout()
            .filter(|_| mode == Mode::Interactive)
            .map(|d| last_input + d);
        tokio::select! {
            out = rx.recv() => match out {
                Some(out) => {
                    match out {
                        Out::Data(bytes) => {
                            if write.data(&bytes).await.is_err() {
                                break;
                            }
                        }
                        Out::Notice(_) if quiet => {}
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
                    if !quiet {
                        say(write, "console closed").await;
                    }
                    break;
                }
            },
            () = sleep_until(idle), if idle.is_some() => {
                let secs = hub.idle_timeout().map_or(0, |d| d.as_secs());
                say(write, &format!("idle for {secs} s: disconnected (this console's idle_timeout)")).await;
                relay.audit.record("console-idle", operator, &target, Outcome::Ok, &format!("no input for {secs} s"));
                break;
            }
            () = sleep_until(binary_until), if binary_until.is_some() => {
                binary_until = None;
                say(write, "binary transfer over: escapes are back").await;
            }
            msg = write.next() => match msg {
                Some(ChannelMsg::Data(data)) if mode == Mode::Binary || binary_until.is_some() => {
                    last_input = tokio::time::Instant::now();
                    if binary_until.is_some() {
                        binary_until = Some(last_input + BINARY_PAUSE);
                    }
                    if hub.is_writer(id) {
                        hub.input(&data).await;
                    }
                }
                Some(ChannelMsg::Data(data)) if mode == Mode::Interactive => {
                    last_input = tokio::time::Instant::now();
                    let mut leave = false;
                    for action in parser.feed(&data) {
                        if action == Action::Binary {
                            if hub.is_writer(id) {
                                say(write, &format!("binary transfer: escapes are off until your input pauses {} s", BINARY_PAUSE.as_secs())).await;
                                binary_until = Some(tokio::time::Instant::now() + BINARY_PAUSE);
                            } else {
                                say(write, "read-only: only the writer can send a file").await;
                            }
                            continue;
                        }
                        match act(relay, &hub, id, operator, action, write, &mut told_read_only, &mut parser).await {
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
                        Request::Break { ms } if mode != Mode::Watch => {
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

fn how(mode: Mode) -> &'static str {
    match mode {
        Mode::Interactive => "ssh",
        Mode::Watch => "watch",
        Mode::Binary => "binary",
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

pub(crate) enum Flow {
    Stay,
    Leave,
}

#[allow(clippy::too_many_arguments)]
async fn act(
    relay: &Arc<Relay>,
    hub: &Hub,
    id: u64,
    operator: &str,
    action: Action,
    write: &Channel,
    told_read_only: &mut bool,
    parser: &mut EscapeParser,
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
        Action::Replay => super::actions::replay(relay, hub, write, false).await,
        Action::ReplayTimestamps => super::actions::replay(relay, hub, write, true).await,
        Action::Who => super::actions::who(hub, write).await,
        Action::Info => super::actions::info(hub, write).await,
        Action::Settings(text) => {
            if hub.is_writer(id) {
                super::actions::settings(relay, hub, operator, &text, write).await;
            } else {
                say(write, "read-only: only the writer can change line settings").await;
            }
        }
        Action::PowerMenu => match super::actions::power_menu(hub, id) {
            Ok(menu) => say(write, &menu).await,
            Err(why) => {
                say(write, why).await;
                parser.reset();
            }
        },
        Action::PowerAsk(key) => say(write, &super::actions::power_ask(hub, key)).await,
        Action::Power(key) => {
            if hub.is_writer(id) {
                super::actions::power(relay, hub, operator, key.word()).await;
            }
        }
        Action::PowerCancelled => say(write, "power: nothing done").await,
        Action::Binary => {}
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

/// Whether `operator` has the viewer role (read-only everywhere).
pub(crate) async fn is_viewer(relay: &Relay, operator: &str) -> bool {
    matches!(
        relay.db.operator(operator).await,
        Ok(Some(r)) if r.role == crate::store::Role::Viewer
    )
}
