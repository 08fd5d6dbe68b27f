//! The schedule against the wall clock: tokio-cron-scheduler keeps its next tick as a
//! wall-clock time, so a step of the wall clock (an NTP step, a VM resumed, a wrong RTC at
//! boot) can leave it waiting for a time that is days away. Pure decisions, fed by the
//! daemon: [`StepWatch`] sees a step by comparing the wall clock with the monotonic one
//! (which steps never move), and [`TickWatch`] sees ticks that stop coming at all.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;

/// A wall clock moved by more than this against the monotonic one is a step, not drift
/// or a late poll.
pub(crate) const STEP_TOLERANCE: Duration = Duration::from_secs(5);

/// The wall and monotonic clocks read together, and what a later reading says.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StepWatch {
    wall: DateTime<Utc>,
    mono: Instant,
}

impl StepWatch {
    pub(crate) fn new(wall: DateTime<Utc>, mono: Instant) -> StepWatch {
        StepWatch { wall, mono }
    }

    /// How far the wall clock stepped since the last reading (positive: forward), when it
    /// did by more than [`STEP_TOLERANCE`]; the watch moves on to this reading either way.
    pub(crate) fn observe(
        &mut self,
        wall: DateTime<Utc>,
        mono: Instant,
    ) -> Option<chrono::Duration> {
        let elapsed = chrono::Duration::from_std(mono.saturating_duration_since(self.mono))
            .unwrap_or(chrono::Duration::MAX);
        let moved = wall - self.wall;
        let step = moved - elapsed;
        *self = StepWatch { wall, mono };
        let tolerance = chrono::Duration::from_std(STEP_TOLERANCE).unwrap_or_default();
        (step.abs() > tolerance).then_some(step)
    }
}

/// Whether the cron ticks keep coming: after each tick (and at start) the next is due by
/// its time plus one more cron period; past that the schedule has stopped.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TickWatch {
    deadline: Option<Instant>,
    stalled: bool,
}

/// What [`TickWatch::check`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ticks {
    Coming,
    /// No tick by the deadline; `newly` the first time it is seen.
    Stalled {
        newly: bool,
    },
    /// Ticks came again after a stall.
    Resumed,
}

impl TickWatch {
    /// A watch expecting the first tick of `cron` after `wall` (read at `mono`).
    pub(crate) fn new(cron: &str, wall: DateTime<Utc>, mono: Instant) -> TickWatch {
        let mut w = TickWatch {
            deadline: None,
            stalled: false,
        };
        w.rearm(cron, wall, mono);
        w
    }

    /// A tick came at `wall` (or the schedule was re-armed): the next is expected by its
    /// time after `wall` plus one more cron period.
    pub(crate) fn rearm(&mut self, cron: &str, wall: DateTime<Utc>, mono: Instant) {
        self.deadline = allowance(cron, wall).map(|d| mono + d);
    }

    /// Checks the deadline at `mono`; `ticked` says whether a tick came since the last
    /// check (the caller re-arms on it).
    pub(crate) fn check(&mut self, mono: Instant, ticked: bool) -> Ticks {
        if ticked {
            return if std::mem::take(&mut self.stalled) {
                Ticks::Resumed
            } else {
                Ticks::Coming
            };
        }
        match self.deadline {
            Some(d) if mono > d => {
                let newly = !self.stalled;
                self.stalled = true;
                Ticks::Stalled { newly }
            }
            _ => Ticks::Coming,
        }
    }

    #[cfg(test)]
    pub(crate) fn is_stalled(&self) -> bool {
        self.stalled
    }
}

/// Time from `wall` to the next tick of `cron`, plus the period after it (twice the period
/// for an even cron). `None` for a cron that never fires again.
fn allowance(cron: &str, wall: DateTime<Utc>) -> Option<Duration> {
    let next = crate::config::cron_next(cron, wall)?;
    let period = crate::config::cron_period(cron, wall)?;
    Some((next - wall).to_std().unwrap_or_default() + period)
}

/// The latest `next_check_at` the schedule can give an open charge checked at `now`: its
/// longest interval (or the longest back-off), times `stretch`, plus `slack`. Anything
/// later was set while the clock was ahead.
pub(crate) fn latest_next_check(
    longest: Duration,
    stretch: f64,
    slack: Duration,
    now: DateTime<Utc>,
) -> DateTime<Utc> {
    let ahead = longest.mul_f64(stretch.clamp(1.0, 1e6)) + slack;
    chrono::Duration::from_std(ahead)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap()
    }

    #[test]
    fn steps_both_ways_are_seen_and_drift_is_not() {
        let mono = Instant::now();
        let mut w = StepWatch::new(t0(), mono);
        let later = mono + Duration::from_secs(10);
        assert_eq!(
            w.observe(t0() + chrono::Duration::seconds(11), later),
            None,
            "a second of drift"
        );
        let m2 = later + Duration::from_secs(10);
        let back = w.observe(
            t0() + chrono::Duration::seconds(11) - chrono::Duration::minutes(10)
                + chrono::Duration::seconds(10),
            m2,
        );
        assert_eq!(back, Some(chrono::Duration::minutes(-10)));
        let m3 = m2 + Duration::from_secs(1);
        let wall3 = t0() + chrono::Duration::seconds(22) - chrono::Duration::minutes(10)
            + chrono::Duration::days(3);
        assert_eq!(w.observe(wall3, m3), Some(chrono::Duration::days(3)));
    }

    #[test]
    fn no_tick_for_twice_the_period_is_a_stall_reported_once() {
        let mono = Instant::now();
        let cron = "0 * * * * *";
        // At 12:00:00 the next tick is 12:01:00; allowed until 12:02:00.
        let mut w = TickWatch::new(cron, t0(), mono);
        assert_eq!(
            w.check(mono + Duration::from_secs(119), false),
            Ticks::Coming
        );
        assert_eq!(
            w.check(mono + Duration::from_secs(121), false),
            Ticks::Stalled { newly: true }
        );
        assert!(w.is_stalled());
        assert_eq!(
            w.check(mono + Duration::from_secs(200), false),
            Ticks::Stalled { newly: false }
        );
        assert_eq!(
            w.check(mono + Duration::from_secs(201), true),
            Ticks::Resumed
        );
        assert_eq!(
            w.check(mono + Duration::from_secs(202), true),
            Ticks::Coming
        );
    }

    #[test]
    fn a_weekday_cron_is_not_stalled_over_the_weekend() {
        let mono = Instant::now();
        // Friday 2026-03-06 09:00 UTC; the next tick is Monday 09:00.
        let friday = Utc.with_ymd_and_hms(2026, 3, 6, 9, 0, 0).unwrap();
        let mut w = TickWatch::new("0 0 9 * * MON-FRI", friday, mono);
        let sunday_night = mono + Duration::from_secs(2 * 86_400 + 23 * 3600);
        assert_eq!(w.check(sunday_night, false), Ticks::Coming);
    }

    #[test]
    fn the_latest_next_check_allows_the_longest_interval_stretched() {
        let latest = latest_next_check(
            Duration::from_secs(3600),
            2.0,
            Duration::from_secs(60),
            t0(),
        );
        assert_eq!(latest, Utc.with_ymd_and_hms(2026, 3, 1, 14, 1, 0).unwrap());
        assert_eq!(
            latest_next_check(Duration::from_secs(3600), 0.5, Duration::ZERO, t0()),
            Utc.with_ymd_and_hms(2026, 3, 1, 13, 0, 0).unwrap(),
            "never shrunk below the schedule"
        );
    }
}
