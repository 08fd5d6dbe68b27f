//! Seeded populations: `count` charges described by a seed and a mix, computed on demand
//! from their index instead of stored, so a million of them cost no memory.
//!
//! Each charge follows the konbini lifecycle on simulated time: `pending` when created,
//! `awaiting` (with a payment number) a few seconds later, then final: paid
//! (`successful`), expired unpaid at its deadline (`failed`, error 323), or `canceled`.
//! A few are paid with an amount or a currency that differs from the request, which the
//! reconciler must flag. The same `(seed, index)` always gives the same charge, which is
//! how a benchmark registers in its database exactly the charges the simulator serves.
//!
//! A population can also hold card charges ([`Mix::card`], 0 by default so that callers
//! who register every seeded charge as konbini keep seeing only konbini charges). A card
//! charge goes `pending -> successful` (or `failed`/`canceled`) a few seconds after it is
//! created, carries no konbini metadata, and its token says `payment_type: card`. Whether
//! a charge is a card is drawn from its own hash, so turning cards on changes no konbini
//! charge's plan: only which indices are cards.
//!
//! Every seeded charge has a transaction token, computed like the charge
//! ([`Population::token_id`], [`Planned::token`]).

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;

use crate::SimCharge;
use crate::token::SimToken;

/// Relative weights of the final outcomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mix {
    pub paid: u32,
    pub expired: u32,
    pub canceled: u32,
    /// Paid, but less than requested.
    pub underpaid: u32,
    /// Paid the right number in another currency.
    pub foreign_currency: u32,
    /// Weight of card charges against the sum of the outcome weights above: with the
    /// default outcomes (summing to 100), `card: 10` makes about 10 in 110 charges cards.
    /// 0 by default; see [`Mix::with_cards`].
    pub card: u32,
}

impl Default for Mix {
    fn default() -> Self {
        Mix {
            paid: 70,
            expired: 20,
            canceled: 7,
            underpaid: 2,
            foreign_currency: 1,
            card: 0,
        }
    }
}

impl Mix {
    /// The same mix with card charges of this weight (see [`Mix::card`]).
    pub fn with_cards(mut self, weight: u32) -> Self {
        self.card = weight;
        self
    }

    /// Whether the charge whose card draw is `h` is a card charge.
    fn is_card(&self, h: u64) -> bool {
        self.card > 0 && h % (self.total() + u64::from(self.card)) < u64::from(self.card)
    }

    fn total(&self) -> u64 {
        [
            self.paid,
            self.expired,
            self.canceled,
            self.underpaid,
            self.foreign_currency,
        ]
        .iter()
        .map(|&w| u64::from(w))
        .sum()
    }

    fn pick(&self, h: u64) -> Outcome {
        let total = self.total().max(1);
        let mut x = h % total;
        for (w, o) in [
            (self.paid, Outcome::Paid),
            (self.expired, Outcome::Expired),
            (self.canceled, Outcome::Canceled),
            (self.underpaid, Outcome::Underpaid),
            (self.foreign_currency, Outcome::ForeignCurrency),
        ] {
            let w = u64::from(w);
            if x < w {
                return o;
            }
            x -= w;
        }
        Outcome::Paid
    }
}

/// `paid=70,expired=20,canceled=7,underpaid=2,foreign=1,card=10`; names left out weigh 0.
impl FromStr for Mix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut m = Mix {
            paid: 0,
            expired: 0,
            canceled: 0,
            underpaid: 0,
            foreign_currency: 0,
            card: 0,
        };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?} is not name=weight"))?;
            let v: u32 = v
                .trim()
                .parse()
                .map_err(|_| format!("weight {v:?} is not a whole number"))?;
            match k.trim() {
                "paid" => m.paid = v,
                "expired" => m.expired = v,
                "canceled" => m.canceled = v,
                "underpaid" => m.underpaid = v,
                "foreign" => m.foreign_currency = v,
                "card" => m.card = v,
                other => {
                    return Err(format!(
                        "unknown outcome {other:?} (paid, expired, canceled, underpaid, foreign, card)"
                    ));
                }
            }
        }
        if m.total() == 0 {
            return Err("all outcome weights are 0".into());
        }
        Ok(m)
    }
}

/// How a seeded charge ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Paid,
    Expired,
    Canceled,
    Underpaid,
    ForeignCurrency,
}

impl Outcome {
    /// A card cannot be paid short or in another currency: those end as plain payments.
    fn for_card(self) -> Outcome {
        match self {
            Outcome::Underpaid | Outcome::ForeignCurrency => Outcome::Paid,
            o => o,
        }
    }
}

/// The konbini chains UnivaPay supports (`convenience_store` on the token).
pub const CHAINS: [&str; 10] = [
    "seven_eleven",
    "family_mart",
    "lawson",
    "mini_stop",
    "seico_mart",
    "pay_easy",
    "circle_k",
    "sunkus",
    "daily_yamazaki",
    "yamazaki_daily_store",
];

/// `count` charges generated from `seed`.
#[derive(Debug, Clone)]
pub struct Population {
    pub count: u64,
    pub seed: u64,
    /// Charges are spread over this many stores.
    pub stores: u32,
    pub mix: Mix,
    /// Creation times are spread over this long before `epoch`.
    pub spread: Duration,
    /// Payment deadline after creation (UnivaPay's default is 30 days).
    pub expiry: Duration,
    /// The simulated time the population was created at; set by [`crate::Sim::seed`].
    pub epoch: DateTime<Utc>,
}

impl Population {
    pub fn new(count: u64, seed: u64) -> Self {
        Population {
            count,
            seed,
            stores: 3,
            mix: Mix::default(),
            spread: Duration::from_secs(3 * 24 * 3600),
            expiry: Duration::from_secs(7 * 24 * 3600),
            epoch: Utc::now(),
        }
    }

    fn tag(&self) -> u32 {
        (splitmix(self.seed) >> 48) as u32
    }

    /// The charge id of the `index`-th charge (UUID-shaped, as UnivaPay's are).
    pub fn charge_id(&self, index: u64) -> String {
        format!("11f0{:04x}-0000-4000-8000-{index:012x}", self.tag())
    }

    /// The index of a charge id of this population.
    pub fn index_of(&self, id: &str) -> Option<u64> {
        let rest = id.strip_prefix(&format!("11f0{:04x}-0000-4000-8000-", self.tag()))?;
        if rest.len() != 12 {
            return None;
        }
        let i = u64::from_str_radix(rest, 16).ok()?;
        (i < self.count).then_some(i)
    }

    /// The id of the `index`-th charge's transaction token.
    pub fn token_id(&self, index: u64) -> String {
        format!("11f0{:04x}-0001-4000-8000-{index:012x}", self.tag())
    }

    /// The index of a token id of this population.
    pub fn index_of_token(&self, id: &str) -> Option<u64> {
        let rest = id.strip_prefix(&format!("11f0{:04x}-0001-4000-8000-", self.tag()))?;
        if rest.len() != 12 {
            return None;
        }
        let i = u64::from_str_radix(rest, 16).ok()?;
        (i < self.count).then_some(i)
    }

    /// The store ids charges are spread over.
    pub fn store_id(k: u32) -> String {
        format!("11ef0000-0000-0000-0000-{:012x}", u64::from(k) + 1)
    }

    /// All the store ids of this population.
    pub fn store_ids(&self) -> Vec<String> {
        (0..self.stores.max(1)).map(Self::store_id).collect()
    }

    /// The same population with card charges of this weight (see [`Mix::card`]).
    pub fn with_cards(mut self, weight: u32) -> Self {
        self.mix.card = weight;
        self
    }

    /// The `index`-th charge's draws: a fixed sequence of hashes, so every field of a plan
    /// depends only on the seed and the index.
    fn draws(&self, index: u64) -> impl FnMut() -> u64 {
        let mut h = splitmix(self.seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        move || {
            h = splitmix(h);
            h
        }
    }

    /// The store index and creation time of the `index`-th charge: the first draws of its
    /// plan, without the rest (what a listing needs to order a whole population).
    pub(crate) fn store_and_created(&self, index: u64) -> (u32, DateTime<Utc>) {
        let mut next = self.draws(index);
        let store = (next() % u64::from(self.stores.max(1))) as u32;
        let _amount = next();
        let _chain = next();
        let spread_ms = self.spread.as_millis().max(1) as u64;
        (store, self.epoch - ms(next() % spread_ms))
    }

    /// Whether the `index`-th charge is a card charge. Drawn apart from the plan's other
    /// draws so that the card weight changes nothing else.
    pub fn is_card(&self, index: u64) -> bool {
        self.mix.is_card(splitmix(
            self.seed ^ 0xCA4D ^ index.wrapping_mul(0xD6E8_FEB8_6659_FD93),
        ))
    }

    /// The `index`-th charge's plan.
    pub fn plan(&self, index: u64) -> Planned {
        let mut next = self.draws(index);
        let store = (next() % u64::from(self.stores.max(1))) as u32;
        // Konbini totals run from a few hundred yen to a few tens of thousands.
        let amount = 300 + (next() % 3000) as i64 * 10;
        let chain = CHAINS[(next() % CHAINS.len() as u64) as usize];
        let spread_ms = self.spread.as_millis().max(1) as u64;
        let created = self.epoch - ms(next() % spread_ms);
        let awaiting_at = created + ms(1_000 + next() % 29_000);
        let outcome = self.mix.pick(next());
        let deadline = created + chrono::Duration::from_std(self.expiry).unwrap_or_default();
        let until_deadline = (deadline - awaiting_at).num_milliseconds().max(1) as u64;
        // Most payers go to the store within a day or two; some wait until near the end.
        let pay_ms = (next() % until_deadline).min(next() % until_deadline);
        let final_at = match outcome {
            Outcome::Expired => deadline,
            _ => awaiting_at + ms(pay_ms),
        };
        let payment_number = format!("{:011}", next() % 100_000_000_000);
        let card = self.is_card(index);
        let (final_at, outcome) = if card {
            // A card is authorised and captured at once, for exactly the amount asked.
            (awaiting_at, outcome.for_card())
        } else {
            (final_at, outcome)
        };
        Planned {
            index,
            id: self.charge_id(index),
            store_id: Self::store_id(store),
            amount,
            chain,
            created,
            awaiting_at,
            final_at,
            outcome,
            payment_number,
            payment_type: if card { "card" } else { "konbini" },
            token_id: self.token_id(index),
            expiry: self.expiry,
        }
    }
}

fn ms(n: u64) -> chrono::Duration {
    chrono::Duration::milliseconds(n as i64)
}

pub(crate) fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One seeded charge's whole life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub index: u64,
    pub id: String,
    pub store_id: String,
    /// Requested amount, JPY.
    pub amount: i64,
    pub chain: &'static str,
    pub created: DateTime<Utc>,
    pub awaiting_at: DateTime<Utc>,
    pub final_at: DateTime<Utc>,
    pub outcome: Outcome,
    pub payment_number: String,
    /// `konbini`, or `card` for the card share of the mix.
    pub payment_type: &'static str,
    /// The charge's transaction token ([`Planned::token`]).
    pub token_id: String,
    /// The payment deadline after creation (the token's `expiration_period`).
    pub expiry: Duration,
}

impl Planned {
    pub fn is_card(&self) -> bool {
        self.payment_type == "card"
    }

    /// The charge as UnivaPay reports it at simulated time `t`.
    pub fn at(&self, t: DateTime<Utc>) -> SimCharge {
        let mut c = SimCharge::new(self.id.clone(), self.store_id.clone(), self.amount);
        c.transaction_token_id = Some(self.token_id.clone());
        c.created_on = self
            .created
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        if self.is_card() {
            c.metadata = json!({"order_id": format!("order-{}", self.index)});
            return self.card_at(c, t);
        }
        c.metadata =
            json!({"order_id": format!("order-{}", self.index), "convenience_store": self.chain});
        if t < self.awaiting_at {
            return c;
        }
        let url = (self.chain == "seven_eleven").then(|| {
            format!(
                "https://slip.sim.invalid/seven_eleven/{}",
                self.payment_number
            )
        });
        c = c.awaiting(&self.payment_number, url.as_deref());
        if t < self.final_at {
            return c;
        }
        match self.outcome {
            Outcome::Paid => c.paid(),
            Outcome::Expired => c.expired(),
            Outcome::Canceled => c.with_status("canceled"),
            Outcome::Underpaid => {
                let short = (self.amount / 10).max(1);
                c.paid_with(self.amount - short, "JPY")
            }
            Outcome::ForeignCurrency => c.paid_with(self.amount, "USD"),
        }
    }

    fn card_at(&self, c: SimCharge, t: DateTime<Utc>) -> SimCharge {
        if t < self.final_at {
            return c;
        }
        match self.outcome {
            Outcome::Expired => {
                let mut c = c.with_status("failed");
                c.error = Some(crate::charge::card_declined());
                c
            }
            Outcome::Canceled => c.with_status("canceled"),
            _ => c.paid(),
        }
    }

    /// The charge's transaction token as `GET /stores/{sid}/tokens/{id}` shows it.
    pub fn token(&self) -> SimToken {
        let created_on = self
            .created
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let mut t = if self.is_card() {
            SimToken::card(&self.token_id, &self.store_id)
        } else {
            SimToken::konbini(&self.token_id, &self.store_id, self.chain)
                .with_expiration_period(self.expiry)
        };
        t.created_on = created_on;
        t.email = Some(format!("customer-{}@sim.invalid", self.index));
        if let Some(name) = t.data.get_mut("customer_name") {
            *name = json!(format!("Sim Customer {}", self.index));
        }
        t
    }

    /// The status at simulated time `t` (what [`Planned::at`] would report).
    pub fn status_at(&self, t: DateTime<Utc>) -> &'static str {
        if t < self.awaiting_at {
            "pending"
        } else if t < self.final_at {
            "awaiting"
        } else {
            match self.outcome {
                Outcome::Paid | Outcome::Underpaid | Outcome::ForeignCurrency => "successful",
                Outcome::Expired => "failed",
                Outcome::Canceled => "canceled",
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_are_deterministic() {
        let p = Population::new(1000, 7);
        for i in [0, 1, 999] {
            assert_eq!(p.index_of(&p.charge_id(i)), Some(i));
        }
        assert_eq!(p.index_of(&p.charge_id(1000)), None, "past the count");
        assert_eq!(p.index_of(&Population::new(1000, 8).charge_id(3)), None);
        assert_eq!(p.plan(42), p.plan(42));
        assert_ne!(p.plan(42).payment_number, p.plan(43).payment_number);
    }

    #[test]
    fn mix_is_followed() {
        let mut p = Population::new(10_000, 1);
        p.mix = "paid=50,expired=50".parse().unwrap();
        let paid = (0..p.count)
            .filter(|&i| p.plan(i).outcome == Outcome::Paid)
            .count();
        assert!((4500..5500).contains(&paid), "{paid}");
        assert!(
            (0..p.count).all(|i| matches!(p.plan(i).outcome, Outcome::Paid | Outcome::Expired))
        );
        assert!("paid=1,bogus=2".parse::<Mix>().is_err());
        assert!("paid=0".parse::<Mix>().is_err());
    }

    #[test]
    fn lifecycle_order() {
        let p = Population::new(200, 3);
        for i in 0..p.count {
            let c = p.plan(i);
            assert!(c.created < c.awaiting_at && c.awaiting_at <= c.final_at);
            assert!(c.created <= p.epoch);
            let before = c.at(c.awaiting_at - chrono::Duration::milliseconds(1));
            assert_eq!(before.status, "pending");
            assert_eq!(
                before.metadata.get("internal_convenience_payment_number"),
                None
            );
            let waiting = c.at(c.awaiting_at);
            assert_eq!(
                waiting.metadata["internal_convenience_payment_number"],
                c.payment_number.as_str()
            );
            let done = c.at(c.final_at);
            assert_eq!(done.status, c.status_at(c.final_at));
            match c.outcome {
                Outcome::Underpaid => assert!(done.charged_amount < Some(c.amount)),
                Outcome::ForeignCurrency => {
                    assert_eq!(done.charged_currency.as_deref(), Some("USD"))
                }
                Outcome::Paid => assert_eq!(done.charged_amount, Some(c.amount)),
                Outcome::Expired => assert_eq!(done.error.as_ref().unwrap()["code"], 323),
                Outcome::Canceled => assert_eq!(done.charged_amount, None),
            }
        }
    }
}
