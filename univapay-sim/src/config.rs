//! How the simulator behaves: the credentials it accepts, the rate-limit model, latency,
//! faults injected at random, and the one-shot scripted replies tests queue for a charge.
//! Everything here is plain data; [`crate::Sim::configure`] swaps it at any time.

use std::time::Duration;

use serde_json::Value;

use crate::bucket::Limit;

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

impl Credentials {
    /// The exact `Authorization` value UnivaPay expects: `Bearer {secret}.{app_token}`.
    pub fn authorization(&self) -> String {
        format!("Bearer {}.{}", self.secret, self.app_token)
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

/// The rate-limit model: one bucket per route (all charge GETs together; the charge list;
/// charge creation; ...), each with the `route` limit, and one per exact URL with the
/// `exact` limit. `None` in [`SimConfig::rate_limit`] turns both off, headers included.
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
/// most 1). Injected faults still take a token from the buckets, as real ones would. They
/// hit every GET route (charge, token, charge list, transaction history); the creating
/// POSTs are never faulted at random, so a test knows whether a charge was made.
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
    /// The fault a uniform draw `u` in `0..1` lands on, if any: the shares are laid end to
    /// end on the unit interval.
    pub(crate) fn pick(&self, u: f64) -> Option<Fault> {
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

/// Misbehaviour of the list routes (charge list and transaction history) and the token
/// GET, for testing that a discovery sweep ends in bounded time and registers nothing it
/// did not verify. All off by default.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct DiscoveryFaults {
    /// Every page after the first starts with the cursor's item again, and every page
    /// ends with its own first item again.
    pub repeat_items: bool,
    /// The cursor is ignored: every page is the first page, with `has_more: true`.
    pub looping_cursor: bool,
    /// Every page is `{"items": [], "has_more": true}`.
    pub empty_has_more: bool,
    /// Every third item of a page (the 3rd, 6th, ...) has no `id` (history rows: no
    /// `resource_id` and no `charge_id`).
    pub items_without_ids: bool,
    /// Every page has this many items whatever `limit` says (past the 100 maximum): the
    /// items from the cursor on, then those same items over again until the page is full;
    /// `has_more: false`.
    pub huge_page: Option<usize>,
    /// History rows of about one charge in four (by id) show `payment_type:
    /// "sim_unknown"` (the `payment_type` filter still applies to the real type).
    pub unknown_payment_type: bool,
    /// Share of token ids (decided by a hash of the id, so the same ones every time)
    /// whose `GET /stores/{sid}/tokens/{id}` answers 404.
    pub token_not_found: f64,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Fault {
    ServerError,
    Slow,
    Reset,
    Malformed,
}

/// How the simulator behaves; change it at any time with [`crate::Sim::configure`].
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Added before every answer of every API route.
    pub latency: Duration,
    /// A random extra of up to this much on top of `latency`.
    pub latency_jitter: Duration,
    pub rate_limit: Option<RateLimitConfig>,
    pub faults: Faults,
    /// Keep per-charge request counts for [`crate::Sim::requests_for`] (memory grows with
    /// the number of distinct charges asked about; the standalone binary turns it off).
    pub count_per_charge: bool,
    /// The store `POST /tokens` creates tokens in. At UnivaPay the app token decides the
    /// store; the simulator has one set of credentials, so this stands in for it (a
    /// request may name another store the simulator knows in a `store_id` field).
    /// Default: [`crate::Population::store_id`]`(0)`, the first seeded store.
    pub default_store_id: String,
    /// How long (simulated) a charge made through the API stays `pending`: then a konbini
    /// charge is `awaiting` with its payment number, any other is `successful`. 2 s.
    pub processing_delay: Duration,
    /// The store's konbini payment period, for tokens without `expiration_period`
    /// (UnivaPay's default: 30 days).
    pub konbini_expiry: Duration,
    pub discovery_faults: DiscoveryFaults,
    /// Where webhooks go; `None` (the default) sends none.
    pub webhook: Option<crate::webhook::WebhookTarget>,
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
            default_store_id: crate::seed::Population::store_id(0),
            processing_delay: Duration::from_secs(2),
            konbini_expiry: Duration::from_secs(30 * 86_400),
            discovery_faults: DiscoveryFaults::default(),
            webhook: None,
        }
    }
}

impl SimConfig {
    /// `latency` plus a uniform share of `latency_jitter`.
    pub(crate) fn draw_latency(&self) -> Duration {
        if self.latency_jitter.is_zero() {
            self.latency
        } else {
            self.latency + self.latency_jitter.mul_f64(rand::random::<f64>())
        }
    }
}
