//! Device web UIs by name: `/d/NAME/PORT/...` (and, with `hosts`, `PORT--NAME.DOMAIN`) is
//! the device endpoint `NAME:PORT` spoken to over HTTP/1.1 through a stream of the device's
//! session, behind the console's login and the operator's policy, each request audited as a
//! stream. WebSockets are carried through; `rewrite` keeps redirects and cookies under the
//! prefix. The console's own session cookie never reaches the device.

use std::sync::Arc;

use burrow_proto::name::is_valid_name;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;

use super::Web;
use super::http::{Body, Req, Resp, redirect, text};
use super::rewrite::{copy_request_headers, copy_response_headers};
use super::routes::Who;
use crate::audit::Outcome;
use crate::operator::{Asker, open_endpoint};
use crate::store::Role;

/// Parses `/d/NAME/PORT/rest`: the device, the port, and the path on the device (`/rest`).
fn target(path: &str) -> Option<(String, u16, Option<String>)> {
    let rest = path.strip_prefix("/d/")?;
    let (name, after) = rest.split_once('/')?;
    let (port, tail) = match after.split_once('/') {
        Some((p, t)) => (p, Some(format!("/{t}"))),
        None => (after, None),
    };
    let port: u16 = port.parse().ok().filter(|p| *p > 0)?;
    is_valid_name(name).then(|| (name.to_string(), port, tail))
}

/// `/d/NAME/PORT/...` on the console's own host.
pub(crate) async fn serve(web: &Arc<Web>, who: &Who, req: Req) -> Resp {
    let Some((device, port, tail)) = target(req.uri().path()) else {
        return text(StatusCode::NOT_FOUND, "use /d/DEVICE/PORT/\n");
    };
    let prefix = format!("/d/{device}/{port}");
    let Some(tail) = tail else {
        // The UI's relative links need the trailing slash.
        return redirect(&format!("{prefix}/"));
    };
    forward(web, who, req, &device, port, tail, &prefix).await
}

/// Whether `who` may open `device`'s ports from the web, or why not (the SSH policy: the
/// patterns, no ports for console-only operators, nothing for viewers).
pub(crate) async fn may_reach(
    web: &Web,
    who: &Who,
    device: &str,
) -> Result<(), (StatusCode, String)> {
    if !super::pages::may_see(web, who, device).await {
        return Err((
            StatusCode::NOT_FOUND,
            format!("no device {device} that you may reach"),
        ));
    }
    if who.record.console_only {
        return Err((
            StatusCode::FORBIDDEN,
            format!("operator {} may use consoles only", who.name()),
        ));
    }
    if who.record.role == Role::Viewer {
        return Err((
            StatusCode::FORBIDDEN,
            format!(
                "operator {} has the viewer role: it opens no streams",
                who.name()
            ),
        ));
    }
    Ok(())
}

/// Passes one request to `device:port` (its path there `tail`; `prefix` is where the UI is
/// mounted on this host, empty for host routing).
pub(crate) async fn forward(
    web: &Arc<Web>,
    who: &Who,
    mut req: Req,
    device: &str,
    port: u16,
    tail: String,
    prefix: &str,
) -> Resp {
    let device = device.to_string();
    let relay = &web.relay;
    let endpoint = format!("{device}:{port}");
    let refuse = |status: StatusCode, why: String| {
        relay.audit.record(
            "stream",
            who.name(),
            &endpoint,
            Outcome::Denied,
            &format!("web from {}: {why}", who.site.client),
        );
        text(status, format!("{why}\n"))
    };
    if let Err((status, why)) = may_reach(web, who, &device).await {
        return refuse(status, why);
    }
    // A device UI's changes and sockets come from this site only (its pages share the
    // console's origin; cross-site requests carry no session cookie at all).
    if req.method() != Method::GET
        && req.method() != Method::HEAD
        && !who.site.same_origin(web, req.headers())
        || is_upgrade(req.headers()) && !who.site.same_origin(web, req.headers())
    {
        return refuse(
            StatusCode::FORBIDDEN,
            "refused: the request's Origin is not this site".into(),
        );
    }
    let client = who.site.client.to_string();
    let channel = match open_endpoint(relay, &device, port, &client, 0, Asker::Operator).await {
        Ok((_, channel)) => channel,
        Err(refusal) => {
            relay.audit.record(
                "stream",
                who.name(),
                &endpoint,
                refusal.outcome(),
                &refusal.reason,
            );
            return text(StatusCode::BAD_GATEWAY, format!("{}\n", refusal.reason));
        }
    };
    let what = format!(
        "web {} {tail} from {client}",
        req.method(),
        tail = burrow_proto::text::clean(&tail, 200)
    );
    let row = relay
        .audit
        .open(
            "stream",
            who.name(),
            &endpoint,
            &what,
            crate::audit::Measure::Duration,
        )
        .await;
    let (mut sender, conn) =
        match hyper::client::conn::http1::handshake(TokioIo::new(channel)).await {
            Ok(pair) => pair,
            Err(e) => {
                row.close(Outcome::Failed, &format!("{what}: {e}"));
                return text(StatusCode::BAD_GATEWAY, format!("device {device}: {e}\n"));
            }
        };
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let upgrade = is_upgrade(req.headers());
    let browser_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let query = req
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let mut up = Request::builder()
        .method(req.method())
        .uri(format!("{tail}{query}"));
    if let Some(h) = up.headers_mut() {
        copy_request_headers(req.headers(), h, upgrade);
        let mut set = |k: &'static str, v: &str| {
            if let Ok(v) = HeaderValue::from_str(v) {
                h.insert(HeaderName::from_static(k), v);
            }
        };
        if !prefix.is_empty() {
            set("x-forwarded-prefix", prefix);
        }
        set("x-forwarded-for", &client);
        set(
            "x-forwarded-proto",
            if who.site.secure { "https" } else { "http" },
        );
    }
    let Ok(up) = up.body(req.into_body()) else {
        row.close(Outcome::Failed, &format!("{what}: bad request"));
        return text(StatusCode::BAD_REQUEST, "cannot pass this request on\n");
    };
    let resp = match sender.send_request(up).await {
        Ok(r) => r,
        Err(e) => {
            row.close(Outcome::Failed, &format!("{what}: {e}"));
            return text(
                StatusCode::BAD_GATEWAY,
                format!("device {device} port {port} did not answer over HTTP: {e}\n"),
            );
        }
    };
    let status = resp.status();
    if status == StatusCode::SWITCHING_PROTOCOLS
        && let Some(browser) = browser_upgrade
    {
        // A WebSocket (or other upgrade): both upgraded ends spliced, audited as one stream.
        let (parts, body) = resp.into_parts();
        let mut device_side = hyper::Response::from_parts(parts.clone(), body);
        let device_upgrade = hyper::upgrade::on(&mut device_side);
        let (web, id, operator, target) = (
            web.clone(),
            who.id.clone(),
            who.name().to_string(),
            endpoint.clone(),
        );
        tokio::spawn(async move {
            let (Ok(b), Ok(d)) = (browser.await, device_upgrade.await) else {
                row.close(Outcome::Failed, "upgrade failed");
                return;
            };
            // Held to the login and the policy as they are now, like an SSH stream.
            let revoked = super::hold::until_revoked(
                &web,
                &id,
                &operator,
                &device,
                &target,
                super::hold::Holding::Stream,
            );
            let spliced = burrow_io::splice::splice(TokioIo::new(b), TokioIo::new(d));
            let (t, r) = tokio::select! {
                done = spliced => done,
                why = revoked => {
                    row.close(Outcome::Ok, &format!("{what}: upgraded; closed: {why}"));
                    return;
                }
            };
            let outcome = if r.is_ok() {
                Outcome::Ok
            } else {
                Outcome::Failed
            };
            row.close(
                outcome,
                &format!("{what}: upgraded; {} bytes in, {} out", t.a_to_b, t.b_to_a),
            );
        });
        let mut out = hyper::Response::new(Body::empty());
        *out.status_mut() = status;
        *out.headers_mut() = parts.headers;
        return out;
    }
    row.close(Outcome::Ok, &format!("{what}: {}", status.as_u16()));
    let (parts, body) = resp.into_parts();
    let mut out = hyper::Response::new(Body::Proxied(body));
    *out.status_mut() = parts.status;
    copy_response_headers(&parts.headers, out.headers_mut(), prefix, &device, port);
    out
}

fn is_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(header::UPGRADE)
        && h.get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        assert_eq!(
            target("/d/pi/8080/a/b"),
            Some(("pi".into(), 8080, Some("/a/b".into())))
        );
        assert_eq!(
            target("/d/pi/8080/"),
            Some(("pi".into(), 8080, Some("/".into())))
        );
        assert_eq!(target("/d/pi/8080"), Some(("pi".into(), 8080, None)));
        assert_eq!(target("/d/pi/0/"), None);
        assert_eq!(target("/d/Pi!/80/"), None);
        assert_eq!(target("/d/pi/x/"), None);
    }
}
