//! Console recordings: asciicast v2 under `DATA/recordings/DEVICE/CONSOLE-YYYYMMDDTHHMMSSZ.cast`,
//! one file per attach cycle, each event handed to the OS as it happens by a writer thread of
//! the recording's own, within a per-recording and a total size cap.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use burrow_proto::asciicast::{Utf8Stream, event, header};
use burrow_proto::time::format_compact;

/// Sub-directory of the data directory that holds recordings.
pub const RECORDINGS_DIR: &str = "recordings";

/// Size limits of recordings, shared by every recording of one relay.
#[derive(Clone)]
pub struct Limits {
    /// Largest single recording, in bytes.
    pub per_recording: u64,
    /// Largest total of all recordings on disk, in bytes.
    pub total: u64,
    /// Bytes the recordings directory holds now (counted at start, grown as events are written).
    pub used: Arc<AtomicU64>,
}

impl Limits {
    /// Limits for `data_dir`, counting what its recordings already take.
    pub fn new(data_dir: &Path, per_recording: u64, total: u64) -> Limits {
        let used = list(data_dir, None)
            .map(|files| files.iter().map(|f| f.bytes).sum())
            .unwrap_or(0);
        Limits {
            per_recording,
            total,
            used: Arc::new(AtomicU64::new(used)),
        }
    }
}

/// Events waiting for the writer thread; past this the recording has fallen behind the disk.
const QUEUE_EVENTS: usize = 4096;

enum Cmd {
    Line(String),
    /// The recording reached its cap (found by the console's side, which counts what it
    /// sends): the writer marks the file and writes no more.
    Stop(String),
    Finish,
}

/// A recording being written. Events go to a thread of its own, so a slow or full disk never
/// blocks the console; when the recording cannot go on (a cap, a full disk, an I/O error) it
/// says why once, through [`Recording::new_failure`].
pub struct Recording {
    tx: SyncSender<Cmd>,
    path: PathBuf,
    started: Instant,
    text: Utf8Stream,
    failure: Arc<Mutex<Option<String>>>,
    reported: bool,
    /// Bytes sent to the writer so far (the header included): the cap is checked here, as
    /// output comes, so the operators are told at once rather than at the next output after
    /// the writer thread noticed.
    sent: u64,
    cap: u64,
}

impl Recording {
    /// Starts a recording of `device`'s console `console`, `cols` x `rows` as the first
    /// operator's terminal.
    pub fn create(
        data_dir: &Path,
        device: &str,
        console: &str,
        unix_now: i64,
        (cols, rows): (u16, u16),
        limits: &Limits,
    ) -> std::io::Result<Recording> {
        if limits.used.load(Ordering::Relaxed) >= limits.total {
            return Err(std::io::Error::other(format!(
                "recordings take {} bytes, their total cap (--recordings-max-total)",
                limits.total
            )));
        }
        let dir = data_dir.join(RECORDINGS_DIR).join(device);
        std::fs::create_dir_all(&dir)?;
        let mut n = 0;
        let path = loop {
            let suffix = if n == 0 {
                String::new()
            } else {
                format!("-{n}")
            };
            let p = dir.join(format!(
                "{console}-{}{suffix}.cast",
                format_compact(unix_now)
            ));
            if !p.exists() {
                break p;
            }
            n += 1;
        };
        let mut file = std::fs::OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)?;
        let head = header(cols, rows, unix_now, &format!("{device}/{console}"));
        // A recording that cannot hold its header (a full disk) is not left behind empty or
        // cut.
        if let Err(e) = file.write_all(head.as_bytes()) {
            drop(file);
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        limits.used.fetch_add(head.len() as u64, Ordering::Relaxed);
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE_EVENTS);
        let failure = Arc::new(Mutex::new(None));
        let writer = Writer {
            file,
            path: path.clone(),
            written: head.len() as u64,
            limits: limits.clone(),
            failure: failure.clone(),
        };
        std::thread::Builder::new()
            .name("burrow-recording".into())
            .spawn(move || writer.run(rx))?;
        Ok(Recording {
            tx,
            path,
            started: Instant::now(),
            text: Utf8Stream::default(),
            failure,
            reported: false,
            sent: head.len() as u64,
            cap: limits.per_recording,
        })
    }

    /// Where it is written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write(&mut self, code: char, data: &str) {
        let line = event(self.started.elapsed().as_secs_f64(), code, data);
        if self.sent >= self.cap {
            return;
        }
        let len = line.len() as u64;
        if self.sent.saturating_add(len) > self.cap {
            self.sent = self.cap;
            let why = cap_reached(&self.path, self.cap);
            let _ = self.tx.try_send(Cmd::Stop(why.clone()));
            fail(&self.failure, why);
            return;
        }
        self.sent = self.sent.saturating_add(len);
        if let Err(TrySendError::Full(_)) = self.tx.try_send(Cmd::Line(line)) {
            fail(
                &self.failure,
                format!("recording {} fell behind the disk", self.path.display()),
            );
        }
    }

    /// Console output.
    pub fn output(&mut self, bytes: &[u8]) {
        let text = self.text.decode(bytes);
        if !text.is_empty() {
            self.write('o', &text);
        }
    }

    /// A marker (attach, detach, break, baud, notices).
    pub fn marker(&mut self, label: &str) {
        self.write('m', label);
    }

    /// The terminal was resized (asciicast's `r` event, `COLSxROWS`).
    pub fn resize(&mut self, cols: u32, rows: u32) {
        self.write('r', &format!("{cols}x{rows}"));
    }

    /// Why the recording stopped, the first time this is asked after it did.
    pub fn new_failure(&mut self) -> Option<String> {
        if self.reported {
            return None;
        }
        let why = self
            .failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()?;
        self.reported = true;
        Some(why)
    }

    /// Ends the recording (the writer thread flushes it to disk and exits).
    pub fn finish(&mut self) {
        let rest = self.text.finish();
        if !rest.is_empty() {
            self.write('o', &rest);
        }
        let _ = self.tx.try_send(Cmd::Finish);
    }
}

fn cap_reached(path: &Path, cap: u64) -> String {
    format!(
        "recording {} reached its cap of {cap} bytes (--recording-max-bytes)",
        path.display()
    )
}

fn fail(slot: &Mutex<Option<String>>, why: String) {
    let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
    if slot.is_none() {
        tracing::error!("{why}");
        *slot = Some(why);
    }
}

/// The thread that owns a recording's file.
struct Writer {
    file: std::fs::File,
    path: PathBuf,
    written: u64,
    limits: Limits,
    failure: Arc<Mutex<Option<String>>>,
}

impl Writer {
    fn run(mut self, rx: Receiver<Cmd>) {
        let mut stopped = false;
        while let Ok(cmd) = rx.recv() {
            match cmd {
                Cmd::Line(line) if !stopped => {
                    if let Err(why) = self.append(&line) {
                        // Say so in the file too, if there is room for one more whole line.
                        let note = event(0.0, 'm', &format!("recording stopped: {why}"));
                        if self.file.write_all(note.as_bytes()).is_err() {
                            self.cut_back();
                        }
                        fail(&self.failure, why);
                        stopped = true;
                    }
                }
                Cmd::Line(_) => {}
                Cmd::Stop(why) if !stopped => {
                    let _ = self.file.write_all(
                        event(0.0, 'm', &format!("recording stopped: {why}")).as_bytes(),
                    );
                    stopped = true;
                }
                Cmd::Stop(_) => {}
                Cmd::Finish => break,
            }
        }
        let _ = self.file.sync_data();
    }

    /// Cuts off what a failed write left of a line: a recording holds whole JSON lines only
    /// (asciinema stops at a line it cannot read).
    fn cut_back(&mut self) {
        let _ = self.file.set_len(self.written);
    }

    fn append(&mut self, line: &str) -> Result<(), String> {
        let len = line.len() as u64;
        if self.written + len > self.limits.per_recording {
            return Err(cap_reached(&self.path, self.limits.per_recording));
        }
        if self.limits.used.load(Ordering::Relaxed) + len > self.limits.total {
            return Err(format!(
                "recordings reached their total cap of {} bytes (--recordings-max-total)",
                self.limits.total
            ));
        }
        if let Err(e) = self.file.write_all(line.as_bytes()) {
            self.cut_back();
            return Err(format!(
                "cannot write recording {}: {e}",
                self.path.display()
            ));
        }
        self.written += len;
        self.limits.used.fetch_add(len, Ordering::Relaxed);
        Ok(())
    }
}

/// A recording on disk.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RecordingFile {
    /// Device name.
    pub device: String,
    /// File path.
    pub path: PathBuf,
    /// Size in bytes.
    pub bytes: u64,
}

/// Lists recordings, optionally of one device, oldest first per device.
pub fn list(data_dir: &Path, device: Option<&str>) -> std::io::Result<Vec<RecordingFile>> {
    let root = data_dir.join(RECORDINGS_DIR);
    let mut out = Vec::new();
    let Ok(devices) = std::fs::read_dir(&root) else {
        return Ok(out);
    };
    let mut dirs: Vec<_> = devices.filter_map(Result::ok).map(|e| e.path()).collect();
    dirs.sort();
    for dir in dirs {
        // Anything else an admin left here (notes, archives) is not a recording.
        if !dir.is_dir() {
            continue;
        }
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        if device.is_some_and(|d| d != name) {
            continue;
        }
        let mut files: Vec<_> = std::fs::read_dir(&dir)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "cast"))
            .collect();
        files.sort();
        for path in files {
            let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            out.push(RecordingFile {
                device: name.clone(),
                path,
                bytes,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stray_files_in_recordings_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join(RECORDINGS_DIR);
        std::fs::create_dir_all(root.join("pi")).unwrap();
        std::fs::write(root.join("README"), "notes").unwrap();
        std::fs::write(root.join("pi/console-20261123T120300Z.cast"), "{}\n").unwrap();
        std::fs::write(root.join("pi/notes.txt"), "x").unwrap();
        std::fs::create_dir(root.join("pi/old")).unwrap();
        let files = list(dir.path(), None).unwrap();
        assert_eq!(files.len(), 1, "{files:?}");
        assert_eq!(files[0].device, "pi");
        assert_eq!(files[0].bytes, 3);
    }
}
