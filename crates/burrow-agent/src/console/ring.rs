//! The port log on the device's disk: a bounded ring of four segment files per console, in
//! `<state dir>/console-log/NAME/`. Records are appended as the port speaks; the oldest
//! segment goes when a fifth would start. The relay's acknowledgement (how far it stored the
//! log) is kept beside them, so an agent restart uploads from where it stopped.
//!
//! Writes go to the page cache as they happen and are never synced: a board losing power
//! loses the last seconds, where syncing every line would wear an SD card out.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use burrow_proto::portlog::{Kind, MAX_RECORD_DATA, RECORD_HEADER, encode_record, whole_records};

/// Segments kept; the log's size is split between them.
const SEGMENTS: u64 = 4;

struct Segment {
    base: u64,
    len: u64,
    path: PathBuf,
}

/// One console's port log.
pub(crate) struct Ring {
    dir: PathBuf,
    id: u64,
    segment_size: u64,
    segments: Vec<Segment>,
    file: Option<File>,
    acked: u64,
}

fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:016x}.seg"))
}

impl Ring {
    /// Opens (or starts) the log in `dir`, `size` bytes in all; a torn last record (a crash
    /// mid-write) is cut off.
    pub(crate) fn open(dir: &Path, size: u64) -> io::Result<Ring> {
        std::fs::create_dir_all(dir)?;
        let id_path = dir.join("id");
        let id = match std::fs::read_to_string(&id_path)
            .ok()
            .and_then(|s| u64::from_str_radix(s.trim(), 16).ok())
        {
            Some(id) => id,
            None => {
                // A fresh log: any segments left without an id are not this log's.
                for e in std::fs::read_dir(dir)?.filter_map(Result::ok) {
                    if e.path().extension().is_some_and(|x| x == "seg") {
                        let _ = std::fs::remove_file(e.path());
                    }
                }
                let id = rand::random::<u64>() | 1;
                std::fs::write(&id_path, format!("{id:016x}\n"))?;
                id
            }
        };
        let mut segments: Vec<Segment> = std::fs::read_dir(dir)?
            .filter_map(Result::ok)
            .filter_map(|e| {
                let path = e.path();
                let name = path
                    .file_name()?
                    .to_str()?
                    .strip_suffix(".seg")?
                    .to_string();
                let base = u64::from_str_radix(&name, 16).ok()?;
                let len = e.metadata().ok()?.len();
                Some(Segment { base, len, path })
            })
            .collect();
        segments.sort_by_key(|s| s.base);
        // Segments that do not follow on from each other (a cut, a stray file) end the log
        // before them: keep the newest run.
        let mut keep_from = 0;
        for (i, pair) in segments.windows(2).enumerate() {
            if let [a, b] = pair
                && a.base + a.len != b.base
            {
                keep_from = i + 1;
            }
        }
        for s in segments.drain(..keep_from) {
            let _ = std::fs::remove_file(&s.path);
        }
        let mut ring = Ring {
            dir: dir.to_path_buf(),
            id,
            segment_size: (size / SEGMENTS).max(2 * (RECORD_HEADER + MAX_RECORD_DATA) as u64),
            segments,
            file: None,
            acked: 0,
        };
        ring.repair_last()?;
        ring.acked = std::fs::read_to_string(dir.join("acked"))
            .ok()
            .and_then(|s| {
                let (id, end) = s.trim().split_once(' ')?;
                (u64::from_str_radix(id, 16).ok()? == ring.id).then(|| end.parse().ok())?
            })
            .unwrap_or(0)
            .min(ring.end());
        Ok(ring)
    }

    /// Cuts a torn record off the newest segment.
    fn repair_last(&mut self) -> io::Result<()> {
        let Some(last) = self.segments.last_mut() else {
            return Ok(());
        };
        let mut data = Vec::new();
        File::open(&last.path)?.read_to_end(&mut data)?;
        let (_, whole) = whole_records(&data);
        if (whole as u64) < last.len {
            tracing::warn!(
                "port log {}: cut {} bytes of a record torn by a crash",
                last.path.display(),
                last.len - whole as u64
            );
            OpenOptions::new()
                .write(true)
                .open(&last.path)?
                .set_len(whole as u64)?;
            last.len = whole as u64;
        }
        Ok(())
    }

    /// The log's identity.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Where the oldest kept record starts.
    pub(crate) fn start(&self) -> u64 {
        self.segments.first().map_or(self.end(), |s| s.base)
    }

    /// Where the next record goes.
    pub(crate) fn end(&self) -> u64 {
        self.segments.last().map_or(0, |s| s.base + s.len)
    }

    /// How far the relay stored the log.
    pub(crate) fn acked(&self) -> u64 {
        self.acked.max(self.start())
    }

    /// Records the relay's acknowledgement.
    pub(crate) fn set_acked(&mut self, end: u64) {
        if end <= self.acked || end > self.end() {
            return;
        }
        self.acked = end;
        let path = self.dir.join("acked");
        if let Err(e) = std::fs::write(&path, format!("{:016x} {end}\n", self.id)) {
            tracing::warn!("cannot write {}: {e}", path.display());
        }
    }

    /// Appends a record (data longer than a record holds is split); returns its offset.
    pub(crate) fn append(&mut self, at_ms: u64, kind: Kind, data: &[u8]) -> io::Result<u64> {
        let first = self.end();
        for piece in data.chunks(MAX_RECORD_DATA) {
            let mut rec = Vec::with_capacity(RECORD_HEADER + piece.len());
            encode_record(at_ms, kind, piece, &mut rec);
            self.write(&rec)?;
        }
        Ok(first)
    }

    fn write(&mut self, rec: &[u8]) -> io::Result<()> {
        let full = self
            .segments
            .last()
            .is_none_or(|s| s.len + rec.len() as u64 > self.segment_size);
        if full {
            let base = self.end();
            let path = segment_path(&self.dir, base);
            self.file = Some(
                OpenOptions::new()
                    .create(true)
                    .truncate(true)
                    .write(true)
                    .open(&path)?,
            );
            self.segments.push(Segment { base, len: 0, path });
            while self.segments.len() as u64 > SEGMENTS {
                let old = self.segments.remove(0);
                let _ = std::fs::remove_file(&old.path);
            }
        }
        if self.file.is_none()
            && let Some(last) = self.segments.last()
        {
            self.file = Some(OpenOptions::new().append(true).open(&last.path)?);
        }
        let (Some(file), Some(last)) = (self.file.as_mut(), self.segments.last_mut()) else {
            return Err(io::Error::other("port log has no segment"));
        };
        if let Err(e) = file.write_all(rec) {
            // A part of the record may be on disk: cut it, so the log stays whole records.
            let _ = file.set_len(last.len);
            self.file = None;
            return Err(e);
        }
        last.len += rec.len() as u64;
        Ok(())
    }

    /// Whole records from `from` (or the oldest kept, if that is gone), at most about `max`
    /// bytes: where they start, and the bytes.
    pub(crate) fn read(&self, from: u64, max: usize) -> io::Result<(u64, Vec<u8>)> {
        let from = from.max(self.start());
        let mut out = Vec::new();
        let mut pos = from;
        for s in &self.segments {
            if s.base + s.len <= pos {
                continue;
            }
            if out.len() >= max {
                break;
            }
            let mut f = File::open(&s.path)?;
            f.seek(SeekFrom::Start(pos - s.base))?;
            let want = ((s.base + s.len - pos) as usize)
                .min(max.saturating_sub(out.len()) + RECORD_HEADER + MAX_RECORD_DATA);
            let mut buf = vec![0u8; want];
            f.read_exact(&mut buf)?;
            let (_, whole) = whole_records(&buf);
            buf.truncate(whole);
            pos += whole as u64;
            out.extend_from_slice(&buf);
            if whole < want {
                break;
            }
        }
        Ok((from, out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_stays_bounded_and_offsets_keep_counting() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Ring::open(dir.path(), 64 << 10).unwrap();
        let line = [b'x'; 200];
        let mut offsets = Vec::new();
        for i in 0..2000u64 {
            offsets.push(r.append(i, Kind::Output, &line).unwrap());
        }
        assert_eq!(r.end(), 2000 * 213);
        let disk: u64 = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "seg"))
            .map(|e| e.metadata().unwrap().len())
            .sum();
        assert!(disk <= 64 << 10, "{disk}");
        assert!(r.start() > 0);
        // Reading from a lost offset starts at the oldest kept record.
        let (from, bytes) = r.read(0, 1000).unwrap();
        assert_eq!(from, r.start());
        let (records, used) = whole_records(&bytes);
        assert_eq!(used, bytes.len());
        assert!(!records.is_empty());
        // Reading from a known offset gives that record first.
        let at = offsets[1990];
        let (from, bytes) = r.read(at, 100).unwrap();
        assert_eq!(from, at);
        assert_eq!(whole_records(&bytes).0[0].at_ms, 1990);
        // Reopened: same id, same end, the acknowledgement kept.
        r.set_acked(offsets[1995]);
        let id = r.id();
        drop(r);
        let r = Ring::open(dir.path(), 64 << 10).unwrap();
        assert_eq!(
            (r.id(), r.end(), r.acked()),
            (id, 2000 * 213, offsets[1995])
        );
    }

    #[test]
    fn a_torn_record_is_cut_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Ring::open(dir.path(), 64 << 10).unwrap();
        r.append(1, Kind::Output, b"whole\r\n").unwrap();
        let seg = r.segments[0].path.clone();
        drop(r);
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[50, 0, 0, 0, 1, 2]).unwrap();
        drop(f);
        let r = Ring::open(dir.path(), 64 << 10).unwrap();
        assert_eq!(r.end(), 20);
        let (_, bytes) = r.read(0, 1 << 20).unwrap();
        assert_eq!(whole_records(&bytes).0[0].data, b"whole\r\n");
    }
}
