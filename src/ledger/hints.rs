//! The ledger side of webhook hints: which charge a hint names, the `webhook` event rows,
//! and making hinted charges due. (A hinted charge is read afresh right before its check
//! with [`Ledger::charges_by_id`](super::Ledger::charges_by_id), as `check` reads its.)
//!
//! A hint never changes a `charges` row: only the check that follows it does, through
//! [`Ledger::apply`](super::Ledger::apply) like any other check.

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};

use super::{Ledger, LedgerError, ts};
use crate::domain::{ChargeId, State, StoreId};

/// The `charge_events.kind` of a hint's row; `detail` holds the event name.
pub(super) const WEBHOOK_EVENT: &str = "webhook";

/// One hint to look up and record.
#[derive(Debug, Clone)]
pub struct HintRow {
    pub charge_id: ChargeId,
    pub store_id: StoreId,
    /// The webhook's event name (`charge_updated`, `charge_finished`).
    pub event: &'static str,
    /// When the hint arrived.
    pub at: DateTime<Utc>,
}

/// What the ledger holds for a hinted charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HintTarget {
    /// Open (`pending` or `awaiting`): a `webhook` row was written; check it.
    /// `past_deadline`: its `expires_at` is before the hint, so the hint is most likely
    /// about its expiry.
    Open { past_deadline: bool },
    /// Already `successful` or `failed`: a `webhook` row was written; nothing to check.
    Final,
    /// The ledger holds the id under another store: nothing written, nothing checked.
    OtherStore,
    /// Not in the ledger.
    Unknown,
}

impl Ledger {
    /// Looks up each hinted charge and, for those the ledger holds under the same store,
    /// appends one `webhook` event row (`detail`: the event name), all in one transaction.
    /// Returns what each hint named, in order.
    pub fn record_hints(&mut self, hints: &[HintRow]) -> Result<Vec<HintTarget>, LedgerError> {
        self.write(|tx| {
            let mut look = tx.prepare_cached(
                "SELECT store_id, state, coalesce(expires_at <= ?2, 0) FROM charges WHERE charge_id = ?1",
            )?;
            let mut insert = tx.prepare_cached(
                "INSERT INTO charge_events (charge_id, at, kind, detail) VALUES (?1, ?2, ?3, ?4)",
            )?;
            let mut targets = Vec::with_capacity(hints.len());
            for h in hints {
                let at = ts(h.at);
                let found: Option<(String, String, bool)> = look
                    .query_row(params![h.charge_id.as_str(), at], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })
                    .optional()?;
                let target = match found {
                    None => HintTarget::Unknown,
                    Some((store, _, _)) if store != h.store_id.as_str() => HintTarget::OtherStore,
                    Some((_, state, past_deadline)) => {
                        insert.execute(params![h.charge_id.as_str(), at, WEBHOOK_EVENT, h.event])?;
                        match State::parse(&state) {
                            Some(s) if s.is_final() => HintTarget::Final,
                            _ => HintTarget::Open { past_deadline },
                        }
                    }
                };
                targets.push(target);
            }
            Ok(targets)
        })
    }

    /// Makes the named open charges due at `now` (unless they already are), in one
    /// transaction: hints that could not be followed leave their charge to the next pass.
    pub fn make_due(&mut self, ids: &[ChargeId], now: DateTime<Utc>) -> Result<usize, LedgerError> {
        let now = ts(now);
        self.write(|tx| {
            let mut update = tx.prepare_cached(
                "UPDATE charges SET next_check_at = ?2 WHERE charge_id = ?1 AND next_check_at > ?2",
            )?;
            let mut changed = 0;
            for id in ids {
                changed += update.execute(params![id.as_str(), now])?;
            }
            Ok(changed)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ledger(dir: &std::path::Path) -> Ledger {
        let l = Ledger::open(&dir.join("l.db"), Duration::from_secs(1)).unwrap();
        l.conn()
            .execute_batch(
                "INSERT INTO charges (charge_id, store_id, requested_amount) VALUES ('open', 's1', 100);
                 INSERT INTO charges (charge_id, store_id, requested_amount, state, next_check_at)
                 VALUES ('done', 's1', 100, 'successful', NULL);
                 INSERT INTO charges (charge_id, store_id, requested_amount, expires_at)
                 VALUES ('late', 's1', 100, '2000-01-01T00:00:00.000Z');",
            )
            .unwrap();
        l
    }

    fn hint(id: &str, store: &str) -> HintRow {
        HintRow {
            charge_id: ChargeId::parse(id.to_owned()).unwrap(),
            store_id: StoreId::parse(store.to_owned()).unwrap(),
            event: "charge_finished",
            at: Utc::now(),
        }
    }

    #[test]
    fn hints_are_classified_and_ledger_charges_get_one_row_each() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = ledger(dir.path());
        let got = l
            .record_hints(&[
                hint("open", "s1"),
                hint("open", "s1"),
                hint("late", "s1"),
                hint("done", "s1"),
                hint("open", "s2"),
                hint("nope", "s1"),
            ])
            .unwrap();
        assert_eq!(
            got,
            [
                HintTarget::Open {
                    past_deadline: false
                },
                HintTarget::Open {
                    past_deadline: false
                },
                HintTarget::Open {
                    past_deadline: true
                },
                HintTarget::Final,
                HintTarget::OtherStore,
                HintTarget::Unknown
            ]
        );
        let rows: Vec<(String, String)> = l
            .conn()
            .prepare(
                "SELECT charge_id, detail FROM charge_events WHERE kind = 'webhook' ORDER BY id",
            )
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let want = |id: &str| (id.to_owned(), "charge_finished".to_owned());
        assert_eq!(
            rows,
            [want("open"), want("open"), want("late"), want("done")]
        );
        let touched: i64 = l
            .conn()
            .query_row(
                "SELECT count(*) FROM charges WHERE last_checked_at IS NOT NULL",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(touched, 0, "a hint changes no charge row");
    }

    #[test]
    fn hinted_charges_read_open_and_final_rows() {
        let dir = tempfile::tempdir().unwrap();
        let l = ledger(dir.path());
        let ids = ["open", "done", "nope"].map(|s| ChargeId::parse(s.to_owned()).unwrap());
        let rows = l.charges_by_id(&ids).unwrap();
        let open = rows[0].as_ref().unwrap().as_ref().unwrap();
        assert_eq!(open.tracked.state, State::Pending);
        let done = rows[1].as_ref().unwrap().as_ref().unwrap();
        assert_eq!(done.tracked.state, State::Successful);
        assert!(rows[2].is_none());
    }
}
