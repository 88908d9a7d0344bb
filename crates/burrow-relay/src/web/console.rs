//! Live consoles in the browser: xterm.js over a WebSocket, attached to the same console hub
//! as SSH sessions. One writer, viewers, force and spy, the escapes (typed keystrokes go
//! through the same parser), break and baud, attach and detach marks in the recording.
//!
//! The browser sends JSON text messages: `{"t":"in","d":"keys"}`, `{"t":"resize","c":80,
//! "r":24}`, `{"t":"break"}`, `{"t":"baud","rate":9600}`, `{"t":"write"}`, `{"t":"force"}`,
//! `{"t":"spy"}`, `{"t":"replay"}`, `{"t":"power","do":"on|off|cycle|cycle-break"}` (after the
//! page's confirmation). The relay sends the terminal's bytes as binary messages and
//! `{"t":"role","write":bool,"writer":"NAME"}` as text when who writes changes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use burrow_proto::escape::{Action, EscapeParser, PowerKey};
use burrow_proto::name::is_valid_name;
use hyper::StatusCode;
use tokio::sync::mpsc;

use super::Web;
use super::auth;
use super::html::{self, esc, url_part};
use super::http::{Req, Resp, respond, text};
use super::routes::Who;
use super::ws::{self, Message};
use crate::audit::Outcome;
use crate::console::{Hub, Out, Role};

/// What the socket's writer task sends.
pub(super) enum Frame {
    Binary(Vec<u8>),
    Text(String),
}

/// Frames queued toward one browser before output is skipped (as a slow SSH viewer's is).
const FRAMES_QUEUED: usize = 256;

/// A browser as a console screen: its output goes through the socket's writer task.
struct Browser {
    tx: mpsc::Sender<Frame>,
    /// Whether "read-only" was said since the last keystroke that went through (said once).
    told_read_only: AtomicBool,
}

impl Browser {
    async fn show(&self, bytes: &[u8]) -> bool {
        self.tx.send(Frame::Binary(bytes.to_vec())).await.is_ok()
    }

    async fn say(&self, text: &str) {
        self.show(&crate::console::notice_line(text)).await;
    }

    /// True the first time since the last keystroke that went through.
    fn first_refusal(&self) -> bool {
        !self.told_read_only.swap(true, Ordering::Relaxed)
    }
}

/// Whether the socket stays attached after an action.
enum Flow {
    Stay,
    Leave,
}

/// Carries out one escape or button for the browser attached as `id`, as an SSH session's
/// escapes do (the escapes of SSH sessions alone, such as binary mode, are explained).
async fn act(
    relay: &Arc<crate::Relay>,
    hub: &Hub,
    id: u64,
    operator: &str,
    action: Action,
    screen: &Browser,
    parser: &mut EscapeParser,
) -> Flow {
    let writer = hub.is_writer(id);
    match action {
        Action::Send(bytes) => {
            if writer {
                screen.told_read_only.store(false, Ordering::Relaxed);
                hub.input(&bytes).await;
            } else if screen.first_refusal() {
                let who = hub.writer().unwrap_or_else(|| "nobody".to_string());
                screen
                    .say(&format!(
                        "read-only: {who} holds write (Take write, or Force write)"
                    ))
                    .await;
            }
        }
        Action::Break if writer => {
            hub.send_break(relay, operator, crate::console::BREAK_DURATION)
                .await;
        }
        Action::Baud(rate) if writer => hub.set_baud(relay, operator, rate).await,
        Action::Break | Action::Baud(_) => {
            screen
                .say("read-only: only the writer can send a break or change the line")
                .await;
        }
        Action::Attach | Action::Force => match hub.take_write(id, action == Action::Force) {
            Ok(Some(previous)) => {
                screen
                    .say(&format!("read-write (took over from {previous})"))
                    .await;
            }
            Ok(None) => screen.say("read-write").await,
            Err(why) => screen.say(&why).await,
        },
        Action::Spy => {
            hub.spy(id);
            screen.say("read-only (spy)").await;
        }
        Action::Replay => {
            screen.say("recent output:").await;
            screen.show(&hub.recent()).await;
        }
        Action::PowerMenu => match crate::console::actions::power_menu(hub, id) {
            Ok(menu) => screen.say(&menu).await,
            Err(why) => {
                screen.say(why).await;
                parser.reset();
            }
        },
        Action::PowerAsk(key) => {
            screen
                .say(&crate::console::actions::power_ask(hub, key))
                .await;
        }
        Action::Power(_) if !writer => {
            screen
                .say("read-only: only the writer can switch the power")
                .await;
        }
        Action::Power(key) => match hub.reported_power_outlets().await {
            Some(_) => crate::console::actions::power(relay, hub, operator, key.word()).await,
            None => screen.say(crate::console::actions::NO_POWER).await,
        },
        Action::PowerCancelled => screen.say("power: nothing done").await,
        Action::Disconnect => {
            screen.say("disconnected").await;
            return Flow::Leave;
        }
        Action::Help | Action::Unknown(_) => {
            let help = burrow_proto::escape::help_text(relay.config.console_escape);
            screen.show(format!("\r\n{help}").as_bytes()).await;
        }
        #[allow(unreachable_patterns)]
        _ => {
            screen
                .say("that escape works over SSH only (ssh -t OPERATOR:DEVICE/CONSOLE@relay)")
                .await;
        }
    }
    Flow::Stay
}

fn target(dev: &str, console: &str) -> Option<(String, String)> {
    let (dev, console) = (
        auth::percent_decode(dev.as_bytes()),
        auth::percent_decode(console.as_bytes()),
    );
    (is_valid_name(&dev) && is_valid_name(&console)).then_some((dev, console))
}

/// `/console/DEVICE/CONSOLE`: the terminal page.
pub(crate) async fn page(web: &Web, who: &Who, dev: &str, console: &str, watch: bool) -> Resp {
    let target = target(dev, console);
    let allowed = match &target {
        Some((d, _)) => super::pages::may_see(web, who, d).await,
        None => false,
    };
    let Some((dev, console)) = target.filter(|_| allowed) else {
        return respond(
            StatusCode::NOT_FOUND,
            "text/html; charset=utf-8",
            html::message("Not found", Some(who), "No such console that you may use."),
        );
    };
    super::pages::viewed(web, who, &format!("{dev}/{console}"), "console page");
    let read_only = if who.record.role.may_write() {
        ""
    } else {
        "<span class=\"badge\">viewer: read-only</span>"
    };
    let body = format!(
        "<h1>{d}/{c}</h1><link rel=\"stylesheet\" href=\"/static/xterm.css\">\
         <div class=\"console-bar\"><span id=\"role\" class=\"badge\">connecting…</span>{read_only}\
         <button id=\"take\" type=\"button\">Take write</button><button id=\"force\" type=\"button\">Force write</button>\
         <button id=\"spy\" type=\"button\">Read-only</button><button id=\"break\" type=\"button\">Break</button>\
         <select id=\"baud\">{bauds}</select><button id=\"set-baud\" type=\"button\">Set baud</button>\
         <button id=\"replay\" type=\"button\">Replay recent</button>\
         <select id=\"power\"><option value=\"cycle\">cycle</option><option value=\"cycle-break\">cycle, then BREAK</option>\
         <option value=\"on\">on</option><option value=\"off\">off</option></select><button id=\"set-power\" type=\"button\">Power</button><a href=\"/device/{dl}\">device</a></div>\
         <div id=\"terminal\" data-ws=\"/console/{dl}/{cl}/ws{q}\"></div>",
        q = if watch { "?watch=1" } else { "" },
        d = esc(&dev),
        c = esc(&console),
        dl = url_part(&dev),
        cl = url_part(&console),
        bauds = [1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200]
            .iter()
            .map(|b| format!(
                "<option{}>{b}</option>",
                if *b == 9600 { " selected" } else { "" }
            ))
            .collect::<String>(),
    );
    let mut r = respond(
        StatusCode::OK,
        "text/html; charset=utf-8",
        html::page(
            &format!("{dev}/{console}"),
            Some(who),
            &["xterm.js", "addon-fit.js", "console.js"],
            &body,
        ),
    );
    // xterm.js styles its rows inline; scripts still come from this site only.
    r.headers_mut().insert(
        hyper::header::CONTENT_SECURITY_POLICY,
        hyper::header::HeaderValue::from_static(super::routes::CSP_CONSOLE),
    );
    r
}

/// `/console/DEVICE/CONSOLE/ws`: the console itself.
pub(crate) async fn socket(web: &Arc<Web>, who: &Who, req: Req, dev: &str, console: &str) -> Resp {
    // A page of another site cannot open it with this browser's cookie (cross-site WebSocket
    // hijacking): the Origin must be this site.
    if !who.site.same_origin(web, req.headers()) {
        web.relay.audit.record(
            "console-attach",
            who.name(),
            &format!("{dev}/{console}"),
            Outcome::Denied,
            &format!(
                "web socket from {} refused: its Origin is not this site",
                who.site.client
            ),
        );
        return text(
            StatusCode::FORBIDDEN,
            "refused: the Origin is not this site\n",
        );
    }
    let Some((dev, console)) = target(dev, console) else {
        return text(StatusCode::NOT_FOUND, "no such console\n");
    };
    if !super::pages::may_see(web, who, &dev).await {
        web.relay.audit.record(
            "console-attach",
            who.name(),
            &format!("{dev}/{console}"),
            Outcome::Denied,
            &format!("operator {} may not reach device {dev} (web)", who.name()),
        );
        return text(StatusCode::NOT_FOUND, "no such console that you may use\n");
    }
    // `?watch=1`: attach read-only (watching a console in use), as `console watch` does.
    let watch = req.uri().query().is_some_and(|q| q.contains("watch=1"));
    let answer = match ws::accept(&req) {
        Ok(a) => a,
        Err(refusal) => return refusal,
    };
    let upgrade = hyper::upgrade::on(req);
    let web = web.clone();
    let who = who.clone();
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else {
            return;
        };
        let (reader, writer) = ws::split(upgraded);
        run(web, who, dev, console, watch, reader, writer).await;
    });
    answer
}

/// Detaches from the hub however the socket ends, and says so.
struct Attachment<'a> {
    web: &'a Web,
    hub: &'a Hub,
    id: u64,
    operator: &'a str,
}

impl Drop for Attachment<'_> {
    fn drop(&mut self) {
        self.hub.detach(self.id);
        self.hub.notice(&format!("{} detached", self.operator));
        let target = format!("{}/{}", self.hub.device, self.hub.console);
        self.web
            .relay
            .audit
            .record("console-detach", self.operator, &target, Outcome::Ok, "web");
    }
}

async fn run(
    web: Arc<Web>,
    who: Who,
    dev: String,
    console: String,
    watch: bool,
    mut reader: ws::Reader,
    mut writer: ws::Writer,
) {
    let (tx, mut frames) = mpsc::channel::<Frame>(FRAMES_QUEUED);
    let (pong_tx, mut pongs) = mpsc::channel::<Vec<u8>>(4);
    // One task writes the socket: output, status and pongs in the order they were queued.
    let writing = tokio::spawn(async move {
        loop {
            let sent = tokio::select! {
                f = frames.recv() => match f {
                    Some(Frame::Binary(b)) => writer.binary(&b).await,
                    Some(Frame::Text(t)) => writer.text(&t).await,
                    None => break,
                },
                p = pongs.recv() => match p {
                    Some(p) => writer.pong(&p).await,
                    None => break,
                },
            };
            if sent.is_err() {
                return;
            }
        }
        writer.close(1000, "console closed").await;
    });
    let screen = Browser {
        tx: tx.clone(),
        told_read_only: AtomicBool::new(false),
    };
    let relay = &web.relay;
    let operator = who.name().to_string();
    let target = format!("{dev}/{console}");
    let may_write = who.record.role.may_write();
    // Held by another relay of the cluster: its console session, carried over the peer link.
    if relay.registry.get(&dev).is_none()
        && let Some(cluster) = relay.cluster.as_ref()
    {
        let command = format!(
            "{} {operator} {dev} {console} {} {} {}",
            crate::cluster::peer::CONSOLE_ATTACH,
            if watch || !may_write { "watch" } else { "rw" },
            crate::console::DEFAULT_SIZE.0,
            crate::console::DEFAULT_SIZE.1,
        );
        match cluster.open_console(relay, &dev, command).await {
            Ok(Some((holder, peer))) => {
                let remote = super::console_remote::run(
                    &web,
                    &who,
                    &dev,
                    &target,
                    &holder,
                    peer,
                    &tx,
                    &mut reader,
                    &pong_tx,
                    may_write && !watch,
                );
                Box::pin(remote).await;
                drop((tx, screen));
                let _ = writing.await;
                return;
            }
            Ok(None) => {}
            Err(why) => {
                relay
                    .audit
                    .record("console-attach", &operator, &target, Outcome::Failed, &why);
                screen.show(&crate::console::notice_line(&why)).await;
                drop((tx, screen));
                let _ = writing.await;
                return;
            }
        }
    }
    let hub = match relay
        .hubs
        .open(relay, &dev, &console, crate::console::DEFAULT_SIZE)
        .await
    {
        Ok(h) => h,
        Err(why) => {
            relay
                .audit
                .record("console-attach", &operator, &target, Outcome::Failed, &why);
            screen.show(&crate::console::notice_line(&why)).await;
            drop((tx, screen));
            let _ = writing.await;
            return;
        }
    };
    let crate::console::Attached {
        id,
        role,
        mut rx,
        skipped,
        replay,
    } = match hub.attach(&operator, may_write && !watch, "web") {
        Ok(a) => a,
        Err(why) => {
            screen.show(&crate::console::notice_line(&why)).await;
            drop((tx, screen));
            let _ = writing.await;
            return;
        }
    };
    let _attachment = Attachment {
        web: &web,
        hub: &hub,
        id,
        operator: &operator,
    };
    let mode = if role == Role::Writer {
        "read-write"
    } else {
        "read-only"
    };
    relay.audit.record(
        "console-attach",
        &operator,
        &target,
        Outcome::Ok,
        &format!("{mode} (web, from {})", who.site.client),
    );
    let mut banner = format!("connected to {target}, {mode}");
    if role == Role::Viewer
        && let Some(w) = hub.writer()
    {
        banner.push_str(&format!("; {w} holds write"));
    }
    if !may_write {
        banner.push_str(&format!("; {operator} is a viewer"));
    }
    screen.show(&crate::console::notice_line(&banner)).await;
    if !replay.is_empty() {
        screen.show(&replay).await;
    }
    hub.notice(&format!("{operator} attached ({mode}, web)"));
    let mut told = None;
    let status = |hub: &Hub| {
        let write = hub.is_writer(id);
        let writer = hub.writer().unwrap_or_default();
        (write, writer)
    };
    let mut parser = EscapeParser::new(relay.config.console_escape);
    // Held to the login and the policy as they are now, like an SSH console session.
    let revoked = super::hold::until_revoked(
        &web,
        &who.id,
        &operator,
        &dev,
        &target,
        super::hold::Holding::Console,
    );
    tokio::pin!(revoked);
    loop {
        let now = status(&hub);
        if told.as_ref() != Some(&now) {
            let msg = serde_json::json!({"t": "role", "write": now.0, "writer": now.1}).to_string();
            if tx.send(Frame::Text(msg)).await.is_err() {
                break;
            }
            told = Some(now);
        }
        tokio::select! {
            why = &mut revoked => {
                screen.show(&crate::console::notice_line(&format!("closed: {why}"))).await;
                break;
            }
            out = rx.recv() => match out {
                Some(Out::Data(bytes)) => {
                    if !screen.show(&bytes).await {
                        break;
                    }
                    if rx.is_empty() {
                        let lost = skipped.swap(0, std::sync::atomic::Ordering::Relaxed);
                        if lost > 0 {
                            let line = format!("skipped {lost} bytes of output: your connection is too slow");
                            screen.show(&crate::console::notice_line(&line)).await;
                        }
                    }
                }
                Some(Out::Notice(text)) => {
                    screen.show(&crate::console::notice_line(&text)).await;
                }
                None => {
                    screen.show(&crate::console::notice_line("console closed")).await;
                    break;
                }
            },
            msg = reader.next(&pong_tx) => {
                let Message::Text(msg) = msg else { break };
                let Ok(msg) = serde_json::from_str::<serde_json::Value>(&msg) else {
                    continue;
                };
                let actions = match msg["t"].as_str().unwrap_or("") {
                    "in" => {
                        let keys = msg["d"].as_str().unwrap_or("");
                        parser.feed(keys.as_bytes())
                    }
                    "resize" => {
                        let size = |k: &str| msg[k].as_u64().and_then(|v| u32::try_from(v).ok()).unwrap_or(0);
                        let (c, r) = crate::console::term_size(size("c"), size("r"));
                        hub.resize(id, u32::from(c), u32::from(r));
                        Vec::new()
                    }
                    "break" => vec![Action::Break],
                    "baud" => match msg["rate"].as_u64().and_then(|r| u32::try_from(r).ok()) {
                        Some(rate) if rate > 0 => vec![Action::Baud(rate)],
                        _ => Vec::new(),
                    },
                    "write" => vec![Action::Attach],
                    "force" => vec![Action::Force],
                    "spy" => vec![Action::Spy],
                    "replay" => vec![Action::Replay],
                    "power" => msg["do"]
                        .as_str()
                        .and_then(PowerKey::from_word)
                        .map(Action::Power)
                        .into_iter()
                        .collect(),
                    _ => Vec::new(),
                };
                let mut leave = false;
                for action in actions {
                    // A viewer's role never writes: no keystrokes, no break, no baud, no write.
                    let writes = matches!(
                        action,
                        Action::Send(_) | Action::Break | Action::Baud(_) | Action::Attach | Action::Force
                            | Action::PowerMenu | Action::PowerAsk(_) | Action::Power(_)
                    );
                    if writes && !may_write {
                        if screen.first_refusal() {
                            let line = format!("read-only: {operator} is a viewer (role viewer) and cannot write to consoles");
                            screen.show(&crate::console::notice_line(&line)).await;
                        }
                        continue;
                    }
                    if let Flow::Leave = act(relay, &hub, id, &operator, action, &screen, &mut parser).await {
                        leave = true;
                    }
                }
                if leave {
                    break;
                }
            }
        }
    }
    drop((tx, screen));
    let _ = writing.await;
}
