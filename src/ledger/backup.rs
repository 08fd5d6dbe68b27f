//! `backup DEST`: a consistent copy of the ledger, taken beside a running daemon.
//!
//! The copy is SQLite's online backup API in one step: one read transaction over the
//! whole database, which in WAL mode never blocks the daemon's writes and is never
//! restarted by them, so the copy is the ledger as of one commit. It is written to a
//! temporary file beside DEST, checked with `PRAGMA integrity_check`, flushed to disk
//! and only then renamed onto DEST, and the directory is flushed too: after a crash, a
//! kill or a full disk there is either no DEST or a whole one, never half a file.
//!
//! What DEST may be is decided by [`refusal`], a pure function over resolved paths and
//! file identities: never the live database or one of its companion files (`-wal`,
//! `-shm`, `-journal`, the pass lock), by any name (a symlink, a hard link, `..`), and
//! never an existing file unless the operator asked to replace it.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};

use super::error::describe as sqlite_message;
use super::{Ledger, LedgerError};
use crate::lock::{PassLock, real_path};

/// How many times a step that found the source busy is retried, `BUSY_PAUSE` apart,
/// before the backup gives up (the WAL-mode reader it needs is almost never refused).
const BUSY_RETRIES: u32 = 200;
const BUSY_PAUSE: Duration = Duration::from_millis(25);
/// Lines of `PRAGMA integrity_check` quoted in an error.
const MAX_PROBLEMS: usize = 3;

/// Why no backup was written. DEST is left as it was in every case.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// DEST names the live database or one of its companion files.
    #[error("refusing to write the backup to {dest}: it is {what} ({live}); name another file")]
    LiveDatabase {
        dest: PathBuf,
        live: PathBuf,
        what: &'static str,
    },
    /// DEST exists and replacing it was not asked for.
    #[error("{dest} already exists; pass --force to replace it, or name a new file")]
    Exists { dest: PathBuf },
    /// DEST cannot be a file: it is a directory, or its directory is missing.
    #[error("cannot write the backup to {dest}: {reason}")]
    BadDestination { dest: PathBuf, reason: String },
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// Making the copy failed (the disk is full, the ledger stayed locked, ...); the
    /// partial copy was removed.
    #[error("cannot write the backup to {dest}: {message}")]
    Copy { dest: PathBuf, message: String },
    /// The copy did not pass `PRAGMA integrity_check`; it was removed.
    #[error("the copy failed PRAGMA integrity_check and was removed: {problems}")]
    Integrity { problems: String },
    /// Creating, writing, flushing or renaming a file failed.
    #[error("cannot write the backup to {dest}: {step}: {source}")]
    Io {
        dest: PathBuf,
        step: &'static str,
        source: std::io::Error,
    },
}

/// A written backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub dest: PathBuf,
    pub bytes: u64,
    pub charges: i64,
    pub events: i64,
    pub runs: i64,
}

/// A path as the kernel resolves it, and the file it names if there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub path: PathBuf,
    /// Device and inode of the file (following symlinks), when it exists.
    pub file: Option<(u64, u64)>,
    pub is_dir: bool,
}

impl Place {
    /// Resolves `path`: symlinks and `..` followed as far as they lead.
    pub fn of(path: &Path) -> Place {
        let meta = std::fs::metadata(path).ok();
        Place {
            path: real_path(path),
            file: meta.as_ref().map(|m| (m.dev(), m.ino())),
            is_dir: meta.is_some_and(|m| m.is_dir()),
        }
    }
}

/// The files a backup must never replace, each with what it is.
pub fn guarded(live: &Path) -> Vec<(&'static str, Place)> {
    let beside = |suffix: &str| {
        let mut name = real_path(live).into_os_string();
        name.push(suffix);
        Place::of(&PathBuf::from(name))
    };
    vec![
        ("the live database", Place::of(live)),
        ("the live database's write-ahead log", beside("-wal")),
        ("the live database's shared-memory index", beside("-shm")),
        ("the live database's rollback journal", beside("-journal")),
        (
            "the pass lock",
            Place::of(PassLock::for_database(live).path()),
        ),
    ]
}

/// Why `dest` may not receive the backup, or `None` when it may. `live` is the
/// database's path as configured (for the message); `guarded` comes from [`guarded`].
pub fn refusal(
    dest_path: &Path,
    dest: &Place,
    live: &Path,
    guarded: &[(&'static str, Place)],
    force: bool,
) -> Option<BackupError> {
    let hit = guarded
        .iter()
        .find(|(_, g)| g.path == dest.path || (g.file.is_some() && g.file == dest.file));
    if let Some((what, _)) = hit {
        return Some(BackupError::LiveDatabase {
            dest: dest_path.to_owned(),
            live: live.to_owned(),
            what,
        });
    }
    if dest.is_dir {
        return Some(BackupError::BadDestination {
            dest: dest_path.to_owned(),
            reason: "it is a directory; name the file to write".into(),
        });
    }
    if dest.file.is_some() && !force {
        return Some(BackupError::Exists {
            dest: dest_path.to_owned(),
        });
    }
    None
}

/// Copies the ledger at `live` to `dest` (see the module doc). `force` allows replacing
/// an existing `dest`.
pub fn backup(
    live: &Path,
    busy_timeout: Duration,
    dest: &Path,
    force: bool,
) -> Result<Written, BackupError> {
    let place = Place::of(dest);
    if let Some(refused) = refusal(dest, &place, live, &guarded(live), force) {
        return Err(refused);
    }
    let dir = parent_dir(dest)?;
    let ledger = Ledger::open_if_exists(live, busy_timeout)?;
    let io = |step| {
        move |source| BackupError::Io {
            dest: dest.to_owned(),
            step,
            source,
        }
    };
    let name = dest.file_name().unwrap_or_default().to_string_lossy();
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".partial")
        .tempfile_in(&dir)
        .map_err(io("creating a temporary file beside it"))?;
    let mut written = copy_into(&ledger, tmp.path(), dest)?;
    drop(ledger);
    tmp.as_file().sync_all().map_err(io("flushing the copy"))?;
    written.bytes = tmp
        .as_file()
        .metadata()
        .map_err(io("reading its size"))?
        .len();
    if force {
        tmp.persist(dest)
            .map_err(|e| io("renaming it into place")(e.error))?;
    } else {
        // Never over a DEST that appeared since the check (a rename that does not replace).
        tmp.persist_noclobber(dest)
            .map_err(|e| match e.error.kind() {
                std::io::ErrorKind::AlreadyExists => BackupError::Exists {
                    dest: dest.to_owned(),
                },
                _ => io("moving it into place")(e.error),
            })?;
    }
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(io("flushing its directory"))?;
    Ok(written)
}

fn parent_dir(dest: &Path) -> Result<PathBuf, BackupError> {
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    if dest.file_name().is_none() || !dir.is_dir() {
        return Err(BackupError::BadDestination {
            dest: dest.to_owned(),
            reason: format!("directory {} does not exist", dir.display()),
        });
    }
    Ok(dir)
}

/// The backup proper: the whole database in one step into `tmp`, then the check and the
/// counts, read from the copy.
fn copy_into(ledger: &Ledger, tmp: &Path, dest: &Path) -> Result<Written, BackupError> {
    let sqlite = |e: rusqlite::Error| BackupError::Copy {
        dest: dest.to_owned(),
        message: sqlite_message(&e),
    };
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut copy = Connection::open_with_flags(tmp, flags).map_err(sqlite)?;
    {
        let backup = Backup::new(&ledger.conn, &mut copy).map_err(sqlite)?;
        let mut busy = 0;
        // -1: every page in one step, under one read transaction of the source.
        loop {
            match backup.step(-1).map_err(sqlite)? {
                StepResult::Done => break,
                StepResult::More => {}
                StepResult::Busy | StepResult::Locked if busy < BUSY_RETRIES => {
                    busy += 1;
                    std::thread::sleep(BUSY_PAUSE);
                }
                _ => {
                    return Err(sqlite(rusqlite::Error::SqliteFailure(
                        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
                        Some("the database stayed locked; no backup was written".into()),
                    )));
                }
            }
        }
    }
    check_integrity(&copy).map_err(|e| match e {
        Ok(problems) => BackupError::Integrity { problems },
        Err(e) => sqlite(e),
    })?;
    let count = |table: &str| {
        copy.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .map_err(sqlite)
    };
    let written = Written {
        dest: dest.to_owned(),
        bytes: 0,
        charges: count("charges")?,
        events: count("charge_events")?,
        runs: count("runs")?,
    };
    copy.close().map_err(|(_, e)| sqlite(e))?;
    Ok(written)
}

/// `Ok(())` when the check says `ok`; otherwise its first lines (`Err(Ok(..))`) or the
/// error that kept it from running (`Err(Err(..))`).
fn check_integrity(conn: &Connection) -> Result<(), Result<String, rusqlite::Error>> {
    let mut stmt = conn.prepare("PRAGMA integrity_check").map_err(Err)?;
    let lines: Vec<String> = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .map_err(Err)?
        .take(MAX_PROBLEMS)
        .collect::<Result<_, _>>()
        .map_err(Err)?;
    if lines == ["ok"] {
        Ok(())
    } else {
        Err(Ok(crate::domain::text::one_line(&lines.join("; "))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place(path: &str, file: Option<(u64, u64)>) -> Place {
        Place {
            path: PathBuf::from(path),
            file,
            is_dir: false,
        }
    }

    fn live() -> Vec<(&'static str, Place)> {
        vec![
            (
                "the live database",
                place("/var/lib/k/ledger.db", Some((1, 10))),
            ),
            (
                "the live database's write-ahead log",
                place("/var/lib/k/ledger.db-wal", Some((1, 11))),
            ),
            ("the pass lock", place("/var/lib/k/ledger.db.lock", None)),
        ]
    }

    fn refused(dest: &Place, force: bool) -> Option<String> {
        refusal(
            Path::new("DEST"),
            dest,
            Path::new("ledger.db"),
            &live(),
            force,
        )
        .map(|e| e.to_string())
    }

    #[test]
    fn the_live_files_are_refused_by_path_or_by_inode_even_with_force() {
        for force in [false, true] {
            let same_path = refused(&place("/var/lib/k/ledger.db", Some((1, 10))), force);
            assert!(
                same_path
                    .unwrap()
                    .contains("it is the live database (ledger.db)")
            );
            let hard_link = refused(&place("/srv/copy.db", Some((1, 10))), force);
            assert!(hard_link.unwrap().contains("it is the live database "));
            let wal = refused(&place("/srv/other", Some((1, 11))), force);
            assert!(wal.unwrap().contains("write-ahead log"));
            // The lock file does not exist yet: its path alone is enough.
            let lock = refused(&place("/var/lib/k/ledger.db.lock", None), force);
            assert!(lock.unwrap().contains("the pass lock"));
        }
    }

    #[test]
    fn an_existing_file_needs_force_and_a_new_one_does_not() {
        let existing = place("/srv/backup.db", Some((1, 99)));
        assert!(refused(&existing, false).unwrap().contains("--force"));
        assert_eq!(refused(&existing, true), None);
        assert_eq!(refused(&place("/srv/new.db", None), false), None);
        // Another device, same inode number: another file.
        assert_eq!(refused(&place("/srv/new.db", Some((2, 10))), true), None);
    }

    #[test]
    fn a_directory_is_refused() {
        let dir = Place {
            path: PathBuf::from("/srv"),
            file: Some((1, 2)),
            is_dir: true,
        };
        assert!(refused(&dir, true).unwrap().contains("is a directory"));
    }
}
