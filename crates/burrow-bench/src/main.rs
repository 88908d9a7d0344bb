//! `burrow-bench`: measures burrow against OpenSSH and rathole on loopback, in one run on one
//! machine, and writes `BENCHMARKS.md` plus raw JSON.
//!
//! # Layout
//! - `env`: finding and installing the tools (sshd, rathole), keys, ports, processes.
//! - `systems`: starting each tunnel (direct, OpenSSH `ssh -R`, rathole, burrow exposure and
//!   operator paths) with a bulk-transfer port and an echo port behind it.
//! - `traffic`: throughput (bulk streams) and latency (64-byte round trips).
//! - `fleet`: many device sessions held from one process, from chosen source addresses, each
//!   reconnecting with the agent's backoff or at autossh's fixed interval.
//! - `devices`: idle devices held by one relay; memory per device; reconnects.
//! - `cgnat`: a fleet behind one carrier NAT address restarted, with the relay's default flags
//!   and with its per-address limits lifted.
//! - `cluster`: relays on PostgreSQL: `ls` latency on both backends, a storm across three
//!   relays, failover after a relay is killed.
//! - `cellular`: idle bytes a month per device (network namespaces, veth counters) and
//!   behaviour through an emulated cellular link (blackout, throughput, latency).
//! - `attacks`: hostile peers against a relay with default flags: memory under each attack, and
//!   what is left once they are gone.
//! - `kex`: the bytes of one key exchange with each method (the weekly rekey of an idle device).
//! - `enroll`: a batch of devices enrolling with one reusable join token, until every agent is up.
//! - `webconsole`: a console keystroke's echo through the web console and through SSH.
//! - `report`: the Markdown and JSON output, with targets.
#![forbid(unsafe_code)]

mod attacks;
mod cellular;
mod cgnat;
mod cluster;
mod devices;
mod enroll;
mod env;
mod fleet;
mod kex;
mod report;
mod systems;
mod traffic;
mod webconsole;

use std::path::PathBuf;

use clap::Parser;

/// Benchmarks burrow against OpenSSH and rathole on loopback.
#[derive(Parser, Debug)]
#[command(name = "burrow-bench")]
pub struct Args {
    /// Tiny sizes and no rathole install: checks the harness itself (used by ./test.sh).
    #[arg(long)]
    pub smoke: bool,
    /// Seconds per throughput run.
    #[arg(long, default_value_t = 2)]
    pub seconds: u32,
    /// Rounds: each takes every throughput run once (the median is reported) and
    /// `--round-trips` through every path.
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// Round trips through each path in each round (taken in slices of 100, the paths in
    /// turn); the p50 and p99 are over all of them.
    #[arg(long, default_value_t = 2000)]
    pub round_trips: usize,
    /// Idle burrow devices to hold (repeatable).
    #[arg(long, default_values_t = vec![1000, 10000])]
    pub devices: Vec<usize>,
    /// Idle sshd devices (`ssh -N -R` processes).
    #[arg(long, default_value_t = 200)]
    pub sshd_devices: usize,
    /// Longest wait for an OpenSSH reconnect after a reboot, in seconds.
    #[arg(long, default_value_t = 90)]
    pub reconnect_cap: u64,
    /// Where BENCHMARKS.md and results.json go.
    #[arg(long, default_value = ".")]
    pub out: PathBuf,
    /// The burrow binary (default: next to this one).
    #[arg(long)]
    pub burrow: Option<PathBuf>,
    /// Seconds of the idle window whose bytes are scaled to a month.
    #[arg(long, default_value_t = 600)]
    pub idle_seconds: u64,
    /// Only rewrite BENCHMARKS.md (into --out) from this results.json of an earlier run.
    #[arg(long, value_name = "RESULTS_JSON")]
    pub render: Option<PathBuf>,
    /// Skip rathole even when it could be installed.
    #[arg(long)]
    pub no_rathole: bool,
    /// Devices registered for the `ls` latency on SQLite and PostgreSQL (repeatable).
    #[arg(long, default_values_t = vec![10_000, 100_000])]
    pub ls_devices: Vec<usize>,
    /// Idle devices in the reconnect storm across three relays on PostgreSQL.
    #[arg(long, default_value_t = 10_000)]
    pub cluster_devices: usize,
    /// Agents in the failover measurement (each a process holding two sessions).
    #[arg(long, default_value_t = 10)]
    pub failover_devices: usize,
    /// Devices of the idle fleets and reconnect storms on each source address (127.0.0.1,
    /// 127.0.0.2, ...): a cellular fleet reaches the relay from a handful of carrier NAT
    /// addresses. The relay runs its default flags, per-address limits included.
    #[arg(long, default_value_t = 250)]
    pub devices_per_address: usize,
    /// Devices behind one carrier NAT address in the restart measurement.
    #[arg(long, default_value_t = 300)]
    pub cgnat_devices: usize,
    /// Devices enrolling at once with one reusable join token.
    #[arg(long, default_value_t = 50)]
    pub enroll_agents: usize,
    /// Only these parts (repeatable; default all), for tuning runs: the report then holds
    /// only their numbers.
    #[arg(long, value_enum)]
    pub only: Vec<Part>,
}

/// The parts of a run.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// Throughput and latency through each system.
    Traffic,
    /// Idle devices, memory per device, reconnects.
    Devices,
    /// Idle bytes and the emulated cellular link.
    Cellular,
    /// Relays on PostgreSQL.
    Cluster,
    /// Hostile peers: relay memory under each attack and after.
    Attacks,
    /// A fleet behind one carrier NAT address, restarted.
    Cgnat,
    /// A batch of devices enrolling with one join token.
    Enroll,
    /// Console echo through the web console and through SSH.
    Web,
}

impl Args {
    fn runs(&self, part: Part) -> bool {
        self.only.is_empty() || self.only.contains(&part)
    }
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if let Some(results) = &args.render {
        return report::render(results, &args.out);
    }
    if args.smoke {
        args.seconds = 1;
        args.repeats = 1;
        args.round_trips = 50;
        args.devices = vec![20];
        args.sshd_devices = 5;
        args.reconnect_cap = 3;
        args.no_rathole = true;
        args.ls_devices = vec![100];
        args.cluster_devices = 30;
        args.failover_devices = 2;
        args.cgnat_devices = 20;
        args.enroll_agents = 5;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

/// Keeps what the parts so far measured in `results.json`, so that a failure late in a long
/// run loses only its own part (`--render` makes the report from it).
fn partial(args: &Args, results: &report::Results) {
    if let Err(e) = report::write(&args.out, results) {
        eprintln!("burrow-bench: could not keep the results so far: {e:#}");
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let env = env::Env::prepare(&args).await?;
    let mut results = report::Results::new(&env);
    if args.runs(Part::Traffic) {
        eprintln!("burrow-bench: traffic (throughput and latency) through each system");
        traffic::run_all(&env, &args, &mut results).await?;
        partial(&args, &results);
    }
    if args.runs(Part::Devices) {
        eprintln!("burrow-bench: idle devices and reconnects");
        devices::run_all(&env, &args, &mut results).await?;
        partial(&args, &results);
    }
    if args.runs(Part::Cgnat) {
        eprintln!("burrow-bench: a fleet behind one carrier NAT address, restarted");
        cgnat::run(&env, &args, &mut results).await?;
        partial(&args, &results);
    }
    if args.runs(Part::Enroll) {
        eprintln!(
            "burrow-bench: {} devices enrolling with one reusable join token",
            args.enroll_agents
        );
        enroll::run(&env, &args, &mut results).await?;
        partial(&args, &results);
    }
    if args.runs(Part::Cluster) {
        eprintln!("burrow-bench: relays on PostgreSQL");
        cluster::run_all(&env, &args, &mut results).await?;
        partial(&args, &results);
    }
    if args.runs(Part::Web) {
        eprintln!("burrow-bench: console echo through the web console and through SSH");
        webconsole::run(&env, &args, &mut results).await?;
    }
    if args.runs(Part::Attacks) {
        eprintln!("burrow-bench: hostile peers against a relay with default flags");
        attacks::run_all(&env, &args, &mut results).await?;
        partial(&args, &results);
    }
    let cellular = if args.runs(Part::Cellular) {
        eprintln!("burrow-bench: the cellular link (idle cost, blackout, throughput, latency)");
        let mut rows = cellular::run_all(&env, &args).await?;
        rows.extend(kex::rows()?);
        rows
    } else {
        Vec::new()
    };
    for r in cellular {
        match &r.note {
            Some(note) => results.push_note(&r.group, &r.system, r.value, r.unit, note),
            None => results.push(&r.group, &r.system, r.value, r.unit),
        }
    }
    report::write(&args.out, &results)?;
    eprintln!(
        "burrow-bench: wrote {}",
        args.out.join("BENCHMARKS.md").display()
    );
    if args.smoke {
        // Only a run of every part can have every row.
        if args.only.is_empty() {
            results.check_complete()?;
        }
        println!(
            "burrow-bench smoke: {} measurements, 0 failed",
            results.len()
        );
    }
    Ok(())
}
