//! Reads of the registry, on either backend (SQLite on the reader threads, PostgreSQL with
//! the last copy answering while it is unreachable).

use super::*;

impl Db {
    /// At start of a relay: what its previous run left open (streams, device sessions) is
    /// marked interrupted; returns how many rows.
    pub async fn interrupt_leftovers(&self) -> Result<usize, StoreError> {
        match &self.inner.backend {
            Backend::Postgres { url, relay, .. } => {
                let mut own = Pg::writer(url, relay).await?;
                own.interrupt_leftovers().await
            }
            // Through the write queue, first in line: on a full disk it waits there for space
            // like every other write, and the relay serves meanwhile.
            Backend::Sqlite { .. } => match self.write(Write::InterruptLeftovers).await? {
                Written::Rows(n) => Ok(n),
                _ => Ok(0),
            },
        }
    }

    /// A counter that moves whenever the registry (devices, keys, operators, rules) changes.
    pub async fn registry_version(&self) -> Result<i64, StoreError> {
        self.read(
            |s| s.registry_version(),
            async |p| p.registry_version().await,
            |_| None,
        )
        .await
    }

    /// Whose key `fingerprint` is when `name` logs in with it.
    pub async fn key_owner(
        &self,
        name: &str,
        fingerprint: &str,
    ) -> Result<Option<Principal>, StoreError> {
        let (n, f) = (name.to_string(), fingerprint.to_string());
        self.read(
            move |s| s.key_owner(&n, &f),
            async |p| p.key_owner(name, fingerprint).await,
            |c| Some(c.key_owner(name, fingerprint)),
        )
        .await
    }

    /// Who holds the key `fingerprint`: `("device" | "operator", name)`, if anyone (not known
    /// from the registry copy while the database is away).
    pub async fn key_holder(
        &self,
        fingerprint: &str,
    ) -> Result<Option<(String, String)>, StoreError> {
        let f = fingerprint.to_string();
        self.read(
            move |s| s.key_holder(&f),
            async |p| p.key_holder(fingerprint).await,
            |_| None,
        )
        .await
    }

    /// Every (device, key fingerprint) pair.
    pub async fn device_key_pairs(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.read(
            |s| s.device_key_pairs(),
            async |p| p.device_key_pairs().await,
            |c| Some(c.device_key_pairs()),
        )
        .await
    }

    /// Whether a device of this name exists.
    pub async fn device_exists(&self, name: &str) -> Result<bool, StoreError> {
        let n = name.to_string();
        self.read(
            move |s| s.device_exists(&n),
            async |p| p.device_exists(name).await,
            |c| Some(c.device(name).is_some()),
        )
        .await
    }

    /// Whether `device` may open `host:port` on the relay side.
    pub async fn may_connect(
        &self,
        device: &str,
        host: &str,
        port: u16,
    ) -> Result<bool, StoreError> {
        let (d, h) = (device.to_string(), host.to_string());
        self.read(
            move |s| s.may_connect(&d, &h, port),
            async |p| p.may_connect(device, host, port).await,
            |c| Some(c.may_connect(device, host, port)),
        )
        .await
    }

    /// The listen address allowed for `device` on `port`, if any.
    pub async fn listen_addr(&self, device: &str, port: u16) -> Result<Option<String>, StoreError> {
        let d = device.to_string();
        self.read(
            move |s| s.listen_addr(&d, port),
            async |p| p.listen_addr(device, port).await,
            |c| Some(c.listen_addr(device, port)),
        )
        .await
    }

    /// All devices, sorted by name (a fixed number of queries).
    pub async fn devices(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        self.read(
            |s| s.devices(),
            async |p| p.devices().await,
            |c| Some(c.devices()),
        )
        .await
    }

    /// The consoles of devices held by other relays of a cluster: (device, console, relay),
    /// sorted; none on SQLite (one relay) or while the database is out of reach.
    pub async fn consoles_elsewhere(&self) -> Result<Vec<(String, String, String)>, StoreError> {
        if self.postgres_url().is_none() {
            return Ok(Vec::new());
        }
        self.read(
            |_| Ok(Vec::new()),
            async |p| p.consoles_elsewhere().await,
            |_| Some(Vec::new()),
        )
        .await
    }

    /// Last time `device` connected or disconnected.
    pub async fn last_seen(&self, device: &str) -> Result<Option<i64>, StoreError> {
        let d = device.to_string();
        self.read(
            move |s| s.last_seen(&d),
            async |p| p.last_seen(device).await,
            |c| Some(c.device(device).and_then(|d| d.last_seen)),
        )
        .await
    }

    /// One operator, if it exists.
    pub async fn operator(&self, name: &str) -> Result<Option<OperatorRecord>, StoreError> {
        let n = name.to_string();
        self.read(
            move |s| s.operator(&n),
            async |p| p.operator(name).await,
            |c| Some(c.operator(name)),
        )
        .await
    }

    /// All operators, sorted by name (a fixed number of queries).
    pub async fn operators(&self) -> Result<Vec<OperatorRecord>, StoreError> {
        self.read(
            |s| s.operators(),
            async |p| p.operators().await,
            |c| Some(c.operators()),
        )
        .await
    }

    /// What a password login of `name` is checked against.
    pub async fn operator_password(&self, name: &str) -> Result<Option<PasswordLogin>, StoreError> {
        let n = name.to_string();
        self.read(
            move |s| s.operator_password(&n),
            async |p| p.operator_password(name).await,
            |c| Some(c.operator_password(name)),
        )
        .await
    }

    /// Applies the audit retention; returns how many entries were deleted.
    pub async fn prune_audit(&self, before: i64, max_rows: u64) -> Result<usize, StoreError> {
        self.read(
            move |s| s.prune_audit(before, max_rows),
            async |p| p.prune_audit(before, max_rows).await,
            |_| None,
        )
        .await
    }

    /// The most recent `limit` audit entries, oldest first.
    pub async fn audit_tail(&self, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        self.read(
            move |s| s.audit_tail(limit),
            async |p| p.audit_tail(limit).await,
            |_| None,
        )
        .await
    }

    /// The newest entries matching `q`, oldest first: `relay audit` and the web console's
    /// audit search (one indexed query; see [`AuditQuery`]).
    pub async fn audit_query(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        let q2 = q.clone();
        self.read(
            move |s| s.audit_query(&q2),
            async |p| p.audit_query(q).await,
            |_| None,
        )
        .await
    }

    /// The entries matching `q` with ids in `after..=upto`, oldest first, at most `limit`
    /// (what [`crate::audit_follow::AuditFollow`] reads).
    pub async fn audit_range(
        &self,
        q: &AuditQuery,
        after: i64,
        upto: i64,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let q2 = q.clone();
        self.read(
            move |s| s.audit_range(&q2, after, upto, limit),
            async |p| p.audit_range(q, after, upto, limit).await,
            |_| None,
        )
        .await
    }

    /// The entries of these ids, in id order (what became of entries that were open).
    pub async fn audit_entries(&self, ids: &[i64]) -> Result<Vec<AuditEntry>, StoreError> {
        let ids2 = ids.to_vec();
        self.read(
            move |s| s.audit_entries(&ids2),
            async |p| p.audit_entries(ids).await,
            |_| None,
        )
        .await
    }

    /// The database's plan for `q` (SQLite's `EXPLAIN QUERY PLAN`, PostgreSQL's `EXPLAIN`):
    /// the newest entries, or with `follow` what following reads (the last hundred ids). For
    /// checking that each filter takes an index.
    pub async fn audit_plan(&self, q: &AuditQuery, follow: bool) -> Result<String, StoreError> {
        let q2 = q.clone();
        self.read(
            move |s| s.audit_plan(&q2, follow),
            async |p| p.audit_plan(q, follow).await,
            |_| None,
        )
        .await
    }
}
