//! `check CHARGE_ID...`: check these charges now, the way a pass would, and print one line
//! each (old -> new state, amounts, mismatch, error). What support runs while the customer
//! is on the phone.
//!
//! In stages, like a pass: the ids are looked up first (one not in the ledger ends the
//! command before any request); then, under the pass lock (waiting `schedule.lock_wait`
//! like `--once`), a run with trigger `check` is opened on the run protocol ([`Run`], the
//! same as a pass: a recorded pause is honoured before any request), the charges are read
//! afresh and checked by [`Checker::check_one`], the results are written by
//! [`Ledger::apply`] in one transaction with the run's end, and the run gets its outcome
//! from the same verdict a pass uses. The exit status then follows `--once`.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::{CommandError, writing};
use crate::config::Settings;
use crate::domain::ChargeId;
use tracing::Instrument;

use crate::context::Context;
use crate::ledger::{self, Applied, CheckResult, Counts, DueCharge, Ledger, Trigger};
use crate::lock::{Acquired, Busy, PassGuard, PassLock};
use crate::reconcile::{Checked, Checker, Run, RunReport, Stop, Tally};

/// The one line for a pass lock still held after `waited`.
pub(crate) fn lock_busy(lock: &PassLock, busy: &Busy, waited: Duration) -> String {
    let holder = busy
        .holder
        .map_or_else(String::new, |pid| format!(" by pid {pid}"));
    format!(
        "another pass is running (pass lock {} held{holder}); gave up after {} (schedule.lock_wait)",
        lock.path().display(),
        humantime::format_duration(waited)
    )
}

/// What happened to one named charge.
#[derive(Debug)]
enum Step {
    Done {
        result: Box<CheckResult>,
    },
    /// Not checked: the command stopped first (credentials refused, shutdown).
    NotChecked(&'static str),
    /// Deleted from the ledger between the look-up and the check.
    Gone,
}

/// Checks `ids` now and prints one line per charge on `out`. `Ok(None)` when shutdown
/// came while waiting for the lock (nothing was done).
pub(crate) async fn run(
    settings: Arc<Settings>,
    ids: Vec<ChargeId>,
    shutdown: CancellationToken,
    out: &mut (dyn Write + Send),
) -> Result<Option<RunReport>, CommandError> {
    let ids = dedup(ids);
    look_up(&settings, ids.clone()).await?;
    let ctx = Context::new(settings.clone()).map_err(|e| CommandError::Fatal(format!("{e:#}")))?;
    let checker = Checker::new(ctx);
    let lock = PassLock::for_database(&settings.database.path);
    let wait = settings.schedule.lock_wait;
    let guard = match lock.acquire_within(wait, &shutdown).await {
        Ok(Acquired::Held(guard)) => guard,
        Ok(Acquired::Busy(busy)) => {
            return Err(CommandError::Locked(lock_busy(&lock, &busy, wait)));
        }
        Ok(Acquired::Cancelled) => return Ok(None),
        Err(e) => return Err(CommandError::Fatal(e.to_string())),
    };
    let report = check_under_lock(&checker, &guard, ids, shutdown, out).await?;
    drop(guard);
    Ok(Some(report))
}

fn dedup(ids: Vec<ChargeId>) -> Vec<ChargeId> {
    let mut seen = std::collections::HashSet::new();
    ids.into_iter()
        .filter(|id| seen.insert(id.clone()))
        .collect()
}

/// Every id must name a charge that can be checked, before anything else happens.
async fn look_up(settings: &Settings, ids: Vec<ChargeId>) -> Result<(), CommandError> {
    let db = settings.database.clone();
    let rows = ledger::blocking(&settings.database.path, move || {
        let l = Ledger::open_if_exists(&db.path, db.busy_timeout)?;
        let rows = l.charges_by_id(&ids)?;
        Ok(ids.into_iter().zip(rows).collect::<Vec<_>>())
    })
    .await?;
    let unknown: Vec<&str> = rows
        .iter()
        .filter(|(_, r)| r.is_none())
        .map(|(id, _)| id.as_str())
        .collect();
    if !unknown.is_empty() {
        return Err(CommandError::Refused(format!(
            "not in the ledger: {}; nothing checked",
            unknown.join(", ")
        )));
    }
    if let Some(bad) = rows.iter().find_map(|(_, r)| r.as_ref()?.as_ref().err()) {
        return Err(CommandError::Refused(format!(
            "charge {} cannot be checked: {}; nothing checked",
            bad.charge_id, bad.problem
        )));
    }
    Ok(())
}

/// The run itself, with the lock held: the run protocol ([`Run`]) around the named
/// charges' checks.
async fn check_under_lock(
    checker: &Checker,
    held: &PassGuard,
    ids: Vec<ChargeId>,
    shutdown: CancellationToken,
    out: &mut (dyn Write + Send),
) -> Result<RunReport, CommandError> {
    let ctx = checker.context();
    let (run, ledger) = Run::open(ctx, held, Trigger::Check).await?;
    let span = run.span().clone();
    let rows = ctx
        .blocking(move || {
            let rows = ledger.charges_by_id(&ids)?;
            Ok((ledger, ids.into_iter().zip(rows).collect::<Vec<_>>()))
        })
        .instrument(span.clone())
        .await;
    let (ledger, rows) = match rows {
        Ok(r) => r,
        Err(e) => {
            run.fail(&e).await;
            return Err(e.into());
        }
    };
    // A pause UnivaPay asked for binds support's checks as much as the passes: the shop's
    // own requests share the budget.
    if let Some(report) = run.honour_pause() {
        let report = run.finish(ledger, report).await?;
        print_paused(&rows, out)?;
        return Ok(report);
    }
    let drain = ctx.settings().schedule.drain_timeout;
    let (stop, drain_guard) = Stop::with_drain(&shutdown, drain);
    let (steps, tally) = check_all(checker, rows, &stop).instrument(span).await;
    drop(drain_guard);
    let results: Vec<CheckResult> = steps
        .iter()
        .filter_map(|(_, s)| match s {
            Step::Done { result } => Some((**result).clone()),
            _ => None,
        })
        .collect();
    let mut report = run.report(&tally, Counts::default());
    let clock = ctx.clone();
    let (run, report, applied) = ctx
        .blocking(move || {
            let mut ledger = ledger;
            let mut run = run;
            let applied = match ledger.apply(run.id().unwrap_or(0), &results) {
                Ok(a) => a,
                Err(e) => {
                    let _ = ledger.fail_run(run.id().unwrap_or(0), &e.to_string(), clock.now());
                    return Err(e);
                }
            };
            report.counts = applied.counts;
            run.end_in(&ledger, &mut report)?;
            Ok((run, report, applied))
        })
        .await?;
    run.log_finished(&report);
    print_lines(&steps, &applied, out)?;
    Ok(report)
}

/// The named charges' checks, at most `api.concurrency` at once, in the order named.
async fn check_all(
    checker: &Checker,
    rows: Vec<(ChargeId, Option<ledger::DueRow>)>,
    stop: &Stop,
) -> (Vec<(ChargeId, Step)>, Tally) {
    let mut tally = Tally {
        complete: true,
        ..Tally::default()
    };
    let steps: Vec<(ChargeId, Step)> = futures::stream::iter(rows)
        .map(|(id, row)| async move {
            let step = match row {
                Some(Ok(charge)) => check(checker, charge, stop).await,
                _ => (Step::Gone, None),
            };
            (id, step)
        })
        .buffered(checker.context().settings().api.concurrency)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .map(|(id, (step, seen))| {
            record(&mut tally, seen);
            if matches!(step, Step::NotChecked(_)) {
                tally.complete = false;
            }
            (id, step)
        })
        .collect();
    (steps, tally)
}

/// A pause recorded earlier has not ended: nothing was sent, every charge is reported not
/// checked.
fn print_paused(
    rows: &[(ChargeId, Option<ledger::DueRow>)],
    out: &mut (dyn Write + Send),
) -> Result<(), CommandError> {
    let lines: Vec<String> = rows
        .iter()
        .map(|(id, _)| format!("{id}: not checked (UnivaPay asked for a pause)"))
        .collect();
    writing(|| {
        for l in &lines {
            writeln!(out, "{l}")?;
        }
        out.flush()
    })
}

/// What one check told the verdict.
enum Seen {
    Reached,
    Unreachable(String),
    Auth(String),
    Paused(crate::univapay::Paused),
}

fn record(tally: &mut Tally, seen: Option<Seen>) {
    if matches!(
        seen,
        Some(Seen::Reached | Seen::Unreachable(_) | Seen::Auth(_))
    ) {
        tally.requests += 1;
    }
    match seen {
        Some(Seen::Reached) => tally.reached += 1,
        Some(Seen::Unreachable(why)) => {
            tally.unreachable += 1;
            tally.last_unreachable = Some(why);
        }
        Some(Seen::Auth(e)) => {
            tally.auth.get_or_insert(e);
        }
        Some(Seen::Paused(p)) => {
            tally.paused.get_or_insert(p);
        }
        None => {}
    }
}

async fn check(checker: &Checker, charge: DueCharge, stop: &Stop) -> (Step, Option<Seen>) {
    match checker.check_one(charge, stop).await {
        // A few named charges are no 404 wall: each 404 counts as it would alone.
        Checked::Decided {
            result, no_answer, ..
        } => (
            Step::Done { result },
            Some(no_answer.map_or(Seen::Reached, Seen::Unreachable)),
        ),
        Checked::AuthRejected(e) => {
            // Nothing more is asked with credentials UnivaPay refuses.
            stop.stop.cancel();
            (
                Step::NotChecked("credentials rejected"),
                Some(Seen::Auth(e.to_string())),
            )
        }
        Checked::Skipped => (Step::NotChecked("stopped"), None),
        Checked::Paused(p) => {
            stop.stop.cancel();
            (
                Step::NotChecked("UnivaPay asked for a pause"),
                Some(Seen::Paused(p)),
            )
        }
    }
}

fn print_lines(
    steps: &[(ChargeId, Step)],
    applied: &Applied,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let mut written = applied.written.iter();
    let lines: Vec<String> = steps
        .iter()
        .map(|(id, step)| match step {
            Step::Done { result } => line(result, written.next().copied().unwrap_or(false)),
            Step::NotChecked(why) => format!("{id}: not checked ({why})"),
            Step::Gone => format!("{id}: no longer in the ledger; not checked"),
        })
        .collect();
    writing(|| {
        for l in &lines {
            writeln!(out, "{l}")?;
        }
        out.flush()
    })
}

/// The line for one checked charge: `ID: old -> new` (or `state (unchanged)`), UnivaPay's
/// word, the amounts, a mismatch, the payment number, an error, and whether it was
/// written.
pub(crate) fn line(r: &CheckResult, written: bool) -> String {
    let before = &r.charge.tracked;
    let after = &r.decision.after;
    let mut parts = vec![if before.state == after.state {
        format!("{} (unchanged)", after.state)
    } else {
        format!("{} -> {}", before.state, after.state)
    }];
    if let Some(word) = &after.provider_status {
        parts.push(format!("UnivaPay status {word}"));
    }
    let req = &r.charge.requested;
    parts.push(format!("requested {} {}", req.amount, req.currency));
    parts.push(match (after.charged_amount, &after.charged_currency) {
        (Some(a), Some(c)) => format!("charged {a} {c}"),
        (Some(a), None) => format!("charged {a}"),
        (None, _) => "charged -".to_owned(),
    });
    let detail = after.mismatch_detail.as_deref().unwrap_or("amounts differ");
    if r.decision.new_mismatch() {
        parts.push(format!("NEW MISMATCH: {detail}"));
    } else if after.amount_mismatch {
        parts.push(format!("mismatch (flagged before): {detail}"));
    }
    if let Some(n) = &after.payment_number {
        parts.push(format!("payment number {n}"));
    }
    if let Some(e) = &after.last_error {
        parts.push(format!("error: {e}"));
    }
    if !written {
        parts.push("NOT WRITTEN: the charge changed while it was checked; check it again".into());
    }
    format!("{}: {}", r.charge.charge_id, parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{
        Currency, Decision, EventKind, NewEvent, Requested, State, StoreId, Tracked,
    };

    fn result(before: State, after: Tracked, events: Vec<EventKind>) -> CheckResult {
        CheckResult {
            charge: DueCharge {
                dates: Default::default(),
                charge_id: ChargeId::parse("ch_1").unwrap(),
                store_id: StoreId::parse("st").unwrap(),
                requested: Requested {
                    amount: 1000,
                    currency: Currency::JPY,
                },
                tracked: Tracked {
                    state: before,
                    ..Tracked::new()
                },
                next_check_at: String::new(),
                updated_at: String::new(),
            },
            decision: Decision {
                after,
                next_check_at: None,
                events: events
                    .into_iter()
                    .map(|kind| NewEvent {
                        kind,
                        from_state: None,
                        to_state: None,
                        provider_status: None,
                        detail: None,
                    })
                    .collect(),
            },
            checked_at: chrono::Utc::now(),
            shop: None,
        }
    }

    #[test]
    fn lines_say_what_changed() {
        let paid = Tracked {
            state: State::Successful,
            provider_status: Some("successful".into()),
            charged_amount: Some(900),
            charged_currency: Some("JPY".into()),
            amount_mismatch: true,
            mismatch_detail: Some("charged 900 JPY, requested 1000 JPY".into()),
            ..Tracked::new()
        };
        let r = result(
            State::Awaiting,
            paid.clone(),
            vec![EventKind::Transition, EventKind::Mismatch],
        );
        assert_eq!(
            line(&r, true),
            "ch_1: awaiting -> successful, UnivaPay status successful, requested 1000 JPY, \
             charged 900 JPY, NEW MISMATCH: charged 900 JPY, requested 1000 JPY"
        );
        let r = result(State::Successful, paid, vec![]);
        assert!(line(&r, true).contains("successful (unchanged)"));
        assert!(line(&r, true).contains("mismatch (flagged before)"));

        let failed = Tracked {
            state: State::Pending,
            last_error: Some("UnivaPay server error 503".into()),
            payment_number: Some("123-456".into()),
            ..Tracked::new()
        };
        let r = result(State::Pending, failed, vec![EventKind::Error]);
        assert_eq!(
            line(&r, false),
            "ch_1: pending (unchanged), requested 1000 JPY, charged -, payment number 123-456, \
             error: UnivaPay server error 503, NOT WRITTEN: the charge changed while it was \
             checked; check it again"
        );
    }
}
