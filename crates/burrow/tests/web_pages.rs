//! The web console's pages under policy: label selectors on every page and door, the fleet's
//! health columns and filters, alerts, the admin page (approvals, tokens, policy edits), and
//! open sockets closed when the policy narrows.

mod common;
mod web_common;

use std::process::Stdio;

use common::*;
use web_common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_policy_health_filters_alerts_and_admin_pages() {
    let s = site().await;
    let get = |cookie: &str, path: &str| {
        let cookie = cookie.to_string();
        let path = path.to_string();
        async move { http(s.web, "GET", &path, &[("Cookie", &cookie)], "").await }
    };
    // lena's policy is a label selector: edge (site=osaka) only, on every page and door.
    let lena = session(&s, "lena").await;
    let (_, _, page) = get(&lena, "/").await;
    assert!(page.contains("data-device=\"edge\""), "{page}");
    assert!(!page.contains("data-device=\"pi\""), "{page}");
    assert_eq!(get(&lena, "/device/pi").await.0, 404);
    assert_eq!(get(&lena, "/console/pi/console").await.0, 404);
    assert_eq!(get(&lena, "/d/pi/8080/").await.0, 404);
    let (status, _, page) = get(&lena, "/device/edge").await;
    assert_eq!(status, 200);
    // The device page's health: what `device show` says.
    assert!(page.contains("id=\"health\""), "{page}");
    assert!(page.contains("<th>reconnects</th>"), "{page}");
    assert!(page.contains("site=osaka"), "{page}");

    // The fleet page's health columns and label and state filters.
    let alice = session(&s, "alice").await;
    let (_, _, page) = get(&alice, "/").await;
    assert!(
        page.contains("<th>Probe</th>") && page.contains("Reconn."),
        "{page}"
    );
    let (_, _, page) = get(&alice, "/?label=site%3Dosaka").await;
    assert!(page.contains("data-device=\"edge\""), "{page}");
    assert!(!page.contains("data-device=\"pi\""), "{page}");
    let (_, _, page) = get(&alice, "/?label=site%3Dos*").await;
    assert!(
        page.contains("data-device=\"edge\""),
        "a glob value: {page}"
    );
    let (_, _, page) = get(&alice, "/?label=site%3Dkyoto").await;
    assert!(!page.contains("data-device="), "{page}");
    let (_, _, page) = get(&alice, "/?label=nonsense").await;
    assert!(
        page.contains("class=\"error\"") && page.contains("no &#39;=&#39;"),
        "{page}"
    );
    let (_, _, page) = get(&alice, "/?state=offline").await;
    assert!(!page.contains("data-device=\"pi\""), "pi is online: {page}");

    // The audit with the CLI's filters (the same query): one device's entries, a bad time named.
    let (_, _, page) = get(&alice, "/audit?device=edge").await;
    assert!(page.contains("<td>edge</td>"), "{page}");
    assert!(
        !page.contains("<td>pi</td>"),
        "pi's entries under device=edge: {page}"
    );
    let (_, _, page) = get(&alice, "/audit?since=yesterday-ish").await;
    assert!(page.contains("class=\"error\">since:"), "{page}");

    // Alerts: the page, filtered like the rest by policy.
    let (status, _, page) = get(&alice, "/alerts").await;
    assert_eq!(status, 200);
    assert!(page.contains("<h1>Alerts</h1>"), "{page}");

    // Admin: refused to an operator, GET and POST alike, and audited.
    let (status, _, page) = get(&alice, "/admin").await;
    assert_eq!(status, 403);
    let origin = format!("http://{}", s.web);
    let csrf = csrf_of(&page);
    let (status, _, _) = http(
        s.web,
        "POST",
        "/admin/approve",
        &[("Cookie", &alice), ("Origin", &origin)],
        &format!("csrf={csrf}&name=pi"),
    )
    .await;
    assert_eq!(status, 403, "a non-admin approves nothing");

    // A device enrolled with an --approve token waits; adam approves it from the page.
    for _ in 0..400 {
        if !s
            .relay
            .relay
            .db()
            .relay_addresses()
            .await
            .unwrap()
            .is_empty()
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (ok, join, err) = s.relay.cli(&["token", "create", "--approve", "--reusable"]);
    assert!(ok, "{err}");
    let join = join.trim().to_string();
    let token_id = burrow_proto::join::JoinToken::decode(&join).unwrap().id;
    let dev_dir = s.dir.path().join("newpi");
    std::fs::create_dir_all(&dev_dir).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_burrow"))
        .args(["agent", "enroll", &join, "--name", "newpi", "--config"])
        .arg(dev_dir.join("agent.toml"))
        .arg("--key")
        .arg(dev_dir.join("id_ed25519"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let adam = session(&s, "adam").await;
    let (status, _, page) = get(&adam, "/admin").await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("<tr data-device=\"newpi\">"), "{page}");
    assert!(
        page.contains(&format!("<tr data-token=\"{token_id}\">")),
        "{page}"
    );
    let csrf = csrf_of(&page);
    let (status, _, _) = http(
        s.web,
        "POST",
        "/admin/approve",
        &[("Cookie", &adam), ("Origin", &origin)],
        "name=newpi",
    )
    .await;
    assert_eq!(status, 403, "no CSRF token, no approval");
    assert!(
        s.relay
            .relay
            .db()
            .devices()
            .await
            .unwrap()
            .iter()
            .any(|d| d.name == "newpi" && d.pending)
    );
    let (status, _, _) = http(
        s.web,
        "POST",
        "/admin/approve",
        &[("Cookie", &adam), ("Origin", &origin)],
        &format!("csrf={csrf}&name=newpi"),
    )
    .await;
    assert_eq!(status, 303);
    let devices = s.relay.relay.db().devices().await.unwrap();
    assert!(
        devices.iter().any(|d| d.name == "newpi" && !d.pending),
        "{devices:?}"
    );
    let (status, _, _) = http(
        s.web,
        "POST",
        "/admin/revoke",
        &[("Cookie", &adam), ("Origin", &origin)],
        &format!("csrf={csrf}&id={token_id}"),
    )
    .await;
    assert_eq!(status, 303);
    let tokens = s.relay.relay.db().tokens().await.unwrap();
    assert!(
        tokens
            .iter()
            .any(|t| t.id == token_id && t.revoked.is_some()),
        "{tokens:?}"
    );

    // A join token made on the page: its join string shown once, and it enrolls a device.
    let make = |body: &'static str| {
        let (adam, origin, csrf) = (adam.clone(), origin.clone(), csrf.clone());
        async move {
            http(
                s.web,
                "POST",
                "/admin/token",
                &[("Cookie", &adam), ("Origin", &origin)],
                &format!("csrf={csrf}&{body}"),
            )
            .await
        }
    };
    let (status, _, page) = make("names=cam%5B&uses=1&ttl=3600&labels=&approve=no").await;
    assert_eq!(status, 400, "a bad name pattern: {page}");
    let (status, _, page) =
        make("names=cam-*&uses=1&ttl=3600&labels=site%3Dosaka&approve=no").await;
    assert_eq!(status, 200, "{page}");
    let join = page
        .split("<pre id=\"join\">")
        .nth(1)
        .and_then(|r| r.split("</pre>").next())
        .expect("the join string on the page")
        .to_string();
    let made = burrow_proto::join::JoinToken::decode(&join).expect("a join string");
    let dev_dir = s.dir.path().join("cam-1");
    std::fs::create_dir_all(&dev_dir).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_burrow"))
        .args(["agent", "enroll", &join, "--name", "cam-1", "--config"])
        .arg(dev_dir.join("agent.toml"))
        .arg("--key")
        .arg(dev_dir.join("id_ed25519"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let devices = s.relay.relay.db().devices().await.unwrap();
    let cam = devices
        .iter()
        .find(|d| d.name == "cam-1")
        .expect("cam-1 enrolled");
    assert_eq!(cam.labels.get("site").map(String::as_str), Some("osaka"));
    assert!(!cam.pending);

    // Policy edits: checked whole (a bad selector changes nothing), then applied and audited.
    let set_lena = |allow: &'static str| {
        let (adam, origin, csrf) = (adam.clone(), origin.clone(), csrf.clone());
        async move {
            http(
                s.web,
                "POST",
                "/admin/operator",
                &[("Cookie", &adam), ("Origin", &origin)],
                &format!("csrf={csrf}&name=lena&allow={allow}&access=full&role=viewer"),
            )
            .await
        }
    };
    let (status, _, page) = set_lena("site%3Dkyoto+bad%5B").await;
    assert_eq!(status, 400, "{page}");
    let lena = s.relay.relay.db().operator("lena").await.unwrap().unwrap();
    assert_eq!(lena.allow, ["site=osaka"], "nothing changed");
    let (status, _, _) = set_lena("site%3Dkyoto+edge").await;
    assert_eq!(status, 303);
    let lena = s.relay.relay.db().operator("lena").await.unwrap().unwrap();
    assert_eq!(lena.allow, ["edge", "site=kyoto"]);
    assert_eq!(lena.role, burrow_relay::store::Role::Viewer);

    let audit = s.relay.audit_now(500).await;
    assert!(
        audit.iter().any(|r| r.event == "policy"
            && r.who == "adam"
            && r.target == "lena"
            && r.outcome == "ok"
            && r.detail.contains("role viewer")),
        "{audit:#?}"
    );
    let has = |event: &str, who: &str, outcome: &str, target: &str| {
        audit.iter().any(|r| {
            r.event == event && r.who == who && r.outcome == outcome && r.target.contains(target)
        })
    };
    assert!(has("approve", "adam", "ok", "newpi"), "{audit:#?}");
    assert!(has("token", "adam", "ok", &token_id), "{audit:#?}");
    assert!(has("token", "adam", "ok", &made.id), "{audit:#?}");
    assert!(has("web-view", "adam", "ok", "admin page"), "{audit:#?}");
    assert!(has("web-view", "lena", "ok", "edge"), "{audit:#?}");
    assert!(has("web-view", "alice", "ok", "alerts"), "{audit:#?}");
    assert!(has("web-change", "alice", "denied", "admin"), "{audit:#?}");
}

/// Open web connections are held to the policy as it is now, like SSH sessions: a console's
/// WebSocket closes when the operator's policy stops allowing the device, and a device UI's
/// WebSocket when the operator becomes a viewer; both audited as `revoke`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_sockets_close_when_the_policy_narrows() {
    let s = site().await;
    let origin = format!("http://{}", s.web);
    let ws = |cookie: String, path: &'static str| {
        let (web, origin) = (s.web, origin.clone());
        tokio::spawn(async move {
            let headers = [
                ("Cookie", cookie.as_str()),
                ("Origin", origin.as_str()),
                ("Upgrade", "websocket"),
                ("Connection", "Upgrade"),
                ("Sec-WebSocket-Version", "13"),
                ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ];
            // Returns when the relay closes the connection (or after WAIT).
            http(web, "GET", path, &headers, "").await
        })
    };
    let alice = session(&s, "alice").await;
    let console = ws(alice, "/console/pi/console/ws");
    let bob = session(&s, "bob").await;
    let device_ws = ws(bob, "/d/pi/8080/ws");
    eventually_async("both sockets open", || async {
        let audit = s.relay.audit_now(200).await;
        let console = audit
            .iter()
            .any(|r| r.event == "console-attach" && r.who == "alice" && r.outcome == "ok");
        let stream = audit
            .iter()
            .any(|r| r.event == "stream" && r.who == "bob" && r.outcome == "open");
        (console && stream).then_some(())
    })
    .await;
    let (ok, _, err) = s
        .relay
        .cli(&["operator", "set", "alice", "--allow", "edge*"]);
    assert!(ok, "{err}");
    let (ok, _, err) = s.relay.cli(&["operator", "set", "bob", "--role", "viewer"]);
    assert!(ok, "{err}");
    let (status, _, body) = console.await.unwrap();
    assert_eq!(status, 101);
    assert!(
        body.contains("closed: operator policy no longer allows device pi"),
        "the console's socket was not closed: {body:?}"
    );
    let (status, _, _) = device_ws.await.unwrap();
    assert_eq!(status, 101);
    let audit = s.relay.audit_now(300).await;
    assert!(
        audit
            .iter()
            .any(|r| r.event == "revoke" && r.who == "alice" && r.target == "pi/console"),
        "{audit:#?}"
    );
    let stream = audit
        .iter()
        .find(|r| r.event == "revoke" && r.who == "bob" && r.target == "pi:8080");
    assert!(
        stream.is_some_and(|r| r.detail.contains("may no longer open streams")),
        "the device UI's socket was not closed: {audit:#?}"
    );
}

/// The alerts page: the alerts the relay keeps, each operator seeing those of the devices its
/// policy allows (and the device page its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alerts_page_shows_the_alerts_of_devices_the_operator_may_see() {
    let dir = tempdir();
    let relay = TestRelay::start_with(&dir.path().join("relay"), "127.0.0.1:0", |c| {
        c.alerts.offline_grace = std::time::Duration::from_millis(300);
        c.alerts.poll = std::time::Duration::from_millis(100);
    })
    .await;
    let web = serve_web(&relay).await;
    let fp = relay.relay.fingerprint();
    let mut agents = Vec::new();
    for name in ["pi", "edge"] {
        let key = keypair(dir.path(), name);
        relay.add_device(name, &key);
        let agent = TestAgent::start(
            dir.path(),
            agent_config(&relay.addr.to_string(), name, &key, &fp),
        );
        agent.wait_up().await;
        agents.push(agent);
    }
    let mut cookies = Vec::new();
    for (name, allow) in [("olga", "edge*"), ("alice", "*")] {
        let key = keypair(dir.path(), name);
        relay.add_operator(name, &key, &[allow]);
        let config = ssh_config(dir.path(), &relay, name, &key);
        let (_, cookie) = redeem(web, &link(&config).await).await;
        cookies.push(cookie.expect("a session cookie"));
    }
    for agent in agents {
        agent.stop().await;
    }
    eventually_async("both devices' offline alerts", || async {
        let alerts = relay.relay.db().alerts(100, None).await.unwrap();
        let of = |d: &str| alerts.iter().any(|a| a.device.as_deref() == Some(d));
        (of("pi") && of("edge")).then_some(())
    })
    .await;
    let (status, _, olga) = http(web, "GET", "/alerts", &[("Cookie", &cookies[0])], "").await;
    assert_eq!(status, 200);
    assert!(olga.contains("<a href=\"/device/edge\">edge</a>"), "{olga}");
    assert!(!olga.contains("/device/pi"), "olga sees pi's alert: {olga}");
    let (_, _, alice) = http(web, "GET", "/alerts", &[("Cookie", &cookies[1])], "").await;
    assert!(
        alice.contains("/device/edge") && alice.contains("/device/pi"),
        "{alice}"
    );
    let (_, _, page) = http(web, "GET", "/device/edge", &[("Cookie", &cookies[0])], "").await;
    assert!(
        page.contains("<table class=\"alerts\">") && page.contains("device edge offline for"),
        "{page}"
    );
}
