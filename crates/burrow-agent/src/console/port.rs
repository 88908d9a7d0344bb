//! The serial port abstraction. The agent talks to ports through [`PortOpener`], so tests can
//! stand in a recording backend for the parts a pty cannot show (a pty drops breaks silently).

use std::io;
use std::path::Path;

use burrow_proto::serial::LineSettings;
use tokio::io::{AsyncRead, AsyncWrite};

/// Line control of an open port.
pub trait SerialControl: Send + Sync {
    /// Changes the line speed.
    fn set_baud(&mut self, baud: u32) -> io::Result<()>;
    /// Asserts (`true`) or releases the break condition on the line.
    fn set_break(&mut self, on: bool) -> io::Result<()>;
    /// Applies speed, framing and flow control. A backend without framing changes only the
    /// speed.
    fn set_line(&mut self, settings: &LineSettings) -> io::Result<()> {
        self.set_baud(settings.baud)
    }
    /// Asserts or clears DTR and RTS.
    fn set_modem(&mut self, _dtr: bool, _rts: bool) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this port has no modem control lines",
        ))
    }
}

/// An open serial port, split for concurrent use.
pub struct OpenPort {
    /// Bytes from the line.
    pub reader: Box<dyn AsyncRead + Send + Unpin>,
    /// Bytes to the line.
    pub writer: Box<dyn AsyncWrite + Send + Unpin>,
    /// Speed, framing, break and modem lines.
    pub control: Box<dyn SerialControl>,
}

/// Opens the port of a console (exclusively, with its line settings).
pub trait PortOpener: Send + Sync {
    /// Opens `path` with `settings`; the error says why (missing, busy, not a terminal).
    fn open(&self, path: &Path, settings: &LineSettings) -> io::Result<OpenPort>;
}
