//! The `runs` table: one row per pass or `check` run. A run is opened (`running`), its
//! counts grow as its results commit, and it is finished with an outcome; a process that
//! died leaves it `running` until the next pass under the lock marks it `interrupted`.
//! `runs.resume_at` records a pause UnivaPay asked for, which every later process honours.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use super::{Ledger, LedgerError, Timestamp, ts};
use crate::domain::{Counts, Outcome, Trigger};

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
    /// Marks runs left `running` by a process that died as `interrupted`. Call only while
    /// holding the pass lock, when no other pass can be running.
    pub fn close_abandoned_runs(&self) -> Result<usize, LedgerError> {
        self.sql(|c| {
            c.execute(
                "UPDATE runs SET outcome = 'interrupted',
                        detail = coalesce(detail || '; ', '') || 'process ended before the pass finished'
                 WHERE outcome = 'running'",
                [],
            )
        })
    }

    /// Inserts the `runs` row for a new pass.
    pub fn begin_run(&self, trigger: Trigger, now: DateTime<Utc>) -> Result<i64, LedgerError> {
        self.sql(|c| {
            c.execute(
                "INSERT INTO runs (trigger, started_at, pid) VALUES (?1, ?2, ?3)",
                params![trigger.as_str(), ts(now), std::process::id()],
            )?;
            Ok(c.last_insert_rowid())
        })
    }

    /// Records how a pass ended.
    pub fn finish_run(
        &self,
        run_id: i64,
        outcome: Outcome,
        counts: Counts,
        detail: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(), LedgerError> {
        self.sql(|c| {
            c.execute(
                "UPDATE runs SET outcome = ?2, finished_at = ?3, checked = ?4, transitions = ?5,
                        mismatches = ?6, errors = ?7, detail = ?8
                 WHERE id = ?1",
                params![
                    run_id,
                    outcome.as_str(),
                    ts(now),
                    counts.checked,
                    counts.transitions,
                    counts.mismatches,
                    counts.errors,
                    detail
                ],
            )
        })?;
        Ok(())
    }

    /// Marks a run `failed`, keeping the counts its commits already added.
    pub fn fail_run(
        &self,
        run_id: i64,
        detail: &str,
        now: DateTime<Utc>,
    ) -> Result<(), LedgerError> {
        self.sql(|c| {
            c.execute(
                "UPDATE runs SET outcome = 'failed', finished_at = ?2, detail = ?3 WHERE id = ?1",
                params![run_id, ts(now), detail],
            )
        })?;
        Ok(())
    }

    /// The latest `runs.resume_at`: until when UnivaPay asked that nothing be sent. An
    /// operator clears it with `UPDATE runs SET resume_at = NULL`.
    pub fn resume_at(&self) -> Result<Option<DateTime<Utc>>, LedgerError> {
        let at: Option<String> =
            self.sql(|c| c.query_row("SELECT max(resume_at) FROM runs", [], |r| r.get(0)))?;
        // Written by us in RFC 3339; anything else (a hand edit) is no pause.
        Ok(at
            .and_then(|t| Timestamp::parse(&t))
            .map(Timestamp::to_datetime))
    }

    /// Records until when UnivaPay asked that nothing be sent (`runs.resume_at`).
    pub fn set_resume_at(
        &self,
        run_id: i64,
        resume_at: impl Into<Timestamp>,
    ) -> Result<(), LedgerError> {
        let at = resume_at.into();
        self.sql(|c| {
            c.execute(
                "UPDATE runs SET resume_at = ?2 WHERE id = ?1",
                params![run_id, at],
            )
        })?;
        Ok(())
    }

    /// Records the budget figures of a run: the charges due when it began and the factor
    /// the recheck intervals were stretched by.
    pub fn record_budget(&self, run_id: i64, due: u64, stretch: f64) -> Result<(), LedgerError> {
        self.sql(|c| {
            c.execute(
                "UPDATE runs SET due = ?2, stretch = ?3 WHERE id = ?1",
                params![run_id, due as i64, stretch],
            )
        })?;
        Ok(())
    }

    /// The largest factor any run stretched the recheck intervals by (1 when none did).
    pub fn max_stretch(&self) -> Result<f64, LedgerError> {
        self.sql(|c| {
            c.query_row("SELECT coalesce(max(stretch), 1) FROM runs", [], |r| {
                r.get(0)
            })
        })
    }

    /// The latest `runs` row matching `condition` (a fixed SQL expression, never input).
    pub(super) fn run_where(&self, condition: &str) -> Result<Option<RunRow>, LedgerError> {
        self.sql(|c| {
            c.prepare_cached(&format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE {condition} ORDER BY id DESC LIMIT 1"
            ))?
            .query_row([], row_to_run)
            .optional()
        })
    }

    /// The run `run_id`, if there is one.
    #[cfg(test)]
    fn run(&self, run_id: i64) -> Result<Option<RunRow>, LedgerError> {
        self.sql(|c| {
            c.prepare_cached(&format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1"))?
                .query_row([run_id], row_to_run)
                .optional()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_ledger;
    use super::*;

    #[test]
    fn budget_figures_and_pauses_are_recorded() {
        let (_d, l) = test_ledger();
        let run = l.begin_run(Trigger::Once, Utc::now()).unwrap();
        l.record_budget(run, 1234, 1.5).unwrap();
        let resume: DateTime<Utc> = "2026-11-27T10:00:00.5Z".parse().unwrap();
        l.set_resume_at(run, resume).unwrap();
        let row = l.run(run).unwrap().unwrap();
        assert_eq!((row.due, row.stretch), (Some(1234), Some(1.5)));
        assert_eq!(row.resume_at.as_deref(), Some("2026-11-27T10:00:00.500Z"));
        assert_eq!(l.resume_at().unwrap(), Some(resume));
    }
}
