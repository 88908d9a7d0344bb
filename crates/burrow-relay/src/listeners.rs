//! Real TCP listeners on the relay, granted per device and port by `allow-listen`.
//!
//! A listener belongs to a device name and the session that asked for it. On takeover it passes
//! to the new session without being closed and bound again (no window in which the port is
//! free or, worse, still bound by a dying session).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use burrow_io::splice::{Progress, buffered_halves, splice_halves_until};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::Relay;
use crate::audit::{Measure, stream_summary};
use crate::registry::DeviceSession;
use crate::stream_end::{Party, Side, classify, other_was_sending};

struct Entry {
    device: String,
    session: u64,
    stop: CancellationToken,
}

/// Listeners by (address, port).
#[derive(Default)]
pub(crate) struct Listeners {
    map: Mutex<HashMap<(String, u16), Entry>>,
}

impl Listeners {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<(String, u16), Entry>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes sure `addr:port` listens for `dev`, binding it if needed.
    pub(crate) async fn ensure(
        &self,
        relay: &Arc<Relay>,
        addr: &str,
        port: u16,
        dev: &DeviceSession,
    ) -> std::io::Result<()> {
        let key = (addr.to_string(), port);
        if let Some(entry) = self.map().get_mut(&key) {
            if entry.device == dev.name {
                entry.session = dev.id;
                return Ok(());
            }
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("held by device {}", entry.device),
            ));
        }
        let listener = TcpListener::bind((addr, port)).await?;
        let stop = CancellationToken::new();
        self.map().insert(
            key,
            Entry {
                device: dev.name.clone(),
                session: dev.id,
                stop: stop.clone(),
            },
        );
        tracing::info!(device = %dev.name, "listening on {addr}:{port} for device {}", dev.name);
        relay
            .tracker
            .spawn(serve(relay.clone(), listener, dev.name.clone(), port, stop));
        Ok(())
    }

    /// Hands the listeners of session `from` to session `to` (takeover).
    pub(crate) fn transfer(&self, from: u64, to: u64) {
        for entry in self.map().values_mut() {
            if entry.session == from {
                entry.session = to;
            }
        }
    }

    /// Closes the listeners still owned by `session`.
    pub(crate) fn release(&self, session: u64) {
        self.map().retain(|_, e| {
            let keep = e.session != session;
            if !keep {
                e.stop.cancel();
            }
            keep
        });
    }

    /// Closes the listeners whose `allow-listen` rule is gone (`allowed(device, addr, port)`).
    /// The rules are read without holding the map, so accepts and takeovers never wait on
    /// the database.
    pub(crate) fn retain_allowed(&self, allowed: impl Fn(&str, &str, u16) -> bool) {
        let held: Vec<((String, u16), String)> = self
            .map()
            .iter()
            .map(|(key, e)| (key.clone(), e.device.clone()))
            .collect();
        for ((addr, port), device) in held {
            if allowed(&device, &addr, port) {
                continue;
            }
            let key = (addr, port);
            let mut map = self.map();
            if map.get(&key).is_some_and(|e| e.device == device)
                && let Some(e) = map.remove(&key)
            {
                tracing::info!(device = %device, "allow-listen {}:{port} removed; listener closed", key.0);
                e.stop.cancel();
            }
        }
    }

    /// Closes the listener of `device` on `port`.
    pub(crate) fn close(&self, device: &str, port: u16) {
        self.map().retain(|(_, p), e| {
            let keep = !(*p == port && e.device == device);
            if !keep {
                e.stop.cancel();
            }
            keep
        });
    }
}

async fn serve(
    relay: Arc<Relay>,
    listener: TcpListener,
    device: String,
    port: u16,
    stop: CancellationToken,
) {
    // Connections at once through one listener: anyone who can reach the port can open them.
    let cap = relay.config.max_listener_connections;
    let slots = Arc::new(tokio::sync::Semaphore::new(cap));
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("accept on port {port} for device {device} failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(
                device = %device,
                "listener on port {port} holds {cap} connections; refused {peer}"
            );
            drop(tcp);
            continue;
        };
        let relay2 = relay.clone();
        let device = device.clone();
        relay.tracker.spawn(async move {
            let _slot = slot;
            let target = format!("{device}:{port}");
            let who = format!("listener {peer}");
            let opened = crate::operator::open_endpoint(
                &relay2,
                &device,
                port,
                &peer.ip().to_string(),
                u32::from(peer.port()),
                crate::operator::Asker::Operator,
            )
            .await;
            let (dev, channel) = match opened {
                Ok(o) => o,
                Err(r) => {
                    relay2
                        .audit
                        .record("stream", &who, &target, r.outcome(), &r.reason);
                    return;
                }
            };
            let started = Instant::now();
            let progress = Arc::new(Progress::default());
            let measure = Measure::Stream {
                progress: progress.clone(),
                a_is_device: false,
            };
            let row = relay2
                .audit
                .open("stream", &who, &target, "", measure)
                .await;
            let _ = tcp.set_nodelay(true);
            relay2.metrics.stream_opened();
            let (mut tcp, mut channel) = (tcp, channel);
            let result = splice_halves_until(
                buffered_halves(&mut tcp),
                channel.halves(),
                std::future::pending(),
                &progress,
            )
            .await;
            let t = progress.now();
            let lasted = started.elapsed();
            let sending = other_was_sending(&result, &mut tcp, &mut channel).await;
            let ending = classify(
                &result,
                &Side::Tcp(Party::Operator),
                &Side::Device(&dev),
                relay2.stopping(),
                sending,
            );
            relay2
                .metrics
                .stream_closed(t.a_to_b, t.b_to_a, ending.outcome);
            let detail = stream_summary(t.a_to_b, t.b_to_a, lasted, &ending);
            // Closed after the row is completed: a client that saw the close finds it audited.
            row.close(ending.outcome, &detail);
            drop((tcp, channel));
        });
    }
}
