//! `burrow relay migrate --to postgresql://...`: a single relay's SQLite registry and audit
//! copied into a cluster's PostgreSQL database, every row counted on both sides.

use super::postgres::{CopyValue, Pg};
use super::{Store, StoreError};

/// What is copied: each table with its columns and how each column reads.
const TABLES: [(&str, &[(&str, Kind)]); 11] = [
    (
        "devices",
        &[
            ("name", Kind::Text),
            ("created", Kind::Int),
            ("last_seen", Kind::Int),
            ("pending", Kind::Bool),
        ],
    ),
    (
        "device_labels",
        &[
            ("device", Kind::Text),
            ("key", Kind::Text),
            ("value", Kind::Text),
        ],
    ),
    (
        "device_keys",
        &[
            ("device", Kind::Text),
            ("fingerprint", Kind::Text),
            ("key", Kind::Text),
        ],
    ),
    (
        "device_allow_connect",
        &[
            ("device", Kind::Text),
            ("host", Kind::Text),
            ("port", Kind::Int4),
        ],
    ),
    (
        "device_allow_listen",
        &[
            ("device", Kind::Text),
            ("addr", Kind::Text),
            ("port", Kind::Int4),
        ],
    ),
    (
        "quarantine",
        &[
            ("device", Kind::Text),
            ("fingerprint", Kind::Text),
            ("since", Kind::Int),
            ("detail", Kind::Text),
            ("kept_relay", Kind::Text),
            ("kept_session", Kind::Int),
            ("kept_instance", Kind::Text),
        ],
    ),
    (
        "tokens",
        &[
            ("id", Kind::Text),
            ("secret_hash", Kind::Text),
            ("created", Kind::Int),
            ("created_by", Kind::Text),
            ("expires", Kind::Int),
            ("max_uses", Kind::Int4Opt),
            ("uses", Kind::Int4),
            ("name_pattern", Kind::Text),
            ("labels", Kind::Text),
            ("approve", Kind::Bool),
            ("replaces", Kind::Text),
            ("last_used_by", Kind::Text),
            ("last_used", Kind::Int),
            ("revoked", Kind::Int),
        ],
    ),
    (
        "operators",
        &[
            ("name", Kind::Text),
            ("password_hash", Kind::Text),
            ("console_only", Kind::Bool),
            ("created", Kind::Int),
            ("locked_until", Kind::Int),
            ("role", Kind::Text),
            ("totp_secret", Kind::Text),
        ],
    ),
    (
        "operator_keys",
        &[
            ("operator", Kind::Text),
            ("fingerprint", Kind::Text),
            ("key", Kind::Text),
        ],
    ),
    (
        "operator_allow",
        &[("operator", Kind::Text), ("pattern", Kind::Text)],
    ),
    (
        "audit",
        &[
            ("id", Kind::Int),
            ("at", Kind::Int),
            ("event", Kind::Text),
            ("who", Kind::Text),
            ("target", Kind::Text),
            ("outcome", Kind::Text),
            ("detail", Kind::Text),
            ("device", Kind::Text),
            ("operator", Kind::Text),
        ],
    ),
];

/// How a column is read from SQLite and written to PostgreSQL.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    Text,
    Int,
    Int4,
    Int4Opt,
    Bool,
}

/// Rows copied, per table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// (table, rows in SQLite, rows now in PostgreSQL).
    pub tables: Vec<(&'static str, u64, u64)>,
}

/// Copies the registry and audit of the SQLite file at `from` into the PostgreSQL database at
/// `to`, which must hold no devices, operators or audit entries yet. Fails, naming the table,
/// if any count differs after the copy.
pub async fn sqlite_to_postgres(from: &std::path::Path, to: &str) -> Result<Report, StoreError> {
    let store = Store::open(from)?;
    let mut pg = Pg::open(to, "").await?;
    for table in ["devices", "operators", "audit"] {
        if pg.count(table).await? > 0 {
            return Err(StoreError::Conflict(format!(
                "the PostgreSQL registry already has rows in {table}: migrate into an empty database (a new cluster), or add devices and operators there with `burrow relay --database URL device|operator add`"
            )));
        }
    }
    let mut report = Report { tables: Vec::new() };
    for (table, columns) in TABLES {
        let rows = store.dump(table, columns)?;
        let names: Vec<&'static str> = columns.iter().map(|(c, _)| *c).collect();
        // In chunks: an audit trail of a million rows is not one transaction.
        for chunk in rows.chunks(5000) {
            pg.copy_rows(table, &names, chunk).await?;
        }
        let copied = pg.count(table).await?;
        let had = rows.len() as u64;
        report.tables.push((table, had, copied));
        if copied != had {
            return Err(StoreError::Conflict(format!(
                "{table}: {had} rows in SQLite but {copied} in PostgreSQL after the copy; nothing was removed from SQLite"
            )));
        }
    }
    pg.resync_audit_ids().await?;
    Ok(report)
}

impl Store {
    /// Every row of `table` as values to copy.
    pub(crate) fn dump(
        &self,
        table: &'static str,
        columns: &[(&'static str, Kind)],
    ) -> Result<Vec<Vec<CopyValue>>, StoreError> {
        let names: Vec<&str> = columns.iter().map(|(c, _)| *c).collect();
        let query = format!("SELECT {} FROM {table}", names.join(", "));
        self.read_rows(&query, |row| {
            columns
                .iter()
                .enumerate()
                .map(|(i, (_, kind))| {
                    Ok(match kind {
                        Kind::Text => CopyValue::Text(row.get(i)?),
                        Kind::Int => CopyValue::Int(row.get(i)?),
                        Kind::Int4 => CopyValue::Int4(row.get(i)?),
                        Kind::Int4Opt => CopyValue::Int4Opt(row.get(i)?),
                        Kind::Bool => CopyValue::Bool(row.get(i)?),
                    })
                })
                .collect()
        })
    }
}
