//! How a ledger connection waits for SQLite's write lock: it looks again every
//! [`POLL`] until the connection's busy timeout has passed since its first try.
//!
//! Why not SQLite's own handler (what `sqlite3_busy_timeout` installs): it sleeps in
//! growing steps, 1, 2, 5, 10, 15, 20, 25 ms and so on, so a writer that finds the lock
//! taken looks again 1, 3, 8 and then only 18 ms after it began, however soon the lock
//! was freed: a lock held for just over 3 ms costs it 8, one held just over 8 costs 18.
//! Beside retention's steps, waits of 8.4 ms were measured: that third step
//! (docs/operations.md, "Retention"). rusqlite's `busy_handler` takes a plain `fn`,
//! which cannot carry a connection's timeout; SQLite's own `sqlite3_busy_handler` takes
//! an argument for that, so it is called directly.

use std::cell::Cell;
use std::ffi::{c_int, c_void};
use std::time::{Duration, Instant};

use rusqlite::{Connection, ffi};

/// Between two tries at the lock: short beside the pauses a waiting writer should see
/// (a few milliseconds), long beside one try (a few microseconds of shared memory).
const POLL: Duration = Duration::from_millis(1);

thread_local! {
    /// When this thread's current wait began. SQLite calls the handler on the thread of
    /// the statement that waits, with a count of 0 at the first call of each wait.
    static WAIT_BEGAN: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Installs the handler on `conn`: a busy database is retried every [`POLL`] for
/// `timeout`, then the statement fails with `SQLITE_BUSY` as under
/// `sqlite3_busy_timeout`. A zero `timeout` fails at once.
pub(crate) fn poll_when_busy(conn: &Connection, timeout: Duration) -> rusqlite::Result<()> {
    let ms = timeout.as_millis().min(c_int::MAX as u128) as usize;
    // SAFETY: `handle` is the live connection `conn` owns, used on this thread only for
    // this call. The argument is the timeout itself, not a pointer to memory, so there
    // is nothing to free and nothing that could outlive the connection.
    let rc = unsafe {
        ffi::sqlite3_busy_handler(
            conn.handle(),
            Some(on_busy),
            std::ptr::without_provenance_mut(ms),
        )
    };
    if rc == ffi::SQLITE_OK {
        Ok(())
    } else {
        Err(rusqlite::Error::SqliteFailure(ffi::Error::new(rc), None))
    }
}

/// SQLite's callback: non-zero to try again. It must not unwind into C, and nothing
/// here panics.
extern "C" fn on_busy(arg: *mut c_void, count: c_int) -> c_int {
    let timeout = Duration::from_millis(arg.addr() as u64);
    c_int::from(keep_waiting(timeout, count, Instant::now()))
}

/// Whether the `count`-th call of a wait (from 0) at `now` should sleep [`POLL`] and try
/// again; sleeps if so.
fn keep_waiting(timeout: Duration, count: c_int, now: Instant) -> bool {
    let began = WAIT_BEGAN
        .try_with(|b| {
            if count <= 0 {
                b.set(Some(now));
            }
            b.get()
        })
        .ok()
        .flatten()
        .unwrap_or(now);
    // Each earlier call slept at least POLL: a floor that ends the wait even if the
    // thread-local were lost.
    let slept = POLL.saturating_mul(count.max(0) as u32);
    let waited = now.saturating_duration_since(began).max(slept);
    if waited >= timeout {
        return false;
    }
    std::thread::sleep(POLL.min(timeout - waited));
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    use rusqlite::{OpenFlags, TransactionBehavior};

    fn pair(timeout: Duration) -> (tempfile::TempDir, Connection, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.db");
        let open = || {
            let c = Connection::open_with_flags(
                &path,
                OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
            )
            .unwrap();
            c.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE IF NOT EXISTS t (x)")
                .unwrap();
            c
        };
        let holder = open();
        let waiter = open();
        poll_when_busy(&waiter, timeout).unwrap();
        (dir, holder, waiter)
    }

    fn begin(c: &mut Connection) -> rusqlite::Result<rusqlite::Transaction<'_>> {
        c.transaction_with_behavior(TransactionBehavior::Immediate)
    }

    fn is_busy(e: &rusqlite::Error) -> bool {
        e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy)
    }

    #[test]
    fn a_lock_held_past_the_timeout_fails_the_waiter_with_busy() {
        let (_dir, mut holder, mut waiter) = pair(Duration::from_millis(30));
        let _held = begin(&mut holder).unwrap();
        let began = Instant::now();
        let err = begin(&mut waiter).unwrap_err();
        assert!(is_busy(&err), "{err}");
        assert!(began.elapsed() >= Duration::from_millis(30));
    }

    #[test]
    fn a_zero_timeout_fails_at_once() {
        let (_dir, mut holder, mut waiter) = pair(Duration::ZERO);
        let _held = begin(&mut holder).unwrap();
        let err = begin(&mut waiter).unwrap_err();
        assert!(is_busy(&err), "{err}");
    }

    #[test]
    fn a_freed_lock_is_taken_by_the_waiter() {
        let (_dir, mut holder, mut waiter) = pair(Duration::from_secs(5));
        let held = begin(&mut holder).unwrap();
        std::thread::scope(|s| {
            let w = s.spawn(move || begin(&mut waiter).map(|tx| tx.commit()));
            std::thread::sleep(Duration::from_millis(20));
            held.commit().unwrap();
            w.join().unwrap().unwrap().unwrap();
        });
    }

    #[test]
    fn the_wait_is_counted_from_its_first_call() {
        let t0 = Instant::now();
        let timeout = Duration::from_millis(50);
        assert!(keep_waiting(timeout, 0, t0));
        assert!(keep_waiting(timeout, 1, t0 + Duration::from_millis(10)));
        assert!(!keep_waiting(timeout, 2, t0 + Duration::from_millis(50)));
        // A new wait starts its count again.
        assert!(keep_waiting(timeout, 0, t0 + Duration::from_millis(60)));
    }

    #[test]
    fn the_calls_made_bound_the_wait_whatever_the_clock_says() {
        let t0 = Instant::now();
        // 50 calls have slept at least 50 ms, though the instants given say no time passed.
        assert!(!keep_waiting(Duration::from_millis(50), 50, t0));
        assert!(keep_waiting(Duration::from_millis(50), 49, t0));
    }
}
