//! `runs.requests`: the requests a run sent to UnivaPay, written by the run protocol
//! ([`crate::reconcile::run`]) when the run ends, read by `status` and the metrics.

use rusqlite::params;

use super::{Ledger, LedgerError};

impl Ledger {
    /// Records the requests run `run_id` sent.
    pub fn set_run_requests(&self, run_id: i64, requests: u64) -> Result<(), LedgerError> {
        let requests = i64::try_from(requests).unwrap_or(i64::MAX);
        self.sql(|c| {
            c.execute(
                "UPDATE runs SET requests = ?2 WHERE id = ?1",
                params![run_id, requests],
            )
        })?;
        Ok(())
    }
}
