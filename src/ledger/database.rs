//! The database handle: where the ledger is, how long to wait for its write lock, and
//! which ledger it is. Every connection of the process is opened through one, so every
//! open makes the same checks:
//!
//! - The path must name a regular file (or, for a handle that may create the ledger and
//!   has not opened it yet, a place to create one).
//! - The first open of a handle runs SQLite's `quick_check`, so a corrupt ledger is
//!   refused by every command and the daemon alike, before anything is read or written.
//!   A handle made for the reconciler's own runs ([`Integrity::Daily`]: the daemon's
//!   start, `--once`, `register`) runs it only when the last check that passed
//!   (`meta.integrity_checked_at`) is a day old: the check reads the whole file, and a
//!   timer's `--once` every minute over a large ledger would otherwise spend seconds a
//!   run on it.
//! - The ledger carries an identity (`meta.ledger_id`, drawn when it was created). The
//!   first open learns it; every later open, by the handle or any clone of it, finds the
//!   file still there and carrying that identity, or fails with
//!   [`LedgerError::Vanished`] or [`LedgerError::Replaced`]. A ledger removed or renamed
//!   over under a running daemon is therefore never recreated or adopted: its passes
//!   fail, one clear error each, until the file is put back (or the daemon restarted).
//!
//! Only a handle made with [`Database::new`] may create the file, and only at its first
//! open with [`Open::Migrate`]: the daemon's start, `--once`, `register`. The commands
//! that read or change what is there use [`Database::existing`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OpenFlags, OptionalExtension};

use super::{Ledger, LedgerError, busy, schema, wal};

/// How an open treats the schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Open {
    /// Migrate it to the latest schema (and, for a handle that may, create the file on
    /// its first open).
    Migrate,
    /// Open it as it is: for connections beside another of the same process that has
    /// already migrated it.
    Existing,
}

/// When a handle's first open runs the integrity check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Integrity {
    /// At every handle's first open: the operator's commands, where a person is waiting
    /// for the answer and a second or two on a large ledger is the price of certainty.
    EveryProcess,
    /// At a handle's first open when no check has passed within [`INTEGRITY_EVERY`]
    /// (or the last one is dated in the future: a clock stepped back): the daemon,
    /// `--once` and `register`, which may run every minute.
    Daily,
}

/// How long a passed integrity check stands for [`Integrity::Daily`] handles.
pub const INTEGRITY_EVERY: Duration = Duration::from_secs(86_400);

/// The `meta` key of the time the last integrity check that passed ended.
const CHECKED_AT: &str = "integrity_checked_at";

/// Where the ledger is and which one it is; cheap to clone, and every clone shares what
/// the first open learnt.
#[derive(Debug, Clone)]
pub struct Database {
    path: PathBuf,
    busy_timeout: Duration,
    /// Whether the first open may create the file.
    may_create: bool,
    /// When the first open runs the integrity check.
    integrity: Integrity,
    /// `meta.ledger_id` as the first successful open found it: the ledger every later
    /// open must find again. Shared, so that the passes, hints, sweeps and metrics of one
    /// daemon all hold on to the same ledger.
    identity: Arc<OnceLock<String>>,
}

impl Database {
    /// A handle whose first open with [`Open::Migrate`] creates the ledger if it is
    /// missing: for the daemon, `--once` and `register`.
    pub fn new(path: impl Into<PathBuf>, busy_timeout: Duration) -> Database {
        Database {
            path: path.into(),
            busy_timeout,
            may_create: true,
            integrity: Integrity::EveryProcess,
            identity: Arc::default(),
        }
    }

    /// A handle for a ledger that must exist already: for the commands that only read or
    /// change what is there, which must never leave an empty ledger behind a mistyped
    /// `database.path`.
    pub fn existing(path: impl Into<PathBuf>, busy_timeout: Duration) -> Database {
        Database {
            may_create: false,
            ..Database::new(path, busy_timeout)
        }
    }

    /// The same handle, its first open checking integrity `when`.
    pub fn with_integrity(self, when: Integrity) -> Database {
        Database {
            integrity: when,
            ..self
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The ledger id the first open found, once one has.
    pub fn identity(&self) -> Option<&str> {
        self.identity.get().map(String::as_str)
    }

    /// Opens a connection, making the checks of the module doc. A ledger found gone or
    /// replaced is an error for which [`LedgerError::is_lost`] holds; the next open looks
    /// again, so putting the right file back heals it.
    pub fn open(&self, how: Open) -> Result<Ledger, LedgerError> {
        check_path(&self.path)?;
        let Some(expected) = self.identity.get() else {
            return self.first_open(how);
        };
        if !self.path.is_file() {
            return Err(LedgerError::Vanished {
                path: self.path.clone(),
            });
        }
        let ledger = self.connect(false)?;
        let found = read_identity(&ledger)?;
        if found.as_deref() != Some(expected.as_str()) {
            return Err(LedgerError::Replaced {
                path: self.path.clone(),
                expected: expected.clone(),
                found: found.unwrap_or_else(|| "none".to_owned()),
            });
        }
        if how == Open::Migrate {
            migrate(ledger).map(|(l, _)| l)
        } else {
            Ok(ledger)
        }
    }

    /// The handle's first open: creates the file if it may, checks its integrity,
    /// migrates it if asked, and learns its identity.
    fn first_open(&self, how: Open) -> Result<Ledger, LedgerError> {
        let create = self.may_create && how == Open::Migrate;
        if !create && !self.path.is_file() {
            return Err(LedgerError::Unusable {
                path: self.path.clone(),
                reason: "no such database (check database.path; `register` or the service's \
                         first start creates it)"
                    .to_owned(),
            });
        }
        let ledger = self.connect(create)?;
        let now = chrono::Utc::now();
        let checked = self.integrity_due(&ledger, now)?;
        if checked {
            quick_check(&ledger)?;
        }
        let (ledger, identity) = match how {
            Open::Migrate => migrate(ledger)?,
            Open::Existing => {
                let id = read_identity(&ledger)?;
                (ledger, id)
            }
        };
        if let Some(id) = identity {
            // Two clones racing through their first open read the same file; the first
            // to get here sets it, and the other's value is the same.
            let _ = self.identity.set(id);
        }
        if checked {
            stamp_integrity(&ledger, now);
        }
        Ok(ledger)
    }

    /// Whether this first open must run the integrity check.
    fn integrity_due(&self, ledger: &Ledger, now: DateTime<Utc>) -> Result<bool, LedgerError> {
        if self.integrity == Integrity::EveryProcess {
            return Ok(true);
        }
        let last = read_meta(ledger, CHECKED_AT)?;
        Ok(integrity_due_at(last.as_deref(), now))
    }

    fn connect(&self, create: bool) -> Result<Ledger, LedgerError> {
        let path = &self.path;
        let sqlite = |source| LedgerError::Sqlite {
            path: path.clone(),
            source,
        };
        if let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
            && !parent.is_dir()
        {
            return Err(LedgerError::Unusable {
                path: path.clone(),
                reason: format!("directory {} does not exist", parent.display()),
            });
        }
        let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI;
        if create {
            flags |= OpenFlags::SQLITE_OPEN_CREATE;
        }
        statement_journals_in_memory();
        let conn = Connection::open_with_flags(path, flags).map_err(sqlite)?;
        busy::poll_when_busy(&conn, self.busy_timeout).map_err(sqlite)?;
        if create {
            // Takes effect only on a file without tables (a new ledger): the space
            // retention frees can then be handed back a little at a time
            // (`incremental_vacuum`). An existing ledger keeps its mode; switching needs
            // a VACUUM, a full rewrite under the write lock (docs/operations.md).
            conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL")
                .map_err(sqlite)?;
        }
        // The first statement that reads the file: a file that is not SQLite fails here.
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(sqlite)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(LedgerError::Unusable {
                path: path.clone(),
                reason: format!("cannot switch to WAL mode (journal_mode is {mode})"),
            });
        }
        // NORMAL in WAL mode survives a killed process intact; a power cut may lose the
        // last commits, which the next pass simply redoes (every check is re-runnable).
        conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;")
            .map_err(sqlite)?;
        // No commit copies the WAL into the file: see the `wal` module for who does.
        conn.execute_batch(wal::WAL_SETTINGS).map_err(sqlite)?;
        Ok(Ledger::from_parts(conn, path.clone(), self.busy_timeout))
    }

    /// Runs `f` with a connection opened `how`, on tokio's blocking pool: the one way the
    /// async code reaches SQLite.
    pub async fn with_ledger<T: Send + 'static>(
        &self,
        how: Open,
        f: impl FnOnce(Ledger) -> Result<T, LedgerError> + Send + 'static,
    ) -> Result<T, LedgerError> {
        let db = self.clone();
        blocking(&self.path, move || f(db.open(how)?)).await
    }
}

/// How much of one statement's journal SQLite keeps in memory before it moves it to a
/// temporary file (its default: 64 KiB). It is also the size of the one piece the
/// journal is kept in, and the move writes that piece with one call of SQLite's unix
/// file layer, which takes at most 128 KiB - 1 (it masks the length to 17 bits): a
/// larger value turns every move into a short write, reported as "database or disk is
/// full".
const STATEMENT_JOURNAL_IN_MEMORY: i32 = 120 << 10;

/// Every write that fires a trigger keeps a statement journal: the pages it changes, to
/// undo just that statement should a trigger refuse it. Past 64 KiB (16 pages, which a
/// check's writes can reach when index pages split) SQLite moves it to a temporary file
/// for the rest of the transaction, and every page written after costs a system call.
/// `temp_store = MEMORY` avoids the file but keeps the journal in 1 KiB pieces, four
/// allocations a page (measured: an eighth of a pass's instructions). A threshold of 30
/// pages keeps a check's journal in memory in one piece; only bulk statements (pruning,
/// migrations) still move theirs to a file.
///
/// A process-wide setting, which SQLite takes only before its first connection; a
/// process that opened one earlier (a test harness, say) keeps the default, which
/// changes what a write costs, not what it does.
fn statement_journals_in_memory() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: SQLITE_CONFIG_STMTJRNL_SPILL takes one int; sqlite3_config is called
        // once, before this process opens a connection (it answers SQLITE_MISUSE and
        // changes nothing if SQLite was already initialized).
        let rc = unsafe {
            rusqlite::ffi::sqlite3_config(
                rusqlite::ffi::SQLITE_CONFIG_STMTJRNL_SPILL,
                STATEMENT_JOURNAL_IN_MEMORY,
            )
        };
        if rc != rusqlite::ffi::SQLITE_OK {
            tracing::debug!(rc, "statement journals keep SQLite's default threshold");
        }
    });
}

/// Migrates the ledger to the latest schema, and reads its identity.
fn migrate(mut ledger: Ledger) -> Result<(Ledger, Option<String>), LedgerError> {
    let path = ledger.path().to_owned();
    schema::migrations()
        .to_latest(ledger.conn_mut())
        .map_err(|source| LedgerError::Migrate { path, source })?;
    let id = read_identity(&ledger)?;
    Ok((ledger, id))
}

/// `meta.ledger_id`; `None` when the file has no such table or row (not a ledger of this
/// version, or not migrated yet).
fn read_identity(ledger: &Ledger) -> Result<Option<String>, LedgerError> {
    read_meta(ledger, "ledger_id")
}

/// Whether a [`Integrity::Daily`] handle checks, the last passed check having ended at
/// `last` (`None`: never, or not readable as a time).
fn integrity_due_at(last: Option<&str>, now: DateTime<Utc>) -> bool {
    let Some(last) = last.and_then(|t| DateTime::parse_from_rfc3339(t).ok()) else {
        return true;
    };
    let age = now.signed_duration_since(last.with_timezone(&Utc));
    let every = chrono::Duration::from_std(INTEGRITY_EVERY).unwrap_or(chrono::Duration::MAX);
    age < chrono::Duration::zero() || age >= every
}

/// Records that a check passed. A failure to write it (a read-only file system, a busy
/// ledger) only means the next run checks again, so it is logged and nothing more.
fn stamp_integrity(ledger: &Ledger, now: DateTime<Utc>) {
    let stamped = ledger.sql(|c| {
        if has_meta(c)? {
            c.execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                rusqlite::params![CHECKED_AT, super::ts(now)],
            )?;
        }
        Ok(())
    });
    if let Err(e) = stamped {
        tracing::debug!(error = %e, "cannot record the integrity check's time");
    }
}

/// A `meta` value; `None` when the file has no such table or row.
fn read_meta(ledger: &Ledger, key: &str) -> Result<Option<String>, LedgerError> {
    ledger.sql(|c| {
        if !has_meta(c)? {
            return Ok(None);
        }
        c.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
    })
}

/// Whether the file has a `meta` table (a file not migrated yet, or not a ledger, has none).
fn has_meta(c: &rusqlite::Connection) -> rusqlite::Result<bool> {
    c.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'meta')",
        [],
        |r| r.get(0),
    )
}

/// SQLite's `quick_check` (the integrity check without the index-content comparison):
/// its cost follows the size of the file, which is why only a handle's first open pays it.
///
/// It also reports rows that break a `CHECK` or `NOT NULL` constraint (written by another
/// program with the checks off). Those are not damage to the file: a pass reads such a
/// row as one it cannot check, records it, and goes on with the others.
fn quick_check(ledger: &Ledger) -> Result<(), LedgerError> {
    let problems: Vec<String> = ledger.sql(|c| {
        let mut stmt = c.prepare("PRAGMA quick_check(100)")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        rows.collect()
    })?;
    let damage: Vec<&str> = problems
        .iter()
        .map(String::as_str)
        .filter(|p| *p != "ok" && !is_constraint_report(p))
        .take(3)
        .collect();
    if damage.is_empty() {
        return Ok(());
    }
    Err(LedgerError::Corrupt {
        path: ledger.path().to_owned(),
        detail: crate::domain::text::one_line(&damage.join("; ")),
    })
}

/// The lines of `quick_check` that report a row breaking a constraint, not damage.
fn is_constraint_report(line: &str) -> bool {
    line.starts_with("CHECK constraint failed in ") || line.starts_with("NULL value in ")
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

/// The error for a database thread that ended without an answer (it panicked).
pub fn join_error(path: &Path, e: tokio::task::JoinError) -> LedgerError {
    LedgerError::Worker {
        path: path.to_owned(),
        message: e.to_string(),
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
    Err(LedgerError::Unusable {
        path: path.to_owned(),
        reason: format!(
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

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn a_new_ledger_gets_an_identity_that_later_opens_find_again() {
        let d = dir();
        let db = Database::new(d.path().join("l.db"), Duration::from_secs(1));
        drop(db.open(Open::Migrate).unwrap());
        let id = db.identity().unwrap().to_owned();
        assert_eq!(id.len(), 32, "{id}");
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
        drop(db.clone().open(Open::Existing).unwrap());
        let other = Database::new(d.path().join("m.db"), Duration::from_secs(1));
        drop(other.open(Open::Migrate).unwrap());
        assert_ne!(other.identity(), Some(id.as_str()), "drawn at random");
    }

    #[test]
    fn a_removed_ledger_is_not_recreated() {
        let d = dir();
        let path = d.path().join("l.db");
        let db = Database::new(&path, Duration::from_secs(1));
        drop(db.open(Open::Migrate).unwrap());
        std::fs::remove_file(&path).unwrap();
        let e = db.open(Open::Migrate).unwrap_err();
        assert!(matches!(e, LedgerError::Vanished { .. }), "{e}");
        assert!(e.is_lost());
        assert!(!path.exists(), "recreated");
    }

    #[test]
    fn a_replaced_ledger_is_not_adopted_and_its_return_is() {
        let d = dir();
        let path = d.path().join("l.db");
        let db = Database::new(&path, Duration::from_secs(1));
        drop(db.open(Open::Migrate).unwrap());
        std::fs::rename(&path, d.path().join("kept.db")).unwrap();
        let other = Database::new(d.path().join("other.db"), Duration::from_secs(1));
        drop(other.open(Open::Migrate).unwrap());
        std::fs::rename(d.path().join("other.db"), &path).unwrap();
        let e = db.open(Open::Existing).unwrap_err();
        let LedgerError::Replaced {
            expected, found, ..
        } = &e
        else {
            panic!("{e}");
        };
        assert_eq!(Some(expected.as_str()), db.identity());
        assert_eq!(Some(found.as_str()), other.identity());
        std::fs::rename(d.path().join("kept.db"), &path).unwrap();
        drop(db.open(Open::Migrate).unwrap());
    }

    #[test]
    fn a_daily_check_is_due_after_a_day_never_passed_or_dated_ahead() {
        let now = DateTime::parse_from_rfc3339("2026-12-02T12:00:00.000Z")
            .unwrap()
            .with_timezone(&Utc);
        assert!(integrity_due_at(None, now));
        assert!(integrity_due_at(Some("not a time"), now));
        assert!(!integrity_due_at(Some("2026-12-02T11:00:00.000Z"), now));
        assert!(!integrity_due_at(Some("2026-12-01T12:00:00.001Z"), now));
        assert!(integrity_due_at(Some("2026-12-01T12:00:00.000Z"), now));
        assert!(integrity_due_at(Some("2026-12-02T12:05:00.000Z"), now));
    }

    #[test]
    fn a_daily_handle_skips_the_check_a_passed_one_recorded() {
        let d = dir();
        let path = d.path().join("l.db");
        drop(
            Database::new(&path, Duration::from_secs(1))
                .open(Open::Migrate)
                .unwrap(),
        );
        let l = Database::new(&path, Duration::from_secs(1))
            .with_integrity(Integrity::Daily)
            .open(Open::Migrate)
            .unwrap();
        assert!(
            read_meta(&l, CHECKED_AT).unwrap().is_some(),
            "stamped at creation"
        );
    }

    #[test]
    fn an_existing_handle_never_creates() {
        let d = dir();
        let path = d.path().join("l.db");
        let e = Database::existing(&path, Duration::from_secs(1))
            .open(Open::Migrate)
            .unwrap_err();
        assert!(e.to_string().contains("no such database"), "{e}");
        assert!(!path.exists());
    }
}
