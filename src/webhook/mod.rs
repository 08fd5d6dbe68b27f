//! Webhook intake: UnivaPay's webhooks about a charge (`charge_updated`,
//! `charge_finished`, `cancel_finished`, `refund_finished`, ...) as **hints** that the
//! charge is worth checking now. A hint never changes the ledger; the charge GET it leads
//! to does.
//!
//! UnivaPay's webhooks are unsigned (the only proof is an `Authorization` value the
//! merchant configured, sent back verbatim) and best-effort. So:
//! - a request is let in only with exactly `webhook.auth_token` as its `Authorization`
//!   (constant-time comparison; the presented value is never logged): else 401;
//! - from the body only the event name (bounded, sanitised: `ChargeEvent`), the charge's
//!   id (`data.id` for `charge_*` events, else `data.charge_id`) and `data.store_id` are
//!   read, each refused (400) when given twice; its status and amounts are never used;
//! - a hint for an open ledger charge gets a charge GET that starts after the hint
//!   arrived, normally within a second or two, and each GET that hints caused one
//!   `charge_events` row of kind `webhook` naming their events and counts (see
//!   [`crate::ledger::HintEvents`]); a final charge at most one row a minute;
//! - everything authenticated and well-formed is answered 200 at once, also when it is
//!   ignored (other events, final charges, charges not in the ledger, a full queue):
//!   UnivaPay disables a webhook that keeps failing, and the scheduled passes remain the
//!   safety net for anything a hint does not cover.
//!
//! The HTTP side is in `http` (routes, the checks of a request, the answers), the
//! socket and connection limits in `listen` (idle connections make room for new ones),
//! when a hinted charge is checked in `coalesce` (pure), and the ledger and API work in
//! `intake`.
//!
//! `GET /metrics` is served here only when `metrics.auth_token` is set, and then only to a
//! scrape presenting it as a bearer token; `serve_metrics` serves it on a listener of
//! its own (`metrics.listen`). Either way from memory (`MetricsRender`), never from the
//! ledger.
//!
//! # A hint's check beside a running pass
//! Hints are checked while passes run: holding the pass lock for a hint would delay it by
//! a whole pass. What keeps the two from writing the same change twice is the row version
//! a check is decided from: `Checker::check_one` decides from the row as read, and
//! [`Ledger::apply`](crate::ledger::Ledger::apply) writes the result only if the row's
//! `updated_at` (and state) are still the same, in the same per-charge transaction a pass
//! uses. Whichever of the two commits second finds the row changed and writes nothing:
//! no second `transition` event, no lost update. A pass that loses simply moves on (the
//! charge was just checked). A hint's check that loses is repeated once, a second later,
//! from the row as it is then, because the write that beat it may have come from a GET
//! that started before the hint arrived, and the hint still deserves a GET after it. A
//! hint's check reads its row right before its GET, so this is rare.
//!
//! # Budget
//! Hint GETs go through the same [`Client`](crate::univapay::Client) as the passes, so the
//! same pacer and budget share govern them. On top, the `coalesce` rules: one GET in
//! flight per charge, hints before its start share it, GETs of one charge at least a
//! second apart, and all hint GETs together at most a quarter of the budget share of
//! UnivaPay's documented 1,200 requests a minute (2.5/s at the default `budget_share`
//! 0.5, fewer under `api.max_requests_per_minute`), in bursts of up to 10. A flood of
//! hints therefore costs at most that, and the passes keep the rest. Charges past their
//! `expires_at` wait behind the others, so a day's expiries, reported all at once, never
//! hold up a payment's hint. Past the 4,096-hint queue new hints are dropped (counted);
//! past 10,000 distinct charges waiting, a hinted charge is made due for the next pass
//! instead, as are the charges still waiting when the daemon stops.
//!
//! Charges the ledger does not hold have a budget of their own (`unknown_limits`: a
//! fifth of the hints', 0.5 a second at the default share) and a bounded memory of ids
//! already handed over, so thousands of unknown ids cost a bounded number of GETs.
//!
//! # Hooks for other parts
//! [`Hooks::unknown`] receives charges the ledger does not hold ([`UnknownChargeHook`],
//! for discovery to verify and register; behind the budget above), and [`Hooks::metrics`]
//! serves `GET /metrics` on this listener (404 while unset).

pub(crate) mod coalesce;
pub(crate) mod http;
pub(crate) mod intake;
pub(crate) mod listen;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::WebhookSettings;
use crate::domain::{ChargeId, Outcome, StoreId};
use crate::reconcile::{Checker, DrainGuard, Stop};

use coalesce::{Admitted, UnknownBudget, UnknownLimits};
pub use listen::Listener;

/// The hints waiting to be recorded; past this, new hints are dropped (still 200).
pub(crate) const QUEUE: usize = 4096;

/// Why the listener could not start. Each names the config key at fault.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("webhook.listen {addr}: cannot listen: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "webhook.listen is not set and systemd passed no socket (LISTEN_FDS): set webhook.listen, or start through konbini-reconciler.socket"
    )]
    NoSocket,
    #[error("webhook.listen: the socket systemd passed cannot be used: {0}")]
    Passed(String),
    #[error("metrics.listen {addr}: cannot listen: {source}")]
    MetricsBind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("webhook.path {0:?} is the listener's own {1} path; choose another")]
    ReservedPath(String, &'static str),
}

/// The name of a webhook event that names a charge (`charge_updated`, `charge_finished`,
/// `cancel_finished`, `refund_finished`, ...): every such event is a hint, whatever it
/// says happened, because only the GET that follows is believed. The name comes from the
/// body, so it is bounded and sanitised before it is stored or logged: at most
/// [`ChargeEvent::MAX_CHARS`] characters, each an ASCII letter, digit, `_`, `.` or `-`
/// (anything else becomes `_`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ChargeEvent(Arc<str>);

impl ChargeEvent {
    pub(crate) const MAX_CHARS: usize = 48;

    /// The sanitised name of `raw`.
    pub(crate) fn new(raw: &str) -> ChargeEvent {
        let name: String = raw
            .chars()
            .take(Self::MAX_CHARS)
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        ChargeEvent(name.into())
    }

    /// Whether the event's `data` is the charge itself (`charge_*` events: its `id` is
    /// the charge's) rather than an object that names it in `data.charge_id` (a cancel,
    /// a refund).
    pub(crate) fn carries_the_charge(&self) -> bool {
        self.0.starts_with("charge_")
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ChargeEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// An accepted hint, on its way from the HTTP side to the intake.
#[derive(Debug, Clone)]
pub(crate) struct Hint {
    pub(crate) charge_id: ChargeId,
    pub(crate) store_id: StoreId,
    pub(crate) event: ChargeEvent,
    /// When it arrived, for the coalescer's timing.
    pub(crate) arrived: tokio::time::Instant,
    /// When it arrived, for the ledger (the reconciler's clock).
    pub(crate) at: DateTime<Utc>,
}

/// An accepted charge event about a charge the ledger does not hold.
#[derive(Debug, Clone)]
pub struct UnknownCharge {
    pub(crate) charge_id: ChargeId,
    pub(crate) store_id: StoreId,
}

/// Told about charges the ledger does not hold. Discovery implements it to verify such a
/// charge with a GET and register it like a discovered one. Called on the intake's task:
/// return quickly (spawn any real work), and expect repeats for the same charge.
pub trait UnknownChargeHook: Send + Sync + 'static {
    fn on_unknown_charge(&self, charge: UnknownCharge);
}

/// The default: unknown charges are only counted and logged at debug by the intake.
#[derive(Debug, Default)]
pub(crate) struct IgnoreUnknown;

impl UnknownChargeHook for IgnoreUnknown {
    fn on_unknown_charge(&self, _charge: UnknownCharge) {}
}

/// Puts [`UnknownBudget`] in front of the hook that verifies unknown charges.
struct Budgeted {
    inner: Arc<dyn UnknownChargeHook>,
    budget: Mutex<UnknownBudget>,
    clock: IntakeClock,
    stats: Arc<Stats>,
}

impl UnknownChargeHook for Budgeted {
    fn on_unknown_charge(&self, charge: UnknownCharge) {
        let admitted = self
            .budget
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .admit(&charge.charge_id, (self.clock)());
        match admitted {
            Admitted::Yes => self.inner.on_unknown_charge(charge),
            Admitted::Repeat => Stats::bump(&self.stats.unknown_repeats),
            Admitted::OverBudget => Stats::bump(&self.stats.unknown_over_budget),
        }
    }
}

/// The budget of unknown charges, from the hints' own: a fifth of it (0.5 a second at
/// the default `api.budget_share`), in bursts of up to 5, so that hints for charges the
/// ledger lacks never take more than a twentieth of the budget share, and 4,096 ids
/// remembered for 10 minutes.
pub(crate) fn unknown_limits(hints: &coalesce::Limits) -> UnknownLimits {
    let per_second = (hints.per_second / 5.0).max(0.05);
    UnknownLimits {
        per_second,
        burst: (per_second * 10.0).clamp(1.0, 5.0),
        remember: 4096,
        remember_for: Duration::from_secs(600),
    }
}

/// The intake's monotonic time: when hints arrived, GETs started, the bucket refilled.
pub(crate) type IntakeClock = Arc<dyn Fn() -> tokio::time::Instant + Send + Sync>;

/// The Prometheus text for `GET /metrics`, from memory (a scrape must never cost the
/// ledger anything: see [`crate::metrics::Cache`]); `None` while nothing is gathered yet
/// (503).
pub(crate) type MetricsRender = Arc<dyn Fn() -> Option<Arc<str>> + Send + Sync>;

/// `/metrics` on the webhook listener, which faces the internet: only with a token.
#[derive(Clone)]
pub struct MetricsHook {
    pub(crate) render: MetricsRender,
    /// `metrics.auth_token`: a scrape presents `Authorization: Bearer <token>`.
    pub(crate) token: SecretString,
}

/// The whole `Authorization` value a scrape with `token` presents.
fn bearer(token: &SecretString) -> SecretString {
    SecretString::from(format!("Bearer {}", token.expose_secret()))
}

/// Binds `metrics.listen` (not a socket systemd passed: that one is the webhook's).
pub(crate) fn bind_metrics(addr: SocketAddr) -> Result<Listener, WebhookError> {
    let socket = std::net::TcpListener::bind(addr)
        .map_err(|source| WebhookError::MetricsBind { addr, source })?;
    Listener::from_std(socket)
}

/// Serves `GET /metrics` (and nothing else) on `listener` until `shutdown`, behind
/// `token` when one is set. The accept loop goes on `tasks`.
pub(crate) fn serve_metrics(
    listener: Listener,
    render: MetricsRender,
    token: Option<&SecretString>,
    tasks: &TaskTracker,
    shutdown: CancellationToken,
) -> Result<SocketAddr, WebhookError> {
    let addr = listener.local_addr();
    let service = Arc::new(http::MetricsService {
        scrape: http::Scrape {
            render,
            expected: token.map(bearer),
            stats: Arc::new(Stats::default()),
            refused_log: Throttle::new(),
        },
    });
    let accept = listener.serve(service, TaskTracker::new(), shutdown)?;
    tasks.spawn(accept);
    tracing::info!(%addr, token = token.is_some(), "metrics listener started");
    Ok(addr)
}

/// What the rest of the program plugs into the listener.
#[derive(Clone)]
pub struct Hooks {
    pub unknown: Arc<dyn UnknownChargeHook>,
    /// `None`: `/metrics` answers 404 on the webhook listener.
    pub metrics: Option<MetricsHook>,
    /// `None`: tokio's clock. The benchmark maps its simulated time onto it, so that
    /// spacing and the hint budget count simulated seconds, as the ledger does.
    pub clock: Option<IntakeClock>,
}

impl Default for Hooks {
    fn default() -> Self {
        Hooks {
            unknown: Arc::new(IgnoreUnknown),
            metrics: None,
            clock: None,
        }
    }
}

/// Counters of what the listener saw and did.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    /// Charge events accepted (200) and handed to the intake.
    pub(crate) received: AtomicU64,
    pub(crate) unauthorized: AtomicU64,
    pub(crate) too_large: AtomicU64,
    pub(crate) timed_out: AtomicU64,
    pub(crate) malformed: AtomicU64,
    /// Other events, answered 200 and ignored.
    pub(crate) other_events: AtomicU64,
    /// Hints dropped: the queue or the coalescer was full, or the ledger failed.
    pub(crate) dropped: AtomicU64,
    /// Hints that queued a GET.
    pub(crate) queued: AtomicU64,
    /// Hints that shared a GET already queued or got the one after the GET in flight.
    pub(crate) coalesced: AtomicU64,
    pub(crate) for_final: AtomicU64,
    pub(crate) not_in_ledger: AtomicU64,
    /// Unknown charges not handed to discovery: already handed over lately.
    pub(crate) unknown_repeats: AtomicU64,
    /// Unknown charges not handed to discovery: their budget was spent.
    pub(crate) unknown_over_budget: AtomicU64,
    pub(crate) other_store: AtomicU64,
    /// Charge GETs made for hints.
    pub(crate) checks: AtomicU64,
    /// Idle connections closed to make room for new ones.
    pub(crate) shed_idle: AtomicU64,
    /// Scrapes of `/metrics` without the right bearer token.
    pub(crate) metrics_refused: AtomicU64,
    /// Hint checks not written because the row had changed meanwhile.
    pub(crate) stale: AtomicU64,
}

/// A copy of `Stats` at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub received: u64,
    pub(crate) unauthorized: u64,
    pub(crate) too_large: u64,
    pub(crate) timed_out: u64,
    pub(crate) malformed: u64,
    pub(crate) other_events: u64,
    pub dropped: u64,
    pub(crate) queued: u64,
    pub coalesced: u64,
    pub for_final: u64,
    pub(crate) not_in_ledger: u64,
    pub(crate) unknown_repeats: u64,
    pub(crate) unknown_over_budget: u64,
    pub(crate) other_store: u64,
    pub checks: u64,
    pub(crate) shed_idle: u64,
    pub(crate) metrics_refused: u64,
    pub(crate) stale: u64,
}

impl Stats {
    fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> StatsSnapshot {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            received: l(&self.received),
            unauthorized: l(&self.unauthorized),
            too_large: l(&self.too_large),
            timed_out: l(&self.timed_out),
            malformed: l(&self.malformed),
            other_events: l(&self.other_events),
            dropped: l(&self.dropped),
            queued: l(&self.queued),
            coalesced: l(&self.coalesced),
            for_final: l(&self.for_final),
            not_in_ledger: l(&self.not_in_ledger),
            unknown_repeats: l(&self.unknown_repeats),
            unknown_over_budget: l(&self.unknown_over_budget),
            other_store: l(&self.other_store),
            checks: l(&self.checks),
            shed_idle: l(&self.shed_idle),
            metrics_refused: l(&self.metrics_refused),
            stale: l(&self.stale),
        }
    }
}

/// Lets one log line of a kind through every [`Throttle::EVERY`], counting the ones held
/// back: a flood of bad requests must not become a flood of log lines.
#[derive(Debug)]
pub(crate) struct Throttle {
    last: Mutex<Option<tokio::time::Instant>>,
    suppressed: AtomicU64,
}

impl Throttle {
    pub(crate) const EVERY: Duration = Duration::from_secs(10);

    pub(crate) fn new() -> Throttle {
        Throttle {
            last: Mutex::new(None),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(lines held back since the last one)` when a line may be logged now.
    pub(crate) fn allow(&self) -> Option<u64> {
        let now = tokio::time::Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|l| now.duration_since(l) < Self::EVERY) {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *last = Some(now);
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

impl Default for Throttle {
    fn default() -> Self {
        Self::new()
    }
}

/// What `GET /healthz` reports: healthy while the listener serves, the daemon is not
/// stopping, and the last scheduled pass did not fail (credentials rejected, UnivaPay
/// unreachable, ledger trouble).
#[derive(Debug, Clone, Default)]
pub struct Health(Arc<HealthState>);

#[derive(Debug, Default)]
struct HealthState {
    stopping: AtomicBool,
    /// The cron ticks stopped coming (see `crate::jobs::clock`).
    schedule_stalled: AtomicBool,
    /// 0: no failed pass; else the failed outcome's code (see [`Health::pass_finished`]).
    failed_pass: AtomicU8,
}

const FAILURES: [(Outcome, &str); 4] = [
    (Outcome::AuthFailed, "last pass: auth_failed\n"),
    (Outcome::Unreachable, "last pass: unreachable\n"),
    (Outcome::Failed, "last pass: failed\n"),
    (Outcome::NotFoundWall, "last pass: not_found_wall\n"),
];

impl Health {
    pub fn new() -> Health {
        Health::default()
    }

    /// Records how a scheduled pass ended.
    pub(crate) fn pass_finished(&self, outcome: Outcome) {
        let code = FAILURES
            .iter()
            .position(|(o, _)| *o == outcome)
            .map_or(0, |i| i as u8 + 1);
        self.0.failed_pass.store(code, Ordering::Relaxed);
    }

    /// Records that a pass could not even run (the ledger failed).
    pub(crate) fn pass_failed(&self) {
        self.pass_finished(Outcome::Failed);
    }

    pub(crate) fn stopping(&self) {
        self.0.stopping.store(true, Ordering::Relaxed);
    }

    /// Records whether the schedule has stopped ticking.
    pub(crate) fn schedule_stalled(&self, stalled: bool) {
        self.0.schedule_stalled.store(stalled, Ordering::Relaxed);
    }

    /// Why the daemon is not healthy, if it is not.
    pub(crate) fn problem(&self) -> Option<&'static str> {
        if self.0.stopping.load(Ordering::Relaxed) {
            return Some("stopping\n");
        }
        if self.0.schedule_stalled.load(Ordering::Relaxed) {
            return Some("schedule: no tick for twice the cron period\n");
        }
        match self.0.failed_pass.load(Ordering::Relaxed) {
            0 => None,
            n => FAILURES.get(usize::from(n) - 1).map(|(_, why)| *why),
        }
    }
}

/// Opens the listener `[webhook]` asks for: the socket systemd passed, or `listen` bound.
/// Without `[webhook]`, `None` (and a warning if systemd passed a socket anyway).
pub(crate) fn open(settings: Option<&WebhookSettings>) -> Result<Option<Listener>, WebhookError> {
    let Some(w) = settings else {
        if listen::socket_passed() {
            tracing::warn!(
                "systemd passed a socket but the config has no [webhook] section; it is not served"
            );
        }
        return Ok(None);
    };
    for (reserved, what) in [
        (http::HEALTH_PATH, "health"),
        (http::METRICS_PATH, "metrics"),
    ] {
        if w.path == reserved {
            return Err(WebhookError::ReservedPath(w.path.clone(), what));
        }
    }
    Listener::open(w.listen).map(Some)
}

/// The running listener and intake.
pub struct Serving {
    stats: Arc<Stats>,
    intake: Arc<intake::Intake>,
    health: Health,
    /// The accept loop, the recorder and the dispatcher.
    tasks: TaskTracker,
    /// The connections.
    conns: TaskTracker,
    /// Ends the drain timer of the checks' [`Stop`] when the intake is dropped.
    _drain: DrainGuard,
}

/// Starts serving `listener`: webhooks on `settings.path`, checked through `checker`,
/// until `shutdown`. Must be called inside a tokio runtime.
pub fn serve(
    listener: Listener,
    settings: &WebhookSettings,
    checker: Checker,
    hooks: Hooks,
    health: Health,
    shutdown: CancellationToken,
) -> Result<Serving, WebhookError> {
    let addr = listener.local_addr();
    let from_systemd = listener.is_from_systemd();
    let stats = Arc::new(Stats::default());
    let (tx, rx) = mpsc::channel(QUEUE);
    let clock: IntakeClock = hooks
        .clock
        .clone()
        .unwrap_or_else(|| Arc::new(tokio::time::Instant::now));
    let limits = unknown_limits(&intake::limits(&checker.context().settings().api));
    let hooks = Hooks {
        unknown: Arc::new(Budgeted {
            inner: hooks.unknown.clone(),
            budget: Mutex::new(UnknownBudget::new(limits, clock())),
            clock,
            stats: stats.clone(),
        }),
        ..hooks
    };
    let intake = intake::Intake::new(checker.clone(), hooks.clone(), stats.clone());
    let service = Arc::new(http::Service {
        hook_path: settings.path.clone(),
        token: settings.auth_token.clone(),
        hints: tx,
        ctx: checker.context().clone(),
        stats: stats.clone(),
        health: health.clone(),
        metrics: hooks.metrics.as_ref().map(|m| http::Scrape {
            render: m.render.clone(),
            expected: Some(bearer(&m.token)),
            stats: stats.clone(),
            refused_log: Throttle::new(),
        }),
        intake: intake.clone(),
        unauthorized_log: Throttle::new(),
        malformed_log: Throttle::new(),
        dropped_log: Throttle::new(),
    });
    let (tasks, conns) = (TaskTracker::new(), TaskTracker::new());
    let accept = listener.serve(service, conns.clone(), shutdown.clone())?;
    let drain = checker.context().settings().schedule.drain_timeout;
    let (stop, drain_guard) = Stop::with_drain(&shutdown, drain);
    tasks.spawn(accept);
    tasks.spawn(intake.clone().record_loop(rx));
    let hints = Arc::new(intake::HintJob::new(intake.clone(), stop));
    tasks.spawn(crate::jobs::own_loop(hints, None, shutdown));
    tasks.close();
    tracing::info!(
        %addr,
        from_systemd,
        path = %settings.path,
        "webhook listener started"
    );
    Ok(Serving {
        stats,
        intake,
        health,
        tasks,
        conns,
        _drain: drain_guard,
    })
}

impl Serving {
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// Now, by the intake's clock ([`Hooks::clock`]).
    pub fn now(&self) -> tokio::time::Instant {
        self.intake.now()
    }

    /// Whether every hint received so far has been recorded and checked.
    pub fn is_settled(&self) -> bool {
        self.intake.is_settled()
    }

    /// For simulations on a clock of their own ([`Hooks::clock`]): when the intake has
    /// nothing to do but wait for time, the instant on that clock it waits for. A
    /// simulation moves its clock there and calls [`Serving::wake`], instead of waiting.
    pub fn waiting_until(&self) -> Option<tokio::time::Instant> {
        self.intake.waiting_until()
    }

    /// Wakes the intake to look at its clock again.
    pub fn wake(&self) {
        self.intake.wake();
    }

    /// After `shutdown` was cancelled: waits up to `limit` for the connections to close,
    /// the last hints to be recorded and the checks in flight to commit. Returns whether
    /// everything finished in time.
    pub async fn stopped(self, limit: Duration) -> bool {
        self.health.stopping();
        let all = async {
            self.conns.close();
            self.conns.wait().await;
            self.tasks.wait().await;
            self.intake.checks_done().await;
            self.intake.hand_back().await;
        };
        let done = tokio::time::timeout(limit, all).await.is_ok();
        let s = self.stats.snapshot();
        tracing::info!(
            received = s.received,
            checks = s.checks,
            coalesced = s.coalesced,
            not_in_ledger = s.not_in_ledger,
            unknown_repeats = s.unknown_repeats,
            unknown_over_budget = s.unknown_over_budget,
            for_final = s.for_final,
            unauthorized = s.unauthorized,
            malformed = s.malformed,
            too_large = s.too_large,
            dropped = s.dropped,
            "webhook listener stopped"
        );
        done
    }
}
