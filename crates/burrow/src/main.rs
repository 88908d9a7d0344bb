//! The `burrow` command: parses arguments, sets up logging and signals, and calls the libraries.
#![forbid(unsafe_code)]

mod agent_cmd;
mod cli;
mod demo;
mod demo_router;
mod exit;
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
        _ => "info,russh=warn",
    };
    init_tracing(default_log);
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
            Command::Relay(args) => relay_cmd::run(args, shutdown).await,
            Command::Agent(args) => agent_cmd::run(args, shutdown).await,
            Command::Demo(args) => demo::run(args, shutdown).await,
        }
    });
    if let Err(Failure { code, message }) = result {
        eprintln!("burrow: {message}");
        std::process::exit(code);
    }
}

fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BURROW_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
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
