//! `check CHARGE_ID...`: check these charges now, the way a pass would, and print one line
//! each (old -> new state, amounts, mismatch, error). What support runs while the customer
//! is on the phone.
//!
//! In stages, like a pass: the ids are looked up first (one not in the ledger ends the
//! command before any request); then, under the pass lock (waiting `schedule.lock_wait`
//! like `--once`), a `runs` row with trigger `check` is begun, the charges are read
//! afresh and checked by [`Reconciler::check_one`], the results are written by
//! [`Ledger::apply`] in one transaction, and the run gets its outcome from the same
//! [`verdict`] a pass uses. The exit status then follows `--once`.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::{CommandError, writing};
use crate::config::Settings;
use crate::domain::ChargeId;
use crate::ledger::{
    self, Applied, CheckResult, Counts, DueCharge, Ledger, Open, Outcome, Trigger,
};
use crate::lock::{Acquired, Busy, PassGuard, PassLock};
use crate::reconcile::pass::{Checked, Stop, Tally, verdict};
use crate::reconcile::{PassReport, Reconciler};

/// The one line for a pass lock still held after `waited`.
pub fn lock_busy(lock: &PassLock, busy: &Busy, waited: Duration) -> String {
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
pub async fn run(
    settings: Arc<Settings>,
    ids: Vec<ChargeId>,
    shutdown: CancellationToken,
    out: &mut (dyn Write + Send),
) -> Result<Option<PassReport>, CommandError> {
    let ids = dedup(ids);
    look_up(&settings, ids.clone()).await?;
    let reconciler =
        Reconciler::new(settings.clone()).map_err(|e| CommandError::Fatal(format!("{e:#}")))?;
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
    let report = check_under_lock(&reconciler, &guard, ids, shutdown, out).await?;
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

/// The run itself, with the lock held.
async fn check_under_lock(
    reconciler: &Reconciler,
    _held: &PassGuard,
    ids: Vec<ChargeId>,
    shutdown: CancellationToken,
    out: &mut (dyn Write + Send),
) -> Result<PassReport, CommandError> {
    let started = Instant::now();
    let now = reconciler.now();
    let (ledger, run_id, rows, recorded_pause) = reconciler
        .with_ledger(Open::Migrate, move |l| {
            l.close_abandoned_runs()?;
            let recorded_pause = l.resume_at()?;
            let run_id = l.begin_run(Trigger::Check, now)?;
            let rows = l.charges_by_id(&ids)?;
            Ok((
                l,
                run_id,
                ids.into_iter().zip(rows).collect::<Vec<_>>(),
                recorded_pause,
            ))
        })
        .await?;
    // A pause UnivaPay asked for binds support's checks as much as the passes: the shop's
    // own requests share the budget.
    if let Err(resume_at) = reconciler.honour_pause(recorded_pause) {
        return paused_before_start(reconciler, ledger, run_id, &rows, resume_at, started, out)
            .await;
    }
    let settings = reconciler.settings();
    let (stop, drain_guard) = Stop::with_drain(&shutdown, settings.schedule.drain_timeout);
    let mut tally = Tally {
        complete: true,
        ..Tally::default()
    };
    let steps: Vec<(ChargeId, Step)> = futures::stream::iter(rows)
        .map(|(id, row)| {
            let stop = &stop;
            async move {
                let step = match row {
                    Some(Ok(charge)) => check(reconciler, charge, stop).await,
                    _ => (Step::Gone, None),
                };
                (id, step)
            }
        })
        .buffered(settings.api.concurrency)
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
    drop(drain_guard);
    let (outcome, detail) = verdict(&tally, reconciler.max_pause());
    let results: Vec<CheckResult> = steps
        .iter()
        .filter_map(|(_, s)| match s {
            Step::Done { result } => Some((**result).clone()),
            _ => None,
        })
        .collect();
    let finished_at = reconciler.now();
    let stored_detail = detail.clone();
    let resume_at = tally.paused.as_ref().map(|p| reconciler.resume_at(p));
    let stored_resume = resume_at.map(ledger::ts);
    let applied = ledger::blocking(&settings.database.path, move || {
        let mut ledger = ledger;
        let applied = match ledger.apply(run_id, &results) {
            Ok(a) => a,
            Err(e) => {
                let _ = ledger.fail_run(run_id, &e.to_string(), finished_at);
                return Err(e);
            }
        };
        ledger.finish_run(
            run_id,
            outcome,
            applied.counts,
            stored_detail.as_deref(),
            finished_at,
        )?;
        if let Some(at) = &stored_resume {
            ledger.set_resume_at(run_id, at)?;
        }
        Ok(applied)
    })
    .await?;
    print_lines(&steps, &applied, out)?;
    Ok(PassReport {
        run_id,
        trigger: Trigger::Check,
        outcome,
        counts: applied.counts,
        elapsed: started.elapsed(),
        detail,
        resume_at,
    })
}

/// A pause recorded earlier has not ended: nothing is sent, every charge is reported not
/// checked, and the run ends `rate_limited`.
async fn paused_before_start(
    reconciler: &Reconciler,
    ledger: ledger::Ledger,
    run_id: i64,
    rows: &[(ChargeId, Option<ledger::DueRow>)],
    resume_at: chrono::DateTime<chrono::Utc>,
    started: Instant,
    out: &mut (dyn Write + Send),
) -> Result<PassReport, CommandError> {
    let detail = format!(
        "UnivaPay asked for a pause until {} (recorded by an earlier run); no request before then",
        ledger::ts(resume_at)
    );
    let finished_at = reconciler.now();
    let stored = detail.clone();
    ledger::blocking(&reconciler.settings().database.path, move || {
        ledger.finish_run(
            run_id,
            Outcome::RateLimited,
            Counts::default(),
            Some(&stored),
            finished_at,
        )
    })
    .await?;
    let lines: Vec<String> = rows
        .iter()
        .map(|(id, _)| format!("{id}: not checked (UnivaPay asked for a pause)"))
        .collect();
    writing(|| {
        for l in &lines {
            writeln!(out, "{l}")?;
        }
        out.flush()
    })?;
    Ok(PassReport {
        run_id,
        trigger: Trigger::Check,
        outcome: Outcome::RateLimited,
        counts: Counts::default(),
        elapsed: started.elapsed(),
        detail: Some(detail),
        resume_at: Some(resume_at),
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

async fn check(reconciler: &Reconciler, charge: DueCharge, stop: &Stop) -> (Step, Option<Seen>) {
    match reconciler.check_one(charge, stop).await {
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
pub fn line(r: &CheckResult, written: bool) -> String {
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
