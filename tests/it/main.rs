//! Integration tests: one binary, one directory per feature. Each test gets its own fake
//! UnivaPay on 127.0.0.1:0 and its own temporary database (see `helpers`); tests of the
//! real binary launch it through `util::TestCommand`.
//!
//! Where a new test goes: in the directory of the feature it tests, whatever found the
//! fault (a review, a hardening round, a user's report), in the file of its topic or in a
//! new file there registered in that directory's `mod.rs`:
//! - `pass/`: a pass against UnivaPay's answers: states and events, error and hostile
//!   answers, untrusted text, rate limits and pauses, budget and cadence, pacing, the
//!   records a run writes.
//! - `webhook/`: the webhook listener, hints, and the public listener's limits.
//! - `discovery/`: sweeps for charges the ledger lacks.
//! - `delivery/`: events out to the shop's endpoints, the `events` and `deliveries`
//!   commands.
//! - `commands/`: `--once` and the operator's commands through the real binary.
//! - `daemon/`: the job loop on its schedule, shutdown, systemd, several processes, the
//!   wall clock.
//! - `ledger/`: the database file and its trouble, rows written by other programs.
//! - `configuration/`: config files, environment, secret files, secrets kept secret.
//! - `operations/`: metrics, alert rules and dashboard, backup and restore, retention.
//!
//! Shared helpers stay at the top: `helpers` (the harness, `TestApp`), `util` (launching
//! the binary), `config` (typed config files), `proxy` (an editing proxy in front of the
//! simulator); a feature's own helpers (e.g. `delivery::receiver`) stay in its directory.

mod commands;
mod config;
mod configuration;
mod daemon;
mod delivery;
mod discovery;
mod helpers;
mod ledger;
mod operations;
mod pass;
mod proxy;
mod util;
mod webhook;
