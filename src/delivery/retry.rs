//! When a failed delivery is tried again: the contract's schedule (5 s, 5 min, 30 min,
//! 2 h, 5 h, 10 h, 10 h, then every 12 h, never given up), spread by jitter so that a
//! backlog that failed together does not return together, and never sooner than the
//! receiver's `Retry-After` (honoured up to an hour). Pure: the caller passes the jitter.

use std::time::Duration;

/// The delays after the 1st, 2nd, ... failed attempt; the last repeats for ever.
pub(crate) const SCHEDULE: [Duration; 8] = [
    Duration::from_secs(5),
    Duration::from_secs(5 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(5 * 3600),
    Duration::from_secs(10 * 3600),
    Duration::from_secs(10 * 3600),
    Duration::from_secs(12 * 3600),
];

/// The longest `Retry-After` honoured.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// The share of a delay that jitter may add or take away.
pub(crate) const JITTER: f64 = 0.1;

/// The delay after `failures` failed attempts in a row (1 = the first failure).
/// `jitter` in `[0, 1)` moves it within ±10 %; `retry_after` is the receiver's wish.
pub(crate) fn delay(failures: u32, jitter: f64, retry_after: Option<Duration>) -> Duration {
    let i = (failures.max(1) as usize - 1).min(SCHEDULE.len() - 1);
    let base = SCHEDULE[i].as_secs_f64();
    let jitter = jitter.clamp(0.0, 1.0);
    let spread = base * (1.0 - JITTER + 2.0 * JITTER * jitter);
    let scheduled = Duration::from_secs_f64(spread);
    match retry_after {
        Some(ra) => scheduled.max(ra.min(MAX_RETRY_AFTER)),
        None => scheduled,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MID: f64 = 0.5;

    #[test]
    fn the_contracts_schedule() {
        let want = [
            5, 300, 1800, 7200, 18_000, 36_000, 36_000, 43_200, 43_200, 43_200,
        ];
        for (n, secs) in want.iter().enumerate() {
            assert_eq!(
                delay(n as u32 + 1, MID, None),
                Duration::from_secs(*secs),
                "failure {}",
                n + 1
            );
        }
        assert_eq!(delay(u32::MAX, MID, None), Duration::from_secs(43_200));
        assert_eq!(delay(0, MID, None), Duration::from_secs(5));
    }

    #[test]
    fn retry_after_is_honoured_up_to_an_hour() {
        assert_eq!(
            delay(1, MID, Some(Duration::from_secs(120))),
            Duration::from_secs(120)
        );
        assert_eq!(
            delay(1, MID, Some(Duration::from_secs(86_400))),
            Duration::from_secs(3600)
        );
        // Never sooner than the schedule.
        assert_eq!(
            delay(4, MID, Some(Duration::from_secs(60))),
            Duration::from_secs(7200)
        );
    }

    proptest! {
        #[test]
        fn within_ten_percent_and_never_shrinking(n in 1u32..1000, j in 0.0f64..1.0, k in 0.0f64..1.0) {
            let i = (n as usize - 1).min(7);
            let base = SCHEDULE[i].as_secs_f64();
            let d = delay(n, j, None).as_secs_f64();
            prop_assert!(d >= base * 0.9 - 1e-6 && d <= base * 1.1 + 1e-6);
            // A later failure never waits less than an earlier one at the same jitter.
            prop_assert!(delay(n + 1, j, None) >= delay(n, j, None));
            // Never given up: the delay is always finite and at most 12 h plus jitter.
            prop_assert!(delay(n, k, None) <= Duration::from_secs_f64(43_200.0 * 1.1 + 1e-6));
        }

        #[test]
        fn retry_after_never_brings_it_forward(n in 1u32..20, j in 0.0f64..1.0, ra in 0u64..200_000) {
            let with = delay(n, j, Some(Duration::from_secs(ra)));
            prop_assert!(with >= delay(n, j, None));
            prop_assert!(with >= Duration::from_secs(ra.min(3600)));
        }
    }
}
