//! The daemon: reconciliation passes on the `[schedule] cron` until shutdown is requested.
//!
//! [`run`] opens (and migrates) the ledger, arms the schedule, tells systemd it is ready,
//! and from then on every tick asks for a pass. A pass is started only when none of this
//! process is running and no other process holds the pass lock ([`crate::lock`]); any
//! other tick is skipped and logged at info as `tick skipped: ...`, never queued, so a
//! slow API can stretch passes out but can never stack them.
//!
//! With `[webhook]` configured, the webhook listener ([`crate::webhook`]) runs beside the
//! schedule on the same [`Reconciler`] (so the same pacer and budget): its socket is opened
//! before the schedule is armed, so an address that cannot be bound stops the start with
//! one error naming `webhook.listen`; it stops with the daemon and gets the same drain
//! deadline for its last checks. Its `/healthz` reports the last scheduled pass.
//!
//! Shutdown arrives as a [`CancellationToken`] (the binary cancels it on SIGTERM/SIGINT,
//! tests cancel it directly). The schedule stops, the pass in flight stops claiming
//! charges, lets its checks finish within `schedule.drain_timeout`, commits and records
//! its outcome, and [`run`] returns.
//!
//! Ticks come from tokio-cron-scheduler (why that version: beside it in `Cargo.toml`).
//!
//! The systemd watchdog's keep-alives mean "passes are making progress": a pass that
//! finishes no check for [`stall_limit`] stops them (with one error in the log), so that
//! `WatchdogSec=` restarts a wedged process rather than watching it skip every tick.
//!
//! Even so, nothing here depends on a tick firing exactly once: a second tick during a
//! pass is skipped by the pass slot, and a second tick after a pass finds no charge due
//! (every check moves the charge's `next_check_at` forward). Two limits of the library
//! are handled here: it starts a job's runs without waiting for the previous one (hence
//! the pass slot), and it fixes a time zone's UTC offset when the job is created (hence
//! [`Schedule::follow_offset`], which re-arms the job when daylight saving time changes
//! the offset). It polls every 500 ms, so a tick can come up to half a second late.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Offset, TimeZone, Utc};
use tokio::sync::Semaphore;
use tokio_cron_scheduler::{Job, JobScheduler, JobSchedulerError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::config::{ScheduleSettings, Settings};
use crate::ledger::{LedgerError, Outcome, Trigger};
use crate::lock::{LockError, PassLock};
use crate::notify::{self, Notifier, ProgressWatch};
use crate::reconcile::Reconciler;
use crate::webhook::{self, Health, Hooks, WebhookError};

/// Why the daemon could not start, or did not stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("cannot arm the schedule (schedule.cron {cron:?}): {source}")]
    Schedule {
        cron: String,
        #[source]
        source: JobSchedulerError,
    },
    #[error(
        "the pass in flight had not finished {0:?} after shutdown was requested (schedule.drain_timeout plus a grace period); its charges stay due"
    )]
    Drain(Duration),
    #[error(transparent)]
    Webhook(#[from] WebhookError),
}

/// What the daemon did, reported when it stops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Ticks seen: schedule ticks plus the start-up run.
    pub ticks: u64,
    /// Passes started (each one a `runs` row).
    pub passes: u64,
    /// Ticks skipped because this daemon's previous pass was still running.
    pub skipped_running: u64,
    /// Ticks skipped because another process (a `--once`) held the pass lock.
    pub skipped_locked: u64,
}

/// Time allowed on top of `schedule.drain_timeout` for the last commit and the `runs` row.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// How often the schedule's time zone is checked for a new UTC offset.
const OFFSET_CHECK_EVERY: Duration = Duration::from_secs(60);

/// How long a pass may go without finishing a single check before it counts as stuck:
/// twice the longest one check can honestly take, which is a wait for UnivaPay's
/// permission (at most `schedule.drain_timeout`, else the pass ends as `rate_limited`),
/// the spacing of `api.max_requests_per_minute`, the request itself (`api.timeout`), and
/// two waits for the database's write lock (`database.busy_timeout`). With the defaults,
/// 2 x (30 s + 30 s + 2 x 5 s) = 140 s.
pub fn stall_limit(s: &Settings) -> Duration {
    let spacing = s
        .api
        .max_requests_per_minute
        .map_or(Duration::ZERO, |n| Duration::from_secs(60) / n.get());
    let one_check =
        s.schedule.drain_timeout + spacing + s.api.timeout + s.database.busy_timeout * 2;
    one_check * 2
}

/// Runs the daemon until `shutdown` is cancelled. `Err` when the ledger cannot be opened,
/// the lock file cannot be created, the schedule cannot be armed, or the pass in flight
/// outlives the drain deadline. A failing pass is logged and does not stop the daemon.
pub async fn run(
    reconciler: Reconciler,
    notifier: Notifier,
    shutdown: CancellationToken,
) -> Result<Summary, DaemonError> {
    let settings = reconciler.settings().clone();
    reconciler.prepare_ledger().await?;
    let lock = PassLock::for_database(&settings.database.path);
    lock.ensure_file()?;
    let listener = webhook::open(settings.webhook.as_ref())?;

    let health = Health::new();
    let runner = Arc::new(Runner {
        reconciler,
        lock,
        notifier: notifier.clone(),
        shutdown: shutdown.clone(),
        slot: Arc::new(Semaphore::new(1)),
        passes: TaskTracker::new(),
        counts: Counts::default(),
        health: health.clone(),
    });
    let intake = match (listener, settings.webhook.as_ref()) {
        (Some(l), Some(w)) => Some(webhook::serve(
            l,
            w,
            runner.reconciler.clone(),
            hooks(&runner.reconciler, &runner.passes),
            health,
            shutdown.clone(),
        )?),
        _ => None,
    };
    let mut schedule = Schedule::arm(runner.clone(), &settings.schedule).await?;
    let watchdog = notifier.spawn_watchdog(runner.clone().alive(stall_limit(&settings)));
    let zone = zone_name(settings.schedule.timezone);
    notifier.ready(&format!(
        "waiting for the schedule {:?} ({zone})",
        settings.schedule.cron
    ));
    tracing::info!(
        cron = %settings.schedule.cron,
        timezone = %zone,
        run_on_start = settings.schedule.run_on_start,
        lock = %runner.lock.path().display(),
        "daemon started"
    );
    if settings.schedule.run_on_start {
        runner.tick("start");
    }
    // Discovery sweeps on their own interval (none when it is off), one at a time with
    // the passes: a sweep holds the same slot and lock.
    // Delivery to the shop's endpoints: its own tasks and HTTP clients, never a pass's.
    runner
        .passes
        .spawn(crate::delivery::run(settings.clone(), shutdown.clone()));
    runner.passes.spawn(crate::discovery::every_interval(
        runner.reconciler.clone(),
        runner.lock.clone(),
        runner.slot.clone(),
        shutdown.clone(),
    ));

    let mut offset_check = tokio::time::interval(OFFSET_CHECK_EVERY);
    offset_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = offset_check.tick(), if schedule.tz.is_some() => {
                if let Err(e) = schedule.follow_offset(Utc::now()).await {
                    tracing::error!(error = %e, "cannot re-arm the schedule for the new UTC offset");
                }
            }
        }
    }

    notifier.stopping();
    tracing::info!("shutting down: no new passes; the pass in flight finishes its checks");
    schedule.stop().await;
    runner.passes.close();
    let deadline = settings.schedule.drain_timeout + DRAIN_GRACE;
    let intake_stopped = async {
        match intake {
            Some(i) => i.stopped(deadline).await,
            None => true,
        }
    };
    let (passes, intake_stopped) = tokio::join!(
        tokio::time::timeout(deadline, runner.passes.wait()),
        intake_stopped
    );
    let drained = passes.is_ok() && intake_stopped;
    if let Some(w) = watchdog {
        w.abort();
    }
    let summary = runner.counts.summary();
    tracing::info!(
        ticks = summary.ticks,
        passes = summary.passes,
        skipped_running = summary.skipped_running,
        skipped_locked = summary.skipped_locked,
        "daemon stopped"
    );
    if drained {
        Ok(summary)
    } else {
        Err(DaemonError::Drain(deadline))
    }
}

fn zone_name(tz: Option<chrono_tz::Tz>) -> String {
    tz.map_or_else(|| "UTC".to_owned(), |tz| tz.name().to_owned())
}

#[derive(Default)]
struct Counts {
    ticks: AtomicU64,
    passes: AtomicU64,
    skipped_running: AtomicU64,
    skipped_locked: AtomicU64,
}

impl Counts {
    fn summary(&self) -> Summary {
        Summary {
            ticks: self.ticks.load(Ordering::Relaxed),
            passes: self.passes.load(Ordering::Relaxed),
            skipped_running: self.skipped_running.load(Ordering::Relaxed),
            skipped_locked: self.skipped_locked.load(Ordering::Relaxed),
        }
    }
}

/// Turns ticks into passes, one at a time.
struct Runner {
    reconciler: Reconciler,
    lock: PassLock,
    notifier: Notifier,
    shutdown: CancellationToken,
    /// One permit: this process's pass in flight holds it. A tick that cannot take it
    /// is skipped, because tokio-cron-scheduler would otherwise start a second pass.
    slot: Arc<Semaphore>,
    /// The pass in flight, so shutdown can wait for it to commit.
    passes: TaskTracker,
    counts: Counts,
    /// What the webhook listener's `/healthz` reports.
    health: Health,
}

impl Runner {
    /// The watchdog's check: false while a pass has finished no check for `limit`.
    fn alive(self: Arc<Self>, limit: Duration) -> impl FnMut() -> bool + Send + 'static {
        let mut watch = ProgressWatch::new(limit, tokio::time::Instant::now());
        move || {
            let busy = self.slot.available_permits() == 0;
            let progress = self.reconciler.progress();
            match watch.check(busy, progress, tokio::time::Instant::now()) {
                notify::Health::Moving => true,
                notify::Health::Recovered => {
                    tracing::warn!(
                        "the pass is making progress again; watchdog keep-alives resumed"
                    );
                    true
                }
                notify::Health::Stuck { for_, newly } => {
                    if newly {
                        tracing::error!(
                            stuck_for_s = for_.as_secs(),
                            limit_s = watch.limit().as_secs(),
                            "the pass has finished no check for longer than the limit; watchdog keep-alives stopped so that systemd (WatchdogSec=) restarts the process"
                        );
                    }
                    false
                }
            }
        }
    }

    /// Starts a pass unless one is running. Never waits: called from the scheduler.
    fn tick(self: &Arc<Self>, cause: &'static str) {
        if self.shutdown.is_cancelled() {
            return;
        }
        self.counts.ticks.fetch_add(1, Ordering::Relaxed);
        let Ok(permit) = self.slot.clone().try_acquire_owned() else {
            let n = self.counts.skipped_running.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::info!(
                cause,
                skipped_so_far = n,
                "tick skipped: previous pass still running"
            );
            return;
        };
        let me = self.clone();
        self.passes.spawn(async move {
            me.pass().await;
            drop(permit);
        });
    }

    async fn pass(&self) {
        let guard = match self.lock.try_acquire() {
            Ok(Ok(guard)) => guard,
            Ok(Err(busy)) => {
                let n = self.counts.skipped_locked.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::info!(
                    lock = %self.lock.path().display(),
                    holder_pid = busy.holder,
                    skipped_so_far = n,
                    "tick skipped: another process holds the pass lock"
                );
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "pass not started");
                self.notifier.status(&format!("pass not started: {e}"));
                return;
            }
        };
        self.counts.passes.fetch_add(1, Ordering::Relaxed);
        match self
            .reconciler
            .run_pass(&guard, Trigger::Schedule, self.shutdown.clone())
            .await
        {
            Ok(report) => {
                self.health.pass_finished(report.outcome);
                if report.outcome.is_failure() {
                    tracing::error!(
                        run_id = report.run_id,
                        outcome = report.outcome.as_str(),
                        detail = report.detail.as_deref().unwrap_or(""),
                        "pass failed"
                    );
                } else if report.outcome == Outcome::RateLimited {
                    tracing::warn!(
                        run_id = report.run_id,
                        detail = report.detail.as_deref().unwrap_or(""),
                        "pass ended early: rate limited"
                    );
                }
                self.notifier.status(&report.summary_line());
            }
            Err(e) => {
                self.health.pass_failed();
                tracing::error!(error = %e, "pass failed");
                self.notifier.status(&format!("last pass failed: {e}"));
            }
        }
        crate::metrics::after_pass(self.reconciler.settings(), self.reconciler.client()).await;
    }
}

/// The armed cron job and what it was armed with.
struct Schedule {
    scheduler: JobScheduler,
    job: Uuid,
    cron: String,
    tz: Option<chrono_tz::Tz>,
    /// The UTC offset (seconds) tokio-cron-scheduler fixed when the job was created.
    offset: i32,
    runner: Arc<Runner>,
}

impl Schedule {
    async fn arm(
        runner: Arc<Runner>,
        settings: &ScheduleSettings,
    ) -> Result<Schedule, DaemonError> {
        let err = |source| DaemonError::Schedule {
            cron: settings.cron.clone(),
            source,
        };
        let scheduler = JobScheduler::new().await.map_err(err)?;
        let now = Utc::now();
        let job = scheduler
            .add(new_job(&settings.cron, settings.timezone, &runner).map_err(err)?)
            .await
            .map_err(err)?;
        scheduler.start().await.map_err(err)?;
        Ok(Schedule {
            scheduler,
            job,
            cron: settings.cron.clone(),
            tz: settings.timezone,
            offset: utc_offset(settings.timezone, now),
            runner,
        })
    }

    /// Re-creates the job when the zone's UTC offset at `now` is not the one the job was
    /// created with (a daylight saving change), so ticks stay on local wall-clock time.
    /// Returns whether it re-armed.
    async fn follow_offset(&mut self, now: DateTime<Utc>) -> Result<bool, DaemonError> {
        let offset = utc_offset(self.tz, now);
        if offset == self.offset {
            return Ok(false);
        }
        let err = |source| DaemonError::Schedule {
            cron: self.cron.clone(),
            source,
        };
        let job = new_job(&self.cron, self.tz, &self.runner).map_err(err)?;
        self.scheduler.remove(&self.job).await.map_err(err)?;
        self.job = self.scheduler.add(job).await.map_err(err)?;
        tracing::info!(
            timezone = %zone_name(self.tz),
            from_offset_s = self.offset,
            to_offset_s = offset,
            "UTC offset changed; schedule re-armed"
        );
        self.offset = offset;
        Ok(true)
    }

    async fn stop(&mut self) {
        if let Err(e) = self.scheduler.shutdown().await {
            tracing::warn!(error = %e, "schedule did not stop cleanly");
        }
    }
}

fn utc_offset(tz: Option<chrono_tz::Tz>, at: DateTime<Utc>) -> i32 {
    tz.map_or(0, |tz| {
        tz.offset_from_utc_datetime(&at.naive_utc())
            .fix()
            .local_minus_utc()
    })
}

/// The cron job: it only hands the tick to the runner, which decides whether a pass
/// starts, so the scheduler's own task never waits on a pass.
fn new_job(
    cron: &str,
    tz: Option<chrono_tz::Tz>,
    runner: &Arc<Runner>,
) -> Result<Job, JobSchedulerError> {
    let r = runner.clone();
    let on_tick =
        move |_id, _scheduler| -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
            r.tick("schedule");
            Box::pin(std::future::ready(()))
        };
    match tz {
        Some(tz) => Job::new_async_tz(cron, tz, on_tick),
        None => Job::new_async_tz(cron, Utc, on_tick),
    }
}

/// What the webhook listener plugs into: discovery for charges the ledger lacks, and the
/// metrics for `GET /metrics` when `[metrics]` is set.
fn hooks(reconciler: &Reconciler, tracker: &TaskTracker) -> Hooks {
    let settings = reconciler.settings();
    let metrics: Option<webhook::MetricsRender> = settings.metrics.as_ref().map(|_| {
        let rec = reconciler.clone();
        let render: webhook::MetricsRender = Arc::new(move || {
            let rec = rec.clone();
            Box::pin(async move {
                let snapshot = crate::metrics::Snapshot::take(rec.settings(), rec.client()).await;
                snapshot.ok().map(|s| crate::metrics::render(&s))
            })
        });
        render
    });
    Hooks {
        unknown: Arc::new(DiscoverUnknown {
            reconciler: reconciler.clone(),
            tracker: tracker.clone(),
            in_flight: Arc::new(Semaphore::new(UNKNOWN_IN_FLIGHT)),
        }),
        metrics,
        ..Hooks::default()
    }
}

/// Unknown charges verified at once, at most: beyond, they are left to the next sweep, so
/// a flood of webhooks for unknown ids cannot turn into a flood of requests.
const UNKNOWN_IN_FLIGHT: usize = 4;

/// A charge a webhook names that the ledger lacks goes to discovery, which verifies it
/// with a GET and registers it when it is a konbini charge of a swept store (and does
/// nothing, without a request, when discovery is off).
struct DiscoverUnknown {
    reconciler: Reconciler,
    /// The daemon's task tracker, so that shutdown waits for a verification under way.
    tracker: TaskTracker,
    in_flight: Arc<Semaphore>,
}

impl webhook::UnknownChargeHook for DiscoverUnknown {
    fn on_unknown_charge(&self, charge: webhook::UnknownCharge) {
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            tracing::debug!(charge_id = %charge.charge_id, "busy verifying other unknown charges; left to the sweep");
            return;
        };
        let rec = self.reconciler.clone();
        self.tracker.spawn(async move {
            let _permit = permit;
            match crate::discovery::register_unknown(&rec, &charge.store_id, &charge.charge_id)
                .await
            {
                Ok(outcome) => tracing::debug!(charge_id = %charge.charge_id, ?outcome, "charge named by a webhook"),
                Err(e) => tracing::warn!(charge_id = %charge.charge_id, error = %e, "could not register a charge a webhook named"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::Timelike;

    use super::*;

    fn runner(dir: &std::path::Path) -> Arc<Runner> {
        let text = format!(
            "[api]\nbase_url = \"http://127.0.0.1:9\"\napp_token = \"t\"\nsecret = \"s\"\n\
             [database]\npath = \"{}\"\n",
            dir.join("l.db").display()
        );
        let settings = Settings::from_toml(&text, &dir.join("c.toml"), &[("UNUSED", "")]).unwrap();
        let lock = PassLock::for_database(&settings.database.path);
        Arc::new(Runner {
            reconciler: Reconciler::new(Arc::new(settings)).unwrap(),
            lock,
            notifier: Notifier::disabled(),
            shutdown: CancellationToken::new(),
            slot: Arc::new(Semaphore::new(1)),
            passes: TaskTracker::new(),
            counts: Counts::default(),
            health: Health::new(),
        })
    }

    fn schedule_settings(cron: &str, tz: Option<chrono_tz::Tz>) -> ScheduleSettings {
        ScheduleSettings {
            cron: cron.to_owned(),
            run_on_start: false,
            timezone: tz,
            drain_timeout: Duration::from_secs(1),
            lock_wait: Duration::ZERO,
        }
    }

    #[tokio::test]
    async fn the_cron_is_read_in_the_configured_zone() {
        let dir = tempfile::tempdir().unwrap();
        let r = runner(dir.path());
        let tokyo = chrono_tz::Asia::Tokyo;
        let mut s = Schedule::arm(r.clone(), &schedule_settings("0 0 9 * * *", Some(tokyo)))
            .await
            .unwrap();
        let next = s
            .scheduler
            .next_tick_for_job(s.job)
            .await
            .unwrap()
            .expect("a next tick");
        let local = next.with_timezone(&tokyo);
        assert_eq!((local.hour(), local.minute(), local.second()), (9, 0, 0));
        assert_eq!(next.hour(), 0, "09:00 JST is 00:00 UTC: {next}");
        s.stop().await;

        let mut s = Schedule::arm(r, &schedule_settings("0 0 9 * * *", None))
            .await
            .unwrap();
        let next = s.scheduler.next_tick_for_job(s.job).await.unwrap().unwrap();
        assert_eq!(next.hour(), 9, "no zone means UTC: {next}");
        s.stop().await;
    }

    #[tokio::test]
    async fn a_new_utc_offset_re_arms_the_job() {
        let dir = tempfile::tempdir().unwrap();
        let berlin = chrono_tz::Europe::Berlin;
        let mut s = Schedule::arm(
            runner(dir.path()),
            &schedule_settings("0 0 9 * * *", Some(berlin)),
        )
        .await
        .unwrap();
        let winter = Utc.with_ymd_and_hms(2026, 1, 15, 12, 0, 0).unwrap();
        let summer = Utc.with_ymd_and_hms(2026, 7, 15, 12, 0, 0).unwrap();
        assert_eq!(utc_offset(Some(berlin), winter), 3600);
        assert_eq!(utc_offset(Some(berlin), summer), 7200);
        // Pretend the job was armed in winter; it is summer now.
        s.offset = 3600;
        let first = s.job;
        assert!(s.follow_offset(summer).await.unwrap());
        assert_ne!(s.job, first, "a new job replaced the old one");
        assert_eq!(s.offset, 7200);
        assert!(
            !s.follow_offset(summer).await.unwrap(),
            "same offset: no-op"
        );
        assert!(
            s.scheduler
                .next_tick_for_job(first)
                .await
                .unwrap()
                .is_none(),
            "the old job is gone"
        );
        let next = s.scheduler.next_tick_for_job(s.job).await.unwrap().unwrap();
        assert_eq!(next.with_timezone(&berlin).hour(), 9);
        s.stop().await;
    }

    #[test]
    fn zones_without_daylight_saving_keep_their_offset() {
        let tokyo = Some(chrono_tz::Asia::Tokyo);
        let winter = Utc.with_ymd_and_hms(2026, 1, 15, 12, 0, 0).unwrap();
        let summer = Utc.with_ymd_and_hms(2026, 7, 15, 12, 0, 0).unwrap();
        assert_eq!(utc_offset(tokyo, winter), 9 * 3600);
        assert_eq!(utc_offset(tokyo, summer), 9 * 3600);
        assert_eq!(utc_offset(None, summer), 0);
    }

    #[tokio::test]
    async fn a_tick_during_a_pass_is_skipped_not_queued() {
        let dir = tempfile::tempdir().unwrap();
        let r = runner(dir.path());
        let held = r.slot.clone().try_acquire_owned().unwrap();
        r.tick("schedule");
        r.tick("schedule");
        let c = r.counts.summary();
        assert_eq!((c.ticks, c.passes, c.skipped_running), (2, 0, 2));
        assert!(r.passes.is_empty(), "nothing was started");
        drop(held);
    }
}
