//! Health at a glance: a real agent process reports its link (ModemManager through a stand-in
//! `mmcli`, or its absence), the relay times its probes and records how each session ended,
//! and `device ls`, `device show` and the metrics show it.

mod common;
mod fleet_common;

use common::*;
use fleet_common::*;

/// What the relay's registry says about `name` now.
async fn detail(relay: &TestRelay, name: &str) -> burrow_relay::store::health::DeviceDetail {
    relay.relay.db().device_detail(name).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_agent_reports_its_link_and_the_relay_shows_it() {
    let dir = tempdir();
    let relay = TestRelay::start(&dir.path().join("relay")).await;
    let key = keypair(dir.path(), "dev");
    let key2 = keypair(dir.path(), "dev2");
    relay.add_device("pi", &key);
    relay.add_device("pi2", &key2);
    let bin = fake_mmcli(dir.path(), -97.0);
    let fast = "keepalive_interval = 0.5\nhealth_interval = 0.3\nhealth_refresh = 3600\nprobe_interval = 0.5\n";
    let addr = relay.addr.to_string();
    let fp = relay.relay.fingerprint();
    let agent = AgentProcess::start(dir.path(), &addr, &fp, "pi", &key, fast, &path_with(&bin));
    // A device without ModemManager: no mmcli anywhere on its PATH.
    let empty = dir.path().join("empty-bin");
    std::fs::create_dir(&empty).unwrap();
    let _agent2 = AgentProcess::start(
        dir.path(),
        &addr,
        &fp,
        "pi2",
        &key2,
        fast,
        empty.to_str().unwrap(),
    );

    // The report reaches the relay, whole.
    let mut d = None;
    for _ in 0..400 {
        let now = detail(&relay, "pi").await;
        if now.report.is_some() && now.device.health.probe.is_some() {
            d = Some(now);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let d = d.expect("a report and a probe from pi");
    let report = d.report.clone().unwrap();
    let m = &report.modem;
    assert_eq!(m.mm, burrow_proto::health::ModemManager::Present);
    assert_eq!(m.state.as_deref(), Some("connected"));
    assert_eq!(m.tech.as_deref(), Some("lte"));
    assert_eq!(m.operator.as_deref(), Some("NTT DOCOMO"));
    assert_eq!(m.quality, Some(67));
    assert_eq!(
        (m.rssi, m.rsrp, m.rsrq, m.snr),
        (Some(-65.0), Some(-97.0), Some(-10.0), Some(12.2))
    );
    assert_eq!((m.rx, m.tx), (Some(123_456_789), Some(2_345_678)));
    assert!(report.disk_total.is_some_and(|t| t > 0), "{report:?}");
    assert!(report.uptime_s.is_some_and(|u| u > 0), "{report:?}");
    let h = &d.device.health;
    assert!(
        h.agent.as_deref().is_some_and(|a| a.starts_with("burrow_")),
        "{h:?}"
    );
    assert_eq!(h.link.as_deref(), Some("lte -97 dBm"));
    assert_eq!(h.signal_dbm, Some(-97));
    let probe = h.probe.clone().unwrap();
    assert!(
        probe.ok && probe.rtt_ms.is_some(),
        "{probe:?}: {:?}",
        d.probe_error
    );
    assert!(d.device.online && h.since.is_some());

    // The device without ModemManager says so.
    let d2 = eventually_async("pi2's report", || async {
        detail(&relay, "pi2").await.report
    })
    .await;
    assert_eq!(d2.modem.mm, burrow_proto::health::ModemManager::Absent);
    assert!(
        d2.modem
            .why
            .as_deref()
            .is_some_and(|w| w.contains("not installed")),
        "{d2:?}"
    );

    // A clear change of signal is sent; a wobble is not, however many readings see it.
    set_rsrp(&bin, -115.0);
    eventually_async("the new signal at the relay", || async {
        (detail(&relay, "pi").await.device.health.signal_dbm == Some(-115)).then_some(())
    })
    .await;
    let sent = agent.status().unwrap().health_reports;
    set_rsrp(&bin, -112.0);
    let readings = |bin: &std::path::Path| {
        mmcli_calls(bin)
            .iter()
            .filter(|c| c.starts_with("-L"))
            .count()
    };
    let before = readings(&bin);
    // Past the gap a change needs (six readings), with room.
    eventually("a dozen more readings", || {
        (readings(&bin) >= before + 12).then_some(())
    })
    .await;
    assert_eq!(agent.status().unwrap().health_reports, sent);
    assert_eq!(
        detail(&relay, "pi").await.device.health.signal_dbm,
        Some(-115)
    );
    // Many readings, few reports: the first, and the change.
    assert!(sent <= 3, "{sent} reports for {} readings", readings(&bin));
    // ModemManager was asked once to measure the extended signal, and refused (unprivileged).
    let setups = mmcli_calls(&bin)
        .iter()
        .filter(|c| c.contains("--signal-setup"))
        .count();
    assert_eq!(setups, 1);

    // The listings: `device ls`, `device show`, JSON and the metrics.
    let (ok, out, err) = relay.cli(&["device", "ls"]);
    assert!(ok, "{err}");
    let line = out.lines().find(|l| l.starts_with("pi ")).unwrap();
    assert!(line.contains("online"), "{out}");
    assert!(line.contains("lte -115 dBm"), "{out}");
    assert!(line.contains("burrow_"), "{out}");
    assert!(line.contains("ok "), "{out}");
    let line2 = out.lines().find(|l| l.starts_with("pi2 ")).unwrap();
    assert!(line2.contains("no ModemManager"), "{out}");
    let (ok, out, err) = relay.cli(&["device", "show", "pi"]);
    assert!(ok, "{err}");
    for needle in [
        "NTT DOCOMO",
        "RSRP -115 dBm",
        "123.5 MB received",
        "reconnects",
        "recent events",
    ] {
        assert!(out.contains(needle), "{needle:?} in:\n{out}");
    }
    let listing = cli_json(&relay, &["device", "ls"]);
    let pi = listing
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "pi")
        .unwrap();
    assert_eq!(pi["health"]["link"], "lte -115 dBm");
    assert_eq!(pi["health"]["probe"]["ok"], true);
    let shown = cli_json(&relay, &["device", "show", "pi"]);
    assert_eq!(shown["report"]["modem"]["operator"], "NTT DOCOMO");
    assert!(
        shown["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["event"] == "online")
    );
    let page = relay.relay.metrics_page().await;
    for needle in [
        "burrow_device_online{device=\"pi\"} 1",
        "burrow_device_signal_dbm{device=\"pi\"} -115",
        "burrow_device_online{device=\"pi2\"} 1",
        "burrow_device_probe_rtt_seconds{device=\"pi\"}",
        "burrow_device_reconnects_24h{device=\"pi\"} 0",
    ] {
        assert!(page.contains(needle), "{needle} in:\n{page}");
    }
    // The only label of the per-device families is the device.
    for line in page.lines().filter(|l| l.starts_with("burrow_device_")) {
        let labels = &line[line.find('{').unwrap()..line.find('}').unwrap()];
        assert!(!labels.contains(','), "{line}");
    }
}

/// The device's health once everything queued so far is stored (the relay commits session
/// records in batches, within milliseconds of the session's start).
async fn health(relay: &TestRelay) -> burrow_relay::store::health::DeviceHealth {
    relay.relay.db().flush().await;
    relay.relay.db().devices().await.unwrap()[0].health.clone()
}

/// Waits until the device is offline and its last session ended for `reason`.
async fn wait_reason(relay: &TestRelay, reason: &str) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let d = relay.relay.db().devices().await.unwrap().remove(0);
        if !d.online && d.health.reason.as_deref() == Some(reason) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for reason {reason}: {d:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_way_a_session_ends_is_recorded_and_reconnects_counted() {
    let dir = tempdir();
    let data = dir.path().join("relay");
    let relay = TestRelay::start(&data).await;
    let key = keypair(dir.path(), "dev");
    let spare = keypair(dir.path(), "spare");
    relay.add_device("pi", &key);
    relay
        .relay
        .store()
        .add_device_keys("pi", &[public_key(&spare)])
        .unwrap();
    let addr = relay.addr.to_string();
    let fp = relay.relay.fingerprint();
    let path = std::env::var("PATH").unwrap();
    let quick = "keepalive_interval = 0.3\nkeepalive_timeout = 0.3\nhealth_interval = 0\nprobe_interval = 0\n";
    let start = |key: &std::path::Path| {
        AgentProcess::start(dir.path(), &addr, &fp, "pi", key, quick, &path)
    };

    // The agent stops: it says goodbye.
    let agent = start(&key);
    relay.wait_online("pi").await;
    assert_eq!(
        health(&relay).await.reconnects_24h,
        0,
        "a first session is no reconnect"
    );
    agent.end("TERM");
    wait_reason(&relay, "clean").await;

    // Killed: the kernel closes the connection, nobody says goodbye.
    let agent = start(&key);
    relay.wait_online("pi").await;
    assert_eq!(health(&relay).await.reconnects_24h, 1);
    agent.end("KILL");
    wait_reason(&relay, "reset").await;
    let (ok, out, err) = relay.cli(&["device", "ls"]);
    assert!(ok, "{err}");
    assert!(out.contains("offline (reset)"), "{out}");

    // Frozen: the relay hears nothing past the declared keepalive schedule.
    let agent = start(&key);
    relay.wait_online("pi").await;
    assert_eq!(health(&relay).await.reconnects_24h, 2);
    agent.signal("STOP");
    wait_reason(&relay, "keepalive-timeout").await;
    agent.end("KILL");

    // Its key removed while online.
    let agent = start(&key);
    relay.wait_online("pi").await;
    let fingerprint = burrow_io::keys::fingerprint(&public_key(&key));
    let (ok, _, err) = relay.cli(&["device", "rm-key", "pi", &fingerprint]);
    assert!(ok, "{err}");
    wait_reason(&relay, "revoked").await;
    agent.end("KILL");

    // The relay stops under it.
    let _agent = start(&spare);
    relay.wait_online("pi").await;
    assert_eq!(health(&relay).await.reconnects_24h, 4);
    relay.stop().await;
    let store =
        burrow_relay::store::Store::open(&data.join(burrow_relay::datadir::DATABASE_FILE)).unwrap();
    let d = &store.devices().unwrap()[0];
    assert_eq!(d.health.reason.as_deref(), Some("relay-stopped"), "{d:?}");

    // The audit says the same, with issue 23's outcomes: faults are `interrupted`.
    let offline: Vec<_> = store
        .audit_tail(200)
        .unwrap()
        .into_iter()
        .filter(|r| r.event == "offline")
        .map(|r| (r.outcome, r.detail))
        .collect();
    let outcome_of = |reason: &str| {
        offline
            .iter()
            .find(|(_, detail)| detail.contains(&format!(": {reason}: ")))
            .map(|(o, _)| o.clone())
            .unwrap_or_else(|| panic!("no offline entry for {reason}: {offline:#?}"))
    };
    assert_eq!(outcome_of("clean"), "ok");
    assert_eq!(outcome_of("reset"), "interrupted");
    assert_eq!(outcome_of("keepalive-timeout"), "interrupted");
    assert_eq!(outcome_of("revoked"), "ok");
    assert_eq!(outcome_of("relay-stopped"), "interrupted");
}
