//! The ledger at a glance, as `status` shows it and the metrics report it: charges per
//! state and currency, the charges that need a human, the last run, pass and failure.
//! Read in one snapshot (a WAL reader), so the figures agree with each other.

use chrono::{DateTime, Utc};

use super::{Ledger, LedgerError, RunRow, Timestamp, ts};
use crate::domain::{Outcome, State};

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
    /// Charges whose `state` is none of the four (written with the schema's checks off):
    /// counted here rather than dropped, so the figures add up to the rows there are.
    pub invalid_state: u64,
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

    /// Every charge row: the four states and the invalid ones.
    pub fn total(&self) -> u64 {
        self.by_state.iter().map(|t| t.count).sum::<u64>() + self.invalid_state
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

/// The open charges and the due backlog at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backlog {
    /// Charges with a next check.
    pub open: u64,
    /// Of them, due at or before the moment.
    pub due: u64,
    /// The earliest `next_check_at` among the due ones: how long the backlog has waited.
    pub oldest_due: Option<DateTime<Utc>>,
}

impl Ledger {
    /// The open charges and the due backlog at `now`, in one scan.
    pub fn backlog(&self, now: DateTime<Utc>) -> Result<Backlog, LedgerError> {
        let (open, due, oldest): (i64, f64, Option<Timestamp>) = self.sql(|c| {
            c.query_row(
                "SELECT count(*), total(next_check_at <= ?1), min(next_check_at)
                 FROM charges WHERE next_check_at IS NOT NULL",
                [Timestamp::new(now)],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
        })?;
        let due = due as u64;
        Ok(Backlog {
            open: open.max(0) as u64,
            due,
            oldest_due: oldest.filter(|_| due > 0).map(Timestamp::to_datetime),
        })
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
        let rows: Vec<(String, String, i64, i64)> = self.sql(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT state, requested_currency, count(*), coalesce(sum(requested_amount), 0)
                 FROM charges GROUP BY state, requested_currency ORDER BY state, requested_currency",
            )?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
            rows.collect()
        })?;
        let mut by_state = Vec::new();
        let mut invalid_state = 0;
        for (state, currency, count, requested_amount) in rows {
            let count = count.max(0) as u64;
            match State::parse(&state) {
                Some(state) => by_state.push(StateTotal {
                    state,
                    currency,
                    count,
                    requested_amount,
                }),
                None => invalid_state += count,
            }
        }
        by_state.sort_by_key(|t| {
            (
                State::ALL.iter().position(|s| *s == t.state),
                t.currency.clone(),
            )
        });
        let count = |sql: &str, with_now: bool| -> Result<u64, LedgerError> {
            let n: i64 = self.sql(|c| {
                let mut stmt = c.prepare_cached(sql)?;
                if with_now {
                    stmt.query_row([&now], |r| r.get(0))
                } else {
                    stmt.query_row([], |r| r.get(0))
                }
            })?;
            Ok(n.max(0) as u64)
        };
        Ok(Figures {
            by_state,
            invalid_state,
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
}
