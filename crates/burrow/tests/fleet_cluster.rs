//! Health and alerts in a cluster on a throwaway PostgreSQL: what a device's agent reports to
//! one relay is seen from every relay, and one relay sends each alert, not every relay, also
//! after the relay sending them is stopped.

mod common;
mod fleet_common;

use std::time::Duration;

use common::*;
use fleet_common::*;
use tokio::net::TcpListener;

/// A relay of a cluster on `pg` posting alerts to `hook`, with its peer port on loopback.
async fn alerting_relay(
    dir: &std::path::Path,
    pg: &TestPostgres,
    id: &str,
    hook: &str,
) -> TestRelay {
    let peer = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let url = pg.url.clone();
    let webhook =
        burrow_relay::alerts::Webhook::new(hook, burrow_relay::alerts::Format::Json, vec![])
            .unwrap();
    let relay = TestRelay::start_with(&dir.join(id), "127.0.0.1:0", |c| {
        c.database = Some(url);
        c.relay_id = id.to_string();
        c.peer_advertise = Some(peer_addr.to_string());
        c.alerts.webhooks = vec![webhook];
        c.alerts.offline_grace = Duration::from_secs(3);
        c.alerts.poll = Duration::from_millis(200);
    })
    .await;
    tokio::spawn(
        relay
            .relay
            .clone()
            .serve_peers(peer, relay.shutdown.clone()),
    );
    relay
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_cluster_health_is_seen_everywhere_and_one_relay_sends_each_alert() {
    let dir = tempdir();
    let pg = TestPostgres::start().await;
    let receiver = Receiver::start().await;
    // A slow receiver: an alert stays undelivered for a second while it is posted, long
    // enough for any other relay that would post it too to do so.
    receiver.set_delay(Duration::from_secs(1));
    let hook = receiver.url("/hook");
    let mut relays = vec![
        alerting_relay(dir.path(), &pg, "r1", &hook).await,
        alerting_relay(dir.path(), &pg, "r2", &hook).await,
        alerting_relay(dir.path(), &pg, "r3", &hook).await,
    ];
    let key = keypair(dir.path(), "dev");
    relays[0]
        .relay
        .db()
        .add_device("pi", &[public_key(&key)])
        .await
        .unwrap();
    // The agent knows every relay (each has a host key of its own) and holds one session.
    let addrs: Vec<String> = relays.iter().map(|r| r.addr.to_string()).collect();
    let pins: Vec<String> = relays.iter().map(|r| r.relay.fingerprint()).collect();
    let bin = fake_mmcli(dir.path(), -101.0);
    let start = || {
        AgentProcess::start(
            dir.path(),
            &addrs.join(","),
            &pins.join(","),
            "pi",
            &key,
            "keepalive_interval = 0.5\nhealth_interval = 0.3\nprobe_interval = 0.5\n",
            &path_with(&bin),
        )
    };
    let agent = start();

    // The report and the probe, written by the relay holding the session, read from another.
    let other = &relays[2];
    let detail = eventually_async("pi's report seen from r3", || async {
        let d = other.relay.db().device_detail("pi").await.ok()?;
        (d.report.is_some() && d.device.health.probe.is_some()).then_some(d)
    })
    .await;
    assert!(detail.device.online);
    assert!(detail.device.relay.is_some());
    assert_eq!(detail.device.health.link.as_deref(), Some("lte -101 dBm"));
    assert!(detail.device.health.probe.as_ref().unwrap().ok);
    assert!(
        detail
            .device
            .health
            .agent
            .as_deref()
            .is_some_and(|a| a.starts_with("burrow_"))
    );

    // Dark past the grace, then back: one alert each, from one relay of three.
    agent.end("KILL");
    eventually("the offline alert", || {
        receiver
            .kinds()
            .contains(&"device-offline".to_string())
            .then_some(())
    })
    .await;
    let agent = start();
    eventually("the online alert", || {
        receiver
            .kinds()
            .contains(&"device-online".to_string())
            .then_some(())
    })
    .await;
    let leader = receiver.alerts()[0]["relay"].as_str().unwrap().to_string();

    // The relay sending alerts stops; another takes the lead, and nothing comes twice.
    let i = relays
        .iter()
        .position(|r| r.relay.db().postgres_url().is_some() && leader == relay_id(r))
        .unwrap();
    relays.remove(i).stop().await;
    // The agent, if it was on the stopped relay, is back on another within the grace.
    eventually_async("pi online again", || async {
        let d = relays[0].relay.db().device_detail("pi").await.ok()?;
        d.device.online.then_some(())
    })
    .await;
    agent.end("KILL");
    eventually("the second offline alert", || {
        (receiver
            .kinds()
            .iter()
            .filter(|k| *k == "device-offline")
            .count()
            >= 2)
            .then_some(())
    })
    .await;
    let alerts = receiver.alerts();
    assert_eq!(
        receiver.kinds(),
        vec!["device-offline", "device-online", "device-offline"],
        "{alerts:#?}"
    );
    let mut ids: Vec<i64> = alerts.iter().map(|a| a["id"].as_i64().unwrap()).collect();
    ids.dedup();
    assert_eq!(ids.len(), 3);
    assert_ne!(alerts[2]["relay"], leader.as_str(), "a new relay leads");

    // Any relay (or the CLI on the database) lists them, delivered.
    let kept = relays[0].relay.db().alerts(10, None).await.unwrap();
    assert_eq!(kept.len(), 3);
    assert!(
        kept.iter()
            .all(|a| a.deliveries.len() == 1 && a.deliveries[0].state == "delivered"),
        "{kept:#?}"
    );
}

fn relay_id(relay: &TestRelay) -> String {
    relay
        .data_dir
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_string()
}
