//! Transaction tokens: what `POST /tokens` creates and `GET /stores/{sid}/tokens/{id}`
//! returns. The token is the only place that says a charge's payment type and, for
//! konbini, its brand and payment deadline; discovery reads it for exactly that.
//!
//! Also the konbini deadline rule the simulator applies to charges made through the API
//! (see [`konbini_deadline`]).

use std::time::Duration;

use chrono::{DateTime, FixedOffset, NaiveTime, Utc};
use serde_json::{Value, json};

/// The payment types UnivaPay knows (`payment_type` on a token).
pub const PAYMENT_TYPES: [&str; 8] = [
    "card",
    "qr_scan",
    "konbini",
    "apple_pay",
    "paidy",
    "qr_merchant",
    "online",
    "bank_transfer",
];

/// A transaction token as the simulator holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct SimToken {
    pub id: String,
    pub store_id: String,
    /// `konbini`, `card`, ... (see [`PAYMENT_TYPES`]).
    pub payment_type: String,
    /// `one_time`, `subscription` or `recurring`.
    pub token_type: String,
    pub email: Option<String>,
    pub mode: String,
    /// For konbini: `customer_name`, `phone_number`, `convenience_store`,
    /// `expiration_period`, `expiration_time_shift` (the last two may be null).
    pub data: Value,
    pub metadata: Value,
    pub created_on: String,
}

impl SimToken {
    /// A konbini token for `convenience_store`, with the store's default deadline.
    pub fn konbini(id: &str, store_id: &str, convenience_store: &str) -> Self {
        SimToken {
            data: json!({
                "customer_name": "Sim Customer",
                "phone_number": {"country_code": "81", "local_number": "0312345678"},
                "convenience_store": convenience_store,
                "expiration_period": null,
                "expiration_time_shift": null,
            }),
            ..SimToken::base(id, store_id, "konbini")
        }
    }

    /// A card token (only the harmless card details, as UnivaPay shows them).
    pub fn card(id: &str, store_id: &str) -> Self {
        SimToken {
            data: json!({
                "card": {"cardholder": "SIM CUSTOMER", "brand": "visa", "last_four": "4242",
                         "exp_month": 12, "exp_year": 2030},
                "billing": null,
            }),
            ..SimToken::base(id, store_id, "card")
        }
    }

    fn base(id: &str, store_id: &str, payment_type: &str) -> Self {
        SimToken {
            id: id.into(),
            store_id: store_id.into(),
            payment_type: payment_type.into(),
            token_type: "one_time".into(),
            email: Some("customer@sim.invalid".into()),
            mode: "test".into(),
            data: json!({}),
            metadata: json!({}),
            created_on: "2026-11-27T08:00:00.123456Z".into(),
        }
    }

    /// The same konbini token with this `expiration_period` (e.g. `P7D`).
    pub fn with_expiration_period(mut self, period: Duration) -> Self {
        if let Some(d) = self.data.as_object_mut() {
            d.insert("expiration_period".into(), json!(iso_duration(period)));
        }
        self
    }

    pub fn is_konbini(&self) -> bool {
        self.payment_type == "konbini"
    }

    /// `data.convenience_store`, for a konbini token.
    pub fn convenience_store(&self) -> Option<&str> {
        self.data.get("convenience_store")?.as_str()
    }

    /// `data.customer_name`, if any.
    pub fn customer_name(&self) -> Option<&str> {
        self.data.get("customer_name")?.as_str()
    }

    /// `data.expiration_period`, parsed.
    pub fn expiration_period(&self) -> Option<Duration> {
        parse_iso_duration(self.data.get("expiration_period")?.as_str()?)
    }

    /// `data.expiration_time_shift`, as given.
    pub fn expiration_time_shift(&self) -> Option<&str> {
        self.data.get("expiration_time_shift")?.as_str()
    }

    /// The token as UnivaPay's JSON, shaped as the official SDK declares it: optional
    /// fields that have no value are left out rather than sent as `null` (the SDK types
    /// them `string`, never `null`), and `last_used_on` is the creation time (a one-time
    /// token is used by the charge made with it; the SDK types the field as always set).
    pub fn to_json(&self) -> Value {
        let data = match &self.data {
            Value::Object(m) => Value::Object(
                m.iter()
                    .filter(|(_, v)| !v.is_null())
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            ),
            other => other.clone(),
        };
        json!({
            "id": self.id,
            "store_id": self.store_id,
            "email": self.email,
            "payment_type": self.payment_type,
            "active": true,
            "mode": self.mode,
            "type": self.token_type,
            "metadata": self.metadata,
            "created_on": self.created_on,
            "last_used_on": self.created_on,
            "data": data,
        })
    }
}

/// Parses the ISO 8601 durations tokens carry: `P7D`, `PT720H`, `P1W`, `P1DT12H30M`.
/// Years and months are refused (their length is not fixed).
pub fn parse_iso_duration(s: &str) -> Option<Duration> {
    let rest = s.strip_prefix('P')?;
    let (date, time) = match rest.split_once('T') {
        Some((d, t)) if !t.is_empty() => (d, Some(t)),
        Some(_) => return None,
        None => (rest, None),
    };
    let mut secs = sum_units(date, &[('W', 7 * 86_400), ('D', 86_400)])?;
    if let Some(t) = time {
        secs += sum_units(t, &[('H', 3_600), ('M', 60), ('S', 1)])?;
    }
    (!date.is_empty() || time.is_some()).then_some(Duration::from_secs(secs))
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

/// A duration as ISO 8601: whole days as `P{n}D`, anything else as `PT{n}S`-style parts.
pub fn iso_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s > 0 && s.is_multiple_of(86_400) {
        return format!("P{}D", s / 86_400);
    }
    let (h, m, sec) = (s / 3600, s / 60 % 60, s % 60);
    let mut out = String::from("PT");
    for (n, u) in [(h, 'H'), (m, 'M'), (sec, 'S')] {
        if n > 0 {
            out.push_str(&format!("{n}{u}"));
        }
    }
    if out == "PT" {
        out.push_str("0S");
    }
    out
}

/// The payment deadline of a konbini charge made through the API at `created`: the day
/// `period` later, at 23:59:59 Japan time, or at the time of day `time_shift` gives
/// (`HH:MM[:SS[.fff]]` with `Z` or `±HH:MM`, e.g. `09:00:00.000+09:00`).
pub fn konbini_deadline(
    created: DateTime<Utc>,
    period: Duration,
    time_shift: Option<&str>,
) -> DateTime<Utc> {
    let jst = FixedOffset::east_opt(9 * 3600).expect("JST");
    let (time, offset) = time_shift
        .and_then(parse_time_shift)
        .unwrap_or((NaiveTime::from_hms_opt(23, 59, 59).expect("time"), jst));
    let due = created + chrono::Duration::from_std(period).unwrap_or(chrono::Duration::MAX);
    let day = due.with_timezone(&offset).date_naive();
    day.and_time(time)
        .and_local_timezone(offset)
        .single()
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or(due)
}

/// `09:00:00.000+09:00` or `15:00Z` as a time of day and its offset.
pub fn parse_time_shift(s: &str) -> Option<(NaiveTime, FixedOffset)> {
    let (time, offset) = if let Some(t) = s.strip_suffix('Z') {
        (t, FixedOffset::east_opt(0)?)
    } else {
        let at = s.rfind(['+', '-'])?;
        let (t, o) = s.split_at(at);
        let sign = if o.starts_with('-') { -1 } else { 1 };
        let (hh, mm) = o[1..].split_once(':')?;
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

    #[test]
    fn iso_durations() {
        assert_eq!(
            parse_iso_duration("P7D"),
            Some(Duration::from_secs(7 * 86_400))
        );
        assert_eq!(
            parse_iso_duration("PT720H"),
            Some(Duration::from_secs(30 * 86_400))
        );
        assert_eq!(
            parse_iso_duration("P1DT1H1M1S"),
            Some(Duration::from_secs(90_061))
        );
        assert_eq!(
            parse_iso_duration("P2W"),
            Some(Duration::from_secs(14 * 86_400))
        );
        for bad in [
            "", "P", "PT", "7D", "P1M", "P1Y", "PT1D", "P1H", "PD", "P1D2D",
        ] {
            assert_eq!(parse_iso_duration(bad), None, "{bad}");
        }
        assert_eq!(iso_duration(Duration::from_secs(7 * 86_400)), "P7D");
        assert_eq!(iso_duration(Duration::from_secs(3_661)), "PT1H1M1S");
    }

    #[test]
    fn deadline_is_end_of_day_in_japan() {
        let created: DateTime<Utc> = "2026-11-27T16:00:00Z".parse().unwrap();
        // 16:00Z is already the 28th in Japan; seven days later is the 5th of December,
        // which ends at 14:59:59Z.
        let d = konbini_deadline(created, Duration::from_secs(7 * 86_400), None);
        assert_eq!(d.to_rfc3339(), "2026-12-05T14:59:59+00:00");
        let d = konbini_deadline(
            created,
            Duration::from_secs(86_400),
            Some("09:00:00.000+09:00"),
        );
        assert_eq!(d.to_rfc3339(), "2026-11-29T00:00:00+00:00");
    }
}
