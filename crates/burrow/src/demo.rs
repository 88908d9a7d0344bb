//! `burrow demo`: a relay, a demo device with its agent, and an operator, all on loopback in a
//! temporary directory; prints stock `ssh` commands that reach the device, runs until Ctrl-C.

use std::path::Path;
use std::time::Duration;

use burrow_agent::AgentOptions;
use burrow_agent::status::State;
use burrow_proto::agent_config::{AgentConfig, Expose, Seconds};
use burrow_relay::{Relay, RelayConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::cli::DemoArgs;
use crate::exit::{self, Failure, Result};

const DEVICE: &str = "demo-pi";
const OPERATOR: &str = "demo-op";
const HOST_ALIAS: &str = "burrow-demo";

fn fail(what: &str) -> impl FnOnce(std::io::Error) -> Failure + '_ {
    move |e| Failure::new(exit::OSERR, format!("demo: {what}: {e}"))
}

pub async fn run(args: DemoArgs, shutdown: CancellationToken) -> Result {
    let dir = tempfile::Builder::new()
        .prefix("burrow-demo-")
        .tempdir()
        .map_err(fail("cannot create a temporary directory"))?;
    let root = dir.path();

    // Relay on a free loopback port.
    let relay = Relay::open(RelayConfig::new(root.join("relay")))
        .await
        .map_err(|e| Failure::new(exit::SOFTWARE, e.to_string()))?;
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(fail("cannot listen on loopback"))?;
    let relay_addr = listener.local_addr().map_err(fail("no local address"))?;
    let relay_task = tokio::spawn(relay.clone().run(listener, shutdown.clone()));

    // Keys and registry.
    let device_key = root.join("device_key");
    let operator_key = root.join("operator_key");
    for (path, _) in [(&device_key, DEVICE), (&operator_key, OPERATOR)] {
        burrow_io::keys::write_private_key(path, &burrow_io::keys::generate_ed25519())
            .map_err(|e| Failure::new(exit::SOFTWARE, e.to_string()))?;
    }
    let public = |p: &Path| burrow_io::keys::load_private_key(p).map(|k| k.public_key().clone());
    let dev_pub = public(&device_key).map_err(|e| Failure::new(exit::SOFTWARE, e.to_string()))?;
    let op_pub = public(&operator_key).map_err(|e| Failure::new(exit::SOFTWARE, e.to_string()))?;
    let store = relay.store();
    store
        .add_device(DEVICE, &[dev_pub])
        .and_then(|_| store.add_operator(OPERATOR, &[op_pub], None, &["*".to_string()], false))
        .map_err(|e| Failure::new(exit::SOFTWARE, e.to_string()))?;

    // The demo device's services: a built-in web page, and this machine's sshd if one runs.
    let web = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(fail("cannot listen on loopback"))?;
    let web_addr = web.local_addr().map_err(fail("no local address"))?;
    tokio::spawn(serve_hello(web, shutdown.clone()));
    let sshd_running = tokio::time::timeout(
        Duration::from_millis(500),
        TcpStream::connect("127.0.0.1:22"),
    )
    .await
    .is_ok_and(|r| r.is_ok());

    let mut config = AgentConfig::new(relay_addr.to_string(), DEVICE, device_key.clone());
    config.host_key = Some(relay.fingerprint());
    config.probe_interval = Some(Seconds::Whole(10));
    config.expose.push(Expose {
        port: 80,
        to: Some(web_addr.to_string()),
        remote_port: None,
        bind: None,
    });
    if sshd_running {
        config.expose.push(Expose {
            port: 22,
            to: Some("127.0.0.1:22".into()),
            remote_port: None,
            bind: None,
        });
    }
    // An emulated router on a pty, served as the device's serial console.
    let router =
        crate::demo_router::start().map_err(fail("cannot open a pty for the demo router"))?;
    config
        .console
        .push(burrow_proto::agent_config::Console::new(
            "console", router, 9600,
        ));
    let status_file = root.join("agent-status.json");
    let agent_task = tokio::spawn(burrow_agent::run(
        config,
        AgentOptions::new(status_file.clone()),
        shutdown.clone(),
    ));
    wait_until_up(&status_file).await?;

    // An ssh_config and known_hosts so stock ssh needs no flags beyond -F.
    let known_hosts = root.join("known_hosts");
    std::fs::write(
        &known_hosts,
        format!(
            "[127.0.0.1]:{} {}\n",
            relay_addr.port(),
            relay.host_public_key()
        ),
    )
    .map_err(fail("cannot write known_hosts"))?;
    let ssh_config = root.join("ssh_config");
    std::fs::write(
        &ssh_config,
        format!(
            "Host {HOST_ALIAS}\n  HostName 127.0.0.1\n  Port {port}\n  User {OPERATOR}\n  IdentityFile {key}\n  IdentitiesOnly yes\n  UserKnownHostsFile {kh}\n  StrictHostKeyChecking yes\n\nHost {DEVICE}\n  ProxyJump {HOST_ALIAS}\n  UserKnownHostsFile /dev/null\n  StrictHostKeyChecking no\n",
            port = relay_addr.port(),
            key = operator_key.display(),
            kh = known_hosts.display(),
        ),
    )
    .map_err(fail("cannot write ssh_config"))?;

    let cfg = ssh_config.display();
    let user = std::env::var("USER").unwrap_or_else(|_| "root".into());
    println!();
    println!(
        "burrow demo is running: relay {relay_addr} (host key {}), device {DEVICE} online.",
        relay.fingerprint()
    );
    println!(
        "Files are in {}. Try these in another terminal:",
        root.display()
    );
    println!();
    println!("  # what can operator {OPERATOR} reach?");
    println!("  ssh -F {cfg} {HOST_ALIAS} ls");
    println!();
    println!("  # the device's web page, through the relay (stdio forwarding, like ssh -W):");
    println!("  printf 'GET / HTTP/1.0\\r\\n\\r\\n' | ssh -F {cfg} -W {DEVICE}:80 {HOST_ALIAS}");
    println!();
    println!("  # a local port for a browser or curl (then open http://127.0.0.1:8080/):");
    println!("  ssh -F {cfg} -N -L 8080:{DEVICE}:80 {HOST_ALIAS}");
    println!();
    println!("  # the device's serial console (an emulated router); Ctrl-E c ? shows the escapes:");
    println!("  ssh -F {cfg} -t -l {OPERATOR}:{DEVICE} {HOST_ALIAS}");
    println!();
    println!("  # the menu of consoles you may use:");
    println!("  ssh -F {cfg} -t {HOST_ALIAS}");
    if sshd_running {
        println!();
        println!("  # a shell on the device through its own sshd (ssh -J):");
        println!("  ssh -F {cfg} {user}@{DEVICE}");
    }
    println!();
    let checked = self_check(&ssh_config).await;
    match &checked {
        Ok(body) => {
            println!("self-check: stock ssh -W {DEVICE}:80 through the relay answered: {body:?}")
        }
        Err(why) => println!("self-check FAILED: {why}"),
    }
    println!();
    if args.check {
        shutdown.cancel();
    } else {
        println!("Press Ctrl-C to stop; everything above is removed then.");
    }
    shutdown.cancelled().await;
    let _ = agent_task.await;
    let _ = relay_task.await;
    // Said once it is true: after Ctrl-C a silent exit leaves the user wondering what is left.
    let shown = dir.path().display().to_string();
    match dir.close() {
        Ok(()) => println!("demo stopped: relay, device and operator shut down; {shown} removed"),
        Err(e) => eprintln!("demo stopped, but {shown} could not be removed: {e}"),
    }
    // `--check` is a check: it fails when the self-check failed or could not run.
    match checked {
        Err(why) if args.check => Err(Failure::new(
            exit::SOFTWARE,
            format!("demo self-check failed: {why}"),
        )),
        _ => Ok(()),
    }
}

async fn wait_until_up(status_file: &Path) -> Result {
    for _ in 0..200 {
        if burrow_agent::status::read(status_file).is_ok_and(|s| s.state == State::Up) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let last = burrow_agent::status::read(status_file)
        .ok()
        .and_then(|s| s.last_error)
        .unwrap_or_else(|| "no status".into());
    Err(Failure::new(
        exit::SOFTWARE,
        format!("demo agent did not come up within 10 s: {last}"),
    ))
}

/// Runs the web page command once with the real ssh client, so the demo proves itself.
/// Returns the page's body, or why the check failed or could not run.
async fn self_check(ssh_config: &Path) -> std::result::Result<String, String> {
    let mut child = match tokio::process::Command::new("ssh")
        .arg("-F")
        .arg(ssh_config)
        .args([
            "-o",
            "BatchMode=yes",
            "-W",
            &format!("{DEVICE}:80"),
            HOST_ALIAS,
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            return Err(format!(
                "cannot run ssh: {e} (install the OpenSSH client: apt install openssh-client)"
            ));
        }
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(b"GET / HTTP/1.0\r\n\r\n").await;
    }
    match tokio::time::timeout(Duration::from_secs(20), child.wait_with_output()).await {
        Ok(Ok(out)) if String::from_utf8_lossy(&out.stdout).contains("hello from") => {
            let body = String::from_utf8_lossy(&out.stdout);
            Ok(body
                .split("\r\n\r\n")
                .nth(1)
                .unwrap_or("")
                .trim()
                .to_string())
        }
        Ok(Ok(out)) => Err(format!(
            "ssh exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("ssh did not finish within 20 s".into()),
    }
}

/// A tiny HTTP/1.0 server: the demo device's "web interface".
async fn serve_hello(listener: TcpListener, shutdown: CancellationToken) {
    loop {
        let (mut tcp, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
        };
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(1024);
            let mut chunk = [0u8; 1024];
            // Read the request head (bounded), then answer.
            while buf.len() < 8192 && !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                match tcp.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
                }
            }
            let body = format!("hello from {DEVICE}, through burrow\n");
            let reply = format!(
                "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = tcp.write_all(reply.as_bytes()).await;
            let _ = tcp.shutdown().await;
        });
    }
}
