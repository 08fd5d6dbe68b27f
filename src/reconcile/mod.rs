//! Reconciliation, in one file per concern:
//! - `decide`: the pure decision rules (one observation of a charge into its new ledger
//!   values and event rows) and [`cadence`], the recheck cadence;
//! - `fit`: the budget fit (how far the intervals stretch so the checks fit the budget);
//! - `single`: the single check of one charge (`Checker`), shared by passes, webhook
//!   hints and the `check` command;
//! - `stop`: the stop and drain signal a run of checks is given;
//! - `run`: the run protocol ([`Run`]): open a `runs` row, honour a recorded pause,
//!   tally, verdict, finish;
//! - `pass`: one pass over the due charges ([`Reconciler`]).
//!
//! Vocabulary: a *check* is one GET of one charge and its decision; a *run* is any set of
//! checks with a `runs` row (a pass, a `check` command, a batch of webhook hints); a *pass*
//! is the run over every due charge, on the schedule or with `--once`.

pub mod cadence;
pub(crate) mod decide;
pub(crate) mod fit;
pub(crate) mod pass;
pub(crate) mod run;
pub(crate) mod single;
pub(crate) mod stop;

pub use crate::context::Clock;
pub use pass::Reconciler;
pub use run::{PassReport, Run, RunReport, Tally};
pub(crate) use single::{Checked, Checker};
pub(crate) use stop::{DrainGuard, Stop};
