//! One `[[console]]` of the agent's configuration: which port (by path, by-id/by-path link or
//! USB identity), its line settings, its port log, pattern alerts and power commands.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::agent_config::{ConfigError, Seconds};
use crate::serial::{FlowControl, LineSettings, Mapping, Parity, check_baud};

/// First endpoint port of consoles (the RFC 2217 port number); later ones count up.
pub const DEFAULT_CONSOLE_PORT: u16 = 2217;
/// Default console speed.
pub const DEFAULT_BAUD: u32 = 9600;
/// Default size of a console's port log on the device.
pub const DEFAULT_LOG_SIZE: u64 = 4 << 20;
/// Smallest port log accepted (four segments of 4 KiB).
pub const MIN_LOG_SIZE: u64 = 16 << 10;
/// Default time an alert rule stays quiet after it fired.
pub const DEFAULT_ALERT_EVERY: Duration = Duration::from_secs(300);
/// Lines of context an alert carries before and after the match, by default.
pub const DEFAULT_ALERT_CONTEXT: usize = 3;
/// Most context lines an alert carries on either side.
pub const MAX_ALERT_CONTEXT: usize = 20;
/// Default pause between off and on of a power cycle without a cycle command.
pub const DEFAULT_CYCLE_DELAY: Duration = Duration::from_secs(5);
/// Default time a power command may take.
pub const DEFAULT_POWER_TIMEOUT: Duration = Duration::from_secs(30);
/// Default length of the BREAK held after a power cycle (`^Ecp` `b`).
pub const DEFAULT_BREAK_HOLD: Duration = Duration::from_secs(10);
/// Longest BREAK a power cycle may hold.
pub const MAX_BREAK_HOLD: Duration = Duration::from_secs(120);

/// When the port log leaves the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum LogUpload {
    /// Whenever the link is up (batched, compressed).
    #[default]
    Always,
    /// While an operator is attached to the console (what it printed meanwhile goes first).
    OnAttach,
    /// Never: the log stays on the device (alerts are still sent).
    Never,
}

impl LogUpload {
    /// As written in the config.
    pub fn name(self) -> &'static str {
        match self {
            LogUpload::Always => "always",
            LogUpload::OnAttach => "on-attach",
            LogUpload::Never => "never",
        }
    }
}

/// A USB serial adapter named by identity: `VID:PID[:SERIAL[:INTERFACE]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsbId {
    /// Vendor id.
    pub vendor: u16,
    /// Product id.
    pub product: u16,
    /// The adapter's serial number (`*` or empty: any).
    pub serial: Option<String>,
    /// The interface of a multi-port adapter (`bInterfaceNumber`).
    pub interface: Option<u8>,
}

impl UsbId {
    /// Parses `0403:6001`, `0403:6001:A10K3ZQ1`, `0403:6011::2` (any serial, interface 2).
    pub fn parse(text: &str) -> Result<UsbId, String> {
        let usage = || {
            format!(
                "usb = {text:?}: write VID:PID[:SERIAL[:INTERFACE]] in hex as lsusb shows them, e.g. 0403:6001 or 0403:6011::2"
            )
        };
        let mut parts = text.split(':');
        let hex = |p: Option<&str>| {
            p.filter(|p| p.len() == 4)
                .and_then(|p| u16::from_str_radix(p, 16).ok())
        };
        let vendor = hex(parts.next()).ok_or_else(usage)?;
        let product = hex(parts.next()).ok_or_else(usage)?;
        let serial = parts
            .next()
            .filter(|s| !s.is_empty() && *s != "*")
            .map(str::to_string);
        let interface = match parts.next() {
            None | Some("") | Some("*") => None,
            Some(i) => Some(i.parse::<u8>().map_err(|_| usage())?),
        };
        if parts.next().is_some() {
            return Err(usage());
        }
        Ok(UsbId {
            vendor,
            product,
            serial,
            interface,
        })
    }
}

impl std::fmt::Display for UsbId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "usb {:04x}:{:04x}", self.vendor, self.product)?;
        if let Some(s) = &self.serial {
            write!(f, " serial {s}")?;
        }
        if let Some(i) = self.interface {
            write!(f, " interface {i}")?;
        }
        Ok(())
    }
}

/// One `[[console.alert]]`: a pattern the agent watches the console's output for.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertRule {
    /// Name in the alert (default: the pattern).
    pub name: Option<String>,
    /// Regular expression matched against each line (regex-lite syntax).
    pub pattern: String,
    /// Seconds the rule stays quiet after it fired; matches meanwhile are counted into the
    /// next alert (default 300).
    pub every: Option<Seconds>,
    /// Lines of context before the match (default 3).
    pub before: Option<usize>,
    /// Lines of context after the match (default 3).
    pub after: Option<usize>,
}

impl AlertRule {
    /// The name alerts carry.
    pub fn label(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.pattern)
    }

    /// The quiet time after it fired.
    pub fn every(&self) -> Duration {
        self.every.map_or(DEFAULT_ALERT_EVERY, Seconds::duration)
    }
}

/// One `[[console.power]]`: the commands that switch one power feed of the console's device
/// (a USB hub port, a GPIO relay, a PDU outlet). Run with `sh -c`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PowerOutlet {
    /// Name in messages (default `power`, `power2`, ...).
    pub name: Option<String>,
    /// Switches the feed on.
    pub on: Option<String>,
    /// Switches the feed off.
    pub off: Option<String>,
    /// Cycles the feed; default `off`, a pause of `cycle_delay`, `on`.
    pub cycle: Option<String>,
    /// Seconds between off and on of a cycle without a `cycle` command (default 5).
    pub cycle_delay: Option<Seconds>,
    /// Seconds a command may take before it is killed (default 30).
    pub timeout: Option<Seconds>,
}

/// One `[[console]]` entry: a local serial port served as a console endpoint.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Console {
    /// Console name (`OPERATOR:DEVICE/NAME`); default `console`.
    #[serde(default = "default_console_name")]
    pub name: String,
    /// Serial device, e.g. `/dev/ttyUSB0` or a `/dev/serial/by-id/...` link.
    #[serde(default)]
    pub device: PathBuf,
    /// A USB adapter by identity, `VID:PID[:SERIAL[:INTERFACE]]` (instead of `device`).
    pub usb: Option<String>,
    /// Line speed (default 9600).
    #[serde(default = "default_baud")]
    pub baud: u32,
    /// Data bits, 5-8 (default 8).
    #[serde(default = "default_data_bits")]
    pub data_bits: u8,
    /// Parity (default none).
    #[serde(default)]
    pub parity: Parity,
    /// Stop bits, 1 or 2 (default 1).
    #[serde(default = "default_stop_bits")]
    pub stop_bits: u8,
    /// Flow control (default none).
    #[serde(default)]
    pub flow_control: FlowControl,
    /// Mapping of what the port says (picocom's `--imap`), e.g. `"crlf"`.
    #[serde(default)]
    pub imap: Mapping,
    /// Mapping of what operators type (picocom's `--omap`).
    #[serde(default)]
    pub omap: Mapping,
    /// DTR asserted (default true).
    pub dtr: Option<bool>,
    /// RTS asserted (default true).
    pub rts: Option<bool>,
    /// Endpoint port (RFC 2217 through `ssh -L`); default 2217, 2218, ... in order.
    pub port: Option<u16>,
    /// When the port log is uploaded (default always).
    #[serde(default)]
    pub log_upload: LogUpload,
    /// Size of the port log on the device (default `4M`).
    pub log_size: Option<String>,
    /// Also log what operators type (passwords at a login prompt included).
    #[serde(default)]
    pub log_input: bool,
    /// Seconds the port log may wait on the device before it is uploaded, to gather more into
    /// one upload (default: the profile's keepalive interval).
    pub log_upload_delay: Option<Seconds>,
    /// Pattern alerts.
    #[serde(default)]
    pub alert: Vec<AlertRule>,
    /// Power commands.
    #[serde(default)]
    pub power: Vec<PowerOutlet>,
    /// Seconds without a keystroke after which an operator session is closed (default off).
    pub idle_timeout: Option<Seconds>,
    /// Seconds the port may be gone before an alert is raised (default off).
    pub gone_alert: Option<Seconds>,
    /// Seconds of BREAK held after a power cycle with break (default 10).
    pub break_hold: Option<Seconds>,
}

fn default_console_name() -> String {
    crate::name::DEFAULT_CONSOLE.to_string()
}
fn default_baud() -> u32 {
    DEFAULT_BAUD
}
fn default_data_bits() -> u8 {
    8
}
fn default_stop_bits() -> u8 {
    1
}

impl Console {
    /// A console with default line settings.
    pub fn new(name: impl Into<String>, device: impl Into<PathBuf>, baud: u32) -> Self {
        Console {
            name: name.into(),
            device: device.into(),
            usb: None,
            baud,
            data_bits: 8,
            parity: Parity::None,
            stop_bits: 1,
            flow_control: FlowControl::None,
            imap: Mapping::NONE,
            omap: Mapping::NONE,
            dtr: None,
            rts: None,
            port: None,
            log_upload: LogUpload::Always,
            log_size: None,
            log_input: false,
            log_upload_delay: None,
            alert: Vec::new(),
            power: Vec::new(),
            idle_timeout: None,
            gone_alert: None,
            break_hold: None,
        }
    }

    /// Parses the quick flag form `[NAME=]DEVICE[@BAUD]`, e.g. `/dev/ttyUSB0@115200`.
    pub fn parse_flag(spec: &str) -> Result<Console, ConfigError> {
        let (name, rest) = match spec.split_once('=') {
            Some((n, r)) => (n.to_string(), r),
            None => (default_console_name(), spec),
        };
        let (device, baud) = match rest.rsplit_once('@') {
            Some((d, b)) => (
                d,
                b.parse::<u32>().map_err(|_| {
                    ConfigError::Invalid(format!("--console {spec}: {b:?} is not a baud rate"))
                })?,
            ),
            None => (rest, DEFAULT_BAUD),
        };
        if device.is_empty() {
            return Err(ConfigError::Invalid(format!(
                "--console {spec}: write [NAME=]DEVICE[@BAUD], e.g. /dev/ttyUSB0@9600"
            )));
        }
        Ok(Console::new(name, device, baud))
    }

    /// The line settings the port opens with.
    pub fn line_settings(&self) -> LineSettings {
        LineSettings {
            baud: self.baud,
            data_bits: self.data_bits,
            parity: self.parity,
            stop_bits: self.stop_bits,
            flow: self.flow_control,
            imap: self.imap,
            omap: self.omap,
            dtr: self.dtr.unwrap_or(true),
            rts: self.rts.unwrap_or(true),
        }
    }

    /// The USB identity, when the console names one.
    pub fn usb_id(&self) -> Option<UsbId> {
        self.usb.as_deref().and_then(|u| UsbId::parse(u).ok())
    }

    /// How the port is named, for messages: the path or the USB identity.
    pub fn port_label(&self) -> String {
        match self.usb_id() {
            Some(id) => id.to_string(),
            None => self.device.display().to_string(),
        }
    }

    /// Size of the port log on the device.
    pub fn log_bytes(&self) -> u64 {
        self.log_size
            .as_deref()
            .and_then(|s| crate::size::parse(s).ok())
            .unwrap_or(DEFAULT_LOG_SIZE)
    }

    /// Idle timeout of operator sessions, if any.
    pub fn idle_timeout(&self) -> Option<Duration> {
        self.idle_timeout
            .map(Seconds::duration)
            .filter(|d| !d.is_zero())
    }

    /// Time gone before an alert, if any.
    pub fn gone_alert(&self) -> Option<Duration> {
        self.gone_alert
            .map(Seconds::duration)
            .filter(|d| !d.is_zero())
    }

    /// Length of the BREAK held after a power cycle.
    pub fn break_hold(&self) -> Duration {
        self.break_hold
            .map_or(DEFAULT_BREAK_HOLD, Seconds::duration)
            .min(MAX_BREAK_HOLD)
    }

    /// Checks this console's own settings (names, ports and regexes are checked by the caller).
    pub fn validate(&self) -> Result<(), String> {
        let n = &self.name;
        match (&self.usb, self.device.as_os_str().is_empty()) {
            (Some(_), false) => {
                return Err(format!("[[console]] {n}: set device or usb, not both"));
            }
            (None, true) => {
                return Err(format!(
                    "[[console]] {n}: set device = \"/dev/...\" (a /dev/serial/by-id/ link survives replugging) or usb = \"VID:PID[:SERIAL[:INTERFACE]]\""
                ));
            }
            (Some(u), true) => {
                UsbId::parse(u).map_err(|e| format!("[[console]] {n}: {e}"))?;
            }
            (None, false) => {}
        }
        if !(5..=8).contains(&self.data_bits) {
            return Err(format!("[[console]] {n}: data_bits must be 5 to 8"));
        }
        if !(1..=2).contains(&self.stop_bits) {
            return Err(format!("[[console]] {n}: stop_bits must be 1 or 2"));
        }
        check_baud(self.baud).map_err(|e| format!("[[console]] {n}: {e}"))?;
        if let Some(size) = &self.log_size {
            let bytes =
                crate::size::parse(size).map_err(|e| format!("[[console]] {n}: log_size: {e}"))?;
            if bytes < MIN_LOG_SIZE {
                return Err(format!(
                    "[[console]] {n}: log_size = {size:?} is too small: use at least 16K"
                ));
            }
        }
        let ranges = [
            ("log_upload_delay", self.log_upload_delay, 0.0, 86_400.0),
            ("idle_timeout", self.idle_timeout, 0.0, 7.0 * 86_400.0),
            ("gone_alert", self.gone_alert, 0.0, 86_400.0),
            (
                "break_hold",
                self.break_hold,
                0.1,
                MAX_BREAK_HOLD.as_secs_f64(),
            ),
        ];
        for (key, value, min, max) in ranges {
            if let Some(v) = value {
                v.check_range(&format!("[[console]] {n}: {key}"), min, max, true)?;
            }
        }
        for rule in &self.alert {
            let every = rule.every.unwrap_or(Seconds::Whole(0));
            every.check_range(
                &format!("[[console.alert]] {}: every", rule.label()),
                0.0,
                86_400.0,
                true,
            )?;
            for (key, v) in [("before", rule.before), ("after", rule.after)] {
                if v.is_some_and(|v| v > MAX_ALERT_CONTEXT) {
                    return Err(format!(
                        "[[console.alert]] {}: {key} is at most {MAX_ALERT_CONTEXT} lines",
                        rule.label()
                    ));
                }
            }
        }
        for (i, p) in self.power.iter().enumerate() {
            let label = p.name.clone().unwrap_or_else(|| format!("#{}", i + 1));
            if p.on.is_none() && p.off.is_none() && p.cycle.is_none() {
                return Err(format!(
                    "[[console.power]] {label} of console {n}: give at least one of on, off, cycle"
                ));
            }
            for (key, v, max) in [
                ("cycle_delay", p.cycle_delay, 600.0),
                ("timeout", p.timeout, 3600.0),
            ] {
                if let Some(v) = v {
                    v.check_range(
                        &format!("[[console.power]] {label} of console {n}: {key}"),
                        0.0,
                        max,
                        true,
                    )?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usb_ids() {
        assert_eq!(
            UsbId::parse("0403:6001").unwrap(),
            UsbId {
                vendor: 0x0403,
                product: 0x6001,
                serial: None,
                interface: None
            }
        );
        let id = UsbId::parse("0403:6011:FT1234:2").unwrap();
        assert_eq!(id.serial.as_deref(), Some("FT1234"));
        assert_eq!(id.interface, Some(2));
        assert_eq!(UsbId::parse("0403:6011::1").unwrap().serial, None);
        assert_eq!(
            UsbId::parse("067b:2303").unwrap().to_string(),
            "usb 067b:2303"
        );
        for bad in [
            "",
            "0403",
            "403:6001",
            "0403:60011",
            "zzzz:6001",
            "0403:6001:s:x",
            "0403:6001:s:1:9",
        ] {
            let err = UsbId::parse(bad).unwrap_err();
            assert!(err.contains("VID:PID"), "{bad}: {err}");
        }
    }

    #[test]
    fn validation_names_the_console_and_the_fix() {
        let mut c = Console::new("console", "/dev/ttyUSB0", 9600);
        assert_eq!(c.validate(), Ok(()));
        c.usb = Some("0403:6001".into());
        assert!(c.validate().unwrap_err().contains("not both"));
        c.device = PathBuf::new();
        assert_eq!(c.validate(), Ok(()));
        c.usb = None;
        assert!(c.validate().unwrap_err().contains("by-id"));
        c.device = "/dev/ttyUSB0".into();
        c.log_size = Some("1K".into());
        assert!(c.validate().unwrap_err().contains("too small"));
        c.log_size = Some("8M".into());
        assert_eq!(c.log_bytes(), 8 << 20);
        c.power.push(PowerOutlet {
            name: None,
            on: None,
            off: None,
            cycle: None,
            cycle_delay: None,
            timeout: None,
        });
        assert!(
            c.validate()
                .unwrap_err()
                .contains("at least one of on, off, cycle")
        );
    }
}
