//! The fleet on either backend: join tokens, enrollment, approval, labels, quarantined keys,
//! relay addresses and imports.

use burrow_proto::labels::Labels;

use super::*;
use crate::store::fleet::{ImportDevice, NewToken, Plan, Quarantine, RelayAddress, TokenRecord};

impl Db {
    /// Stores a new join token.
    pub async fn create_token(&self, token: &NewToken) -> Result<(), StoreError> {
        let t = token.clone();
        self.change(
            move |s| s.create_token(&t),
            async |p| p.create_token(token).await,
        )
        .await
    }

    /// Every join token, newest first.
    pub async fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.read(|s| s.tokens(), async |p| p.tokens().await, |_| None)
            .await
    }

    /// One token and the hash of its secret.
    pub async fn token(&self, id: &str) -> Result<Option<(TokenRecord, String)>, StoreError> {
        let i = id.to_string();
        self.read(move |s| s.token(&i), async |p| p.token(id).await, |_| None)
            .await
    }

    /// Revokes a token; false if it was revoked already.
    pub async fn revoke_token(&self, id: &str) -> Result<bool, StoreError> {
        let i = id.to_string();
        self.change(
            move |s| s.revoke_token(&i),
            async |p| p.revoke_token(id).await,
        )
        .await
    }

    /// Enrolls `name` with `key` through token `id` (one transaction); the inner error is the
    /// refusal in words for the agent.
    pub async fn enroll(
        &self,
        id: &str,
        name: &str,
        key: &PublicKey,
    ) -> Result<Result<(Plan, TokenRecord), String>, StoreError> {
        let (i, n, k) = (id.to_string(), name.to_string(), key.clone());
        self.change(
            move |s| s.enroll(&i, &n, &k),
            async |p| p.enroll(id, name, key).await,
        )
        .await
    }

    /// Approves a pending device; false if it was not pending.
    pub async fn approve_device(&self, name: &str) -> Result<bool, StoreError> {
        let n = name.to_string();
        self.change(
            move |s| s.approve_device(&n),
            async |p| p.approve_device(name).await,
        )
        .await
    }

    /// Removes a device that waits for approval.
    pub async fn reject_device(&self, name: &str) -> Result<(), StoreError> {
        let n = name.to_string();
        self.change(
            move |s| s.reject_device(&n),
            async |p| p.reject_device(name).await,
        )
        .await
    }

    /// Sets and removes labels of a device; returns its labels now.
    pub async fn set_labels(
        &self,
        name: &str,
        set: &Labels,
        remove: &[String],
    ) -> Result<Labels, StoreError> {
        let (n, l, r) = (name.to_string(), set.clone(), remove.to_vec());
        self.change(
            move |s| s.set_labels(&n, &l, &r),
            async |p| p.set_labels(name, set, remove).await,
        )
        .await
    }

    /// A device's labels (empty for a device that does not exist).
    pub async fn device_labels(&self, name: &str) -> Result<Labels, StoreError> {
        let n = name.to_string();
        self.read(
            move |s| s.device_labels(&n),
            async |p| p.device_labels(name).await,
            |c| Some(c.device(name).map(|d| d.labels.clone()).unwrap_or_default()),
        )
        .await
    }

    /// Records a quarantined key (or which session keeps it).
    pub async fn quarantine_key(&self, q: &Quarantine) -> Result<(), StoreError> {
        let q2 = q.clone();
        self.change(
            move |s| s.quarantine_key(&q2),
            async |p| p.quarantine_key(q).await,
        )
        .await
    }

    /// Notes which session holds a quarantined key now.
    pub async fn keep_quarantined(
        &self,
        device: &str,
        fingerprint: &str,
        relay: &str,
        session: u64,
        instance: &str,
    ) -> Result<(), StoreError> {
        let (d, f, r, i) = (
            device.to_string(),
            fingerprint.to_string(),
            relay.to_string(),
            instance.to_string(),
        );
        self.change(
            move |s| s.keep_quarantined(&d, &f, &r, session, &i),
            async |p| {
                p.keep_quarantined(device, fingerprint, relay, session, instance)
                    .await
            },
        )
        .await
    }

    /// Lifts the quarantine of a device's keys; returns how many it held.
    pub async fn unquarantine(&self, name: &str) -> Result<usize, StoreError> {
        let n = name.to_string();
        self.change(
            move |s| s.unquarantine(&n),
            async |p| p.unquarantine(name).await,
        )
        .await
    }

    /// Every quarantined key.
    pub async fn quarantines(&self) -> Result<Vec<Quarantine>, StoreError> {
        self.read(
            |s| s.quarantines(),
            async |p| p.quarantines().await,
            |_| None,
        )
        .await
    }

    /// Records this relay's public address and host key, for join strings.
    pub async fn record_relay_address(&self, a: &RelayAddress) -> Result<(), StoreError> {
        let a2 = a.clone();
        self.change(
            move |s| s.record_relay_address(&a2),
            async |p| p.record_relay_address(a).await,
        )
        .await
    }

    /// Every relay's public address and host key.
    pub async fn relay_addresses(&self) -> Result<Vec<RelayAddress>, StoreError> {
        self.read(
            |s| s.relay_addresses(),
            async |p| p.relay_addresses().await,
            |_| None,
        )
        .await
    }

    /// Registers many devices in one transaction, each whole or refused with the reason.
    pub async fn import_devices(
        &self,
        devices: &[ImportDevice],
    ) -> Result<Vec<Result<(), String>>, StoreError> {
        let d = devices.to_vec();
        self.change(
            move |s| s.import_devices(&d),
            async |p| p.import_devices(devices).await,
        )
        .await
    }
}
