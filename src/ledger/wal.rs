//! The write-ahead log and who copies it into the database file.
//!
//! SQLite's default is an automatic checkpoint inside the commit that finds the WAL past
//! 1,000 pages: that commit then copies everything the WAL holds into the database file
//! and syncs it, 10 ms and more on a disk like ours, whoever wrote the pages (a prune
//! round fills the WAL with them). Every ledger connection therefore runs with the
//! automatic checkpoint off ([`WAL_SETTINGS`], set at each open), so no write
//! waits for a copy, and the checkpoints are done by someone who waits for nobody:
//!
//! - in the daemon, the checkpoint job (`crate::jobs::checkpoint`), a passive checkpoint
//!   every second: it takes no lock a writer waits for, and a reader's snapshot (a
//!   `backup`, Litestream) only stops it short of the frames that reader still needs;
//! - a prune round (`crate::jobs::prune`), a passive checkpoint before each of its
//!   steps, in its own pause, so that the step's write can start the WAL over while the
//!   round runs;
//! - in every process, its last connection to close (SQLite's own checkpoint on close,
//!   which also removes the `-wal` file): what ends `--once` and the commands.
//!
//! SQLite starts the WAL over from its beginning only when a writer begins its
//! transaction with every frame copied. A checkpoint reports the frames the WAL held
//! when it began: a write that commits while it runs is not in its count, so "all
//! copied" may already be out of date when it returns, and under writes a few
//! milliseconds apart the WAL may not start over for long ([`RESTART_PAST`] bounds
//! that).

use super::{Ledger, LedgerError, busy};

/// What every connection sets: the automatic checkpoint off. (Not `journal_size_limit`
/// either: it cuts the `-wal` file back inside the commit of the writer that starts
/// the WAL over, a truncate on the write path measured at up to 18 ms. The file keeps
/// the size it reached, at most about [`RESTART_PAST`] frames and a second's writes,
/// until the process's last connection closes and removes it.)
pub(super) const WAL_SETTINGS: &str = "PRAGMA wal_autocheckpoint = 0;";

/// What one checkpoint found and did, in WAL frames (pages).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Checkpointed {
    /// Frames in the WAL.
    pub frames: u64,
    /// Of those, frames now in the database file (this checkpoint's and earlier ones').
    pub copied: u64,
}

impl Checkpointed {
    /// Frames still only in the WAL: a reader's snapshot holds them, or writes came
    /// while the checkpoint ran.
    pub fn behind(&self) -> u64 {
        self.frames.saturating_sub(self.copied)
    }
}

/// WAL frames (4 KiB each: 256 MiB) past which [`Ledger::catch_up`] makes sure the WAL
/// starts over, when its passive checkpoints could not: the bound of the `-wal` file
/// under writes that never pause. High, because the restart holds the write lock for
/// its copy and syncs (9 to 15 ms measured), a pause to every writer.
pub const RESTART_PAST: u64 = 65_536;

/// Checkpoints one [`Ledger::catch_up`] runs, at most.
pub const CATCH_UP_ROUNDS: u32 = 8;

/// Whether [`Ledger::catch_up`] goes again after `last`, the `round`th checkpoint (from
/// 1), whose predecessor left `before` copied: while frames are left and the last one
/// copied some (none copied: a reader holds them, and trying again now changes nothing).
pub fn again(before: u64, last: Checkpointed, round: u32) -> bool {
    last.behind() > 0 && last.copied > before && round < CATCH_UP_ROUNDS
}

impl Ledger {
    /// Passive checkpoints one after the other until the WAL is all copied (at most
    /// `CATCH_UP_ROUNDS`, see `again`). One is not enough while writes keep coming:
    /// it copies the frames there when it began, the writes during it add more, and
    /// SQLite starts the WAL over from its beginning only when a writer finds every
    /// frame copied. Each next one has only the frames written during the last to
    /// copy, so it is shorter, and it soon finds a moment without writes.
    ///
    /// Writes that never stop for a few milliseconds defeat that too (a writer every
    /// 2 ms beside a prune round of 200,000 rows: the `-wal` file reached 400 MB,
    /// docs/operations.md "Figures"); past `RESTART_PAST` frames it then ends with
    /// [`Ledger::restart`].
    pub fn catch_up(&self) -> Result<Checkpointed, LedgerError> {
        let mut last = self.checkpoint()?;
        let mut before = 0;
        let mut round = 1;
        while again(before, last, round) {
            before = last.copied;
            last = self.checkpoint()?;
            round += 1;
        }
        if last.frames > RESTART_PAST {
            last = self.restart()?;
        }
        Ok(last)
    }

    /// A restarting checkpoint that waits for no one. When the write lock is free it
    /// takes it and copies the frames left (the passive checkpoints before it copied the
    /// rest), so no write can come in between, and the next writer starts the WAL over
    /// from its beginning. A writer that comes meanwhile waits for that copy. When the
    /// lock is taken, it copies what it can as a passive one would and leaves the rest
    /// for the next run.
    pub fn restart(&self) -> Result<Checkpointed, LedgerError> {
        self.sql(|c| {
            busy::poll_when_busy(c, std::time::Duration::ZERO)?;
            let done = c.query_row("PRAGMA wal_checkpoint(RESTART)", [], read_checkpointed);
            busy::poll_when_busy(c, self.busy_timeout)?;
            done
        })
    }

    /// A passive checkpoint: copies into the database file what the WAL holds and no
    /// reader still needs, without taking a lock a writer waits for (a checkpoint
    /// already running elsewhere makes it do nothing).
    pub fn checkpoint(&self) -> Result<Checkpointed, LedgerError> {
        self.sql(|c| c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], read_checkpointed))
    }
}

/// The row of `PRAGMA wal_checkpoint`: busy, frames in the WAL, frames copied.
fn read_checkpointed(r: &rusqlite::Row<'_>) -> rusqlite::Result<Checkpointed> {
    let (frames, copied): (i64, i64) = (r.get(1)?, r.get(2)?);
    // -1 for both when the file is not in WAL mode (the open refuses that).
    Ok(Checkpointed {
        frames: frames.max(0) as u64,
        copied: copied.max(0) as u64,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Rows of `t` in the database file alone, as a checkpoint left it.
    fn in_file(dir: &std::path::Path) -> i64 {
        let copy = dir.join("file-only.db");
        std::fs::copy(dir.join("l.db"), &copy).unwrap();
        let n = rusqlite::Connection::open(&copy)
            .unwrap()
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        std::fs::remove_file(copy).unwrap();
        n
    }

    #[test]
    fn no_commit_checkpoints_and_a_checkpoint_copies_everything() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open(&dir.path().join("l.db"), Duration::from_secs(1)).unwrap();
        l.conn()
            .execute_batch("CREATE TABLE t (x BLOB); PRAGMA wal_checkpoint(TRUNCATE);")
            .unwrap();
        // 3,000 commits of a page and more each: three times SQLite's default threshold.
        for _ in 0..3000 {
            l.conn()
                .execute("INSERT INTO t VALUES (randomblob(5000))", [])
                .unwrap();
        }
        assert_eq!(in_file(dir.path()), 0, "a commit copied the WAL");
        let done = l.checkpoint().unwrap();
        assert!(done.frames >= 3000, "{done:?}");
        assert_eq!(done.behind(), 0, "{done:?}");
        assert_eq!(in_file(dir.path()), 3000);
    }

    #[test]
    fn catching_up_goes_on_while_frames_are_left_and_copied_and_rounds_remain() {
        let c = |frames, copied| Checkpointed { frames, copied };
        assert!(!again(0, c(100, 100), 1), "all copied");
        assert!(again(0, c(120, 100), 1), "writes came during it");
        assert!(again(100, c(130, 120), 2));
        assert!(
            !again(100, c(130, 100), 2),
            "nothing copied: a reader holds them"
        );
        assert!(!again(0, c(0, 0), 1), "an empty WAL");
        assert!(again(100, c(130, 120), CATCH_UP_ROUNDS - 1));
        assert!(!again(100, c(130, 120), CATCH_UP_ROUNDS), "the last round");
    }

    /// A ledger with `t` and `n` one-page-plus rows written after a full checkpoint.
    fn written(dir: &std::path::Path, n: usize) -> Ledger {
        let l = Ledger::open(&dir.join("l.db"), Duration::from_secs(5)).unwrap();
        l.conn()
            .execute_batch("CREATE TABLE t (x BLOB); PRAGMA wal_checkpoint(TRUNCATE);")
            .unwrap();
        for _ in 0..n {
            l.conn()
                .execute("INSERT INTO t VALUES (randomblob(5000))", [])
                .unwrap();
        }
        l
    }

    #[test]
    fn a_restart_starts_the_wal_over_and_waits_for_no_writer() {
        let dir = tempfile::tempdir().unwrap();
        let l = written(dir.path(), 300);
        // Another connection holds the write lock: the restart copies without it and
        // returns at once, however long the connection's own busy timeout (5 s).
        let other = rusqlite::Connection::open(dir.path().join("l.db")).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        let began = std::time::Instant::now();
        let passive = l.restart().unwrap();
        assert!(
            began.elapsed() < Duration::from_secs(1),
            "{:?}",
            began.elapsed()
        );
        assert_eq!(passive.behind(), 0, "{passive:?}");
        other.execute_batch("COMMIT").unwrap();
        drop(other);
        l.restart().unwrap();
        // The WAL starts over: one more row writes its frames at the beginning.
        l.conn()
            .execute("INSERT INTO t VALUES (randomblob(5000))", [])
            .unwrap();
        let after = l.checkpoint().unwrap();
        assert!(after.frames < 10, "{after:?}");
        // And the connection waits for a busy lock again as before.
        let other = rusqlite::Connection::open(dir.path().join("l.db")).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            other.execute_batch("COMMIT").unwrap();
        });
        l.conn()
            .execute("INSERT INTO t VALUES (1)", [])
            .expect("waited for the lock");
        t.join().unwrap();
    }

    #[test]
    fn a_reader_s_snapshot_keeps_the_checkpoint_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.db");
        let l = Ledger::open(&path, Duration::from_secs(1)).unwrap();
        l.conn().execute_batch("CREATE TABLE t (x BLOB)").unwrap();
        l.checkpoint().unwrap();
        let reader = rusqlite::Connection::open(&path).unwrap();
        reader.execute_batch("BEGIN").unwrap();
        let _: i64 = reader
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        l.conn()
            .execute("INSERT INTO t VALUES (randomblob(5000))", [])
            .unwrap();
        let held = l.checkpoint().unwrap();
        assert!(held.behind() > 0, "{held:?}");
        assert_eq!(
            l.catch_up().unwrap(),
            held,
            "no copy past the reader, no spinning"
        );
        reader.execute_batch("COMMIT").unwrap();
        assert_eq!(l.checkpoint().unwrap().behind(), 0);
    }
}
