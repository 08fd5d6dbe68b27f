//! Whether an endpoint is down, and what that means for the next step: pure.
//!
//! An endpoint whose every attempt fails at once (refused connections, 503s) would have
//! the delivery job go through its whole due backlog as fast as it refuses, costing CPU
//! beside the passes and hint checks for nothing. So, per endpoint, in memory:
//! - **Up** (the start): steps send what is due, as usual. Attempts that fail because
//!   of the endpoint (no answer, a timeout, a 5xx or 429) are counted in a row, across
//!   steps; an answer (a 2xx, or a 4xx that rejects one event) resets the count. At
//!   [`DOWN_AFTER`] in a row, and a step none of whose attempts got an answer, it is down.
//! - **Down**: a step sends at most one delivery, the endpoint's oldest pending one
//!   (whatever its own retry time: it heads its charge), and steps come no more often
//!   than [`PROBE_INTERVAL`] (or the `Retry-After` it sent, at most an hour). The other
//!   deliveries are not tried, so their attempts do not grow.
//! - A probe that gets a 2xx: **back**. Every pending delivery is made due at once, so
//!   the backlog drains now rather than at each delivery's own retry time. A probe that
//!   gets a 4xx shows the endpoint answering: up again, the deliveries at their own times.
//!
//! A restart starts up and finds out again within [`DOWN_AFTER`] attempts.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::retry::MAX_RETRY_AFTER;

/// Failures in a row (each for want of an answer) that make an endpoint down.
pub(crate) const DOWN_AFTER: u32 = 3;

/// The shortest time between two probes of a down endpoint.
pub(crate) const PROBE_INTERVAL: Duration = Duration::from_secs(30);

/// What one attempt says about the endpoint (not about the event).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    /// A 2xx.
    Accepted,
    /// A 4xx other than 429: the endpoint answers and rejects this event.
    Rejected,
    /// No answer (connect error, timeout), a 5xx or a 429, with its `Retry-After`.
    Unavailable { retry_after: Option<Duration> },
}

impl Answer {
    /// The answer of an attempt that got `status` (`None`: no answer at all).
    pub(crate) fn of(status: Option<u16>, retry_after: Option<Duration>) -> Answer {
        match status {
            Some(s) if (200..300).contains(&s) => Answer::Accepted,
            Some(s) if (400..500).contains(&s) && s != 429 => Answer::Rejected,
            // No answer, 5xx, 429; and 1xx or 3xx, which a webhook receiver does not
            // mean as an answer either.
            _ => Answer::Unavailable { retry_after },
        }
    }
}

/// An endpoint's health, as its worker remembers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Health {
    /// Steps send what is due; `failures` in a row so far went unanswered.
    Up { failures: u32 },
    /// Steps probe with one delivery, not before `next_probe`.
    Down { next_probe: DateTime<Utc> },
}

impl Default for Health {
    fn default() -> Health {
        Health::Up { failures: 0 }
    }
}

/// What changed with a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    None,
    /// It went down (log it once).
    WentDown,
    /// A probe got a 2xx: make every pending delivery due now (and log it).
    Back,
    /// A probe got a 4xx: it answers again, the deliveries go at their own times.
    Answering,
}

impl Health {
    pub(crate) fn is_down(&self) -> bool {
        matches!(self, Health::Down { .. })
    }

    /// Whether a step at `now` may send: always while up; while down, from the probe time.
    pub(crate) fn may_send(&self, now: DateTime<Utc>) -> bool {
        match self {
            Health::Up { .. } => true,
            Health::Down { next_probe } => now >= *next_probe,
        }
    }

    /// The health after a step at `now` whose attempts got `answers` (none: the step sent
    /// nothing, and nothing changes).
    pub(crate) fn after(self, answers: &[Answer], now: DateTime<Utc>) -> (Health, Change) {
        if answers.is_empty() {
            return (self, Change::None);
        }
        let accepted = answers.contains(&Answer::Accepted);
        let answered = accepted || answers.contains(&Answer::Rejected);
        match (self, answered) {
            (Health::Up { .. }, true) => (Health::Up { failures: 0 }, Change::None),
            (Health::Down { .. }, true) => (
                Health::Up { failures: 0 },
                if accepted {
                    Change::Back
                } else {
                    Change::Answering
                },
            ),
            (Health::Up { failures }, false) => {
                let failures = failures.saturating_add(answers.len() as u32);
                if failures >= DOWN_AFTER {
                    (
                        Health::Down {
                            next_probe: probe_at(answers, now),
                        },
                        Change::WentDown,
                    )
                } else {
                    (Health::Up { failures }, Change::None)
                }
            }
            (Health::Down { .. }, false) => (
                Health::Down {
                    next_probe: probe_at(answers, now),
                },
                Change::None,
            ),
        }
    }
}

/// When to probe after unanswered attempts at `now`: [`PROBE_INTERVAL`] later, or the
/// longest `Retry-After` asked for, at most an hour.
fn probe_at(answers: &[Answer], now: DateTime<Utc>) -> DateTime<Utc> {
    let asked = answers
        .iter()
        .filter_map(|a| match a {
            Answer::Unavailable { retry_after } => *retry_after,
            _ => None,
        })
        .max()
        .map_or(Duration::ZERO, |ra| ra.min(MAX_RETRY_AFTER));
    let wait = PROBE_INTERVAL.max(asked);
    now + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NO: Answer = Answer::Unavailable { retry_after: None };

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn statuses_say_whether_the_endpoint_answers() {
        assert_eq!(Answer::of(Some(204), None), Answer::Accepted);
        assert_eq!(Answer::of(Some(400), None), Answer::Rejected);
        assert_eq!(Answer::of(Some(404), None), Answer::Rejected);
        assert_eq!(Answer::of(Some(429), None), NO);
        assert_eq!(Answer::of(Some(503), None), NO);
        assert_eq!(Answer::of(None, None), NO);
        let ra = Some(Duration::from_secs(60));
        assert_eq!(
            Answer::of(Some(503), ra),
            Answer::Unavailable { retry_after: ra }
        );
    }

    #[test]
    fn three_unanswered_in_a_row_make_it_down_then_one_probe_per_interval() {
        let now = at("2026-12-02T10:00:00Z");
        let (h, c) = Health::default().after(&[NO, NO], now);
        assert_eq!((h, c), (Health::Up { failures: 2 }, Change::None));
        assert!(h.may_send(now));
        let (h, c) = h.after(&[NO], now);
        assert_eq!(c, Change::WentDown);
        assert_eq!(
            h,
            Health::Down {
                next_probe: at("2026-12-02T10:00:30Z")
            }
        );
        assert!(!h.may_send(at("2026-12-02T10:00:29Z")));
        assert!(h.may_send(at("2026-12-02T10:00:30Z")));
        // A failed probe: the next one an interval later, nothing logged again.
        let (h, c) = h.after(&[NO], at("2026-12-02T10:00:30Z"));
        assert_eq!(c, Change::None);
        assert_eq!(
            h,
            Health::Down {
                next_probe: at("2026-12-02T10:01:00Z")
            }
        );
        // A full step of 8 failures is down at once.
        let (h, c) = Health::default().after(&[NO; 8], now);
        assert!(h.is_down());
        assert_eq!(c, Change::WentDown);
    }

    #[test]
    fn an_answer_resets_the_count_and_a_4xx_is_an_answer() {
        let now = at("2026-12-02T10:00:00Z");
        let (h, _) = Health::default().after(&[NO, NO], now);
        let (h, c) = h.after(&[Answer::Rejected], now);
        assert_eq!((h, c), (Health::Up { failures: 0 }, Change::None));
        // A step with one event rejected and the rest unanswered: not down.
        let (h, _) = Health::default().after(&[NO, NO, NO, Answer::Rejected, NO], now);
        assert_eq!(h, Health::Up { failures: 0 });
        // 4xx to every event never makes it down.
        let mut h = Health::default();
        for _ in 0..100 {
            h = h.after(&[Answer::Rejected; 8], now).0;
        }
        assert!(!h.is_down());
    }

    #[test]
    fn a_probe_that_gets_an_answer_brings_it_back() {
        let now = at("2026-12-02T10:00:00Z");
        let (down, _) = Health::default().after(&[NO; 3], now);
        let (h, c) = down.after(&[Answer::Accepted], now);
        assert_eq!((h, c), (Health::Up { failures: 0 }, Change::Back));
        let (h, c) = down.after(&[Answer::Rejected], now);
        assert_eq!((h, c), (Health::Up { failures: 0 }, Change::Answering));
        // A step that sent nothing changes nothing.
        assert_eq!(down.after(&[], now), (down, Change::None));
    }

    #[test]
    fn retry_after_spaces_the_probes_up_to_an_hour() {
        let now = at("2026-12-02T10:00:00Z");
        let ra = |s| Answer::Unavailable {
            retry_after: Some(Duration::from_secs(s)),
        };
        let probe = |answers: &[Answer]| match Health::default().after(answers, now).0 {
            Health::Down { next_probe } => next_probe,
            h => panic!("{h:?}"),
        };
        assert_eq!(probe(&[ra(120), NO, ra(60)]), at("2026-12-02T10:02:00Z"));
        assert_eq!(probe(&[ra(5), NO, NO]), at("2026-12-02T10:00:30Z"));
        assert_eq!(probe(&[ra(86_400); 3]), at("2026-12-02T11:00:00Z"));
    }

    fn answer() -> impl Strategy<Value = Answer> {
        prop_oneof![
            Just(Answer::Accepted),
            Just(Answer::Rejected),
            (proptest::option::of(0u64..100_000)).prop_map(|s| Answer::Unavailable {
                retry_after: s.map(Duration::from_secs)
            }),
        ]
    }

    proptest! {
        /// Over any run of steps: while down a step sends one delivery at most and the
        /// probes are at least an interval (at most an hour) apart; it is down only after
        /// DOWN_AFTER unanswered attempts in a row, and up again only after an answer.
        #[test]
        fn down_and_up_follow_the_answers(steps in proptest::collection::vec(
            (proptest::collection::vec(answer(), 0..9), 0u64..4000), 1..60)) {
            let mut now = at("2026-12-02T10:00:00Z");
            let mut h = Health::default();
            let mut unanswered = 0u32;
            for (answers, wait) in steps {
                now += chrono::Duration::seconds(wait as i64);
                if !h.may_send(now) {
                    continue;
                }
                let answers: Vec<Answer> = answers.into_iter().take(if h.is_down() { 1 } else { 8 }).collect();
                let was_down = h.is_down();
                let (next, change) = h.after(&answers, now);
                let answered = answers.iter().any(|a| !matches!(a, Answer::Unavailable { .. }));
                if answered {
                    unanswered = 0;
                    prop_assert!(!next.is_down());
                } else {
                    unanswered = unanswered.saturating_add(answers.len() as u32);
                }
                if !was_down && next.is_down() {
                    prop_assert!(unanswered >= DOWN_AFTER);
                    prop_assert_eq!(change, Change::WentDown);
                }
                if was_down && !next.is_down() {
                    prop_assert!(answered);
                    prop_assert!(matches!(change, Change::Back | Change::Answering));
                }
                if let Health::Down { next_probe } = next
                    && !answers.is_empty()
                {
                    prop_assert!(next_probe >= now + chrono::Duration::seconds(30));
                    prop_assert!(next_probe <= now + chrono::Duration::seconds(3600));
                }
                h = next;
            }
        }
    }
}
