//! `GET /stores/{store_id}/charges/{charge_id}/expiry/latest`: a konbini charge's payment
//! deadline, as the official SDK's `Charges.expiry` reads it (`ChargeExpiry`: `id`,
//! `charge_id`, `expiration_date`, `extension_count`, `created_on`, `updated_on`).
//!
//! The deadline is the one the simulator applies: for a seeded charge its plan's, for a
//! held one what [`crate::konbini_deadline`] makes of its creation time and its token's
//! `expiration_period` (or [`crate::SimConfig::konbini_expiry`]) and
//! `expiration_time_shift`. The simulator never extends a deadline, so `extension_count`
//! is 0. A charge that is not a konbini one, or not in this store, is a 404.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde_json::json;

use super::pipeline::{self, Call};
use super::respond;
use crate::charge::SimCharge;
use crate::control::rfc3339;
use crate::lifecycle::token_of;
use crate::ratelimit::Route;
use crate::seed::Population;
use crate::sim::Sim;
use crate::store::Data;
use crate::token::konbini_deadline;

pub(super) async fn latest(
    State(sim): State<Sim>,
    Path((store_id, charge_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let url = format!("/stores/{store_id}/charges/{charge_id}/expiry/latest");
    pipeline::run(
        &sim,
        Route::ChargeExpiry,
        &url,
        &headers,
        async |call| match deadline(call, &store_id, &charge_id) {
            Some((created_on, at)) => {
                let body = json!({
                    "id": format!("exp-{charge_id}"),
                    "charge_id": charge_id,
                    "expiration_date": rfc3339(at),
                    "extension_count": 0,
                    "created_on": created_on,
                    "updated_on": created_on,
                });
                respond::json(StatusCode::OK, body.to_string())
            }
            None => respond::error(StatusCode::NOT_FOUND, "NOT_FOUND"),
        },
    )
    .await
}

/// The charge's `created_on` and its payment deadline, for a konbini charge of the store.
fn deadline(call: &Call, store_id: &str, charge_id: &str) -> Option<(String, DateTime<Utc>)> {
    let default_period = call.cfg.konbini_expiry;
    call.sim.with_data(|d, pop, now| {
        let charge = Sim::charge_in(d, pop, charge_id, now).filter(|c| c.store_id == store_id);
        let found = charge.and_then(|c| deadline_of(d, pop, c, default_period));
        (found, vec![])
    })
}

fn deadline_of(
    d: &Data,
    pop: Option<&Population>,
    charge: SimCharge,
    default_period: Duration,
) -> Option<(String, DateTime<Utc>)> {
    let plan = pop
        .filter(|_| !d.holds(&charge.id))
        .and_then(|p| Some(p.plan(p.index_of(&charge.id)?)));
    if let Some(plan) = plan {
        let at = plan.created + chrono::Duration::from_std(plan.expiry).ok()?;
        return (!plan.is_card()).then_some((charge.created_on, at));
    }
    let token = token_of(d, pop, &charge).filter(|t| t.is_konbini())?;
    let created = DateTime::parse_from_rfc3339(&charge.created_on).ok()?;
    let period = token.expiration_period().unwrap_or(default_period);
    let at = konbini_deadline(
        created.with_timezone(&Utc),
        period,
        token.expiration_time_shift(),
    );
    Some((charge.created_on, at))
}
