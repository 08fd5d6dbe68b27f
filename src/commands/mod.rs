//! The operator's commands: `status`, `register`, `check`, `recheck`, `export`, `events`,
//! `deliveries`, `backup` and `show`.
//!
//! They read the same config as the service, so they find its database and credentials,
//! and they run beside it: each database step is one short transaction (SQLite in WAL
//! mode lets readers and one writer go on together), and `check`, the only one that asks
//! UnivaPay, takes the pass lock like any pass. Only `register` may create the database;
//! the others refuse a `database.path` that does not exist rather than leave an empty
//! ledger behind a typo.
//!
//! Input is parsed here, by the functions below, before anything is opened: the command
//! line uses them as its value parsers, so a bad id, amount or time is a usage error that
//! names the argument. Each command writes its report to the `out` it is given (stdout
//! in the binary) and returns a [`CommandError`] for the one stderr line otherwise.

pub(crate) mod backup;
pub(crate) mod check;
pub(crate) mod deliveries;
pub(crate) mod events;
pub(crate) mod export;
pub(crate) mod recheck;
pub(crate) mod register;
pub(crate) mod show;
pub(crate) mod status;

use chrono::{DateTime, Utc};

use crate::domain::{ChargeId, Currency, State, StoreId};
use crate::ledger::LedgerError;
use crate::univapay::MAX_AMOUNT;

/// Why a command did not do its job.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CommandError {
    /// The request cannot be carried out as asked (an id not in the ledger, a conflicting
    /// registration); nothing was changed.
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// Another pass held the pass lock for longer than `schedule.lock_wait`.
    #[error("{0}")]
    Locked(String),
    /// Anything else that stops the command (the client cannot be built, the lock file
    /// cannot be opened, stdout is gone).
    #[error("{0}")]
    Fatal(String),
}

/// A failed write of the report. A closed pipe (`... | head`) is the reader's choice and
/// ends the command quietly; the caller treats `None` as done.
pub(crate) fn output_error(e: std::io::Error) -> Option<CommandError> {
    (e.kind() != std::io::ErrorKind::BrokenPipe)
        .then(|| CommandError::Fatal(format!("cannot write the output: {e}")))
}

/// Runs `f`, a function that writes a report, treating a closed pipe as the end.
pub(crate) fn writing(f: impl FnOnce() -> std::io::Result<()>) -> Result<(), CommandError> {
    f().or_else(|e| output_error(e).map_or(Ok(()), Err))
}

/// The shop's order reference: 1 to 255 bytes, no control characters.
pub(crate) fn parse_order_ref(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > crate::ledger::MAX_ORDER_REF || s.chars().any(char::is_control) {
        return Err("must be 1 to 255 bytes without control characters".into());
    }
    Ok(s.to_owned())
}

/// A charge id as the schema accepts it.
pub(crate) fn parse_charge_id(s: &str) -> Result<ChargeId, String> {
    ChargeId::parse(s).map_err(|e| format!("not a charge id: {e}"))
}

/// A store id as the schema accepts it.
pub(crate) fn parse_store_id(s: &str) -> Result<StoreId, String> {
    StoreId::parse(s).map_err(|e| format!("not a store id: {e}"))
}

/// An amount in minor units, a whole number from 0 to 10^12 as the schema accepts.
pub(crate) fn parse_amount(s: &str) -> Result<i64, String> {
    let refuse = || format!("must be a whole number of minor units from 0 to {MAX_AMOUNT}");
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(refuse());
    }
    match s.parse::<i64>() {
        Ok(n) if n <= MAX_AMOUNT => Ok(n),
        _ => Err(refuse()),
    }
}

/// A three-letter currency code, any case (stored upper case).
pub(crate) fn parse_currency(s: &str) -> Result<Currency, String> {
    Currency::parse(s).ok_or_else(|| "must be a three-letter currency code such as JPY".into())
}

/// An RFC 3339 time with its offset, e.g. `2026-11-01T00:00:00+09:00`.
pub(crate) fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            format!("not an RFC 3339 time ({e}); write e.g. 2026-11-01T00:00:00+09:00 or 2026-10-31T15:00:00Z")
        })
}

/// One of the four states.
pub(crate) fn parse_state(s: &str) -> Result<State, String> {
    State::parse(s).ok_or_else(|| "must be pending, awaiting, successful or failed".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn amounts_the_schema_refuses_are_refused() {
        assert_eq!(parse_amount("0"), Ok(0));
        assert_eq!(parse_amount("1000"), Ok(1000));
        assert_eq!(parse_amount("1000000000000"), Ok(MAX_AMOUNT));
        for bad in [
            "",
            "-1",
            "+5",
            "1000000000001",
            "99999999999999999999",
            "10.5",
            "1e3",
            " 5",
            "５",
        ] {
            assert!(parse_amount(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn times_must_be_rfc_3339() {
        let t = parse_time("2026-11-01T00:00:00+09:00").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-10-31T15:00:00+00:00");
        for bad in [
            "2026-11-01",
            "yesterday",
            "2026-11-01 00:00:00",
            "1700000000",
            "",
        ] {
            assert!(parse_time(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ids_states_and_currencies() {
        assert!(parse_charge_id("11efa3b2-6c2d").is_ok());
        assert!(parse_charge_id("a,b").is_err());
        assert!(parse_charge_id("..").is_err());
        assert!(parse_store_id("").is_err());
        assert_eq!(parse_currency("usd").unwrap().as_str(), "USD");
        assert!(parse_currency("YEN!").is_err());
        assert_eq!(parse_state("failed"), Ok(State::Failed));
        assert!(parse_state("paid").is_err());
    }

    proptest! {
        #[test]
        fn every_number_in_range_round_trips(n in 0..=MAX_AMOUNT) {
            prop_assert_eq!(parse_amount(&n.to_string()), Ok(n));
        }

        #[test]
        fn no_negative_number_passes(n in i64::MIN..0) {
            prop_assert!(parse_amount(&n.to_string()).is_err());
        }
    }
}
