//! Reconciliation: one pass over the due charges ([`pass`]), built on the pure decision
//! rules ([`rules`]).

pub mod pass;
pub mod rules;

pub use pass::{Clock, PassReport, Reconciler, SystemClock};
