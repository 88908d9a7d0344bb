//! How a stream ended, told apart: ended normally, closed early by one side (a reader that had
//! enough, an operator who quit), or cut by a fault (a connection lost, a session given up or
//! replaced, the relay stopping). The audit, the log and the metrics use the same answer.
//!
//! The byte stream alone cannot tell these apart: a channel that closes without EOF looks the
//! same whether its owner chose to close it or its connection died. So each end is looked at
//! with what the relay knows about it besides its bytes: whether its SSH connection ended,
//! whether the peer said goodbye (DISCONNECT) or simply vanished, whether the relay itself gave
//! the session up.

use std::time::Duration;

use burrow_io::splice::{End, Gone, SpliceError};
use burrow_ssh::driver::Handle;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::audit::Outcome;
use crate::registry::DeviceSession;

/// One end of a stream as the relay knows it.
pub(crate) enum Side<'a> {
    /// A channel on an operator's connection.
    Operator(&'a Handle),
    /// A channel on a device's session.
    Device(&'a DeviceSession),
    /// A channel over the peer link to the relay of the cluster holding the device; what that
    /// relay said about the stream's end, if it said anything.
    PeerRelay {
        id: &'a str,
        handle: &'a Handle,
        said: Option<String>,
    },
    /// A TCP connection: who is on the other side of it.
    Tcp(Party),
}

/// Who is at an end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Party {
    Operator,
    Device,
    /// A relay-side target a device opened (`allow-connect`).
    Target,
}

impl Party {
    fn name(self) -> &'static str {
        match self {
            Party::Operator => "the operator",
            Party::Device => "the device",
            Party::Target => "the target",
        }
    }

    fn closed_early(self) -> Outcome {
        match self {
            Party::Operator => Outcome::ClosedByOperator,
            Party::Device => Outcome::ClosedByDevice,
            Party::Target => Outcome::ClosedByTarget,
        }
    }
}

impl Side<'_> {
    fn party(&self) -> Party {
        match self {
            Side::Operator(_) => Party::Operator,
            Side::Device(_) | Side::PeerRelay { .. } => Party::Device,
            Side::Tcp(p) => *p,
        }
    }
}

/// How a stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ending {
    pub(crate) outcome: Outcome,
    /// Why, for anything but an end both sides reached (`None` then).
    pub(crate) why: Option<String>,
}

impl Ending {
    /// Whether a fault cut the stream (rather than someone ending it).
    pub(crate) fn is_fault(&self) -> bool {
        self.outcome == Outcome::Interrupted
    }
}

/// What went on at one end that went away: a choice of whoever is there, or a fault.
enum Went {
    Chose(String),
    Fault(String),
}

/// How long the other side is watched, after one side left before the other's stream was
/// complete, to tell whether it was still sending. An operator leaving a login (`ssh -J`)
/// goes a moment before the device's sshd closes its side; a reader that had enough leaves a
/// device in the middle of sending.
const STILL_SENDING_GRACE: Duration = Duration::from_secs(2);

/// Whether the side that did not go away was still sending when the other went: data queued
/// or arriving within [`STILL_SENDING_GRACE`] (read and thrown away: there is nobody to give
/// it to). An end that failed on write was being sent to, by definition.
pub(crate) async fn other_was_sending<A, B>(
    result: &Result<(), SpliceError>,
    a: &mut A,
    b: &mut B,
) -> bool
where
    A: AsyncRead + Unpin,
    B: AsyncRead + Unpin,
{
    let Err(SpliceError::Gone(g)) = result else {
        return false;
    };
    if g.on_write || g.got_all {
        return g.on_write;
    }
    let mut buf = vec![0u8; 4096];
    let read = async {
        match g.end {
            End::A => b.read(&mut buf).await,
            End::B => a.read(&mut buf).await,
        }
    };
    matches!(
        tokio::time::timeout(STILL_SENDING_GRACE, read).await,
        Ok(Ok(n)) if n > 0
    )
}

/// Tells how a stream between `a` and `b` ended from the splice's result. `stopping`: the
/// relay is shutting down; `other_was_sending`: see [`other_was_sending`].
pub(crate) fn classify(
    result: &Result<(), SpliceError>,
    a: &Side<'_>,
    b: &Side<'_>,
    stopping: bool,
    other_was_sending: bool,
) -> Ending {
    let gone = match result {
        Ok(()) => {
            return Ending {
                outcome: Outcome::Ok,
                why: None,
            };
        }
        Err(SpliceError::Stopped(why)) => {
            return Ending {
                outcome: Outcome::Interrupted,
                why: Some(format!("cut by the relay: {why}")),
            };
        }
        Err(SpliceError::Gone(g)) => g,
    };
    let side = match gone.end {
        End::A => a,
        End::B => b,
    };
    let party = side.party();
    match went(side, gone, stopping) {
        Went::Fault(why) => Ending {
            outcome: Outcome::Interrupted,
            why: Some(format!("cut by a fault: {why}")),
        },
        // The other side's whole stream had reached it, or the other side had nothing more
        // to send: nothing was cut short.
        Went::Chose(why) if gone.got_all => Ending {
            outcome: Outcome::Ok,
            why: Some(format!("{why} after the whole stream")),
        },
        Went::Chose(why) if !other_was_sending => Ending {
            outcome: Outcome::Ok,
            why: Some(format!("{why}; nothing more was being sent")),
        },
        Went::Chose(why) => Ending {
            outcome: party.closed_early(),
            why: Some(format!("closed early: {why}")),
        },
    }
}

fn went(side: &Side<'_>, gone: &Gone, stopping: bool) -> Went {
    let party = side.party().name();
    let ssh = |handle: &Handle, what: &str| -> Went {
        match (handle.ended(), handle.peer_disconnect()) {
            (Some(_), Some(said)) => Went::Chose(format!("{what} disconnected ({said})")),
            (Some(_), None) if stopping => Went::Fault("the relay shut down".into()),
            (Some(why), None) => Went::Fault(format!("{what}'s connection was lost ({why})")),
            (None, _) => Went::Chose(format!("{what} closed the stream")),
        }
    };
    match side {
        Side::Operator(handle) => ssh(handle, party),
        Side::Device(dev) => {
            if let Some(why) = dev.gave_up() {
                Went::Fault(format!("the relay gave the device's session up: {why}"))
            } else if dev.replaced.is_cancelled() {
                Went::Fault(
                    "the device connected again and its new session replaced this one".into(),
                )
            } else {
                ssh(&dev.handle, party)
            }
        }
        Side::PeerRelay { id, handle, said } => match (handle.ended(), said) {
            (Some(_), _) if stopping => Went::Fault("the relay shut down".into()),
            (Some(why), _) => Went::Fault(format!("the peer link to relay {id} was lost ({why})")),
            (None, Some(said)) => Went::Fault(format!("at relay {id}: {said}")),
            (None, None) => Went::Chose(format!("{party} closed the stream (at relay {id})")),
        },
        Side::Tcp(_) => {
            use std::io::ErrorKind::*;
            match gone.error.kind() {
                TimedOut | HostUnreachable | NetworkUnreachable | NetworkDown => {
                    Went::Fault(format!("{party}'s connection was lost ({})", gone.error))
                }
                _ => Went::Chose(format!("{party} closed the connection ({})", gone.error)),
            }
        }
    }
}
