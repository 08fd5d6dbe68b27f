//! One pass at a time, across processes: the pass lock.
//!
//! The daemon and any number of manual `--once` runs may share one ledger. Two passes at
//! once would fetch the same due charges twice and race on their rows, so a process takes
//! an exclusive lock on a file beside the database (`<database.path>.lock`) before a pass
//! and keeps it until the pass's `runs` row is finished. Only the holder of a
//! [`PassGuard`] can start a pass through this module.
//!
//! Why an OS file lock (`flock(2)`, through `fs4`) and not a lease row in SQLite: the
//! kernel drops a `flock` when the last descriptor of the open file goes away, and that
//! includes the holder being killed (SIGKILL, OOM killer, a crash). A lock left behind by
//! a dead process therefore cannot exist, and nothing needs an expiry, a heartbeat or a
//! fencing token. A lease would need all three, and a lease that expires under a holder
//! that is only paused (stopped, swapping, a long GC-like stall) is exactly the double
//! pass it was meant to prevent. While a process holds the lock it is alive, and only it
//! runs a pass, so fencing adds nothing here.
//!
//! The costs, accepted: the lock is advisory (only konbini-reconciler honours it), and it
//! must live on a local file system, which SQLite's WAL mode already demands of the
//! database beside it. `flock` locks belong to an open file description, not a process,
//! so two acquisitions inside one process exclude each other as well (the tests rely on
//! that).
//!
//! The lock is keyed on the database's real file, not on how `database.path` spells it:
//! a symlink, a relative path and `./x/../ledger.db` all name one lock, `<real path>.lock`
//! (see [`PassLock::for_database`]). Otherwise two processes configured with two
//! spellings of one ledger would each hold "the" lock and run passes at once.
//!
//! The file is created on first use and never deleted: removing it while it is held would
//! let the next process lock a new file of the same name while the old holder runs on.
//! It holds the holder's process id, for the operator and for the "lock held" message.
//!
//! This module is a leaf: it knows nothing of passes. Whoever runs a pass takes a
//! [`PassGuard`] first and hands it to the pass as proof that the lock is held.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fs4::fs_std::FileExt;
use tokio_util::sync::CancellationToken;

/// The lock file could not be created, opened or locked (not "someone else holds it").
#[derive(Debug, thiserror::Error)]
#[error("pass lock {path}: {source}")]
pub struct LockError {
    pub(crate) path: PathBuf,
    #[source]
    pub(crate) source: std::io::Error,
}

/// The lock shared by every process that runs passes over one database.
#[derive(Debug, Clone)]
pub struct PassLock {
    path: PathBuf,
}

/// The lock is held by someone else; `holder` is the process id it wrote, when readable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Busy {
    pub(crate) holder: Option<u32>,
}

/// How [`PassLock::acquire_within`] ended.
#[derive(Debug)]
pub(crate) enum Acquired {
    Held(PassGuard),
    /// Still held by another pass when the wait ran out.
    Busy(Busy),
    /// Shutdown was requested while waiting.
    Cancelled,
}

/// How often a waiting `--once` tries the lock again. `flock` cannot wait with a timeout,
/// and a blocking wait on a pool thread could not be abandoned on shutdown.
const RETRY_EVERY: Duration = Duration::from_millis(50);

impl PassLock {
    /// The lock for the database at `database`: the file `<real path>.lock` beside the
    /// database's real file (`real_path`).
    pub fn for_database(database: &Path) -> PassLock {
        let mut name = real_path(database).into_os_string();
        name.push(".lock");
        PassLock {
            path: PathBuf::from(name),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates the lock file if needed, so that a directory the service cannot write to is
    /// a fatal error at start rather than a failed pass at every tick.
    pub(crate) fn ensure_file(&self) -> Result<(), LockError> {
        self.open().map(drop)
    }

    fn open(&self) -> Result<File, LockError> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&self.path)
            .map_err(|source| {
                // The lock is the first thing created beside the database, so this is
                // where a wrong database.path shows up: say that, not just ENOENT.
                match self.path.parent() {
                    Some(dir)
                        if source.kind() == std::io::ErrorKind::NotFound
                            && !dir.as_os_str().is_empty()
                            && !dir.is_dir() =>
                    {
                        self.err(std::io::Error::new(
                            std::io::ErrorKind::NotFound,
                            format!(
                                "directory {} does not exist (check database.path)",
                                dir.display()
                            ),
                        ))
                    }
                    _ => self.err(source),
                }
            })
    }

    fn err(&self, source: std::io::Error) -> LockError {
        LockError {
            path: self.path.clone(),
            source,
        }
    }

    /// Takes the lock if it is free, without waiting.
    ///
    /// A fresh open file each time: `flock` on a descriptor that already holds the lock
    /// would succeed again, and the guard must own the only way to release it.
    pub fn try_acquire(&self) -> Result<Result<PassGuard, Busy>, LockError> {
        let mut file = self.open()?;
        if !file.try_lock_exclusive().map_err(|e| self.err(e))? {
            return Ok(Err(Busy {
                holder: read_pid(&mut file),
            }));
        }
        // Best effort: the pid only informs people, the lock itself is the flock.
        let _ = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "{}", std::process::id()));
        Ok(Ok(PassGuard { _file: file }))
    }

    /// Takes the lock, retrying for up to `wait` while another pass holds it, and giving up
    /// early when `shutdown` is cancelled. A zero `wait` tries exactly once.
    pub(crate) async fn acquire_within(
        &self,
        wait: Duration,
        shutdown: &CancellationToken,
    ) -> Result<Acquired, LockError> {
        let deadline = Instant::now() + wait;
        loop {
            let busy = match self.try_acquire()? {
                Ok(guard) => return Ok(Acquired::Held(guard)),
                Err(busy) => busy,
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(Acquired::Busy(busy));
            }
            tokio::select! {
                () = tokio::time::sleep(left.min(RETRY_EVERY)) => {}
                () = shutdown.cancelled() => return Ok(Acquired::Cancelled),
            }
        }
    }
}

/// Symlinks followed at most this deep, as the kernel does (`MAXSYMLINKS`).
const MAX_SYMLINKS: usize = 40;

/// The real path of a database file, however it is spelled: absolute, with symlinks,
/// `.` and `..` resolved. For a database not created yet, its directory's real path plus
/// its name (a dangling symlink is followed to where the file will be created). When not
/// even the directory exists, `path` as given: opening the lock file then reports the
/// missing directory.
pub(crate) fn real_path(path: &Path) -> PathBuf {
    let mut p = path.to_owned();
    for _ in 0..MAX_SYMLINKS {
        if let Ok(real) = std::fs::canonicalize(&p) {
            return real;
        }
        match std::fs::read_link(&p) {
            // `join` keeps an absolute target as it is and puts a relative one beside the
            // link, as the kernel reads it.
            Ok(target) => p = p.parent().unwrap_or(Path::new("")).join(target),
            Err(_) => break,
        }
    }
    let (Some(dir), Some(name)) = (p.parent(), p.file_name()) else {
        return path.to_owned();
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    std::fs::canonicalize(dir).map_or_else(|_| path.to_owned(), |d| d.join(name))
}

fn read_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.rewind().ok()?;
    file.take(32).read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

/// Proof that this process holds the pass lock; dropping it releases the lock. Nothing
/// else can make one, so a function that takes `&PassGuard` runs only under the lock.
#[derive(Debug)]
pub struct PassGuard {
    /// The locked open file. Closing it (on drop) is what releases the lock.
    _file: File,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_file_sits_beside_the_database() {
        let lock = PassLock::for_database(Path::new("/var/lib/k/ledger.db"));
        assert_eq!(lock.path(), Path::new("/var/lib/k/ledger.db.lock"));
    }

    #[test]
    fn every_spelling_of_one_database_shares_one_lock() {
        let dir = tempfile::tempdir().unwrap();
        let real = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::create_dir(real.join("x")).unwrap();
        let want = real.join("ledger.db.lock");
        // Not created yet, then created: the same lock either way.
        for create in [false, true] {
            if create {
                std::fs::write(real.join("ledger.db"), b"").unwrap();
                std::os::unix::fs::symlink(real.join("ledger.db"), real.join("link.db")).unwrap();
                std::os::unix::fs::symlink("x/../ledger.db", real.join("x/../rel-link.db"))
                    .unwrap();
            }
            let mut spellings = vec![
                real.join("ledger.db"),
                real.join("x/../ledger.db"),
                real.join("./x/.././ledger.db"),
            ];
            if create {
                spellings.push(real.join("link.db"));
                spellings.push(real.join("rel-link.db"));
            }
            for p in spellings {
                assert_eq!(PassLock::for_database(&p).path(), want, "{}", p.display());
            }
        }
        // A dangling symlink leads to where the database will be created.
        std::os::unix::fs::symlink(real.join("later.db"), real.join("dangling.db")).unwrap();
        assert_eq!(
            PassLock::for_database(&real.join("dangling.db")).path(),
            real.join("later.db.lock")
        );
        // And the lock itself holds across spellings.
        let held = PassLock::for_database(&real.join("link.db"))
            .try_acquire()
            .unwrap()
            .unwrap();
        assert!(
            PassLock::for_database(&real.join("x/../ledger.db"))
                .try_acquire()
                .unwrap()
                .is_err()
        );
        drop(held);
    }

    #[test]
    fn one_holder_at_a_time_and_release_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let lock = PassLock::for_database(&dir.path().join("l.db"));
        let held = lock.try_acquire().unwrap().expect("free at first");
        let busy = lock.try_acquire().unwrap().expect_err("held");
        assert_eq!(busy.holder, Some(std::process::id()));
        // Another handle on the same file, as a second process would have.
        let other = PassLock::for_database(&dir.path().join("l.db"));
        assert!(other.try_acquire().unwrap().is_err());
        drop(held);
        assert!(other.try_acquire().unwrap().is_ok(), "released on drop");
    }

    #[tokio::test]
    async fn waiting_gives_up_at_the_deadline_or_on_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let lock = PassLock::for_database(&dir.path().join("l.db"));
        let _held = lock.try_acquire().unwrap().unwrap();
        let started = Instant::now();
        let r = lock
            .acquire_within(Duration::from_millis(200), &CancellationToken::new())
            .await
            .unwrap();
        assert!(matches!(r, Acquired::Busy(_)), "{r:?}");
        assert!(started.elapsed() >= Duration::from_millis(200));

        let stop = CancellationToken::new();
        stop.cancel();
        let r = lock
            .acquire_within(Duration::from_secs(60), &stop)
            .await
            .unwrap();
        assert!(matches!(r, Acquired::Cancelled), "{r:?}");
    }

    #[tokio::test]
    async fn waiting_gets_the_lock_once_it_is_released() {
        let dir = tempfile::tempdir().unwrap();
        let lock = PassLock::for_database(&dir.path().join("l.db"));
        let held = lock.try_acquire().unwrap().unwrap();
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(150)).await;
            drop(held);
        });
        let started = Instant::now();
        let r = lock
            .acquire_within(Duration::from_secs(10), &CancellationToken::new())
            .await
            .unwrap();
        assert!(matches!(r, Acquired::Held(_)), "{r:?}");
        assert!(started.elapsed() >= Duration::from_millis(150));
        release.await.unwrap();
    }

    #[test]
    fn an_unwritable_place_is_an_error_naming_the_file() {
        let lock = PassLock::for_database(Path::new("/nonexistent-dir/l.db"));
        let e = lock.ensure_file().unwrap_err();
        assert!(e.to_string().contains("/nonexistent-dir/l.db.lock"), "{e}");
    }
}
