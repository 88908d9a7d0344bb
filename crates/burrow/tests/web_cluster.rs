//! The web console of a cluster: logins in PostgreSQL (a link made on one relay works on
//! another, once; a session on every relay) and consoles another relay holds, from the browser's
//! socket.

mod common;
mod web_common;

use burrow_proto::agent_config::Console;
use common::*;
use web_common::*;

/// In a cluster every relay serves the same console: logins live in PostgreSQL, so a link
/// made on one relay logs in on another (once, cluster-wide), a session works on every relay,
/// logging out on one ends it on all, and each shows the same fleet; a console of a device
/// another relay holds is used from the browser through the peer link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_relay_of_a_cluster_serves_the_same_console() {
    let dir = tempdir();
    let pg = TestPostgres::start().await;
    let r1 = cluster_relay(dir.path(), &pg, "r1").await;
    let r2 = cluster_relay(dir.path(), &pg, "r2").await;
    let (web1, web2) = (serve_web(&r1).await, serve_web(&r2).await);
    let pi_key = keypair(dir.path(), "pi");
    let alice_key = keypair(dir.path(), "alice");
    let db = r1.relay.db();
    db.add_device("pi", &[public_key(&pi_key)]).await.unwrap();
    db.add_operator(
        "alice",
        &[public_key(&alice_key)],
        None,
        &["*".into()],
        false,
    )
    .await
    .unwrap();
    let router = FakeRouter::start(&dir.path().join("ttyUSB0"));
    let mut config = agent_config(&r1.addr.to_string(), "pi", &pi_key, &r1.relay.fingerprint());
    config
        .console
        .push(Console::new("console", router.path.clone(), 9600));
    let agent = TestAgent::start(dir.path(), config);
    agent.wait_up().await;

    let config = ssh_config(dir.path(), &r1, "alice", &alice_key);
    let link = link(&config).await;
    assert!(link.starts_with(&format!("http://{web1}/")), "{link}");
    // Redeemed on the other relay.
    let (status, cookie) = redeem(web2, &link).await;
    assert_eq!(status, 303, "a link made on r1 works on r2");
    let cookie = cookie.unwrap();
    let (again, _) = redeem(web1, &link).await;
    assert_eq!(again, 403, "and only once, cluster-wide");

    // The same session and the same fleet on both (pi held by r1, its state from the
    // registry, its console listed on r2 too).
    let mut csrf = String::new();
    for web in [web1, web2] {
        let page = eventually_async(
            "pi online with its console on both relays' fleet pages",
            || {
                let cookie = cookie.clone();
                async move {
                    let (status, _, page) = http(web, "GET", "/", &[("Cookie", &cookie)], "").await;
                    assert_eq!(status, 200, "{page}");
                    (page.contains("<tr data-device=\"pi\">")
                        && page.contains("state-online")
                        && page.contains("<td>r1</td>")
                        && page.contains("href=\"/console/pi/console\""))
                    .then_some(page)
                }
            },
        )
        .await;
        csrf = csrf_of(&page);
    }
    // pi's console from r2's web console: carried to r1, which holds it.
    let mut ws = ws_open(web2, "/console/pi/console/ws", &cookie).await;
    ws_until(&mut ws, "connected to pi/console").await;
    ws_send(&mut ws, r#"{"t":"in","d":"show version\r"}"#).await;
    ws_until(&mut ws, "Router# got show version").await;
    eventually("the router to get the line", || {
        String::from_utf8_lossy(&router.received())
            .contains("show version")
            .then_some(())
    })
    .await;
    drop(ws);

    // Logged out on r2: gone on r1 too.
    let origin = format!("http://{web2}");
    let (status, _, _) = http(
        web2,
        "POST",
        "/logout",
        &[("Cookie", &cookie), ("Origin", &origin)],
        &format!("csrf={csrf}"),
    )
    .await;
    assert_eq!(status, 303);
    let (status, _, _) = http(web1, "GET", "/", &[("Cookie", &cookie)], "").await;
    assert_eq!(status, 303, "logged out on every relay");
    agent.stop().await;
}
