//! Test helpers: an in-process relay on 127.0.0.1:0, keys, stock OpenSSH clients and a test sshd.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use burrow_relay::{Relay, RelayConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Upper bound for anything a test waits for; a bound, not a timing assertion.
pub const WAIT: Duration = Duration::from_secs(20);

/// Polls `check` until it returns `Some`, failing the test after [`WAIT`].
pub async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("burrow-test-")
        .tempdir()
        .unwrap()
}

/// Writes a fresh ed25519 key pair (`NAME` mode 0600 and `NAME.pub`) and returns the private path.
pub fn keypair(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    let key = burrow_io::keys::generate_ed25519();
    burrow_io::keys::write_private_key(&path, &key).unwrap();
    std::fs::write(
        dir.join(format!("{name}.pub")),
        burrow_io::keys::public_key_line(key.public_key()) + "\n",
    )
    .unwrap();
    path
}

pub fn public_key(private: &Path) -> burrow_io::keys::PublicKey {
    burrow_io::keys::load_private_key(private)
        .unwrap()
        .public_key()
        .clone()
}

/// A relay running in this process.
pub struct TestRelay {
    pub relay: Arc<Relay>,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<Result<(), burrow_relay::RelayError>>,
}

impl TestRelay {
    pub async fn start(data_dir: &Path) -> TestRelay {
        Self::start_on(data_dir, "127.0.0.1:0").await
    }

    pub async fn start_on(data_dir: &Path, addr: &str) -> TestRelay {
        Self::start_with(data_dir, addr, |_| {}).await
    }

    pub async fn start_with(
        data_dir: &Path,
        addr: &str,
        adjust: impl FnOnce(&mut RelayConfig),
    ) -> TestRelay {
        let mut config = RelayConfig::new(data_dir.to_path_buf());
        config.auth_rejection_time = Duration::from_millis(50);
        adjust(&mut config);
        let relay = Relay::open(config).await.unwrap();
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(relay.clone().run(listener, shutdown.clone()));
        TestRelay {
            relay,
            addr,
            data_dir: data_dir.to_path_buf(),
            shutdown,
            task,
        }
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }

    /// Runs `burrow relay ARGS... --data-dir DIR` in another process, as an admin would while
    /// the relay runs; returns (success, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_burrow"))
            .arg("relay")
            .args(args)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    }

    pub fn add_device(&self, name: &str, key: &Path) {
        self.relay
            .store()
            .add_device(name, &[public_key(key)])
            .unwrap();
    }

    pub fn add_operator(&self, name: &str, key: &Path, allow: &[&str]) {
        let allow: Vec<String> = allow.iter().map(|s| s.to_string()).collect();
        self.relay
            .store()
            .add_operator(name, &[public_key(key)], None, &allow, false)
            .unwrap();
    }

    /// Waits until `device` is online exposing `port`.
    pub async fn wait_endpoint(&self, device: &str, port: u16) {
        eventually(&format!("{device}:{port} to be exposed"), || {
            self.relay
                .online_endpoints(device)
                .filter(|p| p.contains(&port))
                .map(|_| ())
        })
        .await;
    }

    /// The most recent `n` audit entries once everything queued so far is stored (the relay
    /// commits audit entries in batches, within milliseconds).
    pub async fn audit_now(&self, n: usize) -> Vec<burrow_relay::store::AuditRecord> {
        self.relay.db().flush().await;
        self.relay.db().audit_tail(n).await.unwrap()
    }

    /// The first stream's audit row once the stream ended (its outcome no longer `open`).
    pub async fn ended_stream_row(&self) -> burrow_relay::store::AuditRecord {
        eventually("the stream's audit row to be completed", || {
            self.relay
                .store()
                .audit_tail(50)
                .unwrap()
                .into_iter()
                .find(|r| r.event == "stream" && r.outcome != "open")
        })
        .await
    }

    /// Waits until `device` has a session.
    pub async fn wait_online(&self, device: &str) {
        eventually(&format!("{device} to be online"), || {
            self.relay.online_endpoints(device).map(|_| ())
        })
        .await;
    }

    /// A known_hosts file naming this relay.
    pub fn known_hosts(&self, dir: &Path) -> PathBuf {
        let path = dir.join("relay_known_hosts");
        std::fs::write(
            &path,
            format!(
                "[127.0.0.1]:{} {}\n",
                self.addr.port(),
                self.relay.host_public_key()
            ),
        )
        .unwrap();
        path
    }
}

/// A relay with one device (key `dev`) and one operator allowed everywhere (key `op`): the
/// temporary directory, the relay, and both private key paths.
pub async fn relay_with(
    device: &str,
    operator: &str,
) -> (tempfile::TempDir, TestRelay, PathBuf, PathBuf) {
    let dir = tempdir();
    let relay = TestRelay::start(&dir.path().join("relay")).await;
    let dev_key = keypair(dir.path(), "dev");
    let op_key = keypair(dir.path(), "op");
    relay.add_device(device, &dev_key);
    relay.add_operator(operator, &op_key, &["*"]);
    (dir, relay, dev_key, op_key)
}

/// A relay whose device `pi` is a stock `ssh -R 22:...` to an echo service, and operator
/// `operator` allowed everywhere.
pub struct EchoSite {
    pub dir: tempfile::TempDir,
    pub relay: TestRelay,
    /// The device's ssh process (dropping it kills the device).
    pub device: KillOnDrop,
    /// ssh_config of the operator.
    pub operator: PathBuf,
}

pub async fn relay_with_echo_device(operator: &str) -> EchoSite {
    let (dir, relay, dev_key, op_key) = relay_with("pi", operator).await;
    let service = echo_server().await;
    let dev_cfg = ssh_config(dir.path(), &relay, "pi", &dev_key);
    let device = stock_device(
        &dev_cfg,
        &["-R", &format!("22:localhost:{}", service.port())],
    );
    relay.wait_endpoint("pi", 22).await;
    let operator = ssh_config(dir.path(), &relay, operator, &op_key);
    EchoSite {
        dir,
        relay,
        device,
        operator,
    }
}

/// An ssh_config for stock OpenSSH: host `relay` as operator `op` (key `op_key`), and any other
/// host jumps through it.
pub fn ssh_config(dir: &Path, relay: &TestRelay, user: &str, key: &Path) -> PathBuf {
    let kh = relay.known_hosts(dir);
    let path = dir.join(format!("ssh_config_{user}"));
    std::fs::write(
        &path,
        format!(
            "Host relay\n  HostName 127.0.0.1\n  Port {port}\n  User {user}\n  IdentityFile {key}\n  \
             UserKnownHostsFile {kh}\n\nHost *\n  IdentitiesOnly yes\n  BatchMode yes\n  StrictHostKeyChecking yes\n  \
             ConnectTimeout 10\n  ServerAliveInterval 5\n  LogLevel INFO\n",
            port = relay.addr.port(),
            key = key.display(),
            kh = kh.display(),
        ),
    )
    .unwrap();
    path
}

/// `ssh -F config ARGS...` with piped stdio.
pub fn ssh(config: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("ssh");
    c.arg("-F").arg(config).args(args);
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Runs ssh with `input` on stdin (then EOF) and returns (status ok, stdout, stderr); fails the
/// test if ssh is still running after [`WAIT`].
pub async fn ssh_output(config: &Path, args: &[&str], input: &[u8]) -> (bool, Vec<u8>, String) {
    ssh_output_within(config, args, input, WAIT).await
}

/// [`ssh_output`] allowing `wait` (a slow transfer).
pub async fn ssh_output_within(
    config: &Path,
    args: &[&str],
    input: &[u8],
    wait: Duration,
) -> (bool, Vec<u8>, String) {
    let mut cmd = tokio::process::Command::from(ssh(config, args));
    cmd.kill_on_drop(true);
    let mut child = cmd.spawn().expect("ssh is installed");
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    tokio::spawn(async move {
        let _ = stdin.write_all(&input).await;
    });
    let out = tokio::time::timeout(wait, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("ssh {args:?} did not finish within {wait:?}"))
        .unwrap();
    (
        out.status.success(),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// Stock ssh logging in to the relay by password, typed through SSH_ASKPASS as a person would
/// (tests have no terminal): `ssh ARGS... USER@127.0.0.1` with piped stdio. Each prompt gets the
/// next of `passwords` (a typo, then the right one), all on one connection.
pub fn password_ssh(
    relay: &TestRelay,
    dir: &Path,
    passwords: &[&str],
    args: &[&str],
) -> tokio::process::Command {
    use std::os::unix::fs::PermissionsExt;
    let askpass = dir.join(format!("askpass-{}", free_port()));
    let count = askpass.with_extension("count");
    let answers: String = passwords
        .iter()
        .enumerate()
        .map(|(i, p)| format!("  {i}) echo '{p}' ;;\n"))
        .collect();
    std::fs::write(
        &askpass,
        format!(
            "#!/bin/sh\nn=$(cat '{c}' 2>/dev/null || echo 0)\necho $((n + 1)) > '{c}'\ncase $n in\n{answers}esac\n",
            c = count.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&askpass, std::fs::Permissions::from_mode(0o755)).unwrap();
    let kh = relay.known_hosts(dir);
    let mut c = tokio::process::Command::new("ssh");
    c.args(["-F", "/dev/null", "-p", &relay.addr.port().to_string()])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", kh.display()))
        .args([
            "-o",
            "PubkeyAuthentication=no",
            "-o",
            "PreferredAuthentications=password",
        ])
        .arg("-o")
        .arg(format!("NumberOfPasswordPrompts={}", passwords.len()))
        .args(args)
        .env("SSH_ASKPASS", &askpass)
        .env("SSH_ASKPASS_REQUIRE", "force")
        .env("DISPLAY", ":0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    c
}

/// `burrow relay --listen 127.0.0.1:0 --data-dir DATA ARGS...` as its own process (ARGS may
/// give a `--listen` of their own): the process, its port, and its log lines as they come.
pub fn relay_process(
    data: &Path,
    args: &[&str],
) -> (KillOnDrop, u16, Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::BufRead;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_burrow"));
    cmd.arg("relay");
    if !args.contains(&"--listen") {
        cmd.args(["--listen", "127.0.0.1:0"]);
    }
    let mut child = cmd
        .arg("--data-dir")
        .arg(data)
        .args(args)
        // The log a user gets by default.
        .env_remove("BURROW_LOG")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
    let port = loop {
        let line = lines.next().expect("relay exited").unwrap();
        log.lock().unwrap().push(line.clone());
        if let Some(addr) = line.split("relay listening on ").nth(1) {
            break addr.trim().rsplit(':').next().unwrap().parse().unwrap();
        }
    };
    // Keep reading its log so it never blocks on a full pipe.
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    (KillOnDrop(child), port, log)
}

/// An operator's `ssh -W pi:22` through `config`'s relay that has had a first message echoed
/// and keeps its stdin open: a stream in the middle of its life.
pub async fn open_echo_stream(
    config: &Path,
) -> (tokio::process::Child, tokio::process::ChildStdin) {
    let mut cmd = tokio::process::Command::from(ssh(config, &["-W", "pi:22", "relay"]));
    let mut child = cmd.kill_on_drop(true).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    stdin.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    tokio::time::timeout(WAIT, stdout.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"ping");
    (child, stdin)
}

/// [`password_ssh`] run to its end: its output, failing the test if it hangs.
pub async fn password_login(
    relay: &TestRelay,
    dir: &Path,
    passwords: &[&str],
    args: &[&str],
) -> std::process::Output {
    let mut login = password_ssh(relay, dir, passwords, args);
    tokio::time::timeout(WAIT, login.output())
        .await
        .expect("ssh finished")
        .unwrap()
}

/// Kills a child process when dropped.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-CONT")
            .arg(self.0.id().to_string())
            .status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback TCP service running `handle` on every connection, each in a task of its own.
pub async fn serve<F, Fut>(handle: F) -> SocketAddr
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(handle(tcp));
        }
    });
    addr
}

/// A TCP server that reads until EOF, then answers `reply(input)` and closes: proves that
/// half-close travels one way while the other way keeps working.
pub async fn reply_after_eof_server(reply: fn(&[u8]) -> Vec<u8>) -> SocketAddr {
    serve(move |mut tcp| async move {
        let mut input = Vec::new();
        if tcp.read_to_end(&mut input).await.is_ok() {
            let _ = tcp.write_all(&reply(&input)).await;
        }
        let _ = tcp.shutdown().await;
    })
    .await
}

/// A TCP server that echoes everything back as it arrives.
pub async fn echo_server() -> SocketAddr {
    serve(|tcp| async move {
        let (mut r, mut w) = tcp.into_split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
        let _ = w.shutdown().await;
    })
    .await
}

/// A service that writes `total` bytes to whoever connects, as fast as it is read, then closes.
pub async fn firehose(total: usize) -> SocketAddr {
    counted_firehose(total).await.0
}

/// [`firehose`], with the bytes it has written so far to all who connected: a test can tell a
/// stream that moves slowly from one that stopped.
pub async fn counted_firehose(
    total: usize,
) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let written = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = written.clone();
    let addr = serve(move |mut tcp| {
        let count = count.clone();
        async move {
            let chunk = vec![b'x'; 64 * 1024];
            let mut sent = 0;
            while sent < total {
                let n = chunk.len().min(total - sent);
                if tcp.write_all(&chunk[..n]).await.is_err() {
                    return;
                }
                sent += n;
                count.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            }
            let _ = tcp.shutdown().await;
        }
    })
    .await;
    (addr, written)
}

/// A service that sends `reply` to whoever connects, then closes.
pub async fn fixed_reply_server(reply: &'static [u8]) -> SocketAddr {
    serve(move |mut tcp| async move {
        let _ = tcp.write_all(reply).await;
        let _ = tcp.shutdown().await;
    })
    .await
}

/// A stock OpenSSH device session: `ssh -N -o ExitOnForwardFailure=yes ARGS... relay`.
pub fn stock_device(config: &Path, args: &[&str]) -> KillOnDrop {
    let mut argv = vec!["-N", "-o", "ExitOnForwardFailure=yes"];
    argv.extend_from_slice(args);
    argv.push("relay");
    KillOnDrop(ssh(config, &argv).spawn().unwrap())
}

pub fn uppercase(input: &[u8]) -> Vec<u8> {
    input.to_ascii_uppercase()
}

/// A free loopback port (bound then released; fine for a process the test starts next).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn current_user() -> String {
    let out = Command::new("id").arg("-un").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A real OpenSSH sshd on loopback, accepting `authorized` keys for the current user.
pub struct TestSshd {
    pub port: u16,
    pub host_key_line: String,
    _child: KillOnDrop,
}

pub fn sshd_path() -> PathBuf {
    for p in ["/usr/sbin/sshd", "/usr/local/sbin/sshd"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!("sshd not found: install openssh-server (./test.sh does)");
}

impl TestSshd {
    pub async fn start(dir: &Path, authorized: &[&Path], extra: &str) -> TestSshd {
        // sshd wants its privilege separation directory even when it is not root.
        let _ = std::fs::create_dir_all("/run/sshd");
        let dir = dir.join(format!("sshd-{}", free_port()));
        std::fs::create_dir_all(&dir).unwrap();
        let host_key = dir.join("host_key");
        let status = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&host_key)
            .status()
            .unwrap();
        assert!(status.success());
        let host_key_line = std::fs::read_to_string(dir.join("host_key.pub")).unwrap();
        let auth = dir.join("authorized_keys");
        let mut lines = String::new();
        for k in authorized {
            lines.push_str(
                &std::fs::read_to_string(k.with_extension("pub")).unwrap_or_else(|_| {
                    std::fs::read_to_string(format!("{}.pub", k.display())).unwrap()
                }),
            );
        }
        std::fs::write(&auth, lines).unwrap();
        let mut last_err = String::new();
        for _ in 0..5 {
            let port = free_port();
            let config = dir.join("sshd_config");
            std::fs::write(
                &config,
                format!(
                    "Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nAuthorizedKeysFile {auth}\nPidFile {pid}\n\
                     StrictModes no\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                     PubkeyAuthentication yes\nPermitRootLogin prohibit-password\nAllowTcpForwarding yes\n\
                     LogLevel ERROR\n{extra}\n",
                    hk = host_key.display(),
                    auth = auth.display(),
                    pid = dir.join("sshd.pid").display(),
                ),
            )
            .unwrap();
            let child = Command::new(sshd_path())
                .arg("-D")
                .arg("-e")
                .arg("-f")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let mut child = KillOnDrop(child);
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return TestSshd {
                        port,
                        host_key_line,
                        _child: child,
                    };
                }
                if let Ok(Some(status)) = child.0.try_wait() {
                    let mut err = String::new();
                    if let Some(mut e) = child.0.stderr.take() {
                        use std::io::Read;
                        let _ = e.read_to_string(&mut err);
                    }
                    last_err = format!("sshd exited with {status}: {err}");
                    break;
                }
                if Instant::now() > deadline {
                    last_err = "sshd did not listen within 10 s".into();
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        panic!("cannot start test sshd: {last_err}");
    }
}

impl TestSshd {
    /// An agent config for this sshd as the relay (pinned through a known_hosts file), logging
    /// in as the current user with `key`.
    pub fn agent_config(&self, dir: &Path, key: &Path) -> burrow_proto::agent_config::AgentConfig {
        let kh = dir.join(format!("sshd_known_hosts_{}", self.port));
        std::fs::write(
            &kh,
            format!("[127.0.0.1]:{} {}", self.port, self.host_key_line),
        )
        .unwrap();
        let mut config = agent_config(
            &format!("127.0.0.1:{}", self.port),
            &current_user(),
            key,
            "SHA256:unused",
        );
        config.host_key = None;
        config.known_hosts = Some(kh);
        config
    }
}

/// An agent config for a device with fast reconnects.
pub fn agent_config(
    relay: &str,
    name: &str,
    key: &Path,
    fingerprint: &str,
) -> burrow_proto::agent_config::AgentConfig {
    use burrow_proto::agent_config::Seconds;
    let mut c = burrow_proto::agent_config::AgentConfig::new(relay, name, key.to_path_buf());
    c.host_key = Some(fingerprint.to_string());
    c.backoff_min = Some(Seconds::Fraction(0.1));
    c.backoff_max = Some(Seconds::Fraction(0.5));
    c
}

/// Adds `[[expose]] port = PORT, to = ADDR` to an agent config.
pub fn expose(config: &mut burrow_proto::agent_config::AgentConfig, port: u16, to: SocketAddr) {
    config.expose.push(burrow_proto::agent_config::Expose {
        port,
        to: Some(to.to_string()),
        remote_port: None,
        bind: None,
    });
}

/// Sends `payload` to `addr`, closes the sending half and returns everything that comes back.
pub async fn roundtrip(addr: &str, payload: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.write_all(payload).await?;
    tcp.shutdown().await?;
    let mut out = Vec::new();
    tcp.read_to_end(&mut out).await?;
    Ok(out)
}

/// A running in-process agent.
pub struct TestAgent {
    pub status_file: PathBuf,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<Result<(), burrow_agent::AgentError>>,
}

impl TestAgent {
    pub fn start(dir: &Path, config: burrow_proto::agent_config::AgentConfig) -> TestAgent {
        let status_file = dir.join(format!("status-{}-{}.json", config.name, free_port()));
        let shutdown = CancellationToken::new();
        let options = burrow_agent::AgentOptions::new(status_file.clone());
        let task = tokio::spawn(burrow_agent::run(config, options, shutdown.clone()));
        TestAgent {
            status_file,
            shutdown,
            task,
        }
    }

    pub fn status(&self) -> Option<burrow_agent::status::Status> {
        burrow_agent::status::read(&self.status_file).ok()
    }

    pub async fn wait_up(&self) -> burrow_agent::status::Status {
        eventually("the agent to be up", || {
            self.status()
                .filter(|s| s.state == burrow_agent::status::State::Up)
        })
        .await
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}

/// An interactive stock ssh session (`ssh -tt`), its output collected as it arrives.
pub struct Terminal {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    output: Arc<std::sync::Mutex<Vec<u8>>>,
}

impl Terminal {
    /// `ssh -tt -e none -F config ARGS...`
    pub fn spawn(config: &Path, args: &[&str]) -> Terminal {
        let mut argv = vec!["-tt", "-e", "none"];
        argv.extend_from_slice(args);
        let mut cmd = tokio::process::Command::from(ssh(config, &argv));
        cmd.kill_on_drop(true);
        let mut child = cmd.spawn().unwrap();
        let stdin = child.stdin.take().unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let output = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = output.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Terminal {
            child,
            stdin,
            output,
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stdin.write_all(bytes).await.unwrap();
        self.stdin.flush().await.unwrap();
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap()).to_string()
    }

    /// Waits until the output contains `needle` (counting from the start of the session).
    pub async fn expect(&self, needle: &str) {
        self.expect_times(needle, 1).await;
    }

    /// Waits until the output contains `needle` at least `times` times since the session began
    /// (a menu drawn again, a prompt seen once more).
    pub async fn expect_times(&self, needle: &str, times: usize) {
        let what = format!("terminal output to contain {needle:?} {times} times");
        let deadline = Instant::now() + WAIT;
        loop {
            if self.text().matches(needle).count() >= times {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; got:\n{}",
                self.text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for the session to end; returns whether ssh exited successfully.
    pub async fn wait(mut self) -> bool {
        drop(self.stdin);
        tokio::time::timeout(WAIT, self.child.wait())
            .await
            .unwrap()
            .unwrap()
            .success()
    }
}

/// A pty pair standing in for a router's serial console: the agent opens `path` (a symlink to
/// the pty's slave), the test plays the router on the master side.
pub struct FakeRouter {
    pub path: PathBuf,
    pub received: Arc<std::sync::Mutex<Vec<u8>>>,
    master: Arc<std::os::fd::OwnedFd>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    echo: Arc<std::sync::atomic::AtomicBool>,
}

/// What [`FakeRouter::boot`] prints: a Cisco router coming up.
pub const BOOT_MESSAGES: &str = "System Bootstrap, Version 15.0(1r)M16, RELEASE SOFTWARE (fc1)\r\n\
Initializing memory...\r\n\
Self decompressing the image : ########## [OK]\r\n\
%SYS-5-RESTART: System restarted --\r\n\
%LINK-3-UPDOWN: Interface GigabitEthernet0/0, changed state to up\r\n\
Press RETURN to get started!\r\n";

impl FakeRouter {
    /// A router answering each line (CR) with `Router# got <line>\r\n`, at `path`.
    pub fn start(path: &Path) -> FakeRouter {
        use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
        // Close-on-exec: a child process (an agent under test) holding the master would keep the
        // port from ever going away.
        let master =
            openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC).unwrap();
        // Non-blocking, so the router thread notices when it is told to stop.
        rustix::fs::fcntl_setfl(&master, rustix::fs::OFlags::NONBLOCK).unwrap();
        grantpt(&master).unwrap();
        unlockpt(&master).unwrap();
        let slave = ptsname(&master, Vec::new()).unwrap();
        let _ = std::fs::remove_file(path);
        std::os::unix::fs::symlink(slave.to_str().unwrap(), path).unwrap();
        let master = Arc::new(master);
        let received = Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let echo = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (m, r, s, e) = (master.clone(), received.clone(), stop.clone(), echo.clone());
        std::thread::spawn(move || {
            let mut line = Vec::new();
            let mut buf = [0u8; 1024];
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                // EAGAIN when idle, EIO until the agent opens the slave side: keep polling.
                let n = match rustix::io::read(&*m, &mut buf) {
                    Ok(0) | Err(_) => {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                    Ok(n) => n,
                };
                r.lock().unwrap().extend_from_slice(&buf[..n]);
                if e.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = rustix::io::write(&*m, &buf[..n]);
                }
                for &b in &buf[..n] {
                    if b == b'\r' {
                        let answer = format!("Router# got {}\r\n", String::from_utf8_lossy(&line));
                        let _ = rustix::io::write(&*m, answer.as_bytes());
                        line.clear();
                    } else {
                        line.push(b);
                    }
                }
            }
        });
        FakeRouter {
            path: path.to_path_buf(),
            received,
            master,
            stop,
            echo,
        }
    }

    /// The router echoes what it is sent, as a router's console does.
    pub fn set_echo(&self, on: bool) {
        self.echo.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// The router boots: bootstrap banner, restart and link messages, a prompt.
    pub fn boot(&self) {
        self.print_all(BOOT_MESSAGES.as_bytes());
    }

    /// The pty's termios as the agent set it (for data bits, parity, stop bits, flow).
    pub fn termios(&self) -> rustix::termios::Termios {
        rustix::termios::tcgetattr(&*self.master).unwrap()
    }

    /// The router prints something by itself.
    pub fn print(&self, bytes: &[u8]) {
        rustix::io::write(&*self.master, bytes).unwrap();
    }

    /// The router prints a lot: retried until the pty took it all.
    pub fn print_all(&self, mut bytes: &[u8]) {
        let deadline = Instant::now() + WAIT;
        while !bytes.is_empty() {
            match rustix::io::write(&*self.master, bytes) {
                Ok(n) => bytes = &bytes[n..],
                Err(_) => {
                    assert!(
                        Instant::now() < deadline,
                        "the console stopped draining the pty"
                    );
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }

    /// Line speed of the pty as the agent set it (termios read back with TCGETS2).
    pub fn speed(&self) -> u32 {
        rustix::termios::tcgetattr(&*self.master)
            .unwrap()
            .output_speed()
    }

    pub fn received(&self) -> Vec<u8> {
        self.received.lock().unwrap().clone()
    }

    /// Unplugs the port: the pty goes away and so does the path.
    pub fn unplug(self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = std::fs::remove_file(&self.path);
        drop(self.master);
    }
}

/// A burrow-ssh client that accepts nothing the server offers, for requests stock clients
/// cannot send on demand.
struct PlainClient;

impl burrow_ssh::driver::Handler for PlainClient {}

/// A burrow-ssh client session to `addr` as `user` with `key` (any host key accepted).
pub async fn burrow_ssh_client(
    addr: SocketAddr,
    user: &str,
    key: &Path,
) -> burrow_ssh::driver::Handle {
    let key = burrow_ssh::auth::ClientKey::read(key).unwrap();
    let config = burrow_ssh::transport::Config {
        role: burrow_ssh::transport::Role::Client,
        software: "test_client".into(),
        comment: None,
        kex: burrow_ssh::kex::methods(),
        ciphers: vec!["chacha20-poly1305@openssh.com".into()],
        host_key: None,
        host_key_check: Some(Box::new(|_| true)),
        rekey_bytes: 1 << 30,
        rekey_time: Duration::from_secs(3600),
        ext_info: None,
        ..Default::default()
    };
    let session = burrow_ssh::session::Session::new(
        config,
        burrow_ssh::session::Side::Client {
            user: user.into(),
            credentials: vec![burrow_ssh::auth::Credential::Key(Box::new(key))],
        },
        burrow_ssh::channel::Limits::default(),
        Instant::now(),
    );
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (handle, _task) = burrow_ssh::driver::connect(tcp, session, PlainClient)
        .await
        .expect("the client logs in");
    handle
}

/// A local account for servers that log in real users (dropbear): created once, with a home
/// of its own.
pub fn test_account() -> (String, PathBuf) {
    const NAME: &str = "burrow-test";
    let home = PathBuf::from("/var/lib/burrow-test");
    let exists = || {
        Command::new("id")
            .arg(NAME)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    };
    if !exists() {
        // Another test process may create it at the same moment: only the end state counts.
        let _ = Command::new("useradd")
            .args([
                "--system",
                "--create-home",
                "--shell",
                "/bin/sh",
                "--home-dir",
            ])
            .arg(&home)
            .arg(NAME)
            .status();
        assert!(
            exists(),
            "cannot create the local account {NAME}: run the tests as root (./test.sh does)"
        );
    }
    (NAME.to_string(), home)
}

/// A throwaway PostgreSQL server in a temporary directory, run as the unprivileged test
/// account (`initdb` refuses root), on a free loopback port.
pub struct TestPostgres {
    pub url: String,
    pub port: u16,
    dir: tempfile::TempDir,
    server: Option<KillOnDrop>,
}

/// Where Debian's PostgreSQL keeps `initdb` and `postgres`.
fn postgres_bin() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path().join("bin")))
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions
        .pop()
        .filter(|p| p.join("initdb").exists())
        .expect("PostgreSQL is not installed: apt-get install postgresql (./test.sh does)")
}

impl TestPostgres {
    pub async fn start() -> TestPostgres {
        use std::os::unix::fs::PermissionsExt;
        let (user, _) = test_account();
        let dir = tempdir();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let chown = Command::new("chown")
            .arg(format!("{user}:"))
            .arg(&data)
            .status()
            .unwrap();
        assert!(chown.success());
        let out = Command::new("runuser")
            .args(["-u", &user, "--"])
            .arg(postgres_bin().join("initdb"))
            .args(["-D"])
            .arg(&data)
            .args(["-U", "burrow", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let mut pg = TestPostgres {
            url: format!("postgresql://burrow@127.0.0.1:{port}/postgres"),
            port,
            dir,
            server: None,
        };
        pg.resume().await;
        pg
    }

    /// Starts the server (again) on the same data and port.
    pub async fn resume(&mut self) {
        let (user, _) = test_account();
        // setpriv runs postgres itself as the account (runuser would stay its parent, and a
        // signal for a fast shutdown would stop at runuser).
        let child = Command::new("setpriv")
            .args([
                &format!("--reuid={user}"),
                &format!("--regid={user}"),
                "--init-groups",
            ])
            .arg(postgres_bin().join("postgres"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(self.dir.path().join("data"))
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "max_connections=200",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.server = Some(KillOnDrop(child));
        let url = self.url.clone();
        eventually_async("PostgreSQL to accept connections", || {
            let url = url.clone();
            async move {
                tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .ok()
                    .map(|_| ())
            }
        })
        .await;
    }

    /// Stops the server (a fast shutdown: connections are dropped at once).
    pub fn stop(&mut self) {
        if let Some(mut s) = self.server.take() {
            let _ = Command::new("kill")
                .args(["-INT", &s.0.id().to_string()])
                .status();
            let _ = s.0.wait();
        }
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Polls an async `check` until it returns `Some`, failing the test after [`WAIT`].
pub async fn eventually_async<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A relay of a cluster on `pg`, in this process, with its peer port on loopback.
pub async fn cluster_relay(dir: &Path, pg: &TestPostgres, id: &str) -> TestRelay {
    let peer = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let url = pg.url.clone();
    let relay = TestRelay::start_with(&dir.join(id), "127.0.0.1:0", |c| {
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

/// `burrow agent` as its own process (so that a test can SIGKILL it) for device `name` of
/// `relay`, exposing each `(port, service)`: the process, killed when dropped.
pub fn agent_process(
    dir: &Path,
    relay: &TestRelay,
    name: &str,
    key: &Path,
    exposes: &[(u16, SocketAddr)],
) -> KillOnDrop {
    let mut c = Command::new(env!("CARGO_BIN_EXE_burrow"));
    c.args([
        "agent",
        "--relay",
        &relay.addr.to_string(),
        "--name",
        name,
        "--key",
    ])
    .arg(key)
    .args(["--host-key", &relay.relay.fingerprint()])
    .args(["--backoff-min", "0.1", "--backoff-max", "0.5"])
    .arg("--status-file")
    .arg(dir.join(format!("agent-{name}-{}.json", free_port())));
    for (port, to) in exposes {
        c.args(["--expose", &format!("{port}={to}")]);
    }
    KillOnDrop(
        c.env("BURROW_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// A serial adapter and its cable, made by socat: `agent_side` (the pty the agent opens) joined
/// to `router_side` (a pty of its own for the router, whose terminal settings stay its own).
pub struct Adapter {
    child: Child,
}

impl Adapter {
    pub fn plug(agent_side: &Path, router_side: &Path) -> Adapter {
        let child = Command::new("socat")
            .arg(format!("pty,link={},raw,echo=0", agent_side.display()))
            .arg(format!("pty,link={},raw,echo=0", router_side.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat is installed (test.sh installs it)");
        let adapter = Adapter { child };
        let deadline = std::time::Instant::now() + WAIT;
        while !(agent_side.exists() && router_side.exists()) {
            assert!(std::time::Instant::now() < deadline, "socat made no ptys");
            std::thread::sleep(Duration::from_millis(20));
        }
        adapter
    }

    /// SIGTERM: socat closes both ptys and removes their names.
    pub fn unplug(mut self, agent_side: &Path) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        let _ = self.child.wait();
        assert!(!agent_side.exists());
    }
}

impl Drop for Adapter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A console power outlet (named `name`) whose commands append `on`/`off` to `calls`, as a
/// fake power switch that records what it was asked.
pub fn recording_outlet(
    name: Option<&str>,
    calls: &Path,
) -> burrow_proto::agent_config::PowerOutlet {
    let append = |verb: &str| format!("echo {verb} >> '{}'", calls.display());
    burrow_proto::agent_config::PowerOutlet {
        name: name.map(str::to_string),
        on: Some(append("on")),
        off: Some(append("off")),
        cycle: None,
        cycle_delay: Some(burrow_proto::agent_config::Seconds::Fraction(0.2)),
        timeout: None,
    }
}

/// The markers (`"m"` events) of device `pi`'s console recordings.
pub fn recording_markers(relay: &TestRelay) -> Vec<String> {
    let files = burrow_relay::console::recording::list(&relay.data_dir, Some("pi")).unwrap();
    let mut markers = Vec::new();
    for f in files {
        for line in std::fs::read_to_string(&f.path).unwrap().lines().skip(1) {
            let event: serde_json::Value = serde_json::from_str(line).unwrap();
            if event[1] == "m" {
                markers.push(event[2].as_str().unwrap().to_string());
            }
        }
    }
    markers
}
