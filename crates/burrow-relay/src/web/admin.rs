//! The admin page: devices waiting for approval (approve or reject them), join tokens (revoke
//! them) and quarantined keys. Admins only; every view and every change is audited with the
//! operator's name, like the same commands run on the relay.

use std::fmt::Write as _;

use burrow_proto::labels::format_labels;
use burrow_proto::time::format_rfc3339;
use hyper::StatusCode;

use super::Web;
use super::auth;
use super::html::{self, esc, url_part};
use super::http::{Resp, redirect, respond};
use super::pages::{html_ok, viewed};
use super::routes::Who;
use crate::audit::Outcome;
use crate::store::Role;

/// Refuses a non-admin, audited.
fn refuse(web: &Web, who: &Who, what: &str) -> Resp {
    web.relay.audit.record(
        "web-change",
        who.name(),
        what,
        Outcome::Denied,
        &format!(
            "from {}: operator {} has the {} role; this needs admin",
            who.site.client,
            who.name(),
            who.record.role.as_str()
        ),
    );
    respond(
        StatusCode::FORBIDDEN,
        "text/html; charset=utf-8",
        html::message(
            "Admins only",
            Some(who),
            "Tokens, approvals and quarantined keys are for operators with the admin role (burrow relay operator set NAME --role admin).",
        ),
    )
}

/// A button that posts `fields` to `action`, with the session's CSRF token.
fn button(who: &Who, action: &str, fields: &[(&str, &str)], label: &str, class: &str) -> String {
    let mut out = format!(
        "<form method=\"post\" action=\"{}\" class=\"inline\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        esc(action),
        esc(&who.session.csrf)
    );
    for (k, v) in fields {
        let _ = write!(
            out,
            "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
            esc(k),
            esc(v)
        );
    }
    let _ = write!(
        out,
        "<button class=\"{}\">{}</button></form>",
        esc(class),
        esc(label)
    );
    out
}

/// `/admin`: pending devices, tokens, quarantined keys.
pub(crate) async fn page(web: &Web, who: &Who) -> Resp {
    if who.record.role != Role::Admin {
        return refuse(web, who, "admin page");
    }
    let db = &web.relay.db;
    let devices = db.devices().await.unwrap_or_default();
    let tokens = db.tokens().await.unwrap_or_default();
    let quarantines = db.quarantines().await.unwrap_or_default();
    let now = crate::store::now();
    let mut body = String::from(
        "<h1>Admin</h1><h2>Devices waiting for approval</h2><table id=\"pending\"><thead><tr><th>Device</th><th>Keys</th><th>Labels</th><th></th></tr></thead><tbody>",
    );
    let pending: Vec<_> = devices.iter().filter(|d| d.pending).collect();
    for d in &pending {
        let _ = write!(
            body,
            "<tr data-device=\"{n}\"><td>{n}</td><td><code>{keys}</code></td><td>{labels}</td><td>{approve} {reject}</td></tr>",
            n = esc(&d.name),
            keys = esc(&d.fingerprints.join(" ")),
            labels = esc(&format_labels(&d.labels)),
            approve = button(
                who,
                "/admin/approve",
                &[("name", &d.name)],
                "Approve",
                "approve"
            ),
            reject = button(
                who,
                "/admin/reject",
                &[("name", &d.name)],
                "Reject and remove",
                "danger"
            ),
        );
    }
    if pending.is_empty() {
        body.push_str("<tr><td colspan=\"4\" class=\"muted\">None.</td></tr>");
    }
    body.push_str("</tbody></table>");
    let _ = write!(
        body,
        "<h2>Join tokens</h2><form method=\"post\" action=\"/admin/token\" class=\"filters\" id=\"new-token\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <label>Names <input name=\"names\" value=\"*\" size=\"12\"></label>\
         <label>Devices <select name=\"uses\"><option>1</option><option>10</option><option>100</option><option>reusable</option></select></label>\
         <label>Valid for <select name=\"ttl\"><option value=\"3600\">1 hour</option><option value=\"86400\" selected>24 hours</option><option value=\"604800\">7 days</option></select></label>\
         <label>Labels <input name=\"labels\" placeholder=\"site=osaka,role=cam\" size=\"18\"></label>\
         <label>Approval <select name=\"approve\"><option value=\"no\">not needed</option><option value=\"yes\">devices wait for approval</option></select></label>\
         <button>Create a join token</button></form>",
        esc(&who.session.csrf)
    );
    body.push_str(
        "<p class=\"hint\">Or on the relay: <code>burrow relay token create</code>. The join string is shown once.</p>\
         <table id=\"tokens\"><thead><tr><th>Token</th><th>State</th><th>Uses left</th><th>Expires</th><th>By</th><th>Names</th><th>Devices</th><th></th></tr></thead><tbody>",
    );
    for t in tokens.iter().rev() {
        let state = t.state(now);
        let mut devices = Vec::new();
        if let Some(r) = &t.replaces {
            devices.push(format!("replaces {r}"));
        }
        if t.approve {
            devices.push("approve".into());
        }
        if !t.labels.is_empty() {
            devices.push(t.labels_text());
        }
        if let Some(last) = &t.last_used_by {
            devices.push(format!("last: {last}"));
        }
        let _ = write!(
            body,
            "<tr data-token=\"{id}\"><td><code>{id}</code></td><td>{state}</td><td>{uses}</td><td>{exp}</td><td>{by}</td><td>{names}</td><td>{devices}</td><td>{revoke}</td></tr>",
            id = esc(&t.id),
            uses = esc(&t.uses_left()),
            exp = format_rfc3339(t.expires),
            by = esc(&t.created_by),
            names = esc(&t.name_pattern),
            devices = esc(&devices.join(" ")),
            revoke = if state == "revoked" {
                String::new()
            } else {
                button(who, "/admin/revoke", &[("id", &t.id)], "Revoke", "danger")
            },
        );
    }
    if tokens.is_empty() {
        body.push_str("<tr><td colspan=\"8\" class=\"muted\">None.</td></tr>");
    }
    body.push_str("</tbody></table>");
    body.push_str(&operators_html(
        who,
        &db.operators().await.unwrap_or_default(),
    ));
    body.push_str("<h2>Quarantined keys</h2>");
    if quarantines.is_empty() {
        body.push_str("<p class=\"muted\">None.</p>");
    } else {
        body.push_str("<table><thead><tr><th>Device</th><th>Key</th><th>Since</th><th>Why</th></tr></thead><tbody>");
        for q in &quarantines {
            let _ = write!(
                body,
                "<tr><td><a href=\"/device/{l}\">{d}</a></td><td><code>{fp}</code></td><td>{since}</td><td>{why}</td></tr>",
                l = url_part(&q.device),
                d = esc(&q.device),
                fp = esc(&q.fingerprint),
                since = format_rfc3339(q.since),
                why = esc(&q.detail),
            );
        }
        body.push_str("</tbody></table><p class=\"hint\">Release one on the relay with <code>burrow relay device unquarantine NAME</code>.</p>");
    }
    viewed(
        web,
        who,
        "admin page",
        &format!("{} pending, {} tokens", pending.len(), tokens.len()),
    );
    html_ok(html::page("Admin", Some(who), &[], &body))
}

/// The operators and their policy, each row a form that changes it.
fn operators_html(who: &Who, operators: &[crate::store::OperatorRecord]) -> String {
    let mut out = String::from(
        "<h2>Operators</h2><p class=\"hint\">Devices each may reach: name globs and label selectors (<code>edge-*</code>, <code>site=osaka</code>), separated by spaces. Added and removed on the relay (<code>burrow relay operator add|rm</code>).</p>\
         <table id=\"operators\"><thead><tr><th>Operator</th><th>May reach</th><th>Access</th><th>Role</th><th></th></tr></thead><tbody>",
    );
    for op in operators {
        // A form cannot wrap table cells: the row's fields name their form instead.
        let form = format!("op-{}", op.name);
        let select = |name: &str, options: &[&str], current: &str| {
            let mut s = format!("<select name=\"{name}\" form=\"{}\">", esc(&form));
            for o in options {
                let _ = write!(
                    s,
                    "<option{}>{o}</option>",
                    if *o == current { " selected" } else { "" }
                );
            }
            s.push_str("</select>");
            s
        };
        let _ = write!(
            out,
            "<tr data-operator=\"{n}\"><td>{n}</td><td><input name=\"allow\" form=\"{f}\" value=\"{allow}\" size=\"30\"></td>\
             <td>{access}</td><td>{role}</td><td><form id=\"{f}\" method=\"post\" action=\"/admin/operator\" class=\"inline\">\
             <input type=\"hidden\" name=\"name\" value=\"{n}\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><button>Save</button></form></td></tr>",
            n = esc(&op.name),
            f = esc(&form),
            csrf = esc(&who.session.csrf),
            allow = esc(&op.allow.join(" ")),
            access = select(
                "access",
                &["full", "consoles only"],
                if op.console_only {
                    "consoles only"
                } else {
                    "full"
                }
            ),
            role = select("role", &["viewer", "operator", "admin"], op.role.as_str()),
        );
    }
    out.push_str("</tbody></table>");
    out
}

/// `POST /admin/operator`: an operator's patterns, access and role, checked whole before
/// anything is changed.
async fn set_operator(web: &Web, who: &Who, form: &[(String, String)]) -> Result<String, String> {
    let name = auth::field(form, "name").unwrap_or("").to_string();
    let allow: Vec<String> = auth::field(form, "allow")
        .unwrap_or("")
        .split([' ', ','])
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .collect();
    if allow.is_empty() {
        return Err("give at least one name glob or label selector (an operator that may reach nothing is removed on the relay instead)".into());
    }
    for a in &allow {
        burrow_proto::labels::check_allow(a).map_err(|e| format!("{a:?}: {e}"))?;
    }
    let console_only = match auth::field(form, "access") {
        Some("consoles only") => true,
        Some("full") => false,
        other => return Err(format!("access {other:?}: give full or consoles only")),
    };
    let role: Role = auth::field(form, "role").unwrap_or("").parse()?;
    if name == who.name() && role != Role::Admin {
        return Err("an admin does not take its own admin role away here (another admin, or the relay's CLI, can)".into());
    }
    let db = &web.relay.db;
    db.set_operator_policy(&name, Some(&allow), Some(console_only))
        .await
        .map_err(|e| e.to_string())?;
    db.set_operator_web(&name, Some(role), None)
        .await
        .map_err(|e| e.to_string())?;
    Ok(format!(
        "operator {name}: may reach {}{}, role {}",
        allow.join(", "),
        if console_only { " (consoles only)" } else { "" },
        role.as_str()
    ))
}

/// `POST /admin/token`: a join token from the form's fields, stored as the hash of its secret;
/// returns its join string (shown once) and a summary.
async fn create_token(
    web: &Web,
    who: &Who,
    form: &[(String, String)],
) -> Result<(String, String, String), String> {
    use crate::store::fleet::{NewToken, TokenRecord};
    let names = auth::field(form, "names").unwrap_or("*").trim().to_string();
    burrow_proto::glob::check_pattern(&names).map_err(|e| format!("names {names:?}: {e}"))?;
    let max_uses = match auth::field(form, "uses").unwrap_or("1") {
        "reusable" => None,
        n => Some(
            n.parse::<u32>()
                .ok()
                .filter(|n| (1..=100_000).contains(n))
                .ok_or_else(|| format!("devices {n:?}: give 1 to 100000, or reusable"))?,
        ),
    };
    let ttl = auth::field(form, "ttl")
        .and_then(|t| t.parse::<i64>().ok())
        .filter(|t| (60..=366 * 86_400).contains(t))
        .ok_or("valid for: give 60 s to 366 days")?;
    let labels = burrow_proto::labels::parse_labels(&[auth::field(form, "labels").unwrap_or("")])
        .map_err(|e| e.to_string())?;
    let db = &web.relay.db;
    let (relays, pins) = crate::enroll::relays_and_pins(db)
        .await
        .map_err(|e| e.to_string())?;
    if relays.is_empty() || pins.is_empty() {
        return Err(
            "no relay address is known yet (each relay records its --advertise address at start)"
                .into(),
        );
    }
    let now = crate::store::now();
    let mut record = TokenRecord {
        id: String::new(),
        created: now,
        created_by: format!("{} (web)", who.name()),
        expires: now + ttl,
        max_uses,
        uses: 0,
        name_pattern: names,
        labels,
        approve: auth::field(form, "approve") == Some("yes"),
        replaces: None,
        last_used_by: None,
        last_used: None,
        revoked: None,
    };
    // Ids are short enough to type: draw again on the rare collision.
    let mut stored = None;
    for _ in 0..8 {
        let (id, secret) = crate::enroll::new_token_id_and_secret();
        record.id = id;
        let token = NewToken {
            record: record.clone(),
            secret_hash: crate::enroll::hash_secret(&secret),
        };
        match db.create_token(&token).await {
            Ok(()) => {
                stored = Some(secret);
                break;
            }
            Err(crate::store::StoreError::Conflict(_)) => continue,
            Err(e) => return Err(e.to_string()),
        }
    }
    let secret = stored.ok_or("no free token id; try again")?;
    let summary = format!(
        "join token {}: enrolls {} named {}, until {}{}{}",
        record.id,
        match record.max_uses {
            Some(1) => "1 device".to_string(),
            Some(n) => format!("{n} devices"),
            None => "any number of devices".to_string(),
        },
        record.name_pattern,
        format_rfc3339(record.expires),
        if record.labels.is_empty() {
            String::new()
        } else {
            format!("; labels {}", record.labels_text())
        },
        if record.approve {
            "; devices wait for approval"
        } else {
            ""
        },
    );
    let id = record.id.clone();
    let join = burrow_proto::join::JoinToken {
        id: record.id,
        secret: burrow_proto::secret::Secret::new(secret),
        relays,
        pins,
    };
    Ok((join.encode(), summary, id))
}

/// `POST /admin/approve|reject|revoke|operator|token` (Origin and CSRF already checked).
pub(crate) async fn change(web: &Web, who: &Who, what: &str, form: &[(String, String)]) -> Resp {
    if who.record.role != Role::Admin {
        return refuse(web, who, &format!("admin {what}"));
    }
    let db = &web.relay.db;
    let audit = |event: &str, target: &str, outcome: Outcome, detail: String| {
        web.relay.audit.record(
            event,
            who.name(),
            target,
            outcome,
            &format!("{detail} (web, from {})", who.site.client),
        );
    };
    let failed = |e: crate::store::StoreError| {
        respond(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/html; charset=utf-8",
            html::message("Not done", Some(who), &e.to_string()),
        )
    };
    match what {
        "token" => {
            return match create_token(web, who, form).await {
                Ok((join, summary, id)) => {
                    audit(
                        "token",
                        &format!("token {id}"),
                        Outcome::Ok,
                        format!("created: {summary}"),
                    );
                    // The secret is in this answer only (the page is never cached).
                    html_ok(html::page(
                        "Join token",
                        Some(who),
                        &[],
                        &format!(
                            "<h1>Join token</h1><p>{}</p><p class=\"hint\">On each device: <code>burrow agent enroll JOIN [--name NAME]</code>. \
                             The join string is a secret, shown this once.</p><pre id=\"join\">{}</pre><p><a href=\"/admin\">Back</a></p>",
                            esc(&summary),
                            esc(&join)
                        ),
                    ))
                }
                Err(why) => respond(
                    StatusCode::BAD_REQUEST,
                    "text/html; charset=utf-8",
                    html::message("No token made", Some(who), &why),
                ),
            };
        }
        "operator" => {
            let name = auth::field(form, "name").unwrap_or("").to_string();
            match set_operator(web, who, form).await {
                Ok(done) => audit("policy", &name, Outcome::Ok, done),
                Err(why) => {
                    audit("policy", &name, Outcome::Denied, why.clone());
                    return respond(
                        StatusCode::BAD_REQUEST,
                        "text/html; charset=utf-8",
                        html::message(
                            "Not changed",
                            Some(who),
                            &format!("Nothing was changed: {why}"),
                        ),
                    );
                }
            }
        }
        "approve" | "reject" => {
            let name = auth::field(form, "name").unwrap_or("").to_string();
            if !burrow_proto::name::is_valid_name(&name) {
                return respond(
                    StatusCode::BAD_REQUEST,
                    "text/html; charset=utf-8",
                    html::message("Not done", Some(who), "No such device name."),
                );
            }
            if what == "approve" {
                match db.approve_device(&name).await {
                    Ok(true) => audit("approve", &name, Outcome::Ok, "device approved".into()),
                    Ok(false) => {}
                    Err(e) => return failed(e),
                }
            } else {
                if let Err(e) = db.reject_device(&name).await {
                    return failed(e);
                }
                audit(
                    "approve",
                    &name,
                    Outcome::Denied,
                    "device rejected and removed".into(),
                );
            }
        }
        "revoke" => {
            let id = auth::field(form, "id").unwrap_or("").to_string();
            match db.revoke_token(&id).await {
                Ok(true) => audit(
                    "token",
                    &format!("token {id}"),
                    Outcome::Ok,
                    "revoked".into(),
                ),
                Ok(false) => {}
                Err(e) => return failed(e),
            }
        }
        _ => {
            return respond(
                StatusCode::NOT_FOUND,
                "text/html; charset=utf-8",
                html::message("Not found", Some(who), "Nothing to change there."),
            );
        }
    }
    redirect("/admin")
}
