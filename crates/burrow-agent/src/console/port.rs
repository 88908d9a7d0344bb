//! The serial port abstraction. The agent talks to ports through [`PortOpener`], so tests can
//! stand in a recording backend for the parts a pty cannot show (a pty drops breaks silently).

use std::io;

use burrow_proto::agent_config::Console;
use tokio::io::{AsyncRead, AsyncWrite};

/// Line control of an open port.
pub trait SerialControl: Send + Sync {
    /// Changes the line speed.
    fn set_baud(&mut self, baud: u32) -> io::Result<()>;
    /// Asserts (`true`) or releases the break condition on the line.
    fn set_break(&mut self, on: bool) -> io::Result<()>;
}

/// An open serial port, split for concurrent use.
pub struct OpenPort {
    /// Bytes from the line.
    pub reader: Box<dyn AsyncRead + Send + Unpin>,
    /// Bytes to the line.
    pub writer: Box<dyn AsyncWrite + Send + Unpin>,
    /// Speed and break.
    pub control: Box<dyn SerialControl>,
}

/// Opens the port of a console (exclusively, with its line settings).
pub trait PortOpener: Send + Sync {
    /// Opens `console.device`; the error says why (missing, busy, not a terminal).
    fn open(&self, console: &Console) -> io::Result<OpenPort>;
}
