//! `relay audit --follow`: the entries matching a query as they are written, by this relay or,
//! in a cluster, by any relay of it (the CLI and the web console follow the same way).
//!
//! Following polls the entries past the last id read, by the primary key. On SQLite one writer
//! commits at a time, so ids become visible in order. In PostgreSQL several relays write at
//! once: an id is handed out when a row is inserted and becomes visible when its transaction
//! commits, so a smaller id can appear after a larger one was read. The ids of the last
//! [`SETTLE`] are therefore read again at each poll, and what was already given out is not
//! given again.

use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use crate::store::{AuditEntry, AuditQuery, Db, StoreError, now};

/// How long a PostgreSQL transaction may take from inserting its audit rows to committing
/// them and still have them followed: a relay commits its queued writes in batches of
/// milliseconds.
pub const SETTLE: Duration = Duration::from_secs(10);

/// Entries read in one query while following.
const PAGE: usize = 1000;

/// Follows the entries matching a query.
pub struct AuditFollow {
    query: AuditQuery,
    /// Every entry with an id up to here has been looked at for good.
    floor: i64,
    /// Entries above `floor` already given out.
    given: BTreeSet<i64>,
    /// The highest id at each poll of the last [`SETTLE`] (none kept on SQLite).
    marks: VecDeque<(Instant, i64)>,
    settle: Duration,
}

impl AuditFollow {
    /// Starts following `query`: returns the newest `query.limit` entries, to show first, and
    /// the follower, which gives out only entries written after them.
    pub async fn start(
        db: &Db,
        query: AuditQuery,
    ) -> Result<(Vec<AuditEntry>, AuditFollow), StoreError> {
        let settle = if db.postgres_url().is_some() {
            SETTLE
        } else {
            Duration::ZERO
        };
        let top = db.audit_max_id().await?;
        let shown = db.audit_query(&query).await?;
        // Rows of transactions still open now may have ids below `top`: start from the last
        // entry older than the settle time, and count what is there already as given.
        let floor = if settle.is_zero() {
            top
        } else {
            let before = AuditQuery {
                until: Some(now().saturating_sub(settle.as_secs() as i64)),
                limit: 1,
                ..AuditQuery::default()
            };
            db.audit_query(&before)
                .await?
                .first()
                .map_or(0, |e| e.id.min(top))
        };
        let mut follow = AuditFollow {
            query,
            floor,
            given: shown
                .iter()
                .map(|e| e.id)
                .filter(|id| *id > floor)
                .collect(),
            marks: VecDeque::new(),
            settle,
        };
        let present = follow.read(db, top).await?;
        follow.given.extend(present.iter().map(|e| e.id));
        follow.marks.push_back((Instant::now(), top));
        follow.advance();
        Ok((shown, follow))
    }

    /// The matching entries written since the last call (or the start), oldest first.
    pub async fn poll(&mut self, db: &Db) -> Result<Vec<AuditEntry>, StoreError> {
        let top = db.audit_max_id().await?;
        let fresh: Vec<AuditEntry> = self
            .read(db, top)
            .await?
            .into_iter()
            .filter(|e| !self.given.contains(&e.id))
            .collect();
        self.given.extend(fresh.iter().map(|e| e.id));
        self.marks.push_back((Instant::now(), top));
        self.advance();
        Ok(fresh)
    }

    /// The matching entries in `floor..=top`, a page at a time.
    async fn read(&self, db: &Db, top: i64) -> Result<Vec<AuditEntry>, StoreError> {
        let mut out = Vec::new();
        let mut after = self.floor;
        loop {
            let page = db.audit_range(&self.query, after, top, PAGE).await?;
            let full = page.len() == PAGE;
            after = page.last().map_or(after, |e| e.id);
            out.extend(page);
            if !full {
                return Ok(out);
            }
        }
    }

    /// Moves the floor to the highest id seen at least the settle time ago.
    fn advance(&mut self) {
        while let Some((at, id)) = self.marks.front().copied() {
            if at.elapsed() < self.settle {
                break;
            }
            self.floor = self.floor.max(id);
            self.marks.pop_front();
        }
        let floor = self.floor;
        self.given.retain(|id| *id > floor);
    }
}
