//! The `burrow` command: parses arguments, sets up logging and signals, and calls the libraries.
// Denied, not forbidden: `keep_freed_memory` sets a glibc malloc option, which has no safe wrapper.
#![deny(unsafe_code)]

mod agent_cmd;
mod audit_cmd;
mod cli;
mod control_cmd;
mod demo;
mod demo_router;
mod enroll_cmd;
mod exit;
mod fleet_cmd;
mod import_cmd;
mod password;
mod relay_cmd;

use clap::Parser;
use tokio_util::sync::CancellationToken;

use crate::cli::{Cli, Command};
use crate::exit::Failure;

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { exit::USAGE } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    // The demo prints instructions: keep its log to warnings and the audit trail.
    let default_log = match cli.command {
        Command::Demo(_) => "warn,burrow::audit=info",
        _ => "info",
    };
    init_tracing(default_log);
    keep_freed_memory();
    if let Command::Relay(args) = &cli.command
        && args.command.is_none()
    {
        give_back_freed_memory();
    }
    // The agent idles on a Raspberry Pi holding a few sessions: one thread is plenty and keeps
    // its memory down. The relay and the demo use every core.
    let mut builder = match cli.command {
        Command::Agent(_) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("burrow: cannot start the async runtime: {e}");
            std::process::exit(exit::SOFTWARE);
        }
    };
    let result = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        spawn_signal_handler(shutdown.clone());
        match cli.command {
            Command::Relay(args) => relay_cmd::run(*args, shutdown).await,
            Command::Agent(args) => agent_cmd::run(*args, shutdown).await,
            Command::Demo(args) => demo::run(args, shutdown).await,
        }
    });
    if let Err(Failure { code, message }) = result {
        eprintln!("burrow: {message}");
        std::process::exit(code);
    }
}

/// Relay and agent free and reallocate packet-sized buffers all the time, often on another
/// thread than the one that allocated them. glibc's default gives the top of each heap back to
/// the kernel as soon as 128 KiB are free there, so the next burst faults the same pages in
/// again (a fifth of the relay's CPU under bulk transfer, in a profile). Keeping up to 32 MiB per
/// heap, and sending only allocations of 1 MiB or more to mmap, stops that churn; see step 6 of
/// the tuning log in BENCHMARKS.md. Memory held at rest does not change.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes two allocator parameters; it is called before any other
    // thread exists and takes no pointers.
    #[allow(unsafe_code)]
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

/// What [`keep_freed_memory`] keeps is meant for the next burst, not for ever: after an attack
/// (thousands of connections that queued what the caps allow, then went), glibc kept 588 MB
/// resident with 1.2 MB in use. Every few seconds, when the heaps hold more than
/// `FREED_KEPT_MAX` free, it all goes back to the kernel. A transfer in full swing frees and
/// reuses far less than that between two looks.
fn give_back_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const EVERY: std::time::Duration = std::time::Duration::from_secs(5);
        let spawned = std::thread::Builder::new().name("trim".into()).spawn(|| {
            loop {
                std::thread::sleep(EVERY);
                trim_if_much_is_free();
            }
        });
        if let Err(e) = spawned {
            tracing::warn!("cannot start the thread that returns freed memory: {e}");
        }
    }
}

/// Returns the heaps' free memory to the kernel when they hold more than `FREED_KEPT_MAX`:
/// `malloc_trim` also gives back the free pages in the middle of each heap, which no
/// threshold reaches. Returns whether it trimmed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim_if_much_is_free() -> bool {
    const FREED_KEPT_MAX: usize = 48 << 20;
    // SAFETY: mallinfo2 and malloc_trim take no pointers and are thread-safe in glibc (each
    // arena is locked while it is walked).
    #[allow(unsafe_code)]
    let free = unsafe { libc::mallinfo2() }.fordblks;
    if free <= FREED_KEPT_MAX {
        return false;
    }
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(1 << 20);
    }
    true
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    fn rss_kib() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap()
    }

    /// Packet-sized buffers allocated on several threads (as connections do), then freed but
    /// for one in fifty (what outlives an attack): with the relay's malloc settings glibc
    /// keeps nearly all of it resident until it is trimmed.
    #[test]
    fn freed_memory_goes_back_to_the_kernel() {
        super::keep_freed_memory();
        let before = rss_kib();
        let survivors: Vec<Vec<Vec<u8>>> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..4)
                .map(|t| {
                    s.spawn(move || {
                        let all: Vec<Vec<u8>> =
                            (0..12_000).map(|i| vec![(i + t) as u8; 4096]).collect();
                        all.into_iter().step_by(50).collect::<Vec<_>>()
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        let held = rss_kib();
        assert!(
            held > before + 100 * 1024,
            "the allocations were not resident ({before} -> {held} KiB)"
        );
        assert!(super::trim_if_much_is_free(), "nothing to trim");
        let after = rss_kib();
        assert!(
            after < before + 32 * 1024,
            "{after} KiB resident after the trim ({before} before, {held} held)"
        );
        drop(survivors);
    }
}

/// Logs go to stderr, filtered by `BURROW_LOG` (a level, or `TARGET=LEVEL` pairs separated by
/// commas, e.g. `info,burrow_relay=debug`). A filter it cannot read is reported, not ignored.
fn init_tracing(default: &str) {
    use std::io::IsTerminal;
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::prelude::*;
    let fallback = || default.parse::<Targets>().unwrap_or_default();
    let (filter, unreadable) = match std::env::var("BURROW_LOG") {
        Ok(text) if !text.trim().is_empty() => match text.parse::<Targets>() {
            Ok(filter) => (filter, None),
            Err(e) => (fallback(), Some((text, e))),
        },
        _ => (fallback(), None),
    };
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                // Colour codes are for people at a terminal; files, pipes and journald get
                // plain text.
                .with_ansi(std::io::stderr().is_terminal()),
        )
        .with(filter)
        .init();
    if let Some((text, e)) = unreadable {
        tracing::warn!(
            "BURROW_LOG={text:?} is not a log filter ({e}); logging at {default:?} instead. Give a level (error, warn, info, debug, trace) or TARGET=LEVEL pairs separated by commas"
        );
    }
}

fn spawn_signal_handler(shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!("cannot watch SIGTERM: {e}");
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("stopping");
        shutdown.cancel();
    });
}
