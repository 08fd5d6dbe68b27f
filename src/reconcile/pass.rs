//! One reconciliation pass, in named stages:
//!
//! 1. [`begin`](Reconciler::begin): close runs a dead process left `running`, insert this
//!    pass's `runs` row;
//!    then [`plan`](Reconciler::plan): count the due backlog and estimate the checks per
//!    minute the open charges need under the recheck schedule, against which the budget
//!    share stretches the intervals (see [`super::cadence`]);
//! 2. [`check_due`](Reconciler::check_due): a reader thread streams due charges from the
//!    ledger in keyset-paginated batches; each is checked by [`check_one`](Reconciler::check_one)
//!    (wait for the pacer, GET, decide), at most `api.concurrency` at a time; a writer
//!    thread commits the results in groups (see [`writer`]);
//! 3. [`verdict`]: a pure function from what the checks saw to the run's outcome;
//! 4. [`finish`](Reconciler::finish): the `runs` row gets its outcome and counts.
//!
//! Two outcomes end a pass early or change what it writes:
//! - `rate_limited`: UnivaPay imposes a wait longer than a pass sits idle
//!   ([`Reconciler::max_pause`], `schedule.drain_timeout`): the pass stops taking charges,
//!   leaves the rest due, and records `runs.resume_at`. The next pass, in this process or
//!   another, reads the latest `resume_at` first and sends nothing before it: it waits if
//!   the rest of the pause is short, and otherwise ends at once as `rate_limited` again.
//! - `not_found_wall`: every check (at least [`WALL_MIN`]) answered 404. The writer holds
//!   back 404 results until the pass has seen another answer, so that the 404s of such a
//!   pass are written without counting toward any charge's `not_found_limit` (see
//!   [`writer`]).
//!
//! Bounded channels join the threads, so memory stays flat however many charges are due.
//!
//! Stopping: `shutdown` stops the taking of new charges; checks in flight get the drain
//! timeout to finish, then are abandoned (their charges stay untouched and due). A 401/403
//! stops the pass the same way at once.

mod writer;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::cadence::{self, Cadence};
use super::rules::{self, Policy};
use crate::config::{ReconcileSettings, Settings};
use crate::delivery;
use crate::domain::Decision;
use crate::ledger::{
    self, CheckResult, Counts, DueCharge, DueRow, Ledger, LedgerError, Open, Outcome, Trigger,
    Urgency,
};
use crate::lock::PassGuard;
use crate::univapay::{ApiError, Client, ErrorClass, PauseCause, Paused};
use writer::ToWriter;

/// The fewest 404s that make a pass of nothing but 404s a wall rather than a few charges
/// that are really gone.
pub const WALL_MIN: u64 = 3;

/// The longest pause recorded in `runs.resume_at`, like the cap on `Retry-After`: past
/// it, a request finds out whether UnivaPay still wants quiet (a refill computed from odd
/// headers can come out at hours).
pub const MAX_RECORDED_PAUSE: Duration = Duration::from_secs(3600);

/// The time source of a pass; tests substitute a fixed or stepped clock.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
}

/// Wall-clock time.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// What a pass did. Written to `runs` as well.
#[derive(Debug, Clone)]
pub struct PassReport {
    pub run_id: i64,
    pub trigger: Trigger,
    pub outcome: Outcome,
    pub counts: Counts,
    pub elapsed: Duration,
    /// Why the pass did not end `ok`, when it did not.
    pub detail: Option<String>,
    /// No request before this time: UnivaPay asked for a pause (`runs.resume_at`).
    pub resume_at: Option<DateTime<Utc>>,
}

impl PassReport {
    /// The one-line summary printed by `--once` and sent to systemd as `STATUS=`.
    pub fn summary_line(&self) -> String {
        let c = &self.counts;
        format!(
            "pass {} {}: checked {}, transitions {}, mismatches {}, errors {}, {:.2} s",
            self.run_id,
            self.outcome.as_str(),
            c.checked,
            c.transitions,
            c.mismatches,
            c.errors,
            self.elapsed.as_secs_f64()
        )
    }
}

/// The decision rules' knobs, from `[reconcile]` (unstretched).
pub fn policy(r: &ReconcileSettings) -> Policy {
    Policy {
        cadence: Cadence {
            schedule: r.recheck_schedule.as_slice().into(),
            expiry_grace: r.expiry_grace,
            deadline_watch: r.deadline_watch,
            stretch: 1.0,
        },
        retry_backoff: r.retry_backoff,
        retry_backoff_max: r.retry_backoff_max,
        not_found_limit: r.not_found_limit,
    }
}

/// Everything a pass needs, built once from the settings.
#[derive(Clone)]
pub struct Reconciler {
    settings: Arc<Settings>,
    client: Client,
    clock: Arc<dyn Clock>,
    policy: Policy,
    /// Counts checks finished (and pass stages passed), for the daemon's watchdog: a pass
    /// whose count stops moving is stuck.
    progress: Arc<AtomicU64>,
    /// What the open charges ask of the budget, estimated by the latest pass; shared with
    /// every clone so that checks outside passes stretch alike.
    load: Arc<Load>,
}

/// The demand estimate of the latest [`plan`](Reconciler::plan).
#[derive(Default)]
struct Load {
    /// What the latest plan that found charges due counted, and the stretch fitted to it.
    fit: std::sync::Mutex<Option<Fit>>,
    /// Set while a stretched pass reads the urgent due charges first.
    urgency: std::sync::Mutex<Option<Urgency>>,
}

/// The open charges as a plan counted them, and the stretch last fitted to them.
struct Fit {
    open: cadence::OpenCount,
    /// Checks per minute the open charges need under the unstretched schedule.
    demand: f64,
    /// The budget the stretch was last fitted to, and that stretch. Every check asks for
    /// the stretch, and fitting it is a bisection: it runs again only when the plan or
    /// the budget has changed.
    fitted: Option<(Option<f64>, f64)>,
}

/// What [`Reconciler::plan`] found before a pass reads its due charges.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Plan {
    /// Charges due when the pass began.
    pub due: u64,
    /// Checks per minute the open charges need, unstretched (`None`: not estimated,
    /// nothing was due).
    pub demand: Option<f64>,
}

/// How one [`Reconciler::check_one`] ended.
#[derive(Debug)]
pub enum Checked {
    /// Decided and ready to write. `no_answer` says why when no HTTP answer came. For a
    /// 404, `in_wall` is the decision to write instead should every check of the pass
    /// answer 404 (then it does not count toward `not_found_limit`).
    Decided {
        result: Box<CheckResult>,
        no_answer: Option<String>,
        in_wall: Option<Box<Decision>>,
    },
    /// UnivaPay refused our credentials: nothing to write, and the pass must stop.
    AuthRejected(ApiError),
    /// Stopped before the request went out, or abandoned in flight: the charge is
    /// untouched and stays due.
    Skipped,
    /// UnivaPay imposes a wait longer than a pass sits idle; nothing was sent, the charge
    /// is untouched and stays due, and the pass must stop.
    Paused(Paused),
}

/// The two ways a pass is told to stop. `stop` ends the taking of new charges (shutdown,
/// auth failure, writer failure); `abandon` additionally gives up on checks in flight,
/// which happens a drain timeout after `stop`.
#[derive(Clone)]
pub struct Stop {
    pub stop: CancellationToken,
    pub abandon: CancellationToken,
}

impl Stop {
    /// Stop tokens under `shutdown`, with `abandon` following `stop` after `drain`.
    /// The returned guard ends the drain timer; drop it when the checks are done.
    pub fn with_drain(shutdown: &CancellationToken, drain: Duration) -> (Stop, DrainGuard) {
        let stop = shutdown.child_token();
        let abandon = CancellationToken::new();
        let timer = {
            let (stop, abandon) = (stop.clone(), abandon.clone());
            tokio::spawn(async move {
                stop.cancelled().await;
                tokio::time::sleep(drain).await;
                abandon.cancel();
            })
        };
        (Stop { stop, abandon }, DrainGuard(timer))
    }
}

/// Ends the drain timer of a [`Stop`] when dropped.
pub struct DrainGuard(tokio::task::JoinHandle<()>);

impl Drop for DrainGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Reconciler {
    pub fn new(settings: Arc<Settings>) -> anyhow::Result<Self> {
        Self::with_clock(settings, Arc::new(SystemClock))
    }

    pub fn with_clock(settings: Arc<Settings>, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        let client = Client::new(&settings.api)?;
        let policy = policy(&settings.reconcile);
        Ok(Reconciler {
            settings,
            client,
            clock,
            policy,
            progress: Arc::new(AtomicU64::new(0)),
            load: Arc::default(),
        })
    }

    /// The longest a check waits for UnivaPay's permission (a 429's pause, the refill of
    /// its bucket) before the pass ends early as `rate_limited`: `schedule.drain_timeout`,
    /// the time a pass is already given to wind down.
    pub fn max_pause(&self) -> Duration {
        self.settings.schedule.drain_timeout
    }

    /// A number that grows while passes make progress (a check finished, a stage passed).
    pub fn progress(&self) -> u64 {
        self.progress.load(Ordering::Relaxed)
    }

    fn beat(&self) {
        self.progress.fetch_add(1, Ordering::Relaxed);
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// Runs `f` with a ledger connection on the blocking pool.
    pub async fn with_ledger<T: Send + 'static>(
        &self,
        open: Open,
        f: impl FnOnce(Ledger) -> Result<T, LedgerError> + Send + 'static,
    ) -> Result<T, LedgerError> {
        let db = &self.settings.database;
        ledger::with_ledger(&db.path, db.busy_timeout, open, f).await
    }

    /// Opens and migrates the ledger (creating it if needed).
    pub async fn prepare_ledger(&self) -> Result<(), LedgerError> {
        self.with_ledger(Open::Migrate, |_| Ok(())).await
    }

    /// Runs one pass over the charges due now, under the pass lock `held`. `Err` only when
    /// the ledger itself fails; every other ending (auth rejected, API unreachable,
    /// interrupted) is a report.
    pub async fn run_pass(
        &self,
        held: &PassGuard,
        trigger: Trigger,
        shutdown: CancellationToken,
    ) -> Result<PassReport, LedgerError> {
        let started = Instant::now();
        let (ledger, run_id, recorded) = self.begin(held, trigger).await?;
        if let Some(report) = self.respect_pause(run_id, trigger, recorded, started) {
            self.finish(ledger, &report).await?;
            return Ok(report);
        }
        let (ledger, plan) = match self.plan(ledger).await {
            Ok(p) => p,
            Err(e) => {
                self.mark_failed(run_id, &e).await;
                return Err(e);
            }
        };
        let (stop, drain_guard) = Stop::with_drain(&shutdown, self.settings.schedule.drain_timeout);
        let checked = self.check_due(ledger, run_id, &stop).await;
        drop(drain_guard);
        let (ledger, counts, tally) = match checked {
            Ok(done) => done,
            Err(e) => {
                self.mark_failed(run_id, &e).await;
                return Err(e);
            }
        };
        let (outcome, detail) = verdict(&tally, self.max_pause());
        let report = PassReport {
            run_id,
            trigger,
            outcome,
            counts,
            elapsed: started.elapsed(),
            detail,
            resume_at: tally.paused.as_ref().map(|p| self.resume_at(p)),
        };
        let ledger = self.record_budget(ledger, run_id, plan).await?;
        self.finish(ledger, &report).await?;
        Ok(report)
    }

    /// When requests may go again after UnivaPay asked for `pause` (what `runs.resume_at`
    /// records), capped at [`MAX_RECORDED_PAUSE`].
    pub fn resume_at(&self, pause: &crate::univapay::Paused) -> DateTime<Utc> {
        after(self.clock.now(), pause.wait.min(MAX_RECORDED_PAUSE))
    }

    /// A recorded pause (`runs.resume_at`) that has not ended: a short one is imposed on
    /// the client (`Ok`); a longer one is returned, and nothing may be sent before it.
    pub fn honour_pause(&self, recorded: Option<DateTime<Utc>>) -> Result<(), DateTime<Utc>> {
        let Some(resume_at) = recorded else {
            return Ok(());
        };
        let Ok(left) = (resume_at - self.clock.now()).to_std() else {
            return Ok(());
        };
        if left <= self.max_pause() {
            self.client.pause_for(left);
            return Ok(());
        }
        Err(resume_at)
    }

    /// A pause recorded by an earlier pass (`runs.resume_at`) that has not ended: a short
    /// rest is imposed on the client and the pass goes on; a longer one ends this pass at
    /// once, as `rate_limited`, without a request.
    fn respect_pause(
        &self,
        run_id: i64,
        trigger: Trigger,
        recorded: Option<DateTime<Utc>>,
        started: Instant,
    ) -> Option<PassReport> {
        let resume_at = self.honour_pause(recorded).err()?;
        Some(PassReport {
            run_id,
            trigger,
            outcome: Outcome::RateLimited,
            counts: Counts::default(),
            elapsed: started.elapsed(),
            detail: Some(format!(
                "UnivaPay asked for a pause until {} (recorded by an earlier pass); no request before then, every due charge stays due",
                ledger::ts(resume_at)
            )),
            resume_at: Some(resume_at),
        })
    }

    /// The factor the recheck intervals are stretched by now: the open charges the latest
    /// plan counted, fitted to the budget the client knows (1 while either is unknown).
    pub fn stretch(&self) -> f64 {
        let budget = self.client.budget_per_minute();
        let mut fit = self.load.fit.lock().unwrap_or_else(|p| p.into_inner());
        let Some(fit) = fit.as_mut() else {
            return 1.0;
        };
        match fit.fitted {
            Some((fitted_to, stretch)) if fitted_to == budget => stretch,
            _ => {
                let stretch = self.policy.cadence.stretch_to_fit(&fit.open, budget);
                fit.fitted = Some((budget, stretch));
                stretch
            }
        }
    }

    /// Before the due charges are read: how many are due, and, when any is, how many
    /// checks per minute the open charges need under the schedule (kept for
    /// [`stretch`](Self::stretch)). When the budget is known to be short, the pass reads
    /// the urgent charges first: young ones and those at or near their deadline.
    async fn plan(&self, ledger: Ledger) -> Result<(Ledger, Plan), LedgerError> {
        let now = self.clock.now();
        let c = self.policy.cadence.clone();
        let tick = crate::config::cron_period(&self.settings.schedule.cron, now);
        let (ledger, due, open) = ledger::blocking(&self.settings.database.path, move || {
            let due = ledger.count_due(&ledger::ts(now))?;
            if due == 0 {
                return Ok((ledger, due, None));
            }
            let born_after: Vec<String> = c
                .schedule
                .iter()
                .skip(1)
                .map(|s| ts_before(now, s.age))
                .collect();
            let watch_until = ts_after(now, c.deadline_watch);
            let (mut by_step, watched) =
                ledger.count_open_by_age(&born_after, Some((&ledger::ts(now), &watch_until)))?;
            // Bands run youngest first, the schedule's steps too.
            by_step.truncate(c.schedule.len());
            Ok((
                ledger,
                due,
                Some(cadence::OpenCount::new(&by_step, watched, tick)),
            ))
        })
        .await?;
        let demand = open
            .as_ref()
            .map(|o| self.policy.cadence.demand_per_minute(o));
        if let (Some(demand), Some(open)) = (demand, open) {
            *self.load.fit.lock().unwrap_or_else(|p| p.into_inner()) = Some(Fit {
                open,
                demand,
                fitted: None,
            });
        }
        let plan = Plan { due, demand };
        let urgency = (self.stretch() > 1.0).then(|| self.urgency(now)).flatten();
        *self.load.urgency.lock().unwrap_or_else(|p| p.into_inner()) = urgency;
        Ok((ledger, plan))
    }

    /// The urgency bounds for a pass starting at `now`: young is the schedule's first
    /// step; near the deadline is inside the deadline watch (or past the deadline).
    fn urgency(&self, now: DateTime<Utc>) -> Option<Urgency> {
        let c = &self.policy.cadence;
        let young = c.young_until();
        if young.is_none() && c.deadline_watch.is_zero() {
            return None;
        }
        Some(Urgency {
            // With a flat schedule no charge is young: a bound after every created_at.
            born_after: young.map_or_else(|| LATEST.to_owned(), |a| ts_before(now, a)),
            expiring_by: ts_after(now, c.deadline_watch),
        })
    }

    /// Checks per minute the open charges need under the unstretched schedule, as the
    /// latest plan that found charges due counted them (0 before any).
    fn demand(&self) -> f64 {
        let fit = self.load.fit.lock().unwrap_or_else(|p| p.into_inner());
        fit.as_ref().map_or(0.0, |f| f.demand)
    }

    /// Writes the plan's figures and the stretch into the run's row; warns when the
    /// schedule had to stretch.
    async fn record_budget(
        &self,
        ledger: Ledger,
        run_id: i64,
        plan: Plan,
    ) -> Result<Ledger, LedgerError> {
        let stretch = self.stretch();
        if stretch > 1.0 {
            tracing::warn!(
                run_id,
                due = plan.due,
                needed_per_minute = format!("{:.0}", self.demand()),
                budget_per_minute =
                    format!("{:.0}", self.client.budget_per_minute().unwrap_or(0.0)),
                stretch = format!("{stretch:.2}"),
                "the open charges need more checks than the budget share allows; recheck intervals stretched"
            );
        }
        ledger::blocking(&self.settings.database.path, move || {
            ledger.record_budget(run_id, plan.due, stretch)?;
            Ok(ledger)
        })
        .await
    }

    /// Stage 1: runs left `running` are closed as `interrupted` (with the lock held no
    /// other pass can be running, so such a row was left by a process that died mid-pass),
    /// and this pass's `runs` row is inserted. Returns the connection the writer will use,
    /// and the latest `runs.resume_at` (a pause UnivaPay asked for).
    async fn begin(
        &self,
        _held: &PassGuard,
        trigger: Trigger,
    ) -> Result<(Ledger, i64, Option<DateTime<Utc>>), LedgerError> {
        let start_at = self.clock.now();
        let (ledger, closed, run_id, resume_at) = self
            .with_ledger(Open::Migrate, move |ledger| {
                let closed = ledger.close_abandoned_runs()?;
                let resume_at = ledger.resume_at()?;
                let run_id = ledger.begin_run(trigger, start_at)?;
                Ok((ledger, closed, run_id, resume_at))
            })
            .await?;
        self.beat();
        if closed > 0 {
            tracing::warn!(
                runs = closed,
                "marked runs left unfinished by a process that ended as interrupted"
            );
        }
        tracing::debug!(run_id, trigger = trigger.as_str(), "pass started");
        Ok((ledger, run_id, resume_at))
    }

    /// Stage 2: every charge due when the pass began, read, checked and written. Returns
    /// the writer's connection (for the last stage), the committed counts, and the tally
    /// the verdict is made from.
    async fn check_due(
        &self,
        ledger: Ledger,
        run_id: i64,
        stop: &Stop,
    ) -> Result<(Ledger, Counts, Tally), LedgerError> {
        let cutoff = ledger::ts(self.clock.now());
        let (to_writer, writer_rx) = mpsc::channel::<ToWriter>(writer::MAX_GROUP * 2);
        let writer = tokio::task::spawn_blocking({
            let stop = stop.stop.clone();
            move || writer::run(ledger, run_id, writer_rx, stop)
        });
        let (reader, due) = self.read_due(cutoff, stop.stop.clone());

        let stats = PassStats::default();
        due.take_until(stop.stop.clone().cancelled_owned())
            .for_each_concurrent(self.settings.api.concurrency, |row| {
                self.check_and_send(row, stop, &stats, &to_writer)
            })
            .await;
        // The checks are done: the writer learns how to write the 404s it held back.
        let wall = is_wall(&stats.tally(false));
        let _ = to_writer.send(ToWriter::End { wall }).await;
        drop(to_writer);

        let path = &self.settings.database.path;
        let written = writer
            .await
            .unwrap_or_else(|e| Err(ledger::join_error(path, e)));
        let read = reader
            .await
            .unwrap_or_else(|e| Err(ledger::join_error(path, e)));
        let ((ledger, counts), (exhausted, sent)) = (written?, read?);
        let complete = exhausted && stats.done.load(Ordering::Relaxed) == sent;
        Ok((ledger, counts, stats.tally(complete)))
    }

    /// The reader thread: due rows in batches (one channel hand-off per batch, not per
    /// row), until none is left or the pass stops. Its result says whether it saw them
    /// all, and how many rows it handed over.
    #[allow(clippy::type_complexity)]
    fn read_due(
        &self,
        cutoff: String,
        stop: CancellationToken,
    ) -> (
        tokio::task::JoinHandle<Result<(bool, u64), LedgerError>>,
        impl futures::Stream<Item = DueRow> + Send + use<>,
    ) {
        let db = self.settings.database.clone();
        let batch_size = self.settings.reconcile.batch_size;
        let (tx, rx) = mpsc::channel::<Vec<DueRow>>(2);
        // Short of budget: the urgent charges first, then the rest.
        let urgency = self
            .load
            .urgency
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut phases: Vec<Option<(Urgency, bool)>> = match urgency {
            Some(u) => vec![Some((u.clone(), false)), Some((u, true))],
            None => vec![None],
        };
        let reader = tokio::task::spawn_blocking(move || {
            let ledger = Ledger::open_existing(&db.path, db.busy_timeout)?;
            let mut after: Option<(String, String)> = None;
            let mut sent = 0u64;
            let mut phase = phases.pop().flatten();
            loop {
                if stop.is_cancelled() {
                    return Ok((false, sent));
                }
                let position = after.as_ref().map(|(a, b)| (a.as_str(), b.as_str()));
                let urgent = phase.as_ref().map(|(u, want)| (u, *want));
                let batch = ledger.due_batch_where(&cutoff, position, batch_size, urgent)?;
                let Some(last) = batch.last() else {
                    match phases.pop() {
                        Some(next) => {
                            (phase, after) = (next, None);
                            continue;
                        }
                        None => return Ok((true, sent)),
                    }
                };
                after = Some(match last {
                    Ok(c) => (c.next_check_at.clone(), c.charge_id.to_string()),
                    Err(b) => (b.next_check_at.clone(), b.charge_id.clone()),
                });
                let n = batch.len() as u64;
                if tx.blocking_send(batch).is_err() {
                    return Ok((false, sent));
                }
                sent += n;
            }
        });
        let mut rx = rx;
        let rows =
            futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).flat_map(futures::stream::iter);
        (reader, rows)
    }

    /// One due row through [`check_one`](Self::check_one) to the writer, keeping the tally.
    async fn check_and_send(
        &self,
        row: DueRow,
        stop: &Stop,
        stats: &PassStats,
        to_writer: &mpsc::Sender<ToWriter>,
    ) {
        // Whatever way this check ends, it ended: the pass is not stuck.
        let _beat = Beat(self);
        let msg = match row {
            Err(bad) => ToWriter::Bad(bad),
            Ok(charge) => match self.check_one(charge, stop).await {
                Checked::Decided {
                    result,
                    no_answer,
                    in_wall,
                } => {
                    stats.observe(no_answer, in_wall.is_some());
                    match in_wall {
                        Some(in_wall) => ToWriter::NotFound { result, in_wall },
                        None => ToWriter::Checked(result),
                    }
                }
                Checked::AuthRejected(e) => {
                    stats.record_auth(&e);
                    stop.stop.cancel();
                    return;
                }
                Checked::Paused(p) => {
                    stats.record_pause(p);
                    stop.stop.cancel();
                    return;
                }
                Checked::Skipped => return,
            },
        };
        if to_writer.send(msg).await.is_err() {
            // The writer has stopped (it failed); take nothing more.
            stop.stop.cancel();
        } else {
            stats.done.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Checks one charge: waits its turn in the pacer, GETs it, and decides what the
    /// answer does to it. Shared by passes and by anything else that checks a charge.
    pub async fn check_one(&self, charge: DueCharge, stop: &Stop) -> Checked {
        // A charge still waiting for the rate-limit budget when the pass stops is not
        // sent at all; it stays due, untouched.
        let ticket = tokio::select! {
            t = self.client.pace(self.max_pause()) => match t {
                Ok(t) => t,
                Err(paused) => return Checked::Paused(paused),
            },
            () = stop.stop.cancelled() => return Checked::Skipped,
        };
        let fetched = tokio::select! {
            f = self.client.get_charge_paced(ticket, &charge.store_id, &charge.charge_id) => f,
            () = stop.abandon.cancelled() => return Checked::Skipped,
        };
        let result = fetched.result;
        if let Err(e) = &result {
            if e.class() == ErrorClass::Auth {
                return Checked::AuthRejected(e.clone());
            }
            tracing::debug!(charge_id = %charge.charge_id, error = %e, "check failed");
        }
        let now = self.clock.now();
        let jitter = rand::random::<f64>();
        let mut policy = self.policy.clone();
        policy.cadence.stretch = self.stretch();
        let decision = rules::decide(
            &charge.tracked,
            &charge.requested,
            &charge.dates,
            result.as_ref(),
            now,
            &policy,
            jitter,
        );
        let in_wall = matches!(result, Err(ApiError::NotFound)).then(|| {
            Box::new(rules::decide_not_found_in_wall(
                &charge.tracked,
                now,
                &policy,
                jitter,
            ))
        });
        Checked::Decided {
            result: Box::new(CheckResult {
                charge,
                decision,
                checked_at: now,
                shop: result.as_ref().ok().map(|answer| {
                    delivery::facts::shop_facts(
                        &answer.metadata,
                        &self.settings.reconcile.order_key,
                    )
                }),
            }),
            no_answer: result
                .err()
                .filter(ApiError::is_unreachable)
                .map(|e| e.to_string()),
            in_wall,
        }
    }

    /// Stage 4: the run's row gets its outcome, and the log its summary.
    async fn finish(&self, ledger: Ledger, report: &PassReport) -> Result<(), LedgerError> {
        let finished_at = self.clock.now();
        let to_store = report.clone();
        ledger::blocking(&self.settings.database.path, move || {
            if let Some(at) = to_store.resume_at {
                ledger.set_resume_at(to_store.run_id, &ledger::ts(at))?;
            }
            ledger.finish_run(
                to_store.run_id,
                to_store.outcome,
                to_store.counts,
                to_store.detail.as_deref(),
                finished_at,
            )
        })
        .await?;
        self.beat();
        let c = &report.counts;
        tracing::info!(
            run_id = report.run_id,
            outcome = report.outcome.as_str(),
            checked = c.checked,
            transitions = c.transitions,
            mismatches = c.mismatches,
            errors = c.errors,
            seconds = report.elapsed.as_secs_f64(),
            "pass finished"
        );
        Ok(())
    }

    /// Best effort after the ledger failed mid-pass: record the run as `failed` with the
    /// cause, on a fresh connection. When even that cannot be written (the disk is full,
    /// say), the row stays `running` and the next pass marks it `interrupted`.
    async fn mark_failed(&self, run_id: i64, cause: &LedgerError) {
        let detail = cause.to_string();
        let now = self.clock.now();
        let written = self
            .with_ledger(Open::Existing, move |ledger| {
                ledger.fail_run(run_id, &detail, now)
            })
            .await;
        if let Err(e) = written {
            tracing::debug!(run_id, error = %e, "could not mark the run failed");
        }
    }
}

/// The first and last ledger timestamps SQLite's date functions read (years 0 to 9999).
const EARLIEST: &str = "0000-01-01T00:00:00.000Z";
const LATEST: &str = "9999-12-31T23:59:59.999Z";

/// The ledger timestamp `d` before `now`, no earlier than [`EARLIEST`].
fn ts_before(now: DateTime<Utc>, d: Duration) -> String {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| now.checked_sub_signed(d))
        .map(ledger::ts)
        .filter(|t| t.as_str() >= EARLIEST && t.len() == EARLIEST.len())
        .unwrap_or_else(|| EARLIEST.to_owned())
}

/// The ledger timestamp `d` after `now`, no later than [`LATEST`].
fn ts_after(now: DateTime<Utc>, d: Duration) -> String {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .map(ledger::ts)
        .filter(|t| t.as_str() <= LATEST && t.len() == LATEST.len())
        .unwrap_or_else(|| LATEST.to_owned())
}

/// What the checks of one pass saw, as far as its outcome is concerned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// Checks that got an HTTP answer.
    pub reached: u64,
    /// Checks that got none (connection failed, timed out).
    pub unreachable: u64,
    /// The last of those failures, to name in the outcome.
    pub last_unreachable: Option<String>,
    /// The credentials were refused (the first such error).
    pub auth: Option<String>,
    /// Checks answered 404 (counted in `reached` too).
    pub not_found: u64,
    /// UnivaPay imposed a wait longer than a pass sits idle (the longest seen).
    pub paused: Option<Paused>,
    /// Every due row was read and handled.
    pub complete: bool,
}

/// Whether every check of the pass, at least [`WALL_MIN`] of them, answered 404.
pub fn is_wall(t: &Tally) -> bool {
    t.not_found >= WALL_MIN && t.not_found == t.reached + t.unreachable
}

/// Stage 3: the outcome of a pass, and why, from its tally. `max_pause` is the wait a
/// pass sits through, named in the detail of a `rate_limited` pass.
pub fn verdict(t: &Tally, max_pause: Duration) -> (Outcome, Option<String>) {
    if let Some(e) = &t.auth {
        return (
            Outcome::AuthFailed,
            Some(format!(
                "{e}; pass stopped (check api.secret and api.app_token)"
            )),
        );
    }
    if t.reached == 0 && t.unreachable > 0 {
        return (
            Outcome::Unreachable,
            Some(format!(
                "UnivaPay could not be reached for any of {} charges ({})",
                t.unreachable,
                t.last_unreachable
                    .as_deref()
                    .unwrap_or("connection failed or timed out")
            )),
        );
    }
    if is_wall(t) {
        return (
            Outcome::NotFoundWall,
            Some(format!(
                "every one of the {} charges checked answered 404 (not found): is api.base_url right, and are the credentials those of the account and mode (test or live) the charges belong to? These 404s do not count toward reconcile.not_found_limit",
                t.not_found
            )),
        );
    }
    if let Some(p) = &t.paused {
        let why = match p.cause {
            PauseCause::RateLimited => "",
            PauseCause::Refill => " (its rate-limit headers)",
        };
        return (
            Outcome::RateLimited,
            Some(format!(
                "{p}{why}, longer than a pass waits (schedule.drain_timeout {}); the pass ended early, the charges not reached stay due, and no request goes before runs.resume_at",
                humantime::format_duration(max_pause)
            )),
        );
    }
    if !t.complete {
        return (Outcome::Interrupted, Some("stopped by shutdown".to_owned()));
    }
    (Outcome::Ok, None)
}

fn after(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| t.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Counts one finished check toward [`Reconciler::progress`] when dropped.
struct Beat<'a>(&'a Reconciler);

impl Drop for Beat<'_> {
    fn drop(&mut self) {
        self.0.beat();
    }
}

/// Counters shared by the concurrent checks of one pass.
#[derive(Default)]
struct PassStats {
    /// Due rows fully handled (sent to the writer).
    done: AtomicU64,
    reached: AtomicU64,
    unreachable: AtomicU64,
    last_unreachable: std::sync::Mutex<Option<String>>,
    auth: std::sync::Mutex<Option<String>>,
    not_found: AtomicU64,
    paused: std::sync::Mutex<Option<Paused>>,
}

impl PassStats {
    fn observe(&self, no_answer: Option<String>, not_found: bool) {
        if not_found {
            self.not_found.fetch_add(1, Ordering::Relaxed);
        }
        let Some(why) = no_answer else {
            self.reached.fetch_add(1, Ordering::Relaxed);
            return;
        };
        self.unreachable.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut l) = self.last_unreachable.lock() {
            *l = Some(why);
        }
    }

    fn record_auth(&self, e: &ApiError) {
        if let Ok(mut a) = self.auth.lock() {
            a.get_or_insert_with(|| e.to_string());
        }
    }

    fn record_pause(&self, p: Paused) {
        if let Ok(mut slot) = self.paused.lock()
            && slot.is_none_or(|q| q.wait < p.wait)
        {
            *slot = Some(p);
        }
    }

    fn tally(&self, complete: bool) -> Tally {
        Tally {
            reached: self.reached.load(Ordering::Relaxed),
            unreachable: self.unreachable.load(Ordering::Relaxed),
            last_unreachable: self.last_unreachable.lock().ok().and_then(|g| g.clone()),
            auth: self.auth.lock().ok().and_then(|a| a.clone()),
            not_found: self.not_found.load(Ordering::Relaxed),
            paused: self.paused.lock().ok().and_then(|p| *p),
            complete,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts() {
        let ok = Tally {
            reached: 3,
            complete: true,
            ..Tally::default()
        };
        let v = |t: &Tally| verdict(t, Duration::from_secs(30));
        assert_eq!(v(&ok), (Outcome::Ok, None));
        let empty = Tally {
            complete: true,
            ..Tally::default()
        };
        assert_eq!(v(&empty).0, Outcome::Ok);
        let auth = Tally {
            auth: Some("401".into()),
            ..ok.clone()
        };
        assert_eq!(v(&auth).0, Outcome::AuthFailed);
        let down = Tally {
            reached: 0,
            unreachable: 4,
            ..ok.clone()
        };
        let (o, d) = v(&down);
        assert_eq!(o, Outcome::Unreachable);
        assert!(d.unwrap().contains("any of 4 charges"));
        let some_down = Tally {
            unreachable: 4,
            ..ok.clone()
        };
        assert_eq!(v(&some_down).0, Outcome::Ok);
        let cut = Tally {
            complete: false,
            ..ok
        };
        assert_eq!(v(&cut).0, Outcome::Interrupted);
    }

    #[test]
    fn a_pass_of_nothing_but_404s_is_a_wall() {
        let v = |t: &Tally| verdict(t, Duration::from_secs(30));
        let wall = Tally {
            reached: 3,
            not_found: 3,
            complete: true,
            ..Tally::default()
        };
        assert!(is_wall(&wall));
        let (o, d) = v(&wall);
        assert_eq!(o, Outcome::NotFoundWall);
        assert!(o.is_failure());
        let d = d.unwrap();
        assert!(
            d.contains("every one of the 3") && d.contains("api.base_url"),
            "{d}"
        );
        // Too few to say; one other answer; a timeout among them: not a wall.
        for t in [
            Tally {
                reached: 2,
                not_found: 2,
                ..wall.clone()
            },
            Tally {
                reached: 4,
                not_found: 3,
                ..wall.clone()
            },
            Tally {
                unreachable: 1,
                ..wall.clone()
            },
        ] {
            assert!(!is_wall(&t), "{t:?}");
            assert_ne!(v(&t).0, Outcome::NotFoundWall);
        }
        // Credentials refused still come first.
        let auth = Tally {
            auth: Some("401".into()),
            ..wall.clone()
        };
        assert_eq!(v(&auth).0, Outcome::AuthFailed);
        // A wall interrupted by shutdown is still a wall.
        assert_eq!(
            v(&Tally {
                complete: false,
                ..wall
            })
            .0,
            Outcome::NotFoundWall
        );
    }

    #[test]
    fn a_long_pause_ends_the_pass_as_rate_limited() {
        let paused = Tally {
            reached: 5,
            paused: Some(Paused {
                wait: Duration::from_secs(3600),
                cause: PauseCause::RateLimited,
            }),
            complete: false,
            ..Tally::default()
        };
        let (o, d) = verdict(&paused, Duration::from_secs(30));
        assert_eq!(o, Outcome::RateLimited);
        assert!(!o.is_failure());
        let d = d.unwrap();
        assert!(
            d.contains("pause of 1h") && d.contains("drain_timeout 30s"),
            "{d}"
        );
        let refill = Tally {
            paused: Some(Paused {
                wait: Duration::from_secs(120),
                cause: PauseCause::Refill,
            }),
            ..paused
        };
        let d = verdict(&refill, Duration::from_secs(30)).1.unwrap();
        assert!(d.contains("refill") && d.contains("2m"), "{d}");
    }
}
