//! Telnet with the COM-PORT-OPTION (RFC 2217): the framing of a console endpoint.
//!
//! Serial data travels with IAC (0xFF) doubled; control travels as subnegotiations
//! `IAC SB COM-PORT-OPTION <command> <value> IAC SE`. burrow adds one private option,
//! [`NOTICE_OPTION`], whose subnegotiation carries a UTF-8 line from the serial side to the
//! operator ("break failed: ...", "offline: /dev/ttyUSB0 is gone"), and [`CONTROL_OPTION`], whose
//! subnegotiation carries a burrow request or report between relay and agent (`power cycle`,
//! `set parity=even`, `line 9600 8N1, ...`); standard RFC 2217 clients such as pyserial ignore
//! both. The decoder is incremental and never panics on hostile input.

/// Interpret As Command.
pub const IAC: u8 = 255;
const DONT: u8 = 254;
const DO: u8 = 253;
const WONT: u8 = 252;
const WILL: u8 = 251;
const SB: u8 = 250;
const SE: u8 = 240;
/// Telnet option 44: COM-PORT-OPTION.
pub const COM_PORT_OPTION: u8 = 44;
/// Telnet option 0 (binary transmission), which serial data needs.
const BINARY: u8 = 0;
/// Telnet option 3 (suppress go-ahead).
const SGA: u8 = 3;
/// burrow's private option for notices from the serial side (unassigned by IANA).
pub const NOTICE_OPTION: u8 = 183;
/// burrow's private option for requests and reports between relay and agent.
pub const CONTROL_OPTION: u8 = 184;
/// Longest subnegotiation accepted; longer ones are dropped.
pub const MAX_SUBNEGOTIATION: usize = 1024;

/// SET-CONTROL value: BREAK on.
pub const CONTROL_BREAK_ON: u8 = 5;
/// SET-CONTROL value: BREAK off.
pub const CONTROL_BREAK_OFF: u8 = 6;
/// SET-CONTROL value: no flow control.
pub const CONTROL_FLOW_NONE: u8 = 1;
/// SET-CONTROL value: XON/XOFF flow control.
pub const CONTROL_FLOW_XONXOFF: u8 = 2;
/// SET-CONTROL value: hardware (RTS/CTS) flow control.
pub const CONTROL_FLOW_HARDWARE: u8 = 3;
/// SET-CONTROL value: DTR on.
pub const CONTROL_DTR_ON: u8 = 8;
/// SET-CONTROL value: DTR off.
pub const CONTROL_DTR_OFF: u8 = 9;
/// SET-CONTROL value: RTS on.
pub const CONTROL_RTS_ON: u8 = 11;
/// SET-CONTROL value: RTS off.
pub const CONTROL_RTS_OFF: u8 = 12;

/// A COM-PORT-OPTION command (client to server codes; a server answers with code + 100).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ComPort {
    /// SET-BAUDRATE; 0 asks for the current rate.
    SetBaud(u32),
    /// SET-DATASIZE (5-8; 0 asks).
    SetDataSize(u8),
    /// SET-PARITY (1 none, 2 odd, 3 even, 4 mark, 5 space; 0 asks).
    SetParity(u8),
    /// SET-STOPSIZE (1 one, 2 two, 3 one and a half; 0 asks).
    SetStopSize(u8),
    /// SET-CONTROL (flow control, BREAK, DTR, RTS).
    SetControl(u8),
    /// PURGE-DATA (1 receive, 2 transmit, 3 both).
    Purge(u8),
    /// Any other command, kept so it can be acknowledged.
    Other(u8, Vec<u8>),
}

impl ComPort {
    fn code(&self) -> u8 {
        match self {
            ComPort::SetBaud(_) => 1,
            ComPort::SetDataSize(_) => 2,
            ComPort::SetParity(_) => 3,
            ComPort::SetStopSize(_) => 4,
            ComPort::SetControl(_) => 5,
            ComPort::Purge(_) => 12,
            ComPort::Other(code, _) => *code,
        }
    }

    fn value(&self) -> Vec<u8> {
        match self {
            ComPort::SetBaud(b) => b.to_be_bytes().to_vec(),
            ComPort::SetDataSize(v)
            | ComPort::SetParity(v)
            | ComPort::SetStopSize(v)
            | ComPort::SetControl(v)
            | ComPort::Purge(v) => vec![*v],
            ComPort::Other(_, v) => v.clone(),
        }
    }

    fn parse(code: u8, value: &[u8]) -> ComPort {
        let byte = value.first().copied().unwrap_or(0);
        match code % 100 {
            1 => match <[u8; 4]>::try_from(value) {
                Ok(b) => ComPort::SetBaud(u32::from_be_bytes(b)),
                Err(_) => ComPort::Other(code, value.to_vec()),
            },
            2 => ComPort::SetDataSize(byte),
            3 => ComPort::SetParity(byte),
            4 => ComPort::SetStopSize(byte),
            5 => ComPort::SetControl(byte),
            12 => ComPort::Purge(byte),
            _ => ComPort::Other(code, value.to_vec()),
        }
    }
}

/// Something decoded from the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Serial data, IAC already undoubled.
    Data(Vec<u8>),
    /// A COM-PORT-OPTION command; `server` is true for a server's answer (code >= 100).
    ComPort {
        /// The command.
        command: ComPort,
        /// Whether it is a server's answer.
        server: bool,
    },
    /// A burrow notice line.
    Notice(String),
    /// A burrow request or report (relay and agent).
    Control(String),
    /// An option negotiation (`WILL`/`WONT`/`DO`/`DONT` and the option).
    Negotiate(u8, u8),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Data,
    Iac,
    Negotiate(u8),
    Sub,
    SubIac,
}

/// Incremental decoder; feed it whatever arrives.
#[derive(Debug)]
pub struct Decoder {
    state: State,
    sub: Vec<u8>,
    sub_overflow: bool,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            state: State::Data,
            sub: Vec::new(),
            sub_overflow: false,
        }
    }
}

impl Decoder {
    /// Decodes `input`, appending events to `out` (consecutive data is merged).
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<Event>) {
        let mut data = Vec::new();
        for &b in input {
            match self.state {
                State::Data => {
                    if b == IAC {
                        self.state = State::Iac;
                    } else {
                        data.push(b);
                    }
                }
                State::Iac => match b {
                    IAC => {
                        data.push(IAC);
                        self.state = State::Data;
                    }
                    WILL | WONT | DO | DONT => self.state = State::Negotiate(b),
                    SB => {
                        self.sub.clear();
                        self.sub_overflow = false;
                        self.state = State::Sub;
                    }
                    // NOP, GA, and the rest carry nothing for a serial line.
                    _ => self.state = State::Data,
                },
                State::Negotiate(verb) => {
                    flush(&mut data, out);
                    out.push(Event::Negotiate(verb, b));
                    self.state = State::Data;
                }
                State::Sub => {
                    if b == IAC {
                        self.state = State::SubIac;
                    } else {
                        self.push_sub(b);
                    }
                }
                State::SubIac => match b {
                    SE => {
                        flush(&mut data, out);
                        if !self.sub_overflow
                            && let Some(event) = self.finish_sub()
                        {
                            out.push(event);
                        }
                        self.state = State::Data;
                    }
                    IAC => {
                        self.push_sub(IAC);
                        self.state = State::Sub;
                    }
                    // A malformed subnegotiation: drop it and resynchronise.
                    _ => self.state = State::Data,
                },
            }
        }
        flush(&mut data, out);
    }

    fn push_sub(&mut self, b: u8) {
        if self.sub.len() < MAX_SUBNEGOTIATION {
            self.sub.push(b);
        } else {
            self.sub_overflow = true;
        }
    }

    fn finish_sub(&mut self) -> Option<Event> {
        let (&option, rest) = self.sub.split_first()?;
        match option {
            COM_PORT_OPTION => {
                let (&code, value) = rest.split_first()?;
                Some(Event::ComPort {
                    command: ComPort::parse(code, value),
                    server: code >= 100,
                })
            }
            NOTICE_OPTION => Some(Event::Notice(String::from_utf8_lossy(rest).into_owned())),
            CONTROL_OPTION => Some(Event::Control(String::from_utf8_lossy(rest).into_owned())),
            _ => None,
        }
    }
}

fn flush(data: &mut Vec<u8>, out: &mut Vec<Event>) {
    if data.is_empty() {
        return;
    }
    if let Some(Event::Data(prev)) = out.last_mut() {
        prev.append(data);
    } else {
        out.push(Event::Data(std::mem::take(data)));
    }
}

/// Serial data for the wire (IAC doubled).
pub fn encode_data(data: &[u8], out: &mut Vec<u8>) {
    for &b in data {
        out.push(b);
        if b == IAC {
            out.push(IAC);
        }
    }
}

fn encode_sub(option: u8, payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&[IAC, SB, option]);
    encode_data(payload, out);
    out.extend_from_slice(&[IAC, SE]);
}

/// A COM-PORT-OPTION command; `server` sends it as an answer (code + 100).
pub fn encode_command(command: &ComPort, server: bool, out: &mut Vec<u8>) {
    let code = command.code() % 100 + if server { 100 } else { 0 };
    let mut payload = vec![code];
    payload.extend_from_slice(&command.value());
    encode_sub(COM_PORT_OPTION, &payload, out);
}

/// A burrow notice line.
pub fn encode_notice(text: &str, out: &mut Vec<u8>) {
    encode_sub(NOTICE_OPTION, text.as_bytes(), out);
}

/// A burrow request or report.
pub fn encode_control(text: &str, out: &mut Vec<u8>) {
    encode_sub(CONTROL_OPTION, text.as_bytes(), out);
}

/// Telnet option negotiation for one side: offers binary, suppress-go-ahead and (for a client)
/// COM-PORT-OPTION, agrees to those, refuses the rest, and never answers the same thing twice,
/// so two peers cannot loop.
#[derive(Debug, Default)]
pub struct Negotiator {
    sent: Vec<[u8; 3]>,
}

impl Negotiator {
    /// The opening offers, recorded as sent.
    pub fn hello(&mut self, client: bool) -> Vec<u8> {
        let mut offers = vec![
            [IAC, WILL, BINARY],
            [IAC, DO, BINARY],
            [IAC, WILL, SGA],
            [IAC, DO, SGA],
        ];
        if client {
            offers.push([IAC, WILL, COM_PORT_OPTION]);
        } else {
            offers.push([IAC, DO, COM_PORT_OPTION]);
        }
        let mut out = Vec::new();
        for o in offers {
            out.extend_from_slice(&o);
            self.sent.push(o);
        }
        out
    }

    /// The answer to a peer's `verb option`, if one is due.
    pub fn answer(&mut self, verb: u8, option: u8) -> Option<[u8; 3]> {
        let supported = matches!(option, BINARY | SGA | COM_PORT_OPTION);
        let reply = match verb {
            WILL => [IAC, if supported { DO } else { DONT }, option],
            DO => [IAC, if supported { WILL } else { WONT }, option],
            WONT => [IAC, DONT, option],
            DONT => [IAC, WONT, option],
            _ => return None,
        };
        if self.sent.contains(&reply) || self.sent.len() > 64 {
            return None;
        }
        self.sent.push(reply);
        Some(reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(chunks: &[&[u8]]) -> Vec<Event> {
        let mut d = Decoder::default();
        let mut out = Vec::new();
        for c in chunks {
            d.feed(c, &mut out);
        }
        out
    }

    #[test]
    fn data_roundtrip_with_iac() {
        let data = [1u8, 255, 2, 255, 255, 3];
        let mut wire = Vec::new();
        encode_data(&data, &mut wire);
        assert_eq!(wire, [1, 255, 255, 2, 255, 255, 255, 255, 3]);
        // Split at every position: the decoder must not care where chunks end.
        for split in 0..wire.len() {
            let (a, b) = wire.split_at(split);
            let events = decode(&[a, b]);
            let joined: Vec<u8> = events
                .into_iter()
                .flat_map(|e| match e {
                    Event::Data(d) => d,
                    other => panic!("{other:?}"),
                })
                .collect();
            assert_eq!(joined, data);
        }
    }

    #[test]
    fn commands_roundtrip() {
        let commands = [
            ComPort::SetBaud(115_200),
            ComPort::SetBaud(0xFF_FF_FF_FF),
            ComPort::SetDataSize(8),
            ComPort::SetParity(1),
            ComPort::SetStopSize(1),
            ComPort::SetControl(CONTROL_BREAK_ON),
            ComPort::Purge(3),
        ];
        for server in [false, true] {
            for c in &commands {
                let mut wire = Vec::new();
                encode_command(c, server, &mut wire);
                let events = decode(&[&wire]);
                assert_eq!(
                    events,
                    [Event::ComPort {
                        command: c.clone(),
                        server
                    }],
                    "{c:?}"
                );
            }
        }
    }

    #[test]
    fn notices_and_negotiation_between_data() {
        let mut wire = b"abc".to_vec();
        encode_notice("break failed: ENOTTY", &mut wire);
        wire.extend_from_slice(b"def");
        wire.extend_from_slice(&[IAC, WILL, COM_PORT_OPTION]);
        let events = decode(&[&wire]);
        assert_eq!(
            events,
            [
                Event::Data(b"abc".to_vec()),
                Event::Notice("break failed: ENOTTY".into()),
                Event::Data(b"def".to_vec()),
                Event::Negotiate(WILL, COM_PORT_OPTION),
            ]
        );
        let mut n = Negotiator::default();
        n.hello(false);
        // Already offered in the hello: no second answer, so peers cannot loop.
        assert_eq!(
            n.answer(DO, COM_PORT_OPTION),
            Some([IAC, WILL, COM_PORT_OPTION])
        );
        assert_eq!(n.answer(WILL, COM_PORT_OPTION), None);
        assert_eq!(n.answer(DO, 1), Some([IAC, WONT, 1]));
        assert_eq!(n.answer(DO, 1), None);
        let mut c = Negotiator::default();
        c.hello(true);
        assert_eq!(c.answer(DO, COM_PORT_OPTION), None);
        assert_eq!(c.answer(WILL, 24), Some([IAC, DONT, 24]));
    }

    #[test]
    fn hostile_input_never_panics_and_resynchronises() {
        let mut long = vec![IAC, SB, COM_PORT_OPTION];
        long.extend(std::iter::repeat_n(7u8, MAX_SUBNEGOTIATION * 3));
        long.extend_from_slice(&[IAC, SE]);
        long.extend_from_slice(b"ok");
        let events = decode(&[&long]);
        assert_eq!(events, [Event::Data(b"ok".to_vec())]);

        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut d = Decoder::default();
        let mut out = Vec::new();
        for _ in 0..20_000 {
            crate::xorshift(&mut seed);
            let len = (seed % 64) as usize;
            let chunk: Vec<u8> = (0..len)
                .map(|i| (seed >> (i % 8 * 8)) as u8 | 0xF0)
                .collect();
            d.feed(&chunk, &mut out);
            out.clear();
        }
        // Two IAC SE end any subnegotiation or command the garbage left open.
        d.feed(&[IAC, SE, IAC, SE], &mut out);
        out.clear();
        d.feed(b"y", &mut out);
        assert!(matches!(out.last(), Some(Event::Data(_))));
    }
}
