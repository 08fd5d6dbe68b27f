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
//! No connection copies the WAL in its commit (the ledger's `wal` module). A round
//! copies the WAL itself before each of its steps, a passive checkpoint in its pause,
//! and paces itself on the WAL so that the `-wal` file starts over while it runs (see
//! `Pace`). The longest wait pruning adds to a writer is measured in
//! docs/operations.md ("Retention").

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use super::{Ended, InOnce, Job, Lock, When, Work};
use crate::config::retention::RetentionSettings;
use crate::context::Context;
use crate::ledger::{Checkpointed, Ledger, LedgerError, Open, Prunable, Timestamp, Trigger};

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

/// WAL frames (4 KiB each: 16 MiB) past which a round waits, before its next step,
/// for the WAL to start over (see [`pace`]).
pub const WAL_PACE: u64 = 4_096;
/// The longest such wait. A reader's snapshot (a `backup`, Litestream) can hold the
/// WAL for longer; the round then goes on, and waits again only once it has written
/// another [`WAL_PACE`] frames.
pub const WAL_WAIT: Duration = Duration::from_secs(2);
/// Between two looks during that wait, each a passive checkpoint: two in a row that
/// find the same frames all copied say that no one wrote in between.
pub const WAL_LOOK: Duration = Duration::from_millis(5);

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
    /// Times the round waited for the WAL to start over (see [`pace`]).
    pub wal_waits: u64,
    /// Those waits, in all.
    pub wal_waited: Duration,
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
    let mut wal = Pace::default();
    'kinds: for (what, cutoff) in cutoffs(retention, now) {
        let mut total = 0u64;
        loop {
            if shutdown.is_cancelled() {
                out.interrupted = true;
                out.pruned.push((what, total));
                break 'kinds;
            }
            wal.settle(ledger, shutdown, &mut out)?;
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
    let moved = archive_steps(ledger, cutoff, now, shutdown, out, &mut Pace::default());
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
    wal: &mut Pace,
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
            wal.settle(ledger, shutdown, out)?;
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

/// Whether a round waits for the WAL before its next step, a checkpoint having found
/// `now`, and the one just before it (in the same wait) `before`: while the WAL is past
/// `limit` frames, not started over, unless it is quiet, every frame copied and no
/// write since `before` (the round's next step then starts it over itself).
///
/// A checkpoint counts the frames the WAL held when it began, so a lone "all copied"
/// may be out of date by a write that committed while it ran: only two in a row with
/// the same count say that no one wrote.
pub fn pace(before: Option<Checkpointed>, now: Checkpointed, limit: u64) -> bool {
    let quiet = now.behind() == 0 && before.is_some_and(|b| b.frames == now.frames);
    now.frames > limit && !quiet
}

/// A round's pacing on the WAL. The `-wal` file starts over from its beginning only
/// when a writer begins with every frame in it copied, and a round writes much. Left
/// to the checkpoint job's copy once a second, with a pass's and the hint checks'
/// writes beside it, that moment may not come for long: a round over 200,000 hints
/// beside a writer every 2 ms grew the file to 400 MB (docs/operations.md "Figures"),
/// and past 256 MiB the job's restart makes every writer wait for its copy.
///
/// So before each step the round copies what the WAL holds, a passive checkpoint that
/// no writer waits for, and its step, the next write, comes right after it and starts
/// the WAL over unless someone wrote in between. When writes come too close for that
/// and the WAL passes [`WAL_PACE`] frames, the round stops writing, looking every
/// [`WAL_LOOK`] for up to [`WAL_WAIT`], until the WAL has started over (the others'
/// next write after a checkpoint that found no write coming does that) or it is quiet
/// (see [`pace`]).
#[derive(Debug)]
struct Pace {
    /// Frames the round may add before it waits: [`WAL_PACE`].
    every: u64,
    /// The longest wait: [`WAL_WAIT`].
    wait: Duration,
    /// Frames past which it waits now: `every`, or more after a wait that a reader's
    /// snapshot held to the end.
    limit: u64,
}

impl Default for Pace {
    fn default() -> Pace {
        Pace::new(WAL_PACE, WAL_WAIT)
    }
}

impl Pace {
    fn new(every: u64, wait: Duration) -> Pace {
        Pace {
            every,
            wait,
            limit: every,
        }
    }

    /// Before a step: see the type's doc.
    fn settle(
        &mut self,
        ledger: &Ledger,
        shutdown: &CancellationToken,
        out: &mut Round,
    ) -> Result<(), LedgerError> {
        let mut now = ledger.checkpoint()?;
        if now.frames <= self.every {
            // The WAL started over.
            self.limit = self.every;
        }
        if !pace(None, now, self.limit) {
            return Ok(());
        }
        let began = Instant::now();
        out.wal_waits += 1;
        let mut before = None;
        while pace(before, now, self.every) && began.elapsed() < self.wait {
            if shutdown.is_cancelled() {
                break;
            }
            std::thread::sleep(WAL_LOOK);
            before = Some(now);
            now = ledger.checkpoint()?;
        }
        out.wal_waited += began.elapsed();
        // Held to the end (a reader's snapshot, writes that never pause): not again
        // before the round has written `every` more frames, so a long `backup` slows a
        // round down without stopping it.
        self.limit = if pace(before, now, self.every) {
            now.frames.saturating_add(self.every)
        } else {
            self.every
        };
        Ok(())
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
                wal_waits = r.wal_waits,
                wal_waited_ms = r.wal_waited.as_millis() as u64,
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

    /// A ledger, a connection that writes rows of two pages and more to its table `t`
    /// on its own, and one that holds a read snapshot from before them.
    fn wal_with_a_reader() -> (
        tempfile::TempDir,
        Ledger,
        rusqlite::Connection,
        rusqlite::Connection,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.db");
        let ledger = Ledger::open(&path, Duration::from_secs(1)).unwrap();
        let writer = rusqlite::Connection::open(&path).unwrap();
        writer
            .execute_batch(
                "PRAGMA wal_autocheckpoint = 0; CREATE TABLE t (x BLOB);
                 PRAGMA wal_checkpoint(TRUNCATE);",
            )
            .unwrap();
        let reader = rusqlite::Connection::open(&path).unwrap();
        reader.execute_batch("BEGIN").unwrap();
        let _: i64 = reader
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        (dir, ledger, writer, reader)
    }

    fn rows(c: &rusqlite::Connection, n: usize) {
        for _ in 0..n {
            c.execute("INSERT INTO t VALUES (randomblob(5000))", [])
                .unwrap();
        }
    }

    #[test]
    fn pacing_waits_past_its_frames_while_a_reader_holds_them_and_not_again_soon() {
        let (_d, ledger, writer, reader) = wal_with_a_reader();
        let go_on = CancellationToken::new();
        let wait = Duration::from_millis(300);
        let mut pace = Pace::new(50, wait);
        let mut out = Round::default();
        rows(&writer, 5);
        pace.settle(&ledger, &go_on, &mut out).unwrap();
        assert_eq!(out.wal_waits, 0, "under its frames");
        rows(&writer, 50);
        pace.settle(&ledger, &go_on, &mut out).unwrap();
        assert_eq!(out.wal_waits, 1);
        assert!(out.wal_waited >= wait, "{out:?}");
        // Held to the end: no wait again before 50 more frames.
        pace.settle(&ledger, &go_on, &mut out).unwrap();
        rows(&writer, 5);
        pace.settle(&ledger, &go_on, &mut out).unwrap();
        assert_eq!(out.wal_waits, 1);
        rows(&writer, 30);
        pace.settle(&ledger, &go_on, &mut out).unwrap();
        assert_eq!(out.wal_waits, 2);
        // The reader gone, the checkpoint copies everything, and a second finds no
        // write since: the wait ends at once, and the next write starts the WAL over.
        reader.execute_batch("COMMIT").unwrap();
        rows(&writer, 30);
        let waited = out.wal_waited;
        pace.settle(&ledger, &go_on, &mut out).unwrap();
        assert_eq!(out.wal_waits, 3);
        assert!(out.wal_waited - waited < wait, "{out:?}");
        rows(&writer, 1);
        let c = ledger.checkpoint().unwrap();
        assert!(c.frames < 10, "{c:?}");
    }

    #[test]
    fn a_wait_for_the_wal_ends_when_the_frames_are_copied_or_at_shutdown() {
        let (_d, ledger, writer, reader) = wal_with_a_reader();
        rows(&writer, 50);
        let mut out = Round::default();
        let let_go = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            reader.execute_batch("COMMIT").unwrap();
        });
        Pace::new(50, Duration::from_secs(30))
            .settle(&ledger, &CancellationToken::new(), &mut out)
            .unwrap();
        let_go.join().unwrap();
        assert_eq!(out.wal_waits, 1);
        assert!(
            (Duration::from_millis(200)..Duration::from_secs(10)).contains(&out.wal_waited),
            "{out:?}"
        );

        let (_d, ledger, writer, _reader) = wal_with_a_reader();
        rows(&writer, 50);
        let stopped = CancellationToken::new();
        stopped.cancel();
        let mut out = Round::default();
        Pace::new(50, Duration::from_secs(30))
            .settle(&ledger, &stopped, &mut out)
            .unwrap();
        assert!(out.wal_waited < Duration::from_secs(10), "{out:?}");
    }

    #[test]
    fn a_round_waits_past_its_limit_until_the_wal_starts_over_or_is_quiet() {
        let c = |frames, copied| Checkpointed { frames, copied };
        assert!(pace(None, c(5000, 4000), 4096));
        assert!(
            pace(None, c(5000, 5000), 4096),
            "all copied, but a write may have come meanwhile"
        );
        assert!(
            !pace(Some(c(5000, 5000)), c(5000, 5000), 4096),
            "two alike: no write, the next step starts over"
        );
        assert!(
            pace(Some(c(4990, 4990)), c(5000, 5000), 4096),
            "someone wrote between them"
        );
        assert!(
            pace(Some(c(5000, 4000)), c(5000, 4000), 4096),
            "a reader holds them"
        );
        assert!(!pace(None, c(4096, 0), 4096), "not past the limit");
        assert!(!pace(Some(c(9000, 9000)), c(30, 30), 4096), "started over");
        assert!(!pace(None, c(0, 0), 4096));
    }
}
