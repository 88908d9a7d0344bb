//! Reads of the registry: one query per question, listings in a fixed number of queries
//! whatever the fleet size.

use super::*;

impl Pg {
    /// A counter that moves whenever the registry changes.
    pub async fn registry_version(&self) -> Result<i64, StoreError> {
        let row = self
            .client
            .query_one("SELECT registry_version FROM meta", &[])
            .await
            .map_err(pg("reading the registry version"))?;
        Ok(row.get(0))
    }

    /// Whose key `fingerprint` is when `name` logs in with it.
    pub async fn key_owner(
        &self,
        name: &str,
        fingerprint: &str,
    ) -> Result<Option<Principal>, StoreError> {
        let row = self
            .client
            .query_opt(
                "SELECT 'device', d.pending,
                        EXISTS (SELECT 1 FROM quarantine q WHERE q.device = k.device AND q.fingerprint = k.fingerprint)
                   FROM device_keys k JOIN devices d ON d.name = k.device
                  WHERE k.device = $1 AND k.fingerprint = $2
                 UNION ALL
                 SELECT 'operator', false, false FROM operator_keys WHERE operator = $1 AND fingerprint = $2
                 LIMIT 1",
                &[&name, &fingerprint],
            )
            .await
            .map_err(pg("checking a key"))?;
        Ok(row.map(|r| {
            if r.get::<_, &str>(0) == "device" {
                Principal::Device {
                    pending: r.get(1),
                    quarantined: r.get(2),
                }
            } else {
                Principal::Operator
            }
        }))
    }

    /// Who holds the key `fingerprint`: `("device" | "operator", name)`, if anyone.
    pub async fn key_holder(
        &self,
        fingerprint: &str,
    ) -> Result<Option<(String, String)>, StoreError> {
        let row = self
            .client
            .query_opt(
                "SELECT 'device', device FROM device_keys WHERE fingerprint = $1
                 UNION ALL
                 SELECT 'operator', operator FROM operator_keys WHERE fingerprint = $1
                 LIMIT 1",
                &[&fingerprint],
            )
            .await
            .map_err(pg("looking up who holds a key"))?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    /// Every (device, key fingerprint) pair.
    pub async fn device_key_pairs(&self) -> Result<Vec<(String, String)>, StoreError> {
        let rows = self
            .client
            .query("SELECT device, fingerprint FROM device_keys", &[])
            .await
            .map_err(pg("reading device keys"))?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Whether a device of this name exists.
    pub async fn device_exists(&self, name: &str) -> Result<bool, StoreError> {
        let row = self
            .client
            .query_opt("SELECT 1 FROM devices WHERE name = $1", &[&name])
            .await
            .map_err(pg("looking up a device"))?;
        Ok(row.is_some())
    }

    /// Whether `device` may open `host:port` on the relay side.
    pub async fn may_connect(
        &self,
        device: &str,
        host: &str,
        port: u16,
    ) -> Result<bool, StoreError> {
        let row = self
            .client
            .query_opt(
                "SELECT 1 FROM device_allow_connect WHERE device = $1 AND host = $2 AND port = $3",
                &[&device, &host, &i32::from(port)],
            )
            .await
            .map_err(pg("checking an allow-connect rule"))?;
        Ok(row.is_some())
    }

    /// The listen address allowed for `device` on `port`, if any.
    pub async fn listen_addr(&self, device: &str, port: u16) -> Result<Option<String>, StoreError> {
        let row = self
            .client
            .query_opt(
                "SELECT addr FROM device_allow_listen WHERE device = $1 AND port = $2",
                &[&device, &i32::from(port)],
            )
            .await
            .map_err(pg("reading allow-listen rules"))?;
        Ok(row.map(|r| r.get(0)))
    }

    /// All devices, sorted by name, with the relay holding each: seven queries.
    pub async fn devices(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        let now_ms = now_ms();
        let since = crate::store::health::reconnect_window_start();
        let rows = self
            .client
            .query(
                &format!(
                    "SELECT d.name, d.last_seen,
                        (SELECT string_agg(o.relay, ',' ORDER BY o.since DESC)
                           FROM online o JOIN relays r ON r.id = o.relay AND r.lease_until > $1
                          WHERE o.device = d.name),
                        d.pending, {}
                   FROM devices d {} ORDER BY d.name",
                    crate::store::health::LISTED_HEALTH,
                    crate::store::health::listing_join("$2"),
                ),
                &[&now_ms, &since],
            )
            .await
            .map_err(pg("listing devices"))?;
        let mut keys = self
            .grouped("SELECT device, fingerprint FROM device_keys ORDER BY device, fingerprint")
            .await?;
        let mut endpoints = self
            .grouped_live(
                "SELECT DISTINCT e.device, e.port::TEXT FROM endpoints e
                   JOIN online o ON o.device = e.device AND o.relay = e.relay AND o.session = e.session
                   JOIN relays r ON r.id = e.relay AND r.lease_until > $1
                  ORDER BY 1, 2",
                now_ms,
            )
            .await?;
        let mut connect = self
            .grouped("SELECT device, host || ':' || port FROM device_allow_connect ORDER BY device, host, port")
            .await?;
        let mut listen = self
            .grouped(
                "SELECT device, addr || ':' || port FROM device_allow_listen ORDER BY device, port",
            )
            .await?;
        let mut labels = self
            .grouped("SELECT device, key || '=' || value FROM device_labels ORDER BY device, key")
            .await?;
        let mut quarantined = self
            .grouped("SELECT device, fingerprint FROM quarantine ORDER BY device, fingerprint")
            .await?;
        let now = now();
        Ok(rows
            .into_iter()
            .map(|r| {
                let name: String = r.get(0);
                let last_seen: Option<i64> = r.get(1);
                let relays: Option<String> = r.get(2);
                let online = relays.is_some();
                let health = super::health::listed(&r, 4);
                DeviceRecord {
                    last_seen: if online { Some(now) } else { last_seen },
                    online,
                    fingerprints: keys.remove(&name).unwrap_or_default(),
                    endpoints: {
                        let mut ports: Vec<u16> = endpoints
                            .remove(&name)
                            .unwrap_or_default()
                            .iter()
                            .filter_map(|p| p.parse().ok())
                            .collect();
                        ports.sort_unstable();
                        ports.dedup();
                        ports
                    },
                    allow_connect: connect.remove(&name).unwrap_or_default(),
                    allow_listen: listen.remove(&name).unwrap_or_default(),
                    relay: relays,
                    pending: r.get(3),
                    labels: crate::store::fleet_labels(labels.remove(&name)),
                    quarantined: quarantined.remove(&name).unwrap_or_default(),
                    health,
                    name,
                }
            })
            .collect())
    }

    async fn grouped(&self, query: &str) -> Result<HashMap<String, Vec<String>>, StoreError> {
        let rows = self
            .client
            .query(query, &[])
            .await
            .map_err(pg("reading a list"))?;
        Ok(group(rows))
    }

    async fn grouped_live(
        &self,
        query: &str,
        now_ms: i64,
    ) -> Result<HashMap<String, Vec<String>>, StoreError> {
        let rows = self
            .client
            .query(query, &[&now_ms])
            .await
            .map_err(pg("reading a list"))?;
        Ok(group(rows))
    }

    /// The consoles of devices held by other live relays: (device, console, relay), sorted.
    pub async fn consoles_elsewhere(&self) -> Result<Vec<(String, String, String)>, StoreError> {
        let rows = self
            .client
            .query(
                "SELECT DISTINCT e.device, substr(e.bind, length($3) + 1), e.relay FROM endpoints e
                   JOIN online o ON o.device = e.device AND o.relay = e.relay AND o.session = e.session
                   JOIN relays r ON r.id = e.relay AND r.lease_until > $1
                  WHERE e.relay <> $2 AND starts_with(e.bind, $3)
                  ORDER BY 1, 2, 3",
                &[&now_ms(), &self.relay, &crate::registry::CONSOLE_BIND_PREFIX],
            )
            .await
            .map_err(pg("listing consoles"))?;
        Ok(rows
            .into_iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }

    /// Last time `device` connected or disconnected.
    pub async fn last_seen(&self, device: &str) -> Result<Option<i64>, StoreError> {
        let row = self
            .client
            .query_opt("SELECT last_seen FROM devices WHERE name = $1", &[&device])
            .await
            .map_err(pg("reading last seen"))?;
        Ok(row.and_then(|r| r.get(0)))
    }

    /// One operator, if it exists.
    pub async fn operator(&self, name: &str) -> Result<Option<OperatorRecord>, StoreError> {
        Ok(self
            .operators_where("WHERE name = $1", &[&name])
            .await?
            .pop())
    }

    /// All operators, sorted by name: three queries.
    pub async fn operators(&self) -> Result<Vec<OperatorRecord>, StoreError> {
        self.operators_where("", &[]).await
    }

    async fn operators_where(
        &self,
        filter: &str,
        args: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<OperatorRecord>, StoreError> {
        let rows = self
            .client
            .query(
                &format!(
                    "SELECT name, password_hash IS NOT NULL, console_only, locked_until, role, totp_secret FROM operators {filter} ORDER BY name"
                ),
                args,
            )
            .await
            .map_err(pg("listing operators"))?;
        let owner = if filter.is_empty() {
            ""
        } else {
            "WHERE operator = $1"
        };
        let keys = self
            .client
            .query(
                &format!("SELECT operator, fingerprint FROM operator_keys {owner} ORDER BY operator, fingerprint"),
                args,
            )
            .await
            .map_err(pg("listing operators"))?;
        let allow = self
            .client
            .query(
                &format!("SELECT operator, pattern FROM operator_allow {owner} ORDER BY operator, pattern"),
                args,
            )
            .await
            .map_err(pg("listing operators"))?;
        let (mut keys, mut allow) = (group(keys), group(allow));
        let now = now();
        Ok(rows
            .into_iter()
            .map(|r| {
                let name: String = r.get(0);
                let locked: Option<i64> = r.get(3);
                let role: String = r.get(4);
                let totp_secret: Option<String> = r.get(5);
                OperatorRecord {
                    role: crate::store::Role::parse_stored(&role),
                    totp: totp_secret.is_some(),
                    totp_secret: totp_secret.map(burrow_proto::secret::Secret::new),
                    fingerprints: keys.remove(&name).unwrap_or_default(),
                    allow: allow.remove(&name).unwrap_or_default(),
                    has_password: r.get(1),
                    console_only: r.get(2),
                    locked_until: locked.filter(|t| *t > now),
                    name,
                }
            })
            .collect())
    }

    /// Every operator's password hash (for the registry copy).
    pub async fn password_hashes(&self) -> Result<Vec<(String, String)>, StoreError> {
        let rows = self
            .client
            .query(
                "SELECT name, password_hash FROM operators WHERE password_hash IS NOT NULL",
                &[],
            )
            .await
            .map_err(pg("reading password hashes"))?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// What a password login of `name` is checked against.
    pub async fn operator_password(&self, name: &str) -> Result<Option<PasswordLogin>, StoreError> {
        let row = self
            .client
            .query_opt(
                "SELECT password_hash, locked_until FROM operators WHERE name = $1",
                &[&name],
            )
            .await
            .map_err(pg("reading a password hash"))?;
        Ok(row.and_then(|r| {
            let hash: Option<String> = r.get(0);
            let locked: Option<i64> = r.get(1);
            hash.map(|hash| PasswordLogin {
                hash,
                locked_until: locked.filter(|t| *t > now()),
            })
        }))
    }

    /// The most recent `limit` audit entries, oldest first.
    pub async fn audit_tail(&self, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .client
            .query(
                "SELECT at, event, who, target, outcome, detail, device, operator FROM
                   (SELECT * FROM audit ORDER BY id DESC LIMIT $1) a ORDER BY id",
                &[&limit],
            )
            .await
            .map_err(pg("reading the audit log"))?;
        Ok(rows
            .iter()
            .map(|r| AuditRecord {
                at: r.get(0),
                event: r.get(1),
                who: r.get(2),
                target: r.get(3),
                outcome: r.get(4),
                detail: r.get(5),
                device: r.get(6),
                operator: r.get(7),
            })
            .collect())
    }

    /// Number of audit entries.
    pub async fn audit_len(&self) -> Result<u64, StoreError> {
        let row = self
            .client
            .query_one("SELECT COUNT(*) FROM audit", &[])
            .await
            .map_err(pg("counting audit entries"))?;
        Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
    }
}
