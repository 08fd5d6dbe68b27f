//! The SQLite ledger: opening and migrating the database, streaming due charges, and
//! writing check results, each charge's change in one transaction.
//!
//! Everything here is blocking (rusqlite); the pass calls it from dedicated threads, never
//! from async tasks.

mod hints;
mod schema;

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{Connection, OpenFlags, TransactionBehavior, params};

use crate::domain::text::one_line;
use crate::domain::{ChargeId, Currency, Decision, NewEvent, Requested, State, StoreId, Tracked};

// The run types live in `domain`; they are part of what the ledger stores.
pub use crate::domain::{Counts, Outcome, Trigger};

pub use hints::{HintRow, HintTarget, WEBHOOK_EVENT};
pub use schema::NOW_SQL;

/// Formats a timestamp the way every ledger column stores it.
pub fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Failures to open or prepare the database. Each names the file.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("cannot open database {path}: {message}")]
    Open { path: PathBuf, message: String },
    #[error("cannot migrate database {path}: {message}")]
    Migrate { path: PathBuf, message: String },
    #[error("database {path}: {message}")]
    Sqlite { path: PathBuf, message: String },
}

fn sqlite_message(e: &rusqlite::Error) -> String {
    use rusqlite::ErrorCode;
    let (code, msg) = match e {
        rusqlite::Error::SqliteFailure(f, Some(msg)) => (f.code, msg.as_str()),
        // Its Display quotes the whole statement (a migration is pages of SQL); the
        // message alone says what went wrong, on one line.
        rusqlite::Error::SqlInputError { error, msg, .. } => (error.code, msg.as_str()),
        other => return one_line(&other.to_string()),
    };
    let hint = match code {
        ErrorCode::DatabaseBusy => {
            ": another connection held the write lock for longer than database.busy_timeout"
        }
        ErrorCode::DiskFull | ErrorCode::SystemIoFailure => {
            ": writing failed (is the disk full, a file size limit reached, or the disk failing?)"
        }
        _ => "",
    };
    if code == ErrorCode::Unknown {
        // SQLITE_ERROR, the generic code: the message says it all.
        return format!("{msg}{hint}");
    }
    format!("{msg} ({code:?}){hint}")
}

/// Runs ledger work on tokio's blocking pool, so that rusqlite never blocks an async
/// worker thread. A panic in `f` becomes an error naming the database.
pub async fn blocking<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> Result<T, LedgerError> + Send + 'static,
) -> Result<T, LedgerError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(join_error(path, e)))
}

/// How [`with_ledger`] opens the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Open {
    /// Create it if missing and migrate it to the latest schema.
    Migrate,
    /// Open it as it is: for connections beside another of the same process that has
    /// already migrated it.
    Existing,
}

/// Opens the ledger on tokio's blocking pool and runs `f` with it there: the one way the
/// async code reaches SQLite.
pub async fn with_ledger<T: Send + 'static>(
    path: &Path,
    busy_timeout: Duration,
    open: Open,
    f: impl FnOnce(Ledger) -> Result<T, LedgerError> + Send + 'static,
) -> Result<T, LedgerError> {
    let owned = path.to_owned();
    blocking(path, move || {
        let ledger = match open {
            Open::Migrate => Ledger::open(&owned, busy_timeout)?,
            Open::Existing => Ledger::open_existing(&owned, busy_timeout)?,
        };
        f(ledger)
    })
    .await
}

/// The error for a database thread that ended without an answer (it panicked).
pub fn join_error(path: &Path, e: tokio::task::JoinError) -> LedgerError {
    LedgerError::Sqlite {
        path: path.to_owned(),
        message: format!("database worker stopped unexpectedly: {e}"),
    }
}

/// A due charge as read from the ledger.
#[derive(Debug, Clone)]
pub struct DueCharge {
    pub charge_id: ChargeId,
    pub store_id: StoreId,
    pub requested: Requested,
    pub tracked: Tracked,
    /// Where the keyset scan continues from.
    pub next_check_at: String,
    /// The row version; a result is written only if the row is still at this version.
    pub updated_at: String,
}

/// A due row that cannot be checked because a value in it is unusable.
#[derive(Debug, Clone)]
pub struct BadRow {
    pub charge_id: String,
    pub next_check_at: String,
    pub problem: String,
}

/// One item of the due stream.
pub type DueRow = Result<DueCharge, BadRow>;

/// One decided check, ready to be written.
#[derive(Debug, Clone)]
pub struct CheckResult {
    pub charge: DueCharge,
    pub decision: Decision,
    pub checked_at: DateTime<Utc>,
}

/// A connection to the ledger.
pub struct Ledger {
    conn: Connection,
    path: PathBuf,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger").field("path", &self.path).finish()
    }
}

impl Ledger {
    /// Opens (creating if needed) and migrates the database.
    pub fn open(path: &Path, busy_timeout: Duration) -> Result<Ledger, LedgerError> {
        let ledger = Self::connect(path, busy_timeout, true)?;
        let mut conn = ledger.conn;
        schema::migrations()
            .to_latest(&mut conn)
            .map_err(|e| LedgerError::Migrate {
                path: path.to_owned(),
                message: match &e {
                    rusqlite_migration::Error::RusqliteError { err, .. } => sqlite_message(err),
                    rusqlite_migration::Error::MigrationDefinition(
                        rusqlite_migration::MigrationDefinitionError::DatabaseTooFarAhead,
                    ) => "its schema is newer than this version of konbini-reconciler knows \
                          (PRAGMA user_version); run the newer version"
                        .to_owned(),
                    other => one_line(&other.to_string()),
                },
            })?;
        Ok(Ledger {
            conn,
            path: path.to_owned(),
        })
    }

    /// Opens an already migrated database without touching its schema (for readers that
    /// run beside a writer of the same process).
    pub fn open_existing(path: &Path, busy_timeout: Duration) -> Result<Ledger, LedgerError> {
        Self::connect(path, busy_timeout, false)
    }

    fn connect(path: &Path, busy_timeout: Duration, create: bool) -> Result<Ledger, LedgerError> {
        let open_err = |message: String| LedgerError::Open {
            path: path.to_owned(),
            message,
        };
        if let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
            && !parent.is_dir()
        {
            return Err(open_err(format!(
                "directory {} does not exist",
                parent.display()
            )));
        }
        let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI;
        if create {
            flags |= OpenFlags::SQLITE_OPEN_CREATE;
        }
        let conn =
            Connection::open_with_flags(path, flags).map_err(|e| open_err(sqlite_message(&e)))?;
        conn.busy_timeout(busy_timeout)
            .map_err(|e| open_err(sqlite_message(&e)))?;
        // The first statement that reads the file: a file that is not SQLite fails here.
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(|e| open_err(sqlite_message(&e)))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(open_err(format!(
                "cannot switch to WAL mode (journal_mode is {mode})"
            )));
        }
        // NORMAL in WAL mode survives a killed process intact; a power cut may lose the
        // last commits, which the next pass simply redoes (every check is re-runnable).
        conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;")
            .map_err(|e| open_err(sqlite_message(&e)))?;
        Ok(Ledger {
            conn,
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The connection, for tests and inspection.
    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    fn err(&self, e: rusqlite::Error) -> LedgerError {
        LedgerError::Sqlite {
            path: self.path.clone(),
            message: sqlite_message(&e),
        }
    }

    /// Marks runs left `running` by a process that died as `interrupted`. Call only while
    /// holding the pass lock, when no other pass can be running.
    pub fn close_abandoned_runs(&self) -> Result<usize, LedgerError> {
        self.conn
            .execute(
                "UPDATE runs SET outcome = 'interrupted',
                        detail = coalesce(detail || '; ', '') || 'process ended before the pass finished'
                 WHERE outcome = 'running'",
                [],
            )
            .map_err(|e| self.err(e))
    }

    /// Inserts the `runs` row for a new pass.
    pub fn begin_run(&self, trigger: Trigger, now: DateTime<Utc>) -> Result<i64, LedgerError> {
        self.conn
            .execute(
                "INSERT INTO runs (trigger, started_at, pid) VALUES (?1, ?2, ?3)",
                params![trigger.as_str(), ts(now), std::process::id()],
            )
            .map_err(|e| self.err(e))?;
        Ok(self.conn.last_insert_rowid())
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
        self.conn
            .execute(
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
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Marks a run `failed`, keeping the counts its commits already added.
    pub fn fail_run(
        &self,
        run_id: i64,
        detail: &str,
        now: DateTime<Utc>,
    ) -> Result<(), LedgerError> {
        self.conn
            .execute(
                "UPDATE runs SET outcome = 'failed', finished_at = ?2, detail = ?3 WHERE id = ?1",
                params![run_id, ts(now), detail],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Up to `limit` charges due at or before `cutoff`, in (`next_check_at`, `charge_id`)
    /// order, strictly after the keyset position `after`.
    pub fn due_batch(
        &self,
        cutoff: &str,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> Result<Vec<DueRow>, LedgerError> {
        let (after_at, after_id) = after.unwrap_or(("", ""));
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT charge_id, store_id, requested_amount, requested_currency, state,
                        provider_status, charged_amount, charged_currency, amount_mismatch,
                        mismatch_detail, payment_number, payment_url, last_error,
                        consecutive_errors, not_found_count, next_check_at, updated_at
                 FROM charges
                 WHERE next_check_at <= ?1 AND (next_check_at, charge_id) > (?2, ?3)
                 ORDER BY next_check_at, charge_id
                 LIMIT ?4",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(
                params![cutoff, after_at, after_id, limit as i64],
                row_to_due,
            )
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

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
        match self.apply_group(run_id, results, false)? {
            Some(applied) => Ok(applied),
            // With savepoints every failed charge is contained: never `None`.
            None => Ok(self.apply_group(run_id, results, true)?.unwrap_or_default()),
        }
    }

    /// One attempt of [`apply`](Self::apply). Without savepoints, `None` when a charge
    /// failed and the transaction was rolled back.
    fn apply_group(
        &mut self,
        run_id: i64,
        results: &[CheckResult],
        savepoints: bool,
    ) -> Result<Option<Applied>, LedgerError> {
        let path = self.path.clone();
        let err = |e: rusqlite::Error| LedgerError::Sqlite {
            path: path.clone(),
            message: sqlite_message(&e),
        };
        let mut applied = Applied::default();
        let mut tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        for r in results {
            let written = if savepoints {
                let sp = tx.savepoint().map_err(err)?;
                let w = write_one(&sp, run_id, r);
                if matches!(w, Ok(true)) {
                    sp.commit().map_err(err)?;
                }
                w
            } else {
                match write_one(&tx, run_id, r) {
                    Err(_) => return Ok(None),
                    w => w,
                }
            };
            applied.record(r, written);
        }
        tx.execute(
            "UPDATE runs SET checked = checked + ?2, transitions = transitions + ?3,
                    mismatches = mismatches + ?4, errors = errors + ?5
             WHERE id = ?1",
            params![
                run_id,
                applied.counts.checked,
                applied.counts.transitions,
                applied.counts.mismatches,
                applied.counts.errors
            ],
        )
        .map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(Some(applied))
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
        self.conn
            .execute(
                "INSERT INTO charge_events (charge_id, at, kind, detail, run_id)
                 SELECT ?1, ?2, 'invalid_row', ?3, ?4
                 WHERE NOT EXISTS (SELECT 1 FROM charge_events
                                   WHERE charge_id = ?1 AND kind = 'invalid_row' AND detail = ?3)",
                params![bad.charge_id, ts(now), bad.problem, run_id],
            )
            .map_err(|e| self.err(e))?;
        self.conn
            .execute(
                "UPDATE runs SET errors = errors + 1 WHERE id = ?1",
                params![run_id],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }
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
                tracing::warn!(charge_id = %r.charge.charge_id, error = %sqlite_message(&e), "cannot write check result");
                self.counts.errors += 1;
                self.written.push(false);
            }
        }
    }
}

fn row_to_due(r: &rusqlite::Row<'_>) -> rusqlite::Result<DueRow> {
    let charge_id: String = r.get(0)?;
    let next_check_at: String = r.get(15)?;
    let bad = |problem: String| BadRow {
        charge_id: charge_id.clone(),
        next_check_at: next_check_at.clone(),
        problem,
    };
    // Constraints keep bad values out; this guards against rows written with them off.
    let parsed = (|| -> Result<DueCharge, String> {
        let id = ChargeId::parse(charge_id.clone()).map_err(|e| format!("charge_id {e}"))?;
        let store: String = r.get(1).map_err(|e| format!("store_id: {e}"))?;
        let store_id = StoreId::parse(store).map_err(|e| format!("store_id {e}"))?;
        let amount: i64 = r.get(2).map_err(|e| format!("requested_amount: {e}"))?;
        if amount < 0 {
            return Err(format!("requested_amount {amount} is negative"));
        }
        let cur: String = r.get(3).map_err(|e| format!("requested_currency: {e}"))?;
        let currency = Currency::parse(&cur)
            .ok_or_else(|| format!("requested_currency {cur:?} is not a currency code"))?;
        let st: String = r.get(4).map_err(|e| format!("state: {e}"))?;
        let state = State::parse(&st).ok_or_else(|| format!("unknown state {st:?}"))?;
        let get_u32 = |i: usize| -> Result<u32, String> {
            let v: i64 = r.get(i).map_err(|e| e.to_string())?;
            Ok(u32::try_from(v).unwrap_or(0))
        };
        let tracked = Tracked {
            state,
            provider_status: r.get(5).map_err(|e| e.to_string())?,
            charged_amount: r.get(6).map_err(|e| e.to_string())?,
            charged_currency: r.get(7).map_err(|e| e.to_string())?,
            amount_mismatch: r.get::<_, i64>(8).map_err(|e| e.to_string())? != 0,
            mismatch_detail: r.get(9).map_err(|e| e.to_string())?,
            payment_number: r.get(10).map_err(|e| e.to_string())?,
            payment_url: r.get(11).map_err(|e| e.to_string())?,
            last_error: r.get(12).map_err(|e| e.to_string())?,
            consecutive_errors: get_u32(13)?,
            not_found_count: get_u32(14)?,
        };
        Ok(DueCharge {
            charge_id: id,
            store_id,
            requested: Requested { amount, currency },
            tracked,
            next_check_at: next_check_at.clone(),
            updated_at: r.get(16).map_err(|e| e.to_string())?,
        })
    })();
    Ok(parsed.map_err(bad))
}

/// Writes one result. `Ok(false)` when the row moved on since it was read.
fn write_one(conn: &Connection, run_id: i64, r: &CheckResult) -> rusqlite::Result<bool> {
    let t = &r.decision.after;
    let now = ts(r.checked_at);
    let changed = conn
        .prepare_cached(
            "UPDATE charges SET state = ?1, provider_status = ?2, charged_amount = ?3,
                    charged_currency = ?4, amount_mismatch = ?5, mismatch_detail = ?6,
                    payment_number = ?7, payment_url = ?8, next_check_at = ?9,
                    last_checked_at = ?10, last_error = ?11, consecutive_errors = ?12,
                    not_found_count = ?13, updated_at = ?10
             WHERE charge_id = ?14 AND state = ?15 AND updated_at = ?16",
        )?
        .execute(params![
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
        ])?;
    if changed == 0 {
        return Ok(false);
    }
    let mut insert = conn.prepare_cached(
        "INSERT INTO charge_events (charge_id, at, kind, from_state, to_state, provider_status, detail, run_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    for NewEvent {
        kind,
        from_state,
        to_state,
        provider_status,
        detail,
    } in &r.decision.events
    {
        insert.execute(params![
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
    Ok(true)
}
