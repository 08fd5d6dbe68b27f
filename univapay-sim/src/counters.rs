//! What the simulator has seen and sent, as lock-free counters, and the snapshot that
//! [`crate::Sim::counters`] and `GET /_sim/counters` report (the benchmark parses it).

use std::sync::atomic::{AtomicU64, Ordering};

/// The live counters. Relaxed ordering is enough: they are tallies read after the fact,
/// never used to order other memory.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub requests: AtomicU64,
    pub ok: AtomicU64,
    pub unauthorized: AtomicU64,
    pub not_found: AtomicU64,
    pub rate_limited: AtomicU64,
    pub scripted: AtomicU64,
    pub server_errors: AtomicU64,
    pub slow: AtomicU64,
    pub resets: AtomicU64,
    pub malformed: AtomicU64,
    pub latency_micros: AtomicU64,
    pub api_requests: AtomicU64,
    pub api_unauthorized: AtomicU64,
    pub api_rate_limited: AtomicU64,
    pub token_creates: AtomicU64,
    pub token_gets: AtomicU64,
    pub charge_creates: AtomicU64,
    pub idempotent_replays: AtomicU64,
    pub idempotency_conflicts: AtomicU64,
    pub charge_lists: AtomicU64,
    pub history_lists: AtomicU64,
    pub transitions: AtomicU64,
    pub webhooks_sent: AtomicU64,
    pub webhooks_delivered: AtomicU64,
    pub webhooks_failed: AtomicU64,
    pub webhooks_retried: AtomicU64,
    pub webhooks_lost: AtomicU64,
    pub webhooks_given_up: AtomicU64,
    pub webhooks_dropped: AtomicU64,
}

/// Adds one.
pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// A snapshot of [`crate::Sim`]'s counters.
///
/// The first group is about the charge GET route only, as it always was: `requests`
/// counts every charge GET, `ok`, `unauthorized`, `not_found`, `rate_limited` and
/// `scripted` ([`crate::Reply`]s) say how each was answered. The injected faults
/// (`server_errors`, `slow`, `resets`, `malformed`) and `latency_micros` count on every
/// route. The `api_*` counters cover every API route, the charge GET included; the
/// per-route counters count requests that got past auth and the rate limit.
/// `transitions` counts status changes that make a webhook event (into `awaiting` or a
/// final status) of held charges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CounterSnapshot {
    pub requests: u64,
    pub ok: u64,
    pub unauthorized: u64,
    pub not_found: u64,
    pub rate_limited: u64,
    pub scripted: u64,
    #[serde(default)]
    pub server_errors: u64,
    #[serde(default)]
    pub slow: u64,
    #[serde(default)]
    pub resets: u64,
    #[serde(default)]
    pub malformed: u64,
    /// Total latency actually added, in microseconds (the timer rounds sleeps up, so the
    /// mean is a little above the configured latency).
    #[serde(default)]
    pub latency_micros: u64,
    #[serde(default)]
    pub api_requests: u64,
    #[serde(default)]
    pub api_unauthorized: u64,
    #[serde(default)]
    pub api_rate_limited: u64,
    /// `POST /tokens` that created a token (replays excluded).
    #[serde(default)]
    pub token_creates: u64,
    #[serde(default)]
    pub token_gets: u64,
    /// `POST /charges` that created a charge (replays excluded).
    #[serde(default)]
    pub charge_creates: u64,
    /// Requests answered from an idempotency record (`Idempotency-Status: retrieved`).
    #[serde(default)]
    pub idempotent_replays: u64,
    /// A key reused with another body (409).
    #[serde(default)]
    pub idempotency_conflicts: u64,
    /// `GET /stores/{sid}/charges` pages served.
    #[serde(default)]
    pub charge_lists: u64,
    /// `GET /stores/{sid}/transaction_history` pages served.
    #[serde(default)]
    pub history_lists: u64,
    #[serde(default)]
    pub transitions: u64,
    /// Webhook POSTs attempted (retries included).
    #[serde(default)]
    pub webhooks_sent: u64,
    /// Attempts answered 2xx.
    #[serde(default)]
    pub webhooks_delivered: u64,
    /// Attempts that failed: non-2xx, connection error or timeout.
    #[serde(default)]
    pub webhooks_failed: u64,
    /// Failed attempts that were queued again.
    #[serde(default)]
    pub webhooks_retried: u64,
    /// Events never sent: the loss share.
    #[serde(default)]
    pub webhooks_lost: u64,
    /// Deliveries that failed all their retries.
    #[serde(default)]
    pub webhooks_given_up: u64,
    /// Events not sent because the webhook was disabled.
    #[serde(default)]
    pub webhooks_dropped: u64,
}

impl Counters {
    pub fn snapshot(&self) -> CounterSnapshot {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CounterSnapshot {
            requests: n(&self.requests),
            ok: n(&self.ok),
            unauthorized: n(&self.unauthorized),
            not_found: n(&self.not_found),
            rate_limited: n(&self.rate_limited),
            scripted: n(&self.scripted),
            server_errors: n(&self.server_errors),
            slow: n(&self.slow),
            resets: n(&self.resets),
            malformed: n(&self.malformed),
            latency_micros: n(&self.latency_micros),
            api_requests: n(&self.api_requests),
            api_unauthorized: n(&self.api_unauthorized),
            api_rate_limited: n(&self.api_rate_limited),
            token_creates: n(&self.token_creates),
            token_gets: n(&self.token_gets),
            charge_creates: n(&self.charge_creates),
            idempotent_replays: n(&self.idempotent_replays),
            idempotency_conflicts: n(&self.idempotency_conflicts),
            charge_lists: n(&self.charge_lists),
            history_lists: n(&self.history_lists),
            transitions: n(&self.transitions),
            webhooks_sent: n(&self.webhooks_sent),
            webhooks_delivered: n(&self.webhooks_delivered),
            webhooks_failed: n(&self.webhooks_failed),
            webhooks_retried: n(&self.webhooks_retried),
            webhooks_lost: n(&self.webhooks_lost),
            webhooks_given_up: n(&self.webhooks_given_up),
            webhooks_dropped: n(&self.webhooks_dropped),
        }
    }
}
