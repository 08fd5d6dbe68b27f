//! The steps every API request goes through, in this order:
//!
//! 1. [`Call::begin`]: count it, read the configuration once, check `Authorization`;
//! 2. [`Call::admit`]: spend a token from the buckets (only an authenticated request
//!    spends one, as at UnivaPay; every request sees the headers);
//! 3. [`Call::wait_latency`]: the configured latency, before any answer, refusals too;
//! 4. [`Call::gate`]: 429 with an empty body when a bucket was empty, else 401 for bad
//!    credentials;
//! 5. the route's own answer (scripted reply, injected fault, or the resource);
//! 6. [`Call::finish`]: the four rate-limit headers on whatever the answer was.
//!
//! [`run`] strings them together for a route.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::time::Instant;

use super::respond;
use crate::config::{Fault, SimConfig};
use crate::counters::bump;
use crate::ratelimit::{Admission, RateHeaders, Route};
use crate::sim::Sim;

/// One request on its way through the steps.
pub(crate) struct Call {
    pub sim: Sim,
    pub cfg: Arc<SimConfig>,
    pub route: Route,
    authorized: bool,
    auth_present: bool,
    rate: Option<RateHeaders>,
    /// Set when a bucket was empty: the wait until a token is back.
    refused: Option<Duration>,
}

/// Runs the shared steps for a request to `url`, then `answer` if the request got
/// through them.
pub(crate) async fn run(
    sim: &Sim,
    route: Route,
    url: &str,
    headers: &HeaderMap,
    answer: impl AsyncFnOnce(&Call) -> Response,
) -> Response {
    let mut call = Call::begin(sim, route, headers);
    call.admit(url);
    call.wait_latency().await;
    let resp = match call.gate() {
        Some(refusal) => refusal,
        None => answer(&call).await,
    };
    call.finish(resp)
}

impl Call {
    pub fn begin(sim: &Sim, route: Route, headers: &HeaderMap) -> Call {
        let counters = &sim.inner.counters;
        bump(&counters.api_requests);
        if route == Route::ChargeGet {
            bump(&counters.requests);
        }
        let presented = headers.get(header::AUTHORIZATION);
        let authorized = presented
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == sim.inner.expected_auth);
        Call {
            sim: sim.clone(),
            cfg: sim.config_arc(),
            route,
            authorized,
            auth_present: presented.is_some(),
            rate: None,
            refused: None,
        }
    }

    pub fn admit(&mut self, url: &str) {
        let admission = self
            .sim
            .inner
            .limiter
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .admit(self.cfg.rate_limit, self.route, url, self.authorized);
        match admission {
            Admission::Unlimited => {}
            Admission::Admitted(h) => self.rate = Some(h),
            Admission::Refused(h, wait) => {
                self.rate = Some(h);
                self.refused = Some(wait);
            }
        }
    }

    pub async fn wait_latency(&self) {
        let latency = self.cfg.draw_latency();
        if latency.is_zero() {
            return;
        }
        let slept = Instant::now();
        tokio::time::sleep(latency).await;
        self.sim.inner.counters.latency_micros.fetch_add(
            slept.elapsed().as_micros() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// The refusal this request gets before reaching its route, if any.
    pub fn gate(&self) -> Option<Response> {
        let counters = &self.sim.inner.counters;
        let charge_get = self.route == Route::ChargeGet;
        if let Some(wait) = self.refused {
            bump(&counters.api_rate_limited);
            if charge_get {
                bump(&counters.rate_limited);
            }
            return Some(self.too_many_requests(wait));
        }
        if !self.authorized {
            bump(&counters.api_unauthorized);
            if charge_get {
                bump(&counters.unauthorized);
            }
            let code = if self.auth_present {
                "INVALID_CREDENTIALS"
            } else {
                "AUTH_HEADER_MISSING"
            };
            return Some(respond::error(StatusCode::UNAUTHORIZED, code));
        }
        None
    }

    /// 429 with no body (as UnivaPay sends it), and `Retry-After` only when configured.
    fn too_many_requests(&self, wait: Duration) -> Response {
        let mut resp = StatusCode::TOO_MANY_REQUESTS.into_response();
        if self.cfg.rate_limit.is_some_and(|r| r.retry_after) {
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        resp
    }

    /// A random fault's answer, if one is drawn and it is more than a delay (a slow
    /// fault sleeps here, then lets the normal answer go). `malformed` makes the body of
    /// a malformed 200.
    pub async fn random_fault(&self, malformed: impl FnOnce() -> String) -> Option<Response> {
        Some(match self.draw_fault()? {
            Fault::ServerError => respond::server_error(),
            Fault::Slow => {
                tokio::time::sleep(self.cfg.faults.slow_delay).await;
                return None;
            }
            Fault::Reset => respond::reset(),
            Fault::Malformed => respond::json(StatusCode::OK, malformed()),
        })
    }

    /// A fault drawn at the configured rates, already counted, if one was drawn.
    fn draw_fault(&self) -> Option<Fault> {
        let fault = self.cfg.faults.pick(rand::random::<f64>())?;
        let c = &self.sim.inner.counters;
        bump(match fault {
            Fault::ServerError => &c.server_errors,
            Fault::Slow => &c.slow,
            Fault::Reset => &c.resets,
            Fault::Malformed => &c.malformed,
        });
        Some(fault)
    }

    pub fn finish(&self, mut resp: Response) -> Response {
        respond::add_rate_headers(&mut resp, self.rate);
        resp
    }
}
