//! Foreground traffic: the shop's own requests on the charge route (its checkout page
//! reading a new charge to show the payment number, its admin screens). At UnivaPay they
//! spend the same route bucket as a background job's, so a benchmark or a test runs this
//! beside the reconciler and counts how many of the shop's requests were refused (429).
//!
//! [`Foreground::spawn`] sends `GET /stores/{store_id}/charges/{id}` at a steady rate,
//! cycling through the given charge ids, until it is stopped or reaches its bounds
//! (a number of requests and a length of time; real time, `tokio::time`, so a test with
//! paused time drives it too). Requests do not wait for one another, as independent
//! customers would not; at most `max_in_flight` are outstanding, and a tick that finds
//! that many is counted as skipped instead of queued.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, MissedTickBehavior};

use crate::config::Credentials;

/// What a foreground run does; [`ForegroundConfig::new`] gives the defaults.
#[derive(Debug, Clone)]
pub struct ForegroundConfig {
    /// `http://127.0.0.1:{port}`.
    pub base_url: String,
    pub credentials: Credentials,
    pub store_id: String,
    /// The charges to read, in turn.
    pub charge_ids: Vec<String>,
    /// Requests per minute (0 sends none).
    pub per_minute: u32,
    /// Stop after this many requests (default 100,000).
    pub max_requests: u64,
    /// Stop after this long (default 1 hour).
    pub max_duration: Duration,
    /// Requests outstanding at once (default 16).
    pub max_in_flight: usize,
    /// Per request (default 10 s).
    pub timeout: Duration,
}

impl ForegroundConfig {
    pub fn new(
        base_url: impl Into<String>,
        credentials: &Credentials,
        store_id: impl Into<String>,
        charge_ids: Vec<String>,
        per_minute: u32,
    ) -> Self {
        ForegroundConfig {
            base_url: base_url.into(),
            credentials: credentials.clone(),
            store_id: store_id.into(),
            charge_ids,
            per_minute,
            max_requests: 100_000,
            max_duration: Duration::from_secs(3600),
            max_in_flight: 16,
            timeout: Duration::from_secs(10),
        }
    }
}

/// How the shop's requests were answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ForegroundStats {
    /// Requests sent.
    pub sent: u64,
    /// Answered 2xx.
    pub ok: u64,
    /// Answered 429: the customer saw an error because the bucket was empty.
    pub rate_limited: u64,
    /// Answered with any other status.
    pub other_status: u64,
    /// No answer: connection error or timeout.
    pub errors: u64,
    /// Ticks that found `max_in_flight` requests outstanding and sent nothing.
    pub skipped: u64,
    /// `X-Remaining-Requests-Route` of the latest answer that had it.
    pub last_remaining_route: Option<u64>,
}

#[derive(Default)]
struct Shared {
    sent: AtomicU64,
    ok: AtomicU64,
    rate_limited: AtomicU64,
    other_status: AtomicU64,
    errors: AtomicU64,
    skipped: AtomicU64,
    /// The header value plus one; 0 when none was seen.
    last_remaining_route: AtomicU64,
}

impl Shared {
    fn snapshot(&self) -> ForegroundStats {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ForegroundStats {
            sent: n(&self.sent),
            ok: n(&self.ok),
            rate_limited: n(&self.rate_limited),
            other_status: n(&self.other_status),
            errors: n(&self.errors),
            skipped: n(&self.skipped),
            last_remaining_route: n(&self.last_remaining_route).checked_sub(1),
        }
    }

    fn record(&self, answer: Result<reqwest::Response, reqwest::Error>) {
        let counter = match &answer {
            Ok(r) if r.status().is_success() => &self.ok,
            Ok(r) if r.status().as_u16() == 429 => &self.rate_limited,
            Ok(_) => &self.other_status,
            Err(_) => &self.errors,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let remaining = answer.as_ref().ok().and_then(|r| {
            r.headers()
                .get("x-remaining-requests-route")?
                .to_str()
                .ok()?
                .parse::<u64>()
                .ok()
        });
        if let Some(v) = remaining {
            self.last_remaining_route
                .store(v.saturating_add(1), Ordering::Relaxed);
        }
    }
}

/// A running foreground load; dropping it stops it at once.
pub struct Foreground {
    shared: Arc<Shared>,
    stop: Arc<Notify>,
    task: JoinHandle<()>,
}

impl Foreground {
    /// Starts reading `charge_ids` in turn at `per_minute`, with the default bounds.
    pub fn spawn(
        base_url: impl Into<String>,
        credentials: &Credentials,
        store_id: impl Into<String>,
        charge_ids: Vec<String>,
        per_minute: u32,
    ) -> Foreground {
        let cfg = ForegroundConfig::new(base_url, credentials, store_id, charge_ids, per_minute);
        Foreground::spawn_with(cfg)
    }

    pub fn spawn_with(cfg: ForegroundConfig) -> Foreground {
        let shared = Arc::new(Shared::default());
        let stop = Arc::new(Notify::new());
        let task = tokio::spawn(run(cfg, shared.clone(), stop.clone()));
        Foreground { shared, stop, task }
    }

    /// The counts so far.
    pub fn stats(&self) -> ForegroundStats {
        self.shared.snapshot()
    }

    /// Whether it has reached its bounds (or was stopped) and every answer is in.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Sends nothing more, waits for the requests outstanding, and returns the counts.
    pub async fn stop(mut self) -> ForegroundStats {
        self.stop.notify_one();
        let _ = (&mut self.task).await;
        self.shared.snapshot()
    }

    /// Waits until it reaches its bounds, and returns the counts.
    pub async fn finished(mut self) -> ForegroundStats {
        let _ = (&mut self.task).await;
        self.shared.snapshot()
    }
}

impl Drop for Foreground {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(cfg: ForegroundConfig, shared: Arc<Shared>, stop: Arc<Notify>) {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(cfg.timeout)
        .build()
        .expect("a plain HTTP client builds");
    let auth = cfg.credentials.authorization();
    let deadline = Instant::now() + cfg.max_duration;
    let mut ticker = (cfg.per_minute > 0).then(|| {
        let mut t =
            tokio::time::interval(Duration::from_secs_f64(60.0 / f64::from(cfg.per_minute)));
        t.set_missed_tick_behavior(MissedTickBehavior::Skip);
        t
    });
    let mut inflight = JoinSet::new();
    let mut turn = 0usize;
    while shared.sent.load(Ordering::Relaxed) < cfg.max_requests && !cfg.charge_ids.is_empty() {
        tokio::select! {
            _ = async { match ticker.as_mut() { Some(t) => { t.tick().await; } None => std::future::pending().await } } => {}
            _ = stop.notified() => break,
            _ = tokio::time::sleep_until(deadline) => break,
        }
        while inflight.try_join_next().is_some() {}
        if inflight.len() >= cfg.max_in_flight {
            shared.skipped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let id = &cfg.charge_ids[turn % cfg.charge_ids.len()];
        turn += 1;
        let url = format!("{}/stores/{}/charges/{id}", cfg.base_url, cfg.store_id);
        let request = client.get(url).header("Authorization", &auth).send();
        shared.sent.fetch_add(1, Ordering::Relaxed);
        let shared = shared.clone();
        inflight.spawn(async move { shared.record(request.await) });
    }
    while inflight.join_next().await.is_some() {}
}
