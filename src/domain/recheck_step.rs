//! How often an open charge is checked: the recheck schedule as a value, and the dates of
//! a charge that the schedule reads.

use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};

/// From `age` on (time since the charge's `created_at`), an unchanged open charge is due
/// again `every` after its last check. A schedule is a list of steps sorted by `age`, the
/// first at age 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecheckStep {
    pub(crate) age: Duration,
    pub(crate) every: Duration,
}

/// The dates of a charge that decide when it is checked: when it was registered (its age
/// is counted from there) and its payment deadline, when known.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChargeDates {
    /// `None` when the ledger's value cannot be read as a time: the charge is then
    /// treated as young, which checks it more often, never less.
    pub(crate) created_at: Option<DateTime<Utc>>,
    pub(crate) expires_at: Option<DateTime<Utc>>,
}

impl ChargeDates {
    /// Reads the two ledger columns leniently: RFC 3339 in any offset, or SQLite's own
    /// `YYYY-MM-DD HH:MM:SS[.fff]` (UTC), as a shop's hand-written INSERT may leave them.
    pub(crate) fn from_columns(created_at: Option<&str>, expires_at: Option<&str>) -> Self {
        ChargeDates {
            created_at: created_at.and_then(parse_time),
            expires_at: expires_at.and_then(parse_time),
        }
    }
}

/// A timestamp as the ledger may hold it, or `None`.
pub(crate) fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    let naive = s.strip_suffix(['Z', 'z']).unwrap_or(s);
    [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
    ]
    .iter()
    .find_map(|f| NaiveDateTime::parse_from_str(naive, f).ok())
    .map(|n| n.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ledger_times_are_read_leniently() {
        let want = DateTime::parse_from_rfc3339("2026-11-27T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        for s in [
            "2026-11-27T10:00:00.000Z",
            "2026-11-27T19:00:00+09:00",
            "2026-11-27 10:00:00",
            "2026-11-27 10:00",
            "2026-11-27T10:00:00",
            " 2026-11-27 10:00:00.000 ",
        ] {
            assert_eq!(parse_time(s), Some(want), "{s:?}");
        }
        for s in ["", "soon", "27/11/2026", "2026-13-01 00:00:00"] {
            assert_eq!(parse_time(s), None, "{s:?}");
        }
        let d = ChargeDates::from_columns(Some("yesterday"), Some("2026-11-27 10:00:00"));
        assert_eq!(d.created_at, None, "unreadable: young");
        assert_eq!(d.expires_at, Some(want));
    }
}
