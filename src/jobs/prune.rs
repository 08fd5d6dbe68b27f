//! Retention as a job of the job loop: prunes what `[retention]` names (see the ledger's
//! `retention` module for what may go and what never does) in bounded steps.
//!
//! `When::Own`, first round [`FIRST_AFTER`] after the daemon starts, then one every
//! [`EVERY`]. A round works through each kind of row until nothing older than its cutoff
//! is left: steps of at most [`STEP_ROWS`] rows and [`STEP_BUDGET`] of write lock,
//! [`STEP_PAUSE`] apart, the shutdown checked between them. `--once` runs a round when the last one (recorded in the
//! ledger's `meta`, whichever process ran it) ended [`EVERY`] ago or more, so a
//! `--once` timer prunes about as often as the daemon would.
//!
//! With `retention.archive`, a round then moves the final charges older than it to the
//! archive file (see the ledger's `archive` module), in the same discipline: steps of
//! at most [`ARCHIVE_CHARGES`] charges, each a copy (which holds only the archive's
//! lock) and then deletes of [`STEP_BUDGET`] each, [`STEP_PAUSE`] apart.
//!
//! `Lock::None`: pruning spends no UnivaPay budget and changes no charge, so it need not
//! wait for a pass nor make one wait. What it shares with a pass or a hint check is
//! SQLite's one write lock, and each step holds it only for one short transaction (a
//! delete by primary key that commits once it has run for [`STEP_BUDGET`], the
//! candidates read before it without the lock; then at most [`VACUUM_PAGES`] pages
//! handed back, a transaction of its own). A writer that comes
//! meanwhile waits for that transaction only (`database.busy_timeout` covers it), and
//! the pause between steps lets it in before the next one.
//!
//! The pruner never checkpoints: no connection copies the WAL in its commit (the
//! ledger's `wal` module), and the checkpoint job copies the pages a round wrote
//! within a second, beside the writers rather than inside one of their commits. The
//! longest wait pruning adds to a writer is measured in docs/operations.md
//! ("Retention").

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use super::{Ended, InOnce, Job, Lock, When, Work};
use crate::config::retention::RetentionSettings;
use crate::context::Context;
use crate::ledger::{Ledger, LedgerError, Open, Prunable, Timestamp, Trigger};

/// Rows deleted per step, at most.
pub const STEP_ROWS: usize = 250;
/// How long a step's delete holds the write lock, about: it commits after the chunk
/// of [`crate::ledger::CHUNK_ROWS`] rows that reaches this. A pass's write waits for
/// one step at most, so this plus one chunk is the pause pruning adds to it; the goal
/// is under 10 ms (docs/operations.md, "Retention").
pub const STEP_BUDGET: Duration = Duration::from_millis(2);
/// Between two steps: room for a waiting writer.
pub const STEP_PAUSE: Duration = Duration::from_millis(20);
/// The daemon's first round, after its start.
pub const FIRST_AFTER: Duration = Duration::from_secs(30);
/// Between two rounds.
pub const EVERY: Duration = Duration::from_secs(600);
/// Free pages handed back after each step, at most. Each page moved is a read and a
/// write under the lock; eight keep that transaction as short as a step's delete.
pub const VACUUM_PAGES: u32 = 8;

/// Charges one archiving step copies, at most. The copy holds no lock of the ledger;
/// its deletes follow in transactions of [`STEP_BUDGET`].
pub const ARCHIVE_CHARGES: usize = 50;

/// Rows pruned by this process, per [`Prunable`] (in [`Prunable::ALL`]'s order).
static PRUNED: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];
/// Charges archived by this process.
static ARCHIVED: AtomicU64 = AtomicU64::new(0);

/// Charges moved to the archive since the process started, for the metrics.
pub fn archived_total() -> u64 {
    ARCHIVED.load(Ordering::Relaxed)
}

/// `(table, rows pruned since the process started)`, for the metrics.
pub fn pruned_totals() -> Vec<(&'static str, u64)> {
    Prunable::ALL
        .iter()
        .zip(&PRUNED)
        .map(|(p, n)| (p.table(), n.load(Ordering::Relaxed)))
        .collect()
}

/// Each kind of row that is pruned, with its cutoff at `now`: older rows go.
pub fn cutoffs(r: &RetentionSettings, now: DateTime<Utc>) -> Vec<(Prunable, Timestamp)> {
    [
        (Prunable::WebhookEvents, r.webhook_events),
        (Prunable::Runs, r.runs),
        (Prunable::Deliveries, r.deliveries),
    ]
    .into_iter()
    .filter_map(|(p, keep)| keep.map(|k| (p, Timestamp::before(now, k))))
    .collect()
}

/// Whether a round is due at `now` after one that ended at `last`. A `last` ahead of
/// `now` (the clock stepped back) counts as long ago, so a step never stops pruning.
pub fn is_due(last: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
    let every = chrono::Duration::from_std(EVERY).unwrap_or_default();
    match last {
        None => true,
        Some(last) => last > now || now - last >= every,
    }
}

/// What a round did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Round {
    /// Per kind pruned, rows deleted.
    pub pruned: Vec<(Prunable, u64)>,
    /// Charges moved to the archive.
    pub archived: u64,
    pub steps: u64,
    pub pages_freed: u64,
    /// The longest step: its read, its delete and the pages handed back.
    pub longest_step: Duration,
    /// Whether the shutdown ended it before everything old was gone.
    pub interrupted: bool,
}

/// One round on `ledger` (blocking): see the module doc.
pub fn round(
    ledger: &mut Ledger,
    retention: &RetentionSettings,
    now: DateTime<Utc>,
    shutdown: &CancellationToken,
) -> Result<Round, LedgerError> {
    let mut out = Round::default();
    'kinds: for (what, cutoff) in cutoffs(retention, now) {
        let mut total = 0u64;
        loop {
            if shutdown.is_cancelled() {
                out.interrupted = true;
                out.pruned.push((what, total));
                break 'kinds;
            }
            let began = Instant::now();
            let step = ledger.prune_step(what, cutoff, now, STEP_ROWS, STEP_BUDGET)?;
            out.steps += 1;
            total += step.rows as u64;
            PRUNED[what as usize].fetch_add(step.rows as u64, Ordering::Relaxed);
            if step.rows > 0 {
                out.pages_freed += ledger.reclaim_free_pages(VACUUM_PAGES)?;
            }
            out.longest_step = out.longest_step.max(began.elapsed());
            // No row gone though some were read: they changed since (a delivery
            // replayed); the next round looks again rather than this one spinning.
            if !step.more || step.rows == 0 {
                break;
            }
            std::thread::sleep(STEP_PAUSE);
        }
        out.pruned.push((what, total));
    }
    if !out.interrupted {
        archive(ledger, retention, now, shutdown, &mut out)?;
    }
    if !out.interrupted {
        ledger.set_pruned_at(now)?;
    }
    Ok(out)
}

/// The archiving part of a round, when `retention.archive` is set: see the module doc.
fn archive(
    ledger: &mut Ledger,
    retention: &RetentionSettings,
    now: DateTime<Utc>,
    shutdown: &CancellationToken,
    out: &mut Round,
) -> Result<(), LedgerError> {
    let Some(keep) = retention.archive else {
        return Ok(());
    };
    let cutoff = Timestamp::before(now, keep);
    ledger.attach_archive(&retention.archive_path)?;
    let moved = archive_steps(ledger, cutoff, now, shutdown, out);
    // Detached whatever happened, so the connection never keeps the file open.
    let detached = ledger.detach_archive();
    moved.and(detached)
}

fn archive_steps(
    ledger: &mut Ledger,
    cutoff: Timestamp,
    now: DateTime<Utc>,
    shutdown: &CancellationToken,
    out: &mut Round,
) -> Result<(), LedgerError> {
    loop {
        let ids = ledger.archive_candidates(cutoff, ARCHIVE_CHARGES)?;
        if ids.is_empty() {
            return Ok(());
        }
        ledger.archive_copy(&ids)?;
        let (mut rest, mut moved_any) = (&ids[..], false);
        while !rest.is_empty() {
            if shutdown.is_cancelled() {
                // What was copied and not deleted is in both files: the next round
                // copies it again and deletes it.
                out.interrupted = true;
                return Ok(());
            }
            std::thread::sleep(STEP_PAUSE);
            let began = Instant::now();
            let m = ledger.archive_delete(rest, cutoff, now, STEP_BUDGET)?;
            out.steps += 1;
            out.longest_step = out.longest_step.max(began.elapsed());
            out.archived += m.charges as u64;
            ARCHIVED.fetch_add(m.charges as u64, Ordering::Relaxed);
            moved_any |= m.charges > 0;
            rest = &rest[m.looked.max(1).min(rest.len())..];
        }
        out.pages_freed += ledger.reclaim_free_pages(VACUUM_PAGES)?;
        // Candidates that all stayed changed since they were read: the next round
        // looks again rather than this one spinning on them.
        if !moved_any || ids.len() < ARCHIVE_CHARGES {
            return Ok(());
        }
    }
}

/// See the module doc.
pub struct PruneJob {
    ctx: Context,
    /// Whether the daemon's first round was handed out (it comes sooner than the rest).
    started: AtomicBool,
}

impl PruneJob {
    pub fn new(ctx: Context) -> PruneJob {
        PruneJob {
            ctx,
            started: AtomicBool::new(false),
        }
    }

    fn retention(&self) -> RetentionSettings {
        self.ctx.settings().retention.clone()
    }

    fn round_work(&self) -> Work {
        let ctx = self.ctx.clone();
        Box::new(move |_held, shutdown| {
            Box::pin(async move {
                let retention = ctx.settings().retention.clone();
                let now = ctx.now();
                let began = Instant::now();
                let done = ctx
                    .with_ledger(Open::Existing, move |mut l| {
                        round(&mut l, &retention, now, &shutdown)
                    })
                    .await;
                log_round(done, began.elapsed());
                Ended::Ran
            })
        })
    }
}

/// The one log line of a round.
fn log_round(done: Result<Round, LedgerError>, took: Duration) {
    match done {
        Ok(r) => {
            let rows = |p: Prunable| {
                r.pruned
                    .iter()
                    .find(|(k, _)| *k == p)
                    .map_or(0, |(_, n)| *n)
            };
            tracing::info!(
                webhook_events = rows(Prunable::WebhookEvents),
                runs = rows(Prunable::Runs),
                deliveries = rows(Prunable::Deliveries),
                archived_charges = r.archived,
                steps = r.steps,
                pages_freed = r.pages_freed,
                longest_step_ms = r.longest_step.as_millis() as u64,
                interrupted = r.interrupted,
                took_ms = took.as_millis() as u64,
                "retention: pruned"
            );
        }
        Err(e) => {
            tracing::warn!(error = %e, "retention: prune round failed; the next round tries again")
        }
    }
}

impl Job for PruneJob {
    fn name(&self) -> &'static str {
        "retention"
    }

    fn when(&self) -> When {
        When::Own
    }

    fn lock(&self) -> Lock {
        Lock::None
    }

    fn work(self: Arc<Self>, _trigger: Trigger) -> Work {
        self.round_work()
    }

    fn next(self: Arc<Self>, shutdown: CancellationToken) -> BoxFuture<'static, Option<Work>> {
        Box::pin(async move {
            if self.retention().is_empty() {
                return None;
            }
            let first = !self.started.swap(true, Ordering::SeqCst);
            let wait = if first { FIRST_AFTER } else { EVERY };
            tokio::select! {
                () = shutdown.cancelled() => None,
                () = tokio::time::sleep(wait) => Some(self.round_work()),
            }
        })
    }

    fn in_once(self: Arc<Self>) -> BoxFuture<'static, InOnce> {
        Box::pin(async move {
            if self.retention().is_empty() {
                return InOnce::Skip;
            }
            let now = self.ctx.now();
            match self
                .ctx
                .with_ledger(Open::Existing, |l| l.pruned_at())
                .await
            {
                Ok(last) if is_due(last, now) => InOnce::Run,
                Ok(_) => InOnce::Skip,
                Err(e) => {
                    tracing::warn!(error = %e, "retention: not run");
                    InOnce::Skip
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn at(h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 2, h, m, 0).unwrap()
    }

    #[test]
    fn a_round_is_due_ten_minutes_after_the_last_or_after_a_step_back() {
        assert!(is_due(None, at(12, 0)));
        assert!(!is_due(Some(at(12, 0)), at(12, 9)));
        assert!(is_due(Some(at(12, 0)), at(12, 10)));
        assert!(is_due(Some(at(13, 0)), at(12, 0)), "last ahead of now");
    }

    #[test]
    fn only_the_configured_kinds_get_a_cutoff() {
        let r = RetentionSettings {
            webhook_events: Some(Duration::from_secs(86_400)),
            runs: None,
            deliveries: Some(Duration::from_secs(3600)),
            ..RetentionSettings::default()
        };
        let c = cutoffs(&r, at(12, 0));
        assert_eq!(
            c.iter()
                .map(|(p, t)| (*p, t.to_datetime()))
                .collect::<Vec<_>>(),
            vec![
                (
                    Prunable::WebhookEvents,
                    Utc.with_ymd_and_hms(2026, 12, 1, 12, 0, 0).unwrap()
                ),
                (Prunable::Deliveries, at(11, 0)),
            ]
        );
        assert!(cutoffs(&RetentionSettings::default(), at(12, 0)).is_empty());
        // The step fits one short transaction; the pause leaves a waiting writer room.
        assert!((100..=5000).contains(&STEP_ROWS));
        assert!(STEP_BUDGET <= Duration::from_millis(3));
        assert!(FIRST_AFTER <= Duration::from_secs(60));
    }
}
