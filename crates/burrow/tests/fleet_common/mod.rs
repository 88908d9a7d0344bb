//! Helpers of the fleet tests (health, alerts): a webhook receiver on plain tokio TCP, a real
//! agent process with its config file, and a stand-in `mmcli` for the ModemManager path.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::common::KillOnDrop;

/// One POST a receiver took.
#[derive(Debug, Clone)]
pub struct Post {
    pub path: String,
    pub body: serde_json::Value,
}

/// An HTTP receiver for webhooks: records each POST, answers 200, or 503 while told to fail.
pub struct Receiver {
    pub addr: SocketAddr,
    posts: Arc<Mutex<Vec<Post>>>,
    /// Requests answered 503 (failing ones included).
    pub requests: Arc<AtomicUsize>,
    fail_next: Arc<AtomicUsize>,
    /// Milliseconds each answer waits (a slow receiver).
    delay_ms: Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        Self::start_on("127.0.0.1:0").await
    }

    /// On a given address (a receiver that comes back where it was).
    pub async fn start_on(addr: &str) -> Receiver {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let posts: Arc<Mutex<Vec<Post>>> = Arc::default();
        let requests = Arc::new(AtomicUsize::new(0));
        let fail_next = Arc::new(AtomicUsize::new(0));
        let delay_ms = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (p, r, f, d) = (
            posts.clone(),
            requests.clone(),
            fail_next.clone(),
            delay_ms.clone(),
        );
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut tcp, _)) = listener.accept().await else {
                    return;
                };
                let (p, r, f, d) = (p.clone(), r.clone(), f.clone(), d.clone());
                tokio::spawn(async move {
                    let Some((path, body)) = read_request(&mut tcp).await else {
                        return;
                    };
                    let delay = d.load(Ordering::SeqCst);
                    tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
                    r.fetch_add(1, Ordering::SeqCst);
                    let failing = f
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok();
                    let status = if failing {
                        "503 Service Unavailable"
                    } else {
                        let body = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                        p.lock().unwrap().push(Post { path, body });
                        "200 OK"
                    };
                    let answer = format!(
                        "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    );
                    let _ = tcp.write_all(answer.as_bytes()).await;
                    let _ = tcp.shutdown().await;
                });
            }
        });
        Receiver {
            addr,
            posts,
            requests,
            fail_next,
            delay_ms,
            task,
        }
    }

    /// Answers each request only after `delay` (what it took is kept when it arrives).
    pub fn set_delay(&self, delay: std::time::Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Answers the next `n` requests with 503.
    pub fn fail_next(&self, n: usize) {
        self.fail_next.store(n, Ordering::SeqCst);
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn posts(&self) -> Vec<Post> {
        self.posts.lock().unwrap().clone()
    }

    /// Every alert of burrow's JSON format taken so far, in order.
    pub fn alerts(&self) -> Vec<serde_json::Value> {
        self.posts()
            .into_iter()
            .flat_map(|p| p.body["alerts"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    /// The kinds of the alerts taken, in order.
    pub fn kinds(&self) -> Vec<String> {
        self.alerts()
            .iter()
            .map(|a| a["kind"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// Stops listening: the port refuses connections.
    pub fn stop(self) {
        self.task.abort();
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one request: its path and body (by Content-Length).
async fn read_request(tcp: &mut tokio::net::TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = tcp.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let path = head.split(' ').nth(1).unwrap_or_default().to_string();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = tcp.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some((path, buf[head_end..].to_vec()))
}

/// A real agent process (`burrow agent --config FILE`).
pub struct AgentProcess {
    pub child: KillOnDrop,
    pub status_file: PathBuf,
    pub config: PathBuf,
}

impl AgentProcess {
    /// Starts `burrow agent` for device `name` with key `key` against `relay` pinned to
    /// `fingerprint`; `extra` is appended to its config file; `path` is its `PATH`.
    pub fn start(
        dir: &Path,
        relay: &str,
        fingerprint: &str,
        name: &str,
        key: &Path,
        extra: &str,
        path: &str,
    ) -> AgentProcess {
        let n = crate::common::free_port();
        let config = dir.join(format!("agent-{name}-{n}.toml"));
        std::fs::write(
            &config,
            format!(
                "relay = \"{relay}\"\nname = \"{name}\"\nkey = \"{}\"\nhost_key = \"{fingerprint}\"\nbackoff_min = 0.1\nbackoff_max = 0.5\n{extra}\n",
                key.display()
            ),
        )
        .unwrap();
        let status_file = dir.join(format!("status-{name}-{n}.json"));
        let child = Command::new(env!("CARGO_BIN_EXE_burrow"))
            .arg("agent")
            .arg("--config")
            .arg(&config)
            .arg("--status-file")
            .arg(&status_file)
            .env("PATH", path)
            .env("BURROW_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        AgentProcess {
            child: KillOnDrop(child),
            status_file,
            config,
        }
    }

    pub fn status(&self) -> Option<burrow_agent::status::Status> {
        burrow_agent::status::read(&self.status_file).ok()
    }

    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.0.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{signal}");
    }

    /// Stops it with `signal` and waits for the process to end.
    pub fn end(mut self, signal: &str) {
        self.signal(signal);
        let _ = self.child.0.wait();
    }
}

/// A stand-in `mmcli` in `dir/bin` answering as ModemManager would with one LTE modem; its
/// answers come from files the test can change (`modem`, `signal`, `bearer`), and every call
/// is logged to `dir/bin/calls`. Returns the `bin` directory.
pub fn fake_mmcli(dir: &Path, rsrp: f32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    const MODEM: &str = "/org/freedesktop/ModemManager1/Modem/0";
    const BEARER: &str = "/org/freedesktop/ModemManager1/Bearer/3";
    std::fs::write(
        bin.join("modem"),
        format!(
            "modem.dbus-path : {MODEM}\nmodem.generic.state : connected\nmodem.generic.access-technologies.length : 1\nmodem.generic.access-technologies.value[1] : lte\nmodem.generic.signal-quality.value : 67\nmodem.generic.bearers.length : 1\nmodem.generic.bearers.value[1] : {BEARER}\nmodem.3gpp.operator-name : NTT DOCOMO\nmodem.3gpp.operator-code : 44010\n"
        ),
    )
    .unwrap();
    set_rsrp(&bin, rsrp);
    std::fs::write(
        bin.join("bearer"),
        "bearer.stats.bytes-rx : 1000\nbearer.stats.bytes-tx : 500\nbearer.stats.total-bytes-rx : 123456789\nbearer.stats.total-bytes-tx : 2345678\n",
    )
    .unwrap();
    let script = format!(
        r#"#!/bin/sh
here="{bin}"
echo "$*" >> "$here/calls"
case "$*" in
  "-L --output-keyvalue")
    echo "modem-list.length   : 1"
    echo "modem-list.value[1] : {MODEM}" ;;
  "-m {MODEM} --output-keyvalue") cat "$here/modem" ;;
  "-m {MODEM} --signal-get --output-keyvalue") cat "$here/signal" ;;
  "-m {MODEM} --signal-setup="*) echo "error: couldn't setup signal: not authorized" >&2; exit 1 ;;
  "-b {BEARER} --output-keyvalue") cat "$here/bearer" ;;
  *) echo "error: unexpected arguments: $*" >&2; exit 1 ;;
esac
"#,
        bin = bin.display()
    );
    let path = bin.join("mmcli");
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

/// What the stand-in reports as LTE RSRP from now on.
pub fn set_rsrp(bin: &Path, rsrp: f32) {
    let tmp = bin.join("signal.tmp");
    std::fs::write(
        &tmp,
        format!(
            "modem.signal.refresh.rate : 0\nmodem.signal.lte.rssi : -65.00\nmodem.signal.lte.rsrq : -10.00\nmodem.signal.lte.rsrp : {rsrp:.2}\nmodem.signal.lte.snr : 12.20\n"
        ),
    )
    .unwrap();
    std::fs::rename(tmp, bin.join("signal")).unwrap();
}

/// The calls the stand-in took, one line each.
pub fn mmcli_calls(bin: &Path) -> Vec<String> {
    std::fs::read_to_string(bin.join("calls"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// `PATH` with `bin` first.
pub fn path_with(bin: &Path) -> String {
    format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// `relay ARGS --json` through the CLI, parsed.
pub fn cli_json(relay: &crate::common::TestRelay, args: &[&str]) -> serde_json::Value {
    let mut all: Vec<&str> = args.to_vec();
    all.push("--json");
    let (ok, out, err) = relay.cli(&all);
    assert!(ok, "relay {args:?}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}
