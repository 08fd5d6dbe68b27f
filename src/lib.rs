//! konbini-reconciler keeps a SQLite ledger of UnivaPay konbini (convenience-store) charges
//! and reconciles it against UnivaPay's charge GET: which orders are paid, which are dead,
//! and whether exactly what was asked for was charged.
//!
//! The map of the crate:
//! - [`config`]: `config.toml` and environment overrides into typed, validated [`Settings`].
//! - `context`: the `Context` every job and command receives
//!   (settings, UnivaPay client, clock, the way to the database).
//! - [`domain`]: ids, currencies, our states and UnivaPay's statuses as types.
//! - [`univapay`]: the HTTP client, the lenient charge model, and error classification.
//! - [`ledger`]: SQLite (schema, migrations, due-charge streaming, transactional writes).
//! - [`reconcile`]: the decision rules (`reconcile::decide`, [`reconcile::cadence`]), the
//!   budget fit, the single check (`reconcile::single`), the stop signal, the run
//!   protocol (`reconcile::run`) and the pass (`reconcile::pass`).
//! - `jobs`: the job loop: what runs, when it is due, how it drains; the pass job, and
//!   the schedule against wall-clock steps (`jobs::clock`).
//! - [`discovery`]: the sweep that finds konbini charges UnivaPay has and the ledger lacks.
//! - [`lock`]: the pass lock, one pass at a time across processes.
//! - [`metrics`]: the Prometheus figures (the `[metrics] textfile`, `/metrics`).
//! - [`daemon`]: the job loop on the cron schedule until shutdown; the webhook listener
//!   beside it.
//! - [`webhook`]: UnivaPay webhooks as hints that lead to a charge check.
//! - [`notify`]: systemd readiness, status, watchdog and stopping notifications.
//! - `shutdown`: SIGTERM/SIGINT as a cancellation token passed down.
//! - [`app`]: the command-line entry points (`--once`, the daemon, the operator's
//!   commands) and exit codes.
//! - `commands`: the operator's commands: `status`, `register`, `check`, `recheck`,
//!   `export`, `events`, `deliveries`, `backup`, `show`.
//! - `telemetry`: tracing setup.
//!
//! `main.rs` only parses the command line and hands over to [`app::main`].

pub mod app;
pub(crate) mod commands;
pub mod config;
pub(crate) mod context;
pub mod daemon;
pub mod delivery;
pub mod discovery;
pub mod domain;
pub mod jobs;
pub mod ledger;
pub mod lock;
pub mod metrics;
pub mod notify;
pub mod reconcile;
pub(crate) mod shutdown;
pub(crate) mod telemetry;
pub mod univapay;
pub mod webhook;

pub use config::Settings;
