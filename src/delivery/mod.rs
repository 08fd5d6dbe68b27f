//! Events out: telling the shop "order 12345 is paid", pushed to its systems, signed,
//! durable across crashes, in order per charge, never dropped.
//!
//! The design, and why:
//! - **A transactional outbox in the ledger.** The payload snapshot and one delivery row
//!   per endpoint are written by a trigger on `charge_events` (see the ledger's `outbox`
//!   module), so they commit with the change that causes them or not at all. A crash at
//!   any instant loses nothing; no code path that writes an event can forget them.
//! - **At least once, deduplicated by the receiver.** Every attempt of one event carries
//!   `webhook-id: evt_{event_id}`; retries, crash recoveries and replays all resend the
//!   same id and the same bytes of `data`, so a receiver that keeps the ids it has seen
//!   gets each event exactly once.
//! - **Per-charge order, per endpoint.** Only the oldest undelivered event of a charge is
//!   ever due; its successor waits until it is delivered. Different charges go out in
//!   parallel, at most `concurrency` at once.
//! - **Endpoints are independent.** Each has its own task, HTTP client and ledger
//!   connection; a dead one retries on its own schedule and never holds up another, nor
//!   a pass, nor a hint check (delivery shares neither UnivaPay's client nor its budget,
//!   and its write transactions are a few statements long).
//! - **Never given up.** Failures retry on the contract's schedule (`retry`); pending
//!   deliveries are an alarm (metrics and an alert rule), not a silent queue.
//! - **A down endpoint is probed, not hammered.** After attempts in a row without an
//!   answer a step sends one delivery per probe interval; a 2xx makes the whole backlog
//!   due at once (`probe`, pure; state in memory per endpoint worker).
//!
//! Files: `facts` (the shop's words in an answer: metadata, order reference),
//! `sign` (Standard Webhooks v1), `retry` (the schedule, pure), `probe` (whether an
//! endpoint is down, pure), `sender` (one signed POST), [`worker`] (one step, the
//! continuous loop, the drain), `job` (all of it as a job of the job loop).

pub(crate) mod facts;
pub(crate) mod job;
pub(crate) mod metrics;
pub(crate) mod probe;
pub(crate) mod retry;
pub(crate) mod sender;
pub(crate) mod sign;
pub mod worker;

pub use worker::run;
pub use worker::{DeliveryError, Drained, Endpoint, StepReport};
