//! One reconciliation pass over the due charges, in named stages on the run protocol
//! ([`super::run`]):
//!
//! 1. [`Run::open`]: the `runs` row, and a pause recorded earlier honoured before any
//!    request; then `plan`: count the due backlog and estimate the
//!    checks per minute the open charges need under the recheck schedule, against which
//!    the budget share stretches the intervals (see [`super::fit`]);
//! 2. `check_due`: a reader thread streams due charges from the
//!    ledger in keyset-paginated batches; each is checked by
//!    [`Checker::check_one`](super::Checker::check_one) (wait for the pacer, GET, decide),
//!    at most `api.concurrency` at a time; a writer thread commits the results in groups
//!    (see `writer`);
//! 3. [`verdict`](super::run::verdict) and [`Run::finish`]: the outcome from the tally, into
//!    the `runs` row.
//!
//! Two outcomes end a pass early or change what it writes:
//! - `rate_limited`: UnivaPay imposes a wait longer than a pass sits idle
//!   ([`Context::max_pause`], `schedule.drain_timeout`): the pass stops taking charges,
//!   leaves the rest due, and records `runs.resume_at`. Every later run, in this process or
//!   another, reads the latest `resume_at` first and sends nothing before it.
//! - `not_found_wall`: every check (at least [`WALL_MIN`](super::run::WALL_MIN)) answered
//!   404. The writer holds back 404 results until the pass has seen another answer, so
//!   that the 404s of such a pass are written without counting toward any charge's
//!   `not_found_limit` (see `writer`).
//!
//! Bounded channels join the threads, so memory stays flat however many charges are due.
//!
//! Stopping: `shutdown` stops the taking of new charges; checks in flight get the drain
//! timeout to finish, then are abandoned (their charges stay untouched and due). A 401/403
//! stops the pass the same way at once.

mod writer;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::cadence;
use super::fit::{self, Plan};
use super::run::{Run, RunReport, Tally, is_wall};
use super::single::{Checked, Checker};
use super::stop::Stop;
use crate::config::Settings;
use crate::context::{Clock, Context};
use crate::ledger::{self, Counts, DueRow, Ledger, LedgerError, Open, Timestamp, Trigger, Urgency};
use crate::lock::PassGuard;
use crate::univapay::{ApiError, Client, Paused};
use writer::ToWriter;

/// The pass engine: a `Checker` (and through it the `Context`) and the stages of a
/// pass. Cheap to clone. It dereferences to its context, so a `&Reconciler` can be handed
/// to anything that takes a `&Context`.
#[derive(Clone)]
pub struct Reconciler {
    checker: Checker,
}

impl std::ops::Deref for Reconciler {
    type Target = Context;

    fn deref(&self) -> &Context {
        self.checker.context()
    }
}

impl Reconciler {
    /// A pass engine on a new context on the wall clock.
    pub fn new(settings: Arc<Settings>) -> anyhow::Result<Self> {
        Ok(Self::on(Context::new(settings)?))
    }

    /// A pass engine on a new context on `clock` (tests, simulations).
    pub fn with_clock(settings: Arc<Settings>, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        Ok(Self::on(Context::with_clock(settings, clock)?))
    }

    /// A pass engine on `ctx` (sharing its client, hence its pacer and budget).
    pub(crate) fn on(ctx: Context) -> Self {
        Reconciler {
            checker: Checker::new(ctx),
        }
    }

    pub fn context(&self) -> &Context {
        self.checker.context()
    }

    /// The single check this engine uses, for checks outside passes (hints, `check`).
    pub fn checker(&self) -> &Checker {
        &self.checker
    }

    pub fn settings(&self) -> &Settings {
        self.context().settings()
    }

    pub(crate) fn client(&self) -> &Client {
        self.context().client()
    }

    /// See `Checker::stretch`.
    pub fn stretch(&self) -> f64 {
        self.checker.stretch()
    }

    /// Runs one pass over the charges due now, under the pass lock `held`. `Err` only when
    /// the ledger itself fails; every other ending (auth rejected, API unreachable,
    /// interrupted, paused) is a report.
    pub async fn run_pass(
        &self,
        held: &PassGuard,
        trigger: Trigger,
        shutdown: CancellationToken,
    ) -> Result<RunReport, LedgerError> {
        let (run, ledger) = Run::open(self.context(), held, trigger).await?;
        self.checker.beat();
        let span = run.span().clone();
        self.pass_in_run(run, ledger, shutdown)
            .instrument(span)
            .await
    }

    async fn pass_in_run(
        &self,
        run: Run,
        ledger: Ledger,
        shutdown: CancellationToken,
    ) -> Result<RunReport, LedgerError> {
        if let Some(report) = run.honour_pause() {
            return self.finished(run.finish(ledger, report).await);
        }
        let (ledger, plan) = match self.plan(ledger).await {
            Ok(p) => p,
            Err(e) => {
                run.fail(&e).await;
                return Err(e);
            }
        };
        let drain = self.settings().schedule.drain_timeout;
        let (stop, drain_guard) = Stop::with_drain(&shutdown, drain);
        let checked = self.check_due(ledger, run.id().unwrap_or(0), &stop).await;
        drop(drain_guard);
        let (ledger, counts, tally) = match checked {
            Ok(done) => done,
            Err(e) => {
                run.fail(&e).await;
                return Err(e);
            }
        };
        let report = run.report(&tally, counts);
        let ledger = self.record_budget(ledger, report.run_id, plan).await?;
        self.finished(run.finish(ledger, report).await)
    }

    fn finished(&self, r: Result<RunReport, LedgerError>) -> Result<RunReport, LedgerError> {
        self.checker.beat();
        r
    }

    /// Before the due charges are read: how many are due, and, when any is, how many
    /// checks per minute the open charges need under the schedule (kept in the shared
    /// [`fit::BudgetFit`]). When the budget is known to be short, the pass reads the
    /// urgent charges first: young ones and those at or near their deadline.
    async fn plan(&self, ledger: Ledger) -> Result<(Ledger, Plan), LedgerError> {
        let now = self.now();
        let c = self.checker.policy().cadence.clone();
        let tick = crate::config::cron_period(&self.settings().schedule.cron, now);
        let (ledger, due, open) = self
            .blocking(move || {
                let due = ledger.count_due(Timestamp::new(now))?;
                if due == 0 {
                    return Ok((ledger, due, None));
                }
                let born_after: Vec<Timestamp> = c
                    .schedule
                    .iter()
                    .skip(1)
                    .map(|s| Timestamp::before(now, s.age))
                    .collect();
                let watch_until = Timestamp::after(now, c.deadline_watch);
                let (mut by_step, watched) = ledger
                    .count_open_by_age(&born_after, Some((Timestamp::new(now), watch_until)))?;
                // Bands run youngest first, the schedule's steps too.
                by_step.truncate(c.schedule.len());
                Ok((
                    ledger,
                    due,
                    Some(cadence::OpenCount::new(&by_step, watched, tick)),
                ))
            })
            .await?;
        let cadence = &self.checker.policy().cadence;
        let demand = open.as_ref().map(|o| cadence.demand_per_minute(o));
        if let (Some(demand), Some(open)) = (demand, open) {
            self.checker.fit().counted(open, demand);
        }
        let urgency = (self.stretch() > 1.0)
            .then(|| fit::urgency(cadence, now))
            .flatten();
        self.checker.fit().set_urgency(urgency);
        Ok((ledger, Plan { due, demand }))
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
                needed_per_minute = format!("{:.0}", self.checker.fit().demand()),
                budget_per_minute =
                    format!("{:.0}", self.client().budget_per_minute().unwrap_or(0.0)),
                stretch = format!("{stretch:.2}"),
                "the open charges need more checks than the budget share allows; recheck intervals stretched"
            );
        }
        self.blocking(move || {
            ledger.record_budget(run_id, plan.due, stretch)?;
            Ok(ledger)
        })
        .await
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
        let cutoff = Timestamp::new(self.now());
        let (to_writer, writer_rx) = mpsc::channel::<ToWriter>(writer::MAX_GROUP * 2);
        let writer = tokio::task::spawn_blocking({
            let stop = stop.stop.clone();
            // The writer's lines (a charge moved, a mismatch) belong to the run.
            let span = tracing::Span::current();
            move || span.in_scope(|| writer::run(ledger, run_id, writer_rx, stop))
        });
        let (reader, due) = self.read_due(cutoff, stop.stop.clone());

        let stats = PassStats::default();
        due.take_until(stop.stop.clone().cancelled_owned())
            .for_each_concurrent(self.settings().api.concurrency, |row| {
                self.check_and_send(row, stop, &stats, &to_writer)
            })
            .await;
        // The checks are done: the writer learns how to write the 404s it held back.
        let wall = is_wall(&stats.tally(false));
        let _ = to_writer.send(ToWriter::End { wall }).await;
        drop(to_writer);

        let path = &self.settings().database.path;
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
        cutoff: Timestamp,
        stop: CancellationToken,
    ) -> (
        tokio::task::JoinHandle<Result<(bool, u64), LedgerError>>,
        impl futures::Stream<Item = DueRow> + Send + use<>,
    ) {
        let db = self.database().clone();
        let batch_size = self.settings().reconcile.batch_size;
        let (tx, rx) = mpsc::channel::<Vec<DueRow>>(2);
        // Short of budget: the urgent charges first, then the rest.
        let phases: Vec<Option<(Urgency, bool)>> = match self.checker.fit().urgency() {
            Some(u) => vec![Some((u.clone(), false)), Some((u, true))],
            None => vec![None],
        };
        let reader = tokio::task::spawn_blocking(move || {
            let ledger = db.open(Open::Existing)?;
            read_phases(&ledger, cutoff, batch_size, phases, &tx, &stop)
        });
        let mut rx = rx;
        let rows =
            futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).flat_map(futures::stream::iter);
        (reader, rows)
    }

    /// One due row through [`Checker::check_one`] to the writer, keeping the tally.
    async fn check_and_send(
        &self,
        row: DueRow,
        stop: &Stop,
        stats: &PassStats,
        to_writer: &mpsc::Sender<ToWriter>,
    ) {
        // Whatever way this check ends, it ended: the pass is not stuck.
        let _beat = Beat(&self.checker);
        let msg = match row {
            Err(bad) => ToWriter::Bad(bad),
            Ok(charge) => {
                let checked = self.checker.check_one(charge, stop).await;
                if checked.sent() {
                    stats.requests.fetch_add(1, Ordering::Relaxed);
                }
                match checked {
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
                }
            }
        };
        if to_writer.send(msg).await.is_err() {
            // The writer has stopped (it failed); take nothing more.
            stop.stop.cancel();
        } else {
            stats.done.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The reader thread's loop over the phases (urgent first when short of budget): due rows
/// in keyset order, handed over a batch at a time. Returns whether it saw them all, and how
/// many rows it handed over.
fn read_phases(
    ledger: &Ledger,
    cutoff: Timestamp,
    batch_size: usize,
    mut phases: Vec<Option<(Urgency, bool)>>,
    tx: &mpsc::Sender<Vec<DueRow>>,
    stop: &CancellationToken,
) -> Result<(bool, u64), LedgerError> {
    let mut after: Option<(String, String)> = None;
    let mut sent = 0u64;
    let mut phase = phases.pop().flatten();
    loop {
        if stop.is_cancelled() {
            return Ok((false, sent));
        }
        let position = after.as_ref().map(|(a, b)| (a.as_str(), b.as_str()));
        let urgent = phase.as_ref().map(|(u, want)| (u, *want));
        let batch = ledger.due_batch_where(cutoff, position, batch_size, urgent)?;
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
}

/// Counts one finished check toward [`Checker::progress`] when dropped.
struct Beat<'a>(&'a Checker);

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
    requests: AtomicU64,
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
            requests: self.requests.load(Ordering::Relaxed),
        }
    }
}
