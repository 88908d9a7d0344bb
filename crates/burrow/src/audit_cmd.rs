//! `burrow relay audit`: the audit trail, filtered by device, operator, event and time, and
//! followed as it is written.

use std::time::Duration;

use burrow_proto::time::{format_rfc3339, parse_time};
use burrow_relay::audit_follow::AuditFollow;
use burrow_relay::store::{AuditEntry, AuditQuery, Db, now};
use tokio_util::sync::CancellationToken;

use crate::cli::AuditArgs;
use crate::exit::{self, Failure, Result};
use crate::relay_cmd::store_err;

/// How often `--follow` looks for new entries.
const FOLLOW_EVERY: Duration = Duration::from_secs(1);

pub async fn run(db: &Db, a: AuditArgs, shutdown: CancellationToken) -> Result {
    let query = query(&a, now())?;
    if a.explain {
        println!("{}", db.audit_plan(&query, false).await.map_err(store_err)?);
        if a.follow {
            println!("{}", db.audit_plan(&query, true).await.map_err(store_err)?);
        }
        return Ok(());
    }
    if !a.follow {
        let entries = db.audit_query(&query).await.map_err(store_err)?;
        if a.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&entries).unwrap_or_default()
            );
        } else {
            entries.iter().for_each(print_line);
        }
        return Ok(());
    }
    let (shown, mut follow) = AuditFollow::start(db, query).await.map_err(store_err)?;
    let print = |entries: &[AuditEntry]| {
        for e in entries {
            if a.json {
                println!("{}", serde_json::to_string(e).unwrap_or_default());
            } else {
                print_line(e);
            }
        }
    };
    print(&shown);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(FOLLOW_EVERY) => {}
        }
        match follow.poll(db).await {
            Ok(fresh) => print(&fresh),
            // A database away for a while (a cluster's failover) is waited out, and what was
            // written meanwhile is printed when it answers again.
            Err(e) => eprintln!("burrow: {e}; trying again"),
        }
    }
}

/// The query the flags ask for; times relative to `now`.
fn query(a: &AuditArgs, now: i64) -> Result<AuditQuery> {
    let time = |flag: &str, t: &Option<String>| -> Result<Option<i64>> {
        t.as_deref()
            .map(|t| parse_time(t, now))
            .transpose()
            .map_err(|e| Failure::new(exit::USAGE, format!("{flag}: {e}")))
    };
    let name = |flag: &str, n: &Option<String>| -> Result<Option<String>> {
        match n {
            Some(n) if n.trim().is_empty() => Err(Failure::new(
                exit::USAGE,
                format!(
                    "{flag} needs a name (list them with `burrow relay device ls` or `operator ls`)"
                ),
            )),
            other => Ok(other.clone()),
        }
    };
    let q = AuditQuery {
        device: name("--device", &a.device)?,
        operator: name("--operator", &a.operator)?,
        event: name("--event", &a.event)?,
        since: time("--since", &a.since)?,
        until: time("--until", &a.until)?,
        limit: a.limit,
    };
    if let (Some(since), Some(until)) = (q.since, q.until)
        && since > until
    {
        return Err(Failure::new(
            exit::USAGE,
            format!(
                "--since {} is after --until {}: nothing can match; swap them",
                format_rfc3339(since),
                format_rfc3339(until)
            ),
        ));
    }
    Ok(q)
}

fn print_line(e: &AuditEntry) {
    let r = &e.record;
    let relay = e
        .relay
        .as_deref()
        .map(|id| format!(" [{id}]"))
        .unwrap_or_default();
    println!(
        "{} {:<15} {:<7} {:<20} {:<24} {}{relay}",
        format_rfc3339(r.at),
        r.event,
        r.outcome,
        r.who,
        r.target,
        r.detail
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<AuditQuery> {
        let mut argv = vec!["burrow", "relay", "audit"];
        argv.extend_from_slice(args);
        let cli = crate::cli::Cli::try_parse_from(argv).unwrap();
        let crate::cli::Command::Relay(r) = cli.command else {
            panic!()
        };
        let Some(crate::cli::RelayCommand::Audit(a)) = r.command else {
            panic!()
        };
        query(&a, 1_000_000)
    }

    #[test]
    fn flags_become_the_query() {
        let q = parse(&[
            "--device",
            "garage-pi",
            "--operator",
            "alice",
            "--event",
            "stream",
            "--since",
            "1h",
            "--until",
            "1970-01-12T13:46:40Z",
            "--limit",
            "7",
        ])
        .unwrap();
        assert_eq!(q.device.as_deref(), Some("garage-pi"));
        assert_eq!(q.operator.as_deref(), Some("alice"));
        assert_eq!(q.event.as_deref(), Some("stream"));
        assert_eq!(q.since, Some(1_000_000 - 3_600));
        assert_eq!(q.until, Some(1_000_000));
        assert_eq!(q.limit, 7);
        let e = parse(&["--since", "yesterday"]).unwrap_err();
        assert_eq!(e.code, exit::USAGE);
        assert!(e.message.starts_with("--since: "), "{}", e.message);
        let e = parse(&["--since", "1h", "--until", "2h"]).unwrap_err();
        assert!(e.message.contains("swap"), "{}", e.message);
        let e = parse(&["--device", ""]).unwrap_err();
        assert!(e.message.contains("--device needs a name"), "{}", e.message);
        let cli = crate::cli::Cli::try_parse_from([
            "burrow", "relay", "audit", "--follow", "--until", "1h",
        ]);
        assert!(cli.is_err(), "--follow with --until is refused");
    }
}
