//! Helpers of the web console's tests: a relay serving the console with devices and operators
//! of every role, raw HTTP/1.1 and WebSocket clients, one-time links and sessions.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;

use burrow_proto::agent_config::Console;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::common::*;

pub struct Site {
    pub dir: tempfile::TempDir,
    pub relay: TestRelay,
    pub web: std::net::SocketAddr,
    pub base: String,
    pub router: FakeRouter,
    pub _agent: TestAgent,
    /// The device whose agent the browser test stops.
    pub other_agent: Option<TestAgent>,
    pub configs: Vec<(String, PathBuf)>,
    pub _app: tokio::process::Child,
}

impl Site {
    pub fn config(&self, who: &str) -> &Path {
        &self.configs.iter().find(|(n, _)| n == who).unwrap().1
    }
}

/// A relay with the web console on loopback; device `pi` with a pty console (a simulated
/// router), device `edge` (label `site=osaka`) with an agent of its own; operators alice and
/// bob (everything), vera (role viewer), olga (only `edge*`), lena (only `site=osaka`), adam
/// (everything, role admin).
pub async fn site() -> Site {
    let dir = tempdir();
    let relay = TestRelay::start(&dir.path().join("relay")).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let web = listener.local_addr().unwrap();
    // Chromium resolves every *.localhost name to loopback: host routing is tried as
    // PORT--NAME.localhost.
    let base = format!("http://localhost:{}", web.port());
    let prepared = burrow_relay::web::prepare(
        listener,
        burrow_relay::web::WebConfig {
            public_url: Some(base.clone()),
            device_domain: Some("localhost".into()),
            ..Default::default()
        },
    )
    .unwrap();
    tokio::spawn(
        relay
            .relay
            .clone()
            .serve_web(prepared, relay.shutdown.clone()),
    );
    let pi_key = keypair(dir.path(), "pi");
    let edge_key = keypair(dir.path(), "edge");
    relay.add_device("pi", &pi_key);
    relay.add_device("edge", &edge_key);
    let mut configs = Vec::new();
    for (name, allow) in [
        ("alice", "*"),
        ("bob", "*"),
        ("vera", "*"),
        ("olga", "edge*"),
        ("lena", "site=osaka"),
        ("adam", "*"),
    ] {
        let key = keypair(dir.path(), name);
        relay.add_operator(name, &key, &[allow]);
        configs.push((name.to_string(), ssh_config(dir.path(), &relay, name, &key)));
    }
    let (ok, _, err) = relay.cli(&["operator", "set", "vera", "--role", "viewer"]);
    assert!(ok, "{err}");
    let (ok, _, err) = relay.cli(&["operator", "set", "adam", "--role", "admin"]);
    assert!(ok, "{err}");
    let (ok, _, err) = relay.cli(&["device", "label", "edge", "site=osaka"]);
    assert!(ok, "{err}");
    let hash = burrow_relay::admin::hash_password("olga's password").unwrap();
    relay
        .relay
        .store()
        .set_operator_password("olga", Some(&hash))
        .unwrap();
    let router = FakeRouter::start(&dir.path().join("ttyUSB0"));
    // A small web app on the device, exposed as pi:8080.
    let mut app = tokio::process::Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/web/device_app.py"))
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3");
    let mut first = String::new();
    BufReader::new(app.stdout.as_mut().unwrap())
        .read_line(&mut first)
        .await
        .unwrap();
    let app_port: u16 = first.trim().parse().expect("the app's port");
    let fp = relay.relay.fingerprint();
    let mut config = agent_config(&relay.addr.to_string(), "pi", &pi_key, &fp);
    expose(
        &mut config,
        8080,
        std::net::SocketAddr::from(([127, 0, 0, 1], app_port)),
    );
    // Its power: a command that notes each switch in a file the browser test asks about.
    let mut console = Console::new("console", router.path.clone(), 9600);
    console.power.push(recording_outlet(
        Some("pdu-3"),
        &dir.path().join("power-calls"),
    ));
    config.console.push(console);
    let agent = TestAgent::start(dir.path(), config);
    agent.wait_up().await;
    let edge = TestAgent::start(
        dir.path(),
        agent_config(&relay.addr.to_string(), "edge", &edge_key, &fp),
    );
    edge.wait_up().await;
    relay.wait_online("edge").await;
    Site {
        dir,
        relay,
        web,
        base,
        router,
        _agent: agent,
        other_agent: Some(edge),
        configs,
        _app: app,
    }
}

/// One HTTP/1.1 request on its own connection; returns (status, head, body).
pub async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        req.push_str(&format!(
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body);
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    // A WebSocket upgrade stays open: read what came within a moment.
    let _ = tokio::time::timeout(WAIT, tcp.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

/// The one-time link `ssh OPERATOR@relay web` prints.
pub async fn link(config: &Path) -> String {
    let (ok, out, err) = ssh_output(config, &["relay", "web"], b"").await;
    assert!(ok, "ssh relay web: {err}");
    let out = String::from_utf8_lossy(&out).to_string();
    out.lines()
        .find(|l| l.contains("/login/link#"))
        .unwrap_or_else(|| panic!("no link in {out:?}"))
        .trim()
        .to_string()
}

/// Exchanges a link's secret as the link page's script does; returns (status, cookie).
pub async fn redeem(web: std::net::SocketAddr, link: &str) -> (u16, Option<String>) {
    let token = link.split_once('#').unwrap().1;
    let origin = format!("http://{web}");
    let (status, head, _) = http(
        web,
        "POST",
        "/login/link",
        &[("Origin", &origin)],
        &format!("token={token}"),
    )
    .await;
    let cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .map(|c| c.split(';').next().unwrap().to_string());
    (status, cookie)
}

/// The page's CSRF token (its `<meta name="csrf">`).
pub fn csrf_of(page: &str) -> String {
    page.split("name=\"csrf\" content=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("a CSRF token on the page")
        .to_string()
}

/// A logged-in operator's session cookie.
pub async fn session(s: &Site, who: &str) -> String {
    let (_, cookie) = redeem(s.web, &link(s.config(who)).await).await;
    cookie.expect("a session cookie")
}

/// The web console of `relay` on a loopback port.
pub async fn serve_web(relay: &TestRelay) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let web = listener.local_addr().unwrap();
    let prepared = burrow_relay::web::prepare(listener, Default::default()).unwrap();
    tokio::spawn(
        relay
            .relay
            .clone()
            .serve_web(prepared, relay.shutdown.clone()),
    );
    web
}

/// Opens a console WebSocket by hand (a masked client, as RFC 6455 asks), past the 101.
pub async fn ws_open(web: std::net::SocketAddr, path: &str, cookie: &str) -> tokio::net::TcpStream {
    let mut tcp = tokio::net::TcpStream::connect(web).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {web}\r\nCookie: {cookie}\r\nOrigin: http://{web}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        assert_eq!(tcp.read(&mut b).await.unwrap(), 1, "the handshake's answer");
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    tcp
}

/// Sends one masked text frame.
pub async fn ws_send(tcp: &mut tokio::net::TcpStream, text: &str) {
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let mut frame = vec![0x81];
    let len = text.len();
    if len < 126 {
        frame.push(0x80 | len as u8);
    } else {
        frame.push(0x80 | 126);
        frame.extend_from_slice(&(len as u16).to_be_bytes());
    }
    frame.extend_from_slice(&mask);
    frame.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    tcp.write_all(&frame).await.unwrap();
}

/// Reads what the relay sends until `needle` shows (frame headers and all, as text).
pub async fn ws_until(tcp: &mut tokio::net::TcpStream, needle: &str) -> String {
    let mut seen = Vec::new();
    let found = tokio::time::timeout(WAIT, async {
        let mut buf = [0u8; 4096];
        loop {
            let n = tcp.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                return false;
            }
            seen.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&seen).contains(needle) {
                return true;
            }
        }
    })
    .await
    .unwrap_or(false);
    let text = String::from_utf8_lossy(&seen).to_string();
    assert!(found, "{needle:?} never came: {text:?}");
    text
}
