//! The web console's logins on SQLite (see [`crate::store::web`]).

use super::*;
use crate::store::web::{WebKind, WebLogin, login_of};

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<WebLogin> {
    Ok(login_of(
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
    ))
}

impl Store {
    /// Stores a login under `hash`.
    pub fn web_put(&self, kind: WebKind, hash: &str, login: &WebLogin) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO web_logins (id_hash, kind, operator, csrf, device, port, expires)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    hash,
                    kind.as_str(),
                    login.operator,
                    login.csrf,
                    login.scope.as_ref().map(|(d, _)| d.as_str()),
                    login.scope.as_ref().map(|(_, p)| i32::from(*p)),
                    login.expires
                ],
            )
            .map(|_| ())
            .map_err(sql("storing a web login"))
        })
    }

    /// The login of `kind` under `hash`, if it has not expired at `now`.
    pub fn web_get(
        &self,
        kind: WebKind,
        hash: &str,
        now: i64,
    ) -> Result<Option<WebLogin>, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT operator, csrf, device, port, expires FROM web_logins
                 WHERE id_hash = ?1 AND kind = ?2 AND expires > ?3",
                params![hash, kind.as_str(), now],
                row,
            )
            .optional()
            .map_err(sql("reading a web login"))
        })
    }

    /// Removes the login of `kind` under `hash` and returns it if it had not expired: a
    /// one-time login is used up whatever the answer.
    pub fn web_take(
        &self,
        kind: WebKind,
        hash: &str,
        now: i64,
    ) -> Result<Option<WebLogin>, StoreError> {
        self.with(|c| {
            let taken = c
                .query_row(
                    "DELETE FROM web_logins WHERE id_hash = ?1 AND kind = ?2
                     RETURNING operator, csrf, device, port, expires",
                    params![hash, kind.as_str()],
                    row,
                )
                .optional()
                .map_err(sql("using a web login"))?;
            Ok(taken.filter(|l| l.expires > now))
        })
    }

    /// Ends the login under `hash`.
    pub fn web_end(&self, hash: &str) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute("DELETE FROM web_logins WHERE id_hash = ?1", [hash])
                .map(|_| ())
                .map_err(sql("ending a web login"))
        })
    }

    /// Ends every login of `operator`.
    pub fn web_end_operator(&self, operator: &str) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute("DELETE FROM web_logins WHERE operator = ?1", [operator])
                .map(|_| ())
                .map_err(sql("ending an operator's web logins"))
        })
    }

    /// Deletes logins expired at `now`; returns how many of `kind` are left.
    pub fn web_prune(&self, kind: WebKind, now: i64) -> Result<u64, StoreError> {
        self.with(|c| {
            c.execute("DELETE FROM web_logins WHERE expires <= ?1", [now])
                .map_err(sql("pruning web logins"))?;
            c.query_row(
                "SELECT COUNT(*) FROM web_logins WHERE kind = ?1",
                [kind.as_str()],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| u64::try_from(n).unwrap_or(0))
            .map_err(sql("counting web logins"))
        })
    }
}
