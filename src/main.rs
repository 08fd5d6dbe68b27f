//! The `konbini-reconciler` binary: parse the command line, hand over to the library.

use std::process::ExitCode;

// A check allocates a few dozen small, short-lived objects (the answer's JSON, the
// decision, the log line) on an async worker and frees many of them on the writer
// thread. jemalloc handles that cross-thread traffic markedly cheaper than glibc's
// allocator (and than mimalloc, which kept taking fresh pages and doubled peak RSS); the
// benchmark's cpu scenario measures the difference per charge.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    match konbini_reconciler::app::parse_args(std::env::args_os()) {
        Ok(cli) => konbini_reconciler::app::main(cli),
        Err(code) => code,
    }
}
