//! The cellular link from ModemManager, through its command-line client `mmcli` (key-value
//! output): the first modem, its extended signal, and its data bearer's byte counts.

use std::time::Duration;

use burrow_proto::health::{Modem, ModemManager};
use burrow_proto::modem::{
    modem_paths, parse_keyvalue, read_bearer, read_failure, read_modem, read_signal,
};

/// Time one `mmcli` call may take (ModemManager answers from its cache; a hung D-Bus does not
/// hold the agent up).
const MMCLI_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads ModemManager, asking it to poll the extended signal every `signal_rate` (once per
/// agent, when it does not already: `setup` remembers that it asked).
pub(crate) async fn read(signal_rate: Duration, setup: &mut bool) -> Modem {
    let mut modem = Modem::default();
    let list = match mmcli(&["-L"]).await {
        Ok(out) => parse_keyvalue(&out),
        Err(Failure::Missing) => {
            modem.mm = ModemManager::Absent;
            modem.why = Some("ModemManager is not installed (no mmcli on PATH)".into());
            return modem;
        }
        Err(Failure::Said(stderr)) => {
            read_failure(&mut modem, &stderr);
            return modem;
        }
    };
    let Some(path) = modem_paths(&list).into_iter().next() else {
        modem.mm = ModemManager::None;
        modem.why = Some("ModemManager runs but knows no modem".into());
        return modem;
    };
    let details = match mmcli(&["-m", &path]).await {
        Ok(out) => parse_keyvalue(&out),
        Err(Failure::Missing) => return modem,
        Err(Failure::Said(stderr)) => {
            read_failure(&mut modem, &stderr);
            return modem;
        }
    };
    let bearer = read_modem(&mut modem, &details);
    // The extended signal (RSRP, RSRQ, SNR) is measured only once polling is set up; asking for
    // it needs ModemManager's permission, which an unprivileged agent may not have: then the
    // signal quality percentage is what there is.
    if let Ok(out) = mmcli(&["-m", &path, "--signal-get"]).await {
        let rate = read_signal(&mut modem, &parse_keyvalue(&out));
        if rate == 0 && !*setup {
            *setup = true;
            let secs = signal_rate.as_secs().max(5).to_string();
            match mmcli(&["-m", &path, &format!("--signal-setup={secs}")]).await {
                Ok(_) => tracing::info!("asked ModemManager to measure the signal every {secs} s"),
                Err(Failure::Said(e)) => tracing::info!(
                    "ModemManager does not measure RSRP/RSRQ/SNR ({}); the signal quality percentage is reported instead",
                    e.trim()
                ),
                Err(Failure::Missing) => {}
            }
        }
    }
    if let Some(bearer) = bearer
        && let Ok(out) = mmcli(&["-b", &bearer]).await
    {
        read_bearer(&mut modem, &parse_keyvalue(&out));
    }
    modem
}

enum Failure {
    /// No `mmcli` to run.
    Missing,
    /// It ran and failed: its message.
    Said(String),
}

/// Runs `mmcli ARGS --output-keyvalue` and returns its output.
async fn mmcli(args: &[&str]) -> Result<String, Failure> {
    let run = tokio::process::Command::new("mmcli")
        .args(args)
        .arg("--output-keyvalue")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = match tokio::time::timeout(MMCLI_TIMEOUT, run).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => return Err(Failure::Missing),
        Ok(Err(e)) => return Err(Failure::Said(format!("cannot run mmcli: {e}"))),
        Err(_) => {
            return Err(Failure::Said(format!(
                "mmcli did not answer within {} s",
                MMCLI_TIMEOUT.as_secs()
            )));
        }
    };
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let mut why = String::from_utf8_lossy(&out.stderr).into_owned();
        if why.trim().is_empty() {
            why = format!("mmcli {} failed ({})", args.join(" "), out.status);
        }
        Err(Failure::Said(why))
    }
}
