//! The relay's data directory: host key, database, and (later) console recordings.

use std::path::{Path, PathBuf};

use burrow_io::keys::PrivateKey;

use crate::RelayError;

/// File name of the relay's ed25519 host key inside the data directory.
pub const HOST_KEY_FILE: &str = "host_key";
/// File name of the SQLite database inside the data directory.
pub const DATABASE_FILE: &str = "burrow.db";

/// The data directory used when neither `--data-dir` nor `BURROW_DATA_DIR` is given:
/// `/var/lib/burrow` for root, else `$XDG_STATE_HOME/burrow` or `~/.local/state/burrow`.
pub fn default_data_dir() -> PathBuf {
    let is_root = std::env::var("USER").is_ok_and(|u| u == "root")
        || std::env::var("HOME").is_ok_and(|h| h == "/root");
    if is_root {
        return PathBuf::from("/var/lib/burrow");
    }
    if let Some(state) = std::env::var_os("XDG_STATE_HOME") {
        return PathBuf::from(state).join("burrow");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".local/state/burrow"),
        None => PathBuf::from("/var/lib/burrow"),
    }
}

/// Creates the directory (mode 0700) if missing.
pub fn ensure(dir: &Path) -> Result<(), RelayError> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| {
            RelayError::DataDir(format!(
                "cannot create data directory {}: {e} (choose another with --data-dir or BURROW_DATA_DIR)",
                dir.display()
            ))
        })
}

/// Checks that `dir` holds a relay (its database and host key) before an admin command uses it.
///
/// Only starting the relay or `burrow relay init` creates a data directory: a mistyped
/// `--data-dir` must not quietly become a second, empty relay that the running one never reads.
pub fn require_existing(dir: &Path) -> Result<(), RelayError> {
    let missing: Vec<&str> = [DATABASE_FILE, HOST_KEY_FILE]
        .into_iter()
        .filter(|f| !dir.join(f).is_file())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let what = if dir.is_dir() {
        format!("{} has no {}", dir.display(), missing.join(" and "))
    } else {
        format!("{} does not exist", dir.display())
    };
    Err(RelayError::DataDir(format!(
        "no relay data directory at {}: {what}. Pass the --data-dir (or BURROW_DATA_DIR) the running \
         relay uses (it logs it at start), or create a new one with `burrow relay init --data-dir {}`",
        dir.display(),
        dir.display()
    )))
}

/// Loads the host key of an existing data directory (see [`require_existing`]).
pub fn load_host_key(dir: &Path) -> Result<PrivateKey, RelayError> {
    require_existing(dir)?;
    burrow_io::keys::load_private_key(&dir.join(HOST_KEY_FILE))
        .map_err(|e| RelayError::DataDir(e.to_string()))
}

/// Loads the host key, creating it on first start. Returns the key and whether it was created.
pub fn load_or_create_host_key(dir: &Path) -> Result<(PrivateKey, bool), RelayError> {
    ensure(dir)?;
    let path = dir.join(HOST_KEY_FILE);
    if path.exists() {
        let key = burrow_io::keys::load_private_key(&path)
            .map_err(|e| RelayError::DataDir(e.to_string()))?;
        return Ok((key, false));
    }
    let key = burrow_io::keys::generate_ed25519();
    burrow_io::keys::write_private_key(&path, &key)
        .map_err(|e| RelayError::DataDir(e.to_string()))?;
    Ok((key, true))
}
