//! Fleet enrollment against real processes: join tokens made with the CLI, `burrow agent
//! enroll` run as a command, agents started from the config it wrote; approval, one key in two
//! places, replacement, join files, clusters. Imports and labels: `fleet_import.rs`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use burrow_proto::join::JoinToken;
use common::*;

/// Runs `burrow ARGS...`: (exit code, stdout, stderr).
fn burrow(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_burrow"))
        .args(args)
        .stdin(Stdio::null())
        .env_remove("BURROW_AGENT_CONFIG")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// Waits until the relay recorded its address for join strings, then makes a token.
async fn token(relay: &TestRelay, args: &[&str]) -> String {
    for _ in 0..400 {
        if !relay.relay.db().relay_addresses().await.unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let mut argv = vec!["token", "create"];
    argv.extend_from_slice(args);
    let (ok, out, err) = match relay.relay.db().postgres_url() {
        Some(url) => {
            let mut with_db = vec!["relay", "--database", url];
            with_db.extend_from_slice(&argv);
            let (code, out, err) = burrow(&with_db);
            (code == 0, out, err)
        }
        None => relay.cli(&argv),
    };
    assert!(ok, "{err}");
    let join = out.trim().to_string();
    assert!(!join.contains(char::is_whitespace), "one line: {out:?}");
    join
}

/// A device's directory: where `enroll` writes its config and key.
struct Device {
    dir: PathBuf,
}

impl Device {
    fn new(root: &Path, name: &str) -> Device {
        let dir = root.join(format!("device-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        Device { dir }
    }

    fn config(&self) -> PathBuf {
        self.dir.join("agent.toml")
    }

    fn key(&self) -> PathBuf {
        self.dir.join("id_ed25519")
    }

    /// `burrow agent enroll JOIN --config ... --key ... ARGS...`.
    fn enroll(&self, join: &str, args: &[&str]) -> (i32, String, String) {
        let (config, key) = (self.config(), self.key());
        let mut argv = vec![
            "agent",
            "enroll",
            join,
            "--config",
            config.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ];
        argv.extend_from_slice(args);
        burrow(&argv)
    }

    /// Quick reconnects for the test (the written config keeps the defaults otherwise).
    fn speed_up(&self) {
        let text = std::fs::read_to_string(self.config()).unwrap();
        let (comments, rest) = text.split_at(text.find("relay =").unwrap());
        std::fs::write(
            self.config(),
            format!("{comments}backoff_min = 0.1\nbackoff_max = 0.5\n{rest}"),
        )
        .unwrap();
    }

    /// `burrow agent --config FILE` as its own process.
    fn start_agent(&self) -> (KillOnDrop, PathBuf) {
        let status = self.dir.join(format!("status-{}.json", free_port()));
        let child = Command::new(env!("CARGO_BIN_EXE_burrow"))
            .args(["agent", "--config"])
            .arg(self.config())
            .arg("--status-file")
            .arg(&status)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        (KillOnDrop(child), status)
    }
}

fn status(path: &Path) -> Option<burrow_agent::status::Status> {
    burrow_agent::status::read(path).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_enrolls_with_one_line_and_its_agent_starts_from_the_config_it_wrote() {
    let dir = tempdir();
    let relay = TestRelay::start(&dir.path().join("relay")).await;
    let service = echo_server().await;
    let join = token(&relay, &["--name-pattern", "pi-*", "--label", "site=osaka"]).await;
    let parsed = JoinToken::decode(&join).unwrap();
    assert_eq!(parsed.relays, [relay.addr.to_string()]);
    assert_eq!(parsed.pins, [relay.relay.fingerprint()]);
    // The relay keeps only the secret's hash.
    let (_, stored) = relay.relay.store().token(&parsed.id).unwrap().unwrap();
    assert_ne!(stored, parsed.secret.expose());
    assert_eq!(
        stored,
        burrow_relay::enroll::hash_secret(parsed.secret.expose())
    );

    let pi = Device::new(dir.path(), "pi-1");
    let expose = format!("7=127.0.0.1:{}", service.port());
    let (code, out, err) = pi.enroll(&join, &["--name", "pi-1", "--expose", &expose]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("enrolled device pi-1"), "{out}");
    // The key was made here, and only its public half is registered.
    let key = burrow_io::keys::load_private_key(&pi.key()).unwrap();
    let fp = burrow_io::keys::fingerprint(key.public_key());
    let devices = relay.relay.store().devices().unwrap();
    let d = devices.iter().find(|d| d.name == "pi-1").unwrap();
    assert_eq!(d.fingerprints, std::slice::from_ref(&fp));
    assert_eq!(d.labels.get("site").map(String::as_str), Some("osaka"));
    assert!(!d.pending);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(pi.key()).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "key mode {mode:o}");

    // Later starts use the config: the agent comes up and its endpoint works.
    let (_agent, status_file) = pi.start_agent();
    relay.wait_endpoint("pi-1", 7).await;
    let st = eventually("the agent's status", || status(&status_file)).await;
    assert_eq!(st.name, "pi-1");

    // The token granted one key for one name: a second enrollment is refused, clearly.
    let other = Device::new(dir.path(), "pi-2");
    let (code, out, err) = other.enroll(&join, &["--name", "pi-2"]);
    assert_eq!(code, 65, "{out}{err}");
    assert!(
        err.contains("allowed enrolling once and has been used") && err.contains("pi-1"),
        "{err}"
    );
    assert!(!other.config().exists() && !other.key().exists());
    // A name outside the token's pattern is refused as clearly.
    let join2 = token(&relay, &["--name-pattern", "osaka-*"]).await;
    let (code, _, err) = other.enroll(&join2, &["--name", "tokyo-1"]);
    assert_eq!(code, 65);
    assert!(
        err.contains("does not match") && err.contains("osaka-*"),
        "{err}"
    );
    // Enrolling again where a config exists does nothing without --force.
    let (code, _, err) = pi.enroll(&join2, &["--name", "osaka-1"]);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("enrolled already"), "{err}");

    let audit = relay.audit_now(200).await;
    let has = |event: &str, outcome: &str, needle: &str| {
        audit
            .iter()
            .any(|r| r.event == event && r.outcome == outcome && r.detail.contains(needle))
    };
    assert!(has("token", "ok", "created"), "{audit:#?}");
    assert!(has("enroll", "ok", &fp), "{audit:#?}");
    assert!(
        has("token", "ok", "used to enroll device pi-1"),
        "{audit:#?}"
    );
    assert!(has("token", "denied", "has been used"), "{audit:#?}");
    assert!(has("token", "denied", "does not match"), "{audit:#?}");

    // token ls: uses left, expiry, who made it.
    let (ok, out, err) = relay.cli(&["token", "ls"]);
    assert!(ok, "{err}");
    let line = out.lines().find(|l| l.starts_with(&parsed.id)).unwrap();
    assert!(line.contains("used up") && line.contains("1/1"), "{line}");
    // token rm revokes.
    let (ok, _, err) = relay.cli(&["token", "rm", &JoinToken::decode(&join2).unwrap().id]);
    assert!(ok, "{err}");
    let (code, _, err) = other.enroll(&join2, &["--name", "osaka-2"]);
    assert_eq!(code, 65);
    assert!(err.contains("revoked"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_device_waits_and_connects_once_approved_without_enrolling_again() {
    let dir = tempdir();
    let relay = TestRelay::start(&dir.path().join("relay")).await;
    let service = echo_server().await;
    let join = token(&relay, &["--approve", "--reusable"]).await;
    let pi = Device::new(dir.path(), "pi");
    let expose = format!("7=127.0.0.1:{}", service.port());
    let (code, out, err) = pi.enroll(&join, &["--name", "pi", "--expose", &expose]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("waits for approval"), "{out}");
    pi.speed_up();
    let (ok, out, _) = relay.cli(&["device", "ls"]);
    assert!(ok);
    let line = out.lines().find(|l| l.starts_with("pi ")).unwrap();
    assert!(line.contains("pending"), "{out}");

    let (_agent, status_file) = pi.start_agent();
    let waiting = eventually("the agent to say it waits for approval", || {
        status(&status_file)
            .and_then(|s| s.last_error)
            .filter(|e| e.contains("waiting for approval"))
    })
    .await;
    assert!(
        waiting.contains("burrow relay device approve pi"),
        "{waiting}"
    );
    assert!(relay.relay.online_endpoints("pi").is_none());
    // Nothing of the device is reachable meanwhile.
    let audit = relay.audit_now(100).await;
    assert!(
        audit
            .iter()
            .any(|r| r.event == "auth" && r.outcome == "denied" && r.detail.contains("approval")),
        "{audit:#?}"
    );

    let (ok, out, err) = relay.cli(&["device", "approve", "pi"]);
    assert!(ok, "{err}");
    assert!(out.contains("approved"), "{out}");
    // The same agent, the same config: it connects at its next try.
    relay.wait_endpoint("pi", 7).await;
    let audit = relay.audit_now(100).await;
    assert!(
        audit
            .iter()
            .any(|r| r.event == "approve" && r.outcome == "ok" && r.target == "pi"),
        "{audit:#?}"
    );

    // A second pending device is rejected: it is gone.
    let other = Device::new(dir.path(), "other");
    let (code, _, err) = other.enroll(&join, &["--name", "other"]);
    assert_eq!(code, 0, "{err}");
    let (ok, _, err) = relay.cli(&["device", "reject", "other"]);
    assert!(ok, "{err}");
    assert!(!relay.relay.store().device_exists("other").unwrap());
    let (ok, _, err) = relay.cli(&["device", "reject", "pi"]);
    assert!(!ok);
    assert!(err.contains("not waiting for approval"), "{err}");
    let audit = relay.audit_now(100).await;
    assert!(
        audit
            .iter()
            .any(|r| r.event == "approve" && r.outcome == "denied" && r.target == "other"),
        "{audit:#?}"
    );
}

/// A copy of `device`'s directory (a cloned SD card): the same config and key.
fn clone_device(root: &Path, device: &Device, name: &str) -> Device {
    let copy = Device::new(root, name);
    for file in ["agent.toml", "id_ed25519"] {
        std::fs::copy(device.dir.join(file), copy.dir.join(file)).unwrap();
    }
    copy
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_in_two_places_is_quarantined_and_the_first_session_kept() {
    let dir = tempdir();
    let relay = TestRelay::start(&dir.path().join("relay")).await;
    let service = echo_server().await;
    let join = token(&relay, &[]).await;
    let pi = Device::new(dir.path(), "pi");
    let expose = format!("7=127.0.0.1:{}", service.port());
    let (code, _, err) = pi.enroll(&join, &["--name", "pi", "--expose", &expose]);
    assert_eq!(code, 0, "{err}");
    pi.speed_up();
    let copy = clone_device(dir.path(), &pi, "copy");

    let (_first, first_status) = pi.start_agent();
    relay.wait_endpoint("pi", 7).await;
    let first_peer = relay.relay.online_peer("pi").unwrap();
    // The cloned card boots somewhere else with the same key.
    let (_second, second_status) = copy.start_agent();
    let refused = eventually("the copy to be told its key is quarantined", || {
        status(&second_status)
            .and_then(|s| s.last_error)
            .filter(|e| e.contains("quarantined"))
    })
    .await;
    assert!(refused.contains("in use by another session"), "{refused}");
    // The session that was there first keeps the device, and never heard of a takeover.
    assert_eq!(relay.relay.online_peer("pi"), Some(first_peer));
    let first = status(&first_status).unwrap();
    assert_eq!(first.state, burrow_agent::status::State::Up, "{first:?}");
    assert!(
        first
            .last_error
            .as_deref()
            .is_none_or(|e| !e.contains("replaced")),
        "{first:?}"
    );
    let (ok, out, _) = relay.cli(&["device", "ls"]);
    assert!(ok);
    assert!(out.contains("quarantined SHA256:"), "{out}");
    let audit = relay.audit_now(200).await;
    let quarantined: Vec<_> = audit
        .iter()
        .filter(|r| r.event == "quarantine" && r.outcome == "ok")
        .collect();
    assert_eq!(quarantined.len(), 1, "{audit:#?}");
    assert!(
        quarantined[0].detail.contains(&first_peer.to_string()),
        "{quarantined:#?}"
    );
    // The copy keeps trying and keeps being refused: no flapping.
    eventually("a second refusal of the copy", || {
        let audit = relay.relay.store().audit_tail(200).unwrap();
        (audit
            .iter()
            .filter(|r| r.event == "quarantine" && r.outcome == "denied")
            .count()
            >= 2)
            .then_some(())
    })
    .await;
    assert_eq!(relay.relay.online_peer("pi"), Some(first_peer));
    assert!(
        !relay
            .audit_now(300)
            .await
            .iter()
            .any(|r| r.event == "takeover"),
        "no takeover between the copies"
    );

    // A replace token gives the copy a key of its own under its own name... and the
    // operator lifts the quarantine.
    let (ok, _, err) = relay.cli(&["device", "unquarantine", "pi"]);
    assert!(ok, "{err}");
    let (ok, out, _) = relay.cli(&["device", "ls"]);
    assert!(ok && !out.contains("quarantined"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replace_token_rebinds_the_name_to_a_new_key_and_keeps_the_history() {
    let dir = tempdir();
    let relay = TestRelay::start(&dir.path().join("relay")).await;
    let service = echo_server().await;
    let expose = format!("7=127.0.0.1:{}", service.port());
    let join = token(&relay, &[]).await;
    let old = Device::new(dir.path(), "old");
    assert_eq!(
        old.enroll(&join, &["--name", "pi", "--expose", &expose]).0,
        0
    );
    old.speed_up();
    let (_old_agent, old_status) = old.start_agent();
    relay.wait_endpoint("pi", 7).await;
    relay
        .relay
        .store()
        .allow_connect("pi", "127.0.0.1", 1883)
        .unwrap();
    let old_fp = burrow_io::keys::fingerprint(
        burrow_io::keys::load_private_key(&old.key())
            .unwrap()
            .public_key(),
    );

    let replace = token(&relay, &["--replace", "pi"]).await;
    let new = Device::new(dir.path(), "new");
    // The token re-binds pi only.
    let (code, _, err) = new.enroll(&replace, &["--name", "garage"]);
    assert_eq!(code, 65);
    assert!(err.contains("--name pi"), "{err}");
    let (code, out, err) = new.enroll(&replace, &["--name", "pi", "--expose", &expose]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("old keys are revoked") && out.contains(&old_fp),
        "{out}"
    );
    new.speed_up();
    // The old key is revoked: its session is cut and it cannot come back.
    eventually("the old agent to lose its session", || {
        status(&old_status)
            .and_then(|s| s.last_error)
            .filter(|e| e.contains("refused key"))
    })
    .await;
    let (_new_agent, _) = new.start_agent();
    relay.wait_endpoint("pi", 7).await;
    let new_fp = burrow_io::keys::fingerprint(
        burrow_io::keys::load_private_key(&new.key())
            .unwrap()
            .public_key(),
    );
    let devices = relay.relay.store().devices().unwrap();
    let pi = devices.iter().find(|d| d.name == "pi").unwrap();
    assert_eq!(pi.fingerprints, [new_fp]);
    // The device's rules and history stay.
    assert_eq!(pi.allow_connect, ["127.0.0.1:1883"]);
    let audit = relay.audit_now(300).await;
    assert!(
        audit
            .iter()
            .any(|r| r.event == "replace" && r.who == "pi" && r.detail.contains(&old_fp)),
        "{audit:#?}"
    );
    assert!(
        audit
            .iter()
            .any(|r| r.event == "enroll" && r.who == "pi" && r.detail.contains(&old_fp)),
        "the first enrollment is still in the audit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_token_carries_every_relay_and_enrolls_through_any_of_them() {
    let dir = tempdir();
    let pg = TestPostgres::start().await;
    let mut relays = vec![
        cluster_relay(dir.path(), &pg, "r1").await,
        cluster_relay(dir.path(), &pg, "r2").await,
        cluster_relay(dir.path(), &pg, "r3").await,
    ];
    let db = relays[0].relay.db().clone();
    for _ in 0..200 {
        if db.relay_addresses().await.unwrap().len() == 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (code, out, err) = burrow(&[
        "relay",
        "--database",
        &pg.url,
        "token",
        "create",
        "--uses",
        "2",
        "--name-pattern",
        "pi-*",
    ]);
    assert_eq!(code, 0, "{err}");
    let join = out.trim().to_string();
    let parsed = JoinToken::decode(&join).unwrap();
    let mut want: Vec<String> = relays.iter().map(|r| r.addr.to_string()).collect();
    let mut got = parsed.relays.clone();
    want.sort();
    got.sort();
    assert_eq!(got, want, "every relay address");
    let mut pins: Vec<String> = relays.iter().map(|r| r.relay.fingerprint()).collect();
    let mut got = parsed.pins.clone();
    pins.sort();
    got.sort();
    assert_eq!(got, pins, "every relay's host key");

    // The relay the string names first is down: the next one enrolls.
    let first = relays
        .iter()
        .position(|r| r.addr.to_string() == parsed.relays[0])
        .unwrap();
    relays.remove(first).stop().await;
    let service = echo_server().await;
    let expose = format!("7=127.0.0.1:{}", service.port());
    let pi = Device::new(dir.path(), "pi-1");
    let (code, out, err) = pi.enroll(&join, &["--name", "pi-1", "--expose", &expose]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("at relay {}", parsed.relays[1])),
        "{out}"
    );
    let config = std::fs::read_to_string(pi.config()).unwrap();
    for r in &parsed.relays {
        assert!(config.contains(r), "{config}");
    }
    pi.speed_up();
    let (_agent, _) = pi.start_agent();
    eventually("pi-1 online at a live relay", || {
        relays
            .iter()
            .any(|r| {
                r.relay
                    .online_endpoints("pi-1")
                    .is_some_and(|e| e.contains(&7))
            })
            .then_some(())
    })
    .await;
    // The token's uses are counted cluster-wide.
    let pi2 = Device::new(dir.path(), "pi-2");
    assert_eq!(pi2.enroll(&join, &["--name", "pi-2"]).0, 0);
    let pi3 = Device::new(dir.path(), "pi-3");
    let (code, _, err) = pi3.enroll(&join, &["--name", "pi-3"]);
    assert_eq!(code, 65);
    assert!(err.contains("allowed enrolling 2 times"), "{err}");
    let (code, out, _) = burrow(&["relay", "--database", &pg.url, "token", "ls"]);
    assert_eq!(code, 0);
    assert!(out.contains(&parsed.id) && out.contains("2/2"), "{out}");
}

/// Points a device's config at one relay only.
fn only_relay(device: &Device, relay: &TestRelay) {
    let text = std::fs::read_to_string(device.config()).unwrap();
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("relay = ") {
                format!("relay = \"{}\"\n", relay.addr)
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(device.config(), text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_on_two_relays_of_a_cluster_is_quarantined_too() {
    let dir = tempdir();
    let pg = TestPostgres::start().await;
    let r1 = cluster_relay(dir.path(), &pg, "r1").await;
    let r2 = cluster_relay(dir.path(), &pg, "r2").await;
    let join = token(&r1, &[]).await;
    let service = echo_server().await;
    let expose = format!("7=127.0.0.1:{}", service.port());
    let pi = Device::new(dir.path(), "pi");
    let (code, _, err) = pi.enroll(&join, &["--name", "pi", "--expose", &expose]);
    assert_eq!(code, 0, "{err}");
    pi.speed_up();
    let copy = clone_device(dir.path(), &pi, "copy");
    only_relay(&pi, &r1);
    only_relay(&copy, &r2);

    let (_first, first_status) = pi.start_agent();
    r1.wait_endpoint("pi", 7).await;
    let (_second, second_status) = copy.start_agent();
    eventually("the copy on r2 to be told its key is quarantined", || {
        status(&second_status)
            .and_then(|s| s.last_error)
            .filter(|e| e.contains("quarantined"))
    })
    .await;
    // r1 kept its session, and its agent was never replaced.
    assert!(r1.relay.online_endpoints("pi").is_some());
    let first = status(&first_status).unwrap();
    assert_eq!(first.state, burrow_agent::status::State::Up, "{first:?}");
    assert!(
        first
            .last_error
            .as_deref()
            .is_none_or(|e| !e.contains("replaced")),
        "{first:?}"
    );
    let audit = r1.audit_now(200).await;
    assert!(
        audit
            .iter()
            .any(|r| r.event == "quarantine" && r.outcome == "ok" && r.detail.contains("relay r2")),
        "{audit:#?}"
    );
    // The copy stays out while r1 holds the key: refused again at its next try, on r2.
    let mut refusals = 0;
    for _ in 0..400 {
        refusals = r1
            .audit_now(300)
            .await
            .iter()
            .filter(|r| r.event == "quarantine" && r.outcome == "denied")
            .count();
        if refusals >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(refusals >= 2, "{refusals} refusals");
    assert!(r1.relay.online_endpoints("pi").is_some());
    assert!(r2.relay.online_endpoints("pi").is_none());
}

/// A metadata service answering like SORACOM's `/v1/subscriber`.
async fn subscriber_service(imsi: &'static str) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    serve(move |mut tcp| async move {
        let mut buf = [0u8; 2048];
        let n = tcp.read(&mut buf).await.unwrap_or(0);
        let request = String::from_utf8_lossy(&buf[..n]);
        let (status, body) = if request.starts_with("GET /v1/subscriber ") {
            ("200 OK", format!("{{\"imsi\":\"{imsi}\",\"msisdn\":\"81000000000\"}}"))
        } else {
            ("404 Not Found", String::new())
        };
        let _ = tcp
            .write_all(
                format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            )
            .await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_file_on_the_boot_partition_enrolls_once_named_by_the_sims_imsi() {
    let dir = tempdir();
    let relay = TestRelay::start(&dir.path().join("relay")).await;
    let metadata = subscriber_service("440103123456789").await;
    let join = token(&relay, &["--reusable"]).await;
    let pi = Device::new(dir.path(), "sim");
    let boot = dir.path().join("boot");
    std::fs::create_dir_all(&boot).unwrap();
    let file = boot.join("burrow-join.txt");
    std::fs::write(
        &file,
        format!("# from the admin\r\n{join}\r\nname-from=imsi\r\n"),
    )
    .unwrap();
    let (config, key) = (pi.config(), pi.key());
    let url = format!("http://{metadata}");
    let (code, out, err) = burrow(&[
        "agent",
        "enroll",
        "--join-file",
        file.to_str().unwrap(),
        "--metadata-url",
        &url,
        "--config",
        config.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("enrolled device 440103123456789"), "{out}");
    assert!(!file.exists(), "the join file is read once, then deleted");
    assert!(
        relay
            .relay
            .store()
            .device_exists("440103123456789")
            .unwrap()
    );

    // The host name, when that is the rule.
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let want = burrow_agent::enroll::name_from_hostname(&host).unwrap();
    let by_host = Device::new(dir.path(), "host");
    let (code, out, err) = by_host.enroll(&join, &["--name-from", "hostname"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(relay.relay.store().device_exists(&want).unwrap(), "{out}");

    // A refused file is deleted too (it holds a secret); the reason is printed.
    let id = JoinToken::decode(&join).unwrap().id;
    assert!(relay.cli(&["token", "rm", &id]).0);
    std::fs::write(&file, format!("{join}\nname=late\n")).unwrap();
    let other = Device::new(dir.path(), "late");
    let (config, key) = (other.config(), other.key());
    let (code, _, err) = burrow(&[
        "agent",
        "enroll",
        "--join-file",
        file.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    assert_eq!(code, 65);
    assert!(
        err.contains("revoked") && err.contains("removed the join file"),
        "{err}"
    );
    assert!(!file.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_holding_two_relays_keeps_both_sessions_of_its_quarantined_key() {
    let dir = tempdir();
    let pg = TestPostgres::start().await;
    let r1 = cluster_relay(dir.path(), &pg, "r1").await;
    let mut r2 = cluster_relay(dir.path(), &pg, "r2").await;
    for _ in 0..200 {
        if r1.relay.db().relay_addresses().await.unwrap().len() == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let join = token(&r1, &[]).await;
    let service = echo_server().await;
    let expose = format!("7=127.0.0.1:{}", service.port());
    let pi = Device::new(dir.path(), "pi");
    assert_eq!(
        pi.enroll(&join, &["--name", "pi", "--expose", &expose]).0,
        0
    );
    pi.speed_up();
    let text = std::fs::read_to_string(pi.config()).unwrap();
    std::fs::write(pi.config(), format!("connections = 2\n{text}")).unwrap();
    // The key was quarantined earlier (a copy was seen once).
    let key = burrow_io::keys::load_private_key(&pi.key()).unwrap();
    r1.relay
        .db()
        .quarantine_key(&burrow_relay::store::fleet::Quarantine {
            device: "pi".into(),
            fingerprint: burrow_io::keys::fingerprint(key.public_key()),
            since: 1,
            detail: "seen twice".into(),
            kept_relay: "r1".into(),
            kept_session: 0,
            kept_instance: String::new(),
        })
        .await
        .unwrap();
    let (_agent, _) = pi.start_agent();
    r1.wait_endpoint("pi", 7).await;
    r2.wait_endpoint("pi", 7).await;
    // One agent process is one holder: neither relay cuts the other's session of it.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let audit = r1.audit_now(300).await;
    assert!(
        !audit
            .iter()
            .any(|r| r.event == "quarantine" && r.outcome == "denied"),
        "{audit:#?}"
    );
    assert!(r1.relay.online_endpoints("pi").is_some());
    assert!(r2.relay.online_endpoints("pi").is_some());
    // r2 restarts: the agent's session there comes back while its r1 session holds the key.
    let addr = r2.addr;
    r2.stop().await;
    r2 = cluster_relay_on(dir.path(), &pg, "r2", &addr.to_string()).await;
    r2.wait_endpoint("pi", 7).await;
    let audit = r1.audit_now(300).await;
    assert!(
        !audit
            .iter()
            .any(|r| r.event == "quarantine" && r.outcome == "denied"),
        "{audit:#?}"
    );
}

/// [`cluster_relay`] listening on `addr` (a relay restarted on its address).
async fn cluster_relay_on(dir: &Path, pg: &TestPostgres, id: &str, addr: &str) -> TestRelay {
    let peer = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let url = pg.url.clone();
    let relay = TestRelay::start_with(&dir.join(id), addr, |c| {
        c.database = Some(url);
        c.relay_id = id.to_string();
        c.peer_advertise = Some(peer_addr.to_string());
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
