//! The relay's own rows (its lease, its sessions, what it left open) and the write queue's
//! batches, applied in one transaction.

use super::*;

impl Pg {
    /// Records this relay as alive until `lease_ms` from now, reachable for peer links at
    /// `peer_addr` with `host_key` (an OpenSSH public key line).
    pub async fn renew_lease(
        &self,
        peer_addr: &str,
        host_key: &str,
        lease: Duration,
    ) -> Result<(), StoreError> {
        let until = now_ms().saturating_add(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX));
        self.client
            .execute(
                "INSERT INTO relays (id, peer_addr, host_key, lease_until, started, checkpoint)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (id) DO UPDATE SET peer_addr = $2, host_key = $3, lease_until = $4,
                    checkpoint = $6",
                &[
                    &self.relay,
                    &peer_addr,
                    &host_key,
                    &until,
                    &now_ms(),
                    &now(),
                ],
            )
            .await
            .map_err(pg("renewing the relay's lease"))?;
        Ok(())
    }

    /// The relays whose lease runs: (id, peer address, host key line).
    pub async fn live_relays(&self) -> Result<Vec<(String, String, String)>, StoreError> {
        let rows = self
            .client
            .query(
                "SELECT id, peer_addr, host_key FROM relays WHERE lease_until > $1 ORDER BY id",
                &[&now_ms()],
            )
            .await
            .map_err(pg("reading the relays"))?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }

    /// Where `device` is online, newest session first: (relay, session) on live relays.
    pub async fn sessions_of(&self, device: &str) -> Result<Vec<(String, u64)>, StoreError> {
        let rows = self
            .client
            .query(
                "SELECT o.relay, o.session FROM online o
                   JOIN relays r ON r.id = o.relay AND r.lease_until > $2
                  WHERE o.device = $1 ORDER BY o.since DESC, o.session DESC",
                &[&device, &now_ms()],
            )
            .await
            .map_err(pg("looking up a device's sessions"))?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), u64::try_from(r.get::<_, i64>(1)).unwrap_or(0)))
            .collect())
    }

    /// The live relays holding a session of `device` from another agent process than
    /// `instance` (any session, when `instance` is empty: a stock client).
    pub async fn sessions_of_others(
        &self,
        device: &str,
        instance: &str,
    ) -> Result<Vec<String>, StoreError> {
        let rows = self
            .client
            .query(
                "SELECT DISTINCT o.relay FROM online o
                   JOIN relays r ON r.id = o.relay AND r.lease_until > $2
                  WHERE o.device = $1 AND ($3 = '' OR o.instance <> $3)",
                &[&device, &now_ms(), &instance],
            )
            .await
            .map_err(pg("looking up a device's sessions"))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Devices with a session on a live relay.
    pub async fn count_online(&self) -> Result<u64, StoreError> {
        let row = self
            .client
            .query_one(
                "SELECT COUNT(DISTINCT o.device) FROM online o
                   JOIN relays r ON r.id = o.relay AND r.lease_until > $1",
                &[&now_ms()],
            )
            .await
            .map_err(pg("counting devices online"))?;
        Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
    }

    /// At start: audit rows this relay left open are marked interrupted, and its old session
    /// rows are removed with an `offline` entry each. Returns how many rows.
    pub async fn interrupt_leftovers(&mut self) -> Result<usize, StoreError> {
        let relay = self.relay.clone();
        let tx = self
            .client
            .transaction()
            .await
            .map_err(pg("marking interrupted audit entries"))?;
        let doing = "marking interrupted audit entries";
        let last: i64 = tx
            .query_one(
                "SELECT GREATEST(
                    COALESCE((SELECT MAX(at) FROM audit WHERE relay = $1), 0),
                    COALESCE((SELECT checkpoint FROM relays WHERE id = $1), 0))",
                &[&relay],
            )
            .await
            .map_err(pg(doing))?
            .get(0);
        let why = crate::store::leftover_reason(last);
        let detaches = tx
            .execute(
                "INSERT INTO audit (at, event, who, target, outcome, detail, relay, device, operator)
                 SELECT $2, 'console-detach', who, target, 'interrupted', $3, $1, device, operator
                   FROM audit WHERE outcome = 'open' AND event = 'console-attach' AND relay = $1",
                &[&relay, &last, &why],
            )
            .await
            .map_err(pg(doing))?;
        let streams = tx
            .execute(
                "UPDATE audit SET outcome = 'interrupted', detail = detail || '; ' || $2
                 WHERE outcome = 'open' AND relay = $1",
                &[&relay, &why],
            )
            .await
            .map_err(pg(doing))?;
        let sessions = tx
            .execute(
                "INSERT INTO audit (at, event, who, target, outcome, detail, relay, device)
                 SELECT $2, 'offline', device, peer, 'interrupted', $3, $1, device
                   FROM online WHERE relay = $1",
                &[&relay, &last, &format!("the device session was up; {why}")],
            )
            .await
            .map_err(pg(doing))?;
        super::health::interrupted(&tx, &relay, last).await?;
        tx.execute("DELETE FROM online WHERE relay = $1", &[&relay])
            .await
            .map_err(pg("clearing the online table"))?;
        tx.execute("DELETE FROM endpoints WHERE relay = $1", &[&relay])
            .await
            .map_err(pg("clearing the online table"))?;
        tx.commit()
            .await
            .map_err(pg("marking interrupted audit entries"))?;
        Ok(
            usize::try_from(streams.saturating_add(sessions).saturating_add(detaches))
                .unwrap_or(usize::MAX),
        )
    }

    /// Deletes audit entries older than `before` and all but the newest `max_rows`.
    pub async fn prune_audit(&self, before: i64, max_rows: u64) -> Result<usize, StoreError> {
        let old = self
            .client
            .execute(
                "DELETE FROM audit WHERE at < $1 AND outcome != 'open'",
                &[&before],
            )
            .await
            .map_err(pg("pruning the audit log"))?;
        let keep = i64::try_from(max_rows).unwrap_or(i64::MAX);
        let excess = self
            .client
            .execute(
                "DELETE FROM audit WHERE outcome != 'open' AND id <= (
                     SELECT id FROM audit ORDER BY id DESC LIMIT 1 OFFSET $1)",
                &[&keep],
            )
            .await
            .map_err(pg("pruning the audit log"))?;
        Ok(usize::try_from(old.saturating_add(excess)).unwrap_or(usize::MAX))
    }

    /// Applies queued writes in one transaction; if it fails as a whole, each alone.
    pub async fn apply(&mut self, writes: &[&Write]) -> Vec<Result<Written, StoreError>> {
        let whole: Result<Vec<Written>, StoreError> = async {
            let tx = self
                .client
                .transaction()
                .await
                .map_err(pg("writing a batch"))?;
            let mut out = Vec::with_capacity(writes.len());
            for w in writes {
                out.push(apply_one(&tx, &self.relay, w).await?);
            }
            tx.commit().await.map_err(pg("writing a batch"))?;
            Ok(out)
        }
        .await;
        match whole {
            Ok(done) => done.into_iter().map(Ok).collect(),
            Err(e) if writes.len() <= 1 || self.client.is_closed() => {
                writes.iter().map(|_| Err(e.clone_shallow())).collect()
            }
            Err(_) => {
                let mut out = Vec::with_capacity(writes.len());
                for w in writes {
                    out.push(apply_one(&self.client, &self.relay, w).await);
                }
                out
            }
        }
    }
}

/// One queued write inside the writer's transaction (or alone).
async fn apply_one<C: tokio_postgres::GenericClient>(
    c: &C,
    relay: &str,
    w: &Write,
) -> Result<Written, StoreError> {
    const AUDIT: &str = "INSERT INTO audit (at, event, who, target, outcome, detail, relay, device, operator) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";
    match w {
        Write::Audit(r) => {
            c.execute(
                AUDIT,
                &[
                    &r.at,
                    &r.event,
                    &r.who,
                    &r.target,
                    &r.outcome,
                    &r.detail,
                    &relay,
                    &r.device,
                    &r.operator,
                ],
            )
            .await
            .map_err(pg("writing the audit log"))?;
            Ok(Written::Done)
        }
        Write::AuditOpen(r) => {
            let row = c
                .query_one(
                    &format!("{AUDIT} RETURNING id"),
                    &[
                        &r.at,
                        &r.event,
                        &r.who,
                        &r.target,
                        &r.outcome,
                        &r.detail,
                        &relay,
                        &r.device,
                        &r.operator,
                    ],
                )
                .await
                .map_err(pg("writing the audit log"))?;
            Ok(Written::Id(row.get(0)))
        }
        Write::AuditComplete {
            id,
            outcome,
            detail,
        } => {
            c.execute(
                "UPDATE audit SET outcome = $2, detail = $3 WHERE id = $1",
                &[id, outcome, detail],
            )
            .await
            .map_err(pg("completing an audit entry"))?;
            Ok(Written::Done)
        }
        Write::Online {
            device,
            peer,
            session,
            instance,
            key,
            agent,
        } => {
            let session_id = i64::try_from(*session).unwrap_or(i64::MAX);
            let now = now();
            c.execute(
                "INSERT INTO online (device, relay, session, instance, since, peer)
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                &[device, &relay, &session_id, instance, &now, peer],
            )
            .await
            .map_err(pg("recording a device online"))?;
            // Every relay hears of it at once: one holding an older session of the device
            // from another agent process cuts it (takeover across relays).
            let payload = format!("{device} {relay} {session} {instance} {key}");
            c.execute("SELECT pg_notify($1, $2)", &[&SESSION_CHANNEL, &payload])
                .await
                .map_err(pg("announcing a device session"))?;
            super::health::online(c, relay, device, session_id, instance, agent, now).await?;
            c.execute(
                "UPDATE devices SET last_seen = $2 WHERE name = $1",
                &[device, &now],
            )
            .await
            .map_err(pg("recording a device online"))?;
            Ok(Written::Done)
        }
        Write::Offline {
            device, session, ..
        } => {
            super::health::apply(c, w).await?;
            let session = i64::try_from(*session).unwrap_or(i64::MAX);
            c.execute(
                "DELETE FROM online WHERE device = $1 AND relay = $2 AND session = $3",
                &[device, &relay, &session],
            )
            .await
            .map_err(pg("recording a device offline"))?;
            c.execute(
                "DELETE FROM endpoints WHERE device = $1 AND relay = $2 AND session = $3",
                &[device, &relay, &session],
            )
            .await
            .map_err(pg("recording a device offline"))?;
            c.execute(
                "UPDATE devices SET last_seen = $2 WHERE name = $1",
                &[device, &now()],
            )
            .await
            .map_err(pg("recording a device offline"))?;
            Ok(Written::Done)
        }
        Write::Endpoint {
            device,
            port,
            bind,
            present,
        } => {
            let port = i32::from(*port);
            // The endpoint belongs to the device's newest session on this relay.
            let done = if *present {
                c.execute(
                    "INSERT INTO endpoints (device, relay, session, port, bind)
                     SELECT device, relay, session, $3, $4 FROM online WHERE device = $1 AND relay = $2
                     ORDER BY session DESC LIMIT 1 ON CONFLICT DO NOTHING",
                    &[device, &relay, &port, bind],
                )
                .await
            } else {
                c.execute(
                    "DELETE FROM endpoints WHERE device = $1 AND relay = $2 AND port = $3",
                    &[device, &relay, &port],
                )
                .await
            };
            done.map_err(pg("recording an endpoint"))?;
            Ok(Written::Done)
        }
        Write::AuditCheckpoint { id, detail } => {
            c.execute(
                "UPDATE audit SET detail = $2 WHERE id = $1 AND outcome = 'open'",
                &[id, detail],
            )
            .await
            .map_err(pg("checkpointing an audit entry"))?;
            Ok(Written::Done)
        }
        Write::Checkpoint { at } => {
            c.execute(
                "UPDATE relays SET checkpoint = $2 WHERE id = $1",
                &[&relay, at],
            )
            .await
            .map_err(pg("checkpointing"))?;
            Ok(Written::Done)
        }
        Write::LockOperator { name, until } => {
            c.execute(
                "UPDATE operators SET locked_until = $2 WHERE name = $1",
                &[name, until],
            )
            .await
            .map_err(pg("locking an operator"))?;
            Ok(Written::Done)
        }
        Write::Probe { .. } | Write::Health { .. } => {
            super::health::apply(c, w).await?;
            Ok(Written::Done)
        }
        // A relay on PostgreSQL ends its leftovers itself at start (Pg::interrupt_leftovers).
        Write::InterruptLeftovers | Write::Barrier => Ok(Written::Done),
    }
}
