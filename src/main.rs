//! The `konbini-reconciler` binary: parse the command line, hand over to the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    konbini_reconciler::app::main(konbini_reconciler::app::Cli::parse())
}
