//! The values one check of one charge produces and consumes: what the merchant asked for,
//! the tracked columns of a ledger row, and the decision (new values plus event rows) that
//! the rules hand to the ledger to write in one transaction.

use chrono::{DateTime, Utc};

use super::{Currency, State};

/// What the merchant asked for, from our ledger row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requested {
    pub(crate) amount: i64,
    pub(crate) currency: Currency,
}

/// The columns of a `charges` row that a check may change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracked {
    pub(crate) state: State,
    pub(crate) provider_status: Option<String>,
    pub(crate) charged_amount: Option<i64>,
    pub(crate) charged_currency: Option<String>,
    pub(crate) amount_mismatch: bool,
    pub(crate) mismatch_detail: Option<String>,
    pub(crate) payment_number: Option<String>,
    pub(crate) payment_url: Option<String>,
    pub(crate) last_error: Option<String>,
    pub(crate) consecutive_errors: u32,
    pub(crate) not_found_count: u32,
}

impl Tracked {
    /// A freshly registered charge.
    pub(crate) fn new() -> Self {
        Tracked {
            state: State::Pending,
            provider_status: None,
            charged_amount: None,
            charged_currency: None,
            amount_mismatch: false,
            mismatch_detail: None,
            payment_number: None,
            payment_url: None,
            last_error: None,
            consecutive_errors: 0,
            not_found_count: 0,
        }
    }
}

impl Default for Tracked {
    fn default() -> Self {
        Self::new()
    }
}

/// The `charge_events.kind` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum EventKind {
    /// `state` changed (exactly one per change).
    Transition,
    /// The amount or currency differs; written once, when the sticky flag is first set.
    Mismatch,
    /// A check failed; `detail` says how.
    Error,
    /// UnivaPay reported a status word we do not know (written when the word changes).
    UnknownStatus,
    /// The charge is no longer checked after repeated 404s.
    GaveUp,
    /// The payment number or slip URL changed after it was first seen; `detail` names the
    /// old and the new value.
    PaymentChanged,
}

impl EventKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            EventKind::Transition => "transition",
            EventKind::Mismatch => "mismatch",
            EventKind::Error => "error",
            EventKind::UnknownStatus => "unknown_status",
            EventKind::GaveUp => "gave_up",
            EventKind::PaymentChanged => "payment_changed",
        }
    }
}

/// One `charge_events` row to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NewEvent {
    pub(crate) kind: EventKind,
    pub(crate) from_state: Option<State>,
    pub(crate) to_state: Option<State>,
    pub(crate) provider_status: Option<String>,
    pub(crate) detail: Option<String>,
}

/// The result of one check of one charge: the new row values and the events to append,
/// all to be written in one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub(crate) after: Tracked,
    /// `None`: never check again (final, or given up).
    pub(crate) next_check_at: Option<DateTime<Utc>>,
    pub(crate) events: Vec<NewEvent>,
}

impl Decision {
    pub(crate) fn transition(&self) -> Option<(State, State)> {
        self.events
            .iter()
            .find(|e| e.kind == EventKind::Transition)
            .and_then(|e| Some((e.from_state?, e.to_state?)))
    }

    pub(crate) fn new_mismatch(&self) -> bool {
        self.events.iter().any(|e| e.kind == EventKind::Mismatch)
    }
}
