//! Throughput (bulk streams, one and eight, both directions) and latency (64-byte round trips)
//! through every system.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::Args;
use crate::env::Env;
use crate::report::Results;
use crate::systems::{self, Backends, Path};

/// Echoes everything back; the latency target behind every tunnel.
pub async fn echo_server() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = tcp.set_nodelay(true);
            tokio::spawn(async move {
                let (mut r, mut w) = tcp.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    Ok(port)
}

/// Waits until a byte sent to `port` comes back (the tunnel is really up, not just listening).
pub async fn wait_echo(port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let attempt = async {
            let mut tcp = TcpStream::connect(("127.0.0.1", port)).await?;
            tcp.write_all(b"x").await?;
            let mut b = [0u8; 1];
            tcp.read_exact(&mut b).await?;
            Ok::<(), std::io::Error>(())
        };
        if let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(2), attempt).await {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("no echo through port {port} within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The bulk service behind every tunnel. A client sends `U` and then data until it shuts down
/// its side (the server answers with the byte count), or `D` and a duration in milliseconds
/// (the server sends for that long, then closes). One TCP connection is one stream: no control
/// connection that could queue behind data on a multiplexed SSH connection.
pub async fn bulk_server() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut mode = [0u8; 1];
                if tcp.read_exact(&mut mode).await.is_err() {
                    return;
                }
                let mut buf = vec![0u8; 128 * 1024];
                if mode[0] == b'U' {
                    let mut total = 0u64;
                    while let Ok(n) = tcp.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        total += n as u64;
                    }
                    let _ = tcp.write_all(&total.to_be_bytes()).await;
                } else {
                    let mut ms = [0u8; 8];
                    if tcp.read_exact(&mut ms).await.is_err() {
                        return;
                    }
                    let end = Instant::now() + Duration::from_millis(u64::from_be_bytes(ms));
                    while Instant::now() < end {
                        if tcp.write_all(&buf).await.is_err() {
                            return;
                        }
                    }
                }
                let _ = tcp.shutdown().await;
            });
        }
    });
    Ok(port)
}

/// Bytes moved by one stream, and when the last of them arrived.
async fn bulk_stream(port: u16, seconds: u32, download: bool) -> anyhow::Result<u64> {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    let mut buf = vec![0u8; 128 * 1024];
    if download {
        tcp.write_all(b"D").await?;
        tcp.write_all(&(u64::from(seconds) * 1000).to_be_bytes())
            .await?;
        let mut total = 0u64;
        loop {
            let n = tcp.read(&mut buf).await?;
            if n == 0 {
                return Ok(total);
            }
            total += n as u64;
        }
    }
    tcp.write_all(b"U").await?;
    let end = Instant::now() + Duration::from_secs(u64::from(seconds));
    while Instant::now() < end {
        tcp.write_all(&buf).await?;
    }
    tcp.shutdown().await?;
    let mut count = [0u8; 8];
    tcp.read_exact(&mut count).await?;
    Ok(u64::from_be_bytes(count))
}

/// Gbit/s over `streams` parallel connections, counted when the receiver has everything.
pub(crate) async fn throughput(
    port: u16,
    seconds: u32,
    streams: u32,
    download: bool,
) -> anyhow::Result<f64> {
    let start = Instant::now();
    let runs: Vec<_> = (0..streams)
        .map(|_| tokio::spawn(bulk_stream(port, seconds, download)))
        .collect();
    let mut total = 0u64;
    for r in runs {
        total += tokio::time::timeout(Duration::from_secs(u64::from(seconds) + 60), r)
            .await
            .context("a stream stalled")???;
    }
    Ok(total as f64 * 8.0 / start.elapsed().as_secs_f64() / 1e9)
}

/// p50 and p99 of 64-byte round trips, in microseconds.
pub async fn latency(port: u16, n: usize) -> anyhow::Result<(f64, f64)> {
    let mut tcp = connect_echo(port).await?;
    // The first tenth warms up the path and is not counted.
    round_trips(&mut tcp, n / 10).await?;
    let mut samples = round_trips(&mut tcp, n).await?;
    Ok(percentiles(&mut samples))
}

/// A connection to an echo service, for [`round_trips`].
async fn connect_echo(port: u16) -> anyhow::Result<TcpStream> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

/// `n` round trips of 64 bytes on `tcp`, each in microseconds.
async fn round_trips(tcp: &mut TcpStream, n: usize) -> anyhow::Result<Vec<f64>> {
    let msg = [7u8; 64];
    let mut back = [0u8; 64];
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        tcp.write_all(&msg).await?;
        tcp.read_exact(&mut back).await?;
        samples.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(samples)
}

/// p50 and p99 of `samples` (sorted in place).
fn percentiles(samples: &mut [f64]) -> (f64, f64) {
    samples.sort_by(f64::total_cmp);
    let pick = |q: f64| {
        samples
            .get(((samples.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or(0.0)
    };
    (pick(0.5), pick(0.99))
}

/// The middle value (the lower middle of an even count); NaN-free input assumed.
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values
        .get(values.len().saturating_sub(1) / 2)
        .copied()
        .unwrap_or(f64::NAN)
}

/// The throughput runs of one round: streams, direction (`true`: device→operator) and label.
const RUNS: [(u32, bool, &str); 4] = [
    (1, true, "throughput, 1 stream, device→operator"),
    (1, false, "throughput, 1 stream, operator→device"),
    (8, true, "throughput, 8 streams, device→operator"),
    (8, false, "throughput, 8 streams, operator→device"),
];

/// What one path measured: one value per round for throughput, every round trip for latency.
#[derive(Default)]
struct Samples {
    /// Gbit/s per entry of [`RUNS`].
    gbps: [Vec<f64>; 4],
    /// Round trips, µs, from every round's latency phase.
    round_trips: Vec<f64>,
}

/// Round trips in one slice of a latency phase.
const SLICE: usize = 100;

/// One round's latency phase: a connection through every path, warmed up, then the round
/// trips taken in slices of [`SLICE`], every path in turn (starting one path further on each
/// slice). A round trip takes a few hundred microseconds, so a path's `n` take about a second;
/// taken one path after the other, a slow second of this machine's (its speed drifts by about
/// 20 % from one minute to the next) landed on one path alone and decided its p50 against the
/// others. Sliced, it lands on all of them alike.
async fn latency_phase(
    paths: &[Path],
    round: usize,
    n: usize,
    samples: &mut [Samples],
) -> anyhow::Result<()> {
    let mut conns = Vec::with_capacity(paths.len());
    for path in paths {
        let mut tcp = connect_echo(path.echo).await?;
        round_trips(&mut tcp, n / 10).await?;
        conns.push(tcp);
    }
    for slice in 0..n.div_ceil(SLICE) {
        // The last slice takes what is left: `n` round trips per path in all.
        let count = SLICE.min(n.saturating_sub(slice * SLICE));
        for k in 0..conns.len() {
            let i = (k + round + slice) % conns.len();
            if let (Some(tcp), Some(s)) = (conns.get_mut(i), samples.get_mut(i)) {
                let got = round_trips(tcp, count).await?;
                s.round_trips.extend(got);
            }
        }
    }
    Ok(())
}

/// The medians of a path's rounds into the results.
fn report(path: &Path, mut samples: Samples, results: &mut Results) {
    eprintln!("  {}", path.system);
    for ((_, _, label), runs) in RUNS.iter().zip(samples.gbps.iter_mut()) {
        let gbps = median(runs);
        eprintln!("    {label}: {gbps:.2} Gbit/s");
        results.push(label, &path.system, gbps, "Gbit/s");
    }
    let (p50, p99) = percentiles(&mut samples.round_trips);
    eprintln!("    latency p50 {p50:.0} µs, p99 {p99:.0} µs");
    results.push("latency p50 (64 B round trip)", &path.system, p50, "µs");
    results.push("latency p99 (64 B round trip)", &path.system, p99, "µs");
}

/// Every path up at once (idle ones cost nothing), then measured in rounds: each round takes
/// each kind of throughput run through every path, starting one path further on each time,
/// then round trips from all paths in slices ([`latency_phase`]). This machine's speed drifts by
/// about 20 % over minutes (other guests on the host); measured one system after the other,
/// a slow minute lands on one system's runs alone and decides a ratio between systems. In
/// rounds, it lands on all of them alike.
pub async fn run_all(env: &Env, args: &Args, results: &mut Results) -> anyhow::Result<()> {
    let b = Backends {
        bulk: bulk_server().await?,
        echo: echo_server().await?,
    };
    let mut paths = vec![systems::direct(b)];
    // OpenSSH with its own cipher choice (chacha20-poly1305), and with burrow's default
    // (aes256-gcm) for same-cipher ratios.
    for cipher in [None, Some(systems::SAME_CIPHER)] {
        paths.push(systems::openssh(env, b, cipher).await?);
    }
    for cipher in [None, Some(systems::SAME_CIPHER)] {
        paths.push(systems::openssh_operator(env, b, cipher).await?);
    }
    for noise in [true, false] {
        if let Some(path) = systems::rathole(env, b, noise).await? {
            paths.push(path);
        }
    }
    let site = systems::burrow_site(env, "relay-traffic", b).await?;
    paths.push(systems::burrow_exposure(&site));
    for cipher in [None, Some(systems::SAME_CIPHER)] {
        paths.push(systems::burrow_operator(env, &site, cipher).await?);
    }
    let mut samples: Vec<Samples> = paths.iter().map(|_| Samples::default()).collect();
    let rounds = args.repeats.max(1);
    for round in 0..rounds {
        eprintln!("  round {} of {rounds}", round + 1);
        // Each kind of run through every path before the next kind: the runs that a ratio
        // compares (burrow's operator path against OpenSSH's, say) are seconds apart, not the
        // minute that all of one path's runs take.
        for (run, (streams, reverse, _)) in RUNS.iter().enumerate() {
            for k in 0..paths.len() {
                let i = (k + round + run) % paths.len();
                if let (Some(path), Some(s)) = (paths.get(i), samples.get_mut(i))
                    && let Some(gbps) = s.gbps.get_mut(run)
                {
                    gbps.push(throughput(path.bulk, args.seconds, *streams, *reverse).await?);
                }
            }
        }
        latency_phase(&paths, round, args.round_trips, &mut samples).await?;
    }
    for (path, s) in paths.iter().zip(samples) {
        report(path, s, results);
    }
    drop(paths);
    // The agent's footprint with one endpoint and one console, while it is here.
    crate::devices::agent_footprint(env, &site, results).await?;
    drop(site);
    Ok(())
}
