//! What an operator's exec commands answer: `ls` (the devices it may reach, filtered by
//! label) and `help`.

use burrow_proto::labels::{Labels, Selector};
use burrow_proto::time::format_rfc3339;

use crate::Relay;
use crate::operator::{OperatorSession, current_record};

/// One line of `ls` (the same fields and formats as `burrow relay device ls`).
#[derive(Debug, serde::Serialize)]
struct Listing {
    name: String,
    online: bool,
    /// RFC 3339 UTC; now while online.
    last_seen: Option<String>,
    endpoints: Vec<u16>,
    /// Online but suspect: seconds since the device was last heard.
    #[serde(skip_serializing_if = "Option::is_none")]
    silent_for: Option<u64>,
    /// In a cluster: the relay (or relays) holding the device's session.
    #[serde(skip_serializing_if = "Option::is_none")]
    relay: Option<String>,
    /// The device's labels.
    labels: Labels,
}

async fn listings(relay: &Relay, op: &OperatorSession, filter: &[Selector]) -> Vec<Listing> {
    // Policy as it is now: a removed operator sees nothing. The web console's fleet page
    // reads the same view.
    let record = current_record(relay, op).await;
    crate::fleet::view(relay, record.as_ref())
        .await
        .into_iter()
        .filter(|r| filter.iter().all(|s| s.matches(&r.device.labels)))
        .map(|r| Listing {
            silent_for: r.silent_for,
            online: r.device.online,
            endpoints: r.device.endpoints,
            last_seen: r.device.last_seen.map(format_rfc3339),
            relay: r.device.relay,
            labels: r.device.labels,
            name: r.device.name,
        })
        .collect()
}

fn render_table(rows: &[Listing]) -> String {
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(0).max(6);
    // A cluster says which relay holds each device.
    let cluster = rows.iter().any(|r| r.relay.is_some());
    let mut out = format!(
        "{:<width$}  {:<7}  {:<20}  {}ENDPOINTS\n",
        "DEVICE",
        "STATE",
        "LAST SEEN",
        if cluster { "RELAY       " } else { "" }
    );
    for r in rows {
        let relay = if cluster {
            format!("{:<12}", r.relay.as_deref().unwrap_or("-"))
        } else {
            String::new()
        };
        out.push_str(&format!(
            "{:<width$}  {:<7}  {:<20}  {relay}{}\n",
            r.name,
            match r.silent_for {
                // Online, but its keepalive is overdue (or an open went unanswered).
                Some(_) => "silent",
                None => crate::admin::state_text(r.online),
            },
            r.last_seen.as_deref().unwrap_or("never"),
            crate::admin::endpoints_text(&r.endpoints)
        ));
    }
    out
}

pub(crate) const HELP: &str = "\
burrow relay commands (ssh OPERATOR@relay COMMAND):
  ls [--json] [--label K=V]...         devices you may reach, online state, last seen, endpoints
  console break DEVICE[/NAME]          send a break to a device's serial console
  console baud DEVICE[/NAME] RATE      change a console's baud rate
  console watch DEVICE[/NAME]          follow a console read-only (for logs and scripts)
  web                                  a one-time link that logs you in to the web console
  help                                 this text
Reach a device: ssh -J OPERATOR@relay USER@DEVICE, or ssh -W DEVICE:PORT OPERATOR@relay
A console interactively: ssh -t OPERATOR:DEVICE[/NAME]@relay (or ssh -t OPERATOR@relay for a menu)
";

/// Runs an exec command that needs no channel; returns (stdout, stderr, exit status).
pub(crate) async fn run_command(
    relay: &Relay,
    op: &OperatorSession,
    command: &str,
) -> (String, String, u32) {
    let words: Vec<&str> = command.split_whitespace().collect();
    match words.as_slice() {
        ["ls", rest @ ..] => match parse_ls(rest) {
            Ok((json, filter)) => {
                let rows = listings(relay, op, &filter).await;
                if json {
                    let out = serde_json::to_string_pretty(&rows).unwrap_or_default() + "\n";
                    return (out, String::new(), 0);
                }
                // Held elsewhere is then what the registry's copy said, not what is.
                let note = match relay.cluster.as_ref().filter(|c| c.is_degraded()) {
                    Some(_) => "note: the cluster's database cannot be reached; devices held by other relays are shown as this relay's copy of the registry last saw them\n".to_string(),
                    None => String::new(),
                };
                (render_table(&rows), note, 0)
            }
            Err(why) => (String::new(), format!("{why}\n{HELP}"), 2),
        },
        ["help"] | ["--help"] => (HELP.to_string(), String::new(), 0),
        ["web"] => match relay.web_links.create(&relay.db, op.name()).await {
            Ok(link) => (
                format!(
                    "{link}\nOpen it within {} s; it works once.\n",
                    crate::web::LINK_LIFETIME.as_secs()
                ),
                String::new(),
                0,
            ),
            Err(why) => (String::new(), format!("{why}\n"), 1),
        },
        _ => (
            String::new(),
            format!("unknown command {command:?}\n{HELP}"),
            2,
        ),
    }
}

/// `ls` arguments: `--json`, and label selectors as `--label K=V` or `K=V`.
fn parse_ls(args: &[&str]) -> Result<(bool, Vec<Selector>), String> {
    let mut json = false;
    let mut filter = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let selector = match *arg {
            "--json" => {
                json = true;
                continue;
            }
            "--label" => args
                .next()
                .ok_or_else(|| "--label needs KEY=VALUE".to_string())?,
            other if other.contains('=') => other,
            other => return Err(format!("ls: unknown argument {other:?}")),
        };
        filter.push(Selector::parse(selector).map_err(|e| e.to_string())?);
    }
    Ok((json, filter))
}
