//! `Idempotency-Key` on the creating POSTs (`/tokens`, `/charges`), as UnivaPay documents
//! it: the first request with a key is processed and its answer stored
//! (`Idempotency-Status: successfully_stored`); a later request with the same key and
//! the same body gets the stored answer again, status and body unchanged
//! (`Idempotency-Status: retrieved`). A key is kept for 24 hours of simulated time.
//!
//! The same key with a different body is refused with 409 `IDEMPOTENCY_KEY_CONFLICT`
//! (the code UnivaPay's node SDK knows), and nothing is created. A request without a key
//! is processed with no `Idempotency-Status` header. Keys are per route: the same key on
//! `/tokens` and `/charges` are two keys.
//!
//! UnivaPay's documentation lists `successfully_stored` for a first use; the simulator's
//! `retrieved` for a replay is its own word for the documented "retrieved" case, so a
//! client should treat any value other than `successfully_stored` with suspicion rather
//! than match it exactly.

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde_json::Value;

use super::pipeline::Call;
use super::respond::{self, ApiError};
use crate::counters::bump;
use crate::seed::Population;
use crate::store::{Data, Stored};

/// `Idempotency-Status` on the first use of a key.
pub const STORED: &str = "successfully_stored";
/// `Idempotency-Status` on a replay.
pub const RETRIEVED: &str = "retrieved";

/// What a creating request does when it is processed: its status and JSON body.
pub(super) type Create<'a> = Box<
    dyn FnOnce(
            &mut Data,
            Option<&Population>,
            DateTime<Utc>,
        ) -> Result<(StatusCode, Value), ApiError>
        + 'a,
>;

/// Processes a creating request once per key. `request` is the parsed body.
pub(super) fn once(
    call: &Call,
    route: &'static str,
    headers: &HeaderMap,
    request: &Value,
    create: Create<'_>,
) -> Response {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty())
        .map(str::to_owned);
    let counters = &call.sim.inner.counters;
    let (answer, status_header) = call.sim.with_data(|d, pop, now| {
        let Some(key) = key else {
            return ((run(create, d, pop, now), None), vec![]);
        };
        let slot = (route, key);
        match d.idempotency.get(&slot) {
            Some(s) if now - s.at <= chrono::Duration::hours(24) => {
                if s.request == *request {
                    bump(&counters.idempotent_replays);
                    return (((s.status, s.body.clone()), Some(RETRIEVED)), vec![]);
                }
                bump(&counters.idempotency_conflicts);
                let conflict = ApiError {
                    status: StatusCode::CONFLICT,
                    code: "IDEMPOTENCY_KEY_CONFLICT",
                    errors: vec![],
                };
                return (((409, conflict.body()), None), vec![]);
            }
            _ => {}
        }
        let answer = run(create, d, pop, now);
        let stored = Stored {
            request: request.clone(),
            status: answer.0,
            body: answer.1.clone(),
            at: now,
        };
        d.idempotency.insert(slot, stored);
        ((answer, Some(STORED)), vec![])
    });
    let mut resp = respond::json(respond::status_from(answer.0), answer.1);
    if let Some(v) = status_header {
        resp.headers_mut()
            .insert("idempotency-status", HeaderValue::from_static(v));
    }
    resp
}

fn run(
    create: Create<'_>,
    d: &mut Data,
    pop: Option<&Population>,
    now: DateTime<Utc>,
) -> (u16, String) {
    match create(d, pop, now) {
        Ok((status, body)) => (status.as_u16(), body.to_string()),
        Err(e) => (e.status.as_u16(), e.body()),
    }
}

/// The body as a JSON object, or the 400 a malformed one gets.
pub(super) fn parse_body(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice::<Value>(body)
        .ok()
        .filter(Value::is_object)
        .ok_or_else(|| ApiError::invalid("body", "INVALID_JSON"))
}
