//! Alerts against real processes and a real HTTP receiver: a relay process configured by its
//! config file raises a device going dark past its grace, its return, and flapping (once,
//! damped), in burrow's JSON and in Alertmanager's format; a receiver that is down for a while
//! gets every alert once it is back, after retries that back off; a bad config file or URL is
//! refused with the line or the flag that is wrong.

mod common;
mod fleet_common;

use std::process::Command;
use std::time::Duration;

use common::*;
use fleet_common::*;

fn burrow(args: &[&str], data: &std::path::Path) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_burrow"))
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// A relay data directory with devices `names` (keys `dir/<name>`), and its fingerprint.
fn registry(dir: &std::path::Path, data: &std::path::Path, names: &[&str]) -> String {
    let (ok, _, err) = burrow(&["relay", "init"], data);
    assert!(ok, "{err}");
    for name in names {
        let key = keypair(dir, name);
        let (ok, _, err) = burrow(
            &[
                "relay",
                "device",
                "add",
                name,
                "--pubkey",
                &format!("{}.pub", key.display()),
            ],
            data,
        );
        assert!(ok, "{err}");
    }
    let (ok, out, err) = burrow(&["relay", "fingerprint"], data);
    assert!(ok, "{err}");
    out.trim().to_string()
}

/// Waits until the receiver holds `n` alerts of `kind`.
async fn wait_kind(receiver: &Receiver, kind: &str, n: usize) {
    eventually(&format!("{n} {kind} alerts"), || {
        (receiver.kinds().iter().filter(|k| *k == kind).count() >= n).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_dark_past_its_grace_is_alerted_once_and_its_return_resolves_it() {
    let dir = tempdir();
    let data = dir.path().join("relay");
    let fp = registry(dir.path(), &data, &["pi", "pi2"]);
    let receiver = Receiver::start().await;
    let config = dir.path().join("relay.toml");
    std::fs::write(
        &config,
        format!(
            r#"[alerts]
offline_grace = 5
flapping_reconnects = 4
flapping_window = 600
flapping_damping = 3600

[[alert]]
url = "{json}"

[[alert]]
url = "{am}"
format = "alertmanager"
events = ["device-offline", "device-online"]
"#,
            json = receiver.url("/hook"),
            am = receiver.url("/api/v2/alerts"),
        ),
    )
    .unwrap();
    let (_relay, port, log) = relay_process(&data, &["--config", config.to_str().unwrap()]);
    let addr = format!("127.0.0.1:{port}");
    let path = std::env::var("PATH").unwrap();
    let quick = "keepalive_interval = 0.5\nhealth_interval = 0\nprobe_interval = 0\n";
    let start = |name: &str| {
        AgentProcess::start(
            dir.path(),
            &addr,
            &fp,
            name,
            &dir.path().join(name),
            quick,
            &path,
        )
    };
    // Up: the agent's own status says its session is.
    let up = |agent: &AgentProcess| {
        agent
            .status()
            .filter(|s| s.state == burrow_agent::status::State::Up)
            .map(|_| ())
    };
    let pi2 = start("pi2");
    eventually("pi2 up", || up(&pi2)).await;

    // A restart within the grace raises nothing.
    let pi = start("pi");
    eventually("pi up", || up(&pi)).await;
    pi.end("KILL");
    let pi = start("pi");
    eventually("pi up", || up(&pi)).await;

    // Dark past the grace: alerted, in both formats; back: the return is alerted and the
    // Alertmanager alert resolved.
    pi.end("KILL");
    wait_kind(&receiver, "device-offline", 1).await;
    let pi = start("pi");
    wait_kind(&receiver, "device-online", 1).await;
    let alerts = receiver.alerts();
    let offline = &alerts[0];
    assert_eq!(offline["device"], "pi");
    assert_eq!(offline["status"], "firing");
    assert_eq!(offline["severity"], "warning");
    assert!(
        offline["summary"]
            .as_str()
            .unwrap()
            .contains("device pi offline for"),
        "{offline}"
    );
    assert_eq!(alerts[1]["status"], "resolved");
    assert!(
        alerts[1]["summary"]
            .as_str()
            .unwrap()
            .contains("back online"),
        "{}",
        alerts[1]
    );
    // Each receiver is sent to on its own: the Alertmanager's resolution may come after the
    // JSON hook's return.
    let to_alertmanager = || -> Vec<serde_json::Value> {
        receiver
            .posts()
            .into_iter()
            .filter(|p| p.path == "/api/v2/alerts")
            .flat_map(|p| p.body.as_array().cloned().unwrap())
            .collect()
    };
    eventually("the Alertmanager alert resolved", || {
        (to_alertmanager().len() >= 2).then_some(())
    })
    .await;
    let am = to_alertmanager();
    assert_eq!(am.len(), 2, "{am:#?}");
    assert_eq!(am[0]["labels"]["alertname"], "BurrowDeviceOffline");
    assert_eq!(am[0]["labels"]["device"], "pi");
    assert_eq!(
        am[0]["labels"], am[1]["labels"],
        "the return resolves the same alert"
    );
    assert!(am[0]["endsAt"].as_str() > am[0]["startsAt"].as_str());
    assert!(
        am[1]["endsAt"].as_str()
            <= Some(burrow_proto::time::format_rfc3339(burrow_relay::store::now()).as_str())
    );

    // Flapping: reconnects past the threshold are alerted once; more of them are damped.
    pi.end("KILL");
    for _ in 0..3 {
        let again = start("pi");
        eventually("pi up", || up(&again)).await;
        again.end("KILL");
    }
    let last = start("pi");
    eventually("pi up", || up(&last)).await;
    wait_kind(&receiver, "flapping", 1).await;
    // Something later than all of that: pi2 goes dark, so every entry before was read.
    pi2.end("KILL");
    eventually("pi2's offline alert", || {
        receiver
            .alerts()
            .iter()
            .any(|a| a["kind"] == "device-offline" && a["device"] == "pi2")
            .then_some(())
    })
    .await;
    let kinds: Vec<(String, String)> = receiver
        .alerts()
        .iter()
        .map(|a| {
            (
                a["kind"].as_str().unwrap().to_string(),
                a["device"].as_str().unwrap_or("-").to_string(),
            )
        })
        .collect();
    let count = |kind: &str, device: &str| {
        kinds
            .iter()
            .filter(|(k, d)| k == kind && d == device)
            .count()
    };
    assert_eq!(count("flapping", "pi"), 1, "{kinds:?}");
    // Its last restarts were brief offline spells: none is alerted past the first.
    assert_eq!(count("device-offline", "pi"), 1, "{kinds:?}");
    assert_eq!(count("device-online", "pi"), 1, "{kinds:?}");

    // The relay keeps them, delivered, and says so.
    let (ok, out, err) = burrow(&["relay", "alerts", "--json"], &data);
    assert!(ok, "{err}");
    let kept: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(kept.len(), kinds.len(), "{out}");
    let first = &kept[0];
    assert_eq!(first["kind"], "device-offline");
    assert_eq!(first["deliveries"].as_array().unwrap().len(), 2, "{first}");
    for d in first["deliveries"].as_array().unwrap() {
        assert_eq!(d["state"], "delivered", "{first}");
        assert_eq!(d["attempts"], 1, "{first}");
        assert!(!d["target"].as_str().unwrap().contains("/hook"), "{d}");
    }
    let (ok, out, err) = burrow(&["relay", "alerts"], &data);
    assert!(ok, "{err}");
    assert!(
        out.contains("device-offline") && out.contains("delivered"),
        "{out}"
    );
    let (ok, out, _) = burrow(&["relay", "device", "show", "pi"], &data);
    assert!(ok && out.contains("flapping"), "{out}");
    assert!(
        log.lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("alerts go to http://127.0.0.1")),
        "the relay says where alerts go"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_down_for_a_while_gets_every_alert_once_it_is_back() {
    let dir = tempdir();
    let port = free_port();
    let hook = format!("http://127.0.0.1:{port}/hook");
    let relay = TestRelay::start_with(&dir.path().join("relay"), "127.0.0.1:0", |c| {
        let a = &mut c.alerts;
        a.webhooks = vec![
            burrow_relay::alerts::Webhook::new(&hook, burrow_relay::alerts::Format::Json, vec![])
                .unwrap(),
        ];
        a.offline_grace = Duration::from_millis(500);
        a.retry_first = Duration::from_millis(100);
        a.retry_max = Duration::from_secs(2);
        a.poll = Duration::from_millis(100);
    })
    .await;
    let key = keypair(dir.path(), "pi");
    relay.add_device("pi", &key);
    let addr = relay.addr.to_string();
    let fp = relay.relay.fingerprint();
    let path = std::env::var("PATH").unwrap();
    let quick = "keepalive_interval = 0.5\nhealth_interval = 0\nprobe_interval = 0\n";
    let start = || AgentProcess::start(dir.path(), &addr, &fp, "pi", &key, quick, &path);

    // Three alerts while nothing listens at the webhook's address.
    let agent = start();
    relay.wait_online("pi").await;
    agent.end("KILL");
    let alerts = |relay: &TestRelay| {
        let db = relay.relay.db().clone();
        async move { db.alerts(100, None).await.unwrap() }
    };
    eventually_async("the offline alert", || async {
        (alerts(&relay).await.len() == 1).then_some(())
    })
    .await;
    let agent = start();
    relay.wait_online("pi").await;
    agent.end("KILL");
    eventually_async("three alerts", || async {
        (alerts(&relay).await.len() == 3).then_some(())
    })
    .await;
    // Down for a few seconds: a post every 100 ms would be 40 tries; pauses doubling from
    // 100 ms up to 2 s make a handful (and a loaded machine only fewer).
    tokio::time::sleep(Duration::from_secs(4)).await;
    let before = alerts(&relay).await;
    let tries = before[0].deliveries[0].attempts;
    assert!((2..=9).contains(&tries), "{tries} tries: {before:#?}");
    assert!(before.iter().all(|a| a.deliveries[0].state == "pending"));
    assert!(
        before[0].deliveries[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("cannot connect")),
        "{before:#?}"
    );

    // Back, at first answering 503 twice: everything arrives, in order, once.
    let receiver = Receiver::start_on(&format!("127.0.0.1:{port}")).await;
    receiver.fail_next(2);
    eventually("all three delivered", || {
        (receiver.alerts().len() >= 3).then_some(())
    })
    .await;
    let got = receiver.alerts();
    let ids: Vec<i64> = got.iter().map(|a| a["id"].as_i64().unwrap()).collect();
    let kept: Vec<i64> = before.iter().map(|a| a.id).collect();
    assert_eq!(ids, kept, "every alert once, oldest first");
    assert_eq!(
        receiver.kinds(),
        vec!["device-offline", "device-online", "device-offline"]
    );
    assert!(receiver.requests.load(std::sync::atomic::Ordering::SeqCst) >= 3);
    let after = eventually_async("the deliveries recorded", || async {
        let a = alerts(&relay).await;
        a.iter()
            .all(|a| a.deliveries[0].state == "delivered")
            .then_some(a)
    })
    .await;
    assert!(after[0].deliveries[0].attempts > tries, "{after:#?}");
}

#[test]
fn a_bad_config_file_or_webhook_is_refused_with_what_is_wrong() {
    let dir = tempdir();
    let data = dir.path().join("relay");
    let config = dir.path().join("relay.toml");
    std::fs::write(
        &config,
        "[alerts]\noffline_grace = 60\n\n[[alert]]\nurl = \"http://127.0.0.1:1/\"\nformt = \"json\"\n",
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_burrow"))
            .args(["relay", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, err) = run(&["--config", config.to_str().unwrap()]);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("formt") && err.contains("line 6"), "{err}");
    let (code, err) = run(&["--alert-webhook", "ftp://example.com/x"]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("--alert-webhook"), "{err}");
    std::fs::write(
        &config,
        "[[alert]]\nurl = \"http://127.0.0.1:1/\"\nevents = [\"device-gone\"]\n",
    )
    .unwrap();
    let (code, err) = run(&["--config", config.to_str().unwrap()]);
    assert_eq!(code, 78, "{err}");
    assert!(
        err.contains("device-gone") && err.contains("device-offline"),
        "{err}"
    );
}

/// The other events are read from the audit trail like presence: whatever writes a `token`,
/// `lock`, `quarantine` or `console-alert` entry (enrollment, the password lock, clone
/// detection, console rules) is alerted, with no code of its own for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_lock_quarantine_and_console_entries_are_alerted() {
    use burrow_relay::store::{AuditRecord, Write};
    let dir = tempdir();
    let receiver = Receiver::start().await;
    let hook = receiver.url("/hook");
    let relay = TestRelay::start_with(&dir.path().join("relay"), "127.0.0.1:0", |c| {
        c.alerts.webhooks = vec![
            burrow_relay::alerts::Webhook::new(&hook, burrow_relay::alerts::Format::Json, vec![])
                .unwrap(),
        ];
        c.alerts.poll = Duration::from_millis(100);
    })
    .await;
    // The projection starts from the end of the trail: wait until it has.
    eventually_async("the projection to start", || async {
        relay.relay.db().alert_cursor().await.unwrap().map(|_| ())
    })
    .await;
    let entry = |event: &str, who: &str, target: &str, outcome: &str, detail: &str| {
        Write::Audit(AuditRecord {
            at: burrow_relay::store::now(),
            event: event.into(),
            who: who.into(),
            target: target.into(),
            outcome: outcome.into(),
            detail: detail.into(),
            device: None,
            operator: None,
        })
    };
    let db = relay.relay.db();
    for w in [
        entry("token", "k7-token", "pi-042", "ok", "enrolled pi-042"),
        entry("token", "k7-token", "pi-043", "denied", "used up"),
        entry(
            "lock",
            "bob",
            "127.0.0.9:5000",
            "denied",
            "10 wrong passwords",
        ),
        entry(
            "quarantine",
            "pi-042",
            "10.0.0.2:1",
            "denied",
            "key seen from two places",
        ),
        entry("console-alert", "pi-042", "console", "ok", "%LINK-3-UPDOWN"),
        entry("stream", "alice", "pi-042:22", "ok", "not an alert"),
    ] {
        db.submit(w);
    }
    eventually("five alerts", || {
        (receiver.alerts().len() >= 5).then_some(())
    })
    .await;
    assert_eq!(
        receiver.kinds(),
        vec![
            "token-used",
            "token-refused",
            "operator-locked",
            "quarantine",
            "console-pattern"
        ]
    );
    let alerts = receiver.alerts();
    assert_eq!(alerts[3]["device"], "pi-042");
    assert_eq!(alerts[3]["severity"], "critical");
    assert!(
        alerts[2]["summary"]
            .as_str()
            .unwrap()
            .contains("operator bob locked")
    );
    assert!(
        alerts[4]["summary"]
            .as_str()
            .unwrap()
            .contains("%LINK-3-UPDOWN")
    );
}
