//! The alerts page: what the relay keeps of the alerts it raised, with their deliveries, for
//! the devices the operator may see (admins also see the relay's own).

use std::fmt::Write as _;

use burrow_proto::time::format_rfc3339;

use super::Web;
use super::auth;
use super::html::{self, esc, url_part};
use super::http::Resp;
use super::pages::{html_ok, viewed};
use super::routes::Who;
use crate::alerts::AlertRecord;
use crate::store::Role;

/// Alerts one page reads at most.
const ALERTS_MAX: usize = 2000;

/// Alerts as a table, newest first.
pub(crate) fn table(alerts: &[AlertRecord]) -> String {
    let mut out = String::from(
        "<table class=\"alerts\"><thead><tr><th>At</th><th>Kind</th><th>Device</th><th>Severity</th><th>Delivery</th><th>Summary</th></tr></thead><tbody>",
    );
    for a in alerts.iter().rev() {
        let device = match &a.device {
            Some(d) => format!("<a href=\"/device/{}\">{}</a>", url_part(d), esc(d)),
            None => "-".into(),
        };
        let _ = write!(
            out,
            "<tr class=\"severity-{sev}\"><td>{at}</td><td>{kind}</td><td>{device}</td><td>{sev}</td><td>{delivery}</td><td title=\"{detail}\">{summary}</td></tr>",
            at = a.at.map(format_rfc3339).unwrap_or_default(),
            kind = esc(&a.kind),
            sev = esc(&a.severity),
            delivery = esc(&crate::show::delivery(a)),
            detail = esc(&a.detail),
            summary = esc(&a.summary),
        );
    }
    if alerts.is_empty() {
        out.push_str("<tr><td colspan=\"6\" class=\"muted\">None.</td></tr>");
    }
    out.push_str("</tbody></table>");
    out
}

/// `/alerts?device=&kind=&severity=&limit=`.
pub(crate) async fn page(web: &Web, who: &Who, query: &[(String, String)]) -> Resp {
    let field = |name: &str| auth::field(query, name).unwrap_or("").trim().to_string();
    let (device, kind, severity) = (field("device"), field("kind"), field("severity"));
    let limit = auth::field(query, "limit")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(200)
        .clamp(1, ALERTS_MAX);
    let all = web
        .relay
        .db
        .alerts(ALERTS_MAX, (!device.is_empty()).then_some(device.as_str()))
        .await;
    let all = match all {
        Ok(a) => a,
        Err(e) => {
            return html_ok(html::message(
                "Alerts",
                Some(who),
                &format!("The alerts cannot be read now: {e}"),
            ));
        }
    };
    let admin = who.record.role == Role::Admin;
    let visible = crate::fleet::Visibility::of(&web.relay, &who.record).await;
    let mut shown: Vec<AlertRecord> = all
        .into_iter()
        // Alerts about no device (the relay's own) are for admins.
        .filter(|a| match &a.device {
            Some(d) => visible.sees(d),
            None => admin,
        })
        .filter(|a| kind.is_empty() || a.kind == kind)
        .filter(|a| severity.is_empty() || a.severity == severity)
        .collect();
    // The newest `limit`, still oldest first for the table.
    let skip = shown.len().saturating_sub(limit);
    shown.drain(..skip);
    viewed(web, who, "alerts", &format!("{} alerts", shown.len()));
    let body = format!(
        "<h1>Alerts</h1><form class=\"filters\" method=\"get\" action=\"/alerts\">\
         <label>Device <input name=\"device\" value=\"{}\"></label><label>Kind <input name=\"kind\" value=\"{}\"></label>\
         <label>Severity <select name=\"severity\">{}</select></label><label>At most <input name=\"limit\" value=\"{limit}\" size=\"5\"></label>\
         <button>Filter</button></form>{}",
        esc(&device),
        esc(&kind),
        ["", "info", "warning", "critical"]
            .iter()
            .map(|o| format!(
                "<option{}>{o}</option>",
                if *o == severity { " selected" } else { "" }
            ))
            .collect::<String>(),
        table(&shown),
    );
    html_ok(html::page("Alerts", Some(who), &[], &body))
}
