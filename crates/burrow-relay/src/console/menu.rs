//! The interactive menu of `ssh -t OPERATOR@relay`: the consoles this operator may use, with
//! their devices' state; typing a number attaches, `q` leaves.

use std::collections::HashMap;
use std::sync::Arc;

use burrow_proto::time::format_utc_minutes;
use burrow_ssh::driver::{Channel, ChannelMsg};

use super::session::{Mode, attach};
use crate::Relay;

/// Longest line typed at the menu prompt.
const MAX_LINE: usize = 32;

struct Entry {
    device: String,
    console: Option<String>,
    state: String,
}

async fn entries(relay: &Relay, operator: &str) -> Vec<Entry> {
    let allow = relay
        .db
        .operator(operator)
        .await
        .ok()
        .flatten()
        .map(|r| r.allow)
        .unwrap_or_default();
    // In a cluster, the consoles of devices other relays hold (one query for all of them).
    let mut elsewhere: HashMap<String, Vec<(String, String)>> = HashMap::new();
    for (device, console, holder) in relay.db.consoles_elsewhere().await.unwrap_or_default() {
        elsewhere.entry(device).or_default().push((console, holder));
    }
    let mut out = Vec::new();
    for d in relay.db.devices().await.unwrap_or_default() {
        if !burrow_proto::labels::allows(&allow, &d.name, &d.labels) {
            continue;
        }
        let (mut consoles, state) = match (relay.registry.get(&d.name), &d.relay) {
            (Some(dev), _) => (
                dev.consoles()
                    .into_iter()
                    .map(|c| (c, String::new()))
                    .collect(),
                "online".to_string(),
            ),
            (None, Some(holders)) if d.online => (
                elsewhere.remove(&d.name).unwrap_or_default(),
                format!("online at relay {holders}"),
            ),
            (None, _) => {
                let state = match d.last_seen {
                    Some(t) => format!("offline, last seen {}", format_utc_minutes(t)),
                    None => "offline, never seen".into(),
                };
                (Vec::new(), state)
            }
        };
        consoles.sort();
        consoles.dedup_by(|a, b| a.0 == b.0);
        if consoles.is_empty() {
            out.push(Entry {
                device: d.name.clone(),
                console: None,
                state: if state.starts_with("online") {
                    format!("{state}, no console")
                } else {
                    state
                },
            });
            continue;
        }
        for (c, holder) in consoles {
            out.push(Entry {
                device: d.name.clone(),
                console: Some(c),
                state: if holder.is_empty() {
                    state.clone()
                } else {
                    format!("online at relay {holder}")
                },
            });
        }
    }
    out
}

fn render(operator: &str, entries: &[Entry]) -> String {
    let mut s = format!("\r\nburrow: consoles for {operator}\r\n\r\n");
    if entries.is_empty() {
        s.push_str("  (no devices you may use)\r\n");
    }
    let mut n = 0;
    for e in entries {
        match &e.console {
            Some(c) => {
                n += 1;
                let name = format!("{}/{c}", e.device);
                s.push_str(&format!("  {n:>3})  {name:<32} {}\r\n", e.state));
            }
            None => s.push_str(&format!("        {:<32} {}\r\n", e.device, e.state)),
        }
    }
    s.push_str(
        "\r\nNumber and Enter attaches (the escape then . comes back here), r refreshes, q quits.\r\n> ",
    );
    s
}

/// Runs the menu until the operator quits; returns the exit status.
pub(crate) async fn run_menu(
    relay: &Arc<Relay>,
    operator: &str,
    size: (u16, u16),
    write: &Channel,
) -> u32 {
    let mut list = entries(relay, operator).await;
    let _ = write.data(render(operator, &list).as_bytes()).await;
    let mut line = String::new();
    loop {
        let data = match write.next().await {
            Some(ChannelMsg::Data(data)) => data,
            Some(ChannelMsg::Request { want_reply, .. }) => {
                if want_reply {
                    write.reply(false);
                }
                continue;
            }
            Some(ChannelMsg::Eof) | None => return 0,
        };
        for &b in data.iter() {
            match b {
                b'\r' | b'\n' => {
                    let choice = std::mem::take(&mut line);
                    let _ = write.data(b"\r\n").await;
                    match choice.trim() {
                        "q" | "quit" | "exit" => return 0,
                        "" | "r" => {}
                        n => {
                            let picked = n.parse::<usize>().ok().and_then(|n| {
                                list.iter()
                                    .filter(|e| e.console.is_some())
                                    .nth(n.wrapping_sub(1))
                            });
                            match picked {
                                Some(Entry {
                                    device,
                                    console: Some(console),
                                    ..
                                }) => {
                                    attach(
                                        relay,
                                        operator,
                                        device,
                                        console,
                                        Mode::Interactive,
                                        size,
                                        write,
                                    )
                                    .await;
                                }
                                _ => {
                                    let _ = write
                                        .data(format!("no console number {n:?}\r\n").as_bytes())
                                        .await;
                                }
                            }
                        }
                    }
                    list = entries(relay, operator).await;
                    let _ = write.data(render(operator, &list).as_bytes()).await;
                }
                // Backspace and delete.
                0x08 | 0x7f if line.pop().is_some() => {
                    let _ = write.data(b"\x08 \x08").await;
                }
                // Ctrl-C and Ctrl-D leave.
                0x03 | 0x04 => return 0,
                b if b.is_ascii_graphic() && line.len() < MAX_LINE => {
                    line.push(char::from(b));
                    let _ = write.data(&[b]).await;
                }
                _ => {}
            }
        }
    }
}
