//! The audit trail's queries (`relay audit` filters and following) on PostgreSQL.

use super::*;
use crate::store::audit_query::{AuditEntry, AuditQuery, Dialect, Param, Statement, by_ids};

impl Pg {
    /// The newest entries matching `q`, oldest first.
    pub async fn audit_query(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        let mut rows = self.audit_rows(&q.latest(Dialect::Postgres)).await?;
        rows.reverse();
        Ok(rows)
    }

    /// The entries matching `q` with ids in `after..=upto`, oldest first, at most `limit`.
    pub async fn audit_range(
        &self,
        q: &AuditQuery,
        after: i64,
        upto: i64,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        self.audit_rows(&q.range(Dialect::Postgres, after, upto, limit))
            .await
    }

    /// The entries of these ids, in id order.
    pub async fn audit_entries(&self, ids: &[i64]) -> Result<Vec<AuditEntry>, StoreError> {
        self.audit_rows(&by_ids(Dialect::Postgres, ids)).await
    }

    /// PostgreSQL's plan for `q` (`EXPLAIN`): the newest entries, or with `follow` what
    /// following reads (the last hundred ids).
    pub async fn audit_plan(&self, q: &AuditQuery, follow: bool) -> Result<String, StoreError> {
        let stmt = if follow {
            let top = self.audit_max_id().await?;
            q.range(Dialect::Postgres, top.saturating_sub(100), top, 1000)
        } else {
            q.latest(Dialect::Postgres)
        };
        let params = bound(&stmt);
        let rows = self
            .client
            .query(&format!("EXPLAIN {}", stmt.text), &refs(&params))
            .await
            .map_err(pg("explaining an audit query"))?;
        Ok(rows
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>()
            .join("\n"))
    }

    async fn audit_rows(&self, stmt: &Statement) -> Result<Vec<AuditEntry>, StoreError> {
        let params = bound(stmt);
        let rows = self
            .client
            .query(&stmt.text, &refs(&params))
            .await
            .map_err(pg("reading the audit log"))?;
        Ok(rows
            .iter()
            .map(|r| AuditEntry {
                id: r.get(0),
                relay: Some(r.get::<_, String>(9)).filter(|s| !s.is_empty()),
                record: AuditRecord {
                    at: r.get(1),
                    event: r.get(2),
                    who: r.get(3),
                    target: r.get(4),
                    outcome: r.get(5),
                    detail: r.get(6),
                    device: r.get(7),
                    operator: r.get(8),
                },
            })
            .collect())
    }
}

type PgParam = Box<dyn tokio_postgres::types::ToSql + Sync + Send>;

fn bound(stmt: &Statement) -> Vec<PgParam> {
    stmt.params
        .iter()
        .map(|p| -> PgParam {
            match p {
                Param::Text(t) => Box::new(t.clone()),
                Param::Int(i) => Box::new(*i),
                Param::Ints(v) => Box::new(v.clone()),
            }
        })
        .collect()
}

fn refs(params: &[PgParam]) -> Vec<&(dyn tokio_postgres::types::ToSql + Sync)> {
    params
        .iter()
        .map(|p| p.as_ref() as &(dyn tokio_postgres::types::ToSql + Sync))
        .collect()
}
