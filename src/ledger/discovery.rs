//! What discovery keeps in the ledger: the charges it registers, the per-store watermark
//! of how far the sweeps have looked, the charges it skipped and why, its sweeps, and the
//! registered charges it enriched.
//!
//! A page's registrations, skips, counts and the store's new watermark are one
//! transaction ([`Ledger::commit_discovery`]): a crash leaves the page wholly done or not
//! at all, and the next sweep starts from the last committed watermark. Registration is
//! `INSERT ... ON CONFLICT DO NOTHING` by charge id, so a page done twice registers
//! nothing twice, and the `discovered` event is written only with an actual insert.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};

use super::{Ledger, LedgerError, Trigger, ts};
use crate::domain::{ChargeId, Currency, StoreId};

/// `charge_events.kind` of a discovered charge's first row.
const DISCOVERED_EVENT: &str = "discovered";

/// A transient failure is retried on this many sweeps before the charge is skipped for
/// good (so that one charge UnivaPay keeps failing on cannot hold a store's watermark).
pub const MAX_ATTEMPTS: i64 = 5;

/// How a sweep ended (`discovery_sweeps.outcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SweepOutcome {
    /// Every store was looked at up to now.
    Ok,
    /// Something was left for the next sweep: a limit was reached, a request failed for a
    /// while, or a listing misbehaved (the detail says which).
    Partial,
    /// Stopped by shutdown.
    Interrupted,
    /// UnivaPay refused the credentials.
    AuthFailed,
    /// UnivaPay could not be reached at all.
    Unreachable,
    /// The ledger failed.
    Failed,
}

impl SweepOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            SweepOutcome::Ok => "ok",
            SweepOutcome::Partial => "partial",
            SweepOutcome::Interrupted => "interrupted",
            SweepOutcome::AuthFailed => "auth_failed",
            SweepOutcome::Unreachable => "unreachable",
            SweepOutcome::Failed => "failed",
        }
    }
}

/// Why a charge discovery looked at was not registered (`discovery_skips.reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SkipReason {
    /// Its token says another payment type (card, ...).
    NotKonbini,
    /// The history row or the token names a payment type nobody knows.
    UnknownPaymentType,
    /// The token GET answered 404.
    TokenNotFound,
    /// The charge GET answered 404.
    ChargeNotFound,
    /// The charge names no usable transaction token.
    NoToken,
    /// An answer could not be used (malformed, about another charge or store, refused).
    Unverified,
    /// Created before `discovery.lookback` (the listing ignored the bound).
    OutsideLookback,
    /// A transient failure; retried by the next sweeps, [`MAX_ATTEMPTS`] in all.
    Retrying,
    /// Still failing after [`MAX_ATTEMPTS`] sweeps.
    Unreachable,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::NotKonbini => "not_konbini",
            SkipReason::UnknownPaymentType => "unknown_payment_type",
            SkipReason::TokenNotFound => "token_not_found",
            SkipReason::ChargeNotFound => "charge_not_found",
            SkipReason::NoToken => "no_token",
            SkipReason::Unverified => "unverified",
            SkipReason::OutsideLookback => "outside_lookback",
            SkipReason::Retrying => "retrying",
            SkipReason::Unreachable => "unreachable",
        }
    }
}

/// A verified konbini charge to register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDiscovered {
    pub charge_id: ChargeId,
    pub store_id: StoreId,
    pub requested_amount: i64,
    pub requested_currency: Currency,
    /// The brand (`seven_eleven`, `pay_easy`, ...), when known.
    pub konbini: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    /// UnivaPay's `created_on`: the charge's `created_at`, so that its recheck cadence
    /// counts its age from its real creation, not from when discovery found it. `None`
    /// (or a time still to come) takes the registration time.
    pub created_on: Option<DateTime<Utc>>,
    /// The status the verifying GET saw, for the event row.
    pub provider_status: String,
    /// The `discovered` event's detail: where it was found.
    pub detail: String,
}

/// A charge looked at and not registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skip {
    pub charge_id: ChargeId,
    pub store_id: StoreId,
    pub reason: SkipReason,
    pub detail: String,
}

/// What one committed step of a sweep adds to its row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepCounts {
    pub requests: u64,
    pub pages: u64,
    pub items: u64,
    pub discovered: u64,
    pub skipped: u64,
    pub enriched: u64,
}

impl std::ops::AddAssign for SweepCounts {
    fn add_assign(&mut self, o: SweepCounts) {
        self.requests += o.requests;
        self.pages += o.pages;
        self.items += o.items;
        self.discovered += o.discovered;
        self.skipped += o.skipped;
        self.enriched += o.enriched;
    }
}

/// One transaction's worth of discovery: registrations, skips, and how far the store
/// has now been looked at.
#[derive(Debug, Clone, Default)]
pub struct DiscoveryBatch {
    /// The sweep whose row gets the counts; `None` outside a sweep (a webhook).
    pub sweep_id: Option<i64>,
    pub found: Vec<NewDiscovered>,
    pub skipped: Vec<Skip>,
    /// The store and its new watermark, if it moved.
    pub watermark: Option<(StoreId, DateTime<Utc>)>,
    /// Requests, pages and items behind this batch (discovered and skipped are counted
    /// from what was actually written).
    pub counts: SweepCounts,
}

/// A registered charge's brand and deadline, looked up from its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrichment {
    pub charge_id: ChargeId,
    pub konbini: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    /// `discovery_enriched.outcome`: `filled`, or why nothing could be.
    pub outcome: String,
}

impl Ledger {
    /// Closes sweeps a dead process left `running`, and inserts a new sweep's row. Call
    /// with the pass lock held.
    pub fn begin_sweep(&self, trigger: Trigger, now: DateTime<Utc>) -> Result<i64, LedgerError> {
        self.sql(|c| {
            c.execute(
                "UPDATE discovery_sweeps SET outcome = 'interrupted',
                        detail = coalesce(detail || '; ', '') || 'process ended before the sweep finished'
                 WHERE outcome = 'running'",
                [],
            )?;
            c.execute(
                "INSERT INTO discovery_sweeps (trigger, started_at, pid) VALUES (?1, ?2, ?3)",
                params![trigger.as_str(), ts(now), std::process::id()],
            )?;
            Ok(c.last_insert_rowid())
        })
    }

    /// Records how a sweep ended.
    pub fn finish_sweep(
        &self,
        sweep_id: i64,
        outcome: SweepOutcome,
        stores: u64,
        detail: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(), LedgerError> {
        self.sql(|c| {
            c.execute(
                "UPDATE discovery_sweeps SET outcome = ?2, finished_at = ?3, stores = ?4, detail = ?5
                 WHERE id = ?1",
                params![sweep_id, outcome.as_str(), ts(now), stores, detail],
            )
        })?;
        Ok(())
    }

    /// When the latest sweep that ran its course started. Sweeps cut short by shutdown, a
    /// crash or a ledger failure do not count: the next chance sweeps again.
    pub fn last_sweep_started(&self) -> Result<Option<DateTime<Utc>>, LedgerError> {
        let t: Option<String> = self.sql(|c| {
            c.query_row(
                "SELECT max(started_at) FROM discovery_sweeps
                 WHERE outcome NOT IN ('running', 'interrupted', 'failed')",
                [],
                |r| r.get(0),
            )
        })?;
        Ok(t.and_then(|t| parse_ts(&t)))
    }

    /// How far the sweeps have looked at `store`'s charges.
    pub fn watermark(&self, store: &StoreId) -> Result<Option<DateTime<Utc>>, LedgerError> {
        let t: Option<String> = self.sql(|c| {
            c.query_row(
                "SELECT swept_to FROM discovery_watermarks WHERE store_id = ?1",
                [store.as_str()],
                |r| r.get(0),
            )
            .optional()
        })?;
        Ok(t.and_then(|t| parse_ts(&t)))
    }

    /// The ids among `ids` that need no more requests: in the ledger, archived, or
    /// skipped for good (a charge being retried is not).
    pub fn known_charges<'a>(
        &self,
        ids: impl IntoIterator<Item = &'a ChargeId>,
    ) -> Result<HashSet<ChargeId>, LedgerError> {
        self.sql(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM charges WHERE charge_id = ?1)
                     OR EXISTS (SELECT 1 FROM archived_charges WHERE charge_id = ?1)
                     OR EXISTS (SELECT 1 FROM discovery_skips
                                WHERE charge_id = ?1 AND reason <> 'retrying')",
            )?;
            let mut known = HashSet::new();
            for id in ids {
                if stmt.query_row([id.as_str()], |r| r.get::<_, bool>(0))? {
                    known.insert(id.clone());
                }
            }
            Ok(known)
        })
    }

    /// Writes a batch in one transaction (see the module doc). Returns what it added:
    /// charges actually registered (not those already there) and skips written.
    pub fn commit_discovery(
        &mut self,
        batch: &DiscoveryBatch,
        now: DateTime<Utc>,
    ) -> Result<SweepCounts, LedgerError> {
        let at = ts(now);
        self.write(|tx| {
            let mut added = batch.counts;
            added.discovered = 0;
            added.skipped = 0;
            for d in &batch.found {
                let created = d.created_on.map_or_else(|| at.clone(), |c| ts(c.min(now)));
                if insert_discovered(tx, d, &at, &created)? {
                    added.discovered += 1;
                }
            }
            for s in &batch.skipped {
                upsert_skip(tx, s, &at)?;
                added.skipped += 1;
            }
            if let Some((store, mark)) = &batch.watermark {
                // Never backwards: two sweeps cannot overlap (the pass lock), but a clock
                // stepped back must not make a sweep look at everything again.
                tx.execute(
                    "INSERT INTO discovery_watermarks (store_id, swept_to, updated_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT (store_id) DO UPDATE SET swept_to = max(swept_to, excluded.swept_to),
                                                          updated_at = excluded.updated_at",
                    params![store.as_str(), ts(*mark), at],
                )?;
            }
            if let Some(id) = batch.sweep_id {
                add_counts(tx, id, &added)?;
            }
            Ok(added)
        })
    }

    /// Registered, open charges that lack a brand or deadline and were never enriched,
    /// oldest first, at most `limit`.
    pub fn charges_to_enrich(&self, limit: usize) -> Result<Vec<(ChargeId, StoreId)>, LedgerError> {
        let rows: Vec<(String, String)> = self.sql(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT charge_id, store_id FROM charges
                 WHERE origin = 'registered' AND state IN ('pending', 'awaiting')
                   AND (konbini IS NULL OR expires_at IS NULL)
                   AND charge_id NOT IN (SELECT charge_id FROM discovery_enriched)
                 ORDER BY created_at, charge_id
                 LIMIT ?1",
            )?;
            let rows = stmt.query_map([limit as i64], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })?;
        // Constraints keep bad ids out; a row written with them off is left alone.
        Ok(rows
            .into_iter()
            .filter_map(|(c, s)| Some((ChargeId::parse(c).ok()?, StoreId::parse(s).ok()?)))
            .collect())
    }

    /// Fills what enrichment found (only columns still NULL: a shop's own values stand)
    /// and records that each charge was looked up, in one transaction.
    pub fn commit_enrichment(
        &mut self,
        sweep_id: Option<i64>,
        items: &[Enrichment],
        now: DateTime<Utc>,
    ) -> Result<u64, LedgerError> {
        let at = ts(now);
        self.write(|tx| {
            let mut filled = 0;
            for e in items {
                let changed = tx.execute(
                    "UPDATE charges SET konbini = coalesce(konbini, ?2),
                            expires_at = coalesce(expires_at, ?3)
                     WHERE charge_id = ?1
                       AND ((konbini IS NULL AND ?2 IS NOT NULL)
                            OR (expires_at IS NULL AND ?3 IS NOT NULL))",
                    params![e.charge_id.as_str(), e.konbini, e.expires_at.map(ts)],
                )?;
                filled += changed as u64;
                tx.execute(
                    "INSERT INTO discovery_enriched (charge_id, at, outcome) VALUES (?1, ?2, ?3)
                     ON CONFLICT (charge_id) DO NOTHING",
                    params![e.charge_id.as_str(), at, e.outcome],
                )?;
            }
            if let Some(id) = sweep_id {
                let counts = SweepCounts {
                    enriched: filled,
                    ..SweepCounts::default()
                };
                add_counts(tx, id, &counts)?;
            }
            Ok(filled)
        })
    }
}

/// Inserts a discovered charge, due at once, created at `created`, with its `discovered`
/// event. `false` when the charge was already in the ledger.
fn insert_discovered(
    conn: &rusqlite::Connection,
    d: &NewDiscovered,
    at: &str,
    created: &str,
) -> rusqlite::Result<bool> {
    let inserted = conn
        .prepare_cached(
            "INSERT INTO charges (charge_id, store_id, requested_amount, requested_currency,
                                  origin, konbini, expires_at, next_check_at, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, 'discovered', ?5, ?6, ?7, ?8, ?7)
             ON CONFLICT (charge_id) DO NOTHING",
        )?
        .execute(params![
            d.charge_id.as_str(),
            d.store_id.as_str(),
            d.requested_amount,
            d.requested_currency.as_str(),
            d.konbini,
            d.expires_at.map(ts),
            at,
            created
        ])?;
    if inserted == 0 {
        return Ok(false);
    }
    conn.prepare_cached(
        "INSERT INTO charge_events (charge_id, at, kind, to_state, provider_status, detail)
         VALUES (?1, ?2, ?3, 'pending', ?4, ?5)",
    )?
    .execute(params![
        d.charge_id.as_str(),
        at,
        DISCOVERED_EVENT,
        d.provider_status,
        d.detail
    ])?;
    // A charge registered now was perhaps skipped before (retried after a failure).
    conn.prepare_cached("DELETE FROM discovery_skips WHERE charge_id = ?1")?
        .execute([d.charge_id.as_str()])?;
    Ok(true)
}

/// Records a skip; a charge skipped again counts one more attempt, and a transient
/// failure becomes final after [`MAX_ATTEMPTS`].
fn upsert_skip(conn: &rusqlite::Connection, s: &Skip, at: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO discovery_skips (charge_id, store_id, reason, detail, attempts, first_at, last_at)
         VALUES (?1, ?2, ?3, ?4, 1, ?5, ?5)
         ON CONFLICT (charge_id) DO UPDATE SET
             attempts = discovery_skips.attempts + 1,
             reason = CASE WHEN excluded.reason = 'retrying' AND discovery_skips.attempts + 1 >= ?6
                           THEN 'unreachable' ELSE excluded.reason END,
             detail = excluded.detail,
             last_at = excluded.last_at",
    )?
    .execute(params![
        s.charge_id.as_str(),
        s.store_id.as_str(),
        s.reason.as_str(),
        s.detail,
        at,
        MAX_ATTEMPTS
    ])?;
    Ok(())
}

fn add_counts(conn: &rusqlite::Connection, sweep_id: i64, c: &SweepCounts) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "UPDATE discovery_sweeps SET requests = requests + ?2, pages = pages + ?3,
                items = items + ?4, discovered = discovered + ?5, skipped = skipped + ?6,
                enriched = enriched + ?7
         WHERE id = ?1",
    )?
    .execute(params![
        sweep_id,
        c.requests,
        c.pages,
        c.items,
        c.discovered,
        c.skipped,
        c.enriched
    ])?;
    Ok(())
}

fn parse_ts(t: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(t)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}
