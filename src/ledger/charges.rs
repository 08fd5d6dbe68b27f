//! The operator's changes and reads of `charges`: `register` (the contract's plain
//! insert, validated and idempotent), `recheck` (make charges due now) and `export`.
//! Each is one short transaction, so they run beside the daemon: readers see one
//! consistent snapshot (WAL), writers hold the write lock for a handful of statements.

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use super::{Ledger, LedgerError, ts};
use crate::domain::{ChargeId, Currency, State, StoreId};

/// A charge to register.
#[derive(Debug, Clone)]
pub struct NewCharge {
    pub charge_id: ChargeId,
    pub store_id: StoreId,
    pub amount: i64,
    pub currency: Currency,
    /// `None`: not given, so not compared with an existing row either.
    pub expires_at: Option<DateTime<Utc>>,
    /// The shop's order reference (`--order`); `None`: not given, not compared.
    pub order_ref: Option<String>,
}

/// A charge registered as of its own time (a backfill of a shop's orders, a replay):
/// [`Ledger::backfill`] inserts it with `created_at` and makes it due then.
#[derive(Debug, Clone)]
pub struct Backfill {
    pub charge: NewCharge,
    pub created_at: DateTime<Utc>,
}

/// What [`Ledger::register`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registered {
    Inserted,
    /// Already there with the same values; nothing changed.
    Identical,
    /// Already there with other values; nothing changed. Says what differs.
    Conflict(String),
}

/// What [`Ledger::recheck`] did to one charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rechecked {
    /// Made due now; `was` its `next_check_at` before (`None`: it was no longer checked).
    Due { was: Option<String> },
    /// Final: left alone.
    Final(State),
    /// No such charge.
    Unknown,
}

/// Which rows `export` writes.
#[derive(Debug, Clone, Default)]
pub struct ExportFilter {
    pub state: Option<State>,
    /// `updated_at` at or after.
    pub since: Option<DateTime<Utc>>,
    /// `updated_at` before.
    pub until: Option<DateTime<Utc>>,
}

/// One exported row; the field order is the CSV column order ([`EXPORT_COLUMNS`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExportRow {
    pub charge_id: String,
    pub store_id: String,
    pub origin: String,
    pub state: String,
    pub provider_status: Option<String>,
    pub requested_amount: i64,
    pub requested_currency: String,
    pub charged_amount: Option<i64>,
    pub charged_currency: Option<String>,
    pub amount_mismatch: i64,
    pub mismatch_detail: Option<String>,
    pub payment_number: Option<String>,
    pub konbini: Option<String>,
    pub expires_at: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub order_ref: Option<String>,
    pub paid_at: Option<String>,
}

/// The CSV header of `export`, in order.
pub const EXPORT_COLUMNS: [&str; 18] = [
    "charge_id",
    "store_id",
    "origin",
    "state",
    "provider_status",
    "requested_amount",
    "requested_currency",
    "charged_amount",
    "charged_currency",
    "amount_mismatch",
    "mismatch_detail",
    "payment_number",
    "konbini",
    "expires_at",
    "created_at",
    "updated_at",
    "order_ref",
    "paid_at",
];

impl Ledger {
    /// The plain INSERT with the given values, or, when the charge is already there, a
    /// comparison with what is registered. One transaction; nothing is changed unless the
    /// charge was new.
    pub fn register(&mut self, c: &NewCharge) -> Result<Registered, LedgerError> {
        let expires_at = c.expires_at.map(ts);
        self.write(|tx| {
            let inserted = tx.execute(
                "INSERT INTO charges (charge_id, store_id, requested_amount, requested_currency, expires_at, order_ref)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (charge_id) DO NOTHING",
                params![
                    c.charge_id.as_str(),
                    c.store_id.as_str(),
                    c.amount,
                    c.currency.as_str(),
                    expires_at,
                    c.order_ref
                ],
            )?;
            if inserted == 1 {
                return Ok(Registered::Inserted);
            }
            let (store, amount, currency, expires, order): (
                String,
                i64,
                String,
                Option<String>,
                Option<String>,
            ) = tx.query_row(
                "SELECT store_id, requested_amount, requested_currency, expires_at, order_ref
                 FROM charges WHERE charge_id = ?1",
                [c.charge_id.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )?;
            let mut differs = Vec::new();
            if store != c.store_id.as_str() {
                differs.push(format!("store_id {store}"));
            }
            if amount != c.amount || currency != c.currency.as_str() {
                differs.push(format!("amount {amount} {currency}"));
            }
            if expires_at.is_some() && expires != expires_at {
                differs.push(format!(
                    "expires_at {}",
                    expires.as_deref().unwrap_or("none")
                ));
            }
            if c.order_ref.is_some() && order != c.order_ref {
                differs.push(format!("order_ref {}", order.as_deref().unwrap_or("none")));
            }
            Ok(if differs.is_empty() {
                Registered::Identical
            } else {
                Registered::Conflict(differs.join(", "))
            })
        })
    }

    /// Registers `charges` as of their own `created_at`, each due then, in one
    /// transaction; a charge already in the ledger is left as it is. Returns how many
    /// were inserted.
    pub fn backfill(&mut self, charges: &[Backfill]) -> Result<usize, LedgerError> {
        self.write(|tx| {
            let mut insert = tx.prepare_cached(
                "INSERT INTO charges (charge_id, store_id, requested_amount, requested_currency,
                                      expires_at, created_at, next_check_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6) ON CONFLICT (charge_id) DO NOTHING",
            )?;
            let mut inserted = 0;
            for Backfill {
                charge: c,
                created_at,
            } in charges
            {
                inserted += insert.execute(params![
                    c.charge_id.as_str(),
                    c.store_id.as_str(),
                    c.amount,
                    c.currency.as_str(),
                    c.expires_at.map(ts),
                    ts(*created_at)
                ])?;
            }
            Ok(inserted)
        })
    }

    /// Makes the named open charges due at `now`, in one transaction. Final charges are
    /// left alone. When any id is not in the ledger, nothing is changed.
    pub fn recheck(
        &mut self,
        ids: &[ChargeId],
        now: DateTime<Utc>,
    ) -> Result<Vec<Rechecked>, LedgerError> {
        let now = ts(now);
        self.transact(|tx| {
            let mut done = Vec::with_capacity(ids.len());
            for id in ids {
                let row: Option<(String, Option<String>)> = tx
                    .query_row(
                        "SELECT state, next_check_at FROM charges WHERE charge_id = ?1",
                        [id.as_str()],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?;
                let outcome = match row {
                    None => Rechecked::Unknown,
                    Some((state, was)) => match State::parse(&state) {
                        Some(s) if s.is_final() => Rechecked::Final(s),
                        _ => {
                            tx.execute(
                                "UPDATE charges SET next_check_at = ?2 WHERE charge_id = ?1",
                                params![id.as_str(), now],
                            )?;
                            Rechecked::Due { was }
                        }
                    },
                };
                done.push(outcome);
            }
            let commit = !done.contains(&Rechecked::Unknown);
            Ok((done, commit))
        })
    }

    /// Makes every open charge that is no longer checked due at `now`; returns their ids.
    pub fn recheck_unchecked(&mut self, now: DateTime<Utc>) -> Result<Vec<String>, LedgerError> {
        let mut ids: Vec<String> = self.sql(|c| {
            let mut stmt = c.prepare(
                "UPDATE charges SET next_check_at = ?1
                 WHERE state IN ('pending', 'awaiting') AND next_check_at IS NULL
                 RETURNING charge_id",
            )?;
            let rows = stmt.query_map([ts(now)], |r| r.get(0))?;
            rows.collect()
        })?;
        ids.sort();
        Ok(ids)
    }

    /// Calls `each` for every charge `filter` selects, in `updated_at` order, from one
    /// snapshot (a WAL reader: writers go on meanwhile). Stops at the first `Err` of
    /// `each`, which is returned as the inner result.
    pub fn export<E>(
        &self,
        filter: &ExportFilter,
        mut each: impl FnMut(&ExportRow) -> Result<(), E>,
    ) -> Result<Result<(), E>, LedgerError> {
        self.sql(|c| {
            let mut stmt = c.prepare(
                "SELECT charge_id, store_id, origin, state, provider_status, requested_amount,
                        requested_currency, charged_amount, charged_currency, amount_mismatch,
                        mismatch_detail, payment_number, konbini, expires_at, created_at,
                        updated_at, order_ref, paid_at
                 FROM charges
                 WHERE (?1 IS NULL OR state = ?1)
                   AND (?2 IS NULL OR updated_at >= ?2)
                   AND (?3 IS NULL OR updated_at < ?3)
                 ORDER BY updated_at, charge_id",
            )?;
            let mut rows = stmt.query(params![
                filter.state.map(State::as_str),
                filter.since.map(ts),
                filter.until.map(ts)
            ])?;
            while let Some(r) = rows.next()? {
                if let Err(e) = each(&export_row(r)?) {
                    return Ok(Err(e));
                }
            }
            Ok(Ok(()))
        })
    }
}

fn export_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ExportRow> {
    Ok(ExportRow {
        charge_id: r.get(0)?,
        store_id: r.get(1)?,
        origin: r.get(2)?,
        state: r.get(3)?,
        provider_status: r.get(4)?,
        requested_amount: r.get(5)?,
        requested_currency: r.get(6)?,
        charged_amount: r.get(7)?,
        charged_currency: r.get(8)?,
        amount_mismatch: r.get(9)?,
        mismatch_detail: r.get(10)?,
        payment_number: r.get(11)?,
        konbini: r.get(12)?,
        expires_at: r.get(13)?,
        created_at: r.get(14)?,
        updated_at: r.get(15)?,
        order_ref: r.get(16)?,
        paid_at: r.get(17)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::Duration;

    use super::super::test_ledger as ledger;

    fn charge(id: &str, amount: i64) -> NewCharge {
        NewCharge {
            charge_id: ChargeId::parse(id).unwrap(),
            store_id: StoreId::parse("s").unwrap(),
            amount,
            currency: Currency::JPY,
            expires_at: None,
            order_ref: None,
        }
    }

    #[test]
    fn open_if_exists_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing.db");
        let e = Ledger::open_if_exists(&path, Duration::from_secs(1)).unwrap_err();
        assert!(e.to_string().contains("no such database"), "{e}");
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
    }

    #[test]
    fn register_is_idempotent_and_names_conflicts() {
        let (_d, mut l) = ledger();
        assert_eq!(l.register(&charge("a", 100)).unwrap(), Registered::Inserted);
        assert_eq!(
            l.register(&charge("a", 100)).unwrap(),
            Registered::Identical
        );
        assert_eq!(
            l.register(&charge("a", 90)).unwrap(),
            Registered::Conflict("amount 100 JPY".into())
        );
        let mut usd = charge("a", 100);
        usd.currency = Currency::parse("usd").unwrap();
        usd.store_id = StoreId::parse("t").unwrap();
        assert_eq!(
            l.register(&usd).unwrap(),
            Registered::Conflict("store_id s, amount 100 JPY".into())
        );
        let mut dated = charge("a", 100);
        dated.expires_at = Some("2026-12-01T00:00:00Z".parse().unwrap());
        assert_eq!(
            l.register(&dated).unwrap(),
            Registered::Conflict("expires_at none".into())
        );
        let mut b = charge("b", 5);
        b.expires_at = dated.expires_at;
        assert_eq!(l.register(&b).unwrap(), Registered::Inserted);
        assert_eq!(l.register(&b).unwrap(), Registered::Identical);
        assert_eq!(
            l.register(&charge("b", 5)).unwrap(),
            Registered::Identical,
            "a deadline not given is not compared"
        );
        let n: i64 = l
            .conn()
            .query_row("SELECT count(*) FROM charges", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 2);
    }

    #[test]
    fn overview_counts_what_status_shows() {
        let (_d, mut l) = ledger();
        for (id, amount) in [("a", 100), ("b", 200), ("c", 300), ("d", 400)] {
            l.register(&charge(id, amount)).unwrap();
        }
        let mut usd = charge("e", 7);
        usd.currency = Currency::parse("USD").unwrap();
        usd.expires_at = Some("2000-01-01T00:00:00Z".parse().unwrap());
        l.register(&usd).unwrap();
        l.conn()
            .execute_batch(
                "UPDATE charges SET state = 'successful', next_check_at = NULL WHERE charge_id = 'a';
                 UPDATE charges SET amount_mismatch = 1 WHERE charge_id = 'a';
                 UPDATE charges SET next_check_at = NULL, last_error = 'gone' WHERE charge_id = 'b';
                 UPDATE charges SET next_check_at = '2999-01-01T00:00:00Z' WHERE charge_id = 'c';
                 INSERT INTO runs (trigger, started_at, finished_at, outcome)
                     VALUES ('once', '2026-01-01T00:00:00.000Z', '2026-01-01T00:00:01.500Z', 'unreachable');
                 INSERT INTO runs (trigger, started_at, finished_at, outcome)
                     VALUES ('check', '2026-01-01T00:01:00.000Z', '2026-01-01T00:01:00.100Z', 'ok');",
            )
            .unwrap();
        let o = l.overview(Utc::now()).unwrap();
        let f = &o.figures;
        assert_eq!(f.count(State::Pending), 4);
        assert_eq!(f.count(State::Successful), 1);
        assert_eq!(f.count(State::Failed), 0);
        let yen: i64 = f
            .by_state
            .iter()
            .filter(|t| t.state == State::Pending && t.currency == "JPY")
            .map(|t| t.requested_amount)
            .sum();
        assert_eq!(yen, 900);
        assert_eq!(f.by_state[0].state, State::Pending, "in state order");
        assert_eq!(
            (
                f.mismatches,
                f.unchecked,
                f.due,
                f.open_past_expiry,
                f.open_with_errors
            ),
            (1, 1, 2, 1, 1)
        );
        assert_eq!(o.last_run.as_ref().unwrap().trigger, "check");
        let pass = o.last_pass.unwrap();
        assert_eq!(pass.outcome, "unreachable");
        assert_eq!(pass.duration(), Some(Duration::from_millis(1500)));
        assert_eq!(o.last_failure.unwrap().id, pass.id);
    }

    #[test]
    fn rows_with_an_invalid_state_are_counted_not_dropped() {
        let (_d, mut l) = ledger();
        for id in ["a", "b", "c"] {
            l.register(&charge(id, 100)).unwrap();
        }
        l.conn()
            .execute_batch(
                "PRAGMA ignore_check_constraints = ON;
                 UPDATE charges SET state = 'paid' WHERE charge_id = 'a';",
            )
            .unwrap();
        let f = l.overview(Utc::now()).unwrap().figures;
        assert_eq!(
            (f.count(State::Pending), f.invalid_state, f.total()),
            (2, 1, 3)
        );
    }

    #[test]
    fn recheck_never_reopens_a_final_charge_and_changes_nothing_for_an_unknown_id() {
        let (_d, mut l) = ledger();
        l.register(&charge("open", 1)).unwrap();
        l.register(&charge("done", 1)).unwrap();
        l.conn()
            .execute_batch(
                "UPDATE charges SET next_check_at = '2999-01-01T00:00:00Z' WHERE charge_id = 'open';
                 UPDATE charges SET state = 'failed', next_check_at = NULL WHERE charge_id = 'done';",
            )
            .unwrap();
        let ids = |v: &[&str]| -> Vec<ChargeId> {
            v.iter().map(|s| ChargeId::parse(*s).unwrap()).collect()
        };
        let now: DateTime<Utc> = "2026-05-01T00:00:00Z".parse().unwrap();
        let r = l.recheck(&ids(&["open", "nope"]), now).unwrap();
        assert_eq!(r[1], Rechecked::Unknown);
        let next = |l: &Ledger, id: &str| -> Option<String> {
            l.conn()
                .query_row(
                    "SELECT next_check_at FROM charges WHERE charge_id = ?1",
                    [id],
                    |r| r.get(0),
                )
                .unwrap()
        };
        assert_eq!(
            next(&l, "open").as_deref(),
            Some("2999-01-01T00:00:00.000Z")
        );
        let r = l.recheck(&ids(&["open", "done"]), now).unwrap();
        assert_eq!(
            r,
            vec![
                Rechecked::Due {
                    was: Some("2999-01-01T00:00:00.000Z".into())
                },
                Rechecked::Final(State::Failed)
            ]
        );
        assert_eq!(
            next(&l, "open").as_deref(),
            Some("2026-05-01T00:00:00.000Z")
        );
        assert_eq!(next(&l, "done"), None);
    }
}
