//! The console escape parser (conserver style): `Ctrl-E c` then a command key.
//!
//! | keys | action |
//! |---|---|
//! | `^Ec.` | disconnect |
//! | `^Ecl1` | send a break |
//! | `^Eca` | attach read-write (if nobody writes) |
//! | `^Ecf` | force read-write (take it from the writer) |
//! | `^Ecs` | spy: read-only |
//! | `^Ecr` | replay recent output |
//! | `^EcbRATE<Enter>` | change the baud rate (e.g. `^Ecb115200` Enter) |
//! | `^Ec=SETTINGS<Enter>` | change line settings (`^Ec=7E1 flow=rts-cts` Enter) |
//! | `^Ect` | replay the port log with a timestamp per line |
//! | `^Ecw` | who is attached, and how |
//! | `^Eci` | the status line: line settings, writer, recording |
//! | `^Ecp` | power: `1` on, `0` off, `c` cycle, `b` cycle then BREAK; then `y` to confirm |
//! | `^Ecx` | binary transfer: escapes off until input pauses (XMODEM, YMODEM) |
//! | `^Ec?` | help |
//! | `^Ec^Ec` | send `^Ec` itself through |
//!
//! Anything else after the prefix prints the help. Nothing here can reach a shell: the parser
//! only ever yields bytes for the serial line or one of the actions above.

/// The default escape prefix: Ctrl-E, `c`.
pub const DEFAULT_PREFIX: [u8; 2] = [0x05, b'c'];

/// Longest baud rate typed after `^Ecb`.
const MAX_BAUD_DIGITS: usize = 8;
/// Longest settings line typed after `^Ec=`.
const MAX_SETTINGS: usize = 128;

/// A power action chosen in the `^Ecp` menu.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerKey {
    /// `1`: on.
    On,
    /// `0`: off.
    Off,
    /// `c`: cycle.
    Cycle,
    /// `b`: cycle, then hold BREAK while the device boots.
    CycleBreak,
}

impl PowerKey {
    fn from_key(b: u8) -> Option<PowerKey> {
        PowerKey::ALL.into_iter().find(|k| k.menu_key() == b)
    }

    const ALL: [PowerKey; 4] = [
        PowerKey::On,
        PowerKey::Off,
        PowerKey::Cycle,
        PowerKey::CycleBreak,
    ];

    /// Its key in the `^Ecp` menu.
    pub fn menu_key(self) -> u8 {
        match self {
            PowerKey::On => b'1',
            PowerKey::Off => b'0',
            PowerKey::Cycle => b'c',
            PowerKey::CycleBreak => b'b',
        }
    }

    /// The action a word names (`on`, `off`, `cycle`, `cycle-break`), as the web console's
    /// power button sends it.
    pub fn from_word(word: &str) -> Option<PowerKey> {
        PowerKey::ALL.into_iter().find(|k| k.word() == word)
    }

    /// The word the agent takes (`on`, `off`, `cycle`, `cycle-break`).
    pub fn word(self) -> &'static str {
        match self {
            PowerKey::On => "on",
            PowerKey::Off => "off",
            PowerKey::Cycle => "cycle",
            PowerKey::CycleBreak => "cycle-break",
        }
    }
}

/// What the operator's keystrokes ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Bytes for the serial line.
    Send(Vec<u8>),
    /// Send a break.
    Break,
    /// Leave the console.
    Disconnect,
    /// Show the escape table.
    Help,
    /// Take write if nobody holds it.
    Attach,
    /// Take write from whoever holds it.
    Force,
    /// Become read-only.
    Spy,
    /// Show recent output again.
    Replay,
    /// Change the line speed.
    Baud(u32),
    /// Change line settings (the words typed after `=`).
    Settings(String),
    /// Replay the port log with timestamps.
    ReplayTimestamps,
    /// Who is attached.
    Who,
    /// The status line.
    Info,
    /// Binary transfer: escapes off until input pauses.
    Binary,
    /// The power menu opened (the next key chooses).
    PowerMenu,
    /// A power action chosen: `y` confirms it.
    PowerAsk(PowerKey),
    /// A power action confirmed.
    Power(PowerKey),
    /// The power menu closed without an action.
    PowerCancelled,
    /// An escape that is not known (the key), answered with help.
    Unknown(u8),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Normal,
    /// Saw the first prefix byte.
    Prefix,
    /// Saw the whole prefix: the next key is a command.
    Command,
    /// Saw the prefix, then the first prefix byte again.
    CommandPrefix,
    /// Saw `l` after the prefix: waiting for the break number.
    Break,
    /// Typing a baud rate.
    Baud(String),
    /// Typing settings.
    Settings(String),
    /// In the power menu: the next key chooses.
    Power,
    /// A power action chosen: `y` confirms.
    PowerConfirm(PowerKey),
}

/// The parser; one per operator session.
#[derive(Debug, Clone)]
pub struct EscapeParser {
    prefix: [u8; 2],
    state: State,
}

impl Default for EscapeParser {
    fn default() -> Self {
        EscapeParser::new(DEFAULT_PREFIX)
    }
}

impl EscapeParser {
    /// A parser for a two-byte prefix.
    pub fn new(prefix: [u8; 2]) -> Self {
        EscapeParser {
            prefix,
            state: State::Normal,
        }
    }

    /// Parses keystrokes into actions, in order; consecutive bytes for the line are merged.
    pub fn feed(&mut self, input: &[u8]) -> Vec<Action> {
        let mut out = Vec::new();
        let mut send = Vec::new();
        let [p0, p1] = self.prefix;
        for &b in input {
            let state = std::mem::replace(&mut self.state, State::Normal);
            let action = match state {
                State::Normal if b == p0 => {
                    self.state = State::Prefix;
                    None
                }
                State::Normal => {
                    send.push(b);
                    None
                }
                State::Prefix if b == p1 => {
                    self.state = State::Command;
                    None
                }
                State::Prefix if b == p0 => {
                    // `^E^E`: the first one was meant literally; the second may start a prefix.
                    send.push(p0);
                    self.state = State::Prefix;
                    None
                }
                State::Prefix => {
                    send.extend_from_slice(&[p0, b]);
                    None
                }
                State::Command => match b {
                    b'.' => Some(Action::Disconnect),
                    b'?' => Some(Action::Help),
                    b'a' => Some(Action::Attach),
                    b'f' => Some(Action::Force),
                    b's' => Some(Action::Spy),
                    b'r' => Some(Action::Replay),
                    b't' => Some(Action::ReplayTimestamps),
                    b'w' => Some(Action::Who),
                    b'i' => Some(Action::Info),
                    b'x' => Some(Action::Binary),
                    b'p' => {
                        self.state = State::Power;
                        Some(Action::PowerMenu)
                    }
                    b'=' => {
                        self.state = State::Settings(String::new());
                        None
                    }
                    b'l' => {
                        self.state = State::Break;
                        None
                    }
                    b'b' => {
                        self.state = State::Baud(String::new());
                        None
                    }
                    _ if b == p0 => {
                        self.state = State::CommandPrefix;
                        None
                    }
                    _ => Some(Action::Unknown(b)),
                },
                State::CommandPrefix if b == p1 => {
                    send.extend_from_slice(&self.prefix);
                    None
                }
                State::CommandPrefix => Some(Action::Unknown(b)),
                State::Break if b == b'1' => Some(Action::Break),
                State::Break => Some(Action::Unknown(b)),
                State::Baud(mut digits) => match b {
                    b'0'..=b'9' if digits.len() < MAX_BAUD_DIGITS => {
                        digits.push(char::from(b));
                        self.state = State::Baud(digits);
                        None
                    }
                    b'\r' | b'\n' => match digits.parse::<u32>() {
                        Ok(rate) if rate > 0 => Some(Action::Baud(rate)),
                        _ => Some(Action::Unknown(b'b')),
                    },
                    _ => Some(Action::Unknown(b'b')),
                },
                State::Settings(mut text) => match b {
                    b'\r' | b'\n' if !text.trim().is_empty() => Some(Action::Settings(text)),
                    // Backspace and delete take back a character.
                    0x08 | 0x7f => {
                        text.pop();
                        self.state = State::Settings(text);
                        None
                    }
                    b' '..=b'~' if text.len() < MAX_SETTINGS => {
                        text.push(char::from(b));
                        self.state = State::Settings(text);
                        None
                    }
                    _ => Some(Action::Unknown(b'=')),
                },
                State::Power => match PowerKey::from_key(b) {
                    Some(k) => {
                        self.state = State::PowerConfirm(k);
                        Some(Action::PowerAsk(k))
                    }
                    None => Some(Action::PowerCancelled),
                },
                State::PowerConfirm(k) if b == b'y' || b == b'Y' => Some(Action::Power(k)),
                State::PowerConfirm(_) => Some(Action::PowerCancelled),
            };
            if let Some(action) = action {
                if !send.is_empty() {
                    out.push(Action::Send(std::mem::take(&mut send)));
                }
                out.push(action);
            }
        }
        if !send.is_empty() {
            out.push(Action::Send(send));
        }
        out
    }

    /// Whether the parser is in the middle of an escape (it holds back keystrokes).
    pub fn pending(&self) -> bool {
        self.state != State::Normal
    }

    /// Leaves an escape under way (a menu that has nothing to offer).
    pub fn reset(&mut self) {
        self.state = State::Normal;
    }
}

/// Parses an escape prefix written as `^Ec` (a control character, then one character).
pub fn parse_prefix(spec: &str) -> Result<[u8; 2], String> {
    let bytes = spec.as_bytes();
    match bytes {
        [b'^', c, second]
            if c.is_ascii_alphabetic() || matches!(c, b'[' | b'\\' | b']' | b'^' | b'_') =>
        {
            if !second.is_ascii_graphic() {
                return Err(format!(
                    "escape {spec:?}: the second key must be a printable character"
                ));
            }
            Ok([c.to_ascii_uppercase() & 0x1f, *second])
        }
        _ => Err(format!(
            "escape {spec:?}: write a control key and a character, e.g. ^Ec (Ctrl-E c)"
        )),
    }
}

/// The prefix as people read it: `Ctrl-E c`.
pub fn describe_prefix(prefix: [u8; 2]) -> String {
    let [control, key] = prefix;
    format!("Ctrl-{} {}", char::from(control | 0x40), char::from(key))
}

/// The escape table shown to operators.
pub fn help_text(prefix: [u8; 2]) -> String {
    let p = describe_prefix(prefix);
    format!(
        "burrow console escapes ({p}, then):\r\n\
         \x20 .            disconnect\r\n\
         \x20 l1           send a break\r\n\
         \x20 a            attach read-write (when nobody writes)\r\n\
         \x20 f            force read-write (take it over)\r\n\
         \x20 s            spy (read-only)\r\n\
         \x20 r            replay the port log (recent output)\r\n\
         \x20 bRATE Enter  change baud rate, e.g. b115200\r\n\
         \x20 =SET Enter   change line settings, e.g. =7E1 flow=rts-cts imap=crlf dtr=pulse\r\n\
         \x20 t            replay the port log with timestamps\r\n\
         \x20 i            status: line settings, writer, recording\r\n\
         \x20 w            who is attached, and how\r\n\
         \x20 p            power: 1 on, 0 off, c cycle, b cycle then BREAK (then y)\r\n\
         \x20 x            binary transfer (XMODEM): escapes off until input pauses 5 s\r\n\
         \x20 ?            this help\r\n\
         \x20 {p}     send {p} itself\r\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(input: &[u8]) -> Vec<Action> {
        EscapeParser::default().feed(input)
    }

    #[test]
    fn table() {
        use Action::*;
        let cases: Vec<(&[u8], Vec<Action>)> = vec![
            (b"show ver\r", vec![Send(b"show ver\r".to_vec())]),
            (b"\x05c.", vec![Disconnect]),
            (
                b"ab\x05cl1cd",
                vec![Send(b"ab".to_vec()), Break, Send(b"cd".to_vec())],
            ),
            (
                b"\x05ca\x05cf\x05cs\x05cr\x05c?",
                vec![Attach, Force, Spy, Replay, Help],
            ),
            (b"\x05cb115200\r", vec![Baud(115_200)]),
            (b"\x05c=7E1 dtr=off\r", vec![Settings("7E1 dtr=off".into())]),
            (b"\x05c=8N2x\x7f1\r", vec![Settings("8N21".into())]),
            (b"\x05c=\r", vec![Unknown(b'=')]),
            (
                b"\x05ct\x05cw\x05ci\x05cx",
                vec![ReplayTimestamps, Who, Info, Binary],
            ),
            (
                b"\x05cpcy",
                vec![PowerMenu, PowerAsk(PowerKey::Cycle), Power(PowerKey::Cycle)],
            ),
            (
                b"\x05cpbn",
                vec![PowerMenu, PowerAsk(PowerKey::CycleBreak), PowerCancelled],
            ),
            (b"\x05cpz", vec![PowerMenu, PowerCancelled]),
            (b"\x05cb\r", vec![Unknown(b'b')]),
            (b"\x05cbx", vec![Unknown(b'b')]),
            (b"\x05cz", vec![Unknown(b'z')]),
            (b"\x05cl2", vec![Unknown(b'2')]),
            (b"\x05c\x05c", vec![Send(vec![0x05, b'c'])]),
            (b"\x05x", vec![Send(vec![0x05, b'x'])]),
            (b"\x05\x05c.", vec![Send(vec![0x05]), Disconnect]),
        ];
        for (input, want) in cases {
            assert_eq!(parse(input), want, "{input:?}");
        }
    }

    #[test]
    fn split_across_reads() {
        let mut p = EscapeParser::default();
        assert_eq!(p.feed(b"x\x05"), vec![Action::Send(b"x".to_vec())]);
        assert!(p.pending());
        assert_eq!(p.feed(b"c"), vec![]);
        assert_eq!(p.feed(b"b96"), vec![]);
        assert_eq!(p.feed(b"00\n"), vec![Action::Baud(9600)]);
        assert!(!p.pending());
    }

    #[test]
    fn prefixes() {
        assert_eq!(parse_prefix("^Ec"), Ok(DEFAULT_PREFIX));
        assert_eq!(parse_prefix("^]x"), Ok([0x1d, b'x']));
        assert_eq!(describe_prefix([0x1d, b'x']), "Ctrl-] x");
        assert_eq!(describe_prefix(DEFAULT_PREFIX), "Ctrl-E c");
        for bad in ["", "Ec", "^E", "^E c", "^1c", "^Ecc"] {
            assert!(parse_prefix(bad).is_err(), "{bad}");
        }
        assert!(help_text([0x1d, b'x']).contains("Ctrl-] x, then"));
    }

    #[test]
    fn custom_prefix() {
        let mut p = EscapeParser::new([0x1d, b'x']);
        assert_eq!(
            p.feed(b"\x05c.\x1dx."),
            vec![Action::Send(b"\x05c.".to_vec()), Action::Disconnect]
        );
    }

    /// Random keystrokes: no panic, no state that traps the operator (Enter then `^Ec.` always
    /// disconnects), and input without the prefix byte reaches the line unchanged.
    #[test]
    fn random_input_never_traps_or_alters() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..2000 {
            let mut p = EscapeParser::default();
            for _ in 0..32 {
                crate::xorshift(&mut seed);
                let len = (seed % 16) as usize;
                // Bias towards the interesting bytes.
                let chunk: Vec<u8> = (0..len)
                    .map(|i| match (seed >> (i * 4)) & 7 {
                        0 => 0x05,
                        1 => b'c',
                        2 => b'l',
                        3 => b'b',
                        4 => b'1',
                        _ => (seed >> (i * 3)) as u8,
                    })
                    .collect();
                for a in p.feed(&chunk) {
                    if let Action::Baud(r) = a {
                        assert!(r > 0);
                    }
                }
                let plain: Vec<u8> = chunk.iter().copied().filter(|b| *b != 0x05).collect();
                if !plain.is_empty() {
                    assert_eq!(
                        EscapeParser::default().feed(&plain),
                        vec![Action::Send(plain.clone())]
                    );
                }
            }
            assert_eq!(p.feed(b"\r\x05c.").last(), Some(&Action::Disconnect));
        }
    }
}
