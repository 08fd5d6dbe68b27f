//! Reading the charges a check needs: the due stream of a pass (keyset-paginated, split by
//! urgency when the budget is short), the named charges of `check` and of hints, and the
//! counts the budget plan is made from. Rows are parsed into domain types here; a row
//! whose values are unusable comes back as a [`BadRow`], never as a failure of the read.

use rusqlite::{OptionalExtension, params};

use super::{Ledger, LedgerError, Timestamp};
use crate::domain::{ChargeDates, ChargeId, Currency, Requested, State, StoreId, Tracked};

/// A due charge as read from the ledger.
#[derive(Debug, Clone)]
pub struct DueCharge {
    pub charge_id: ChargeId,
    pub store_id: StoreId,
    pub requested: Requested,
    pub tracked: Tracked,
    /// Registration time and deadline, which the cadence reads (parsed leniently).
    pub dates: ChargeDates,
    /// Where the keyset scan continues from: the column's text as stored (the empty
    /// string for a charge that is not due at all).
    pub next_check_at: String,
    /// The row version (the `updated_at` text as stored); a result is written only if
    /// the row is still at this version.
    pub updated_at: String,
}

/// A due row that cannot be checked because a value in it is unusable.
#[derive(Debug, Clone)]
pub struct BadRow {
    pub charge_id: String,
    pub next_check_at: String,
    pub problem: String,
}

/// One item of the due stream.
pub type DueRow = Result<DueCharge, BadRow>;

/// What makes a due charge urgent when the budget is short: it is young (created after
/// `born_after`) or at or near its deadline (`expires_at` at or before `expiring_by`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Urgency {
    pub born_after: Timestamp,
    pub expiring_by: Timestamp,
}

/// The columns [`row_to_due`] reads, in its order, but the dates.
const CHECK_COLUMNS: &str = "charge_id, store_id, requested_amount, requested_currency, state,
    provider_status, charged_amount, charged_currency, amount_mismatch, mismatch_detail,
    payment_number, payment_url, last_error, consecutive_errors, not_found_count,
    coalesce(next_check_at, ''), updated_at";

impl Ledger {
    /// Up to `limit` charges due at or before `cutoff`, in (`next_check_at`, `charge_id`)
    /// order, strictly after the keyset position `after`; with `urgent`, only the charges
    /// that are (`urgent.1` true) or are not urgent by `urgent.0`.
    pub fn due_batch_where(
        &self,
        cutoff: Timestamp,
        after: Option<(&str, &str)>,
        limit: usize,
        urgent: Option<(&Urgency, bool)>,
    ) -> Result<Vec<DueRow>, LedgerError> {
        let (after_at, after_id) = after.unwrap_or(("", ""));
        let (born_after, expiring_by, want) = match urgent {
            Some((u, want)) => (Some(u.born_after), Some(u.expiring_by), want),
            None => (None, None, true),
        };
        // One statement for both: with ?5 NULL the urgency test is skipped. created_at is
        // compared as a time (a shop may write it in SQLite's own form); one that is not a
        // time counts as young, as the cadence counts it.
        self.sql(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {CHECK_COLUMNS}, created_at, expires_at
                 FROM charges
                 WHERE next_check_at <= ?1 AND (next_check_at, charge_id) > (?2, ?3)
                   AND (?5 IS NULL
                        OR coalesce(coalesce(julianday(created_at) > julianday(?5), 1)
                                    OR expires_at <= ?6, 0) = ?7)
                 ORDER BY next_check_at, charge_id
                 LIMIT ?4"
            ))?;
            let rows = stmt.query_map(
                params![
                    cutoff,
                    after_at,
                    after_id,
                    limit as i64,
                    born_after,
                    expiring_by,
                    want
                ],
                row_to_due,
            )?;
            rows.collect()
        })
    }

    /// How many charges are due at or before `cutoff` (the backlog a pass starts with).
    pub fn count_due(&self, cutoff: Timestamp) -> Result<u64, LedgerError> {
        let n: i64 = self.sql(|c| {
            c.query_row(
                "SELECT count(*) FROM charges WHERE next_check_at <= ?1",
                [cutoff],
                |r| r.get(0),
            )
        })?;
        Ok(n.max(0) as u64)
    }

    /// Open charges (those with a next check) counted by age band, for the estimate of
    /// the checks they need. `born_after[k]` is the time a charge of band `k` was created
    /// after (bands from youngest; the last band takes the rest; a `created_at` that is
    /// not a time counts as youngest, as the cadence treats it). Charges
    /// whose `expires_at` lies in the window `watch` are counted apart (the second value).
    /// Returns one count per band (`born_after.len() + 1`) and the watched count.
    pub fn count_open_by_age(
        &self,
        born_after: &[Timestamp],
        watch: Option<(Timestamp, Timestamp)>,
    ) -> Result<(Vec<u64>, u64), LedgerError> {
        let mut band = String::from("CASE");
        for k in 0..born_after.len() {
            band.push_str(&format!(
                " WHEN coalesce(julianday(created_at) > julianday(?{}), 1) THEN {k}",
                k + 3
            ));
        }
        band.push_str(&format!(" ELSE {} END", born_after.len()));
        if born_after.is_empty() {
            band = "0".to_owned();
        }
        let sql = format!(
            "SELECT CASE WHEN expires_at > ?1 AND expires_at <= ?2 THEN -1 ELSE {band} END AS band,
                    count(*)
             FROM charges WHERE next_check_at IS NOT NULL GROUP BY band"
        );
        // No window: one that holds no time (every text compares above '').
        let (from, until) = watch.map_or((String::new(), String::new()), |(a, b)| {
            (a.to_string(), b.to_string())
        });
        let mut values: Vec<&dyn rusqlite::ToSql> = vec![&from, &until];
        values.extend(born_after.iter().map(|b| b as &dyn rusqlite::ToSql));
        let bands: Vec<(i64, i64)> = self.sql(|c| {
            let mut stmt = c.prepare(&sql)?;
            let rows = stmt.query_map(values.as_slice(), |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })?;
        let mut by_band = vec![0u64; born_after.len() + 1];
        let mut watched = 0u64;
        for (b, n) in bands {
            match usize::try_from(b) {
                Ok(b) => by_band[b.min(born_after.len())] += n.max(0) as u64,
                Err(_) => watched += n.max(0) as u64,
            }
        }
        Ok((by_band, watched))
    }

    /// The named charges as a pass would read them; `None` for those not in the ledger.
    /// Final and no-longer-checked charges are included (their `next_check_at` reads as
    /// the empty string), without their dates (the cadence reads them as young).
    pub fn charges_by_id(&self, ids: &[ChargeId]) -> Result<Vec<Option<DueRow>>, LedgerError> {
        self.sql(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {CHECK_COLUMNS} FROM charges WHERE charge_id = ?1"
            ))?;
            ids.iter()
                .map(|id| stmt.query_row([id.as_str()], row_to_due).optional())
                .collect()
        })
    }
}

pub(super) fn row_to_due(r: &rusqlite::Row<'_>) -> rusqlite::Result<DueRow> {
    let charge_id: String = r.get(0)?;
    let next_check_at: String = r.get(15)?;
    let bad = |problem: String| BadRow {
        charge_id: charge_id.clone(),
        next_check_at: next_check_at.clone(),
        problem,
    };
    // Constraints keep bad values out; this guards against rows written with them off.
    let parsed = (|| -> Result<DueCharge, String> {
        let id = ChargeId::parse(charge_id.clone()).map_err(|e| format!("charge_id {e}"))?;
        let store: String = r.get(1).map_err(|e| format!("store_id: {e}"))?;
        let store_id = StoreId::parse(store).map_err(|e| format!("store_id {e}"))?;
        let amount: i64 = r.get(2).map_err(|e| format!("requested_amount: {e}"))?;
        if amount < 0 {
            return Err(format!("requested_amount {amount} is negative"));
        }
        let cur: String = r.get(3).map_err(|e| format!("requested_currency: {e}"))?;
        let currency = Currency::parse(&cur)
            .ok_or_else(|| format!("requested_currency {cur:?} is not a currency code"))?;
        let st: String = r.get(4).map_err(|e| format!("state: {e}"))?;
        let state = State::parse(&st).ok_or_else(|| format!("unknown state {st:?}"))?;
        let get_u32 = |i: usize| -> Result<u32, String> {
            let v: i64 = r.get(i).map_err(|e| e.to_string())?;
            Ok(u32::try_from(v).unwrap_or(0))
        };
        let tracked = Tracked {
            state,
            provider_status: r.get(5).map_err(|e| e.to_string())?,
            charged_amount: r.get(6).map_err(|e| e.to_string())?,
            charged_currency: r.get(7).map_err(|e| e.to_string())?,
            amount_mismatch: r.get::<_, i64>(8).map_err(|e| e.to_string())? != 0,
            mismatch_detail: r.get(9).map_err(|e| e.to_string())?,
            payment_number: r.get(10).map_err(|e| e.to_string())?,
            payment_url: r.get(11).map_err(|e| e.to_string())?,
            last_error: r.get(12).map_err(|e| e.to_string())?,
            consecutive_errors: get_u32(13)?,
            not_found_count: get_u32(14)?,
        };
        // Read leniently: a value that is not a time (or a column the query lacks) only
        // makes the cadence treat the charge as young and without deadline.
        let text = |i: usize| r.get::<_, Option<String>>(i).ok().flatten();
        let dates = ChargeDates::from_columns(text(17).as_deref(), text(18).as_deref());
        Ok(DueCharge {
            charge_id: id,
            store_id,
            requested: Requested { amount, currency },
            tracked,
            dates,
            next_check_at: next_check_at.clone(),
            updated_at: r.get(16).map_err(|e| e.to_string())?,
        })
    })();
    Ok(parsed.map_err(bad))
}

#[cfg(test)]
mod tests {
    //! The queries of the budget stage: the due backlog, open charges by age, urgency.

    use super::super::{test_ledger, ts};
    use super::*;

    /// A charge created at `created`, due at `next`, with an optional deadline.
    fn add(l: &Ledger, id: &str, created: &str, next: Option<&str>, expires: Option<&str>) {
        l.conn()
            .execute(
                "INSERT INTO charges (charge_id, store_id, requested_amount, created_at,
                                      next_check_at, expires_at)
                 VALUES (?1, 's', 100, ?2, ?3, ?4)",
                params![id, created, next, expires],
            )
            .unwrap();
    }

    fn ids(rows: Vec<DueRow>) -> Vec<String> {
        rows.into_iter()
            .map(|r| r.unwrap().charge_id.to_string())
            .collect()
    }

    fn t(s: &str) -> Timestamp {
        Timestamp::parse(s).unwrap()
    }

    #[test]
    fn due_rows_carry_their_dates_and_split_by_urgency() {
        let (_d, l) = test_ledger();
        let due = Some("2026-11-27T09:00:00.000Z");
        add(&l, "old", "2026-11-20T00:00:00.000Z", due, None);
        add(&l, "young", "2026-11-27T08:00:00.000Z", due, None);
        add(
            &l,
            "expiring",
            "2026-11-20T00:00:00.000Z",
            due,
            Some("2026-11-27T20:00:00.000Z"),
        );
        add(
            &l,
            "handwritten",
            "2026-11-27 08:30:00",
            Some("2026-11-27T09:30:00.000Z"),
            None,
        );
        add(
            &l,
            "later",
            "2026-11-20T00:00:00.000Z",
            Some("2026-11-28T00:00:00.000Z"),
            None,
        );
        let cutoff = t("2026-11-27T10:00:00.000Z");
        let all = l.due_batch_where(cutoff, None, 10, None).unwrap();
        assert_eq!(all.len(), 4);
        let young = all
            .iter()
            .map(|r| r.as_ref().unwrap())
            .find(|c| c.charge_id.as_str() == "handwritten")
            .unwrap();
        assert_eq!(
            young.dates.created_at.map(ts).as_deref(),
            Some("2026-11-27T08:30:00.000Z"),
            "read leniently"
        );
        let u = Urgency {
            born_after: t("2026-11-27T00:00:00.000Z"),
            expiring_by: t("2026-11-28T10:00:00.000Z"),
        };
        let urgent = l
            .due_batch_where(cutoff, None, 10, Some((&u, true)))
            .unwrap();
        assert_eq!(ids(urgent), ["expiring", "young", "handwritten"]);
        let rest = l
            .due_batch_where(cutoff, None, 10, Some((&u, false)))
            .unwrap();
        assert_eq!(ids(rest), ["old"]);
        assert_eq!(l.count_due(cutoff).unwrap(), 4);
        assert_eq!(l.count_due(t("2026-11-27T08:00:00.000Z")).unwrap(), 0);
    }

    #[test]
    fn open_charges_are_counted_by_age_and_watch() {
        let (_d, l) = test_ledger();
        let next = Some("2026-11-27T09:00:00.000Z");
        add(&l, "a", "2026-11-27T08:00:00.000Z", next, None);
        add(&l, "b", "2026-11-26T08:00:00.000Z", next, None);
        add(&l, "c", "2026-11-20T08:00:00.000Z", next, None);
        add(
            &l,
            "d",
            "2026-11-20T08:00:00.000Z",
            next,
            Some("2026-11-27T12:00:00.000Z"),
        );
        add(&l, "e", "not a time", next, None);
        // Final charges need no checks.
        add(&l, "f", "2026-11-27T08:00:00.000Z", None, None);
        l.conn()
            .execute(
                "UPDATE charges SET state = 'successful' WHERE charge_id = 'f'",
                [],
            )
            .unwrap();
        let bounds = [t("2026-11-27T00:00:00.000Z"), t("2026-11-25T00:00:00.000Z")];
        let watch = Some((t("2026-11-27T09:00:00.000Z"), t("2026-11-28T09:00:00.000Z")));
        let (by_age, watched) = l.count_open_by_age(&bounds, watch).unwrap();
        assert_eq!(by_age, [2, 1, 1], "a and the unreadable e; b; c");
        assert_eq!(watched, 1);
        let (by_age, watched) = l.count_open_by_age(&[], None).unwrap();
        assert_eq!((by_age, watched), (vec![5], 0));
    }
}
