//! When each hinted charge is checked: pure bookkeeping over instants, with no I/O, so the
//! rules below are unit- and property-tested on their own. [`super::intake`] drives it.
//!
//! The rules:
//! - at most one GET in flight per charge; a hint that arrives while one is waiting to
//!   start shares it ([`Hinted::Shared`]); a hint that arrives once it has started gets
//!   exactly one more GET after it ([`Hinted::Again`]), however many such hints come;
//! - two GETs of one charge start at least [`Limits::spacing`] apart;
//! - all hint GETs together start no faster than a token bucket allows
//!   ([`Limits::per_second`], [`Limits::burst`]), so a flood of hints for many charges
//!   takes a bounded share of the API budget and the scheduled passes keep the rest;
//! - at most [`Limits::max_tracked`] charges are remembered (waiting, in flight, or
//!   spaced); a hint for one more is [`Hinted::Dropped`], and the intake leaves that charge
//!   to the passes instead;
//! - charges past their payment deadline wait in a second lane ([`Lane::Late`]): their
//!   hints come in a burst when a day's unpaid charges expire together, and a payment's
//!   hint arriving meanwhile must not wait behind them;
//! - a GET that found the charge final ends it ([`Ended::Final`]): hints that came during
//!   that GET need no other;
//! - the events of the hints a GET serves are counted on the charge and handed over with
//!   it ([`Due::events`]), so that the ledger gets one row per GET, not one per hint.
//!
//! Charges the ledger lacks have a budget of their own, [`UnknownBudget`]: a small token
//! bucket for their verification, and a bounded memory of the ids already handed over,
//! so that thousands of distinct unknown ids cost a bounded number of GETs and the same
//! unknown id costs one.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use crate::domain::{ChargeId, StoreId};
use crate::ledger::HintEvents;

/// The knobs of the rules above.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Limits {
    /// Least time between the starts of two GETs of one charge.
    pub(crate) spacing: Duration,
    /// Hint GETs per second, sustained.
    pub(crate) per_second: f64,
    /// Hint GETs that may start at once after a quiet time.
    pub(crate) burst: f64,
    /// Most charges remembered at once.
    pub(crate) max_tracked: usize,
}

/// What became of one hint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hinted {
    /// A GET was queued for it.
    Queued,
    /// A GET that has not started yet was already queued: it serves this hint too.
    Shared,
    /// A GET is in flight; one more follows it (shared by every hint until it starts).
    Again,
    /// Too many charges tracked; not queued.
    Dropped,
}

/// Which queue a hinted charge waits in; [`Lane::Now`] goes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Lane {
    /// Could be a payment.
    Now,
    /// Past its payment deadline: most likely its expiry, which is not urgent.
    Late,
}

/// How a GET ended, for [`Coalescer::finished`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// Its result was written; the charge is still open.
    Checked,
    /// Its result was not written: the row had changed meanwhile (a pass wrote first).
    Stale,
    /// The charge is final (now, or already when the GET was to start).
    Final,
}

/// A charge whose GET may start now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Due {
    pub(crate) charge_id: ChargeId,
    pub(crate) store_id: StoreId,
    /// The hints this GET serves (none for the repeat after a stale write).
    pub(crate) events: HintEvents,
}

#[derive(Debug)]
enum Phase {
    /// In `queues[lane]` under this key.
    Waiting((Instant, u64)),
    /// Its GET has started; `again`: a hint arrived since.
    InFlight { again: bool },
    /// Nothing to do; remembered only to space the next GET.
    Idle,
}

#[derive(Debug)]
struct Slot {
    store_id: StoreId,
    lane: Lane,
    phase: Phase,
    /// When its last GET started.
    last_start: Option<Instant>,
    /// The last GET was already a repeat after a stale write (see [`Coalescer::finished`]).
    stale_repeated: bool,
    /// The hints since the last GET started, for the next one's ledger row.
    events: HintEvents,
}

/// A token bucket over [`Instant`]s.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn refill(&mut self, now: Instant, per_second: f64, burst: f64) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * per_second).min(burst);
        self.at = self.at.max(now);
    }

    /// When a whole token will be there (`now` if it is).
    fn ready_at(&self, now: Instant, per_second: f64) -> Instant {
        if self.tokens >= 1.0 {
            return now;
        }
        let secs = (1.0 - self.tokens) / per_second;
        // A millisecond more, so that the wake-up finds the token (no busy loop on rounding).
        now + Duration::from_secs_f64(secs) + Duration::from_millis(1)
    }
}

/// The bookkeeping. See the module doc.
#[derive(Debug)]
pub(crate) struct Coalescer {
    limits: Limits,
    slots: HashMap<ChargeId, Slot>,
    /// Waiting charges per [`Lane`], by the instant their GET may start, then arrival.
    queues: [BTreeSet<(Instant, u64, ChargeId)>; 2],
    seq: u64,
    /// Idle charges and when they may be forgotten (their spacing has passed).
    idle: VecDeque<(Instant, ChargeId)>,
    bucket: Bucket,
}

impl Coalescer {
    pub(crate) fn new(limits: Limits, now: Instant) -> Coalescer {
        Coalescer {
            limits,
            slots: HashMap::new(),
            queues: [BTreeSet::new(), BTreeSet::new()],
            seq: 0,
            idle: VecDeque::new(),
            bucket: Bucket {
                tokens: limits.burst,
                at: now,
            },
        }
    }

    /// A hint of `event` for `charge_id` (of `store_id`) arrived at `now`.
    pub(crate) fn hint(
        &mut self,
        charge_id: ChargeId,
        store_id: StoreId,
        event: &str,
        lane: Lane,
        now: Instant,
    ) -> Hinted {
        self.forget_idle(now);
        let spacing = self.limits.spacing;
        if let Some(slot) = self.slots.get_mut(&charge_id) {
            slot.stale_repeated = false;
            slot.events.add(event);
            let moved = lane < slot.lane;
            slot.lane = slot.lane.min(lane);
            return match slot.phase {
                Phase::Waiting(key) => {
                    if moved {
                        // Into the faster lane, keeping its place in time.
                        self.queues[Lane::Late as usize].remove(&(key.0, key.1, charge_id.clone()));
                        self.enqueue(charge_id, key.0);
                    }
                    Hinted::Shared
                }
                Phase::InFlight { ref mut again } => {
                    *again = true;
                    Hinted::Again
                }
                Phase::Idle => {
                    let at = slot.last_start.map_or(now, |s| (s + spacing).max(now));
                    self.enqueue(charge_id, at);
                    Hinted::Queued
                }
            };
        }
        if self.slots.len() >= self.limits.max_tracked {
            return Hinted::Dropped;
        }
        let mut events = HintEvents::default();
        events.add(event);
        self.slots.insert(
            charge_id.clone(),
            Slot {
                store_id,
                lane,
                phase: Phase::Idle,
                last_start: None,
                stale_repeated: false,
                events,
            },
        );
        self.enqueue(charge_id, now);
        Hinted::Queued
    }

    fn enqueue(&mut self, charge_id: ChargeId, at: Instant) {
        self.seq += 1;
        let key = (at, self.seq);
        let Some(slot) = self.slots.get_mut(&charge_id) else {
            return;
        };
        slot.phase = Phase::Waiting(key);
        self.queues[slot.lane as usize].insert((at, self.seq, charge_id));
    }

    /// The lane whose first charge may start at `now` (the faster lane first).
    fn due_lane(&self, now: Instant) -> Option<usize> {
        (0..self.queues.len()).find(|&l| self.queues[l].first().is_some_and(|f| f.0 <= now))
    }

    /// Takes up to `max` charges whose GET may start at `now`, oldest first, as far as
    /// the bucket allows, and marks them in flight.
    pub(crate) fn take_due(&mut self, now: Instant, max: usize) -> Vec<Due> {
        self.forget_idle(now);
        self.bucket
            .refill(now, self.limits.per_second, self.limits.burst);
        let mut due = Vec::new();
        while due.len() < max && self.bucket.tokens >= 1.0 {
            let Some(lane) = self.due_lane(now) else {
                break;
            };
            let Some((_, _, charge_id)) = self.queues[lane].pop_first() else {
                break;
            };
            let Some(slot) = self.slots.get_mut(&charge_id) else {
                continue;
            };
            self.bucket.tokens -= 1.0;
            slot.phase = Phase::InFlight { again: false };
            slot.last_start = Some(now);
            due.push(Due {
                store_id: slot.store_id.clone(),
                events: std::mem::take(&mut slot.events),
                charge_id,
            });
        }
        due
    }

    /// When [`take_due`](Self::take_due) will next have something to give; `None` while
    /// nothing is waiting.
    pub(crate) fn next_wake(&self, now: Instant) -> Option<Instant> {
        let at = self
            .queues
            .iter()
            .filter_map(|q| q.first())
            .map(|f| f.0)
            .min()?;
        let at = at.max(now);
        Some(at.max(self.bucket.ready_at(at, self.limits.per_second)))
    }

    /// The GET of `charge_id` (started by [`take_due`](Self::take_due)) is over. After
    /// [`Ended::Stale`] one more GET follows, once, so the hint still gets a check whose
    /// result counts (the write that won may have come from a GET that started before the
    /// hint). After [`Ended::Final`] none does, whatever came meanwhile.
    pub(crate) fn finished(&mut self, charge_id: &ChargeId, now: Instant, ended: Ended) {
        let spacing = self.limits.spacing;
        let Some(slot) = self.slots.get_mut(charge_id) else {
            return;
        };
        let Phase::InFlight { again } = slot.phase else {
            return;
        };
        let repeat_stale = ended == Ended::Stale && !slot.stale_repeated;
        slot.stale_repeated = repeat_stale;
        let next = slot.last_start.map_or(now, |s| (s + spacing).max(now));
        if ended != Ended::Final && (again || repeat_stale) {
            self.enqueue(charge_id.clone(), next);
        } else {
            slot.phase = Phase::Idle;
            self.idle.push_back((next, charge_id.clone()));
        }
    }

    /// Forgets idle charges whose spacing has passed (a new hint for them starts afresh).
    fn forget_idle(&mut self, now: Instant) {
        while let Some((at, _)) = self.idle.front() {
            if *at > now {
                break;
            }
            let Some((_, id)) = self.idle.pop_front() else {
                break;
            };
            // The charge may have been hinted and checked again since this entry was made:
            // only a slot idle for a whole spacing since its last start goes.
            let spacing = self.limits.spacing;
            let done = |s: &Slot| {
                matches!(s.phase, Phase::Idle) && s.last_start.is_none_or(|l| l + spacing <= now)
            };
            if self.slots.get(&id).is_some_and(done) {
                self.slots.remove(&id);
            }
        }
    }

    /// Charges waiting for their GET to start.
    pub(crate) fn waiting(&self) -> usize {
        self.queues.iter().map(BTreeSet::len).sum()
    }

    /// Charges whose GET is in flight.
    pub(crate) fn in_flight(&self) -> usize {
        self.slots
            .values()
            .filter(|s| matches!(s.phase, Phase::InFlight { .. }))
            .count()
    }

    /// Removes every waiting charge and returns them (at shutdown: the passes take over).
    pub(crate) fn drain_waiting(&mut self) -> Vec<Due> {
        let queues = std::mem::take(&mut self.queues);
        queues
            .into_iter()
            .flatten()
            .filter_map(|(_, _, charge_id)| {
                let slot = self.slots.remove(&charge_id)?;
                Some(Due {
                    charge_id,
                    store_id: slot.store_id,
                    events: slot.events,
                })
            })
            .collect()
    }
}

/// The knobs of [`UnknownBudget`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct UnknownLimits {
    /// Verifications per second, sustained.
    pub(crate) per_second: f64,
    /// Verifications that may start at once after a quiet time.
    pub(crate) burst: f64,
    /// Most ids remembered as handed over.
    pub(crate) remember: usize,
    /// How long an id handed over is remembered (a repeat within it costs nothing).
    pub(crate) remember_for: Duration,
}

/// What [`UnknownBudget::admit`] says about one unknown charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admitted {
    /// Verify it now.
    Yes,
    /// Handed over within [`UnknownLimits::remember_for`] already: found absent, not a
    /// konbini charge, or registered since. Not again.
    Repeat,
    /// The budget is spent: left to discovery's next sweep.
    OverBudget,
}

/// The budget of charges the ledger lacks (see the module doc).
#[derive(Debug)]
pub(crate) struct UnknownBudget {
    limits: UnknownLimits,
    bucket: Bucket,
    seen: HashMap<ChargeId, Instant>,
    /// The ids in `seen` by when they were handed over, oldest first.
    order: VecDeque<(Instant, ChargeId)>,
}

impl UnknownBudget {
    pub(crate) fn new(limits: UnknownLimits, now: Instant) -> UnknownBudget {
        UnknownBudget {
            limits,
            bucket: Bucket {
                tokens: limits.burst,
                at: now,
            },
            seen: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Whether the unknown charge `id`, named by a hint at `now`, may be verified.
    pub(crate) fn admit(&mut self, id: &ChargeId, now: Instant) -> Admitted {
        while let Some((at, _)) = self.order.front() {
            let full = self.order.len() >= self.limits.remember.max(1);
            if !full && *at + self.limits.remember_for > now {
                break;
            }
            if let Some((at, old)) = self.order.pop_front()
                && self.seen.get(&old) == Some(&at)
            {
                self.seen.remove(&old);
            }
        }
        if self.seen.contains_key(id) {
            return Admitted::Repeat;
        }
        self.bucket
            .refill(now, self.limits.per_second, self.limits.burst);
        if self.bucket.tokens < 1.0 {
            return Admitted::OverBudget;
        }
        self.bucket.tokens -= 1.0;
        self.seen.insert(id.clone(), now);
        self.order.push_back((now, id.clone()));
        Admitted::Yes
    }

    #[cfg(test)]
    /// Ids remembered now.
    pub(crate) fn remembered(&self) -> usize {
        self.seen.len()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const SPACING: Duration = Duration::from_secs(1);

    fn limits() -> Limits {
        Limits {
            spacing: SPACING,
            per_second: 2.0,
            burst: 4.0,
            max_tracked: 8,
        }
    }

    fn id(n: u32) -> ChargeId {
        ChargeId::parse(format!("ch_{n}")).unwrap()
    }

    fn store() -> StoreId {
        StoreId::parse("st").unwrap()
    }

    fn ids(due: &[Due]) -> Vec<ChargeId> {
        due.iter().map(|d| d.charge_id.clone()).collect()
    }

    #[test]
    fn duplicate_hints_before_the_start_share_one_get() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(limits(), t0);
        assert_eq!(
            c.hint(id(1), store(), "charge_updated", Lane::Now, t0),
            Hinted::Queued
        );
        for _ in 0..50 {
            assert_eq!(
                c.hint(id(1), store(), "charge_updated", Lane::Now, t0),
                Hinted::Shared
            );
        }
        assert_eq!(ids(&c.take_due(t0, 10)), [id(1)]);
        assert!(c.take_due(t0, 10).is_empty());
        c.finished(&id(1), t0 + Duration::from_millis(100), Ended::Checked);
        assert_eq!(c.waiting() + c.in_flight(), 0);
        assert!(c.take_due(t0 + Duration::from_secs(5), 10).is_empty());
    }

    #[test]
    fn a_get_carries_the_events_of_the_hints_it_serves() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(limits(), t0);
        for e in ["charge_updated", "charge_updated", "cancel_finished"] {
            c.hint(id(1), store(), e, Lane::Now, t0);
        }
        let due = c.take_due(t0, 10);
        assert_eq!(
            due[0].events.detail(),
            "charge_updated x2, cancel_finished x1"
        );
        for _ in 0..40 {
            c.hint(id(1), store(), "charge_finished", Lane::Now, t0);
        }
        c.finished(&id(1), t0, Ended::Checked);
        let due = c.take_due(t0 + SPACING, 10);
        assert_eq!(due[0].events.detail(), "charge_finished x40");
        // The repeat after a stale write serves no new hint.
        c.finished(&id(1), t0 + SPACING, Ended::Stale);
        let due = c.take_due(t0 + SPACING * 2, 10);
        assert_eq!(due.len(), 1);
        assert!(due[0].events.is_empty());
    }

    fn unknown_limits() -> UnknownLimits {
        UnknownLimits {
            per_second: 0.5,
            burst: 3.0,
            remember: 5,
            remember_for: Duration::from_secs(600),
        }
    }

    #[test]
    fn unknown_charges_have_a_small_budget_and_repeats_cost_nothing() {
        let t0 = Instant::now();
        let mut b = UnknownBudget::new(unknown_limits(), t0);
        let got: Vec<Admitted> = (0..5).map(|n| b.admit(&id(n), t0)).collect();
        use Admitted::*;
        assert_eq!(got, [Yes, Yes, Yes, OverBudget, OverBudget]);
        assert_eq!(b.admit(&id(0), t0 + SPACING * 30), Repeat);
        assert_eq!(b.admit(&id(3), t0 + SPACING * 2), Yes, "refilled");
        assert_eq!(b.admit(&id(4), t0 + SPACING * 2), OverBudget);
        // Remembered for a while, then verified again.
        assert_eq!(b.admit(&id(3), t0 + Duration::from_secs(601)), Repeat);
        assert_eq!(b.admit(&id(0), t0 + Duration::from_secs(601)), Yes);
    }

    #[test]
    fn the_memory_of_unknown_ids_is_bounded() {
        let t0 = Instant::now();
        let mut l = unknown_limits();
        l.per_second = 1000.0;
        l.burst = 1000.0;
        let mut b = UnknownBudget::new(l, t0);
        for n in 0..100 {
            assert_eq!(b.admit(&id(n), t0), Admitted::Yes);
            assert!(b.remembered() <= 5);
        }
        assert_eq!(b.admit(&id(99), t0), Admitted::Repeat);
        assert_eq!(
            b.admit(&id(0), t0),
            Admitted::Yes,
            "forgotten: the oldest go first"
        );
    }

    #[test]
    fn hints_during_a_get_make_exactly_one_more_spaced_by_a_second() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(limits(), t0);
        c.hint(id(1), store(), "charge_updated", Lane::Now, t0);
        assert_eq!(c.take_due(t0, 10).len(), 1);
        let during = t0 + Duration::from_millis(50);
        for _ in 0..20 {
            assert_eq!(
                c.hint(id(1), store(), "charge_updated", Lane::Now, during),
                Hinted::Again
            );
        }
        let done = t0 + Duration::from_millis(200);
        c.finished(&id(1), done, Ended::Checked);
        assert!(c.take_due(done, 10).is_empty(), "not before the spacing");
        assert_eq!(c.next_wake(done), Some(t0 + SPACING));
        assert_eq!(c.take_due(t0 + SPACING, 10).len(), 1);
        c.finished(&id(1), t0 + SPACING, Ended::Checked);
        assert_eq!(c.waiting() + c.in_flight(), 0);
    }

    #[test]
    fn a_hint_just_after_a_get_waits_for_the_spacing() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(limits(), t0);
        c.hint(id(1), store(), "charge_updated", Lane::Now, t0);
        c.take_due(t0, 10);
        c.finished(&id(1), t0 + Duration::from_millis(100), Ended::Checked);
        let later = t0 + Duration::from_millis(300);
        assert_eq!(
            c.hint(id(1), store(), "charge_updated", Lane::Now, later),
            Hinted::Queued
        );
        assert!(c.take_due(later, 10).is_empty());
        assert_eq!(c.take_due(t0 + SPACING, 10).len(), 1);
    }

    #[test]
    fn a_stale_write_is_repeated_once_per_hint() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(limits(), t0);
        c.hint(id(1), store(), "charge_updated", Lane::Now, t0);
        c.take_due(t0, 10);
        c.finished(&id(1), t0, Ended::Stale);
        assert_eq!(c.take_due(t0 + SPACING, 10).len(), 1, "repeated");
        c.finished(&id(1), t0 + SPACING, Ended::Stale);
        assert!(
            c.take_due(t0 + SPACING * 3, 10).is_empty(),
            "not a second time"
        );
    }

    #[test]
    fn the_bucket_bounds_gets_across_charges() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(limits(), t0);
        for n in 0..8 {
            c.hint(id(n), store(), "charge_updated", Lane::Now, t0);
        }
        assert_eq!(
            c.hint(id(99), store(), "charge_updated", Lane::Now, t0),
            Hinted::Dropped,
            "max_tracked"
        );
        assert_eq!(c.take_due(t0, 100).len(), 4, "the burst");
        let wake = c.next_wake(t0).unwrap();
        assert!(
            wake > t0 && wake <= t0 + Duration::from_millis(520),
            "{:?}",
            wake - t0
        );
        assert_eq!(c.take_due(wake, 100).len(), 1);
        assert_eq!(c.take_due(t0 + Duration::from_secs(2), 100).len(), 3);
    }

    #[test]
    fn a_get_that_found_the_charge_final_needs_no_follow_up() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(limits(), t0);
        c.hint(id(1), store(), "charge_updated", Lane::Now, t0);
        c.take_due(t0, 10);
        assert_eq!(
            c.hint(id(1), store(), "charge_updated", Lane::Now, t0),
            Hinted::Again
        );
        c.finished(&id(1), t0, Ended::Final);
        assert_eq!(c.waiting() + c.in_flight(), 0);
        assert!(c.take_due(t0 + SPACING * 2, 10).is_empty());
    }

    #[test]
    fn charges_past_their_deadline_wait_behind_the_others() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(limits(), t0);
        for n in 0..6 {
            c.hint(id(n), store(), "charge_updated", Lane::Late, t0);
        }
        let later = t0 + Duration::from_millis(10);
        c.hint(id(10), store(), "charge_updated", Lane::Now, later);
        // A late charge hinted again as urgent moves up, keeping its time.
        c.hint(id(5), store(), "charge_updated", Lane::Now, later);
        let first = ids(&c.take_due(later, 2));
        assert_eq!(first, [id(5), id(10)]);
        assert_eq!(
            ids(&c.take_due(later, 10)),
            [id(0), id(1)],
            "the rest of the burst"
        );
    }

    #[test]
    fn shutdown_takes_the_waiting_charges() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(limits(), t0);
        c.hint(id(1), store(), "charge_updated", Lane::Now, t0);
        c.hint(id(2), store(), "charge_updated", Lane::Now, t0);
        c.take_due(t0, 1);
        assert_eq!(ids(&c.drain_waiting()), [id(2)]);
        assert_eq!(c.waiting(), 0);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Hint(u32, bool),
        Wait(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0u32..4, any::<bool>()).prop_map(|(n, late)| Op::Hint(n, late)),
            2 => (1u64..1500).prop_map(Op::Wait),
        ]
    }

    proptest! {
        /// Whatever the hints and timings: GETs of one charge start at least the spacing
        /// apart and never overlap; all GETs stay within the bucket; and every hint is
        /// followed by a GET that starts at or after it.
        #[test]
        fn the_rules_hold(ops in proptest::collection::vec(op(), 1..200),
                          latency_ms in 1u64..1500, stale in any::<bool>()) {
            let latency = Duration::from_millis(latency_ms);
            let ended = if stale { Ended::Stale } else { Ended::Checked };
            let t0 = Instant::now();
            let mut now = t0;
            let mut c = Coalescer::new(limits(), t0);
            let mut starts: HashMap<ChargeId, Vec<Instant>> = HashMap::new();
            let mut flying: Vec<(Instant, ChargeId)> = Vec::new();
            let mut last_hint: HashMap<ChargeId, Instant> = HashMap::new();
            let mut total = 0u32;
            let step = |c: &mut Coalescer, now: Instant, flying: &mut Vec<(Instant, ChargeId)>,
                        starts: &mut HashMap<ChargeId, Vec<Instant>>, total: &mut u32| {
                flying.retain(|(end, id)| {
                    if *end <= now { c.finished(id, now, ended); false } else { true }
                });
                for d in c.take_due(now, 100) {
                    prop_assert!(!flying.iter().any(|(_, f)| *f == d.charge_id), "two in flight");
                    starts.entry(d.charge_id.clone()).or_default().push(now);
                    flying.push((now + latency, d.charge_id));
                    *total += 1;
                }
                Ok(())
            };
            for o in ops {
                match o {
                    Op::Hint(n, late) => {
                        let lane = if late { Lane::Late } else { Lane::Now };
                        let h = c.hint(id(n), store(), "charge_updated", lane, now);
                        prop_assert_ne!(h, Hinted::Dropped);
                        last_hint.insert(id(n), now);
                    }
                    Op::Wait(ms) => now += Duration::from_millis(ms),
                }
                step(&mut c, now, &mut flying, &mut starts, &mut total)?;
            }
            // Let everything finish.
            for _ in 0..200 {
                now += Duration::from_millis(100);
                step(&mut c, now, &mut flying, &mut starts, &mut total)?;
            }
            prop_assert_eq!(c.waiting() + c.in_flight(), 0);
            for (id, s) in &starts {
                for w in s.windows(2) {
                    prop_assert!(w[1] - w[0] >= SPACING, "{id}: {:?}", w[1] - w[0]);
                }
            }
            for (id, h) in &last_hint {
                let s = starts.get(id).map(|s| *s.last().unwrap());
                prop_assert!(s.is_some_and(|s| s >= *h), "{id}: hint at {:?} without a later GET", *h - t0);
            }
            let elapsed = (now - t0).as_secs_f64();
            prop_assert!(f64::from(total) <= 4.0 + 2.0 * elapsed + 1e-9);
        }
    }
}
