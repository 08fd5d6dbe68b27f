//! What the simulator holds, behind one lock: charges set by tests or made through the
//! API (indexed per store by creation time, for the list routes), tokens, idempotency
//! records, scripted replies, and the timeline of transitions still to come for charges
//! made through the API.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use chrono::{DateTime, Utc};

use crate::charge::SimCharge;
use crate::config::Reply;
use crate::token::SimToken;

/// A charge's place in its store's listing: creation time in microseconds, then id.
pub(crate) type ListKey = (i64, String);

/// What a transition on the timeline does when its time comes.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Paid the requested amount (`successful`).
    Pay,
    /// Paid this amount in this currency (`successful`, perhaps a mismatch).
    PayWith { amount: i64, currency: String },
    /// The deadline passed unpaid (`failed`, error 323).
    Expire,
    /// Canceled by the merchant (`canceled`).
    Cancel,
}

/// One transition due at a simulated instant.
#[derive(Debug, Clone)]
pub(crate) enum Step {
    /// `pending` ends: a konbini charge gets its payment number (`awaiting`), any other
    /// payment type is captured (`successful`).
    Issue,
    Act(Action),
}

/// A stored answer to an idempotent request.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    /// The request body, parsed (so key order and spacing do not matter).
    pub request: serde_json::Value,
    pub status: u16,
    pub body: String,
    pub at: DateTime<Utc>,
}

#[derive(Default)]
pub(crate) struct Data {
    charges: HashMap<String, SimCharge>,
    by_store: HashMap<String, BTreeSet<ListKey>>,
    /// Seeded charges that were removed.
    pub removed: HashSet<String>,
    pub scripts: HashMap<String, VecDeque<Reply>>,
    pub per_charge_requests: HashMap<String, u64>,
    pub tokens: HashMap<String, SimToken>,
    /// Token ids whose GET answers 404 (seeded ones included).
    pub removed_tokens: HashSet<String>,
    /// Keyed by route and `Idempotency-Key`.
    pub idempotency: HashMap<(&'static str, String), Stored>,
    /// Transitions to come, in time order (the sequence number keeps equal times in the
    /// order they were scheduled).
    timeline: BTreeMap<(DateTime<Utc>, u64), (String, Step)>,
    /// Stores added by hand ([`crate::Sim::add_store`]).
    pub stores: BTreeSet<String>,
    sequence: u64,
}

/// Microseconds since the epoch of a `created_on`, as clients would read it (unparsable
/// values sort first).
pub(crate) fn created_micros(created_on: &str) -> i64 {
    DateTime::parse_from_rfc3339(created_on)
        .map(|t| t.timestamp_micros())
        .unwrap_or(i64::MIN)
}

impl Data {
    pub fn charge(&self, id: &str) -> Option<&SimCharge> {
        self.charges.get(id)
    }

    pub fn holds(&self, id: &str) -> bool {
        self.charges.contains_key(id)
    }

    pub fn charges(&self) -> impl Iterator<Item = &SimCharge> {
        self.charges.values()
    }

    /// Adds or replaces a charge, keeping the per-store index in step. Returns the charge
    /// it replaced.
    pub fn put(&mut self, charge: SimCharge) -> Option<SimCharge> {
        let key = (created_micros(&charge.created_on), charge.id.clone());
        let store = charge.store_id.clone();
        let old = self.charges.insert(charge.id.clone(), charge);
        if let Some(old) = &old {
            self.unindex(old);
        }
        self.by_store.entry(store).or_default().insert(key);
        old
    }

    pub fn take(&mut self, id: &str) -> Option<SimCharge> {
        let old = self.charges.remove(id)?;
        self.unindex(&old);
        Some(old)
    }

    fn unindex(&mut self, c: &SimCharge) {
        if let Some(set) = self.by_store.get_mut(&c.store_id) {
            set.remove(&(created_micros(&c.created_on), c.id.clone()));
        }
    }

    /// The charges held for a store, in listing order.
    pub fn listed_in(&self, store: &str) -> Option<&BTreeSet<ListKey>> {
        self.by_store.get(store)
    }

    /// The stores that hold charges.
    pub fn held_stores(&self) -> impl Iterator<Item = &String> {
        self.by_store.keys()
    }

    /// Whether any token or charge was ever made in this store, or it was added.
    pub fn knows_store(&self, store: &str) -> bool {
        self.stores.contains(store)
            || self.by_store.contains_key(store)
            || self.tokens.values().any(|t| t.store_id == store)
    }

    pub fn next_sequence(&mut self) -> u64 {
        self.sequence += 1;
        self.sequence
    }

    pub fn schedule(&mut self, at: DateTime<Utc>, charge_id: &str, step: Step) {
        let seq = self.next_sequence();
        self.timeline
            .insert((at, seq), (charge_id.to_owned(), step));
    }

    /// Whether some transition is due at `now` (cheap: looks at the first one only).
    pub fn has_due(&self, now: DateTime<Utc>) -> bool {
        self.timeline
            .first_key_value()
            .is_some_and(|((at, _), _)| *at <= now)
    }

    /// Takes the next transition due at `now`, with its instant.
    pub fn pop_due(&mut self, now: DateTime<Utc>) -> Option<(DateTime<Utc>, String, Step)> {
        if !self.has_due(now) {
            return None;
        }
        let ((at, _), (id, step)) = self.timeline.pop_first()?;
        Some((at, id, step))
    }
}
