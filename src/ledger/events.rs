//! Reading `charge_events`, the append-only history (the schema refuses to update any
//! row and to delete any but `webhook` rows): when each charge's life was seen to end,
//! and when its end was first hinted, for the measurements of detection latency.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use super::{Ledger, LedgerError, Timestamp, WEBHOOK_EVENT};

/// When a charge was seen to end, and when a webhook first said it had.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ending {
    /// The time of its transition into `successful` or `failed`.
    pub finalized_at: Option<DateTime<Utc>>,
    /// The time of its first `webhook` event for `charge_finished`.
    pub finished_hint_at: Option<DateTime<Utc>>,
}

impl Ledger {
    /// Every charge with events, by id, and when it was seen to end. One scan of the
    /// events; a time that is not readable counts as not seen.
    pub fn endings(&self) -> Result<HashMap<String, Ending>, LedgerError> {
        let rows: Vec<(String, Option<String>, Option<String>)> = self.sql(|c| {
            let mut stmt = c.prepare(
                "SELECT charge_id,
                        min(CASE WHEN kind = 'transition' AND to_state IN ('successful', 'failed')
                                 THEN at END),
                        min(CASE WHEN kind = ?1 AND detail = 'charge_finished' THEN at END)
                 FROM charge_events GROUP BY charge_id",
            )?;
            let rows =
                stmt.query_map([WEBHOOK_EVENT], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            rows.collect()
        })?;
        let time = |t: Option<String>| {
            t.and_then(|t| Timestamp::parse(&t))
                .map(Timestamp::to_datetime)
        };
        Ok(rows
            .into_iter()
            .map(|(id, end, hint)| {
                let ending = Ending {
                    finalized_at: time(end),
                    finished_hint_at: time(hint),
                };
                (id, ending)
            })
            .collect())
    }
}
