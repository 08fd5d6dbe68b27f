//! A fake UnivaPay API for konbini-reconciler: the integration tests' fake server, the
//! demo's in-process UnivaPay and the benchmark's standalone simulator (the `univapay-sim`
//! binary) are this one piece of code.
//!
//! It serves `GET /stores/{store_id}/charges/{charge_id}` with the JSON shapes of the real
//! API and checks `Authorization: Bearer {secret}.{app_token}` like the real API. What it
//! answers:
//! - charges set directly ([`Sim::upsert`], [`Sim::update`]), or a seeded [`Population`]
//!   of any size whose charges go `pending -> awaiting -> final` on simulated time
//!   ([`SimClock`], [`Sim::advance`]);
//! - one-shot scripted replies ([`Sim::push_reply`]) that take precedence for a charge,
//!   which is how tests produce a precise 500, timeout, wrong id or malformed body;
//! - faults injected at a rate ([`Faults`]): 5xx, answers slower than any client timeout,
//!   connections cut mid-answer, malformed bodies;
//! - the rate-limit model ([`RateLimitConfig`]): a token bucket for the route and one per
//!   exact URL, the four `X-Remaining-Requests-*` / `X-Requests-Per-Minute-*` headers on
//!   every answer, and 429 with an empty body once a bucket is empty;
//! - a configurable latency before every answer.
//!
//! [`Sim::counters`] (and `GET /_sim/counters`) say what it saw and sent, 429s included.
//! It binds to loopback addresses only.

mod bucket;
mod clock;
mod seed;

pub use bucket::{Limit, TokenBucket};
pub use clock::SimClock;
pub use seed::{CHAINS, Mix, Outcome, Planned, Population};

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// A charge as the simulator holds it; rendered into UnivaPay's JSON on every GET.
#[derive(Debug, Clone, PartialEq)]
pub struct SimCharge {
    pub id: String,
    pub store_id: String,
    pub status: String,
    pub requested_amount: i64,
    pub requested_currency: String,
    pub charged_amount: Option<i64>,
    pub charged_currency: Option<String>,
    pub metadata: Value,
    pub error: Option<Value>,
    pub mode: String,
    pub created_on: String,
}

impl SimCharge {
    /// A konbini charge just created: `pending`, nothing charged yet.
    pub fn new(id: impl Into<String>, store_id: impl Into<String>, amount: i64) -> Self {
        SimCharge {
            id: id.into(),
            store_id: store_id.into(),
            status: "pending".into(),
            requested_amount: amount,
            requested_currency: "JPY".into(),
            charged_amount: None,
            charged_currency: None,
            metadata: json!({}),
            error: None,
            mode: "test".into(),
            created_on: "2026-11-27T08:00:00.123456Z".into(),
        }
    }

    /// Payment number issued: `awaiting`, with the konbini payment details in metadata.
    pub fn awaiting(mut self, payment_number: &str, slip_url: Option<&str>) -> Self {
        self.status = "awaiting".into();
        let m = self.metadata_mut();
        m.insert(
            "internal_convenience_payment_number".into(),
            json!(payment_number),
        );
        if let Some(u) = slip_url {
            m.insert("internal_convenience_payment_url".into(), json!(u));
        }
        self
    }

    /// Paid at the store: `successful`, charged exactly what was requested.
    pub fn paid(self) -> Self {
        let (amount, currency) = (self.requested_amount, self.requested_currency.clone());
        self.paid_with(amount, &currency)
    }

    /// Paid, but with the given charged amount and currency (for mismatch scenarios).
    pub fn paid_with(mut self, amount: i64, currency: &str) -> Self {
        self.status = "successful".into();
        self.charged_amount = Some(amount);
        self.charged_currency = Some(currency.into());
        self
    }

    /// The payment deadline passed: `failed` with UnivaPay's error object.
    pub fn expired(mut self) -> Self {
        self.status = "failed".into();
        self.error = Some(json!({"code": 323, "message": "payment code expired", "detail": null}));
        self
    }

    /// Any status word, verbatim.
    pub fn with_status(mut self, status: &str) -> Self {
        self.status = status.into();
        self
    }

    fn metadata_mut(&mut self) -> &mut serde_json::Map<String, Value> {
        if !self.metadata.is_object() {
            self.metadata = json!({});
        }
        self.metadata
            .as_object_mut()
            .expect("metadata is an object")
    }

    /// The charge as UnivaPay's JSON.
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "store_id": self.store_id,
            "transaction_token_id": format!("tok-{}", self.id),
            "transaction_token_type": "one_time",
            "subscription_id": null,
            "merchant_transaction_id": null,
            "requested_amount": self.requested_amount,
            "requested_currency": self.requested_currency,
            "requested_amount_formatted": self.requested_amount,
            "charged_amount": self.charged_amount,
            "charged_currency": self.charged_currency,
            "charged_amount_formatted": self.charged_amount,
            "fee_amount": null,
            "fee_currency": null,
            "fee_amount_formatted": null,
            "only_direct_currency": false,
            "capture_at": null,
            "descriptor": null,
            "descriptor_phone_number": null,
            "status": self.status,
            "error": self.error,
            "metadata": self.metadata,
            "mode": self.mode,
            "created_on": self.created_on,
        })
    }
}

/// A scripted answer, used once, ahead of the charge's normal answer.
#[derive(Debug, Clone)]
pub enum Reply {
    /// This status code and body (`application/json`).
    Raw { status: u16, body: String },
    /// This status code, body and extra headers.
    WithHeaders {
        status: u16,
        body: String,
        headers: Vec<(String, String)>,
    },
    /// 200 with this JSON, whatever the charge is.
    Json(Value),
    /// Wait this long, then answer normally (past the client timeout: a timeout).
    Delay(Duration),
    /// Send headers and part of a body, then nothing, never finishing.
    Hang,
    /// Start a 200 answer and break the connection in the middle of the body.
    Reset,
}

/// The rate-limit model: one bucket for the route (all charge GETs together) and one per
/// exact URL. `None` in [`SimConfig::rate_limit`] turns both off, headers included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitConfig {
    pub route: Limit,
    pub exact: Limit,
    /// Send `Retry-After` (whole seconds until a token is back) with a 429. UnivaPay does
    /// not document one, so the default is not to.
    pub retry_after: bool,
}

impl RateLimitConfig {
    /// The same limit for the route and for each exact URL.
    pub fn new(burst: u32, per_minute: u32) -> Self {
        RateLimitConfig {
            route: Limit::new(burst, per_minute),
            exact: Limit::new(burst, per_minute),
            retry_after: false,
        }
    }
}

/// Faults injected at random, each with its own probability per request (summing to at
/// most 1). Injected faults still take a token from the buckets, as real ones would.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Faults {
    /// 500, 502, 503 or 504 with UnivaPay's error body.
    pub server_error: f64,
    /// Answer normally, but only after `slow_delay` (past the client's timeout).
    pub slow: f64,
    /// Start a 200 and cut the connection in the middle of the body.
    pub reset: f64,
    /// 200 with a body that is not a usable charge.
    pub malformed: f64,
    pub slow_delay: Duration,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            server_error: 0.0,
            slow: 0.0,
            reset: 0.0,
            malformed: 0.0,
            slow_delay: Duration::from_secs(60),
        }
    }
}

impl Faults {
    fn pick(&self, u: f64) -> Option<Fault> {
        let mut edge = 0.0;
        for (p, f) in [
            (self.server_error, Fault::ServerError),
            (self.slow, Fault::Slow),
            (self.reset, Fault::Reset),
            (self.malformed, Fault::Malformed),
        ] {
            edge += p.max(0.0);
            if u < edge {
                return Some(f);
            }
        }
        None
    }
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    ServerError,
    Slow,
    Reset,
    Malformed,
}

/// How the simulator behaves; change it at any time with [`Sim::configure`].
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Added before every answer of the charge route.
    pub latency: Duration,
    /// A random extra of up to this much on top of `latency`.
    pub latency_jitter: Duration,
    pub rate_limit: Option<RateLimitConfig>,
    pub faults: Faults,
    /// Keep per-charge request counts for [`Sim::requests_for`] (memory grows with the
    /// number of distinct charges asked about; the standalone binary turns it off).
    pub count_per_charge: bool,
}

impl Default for SimConfig {
    /// No latency, no faults, and a bucket so large that tests never meet it, but whose
    /// headers are on every answer as UnivaPay's are.
    fn default() -> Self {
        SimConfig {
            latency: Duration::ZERO,
            latency_jitter: Duration::ZERO,
            rate_limit: Some(RateLimitConfig::new(100_000, 6_000_000)),
            faults: Faults::default(),
            count_per_charge: true,
        }
    }
}

/// What the simulator has seen and sent.
#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    ok: AtomicU64,
    unauthorized: AtomicU64,
    not_found: AtomicU64,
    rate_limited: AtomicU64,
    scripted: AtomicU64,
    server_errors: AtomicU64,
    slow: AtomicU64,
    resets: AtomicU64,
    malformed: AtomicU64,
    latency_micros: AtomicU64,
}

/// A snapshot of [`Sim`]'s counters. `requests` counts every charge GET; the others say
/// how each was answered (`server_errors`, `slow`, `resets`, `malformed` are injected
/// faults; `scripted` are [`Reply`]s).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CounterSnapshot {
    pub requests: u64,
    pub ok: u64,
    pub unauthorized: u64,
    pub not_found: u64,
    pub rate_limited: u64,
    pub scripted: u64,
    #[serde(default)]
    pub server_errors: u64,
    #[serde(default)]
    pub slow: u64,
    #[serde(default)]
    pub resets: u64,
    #[serde(default)]
    pub malformed: u64,
    /// Total latency actually added, in microseconds (the timer rounds sleeps up, so the
    /// mean is a little above the configured latency).
    #[serde(default)]
    pub latency_micros: u64,
}

#[derive(Default)]
struct Data {
    charges: HashMap<String, SimCharge>,
    /// Seeded charges that were removed.
    removed: HashSet<String>,
    scripts: HashMap<String, VecDeque<Reply>>,
    per_charge_requests: HashMap<String, u64>,
}

/// The buckets' state.
struct Limiter {
    route: Option<TokenBucket>,
    /// Per exact URL, keyed by a hash of it; buckets back to full are dropped.
    exact: HashMap<u64, TokenBucket>,
    hasher: std::collections::hash_map::RandomState,
    inserts_since_prune: u32,
}

/// The four rate-limit header values of one answer.
#[derive(Debug, Clone, Copy)]
struct RateHeaders {
    remaining_exact: u64,
    remaining_route: u64,
    per_minute_exact: u32,
    per_minute_route: u32,
}

enum Admission {
    Unlimited,
    Admitted(RateHeaders),
    Refused(RateHeaders, Duration),
}

impl Limiter {
    fn new() -> Self {
        Limiter {
            route: None,
            exact: HashMap::new(),
            hasher: Default::default(),
            inserts_since_prune: 0,
        }
    }

    fn admit(&mut self, cfg: Option<RateLimitConfig>, url: &str, take: bool) -> Admission {
        let Some(cfg) = cfg else {
            self.route = None;
            self.exact.clear();
            return Admission::Unlimited;
        };
        let now = Instant::now();
        if self.route.as_ref().is_none_or(|b| b.limit() != cfg.route) {
            self.route = Some(TokenBucket::new(cfg.route, now));
            self.exact.clear();
        }
        let key = {
            let mut h = self.hasher.build_hasher();
            h.write(url.as_bytes());
            h.finish()
        };
        let route = self.route.as_mut().expect("route bucket set above");
        let exact_left = self
            .exact
            .get_mut(&key)
            .map(|b| b.remaining(now))
            .unwrap_or(u64::from(cfg.exact.burst));
        let route_left = route.remaining(now);
        let headers = |exact: u64, route: u64| RateHeaders {
            remaining_exact: exact,
            remaining_route: route,
            per_minute_exact: cfg.exact.per_minute,
            per_minute_route: cfg.route.per_minute,
        };
        if !take {
            return Admission::Admitted(headers(exact_left, route_left));
        }
        if route_left == 0 || exact_left == 0 {
            let mut wait = Duration::ZERO;
            if route_left == 0 {
                wait = wait.max(route.try_take(now).err().unwrap_or_default());
            }
            if exact_left == 0
                && let Some(b) = self.exact.get_mut(&key)
            {
                wait = wait.max(b.try_take(now).err().unwrap_or_default());
            }
            return Admission::Refused(headers(exact_left, route_left), wait);
        }
        let route_left = route.try_take(now).unwrap_or(0);
        let exact_left = self
            .exact
            .entry(key)
            .or_insert_with(|| TokenBucket::new(cfg.exact, now))
            .try_take(now)
            .unwrap_or(0);
        self.inserts_since_prune += 1;
        if self.inserts_since_prune >= 65_536 {
            self.inserts_since_prune = 0;
            self.exact.retain(|_, b| !b.is_full(now));
        }
        Admission::Admitted(headers(exact_left, route_left))
    }
}

struct Inner {
    /// The exact Authorization value a request must carry.
    expected_auth: String,
    config: RwLock<SimConfig>,
    clock: SimClock,
    data: Mutex<Data>,
    population: RwLock<Option<Population>>,
    limiter: Mutex<Limiter>,
    counters: Counters,
}

/// Credentials the simulator accepts.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub secret: String,
    pub app_token: String,
}

impl Default for Credentials {
    fn default() -> Self {
        Credentials {
            secret: "sim-secret".into(),
            // Shaped like a JWT, as real app tokens are.
            app_token: "eyJhbGciOiJIUzI1NiJ9.eyJhcHBfaWQiOiJzaW0ifQ.c2lnbmF0dXJl".into(),
        }
    }
}

/// Handle to a simulator. Clones share state.
#[derive(Clone)]
pub struct Sim {
    inner: Arc<Inner>,
}

/// A running simulator: its address and the task serving it (aborted on drop).
pub struct RunningSim {
    pub sim: Sim,
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl RunningSim {
    /// `http://127.0.0.1:{port}`, for `api.base_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for RunningSim {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::ops::Deref for RunningSim {
    type Target = Sim;
    fn deref(&self) -> &Sim {
        &self.sim
    }
}

impl Sim {
    pub fn new(credentials: Credentials) -> Sim {
        Sim::with_config(credentials, SimConfig::default())
    }

    pub fn with_config(credentials: Credentials, config: SimConfig) -> Sim {
        Sim {
            inner: Arc::new(Inner {
                expected_auth: format!("Bearer {}.{}", credentials.secret, credentials.app_token),
                config: RwLock::new(config),
                clock: SimClock::default(),
                data: Mutex::new(Data::default()),
                population: RwLock::new(None),
                limiter: Mutex::new(Limiter::new()),
                counters: Counters::default(),
            }),
        }
    }

    fn data(&self) -> MutexGuard<'_, Data> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters for a fake; keep serving.
        self.inner.data.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Binds `127.0.0.1:0` and serves until the returned handle is dropped.
    pub async fn start(credentials: Credentials) -> std::io::Result<RunningSim> {
        Sim::new(credentials)
            .serve("127.0.0.1:0".parse().expect("address"))
            .await
    }

    /// As [`Sim::start`], with a configuration.
    pub async fn start_with(
        credentials: Credentials,
        config: SimConfig,
    ) -> std::io::Result<RunningSim> {
        Sim::with_config(credentials, config)
            .serve("127.0.0.1:0".parse().expect("address"))
            .await
    }

    /// Serves on `addr` (which must be a loopback address).
    pub async fn serve(self, addr: SocketAddr) -> std::io::Result<RunningSim> {
        if !addr.ip().is_loopback() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the simulator only listens on loopback addresses",
            ));
        }
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let app = self.router();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(RunningSim {
            sim: self,
            addr,
            task,
        })
    }

    /// The axum router, for embedding.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/heartbeat", get(|| async { StatusCode::OK }))
            .route("/stores/{store_id}/charges/{charge_id}", get(get_charge))
            .route(
                "/_sim/counters",
                get(|State(sim): State<Sim>| async move {
                    json_response(
                        StatusCode::OK,
                        serde_json::to_string(&sim.counters()).unwrap_or_default(),
                    )
                }),
            )
            .with_state(self.clone())
    }

    /// The current configuration.
    pub fn config(&self) -> SimConfig {
        self.inner
            .config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Changes the configuration (latency, rate limit, faults) from the next request on.
    pub fn configure(&self, f: impl FnOnce(&mut SimConfig)) {
        let mut c = self.inner.config.write().unwrap_or_else(|p| p.into_inner());
        f(&mut c);
    }

    /// Simulated time.
    pub fn clock(&self) -> &SimClock {
        &self.inner.clock
    }

    /// Moves simulated time forward: seeded charges get on with their lives.
    pub fn advance(&self, d: Duration) {
        self.inner.clock.advance(d);
    }

    /// Serves a seeded population (replacing any earlier one), created as of simulated
    /// now. Returns it, with its `epoch` set, so the caller can list the same charges.
    pub fn seed(&self, mut population: Population) -> Population {
        population.epoch = self.inner.clock.now();
        *self
            .inner
            .population
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(population.clone());
        population
    }

    /// The seeded population, if any.
    pub fn population(&self) -> Option<Population> {
        self.inner
            .population
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn seeded(&self, id: &str) -> Option<SimCharge> {
        let pop = self
            .inner
            .population
            .read()
            .unwrap_or_else(|p| p.into_inner());
        let pop = pop.as_ref()?;
        let i = pop.index_of(id)?;
        Some(pop.plan(i).at(self.inner.clock.now()))
    }

    /// Adds or replaces a charge.
    pub fn upsert(&self, charge: SimCharge) {
        self.data().charges.insert(charge.id.clone(), charge);
    }

    /// Changes a charge in place (a seeded one is taken as it is now, and frozen there).
    /// Panics if there is no such charge (a test bug).
    pub fn update(&self, id: &str, f: impl FnOnce(SimCharge) -> SimCharge) {
        let current = self.charge(id).unwrap_or_else(|| panic!("no charge {id}"));
        self.data().charges.insert(id.to_owned(), f(current));
    }

    /// The charge as the simulator holds it now.
    pub fn charge(&self, id: &str) -> Option<SimCharge> {
        {
            let d = self.data();
            if let Some(c) = d.charges.get(id) {
                return Some(c.clone());
            }
            if d.removed.contains(id) {
                return None;
            }
        }
        self.seeded(id)
    }

    /// Removes a charge (its GET then answers 404, like an expired test-mode charge).
    pub fn remove(&self, id: &str) {
        let mut d = self.data();
        d.charges.remove(id);
        d.removed.insert(id.to_owned());
    }

    /// Queues a one-shot reply for the next GET of `charge_id`.
    pub fn push_reply(&self, charge_id: &str, reply: Reply) {
        self.data()
            .scripts
            .entry(charge_id.to_owned())
            .or_default()
            .push_back(reply);
    }

    /// How many GETs arrived for this charge.
    pub fn requests_for(&self, charge_id: &str) -> u64 {
        self.data()
            .per_charge_requests
            .get(charge_id)
            .copied()
            .unwrap_or(0)
    }

    pub fn counters(&self) -> CounterSnapshot {
        let c = &self.inner.counters;
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CounterSnapshot {
            requests: n(&c.requests),
            ok: n(&c.ok),
            unauthorized: n(&c.unauthorized),
            not_found: n(&c.not_found),
            rate_limited: n(&c.rate_limited),
            scripted: n(&c.scripted),
            server_errors: n(&c.server_errors),
            slow: n(&c.slow),
            resets: n(&c.resets),
            malformed: n(&c.malformed),
            latency_micros: n(&c.latency_micros),
        }
    }
}

fn error_body(code: &str) -> String {
    json!({"status": "error", "code": code, "errors": []}).to_string()
}

fn json_response(status: StatusCode, body: String) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

fn add_rate_headers(resp: &mut Response, h: Option<RateHeaders>) {
    let Some(h) = h else { return };
    let hs = resp.headers_mut();
    for (name, v) in [
        ("x-remaining-requests-exact", h.remaining_exact),
        ("x-remaining-requests-route", h.remaining_route),
        ("x-requests-per-minute-exact", u64::from(h.per_minute_exact)),
        ("x-requests-per-minute-route", u64::from(h.per_minute_route)),
    ] {
        // Scripted replies may set their own values; those win.
        if !hs.contains_key(name) {
            hs.insert(name, HeaderValue::from(v));
        }
    }
}

async fn get_charge(
    State(sim): State<Sim>,
    Path((store_id, charge_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let (resp, rate) = answer(&sim, &store_id, &charge_id, &headers).await;
    let mut resp = resp;
    add_rate_headers(&mut resp, rate);
    resp
}

async fn answer(
    sim: &Sim,
    store_id: &str,
    charge_id: &str,
    headers: &HeaderMap,
) -> (Response, Option<RateHeaders>) {
    let c = &sim.inner.counters;
    c.requests.fetch_add(1, Ordering::Relaxed);
    let cfg = sim.config();
    let authorized = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == sim.inner.expected_auth);
    let url = format!("/stores/{store_id}/charges/{charge_id}");
    let admission = sim
        .inner
        .limiter
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .admit(cfg.rate_limit, &url, authorized);
    let latency = cfg.latency
        + if cfg.latency_jitter.is_zero() {
            Duration::ZERO
        } else {
            cfg.latency_jitter.mul_f64(rand::random::<f64>())
        };
    if !latency.is_zero() {
        let slept = Instant::now();
        tokio::time::sleep(latency).await;
        c.latency_micros
            .fetch_add(slept.elapsed().as_micros() as u64, Ordering::Relaxed);
    }
    let rate = match admission {
        Admission::Unlimited => None,
        Admission::Admitted(h) => Some(h),
        Admission::Refused(h, wait) => {
            c.rate_limited.fetch_add(1, Ordering::Relaxed);
            let mut resp = StatusCode::TOO_MANY_REQUESTS.into_response();
            if cfg.rate_limit.is_some_and(|r| r.retry_after) {
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
            }
            return (resp, Some(h));
        }
    };
    if !authorized {
        c.unauthorized.fetch_add(1, Ordering::Relaxed);
        let code = if headers.contains_key(header::AUTHORIZATION) {
            "INVALID_CREDENTIALS"
        } else {
            "AUTH_HEADER_MISSING"
        };
        return (
            json_response(StatusCode::UNAUTHORIZED, error_body(code)),
            rate,
        );
    }
    let script = {
        let mut d = sim.data();
        if cfg.count_per_charge {
            *d.per_charge_requests
                .entry(charge_id.to_owned())
                .or_default() += 1;
        }
        if d.scripts.is_empty() {
            None
        } else {
            d.scripts.get_mut(charge_id).and_then(VecDeque::pop_front)
        }
    };
    if let Some(reply) = script {
        c.scripted.fetch_add(1, Ordering::Relaxed);
        match reply {
            Reply::Raw { status, body } => {
                return (
                    json_response(
                        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                        body,
                    ),
                    rate,
                );
            }
            Reply::WithHeaders {
                status,
                body,
                headers,
            } => {
                let mut resp = json_response(
                    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                    body,
                );
                for (k, v) in headers {
                    if let (Ok(k), Ok(v)) =
                        (header::HeaderName::try_from(k), HeaderValue::try_from(v))
                    {
                        resp.headers_mut().insert(k, v);
                    }
                }
                return (resp, rate);
            }
            Reply::Json(v) => return (json_response(StatusCode::OK, v.to_string()), rate),
            Reply::Delay(d) => tokio::time::sleep(d).await,
            Reply::Hang => return (hang(), rate),
            Reply::Reset => return (reset(), rate),
        }
    } else if let Some(fault) = cfg.faults.pick(rand::random::<f64>()) {
        match fault {
            Fault::ServerError => {
                c.server_errors.fetch_add(1, Ordering::Relaxed);
                let (status, code) = [
                    (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_SERVER_ERROR"),
                    (StatusCode::BAD_GATEWAY, "BAD_GATEWAY"),
                    (StatusCode::SERVICE_UNAVAILABLE, "SERVICE_UNAVAILABLE"),
                    (StatusCode::GATEWAY_TIMEOUT, "GATEWAY_TIMEOUT"),
                ][rand::random_range(0..4)];
                return (json_response(status, error_body(code)), rate);
            }
            Fault::Slow => {
                c.slow.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(cfg.faults.slow_delay).await;
            }
            Fault::Reset => {
                c.resets.fetch_add(1, Ordering::Relaxed);
                return (reset(), rate);
            }
            Fault::Malformed => {
                c.malformed.fetch_add(1, Ordering::Relaxed);
                let body = match rand::random_range(0..3) {
                    0 => format!("{{\"id\": \"{charge_id}\", \"status\": "),
                    1 => "<html><body>Bad Gateway</body></html>".to_owned(),
                    _ => json!({"id": charge_id, "status": 42, "requested_amount": "lots"})
                        .to_string(),
                };
                return (json_response(StatusCode::OK, body), rate);
            }
        }
    }
    match sim.charge(charge_id) {
        Some(ch) if ch.store_id == store_id => {
            c.ok.fetch_add(1, Ordering::Relaxed);
            (
                json_response(StatusCode::OK, ch.to_json().to_string()),
                rate,
            )
        }
        _ => {
            c.not_found.fetch_add(1, Ordering::Relaxed);
            (
                json_response(StatusCode::NOT_FOUND, error_body("NOT_FOUND")),
                rate,
            )
        }
    }
}

/// Headers and the start of a body, then nothing, never finishing.
fn hang() -> Response {
    let stream = futures_stream(vec![Ok(Bytes::from_static(b"{\"id\": \""))], true);
    (StatusCode::OK, Body::from_stream(stream)).into_response()
}

/// A 200 whose body breaks off with a connection error.
fn reset() -> Response {
    let stream = futures_stream(
        vec![
            Ok(Bytes::from_static(b"{\"id\": \"")),
            Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "simulated reset",
            )),
        ],
        false,
    );
    (
        StatusCode::OK,
        [(header::CONTENT_LENGTH, HeaderValue::from_static("4096"))],
        Body::from_stream(stream),
    )
        .into_response()
}

/// A body stream yielding `items`, then either ending or pending forever.
fn futures_stream(
    items: Vec<Result<Bytes, std::io::Error>>,
    hang: bool,
) -> impl futures_core::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    let mut items: VecDeque<_> = items.into();
    futures_util::stream::poll_fn(move |_cx| match items.pop_front() {
        Some(item) => std::task::Poll::Ready(Some(item)),
        None if hang => std::task::Poll::Pending,
        None => std::task::Poll::Ready(None),
    })
}
