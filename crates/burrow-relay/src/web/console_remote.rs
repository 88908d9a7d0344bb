//! A browser's console on a device another relay of the cluster holds: the WebSocket carried
//! to that relay's console session over the peer link (as an SSH console is), the buttons sent
//! as the escapes they stand for, a break as a terminal's own break request.

use burrow_ssh::channel::{Request, TermSize};
use burrow_ssh::driver::{Channel, ChannelMsg};
use tokio::sync::mpsc;

use super::Web;
use super::console::Frame;
use super::routes::Who;
use super::ws::{self, Message};

/// Runs until either side ends; the relay holding the device runs the console (one writer,
/// viewers, escapes, recording) and audits the attach.
#[allow(clippy::too_many_arguments)]
pub(super) async fn run(
    web: &Web,
    who: &Who,
    dev: &str,
    target: &str,
    holder: &str,
    peer: Channel,
    tx: &mpsc::Sender<Frame>,
    reader: &mut ws::Reader,
    pong_tx: &mpsc::Sender<Vec<u8>>,
    may_write: bool,
) {
    let operator = who.name();
    let show = async |text: &str| {
        tx.send(Frame::Binary(crate::console::notice_line(text)))
            .await
            .is_ok()
    };
    let remote = serde_json::json!({"t": "remote", "relay": holder}).to_string();
    if tx.send(Frame::Text(remote)).await.is_err() {
        return;
    }
    let revoked = super::hold::until_revoked(
        web,
        &who.id,
        operator,
        dev,
        target,
        super::hold::Holding::Console,
    );
    tokio::pin!(revoked);
    let escape = web.relay.config.console_escape;
    let mut told_read_only = false;
    loop {
        tokio::select! {
            why = &mut revoked => {
                show(&format!("closed: {why}")).await;
                break;
            }
            msg = peer.next() => match msg {
                Some(ChannelMsg::Data(bytes)) => {
                    if tx.send(Frame::Binary(bytes)).await.is_err() {
                        break;
                    }
                }
                Some(ChannelMsg::Request { want_reply, .. }) => {
                    if want_reply {
                        peer.reply(false);
                    }
                }
                Some(ChannelMsg::Eof) | None => break,
            },
            msg = reader.next(pong_tx) => {
                let Message::Text(msg) = msg else { break };
                let Ok(msg) = serde_json::from_str::<serde_json::Value>(&msg) else {
                    continue;
                };
                let kind = msg["t"].as_str().unwrap_or("");
                if kind == "resize" {
                    let size = |k: &str| msg[k].as_u64().and_then(|v| u32::try_from(v).ok()).unwrap_or(0);
                    let (cols, rows) = crate::console::term_size(size("c"), size("r"));
                    let size = TermSize { cols: cols.into(), rows: rows.into(), width_px: 0, height_px: 0 };
                    let _ = peer.request(Request::WindowChange(size), false).await;
                    continue;
                }
                // A viewer's role never writes (the holder refuses it too: it runs watch-only).
                if !may_write && kind != "replay" {
                    if !told_read_only {
                        told_read_only = true;
                        show(&format!("read-only: {operator} is a viewer (role viewer) and cannot write to consoles")).await;
                    }
                    continue;
                }
                let keys: Vec<u8> = match kind {
                    "in" => msg["d"].as_str().unwrap_or("").as_bytes().to_vec(),
                    "break" => {
                        let _ = peer.request(Request::Break { ms: 0 }, false).await;
                        continue;
                    }
                    "baud" => match msg["rate"].as_u64() {
                        Some(rate) if rate > 0 => [&escape[..], format!("b{rate}\r").as_bytes()].concat(),
                        _ => continue,
                    },
                    "write" => [&escape[..], b"a"].concat(),
                    "force" => [&escape[..], b"f"].concat(),
                    "spy" => [&escape[..], b"s"].concat(),
                    "replay" => [&escape[..], b"r"].concat(),
                    // The page asked first: the menu, the action's key, and its `y`.
                    "power" => match msg["do"].as_str().and_then(burrow_proto::escape::PowerKey::from_word) {
                        Some(key) => [&escape[..], b"p", &[key.menu_key()], b"y"].concat(),
                        None => continue,
                    },
                    _ => continue,
                };
                if peer.data(&keys).await.is_err() {
                    break;
                }
            }
        }
    }
    peer.eof();
    peer.close();
}
