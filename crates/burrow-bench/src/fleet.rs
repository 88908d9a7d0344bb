//! A simulated fleet: many device sessions held from this process, each reconnecting when it
//! loses its session, from the source addresses and with the retry a real fleet would have.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use burrow_io::keys::PrivateKey;
use burrow_proto::backoff::Backoff;
use burrow_ssh::driver::{GlobalAnswer, Handle};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// A device client that trusts any relay key (the bench measures, it does not pin).
struct LoadDevice;

impl burrow_ssh::driver::Handler for LoadDevice {}

/// Connects as `name`, exposes port 22, and returns the session and the task that runs it
/// (which ends with the connection).
pub(crate) async fn connect_device(
    port: u16,
    from: Ipv4Addr,
    name: &str,
    key: Arc<PrivateKey>,
) -> anyhow::Result<(
    Handle,
    tokio::task::JoinHandle<Result<(), burrow_ssh::driver::Error>>,
)> {
    let config = burrow_ssh::transport::Config {
        role: burrow_ssh::transport::Role::Client,
        software: "burrow_bench".into(),
        comment: None,
        ciphers: vec!["aes256-gcm@openssh.com".into()],
        host_key: None,
        host_key_check: Some(Box::new(|_| true)),
        rekey_bytes: 1 << 30,
        rekey_time: Duration::from_secs(7 * 24 * 3600),
        ext_info: None,
        ..Default::default()
    };
    let session = burrow_ssh::session::Session::new(
        config,
        burrow_ssh::session::Side::Client {
            user: name.into(),
            credentials: vec![burrow_ssh::auth::Credential::Key(Box::new(
                burrow_ssh::auth::ClientKey::new((*key).clone()),
            ))],
        },
        burrow_ssh::channel::Limits::default(),
        Instant::now(),
    );
    let socket = tokio::net::TcpSocket::new_v4()?;
    if from != Ipv4Addr::LOCALHOST {
        socket.bind((from, 0).into())?;
    }
    let tcp = socket.connect((Ipv4Addr::LOCALHOST, port).into()).await?;
    let (handle, task) = burrow_ssh::driver::connect(tcp, session, LoadDevice)
        .await
        .map_err(|e| anyhow::anyhow!("device {name}: {e}"))?;
    let forward = handle
        .global_request(burrow_ssh::channel::GlobalRequest::TcpipForward {
            address: String::new(),
            port: 22,
        })
        .await?;
    if forward == GlobalAnswer::Failure {
        bail!("relay refused the forward of device {name}");
    }
    Ok((handle, task))
}

/// How a simulated device comes back after losing its session, or failing to get one.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Retry {
    /// The burrow agent's backoff: 1 s doubling to 30 s, jittered.
    Agent,
    /// A uniform pick between these before every attempt, like autossh restarting ssh.
    Every(Duration, Duration),
}

/// The loopback address device `i` of `n` connects from: 127.0.0.1, 127.0.0.2, ... (all of
/// 127/8 is this host on Linux), `per_address` devices on each. Devices take the addresses in
/// turn, so that those starting together (the fleet starts them in order) come from all of
/// them, as a real fleet's would.
fn source(i: usize, n: usize, per_address: usize) -> Ipv4Addr {
    let addresses = n.div_ceil(per_address.max(1)).max(1);
    let k = u32::try_from(i % addresses).unwrap_or(0) % (1 << 23);
    Ipv4Addr::from(u32::from(Ipv4Addr::LOCALHOST) + k)
}

/// N devices held from this process; each reconnects when dropped.
pub(crate) struct Fleet {
    up: Arc<AtomicUsize>,
    tasks: JoinSet<()>,
}

impl Fleet {
    pub(crate) fn start(port: u16, n: usize, per_address: usize, key: Arc<PrivateKey>) -> Fleet {
        Fleet::start_on(vec![port], n, per_address, key)
    }

    /// Device `i` connects to `ports[i % ports.len()]` (relays of a cluster) with the agent's
    /// backoff, `per_address` devices on each source address.
    pub(crate) fn start_on(
        ports: Vec<u16>,
        n: usize,
        per_address: usize,
        key: Arc<PrivateKey>,
    ) -> Fleet {
        Fleet::launch(ports, n, key, per_address, Retry::Agent)
    }

    /// [`Fleet::start_on`] with `retry`.
    pub(crate) fn launch(
        ports: Vec<u16>,
        n: usize,
        key: Arc<PrivateKey>,
        per_address: usize,
        retry: Retry,
    ) -> Fleet {
        let ports = Arc::new(ports);
        let up = Arc::new(AtomicUsize::new(0));
        // Bounded concurrent handshakes, as a fleet of real devices would arrive over time.
        let gate = Arc::new(Semaphore::new(256));
        let mut tasks = JoinSet::new();
        for i in 0..n {
            let (up, key, gate) = (up.clone(), key.clone(), gate.clone());
            let port = ports.get(i % ports.len().max(1)).copied().unwrap_or(0);
            let from = source(i, n, per_address);
            tasks.spawn(async move {
                let name = format!("load-{i}");
                let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
                loop {
                    let permit = gate.acquire().await;
                    let session = connect_device(port, from, &name, key.clone()).await;
                    drop(permit);
                    if let Ok((_handle, task)) = session {
                        backoff.reset();
                        up.fetch_add(1, Ordering::Relaxed);
                        let _ = task.await;
                        up.fetch_sub(1, Ordering::Relaxed);
                    }
                    let pause = match retry {
                        Retry::Agent => backoff.next_delay(rand::random::<f64>()),
                        Retry::Every(low, high) => {
                            low + (high.saturating_sub(low)).mul_f64(rand::random::<f64>())
                        }
                    };
                    tokio::time::sleep(pause).await;
                }
            });
        }
        Fleet { up, tasks }
    }

    fn up(&self) -> usize {
        self.up.load(Ordering::Relaxed)
    }

    /// Waits until no device holds a session (they all noticed the relay went away).
    pub(crate) async fn wait_down(&self, limit: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        while self.up() > 0 {
            if start.elapsed() > limit {
                bail!(
                    "{} devices still up {limit:?} after the relay died",
                    self.up()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    pub(crate) async fn wait_all(&self, n: usize, limit: Duration) -> anyhow::Result<Duration> {
        let start = Instant::now();
        while self.up() < n {
            if start.elapsed() > limit {
                bail!("only {} of {n} devices up after {limit:?}", self.up());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(start.elapsed())
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

pub(crate) fn register_devices(
    data_dir: &std::path::Path,
    n: usize,
    key: &PrivateKey,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(data_dir)?;
    let store =
        burrow_relay::store::Store::open(&data_dir.join(burrow_relay::datadir::DATABASE_FILE))?;
    // One key for the whole simulated fleet: only the bulk loader takes that.
    let names: Vec<String> = (0..n).map(|i| format!("load-{i}")).collect();
    store.add_devices_bulk(&names, &[key.public_key().clone()])?;
    Ok(())
}
