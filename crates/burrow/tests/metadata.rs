//! On-demand access: the agent follows a local HTTP server that answers like SORACOM's metadata
//! service, against a real OpenSSH sshd (the seed's setup) and against a burrow relay.

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use burrow_agent::status::{State, Status};
use burrow_proto::agent_config::{AgentConfig, Seconds};
use burrow_proto::metadata::{MetadataConfig, MetadataKind};
use common::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

const IMSI: &str = "440103123456789";
const OTHER_IMSI: &str = "440103987654321";

/// What the fake metadata service answers to `/v1/userdata`.
#[derive(Clone)]
enum Answer {
    /// 200 with this body.
    Body(String),
    /// This status with a short body.
    Status(u16),
    /// Accept, read the request, never answer.
    Hang,
}

/// A local HTTP server that answers like SORACOM's metadata service for one SIM.
struct FakeSoracom {
    addr: SocketAddr,
    userdata: Arc<Mutex<Answer>>,
    /// `/v1/userdata` requests answered or hung so far.
    reads: Arc<AtomicUsize>,
}

impl FakeSoracom {
    async fn start(imsi: &str) -> FakeSoracom {
        Self::start_with(imsi, None).await
    }

    /// As [`FakeSoracom::start`], over TLS when `tls` is given.
    async fn start_with(imsi: &str, tls: Option<tokio_rustls::TlsAcceptor>) -> FakeSoracom {
        let userdata = Arc::new(Mutex::new(Answer::Body(String::new())));
        let reads = Arc::new(AtomicUsize::new(0));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let subscriber = format!(r#"{{"imsi":"{imsi}","msisdn":"812000000000","tags":{{}}}}"#);
        let (data, count) = (userdata.clone(), reads.clone());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (data, count, subscriber, tls) =
                    (data.clone(), count.clone(), subscriber.clone(), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        None => answer(tcp, &data, &count, subscriber).await,
                        Some(tls) => {
                            if let Ok(stream) = tls.accept(tcp).await {
                                answer(stream, &data, &count, subscriber).await;
                            }
                        }
                    }
                });
            }
        });
        FakeSoracom {
            addr,
            userdata,
            reads,
        }
    }

    fn set(&self, answer: Answer) {
        *self.userdata.lock().unwrap() = answer;
    }

    /// Waits until the agent has read the user data `n` more times.
    async fn wait_reads(&self, n: usize) {
        let target = self.reads.load(Ordering::SeqCst) + n;
        eventually("the agent to read the metadata again", || {
            (self.reads.load(Ordering::SeqCst) >= target).then_some(())
        })
        .await;
    }

    /// An agent config reading this server every 0.2 s.
    fn agent_config(&self) -> AgentConfig {
        let mut config = AgentConfig::new("", "", PathBuf::new());
        config.backoff_min = Some(Seconds::Fraction(0.1));
        config.backoff_max = Some(Seconds::Fraction(0.5));
        config.metadata = Some(MetadataConfig {
            kind: MetadataKind::Soracom,
            url: Some(format!("http://{}", self.addr)),
            id: None,
            interval: Some(Seconds::Fraction(0.2)),
            timeout: Some(Seconds::Fraction(1.0)),
            ca_file: None,
        });
        config
    }
}

/// Answers one request: the subscriber document, the user data (any other path serves the user
/// data too, as a plain URL would), or 404.
async fn answer<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    data: &Mutex<Answer>,
    count: &AtomicUsize,
    subscriber: String,
) {
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let line = String::from_utf8_lossy(&request)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    let answer = if line.starts_with("GET /v1/subscriber ") {
        Answer::Body(subscriber)
    } else if line.starts_with("GET /") {
        count.fetch_add(1, Ordering::SeqCst);
        data.lock().unwrap().clone()
    } else {
        Answer::Status(404)
    };
    let (status, body) = match answer {
        Answer::Body(b) => ("200 OK".to_string(), b),
        Answer::Status(code) => (format!("{code} Oops"), "error".to_string()),
        Answer::Hang => {
            // Hold the connection open, unanswered, until the test's runtime ends.
            std::future::pending::<()>().await;
            return;
        }
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// The seed's setup: a stock sshd that accepts the key to be delivered (RSA, PKCS#1 PEM), a
/// device-side echo service, and the metadata service for [`IMSI`].
struct SeedSite {
    dir: tempfile::TempDir,
    delivered: PathBuf,
    sshd: TestSshd,
    service: SocketAddr,
    meta: FakeSoracom,
}

impl SeedSite {
    async fn start() -> SeedSite {
        Self::start_with("").await
    }

    /// As [`SeedSite::start`], with `extra` lines in the sshd's config.
    async fn start_with(extra: &str) -> SeedSite {
        let dir = tempdir();
        // The seed's operators hand out EC2 key pairs: RSA in PKCS#1 PEM.
        let delivered = dir.path().join("delivered");
        let made = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "rsa", "-b", "2048", "-m", "PEM", "-N", "", "-f"])
            .arg(&delivered)
            .status()
            .unwrap();
        assert!(made.success());
        assert!(
            std::fs::read_to_string(&delivered)
                .unwrap()
                .starts_with("-----BEGIN RSA PRIVATE KEY-----")
        );
        let sshd = TestSshd::start(dir.path(), &[&delivered], extra).await;
        SeedSite {
            service: echo_server().await,
            meta: FakeSoracom::start(IMSI).await,
            dir,
            delivered,
            sshd,
        }
    }
}

impl SeedSite {
    /// The seed's user data: one `ssh` entry for `imsi`, forwarding `remote_port` to the service.
    fn userdata(&self, imsi: &str, remote_port: u16) -> String {
        seed_userdata(imsi, remote_port, self.service, &self.sshd, &self.delivered)
    }
}

/// The seed's user data: one `ssh` entry for `imsi`.
fn seed_userdata(
    imsi: &str,
    remote_port: u16,
    service: SocketAddr,
    sshd: &TestSshd,
    key: &Path,
) -> String {
    let entry = serde_json::json!({
        "portForwardParam": format!("{remote_port}:{service} -p {} {}@127.0.0.1", sshd.port, current_user()),
        "privateKey": std::fs::read_to_string(key).unwrap(),
    });
    serde_json::json!({"ssh": {"imsis": {imsi: entry}}}).to_string()
}

fn key_file(agent: &TestAgent) -> PathBuf {
    agent
        .status_file
        .parent()
        .unwrap()
        .join(burrow_agent::metadata::KEY_FILE)
}

fn key_inode(agent: &TestAgent) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(key_file(agent)).unwrap().ino()
}

async fn wait_status(agent: &TestAgent, what: &str, check: impl Fn(&Status) -> bool) -> Status {
    eventually(what, || agent.status().filter(|s| check(s))).await
}

async fn wait_closed(addr: &str) {
    eventually(&format!("{addr} to be closed"), || {
        std::net::TcpStream::connect(addr).is_err().then_some(())
    })
    .await;
}

async fn wait_echo(addr: &str, payload: &[u8]) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if let Ok(out) = roundtrip(addr, payload).await
            && out == payload
        {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no echo through {addr}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Test 1 of the issue: empty, the seed's entry appears, it changes port, it disappears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_entry_starts_moves_and_stops_a_stock_sshd_tunnel() {
    let site = SeedSite::start().await;
    let agent = TestAgent::start(site.dir.path(), site.meta.agent_config());

    // Empty user data: no tunnel, and the agent says why.
    let status = wait_status(&agent, "a first read", |s| {
        s.metadata.as_ref().is_some_and(|m| m.last_fetch.is_some())
    })
    .await;
    let m = status.metadata.clone().unwrap();
    assert!(m.ok, "{m:?}");
    assert_eq!(m.id.as_deref(), Some(IMSI));
    assert_eq!(m.result, format!("no entry for {IMSI}"));
    assert_eq!((status.state, m.tunnel), (State::Idle, None));
    assert!(!key_file(&agent).exists());

    // The seed's entry for this SIM: the agent logs in to the sshd and the forward works.
    let port1 = free_port();
    site.meta.set(Answer::Body(site.userdata(IMSI, port1)));
    let status = agent.wait_up().await;
    let m = status.metadata.clone().unwrap();
    let want_tunnel = format!(
        "ssh -R {port1}:{} {}@127.0.0.1:{}",
        site.service,
        current_user(),
        site.sshd.port
    );
    assert_eq!(m.tunnel.as_deref(), Some(want_tunnel.as_str()));
    assert!(m.host_key.unwrap().contains("TRUSTED ON FIRST USE"));
    wait_echo(&format!("127.0.0.1:{port1}"), b"seed tunnel").await;
    let mode = std::fs::metadata(key_file(&agent))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(
        std::fs::read_to_string(key_file(&agent)).unwrap(),
        std::fs::read_to_string(&site.delivered).unwrap()
    );
    let rendered = burrow_agent::status::render(&status);
    assert!(rendered.contains("from metadata: ssh -R"), "{rendered}");

    // Same entry read again: nothing restarts.
    site.meta.wait_reads(3).await;
    let status = agent.status().unwrap();
    assert_eq!(
        (status.state, status.reconnects),
        (State::Up, 0),
        "{status:?}"
    );
    assert!(status.metadata.unwrap().result.contains("unchanged"));

    // The entry moves to another port: the old one closes, the new one works.
    let port2 = free_port();
    site.meta.set(Answer::Body(site.userdata(IMSI, port2)));
    wait_echo(&format!("127.0.0.1:{port2}"), b"moved").await;
    wait_closed(&format!("127.0.0.1:{port1}")).await;

    // The entry goes away: tunnel stopped, key deleted.
    site.meta
        .set(Answer::Body(r#"{"ssh":{"imsis":{}}}"#.into()));
    wait_status(&agent, "the agent to go idle", |s| s.state == State::Idle).await;
    wait_closed(&format!("127.0.0.1:{port2}")).await;
    assert!(!key_file(&agent).exists());
    let status = agent.status().unwrap();
    assert_eq!(
        (status.last_error.as_deref(), status.relay.as_str()),
        (None, "")
    );
    assert_eq!(status.metadata.as_ref().unwrap().tunnel, None);
    let rendered = burrow_agent::status::render(&status);
    assert!(
        rendered.contains("idle (no tunnel wanted)") && rendered.contains("tunnel   none"),
        "{rendered}"
    );
    agent.stop().await;
}

/// Test 2: malformed JSON, HTTP 500 and a timeout leave a working tunnel alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_errors_keep_the_tunnel_up() {
    let site = SeedSite::start().await;
    let port = free_port();
    let good = site.userdata(IMSI, port);
    site.meta.set(Answer::Body(good.clone()));
    let agent = TestAgent::start(site.dir.path(), site.meta.agent_config());
    agent.wait_up().await;
    let addr = format!("127.0.0.1:{port}");
    wait_echo(&addr, b"before").await;
    let inode = key_inode(&agent);

    for (answer, shown) in [
        (Answer::Body(good[..good.len() / 2].to_string()), "not JSON"),
        (Answer::Status(500), "HTTP 500"),
        (Answer::Hang, "no complete answer"),
        // A broken entry for this SIM is refused too: no restart from bad data.
        (
            Answer::Body(format!(
                r#"{{"ssh":{{"imsis":{{"{IMSI}":{{"privateKey":"x"}}}}}}}}"#
            )),
            "portForwardParam",
        ),
    ] {
        site.meta.set(answer);
        let status = wait_status(&agent, shown, |s| {
            s.metadata
                .as_ref()
                .is_some_and(|m| !m.ok && m.result.contains(shown))
        })
        .await;
        assert_eq!(status.state, State::Up, "{status:?}");
        assert!(
            status
                .metadata
                .as_ref()
                .unwrap()
                .result
                .contains("keeping the current tunnel")
        );
        assert!(burrow_agent::status::render(&status).contains("FAILED"));
        wait_echo(&addr, shown.as_bytes()).await;
        assert!(key_file(&agent).exists());
    }

    // Back to the same entry: still the same session.
    site.meta.set(Answer::Body(good));
    let status = wait_status(&agent, "a good read", |s| {
        s.metadata.as_ref().is_some_and(|m| m.ok)
    })
    .await;
    assert_eq!(status.reconnects, 0, "{status:?}");
    assert_eq!(key_inode(&agent), inode);
    let key = key_file(&agent);
    agent.stop().await;
    // A stopped agent leaves no delivered key behind.
    assert!(!key.exists());
}

/// Test 3: an entry for another SIM only starts nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_sims_entry_starts_nothing() {
    let site = SeedSite::start().await;
    let port = free_port();
    site.meta.set(Answer::Body(site.userdata(OTHER_IMSI, port)));
    let agent = TestAgent::start(site.dir.path(), site.meta.agent_config());
    site.meta.wait_reads(3).await;
    let status = wait_status(&agent, "a read", |s| {
        s.metadata.as_ref().is_some_and(|m| m.last_fetch.is_some())
    })
    .await;
    assert_eq!(status.state, State::Idle, "{status:?}");
    let m = status.metadata.unwrap();
    assert!(m.ok, "{m:?}");
    assert_eq!(m.result, format!("no entry for {IMSI}"));
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    assert!(!key_file(&agent).exists());
    agent.stop().await;
}

/// Test 4: the burrow-native entry against a burrow relay, reached by an operator with `ssh -W`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burrow_entry_against_a_burrow_relay() {
    let (dir, relay, dev_key, op_key) = relay_with("pi-7", "op").await;
    let service = reply_after_eof_server(uppercase).await;
    let meta = FakeSoracom::start(IMSI).await;
    let entry = serde_json::json!({
        "relay": relay.addr.to_string(),
        "name": "pi-7",
        "host_key": relay.relay.fingerprint(),
        "private_key": std::fs::read_to_string(&dev_key).unwrap(),
        "expose": [{"port": 22, "to": service.to_string()}],
    });
    meta.set(Answer::Body(
        serde_json::json!({"burrow": {"imsis": {IMSI: entry}}}).to_string(),
    ));
    let agent = TestAgent::start(dir.path(), meta.agent_config());
    let status = agent.wait_up().await;
    assert_eq!(status.name, "pi-7");
    let m = status.metadata.unwrap();
    assert_eq!(m.host_key.as_deref(), Some("pinned by the metadata entry"));
    relay.wait_endpoint("pi-7", 22).await;

    let op_cfg = ssh_config(dir.path(), &relay, "op", &op_key);
    let (ok, out, err) = ssh_output(&op_cfg, &["-W", "pi-7:22", "relay"], b"on demand").await;
    assert!(ok, "{err}");
    assert_eq!(out, b"ON DEMAND");

    // Access withdrawn: the device leaves the relay and the key is gone.
    meta.set(Answer::Body(String::new()));
    eventually("pi-7 to go offline", || {
        relay.relay.online_endpoints("pi-7").is_none().then_some(())
    })
    .await;
    wait_status(&agent, "the agent to go idle", |s| s.state == State::Idle).await;
    assert!(!key_file(&agent).exists());
    let (ok, _, err) = ssh_output(&op_cfg, &["-W", "pi-7:22", "relay"], b"again").await;
    assert!(!ok);
    assert!(err.contains("offline"), "{err}");
    agent.stop().await;
}

/// A test CA and a certificate for 127.0.0.1 signed by it, made with the openssl CLI:
/// (CA certificate, server certificate, server key).
fn test_pki(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let p = |f: &str| dir.join(format!("{name}-{f}"));
    let ext = p("ext.cnf");
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl is installed (./test.sh installs it)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let s = |p: PathBuf| p.to_string_lossy().to_string();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"],
        &ec[..],
        &[
            "-keyout",
            &s(p("ca.key")),
            "-out",
            &s(p("ca.pem")),
            "-days",
            "2",
            "-subj",
            "/CN=burrow test CA",
        ],
    ]
    .concat());
    run(&[
        &["req"],
        &ec[..],
        &[
            "-keyout",
            &s(p("server.key")),
            "-out",
            &s(p("server.csr")),
            "-subj",
            "/CN=127.0.0.1",
        ],
    ]
    .concat());
    run(&[
        "x509",
        "-req",
        "-in",
        &s(p("server.csr")),
        "-CA",
        &s(p("ca.pem")),
        "-CAkey",
        &s(p("ca.key")),
        "-CAcreateserial",
        "-out",
        &s(p("server.pem")),
        "-days",
        "2",
        "-extfile",
        &s(ext),
    ]);
    (p("ca.pem"), p("server.pem"), p("server.key"))
}

fn tls_acceptor(cert: &Path, key: &Path) -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// Test 5: `kind = "url"` over https with a private CA; the document is the device's own entry.
/// An agent trusting another CA refuses the server and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_kind_over_https_with_a_private_ca() {
    let (dir, relay, dev_key, op_key) = relay_with("pi-8", "op").await;
    let (ca, cert, key) = test_pki(dir.path(), "good");
    let (other_ca, _, _) = test_pki(dir.path(), "other");
    let service = reply_after_eof_server(uppercase).await;
    let server = FakeSoracom::start_with(IMSI, Some(tls_acceptor(&cert, &key))).await;
    let entry = serde_json::json!({
        "relay": relay.addr.to_string(),
        "private_key": std::fs::read_to_string(&dev_key).unwrap(),
        "host_key": relay.relay.fingerprint(),
        "expose": [{"port": 80, "to": service.to_string()}],
    });
    server.set(Answer::Body(
        serde_json::json!({"burrow": entry}).to_string(),
    ));
    let config_for = |ca: &Path| {
        let mut config = server.agent_config();
        config.name = "pi-8".into();
        let m = config.metadata.as_mut().unwrap();
        m.kind = MetadataKind::Url;
        m.url = Some(format!(
            "https://127.0.0.1:{}/devices/pi-8.json",
            server.addr.port()
        ));
        m.ca_file = Some(ca.to_path_buf());
        config
    };

    let wrong_dir = dir.path().join("wrong");
    let wrong = TestAgent::start(&wrong_dir, config_for(&other_ca));
    let status = wait_status(&wrong, "a refused TLS handshake", |s| {
        s.metadata.as_ref().is_some_and(|m| m.last_fetch.is_some())
    })
    .await;
    let m = status.metadata.unwrap();
    assert!(!m.ok && m.result.contains("TLS handshake"), "{m:?}");
    assert_eq!(status.state, State::Idle);
    wrong.stop().await;

    let agent = TestAgent::start(dir.path(), config_for(&ca));
    let status = agent.wait_up().await;
    assert_eq!(status.name, "pi-8");
    relay.wait_endpoint("pi-8", 80).await;
    let op_cfg = ssh_config(dir.path(), &relay, "op", &op_key);
    let (ok, out, err) = ssh_output(&op_cfg, &["-W", "pi-8:80", "relay"], b"over https").await;
    assert!(ok, "{err}");
    assert_eq!(out, b"OVER HTTPS");
    agent.stop().await;
}

/// Stopping the agent does not wait for a metadata read that hangs (a dead cellular link).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_abandons_a_hung_read() {
    let dir = tempdir();
    let meta = FakeSoracom::start(IMSI).await;
    meta.set(Answer::Hang);
    let mut config = meta.agent_config();
    // Far longer than the test's own bound: only abandoning the read lets the agent stop.
    config.metadata.as_mut().unwrap().timeout = Some(Seconds::Whole(3600));
    let agent = TestAgent::start(dir.path(), config);
    meta.wait_reads(1).await;
    agent.shutdown.cancel();
    let ended = tokio::time::timeout(WAIT, agent.task).await;
    assert!(
        matches!(ended, Ok(Ok(Ok(())))),
        "the agent did not stop: {ended:?}"
    );
}

/// `BIND:PORT:HOST:PORT` in the seed's entry: the sshd (with `GatewayPorts clientspecified`)
/// listens on that address only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_entry_with_a_bind_address() {
    let site = SeedSite::start_with("GatewayPorts clientspecified").await;
    let port = free_port();
    let entry = serde_json::json!({
        "portForwardParam": format!(
            "127.0.0.2:{port}:{} -p {} {}@127.0.0.1",
            site.service,
            site.sshd.port,
            current_user()
        ),
        "privateKey": std::fs::read_to_string(&site.delivered).unwrap(),
    });
    site.meta.set(Answer::Body(
        serde_json::json!({"ssh": {"imsis": {IMSI: entry}}}).to_string(),
    ));
    let agent = TestAgent::start(site.dir.path(), site.meta.agent_config());
    let status = agent.wait_up().await;
    let tunnel = status.metadata.unwrap().tunnel.unwrap();
    assert!(
        tunnel.starts_with(&format!("ssh -R 127.0.0.2:{port}:")),
        "{tunnel}"
    );
    wait_echo(&format!("127.0.0.2:{port}"), b"bound").await;
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    agent.stop().await;
}
