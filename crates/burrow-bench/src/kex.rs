//! What one key exchange puts on the wire with each method burrow offers, counted between two
//! burrow-ssh transports in memory (SSH bytes both ways, KEXINIT to NEWKEYS, a rekey of an
//! established session): the post-quantum hybrids carry a KEM key and ciphertext beside the
//! X25519 values, and an idle device pays that once a week.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use burrow_ssh::kex::HostKey;
use burrow_ssh::transport::{Config, Role, Transport};

use crate::cellular::{IDLE_GROUP, Row};

/// The method two burrow ends (agent and relay) settle on: the first both offer.
pub fn default_method() -> &'static str {
    burrow_ssh::kex::METHODS[0]
}

fn config(role: Role, host: &Arc<HostKey>, kex: &str) -> Config {
    Config {
        role,
        software: "burrow_bench".into(),
        comment: None,
        kex: vec![kex.to_string()],
        ciphers: vec!["aes256-gcm@openssh.com".into()],
        host_key: (role == Role::Server).then(|| host.clone()),
        host_key_check: Some(Box::new(|_| true)),
        rekey_bytes: 1 << 30,
        rekey_time: Duration::from_secs(7 * 24 * 3600),
        ext_info: None,
        ..Default::default()
    }
}

/// Moves bytes both ways until both sides are quiet; the bytes each way.
fn pump(c: &mut Transport, s: &mut Transport) -> anyhow::Result<(usize, usize)> {
    let (mut up, mut down) = (0, 0);
    loop {
        let mut moved = false;
        while let Some(bytes) = c.poll_transmit() {
            moved = true;
            up += bytes.len();
            s.receive(&bytes).context("server")?;
        }
        while let Some(bytes) = s.poll_transmit() {
            moved = true;
            down += bytes.len();
            c.receive(&bytes).context("client")?;
        }
        if !moved {
            return Ok((up, down));
        }
    }
}

/// SSH bytes of one rekey with `method`, client to server and back.
fn rekey_bytes(method: &str) -> anyhow::Result<(usize, usize)> {
    let host = Arc::new(HostKey::from_seed(&[7; 32]).context("host key")?);
    let now = Instant::now();
    let mut c = Transport::new(config(Role::Client, &host, method), now);
    let mut s = Transport::new(config(Role::Server, &host, method), now);
    pump(&mut c, &mut s).with_context(|| format!("{method}: first exchange"))?;
    c.rekey();
    pump(&mut c, &mut s).with_context(|| format!("{method}: rekey"))
}

/// One row per method: the bytes of a rekey, both ways.
pub fn rows() -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for method in [
        "mlkem768x25519-sha256",
        "sntrup761x25519-sha512",
        "curve25519-sha256",
    ] {
        let (up, down) = rekey_bytes(method)?;
        let default = if method == default_method() {
            "; what burrow agent and relay use"
        } else {
            ""
        };
        rows.push(Row {
            group: IDLE_GROUP.into(),
            system: format!("burrow: one rekey, {method} (SSH bytes)"),
            value: (up + down) as f64,
            unit: "B",
            note: Some(format!("{up} B device to relay, {down} B back{default}")),
        });
    }
    Ok(rows)
}
