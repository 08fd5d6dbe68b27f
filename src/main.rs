//! The `konbini-reconciler` binary: parse the command line, hand over to the library.

use std::process::ExitCode;

fn main() -> ExitCode {
    match konbini_reconciler::app::parse_args(std::env::args_os()) {
        Ok(cli) => konbini_reconciler::app::main(cli),
        Err(code) => code,
    }
}
