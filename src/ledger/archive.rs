//! Archiving: the ledger side of `retention.archive`. A final charge whose last change
//! is older than the cutoff, and which no pending delivery still needs, moves with all
//! its history (its `charges` row, every `charge_events` row, their payloads and its
//! delivery rows) from the ledger to a second SQLite file, the archive. The ledger then
//! stops growing once the archive's age of history is kept, and no fact is lost: every
//! row is in one file or the other, for a moment in both, never in neither.
//!
//! One step moves a few charges in two transactions, the copy committed before any
//! delete:
//! 1. [`Ledger::archive_copy`]: one transaction that writes only the archive (attached
//!    as `archive`) and only reads the ledger, so it takes no write lock of the ledger
//!    and makes no pass wait. Rows copied before are replaced by the same rows.
//! 2. [`Ledger::archive_delete`]: one `IMMEDIATE` transaction on the ledger, bounded by
//!    time like a prune step. A charge is deleted only when it is still eligible and the
//!    archive holds its row as it is now and every one of its other rows; it gets a
//!    tombstone (`archived_charges`), and its id goes into `archive_moving` for the
//!    duration of its deletes and out again before the commit. `archive_moving` is what
//!    `charge_events_keep_facts` accepts instead of `kind = 'webhook'`, and a trigger lets
//!    it name only a final charge that already has its tombstone: no committed state
//!    holds a row there, so there is no off switch for the trigger, only this move.
//!
//! A crash after the copy leaves the charge in both files; the next round copies it
//! again and deletes it. SQLite commits a transaction over attached WAL databases
//! atomically per file only, which is why the two files are never written in one.
//!
//! The tombstone keeps an archived charge from coming back as a new one: an `INSERT`
//! of its id into `charges` is ignored for a discovered charge (discovery and webhook
//! hints) and refused with a message for a registration; a hint for it is
//! [`HintTarget::Archived`](super::HintTarget::Archived).
//!
//! The archive carries the ledger's identity (`meta.ledger_id`, written when it is
//! created), checked every time it is opened: an archive of another ledger is refused
//! with [`LedgerError::ForeignArchive`]. Its tables have the ledger's columns (added to
//! it as later migrations add them to the ledger) and keys, without the ledger's
//! triggers and checks: it keeps what the ledger held, as it was.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};

use super::{Ledger, LedgerError, Timestamp, ts};

/// The migration that makes room for archiving: the tombstones, the scoped exception to
/// `charge_events_keep_facts`, and an index the move needs to find a charge's deliveries.
pub(super) const V6_ARCHIVE: &str = r#"
-- One row per archived charge: small (its id and when), kept for ever, so that no sweep
-- or hint registers an archived charge again as a new one.
CREATE TABLE archived_charges (
    charge_id   TEXT PRIMARY KEY NOT NULL,
    archived_at TEXT NOT NULL
) STRICT, WITHOUT ROWID;

-- The charges whose facts are being deleted by the archiving transaction that is
-- running: filled and emptied again inside it, so never seen by another connection.
CREATE TABLE archive_moving (
    charge_id TEXT PRIMARY KEY NOT NULL
) STRICT, WITHOUT ROWID;

CREATE TRIGGER archive_moving_only_archived BEFORE INSERT ON archive_moving
WHEN NOT EXISTS (SELECT 1 FROM archived_charges WHERE charge_id = NEW.charge_id)
  OR NOT EXISTS (SELECT 1 FROM charges
                 WHERE charge_id = NEW.charge_id AND state IN ('successful', 'failed'))
BEGIN
    SELECT RAISE(ABORT, 'archive_moving names only a final charge being archived');
END;

DROP TRIGGER charge_events_keep_facts;
CREATE TRIGGER charge_events_keep_facts BEFORE DELETE ON charge_events
WHEN OLD.kind <> 'webhook'
 AND NOT EXISTS (SELECT 1 FROM archive_moving WHERE charge_id = OLD.charge_id)
BEGIN
    SELECT RAISE(ABORT, 'charge_events keeps its facts: only webhook events may be deleted');
END;

CREATE TRIGGER charges_archived_stay_archived BEFORE INSERT ON charges
WHEN EXISTS (SELECT 1 FROM archived_charges WHERE charge_id = NEW.charge_id)
BEGIN
    SELECT RAISE(IGNORE) WHERE NEW.origin = 'discovered';
    SELECT RAISE(ABORT, 'charge was archived (see `show`); it is not registered again');
END;

CREATE INDEX deliveries_by_charge ON deliveries (charge_id);
"#;

/// The tables that move, in the order they are copied, each with the key the archive
/// gives it (so that a second copy replaces the first).
const TABLES: [(&str, &str); 4] = [
    ("charges", "charge_id TEXT PRIMARY KEY NOT NULL"),
    ("charge_events", "id INTEGER PRIMARY KEY"),
    ("event_payloads", "event_id INTEGER PRIMARY KEY"),
    (
        "deliveries",
        "endpoint TEXT NOT NULL, event_id INTEGER NOT NULL, PRIMARY KEY (endpoint, event_id)",
    ),
];

/// The archive's own tables beside those.
const ARCHIVE_EXTRAS: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL);
";

/// The indexes a reader of the archive needs (a charge's history), made once the
/// columns are there.
const ARCHIVE_INDEXES: &str = "
CREATE INDEX IF NOT EXISTS charge_events_charge ON charge_events (charge_id, id);
CREATE INDEX IF NOT EXISTS event_payloads_charge ON event_payloads (charge_id);
CREATE INDEX IF NOT EXISTS deliveries_charge ON deliveries (charge_id);
";

/// Which charges may move: final, unchanged since before `?1`, no pending delivery.
const ELIGIBLE: &str = "c.state IN ('successful', 'failed') AND c.updated_at < ?1
    AND NOT EXISTS (SELECT 1 FROM deliveries AS d
                    WHERE d.charge_id = c.charge_id AND d.delivered_at IS NULL)";

/// What one [`Ledger::archive_delete`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Moved {
    /// Of the ids given, how many it went through (moved or passed over); the rest are
    /// for the next call.
    pub looked: usize,
    /// Charges deleted from the ledger (their rows now only in the archive).
    pub charges: usize,
}

/// A charge with its history as `show` reads it, from the ledger or the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeRecord {
    /// When it was archived; `None`: read from the live ledger.
    pub archived_at: Option<String>,
    /// The `charges` row: `(column, value as text)`, in the table's order.
    pub row: Vec<(String, Option<String>)>,
    /// Its events, oldest first: `at`, `kind`, `from_state`, `to_state`, `detail`.
    pub events: Vec<[Option<String>; 5]>,
}

fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn columns(conn: &Connection, schema: &str, table: &str) -> rusqlite::Result<Vec<String>> {
    conn.prepare("SELECT name FROM pragma_table_info(?1, ?2) ORDER BY cid")?
        .query_map([table, schema], |r| r.get(0))?
        .collect()
}

impl Ledger {
    /// Opens the archive at `path` (creating it, with this ledger's identity, when
    /// missing), brings its tables up to the ledger's columns, checks it belongs to
    /// this ledger, and attaches it as `archive` for the calls below.
    pub fn attach_archive(&mut self, path: &Path) -> Result<(), LedgerError> {
        super::check_path(path)?;
        let (ledger_id, busy, wanted) = self.sql(|c| {
            let id: Option<String> = c
                .query_row("SELECT value FROM meta WHERE key = 'ledger_id'", [], |r| {
                    r.get(0)
                })
                .optional()?;
            let busy: u64 = c.query_row("PRAGMA busy_timeout", [], |r| r.get(0))?;
            let mut wanted = Vec::new();
            for (table, _) in TABLES {
                wanted.push(columns(c, "main", table)?);
            }
            Ok((id.unwrap_or_default(), busy, wanted))
        })?;
        let err = |source| LedgerError::Sqlite {
            path: path.to_owned(),
            source,
        };
        let mut conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(err)?;
        conn.busy_timeout(Duration::from_millis(busy))
            .map_err(err)?;
        conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
            .map_err(err)?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        let found = prepare_archive(&tx, &ledger_id, &wanted).map_err(err)?;
        if found.as_deref() != Some(ledger_id.as_str()) {
            return Err(LedgerError::ForeignArchive {
                path: path.to_owned(),
                expected: ledger_id,
                found: found.unwrap_or_else(|| "none (not an archive)".to_owned()),
            });
        }
        tx.commit().map_err(err)?;
        drop(conn);
        let name = path.to_string_lossy().into_owned();
        self.sql(|c| c.execute("ATTACH DATABASE ?1 AS archive", [name]).map(drop))
    }

    /// Detaches the archive [`attach_archive`](Self::attach_archive) attached.
    pub fn detach_archive(&mut self) -> Result<(), LedgerError> {
        self.sql(|c| c.execute_batch("DETACH DATABASE archive"))
    }

    /// Up to `limit` charges that may move at `cutoff`, read without the write lock.
    pub fn archive_candidates(
        &self,
        cutoff: Timestamp,
        limit: usize,
    ) -> Result<Vec<String>, LedgerError> {
        self.sql(|c| {
            c.prepare_cached(&format!(
                "SELECT c.charge_id FROM charges AS c WHERE {ELIGIBLE} LIMIT ?2"
            ))?
            .query_map(params![cutoff, limit as i64], |r| r.get(0))?
            .collect()
        })
    }

    /// Copies the charges `ids` with all their rows into the attached archive, in one
    /// transaction that writes only the archive. Returns the charge rows copied.
    pub fn archive_copy(&mut self, ids: &[String]) -> Result<usize, LedgerError> {
        let ids = serde_json::to_string(ids).unwrap_or_default();
        let path = self.path.clone();
        let err = |source| LedgerError::Sqlite {
            path: path.clone(),
            source,
        };
        // Deferred: the ledger is only read (a WAL snapshot), and the only write lock
        // taken is the archive's, at the first insert.
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Deferred)
            .map_err(&err)?;
        let copied = copy_rows(&tx, &ids).map_err(&err)?;
        tx.commit().map_err(err)?;
        Ok(copied)
    }

    /// Deletes from the ledger those of `ids` that are still eligible at `cutoff` and
    /// whose rows the archive holds, in one `IMMEDIATE` transaction that stops taking
    /// further charges once it has run for `budget`. See the module doc.
    pub fn archive_delete(
        &mut self,
        ids: &[String],
        cutoff: Timestamp,
        now: DateTime<Utc>,
        budget: Duration,
    ) -> Result<Moved, LedgerError> {
        let now = ts(now);
        self.write(|tx| {
            let began = Instant::now();
            let mut moved = Moved::default();
            for id in ids {
                moved.looked += 1;
                if copied_whole(tx, id, cutoff)? {
                    delete_charge(tx, id, &now)?;
                    moved.charges += 1;
                }
                if began.elapsed() >= budget {
                    break;
                }
            }
            Ok(moved)
        })
    }

    /// When the charge was archived, if it was (its tombstone).
    pub fn archived_at(&self, id: &str) -> Result<Option<String>, LedgerError> {
        self.sql(|c| {
            c.prepare_cached("SELECT archived_at FROM archived_charges WHERE charge_id = ?1")?
                .query_row([id], |r| r.get(0))
                .optional()
        })
    }

    /// Reads a charge and its history from the live ledger.
    pub fn read_charge(&self, id: &str) -> Result<Option<ChargeRecord>, LedgerError> {
        self.sql(|c| read_charge(c, id, None))
    }

    /// Reads an archived charge from the archive at `path`, opened read-only and checked
    /// to be this ledger's. `None`: not in the archive (or no tombstone here).
    pub fn read_archived(
        &self,
        path: &Path,
        id: &str,
    ) -> Result<Option<ChargeRecord>, LedgerError> {
        let Some(archived_at) = self.archived_at(id)? else {
            return Ok(None);
        };
        let ledger_id: String = self.sql(|c| {
            c.query_row("SELECT value FROM meta WHERE key = 'ledger_id'", [], |r| {
                r.get(0)
            })
        })?;
        read_from_archive(path, &ledger_id, id, archived_at)
    }
}

/// Creates what is missing of the archive's schema (tables, the columns the ledger has,
/// indexes) and its identity when it is new. Returns the `ledger_id` it carries, `None`
/// for a file that holds other tables and no identity (not an archive).
fn prepare_archive(
    tx: &Connection,
    ledger_id: &str,
    wanted: &[Vec<String>],
) -> rusqlite::Result<Option<String>> {
    let tables: i64 = tx.query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))?;
    let has_meta: bool = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'meta')",
        [],
        |r| r.get(0),
    )?;
    if tables > 0 && !has_meta {
        return Ok(None);
    }
    tx.execute_batch(ARCHIVE_EXTRAS)?;
    if tables == 0 {
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('ledger_id', ?1)",
            [ledger_id],
        )?;
    }
    let found: Option<String> = tx
        .query_row("SELECT value FROM meta WHERE key = 'ledger_id'", [], |r| {
            r.get(0)
        })
        .optional()?;
    if found.as_deref() != Some(ledger_id) {
        return Ok(found);
    }
    for ((table, key), cols) in TABLES.iter().zip(wanted) {
        tx.execute_batch(&format!("CREATE TABLE IF NOT EXISTS {table} ({key})"))?;
        let have = columns(tx, "main", table)?;
        for c in cols.iter().filter(|c| !have.contains(c)) {
            tx.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {}", quoted(c)))?;
        }
    }
    tx.execute_batch(ARCHIVE_INDEXES)?;
    Ok(found)
}

/// The four copies of [`Ledger::archive_copy`], `ids` a JSON array. The archive has
/// every column of the ledger (see [`prepare_archive`]), so the ledger's list names
/// them all.
fn copy_rows(tx: &Connection, ids: &str) -> rusqlite::Result<usize> {
    let mut copied = 0;
    for (table, _) in TABLES {
        let cols = columns(tx, "main", table)?
            .iter()
            .map(|c| quoted(c))
            .collect::<Vec<_>>()
            .join(", ");
        // By the keys or indexes each table has: a charge's events by `charge_id`,
        // payloads by their event's id, deliveries by `deliveries_by_charge`.
        let which = match table {
            "event_payloads" => {
                "event_id IN (SELECT id FROM main.charge_events
                              WHERE charge_id IN (SELECT value FROM json_each(?1)))"
            }
            _ => "charge_id IN (SELECT value FROM json_each(?1))",
        };
        let n = tx.execute(
            &format!(
                "INSERT OR REPLACE INTO archive.{table} ({cols})
                 SELECT {cols} FROM main.{table} WHERE {which}"
            ),
            [ids],
        )?;
        if table == "charges" {
            copied = n;
        }
    }
    Ok(copied)
}

/// Whether charge `id` may go: still eligible at `cutoff`, its row in the archive as it
/// is now (`updated_at` moves with every change), and none of its events, payloads or
/// deliveries missing there (events and payloads never change; a delivery that could
/// would be pending, and the charge not eligible).
fn copied_whole(tx: &Connection, id: &str, cutoff: Timestamp) -> rusqlite::Result<bool> {
    tx.prepare_cached(&format!(
        "SELECT 1 FROM main.charges AS c
         WHERE c.charge_id = ?2 AND {ELIGIBLE}
           AND EXISTS (SELECT 1 FROM archive.charges AS a
                       WHERE a.charge_id = c.charge_id AND a.updated_at = c.updated_at)
           AND NOT EXISTS (SELECT 1 FROM main.charge_events AS e
                           WHERE e.charge_id = c.charge_id
                             AND NOT EXISTS (SELECT 1 FROM archive.charge_events AS x
                                             WHERE x.id = e.id))
           AND NOT EXISTS (SELECT 1 FROM main.charge_events AS e
                           JOIN main.event_payloads AS p ON p.event_id = e.id
                           WHERE e.charge_id = c.charge_id
                             AND NOT EXISTS (SELECT 1 FROM archive.event_payloads AS x
                                             WHERE x.event_id = p.event_id))
           AND NOT EXISTS (SELECT 1 FROM main.deliveries AS d
                           WHERE d.charge_id = c.charge_id
                             AND NOT EXISTS (SELECT 1 FROM archive.deliveries AS x
                                             WHERE x.endpoint = d.endpoint
                                               AND x.event_id = d.event_id))"
    ))?
    .exists(params![cutoff, id])
}

/// Deletes charge `id`'s rows from the ledger, leaving its tombstone: see the module doc
/// for `archive_moving`.
fn delete_charge(tx: &Connection, id: &str, now: &str) -> rusqlite::Result<()> {
    for sql in [
        "INSERT INTO main.archived_charges (charge_id, archived_at) VALUES (?1, ?2)
         ON CONFLICT (charge_id) DO NOTHING",
        "INSERT INTO main.archive_moving (charge_id) VALUES (?1)",
        "DELETE FROM main.deliveries WHERE charge_id = ?1",
        "DELETE FROM main.event_payloads
         WHERE event_id IN (SELECT id FROM main.charge_events WHERE charge_id = ?1)",
        "DELETE FROM main.charge_events WHERE charge_id = ?1",
        "DELETE FROM main.charges WHERE charge_id = ?1",
        "DELETE FROM main.archive_moving WHERE charge_id = ?1",
    ] {
        let mut stmt = tx.prepare_cached(sql)?;
        if stmt.parameter_count() == 2 {
            stmt.execute(params![id, now])?;
        } else {
            stmt.execute([id])?;
        }
    }
    Ok(())
}

/// [`Ledger::read_archived`]'s read of the archive file.
fn read_from_archive(
    path: &Path,
    ledger_id: &str,
    id: &str,
    archived_at: String,
) -> Result<Option<ChargeRecord>, LedgerError> {
    let path_buf: PathBuf = path.to_owned();
    let err = |source| LedgerError::Sqlite {
        path: path_buf.clone(),
        source,
    };
    if !path.is_file() {
        return Err(LedgerError::Unusable {
            path: path.to_owned(),
            reason: format!(
                "charge {id} was archived on {archived_at}, but there is no archive here \
                 (check retention.archive_path)"
            ),
        });
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(err)?;
    let found: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = 'ledger_id'", [], |r| {
            r.get(0)
        })
        .optional()
        .or_else(|e| match e {
            // No meta table: not an archive.
            rusqlite::Error::SqliteFailure(..) => Ok(None),
            other => Err(other),
        })
        .map_err(err)?;
    if found.as_deref() != Some(ledger_id) {
        return Err(LedgerError::ForeignArchive {
            path: path.to_owned(),
            expected: ledger_id.to_owned(),
            found: found.unwrap_or_else(|| "none (not an archive)".to_owned()),
        });
    }
    read_charge(&conn, id, Some(archived_at)).map_err(err)
}

fn read_charge(
    conn: &Connection,
    id: &str,
    archived_at: Option<String>,
) -> rusqlite::Result<Option<ChargeRecord>> {
    let names = columns(conn, "main", "charges")?;
    let cols = names
        .iter()
        .map(|c| format!("CAST({} AS TEXT)", quoted(c)))
        .collect::<Vec<_>>()
        .join(", ");
    let row: Option<Vec<Option<String>>> = conn
        .query_row(
            &format!("SELECT {cols} FROM charges WHERE charge_id = ?1"),
            [id],
            |r| (0..names.len()).map(|i| r.get(i)).collect(),
        )
        .optional()?;
    let Some(row) = row else {
        return Ok(None);
    };
    let events = conn
        .prepare(
            "SELECT at, kind, from_state, to_state, detail FROM charge_events
             WHERE charge_id = ?1 ORDER BY id",
        )?
        .query_map([id], |r| {
            Ok([r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?])
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(Some(ChargeRecord {
        archived_at,
        row: names.into_iter().zip(row).collect(),
        events,
    }))
}
