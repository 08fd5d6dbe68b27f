//! The recheck cadence, as pure functions: when an unchanged open charge is due again
//! (by its age, its deadline and the budget), how many checks per minute the open charges
//! need, and how far the intervals must stretch when that is more than the budget allows.
//!
//! - **By age.** `reconcile.recheck_schedule` gives the interval for each age (time since
//!   `created_at`). A schedule of several steps is jittered, early and never late: each
//!   check comes `LEAD` (or a fifth of the interval, if less) plus up to `EARLY_JITTER`
//!   of the interval early. Charges registered together so spread out, and, because
//!   passes run on a cron, a charge checked a minute into a pass is still due by the tick
//!   its interval ends on instead of waiting a whole extra tick: "every 10 minutes" on a
//!   5-minute cron is every second tick, not every third. A schedule of one step is the
//!   flat schedule of `recheck_interval`, exactly as before (no jitter, no lead).
//! - **The deadline.** With `expires_at` known, a check is made at `expires_at +
//!   expiry_grace` when the schedule would come later, so an unpaid charge turns `failed`
//!   promptly; and during `deadline_watch` before the deadline, the charge is checked at
//!   the schedule's first (young) interval, because customers who pay late pay on the
//!   last day (a long interval is cut short to start the watch on time).
//! - **The budget.** When the open charges need more checks per minute than the budget
//!   share allows, every interval is multiplied by one factor
//!   (`Cadence::stretch_to_fit`) so the checks fit, instead of a backlog growing without
//!   bound. The deadline check is not stretched.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::domain::{ChargeDates, RecheckStep};

/// A check of a jittered schedule comes up to this fraction of its interval early, on top
/// of its lead.
pub(crate) const EARLY_JITTER: f64 = 0.2;

/// A check of a jittered schedule comes this much early (at most a fifth of its
/// interval, see [`lead`]): the time a check may be made into a pass, after the tick.
/// A pass spends the budget share at its pace, so at the default share (600 GETs a
/// minute) two minutes cover a pass of 1,200 due charges; a check made later than this
/// into its pass slips one tick.
pub(crate) const LEAD: Duration = Duration::from_secs(120);

/// How early a check of a jittered schedule with this interval comes, on top of its
/// jitter. A fifth at most: with the jitter's fifth, a check never comes sooner than 0.6
/// of its interval, so "every 10 minutes" on a 5-minute cron stays every second tick for
/// any check made up to two minutes into its pass.
pub(crate) fn lead(every: Duration) -> Duration {
    LEAD.min(every / 5)
}

/// Demand is stretched to fit this share of the budget, leaving room for retries after
/// errors, deadline checks and the unevenness of passes.
pub(crate) const TARGET_USE: f64 = 0.9;

/// The largest stretch applied: beyond it the budget is simply too small, and the warning
/// says so.
pub(crate) const MAX_STRETCH: f64 = 1000.0;

/// How often open charges are checked: the schedule, the deadline rules, the stretch.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Cadence {
    /// Sorted by age, the first at age 0, never empty (as the config validates).
    pub(crate) schedule: Arc<[RecheckStep]>,
    pub(crate) expiry_grace: Duration,
    /// Before a known deadline, this long is checked at the first step's interval.
    pub(crate) deadline_watch: Duration,
    /// At least 1; applied to every interval but the deadline check.
    pub(crate) stretch: f64,
}

impl Cadence {
    #[cfg(test)]
    /// One interval for every age, no deadline watch, no stretch.
    pub(crate) fn flat(every: Duration) -> Self {
        Cadence {
            schedule: Arc::from([RecheckStep {
                age: Duration::ZERO,
                every,
            }]),
            expiry_grace: Duration::ZERO,
            deadline_watch: Duration::ZERO,
            stretch: 1.0,
        }
    }

    /// Whether the schedule is the flat one (a single step): checked exactly `every`
    /// after the last check, without jitter.
    pub(crate) fn is_flat(&self) -> bool {
        self.schedule.len() <= 1
    }

    /// The schedule's (unstretched) interval for a charge of this age.
    pub(crate) fn interval_at(&self, age: Duration) -> Duration {
        self.schedule
            .iter()
            .take_while(|s| s.age <= age)
            .last()
            .or(self.schedule.first())
            .map_or(Duration::from_secs(300), |s| s.every)
    }

    /// The first step's interval: the pace for young charges and the deadline watch.
    pub(crate) fn young_interval(&self) -> Duration {
        self.schedule
            .first()
            .map_or(Duration::from_secs(300), |s| s.every)
    }

    /// Age up to which a charge counts as young (the end of the first step), for a
    /// schedule of several steps.
    pub(crate) fn young_until(&self) -> Option<Duration> {
        self.schedule.get(1).map(|s| s.age)
    }

    /// Whether a deadline this far ahead puts the charge in its deadline watch.
    fn watched(&self, until_deadline: Option<Duration>) -> bool {
        until_deadline.is_some_and(|d| !d.is_zero() && d <= self.deadline_watch)
    }

    /// When a charge that a check at `now` found open and unchanged is due again.
    /// `jitter` is in `[0, 1)`.
    pub(crate) fn next_check(
        &self,
        now: DateTime<Utc>,
        dates: &ChargeDates,
        jitter: f64,
    ) -> DateTime<Utc> {
        // A created_at that cannot be read, or lies in the future, counts as age 0.
        let age = dates
            .created_at
            .and_then(|c| (now - c).to_std().ok())
            .unwrap_or(Duration::ZERO);
        let until_deadline = dates.expires_at.and_then(|e| (e - now).to_std().ok());
        let mut every = self.interval_at(age);
        if self.watched(until_deadline) {
            every = every.min(self.young_interval());
        }
        let every = scale(every, self.stretch.clamp(1.0, MAX_STRETCH));
        let every = if self.is_flat() {
            every
        } else {
            scale(every, 1.0 - EARLY_JITTER * jitter.clamp(0.0, 1.0)).saturating_sub(lead(every))
        };
        let mut next = after(now, every);
        if let Some(expires) = dates.expires_at {
            // Into the deadline watch on time: a long interval must not overshoot its start.
            let watch = before(expires, self.deadline_watch);
            if !self.deadline_watch.is_zero() && now < watch && watch < next {
                next = watch;
            }
            let deadline_check = after(expires, self.expiry_grace);
            if now < deadline_check && deadline_check < next {
                next = deadline_check;
            }
        }
        next
    }

    /// Checks per minute the open charges need, unstretched.
    pub(crate) fn demand_per_minute(&self, open: &OpenCount) -> f64 {
        self.demand_stretched(open, 1.0)
    }

    /// Checks per minute `open` needs with every interval stretched by `stretch`.
    fn demand_stretched(&self, open: &OpenCount, stretch: f64) -> f64 {
        let per_minute = |n: u64, every: Duration| {
            let every = scale(every, stretch);
            n as f64 * 60.0
                / self
                    .effective_interval(every, open.tick)
                    .as_secs_f64()
                    .max(1e-3)
        };
        self.schedule
            .iter()
            .zip(&open.by_step)
            .map(|(s, &n)| per_minute(n, s.every))
            .sum::<f64>()
            + per_minute(open.watched, self.young_interval())
    }

    /// The least factor (at least 1) by which every interval must stretch so that `open`
    /// needs no more than [`TARGET_USE`] of `budget` checks per minute. No budget known (no
    /// answer with rate-limit headers yet and no `api.max_requests_per_minute`): 1, nothing
    /// to fit to. Not simply demand over budget: on a cron, an interval is checked at
    /// whole ticks, so a stretch too small to move a check to a later tick saves nothing.
    /// The demand falls as the stretch grows, so the factor is found by bisection.
    pub(crate) fn stretch_to_fit(&self, open: &OpenCount, budget: Option<f64>) -> f64 {
        let Some(target) = budget.filter(|b| *b > 0.0).map(|b| b * TARGET_USE) else {
            return 1.0;
        };
        let fits = |stretch: f64| {
            let d = self.demand_stretched(open, stretch);
            d.is_nan() || d <= target
        };
        if fits(1.0) {
            return 1.0;
        }
        if !fits(MAX_STRETCH) {
            return MAX_STRETCH;
        }
        let (mut lo, mut hi) = (1.0, MAX_STRETCH);
        // 60 halvings of 1000 leave far less than the 1e-9 the figures are shown to.
        for _ in 0..60 {
            let mid = (lo + hi) / 2.0;
            if fits(mid) { hi = mid } else { lo = mid }
        }
        hi
    }

    /// How often, on average, a charge on interval `every` is checked under this
    /// schedule: see [`on_the_cron`].
    pub(crate) fn effective_interval(&self, every: Duration, tick: Option<Duration>) -> Duration {
        on_the_cron(every, self.is_flat(), tick)
    }
}

/// How often, on average, a charge on interval `every` is checked when passes run every
/// `tick`. A flat schedule (`flat`) is checked exactly `every` after a check made a moment
/// after its pass's tick, so it falls due a moment after a tick and is taken at the next
/// one: a whole number of ticks past `every` (a flat 5 minutes on the 5-minute cron is
/// every second pass). A jittered schedule comes early by its lead and jitter, and is
/// taken at the first tick at or after that: the mean over the jitter of that many ticks
/// ("every 10 minutes" on the 5-minute cron is every second pass). Without a known tick,
/// a flat interval is itself and a jittered one counts at its mean early time.
pub fn on_the_cron(every: Duration, flat: bool, tick: Option<Duration>) -> Duration {
    match (flat, tick.filter(|t| !t.is_zero())) {
        (true, Some(tick)) => {
            let ticks = (every.as_secs_f64() / tick.as_secs_f64()).floor() + 1.0;
            scale(tick, ticks)
        }
        (true, None) => every,
        (false, Some(tick)) => scale(tick, mean_ticks(every, tick)),
        (false, None) => scale(every, 1.0 - EARLY_JITTER / 2.0),
    }
}

/// What the open charges are, as the plan stage counted them: `by_step[k]` in step `k` of
/// the schedule by age (outside the deadline watch), `watched` in their deadline watch,
/// and `tick`, the time between passes when known (the cron's).
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct OpenCount {
    pub(crate) by_step: Vec<u64>,
    pub(crate) watched: u64,
    pub(crate) tick: Option<Duration>,
}

impl OpenCount {
    pub(crate) fn new(by_step: &[u64], watched: u64, tick: Option<Duration>) -> Self {
        OpenCount {
            by_step: by_step.to_vec(),
            watched,
            tick,
        }
    }
}

/// The mean number of ticks between checks of a jittered interval `every`, for a check
/// made at a tick: it is due again uniformly between `every * (1 - EARLY_JITTER) - lead`
/// and `every - lead` later, and taken at the first tick at or after that (one at least).
fn mean_ticks(every: Duration, tick: Duration) -> f64 {
    let t = tick.as_secs_f64();
    let lead = lead(every).as_secs_f64();
    let latest = every.as_secs_f64() - lead;
    let earliest = every.as_secs_f64() * (1.0 - EARLY_JITTER) - lead;
    // The integral of max(1, ceil(x / t)) from 0 to x (x at least 0), and x itself below 0.
    let integral = |x: f64| {
        if x <= 0.0 {
            return x;
        }
        let n = (x / t).floor();
        t * n * (n + 1.0) / 2.0 + (x - n * t) * (n + 1.0)
    };
    if latest - earliest < 1e-9 {
        return (latest / t).ceil().max(1.0);
    }
    ((integral(latest) - integral(earliest)) / (latest - earliest)).max(1.0)
}

fn scale(d: Duration, factor: f64) -> Duration {
    Duration::try_from_secs_f64(d.as_secs_f64() * factor).unwrap_or(Duration::MAX)
}

fn before(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| t.checked_sub_signed(d))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

fn after(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| t.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SEC: Duration = Duration::from_secs(1);
    const MIN: Duration = Duration::from_secs(60);
    const HOUR: Duration = Duration::from_secs(3600);
    const DAY: Duration = Duration::from_secs(86_400);

    fn t0() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-27T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn plus(d: Duration) -> DateTime<Utc> {
        t0() + chrono::Duration::from_std(d).unwrap()
    }

    fn steps(s: &[(Duration, Duration)]) -> Cadence {
        Cadence {
            schedule: s
                .iter()
                .map(|&(age, every)| RecheckStep { age, every })
                .collect(),
            expiry_grace: 5 * MIN,
            deadline_watch: DAY,
            stretch: 1.0,
        }
    }

    fn default_like() -> Cadence {
        steps(&[(Duration::ZERO, 10 * MIN), (2 * DAY, 2 * HOUR)])
    }

    fn born(at: DateTime<Utc>) -> ChargeDates {
        ChargeDates {
            created_at: Some(at),
            expires_at: None,
        }
    }

    #[test]
    fn the_interval_follows_the_age() {
        let c = steps(&[(Duration::ZERO, MIN), (HOUR, 10 * MIN), (DAY, 30 * MIN)]);
        assert_eq!(c.interval_at(Duration::ZERO), MIN);
        assert_eq!(c.interval_at(HOUR - Duration::from_secs(1)), MIN);
        assert_eq!(c.interval_at(HOUR), 10 * MIN);
        assert_eq!(c.interval_at(30 * DAY), 30 * MIN);
        // With no jitter the check comes one interval, less the lead (two minutes), later.
        let now = plus(2 * HOUR);
        assert_eq!(
            c.next_check(now, &born(t0()), 0.0),
            now + chrono::Duration::minutes(8)
        );
        // The lead is a fifth of a short interval.
        let now = plus(Duration::from_secs(60));
        assert_eq!(
            c.next_check(now, &born(t0()), 0.0),
            now + chrono::Duration::seconds(48)
        );
    }

    #[test]
    fn jitter_only_brings_a_check_forward() {
        let c = default_like();
        let now = plus(HOUR);
        let latest = now + chrono::Duration::minutes(8);
        let earliest = now + chrono::Duration::minutes(6);
        assert_eq!(c.next_check(now, &born(t0()), 0.0), latest);
        let almost_one = c.next_check(now, &born(t0()), 0.999_999);
        assert!(almost_one >= earliest && almost_one < earliest + chrono::Duration::seconds(1));
        assert_eq!(
            c.next_check(now, &born(t0()), 0.5),
            now + chrono::Duration::minutes(7)
        );
    }

    #[test]
    fn the_flat_schedule_is_exact() {
        let c = Cadence::flat(5 * MIN);
        let now = plus(3 * DAY);
        for j in [0.0, 0.5, 0.99] {
            assert_eq!(
                c.next_check(now, &born(t0()), j),
                now + chrono::Duration::minutes(5)
            );
        }
    }

    #[test]
    fn an_unknown_or_future_created_at_is_young() {
        let c = default_like();
        let now = plus(10 * DAY);
        let young = now + chrono::Duration::minutes(8);
        assert_eq!(c.next_check(now, &ChargeDates::default(), 0.0), young);
        assert_eq!(c.next_check(now, &born(plus(11 * DAY)), 0.0), young);
        assert_eq!(
            c.next_check(now, &born(t0()), 0.0),
            now + chrono::Duration::minutes(118)
        );
    }

    #[test]
    fn the_deadline_check_comes_at_expiry_plus_grace() {
        let c = default_like();
        let expires = plus(7 * DAY);
        let dates = ChargeDates {
            created_at: Some(t0()),
            expires_at: Some(expires),
        };
        // Inside the watch the pace is the young one; the last check before the
        // deadline is followed by one at expires_at + grace, not ten minutes later.
        let now = expires - chrono::Duration::minutes(2);
        assert_eq!(
            c.next_check(now, &dates, 0.0),
            expires + chrono::Duration::minutes(5)
        );
        // Far from the deadline the schedule decides.
        let now = plus(3 * DAY);
        assert_eq!(
            c.next_check(now, &dates, 0.0),
            now + chrono::Duration::minutes(118)
        );
        // After the deadline check, if UnivaPay still says open: the schedule again.
        let now = expires + chrono::Duration::minutes(6);
        assert_eq!(
            c.next_check(now, &dates, 0.0),
            now + chrono::Duration::minutes(118)
        );
        // The deadline check is not stretched.
        let stretched = Cadence {
            stretch: 10.0,
            ..c.clone()
        };
        let now = expires - chrono::Duration::minutes(30);
        assert_eq!(
            stretched.next_check(now, &dates, 0.0),
            expires + chrono::Duration::minutes(5)
        );
    }

    #[test]
    fn the_last_day_is_watched_at_the_young_pace() {
        let c = default_like();
        let expires = plus(7 * DAY);
        let dates = ChargeDates {
            created_at: Some(t0()),
            expires_at: Some(expires),
        };
        let now = expires - chrono::Duration::hours(20);
        assert_eq!(
            c.next_check(now, &dates, 0.0),
            now + chrono::Duration::minutes(8)
        );
        let now = expires - chrono::Duration::hours(27);
        assert_eq!(
            c.next_check(now, &dates, 0.0),
            now + chrono::Duration::minutes(118)
        );
        // A long interval that would overshoot the start of the watch stops there.
        let now = expires - chrono::Duration::hours(25);
        assert_eq!(
            c.next_check(now, &dates, 0.0),
            expires - chrono::Duration::hours(24)
        );
        let off = Cadence {
            deadline_watch: Duration::ZERO,
            ..c
        };
        let now = expires - chrono::Duration::hours(20);
        assert_eq!(
            off.next_check(now, &dates, 0.0),
            now + chrono::Duration::minutes(118)
        );
    }

    #[test]
    fn stretch_multiplies_every_interval() {
        let c = Cadence {
            stretch: 3.0,
            ..default_like()
        };
        let now = plus(HOUR);
        assert_eq!(
            c.next_check(now, &born(t0()), 0.0),
            now + chrono::Duration::minutes(28)
        );
        let flat = Cadence {
            stretch: 2.5,
            ..Cadence::flat(4 * MIN)
        };
        assert_eq!(
            flat.next_check(now, &born(t0()), 0.0),
            now + chrono::Duration::minutes(10)
        );
    }

    #[test]
    fn demand_counts_each_step_at_its_pace() {
        let flat = Cadence::flat(5 * MIN);
        assert_eq!(
            flat.demand_per_minute(&OpenCount::new(&[1000], 0, None)),
            200.0
        );
        assert_eq!(
            flat.demand_per_minute(&OpenCount::new(&[1000], 0, Some(5 * MIN))),
            100.0,
            "a flat 5 minutes on a 5-minute cron: every second pass"
        );
        assert_eq!(
            Cadence::flat(MIN).demand_per_minute(&OpenCount::new(&[1000], 0, Some(5 * MIN))),
            200.0,
            "shorter than the cron: every pass"
        );
        assert_eq!(
            Cadence::flat(7 * MIN).demand_per_minute(&OpenCount::new(&[1000], 0, Some(5 * MIN))),
            100.0,
            "7 minutes: due between two ticks, taken at the second"
        );
        let c = default_like();
        // 600 young at 10 min, 2400 older at 2 h, 120 on their last day at 10 min:
        // 60 + 20 + 12 = 92 nominal. With no cron known, more for the early jitter.
        let d = c.demand_per_minute(&OpenCount::new(&[600, 2400], 120, None));
        assert!((d - 92.0 / 0.9).abs() < 1e-9, "{d}");
        // On the 5-minute cron, 10 minutes is every second pass, and 2 hours is due 94 to
        // 118 minutes after a check, taken at ticks 19 to 24: 521 / 24 ticks on average.
        let d = c.demand_per_minute(&OpenCount::new(&[600, 2400], 120, Some(5 * MIN)));
        let two_hours = 521.0 / 24.0 * 5.0;
        assert!((d - (60.0 + 2400.0 / two_hours + 12.0)).abs() < 1e-9, "{d}");
    }

    #[test]
    fn a_jittered_interval_is_checked_at_whole_ticks() {
        let c = default_like();
        let tick = Some(5 * MIN);
        // 10 minutes: due 6 to 8 minutes after a check, taken at the second tick.
        assert_eq!(c.effective_interval(10 * MIN, tick), 10 * MIN);
        // 12.5 minutes: due 8 to 10.5 minutes after, so a fifth of the checks wait for
        // the third tick.
        let mean = c.effective_interval(750 * SEC, tick).as_secs_f64();
        assert!((mean - 660.0).abs() < 1e-6, "{mean}");
        // Shorter than the cron: every pass, not more often.
        assert_eq!(c.effective_interval(MIN, tick), 5 * MIN);
        // No cron known: the mean early time.
        assert_eq!(c.effective_interval(10 * MIN, None), 9 * MIN);
    }

    #[test]
    fn stretch_to_fit_cases() {
        let tick = Some(5 * MIN);
        let flat = Cadence::flat(5 * MIN);
        let open = |n: u64| OpenCount::new(&[n], 0, None);
        assert_eq!(
            flat.stretch_to_fit(&open(2500), None),
            1.0,
            "budget unknown"
        );
        assert_eq!(flat.stretch_to_fit(&open(2500), Some(600.0)), 1.0, "fits");
        let f = flat.stretch_to_fit(&open(5400), Some(600.0));
        assert!(
            (f - 2.0).abs() < 1e-9,
            "no cron: demand over the target, {f}"
        );
        assert_eq!(flat.stretch_to_fit(&open(0), Some(600.0)), 1.0);
        assert_eq!(flat.stretch_to_fit(&open(u64::MAX), Some(1.0)), MAX_STRETCH);
        // 600 young charges at 10 minutes on the 5-minute cron need 60 a minute. A target
        // of 54 needs a mean of 11.11 minutes: 2/9 of their checks at the third tick.
        // Stretched to I minutes a check is due between 0.8 I - 2 and I - 2 minutes
        // later, so (I - 12) / 0.2 I = 2/9: I = 12.558, a stretch of 1.2558, where the
        // plain ratio 60 / 54 = 1.11 would move no check at all.
        let c = default_like();
        let f = c.stretch_to_fit(&OpenCount::new(&[600, 0], 0, tick), Some(60.0));
        assert!((f - 1.2558).abs() < 1e-3, "{f}");
        let mean = c.effective_interval(scale(10 * MIN, f), tick).as_secs_f64() / 60.0;
        assert!((600.0 / mean - 54.0).abs() < 1e-6, "{f}: {mean} minutes");
        let plain = c.effective_interval(scale(10 * MIN, 60.0 / 54.0), tick);
        assert_eq!(plain, 10 * MIN, "the plain ratio moves no check");
    }

    proptest! {
        /// The factor is at least 1, and once applied the demand fits the target share of
        /// the budget (unless capped); a demand that fits is not stretched; a stretch a
        /// little smaller would not fit.
        #[test]
        fn stretched_demand_fits(
            young in 0u64..100_000,
            old in 0u64..100_000,
            watched in 0u64..10_000,
            budget in 1.0f64..1e5,
            on_cron: bool,
        ) {
            let c = default_like();
            let open = OpenCount::new(&[young, old], watched, on_cron.then_some(5 * MIN));
            let f = c.stretch_to_fit(&open, Some(budget));
            prop_assert!(f >= 1.0);
            let target = budget * TARGET_USE;
            if f < MAX_STRETCH {
                prop_assert!(c.demand_stretched(&open, f) <= target * (1.0 + 1e-9));
            }
            if f > 1.0 && f < MAX_STRETCH {
                prop_assert!(c.demand_stretched(&open, f * (1.0 - 1e-6)) > target * (1.0 - 1e-9));
            }
            if c.demand_per_minute(&open) <= target {
                prop_assert_eq!(f, 1.0);
            }
        }

        /// A young charge under the default schedule, checked up to two minutes into a
        /// pass that started on a tick of the 5-minute cron, is due again by the second
        /// tick after, whatever its jitter, and not by the first: "every 10 minutes" is
        /// every second pass even when the pass takes a while to reach the charge.
        #[test]
        fn a_check_late_in_its_pass_keeps_to_every_second_tick(
            tick_n in 0i64..100_000,
            into_pass_ms in 0i64..120_000,
            jitter in 0.0f64..1.0,
        ) {
            let c = steps(&[(Duration::ZERO, 10 * MIN), (2 * DAY, 3 * HOUR)]);
            let tick = t0() + chrono::Duration::minutes(5 * tick_n);
            let now = tick + chrono::Duration::milliseconds(into_pass_ms);
            let created = now - chrono::Duration::hours(1);
            let next = c.next_check(now, &born(created), jitter);
            prop_assert!(next <= tick + chrono::Duration::minutes(10), "slips a tick: {next}");
            prop_assert!(next > tick + chrono::Duration::minutes(5), "one tick early: {next}");
        }

        /// More open charges never stretch less.
        #[test]
        fn stretch_is_monotone(a in 0u64..1_000_000, b in 0u64..1_000_000, budget in 1.0f64..1e4) {
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            let c = default_like();
            let at = |n: u64| c.stretch_to_fit(&OpenCount::new(&[n, n], 0, Some(5 * MIN)), Some(budget));
            prop_assert!(at(lo) <= at(hi));
        }

        /// Whatever the dates and jitter: the next check is after now; never later than the
        /// stretched interval for the charge's age; never earlier than the jitter allows
        /// unless the deadline check or the start of the deadline watch comes first; and
        /// neither of those, when still ahead, is ever skipped over.
        #[test]
        fn next_check_bounds(
            age_s in 0u64..40 * 86_400,
            expires_in_s in -10 * 86_400i64..40 * 86_400,
            has_expiry: bool,
            jitter in 0.0f64..1.0,
            stretch in 1.0f64..20.0,
        ) {
            let c = Cadence { stretch, ..default_like() };
            let now = plus(40 * DAY);
            let created = now - chrono::Duration::seconds(age_s as i64);
            let expires = has_expiry.then(|| now + chrono::Duration::seconds(expires_in_s));
            let dates = ChargeDates { created_at: Some(created), expires_at: expires };
            let next = c.next_check(now, &dates, jitter);
            prop_assert!(next > now);
            let every = c.interval_at(Duration::from_secs(age_s));
            let longest = now + chrono::Duration::from_std(scale(every, stretch)).unwrap();
            prop_assert!(next <= longest);
            let shortest_every = every.min(c.young_interval());
            let shortest = now
                + chrono::Duration::from_std(scale(shortest_every, stretch * (1.0 - EARLY_JITTER))).unwrap()
                - chrono::Duration::from_std(LEAD).unwrap();
            let deadline_check = expires.map(|e| e + chrono::Duration::minutes(5));
            let watch_start = expires.map(|e| e - chrono::Duration::days(1));
            if next < shortest - chrono::Duration::milliseconds(1) {
                prop_assert!(Some(next) == deadline_check || Some(next) == watch_start);
            }
            if let Some(d) = deadline_check.filter(|d| *d > now) {
                prop_assert!(next <= d);
            }
            if let Some(w) = watch_start.filter(|w| *w > now) {
                prop_assert!(next <= w, "the watch starts on time");
            }
        }
    }
}
