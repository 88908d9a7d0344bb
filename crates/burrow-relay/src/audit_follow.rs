//! `relay audit --follow`: the entries matching a query as they are written, by this relay or,
//! in a cluster, by any relay of it (the CLI and the web console follow the same way).
//!
//! Following polls the entries past the last id read, by the primary key. On SQLite one writer
//! commits at a time, so ids become visible in order. In PostgreSQL several relays write at
//! once: an id is handed out when a row is inserted and becomes visible when its transaction
//! commits, so a smaller id can appear after a larger one was read. The ids of the last
//! [`SETTLE`] are therefore read again at each poll, and what was already given out is not
//! given again.
//!
//! What runs (a stream, a console attach) is written when it starts, with outcome `open`, and
//! completed when it ends: such an entry is given out when it appears and once more when it
//! ends, with how.

use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use crate::store::{AuditEntry, AuditQuery, Db, StoreError, now};

/// The outcome of an entry still running.
const OPEN: &str = "open";

/// How long a PostgreSQL transaction may take from inserting its audit rows to committing
/// them and still have them followed: a relay commits its queued writes in batches of
/// milliseconds.
pub const SETTLE: Duration = Duration::from_secs(10);

/// Entries read in one query while following.
const PAGE: usize = 1000;

/// Open entries watched for their end; past this many the oldest are no longer watched.
const MAX_WATCHED: usize = 10_000;

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
    /// Entries given out while open, to give out again when they end.
    open: BTreeSet<i64>,
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
            open: BTreeSet::new(),
        };
        follow.watch(&shown);
        let present = follow.read(db, top).await?;
        follow.given.extend(present.iter().map(|e| e.id));
        follow.marks.push_back((Instant::now(), top));
        follow.advance();
        Ok((shown, follow))
    }

    /// The matching entries written since the last call (or the start), oldest first.
    /// An entry given out open is given out again, once, when it has ended.
    pub async fn poll(&mut self, db: &Db) -> Result<Vec<AuditEntry>, StoreError> {
        let mut out = Vec::new();
        if !self.open.is_empty() {
            let watched: Vec<i64> = self.open.iter().copied().collect();
            let now = db.audit_entries(&watched).await?;
            // Those gone (retention) end nothing more; those ended are given out again.
            let still: BTreeSet<i64> = now
                .iter()
                .filter(|e| e.record.outcome == OPEN)
                .map(|e| e.id)
                .collect();
            self.open = still;
            out.extend(now.into_iter().filter(|e| e.record.outcome != OPEN));
        }
        let top = db.audit_max_id().await?;
        let fresh: Vec<AuditEntry> = self
            .read(db, top)
            .await?
            .into_iter()
            .filter(|e| !self.given.contains(&e.id))
            .collect();
        self.given.extend(fresh.iter().map(|e| e.id));
        self.watch(&fresh);
        self.marks.push_back((Instant::now(), top));
        self.advance();
        out.extend(fresh);
        Ok(out)
    }

    /// Watches the open entries among `entries` for their end.
    fn watch(&mut self, entries: &[AuditEntry]) {
        self.open.extend(
            entries
                .iter()
                .filter(|e| e.record.outcome == OPEN)
                .map(|e| e.id),
        );
        while self.open.len() > MAX_WATCHED {
            self.open.pop_first();
        }
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
