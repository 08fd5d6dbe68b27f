//! The ledger queries behind the operator's commands (`status`, `register`, `check`,
//! `recheck`, `export`) and the metrics. Each is one short transaction, so they run
//! beside the daemon: readers see one consistent snapshot (WAL), writers hold the write
//! lock for a handful of statements.

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, TransactionBehavior, params};
use serde::Serialize;

use super::{DueRow, Ledger, LedgerError, row_to_due, ts};
use crate::domain::{ChargeId, Currency, Outcome, State, StoreId};

/// Outcomes that say a run went wrong (as opposed to `ok`, `running`, `interrupted`).
const FAILED_OUTCOMES: [Outcome; 5] = [
    Outcome::AuthFailed,
    Outcome::Unreachable,
    Outcome::Failed,
    Outcome::RateLimited,
    Outcome::NotFoundWall,
];

/// Charges of one state and currency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateTotal {
    pub state: State,
    pub currency: String,
    pub count: u64,
    /// Sum of `requested_amount`, minor units.
    pub requested_amount: i64,
}

/// What the ledger holds now, in figures.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Figures {
    /// By state and currency; states without charges are absent.
    pub by_state: Vec<StateTotal>,
    /// Charges flagged with an amount mismatch.
    pub mismatches: u64,
    /// Open charges no longer checked (`next_check_at` NULL: given up after 404s).
    pub unchecked: u64,
    /// Charges due now (`next_check_at` at or before now).
    pub due: u64,
    /// Open charges whose `expires_at` has passed.
    pub open_past_expiry: u64,
    /// Open charges whose last check failed.
    pub open_with_errors: u64,
}

impl Figures {
    /// Charges in `state`, every currency.
    pub fn count(&self, state: State) -> u64 {
        self.by_state
            .iter()
            .filter(|t| t.state == state)
            .map(|t| t.count)
            .sum()
    }
}

/// One `runs` row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunRow {
    pub id: i64,
    pub trigger: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub outcome: String,
    pub checked: i64,
    pub transitions: i64,
    pub mismatches: i64,
    pub errors: i64,
    pub pid: Option<i64>,
    pub detail: Option<String>,
    pub due: Option<i64>,
    pub stretch: Option<f64>,
    pub requests: i64,
    pub resume_at: Option<String>,
}

impl RunRow {
    /// From `started_at` to `finished_at`, when both are readable.
    pub fn duration(&self) -> Option<Duration> {
        let start = DateTime::parse_from_rfc3339(&self.started_at).ok()?;
        let end = DateTime::parse_from_rfc3339(self.finished_at.as_deref()?).ok()?;
        (end - start).to_std().ok()
    }
}

/// The ledger at a glance: what `status` shows and the metrics report.
#[derive(Debug, Clone, PartialEq)]
pub struct Overview {
    pub figures: Figures,
    /// The latest run of any trigger.
    pub last_run: Option<RunRow>,
    /// The latest finished pass (`once` or `schedule`), for "is it still running passes?".
    pub last_pass: Option<RunRow>,
    /// The latest run that ended in a failure outcome.
    pub last_failure: Option<RunRow>,
}

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

const RUN_COLUMNS: &str = "id, trigger, started_at, finished_at, outcome, checked, transitions, \
     mismatches, errors, pid, detail, due, stretch, requests, resume_at";

fn row_to_run(r: &rusqlite::Row<'_>) -> rusqlite::Result<RunRow> {
    Ok(RunRow {
        id: r.get(0)?,
        trigger: r.get(1)?,
        started_at: r.get(2)?,
        finished_at: r.get(3)?,
        outcome: r.get(4)?,
        checked: r.get(5)?,
        transitions: r.get(6)?,
        mismatches: r.get(7)?,
        errors: r.get(8)?,
        pid: r.get(9)?,
        detail: r.get(10)?,
        due: r.get(11)?,
        stretch: r.get(12)?,
        requests: r.get(13)?,
        resume_at: r.get(14)?,
    })
}

impl Ledger {
    /// Opens (and migrates) a database that must already exist: for the commands that
    /// only read or change what is there, which must never leave an empty ledger behind
    /// a mistyped `database.path`.
    pub fn open_if_exists(path: &Path, busy_timeout: Duration) -> Result<Ledger, LedgerError> {
        if !path.is_file() {
            return Err(LedgerError::Open {
                path: path.to_owned(),
                message: "no such database (check database.path; `register` or the service's \
                          first start creates it)"
                    .to_owned(),
            });
        }
        Ledger::open(path, busy_timeout)
    }

    /// The figures, the last run and the last failure, read in one snapshot.
    pub fn overview(&self, now: DateTime<Utc>) -> Result<Overview, LedgerError> {
        let tx = self.conn.unchecked_transaction().map_err(|e| self.err(e))?;
        let figures = self.figures(now)?;
        let last_run = self.run_where("1 = 1")?;
        let last_pass =
            self.run_where("trigger IN ('once', 'schedule') AND finished_at IS NOT NULL")?;
        let failed = FAILED_OUTCOMES
            .iter()
            .map(|o| format!("'{}'", o.as_str()))
            .collect::<Vec<_>>()
            .join(", ");
        let last_failure = self.run_where(&format!("outcome IN ({failed})"))?;
        tx.finish().map_err(|e| self.err(e))?;
        Ok(Overview {
            figures,
            last_run,
            last_pass,
            last_failure,
        })
    }

    fn figures(&self, now: DateTime<Utc>) -> Result<Figures, LedgerError> {
        let now = ts(now);
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT state, requested_currency, count(*), coalesce(sum(requested_amount), 0)
                 FROM charges GROUP BY state, requested_currency ORDER BY state, requested_currency",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        let mut by_state = Vec::new();
        for row in rows {
            let (state, currency, count, requested_amount) = row.map_err(|e| self.err(e))?;
            // The schema admits only the four states; a row slipped past it is not counted.
            if let Some(state) = State::parse(&state) {
                by_state.push(StateTotal {
                    state,
                    currency,
                    count: count.max(0) as u64,
                    requested_amount,
                });
            }
        }
        by_state.sort_by_key(|t| {
            (
                State::ALL.iter().position(|s| *s == t.state),
                t.currency.clone(),
            )
        });
        let count = |sql: &str, with_now: bool| -> Result<u64, LedgerError> {
            let mut stmt = self.conn.prepare_cached(sql).map_err(|e| self.err(e))?;
            let n: i64 = if with_now {
                stmt.query_row([&now], |r| r.get(0))
            } else {
                stmt.query_row([], |r| r.get(0))
            }
            .map_err(|e| self.err(e))?;
            Ok(n.max(0) as u64)
        };
        Ok(Figures {
            by_state,
            mismatches: count(
                "SELECT count(*) FROM charges WHERE amount_mismatch = 1",
                false,
            )?,
            unchecked: count(
                "SELECT count(*) FROM charges
                 WHERE state IN ('pending', 'awaiting') AND next_check_at IS NULL",
                false,
            )?,
            due: count(
                "SELECT count(*) FROM charges WHERE next_check_at <= ?1",
                true,
            )?,
            open_past_expiry: count(
                "SELECT count(*) FROM charges
                 WHERE state IN ('pending', 'awaiting') AND expires_at < ?1",
                true,
            )?,
            open_with_errors: count(
                "SELECT count(*) FROM charges
                 WHERE state IN ('pending', 'awaiting') AND last_error IS NOT NULL",
                false,
            )?,
        })
    }

    /// The latest `runs` row matching `condition` (a fixed SQL expression, never input).
    fn run_where(&self, condition: &str) -> Result<Option<RunRow>, LedgerError> {
        self.conn
            .prepare_cached(&format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE {condition} ORDER BY id DESC LIMIT 1"
            ))
            .and_then(|mut s| s.query_row([], row_to_run).optional())
            .map_err(|e| self.err(e))
    }

    /// The plain INSERT with the given values, or, when the charge is already there, a
    /// comparison with what is registered. One transaction; nothing is changed unless the
    /// charge was new.
    pub fn register(&mut self, c: &NewCharge) -> Result<Registered, LedgerError> {
        let err = super::err_at(&self.path);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        let expires_at = c.expires_at.map(ts);
        let inserted = tx
            .execute(
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
            )
            .map_err(err)?;
        let outcome = if inserted == 1 {
            Registered::Inserted
        } else {
            let (store, amount, currency, expires, order): (
                String,
                i64,
                String,
                Option<String>,
                Option<String>,
            ) = tx
                .query_row(
                    "SELECT store_id, requested_amount, requested_currency, expires_at, order_ref
                     FROM charges WHERE charge_id = ?1",
                    [c.charge_id.as_str()],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
                )
                .map_err(err)?;
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
            if differs.is_empty() {
                Registered::Identical
            } else {
                Registered::Conflict(differs.join(", "))
            }
        };
        tx.commit().map_err(err)?;
        Ok(outcome)
    }

    /// The named charges as a pass would read them; `None` for those not in the ledger.
    /// Final and no-longer-checked charges are included (their `next_check_at` reads as
    /// the empty string).
    pub fn charges_by_id(&self, ids: &[ChargeId]) -> Result<Vec<Option<DueRow>>, LedgerError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT charge_id, store_id, requested_amount, requested_currency, state,
                        provider_status, charged_amount, charged_currency, amount_mismatch,
                        mismatch_detail, payment_number, payment_url, last_error,
                        consecutive_errors, not_found_count, coalesce(next_check_at, ''),
                        updated_at
                 FROM charges WHERE charge_id = ?1",
            )
            .map_err(|e| self.err(e))?;
        ids.iter()
            .map(|id| {
                stmt.query_row([id.as_str()], row_to_due)
                    .optional()
                    .map_err(|e| self.err(e))
            })
            .collect()
    }

    /// Makes the named open charges due at `now`, in one transaction. Final charges are
    /// left alone. When any id is not in the ledger, nothing is changed.
    pub fn recheck(
        &mut self,
        ids: &[ChargeId],
        now: DateTime<Utc>,
    ) -> Result<Vec<Rechecked>, LedgerError> {
        let err = super::err_at(&self.path);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        let now = ts(now);
        let mut done = Vec::with_capacity(ids.len());
        for id in ids {
            let row: Option<(String, Option<String>)> = tx
                .query_row(
                    "SELECT state, next_check_at FROM charges WHERE charge_id = ?1",
                    [id.as_str()],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(err)?;
            let outcome = match row {
                None => Rechecked::Unknown,
                Some((state, was)) => match State::parse(&state) {
                    Some(s) if s.is_final() => Rechecked::Final(s),
                    _ => {
                        tx.execute(
                            "UPDATE charges SET next_check_at = ?2 WHERE charge_id = ?1",
                            params![id.as_str(), now],
                        )
                        .map_err(err)?;
                        Rechecked::Due { was }
                    }
                },
            };
            done.push(outcome);
        }
        if done.contains(&Rechecked::Unknown) {
            tx.rollback().map_err(err)?;
        } else {
            tx.commit().map_err(err)?;
        }
        Ok(done)
    }

    /// Makes every open charge that is no longer checked due at `now`; returns their ids.
    pub fn recheck_unchecked(&mut self, now: DateTime<Utc>) -> Result<Vec<String>, LedgerError> {
        let mut stmt = self
            .conn
            .prepare(
                "UPDATE charges SET next_check_at = ?1
                 WHERE state IN ('pending', 'awaiting') AND next_check_at IS NULL
                 RETURNING charge_id",
            )
            .map_err(|e| self.err(e))?;
        let ids = stmt
            .query_map([ts(now)], |r| r.get::<_, String>(0))
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(|e| self.err(e))?;
        let mut ids = ids;
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
        let mut stmt = self
            .conn
            .prepare(
                "SELECT charge_id, store_id, origin, state, provider_status, requested_amount,
                        requested_currency, charged_amount, charged_currency, amount_mismatch,
                        mismatch_detail, payment_number, konbini, expires_at, created_at,
                        updated_at, order_ref, paid_at
                 FROM charges
                 WHERE (?1 IS NULL OR state = ?1)
                   AND (?2 IS NULL OR updated_at >= ?2)
                   AND (?3 IS NULL OR updated_at < ?3)
                 ORDER BY updated_at, charge_id",
            )
            .map_err(|e| self.err(e))?;
        let mut rows = stmt
            .query(params![
                filter.state.map(State::as_str),
                filter.since.map(ts),
                filter.until.map(ts)
            ])
            .map_err(|e| self.err(e))?;
        while let Some(r) = rows.next().map_err(|e| self.err(e))? {
            let row = (|| {
                Ok::<_, rusqlite::Error>(ExportRow {
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
            })()
            .map_err(|e| self.err(e))?;
            if let Err(e) = each(&row) {
                return Ok(Err(e));
            }
        }
        Ok(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger() -> (tempfile::TempDir, Ledger) {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open(&dir.path().join("l.db"), Duration::from_secs(1)).unwrap();
        (dir, l)
    }

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
