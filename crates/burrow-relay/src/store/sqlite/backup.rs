//! `burrow relay backup FILE`: a consistent copy of the SQLite registry, taken while the relay
//! runs and writes; `burrow relay restore FILE` puts one back.
//!
//! `VACUUM INTO` reads the database inside one read transaction, so the copy is the registry
//! as of one commit (WAL lets the relay go on writing meanwhile), written compactly to a new
//! file. The copy goes to a temporary name beside `FILE` and is checked before it takes that
//! name: a backup that exists is whole.

use std::path::{Path, PathBuf};

use super::*;

/// What a backup holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupReport {
    /// Where it was written.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// Its schema version.
    pub schema_version: i64,
    /// Devices, operators and audit entries in it.
    pub devices: u64,
    /// Operators in it.
    pub operators: u64,
    /// Audit entries in it.
    pub audit_entries: u64,
}

/// Copies the database at `from` to `to`, which must not exist yet; the copy is checked with
/// `PRAGMA integrity_check` and readable only by its owner (it holds password hashes). The
/// database is read as it is: a backup taken before an upgrade is not migrated first, so it
/// is the registry the older relay can go back to.
pub fn backup(from: &Path, to: &Path) -> Result<BackupReport, StoreError> {
    let conflict = |why: String| StoreError::Conflict(why);
    if to.exists() {
        return Err(conflict(format!(
            "{} exists already: give the backup a new name, or remove the old file first",
            to.display()
        )));
    }
    let dir = match to.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        return Err(conflict(format!(
            "cannot write {}: the directory {} does not exist",
            to.display(),
            dir.display()
        )));
    }
    let name = to
        .file_name()
        .map_or_else(|| "backup".into(), |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{name}.partial-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let tmp_text = tmp.to_str().ok_or_else(|| {
        conflict(format!(
            "{} is not valid UTF-8: give the backup a plainer name",
            tmp.display()
        ))
    })?;
    if !from.is_file() {
        return Err(conflict(format!("no database at {}", from.display())));
    }
    let source = Connection::open_with_flags(
        from,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sql("opening the database"))?;
    source
        .busy_timeout(std::time::Duration::from_secs(10))
        .map_err(sql("setting the busy timeout"))?;
    let made = source
        .execute("VACUUM INTO ?1", [tmp_text])
        .map_err(sql("copying the database"))
        .and_then(|_| check(&tmp))
        .and_then(|report| {
            let io = |e: std::io::Error| {
                conflict(format!("cannot write the backup {}: {e}", to.display()))
            };
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
            std::fs::File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(io)?;
            // Not over a file that appeared meanwhile.
            std::fs::hard_link(&tmp, to).map_err(io)?;
            let _ = std::fs::remove_file(&tmp);
            if let Ok(d) = std::fs::File::open(&dir) {
                let _ = d.sync_all();
            }
            Ok(BackupReport {
                path: to.to_path_buf(),
                ..report
            })
        });
    if made.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    made
}

/// Opens the copy on its own and checks it whole.
fn check(path: &Path) -> Result<BackupReport, StoreError> {
    let doing = "checking the backup";
    let c = Connection::open(path).map_err(sql(doing))?;
    let verdict: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(sql(doing))?;
    if verdict != "ok" {
        return Err(StoreError::Conflict(format!(
            "the backup failed its integrity check ({verdict}); the database itself may be damaged: run `sqlite3 burrow.db 'PRAGMA integrity_check'` on it"
        )));
    }
    let count = |table: &str| -> Result<u64, StoreError> {
        c.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| {
            r.get::<_, i64>(0)
        })
        .map(|n| n.max(0) as u64)
        .map_err(sql(doing))
    };
    let report = BackupReport {
        path: path.to_path_buf(),
        bytes: 0,
        schema_version: c
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(sql(doing))?,
        devices: count("devices")?,
        operators: count("operators")?,
        audit_entries: count("audit")?,
    };
    // Closed before it is measured and named: nothing of it is left in a -wal file.
    c.close().map_err(|(_, e)| sql(doing)(e))?;
    Ok(BackupReport {
        bytes: std::fs::metadata(path).map_or(0, |m| m.len()),
        ..report
    })
}

/// Puts the backup `from` in place of the database at `db` (the relay must be stopped; the
/// caller holds the data directory's lock). The backup is checked first; the database it
/// replaces is kept beside it as `burrow.db.replaced-STAMP` (with its -wal and -shm files,
/// which must not be applied to the restored file). Returns the backup's report and where
/// the replaced database went.
pub fn restore(from: &Path, db: &Path) -> Result<(BackupReport, Option<PathBuf>), StoreError> {
    let conflict = |why: String| StoreError::Conflict(why);
    if !from.is_file() {
        return Err(conflict(format!("no backup at {}", from.display())));
    }
    // Checked on a copy: opening a file may change it, and the backup stays as it was.
    let tmp = db.with_extension("db.restoring");
    let _ = std::fs::remove_file(&tmp);
    let io = |what: &str, e: std::io::Error| conflict(format!("cannot {what}: {e}"));
    std::fs::copy(from, &tmp).map_err(|e| io(&format!("copy {}", from.display()), e))?;
    let report = match check(&tmp) {
        Ok(r) if r.schema_version > SCHEMA_VERSION => Err(StoreError::Schema(format!(
            "the backup {} is at schema version {}, newer than this burrow knows ({SCHEMA_VERSION}): restore it with the burrow that made it",
            from.display(),
            r.schema_version
        ))),
        other => other,
    };
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    let kept = if db.exists() {
        let stamp = burrow_proto::time::format_compact(now());
        let aside = db.with_extension(format!("db.replaced-{stamp}"));
        for suffix in ["", "-wal", "-shm"] {
            let mut from = db.as_os_str().to_owned();
            from.push(suffix);
            let mut to = aside.as_os_str().to_owned();
            to.push(suffix);
            if Path::new(&from).exists() {
                std::fs::rename(&from, &to)
                    .map_err(|e| io(&format!("move {} aside", Path::new(&from).display()), e))?;
            }
        }
        Some(aside)
    } else {
        None
    };
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
        .and_then(|()| std::fs::rename(&tmp, db))
        .map_err(|e| io(&format!("put the backup in place as {}", db.display()), e))?;
    Ok((
        BackupReport {
            path: db.to_path_buf(),
            ..report
        },
        kept,
    ))
}
