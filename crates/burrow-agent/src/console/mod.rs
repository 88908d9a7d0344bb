//! Serial consoles: local serial ports served to the relay as RFC 2217 endpoints.
//!
//! # Layout
//! - [`port`]: the serial port abstraction (open, read, write, baud, break) and its opener.
//! - `tty`: the real implementation on Linux terminals (termios, TIOCSBRK).
//! - `serve`: one relay connection to a console: RFC 2217 server, offline/online notices.

pub mod port;
mod serve;
mod tty;

pub(crate) use serve::{Speeds, serve};
pub use tty::TtyOpener;
