//! The SQLite ledger: opening and migrating the database, streaming due charges, and
//! writing check results, each charge's change in one transaction. Discovery's
//! registrations, watermarks and skips are in `discovery`.
//!
//! Everything here is blocking (rusqlite); the pass calls it from dedicated threads, never
//! from async tasks.

mod discovery;
mod hints;
mod ops;
mod outbox;
mod schema;

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{Connection, OpenFlags, TransactionBehavior, params};

use crate::domain::text::one_line;
use crate::domain::{
    ChargeDates, ChargeId, Currency, Decision, NewEvent, Requested, State, StoreId, Tracked,
};

// The run types live in `domain`; they are part of what the ledger stores.
pub use crate::domain::{Counts, Outcome, Trigger};

pub use discovery::{
    DISCOVERED_EVENT, DiscoveryBatch, Enrichment, MAX_ATTEMPTS, NewDiscovered, Skip, SkipReason,
    SweepCounts, SweepOutcome,
};
pub use hints::{HintRow, HintTarget, WEBHOOK_EVENT};
pub use ops::{
    EXPORT_COLUMNS, ExportFilter, ExportRow, Figures, NewCharge, Overview, Rechecked, Registered,
    RunRow, StateTotal,
};
pub use outbox::{
    AttemptResult, DueDelivery, EVENT_TYPES, EndpointBacklog, EndpointFilter, FeedEvent,
    MAX_METADATA, MAX_ORDER_REF, ShopFacts,
};
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

/// [`Ledger::err`] for code that holds a transaction on the ledger's connection (and so
/// cannot borrow the whole ledger): it borrows only the path.
fn err_at(path: &Path) -> impl Fn(rusqlite::Error) -> LedgerError + Copy + '_ {
    move |e| LedgerError::Sqlite {
        path: path.to_path_buf(),
        message: sqlite_message(&e),
    }
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
    /// Registration time and deadline, which the cadence reads (parsed leniently).
    pub dates: ChargeDates,
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

/// What makes a due charge urgent when the budget is short: it is young (created after
/// `born_after`) or at or near its deadline (`expires_at` at or before `expiring_by`).
/// Both are ledger timestamps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Urgency {
    pub born_after: String,
    pub expiring_by: String,
}

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
        check_path(path)?;
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
        err_at(&self.path)(e)
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

    /// The latest `runs.resume_at`: until when UnivaPay asked that nothing be sent. An
    /// operator clears it with `UPDATE runs SET resume_at = NULL`.
    pub fn resume_at(&self) -> Result<Option<DateTime<Utc>>, LedgerError> {
        let at: Option<String> = self
            .conn
            .query_row("SELECT max(resume_at) FROM runs", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        // Written by us in RFC 3339; anything else (a hand edit) is no pause.
        Ok(at.and_then(|t| DateTime::parse_from_rfc3339(&t).ok().map(|t| t.to_utc())))
    }

    /// Records until when UnivaPay asked that nothing be sent (`runs.resume_at`).
    pub fn set_resume_at(&self, run_id: i64, resume_at: &str) -> Result<(), LedgerError> {
        self.conn
            .execute(
                "UPDATE runs SET resume_at = ?2 WHERE id = ?1",
                params![run_id, resume_at],
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
        self.due_batch_where(cutoff, after, limit, None)
    }

    /// [`due_batch`](Self::due_batch), restricted to the charges that are (or, with
    /// `urgent.1` false, are not) urgent by `urgent.0`.
    pub fn due_batch_where(
        &self,
        cutoff: &str,
        after: Option<(&str, &str)>,
        limit: usize,
        urgent: Option<(&Urgency, bool)>,
    ) -> Result<Vec<DueRow>, LedgerError> {
        let (after_at, after_id) = after.unwrap_or(("", ""));
        // One statement for both: with ?5 NULL the urgency test is skipped. created_at is
        // compared as a time (a shop may write it in SQLite's own form); one that is not a
        // time counts as young, as the cadence counts it.
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT charge_id, store_id, requested_amount, requested_currency, state,
                        provider_status, charged_amount, charged_currency, amount_mismatch,
                        mismatch_detail, payment_number, payment_url, last_error,
                        consecutive_errors, not_found_count, next_check_at, updated_at,
                        created_at, expires_at
                 FROM charges
                 WHERE next_check_at <= ?1 AND (next_check_at, charge_id) > (?2, ?3)
                   AND (?5 IS NULL
                        OR coalesce(coalesce(julianday(created_at) > julianday(?5), 1)
                                    OR expires_at <= ?6, 0) = ?7)
                 ORDER BY next_check_at, charge_id
                 LIMIT ?4",
            )
            .map_err(|e| self.err(e))?;
        let (born_after, expiring_by, want) = match urgent {
            Some((u, want)) => (
                Some(u.born_after.as_str()),
                Some(u.expiring_by.as_str()),
                want,
            ),
            None => (None, None, true),
        };
        let rows = stmt
            .query_map(
                params![
                    cutoff,
                    after_at,
                    after_id,
                    limit as i64,
                    born_after,
                    expiring_by,
                    want
                ],
                row_to_due,
            )
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

    /// How many charges are due at or before `cutoff` (the backlog a pass starts with).
    pub fn count_due(&self, cutoff: &str) -> Result<u64, LedgerError> {
        self.conn
            .query_row(
                "SELECT count(*) FROM charges WHERE next_check_at <= ?1",
                [cutoff],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n.max(0) as u64)
            .map_err(|e| self.err(e))
    }

    /// Open charges (those with a next check) counted by age band, for the estimate of
    /// the checks they need. `born_after[k]` is the time a charge of band `k` was created
    /// after (bands from youngest; the last band takes the rest; a `created_at` that is
    /// not a time counts as youngest, as the cadence treats it). Charges
    /// whose `expires_at` lies in the window `watch` are counted apart (the second value).
    /// Returns one count per band (`born_after.len() + 1`) and the watched count.
    pub fn count_open_by_age(
        &self,
        born_after: &[String],
        watch: Option<(&str, &str)>,
    ) -> Result<(Vec<u64>, u64), LedgerError> {
        let mut band = String::from("CASE");
        for k in 0..born_after.len() {
            band.push_str(&format!(
                " WHEN coalesce(julianday(created_at) > julianday(?{}), 1) THEN {k}",
                k + 3
            ));
        }
        band.push_str(&format!(" ELSE {} END", born_after.len()));
        if born_after.is_empty() {
            band = "0".to_owned();
        }
        let sql = format!(
            "SELECT CASE WHEN expires_at > ?1 AND expires_at <= ?2 THEN -1 ELSE {band} END AS band,
                    count(*)
             FROM charges WHERE next_check_at IS NOT NULL GROUP BY band"
        );
        let mut stmt = self.conn.prepare(&sql).map_err(|e| self.err(e))?;
        let (from, until) = watch.unwrap_or(("", ""));
        let mut values: Vec<&dyn rusqlite::ToSql> = vec![&from, &until];
        values.extend(born_after.iter().map(|b| b as &dyn rusqlite::ToSql));
        let mut by_band = vec![0u64; born_after.len() + 1];
        let mut watched = 0u64;
        let mut rows = stmt.query(values.as_slice()).map_err(|e| self.err(e))?;
        while let Some(r) = rows.next().map_err(|e| self.err(e))? {
            let (b, n): (i64, i64) = (
                r.get(0).map_err(|e| self.err(e))?,
                r.get(1).map_err(|e| self.err(e))?,
            );
            match usize::try_from(b) {
                Ok(b) => by_band[b.min(born_after.len())] += n.max(0) as u64,
                Err(_) => watched += n.max(0) as u64,
            }
        }
        Ok((by_band, watched))
    }

    /// Records the budget figures of a run: the charges due when it began and the factor
    /// the recheck intervals were stretched by.
    pub fn record_budget(&self, run_id: i64, due: u64, stretch: f64) -> Result<(), LedgerError> {
        self.conn
            .execute(
                "UPDATE runs SET due = ?2, stretch = ?3 WHERE id = ?1",
                params![run_id, due as i64, stretch],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
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
        let err = err_at(&self.path);
        let mut applied = Applied::default();
        let mut tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        if savepoints {
            for r in results {
                let sp = tx.savepoint().map_err(err)?;
                let w = Writes::prepare(&sp).and_then(|mut w| w.write(run_id, r));
                if matches!(w, Ok(true)) {
                    sp.commit().map_err(err)?;
                }
                applied.record(r, w);
            }
        } else {
            // The statements are prepared once for the group: looking them up in the
            // statement cache for every charge costs a hash of their text each time.
            let mut w = Writes::prepare(&tx).map_err(err)?;
            for r in results {
                match w.write(run_id, r) {
                    Err(_) => return Ok(None),
                    written => applied.record(r, written),
                }
            }
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

/// Refuses a database path that names something other than a regular file (a device such
/// as `/dev/null`, a directory, a FIFO, a socket): SQLite would fail on it with a
/// misleading message, block on a FIFO, or hint at a full disk. A path that does not exist
/// yet is fine (the database is created there); a symlink is judged by what it points to.
pub fn check_path(path: &Path) -> Result<(), LedgerError> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(_) => return Ok(()),
    };
    if meta.is_file() {
        return Ok(());
    }
    Err(LedgerError::Open {
        path: path.to_owned(),
        message: format!(
            "not a regular file ({}); database.path must name a SQLite database file, or a place to create one",
            file_kind(&meta)
        ),
    })
}

fn file_kind(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a file"
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
        // Read leniently: a value that is not a time (or a column this query lacks) only
        // makes the cadence treat the charge as young and without deadline.
        let text = |i: usize| r.get::<_, Option<String>>(i).ok().flatten();
        let dates = ChargeDates::from_columns(text(17).as_deref(), text(18).as_deref());
        Ok(DueCharge {
            charge_id: id,
            store_id,
            requested: Requested { amount, currency },
            tracked,
            dates,
            next_check_at: next_check_at.clone(),
            updated_at: r.get(16).map_err(|e| e.to_string())?,
        })
    })();
    Ok(parsed.map_err(bad))
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
            outbox::record_shop_facts(self.conn, r.charge.charge_id.as_str(), &now, run_id, facts)?;
        }
        Ok(true)
    }
}

#[cfg(test)]
mod budget_tests {
    //! The queries of the budget stage: the due backlog, open charges by age, urgency.

    use super::*;

    fn ledger() -> (tempfile::TempDir, Ledger) {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open(&dir.path().join("l.db"), Duration::from_secs(1)).unwrap();
        (dir, l)
    }

    /// A charge created at `created`, due at `next`, with an optional deadline.
    fn add(l: &Ledger, id: &str, created: &str, next: Option<&str>, expires: Option<&str>) {
        l.conn()
            .execute(
                "INSERT INTO charges (charge_id, store_id, requested_amount, created_at,
                                      next_check_at, expires_at)
                 VALUES (?1, 's', 100, ?2, ?3, ?4)",
                params![id, created, next, expires],
            )
            .unwrap();
    }

    fn ids(rows: Vec<DueRow>) -> Vec<String> {
        rows.into_iter()
            .map(|r| r.unwrap().charge_id.to_string())
            .collect()
    }

    #[test]
    fn due_rows_carry_their_dates_and_split_by_urgency() {
        let (_d, l) = ledger();
        let due = Some("2026-11-27T09:00:00.000Z");
        add(&l, "old", "2026-11-20T00:00:00.000Z", due, None);
        add(&l, "young", "2026-11-27T08:00:00.000Z", due, None);
        add(
            &l,
            "expiring",
            "2026-11-20T00:00:00.000Z",
            due,
            Some("2026-11-27T20:00:00.000Z"),
        );
        add(
            &l,
            "handwritten",
            "2026-11-27 08:30:00",
            Some("2026-11-27T09:30:00.000Z"),
            None,
        );
        add(
            &l,
            "later",
            "2026-11-20T00:00:00.000Z",
            Some("2026-11-28T00:00:00.000Z"),
            None,
        );
        let cutoff = "2026-11-27T10:00:00.000Z";
        let all = l.due_batch(cutoff, None, 10).unwrap();
        assert_eq!(all.len(), 4);
        let young = all
            .iter()
            .map(|r| r.as_ref().unwrap())
            .find(|c| c.charge_id.as_str() == "handwritten")
            .unwrap();
        assert_eq!(
            young.dates.created_at.map(ts).as_deref(),
            Some("2026-11-27T08:30:00.000Z"),
            "read leniently"
        );
        let u = Urgency {
            born_after: "2026-11-27T00:00:00.000Z".into(),
            expiring_by: "2026-11-28T10:00:00.000Z".into(),
        };
        let urgent = l
            .due_batch_where(cutoff, None, 10, Some((&u, true)))
            .unwrap();
        assert_eq!(ids(urgent), ["expiring", "young", "handwritten"]);
        let rest = l
            .due_batch_where(cutoff, None, 10, Some((&u, false)))
            .unwrap();
        assert_eq!(ids(rest), ["old"]);
        assert_eq!(l.count_due(cutoff).unwrap(), 4);
        assert_eq!(l.count_due("2026-11-27T08:00:00.000Z").unwrap(), 0);
    }

    #[test]
    fn open_charges_are_counted_by_age_and_watch() {
        let (_d, l) = ledger();
        let next = Some("2026-11-27T09:00:00.000Z");
        add(&l, "a", "2026-11-27T08:00:00.000Z", next, None);
        add(&l, "b", "2026-11-26T08:00:00.000Z", next, None);
        add(&l, "c", "2026-11-20T08:00:00.000Z", next, None);
        add(
            &l,
            "d",
            "2026-11-20T08:00:00.000Z",
            next,
            Some("2026-11-27T12:00:00.000Z"),
        );
        add(&l, "e", "not a time", next, None);
        // Final charges need no checks.
        add(&l, "f", "2026-11-27T08:00:00.000Z", None, None);
        l.conn()
            .execute(
                "UPDATE charges SET state = 'successful' WHERE charge_id = 'f'",
                [],
            )
            .unwrap();
        let bounds = [
            "2026-11-27T00:00:00.000Z".to_owned(),
            "2026-11-25T00:00:00.000Z".to_owned(),
        ];
        let watch = Some(("2026-11-27T09:00:00.000Z", "2026-11-28T09:00:00.000Z"));
        let (by_age, watched) = l.count_open_by_age(&bounds, watch).unwrap();
        assert_eq!(by_age, [2, 1, 1], "a and the unreadable e; b; c");
        assert_eq!(watched, 1);
        let (by_age, watched) = l.count_open_by_age(&[], None).unwrap();
        assert_eq!((by_age, watched), (vec![5], 0));
    }

    #[test]
    fn budget_figures_are_recorded() {
        let (_d, l) = ledger();
        let run = l.begin_run(Trigger::Once, Utc::now()).unwrap();
        l.record_budget(run, 1234, 1.5).unwrap();
        let (due, stretch): (i64, f64) = l
            .conn()
            .query_row("SELECT due, stretch FROM runs WHERE id = ?1", [run], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!((due, stretch), (1234, 1.5));
    }
}
