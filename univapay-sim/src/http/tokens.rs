//! The token routes: `POST /tokens` (step 1 of the seed flow) and
//! `GET /stores/{store_id}/tokens/{token_id}` (what discovery reads to learn a charge's
//! payment type, konbini brand and deadline).
//!
//! `POST /tokens` validates what UnivaPay requires of a konbini token (`email`,
//! `data.customer_name`, `data.phone_number{country_code, local_number}`, a known
//! `data.convenience_store`, a parsable `data.expiration_period` and
//! `data.expiration_time_shift` when given) and keeps only the harmless details of a card.
//! `country_code` is answered as a string, as the official SDK types it.
//! Other payment types are accepted with their `data` as given. The token is made in
//! [`crate::SimConfig::default_store_id`] unless the body names another known store in
//! `store_id` (the simulator's stand-in for "the store of the app token").

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

use super::idempotency;
use super::pipeline::{self, Call};
use super::respond::{self, ApiError};
use crate::control::{new_token_id, rfc3339};
use crate::counters::bump;
use crate::ratelimit::Route;
use crate::seed::{CHAINS, Population};
use crate::sim::Sim;
use crate::store::Data;
use crate::token::{PAYMENT_TYPES, SimToken, parse_iso_duration, parse_time_shift};

pub(super) async fn create_token(
    State(sim): State<Sim>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    pipeline::run(
        &sim,
        Route::TokenCreate,
        "/tokens",
        &headers,
        async |call| {
            let request = match idempotency::parse_body(&body) {
                Ok(v) => v,
                Err(e) => return e.response(),
            };
            let create: idempotency::Create<'_> = Box::new(|d, pop, now| {
                let mut token = token_from(call, d, pop, &request)?;
                token.id = new_token_id(d);
                token.created_on = rfc3339(now);
                d.tokens.insert(token.id.clone(), token.clone());
                bump(&call.sim.inner.counters.token_creates);
                Ok((StatusCode::CREATED, token.to_json()))
            });
            idempotency::once(call, "tokens", &headers, &request, create)
        },
    )
    .await
}

pub(super) async fn get_token(
    State(sim): State<Sim>,
    Path((store_id, token_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let url = format!("/stores/{store_id}/tokens/{token_id}");
    pipeline::run(&sim, Route::TokenGet, &url, &headers, async |call| {
        let malformed = || format!("{{\"id\": \"{token_id}\", \"payment_type\": ");
        if let Some(resp) = call.random_fault(malformed).await {
            return resp;
        }
        bump(&call.sim.inner.counters.token_gets);
        match visible_token(call, &token_id) {
            Some(t) if t.store_id == store_id => {
                respond::json(StatusCode::OK, t.to_json().to_string())
            }
            _ => respond::error(StatusCode::NOT_FOUND, "NOT_FOUND"),
        }
    })
    .await
}

/// The token a GET may see: not removed, and not one the `token_not_found` fault hides.
fn visible_token(call: &Call, id: &str) -> Option<SimToken> {
    let share = call.cfg.discovery_faults.token_not_found;
    if share > 0.0 && unit_hash(id) < share {
        return None;
    }
    call.sim.token(id)
}

/// A stable draw in `0..1` from a string.
pub(super) fn unit_hash(s: &str) -> f64 {
    let h = s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    (crate::seed::splitmix(h) >> 11) as f64 / (1u64 << 53) as f64
}

/// The token a request describes (id and creation time still to be set).
fn token_from(
    call: &Call,
    d: &Data,
    pop: Option<&Population>,
    req: &Value,
) -> Result<SimToken, ApiError> {
    let payment_type = req_str(req, "payment_type")?;
    if !PAYMENT_TYPES.contains(&payment_type) {
        return Err(ApiError::invalid("payment_type", "NOT_SUPPORTED"));
    }
    let token_type = opt_str(req, "type")?.unwrap_or("one_time");
    if !["one_time", "subscription", "recurring"].contains(&token_type) {
        return Err(ApiError::invalid("type", "NOT_SUPPORTED"));
    }
    let email = opt_str(req, "email")?;
    if email.is_some_and(|e| !e.contains('@')) {
        return Err(ApiError::invalid("email", "INVALID_FORMAT"));
    }
    let store_id = store_of(call, d, pop, req)?;
    let data = req.get("data").filter(|v| v.is_object());
    let data = match (payment_type, data) {
        (_, None) => return Err(ApiError::invalid("data", "REQUIRED_VALUE")),
        ("konbini", _) if email.is_none() => {
            return Err(ApiError::invalid("email", "REQUIRED_VALUE"));
        }
        ("konbini", Some(data)) => konbini_data(data)?,
        ("card", Some(data)) => card_data(data),
        (_, Some(data)) => data.clone(),
    };
    let metadata = match req.get("metadata") {
        None | Some(Value::Null) => json!({}),
        Some(m) if m.is_object() => m.clone(),
        Some(_) => return Err(ApiError::invalid("metadata", "MUST_BE_OBJECT")),
    };
    let mut t = SimToken::card("", &store_id);
    t.payment_type = payment_type.into();
    t.token_type = token_type.into();
    t.email = email.map(str::to_owned);
    t.data = data;
    t.metadata = metadata;
    Ok(t)
}

/// The default store, or the known store the request names.
fn store_of(
    call: &Call,
    d: &Data,
    pop: Option<&Population>,
    req: &Value,
) -> Result<String, ApiError> {
    let default = &call.cfg.default_store_id;
    let Some(named) = opt_str(req, "store_id")? else {
        return Ok(default.clone());
    };
    let seeded = pop.is_some_and(|p| p.store_ids().iter().any(|s| s == named));
    if named == default || seeded || d.knows_store(named) {
        Ok(named.to_owned())
    } else {
        Err(ApiError::invalid("store_id", "NOT_FOUND"))
    }
}

/// A konbini token's data, checked, with the two optional fields always present.
fn konbini_data(data: &Value) -> Result<Value, ApiError> {
    let field = |name: &str| format!("data.{name}");
    let name = req_str(data, "customer_name")
        .map_err(|_| ApiError::invalid(&field("customer_name"), "REQUIRED_VALUE"))?;
    let brand = req_str(data, "convenience_store")
        .map_err(|_| ApiError::invalid(&field("convenience_store"), "REQUIRED_VALUE"))?;
    if !CHAINS.contains(&brand) {
        return Err(ApiError::invalid(
            &field("convenience_store"),
            "NOT_SUPPORTED",
        ));
    }
    let phone = phone_number(data)?;
    let period = opt_str(data, "expiration_period")?;
    if period.is_some_and(|p| parse_iso_duration(p).is_none()) {
        return Err(ApiError::invalid(
            &field("expiration_period"),
            "INVALID_FORMAT",
        ));
    }
    let shift = opt_str(data, "expiration_time_shift")?;
    if shift.is_some_and(|s| parse_time_shift(s).is_none()) {
        return Err(ApiError::invalid(
            &field("expiration_time_shift"),
            "INVALID_FORMAT",
        ));
    }
    Ok(json!({
        "customer_name": name,
        "phone_number": phone,
        "convenience_store": brand,
        "expiration_period": period,
        "expiration_time_shift": shift,
    }))
}

/// `data.phone_number`: `country_code` digits (a JSON number is taken too), `local_number`
/// digits. The answer carries `country_code` as a string, as the SDK types it.
fn phone_number(data: &Value) -> Result<Value, ApiError> {
    let bad = |f: &str| ApiError::invalid(&format!("data.phone_number.{f}"), "INVALID_FORMAT");
    let phone = data
        .get("phone_number")
        .filter(|v| v.is_object())
        .ok_or_else(|| ApiError::invalid("data.phone_number", "REQUIRED_VALUE"))?;
    let code = match phone.get("country_code") {
        Some(Value::Number(n)) if n.is_u64() => n.as_u64().unwrap_or(0),
        Some(Value::String(s)) => s
            .trim_start_matches('+')
            .parse()
            .map_err(|_| bad("country_code"))?,
        _ => return Err(bad("country_code")),
    };
    let local = phone
        .get("local_number")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit() || c == '-'))
        .ok_or_else(|| bad("local_number"))?;
    Ok(json!({"country_code": code.to_string(), "local_number": local}))
}

/// A card token's data without the number or the security code (UnivaPay never shows
/// them back): the holder, brand, last four digits and expiry.
fn card_data(data: &Value) -> Value {
    let number: String = data
        .get("card_number")
        .and_then(Value::as_str)
        .unwrap_or("")
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    let brand = match number.chars().next() {
        Some('4') => "visa",
        Some('5') => "mastercard",
        Some('3') => "american_express",
        _ => "unknown",
    };
    let last_four = &number[number.len().saturating_sub(4)..];
    json!({
        "card": {
            "cardholder": data.get("cardholder"),
            "brand": brand,
            "last_four": last_four,
            "exp_month": data.get("exp_month"),
            "exp_year": data.get("exp_year"),
        },
        "billing": null,
    })
}

fn req_str<'a>(v: &'a Value, field: &str) -> Result<&'a str, ApiError> {
    opt_str(v, field)?.ok_or_else(|| ApiError::invalid(field, "REQUIRED_VALUE"))
}

fn opt_str<'a>(v: &'a Value, field: &str) -> Result<Option<&'a str>, ApiError> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.is_empty() => Ok(Some(s)),
        Some(_) => Err(ApiError::invalid(field, "INVALID_FORMAT")),
    }
}
