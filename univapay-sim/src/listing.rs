//! Listing a store's charges in creation order, the engine behind `GET
//! /stores/{sid}/charges` and `GET /stores/{sid}/transaction_history`.
//!
//! A store's charges are the ones held (indexed per store by `(created_on, id)` as they
//! are stored) merged with the seeded population's. The population is computed, not
//! stored, so the first listing after a seed builds a [`PopulationIndex`]: every seeded
//! charge's creation time and index, per store, sorted (16 bytes per charge, a few tens of
//! milliseconds per million, built once per seed). Seeded charges a test changed or
//! removed are skipped there: the held copy (or nothing) stands for them.
//!
//! A page walks the merged order from just past the cursor (or the `from`/`to` bound),
//! renders each charge as it is now, keeps the ones the filter wants, and stops at
//! `limit` items plus one (to know `has_more`). So a filter that matches rarely makes a
//! long walk (every charge passed is rendered: about a microsecond each in a release
//! build), and the data lock is held for it.

use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::ops::Bound;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::charge::SimCharge;
use crate::lifecycle::token_of;
use crate::seed::Population;
use crate::sim::Sim;
use crate::store::{Data, ListKey, created_micros};

/// The seeded population per store, each sorted by creation time then index (which is
/// id order: seeded ids differ only in their zero-padded hex index).
pub(crate) struct PopulationIndex {
    identity: (u64, u64, u32, DateTime<Utc>, std::time::Duration),
    per_store: Vec<Vec<(i64, u64)>>,
}

impl PopulationIndex {
    fn identity(p: &Population) -> (u64, u64, u32, DateTime<Utc>, std::time::Duration) {
        (p.seed, p.count, p.stores, p.epoch, p.spread)
    }

    fn build(p: &Population) -> PopulationIndex {
        let mut per_store = vec![Vec::new(); p.stores.max(1) as usize];
        for i in 0..p.count {
            let (store, created) = p.store_and_created(i);
            per_store[store as usize].push((created.timestamp_micros(), i));
        }
        for v in &mut per_store {
            v.sort_unstable();
        }
        PopulationIndex {
            identity: Self::identity(p),
            per_store,
        }
    }

    fn store(&self, p: &Population, store_id: &str) -> &[(i64, u64)] {
        let k = (0..p.stores.max(1)).find(|&k| Population::store_id(k) == store_id);
        k.map(|k| self.per_store[k as usize].as_slice())
            .unwrap_or(&[])
    }
}

/// What a page asks for.
#[derive(Debug, Clone, Default)]
pub(crate) struct Query {
    pub limit: usize,
    /// Id of the last item seen.
    pub cursor: Option<String>,
    pub descending: bool,
    /// Inclusive bounds on `created_on`, in microseconds.
    pub from: Option<i64>,
    pub to: Option<i64>,
}

/// What a listed charge's token says, for history rows and filters.
#[derive(Debug, Clone)]
pub(crate) struct TokenFacts {
    pub payment_type: String,
    pub convenience_store: Option<String>,
    pub customer_name: Option<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct Item {
    pub charge: SimCharge,
    pub token: TokenFacts,
}

#[derive(Debug)]
pub(crate) struct Page {
    pub items: Vec<Item>,
    pub has_more: bool,
    /// The cursor's own item, for the `repeat_items` fault.
    pub cursor_item: Option<Item>,
}

/// The cursor names no charge of the simulator.
#[derive(Debug)]
pub(crate) struct UnknownCursor;

/// Where a listed charge comes from.
enum Source {
    Held(String),
    Seeded(u64),
}

impl Sim {
    fn population_index(&self, p: &Population) -> Arc<PopulationIndex> {
        let mut slot = self
            .inner
            .population_index
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match slot.as_ref() {
            Some(ix) if ix.identity == PopulationIndex::identity(p) => ix.clone(),
            _ => {
                let ix = Arc::new(PopulationIndex::build(p));
                *slot = Some(ix.clone());
                ix
            }
        }
    }

    /// One page of a store's charges that `keep` accepts.
    pub(crate) fn page(
        &self,
        store: &str,
        q: &Query,
        keep: impl Fn(&Item) -> bool,
    ) -> Result<Page, UnknownCursor> {
        let pop_copy = self.population();
        let index = pop_copy.as_ref().map(|p| self.population_index(p));
        self.with_data(|d, pop, now| {
            let lister = Lister {
                d,
                pop,
                now,
                seeded: match (pop, &index) {
                    (Some(p), Some(ix)) => ix.store(p, store),
                    _ => &[],
                },
                held: d.listed_in(store),
            };
            (lister.page(q, keep), vec![])
        })
    }
}

impl Sim {
    /// One page of the merchant's charges over all stores: each store's page from the same
    /// cursor, merged in listing order and cut to the limit.
    pub(crate) fn merchant_page(
        &self,
        q: &Query,
        keep: impl Fn(&Item) -> bool,
    ) -> Result<Page, UnknownCursor> {
        let pop_copy = self.population();
        let index = pop_copy.as_ref().map(|p| self.population_index(p));
        self.with_data(|d, pop, now| {
            let mut stores: BTreeSet<String> = d.held_stores().cloned().collect();
            if let Some(p) = pop {
                stores.extend(p.store_ids());
            }
            let mut items = vec![];
            let mut has_more = false;
            for store in &stores {
                let lister = Lister {
                    d,
                    pop,
                    now,
                    seeded: match (pop, &index) {
                        (Some(p), Some(ix)) => ix.store(p, store),
                        _ => &[],
                    },
                    held: d.listed_in(store),
                };
                match lister.page(q, &keep) {
                    Ok(page) => {
                        has_more |= page.has_more;
                        items.extend(page.items);
                    }
                    Err(e) => return (Err(e), vec![]),
                }
            }
            let key = |i: &Item| (created_micros(&i.charge.created_on), i.charge.id.clone());
            items.sort_by_key(key);
            if q.descending {
                items.reverse();
            }
            has_more |= items.len() > q.limit;
            items.truncate(q.limit);
            let page = Page {
                items,
                has_more,
                cursor_item: None,
            };
            (Ok(page), vec![])
        })
    }
}

/// One listing's view of the data, under the data lock.
struct Lister<'a> {
    d: &'a Data,
    pop: Option<&'a Population>,
    now: DateTime<Utc>,
    seeded: &'a [(i64, u64)],
    held: Option<&'a BTreeSet<ListKey>>,
}

impl Lister<'_> {
    fn page(&self, q: &Query, keep: impl Fn(&Item) -> bool) -> Result<Page, UnknownCursor> {
        let cursor = match &q.cursor {
            Some(id) => Some(self.key_of(id).ok_or(UnknownCursor)?),
            None => None,
        };
        let start = self.start(q, cursor.as_ref());
        let mut items = vec![];
        let mut has_more = false;
        for (key, source) in self.walk(start, q.descending) {
            let past_end = if q.descending {
                q.from.is_some_and(|f| key.0 < f)
            } else {
                q.to.is_some_and(|t| key.0 > t)
            };
            if past_end {
                break;
            }
            let Some(item) = self.render(source) else {
                continue;
            };
            if !keep(&item) {
                continue;
            }
            if items.len() == q.limit {
                has_more = true;
                break;
            }
            items.push(item);
        }
        let cursor_item = q.cursor.as_deref().and_then(|id| self.item_of(id));
        Ok(Page {
            items,
            has_more,
            cursor_item,
        })
    }

    /// The first key a page may hold is strictly past this one (in the page's direction).
    fn start(&self, q: &Query, cursor: Option<&ListKey>) -> Option<ListKey> {
        // Keys with an empty id sit before every key of the same instant.
        let bound = if q.descending {
            q.to.map(|t| (t.saturating_add(1), String::new()))
        } else {
            q.from.map(|f| (f, String::new()))
        };
        let pick = |a: ListKey, b: ListKey| match (q.descending, a.cmp(&b)) {
            (false, Ordering::Less) | (true, Ordering::Greater) => b,
            _ => a,
        };
        match (cursor.cloned(), bound) {
            (Some(c), Some(b)) => Some(pick(c, b)),
            (c, b) => c.or(b),
        }
    }

    fn key_of(&self, id: &str) -> Option<ListKey> {
        if let Some(c) = self.d.charge(id) {
            return Some((created_micros(&c.created_on), id.to_owned()));
        }
        let pop = self.pop?;
        let i = pop.index_of(id)?;
        Some((pop.store_and_created(i).1.timestamp_micros(), id.to_owned()))
    }

    /// Held and seeded keys merged, strictly past `start`, in the page's direction. (The
    /// ascending walk from an empty-id key includes that instant, as wanted.)
    fn walk(
        &self,
        start: Option<ListKey>,
        descending: bool,
    ) -> impl Iterator<Item = (ListKey, Source)> + '_ {
        let held = self.held_from(start.clone(), descending);
        let seeded = self.seeded_from(start, descending);
        Merge {
            a: held.peekable(),
            b: seeded.peekable(),
            descending,
        }
    }

    fn held_from(
        &self,
        start: Option<ListKey>,
        descending: bool,
    ) -> Box<dyn Iterator<Item = (ListKey, Source)> + '_> {
        let Some(set) = self.held else {
            return Box::new(std::iter::empty());
        };
        let tag = |k: &ListKey| (k.clone(), Source::Held(k.1.clone()));
        match (start, descending) {
            (None, false) => Box::new(set.iter().map(tag)),
            (None, true) => Box::new(set.iter().rev().map(tag)),
            (Some(s), false) => {
                Box::new(set.range((Bound::Excluded(s), Bound::Unbounded)).map(tag))
            }
            (Some(s), true) => Box::new(
                set.range((Bound::Unbounded, Bound::Excluded(s)))
                    .rev()
                    .map(tag),
            ),
        }
    }

    fn seeded_from(
        &self,
        start: Option<ListKey>,
        descending: bool,
    ) -> Box<dyn Iterator<Item = (ListKey, Source)> + '_> {
        let Some(pop) = self.pop else {
            return Box::new(std::iter::empty());
        };
        let s = self.seeded;
        let cmp = |e: &(i64, u64), k: &ListKey| {
            e.0.cmp(&k.0)
                .then_with(|| pop.charge_id(e.1).as_str().cmp(k.1.as_str()))
        };
        let tag = move |e: &(i64, u64)| ((e.0, pop.charge_id(e.1)), Source::Seeded(e.1));
        match (start, descending) {
            (None, false) => Box::new(s.iter().map(tag)),
            (None, true) => Box::new(s.iter().rev().map(tag)),
            (Some(k), false) => {
                let at = s.partition_point(|e| cmp(e, &k) != Ordering::Greater);
                Box::new(s[at..].iter().map(tag))
            }
            (Some(k), true) => {
                let at = s.partition_point(|e| cmp(e, &k) == Ordering::Less);
                Box::new(s[..at].iter().rev().map(tag))
            }
        }
    }

    fn item_of(&self, id: &str) -> Option<Item> {
        if self.d.holds(id) {
            return self.render(Source::Held(id.to_owned()));
        }
        self.render(Source::Seeded(self.pop?.index_of(id)?))
    }

    /// The charge as it is now with its token's facts; `None` for a seeded charge that is
    /// held (listed as held) or removed.
    fn render(&self, source: Source) -> Option<Item> {
        match source {
            Source::Held(id) => {
                let charge = self.d.charge(&id)?.clone();
                let token = token_of(self.d, self.pop, &charge);
                let token = match token {
                    Some(t) => TokenFacts {
                        payment_type: t.payment_type.clone(),
                        convenience_store: t.convenience_store().map(str::to_owned),
                        customer_name: t.customer_name().map(str::to_owned),
                    },
                    None => TokenFacts {
                        payment_type: "konbini".into(),
                        convenience_store: None,
                        customer_name: None,
                    },
                };
                Some(Item { charge, token })
            }
            Source::Seeded(i) => {
                let pop = self.pop?;
                let id = pop.charge_id(i);
                if self.d.holds(&id) || self.d.removed.contains(&id) {
                    return None;
                }
                let plan = pop.plan(i);
                let token = plan.token();
                Some(Item {
                    charge: plan.at(self.now),
                    token: TokenFacts {
                        payment_type: token.payment_type.clone(),
                        convenience_store: token.convenience_store().map(str::to_owned),
                        customer_name: token.customer_name().map(str::to_owned),
                    },
                })
            }
        }
    }
}

/// Two ordered walks merged into one.
struct Merge<A: Iterator, B: Iterator> {
    a: std::iter::Peekable<A>,
    b: std::iter::Peekable<B>,
    descending: bool,
}

impl<A, B> Iterator for Merge<A, B>
where
    A: Iterator<Item = (ListKey, Source)>,
    B: Iterator<Item = (ListKey, Source)>,
{
    type Item = (ListKey, Source);

    fn next(&mut self) -> Option<Self::Item> {
        let take_a = match (self.a.peek(), self.b.peek()) {
            (Some((ka, _)), Some((kb, _))) => (ka <= kb) != self.descending,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if take_a { self.a.next() } else { self.b.next() }
    }
}
