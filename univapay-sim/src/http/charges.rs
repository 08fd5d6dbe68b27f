//! The charge routes: `GET /stores/{store_id}/charges/{charge_id}`, the call the
//! reconciler makes most, with its scripted replies and injected faults, and its
//! `polling=true` hold; and `POST /charges` (step 2 of the seed flow: a charge with a
//! token, under `Idempotency-Key`).

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query as QueryParams, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use serde_json::json;
use tokio::time::Instant;

use super::idempotency;
use super::pipeline::{self, Call};
use super::respond::{self, ApiError};
use crate::config::Reply;
use crate::control::{NewCharge, create_charge};
use crate::counters::bump;
use crate::ratelimit::Route;
use crate::sim::Sim;

/// How long `polling=true` holds a GET at most, in real time (UnivaPay's Japanese docs
/// say about 3 s).
pub(crate) const POLLING_HOLD: Duration = Duration::from_secs(3);

/// How often a held GET looks at the charge again.
const POLLING_STEP: Duration = Duration::from_millis(50);

pub(super) async fn get_charge(
    State(sim): State<Sim>,
    Path((store_id, charge_id)): Path<(String, String)>,
    QueryParams(params): QueryParams<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let url = format!("/stores/{store_id}/charges/{charge_id}");
    let polling = params.get("polling").is_some_and(|v| v == "true");
    pipeline::run(&sim, Route::ChargeGet, &url, &headers, async |call| {
        if polling {
            hold_while_pending(&call.sim, &store_id, &charge_id).await;
        }
        answer_charge(call, &store_id, &charge_id).await
    })
    .await
}

/// `polling=true`: waits (up to [`POLLING_HOLD`] of real time, read from tokio's clock so
/// a paused test is not slowed) while the charge is `pending`. A charge that is not there,
/// or has left `pending` (`awaiting` or final), is answered at once.
async fn hold_while_pending(sim: &Sim, store_id: &str, charge_id: &str) {
    let until = Instant::now() + POLLING_HOLD;
    loop {
        let pending = sim
            .charge(charge_id)
            .is_some_and(|c| c.store_id == store_id && c.status == "pending");
        if !pending || Instant::now() >= until {
            return;
        }
        tokio::time::sleep(POLLING_STEP.min(until - Instant::now())).await;
    }
}

/// `POST /charges`: `transaction_token_id`, `amount`, `currency`, optional `metadata`.
/// 201 with the charge (`pending`); its store is its token's.
pub(super) async fn post_charge(
    State(sim): State<Sim>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    pipeline::run(
        &sim,
        Route::ChargeCreate,
        "/charges",
        &headers,
        async |call| {
            let request = match idempotency::parse_body(&body) {
                Ok(v) => v,
                Err(e) => return e.response(),
            };
            let create: idempotency::Create<'_> = Box::new(|d, pop, now| {
                let charge = create_charge(&call.sim, d, pop, now, new_charge(&request)?)
                    .map_err(ApiError::from)?;
                bump(&call.sim.inner.counters.charge_creates);
                Ok((StatusCode::CREATED, charge.to_json()))
            });
            idempotency::once(call, "charges", &headers, &request, create)
        },
    )
    .await
}

/// The fields of a charge request, checked for presence and type.
fn new_charge(req: &serde_json::Value) -> Result<NewCharge, ApiError> {
    let token_id = req
        .get("transaction_token_id")
        .and_then(|v| v.as_str())
        .ok_or_else(|| ApiError::invalid("transaction_token_id", "REQUIRED_VALUE"))?;
    let amount = req
        .get("amount")
        .and_then(|v| v.as_i64())
        .ok_or_else(|| ApiError::invalid("amount", "REQUIRED_VALUE"))?;
    let currency = req
        .get("currency")
        .and_then(|v| v.as_str())
        .ok_or_else(|| ApiError::invalid("currency", "REQUIRED_VALUE"))?;
    Ok(NewCharge {
        token_id: token_id.into(),
        amount,
        currency: currency.into(),
        metadata: req.get("metadata").cloned().unwrap_or_default(),
    })
}

/// A scripted reply if one is queued for the charge, else perhaps an injected fault,
/// else the charge itself.
async fn answer_charge(call: &Call, store_id: &str, charge_id: &str) -> Response {
    if let Some(reply) = next_script(call, charge_id) {
        bump(&call.sim.inner.counters.scripted);
        if let Some(resp) = play(reply).await {
            return resp;
        }
    } else if let Some(resp) = call.random_fault(|| malformed_charge(charge_id)).await {
        return resp;
    }
    the_charge(call, store_id, charge_id)
}

/// Counts the GET for the charge and takes its next scripted reply.
fn next_script(call: &Call, charge_id: &str) -> Option<Reply> {
    let mut d = call.sim.data();
    if call.cfg.count_per_charge {
        *d.per_charge_requests
            .entry(charge_id.to_owned())
            .or_default() += 1;
    }
    if d.scripts.is_empty() {
        return None;
    }
    d.scripts.get_mut(charge_id).and_then(VecDeque::pop_front)
}

/// The scripted answer, or `None` when the script only delays the normal one.
async fn play(reply: Reply) -> Option<Response> {
    Some(match reply {
        Reply::Raw { status, body } => respond::json(respond::status_from(status), body),
        Reply::WithHeaders {
            status,
            body,
            headers,
        } => {
            let mut resp = respond::json(respond::status_from(status), body);
            for (k, v) in headers {
                if let (Ok(k), Ok(v)) = (HeaderName::try_from(k), HeaderValue::try_from(v)) {
                    resp.headers_mut().insert(k, v);
                }
            }
            resp
        }
        Reply::Json(v) => respond::json(StatusCode::OK, v.to_string()),
        Reply::Delay(d) => {
            tokio::time::sleep(d).await;
            return None;
        }
        Reply::Hang => respond::hang(),
        Reply::Reset => respond::reset(),
    })
}

/// A 200 body that is not a usable charge: cut JSON, a proxy's HTML, or wrong types.
fn malformed_charge(charge_id: &str) -> String {
    match rand::random_range(0..3) {
        0 => format!("{{\"id\": \"{charge_id}\", \"status\": "),
        1 => "<html><body>Bad Gateway</body></html>".to_owned(),
        _ => json!({"id": charge_id, "status": 42, "requested_amount": "lots"}).to_string(),
    }
}

/// The charge as it is now, or 404 (also for another store's path: there is no unscoped
/// charge GET).
fn the_charge(call: &Call, store_id: &str, charge_id: &str) -> Response {
    let counters = &call.sim.inner.counters;
    match call.sim.charge(charge_id) {
        Some(ch) if ch.store_id == store_id => {
            bump(&counters.ok);
            respond::json(StatusCode::OK, ch.to_json().to_string())
        }
        _ => {
            bump(&counters.not_found);
            respond::error(StatusCode::NOT_FOUND, "NOT_FOUND")
        }
    }
}
