//! Integration tests: one binary, one module per area. Each test gets its own fake
//! UnivaPay on 127.0.0.1:0 and its own temporary database (see `helpers`); tests of the
//! real binary launch it through `util::TestCommand`.

mod bad_input;
mod binary;
mod budget;
mod commands;
mod config;
mod daemon;
mod database;
mod delivery;
mod discovery;
mod errors;
mod harden;
mod helpers;
mod hostile;
mod lifecycle;
mod metrics;
mod pacing;
mod processes;
mod secrets;
mod util;
mod webhook;
