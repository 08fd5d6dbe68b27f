//! The job loop: one way to run everything the daemon and `--once` do. A job is *what
//! runs* ([`Job::work`]), *when it is due* ([`Job::when`], [`Job::next`]) and *how it
//! drains* ([`Job::drain`]); the loop adds the rest: one job under the pass lock at a time
//! (the `Gate`: this process's slot and the cross-process [`PassLock`]), skipping or
//! waiting when it is taken, and the drain at shutdown.
//!
//! Jobs today: the pass (`pass::PassJob`, on the cron), the discovery sweep
//! (`crate::discovery::SweepJob`, on its interval), the webhook hint batches
//! ([`crate::webhook`], woken by the coalescer), delivery ([`crate::delivery`]),
//! retention ([`prune::PruneJob`]) and the WAL's checkpoints
//! ([`checkpoint::CheckpointJob`]).
//!
//! # Adding a job
//! 1. Implement [`Job`]: a `name` for the log, [`When::Cron`] (the loop calls
//!    [`Job::work`] on every tick of `[schedule] cron`) or [`When::Own`] (the loop awaits
//!    [`Job::next`], which sleeps until the job is due and hands back the work), and
//!    [`Lock::Pass`] when the work must not overlap a pass (it then gets the
//!    [`PassGuard`]) or [`Lock::None`] when it may run beside one (it must then never
//!    rely on the lock, e.g. a delivery job that spends no UnivaPay budget). Take the
//!    `Context` in the job's constructor; a job that makes
//!    UnivaPay requests honours a recorded pause first
//!    (`crate::reconcile::run::honour_recorded_pause`).
//! 2. Say what `--once` does with it ([`Job::in_once`]: run it once now, before the
//!    jobs registered after it, loop beside them all, or not), and what is left to do
//!    at the end
//!    ([`Job::drain`], given at most `schedule.drain_timeout`: a delivery job sends what
//!    is pending there).
//! 3. Register it: one line in `crate::daemon::jobs_for`, the list the daemon runs
//!    ([`crate::daemon::run`] starts the [`When::Own`] loops and feeds the cron ticks) and
//!    `--once` runs (`crate::app::run_once`, through `once`).
//!    A job that runs "within a minute of start, then every hour" (pruning) is a
//!    [`When::Own`] job whose `next` sleeps a minute the first time and an hour after.
//!    Work is bounded steps that check `shutdown` between them.

pub mod checkpoint;
pub(crate) mod clock;
pub(crate) mod pass;
pub mod prune;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::ledger::Trigger;
use crate::lock::{PassGuard, PassLock};
use crate::notify::Notifier;

/// When a job is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// On every tick of `[schedule] cron` (and at start with `run_on_start`). A tick that
    /// finds the pass slot taken is skipped and logged, never queued.
    Cron,
    /// When [`Job::next`] says.
    Own,
}

/// Whether the work takes the pass lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lock {
    /// One at a time with every other such job, in every process.
    Pass,
    /// Beside anything.
    None,
}

/// What `--once` does with a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InOnce {
    /// Runs it once.
    Run,
    /// Leaves it out.
    Skip,
    /// Runs its [`When::Own`] loop beside the others, from the first job to the last
    /// one's end (the checkpoints: a long pass's writes are copied as they come).
    Beside,
}

/// How one run of a job ended, as far as the loop and `--once` care.
#[derive(Debug)]
pub enum Ended {
    /// Done (whatever it found is in its own log lines and rows).
    Ran,
    /// Could not start (another process held the pass lock): the loop tries an
    /// [`Job::next`] job again after [`Job::retry_after_skip`].
    Skipped,
    /// A pass ended: `--once` takes its exit status from it.
    Pass(Result<crate::reconcile::RunReport, crate::ledger::LedgerError>),
    /// `--once` must stop here with this one-line error (exit 1).
    Fatal(String),
}

/// The work of one run: given the pass lock when the job takes it, and the shutdown token.
pub type Work =
    Box<dyn FnOnce(Option<Arc<PassGuard>>, CancellationToken) -> BoxFuture<'static, Ended> + Send>;

/// A job. See the module doc for how to add one.
pub trait Job: Send + Sync + 'static {
    /// For the log: "pass", "discovery sweep", ...
    fn name(&self) -> &'static str;
    fn when(&self) -> When;
    fn lock(&self) -> Lock;
    /// The work of one run now, started by `trigger` (a cron tick, `--once`).
    fn work(self: Arc<Self>, trigger: Trigger) -> Work;
    /// [`When::Own`]: waits until the job is due and returns its work; `None` when it has
    /// nothing more to do (it is off, or `shutdown` came).
    fn next(self: Arc<Self>, shutdown: CancellationToken) -> BoxFuture<'static, Option<Work>> {
        let _ = shutdown;
        Box::pin(std::future::ready(None))
    }
    /// Whether `--once` runs it.
    fn in_once(self: Arc<Self>) -> BoxFuture<'static, InOnce>;
    /// After the last run (end of `--once`, daemon shutdown): what is left, within
    /// `limit`.
    fn drain(self: Arc<Self>, limit: Duration) -> BoxFuture<'static, ()> {
        let _ = limit;
        Box::pin(std::future::ready(()))
    }
    /// How long an [`When::Own`] job waits after a run that could not start.
    fn retry_after_skip(&self) -> Duration {
        Duration::from_secs(60)
    }
}

/// What the daemon's jobs did, reported when it stops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Ticks seen: schedule ticks plus the start-up run.
    pub ticks: u64,
    /// Cron runs started (for the pass, each one a `runs` row).
    pub passes: u64,
    /// Ticks skipped because this daemon's previous pass was still running.
    pub skipped_running: u64,
    /// Ticks skipped because another process (a `--once`) held the pass lock.
    pub skipped_locked: u64,
}

#[derive(Default)]
struct Counts {
    ticks: AtomicU64,
    passes: AtomicU64,
    skipped_running: AtomicU64,
    skipped_locked: AtomicU64,
}

/// One job under the pass lock at a time: this process's slot (one permit) and the pass
/// lock across processes. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Gate {
    lock: PassLock,
    /// One permit: the job under the pass lock in flight holds it.
    slot: Arc<Semaphore>,
    counts: Arc<Counts>,
    notifier: Notifier,
}

impl Gate {
    pub(crate) fn new(lock: PassLock, notifier: Notifier) -> Gate {
        Gate {
            lock,
            slot: Arc::new(Semaphore::new(1)),
            counts: Arc::default(),
            notifier,
        }
    }

    pub(crate) fn lock(&self) -> &PassLock {
        &self.lock
    }

    /// Whether a job under the pass lock is running in this process.
    pub(crate) fn busy(&self) -> bool {
        self.slot.available_permits() == 0
    }

    pub(crate) fn summary(&self) -> Summary {
        let c = &self.counts;
        Summary {
            ticks: c.ticks.load(Ordering::Relaxed),
            passes: c.passes.load(Ordering::Relaxed),
            skipped_running: c.skipped_running.load(Ordering::Relaxed),
            skipped_locked: c.skipped_locked.load(Ordering::Relaxed),
        }
    }

    /// The pass lock without waiting, for a job named `name`. `None` (logged) when another
    /// process holds it or it cannot be taken.
    fn try_lock(&self, name: &str, cron: bool) -> Option<PassGuard> {
        match self.lock.try_acquire() {
            Ok(Ok(guard)) => Some(guard),
            Ok(Err(busy)) => {
                if cron {
                    let n = self.counts.skipped_locked.fetch_add(1, Ordering::Relaxed) + 1;
                    tracing::info!(
                        lock = %self.lock.path().display(),
                        holder_pid = busy.holder,
                        skipped_so_far = n,
                        "tick skipped: another process holds the pass lock"
                    );
                } else {
                    tracing::info!(
                        holder_pid = busy.holder,
                        "{name} skipped: another process holds the pass lock"
                    );
                }
                None
            }
            Err(e) => {
                tracing::error!(error = %e, "{name} not started");
                if cron {
                    self.notifier.status(&format!("{name} not started: {e}"));
                }
                None
            }
        }
    }
}

/// The daemon's loop: the jobs, the gate, and the tasks in flight.
pub(crate) struct Jobs {
    jobs: Vec<Arc<dyn Job>>,
    gate: Gate,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl Jobs {
    pub(crate) fn new(
        jobs: Vec<Arc<dyn Job>>,
        gate: Gate,
        shutdown: CancellationToken,
    ) -> Arc<Jobs> {
        Arc::new(Jobs {
            jobs,
            gate,
            tracker: TaskTracker::new(),
            shutdown,
        })
    }

    pub(crate) fn gate(&self) -> &Gate {
        &self.gate
    }

    /// The tasks of the loop, for work started beside it (a webhook's unknown charge).
    pub(crate) fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }

    /// Starts the loops of the [`When::Own`] jobs.
    pub(crate) fn start(self: &Arc<Self>) {
        for job in self.jobs.iter().filter(|j| j.when() == When::Own) {
            let gate = (job.lock() == Lock::Pass).then(|| self.gate.clone());
            self.tracker
                .spawn(own_loop(job.clone(), gate, self.shutdown.clone()));
        }
    }

    /// A cron tick: starts every [`When::Cron`] job unless a job under the pass lock is
    /// running. Never waits: called from the scheduler.
    pub(crate) fn tick(self: &Arc<Self>, cause: &'static str) {
        if self.shutdown.is_cancelled() {
            return;
        }
        self.gate.counts.ticks.fetch_add(1, Ordering::Relaxed);
        for job in self.jobs.iter().filter(|j| j.when() == When::Cron) {
            self.tick_one(job, cause);
        }
    }

    fn tick_one(&self, job: &Arc<dyn Job>, cause: &'static str) {
        let counts = &self.gate.counts;
        let Ok(permit) = self.gate.slot.clone().try_acquire_owned() else {
            let n = counts.skipped_running.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::info!(
                cause,
                skipped_so_far = n,
                "tick skipped: previous pass still running"
            );
            return;
        };
        let (job, gate, shutdown) = (job.clone(), self.gate.clone(), self.shutdown.clone());
        self.tracker.spawn(async move {
            let held = match job.lock() {
                Lock::Pass => match gate.try_lock(job.name(), true) {
                    Some(g) => Some(Arc::new(g)),
                    None => return,
                },
                Lock::None => None,
            };
            gate.counts.passes.fetch_add(1, Ordering::Relaxed);
            job.work(Trigger::Schedule)(held, shutdown).await;
            drop(permit);
        });
    }

    /// After shutdown: waits up to `limit` for the work in flight, then gives every job
    /// its drain. Returns whether the work in flight ended in time.
    pub(crate) async fn stopped(&self, limit: Duration) -> bool {
        self.tracker.close();
        let done = tokio::time::timeout(limit, self.tracker.wait())
            .await
            .is_ok();
        drain_all(&self.jobs, limit).await;
        done
    }
}

/// Each job's [`Job::drain`], one after the other, all within `limit`.
pub(crate) async fn drain_all(jobs: &[Arc<dyn Job>], limit: Duration) {
    let all = async {
        for job in jobs {
            job.clone().drain(limit).await;
        }
    };
    if tokio::time::timeout(limit, all).await.is_err() {
        tracing::warn!("jobs still draining after schedule.drain_timeout; left for the next start");
    }
}

/// The loop of one [`When::Own`] job until it has nothing more to do or `shutdown`:
/// await [`Job::next`], take the gate when the job runs under the pass lock (waiting for
/// this process's job in flight, skipping while another process holds the lock), run.
pub(crate) async fn own_loop(job: Arc<dyn Job>, gate: Option<Gate>, shutdown: CancellationToken) {
    while let Some(work) = job.clone().next(shutdown.clone()).await {
        let ended = match &gate {
            None => work(None, shutdown.clone()).await,
            Some(gate) => {
                let permit = tokio::select! {
                    () = shutdown.cancelled() => return,
                    p = gate.slot.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => return,
                    },
                };
                let ended = match gate.try_lock(job.name(), false) {
                    Some(g) => work(Some(Arc::new(g)), shutdown.clone()).await,
                    None => Ended::Skipped,
                };
                drop(permit);
                ended
            }
        };
        if matches!(ended, Ended::Skipped) {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(job.retry_after_skip()) => {}
            }
        }
    }
}

/// What `--once` got from its jobs.
#[derive(Debug, Default)]
pub(crate) struct OnceEnded {
    /// The pass's end, when a pass ran.
    pub(crate) pass: Option<Result<crate::reconcile::RunReport, crate::ledger::LedgerError>>,
    /// The first fatal error: the jobs after it did not run.
    pub(crate) fatal: Option<String>,
}

/// `--once`: every job whose [`Job::in_once`] says so, once, in order, under `held`
/// (an [`InOnce::Beside`] job starts its loop where it comes in the order, and it runs
/// until the last job has ended); then every job's drain within `drain`. Stops at the
/// first [`Ended::Fatal`].
pub(crate) async fn once(
    jobs: &[Arc<dyn Job>],
    held: Arc<PassGuard>,
    drain: Duration,
    shutdown: &CancellationToken,
) -> OnceEnded {
    let mut end = OnceEnded::default();
    // A child token: the shutdown ends the loops beside too.
    let beside_end = shutdown.child_token();
    let beside = TaskTracker::new();
    for job in jobs {
        let guard = match job.clone().in_once().await {
            InOnce::Skip => continue,
            InOnce::Beside => {
                beside.spawn(own_loop(job.clone(), None, beside_end.clone()));
                continue;
            }
            InOnce::Run => (job.lock() == Lock::Pass).then(|| held.clone()),
        };
        match job.clone().work(Trigger::Once)(guard, shutdown.clone()).await {
            Ended::Pass(p) => end.pass = Some(p),
            Ended::Fatal(e) => {
                end.fatal = Some(e);
                break;
            }
            Ended::Ran | Ended::Skipped => {}
        }
    }
    beside_end.cancel();
    beside.close();
    beside.wait().await;
    drain_all(jobs, drain).await;
    end
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use super::*;

    /// A job of any shape for these tests: its work counts its runs, notes whether it
    /// got the pass guard, takes `takes` (tokio's time) and ends `Fatal` when `fatal`
    /// says so; with `every`, its own loop hands out work that often.
    struct TestJob {
        when: When,
        lock: Lock,
        in_once: InOnce,
        every: Option<Duration>,
        takes: Duration,
        fatal: Option<&'static str>,
        runs: AtomicU64,
        guarded: AtomicBool,
    }

    impl TestJob {
        fn new(when: When, lock: Lock, in_once: InOnce) -> TestJob {
            TestJob {
                when,
                lock,
                in_once,
                every: None,
                takes: Duration::ZERO,
                fatal: None,
                runs: AtomicU64::new(0),
                guarded: AtomicBool::new(false),
            }
        }

        fn runs(&self) -> u64 {
            self.runs.load(Ordering::Relaxed)
        }
    }

    impl Job for TestJob {
        fn name(&self) -> &'static str {
            "test"
        }
        fn when(&self) -> When {
            self.when
        }
        fn lock(&self) -> Lock {
            self.lock
        }
        fn work(self: Arc<Self>, _trigger: Trigger) -> Work {
            Box::new(move |held, _| {
                Box::pin(async move {
                    self.runs.fetch_add(1, Ordering::Relaxed);
                    self.guarded.store(held.is_some(), Ordering::Relaxed);
                    if !self.takes.is_zero() {
                        tokio::time::sleep(self.takes).await;
                    }
                    match self.fatal {
                        Some(why) => Ended::Fatal(why.into()),
                        None => Ended::Ran,
                    }
                })
            })
        }
        fn next(self: Arc<Self>, shutdown: CancellationToken) -> BoxFuture<'static, Option<Work>> {
            Box::pin(async move {
                let every = self.every?;
                tokio::select! {
                    () = shutdown.cancelled() => None,
                    () = tokio::time::sleep(every) => Some(self.work(Trigger::Once)),
                }
            })
        }
        fn in_once(self: Arc<Self>) -> BoxFuture<'static, InOnce> {
            Box::pin(std::future::ready(self.in_once))
        }
    }

    /// A cron job that runs without the pass lock.
    fn counting() -> Arc<TestJob> {
        Arc::new(TestJob::new(When::Cron, Lock::None, InOnce::Run))
    }

    fn jobs(job: Arc<TestJob>) -> Arc<Jobs> {
        let dir = std::env::temp_dir().join("konbini-jobs-test.db");
        Jobs::new(
            vec![job],
            Gate::new(PassLock::for_database(&dir), Notifier::disabled()),
            CancellationToken::new(),
        )
    }

    /// The pass guard of a fresh database in `dir`, as `--once` holds it.
    fn guard(dir: &tempfile::TempDir) -> Arc<PassGuard> {
        let lock = PassLock::for_database(&dir.path().join("l.db"));
        Arc::new(lock.try_acquire().unwrap().unwrap())
    }

    #[tokio::test]
    async fn a_tick_during_a_run_is_skipped_not_queued() {
        let job = counting();
        let jobs = jobs(job.clone());
        let held = jobs.gate.slot.clone().try_acquire_owned().unwrap();
        jobs.tick("schedule");
        jobs.tick("schedule");
        let c = jobs.gate.summary();
        assert_eq!((c.ticks, c.passes, c.skipped_running), (2, 0, 2));
        assert!(jobs.tracker.is_empty(), "nothing was started");
        drop(held);
        jobs.tick("schedule");
        jobs.tracker.close();
        jobs.tracker.wait().await;
        assert_eq!(job.runs(), 1);
        assert_eq!(jobs.gate.summary().passes, 1);
    }

    #[tokio::test]
    async fn once_runs_the_jobs_in_order_and_stops_at_a_fatal_one() {
        let fails = Arc::new(TestJob {
            fatal: Some("boom"),
            ..TestJob::new(When::Own, Lock::Pass, InOnce::Run)
        });
        let dir = tempfile::tempdir().unwrap();
        let counting = counting();
        let list: Vec<Arc<dyn Job>> = vec![counting.clone(), fails.clone(), counting.clone()];
        let end = once(
            &list,
            guard(&dir),
            Duration::from_secs(1),
            &CancellationToken::new(),
        )
        .await;
        assert_eq!(end.fatal.as_deref(), Some("boom"));
        assert!(
            fails.guarded.load(Ordering::Relaxed),
            "a pass-lock job gets the guard"
        );
        assert!(
            !counting.guarded.load(Ordering::Relaxed),
            "the others do not"
        );
        assert_eq!(
            counting.runs(),
            1,
            "the job after the fatal one did not run"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn once_runs_a_beside_job_s_loop_while_the_others_run_and_ends_it_with_them() {
        let dir = tempfile::tempdir().unwrap();
        let ticking = Arc::new(TestJob {
            every: Some(Duration::from_secs(1)),
            ..TestJob::new(When::Own, Lock::None, InOnce::Beside)
        });
        let slow = Arc::new(TestJob {
            takes: Duration::from_millis(3500),
            ..TestJob::new(When::Cron, Lock::Pass, InOnce::Run)
        });
        let list: Vec<Arc<dyn Job>> = vec![ticking.clone(), slow.clone()];
        let began = tokio::time::Instant::now();
        let end = once(
            &list,
            guard(&dir),
            Duration::from_secs(1),
            &CancellationToken::new(),
        )
        .await;
        assert!(end.fatal.is_none());
        assert_eq!(slow.runs(), 1);
        assert_eq!(ticking.runs(), 3, "at 1, 2 and 3 s");
        let took = began.elapsed();
        assert!(
            took < Duration::from_secs(4),
            "{took:?}: the loop ended with the last job"
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(ticking.runs(), 3, "and stayed ended");
    }
}
