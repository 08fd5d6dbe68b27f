//! Discovery of charges the ledger lacks: the sweep (its helpers, `discovered`,
//! `discovery_on`, `settle`, `sweep`, `next_interval`, live in `sweep` and the other
//! modules use them), a kill mid-sweep, the fallback from the transaction history to the
//! charge list, and listings that do not come oldest first.

mod crash;
mod fallback;
mod order;
pub(crate) mod sweep;
