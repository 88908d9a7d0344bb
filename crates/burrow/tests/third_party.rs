//! The relay and the agent against SSH software burrow did not write: dropbear's client and
//! server, PuTTY's plink as a jump client, paramiko, and ssh-audit's verdict on the relay.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;

/// Runs a blocking command off the runtime and returns its output, failing after [`WAIT`].
async fn output(mut cmd: Command, input: Vec<u8>) -> std::process::Output {
    use std::io::Write;
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let what = format!("{cmd:?}");
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("{what}: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let pid = child.id();
    match tokio::time::timeout(
        WAIT,
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await
    {
        Ok(out) => out.unwrap().unwrap(),
        Err(_) => {
            let _ = Command::new("kill").arg(pid.to_string()).status();
            panic!("{what} did not finish within {WAIT:?}");
        }
    }
}

/// `key` converted to dropbear's key format (`dbclient -i` takes no OpenSSH keys).
fn dropbear_key(key: &Path) -> PathBuf {
    let out = key.with_extension("dropbear");
    let status = Command::new("dropbearconvert")
        .args(["openssh", "dropbear"])
        .arg(key)
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("dropbearconvert is installed (dropbear-bin; ./test.sh installs it)");
    assert!(status.success());
    out
}

/// `dbclient ARGS...` with its own home whose known_hosts pins the relay (dropbear matches
/// the host name alone, without the port).
fn dbclient(home: &Path, relay: &TestRelay, args: &[&str]) -> Command {
    std::fs::create_dir_all(home.join(".ssh")).unwrap();
    std::fs::write(
        home.join(".ssh/known_hosts"),
        format!("127.0.0.1 {}\n", relay.relay.host_public_key()),
    )
    .unwrap();
    let mut c = Command::new("dbclient");
    c.env("HOME", home).args(args);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropbear_client_as_device_and_as_operator() {
    let (dir, relay, dev_key, op_key) = relay_with("pi", "op").await;
    let home = dir.path().join("dropbear-home");
    let target = format!("127.0.0.1/{}", relay.addr.port());
    let service = reply_after_eof_server(uppercase).await;
    let echo = echo_server().await;
    let dev_db = dropbear_key(&dev_key);
    let op_db = dropbear_key(&op_key);
    let mut device = dbclient(
        &home,
        &relay,
        &[
            "-N",
            "-i",
            dev_db.to_str().unwrap(),
            "-R",
            &format!("80:127.0.0.1:{}", service.port()),
            "-R",
            &format!("81:127.0.0.1:{}", echo.port()),
            &format!("pi@{target}"),
        ],
    );
    let _device = KillOnDrop(
        device
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    relay.wait_endpoint("pi", 80).await;
    relay.wait_endpoint("pi", 81).await;

    // `dbclient -B` is dropbear's `ssh -W`: half-close travels both ways.
    let operator = |port: u16| {
        dbclient(
            &home,
            &relay,
            &[
                "-i",
                op_db.to_str().unwrap(),
                "-B",
                &format!("pi:{port}"),
                &format!("op@{target}"),
            ],
        )
    };
    let out = output(operator(80), b"half closed".to_vec()).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"HALF CLOSED");

    // Several MiB through dropbear's small windows (24 KiB by default) on both sessions.
    let payload: Vec<u8> = (0..6usize << 20).map(|i| (i ^ (i >> 11)) as u8).collect();
    let out = output(operator(81), payload.clone()).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stdout == payload,
        "{} bytes came back",
        out.stdout.len()
    );
    let row = relay.ended_stream_row().await;
    assert_eq!(row.outcome, "ok", "{row:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_against_a_dropbear_server_forwards_both_ways() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempdir();
    let (user, home) = test_account();
    let dev_key = keypair(dir.path(), "dev");
    let ssh_dir = home.join(".ssh");
    std::fs::create_dir_all(&ssh_dir).unwrap();
    std::fs::write(
        ssh_dir.join("authorized_keys"),
        std::fs::read_to_string(dev_key.with_extension("pub")).unwrap(),
    )
    .unwrap();
    std::fs::set_permissions(&ssh_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let chown = Command::new("chown")
        .args(["-R", &format!("{user}:")])
        .arg(&ssh_dir)
        .status()
        .unwrap();
    assert!(chown.success());

    let host_key = dir.path().join("dropbear_host_key");
    let made = Command::new("dropbearkey")
        .args(["-t", "ed25519", "-f"])
        .arg(&host_key)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("dropbearkey is installed (dropbear-bin; ./test.sh installs it)");
    assert!(made.success());
    let public = Command::new("dropbearkey")
        .args(["-y", "-f"])
        .arg(&host_key)
        .output()
        .unwrap();
    let host_line = String::from_utf8_lossy(&public.stdout)
        .lines()
        .find(|l| l.starts_with("ssh-ed25519 "))
        .unwrap()
        .to_string();
    let port = free_port();
    let server = KillOnDrop(
        Command::new("dropbear")
            .args(["-F", "-E", "-s", "-p", &format!("127.0.0.1:{port}"), "-r"])
            .arg(&host_key)
            .arg("-P")
            .arg(dir.path().join("dropbear.pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    eventually("dropbear to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    })
    .await;

    let known_hosts = dir.path().join("dropbear_known_hosts");
    std::fs::write(&known_hosts, format!("[127.0.0.1]:{port} {host_line}\n")).unwrap();
    let mut config = agent_config(
        &format!("127.0.0.1:{port}"),
        &user,
        &dev_key,
        "SHA256:unused",
    );
    config.host_key = None;
    config.known_hosts = Some(known_hosts);
    let service = reply_after_eof_server(uppercase).await;
    let remote_port = free_port();
    config.expose.push(burrow_proto::agent_config::Expose {
        port: 22,
        to: Some(service.to_string()),
        remote_port: Some(remote_port),
        bind: None,
    });
    let echo = echo_server().await;
    let local_port = free_port();
    config.connect.push(burrow_proto::agent_config::Connect {
        listen: format!("127.0.0.1:{local_port}"),
        to: echo.to_string(),
    });
    let agent = TestAgent::start(dir.path(), config);
    agent.wait_up().await;

    // dropbear listens on the remote port and sends each connection to the agent.
    let out = roundtrip(&format!("127.0.0.1:{remote_port}"), b"via dropbear")
        .await
        .unwrap();
    assert_eq!(out, b"VIA DROPBEAR");
    // The agent's local forward goes out through dropbear, byte for byte.
    let payload: Vec<u8> = (0..3usize << 20).map(|i| (i * 7) as u8).collect();
    let out = roundtrip(&format!("127.0.0.1:{local_port}"), &payload)
        .await
        .unwrap();
    assert!(out == payload, "{} bytes came back", out.len());
    agent.stop().await;
    drop(server);
}

/// `key` as a PuTTY private key file.
fn putty_key(key: &Path) -> PathBuf {
    let out = key.with_extension("ppk");
    let status = Command::new("puttygen")
        .arg(key)
        .args(["-O", "private", "-o"])
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("puttygen is installed (putty-tools; ./test.sh installs it)");
    assert!(status.success());
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plink_nc_jumps_to_a_device_endpoint() {
    let site = relay_with_echo_device("op").await;
    let op_key = site.dir.path().join("op");
    let ppk = putty_key(&op_key);
    let mut plink = Command::new("plink");
    plink
        .args(["-ssh", "-batch", "-P", &site.relay.addr.port().to_string()])
        .args(["-hostkey", &site.relay.relay.fingerprint()])
        .arg("-i")
        .arg(&ppk)
        .args(["-nc", "pi:22", "op@127.0.0.1"]);
    let payload: Vec<u8> = (0..2usize << 20).map(|i| (i % 251) as u8).collect();
    let out = output(plink, payload.clone()).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stdout == payload,
        "{} bytes came back",
        out.stdout.len()
    );
    let row = site.relay.ended_stream_row().await;
    assert_eq!((row.who.as_str(), row.outcome.as_str()), ("op", "ok"));
}

/// paramiko: a `direct-tcpip` channel to a device endpoint, then an SSH session through such
/// a channel to the real sshd behind the device (what `ssh -J` does).
const PARAMIKO_CLIENT: &str = r#"
import sys, paramiko
relay_port, key_file, host_line, user, login_key, device_host_line = sys.argv[1:7]

def pinned(client, host, line):
    kind, blob = line.split()[:2]
    client.get_host_keys().add(host, kind, paramiko.PKey.from_type_string(kind, __import__("base64").b64decode(blob)))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())

relay = paramiko.SSHClient()
pinned(relay, "[127.0.0.1]:%s" % relay_port, host_line)
relay.connect("127.0.0.1", port=int(relay_port), username="op", key_filename=key_file,
              look_for_keys=False, allow_agent=False, timeout=15)
t = relay.get_transport()

# direct-tcpip to the device's echo endpoint, with half-close.
ch = t.open_channel("direct-tcpip", ("pi", 7), ("127.0.0.1", 40000))
payload = bytes(i % 253 for i in range(1 << 20))
ch.sendall(payload)
ch.shutdown_write()
got = b""
while True:
    d = ch.recv(65536)
    if not d:
        break
    got += d
assert got == payload, "echo came back with %d bytes" % len(got)
ch.close()
print("DIRECT-OK")

# A jump: an SSH session to the device's own sshd, through a channel of the relay.
hop = t.open_channel("direct-tcpip", ("pi", 22), ("127.0.0.1", 40001))
device = paramiko.SSHClient()
pinned(device, "pi", device_host_line)
device.connect("pi", username=user, key_filename=login_key, sock=hop,
               look_for_keys=False, allow_agent=False, timeout=15)
_, out, _ = device.exec_command("echo jumped-$((6*7))")
print(out.read().decode().strip())
device.close()
relay.close()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paramiko_direct_tcpip_and_jump() {
    let (dir, relay, dev_key, op_key) = relay_with("pi", "op").await;
    let login_key = keypair(dir.path(), "login");
    let sshd = TestSshd::start(dir.path(), &[&login_key], "").await;
    let echo = echo_server().await;
    let dev_cfg = ssh_config(dir.path(), &relay, "pi", &dev_key);
    let _device = stock_device(
        &dev_cfg,
        &[
            "-R",
            &format!("22:localhost:{}", sshd.port),
            "-R",
            &format!("7:localhost:{}", echo.port()),
        ],
    );
    relay.wait_endpoint("pi", 22).await;
    relay.wait_endpoint("pi", 7).await;
    let mut python = Command::new("python3");
    python
        .arg("-c")
        .arg(PARAMIKO_CLIENT)
        .arg(relay.addr.port().to_string())
        .arg(&op_key)
        .arg(relay.relay.host_public_key())
        .arg(current_user())
        .arg(&login_key)
        .arg(sshd.host_key_line.trim());
    let out = output(python, Vec::new()).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "paramiko (pip install paramiko; ./test.sh does): {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), "DIRECT-OK\njumped-42");
}

/// paramiko's `SSHClient.connect` with keys to try in order and maybe a password: what
/// Netmiko, Fabric and Ansible's paramiko transport do. It asks for the `ssh-userauth` service
/// again before each attempt.
const PARAMIKO_LOGIN: &str = r#"
import sys, base64, paramiko
port, host_line, user, password = sys.argv[1:5]
keys = sys.argv[5:]
kind, blob = host_line.split()[:2]
client = paramiko.SSHClient()
client.get_host_keys().add("[127.0.0.1]:%s" % port, kind, paramiko.PKey.from_type_string(kind, base64.b64decode(blob)))
client.set_missing_host_key_policy(paramiko.RejectPolicy())
client.connect("127.0.0.1", port=int(port), username=user, key_filename=keys,
               password=password or None, look_for_keys=False, allow_agent=False, timeout=15)
_, out, _ = client.exec_command("ls")
out.read()
print("LOGGED-IN")
client.close()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paramiko_logs_in_after_a_refused_key() {
    let (dir, relay, _dev_key, op_key) = relay_with("pi", "op").await;
    let hash = burrow_relay::admin::hash_password("correct horse").unwrap();
    relay
        .relay
        .store()
        .add_operator("bob", &[], Some(&hash), &["*".to_string()], false)
        .unwrap();
    let stranger = keypair(dir.path(), "unregistered");
    let login = |user: &str, password: &str, keys: &[&Path]| {
        let mut python = Command::new("python3");
        python
            .arg("-c")
            .arg(PARAMIKO_LOGIN)
            .arg(relay.addr.port().to_string())
            .arg(relay.relay.host_public_key())
            .arg(user)
            .arg(password)
            .args(keys);
        output(python, Vec::new())
    };
    // A key the relay does not know, then the operator's key; then an unknown key, then the
    // password (paramiko tries keys before the password).
    for out in [
        login("op", "", &[&stranger, &op_key]).await,
        login("bob", "correct horse", &[&stranger]).await,
    ] {
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.trim() == "LOGGED-IN",
            "paramiko (pip install paramiko; ./test.sh does): {}\n{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// ssh-audit's JSON report of the server on `port`.
async fn audit(port: u16) -> serde_json::Value {
    let mut cmd = Command::new("ssh-audit");
    cmd.args([
        "-j",
        "--skip-rate-test",
        "-p",
        &port.to_string(),
        "127.0.0.1",
    ]);
    let out = output(cmd, Vec::new()).await;
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "ssh-audit (pip install ssh-audit; ./test.sh does) gave no JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The report's findings of `level` (`fail`, `warn`) in `sections`, as "algorithm: note".
fn findings(report: &serde_json::Value, sections: &[&str], level: &str) -> Vec<String> {
    let mut found = Vec::new();
    for section in sections {
        for alg in report[section].as_array().into_iter().flatten() {
            if let Some(notes) = alg["notes"][level].as_array() {
                for n in notes {
                    found.push(format!("{}: {}", alg["algorithm"], n));
                }
            }
        }
    }
    found
}

/// ssh-audit's findings of level `fail` (and its CVEs) for the server on `port`.
async fn audit_failures(port: u16) -> Vec<String> {
    let report = audit(port).await;
    let mut failures = findings(&report, &["kex", "key", "enc", "mac"], "fail");
    for cve in report["cves"].as_array().into_iter().flatten() {
        failures.push(format!("CVE: {cve}"));
    }
    failures
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_audit_finds_nothing_failing_on_the_relay() {
    let dir = tempdir();
    // The check itself finds failures where there are some: an sshd offering 3DES-CBC.
    let weak = TestSshd::start(dir.path(), &[], "Ciphers +3des-cbc").await;
    let found = audit_failures(weak.port).await;
    assert!(
        found.iter().any(|f| f.contains("3des-cbc")),
        "ssh-audit did not flag 3des-cbc: {found:?}"
    );
    let relay = TestRelay::start(&dir.path().join("relay")).await;
    let found = audit_failures(relay.addr.port()).await;
    assert!(found.is_empty(), "ssh-audit failures: {found:#?}");
}

/// Key exchange as ssh-audit sees it. By default the relay offers the post-quantum hybrids
/// first and ssh-audit's only key exchange warning is the one it gives curve25519 itself
/// ("does not provide protection against post-quantum attacks"), kept for clients without a
/// hybrid; it recommends adding nothing. With `--post-quantum-only` there is no warning at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_audit_warns_of_no_key_exchange_but_curve25519_and_none_post_quantum_only() {
    let dir = tempdir();
    // The check finds key exchange warnings where there are some: Debian 12's sshd offers
    // curve25519, ECDH and Diffie-Hellman beside sntrup761.
    let stock = audit(TestSshd::start(dir.path(), &[], "").await.port).await;
    let warned = findings(&stock, &["kex"], "warn");
    assert!(
        warned.iter().any(|w| w.contains("ecdh-sha2-nistp256")),
        "{warned:#?}"
    );

    let relay = TestRelay::start(&dir.path().join("relay")).await;
    let report = audit(relay.addr.port()).await;
    let offered: Vec<&str> = report["kex"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|k| k["algorithm"].as_str())
        .collect();
    assert_eq!(
        offered.get(..3),
        Some(
            &[
                "mlkem768x25519-sha256",
                "sntrup761x25519-sha512",
                "sntrup761x25519-sha512@openssh.com"
            ][..]
        ),
        "{offered:?}"
    );
    for warning in findings(&report, &["kex"], "warn") {
        assert!(
            warning.contains("curve25519-sha256") && warning.contains("post-quantum"),
            "a key exchange warning other than curve25519's: {warning}"
        );
    }
    let add = &report["recommendations"];
    for level in ["critical", "warning", "informational"] {
        assert!(
            add[level]["add"]["kex"]
                .as_array()
                .is_none_or(Vec::is_empty),
            "ssh-audit recommends adding a key exchange: {add:#}"
        );
    }

    let strict = TestRelay::start_with(&dir.path().join("relay-pq"), "127.0.0.1:0", |c| {
        c.post_quantum_only = true
    })
    .await;
    let report = audit(strict.addr.port()).await;
    let warned = findings(&report, &["kex"], "warn");
    let failed = findings(&report, &["kex", "key", "enc", "mac"], "fail");
    assert!(warned.is_empty(), "key exchange warnings: {warned:#?}");
    assert!(failed.is_empty(), "failures: {failed:#?}");
}
