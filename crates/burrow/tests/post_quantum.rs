//! Post-quantum key exchange against software burrow did not write, in both roles: stock
//! OpenSSH (Debian 12's 9.2 knows sntrup761x25519-sha512 under both names, not ML-KEM) to the
//! relay and the agent to a stock sshd; asyncssh (ML-KEM through `cryptography`) to the relay
//! and a burrow client to an asyncssh server, for `mlkem768x25519-sha256`.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use burrow_proto::agent_config::Expose;
use common::*;

/// The `kex: algorithm:` line of `ssh -v` (what OpenSSH negotiated).
fn negotiated_kex(stderr: &str) -> Option<&str> {
    stderr
        .lines()
        .find_map(|l| l.strip_prefix("debug1: kex: algorithm: "))
        .map(str::trim)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_ssh_to_the_relay_negotiates_sntrup761x25519() {
    let (dir, relay, _dev_key, op_key) = relay_with("pi", "op").await;
    let op_cfg = ssh_config(dir.path(), &relay, "op", &op_key);
    // OpenSSH's own order first (Debian's 9.2 puts sntrup761 first, under its standard name),
    // then each name alone: curve25519 stays for clients without a post-quantum method.
    for (forced, expected) in [
        (None, "sntrup761x25519-sha512"),
        (Some("sntrup761x25519-sha512"), "sntrup761x25519-sha512"),
        (
            Some("sntrup761x25519-sha512@openssh.com"),
            "sntrup761x25519-sha512@openssh.com",
        ),
        (Some("curve25519-sha256"), "curve25519-sha256"),
    ] {
        let mut args = vec!["-v"];
        let option = forced.map(|k| format!("KexAlgorithms={k}"));
        if let Some(option) = &option {
            args.extend(["-o", option]);
        }
        args.extend(["relay", "ls"]);
        let (ok, out, err) = ssh_output(&op_cfg, &args, b"").await;
        assert!(ok, "{forced:?}: {err}");
        assert!(String::from_utf8_lossy(&out).contains("pi"), "{forced:?}");
        assert_eq!(negotiated_kex(&err), Some(expected), "{forced:?}: {err}");
    }
    // A relay with --post-quantum-only turns a curve25519-only client away, and says why.
    let strict = TestRelay::start_with(&dir.path().join("relay-pq"), "127.0.0.1:0", |c| {
        c.post_quantum_only = true
    })
    .await;
    strict.add_operator("op", &op_key, &["*"]);
    let strict_cfg = ssh_config(&dir.path().join("relay-pq"), &strict, "op", &op_key);
    let (ok, _, err) = ssh_output(
        &strict_cfg,
        &["-o", "KexAlgorithms=curve25519-sha256", "relay", "ls"],
        b"",
    )
    .await;
    assert!(!ok);
    assert!(err.contains("no matching key exchange method"), "{err}");
    let (ok, _, err) = ssh_output(&strict_cfg, &["-v", "relay", "ls"], b"").await;
    assert!(ok, "{err}");
    assert_eq!(
        negotiated_kex(&err),
        Some("sntrup761x25519-sha512"),
        "{err}"
    );
}

/// The agent against an sshd that offers nothing but sntrup761x25519: the tunnel comes up and
/// carries bytes, so that method was negotiated and agreed on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_to_stock_sshd_negotiates_sntrup761x25519() {
    let dir = tempdir();
    let dev_key = keypair(dir.path(), "dev");
    let sshd = TestSshd::start(
        dir.path(),
        &[&dev_key],
        "KexAlgorithms sntrup761x25519-sha512@openssh.com",
    )
    .await;
    let service = reply_after_eof_server(uppercase).await;
    let remote_port = free_port();
    let mut config = sshd.agent_config(dir.path(), &dev_key);
    config.expose.push(Expose {
        port: 22,
        to: Some(service.to_string()),
        remote_port: Some(remote_port),
        bind: None,
    });
    let agent = TestAgent::start(dir.path(), config);
    agent.wait_up().await;
    let out = roundtrip(&format!("127.0.0.1:{remote_port}"), b"post-quantum")
        .await
        .unwrap();
    assert_eq!(out, b"POST-QUANTUM");
    agent.stop().await;
}

/// Whether this Python's asyncssh can do ML-KEM (it needs `cryptography` with ML-KEM).
fn asyncssh_has_mlkem() {
    let out = Command::new("python3")
        .args([
            "-W",
            "ignore",
            "-c",
            "from asyncssh.crypto import mlkem_available; assert mlkem_available",
        ])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "asyncssh without ML-KEM (pip install -U asyncssh cryptography; ./test.sh does): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const ASYNCSSH_CLIENT: &str = r#"
import asyncio, sys, asyncssh
async def main(port, key, known_hosts):
    async with asyncssh.connect('127.0.0.1', int(port), username='op', client_keys=[key],
                                known_hosts=known_hosts,
                                kex_algs=['mlkem768x25519-sha256']) as conn:
        result = await conn.run('ls', check=True)
        print(result.stdout, end='')
asyncio.run(main(*sys.argv[1:]))
"#;

/// asyncssh offering only `mlkem768x25519-sha256` logs in to the relay and runs `ls`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncssh_to_the_relay_negotiates_mlkem768x25519() {
    asyncssh_has_mlkem();
    let (dir, relay, _dev_key, op_key) = relay_with("pi", "op").await;
    let known_hosts = relay.known_hosts(dir.path());
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args(["-W", "ignore", "-c", ASYNCSSH_CLIENT])
            .arg(relay.addr.port().to_string())
            .arg(&op_key)
            .arg(&known_hosts)
            .stdin(Stdio::null())
            .output()
            .expect("python3")
    });
    let out = tokio::time::timeout(WAIT, out).await.unwrap().unwrap();
    assert!(
        out.status.success(),
        "asyncssh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("pi"));
}

const ASYNCSSH_SERVER: &str = r#"
import asyncio, sys, asyncssh
class Server(asyncssh.SSHServer):
    def begin_auth(self, username):
        return True
    def public_key_auth_supported(self):
        return True
    def validate_public_key(self, username, key):
        return username == 'dev' and key == allowed
async def main(public):
    global allowed
    allowed = asyncssh.read_public_key(public)
    host = asyncssh.generate_private_key('ssh-ed25519')
    server = await asyncssh.create_server(Server, '127.0.0.1', 0, server_host_keys=[host],
                                          kex_algs=['mlkem768x25519-sha256'])
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
asyncio.run(main(sys.argv[1]))
"#;

/// A burrow client (the agent's SSH layer) logs in to an asyncssh server that offers only
/// `mlkem768x25519-sha256`: the host key's signature over the exchange hash verified, and the
/// keys derived from the hybrid secret worked both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burrow_client_to_asyncssh_negotiates_mlkem768x25519() {
    asyncssh_has_mlkem();
    let dir = tempdir();
    let dev_key = keypair(dir.path(), "dev");
    let mut server = Command::new("python3")
        .args(["-W", "ignore", "-c", ASYNCSSH_SERVER])
        .arg(dev_key.with_extension("pub"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3");
    let stdout = server.stdout.take().unwrap();
    // Its stdin, held open until the end: asyncssh serves until it closes.
    let _stdin = server.stdin.take();
    let _server = KillOnDrop(server);
    let port = tokio::time::timeout(
        WAIT,
        tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).unwrap();
            line.trim()
                .parse::<u16>()
                .expect("asyncssh prints its port")
        }),
    )
    .await
    .unwrap()
    .unwrap();
    let handle = tokio::time::timeout(
        WAIT,
        burrow_ssh_client(([127, 0, 0, 1], port).into(), "dev", &dev_key),
    )
    .await
    .unwrap();
    handle.disconnect("done");
}
