//! The decision logic of reconciliation, as pure functions over plain values: status
//! mapping, the mismatch rule, next-check times, and [`decide`], which turns one
//! observation of a charge into its new ledger values and event rows. No I/O here, and no
//! clock or randomness either: the caller passes `now` and the jitter.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::domain::{Currency, ProviderStatus, State};
use crate::univapay::{ApiError, ErrorClass, ProviderCharge};

/// Maps UnivaPay's status to our state. `None` for a word we do not know: such an answer
/// changes no state.
pub fn map_status(status: &ProviderStatus) -> Option<State> {
    match status {
        ProviderStatus::Pending => Some(State::Pending),
        ProviderStatus::Awaiting | ProviderStatus::Authorized => Some(State::Awaiting),
        ProviderStatus::Successful => Some(State::Successful),
        ProviderStatus::Failed | ProviderStatus::Error | ProviderStatus::Canceled => {
            Some(State::Failed)
        }
        ProviderStatus::Unknown(_) => None,
    }
}

/// What the merchant asked for, from our ledger row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requested {
    pub amount: i64,
    pub currency: Currency,
}

/// The mismatch rule. Whenever the answer has a non-null `charged_amount`, the charge is
/// flagged if that amount differs from ours, if `charged_currency` differs from ours
/// (case-insensitive), or if the answer's `requested_amount` differs from ours. Returns the
/// human-readable detail, e.g. `charged 90 JPY, requested 100 JPY`.
pub fn mismatch(requested: &Requested, answer: &ProviderCharge) -> Option<String> {
    let charged = answer.charged_amount?;
    let charged_currency = answer.charged_currency.unwrap_or(requested.currency);
    let mut parts = Vec::new();
    if charged != requested.amount || charged_currency != requested.currency {
        parts.push(format!(
            "charged {charged} {charged_currency}, requested {} {}",
            requested.amount, requested.currency
        ));
    }
    if let Some(theirs) = answer.requested_amount
        && theirs != requested.amount
    {
        parts.push(format!(
            "UnivaPay's requested_amount is {theirs}, ours is {}",
            requested.amount
        ));
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// Timing knobs, from `[reconcile]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub recheck_interval: Duration,
    pub retry_backoff: Duration,
    pub retry_backoff_max: Duration,
    pub not_found_limit: u32,
}

impl Policy {
    pub fn from_settings(r: &crate::config::ReconcileSettings) -> Self {
        Policy {
            recheck_interval: r.recheck_interval,
            retry_backoff: r.retry_backoff,
            retry_backoff_max: r.retry_backoff_max,
            not_found_limit: r.not_found_limit,
        }
    }
}

/// Delay before the next try after the `failures`-th error in a row (1-based): the base
/// doubled per failure, capped, then scaled into `[cap/2, cap]` by `jitter` in `[0, 1)` so
/// that charges which failed together do not all come back together.
pub fn backoff(failures: u32, base: Duration, max: Duration, jitter: f64) -> Duration {
    let exp = failures.saturating_sub(1).min(30);
    let full = base.saturating_mul(1u32 << exp).min(max);
    let jitter = jitter.clamp(0.0, 1.0);
    full.mul_f64(0.5 + 0.5 * jitter)
}

/// The columns of a `charges` row that a check may change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracked {
    pub state: State,
    pub provider_status: Option<String>,
    pub charged_amount: Option<i64>,
    pub charged_currency: Option<String>,
    pub amount_mismatch: bool,
    pub mismatch_detail: Option<String>,
    pub payment_number: Option<String>,
    pub payment_url: Option<String>,
    pub last_error: Option<String>,
    pub consecutive_errors: u32,
    pub not_found_count: u32,
}

impl Tracked {
    /// A freshly registered charge.
    pub fn new() -> Self {
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
pub enum EventKind {
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
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Transition => "transition",
            EventKind::Mismatch => "mismatch",
            EventKind::Error => "error",
            EventKind::UnknownStatus => "unknown_status",
            EventKind::GaveUp => "gave_up",
        }
    }
}

/// One `charge_events` row to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub kind: EventKind,
    pub from_state: Option<State>,
    pub to_state: Option<State>,
    pub provider_status: Option<String>,
    pub detail: Option<String>,
}

/// The result of one check of one charge: the new row values and the events to append,
/// all to be written in one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub after: Tracked,
    /// `None`: never check again (final, or given up).
    pub next_check_at: Option<DateTime<Utc>>,
    pub events: Vec<NewEvent>,
}

impl Decision {
    pub fn transition(&self) -> Option<(State, State)> {
        self.events
            .iter()
            .find(|e| e.kind == EventKind::Transition)
            .and_then(|e| Some((e.from_state?, e.to_state?)))
    }

    pub fn new_mismatch(&self) -> bool {
        self.events.iter().any(|e| e.kind == EventKind::Mismatch)
    }
}

fn after(now: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    now + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// Decides what one observation (an answer or an error) does to a charge.
///
/// `jitter` in `[0, 1)` spreads retry times after errors. Auth errors abort the pass before
/// reaching here; if one does arrive it is treated like any refused request.
pub fn decide(
    before: &Tracked,
    requested: &Requested,
    observation: Result<&ProviderCharge, &ApiError>,
    now: DateTime<Utc>,
    policy: &Policy,
    jitter: f64,
) -> Decision {
    let mut t = before.clone();
    let mut events = Vec::new();
    let state_before = before.state;

    let next_check_at = match observation {
        Ok(answer) => {
            t.last_error = None;
            t.consecutive_errors = 0;
            t.not_found_count = 0;
            let word = answer.status.as_str().to_owned();
            let mapped = map_status(&answer.status);
            if mapped.is_none() && before.provider_status.as_deref() != Some(word.as_str()) {
                events.push(NewEvent {
                    kind: EventKind::UnknownStatus,
                    from_state: Some(state_before),
                    to_state: Some(state_before),
                    provider_status: Some(word.clone()),
                    detail: Some(format!(
                        "unknown status {word:?}; state left as {state_before}"
                    )),
                });
            }
            // Final is final: a final row is never polled, and if one is, it does not move.
            if let Some(new_state) = mapped.filter(|_| !state_before.is_final())
                && new_state != state_before
            {
                t.state = new_state;
                events.push(NewEvent {
                    kind: EventKind::Transition,
                    from_state: Some(state_before),
                    to_state: Some(new_state),
                    provider_status: Some(word.clone()),
                    detail: answer.error.as_ref().map(|e| {
                        format!(
                            "provider error {}: {}",
                            e.code.as_deref().unwrap_or("-"),
                            e.message.as_deref().unwrap_or("-")
                        )
                    }),
                });
            }
            t.provider_status = Some(word.clone());
            t.charged_amount = answer.charged_amount;
            t.charged_currency = answer.charged_currency.map(|c| c.to_string());
            if let Some(n) = answer.payment_number() {
                t.payment_number = Some(n);
            }
            if let Some(u) = answer.payment_url() {
                t.payment_url = Some(u);
            }
            if let Some(detail) = mismatch(requested, answer)
                && !before.amount_mismatch
            {
                t.amount_mismatch = true;
                t.mismatch_detail = Some(detail.clone());
                events.push(NewEvent {
                    kind: EventKind::Mismatch,
                    from_state: Some(state_before),
                    to_state: Some(t.state),
                    provider_status: Some(word),
                    detail: Some(detail),
                });
            }
            (!t.state.is_final()).then(|| after(now, policy.recheck_interval))
        }
        Err(err) => {
            t.last_error = Some(err.to_string());
            t.consecutive_errors = before.consecutive_errors.saturating_add(1);
            let mut delay = backoff(
                t.consecutive_errors,
                policy.retry_backoff,
                policy.retry_backoff_max,
                jitter,
            );
            if let Some(ra) = err.retry_after() {
                delay = delay.max(ra);
            }
            let mut next = (!state_before.is_final()).then(|| after(now, delay));
            events.push(NewEvent {
                kind: EventKind::Error,
                from_state: Some(state_before),
                to_state: Some(state_before),
                provider_status: before.provider_status.clone(),
                detail: Some(err.to_string()),
            });
            if err.class() == ErrorClass::NotFound {
                t.not_found_count = before.not_found_count.saturating_add(1);
                if t.not_found_count >= policy.not_found_limit {
                    next = None;
                    let detail = format!(
                        "not found at UnivaPay {} times in a row; no longer checked (set next_check_at to check again)",
                        t.not_found_count
                    );
                    t.last_error = Some(detail.clone());
                    events.push(NewEvent {
                        kind: EventKind::GaveUp,
                        from_state: Some(state_before),
                        to_state: Some(state_before),
                        provider_status: before.provider_status.clone(),
                        detail: Some(detail),
                    });
                }
            } else {
                t.not_found_count = 0;
            }
            next
        }
    };

    Decision {
        after: t,
        next_check_at,
        events,
    }
}
