//! The pages that need no module of their own: the dispatch of logged-in requests, the device
//! page and the audit. Each shows only what the operator's policy allows, and each view that
//! reveals something is audited.

use std::fmt::Write as _;
use std::sync::Arc;

use burrow_proto::time::format_rfc3339;
use hyper::StatusCode;

use super::Web;
use super::auth;
use super::html::{self, esc, url_part};
use super::http::{Req, Resp, respond, text};
use super::routes::Who;
use crate::audit::Outcome;
use crate::store::{AuditRecord, Role};

pub(crate) fn html_ok(body: String) -> Resp {
    respond(StatusCode::OK, "text/html; charset=utf-8", body)
}

pub(crate) fn not_found(web: &Web, who: &Who, what: &str) -> Resp {
    let _ = web;
    respond(
        StatusCode::NOT_FOUND,
        "text/html; charset=utf-8",
        html::message("Not found", Some(who), what),
    )
}

/// Whether `who`'s policy lets it see `device`, by name or by the device's labels now (the
/// SSH policy, [`crate::operator::may_reach`]).
pub(crate) async fn may_see(web: &Web, who: &Who, device: &str) -> bool {
    crate::operator::may_reach(&web.relay, &who.record, device).await
}

/// Records a page view that revealed something.
pub(crate) fn viewed(web: &Web, who: &Who, what: &str, detail: &str) {
    web.relay.audit.record(
        "web-view",
        who.name(),
        what,
        Outcome::Ok,
        &format!(
            "from {}{}{detail}",
            who.site.client,
            if detail.is_empty() { "" } else { ": " }
        ),
    );
}

pub(crate) async fn get(web: &Arc<Web>, who: &Who, req: Req) -> Resp {
    let path = req.uri().path().to_string();
    let query = auth::parse_form(req.uri().query().unwrap_or("").as_bytes());
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        [""] => super::fleet_page::fleet(web, who, &query).await,
        ["events"] => super::fleet_page::live(web, who, &query).await,
        ["device", name] => device(web, who, &auth::percent_decode(name.as_bytes())).await,
        ["audit"] => audit(web, who, &query).await,
        ["alerts"] => super::alerts::page(web, who, &query).await,
        ["admin"] => super::admin::page(web, who).await,
        ["d-auth"] => super::hosts::authorize(web, who, &query).await,
        ["recordings"] => super::recordings::list(web, who).await,
        ["recordings", dev, file] => super::recordings::play(web, who, dev, file).await,
        ["console", dev, console] => {
            let watch = auth::field(&query, "watch").is_some();
            super::console::page(web, who, dev, console, watch).await
        }
        ["console", dev, console, "ws"] => {
            super::console::socket(web, who, req, dev, console).await
        }
        _ => not_found(web, who, "There is no such page."),
    }
}

/// Changes other than logout (the console changes over its socket).
pub(crate) async fn change(web: &Web, who: &Who, path: &str, form: &[(String, String)]) -> Resp {
    match path.strip_prefix("/admin/") {
        Some(what) => super::admin::change(web, who, what, form).await,
        None => text(
            StatusCode::NOT_FOUND,
            format!("nothing to change at {path}\n"),
        ),
    }
}

async fn device(web: &Web, who: &Who, name: &str) -> Resp {
    // A device outside the policy is "not found", exactly like one that does not exist.
    let detail = if may_see(web, who, name).await {
        web.relay.db.device_detail(name).await.ok()
    } else {
        None
    };
    let Some(mut detail) = detail else {
        return not_found(web, who, &format!("No device {name} that you may see."));
    };
    // This relay's own view while it holds the session (as the fleet page shows it).
    let mut consoles = crate::fleet::consoles_elsewhere(&web.relay)
        .await
        .remove(name)
        .unwrap_or_default();
    if let Some(s) = web.relay.registry.get(name) {
        detail.device.online = true;
        detail.device.endpoints = s.ports();
        consoles = s.consoles();
        consoles.sort();
    }
    let d = &detail.device;
    let state = crate::fleet::FleetRow {
        device: d.clone(),
        consoles: Vec::new(),
        silent_for: None,
    };
    let mut body = format!(
        "<h1>{n}</h1><p><span class=\"state state-{s}\">{s}</span> <span class=\"reason\">{r}</span>{labels}</p>",
        n = esc(name),
        s = state.state(),
        r = esc(&state.reason()),
        labels = super::fleet_page::labels_html(&d.labels),
    );
    body.push_str("<h2>Health</h2><table class=\"health\" id=\"health\"><tbody>");
    for (key, value) in crate::show::detail_lines(&detail) {
        let _ = write!(
            body,
            "<tr><th>{}</th><td>{}</td></tr>",
            esc(key),
            esc(&value)
        );
    }
    body.push_str("</tbody></table>");
    body.push_str("<h2>Endpoints</h2>");
    if d.endpoints.is_empty() {
        body.push_str("<p class=\"muted\">None exposed now.</p>");
    } else {
        body.push_str("<table><thead><tr><th>Port</th><th>Reach it</th></tr></thead><tbody>");
        for p in &d.endpoints {
            let _ = write!(
                body,
                "<tr><td>{p}</td><td><code>ssh -W {n}:{p} OPERATOR@relay</code> · <a href=\"/d/{l}/{p}/\">open its web UI</a></td></tr>",
                n = esc(name),
                l = url_part(name),
            );
        }
        body.push_str("</tbody></table>");
    }
    body.push_str("<h2>Consoles</h2>");
    if consoles.is_empty() {
        body.push_str("<p class=\"muted\">None served now.</p>");
    } else {
        body.push_str("<ul>");
        for c in &consoles {
            let _ = write!(
                body,
                "<li><a href=\"/console/{l}/{cl}\">{c}</a></li>",
                l = url_part(name),
                cl = url_part(c),
                c = esc(c)
            );
        }
        body.push_str("</ul>");
    }
    body.push_str("<h2>Alerts</h2>");
    body.push_str(&super::alerts::table(&detail.alerts));
    body.push_str("<h2>Recent events and sessions</h2>");
    let events: Vec<&AuditRecord> = detail.events.iter().rev().collect();
    body.push_str(&audit_table(&events));
    let recs =
        crate::console::recording::list(&web.relay.config.data_dir, Some(name)).unwrap_or_default();
    body.push_str("<h2>Recordings</h2>");
    body.push_str(&super::recordings::table(&recs));
    viewed(web, who, name, "device page");
    html_ok(html::page(name, Some(who), &[], &body))
}

pub(crate) fn audit_table(rows: &[&AuditRecord]) -> String {
    let mut out = String::from(
        "<table class=\"audit\"><thead><tr><th>When</th><th>Event</th><th>Outcome</th><th>Who</th><th>Target</th><th>Detail</th></tr></thead><tbody>",
    );
    for r in rows {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td class=\"outcome-{o}\">{o}</td><td>{}</td><td>{}</td><td class=\"detail\">{}</td></tr>",
            format_rfc3339(r.at),
            esc(&r.event),
            esc(&r.who),
            esc(&r.target),
            esc(&r.detail),
            o = esc(&r.outcome),
        );
    }
    if rows.is_empty() {
        out.push_str("<tr><td colspan=\"6\" class=\"muted\">Nothing.</td></tr>");
    }
    out.push_str("</tbody></table>");
    out
}

/// Largest number of audit entries one page reads.
const AUDIT_MAX: usize = 5000;

async fn audit(web: &Web, who: &Who, query: &[(String, String)]) -> Resp {
    let limit = auth::field(query, "limit")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(200)
        .clamp(1, AUDIT_MAX);
    let filter = |name: &str| auth::field(query, name).unwrap_or("").trim().to_string();
    let (event, actor, target, outcome, text_q) = (
        filter("event"),
        filter("who"),
        filter("target"),
        filter("outcome"),
        filter("q"),
    );
    // The CLI's filters (`relay audit --device --operator --event --since --until`), read
    // through the same query and its indexes.
    let (device, operator, since, until) = (
        filter("device"),
        filter("operator"),
        filter("since"),
        filter("until"),
    );
    let now = crate::store::now();
    let when = |text: &str, name: &str| -> Result<Option<i64>, String> {
        if text.is_empty() {
            return Ok(None);
        }
        burrow_proto::time::parse_time(text, now)
            .map(Some)
            .map_err(|e| format!("{name}: {e}"))
    };
    let q = when(&since, "since").and_then(|s| {
        Ok(crate::store::audit_query::AuditQuery {
            device: (!device.is_empty()).then(|| device.clone()),
            operator: (!operator.is_empty()).then(|| operator.clone()),
            event: (!event.is_empty()).then(|| event.clone()),
            since: s,
            until: when(&until, "until")?,
            limit: AUDIT_MAX,
        })
    });
    let (tail, error) = match q {
        Ok(q) => match web.relay.db.audit_query(&q).await {
            Ok(entries) => (entries.into_iter().map(|e| e.record).collect(), None),
            Err(e) => (Vec::new(), Some(e.to_string())),
        },
        Err(why) => (Vec::new(), Some(why)),
    };
    let admin = who.record.role == Role::Admin;
    let visible = crate::fleet::Visibility::of(&web.relay, &who.record).await;
    let rows: Vec<&AuditRecord> = tail
        .iter()
        .rev()
        // Admins read everything; others what they did and what concerns their devices.
        .filter(|r| {
            admin
                || r.who == who.name()
                || visible.sees(&r.who)
                || r.target
                    .split(['/', ':'])
                    .next()
                    .is_some_and(|t| visible.sees(t))
        })
        .filter(|r| event.is_empty() || r.event == event)
        .filter(|r| actor.is_empty() || r.who == actor)
        .filter(|r| target.is_empty() || r.target.contains(&target))
        .filter(|r| outcome.is_empty() || r.outcome == outcome)
        .filter(|r| text_q.is_empty() || r.detail.contains(&text_q))
        .take(limit)
        .collect();
    viewed(web, who, "audit", &format!("{} entries", rows.len()));
    let error = error
        .map(|e| format!("<p class=\"error\">{}</p>", esc(&e)))
        .unwrap_or_default();
    let body = format!(
        "<h1>Audit</h1>{error}<form class=\"filters\" method=\"get\" action=\"/audit\">\
         <label>Device <input name=\"device\" value=\"{}\"></label><label>Operator <input name=\"operator\" value=\"{}\"></label>\
         <label>Since <input name=\"since\" value=\"{}\" placeholder=\"1h, 2d, 2026-11-23\" size=\"12\"></label><label>Until <input name=\"until\" value=\"{}\" size=\"12\"></label>\
         <label>Event <input name=\"event\" value=\"{}\"></label><label>Who <input name=\"who\" value=\"{}\"></label>\
         <label>Target <input name=\"target\" value=\"{}\"></label><label>Outcome <select name=\"outcome\">{}</select></label>\
         <label>Detail contains <input name=\"q\" value=\"{}\"></label><label>At most <input name=\"limit\" value=\"{limit}\" size=\"5\"></label>\
         <button>Filter</button></form>{}",
        esc(&device),
        esc(&operator),
        esc(&since),
        esc(&until),
        esc(&event),
        esc(&actor),
        esc(&target),
        ["", "ok", "denied", "failed", "open", "interrupted"]
            .iter()
            .map(|o| format!(
                "<option{}>{}</option>",
                if *o == outcome { " selected" } else { "" },
                o
            ))
            .collect::<String>(),
        esc(&text_q),
        audit_table(&rows),
    );
    html_ok(html::page("Audit", Some(who), &[], &body))
}
