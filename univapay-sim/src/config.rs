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
    /// Added before every answer of the charge route.
    pub latency: Duration,
    /// A random extra of up to this much on top of `latency`.
    pub latency_jitter: Duration,
    pub rate_limit: Option<RateLimitConfig>,
    pub faults: Faults,
    /// Keep per-charge request counts for [`crate::Sim::requests_for`] (memory grows with
    /// the number of distinct charges asked about; the standalone binary turns it off).
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
