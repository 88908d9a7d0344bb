//! Serial consoles: local serial ports kept open for the agent's life, logged on the device,
//! watched for alert patterns, and served to the relay as RFC 2217 endpoints.
//!
//! # Layout
//! - [`port`]: the serial port abstraction (open, read, write, settings, break, DTR/RTS).
//! - `tty`: the real implementation on Linux terminals (termios, TIOCSBRK, TIOCMBIS).
//! - [`locate`]: finding a port by path or USB identity (sysfs), again after replugging.
//! - `keeper`: one port kept open, attached or not: log, alerts, settings, gone and back.
//! - `ring`: the port log on the device's disk, a bounded ring of segment files.
//! - `alerts`: alerts queued on the device until the relay acknowledges them.
//! - `upload`: the port logs' and alerts' channel to the relay.
//! - `power`: the `[[console.power]]` commands.
//! - `serve`: one relay connection to a console: RFC 2217 server in front of its keeper.

mod alerts;
mod keeper;
mod keeper_task;
pub mod locate;
pub mod port;
mod power;
mod ring;
mod serve;
mod tty;
mod upload;

pub(crate) use alerts::AlertQueue;
pub(crate) use keeper::{Keeper, KeeperEnv};
pub(crate) use serve::serve;
pub use tty::TtyOpener;
pub(crate) use upload::{Uploads, run as run_uploads};
