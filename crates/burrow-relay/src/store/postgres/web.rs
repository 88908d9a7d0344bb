//! The web console's logins on PostgreSQL, shared by the relays of a cluster (see
//! [`crate::store::web`]).

use super::*;
use crate::store::web::{WebKind, WebLogin, login_of};

fn row(r: &tokio_postgres::Row) -> WebLogin {
    login_of(r.get(0), r.get(1), r.get(2), r.get(3), r.get(4))
}

impl Pg {
    /// Stores a login under `hash`.
    pub async fn web_put(
        &self,
        kind: WebKind,
        hash: &str,
        login: &WebLogin,
    ) -> Result<(), StoreError> {
        let device = login.scope.as_ref().map(|(d, _)| d.as_str());
        let port = login.scope.as_ref().map(|(_, p)| i32::from(*p));
        self.client
            .execute(
                "INSERT INTO web_logins (id_hash, kind, operator, csrf, device, port, expires)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[
                    &hash,
                    &kind.as_str(),
                    &login.operator,
                    &login.csrf,
                    &device,
                    &port,
                    &login.expires,
                ],
            )
            .await
            .map(|_| ())
            .map_err(pg("storing a web login"))
    }

    /// The login of `kind` under `hash`, if it has not expired at `now`.
    pub async fn web_get(
        &self,
        kind: WebKind,
        hash: &str,
        now: i64,
    ) -> Result<Option<WebLogin>, StoreError> {
        self.client
            .query_opt(
                "SELECT operator, csrf, device, port, expires FROM web_logins
                 WHERE id_hash = $1 AND kind = $2 AND expires > $3",
                &[&hash, &kind.as_str(), &now],
            )
            .await
            .map(|r| r.as_ref().map(row))
            .map_err(pg("reading a web login"))
    }

    /// Removes the login of `kind` under `hash` and returns it if it had not expired. One
    /// statement: of two relays redeeming the same link at once, one gets it.
    pub async fn web_take(
        &self,
        kind: WebKind,
        hash: &str,
        now: i64,
    ) -> Result<Option<WebLogin>, StoreError> {
        let taken = self
            .client
            .query_opt(
                "DELETE FROM web_logins WHERE id_hash = $1 AND kind = $2
                 RETURNING operator, csrf, device, port, expires",
                &[&hash, &kind.as_str()],
            )
            .await
            .map_err(pg("using a web login"))?;
        Ok(taken.as_ref().map(row).filter(|l| l.expires > now))
    }

    /// Ends the login under `hash`.
    pub async fn web_end(&self, hash: &str) -> Result<(), StoreError> {
        self.client
            .execute("DELETE FROM web_logins WHERE id_hash = $1", &[&hash])
            .await
            .map(|_| ())
            .map_err(pg("ending a web login"))
    }

    /// Ends every login of `operator`.
    pub async fn web_end_operator(&self, operator: &str) -> Result<(), StoreError> {
        self.client
            .execute("DELETE FROM web_logins WHERE operator = $1", &[&operator])
            .await
            .map(|_| ())
            .map_err(pg("ending an operator's web logins"))
    }

    /// Deletes logins expired at `now`; returns how many of `kind` are left.
    pub async fn web_prune(&self, kind: WebKind, now: i64) -> Result<u64, StoreError> {
        self.client
            .execute("DELETE FROM web_logins WHERE expires <= $1", &[&now])
            .await
            .map_err(pg("pruning web logins"))?;
        let n: i64 = self
            .client
            .query_one(
                "SELECT COUNT(*) FROM web_logins WHERE kind = $1",
                &[&kind.as_str()],
            )
            .await
            .map_err(pg("counting web logins"))?
            .get(0);
        Ok(u64::try_from(n).unwrap_or(0))
    }
}
