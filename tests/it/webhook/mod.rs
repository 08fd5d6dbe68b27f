//! Webhooks through the real daemon: the listener's answers, hints and what they cost,
//! socket activation, and the public listener hardened (`/metrics` apart, coalescing,
//! budgets for unknown charges, idle connections).

mod http;
mod listener;
mod public_listener;
