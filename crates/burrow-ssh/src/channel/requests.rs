//! The messages of the connection protocol that carry names and fields: what a channel is
//! opened for, channel requests (RFC 4254 §6, RFC 4335 `break`) and global requests, each read
//! with its lengths bounded.

use super::{MAX_COMMAND, MAX_MODES, MAX_NAME};
use crate::wire::{Reader, WireError, Writer};

/// A channel, by our own number for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChannelId(pub u32);

impl std::fmt::Display for ChannelId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "channel {}", self.0)
    }
}

/// What a channel is for (RFC 4254 §6.1, §7.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenKind {
    /// `session`: a shell, a command or a console.
    Session,
    /// `direct-tcpip`: the client asks for a stream to `host:port` (`ssh -W`, `-L`, `-J`).
    DirectTcpip {
        /// Host to connect to.
        host: String,
        /// Port to connect to.
        port: u32,
        /// Where the stream came from, as the client says.
        originator: String,
        /// Its port.
        originator_port: u32,
    },
    /// `forwarded-tcpip`: a connection arrived on a port forwarded with `tcpip-forward`.
    ForwardedTcpip {
        /// The address that was forwarded.
        address: String,
        /// The port that was forwarded.
        port: u32,
        /// Where the connection came from.
        originator: String,
        /// Its port.
        originator_port: u32,
    },
    /// Anything else (refused by burrow).
    Other(String),
}

impl OpenKind {
    /// The channel type as on the wire.
    pub fn name(&self) -> &str {
        match self {
            OpenKind::Session => "session",
            OpenKind::DirectTcpip { .. } => "direct-tcpip",
            OpenKind::ForwardedTcpip { .. } => "forwarded-tcpip",
            OpenKind::Other(name) => name,
        }
    }

    pub(super) fn encode_fields(&self, w: &mut Writer) {
        match self {
            OpenKind::Session | OpenKind::Other(_) => {}
            OpenKind::DirectTcpip {
                host: a,
                port: p,
                originator: o,
                originator_port: op,
            }
            | OpenKind::ForwardedTcpip {
                address: a,
                port: p,
                originator: o,
                originator_port: op,
            } => {
                w.string(a.as_bytes()).u32(*p).string(o.as_bytes()).u32(*op);
            }
        }
    }

    pub(super) fn decode(name: &str, r: &mut Reader<'_>) -> Result<OpenKind, WireError> {
        let endpoint = |r: &mut Reader<'_>| -> Result<(String, u32, String, u32), WireError> {
            Ok((
                r.utf8(MAX_NAME, "host")?.to_string(),
                r.u32("port")?,
                r.utf8(MAX_NAME, "originator address")?.to_string(),
                r.u32("originator port")?,
            ))
        };
        Ok(match name {
            "session" => OpenKind::Session,
            "direct-tcpip" => {
                let (host, port, originator, originator_port) = endpoint(r)?;
                OpenKind::DirectTcpip {
                    host,
                    port,
                    originator,
                    originator_port,
                }
            }
            "forwarded-tcpip" => {
                let (address, port, originator, originator_port) = endpoint(r)?;
                OpenKind::ForwardedTcpip {
                    address,
                    port,
                    originator,
                    originator_port,
                }
            }
            other => {
                let _fields = r.bytes(r.remaining(), "channel type fields")?;
                OpenKind::Other(other.to_string())
            }
        })
    }
}

/// A terminal's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TermSize {
    /// Columns.
    pub cols: u32,
    /// Rows.
    pub rows: u32,
    /// Width in pixels.
    pub width_px: u32,
    /// Height in pixels.
    pub height_px: u32,
}

/// A channel request (RFC 4254 §6, RFC 4335).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `pty-req`.
    PtyReq {
        /// `TERM`.
        term: String,
        /// The size.
        size: TermSize,
        /// Encoded terminal modes.
        modes: Vec<u8>,
    },
    /// `shell`.
    Shell,
    /// `exec` with its command.
    Exec(String),
    /// `subsystem` with its name.
    Subsystem(String),
    /// `env`.
    Env {
        /// Variable name.
        name: String,
        /// Value.
        value: String,
    },
    /// `window-change`.
    WindowChange(TermSize),
    /// `break` with its length in milliseconds (RFC 4335).
    Break {
        /// Milliseconds; 0 means the default of the serial layer.
        ms: u32,
    },
    /// `signal` with the name without `SIG`.
    Signal(String),
    /// `exit-status`.
    ExitStatus(u32),
    /// `exit-signal`.
    ExitSignal {
        /// Signal name without `SIG`.
        name: String,
        /// Whether a core was dumped.
        core_dumped: bool,
        /// Error message.
        message: String,
    },
    /// `eow@openssh.com`: no more writes to the pty (OpenSSH's half-close of a session).
    EndOfWrite,
    /// Anything else, by name (refused).
    Other(String),
}

impl Request {
    /// The request type as on the wire.
    pub fn name(&self) -> &str {
        match self {
            Request::PtyReq { .. } => "pty-req",
            Request::Shell => "shell",
            Request::Exec(_) => "exec",
            Request::Subsystem(_) => "subsystem",
            Request::Env { .. } => "env",
            Request::WindowChange(_) => "window-change",
            Request::Break { .. } => "break",
            Request::Signal(_) => "signal",
            Request::ExitStatus(_) => "exit-status",
            Request::ExitSignal { .. } => "exit-signal",
            Request::EndOfWrite => "eow@openssh.com",
            Request::Other(name) => name,
        }
    }

    pub(super) fn encode_fields(&self, w: &mut Writer) {
        let size = |w: &mut Writer, s: &TermSize| {
            w.u32(s.cols).u32(s.rows).u32(s.width_px).u32(s.height_px);
        };
        match self {
            Request::PtyReq {
                term,
                size: s,
                modes,
            } => {
                w.string(term.as_bytes());
                size(w, s);
                w.string(modes);
            }
            Request::Shell | Request::EndOfWrite | Request::Other(_) => {}
            Request::Exec(s) | Request::Subsystem(s) | Request::Signal(s) => {
                w.string(s.as_bytes());
            }
            Request::Env { name, value } => {
                w.string(name.as_bytes()).string(value.as_bytes());
            }
            Request::WindowChange(s) => size(w, s),
            Request::Break { ms } => {
                w.u32(*ms);
            }
            Request::ExitStatus(code) => {
                w.u32(*code);
            }
            Request::ExitSignal {
                name,
                core_dumped,
                message,
            } => {
                w.string(name.as_bytes())
                    .bool(*core_dumped)
                    .string(message.as_bytes())
                    .string(b"");
            }
        }
    }

    pub(super) fn decode(name: &str, r: &mut Reader<'_>) -> Result<Request, WireError> {
        let size = |r: &mut Reader<'_>| -> Result<TermSize, WireError> {
            Ok(TermSize {
                cols: r.u32("columns")?,
                rows: r.u32("rows")?,
                width_px: r.u32("width")?,
                height_px: r.u32("height")?,
            })
        };
        let text = |r: &mut Reader<'_>, max, field| -> Result<String, WireError> {
            Ok(String::from_utf8_lossy(r.string(max, field)?).into_owned())
        };
        let request = match name {
            "pty-req" => Request::PtyReq {
                term: text(r, MAX_NAME, "TERM")?,
                size: size(r)?,
                modes: r.string(MAX_MODES, "terminal modes")?.to_vec(),
            },
            "shell" => Request::Shell,
            "exec" => Request::Exec(text(r, MAX_COMMAND, "command")?),
            "subsystem" => Request::Subsystem(text(r, MAX_NAME, "subsystem")?),
            "env" => Request::Env {
                name: text(r, MAX_NAME, "variable name")?,
                value: text(r, MAX_COMMAND, "variable value")?,
            },
            "window-change" => Request::WindowChange(size(r)?),
            "break" => Request::Break {
                ms: r.u32("break length")?,
            },
            "signal" => Request::Signal(text(r, MAX_NAME, "signal name")?),
            "exit-status" => Request::ExitStatus(r.u32("exit status")?),
            "exit-signal" => {
                let request = Request::ExitSignal {
                    name: text(r, MAX_NAME, "signal name")?,
                    core_dumped: r.bool("core dumped")?,
                    message: text(r, MAX_COMMAND, "error message")?,
                };
                let _language = r.string(MAX_NAME, "language tag")?;
                request
            }
            "eow@openssh.com" => Request::EndOfWrite,
            other => {
                let _fields = r.bytes(r.remaining(), "request fields")?;
                Request::Other(other.to_string())
            }
        };
        r.finish()?;
        Ok(request)
    }
}

/// A global request (RFC 4254 §4, §7.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GlobalRequest {
    /// `tcpip-forward`: listen on `address:port` (0: any free port) and forward here.
    TcpipForward {
        /// Address to bind.
        address: String,
        /// Port to bind; 0 asks for one.
        port: u32,
    },
    /// `cancel-tcpip-forward`.
    CancelTcpipForward {
        /// Address bound.
        address: String,
        /// Port bound.
        port: u32,
    },
    /// `keepalive@openssh.com`: answered (with failure, as OpenSSH does) by the layer itself.
    Keepalive,
    /// Anything else, by name.
    Other(String),
    /// An application's own request carrying one string (an unknown name with other data
    /// reads as [`GlobalRequest::Other`]).
    WithData {
        /// The request name (`name@domain`).
        name: String,
        /// The string it carries.
        data: Vec<u8>,
    },
}

impl GlobalRequest {
    /// The request name as on the wire.
    pub fn name(&self) -> &str {
        match self {
            GlobalRequest::TcpipForward { .. } => "tcpip-forward",
            GlobalRequest::CancelTcpipForward { .. } => "cancel-tcpip-forward",
            GlobalRequest::Keepalive => "keepalive@openssh.com",
            GlobalRequest::Other(name) | GlobalRequest::WithData { name, .. } => name,
        }
    }
}

/// Why an open was refused (RFC 4254 §5.1).
pub mod open_failure {
    /// `SSH_OPEN_ADMINISTRATIVELY_PROHIBITED`.
    pub const PROHIBITED: u32 = 1;
    /// `SSH_OPEN_CONNECT_FAILED`.
    pub const CONNECT_FAILED: u32 = 2;
    /// `SSH_OPEN_UNKNOWN_CHANNEL_TYPE`.
    pub const UNKNOWN_CHANNEL_TYPE: u32 = 3;
    /// `SSH_OPEN_RESOURCE_SHORTAGE`.
    pub const RESOURCE_SHORTAGE: u32 = 4;
}
