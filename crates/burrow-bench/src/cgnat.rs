//! A fleet behind one carrier NAT address: devices on SIM plans reach the relay from a handful
//! of carrier addresses. N devices from one address, each retrying every 5 to 10 s like
//! autossh, are brought up, the relay is killed with SIGKILL and restarted, and the time until
//! every device is back is taken: with the relay's default flags and with its per-address
//! limits lifted, in the same run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::Args;
use crate::env::{Env, free_port};
use crate::fleet::{Fleet, Retry, register_devices};
use crate::report::Results;
use crate::systems::start_relay_with;

/// The group of this part's results.
pub const GROUP: &str = "restart behind one carrier NAT address";
/// The row of the default flags.
pub const DEFAULT_FLAGS: &str = "burrow, default flags: all back";
/// The row with the per-address limits lifted.
pub const LIFTED: &str = "burrow, per-address limits lifted: all back";

/// The relay's flags of each run.
const RUNS: [(&str, &[&str]); 2] = [
    (DEFAULT_FLAGS, &[]),
    (
        LIFTED,
        &[
            "--max-unauthenticated-per-ip",
            "20000",
            "--max-unauthenticated",
            "20000",
            "--handshakes-per-ip",
            "0",
        ],
    ),
];

/// A counter of the relay's metrics page (0 when it cannot be read).
async fn counter(port: u16, line: &str) -> f64 {
    let read = async {
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n")
            .await?;
        let mut page = String::new();
        tcp.read_to_string(&mut page).await?;
        Ok::<_, std::io::Error>(page)
    };
    let page = read.await.unwrap_or_default();
    page.lines()
        .find_map(|l| l.strip_prefix(line))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

pub async fn run(env: &Env, args: &Args, results: &mut Results) -> anyhow::Result<()> {
    let n = args.cgnat_devices;
    let (low, high) = if args.smoke {
        (Duration::from_millis(500), Duration::from_secs(1))
    } else {
        (Duration::from_secs(5), Duration::from_secs(10))
    };
    let key = Arc::new(burrow_io::keys::load_private_key(&env.key)?);
    for (i, (row, lifted)) in RUNS.into_iter().enumerate() {
        let data_dir = env.path(&format!("relay-cgnat-{i}"));
        register_devices(&data_dir, n, &key)?;
        let (port, metrics) = (free_port(), free_port());
        let metrics_flag = format!("127.0.0.1:{metrics}");
        let mut flags = lifted.to_vec();
        flags.extend(["--metrics", metrics_flag.as_str()]);
        let relay = start_relay_with(env, &data_dir, port, &flags).await?;
        // Every device from 127.0.0.1, each retrying 5 to 10 s after a loss or a refusal.
        let fleet = Fleet::launch(vec![port], n, key.clone(), n, Retry::Every(low, high));
        fleet.wait_all(n, Duration::from_secs(600)).await?;
        relay.signal(rustix::process::Signal::KILL);
        drop(relay);
        fleet.wait_down(Duration::from_secs(120)).await?;
        let restarted = Instant::now();
        let _relay = start_relay_with(env, &data_dir, port, &flags).await?;
        fleet.wait_all(n, Duration::from_secs(600)).await?;
        let took = restarted.elapsed().as_secs_f64();
        let refused = counter(
            metrics,
            "burrow_connections_refused_total{reason=\"rate\"} ",
        )
        .await
            + counter(
                metrics,
                "burrow_connections_refused_total{reason=\"per_ip\"} ",
            )
            .await;
        eprintln!(
            "    {n} devices, {row} {took:.1} s after the restart, {refused} connections refused"
        );
        results.push(&format!("{GROUP} ({n} devices)"), row, took, "s");
        results.push(
            &format!("{GROUP} ({n} devices)"),
            &row.replace("all back", "connections refused after the restart"),
            refused,
            "connections",
        );
    }
    Ok(())
}
