//! The fleet page: every device the operator may see, with its state and why it is offline,
//! searched and paged, and its rows sent again over server-sent events whenever they change.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use burrow_proto::labels::{Labels, Selector};
use burrow_proto::time::format_rfc3339;
use bytes::Bytes;
use hyper::StatusCode;
use tokio::sync::mpsc;

use super::Web;
use super::auth;
use super::html::{self, esc, url_part};
use super::http::{Body, Resp, respond};
use super::pages::{html_ok, viewed};
use super::routes::Who;
use crate::fleet::FleetRow;

/// Devices per fleet page: 10,000 devices are 100 pages, each rendered in milliseconds.
pub(crate) const PAGE_SIZE: usize = 100;
/// How often live rows are compared with what the browser has.
const LIVE_EVERY: Duration = Duration::from_secs(1);
struct FleetQuery {
    search: String,
    /// Label selectors, all of which a device must match (`site=osaka`, `role=gw*`).
    labels: Vec<String>,
    selectors: Vec<Selector>,
    /// Only devices in this state (`online`, `offline`, `silent`, `pending`).
    state: String,
    page: usize,
    /// Why a label filter was not understood.
    error: Option<String>,
}

impl FleetQuery {
    fn of(query: &[(String, String)]) -> Self {
        let mut labels = Vec::new();
        let mut selectors = Vec::new();
        let mut error = None;
        for (k, v) in query {
            let v = v.trim();
            if k != "label" || v.is_empty() {
                continue;
            }
            match Selector::parse(v) {
                Ok(sel) => {
                    labels.push(v.to_string());
                    selectors.push(sel);
                }
                Err(e) => {
                    // Kept in the box, to be corrected.
                    labels.push(v.to_string());
                    error = Some(e.to_string());
                }
            }
        }
        FleetQuery {
            search: auth::field(query, "q").unwrap_or("").trim().to_lowercase(),
            labels,
            selectors,
            state: auth::field(query, "state")
                .filter(|s| STATES.contains(s))
                .unwrap_or("")
                .to_string(),
            page: auth::field(query, "page")
                .and_then(|p| p.parse().ok())
                .unwrap_or(1)
                .max(1),
            error,
        }
    }

    /// This query's string (without `?`) on `page`.
    fn query(&self, page: usize) -> String {
        let mut out = format!("q={}", url_part(&self.search));
        for l in &self.labels {
            let _ = write!(out, "&label={}", url_part(l));
        }
        if !self.state.is_empty() {
            let _ = write!(out, "&state={}", url_part(&self.state));
        }
        let _ = write!(out, "&page={page}");
        out
    }

    fn matches(&self, d: &FleetRow) -> bool {
        // A filter not understood matches nothing (its error says why).
        self.error.is_none()
            && (self.search.is_empty() || d.device.name.contains(&self.search))
            && self.selectors.iter().all(|s| s.matches(&d.device.labels))
            && (self.state.is_empty() || d.state() == self.state)
    }
}

/// The states the fleet page filters by.
const STATES: [&str; 4] = ["online", "silent", "offline", "pending"];

/// A device's labels as links that filter the fleet by each.
pub(crate) fn labels_html(labels: &Labels) -> String {
    let mut out = String::new();
    for (k, v) in labels {
        let pair = format!("{k}={v}");
        let _ = write!(
            out,
            " <a class=\"label\" href=\"/?label={}\">{}</a>",
            url_part(&pair),
            esc(&pair)
        );
    }
    out
}

/// The fleet rows of one page, and how many match in all.
async fn fleet_rows(web: &Web, who: &Who, q: &FleetQuery) -> (String, usize) {
    let view = crate::fleet::view(&web.relay, Some(&who.record)).await;
    let matching: Vec<FleetRow> = view.into_iter().filter(|d| q.matches(d)).collect();
    let total = matching.len();
    let mut out = String::new();
    for r in matching
        .iter()
        .skip((q.page - 1) * PAGE_SIZE)
        .take(PAGE_SIZE)
    {
        let d = &r.device;
        let state = r.state();
        let consoles = r
            .consoles
            .iter()
            .map(|c| {
                format!(
                    "<a href=\"/console/{}/{}\">{}</a>",
                    url_part(&d.name),
                    url_part(c),
                    esc(c)
                )
            })
            .collect::<Vec<_>>()
            .join(" ");
        let _ = write!(
            out,
            "<tr data-device=\"{name}\"><td><a href=\"/device/{link}\">{name}</a>{labels}</td>\
             <td><span class=\"state state-{state}\">{state}</span> <span class=\"reason\">{reason}</span></td>\
             <td class=\"for\" data-since=\"{since}\">{FOR_MARK}</td><td>{seen}</td><td class=\"num\">{reconnects}</td><td>{probe}</td><td>{link_}</td><td>{agent}</td>\
             <td>{endpoints}</td><td>{consoles}</td><td>{relay}</td></tr>",
            name = esc(&d.name),
            link = url_part(&d.name),
            labels = labels_html(&d.labels),
            reason = esc(&r.reason()),
            since = since(d).map_or_else(String::new, |t| t.to_string()),
            seen = d
                .last_seen
                .map(format_rfc3339)
                .unwrap_or_else(|| "never".into()),
            reconnects = d.health.reconnects_24h,
            probe = esc(&crate::show::probe(d)),
            link_ = esc(d.health.link.as_deref().unwrap_or("-")),
            agent = esc(d.health.agent.as_deref().unwrap_or("-")),
            endpoints = esc(&crate::admin::endpoints_text(&d.endpoints)),
            relay = esc(d.relay.as_deref().unwrap_or("")),
        );
    }
    if total == 0 {
        out.push_str(
            "<tr><td colspan=\"11\" class=\"muted\">No devices you may see match.</td></tr>",
        );
    }
    (out, total)
}

/// When the state in the For column began: the session's start while online, else its end.
fn since(d: &crate::store::DeviceRecord) -> Option<i64> {
    if d.online {
        d.health.since
    } else {
        d.health.ended.or(d.last_seen)
    }
}

/// Stands for a row's For text until the rows are sent: the live updates compare rows without
/// it (a duration changes every second; the page's script counts it on from `data-since`).
const FOR_MARK: &str = "\u{1}for\u{1}";

/// The rows with each For cell's text filled in, as of `now`.
fn with_durations(rows: &str, now: i64) -> String {
    let mut out = String::with_capacity(rows.len());
    let mut rest = rows;
    while let Some(at) = rest.find(FOR_MARK) {
        let before = &rest[..at];
        out.push_str(before);
        let since = before
            .rsplit("data-since=\"")
            .next()
            .and_then(|t| t.split('"').next())
            .and_then(|t| t.parse::<i64>().ok());
        out.push_str(&since.map_or_else(|| "-".into(), |t| crate::show::span(now - t)));
        rest = &rest[at + FOR_MARK.len()..];
    }
    out.push_str(rest);
    out
}

pub(crate) async fn fleet(web: &Web, who: &Who, query: &[(String, String)]) -> Resp {
    let q = FleetQuery::of(query);
    let (rows, total) = fleet_rows(web, who, &q).await;
    let rows = with_durations(&rows, crate::store::now());
    let pages = total.div_ceil(PAGE_SIZE).max(1);
    let mut pager = String::new();
    if q.page > 1 {
        let _ = write!(
            pager,
            "<a href=\"{}\">← previous</a>",
            esc(&format!("/?{}", q.query(q.page - 1)))
        );
    }
    let _ = write!(pager, "<span id=\"page\">page {} of {pages}</span>", q.page);
    if q.page < pages {
        let _ = write!(
            pager,
            "<a href=\"{}\">next →</a>",
            esc(&format!("/?{}", q.query(q.page + 1)))
        );
    }
    viewed(
        web,
        who,
        "fleet",
        &format!(
            "{total} devices, page {}{}",
            q.page,
            if q.labels.is_empty() {
                String::new()
            } else {
                format!(", labels {}", q.labels.join(" "))
            }
        ),
    );
    let error = q
        .error
        .as_ref()
        .map(|e| format!("<p class=\"error\">{}</p>", esc(e)))
        .unwrap_or_default();
    let label_value = q.labels.join(",");
    let body = format!(
        "<h1>Fleet <span class=\"badge\" id=\"fleet-count\">{total}</span></h1>{error}\
         <form class=\"search\" method=\"get\" action=\"/\"><input id=\"fleet-search\" name=\"q\" value=\"{search}\" placeholder=\"search devices\">\
         <input id=\"fleet-label\" name=\"label\" value=\"{label}\" placeholder=\"label filter: site=osaka,role=gw*\">\
         <select name=\"state\">{states}</select><button>Filter</button></form>\
         <table id=\"fleet\"><thead><tr><th>Device</th><th>State</th><th>For</th><th>Last seen</th><th title=\"reconnects in the last 24 h\">Reconn.</th>\
         <th>Probe</th><th>Link</th><th>Agent</th><th>Endpoints</th><th>Consoles</th><th>Relay</th></tr></thead>\
         <tbody id=\"fleet-rows\">{rows}</tbody></table><div class=\"pager\">{pager}</div>",
        search = esc(&q.search),
        label = esc(&label_value),
        states = std::iter::once("")
            .chain(STATES)
            .map(|st| format!(
                "<option value=\"{st}\"{}>{}</option>",
                if st == q.state { " selected" } else { "" },
                if st.is_empty() { "any state" } else { st }
            ))
            .collect::<String>(),
    );
    html_ok(html::page("Fleet", Some(who), &[], &body))
}

/// Server-sent events: the fleet page's rows again whenever they change.
pub(crate) async fn live(web: &Arc<Web>, who: &Who, query: &[(String, String)]) -> Resp {
    let q = FleetQuery::of(query);
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    viewed(web, who, "fleet live updates", "");
    let web = web.clone();
    let who = who.clone();
    tokio::spawn(async move {
        let mut last = String::new();
        let mut ticks = 0u32;
        // Logged out (or the session ended): the stream ends too.
        while web.sessions.alive(&who.id).await {
            // Policy as it is now.
            let Ok(Some(record)) = web.relay.db.operator(who.name()).await else {
                return;
            };
            let who = Who {
                record,
                ..who.clone()
            };
            let (rows, total) = fleet_rows(&web, &who, &q).await;
            let msg = if rows != last {
                let msg = format!(
                    "event: rows\ndata: {}\n\nevent: count\ndata: {total}\n\n",
                    with_durations(&rows, crate::store::now()).replace(['\n', '\r'], " ")
                );
                last = rows;
                msg
            } else if ticks.is_multiple_of(15) {
                ": still here\n\n".to_string()
            } else {
                String::new()
            };
            ticks = ticks.wrapping_add(1);
            if !msg.is_empty() && tx.send(Bytes::from(msg)).await.is_err() {
                return;
            }
            tokio::time::sleep(LIVE_EVERY).await;
        }
    });
    respond(StatusCode::OK, "text/event-stream", Body::Stream(rx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_fill_the_for_cells_compared_without_them() {
        let rows = format!(
            "<td class=\"for\" data-since=\"100\">{FOR_MARK}</td><td>x</td><td class=\"for\" data-since=\"\">{FOR_MARK}</td>"
        );
        assert_eq!(
            with_durations(&rows, 400),
            "<td class=\"for\" data-since=\"100\">5m</td><td>x</td><td class=\"for\" data-since=\"\">-</td>"
        );
        assert_eq!(with_durations("<td>plain</td>", 1), "<td>plain</td>");
    }
}
