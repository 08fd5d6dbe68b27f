//! The HTTP face of the simulator: the router, and one module per group of routes. Every
//! API route runs the same steps ([`pipeline`]) before its own answer.

mod charges;
mod pipeline;
mod respond;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use crate::sim::Sim;

pub(crate) fn router(sim: Sim) -> Router {
    Router::new()
        .route("/heartbeat", get(|| async { StatusCode::OK }))
        .route(
            "/stores/{store_id}/charges/{charge_id}",
            get(charges::get_charge),
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
