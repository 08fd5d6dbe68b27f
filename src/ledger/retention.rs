//! The ledger side of `[retention]`: the rows that may be pruned, found and deleted a
//! bounded number at a time, and the space they leave handed back.
//!
//! What may go, and nothing else:
//! - `charge_events` of kind `webhook` (hints) older than the cutoff, by `at`. Every
//!   other kind is a fact of the charge and stays; the `charge_events_keep_facts`
//!   trigger refuses to delete one, and the statements here never even name another
//!   kind.
//! - finished `runs` rows, by `finished_at`: never a `running` one, never one that
//!   carries a pause still ahead (`resume_at`), never the newest. `charge_events.run_id`
//!   names a run without a foreign key (the events are append-only and cannot be
//!   updated to forget it), so an old event may name a run whose row was pruned; the
//!   event keeps its own time and detail.
//! - delivered `deliveries` rows, by `delivered_at`. A pending delivery needs its own
//!   row, the payload of its event (`event_payloads`, also the feed's, never pruned) and
//!   the other pending rows of its charge (which keep its order); no pending row is ever
//!   deleted, so none of that goes.
//!
//! A step is two statements: the candidates are read first (a WAL read, which never
//! holds a writer up), then deleted by id in one short `IMMEDIATE` transaction that
//! checks the conditions again, so a row that changed in between (a delivery replayed)
//! stays. Only the delete holds the write lock, and it is bounded twice: by the rows
//! read, and by time: the ids go in chunks of [`CHUNK_ROWS`], and the transaction
//! commits after the chunk that takes it past the step's time budget, leaving the rest
//! for the next step. A writer waiting for the lock therefore waits for about that
//! budget, whatever the rows cost on this machine (cold pages, a slow disk).

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};

use super::{Ledger, LedgerError, Timestamp, ts};

/// The kinds of prunable rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Prunable {
    WebhookEvents,
    Runs,
    Deliveries,
}

impl Prunable {
    pub const ALL: [Prunable; 3] = [
        Prunable::WebhookEvents,
        Prunable::Runs,
        Prunable::Deliveries,
    ];

    /// The table the rows are in (the metrics' `table` label).
    pub fn table(self) -> &'static str {
        match self {
            Prunable::WebhookEvents => "charge_events",
            Prunable::Runs => "runs",
            Prunable::Deliveries => "deliveries",
        }
    }

    /// The candidates older than `?1`, oldest first, at most `?3`; `?2` is now.
    fn candidates_sql(self) -> &'static str {
        match self {
            Prunable::WebhookEvents => {
                "SELECT id FROM charge_events WHERE kind = 'webhook' AND at < ?1
                 ORDER BY kind, at LIMIT ?3"
            }
            Prunable::Runs => {
                "SELECT id FROM runs
                 WHERE outcome <> 'running' AND finished_at IS NOT NULL AND finished_at < ?1
                   AND (resume_at IS NULL OR resume_at < ?2)
                   AND id < (SELECT max(id) FROM runs)
                 ORDER BY id LIMIT ?3"
            }
            Prunable::Deliveries => {
                "SELECT rowid FROM deliveries
                 WHERE delivered_at IS NOT NULL AND delivered_at < ?1
                 ORDER BY rowid LIMIT ?3"
            }
        }
    }

    /// Deletes the ids in the JSON array `?3` that still meet the conditions. The unary
    /// `+` keeps the planner from walking an index on those columns (every old row)
    /// instead of looking the ids up: the delete must cost its ids, not the backlog.
    fn delete_sql(self) -> &'static str {
        match self {
            Prunable::WebhookEvents => {
                "DELETE FROM charge_events
                 WHERE id IN (SELECT value FROM json_each(?3)) AND +kind = 'webhook' AND +at < ?1"
            }
            Prunable::Runs => {
                "DELETE FROM runs
                 WHERE id IN (SELECT value FROM json_each(?3))
                   AND +outcome <> 'running' AND +finished_at IS NOT NULL AND +finished_at < ?1
                   AND (+resume_at IS NULL OR +resume_at < ?2)"
            }
            Prunable::Deliveries => {
                "DELETE FROM deliveries
                 WHERE rowid IN (SELECT value FROM json_each(?3))
                   AND +delivered_at IS NOT NULL AND +delivered_at < ?1"
            }
        }
    }
}

/// The `meta` key of the time the last prune round ended.
const PRUNED_AT: &str = "retention_pruned_at";

/// Ids deleted by one statement of a step: small enough that a chunk's cost is a
/// fraction of the step's time budget, large enough that a statement's own overhead is
/// a small share of it.
pub const CHUNK_ROWS: usize = 25;

/// What one prune step did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Rows deleted.
    pub rows: usize,
    /// Whether rows older than the cutoff may be left: the step read as many candidates
    /// as it could take, or stopped at its time budget before deleting them all.
    pub more: bool,
}

impl Ledger {
    /// One step: deletes at most `limit` rows of `what` older than `cutoff`, and stops
    /// committing further chunks once its transaction has run for `budget`.
    pub fn prune_step(
        &mut self,
        what: Prunable,
        cutoff: Timestamp,
        now: DateTime<Utc>,
        limit: usize,
        budget: Duration,
    ) -> Result<Pruned, LedgerError> {
        let now = ts(now);
        let ids: Vec<i64> = self.sql(|c| {
            c.prepare_cached(what.candidates_sql())?
                .query_map(params![cutoff, now, limit as i64], |r| r.get(0))?
                .collect()
        })?;
        if ids.is_empty() {
            return Ok(Pruned::default());
        }
        let full = ids.len() >= limit;
        self.write(|tx| {
            // Timed from the lock taken: that is what a waiting writer waits for.
            let began = Instant::now();
            let mut stmt = tx.prepare_cached(what.delete_sql())?;
            let (mut rows, mut done) = (0, 0);
            for chunk in ids.chunks(CHUNK_ROWS) {
                let chunk = serde_json::to_string(chunk).unwrap_or_default();
                rows += stmt.execute(params![cutoff, now, chunk])?;
                done += 1;
                if began.elapsed() >= budget {
                    break;
                }
            }
            let stopped = done * CHUNK_ROWS < ids.len();
            Ok(Pruned {
                rows,
                more: full || stopped,
            })
        })
    }

    /// Hands up to `pages` free pages back to the file system when the ledger was
    /// created with `auto_vacuum = INCREMENTAL`; otherwise does nothing (SQLite reuses
    /// the free pages for new rows anyway). Returns the pages freed.
    pub fn reclaim_free_pages(&mut self, pages: u32) -> Result<u64, LedgerError> {
        let (mode, before): (i64, i64) = self.sql(|c| {
            let mode = c.query_row("PRAGMA auto_vacuum", [], |r| r.get(0))?;
            let free = c.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
            Ok((mode, free))
        })?;
        // 2: INCREMENTAL.
        if mode != 2 || before == 0 {
            return Ok(0);
        }
        let after: i64 = self.sql(|c| {
            // The pragma frees one page per step of its statement: step it to the end.
            let mut stmt = c.prepare(&format!("PRAGMA incremental_vacuum({pages})"))?;
            let mut rows = stmt.query([])?;
            while rows.next()?.is_some() {}
            drop(rows);
            c.query_row("PRAGMA freelist_count", [], |r| r.get(0))
        })?;
        Ok(before.saturating_sub(after).max(0) as u64)
    }

    /// When the last prune round ended, as [`Ledger::set_pruned_at`] recorded it.
    pub fn pruned_at(&self) -> Result<Option<DateTime<Utc>>, LedgerError> {
        let at: Option<String> = self.sql(|c| {
            c.query_row("SELECT value FROM meta WHERE key = ?1", [PRUNED_AT], |r| {
                r.get(0)
            })
            .optional()
        })?;
        Ok(at
            .and_then(|t| Timestamp::parse(&t))
            .map(Timestamp::to_datetime))
    }

    /// Records that a prune round ended at `at`.
    pub fn set_pruned_at(&self, at: DateTime<Utc>) -> Result<(), LedgerError> {
        self.sql(|c| {
            c.execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![PRUNED_AT, ts(at)],
            )
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chrono::{TimeZone, Utc};

    use super::*;
    use crate::ledger::test_ledger;

    /// A budget no step of these small tests reaches.
    const LONG: Duration = Duration::from_secs(60);

    fn count(l: &Ledger, sql: &str) -> i64 {
        l.conn().query_row(sql, [], |r| r.get(0)).unwrap()
    }

    #[test]
    fn only_old_hints_go_a_step_at_a_time_and_facts_are_never_named() {
        let (_d, mut l) = test_ledger();
        l.conn()
            .execute_batch(
                "INSERT INTO charge_events (charge_id, at, kind) VALUES
                   ('c', '2026-01-01T00:00:00.000Z', 'webhook'),
                   ('c', '2026-01-02T00:00:00.000Z', 'webhook'),
                   ('c', '2026-01-03T00:00:00.000Z', 'webhook'),
                   ('c', '2026-01-01T00:00:00.000Z', 'transition'),
                   ('c', '2026-01-01T00:00:00.000Z', 'mismatch'),
                   ('c', '2026-03-01T00:00:00.000Z', 'webhook');",
            )
            .unwrap();
        let now = Utc.with_ymd_and_hms(2026, 3, 2, 0, 0, 0).unwrap();
        let cutoff = Timestamp::before(now, Duration::from_secs(30 * 86_400));
        assert_eq!(
            l.prune_step(Prunable::WebhookEvents, cutoff, now, 2, LONG)
                .unwrap(),
            Pruned {
                rows: 2,
                more: true
            }
        );
        assert_eq!(
            l.prune_step(Prunable::WebhookEvents, cutoff, now, 2, LONG)
                .unwrap(),
            Pruned {
                rows: 1,
                more: false
            }
        );
        assert_eq!(
            l.prune_step(Prunable::WebhookEvents, cutoff, now, 2, LONG)
                .unwrap(),
            Pruned::default()
        );
        assert_eq!(count(&l, "SELECT count(*) FROM charge_events"), 3);
        assert_eq!(
            count(
                &l,
                "SELECT count(*) FROM charge_events WHERE kind = 'webhook'"
            ),
            1,
            "the recent hint stays"
        );
        for what in Prunable::ALL {
            assert!(!what.candidates_sql().contains("transition"));
            assert!(!what.delete_sql().contains("transition"));
        }
    }

    #[test]
    fn running_paused_and_newest_runs_stay() {
        let (_d, mut l) = test_ledger();
        l.conn()
            .execute_batch(
                "INSERT INTO runs (id, trigger, started_at, finished_at, outcome, resume_at) VALUES
                   (1, 'schedule', '2026-01-01T00:00:00.000Z', '2026-01-01T00:00:01.000Z', 'ok', NULL),
                   (2, 'schedule', '2026-01-01T00:00:00.000Z', NULL, 'running', NULL),
                   (3, 'schedule', '2026-01-01T00:00:00.000Z', '2026-01-01T00:00:01.000Z', 'rate_limited', '2026-12-01T00:00:00.000Z'),
                   (4, 'schedule', '2026-01-01T00:00:00.000Z', '2026-01-01T00:00:01.000Z', 'failed', NULL),
                   (5, 'schedule', '2026-01-01T00:00:00.000Z', '2026-01-01T00:00:01.000Z', 'ok', NULL);",
            )
            .unwrap();
        let now = Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).unwrap();
        let cutoff = Timestamp::before(now, Duration::from_secs(90 * 86_400));
        assert_eq!(
            l.prune_step(Prunable::Runs, cutoff, now, 100, LONG)
                .unwrap()
                .rows,
            2
        );
        let left: Vec<i64> = l
            .conn()
            .prepare("SELECT id FROM runs ORDER BY id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(left, vec![2, 3, 5]);
    }

    #[test]
    fn only_delivered_deliveries_go_and_payloads_stay() {
        let (_d, mut l) = test_ledger();
        l.conn()
            .execute_batch(
                "INSERT INTO event_payloads (event_id, type, charge_id, at, payload) VALUES
                   (1, 'charge.paid', 'c', '2026-01-01T00:00:00.000Z', '{}'),
                   (2, 'charge.paid', 'd', '2026-01-01T00:00:00.000Z', '{}');
                 INSERT INTO deliveries (endpoint, event_id, charge_id, created_at, next_attempt_at, delivered_at) VALUES
                   ('shop', 1, 'c', '2026-01-01T00:00:00.000Z', NULL, '2026-01-01T00:00:05.000Z'),
                   ('shop', 2, 'd', '2026-01-01T00:00:00.000Z', '2026-01-01T00:00:00.000Z', NULL),
                   ('crm', 1, 'c', '2026-01-01T00:00:00.000Z', NULL, '2026-05-30T00:00:05.000Z');",
            )
            .unwrap();
        let now = Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).unwrap();
        let cutoff = Timestamp::before(now, Duration::from_secs(30 * 86_400));
        assert_eq!(
            l.prune_step(Prunable::Deliveries, cutoff, now, 100, LONG)
                .unwrap()
                .rows,
            1
        );
        assert_eq!(
            count(
                &l,
                "SELECT count(*) FROM deliveries WHERE delivered_at IS NULL"
            ),
            1
        );
        assert_eq!(count(&l, "SELECT count(*) FROM deliveries"), 2);
        assert_eq!(count(&l, "SELECT count(*) FROM event_payloads"), 2);
    }

    #[test]
    fn a_step_stops_at_its_time_budget_and_says_more_is_left() {
        let (_d, mut l) = test_ledger();
        l.conn()
            .execute_batch(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100)
                 INSERT INTO charge_events (charge_id, at, kind) SELECT 'c', '2026-01-01T00:00:00.000Z', 'webhook' FROM n;",
            )
            .unwrap();
        let now = Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).unwrap();
        let cutoff = Timestamp::before(now, Duration::from_secs(86_400));
        // A zero budget: one chunk, then the commit.
        assert_eq!(
            l.prune_step(Prunable::WebhookEvents, cutoff, now, 1000, Duration::ZERO)
                .unwrap(),
            Pruned {
                rows: CHUNK_ROWS,
                more: true
            }
        );
        assert_eq!(
            l.prune_step(Prunable::WebhookEvents, cutoff, now, 1000, LONG)
                .unwrap(),
            Pruned {
                rows: 75,
                more: false
            }
        );
    }

    #[test]
    fn a_new_ledger_hands_freed_pages_back() {
        let (_d, mut l) = test_ledger();
        assert_eq!(count(&l, "PRAGMA auto_vacuum"), 2, "incremental");
        l.conn()
            .execute_batch(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000)
                 INSERT INTO charge_events (charge_id, at, kind, detail)
                 SELECT 'c', '2026-01-01T00:00:00.000Z', 'webhook', printf('%.500c', 'x') FROM n;",
            )
            .unwrap();
        let now = Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).unwrap();
        let cutoff = Timestamp::before(now, Duration::from_secs(86_400));
        assert_eq!(
            l.prune_step(Prunable::WebhookEvents, cutoff, now, 5000, LONG)
                .unwrap()
                .rows,
            3000
        );
        let free = count(&l, "PRAGMA freelist_count");
        assert!(free > 300, "{free}");
        assert_eq!(l.reclaim_free_pages(100).unwrap(), 100);
        assert_eq!(count(&l, "PRAGMA freelist_count"), free - 100);
    }

    #[test]
    fn the_last_round_is_remembered() {
        let (_d, l) = test_ledger();
        assert_eq!(l.pruned_at().unwrap(), None);
        let at = Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).unwrap();
        l.set_pruned_at(at).unwrap();
        l.set_pruned_at(at).unwrap();
        assert_eq!(l.pruned_at().unwrap(), Some(at));
    }
}
