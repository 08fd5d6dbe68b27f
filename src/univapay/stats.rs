//! What one [`Client`](super::Client) has done since it was made: requests by result, time
//! spent waiting for the pacer, and the rate-limit figures UnivaPay last announced. Plain
//! atomics shared by the client's clones, read as a [`ClientStats`] copy for the metrics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::{ApiError, RateLimit};

/// How a charge GET ended, as counted (`konbini_api_requests_total{result}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum RequestResult {
    /// A usable charge answer.
    Ok,
    /// 404.
    NotFound,
    /// 429.
    RateLimited,
    /// 5xx.
    ServerError,
    /// No complete HTTP answer: connection failed or reset, timed out.
    Transport,
    /// 401/403.
    Auth,
    /// An answer that could not be used: unparseable, too large, about another charge.
    Malformed,
    /// Any other 4xx, or a redirect (never followed).
    Rejected,
}

impl RequestResult {
    pub(crate) const ALL: [RequestResult; 8] = [
        RequestResult::Ok,
        RequestResult::NotFound,
        RequestResult::RateLimited,
        RequestResult::ServerError,
        RequestResult::Transport,
        RequestResult::Auth,
        RequestResult::Malformed,
        RequestResult::Rejected,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            RequestResult::Ok => "ok",
            RequestResult::NotFound => "not_found",
            RequestResult::RateLimited => "rate_limited",
            RequestResult::ServerError => "server_error",
            RequestResult::Transport => "transport",
            RequestResult::Auth => "auth",
            RequestResult::Malformed => "malformed",
            RequestResult::Rejected => "rejected",
        }
    }

    /// The class of a GET's result.
    pub(crate) fn of<T>(result: &Result<T, ApiError>) -> RequestResult {
        match result {
            Ok(_) => RequestResult::Ok,
            Err(ApiError::NotFound) => RequestResult::NotFound,
            Err(ApiError::RateLimited { .. }) => RequestResult::RateLimited,
            Err(ApiError::Server(_)) => RequestResult::ServerError,
            Err(ApiError::Connect(_) | ApiError::Timeout(_)) => RequestResult::Transport,
            Err(ApiError::Auth { .. }) => RequestResult::Auth,
            Err(ApiError::Malformed(_)) => RequestResult::Malformed,
            Err(ApiError::Rejected { .. }) => RequestResult::Rejected,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// "Not announced yet" in the rate-limit atomics.
const UNKNOWN: u64 = u64::MAX;

/// The live counters, shared by a client's clones.
#[derive(Debug)]
pub(super) struct Counters {
    requests: [AtomicU64; RequestResult::ALL.len()],
    pacer_waits: AtomicU64,
    pacer_wait_micros: AtomicU64,
    remaining_route: AtomicU64,
    per_minute_route: AtomicU64,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            requests: Default::default(),
            pacer_waits: AtomicU64::new(0),
            pacer_wait_micros: AtomicU64::new(0),
            remaining_route: AtomicU64::new(UNKNOWN),
            per_minute_route: AtomicU64::new(UNKNOWN),
        }
    }
}

/// Waits shorter than this are the pacer saying "go" at once, not a wait.
const WAIT_THRESHOLD: Duration = Duration::from_millis(1);

impl Counters {
    pub(super) fn request(&self, result: RequestResult, rate_limit: &RateLimit) {
        self.requests[result.index()].fetch_add(1, Ordering::Relaxed);
        if let Some(n) = rate_limit.remaining_route {
            self.remaining_route
                .store(n.min(UNKNOWN - 1), Ordering::Relaxed);
        }
        if let Some(n) = rate_limit.per_minute_route {
            self.per_minute_route
                .store(n.min(UNKNOWN - 1), Ordering::Relaxed);
        }
    }

    pub(super) fn waited(&self, d: Duration) {
        if d >= WAIT_THRESHOLD {
            self.pacer_waits.fetch_add(1, Ordering::Relaxed);
            self.pacer_wait_micros.fetch_add(
                d.as_micros().min(u128::from(u64::MAX)) as u64,
                Ordering::Relaxed,
            );
        }
    }

    pub(super) fn snapshot(&self) -> ClientStats {
        let known = |a: &AtomicU64| Some(a.load(Ordering::Relaxed)).filter(|&v| v != UNKNOWN);
        let mut requests = [0; RequestResult::ALL.len()];
        for (n, a) in requests.iter_mut().zip(&self.requests) {
            *n = a.load(Ordering::Relaxed);
        }
        ClientStats {
            requests,
            pacer_waits: self.pacer_waits.load(Ordering::Relaxed),
            pacer_wait: Duration::from_micros(self.pacer_wait_micros.load(Ordering::Relaxed)),
            remaining_route: known(&self.remaining_route),
            per_minute_route: known(&self.per_minute_route),
        }
    }
}

/// A copy of a client's counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientStats {
    requests: [u64; RequestResult::ALL.len()],
    /// Requests that had to wait for the pacer (the budget, a 429 pause, the ceiling).
    pub(crate) pacer_waits: u64,
    /// Their waiting, added up.
    pub(crate) pacer_wait: Duration,
    /// `X-Remaining-Requests-Route` of the last answer that had it.
    pub remaining_route: Option<u64>,
    /// `X-Requests-Per-Minute-Route` of the last answer that had it.
    pub per_minute_route: Option<u64>,
}

impl ClientStats {
    /// Requests that ended as `result`.
    pub(crate) fn requests(&self, result: RequestResult) -> u64 {
        self.requests[result.index()]
    }

    #[cfg(test)]
    /// Every request sent.
    pub(crate) fn total_requests(&self) -> u64 {
        self.requests.iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_its_class() {
        let cases: [(Result<(), ApiError>, &str); 9] = [
            (Ok(()), "ok"),
            (Err(ApiError::NotFound), "not_found"),
            (
                Err(ApiError::RateLimited { retry_after: None }),
                "rate_limited",
            ),
            (Err(ApiError::Server(503)), "server_error"),
            (Err(ApiError::Connect("reset".into())), "transport"),
            (Err(ApiError::Timeout(Duration::from_secs(1))), "transport"),
            (
                Err(ApiError::Auth {
                    status: 401,
                    code: None,
                }),
                "auth",
            ),
            (Err(ApiError::Malformed("x".into())), "malformed"),
            (
                Err(ApiError::Rejected {
                    status: 400,
                    code: None,
                }),
                "rejected",
            ),
        ];
        for (r, want) in cases {
            assert_eq!(RequestResult::of(&r).as_str(), want, "{r:?}");
        }
        for (i, r) in RequestResult::ALL.into_iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }

    #[test]
    fn counters_add_up_and_remember_the_last_headers() {
        let c = Counters::default();
        assert_eq!(c.snapshot(), ClientStats::default());
        let rl = RateLimit {
            remaining_route: Some(7),
            per_minute_route: Some(120),
            ..RateLimit::default()
        };
        c.request(RequestResult::Ok, &rl);
        c.request(RequestResult::Ok, &RateLimit::default());
        c.request(RequestResult::RateLimited, &RateLimit::default());
        c.waited(Duration::from_micros(10));
        c.waited(Duration::from_millis(250));
        let s = c.snapshot();
        assert_eq!(s.requests(RequestResult::Ok), 2);
        assert_eq!(s.requests(RequestResult::RateLimited), 1);
        assert_eq!(s.total_requests(), 3);
        assert_eq!(
            s.remaining_route,
            Some(7),
            "an answer without headers keeps the last"
        );
        assert_eq!(s.per_minute_route, Some(120));
        assert_eq!(
            (s.pacer_waits, s.pacer_wait),
            (1, Duration::from_millis(250))
        );
    }
}
