//! The list routes: `GET /stores/{sid}/charges` (all charges, newest first by default, no
//! status filter, as at UnivaPay; `GET /charges` is the same over all stores) and `GET /stores/{sid}/transaction_history` (rows that
//! carry the payment type and, for konbini, the brand and customer name, and can be
//! filtered by them).
//!
//! Paging: `limit` (default 10, 1 to 100), `cursor` (id of the last item seen; an id the
//! simulator does not know is a 400), `cursor_direction` (`desc` by default, or `asc`),
//! `from`/`to` (inclusive bounds on `created_on`, as epoch milliseconds or RFC 3339).
//! The answer is `{"items": [...], "has_more": bool}`. The charge list also filters by
//! `currency`, `mode` and `transaction_token_id`; the history by `status`, `type`
//! (`charge`; `refund` finds nothing, the simulator has no refunds), `service_provider`
//! (`convenience` for konbini, `card` for cards, else the payment type), `payment_type`
//! and `mode`. Other parameters (`metadata` among them) are ignored.
//!
//! A history row's `amount`/`currency` are the charge's requested ones; `status` is the
//! charge's status now. Rows for card charges have an empty `user_data`.
//!
//! [`crate::DiscoveryFaults`] bend both routes' pages.

use std::collections::HashMap;

use axum::extract::{Path, Query as QueryParams, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

use super::pipeline::{self, Call};
use super::respond::{self, ApiError};
use super::tokens::unit_hash;
use crate::counters::bump;
use crate::listing::{Item, Query};
use crate::ratelimit::Route;
use crate::sim::Sim;

type Params = HashMap<String, String>;

pub(super) async fn list_charges(
    State(sim): State<Sim>,
    Path(store_id): Path<String>,
    QueryParams(params): QueryParams<Params>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    let url = with_query(&format!("/stores/{store_id}/charges"), raw);
    pipeline::run(&sim, Route::ChargeList, &url, &headers, async |call| {
        if let Some(resp) = call.random_fault(malformed_page).await {
            return resp;
        }
        bump(&call.sim.inner.counters.charge_lists);
        let keep = |item: &Item| charge_filter(&params, item);
        serve_page(call, &store_id, &params, keep, charge_item)
    })
    .await
}

/// `GET /charges`: the merchant's charges over all its stores, with the store list's
/// paging and filters (a cursor is the id of any store's charge).
pub(super) async fn list_merchant_charges(
    State(sim): State<Sim>,
    QueryParams(params): QueryParams<Params>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    let url = with_query("/charges", raw);
    pipeline::run(&sim, Route::ChargeList, &url, &headers, async |call| {
        if let Some(resp) = call.random_fault(malformed_page).await {
            return resp;
        }
        bump(&call.sim.inner.counters.charge_lists);
        let q = match paging(&params) {
            Ok(q) => q,
            Err(e) => return e.response(),
        };
        let keep = |item: &Item| charge_filter(&params, item);
        let Ok(page) = call.sim.merchant_page(&q, keep) else {
            return ApiError::invalid("cursor", "NOT_FOUND").response();
        };
        let items = page.items.iter().map(|i| charge_item(i).to_string());
        page_response(items.collect(), page.has_more)
    })
    .await
}

pub(super) async fn transaction_history(
    State(sim): State<Sim>,
    Path(store_id): Path<String>,
    QueryParams(params): QueryParams<Params>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    let url = with_query(&format!("/stores/{store_id}/transaction_history"), raw);
    pipeline::run(&sim, Route::History, &url, &headers, async |call| {
        if let Some(resp) = call.random_fault(malformed_page).await {
            return resp;
        }
        bump(&call.sim.inner.counters.history_lists);
        let keep = |item: &Item| history_filter(&params, item);
        let unknown = call.cfg.discovery_faults.unknown_payment_type;
        serve_page(call, &store_id, &params, keep, |item| {
            history_row(item, unknown)
        })
    })
    .await
}

fn with_query(path: &str, raw: Option<String>) -> String {
    match raw {
        Some(q) if !q.is_empty() => format!("{path}?{q}"),
        _ => path.to_owned(),
    }
}

fn malformed_page() -> String {
    "{\"items\": [{\"id\": ".to_owned()
}

/// Parses the paging parameters, fetches the page, bends it as the discovery faults say,
/// and renders it.
fn serve_page(
    call: &Call,
    store_id: &str,
    params: &Params,
    keep: impl Fn(&Item) -> bool,
    render: impl Fn(&Item) -> Value,
) -> Response {
    let faults = call.cfg.discovery_faults;
    if faults.empty_has_more {
        return page_response(vec![], true);
    }
    let mut q = match paging(params) {
        Ok(q) => q,
        Err(e) => return e.response(),
    };
    if faults.looping_cursor {
        q.cursor = None;
    }
    if let Some(n) = faults.huge_page {
        q.limit = n;
    }
    let Ok(page) = call.sim.page(store_id, &q, keep) else {
        return ApiError::invalid("cursor", "NOT_FOUND").response();
    };
    let (mut items, mut has_more) = (page.items, page.has_more || faults.looping_cursor);
    if faults.repeat_items {
        items.splice(0..0, page.cursor_item);
        items.extend(items.first().cloned());
    }
    let mut rendered: Vec<Value> = items.iter().map(render).collect();
    if faults.items_without_ids {
        for v in rendered.iter_mut().skip(2).step_by(3) {
            strip_ids(v);
        }
    }
    let mut rendered: Vec<String> = rendered.iter().map(Value::to_string).collect();
    if let Some(n) = faults.huge_page {
        // Serialised once and copied: a 10,000-item page stays cheap to make.
        fill_to(&mut rendered, n);
        has_more = false;
    }
    page_response(rendered, has_more)
}

/// Repeats a page's items until it holds `n`.
fn fill_to(items: &mut Vec<String>, n: usize) {
    let real = items.len();
    if real == 0 {
        return;
    }
    for i in real..n {
        items.push(items[i % real].clone());
    }
}

fn strip_ids(v: &mut Value) {
    if let Some(o) = v.as_object_mut() {
        for k in ["id", "resource_id", "charge_id"] {
            o.remove(k);
        }
    }
}

/// `{"items": [...], "has_more": ...}` from items already serialised.
fn page_response(items: Vec<String>, has_more: bool) -> Response {
    let body = format!(
        "{{\"items\":[{}],\"has_more\":{has_more}}}",
        items.join(",")
    );
    respond::json(StatusCode::OK, body)
}

/// `limit`, `cursor`, `cursor_direction`, `from`, `to`.
fn paging(params: &Params) -> Result<Query, ApiError> {
    let limit = match params.get("limit") {
        None => 10,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=100).contains(n))
            .ok_or_else(|| ApiError::invalid("limit", "INVALID_RANGE"))?,
    };
    let descending = match params.get("cursor_direction").map(String::as_str) {
        None | Some("desc") => true,
        Some("asc") => false,
        Some(_) => return Err(ApiError::invalid("cursor_direction", "INVALID_FORMAT")),
    };
    Ok(Query {
        limit,
        cursor: params.get("cursor").filter(|c| !c.is_empty()).cloned(),
        descending,
        from: instant(params, "from")?,
        to: instant(params, "to")?,
    })
}

/// A `from`/`to` bound in microseconds: epoch milliseconds, or RFC 3339.
fn instant(params: &Params, name: &str) -> Result<Option<i64>, ApiError> {
    let Some(v) = params.get(name) else {
        return Ok(None);
    };
    if let Ok(ms) = v.parse::<i64>() {
        return Ok(Some(ms.saturating_mul(1000)));
    }
    chrono::DateTime::parse_from_rfc3339(v)
        .map(|t| Some(t.timestamp_micros()))
        .map_err(|_| ApiError::invalid(name, "INVALID_FORMAT"))
}

fn charge_filter(params: &Params, item: &Item) -> bool {
    let c = &item.charge;
    params
        .get("currency")
        .is_none_or(|v| v.eq_ignore_ascii_case(&c.requested_currency))
        && params.get("mode").is_none_or(|v| *v == c.mode)
        && params
            .get("transaction_token_id")
            .is_none_or(|v| *v == c.token_id())
}

/// `service_provider` of a payment type, as the history reports and filters it.
fn service_provider(payment_type: &str) -> &str {
    match payment_type {
        "konbini" => "convenience",
        other => other,
    }
}

fn history_filter(params: &Params, item: &Item) -> bool {
    let (c, t) = (&item.charge, &item.token);
    params.get("status").is_none_or(|v| *v == c.status)
        && params.get("type").is_none_or(|v| v == "charge")
        && params
            .get("service_provider")
            .is_none_or(|v| v == service_provider(&t.payment_type))
        && params
            .get("payment_type")
            .is_none_or(|v| *v == t.payment_type)
        && params.get("mode").is_none_or(|v| *v == c.mode)
}

/// A charge list item: the charge with its merchant's and store's names, as the SDK's
/// `ChargeListItem` (`WithStoreMerchantName<ChargeItem>`) declares.
fn charge_item(item: &Item) -> Value {
    let mut v = item.charge.to_json();
    if let Some(o) = v.as_object_mut() {
        o.insert("merchant_name".into(), json!(MERCHANT_NAME));
        o.insert(
            "store_name".into(),
            json!(store_name(&item.charge.store_id)),
        );
    }
    v
}

/// The name of the simulator's one merchant, on list items.
pub(crate) const MERCHANT_NAME: &str = "Sim Merchant";

/// A store's display name, on list items.
pub(crate) fn store_name(store_id: &str) -> String {
    format!("Sim Store {store_id}")
}

/// A transaction history row for a charge. With the `unknown_payment_type` fault about
/// one charge in four shows a payment type nobody knows.
fn history_row(item: &Item, unknown_payment_type: bool) -> Value {
    let (c, t) = (&item.charge, &item.token);
    let payment_type = if unknown_payment_type && unit_hash(&c.id) < 0.25 {
        "sim_unknown"
    } else {
        t.payment_type.as_str()
    };
    let user_data = if t.payment_type == "konbini" {
        json!({"convenience_store": t.convenience_store, "customer_name": t.customer_name})
    } else {
        json!({})
    };
    json!({
        "resource_id": c.id,
        "charge_id": c.id,
        "store_id": c.store_id,
        "type": "charge",
        "amount": c.requested_amount,
        "amount_formatted": c.requested_amount,
        "currency": c.requested_currency,
        "status": c.status,
        "payment_type": payment_type,
        "service_provider": service_provider(&t.payment_type),
        "mode": c.mode,
        "user_data": user_data,
        "metadata": c.metadata,
        "created_on": c.created_on,
    })
}
