//! Exponential backoff with jitter, the one formula used for a charge's retries after
//! errors and for the client-wide pause after a 429.

use std::time::Duration;

/// Delay before the next try after the `failures`-th error in a row (1-based): the base
/// doubled per failure, capped, then scaled into `[cap/2, cap]` by `jitter` in `[0, 1)` so
/// that charges which failed together do not all come back together.
pub(crate) fn backoff(failures: u32, base: Duration, max: Duration, jitter: f64) -> Duration {
    let exp = failures.saturating_sub(1).min(30);
    let full = base.saturating_mul(1u32 << exp).min(max);
    let jitter = jitter.clamp(0.0, 1.0);
    full.mul_f64(0.5 + 0.5 * jitter)
}
