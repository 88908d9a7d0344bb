//! Admission of unauthenticated connections: a global cap and a per-source-IP cap.
//!
//! A permit is held from TCP accept until authentication succeeds or the connection ends, so a
//! flood of half-open handshakes cannot exhaust the relay while authenticated devices are not
//! counted at all.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Caps on connections that have not authenticated yet.
pub struct Gate {
    global: Arc<Semaphore>,
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
    per_ip_max: usize,
}

/// Held by an unauthenticated connection; dropping it frees its place.
pub struct Permit {
    _global: OwnedSemaphorePermit,
    ip: IpAddr,
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Too many unauthenticated connections in total.
    Global,
    /// Too many unauthenticated connections from this address.
    PerIp,
}

impl Gate {
    /// A gate admitting `global` unauthenticated connections, `per_ip` from one address.
    pub fn new(global: usize, per_ip: usize) -> Self {
        Gate {
            global: Arc::new(Semaphore::new(global)),
            per_ip: Arc::default(),
            per_ip_max: per_ip,
        }
    }

    /// Admits a connection from `ip`, or says why not.
    pub fn admit(&self, ip: IpAddr) -> Result<Permit, Refused> {
        let global = self
            .global
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refused::Global)?;
        let mut map = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let count = map.entry(ip).or_insert(0);
        if *count >= self.per_ip_max {
            return Err(Refused::PerIp);
        }
        *count += 1;
        Ok(Permit {
            _global: global,
            ip,
            per_ip: self.per_ip.clone(),
        })
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut map = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = map.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_global_and_per_ip() {
        let gate = Gate::new(3, 2);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let p1 = gate.admit(a).unwrap();
        let _p2 = gate.admit(a).unwrap();
        assert_eq!(gate.admit(a).err(), Some(Refused::PerIp));
        let _p3 = gate.admit(b).unwrap();
        assert_eq!(gate.admit(b).err(), Some(Refused::Global));
        drop(p1);
        assert!(gate.admit(a).is_ok());
    }
}
