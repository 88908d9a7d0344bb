//! `burrow-linkemu`: a bad link on loopback, for trying burrow (or anything over TCP) as a
//! cellular device would see it. Settings change while it runs, one command a line on stdin.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use burrow_linkemu::{Impairment, Link};
use clap::Parser;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Forwards TCP connections through an emulated bad link (delay, jitter, loss, rate, blackout).
///
/// Commands on stdin: `blackout on|off`, `delay MS`, `jitter MS`, `loss FRACTION`,
/// `rate KBIT|off`, `show`.
#[derive(Parser, Debug)]
#[command(name = "burrow-linkemu", version)]
struct Args {
    /// Where clients connect (loopback; port 0 picks one).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Where connections go.
    #[arg(long)]
    to: SocketAddr,
    /// Start from the cellular profile (300 ± 100 ms, 3 % loss, 2 Mbit/s); flags override it.
    #[arg(long)]
    cellular: bool,
    /// One-way delay in milliseconds.
    #[arg(long)]
    delay_ms: Option<u64>,
    /// Jitter in milliseconds (either way).
    #[arg(long)]
    jitter_ms: Option<u64>,
    /// Share of segments lost and retransmitted (0 to 1).
    #[arg(long)]
    loss: Option<f64>,
    /// Rate each way in kbit/s.
    #[arg(long)]
    rate_kbit: Option<u64>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut impairment = if args.cellular {
        Impairment::cellular()
    } else {
        Impairment::default()
    };
    if let Some(ms) = args.delay_ms {
        impairment.delay = Duration::from_millis(ms);
    }
    if let Some(ms) = args.jitter_ms {
        impairment.jitter = Duration::from_millis(ms);
    }
    if let Some(loss) = args.loss {
        anyhow::ensure!(
            (0.0..=1.0).contains(&loss),
            "--loss {loss}: give a fraction from 0 to 1"
        );
        impairment.loss = loss;
    }
    if let Some(kbit) = args.rate_kbit {
        impairment.rate = Some(kbit * 1000 / 8);
    }
    let listener = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let link = Link::start(listener, args.to, impairment, CancellationToken::new())?;
    println!("listening on {} -> {}", link.addr(), args.to);
    println!("{:?}", link.impairment());
    // Commands come from a plain thread: stdin blocks, the forwarding does not.
    let control = link.clone();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines().map_while(Result::ok) {
            match command(&control, &line) {
                Ok(()) => println!("{:?} bytes={:?}", control.impairment(), control.bytes()),
                Err(e) => eprintln!("{e}"),
            }
        }
    });
    // Forward until killed.
    std::future::pending::<()>().await;
    Ok(())
}

fn command(link: &Link, line: &str) -> Result<(), String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let number = |w: &str| {
        w.parse::<f64>()
            .map_err(|_| format!("{w:?} is not a number"))
    };
    match words.as_slice() {
        ["blackout", "on"] => link.set(|i| i.blackout = true),
        ["blackout", "off"] => link.set(|i| i.blackout = false),
        ["delay", ms] => {
            let ms = number(ms)?;
            link.set(|i| i.delay = Duration::from_secs_f64(ms.max(0.0) / 1000.0));
        }
        ["jitter", ms] => {
            let ms = number(ms)?;
            link.set(|i| i.jitter = Duration::from_secs_f64(ms.max(0.0) / 1000.0));
        }
        ["loss", p] => {
            let p = number(p)?;
            link.set(|i| i.loss = p.clamp(0.0, 1.0));
        }
        ["rate", "off"] => link.set(|i| i.rate = None),
        ["rate", kbit] => {
            let kbit = number(kbit)?;
            link.set(|i| i.rate = Some((kbit.max(1.0) * 1000.0 / 8.0) as u64));
        }
        ["show"] | [] => {}
        _ => {
            return Err(format!(
                "unknown command {line:?}: blackout on|off, delay MS, jitter MS, loss FRACTION, rate KBIT|off, show"
            ));
        }
    }
    Ok(())
}
