//! Bulk registration and labels against a real relay: an `authorized_keys` file of a
//! hand-built relay in the seeds' format and a factory CSV imported with the CLI, operators
//! selecting devices by label through stock `ssh`.

mod common;

use std::path::Path;

use common::*;

/// The public key line of a private key file.
fn pub_line(key: &Path) -> String {
    burrow_io::keys::public_key_line(&public_key(key))
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authorized_keys_file_of_the_seeds_becomes_devices_and_policy() {
    let dir = tempdir();
    let relay = TestRelay::start(&dir.path().join("relay")).await;
    let (garage, home, mqtt, nas) = (
        keypair(dir.path(), "garage"),
        keypair(dir.path(), "home"),
        keypair(dir.path(), "mqtt"),
        keypair(dir.path(), "nas"),
    );
    // The seeds' lines, as written there, with free ports in place of 50022 and 50000.
    let (tunnel, monitor) = (free_port(), free_port());
    let (home_tunnel, _) = (free_port(), ());
    let file = dir.path().join("authorized_keys");
    std::fs::write(
        &file,
        format!(
            "# the bastion's authorized_keys\n\
             restrict,port-forwarding,permitlisten=\"localhost:{tunnel}\",permitopen=\"_invalid_host_:1\",command=\"/usr/sbin/nologin\" {} pi@garage\n\
             restrict,port-forwarding,permitlisten=\"localhost:{home_tunnel}\",permitlisten=\"localhost:{monitor}\",permitopen=\"127.0.0.1:{monitor}\",command=\"/usr/sbin/nologin\" {} pi@home\n\
             no-pty,permitopen=\"localhost:1883\",command=\"/bin/false\" {} mqttclient\n\
             command=\"/usr/local/bin/backup.sh\",from=\"10.0.0.0/8\" {} backup@nas\n\
             permitopen=\"broken:1 ssh-ed25519 AAAA broken\n",
            pub_line(&garage),
            pub_line(&home),
            pub_line(&mqtt),
            pub_line(&nas),
        ),
    )
    .unwrap();
    let (ok, out, err) = relay.cli(&[
        "device",
        "import",
        "--authorized-keys",
        file.to_str().unwrap(),
    ]);
    // One line could not be imported: said, and the others are in.
    assert!(!ok, "{out}");
    assert!(err.contains("1 lines"), "{err}");
    for needle in [
        "line 2: imported device pi-garage",
        &format!(
            "translated: permitlisten=\"localhost:{tunnel}\": allow-listen 127.0.0.1:{tunnel}"
        ),
        "translated: permitopen=\"_invalid_host_:1\": only disables local forwarding",
        "translated: command=\"/usr/sbin/nologin\"",
        "translated: restrict",
        "line 3: imported device pi-home",
        "line 4: imported device mqttclient",
        "translated: permitopen=\"localhost:1883\": allow-connect localhost:1883",
        "line 5: imported device backup-nas",
        "not translated: command=\"/usr/local/bin/backup.sh\": burrow runs no command",
        "not translated: from=\"10.0.0.0/8\"",
        "line 6: not imported: option permitopen: the quote is never closed",
        "imported 4 devices",
        "2 options not translated",
    ] {
        assert!(out.contains(needle), "{needle:?} missing in:\n{out}");
    }
    let devices = relay.relay.store().devices().unwrap();
    let get = |n: &str| devices.iter().find(|d| d.name == n).unwrap().clone();
    assert_eq!(
        get("pi-garage").allow_listen,
        [format!("127.0.0.1:{tunnel}")]
    );
    assert!(get("pi-garage").allow_connect.is_empty());
    assert_eq!(
        get("pi-home").allow_connect,
        [format!("127.0.0.1:{monitor}")]
    );
    assert_eq!(get("pi-home").allow_listen.len(), 2);
    assert_eq!(get("mqttclient").allow_connect, ["localhost:1883"]);

    // The seed's device keeps working as it did: its `ssh -R PORT:localhost:22` opens that
    // port on the relay.
    let service = echo_server().await;
    let cfg = ssh_config(dir.path(), &relay, "pi-garage", &garage);
    let _device = stock_device(
        &cfg,
        &["-R", &format!("{tunnel}:localhost:{}", service.port())],
    );
    relay.wait_endpoint("pi-garage", tunnel).await;
    let out = eventually_roundtrip(&format!("127.0.0.1:{tunnel}"), b"over the seed's port").await;
    assert_eq!(out, b"over the seed's port");
}

async fn eventually_roundtrip(addr: &str, payload: &[u8]) -> Vec<u8> {
    for _ in 0..200 {
        if let Ok(Ok(out)) = tokio::time::timeout(WAIT, roundtrip(addr, payload)).await
            && !out.is_empty()
        {
            return out;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("nothing answers on {addr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_factory_csv_registers_devices_with_labels_and_operators_select_by_label() {
    let dir = tempdir();
    let relay = TestRelay::start(&dir.path().join("relay")).await;
    let (k1, k2, k3) = (
        keypair(dir.path(), "k1"),
        keypair(dir.path(), "k2"),
        keypair(dir.path(), "k3"),
    );
    let csv = dir.path().join("factory.csv");
    std::fs::write(
        &csv,
        format!(
            "name,public_key,labels\n\
             osaka-1,{},site=osaka;role=cam\n\
             tokyo-1,\"{} factory\",\"site=tokyo,role=cam\"\n\
             osaka-2,ssh-ed25519 AAAAnotakey,site=osaka\n\
             osaka-1,{},site=osaka\n\
             kyoto-1,{}\n",
            pub_line(&k1),
            pub_line(&k2),
            pub_line(&k3),
            pub_line(&k3),
        ),
    )
    .unwrap();
    let (ok, out, err) = relay.cli(&["device", "import", csv.to_str().unwrap()]);
    assert!(!ok, "{out}");
    assert!(err.contains("2 lines"), "{err}");
    assert!(out.contains("line 2: imported device osaka-1"), "{out}");
    assert!(out.contains("line 3: imported device tokyo-1"), "{out}");
    assert!(
        out.contains("line 4: not imported: the public key does not parse"),
        "{out}"
    );
    assert!(
        out.contains("line 5: not imported: device osaka-1 is already named by line 2"),
        "{out}"
    );
    assert!(out.contains("line 6: imported device kyoto-1"), "{out}");
    // Labels from the file, and set by hand.
    let (ok, out, err) = relay.cli(&["device", "label", "kyoto-1", "site=kyoto", "role=router"]);
    assert!(ok, "{err}");
    assert!(out.contains("role=router,site=kyoto"), "{out}");
    let (ok, out, _) = relay.cli(&["device", "ls", "--label", "site=osaka"]);
    assert!(ok);
    assert!(
        out.contains("osaka-1") && !out.contains("tokyo-1") && !out.contains("kyoto-1"),
        "{out}"
    );
    let (ok, out, _) = relay.cli(&["device", "ls", "--label", "role=cam", "--json"]);
    assert!(ok);
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["osaka-1", "tokyo-1"]);
    assert_eq!(listed[0]["labels"]["role"], "cam");

    // An operator allowed by label reaches the devices that carry it, and only those.
    let op = keypair(dir.path(), "op");
    let op_pub = dir.path().join("op.pub");
    let (ok, _, err) = relay.cli(&[
        "operator",
        "add",
        "alice",
        "--pubkey",
        op_pub.to_str().unwrap(),
        "--allow",
        "site=osaka",
        "--allow",
        "kyoto-*",
    ]);
    assert!(ok, "{err}");
    let (ok, _, err) = relay.cli(&["operator", "set", "alice", "--allow", "Site=x"]);
    assert!(!ok && err.contains("bad key"), "{err}");
    let service = echo_server().await;
    let mut devices = Vec::new();
    for (name, key) in [("osaka-1", &k1), ("tokyo-1", &k2)] {
        let cfg = ssh_config(dir.path(), &relay, name, key);
        devices.push(stock_device(
            &cfg,
            &["-R", &format!("22:localhost:{}", service.port())],
        ));
        relay.wait_endpoint(name, 22).await;
    }
    let alice = ssh_config(dir.path(), &relay, "alice", &op);
    let (ok, out, err) = ssh_output(&alice, &["-W", "osaka-1:22", "relay"], b"by label").await;
    assert!(ok, "{err}");
    assert_eq!(out, b"by label");
    let (ok, _, err) = ssh_output(&alice, &["-W", "tokyo-1:22", "relay"], b"no").await;
    assert!(!ok);
    assert!(err.contains("may not reach device tokyo-1"), "{err}");
    let (ok, out, err) = ssh_output(&alice, &["relay", "ls"], b"").await;
    assert!(ok, "{err}");
    let out = String::from_utf8_lossy(&out);
    assert!(out.contains("osaka-1") && out.contains("kyoto-1"), "{out}");
    assert!(!out.contains("tokyo-1"), "{out}");
    let (ok, out, err) = ssh_output(&alice, &["relay", "ls", "--label", "site=kyoto"], b"").await;
    assert!(ok, "{err}");
    let out = String::from_utf8_lossy(&out);
    assert!(out.contains("kyoto-1") && !out.contains("osaka-1"), "{out}");
    // A label given later opens the device to her at once.
    let (ok, _, err) = relay.cli(&["device", "label", "tokyo-1", "site=osaka"]);
    assert!(ok, "{err}");
    let (ok, out, err) = ssh_output(&alice, &["-W", "tokyo-1:22", "relay"], b"now").await;
    assert!(ok, "{err}");
    assert_eq!(out, b"now");
}
