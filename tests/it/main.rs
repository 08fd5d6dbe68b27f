//! Integration tests: one binary, one module per area. Each test gets its own fake
//! UnivaPay on 127.0.0.1:0 and its own temporary database (see `helpers`); tests of the
//! real binary launch it through `util::TestCommand`.

mod backup;
mod bad_input;
mod binary;
mod budget;
mod clock_step;
mod commands;
mod config;
mod daemon;
mod database;
mod delivery;
mod discovery;
mod discovery_crash;
mod discovery_fallback;
mod discovery_order;
mod errors;
mod harden;
mod helpers;
mod hostile;
mod ledger_identity;
mod lifecycle;
mod metrics;
mod pacing;
mod pauses;
mod processes;
mod proxy;
mod retention;
mod run_records;
mod secrets;
mod util;
mod webhook;
mod webhook_security;
