//! The fleet as one operator may see it: one read model behind `ls`, the web console's pages
//! and their live updates, so that they never disagree.

use std::collections::HashMap;
use std::time::Instant;

use burrow_proto::labels::{Labels, allows, needs_labels};

use crate::Relay;
use crate::registry::Health;
use crate::store::{DeviceRecord, OperatorRecord};

/// One device as the fleet view shows it: its registry record (health and labels included),
/// its presence as this relay sees it now, and the consoles it serves.
#[derive(Debug, Clone)]
pub struct FleetRow {
    /// The device's record; `online` and `endpoints` are this relay's own view while it holds
    /// the session, the cluster's registry otherwise.
    pub device: DeviceRecord,
    /// Consoles served (known for sessions held by this relay).
    pub consoles: Vec<String>,
    /// Online but suspect: seconds since the device was last heard.
    pub silent_for: Option<u64>,
}

/// The devices `record`'s policy lets it see, by name or label, with their state now. A
/// removed operator (`None`) sees nothing. One registry read, whatever the fleet's size.
pub(crate) async fn view(relay: &Relay, record: Option<&OperatorRecord>) -> Vec<FleetRow> {
    let Some(record) = record else {
        return Vec::new();
    };
    let devices = relay.db.devices().await.unwrap_or_default();
    // In a cluster, the consoles of devices other relays hold (one query for all).
    let mut elsewhere = consoles_elsewhere(relay).await;
    let now = Instant::now();
    devices
        .into_iter()
        .filter(|d| allows(&record.allow, &d.name, &d.labels))
        .map(|mut d| {
            let live = relay.registry.get(&d.name);
            let silent_for = live
                .as_ref()
                .filter(|s| s.health(now) != Health::Fine)
                .map(|s| s.silence(now).as_secs());
            let mut consoles = elsewhere.remove(&d.name).unwrap_or_default();
            // Held here: this relay's own view; held elsewhere: the cluster's registry.
            if let Some(s) = &live {
                d.online = true;
                d.endpoints = s.ports();
                consoles = s.consoles();
            }
            consoles.sort();
            FleetRow {
                device: d,
                consoles,
                silent_for,
            }
        })
        .collect()
}

/// The consoles of devices other relays of the cluster hold, by device (none on one relay).
pub(crate) async fn consoles_elsewhere(relay: &Relay) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    if relay.cluster.is_some() {
        for (device, console, _) in relay.db.consoles_elsewhere().await.unwrap_or_default() {
            let list = out.entry(device).or_default();
            if !list.contains(&console) {
                list.push(console);
            }
        }
    }
    out
}

/// Who may see which device: an operator's policy with every device's labels read once
/// (only when the policy has a label selector), for pages that check many devices.
pub(crate) struct Visibility {
    allow: Vec<String>,
    labels: HashMap<String, Labels>,
}

impl Visibility {
    pub(crate) async fn of(relay: &Relay, record: &OperatorRecord) -> Visibility {
        let labels = if needs_labels(&record.allow) {
            relay
                .db
                .devices()
                .await
                .unwrap_or_default()
                .into_iter()
                .map(|d| (d.name, d.labels))
                .collect()
        } else {
            HashMap::new()
        };
        Visibility {
            allow: record.allow.clone(),
            labels,
        }
    }

    /// Whether the policy lets the operator see `device`.
    pub(crate) fn sees(&self, device: &str) -> bool {
        let none = Labels::new();
        allows(
            &self.allow,
            device,
            self.labels.get(device).unwrap_or(&none),
        )
    }
}

impl FleetRow {
    /// `pending` (waiting for approval), `online`, `silent` (keepalive overdue) or
    /// `offline`.
    pub fn state(&self) -> &'static str {
        match (self.device.pending, self.device.online, self.silent_for) {
            (true, _, _) => "pending",
            (false, true, Some(_)) => "silent",
            (false, true, None) => "online",
            (false, false, _) => "offline",
        }
    }

    /// Why it is not plainly online: how its last session ended, or how long it has been
    /// silent.
    pub fn reason(&self) -> String {
        match (self.state(), self.silent_for) {
            ("silent", Some(s)) => format!("not heard for {s} s"),
            ("offline", _) => self.device.health.reason.clone().unwrap_or_default(),
            _ => String::new(),
        }
    }
}
