//! The HTTP face of the simulator: the router, and one module per group of routes. Every
//! API route runs the same steps ([`pipeline`]) before its own answer.

mod charges;
mod expiry;
pub(crate) mod idempotency;
mod lists;
mod pipeline;
mod respond;
mod tokens;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};

use crate::sim::Sim;

pub(crate) fn router(sim: Sim) -> Router {
    Router::new()
        .route("/heartbeat", get(|| async { StatusCode::OK }))
        .route(
            "/stores/{store_id}/charges/{charge_id}",
            get(charges::get_charge),
        )
        .route(
            "/stores/{store_id}/charges/{charge_id}/expiry/latest",
            get(expiry::latest),
        )
        .route("/stores/{store_id}/charges", get(lists::list_charges))
        .route(
            "/stores/{store_id}/transaction_history",
            get(lists::transaction_history),
        )
        .route(
            "/stores/{store_id}/tokens/{token_id}",
            get(tokens::get_token),
        )
        .route("/tokens", post(tokens::create_token))
        .route(
            "/charges",
            post(charges::post_charge).get(lists::list_merchant_charges),
        )
        .route("/_sim/counters", get(counters))
        .with_state(sim)
}

/// The simulator's own counters, without auth (a test and benchmark aid, not UnivaPay's).
async fn counters(State(sim): State<Sim>) -> axum::response::Response {
    respond::json(
        StatusCode::OK,
        serde_json::to_string(&sim.counters()).unwrap_or_default(),
    )
}
