//! Long-lived web connections (a console's WebSocket, a device UI's upgraded stream) held to
//! the login and the policy as they are now, as SSH sessions are: a logout, a removed operator,
//! a narrowed policy (by name or by the device's labels) or a changed role closes them.

use std::time::Duration;

use super::Web;
use crate::audit::Outcome;
use crate::store::Role;

/// How often an open connection is checked again.
const RECHECK_EVERY: Duration = Duration::from_secs(2);

/// What an open connection holds.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Holding {
    /// A console (viewers and console-only operators may keep one).
    Console,
    /// A stream to a device port (neither may).
    Stream,
}

/// Why the connection of session `id` (operator `operator`) to `device` must close now, if it
/// must. A read error closes nothing.
async fn revoked(
    web: &Web,
    id: &str,
    operator: &str,
    device: &str,
    holding: Holding,
) -> Option<String> {
    if !web.sessions.alive(id).await {
        return Some("the web session ended (logged out or expired)".into());
    }
    let record = match web.relay.db.operator(operator).await {
        Ok(Some(r)) => r,
        Ok(None) => return Some(format!("operator {operator} was removed")),
        Err(_) => return None,
    };
    if !crate::operator::may_reach(&web.relay, &record, device).await {
        return Some(format!("operator policy no longer allows device {device}"));
    }
    if holding == Holding::Stream && (record.console_only || record.role == Role::Viewer) {
        return Some(format!(
            "operator {operator} may no longer open streams (console-only or viewer)"
        ));
    }
    None
}

/// Waits until the connection must close; returns why, after auditing it (`revoke`).
pub(crate) async fn until_revoked(
    web: &Web,
    id: &str,
    operator: &str,
    device: &str,
    target: &str,
    holding: Holding,
) -> String {
    let mut tick = tokio::time::interval(RECHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Some(why) = revoked(web, id, operator, device, holding).await {
            web.relay.audit.record(
                "revoke",
                operator,
                target,
                Outcome::Ok,
                &format!("{why}; web connection closed"),
            );
            return why;
        }
    }
}
