//! burrow-ssh's session and tokio driver against software we did not write: stock OpenSSH `ssh`
//! logging in to a burrow-ssh server (keys of each type, a password typed wrong then right,
//! `-W` streams checked byte for byte both ways, `-R` with port 0, `~B`), and a burrow-ssh
//! client logging in to OpenSSH's `sshd` (ed25519, ecdsa and rsa-sha2 keys, `tcpip-forward` with
//! port 0 and the connections sshd forwards back, `direct-tcpip`, keepalives).

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use burrow_ssh::auth::{ClientKey, Credential, Decision, Question, method};
use burrow_ssh::channel::{GlobalRequest, Limits, OpenKind, Request};
use burrow_ssh::driver::{self, ChannelMsg, GlobalAnswer, Handle, Handler, Offer};
use burrow_ssh::kex::HostKey;
use burrow_ssh::session::{Session, Side};
use burrow_ssh::ssh_key::PublicKey;
use burrow_ssh::transport::{Config, Role};
use common::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn sha256(bytes: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .to_vec()
}

fn config(role: Role) -> Config {
    Config {
        role,
        software: "burrow_test".into(),
        comment: None,
        kex: burrow_ssh::kex::methods(),
        ciphers: burrow_ssh::crypto::CIPHERS
            .iter()
            .map(|s| s.to_string())
            .collect(),
        host_key: None,
        host_key_check: None,
        rekey_bytes: 1 << 30,
        rekey_time: Duration::from_secs(3600),
        ext_info: None,
        ..Default::default()
    }
}

/// What the test server saw.
#[derive(Default)]
struct Seen {
    refused: Vec<String>,
    breaks: Vec<u32>,
    requests: Vec<String>,
    forwards: Vec<(String, u32)>,
    handles: Vec<Handle>,
}

#[derive(Clone)]
struct ServerHandler {
    key: PublicKey,
    password: &'static str,
    seen: Arc<Mutex<Seen>>,
}

impl Handler for ServerHandler {
    async fn auth(&mut self, question: Question) -> Decision {
        let ok = match &question {
            Question::KeyQuery { key, .. } | Question::Key { key, .. } => {
                key.key_data() == self.key.key_data()
            }
            Question::Password { password, .. } => password.as_str() == self.password,
        };
        if ok {
            Decision::Accept
        } else {
            Decision::Reject
        }
    }

    async fn auth_refused(&mut self, _user: &str, why: &str) {
        self.seen.lock().unwrap().refused.push(why.to_string());
    }

    async fn authenticated(&mut self, _user: &str, handle: &Handle) {
        self.seen.lock().unwrap().handles.push(handle.clone());
    }

    async fn channel_open(&mut self, kind: OpenKind, offer: Offer) {
        match kind {
            // Streams go where the client asks, as sshd would do.
            OpenKind::DirectTcpip { host, port, .. } => {
                tokio::spawn(async move {
                    match TcpStream::connect((host.as_str(), port as u16)).await {
                        Ok(mut tcp) => {
                            let mut ch = offer.accept().unwrap();
                            let _ = tokio::io::copy_bidirectional(&mut ch, &mut tcp).await;
                        }
                        Err(e) => offer.reject(2, &e.to_string()),
                    }
                });
            }
            OpenKind::Session => {
                let ch = offer.accept().unwrap();
                let seen = self.seen.clone();
                // The console: whatever is typed comes back; requests are answered in order.
                tokio::spawn(async move {
                    while let Some(msg) = ch.next().await {
                        match msg {
                            ChannelMsg::Data(d) => {
                                if ch.data(&d).await.is_err() {
                                    break;
                                }
                            }
                            ChannelMsg::Request {
                                request,
                                want_reply,
                            } => {
                                let ok = {
                                    let mut seen = seen.lock().unwrap();
                                    seen.requests.push(request.name().to_string());
                                    match request {
                                        Request::Break { ms } => {
                                            seen.breaks.push(ms);
                                            true
                                        }
                                        Request::PtyReq { .. }
                                        | Request::Shell
                                        | Request::WindowChange(_) => true,
                                        _ => false,
                                    }
                                };
                                if want_reply {
                                    ch.reply(ok);
                                }
                            }
                            ChannelMsg::Eof => break,
                        }
                    }
                });
            }
            _ => offer.reject(1, "not here"),
        }
    }

    async fn global_request(&mut self, request: GlobalRequest) -> GlobalAnswer {
        match request {
            GlobalRequest::TcpipForward { address, port } => {
                let port = if port == 0 { 45678 } else { port };
                self.seen.lock().unwrap().forwards.push((address, port));
                GlobalAnswer::Success(Some(port))
            }
            _ => GlobalAnswer::Failure,
        }
    }
}

struct TestServer {
    addr: SocketAddr,
    known_hosts: std::path::PathBuf,
    seen: Arc<Mutex<Seen>>,
}

async fn test_server(dir: &Path, key: PublicKey) -> TestServer {
    let host = Arc::new(HostKey::from_seed(&[42; 32]).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let blob = host.blob();
    let public = PublicKey::from_bytes(&blob).unwrap().to_openssh().unwrap();
    let known_hosts = dir.join("driver_known_hosts");
    std::fs::write(
        &known_hosts,
        format!("[127.0.0.1]:{} {public}\n", addr.port()),
    )
    .unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let handler = ServerHandler {
        key,
        password: "secret",
        seen: seen.clone(),
    };
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let mut cfg = config(Role::Server);
            cfg.host_key = Some(host.clone());
            let session = Session::new(
                cfg,
                Side::Server {
                    methods: vec![
                        method::PUBLICKEY,
                        method::PASSWORD,
                        method::KEYBOARD_INTERACTIVE,
                    ],
                    max_attempts: 6,
                },
                Limits::default(),
                Instant::now(),
            );
            let (_handle, run) = driver::start(tcp, session, handler.clone(), None);
            tokio::spawn(run);
        }
    });
    TestServer {
        addr,
        known_hosts,
        seen,
    }
}

/// `ssh` to the test server with `key`; `key` None logs in by password instead.
fn stock_ssh(server: &TestServer, key: Option<&Path>, args: &[&str]) -> tokio::process::Command {
    let mut c = tokio::process::Command::new("ssh");
    c.args(["-F", "/dev/null", "-p", &server.addr.port().to_string()])
        .arg("-o")
        .arg(format!(
            "UserKnownHostsFile={}",
            server.known_hosts.display()
        ))
        .args([
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "StrictHostKeyChecking=yes",
        ]);
    match key {
        Some(key) => {
            c.arg("-i").arg(key).args(["-o", "BatchMode=yes"]);
        }
        None => {
            c.args(["-o", "PubkeyAuthentication=no"]);
        }
    }
    c.args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    c
}

async fn run_with_input(
    mut cmd: tokio::process::Command,
    input: Vec<u8>,
) -> (bool, Vec<u8>, String) {
    let mut child = cmd.spawn().expect("ssh is installed");
    let mut stdin = child.stdin.take().unwrap();
    tokio::spawn(async move {
        let _ = stdin.write_all(&input).await;
    });
    let out = tokio::time::timeout(WAIT * 4, child.wait_with_output())
        .await
        .expect("ssh finished")
        .unwrap();
    (
        out.status.success(),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssh_streams_through_a_burrow_ssh_server_arrive_byte_for_byte() {
    let dir = tempdir();
    let echo = echo_server().await;
    for kind in ["ed25519", "ecdsa", "rsa"] {
        let key = dir.path().join(format!("op_{kind}"));
        let status = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", kind, "-N", "", "-f"])
            .arg(&key)
            .status()
            .unwrap();
        assert!(status.success());
        let public = PublicKey::read_openssh_file(key.with_extension("pub")).unwrap();
        let server = test_server(dir.path(), public).await;
        // 12 MiB through `ssh -W` to an echo service: six default windows each way, with
        // OpenSSH's own flow control meeting ours.
        let payload: Vec<u8> = (0..12 * 1024 * 1024u32)
            .map(|i| (i ^ (i >> 11)) as u8)
            .collect();
        let target = format!("127.0.0.1:{}", echo.port());
        let cmd = stock_ssh(&server, Some(&key), &["-W", &target, "op@127.0.0.1"]);
        let (ok, out, err) = run_with_input(cmd, payload.clone()).await;
        assert!(ok, "{kind}: {err}");
        assert_eq!(out.len(), payload.len(), "{kind}: {err}");
        assert_eq!(sha256(&out), sha256(&payload), "{kind}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssh_password_typo_then_right_remote_forward_port_zero_and_break() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempdir();
    let key = keypair(dir.path(), "op");
    let public = PublicKey::read_openssh_file(key.with_extension("pub")).unwrap();
    let server = test_server(dir.path(), public).await;

    // A typo, then the password, on one connection.
    let askpass = dir.path().join("askpass");
    let count = dir.path().join("askpass.count");
    std::fs::write(
        &askpass,
        format!(
            "#!/bin/sh\nn=$(cat '{c}' 2>/dev/null || echo 0)\necho $((n + 1)) > '{c}'\n\
             if [ $n = 0 ]; then echo typo; else echo secret; fi\n",
            c = count.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&askpass, std::fs::Permissions::from_mode(0o755)).unwrap();
    let echo = echo_server().await;
    for methods in ["password", "keyboard-interactive"] {
        let _ = std::fs::remove_file(&count);
        let mut cmd = stock_ssh(
            &server,
            None,
            &[
                "-o",
                &format!("PreferredAuthentications={methods}"),
                "-o",
                "NumberOfPasswordPrompts=2",
                "-W",
                &format!("127.0.0.1:{}", echo.port()),
                "op@127.0.0.1",
            ],
        );
        cmd.env("SSH_ASKPASS", &askpass)
            .env("SSH_ASKPASS_REQUIRE", "force")
            .env("DISPLAY", ":0");
        let (ok, out, err) = run_with_input(cmd, b"typed twice".to_vec()).await;
        assert!(ok, "{methods}: {err}");
        assert_eq!(out, b"typed twice", "{methods}: {err}");
        assert_eq!(
            std::fs::read_to_string(&count).unwrap().trim(),
            "2",
            "{methods}"
        );
    }

    // `ssh -R 0:...`: the server answers port 0 with the port it chose, and ssh says it.
    let mut cmd = stock_ssh(
        &server,
        Some(&key),
        &[
            "-N",
            "-o",
            "ExitOnForwardFailure=yes",
            "-R",
            &format!("0:127.0.0.1:{}", echo.port()),
            "op@127.0.0.1",
        ],
    );
    cmd.stdout(std::process::Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let mut said = Vec::new();
    let deadline = Instant::now() + WAIT;
    while !String::from_utf8_lossy(&said).contains("Allocated port 45678") {
        assert!(
            Instant::now() < deadline,
            "{}",
            String::from_utf8_lossy(&said)
        );
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(WAIT, stderr.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "ssh ended: {}", String::from_utf8_lossy(&said));
        said.extend_from_slice(&buf[..n]);
    }
    // The server opens the forwarded port's stream back through the client to the echo
    // service, as a relay does for a stock `ssh -R` device.
    let handle = server.seen.lock().unwrap().handles.last().cloned().unwrap();
    // The address as the client asked for it: OpenSSH matches its forward by it.
    let address = server
        .seen
        .lock()
        .unwrap()
        .forwards
        .last()
        .unwrap()
        .0
        .clone();
    let mut ch = handle
        .open(OpenKind::ForwardedTcpip {
            address,
            port: 45678,
            originator: "127.0.0.1".into(),
            originator_port: 1,
        })
        .await
        .expect("ssh accepts the forwarded stream");
    ch.write_all(b"round trip").await.unwrap();
    let mut back = [0u8; 10];
    tokio::time::timeout(WAIT, ch.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&back, b"round trip");
    drop(ch);
    drop(child);

    // `~B` on a terminal session sends BREAK; what is typed echoes back.
    let mut child = stock_ssh(&server, Some(&key), &["-tt", "op@127.0.0.1"])
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let seen = server.seen.clone();
    eventually("the shell request", || {
        seen.lock()
            .unwrap()
            .requests
            .contains(&"shell".to_string())
            .then_some(())
    })
    .await;
    stdin.write_all(b"hello\r").await.unwrap();
    // An escape is recognised at the start of a line.
    stdin.write_all(b"~B").await.unwrap();
    eventually("the break", || {
        (!seen.lock().unwrap().breaks.is_empty()).then_some(())
    })
    .await;
    stdin.write_all(b"\r~.").await.unwrap();
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let seen = server.seen.lock().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("hello"),
        "{:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    // OpenSSH's `~B` asks for a 1000 ms break.
    assert_eq!(seen.breaks, [1000], "requests: {:?}", seen.requests);
    assert!(seen.requests.contains(&"pty-req".to_string()));
    assert!(seen.forwards.iter().any(|(_, p)| *p == 45678));
}

/// A burrow-ssh client of sshd: answers forwarded connections by echoing them upper-cased.
#[derive(Clone)]
struct ClientHandler;

impl Handler for ClientHandler {
    async fn channel_open(&mut self, kind: OpenKind, offer: Offer) {
        if let OpenKind::ForwardedTcpip { .. } = kind {
            let mut ch = offer.accept().unwrap();
            tokio::spawn(async move {
                let mut input = Vec::new();
                let _ = ch.read_to_end(&mut input).await;
                let _ = ch.write_all(&input.to_ascii_uppercase()).await;
                let _ = ch.shutdown().await;
            });
        } else {
            offer.reject(1, "no");
        }
    }
}

async fn client_of(sshd: &TestSshd, key: &Path) -> Handle {
    client_with(sshd, key, ClientHandler).await
}

async fn client_with<H: Handler>(sshd: &TestSshd, key: &Path, handler: H) -> Handle {
    let pinned = {
        let line = sshd.host_key_line.trim().to_string();
        let k = PublicKey::from_openssh(&line).unwrap();
        k.to_bytes().unwrap()
    };
    let mut cfg = config(Role::Client);
    cfg.host_key_check = Some(Box::new(move |k| k == pinned.as_slice()));
    let session = Session::new(
        cfg,
        Side::Client {
            user: current_user(),
            credentials: vec![Credential::Key(Box::new(ClientKey::read(key).unwrap()))],
        },
        Limits::default(),
        Instant::now(),
    );
    let tcp = TcpStream::connect(("127.0.0.1", sshd.port)).await.unwrap();
    let (handle, _task) = driver::connect(tcp, session, handler)
        .await
        .expect("sshd accepts the key");
    handle
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burrow_ssh_client_logs_in_to_openssh_sshd_and_forwards_both_ways() {
    let dir = tempdir();
    let mut keys = Vec::new();
    for kind in ["ed25519", "ecdsa", "rsa"] {
        let key = dir.path().join(format!("dev_{kind}"));
        let status = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", kind, "-N", "", "-f"])
            .arg(&key)
            .status()
            .unwrap();
        assert!(status.success());
        keys.push(key);
    }
    let refs: Vec<&Path> = keys.iter().map(|k| k.as_path()).collect();
    let sshd = TestSshd::start(dir.path(), &refs, "").await;
    let echo = echo_server().await;
    for key in &keys {
        let handle = client_of(&sshd, key).await;
        // tcpip-forward with port 0: sshd picks the port and says which.
        let answer = handle
            .global_request(GlobalRequest::TcpipForward {
                address: "127.0.0.1".into(),
                port: 0,
            })
            .await
            .unwrap();
        let GlobalAnswer::Success(Some(port)) = answer else {
            panic!("{answer:?}")
        };
        let mut tcp = TcpStream::connect(("127.0.0.1", port as u16))
            .await
            .unwrap();
        tcp.write_all(b"through sshd and back").await.unwrap();
        tcp.shutdown().await.unwrap();
        let mut back = Vec::new();
        tokio::time::timeout(WAIT, tcp.read_to_end(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, b"THROUGH SSHD AND BACK", "{}", key.display());

        // direct-tcpip through sshd to the echo service, 6 MiB, read as it comes.
        let mut ch = handle
            .open(OpenKind::DirectTcpip {
                host: "127.0.0.1".into(),
                port: echo.port().into(),
                originator: "127.0.0.1".into(),
                originator_port: 5,
            })
            .await
            .unwrap();
        let payload: Vec<u8> = (0..6 * 1024 * 1024u32).map(|i| (i % 249) as u8).collect();
        let (mut r, mut w) = tokio::io::split(&mut ch);
        let send = payload.clone();
        let writer = async move {
            w.write_all(&send).await.unwrap();
            w.shutdown().await.unwrap();
        };
        let reader = async move {
            let mut got = Vec::new();
            r.read_to_end(&mut got).await.unwrap();
            got
        };
        let ((), got) = tokio::time::timeout(WAIT * 4, async { tokio::join!(writer, reader) })
            .await
            .unwrap();
        assert_eq!(sha256(&got), sha256(&payload), "{}", key.display());
        drop(ch);

        // A keepalive is answered (sshd answers with failure, which is an answer).
        handle.send_keepalive();
        eventually("the keepalive answer", || {
            (!handle.keepalive_outstanding()).then_some(())
        })
        .await;
        handle.disconnect("test over");
        let why = tokio::time::timeout(WAIT, handle.closed()).await.unwrap();
        assert!(why.contains("test over") || why.contains("closed"), "{why}");
    }
}

/// A client whose handler holds every forwarded connection's offer until `gate` opens: the
/// connection's driver waits on it meanwhile.
#[derive(Clone)]
struct GateHandler {
    gate: Arc<tokio::sync::Semaphore>,
    waiting: Arc<tokio::sync::Notify>,
}

impl Handler for GateHandler {
    async fn channel_open(&mut self, _kind: OpenKind, offer: Offer) {
        self.waiting.notify_one();
        let _ = self.gate.acquire().await;
        offer.reject(1, "only held");
    }
}

/// A channel's writer writes its packets to the socket itself when nothing older waits there,
/// instead of waking the connection's driver for each one (on a two-worker runtime, often a
/// wake-up on the other worker: bench/tuning.md, step 19). Seen from outside: data written on
/// a channel reaches sshd, and through it a TCP sink, while the driver is held up in the
/// handler. Sent through the driver, it would wait there until the handler returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channels_writes_leave_while_its_driver_waits_on_the_handler() {
    let dir = tempdir();
    let key = keypair(dir.path(), "dev_ed25519");
    let sshd = TestSshd::start(dir.path(), &[key.as_path()], "").await;
    let sink = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sink_port = sink.local_addr().unwrap().port();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let waiting = Arc::new(tokio::sync::Notify::new());
    let handler = GateHandler {
        gate: gate.clone(),
        waiting: waiting.clone(),
    };
    let handle = client_with(&sshd, &key, handler).await;
    let GlobalAnswer::Success(Some(port)) = handle
        .global_request(GlobalRequest::TcpipForward {
            address: "127.0.0.1".into(),
            port: 0,
        })
        .await
        .unwrap()
    else {
        panic!("sshd refused the forward")
    };
    let ch = handle
        .open(OpenKind::DirectTcpip {
            host: "127.0.0.1".into(),
            port: sink_port.into(),
            originator: "127.0.0.1".into(),
            originator_port: 7,
        })
        .await
        .unwrap();
    // sshd connected to the sink before it confirmed the channel.
    let (mut sunk, _) = sink.accept().await.unwrap();
    // A connection to the forwarded port: sshd offers it, and the driver waits on the handler.
    let _held = TcpStream::connect(("127.0.0.1", port as u16))
        .await
        .unwrap();
    tokio::time::timeout(WAIT, waiting.notified())
        .await
        .expect("the driver to wait on the handler");
    // Within sshd's window (2 MiB for a stream), so only the socket stands in the way.
    let payload: Vec<u8> = (0..256 * 1024u32).map(|i| (i % 251) as u8).collect();
    tokio::time::timeout(WAIT, ch.data(&payload))
        .await
        .expect("the window took it")
        .unwrap();
    let mut got = vec![0u8; payload.len()];
    tokio::time::timeout(WAIT, sunk.read_exact(&mut got))
        .await
        .expect("the data at the sink while the driver waits")
        .unwrap();
    assert!(!gate.is_closed() && gate.available_permits() == 0);
    assert_eq!(sha256(&got), sha256(&payload));
    // Once the handler returns, the connection goes on as before.
    gate.add_permits(1);
    handle.send_keepalive();
    eventually("the keepalive answer", || {
        (!handle.keepalive_outstanding()).then_some(())
    })
    .await;
}

/// A channel's halves (what the relay's and the agent's splices use): the reading half lends
/// the data where it lies, and the window goes back to sshd only as the reader consumes it,
/// so bytes held on their way onward still count against it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channels_halves_give_window_back_only_as_the_reader_consumes() {
    let dir = tempdir();
    let key = keypair(dir.path(), "dev_ed25519");
    let sshd = TestSshd::start(dir.path(), &[key.as_path()], "").await;
    let echo = echo_server().await;
    let handle = client_of(&sshd, &key).await;
    let ch = handle
        .open(OpenKind::DirectTcpip {
            host: "127.0.0.1".into(),
            port: echo.port().into(),
            originator: "127.0.0.1".into(),
            originator_port: 6,
        })
        .await
        .unwrap();
    let window = ch.receive_window().unwrap() as usize;
    // Three windows' worth through sshd to the echo service and back.
    let payload: Vec<u8> = (0..6 * 1024 * 1024u32)
        .map(|i| (i ^ (i >> 9)) as u8)
        .collect();
    let (mut r, mut w) = ch.halves();
    let writer = async {
        w.write_all(&payload).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let reader = async {
        // Lent and not consumed: sshd may send the window's worth and no more.
        assert!(!r.fill_buf().await.unwrap().is_empty());
        eventually("sshd to spend the whole window", || {
            (ch.receive_window() == Some(0)).then_some(())
        })
        .await;
        assert_eq!(ch.buffered(), window);
        let mut got = Vec::new();
        loop {
            let data = r.fill_buf().await.unwrap();
            if data.is_empty() {
                break;
            }
            got.extend_from_slice(data);
            let n = data.len();
            r.consume(n);
        }
        got
    };
    let ((), got) = tokio::time::timeout(WAIT * 4, async { tokio::join!(writer, reader) })
        .await
        .expect("the stream went on once the reader consumed");
    assert_eq!(got.len(), payload.len());
    assert_eq!(sha256(&got), sha256(&payload));
    assert_eq!(ch.buffered(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssh_agrees_with_the_server_on_every_cipher_and_mac() {
    let dir = tempdir();
    let key = keypair(dir.path(), "op");
    let public = PublicKey::read_openssh_file(key.with_extension("pub")).unwrap();
    let server = test_server(dir.path(), public).await;
    let echo = echo_server().await;
    let target = format!("127.0.0.1:{}", echo.port());
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 241) as u8).collect();
    for (cipher, mac) in [
        (
            "chacha20-poly1305@openssh.com",
            "hmac-sha2-256-etm@openssh.com",
        ),
        ("aes256-gcm@openssh.com", "hmac-sha2-256-etm@openssh.com"),
        ("aes128-gcm@openssh.com", "hmac-sha2-256-etm@openssh.com"),
        ("aes128-ctr", "hmac-sha2-512-etm@openssh.com"),
        ("aes256-ctr", "hmac-sha2-256-etm@openssh.com"),
    ] {
        let cmd = stock_ssh(
            &server,
            Some(&key),
            &["-c", cipher, "-m", mac, "-W", &target, "op@127.0.0.1"],
        );
        let (ok, out, err) = run_with_input(cmd, payload.clone()).await;
        assert!(ok, "{cipher} {mac}: {err}");
        assert_eq!(sha256(&out), sha256(&payload), "{cipher} {mac}");
    }
    // A client that offers only what burrow refuses (CBC, SHA-1 MACs) is told so.
    let cmd = stock_ssh(
        &server,
        Some(&key),
        &["-c", "aes128-cbc", "-W", &target, "op@127.0.0.1"],
    );
    let (ok, _, err) = run_with_input(cmd, Vec::new()).await;
    assert!(!ok);
    assert!(err.contains("no matching cipher"), "{err}");
}
