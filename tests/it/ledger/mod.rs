//! The SQLite ledger: database trouble (locks, read-only files, full disks, files that are
//! not ours), the ledger's identity under a running daemon, and rows written by other
//! programs.

mod bad_rows;
mod database;
mod identity;
