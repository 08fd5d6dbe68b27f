//! The charge GET over one pooled `reqwest` client.

use std::time::Duration;

use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderMap, HeaderValue, RETRY_AFTER};
use reqwest::{StatusCode, Url, redirect};
use secrecy::ExposeSecret;

use super::pacer::{Answer, Pacer, Paused, Ticket};
use super::stats::{ClientStats, Counters, RequestResult};
use super::{ApiError, ProviderCharge};
use crate::config::ApiSettings;
use crate::domain::{ChargeId, StoreId};

/// A charge answer is a few KiB; anything past this is not a charge and is not read.
pub(crate) const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The rate-limit headers UnivaPay sends on every response (absent ones are `None`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RateLimit {
    /// Requests left in the bucket for this exact URL.
    pub(crate) remaining_exact: Option<u64>,
    /// Requests left in the bucket for the route pattern (all charge GETs).
    pub(crate) remaining_route: Option<u64>,
    pub(crate) per_minute_exact: Option<u64>,
    pub(crate) per_minute_route: Option<u64>,
}

impl RateLimit {
    fn from_headers(h: &HeaderMap) -> Self {
        let num = |name: &str| {
            h.get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        RateLimit {
            remaining_exact: num("x-remaining-requests-exact"),
            remaining_route: num("x-remaining-requests-route"),
            per_minute_exact: num("x-requests-per-minute-exact"),
            per_minute_route: num("x-requests-per-minute-route"),
        }
    }

    /// No rate-limit header at all: the server announces no budget.
    pub(crate) fn is_empty(&self) -> bool {
        *self == RateLimit::default()
    }
}

/// The outcome of one GET: the charge or the error, plus whatever rate-limit headers came.
#[derive(Debug)]
pub(crate) struct Fetched {
    pub(crate) result: Result<ProviderCharge, ApiError>,
}

/// UnivaPay API client. Cheap to clone; clones share the connection pool.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base_url: Url,
    timeout: Duration,
    /// Shared by all clones: the rate-limit budget belongs to the credentials, not to
    /// one request.
    pacer: Pacer,
    /// Shared by all clones, for the metrics: what this client has done.
    counters: std::sync::Arc<Counters>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base_url", &self.base_url.as_str())
            .finish_non_exhaustive()
    }
}

impl Client {
    pub fn new(api: &ApiSettings) -> anyhow::Result<Self> {
        let mut auth = HeaderValue::try_from(format!(
            "Bearer {}.{}",
            api.secret.expose_secret(),
            api.app_token.expose_secret()
        ))
        .map_err(|_| {
            anyhow::anyhow!("api.secret or api.app_token cannot be sent in an HTTP header")
        })?;
        // Keeps the value out of reqwest's and our own Debug output.
        auth.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, auth);
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .user_agent(concat!("konbini-reconciler/", env!("CARGO_PKG_VERSION")))
            .timeout(api.timeout)
            .connect_timeout(api.timeout.min(Duration::from_secs(10)))
            // A redirect is never followed: the Authorization header must not travel to
            // another host, and the charge GET has no reason to redirect.
            .redirect(redirect::Policy::none())
            .pool_max_idle_per_host(api.concurrency)
            .tcp_nodelay(true)
            .build()?;
        Ok(Client {
            http,
            base_url: api.base_url.clone(),
            timeout: api.timeout,
            pacer: Pacer::with_share(
                api.max_requests_per_minute.map(|n| n.get()),
                api.budget_share,
            ),
            counters: Default::default(),
        })
    }

    fn charge_url(&self, store: &StoreId, charge: &ChargeId) -> Url {
        let mut url = self.base_url.clone();
        // Ids are checked to be path-safe, so pushing them as segments cannot escape.
        if let Ok(mut segs) = url.path_segments_mut() {
            segs.pop_if_empty()
                .extend(["stores", store.as_str(), "charges", charge.as_str()]);
        }
        url
    }

    /// Waits until the rate-limit budget allows one more request (see [`Pacer`]), or
    /// returns [`Paused`] at once when UnivaPay imposes a wait longer than `max_pause`.
    pub(crate) async fn pace(&self, max_pause: Duration) -> Result<Ticket, Paused> {
        let asked = tokio::time::Instant::now();
        let ticket = self.pacer.acquire(max_pause).await;
        self.counters.waited(asked.elapsed());
        ticket
    }

    /// Holds every request of this client for `d`: a pause an earlier pass recorded.
    pub(crate) fn pause_for(&self, d: Duration) {
        self.pacer.pause_for(d);
    }

    /// What this client (and its clones) has done so far, for the metrics.
    pub(crate) fn stats(&self) -> ClientStats {
        self.counters.snapshot()
    }

    /// Requests per minute the pacer allows this client (`api.budget_share` of the
    /// announced route rate, under `api.max_requests_per_minute`); `None` until known.
    pub(crate) fn budget_per_minute(&self) -> Option<f64> {
        self.pacer.budget_per_minute()
    }

    /// [`get_charge`](Self::get_charge) with the pacer's permission already in hand.
    pub(crate) async fn get_charge_paced(
        &self,
        ticket: Ticket,
        store: &StoreId,
        charge: &ChargeId,
    ) -> Fetched {
        let url = self.charge_url(store, charge);
        let (body, rate_limit) = self.get_paced(ticket, url).await;
        let result = body.and_then(|b| checked_charge(&b, store, charge));
        self.count(&result, &rate_limit);
        Fetched { result }
    }

    /// Counts one request by how it ended, for the metrics. Each caller of
    /// [`get_paced`](Self::get_paced) counts after checking the body, so that an answer
    /// that cannot be read counts as `malformed`, not `ok`.
    pub(super) fn count<T>(&self, result: &Result<T, ApiError>, rate_limit: &RateLimit) {
        self.counters.request(RequestResult::of(result), rate_limit);
    }

    /// `base_url` with these path segments appended (each must be path-safe: an id, or
    /// a fixed word).
    pub(super) fn endpoint(&self, segments: &[&str]) -> Url {
        let mut url = self.base_url.clone();
        if let Ok(mut segs) = url.path_segments_mut() {
            segs.pop_if_empty().extend(segments);
        }
        url
    }

    /// One GET with the pacer's permission in hand, its answer reported to the pacer: the
    /// body of a 2xx answer (at most [`MAX_BODY_BYTES`]), or the error it amounts to.
    /// Every request of the client goes through here.
    pub(super) async fn get_paced(
        &self,
        ticket: Ticket,
        url: Url,
    ) -> (Result<Vec<u8>, ApiError>, RateLimit) {
        let resp = match self.http.get(url).send().await {
            Ok(r) => r,
            Err(e) => {
                self.pacer.observe(ticket, Answer::Nothing);
                return (Err(self.transport_error(e)), RateLimit::default());
            }
        };
        let rate_limit = RateLimit::from_headers(resp.headers());
        // Read once: the pacer pauses the whole client by it, the rules the one charge.
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let answer = if resp.status() == StatusCode::TOO_MANY_REQUESTS {
            Answer::RateLimited {
                rate_limit,
                retry_after,
            }
        } else {
            Answer::Http(rate_limit)
        };
        self.pacer.observe(ticket, answer);
        (self.interpret(resp, retry_after).await, rate_limit)
    }

    async fn interpret(
        &self,
        resp: reqwest::Response,
        retry_after: Option<Duration>,
    ) -> Result<Vec<u8>, ApiError> {
        let status = resp.status();
        let body = self.read_capped(resp).await;
        match status {
            s if s.is_success() => body,
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(ApiError::Auth {
                status: status.as_u16(),
                code: body.ok().and_then(|b| error_code(&b)),
            }),
            StatusCode::NOT_FOUND => Err(ApiError::NotFound),
            StatusCode::TOO_MANY_REQUESTS => Err(ApiError::RateLimited { retry_after }),
            s if s.is_server_error() => Err(ApiError::Server(s.as_u16())),
            s => Err(ApiError::Rejected {
                status: s.as_u16(),
                code: body.ok().and_then(|b| error_code(&b)),
            }),
        }
    }

    async fn read_capped(&self, mut resp: reqwest::Response) -> Result<Vec<u8>, ApiError> {
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_BODY_BYTES as u64)
        {
            return Err(ApiError::malformed(format!(
                "body larger than {MAX_BODY_BYTES} bytes"
            )));
        }
        let mut body = Vec::new();
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > MAX_BODY_BYTES {
                        return Err(ApiError::malformed(format!(
                            "body larger than {MAX_BODY_BYTES} bytes"
                        )));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => return Ok(body),
                Err(e) => return Err(self.transport_error(e)),
            }
        }
    }

    fn transport_error(&self, e: reqwest::Error) -> ApiError {
        let e = e.without_url();
        if e.is_timeout() {
            ApiError::Timeout(self.timeout)
        } else {
            // Connection refused or reset, TLS failure, a body cut short: all worth a retry.
            ApiError::connect(error_chain(&e))
        }
    }
}

/// A charge answer's body, checked to be about exactly that charge of that store.
pub(super) fn checked_charge(
    body: &[u8],
    store: &StoreId,
    charge: &ChargeId,
) -> Result<ProviderCharge, ApiError> {
    let c = ProviderCharge::from_json(body).map_err(ApiError::malformed)?;
    if c.id != *charge {
        return Err(ApiError::malformed(format!(
            "answer is for charge {}, not {charge}",
            c.id
        )));
    }
    if let Some(s) = &c.store_id
        && s != store
    {
        return Err(ApiError::malformed(format!(
            "answer is for store {s}, not {store}"
        )));
    }
    Ok(c)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let msg = inner.to_string();
        if !s.contains(&msg) {
            s.push_str(": ");
            s.push_str(&msg);
        }
        src = inner.source();
    }
    s
}

/// The `code` of UnivaPay's error body, e.g. `INVALID_APP_TOKEN`.
fn error_code(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let code = v.get("code")?.as_str()?;
    // Only a short upper-snake word is worth repeating; never echo arbitrary text.
    (code.len() <= 64
        && code
            .chars()
            .all(|c| c.is_ascii_uppercase() || c == '_' || c.is_ascii_digit()))
    .then(|| code.to_owned())
}

/// `Retry-After` as delay-seconds or an HTTP date.
pub(crate) fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs.min(3600)));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let delta = at.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(
        delta
            .to_std()
            .unwrap_or(Duration::ZERO)
            .min(Duration::from_secs(3600)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 0 "), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn error_code_is_only_a_code() {
        assert_eq!(
            error_code(br#"{"status":"error","code":"INVALID_APP_TOKEN","errors":[]}"#).as_deref(),
            Some("INVALID_APP_TOKEN")
        );
        assert_eq!(error_code(br#"{"code":"secret.token leaked"}"#), None);
        assert_eq!(error_code(b""), None);
    }

    #[test]
    fn rate_limit_headers() {
        let mut h = HeaderMap::new();
        h.insert("X-Remaining-Requests-Exact", HeaderValue::from_static("19"));
        h.insert("X-Remaining-Requests-Route", HeaderValue::from_static("7"));
        h.insert(
            "X-Requests-Per-Minute-Route",
            HeaderValue::from_static("120"),
        );
        let r = RateLimit::from_headers(&h);
        assert_eq!(r.remaining_exact, Some(19));
        assert_eq!(r.remaining_route, Some(7));
        assert_eq!(r.per_minute_exact, None);
        assert_eq!(r.per_minute_route, Some(120));
    }
}
