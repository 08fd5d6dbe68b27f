//! `deliveries [--json]`, `deliveries replay`, `deliveries test`: what is pending at each
//! endpoint and why, re-sending on demand, and trying an endpoint before relying on it.
//!
//! `replay` makes the chosen deliveries due at once and then sends them itself (for at
//! most `schedule.drain_timeout`): a daemon running beside it would send them too, but
//! each delivery is taken by one process at a time, so they go out once (with the
//! event's own webhook-id, re-signed).

use std::io::Write;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{CommandError, writing};
use crate::config::Settings;
use crate::delivery::metrics::age;
use crate::delivery::sender::{Sender, Sent};
use crate::delivery::worker;
use crate::ledger::{EndpointBacklog, Ledger};

/// What `deliveries replay` re-sends.
#[derive(Debug, Clone)]
pub(crate) struct ReplayArgs {
    pub(crate) events: Vec<i64>,
    pub(crate) since: Option<DateTime<Utc>>,
    pub(crate) endpoint: Option<String>,
}

#[derive(Serialize)]
struct Listed<'a> {
    endpoints: Vec<Entry<'a>>,
}

#[derive(Serialize)]
struct Entry<'a> {
    #[serde(flatten)]
    backlog: &'a EndpointBacklog,
    configured: bool,
    oldest_pending_seconds: Option<f64>,
}

/// The listing: per endpoint, pending, oldest pending age, last success, last error.
pub(crate) fn list(
    settings: &Settings,
    json: bool,
    now: DateTime<Utc>,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let db = &settings.database;
    let ledger = Ledger::open_if_exists(&db.path, db.busy_timeout)?;
    let mut backlog = ledger.delivery_backlog()?;
    for d in &settings.delivery {
        if !backlog.iter().any(|b| b.endpoint == d.name) {
            backlog.push(EndpointBacklog {
                endpoint: d.name.clone(),
                pending: 0,
                oldest_pending_at: None,
                next_attempt_at: None,
                last_success_at: None,
                last_error: None,
                last_error_at: None,
                delivered: 0,
                failed_attempts: 0,
            });
        }
    }
    let entries: Vec<Entry<'_>> = backlog
        .iter()
        .map(|b| Entry {
            backlog: b,
            configured: settings.delivery.iter().any(|d| d.name == b.endpoint),
            oldest_pending_seconds: age(b.oldest_pending_at.as_deref(), now),
        })
        .collect();
    writing(|| {
        if json {
            let text = serde_json::to_string(&Listed { endpoints: entries })
                .map_err(std::io::Error::other)?;
            return writeln!(out, "{text}");
        }
        if entries.is_empty() {
            return writeln!(out, "no delivery endpoints ([[delivery]] in the config)");
        }
        for e in &entries {
            write_entry(out, e)?;
        }
        Ok(())
    })
}

fn write_entry(out: &mut dyn Write, e: &Entry<'_>) -> std::io::Result<()> {
    let b = e.backlog;
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    writeln!(
        out,
        "{}{}: pending {}, oldest pending {}, next attempt {}, last success {}, delivered {}, failed attempts {}",
        b.endpoint,
        if e.configured {
            ""
        } else {
            " (no longer configured)"
        },
        b.pending,
        e.oldest_pending_seconds
            .map_or_else(|| "-".to_owned(), |s| format!("{s:.0} s ago")),
        dash(&b.next_attempt_at),
        dash(&b.last_success_at),
        b.delivered,
        b.failed_attempts
    )?;
    if let Some(err) = &b.last_error {
        writeln!(out, "  last error at {}: {err}", dash(&b.last_error_at))?;
    }
    Ok(())
}

fn check_endpoint(settings: &Settings, name: Option<&str>) -> Result<(), CommandError> {
    match name {
        Some(n) if !settings.delivery.iter().any(|d| d.name == n) => Err(CommandError::Refused(
            format!("no [[delivery]] endpoint named {n:?} in the config"),
        )),
        _ if settings.delivery.is_empty() => Err(CommandError::Refused(
            "no [[delivery]] endpoints in the config".into(),
        )),
        _ => Ok(()),
    }
}

/// `deliveries replay`: makes the chosen deliveries due now, then sends them.
pub(crate) async fn replay(
    settings: &Settings,
    args: &ReplayArgs,
    out: &mut (dyn Write + Send),
) -> Result<(), CommandError> {
    check_endpoint(settings, args.endpoint.as_deref())?;
    let db = &settings.database;
    let mut ledger = Ledger::open_if_exists(&db.path, db.busy_timeout)?;
    for id in &args.events {
        if !ledger.has_payload(*id)? {
            return Err(CommandError::Refused(format!(
                "event {id} is not one of the events delivered (charge.*) or does not exist"
            )));
        }
    }
    ledger.sync_endpoints(&worker::filters(settings), Utc::now())?;
    let n = ledger.replay(
        &args.events,
        args.since,
        args.endpoint.as_deref(),
        Utc::now(),
    )?;
    drop(ledger);
    writing(|| writeln!(out, "{n} deliveries due now"))?;
    let drained = worker::drain(settings, settings.schedule.drain_timeout)
        .await
        .map_err(|e| CommandError::Fatal(e.to_string()))?;
    writing(|| {
        writeln!(
            out,
            "delivered {}, failed attempts {}{}",
            drained.delivered,
            drained.failed,
            if drained.pending_at.is_empty() {
                String::new()
            } else {
                format!("; still pending at {}", drained.pending_at.join(", "))
            }
        )
    })
}

/// `deliveries test`: one signed `test` event to each chosen endpoint; `Ok` when every
/// one answered 2xx.
pub(crate) async fn test(
    settings: &Settings,
    endpoint: Option<&str>,
    out: &mut (dyn Write + Send),
) -> Result<(), CommandError> {
    check_endpoint(settings, endpoint)?;
    let now = Utc::now();
    let body = test_payload(now);
    let msg_id = format!("test_{}", now.timestamp_millis());
    let mut failed = Vec::new();
    for d in settings
        .delivery
        .iter()
        .filter(|d| endpoint.is_none_or(|n| n == d.name))
    {
        let sender = Sender::new(d.clone())
            .map_err(|e| CommandError::Fatal(format!("delivery endpoint {}: {e}", d.name)))?;
        let line = match sender.send(&msg_id, &body, now).await {
            Sent::Accepted { status } => format!("{}: ok, HTTP {status}", d.name),
            Sent::Refused { error, .. } => {
                failed.push(d.name.clone());
                format!("{}: failed: {error}", d.name)
            }
        };
        writing(|| writeln!(out, "{line}"))?;
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(CommandError::Refused(format!(
            "test event not accepted by {}",
            failed.join(", ")
        )))
    }
}

/// The `test` event's payload.
pub(crate) fn test_payload(now: DateTime<Utc>) -> String {
    serde_json::json!({
        "type": "test",
        "timestamp": crate::ledger::ts(now),
        "data": {"message": "a test event from konbini-reconciler deliveries test"}
    })
    .to_string()
}
