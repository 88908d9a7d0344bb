//! Registry changes (the CLI and tests): each one transaction on either backend.

use super::*;

impl Db {
    /// Adds a device with its first keys.
    pub async fn add_device(&self, name: &str, keys: &[PublicKey]) -> Result<(), StoreError> {
        let (n, k) = (name.to_string(), keys.to_vec());
        self.change(
            move |s| s.add_device(&n, &k),
            async |p| p.add_device(name, keys).await,
        )
        .await
    }

    /// Adds keys to an existing device.
    pub async fn add_device_keys(&self, name: &str, keys: &[PublicKey]) -> Result<(), StoreError> {
        let (n, k) = (name.to_string(), keys.to_vec());
        self.change(
            move |s| s.add_device_keys(&n, &k),
            async |p| p.add_device_keys(name, keys).await,
        )
        .await
    }

    /// Removes a device and everything it owns.
    pub async fn remove_device(&self, name: &str) -> Result<(), StoreError> {
        let n = name.to_string();
        self.change(
            move |s| s.remove_device(&n),
            async |p| p.remove_device(name).await,
        )
        .await
    }

    /// Removes one key of a device (the last one is kept).
    pub async fn remove_device_key(&self, name: &str, fingerprint: &str) -> Result<(), StoreError> {
        let (n, f) = (name.to_string(), fingerprint.to_string());
        self.change(
            move |s| s.remove_device_key(&n, &f),
            async |p| p.remove_device_key(name, fingerprint).await,
        )
        .await
    }

    /// Lets `device` open `host:port` on the relay side.
    pub async fn allow_connect(
        &self,
        device: &str,
        host: &str,
        port: u16,
    ) -> Result<(), StoreError> {
        let (d, h) = (device.to_string(), host.to_string());
        self.change(
            move |s| s.allow_connect(&d, &h, port),
            async |p| p.allow_connect(device, host, port).await,
        )
        .await
    }

    /// Removes an `allow-connect` rule; false if there was none.
    pub async fn disallow_connect(
        &self,
        device: &str,
        host: &str,
        port: u16,
    ) -> Result<bool, StoreError> {
        let (d, h) = (device.to_string(), host.to_string());
        self.change(
            move |s| s.disallow_connect(&d, &h, port),
            async |p| p.disallow_connect(device, host, port).await,
        )
        .await
    }

    /// Lets `device` hold a real listener on `addr:port`.
    pub async fn allow_listen(
        &self,
        device: &str,
        addr: &str,
        port: u16,
    ) -> Result<(), StoreError> {
        let (d, a) = (device.to_string(), addr.to_string());
        self.change(
            move |s| s.allow_listen(&d, &a, port),
            async |p| p.allow_listen(device, addr, port).await,
        )
        .await
    }

    /// Removes an `allow-listen` rule; false if there was none.
    pub async fn disallow_listen(
        &self,
        device: &str,
        addr: &str,
        port: u16,
    ) -> Result<bool, StoreError> {
        let (d, a) = (device.to_string(), addr.to_string());
        self.change(
            move |s| s.disallow_listen(&d, &a, port),
            async |p| p.disallow_listen(device, addr, port).await,
        )
        .await
    }

    /// Adds an operator.
    pub async fn add_operator(
        &self,
        name: &str,
        keys: &[PublicKey],
        password_hash: Option<&str>,
        allow: &[String],
        console_only: bool,
    ) -> Result<(), StoreError> {
        let (n, k, h, a) = (
            name.to_string(),
            keys.to_vec(),
            password_hash.map(str::to_string),
            allow.to_vec(),
        );
        self.change(
            move |s| s.add_operator(&n, &k, h.as_deref(), &a, console_only),
            async |p| {
                p.add_operator(name, keys, password_hash, allow, console_only)
                    .await
            },
        )
        .await
    }

    /// Removes an operator.
    pub async fn remove_operator(&self, name: &str) -> Result<(), StoreError> {
        let n = name.to_string();
        self.change(
            move |s| s.remove_operator(&n),
            async |p| p.remove_operator(name).await,
        )
        .await
    }

    /// Changes an operator's `--allow` patterns and/or console-only flag.
    pub async fn set_operator_policy(
        &self,
        name: &str,
        allow: Option<&[String]>,
        console_only: Option<bool>,
    ) -> Result<(), StoreError> {
        let (n, a) = (name.to_string(), allow.map(<[String]>::to_vec));
        self.change(
            move |s| s.set_operator_policy(&n, a.as_deref(), console_only),
            async |p| p.set_operator_policy(name, allow, console_only).await,
        )
        .await
    }

    /// Sets an operator's role and/or TOTP secret (`Some(None)` removes the secret).
    pub async fn set_operator_web(
        &self,
        name: &str,
        role: Option<crate::store::Role>,
        totp_secret: Option<Option<&str>>,
    ) -> Result<(), StoreError> {
        let (n, t) = (name.to_string(), totp_secret.map(|t| t.map(str::to_string)));
        self.change(
            move |s| s.set_operator_web(&n, role, t.as_ref().map(|t| t.as_deref())),
            async |p| p.set_operator_web(name, role, totp_secret).await,
        )
        .await
    }

    /// Lifts a password lock; false if the operator was not locked.
    pub async fn unlock_operator(&self, name: &str) -> Result<bool, StoreError> {
        let n = name.to_string();
        self.change(
            move |s| s.unlock_operator(&n),
            async |p| p.unlock_operator(name).await,
        )
        .await
    }

    /// Sets or clears an operator's password (never its last credential).
    pub async fn set_operator_password(
        &self,
        name: &str,
        hash: Option<&str>,
    ) -> Result<(), StoreError> {
        let (n, h) = (name.to_string(), hash.map(str::to_string));
        self.change(
            move |s| s.set_operator_password(&n, h.as_deref()),
            async |p| p.set_operator_password(name, hash).await,
        )
        .await
    }

    /// Adds keys to an existing operator.
    pub async fn add_operator_keys(
        &self,
        name: &str,
        keys: &[PublicKey],
    ) -> Result<(), StoreError> {
        let (n, k) = (name.to_string(), keys.to_vec());
        self.change(
            move |s| s.add_operator_keys(&n, &k),
            async |p| p.add_operator_keys(name, keys).await,
        )
        .await
    }
}
