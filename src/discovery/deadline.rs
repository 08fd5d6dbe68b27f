//! The payment deadline a konbini charge's token implies, after UnivaPay's documented
//! rule (a period, ending 23:59:59 Japan time or at the token's time shift), and the ISO
//! 8601 durations and times of day that rule is written in. Pure.

use std::time::Duration;

use chrono::{DateTime, FixedOffset, NaiveTime, Utc};

/// The longest `expiration_period` believed: UnivaPay's konbini periods are days or weeks.
const MAX_PERIOD: Duration = Duration::from_secs(400 * 86_400);

/// The payment deadline of a konbini charge created at `created` with a token whose
/// `expiration_period` is `period` and `expiration_time_shift` is `shift`:
///
/// the calendar day that `created + period` falls on, in Japan time (or in the time
/// shift's own UTC offset when it gives one), ending at 23:59:59, or at the time of day
/// the shift gives (`HH:MM[:SS[.fff]]` with `Z` or `±HH:MM`).
///
/// `None` (unknown) when the token gives no period (the store's default applies, which
/// the API does not tell), when the period or the shift cannot be read, when the period
/// uses years or months (no fixed length), or when the charge sets its own `capture_at`.
pub(crate) fn deadline(
    created: DateTime<Utc>,
    period: Option<&str>,
    shift: Option<&str>,
    has_capture_at: bool,
) -> Option<DateTime<Utc>> {
    if has_capture_at {
        return None;
    }
    let period = parse_iso_duration(period?)?;
    if period > MAX_PERIOD {
        return None;
    }
    let jst = FixedOffset::east_opt(9 * 3600)?;
    let (time, offset) = match shift {
        None => (NaiveTime::from_hms_opt(23, 59, 59)?, jst),
        Some(s) => parse_time_shift(s)?,
    };
    let due = created + chrono::Duration::from_std(period).ok()?;
    let day = due.with_timezone(&offset).date_naive();
    day.and_time(time)
        .and_local_timezone(offset)
        .single()
        .map(|t| t.with_timezone(&Utc))
}

/// ISO 8601 durations with fixed-length units: `P7D`, `PT720H`, `P1W`, `P1DT12H30M`.
pub(crate) fn parse_iso_duration(s: &str) -> Option<Duration> {
    let rest = s.trim().strip_prefix('P')?;
    let (date, time) = match rest.split_once('T') {
        Some((d, t)) if !t.is_empty() => (d, Some(t)),
        Some(_) => return None,
        None => (rest, None),
    };
    if date.is_empty() && time.is_none() {
        return None;
    }
    let mut secs = sum_units(date, &[('W', 7 * 86_400), ('D', 86_400)])?;
    if let Some(t) = time {
        secs = secs.checked_add(sum_units(t, &[('H', 3_600), ('M', 60), ('S', 1)])?)?;
    }
    Some(Duration::from_secs(secs))
}

/// `12D3H`-like parts: whole numbers each followed by one of `units`, in that order.
fn sum_units(s: &str, units: &[(char, u64)]) -> Option<u64> {
    let mut total = 0u64;
    let mut number = String::new();
    let mut allowed = units;
    for ch in s.chars() {
        if ch.is_ascii_digit() {
            number.push(ch);
            continue;
        }
        let pos = allowed.iter().position(|(u, _)| *u == ch)?;
        let n: u64 = number.parse().ok()?;
        total = total.checked_add(n.checked_mul(allowed[pos].1)?)?;
        number.clear();
        allowed = &allowed[pos + 1..];
    }
    number.is_empty().then_some(total)
}

/// `09:00:00.000+09:00` or `15:00Z` as a time of day and its UTC offset.
pub(crate) fn parse_time_shift(s: &str) -> Option<(NaiveTime, FixedOffset)> {
    let s = s.trim();
    let (time, offset) = if let Some(t) = s.strip_suffix('Z') {
        (t, FixedOffset::east_opt(0)?)
    } else {
        let at = s.rfind(['+', '-'])?;
        let (t, o) = s.split_at(at);
        let sign = if o.starts_with('-') { -1 } else { 1 };
        let (hh, mm) = o[1..].split_once(':')?;
        if hh.len() != 2 || mm.len() != 2 {
            return None;
        }
        let secs = hh.parse::<i32>().ok()? * 3600 + mm.parse::<i32>().ok()? * 60;
        (t, FixedOffset::east_opt(sign * secs)?)
    };
    let time = ["%H:%M:%S%.f", "%H:%M:%S", "%H:%M"]
        .iter()
        .find_map(|f| NaiveTime::parse_from_str(time, f).ok())?;
    Some((time, offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn deadline_is_the_end_of_the_day_in_japan() {
        // 16:00Z is already the 28th in Japan; seven days later is the 5th of December,
        // which ends at 23:59:59 JST = 14:59:59Z.
        let created = t("2026-11-27T16:00:00Z");
        assert_eq!(
            deadline(created, Some("P7D"), None, false),
            Some(t("2026-12-05T14:59:59Z"))
        );
        // 16:00Z + 24 h = 2026-11-28T16:00Z, 01:00 JST on the 29th; the shift says 09:00
        // JST that day = 00:00Z on the 29th.
        assert_eq!(
            deadline(created, Some("PT24H"), Some("09:00:00.000+09:00"), false),
            Some(t("2026-11-29T00:00:00Z"))
        );
        // A shift in UTC keeps the UTC day: 10:00Z + 1 day is the 28th, at 15:00Z.
        assert_eq!(
            deadline(
                t("2026-11-27T10:00:00Z"),
                Some("P1D"),
                Some("15:00Z"),
                false
            ),
            Some(t("2026-11-28T15:00:00Z"))
        );
        // The default 30 days written as hours (PT720H): 2026-11-01T03:00Z is 12:00 JST
        // on the 1st; 30 days on is 12:00 JST on 1 December, ending 23:59:59 JST =
        // 14:59:59Z that day.
        assert_eq!(
            deadline(t("2026-11-01T03:00:00Z"), Some("PT720H"), None, false),
            Some(t("2026-12-01T14:59:59Z"))
        );
        // Unsure: no period, a period of months, garbage, capture_at.
        assert_eq!(deadline(created, None, None, false), None);
        assert_eq!(deadline(created, Some("P1M"), None, false), None);
        assert_eq!(deadline(created, Some("7 days"), None, false), None);
        assert_eq!(deadline(created, Some("P7D"), Some("noon"), false), None);
        assert_eq!(deadline(created, Some("P7D"), None, true), None);
        assert_eq!(deadline(created, Some("P9999D"), None, false), None);
    }

    #[test]
    fn iso_durations() {
        let d = |s| parse_iso_duration(s).map(|d| d.as_secs());
        assert_eq!(d("P7D"), Some(7 * 86_400));
        assert_eq!(d("PT720H"), Some(30 * 86_400));
        assert_eq!(d("P1W"), Some(7 * 86_400));
        assert_eq!(d("P1DT1H1M1S"), Some(90_061));
        for bad in [
            "", "P", "PT", "7D", "P1M", "P1Y", "PT1D", "P1H", "PD", "P1D2D",
        ] {
            assert_eq!(d(bad), None, "{bad}");
        }
    }
}
