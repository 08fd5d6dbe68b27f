//! UnivaPay's rate-limit model: a token bucket holding up to `burst` requests, refilled
//! continuously at `per_minute` requests per minute. A request takes one token; with none
//! left it is refused (429) and takes nothing.
//!
//! Time comes from `tokio::time::Instant`, so tests drive the bucket with paused time.

use std::time::Duration;

use tokio::time::Instant;

/// A bucket's size and refill rate, as announced in the `X-Requests-Per-Minute-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub burst: u32,
    pub per_minute: u32,
}

impl Limit {
    pub fn new(burst: u32, per_minute: u32) -> Self {
        Limit { burst, per_minute }
    }

    fn per_sec(&self) -> f64 {
        f64::from(self.per_minute) / 60.0
    }
}

/// One token bucket.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    limit: Limit,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(limit: Limit, now: Instant) -> Self {
        TokenBucket {
            limit,
            tokens: f64::from(limit.burst),
            at: now,
        }
    }

    pub fn limit(&self) -> Limit {
        self.limit
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * self.limit.per_sec()).min(f64::from(self.limit.burst));
        self.at = self.at.max(now);
    }

    /// Whole tokens left now (what `X-Remaining-Requests-*` reports).
    pub fn remaining(&mut self, now: Instant) -> u64 {
        self.refill(now);
        self.tokens.floor() as u64
    }

    /// Takes a token: `Ok(tokens left)`, or `Err(time until one is back)` when empty.
    pub fn try_take(&mut self, now: Instant) -> Result<u64, Duration> {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(self.tokens.floor() as u64)
        } else {
            let rate = self.limit.per_sec();
            let wait = if rate > 0.0 {
                Duration::from_secs_f64((1.0 - self.tokens) / rate)
            } else {
                Duration::MAX
            };
            Err(wait)
        }
    }

    /// True when the bucket is back to full (its state no longer needs keeping).
    pub fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= f64::from(self.limit.burst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn burst_then_refill() {
        let mut b = TokenBucket::new(Limit::new(3, 60), Instant::now());
        assert_eq!(b.try_take(Instant::now()), Ok(2));
        assert_eq!(b.try_take(Instant::now()), Ok(1));
        assert_eq!(b.try_take(Instant::now()), Ok(0));
        assert_eq!(b.try_take(Instant::now()), Err(Duration::from_secs(1)));
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(b.remaining(Instant::now()), 0);
        assert!(
            b.try_take(Instant::now()).is_err(),
            "a refused request takes nothing"
        );
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(b.try_take(Instant::now()), Ok(0));
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(b.remaining(Instant::now()), 3, "capped at the burst");
        assert!(b.is_full(Instant::now()));
    }
}
