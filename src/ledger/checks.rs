//! Writing check results: each charge's new values and the events of its change (exactly
//! one `transition` row per change of state, as the contract says) in one transaction,
//! and only if the row is still the version the check read, so an operator's edit made
//! meanwhile is never overwritten. Rows that cannot be checked are recorded once.

use chrono::{DateTime, Utc};
use rusqlite::{Connection, params};

use super::error::describe;
use super::{BadRow, DueCharge, Ledger, LedgerError, ShopFacts, ts};
use crate::domain::{Counts, Decision, NewEvent, State};

/// One decided check, ready to be written.
#[derive(Debug, Clone)]
pub struct CheckResult {
    pub charge: DueCharge,
    pub decision: Decision,
    pub checked_at: DateTime<Utc>,
    /// What the answer says in the shop's words; `None` without an answer (the stored
    /// values stay).
    pub shop: Option<ShopFacts>,
}

/// What [`Ledger::apply`] did.
#[derive(Debug, Default)]
pub struct Applied {
    pub counts: Counts,
    /// Results skipped because the row changed since it was read.
    pub stale: u64,
    /// Per input result: whether it was written.
    pub written: Vec<bool>,
}

impl Applied {
    fn record(&mut self, r: &CheckResult, written: rusqlite::Result<bool>) {
        match written {
            Ok(true) => {
                self.counts.checked += 1;
                if r.decision.transition().is_some() {
                    self.counts.transitions += 1;
                }
                if r.decision.new_mismatch() {
                    self.counts.mismatches += 1;
                }
                if r.decision.after.last_error.is_some() {
                    self.counts.errors += 1;
                }
                self.written.push(true);
            }
            // Changed by someone else since we read it: the result is stale.
            Ok(false) => {
                self.stale += 1;
                self.written.push(false);
            }
            Err(e) => {
                tracing::warn!(charge_id = %r.charge.charge_id, error = %describe(&e), "cannot write check result");
                self.counts.errors += 1;
                self.written.push(false);
            }
        }
    }
}

impl Ledger {
    /// Writes a group of results in one transaction: a crash leaves every charge wholly
    /// before or wholly after its check. Also advances the run's counters, so an
    /// interrupted run shows how far it got.
    ///
    /// The group is first written plainly. Should one charge's write fail (a constraint
    /// an operator's edit broke, say), the transaction is rolled back and the group
    /// written again with each charge in its own savepoint, so that one charge that cannot
    /// be written does not hold back the others. Savepoints cost a statement each, which
    /// is why they are the fallback and not the rule.
    pub fn apply(&mut self, run_id: i64, results: &[CheckResult]) -> Result<Applied, LedgerError> {
        let plain = self.transact(|tx| {
            let applied = write_group(tx, run_id, results)?;
            let commit = applied.is_some();
            Ok((applied, commit))
        })?;
        match plain {
            Some(applied) => Ok(applied),
            // With savepoints every failed charge is contained: never `None`.
            None => self.write(|tx| write_group_savepoints(tx, run_id, results)),
        }
    }

    /// Records that a due row could not be checked, without touching the row itself (an
    /// update would trip the very constraints it breaks). The `invalid_row` event is
    /// written once per problem, not on every pass; the run still counts it as an error.
    pub fn record_bad_row(
        &self,
        run_id: i64,
        bad: &BadRow,
        now: DateTime<Utc>,
    ) -> Result<(), LedgerError> {
        self.sql(|c| {
            c.execute(
                "INSERT INTO charge_events (charge_id, at, kind, detail, run_id)
                 SELECT ?1, ?2, 'invalid_row', ?3, ?4
                 WHERE NOT EXISTS (SELECT 1 FROM charge_events
                                   WHERE charge_id = ?1 AND kind = 'invalid_row' AND detail = ?3)",
                params![bad.charge_id, ts(now), bad.problem, run_id],
            )?;
            c.execute(
                "UPDATE runs SET errors = errors + 1 WHERE id = ?1",
                params![run_id],
            )
        })?;
        Ok(())
    }
}

/// The group written plainly, with its statements prepared once (looking them up in the
/// statement cache for every charge costs a hash of their text each time). `None` when a
/// charge failed: the caller then rolls back all of it.
fn write_group(
    tx: &Connection,
    run_id: i64,
    results: &[CheckResult],
) -> rusqlite::Result<Option<Applied>> {
    let mut applied = Applied::default();
    let mut w = Writes::prepare(tx)?;
    for r in results {
        match w.write(run_id, r) {
            Err(_) => return Ok(None),
            written => applied.record(r, written),
        }
    }
    drop(w);
    add_run_counts(tx, run_id, &applied.counts)?;
    Ok(Some(applied))
}

/// The group written with each charge in its own savepoint.
fn write_group_savepoints(
    tx: &mut rusqlite::Transaction<'_>,
    run_id: i64,
    results: &[CheckResult],
) -> rusqlite::Result<Applied> {
    let mut applied = Applied::default();
    for r in results {
        let sp = tx.savepoint()?;
        let w = Writes::prepare(&sp).and_then(|mut w| w.write(run_id, r));
        if matches!(w, Ok(true)) {
            sp.commit()?;
        }
        applied.record(r, w);
    }
    add_run_counts(tx, run_id, &applied.counts)?;
    Ok(applied)
}

fn add_run_counts(c: &Connection, run_id: i64, counts: &Counts) -> rusqlite::Result<()> {
    c.execute(
        "UPDATE runs SET checked = checked + ?2, transitions = transitions + ?3,
                mismatches = mismatches + ?4, errors = errors + ?5
         WHERE id = ?1",
        params![
            run_id,
            counts.checked,
            counts.transitions,
            counts.mismatches,
            counts.errors
        ],
    )?;
    Ok(())
}

/// The two statements that write one result, prepared on one connection.
struct Writes<'c> {
    conn: &'c Connection,
    update: rusqlite::CachedStatement<'c>,
    insert: rusqlite::CachedStatement<'c>,
}

impl<'c> Writes<'c> {
    fn prepare(conn: &'c Connection) -> rusqlite::Result<Self> {
        Ok(Writes {
            conn,
            update: conn.prepare_cached(
                "UPDATE charges SET state = ?1, provider_status = ?2, charged_amount = ?3,
                        charged_currency = ?4, amount_mismatch = ?5, mismatch_detail = ?6,
                        payment_number = ?7, payment_url = ?8, next_check_at = ?9,
                        last_checked_at = ?10, last_error = ?11, consecutive_errors = ?12,
                        not_found_count = ?13, updated_at = ?10,
                        metadata = CASE WHEN ?17 THEN ?18 ELSE metadata END,
                        order_ref = coalesce(order_ref, ?19),
                        paid_at = CASE WHEN ?1 = 'successful' THEN coalesce(paid_at, ?10) ELSE paid_at END
                 WHERE charge_id = ?14 AND state = ?15 AND updated_at = ?16",
            )?,
            insert: conn.prepare_cached(
                "INSERT INTO charge_events (charge_id, at, kind, from_state, to_state, provider_status, detail, run_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?,
        })
    }

    /// Writes one result. `Ok(false)` when the row moved on since it was read.
    fn write(&mut self, run_id: i64, r: &CheckResult) -> rusqlite::Result<bool> {
        let t = &r.decision.after;
        let now = ts(r.checked_at);
        let changed = self.update.execute(params![
            t.state.as_str(),
            t.provider_status,
            t.charged_amount,
            t.charged_currency,
            t.amount_mismatch as i64,
            t.mismatch_detail,
            t.payment_number,
            t.payment_url,
            r.decision.next_check_at.map(ts),
            now,
            t.last_error,
            t.consecutive_errors,
            t.not_found_count,
            r.charge.charge_id.as_str(),
            r.charge.tracked.state.as_str(),
            r.charge.updated_at,
            r.shop.is_some(),
            r.shop.as_ref().and_then(|f| f.metadata.as_deref()),
            r.shop.as_ref().and_then(|f| f.order_ref.as_deref()),
        ])?;
        if changed == 0 {
            return Ok(false);
        }
        for NewEvent {
            kind,
            from_state,
            to_state,
            provider_status,
            detail,
        } in &r.decision.events
        {
            self.insert.execute(params![
                r.charge.charge_id.as_str(),
                now,
                kind.as_str(),
                from_state.map(State::as_str),
                to_state.map(State::as_str),
                provider_status,
                detail,
                run_id
            ])?;
        }
        if let Some(facts) = &r.shop {
            super::outbox::record_shop_facts(
                self.conn,
                r.charge.charge_id.as_str(),
                &now,
                run_id,
                facts,
            )?;
        }
        Ok(true)
    }
}
