//! What can go wrong with the ledger, as one error type that names the file.
//!
//! SQLite's own failures keep their [`rusqlite::Error`] as the source, so a caller can
//! tell a locked database from a corrupt one by its code ([`LedgerError::sqlite_code`])
//! rather than by the words of a message. The text (`Display`) is the one line a user
//! sees: it names the file and the cause, with a hint where SQLite's words alone would
//! send the reader the wrong way.

use std::path::PathBuf;

use rusqlite::ErrorCode;

use crate::domain::text::one_line;

/// A failure of the ledger. Each variant names the database file.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The file cannot be used as a ledger before SQLite is even asked (not a regular
    /// file, its directory missing, no database where one must already exist).
    #[error("cannot open database {path}: {reason}")]
    Unusable { path: PathBuf, reason: String },
    /// The ledger this process opened before is no longer at its path (removed, or its
    /// directory unmounted). It is never recreated behind the process's back.
    #[error(
        "database {path} is gone: the ledger this process opened was removed or its file \
         system unmounted; it is not recreated (restore it, or restart to create a new one)"
    )]
    Vanished { path: PathBuf },
    /// Another ledger (or a file that is none) took the place of the one this process
    /// opened before. It is never adopted behind the process's back.
    #[error(
        "database {path} was replaced: it carries ledger id {found}, this process opened \
         ledger id {expected}; it is not adopted (put the right file back, or restart to \
         adopt it)"
    )]
    Replaced {
        path: PathBuf,
        expected: String,
        found: String,
    },
    /// The archive file belongs to another ledger (or is no archive at all). It is never
    /// written to nor read as this ledger's.
    #[error(
        "archive {path} is not this ledger's: it carries ledger id {found}, the ledger is \
         {expected}; nothing was archived (check retention.archive_path)"
    )]
    ForeignArchive {
        path: PathBuf,
        expected: String,
        found: String,
    },
    /// SQLite's integrity check found damage.
    #[error("database {path} is corrupt ({detail}); restore it from a backup (see docs/ledger.md)")]
    Corrupt { path: PathBuf, detail: String },
    /// The schema cannot be brought up to date.
    #[error("cannot migrate database {path}: {}", describe_migration(source))]
    Migrate {
        path: PathBuf,
        #[source]
        source: rusqlite_migration::Error,
    },
    /// SQLite failed: opening, reading or writing.
    #[error("database {path}: {}", describe(source))]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    /// The database thread ended without an answer (it panicked).
    #[error("database {path}: database worker stopped unexpectedly: {message}")]
    Worker { path: PathBuf, message: String },
}

impl LedgerError {
    /// SQLite's error code, when SQLite itself failed: `DatabaseBusy` (the write lock was
    /// held for longer than `database.busy_timeout`), `DatabaseCorrupt`, `DiskFull`, ...
    pub fn sqlite_code(&self) -> Option<ErrorCode> {
        let e = match self {
            LedgerError::Sqlite { source, .. } => source,
            LedgerError::Migrate {
                source: rusqlite_migration::Error::RusqliteError { err, .. },
                ..
            } => err,
            _ => return None,
        };
        e.sqlite_error_code()
    }

    /// Whether the ledger this process opened is no longer the one at its path.
    pub fn is_lost(&self) -> bool {
        matches!(
            self,
            LedgerError::Vanished { .. } | LedgerError::Replaced { .. }
        )
    }
}

/// SQLite's message on one line, with what to look at where its words mislead.
pub(crate) fn describe(e: &rusqlite::Error) -> String {
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

fn describe_migration(e: &rusqlite_migration::Error) -> String {
    match e {
        rusqlite_migration::Error::RusqliteError { err, .. } => describe(err),
        rusqlite_migration::Error::MigrationDefinition(
            rusqlite_migration::MigrationDefinitionError::DatabaseTooFarAhead,
        ) => "its schema is newer than this version of konbini-reconciler knows \
              (PRAGMA user_version); run the newer version"
            .to_owned(),
        other => one_line(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn sqlite_failures_keep_their_source_and_code() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let source = conn
            .execute("INSERT INTO nowhere VALUES (1)", [])
            .unwrap_err();
        let e = LedgerError::Sqlite {
            path: "l.db".into(),
            source,
        };
        assert_eq!(e.to_string(), "database l.db: no such table: nowhere");
        assert!(e.source().is_some());
        assert_eq!(e.sqlite_code(), Some(ErrorCode::Unknown));
        let busy = LedgerError::Sqlite {
            path: "l.db".into(),
            source: rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
                Some("database is locked".into()),
            ),
        };
        assert_eq!(busy.sqlite_code(), Some(ErrorCode::DatabaseBusy));
        assert!(busy.to_string().contains("database.busy_timeout"), "{busy}");
    }
}
