//! Console recordings: asciicast v2 under `DATA/recordings/DEVICE/CONSOLE-YYYYMMDDTHHMMSSZ.cast`,
//! one file per attach cycle, each event written (and so handed to the OS) as it happens.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burrow_proto::asciicast::{Utf8Stream, event, header};
use burrow_proto::time::format_compact;

/// Sub-directory of the data directory that holds recordings.
pub const RECORDINGS_DIR: &str = "recordings";

/// A recording being written.
pub struct Recording {
    file: std::fs::File,
    path: PathBuf,
    started: Instant,
    text: Utf8Stream,
}

impl Recording {
    /// Starts a recording of `device`'s console `console`.
    pub fn create(
        data_dir: &Path,
        device: &str,
        console: &str,
        unix_now: i64,
    ) -> std::io::Result<Recording> {
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
        file.write_all(header(80, 24, unix_now, &format!("{device}/{console}")).as_bytes())?;
        Ok(Recording {
            file,
            path,
            started: Instant::now(),
            text: Utf8Stream::default(),
        })
    }

    /// Where it is written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write(&mut self, code: char, data: &str) {
        let line = event(self.started.elapsed().as_secs_f64(), code, data);
        if let Err(e) = self.file.write_all(line.as_bytes()) {
            tracing::error!("recording {} not written: {e}", self.path.display());
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

    /// Ends the recording.
    pub fn finish(&mut self) {
        let rest = self.text.finish();
        if !rest.is_empty() {
            self.write('o', &rest);
        }
        let _ = self.file.sync_data();
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
