//! The decision logic of reconciliation, as pure functions over plain values: status
//! mapping, the mismatch rule, next-check times, and [`decide`], which turns one
//! observation of a charge into its new ledger values and event rows. No I/O here, and no
//! clock or randomness either: the caller passes `now` and the jitter. When an open charge
//! is due again after an answer is the cadence's to say ([`super::cadence`]).

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::cadence::Cadence;
use crate::domain::text::{MAX_ERROR, clean};
use crate::domain::{
    ChargeDates, Decision, EventKind, NewEvent, ProviderStatus, Requested, State, Tracked, backoff,
};
use crate::univapay::{ApiError, ErrorClass, ProviderCharge};

/// Maps UnivaPay's status to our state. `None` for a word we do not know: such an answer
/// changes no state.
pub(crate) fn map_status(status: &ProviderStatus) -> Option<State> {
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

/// The mismatch rule. Whenever the answer has a non-null `charged_amount`, the charge is
/// flagged if that amount differs from ours, if `charged_currency` differs from ours
/// (case-insensitive), or if the answer's `requested_amount` differs from ours. A
/// `successful` answer without a charged amount is flagged too: "paid exactly what was
/// asked" cannot be verified, and a final charge is never looked at again. Returns the
/// human-readable detail, e.g. `charged 90 JPY, requested 100 JPY`.
pub(crate) fn mismatch(requested: &Requested, answer: &ProviderCharge) -> Option<String> {
    let Some(charged) = answer.charged_amount else {
        return (answer.status == ProviderStatus::Successful).then(|| {
            format!(
                "successful, but the charged amount was missing from UnivaPay's answer; requested {} {}",
                requested.amount, requested.currency
            )
        });
    };
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
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Policy {
    /// When an open charge is due again after an answer.
    pub(crate) cadence: Cadence,
    pub(crate) retry_backoff: Duration,
    pub(crate) retry_backoff_max: Duration,
    pub(crate) not_found_limit: u32,
}

fn after(now: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    now + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// Decides what one observation (an answer or an error) does to a charge.
///
/// `jitter` in `[0, 1)` spreads retry times after errors, and the next checks of a
/// jittered schedule. Auth errors abort the pass before reaching here; if one does arrive
/// it is treated like any refused request.
pub(crate) fn decide(
    before: &Tracked,
    requested: &Requested,
    dates: &ChargeDates,
    observation: Result<&ProviderCharge, &ApiError>,
    now: DateTime<Utc>,
    policy: &Policy,
    jitter: f64,
) -> Decision {
    let mut d = Decision {
        after: before.clone(),
        next_check_at: None,
        events: Vec::new(),
    };
    match observation {
        Ok(answer) => {
            apply_answer(&mut d, before, requested, answer);
            d.next_check_at =
                (!d.after.state.is_final()).then(|| policy.cadence.next_check(now, dates, jitter));
        }
        Err(err) => {
            d.next_check_at = apply_error(&mut d, before, err, policy, jitter, Count404::Yes)
                .map(|delay| after(now, delay));
        }
    }
    d
}

/// A 404 in a pass where every check answered 404: a wrong `base_url`, a maintenance page
/// or the wrong account, not charges that are gone. Recorded and retried like any failed
/// check, but not counted toward `not_found_limit`, so no charge is given up for it.
pub(crate) fn decide_not_found_in_wall(
    before: &Tracked,
    now: DateTime<Utc>,
    policy: &Policy,
    jitter: f64,
) -> Decision {
    let mut d = Decision {
        after: before.clone(),
        next_check_at: None,
        events: Vec::new(),
    };
    d.next_check_at = apply_error(
        &mut d,
        before,
        &ApiError::NotFound,
        policy,
        jitter,
        Count404::No,
    )
    .map(|delay| after(now, delay));
    d
}

/// Whether a 404 counts toward `not_found_limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Count404 {
    Yes,
    /// Every check of the pass answered 404: the fault is not this charge's.
    No,
}

/// An answer: the status, amounts and payment details it reports, and the events they
/// call for.
fn apply_answer(
    d: &mut Decision,
    before: &Tracked,
    requested: &Requested,
    answer: &ProviderCharge,
) {
    let t = &mut d.after;
    t.last_error = None;
    t.consecutive_errors = 0;
    t.not_found_count = 0;
    let word = answer.status.as_str().to_owned();
    note_unknown_status(d, before, &answer.status);
    move_state(d, before, answer);
    let t = &mut d.after;
    t.provider_status = Some(word);
    t.charged_amount = answer.charged_amount;
    t.charged_currency = answer.charged_currency.map(|c| c.to_string());
    take_payment_details(d, before, answer);
    flag_mismatch(d, before, requested, answer);
}

/// The payment number and slip URL: a valid new value is stored (with a
/// `payment_changed` event when it replaces another); a value of the wrong shape is
/// refused, the old one kept, and the refusal becomes `last_error` with one `error`
/// event when it first appears (not on every check).
fn take_payment_details(d: &mut Decision, before: &Tracked, answer: &ProviderCharge) {
    let mut refused = Vec::new();
    let number = (
        "payment_number",
        before.payment_number.as_deref(),
        answer.payment_number(),
    );
    if let Some(n) = take_detail(d, before.state, answer, number, &mut refused) {
        d.after.payment_number = Some(n);
    }
    let url = (
        "payment_url",
        before.payment_url.as_deref(),
        answer.payment_url(),
    );
    if let Some(u) = take_detail(d, before.state, answer, url, &mut refused) {
        d.after.payment_url = Some(u);
    }
    if refused.is_empty() {
        return;
    }
    let why = clean(&refused.join("; "), MAX_ERROR);
    if before.last_error.as_deref() != Some(why.as_str()) {
        d.events.push(error_event(before, why.clone()));
    }
    d.after.last_error = Some(why);
}

/// One payment detail: the value to store, if any. A refusal goes to `refused`; a new
/// value replacing another is a `payment_changed` event.
fn take_detail(
    d: &mut Decision,
    before: State,
    answer: &ProviderCharge,
    (field, old, reported): (&str, Option<&str>, Option<Result<String, String>>),
    refused: &mut Vec<String>,
) -> Option<String> {
    let new = match reported? {
        Ok(v) => v,
        Err(why) => {
            refused.push(why);
            return None;
        }
    };
    if let Some(old) = old
        && old != new
    {
        d.events.push(NewEvent {
            kind: EventKind::PaymentChanged,
            from_state: Some(before),
            to_state: Some(d.after.state),
            provider_status: Some(answer.status.as_str().to_owned()),
            detail: Some(format!("{field} changed from {old:?} to {new:?}")),
        });
    }
    Some(new)
}

/// A status word we do not know is recorded once, when it first appears.
fn note_unknown_status(d: &mut Decision, before: &Tracked, status: &ProviderStatus) {
    let word = status.as_str();
    if map_status(status).is_some() || before.provider_status.as_deref() == Some(word) {
        return;
    }
    let state = before.state;
    d.events.push(NewEvent {
        kind: EventKind::UnknownStatus,
        from_state: Some(state),
        to_state: Some(state),
        provider_status: Some(word.to_owned()),
        detail: Some(format!("unknown status {word:?}; state left as {state}")),
    });
}

/// The state transition, if the status maps to another state. Final is final: a final
/// row is never polled, and if one is, it does not move.
fn move_state(d: &mut Decision, before: &Tracked, answer: &ProviderCharge) {
    let Some(new_state) = map_status(&answer.status).filter(|_| !before.state.is_final()) else {
        return;
    };
    if new_state == before.state {
        return;
    }
    d.after.state = new_state;
    d.events.push(NewEvent {
        kind: EventKind::Transition,
        from_state: Some(before.state),
        to_state: Some(new_state),
        provider_status: Some(answer.status.as_str().to_owned()),
        detail: answer.error.as_ref().map(|e| {
            let text = format!(
                "provider error {}: {}",
                e.code.as_deref().unwrap_or("-"),
                e.message.as_deref().unwrap_or("-")
            );
            clean(&text, MAX_ERROR)
        }),
    });
}

/// The sticky mismatch flag, set (with one event) the first time the rule fires.
fn flag_mismatch(
    d: &mut Decision,
    before: &Tracked,
    requested: &Requested,
    answer: &ProviderCharge,
) {
    if before.amount_mismatch {
        return;
    }
    let Some(detail) = mismatch(requested, answer) else {
        return;
    };
    d.after.amount_mismatch = true;
    d.after.mismatch_detail = Some(detail.clone());
    d.events.push(NewEvent {
        kind: EventKind::Mismatch,
        from_state: Some(before.state),
        to_state: Some(d.after.state),
        provider_status: Some(answer.status.as_str().to_owned()),
        detail: Some(detail),
    });
}

/// A failed check: the error is recorded and the charge retried after a backoff, or no
/// longer checked once it has been missing too often. Returns the delay to the next check.
fn apply_error(
    d: &mut Decision,
    before: &Tracked,
    err: &ApiError,
    policy: &Policy,
    jitter: f64,
    count: Count404,
) -> Option<Duration> {
    let t = &mut d.after;
    let text = match (err.class(), count) {
        (ErrorClass::NotFound, Count404::No) => format!(
            "{err}; not counted toward not_found_limit: every check of this pass answered 404"
        ),
        _ => clean(&err.to_string(), MAX_ERROR),
    };
    t.last_error = Some(text.clone());
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
    d.events.push(error_event(before, text));
    if count == Count404::No {
        return (!before.state.is_final()).then_some(delay);
    }
    if err.class() != ErrorClass::NotFound {
        d.after.not_found_count = 0;
        return (!before.state.is_final()).then_some(delay);
    }
    d.after.not_found_count = before.not_found_count.saturating_add(1);
    if d.after.not_found_count < policy.not_found_limit {
        return (!before.state.is_final()).then_some(delay);
    }
    give_up(d, before);
    None
}

fn error_event(before: &Tracked, detail: String) -> NewEvent {
    NewEvent {
        kind: EventKind::Error,
        from_state: Some(before.state),
        to_state: Some(before.state),
        provider_status: before.provider_status.clone(),
        detail: Some(detail),
    }
}

/// Stops checking a charge UnivaPay keeps saying it does not have, loudly.
fn give_up(d: &mut Decision, before: &Tracked) {
    let detail = format!(
        "not found at UnivaPay {} times in a row; no longer checked (set next_check_at to check again)",
        d.after.not_found_count
    );
    d.after.last_error = Some(detail.clone());
    d.events.push(NewEvent {
        kind: EventKind::GaveUp,
        from_state: Some(before.state),
        to_state: Some(before.state),
        provider_status: before.provider_status.clone(),
        detail: Some(detail),
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ChargeId, Currency};
    use proptest::prelude::*;
    use serde_json::Map;

    static POLICY: std::sync::LazyLock<Policy> = std::sync::LazyLock::new(|| Policy {
        cadence: Cadence::flat(Duration::from_secs(300)),
        retry_backoff: Duration::from_secs(30),
        retry_backoff_max: Duration::from_secs(3600),
        not_found_limit: 3,
    });
    const NO_DATES: ChargeDates = ChargeDates {
        created_at: None,
        expires_at: None,
    };
    const YEN_1000: Requested = Requested {
        amount: 1000,
        currency: Currency::JPY,
    };

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-27T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn answer(status: &str) -> ProviderCharge {
        ProviderCharge {
            id: ChargeId::parse("c1").unwrap(),
            store_id: None,
            status: ProviderStatus::parse(status),
            requested_amount: Some(1000),
            requested_currency: Some(Currency::JPY),
            charged_amount: None,
            charged_currency: None,
            error: None,
            metadata: Map::new(),
            mode: None,
        }
    }

    fn charged(status: &str, amount: i64, currency: &str) -> ProviderCharge {
        ProviderCharge {
            charged_amount: Some(amount),
            charged_currency: Currency::parse(currency),
            ..answer(status)
        }
    }

    fn at(state: State) -> Tracked {
        Tracked {
            state,
            ..Tracked::new()
        }
    }

    #[test]
    fn every_status_maps_as_the_design_says() {
        let cases = [
            ("pending", Some(State::Pending)),
            ("awaiting", Some(State::Awaiting)),
            ("authorized", Some(State::Awaiting)),
            ("successful", Some(State::Successful)),
            ("failed", Some(State::Failed)),
            ("error", Some(State::Failed)),
            ("canceled", Some(State::Failed)),
            ("expired", None),
            ("cancelled", None),
            ("", None),
        ];
        for (word, expect) in cases {
            assert_eq!(map_status(&ProviderStatus::parse(word)), expect, "{word:?}");
        }
    }

    #[test]
    fn mismatch_kinds() {
        assert_eq!(
            mismatch(&YEN_1000, &answer("awaiting")),
            None,
            "no charged amount yet"
        );
        assert_eq!(
            mismatch(&YEN_1000, &charged("successful", 1000, "JPY")),
            None
        );
        assert_eq!(
            mismatch(&YEN_1000, &charged("successful", 1000, "jpy")),
            None
        );
        assert_eq!(
            mismatch(&YEN_1000, &charged("successful", 900, "JPY")).as_deref(),
            Some("charged 900 JPY, requested 1000 JPY")
        );
        assert_eq!(
            mismatch(&YEN_1000, &charged("successful", 1000, "USD")).as_deref(),
            Some("charged 1000 USD, requested 1000 JPY")
        );
        let theirs = ProviderCharge {
            requested_amount: Some(1100),
            ..charged("successful", 1000, "JPY")
        };
        assert_eq!(
            mismatch(&YEN_1000, &theirs).as_deref(),
            Some("UnivaPay's requested_amount is 1100, ours is 1000")
        );
        // Their requested_amount alone, with nothing charged, is not yet a mismatch.
        let uncharged = ProviderCharge {
            requested_amount: Some(1100),
            ..answer("awaiting")
        };
        assert_eq!(mismatch(&YEN_1000, &uncharged), None);
        // A null charged currency is compared as ours.
        let no_currency = ProviderCharge {
            charged_currency: None,
            ..charged("successful", 1000, "JPY")
        };
        assert_eq!(mismatch(&YEN_1000, &no_currency), None);
    }

    #[test]
    fn decide_moves_state_and_sets_next_check() {
        let d = decide(
            &at(State::Pending),
            &YEN_1000,
            &NO_DATES,
            Ok(&answer("awaiting")),
            now(),
            &POLICY,
            0.5,
        );
        assert_eq!(d.after.state, State::Awaiting);
        assert_eq!(d.transition(), Some((State::Pending, State::Awaiting)));
        assert_eq!(
            d.next_check_at,
            Some(now() + chrono::Duration::seconds(300))
        );

        let d = decide(
            &at(State::Awaiting),
            &YEN_1000,
            &NO_DATES,
            Ok(&charged("successful", 1000, "JPY")),
            now(),
            &POLICY,
            0.5,
        );
        assert_eq!(d.after.state, State::Successful);
        assert_eq!(d.next_check_at, None, "final: never again");
        assert!(!d.new_mismatch());

        let d = decide(
            &at(State::Awaiting),
            &YEN_1000,
            &NO_DATES,
            Ok(&answer("awaiting")),
            now(),
            &POLICY,
            0.5,
        );
        assert!(d.events.is_empty(), "nothing changed, nothing recorded");
    }

    #[test]
    fn an_unchanged_answer_is_due_again_by_the_cadence() {
        let day = Duration::from_secs(86_400);
        let policy = Policy {
            cadence: Cadence {
                schedule: [(Duration::ZERO, 600), (2 * day, 7200)]
                    .map(|(age, every)| crate::domain::RecheckStep {
                        age,
                        every: Duration::from_secs(every),
                    })
                    .into(),
                expiry_grace: Duration::from_secs(300),
                deadline_watch: day,
                stretch: 1.0,
            },
            ..POLICY.clone()
        };
        let awaiting = at(State::Awaiting);
        let decide_for = |dates: ChargeDates| {
            decide(
                &awaiting,
                &YEN_1000,
                &dates,
                Ok(&answer("awaiting")),
                now(),
                &policy,
                0.0,
            )
            .next_check_at
            .unwrap()
        };
        let days_ago = |n: i64| Some(now() - chrono::Duration::days(n));
        let young = ChargeDates {
            created_at: days_ago(1),
            expires_at: None,
        };
        assert_eq!(decide_for(young), now() + chrono::Duration::minutes(8));
        let old = ChargeDates {
            created_at: days_ago(3),
            expires_at: None,
        };
        assert_eq!(decide_for(old), now() + chrono::Duration::minutes(118));
        let at_deadline = ChargeDates {
            created_at: days_ago(3),
            expires_at: Some(now() + chrono::Duration::minutes(3)),
        };
        assert_eq!(
            decide_for(at_deadline),
            now() + chrono::Duration::minutes(8)
        );
        // Errors keep their backoff, whatever the cadence.
        let d = decide(
            &awaiting,
            &YEN_1000,
            &old,
            Err(&ApiError::Server(503)),
            now(),
            &policy,
            0.0,
        );
        assert_eq!(d.next_check_at, Some(now() + chrono::Duration::seconds(15)));
    }

    #[test]
    fn decide_on_errors_backs_off_and_keeps_state() {
        let before = at(State::Awaiting);
        let err = ApiError::Server(503);
        let d = decide(
            &before,
            &YEN_1000,
            &NO_DATES,
            Err(&err),
            now(),
            &POLICY,
            0.0,
        );
        assert_eq!(d.after.state, State::Awaiting);
        assert_eq!(d.after.consecutive_errors, 1);
        assert_eq!(d.next_check_at, Some(now() + chrono::Duration::seconds(15)));
        assert_eq!(d.events.len(), 1);
        assert_eq!(d.events[0].kind, EventKind::Error);

        let rl = ApiError::RateLimited {
            retry_after: Some(Duration::from_secs(600)),
        };
        let d = decide(&before, &YEN_1000, &NO_DATES, Err(&rl), now(), &POLICY, 0.0);
        assert_eq!(
            d.next_check_at,
            Some(now() + chrono::Duration::seconds(600))
        );
    }

    #[test]
    fn not_found_gives_up_at_the_limit() {
        let mut t = at(State::Pending);
        for n in 1..=3 {
            let d = decide(
                &t,
                &YEN_1000,
                &NO_DATES,
                Err(&ApiError::NotFound),
                now(),
                &POLICY,
                0.5,
            );
            assert_eq!(d.after.not_found_count, n);
            let gave_up = d.events.iter().any(|e| e.kind == EventKind::GaveUp);
            assert_eq!(gave_up, n == 3);
            assert_eq!(d.next_check_at.is_none(), n == 3);
            t = d.after;
        }
    }

    #[test]
    fn a_successful_answer_without_a_charged_amount_is_a_mismatch() {
        let d = decide(
            &at(State::Awaiting),
            &YEN_1000,
            &NO_DATES,
            Ok(&answer("successful")),
            now(),
            &POLICY,
            0.5,
        );
        assert_eq!(d.after.state, State::Successful);
        assert!(d.after.amount_mismatch);
        assert!(d.new_mismatch());
        let detail = d.after.mismatch_detail.unwrap();
        assert!(detail.contains("charged amount was missing"), "{detail}");
        assert!(detail.contains("requested 1000 JPY"), "{detail}");
        // Not yet paid: nothing to verify, nothing flagged.
        for status in ["pending", "awaiting", "failed", "canceled"] {
            assert_eq!(mismatch(&YEN_1000, &answer(status)), None, "{status}");
        }
    }

    fn with_payment(
        status: &str,
        number: serde_json::Value,
        url: serde_json::Value,
    ) -> ProviderCharge {
        let mut a = answer(status);
        a.metadata
            .insert("internal_convenience_payment_number".into(), number);
        a.metadata
            .insert("internal_convenience_payment_url".into(), url);
        a
    }

    #[test]
    fn payment_details_that_change_are_events_and_bad_ones_are_refused_once() {
        let first = with_payment("awaiting", "1111-2222".into(), "https://x.test/a".into());
        let d = decide(
            &at(State::Pending),
            &YEN_1000,
            &NO_DATES,
            Ok(&first),
            now(),
            &POLICY,
            0.5,
        );
        assert_eq!(d.after.payment_number.as_deref(), Some("1111-2222"));
        assert!(
            !d.events.iter().any(|e| e.kind == EventKind::PaymentChanged),
            "first seen"
        );

        let changed = with_payment("awaiting", "3333-4444".into(), "https://x.test/b".into());
        let d2 = decide(
            &d.after,
            &YEN_1000,
            &NO_DATES,
            Ok(&changed),
            now(),
            &POLICY,
            0.5,
        );
        let details: Vec<_> = d2
            .events
            .iter()
            .filter(|e| e.kind == EventKind::PaymentChanged)
            .map(|e| e.detail.clone().unwrap())
            .collect();
        assert_eq!(
            details,
            [
                r#"payment_number changed from "1111-2222" to "3333-4444""#,
                r#"payment_url changed from "https://x.test/a" to "https://x.test/b""#
            ]
        );

        let hostile = with_payment(
            "awaiting",
            "9".repeat(1_000_000).into(),
            "javascript:alert(1)".into(),
        );
        let d3 = decide(
            &d2.after,
            &YEN_1000,
            &NO_DATES,
            Ok(&hostile),
            now(),
            &POLICY,
            0.5,
        );
        assert_eq!(
            d3.after.payment_number.as_deref(),
            Some("3333-4444"),
            "old kept"
        );
        assert_eq!(
            d3.after.payment_url.as_deref(),
            Some("https://x.test/b"),
            "old kept"
        );
        let err = d3.after.last_error.clone().unwrap();
        assert!(
            err.contains("payment number") && err.contains("payment URL"),
            "{err}"
        );
        assert!(err.chars().count() <= MAX_ERROR);
        assert_eq!(
            d3.events.iter().map(|e| e.kind).collect::<Vec<_>>(),
            [EventKind::Error]
        );
        assert!(
            d3.next_check_at.is_some(),
            "still checked on the usual schedule"
        );
        // The same refusal again is not news.
        let d4 = decide(
            &d3.after,
            &YEN_1000,
            &NO_DATES,
            Ok(&hostile),
            now(),
            &POLICY,
            0.5,
        );
        assert!(d4.events.is_empty(), "{:?}", d4.events);
        assert_eq!(d4.after, d3.after);
    }

    #[test]
    fn a_404_in_a_wall_is_recorded_but_not_counted() {
        let before = Tracked {
            not_found_count: POLICY.not_found_limit - 1,
            ..at(State::Awaiting)
        };
        let d = decide_not_found_in_wall(&before, now(), &POLICY, 0.0);
        assert_eq!(d.after.not_found_count, before.not_found_count);
        assert_eq!(d.after.state, State::Awaiting);
        assert!(
            d.next_check_at.is_some_and(|t| t > now()),
            "still due later"
        );
        assert_eq!(
            d.events.iter().map(|e| e.kind).collect::<Vec<_>>(),
            [EventKind::Error],
            "no gave_up"
        );
        assert!(d.after.last_error.unwrap().contains("not counted"));
        // The same 404 outside a wall is the last straw.
        let counted = decide(
            &before,
            &YEN_1000,
            &NO_DATES,
            Err(&ApiError::NotFound),
            now(),
            &POLICY,
            0.0,
        );
        assert!(counted.events.iter().any(|e| e.kind == EventKind::GaveUp));
    }

    #[test]
    fn hostile_error_text_is_stored_clean_and_capped() {
        let err = ApiError::Malformed(format!("\u{1b}[31mbad\n{}", "x".repeat(1_000_000)));
        let d = decide(
            &at(State::Pending),
            &YEN_1000,
            &NO_DATES,
            Err(&err),
            now(),
            &POLICY,
            0.5,
        );
        for text in [
            d.after.last_error.unwrap(),
            d.events[0].detail.clone().unwrap(),
        ] {
            assert!(text.chars().count() <= MAX_ERROR);
            assert!(
                text.starts_with("malformed answer from UnivaPay: bad xxx"),
                "{text:.60}"
            );
            assert!(!text.chars().any(char::is_control));
        }
    }

    #[test]
    fn backoff_doubles_within_bounds() {
        let b = |n, j| backoff(n, Duration::from_secs(30), Duration::from_secs(3600), j);
        assert_eq!(b(1, 1.0), Duration::from_secs(30));
        assert_eq!(b(2, 1.0), Duration::from_secs(60));
        assert_eq!(b(3, 0.0), Duration::from_secs(60));
        assert_eq!(b(20, 1.0), Duration::from_secs(3600));
        assert_eq!(b(u32::MAX, 1.0), Duration::from_secs(3600));
    }

    fn status_word() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("pending".to_owned()),
            Just("awaiting".to_owned()),
            Just("authorized".to_owned()),
            Just("successful".to_owned()),
            Just("failed".to_owned()),
            Just("error".to_owned()),
            Just("canceled".to_owned()),
            "[a-z_]{1,12}",
        ]
    }

    fn observation() -> impl Strategy<Value = Result<ProviderCharge, ApiError>> {
        prop_oneof![
            4 => (status_word(), proptest::option::of(0i64..2000), prop_oneof![Just("JPY"), Just("USD")])
                .prop_map(|(s, amount, cur)| Ok(ProviderCharge {
                    charged_amount: amount,
                    charged_currency: amount.and(Currency::parse(cur)),
                    ..answer(&s)
                })),
            1 => prop_oneof![
                Just(ApiError::Server(500)),
                Just(ApiError::NotFound),
                Just(ApiError::Timeout(Duration::from_secs(1))),
                Just(ApiError::Malformed("x".into())),
                Just(ApiError::RateLimited { retry_after: None }),
            ]
            .prop_map(Err),
        ]
    }

    proptest! {
        /// Over any sequence of observations: one transition event per state change and
        /// never two in one check; transitions chain (each from is the previous to); once
        /// final, the state never moves and no next check is scheduled; the mismatch flag
        /// never clears and its event is written at most once.
        #[test]
        fn observation_sequences_keep_the_invariants(
            obs in proptest::collection::vec(observation(), 1..40),
            jitter in 0.0f64..1.0,
        ) {
            let mut t = Tracked::new();
            let mut chain_end = State::Pending;
            let mut mismatch_events = 0;
            let mut final_at: Option<State> = None;
            for o in &obs {
                let d = decide(&t, &YEN_1000, &NO_DATES, o.as_ref(), now(), &POLICY, jitter);
                let transitions: Vec<_> = d.events.iter().filter(|e| e.kind == EventKind::Transition).collect();
                prop_assert!(transitions.len() <= 1);
                prop_assert_eq!(transitions.len() == 1, d.after.state != t.state);
                if let Some(e) = transitions.first() {
                    prop_assert_eq!(e.from_state, Some(chain_end));
                    chain_end = e.to_state.unwrap();
                }
                if let Some(f) = final_at {
                    prop_assert_eq!(d.after.state, f);
                    prop_assert!(d.next_check_at.is_none());
                }
                if d.after.state.is_final() {
                    final_at.get_or_insert(d.after.state);
                    prop_assert!(d.next_check_at.is_none());
                } else if d.after.not_found_count < POLICY.not_found_limit {
                    prop_assert!(d.next_check_at.is_some_and(|n| n > now()));
                }
                prop_assert!(!t.amount_mismatch || d.after.amount_mismatch, "sticky");
                mismatch_events += d.events.iter().filter(|e| e.kind == EventKind::Mismatch).count();
                prop_assert!(mismatch_events <= 1);
                if let Ok(a) = o {
                    if map_status(&a.status).is_none() {
                        prop_assert_eq!(d.after.state, t.state, "unknown status changes no state");
                    }
                } else {
                    prop_assert_eq!(d.after.state, t.state, "errors change no state");
                }
                t = d.after;
            }
            prop_assert_eq!(chain_end, t.state);
        }

        /// Applying the same answer twice: the second changes nothing and records nothing.
        #[test]
        fn the_same_answer_twice_is_a_no_op(o in observation().prop_filter("answers", Result::is_ok)) {
            let a = o.unwrap();
            let first = decide(&Tracked::new(), &YEN_1000, &NO_DATES, Ok(&a), now(), &POLICY, 0.5);
            let second = decide(&first.after, &YEN_1000, &NO_DATES, Ok(&a), now(), &POLICY, 0.5);
            prop_assert!(second.events.is_empty());
            prop_assert_eq!(second.after, first.after);
        }

        #[test]
        fn backoff_stays_within_half_and_full_cap(n in 1u32..100, jitter in 0.0f64..1.0) {
            let base = Duration::from_secs(30);
            let max = Duration::from_secs(3600);
            let d = backoff(n, base, max, jitter);
            let full = base.saturating_mul(1u32 << (n - 1).min(30)).min(max);
            prop_assert!(d >= full / 2 && d <= full);
        }
    }
}
