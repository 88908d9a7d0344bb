//! Which handler answers which request, the login gate in front of the pages, and the headers
//! every response carries.

use std::sync::Arc;

use hyper::header::{self, HeaderValue};
use hyper::{Method, StatusCode};

use super::auth::{self, Session};
use super::html;
use super::http::{Peer, Req, Resp, read_body, redirect, respond, text};
use super::site::Site;
use super::{Web, assets, pages};
use crate::audit::Outcome;
use crate::store::OperatorRecord;

/// A logged-in request: the session, the operator's record as it is now, the site facts.
#[derive(Clone)]
pub(crate) struct Who {
    pub(crate) id: String,
    pub(crate) session: Session,
    pub(crate) record: OperatorRecord,
    pub(crate) site: Site,
}

impl Who {
    pub(crate) fn name(&self) -> &str {
        &self.session.operator
    }
}

/// The policy every page of ours is served with: scripts and styles from this site only, no
/// inline code, no framing, forms post here only.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; connect-src 'self'; media-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
/// The console page's: xterm.js sets styles on its rows (inline styles, never scripts).
pub(crate) const CSP_CONSOLE: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
/// The recording player's: inline styles, and its terminal emulator compiled from WebAssembly.
pub(crate) const CSP_PLAYER: &str = "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self'; connect-src 'self'; worker-src 'self' blob:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub(crate) async fn handle(web: &Arc<Web>, req: Req, peer: Peer) -> Resp {
    let site = Site::of(web, req.headers(), peer);
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let device_host = web
        .config
        .device_domain
        .as_deref()
        .and_then(|d| super::hosts::device_host(host, d));
    // A device's web UI keeps its own policy (its pages have inline scripts of their own).
    let device_ui = req.uri().path().starts_with("/d/") || device_host.is_some();
    let mut resp = match device_host {
        Some((device, port)) => super::hosts::host_request(web, req, site, device, port).await,
        None => route(web, req, site).await,
    };
    let h = resp.headers_mut();
    if !device_ui {
        h.entry(header::CONTENT_SECURITY_POLICY)
            .or_insert(HeaderValue::from_static(CSP));
    }
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    // Not `no-referrer`: with it browsers send `Origin: null` on form posts, which the Origin
    // check then refuses. Cross-site requests get no referrer either way.
    h.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    if !device_ui {
        h.entry(header::CACHE_CONTROL)
            .or_insert(HeaderValue::from_static("no-store"));
    }
    resp
}

async fn route(web: &Arc<Web>, req: Req, site: Site) -> Resp {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    if let Some(name) = path.strip_prefix("/static/") {
        return assets::serve(name);
    }
    match (&method, path.as_str()) {
        (&Method::GET, "/login") => return login_page(web, &site, None),
        (&Method::POST, "/login") => return login_post(web, req, site).await,
        (&Method::GET, "/login/link") => {
            return respond(
                StatusCode::OK,
                "text/html; charset=utf-8",
                html::page(
                    "Logging in",
                    None,
                    &["link.js"],
                    "<h1>Logging in…</h1><p id=\"status\" class=\"message\">Exchanging the link for a session.</p>",
                ),
            );
        }
        (&Method::POST, "/login/link") => return link_post(web, req, site).await,
        _ => {}
    }
    let Some((id, session)) = web.sessions.get(req.headers()).await else {
        return if method == Method::GET && !path.ends_with("/ws") && !path.starts_with("/d/") {
            redirect("/login")
        } else {
            text(StatusCode::UNAUTHORIZED, "log in first\n")
        };
    };
    // Policy as it is now: a removed operator is logged out at its next request.
    let record = match web.relay.db.operator(&session.operator).await {
        Ok(Some(r)) => r,
        Ok(None) => {
            web.sessions.end_operator(&session.operator).await;
            return redirect("/login");
        }
        Err(e) => return text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
    };
    let who = Who {
        id,
        session,
        record,
        site,
    };
    if path.starts_with("/d/") {
        return super::proxy::serve(web, &who, req).await;
    }
    if method != Method::GET && method != Method::HEAD {
        // Every change: this site's Origin and the session's CSRF token.
        if !who.site.same_origin(web, req.headers()) {
            return refuse_change(web, &who, &path, "its Origin is not this site");
        }
        let headers = req.headers().clone();
        let body = read_body(req.into_body()).await.unwrap_or_default();
        let form = auth::parse_form(&body);
        if !auth::csrf_ok(&who.session, &headers, &form) {
            return refuse_change(web, &who, &path, "it carries no valid CSRF token");
        }
        return match path.as_str() {
            "/logout" => {
                web.sessions.end(&who.id).await;
                web.relay
                    .audit
                    .record("web-logout", who.name(), &who.site.who(), Outcome::Ok, "");
                let mut r = redirect("/login");
                r.headers_mut()
                    .insert(header::SET_COOKIE, auth::clear_cookie());
                r
            }
            _ => pages::change(web, &who, &path, &form).await,
        };
    }
    pages::get(web, &who, req).await
}

fn refuse_change(web: &Web, who: &Who, path: &str, why: &str) -> Resp {
    web.relay.audit.record(
        "web-change",
        who.name(),
        path,
        Outcome::Denied,
        &format!("refused from {}: {why}", who.site.client),
    );
    text(
        StatusCode::FORBIDDEN,
        format!("refused: {why} (reload the page and try again)\n"),
    )
}

fn login_page(web: &Web, site: &Site, error: Option<&str>) -> Resp {
    if !site.may_log_in(web) {
        return insecure(site);
    }
    let error = error
        .map(|e| format!("<p class=\"error\">{}</p>", html::esc(e)))
        .unwrap_or_default();
    let body = format!(
        "<h1>Log in</h1>{error}<form method=\"post\" action=\"/login\" class=\"login\">\
         <label>Operator <input name=\"name\" autocomplete=\"username\" required autofocus></label>\
         <label>Password <input name=\"password\" type=\"password\" autocomplete=\"current-password\" required></label>\
         <label>Code <input name=\"code\" inputmode=\"numeric\" autocomplete=\"one-time-code\" placeholder=\"if you enrolled TOTP\"></label>\
         <button>Log in</button></form>\
         <p class=\"hint\">Or run <code>ssh OPERATOR@relay web</code> and open the link it prints.</p>"
    );
    respond(
        if error.is_empty() {
            StatusCode::OK
        } else {
            StatusCode::UNAUTHORIZED
        },
        "text/html; charset=utf-8",
        html::page("Log in", None, &[], &body),
    )
}

fn insecure(site: &Site) -> Resp {
    respond(
        StatusCode::FORBIDDEN,
        "text/html; charset=utf-8",
        html::message(
            "Login refused over plain HTTP",
            None,
            &format!(
                "This relay serves its web console without TLS, and {} is not this machine: a password or session cookie would cross the network in clear. Serve it with --web-cert and --web-key, behind a TLS proxy (--web-trusted-proxy), or on 127.0.0.1 (--web-insecure overrides this).",
                site.client
            ),
        ),
    )
}

async fn login_post(web: &Web, req: Req, site: Site) -> Resp {
    if !site.may_log_in(web) {
        return insecure(&site);
    }
    if !site.same_origin(web, req.headers()) {
        return text(
            StatusCode::FORBIDDEN,
            "refused: the form came from another site\n",
        );
    }
    let body = read_body(req.into_body()).await.unwrap_or_default();
    let form = auth::parse_form(&body);
    let name = auth::field(&form, "name").unwrap_or("").trim().to_string();
    let password = auth::field(&form, "password").unwrap_or("");
    let code = auth::field(&form, "code").unwrap_or("");
    let relay = &web.relay;
    let (outcome, started) =
        crate::password::attempt(relay, auth::peer_of(site.client), &name, password).await;
    let refused = match outcome {
        crate::password::Outcome::Accepted(burrow_proto::name::Login::Plain(op)) => {
            match crate::totp::second_factor(relay, &op, code).await {
                Ok(()) => return start_session(web, &site, &op, "password").await,
                Err(why) => why,
            }
        }
        crate::password::Outcome::Accepted(_) => {
            "a console login name (OPERATOR:DEVICE) cannot log in to the web console".to_string()
        }
        crate::password::Outcome::Refused(why, metric) => {
            relay.metrics.auth_failed(metric);
            why
        }
    };
    relay.audit.record(
        "web-login",
        &burrow_proto::text::clean(&name, burrow_proto::text::MAX_NAME_CHARS),
        &site.who(),
        Outcome::Denied,
        &refused,
    );
    // Refusals are paced like SSH's, from when the check was taken up.
    tokio::time::sleep_until((started + relay.config.auth_rejection_time).into()).await;
    login_page(web, &site, Some("Wrong name, password or code."))
}

async fn link_post(web: &Web, req: Req, site: Site) -> Resp {
    if !site.may_log_in(web) {
        return insecure(&site);
    }
    if !site.same_origin(web, req.headers()) {
        return text(
            StatusCode::FORBIDDEN,
            "refused: the request came from another site\n",
        );
    }
    let body = read_body(req.into_body()).await.unwrap_or_default();
    let form = auth::parse_form(&body);
    let token = auth::field(&form, "token").unwrap_or("");
    match web.relay.web_links.redeem(&web.relay.db, token).await {
        Some(op) => start_session(web, &site, &op, "one-time link").await,
        None => {
            web.relay.audit.record(
                "web-login",
                "-",
                &site.who(),
                Outcome::Denied,
                "one-time link unknown, used already or expired",
            );
            text(
                StatusCode::FORBIDDEN,
                "this link was used already or has expired: run ssh OPERATOR@relay web for a new one\n",
            )
        }
    }
}

async fn start_session(web: &Web, site: &Site, operator: &str, how: &str) -> Resp {
    let id = match web.sessions.start(operator).await {
        Ok(id) => id,
        Err(e) => {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not logged in: {e}\n"),
            );
        }
    };
    web.relay.audit.record(
        "web-login",
        operator,
        &site.who(),
        Outcome::Ok,
        &format!("by {how}"),
    );
    let mut r = redirect("/");
    r.headers_mut().insert(
        header::SET_COOKIE,
        web.sessions.set_cookie(&id, site.secure),
    );
    r
}
