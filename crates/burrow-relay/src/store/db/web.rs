//! The web console's logins on either backend (see [`crate::store::web`]).

use super::*;
use crate::store::web::{WebKind, WebLogin};

impl Db {
    /// Stores a login under `hash`.
    pub async fn web_put(
        &self,
        kind: WebKind,
        hash: &str,
        login: &WebLogin,
    ) -> Result<(), StoreError> {
        let (h, l) = (hash.to_string(), login.clone());
        self.read(
            move |s| s.web_put(kind, &h, &l),
            async |p| p.web_put(kind, hash, login).await,
            |_| None,
        )
        .await
    }

    /// The login of `kind` under `hash`, if it has not expired.
    pub async fn web_get(&self, kind: WebKind, hash: &str) -> Result<Option<WebLogin>, StoreError> {
        let (h, now) = (hash.to_string(), super::super::now());
        self.read(
            move |s| s.web_get(kind, &h, now),
            async |p| p.web_get(kind, hash, now).await,
            |_| None,
        )
        .await
    }

    /// Uses up the login of `kind` under `hash`; returns it if it had not expired.
    pub async fn web_take(
        &self,
        kind: WebKind,
        hash: &str,
    ) -> Result<Option<WebLogin>, StoreError> {
        let (h, now) = (hash.to_string(), super::super::now());
        self.read(
            move |s| s.web_take(kind, &h, now),
            async |p| p.web_take(kind, hash, now).await,
            |_| None,
        )
        .await
    }

    /// Ends the login under `hash`.
    pub async fn web_end(&self, hash: &str) -> Result<(), StoreError> {
        let h = hash.to_string();
        self.read(
            move |s| s.web_end(&h),
            async |p| p.web_end(hash).await,
            |_| None,
        )
        .await
    }

    /// Ends every login of `operator`.
    pub async fn web_end_operator(&self, operator: &str) -> Result<(), StoreError> {
        let o = operator.to_string();
        self.read(
            move |s| s.web_end_operator(&o),
            async |p| p.web_end_operator(operator).await,
            |_| None,
        )
        .await
    }

    /// Deletes expired logins; returns how many of `kind` are left.
    pub async fn web_prune(&self, kind: WebKind) -> Result<u64, StoreError> {
        let now = super::super::now();
        self.read(
            move |s| s.web_prune(kind, now),
            async |p| p.web_prune(kind, now).await,
            |_| None,
        )
        .await
    }
}
