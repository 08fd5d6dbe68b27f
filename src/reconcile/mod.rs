//! Reconciliation: one pass over the due charges ([`pass`]), built on the pure decision
//! rules ([`rules`]) and the recheck cadence ([`cadence`]).

pub mod cadence;
pub mod pass;
pub mod rules;

pub use pass::{Clock, PassReport, Reconciler, SystemClock};
