//! Simulated time: the clock that konbini charges live their lifecycle on.
//!
//! It runs at `scale` simulated seconds per real second from an origin, and can be moved
//! forward at will ([`SimClock::advance`]), so a test or the demo can let thirty days of
//! konbini deadlines pass in an instant. Real time is read from `tokio::time::Instant`, so
//! a test with `tokio::time::pause()` controls it too.

use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;

struct Origin {
    real: Instant,
    sim: DateTime<Utc>,
    scale: f64,
}

/// Simulated wall-clock time.
pub struct SimClock {
    origin: Mutex<Origin>,
}

impl SimClock {
    /// Starts at `start`, running at `scale` simulated seconds per real second.
    pub fn new(start: DateTime<Utc>, scale: f64) -> Self {
        SimClock {
            origin: Mutex::new(Origin {
                real: Instant::now(),
                sim: start,
                scale: sanitize_scale(scale),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Origin> {
        self.origin.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn now(&self) -> DateTime<Utc> {
        let o = self.lock();
        at(&o, Instant::now())
    }

    /// Jumps simulated time forward by `d`.
    pub fn advance(&self, d: Duration) {
        let mut o = self.lock();
        o.sim += chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
    }

    /// Changes the speed from now on (0 stops simulated time).
    pub fn set_scale(&self, scale: f64) {
        let mut o = self.lock();
        let now = Instant::now();
        o.sim = at(&o, now);
        o.real = now;
        o.scale = sanitize_scale(scale);
    }
}

impl Default for SimClock {
    fn default() -> Self {
        SimClock::new(Utc::now(), 1.0)
    }
}

fn sanitize_scale(scale: f64) -> f64 {
    if scale.is_finite() && scale >= 0.0 {
        scale
    } else {
        1.0
    }
}

fn at(o: &Origin, now: Instant) -> DateTime<Utc> {
    let real = now.saturating_duration_since(o.real);
    let sim = real.mul_f64(o.scale);
    o.sim + chrono::Duration::from_std(sim).unwrap_or(chrono::Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn runs_scaled_and_jumps() {
        let start = Utc::now();
        let clock = SimClock::new(start, 60.0);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(clock.now() - start, chrono::Duration::seconds(120));
        clock.advance(Duration::from_secs(3600));
        assert_eq!(clock.now() - start, chrono::Duration::seconds(3720));
        clock.set_scale(0.0);
        tokio::time::advance(Duration::from_secs(50)).await;
        assert_eq!(clock.now() - start, chrono::Duration::seconds(3720));
    }
}
