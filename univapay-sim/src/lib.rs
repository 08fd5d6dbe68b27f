//! A fake UnivaPay API for konbini-reconciler: the integration tests' fake server, the
//! demo's in-process UnivaPay and the benchmark's standalone simulator (the `univapay-sim`
//! binary) are this one piece of code.
//!
//! It serves, with the JSON shapes of the real API and its
//! `Authorization: Bearer {secret}.{app_token}` check:
//! - `GET /stores/{sid}/charges/{id}`: the charge;
//! - `POST /tokens` and `GET /stores/{sid}/tokens/{id}`: transaction tokens (payment
//!   type, konbini brand and deadline);
//! - `POST /charges` with `Idempotency-Key` / `Idempotency-Status`: a charge that goes
//!   `pending -> awaiting` on simulated time and then waits to be paid, canceled or
//!   expired ([`Sim::pay`], [`Sim::schedule`], its deadline);
//! - `polling=true` on the charge GET: held (up to 3 s of real time) while the charge is
//!   `pending`, as UnivaPay does;
//! - `GET /stores/{sid}/charges/{id}/expiry/latest`: a konbini charge's deadline;
//! - `GET /stores/{sid}/charges`, the merchant-wide `GET /charges` and `GET
//!   /stores/{sid}/transaction_history`: cursor paging over held and seeded charges, with
//!   filters;
//! - `GET /heartbeat` (no auth) and `GET /_sim/counters` (the simulator's own).
//!
//! The JSON is shaped as UnivaPay's official Node SDK (univapay-node) declares it
//! (`merchant_id` on charges, `merchant_name`/`store_name` on list items, a token's
//! `phone_number.country_code` a string, no `null` for a token's optional fields), and
//! `conformance/` proves it with the SDK itself (see `univapay-sim/README.md`).
//!
//! It delivers webhooks like UnivaPay ([`WebhookTarget`] in [`SimConfig::webhook`]):
//! `charge_updated` and `charge_finished` POSTs with a verbatim `Authorization` value,
//! a 3 s timeout, retries with backoff, a share lost, delays, all on simulated time.
//!
//! What it answers with:
//! - charges set directly ([`Sim::upsert`], [`Sim::update`]) or made through the API or
//!   the control methods ([`Sim::create_konbini_charge`], ...), and a seeded
//!   [`Population`] of any size (konbini, and cards if asked) whose charges go
//!   `pending -> awaiting -> final` on simulated time ([`SimClock`], [`Sim::advance`]);
//! - one-shot scripted replies ([`Sim::push_reply`]) that take precedence for a charge,
//!   which is how tests produce a precise 500, timeout, wrong id or malformed body;
//! - faults injected at a rate ([`Faults`]): 5xx, answers slower than any client timeout,
//!   connections cut mid-answer, malformed bodies; and misbehaving lists and tokens for
//!   discovery ([`DiscoveryFaults`]);
//! - the rate-limit model ([`RateLimitConfig`]): a token bucket per route and one per
//!   exact URL, the four `X-Remaining-Requests-*` / `X-Requests-Per-Minute-*` headers on
//!   every answer, and 429 with an empty body once a bucket is empty;
//! - a configurable latency before every answer.
//!
//! [`Sim::counters`] (and `GET /_sim/counters`) say what it saw and sent, 429s included.
//! It binds to loopback addresses only.
//!
//! # Map
//! - `sim`: the [`Sim`] handle, its shared state, serving, charges set by tests;
//! - `control`: the test-control API (create, issue, pay, expire, cancel, schedule, list);
//! - `charge` and `token`: [`SimCharge`] and [`SimToken`], and their UnivaPay JSON;
//! - `lifecycle`: how held charges change on simulated time, and the events that makes;
//! - `webhook`: delivering those events (and seeded charges') to a [`WebhookTarget`];
//! - `store`: what is held, behind one lock (charges indexed per store, tokens,
//!   idempotency records, the timeline of transitions to come);
//! - `listing`: a store's charges in creation order, held and seeded merged;
//! - `seed`: [`Population`], charges computed from a seed instead of stored;
//! - `clock`: [`SimClock`], the simulated time charges live on;
//! - `config`: [`SimConfig`], [`Faults`], [`DiscoveryFaults`], [`RateLimitConfig`],
//!   [`Reply`], [`Credentials`];
//! - `ratelimit` and `bucket`: the buckets behind the rate-limit headers and 429s;
//! - `counters`: [`CounterSnapshot`], what was seen and sent;
//! - `http`: the routes, each run through the shared steps in `http::pipeline`;
//! - [`foreground`]: the shop's own charge GETs at a steady rate, sharing the bucket;
//! - `reconciler_config`: a ready konbini-reconciler config for a running simulator.
//! - [`receiver`]: not UnivaPay but the shop: a test receiver for konbini-reconciler's
//!   own signed deliveries (Standard Webhooks), with its Rust API in its module doc.

mod bucket;
mod charge;
mod clock;
mod config;
mod control;
mod counters;
pub mod foreground;
mod http;
mod lifecycle;
mod listing;
mod ratelimit;
pub mod receiver;
mod reconciler_config;
mod seed;
mod sim;
mod store;
mod token;
mod webhook;

pub use bucket::{Limit, TokenBucket};
pub use charge::{FINAL_STATUSES, SimCharge};
pub use clock::SimClock;
pub use config::{Credentials, DiscoveryFaults, Faults, RateLimitConfig, Reply, SimConfig};
pub use control::SimError;
pub use counters::CounterSnapshot;
pub use foreground::{Foreground, ForegroundConfig, ForegroundStats};
pub use http::idempotency::{RETRIEVED as IDEMPOTENCY_RETRIEVED, STORED as IDEMPOTENCY_STORED};
pub use reconciler_config::write_reconciler_config;
pub use seed::{CHAINS, Mix, Outcome, Planned, Population};
pub use sim::{RunningSim, Sim};
pub use store::Action;
pub use token::{PAYMENT_TYPES, SimToken, iso_duration, konbini_deadline, parse_iso_duration};
pub use webhook::WebhookTarget;
