//! The ledger side of webhook hints: which charge a hint names, the `webhook` event rows,
//! and making hinted charges due. (A hinted charge is read afresh right before its check
//! with [`Ledger::charges_by_id`](super::Ledger::charges_by_id), as `check` reads its.)
//!
//! A hint never changes a `charges` row: only the check that follows it does, through
//! [`Ledger::apply`](super::Ledger::apply) like any other check.
//!
//! Hints are coalesced here as they are in GETs, so that no flood of hints, from a
//! sender with the token or from UnivaPay's own retries, grows the ledger beyond a
//! bound: an open charge gets one `webhook` row per check its hints caused, written when
//! that check starts ([`Ledger::record_hint_checks`]), and a final charge, which no hint
//! makes checked again, at most one row a minute ([`FINAL_ROW_EVERY`]). A row's `detail`
//! names the events and how many of each arrived ([`HintEvents::detail`]), e.g.
//! `charge_finished x3, cancel_finished x1`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};

use super::{Ledger, LedgerError, ts};
use crate::domain::{ChargeId, State, StoreId};

/// The `charge_events.kind` of a hint's row; `detail` holds the events and their counts.
pub(super) const WEBHOOK_EVENT: &str = "webhook";

/// A final charge gets at most one `webhook` row per this long; hints in between are not
/// written (the listener counts them).
pub const FINAL_ROW_EVERY: Duration = Duration::from_secs(60);

/// Most distinct event names one row names; the rest are summed up as `other`.
const MAX_NAMES: usize = 8;

/// The events of the hints behind one row, in the order they first arrived, with counts.
/// Bounded: at most 8 names (each already bounded by the listener), the rest
/// counted as `other`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HintEvents {
    names: Vec<(String, u64)>,
    other: u64,
}

impl HintEvents {
    /// One more hint of `event`.
    pub fn add(&mut self, event: &str) {
        self.add_n(event, 1);
    }

    fn add_n(&mut self, event: &str, n: u64) {
        if let Some((_, c)) = self.names.iter_mut().find(|(name, _)| name == event) {
            *c = c.saturating_add(n);
        } else if self.names.len() < MAX_NAMES {
            self.names.push((event.to_owned(), n));
        } else {
            self.other = self.other.saturating_add(n);
        }
    }

    /// Adds `more`'s counts to these.
    pub fn merge(&mut self, more: HintEvents) {
        for (name, n) in more.names {
            self.add_n(&name, n);
        }
        self.other = self.other.saturating_add(more.other);
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty() && self.other == 0
    }

    /// How many hints in all.
    pub fn total(&self) -> u64 {
        self.names
            .iter()
            .fold(self.other, |t, (_, n)| t.saturating_add(*n))
    }

    /// The row's `detail`: `name xN` for each event, then `other xN`, comma-separated.
    pub fn detail(&self) -> String {
        let mut parts: Vec<String> = self
            .names
            .iter()
            .map(|(e, n)| format!("{e} x{n}"))
            .collect();
        if self.other > 0 {
            parts.push(format!("other x{}", self.other));
        }
        parts.join(", ")
    }
}

/// One hint to look up.
#[derive(Debug, Clone)]
pub struct HintRow {
    pub charge_id: ChargeId,
    pub store_id: StoreId,
    /// The webhook's event name (`charge_updated`, `cancel_finished`, ...), bounded and
    /// sanitised by the listener.
    pub event: String,
    /// When the hint arrived.
    pub at: DateTime<Utc>,
}

/// The `webhook` row of one check that hints caused.
#[derive(Debug, Clone)]
pub struct HintCheck {
    pub charge_id: ChargeId,
    pub events: HintEvents,
    /// When the check started.
    pub at: DateTime<Utc>,
}

/// What the ledger holds for a hinted charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HintTarget {
    /// Open (`pending` or `awaiting`): check it (its row comes with the check).
    /// `past_deadline`: its `expires_at` is before the hint, so the hint is most likely
    /// about its expiry.
    Open { past_deadline: bool },
    /// Already `successful` or `failed`: nothing to check; a `webhook` row at most once
    /// per minute.
    Final,
    /// The ledger holds the id under another store: nothing written, nothing checked.
    OtherStore,
    /// Archived (moved to the archive file, final): nothing written, nothing checked,
    /// never registered again.
    Archived,
    /// Not in the ledger.
    Unknown,
}

impl Ledger {
    /// Looks up each hinted charge, in one transaction, and returns what each hint named,
    /// in order. Open charges get their row when their check starts
    /// ([`record_hint_checks`](Self::record_hint_checks)); a final charge gets one row for
    /// this batch's hints unless it got one within the last minute.
    pub fn record_hints(&mut self, hints: &[HintRow]) -> Result<Vec<HintTarget>, LedgerError> {
        self.write(|tx| {
        let mut targets = Vec::with_capacity(hints.len());
        // Final charges hinted in this batch, in order of first hint.
        let mut finals: Vec<(&ChargeId, DateTime<Utc>, HintEvents)> = Vec::new();
        {
            let mut look = tx
                .prepare_cached(
                    "SELECT store_id, state, coalesce(expires_at <= ?2, 0) FROM charges WHERE charge_id = ?1",
                )?;
            let mut archived = tx
                .prepare_cached("SELECT 1 FROM archived_charges WHERE charge_id = ?1")?;
            for h in hints {
                let found: Option<(String, String, bool)> = look
                    .query_row(params![h.charge_id.as_str(), ts(h.at)], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })
                    .optional()?;
                let target = match found {
                    None if archived.exists([h.charge_id.as_str()])? => HintTarget::Archived,
                    None => HintTarget::Unknown,
                    Some((store, _, _)) if store != h.store_id.as_str() => HintTarget::OtherStore,
                    Some((_, state, past_deadline)) => match State::parse(&state) {
                        Some(s) if s.is_final() => {
                            match finals.iter_mut().find(|f| *f.0 == h.charge_id) {
                                Some(f) => f.2.add(&h.event),
                                None => {
                                    let mut e = HintEvents::default();
                                    e.add(&h.event);
                                    finals.push((&h.charge_id, h.at, e));
                                }
                            }
                            HintTarget::Final
                        }
                        _ => HintTarget::Open { past_deadline },
                    },
                };
                targets.push(target);
            }
            let mut recent = tx
                .prepare_cached(
                    "SELECT 1 FROM charge_events WHERE charge_id = ?1 AND kind = ?2 AND at > ?3 LIMIT 1",
                )?;
            for (id, at, events) in finals {
                let since = at - chrono::Duration::from_std(FINAL_ROW_EVERY).unwrap_or_default();
                let written = recent
                    .exists(params![id.as_str(), WEBHOOK_EVENT, ts(since)])?;
                if !written {
                    insert_row(tx, id, at, &events)?;
                }
            }
        }
        Ok(targets)
        })
    }

    /// Writes the `webhook` row of each check that hints caused (those with no events are
    /// skipped), in one transaction.
    pub fn record_hint_checks(&mut self, checks: &[HintCheck]) -> Result<(), LedgerError> {
        if checks.iter().all(|c| c.events.is_empty()) {
            return Ok(());
        }
        self.write(|tx| {
            for c in checks.iter().filter(|c| !c.events.is_empty()) {
                insert_row(tx, &c.charge_id, c.at, &c.events)?;
            }
            Ok(())
        })
    }

    /// Makes the named open charges due at `now` (unless they already are), in one
    /// transaction: hints that could not be followed leave their charge to the next pass.
    pub fn make_due(&mut self, ids: &[ChargeId], now: DateTime<Utc>) -> Result<usize, LedgerError> {
        self.write(|tx| {
        let mut changed = 0;
        {
            let mut update = tx
                .prepare_cached(
                    "UPDATE charges SET next_check_at = ?2 WHERE charge_id = ?1 AND next_check_at > ?2",
                )?;
            let now = ts(now);
            for id in ids {
                changed += update.execute(params![id.as_str(), now])?;
            }
        }
        Ok(changed)
        })
    }
}

fn insert_row(
    tx: &rusqlite::Transaction<'_>,
    id: &ChargeId,
    at: DateTime<Utc>,
    events: &HintEvents,
) -> rusqlite::Result<usize> {
    tx.prepare_cached(
        "INSERT INTO charge_events (charge_id, at, kind, detail) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![id.as_str(), ts(at), WEBHOOK_EVENT, events.detail()])
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
            event: "charge_finished".into(),
            at: Utc::now(),
        }
    }

    fn webhook_rows(l: &Ledger) -> Vec<(String, String)> {
        l.conn()
            .prepare(
                "SELECT charge_id, detail FROM charge_events WHERE kind = 'webhook' ORDER BY id",
            )
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn hints_are_classified_and_only_final_charges_get_a_row_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = ledger(dir.path());
        let mut cancel = hint("done", "s1");
        cancel.event = "cancel_finished".into();
        let got = l
            .record_hints(&[
                hint("open", "s1"),
                hint("open", "s1"),
                hint("late", "s1"),
                hint("done", "s1"),
                cancel,
                hint("done", "s1"),
                hint("open", "s2"),
                hint("nope", "s1"),
            ])
            .unwrap();
        let open = HintTarget::Open {
            past_deadline: false,
        };
        assert_eq!(
            got,
            [
                open,
                open,
                HintTarget::Open {
                    past_deadline: true
                },
                HintTarget::Final,
                HintTarget::Final,
                HintTarget::Final,
                HintTarget::OtherStore,
                HintTarget::Unknown
            ]
        );
        let row = |id: &str, d: &str| (id.to_owned(), d.to_owned());
        assert_eq!(
            webhook_rows(&l),
            [row("done", "charge_finished x2, cancel_finished x1")]
        );
        // Within the minute, more hints for the final charge write nothing more.
        l.record_hints(&[hint("done", "s1"), hint("done", "s1")])
            .unwrap();
        assert_eq!(webhook_rows(&l).len(), 1);
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
    fn a_final_charge_gets_a_row_again_after_a_minute() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = ledger(dir.path());
        let mut h = hint("done", "s1");
        l.record_hints(std::slice::from_ref(&h)).unwrap();
        h.at += chrono::Duration::seconds(59);
        l.record_hints(std::slice::from_ref(&h)).unwrap();
        h.at += chrono::Duration::seconds(2);
        l.record_hints(std::slice::from_ref(&h)).unwrap();
        assert_eq!(webhook_rows(&l).len(), 2);
    }

    #[test]
    fn a_check_caused_by_hints_gets_one_row_naming_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = ledger(dir.path());
        let mut events = HintEvents::default();
        for e in [
            "charge_updated",
            "charge_finished",
            "charge_updated",
            "charge_updated",
        ] {
            events.add(e);
        }
        let open = ChargeId::parse("open".to_owned()).unwrap();
        let check = |events: HintEvents| HintCheck {
            charge_id: open.clone(),
            events,
            at: Utc::now(),
        };
        l.record_hint_checks(&[check(events), check(HintEvents::default())])
            .unwrap();
        assert_eq!(
            webhook_rows(&l),
            [(
                "open".to_owned(),
                "charge_updated x3, charge_finished x1".to_owned()
            )]
        );
    }

    #[test]
    fn a_row_names_at_most_eight_events() {
        let mut e = HintEvents::default();
        for n in 0..12 {
            e.add(&format!("e{n}"));
        }
        e.add("e0");
        e.add("e11");
        assert_eq!(
            e.detail(),
            "e0 x2, e1 x1, e2 x1, e3 x1, e4 x1, e5 x1, e6 x1, e7 x1, other x5"
        );
        assert_eq!(e.total(), 14);
        let mut more = HintEvents::default();
        more.add("e1");
        more.add("zz");
        e.merge(more);
        assert_eq!(e.total(), 16);
        assert!(e.detail().starts_with("e0 x2, e1 x2,"));
        assert!(e.detail().ends_with("other x6"));
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
