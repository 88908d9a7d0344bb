//! Host key rotation without breaking a device, against real processes: a relay holding a new
//! host key beside the old one (from its next connection on, no restart) announces both; real
//! OpenSSH with `UpdateHostKeys=yes` adds the new key to its known_hosts, and a real burrow
//! agent adds the new pin to its config file (comments and other settings untouched); once the
//! old key is retired, both still connect, and an agent started afresh from the edited file too.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;

/// An agent process run from `config`, logging to `log`.
fn agent_from_file(config: &Path, status: &Path, log: &Path) -> KillOnDrop {
    KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_burrow"))
            .args(["agent", "--config"])
            .arg(config)
            .args(["--backoff-min", "0.1", "--backoff-max", "0.5"])
            .arg("--status-file")
            .arg(status)
            .env("BURROW_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap(),
    )
}

/// An OpenSSH client config for operator `user` that updates host keys in `known_hosts`.
fn updating_ssh_config(dir: &Path, port: u16, user: &str, key: &Path, kh: &Path) -> PathBuf {
    let path = dir.join(format!("ssh_config_updating_{user}"));
    std::fs::write(
        &path,
        format!(
            "Host relay\n  HostName 127.0.0.1\n  Port {port}\n  User {user}\n  IdentityFile {}\n  \
             UserKnownHostsFile {}\n  UpdateHostKeys yes\n  HashKnownHosts no\n  IdentitiesOnly yes\n  \
             BatchMode yes\n  StrictHostKeyChecking yes\n  ConnectTimeout 10\n  LogLevel INFO\n",
            key.display(),
            kh.display()
        ),
    )
    .unwrap();
    path
}

/// The ed25519 key material of an OpenSSH public key line (known_hosts lines end with it).
fn key_part(line: &str) -> String {
    line.split_whitespace()
        .skip_while(|w| *w != "ssh-ed25519")
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

/// How many times device `pi` logged in.
async fn logins(relay: &TestRelay) -> usize {
    relay
        .audit_now(1000)
        .await
        .iter()
        .filter(|r| r.event == "auth" && r.who == "pi" && r.outcome == "ok")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssh_and_an_agent_learn_the_new_key_and_connect_after_the_old_is_retired() {
    let dir = tempdir();
    let data = dir.path().join("relay");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let relay = TestRelay::start_on(&data, &listen).await;
    let dev_key = keypair(dir.path(), "dev");
    let op_key = keypair(dir.path(), "op");
    relay.add_device("pi", &dev_key);
    relay.add_operator("alice", &op_key, &["*"]);
    let old_fp = relay.relay.fingerprint();
    let old_line = relay.relay.host_public_key();
    let echo = echo_server().await;

    // The agent's config, as an operator wrote it.
    let config = dir.path().join("agent.toml");
    let original = format!(
        "# The garage Pi's tunnel.\nrelay = \"{listen}\"   # the relay\nname = \"pi\"\nkey = \"{}\"\n\
         host_key = \"{old_fp}\" # checked with `burrow relay fingerprint`\nprofile = \"standard\"\n\n\
         # ssh to the Pi\n[[expose]]\nport = 22\nto = \"{echo}\"\n",
        dev_key.display()
    );
    std::fs::write(&config, &original).unwrap();
    let status = dir.path().join("agent-status.json");
    let agent_log = dir.path().join("agent.log");
    let agent = agent_from_file(&config, &status, &agent_log);
    relay.wait_endpoint("pi", 22).await;
    // OpenSSH knows only the key in use.
    let kh = dir.path().join("known_hosts");
    std::fs::write(&kh, format!("[127.0.0.1]:{port} {old_line}\n")).unwrap();
    let op_cfg = updating_ssh_config(dir.path(), port, "alice", &op_key, &kh);

    // A new key beside the old one; the relay holds both once restarted.
    let (ok, out, err) = relay.cli(&["hostkey", "add"]);
    assert!(ok, "{err}");
    let held = burrow_relay::host_keys::load(&data).unwrap();
    let new = held.new.clone().expect("the new key is held");
    let new_fp = burrow_io::keys::fingerprint(new.public_key());
    let new_line = burrow_io::keys::public_key_line(new.public_key());
    assert!(out.contains(&new_fp), "{out}");
    let (ok, out, err) = relay.cli(&["hostkey", "ls"]);
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("in use  {old_fp}")) && out.contains(&format!("new     {new_fp}")),
        "{out}"
    );
    // The running relay holds both from its next connection on: OpenSSH learns the new key.
    let (ok, out, err) = ssh_output(&op_cfg, &["relay", "ls"], b"").await;
    assert!(ok, "ssh failed: {err}");
    assert!(String::from_utf8_lossy(&out).contains("pi"), "{err}");
    let known = std::fs::read_to_string(&kh).unwrap();
    assert!(
        known.contains(&key_part(&new_line)),
        "known_hosts did not learn the new key:\n{known}\nssh said: {err}"
    );
    assert_eq!(
        relay.relay.fingerprint(),
        old_fp,
        "the old key stays in use"
    );

    // The agent logged in before the key was added is told at once: it asks proof of the new
    // key and pins it in its file: the value grows by one pin, nothing else changes.
    let expected = original.replace(
        &format!("\"{old_fp}\""),
        &format!("[\"{old_fp}\", \"{new_fp}\"]"),
    );
    eventually("the agent to add the new pin to its config file", || {
        (std::fs::read_to_string(&config).ok()? == expected).then_some(())
    })
    .await;
    relay.wait_endpoint("pi", 22).await;
    assert_eq!(
        logins(&relay).await,
        1,
        "the agent's session was never broken"
    );

    // The old key retired, the relay running: new connections get the new key only.
    let (ok, out, err) = relay.cli(&["hostkey", "retire"]);
    assert!(ok, "{err}");
    assert!(out.contains(&new_fp), "{out}");
    let (ok, out, err) = ssh_output(&op_cfg, &["-W", "pi:22", "relay"], b"still here").await;
    assert!(ok, "ssh after the retirement failed: {err}");
    assert_eq!(out, b"still here");
    assert_eq!(relay.relay.fingerprint(), new_fp);
    // The retired key is no longer announced: OpenSSH drops it.
    let known = std::fs::read_to_string(&kh).unwrap();
    assert!(!known.contains(&key_part(&old_line)), "{known}");
    assert_eq!(
        logins(&relay).await,
        1,
        "the agent's session was never broken"
    );
    // An agent started afresh from the edited file trusts the new key.
    drop(agent);
    eventually("the device to go offline", || {
        relay.relay.online_endpoints("pi").is_none().then_some(())
    })
    .await;
    let _agent = agent_from_file(&config, &status, &agent_log);
    relay.wait_endpoint("pi", 22).await;
    relay.stop().await;
}

/// A cluster relay `id` with its data directory in `dir`, listening on `port`, that clients
/// reach under the name `advertise`.
async fn cluster_relay_on(
    dir: &Path,
    pg: &TestPostgres,
    id: &str,
    port: u16,
    advertise: &str,
) -> TestRelay {
    let peer = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let url = pg.url.clone();
    let relay = TestRelay::start_with(&dir.join(id), &format!("127.0.0.1:{port}"), |c| {
        c.database = Some(url);
        c.relay_id = id.to_string();
        c.peer_advertise = Some(peer_addr.to_string());
        c.advertise = Some(advertise.to_string());
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

/// The name clients reach the cluster under, in its relays' `--advertise`.
const SHARED: &str = "burrow-cluster.example:2222";

/// In a cluster each relay holds its own keys in its data directory, and the cluster's keys
/// are every relay's: a rotating relay's join strings carry its new pin, it announces the other
/// relays' keys with its own (an OpenSSH client that reaches the cluster under one name keeps
/// them all while it learns the new one), and an agent pinning the cluster learns the new key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_relay_rotates_its_key_and_keeps_the_clusters() {
    let dir = tempdir();
    let pg = TestPostgres::start().await;
    let (pa, pb) = (free_port(), free_port());
    let ra = cluster_relay_on(dir.path(), &pg, "ra", pa, SHARED).await;
    let rb = cluster_relay_on(dir.path(), &pg, "rb", pb, SHARED).await;
    // A relay that clients reach under a name of its own: its keys are not the shared name's.
    let rc = cluster_relay_on(dir.path(), &pg, "rc", free_port(), "rc.example:2222").await;
    let dev_key = keypair(dir.path(), "dev");
    let op_key = keypair(dir.path(), "op");
    let db = ra.relay.db();
    db.add_device("pi", &[public_key(&dev_key)]).await.unwrap();
    db.add_operator("alice", &[public_key(&op_key)], None, &["*".into()], false)
        .await
        .unwrap();
    let (a_old, b_fp) = (ra.relay.fingerprint(), rb.relay.fingerprint());
    let (a_old_line, b_line) = (ra.relay.host_public_key(), rb.relay.host_public_key());
    let echo = echo_server().await;
    let config = dir.path().join("agent.toml");
    let original = format!(
        "relay = \"127.0.0.1:{pa}\"\nname = \"pi\"\nkey = \"{}\"\n\
         host_key = [\"{a_old}\", \"{b_fp}\"] # the cluster's pins\n\n[[expose]]\nport = 22\nto = \"{echo}\"\n",
        dev_key.display()
    );
    std::fs::write(&config, &original).unwrap();
    let _agent = agent_from_file(
        &config,
        &dir.path().join("status.json"),
        &dir.path().join("agent.log"),
    );
    ra.wait_endpoint("pi", 22).await;

    // Relay ra gets a new key (in its own data directory) and restarts holding both.
    let (ok, _, err) = ra.cli(&["hostkey", "add"]);
    assert!(ok, "{err}");
    let a_new_key = burrow_relay::host_keys::load(&ra.data_dir)
        .unwrap()
        .new
        .unwrap();
    let a_new = burrow_io::keys::fingerprint(a_new_key.public_key());
    let a_new_line = burrow_io::keys::public_key_line(a_new_key.public_key());
    ra.stop().await;
    let ra = cluster_relay_on(dir.path(), &pg, "ra", pa, SHARED).await;
    eventually_async("ra to announce the cluster's keys", || async {
        let announced = ra.relay.announced_host_keys();
        // Never rc's key: a client knowing ra under the shared name does not know it.
        (announced == vec![a_old.clone(), a_new.clone(), b_fp.clone()]).then_some(())
    })
    .await;
    // Join strings made now carry the new pin with the others.
    let (_, pins) = burrow_relay::enroll::relays_and_pins(ra.relay.db())
        .await
        .unwrap();
    for fp in [&a_old, &a_new, &b_fp] {
        assert!(pins.contains(fp), "{pins:?}");
    }
    // The agent adds the new pin to the cluster's.
    eventually("the agent to pin ra's new key", || {
        let text = std::fs::read_to_string(&config).ok()?;
        (text
            == original.replace(
                &format!("[\"{a_old}\", \"{b_fp}\"]"),
                &format!("[\"{a_old}\", \"{b_fp}\", \"{a_new}\"]"),
            ))
        .then_some(())
    })
    .await;
    // OpenSSH knowing the cluster under one name (both relays' keys) learns ra's new key and
    // keeps rb's.
    let kh = dir.path().join("known_hosts");
    std::fs::write(
        &kh,
        format!("burrow-cluster {a_old_line}\nburrow-cluster {b_line}\n"),
    )
    .unwrap();
    let cfg = updating_ssh_config(dir.path(), pa, "alice", &op_key, &kh);
    let cfg_text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        cfg_text.replace(
            "Host relay\n",
            "Host relay\n  HostKeyAlias burrow-cluster\n",
        ),
    )
    .unwrap();
    let (ok, _, err) = ssh_output(&cfg, &["relay", "ls"], b"").await;
    assert!(ok, "{err}");
    let known = std::fs::read_to_string(&kh).unwrap();
    assert!(known.contains(&key_part(&a_new_line)), "{known}\n{err}");
    assert!(known.contains(&key_part(&b_line)), "{known}\n{err}");
    assert!(known.contains(&key_part(&a_old_line)), "{known}\n{err}");

    // Retired: ra uses the new key, which the cluster records for its peers and join strings.
    let (ok, _, err) = ra.cli(&["hostkey", "retire"]);
    assert!(ok, "{err}");
    ra.stop().await;
    let ra = cluster_relay_on(dir.path(), &pg, "ra", pa, SHARED).await;
    assert_eq!(ra.relay.fingerprint(), a_new);
    ra.wait_endpoint("pi", 22).await;
    let (ok, out, err) = ssh_output(&cfg, &["-W", "pi:22", "relay"], b"cluster").await;
    assert!(ok, "{err}");
    assert_eq!(out, b"cluster");
    let known = std::fs::read_to_string(&kh).unwrap();
    assert!(!known.contains(&key_part(&a_old_line)), "{known}");
    assert!(known.contains(&key_part(&b_line)), "{known}");
    ra.stop().await;
    rb.stop().await;
    rc.stop().await;
}
