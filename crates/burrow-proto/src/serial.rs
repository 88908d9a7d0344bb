//! Serial line settings: framing, flow control, modem lines and CR/LF/BS mapping, as operators
//! write them (`8N1 flow=rts-cts imap=crlf dtr=pulse`) and as the status line shows them.
//!
//! The mappings are picocom's: `imap` rewrites what the port says before operators see it,
//! `omap` rewrites what operators type before it reaches the port. Both are off by default,
//! which keeps the line binary-clean (XMODEM, YMODEM).

use serde::Deserialize;

/// Parity of a serial line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Parity {
    /// No parity bit.
    #[default]
    None,
    /// Odd parity.
    Odd,
    /// Even parity.
    Even,
    /// The parity bit always set.
    Mark,
    /// The parity bit always clear.
    Space,
}

impl Parity {
    /// The letter of the `8N1` notation.
    pub fn letter(self) -> char {
        match self {
            Parity::None => 'N',
            Parity::Odd => 'O',
            Parity::Even => 'E',
            Parity::Mark => 'M',
            Parity::Space => 'S',
        }
    }

    fn from_letter(c: char) -> Option<Parity> {
        Some(match c.to_ascii_uppercase() {
            'N' => Parity::None,
            'O' => Parity::Odd,
            'E' => Parity::Even,
            'M' => Parity::Mark,
            'S' => Parity::Space,
            _ => return None,
        })
    }

    /// RFC 2217 SET-PARITY value.
    pub fn rfc2217(self) -> u8 {
        match self {
            Parity::None => 1,
            Parity::Odd => 2,
            Parity::Even => 3,
            Parity::Mark => 4,
            Parity::Space => 5,
        }
    }

    /// From an RFC 2217 SET-PARITY value.
    pub fn from_rfc2217(v: u8) -> Option<Parity> {
        Some(match v {
            1 => Parity::None,
            2 => Parity::Odd,
            3 => Parity::Even,
            4 => Parity::Mark,
            5 => Parity::Space,
            _ => return None,
        })
    }
}

/// Flow control of a serial line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FlowControl {
    /// None (what router consoles use).
    #[default]
    None,
    /// XON/XOFF.
    #[serde(alias = "xon-xoff", alias = "xonxoff")]
    Software,
    /// RTS/CTS.
    #[serde(alias = "rts-cts", alias = "rtscts")]
    Hardware,
}

impl FlowControl {
    /// As written in settings and shown in the status line.
    pub fn name(self) -> &'static str {
        match self {
            FlowControl::None => "none",
            FlowControl::Software => "xon-xoff",
            FlowControl::Hardware => "rts-cts",
        }
    }

    fn parse(s: &str) -> Option<FlowControl> {
        Some(match s.to_ascii_lowercase().as_str() {
            "none" | "off" => FlowControl::None,
            "xon-xoff" | "xonxoff" | "software" | "soft" | "x" => FlowControl::Software,
            "rts-cts" | "rtscts" | "hardware" | "hard" | "h" => FlowControl::Hardware,
            _ => return None,
        })
    }
}

/// One mapping of picocom's `--imap`/`--omap` set.
const MAPS: [(&str, u8); 8] = [
    ("crlf", 1),
    ("crcrlf", 2),
    ("igncr", 4),
    ("lfcr", 8),
    ("lfcrlf", 16),
    ("ignlf", 32),
    ("bsdel", 64),
    ("delbs", 128),
];

/// A set of CR/LF/BS mappings (picocom's names): `crlf` CR to LF, `crcrlf` CR to CR LF, `igncr`
/// drop CR, `lfcr` LF to CR, `lfcrlf` LF to CR LF, `ignlf` drop LF, `bsdel` BS to DEL, `delbs`
/// DEL to BS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Mapping(u8);

impl Mapping {
    /// No mapping: bytes pass unchanged.
    pub const NONE: Mapping = Mapping(0);

    /// Parses `crlf,delbs` (or `none`).
    pub fn parse(text: &str) -> Result<Mapping, String> {
        let mut bits = 0;
        for word in text.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            if word.eq_ignore_ascii_case("none") {
                continue;
            }
            let Some((_, bit)) = MAPS.iter().find(|(n, _)| word.eq_ignore_ascii_case(n)) else {
                return Err(format!(
                    "unknown mapping {word:?}: use none or a comma-separated list of {}",
                    MAPS.map(|(n, _)| n).join(", ")
                ));
            };
            bits |= bit;
        }
        Ok(Mapping(bits))
    }

    /// Whether nothing is mapped.
    pub fn is_none(self) -> bool {
        self.0 == 0
    }

    fn has(self, name: &str) -> bool {
        MAPS.iter().any(|(n, bit)| *n == name && self.0 & bit != 0)
    }

    /// As written: `crlf,delbs`, or `none`.
    pub fn describe(self) -> String {
        if self.is_none() {
            return "none".into();
        }
        MAPS.iter()
            .filter(|(_, bit)| self.0 & bit != 0)
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Appends `input`, mapped, to `out`.
    pub fn apply(self, input: &[u8], out: &mut Vec<u8>) {
        if self.is_none() {
            out.extend_from_slice(input);
            return;
        }
        for &b in input {
            match b {
                b'\r' if self.has("igncr") => {}
                b'\r' if self.has("crlf") => out.push(b'\n'),
                b'\r' if self.has("crcrlf") => out.extend_from_slice(b"\r\n"),
                b'\n' if self.has("ignlf") => {}
                b'\n' if self.has("lfcr") => out.push(b'\r'),
                b'\n' if self.has("lfcrlf") => out.extend_from_slice(b"\r\n"),
                0x08 if self.has("bsdel") => out.push(0x7f),
                0x7f if self.has("delbs") => out.push(0x08),
                _ => out.push(b),
            }
        }
    }
}

impl<'de> Deserialize<'de> for Mapping {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Mapping::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A modem control line (DTR, RTS) as asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Asserted.
    On,
    /// Cleared.
    Off,
    /// Cleared for [`PULSE`], then asserted again (resets many boards).
    Pulse,
}

/// How long a DTR or RTS pulse clears the line.
pub const PULSE: std::time::Duration = std::time::Duration::from_millis(250);

/// Highest line speed accepted.
pub const MAX_BAUD: u32 = 4_000_000;

/// Everything about a serial line that operators may set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineSettings {
    /// Line speed.
    pub baud: u32,
    /// Data bits, 5-8.
    pub data_bits: u8,
    /// Parity.
    pub parity: Parity,
    /// Stop bits, 1 or 2.
    pub stop_bits: u8,
    /// Flow control.
    pub flow: FlowControl,
    /// What the port says, rewritten before operators see it.
    pub imap: Mapping,
    /// What operators type, rewritten before it reaches the port.
    pub omap: Mapping,
    /// DTR asserted.
    pub dtr: bool,
    /// RTS asserted.
    pub rts: bool,
}

impl Default for LineSettings {
    fn default() -> Self {
        LineSettings {
            baud: 9600,
            data_bits: 8,
            parity: Parity::None,
            stop_bits: 1,
            flow: FlowControl::None,
            imap: Mapping::NONE,
            omap: Mapping::NONE,
            dtr: true,
            rts: true,
        }
    }
}

fn on_off(v: bool) -> &'static str {
    if v { "on" } else { "off" }
}

impl LineSettings {
    /// The status line: `9600 8N1, flow none, DTR on, RTS on` (mappings when set).
    pub fn describe(&self) -> String {
        let mut s = format!(
            "{} {}{}{}, flow {}, DTR {}, RTS {}",
            self.baud,
            self.data_bits,
            self.parity.letter(),
            self.stop_bits,
            self.flow.name(),
            on_off(self.dtr),
            on_off(self.rts)
        );
        if !self.imap.is_none() {
            s.push_str(&format!(", imap {}", self.imap.describe()));
        }
        if !self.omap.is_none() {
            s.push_str(&format!(", omap {}", self.omap.describe()));
        }
        s
    }

    /// Applies a change (a pulse leaves the line asserted, as it ends).
    pub fn apply(&mut self, change: &Change) {
        match *change {
            Change::Baud(b) => self.baud = b,
            Change::DataBits(d) => self.data_bits = d,
            Change::Parity(p) => self.parity = p,
            Change::StopBits(s) => self.stop_bits = s,
            Change::Flow(f) => self.flow = f,
            Change::Imap(m) => self.imap = m,
            Change::Omap(m) => self.omap = m,
            Change::Dtr(l) => self.dtr = l != Level::Off,
            Change::Rts(l) => self.rts = l != Level::Off,
        }
    }
}

/// One setting changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Line speed.
    Baud(u32),
    /// Data bits.
    DataBits(u8),
    /// Parity.
    Parity(Parity),
    /// Stop bits.
    StopBits(u8),
    /// Flow control.
    Flow(FlowControl),
    /// Input mapping.
    Imap(Mapping),
    /// Output mapping.
    Omap(Mapping),
    /// DTR.
    Dtr(Level),
    /// RTS.
    Rts(Level),
}

fn level_name(l: Level) -> &'static str {
    match l {
        Level::On => "on",
        Level::Off => "off",
        Level::Pulse => "pulse",
    }
}

impl Change {
    /// As written (`parity=even`), so that it parses back to itself.
    pub fn text(&self) -> String {
        match *self {
            Change::Baud(b) => format!("baud={b}"),
            Change::DataBits(d) => format!("data_bits={d}"),
            Change::Parity(p) => format!("parity={}", format!("{p:?}").to_ascii_lowercase()),
            Change::StopBits(s) => format!("stop_bits={s}"),
            Change::Flow(f) => format!("flow={}", f.name()),
            Change::Imap(m) => format!("imap={}", m.describe()),
            Change::Omap(m) => format!("omap={}", m.describe()),
            Change::Dtr(l) => format!("dtr={}", level_name(l)),
            Change::Rts(l) => format!("rts={}", level_name(l)),
        }
    }
}

/// The keys `console set` takes, for messages.
pub const SETTINGS_USAGE: &str = "8N1 (data bits 5-8, parity N/E/O/M/S, stop bits 1-2), RATE, baud=RATE, data_bits=N, parity=none|even|odd|mark|space, stop_bits=1|2, flow=none|rts-cts|xon-xoff, imap=MAPS, omap=MAPS (crlf crcrlf igncr lfcr lfcrlf ignlf bsdel delbs, comma-separated, or none), dtr=on|off|pulse, rts=on|off|pulse";

/// Checks a line speed.
pub fn check_baud(b: u32) -> Result<u32, String> {
    if b == 0 || b > MAX_BAUD {
        Err(format!(
            "baud rate {b} is out of range: use 1 to {MAX_BAUD}"
        ))
    } else {
        Ok(b)
    }
}

fn data_bits(v: &str) -> Result<u8, String> {
    match v.parse::<u8>() {
        Ok(d @ 5..=8) => Ok(d),
        _ => Err(format!("data bits {v:?}: use 5, 6, 7 or 8")),
    }
}

fn stop_bits(v: &str) -> Result<u8, String> {
    match v.parse::<u8>() {
        Ok(s @ 1..=2) => Ok(s),
        _ => Err(format!("stop bits {v:?}: use 1 or 2")),
    }
}

fn level(v: &str) -> Result<Level, String> {
    match v.to_ascii_lowercase().as_str() {
        "on" | "1" | "set" | "high" => Ok(Level::On),
        "off" | "0" | "clear" | "low" => Ok(Level::Off),
        "pulse" => Ok(Level::Pulse),
        _ => Err(format!("{v:?}: use on, off or pulse")),
    }
}

/// Parses settings as operators write them: `8N1`, `115200`, `key=value` words.
pub fn parse_changes<S: AsRef<str>>(words: &[S]) -> Result<Vec<Change>, String> {
    let mut out = Vec::new();
    for word in words {
        let word = word.as_ref().trim();
        if word.is_empty() {
            continue;
        }
        if let Ok(b) = word.parse::<u32>() {
            out.push(Change::Baud(check_baud(b)?));
            continue;
        }
        let Some((key, value)) = word.split_once('=') else {
            let chars: Vec<char> = word.chars().collect();
            if let [d, p, s] = chars.as_slice()
                && let Some(parity) = Parity::from_letter(*p)
            {
                out.push(Change::DataBits(data_bits(&d.to_string())?));
                out.push(Change::Parity(parity));
                out.push(Change::StopBits(stop_bits(&s.to_string())?));
                continue;
            }
            return Err(format!(
                "unknown setting {word:?}; settings are: {SETTINGS_USAGE}"
            ));
        };
        let value = value.trim();
        let change = match key.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "baud" | "speed" => Change::Baud(check_baud(
                value
                    .parse()
                    .map_err(|_| format!("baud {value:?} is not a number"))?,
            )?),
            "data_bits" | "databits" | "bits" => Change::DataBits(data_bits(value)?),
            "parity" => {
                let p = match value.to_ascii_lowercase().as_str() {
                    "none" | "n" => Parity::None,
                    "odd" | "o" => Parity::Odd,
                    "even" | "e" => Parity::Even,
                    "mark" | "m" => Parity::Mark,
                    "space" | "s" => Parity::Space,
                    _ => {
                        return Err(format!(
                            "parity {value:?}: use none, even, odd, mark or space"
                        ));
                    }
                };
                Change::Parity(p)
            }
            "stop_bits" | "stopbits" | "stop" => Change::StopBits(stop_bits(value)?),
            "flow" | "flow_control" => Change::Flow(
                FlowControl::parse(value)
                    .ok_or_else(|| format!("flow {value:?}: use none, rts-cts or xon-xoff"))?,
            ),
            "imap" => Change::Imap(Mapping::parse(value)?),
            "omap" => Change::Omap(Mapping::parse(value)?),
            "dtr" => Change::Dtr(level(value).map_err(|e| format!("dtr {e}"))?),
            "rts" => Change::Rts(level(value).map_err(|e| format!("rts {e}"))?),
            other => {
                return Err(format!(
                    "unknown setting {other:?}; settings are: {SETTINGS_USAGE}"
                ));
            }
        };
        out.push(change);
    }
    if out.is_empty() {
        return Err(format!("no settings given; settings are: {SETTINGS_USAGE}"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse_and_describe() {
        let mut s = LineSettings::default();
        assert_eq!(s.describe(), "9600 8N1, flow none, DTR on, RTS on");
        for c in parse_changes(&[
            "7E2",
            "115200",
            "flow=rts-cts",
            "imap=crlf,delbs",
            "dtr=off",
        ])
        .unwrap()
        {
            s.apply(&c);
        }
        assert_eq!(
            s.describe(),
            "115200 7E2, flow rts-cts, DTR off, RTS on, imap crlf,delbs"
        );
        for c in
            parse_changes(&["parity=space", "data_bits=5", "stop_bits=1", "rts=pulse"]).unwrap()
        {
            s.apply(&c);
        }
        assert!(s.describe().starts_with("115200 5S1"), "{}", s.describe());
        // Every change prints as text that parses back to itself.
        for c in parse_changes(&[
            "8M1",
            "300",
            "flow=xon-xoff",
            "omap=lfcrlf",
            "imap=none",
            "dtr=pulse",
            "rts=on",
        ])
        .unwrap()
        {
            assert_eq!(parse_changes(&[c.text()]).unwrap(), vec![c]);
        }
    }

    #[test]
    fn bad_settings_say_what_is_accepted() {
        for (bad, says) in [
            ("9X1", "unknown setting"),
            ("4N1", "data bits"),
            ("8N3", "stop bits"),
            ("parity=weird", "none, even, odd"),
            ("flow=maybe", "rts-cts"),
            ("imap=crlf,foo", "unknown mapping \"foo\""),
            ("dtr=blink", "on, off or pulse"),
            ("0", "out of range"),
            ("colour=red", "unknown setting"),
        ] {
            let err = parse_changes(&[bad]).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
        assert!(parse_changes::<&str>(&[]).is_err());
    }

    #[test]
    fn mappings_are_picocoms() {
        let map = |spec: &str, input: &[u8]| {
            let mut out = Vec::new();
            Mapping::parse(spec).unwrap().apply(input, &mut out);
            out
        };
        assert_eq!(map("none", b"a\r\nb\x08\x7f\xff"), b"a\r\nb\x08\x7f\xff");
        assert_eq!(map("crlf", b"a\rb"), b"a\nb");
        assert_eq!(map("crcrlf", b"a\rb"), b"a\r\nb");
        assert_eq!(map("igncr", b"a\r\nb"), b"a\nb");
        assert_eq!(map("lfcr", b"a\nb"), b"a\rb");
        assert_eq!(map("lfcrlf", b"a\nb"), b"a\r\nb");
        assert_eq!(map("ignlf", b"a\r\nb"), b"a\rb");
        assert_eq!(map("bsdel", b"\x08"), b"\x7f");
        assert_eq!(map("delbs", b"\x7f"), b"\x08");
        assert_eq!(
            Mapping::parse("DELBS, crlf").unwrap().describe(),
            "crlf,delbs"
        );
    }

    #[test]
    fn parity_codes_round_trip() {
        for p in [
            Parity::None,
            Parity::Odd,
            Parity::Even,
            Parity::Mark,
            Parity::Space,
        ] {
            assert_eq!(Parity::from_rfc2217(p.rfc2217()), Some(p));
        }
        assert_eq!(Parity::from_rfc2217(9), None);
    }
}
