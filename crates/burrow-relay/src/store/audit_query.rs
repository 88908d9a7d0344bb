//! The audit trail's filters (`relay audit --device --operator --event --since --until`, and
//! the web console's audit search) as one indexed query on either backend.
//!
//! Every filter has an index that ends with the entry's time (schema version 6), so the newest
//! entries of a device, an operator, an event or a time range are read by walking one index
//! backwards and stopping at the limit: no sort, no scan of the rest of the trail. Following
//! reads the entries past an id by the primary key, whatever the filter.

use super::AuditRecord;

/// Which audit entries to read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Entries concerning this device (see [`crate::audit_subject`]).
    pub device: Option<String>,
    /// Entries concerning this operator.
    pub operator: Option<String>,
    /// Entries of this event (`auth`, `stream`, `offline`, …).
    pub event: Option<String>,
    /// Entries at or after this time (seconds since the epoch).
    pub since: Option<i64>,
    /// Entries at or before this time.
    pub until: Option<i64>,
    /// At most this many, the newest (0: none).
    pub limit: usize,
}

/// An audit entry as read back.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuditEntry {
    /// Its row id: entries written later have larger ids on one relay; in a cluster ids are
    /// handed out as relays write, so they are not quite in commit order.
    pub id: i64,
    /// The relay that wrote it, in a cluster.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay: Option<String>,
    /// The entry.
    #[serde(flatten)]
    pub record: AuditRecord,
}

/// A value bound to a placeholder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Param {
    Text(String),
    Int(i64),
    /// An array (PostgreSQL only).
    Ints(Vec<i64>),
}

/// A statement and what its placeholders are bound to.
#[derive(Debug, Clone)]
pub(crate) struct Statement {
    pub text: String,
    pub params: Vec<Param>,
}

/// The SQL dialect: placeholders and the cluster's `relay` column differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    fn placeholder(self, n: usize) -> String {
        match self {
            Dialect::Sqlite => format!("?{n}"),
            Dialect::Postgres => format!("${n}"),
        }
    }

    fn columns(self) -> &'static str {
        match self {
            Dialect::Sqlite => "id, at, event, who, target, outcome, detail, device, operator",
            Dialect::Postgres => {
                "id, at, event, who, target, outcome, detail, device, operator, relay"
            }
        }
    }
}

impl AuditQuery {
    /// The filters as `AND`ed conditions, binding into `params`.
    fn conditions(&self, d: Dialect, params: &mut Vec<Param>) -> Vec<String> {
        let mut bind = |column: &str, op: &str, value: Param| {
            params.push(value);
            format!("{column} {op} {}", d.placeholder(params.len()))
        };
        let mut out = Vec::new();
        if let Some(v) = &self.device {
            out.push(bind("device", "=", Param::Text(v.clone())));
        }
        if let Some(v) = &self.operator {
            out.push(bind("operator", "=", Param::Text(v.clone())));
        }
        if let Some(v) = &self.event {
            out.push(bind("event", "=", Param::Text(v.clone())));
        }
        if let Some(t) = self.since {
            out.push(bind("at", ">=", Param::Int(t)));
        }
        if let Some(t) = self.until {
            out.push(bind("at", "<=", Param::Int(t)));
        }
        out
    }

    /// The newest `limit` matching entries, newest first (the caller turns them around).
    pub(crate) fn latest(&self, d: Dialect) -> Statement {
        let mut params = Vec::new();
        let conditions = self.conditions(d, &mut params);
        let filter = if conditions.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", conditions.join(" AND "))
        };
        params.push(Param::Int(i64::try_from(self.limit).unwrap_or(i64::MAX)));
        Statement {
            text: format!(
                "SELECT {} FROM audit{filter} ORDER BY at DESC, id DESC LIMIT {}",
                d.columns(),
                d.placeholder(params.len())
            ),
            params,
        }
    }

    /// The matching entries with ids in `after..=upto`, oldest first, at most `limit`: what
    /// following reads. The range goes by the primary key (on SQLite no other index may be
    /// taken for it: a device's index would read all its entries to find the few new ones).
    pub(crate) fn range(&self, d: Dialect, after: i64, upto: i64, limit: usize) -> Statement {
        let mut params = vec![Param::Int(after), Param::Int(upto)];
        let mut conditions = vec![
            format!("id > {}", d.placeholder(1)),
            format!("id <= {}", d.placeholder(2)),
        ];
        conditions.extend(self.conditions(d, &mut params));
        params.push(Param::Int(i64::try_from(limit).unwrap_or(i64::MAX)));
        let table = match d {
            Dialect::Sqlite => "audit NOT INDEXED",
            Dialect::Postgres => "audit",
        };
        Statement {
            text: format!(
                "SELECT {} FROM {table} WHERE {} ORDER BY id LIMIT {}",
                d.columns(),
                conditions.join(" AND "),
                d.placeholder(params.len())
            ),
            params,
        }
    }
}

/// The entries of these ids, in id order (what became of rows that were open).
pub(crate) fn by_ids(d: Dialect, ids: &[i64]) -> Statement {
    let (condition, params) = match d {
        Dialect::Sqlite => {
            let marks: Vec<String> = (1..=ids.len()).map(|n| d.placeholder(n)).collect();
            (
                format!("id IN ({})", marks.join(", ")),
                ids.iter().map(|i| Param::Int(*i)).collect(),
            )
        }
        Dialect::Postgres => ("id = ANY($1)".to_string(), vec![Param::Ints(ids.to_vec())]),
    };
    Statement {
        text: format!(
            "SELECT {} FROM audit WHERE {condition} ORDER BY id",
            d.columns()
        ),
        params,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_filter_is_bound_not_spliced() {
        let q = AuditQuery {
            device: Some("x'; DROP TABLE audit; --".into()),
            operator: Some("alice".into()),
            event: Some("stream".into()),
            since: Some(10),
            until: Some(20),
            limit: 5,
        };
        let s = q.latest(Dialect::Postgres);
        assert_eq!(
            s.text,
            "SELECT id, at, event, who, target, outcome, detail, device, operator, relay FROM audit \
             WHERE device = $1 AND operator = $2 AND event = $3 AND at >= $4 AND at <= $5 \
             ORDER BY at DESC, id DESC LIMIT $6"
        );
        assert_eq!(s.params.len(), 6);
        assert_eq!(s.params[0], Param::Text("x'; DROP TABLE audit; --".into()));
        let r = q.range(Dialect::Sqlite, 7, 9, 100);
        assert!(
            r.text
                .contains("FROM audit NOT INDEXED WHERE id > ?1 AND id <= ?2 AND device = ?3"),
            "{}",
            r.text
        );
        assert_eq!(r.params.last(), Some(&Param::Int(100)));
        let all = AuditQuery {
            limit: 3,
            ..AuditQuery::default()
        }
        .latest(Dialect::Sqlite);
        assert!(
            all.text
                .ends_with("FROM audit ORDER BY at DESC, id DESC LIMIT ?1"),
            "{}",
            all.text
        );
    }
}
