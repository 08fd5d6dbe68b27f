//! One reconciliation pass.
//!
//! Three stages joined by bounded channels, so memory stays flat however many charges are
//! due:
//! 1. a reader thread streams due charges from the ledger in keyset-paginated batches;
//! 2. async checks run at most `api.concurrency` at a time, each waiting its turn in the
//!    client's rate-limit pacer ([`crate::univapay::Pacer`]), and each answer is turned into
//!    a [`Decision`](super::rules::Decision) by the pure rules;
//! 3. a writer thread commits results, grouping whatever is ready into one transaction
//!    (each charge in its own savepoint), and logs what was written.
//!
//! Stopping: `shutdown` stops the taking of new charges; checks in flight get the drain
//! timeout to finish, then are abandoned (their charges stay untouched and due). A 401/403
//! stops the pass the same way at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::rules::{self, Policy};
use crate::config::Settings;
use crate::ledger::{self, Applied, BadRow, CheckResult, Counts, DueRow, Ledger, Outcome, Trigger};
use crate::univapay::{ApiError, Client, ErrorClass};

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

/// Everything a pass needs, built once from the settings.
#[derive(Clone)]
pub struct Reconciler {
    settings: Arc<Settings>,
    client: Client,
    clock: Arc<dyn Clock>,
}

/// Messages to the writer thread.
enum ToWriter {
    Checked(Box<CheckResult>),
    Bad(BadRow),
}

/// Most results committed in one transaction. Bounds how much one commit holds and how
/// long a reader elsewhere can be made to wait.
const MAX_GROUP: usize = 256;

impl Reconciler {
    pub fn new(settings: Arc<Settings>) -> anyhow::Result<Self> {
        Self::with_clock(settings, Arc::new(SystemClock))
    }

    pub fn with_clock(settings: Arc<Settings>, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        let client = Client::new(&settings.api)?;
        Ok(Reconciler {
            settings,
            client,
            clock,
        })
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Opens and migrates the ledger (creating it if needed).
    pub async fn prepare_ledger(&self) -> Result<(), ledger::LedgerError> {
        let db = self.settings.database.clone();
        ledger::blocking(&db.path.clone(), move || {
            Ledger::open(&db.path, db.busy_timeout).map(drop)
        })
        .await
    }

    /// Runs one pass over the charges due now. `Err` only when the ledger itself fails;
    /// every other ending (auth rejected, API unreachable, interrupted) is a report.
    pub async fn run_pass(
        &self,
        trigger: Trigger,
        shutdown: CancellationToken,
    ) -> Result<PassReport, ledger::LedgerError> {
        let started = Instant::now();
        let start_at = self.clock.now();
        let cutoff = ledger::ts(start_at);
        let db = self.settings.database.clone();
        let batch_size = self.settings.reconcile.batch_size;

        let (writer_ledger, run_id) = {
            let db = db.clone();
            ledger::blocking(&db.path.clone(), move || {
                let ledger = Ledger::open(&db.path, db.busy_timeout)?;
                let run_id = ledger.begin_run(trigger, start_at)?;
                Ok((ledger, run_id))
            })
            .await?
        };
        tracing::debug!(run_id, trigger = trigger.as_str(), "pass started");

        // `stop` ends the taking of new charges (shutdown, auth failure, writer failure);
        // `abandon` additionally gives up on checks still in flight.
        let stop = shutdown.child_token();
        let abandon = CancellationToken::new();
        let drain = self.settings.schedule.drain_timeout;
        let drain_guard = {
            let (stop, abandon) = (stop.clone(), abandon.clone());
            tokio::spawn(async move {
                stop.cancelled().await;
                tokio::time::sleep(drain).await;
                abandon.cancel();
            })
        };

        let (to_writer, writer_rx) = mpsc::channel::<ToWriter>(MAX_GROUP * 2);
        let writer = tokio::task::spawn_blocking({
            let stop = stop.clone();
            move || writer_loop(writer_ledger, run_id, writer_rx, stop)
        });

        let (due_tx, due_rx) = mpsc::channel::<DueRow>(batch_size);
        let reader = tokio::task::spawn_blocking({
            let db = db.clone();
            let stop = stop.clone();
            move || -> Result<(bool, u64), ledger::LedgerError> {
                let ledger = Ledger::open_existing(&db.path, db.busy_timeout)?;
                let mut after: Option<(String, String)> = None;
                let mut sent = 0u64;
                loop {
                    if stop.is_cancelled() {
                        return Ok((false, sent));
                    }
                    let batch = ledger.due_batch(
                        &cutoff,
                        after.as_ref().map(|(a, b)| (a.as_str(), b.as_str())),
                        batch_size,
                    )?;
                    let Some(last) = batch.last() else {
                        return Ok((true, sent));
                    };
                    after = Some(match last {
                        Ok(c) => (c.next_check_at.clone(), c.charge_id.to_string()),
                        Err(b) => (b.next_check_at.clone(), b.charge_id.clone()),
                    });
                    for row in batch {
                        if due_tx.blocking_send(row).is_err() {
                            return Ok((false, sent));
                        }
                        sent += 1;
                    }
                }
            }
        });

        let stats = Arc::new(PassStats::default());
        let policy = Policy::from_settings(&self.settings.reconcile);
        tokio_stream_from(due_rx)
            .take_until(stop.clone().cancelled_owned())
            .for_each_concurrent(self.settings.api.concurrency, |row| {
                let to_writer = to_writer.clone();
                let stats = stats.clone();
                let (stop, abandon) = (stop.clone(), abandon.clone());
                async move {
                    let msg = match row {
                        Err(bad) => ToWriter::Bad(bad),
                        Ok(charge) => {
                            // A charge still waiting for the rate-limit budget when the
                            // pass stops is not sent at all; it stays due, untouched.
                            let ticket = tokio::select! {
                                t = self.client.pace() => t,
                                () = stop.cancelled() => return,
                            };
                            let fetched = tokio::select! {
                                f = self.client.get_charge_paced(ticket, &charge.store_id, &charge.charge_id) => f,
                                () = abandon.cancelled() => return,
                            };
                            let result = fetched.result;
                            match &result {
                                Err(e) if e.class() == ErrorClass::Auth => {
                                    stats.record_auth(e);
                                    stop.cancel();
                                    return;
                                }
                                Err(e) if e.is_unreachable() => stats.unreachable(e),
                                _ => stats.reached(),
                            }
                            let now = self.clock.now();
                            let decision = rules::decide(
                                &charge.tracked,
                                &charge.requested,
                                result.as_ref(),
                                now,
                                &policy,
                                rand::random::<f64>(),
                            );
                            if let Err(e) = &result {
                                tracing::debug!(charge_id = %charge.charge_id, error = %e, "check failed");
                            }
                            ToWriter::Checked(Box::new(CheckResult {
                                charge,
                                decision,
                                checked_at: now,
                            }))
                        }
                    };
                    if to_writer.send(msg).await.is_err() {
                        // The writer has stopped (it failed); take nothing more.
                        stop.cancel();
                    } else {
                        stats.done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
            .await;
        drop(to_writer);
        drain_guard.abort();

        let writer_result = writer
            .await
            .unwrap_or_else(|e| Err(ledger::join_error(&db.path, e)));
        let reader_result = reader
            .await
            .unwrap_or_else(|e| Err(ledger::join_error(&db.path, e)));
        let (ledger, counts, exhausted, sent) = match (writer_result, reader_result) {
            (Ok((ledger, counts)), Ok((exhausted, sent))) => (ledger, counts, exhausted, sent),
            (Err(e), _) | (_, Err(e)) => {
                self.mark_failed(run_id, &e).await;
                return Err(e);
            }
        };
        let complete = exhausted && stats.done.load(Ordering::Relaxed) == sent;

        let auth = stats.auth.lock().ok().and_then(|mut a| a.take());
        let (reached, unreachable) = (
            stats.reached.load(Ordering::Relaxed),
            stats.unreachable.load(Ordering::Relaxed),
        );
        let (outcome, detail) = if let Some(e) = auth {
            (
                Outcome::AuthFailed,
                Some(format!(
                    "{e}; pass stopped (check api.secret and api.app_token)"
                )),
            )
        } else if reached == 0 && unreachable > 0 {
            (
                Outcome::Unreachable,
                Some(format!(
                    "UnivaPay could not be reached for any of {unreachable} charges ({})",
                    stats.last_unreachable()
                )),
            )
        } else if !complete {
            (Outcome::Interrupted, Some("stopped by shutdown".to_owned()))
        } else {
            (Outcome::Ok, None)
        };
        let report = PassReport {
            run_id,
            trigger,
            outcome,
            counts,
            elapsed: started.elapsed(),
            detail,
        };
        let finished_at = self.clock.now();
        let to_store = report.clone();
        ledger::blocking(&db.path, move || {
            ledger.finish_run(
                to_store.run_id,
                to_store.outcome,
                to_store.counts,
                to_store.detail.as_deref(),
                finished_at,
            )
        })
        .await?;
        tracing::info!(
            run_id,
            outcome = outcome.as_str(),
            checked = counts.checked,
            transitions = counts.transitions,
            mismatches = counts.mismatches,
            errors = counts.errors,
            seconds = report.elapsed.as_secs_f64(),
            "pass finished"
        );
        Ok(report)
    }

    /// Best effort after the ledger failed mid-pass: record the run as `failed` with the
    /// cause, on a fresh connection. When even that cannot be written (the disk is full,
    /// say), the row stays `running` and the next pass marks it `interrupted`.
    async fn mark_failed(&self, run_id: i64, cause: &ledger::LedgerError) {
        let db = self.settings.database.clone();
        let detail = cause.to_string();
        let now = self.clock.now();
        let written = ledger::blocking(&db.path.clone(), move || {
            let ledger = Ledger::open_existing(&db.path, db.busy_timeout)?;
            ledger.fail_run(run_id, &detail, now)
        })
        .await;
        if let Err(e) = written {
            tracing::debug!(run_id, error = %e, "could not mark the run failed");
        }
    }
}

#[derive(Default)]
struct PassStats {
    /// Due rows fully handled (sent to the writer).
    done: AtomicU64,
    reached: AtomicU64,
    unreachable: AtomicU64,
    last_unreachable: std::sync::Mutex<Option<String>>,
    auth: std::sync::Mutex<Option<ApiError>>,
}

impl PassStats {
    fn reached(&self) {
        self.reached.fetch_add(1, Ordering::Relaxed);
    }
    fn unreachable(&self, e: &ApiError) {
        self.unreachable.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut l) = self.last_unreachable.lock() {
            *l = Some(e.to_string());
        }
    }
    fn record_auth(&self, e: &ApiError) {
        if let Ok(mut a) = self.auth.lock() {
            a.get_or_insert_with(|| e.clone());
        }
    }
    fn last_unreachable(&self) -> String {
        self.last_unreachable
            .lock()
            .ok()
            .and_then(|g| g.clone())
            .unwrap_or_else(|| "connection failed or timed out".into())
    }
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Commits results as they come, grouping what is ready into one transaction.
fn writer_loop(
    mut ledger: Ledger,
    run_id: i64,
    mut rx: mpsc::Receiver<ToWriter>,
    stop: CancellationToken,
) -> Result<(Ledger, Counts), ledger::LedgerError> {
    let mut totals = Counts::default();
    let mut group: Vec<CheckResult> = Vec::with_capacity(MAX_GROUP);
    while let Some(first) = rx.blocking_recv() {
        let mut next = Some(first);
        while let Some(msg) = next {
            match msg {
                ToWriter::Checked(r) => group.push(*r),
                ToWriter::Bad(bad) => {
                    tracing::warn!(charge_id = %bad.charge_id, problem = %bad.problem, "ledger row cannot be checked");
                    if let Err(e) = ledger.record_bad_row(run_id, &bad, Utc::now()) {
                        stop.cancel();
                        return Err(e);
                    }
                    totals.errors += 1;
                }
            }
            next = if group.len() < MAX_GROUP {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        if group.is_empty() {
            continue;
        }
        match ledger.apply(run_id, &group) {
            Ok(applied) => {
                log_applied(&group, &applied);
                totals += applied.counts;
            }
            Err(e) => {
                stop.cancel();
                return Err(e);
            }
        }
        group.clear();
    }
    Ok((ledger, totals))
}

/// One line per transition and per new mismatch, only for what was committed.
fn log_applied(group: &[CheckResult], applied: &Applied) {
    for (r, written) in group.iter().zip(&applied.written) {
        if !written {
            continue;
        }
        let t = &r.decision.after;
        if let Some((from, to)) = r.decision.transition() {
            tracing::info!(
                charge_id = %r.charge.charge_id,
                from = from.as_str(),
                to = to.as_str(),
                provider_status = t.provider_status.as_deref().unwrap_or(""),
                requested_amount = r.charge.requested.amount,
                charged_amount = t.charged_amount,
                "charge moved"
            );
        }
        if r.decision.new_mismatch() {
            tracing::warn!(
                charge_id = %r.charge.charge_id,
                requested_amount = r.charge.requested.amount,
                requested_currency = %r.charge.requested.currency,
                charged_amount = t.charged_amount,
                charged_currency = t.charged_currency.as_deref().unwrap_or(""),
                detail = t.mismatch_detail.as_deref().unwrap_or(""),
                "amount mismatch"
            );
        }
        if let Some(e) = &t.last_error
            && r.decision
                .events
                .iter()
                .any(|e| e.kind == rules::EventKind::GaveUp)
        {
            tracing::warn!(charge_id = %r.charge.charge_id, error = %e, "charge no longer checked");
        }
    }
}
