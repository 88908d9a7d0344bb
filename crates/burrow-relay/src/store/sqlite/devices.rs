//! Devices, their keys and rules, and the online mirror the CLI lists.

use super::*;

impl Store {
    /// Adds a device with its first keys.
    pub fn add_device(&self, name: &str, keys: &[PublicKey]) -> Result<(), StoreError> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sql("adding a device"))?;
            if operator_exists(&tx, name)? {
                return Err(StoreError::Conflict(format!(
                    "{name:?} is already an operator name; devices and operators share one namespace"
                )));
            }
            let inserted = tx
                .execute(
                    "INSERT OR IGNORE INTO devices (name, created) VALUES (?1, ?2)",
                    params![name, now()],
                )
                .map_err(sql("adding a device"))?;
            if inserted == 0 {
                return Err(StoreError::Conflict(format!(
                    "device {name:?} already exists; add another key with `burrow relay device add-key {name} --pubkey FILE`"
                )));
            }
            insert_keys(&tx, "device_keys", "device", name, keys)?;
            tx.commit().map_err(sql("adding a device"))
        })
    }

    /// Adds many devices with the same keys in one transaction (loading a simulated fleet for
    /// the bench: one key for all of them, which `add_device` refuses); names that exist
    /// already are left as they are.
    pub fn add_devices_bulk(&self, names: &[String], keys: &[PublicKey]) -> Result<(), StoreError> {
        self.with(|c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql("adding devices"))?;
            for name in names {
                tx.prepare_cached("INSERT OR IGNORE INTO devices (name, created) VALUES (?1, ?2)")
                    .and_then(|mut s| s.execute(params![name, now()]))
                    .map_err(sql("adding devices"))?;
                insert_key_rows(&tx, "device_keys", "device", name, keys)?;
            }
            tx.commit().map_err(sql("adding devices"))
        })
    }

    /// Adds keys to an existing device.
    pub fn add_device_keys(&self, name: &str, keys: &[PublicKey]) -> Result<(), StoreError> {
        self.with(|c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql("adding a device key"))?;
            if !device_exists(&tx, name)? {
                return Err(StoreError::NoDevice(name.into()));
            }
            insert_keys(&tx, "device_keys", "device", name, keys)?;
            tx.commit().map_err(sql("adding a device key"))
        })
    }

    /// Removes a device and everything it owns.
    pub fn remove_device(&self, name: &str) -> Result<(), StoreError> {
        self.with(|c| {
            let n = c
                .execute("DELETE FROM devices WHERE name = ?1", [name])
                .map_err(sql("removing a device"))?;
            if n == 0 {
                return Err(StoreError::NoDevice(name.into()));
            }
            Ok(())
        })
    }

    /// Removes one key of a device (by its `SHA256:` fingerprint); an online session that
    /// authenticated with it is cut. The last key is kept: remove the device instead.
    pub fn remove_device_key(&self, name: &str, fingerprint: &str) -> Result<(), StoreError> {
        self.with(|c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql("removing a device key"))?;
            if !device_exists(&tx, name)? {
                return Err(StoreError::NoDevice(name.into()));
            }
            let keys: Vec<String> = {
                let mut stmt = tx
                    .prepare("SELECT fingerprint FROM device_keys WHERE device = ?1")
                    .map_err(sql("removing a device key"))?;
                stmt.query_map([name], |r| r.get(0))
                    .map_err(sql("removing a device key"))?
                    .collect::<Result<_, _>>()
                    .map_err(sql("removing a device key"))?
            };
            if !keys.iter().any(|k| k == fingerprint) {
                return Err(StoreError::Conflict(format!(
                    "device {name:?} has no key {fingerprint} (its keys: {}; see `burrow relay device ls`)",
                    keys.join(", ")
                )));
            }
            if keys.len() == 1 {
                return Err(StoreError::Conflict(format!(
                    "{fingerprint} is the only key of device {name:?}; add another first (`burrow relay device add-key`) or remove the device (`burrow relay device rm {name}`)"
                )));
            }
            tx.execute(
                "DELETE FROM device_keys WHERE device = ?1 AND fingerprint = ?2",
                params![name, fingerprint],
            )
            .map_err(sql("removing a device key"))?;
            tx.commit().map_err(sql("removing a device key"))
        })
    }

    /// Removes an `allow-connect` rule; false if there was none.
    pub fn disallow_connect(
        &self,
        device: &str,
        host: &str,
        port: u16,
    ) -> Result<bool, StoreError> {
        self.with(|c| {
            if !device_exists(c, device)? {
                return Err(StoreError::NoDevice(device.into()));
            }
            c.execute(
                "DELETE FROM device_allow_connect WHERE device = ?1 AND host = ?2 AND port = ?3",
                params![device, host, port],
            )
            .map(|n| n > 0)
            .map_err(sql("removing an allow-connect rule"))
        })
    }

    /// Removes an `allow-listen` rule; false if there was none.
    pub fn disallow_listen(&self, device: &str, addr: &str, port: u16) -> Result<bool, StoreError> {
        self.with(|c| {
            if !device_exists(c, device)? {
                return Err(StoreError::NoDevice(device.into()));
            }
            c.execute(
                "DELETE FROM device_allow_listen WHERE device = ?1 AND addr = ?2 AND port = ?3",
                params![device, addr, port],
            )
            .map(|n| n > 0)
            .map_err(sql("removing an allow-listen rule"))
        })
    }

    /// Whether `key` is one of `device`'s keys.
    pub fn device_has_key(&self, device: &str, fingerprint: &str) -> Result<bool, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT 1 FROM device_keys WHERE device = ?1 AND fingerprint = ?2",
                params![device, fingerprint],
                |_| Ok(()),
            )
            .optional()
            .map(|r| r.is_some())
            .map_err(sql("checking a device key"))
        })
    }

    /// Whether a device of this name exists.
    pub fn device_exists(&self, name: &str) -> Result<bool, StoreError> {
        self.with(|c| device_exists(c, name))
    }

    /// Lets `device` open `host:port` on the relay side.
    pub fn allow_connect(&self, device: &str, host: &str, port: u16) -> Result<(), StoreError> {
        self.with(|c| {
            if !device_exists(c, device)? {
                return Err(StoreError::NoDevice(device.into()));
            }
            c.execute(
                "INSERT OR IGNORE INTO device_allow_connect (device, host, port) VALUES (?1, ?2, ?3)",
                params![device, host, port],
            )
            .map_err(sql("adding an allow-connect rule"))?;
            Ok(())
        })
    }

    /// Whether `device` may open `host:port`.
    pub fn may_connect(&self, device: &str, host: &str, port: u16) -> Result<bool, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT 1 FROM device_allow_connect WHERE device = ?1 AND host = ?2 AND port = ?3",
                params![device, host, port],
                |_| Ok(()),
            )
            .optional()
            .map(|r| r.is_some())
            .map_err(sql("checking an allow-connect rule"))
        })
    }

    /// Lets `device` hold a real listener on `addr:port`.
    pub fn allow_listen(&self, device: &str, addr: &str, port: u16) -> Result<(), StoreError> {
        self.with(|c| {
            if !device_exists(c, device)? {
                return Err(StoreError::NoDevice(device.into()));
            }
            let owner: Option<String> = c
                .query_row(
                    "SELECT device FROM device_allow_listen WHERE port = ?1 AND (addr = ?2 OR addr = '0.0.0.0' OR ?2 = '0.0.0.0')",
                    params![port, addr],
                    |r| r.get(0),
                )
                .optional()
                .map_err(sql("checking allow-listen rules"))?;
            match owner {
                Some(o) if o == device => Ok(()),
                Some(o) => Err(StoreError::Conflict(format!(
                    "port {port} is already allowed for device {o:?}; one listening port belongs to one device"
                ))),
                None => {
                    c.execute(
                        "INSERT INTO device_allow_listen (device, addr, port) VALUES (?1, ?2, ?3)",
                        params![device, addr, port],
                    )
                    .map_err(sql("adding an allow-listen rule"))?;
                    Ok(())
                }
            }
        })
    }

    /// The listen address allowed for `device` on `port`, if any.
    pub fn listen_addr(&self, device: &str, port: u16) -> Result<Option<String>, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT addr FROM device_allow_listen WHERE device = ?1 AND port = ?2",
                params![device, port],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql("reading allow-listen rules"))
        })
    }

    /// All devices, sorted by name: seven queries however many devices there are.
    pub fn devices(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        self.with(|c| {
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT d.name, d.last_seen, o.device IS NOT NULL, d.pending, {} FROM devices d
                     LEFT JOIN online o ON o.device = d.name {} ORDER BY d.name",
                    crate::store::health::LISTED_HEALTH,
                    crate::store::health::listing_join("?1"),
                ))
                .map_err(sql("listing devices"))?;
            let since = crate::store::health::reconnect_window_start();
            let rows = stmt
                .query_map([since], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, Option<i64>>(1)?,
                        r.get::<_, bool>(2)?,
                        r.get::<_, bool>(3)?,
                        health::listed(r, 4)?,
                    ))
                })
                .map_err(sql("listing devices"))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(sql("listing devices"))?;
            let mut keys = grouped(c, "SELECT device, fingerprint FROM device_keys ORDER BY device, fingerprint")?;
            let mut endpoints = grouped(c, "SELECT device, port FROM endpoints ORDER BY device, port")?;
            let mut connect = grouped(c, "SELECT device, host || ':' || port FROM device_allow_connect ORDER BY device, host, port")?;
            let mut listen = grouped(c, "SELECT device, addr || ':' || port FROM device_allow_listen ORDER BY device, port")?;
            let mut labels = grouped(c, "SELECT device, key || '=' || value FROM device_labels ORDER BY device, key")?;
            let mut quarantined = grouped(c, "SELECT device, fingerprint FROM quarantine ORDER BY device, fingerprint")?;
            let now = now();
            Ok(rows
                .into_iter()
                .map(|(name, last_seen, online, pending, health)| DeviceRecord {
                    // An online device is seen now, not when its session started.
                    last_seen: if online { Some(now) } else { last_seen },
                    online,
                    fingerprints: keys.remove(&name).unwrap_or_default(),
                    endpoints: endpoints
                        .remove(&name)
                        .unwrap_or_default()
                        .iter()
                        .filter_map(|p| p.parse().ok())
                        .collect(),
                    allow_connect: connect.remove(&name).unwrap_or_default(),
                    allow_listen: listen.remove(&name).unwrap_or_default(),
                    relay: None,
                    pending,
                    labels: super::super::fleet_labels(labels.remove(&name)),
                    quarantined: quarantined.remove(&name).unwrap_or_default(),
                    health,
                    name,
                })
                .collect())
        })
    }

    /// Last time `device` connected or disconnected.
    pub fn last_seen(&self, device: &str) -> Result<Option<i64>, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT last_seen FROM devices WHERE name = ?1",
                [device],
                |r| r.get::<_, Option<i64>>(0),
            )
            .optional()
            .map(Option::flatten)
            .map_err(sql("reading last seen"))
        })
    }

    // ----- online mirror -----

    /// Records that `device` came online from `peer`.
    pub fn set_online(&self, device: &str, peer: &str) -> Result<(), StoreError> {
        self.apply_single(&Write::Online {
            device: device.into(),
            peer: peer.into(),
            session: 0,
            instance: String::new(),
            key: String::new(),
            agent: String::new(),
        })
        .map(|_| ())
    }

    /// Records that `device` went offline.
    pub fn set_offline(&self, device: &str) -> Result<(), StoreError> {
        self.apply_single(&Write::Offline {
            device: device.into(),
            session: 0,
            reason: String::new(),
            detail: String::new(),
        })
        .map(|_| ())
    }

    /// Mirrors an endpoint added or removed.
    pub fn set_endpoint(&self, device: &str, port: u16, present: bool) -> Result<(), StoreError> {
        self.apply_single(&Write::Endpoint {
            device: device.into(),
            port,
            bind: String::new(),
            present,
        })
        .map(|_| ())
    }
}
