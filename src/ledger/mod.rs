//! The SQLite ledger: the one part of the program that talks SQL. Everything else reaches
//! the database through a [`Database`] handle and the typed functions of [`Ledger`], a
//! connection opened by it; no raw connection leaves this module. (Operators, scripts and
//! tests read and write the same file with their own SQLite connection: that is the
//! contract's "operator's window", described in docs/ledger.md.)
//!
//! By concern:
//! - `database`: the handle, how a connection is opened and which checks every open
//!   makes (the file is there, it is intact, it is still the same ledger).
//! - `busy`: how a connection waits for the write lock another holds.
//! - `wal`: the write-ahead log's checkpoints, kept out of every commit.
//! - `schema`: the migrations, the triggers that keep the data honest.
//! - `time`: [`Timestamp`], the one text form of a time in the ledger.
//! - `due`: reading the charges a pass checks (the due stream, by id, the budget counts).
//! - `checks`: writing check results, each charge's change with its events in one
//!   transaction.
//! - `events`: reading `charge_events`, the append-only history.
//! - `runs`: the `runs` rows (passes, `check` runs), their counts and recorded pauses.
//! - `charges`: the operator's changes and reads (`register`, `recheck`, `export`).
//! - `overview`: the figures `status` and the metrics report.
//! - `hints`: the ledger side of webhook hints.
//! - `discovery`: discovery's registrations, watermarks and skips.
//! - `backup`: the online, integrity-checked copy behind `backup DEST`.
//! - `retention`: what `[retention]` prunes, in bounded steps, and the space handed back.
//! - `archive`: moving old final charges with their history to the archive file, and
//!   reading them back there.
//! - `outbox`: the shop's facts, the event payloads and the delivery rows (written by
//!   triggers in the transaction of the change), the feed and delivery queries.
//!
//! Everything here is blocking (rusqlite); async code calls it through
//! [`Database::with_ledger`] or [`blocking`], on tokio's blocking pool.

mod archive;
pub mod backup;
mod busy;
mod charges;
mod checks;
mod clock_step;
mod database;
mod discovery;
mod due;
mod error;
mod events;
mod hints;
mod outbox;
mod overview;
mod retention;
mod run_requests;
mod runs;
mod schema;
mod time;
mod wal;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, Transaction, TransactionBehavior};

// The run types live in `domain`; they are part of what the ledger stores.
pub use crate::domain::{Counts, Outcome, Trigger};

pub use archive::{ChargeRecord, Moved};
pub use charges::{
    Backfill, EXPORT_COLUMNS, ExportFilter, ExportRow, NewCharge, Rechecked, Registered,
};
pub use checks::{Applied, CheckResult};
pub use database::{Database, INTEGRITY_EVERY, Integrity, Open, blocking, check_path, join_error};
pub use discovery::{
    DiscoveryBatch, Enrichment, MAX_ATTEMPTS, NewDiscovered, Skip, SkipReason, SweepCounts,
    SweepOutcome,
};
pub use due::{BadRow, DueCharge, DueRow, Urgency};
pub use error::LedgerError;
pub use events::Ending;
use hints::WEBHOOK_EVENT;
pub use hints::{HintCheck, HintEvents, HintRow, HintTarget};
pub use outbox::{
    AttemptResult, DueDelivery, EVENT_TYPES, EndpointBacklog, EndpointFilter, FeedEvent,
    MAX_METADATA, MAX_ORDER_REF, ShopFacts,
};
pub use overview::{Backlog, Figures, Overview, StateTotal};
pub use retention::{CHUNK_ROWS, Prunable, Pruned};
pub use runs::RunRow;
pub use time::{Timestamp, ts};
pub use wal::Checkpointed;

/// A connection to the ledger, opened by a [`Database`].
pub struct Ledger {
    conn: Connection,
    path: PathBuf,
    /// How long the connection waits for a lock (`database.busy_timeout`).
    busy_timeout: Duration,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger").field("path", &self.path).finish()
    }
}

impl Ledger {
    /// Opens (creating if needed) and migrates the database: a [`Database::new`] handle's
    /// first open, for a program that opens the ledger once.
    pub fn open(path: &Path, busy_timeout: Duration) -> Result<Ledger, LedgerError> {
        Database::new(path, busy_timeout).open(Open::Migrate)
    }

    /// Opens and migrates a database that must already exist: a [`Database::existing`]
    /// handle's first open, for the commands that only read or change what is there.
    pub fn open_if_exists(path: &Path, busy_timeout: Duration) -> Result<Ledger, LedgerError> {
        Database::existing(path, busy_timeout).open(Open::Migrate)
    }

    fn from_parts(conn: Connection, path: PathBuf, busy_timeout: Duration) -> Ledger {
        Ledger {
            conn,
            path,
            busy_timeout,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The raw connection, for the unit tests here.
    #[cfg(test)]
    fn conn(&self) -> &Connection {
        &self.conn
    }

    fn conn_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }

    /// Wraps a failure of SQLite with the file's name.
    fn err(&self, source: rusqlite::Error) -> LedgerError {
        LedgerError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// Runs statements on the connection; SQLite's failure becomes a [`LedgerError`]
    /// naming the file, with the failure as its source.
    fn sql<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, LedgerError> {
        f(&self.conn).map_err(|e| self.err(e))
    }

    /// Runs `f` in one `IMMEDIATE` transaction (the write lock taken at once, so that a
    /// busy database waits at the start rather than failing half-way) and commits it.
    /// When `f` fails, nothing of it is kept.
    fn write<T>(
        &mut self,
        f: impl FnOnce(&mut Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T, LedgerError> {
        self.transact(|tx| Ok((f(tx)?, true)))
    }

    /// As [`write`](Self::write), committing only when `f` answers `true` with its value:
    /// otherwise everything `f` did is rolled back.
    fn transact<T>(
        &mut self,
        f: impl FnOnce(&mut Transaction<'_>) -> rusqlite::Result<(T, bool)>,
    ) -> Result<T, LedgerError> {
        let path = &self.path;
        let err = |source| LedgerError::Sqlite {
            path: path.clone(),
            source,
        };
        let mut tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        let (value, commit) = f(&mut tx).map_err(err)?;
        if commit {
            tx.commit().map_err(err)?;
        }
        Ok(value)
    }
}

/// A ledger in a temporary directory, for the unit tests of the modules here.
#[cfg(test)]
fn test_ledger() -> (tempfile::TempDir, Ledger) {
    let dir = tempfile::tempdir().unwrap();
    let l = Ledger::open(&dir.path().join("l.db"), Duration::from_secs(1)).unwrap();
    (dir, l)
}
