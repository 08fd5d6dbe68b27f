//! Domain values parsed once at the edges (UnivaPay JSON, SQLite rows, config) so the core
//! never handles a raw string where a type fits, and the value types every layer shares
//! (a check's decision, a pass's counts). Imports nothing from the rest of the crate: the
//! ledger, the client and the rules all build on it.

mod backoff;
mod decision;
mod recheck_step;
mod run;
pub(crate) mod text;

use std::fmt;

pub(crate) use backoff::backoff;
pub(crate) use decision::{Decision, EventKind, NewEvent, Requested, Tracked};
pub(crate) use recheck_step::{ChargeDates, RecheckStep};
pub use run::Counts;
pub use run::Outcome;
pub use run::Trigger;

/// Identifier of a UnivaPay charge. Non-empty, no whitespace, and safe to put in a URL path.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChargeId(String);

/// Identifier of the UnivaPay store a charge belongs to. Same rules as [`ChargeId`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StoreId(String);

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("is empty")]
    Empty,
    #[error("is longer than 255 characters")]
    TooLong,
    #[error("contains a character not allowed in an id ({0:?})")]
    BadChar(char),
}

fn check_id(s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if s.len() > 255 {
        return Err(IdError::TooLong);
    }
    // UnivaPay ids are UUIDs; we accept a little more (tests, other id shapes) but nothing
    // that could change the meaning of the request path.
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(IdError::BadChar(c));
    }
    if s == "." || s == ".." {
        return Err(IdError::BadChar('.'));
    }
    Ok(())
}

macro_rules! id_type {
    ($t:ident) => {
        impl $t {
            pub fn parse(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                check_id(&s)?;
                Ok(Self(s))
            }
            pub(crate) fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}
id_type!(ChargeId);
id_type!(StoreId);

/// An ISO 4217 currency code: exactly three ASCII letters, held in upper case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Currency([u8; 3]);

impl Currency {
    pub const JPY: Currency = Currency(*b"JPY");

    /// Accepts any case (UnivaPay answers upper case; merchants' code may not).
    pub(crate) fn parse(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        if b.len() != 3 || !b.iter().all(u8::is_ascii_alphabetic) {
            return None;
        }
        Some(Currency([
            b[0].to_ascii_uppercase(),
            b[1].to_ascii_uppercase(),
            b[2].to_ascii_uppercase(),
        ]))
    }

    pub(crate) fn as_str(&self) -> &str {
        // Constructed only from ASCII letters.
        std::str::from_utf8(&self.0).unwrap_or("???")
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Our view of a charge, the `charges.state` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    Pending,
    Awaiting,
    Successful,
    Failed,
}

impl State {
    pub(crate) const ALL: [State; 4] = [
        State::Pending,
        State::Awaiting,
        State::Successful,
        State::Failed,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Awaiting => "awaiting",
            State::Successful => "successful",
            State::Failed => "failed",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Final charges are never polled again.
    pub(crate) fn is_final(self) -> bool {
        matches!(self, State::Successful | State::Failed)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `status` word UnivaPay reports. Words we do not know are kept verbatim.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum ProviderStatus {
    Pending,
    Awaiting,
    Authorized,
    Successful,
    Failed,
    Error,
    Canceled,
    Unknown(String),
}

impl ProviderStatus {
    pub(crate) fn parse(s: &str) -> Self {
        match s {
            "pending" => Self::Pending,
            "awaiting" => Self::Awaiting,
            "authorized" => Self::Authorized,
            "successful" => Self::Successful,
            "failed" => Self::Failed,
            "error" => Self::Error,
            "canceled" => Self::Canceled,
            other => Self::Unknown(other.to_owned()),
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        match self {
            Self::Pending => "pending",
            Self::Awaiting => "awaiting",
            Self::Authorized => "authorized",
            Self::Successful => "successful",
            Self::Failed => "failed",
            Self::Error => "error",
            Self::Canceled => "canceled",
            Self::Unknown(s) => s,
        }
    }
}

impl fmt::Display for ProviderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_reject_path_tricks() {
        assert!(ChargeId::parse("").is_err());
        assert!(ChargeId::parse("..").is_err());
        assert!(ChargeId::parse("a/b").is_err());
        assert!(ChargeId::parse("a b").is_err());
        assert!(ChargeId::parse("11efa3b2-6c2d-4e8e-9f3a-0242ac120002").is_ok());
        assert!(StoreId::parse("x".repeat(256)).is_err());
    }

    #[test]
    fn currency_is_three_letters_any_case() {
        assert_eq!(Currency::parse("jpy"), Some(Currency::JPY));
        assert_eq!(Currency::parse("JPY").unwrap().as_str(), "JPY");
        assert_eq!(Currency::parse("JP"), None);
        assert_eq!(Currency::parse("J1Y"), None);
        assert_eq!(Currency::parse("JPYY"), None);
        assert_eq!(Currency::parse("日本"), None);
    }

    #[test]
    fn states_round_trip() {
        for s in State::ALL {
            assert_eq!(State::parse(s.as_str()), Some(s));
        }
        assert_eq!(State::parse("canceled"), None);
    }
}
