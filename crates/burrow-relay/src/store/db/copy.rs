//! The copy of the registry a relay on PostgreSQL keeps for an outage: taken, and answered
//! from.

use super::*;

impl Db {
    /// Reads the registry again into the copy answered from while the database is
    /// unreachable (a relay on PostgreSQL does this when the registry changes, and every
    /// minute).
    pub async fn refresh_snapshot(&self) -> Result<(), StoreError> {
        let Backend::Postgres { snapshot, .. } = &self.inner.backend else {
            return Ok(());
        };
        let pg = self.pg_reads().await?;
        let copy = Snapshot::new(
            pg.device_key_pairs().await?,
            pg.devices().await?,
            pg.operators().await?,
            pg.password_hashes().await?,
            pg.live_relays().await?,
        );
        *snapshot.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(copy));
        Ok(())
    }

    /// Answers from the registry copy (if there is one young enough) without trying the
    /// database: what `copy` says, and how old the copy is.
    pub(crate) fn read_copy<T>(
        &self,
        copy: impl FnOnce(&Snapshot) -> T,
    ) -> Option<(T, std::time::Duration)> {
        let Backend::Postgres {
            snapshot,
            snapshot_max_age,
            ..
        } = &self.inner.backend
        else {
            return None;
        };
        let snap = snapshot.read().unwrap_or_else(|e| e.into_inner()).clone()?;
        let age = snap.age();
        (age <= *snapshot_max_age).then(|| (copy(&snap), age))
    }

    /// An answer from the registry copy, if there is one young enough.
    pub(super) fn answer_from_copy<T>(
        &self,
        copy: impl FnOnce(&Snapshot) -> Option<T>,
    ) -> Option<T> {
        let Backend::Postgres {
            snapshot,
            snapshot_max_age,
            said,
            ..
        } = &self.inner.backend
        else {
            return None;
        };
        let snap = snapshot.read().unwrap_or_else(|e| e.into_inner()).clone()?;
        let age = snap.age();
        if age > *snapshot_max_age {
            return None;
        }
        let mut said = said.lock().unwrap_or_else(|e| e.into_inner());
        if said.is_none_or(|t| t.elapsed() > std::time::Duration::from_secs(60)) {
            *said = Some(std::time::Instant::now());
            tracing::warn!(
                "the database cannot be reached: answering from the copy of the registry taken {:.0} s ago",
                age.as_secs_f64()
            );
        }
        copy(&snap)
    }
}
