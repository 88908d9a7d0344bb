//! Host routing (`--web-device-domain DOMAIN`): `PORT--NAME.DOMAIN` is device `NAME`'s web
//! UI on `PORT`, on an origin of its own. One DNS label, so one wildcard certificate covers
//! every device. The login is handed over from the console's host by a code for that host
//! alone (30 s, once) and kept in a host-only cookie good there only.

use std::sync::Arc;

use burrow_proto::name::is_valid_name;
use hyper::StatusCode;
use hyper::header;

use super::Web;
use super::http::{Req, Resp, redirect, text};
use super::proxy::{forward, may_reach};
use super::routes::Who;
use crate::audit::Outcome;

/// `PORT--NAME` as the first label of `host` under `domain` (host routing).
pub(crate) fn device_host(host: &str, domain: &str) -> Option<(String, u16)> {
    let host = host.rsplit_once(':').map_or(host, |(h, p)| {
        if p.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    let label = host
        .strip_suffix(domain)?
        .strip_suffix('.')
        .filter(|l| !l.contains('.'))?;
    let (port, name) = label.split_once("--")?;
    let port: u16 = port.parse().ok().filter(|p| *p > 0)?;
    is_valid_name(name).then(|| (name.to_string(), port))
}

/// `/d-auth?host=PORT--NAME&next=PATH` on the console's host: a device host asks for the
/// operator's login; the answer is a code for that host alone, used once within 30 s.
pub(crate) async fn authorize(web: &Web, who: &Who, query: &[(String, String)]) -> Resp {
    let (Some(domain), Some(host)) = (
        web.config.device_domain.as_deref(),
        super::auth::field(query, "host"),
    ) else {
        return text(StatusCode::NOT_FOUND, "host routing is off\n");
    };
    let full = format!("{host}.{domain}");
    let Some((device, port)) = device_host(&full, domain) else {
        return text(StatusCode::BAD_REQUEST, "not a device host\n");
    };
    if let Err((status, why)) = may_reach(web, who, &device).await {
        web.relay.audit.record(
            "stream",
            who.name(),
            &format!("{device}:{port}"),
            Outcome::Denied,
            &format!("web from {}: {why}", who.site.client),
        );
        return text(status, format!("{why}\n"));
    }
    let next = super::auth::field(query, "next")
        .filter(|n| n.starts_with('/') && !n.starts_with("//"))
        .unwrap_or("/");
    let code = match web.host_codes.create(who.name(), &device, port).await {
        Ok(c) => c,
        Err(e) => return text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
    };
    let scheme = if who.site.secure { "https" } else { "http" };
    let port_part = who
        .site
        .origin
        .rsplit_once(':')
        .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
        .map(|(_, p)| format!(":{p}"))
        .unwrap_or_default();
    redirect(&format!(
        "{scheme}://{full}{port_part}/_burrow/auth?code={code}&next={}",
        super::html::url_part(next)
    ))
}

/// A request to a device's own host (`PORT--NAME.DOMAIN`): its login handed over from the
/// console's host, then the device's UI at the root.
pub(crate) async fn host_request(
    web: &Arc<Web>,
    req: Req,
    site: super::site::Site,
    device: String,
    port: u16,
) -> Resp {
    let query = super::auth::parse_form(req.uri().query().unwrap_or("").as_bytes());
    if req.uri().path() == "/_burrow/auth" {
        let code = super::auth::field(&query, "code").unwrap_or("");
        let Some(operator) = web.host_codes.redeem(code, &device, port).await else {
            return text(
                StatusCode::FORBIDDEN,
                "this login code was used already or has expired; open the device again\n",
            );
        };
        let next = super::auth::field(&query, "next")
            .filter(|n| n.starts_with('/') && !n.starts_with("//"))
            .unwrap_or("/");
        let id = match web.sessions.start_scoped(&operator, &device, port).await {
            Ok(id) => id,
            Err(e) => return text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
        };
        let mut r = redirect(next);
        r.headers_mut().insert(
            header::SET_COOKIE,
            web.sessions.set_device_cookie(&id, site.secure),
        );
        return r;
    }
    let Some((id, session)) = web.sessions.get_scoped(req.headers(), &device, port).await else {
        let path = req
            .uri()
            .path_and_query()
            .map_or("/".to_string(), |p| p.to_string());
        return redirect(&format!(
            "{}/d-auth?host={}&next={}",
            web.base,
            super::html::url_part(&format!("{port}--{device}")),
            super::html::url_part(&path)
        ));
    };
    // Policy as it is now, as on the console's host.
    let record = match web.relay.db.operator(&session.operator).await {
        Ok(Some(r)) => r,
        _ => {
            web.sessions.end(&id).await;
            return text(StatusCode::FORBIDDEN, "log in again\n");
        }
    };
    let who = Who {
        id,
        session,
        record,
        site,
    };
    let tail = req.uri().path().to_string();
    forward(web, &who, req, &device, port, tail, "").await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_hosts_parse() {
        let d = "relay.example";
        assert_eq!(
            device_host("8080--pi.relay.example", d),
            Some(("pi".into(), 8080))
        );
        assert_eq!(
            device_host("80--garage-pi.relay.example:8443", d),
            Some(("garage-pi".into(), 80))
        );
        assert_eq!(device_host("relay.example", d), None);
        assert_eq!(
            device_host("x.8080--pi.relay.example", d),
            None,
            "one label only"
        );
        assert_eq!(device_host("8080--pi.evil-relay.example", d), None);
        assert_eq!(device_host("pi.relay.example", d), None);
        assert_eq!(device_host("0--pi.relay.example", d), None);
    }
}
