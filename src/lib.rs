//! konbini-reconciler keeps a SQLite ledger of UnivaPay konbini (convenience-store) charges
//! and reconciles it against UnivaPay's charge GET: which orders are paid, which are dead,
//! and whether exactly what was asked for was charged.
//!
//! The map of the crate:
//! - [`config`]: `config.toml` and environment overrides into typed, validated [`Settings`].
//! - [`domain`]: ids, currencies, our states and UnivaPay's statuses as types.
//! - [`univapay`]: the HTTP client, the lenient charge model, and error classification.
//! - [`ledger`]: SQLite (schema, migrations, due-charge streaming, transactional writes).
//! - [`reconcile`]: the pure decision rules ([`reconcile::rules`]) and one pass
//!   ([`reconcile::pass`]).
//! - [`discovery`]: the sweep that finds konbini charges UnivaPay has and the ledger lacks.
//! - [`lock`]: the pass lock, one pass at a time across processes.
//! - [`metrics`]: the Prometheus figures (the `[metrics] textfile`, `/metrics`).
//! - [`daemon`]: passes on the cron schedule, never overlapping, until shutdown; the
//!   webhook listener beside them.
//! - [`webhook`]: UnivaPay webhooks as hints that lead to a charge check.
//! - [`notify`]: systemd readiness, status, watchdog and stopping notifications.
//! - [`shutdown`]: SIGTERM/SIGINT as a cancellation token passed down.
//! - [`app`]: the command-line entry points (`--once`, the daemon, the operator's
//!   commands) and exit codes.
//! - [`commands`]: the operator's commands: `status`, `register`, `check`, `recheck`,
//!   `export`.
//! - [`telemetry`]: tracing setup.
//!
//! `main.rs` only parses the command line and hands over to [`app::main`].

pub mod app;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod delivery;
pub mod discovery;
pub mod domain;
pub mod ledger;
pub mod lock;
pub mod metrics;
pub mod notify;
pub mod reconcile;
pub mod shutdown;
pub mod telemetry;
pub mod univapay;
pub mod webhook;

pub use config::Settings;
