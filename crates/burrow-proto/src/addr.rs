//! `HOST:PORT` targets, `[ADDR:]PORT` listen specs and `--expose PORT[=[HOST:]PORT]` specs.

use std::fmt;
use std::str::FromStr;

/// Why an address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    /// No `:PORT` part.
    #[error("{0:?} has no port: write HOST:PORT, e.g. localhost:1883")]
    MissingPort(String),
    /// The port is not a number in 1..=65535.
    #[error("{0:?} is not a port: use a number from 1 to 65535")]
    BadPort(String),
    /// The host part is empty or malformed.
    #[error("{0:?} has no usable host: write HOST:PORT, e.g. localhost:1883 or [::1]:22")]
    BadHost(String),
}

/// Parses a TCP port, 1..=65535.
pub fn parse_port(s: &str) -> Result<u16, AddrError> {
    match s.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(AddrError::BadPort(s.to_string())),
    }
}

/// A host and port to connect to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    /// Host name or address, without brackets.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl Target {
    /// Builds a target.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Target {
            host: host.into(),
            port,
        }
    }
}

impl FromStr for Target {
    type Err = AddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (host, port) = split_host_port(s)?;
        let host = host.ok_or_else(|| AddrError::MissingPort(s.to_string()))?;
        Ok(Target::new(host, port))
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// `[ADDR:]PORT`: where a real listener binds. The address defaults to loopback, like sshd's
/// `GatewayPorts no`; write `0.0.0.0:PORT` to listen on every address.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListenSpec {
    /// Address to bind.
    pub addr: String,
    /// TCP port.
    pub port: u16,
}

/// The bind address of a listen spec that names none.
pub const DEFAULT_LISTEN_ADDR: &str = "127.0.0.1";

impl FromStr for ListenSpec {
    type Err = AddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (host, port) = split_host_port(s)?;
        Ok(ListenSpec {
            addr: host.unwrap_or_else(|| DEFAULT_LISTEN_ADDR.to_string()),
            port,
        })
    }
}

impl fmt::Display for ListenSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Target::new(self.addr.clone(), self.port).fmt(f)
    }
}

/// `PORT[=[HOST:]PORT]`: a device endpoint and the local service behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExposeSpec {
    /// The endpoint port operators use (`NAME:PORT`).
    pub port: u16,
    /// The local service the agent connects to.
    pub to: Target,
}

/// Host of the local service when an expose spec names none.
pub const DEFAULT_SERVICE_HOST: &str = "127.0.0.1";

impl FromStr for ExposeSpec {
    type Err = AddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (port, to) = match s.split_once('=') {
            None => {
                let port = parse_port(s)?;
                (port, Target::new(DEFAULT_SERVICE_HOST, port))
            }
            Some((port, to)) => {
                let port = parse_port(port)?;
                let (host, to_port) = split_host_port(to)?;
                let host = host.unwrap_or_else(|| DEFAULT_SERVICE_HOST.to_string());
                (port, Target::new(host, to_port))
            }
        };
        Ok(ExposeSpec { port, to })
    }
}

/// Splits `HOST:PORT`, `[V6]:PORT` or a bare `PORT`.
fn split_host_port(s: &str) -> Result<(Option<String>, u16), AddrError> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| AddrError::BadHost(s.to_string()))?;
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| AddrError::MissingPort(s.to_string()))?;
        if host.is_empty() {
            return Err(AddrError::BadHost(s.to_string()));
        }
        return Ok((Some(host.to_string()), parse_port(port)?));
    }
    match s.rsplit_once(':') {
        None if !s.is_empty() && !s.bytes().all(|b| b.is_ascii_digit()) => {
            Err(AddrError::MissingPort(s.to_string()))
        }
        None => Ok((None, parse_port(s)?)),
        Some((host, port)) => {
            if host.is_empty() || host.contains(':') || host.contains(char::is_whitespace) {
                return Err(AddrError::BadHost(s.to_string()));
            }
            Ok((Some(host.to_string()), parse_port(port)?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!("localhost:1883".parse(), Ok(Target::new("localhost", 1883)));
        assert_eq!("[::1]:22".parse(), Ok(Target::new("::1", 22)));
        assert_eq!(Target::new("::1", 22).to_string(), "[::1]:22");
        assert!(matches!(
            "1883".parse::<Target>(),
            Err(AddrError::MissingPort(_))
        ));
        assert!(matches!(
            "x:0".parse::<Target>(),
            Err(AddrError::BadPort(_))
        ));
        assert!(matches!(
            "x:99999".parse::<Target>(),
            Err(AddrError::BadPort(_))
        ));
        assert!(matches!(
            ":22".parse::<Target>(),
            Err(AddrError::BadHost(_))
        ));
        assert!(matches!(
            "::1:22".parse::<Target>(),
            Err(AddrError::BadHost(_))
        ));
        assert!(matches!(
            "[]:22".parse::<Target>(),
            Err(AddrError::BadHost(_))
        ));
    }

    #[test]
    fn listen_specs() {
        let l: ListenSpec = "8080".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(l.to_string(), "127.0.0.1:8080");
        let l: ListenSpec = "0.0.0.0:443".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((l.addr.as_str(), l.port), ("0.0.0.0", 443));
    }

    #[test]
    fn expose_specs() {
        let cases = [
            ("22", 22, "127.0.0.1:22"),
            ("80=127.0.0.1:8080", 80, "127.0.0.1:8080"),
            ("80=8080", 80, "127.0.0.1:8080"),
            ("5000=camera.local:80", 5000, "camera.local:80"),
        ];
        for (spec, port, to) in cases {
            let e: ExposeSpec = spec.parse().unwrap_or_else(|e| panic!("{spec}: {e}"));
            assert_eq!((e.port, e.to.to_string().as_str()), (port, to), "{spec}");
        }
        for bad in ["", "x", "80=", "80=host:", "0", "80=a:b:c"] {
            assert!(bad.parse::<ExposeSpec>().is_err(), "{bad}");
        }
    }
}
