//! How held charges change: the transitions of the konbini lifecycle (`pending ->
//! awaiting -> successful | failed | canceled`), applied when their simulated time comes
//! or when a test asks, and the webhook events each change makes.
//!
//! Charges made through the API (or the control methods) have their transitions on the
//! store's timeline: `pending` ends after [`crate::SimConfig::processing_delay`], and a
//! konbini charge fails at its deadline (see [`crate::token::konbini_deadline`]). Due
//! transitions are applied lazily, before anything reads the charges, so a GET always
//! sees the state simulated time implies.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::charge::SimCharge;
use crate::seed::{Population, splitmix};
use crate::store::{Action, Data, Step};
use crate::token::SimToken;

/// A status change that UnivaPay reports by webhook.
#[derive(Debug, Clone)]
pub(crate) struct Event {
    /// `charge_updated` or `charge_finished`.
    pub name: &'static str,
    /// The charge as it was right after the change.
    pub charge: SimCharge,
    /// The simulated instant of the change.
    pub at: DateTime<Utc>,
}

/// The webhook event that a change from status `old` to `new` makes, if any:
/// `charge_updated` on becoming `awaiting` or `authorized`, `charge_finished` on
/// becoming final.
pub(crate) fn event_for(old: Option<&str>, new: &SimCharge) -> Option<&'static str> {
    if old == Some(new.status.as_str()) {
        return None;
    }
    let was_final = old.is_some_and(|s| crate::charge::FINAL_STATUSES.contains(&s));
    match new.status.as_str() {
        "awaiting" | "authorized" => Some("charge_updated"),
        _ if new.is_final() && !was_final => Some("charge_finished"),
        _ => None,
    }
}

/// Stores `new` as the charge's state and returns the event the change makes.
pub(crate) fn commit(
    d: &mut Data,
    old_status: Option<&str>,
    new: SimCharge,
    at: DateTime<Utc>,
) -> Option<Event> {
    let name = event_for(old_status, &new);
    let event = name.map(|name| Event {
        name,
        charge: new.clone(),
        at,
    });
    d.put(new);
    event
}

/// Applies every transition due at `now`, oldest first.
pub(crate) fn settle(d: &mut Data, pop: Option<&Population>, now: DateTime<Utc>) -> Vec<Event> {
    let mut events = vec![];
    while let Some((at, id, step)) = d.pop_due(now) {
        let Some(current) = d.charge(&id).cloned() else {
            continue;
        };
        if current.is_final() {
            continue;
        }
        let states = match step {
            Step::Issue if current.status == "pending" => vec![issue(d, pop, current)],
            Step::Issue => continue,
            Step::Act(action) => act(d, pop, current, &action),
        };
        events.extend(commit_all(d, &id, states, at));
    }
    events
}

/// Stores the last of successive states and returns the events of each step.
pub(crate) fn commit_all(
    d: &mut Data,
    id: &str,
    states: Vec<SimCharge>,
    at: DateTime<Utc>,
) -> Vec<Event> {
    let mut old = d.charge(id).map(|c| c.status.clone());
    let mut events = vec![];
    for s in states {
        let status = s.status.clone();
        events.extend(commit(d, old.as_deref(), s, at));
        old = Some(status);
    }
    events
}

/// The states an action takes a non-final charge through: a `pending` one is issued
/// first (the payment number exists before anyone can pay it).
pub(crate) fn act(
    d: &Data,
    pop: Option<&Population>,
    current: SimCharge,
    action: &Action,
) -> Vec<SimCharge> {
    let mut states = vec![];
    let mut c = current;
    if c.status == "pending" && matches!(action, Action::Pay | Action::PayWith { .. }) {
        c = issue(d, pop, c);
        states.push(c.clone());
        if c.is_final() {
            return states;
        }
    }
    states.push(match action {
        Action::Pay => c.paid(),
        Action::PayWith { amount, currency } => c.paid_with(*amount, currency),
        Action::Expire => c.expired(),
        Action::Cancel => c.with_status("canceled"),
    });
    states
}

/// `pending` ends: a konbini charge gets its payment number (and, at Seven-Eleven, a
/// payment slip URL); any other payment type is captured at once.
pub(crate) fn issue(d: &Data, pop: Option<&Population>, c: SimCharge) -> SimCharge {
    let token = token_of(d, pop, &c);
    if !token.as_ref().is_none_or(SimToken::is_konbini) {
        return c.paid();
    }
    let number = payment_number(&c.id);
    let brand = token.as_ref().and_then(|t| t.convenience_store());
    let url = (brand == Some("seven_eleven"))
        .then(|| format!("https://slip.sim.invalid/seven_eleven/{number}"));
    c.awaiting(&number, url.as_deref())
}

/// An 11-digit payment number derived from the charge id.
fn payment_number(id: &str) -> String {
    let h = id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    format!("{:011}", splitmix(h) % 100_000_000_000)
}

/// The token a charge was made with: a held one, a seeded one, or (for charges set with
/// [`SimCharge::new`]) a konbini token of the charge's store, its brand taken from
/// `metadata.convenience_store`.
pub(crate) fn token_of(d: &Data, pop: Option<&Population>, c: &SimCharge) -> Option<SimToken> {
    match &c.transaction_token_id {
        Some(id) => find_token(d, pop, id),
        None => Some(implied_token(c)),
    }
}

/// A held or seeded token by id (removed ones included: they still define a charge).
pub(crate) fn find_token(d: &Data, pop: Option<&Population>, id: &str) -> Option<SimToken> {
    if let Some(t) = d.tokens.get(id) {
        return Some(t.clone());
    }
    let pop = pop?;
    Some(pop.plan(pop.index_of_token(id)?).token())
}

/// The `tok-{id}` token of a charge set directly by a test.
pub(crate) fn implied_token(c: &SimCharge) -> SimToken {
    let brand = c.metadata.get("convenience_store").cloned();
    let mut t = SimToken::konbini(&c.token_id(), &c.store_id, "");
    t.data["convenience_store"] = brand.unwrap_or(Value::Null);
    t.created_on = c.created_on.clone();
    t.metadata = json!({});
    t
}
