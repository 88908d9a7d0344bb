//! The port log: its records (what a console port said, with when), their rendering as
//! timestamped lines, and the frames of the upload channel between agent and relay.
//!
//! A record is `[u32 LE length][u64 LE unix ms][u8 kind][data]`. The agent keeps records in
//! a ring on its disk; a position in the log (an offset) counts record bytes since the log
//! began, so agent and relay name the same record by the same number. Records are cut at line
//! ends, so a line's time is when its first byte arrived.
//!
//! The upload channel (`portlog@burrow`) carries, from the agent, frames inside one deflate
//! stream; from the relay, plain frames. A frame is `[u8 type][u32 BE length][body]`.

use serde::{Deserialize, Serialize};

/// Bytes before a record's data.
pub const RECORD_HEADER: usize = 13;
/// Most data in one record.
pub const MAX_RECORD_DATA: usize = 4096;
/// The SSH channel type of the upload.
pub const CHANNEL_TYPE: &str = "portlog@burrow";
/// Largest frame accepted.
pub const MAX_FRAME: usize = 1 << 20;

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// What the port said.
    Output,
    /// What an operator typed (only with `log_input = true`).
    Input,
    /// burrow's own note: gone, back, settings, power, alert.
    Event,
}

impl Kind {
    fn code(self) -> u8 {
        match self {
            Kind::Output => 0,
            Kind::Input => 1,
            Kind::Event => 2,
        }
    }

    fn from_code(c: u8) -> Option<Kind> {
        Some(match c {
            0 => Kind::Output,
            1 => Kind::Input,
            2 => Kind::Event,
            _ => return None,
        })
    }
}

/// One record, borrowed from a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// When its first byte arrived (unix milliseconds).
    pub at_ms: u64,
    /// What it holds.
    pub kind: Kind,
    /// The bytes.
    pub data: &'a [u8],
}

impl Record<'_> {
    /// Its size in the log.
    pub fn len(&self) -> usize {
        RECORD_HEADER + self.data.len()
    }

    /// Whether it has no data.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// Appends a record.
pub fn encode_record(at_ms: u64, kind: Kind, data: &[u8], out: &mut Vec<u8>) {
    let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&at_ms.to_le_bytes());
    out.push(kind.code());
    out.extend_from_slice(data);
}

/// A record that cannot be one (a torn write, another file).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a port log record")]
pub struct BadRecord;

/// The record at the start of `buf`: `Ok(None)` when `buf` holds only part of one.
pub fn decode_record(buf: &[u8]) -> Result<Option<Record<'_>>, BadRecord> {
    let Some(head) = buf.get(..RECORD_HEADER) else {
        return Ok(None);
    };
    let mut len = [0u8; 4];
    len.copy_from_slice(head.get(..4).ok_or(BadRecord)?);
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_RECORD_DATA {
        return Err(BadRecord);
    }
    let mut at = [0u8; 8];
    at.copy_from_slice(head.get(4..12).ok_or(BadRecord)?);
    let kind = Kind::from_code(head.get(12).copied().ok_or(BadRecord)?).ok_or(BadRecord)?;
    let Some(data) = buf.get(RECORD_HEADER..RECORD_HEADER + len) else {
        return Ok(None);
    };
    Ok(Some(Record {
        at_ms: u64::from_le_bytes(at),
        kind,
        data,
    }))
}

/// The whole records at the start of `buf`, and how many bytes they take.
pub fn whole_records(buf: &[u8]) -> (Vec<Record<'_>>, usize) {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(rest) = buf.get(at..) {
        match decode_record(rest) {
            Ok(Some(r)) => {
                at += r.len();
                out.push(r);
            }
            _ => break,
        }
    }
    (out, at)
}

/// One line of a rendered log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogLine {
    /// When its first byte arrived (unix milliseconds).
    pub at_ms: u64,
    /// `output`, `input` or `event`.
    pub kind: &'static str,
    /// The text, control characters removed (terminal escapes included).
    pub text: String,
}

/// Turns records into lines: a line's time is that of the record its first byte came in.
#[derive(Debug, Default)]
pub struct LineRenderer {
    /// The output line under way: its time and bytes.
    open: Option<(u64, Vec<u8>)>,
}

/// Longest line kept whole; longer ones are cut into pieces.
const MAX_LINE: usize = 4096;

impl LineRenderer {
    /// Feeds one record; finished lines go to `out`.
    pub fn feed(&mut self, r: &Record<'_>, out: &mut Vec<LogLine>) {
        match r.kind {
            Kind::Output => {
                for &b in r.data {
                    let (_, line) = self.open.get_or_insert_with(|| (r.at_ms, Vec::new()));
                    if b == b'\n' {
                        self.flush(out);
                        continue;
                    }
                    line.push(b);
                    if line.len() >= MAX_LINE {
                        self.flush(out);
                    }
                }
            }
            Kind::Input | Kind::Event => out.push(LogLine {
                at_ms: r.at_ms,
                kind: if r.kind == Kind::Input {
                    "input"
                } else {
                    "event"
                },
                text: printable(r.data),
            }),
        }
    }

    /// Ends the line under way (at the end of the log).
    pub fn flush(&mut self, out: &mut Vec<LogLine>) {
        if let Some((at_ms, line)) = self.open.take() {
            out.push(LogLine {
                at_ms,
                kind: "output",
                text: printable(&line),
            });
        }
    }
}

/// `bytes` as text without control characters: terminal escape sequences are dropped, as are
/// CR and the rest of C0 except tab (a log line must not move a reader's cursor).
pub fn printable(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                // CSI: ESC [ params final (0x40-0x7e); other escapes: ESC and one character.
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for c in chars.by_ref() {
                        if ('\u{40}'..='\u{7e}').contains(&c) {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            }
            '\t' => out.push(c),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// An alert raised on the device, as it travels to the relay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleAlert {
    /// The device's alert stream (new when its state is lost): with `seq`, what makes an
    /// alert sent twice (its acknowledgement lost) count once.
    #[serde(default)]
    pub stream: u64,
    /// Number of this alert in its stream (acknowledged by the relay).
    pub seq: u64,
    /// The console.
    pub console: String,
    /// The rule's name, or `gone` for a port gone too long.
    pub rule: String,
    /// The line that matched (or what happened).
    pub line: String,
    /// Lines before it.
    pub before: Vec<String>,
    /// Lines after it.
    pub after: Vec<String>,
    /// When the line arrived (unix milliseconds).
    pub at_ms: u64,
    /// Where the line is in the port log.
    pub offset: u64,
    /// Matches of the rule not alerted since its last alert (its quiet time).
    pub suppressed: u64,
}

/// A frame on the upload channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Agent: records of a console's log from `offset` on.
    Chunk {
        /// The console.
        console: String,
        /// The log's identity (a fresh log on the device has a new one).
        log_id: u64,
        /// Where the first record is in the log.
        offset: u64,
        /// Whole records.
        records: Vec<u8>,
    },
    /// Agent: an alert (JSON of [`ConsoleAlert`]).
    Alert(String),
    /// Relay: the log is stored up to `end`.
    Ack {
        /// The console.
        console: String,
        /// The log's identity.
        log_id: u64,
        /// Stored up to here.
        end: u64,
    },
    /// Relay: the alert of this number is recorded.
    AlertAck(u64),
}

const CHUNK: u8 = 1;
const ALERT: u8 = 2;
const ACK: u8 = 3;
const ALERT_ACK: u8 = 4;

fn put_str(s: &str, out: &mut Vec<u8>) {
    let len = u16::try_from(s.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.as_bytes().get(..usize::from(len)).unwrap_or_default());
}

impl Frame {
    /// Appends the frame.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut body = Vec::new();
        let kind = match self {
            Frame::Chunk {
                console,
                log_id,
                offset,
                records,
            } => {
                put_str(console, &mut body);
                body.extend_from_slice(&log_id.to_be_bytes());
                body.extend_from_slice(&offset.to_be_bytes());
                body.extend_from_slice(records);
                CHUNK
            }
            Frame::Alert(json) => {
                body.extend_from_slice(json.as_bytes());
                ALERT
            }
            Frame::Ack {
                console,
                log_id,
                end,
            } => {
                put_str(console, &mut body);
                body.extend_from_slice(&log_id.to_be_bytes());
                body.extend_from_slice(&end.to_be_bytes());
                ACK
            }
            Frame::AlertAck(seq) => {
                body.extend_from_slice(&seq.to_be_bytes());
                ALERT_ACK
            }
        };
        out.push(kind);
        out.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(&body);
    }
}

/// A frame that is not one: the peer is not speaking this protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad upload frame: {0}")]
pub struct BadFrame(pub &'static str);

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], BadFrame> {
        let head = self.0.get(..n).ok_or(BadFrame("cut short"))?;
        self.0 = self.0.get(n..).unwrap_or_default();
        Ok(head)
    }

    fn u64(&mut self) -> Result<u64, BadFrame> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(b))
    }

    fn string(&mut self) -> Result<String, BadFrame> {
        let mut b = [0u8; 2];
        b.copy_from_slice(self.take(2)?);
        let s = self.take(usize::from(u16::from_be_bytes(b)))?;
        String::from_utf8(s.to_vec()).map_err(|_| BadFrame("a name is not UTF-8"))
    }
}

/// Reassembles frames from a byte stream.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: Vec<u8>,
}

impl FrameReader {
    /// Adds bytes; returns the frames they completed.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<Frame>, BadFrame> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(head) = self.buf.get(..5) {
            let kind = head.first().copied().unwrap_or(0);
            let mut len = [0u8; 4];
            len.copy_from_slice(head.get(1..5).unwrap_or(&[0; 4]));
            let len = u32::from_be_bytes(len) as usize;
            if len > MAX_FRAME {
                return Err(BadFrame("too long"));
            }
            let Some(body) = self.buf.get(5..5 + len) else {
                break;
            };
            let mut c = Cursor(body);
            let frame = match kind {
                CHUNK => Frame::Chunk {
                    console: c.string()?,
                    log_id: c.u64()?,
                    offset: c.u64()?,
                    records: c.0.to_vec(),
                },
                ALERT => Frame::Alert(
                    String::from_utf8(body.to_vec()).map_err(|_| BadFrame("alert not UTF-8"))?,
                ),
                ACK => Frame::Ack {
                    console: c.string()?,
                    log_id: c.u64()?,
                    end: c.u64()?,
                },
                ALERT_ACK => Frame::AlertAck(c.u64()?),
                _ => return Err(BadFrame("unknown type")),
            };
            out.push(frame);
            self.buf.drain(..5 + len);
        }
        if self.buf.len() > MAX_FRAME + 5 {
            return Err(BadFrame("too long"));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_torn_ends_wait() {
        let mut buf = Vec::new();
        encode_record(1000, Kind::Output, b"Router> ", &mut buf);
        encode_record(1500, Kind::Output, b"show\r\n", &mut buf);
        encode_record(1600, Kind::Event, b"gone", &mut buf);
        let (records, used) = whole_records(&buf);
        assert_eq!(used, buf.len());
        assert_eq!(records.len(), 3);
        assert_eq!(records[1].data, b"show\r\n");
        assert_eq!(records[2].kind, Kind::Event);
        let torn = &buf[..buf.len() - 2];
        let (records, used) = whole_records(torn);
        assert_eq!(records.len(), 2);
        assert_eq!(used, 13 + 8 + 13 + 6);
        assert_eq!(decode_record(&[0xff; 20]), Err(BadRecord));
    }

    #[test]
    fn lines_take_the_time_of_their_first_byte() {
        let mut buf = Vec::new();
        encode_record(1000, Kind::Output, b"\x1b[1mboot\x1b[0ming", &mut buf);
        encode_record(2000, Kind::Output, b" done\r\nnext", &mut buf);
        encode_record(2500, Kind::Input, b"enable\r", &mut buf);
        encode_record(3000, Kind::Output, b" line\r\n", &mut buf);
        let mut r = LineRenderer::default();
        let mut out = Vec::new();
        for rec in whole_records(&buf).0 {
            r.feed(&rec, &mut out);
        }
        r.flush(&mut out);
        let got: Vec<_> = out
            .iter()
            .map(|l| (l.at_ms, l.kind, l.text.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (1000, "output", "booting done"),
                (2500, "input", "enable"),
                (2000, "output", "next line"),
            ]
        );
    }

    #[test]
    fn frames_round_trip_in_pieces() {
        let frames = vec![
            Frame::Chunk {
                console: "console".into(),
                log_id: 7,
                offset: 12_345,
                records: vec![1, 2, 3],
            },
            Frame::Alert("{\"seq\":1}".into()),
            Frame::Ack {
                console: "aux".into(),
                log_id: 7,
                end: 99,
            },
            Frame::AlertAck(42),
        ];
        let mut wire = Vec::new();
        for f in &frames {
            f.encode(&mut wire);
        }
        let mut reader = FrameReader::default();
        let mut got = Vec::new();
        for piece in wire.chunks(3) {
            got.extend(reader.feed(piece).unwrap());
        }
        assert_eq!(got, frames);
        assert!(FrameReader::default().feed(&[9, 0, 0, 0, 0]).is_err());
        assert!(FrameReader::default().feed(&[1, 0xff, 0, 0, 0]).is_err());
    }

    /// Hostile bytes never panic.
    #[test]
    fn random_frames_never_panic() {
        let mut seed = 0x1234_5678_9abc_def0u64;
        for _ in 0..2000 {
            let len = (crate::xorshift(&mut seed) % 64) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| (crate::xorshift(&mut seed) % 6) as u8)
                .collect();
            let _ = FrameReader::default().feed(&bytes);
            let _ = whole_records(&bytes);
        }
    }
}
