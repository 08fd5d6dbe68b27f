//! The command line through the real binary: `--once` and its exit codes, `--help` and
//! `--version`, and the operator's commands (`status`, `register`, `check`, `recheck`,
//! `export`).

mod export;
mod once;
mod operator;
