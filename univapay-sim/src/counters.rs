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
}

/// Adds one.
pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// A snapshot of [`crate::Sim`]'s counters. `requests` counts every charge GET; the
/// others say how each was answered (`server_errors`, `slow`, `resets`, `malformed` are
/// injected faults; `scripted` are [`crate::Reply`]s).
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
        }
    }
}
