//! A fake UnivaPay API for konbini-reconciler: the integration tests' fake server, the
//! demo's in-process UnivaPay and the benchmark's standalone simulator (the `univapay-sim`
//! binary) are this one piece of code.
//!
//! It serves `GET /stores/{store_id}/charges/{charge_id}` with the JSON shapes of the real
//! API and checks `Authorization: Bearer {secret}.{app_token}` like the real API. What it
//! answers:
//! - charges set directly ([`Sim::upsert`], [`Sim::update`]), or a seeded [`Population`]
//!   of any size whose charges go `pending -> awaiting -> final` on simulated time
//!   ([`SimClock`], [`Sim::advance`]);
//! - one-shot scripted replies ([`Sim::push_reply`]) that take precedence for a charge,
//!   which is how tests produce a precise 500, timeout, wrong id or malformed body;
//! - faults injected at a rate ([`Faults`]): 5xx, answers slower than any client timeout,
//!   connections cut mid-answer, malformed bodies;
//! - the rate-limit model ([`RateLimitConfig`]): a token bucket for the route and one per
//!   exact URL, the four `X-Remaining-Requests-*` / `X-Requests-Per-Minute-*` headers on
//!   every answer, and 429 with an empty body once a bucket is empty;
//! - a configurable latency before every answer.
//!
//! [`Sim::counters`] (and `GET /_sim/counters`) say what it saw and sent, 429s included.
//! It binds to loopback addresses only.
//!
//! # Map
//! - `sim`: the [`Sim`] handle, its shared state, serving, and the methods tests use;
//! - `charge`: [`SimCharge`], the charge model and its UnivaPay JSON;
//! - `seed`: [`Population`], charges computed from a seed instead of stored;
//! - `clock`: [`SimClock`], the simulated time charges live on;
//! - `config`: [`SimConfig`], [`Faults`], [`RateLimitConfig`], [`Reply`], [`Credentials`];
//! - `ratelimit` and `bucket`: the buckets behind the rate-limit headers and 429s;
//! - `counters`: [`CounterSnapshot`], what was seen and sent;
//! - `http`: the routes, each run through the shared steps in `http::pipeline`.

mod bucket;
mod charge;
mod clock;
mod config;
mod counters;
mod http;
mod ratelimit;
mod seed;
mod sim;

pub use bucket::{Limit, TokenBucket};
pub use charge::SimCharge;
pub use clock::SimClock;
pub use config::{Credentials, Faults, RateLimitConfig, Reply, SimConfig};
pub use counters::CounterSnapshot;
pub use seed::{CHAINS, Mix, Outcome, Planned, Population};
pub use sim::{RunningSim, Sim};
