//! The rate-limit state: one bucket per route and one per exact URL (each a
//! [`TokenBucket`] from `bucket.rs`), and the admission decision one request gets, with
//! the four header values UnivaPay sends on every answer.
//!
//! UnivaPay keeps a bucket per route pattern, so listing charges does not spend the
//! charge GET's budget; charge creation has its own ("charge rate limit"). The simulator
//! gives every route the same configured limit.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use tokio::time::Instant;

use crate::bucket::TokenBucket;
use crate::config::RateLimitConfig;

/// The API routes, each with its own bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Route {
    ChargeGet,
    ChargeList,
    ChargeCreate,
    TokenCreate,
    TokenGet,
    History,
    ChargeExpiry,
}

/// The four rate-limit header values of one answer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RateHeaders {
    pub remaining_exact: u64,
    pub remaining_route: u64,
    pub per_minute_exact: u32,
    pub per_minute_route: u32,
}

/// What the buckets say about one request.
pub(crate) enum Admission {
    /// Rate limiting is off: no headers either.
    Unlimited,
    Admitted(RateHeaders),
    /// 429, with the time until a token is back.
    Refused(RateHeaders, Duration),
}

/// The buckets' state.
pub(crate) struct Limiter {
    /// The limits the buckets were made for; a change starts them all afresh.
    limits: Option<RateLimitConfig>,
    routes: HashMap<Route, TokenBucket>,
    /// Per exact URL, keyed by a hash of it; buckets back to full are dropped.
    exact: HashMap<u64, TokenBucket>,
    hasher: std::collections::hash_map::RandomState,
    inserts_since_prune: u32,
}

/// How many new exact-URL buckets between sweeps for full ones: keeps memory bounded when
/// a benchmark asks about millions of distinct charges, without sweeping on every request.
const PRUNE_EVERY: u32 = 65_536;

impl Limiter {
    pub fn new() -> Self {
        Limiter {
            limits: None,
            routes: HashMap::new(),
            exact: HashMap::new(),
            hasher: Default::default(),
            inserts_since_prune: 0,
        }
    }

    /// Decides one request for `url` on `route`. `take` is false for requests that are
    /// answered without spending a token (unauthenticated ones): they still see the
    /// headers.
    pub fn admit(
        &mut self,
        cfg: Option<RateLimitConfig>,
        route: Route,
        url: &str,
        take: bool,
    ) -> Admission {
        let Some(cfg) = cfg else {
            self.limits = None;
            self.routes.clear();
            self.exact.clear();
            return Admission::Unlimited;
        };
        let now = Instant::now();
        self.reset_if_changed(cfg);
        let key = self.key(route, url);
        let exact_left = self
            .exact
            .get_mut(&key)
            .map(|b| b.remaining(now))
            .unwrap_or(u64::from(cfg.exact.burst));
        let route_left = self
            .routes
            .entry(route)
            .or_insert_with(|| TokenBucket::new(cfg.route, now))
            .remaining(now);
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
            let wait = self.wait_for_token(route, key, route_left == 0, exact_left == 0, now);
            return Admission::Refused(headers(exact_left, route_left), wait);
        }
        let (route_left, exact_left) = self.take(cfg, route, key, now);
        Admission::Admitted(headers(exact_left, route_left))
    }

    /// A new limit starts from full buckets, as if the API had just been reconfigured.
    fn reset_if_changed(&mut self, cfg: RateLimitConfig) {
        if self
            .limits
            .is_none_or(|l| l.route != cfg.route || l.exact != cfg.exact)
        {
            self.limits = Some(cfg);
            self.routes.clear();
            self.exact.clear();
        }
    }

    /// The exact-URL bucket's key: the route is part of it, so `GET /charges` and `POST
    /// /charges` do not share one.
    fn key(&self, route: Route, url: &str) -> u64 {
        let mut h = self.hasher.build_hasher();
        h.write_u8(route as u8);
        h.write(url.as_bytes());
        h.finish()
    }

    /// How long until the empty bucket(s) have a token again (for `Retry-After`).
    fn wait_for_token(
        &mut self,
        route: Route,
        key: u64,
        route_empty: bool,
        exact: bool,
        now: Instant,
    ) -> Duration {
        let mut wait = Duration::ZERO;
        if route_empty && let Some(b) = self.routes.get_mut(&route) {
            wait = wait.max(b.try_take(now).err().unwrap_or_default());
        }
        if exact && let Some(b) = self.exact.get_mut(&key) {
            wait = wait.max(b.try_take(now).err().unwrap_or_default());
        }
        wait
    }

    /// Takes a token from both buckets: what is left in the route's and the URL's.
    fn take(&mut self, cfg: RateLimitConfig, route: Route, key: u64, now: Instant) -> (u64, u64) {
        let route_left = self
            .routes
            .get_mut(&route)
            .expect("route bucket made by admit")
            .try_take(now)
            .unwrap_or(0);
        let exact_left = self
            .exact
            .entry(key)
            .or_insert_with(|| TokenBucket::new(cfg.exact, now))
            .try_take(now)
            .unwrap_or(0);
        self.inserts_since_prune += 1;
        if self.inserts_since_prune >= PRUNE_EVERY {
            self.inserts_since_prune = 0;
            self.exact.retain(|_, b| !b.is_full(now));
        }
        (route_left, exact_left)
    }
}
