//! After the wall clock stepped back: open charges whose `next_check_at` lies further
//! ahead than the schedule can set it were scheduled while the clock was ahead, and would
//! otherwise wait that long. They are made due now (see [`crate::jobs::clock`]).

use rusqlite::params;

use super::{Ledger, LedgerError, Timestamp};

impl Ledger {
    /// Sets `next_check_at = now` on every open charge whose `next_check_at` is after
    /// `latest`. Returns how many.
    pub fn pull_back_next_checks(
        &self,
        latest: Timestamp,
        now: Timestamp,
    ) -> Result<usize, LedgerError> {
        self.sql(|c| {
            c.execute(
                "UPDATE charges SET next_check_at = ?2
                 WHERE next_check_at > ?1 AND state IN ('pending', 'awaiting')",
                params![latest, now],
            )
        })
    }
}
