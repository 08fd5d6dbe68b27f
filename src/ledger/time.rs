//! [`Timestamp`]: a time as the ledger stores it. RFC 3339 UTC text with milliseconds
//! (`2026-11-27T16:55:22.123Z`), as the contract says, so that text order is time order
//! and an operator's `WHERE next_check_at <= '2026-...'` means what it says.
//!
//! SQLite's date functions (`julianday`, `strftime`) read the years 0000 to 9999 only,
//! and the text form sorts as time only while every value has four digits of year. A
//! `Timestamp` is therefore always inside that range: a time computed beyond it (now
//! plus a huge configured duration, say) is held at its edge, never written as
//! `+10000-...`, which would sort before `2026-...`.

use std::time::Duration;

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};

/// Formats a time the way every ledger column stores it. Unlike [`Timestamp`] it does
/// not clamp: for values known to be in range (now, a parsed API time).
pub fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A time in the ledger's range and precision; see the module doc.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(DateTime<Utc>);

impl Timestamp {
    /// `0000-01-01T00:00:00.000Z`, the earliest time SQLite's date functions read.
    pub fn earliest() -> Timestamp {
        let t = NaiveDate::from_ymd_opt(0, 1, 1).and_then(|d| d.and_hms_opt(0, 0, 0));
        Timestamp(t.expect("a valid date").and_utc())
    }

    /// `9999-12-31T23:59:59.999Z`, the latest.
    pub fn latest() -> Timestamp {
        let t = NaiveDate::from_ymd_opt(9999, 12, 31)
            .and_then(|d| d.and_hms_milli_opt(23, 59, 59, 999));
        Timestamp(t.expect("a valid date").and_utc())
    }

    /// `t` to the millisecond (truncated), held inside the range.
    pub fn new(t: DateTime<Utc>) -> Timestamp {
        let ms = t.timestamp_millis();
        let t = DateTime::from_timestamp_millis(ms).unwrap_or(t);
        Timestamp(t).clamp(Timestamp::earliest(), Timestamp::latest())
    }

    /// `d` before `t`, or the earliest time when that is out of range.
    pub fn before(t: DateTime<Utc>, d: Duration) -> Timestamp {
        chrono::Duration::from_std(d)
            .ok()
            .and_then(|d| t.checked_sub_signed(d))
            .map_or_else(Timestamp::earliest, Timestamp::new)
    }

    /// `d` after `t`, or the latest time when that is out of range.
    pub fn after(t: DateTime<Utc>, d: Duration) -> Timestamp {
        chrono::Duration::from_std(d)
            .ok()
            .and_then(|d| t.checked_add_signed(d))
            .map_or_else(Timestamp::latest, Timestamp::new)
    }

    /// Reads RFC 3339 text (the ledger's form, or any offset); `None` for anything else.
    pub fn parse(text: &str) -> Option<Timestamp> {
        DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|t| Timestamp::new(t.to_utc()))
    }

    pub fn to_datetime(self) -> DateTime<Utc> {
        self.0
    }
}

impl From<DateTime<Utc>> for Timestamp {
    fn from(t: DateTime<Utc>) -> Timestamp {
        Timestamp::new(t)
    }
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&ts(self.0))
    }
}

impl ToSql for Timestamp {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.to_string()))
    }
}

impl FromSql for Timestamp {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let text = value.as_str()?;
        Timestamp::parse(text)
            .ok_or_else(|| FromSqlError::Other(format!("{text:?} is not an RFC 3339 time").into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    #[test]
    fn the_text_is_the_contracts() {
        let t = Timestamp::new(at("2026-11-27T16:55:22.123456Z"));
        assert_eq!(t.to_string(), "2026-11-27T16:55:22.123Z");
        assert_eq!(
            Timestamp::parse("2026-11-28T01:55:22.123+09:00"),
            Some(t),
            "any offset, read as UTC"
        );
        assert_eq!(Timestamp::parse("2026-11-27 16:55:22"), None);
        assert_eq!(
            Timestamp::earliest().to_string(),
            "0000-01-01T00:00:00.000Z"
        );
        assert_eq!(Timestamp::latest().to_string(), "9999-12-31T23:59:59.999Z");
    }

    #[test]
    fn times_beyond_sqlites_range_are_held_at_its_edges() {
        let now = at("2026-11-27T16:55:22.123Z");
        let ten_thousand_years = Duration::from_secs(10_000 * 366 * 86_400);
        assert_eq!(
            Timestamp::after(now, ten_thousand_years),
            Timestamp::latest()
        );
        assert_eq!(
            Timestamp::before(now, ten_thousand_years),
            Timestamp::earliest()
        );
        assert_eq!(Timestamp::after(now, Duration::MAX), Timestamp::latest());
        assert_eq!(Timestamp::before(now, Duration::MAX), Timestamp::earliest());
        assert_eq!(
            Timestamp::after(now, Duration::from_secs(60)).to_string(),
            "2026-11-27T16:56:22.123Z"
        );
    }

    #[test]
    fn it_goes_in_and_out_of_sqlite_as_text() {
        let c = rusqlite::Connection::open_in_memory().unwrap();
        let t = Timestamp::new(at("2026-11-27T16:55:22.123Z"));
        let (text, back): (String, Timestamp) = c
            .query_row("SELECT ?1, ?1", [t], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap();
        assert_eq!((text.as_str(), back), ("2026-11-27T16:55:22.123Z", t));
        let bad = c.query_row("SELECT 'soon'", [], |r| r.get::<_, Timestamp>(0));
        assert!(bad.is_err());
    }
}
