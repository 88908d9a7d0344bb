//! Port logs at the relay: what each console's port said, uploaded by its agent, kept under
//! `DATA/console-logs/DEVICE/CONSOLE/` in files of the agent's own records, rotated by size and
//! kept for a time and up to a total per console. Read by `burrow relay console log`, the
//! replay escapes, and the web console (through [`lines`], [`tail`] and [`Follower`]).
//!
//! A file is named `CREATED-LOGID-BASE.plog`: the agent's log identity and the offset of its
//! first record, so the relay knows where each record sits in the device's log, takes what it
//! already has once only, and starts a new file where the device lost some (a gap).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use burrow_proto::portlog::{Kind, LineRenderer, LogLine, encode_record, whole_records};

/// Sub-directory of the data directory that holds port logs.
pub const PORTLOGS_DIR: &str = "console-logs";
/// A file is rotated past this size.
pub const ROTATE_BYTES: u64 = 4 << 20;
/// Default total kept per console.
pub const DEFAULT_MAX_BYTES: u64 = 64 << 20;
/// Default time kept.
pub const DEFAULT_KEEP: Duration = Duration::from_secs(90 * 86_400);

/// Retention of port logs.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Most bytes kept per console (the oldest files go first).
    pub max_bytes: u64,
    /// Files whose last write is older than this go.
    pub keep: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_bytes: DEFAULT_MAX_BYTES,
            keep: DEFAULT_KEEP,
        }
    }
}

/// A port log file.
#[derive(Debug, Clone)]
struct LogFile {
    path: PathBuf,
    log_id: u64,
    base: u64,
    len: u64,
}

fn parse_name(path: &Path) -> Option<(u64, u64, u64)> {
    let name = path.file_name()?.to_str()?.strip_suffix(".plog")?;
    let mut parts = name.split('-');
    let created = parts.next()?.parse().ok()?;
    let id = u64::from_str_radix(parts.next()?, 16).ok()?;
    let base = u64::from_str_radix(parts.next()?, 16).ok()?;
    Some((created, id, base))
}

fn console_dir(data_dir: &Path, device: &str, console: &str) -> PathBuf {
    data_dir.join(PORTLOGS_DIR).join(device).join(console)
}

/// The files of a console's log, oldest first.
fn files(dir: &Path) -> io::Result<Vec<LogFile>> {
    let mut out: Vec<(u64, LogFile)> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let path = e.path();
                let (created, log_id, base) = parse_name(&path)?;
                let len = e.metadata().ok()?.len();
                Some((
                    created,
                    LogFile {
                        path,
                        log_id,
                        base,
                        len,
                    },
                ))
            })
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    out.sort_by_key(|a| (a.0, a.1.base));
    Ok(out.into_iter().map(|(_, f)| f).collect())
}

/// The file being appended to, per console.
struct Current {
    file: LogFile,
    handle: File,
}

/// The port logs of one relay.
pub struct PortLogs {
    dir: PathBuf,
    retention: Retention,
    current: Mutex<HashMap<(String, String), Current>>,
}

impl PortLogs {
    /// The store under `data_dir`.
    pub fn new(data_dir: &Path, retention: Retention) -> PortLogs {
        PortLogs {
            dir: data_dir.to_path_buf(),
            retention,
            current: Mutex::new(HashMap::new()),
        }
    }

    /// Stores records the agent sent (`offset` in its log `log_id`); returns where the log is
    /// stored up to. Blocking file I/O: call it off the async workers.
    pub fn append(
        &self,
        device: &str,
        console: &str,
        log_id: u64,
        offset: u64,
        records: &[u8],
    ) -> io::Result<u64> {
        let (_, whole) = whole_records(records);
        let records = records.get(..whole).unwrap_or_default();
        let dir = console_dir(&self.dir, device, console);
        let mut map = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let key = (device.to_string(), console.to_string());
        if !map.contains_key(&key)
            && let Some(last) = files(&dir)?.pop()
        {
            let handle = open_trimmed(&last.path)?;
            let len = handle.metadata()?.len();
            map.insert(
                key.clone(),
                Current {
                    file: LogFile { len, ..last },
                    handle,
                },
            );
        }
        let mut offset = offset;
        let mut records = records;
        let mut gap = None;
        if let Some(cur) = map.get(&key).filter(|c| c.file.log_id == log_id) {
            let end = cur.file.base + cur.file.len;
            if offset + records.len() as u64 <= end {
                return Ok(end);
            }
            if offset < end {
                // Sent again after a lost acknowledgement: keep what is new only.
                records = records.get((end - offset) as usize..).unwrap_or_default();
                offset = end;
            } else if offset > end {
                gap = Some(offset - end);
            }
        }
        let new_file = match map.get(&key) {
            None => true,
            Some(cur) => {
                cur.file.log_id != log_id
                    || gap.is_some()
                    || cur.file.len + records.len() as u64 > ROTATE_BYTES
            }
        };
        if new_file {
            std::fs::create_dir_all(&dir)?;
            let created = crate::store::now().max(0) as u64;
            let mut path = dir.join(format!("{created:012}-{log_id:016x}-{offset:016x}.plog"));
            let mut n = 0;
            while path.exists() {
                n += 1;
                path = dir.join(format!(
                    "{:012}-{log_id:016x}-{offset:016x}.plog",
                    created + n
                ));
            }
            let handle = OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(&path)?;
            map.insert(
                key.clone(),
                Current {
                    file: LogFile {
                        path,
                        log_id,
                        base: offset,
                        len: 0,
                    },
                    handle,
                },
            );
            self.prune(&dir);
        }
        let Some(cur) = map.get_mut(&key) else {
            return Err(io::Error::other("port log lost its file"));
        };
        if let Some(lost) = gap {
            // Said in the log itself, where a reader looks: the device's ring overflowed.
            let at = whole_records(records).0.first().map_or(0, |r| r.at_ms);
            let mut note = Vec::new();
            encode_record(
                at,
                Kind::Event,
                format!("{lost} bytes of the port log were lost on the device before they could be uploaded (its log was full)").as_bytes(),
                &mut note,
            );
            // The note is not part of the device's log: the file's base moves back over it.
            cur.handle.write_all(&note)?;
            cur.file.len += note.len() as u64;
            cur.file.base = cur.file.base.saturating_sub(note.len() as u64);
            let renamed = cur.file.path.with_file_name(format!(
                "{}-{log_id:016x}-{:016x}.plog",
                parse_name(&cur.file.path).map_or(0, |n| n.0),
                cur.file.base
            ));
            std::fs::rename(&cur.file.path, &renamed)?;
            cur.file.path = renamed;
        }
        if let Err(e) = cur.handle.write_all(records) {
            // Cut what was written of it: the file holds whole records only.
            let _ = cur.handle.set_len(cur.file.len);
            map.remove(&key);
            return Err(e);
        }
        cur.file.len += records.len() as u64;
        Ok(cur.file.base + cur.file.len)
    }

    /// Deletes the oldest files of a console past its total, and files past the keep time.
    fn prune(&self, dir: &Path) {
        let Ok(list) = files(dir) else { return };
        let mut total: u64 = list.iter().map(|f| f.len).sum();
        let cutoff = SystemTime::now().checked_sub(self.retention.keep);
        // The newest file is the one being written: never pruned.
        for f in list.iter().take(list.len().saturating_sub(1)) {
            let old = cutoff.is_some_and(|c| {
                std::fs::metadata(&f.path)
                    .and_then(|m| m.modified())
                    .is_ok_and(|m| m < c)
            });
            if total > self.retention.max_bytes || old {
                if std::fs::remove_file(&f.path).is_ok() {
                    total = total.saturating_sub(f.len);
                }
            } else {
                break;
            }
        }
    }
}

/// Opens a file for appending, cutting a torn record off its end (a crash mid-write).
fn open_trimmed(path: &Path) -> io::Result<File> {
    let mut data = Vec::new();
    File::open(path)?.read_to_end(&mut data)?;
    let (_, whole) = whole_records(&data);
    let f = OpenOptions::new().append(true).open(path)?;
    if whole < data.len() {
        f.set_len(whole as u64)?;
    }
    Ok(f)
}

/// Lines of `device/console`'s port log from `since_ms` on (unix milliseconds), at most
/// `max` (the earliest).
pub fn lines(
    data_dir: &Path,
    device: &str,
    console: &str,
    since_ms: u64,
    max: usize,
) -> io::Result<Vec<LogLine>> {
    let mut f = Follower::new(data_dir, device, console, since_ms);
    let mut out = f.poll(max)?;
    if out.len() < max {
        f.finish(&mut out);
    }
    out.truncate(max);
    Ok(out)
}

/// The last `n` lines of `device/console`'s port log (read from the newest files back).
pub fn tail(data_dir: &Path, device: &str, console: &str, n: usize) -> io::Result<Vec<LogLine>> {
    let list = files(&console_dir(data_dir, device, console))?;
    let mut out: Vec<LogLine> = Vec::new();
    for start in (0..list.len()).rev() {
        let mut lines = Vec::new();
        let mut renderer = LineRenderer::default();
        for f in list.get(start..).unwrap_or_default() {
            let mut data = Vec::new();
            File::open(&f.path)?.read_to_end(&mut data)?;
            for r in whole_records(&data).0 {
                renderer.feed(&r, &mut lines);
            }
        }
        renderer.flush(&mut lines);
        out = lines;
        if out.len() >= n {
            break;
        }
    }
    let skip = out.len().saturating_sub(n);
    Ok(out.split_off(skip))
}

/// Reads a console's port log as it grows (`console log --follow`).
pub struct Follower {
    dir: PathBuf,
    since_ms: u64,
    /// The file being read and how far.
    at: Option<(PathBuf, u64)>,
    renderer: LineRenderer,
    pending: Vec<u8>,
}

impl Follower {
    /// Starts at the first line from `since_ms` on.
    pub fn new(data_dir: &Path, device: &str, console: &str, since_ms: u64) -> Follower {
        Follower {
            dir: console_dir(data_dir, device, console),
            since_ms,
            at: None,
            renderer: LineRenderer::default(),
            pending: Vec::new(),
        }
    }

    /// Whole lines that arrived since the last call (up to about `max`).
    pub fn poll(&mut self, max: usize) -> io::Result<Vec<LogLine>> {
        let list = files(&self.dir)?;
        let mut out = Vec::new();
        let start = match &self.at {
            None => 0,
            Some((path, _)) => list.iter().position(|f| &f.path == path).unwrap_or(0),
        };
        for f in list.get(start..).unwrap_or_default() {
            let pos = match &self.at {
                Some((path, pos)) if *path == f.path => *pos,
                _ => {
                    // A new file: a line left open in the last one ends there.
                    self.renderer.flush(&mut out);
                    self.pending.clear();
                    0
                }
            };
            let mut file = File::open(&f.path)?;
            file.seek(SeekFrom::Start(pos))?;
            let mut data = Vec::new();
            file.read_to_end(&mut data)?;
            self.pending.extend_from_slice(&data);
            let (records, used) = whole_records(&self.pending);
            for r in records {
                if r.at_ms >= self.since_ms || r.kind != Kind::Output {
                    self.renderer.feed(&r, &mut out);
                }
            }
            self.pending.drain(..used);
            self.at = Some((f.path.clone(), pos + data.len() as u64));
            if out.len() >= max {
                break;
            }
        }
        out.retain(|l| l.at_ms >= self.since_ms);
        Ok(out)
    }

    /// Ends a line left open (the end of the log as it is now).
    pub fn finish(&mut self, out: &mut Vec<LogLine>) {
        self.renderer.flush(out);
    }
}

/// A line as `console log` prints it: `2026-11-23T12:03:00.123Z  text` (input marked `>`,
/// burrow's notes `--`).
pub fn format_line(l: &LogLine, timestamps: bool) -> String {
    let mark = match l.kind {
        "input" => "> ",
        "event" => "-- ",
        _ => "",
    };
    if !timestamps {
        return format!("{mark}{}", l.text);
    }
    let secs = (l.at_ms / 1000) as i64;
    let stamp = burrow_proto::time::format_rfc3339(secs);
    let stamp = match stamp.strip_suffix('Z') {
        Some(s) => format!("{s}.{:03}Z", l.at_ms % 1000),
        None => stamp,
    };
    format!("{stamp}  {mark}{}", l.text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recs(items: &[(u64, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (at, d) in items {
            encode_record(*at, Kind::Output, d, &mut out);
        }
        out
    }

    #[test]
    fn stored_once_with_gaps_said_and_read_back_as_lines() {
        let dir = tempfile::tempdir().unwrap();
        let logs = PortLogs::new(dir.path(), Retention::default());
        let a = recs(&[(1000, b"boot\r\n"), (2000, b"ready\r\n")]);
        let end = logs.append("pi", "console", 7, 0, &a).unwrap();
        assert_eq!(end, a.len() as u64);
        // Sent again (a lost acknowledgement) with one more: stored once.
        let b = recs(&[(3000, b"more\r\n")]);
        let mut again = a.clone();
        again.extend_from_slice(&b);
        let end = logs.append("pi", "console", 7, 0, &again).unwrap();
        assert_eq!(end, again.len() as u64);
        // A gap: the device lost some.
        let c = recs(&[(9000, b"after the gap\r\n")]);
        let end = logs.append("pi", "console", 7, end + 500, &c).unwrap();
        assert_eq!(end, again.len() as u64 + 500 + c.len() as u64);
        let got: Vec<_> = lines(dir.path(), "pi", "console", 0, 100)
            .unwrap()
            .into_iter()
            .map(|l| (l.at_ms, l.text))
            .collect();
        assert_eq!(got.len(), 5, "{got:?}");
        assert_eq!(got[0], (1000, "boot".into()));
        assert_eq!(got[2], (3000, "more".into()));
        assert!(
            got[3].1.contains("500 bytes of the port log were lost"),
            "{got:?}"
        );
        assert_eq!(got[4], (9000, "after the gap".into()));
        let since: Vec<_> = lines(dir.path(), "pi", "console", 2500, 100)
            .unwrap()
            .into_iter()
            .map(|l| l.text)
            .collect();
        assert_eq!(since.first().map(String::as_str), Some("more"));
        let last = tail(dir.path(), "pi", "console", 2).unwrap();
        assert_eq!(last.last().unwrap().text, "after the gap");
        assert!(format_line(&last[1], true).starts_with("1970-01-01T00:00:09.000Z  after"));
    }

    #[test]
    fn a_follower_sees_lines_as_they_come() {
        let dir = tempfile::tempdir().unwrap();
        let logs = PortLogs::new(dir.path(), Retention::default());
        let mut f = Follower::new(dir.path(), "pi", "console", 0);
        assert!(f.poll(100).unwrap().is_empty());
        let a = recs(&[(1000, b"one\r\ntw")]);
        let end = logs.append("pi", "console", 1, 0, &a).unwrap();
        let got = f.poll(100).unwrap();
        assert_eq!(got.len(), 1);
        logs.append("pi", "console", 1, end, &recs(&[(1100, b"o\r\n")]))
            .unwrap();
        let got = f.poll(100).unwrap();
        assert_eq!(got[0].text, "two");
    }

    #[test]
    fn retention_keeps_the_total_per_console() {
        let dir = tempfile::tempdir().unwrap();
        let logs = PortLogs::new(
            dir.path(),
            Retention {
                max_bytes: ROTATE_BYTES * 2,
                keep: DEFAULT_KEEP,
            },
        );
        let line = recs(&[(1, &[b'x'; 4000])]);
        let mut end = 0;
        for _ in 0..(5 * ROTATE_BYTES / line.len() as u64) {
            end = logs.append("pi", "console", 1, end, &line).unwrap();
        }
        let total: u64 = files(&console_dir(dir.path(), "pi", "console"))
            .unwrap()
            .iter()
            .map(|f| f.len)
            .sum();
        assert!(total <= ROTATE_BYTES * 3, "{total}");
    }
}
