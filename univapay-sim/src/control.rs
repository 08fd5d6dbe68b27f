//! The test-control API: what a test, the demo or a benchmark does to the simulator that
//! UnivaPay's own API cannot: create charges without HTTP, end `pending` at once, pay
//! (perhaps the wrong amount), expire or cancel a charge now or at a simulated instant,
//! and look at the tokens and charges held.
//!
//! Every change here makes the same webhook events as the API would.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::charge::SimCharge;
use crate::lifecycle::{self, find_token};
use crate::seed::{Population, splitmix};
use crate::sim::Sim;
use crate::store::{Action, Data, Step};
use crate::token::{SimToken, konbini_deadline};

/// Why a control call (or the API call behind it) could not be done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SimError {
    NoSuchCharge(String),
    NoSuchToken(String),
    /// The charge is already `successful`, `failed`, `error` or `canceled`.
    AlreadyFinal {
        id: String,
        status: String,
    },
    /// A request field is missing or wrong (the API answers 400 naming it).
    Invalid {
        field: String,
        reason: String,
    },
}

impl std::fmt::Display for SimError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SimError::NoSuchCharge(id) => write!(f, "no charge {id}"),
            SimError::NoSuchToken(id) => write!(f, "no transaction token {id}"),
            SimError::AlreadyFinal { id, status } => write!(f, "charge {id} is already {status}"),
            SimError::Invalid { field, reason } => write!(f, "{field}: {reason}"),
        }
    }
}

impl std::error::Error for SimError {}

pub(crate) fn invalid(field: &str, reason: &str) -> SimError {
    SimError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// A new charge, as `POST /charges` asks for one.
#[derive(Debug, Clone)]
pub(crate) struct NewCharge {
    pub token_id: String,
    pub amount: i64,
    pub currency: String,
    pub metadata: Value,
}

/// A UUID-shaped id, unique per simulator (`prefix` tells charges from tokens; the
/// population's ids have their own shape, so they never collide).
fn api_id(prefix: &str, n: u64) -> String {
    let r = splitmix(n ^ 0x5EED);
    format!(
        "{prefix}{:04x}-{:04x}-4{:03x}-a{:03x}-{n:012x}",
        r & 0xffff,
        (r >> 16) & 0xffff,
        (r >> 32) & 0xfff,
        (r >> 44) & 0xfff
    )
}

pub(crate) fn new_token_id(d: &mut Data) -> String {
    api_id("11f3", d.next_sequence())
}

pub(crate) fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Creates a charge in `pending` and puts its transitions on the timeline: `pending` ends
/// after the processing delay, and a konbini charge fails at its deadline.
pub(crate) fn create_charge(
    sim: &Sim,
    d: &mut Data,
    pop: Option<&Population>,
    now: DateTime<Utc>,
    req: NewCharge,
) -> Result<SimCharge, SimError> {
    let token = find_token(d, pop, &req.token_id)
        .filter(|t| !d.removed_tokens.contains(&t.id))
        .ok_or_else(|| SimError::NoSuchToken(req.token_id.clone()))?;
    validate_charge(&req)?;
    let cfg = sim.config_arc();
    let mut c = SimCharge::new(
        api_id("11f2", d.next_sequence()),
        &token.store_id,
        req.amount,
    )
    .with_token(&token.id);
    c.requested_currency = req.currency.to_ascii_uppercase();
    c.metadata = if req.metadata.is_null() {
        json!({})
    } else {
        req.metadata
    };
    c.mode = token.mode.clone();
    c.created_on = rfc3339(now);
    d.schedule(now + chrono_of(cfg.processing_delay), &c.id, Step::Issue);
    if token.is_konbini() {
        let period = token.expiration_period().unwrap_or(cfg.konbini_expiry);
        let deadline = konbini_deadline(now, period, token.expiration_time_shift());
        d.schedule(deadline, &c.id, Step::Act(Action::Expire));
    }
    d.put(c.clone());
    Ok(c)
}

/// The charge as it is now, if it exists and is not final yet.
fn open_charge(
    d: &Data,
    pop: Option<&Population>,
    id: &str,
    now: DateTime<Utc>,
) -> Result<SimCharge, SimError> {
    let current =
        Sim::charge_in(d, pop, id, now).ok_or_else(|| SimError::NoSuchCharge(id.into()))?;
    if current.is_final() {
        return Err(SimError::AlreadyFinal {
            id: id.into(),
            status: current.status,
        });
    }
    Ok(current)
}

fn validate_charge(req: &NewCharge) -> Result<(), SimError> {
    if req.amount <= 0 {
        return Err(invalid("amount", "MUST_BE_POSITIVE"));
    }
    if req.currency.len() != 3 || !req.currency.chars().all(|c| c.is_ascii_alphabetic()) {
        return Err(invalid("currency", "INVALID_CURRENCY"));
    }
    if !(req.metadata.is_object() || req.metadata.is_null()) {
        return Err(invalid("metadata", "MUST_BE_OBJECT"));
    }
    Ok(())
}

pub(crate) fn chrono_of(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

impl Sim {
    /// Makes a store known, so `POST /tokens` accepts it as `store_id`.
    pub fn add_store(&self, store_id: &str) {
        self.data().stores.insert(store_id.to_owned());
    }

    /// Adds or replaces a token.
    pub fn insert_token(&self, token: SimToken) {
        let mut d = self.data();
        d.removed_tokens.remove(&token.id);
        d.tokens.insert(token.id.clone(), token);
    }

    /// Creates a konbini token for this brand (`seven_eleven`, `pay_easy`, ...), with the
    /// store's default deadline.
    pub fn create_konbini_token(&self, store_id: &str, convenience_store: &str) -> SimToken {
        self.new_token(|id, now| {
            let mut t = SimToken::konbini(id, store_id, convenience_store);
            t.created_on = rfc3339(now);
            t
        })
    }

    /// Creates a card token.
    pub fn create_card_token(&self, store_id: &str) -> SimToken {
        self.new_token(|id, now| {
            let mut t = SimToken::card(id, store_id);
            t.created_on = rfc3339(now);
            t
        })
    }

    fn new_token(&self, make: impl FnOnce(&str, DateTime<Utc>) -> SimToken) -> SimToken {
        let now = self.now();
        let mut d = self.data();
        let t = make(&new_token_id(&mut d), now);
        d.tokens.insert(t.id.clone(), t.clone());
        t
    }

    /// Creates a charge with a token, as `POST /charges` does: `pending`, then `awaiting`
    /// (konbini) or `successful` (other types) after [`crate::SimConfig::processing_delay`].
    pub fn create_charge(
        &self,
        token_id: &str,
        amount: i64,
        currency: &str,
        metadata: Value,
    ) -> Result<SimCharge, SimError> {
        let req = NewCharge {
            token_id: token_id.into(),
            amount,
            currency: currency.into(),
            metadata,
        };
        self.with_data(|d, pop, now| (create_charge(self, d, pop, now, req), vec![]))
    }

    /// A new konbini token and a JPY charge with it (`pending`).
    pub fn create_konbini_charge(
        &self,
        store_id: &str,
        amount: i64,
        convenience_store: &str,
    ) -> SimCharge {
        let t = self.create_konbini_token(store_id, convenience_store);
        self.create_charge(&t.id, amount, "JPY", json!({}))
            .expect("a fresh token makes a valid charge")
    }

    /// A new card token and a JPY charge with it (`pending`).
    pub fn create_card_charge(&self, store_id: &str, amount: i64) -> SimCharge {
        let t = self.create_card_token(store_id);
        self.create_charge(&t.id, amount, "JPY", json!({}))
            .expect("a fresh token makes a valid charge")
    }

    /// Ends `pending` now: a konbini charge gets its payment number (`awaiting`), a card
    /// charge is captured. A charge that is no longer pending is returned unchanged.
    pub fn issue(&self, id: &str) -> Result<SimCharge, SimError> {
        self.change(id, |d, pop, c| {
            if c.status == "pending" {
                vec![lifecycle::issue(d, pop, c)]
            } else {
                vec![]
            }
        })
    }

    /// Paid at the store, exactly the amount requested.
    pub fn pay(&self, id: &str) -> Result<SimCharge, SimError> {
        self.apply(id, Action::Pay)
    }

    /// Paid with another amount or currency (an amount mismatch).
    pub fn pay_with(&self, id: &str, amount: i64, currency: &str) -> Result<SimCharge, SimError> {
        self.apply(
            id,
            Action::PayWith {
                amount,
                currency: currency.into(),
            },
        )
    }

    /// The deadline passed: `failed`, error 323.
    pub fn expire(&self, id: &str) -> Result<SimCharge, SimError> {
        self.apply(id, Action::Expire)
    }

    /// Canceled by the merchant.
    pub fn cancel(&self, id: &str) -> Result<SimCharge, SimError> {
        self.apply(id, Action::Cancel)
    }

    /// Does `action` now (a seeded charge is taken as it is now and held from then on).
    /// Paying a `pending` charge issues it first, so both webhook events happen.
    pub fn apply(&self, id: &str, action: Action) -> Result<SimCharge, SimError> {
        self.change(id, |d, pop, c| lifecycle::act(d, pop, c, &action))
    }

    /// Does `action` when simulated time reaches `after` from now (a seeded charge is held
    /// from now on, as it is now).
    pub fn schedule(&self, id: &str, after: Duration, action: Action) -> Result<(), SimError> {
        self.with_data(|d, pop, now| {
            let current = match open_charge(d, pop, id, now) {
                Ok(c) => c,
                Err(e) => return (Err(e), vec![]),
            };
            if !d.holds(id) {
                d.put(current);
            }
            d.schedule(now + chrono_of(after), id, Step::Act(action));
            (Ok(()), vec![])
        })
    }

    /// Applies `f`'s successive states to a non-final charge.
    fn change(
        &self,
        id: &str,
        f: impl FnOnce(&Data, Option<&Population>, SimCharge) -> Vec<SimCharge>,
    ) -> Result<SimCharge, SimError> {
        self.with_data(|d, pop, now| {
            let current = match open_charge(d, pop, id, now) {
                Ok(c) => c,
                Err(e) => return (Err(e), vec![]),
            };
            let states = f(d, pop, current.clone());
            if states.is_empty() {
                d.put(current.clone());
                return (Ok(current), vec![]);
            }
            let events = lifecycle::commit_all(d, id, states, now);
            (Ok(d.charge(id).cloned().expect("just stored")), events)
        })
    }

    /// A token by id: held, seeded, or the implied `tok-{charge id}` of a charge set
    /// with [`SimCharge::new`] (removed ones excluded).
    pub fn token(&self, id: &str) -> Option<SimToken> {
        let pop = self.population_guard();
        let d = self.data();
        if d.removed_tokens.contains(id) {
            return None;
        }
        if let Some(t) = find_token(&d, pop.as_ref(), id) {
            return Some(t);
        }
        let charge = Sim::charge_in(&d, pop.as_ref(), id.strip_prefix("tok-")?, self.now())?;
        charge
            .transaction_token_id
            .is_none()
            .then(|| lifecycle::implied_token(&charge))
    }

    /// The tokens created or inserted (seeded ones are computed, not listed), oldest
    /// first.
    pub fn tokens(&self) -> Vec<SimToken> {
        let mut v: Vec<SimToken> = self.data().tokens.values().cloned().collect();
        v.sort_by(|a, b| (&a.created_on, &a.id).cmp(&(&b.created_on, &b.id)));
        v
    }

    /// Makes a token's GET answer 404 (seeded tokens too); charges made with it live on.
    pub fn remove_token(&self, id: &str) {
        self.data().removed_tokens.insert(id.to_owned());
    }

    /// The charges held (set by tests, made through the API, or seeded ones changed by a
    /// test), oldest first, as they are now. Seeded charges are computed, not listed.
    pub fn charges(&self) -> Vec<SimCharge> {
        self.with_data(|d, _, _| {
            let mut v: Vec<SimCharge> = d.charges().cloned().collect();
            v.sort_by_key(|c| (crate::store::created_micros(&c.created_on), c.id.clone()));
            (v, vec![])
        })
    }
}
