//! The daemon: the job loop (`crate::jobs`) on the `[schedule] cron` until shutdown is
//! requested.
//!
//! [`run`] opens (and migrates) the ledger, registers the jobs (the discovery sweep on its
//! interval, the pass on every tick; the webhook's hint batches run in the listener),
//! arms the schedule, tells systemd it is ready, and from then on every tick asks for a
//! pass. A pass is started only when no job under the pass lock of this process is running
//! and no other process holds the pass lock ([`crate::lock`]); any other tick is skipped
//! and logged at info as `tick skipped: ...`, never queued, so a slow API can stretch
//! passes out but can never stack them.
//!
//! With `[webhook]` configured, the webhook listener ([`crate::webhook`]) runs beside the
//! schedule on the same context (so the same pacer and budget): its socket is opened
//! before the schedule is armed, so an address that cannot be bound stops the start with
//! one error naming `webhook.listen`; it stops with the daemon and gets the same drain
//! deadline for its last checks. Its `/healthz` reports the last scheduled pass, and a
//! schedule that stopped ticking.
//!
//! Shutdown arrives as a [`CancellationToken`] (the binary cancels it on SIGTERM/SIGINT,
//! tests cancel it directly). The schedule stops, the pass in flight stops claiming
//! charges, lets its checks finish within `schedule.drain_timeout`, commits and records
//! its outcome, every job drains, and [`run`] returns.
//!
//! Ticks come from tokio-cron-scheduler (why that version: beside it in `Cargo.toml`).
//!
//! The systemd watchdog's keep-alives mean "passes are making progress and the schedule
//! ticks": a pass that finishes no check for [`stall_limit`], or no tick for twice the
//! cron period, stops them (with one error in the log), so that `WatchdogSec=` restarts a
//! wedged process rather than watching it skip every tick.
//!
//! Even so, nothing here depends on a tick firing exactly once: a second tick during a
//! pass is skipped by the pass slot, and a second tick after a pass finds no charge due
//! (every check moves the charge's `next_check_at` forward). Three limits of the library
//! are handled here: it starts a job's runs without waiting for the previous one (hence
//! the pass slot); it fixes a time zone's UTC offset when the job is created (hence
//! `Schedule::follow_offset`, which re-arms the job when daylight saving time changes
//! the offset); and it keeps its next tick as a wall-clock time, so a step of the wall
//! clock could leave it waiting days (hence the clock watch, which compares the wall
//! clock with the monotonic one every `CLOCK_CHECK_EVERY`, re-arms the job on a step
//! and pulls back charges scheduled while the clock was ahead; see `crate::jobs::clock`).
//! It polls every 500 ms, so a tick can come up to half a second late.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Offset, TimeZone, Utc};
use tokio::sync::Semaphore;
use tokio_cron_scheduler::{Job, JobScheduler, JobSchedulerError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::config::{ScheduleSettings, Settings};
use crate::delivery::job::DeliveryJob;
use crate::discovery::SweepJob;
use crate::jobs::clock::{StepWatch, TickWatch, Ticks};
use crate::jobs::pass::{PassJob, ReportTo};
use crate::jobs::{self, Gate, Jobs};
use crate::ledger::{LedgerError, Outcome};
use crate::lock::{LockError, PassLock};
use crate::notify::{self, Notifier, ProgressWatch};
use crate::reconcile::Reconciler;
use crate::webhook::{self, Health, Hooks, WebhookError};

pub use crate::jobs::Summary;

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

/// Time allowed on top of `schedule.drain_timeout` for the last commit and the `runs` row.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// How often the wall clock is compared with the monotonic one, and the ticks counted.
pub(crate) const CLOCK_CHECK_EVERY: Duration = Duration::from_secs(2);

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
    let metrics_listener = match settings.metrics.as_ref().and_then(|m| m.listen) {
        Some(addr) => Some(webhook::bind_metrics(addr)?),
        None => None,
    };

    let health = Health::new();
    let stalled = Arc::new(AtomicBool::new(false));
    let jobs = Jobs::new(
        daemon_jobs(&reconciler, &health, &notifier),
        Gate::new(lock, notifier.clone()),
        shutdown.clone(),
    );
    let metrics = metrics_cache(&reconciler, jobs.tracker(), &shutdown);
    if let (Some(l), Some(render)) = (metrics_listener, &metrics) {
        let token = settings
            .metrics
            .as_ref()
            .and_then(|m| m.auth_token.as_ref());
        webhook::serve_metrics(l, render.clone(), token, jobs.tracker(), shutdown.clone())?;
    }
    let intake = match (listener, settings.webhook.as_ref()) {
        (Some(l), Some(w)) => Some(webhook::serve(
            l,
            w,
            reconciler.checker().clone(),
            hooks(&reconciler, jobs.tracker(), metrics.as_ref()),
            health.clone(),
            shutdown.clone(),
        )?),
        _ => None,
    };
    let mut schedule = Schedule::arm(jobs.clone(), &settings.schedule).await?;
    let watchdog = notifier.spawn_watchdog(alive(
        &jobs,
        &reconciler,
        stalled.clone(),
        stall_limit(&settings),
    ));
    started(&settings, &jobs, &notifier);
    let watch = ClockWatch::new(&settings.schedule.cron, &jobs, health, stalled);
    until_shutdown(&mut schedule, &reconciler, watch, &shutdown).await;

    notifier.stopping();
    tracing::info!("shutting down: no new passes; the pass in flight finishes its checks");
    schedule.stop().await;
    let deadline = settings.schedule.drain_timeout + DRAIN_GRACE;
    let intake_stopped = async {
        match intake {
            Some(i) => i.stopped(deadline).await,
            None => true,
        }
    };
    let (jobs_stopped, intake_stopped) = tokio::join!(jobs.stopped(deadline), intake_stopped);
    if let Some(w) = watchdog {
        w.abort();
    }
    let summary = stopped(&jobs);
    if jobs_stopped && intake_stopped {
        Ok(summary)
    } else {
        Err(DaemonError::Drain(deadline))
    }
}

/// Ready: systemd told, the start logged, the start-up run and the jobs' own loops begun.
fn started(settings: &Settings, jobs: &Arc<Jobs>, notifier: &Notifier) {
    let zone = zone_name(settings.schedule.timezone);
    notifier.ready(&format!(
        "waiting for the schedule {:?} ({zone})",
        settings.schedule.cron
    ));
    tracing::info!(
        cron = %settings.schedule.cron,
        timezone = %zone,
        run_on_start = settings.schedule.run_on_start,
        lock = %jobs.gate().lock().path().display(),
        "daemon started"
    );
    if settings.schedule.run_on_start {
        jobs.tick("start");
    }
    jobs.start();
}

/// While the daemon runs: the time zone's offset followed, the wall clock watched.
async fn until_shutdown(
    schedule: &mut Schedule,
    reconciler: &Reconciler,
    mut watch: ClockWatch,
    shutdown: &CancellationToken,
) {
    let mut offset_check = tokio::time::interval(OFFSET_CHECK_EVERY);
    offset_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut clock_check = tokio::time::interval(CLOCK_CHECK_EVERY);
    clock_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = offset_check.tick(), if schedule.tz.is_some() => {
                if let Err(e) = schedule.follow_offset(Utc::now()).await {
                    tracing::error!(error = %e, "cannot re-arm the schedule for the new UTC offset");
                }
            }
            _ = clock_check.tick() => {
                if let Some(step) = watch.check() {
                    on_clock_step(schedule, reconciler, step).await;
                    watch.rearmed();
                }
            }
        }
    }
}

/// The summary of what the daemon did, logged.
fn stopped(jobs: &Jobs) -> Summary {
    let summary = jobs.gate().summary();
    tracing::info!(
        ticks = summary.ticks,
        passes = summary.passes,
        skipped_running = summary.skipped_running,
        skipped_locked = summary.skipped_locked,
        "daemon stopped"
    );
    summary
}

/// The daemon's jobs: [`jobs_for`] with the pass reporting to `/healthz` and systemd.
fn daemon_jobs(
    reconciler: &Reconciler,
    health: &Health,
    notifier: &Notifier,
) -> Vec<Arc<dyn jobs::Job>> {
    let pass = PassJob::daemon(
        reconciler.clone(),
        report_pass(health.clone(), notifier.clone()),
    );
    jobs_for(reconciler, pass)
}

/// The jobs of the daemon and of `--once`, in the order `--once` runs them: the
/// checkpoints (beside all the others), the discovery sweep, the pass, delivery,
/// retention. A new job is registered here (see [`crate::jobs`]).
pub(crate) fn jobs_for(reconciler: &Reconciler, pass: PassJob) -> Vec<Arc<dyn jobs::Job>> {
    vec![
        Arc::new(crate::jobs::checkpoint::CheckpointJob::new(
            reconciler.context().clone(),
        )),
        Arc::new(SweepJob::new(reconciler.context().clone())),
        Arc::new(pass),
        Arc::new(DeliveryJob::new(reconciler.settings_arc().clone())),
        Arc::new(crate::jobs::prune::PruneJob::new(
            reconciler.context().clone(),
        )),
    ]
}

/// Where the daemon reports a pass's end: `/healthz`, systemd's `STATUS=`, the log.
fn report_pass(health: Health, notifier: Notifier) -> ReportTo {
    Box::new(move |pass| match pass {
        Ok(report) => {
            health.pass_finished(report.outcome);
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
            notifier.status(&report.summary_line());
        }
        Err(e) => {
            health.pass_failed();
            tracing::error!(error = %e, "pass failed");
            notifier.status(&format!("last pass failed: {e}"));
        }
    })
}

/// The watchdog's check: false while a pass has finished no check for `limit`.
/// Also false while the schedule has stopped ticking (see [`ClockWatch`]).
fn alive(
    jobs: &Arc<Jobs>,
    reconciler: &Reconciler,
    stalled: Arc<AtomicBool>,
    limit: Duration,
) -> impl FnMut() -> bool + Send + 'static {
    let mut watch = ProgressWatch::new(limit, tokio::time::Instant::now());
    let (jobs, checker) = (jobs.clone(), reconciler.checker().clone());
    move || {
        if stalled.load(Ordering::Relaxed) {
            return false;
        }
        let busy = jobs.gate().busy();
        match watch.check(busy, checker.progress(), tokio::time::Instant::now()) {
            notify::Health::Moving => true,
            notify::Health::Recovered => {
                tracing::warn!("the pass is making progress again; watchdog keep-alives resumed");
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

fn zone_name(tz: Option<chrono_tz::Tz>) -> String {
    tz.map_or_else(|| "UTC".to_owned(), |tz| tz.name().to_owned())
}

/// The armed cron job and what it was armed with.
struct Schedule {
    scheduler: JobScheduler,
    job: Uuid,
    cron: String,
    tz: Option<chrono_tz::Tz>,
    /// The UTC offset (seconds) tokio-cron-scheduler fixed when the job was created.
    offset: i32,
    jobs: Arc<Jobs>,
}

impl Schedule {
    async fn arm(jobs: Arc<Jobs>, settings: &ScheduleSettings) -> Result<Schedule, DaemonError> {
        let err = |source| DaemonError::Schedule {
            cron: settings.cron.clone(),
            source,
        };
        let scheduler = JobScheduler::new().await.map_err(err)?;
        let now = Utc::now();
        let job = scheduler
            .add(new_job(&settings.cron, settings.timezone, &jobs).map_err(err)?)
            .await
            .map_err(err)?;
        scheduler.start().await.map_err(err)?;
        Ok(Schedule {
            scheduler,
            job,
            cron: settings.cron.clone(),
            tz: settings.timezone,
            offset: utc_offset(settings.timezone, now),
            jobs,
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
        self.rearm().await?;
        tracing::info!(
            timezone = %zone_name(self.tz),
            from_offset_s = self.offset,
            to_offset_s = offset,
            "UTC offset changed; schedule re-armed"
        );
        self.offset = offset;
        Ok(true)
    }

    /// Replaces the job by a new one, whose next tick is computed from the wall clock now.
    async fn rearm(&mut self) -> Result<(), DaemonError> {
        let err = |source| DaemonError::Schedule {
            cron: self.cron.clone(),
            source,
        };
        let job = new_job(&self.cron, self.tz, &self.jobs).map_err(err)?;
        self.scheduler.remove(&self.job).await.map_err(err)?;
        self.job = self.scheduler.add(job).await.map_err(err)?;
        Ok(())
    }

    async fn stop(&mut self) {
        if let Err(e) = self.scheduler.shutdown().await {
            tracing::warn!(error = %e, "schedule did not stop cleanly");
        }
    }
}

/// The wall clock against the monotonic one, and the ticks against the cron: a step
/// re-arms the schedule, ticks that stop coming are a health failure. See
/// [`crate::jobs::clock`].
struct ClockWatch {
    cron: String,
    jobs: Arc<Jobs>,
    health: Health,
    stalled: Arc<AtomicBool>,
    steps: StepWatch,
    ticks: TickWatch,
    ticks_seen: u64,
}

impl ClockWatch {
    fn new(cron: &str, jobs: &Arc<Jobs>, health: Health, stalled: Arc<AtomicBool>) -> ClockWatch {
        let (wall, mono) = (Utc::now(), tokio::time::Instant::now());
        ClockWatch {
            cron: cron.to_owned(),
            jobs: jobs.clone(),
            health,
            stalled,
            steps: StepWatch::new(wall, mono),
            ticks: TickWatch::new(cron, wall, mono),
            ticks_seen: jobs.gate().summary().ticks,
        }
    }

    /// One look: the step of the wall clock, if it stepped; the tick watch updated.
    fn check(&mut self) -> Option<chrono::Duration> {
        let (wall, mono) = (Utc::now(), tokio::time::Instant::now());
        let step = self.steps.observe(wall, mono);
        let seen = self.jobs.gate().summary().ticks;
        let ticked = seen != self.ticks_seen;
        self.ticks_seen = seen;
        if ticked {
            self.ticks.rearm(&self.cron, wall, mono);
        }
        match self.ticks.check(mono, ticked) {
            Ticks::Stalled { newly: true } => {
                tracing::error!(
                    cron = %self.cron,
                    "no schedule tick for twice the cron period; /healthz answers 503 and watchdog keep-alives stopped"
                );
                self.set_stalled(true);
            }
            Ticks::Resumed => {
                tracing::warn!("schedule ticks again; /healthz and watchdog keep-alives resumed");
                self.set_stalled(false);
            }
            Ticks::Stalled { newly: false } | Ticks::Coming => {}
        }
        step
    }

    /// The schedule was re-armed: the next tick is expected from now.
    fn rearmed(&mut self) {
        let (wall, mono) = (Utc::now(), tokio::time::Instant::now());
        self.ticks.rearm(&self.cron, wall, mono);
    }

    fn set_stalled(&self, stalled: bool) {
        self.stalled.store(stalled, Ordering::Relaxed);
        self.health.schedule_stalled(stalled);
    }
}

/// The wall clock stepped by `step`: the schedule is re-armed from the new time, and
/// charges scheduled while the clock was ahead are pulled back.
async fn on_clock_step(schedule: &mut Schedule, reconciler: &Reconciler, step: chrono::Duration) {
    match schedule.rearm().await {
        Ok(()) => tracing::warn!(
            step_s = step.num_seconds(),
            "the wall clock stepped; schedule re-armed"
        ),
        Err(e) => {
            tracing::error!(error = %e, "the wall clock stepped and the schedule could not be re-armed")
        }
    }
    pull_back_next_checks(reconciler).await;
}

/// Open charges due later than the schedule can set (their `next_check_at` was computed
/// while the wall clock was ahead) are made due now.
async fn pull_back_next_checks(reconciler: &Reconciler) {
    let s = reconciler.settings();
    let now = reconciler.now();
    let longest = s
        .reconcile
        .recheck_schedule
        .iter()
        .map(|step| step.every)
        .chain([s.reconcile.retry_backoff_max])
        .max()
        .unwrap_or_default();
    let slack = crate::config::cron_period(&s.schedule.cron, now).unwrap_or_default()
        + Duration::from_secs(60);
    let latest = crate::jobs::clock::latest_next_check(longest, reconciler.stretch(), slack, now);
    let (latest, now) = (
        crate::ledger::Timestamp::new(latest),
        crate::ledger::Timestamp::new(now),
    );
    let pulled = reconciler
        .with_ledger(crate::ledger::Open::Existing, move |l| {
            l.pull_back_next_checks(latest, now)
        })
        .await;
    match pulled {
        Ok(0) => {}
        Ok(n) => tracing::warn!(
            charges = n,
            "charges scheduled further ahead than the schedule allows (the clock was ahead) are due now"
        ),
        Err(e) => tracing::error!(error = %e, "cannot pull back charges scheduled too far ahead"),
    }
}

fn utc_offset(tz: Option<chrono_tz::Tz>, at: DateTime<Utc>) -> i32 {
    tz.map_or(0, |tz| {
        tz.offset_from_utc_datetime(&at.naive_utc())
            .fix()
            .local_minus_utc()
    })
}

/// The cron job: it only hands the tick to the job loop, which decides whether a pass
/// starts, so the scheduler's own task never waits on a pass.
fn new_job(
    cron: &str,
    tz: Option<chrono_tz::Tz>,
    jobs: &Arc<Jobs>,
) -> Result<Job, JobSchedulerError> {
    let r = jobs.clone();
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

/// What the webhook listener plugs into: discovery for charges the ledger lacks, and
/// `GET /metrics` from `metrics` when `metrics.auth_token` is set.
fn hooks(
    reconciler: &Reconciler,
    tracker: &TaskTracker,
    metrics: Option<&webhook::MetricsRender>,
) -> Hooks {
    let token = reconciler
        .settings()
        .metrics
        .as_ref()
        .and_then(|m| m.auth_token.clone());
    Hooks {
        unknown: Arc::new(DiscoverUnknown {
            ctx: reconciler.context().clone(),
            tracker: tracker.clone(),
            in_flight: Arc::new(Semaphore::new(UNKNOWN_IN_FLIGHT)),
        }),
        metrics: metrics
            .zip(token)
            .map(|(render, token)| webhook::MetricsHook {
                render: render.clone(),
                token,
            }),
        ..Hooks::default()
    }
}

/// When `/metrics` is served anywhere (`metrics.listen`, or `metrics.auth_token` on the
/// webhook listener): the cache, refreshed by one task on `tracker`, and its reader.
fn metrics_cache(
    reconciler: &Reconciler,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
) -> Option<webhook::MetricsRender> {
    let m = reconciler.settings().metrics.as_ref()?;
    if m.listen.is_none() && m.auth_token.is_none() {
        return None;
    }
    let cache = crate::metrics::Cache::new();
    tracker.spawn(cache.clone().refresh_loop(
        reconciler.database().clone(),
        reconciler.settings_arc().clone(),
        reconciler.client().clone(),
        shutdown.clone(),
    ));
    Some(Arc::new(move || cache.latest()))
}

/// Unknown charges verified at once, at most: beyond, they are left to the next sweep, so
/// a flood of webhooks for unknown ids cannot turn into a flood of requests.
const UNKNOWN_IN_FLIGHT: usize = 4;

/// A charge a webhook names that the ledger lacks goes to discovery, which verifies it
/// with a GET and registers it when it is a konbini charge of a swept store (and does
/// nothing, without a request, when discovery is off).
struct DiscoverUnknown {
    ctx: crate::context::Context,
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
        let ctx = self.ctx.clone();
        self.tracker.spawn(async move {
            let _permit = permit;
            match crate::discovery::register_unknown(&ctx, &charge.store_id, &charge.charge_id)
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

    fn runner(dir: &std::path::Path) -> Arc<Jobs> {
        let text = format!(
            "[api]\nbase_url = \"http://127.0.0.1:9\"\napp_token = \"t\"\nsecret = \"s\"\n\
             [database]\npath = \"{}\"\n",
            dir.join("l.db").display()
        );
        let settings = Settings::from_toml(&text, &dir.join("c.toml"), &[("UNUSED", "")]).unwrap();
        let lock = PassLock::for_database(&settings.database.path);
        let reconciler = Reconciler::new(Arc::new(settings)).unwrap();
        let pass: Arc<dyn jobs::Job> = Arc::new(PassJob::once(reconciler));
        Jobs::new(
            vec![pass],
            Gate::new(lock, Notifier::disabled()),
            CancellationToken::new(),
        )
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
}
