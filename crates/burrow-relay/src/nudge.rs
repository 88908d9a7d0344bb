//! Wakes an operator's client that owes window for data it threw away.
//!
//! An OpenSSH client whose output closed (`ssh -W ... | head -c 1M`) keeps taking a stream's
//! data and throwing it away, but it gives the window back only on the next turn of its event
//! loop, and nothing turns that loop once the relay has spent the whole window in one burst:
//! no stdout to write to, no stdin, nothing arriving. The stream then moves one window per
//! `ServerAliveInterval`, or never, and its end never arrives. So when the relay's bytes for
//! the client wait and make no progress, it sends a keepalive: the first goes right behind the
//! burst and is read with it, its answer says the client has taken the burst, and a second
//! one then turns the client's loop, which gives the window back; a stream that needed this
//! once is woken at once on its next stalls. A reader that really stopped
//! (a paused terminal) is asked less and less often. (A stock sshd sends in small pieces as it
//! reads, and so mostly keeps the client awake by itself.)

use std::time::Duration;

use burrow_io::splice::Progress;
use burrow_ssh::driver::Handle;

/// How long bytes may wait without progress before the client is woken: long enough that a
/// client which reads goes on by itself.
const STALL: Duration = Duration::from_millis(2);
/// Keepalives sent in a row while nothing moves, before waiting longer between rounds.
const IN_A_ROW: usize = 2;
/// The first pause between rounds for a client that stays stalled; it doubles each round.
const FIRST_PAUSE: Duration = Duration::from_millis(50);
/// The longest pause between rounds.
const MAX_PAUSE: Duration = Duration::from_secs(10);
/// How often an outstanding keepalive is looked at.
const ANSWER_POLL: Duration = Duration::from_millis(1);
/// Longest wait for a keepalive's answer.
const ANSWER_WAIT: Duration = Duration::from_secs(5);

/// Runs beside a stream whose first end is `client`, for as long as the stream runs.
pub(crate) async fn wake_stalled_client(
    client: &Handle,
    progress: &Progress,
) -> std::convert::Infallible {
    // Once a stall moved only when nudged, the client is one that must be woken (its output
    // closed): later stalls are answered at once instead of after STALL.
    let mut needs_waking = false;
    loop {
        progress.b_to_a_stalled().await;
        let mut pause = FIRST_PAUSE;
        // One stall, until its bytes move on.
        loop {
            let mark = progress.now().b_to_a;
            let moved = || !progress.b_to_a_waits() || progress.now().b_to_a != mark;
            if !needs_waking {
                tokio::time::sleep(STALL).await;
                if moved() {
                    break;
                }
            }
            for _ in 0..IN_A_ROW {
                if !client.keepalive_outstanding() {
                    client.send_keepalive();
                }
                let answered = async {
                    while client.keepalive_outstanding() {
                        tokio::time::sleep(ANSWER_POLL).await;
                    }
                };
                let _ = tokio::time::timeout(ANSWER_WAIT, answered).await;
                if moved() {
                    break;
                }
            }
            // A stream that moved when woken keeps being woken at once (a keepalive per
            // stall, which is a window's worth of data at most); one that did not is asked
            // less and less often.
            needs_waking = moved();
            if needs_waking {
                break;
            }
            tokio::time::sleep(pause).await;
            pause = pause.saturating_mul(2).min(MAX_PAUSE);
        }
    }
}
