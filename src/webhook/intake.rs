//! From accepted hints to written checks: the I/O around [`Coalescer`].
//!
//! Two tasks and the checks they start:
//! - the **recorder** takes hints from the HTTP side (a bounded channel), up to
//!   [`RECORD_BATCH`] at a time, and in one ledger transaction looks each up and writes its
//!   `webhook` event row ([`Ledger::record_hints`](crate::ledger::Ledger::record_hints)); open charges go to the coalescer,
//!   unknown ones to [`UnknownChargeHook::on_unknown_charge`](super::UnknownChargeHook),
//!   the rest are counted;
//! - the **dispatcher**, a job of the job loop ([`HintJob`]), starts the GETs the
//!   coalescer lets go, in batches: each batch is a
//!   run on the run protocol ([`Run::unlocked`], trigger `webhook`): it re-reads its rows
//!   and the recorded pause (`runs.resume_at`, honoured before any request), checks them
//!   with [`Checker::check_one`] (the pass's own pacer, budget and fit) and writes the
//!   results with [`Ledger::apply`](crate::ledger::Ledger::apply) and the run's row in one
//!   transaction.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::{BoxFuture, join_all};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::coalesce::{Coalescer, Due, Ended, Hinted, Lane, Limits};
use super::{Hint, Hooks, IntakeClock, Stats, Throttle, UnknownCharge};
use crate::context::Context;
use crate::domain::{ChargeId, Outcome};
use crate::jobs::{self, InOnce, Job, Lock, When, Work};
use crate::ledger::{CheckResult, Counts, HintCheck, HintRow, HintTarget, Open, Trigger};
use crate::reconcile::{Checked, Checker, Run, Stop, Tally};

/// Most hints looked up and recorded in one transaction.
pub(crate) const RECORD_BATCH: usize = 256;

/// Most charges checked in one batch (one `runs` row).
const CHECK_BATCH: usize = 32;

/// What the coalescer allows, from the settings. See the module doc of [`super`].
pub(crate) fn limits(api: &crate::config::ApiSettings) -> Limits {
    // UnivaPay's documented route refill (1,200 a minute), our share of it, and a quarter
    // of that for hints: the scheduled passes always keep three quarters.
    let mut per_minute = 1200.0 * api.budget_share;
    if let Some(cap) = api.max_requests_per_minute {
        per_minute = per_minute.min(f64::from(cap.get()));
    }
    let per_second = (per_minute / 60.0 * HINT_SHARE).max(MIN_PER_SECOND);
    Limits {
        spacing: SPACING,
        per_second,
        burst: (per_second * 4.0).clamp(1.0, 20.0),
        max_tracked: MAX_TRACKED,
    }
}

/// The share of our budget that hint GETs may take.
const HINT_SHARE: f64 = 0.25;
/// Hint GETs are never slower than this (one every ten seconds), whatever the budget.
const MIN_PER_SECOND: f64 = 0.1;
/// Least time between the starts of two GETs of one charge.
pub(crate) const SPACING: Duration = Duration::from_secs(1);
/// Most charges tracked at once (about 100 bytes each).
const MAX_TRACKED: usize = 10_000;

/// The shared state of the recorder, the dispatcher and the checks.
pub(crate) struct Intake {
    checker: Checker,
    /// The time the coalescer's spacing and bucket are counted in.
    clock: IntakeClock,
    coalescer: Mutex<Coalescer>,
    /// Wakes the dispatcher: a charge was queued, or a check finished.
    wake: Notify,
    hooks: Hooks,
    stats: Arc<Stats>,
    /// Hints sent by the HTTP side and not yet recorded, so [`Intake::settled`] knows.
    pub(super) unrecorded: AtomicUsize,
    /// The check batches in flight, so shutdown can wait for their commits.
    checks: TaskTracker,
    ledger_log: Throttle,
    auth_log: Throttle,
}

impl Intake {
    pub(crate) fn new(checker: Checker, hooks: Hooks, stats: Arc<Stats>) -> Arc<Intake> {
        let limits = limits(&checker.context().settings().api);
        let clock = hooks
            .clock
            .clone()
            .unwrap_or_else(|| Arc::new(Instant::now));
        let start = clock();
        Arc::new(Intake {
            checker,
            clock,
            coalescer: Mutex::new(Coalescer::new(limits, start)),
            wake: Notify::new(),
            hooks,
            stats,
            unrecorded: AtomicUsize::new(0),
            checks: TaskTracker::new(),
            ledger_log: Throttle::new(),
            auth_log: Throttle::new(),
        })
    }

    fn ctx(&self) -> &Context {
        self.checker.context()
    }

    /// Now, by the intake's clock.
    pub(crate) fn now(&self) -> Instant {
        (self.clock)()
    }

    fn coalescer(&self) -> std::sync::MutexGuard<'_, Coalescer> {
        // Plain bookkeeping: a panic cannot leave it half-changed in a harmful way.
        self.coalescer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The recorder: until the HTTP side has gone (the channel closes).
    pub(crate) async fn record_loop(self: Arc<Self>, mut rx: mpsc::Receiver<Hint>) {
        let mut batch = Vec::with_capacity(RECORD_BATCH);
        while rx.recv_many(&mut batch, RECORD_BATCH).await > 0 {
            let n = batch.len();
            self.record(std::mem::take(&mut batch)).await;
            self.unrecorded.fetch_sub(n, Ordering::AcqRel);
        }
    }

    async fn record(&self, hints: Vec<Hint>) {
        let rows: Vec<HintRow> = hints
            .iter()
            .map(|h| HintRow {
                charge_id: h.charge_id.clone(),
                store_id: h.store_id.clone(),
                event: h.event.as_str().to_owned(),
                at: h.at,
            })
            .collect();
        let targets = match self
            .ctx()
            .with_ledger(Open::Existing, move |mut l| l.record_hints(&rows))
            .await
        {
            Ok(t) => t,
            Err(e) => {
                Stats::add(&self.stats.dropped, hints.len() as u64);
                if let Some(suppressed) = self.ledger_log.allow() {
                    tracing::error!(error = %e, suppressed, hints = hints.len(), "cannot record webhook hints; the scheduled passes will check those charges");
                }
                return;
            }
        };
        let mut overflow = Vec::new();
        for (hint, target) in hints.into_iter().zip(targets) {
            self.route(hint, target, &mut overflow);
        }
        self.wake.notify_one();
        if !overflow.is_empty() {
            self.make_due(overflow).await;
        }
    }

    /// Where one looked-up hint goes. Charges the coalescer cannot take are collected in
    /// `overflow`, to be made due for the next pass.
    fn route(&self, hint: Hint, target: HintTarget, overflow: &mut Vec<ChargeId>) {
        let s = &self.stats;
        let (id, store, event) = (&hint.charge_id, &hint.store_id, hint.event.as_str());
        match target {
            HintTarget::Open { past_deadline } => {
                let lane = if past_deadline { Lane::Late } else { Lane::Now };
                let hinted = self.coalescer().hint(
                    hint.charge_id.clone(),
                    hint.store_id.clone(),
                    hint.event.as_str(),
                    lane,
                    hint.arrived,
                );
                match hinted {
                    Hinted::Queued => Stats::bump(&s.queued),
                    Hinted::Shared | Hinted::Again => Stats::bump(&s.coalesced),
                    Hinted::Dropped => {
                        Stats::bump(&s.dropped);
                        overflow.push(hint.charge_id.clone());
                    }
                }
                tracing::debug!(charge_id = %id, event, ?hinted, "webhook hint for an open charge");
            }
            HintTarget::Final => {
                Stats::bump(&s.for_final);
                tracing::debug!(charge_id = %id, event, "webhook hint for a final charge; nothing to check");
            }
            HintTarget::Archived => {
                Stats::bump(&s.for_final);
                tracing::debug!(charge_id = %id, event, "webhook hint for an archived charge; nothing to check");
            }
            HintTarget::OtherStore => {
                Stats::bump(&s.other_store);
                tracing::debug!(charge_id = %id, store_id = %store, event, "webhook hint names a ledger charge under another store; ignored");
            }
            HintTarget::Unknown => {
                Stats::bump(&s.not_in_ledger);
                tracing::debug!(charge_id = %id, store_id = %store, event, "webhook hint for a charge not in the ledger");
                self.hooks.unknown.on_unknown_charge(UnknownCharge {
                    charge_id: hint.charge_id,
                    store_id: hint.store_id,
                });
            }
        }
    }

    /// Makes these charges due now, so the next pass checks them (hints that could not be
    /// followed: the coalescer was full, or the daemon is stopping).
    async fn make_due(&self, ids: Vec<ChargeId>) {
        let now = self.ctx().now();
        let n = ids.len();
        let done = self
            .ctx()
            .with_ledger(Open::Existing, move |mut l| l.make_due(&ids, now))
            .await;
        if let Err(e) = done {
            tracing::warn!(error = %e, charges = n, "cannot make hinted charges due; they keep their schedule");
        }
    }

    /// The charges the coalescer lets go now, at most a batch; else when to look again.
    fn take_due(&self) -> (Vec<Due>, Option<Instant>) {
        let now = self.now();
        let mut c = self.coalescer();
        (c.take_due(now, CHECK_BATCH), c.next_wake(now))
    }

    /// Waits until the coalescer lets a batch go, or `shutdown` (`None`).
    async fn next_batch(&self, shutdown: &CancellationToken) -> Option<Vec<Due>> {
        loop {
            let now = self.now();
            let (due, wake_at) = self.take_due();
            if !due.is_empty() {
                return Some(due);
            }
            // A wait in the intake's time, slept in tokio's.
            let sleep = async {
                match wake_at {
                    Some(at) => tokio::time::sleep(at.saturating_duration_since(now)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = self.wake.notified() => {}
                () = sleep => {}
                () = shutdown.cancelled() => return None,
            }
        }
    }

    /// Starts one batch's checks beside the others in flight (they share the coalescer's
    /// budget, not the pass lock).
    fn start_batch(self: &Arc<Self>, due: Vec<Due>, stop: &Stop) {
        let me = self.clone();
        let stop = stop.clone();
        self.checks
            .spawn(async move { me.check_batch(due, &stop).await });
    }

    /// At shutdown, once nothing more is recorded or checked: the charges still waiting
    /// for their GET are made due, so the next pass checks them.
    pub(crate) async fn hand_back(&self) {
        let waiting: Vec<ChargeId> = self
            .coalescer()
            .drain_waiting()
            .into_iter()
            .map(|d| d.charge_id)
            .collect();
        if !waiting.is_empty() {
            tracing::info!(
                charges = waiting.len(),
                "stopping: hinted charges not yet checked are made due for the next pass"
            );
            self.make_due(waiting).await;
        }
    }

    /// Closes the check tracker and waits for the batches in flight.
    pub(crate) async fn checks_done(&self) {
        self.checks.close();
        self.checks.wait().await;
    }

    /// One batch: a run without the pass lock. Reads the rows and the recorded pause
    /// afresh, checks the open ones (none while a recorded pause lasts), and writes the
    /// results and the run's row in one transaction.
    async fn check_batch(&self, due: Vec<Due>, stop: &Stop) {
        let mut run = Run::unlocked(self.ctx(), Trigger::Webhook);
        let ids: Vec<ChargeId> = due.iter().map(|d| d.charge_id.clone()).collect();
        let seen = hint_checks(&due, self.ctx().now());
        let read = self
            .ctx()
            .with_ledger(Open::Existing, move |mut l| {
                run.read_pause_in(&l)?;
                // A row lost is better than a check lost: the check goes on regardless.
                if let Err(e) = l.record_hint_checks(&seen) {
                    tracing::warn!(error = %e, "webhook rows of these checks not written");
                }
                Ok((run, l.charges_by_id(&ids)?))
            })
            .await;
        let (run, rows) = match read {
            Ok(read) => read,
            Err(e) => {
                if let Some(suppressed) = self.ledger_log.allow() {
                    tracing::error!(error = %e, suppressed, "cannot read hinted charges; the scheduled passes will check them");
                }
                self.finish(due.iter().map(|d| (&d.charge_id, Ended::Checked)));
                return;
            }
        };
        let mut checkable = Vec::new();
        for (d, row) in due.iter().zip(rows) {
            match row {
                Some(Ok(c)) if !c.tracked.state.is_final() && c.store_id == d.store_id => {
                    checkable.push(c);
                }
                // Final, gone, or unreadable since the hint: nothing to ask UnivaPay.
                _ => self.finish([(&d.charge_id, Ended::Final)]),
            }
        }
        if checkable.is_empty() {
            return;
        }
        if let Some(paused) = run.honour_pause() {
            // Nothing is sent before the recorded pause ends; the charges keep their
            // schedule and a pass after the pause checks them.
            tracing::debug!(
                charges = checkable.len(),
                detail = paused.detail.as_deref().unwrap_or(""),
                "webhook checks not sent"
            );
            self.finish(checkable.iter().map(|c| (&c.charge_id, Ended::Checked)));
            return;
        }
        let span = run.span().clone();
        let checked = join_all(checkable.into_iter().map(|c| async move {
            let id = c.charge_id.clone();
            (id, self.checker.check_one(c, stop).await)
        }))
        .instrument(span)
        .await;
        Stats::add(&self.stats.checks, checked.len() as u64);
        self.write(run, checked).await;
    }

    /// Writes what the checks decided, and tells the coalescer which charges are done.
    async fn write(&self, run: Run, checked: Vec<(ChargeId, Checked)>) {
        let (tally, results, unwritten) = tally(checked);
        self.finish(unwritten.iter().map(|id| (id, Ended::Checked)));
        if results.is_empty() && tally.auth.is_none() && tally.paused.is_none() {
            return;
        }
        let mut report = run.report(&tally, Counts::default());
        if report.outcome == Outcome::AuthFailed
            && let Some(suppressed) = self.auth_log.allow()
        {
            tracing::error!(
                suppressed,
                "webhook check: {}",
                report.detail.as_deref().unwrap_or("credentials rejected")
            );
        }
        let failed_ids: Vec<ChargeId> =
            results.iter().map(|r| r.charge.charge_id.clone()).collect();
        let written = self
            .ctx()
            .with_ledger(Open::Existing, move |mut l| {
                let mut run = run;
                let id = run.begin_in(&l)?;
                let applied = l.apply(id, &results)?;
                report.counts = applied.counts;
                run.end_in(&l, &mut report)?;
                Ok((id, applied, results))
            })
            .await;
        match written {
            Ok((run_id, applied, results)) => {
                Stats::add(&self.stats.stale, applied.stale);
                log_applied(run_id, &results, &applied.written);
                self.finish(results.iter().zip(&applied.written).map(|(r, w)| {
                    let ended = match (w, r.decision.after.state.is_final()) {
                        (false, _) => Ended::Stale,
                        (true, true) => Ended::Final,
                        (true, false) => Ended::Checked,
                    };
                    (&r.charge.charge_id, ended)
                }));
            }
            Err(e) => {
                if let Some(suppressed) = self.ledger_log.allow() {
                    tracing::error!(error = %e, suppressed, "cannot write webhook checks; the scheduled passes will check those charges");
                }
                self.finish(failed_ids.iter().map(|id| (id, Ended::Checked)));
            }
        }
    }

    /// Tells the coalescer how these GETs ended and wakes the dispatcher for any
    /// follow-up.
    fn finish<'a>(&self, done: impl IntoIterator<Item = (&'a ChargeId, Ended)>) {
        let now = self.now();
        {
            let mut c = self.coalescer();
            for (id, ended) in done {
                c.finished(id, now, ended);
            }
        }
        self.wake.notify_one();
    }

    /// When nothing is unrecorded or in flight and charges wait only for time (their
    /// spacing, the hint budget): the instant, on the intake's clock, the next may start.
    pub(crate) fn waiting_until(&self) -> Option<Instant> {
        let c = self.coalescer();
        if self.unrecorded.load(Ordering::Acquire) != 0 || c.in_flight() != 0 {
            return None;
        }
        c.next_wake(self.now())
    }

    /// Wakes the dispatcher (its clock was moved).
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    /// Whether nothing is left to do: no hint unrecorded, no charge waiting, no check in
    /// flight.
    pub(crate) fn is_settled(&self) -> bool {
        let c = self.coalescer();
        self.unrecorded.load(Ordering::Acquire) == 0 && c.waiting() == 0 && c.in_flight() == 0
    }
}

/// The hint batches as a job of the job loop ([`crate::jobs`]): due when the coalescer
/// lets charges go, without the pass lock (hints run beside passes, on the same pacer);
/// not part of `--once`. Each run starts one batch and returns; shutdown waits for the
/// batches in flight through [`Intake::checks_done`].
pub(crate) struct HintJob {
    intake: Arc<Intake>,
    /// The checks' stop signal, shared by every batch.
    stop: Stop,
}

impl HintJob {
    pub(crate) fn new(intake: Arc<Intake>, stop: Stop) -> HintJob {
        HintJob { intake, stop }
    }

    fn batch(&self, due: Vec<Due>) -> Work {
        let (intake, stop) = (self.intake.clone(), self.stop.clone());
        Box::new(move |_held, _shutdown| {
            if !due.is_empty() {
                intake.start_batch(due, &stop);
            }
            Box::pin(std::future::ready(jobs::Ended::Ran))
        })
    }
}

impl Job for HintJob {
    fn name(&self) -> &'static str {
        "webhook hint batch"
    }

    fn when(&self) -> When {
        When::Own
    }

    fn lock(&self) -> Lock {
        Lock::None
    }

    fn work(self: Arc<Self>, _trigger: Trigger) -> Work {
        let (due, _) = self.intake.take_due();
        self.batch(due)
    }

    fn next(self: Arc<Self>, shutdown: CancellationToken) -> BoxFuture<'static, Option<Work>> {
        Box::pin(async move {
            let due = self.intake.next_batch(&shutdown).await?;
            Some(self.batch(due))
        })
    }

    fn in_once(self: Arc<Self>) -> BoxFuture<'static, InOnce> {
        Box::pin(std::future::ready(InOnce::Skip))
    }
}

/// What a batch's checks tell its verdict, the results to write, and the charges left
/// unwritten (refused credentials, shutdown, a long pause: they stay due). A hint's
/// charges are no 404 wall: each 404 counts as it would alone.
fn tally(checked: Vec<(ChargeId, Checked)>) -> (Tally, Vec<CheckResult>, Vec<ChargeId>) {
    let mut tally = Tally {
        complete: true,
        ..Tally::default()
    };
    let mut results: Vec<CheckResult> = Vec::new();
    let mut unwritten: Vec<ChargeId> = Vec::new();
    for (charge_id, c) in checked {
        if c.sent() {
            tally.requests += 1;
        }
        match c {
            Checked::Decided {
                result, no_answer, ..
            } => {
                match no_answer {
                    None => tally.reached += 1,
                    Some(why) => {
                        tally.unreachable += 1;
                        tally.last_unreachable = Some(why);
                    }
                }
                results.push(*result);
            }
            Checked::AuthRejected(e) => {
                tally.auth.get_or_insert(e.to_string());
                unwritten.push(charge_id);
            }
            Checked::Skipped => {
                tally.complete = false;
                unwritten.push(charge_id);
            }
            // UnivaPay asked for a long pause: nothing was sent, the charge stays due
            // for a pass after the pause, and the run records `resume_at`.
            Checked::Paused(p) => {
                tally.complete = false;
                tally.paused.get_or_insert(p);
                unwritten.push(charge_id);
            }
        }
    }
    (tally, results, unwritten)
}

/// The `webhook` rows of these GETs, one each: the hints each serves.
fn hint_checks(due: &[Due], at: chrono::DateTime<chrono::Utc>) -> Vec<HintCheck> {
    due.iter()
        .map(|d| HintCheck {
            charge_id: d.charge_id.clone(),
            events: d.events.clone(),
            at,
        })
        .collect()
}

/// One line per transition a hint's check committed, like a pass's writer logs them.
fn log_applied(run_id: i64, results: &[CheckResult], written: &[bool]) {
    for (r, w) in results.iter().zip(written) {
        if !w {
            tracing::debug!(charge_id = %r.charge.charge_id, "webhook check not written: the charge changed meanwhile");
            continue;
        }
        if let Some((from, to)) = r.decision.transition() {
            tracing::info!(
                charge_id = %r.charge.charge_id,
                from = from.as_str(),
                to = to.as_str(),
                provider_status = r.decision.after.provider_status.as_deref().unwrap_or(""),
                run_id,
                "charge moved (webhook)"
            );
        }
        if r.decision.new_mismatch() {
            tracing::warn!(
                charge_id = %r.charge.charge_id,
                detail = r.decision.after.mismatch_detail.as_deref().unwrap_or(""),
                "amount mismatch"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;
    use crate::config::Settings;

    fn api(extra: &str) -> crate::config::ApiSettings {
        let text = format!(
            "[api]\nbase_url = \"http://127.0.0.1:9\"\napp_token = \"t\"\nsecret = \"s\"\n{extra}\n"
        );
        let s =
            Settings::from_toml(&text, std::path::Path::new("c.toml"), &[("UNUSED", "")]).unwrap();
        s.api
    }

    #[test]
    fn hints_get_a_quarter_of_the_budget_share() {
        let l = limits(&api(""));
        assert!((l.per_second - 2.5).abs() < 1e-9, "{l:?}");
        assert!((l.burst - 10.0).abs() < 1e-9);
        assert_eq!(l.spacing, Duration::from_secs(1));

        let l = limits(&api("budget_share = 1.0"));
        assert!((l.per_second - 5.0).abs() < 1e-9, "{l:?}");
        assert!((l.burst - 20.0).abs() < 1e-9);

        let mut a = api("");
        a.max_requests_per_minute = NonZeroU32::new(120);
        let l = limits(&a);
        assert!((l.per_second - 0.5).abs() < 1e-9, "{l:?}");
        assert!((l.burst - 2.0).abs() < 1e-9);

        a.max_requests_per_minute = NonZeroU32::new(1);
        assert!((limits(&a).per_second - MIN_PER_SECOND).abs() < 1e-9);
    }
}
